//! Issue 21, end to end with PostgreSQL 15: a safekeeper's host is gone for
//! good; a fresh fourth joins and the dead one leaves while the primary
//! commits (`safekeeper-proxy --change-members`); then one of the original
//! survivors dies too and commits go on, which they could not on the old
//! set. Every acknowledged ledger row is then on the new set: a standby fed
//! only by it holds them all after `--sync-only`.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::pg::Postgres;
use common::*;

#[test]
fn a_dead_safekeeper_is_replaced_online_and_commits_survive_a_second_loss() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(30);

    // Node 3's host is gone for good; node 4 is a fresh one.
    c.sks[2].kill9();
    let sk4 = Safekeeper::start(&c.dir.path().join("sk4"), 4, true);
    let mut old = std::mem::replace(&mut c.sks[2], sk4);
    old.child = None;

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
    c.start_proxy("proxy-change", &["--change-members"]);
    let proxy_log = || c.proxy.as_ref().unwrap().log_text();
    wait_for(
        Duration::from_secs(120),
        "the configuration 1, 2, 4 in force",
        || {
            proxy_log()
                .lines()
                .any(|l| {
                    l.contains("membership configuration in force")
                        && l.contains("members=[1, 2, 4]")
                        && l.contains("next=None")
                })
                .then_some(())
        },
    );
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

    c.kill_primary_and_proxy();
    let acked = ledger.stop();
    let synced = c.sync_only();
    c.start_standby(&mut standby, 0, "");
    assert_standby_gets_every_commit(&standby, synced, &acked);
}
