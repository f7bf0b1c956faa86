//! Sessions of the consensus state machines driven by fuzz bytes: an
//! acceptor fed a sequence of proposer messages, and a proposer with three
//! real acceptors whose deliveries, drops, crashes and hostile replies the
//! bytes choose. Every message crosses the codec, and every state the
//! acceptor asks to store must encode and decode unchanged: a value that
//! decodes from the wire but cannot be stored is a finding.

use std::collections::{BTreeMap, VecDeque};

use arbitrary::{Result, Unstructured};
use bytes::Bytes;

use super::gen;
use super::wire::{check_acceptor_roundtrip, check_proposer_roundtrip};
use crate::codec::{
    decode_acceptor_message, decode_proposer_message, encode_acceptor_message,
    encode_proposer_message, encode_stored,
};
use crate::consensus::acceptor::{decode_timeline_state, Acceptor, Ready, Refusal, Write};
use crate::consensus::messages::*;
use crate::consensus::proposer::{Action, Proposer, ProposerConfig};
use crate::consensus::term_history::TermLsn;
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;
use crate::store::memory::MemStorage;
use crate::store::Storage;

/// Most WAL a session reads back in one check.
const MAX_CHECKED_READ: u64 = 1 << 20;

/// Check what the acceptor asks to store, store it (synced), and check
/// the replies that releases.
fn apply(store: &mut MemStorage, acc: &mut Acceptor, effects: &Ready) -> Vec<AcceptorMessage> {
    for w in &effects.writes {
        if let Write::PutState(s) = w {
            let bytes = match encode_stored(&**s) {
                Ok(b) => b,
                Err(e) => panic!("the acceptor built a timeline state it cannot store: {e}"),
            };
            assert_eq!(decode_timeline_state(&bytes).as_ref(), Ok(&**s));
        }
    }
    store
        .write(acc.ttid(), &effects.writes)
        .expect("memory store");
    store.sync().expect("memory store");
    let replies: Vec<AcceptorMessage> = acc
        .on_persisted(effects.seq)
        .into_iter()
        .map(|r| r.msg)
        .collect();
    for reply in &replies {
        check_acceptor_roundtrip(reply);
    }
    replies
}

/// What an acceptor would decode of a message; `None` when its decoder
/// refuses it (too large for the wire).
fn over_the_wire(msg: &ProposerMessage) -> Option<ProposerMessage> {
    decode_proposer_message(&encode_proposer_message(msg)).ok()
}

/// One acceptor's rules on its state after a message, handled or refused.
fn check_acceptor(acc: &Acceptor, before: &crate::consensus::acceptor::TimelineState) {
    let s = acc.state();
    assert!(s.term >= before.term, "term went back");
    assert!(s.term_history.is_well_formed(), "{:?}", s.term_history);
    assert!(s.local_start_lsn <= s.flush_lsn);
    assert!(s.timeline_start_lsn <= s.local_start_lsn);
}

/// The WAL an acceptor claims to hold can be read back from its store.
fn check_held(store: &MemStorage, acc: &Acceptor) {
    let s = acc.state();
    if s.flush_lsn.0 - s.local_start_lsn.0 <= MAX_CHECKED_READ {
        if let Err(e) = store.read_wal(s.ttid, s.local_start_lsn, s.flush_lsn) {
            panic!("WAL the acceptor holds is not readable: {e}");
        }
    }
}

/// The acceptor restarted from what its store holds (through the codec).
fn restart(store: &MemStorage, node: NodeId, ttid: Ttid) -> Option<Acceptor> {
    let state = store.durable_state(ttid)?;
    let bytes = encode_stored(state).expect("checked when stored");
    Some(Acceptor::restore(
        node,
        decode_timeline_state(&bytes).expect("decodes"),
    ))
}

/// A single acceptor (node 1) and a sequence of proposer messages, most of
/// them plausible for its current state, some anything at all.
pub fn acceptor_session(data: &[u8]) {
    let _ = run_acceptor_session(&mut Unstructured::new(data));
}

