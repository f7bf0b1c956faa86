//! Catch-up read (issue 5): committed WAL streamed by the real `safekeeper`
//! binary over `START_REPLICATION` to a client that discards it, beside a
//! sequential read of a file of the same size on the same disk.
//!
//!   cargo bench --profile dev --bench catchup
//!   WALKEEPER_CATCHUP_BYTES=268435456 WALKEEPER_BENCH_DIR=/data cargo bench --profile dev --bench catchup
//!
//! The store is filled directly through the library (one timeline, 1 MiB
//! appends through `Acceptor` and `RocksStore`, commit_lsn = flush_lsn), its
//! memtables flushed, and the store closed; then the `safekeeper` binary is
//! started on it. The binary is the one cargo built for this bench
//! (`CARGO_BIN_EXE_safekeeper`), else `WALKEEPER_SAFEKEEPER_BIN`,
//! `$CARGO_TARGET_DIR/debug/safekeeper` or the one next to this executable's
//! `deps` directory; if none exists, `cargo build --bin safekeeper` is run
//! (or run `cargo build --bins` yourself first).
//!
//! Each case is measured cold (page cache dropped with
//! `echo 3 > /proc/sys/vm/drop_caches` right before it; needs root — when
//! that fails the table says so and both cases are whatever the cache held)
//! and then warm (the stream repeated at once, on what the cold stream read
//! into the page cache; the file read after one untimed read of it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use walkeeper::codec::PROTOCOL_VERSION;
use walkeeper::consensus::acceptor::{Acceptor, Ready};
use walkeeper::consensus::messages::{
    AppendRequest, Elected, Greeting, ProposerMessage, ServerInfo, VoteRequest,
};
use walkeeper::consensus::term_history::{TermHistory, TermLsn};
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::Storage;

const SEG: u32 = 16 << 20;
const START: Lsn = Lsn(SEG as u64);
const APPEND: usize = 1 << 20;
/// Appends per `Storage::sync` while filling.
const APPENDS_PER_SYNC: u64 = 16;
const FILE_BUF: usize = 1 << 20;

fn payload(len: usize, seed: u64) -> Bytes {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut v = Vec::with_capacity(len);
    for _ in 0..len / 8 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.resize(len, 0);
    v.into()
}

fn apply(store: &mut RocksStore, ttid: Ttid, effects: Ready) {
    store.write(ttid, &effects.writes).expect("store write");
}

/// `bytes` of committed WAL from START on one timeline; the end LSN.
fn fill(dir: &Path, ttid: Ttid, bytes: u64) -> Lsn {
    let node = NodeId(1);
    let mut store = RocksStore::init(dir, node).expect("init store");
    let greeting = Greeting {
        conf: None,
        protocol_version: PROTOCOL_VERSION,
        ttid,
        server: ServerInfo {
            system_id: 7_000_000_000_000_000_001,
            pg_version: 150018,
            wal_seg_size: SEG,
            tli: 1,
        },
        timeline_start_lsn: START,
        members: [(node, "127.0.0.1:5454".to_string())]
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        proposer_id: [7; 16],
        create: true,
        pg_ancestors: Vec::new(),
    };
    let (mut acc, effects) = Acceptor::create(node, &greeting).expect("create timeline");
    apply(&mut store, ttid, effects);
    let fx = acc
        .handle(&ProposerMessage::VoteRequest(VoteRequest::new(1)))
        .expect("vote");
    apply(&mut store, ttid, fx);
    let fx = acc
        .handle(&ProposerMessage::Elected(Elected {
            term: 1,
            start_streaming_at: START,
            term_history: TermHistory(vec![TermLsn {
                term: 1,
                lsn: START,
            }]),
            pg_tli: 0,
            pg_ancestors: Vec::new(),
        }))
        .expect("elected");
    apply(&mut store, ttid, fx);
    store.sync().expect("sync");
    // A few distinct payloads so RocksDB sees no repeated blocks nearby.
    let bufs: Vec<Bytes> = (0..8).map(|i| payload(APPEND, i)).collect();
    let mut pos = START;
    let end = Lsn(START.0 + bytes);
    let mut n = 0u64;
    while pos < end {
        let len = (end.0 - pos.0).min(APPEND as u64) as usize;
        let wal = bufs[(n % 8) as usize].slice(..len);
        let next = Lsn(pos.0 + len as u64);
        let fx = acc
            .handle(&ProposerMessage::Append(AppendRequest {
                term: 1,
                begin_lsn: pos,
                end_lsn: next,
                commit_lsn: next,
                peer_horizon_lsn: Lsn::INVALID,
                slot_horizon_lsn: Lsn::INVALID,
                wal,
            }))
            .expect("append");
        apply(&mut store, ttid, fx);
        pos = next;
        n += 1;
        if n.is_multiple_of(APPENDS_PER_SYNC) {
            store.sync().expect("sync");
        }
    }
    store.sync().expect("sync");
    assert_eq!(acc.state().commit_lsn, end);
    // WAL that was committed a while ago lives in SST files, not memtables.
    store.flush_memtables().expect("flush memtables");
    end
}

