//! One test per acceptor rule (ARCHITECTURE.md, "3. The consensus protocol
//! as implemented"). Each test drives the real
//! `Acceptor` over `MemStorage` the way the daemon does: writes are staged,
//! the reply is released only after a sync, and a crash loses what was not
//! synced.

use bytes::Bytes;
use walkeeper::codec::{encode_stored, PROTOCOL_VERSION};
use walkeeper::consensus::acceptor::{
    decode_timeline_state, term_lsn, trim_point, Acceptor, Event, Ready, Refusal, Write,
};
use walkeeper::consensus::limits::{
    MAX_MEMBERS, MAX_MEMBER_ADDRESS_LEN, MAX_TERM_HISTORY, MAX_TERM_JUMP,
};
use walkeeper::consensus::membership::{Configuration, Generation, Membership};
use walkeeper::consensus::messages::*;
use walkeeper::consensus::term_history::TermHistory;
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::store::memory::MemStorage;
use walkeeper::store::Storage;

const SEG: u32 = 1 << 20;
const START: u64 = 4 * SEG as u64;

fn ttid() -> Ttid {
    Ttid::new(TenantId([0xaa; 16]), TimelineId([0xbb; 16]))
}

fn members() -> Members {
    (1..=3)
        .map(|i| (NodeId(i), format!("127.0.0.1:{}", 5000 + i)))
        .collect()
}

fn greeting(create: bool) -> Greeting {
    Greeting {
        conf: None,
        protocol_version: PROTOCOL_VERSION,
        ttid: ttid(),
        server: ServerInfo {
            system_id: 42,
            pg_version: 150018,
            wal_seg_size: SEG,
            tli: 1,
        },
        timeline_start_lsn: Lsn(START),
        members: members(),
        proposer_id: [1; 16],
        create,
        pg_ancestors: Vec::new(),
    }
}

/// A message handled and staged, not synced: its writes, the reply the
/// acceptor holds for them, and whether they need no sync of their own.
struct Unsynced {
    writes: Vec<Write>,
    reply: Option<AcceptorMessage>,
    lazy: bool,
}

/// An acceptor on node 1 with its storage, driven like the daemon drives it.
struct Node {
    acceptor: Acceptor,
    storage: MemStorage,
}

impl Node {
    fn new() -> Node {
        let mut storage = MemStorage::new();
        let (acceptor, effects) = Acceptor::create(NodeId(1), &greeting(true)).unwrap();
        storage.write(ttid(), &effects.writes).unwrap();
        storage.sync().unwrap();
        Node { acceptor, storage }
    }

    /// Handle, stage the writes, sync, release the reply.
    fn send(&mut self, msg: ProposerMessage) -> Result<Option<AcceptorMessage>, Refusal> {
        let ready = self.acceptor.handle(&msg)?;
        self.storage.write(ttid(), &ready.writes).unwrap();
        self.storage.sync().unwrap();
        Ok(self.released(&ready))
    }

    /// Tell the acceptor `ready` is durable; the reply that releases for it.
    fn released(&mut self, ready: &Ready) -> Option<AcceptorMessage> {
        let mut replies = self.acceptor.on_persisted(ready.seq);
        replies.retain(|r| r.seq == ready.seq);
        replies.pop().map(|r| r.msg)
    }

    /// Handle and stage, but do not sync (the reply is withheld).
    fn send_unsynced(&mut self, msg: ProposerMessage) -> Unsynced {
        let ready = self.acceptor.handle(&msg).unwrap();
        self.storage.write(ttid(), &ready.writes).unwrap();
        Unsynced {
            reply: self.acceptor.held_reply(ready.seq).cloned(),
            lazy: !ready.sync && !ready.writes.is_empty(),
            writes: ready.writes,
        }
    }

    fn crash_and_restart(&mut self) {
        self.storage.crash();
        let state = self.storage.timelines().unwrap().pop().unwrap();
        self.acceptor = Acceptor::restore(NodeId(1), state);
    }

    fn vote(&mut self, term: u64) -> VoteResponse {
        match self.send(ProposerMessage::VoteRequest(VoteRequest::new(term))) {
            Ok(Some(AcceptorMessage::Vote(v))) => v,
            other => panic!("expected a vote response, got {other:?}"),
        }
    }

    fn elect(
        &mut self,
        term: u64,
        at: u64,
        history: &[(u64, u64)],
    ) -> Result<AppendResponse, Refusal> {
        let m = Elected {
            term,
            start_streaming_at: Lsn(at),
            term_history: TermHistory(history.iter().map(|&(t, l)| term_lsn(t, l)).collect()),
            pg_tli: 0,
            pg_ancestors: Vec::new(),
        };
        match self.send(ProposerMessage::Elected(m))? {
            Some(AcceptorMessage::Append(r)) => Ok(r),
            other => panic!("expected an append response, got {other:?}"),
        }
    }

    fn append(
        &mut self,
        term: u64,
        begin: u64,
        wal: &[u8],
        commit: u64,
    ) -> Result<AppendResponse, Refusal> {
        match self.send(append_msg(term, begin, wal, commit))? {
            Some(AcceptorMessage::Append(r)) => Ok(r),
            other => panic!("expected an append response, got {other:?}"),
        }
    }

    fn wal(&self, from: u64, to: u64) -> Vec<u8> {
        self.storage.read_wal(ttid(), Lsn(from), Lsn(to)).unwrap()
    }
}

