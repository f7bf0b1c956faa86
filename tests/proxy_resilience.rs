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
    let t = first_timeline(addr)?;
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

/// A TCP relay the test can cut: once cut it forwards nothing either way
/// and keeps every socket open, as a link that silently drops packets
/// does (no FIN, no RST reaches either end).
struct Relay {
    addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    fn to(target: SocketAddr) -> Relay {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = cut.clone();
        // The threads end with the test process; their sockets with them.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let c = c.clone();
                    std::thread::spawn(move || pipe(from, to, &c));
                }
            }
        });
        Relay { addr, cut }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, cut: &std::sync::atomic::AtomicBool) {
    let mut buf = [0u8; 65536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                if !cut.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = to.shutdown(std::net::Shutdown::Both);
                }
                return;
            }
            Ok(n) => n,
        };
        // Cut: the bytes are lost, the sockets stay.
        if !cut.load(std::sync::atomic::Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Issue 26: a standby streams from node 1; node 1's link to the proxy is
/// cut while commits go on through nodes 2 and 3. Node 1 learns it has lost
/// its proposer, ends the stream with 57P03 (README: within 4 s), and the
/// standby moves to another node and keeps replaying.
#[test]
fn a_standby_leaves_a_safekeeper_cut_off_from_the_proxy() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let primary = Postgres::start_primary(dir.path(), SYNC_CONF);
    let sks: Vec<Safekeeper> = (1..=3)
        .map(|n| Safekeeper::start(&dir.path().join(format!("sk{n}")), n, true))
        .collect();
    // The proxy reaches node 1 through the relay; consumers directly.
    let relay = Relay::to(sks[0].pg_addr);
    let list = format!("1@{},{}", relay.addr, member_list(&sks[1..]));
    let proxy = Proxy::start_listing(
        dir.path(),
        "proxy1",
        primary.port,
        &list,
        &["--create-timeline"],
    );
    let c = Cluster {
        proxy: Some(proxy),
        sks,
        pg: primary,
        dir,
    };
    c.wait_sync();
    c.pg.sql("CREATE TABLE ledger (id int PRIMARY KEY)");
    let mut standby = Postgres::basebackup(c.dir.path(), &c.pg, "standby");
    let ports: Vec<String> = c.sks.iter().map(|s| s.pg_addr.port().to_string()).collect();
    pg::append_conf(
        &standby.datadir,
        &format!(
            "primary_conninfo = 'host=127.0.0.1,127.0.0.1,127.0.0.1 port={} user=postgres'\nhot_standby = on\nsynchronous_standby_names = ''\nwal_retrieve_retry_interval = '1s'\n",
            ports.join(",")
        ),
    );
    standby.mark_standby();
    standby.start();
    let sender = |standby: &Postgres| -> Option<u16> {
        standby
            .sql("SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'")
            .parse()
            .ok()
    };
    let first = wait_for(Duration::from_secs(60), "the standby to stream", || {
        sender(&standby)
    });
    assert_eq!(first, c.sks[0].pg_addr.port(), "node 1 is listed first");
    let ledger = Ledger::start(c.pg.port);
    ledger.wait_more(20);

    relay.cut();
    let cut_at = Instant::now();
    // Commits go on without node 1.
    ledger.wait_more(20);
    let acked = ledger.acked();
    let last = *acked.last().unwrap();
    // 4 s for node 1 to end the stream, 1 s for the walreceiver's retry,
    // and room for a loaded machine.
    let moved = wait_for(
        Duration::from_secs(30),
        "the standby to stream from another node and replay commits made after the cut",
        || {
            let port = sender(&standby).filter(|p| *p != first)?;
            let n: i64 = standby
                .sql(&format!("SELECT count(*) FROM ledger WHERE id = {last}"))
                .parse()
                .ok()?;
            (n == 1).then_some(port)
        },
    );
    let took = cut_at.elapsed();
    assert_ne!(moved, first);
    assert!(
        c.sks[0].log_text().contains("consumer sent elsewhere"),
        "node 1 ended the stream itself"
    );
    eprintln!("the standby moved {} ms after the cut", took.as_millis());
    ledger.stop();
}