/// Drop the page cache; false when not permitted.
fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

fn safekeeper_bin() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("WALKEEPER_SAFEKEEPER_BIN") {
        candidates.push(p.into());
    }
    if let Some(p) = option_env!("CARGO_BIN_EXE_safekeeper") {
        candidates.push(p.into());
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug").join("safekeeper"));
    }
    // target/debug/deps/catchup-… → target/debug/safekeeper
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(|d| d.join("safekeeper")));
    candidates.extend(beside.clone());
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return p.clone();
    }
    eprintln!("no safekeeper binary in {candidates:?}; running cargo build --bin safekeeper");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ok = Command::new(cargo)
        .args(["build", "--bin", "safekeeper"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .is_ok_and(|s| s.success());
    match beside.filter(|p| ok && p.is_file()) {
        Some(p) => p,
        None => panic!("no safekeeper binary: run `cargo build --bins` first"),
    }
}

/// The daemon on the filled store; SIGKILLed on drop.
struct Daemon {
    child: Child,
    pg_addr: SocketAddr,
    log: PathBuf,
}

impl Daemon {
    fn start(bin: &Path, datadir: &Path) -> Daemon {
        let pg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http_addr = format!("127.0.0.1:{}", free_port());
        let log = datadir.with_extension("log");
        let child = Command::new(bin)
            .arg("--datadir")
            .arg(datadir)
            .args(["--node-id", "1", "--listen-pg"])
            .arg(pg_addr.to_string())
            .arg("--listen-http")
            .arg(http_addr)
            // Nothing may be trimmed under the reader, whatever the size.
            .args(["--max-wal-keep", "1TB"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("log file"))
            .spawn()
            .expect("starting the safekeeper binary");
        let mut d = Daemon {
            child,
            pg_addr,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(d.pg_addr).is_err() {
            if let Some(s) = d.child.try_wait().unwrap() {
                panic!("safekeeper exited with {s}; log:\n{}", d.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "safekeeper not listening after 60 s; log:\n{}",
                d.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// user + system CPU seconds so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the ")" of comm: state is 3rd, utime 14th, stime 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
            .sum();
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- safekeeper log ---\n{}", self.log_text());
        }
    }
}

/// A raw PostgreSQL replication client over a blocking socket (as in
/// tests/common/mod.rs).
struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    tmp: Vec<u8>,
}

impl RawClient {
    fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut c = RawClient {
            stream,
            buf: BytesMut::with_capacity(1 << 20),
            tmp: vec![0; 256 << 10],
        };
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::startup_message(
            [
                ("user", "walkeeper"),
                ("database", "replication"),
                ("replication", "true"),
            ],
            &mut out,
        )
        .unwrap();
        c.stream.write_all(&out).unwrap();
        loop {
            let (tag, body) = c.read().expect("startup reply");
            match tag {
                b'Z' => return c,
                b'E' => panic!("startup refused: {}", String::from_utf8_lossy(&body)),
                _ => {}
            }
        }
    }

    /// The next backend message (tag, body); None on EOF.
    fn read(&mut self) -> Option<(u8, Bytes)> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    return Some((tag, self.buf.split_to(len - 4).freeze()));
                }
            }
            match self.stream.read(&mut self.tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&self.tmp[..n]),
                Err(e) => panic!("reading from the safekeeper: {e}"),
            }
        }
    }

    fn query(&mut self, q: &str) {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(q, &mut out).unwrap();
        self.stream.write_all(&out).unwrap();
    }
}

struct Run {
    bytes: u64,
    secs: f64,
}

impl Run {
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs / (1 << 20) as f64
    }
}