fn append_msg(term: u64, begin: u64, wal: &[u8], commit: u64) -> ProposerMessage {
    ProposerMessage::Append(AppendRequest {
        term,
        begin_lsn: Lsn(begin),
        end_lsn: Lsn(begin + wal.len() as u64),
        commit_lsn: Lsn(commit),
        peer_horizon_lsn: Lsn::INVALID,
        slot_horizon_lsn: Lsn::INVALID,
        wal: Bytes::copy_from_slice(wal),
    })
}

#[test]
fn creating_a_timeline_is_durable_before_the_greeting_reply() {
    let (mut acceptor, effects) = Acceptor::create(NodeId(1), &greeting(true)).unwrap();
    assert!(matches!(effects.writes.as_slice(), [Write::PutState(_)]));
    assert!(effects.sync && effects.holds_reply);
    assert_eq!(effects.events, vec![Event::TimelineCreated]);
    assert!(acceptor.on_persisted(effects.seq - 1).is_empty());
    assert_eq!(
        acceptor.on_persisted(effects.seq).pop().map(|r| r.msg),
        Some(AcceptorMessage::Greeting(AcceptorGreeting {
            protocol_version: PROTOCOL_VERSION,
            node_id: NodeId(1),
            term: 0,
            conf: Configuration::initial(members()),
        }))
    );
    let s = acceptor.state();
    assert_eq!(
        (s.flush_lsn, s.commit_lsn, s.local_start_lsn),
        (Lsn(START), Lsn(START), Lsn(START))
    );
}

#[test]
fn unknown_timeline_without_create_is_refused() {
    assert_eq!(
        Acceptor::create(NodeId(1), &greeting(false)).unwrap_err(),
        Refusal::UnknownTimeline(ttid())
    );
}

#[test]
fn a_node_outside_the_member_set_refuses_to_create() {
    assert!(matches!(
        Acceptor::create(NodeId(9), &greeting(true)),
        Err(Refusal::NotAMember { .. })
    ));
}

#[test]
fn a_timeline_must_start_at_a_segment_boundary() {
    let mut g = greeting(true);
    g.timeline_start_lsn = Lsn(START + 8192);
    assert!(matches!(
        Acceptor::create(NodeId(1), &g),
        Err(Refusal::StartNotSegmentAligned { .. })
    ));
}

/// Another member list is no longer refused (it asks for a membership
/// change, which only a leader elected by the stored configuration makes):
/// the reply tells the proposer the stored configuration.
#[test]
fn greeting_with_another_member_set_is_told_the_stored_one_other_system_id_refused() {
    let mut node = Node::new();
    let mut g = greeting(false);
    g.members.insert(NodeId(4), "x:1".into());
    match node.send(ProposerMessage::Greeting(g)) {
        Ok(Some(AcceptorMessage::Greeting(r))) => {
            assert_eq!(r.conf, Configuration::initial(members()));
        }
        other => panic!("expected a greeting reply, got {other:?}"),
    }
    let mut g = greeting(true);
    g.server.system_id = 43;
    assert!(matches!(
        node.send(ProposerMessage::Greeting(g)),
        Err(Refusal::Mismatch {
            field: "system_id",
            ..
        })
    ));
    let mut g = greeting(true);
    g.server.wal_seg_size = 2 * SEG;
    match node.send(ProposerMessage::Greeting(g)) {
        Err(Refusal::Mismatch { field: f, .. }) => assert_eq!(f, "wal_seg_size"),
        other => panic!("wal_seg_size: {other:?}"),
    }
    // Another PostgreSQL timeline that does not descend from the stored one.
    let mut g = greeting(true);
    g.server.tli = 2;
    assert!(matches!(
        node.send(ProposerMessage::Greeting(g)),
        Err(Refusal::PgTimeline { .. })
    ));
    // A matching greeting is answered: addresses may differ, and so may
    // timeline_start_lsn (a later proxy's slot has moved on).
    let mut g = greeting(false);
    g.timeline_start_lsn = Lsn(START + SEG as u64);
    assert!(matches!(
        node.send(ProposerMessage::Greeting(g)),
        Ok(Some(AcceptorMessage::Greeting(_)))
    ));
    let mut g = greeting(false);
    g.members.insert(NodeId(2), "elsewhere:1".into());
    assert!(matches!(
        node.send(ProposerMessage::Greeting(g)),
        Ok(Some(AcceptorMessage::Greeting(_)))
    ));
}

#[test]
fn one_vote_per_term_persisted_before_the_reply() {
    let mut node = Node::new();
    let effects = node.send_unsynced(ProposerMessage::VoteRequest(VoteRequest::new(3)));
    match &effects.reply {
        Some(AcceptorMessage::Vote(v)) => assert!(v.granted && v.term == 3),
        other => panic!("{other:?}"),
    }
    // The term is among the writes that must be synced before that reply.
    assert!(effects
        .writes
        .iter()
        .any(|w| matches!(w, Write::PutState(s) if s.term == 3)));
    // Crash before the sync: the reply was never released, and the vote is
    // forgotten together with it.
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().term, 0);
    // The vote is given once it is durable, and only once per term.
    assert!(node.vote(3).granted);
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().term, 3);
    let again = node.vote(3);
    assert!(!again.granted);
    assert_eq!(again.term, 3);
}

