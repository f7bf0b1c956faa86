//! The safekeeper daemon as a real process on a real socket: START_WAL_PUSH,
//! durable replies, refusals, SIGKILL and SIGTERM.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use walkeeper::consensus::acceptor::term_lsn;
use walkeeper::consensus::messages::*;
use walkeeper::consensus::term_history::TermHistory;
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::Storage;

/// Greet (creating the timeline), win `term`, get elected at `at`.
fn elect(
    c: &mut RawClient,
    term: u64,
    at: u64,
    history: &[(u64, u64)],
    create: bool,
) -> VoteResponse {
    c.send(&ProposerMessage::Greeting(greeting(&[1, 2, 3], create)));
    match c.recv() {
        AcceptorMessage::Greeting(g) => assert_eq!(g.node_id.0, 1),
        other => panic!("expected AcceptorGreeting, got {other:?}"),
    }
    c.send(&ProposerMessage::VoteRequest(VoteRequest::new(term)));
    let vote = match c.recv() {
        AcceptorMessage::Vote(v) => v,
        other => panic!("expected VoteResponse, got {other:?}"),
    };
    assert!(vote.granted, "vote for term {term} refused: {vote:?}");
    c.send(&ProposerMessage::Elected(Elected {
        term,
        start_streaming_at: Lsn(at),
        term_history: TermHistory(history.iter().map(|&(t, l)| term_lsn(t, l)).collect()),
        pg_tli: 0,
        pg_ancestors: Vec::new(),
    }));
    match c.recv() {
        AcceptorMessage::Append(r) => assert_eq!(r.flush_lsn, Lsn(at)),
        other => panic!("expected AppendResponse, got {other:?}"),
    }
    vote
}

/// Node 1 on a fresh store in `datadir`, and a proposer it elected in term 1
/// at START (creating the timeline); the vote it got.
fn elected_node(datadir: &Path) -> (Safekeeper, RawClient, VoteResponse) {
    let sk = Safekeeper::start(datadir, 1, true);
    let mut c = RawClient::proposer(sk.pg_addr);
    let vote = elect(&mut c, 1, START, &[(1, START)], true);
    (sk, c, vote)
}

/// Appends of `lens` bytes from START in term 1, sent without waiting for
/// any reply; the end LSN and the WAL sent.
fn send_pipelined(c: &mut RawClient, lens: impl IntoIterator<Item = usize>) -> (u64, Vec<u8>) {
    let mut pos = START;
    let mut written = Vec::new();
    for len in lens {
        let wal = wal_bytes(1, pos, len);
        c.send(&append(1, pos, &wal, START));
        pos += wal.len() as u64;
        written.extend_from_slice(&wal);
    }
    (pos, written)
}

fn append_response(c: &mut RawClient) -> AppendResponse {
    match c.recv() {
        AcceptorMessage::Append(r) => r,
        other => panic!("expected AppendResponse, got {other:?}"),
    }
}

