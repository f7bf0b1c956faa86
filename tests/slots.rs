//! Consumer slots, retention and consumers failing over between safekeepers,
//! against a real PostgreSQL 15 primary, real safekeepers and the proxy.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::{pgbench_ok, stored, Cluster, SYNC_CONF};
use common::pg::{self, Postgres};
use common::*;
use walkeeper::lsn::Lsn;

/// psql on a safekeeper's replication port: Ok(stdout) or Err(stderr).
fn repl_sql(sk: &Safekeeper, q: &str) -> Result<String, String> {
    let (ok, out, err) = run(Command::new(pg::pg_bin("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres replication=true connect_timeout=5",
            sk.pg_addr.port()
        ))
        .args(["-XAtq", "-c", q]));
    if ok {
        Ok(out.trim().to_string())
    } else {
        Err(err)
    }
}

/// (restart_lsn) of a slot; None when it has none.
fn slot_lsn(sk: &Safekeeper, name: &str) -> Option<Lsn> {
    let row = repl_sql(sk, &format!("READ_REPLICATION_SLOT {name}")).ok()?;
    row.split('|').nth(1).and_then(|l| l.parse().ok())
}

fn metric(addr: SocketAddr, series: &str) -> Option<u64> {
    http_get(addr, "/metrics")?.lines().find_map(|l| {
        l.strip_prefix(series)?
            .rsplit(' ')
            .next()?
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}

/// A node's stored WAL of its one timeline, from `GET /v1/timelines`.
#[derive(Debug, Clone, Copy)]
struct Held {
    local_start: Lsn,
    flush: Lsn,
    commit: Lsn,
    peer_horizon: Lsn,
    slot_horizon: Lsn,
    held_bytes: u64,
    seg: u64,
}

fn held(sk: &Safekeeper) -> Option<Held> {
    let t = first_timeline(sk.http_addr)?;
    let lsn = |f: &str| t[f].as_str()?.parse::<Lsn>().ok();
    let h = Held {
        local_start: lsn("local_start_lsn")?,
        flush: lsn("flush_lsn")?,
        commit: lsn("commit_lsn")?,
        peer_horizon: lsn("peer_horizon_lsn")?,
        slot_horizon: lsn("slot_horizon_lsn")?,
        held_bytes: t["held_bytes"].as_u64()?,
        seg: t["wal_seg_size"].as_u64()?,
    };
    assert_eq!(
        h.held_bytes,
        h.flush.0 - h.local_start.0,
        "held_bytes is flush_lsn - local_start_lsn: {h:?}"
    );
    Some(h)
}

/// A safekeeper with extra flags (common::Safekeeper passes none).
fn start_sk(dir: &std::path::Path, n: u64, extra: &[&str]) -> Safekeeper {
    let datadir = dir.join(format!("sk{n}"));
    let pg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = datadir.with_extension("log");
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_safekeeper"))
        .arg("--datadir")
        .arg(&datadir)
        .args(["--init", "--node-id", &n.to_string()])
        .arg("--listen-pg")
        .arg(pg_addr.to_string())
        .arg("--listen-http")
        .arg(http_addr.to_string())
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(30), "the safekeeper to listen", || {
        TcpStream::connect(pg_addr).ok()
    });
    Safekeeper {
        child: Some(child),
        datadir,
        node_id: n,
        pg_addr,
        http_addr,
        log,
        args: extra.iter().map(|a| a.to_string()).collect(),
        netns: None,
    }
}

/// `pg_receivewal` (run as `program` says) streaming from `sk` through
/// `slot` into `out`, confirming each flush, and ending with the connection.
fn receive_on_slot(mut program: Command, out: &Path, sk: &Safekeeper, slot: &str) -> Command {
    program
        .arg("-D")
        .arg(out)
        .args(["-h", "127.0.0.1", "-U", "postgres", "--synchronous"])
        .arg(format!("--slot={slot}"))
        .arg("--no-loop")
        .arg("-p")
        .arg(sk.pg_addr.port().to_string());
    program
}

/// A primary (`extra_conf` added to its synchronous_standby_names), three
/// safekeepers started with `flags`, and the proxy as its synchronous
/// standby.
fn cluster_with(extra_conf: &str, flags: &[&str]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start_primary(dir.path(), &format!("{SYNC_CONF}{extra_conf}"));
    let sks: Vec<Safekeeper> = (1..=3).map(|n| start_sk(dir.path(), n, flags)).collect();
    Cluster::around(dir, pg, sks)
}

#[test]
fn pg_receivewal_with_a_slot_gets_identical_segments_and_the_slot_survives_a_restart() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let sk = &c.sks[0];
    let created = repl_sql(sk, "CREATE_REPLICATION_SLOT \"s1\" PHYSICAL (RESERVE_WAL)").unwrap();
    assert!(created.starts_with("s1|"), "{created}");
    let reserved = slot_lsn(sk, "s1").expect("a reserved slot has a restart LSN");
    assert!(repl_sql(sk, "CREATE_REPLICATION_SLOT \"s1\" PHYSICAL")
        .unwrap_err()
        .contains("already exists"));
    c.init_pgbench();
    let bench = c.spawn_pgbench(8);
    let out = pg::postgres_dir(c.dir.path(), "receivewal");
    let mut recv = receive_on_slot(
        pg::as_postgres(&pg::pg_bin("pg_receivewal")),
        &out,
        sk,
        "s1",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // A second consumer of the same slot is refused while it streams.
    std::thread::sleep(Duration::from_secs(2));
    let err = repl_sql(
        sk,
        &format!("START_REPLICATION SLOT \"s1\" {reserved} TIMELINE 1"),
    )
    .unwrap_err();
    assert!(err.contains("is active"), "{err}");
    pgbench_ok(bench);
    c.pg.sql("SELECT pg_switch_wal()");
    c.pg.sql("CREATE TABLE after_switch (i int)");
    let end = c.flush_lsn();
    let advanced = wait_for(Duration::from_secs(30), "the slot to advance", || {
        slot_lsn(&c.sks[0], "s1")
            .filter(|l| *l > reserved && l.segment_number(SEG) >= end.segment_number(SEG))
    });
    let _ = recv.kill();
    let _ = recv.wait();
    let mut compared = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.len() != 24 {
            continue;
        }
        let got = std::fs::read(out.join(&name)).unwrap();
        let want = std::fs::read(c.pg.pg_wal().join(&name)).unwrap();
        assert!(got == want, "segment {name} differs from the primary's");
        compared += 1;
    }
    assert!(compared >= 1, "pg_receivewal wrote no complete segment");
    // Stored within a second or so; a SIGKILL keeps it.
    std::thread::sleep(Duration::from_secs(2));
    let before = slot_lsn(&c.sks[0], "s1").unwrap();
    assert!(before >= advanced);
    c.sks[0].kill9();
    c.sks[0].restart();
    let after = wait_for(
        Duration::from_secs(30),
        "the slot after the restart",
        || slot_lsn(&c.sks[0], "s1"),
    );
    assert_eq!(after, before);
    assert_eq!(
        repl_sql(&c.sks[0], "DROP_REPLICATION_SLOT \"s1\"").map(|_| ()),
        Ok(())
    );
    assert!(repl_sql(&c.sks[0], "READ_REPLICATION_SLOT s1")
        .unwrap()
        .starts_with('|'));
}