#[test]
fn lower_terms_are_rejected() {
    let mut node = Node::new();
    assert!(node.vote(5).granted);
    let v = node.vote(4);
    assert!(!v.granted);
    assert_eq!(v.term, 5);
    assert!(matches!(
        node.elect(4, START, &[(4, START)]),
        Err(Refusal::ElectedWrongTerm {
            own: 5,
            proposed: 4,
            ..
        })
    ));
    node.elect(5, START, &[(5, START)]).unwrap();
    // A stale proposer's append is answered with the current term (so it
    // steps down) and stores nothing.
    let r = node.append(4, START, b"stale", START).unwrap();
    assert_eq!(r.term, 5);
    assert_eq!(r.flush_lsn, Lsn(START));
    assert_eq!(node.acceptor.state().flush_lsn, Lsn(START));
}

#[test]
fn append_before_elected_is_rejected() {
    let mut node = Node::new();
    assert!(node.vote(1).granted);
    assert!(matches!(
        node.append(1, START, b"abc", START),
        Err(Refusal::AppendBeforeElected { .. })
    ));
    // Once Elected for term 1 is processed the same append goes through.
    node.elect(1, START, &[(1, START)]).unwrap();
    assert_eq!(
        node.append(1, START, b"abc", START).unwrap().flush_lsn,
        Lsn(START + 3)
    );
    // Term 2 voted but not elected: appends in term 2 are refused, even
    // though term 1's Elected was processed.
    assert!(node.vote(2).granted);
    assert!(matches!(
        node.append(2, START + 3, b"d", START),
        Err(Refusal::AppendBeforeElected { .. })
    ));
}

#[test]
fn append_must_continue_where_the_last_one_ended() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    node.append(1, START, b"0123", START).unwrap();
    for begin in [START + 3, START + 5, START] {
        assert!(matches!(
            node.append(1, begin, b"x", START),
            Err(Refusal::AppendNotContiguous { .. })
        ));
    }
    // Pipelined: the second append is staged before the first is synced.
    let e1 = node.send_unsynced(append_msg(1, START + 4, b"45", START));
    let e2 = node.send_unsynced(append_msg(1, START + 6, b"67", START));
    node.storage.sync().unwrap();
    assert!(
        matches!(e1.reply, Some(AcceptorMessage::Append(AppendResponse { flush_lsn, .. })) if flush_lsn == Lsn(START + 6))
    );
    assert!(
        matches!(e2.reply, Some(AcceptorMessage::Append(AppendResponse { flush_lsn, .. })) if flush_lsn == Lsn(START + 8))
    );
    assert_eq!(node.wal(START, START + 8), b"01234567");
}

#[test]
fn commit_lsn_is_bounded_by_flush_and_never_decreases() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    // The proposer's commit is beyond what this node holds: capped at flush.
    let r = node.append(1, START, b"abcd", START + 100).unwrap();
    assert_eq!(r.commit_lsn, Lsn(START + 4));
    // A lower commit in a later message does not move it back.
    let r = node.append(1, START + 4, b"ef", START + 1).unwrap();
    assert_eq!(r.commit_lsn, Lsn(START + 4));
    // A heartbeat moves it forward (a lazy write: its reply still claims
    // the commit of the last synced write, see the next test).
    let r = node.append(1, START + 6, b"", START + 6).unwrap();
    assert_eq!(r.commit_lsn, Lsn(START + 4));
    assert_eq!(node.acceptor.state().commit_lsn, Lsn(START + 6));
    // The next heartbeat, with nothing new, syncs it and says so.
    let r = node.append(1, START + 6, b"", START + 6).unwrap();
    assert_eq!(r.commit_lsn, Lsn(START + 6));
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().commit_lsn, Lsn(START + 6));
}

/// A heartbeat that only moves commit_lsn (or the horizons) needs no sync of
/// its own: its effects are lazy, and its reply claims nothing the write
/// holds. A crash before the next sync loses only that commit_lsn, which a
/// later heartbeat brings back; WAL and terms always go through a synced
/// write.
#[test]
fn a_commit_only_heartbeat_is_a_lazy_write_that_claims_nothing_unsynced() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    let r = node.append(1, START, b"abcd", START).unwrap();
    assert_eq!((r.flush_lsn, r.commit_lsn), (Lsn(START + 4), Lsn(START)));
    // Commit advance: lazy; the reply claims the synced commit only.
    let e = node.send_unsynced(append_msg(1, START + 4, b"", START + 4));
    assert!(e.lazy);
    assert!(matches!(e.writes.as_slice(), [Write::PutState(s)] if s.commit_lsn == Lsn(START + 4)));
    assert!(
        matches!(e.reply, Some(AcceptorMessage::Append(AppendResponse { flush_lsn, commit_lsn, .. }))
        if flush_lsn == Lsn(START + 4) && commit_lsn == Lsn(START))
    );
    // Lost in a crash before any sync: the durable commit stays behind.
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().commit_lsn, Lsn(START));
    // Again, and this time the next append's synced write carries it.
    let e = node.send_unsynced(append_msg(1, START + 4, b"", START + 4));
    assert!(e.lazy);
    let e = node.send_unsynced(append_msg(1, START + 4, b"ef", START + 4));
    assert!(!e.lazy);
    assert!(
        matches!(e.reply, Some(AcceptorMessage::Append(AppendResponse { flush_lsn, commit_lsn, .. }))
        if flush_lsn == Lsn(START + 6) && commit_lsn == Lsn(START + 4))
    );
    node.storage.sync().unwrap();
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().commit_lsn, Lsn(START + 4));
    // A heartbeat with nothing new and nothing pending writes nothing.
    let e = node.send_unsynced(append_msg(1, START + 6, b"", START + 4));
    assert!(e.writes.is_empty() && !e.lazy);
    // Horizons alone are lazy too.
    let mut m = append_msg(1, START + 6, b"", START + 4);
    if let ProposerMessage::Append(a) = &mut m {
        a.peer_horizon_lsn = Lsn(START + 2);
    }
    assert!(node.send_unsynced(m).lazy);
}

