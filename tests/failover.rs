//! Issue 19: primary fail-over on the same safekeepers. A standby fed only
//! by the safekeepers is promoted (PostgreSQL timeline 2) and its proxy
//! continues the same walkeeper timeline; a standby promoted below the
//! settled LSN is refused.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::pg::{self, Postgres};
use common::*;
use walkeeper::consensus::pg_timeline::parse_history_file;
use walkeeper::lsn::Lsn;

/// Promote `pg` (a standby) and wait until it accepts writes.
fn promote(pg: &Postgres) {
    let (ok, _, err) = run(pg::as_postgres(&pg::pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&pg.datadir)
        .args(["-w", "promote"]));
    assert!(ok, "promote failed: {err}");
    wait_for(
        Duration::from_secs(30),
        "the promoted server to leave recovery",
        || (pg.sql("SELECT pg_is_in_recovery()") == "f").then_some(()),
    );
}

/// Where timeline 2 left timeline 1, by the promoted server's history file.
fn switch_point(pg: &Postgres) -> Lsn {
    let history = std::fs::read(pg.pg_wal().join("00000002.history")).expect("timeline 2");
    let ancestors = parse_history_file(&history, 2).unwrap();
    assert_eq!(ancestors.len(), 1, "{ancestors:?}");
    ancestors[0].1
}

/// The (timeline, xlogpos) a safekeeper's IDENTIFY_SYSTEM reports, asked as
/// a proposer (no serving rule).
fn identify(sk: &Safekeeper) -> (u32, Lsn) {
    let mut c = RawClient::connect(sk.pg_addr, "-c walkeeper.role=proposer");
    let reply = c.query("IDENTIFY_SYSTEM");
    let row = reply.iter().find(|m| m.tag == b'D').expect("a data row");
    let mut b = &row.body[2..];
    let mut cols = Vec::new();
    for _ in 0..3 {
        let len = i32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        cols.push(String::from_utf8_lossy(&b[4..4 + len]).into_owned());
        b = &b[4 + len..];
    }
    (cols[1].parse().unwrap(), cols[2].parse().unwrap())
}

/// Put `next` in the cluster as its primary; the old one (dead) is
/// returned to be dropped with the test.
fn replace_primary(c: &mut Cluster, next: Postgres) -> Postgres {
    std::mem::replace(&mut c.pg, next)
}

#[test]
fn a_promoted_standby_continues_the_timeline_and_keeps_every_acknowledged_commit() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");

    // Phase 1 on the first primary, then it and its proxy die mid-load.
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(50);
    c.kill_primary_and_proxy();
    let mut acked = ledger.stop();
    let synced = c.sync_only();

    // The standby, fed only by the safekeepers, gets every commit and is
    // promoted: PostgreSQL timeline 2 from the end of what it replayed.
    c.start_standby(&mut standby, 0, SYNC_CONF);
    assert_standby_gets_every_commit(&standby, synced, &acked);
    promote(&standby);
    let switch = switch_point(&standby);
    eprintln!("settled at {synced}, the promoted standby's timeline 2 starts at {switch}");
    assert!(
        switch >= synced,
        "switch {switch} below the settled {synced}"
    );
    let _old = replace_primary(&mut c, standby);

    // Its proxy, with the same --safekeepers and no new timeline.
    c.start_proxy("proxy2", &[]);
    c.wait_sync();
    let first = acked.iter().max().unwrap() + 1;
    let mut second = Postgres::basebackup(c.dir.path(), &c.pg, "second");
    let ledger = Ledger::start_at(c.pg.port, first);
    ledger.wait_more(50);
    for sk in &c.sks {
        wait_for(
            Duration::from_secs(30),
            "every safekeeper on timeline 2",
            || (identify(sk).0 == 2).then_some(()),
        );
    }
    c.kill_primary_and_proxy();
    let acked2 = ledger.stop();
    assert!(!acked2.is_empty());
    let synced2 = c.sync_only();
    assert!(synced2 > switch);

    // A standby from a base backup of the promoted primary, fed only by the
    // safekeepers, holds every acknowledged row of both phases.
    acked.extend(acked2);
    c.start_standby(&mut second, 1, "");
    assert_standby_gets_every_commit(&second, synced2, &acked);
    let tli = second.sql("SELECT timeline_id FROM pg_control_checkpoint()");
    assert_eq!(tli, "2");
}

#[test]
fn a_standby_promoted_below_the_settled_lsn_is_refused() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(20);
    // Commits after this point are acknowledged; the standby stops short.
    let early: Lsn = c.pg.sql("SELECT pg_current_wal_lsn()").parse().unwrap();
    ledger.wait_more(30);
    c.kill_primary_and_proxy();
    ledger.stop();
    let synced = c.sync_only();

    c.start_standby(
        &mut standby,
        0,
        &format!(
            "recovery_target_lsn = '{early}'\nrecovery_target_action = 'promote'\n{SYNC_CONF}"
        ),
    );
    wait_for(
        Duration::from_secs(60),
        "the standby to promote itself at its recovery target",
        || (standby.sql("SELECT pg_is_in_recovery()") == "f").then_some(()),
    );
    let switch = switch_point(&standby);
    assert!(switch < synced, "switch {switch}, settled {synced}");
    let _old = replace_primary(&mut c, standby);

    c.start_proxy("proxy2", &[]);
    let proxy = c.proxy.as_mut().unwrap();
    let status = proxy
        .wait_exit(Duration::from_secs(60))
        .expect("the proxy stops");
    assert!(!status.success());
    let log = proxy.log_text();
    assert!(
        log.contains("lacks them") && log.contains(&format!("left timeline 1 at {switch}")),
        "the proxy says why: {log}"
    );
    for sk in &c.sks {
        assert_eq!(identify(sk), (1, synced), "node {} unchanged", sk.node_id);
    }
}