#[test]
fn a_standby_fails_over_to_another_safekeeper() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.init_pgbench();
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let hosts = c
        .sks
        .iter()
        .map(|s| s.pg_addr.port().to_string())
        .collect::<Vec<_>>()
        .join(",");
    pg::append_conf(
        &standby.datadir,
        &format!(
            "primary_conninfo = 'host=127.0.0.1,127.0.0.1,127.0.0.1 port={hosts} user=postgres'\nhot_standby = on\nsynchronous_standby_names = ''\n"
        ),
    );
    standby.mark_standby();
    standby.start();
    let port: u16 = wait_for(Duration::from_secs(60), "the standby to stream", || {
        standby
            .sql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
            .parse()
            .ok()
    });
    let feeder = c.sks.iter().position(|s| s.pg_addr.port() == port).unwrap();
    let bench = c.spawn_pgbench(4);
    std::thread::sleep(Duration::from_secs(1));
    c.sks[feeder].kill9();
    pgbench_ok(bench);
    let want = c.pg.sql("SELECT count(*) FROM pgbench_history");
    wait_for(Duration::from_secs(90), "the standby to catch up", || {
        (standby.sql("SELECT count(*) FROM pgbench_history") == want).then_some(())
    });
    let now: u16 = standby
        .sql("SELECT sender_port FROM pg_stat_wal_receiver")
        .parse()
        .unwrap();
    assert_ne!(now, port);
}