/// START_REPLICATION from START; XLogData read and discarded up to `end`.
fn stream(addr: SocketAddr, end: Lsn) -> Run {
    let mut c = RawClient::connect(addr);
    let t = Instant::now();
    c.query(&format!("START_REPLICATION PHYSICAL {START}"));
    let mut pos = START;
    let mut bytes = 0u64;
    while pos < end {
        let (tag, body) = c.read().expect("the stream ended early");
        match tag {
            b'W' => {}
            b'd' if body.first() == Some(&b'w') => {
                // 'w', dataStart, walEnd, sendTime, then the WAL.
                let start = Lsn(u64::from_be_bytes(body[1..9].try_into().unwrap()));
                assert_eq!(start, pos, "XLogData out of order");
                let len = (body.len() - 25) as u64;
                pos = Lsn(pos.0 + len);
                bytes += len;
            }
            b'd' => {} // keepalive
            b'E' => panic!(
                "START_REPLICATION failed: {}",
                String::from_utf8_lossy(&body)
            ),
            other => panic!("unexpected message {:?}", other as char),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    Run { bytes, secs }
}

fn write_file(path: &Path, bytes: u64) {
    let mut f = File::create(path).expect("create");
    let bufs: Vec<Bytes> = (0..8).map(|i| payload(FILE_BUF, 100 + i)).collect();
    let mut left = bytes;
    let mut n = 0;
    while left > 0 {
        let len = left.min(FILE_BUF as u64) as usize;
        f.write_all(&bufs[n % 8][..len]).expect("write");
        left -= len as u64;
        n += 1;
    }
    f.sync_all().expect("fsync");
}

fn read_file(path: &Path) -> Run {
    let t = Instant::now();
    let mut f = File::open(path).expect("open");
    let mut buf = vec![0u8; FILE_BUF];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    Run {
        bytes,
        secs: t.elapsed().as_secs_f64(),
    }
}

fn row(name: &str, r: &Run, vs: Option<&Run>) {
    let ratio = vs.map_or(String::from("-"), |f| {
        format!("{:.2}x", r.mb_s() / f.mb_s())
    });
    println!(
        "{name:<36} {:>12} {:>8.2} {:>9.1} {:>7}",
        r.bytes,
        r.secs,
        r.mb_s(),
        ratio
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run
    // should not spend minutes here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let bytes: u64 = std::env::var("WALKEEPER_CATCHUP_BYTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1 << 30);
    let base = std::env::var_os("WALKEEPER_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let bin = safekeeper_bin();
    let dir = tempfile::tempdir_in(&base).expect("bench directory");
    let store_dir = dir.path().join("store");
    let ttid = Ttid::new(TenantId([0x11; 16]), TimelineId([0x22; 16]));

    let t = Instant::now();
    let end = fill(&store_dir, ttid, bytes);
    eprintln!(
        "filled {bytes} bytes of committed WAL ({START}..{end}) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let file = dir.path().join("file");
    write_file(&file, bytes);

    let daemon = Daemon::start(&bin, &store_dir);
    println!(
        "catch-up bench in {} ({} bytes), safekeeper {}",
        base.display(),
        bytes,
        bin.display()
    );
    println!(
        "{:<36} {:>12} {:>8} {:>9} {:>7}",
        "case", "bytes", "seconds", "MB/s", "ratio"
    );
    let mut cpu = Vec::new();
    let mut dropped = true;
    for cold in [true, false] {
        let label = if cold { "cold" } else { "warm" };
        if cold {
            dropped &= drop_caches();
        } else {
            // The cold stream's drop evicted the file: read it in first.
            read_file(&file);
        }
        let f = read_file(&file);
        if cold {
            dropped &= drop_caches();
        }
        let cpu0 = daemon.cpu_secs();
        let s = stream(daemon.pg_addr, end);
        cpu.push((label, daemon.cpu_secs() - cpu0, s.secs));
        assert_eq!(s.bytes, bytes);
        row(&format!("file sequential read, {label}"), &f, None);
        row(&format!("START_REPLICATION stream, {label}"), &s, Some(&f));
    }
    if !dropped {
        println!("(could not drop the page cache: not root? \"cold\" rows are as the cache was)");
    }
    for (label, secs, wall) in cpu {
        println!(
            "safekeeper CPU during the {label} stream: {secs:.2} s user+sys over {wall:.2} s wall"
        );
    }
    drop(daemon);
}
