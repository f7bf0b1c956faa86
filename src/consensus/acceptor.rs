//! The acceptor: one timeline's side of the consensus protocol on a
//! safekeeper, as a pure state machine (ARCHITECTURE.md,
//! "3. The consensus protocol as implemented").
//!
//! `handle` takes a proposer message and returns a numbered [`Ready`] set
//! (in the spirit of raft-rs's `RawNode`/`Ready` and etcd's `Ready`/`Advance`):
//! the writes to make durable, in order, and whether they must be synced.
//! The reply the message earned is held here, not handed out: the driver
//! (the daemon's push connection, or the simulation) reports with
//! [`Acceptor::on_persisted`] which ready sets are durable, and that
//! releases the replies whose writes are. Whether a reply needs a sync of
//! its own (a commit-only heartbeat does not) is decided here too. The
//! in-memory state is therefore the state *after* every write issued so
//! far; a reply computed from it is true once released.

use serde::{Deserialize, Serialize};

use super::limits::{self, LimitExceeded};
use super::membership::{Configuration, Generation, Membership};
use super::messages::*;
use super::pg_timeline::{self, PgAncestors};
use super::term_history::{Term, TermHistory, TermLsn};
use crate::codec::{Versioned, PROTOCOL_VERSION};
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;
use bytes::Bytes;
use std::collections::VecDeque;

/// The durable state of one timeline on one safekeeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineState {
    pub ttid: Ttid,
    pub server: ServerInfo,
    pub members: Members,
    /// Where the timeline's WAL begins (a segment start), fixed at creation.
    pub timeline_start_lsn: Lsn,
    /// First LSN still stored here; trims move it forward.
    pub local_start_lsn: Lsn,
    /// Highest term this node has voted for (or followed).
    pub term: Term,
    pub term_history: TermHistory,
    /// End of the WAL held here.
    pub flush_lsn: Lsn,
    /// WAL below it is committed (held by a majority in a term's log).
    pub commit_lsn: Lsn,
    pub peer_horizon_lsn: Lsn,
    pub slot_horizon_lsn: Lsn,
    /// The term of the last `safekeeper-proxy --sync-only` that counted this
    /// node in its settled majority (0: never). Consumers' fail-over and
    /// whole-cluster recovery ask "was this node settled?".
    pub settled_term: Term,
    /// The LSN that sync committed here (INVALID: never settled).
    pub settled_lsn: Lsn,
    /// The ancestors of `server.tli`, the PostgreSQL timeline the newest WAL
    /// is on: each with the LSN where it ended and the next began. A switch
    /// (a promoted standby's proxy elected) moves `server.tli` and extends
    /// this (version 3).
    pub pg_ancestors: PgAncestors,
    /// The configuration's generation, its new set while joint, and whether
    /// this node was removed (version 4; `members` is the set in force, the
    /// old one while joint).
    pub membership: Membership,
}

impl Versioned for TimelineState {
    const WHAT: &'static str = "timeline state";
    /// 2 added `settled_term` and `settled_lsn`, 3 `pg_ancestors`, 4
    /// `membership`; records of versions 1 to 3 are still read (see
    /// [`decode_timeline_state`]).
    const FORMAT_VERSION: u16 = 4;
}

/// A timeline state record of format version 3 (before `membership`): the
/// initial configuration of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TimelineStateV3 {
    ttid: Ttid,
    server: ServerInfo,
    members: Members,
    timeline_start_lsn: Lsn,
    local_start_lsn: Lsn,
    term: Term,
    term_history: TermHistory,
    flush_lsn: Lsn,
    commit_lsn: Lsn,
    peer_horizon_lsn: Lsn,
    slot_horizon_lsn: Lsn,
    settled_term: Term,
    settled_lsn: Lsn,
    pg_ancestors: PgAncestors,
}

impl Versioned for TimelineStateV3 {
    const WHAT: &'static str = "timeline state";
    const FORMAT_VERSION: u16 = 3;
}

impl From<TimelineStateV3> for TimelineState {
    fn from(v: TimelineStateV3) -> TimelineState {
        TimelineState {
            ttid: v.ttid,
            server: v.server,
            members: v.members,
            timeline_start_lsn: v.timeline_start_lsn,
            local_start_lsn: v.local_start_lsn,
            term: v.term,
            term_history: v.term_history,
            flush_lsn: v.flush_lsn,
            commit_lsn: v.commit_lsn,
            peer_horizon_lsn: v.peer_horizon_lsn,
            slot_horizon_lsn: v.slot_horizon_lsn,
            settled_term: v.settled_term,
            settled_lsn: v.settled_lsn,
            pg_ancestors: v.pg_ancestors,
            membership: Membership::default(),
        }
    }
}

/// A timeline state record of format version 2 (before `pg_ancestors`),
/// read through version 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TimelineStateV2 {
    ttid: Ttid,
    server: ServerInfo,
    members: Members,
    timeline_start_lsn: Lsn,
    local_start_lsn: Lsn,
    term: Term,
    term_history: TermHistory,
    flush_lsn: Lsn,
    commit_lsn: Lsn,
    peer_horizon_lsn: Lsn,
    slot_horizon_lsn: Lsn,
    settled_term: Term,
    settled_lsn: Lsn,
}

impl Versioned for TimelineStateV2 {
    const WHAT: &'static str = "timeline state";
    const FORMAT_VERSION: u16 = 2;
}

impl From<TimelineStateV2> for TimelineStateV3 {
    fn from(v: TimelineStateV2) -> TimelineStateV3 {
        TimelineStateV3 {
            ttid: v.ttid,
            server: v.server,
            members: v.members,
            timeline_start_lsn: v.timeline_start_lsn,
            local_start_lsn: v.local_start_lsn,
            term: v.term,
            term_history: v.term_history,
            flush_lsn: v.flush_lsn,
            commit_lsn: v.commit_lsn,
            peer_horizon_lsn: v.peer_horizon_lsn,
            slot_horizon_lsn: v.slot_horizon_lsn,
            settled_term: v.settled_term,
            settled_lsn: v.settled_lsn,
            pg_ancestors: PgAncestors::new(),
        }
    }
}

/// A timeline state record of format version 1 (before the settled fields).
/// Kept so stores written by older builds still open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TimelineStateV1 {
    ttid: Ttid,
    server: ServerInfo,
    members: Members,
    timeline_start_lsn: Lsn,
    local_start_lsn: Lsn,
    term: Term,
    term_history: TermHistory,
    flush_lsn: Lsn,
    commit_lsn: Lsn,
    peer_horizon_lsn: Lsn,
    slot_horizon_lsn: Lsn,
}