#[test]
fn retention_trims_and_max_wal_keep_invalidates_a_silent_slot() {
    if pg::absent() {
        return;
    }
    let c = cluster_with("", &["--wal-retention", "0", "--max-wal-keep", "48MB"]);
    repl_sql(
        &c.sks[0],
        "CREATE_REPLICATION_SLOT \"silent\" PHYSICAL (RESERVE_WAL)",
    )
    .unwrap();
    let series = "walkeeper_local_start_lsn";
    let start = wait_for(Duration::from_secs(10), "metrics", || {
        metric(c.sks[1].http_addr, series)
    });
    c.pg.sql("CREATE TABLE big (i int, pad text)");
    for _ in 0..4 {
        c.pg.sql("INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g");
    }
    // Every node trims once the silent slot is invalidated.
    for sk in &c.sks {
        wait_for(Duration::from_secs(60), "local_start_lsn to move", || {
            metric(sk.http_addr, series).filter(|l| *l > start)
        });
    }
    assert!(c.sks[0]
        .log_text()
        .contains("invalidating replication slot"));
    let row = repl_sql(&c.sks[0], "READ_REPLICATION_SLOT silent").unwrap();
    assert_eq!(row, "physical||");
}

#[test]
fn a_lagging_safekeeper_sends_consumers_elsewhere() {
    // The rule itself is unit-tested in src/safekeeper/failover.rs; here a
    // node that was told a commit beyond its WAL refuses with 57P03.
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    p.send(&walkeeper::consensus::messages::ProposerMessage::Greeting(
        greeting(&[1, 2, 3], true),
    ));
    let _ = p.recv();
    p.send(
        &walkeeper::consensus::messages::ProposerMessage::VoteRequest(
            walkeeper::consensus::messages::VoteRequest::new(1),
        ),
    );
    let _ = p.recv();
    p.send(&walkeeper::consensus::messages::ProposerMessage::Elected(
        walkeeper::consensus::messages::Elected {
            term: 1,
            start_streaming_at: Lsn(START),
            term_history: walkeeper::consensus::term_history::TermHistory(vec![
                walkeeper::consensus::acceptor::term_lsn(1, START),
            ]),
            pg_tli: 0,
            pg_ancestors: Vec::new(),
        },
    ));
    let _ = p.recv();
    p.send(&append(1, START, &wal_bytes(1, START, 1000), START + 5000));
    let _ = p.recv();
    let err = repl_sql(&sk, "IDENTIFY_SYSTEM").unwrap_err();
    assert!(err.contains("behind"), "{err}");
    // A proposer is never refused.
    let _q = RawClient::connect(sk.pg_addr, "-c walkeeper.role=proposer");
}

/// The SQLSTATE and message of an ErrorResponse among `msgs`.
fn error_of(msgs: &[BeMsg]) -> Option<(String, String)> {
    let e = msgs.iter().find(|m| m.tag == b'E')?;
    Some((e.error_field(b'C')?, e.error_field(b'M')?))
}

/// A one-member timeline with committed WAL, a durable slot "s" on it, and
/// a consumer streaming from that slot; the proposer stays connected so
/// consumers are served. Returns (safekeeper, proposer, streamer).
fn slot_in_use(dir: &std::path::Path) -> (Safekeeper, RawClient, RawClient) {
    let sk = Safekeeper::start(&dir.join("sk1"), 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting(&[1], true), 1);
    let wal = wal_bytes(1, START, 100_000);
    push(&mut p, 1, START, &wal, 50_000, START + 100_000);

    let mut streamer = RawClient::connect(sk.pg_addr, "");
    let created = streamer.query("CREATE_REPLICATION_SLOT \"s\" PHYSICAL (RESERVE_WAL)");
    assert_eq!(error_of(&created), None);
    streamer.query_raw(&format!(
        "START_REPLICATION SLOT \"s\" PHYSICAL {}",
        Lsn(START)
    ));
    let m = streamer.read().expect("a reply to START_REPLICATION");
    assert_eq!(m.tag, b'W', "expected CopyBothResponse, got {m:?}");
    (sk, p, streamer)
}

