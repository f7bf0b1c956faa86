//! Authentication and roles on the PostgreSQL-protocol port, end to end:
//! safekeepers with `--users-file` (lines written by `skctl user`), stock
//! PostgreSQL 15 clients (psql, pg_receivewal, a standby) authenticating
//! with SCRAM-SHA-256, the proxy pushing as a proposer with a password
//! file, and the refusals: no password, a wrong one, an unknown user, a
//! consumer pushing WAL or raising a term.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cluster::{Cluster, SYNC_CONF};
use common::pg::{self, Postgres};
use common::users::*;
use common::*;
use walkeeper::lsn::Lsn;
use walkeeper::pq::client::{ClientError, ConnConfig, PgClient};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connect to `sk` as a replication client with this conninfo (user,
/// password, options); the client or the error.
fn connect(
    sk: &Safekeeper,
    conninfo: &str,
) -> Result<(tokio::runtime::Runtime, PgClient), ClientError> {
    let cfg = ConnConfig::parse_with_env(
        &format!(
            "host=127.0.0.1 port={} connect_timeout=10 {conninfo}",
            sk.pg_addr.port()
        ),
        |_| None,
    )
    .unwrap();
    let rt = runtime();
    let client = rt.block_on(PgClient::connect(&cfg, true, ""))?;
    Ok((rt, client))
}

fn sqlstate_of(r: Result<impl Sized, ClientError>) -> String {
    match r {
        Ok(_) => "00000 (accepted)".into(),
        Err(e) => format!("{} ({e})", e.sqlstate().unwrap_or("none")),
    }
}

/// psql on a safekeeper's replication port with this environment:
/// Ok(stdout) or Err(stderr).
fn repl_psql(sk: &Safekeeper, user: &str, env: &[(&str, &str)], q: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg::pg_bin("psql"));
    cmd.arg(format!(
        "host=127.0.0.1 port={} user={user} replication=true connect_timeout=5",
        sk.pg_addr.port()
    ))
    .args(["-w", "-XAtq", "-c", q])
    .env_remove("PGPASSWORD")
    .env("PGPASSFILE", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (ok, out, err) = run(&mut cmd);
    if ok {
        Ok(out.trim().to_string())
    } else {
        Err(err)
    }
}

/// The timeline's term on `sk`, from its HTTP API.
fn term(sk: &Safekeeper) -> u64 {
    let (code, body) = http(sk.http_addr, "GET", "/v1/timelines", "");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v[0]["term"]
        .as_u64()
        .unwrap_or_else(|| panic!("no term in {body}"))
}

#[test]
fn stock_clients_authenticate_with_scram_and_roles_hold() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let users = users.to_str().unwrap();
    let pg = Postgres::start_primary(dir.path(), SYNC_CONF);
    let sks: Vec<Safekeeper> = (1..=3)
        .map(|n| {
            Safekeeper::start_with(
                &dir.path().join(format!("sk{n}")),
                n,
                true,
                &["--users-file", users],
            )
        })
        .collect();
    // The proxy's password from a password file (with a line for another
    // user first, and the password's ':' and '\' escaped).
    let escaped = PROXY_PW.replace('\\', "\\\\").replace(':', "\\:");
    let passfile = private_file(
        &dir.path().join("proxy.pgpass"),
        &format!("*:*:*:standby:not-this-one\n127.0.0.1:*:replication:proxy:{escaped}\n"),
    );
    let mut c = Cluster {
        proxy: None,
        sks,
        pg,
        dir,
    };
    let sk_conninfo = format!("user=proxy passfile={}", passfile.display());
    c.start_proxy(
        "proxy1",
        &["--create-timeline", "--safekeeper-conninfo", &sk_conninfo],
    );
    // The proxy authenticated as a proposer: the primary's commits now
    // wait for it.
    c.wait_sync();
    c.pg.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1)");

    // psql with a password: IDENTIFY_SYSTEM as the consumer.
    let ident = repl_psql(
        &c.sks[0],
        "standby",
        &[("PGPASSWORD", STANDBY_PW)],
        "IDENTIFY_SYSTEM",
    )
    .expect("psql with the right password");
    assert!(ident.starts_with(&c.pg.system_id().to_string()), "{ident}");

    // A standby whose primary_conninfo carries the consumer's password
    // streams from the safekeepers and replays.
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ports: Vec<String> = c.sks.iter().map(|s| s.pg_addr.port().to_string()).collect();
    c.start_standby(
        &mut standby,
        0,
        &format!(
            "primary_conninfo = 'host=127.0.0.1,127.0.0.1,127.0.0.1 port={} user=standby password={STANDBY_PW} connect_timeout=2'",
            ports.join(",")
        ),
    );
    c.pg.sql("INSERT INTO t VALUES (2)");
    wait_for(Duration::from_secs(60), "the standby to replay", || {
        (standby.sql("SELECT count(*) FROM t") == "2").then_some(())
    });

    // Refusals, each with PostgreSQL's SQLSTATE; none changes the term.
    let terms: Vec<u64> = c.sks.iter().map(term).collect();
    let no_password = repl_psql(&c.sks[0], "standby", &[], "IDENTIFY_SYSTEM").unwrap_err();
    assert!(
        no_password.contains("no password supplied"),
        "{no_password}"
    );
    let wrong = repl_psql(
        &c.sks[0],
        "standby",
        &[("PGPASSWORD", "wrong")],
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        wrong.contains("password authentication failed for user \"standby\""),
        "{wrong}"
    );
    let sk = &c.sks[1];
    assert!(
        sqlstate_of(connect(sk, "user=standby password=wrong")).starts_with("28P01"),
        "a wrong password"
    );
    let unknown = sqlstate_of(connect(sk, "user=ghost password=anything"));
    assert!(
        unknown.starts_with("28P01") && unknown.contains("for user \"ghost\""),
        "an unknown user is told as for a wrong password: {unknown}"
    );
    assert!(
        sqlstate_of(connect(sk, "user=standby")).contains("no password was supplied"),
        "our client without a password"
    );
    // The consumer, authenticated, claiming to be a proposer.
    let options = format!(
        "options='{}'",
        walkeeper::proxy::safekeepers::proposer_options(cluster_ttid())
    );
    let (rt, mut consumer) = connect(sk, &format!("user=standby password={STANDBY_PW} {options}"))
        .expect("the consumer authenticates");
    for (what, q) in [
        ("pushing WAL", "START_WAL_PUSH"),
        (
            "settling (a term)",
            "TIMELINE_SETTLED (term '1000', lsn '0/0')",
        ),
        (
            "a recovery read",
            "START_REPLICATION PHYSICAL 0/1000000 (term '1000')",
        ),
    ] {
        let r = rt.block_on(consumer.simple_query(q));
        assert!(sqlstate_of(r).starts_with("42501"), "a consumer {what}");
    }
    // Still connected, and allowed to read.
    let rows = rt
        .block_on(consumer.simple_query("IDENTIFY_SYSTEM"))
        .unwrap();
    assert_eq!(
        rows[0][0].as_deref(),
        Some(c.pg.system_id().to_string().as_str())
    );
    drop((consumer, rt));
    assert_eq!(
        c.sks.iter().map(term).collect::<Vec<_>>(),
        terms,
        "no term changed"
    );

    // pg_receivewal with a password file gets the primary's segments.
    c.pg.sql("INSERT INTO t VALUES (3)");
    c.pg.sql("SELECT pg_switch_wal()");
    c.pg.sql("INSERT INTO t VALUES (4)");
    let end = c.flush_lsn();
    let last_full = end.segment_number(SEG) - 1;
    let first = START / SEG as u64;
    let out = pg::postgres_dir(c.dir.path(), "receivewal");
    let pgpass = private_file(
        &c.dir.path().join("receivewal.pgpass"),
        &format!("127.0.0.1:*:replication:standby:{STANDBY_PW}\n"),
    );
    let (ok, stdout, stderr) = run(pg::receive_wal_command(
        &out,
        c.sks[2].pg_addr.port(),
        first,
        Lsn((last_full + 1) * SEG as u64 - 1),
    )
    .args(["-U", "standby", "-w"])
    .env_remove("PGPASSWORD")
    .env("PGPASSFILE", &pgpass));
    assert!(ok, "pg_receivewal with a password file: {stdout}{stderr}");
    pg::assert_same_segments(&out, &c.pg.pg_wal(), first..=last_full);

    // The proxy still commits, the standby still replays, and commits wait
    // for a majority.
    wait_for(Duration::from_secs(60), "the standby to replay", || {
        (standby.sql("SELECT count(*) FROM t") == "4").then_some(())
    });
    c.assert_commit_waits_for_a_majority("INSERT INTO t VALUES (5)");
    let log = c.proxy.as_ref().unwrap().log_text();
    assert!(!log.contains("28P01"), "the proxy was never refused: {log}");
}