fn run_acceptor_session(u: &mut Unstructured) -> Result<()> {
    let node = NodeId(1);
    let mut greeting = gen::greeting(u)?;
    if u.ratio(7, 8)? {
        greeting.create = true;
        greeting.members.entry(node).or_insert_with(|| "a:1".into());
    }
    let Some(ProposerMessage::Greeting(greeting)) =
        over_the_wire(&ProposerMessage::Greeting(greeting))
    else {
        return Ok(());
    };
    let Ok((mut acc, effects)) = Acceptor::create(node, &greeting) else {
        return Ok(());
    };
    let ttid = acc.ttid();
    let mut store = MemStorage::new();
    apply(&mut store, &mut acc, &effects);
    let steps = u.int_in_range(1..=48u8)?;
    for _ in 0..steps {
        let s = acc.state().clone();
        let msg = match u.int_in_range(0..=9u8)? {
            0 => ProposerMessage::Greeting(greeting.clone()),
            1 | 2 => ProposerMessage::VoteRequest(VoteRequest::new(gen::near(u, s.term + 1)?)),
            3 => {
                let term = gen::near(u, s.term)?;
                let start = gen::lsn(u, s.flush_lsn)?;
                let mut history = s.term_history.up_to(s.flush_lsn);
                if u.ratio(1, 8)? {
                    history = gen::history(u, None)?;
                }
                let start = match acc.divergence_point(&history) {
                    Some(p) if u.ratio(3, 4)? => p.min(start),
                    _ => start,
                };
                history.0.retain(|e| e.term < term && e.lsn <= start);
                history.0.push(TermLsn { term, lsn: start });
                ProposerMessage::Elected(Elected {
                    term,
                    start_streaming_at: start,
                    term_history: history,
                    pg_tli: if u.ratio(7, 8)? {
                        acc.state().server.tli
                    } else {
                        gen::pg_tli(u)?
                    },
                    pg_ancestors: gen::pg_ancestors(u)?,
                })
            }
            4..=6 => ProposerMessage::Append(gen::append(u, s.term, s.flush_lsn)?),
            7 => ProposerMessage::Reseed(Reseed {
                term: gen::near(u, s.term)?,
                start_lsn: gen::lsn(u, s.flush_lsn)?,
            }),
            8 => {
                if let Some(a) = restart(&store, node, ttid) {
                    acc = a;
                }
                continue;
            }
            _ => gen::proposer_message(u, s.term, s.flush_lsn)?,
        };
        let Some(msg) = over_the_wire(&msg) else {
            continue;
        };
        match acc.handle(&msg) {
            Ok(effects) => {
                apply(&mut store, &mut acc, &effects);
            }
            Err(_) => assert_eq!(acc.state(), &s, "a refused message changed the state"),
        }
        check_acceptor(&acc, &s);
        check_held(&store, &acc);
    }
    Ok(())
}

/// One member as the proposer session sees it.
#[derive(Default)]
struct Node {
    acceptor: Option<Acceptor>,
    store: MemStorage,
    connected: bool,
    /// Proposer messages on their way to the acceptor.
    inbox: VecDeque<ProposerMessage>,
    /// Replies on their way to the proposer.
    outbox: VecDeque<AcceptorMessage>,
}

struct Cluster {
    proposer: Proposer,
    nodes: BTreeMap<NodeId, Node>,
    reads: Vec<(u64, NodeId, Lsn, Lsn)>,
    commit: Lsn,
    now: u64,
}