impl Versioned for TimelineStateV1 {
    const WHAT: &'static str = "timeline state";
    const FORMAT_VERSION: u16 = 1;
}

impl From<TimelineStateV1> for TimelineStateV3 {
    fn from(v: TimelineStateV1) -> TimelineStateV3 {
        TimelineStateV3 {
            ttid: v.ttid,
            server: v.server,
            members: v.members,
            timeline_start_lsn: v.timeline_start_lsn,
            local_start_lsn: v.local_start_lsn,
            term: v.term,
            term_history: v.term_history,
            flush_lsn: v.flush_lsn,
            commit_lsn: v.commit_lsn,
            peer_horizon_lsn: v.peer_horizon_lsn,
            slot_horizon_lsn: v.slot_horizon_lsn,
            settled_term: 0,
            settled_lsn: Lsn::INVALID,
            pg_ancestors: PgAncestors::new(),
        }
    }
}

/// Decode a stored timeline state record of any version this build knows
/// (1 to 4); newer ones are refused by `decode_stored`.
pub fn decode_timeline_state(raw: &[u8]) -> Result<TimelineState, crate::codec::CodecError> {
    use crate::codec::decode_stored;
    let v3 = |v: TimelineStateV3| TimelineState::from(v);
    match raw.first_chunk::<2>().map(|v| u16::from_be_bytes(*v)) {
        Some(1) => decode_stored::<TimelineStateV1>(raw).map(|v| v3(v.into())),
        Some(2) => decode_stored::<TimelineStateV2>(raw).map(|v| v3(v.into())),
        Some(3) => decode_stored::<TimelineStateV3>(raw).map(v3),
        _ => decode_stored::<TimelineState>(raw),
    }
}

impl TimelineState {
    pub fn last_log_term(&self) -> Term {
        self.term_history.last_log_term(self.flush_lsn)
    }

    /// The configuration stored last.
    pub fn configuration(&self) -> Configuration {
        Configuration {
            generation: self.membership.generation,
            members: self.members.clone(),
            next: self.membership.next.clone(),
        }
    }

    /// Whether this node may serve a proposer's recovery read in `term`:
    /// only then is the WAL it holds exactly that term's leader's log. The
    /// check must see every write the read can see: a store read includes
    /// staged writes, so the daemon checks again, on the acceptor's current
    /// state (every write issued so far), after each read.
    pub fn serves_recovery_read(&self, term: Term) -> bool {
        self.term == term && self.last_log_term() == term
    }

    /// The lowest LSN another member may still need from this node, by the
    /// proposer's last report that covered every member: min(peer horizon,
    /// slot horizon). Before any such report, everything held here.
    pub fn members_horizon(&self) -> Lsn {
        if !self.peer_horizon_lsn.is_valid() {
            return self.local_start_lsn;
        }
        if self.slot_horizon_lsn.is_valid() {
            self.peer_horizon_lsn.min(self.slot_horizon_lsn)
        } else {
            self.peer_horizon_lsn
        }
    }
}

/// A change the acceptor needs made durable, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Store WAL `[begin, begin + bytes.len())`.
    AppendWal { begin: Lsn, bytes: Bytes },
    /// Remove all WAL at and above `from`.
    TruncateWal { from: Lsn },
    /// Remove all WAL below `below`.
    TrimWal { below: Lsn },
    /// Replace the timeline's state record.
    PutState(Box<TimelineState>),
}

/// What one message did, inside the acceptor; the driver sees it as a
/// [`Ready`] set with the reply held back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Effects {
    writes: Vec<Write>,
    /// To send once `writes` (and everything before them) are durable.
    reply: Option<AcceptorMessage>,
    events: Vec<Event>,
    /// The writes only move `commit_lsn` or the horizons (a commit-only
    /// heartbeat): they need no sync of their own, and the reply waits only
    /// for what was written before them (it claims nothing they hold: its
    /// commit_lsn is the last one a synced write recorded).
    lazy: bool,
}

/// The number of a ready set: 1, 2, ... in the order `handle` (and `trim`,
/// `settle`, `create`) produced them since the acceptor was created or
/// restored. 0 stands for "none".
pub type Seq = u64;

/// One message's (or one trim's, or one settle's) outcome for the driver:
/// the writes to hand to storage in order after every earlier set's, and
/// whether they must be synced before the reply they hold goes out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "the writes must reach storage, and on_persisted be called once they are durable"]
pub struct Ready {
    pub seq: Seq,
    pub writes: Vec<Write>,
    /// The writes must be durable before this set's reply is released.
    /// False for lazy writes (a commit-only heartbeat: they ride along with
    /// a later sync; readers must still see the state only once synced)
    /// and for sets without writes.
    pub sync: bool,
    /// The set whose persistence releases this one's reply: `seq` when
    /// `sync`, else the last synced set before it (0: none). A driver whose
    /// storage answers a set only once every earlier set that must be
    /// synced is durable (the group-commit writer) reports
    /// `on_persisted(waits_for)` when it answers this set.
    pub waits_for: Seq,
    /// A reply is held for this set.
    pub holds_reply: bool,
    /// Something an operator should read in the log.
    pub events: Vec<Event>,
}

/// A reply released by [`Acceptor::on_persisted`]: it goes to whoever sent
/// the message of ready set `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub seq: Seq,
    pub msg: AcceptorMessage,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    TimelineCreated,
    TermChanged {
        from: Term,
        to: Term,
    },
    Truncated {
        from_flush: Lsn,
        to: Lsn,
    },
    /// The log was restarted at `to` (WAL `[local_start, from_flush)` dropped).
    Reseeded {
        from_flush: Lsn,
        to: Lsn,
    },
    /// WAL from `at` on is PostgreSQL timeline `tli` (a promoted standby).
    PgTimelineSwitched {
        tli: u32,
        at: Lsn,
    },
    /// A configuration was stored (`left`: this node was removed by it).
    Configured {
        generation: Generation,
        left: bool,
    },
}