/// The proxy's timeline.
fn cluster_ttid() -> walkeeper::id::Ttid {
    common::cluster::default_ttid()
}

/// psql against one safekeeper: the right password, and PostgreSQL's own
/// refusals of no password, a wrong one and an unknown user (the same
/// message for the last two); the daemon goes on serving.
#[test]
fn psql_authenticates_with_scram() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let sk = Safekeeper::start_with(
        &dir.path().join("sk"),
        1,
        true,
        &["--users-file", users.to_str().unwrap()],
    );
    let show = "SHOW wal_segment_size";
    let no_password = repl_psql(&sk, "standby", &[], show).unwrap_err();
    assert!(
        no_password.contains("no password supplied"),
        "{no_password}"
    );
    for (user, pw) in [("standby", "wrong"), ("ghost", STANDBY_PW)] {
        let e = repl_psql(&sk, user, &[("PGPASSWORD", pw)], show).unwrap_err();
        assert!(
            e.contains(&format!(
                "FATAL:  password authentication failed for user \"{user}\""
            )),
            "{e}"
        );
    }
    let pgpass = private_file(
        &dir.path().join("pgpass"),
        &format!("127.0.0.1:{}:*:standby:{STANDBY_PW}\n", sk.pg_addr.port()),
    );
    let pgpass = pgpass.to_str().unwrap();
    for env in [[("PGPASSWORD", STANDBY_PW)], [("PGPASSFILE", pgpass)]] {
        assert_eq!(repl_psql(&sk, "standby", &env, show).as_deref(), Ok("16MB"));
    }
    assert!(
        sqlstate_of(connect(&sk, "user=standby password=wrong")).starts_with("28P01"),
        "SQLSTATE 28P01"
    );
}

