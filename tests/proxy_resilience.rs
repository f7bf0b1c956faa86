//! The proxy over time: bounded memory while a safekeeper is down, and
//! fencing when two proxies compete for one timeline.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::pg::{self, Postgres};
use common::*;
use walkeeper::lsn::Lsn;

/// The proxy's timeline as the safekeeper's HTTP API shows it: (term, flush).
fn sk_term_and_flush(addr: SocketAddr) -> Option<(u64, Lsn)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /v1/timelines HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let body = raw.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let t = v.as_array()?.first()?;
    Some((t["term"].as_u64()?, t["flush_lsn"].as_str()?.parse().ok()?))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The proxy keeps a bounded buffer: a safekeeper down while 256 MiB of WAL
/// flows does not make it hold that WAL, and the safekeeper catches up from
/// a donor when it returns.
#[test]
fn proxy_memory_stays_bounded_while_a_safekeeper_is_down() {
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let pid = c.proxy.as_ref().unwrap().child.as_ref().unwrap().id();
    c.pg.sql("CREATE TABLE big (i int, pad text)");
    c.sks[2].kill9();
    let start = c.flush_lsn();
    let port = c.pg.port;
    let load = std::thread::spawn(move || {
        for _ in 0..4 {
            let (ok, _, err) = run(&mut pg::psql(
                port,
                "INSERT INTO big SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 70000) g",
            ));
            assert!(ok, "{err}");
        }
    });
    let mut max_rss = 0;
    while !load.is_finished() {
        max_rss = max_rss.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(50));
    }
    load.join().unwrap();
    let end = c.flush_lsn();
    let flowed = end.distance_from(start);
    assert!(
        flowed >= 256 << 20,
        "only {} MiB of WAL flowed",
        flowed >> 20
    );
    // 64 MiB of uncommitted WAL, 64 MiB of buffer, and the process itself.
    let bound_kib = 256 * 1024;
    assert!(
        max_rss < bound_kib,
        "proxy RSS peaked at {} MiB",
        max_rss / 1024
    );
    c.sks[2].restart();
    wait_for(
        Duration::from_secs(180),
        "the returning safekeeper to catch up",
        || sk_commit_lsn(&c.sks[2]).filter(|l| *l >= end),
    );
}

/// Two proxies with their own slots fight over one timeline: neither ever
/// reports to the primary a flush a majority has not made, and the loser
/// says it was fenced. A second proxy on the same slot gets 55006 from the
/// primary and never raises the term.
#[test]
fn competing_proxies_are_fenced() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let primary = Postgres::start_primary(dir.path(), "");
    let sks: Vec<Safekeeper> = (1..=3)
        .map(|n| Safekeeper::start(&dir.path().join(format!("sk{n}")), n, true))
        .collect();
    let refs: Vec<&Safekeeper> = sks.iter().collect();
    let p1 = Proxy::start(
        dir.path(),
        "p1",
        primary.port,
        &refs,
        &[
            "--create-timeline",
            "--slot",
            "p1",
            "--application-name",
            "p1",
        ],
    );
    wait_for(Duration::from_secs(30), "the first proxy to stream", || {
        sks.iter()
            .all(|s| sk_term_and_flush(s.http_addr).is_some())
            .then_some(())
    });
    let p2 = Proxy::start(
        dir.path(),
        "p2",
        primary.port,
        &refs,
        &["--slot", "p2", "--application-name", "p2"],
    );
    primary.sql("CREATE TABLE t (i int)");
    let port = primary.port;
    let stop = Instant::now() + Duration::from_secs(6);
    let load = std::thread::spawn(move || {
        while Instant::now() < stop {
            let _ = pg::psql(port, "INSERT INTO t SELECT generate_series(1, 1000)")
                .stdout(Stdio::null())
                .status();
        }
    });
    let mut samples = 0;
    while Instant::now() < stop {
        let reported: Vec<Lsn> = primary
            .sql("SELECT coalesce(flush_lsn, '0/0') FROM pg_stat_replication WHERE application_name IN ('p1', 'p2')")
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect();
        // Read the safekeepers after the reports: their flush only grows.
        let mut flushes: Vec<Lsn> = sks
            .iter()
            .filter_map(|s| sk_term_and_flush(s.http_addr).map(|(_, f)| f))
            .collect();
        flushes.sort();
        flushes.reverse();
        let majority_flushed = flushes.get(1).copied().unwrap_or(Lsn::INVALID);
        for r in reported {
            assert!(
                r <= majority_flushed,
                "a proxy reported flush {r} beyond the majority's {majority_flushed}"
            );
            samples += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    load.join().unwrap();
    assert!(samples >= 3, "too few samples: {samples}");
    let logs = p1.log_text() + &p2.log_text();
    assert!(
        logs.contains("another proposer won"),
        "no proxy said it was fenced:\n{logs}"
    );
    drop(p2);
    drop(p1);

    // Same slot: the second proxy is refused by the primary and asks for no
    // votes, so the term stays where the first proxy put it.
    let p3 = Proxy::start(
        dir.path(),
        "p3",
        primary.port,
        &refs,
        &["--slot", "p3", "--application-name", "p3"],
    );
    let term_of = || {
        sks.iter()
            .filter_map(|s| sk_term_and_flush(s.http_addr))
            .map(|(t, _)| t)
            .max()
            .unwrap()
    };
    let before = wait_for(
        Duration::from_secs(30),
        "the third proxy to be elected",
        || p3.log_text().contains("elected").then(term_of),
    );
    let p4 = Proxy::start(
        dir.path(),
        "p4",
        primary.port,
        &refs,
        &["--slot", "p3", "--application-name", "p4"],
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        term_of(),
        before,
        "a proxy on a busy slot raised the term; p3:\n{}\np4:\n{}",
        p3.log_text(),
        p4.log_text()
    );
    let log = p4.log_text();
    assert!(
        log.contains("55006") && log.contains("not asking for votes"),
        "{log}"
    );
}
