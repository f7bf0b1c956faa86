//! A proposer's append latency on a safekeeper that is also serving a flood
//! (issue 24, defect 4): catch-up consumers streaming stored WAL of another
//! timeline, or connections putting timeline history files as fast as they
//! are answered. The real `safekeeper` binary, one proposer appending 8 KiB
//! at a time and waiting for each reply (each one a synced batch).
//!
//!   cargo bench --profile dev --bench append_flood
//!   WALKEEPER_BENCH_SECS=20 WALKEEPER_FLOOD_CONSUMERS=20 cargo bench --profile dev --bench append_flood
//!
//! Settings (environment): WALKEEPER_BENCH_SECS per case (10),
//! WALKEEPER_FLOOD_CONSUMERS (20), WALKEEPER_FLOOD_HISTORY connections (4),
//! WALKEEPER_CATCHUP_BYTES of WAL the consumers stream, over and over
//! (64 MiB), WALKEEPER_BENCH_DIR (the temp directory).
//!
//! The flood's clients run on the same machine and take CPU too: compare
//! the cases of one run, not figures across machines.

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{append, elect_single, greeting, push, wal_bytes, RawClient, Safekeeper, START};
use walkeeper::consensus::messages::AcceptorMessage;
use walkeeper::id::{TenantId, TimelineId, Ttid};
use walkeeper::pq::replication::encode_hex;

const APPEND: usize = 8 << 10;
const HISTORY_FILE: usize = 16 << 10;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn timeline(b: u8) -> Ttid {
    Ttid::new(TenantId([b; 16]), TimelineId([b; 16]))
}

/// A proposer of `t`, elected in term 1 at START.
fn proposer(addr: SocketAddr, t: Ttid) -> RawClient {
    let mut c = RawClient::proposer(addr);
    let mut g = greeting(&[1], true);
    g.ttid = t;
    elect_single(&mut c, g, 1);
    c
}

fn options(t: Ttid, proposer: bool) -> String {
    let role = if proposer {
        "-c walkeeper.role=proposer "
    } else {
        ""
    };
    format!(
        "{role}-c tenant_id={} -c timeline_id={}",
        t.tenant_id, t.timeline_id
    )
}

/// Stream `t` from START to `end` over and over until `stop`; WAL bytes
/// read are added to `bytes`.
fn consumer(addr: SocketAddr, t: Ttid, end: u64, stop: Arc<AtomicBool>, bytes: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let mut c = RawClient::connect(addr, &options(t, false));
        c.query_raw(&format!(
            "START_REPLICATION PHYSICAL {}",
            walkeeper::lsn::Lsn(START)
        ));
        let mut pos = START;
        while pos < end && !stop.load(Ordering::Relaxed) {
            let m = c.read().expect("the stream ended early");
            match (m.tag, m.body.first()) {
                (b'd', Some(b'w')) => {
                    let len = (m.body.len() - 25) as u64;
                    pos += len;
                    bytes.fetch_add(len, Ordering::Relaxed);
                }
                // The node has not yet seen this consumer's last stream
                // end (a cap of senders): connect again.
                (b'E', _) if m.error_field(b'C').as_deref() == Some("53300") => break,
                (b'E', _) => panic!("START_REPLICATION refused: {:?}", m.error_field(b'M')),
                _ => {}
            }
        }
    }
}

/// Put the history file of `t` over and over until `stop`; puts answered
/// are added to `puts`.
fn history_flood(addr: SocketAddr, t: Ttid, stop: Arc<AtomicBool>, puts: Arc<AtomicU64>) {
    let mut c = RawClient::connect(addr, &options(t, true));
    let file: Vec<u8> = wal_bytes(9, 0, HISTORY_FILE);
    let query = format!("PUT_TIMELINE_HISTORY 1 '{}'", encode_hex(&file));
    while !stop.load(Ordering::Relaxed) {
        let reply = c.query(&query);
        if let Some(e) = reply.iter().find(|m| m.tag == b'E') {
            panic!("PUT_TIMELINE_HISTORY refused: {:?}", e.error_field(b'M'));
        }
        puts.fetch_add(1, Ordering::Relaxed);
    }
}

/// Latencies of one case, sorted.
struct Case {
    name: String,
    latencies: Vec<Duration>,
    flood: String,
}