#[test]
fn vote_response_history_ends_at_flush() {
    let mut node = Node::new();
    node.vote(1);
    // The proposer's history names term 1 from START and a future entry the
    // node holds nothing of yet.
    node.vote(2);
    node.elect(2, START, &[(1, START), (2, START + 50)])
        .unwrap();
    node.append(2, START, &[7; 20], START).unwrap();
    let v = node.vote(3);
    assert_eq!(v.flush_lsn, Lsn(START + 20));
    assert_eq!(v.term_history, TermHistory(vec![term_lsn(1, START)]));
    assert_eq!(node.acceptor.state().last_log_term(), 1);
}

#[test]
fn elected_truncates_to_the_highest_common_point() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    node.append(1, START, b"aaaaaaaaaa", START + 4).unwrap();
    // Term 2's proposer got term 1's WAL only up to START+6 and wrote its
    // own from there: this node must cut its term-1 tail at START+6.
    node.vote(2);
    let history = [(1, START), (2, START + 6)];
    let r = node.elect(2, START + 6, &history).unwrap();
    assert_eq!(r.flush_lsn, Lsn(START + 6));
    assert_eq!(node.wal(START, START + 6), b"aaaaaa");
    assert!(node
        .storage
        .read_wal(ttid(), Lsn(START), Lsn(START + 7))
        .is_err());
    node.append(2, START + 6, b"BB", START + 6).unwrap();
    assert_eq!(node.wal(START, START + 8), b"aaaaaaBB");
    node.crash_and_restart();
    assert_eq!(
        node.acceptor.state().term_history.entries(),
        &[term_lsn(1, START), term_lsn(2, START + 6)]
    );
}

#[test]
fn elected_refuses_a_point_that_differs_from_its_own() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    node.append(1, START, b"aaaaaaaaaa", START).unwrap();
    node.vote(2);
    // The common point is START+6; a proposer that says START+8 is wrong.
    assert!(matches!(
        node.elect(2, START + 8, &[(1, START), (2, START + 6)]),
        Err(Refusal::DivergenceMismatch { computed: Some(l), .. }) if l == Lsn(START + 6)
    ));
    assert_eq!(node.acceptor.state().flush_lsn, Lsn(START + 10));
}

#[test]
fn elected_refuses_to_truncate_below_commit() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    node.append(1, START, b"aaaaaaaaaa", START + 8).unwrap();
    assert_eq!(node.acceptor.state().commit_lsn, Lsn(START + 8));
    node.vote(2);
    // A history that shares term 1 only up to START+6 would cut committed WAL.
    assert!(matches!(
        node.elect(2, START + 6, &[(1, START), (2, START + 6)]),
        Err(Refusal::TruncateBelowCommit { .. })
    ));
    // No common term at all: everything would go, committed WAL included.
    assert!(matches!(
        node.elect(2, START, &[(2, START)]),
        Err(Refusal::TruncateBelowCommit { .. })
    ));
    assert_eq!(node.wal(START, START + 10), b"aaaaaaaaaa");
}

#[test]
fn elected_with_a_malformed_history_is_refused() {
    let mut node = Node::new();
    node.vote(2);
    for h in [
        vec![],
        vec![(1, START)],
        vec![(2, START + 5), (1, START + 9)],
    ] {
        assert!(
            matches!(node.elect(2, START, &h), Err(Refusal::BadHistory { .. })),
            "{h:?}"
        );
    }
}

#[test]
fn trims_remove_whole_segments_below_the_horizon_and_never_past_commit() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    let seg = SEG as u64;
    let mut pos = START;
    while pos < START + 3 * seg {
        let chunk = vec![(pos / seg) as u8; 64 * 1024];
        node.append(1, pos, &chunk, START + seg + 10).unwrap();
        pos += chunk.len() as u64;
    }
    // Horizon far ahead, but commit is just past the second segment's start:
    // retention trims to that segment's start.
    let below = trim_point(node.acceptor.state(), Lsn(START + 3 * seg));
    assert_eq!(below, Lsn(START + seg));
    let writes = node.acceptor.trim(below).unwrap().writes;
    node.storage.write(ttid(), &writes).unwrap();
    node.storage.sync().unwrap();
    assert_eq!(node.acceptor.state().local_start_lsn, Lsn(START + seg));
    assert!(node
        .storage
        .read_wal(ttid(), Lsn(START), Lsn(START + 1))
        .is_err());
    assert_eq!(
        node.wal(START + seg, START + seg + 1),
        vec![(START / seg + 1) as u8]
    );
    let again = trim_point(node.acceptor.state(), Lsn(START + seg + 5));
    assert!(node.acceptor.trim(again).is_none());
    // The acceptor itself trims exactly, and never past commit_lsn.
    let writes = node.acceptor.trim(Lsn(START + 3 * seg)).unwrap().writes;
    node.storage.write(ttid(), &writes).unwrap();
    node.storage.sync().unwrap();
    assert_eq!(node.acceptor.state().local_start_lsn, Lsn(START + seg + 10));
    assert_eq!(
        node.wal(START + seg + 10, START + seg + 11),
        vec![(START / seg + 1) as u8]
    );
}

