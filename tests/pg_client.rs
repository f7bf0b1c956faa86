//! The proxy's PostgreSQL client against a real PostgreSQL 15: logins with
//! every password method it supports, the replication commands, streaming
//! from a slot, the slot held exclusively, and keepalives answered.

mod common;

use std::time::{Duration, Instant};

use common::pg::{self, Postgres};
use walkeeper::lsn::Lsn;
use walkeeper::pq::client::{ClientError, ConnConfig, CopyMessage, PgClient, PgReader};
use walkeeper::pq::replication::ServerReplMessage;

fn conf(pg: &Postgres, extra: &str) -> ConnConfig {
    ConnConfig::parse_with_env(&format!("host=127.0.0.1 port={} {extra}", pg.port), |_| {
        None
    })
    .unwrap()
}

async fn login(pg: &Postgres, user: &str, password: Option<&str>) -> Result<PgClient, ClientError> {
    let mut cfg = conf(
        pg,
        &format!("user={user} dbname=postgres connect_timeout=10"),
    );
    cfg.password = password.map(str::to_string);
    PgClient::connect(&cfg, false, "").await
}

/// Puts `lines` before the rules initdb wrote and reloads; waits until a
/// login with `probe_user` and a wrong password is refused, i.e. until the
/// new rules are in force.
async fn prepend_hba(pg: &Postgres, lines: &str, probe_user: &str) {
    let path = pg.datadir.join("pg_hba.conf");
    let old = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{lines}\n{old}")).unwrap();
    assert_eq!(pg.sql("SELECT pg_reload_conf()"), "t");
    let deadline = Instant::now() + Duration::from_secs(20);
    while login(pg, probe_user, Some("not the password"))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "pg_hba.conf was not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_simple_queries() {
    if pg::absent() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let pg = Postgres::start_primary(base.path(), "");

    // trust
    let mut c = login(&pg, "postgres", None).await.unwrap();
    assert!(c.parameter("server_version").unwrap().starts_with("15"));
    assert_eq!(c.parameter("integer_datetimes"), Some("on"));
    assert!(c.backend_key().is_some());
    let rows = c
        .simple_query("SELECT 1, NULL::text, 'it''s'; SELECT 'second'")
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec![Some("1".into()), None, Some("it's".into())],
            vec![Some("second".into())],
        ]
    );
    let e = c
        .simple_query("SELECT x FROM generate_series(-2, 2) x WHERE 1 / x > 0")
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("22012"), "{e}");
    assert!(
        e.to_string().starts_with("ERROR 22012: division by zero"),
        "{e}"
    );
    assert_eq!(
        c.simple_query("SELECT 2").await.unwrap(),
        vec![vec![Some("2".into())]],
        "the connection is usable after an error"
    );
    assert!(c.simple_query("").await.unwrap().is_empty());

    // a Unix-domain socket, named by its directory as in libpq
    let socket_dir = pg.log.parent().unwrap().display().to_string();
    let unix = ConnConfig::parse_with_env(
        &format!("host='{socket_dir}' port={} dbname=postgres", pg.port),
        |_| None,
    )
    .unwrap();
    let mut u = PgClient::connect(&unix, false, "").await.unwrap();
    assert!(u.address().ends_with(&format!("/.s.PGSQL.{}", pg.port)));
    assert_eq!(
        u.simple_query("SELECT 3").await.unwrap(),
        vec![vec![Some("3".into())]]
    );
    u.close().await.unwrap();

    c.simple_query(
        "SET password_encryption = 'md5'; \
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 pass''word'; \
         SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram päss'; \
         CREATE ROLE clear_user LOGIN PASSWORD 'clear'",
    )
    .await
    .unwrap();
    let stored = pg.sql(
        "SELECT rolname || ':' || left(rolpassword, 13) FROM pg_authid \
         WHERE rolname LIKE '%_user' ORDER BY 1",
    );
    assert!(stored.contains("md5_user:md5"), "{stored}");
    assert!(stored.contains("scram_user:SCRAM-SHA-256"), "{stored}");
    c.close().await.unwrap();

    prepend_hba(
        &pg,
        "host all md5_user 127.0.0.1/32 md5\n\
         host replication md5_user 127.0.0.1/32 md5\n\
         host all scram_user 127.0.0.1/32 scram-sha-256\n\
         host replication scram_user 127.0.0.1/32 scram-sha-256\n\
         host all clear_user 127.0.0.1/32 password",
        "clear_user",
    )
    .await;

    for (user, pw) in [
        ("md5_user", "md5 pass'word"),
        ("scram_user", "scram päss"),
        ("clear_user", "clear"),
    ] {
        let mut c = login(&pg, user, Some(pw))
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(
            c.simple_query("SELECT current_user").await.unwrap(),
            vec![vec![Some(user.to_string())]]
        );
        c.close().await.unwrap();

        let e = login(&pg, user, Some("wrong")).await.err().unwrap();
        assert_eq!(e.sqlstate(), Some("28P01"), "{user}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("FATAL 28P01") && text.contains("password authentication failed"),
            "{text}"
        );

        let e = login(&pg, user, None).await.err().unwrap();
        assert!(matches!(e, ClientError::Auth { .. }), "{user}: {e}");
        assert!(e.to_string().contains("no password"), "{e}");
    }

    // a replication connection with SCRAM, options passed through
    let mut cfg = conf(&pg, "user=scram_user application_name=pg_client_test");
    cfg.password = Some("scram päss".into());
    let mut c = PgClient::connect(&cfg, true, "-c wal_sender_timeout=7s")
        .await
        .unwrap();
    assert_eq!(c.show("wal_sender_timeout").await.unwrap(), "7s");
    assert_eq!(c.parameter("application_name"), Some("pg_client_test"));
    c.identify_system().await.unwrap();
}

