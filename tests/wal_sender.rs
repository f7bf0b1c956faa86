//! The safekeeper's WAL sender against PostgreSQL 15's own clients. Until the
//! proxy exists, a test proposer pushes real WAL: whole segment files read
//! from a real primary's pg_wal.

mod common;

use std::time::{Duration, Instant};

use common::pg::{self, Postgres};
use common::*;
use walkeeper::consensus::messages::*;
use walkeeper::lsn::Lsn;
use walkeeper::pq::replication::XLogData;

fn segment_path(dir: &std::path::Path, segno: u64) -> std::path::PathBuf {
    dir.join(walkeeper::lsn::segment_file_name(1, segno, SEG))
}

#[test]
fn pg_receivewal_and_a_standby_get_the_primarys_committed_wal() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let primary = Postgres::start_primary(dir.path(), "");
    primary.sql("CREATE TABLE t (i int, pad text)");
    primary.sql("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g");
    // The standby's base backup starts in WAL the safekeeper will hold.
    let mut standby = Postgres::basebackup(dir.path(), &primary, "standby");
    primary.sql("INSERT INTO t SELECT g, repeat('y', 100) FROM generate_series(1, 30000) g");
    let rows_at_end: u64 = primary.sql("SELECT count(*) FROM t").parse().unwrap();
    primary.sql("SELECT pg_switch_wal()");
    let insert: Lsn = primary
        .sql("SELECT pg_current_wal_insert_lsn()")
        .parse()
        .unwrap();
    let last_full = insert.segment_number(SEG) - 1;
    let mut wal = Vec::new();
    for segno in 1..=last_full {
        wal.extend(std::fs::read(segment_path(&primary.pg_wal(), segno)).unwrap());
    }
    let end = START + wal.len() as u64;

    let sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let mut c = RawClient::proposer(sk.pg_addr);
    elect_single(&mut c, greeting_for(primary.system_id(), true), 1);
    assert_eq!(push(&mut c, 1, START, &wal, 128 * 1024, end), end);

    // pg_receivewal: segment files byte-identical to the primary's.
    let out = pg::postgres_dir(dir.path(), "receivewal");
    // pg_receivewal stops once it has received past --endpos.
    pg::receive_wal(&out, sk.pg_addr.port(), 1, Lsn(end - 1));
    pg::assert_same_segments(&out, &primary.pg_wal(), 1..=last_full);
    // pg_waldump reads what pg_receivewal wrote, through the committed end.
    let (ok, _, stderr) = run(std::process::Command::new(pg::pg_bin("pg_waldump"))
        .arg("-p")
        .arg(&out)
        .arg("-s")
        .arg(Lsn(START).to_string())
        .arg("-e")
        .arg(Lsn(end).to_string())
        .arg("-q"));
    assert!(ok, "pg_waldump failed: {stderr}");

    // A standby streaming from the safekeeper replays to the committed end.
    pg::append_conf(
        &standby.datadir,
        &format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby1'\nhot_standby = on\n",
            sk.pg_addr.port()
        ),
    );
    standby.mark_standby();
    standby.start();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let replayed: Lsn = standby
            .sql("SELECT coalesce(pg_last_wal_replay_lsn(), '0/0')")
            .parse()
            .unwrap();
        let segment_of_switch = Lsn(end - 1).segment_number(SEG);
        if replayed.segment_number(SEG) >= segment_of_switch {
            let rows: u64 = standby.sql("SELECT count(*) FROM t").parse().unwrap();
            if rows == rows_at_end {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "standby replayed only to {replayed}; log:\n{}",
            standby.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // It never got anything past the committed end.
    let received: Lsn = standby
        .sql("SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')")
        .parse()
        .unwrap();
    assert!(
        received <= Lsn(end),
        "standby received {received} beyond {}",
        Lsn(end)
    );
}

fn start_replication(sk: &Safekeeper, options: &str, start: u64, extra: &str) -> RawClient {
    let mut c = RawClient::connect(sk.pg_addr, options);
    c.query_raw(&format!(
        "START_REPLICATION PHYSICAL {} {extra}",
        Lsn(start)
    ));
    c
}

/// Collect XLogData until nothing arrives for `quiet`; returns the bytes.
fn collect(c: &mut RawClient, from: u64, quiet: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut pos = from;
    while let Some(m) = c.try_read(quiet) {
        match m.tag {
            b'W' => {}
            b'd' if m.body[0] == b'w' => {
                let x = XLogData::decode(&m.body).unwrap();
                assert_eq!(x.data_start, Lsn(pos), "XLogData must be contiguous");
                assert!(x.data.len() as u64 <= 128 * 1024);
                pos += x.data.len() as u64;
                got.extend_from_slice(&x.data);
            }
            b'd' => {}
            b'E' => panic!("error: {:?}", m.error_field(b'M')),
            other => panic!("unexpected {:?}", other as char),
        }
    }
    got
}

#[test]
fn consumers_never_see_wal_beyond_commit() {
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(1, true), 1);
    let wal = wal_bytes(1, START, 400_000);
    // Flushed to START+400000, committed only to START+150000.
    push(&mut p, 1, START, &wal, 128 * 1024, START + 150_000);
    let mut c = start_replication(&sk, "", START, "TIMELINE 1");
    let got = collect(&mut c, START, Duration::from_millis(700));
    assert_eq!(got, wal[..150_000], "consumer got bytes beyond commit_lsn");
    // A new commit wakes the waiting sender, which continues exactly there.
    p.send(&append(1, START + 400_000, &[], START + 300_000));
    p.recv();
    let more = collect(&mut c, START + 150_000, Duration::from_millis(700));
    assert_eq!(more, wal[150_000..300_000]);
    // A request at or below flush but beyond commit waits rather than fails.
    let mut w = start_replication(&sk, "", START + 350_000, "");
    let early = collect(&mut w, START + 350_000, Duration::from_millis(500));
    assert!(early.is_empty());
    p.send(&append(1, START + 400_000, &[], START + 400_000));
    p.recv();
    assert_eq!(
        collect(&mut w, START + 350_000, Duration::from_millis(700)),
        wal[350_000..]
    );
}

