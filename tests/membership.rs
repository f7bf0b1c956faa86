//! Issue 21, end to end with PostgreSQL 15 under a ledger workload
//! (`safekeeper-proxy --change-members`): a dead safekeeper replaced online
//! and commits surviving a second loss; a removed safekeeper handing its
//! consumers to the members; a change interrupted by SIGKILL of the proxy
//! and finished by the restarted one; 3 -> 5 while committing, then two of
//! the original nodes die. Every acknowledged ledger row is then on the new
//! set: a standby fed only by it holds them all after `--sync-only`.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::pg::Postgres;
use common::*;

/// A cluster of three committing ledger rows, a base backup for a standby
/// taken before the workload.
fn committing() -> Option<(Cluster, Postgres, Ledger)> {
    let c = Cluster::start()?;
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(30);
    Some((c, standby, ledger))
}

/// A fresh safekeeper (new host, empty store) for the cluster's directory.
fn fresh(c: &Cluster, node_id: u64) -> Safekeeper {
    Safekeeper::start(&c.dir.path().join(format!("sk{node_id}")), node_id, true)
}

/// Node 3 is SIGKILLed for good and a fresh node 4 takes its place in
/// `c.sks` (the dead one is forgotten: nothing left to stop).
fn node3_dies_and_fresh_node4_takes_its_place(c: &mut Cluster) {
    c.sks[2].kill9();
    let sk4 = fresh(c, 4);
    let mut old = std::mem::replace(&mut c.sks[2], sk4);
    old.child = None;
}

/// The proxy's log line for a configuration in force with these members
/// (`next`: the new set of a joint one, "None" for a final one).
fn configured(log: &str, members: &str, next: &str) -> bool {
    log.lines().any(|l| {
        l.contains("membership configuration in force")
            && l.contains(&format!("members={members}"))
            && l.contains(&format!("next={next}"))
    })
}

/// Wait until the cluster's proxy logs the final configuration `members`.
fn wait_final(c: &Cluster, members: &str) {
    wait_for(
        Duration::from_secs(120),
        &format!("the configuration {members} in force"),
        || configured(&c.proxy.as_ref().unwrap().log_text(), members, "None").then_some(()),
    );
}

/// The proxy of the primary goes and one changing the members to the
/// cluster's `sks` starts.
fn change_members(c: &mut Cluster, name: &str) {
    c.proxy = None;
    c.start_proxy(name, &["--change-members"]);
}

/// Stop the primary and its proxy, settle the safekeepers, and check that a
/// standby fed by them (`first` listed first) holds every acknowledged row.
fn every_row_on_the_new_set(mut c: Cluster, mut standby: Postgres, ledger: Ledger, first: usize) {
    c.kill_primary_and_proxy();
    let acked = ledger.stop();
    let synced = c.sync_only();
    c.start_standby(&mut standby, first, "");
    assert_standby_gets_every_commit(&standby, synced, &acked);
}

#[test]
fn a_dead_safekeeper_is_replaced_online_and_commits_survive_a_second_loss() {
    let Some((mut c, standby, ledger)) = committing() else {
        return;
    };
    // Node 3's host is gone for good; node 4 is a fresh one.
    node3_dies_and_fresh_node4_takes_its_place(&mut c);

    // Without the operator's word, another list changes nothing.
    c.proxy = None;
    let refs: Vec<&Safekeeper> = c.sks.iter().collect();
    let mut typo = Proxy::start(c.dir.path(), "proxy-unconfirmed", c.pg.port, &refs, &[]);
    let status = typo
        .wait_exit(Duration::from_secs(60))
        .expect("a proxy with another list stops");
    assert!(!status.success());
    assert!(
        typo.log_text().contains("--change-members"),
        "{}",
        typo.log_text()
    );

    // The primary's proxy comes back changing the members to 1, 2, 4.
    change_members(&mut c, "proxy-change");
    wait_final(&c, "[1, 2, 4]");
    ledger.wait_more(30);
    // Each member shows it (/v1/timelines, as skctl show does).
    for sk in [&c.sks[0], &c.sks[2]] {
        let body = http_get(sk.http_addr, "/v1/timelines").expect("the HTTP port answers");
        assert!(
            body.contains("\"next_members\":null")
                && body.contains("\"node_id\":4")
                && !body.contains("\"node_id\":3"),
            "node {}: {body}",
            sk.node_id
        );
    }

    // One of the original survivors dies: 1 and 4 are a majority of the
    // new set (of the old one, 1 alone would not be).
    c.sks[1].kill9();
    ledger.wait_more(30);
    every_row_on_the_new_set(c, standby, ledger, 0);
}

