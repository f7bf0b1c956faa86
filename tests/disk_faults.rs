//! Disk errors and power loss end to end (issue 22): each safekeeper's store
//! lives on a FUSE pass-through filesystem (`common/faultfs.rs`) that fails
//! fsyncs or writes on command and drops written-but-unsynced data on a
//! simulated power cut.

mod common;
#[path = "common/faultfs.rs"]
mod faultfs;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::pg::{self, Postgres};
use common::*;
use faultfs::{Faults, Mount};
use walkeeper::lsn::Lsn;

/// A safekeeper's flush LSN as its HTTP API shows it (the synced state);
/// None while it is down.
fn flush_at(addr: std::net::SocketAddr) -> Option<Lsn> {
    first_timeline(addr)?["flush_lsn"].as_str()?.parse().ok()
}

fn durable_flush(sk: &Safekeeper) -> Option<Lsn> {
    flush_at(sk.http_addr)
}

/// The highest synced flush each node reported, sampled until dropped.
struct Sampler {
    seen: Arc<Mutex<Vec<Lsn>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Sampler {
    fn start(addrs: Vec<std::net::SocketAddr>) -> Sampler {
        let seen = Arc::new(Mutex::new(vec![Lsn::INVALID; addrs.len()]));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::SeqCst) {
                for (i, a) in addrs.iter().enumerate() {
                    if let Some(f) = flush_at(*a) {
                        let mut g = s.lock().unwrap();
                        g[i] = g[i].max(f);
                    }
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        Sampler { seen, stop }
    }

    fn max(&self, i: usize) -> Lsn {
        self.seen.lock().unwrap()[i]
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// SIGKILL node `i`, drop its unsynced data, restart it: what it reported
/// synced before must still be there.
fn power_cut(c: &mut Cluster, mounts: &[Mount], sampler: &Sampler, i: usize) -> u64 {
    c.sks[i].kill9();
    let reported = sampler.max(i);
    let dropped = mounts[i].control.power_cut();
    mounts[i].control.set(Faults::default());
    c.sks[i].restart();
    let stored = wait_for(
        Duration::from_secs(30),
        "the restarted node's state",
        || durable_flush(&c.sks[i]),
    );
    assert!(
        stored >= reported,
        "node {} reported {reported} synced but holds {stored} after a power cut",
        i + 1
    );
    dropped
}

fn catch_up(c: &Cluster, i: usize) {
    let target = c.flush_lsn();
    wait_for(Duration::from_secs(60), "the node to catch up", || {
        sk_commit_lsn(&c.sks[i]).filter(|l| *l >= target)
    });
}

/// Issue 22: under a ledger workload, node 1's fsyncs fail (EIO, and the
/// unsynced data is gone, as Linux may drop it), node 2's disk fills
/// (ENOSPC), and nodes lose power one by one and then two at once (SIGKILL,
/// unsynced data dropped, restart). A node whose write or sync failed fails
/// closed: it never reports that data synced, and after a restart holds at
/// least everything it reported synced. Commits go on with the others and
/// resume after each restart; at the end `--sync-only`, a standby fed only
/// from the safekeepers holds every acknowledged row, and `skctl verify`
/// passes on every store.
#[test]
fn disk_errors_and_power_cuts_lose_no_acknowledged_commit() {
    if pg::absent() {
        return;
    }
    if let Some(why) = faultfs::unavailable() {
        eprintln!("SKIPPED disk_errors_and_power_cuts_lose_no_acknowledged_commit: FUSE cannot be used here: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mounts: Vec<Mount> = (1..=3)
        .map(|n| {
            Mount::new(
                &dir.path().join(format!("backing{n}")),
                &dir.path().join(format!("disk{n}")),
            )
            .expect("mounting the fault filesystem")
        })
        .collect();
    let pgdir = tempfile::tempdir().unwrap();
    let primary = Postgres::start_primary(pgdir.path(), SYNC_CONF);
    let sks: Vec<Safekeeper> = (1..=3)
        // The mount point is the data directory: the log goes beside it,
        // on the ordinary disk.
        .map(|n| Safekeeper::start(&dir.path().join(format!("disk{n}")), n, true))
        .collect();
    let mut c = Cluster::around(pgdir, primary, sks);
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let sampler = Sampler::start(c.sks.iter().map(|s| s.http_addr).collect());
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(10);

    // Node 1: fsync fails.
    mounts[0].control.set(Faults {
        fail_fsyncs: true,
        ..Faults::default()
    });
    wait_for(Duration::from_secs(30), "node 1 to fail closed", || {
        c.sks[0]
            .log_text()
            .contains("the store accepts nothing more")
            .then_some(())
    });
    // Commits go on without node 1, which reports nothing more synced.
    ledger.wait_more(5);
    let frozen = sampler.max(0);
    ledger.wait_more(10);
    assert_eq!(
        sampler.max(0),
        frozen,
        "node 1 reported more synced after its fsync failed"
    );
    let mut dropped = power_cut(&mut c, &mounts, &sampler, 0);
    catch_up(&c, 0);

    // Node 2: the disk fills.
    mounts[1].control.set(Faults {
        disk_full: true,
        ..Faults::default()
    });
    wait_for(Duration::from_secs(30), "node 2 to fail closed", || {
        c.sks[1]
            .log_text()
            .contains("the store accepts nothing more")
            .then_some(())
    });
    ledger.wait_more(10);
    dropped += power_cut(&mut c, &mounts, &sampler, 1);
    catch_up(&c, 1);

    // Power cuts under load: each node alone, then two at once.
    for i in [2, 0, 1] {
        ledger.wait_more(5);
        dropped += power_cut(&mut c, &mounts, &sampler, i);
    }
    ledger.wait_more(5);
    c.sks[0].kill9();
    c.sks[1].kill9();
    let reported = [sampler.max(0), sampler.max(1)];
    for m in &mounts[..2] {
        dropped += m.control.power_cut();
    }
    c.sks[0].restart();
    c.sks[1].restart();
    for i in [0, 1] {
        let stored = wait_for(Duration::from_secs(30), "state after restart", || {
            durable_flush(&c.sks[i])
        });
        assert!(
            stored >= reported[i],
            "node {} reported {} synced but holds {stored} after a power cut",
            i + 1,
            reported[i]
        );
    }
    let healed = Instant::now();
    ledger.wait_more(5);
    eprintln!(
        "commits resumed {} ms after two nodes lost power",
        healed.elapsed().as_millis()
    );
    let acked = ledger.stop();
    drop(sampler);

    c.kill_primary_and_proxy();
    let synced = c.sync_only();
    c.start_standby(&mut standby, 0, "");
    assert_standby_gets_every_commit(&standby, synced, &acked);
    standby.stop();
    let (f0, _, _) = mounts[0].control.counters();
    let (_, w1, _) = mounts[1].control.counters();
    for sk in &mut c.sks {
        sk.terminate();
        let (ok, out, err) = run(std::process::Command::new(env!("CARGO_BIN_EXE_skctl"))
            .arg("--datadir")
            .arg(&sk.datadir)
            .arg("verify"));
        assert!(ok, "skctl verify failed on node {}: {out}{err}", sk.node_id);
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "DISK FAULTS injected: failed fsyncs {f0}, failed writes (ENOSPC) {w1}, power cuts 6 \
         ({dropped} unsynced bytes dropped); acknowledged commits: {}; commits lost: 0",
        acked.len()
    );
}