impl Cluster {
    fn act(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Send(node, msg) => {
                    check_proposer_roundtrip(&msg);
                    if let Some(n) = self.nodes.get_mut(&node).filter(|n| n.connected) {
                        n.inbox.push_back(msg);
                    }
                }
                Action::Disconnect(node) => self.disconnect(node),
                Action::RecoveryRead {
                    id,
                    donor,
                    start,
                    end,
                    ..
                } => self.reads.push((id, donor, start, end)),
                Action::CommitAdvanced(lsn) => {
                    assert!(
                        lsn >= self.commit,
                        "commit went back: {} < {}",
                        lsn,
                        self.commit
                    );
                    self.commit = lsn;
                }
                _ => {}
            }
        }
    }

    fn disconnect(&mut self, node: NodeId) {
        if let Some(n) = self.nodes.get_mut(&node) {
            n.connected = false;
            n.inbox.clear();
            n.outbox.clear();
        }
        self.proposer.on_disconnected(node);
    }

    /// Deliver the oldest message to `node`'s acceptor.
    fn deliver_to_acceptor(&mut self, node: NodeId) {
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        let Some(msg) = n.inbox.pop_front() else {
            return;
        };
        let msg = over_the_wire(&msg).expect("checked when sent");
        let result = match (&mut n.acceptor, &msg) {
            (Some(acc), _) => acc.handle(&msg),
            (None, ProposerMessage::Greeting(g)) => Acceptor::create(node, g).map(|(acc, e)| {
                n.acceptor = Some(acc);
                e
            }),
            (None, _) => Err(Refusal::NotGreeted {
                ttid: Ttid::default(),
                got: "another message",
            }),
        };
        match result {
            Ok(effects) => {
                let acc = n.acceptor.as_mut().expect("created or present");
                let replies = apply(&mut n.store, acc, &effects);
                check_held(&n.store, acc);
                n.outbox.extend(replies);
            }
            Err(Refusal::UnknownTimeline(_)) => {
                n.connected = false;
                n.inbox.clear();
                n.outbox.clear();
                let actions = self.proposer.on_no_timeline(node);
                self.act(actions);
            }
            Err(_) => self.disconnect(node),
        }
    }

    fn deliver_to_proposer(&mut self, node: NodeId, msg: Option<AcceptorMessage>) {
        // A hostile reply arrives only if the proxy's decoder takes it; the
        // replies of real acceptors were checked when they were built.
        let msg = match msg {
            Some(m) => decode_acceptor_message(&encode_acceptor_message(&m)).ok(),
            None => self.nodes.get_mut(&node).and_then(|n| n.outbox.pop_front()),
        };
        if let Some(msg) = msg {
            let actions = self.proposer.on_message(node, msg);
            self.act(actions);
        }
    }

    fn answer_read(&mut self, u: &mut Unstructured) -> Result<()> {
        if self.reads.is_empty() {
            return Ok(());
        }
        let (id, donor, start, end) = self.reads.remove(u.choose_index(self.reads.len())?);
        let wal = self.nodes.get(&donor).and_then(|n| {
            let ttid = n.acceptor.as_ref()?.ttid();
            (end.0.saturating_sub(start.0) <= MAX_CHECKED_READ)
                .then(|| n.store.read_wal(ttid, start, end).ok())
                .flatten()
        });
        let actions = match wal {
            Some(w) if u.ratio(7, 8)? => self.proposer.on_recovery_data(id, Bytes::from(w)),
            _ => self.proposer.on_recovery_failed(id),
        };
        self.act(actions);
        Ok(())
    }
}

/// A proposer and three real acceptors; the bytes pick each event.
pub fn proposer_session(data: &[u8]) {
    let _ = run_proposer_session(&mut Unstructured::new(data));
}

