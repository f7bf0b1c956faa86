//! Ingest through the RocksDB store with fsync on, beside a raw
//! append + fdatasync loop on the same disk in the same run.
//!
//!   cargo bench --bench store
//!   WALKEEPER_BENCH_SECS=5 WALKEEPER_BENCH_DIR=/data cargo bench --bench store
//!
//! Each store append is one `write` call (the chunk and the timeline state),
//! as the acceptor issues it; a "sync" is one `Storage::sync`, so "N per sync"
//! is group commit of N appends.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walkeeper::consensus::acceptor::{TimelineState, Write};
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::Storage;

#[path = "../tests/common/store.rs"]
mod fixtures;

const BASE: Lsn = Lsn(0x100_0000);

#[derive(Default)]
struct Rate {
    appends: u64,
    bytes: u64,
    syncs: u64,
    secs: f64,
}

impl Rate {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs / (1 << 20) as f64
    }
    fn appends_s(&self) -> f64 {
        self.appends as f64 / self.secs
    }
    fn syncs_s(&self) -> f64 {
        self.syncs as f64 / self.secs
    }
    /// Count one sync that made `per_sync` appends of `len` bytes durable.
    fn synced(&mut self, per_sync: usize, len: usize) {
        self.appends += per_sync as u64;
        self.bytes += (per_sync * len) as u64;
        self.syncs += 1;
    }
}

fn state(ttid: Ttid, flush: Lsn) -> TimelineState {
    fixtures::store_state(ttid, BASE, flush)
}

fn payload(len: usize) -> Bytes {
    fixtures::incompressible(0x2545_F491_4F6C_DD1D, len)
}

/// `per_sync` appends of `len` bytes, spread round-robin over `timelines`
/// timelines, then one sync; repeated for `secs`.
fn store_run(base: &Path, len: usize, per_sync: usize, timelines: usize, secs: Duration) -> Rate {
    let dir = tempfile::tempdir_in(base).expect("bench directory");
    let mut store = RocksStore::init(dir.path(), NodeId(1)).expect("init");
    let ttids: Vec<Ttid> = (0..timelines)
        .map(|i| {
            let mut t = [0u8; 16];
            t[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Ttid::new(TenantId([7; 16]), TimelineId(t))
        })
        .collect();
    let mut flush = vec![BASE; timelines];
    for t in &ttids {
        store
            .write(*t, &[Write::PutState(Box::new(state(*t, BASE)))])
            .expect("write");
    }
    store.sync().expect("sync");
    let bytes = payload(len);
    let mut r = Rate::default();
    let mut next = 0;
    let start = Instant::now();
    while start.elapsed() < secs {
        for _ in 0..per_sync {
            let i = next % timelines;
            next += 1;
            let begin = flush[i];
            flush[i] = Lsn(begin.0 + len as u64);
            store
                .write(
                    ttids[i],
                    &[
                        Write::AppendWal {
                            begin,
                            bytes: bytes.clone(),
                        },
                        Write::PutState(Box::new(state(ttids[i], flush[i]))),
                    ],
                )
                .expect("write");
        }
        store.sync().expect("sync");
        r.synced(per_sync, len);
    }
    r.secs = start.elapsed().as_secs_f64();
    r
}

/// `per_sync` writes of `len` bytes appended to a file, then fdatasync.
fn raw_run(base: &Path, len: usize, per_sync: usize, secs: Duration) -> Rate {
    let dir = tempfile::tempdir_in(base).expect("bench directory");
    let path = dir.path().join("raw");
    let mut file = File::create(&path).expect("create");
    let mut written = 0u64;
    let bytes = payload(len);
    let mut r = Rate::default();
    let start = Instant::now();
    while start.elapsed() < secs {
        if written > 512 << 20 {
            // Keep the disk footprint bounded; a fresh file keeps it an append.
            file = File::create(&path).expect("create");
            written = 0;
        }
        for _ in 0..per_sync {
            file.write_all(&bytes).expect("write");
        }
        file.sync_data().expect("fdatasync");
        written += (per_sync * len) as u64;
        r.synced(per_sync, len);
    }
    r.secs = start.elapsed().as_secs_f64();
    r
}

fn row(name: &str, r: &Rate, raw: Option<&Rate>) {
    let vs = raw.map_or(String::from("-"), |raw| {
        format!("{:.2}x", r.mb_s() / raw.mb_s())
    });
    println!(
        "{name:<44} {:>10.0} {:>10.1} {:>9.0} {:>8}",
        r.appends_s(),
        r.mb_s(),
        r.syncs_s(),
        vs
    );
}

/// One case: the raw loop sets the bar the store is rated against, on the
/// same disk just before it.
fn raw_then_store(base: &Path, secs: Duration, kib: usize, per_sync: usize, timelines: usize) {
    let len = kib << 10;
    let raw = raw_run(base, len, per_sync, secs);
    row(
        &format!("raw  {kib} KiB, {per_sync} per fdatasync"),
        &raw,
        None,
    );
    let spread = match timelines {
        1 => "1 timeline".to_string(),
        n => format!("{n} timelines x {}", per_sync / n),
    };
    row(
        &format!("store {kib} KiB, {spread}, {per_sync} per sync"),
        &store_run(base, len, per_sync, timelines, secs),
        Some(&raw),
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run
    // should not spend seconds here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = Duration::from_secs_f64(
        std::env::var("WALKEEPER_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    );
    let base = std::env::var_os("WALKEEPER_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    println!(
        "store bench in {} ({:?} per case), fsync on",
        base.display(),
        secs
    );
    println!(
        "{:<44} {:>10} {:>10} {:>9} {:>8}",
        "case", "appends/s", "MB/s", "syncs/s", "vs raw"
    );
    // (KiB per append, appends per sync, timelines they go round)
    for (kib, per_sync, timelines) in [(128, 1, 1), (128, 16, 1), (8, 1, 1), (8, 64, 64)] {
        raw_then_store(&base, secs, kib, per_sync, timelines);
    }
}
