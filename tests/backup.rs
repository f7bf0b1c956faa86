//! Backups: RocksDB checkpoints of running safekeepers, a checkpoint that
//! refuses to rejoin its old cluster, and whole-cluster recovery from
//! checkpoints (`--restore-cluster`, `--sync-only`, a proxy resuming on the
//! primary).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::pg::{self, Postgres};
use common::*;
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::Storage;

fn skctl(args: &[&str]) -> (bool, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_skctl")).args(args))
}

/// Checkpoint a running safekeeper through `skctl checkpoint --http`.
fn checkpoint(sk: &Safekeeper, out: &Path) -> serde_json::Value {
    let (ok, stdout, err) = skctl(&[
        "--json",
        "checkpoint",
        "--http",
        &sk.http_addr.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "skctl checkpoint failed: {err}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn flush_of(info: &serde_json::Value) -> Lsn {
    info["timelines"][0]["flush_lsn"]
        .as_str()
        .expect("a timeline in the checkpoint")
        .parse()
        .unwrap()
}

/// A safekeeper on an existing store with extra flags, in the shared helper's
/// shape (so it is killed on drop and its log shown on failure).
fn start_sk(datadir: &Path, node_id: u64, old: &Safekeeper, extra: &[&str]) -> Safekeeper {
    let log = datadir.with_extension(format!("restored.log.{}", std::process::id()));
    let logf = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_safekeeper"))
        .arg("--datadir")
        .arg(datadir)
        .arg("--node-id")
        .arg(node_id.to_string())
        .arg("--listen-pg")
        .arg(old.pg_addr.to_string())
        .arg("--listen-http")
        .arg(old.http_addr.to_string())
        .args(&old.args)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap();
    let mut sk = Safekeeper {
        child: Some(child),
        datadir: datadir.to_path_buf(),
        node_id,
        pg_addr: old.pg_addr,
        http_addr: old.http_addr,
        log,
        args: old.args.clone(),
        netns: None,
    };
    wait_for(Duration::from_secs(30), "the safekeeper to listen", || {
        if let Some(s) = sk.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("safekeeper exited with {s}: {}", sk.log_text());
        }
        std::net::TcpStream::connect(sk.pg_addr).ok().map(|_| ())
    });
    sk
}

fn psql_ok(pg: &Postgres, sql: &str, within: Duration) -> bool {
    let mut child = pg::psql(pg.port, sql)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_checkpoint_under_load_verifies_and_holds_the_live_wal() {
    let Some(c) = Cluster::start() else {
        return;
    };
    c.init_pgbench();
    let bench = c.spawn_pgbench(4);
    std::thread::sleep(Duration::from_millis(1500));
    let out = c.dir.path().join("backups/sk1");
    let info = checkpoint(&c.sks[0], &out);
    assert_eq!(info["node_id"], 1);
    // A second checkpoint into the same place is refused.
    let (ok, _, err) = skctl(&[
        "checkpoint",
        "--http",
        &c.sks[0].http_addr.to_string(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    assert!(pgbench_ok(bench) > 0);

    let (ok, stdout, err) = skctl(&["--datadir", out.to_str().unwrap(), "verify"]);
    assert!(ok, "verify of the checkpoint failed: {stdout}{err}");
    let (ok, stdout, _) = skctl(&["--datadir", out.to_str().unwrap(), "--json", "mark"]);
    assert!(ok);
    let marks: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(marks["checkpoint"]["node_id"], 1, "{stdout}");

    // Its WAL is the live store's, byte for byte, up to its flush LSN.
    let upto = flush_of(&info);
    let ckpt = RocksStore::open(&out).unwrap();
    let cstate = ckpt.timelines().unwrap().remove(0);
    assert_eq!(cstate.flush_lsn, upto);
    let sec = tempfile::tempdir().unwrap();
    let live = RocksStore::open_read_only_secondary(&c.sks[0].datadir, sec.path()).unwrap();
    let lstate = live.timeline_state(default_ttid()).unwrap().unwrap();
    assert!(lstate.flush_lsn >= upto);
    let from = cstate.local_start_lsn.max(lstate.local_start_lsn);
    assert!(from < upto, "the checkpoint holds WAL");
    let a = ckpt.read_wal(default_ttid(), from, upto).unwrap();
    let b = live.read_wal(default_ttid(), from, upto).unwrap();
    assert!(a == b, "checkpoint WAL differs from the live store's");
}

#[test]
fn a_node_on_a_checkpoint_of_itself_refuses_its_old_cluster() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.pg.sql("CREATE TABLE t (id int)");
    c.pg.sql("INSERT INTO t SELECT generate_series(1, 100)");
    let out = c.dir.path().join("backups/sk3");
    checkpoint(&c.sks[2], &out);
    c.pg.sql("INSERT INTO t SELECT generate_series(101, 200)");
    c.sks[2].terminate();
    let restored = start_sk(&out, 3, &c.sks[2], &[]);
    let refusal = wait_for(
        Duration::from_secs(20),
        "the restored node to refuse the proxy",
        || {
            let log = restored.log_text();
            log.lines()
                .find(|l| l.contains("refused") && l.contains("forgotten the votes"))
                .map(str::to_owned)
        },
    );
    assert!(
        refusal.contains("checkpoint of node 3") && refusal.contains("forgotten the votes"),
        "{refusal}"
    );
    // Consumers are still served.
    assert!(sk_commit_lsn(&restored).is_some());
    // The cluster goes on committing with the other two.
    for i in 0..20 {
        assert!(
            psql_ok(
                &c.pg,
                &format!("INSERT INTO t VALUES ({})", 1000 + i),
                Duration::from_secs(20)
            ),
            "a commit did not complete with two safekeepers"
        );
    }
    assert!(c
        .proxy
        .as_mut()
        .unwrap()
        .wait_exit(Duration::ZERO)
        .is_none());
    assert_eq!(
        c.pg.sql("SELECT count(*) FROM t"),
        "220",
        "every insert committed"
    );
}

#[test]
fn whole_cluster_recovery_from_checkpoints() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    // The proxy resumes from WAL the primary still has after the slot moved
    // on: that is what wal_keep_size keeps.
    c.pg.sql("ALTER SYSTEM SET wal_keep_size = '1GB'");
    c.pg.sql("SELECT pg_reload_conf()");
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    for i in 1..=50 {
        c.pg.sql(&format!("INSERT INTO ledger VALUES ({i})"));
    }
    let backups: Vec<PathBuf> = (1..=3)
        .map(|n| c.dir.path().join(format!("backups/sk{n}")))
        .collect();
    let infos: Vec<serde_json::Value> = c
        .sks
        .iter()
        .zip(&backups)
        .map(|(sk, out)| checkpoint(sk, out))
        .collect();
    // Commits after the checkpoints: the restored safekeepers lack them, the
    // primary still has their WAL.
    for i in 51..=80 {
        c.pg.sql(&format!("INSERT INTO ledger VALUES ({i})"));
    }

    // Stop the proxy and every node; restore every node's checkpoint.
    c.proxy.as_mut().unwrap().kill9();
    for sk in &mut c.sks {
        sk.terminate();
    }
    let old = std::mem::take(&mut c.sks);
    for (sk, backup) in old.iter().zip(&backups) {
        std::fs::remove_dir_all(&sk.datadir).unwrap();
        std::fs::rename(backup, &sk.datadir).unwrap();
    }
    c.sks = old
        .iter()
        .map(|sk| start_sk(&sk.datadir, sk.node_id, sk, &["--restore-cluster"]))
        .collect();
    drop(old);

    let synced = c.sync_only();
    let mut flushes: Vec<Lsn> = infos.iter().map(flush_of).collect();
    flushes.sort();
    assert!(
        synced >= flushes[1],
        "synced {synced} below what a majority of checkpoints held ({flushes:?})"
    );
    // The settled majority recorded it and cleared the restore mark.
    let cleared = c
        .sks
        .iter()
        .filter(|sk| {
            let (ok, stdout, _) =
                skctl(&["--datadir", sk.datadir.to_str().unwrap(), "--json", "mark"]);
            ok && serde_json::from_str::<serde_json::Value>(&stdout)
                .map(|v| v["checkpoint"].is_null() && v["restored_from"].is_object())
                .unwrap_or(false)
        })
        .count();
    assert!(
        cleared >= 2,
        "the restore mark was cleared on {cleared} nodes"
    );
    let settled = c
        .sks
        .iter()
        .filter(|sk| {
            let (_, stdout, _) = skctl(&[
                "--datadir",
                sk.datadir.to_str().unwrap(),
                "--json",
                "timelines",
            ]);
            stdout.contains(&format!("\"settled_lsn\": \"{synced}\""))
        })
        .count();
    assert!(settled >= 2, "settled_lsn recorded on {settled} nodes");

    // A proxy resumes on the primary, and commits wait for the safekeepers
    // again.
    c.start_proxy("proxy2", &[]);
    c.wait_sync();
    for i in 81..=100 {
        assert!(
            psql_ok(
                &c.pg,
                &format!("INSERT INTO ledger VALUES ({i})"),
                Duration::from_secs(30)
            ),
            "commit {i} after recovery did not complete"
        );
    }

    // A standby fed only from the safekeepers holds every row; fed by the
    // node holding the most WAL (the one with the lowest local start).
    let feeder = c
        .sks
        .iter()
        .min_by_key(|sk| {
            let sec = tempfile::tempdir().unwrap();
            RocksStore::open_read_only_secondary(&sk.datadir, sec.path())
                .unwrap()
                .timeline_state(default_ttid())
                .unwrap()
                .map(|s| s.local_start_lsn)
        })
        .unwrap();
    pg::append_conf(
        &standby.datadir,
        &format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres'\nhot_standby = on\nsynchronous_standby_names = ''\nwal_keep_size = 0\n",
            feeder.pg_addr.port()
        ),
    );
    standby.mark_standby();
    standby.start();
    wait_for(
        Duration::from_secs(90),
        "the standby to replay every row",
        || {
            let n: i64 = standby
                .sql("SELECT count(*) FROM ledger WHERE id <= 100")
                .parse()
                .ok()?;
            (n == 100).then_some(())
        },
    );
}

/// `skctl mark` of a store: whether the restore mark is still there.
fn still_marked(datadir: &Path) -> bool {
    let (ok, stdout, err) = skctl(&["--datadir", datadir.to_str().unwrap(), "--json", "mark"]);
    assert!(ok, "skctl mark: {err}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    !v["checkpoint"].is_null()
}

/// Whole-cluster recovery settles timelines one at a time: the restore
/// mark of a store holding two stays until both are settled.
#[test]
fn the_restore_mark_stays_until_every_timeline_is_settled() {
    use walkeeper::consensus::acceptor::term_lsn;
    use walkeeper::consensus::messages::*;
    use walkeeper::consensus::term_history::TermHistory;
    use walkeeper::id::{TenantId, TimelineId, Ttid};

    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("sk1");
    let mut sk = Safekeeper::start(&datadir, 1, true);
    let ttids = [
        ttid(),
        Ttid::new(TenantId([0x33; 16]), TimelineId([0x44; 16])),
    ];
    for t in ttids {
        let mut p = RawClient::proposer(sk.pg_addr);
        let mut g = greeting(&[1], true);
        g.ttid = t;
        elect_single(&mut p, g, 1);
    }
    let backup = dir.path().join("backup");
    checkpoint(&sk, &backup);
    sk.terminate();
    std::fs::remove_dir_all(&datadir).unwrap();
    std::fs::rename(&backup, &datadir).unwrap();
    let old = sk;
    let sk = start_sk(&datadir, 1, &old, &["--restore-cluster"]);
    drop(old);

    // What --sync-only does for one timeline: elect in a new term, then
    // TIMELINE_SETTLED.
    let settle = |t: Ttid| {
        let mut p = RawClient::proposer(sk.pg_addr);
        let mut g = greeting(&[1], false);
        g.ttid = t;
        p.send(&ProposerMessage::Greeting(g));
        assert!(matches!(p.recv(), AcceptorMessage::Greeting(_)));
        p.send(&ProposerMessage::VoteRequest(VoteRequest::new(2)));
        assert!(matches!(p.recv(), AcceptorMessage::Vote(v) if v.granted));
        p.send(&ProposerMessage::Elected(Elected {
            term: 2,
            start_streaming_at: Lsn(START),
            term_history: TermHistory(vec![term_lsn(1, START), term_lsn(2, START)]),
            pg_tli: 0,
            pg_ancestors: Vec::new(),
        }));
        assert!(matches!(p.recv(), AcceptorMessage::Append(_)));
        let mut q = RawClient::connect(
            sk.pg_addr,
            &format!(
                "-c walkeeper.role=proposer -c tenant_id={} -c timeline_id={}",
                t.tenant_id, t.timeline_id
            ),
        );
        let reply = q.query(&format!(
            "TIMELINE_SETTLED (term '2', lsn '{}')",
            Lsn(START)
        ));
        assert!(
            reply.iter().any(|m| m.tag == b'C'),
            "TIMELINE_SETTLED of {t}: {:?}",
            reply.iter().find_map(|m| m.error_field(b'M'))
        );
    };
    settle(ttids[0]);
    assert!(
        still_marked(&datadir),
        "the mark was cleared while timeline {} was not settled",
        ttids[1]
    );
    settle(ttids[1]);
    assert!(
        !still_marked(&datadir),
        "every timeline settled; the mark stays"
    );
}