fn run_proposer_session(u: &mut Unstructured) -> Result<()> {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let members: Members = ids
        .iter()
        .map(|id| (*id, format!("sk{}:5454", id.0)))
        .collect();
    let mut cfg = ProposerConfig::new(Ttid::default(), gen::SERVER, gen::TIMELINE_START, members);
    cfg.create = u.ratio(7, 8)?;
    cfg.max_append_bytes = u.int_in_range(1..=4096)?;
    let mut c = Cluster {
        proposer: Proposer::new(cfg),
        nodes: ids.iter().map(|id| (*id, Node::default())).collect(),
        reads: Vec::new(),
        commit: Lsn::INVALID,
        now: 0,
    };
    let steps = u.int_in_range(1..=255u8)?;
    for _ in 0..steps {
        let node = ids[u.choose_index(ids.len())?];
        let seen = c.proposer.max_term_seen();
        match u.int_in_range(0..=11u8)? {
            0 => {
                if !c.nodes[&node].connected {
                    c.nodes.get_mut(&node).expect("member").connected = true;
                    let actions = c.proposer.on_connected(node);
                    c.act(actions);
                }
            }
            1 => c.disconnect(node),
            2 | 3 => c.deliver_to_acceptor(node),
            4 | 5 => c.deliver_to_proposer(node, None),
            6 => {
                c.now += u.int_in_range(0..=12_000)?;
                let actions = c.proposer.on_tick(c.now);
                c.act(actions);
            }
            7 => {
                let wal = gen::wal(u)?;
                if let Ok(actions) = c.proposer.push_wal(&wal) {
                    c.act(actions);
                }
            }
            8 => c.answer_read(u)?,
            9 => {
                let actions = c.proposer.start_election();
                c.act(actions);
            }
            10 => {
                let term = c.proposer.term().unwrap_or(seen);
                let msg = gen::acceptor_message(u, node, term, c.commit)?;
                c.deliver_to_proposer(node, Some(msg));
            }
            _ => {
                let n = c.nodes.get_mut(&node).expect("member");
                if let Some(acc) = &n.acceptor {
                    n.acceptor = restart(&n.store, node, acc.ttid());
                }
                c.disconnect(node);
            }
        }
        assert!(
            c.proposer.max_term_seen() >= seen,
            "max term seen went back"
        );
    }
    Ok(())
}

/// One structure-aware proposer message: through the codec (refused only
/// when too large for it), then to an acceptor of the sessions' timeline.
pub(crate) fn proposer_message(data: &[u8]) {
    let _ = run_proposer_message(&mut Unstructured::new(data));
}

fn run_proposer_message(u: &mut Unstructured) -> Result<()> {
    let term = if u.arbitrary()? {
        gen::near(u, 3)?
    } else {
        u.int_in_range(0..=1 << 20)?
    };
    let msg = gen::proposer_message(u, term, gen::TIMELINE_START)?;
    let bytes = encode_proposer_message(&msg);
    let msg = match decode_proposer_message(&bytes) {
        Ok(back) => {
            assert_eq!(back, msg);
            back
        }
        Err(e) => {
            let other_protocol = matches!(&msg, ProposerMessage::Greeting(g)
                if g.protocol_version != crate::codec::PROTOCOL_VERSION);
            assert!(
                bytes.len() > crate::codec::MAX_MESSAGE_SIZE
                    || bytes.len() as u64 > crate::codec::MAX_STRUCT_SIZE
                    || (other_protocol
                        && matches!(e, crate::codec::CodecError::OtherProtocol { .. })),
                "a message within the limits does not decode: {e}"
            );
            return Ok(());
        }
    };
    let node = NodeId(1);
    let mut store = MemStorage::new();
    let (mut acc, effects) = match &msg {
        ProposerMessage::Greeting(g) => match Acceptor::create(node, g) {
            Ok(created) => created,
            Err(_) => return Ok(()),
        },
        _ => {
            let g = Greeting {
                conf: None,
                protocol_version: crate::codec::PROTOCOL_VERSION,
                ttid: Ttid::default(),
                server: gen::SERVER,
                timeline_start_lsn: gen::TIMELINE_START,
                members: [(node, "a:1".to_string())].into_iter().collect(),
                proposer_id: [0; 16],
                create: true,
                pg_ancestors: Vec::new(),
            };
            Acceptor::create(node, &g).expect("a valid greeting")
        }
    };
    apply(&mut store, &mut acc, &effects);
    // Voted into the message's term, so Elected and appends get far.
    let term = match &msg {
        ProposerMessage::Elected(m) => m.term,
        ProposerMessage::Append(m) => m.term,
        ProposerMessage::Reseed(m) => m.term,
        _ => term,
    };
    if let Ok(e) = acc.handle(&ProposerMessage::VoteRequest(VoteRequest::new(term))) {
        apply(&mut store, &mut acc, &e);
    }
    let before = acc.state().clone();
    match acc.handle(&msg) {
        Ok(effects) => {
            apply(&mut store, &mut acc, &effects);
        }
        Err(_) => assert_eq!(acc.state(), &before, "a refused message changed the state"),
    }
    check_acceptor(&acc, &before);
    check_held(&store, &acc);
    Ok(())
}