/// A safekeeper moved to a new host (3 -> 4, node 3 still up): node 3 is
/// told it left, refuses consumers with 57P03 saying so, and a standby whose
/// multi-host conninfo names it first streams from the members.
#[test]
fn a_removed_safekeeper_sends_its_consumers_to_the_members() {
    let Some((mut c, mut standby, ledger)) = committing() else {
        return;
    };
    let sk4 = fresh(&c, 4);
    let old = std::mem::replace(&mut c.sks[2], sk4);
    change_members(&mut c, "proxy-move");
    wait_final(&c, "[1, 2, 4]");
    wait_for(Duration::from_secs(60), "node 3 marked left", || {
        http_get(old.http_addr, "/v1/timelines")
            .filter(|b| b.contains("\"left\":true"))
            .map(|_| ())
    });
    ledger.wait_more(30);
    let (code, message) = consumer_refusal(&old).expect("node 3 refuses consumers");
    assert_eq!(code, "57P03", "{message}");
    assert!(message.contains("removed"), "{message}");

    let members: Vec<&Safekeeper> = c.sks.iter().collect();
    let order = [vec![&old], members].concat();
    start_standby_on(&mut standby, &order, "");
    let seen = ledger.count();
    wait_for(Duration::from_secs(60), "the standby to stream", || {
        let (_, out, _) = run(&mut common::pg::psql(
            standby.port,
            "SELECT count(*) FROM ledger",
        ));
        (out.trim().parse::<usize>().unwrap_or(0) >= seen).then_some(())
    });
    let port: u16 = standby
        .sql("SELECT sender_port FROM pg_stat_wal_receiver")
        .parse()
        .unwrap();
    assert_ne!(port, old.pg_addr.port(), "fed by a member, not node 3");
    c.kill_primary_and_proxy();
    let acked = ledger.stop();
    let synced = c.sync_only();
    assert_standby_gets_every_commit(&standby, synced, &acked);
}

/// A change interrupted by SIGKILL of the proxy the moment it logs the
/// joint configuration (3 -> 4, node 3 gone), finished by the proxy
/// restarted with the new list and without --change-members: whatever the
/// nodes stored by then (the joint configuration, or already the final
/// one: the final follows the joint within a round trip, so which one is
/// up to the machine's timing; the simulation interrupts changes at every
/// point), it goes on to the final one, and every acknowledged row is kept.
#[test]
fn a_change_interrupted_by_a_proxy_kill_is_finished_by_the_next_proxy() {
    let Some((mut c, standby, ledger)) = committing() else {
        return;
    };
    node3_dies_and_fresh_node4_takes_its_place(&mut c);
    change_members(&mut c, "proxy-interrupted");
    // Kill it the moment it logs the joint configuration.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !configured(
        &c.proxy.as_ref().unwrap().log_text(),
        "[1, 2, 3]",
        "Some([1, 2, 4])",
    ) {
        assert!(Instant::now() < deadline, "no joint configuration made");
        std::thread::sleep(Duration::from_millis(1));
    }
    c.proxy.as_mut().unwrap().kill9();
    for sk in &c.sks {
        let body = http_get(sk.http_addr, "/v1/timelines").unwrap_or_default();
        let joint = !body.contains("\"next_members\":null");
        eprintln!("after the kill node {}: joint stored: {joint}", sk.node_id);
    }
    let before = ledger.count();
    c.start_proxy("proxy-resumed", &[]);
    wait_for(Duration::from_secs(120), "commits again", || {
        (ledger.count() > before + 30).then_some(())
    });
    wait_for(Duration::from_secs(120), "the final configuration", || {
        c.sks
            .iter()
            .all(|sk| {
                http_get(sk.http_addr, "/v1/timelines").is_some_and(|b| {
                    b.contains("\"next_members\":null")
                        && b.contains("\"node_id\":4")
                        && !b.contains("\"node_id\":3")
                })
            })
            .then_some(())
    });
    c.sks[1].kill9();
    ledger.wait_more(30);
    every_row_on_the_new_set(c, standby, ledger, 0);
}

/// 3 -> 5 while committing; then two of the original three die and commits
/// go on (three of five; of the old set one alone would be left).
#[test]
fn a_grown_set_commits_after_two_original_nodes_die() {
    let Some((mut c, standby, ledger)) = committing() else {
        return;
    };
    let (sk4, sk5) = (fresh(&c, 4), fresh(&c, 5));
    c.sks.extend([sk4, sk5]);
    change_members(&mut c, "proxy-grow");
    wait_final(&c, "[1, 2, 3, 4, 5]");
    ledger.wait_more(30);
    c.sks[0].kill9();
    c.sks[1].kill9();
    ledger.wait_more(30);
    every_row_on_the_new_set(c, standby, ledger, 2);
}