/// Reads CopyData until the first XLogData, skipping keepalives.
async fn first_xlogdata(r: &mut PgReader) -> walkeeper::pq::replication::XLogData {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), r.recv_copy())
            .await
            .expect("WAL within 20 s")
            .unwrap();
        let CopyMessage::Data(d) = m else {
            panic!("expected CopyData, got {m:?}")
        };
        if let ServerReplMessage::XLogData(x) = ServerReplMessage::decode(&d).unwrap() {
            return x;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_commands_and_streaming() {
    if pg::absent() {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let pg = Postgres::start_primary(base.path(), "wal_sender_timeout = '2s'");
    let cfg = conf(&pg, "user=postgres application_name=safekeeper_proxy");

    let mut c = PgClient::connect(&cfg, true, "").await.unwrap();
    let ident = c.identify_system().await.unwrap();
    assert_eq!(ident.system_id, pg.system_id());
    assert_eq!(ident.timeline, 1);
    assert!(ident.xlogpos.is_valid());
    assert_eq!(ident.dbname, None);
    assert_eq!(c.show("wal_segment_size").await.unwrap(), "16MB");
    let seg = c.wal_segment_size().await.unwrap();
    assert_eq!(seg, 16 << 20);
    assert!(matches!(
        c.timeline_history(1).await,
        Err(ClientError::Server { .. })
    ));

    assert_eq!(c.read_replication_slot("proxy_slot").await.unwrap(), None);
    c.create_physical_slot("proxy_slot", true).await.unwrap();
    let slot = c
        .read_replication_slot("proxy_slot")
        .await
        .unwrap()
        .expect("the slot exists");
    assert_eq!(slot.slot_type, "physical");
    let restart = slot.restart_lsn.expect("RESERVE_WAL sets restart_lsn");
    assert!(restart.is_valid());
    assert_eq!(slot.restart_tli, Some(1));
    let e = c
        .create_physical_slot("proxy_slot", true)
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("42710"), "{e}");

    pg.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");

    let start = restart.segment_start(seg);
    c.start_physical_replication(Some("proxy_slot"), start, Some(1))
        .await
        .unwrap();
    let (mut reader, mut writer) = c.into_split();
    let first = first_xlogdata(&mut reader).await;
    assert_eq!(first.data_start, start);
    assert!(!first.data.is_empty());
    // Resets the walsender's 2 s timeout while the checks below run; an
    // invalid flush position does not move the slot.
    writer
        .send_status_update(Lsn::INVALID, Lsn::INVALID, Lsn::INVALID, false)
        .unwrap();
    writer.flush().await.unwrap();

    // The slot is held: another walsender cannot have it.
    let mut other = PgClient::connect(&cfg, true, "").await.unwrap();
    let e = other
        .start_physical_replication(Some("proxy_slot"), start, Some(1))
        .await
        .unwrap_err();
    assert_eq!(e.sqlstate(), Some("55006"), "{e}");
    assert!(e.to_string().contains("is active"), "{e}");
    // and that connection is still usable
    assert_eq!(
        other.identify_system().await.unwrap().system_id,
        ident.system_id
    );

    // Past the flush position: the error comes after CopyBothResponse.
    let far = Lsn(ident.xlogpos.0 + (64u64 << 30)).segment_start(seg);
    other
        .start_physical_replication(None, far, Some(1))
        .await
        .unwrap();
    let e = other.recv_copy().await.unwrap_err();
    assert!(
        e.to_string().contains("ahead of the WAL flush position"),
        "{e}"
    );
    assert_eq!(other.identify_system().await.unwrap().timeline, 1);
    other.close().await.unwrap();

    // Stream in one task and answer keepalives from another, for longer than
    // wal_sender_timeout: without the answers the walsender would hang up.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Lsn, bool)>();
    let mut received = first.data_end().unwrap();
    let streamer = tokio::spawn(async move {
        let mut replies_requested = 0;
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            let m = tokio::select! {
                m = reader.recv_copy() => m.unwrap(),
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let CopyMessage::Data(d) = m else {
                panic!("unexpected {m:?}")
            };
            match ServerReplMessage::decode(&d).unwrap() {
                ServerReplMessage::XLogData(x) => {
                    assert_eq!(x.data_start, received, "contiguous WAL");
                    received = x.data_end().unwrap();
                }
                ServerReplMessage::Keepalive(k) => {
                    if k.reply_requested {
                        replies_requested += 1;
                    }
                    tx.send((received, k.reply_requested)).unwrap();
                }
            }
        }
        (reader, received, replies_requested)
    });
    let mut last_reported = Lsn::INVALID;
    while let Some((lsn, _)) = rx.recv().await {
        writer.send_status_update(lsn, lsn, lsn, false).unwrap();
        writer.flush().await.unwrap();
        last_reported = lsn;
    }
    let (mut reader, received, replies_requested) = streamer.await.unwrap();
    assert!(replies_requested > 0, "the walsender asked for a reply");
    assert!(last_reported.is_valid());

    // The primary took our report: the slot follows the flush position.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let flush = pg.sql(
            "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'safekeeper_proxy'",
        );
        let restart =
            pg.sql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'proxy_slot'");
        if flush == last_reported.to_string() && restart == last_reported.to_string() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flush {flush} / restart {restart}, reported {last_reported}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Ending the stream from our side: CopyDone both ways, then the trail.
    writer.send_copy_done();
    writer.flush().await.unwrap();
    let mut trail = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), reader.recv_copy())
            .await
            .expect("the end of the stream")
            .unwrap();
        match m {
            CopyMessage::Data(_) => {}
            CopyMessage::ReadyForQuery => break,
            other => trail.push(other),
        }
    }
    assert_eq!(trail.first(), Some(&CopyMessage::Done), "{trail:?}");
    assert!(trail.contains(&CopyMessage::CommandComplete("START_STREAMING".into())));
    let mut c = PgClient::reunite(reader, writer).unwrap();
    assert_eq!(
        c.identify_system().await.unwrap().system_id,
        ident.system_id
    );
    assert!(received > start);
    c.drop_replication_slot("proxy_slot", false).await.unwrap();
    assert_eq!(c.read_replication_slot("proxy_slot").await.unwrap(), None);
    c.close().await.unwrap();
}