#[test]
fn drop_replication_slot_refuses_an_active_slot_and_with_wait_waits_for_its_release() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, p, streamer) = slot_in_use(dir.path());

    // Without WAIT: PostgreSQL's 55006, naming the connection that streams
    // by the process id it was told.
    let mut other = RawClient::connect(sk.pg_addr, "");
    let (code, msg) = error_of(&other.query("DROP_REPLICATION_SLOT \"s\"")).expect("an error");
    assert_eq!(code, "55006");
    let pid = streamer.key.expect("BackendKeyData").0;
    assert_eq!(
        msg,
        format!("replication slot \"s\" is active for PID {pid}")
    );
    // With WAIT: no answer while the stream holds the slot ...
    other.query_raw("DROP_REPLICATION_SLOT \"s\" WAIT");
    assert!(
        other.try_read(Duration::from_secs(2)).is_none(),
        "DROP … WAIT answered while the slot was in use"
    );
    let row = repl_sql(&sk, "READ_REPLICATION_SLOT s").unwrap();
    assert_eq!(row, format!("physical|{}|1", Lsn(START)));
    // ... and the drop once the streaming connection is gone.
    drop(streamer);
    let reply = other.reply();
    assert_eq!(error_of(&reply), None);
    assert!(reply
        .iter()
        .any(|m| m.tag == b'C' && m.body.starts_with(b"DROP_REPLICATION_SLOT")));
    assert_eq!(repl_sql(&sk, "READ_REPLICATION_SLOT s").unwrap(), "||");
    // A slot that no longer exists: 42704, with or without WAIT.
    let (code, _) = error_of(&other.query("DROP_REPLICATION_SLOT \"s\" WAIT")).expect("an error");
    assert_eq!(code, "42704");
    // WAIT on a slot nobody uses drops it at once.
    assert_eq!(
        error_of(&other.query("CREATE_REPLICATION_SLOT \"t\" PHYSICAL")),
        None
    );
    assert_eq!(
        error_of(&other.query("DROP_REPLICATION_SLOT \"t\" WAIT")),
        None
    );
    drop(p);
}

/// A slot is free for others once the stream from it ends, while its
/// connection stays open, as PostgreSQL releases it at the end of
/// START_REPLICATION.
#[test]
fn a_slot_is_released_when_its_stream_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, p, mut streamer) = slot_in_use(dir.path());
    let mut other = RawClient::connect(sk.pg_addr, "");
    let (code, _) = error_of(&other.query("DROP_REPLICATION_SLOT \"s\"")).expect("an error");
    assert_eq!(code, "55006");
    streamer.copy_done();
    while streamer.read().expect("the end of the stream").tag != b'Z' {}
    assert_eq!(error_of(&other.query("DROP_REPLICATION_SLOT \"s\"")), None);
    // The streamer's connection is still usable.
    assert_eq!(error_of(&streamer.query("IDENTIFY_SYSTEM")), None);
    drop(p);
}

/// A DROP … WAIT the client gave up on, by a cancel request (psql's
/// Ctrl-C) or by going away, must not drop the slot when it is released
/// later.
#[test]
fn an_abandoned_drop_replication_slot_wait_leaves_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, p, streamer) = slot_in_use(dir.path());

    let mut cancelled = RawClient::connect(sk.pg_addr, "");
    cancelled.query_raw("DROP_REPLICATION_SLOT \"s\" WAIT");
    assert!(cancelled.try_read(Duration::from_secs(1)).is_none());
    cancelled.cancel();
    let (code, msg) = error_of(&cancelled.reply()).expect("the wait ends with an error");
    assert_eq!(code, "57014", "{msg}");
    assert_eq!(msg, "canceling statement due to user request");
    // The connection is usable afterwards.
    assert_eq!(error_of(&cancelled.query("READ_REPLICATION_SLOT s")), None);
    // A cancel between commands has nothing to interrupt, as in PostgreSQL:
    // the next wait waits until cancelled again.
    cancelled.cancel();
    std::thread::sleep(Duration::from_millis(300));
    cancelled.query_raw("DROP_REPLICATION_SLOT \"s\" WAIT");
    assert!(
        cancelled.try_read(Duration::from_secs(1)).is_none(),
        "a cancel sent between commands ended the next one"
    );
    cancelled.cancel();
    let (code, msg) = error_of(&cancelled.reply()).expect("the wait ends with an error");
    assert_eq!(code, "57014", "{msg}");

    let mut left = RawClient::connect(sk.pg_addr, "");
    left.query_raw("DROP_REPLICATION_SLOT \"s\" WAIT");
    assert!(left.try_read(Duration::from_secs(1)).is_none());
    drop(left);
    // Give the safekeeper a moment to see the client close.
    std::thread::sleep(Duration::from_millis(500));

    // The stream ends: nobody waits any more, so the slot stays.
    drop(streamer);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        assert_eq!(
            repl_sql(&sk, "READ_REPLICATION_SLOT s").unwrap(),
            format!("physical|{}|1", Lsn(START)),
            "an abandoned DROP … WAIT dropped the slot"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(p);
}

