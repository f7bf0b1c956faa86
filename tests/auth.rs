//! Authentication and roles on the PostgreSQL-protocol port, end to end:
//! safekeepers with `--users-file` (lines written by `skctl user`), stock
//! PostgreSQL 15 clients (psql, pg_receivewal, a standby) authenticating
//! with SCRAM-SHA-256, the proxy pushing as a proposer with a password
//! file, and the refusals: no password, a wrong one, an unknown user, a
//! consumer pushing WAL or raising a term.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::pg;
use common::*;
use walkeeper::pq::client::{ClientError, ConnConfig, PgClient};

const PROXY_PW: &str = "proxy secret: 'quoted' \\ and long";
const STANDBY_PW: &str = "standby-secret";

/// A users-file line from `skctl user NAME --role ROLE`, the password on
/// its stdin.
fn skctl_user(name: &str, role: &str, password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_skctl"))
        .args(["user", name, "--role", role])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    assert!(
        !line.contains(password) && line.contains(" SCRAM-SHA-256$4096:"),
        "skctl user prints a verifier, never the password: {line}"
    );
    line
}

/// A file only its owner may read (libpq ignores a looser password file).
fn private_file(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

/// proxy (proposer), standby (consumer).
fn users_file(dir: &Path) -> PathBuf {
    let text =
        skctl_user("proxy", "proposer", PROXY_PW) + &skctl_user("standby", "consumer", STANDBY_PW);
    private_file(&dir.join("users"), &text)
}

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
