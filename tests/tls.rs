//! TLS on the safekeeper's PostgreSQL-protocol port, with PostgreSQL 15's
//! own clients (psql, pg_receivewal) and certificates made by rcgen.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::certs::Certs;
use common::cluster::{Cluster, SYNC_CONF};
use common::pg::{self, Postgres};
use common::*;
use walkeeper::lsn::Lsn;

/// psql over a replication connection with these extra libpq keys; its
/// success, stdout and stderr.
fn psql_replication(addr: SocketAddr, keys: &str, command: &str) -> (bool, String, String) {
    run(Command::new(pg::pg_bin("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres replication=true connect_timeout=10 {keys}",
            addr.port()
        ))
        .args(["-XAtq", "-c", command]))
}

/// What the server answers a startup packet sent in clear: the first
/// message's type and, for an ErrorResponse, its SQLSTATE and message.
fn startup_in_clear(addr: SocketAddr) -> (u8, Option<String>, Option<String>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&replication_startup("")).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.len() >= 5, "no answer to a startup packet in clear");
    let msg = BeMsg {
        tag: got[0],
        body: bytes::Bytes::copy_from_slice(&got[5..]),
    };
    (msg.tag, msg.error_field(b'C'), msg.error_field(b'M'))
}

/// WAL of a real primary pushed in clear to a safekeeper offering TLS; the
/// same safekeeper restarted with --tls-required then serves stock clients
/// over TLS only, verified by host name against the test CA.
#[test]
fn stock_clients_stream_over_verify_full_and_clear_startups_are_refused_when_tls_is_required() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&pg::postgres_dir(dir.path(), "certs"));
    let primary = Postgres::start_primary(dir.path(), "");
    primary.sql("CREATE TABLE t (i int, pad text)");
    primary.sql("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g");
    primary.sql("SELECT pg_switch_wal()");
    let insert: Lsn = primary
        .sql("SELECT pg_current_wal_insert_lsn()")
        .parse()
        .unwrap();
    let last_full = insert.segment_number(SEG) - 1;
    let mut wal = Vec::new();
    for segno in 1..=last_full {
        let name = walkeeper::lsn::segment_file_name(1, segno, SEG);
        wal.extend(std::fs::read(primary.pg_wal().join(name)).unwrap());
    }
    let end = START + wal.len() as u64;

    let args = certs.server_args("server");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sk = Safekeeper::start_with(&dir.path().join("sk1"), 1, true, &args);
    // The proposer stays connected: consumers are served while it lives.
    let mut c = RawClient::proposer(sk.pg_addr);
    elect_single(&mut c, greeting_for(primary.system_id(), true), 1);
    assert_eq!(push(&mut c, 1, START, &wal, 128 * 1024, end), end);

    // Offered, not required: verify-full (by address and by name) and
    // require get TLS, sslmode=disable stays in clear.
    for keys in [
        certs.verify_full(),
        format!("{} host=localhost", certs.verify_full()),
        "sslmode=require".to_string(),
    ] {
        let (ok, out, err) = psql_replication(sk.pg_addr, &keys, "\\conninfo");
        assert!(
            ok && out.contains("SSL connection"),
            "psql {keys}: {out}{err}"
        );
        let (ok, out, err) = psql_replication(sk.pg_addr, &keys, "IDENTIFY_SYSTEM");
        assert!(ok, "psql {keys}: {err}");
        assert!(
            out.starts_with(&format!("{}|1|", primary.system_id())),
            "psql {keys}: {out}"
        );
    }
    let (ok, out, err) = psql_replication(sk.pg_addr, "sslmode=disable", "\\conninfo");
    assert!(ok && !out.contains("SSL"), "clear connection: {out}{err}");

    // pg_receivewal over verify-full: segments byte-identical to the
    // primary's.
    let out = pg::postgres_dir(dir.path(), "receivewal");
    let mut cmd = pg::receive_wal_command(&out, sk.pg_addr.port(), 1, Lsn(end - 1));
    cmd.arg("-d").arg(format!(
        "host=127.0.0.1 port={} user=postgres {}",
        sk.pg_addr.port(),
        certs.verify_full()
    ));
    let (ok, stdout, stderr) = run(&mut cmd);
    assert!(ok, "pg_receivewal over TLS failed: {stdout}{stderr}");
    pg::assert_same_segments(&out, &primary.pg_wal(), 1..=last_full);
    drop(c);

    // With --tls-required: a startup packet in clear gets FATAL 28000
    // saying how to connect; TLS clients are served.
    let mut args = args;
    args.push("--tls-required");
    let sk2 = Safekeeper::start_with(&dir.path().join("sk2"), 2, true, &args);
    let (tag, code, message) = startup_in_clear(sk2.pg_addr);
    assert_eq!(tag, b'E');
    assert_eq!(code.as_deref(), Some("28000"), "{message:?}");
    assert!(
        message.as_deref().unwrap_or("").contains("sslmode=require"),
        "{message:?}"
    );
    let (ok, _, err) = psql_replication(sk2.pg_addr, "sslmode=disable", "\\conninfo");
    assert!(
        !ok && err.contains("accepts only TLS connections"),
        "psql sslmode=disable: {err}"
    );
    // prefer (libpq's default) asks for TLS first.
    let (ok, out, err) = psql_replication(sk2.pg_addr, "sslmode=prefer", "\\conninfo");
    assert!(
        ok && out.contains("SSL connection"),
        "psql prefer: {out}{err}"
    );
}

