//! `safekeeper-proxy --sync-only`: with primary and proxy both gone, every
//! commit the primary acknowledged becomes readable from the safekeepers.

mod common;

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