/// An append carrying horizons (`append_msg` sends none).
fn with_horizons(m: ProposerMessage, peer: Lsn, slot: Lsn) -> ProposerMessage {
    match m {
        ProposerMessage::Append(mut a) => {
            a.peer_horizon_lsn = peer;
            a.slot_horizon_lsn = slot;
            ProposerMessage::Append(a)
        }
        other => other,
    }
}

/// Horizons are taken only from an append whose peer horizon is valid (the
/// proposer heard every member in this term, so the slot horizon beside it
/// covers every member's slots). A new term's first appends know nobody's
/// slots: the stored horizons stay, and so does the WAL a slot on another,
/// possibly down, safekeeper needs.
#[test]
fn an_unknown_slot_horizon_keeps_the_stored_one() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    let seg = SEG as u64;
    let wal = vec![7u8; 2 * seg as usize];
    let mut pos = START;
    for piece in wal.chunks(64 << 10) {
        node.append(1, pos, piece, pos).unwrap();
        pos += piece.len() as u64;
    }
    let end = pos;
    let slot = Lsn(START + 10);
    node.send(with_horizons(append_msg(1, end, b"", end), Lsn(end), slot))
        .unwrap();
    let s = node.acceptor.state();
    assert_eq!((s.peer_horizon_lsn, s.slot_horizon_lsn), (Lsn(end), slot));
    assert_eq!(s.members_horizon(), slot);

    // A new term: its first appends carry unknown horizons.
    node.vote(2);
    node.elect(2, end, &[(1, START), (2, end)]).unwrap();
    node.append(2, end, b"new term", end + 8).unwrap();
    // A slot horizon without a peer horizon is a partial report: ignored.
    node.send(with_horizons(
        append_msg(2, end + 8, b"", end + 8),
        Lsn::INVALID,
        Lsn(end),
    ))
    .unwrap();
    let s = node.acceptor.state();
    assert_eq!((s.peer_horizon_lsn, s.slot_horizon_lsn), (Lsn(end), slot));
    assert_eq!(s.members_horizon(), slot);
    // Retention keeps the slot's segment.
    assert_eq!(trim_point(s, s.members_horizon()), Lsn(START));

    // A complete report with no slot anywhere lets the WAL go.
    node.send(with_horizons(
        append_msg(2, end + 8, b"", end + 8),
        Lsn(end + 8),
        Lsn::INVALID,
    ))
    .unwrap();
    let s = node.acceptor.state();
    assert_eq!(s.slot_horizon_lsn, Lsn::INVALID);
    assert_eq!(s.members_horizon(), Lsn(end + 8));
    assert_eq!(trim_point(s, s.members_horizon()), Lsn(START + 2 * seg));
}

/// A recovery read in term N is served only while both the node's term and
/// its last log term are N.
#[test]
fn recovery_reads_are_served_only_in_the_term_of_the_last_log_entry() {
    let mut node = Node::new();
    node.vote(1);
    assert!(!node.acceptor.state().serves_recovery_read(1));
    node.elect(1, START, &[(1, START)]).unwrap();
    node.append(1, START, b"abcd", START).unwrap();
    assert!(node.acceptor.state().serves_recovery_read(1));
    node.vote(2);
    let s = node.acceptor.state();
    assert!(!s.serves_recovery_read(1) && !s.serves_recovery_read(2));
    node.elect(2, START + 2, &[(1, START), (2, START + 2)])
        .unwrap();
    assert!(node.acceptor.state().serves_recovery_read(2));
}

fn reseed(node: &mut Node, term: u64, at: u64) -> Result<AppendResponse, Refusal> {
    let m = Reseed {
        term,
        start_lsn: Lsn(at),
    };
    match node.send(ProposerMessage::Reseed(m))? {
        Some(AcceptorMessage::Append(r)) => Ok(r),
        other => panic!("expected an append response, got {other:?}"),
    }
}

