//! Issue 19: primary fail-over on the same safekeepers. A standby fed only
//! by the safekeepers is promoted (PostgreSQL timeline 2) and its proxy
//! continues the same walkeeper timeline; a standby promoted below the
//! settled LSN is refused. `--promote-check` tells the two apart; the old
//! primary is fenced and rebuilt with pg_rewind; `skctl export` writes each
//! PostgreSQL timeline's segments as pg_receivewal does.

mod common;

use std::process::{Command, Stdio};
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

/// `pg_receivewal -v` into `out` from `port`, starting on timeline 1 at
/// segment `first` (a zero-filled partial of it there), until `endpos`;
/// killed after a minute.
fn receive_wal(out: &std::path::Path, port: u16, first: u64, endpos: Lsn) {
    let log = out.with_extension("log");
    let child = pg::receive_wal_command(out, port, first, endpos)
        .arg("-v")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pg_receivewal did not stop at {endpos}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "pg_receivewal: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// The first `len` bytes of WAL segment file `name` in `dir` (as is, or
/// `.partial`).
fn segment_head(dir: &std::path::Path, name: &str, len: u64) -> Vec<u8> {
    let bytes = std::fs::read(dir.join(name))
        .or_else(|_| std::fs::read(dir.join(format!("{name}.partial"))))
        .unwrap_or_else(|e| panic!("{name} in {dir:?}: {e}"));
    bytes[..len as usize].to_vec()
}

/// The old primary's timeline-1 WAL of the switch's segment, up to the
/// switch point.
fn old_timeline_head(old: &Postgres, switch: Lsn) -> Vec<u8> {
    let first = switch.0 / SEG as u64;
    let name = walkeeper::lsn::segment_file_name(1, first, SEG);
    segment_head(&old.pg_wal(), &name, switch.0 - first * SEG as u64)
}

/// `pg_receivewal` from a safekeeper, started on timeline 1 below the
/// switch, crosses it: timeline 1's segment up to the switch point equals
/// the old primary's (`old_head`), the history file and timeline 2's
/// segments up to `end` equal the promoted primary's. Returns the
/// directory it wrote.
fn assert_receivewal_crosses_the_switch(
    c: &Cluster,
    old_head: &[u8],
    switch: Lsn,
    end: Lsn,
) -> std::path::PathBuf {
    let out = c.dir.path().join("receivewal");
    std::fs::create_dir(&out).unwrap();
    let first = switch.0 / SEG as u64;
    // It stops once it has received WAL *past* its endpos.
    receive_wal(&out, c.sks[0].pg_addr.port(), first, Lsn(end.0 - 1));
    let name = |tli, segno| walkeeper::lsn::segment_file_name(tli, segno, SEG);
    let within = switch.0 - first * SEG as u64;
    assert!(
        segment_head(&out, &name(1, first), within) == old_head,
        "timeline 1 up to the switch differs from the old primary's"
    );
    assert_eq!(
        std::fs::read(out.join("00000002.history")).expect("the history file"),
        std::fs::read(c.pg.pg_wal().join("00000002.history")).unwrap()
    );
    for segno in first..=end.0 / SEG as u64 {
        let len = (end.0 - segno * SEG as u64).min(SEG as u64);
        assert!(
            segment_head(&out, &name(2, segno), len)
                == segment_head(&c.pg.pg_wal(), &name(2, segno), len),
            "segment {} differs from the promoted primary's",
            name(2, segno)
        );
    }
    out
}

/// `skctl export` of a safekeeper's store from `from` writes what
/// pg_receivewal wrote in `received`: the history file and each
/// timeline's segments under PostgreSQL's names, byte for byte.
fn assert_export_matches(sk: &Safekeeper, from: Lsn, received: &std::path::Path) {
    let out = sk.datadir.with_extension("export");
    let tl = default_ttid().to_string();
    let (ok, stdout, err) = run(Command::new(env!("CARGO_BIN_EXE_skctl"))
        .arg("--datadir")
        .arg(&sk.datadir)
        .args(["export", &tl, "--out", out.to_str().unwrap(), "--from"])
        .arg(from.to_string()));
    assert!(ok, "skctl export: {err}");
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == "00000002.history")
            && names
                .iter()
                .any(|n| n.starts_with("00000001") && n.ends_with(".partial"))
            && names
                .iter()
                .any(|n| n.starts_with("00000002") && !n.ends_with(".history")),
        "{names:?}\n{stdout}"
    );
    for name in &names {
        assert!(
            std::fs::read(out.join(name)).unwrap()
                == std::fs::read(received.join(name)).unwrap_or_default(),
            "{name} differs from pg_receivewal's ({names:?})"
        );
    }
}

