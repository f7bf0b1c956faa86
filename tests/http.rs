//! The safekeeper's HTTP API on a real daemon: status, timelines (with 404
//! and 400 errors as JSON), Prometheus metrics that follow pushed WAL, the
//! connection gauges, and a clear startup error when the port is taken.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;
use walkeeper::lsn::Lsn;

fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http(addr, "GET", path, "");
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    (status, v)
}

/// The value of a metric line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn status_timelines_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let (code, status) = get_json(sk.http_addr, "/v1/status");
    assert_eq!(code, 200);
    assert_eq!(status["node_id"], 1);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["timelines"], 0);
    assert_eq!(status["proposers"], 0);
    assert_eq!(status["consumers"], 0);
    assert!(status["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        get_json(sk.http_addr, "/v1/timelines").1,
        Value::Array(vec![])
    );

    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting(&[1], true), 3);
    let wal = wal_bytes(3, START, 10_000);
    p.send(&append(3, START, &wal, START + 4_000));
    p.recv();

    let (_, status) = get_json(sk.http_addr, "/v1/status");
    assert_eq!(status["timelines"], 1);
    assert_eq!(status["proposers"], 1);

    let (code, list) = get_json(sk.http_addr, "/v1/timelines");
    assert_eq!(code, 200);
    let t = &list[0];
    assert_eq!(t["tenant_id"], ttid().tenant_id.to_string());
    assert_eq!(t["timeline_id"], ttid().timeline_id.to_string());
    assert_eq!(t["flush_lsn"], Lsn(START + 10_000).to_string());
    assert_eq!(t["commit_lsn"], Lsn(START + 4_000).to_string());
    assert_eq!(t["term"], 3);
    assert_eq!(t["wal_seg_size"], SEG);
    // Where stored WAL starts, and how much of it this node holds.
    assert_eq!(t["local_start_lsn"], Lsn(START).to_string());
    assert_eq!(t["held_bytes"], 10_000);

    let path = format!("/v1/timelines/{}/{}", ttid().tenant_id, ttid().timeline_id);
    let (code, one) = get_json(sk.http_addr, &path);
    assert_eq!(code, 200);
    assert_eq!(one["flush_lsn"], t["flush_lsn"]);
    assert_eq!(one["held_bytes"], 10_000);
    assert_eq!(one["term_history"][0]["term"], 3);
    assert_eq!(one["members"][0]["node_id"], 1);

    let unknown = format!("/v1/timelines/{}/{}", "ab".repeat(16), "cd".repeat(16));
    let (code, e) = get_json(sk.http_addr, &unknown);
    assert_eq!(code, 404);
    assert!(
        e["error"].as_str().unwrap().contains("does not exist"),
        "{e}"
    );
    let (code, e) = get_json(sk.http_addr, "/v1/timelines/nothex/00");
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().contains("tenant id"), "{e}");
    let (code, e) = get_json(
        sk.http_addr,
        &format!("/v1/timelines/{}/xyz", "ab".repeat(16)),
    );
    assert_eq!(code, 400);
    assert!(e["error"].as_str().unwrap().contains("timeline id"), "{e}");
    let (code, _) = get_json(sk.http_addr, "/v1/nope");
    assert_eq!(code, 404);

    // Gauges follow the connections. A consumer is served only while the
    // proposer is there (a node without one refuses consumers).
    let mut c = RawClient::connect(sk.pg_addr, "");
    c.query_raw(&format!("START_REPLICATION PHYSICAL {}", Lsn(START)));
    wait_for(Duration::from_secs(10), "the consumer gauge", || {
        (get_json(sk.http_addr, "/v1/status").1["consumers"] == 1).then_some(())
    });
    drop(p);
    wait_for(
        Duration::from_secs(10),
        "the proposer gauge to drop",
        || (get_json(sk.http_addr, "/v1/status").1["proposers"] == 0).then_some(()),
    );
    drop(c);
    wait_for(
        Duration::from_secs(10),
        "the consumer gauge to drop",
        || (get_json(sk.http_addr, "/v1/status").1["consumers"] == 0).then_some(()),
    );

    // The HTTP server stops with the daemon.
    assert!(sk.terminate().success());
    assert!(TcpStream::connect(sk.http_addr).is_err());
}

#[test]
fn metrics_follow_pushed_appends() {
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting(&[1], true), 1);
    let labels = format!(
        "{{tenant_id=\"{}\",timeline_id=\"{}\"}}",
        ttid().tenant_id,
        ttid().timeline_id
    );
    let flush = format!("walkeeper_flush_lsn{labels}");
    let commit = format!("walkeeper_commit_lsn{labels}");
    let held = format!("walkeeper_held_bytes{labels}");
    let local_start = format!("walkeeper_local_start_lsn{labels}");

    let (code, text) = http(sk.http_addr, "GET", "/metrics", "");
    assert_eq!(code, 200);
    assert_eq!(metric(&text, &flush), Some(START as f64));
    assert_eq!(metric(&text, &held), Some(0.0));
    let appends_before = metric(&text, "walkeeper_append_seconds_count").unwrap();

    let mut pos = START;
    for i in 0..20 {
        let wal = wal_bytes(1, pos, 8192);
        p.send(&append(1, pos, &wal, pos));
        pos += 8192;
        if i % 5 == 4 {
            // Pipelined: several appends in flight before the replies.
            for _ in 0..5 {
                p.recv();
            }
        }
    }
    let committed = pos - 8192;

    let (_, text) = http(sk.http_addr, "GET", "/metrics", "");
    assert_eq!(metric(&text, &flush), Some(pos as f64), "{text}");
    assert_eq!(metric(&text, &commit), Some(committed as f64), "{text}");
    assert_eq!(metric(&text, &local_start), Some(START as f64), "{text}");
    assert_eq!(metric(&text, &held), Some((pos - START) as f64), "{text}");
    assert!(text.contains("# TYPE walkeeper_held_bytes gauge"));
    assert_eq!(
        metric(&text, "walkeeper_append_seconds_count").unwrap() - appends_before,
        20.0
    );
    assert!(metric(&text, "walkeeper_wal_written_bytes_total").unwrap() >= 20.0 * 8192.0);
    let batches = metric(&text, "walkeeper_sync_batches_total").unwrap();
    assert!(batches >= 1.0);
    assert_eq!(
        metric(&text, "walkeeper_fsync_seconds_count"),
        Some(batches)
    );
    assert_eq!(
        metric(&text, "walkeeper_batch_requests_count"),
        Some(batches)
    );
    assert_eq!(
        metric(&text, "walkeeper_batch_requests_bucket{le=\"+Inf\"}"),
        Some(batches)
    );
    assert!(metric(&text, "walkeeper_fsync_seconds_bucket{le=\"2.5\"}").is_some());
    assert_eq!(metric(&text, "walkeeper_connected_proposers"), Some(1.0));
    assert_eq!(metric(&text, "walkeeper_connected_consumers"), Some(0.0));
    assert_eq!(metric(&text, "walkeeper_timelines"), Some(1.0));
    assert!(text.contains("# TYPE walkeeper_append_seconds histogram"));
    // Every sample line is `name{labels} value` or `name value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }
}

#[test]
fn a_taken_http_port_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_safekeeper"))
        .arg("--datadir")
        .arg(dir.path().join("sk"))
        .args(["--init", "--node-id", "1", "--listen-pg"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--listen-http")
        .arg(http.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--listen-http") && stderr.contains(&http.to_string()),
        "{stderr}"
    );
}