/// A node that lags behind WAL every peer trimmed is restarted at a
/// committed LSN beyond its flush: its WAL goes, local_start, flush and
/// commit move there durably, and appends continue from there.
#[test]
fn a_reseed_restarts_the_log_beyond_flush_after_elected() {
    let mut node = Node::new();
    node.vote(1);
    node.elect(1, START, &[(1, START)]).unwrap();
    node.append(1, START, b"old wal", START + 3).unwrap();
    node.vote(2);
    // Before Elected in term 2 a re-seed is refused.
    let far = START + 2 * SEG as u64;
    assert!(matches!(
        reseed(&mut node, 2, far),
        Err(Refusal::BadReseed { .. })
    ));
    node.elect(2, START + 7, &[(1, START), (2, START + 7)])
        .unwrap();
    // Not beyond flush: refused, nothing changes.
    assert!(matches!(
        reseed(&mut node, 2, START + 7),
        Err(Refusal::BadReseed { .. })
    ));
    // From a stale term: answered with the current term, nothing changes.
    let r = reseed(&mut node, 1, far).unwrap();
    assert_eq!((r.term, r.flush_lsn), (2, Lsn(START + 7)));
    assert_eq!(node.wal(START, START + 7), b"old wal");
    let effects = node
        .acceptor
        .handle(&ProposerMessage::Reseed(Reseed {
            term: 2,
            start_lsn: Lsn(far),
        }))
        .unwrap();
    assert_eq!(
        effects.events,
        vec![Event::Reseeded {
            from_flush: Lsn(START + 7),
            to: Lsn(far)
        }]
    );
    node.storage.write(ttid(), &effects.writes).unwrap();
    node.storage.sync().unwrap();
    let Some(AcceptorMessage::Append(r)) = node.released(&effects) else {
        panic!("expected an append response");
    };
    assert_eq!((r.flush_lsn, r.local_start_lsn), (Lsn(far), Lsn(far)));
    node.crash_and_restart();
    let s = node.acceptor.state();
    assert_eq!(
        (s.local_start_lsn, s.flush_lsn, s.commit_lsn),
        (Lsn(far), Lsn(far), Lsn(far))
    );
    assert!(node
        .storage
        .read_wal(ttid(), Lsn(START), Lsn(START + 1))
        .is_err());
    let r = node.append(2, far, b"new", far).unwrap();
    assert_eq!(r.flush_lsn, Lsn(far + 3));
    assert_eq!(node.wal(far, far + 3), b"new");
}

/// A greeting for `n` members with addresses of `len` bytes.
fn greeting_with_members(n: u64, len: usize, create: bool) -> Greeting {
    let mut g = greeting(create);
    g.members = (1..=n).map(|i| (NodeId(i), "h".repeat(len))).collect();
    g
}

/// A history of `len` entries ending with `last`, all starting at START.
fn long_history(len: u64, last: u64) -> Vec<(u64, u64)> {
    (last + 1 - len..=last).map(|t| (t, START)).collect()
}

/// Every stored value enters through a message: a member map or a term
/// history beyond `consensus::limits` is refused before anything is
/// written, so no state the acceptor builds is too large for the store.
/// One at every limit at once still encodes, and reads back.
#[test]
fn members_and_histories_beyond_the_limits_are_refused_before_anything_is_stored() {
    let too_many = greeting_with_members(MAX_MEMBERS as u64 + 1, 8, true);
    let too_long = greeting_with_members(3, MAX_MEMBER_ADDRESS_LEN + 1, true);
    let near_the_message_limit = greeting_with_members(1, (1 << 20) - 200, true);
    for g in [too_many, too_long, near_the_message_limit] {
        assert!(matches!(
            Acceptor::create(NodeId(1), &g),
            Err(Refusal::TooLarge {
                message: "Greeting",
                ..
            })
        ));
        // Nor does an existing timeline answer such a greeting.
        let mut node = Node::new();
        assert!(matches!(
            node.send(ProposerMessage::Greeting(g)),
            Err(Refusal::TooLarge { .. })
        ));
    }

    let g = greeting_with_members(MAX_MEMBERS as u64, MAX_MEMBER_ADDRESS_LEN, true);
    let mut storage = MemStorage::new();
    let (acceptor, effects) = Acceptor::create(NodeId(1), &g).unwrap();
    storage.write(ttid(), &effects.writes).unwrap();
    storage.sync().unwrap();
    let mut node = Node { acceptor, storage };
    let max = MAX_TERM_HISTORY as u64;
    let term = max + 1;
    assert!(node.vote(term).granted);
    assert!(matches!(
        node.elect(term, START, &long_history(max + 1, term)),
        Err(Refusal::TooLarge {
            message: "Elected",
            ..
        })
    ));
    assert_eq!(node.acceptor.state().term_history, TermHistory::empty());
    node.elect(term, START, &long_history(max, term)).unwrap();
    let state = node.acceptor.state();
    assert_eq!(state.term_history.entries().len(), MAX_TERM_HISTORY);
    let stored = encode_stored(state).expect("a state at every limit encodes");
    assert_eq!(&decode_timeline_state(&stored).unwrap(), state);
}

/// A term moves by at most MAX_TERM_JUMP per vote: an honest proposer asks
/// for one above what a majority reported, so a larger jump (up to the last
/// term there is, which no proposer could ever follow) is refused, stores
/// nothing, and leaves the node voting as before.
#[test]
fn a_vote_may_move_the_term_by_at_most_the_jump_limit() {
    let mut node = Node::new();
    for term in [u64::MAX, MAX_TERM_JUMP + 1] {
        let refusal = node
            .acceptor
            .handle(&ProposerMessage::VoteRequest(VoteRequest::new(term)))
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::TermJump {
                ttid: ttid(),
                own: 0,
                proposed: term
            }
        );
    }
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().term, 0);
    assert!(node.vote(MAX_TERM_JUMP).granted);
    assert!(node.vote(2 * MAX_TERM_JUMP).granted);
    assert!(matches!(
        node.send(ProposerMessage::VoteRequest(VoteRequest::new(u64::MAX))),
        Err(Refusal::TermJump { .. })
    ));
    // A lower term is no jump: denied as ever, with the current term.
    let v = node.vote(1);
    assert!(!v.granted);
    assert_eq!(v.term, 2 * MAX_TERM_JUMP);
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().term, 2 * MAX_TERM_JUMP);
}