/// Three safekeepers that require TLS; a primary with ssl=on and a
/// self-signed certificate. The proxy reaches both with verify-full.
fn tls_cluster() -> Option<(Cluster, Certs)> {
    if pg::absent() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&pg::postgres_dir(dir.path(), "certs"));
    let mut pg = Postgres::start_primary(dir.path(), SYNC_CONF);
    let pg_cert = Certs::self_signed_into(&pg.datadir);
    pg.stop();
    pg::append_conf(&pg.datadir, "ssl = on\n");
    pg.start();
    let mut args = certs.server_args("server");
    args.push("--tls-required".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sks: Vec<Safekeeper> = (1..=3)
        .map(|n| Safekeeper::start_with(&dir.path().join(format!("sk{n}")), n, true, &args))
        .collect();
    let log = dir.path().join("proxy1.log");
    let child = Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
        .arg("--primary")
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres sslmode=verify-full sslrootcert={}",
            pg.port,
            pg_cert.display()
        ))
        .arg("--safekeepers")
        .arg(member_list(&sks))
        .arg("--safekeeper-conninfo")
        .arg(certs.verify_full())
        .arg("--create-timeline")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting safekeeper-proxy");
    let c = Cluster {
        proxy: Some(Proxy {
            child: Some(child),
            log,
        }),
        sks,
        pg,
        dir,
    };
    c.wait_sync();
    Some((c, certs))
}