/// A consumer that authenticated cannot create a timeline (a greeting
/// raises the term): refused before anything is stored, and the daemon
/// goes on serving.
#[test]
fn a_consumer_cannot_create_a_timeline() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let sk = Safekeeper::start_with(
        &dir.path().join("sk"),
        1,
        true,
        &["--users-file", users.to_str().unwrap()],
    );
    let options = format!(
        "options='{}'",
        walkeeper::proxy::safekeepers::proposer_options(ttid())
    );
    for _ in 0..2 {
        let (rt, mut consumer) = connect(
            &sk,
            &format!("user=standby password={STANDBY_PW} {options}"),
        )
        .expect("the consumer authenticates");
        let r = rt.block_on(consumer.simple_query("START_WAL_PUSH"));
        assert!(
            sqlstate_of(r).starts_with("42501"),
            "a consumer pushing WAL"
        );
    }
    let (code, body) = http(sk.http_addr, "GET", "/v1/timelines", "");
    assert_eq!((code, body.as_str()), (200, "[]"), "nothing stored");
    // The proposer is let in (and its greeting would be served).
    let (rt, mut proposer) = connect(
        &sk,
        &format!(
            "user=proxy password='{}' {options}",
            PROXY_PW.replace('\\', "\\\\").replace('\'', "\\'")
        ),
    )
    .expect("the proposer authenticates");
    let rows = rt
        .block_on(proposer.simple_query("SHOW wal_segment_size"))
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("16MB"));
}

/// No `--users-file`: clients are trusted as before (loopback only).
#[test]
fn without_a_users_file_clients_are_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk"), 1, true);
    let (rt, mut c) = connect(&sk, "user=anyone").expect("trusted");
    rt.block_on(c.simple_query("SHOW wal_segment_size"))
        .unwrap();
}