#[test]
fn recovery_reads_need_the_proposer_role_and_stop_when_the_term_changes() {
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(1, true), 1);
    let wal = wal_bytes(1, START, 200_000);
    push(&mut p, 1, START, &wal, 128 * 1024, START);

    // Without the proposer role: refused, connection usable.
    let mut c = RawClient::connect(sk.pg_addr, "");
    let reply = c.query(&format!("START_REPLICATION {} (term '1')", Lsn(START)));
    assert!(reply
        .iter()
        .any(|m| m.tag == b'E' && m.error_field(b'M').unwrap().contains("proposer")));
    // A wrong term: refused.
    let mut r = RawClient::connect(sk.pg_addr, "-c walkeeper.role=proposer");
    let reply = r.query(&format!("START_REPLICATION {} (term '7')", Lsn(START)));
    assert!(reply.iter().any(|m| m.tag == b'E'));
    // The right term streams up to flush_lsn, beyond commit.
    let mut r = start_replication(&sk, "-c walkeeper.role=proposer", START, "(term '1')");
    assert_eq!(collect(&mut r, START, Duration::from_millis(700)), wal);
    // Another proposer takes term 2: the recovery read ends at once.
    let mut p2 = RawClient::proposer(sk.pg_addr);
    p2.send(&ProposerMessage::Greeting(greeting_for(1, false)));
    p2.recv();
    p2.send(&ProposerMessage::VoteRequest(VoteRequest::new(2)));
    assert!(matches!(p2.recv(), AcceptorMessage::Vote(v) if v.granted));
    let m = r
        .try_read(Duration::from_secs(5))
        .expect("the sender says it stops");
    assert_eq!(m.tag, b'E', "{m:?}");
    assert!(m.error_field(b'M').unwrap().contains("term"));
}

#[test]
fn bad_requests_get_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(1, true), 1);
    let wal = wal_bytes(1, START, 10_000);
    push(&mut p, 1, START, &wal, 128 * 1024, START + 10_000);

    let mut c = RawClient::connect(sk.pg_addr, "");
    for q in [
        "SELECT 1",
        "garbage !!",
        &format!("START_REPLICATION {}", Lsn(START + 20_000)),
        "START_REPLICATION 0/0 TIMELINE 9",
    ] {
        let reply = c.query(q);
        let err = reply
            .iter()
            .find(|m| m.tag == b'E')
            .unwrap_or_else(|| panic!("no error for {q:?}"));
        assert!(err.error_field(b'C').is_some());
        assert_eq!(
            reply.last().unwrap().tag,
            b'Z',
            "{q:?}: the connection stays usable"
        );
    }
    let reply = c.query(&format!("START_REPLICATION {}", Lsn(START + 20_000)));
    let msg = reply[0].error_field(b'M').unwrap();
    assert!(msg.contains("ahead of the WAL flush position"), "{msg}");
    let reply = c.query("START_REPLICATION 0/0");
    let msg = reply[0].error_field(b'M').unwrap();
    assert!(msg.contains("has already been removed"), "{msg}");
    // SHOW and READ_REPLICATION_SLOT answer as pg_receivewal expects.
    let reply = c.query("SHOW wal_segment_size");
    assert!(reply
        .iter()
        .any(|m| m.tag == b'D' && String::from_utf8_lossy(&m.body).contains("16MB")));
    let reply = c.query("READ_REPLICATION_SLOT s1");
    assert!(reply.iter().any(|m| m.tag == b'D'));
    // Others are still served.
    let mut d = start_replication(&sk, "", START, "");
    assert_eq!(collect(&mut d, START, Duration::from_millis(500)), wal);
}