/// The proxy pushes to safekeepers that take TLS only, and reads the
/// primary over TLS; the primary's commits wait for a majority as before.
#[test]
fn the_proxy_pushes_over_verify_full_and_commits_wait_for_a_majority() {
    let Some((mut c, _certs)) = tls_cluster() else {
        return;
    };
    assert_eq!(
        c.pg.sql(
            "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) \
             WHERE r.application_name = 'safekeeper_proxy'"
        ),
        "t",
        "the proxy's replication connection to the primary is not TLS"
    );
    c.pg.sql("CREATE TABLE t (i int)");
    c.sks[1].kill9();
    c.sks[2].kill9();
    let mut insert = pg::psql(c.pg.port, "INSERT INTO t VALUES (1)")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let insert_guard = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < insert_guard {
        assert!(
            insert.try_wait().unwrap().is_none(),
            "a commit returned with one of three safekeepers up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.sks[1].restart();
    let status = wait_for(Duration::from_secs(60), "the commit to return", || {
        insert.try_wait().unwrap()
    });
    assert!(status.success());
    assert_eq!(c.pg.sql("SELECT count(*) FROM t"), "1");
}

/// Rows in `t` on `pg` reach `n` (a standby replaying).
fn wait_rows(pg: &Postgres, n: u64) {
    wait_for(Duration::from_secs(90), &format!("{n} rows"), || {
        let got: u64 = pg.sql("SELECT count(*) FROM t").parse().ok()?;
        (got == n).then_some(())
    });
}

/// A standby streams from a safekeeper over verify-full; the certificate
/// is renewed and the safekeeper gets SIGHUP: new connections get the new
/// certificate, and the standby's stream goes on on the same connection.
#[test]
fn sighup_renews_the_certificate_for_new_connections_and_the_wal_stream_goes_on() {
    let Some((c, certs)) = tls_cluster() else {
        return;
    };
    c.pg.sql("CREATE TABLE t (i int)");
    c.pg.sql("INSERT INTO t SELECT generate_series(1, 1000)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let sk = &c.sks[0];
    c.start_standby(
        &mut standby,
        0,
        &format!(
            "primary_conninfo = 'host=127.0.0.1 port={} user=postgres {}'",
            sk.pg_addr.port(),
            certs.verify_full()
        ),
    );
    wait_rows(&standby, 1000);
    let receiver = "SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'";
    let pid = standby.sql(receiver);
    assert!(!pid.is_empty(), "the standby is not streaming");

    let old = certs.der("server");
    assert_eq!(certs.served_certificate(sk.pg_addr), old);
    let renewed = certs.renew_server();
    assert_ne!(renewed, old);
    let child = sk.child.as_ref().expect("running");
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    wait_for(
        Duration::from_secs(30),
        "new connections to get the renewed certificate",
        || (certs.served_certificate(sk.pg_addr) == renewed).then_some(()),
    );
    assert!(sk.log_text().contains("TLS certificate and key reloaded"));

    // The stream opened before the reload carries the next commits.
    c.pg.sql("INSERT INTO t SELECT generate_series(1001, 2000)");
    wait_rows(&standby, 2000);
    assert_eq!(
        standby.sql(receiver),
        pid,
        "the standby's WAL receiver reconnected"
    );
    // A second SIGHUP with an unreadable key keeps the renewed one.
    std::fs::write(certs.path("server.key"), "garbage").unwrap();
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    wait_for(
        Duration::from_secs(30),
        "the failed reload to be logged",
        || sk.log_text().contains("TLS reload failed").then_some(()),
    );
    assert_eq!(certs.served_certificate(sk.pg_addr), renewed);
}

/// `GET path` over HTTPS, checked against the test CA: (status, body).
fn https_get(certs: &Certs, addr: SocketAddr, path: &str) -> (bool, String, String) {
    run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(certs.path("ca.crt"))
        .arg(format!("https://localhost:{}{path}", addr.port())))
}

/// The timelines' terms and histories on a node, from its HTTPS API.
fn terms(certs: &Certs, sk: &Safekeeper) -> Vec<(serde_json::Value, serde_json::Value)> {
    let (ok, out, err) = https_get(certs, sk.http_addr, "/v1/timelines");
    assert!(ok, "GET /v1/timelines: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v.as_array().cloned().unwrap_or_default();
    list.iter()
        .map(|t| (t["term"].clone(), t["term_history"].clone()))
        .collect()
}

/// Refusals: a client that will not do TLS where it is required, garbage
/// instead of a TLS handshake, servers whose certificates are expired or
/// from another CA. Each gets a clear error; the safekeeper keeps serving
/// the proxy and other clients, and its timelines' terms do not change.
#[test]
fn refusals_are_clear_and_the_daemon_keeps_serving_everyone_else() {
    let Some((c, certs)) = tls_cluster() else {
        return;
    };
    c.pg.sql("CREATE TABLE t (i int)");
    let sk = &c.sks[0];
    let before = terms(&certs, sk);
    assert_eq!(before.len(), 1, "{before:?}");

    // A client that refuses TLS.
    let (ok, _, err) = psql_replication(sk.pg_addr, "sslmode=disable", "IDENTIFY_SYSTEM");
    assert!(!ok && err.contains("accepts only TLS connections"), "{err}");

    // GSSENCRequest: 'N'. Then an SSLRequest: 'S', and garbage instead of
    // a ClientHello: the connection is closed.
    let mut s = TcpStream::connect(sk.pg_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let request = |code: u32| [8u32.to_be_bytes(), code.to_be_bytes()].concat();
    let mut answer = [0u8; 1];
    s.write_all(&request(80877104)).unwrap();
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&request(80877103)).unwrap();
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"S");
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let _ = s.write_all(&garbage);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    wait_for(
        Duration::from_secs(20),
        "the failed handshake in the log",
        || sk.log_text().contains("TLS handshake failed").then_some(()),
    );

    // Servers with an expired certificate and with one of another CA.
    let dir = c.dir.path();
    for (name, complaint) in [
        ("expired", "certificate expired"),
        ("other", "UnknownIssuer"),
    ] {
        let args = certs.server_args(name);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bad = Safekeeper::start_with(&dir.join(format!("sk-{name}")), 9, true, &args);
        let (ok, _, err) = psql_replication(bad.pg_addr, &certs.verify_full(), "IDENTIFY_SYSTEM");
        assert!(
            !ok && err.contains("certificate verify failed"),
            "psql, {name}: {err}"
        );
        // The proxy's client, as --sync-only runs it.
        let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
            .arg("--sync-only")
            .arg("--safekeepers")
            .arg(format!("9@{}", bad.pg_addr))
            .arg("--safekeeper-conninfo")
            .arg(certs.verify_full())
            .args(["--sync-timeout", "1"]));
        assert!(!ok, "--sync-only against the {name} certificate succeeded");
        assert!(
            err.contains("TLS") && err.contains(complaint),
            "proxy, {name}: {err}"
        );
    }

    // Everyone else is served: commits wait for and get a majority,
    // verify-full clients are answered, and no term moved.
    c.pg.sql("INSERT INTO t VALUES (1)");
    let (ok, out, err) = psql_replication(
        sk.pg_addr,
        &format!(
            "{} options='-c walkeeper.role=proposer'",
            certs.verify_full()
        ),
        "IDENTIFY_SYSTEM",
    );
    assert!(
        ok && out.starts_with(&c.pg.system_id().to_string()),
        "{out}{err}"
    );
    assert_eq!(terms(&certs, sk), before);
}

/// With --tls-cert the HTTP port speaks HTTPS only; --http-tls=false keeps
/// it in clear.
#[test]
fn the_http_port_speaks_https_with_the_same_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let args = certs.server_args("server");
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sk = Safekeeper::start_with(&dir.path().join("sk1"), 1, true, &args);
    let (ok, out, err) = https_get(&certs, sk.http_addr, "/v1/status");
    assert!(ok && out.contains("\"node_id\":1"), "{out}{err}");
    let (ok, _, _) = run(Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{}/v1/status", sk.http_addr)));
    assert!(!ok, "HTTP in clear was answered");
    // Another CA's client does not trust it.
    let (ok, _, err) = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(certs.path("other-ca.crt"))
        .arg(format!(
            "https://localhost:{}/v1/status",
            sk.http_addr.port()
        )));
    assert!(!ok && err.contains("certificate"), "{err}");
    drop(sk);

    args.push("--http-tls=false");
    let sk = Safekeeper::start_with(&dir.path().join("sk2"), 2, true, &args);
    let (status, body) = http(sk.http_addr, "GET", "/v1/status", "");
    assert_eq!(status, 200, "{body}");
}