/// Why a message was refused. The connection that sent it should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "timeline {0} does not exist on this safekeeper and the greeting did not ask to create it"
    )]
    UnknownTimeline(Ttid),
    #[error(
        "timeline {ttid}: greeting disagrees on {field}: stored {stored}, proposer says {proposed}"
    )]
    Mismatch {
        ttid: Ttid,
        field: &'static str,
        stored: String,
        proposed: String,
    },
    #[error("timeline {ttid}: this safekeeper ({node}) is not among the members {members}")]
    NotAMember {
        ttid: Ttid,
        node: NodeId,
        members: String,
    },
    #[error("timeline {ttid}: protocol version {proposed} is not supported (this safekeeper speaks {PROTOCOL_VERSION})")]
    ProtocolVersion { ttid: Ttid, proposed: u32 },
    #[error("timeline {ttid}: timeline_start_lsn {lsn} is not a WAL segment start")]
    StartNotSegmentAligned { ttid: Ttid, lsn: Lsn },
    #[error("timeline {ttid}: Elected for term {proposed} but this node is in term {own}")]
    ElectedWrongTerm {
        ttid: Ttid,
        own: Term,
        proposed: Term,
    },
    #[error("timeline {ttid}: Elected history is malformed or does not end with term {term}")]
    BadHistory { ttid: Ttid, term: Term },
    #[error("timeline {ttid}: Elected says logs diverge at {proposed}, this node computes {computed:?} (flush {flush})")]
    DivergenceMismatch {
        ttid: Ttid,
        proposed: Lsn,
        computed: Option<Lsn>,
        flush: Lsn,
    },
    #[error("timeline {ttid}: refusing to truncate to {to}, below commit_lsn {commit}")]
    TruncateBelowCommit { ttid: Ttid, to: Lsn, commit: Lsn },
    #[error("timeline {ttid}: refusing to truncate to {to}, below local_start_lsn {local_start} (WAL there was trimmed)")]
    TruncateBelowLocalStart {
        ttid: Ttid,
        to: Lsn,
        local_start: Lsn,
    },
    #[error("timeline {ttid}: append in term {proposed} before Elected for it (own term {own}, last history term {last})")]
    AppendBeforeElected {
        ttid: Ttid,
        own: Term,
        proposed: Term,
        last: Term,
    },
    #[error("timeline {ttid}: append in term {proposed} above own term {own} without a vote")]
    AppendFromUnknownTerm {
        ttid: Ttid,
        own: Term,
        proposed: Term,
    },
    #[error("timeline {ttid}: append begins at {begin}, expected {expected} (end of the last append); a gap or overlap in LSNs")]
    AppendNotContiguous {
        ttid: Ttid,
        begin: Lsn,
        expected: Lsn,
    },
    #[error("timeline {ttid}: re-seed at {start} in term {proposed}, but this node holds WAL to {flush} in term {own} (last history term {last}); a re-seed must follow Elected and lie beyond flush_lsn")]
    BadReseed {
        ttid: Ttid,
        start: Lsn,
        proposed: Term,
        own: Term,
        last: Term,
        flush: Lsn,
    },
    #[error("timeline {ttid}: {error}")]
    PgTimeline {
        ttid: Ttid,
        error: pg_timeline::SwitchError,
    },
    #[error("timeline {ttid}: PostgreSQL timeline {tli} forks at {at}, below this node's commit_lsn {commit} or the WAL it keeps to {kept}: the promoted standby lacks committed WAL; promote a standby that replayed up to the settled LSN (safekeeper-proxy --sync-only prints it)")]
    SwitchBelowCommit {
        ttid: Ttid,
        tli: u32,
        at: Lsn,
        commit: Lsn,
        kept: Lsn,
    },
    #[error("timeline {ttid}: the proposer counts by configuration generation {proposed}, older than this node's {own}: it missed a membership change; give it the current member list")]
    StaleGeneration {
        ttid: Ttid,
        own: Generation,
        proposed: Generation,
    },
    #[error("timeline {ttid}: this safekeeper ({node}) was removed from the timeline's members by configuration {generation} (left): it votes no more and keeps its WAL until its store is re-initialised. To make this host a member again, re-initialise it under a new node id (safekeeper --init --node-id M on an empty data directory) and add it with --change-members (README.md, \"Move a safekeeper to a new host\")")]
    Left {
        ttid: Ttid,
        node: NodeId,
        generation: Generation,
    },
    #[error("timeline {ttid}: configuration {generation} in term {proposed} refused: this node is in term {own} (last history term {last}) and holds configuration {stored}; a configuration follows Elected in the node's term and is newer than the stored one")]
    BadConfigure {
        ttid: Ttid,
        generation: Generation,
        proposed: Term,
        own: Term,
        last: Term,
        stored: Generation,
    },
    #[error("timeline {ttid}: greeting expected first, got {got}")]
    NotGreeted { ttid: Ttid, got: &'static str },
    /// A value this node could not store (see `consensus::limits`).
    #[error("timeline {ttid}: {message} refused: {limit}")]
    TooLarge {
        ttid: Ttid,
        message: &'static str,
        limit: LimitExceeded,
    },
    #[error("timeline {ttid}: storing failed ({reason}); nothing more is accepted until a restart reloads the stored state")]
    StorageFailed { ttid: Ttid, reason: String },
    #[error("timeline {ttid}: VoteRequest for term {proposed} refused: this node is in term {own}, and a vote may move it by at most {max} terms", max = limits::MAX_TERM_JUMP)]
    TermJump {
        ttid: Ttid,
        own: Term,
        proposed: Term,
    },
}

/// Deliberate bugs, switched on only by tests that check the simulation's
/// invariant checker catches them. Always off in the daemon.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptorFaults {
    /// Accept appends in the current term before Elected was processed.
    pub accept_append_before_elected: bool,
    /// Store the slot horizon of every append, also an unknown one (a new
    /// term, a member not heard from): the horizon then forgets slots on
    /// other nodes.
    pub store_unknown_slot_horizon: bool,
    /// Release every reply at once, before the writes it follows are
    /// durable (the rule `on_persisted` keeps, broken).
    pub reply_before_persisted: bool,
}

#[derive(Debug, Clone)]
pub struct Acceptor {
    node_id: NodeId,
    state: TimelineState,
    /// `commit_lsn` as of the last state write that is synced before its
    /// reply: what replies may claim. Lazy writes (see [`Effects::lazy`])
    /// move `state.commit_lsn` ahead of it until the next synced write.
    synced_commit_lsn: Lsn,
    /// The last ready set numbered, the last one that must be synced, and
    /// the highest the driver reported durable.
    last_seq: Seq,
    last_sync_seq: Seq,
    persisted: Seq,
    /// Replies waiting for `persisted` to reach their `waits_for`, in
    /// `seq` order: (seq, waits_for, reply).
    held: VecDeque<(Seq, Seq, AcceptorMessage)>,
    /// This node's lowest durable consumer slot position (INVALID: none),
    /// an input from the driver, which owns the slots: AppendResponses
    /// carry it when released.
    slot_horizon: Lsn,
    /// Why storing this timeline's writes failed (`on_storage_failed`):
    /// what is on disk may then lack writes this state counts, so nothing
    /// more is answered or accepted until a restart reloads the store.
    failed: Option<String>,
    pub faults: AcceptorFaults,
}

