//! Every acknowledged (synced) append survives a SIGKILL of the writing
//! process. The test binary re-executes itself as the writer: with
//! `WALKEEPER_SIGKILL_WRITER_DIR` set, `sigkill_writer_child` appends and
//! syncs in a loop and prints `ACK <end lsn>` after each sync.
#![cfg(feature = "rocksdb")]

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use walkeeper::consensus::acceptor::{TimelineState, Write};
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::Storage;

const DIR_VAR: &str = "WALKEEPER_SIGKILL_WRITER_DIR";
const BASE: Lsn = Lsn(0x100_0000);

fn ttids() -> [Ttid; 2] {
    [
        Ttid::new(TenantId([1; 16]), TimelineId([1; 16])),
        Ttid::new(TenantId([1; 16]), TimelineId([2; 16])),
    ]
}

fn state(ttid: Ttid, flush: Lsn) -> TimelineState {
    common::store::store_state(ttid, BASE, flush)
}

/// The byte every writer puts at `lsn` of timeline `i`, so the parent can
/// check any range without being told what was written.
fn byte_at(i: usize, lsn: u64) -> u8 {
    ((lsn.wrapping_add(i as u64 * 977)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn bytes_at(i: usize, begin: Lsn, len: usize) -> Bytes {
    (0..len as u64)
        .map(|k| byte_at(i, begin.0 + k))
        .collect::<Vec<u8>>()
        .into()
}

/// The writer. A no-op unless the parent test started this binary for it.
#[test]
fn sigkill_writer_child() {
    let Ok(dir) = std::env::var(DIR_VAR) else {
        return;
    };
    let mut store = RocksStore::open(&dir).unwrap();
    let mut flush: Vec<Lsn> = ttids()
        .iter()
        .map(|t| {
            store
                .timelines()
                .unwrap()
                .into_iter()
                .find(|s| s.ttid == *t)
                .map_or(BASE, |s| s.flush_lsn)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for round in 0u64.. {
        // A few appends per sync, across both timelines, of varied sizes.
        for k in 0..(1 + round % 4) {
            let i = ((round + k) % 2) as usize;
            let t = ttids()[i];
            let len = 500 + ((round * 7919 + k * 104_729) % 40_000) as usize;
            let begin = flush[i];
            flush[i] = Lsn(begin.0 + len as u64);
            store
                .write(
                    t,
                    &[
                        Write::AppendWal {
                            begin,
                            bytes: bytes_at(i, begin, len),
                        },
                        Write::PutState(Box::new(state(t, flush[i]))),
                    ],
                )
                .unwrap();
        }
        store.sync().unwrap();
        writeln!(out, "ACK {} {}", flush[0].0, flush[1].0).unwrap();
        out.flush().unwrap();
    }
}

/// Kills the child however the test ends.
struct KillOnDrop(Child);

impl KillOnDrop {
    fn sigkill(&mut self) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(self.0.id() as libc::pid_t, libc::SIGKILL);
        }
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.sigkill();
        }
    }
}

/// Run the writer until it has acknowledged `acks` syncs, SIGKILL it, and
/// return the last flush LSNs it acknowledged.
fn run_writer_and_kill(dir: &Path, acks: usize) -> [Lsn; 2] {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args([
            "sigkill_writer_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut last = [BASE; 2];
    let mut seen = 0;
    while seen < acks {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the writer stopped acknowledging");
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let mut parts = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
        last = [Lsn(parts.next().unwrap()), Lsn(parts.next().unwrap())];
        seen += 1;
    }
    child.sigkill();
    // Acks printed after the last one read are acknowledged too.
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if let Some(rest) = line.strip_prefix("ACK ") {
            let mut parts = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
            last = [Lsn(parts.next().unwrap()), Lsn(parts.next().unwrap())];
        }
    }
    last
}

fn check_store(dir: &Path, acked: [Lsn; 2]) {
    let store = RocksStore::open(dir).unwrap();
    let states = store.timelines().unwrap();
    for (i, t) in ttids().iter().enumerate() {
        let s = states
            .iter()
            .find(|s| s.ttid == *t)
            .expect("timeline state");
        assert!(
            s.flush_lsn >= acked[i],
            "{t}: flush {} below acknowledged {}",
            s.flush_lsn,
            acked[i]
        );
        let wal = store.read_wal(*t, BASE, s.flush_lsn).unwrap();
        assert_eq!(wal.len() as u64, s.flush_lsn.0 - BASE.0);
        for (k, b) in wal.iter().enumerate() {
            assert_eq!(
                *b,
                byte_at(i, BASE.0 + k as u64),
                "{t} at {}",
                Lsn(BASE.0 + k as u64)
            );
        }
        let mut pos = BASE;
        for c in store.read_chunks(*t, Lsn(0), Lsn::MAX).unwrap() {
            let c = c.unwrap();
            assert!(c.crc_ok && c.start == pos, "{t}: {c:?} at {pos}");
            pos = c.end();
        }
        assert_eq!(pos, s.flush_lsn, "{t}: chunks end at {pos}");
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = RocksStore::init(dir.path(), NodeId(1)).unwrap();
        for t in ttids() {
            store
                .write(t, &[Write::PutState(Box::new(state(t, BASE)))])
                .unwrap();
        }
        store.sync().unwrap();
    }
    // Several lives, killed at different points, each resuming where the
    // store says the last one ended.
    for acks in [40, 150, 7, 300] {
        let acked = run_writer_and_kill(dir.path(), acks);
        assert!(acked[0] > BASE || acked[1] > BASE);
        check_store(dir.path(), acked);
    }
}