/// --tls-client-ca: a TLS client must present a certificate of that CA, on
/// the PostgreSQL-protocol port (psql, the proxy's client) and on HTTPS.
#[test]
fn tls_client_ca_requires_client_certificates() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let mut args = certs.server_args("server");
    args.push("--tls-client-ca".into());
    args.push(certs.path("ca.crt").display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sk = Safekeeper::start_with(&dir.path().join("sk1"), 1, true, &args);
    let client_keys = format!(
        "{} sslcert={} sslkey={}",
        certs.verify_full(),
        certs.path("client.crt").display(),
        certs.path("client.key").display()
    );

    let (ok, _, err) = psql_replication(sk.pg_addr, &certs.verify_full(), "\\conninfo");
    assert!(!ok, "psql without a client certificate was served");
    assert!(err.contains("certificate"), "{err}");
    let (ok, out, err) = psql_replication(sk.pg_addr, &client_keys, "\\conninfo");
    assert!(ok && out.contains("SSL connection"), "{out}{err}");

    // The proxy's client: refused in the handshake without a certificate;
    // with one it gets as far as asking for the (missing) timeline.
    let sync_only = |keys: &str| {
        run(Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
            .arg("--sync-only")
            .arg("--safekeepers")
            .arg(format!("1@{}", sk.pg_addr))
            .arg("--safekeeper-conninfo")
            .arg(keys)
            .args(["--sync-timeout", "1"]))
    };
    // (TLS 1.3: the server's alert arrives after the client's side of the
    // handshake is done, on the first read.)
    let (ok, _, err) = sync_only(&certs.verify_full());
    assert!(!ok && err.contains("CertificateRequired"), "{err}");
    let (ok, _, err) = sync_only(&client_keys);
    assert!(
        !ok && !err.contains("Certificate") && err.contains("does not exist"),
        "{err}"
    );

    let (ok, _, _) = https_get(&certs, sk.http_addr, "/v1/status");
    assert!(!ok, "HTTPS without a client certificate was served");
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(certs.path("ca.crt"))
        .arg("--cert")
        .arg(certs.path("client.crt"))
        .arg("--key")
        .arg(certs.path("client.key"))
        .arg(format!(
            "https://localhost:{}/v1/status",
            sk.http_addr.port()
        )));
    assert!(ok && out.contains("\"node_id\":1"), "{out}{err}");
}