impl Acceptor {
    /// Resume a timeline from its stored state.
    pub fn restore(node_id: NodeId, state: TimelineState) -> Acceptor {
        Acceptor {
            node_id,
            synced_commit_lsn: state.commit_lsn,
            state,
            last_seq: 0,
            last_sync_seq: 0,
            persisted: 0,
            held: VecDeque::new(),
            slot_horizon: Lsn::INVALID,
            failed: None,
            faults: AcceptorFaults::default(),
        }
    }

    /// Number `effects` as the next ready set and hold its reply.
    fn ready(&mut self, effects: Effects) -> Ready {
        self.last_seq += 1;
        let seq = self.last_seq;
        let sync = !effects.lazy && !effects.writes.is_empty();
        if sync {
            self.last_sync_seq = seq;
        }
        let waits_for = if self.faults.reply_before_persisted {
            0
        } else {
            self.last_sync_seq
        };
        let holds_reply = effects.reply.is_some();
        if let Some(reply) = effects.reply {
            self.held.push_back((seq, waits_for, reply));
        }
        Ready {
            seq,
            writes: effects.writes,
            sync,
            waits_for,
            holds_reply,
            events: effects.events,
        }
    }

    /// The driver's report that the writes of every ready set up to `seq`
    /// that must be synced are durable (a later call with a lower `seq`
    /// changes nothing). Returns the replies that may go out now, in
    /// order: those whose `waits_for` is durable. After a storage failure,
    /// none.
    pub fn on_persisted(&mut self, seq: Seq) -> Vec<Reply> {
        self.persisted = self.persisted.max(seq.min(self.last_seq));
        if self.failed.is_some() {
            return Vec::new();
        }
        let mut out = Vec::new();
        while let Some((_, waits_for, _)) = self.held.front() {
            if *waits_for > self.persisted {
                break;
            }
            let (seq, _, mut msg) = self.held.pop_front().expect("front checked");
            if let AcceptorMessage::Append(a) = &mut msg {
                a.slot_horizon_lsn = self.slot_horizon;
            }
            out.push(Reply { seq, msg });
        }
        out
    }

    /// The reply held for ready set `seq`, not released yet (for tests and
    /// tracing; it is not to be sent).
    pub fn held_reply(&self, seq: Seq) -> Option<&AcceptorMessage> {
        self.held.iter().find(|h| h.0 == seq).map(|h| &h.2)
    }

    /// Set this node's slot horizon (its lowest durable consumer slot
    /// position, INVALID: none): replies released from now on report it.
    pub fn set_slot_horizon(&mut self, lsn: Lsn) {
        self.slot_horizon = lsn;
    }

    /// Storing a write of this timeline, or syncing it, failed: the disk may
    /// lack writes the state here counts, so the timeline fails closed. No
    /// held reply goes out, every later message is refused
    /// ([`Refusal::StorageFailed`]) and nothing more is written, until the
    /// driver restores the acceptor from what storage holds (a restart).
    pub fn on_storage_failed(&mut self, reason: &str) {
        self.held.clear();
        self.failed.get_or_insert_with(|| reason.to_string());
    }