/// An HTTP request with an optional `Authorization` header: status and
/// body.
fn http_auth(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

/// `--http-token-file`: every request needs the bearer token (401 without,
/// 403 with a wrong one, JSON errors), a refused checkpoint writes
/// nothing, skctl checkpoint sends the token; `--http-public-status`
/// opens only GET /v1/status and /metrics.
#[test]
fn the_http_port_needs_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = private_file(&dir.path().join("token"), &format!("{TOKEN}\n"));
    let token_file = token_file.to_str().unwrap();
    let checkpoints = dir.path().join("checkpoints");
    let mut sk = Safekeeper::start_with(
        &dir.path().join("sk"),
        1,
        true,
        &[
            "--http-token-file",
            token_file,
            "--checkpoint-dir",
            checkpoints.to_str().unwrap(),
        ],
    );
    let a = sk.http_addr;
    let cp = |name: &str| format!("{{\"path\": \"{}\"}}", checkpoints.join(name).display());
    let bearer = format!("Bearer {TOKEN}");
    for (method, path, body) in [
        ("GET", "/v1/status", String::new()),
        ("GET", "/metrics", String::new()),
        ("GET", "/v1/timelines", String::new()),
        ("POST", "/v1/checkpoint", cp("refused")),
    ] {
        let (code, reply) = http_auth(a, method, path, &body, None);
        assert_eq!(code, 401, "{method} {path} without a token: {reply}");
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert!(v["error"].as_str().unwrap().contains("Bearer"), "{reply}");
        let (code, reply) = http_auth(a, method, path, &body, Some("Bearer wrong"));
        assert_eq!(code, 403, "{method} {path} with a wrong token: {reply}");
        assert!(reply.contains("\"error\""), "{reply}");
    }
    assert!(!checkpoints.join("refused").exists(), "nothing written");
    let (code, reply) = http_auth(a, "POST", "/v1/checkpoint", &cp("ok"), Some(&bearer));
    assert_eq!(code, 200, "{reply}");
    assert!(checkpoints.join("ok").exists());
    let (code, _) = http_auth(a, "GET", "/v1/status", "", Some(&bearer));
    assert_eq!(code, 200);

    // skctl checkpoint --http: refused without the token, done with it
    // (from the environment variable).
    let skctl = |out: &str, token: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skctl"));
        cmd.args(["checkpoint", "--http", &a.to_string(), "--out"])
            .arg(checkpoints.join(out))
            .env_remove("WALKEEPER_HTTP_TOKEN_FILE");
        if let Some(t) = token {
            cmd.env("WALKEEPER_HTTP_TOKEN_FILE", t);
        }
        run(&mut cmd)
    };
    let (ok, _, err) = skctl("by-skctl", None);
    assert!(!ok && err.contains("HTTP 401"), "{err}");
    let (ok, _, err) = skctl("by-skctl", Some(token_file));
    assert!(ok, "{err}");
    assert!(checkpoints.join("by-skctl").exists());

    // Monitoring left open on request; nothing else.
    sk.kill9();
    sk.args.push("--http-public-status".into());
    sk.restart();
    for path in ["/v1/status", "/metrics"] {
        assert_eq!(
            http_auth(sk.http_addr, "GET", path, "", None).0,
            200,
            "{path}"
        );
    }
    assert_eq!(
        http_auth(sk.http_addr, "GET", "/v1/timelines", "", None).0,
        401
    );
    let (code, _) = http_auth(sk.http_addr, "POST", "/v1/checkpoint", &cp("open"), None);
    assert_eq!(code, 401);
    assert!(!checkpoints.join("open").exists());
}

/// A safekeeper binary run to its exit (with --init): success, stderr,
/// and whether it created its store.
fn safekeeper_exit(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, bool) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_safekeeper"));
    cmd.arg("--datadir")
        .arg(dir.join("sk"))
        .args(["--init", "--node-id", "1"])
        .args(args)
        .env_remove("WALKEEPER_USERS_FILE")
        .env_remove("WALKEEPER_HTTP_TOKEN_FILE")
        .env_remove("WALKEEPER_INSECURE_NO_AUTH")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (ok, _, err) = run(&mut cmd);
    let created = dir.join("sk").exists();
    let _ = std::fs::remove_dir_all(dir.join("sk"));
    (ok, err, created)
}

