//! safekeeper-proxy end to end: a real PostgreSQL 15 primary whose commits
//! wait for a majority of three real safekeepers, through crashes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::pg::{self, Postgres};
use common::*;
use walkeeper::lsn::Lsn;

#[test]
fn every_safekeeper_holds_the_primarys_wal_after_pgbench() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.init_pgbench();
    let done = pgbench_ok(c.spawn_pgbench(3));
    assert!(done > 0);
    let end = c.flush_lsn();
    for sk in &c.sks {
        wait_for(
            Duration::from_secs(30),
            "every safekeeper to learn the commit",
            || sk_commit_lsn(sk).filter(|l| *l >= end),
        );
    }
    c.proxy.as_mut().unwrap().kill9();
    for sk in c.sks.iter_mut() {
        assert!(sk.terminate().success());
    }
    for sk in &c.sks {
        let (start, flush, commit, wal) = stored(&sk.datadir, end);
        assert!(
            flush >= end && commit >= end,
            "node {}: flush {flush} commit {commit} < {end}",
            sk.node_id
        );
        assert_eq!(
            start,
            Lsn(START),
            "a new timeline starts at the slot's segment start"
        );
        assert!(
            wal.unwrap() == primary_wal(&c.pg, start, end),
            "node {}: WAL differs from the primary's pg_wal",
            sk.node_id
        );
    }
}

#[test]
fn a_commit_waits_for_a_majority() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE t (i int)");
    c.assert_commit_waits_for_a_majority("INSERT INTO t VALUES (1)");
    assert_eq!(c.pg.sql("SELECT count(*) FROM t"), "1");
}

#[test]
fn a_killed_safekeeper_catches_up_while_the_load_goes_on() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.init_pgbench();
    let bench = c.spawn_pgbench(8);
    std::thread::sleep(Duration::from_secs(2));
    c.sks[2].kill9();
    let during: Lsn = c.flush_lsn();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.flush_lsn() > during,
        "commits went on with two safekeepers"
    );
    c.sks[2].restart();
    assert!(pgbench_ok(bench) > 0);
    let end = c.flush_lsn();
    wait_for(
        Duration::from_secs(60),
        "the restarted safekeeper to catch up",
        || sk_commit_lsn(&c.sks[2]).filter(|l| *l >= end),
    );
}

#[test]
fn a_new_proxy_resumes_in_a_higher_term_and_acknowledged_commits_are_on_a_majority() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.init_pgbench();
    let bench = c.spawn_pgbench(10);
    std::thread::sleep(Duration::from_secs(3));
    c.proxy.as_mut().unwrap().kill9();
    // What the primary was told is flushed (and so acknowledged) is the
    // slot's restart LSN: the last flush the proxy reported.
    std::thread::sleep(Duration::from_millis(300));
    let acked: Lsn = c
        .pg
        .sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'safekeeper_proxy'")
        .parse()
        .unwrap();
    for sk in c.sks.iter_mut() {
        sk.kill9();
    }
    let holders = c
        .sks
        .iter()
        .filter(|sk| {
            let (start, _, _, wal) = stored(&sk.datadir, acked);
            wal.is_some_and(|w| w == primary_wal(&c.pg, start, acked))
        })
        .count();
    assert!(
        holders >= 2,
        "acknowledged WAL up to {acked} is on {holders} of 3 safekeepers"
    );
    for sk in c.sks.iter_mut() {
        sk.restart();
    }
    c.start_proxy("proxy2", &[]);
    c.wait_sync();
    assert!(pgbench_ok(bench) > 0);
    let log = c.proxy.as_ref().unwrap().log_text();
    let term: u64 = log
        .lines()
        .filter_map(|l| l.split("term=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .max()
        .expect("the new proxy was elected");
    assert!(term >= 2, "the new proxy leads term {term}");
    assert!(
        log.contains("matches the safekeepers'"),
        "the primary was checked: {log}"
    );
}

#[test]
fn another_cluster_is_refused() {
    let Some(c) = Cluster::start() else { return };
    let other_dir = tempfile::tempdir().unwrap();
    let other = Postgres::start_primary(other_dir.path(), "");
    assert_ne!(other.system_id(), c.pg.system_id());
    let refs: Vec<&Safekeeper> = c.sks.iter().collect();
    let mut p = Proxy::start(c.dir.path(), "intruder", other.port, &refs, &[]);
    let status = p
        .wait_exit(Duration::from_secs(30))
        .expect("the proxy stops by itself");
    assert!(!status.success());
    let log = p.log_text();
    assert!(log.contains("system_id"), "{log}");
}

/// A file-system copy of the cluster's primary after a first commit, made
/// with the primary stopped; the primary runs again and the proxy is its
/// synchronous standby. Returns (data directory, copy).
fn copy_of_the_primary(c: &mut Cluster) -> (PathBuf, PathBuf) {
    c.pg.sql("CREATE TABLE t (i int, pad text)");
    c.pg.sql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 1000) g");
    c.pg.stop();
    let data = c.pg.datadir.clone();
    let copy = data.with_extension("copy");
    let (ok, _, err) = run(Command::new("cp").arg("-a").arg(&data).arg(&copy));
    assert!(ok, "{err}");
    c.pg.start();
    c.wait_sync();
    (data, copy)
}