/// An INSERT on `pg` in a psql of its own, left waiting (for a synchronous
/// standby that never confirms).
fn spawn_insert(pg: &Postgres, id: i32) -> KillOnDrop {
    let child = pg::psql(pg.port, &format!("INSERT INTO ledger VALUES ({id})"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// Whether the INSERT of row `id` on `pg` waits for synchronous
/// replication.
fn waits_for_sync_rep(pg: &Postgres, id: i32) -> bool {
    pg.sql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' \
         AND query = 'INSERT INTO ledger VALUES ({id})'"
    )) == "1"
}

/// `pg_rewind` the stopped `old` primary onto the timeline of `source`
/// (running), as README "The primary's host is gone" tells, so it can run
/// as a standby again.
fn rewind(old: &mut Postgres, source: &Postgres) {
    let (ok, out, err) = run(pg::as_postgres(&pg::pg_bin("pg_rewind"))
        .arg("-D")
        .arg(&old.datadir)
        .arg("--source-server")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            source.port
        )));
    assert!(ok, "pg_rewind: {out}{err}");
    // pg_rewind copied the source's configuration; this server keeps its own
    // port.
    pg::append_conf(&old.datadir, &format!("port = {}\n", old.port));
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
    // A standby that stays one: it follows the switch untouched.
    let mut follower = Postgres::basebackup(c.dir.path(), &c.pg, "follower");

    // Phase 1 on the first primary, then it and its proxy die mid-load.
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(50);
    c.kill_primary_and_proxy();
    let mut acked = ledger.stop();
    let synced = c.sync_only();

    // The standby, fed only by the safekeepers, gets every commit and is
    // promoted: PostgreSQL timeline 2 from the end of what it replayed.
    c.start_standby(&mut standby, 0, SYNC_CONF);
    c.start_standby(&mut follower, 2, "");
    assert_standby_gets_every_commit(&standby, synced, &acked);
    let (code, verdict) = c.promote_check(&standby, 60);
    assert_eq!(code, Some(0), "{verdict}");
    assert!(verdict.starts_with("safe to promote"), "{verdict}");
    promote(&standby);
    let switch = switch_point(&standby);
    eprintln!("settled at {synced}, the promoted standby's timeline 2 starts at {switch}");
    assert!(
        switch >= synced,
        "switch {switch} below the settled {synced}"
    );
    let mut old = replace_primary(&mut c, standby);
    let old_head = old_timeline_head(&old, switch);

    // Its proxy, with the same --safekeepers and no new timeline. Node 3
    // is down meanwhile: it misses the switch.
    c.sks[2].kill9();
    c.start_proxy("proxy2", &[]);
    c.wait_sync();
    let first = acked.iter().max().unwrap() + 1;
    let mut second = Postgres::basebackup(c.dir.path(), &c.pg, "second");
    let ledger = Ledger::start_at(c.pg.port, first);
    ledger.wait_more(50);
    for sk in &c.sks[..2] {
        wait_for(
            Duration::from_secs(30),
            "the live safekeepers on timeline 2",
            || (identify(sk).0 == 2).then_some(()),
        );
    }
    // The old primary comes back with a proxy of its own: refused at the
    // greeting (no vote asked, no term taken), it stops and says why, and
    // the old primary's commit is never acknowledged.
    old.start();
    let mut insert = spawn_insert(&old, -1);
    wait_for(
        Duration::from_secs(30),
        "the old primary's commit to wait for its synchronous standby",
        || waits_for_sync_rep(&old, -1).then_some(()),
    );
    let live: Vec<&Safekeeper> = c.sks[..2].iter().collect();
    let mut old_proxy = Proxy::start(c.dir.path(), "proxy-old", old.port, &live, &[]);
    let status = old_proxy
        .wait_exit(Duration::from_secs(60))
        .expect("the old primary's proxy stops");
    assert!(!status.success());
    assert!(
        old_proxy
            .log_text()
            .contains("superseded by a promoted standby"),
        "{}",
        old_proxy.log_text()
    );
    assert!(
        insert.0.try_wait().unwrap().is_none() && waits_for_sync_rep(&old, -1),
        "the old primary's commit was acknowledged"
    );
    drop(insert);
    old.stop();
    // Rebuilt onto timeline 2 (README: "The primary's host is gone").
    rewind(&mut old, &c.pg);
    ledger.wait_more(10);
    c.kill_primary_and_proxy();
    let acked2 = ledger.stop();
    assert!(!acked2.is_empty());
    // Node 3 is back for the settle, which brings it to timeline 2 too.
    c.sks[2].restart();
    let synced2 = c.sync_only();
    assert!(synced2 > switch);
    for sk in &c.sks {
        assert_eq!(identify(sk), (2, synced2), "node {}", sk.node_id);
    }

    // A standby from a base backup of the promoted primary, fed only by the
    // safekeepers, holds every acknowledged row of both phases.
    acked.extend(acked2);
    c.start_standby(&mut second, 1, "");
    assert_standby_gets_every_commit(&second, synced2, &acked);
    let tli = second.sql("SELECT timeline_id FROM pg_control_checkpoint()");
    assert_eq!(tli, "2");

    // The standby streaming timeline 1 from the safekeepers since before
    // the promotion crossed the switch by itself (recovery_target_timeline
    // 'latest', PostgreSQL 15's default) and holds both phases too.
    assert_standby_gets_every_commit(&follower, synced2, &acked);
    let received = assert_receivewal_crosses_the_switch(&c, &old_head, switch, synced2);
    assert_export_matches(
        &c.sks[0],
        Lsn(switch.0 / SEG as u64 * SEG as u64),
        &received,
    );
    wait_for(
        Duration::from_secs(30),
        "the follower streaming timeline 2",
        || (follower.sql("SELECT received_tli FROM pg_stat_wal_receiver") == "2").then_some(()),
    );

    // The rewound old primary, now a standby fed by the safekeepers, holds
    // both phases and not its own unacknowledged commit.
    c.start_standby(&mut old, 1, "");
    assert_standby_gets_every_commit(&old, synced2, &acked);
    assert_eq!(old.sql("SELECT count(*) FROM ledger WHERE id = -1"), "0");
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
        &format!("recovery_target_lsn = '{early}'\nrecovery_target_action = 'pause'\n{SYNC_CONF}"),
    );
    wait_for(
        Duration::from_secs(60),
        "the standby to pause at its recovery target",
        || (standby.sql("SELECT pg_get_wal_replay_pause_state()") == "paused").then_some(()),
    );
    let (code, verdict) = c.promote_check(&standby, 1);
    assert_eq!(code, Some(3), "{verdict}");
    assert!(
        verdict.starts_with("NOT safe to promote") && verdict.contains(&synced.to_string()),
        "{verdict}"
    );
    promote(&standby);
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