/// `safekeeper --init` with `flags` must refuse to start and create
/// nothing; what it printed.
fn refused_at_init(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_safekeeper"))
        .arg("--datadir")
        .arg(dir.path().join("sk"))
        .args(["--init", "--node-id", "1"])
        .args(flags));
    assert!(!ok, "started with {flags:?}");
    assert!(!dir.path().join("sk").exists(), "nothing is created");
    err
}

#[test]
fn a_bad_wal_retention_is_a_clear_error() {
    let err = refused_at_init(&["--wal-retention", "1 fortnight"]);
    assert!(
        err.contains("--wal-retention")
            && err.contains("unknown unit \"fortnight\"")
            && err.contains("10min"),
        "{err}"
    );
}

#[test]
fn a_too_small_background_write_limit_is_a_clear_error() {
    let err = refused_at_init(&["--background-write-limit", "100kB"]);
    assert!(
        err.contains("--background-write-limit") && err.contains("use 1MB or more"),
        "{err}"
    );
}

#[test]
fn a_background_write_limit_is_logged_and_reaches_rocksdb() {
    let dir = tempfile::tempdir().unwrap();
    let sk = start_sk(dir.path(), 1, &["--background-write-limit", "32MB"]);
    assert!(
        sk.log_text().contains("bytes_per_second=33554432"),
        "{}",
        sk.log_text()
    );
    assert_ne!(
        common::store::rocksdb_option(&sk.datadir, "rate_limiter"),
        "(nil)",
        "no rate limiter in RocksDB"
    );
    // It still serves: a greeting creates the timeline.
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting(&[1], true), 1);
}

#[test]
fn retention_by_age_keeps_wal_committed_less_than_that_long_ago() {
    let dir = tempfile::tempdir().unwrap();
    let sk = start_sk(dir.path(), 1, &["--wal-retention", "3s"]);
    assert!(
        sk.log_text().contains("--wal-retention 3s"),
        "{}",
        sk.log_text()
    );
    // A one-member timeline of 1 MiB segments, so a few MiB are segments.
    let seg = 1u64 << 20;
    let mut g = greeting(&[1], true);
    g.server.wal_seg_size = seg as u32;
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, g, 1);
    // Nothing committed before this instant can be trimmed by age: every
    // byte past the first segment is committed after it.
    let before_commit = std::time::Instant::now();
    let wal = wal_bytes(1, START, 3 * seg as usize + 1000);
    let mut pos = START;
    let mut sent = 0;
    for piece in wal.chunks(256 << 10) {
        // The peer horizon follows commit: only the age holds WAL here.
        p.send(&with_horizon(append(1, pos, piece, pos), pos));
        pos += piece.len() as u64;
        sent += 1;
    }
    p.send(&with_horizon(append(1, pos, &[], pos), pos));
    for _ in 0..=sent {
        p.recv();
    }
    let end = Lsn(pos);
    let h = held(&sk).unwrap();
    assert_eq!((h.commit, h.flush), (end, end));
    let trimmed = wait_for(Duration::from_secs(30), "trimming by age", || {
        held(&sk).filter(|h| h.local_start > Lsn(START))
    });
    let waited = before_commit.elapsed();
    eprintln!("trimmed by age after {waited:?}: {trimmed:?}");
    assert!(
        waited >= Duration::from_secs(3),
        "WAL committed {waited:?} ago was trimmed under --wal-retention 3s: {trimmed:?}"
    );
    // Everything is old enough by now: down to the segment holding commit.
    let last = wait_for(
        Duration::from_secs(30),
        "the last whole segment to go",
        || held(&sk).filter(|h| h.local_start == end.segment_start(seg as u32)),
    );
    assert_eq!(last.held_bytes, end.0 - end.segment_start(seg as u32).0);
    assert!(sk
        .log_text()
        .contains("nothing is trimmed by age until it has run for 3s"));
    drop(p);
}

/// An append carrying a peer horizon (common::append sends none).
fn with_horizon(
    m: walkeeper::consensus::messages::ProposerMessage,
    horizon: u64,
) -> walkeeper::consensus::messages::ProposerMessage {
    match m {
        walkeeper::consensus::messages::ProposerMessage::Append(mut a) => {
            a.peer_horizon_lsn = Lsn(horizon);
            walkeeper::consensus::messages::ProposerMessage::Append(a)
        }
        other => other,
    }
}

