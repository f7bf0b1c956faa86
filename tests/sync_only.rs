//! `safekeeper-proxy --sync-only`: with primary and proxy both gone, every
//! commit the primary acknowledged becomes readable from the safekeepers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::pg::{self, Postgres};
use common::*;
use walkeeper::lsn::Lsn;

#[test]
fn sync_only_after_primary_and_proxy_die_makes_every_acknowledged_commit_readable() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    // A standby from before the load, to be fed only by the safekeepers.
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");

    // Ledger clients: each row the primary acknowledged is recorded.
    let port = c.pg.port;
    let writer = std::thread::spawn(move || {
        let mut acked = Vec::new();
        let until = Instant::now() + Duration::from_secs(3);
        let mut i = 0;
        while Instant::now() < until {
            i += 1;
            let ok = pg::psql(port, &format!("INSERT INTO ledger VALUES ({i})"))
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                acked.push(i);
            }
        }
        acked
    });
    // The last flush position the proxy reported, polled until the kill.
    let mut reported = Lsn::INVALID;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        if let Ok(l) = c
            .pg
            .sql("SELECT coalesce(max(flush_lsn), '0/0') FROM pg_stat_replication WHERE application_name = 'safekeeper_proxy'")
            .parse::<Lsn>()
        {
            reported = reported.max(l);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Primary and proxy die together, mid-load.
    let pid = std::fs::read_to_string(c.pg.datadir.join("postmaster.pid")).unwrap();
    let pid: i32 = pid.lines().next().unwrap().trim().parse().unwrap();
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    c.proxy.as_mut().unwrap().kill9();
    let acked = writer.join().unwrap();
    assert!(!acked.is_empty(), "the ledger got commits");
    assert!(reported.is_valid());

    let synced = c.sync_only();
    assert!(
        synced >= reported,
        "synced {synced} is below the reported flush {reported}"
    );
    for sk in &c.sks {
        let commit = wait_for(
            Duration::from_secs(10),
            "commit on a settled safekeeper",
            || sk_commit_lsn(sk),
        );
        if commit >= synced {
            continue;
        }
        // A minority may lag; a majority must hold the commit.
        assert!(
            c.sks
                .iter()
                .filter(|s| sk_commit_lsn(s).is_some_and(|l| l >= synced))
                .count()
                >= 2
        );
    }

    // The standby, fed only from a safekeeper, holds every acknowledged row.
    let feeder = c
        .sks
        .iter()
        .find(|s| sk_commit_lsn(s).is_some_and(|l| l >= synced))
        .unwrap();
    pg::append_conf(
        &standby.datadir,
        &format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'\nhot_standby = on\nsynchronous_standby_names = ''\n",
            feeder.pg_addr.port()
        ),
    );
    standby.mark_standby();
    standby.start();
    let max_acked = *acked.iter().max().unwrap();
    wait_for(
        Duration::from_secs(90),
        "the standby to replay every acknowledged row",
        || {
            let n: i64 = standby
                .sql(&format!(
                    "SELECT count(*) FROM ledger WHERE id <= {max_acked}"
                ))
                .parse()
                .ok()?;
            (n as usize >= acked.len()).then_some(())
        },
    );
    let missing = standby.sql(&format!(
        "SELECT count(*) FROM unnest(ARRAY[{}]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.id = a.id)",
        acked.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    ));
    assert_eq!(
        missing, "0",
        "acknowledged ledger rows missing on the standby"
    );
}

/// A process stopped with SIGSTOP, continued on drop (also on failure).
struct Paused(u32);

impl Paused {
    fn new(sk: &Safekeeper) -> Paused {
        let pid = sk.child.as_ref().expect("running").id();
        unsafe {
            libc::kill(pid as i32, libc::SIGSTOP);
        }
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0 as i32, libc::SIGCONT);
        }
    }
}

/// Issue 26, the stale node reachable at the settle: a safekeeper stopped
/// (SIGSTOP) while the others acknowledged the last commits, continued
/// before `--sync-only`, is brought to the settled LSN by it, and a standby
/// listing it first gets every acknowledged commit.
#[test]
fn sync_only_settles_a_stale_reachable_safekeeper_too() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(30);
    let paused = Paused::new(&c.sks[0]);
    // Commits go on without node 1, and enough WAL that its catch-up takes
    // longer than settling the majority.
    c.pg.sql(
        "CREATE TABLE pad AS SELECT g, repeat('x', 1000) AS x FROM generate_series(1, 20000) g",
    );
    ledger.wait_more(30);
    c.kill_primary_and_proxy();
    let acked = ledger.stop();
    drop(paused);

    let (synced, report) = c.sync_only_report();
    assert!(
        report.ends_with("nodes 1, 2, 3; not settled: none"),
        "every reachable member is settled: {report:?}"
    );
    for sk in &c.sks {
        let commit = sk_commit_lsn(sk).expect("node answers");
        assert!(
            commit >= synced,
            "node {} has commit {commit} below the settled {synced}",
            sk.node_id
        );
    }
    c.start_standby(&mut standby, 0, "");
    assert_standby_gets_every_commit(&standby, synced, &acked);
}

/// Issue 26, the stale node unreachable at the settle: a safekeeper killed
/// while the others acknowledged the last commits and restarted after
/// `--sync-only` keeps its older commit; it answers consumers 57P03 from its
/// first moment, so a standby listing it first moves on and gets every
/// acknowledged commit.
#[test]
fn a_safekeeper_left_out_of_the_settle_sends_consumers_on() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(30);
    c.sks[0].kill9();
    ledger.wait_more(30);
    c.kill_primary_and_proxy();
    let acked = ledger.stop();

    let (synced, report) = c.sync_only_report();
    assert!(
        report.ends_with("nodes 2, 3; not settled: 1"),
        "node 1 is reported not settled: {report:?}"
    );
    c.sks[0].restart();
    let stale = sk_commit_lsn(&c.sks[0]).expect("node 1 answers proposers");
    assert!(stale < synced, "node 1 missed the last commits");
    assert_eq!(
        consumer_refusal(&c.sks[0]).map(|(code, _)| code).as_deref(),
        Some("57P03"),
        "node 1 holds commit {stale} < {synced} and was not settled"
    );
    c.start_standby(&mut standby, 0, "");
    assert_standby_gets_every_commit(&standby, synced, &acked);
    let port: u16 = standby
        .sql("SELECT sender_port FROM pg_stat_wal_receiver")
        .parse()
        .unwrap();
    assert_ne!(port, c.sks[0].pg_addr.port(), "fed by a settled node");
}

/// `--sync-only` settles by the configuration in force and never changes
/// it (issue 21): a list that is not the timeline's members is refused
/// with an error naming them, also with `--change-members`, and the
/// membership stays as it was (the full list still settles).
#[test]
fn sync_only_refuses_a_list_other_than_the_members_and_changes_nothing() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE t (id int)");
    c.pg.sql("INSERT INTO t VALUES (1)");
    c.wait_sync();
    c.kill_primary_and_proxy();
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
        .arg("--sync-only")
        .arg("--change-members")
        .arg("--safekeepers")
        .arg(member_list(&c.sks[..2]))
        .args(["--sync-timeout", "20"]));
    assert!(!ok, "--sync-only with two of three members settled: {err}");
    assert!(
        err.contains("the timeline's members are 1,2,3"),
        "the error names the members in force: {err}"
    );
    let (synced, report) = c.sync_only_report();
    assert!(synced.is_valid());
    assert!(report.contains("nodes 1, 2, 3;"), "{report}");
}