    /// Why the timeline failed closed, if it did (see `on_storage_failed`).
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn check_not_failed(&self) -> Result<(), Refusal> {
        match &self.failed {
            Some(reason) => Err(Refusal::StorageFailed {
                ttid: self.state.ttid,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Answer a greeting for a timeline this node does not hold: create it if
    /// asked to.
    pub fn create(node_id: NodeId, g: &Greeting) -> Result<(Acceptor, Ready), Refusal> {
        if !g.create {
            return Err(Refusal::UnknownTimeline(g.ttid));
        }
        check_protocol(g)?;
        check_greeting_limits(g)?;
        if !g.members.contains_key(&node_id)
            && !g.conf.as_ref().is_some_and(|c| c.contains(node_id))
        {
            return Err(Refusal::NotAMember {
                ttid: g.ttid,
                node: node_id,
                members: members_text(&g.members),
            });
        }
        if !crate::lsn::is_valid_wal_seg_size(g.server.wal_seg_size) {
            return Err(Refusal::Mismatch {
                ttid: g.ttid,
                field: "wal_seg_size (must be a power of two from 1 MiB to 1 GiB)",
                stored: "-".into(),
                proposed: g.server.wal_seg_size.to_string(),
            });
        }
        if !g.timeline_start_lsn.is_segment_start(g.server.wal_seg_size) {
            return Err(Refusal::StartNotSegmentAligned {
                ttid: g.ttid,
                lsn: g.timeline_start_lsn,
            });
        }
        // A new timeline starts with the proposer's members; a member
        // added by a change (a learner first) stores the configuration in
        // force, which may not name it yet.
        let conf = g
            .conf
            .clone()
            .unwrap_or_else(|| Configuration::initial(g.members.clone()));
        let state = TimelineState {
            ttid: g.ttid,
            server: g.server,
            members: conf.members,
            timeline_start_lsn: g.timeline_start_lsn,
            local_start_lsn: g.timeline_start_lsn,
            term: 0,
            term_history: TermHistory::empty(),
            flush_lsn: g.timeline_start_lsn,
            commit_lsn: g.timeline_start_lsn,
            peer_horizon_lsn: Lsn::INVALID,
            slot_horizon_lsn: Lsn::INVALID,
            settled_term: 0,
            settled_lsn: Lsn::INVALID,
            pg_ancestors: g.pg_ancestors.clone(),
            membership: Membership {
                generation: conf.generation,
                next: conf.next,
                left: false,
            },
        };
        let mut acceptor = Acceptor::restore(node_id, state);
        let effects = Effects {
            writes: vec![acceptor.put_state()],
            reply: Some(acceptor.greeting_reply()),
            events: vec![Event::TimelineCreated],
            lazy: false,
        };
        let ready = acceptor.ready(effects);
        Ok((acceptor, ready))
    }

    pub fn state(&self) -> &TimelineState {
        &self.state
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn ttid(&self) -> Ttid {
        self.state.ttid
    }

    /// The state record, for a write that is synced before its reply.
    fn put_state(&mut self) -> Write {
        self.synced_commit_lsn = self.state.commit_lsn;
        self.put_state_lazy()
    }

    /// The state record, for a lazy write (not synced before its reply).
    fn put_state_lazy(&self) -> Write {
        Write::PutState(Box::new(self.state.clone()))
    }

    fn greeting_reply(&self) -> AcceptorMessage {
        AcceptorMessage::Greeting(AcceptorGreeting {
            protocol_version: PROTOCOL_VERSION,
            node_id: self.node_id,
            term: self.state.term,
            conf: self.state.configuration(),
        })
    }

    /// Handle one proposer message: the ready set of its writes, its reply
    /// held until [`Acceptor::on_persisted`] covers them.
    pub fn handle(&mut self, msg: &ProposerMessage) -> Result<Ready, Refusal> {
        self.check_not_failed()?;
        let effects = self.handle_message(msg)?;
        Ok(self.ready(effects))
    }

    fn handle_message(&mut self, msg: &ProposerMessage) -> Result<Effects, Refusal> {
        match msg {
            ProposerMessage::Greeting(g) => self.handle_greeting(g),
            ProposerMessage::VoteRequest(m) => self.handle_vote_request(m),
            ProposerMessage::Elected(m) => self.handle_elected(m),
            ProposerMessage::Append(m) => self.handle_append(m),
            ProposerMessage::Reseed(m) => self.handle_reseed(m),
            ProposerMessage::Configure(m) => self.handle_configure(m),
        }
    }

    /// A removed node votes for no proposer (nor is it in any new term).
    fn check_not_left(&self) -> Result<(), Refusal> {
        if self.state.membership.left {
            return Err(Refusal::Left {
                ttid: self.state.ttid,
                node: self.node_id,
                generation: self.state.membership.generation,
            });
        }
        Ok(())
    }

    /// A proposer counting by an older configuration than the one stored
    /// here missed a change: a majority it counts may not intersect the
    /// majorities of the configurations in force since.
    fn check_generation(&self, proposed: Generation) -> Result<(), Refusal> {
        let own = self.state.membership.generation;
        if proposed < own {
            return Err(Refusal::StaleGeneration {
                ttid: self.state.ttid,
                own,
                proposed,
            });
        }
        Ok(())
    }

    /// Store a configuration made by this term's leader (after its
    /// Elected, newer than the stored one, or the same again), synced
    /// before the reply. A configuration that does not name this node,
    /// which the one before did, means it was removed: it is left.
    fn handle_configure(&mut self, m: &super::messages::Configure) -> Result<Effects, Refusal> {
        if m.term < self.state.term {
            return Ok(Effects {
                reply: Some(self.append_response()),
                ..Effects::default()
            });
        }
        let s = &self.state;
        let ttid = s.ttid;
        limits::check_members(&m.conf.voters()).map_err(|limit| Refusal::TooLarge {
            ttid,
            message: "Configure",
            limit,
        })?;
        let last = s.term_history.last().map_or(0, |e| e.term);
        let stored = s.configuration();
        let same = m.conf == stored;
        if m.term != s.term
            || last != m.term
            || m.conf.members.is_empty()
            || (!same && m.conf.generation <= stored.generation)
        {
            return Err(Refusal::BadConfigure {
                ttid,
                generation: m.conf.generation,
                proposed: m.term,
                own: s.term,
                last,
                stored: stored.generation,
            });
        }
        let mut effects = Effects::default();
        if !same {
            let was_member = stored.contains(self.node_id);
            self.state.members = m.conf.members.clone();
            self.state.membership = Membership {
                generation: m.conf.generation,
                next: m.conf.next.clone(),
                left: self.state.membership.left || (was_member && !m.conf.contains(self.node_id)),
            };
            effects.events.push(Event::Configured {
                generation: m.conf.generation,
                left: self.state.membership.left,
            });
            effects.writes.push(self.put_state());
        }
        effects.reply = Some(self.append_response());
        Ok(effects)
    }

    /// A greeting for a timeline this node holds: every field must agree.
    fn handle_greeting(&mut self, g: &Greeting) -> Result<Effects, Refusal> {
        let s = &self.state;
        let ttid = s.ttid;
        check_protocol(g)?;
        check_greeting_limits(g)?;
        let mismatch = |field: &'static str, stored: String, proposed: String| Refusal::Mismatch {
            ttid,
            field,
            stored,
            proposed,
        };
        if g.ttid != ttid {
            return Err(mismatch("timeline", ttid.to_string(), g.ttid.to_string()));
        }
        if g.server.system_id != s.server.system_id {
            return Err(mismatch(
                "system_id",
                s.server.system_id.to_string(),
                g.server.system_id.to_string(),
            ));
        }
        if g.server.wal_seg_size != s.server.wal_seg_size {
            return Err(mismatch(
                "wal_seg_size",
                s.server.wal_seg_size.to_string(),
                g.server.wal_seg_size.to_string(),
            ));
        }
        if g.server.pg_version / 10000 != s.server.pg_version / 10000 {
            return Err(mismatch(
                "pg_version",
                s.server.pg_version.to_string(),
                g.server.pg_version.to_string(),
            ));
        }
        // The same PostgreSQL timeline, or a descendant of it (a promoted
        // standby): whether its switch point is safe is decided at Elected.
        // TLI 0 claims none (`--sync-only`, which has no primary).
        if g.server.tli != 0 {
            pg_timeline::switch_point(s.server.tli, &s.pg_ancestors, g.server.tli, &g.pg_ancestors)
                .map_err(|error| Refusal::PgTimeline { ttid, error })?;
        }
        // timeline_start_lsn is fixed at creation and learnt by proposers
        // from the votes: a later proxy's slot has moved on, so a greeting's
        // value for an existing timeline is not compared. Nor is its member
        // list: a list other than the stored one asks for a change (3.13),
        // which only a leader elected by the stored configuration makes.
        // Nor is the proposer's generation: the reply tells it the stored
        // configuration, which it learns before it asks for votes, where
        // an older generation is refused. A removed node answers too, so a
        // proposer learns the configuration that removed it.
        Ok(Effects {
            writes: vec![],
            reply: Some(self.greeting_reply()),
            events: vec![],
            lazy: false,
        })
    }

    fn handle_vote_request(&mut self, m: &VoteRequest) -> Result<Effects, Refusal> {
        if !limits::is_term_jump_allowed(self.state.term, m.term) {
            return Err(Refusal::TermJump {
                ttid: self.state.ttid,
                own: self.state.term,
                proposed: m.term,
            });
        }
        self.check_not_left()?;
        self.check_generation(m.generation)?;
        let mut effects = Effects::default();
        let granted = m.term > self.state.term;
        if granted {
            effects.events.push(Event::TermChanged {
                from: self.state.term,
                to: m.term,
            });
            self.state.term = m.term;
            // The promise must be durable before the reply; pending WAL is
            // flushed by the same sync since writes are applied in order.
            effects.writes.push(self.put_state());
        }
        effects.reply = Some(AcceptorMessage::Vote(VoteResponse {
            term: self.state.term,
            granted,
            flush_lsn: self.state.flush_lsn,
            commit_lsn: self.synced_commit_lsn,
            term_history: self.state.term_history.up_to(self.state.flush_lsn),
            timeline_start_lsn: self.state.timeline_start_lsn,
            tli: self.state.server.tli,
            pg_ancestors: self.state.pg_ancestors.clone(),
        }));
        Ok(effects)
    }

    /// The point this node would truncate to for a proposer with `history`.
    pub fn divergence_point(&self, history: &TermHistory) -> Option<Lsn> {
        let s = &self.state;
        if s.term_history.up_to(s.flush_lsn).entries().is_empty() {
            // No WAL written under any term here: the log is empty and
            // everything from its start can be taken.
            return Some(s.flush_lsn);
        }
        s.term_history.highest_common_point(s.flush_lsn, history)
    }

    fn handle_elected(&mut self, m: &Elected) -> Result<Effects, Refusal> {
        let ttid = self.state.ttid;
        if m.term != self.state.term {
            return Err(Refusal::ElectedWrongTerm {
                ttid,
                own: self.state.term,
                proposed: m.term,
            });
        }
        limits::check_history(&m.term_history)
            .and_then(|()| limits::check_pg_history(&m.pg_ancestors))
            .map_err(|limit| Refusal::TooLarge {
                ttid,
                message: "Elected",
                limit,
            })?;
        if !m.term_history.is_well_formed() || m.term_history.last().map(|e| e.term) != Some(m.term)
        {
            return Err(Refusal::BadHistory { ttid, term: m.term });
        }
        let computed = self.divergence_point(&m.term_history);
        // With no common term at all, the whole local log goes.
        let point = computed.unwrap_or(self.state.timeline_start_lsn);
        if point != m.start_streaming_at {
            return Err(Refusal::DivergenceMismatch {
                ttid,
                proposed: m.start_streaming_at,
                computed,
                flush: self.state.flush_lsn,
            });
        }
        if point < self.state.commit_lsn {
            return Err(Refusal::TruncateBelowCommit {
                ttid,
                to: point,
                commit: self.state.commit_lsn,
            });
        }
        if point < self.state.local_start_lsn {
            return Err(Refusal::TruncateBelowLocalStart {
                ttid,
                to: point,
                local_start: self.state.local_start_lsn,
            });
        }
        let switch = self.check_switch(m, point)?;
        let mut effects = Effects::default();
        if let Some(at) = switch {
            self.state.server.tli = m.pg_tli;
            self.state.pg_ancestors = m.pg_ancestors.clone();
            effects
                .events
                .push(Event::PgTimelineSwitched { tli: m.pg_tli, at });
        }
        if point < self.state.flush_lsn {
            effects.events.push(Event::Truncated {
                from_flush: self.state.flush_lsn,
                to: point,
            });
            effects.writes.push(Write::TruncateWal { from: point });
        }
        self.state.flush_lsn = point;
        self.state.term_history = m.term_history.clone();
        effects.writes.push(self.put_state());
        // Elected has no reply of its own: the first AppendResponse tells the
        // proposer where this node stands.
        effects.reply = Some(self.append_response());
        Ok(effects)
    }

    /// An Elected whose PostgreSQL timeline is newer than this node's: the
    /// switch point must descend from the stored chain and lie at or above
    /// both `commit_lsn` (committed WAL is never replaced by the new
    /// timeline's) and the log kept after truncation to `point`.
    fn check_switch(&self, m: &Elected, point: Lsn) -> Result<Option<Lsn>, Refusal> {
        let s = &self.state;
        if m.pg_tli == 0 || m.pg_tli == s.server.tli {
            return Ok(None);
        }
        let ttid = s.ttid;
        pg_timeline::check_ancestors(&m.pg_ancestors, m.pg_tli)
            .map_err(|_| Refusal::BadHistory { ttid, term: m.term })?;
        let at =
            pg_timeline::switch_point(s.server.tli, &s.pg_ancestors, m.pg_tli, &m.pg_ancestors)
                .map_err(|error| Refusal::PgTimeline { ttid, error })?
                .unwrap_or(point);
        if at < s.commit_lsn.max(point) {
            return Err(Refusal::SwitchBelowCommit {
                ttid,
                tli: m.pg_tli,
                at,
                commit: s.commit_lsn,
                kept: point,
            });
        }
        Ok(Some(at))
    }

    fn append_response(&self) -> AcceptorMessage {
        AcceptorMessage::Append(AppendResponse {
            term: self.state.term,
            flush_lsn: self.state.flush_lsn,
            commit_lsn: self.synced_commit_lsn,
            // Filled in when released (`on_persisted`).
            slot_horizon_lsn: self.slot_horizon,
            local_start_lsn: self.state.local_start_lsn,
        })
    }

    /// Restart the log at `m.start_lsn`. Safe because the proposer sends it
    /// only after this term's Elected, so everything held here is a prefix
    /// of the proposer's log, and `start_lsn` is committed: nothing dropped
    /// is needed by a future leader, and WAL below `start_lsn` is simply not
    /// held here any more, as after a trim.
    fn handle_reseed(&mut self, m: &Reseed) -> Result<Effects, Refusal> {
        if m.term < self.state.term {
            // A stale proposer, as for an append: the reply's term tells it
            // to step down.
            return Ok(Effects {
                reply: Some(self.append_response()),
                ..Effects::default()
            });
        }
        let s = &self.state;
        let last = s.term_history.last().map_or(0, |e| e.term);
        if m.term != s.term || last != m.term || m.start_lsn <= s.flush_lsn {
            return Err(Refusal::BadReseed {
                ttid: s.ttid,
                start: m.start_lsn,
                proposed: m.term,
                own: s.term,
                last,
                flush: s.flush_lsn,
            });
        }
        let from_flush = s.flush_lsn;
        self.state.local_start_lsn = m.start_lsn;
        self.state.flush_lsn = m.start_lsn;
        self.state.commit_lsn = m.start_lsn;
        Ok(Effects {
            writes: vec![Write::TrimWal { below: m.start_lsn }, self.put_state()],
            reply: Some(self.append_response()),
            events: vec![Event::Reseeded {
                from_flush,
                to: m.start_lsn,
            }],
            lazy: false,
        })
    }

    fn handle_append(&mut self, m: &AppendRequest) -> Result<Effects, Refusal> {
        let ttid = self.state.ttid;
        if m.term < self.state.term {
            // A stale proposer: tell it the current term so it steps down.
            return Ok(Effects {
                reply: Some(self.append_response()),
                ..Effects::default()
            });
        }
        if m.term > self.state.term {
            return Err(Refusal::AppendFromUnknownTerm {
                ttid,
                own: self.state.term,
                proposed: m.term,
            });
        }
        let last = self.state.term_history.last().map_or(0, |e| e.term);
        if last != m.term && !self.faults.accept_append_before_elected {
            return Err(Refusal::AppendBeforeElected {
                ttid,
                own: self.state.term,
                proposed: m.term,
                last,
            });
        }
        if m.begin_lsn != self.state.flush_lsn {
            return Err(Refusal::AppendNotContiguous {
                ttid,
                begin: m.begin_lsn,
                expected: self.state.flush_lsn,
            });
        }
        let mut effects = Effects::default();
        let mut changed = false;
        let with_wal = !m.wal.is_empty();
        if with_wal {
            effects.writes.push(Write::AppendWal {
                begin: m.begin_lsn,
                bytes: m.wal.clone(),
            });
            self.state.flush_lsn = m.end_lsn;
        }
        let commit = self
            .state
            .commit_lsn
            .max(m.commit_lsn.min(self.state.flush_lsn));
        if commit != self.state.commit_lsn {
            self.state.commit_lsn = commit;
            changed = true;
        }
        // The proposer sends a peer horizon only once every member has
        // answered in this term, and the slot horizon beside it then covers
        // every member's slots (INVALID: no slot anywhere). Without one the
        // horizons are unknown and keep their last durable values: a member
        // not heard from may hold a slot or lag anywhere above them.
        let covers_every_member = m.peer_horizon_lsn.is_valid();
        if covers_every_member && m.peer_horizon_lsn != self.state.peer_horizon_lsn {
            self.state.peer_horizon_lsn = m.peer_horizon_lsn;
            changed = true;
        }
        if (covers_every_member || self.faults.store_unknown_slot_horizon)
            && m.slot_horizon_lsn != self.state.slot_horizon_lsn
        {
            self.state.slot_horizon_lsn = m.slot_horizon_lsn;
            changed = true;
        }
        if with_wal {
            // New WAL: the reply's flush_lsn needs this write synced.
            let w = self.put_state();
            effects.writes.push(w);
        } else if changed {
            // Only commit_lsn or horizons moved (the heartbeat the proposer
            // sends on every commit advance): no fsync of its own; it rides
            // along with the next synced batch.
            effects.writes.push(self.put_state_lazy());
            effects.lazy = true;
        } else if self.state.commit_lsn != self.synced_commit_lsn {
            // A heartbeat with nothing new while a lazily written commit is
            // not known to be synced: sync it now, so an idle timeline's
            // replies (and `--sync-only`) catch up with its commit.
            let w = self.put_state();
            effects.writes.push(w);
        }
        effects.reply = Some(self.append_response());
        Ok(effects)
    }

    /// Record that `--sync-only` settled this node in `term` at `lsn`. Only
    /// true while this node is still in that term and holds and has
    /// committed `lsn`; otherwise the reason it is not. Returns the write.
    pub fn settle(&mut self, term: Term, lsn: Lsn) -> Result<Ready, String> {
        let s = &self.state;
        if let Some(reason) = &self.failed {
            return Err(format!(
                "timeline {}: storing failed earlier: {reason}",
                s.ttid
            ));
        }
        if s.term != term {
            return Err(format!(
                "timeline {}: settled in term {term}, but this node is in term {}",
                s.ttid, s.term
            ));
        }
        if s.flush_lsn < lsn || s.commit_lsn < lsn {
            return Err(format!(
                "timeline {}: settled at {lsn}, but this node holds WAL to {} and commit_lsn {}",
                s.ttid, s.flush_lsn, s.commit_lsn
            ));
        }
        self.state.settled_term = term;
        self.state.settled_lsn = lsn;
        let writes = vec![self.put_state()];
        Ok(self.ready(Effects {
            writes,
            ..Effects::default()
        }))
    }

    /// Remove the WAL below `below` (never past `commit_lsn`). The daemon
    /// passes segment starts (see [`trim_point`]); the simulation trims at
    /// any LSN. Returns None when nothing would be removed (or the
    /// timeline failed closed); else a ready set without a reply, synced.
    pub fn trim(&mut self, below: Lsn) -> Option<Ready> {
        let below = below.min(self.state.commit_lsn);
        if below <= self.state.local_start_lsn || self.failed.is_some() {
            return None;
        }
        self.state.local_start_lsn = below;
        let writes = vec![Write::TrimWal { below }, self.put_state()];
        Some(self.ready(Effects {
            writes,
            ..Effects::default()
        }))
    }
}

/// Where retention trims for a removal `horizon`: the start of the segment
/// holding `min(horizon, commit)`, since clients always ask from a segment
/// start.
pub fn trim_point(state: &TimelineState, horizon: Lsn) -> Lsn {
    horizon
        .min(state.commit_lsn)
        .segment_start(state.server.wal_seg_size)
}

fn check_protocol(g: &Greeting) -> Result<(), Refusal> {
    if g.protocol_version != PROTOCOL_VERSION {
        return Err(Refusal::ProtocolVersion {
            ttid: g.ttid,
            proposed: g.protocol_version,
        });
    }
    Ok(())
}

/// A greeting's member map is stored with the timeline: it must fit.
fn check_greeting_limits(g: &Greeting) -> Result<(), Refusal> {
    limits::check_members(&g.members)
        .and_then(|()| limits::check_pg_history(&g.pg_ancestors))
        .map_err(|limit| Refusal::TooLarge {
            ttid: g.ttid,
            message: "Greeting",
            limit,
        })
}

fn members_text(members: &Members) -> String {
    let ids: Vec<String> = members.keys().map(|n| n.0.to_string()).collect();
    format!("{{{}}}", ids.join(","))
}

/// Helper for tests and the simulation: a history entry.
pub fn term_lsn(term: Term, lsn: u64) -> TermLsn {
    TermLsn {
        term,
        lsn: Lsn(lsn),
    }
}

#[cfg(test)]
mod ready_tests {
    use super::*;

    const START: u64 = 0x0100_0000;

    fn greeting() -> Greeting {
        Greeting {
            conf: None,
            protocol_version: PROTOCOL_VERSION,
            ttid: Ttid::default(),
            server: ServerInfo {
                system_id: 42,
                pg_version: 150018,
                wal_seg_size: 16 << 20,
                tli: 1,
            },
            timeline_start_lsn: Lsn(START),
            members: [(NodeId(1), "a:1".to_string())].into_iter().collect(),
            proposer_id: [1; 16],
            create: true,
            pg_ancestors: Vec::new(),
        }
    }

    fn append(begin: u64, wal: &[u8], commit: u64) -> ProposerMessage {
        ProposerMessage::Append(AppendRequest {
            term: 1,
            begin_lsn: Lsn(begin),
            end_lsn: Lsn(begin + wal.len() as u64),
            commit_lsn: Lsn(commit),
            peer_horizon_lsn: Lsn::INVALID,
            slot_horizon_lsn: Lsn::INVALID,
            wal: Bytes::copy_from_slice(wal),
        })
    }

    /// An acceptor elected in term 1 with everything so far persisted.
    fn elected() -> Acceptor {
        let (mut a, ready) = Acceptor::create(NodeId(1), &greeting()).unwrap();
        let _ = a.on_persisted(ready.seq);
        let vote = a
            .handle(&ProposerMessage::VoteRequest(VoteRequest::new(1)))
            .unwrap();
        let elected = a
            .handle(&ProposerMessage::Elected(Elected {
                term: 1,
                start_streaming_at: Lsn(START),
                term_history: TermHistory(vec![term_lsn(1, START)]),
                pg_tli: 0,
                pg_ancestors: Vec::new(),
            }))
            .unwrap();
        assert!(vote.seq < elected.seq);
        assert_eq!(a.on_persisted(elected.seq).len(), 2);
        a
    }

    fn flush_of(r: &Reply) -> Lsn {
        match &r.msg {
            AcceptorMessage::Append(a) => a.flush_lsn,
            other => panic!("expected an append response, got {other:?}"),
        }
    }

    #[test]
    fn a_reply_is_withheld_until_its_ready_set_is_persisted() {
        let mut a = elected();
        let r = a.handle(&append(START, b"ab", START)).unwrap();
        assert!(r.sync && r.holds_reply && r.waits_for == r.seq);
        assert!(a.on_persisted(r.seq - 1).is_empty());
        assert!(a.held_reply(r.seq).is_some());
        let out = a.on_persisted(r.seq);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].seq, flush_of(&out[0])), (r.seq, Lsn(START + 2)));
        // Released once only.
        assert!(a.on_persisted(r.seq).is_empty());
    }

    #[test]
    fn a_later_persisted_set_releases_the_earlier_ones_in_order() {
        let mut a = elected();
        let r1 = a.handle(&append(START, b"ab", START)).unwrap();
        let r2 = a.handle(&append(START + 2, b"cd", START)).unwrap();
        let r3 = a.handle(&append(START + 4, b"ef", START)).unwrap();
        assert!(a.on_persisted(r1.seq - 1).is_empty());
        let out = a.on_persisted(r2.seq);
        let seqs: Vec<Seq> = out.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![r1.seq, r2.seq]);
        assert_eq!(flush_of(&out[1]), Lsn(START + 4));
        assert_eq!(a.on_persisted(r3.seq + 10).len(), 1, "beyond the last set");
    }

