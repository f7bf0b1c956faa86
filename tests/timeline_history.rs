//! A primary on a timeline above 1 (a promoted standby): the proxy hands its
//! history file to the safekeepers, which serve it to consumers.

mod common;

use std::time::Duration;

use common::pg::{self, Postgres};
use common::*;
use walkeeper::lsn::Lsn;

/// The cells of the first DataRow of a reply.
fn first_row(reply: &[BeMsg]) -> Vec<Option<Vec<u8>>> {
    let row = reply.iter().find(|m| m.tag == b'D').expect("a data row");
    let mut b = &row.body[..];
    let n = u16::from_be_bytes([b[0], b[1]]) as usize;
    b = &b[2..];
    let mut cells = Vec::new();
    for _ in 0..n {
        let len = i32::from_be_bytes(b[..4].try_into().unwrap());
        b = &b[4..];
        if len < 0 {
            cells.push(None);
        } else {
            cells.push(Some(b[..len as usize].to_vec()));
            b = &b[len as usize..];
        }
    }
    cells
}

#[test]
fn safekeepers_serve_the_history_file_of_a_promoted_primary() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let old = Postgres::start_primary(dir.path(), "");
    old.sql("CREATE TABLE t (i int)");
    // A copy of it, promoted: timeline 2.
    let root = pg::postgres_dir(dir.path(), "promoted");
    let datadir = root.join("data");
    let (ok, _, err) = run(pg::as_postgres(&pg::pg_bin("pg_basebackup"))
        .arg("-D")
        .arg(&datadir)
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-X",
            "stream",
            "--no-sync",
            "-c",
            "fast",
        ])
        .arg("-p")
        .arg(old.port.to_string()));
    assert!(ok, "pg_basebackup failed: {err}");
    let port = free_port();
    pg::append_conf(
        &datadir,
        &format!(
            "port = {port}\nunix_socket_directories = '{}'\n",
            root.display()
        ),
    );
    let mut promoted = Postgres::at(datadir, port, root.join("log"));
    promoted.mark_standby();
    promoted.start();
    let (ok, _, err) = run(pg::as_postgres(&pg::pg_bin("pg_ctl"))
        .arg("-D")
        .arg(&promoted.datadir)
        .args(["-w", "promote"]));
    assert!(ok, "promote failed: {err}");
    wait_for(
        Duration::from_secs(30),
        "the promoted server to leave recovery",
        || (promoted.sql("SELECT pg_is_in_recovery()") == "f").then_some(()),
    );
    let history = std::fs::read(promoted.pg_wal().join("00000002.history"))
        .expect("the history file of timeline 2");

    let sks: Vec<Safekeeper> = (1..=3)
        .map(|n| Safekeeper::start(&dir.path().join(format!("sk{n}")), n, true))
        .collect();
    let refs: Vec<&Safekeeper> = sks.iter().collect();
    let _proxy = Proxy::start(
        dir.path(),
        "proxy",
        promoted.port,
        &refs,
        &["--create-timeline"],
    );
    promoted.sql("INSERT INTO t SELECT generate_series(1, 100)");
    let end: Lsn = promoted
        .sql("SELECT pg_current_wal_flush_lsn()")
        .parse()
        .unwrap();
    for sk in &sks {
        wait_for(
            Duration::from_secs(30),
            "the commit on every safekeeper",
            || sk_commit_lsn(sk).filter(|l| *l >= end),
        );
    }
    for sk in &sks {
        let mut c = RawClient::connect(sk.pg_addr, "");
        let reply = c.query("IDENTIFY_SYSTEM");
        assert_eq!(
            first_row(&reply)[1].as_deref(),
            Some(&b"2"[..]),
            "timeline 2 is reported"
        );
        let reply = c.query("TIMELINE_HISTORY 2");
        let row = first_row(&reply);
        assert_eq!(row[0].as_deref(), Some(&b"00000002.history"[..]));
        assert_eq!(
            row[1].as_deref(),
            Some(history.as_slice()),
            "the primary's history file, byte for byte"
        );
        // A timeline it has no file for is a clean error.
        let reply = c.query("TIMELINE_HISTORY 3");
        assert!(reply.iter().any(|m| m.tag == b'E'));
    }
}
