//! The proposer/acceptor messages (ARCHITECTURE.md, "3. The consensus
//! protocol as implemented"; schema/wire-messages.md). They travel inside CopyData
//! after `START_WAL_PUSH`; `crate::codec` turns them into bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::membership::{Configuration, Generation};
use super::pg_timeline::PgAncestors;
use super::term_history::{Term, TermHistory};
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;

/// The timeline's members: node id → address (`HOST:PORT`). Acceptors compare
/// the id set; addresses may change without a membership change.
pub type Members = BTreeMap<NodeId, String>;

/// What PostgreSQL says about the cluster the WAL comes from. Fixed when a
/// timeline is created; a proposer that disagrees is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub system_id: u64,
    pub pg_version: u32,
    pub wal_seg_size: u32,
    /// PostgreSQL's timeline (TLI), not ours.
    pub tli: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Greeting {
    pub protocol_version: u32,
    pub ttid: Ttid,
    pub server: ServerInfo,
    pub timeline_start_lsn: Lsn,
    pub members: Members,
    /// Identifies the proposer process in logs (random per start).
    pub proposer_id: [u8; 16],
    /// Create the timeline if this acceptor does not have it.
    pub create: bool,
    /// The ancestors of `server.tli` (the primary's history file): an
    /// acceptor holding one of them takes the greeting (protocol 3).
    pub pg_ancestors: PgAncestors,
    /// The configuration the proposer counts by, once it learnt one from a
    /// member (None: not yet). An acceptor of a newer generation refuses
    /// it; a learner created by this greeting stores it (protocol 4).
    pub conf: Option<Configuration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    pub term: Term,
    /// The generation of the configuration the proposer counts votes by:
    /// refused by an acceptor of a newer one (protocol 4).
    pub generation: Generation,
}

impl VoteRequest {
    /// A vote request of a proposer counting by the initial configuration.
    pub fn new(term: Term) -> VoteRequest {
        VoteRequest {
            term,
            generation: Generation::INITIAL,
        }
    }
}

/// Store a configuration made by the leader of `term` (a membership
/// change, ARCHITECTURE.md 3.13). Sent after Elected in the same term;
/// answered with an AppendResponse once stored (synced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configure {
    pub term: Term,
    pub conf: Configuration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elected {
    pub term: Term,
    /// Where this acceptor's log and the proposer's diverge; the acceptor
    /// truncates to it and appends continue from it.
    pub start_streaming_at: Lsn,
    /// The proposer's history, ending with (term, term_start_lsn).
    pub term_history: TermHistory,
    /// The PostgreSQL timeline this term's WAL continues (0: no claim, the
    /// acceptor keeps its own) and its ancestors: the primary's, or without
    /// one (`--sync-only`) the donor's.
    /// A newer one than the acceptor's is a switch: recorded here, and
    /// taken only if the switch point is at or above its commit_lsn and
    /// its log after truncation (protocol 3).
    pub pg_tli: u32,
    pub pg_ancestors: PgAncestors,
}

/// Restart an acceptor's log at `start_lsn`: it drops the WAL it holds and
/// continues from there, its `local_start_lsn` moving there. Sent after
/// Elected in the same term to a node that needs WAL no reachable member
/// still holds (trimmed everywhere past `--max-wal-keep`). `start_lsn` is
/// committed and above the node's flush_lsn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reseed {
    pub term: Term,
    pub start_lsn: Lsn,
}

/// Encoded by hand in `codec` so the WAL bytes travel raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendRequest {
    pub term: Term,
    pub begin_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// Lowest flush LSN among all members, once every member has reported in
    /// this term; `Lsn::INVALID` until then. WAL below it is held by everyone.
    pub peer_horizon_lsn: Lsn,
    /// Lowest durable consumer slot position across all safekeepers, sent
    /// together with the peer horizon: only with a valid peer horizon does
    /// it cover every member's slots, and then `Lsn::INVALID` means no
    /// safekeeper has a slot. With an INVALID peer horizon both are unknown
    /// and the acceptor keeps the ones it stored last.
    pub slot_horizon_lsn: Lsn,
    /// WAL `[begin_lsn, end_lsn)`; empty for a heartbeat.
    pub wal: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposerMessage {
    Greeting(Greeting),
    VoteRequest(VoteRequest),
    Elected(Elected),
    Append(AppendRequest),
    Reseed(Reseed),
    Configure(Configure),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptorGreeting {
    pub protocol_version: u32,
    pub node_id: NodeId,
    pub term: Term,
    /// The configuration this node stored last (protocol 4).
    pub conf: Configuration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteResponse {
    pub term: Term,
    pub granted: bool,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// Cut at `flush_lsn`: entries for WAL this node lacks say nothing.
    pub term_history: TermHistory,
    pub timeline_start_lsn: Lsn,
    /// The PostgreSQL timeline this node's WAL ends on and its ancestors
    /// (protocol 3): a proposer without a primary (`--sync-only`) hands the
    /// donor's on in Elected, so a node that missed a switch learns it.
    pub tli: u32,
    pub pg_ancestors: PgAncestors,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResponse {
    pub term: Term,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// This safekeeper's lowest durable slot position (`Lsn::INVALID`: none).
    pub slot_horizon_lsn: Lsn,
    /// First LSN still stored here: a recovery read from this node can
    /// start no lower.
    pub local_start_lsn: Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcceptorMessage {
    Greeting(AcceptorGreeting),
    Vote(VoteResponse),
    Append(AppendResponse),
}

impl AcceptorMessage {
    pub fn term(&self) -> Term {
        match self {
            AcceptorMessage::Greeting(m) => m.term,
            AcceptorMessage::Vote(m) => m.term,
            AcceptorMessage::Append(m) => m.term,
        }
    }
}