    #[test]
    fn a_lazy_reply_waits_only_for_the_synced_sets_before_it() {
        let mut a = elected();
        let wal = a.handle(&append(START, b"ab", START)).unwrap();
        // A commit-only heartbeat: lazy, its reply waits for the append.
        let beat = a.handle(&append(START + 2, b"", START + 2)).unwrap();
        assert!(!beat.sync && !beat.writes.is_empty());
        assert_eq!(beat.waits_for, wal.seq);
        assert!(a.on_persisted(wal.seq - 1).is_empty());
        let out = a.on_persisted(wal.seq);
        assert_eq!(
            out.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [wal.seq, beat.seq]
        );
        // Its reply claims the commit only a synced write recorded.
        match &out[1].msg {
            AcceptorMessage::Append(r) => assert_eq!(r.commit_lsn, Lsn(START)),
            other => panic!("{other:?}"),
        }
        // With everything before it durable, a lazy reply goes at once,
        // though its own write is not synced.
        let beat2 = a
            .handle(&ProposerMessage::Append(AppendRequest {
                peer_horizon_lsn: Lsn(START + 1),
                ..match append(START + 2, b"", START + 2) {
                    ProposerMessage::Append(m) => m,
                    _ => unreachable!(),
                }
            }))
            .unwrap();
        assert!(!beat2.sync && beat2.waits_for == wal.seq);
        assert_eq!(a.on_persisted(wal.seq).len(), 1);
    }