/// The primary dies inside a long transaction: the last WAL it flushed ends
/// inside a record (its WAL writer flushes whole pages), and a standby fed
/// by the safekeepers replays up to the last complete record only. That
/// standby must still be promotable: no acknowledged commit is in the
/// incomplete record.
#[test]
fn a_primary_that_died_inside_a_record_can_be_failed_over() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY); CREATE TABLE bulk (t text)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(20);
    let acked = ledger.stop();
    // Only the WAL writer flushes from here on, page by page.
    let from = c.flush_lsn();
    let _bulk = pg::psql(
        c.pg.port,
        "INSERT INTO bulk SELECT repeat(md5(g::text), 30) FROM generate_series(1, 200000) g",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .map(KillOnDrop)
    .unwrap();
    // The proxy has pushed (and a majority flushed) part of it.
    wait_for(
        Duration::from_secs(60),
        "the bulk insert's WAL to reach a majority of safekeepers",
        || {
            let flushed: Lsn = c
                .pg
                .sql("SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'safekeeper_proxy'")
                .parse()
                .ok()?;
            (flushed.0 > from.0 + (2 << 20)).then_some(())
        },
    );
    c.kill_primary_and_proxy();
    let synced = c.sync_only();
    eprintln!("settled at {synced} (page offset {})", synced.0 % 8192);
    assert!(
        synced.0 > from.0 + (1 << 20),
        "the primary died during the bulk insert: {synced} is past {from}"
    );

    c.start_standby(&mut standby, 0, SYNC_CONF);
    let (code, verdict) = c.promote_check(&standby, 60);
    assert_eq!(code, Some(0), "{verdict}");
    promote(&standby);
    let _old = replace_primary(&mut c, standby);
    c.start_proxy("proxy2", &[]);
    c.wait_sync();
    let first = acked.iter().max().unwrap() + 1;
    c.pg.sql(&format!("INSERT INTO ledger VALUES ({first})"));
    for id in acked.iter().chain([&first]) {
        assert_eq!(
            c.pg.sql(&format!("SELECT count(*) FROM ledger WHERE id = {id}")),
            "1"
        );
    }
}