/// A greeting on PostgreSQL timeline 2 (a promoted standby) whose history
/// leaves timeline 1 at `switch`.
fn promoted_greeting(switch: u64) -> Greeting {
    let mut g = greeting(false);
    g.server.tli = 2;
    g.pg_ancestors = vec![(1, Lsn(switch))];
    g
}

fn switch_elected(term: u64, at: u64, history: &[(u64, u64)], switch: u64) -> ProposerMessage {
    ProposerMessage::Elected(Elected {
        term,
        start_streaming_at: Lsn(at),
        term_history: TermHistory(history.iter().map(|&(t, l)| term_lsn(t, l)).collect()),
        pg_tli: 2,
        pg_ancestors: vec![(1, Lsn(switch))],
    })
}

/// Issue 19: a promoted standby's proxy continues the timeline. Its greeting
/// is taken (timeline 2 descends from 1); its Elected records the switch at
/// or above commit_lsn and the log kept; the old primary's greeting is then
/// refused as superseded, and a switch below commit_lsn is refused.
#[test]
fn a_promoted_primary_continues_the_timeline_from_its_switch_point() {
    let mut n = Node::new();
    n.vote(1);
    n.elect(1, START, &[(1, START)]).unwrap();
    n.append(1, START, &[7; 300], START + 300).unwrap();
    n.append(1, START + 300, &[], START + 300).unwrap();

    // Another cluster's timeline 2 (not descending from the stored 1 at a
    // known point) is refused at the greeting.
    let mut other = promoted_greeting(START + 300);
    other.pg_ancestors = vec![];
    assert!(matches!(
        n.send(ProposerMessage::Greeting(other)),
        Err(Refusal::PgTimeline { .. })
    ));

    // Forking below the commit: refused at Elected, nothing changes.
    assert!(matches!(
        n.send(ProposerMessage::Greeting(promoted_greeting(START + 200))),
        Ok(Some(AcceptorMessage::Greeting(_)))
    ));
    n.vote(2);
    assert!(matches!(
        n.send(switch_elected(
            2,
            START + 300,
            &[(1, START), (2, START + 300)],
            START + 200
        )),
        Err(Refusal::SwitchBelowCommit { .. })
    ));
    assert_eq!(n.acceptor.state().server.tli, 1);

    // At the commit: taken, durable across a crash.
    n.send(ProposerMessage::Greeting(promoted_greeting(START + 300)))
        .unwrap();
    n.vote(3);
    n.send(switch_elected(
        3,
        START + 300,
        &[(1, START), (3, START + 300)],
        START + 300,
    ))
    .unwrap();
    n.crash_and_restart();
    let s = n.acceptor.state();
    assert_eq!(
        (s.server.tli, s.pg_ancestors.clone()),
        (2, vec![(1, Lsn(START + 300))])
    );
    n.append(3, START + 300, &[8; 100], START + 400).unwrap();

    // The old primary (timeline 1) is superseded.
    assert!(matches!(
        n.send(ProposerMessage::Greeting(greeting(false))),
        Err(Refusal::PgTimeline { .. })
    ));
    // A proposer claiming no timeline (--sync-only) is taken.
    let mut sync = greeting(false);
    sync.server.tli = 0;
    assert!(n.send(ProposerMessage::Greeting(sync)).is_ok());
}

/// Bytes of an initial `membership` at the end of a version 4 record:
/// generation (u64 term, u32 step), `next` None (1), `left` (1).
const INITIAL_MEMBERSHIP_LEN: usize = 8 + 4 + 1 + 1;

/// Version 2 timeline state records (before `pg_ancestors`) still decode.
#[test]
fn a_version_2_timeline_state_still_decodes() {
    let n = Node::new();
    let s = n.acceptor.state().clone();
    let raw = [&2u16.to_be_bytes()[..], &encode_stored(&s).unwrap()[2..]].concat();
    // A v2 record is the v4 one without the trailing membership and empty
    // vector (8 bytes).
    let v2 = &raw[..raw.len() - INITIAL_MEMBERSHIP_LEN - 8];
    assert_eq!(decode_timeline_state(v2).unwrap(), s);
}

/// Version 3 records (before `membership`) decode as the initial
/// configuration of their members: generation 0.0, not joint, not left.
#[test]
fn a_version_3_timeline_state_decodes_as_the_initial_configuration() {
    let n = Node::new();
    let s = n.acceptor.state().clone();
    assert_eq!(s.membership, Membership::default());
    let raw = [&3u16.to_be_bytes()[..], &encode_stored(&s).unwrap()[2..]].concat();
    let v3 = &raw[..raw.len() - INITIAL_MEMBERSHIP_LEN];
    let decoded = decode_timeline_state(v3).unwrap();
    assert_eq!(decoded, s);
    assert_eq!(decoded.configuration(), Configuration::initial(members()));
}

fn conf(generation: (u64, u32), members: &[u64], next: Option<&[u64]>) -> Configuration {
    let set = |ids: &[u64]| -> Members {
        ids.iter()
            .map(|&i| (NodeId(i), format!("127.0.0.1:{}", 5000 + i)))
            .collect()
    };
    Configuration {
        generation: Generation {
            term: generation.0,
            step: generation.1,
        },
        members: set(members),
        next: next.map(set),
    }
}