    #[test]
    fn the_slot_horizon_is_an_input_released_replies_carry() {
        let mut a = elected();
        let r = a.handle(&append(START, b"ab", START)).unwrap();
        a.set_slot_horizon(Lsn(START + 1));
        match &a.on_persisted(r.seq)[0].msg {
            AcceptorMessage::Append(m) => assert_eq!(m.slot_horizon_lsn, Lsn(START + 1)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn after_a_storage_failure_nothing_is_released_or_accepted() {
        let mut a = elected();
        let r = a.handle(&append(START, b"ab", START)).unwrap();
        a.on_storage_failed("sync failed");
        assert!(a.on_persisted(r.seq).is_empty());
        assert!(matches!(
            a.handle(&append(START + 2, b"cd", START)),
            Err(Refusal::StorageFailed { .. })
        ));
        assert!(a.trim(Lsn(START + 1)).is_none());
        assert!(a.settle(1, Lsn(START)).is_err());
    }

    #[test]
    fn the_deliberate_bug_releases_before_persisted() {
        let mut a = elected();
        a.faults.reply_before_persisted = true;
        let r = a.handle(&append(START, b"ab", START)).unwrap();
        assert_eq!(r.waits_for, 0);
        assert_eq!(a.on_persisted(0).len(), 1);
    }
}
