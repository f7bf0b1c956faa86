//! A safekeeper whose disk is replaced under a running proxy started with
//! `--create-timeline`: it comes back re-initialised (`--init`) under its
//! old node id, without the timeline and without the WAL it acknowledged.
//! The proxy must not count it, and the operator's path
//! (`--recreate-timeline-on`, README "When a safekeeper's disk is
//! replaced") brings it back.

mod common;

use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::pg;
use common::*;

const LONG: Duration = Duration::from_secs(60);

/// An INSERT in its own psql, which returns once the commit is
/// acknowledged by a majority of safekeepers.
fn spawn_insert(c: &Cluster, value: u32) -> KillOnDrop {
    let child = pg::psql(c.pg.port, &format!("INSERT INTO t VALUES ({value})"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

fn exited(child: &mut Child) -> Option<ExitStatus> {
    child.try_wait().unwrap()
}

fn waiting_for_sync_rep(c: &Cluster) -> bool {
    c.pg.sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") == "1"
}

#[test]
fn a_wiped_safekeeper_is_not_counted_until_the_operator_recreates_its_timeline() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE t (i int)");
    c.pg.sql("INSERT INTO t SELECT generate_series(1, 1000)");
    let acked = c.flush_lsn();
    wait_for(LONG, "node 3 to hold the acknowledged WAL", || {
        sk_commit_lsn(&c.sks[2]).filter(|l| *l >= acked)
    });

    // Node 3's disk is replaced.
    c.sks[2].terminate();
    let old_life = c.sks[2].log_text().len();
    let new_life = |c: &Cluster| c.sks[2].log_text()[old_life..].to_string();
    c.sks[2].wipe_and_reinit();
    wait_for(LONG, "the proxy to greet the re-initialised node 3", || {
        let log = new_life(&c);
        (log.contains("refused") || log.contains("timeline created")).then_some(())
    });
    // Nodes 1 and 2 still make a majority.
    c.pg.sql("INSERT INTO t VALUES (1001)");

    // Node 1 stops: node 2 and the wiped node 3 are no majority of nodes
    // that hold the acknowledged WAL, so a commit must wait.
    c.sks[0].terminate();
    let mut insert = spawn_insert(&c, 1002);
    let wrongly_acked = "a commit was acknowledged by node 2 and the wiped node 3";
    wait_for(LONG, "the insert to wait for the safekeepers", || {
        assert!(exited(&mut insert.0).is_none(), "{wrongly_acked}");
        waiting_for_sync_rep(&c).then_some(())
    });
    // It keeps waiting (a wiped node that catches up from node 2 would let
    // it through within a second or two).
    let window = Instant::now() + Duration::from_secs(5);
    while Instant::now() < window {
        assert!(exited(&mut insert.0).is_none(), "{wrongly_acked}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = c.proxy.as_ref().unwrap().log_text();
    assert!(
        log.contains("safekeeper 3 at") && log.contains("--recreate-timeline-on 3"),
        "the proxy does not say why node 3 is not counted:\n{log}"
    );
    assert!(
        !new_life(&c).contains("timeline created"),
        "the wiped node was given the timeline"
    );
    // Node 1 returns: the commit goes through.
    c.sks[0].restart();
    let status = wait_for(LONG, "the insert to commit", || exited(&mut insert.0));
    assert!(status.success());

    // The operator's path: restart the proxy once with
    // --recreate-timeline-on (its usual --create-timeline creates nothing).
    c.proxy = None;
    c.start_proxy(
        "proxy2",
        &["--create-timeline", "--recreate-timeline-on", "3"],
    );
    c.wait_sync();
    c.pg.sql("INSERT INTO t VALUES (1003)");
    let acked = c.flush_lsn();
    wait_for(LONG, "node 3 to be re-created and catch up", || {
        sk_commit_lsn(&c.sks[2]).filter(|l| *l >= acked)
    });
    let log = c.proxy.as_ref().unwrap().log_text();
    assert!(log.contains("re-created timeline"), "{log}");

    // Node 3 counts again: with node 1 down, nodes 2 and 3 acknowledge.
    c.sks[0].terminate();
    let mut insert = spawn_insert(&c, 1004);
    let status = wait_for(LONG, "a commit acknowledged by nodes 2 and 3", || {
        exited(&mut insert.0)
    });
    assert!(status.success());
    assert_eq!(c.pg.sql("SELECT count(*) FROM t"), "1004");
}