fn configure(node: &mut Node, term: u64, c: &Configuration) -> Result<AppendResponse, Refusal> {
    let m = ProposerMessage::Configure(Configure {
        term,
        conf: c.clone(),
    });
    match node.send(m)? {
        Some(AcceptorMessage::Append(r)) => Ok(r),
        other => panic!("expected an append response, got {other:?}"),
    }
}

/// A configuration is stored only from this term's leader after its
/// Elected, only if newer than the stored one (the same one again is an
/// idempotent no-op), and synced before the reply: it survives a crash.
#[test]
fn a_configuration_follows_elected_is_newer_and_is_durable() {
    let mut node = Node::new();
    let joint = conf((2, 0), &[1, 2, 3], Some(&[1, 2, 4]));
    node.vote(2);
    assert!(matches!(
        configure(&mut node, 2, &joint),
        Err(Refusal::BadConfigure { .. })
    ));
    node.elect(2, START, &[(2, START)]).unwrap();
    configure(&mut node, 2, &joint).unwrap();
    node.crash_and_restart();
    assert_eq!(node.acceptor.state().configuration(), joint);
    // the same again: no write
    let effects = node
        .acceptor
        .handle(&ProposerMessage::Configure(Configure {
            term: 2,
            conf: joint.clone(),
        }))
        .unwrap();
    assert!(effects.writes.is_empty());
    // an older or equal generation with other content: refused
    let other = conf((2, 0), &[1, 2, 3], Some(&[1, 2, 5]));
    assert!(matches!(
        configure(&mut node, 2, &other),
        Err(Refusal::BadConfigure { .. })
    ));
    // a stale leader's is answered with the term, not stored
    let r = configure(&mut node, 1, &conf((1, 0), &[1], None)).unwrap();
    assert_eq!(r.term, 2);
    assert_eq!(node.acceptor.state().configuration(), joint);
}

/// A node refuses a proposer whose generation is older than its own: no
/// vote; its greeting is answered with the stored configuration, so it
/// learns it; a vote request of the stored generation is granted.
#[test]
fn a_proposer_of_an_older_generation_is_refused() {
    let mut node = Node::new();
    node.vote(2);
    node.elect(2, START, &[(2, START)]).unwrap();
    let joint = conf((2, 0), &[1, 2, 3], Some(&[1, 2, 4]));
    configure(&mut node, 2, &joint).unwrap();
    let stale = VoteRequest {
        term: 3,
        generation: Generation::INITIAL,
    };
    assert!(matches!(
        node.send(ProposerMessage::VoteRequest(stale)),
        Err(Refusal::StaleGeneration { .. })
    ));
    assert_eq!(node.acceptor.state().term, 2, "no vote was persisted");
    let mut g = greeting(false);
    g.conf = Some(Configuration::initial(members()));
    match node.send(ProposerMessage::Greeting(g)) {
        Ok(Some(AcceptorMessage::Greeting(r))) => assert_eq!(r.conf, joint),
        other => panic!("expected a greeting reply, got {other:?}"),
    }
    let current = VoteRequest {
        term: 3,
        generation: joint.generation,
    };
    match node.send(ProposerMessage::VoteRequest(current)) {
        Ok(Some(AcceptorMessage::Vote(v))) => assert!(v.granted),
        other => panic!("expected a granted vote, got {other:?}"),
    }
}

/// A configuration without this node, after one with it, removes it: it
/// is left (durably), answers greetings with that configuration (so a
/// proposer learns it), votes no more, and keeps its WAL.
#[test]
fn a_removed_member_is_left_tells_its_configuration_and_votes_no_more() {
    let mut node = Node::new();
    node.vote(2);
    node.elect(2, START, &[(2, START)]).unwrap();
    node.append(2, START, &[7; 100], START).unwrap();
    configure(&mut node, 2, &conf((2, 0), &[1, 2, 3], Some(&[2, 3, 4]))).unwrap();
    assert!(
        !node.acceptor.state().membership.left,
        "still in the old set"
    );
    configure(&mut node, 2, &conf((2, 1), &[2, 3, 4], None)).unwrap();
    node.crash_and_restart();
    assert!(node.acceptor.state().membership.left);
    match node.send(ProposerMessage::Greeting(greeting(false))) {
        Ok(Some(AcceptorMessage::Greeting(r))) => {
            assert_eq!(r.conf, conf((2, 1), &[2, 3, 4], None));
        }
        other => panic!("expected a greeting reply, got {other:?}"),
    }
    let vote = VoteRequest {
        term: 9,
        generation: Generation { term: 2, step: 1 },
    };
    assert!(matches!(
        node.send(ProposerMessage::VoteRequest(vote)),
        Err(Refusal::Left { .. })
    ));
    assert_eq!(node.wal(START, START + 100), vec![7; 100]);
}

/// A new member is created with the configuration in force, which need
/// not name it yet (a learner); a node named by neither the proposer's
/// list nor the configuration is refused.
#[test]
fn a_learner_is_created_with_the_configuration_in_force() {
    let mut g = greeting(true);
    g.members.insert(NodeId(4), "127.0.0.1:5004".into());
    let c = conf((3, 1), &[1, 2, 3], None);
    g.conf = Some(c.clone());
    let (a, _) = Acceptor::create(NodeId(4), &g).unwrap();
    assert_eq!(a.state().configuration(), c);
    assert!(!a.state().membership.left);
    assert!(matches!(
        Acceptor::create(NodeId(5), &g),
        Err(Refusal::NotAMember { .. })
    ));
}