/// The proxy's client follows libpq's sslmode against a safekeeper that
/// requires TLS and one that offers none. `--sync-only` against nodes
/// without the timeline: "does not exist" means it got past the start-up.
#[test]
fn the_proxys_sslmode_behaves_as_libpqs() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let mut args = certs.server_args("server");
    args.push("--tls-required".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let tls_only = Safekeeper::start_with(&dir.path().join("sk1"), 1, true, &args);
    let clear_only = Safekeeper::start(&dir.path().join("sk2"), 2, true);
    let sync_only = |sk: &Safekeeper, keys: &str| {
        let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
            .arg("--sync-only")
            .arg("--safekeepers")
            .arg(format!("{}@{}", sk.node_id, sk.pg_addr))
            .arg("--safekeeper-conninfo")
            .arg(keys)
            .args(["--sync-timeout", "1"]));
        assert!(!ok, "--sync-only with no timeline succeeded");
        err
    };
    let reached = "does not exist on this safekeeper";
    for (sk, keys, want) in [
        (&tls_only, "sslmode=disable", "accepts only TLS connections"),
        // allow: in clear first, then over TLS once clear is refused.
        (&tls_only, "sslmode=allow", reached),
        (&tls_only, "sslmode=prefer", reached),
        (&clear_only, "sslmode=prefer", reached),
        (&clear_only, "sslmode=allow", reached),
        (
            &clear_only,
            "sslmode=require",
            "the server does not support SSL",
        ),
    ] {
        let err = sync_only(sk, keys);
        assert!(err.contains(want), "{keys} to node {}: {err}", sk.node_id);
    }
    // verify-full without a CA to verify with: refused before connecting.
    let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
        .arg("--sync-only")
        .arg("--safekeepers")
        .arg(format!("1@{}", tls_only.pg_addr))
        .arg("--safekeeper-conninfo")
        .arg("sslmode=verify-full sslrootcert=/nonexistent/ca.crt")
        .args(["--sync-timeout", "1"]));
    assert!(!ok && err.contains("/nonexistent/ca.crt"), "{err}");
}

/// Issue 20's whole picture ("All together" in the README): safekeepers
/// that take only TLS and only SCRAM users; the proxy pushes as the
/// proposer user over verify-full with a password file, and a standby
/// streams as the consumer user over verify-full with a password, and
/// replays.
#[test]
fn scram_over_verify_full_end_to_end() {
    use common::users::*;
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&pg::postgres_dir(dir.path(), "certs"));
    let users = users_file(dir.path());
    let mut args = certs.server_args("server");
    args.extend(["--tls-required".into(), "--users-file".into()]);
    args.push(users.to_str().unwrap().into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pg = Postgres::start_primary(dir.path(), SYNC_CONF);
    let sks: Vec<Safekeeper> = (1..=3)
        .map(|n| Safekeeper::start_with(&dir.path().join(format!("sk{n}")), n, true, &args))
        .collect();
    let escaped = PROXY_PW.replace('\\', "\\\\").replace(':', "\\:");
    let passfile = private_file(
        &dir.path().join("proxy.pgpass"),
        &format!("127.0.0.1:*:replication:proxy:{escaped}\n"),
    );
    let mut c = Cluster {
        proxy: None,
        sks,
        pg,
        dir,
    };
    let sk_conninfo = format!(
        "user=proxy passfile={} {}",
        passfile.display(),
        certs.verify_full()
    );
    c.start_proxy(
        "proxy1",
        &["--create-timeline", "--safekeeper-conninfo", &sk_conninfo],
    );
    c.wait_sync();
    c.pg.sql("CREATE TABLE t (i int); INSERT INTO t VALUES (1)");

    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ports: Vec<String> = c.sks.iter().map(|s| s.pg_addr.port().to_string()).collect();
    c.start_standby(
        &mut standby,
        0,
        &format!(
            "primary_conninfo = 'host=127.0.0.1,127.0.0.1,127.0.0.1 port={} user=standby \
             password={STANDBY_PW} connect_timeout=2 {}'",
            ports.join(","),
            certs.verify_full()
        ),
    );
    c.pg.sql("INSERT INTO t VALUES (2)");
    wait_rows(&standby, 2);
    // A consumer without its password is refused, TLS or not.
    let (ok, _, err) = psql_replication(
        c.sks[0].pg_addr,
        &format!("user=standby {}", certs.verify_full()),
        "IDENTIFY_SYSTEM",
    );
    assert!(!ok && err.contains("password"), "{err}");
}