#[test]
fn a_lagging_slot_holds_wal_on_every_safekeeper_until_it_confirms() {
    if pg::absent() {
        return;
    }
    let c = cluster_with("", &["--wal-retention", "0"]);
    let seg = held(&c.sks[0]).expect("the timeline").seg;
    assert_eq!(
        c.pg.sql("SHOW wal_segment_size"),
        format!("{}MB", seg >> 20)
    );

    // A durable slot on one safekeeper; its position reaches the others
    // through the proxy (AppendResponse, then the slot horizon it sends).
    repl_sql(
        &c.sks[0],
        "CREATE_REPLICATION_SLOT \"lag\" PHYSICAL (RESERVE_WAL)",
    )
    .unwrap();
    let reserved = slot_lsn(&c.sks[0], "lag").expect("a reserved slot");
    for sk in &c.sks {
        wait_for(
            Duration::from_secs(30),
            "the slot horizon on every node",
            || held(sk).filter(|h| h.slot_horizon == reserved),
        );
    }
    let before: Vec<Held> = c.sks.iter().map(|sk| held(sk).unwrap()).collect();

    // Several segments of WAL while nobody confirms.
    let mut end = c.flush_lsn();
    while end.0 < reserved.0 + 4 * seg {
        let (ok, out, err) = run(&mut c.pgbench(&["-i", "-s", "2", "-q"]));
        assert!(ok, "pgbench -i failed: {out}{err}");
        end = c.flush_lsn();
    }
    for (sk, b) in c.sks.iter().zip(&before) {
        // Every node has the WAL, and every member reported it to the proxy
        // (so without the slot it could all go) ...
        let h = wait_for(
            Duration::from_secs(60),
            "the peer horizon past the WAL",
            || held(sk).filter(|h| h.commit >= end && h.peer_horizon >= end),
        );
        // ... yet the slot holds it: stored WAL grew by several segments.
        assert!(h.local_start <= reserved, "node {}: {h:?}", sk.node_id);
        assert!(
            h.held_bytes >= b.held_bytes + 3 * seg,
            "node {}: {h:?} after {b:?}",
            sk.node_id
        );
        assert!(h.held_bytes >= h.flush.0 - reserved.0);
    }
    // And keeps holding it pass after pass (the retention task runs every
    // second).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        for sk in &c.sks {
            let h = held(sk).unwrap();
            assert!(h.local_start <= reserved, "node {}: {h:?}", sk.node_id);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let lagging: Vec<Held> = c.sks.iter().map(|sk| held(sk).unwrap()).collect();

    // The consumer catches up and confirms: pg_receivewal on the slot.
    let out = c.dir.path().join("receivewal");
    std::fs::create_dir(&out).unwrap();
    let _recv = KillOnDrop(
        receive_on_slot(
            Command::new(pg::pg_bin("pg_receivewal")),
            &out,
            &c.sks[0],
            "lag",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting pg_receivewal"),
    );
    let confirmed = wait_for(
        Duration::from_secs(120),
        "the slot to confirm the WAL",
        || slot_lsn(&c.sks[0], "lag").filter(|l| *l >= end),
    );
    // Every node trims below the segment holding the new horizon.
    for (sk, l) in c.sks.iter().zip(&lagging) {
        let h = wait_for(Duration::from_secs(60), "stored WAL to shrink", || {
            // The slot horizon reaches each node with the proxy's next
            // append or heartbeat; trimming may start a little before it
            // covers all of `end`.
            held(sk)
                .filter(|h| h.local_start >= end.segment_start(seg as u32) && h.slot_horizon >= end)
        });
        assert!(h.local_start <= confirmed, "node {}: {h:?}", sk.node_id);
        assert!(
            h.local_start.0 >= l.local_start.0 + 3 * seg,
            "node {}: {h:?} after {l:?}",
            sk.node_id
        );
        eprintln!(
            "node {}: slot at {reserved}: held {} bytes from {} while it lagged; confirmed {confirmed}: held {} bytes from {}",
            sk.node_id, l.held_bytes, l.local_start, h.held_bytes, h.local_start
        );
        // The primary is idle: held bytes drop by the trimmed segments.
        assert!(
            h.held_bytes + 2 * seg <= l.held_bytes,
            "node {}: {h:?} after {l:?}",
            sk.node_id
        );
        // The gauge says the same.
        wait_for(Duration::from_secs(10), "walkeeper_held_bytes", || {
            let gauge = metric(sk.http_addr, "walkeeper_held_bytes{")?;
            (gauge == held(sk)?.held_bytes).then_some(())
        });
    }
}

/// A safekeeper down while the others trim past --max-wal-keep comes back
/// needing WAL nobody stores: the proxy re-seeds it at the lowest LSN its
/// peers still hold, it catches up from there, and it serves consumers
/// again — segments byte-identical to the primary's.
#[test]
fn a_safekeeper_down_past_max_wal_keep_is_reseeded_and_serves_again() {
    if pg::absent() {
        return;
    }
    // No checkpoint may recycle the primary's segments the test compares.
    let mut c = cluster_with(
        "max_wal_size = 4GB\ncheckpoint_timeout = 1h\n",
        &["--wal-retention", "0", "--max-wal-keep", "32MB"],
    );
    c.pg.sql("CREATE TABLE big (i int, pad text)");
    let lost_flush = c.flush_lsn();
    wait_for(
        Duration::from_secs(30),
        "safekeeper 3 to hold the table",
        || held(&c.sks[2]).filter(|h| h.flush >= lost_flush),
    );
    // A durable slot on the node that will be left behind.
    repl_sql(
        &c.sks[2],
        "CREATE_REPLICATION_SLOT \"behind\" PHYSICAL (RESERVE_WAL)",
    )
    .unwrap();
    let reserved = slot_lsn(&c.sks[2], "behind").expect("a reserved slot");
    c.sks[2].kill9();
    let down_at = stored(&c.sks[2].datadir, Lsn(u64::MAX)).1;
    for _ in 0..4 {
        c.pg.sql("INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g");
    }
    // The two live nodes trim past everything safekeeper 3 holds: the peer
    // horizon it pins is capped by --max-wal-keep.
    for sk in &c.sks[..2] {
        wait_for(
            Duration::from_secs(60),
            "trimming past the down node",
            || held(sk).filter(|h| h.local_start > down_at),
        );
    }
    // A new proxy has nothing buffered: safekeeper 3's WAL could only come
    // from a peer, and none has it.
    c.proxy = None;
    c.start_proxy("proxy2", &[]);
    c.wait_sync();
    // Once re-seeded, safekeeper 3 keeps what it got up to --max-wal-keep
    // (by age: nothing is old enough for 10 minutes after its start) for
    // pg_receivewal below, instead of trimming it to the peer horizon as
    // soon as the others confirm it.
    let retention = c.sks[2]
        .args
        .iter()
        .position(|a| a == "--wal-retention")
        .unwrap();
    c.sks[2].args[retention + 1] = "10min".into();
    c.sks[2].restart();
    let peers_start = c.sks[..2]
        .iter()
        .map(|sk| held(sk).unwrap().local_start)
        .min()
        .unwrap();
    wait_for(
        Duration::from_secs(60),
        "safekeeper 3 to be re-seeded",
        || {
            c.sks[2]
                .log_text()
                .contains("re-seeded by the proposer")
                .then_some(())
        },
    );
    c.pg.sql("INSERT INTO big SELECT g, 'after' FROM generate_series(1, 1000) g");
    c.pg.sql("SELECT pg_switch_wal()");
    c.pg.sql("INSERT INTO big VALUES (0, 'end')");
    let end = c.flush_lsn();
    let h = wait_for(Duration::from_secs(60), "safekeeper 3 to catch up", || {
        held(&c.sks[2]).filter(|h| h.commit >= end)
    });
    assert!(
        h.local_start > down_at && h.local_start >= peers_start,
        "re-seeded at {} (was down at {down_at}, peers hold from {peers_start})",
        h.local_start
    );
    assert_eq!(h.local_start.segment_offset(SEG), 0, "{h:?}");
    // Its slot's WAL is gone: the slot is invalidated and says so, instead
    // of promising a restart LSN it cannot serve.
    assert!(reserved < h.local_start, "{reserved} {h:?}");
    wait_for(
        Duration::from_secs(30),
        "the slot to be invalidated",
        || {
            (repl_sql(&c.sks[2], "READ_REPLICATION_SLOT behind").ok()? == "physical||")
                .then_some(())
        },
    );
    assert!(
        c.sks[2].log_text().contains("it was re-seeded"),
        "the log says why the slot went"
    );
    // It serves again: pg_receivewal from its first stored segment (a
    // zero-filled partial file makes pg_receivewal start there) through the
    // segment switch, against the primary's own files.
    eprintln!("re-seeded node: {h:?}, was down at {down_at}, end {end}");
    // From the first segment --max-wal-keep (32MB) lets it keep: it may
    // trim what the re-seed brought beyond that at any moment.
    let first = h
        .local_start
        .max(Lsn(end.0.saturating_sub(32 << 20)))
        .segment_number(SEG);
    let last_full = end.segment_number(SEG) - 1;
    assert!(last_full >= first, "{h:?} end {end}");
    let out = pg::postgres_dir(c.dir.path(), "receivewal");
    let endpos = Lsn((last_full + 1) * SEG as u64 - 1);
    pg::receive_wal(&out, c.sks[2].pg_addr.port(), first, endpos);
    pg::assert_same_segments(&out, &c.pg.pg_wal(), first..=last_full);
}

/// A slot on a safekeeper that is down holds its WAL on the others across
/// new terms. Each new proxy knows nobody's slots until every member has
/// answered it, so until then the others keep the slot horizon they stored
/// (rather than trimming to the peer horizon), and a consumer of that slot
/// that fails over to another safekeeper finds its WAL there.
#[test]
fn a_slot_on_a_down_safekeeper_holds_wal_on_the_others_across_new_terms() {
    if pg::absent() {
        return;
    }
    // No checkpoint may recycle the primary's segments the test compares.
    let mut c = cluster_with(
        "max_wal_size = 4GB\ncheckpoint_timeout = 1h\n",
        &["--wal-retention", "0"],
    );
    let seg_of = |l: Lsn| l.segment_number(SEG);
    c.pg.sql("CREATE TABLE big (i int, pad text)");
    let fill = |c: &Cluster| {
        c.pg.sql("INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g");
        c.flush_lsn()
    };
    repl_sql(
        &c.sks[2],
        "CREATE_REPLICATION_SLOT \"away\" PHYSICAL (RESERVE_WAL)",
    )
    .unwrap();
    let reserved = slot_lsn(&c.sks[2], "away").expect("a reserved slot");
    // WAL well past the slot's segment, held by every member: the peer
    // horizon passes that segment, and only the slot keeps it.
    fill(&c);
    let end = fill(&c);
    assert!(seg_of(end) > seg_of(reserved) + 1, "{reserved} {end}");
    for sk in &c.sks {
        wait_for(
            Duration::from_secs(60),
            "the slot horizon, and the peer horizon past the slot's segment",
            || {
                held(sk).filter(|h| {
                    h.slot_horizon == reserved && seg_of(h.peer_horizon) > seg_of(reserved)
                })
            },
        );
    }
    c.sks[2].kill9();

    // Two new terms while its safekeeper is down.
    for proxy in ["proxy2", "proxy3"] {
        c.proxy = None;
        c.start_proxy(proxy, &[]);
        c.wait_sync();
        let end = fill(&c);
        for sk in &c.sks[..2] {
            wait_for(
                Duration::from_secs(60),
                "the new term's WAL to be committed",
                || held(sk).filter(|h| h.commit >= end),
            );
        }
        // The retention task runs every second: watch several passes.
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            for sk in &c.sks[..2] {
                let h = held(sk).unwrap();
                assert!(
                    h.local_start <= reserved && h.slot_horizon == reserved,
                    "node {} under {proxy}: trimmed or forgot the slot at {reserved} on the down node: {h:?}",
                    sk.node_id
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // The slot's consumer fails over to safekeeper 1: from the slot's
    // segment through a segment switch, byte-identical to the primary's.
    c.pg.sql("SELECT pg_switch_wal()");
    c.pg.sql("INSERT INTO big VALUES (0, 'end')");
    let end = c.flush_lsn();
    wait_for(Duration::from_secs(60), "safekeeper 1 to commit", || {
        held(&c.sks[0]).filter(|h| h.commit >= end)
    });
    let first = seg_of(reserved);
    let last_full = seg_of(end) - 1;
    let out = pg::postgres_dir(c.dir.path(), "receivewal");
    let endpos = Lsn((last_full + 1) * SEG as u64 - 1);
    pg::receive_wal(&out, c.sks[0].pg_addr.port(), first, endpos);
    pg::assert_same_segments(&out, &c.pg.pg_wal(), first..=last_full);
}