/// Put the copy in place of the (stopped) primary, with `conf` added, and
/// start it.
fn start_the_copy(c: &mut Cluster, data: &Path, copy: &Path, conf: &str) {
    std::fs::remove_dir_all(data).unwrap();
    std::fs::rename(copy, data).unwrap();
    pg::append_conf(data, conf);
    c.pg.start();
}

/// A proxy started on the copy stops by itself, saying the primary is not
/// the one the safekeepers follow; its log.
fn a_proxy_on_the_copy_is_refused(c: &mut Cluster) -> String {
    c.start_proxy("proxy-on-copy", &[]);
    let p = c.proxy.as_mut().unwrap();
    let status = p
        .wait_exit(Duration::from_secs(60))
        .expect("the proxy stops by itself");
    assert!(!status.success());
    let log = p.log_text();
    assert!(
        log.contains("not the one these safekeepers follow"),
        "{log}"
    );
    log
}

#[test]
fn the_primary_restored_from_an_older_copy_is_refused() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let (data, copy) = copy_of_the_primary(&mut c);
    // More commits, acknowledged by the safekeepers.
    c.pg.sql("INSERT INTO t SELECT g, 'b' FROM generate_series(1, 20000) g");
    let end = c.flush_lsn();
    for sk in &c.sks[..2] {
        wait_for(
            Duration::from_secs(30),
            "the commit on the safekeepers",
            || sk_commit_lsn(sk).filter(|l| *l >= end),
        );
    }
    c.proxy.as_mut().unwrap().kill9();
    c.pg.stop();
    // Put the old copy in place and let it write a different history.
    start_the_copy(&mut c, &data, &copy, "synchronous_standby_names = ''\n");
    c.pg.sql("INSERT INTO t SELECT g, 'c' FROM generate_series(1, 40000) g");
    a_proxy_on_the_copy_is_refused(&mut c);
}

/// The same divergence, when the safekeepers' WAL ends at a segment start
/// (after pg_switch_wal) and the diverged primary's slot is newer: its
/// stream starts at that segment, with nothing below the safekeepers' end
/// of WAL to compare. The proxy streams the page below from the previous
/// segment (kept by wal_keep_size) and still finds the difference.
#[test]
fn a_diverged_primary_is_refused_also_when_the_safekeepers_end_at_a_segment_start() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let (data, copy) = copy_of_the_primary(&mut c);
    c.pg.sql("INSERT INTO t SELECT g, 'b' FROM generate_series(1, 20000) g");
    // End the safekeepers' WAL at a segment start: switch, wait until they
    // hold it, and stop the primary at once (no shutdown checkpoint).
    let seg = 16u64 << 20;
    let switched: Lsn = c.pg.sql("SELECT pg_switch_wal()").parse().unwrap();
    let boundary = Lsn(switched.0.div_ceil(seg) * seg);
    for sk in &c.sks[..2] {
        wait_for(
            Duration::from_secs(30),
            "the switch on the safekeepers",
            || sk_commit_lsn(sk).filter(|l| *l >= boundary),
        );
    }
    c.pg.stop();
    c.proxy.as_mut().unwrap().kill9();
    // The old copy writes another history past the boundary, keeping its
    // WAL, and gets a new slot beyond it.
    start_the_copy(
        &mut c,
        &data,
        &copy,
        "synchronous_standby_names = ''\nwal_keep_size = '1GB'\n",
    );
    c.pg.sql("SELECT pg_drop_replication_slot('safekeeper_proxy')");
    while c.flush_lsn().0 < boundary.0 + seg {
        c.pg.sql("INSERT INTO t SELECT g, 'c' FROM generate_series(1, 40000) g");
    }
    // A new slot starts at the last checkpoint's redo point.
    c.pg.sql("CHECKPOINT");
    let log = a_proxy_on_the_copy_is_refused(&mut c);
    assert!(log.contains("to compare a full page"), "{log}");
}