#[test]
fn greeting_vote_elected_pipelined_appends_and_heartbeats() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, mut c, vote) = elected_node(&dir.path().join("sk1"));
    assert_eq!(vote.flush_lsn, Lsn(START));
    assert_eq!(vote.term_history, TermHistory::empty());

    // Ten appends sent without waiting; the answers come in order.
    let (pos, _) = send_pipelined(&mut c, (0..10).map(|i| 8192 + i));
    let mut expected = START;
    for i in 0..10 {
        let r = append_response(&mut c);
        expected += 8192 + i as u64;
        assert_eq!(r.term, 1);
        assert_eq!(r.flush_lsn, Lsn(expected));
    }
    // A heartbeat carries the commit LSN; the node caps it at its flush.
    // Only the commit moved, so it is written lazily (no sync of its own)
    // and the reply still claims the last synced commit; the next heartbeat
    // finds it unsynced, syncs it, and says so.
    c.send(&append(1, pos, &[], pos + 100));
    let r = append_response(&mut c);
    assert_eq!((r.flush_lsn, r.commit_lsn), (Lsn(pos), Lsn(START)));
    c.send(&append(1, pos, &[], pos + 100));
    let r = append_response(&mut c);
    assert_eq!((r.flush_lsn, r.commit_lsn), (Lsn(pos), Lsn(pos)));

    // IDENTIFY_SYSTEM shows the timeline's system id and the commit LSN.
    let mut q = RawClient::connect(sk.pg_addr, "");
    let rows = q.query("IDENTIFY_SYSTEM");
    let data = rows.iter().find(|m| m.tag == b'D').expect("a data row");
    let text = String::from_utf8_lossy(&data.body);
    assert!(text.contains("7000000000000000001"), "{text}");
    assert!(text.contains(&Lsn(pos).to_string()), "{text}");
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("sk1");
    let (mut sk, mut c, _) = elected_node(&datadir);
    let mut acked = START;
    let (_, written) = send_pipelined(&mut c, [16 * 1024; 40]);
    // Kill right after the 25th answer: 15 appends may be in flight.
    for _ in 0..25 {
        acked = append_response(&mut c).flush_lsn.0;
    }
    sk.kill9();
    let store = RocksStore::open(&datadir).expect("reopening the store after SIGKILL");
    let state = store
        .timelines()
        .unwrap()
        .pop()
        .expect("the timeline survived");
    assert!(
        state.flush_lsn.0 >= acked,
        "flush {} below acknowledged {}",
        state.flush_lsn,
        Lsn(acked)
    );
    let back = store.read_wal(ttid(), Lsn(START), Lsn(acked)).unwrap();
    assert_eq!(back, written[..(acked - START) as usize]);
    drop(store);
    // The daemon comes back with the same state and keeps the term.
    sk.restart();
    let mut c = RawClient::proposer(sk.pg_addr);
    c.send(&ProposerMessage::Greeting(greeting(&[1, 2, 3], false)));
    assert!(matches!(c.recv(), AcceptorMessage::Greeting(g) if g.term == 1));
    c.send(&ProposerMessage::VoteRequest(VoteRequest::new(2)));
    match c.recv() {
        AcceptorMessage::Vote(v) => {
            assert!(v.granted);
            assert!(v.flush_lsn.0 >= acked);
            assert_eq!(v.term_history, TermHistory(vec![term_lsn(1, START)]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_message_gets_an_error_and_the_store_is_unharmed() {
    let dir = tempfile::tempdir().unwrap();
    let (sk, mut good, _) = elected_node(&dir.path().join("sk1"));
    let wal = wal_bytes(1, START, 1000);
    good.send(&append(1, START, &wal, START));
    assert_eq!(append_response(&mut good).flush_lsn, Lsn(START + 1000));

    for garbage in [&b"\xff\x00junk"[..], b"", b"a\x01\x02"] {
        let mut bad = RawClient::proposer(sk.pg_addr);
        bad.send_copy_data(garbage);
        let m = bad
            .read()
            .expect("an ErrorResponse, not a dropped connection");
        assert_eq!(m.tag, b'E', "{m:?}");
        assert_eq!(m.error_field(b'C').as_deref(), Some("08P01"));
        assert!(m.error_field(b'M').unwrap().contains("malformed"));
        assert!(
            bad.read().is_none(),
            "the connection closes after the error"
        );
    }
    // A gap in LSNs is refused with the timeline and LSNs named.
    let mut gap = RawClient::proposer(sk.pg_addr);
    gap.send(&ProposerMessage::Greeting(greeting(&[1, 2, 3], false)));
    gap.recv();
    gap.send(&append(1, START + 5000, b"x", START));
    let m = gap.read().unwrap();
    assert_eq!(m.tag, b'E');
    let msg = m.error_field(b'M').unwrap();
    assert!(
        msg.contains(&ttid().to_string()) && msg.contains(&Lsn(START + 5000).to_string()),
        "{msg}"
    );

    // The first connection keeps working and nothing was lost.
    let wal2 = wal_bytes(1, START + 1000, 500);
    good.send(&append(1, START + 1000, &wal2, START));
    assert_eq!(append_response(&mut good).flush_lsn, Lsn(START + 1500));
}

#[test]
fn psql_identify_system_gets_a_result_or_a_clean_error() {
    let dir = tempfile::tempdir().unwrap();
    let sk = Safekeeper::start(&dir.path().join("sk1"), 1, true);
    let psql = |cmd: &str| {
        run(Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres replication=true",
                sk.pg_addr.port()
            ))
            .arg("-XAtc")
            .arg(cmd))
    };
    // No timeline yet: an error, said cleanly.
    let (ok, _, err) = psql("IDENTIFY_SYSTEM");
    assert!(!ok);
    assert!(err.contains("holds no timeline"), "{err}");
    assert!(!err.contains("closed the connection"), "{err}");
    // Unknown commands: an error with the connection intact.
    let (ok, _, err) = psql("SELECT 1");
    assert!(!ok && err.contains("not supported"), "{err}");

    let mut c = RawClient::proposer(sk.pg_addr);
    elect(&mut c, 1, START, &[(1, START)], true);
    let (ok, out, err) = psql("IDENTIFY_SYSTEM");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("7000000000000000001|1|{}|", Lsn(START)));
}

#[test]
fn sigterm_during_a_stream_exits_0_and_keeps_every_acknowledged_byte() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("sk1");
    let (mut sk, mut c, _) = elected_node(&datadir);
    let (_, written) = send_pipelined(&mut c, [8192; 200]);
    for _ in 0..5 {
        append_response(&mut c);
    }
    let status = sk.terminate();
    assert!(status.success(), "exit status {status}");
    // Every reply that reached us before the close is durable.
    let mut acked = START;
    while let Some(m) = c.read() {
        if m.tag == b'd' {
            if let Ok(AcceptorMessage::Append(r)) =
                walkeeper::codec::decode_acceptor_message(&m.body)
            {
                acked = acked.max(r.flush_lsn.0);
            }
        }
    }
    let store = RocksStore::open(&datadir).unwrap();
    let state = store.timelines().unwrap().pop().unwrap();
    assert!(state.flush_lsn.0 >= acked);
    assert_eq!(
        store.read_wal(ttid(), Lsn(START), Lsn(acked)).unwrap(),
        written[..(acked - START) as usize]
    );
    assert!(sk.log_text().contains("stopped cleanly"));
}