impl Case {
    fn at(&self, q: f64) -> f64 {
        let n = self.latencies.len();
        let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i].as_secs_f64() * 1e3
    }

    fn row(&self) {
        let mean = self.latencies.iter().sum::<Duration>().as_secs_f64() * 1e3
            / self.latencies.len() as f64;
        println!(
            "{:<28} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>9.2}  {}",
            self.name,
            self.latencies.len(),
            mean,
            self.at(0.5),
            self.at(0.99),
            self.at(1.0),
            self.flood
        );
    }
}

/// Append for `secs` seconds, one at a time; each reply's latency.
fn appends(c: &mut RawClient, pos: &mut u64, secs: u64) -> Vec<Duration> {
    let wal = wal_bytes(1, 0, APPEND);
    let mut out = Vec::new();
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        let t = Instant::now();
        c.send(&append(1, *pos, &wal, *pos));
        match c.recv() {
            AcceptorMessage::Append(_) => {}
            other => panic!("expected an append reply, got {other:?}"),
        }
        out.push(t.elapsed());
        *pos += APPEND as u64;
    }
    out.sort();
    out
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` run
    // should not spend a minute here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let secs = env_or("WALKEEPER_BENCH_SECS", 10);
    let consumers = env_or("WALKEEPER_FLOOD_CONSUMERS", 20) as usize;
    let history = env_or("WALKEEPER_FLOOD_HISTORY", 4) as usize;
    let catchup = env_or("WALKEEPER_CATCHUP_BYTES", 64 << 20) as usize;
    let base = std::env::var_os("WALKEEPER_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("bench directory");
    // Room for streams that ended and are not released yet.
    let max_senders = (2 * consumers + 8).to_string();
    let sk = Safekeeper::start_with(
        &dir.path().join("sk"),
        1,
        true,
        &["--max-wal-senders", &max_senders],
    );
    let addr = sk.pg_addr;

    // The consumers' timeline: committed WAL, pushed once. Its proposer
    // stays connected, so the node serves it (a node following no live
    // proposer sends consumers elsewhere).
    let (caught_up, measured) = (timeline(0xc1), timeline(0xa1));
    let mut catchup_proposer = proposer(addr, caught_up);
    let end = push(
        &mut catchup_proposer,
        1,
        START,
        &wal_bytes(1, START, catchup),
        1 << 20,
        START + catchup as u64,
    );
    let mut p = proposer(addr, measured);
    let mut pos = START;
    println!(
        "append latency (ms) of one proposer, {APPEND} B appends, {secs} s per case; \
         {consumers} consumers streaming {catchup} B over and over; {history} connections \
         putting {HISTORY_FILE} B history files"
    );
    println!(
        "{:<28} {:>8} {:>8} {:>8} {:>8} {:>9}  flood",
        "case", "appends", "mean", "p50", "p99", "max"
    );
    // Warm up the connection and the store.
    appends(&mut p, &mut pos, 1);
    let case = |name: &str, latencies, flood| Case {
        name: name.to_string(),
        latencies,
        flood,
    };
    case("alone", appends(&mut p, &mut pos, secs), String::new()).row();

    let flood = |n: usize, f: &dyn Fn(Arc<AtomicBool>, Arc<AtomicU64>) -> JoinHandle<()>| {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..n).map(|_| f(stop.clone(), count.clone())).collect();
        (stop, count, threads)
    };
    let end_flood = |stop: Arc<AtomicBool>, threads: Vec<JoinHandle<()>>| {
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().expect("a flood client failed");
        }
    };

    let (stop, bytes, threads) = flood(consumers, &|stop, bytes| {
        std::thread::spawn(move || consumer(addr, caught_up, end, stop, bytes))
    });
    let started = Instant::now();
    let latencies = appends(&mut p, &mut pos, secs);
    let rate = bytes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    end_flood(stop, threads);
    case(
        &format!("{consumers} catch-up consumers"),
        latencies,
        format!("{:.0} MB/s streamed", rate / 1e6),
    )
    .row();

    let (stop, puts, threads) = flood(history, &|stop, puts| {
        std::thread::spawn(move || history_flood(addr, measured, stop, puts))
    });
    let started = Instant::now();
    let latencies = appends(&mut p, &mut pos, secs);
    let rate = puts.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    end_flood(stop, threads);
    case(
        &format!("{history} history putters"),
        latencies,
        format!("{rate:.0} puts/s"),
    )
    .row();

    case(
        "alone again",
        appends(&mut p, &mut pos, secs),
        String::new(),
    )
    .row();
    drop((p, catchup_proposer));
    drop(sk);
}