/// Binding a non-loopback address (given by flag or environment variable)
/// without authentication is refused with a message that says how to
/// configure it; --insecure-no-auth (or its environment variable)
/// overrides with a warning. The addresses are from
/// TEST-NET-1 (not on this machine): a start that passes the check fails
/// at bind, and nothing ever listens beyond loopback.
#[test]
fn non_loopback_addresses_need_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let users = users.to_str().unwrap();
    let token = private_file(&dir.path().join("token"), TOKEN);
    let token = token.to_str().unwrap();
    let far_pg = "192.0.2.1:5454";
    let far_http = "192.0.2.1:7676";
    let near_pg = format!("127.0.0.1:{}", free_port());
    let near_http = format!("127.0.0.1:{}", free_port());

    let (ok, err, created) = safekeeper_exit(
        dir.path(),
        &["--listen-http", &near_http],
        &[("WALKEEPER_LISTEN_PG", far_pg)],
    );
    assert!(!ok && !created, "refused before a store is created");
    assert!(
        err.contains("refusing to listen on a non-loopback address without authentication")
            && err.contains("--listen-pg 192.0.2.1:5454 without --users-file")
            && err.contains("skctl user")
            && err.contains("--insecure-no-auth"),
        "{err}"
    );
    let (ok, err, created) = safekeeper_exit(
        dir.path(),
        &["--listen-pg", &near_pg, "--listen-http", far_http],
        &[],
    );
    assert!(
        !ok && !created && err.contains("--listen-http 192.0.2.1:7676 without --http-token-file"),
        "{err}"
    );

    // Configured (one of them through its environment variable): past the
    // check, failing only to bind an address this machine does not have.
    let (ok, err, created) = safekeeper_exit(
        dir.path(),
        &[
            "--listen-pg",
            far_pg,
            "--listen-http",
            far_http,
            "--http-token-file",
            token,
        ],
        &[("WALKEEPER_USERS_FILE", users)],
    );
    assert!(
        !ok && created && err.contains("cannot listen") && !err.contains("refusing"),
        "{err}"
    );
    // Overridden: a warning, then the same bind failure.
    for (args, env) in [
        (
            vec![
                "--listen-pg",
                far_pg,
                "--listen-http",
                far_http,
                "--insecure-no-auth",
            ],
            vec![],
        ),
        (
            vec!["--listen-pg", far_pg, "--listen-http", far_http],
            vec![("WALKEEPER_INSECURE_NO_AUTH", "true")],
        ),
    ] {
        let (ok, err, created) = safekeeper_exit(dir.path(), &args, &env);
        assert!(
            !ok && created
                && err.contains("--insecure-no-auth: listening without authentication")
                && err.contains("cannot listen"),
            "{err}"
        );
    }
}

/// A proxy given a consumer's credentials, or a wrong password, creates
/// nothing on the safekeeper and says why in its log (42501, 28P01),
/// naming the flag to fix.
#[test]
fn a_proxy_with_the_wrong_credentials_says_so() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let pg = Postgres::start_primary(dir.path(), "");
    let sk = Safekeeper::start_with(
        &dir.path().join("sk"),
        1,
        true,
        &["--users-file", users.to_str().unwrap()],
    );
    for (name, conninfo, code) in [
        (
            "consumer",
            format!("user=standby password={STANDBY_PW}"),
            "42501",
        ),
        ("wrong", "user=proxy password=wrong".to_string(), "28P01"),
    ] {
        let proxy = Proxy::start(
            dir.path(),
            name,
            pg.port,
            &[&sk],
            &["--create-timeline", "--safekeeper-conninfo", &conninfo],
        );
        wait_for(Duration::from_secs(30), "the proxy to say why", || {
            let log = proxy.log_text();
            (log.contains("refuses this proxy's credentials (check --safekeeper-conninfo")
                && log.contains(code))
            .then_some(())
        });
        drop(proxy);
        let (status, body) = http(sk.http_addr, "GET", "/v1/timelines", "");
        assert_eq!((status, body.as_str()), (200, "[]"), "nothing created");
    }
}
