//! The proposer: the proxy's side of the consensus protocol, as a pure state
//! machine (ARCHITECTURE.md,
//! "3. The consensus protocol as implemented").
//!
//! It owns no sockets and no clock. The driver (the proxy, or the
//! simulation) tells it about connections (`on_connected`,
//! `on_disconnected`), hands it every acceptor message (`on_message`), the
//! time (`on_tick`), new WAL from the primary (`push_wal`) and the results of
//! recovery reads; each call returns [`Action`]s to carry out in order.
//! Calls other than `on_tick` use the time of the last tick.
//!
//! Connections are named by the node id configured for their address: the
//! driver dials `members[node]` and the greeting must come back from `node`.
//! Every proposer message gets exactly one reply (unless the acceptor
//! refuses it and closes), and a connection is FIFO, so each reply answers
//! the oldest unanswered request: that is how an AppendResponse is known to
//! come after this term's Elected on that connection.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::limits;
use super::membership::{self, Configuration, Generation};
use super::messages::*;
use super::pg_timeline::PgAncestors;
use super::primary_check::{Gate, PrimaryOrigin, PrimaryRefusal, RewindAsk};
use super::settle::Settle;
use super::term_history::{Term, TermHistory, TermLsn};
use crate::codec::{MAX_APPEND_WAL, PROTOCOL_VERSION};
use crate::id::{NodeId, Ttid};

/// Milliseconds between heartbeats unless configured otherwise; push
/// connections promise it to the safekeepers (`serving::HEARTBEAT_OPTION`).
pub const DEFAULT_HEARTBEAT_MS: u64 = 1000;
use crate::lsn::Lsn;

mod primary_gate;
mod settling;

/// Deliberate bugs, switched on only by tests that check the simulation's
/// invariant checker catches them. Always off in the proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProposerFaults {
    /// Pick the donor by flush_lsn alone, ignoring last_log_term.
    pub donor_ignores_last_log_term: bool,
    /// Re-seed a node at its source's flush_lsn (which may be uncommitted)
    /// instead of the lowest LSN a source still holds.
    pub reseed_at_source_flush: bool,
    /// Every greeting asks to create the timeline when `create` is set, and
    /// the positions a node reported are kept over its reconnects: a wiped
    /// node is re-created at term 0, votes again and is counted.
    pub create_on_every_greeting: bool,
    /// While a membership change is joint, count commits by the new member
    /// set alone (not by a majority of the old one too).
    pub joint_counts_new_alone: bool,
    /// The primary check compares only the first half of its range: a
    /// primary whose history diverged near term_start is taken.
    pub accept_diverged_primary: bool,
    /// `--sync-only` is done once any one member settled.
    pub settle_counts_minority: bool,
}

#[derive(Debug, Clone)]
pub struct ProposerConfig {
    pub ttid: Ttid,
    pub server: ServerInfo,
    pub timeline_start_lsn: Lsn,
    /// The timeline's members (node id → `HOST:PORT`), from `--safekeepers`.
    pub members: Members,
    pub proposer_id: [u8; 16],
    /// The operator asked to create the timeline (`--create-timeline`). It
    /// is created only when every member answered that it lacks it, and
    /// only on those members; once any member holds it, never again.
    pub create: bool,
    /// Members whose copy of the timeline the operator declared lost
    /// (`--recreate-timeline-on`): each is re-created once, while this
    /// proposer leads a term whose commit a majority without it holds.
    pub recreate: BTreeSet<NodeId>,
    /// Milliseconds between heartbeats (empty appends) to every acceptor.
    pub heartbeat_interval: u64,
    /// With a delay, a commit advance reaches acceptors with the next WAL
    /// sent to them (every append carries the commit LSN); one that got no
    /// new WAL this many milliseconds later is told by an empty append.
    /// That saves each acceptor a message, a wake-up and a reply per commit
    /// under load. 0 (the default): every acceptor is told at once, as
    /// the starting design has it (ARCHITECTURE.md, "3.5 Appends and
    /// `commit_lsn`"). A 5 ms delay cut safekeeper CPU per commit by a
    /// fifth but measured worse at one client (tools/BENCHMARKS.md).
    pub commit_tell_delay: u64,
    /// A connection whose oldest request has been unanswered this long (ms)
    /// is closed.
    pub response_timeout: u64,
    /// A campaign without a majority of votes after this long (ms) starts
    /// over in a higher term.
    pub election_timeout: u64,
    /// Largest WAL payload of one AppendRequest or recovery read.
    pub max_append_bytes: usize,
    /// WAL sent to one acceptor and not yet acknowledged, at most.
    pub max_inflight_bytes: u64,
    /// New WAL kept in memory once committed (plus up to one chunk from the
    /// primary, which is dropped whole); older WAL a lagging acceptor needs
    /// comes from a recovery read.
    pub max_buffer_bytes: u64,
    /// The ancestors of `server.tli` from the primary's history file (empty
    /// on a timeline without ancestors); `None` with `--sync-only`, which
    /// has no primary and claims no PostgreSQL timeline in Elected.
    pub pg_ancestors: Option<PgAncestors>,
    /// Where the primary's stream begins: after each election its WAL below
    /// term_start_lsn is checked against the safekeepers' before any is
    /// taken (`primary_check`). None: no primary to check.
    pub primary: Option<PrimaryOrigin>,
    /// `--sync-only`: no WAL, no membership change; `settle_due` reports
    /// when the members that persisted the commit of term_start_lsn are a
    /// quorum of the configuration in force.
    pub settle: bool,
    pub faults: ProposerFaults,
}

impl ProposerConfig {
    /// Defaults for everything but the timeline's identity and members.
    pub fn new(
        ttid: Ttid,
        server: ServerInfo,
        timeline_start_lsn: Lsn,
        members: Members,
    ) -> ProposerConfig {
        ProposerConfig {
            ttid,
            server,
            timeline_start_lsn,
            members,
            proposer_id: [0; 16],
            create: false,
            recreate: BTreeSet::new(),
            heartbeat_interval: DEFAULT_HEARTBEAT_MS,
            commit_tell_delay: 0,
            response_timeout: 10_000,
            election_timeout: 10_000,
            max_append_bytes: MAX_APPEND_WAL,
            max_inflight_bytes: 16 << 20,
            max_buffer_bytes: 64 << 20,
            pg_ancestors: Some(PgAncestors::new()),
            primary: None,
            settle: false,
            faults: ProposerFaults::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersParseError {
    #[error("safekeeper {0:?}: expected ID@HOST:PORT")]
    Syntax(String),
    #[error("safekeeper {0:?}: node id must be a number")]
    BadId(String),
    #[error("node id {0} is listed twice")]
    Duplicate(NodeId),
    #[error("safekeepers: {0}")]
    Limit(#[from] limits::LimitExceeded),
    #[error("no safekeepers given")]
    Empty,
}

/// Parse `--safekeepers ID@HOST:PORT,…`.
pub fn parse_members(spec: &str) -> Result<Members, MembersParseError> {
    let mut members = Members::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .ok_or_else(|| MembersParseError::Syntax(item.to_string()))?;
        let id: NodeId = id
            .parse()
            .map_err(|_| MembersParseError::BadId(item.to_string()))?;
        let port_ok = addr
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(MembersParseError::Syntax(item.to_string()));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(MembersParseError::Duplicate(id));
        }
    }
    if members.is_empty() {
        return Err(MembersParseError::Empty);
    }
    limits::check_members(&members)?;
    Ok(members)
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(NodeId, ProposerMessage),
    /// Close the connection to this node (the driver then reports
    /// `on_disconnected` and may dial again later).
    Disconnect(NodeId),
    /// Read WAL `[start, end)` from `donor`'s replication port in `term`
    /// (served only while the donor's term and last_log_term are `term`),
    /// then call `on_recovery_data(id, ..)` or `on_recovery_failed(id)`.
    RecoveryRead {
        id: u64,
        target: NodeId,
        donor: NodeId,
        term: Term,
        start: Lsn,
        end: Lsn,
    },
    /// A majority voted: this proposer leads `term`.
    Elected {
        term: Term,
        term_start_lsn: Lsn,
        donor: NodeId,
    },
    /// A higher term exists (another proposer won): streaming stopped. The
    /// driver re-elects after a backoff with `start_election`.
    SteppedDown {
        term: Term,
        seen: Term,
    },
    /// WAL below this LSN is committed; tell the primary.
    CommitAdvanced(Lsn),
    /// The node at `members[expected]` greeted as another node.
    WrongNode {
        expected: NodeId,
        got: NodeId,
    },
    /// A member answered that it does not hold the timeline, which other
    /// members hold: its store was lost or replaced. It is not counted
    /// until the operator re-creates it there (`recreate` says whether
    /// this proposer was asked to, and will once it is safe).
    LacksTimeline {
        node: NodeId,
        recreate: bool,
    },
    /// Every member answered that it does not hold the timeline, and this
    /// proposer may not create it.
    NoTimeline,
    /// The primary's PostgreSQL timeline `tli` left the safekeepers'
    /// timeline `from_tli` at `switch` (unknown: not in its history), below
    /// the end of the WAL the safekeepers hold, `wal_end`, which may hold
    /// acknowledged commits. Not elected; the driver stops.
    PgSwitchRefused {
        from_tli: u32,
        tli: u32,
        switch: Option<Lsn>,
        wal_end: Lsn,
    },
    /// A member declared lost was re-created and greeted: it is counted
    /// from now on.
    Recreated(NodeId),
    /// The configuration votes and commits are counted by changed: made by
    /// this proposer (`made`), or learnt from a member's greeting.
    Configured {
        conf: Configuration,
        made: bool,
    },
    /// A member removed by a configuration this proposer made stored it
    /// (it is left): it is no longer asked.
    Removed(NodeId),
    /// Read the primary's WAL `[from, to)` and the same range from
    /// `source` (a recovery read in `term`), then call `on_primary_check`
    /// (or `on_primary_check_failed`). `short`: less than a WAL page,
    /// although the safekeepers hold more. No WAL is taken until verified.
    VerifyPrimary {
        term: Term,
        source: NodeId,
        from: Lsn,
        to: Lsn,
        short: bool,
    },
    /// The primary's stream must start lower: the driver ends the session
    /// and the next streams from there.
    RewindPrimary(RewindAsk),
    /// The primary's WAL matches the safekeepers': WAL is taken from now on.
    PrimaryVerified {
        from: Lsn,
        to: Lsn,
    },
    /// This primary is not the one the safekeepers follow: the driver stops.
    PrimaryRefused(PrimaryRefusal),
    /// `--sync-only`: these members persisted the commit of `lsn` in
    /// `term`, a quorum of the configuration in force (`settle_due`).
    Settled {
        term: Term,
        lsn: Lsn,
        nodes: BTreeSet<NodeId>,
    },
}

/// Why `push_wal` did not take the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("not elected: WAL is accepted only while leading a term")]
    NotElected,
    #[error("{len} bytes of WAL at {end} would end beyond the last LSN")]
    PastLastLsn { end: Lsn, len: usize },
    #[error("the primary's WAL is not verified yet")]
    NotVerified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    Greeting,
    Vote(Term),
    Elected(Term),
    Append(Term),
    Reseed(Term),
    Configure(Term, Generation),
}

#[derive(Debug, Clone)]
struct Conn {
    greeted: bool,
    /// Requests not answered yet, oldest first, with the time they were sent.
    outstanding: VecDeque<(Request, u64)>,
    /// The vote reply on this connection in the current term.
    vote: Option<VoteResponse>,
    /// Elected for the current term went out on this connection.
    elected: bool,
    /// Next LSN to send (end of the last append sent).
    next_lsn: Lsn,
    /// Highest commit LSN sent on this connection.
    told_commit: Lsn,
    /// Flush acknowledged on this connection in the current term.
    acked: Lsn,
    /// Outstanding recovery read: (id, start, end).
    read: Option<(u64, Lsn, Lsn)>,
    read_retry_at: u64,
    /// The generation of the last Configure sent in this term.
    conf_sent: Option<Generation>,
    /// The generation of the last configuration this node acknowledged
    /// storing in this term.
    conf_stored: Option<Generation>,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            greeted: false,
            outstanding: VecDeque::new(),
            vote: None,
            elected: false,
            next_lsn: Lsn::INVALID,
            told_commit: Lsn::INVALID,
            acked: Lsn::INVALID,
            read: None,
            read_retry_at: 0,
            conf_sent: None,
            conf_stored: None,
        }
    }

    /// Forget everything tied to a term (a new campaign starts).
    fn reset_term(&mut self) {
        self.vote = None;
        self.elected = false;
        self.read = None;
        // A commit told in an older term says nothing about this one's.
        self.told_commit = Lsn::INVALID;
        self.conf_sent = None;
        self.conf_stored = None;
    }
}

#[derive(Debug, Clone)]
struct Leader {
    term: Term,
    term_start_lsn: Lsn,
    history: TermHistory,
    donor: NodeId,
    /// The PostgreSQL timeline and ancestors Elected claims: the primary's,
    /// or without one (`--sync-only`) the donor's.
    pg: (u32, PgAncestors),
    /// WAL `[buf_start, end_lsn)` from the primary, held in memory as the
    /// chunks it came in, each with its start LSN: appends send slices of
    /// them, and trimming drops whole chunks from the front.
    buf_start: Lsn,
    buf: VecDeque<(Lsn, Bytes)>,
    end_lsn: Lsn,
    commit_lsn: Lsn,
    /// Since when some elected acceptor has not been sent `commit_lsn`
    /// (see `ProposerConfig::commit_tell_delay`).
    commit_untold_since: Option<u64>,
    last_heartbeat: u64,
    elected_at: u64,
    /// Flush each member acknowledged after this term's Elected; kept over
    /// reconnects (it was durable when acknowledged).
    flush: BTreeMap<NodeId, Lsn>,
    /// First LSN each member still stores, as of its last AppendResponse
    /// (it only grows, so this is never above the truth).
    local_start: BTreeMap<NodeId, Lsn>,
    /// Each member's lowest durable slot (INVALID: it has none), as of its
    /// last AppendResponse in this term.
    slot: BTreeMap<NodeId, Lsn>,
    members: Vec<NodeId>,
    /// Nodes that acknowledged flush at or above the commit of that moment
    /// in this term (`membership::Progress::caught_up`).
    caught_up: BTreeSet<NodeId>,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    /// Waiting for a majority of greetings to learn the highest term.
    Greeting,
    Campaigning {
        term: Term,
        since: u64,
        votes: BTreeMap<NodeId, VoteResponse>,
    },
    Leading(Box<Leader>),
}

#[derive(Debug, Clone)]
pub struct Proposer {
    cfg: ProposerConfig,
    now: u64,
    max_term_seen: Term,
    phase: Phase,
    conns: BTreeMap<NodeId, Conn>,
    next_read_id: u64,
    /// Members that greeted (they held the timeline then).
    holders: BTreeSet<NodeId>,
    /// Members that answered that they lack the timeline (since their last
    /// greeting).
    lacking: BTreeSet<NodeId>,
    /// Every member lacked the timeline and `create` is set: greetings to
    /// members that never greeted ask to create it.
    creating: bool,
    /// Greetings that asked to create or re-create, per node, unanswered.
    creates_sent: BTreeSet<NodeId>,
    /// Members of `cfg.recreate` re-created by this proposer.
    recreated: BTreeSet<NodeId>,
    /// The configuration votes and commits are counted by: the newest one a
    /// member stored (`conf_known`), or until one greets, `cfg.members`.
    conf: Configuration,
    conf_known: bool,
    /// Nodes a configuration this proposer made removed, not yet told.
    removed: Members,
    /// New members this proposer created (once each).
    learners_created: BTreeSet<NodeId>,
    /// The check of the primary's WAL in the term led.
    gate: Gate,
    /// With `cfg.settle`, in the term led.
    settle: Option<Settle>,
    /// The generation each node last told it stores (greeting, Configure).
    stored_gen: BTreeMap<NodeId, Generation>,
}

impl Proposer {
    pub fn new(cfg: ProposerConfig) -> Proposer {
        Proposer {
            now: 0,
            max_term_seen: 0,
            phase: Phase::Idle,
            conns: BTreeMap::new(),
            next_read_id: 1,
            holders: BTreeSet::new(),
            lacking: BTreeSet::new(),
            creating: false,
            creates_sent: BTreeSet::new(),
            recreated: BTreeSet::new(),
            conf: Configuration::initial(cfg.members.clone()),
            conf_known: false,
            removed: Members::new(),
            learners_created: BTreeSet::new(),
            gate: Gate::Open,
            settle: None,
            stored_gen: BTreeMap::new(),
            cfg,
        }
    }

    /// The configuration votes and commits are counted by.
    pub fn configuration(&self) -> &Configuration {
        &self.conf
    }

    /// Every node this proposer talks to, with its address: the operator's
    /// members (`cfg.members`, the target of a change), the configuration's
    /// and the removed nodes not yet told. The driver keeps a connection to
    /// each.
    pub fn peers(&self) -> Members {
        let mut all = self.removed.clone();
        all.extend(self.conf.voters());
        all.extend(self.cfg.members.iter().map(|(n, a)| (*n, a.clone())));
        all
    }

    /// Some member greeted: the timeline exists, so no later proposer of
    /// this proxy may create it.
    pub fn timeline_exists(&self) -> bool {
        !self.holders.is_empty()
    }

    /// Members of `recreate` this proposer re-created.
    pub fn recreated(&self) -> &BTreeSet<NodeId> {
        &self.recreated
    }

    pub fn config(&self) -> &ProposerConfig {
        &self.cfg
    }

    /// The term being campaigned for or led.
    pub fn term(&self) -> Option<Term> {
        match &self.phase {
            Phase::Campaigning { term, .. } => Some(*term),
            Phase::Leading(l) => Some(l.term),
            _ => None,
        }
    }

    pub fn is_leading(&self) -> bool {
        matches!(self.phase, Phase::Leading(_))
    }

    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle)
    }

    /// While leading: (term, term_start_lsn, history, end of WAL, commit).
    pub fn leader_view(&self) -> Option<(Term, Lsn, &TermHistory, Lsn, Lsn)> {
        match &self.phase {
            Phase::Leading(l) => Some((
                l.term,
                l.term_start_lsn,
                &l.history,
                l.end_lsn,
                l.commit_lsn,
            )),
            _ => None,
        }
    }

    pub fn max_term_seen(&self) -> Term {
        self.max_term_seen
    }

    /// Begin an election (after start, or after stepping down and backing
    /// off). No-op while campaigning or leading.
    pub fn start_election(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.phase, Phase::Idle) {
            self.phase = Phase::Greeting;
            self.maybe_campaign(&mut out);
        }
        out
    }

    pub fn on_connected(&mut self, node: NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.peers().contains_key(&node) {
            out.push(Action::Disconnect(node));
            return out;
        }
        self.forget(node);
        self.conns.insert(node, Conn::new());
        let create = self.greeting_creates(node);
        if create {
            if self.learner_create_due(node) {
                self.learners_created.insert(node);
            }
            self.creates_sent.insert(node);
        } else {
            self.creates_sent.remove(&node);
        }
        let greeting = ProposerMessage::Greeting(Greeting {
            conf: self.conf_known.then(|| self.conf.clone()),
            protocol_version: PROTOCOL_VERSION,
            ttid: self.cfg.ttid,
            server: self.cfg.server,
            timeline_start_lsn: self.cfg.timeline_start_lsn,
            members: self.cfg.members.clone(),
            proposer_id: self.cfg.proposer_id,
            create,
            pg_ancestors: self.cfg.pg_ancestors.clone().unwrap_or_default(),
        });
        self.send(node, greeting, &mut out);
        out
    }

    /// Whether the greeting to `node` asks to create the timeline: only in
    /// a creation this proposer started (every member lacked it) to a node
    /// that never greeted, or to re-create a member the operator declared
    /// lost once that is safe.
    fn greeting_creates(&self, node: NodeId) -> bool {
        if self.cfg.faults.create_on_every_greeting {
            return self.cfg.create;
        }
        if self.creating && !self.holders.contains(&node) {
            return true;
        }
        self.recreate_due(node) || self.learner_create_due(node)
    }

    /// A new member of the operator's list that lacks the timeline is
    /// created once, by a leader whose commit a majority of the
    /// configuration acknowledged in this term (so no stale leader creates
    /// one), and before the configuration names it: until then it is a
    /// learner that is fed WAL and counts for nothing.
    fn learner_create_due(&self, node: NodeId) -> bool {
        self.conf_known
            && !self.conf.contains(node)
            && self.cfg.members.contains_key(&node)
            && self.lacking.contains(&node)
            && !self.learners_created.contains(&node)
            && self.majority_holds_commit(node)
    }

    /// This proposer leads, and a majority of the configuration other than
    /// `node`, on their current connections, acknowledged its commit.
    fn majority_holds_commit(&self, node: NodeId) -> bool {
        let Phase::Leading(l) = &self.phase else {
            return false;
        };
        let mut others = l.flush.clone();
        others.remove(&node);
        l.commit_lsn.is_valid()
            && self
                .conf
                .commit_lsn(&others, l.term_start_lsn, false)
                .is_some_and(|c| c >= l.commit_lsn)
    }

    /// A member declared lost may be re-created once this proposer leads
    /// and a majority without it, on their current connections, has
    /// acknowledged this term's commit: the leader's log holds every
    /// acknowledged commit, those members hold it up to commit_lsn, and
    /// any majority that later counts the re-created node also counts one
    /// of them.
    fn recreate_due(&self, node: NodeId) -> bool {
        if !self.cfg.recreate.contains(&node)
            || self.recreated.contains(&node)
            || !self.lacking.contains(&node)
        {
            return false;
        }
        self.majority_holds_commit(node)
    }

    pub fn on_disconnected(&mut self, node: NodeId) {
        self.forget(node);
    }

    /// The node refused the greeting because it does not hold the timeline
    /// (and the greeting did not ask to create it); its connection is gone.
    pub fn on_no_timeline(&mut self, node: NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        self.forget(node);
        if let Phase::Leading(l) = &mut self.phase {
            // Its store is gone: it has to catch up again.
            l.caught_up.remove(&node);
        }
        if !self.peers().contains_key(&node) {
            return out;
        }
        self.lacking.insert(node);
        if self.creating {
            // Created on its next greeting, unless it held the timeline
            // already: then it was wiped since.
            if self.holders.contains(&node) {
                out.push(self.lacks(node));
            }
        } else if !self.holders.is_empty() {
            out.push(self.lacks(node));
        } else if self.lacking.len() == self.cfg.members.len() {
            if self.cfg.create {
                // A new timeline: the next greetings create it.
                self.creating = true;
            } else {
                out.push(Action::NoTimeline);
            }
        }
        // Otherwise wait: whether it exists elsewhere is not known yet.
        out
    }

    fn lacks(&self, node: NodeId) -> Action {
        Action::LacksTimeline {
            node,
            recreate: self.cfg.recreate.contains(&node) && !self.recreated.contains(&node),
        }
    }

    /// Forget the connection and every position the node reported on it:
    /// what it says on its next connection is all that counts.
    fn forget(&mut self, node: NodeId) {
        self.conns.remove(&node);
        if self.cfg.faults.create_on_every_greeting {
            return;
        }
        if let Phase::Leading(l) = &mut self.phase {
            l.flush.remove(&node);
            l.local_start.remove(&node);
        }
    }

    /// Move the clock without the periodic work of `on_tick`: for events
    /// between ticks, so what they start (a commit waiting to be told) is
    /// timed from when it happened.
    pub fn advance_clock(&mut self, now: u64) {
        self.now = self.now.max(now);
    }

    pub fn on_tick(&mut self, now: u64) -> Vec<Action> {
        self.now = self.now.max(now);
        let mut out = Vec::new();
        let timeout = self.cfg.response_timeout;
        let stale: Vec<NodeId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.outstanding
                    .front()
                    .is_some_and(|(_, at)| self.now.saturating_sub(*at) >= timeout)
            })
            .map(|(n, _)| *n)
            .collect();
        for node in stale {
            self.forget(node);
            out.push(Action::Disconnect(node));
        }
        if self.commit_tell_due().is_some_and(|due| self.now >= due) {
            self.tell_commit(&mut out);
        }
        match &mut self.phase {
            Phase::Campaigning { since, .. }
                if self.now.saturating_sub(*since) >= self.cfg.election_timeout =>
            {
                // A split or lost vote: try again above everything seen.
                self.phase = Phase::Greeting;
                for c in self.conns.values_mut() {
                    c.reset_term();
                }
                self.maybe_campaign(&mut out);
            }
            Phase::Leading(l)
                if !l.commit_lsn.is_valid()
                    && self.now.saturating_sub(l.elected_at) >= self.cfg.election_timeout =>
            {
                // No majority reached term_start_lsn: the donor may be gone
                // for good. Another election picks a donor that is here.
                let term = l.term;
                self.step_down(term, &mut out);
            }
            Phase::Leading(l)
                if self.now.saturating_sub(l.last_heartbeat) >= self.cfg.heartbeat_interval =>
            {
                l.last_heartbeat = self.now;
                self.broadcast_heartbeat(&mut out);
            }
            _ => {}
        }
        if self.is_leading() {
            let nodes: Vec<NodeId> = self.conns.keys().copied().collect();
            for node in nodes {
                self.pump(node, &mut out);
            }
            self.drive_change(&mut out);
        }
        out
    }

    /// New WAL from the primary, continuing at the end of what was pushed.
    pub fn push_wal(&mut self, wal: &[u8]) -> Result<Vec<Action>, PushError> {
        let Phase::Leading(l) = &mut self.phase else {
            return Err(PushError::NotElected);
        };
        if !self.gate.is_open() {
            return Err(PushError::NotVerified);
        }
        // The end comes from a vote (the donor's flush_lsn): checked.
        let end = l
            .end_lsn
            .checked_add(wal.len() as u64)
            .ok_or(PushError::PastLastLsn {
                end: l.end_lsn,
                len: wal.len(),
            })?;
        if !wal.is_empty() {
            l.buf.push_back((l.end_lsn, Bytes::copy_from_slice(wal)));
        }
        l.end_lsn = end;
        let mut out = Vec::new();
        let nodes: Vec<NodeId> = self.conns.keys().copied().collect();
        for node in nodes {
            self.pump(node, &mut out);
        }
        Ok(out)
    }

    pub fn on_recovery_data(&mut self, id: u64, wal: Bytes) -> Vec<Action> {
        let mut out = Vec::new();
        let Some((&node, conn)) = self
            .conns
            .iter_mut()
            .find(|(_, c)| c.read.is_some_and(|(rid, _, _)| rid == id))
        else {
            return out;
        };
        let Some((_, start, end)) = conn.read.take() else {
            return out;
        };
        let Phase::Leading(l) = &self.phase else {
            return out;
        };
        if start != conn.next_lsn || wal.len() as u64 != end.0 - start.0 {
            conn.read_retry_at = self.now + self.cfg.heartbeat_interval;
            return out;
        }
        conn.next_lsn = end;
        let msg = append(l, start, end, wal);
        self.send(node, msg, &mut out);
        self.pump(node, &mut out);
        out
    }

    pub fn on_recovery_failed(&mut self, id: u64) -> Vec<Action> {
        let retry = self.now + self.cfg.heartbeat_interval;
        for c in self.conns.values_mut() {
            if c.read.is_some_and(|(rid, _, _)| rid == id) {
                c.read = None;
                c.read_retry_at = retry;
            }
        }
        Vec::new()
    }

    pub fn on_message(&mut self, node: NodeId, msg: AcceptorMessage) -> Vec<Action> {
        let mut out = Vec::new();
        let Some(conn) = self.conns.get_mut(&node) else {
            return out;
        };
        let Some((request, _)) = conn.outstanding.pop_front() else {
            // A reply to nothing: the connection is out of step.
            self.drop_conn(node, &mut out);
            return out;
        };
        if msg.term() == Term::MAX {
            // No term follows it: counting it would leave this proposer
            // nothing to campaign for. The other members may elect.
            self.drop_conn(node, &mut out);
            return out;
        }
        self.max_term_seen = self.max_term_seen.max(msg.term());
        if let Some(term) = self.term() {
            if msg.term() > term {
                self.step_down(msg.term(), &mut out);
                if let (Request::Greeting, AcceptorMessage::Greeting(g)) = (request, msg) {
                    // Still a good connection for the next election.
                    self.on_greeting(node, g, &mut out);
                }
                return out;
            }
        }
        match (request, msg) {
            (Request::Greeting, AcceptorMessage::Greeting(g)) => {
                self.on_greeting(node, g, &mut out)
            }
            (Request::Vote(t), AcceptorMessage::Vote(v)) => self.on_vote(node, t, v, &mut out),
            (
                Request::Elected(t) | Request::Append(t) | Request::Reseed(t),
                AcceptorMessage::Append(a),
            ) => self.on_append_response(node, t, a, &mut out),
            (Request::Configure(t, generation), AcceptorMessage::Append(a)) => {
                self.on_configure_response(node, t, generation, a, &mut out)
            }
            _ => self.drop_conn(node, &mut out),
        }
        out
    }

    fn drop_conn(&mut self, node: NodeId, out: &mut Vec<Action>) {
        self.forget(node);
        out.push(Action::Disconnect(node));
    }

    fn send(&mut self, node: NodeId, msg: ProposerMessage, out: &mut Vec<Action>) {
        let Some(conn) = self.conns.get_mut(&node) else {
            return;
        };
        let req = match &msg {
            ProposerMessage::Greeting(_) => Request::Greeting,
            ProposerMessage::VoteRequest(v) => Request::Vote(v.term),
            ProposerMessage::Elected(e) => Request::Elected(e.term),
            ProposerMessage::Append(a) => Request::Append(a.term),
            ProposerMessage::Reseed(r) => Request::Reseed(r.term),
            ProposerMessage::Configure(c) => Request::Configure(c.term, c.conf.generation),
        };
        if let ProposerMessage::Append(a) = &msg {
            conn.told_commit = conn.told_commit.max(a.commit_lsn);
        }
        conn.outstanding.push_back((req, self.now));
        out.push(Action::Send(node, msg));
    }

    fn step_down(&mut self, seen: Term, out: &mut Vec<Action>) {
        let term = self.term().unwrap_or(0);
        self.phase = Phase::Idle;
        for c in self.conns.values_mut() {
            c.reset_term();
        }
        out.push(Action::SteppedDown { term, seen });
    }

    fn on_greeting(&mut self, node: NodeId, g: AcceptorGreeting, out: &mut Vec<Action>) {
        if g.node_id != node {
            out.push(Action::WrongNode {
                expected: node,
                got: g.node_id,
            });
            self.drop_conn(node, out);
            return;
        }
        if g.protocol_version != PROTOCOL_VERSION {
            self.drop_conn(node, out);
            return;
        }
        if let Some(c) = self.conns.get_mut(&node) {
            c.greeted = true;
        }
        // The newest configuration any member stored is the one in force
        // (only leaders make one, each a new generation). One no acceptor
        // stores (no members, too many) is not taken.
        let storable =
            !g.conf.members.is_empty() && limits::check_members(&g.conf.voters()).is_ok();
        if storable && (!self.conf_known || g.conf.generation > self.conf.generation) {
            self.adopt(g.conf.clone(), false, out);
        }
        if storable {
            self.stored_gen.insert(node, g.conf.generation);
        }
        if storable && self.learn_removed(node, &g.conf, out) {
            return;
        }
        let first_holder = self.holders.is_empty();
        self.holders.insert(node);
        self.lacking.remove(&node);
        if self.creates_sent.remove(&node) && self.cfg.recreate.contains(&node) && !self.creating {
            self.recreated.insert(node);
            out.push(Action::Recreated(node));
        }
        if first_holder && !self.creating {
            // It exists: members that said they lack it were wiped.
            let lacking: Vec<NodeId> = self.lacking.iter().copied().collect();
            out.extend(lacking.into_iter().map(|n| self.lacks(n)));
        }
        match self.term() {
            Some(term) => self.send(
                node,
                ProposerMessage::VoteRequest(VoteRequest {
                    term,
                    generation: self.conf.generation,
                }),
                out,
            ),
            None => self.maybe_campaign(out),
        }
    }

    /// Once a majority has greeted, ask for votes in a term above any seen.
    fn maybe_campaign(&mut self, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Greeting) {
            return;
        }
        let greeted: BTreeSet<NodeId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.greeted)
            .map(|(n, _)| *n)
            .collect();
        if !self.conf.is_quorum(&greeted) {
            return;
        }
        let Some(term) = self.max_term_seen.checked_add(1) else {
            return;
        };
        self.max_term_seen = term;
        self.phase = Phase::Campaigning {
            term,
            since: self.now,
            votes: BTreeMap::new(),
        };
        let nodes: Vec<NodeId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.greeted)
            .map(|(n, _)| *n)
            .collect();
        let generation = self.conf.generation;
        for node in nodes {
            self.send(
                node,
                ProposerMessage::VoteRequest(VoteRequest { term, generation }),
                out,
            );
        }
    }

    fn on_vote(&mut self, node: NodeId, asked: Term, v: VoteResponse, out: &mut Vec<Action>) {
        let Some(term) = self.term() else {
            return;
        };
        if asked != term || v.term != term {
            return;
        }
        if limits::check_history(&v.term_history).is_err()
            || limits::check_pg_history(&v.pg_ancestors).is_err()
        {
            // No acceptor stores a history this long.
            self.drop_conn(node, out);
            return;
        }
        if let Some(c) = self.conns.get_mut(&node) {
            c.vote = Some(v.clone());
        }
        match &mut self.phase {
            Phase::Campaigning { votes, .. } => {
                // A refusal in our own term is ambiguous (this node may have
                // voted for us before a reconnect, or for a rival that chose
                // the same term): only a grant counts.
                if v.granted {
                    votes.insert(node, v);
                }
                let voters: BTreeSet<NodeId> = votes.keys().copied().collect();
                if self.conf.is_quorum(&voters) {
                    self.become_leader(out);
                }
            }
            Phase::Leading(_) => self.send_elected(node, out),
            _ => {}
        }
    }

    fn become_leader(&mut self, out: &mut Vec<Action>) {
        let Phase::Campaigning { term, votes, .. } = &self.phase else {
            return;
        };
        let term = *term;
        let ignore_llt = self.cfg.faults.donor_ignores_last_log_term;
        // Only the configuration's voters count (a learner's vote lets it
        // follow, nothing more).
        let conf = &self.conf;
        let Some((&donor, dv)) =
            votes
                .iter()
                .filter(|(n, _)| conf.contains(**n))
                .max_by_key(|(_, v)| {
                    let llt = if ignore_llt {
                        0
                    } else {
                        v.term_history.last_log_term(v.flush_lsn)
                    };
                    (llt, v.flush_lsn)
                })
        else {
            return;
        };
        let donor_history = dv.term_history.up_to(dv.flush_lsn);
        let term_start_lsn = if donor_history.entries().is_empty() {
            // Nobody holds WAL: the timeline begins where it was created.
            dv.timeline_start_lsn
        } else {
            dv.flush_lsn
        };
        if let Some(refused) = self.switch_refusal(dv, term_start_lsn) {
            self.phase = Phase::Idle;
            out.push(refused);
            return;
        }
        let pg = match &self.cfg.pg_ancestors {
            Some(ancestors) => (self.cfg.server.tli, ancestors.clone()),
            None => (dv.tli, dv.pg_ancestors.clone()),
        };
        let mut history = donor_history;
        history.0.push(TermLsn {
            term,
            lsn: term_start_lsn,
        });
        self.phase = Phase::Leading(Box::new(Leader {
            term,
            term_start_lsn,
            history,
            donor,
            pg,
            buf_start: term_start_lsn,
            buf: VecDeque::new(),
            end_lsn: term_start_lsn,
            commit_lsn: Lsn::INVALID,
            commit_untold_since: None,
            last_heartbeat: self.now,
            elected_at: self.now,
            flush: BTreeMap::new(),
            local_start: BTreeMap::new(),
            slot: BTreeMap::new(),
            members: self.peers().keys().copied().collect(),
            caught_up: BTreeSet::new(),
        }));
        out.push(Action::Elected {
            term,
            term_start_lsn,
            donor,
        });
        self.after_election(term_start_lsn, out);
        let voted: Vec<NodeId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.vote.is_some())
            .map(|(n, _)| *n)
            .collect();
        for node in voted {
            self.send_elected(node, out);
        }
    }

    /// The switch rule: a primary on a newer PostgreSQL timeline than the
    /// donor's continues the safekeepers' log only if its timeline left the
    /// donor's at or above `term_start_lsn`, the end of the donor's log:
    /// every acknowledged commit is in that log (a majority flushed it), and
    /// the voters' commit_lsn may lag the last acknowledgement, so no part
    /// of it may be replaced by the new timeline's WAL. After `--sync-only`
    /// that end is the settled LSN.
    fn switch_refusal(&self, dv: &VoteResponse, term_start_lsn: Lsn) -> Option<Action> {
        let ancestors = self.cfg.pg_ancestors.as_ref()?;
        let tli = self.cfg.server.tli;
        if dv.tli == tli {
            return None;
        }
        let switch = ancestors
            .iter()
            .find(|(t, _)| *t == dv.tli)
            .map(|(_, end)| *end)
            .filter(|_| dv.tli < tli);
        match switch {
            Some(at) if at >= term_start_lsn => None,
            _ => Some(Action::PgSwitchRefused {
                from_tli: dv.tli,
                tli,
                switch,
                wal_end: term_start_lsn,
            }),
        }
    }

    /// Tell a node that voted (or is already in our term) where its log
    /// leaves ours, then start streaming to it from there.
    fn send_elected(&mut self, node: NodeId, out: &mut Vec<Action>) {
        let Phase::Leading(l) = &self.phase else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&node) else {
            return;
        };
        let Some(v) = conn.vote.as_ref() else {
            return;
        };
        if conn.elected {
            return;
        }
        let theirs = v.term_history.up_to(v.flush_lsn);
        // Must be the acceptor's own computation, or it refuses.
        let point = if theirs.entries().is_empty() {
            v.flush_lsn
        } else {
            theirs
                .highest_common_point(v.flush_lsn, &l.history)
                .unwrap_or(v.timeline_start_lsn)
        };
        conn.elected = true;
        conn.next_lsn = point;
        conn.acked = point;
        conn.read = None;
        let msg = ProposerMessage::Elected(Elected {
            term: l.term,
            start_streaming_at: point,
            term_history: l.history.clone(),
            pg_tli: l.pg.0,
            pg_ancestors: l.pg.1.clone(),
        });
        self.send(node, msg, out);
        self.pump(node, out);
    }

    fn on_append_response(
        &mut self,
        node: NodeId,
        asked: Term,
        a: AppendResponse,
        out: &mut Vec<Action>,
    ) {
        let Phase::Leading(l) = &mut self.phase else {
            return;
        };
        if asked != l.term || a.term != l.term {
            return;
        }
        let Some(conn) = self.conns.get_mut(&node) else {
            return;
        };
        if !conn.elected || a.flush_lsn > conn.next_lsn || a.local_start_lsn > a.flush_lsn {
            // Not an answer this term's stream can produce.
            self.drop_conn(node, out);
            return;
        }
        conn.acked = a.flush_lsn;
        l.flush.insert(node, a.flush_lsn);
        l.local_start.insert(node, a.local_start_lsn);
        l.slot.insert(node, a.slot_horizon_lsn);
        let term = l.term;
        self.on_leader_ack(term, node, &a, out);
        let Phase::Leading(l) = &mut self.phase else {
            return;
        };
        // Raft's rule: only WAL of this term (from term_start_lsn on) is
        // committed by counting; older WAL is committed along with it.
        // Counted by the configuration in force (both sets while joint).
        let new_alone = self.cfg.faults.joint_counts_new_alone;
        if let Some(c) = self.conf.commit_lsn(&l.flush, l.term_start_lsn, new_alone) {
            if c > l.commit_lsn {
                l.commit_lsn = c;
                out.push(Action::CommitAdvanced(c));
                if self.cfg.commit_tell_delay == 0 {
                    self.broadcast_heartbeat(out);
                } else {
                    l.commit_untold_since.get_or_insert(self.now);
                }
            }
        }
        // Memory stays bounded: committed WAL beyond the buffer size goes
        // (whole chunks from the front, so O(chunks dropped), never a shift
        // of the rest); whoever still needs it reads it from a donor.
        if let Phase::Leading(l) = &mut self.phase {
            if l.commit_lsn.is_valid() && a.flush_lsn >= l.commit_lsn {
                l.caught_up.insert(node);
            }
            let cap = self.cfg.max_buffer_bytes;
            while let Some((start, chunk)) = l.buf.front() {
                let end = Lsn(start.0 + chunk.len() as u64);
                if end > l.commit_lsn || l.end_lsn.distance_from(end) < cap {
                    break;
                }
                l.buf.pop_front();
                l.buf_start = end;
            }
        }
        // This ack may make `node` a recovery source for the others.
        let nodes: Vec<NodeId> = self.conns.keys().copied().collect();
        for n in nodes {
            self.pump(n, out);
        }
        self.drive_change(out);
    }

    /// A Configure was answered: the node stored `generation` (synced).
    /// A node the configuration removed is told, so it is let go.
    fn on_configure_response(
        &mut self,
        node: NodeId,
        asked: Term,
        generation: Generation,
        a: AppendResponse,
        out: &mut Vec<Action>,
    ) {
        if a.term == asked && self.term() == Some(asked) {
            if let Some(c) = self.conns.get_mut(&node) {
                c.conf_stored = Some(generation);
            }
            self.stored_gen.insert(node, generation);
            if generation == self.conf.generation && self.removed.remove(&node).is_some() {
                out.push(Action::Removed(node));
                self.drop_conn(node, out);
                self.refresh_members();
                return;
            }
        }
        self.on_append_response(node, asked, a, out);
    }

    /// A greeting showed `theirs`, `node`'s configuration. Nodes an older
    /// one names and the one in force does not were removed; if the leader
    /// that removed them did not tell them (it stopped first), this
    /// proposer dials and tells them (`drive_change` sends Configure to
    /// them once elected). True when `node` itself is such a node and
    /// already stores a configuration without it: it knows, so it is let
    /// go (`Action::Removed`) instead of asked for a vote it refuses.
    fn learn_removed(
        &mut self,
        node: NodeId,
        theirs: &Configuration,
        out: &mut Vec<Action>,
    ) -> bool {
        if !self.conf_known {
            return false;
        }
        if theirs.generation < self.conf.generation {
            for (n, a) in theirs.voters() {
                if !self.conf.contains(n) && !self.cfg.members.contains_key(&n) {
                    self.removed.entry(n).or_insert(a);
                }
            }
            self.refresh_members();
        }
        let knows = theirs.generation >= self.conf.generation && !theirs.contains(node);
        if knows && self.removed.remove(&node).is_some() {
            out.push(Action::Removed(node));
            self.drop_conn(node, out);
            self.refresh_members();
            return true;
        }
        false
    }

    /// Count by `conf` from now on.
    fn adopt(&mut self, conf: Configuration, made: bool, out: &mut Vec<Action>) {
        self.conf = conf.clone();
        self.conf_known = true;
        self.refresh_members();
        out.push(Action::Configured { conf, made });
    }

    fn refresh_members(&mut self) {
        let peers: Vec<NodeId> = self.peers().keys().copied().collect();
        if let Phase::Leading(l) = &mut self.phase {
            l.members = peers;
        }
    }

    /// While leading: make the next configuration of a change when it is
    /// due (`membership::next_configuration`), and send the one in force to
    /// every elected node that has not stored it in this term, as long as a
    /// change is unfinished.
    fn drive_change(&mut self, out: &mut Vec<Action>) {
        let Phase::Leading(l) = &self.phase else {
            return;
        };
        if !self.conf_known || self.cfg.settle {
            // `--sync-only` settles by the configuration in force.
            return;
        }
        let term = l.term;
        let stored: BTreeSet<NodeId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.conf_stored == Some(self.conf.generation))
            .map(|(n, _)| *n)
            .collect();
        let progress = membership::Progress {
            flush: &l.flush,
            commit_lsn: l.commit_lsn,
            stored_current: &stored,
            caught_up: &l.caught_up,
        };
        if let Some(next) =
            membership::next_configuration(&self.conf, &self.cfg.members, term, progress)
        {
            if !next.is_joint() {
                for (n, a) in self.conf.voters() {
                    if !next.contains(n) {
                        self.removed.insert(n, a);
                    }
                }
            }
            self.adopt(next, true, out);
        }
        // Also a final configuration a member told an older one of (a
        // grow removes nobody, yet its members must store it, or a later
        // proposer counts by the joint one it learns from them).
        let generation = self.conf.generation;
        let changing = self.conf.is_joint()
            || !membership::same_ids(&self.conf.members, &self.cfg.members)
            || !self.removed.is_empty()
            || self
                .conf
                .members
                .keys()
                .any(|n| self.stored_gen.get(n).is_some_and(|g| *g != generation));
        if !changing {
            return;
        }
        let due: Vec<NodeId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.elected && c.conf_sent != Some(generation))
            .map(|(n, _)| *n)
            .collect();
        for node in due {
            if let Some(c) = self.conns.get_mut(&node) {
                c.conf_sent = Some(generation);
            }
            let msg = ProposerMessage::Configure(Configure {
                term,
                conf: self.conf.clone(),
            });
            self.send(node, msg, out);
        }
    }

    /// When `on_tick` should run next to tell acceptors a commit advance
    /// that no WAL carried to them (ms, on the clock `on_tick` is given).
    pub fn commit_tell_due(&self) -> Option<u64> {
        match &self.phase {
            Phase::Leading(l) => l
                .commit_untold_since
                .map(|t| t + self.cfg.commit_tell_delay),
            _ => None,
        }
    }

    /// An empty append to every elected acceptor not yet sent commit_lsn.
    fn tell_commit(&mut self, out: &mut Vec<Action>) {
        self.send_empty_appends(true, out);
    }

    fn broadcast_heartbeat(&mut self, out: &mut Vec<Action>) {
        if let Phase::Leading(l) = &mut self.phase {
            l.last_heartbeat = self.now;
        }
        self.send_empty_appends(false, out);
    }

    /// An empty append (commit_lsn and horizons, no WAL) to every elected
    /// acceptor, or with `only_untold` to those not yet sent commit_lsn.
    /// Either way every elected acceptor has been told commit_lsn after it.
    fn send_empty_appends(&mut self, only_untold: bool, out: &mut Vec<Action>) {
        let Phase::Leading(l) = &mut self.phase else {
            return;
        };
        l.commit_untold_since = None;
        let msgs: Vec<(NodeId, ProposerMessage)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.elected && (!only_untold || c.told_commit < l.commit_lsn))
            .map(|(n, c)| (*n, append(l, c.next_lsn, c.next_lsn, Bytes::new())))
            .collect();
        for (node, msg) in msgs {
            self.send(node, msg, out);
        }
    }

    /// Send `node` what it lacks, within the in-flight limit: from the
    /// buffer, or through a recovery read when it is behind the buffer.
    fn pump(&mut self, node: NodeId, out: &mut Vec<Action>) {
        loop {
            let Phase::Leading(l) = &self.phase else {
                return;
            };
            let Some(conn) = self.conns.get(&node) else {
                return;
            };
            if !conn.elected || conn.read.is_some() {
                return;
            }
            let next = conn.next_lsn;
            let inflight = next.distance_from(conn.acked);
            if inflight >= self.cfg.max_inflight_bytes || next >= l.end_lsn {
                return;
            }
            let room =
                (self.cfg.max_inflight_bytes - inflight).min(self.cfg.max_append_bytes as u64);
            if next < l.buf_start {
                if self.now < conn.read_retry_at {
                    return;
                }
                // A node that reached term_start_lsn in this term holds
                // exactly our log in [its local_start, its flush) (and
                // serves recovery reads: its last_log_term is our term).
                let sources: Vec<(NodeId, Lsn, Lsn)> = l
                    .flush
                    .iter()
                    .filter(|(n, f)| {
                        **n != node
                            && **f > next
                            && **f >= l.term_start_lsn
                            && self.conns.contains_key(n)
                    })
                    .map(|(n, f)| (*n, *f, l.local_start.get(n).copied().unwrap_or(Lsn(0))))
                    .collect();
                // Prefer the donor, then the longest log.
                let holder = sources
                    .iter()
                    .filter(|(_, _, start)| *start <= next)
                    .max_by_key(|(n, f, _)| (*n == l.donor, *f));
                let Some(&(donor, donor_flush, _)) = holder else {
                    // Every node that could serve `next` has trimmed it
                    // (past --max-wal-keep): restart this node's log where
                    // the WAL still is. That point is committed, since
                    // nodes trim only below their commit_lsn. Only once
                    // every other connected member has answered in this
                    // term: one not heard from yet may still hold it.
                    let all_heard = self
                        .conns
                        .keys()
                        .all(|n| *n == node || l.flush.contains_key(n));
                    if !all_heard {
                        return;
                    }
                    let start = if self.cfg.faults.reseed_at_source_flush {
                        sources.iter().map(|(_, f, _)| *f).max()
                    } else {
                        sources.iter().map(|(_, _, s)| *s).min()
                    };
                    // Bounded by what this proposer can have (nothing a
                    // source reports lies beyond it).
                    let Some(start) = start.filter(|s| *s <= l.end_lsn) else {
                        return;
                    };
                    let term = l.term;
                    if let Some(c) = self.conns.get_mut(&node) {
                        c.next_lsn = start;
                    }
                    self.send(
                        node,
                        ProposerMessage::Reseed(Reseed {
                            term,
                            start_lsn: start,
                        }),
                        out,
                    );
                    continue;
                };
                let end = Lsn(l
                    .buf_start
                    .min(donor_flush)
                    .0
                    .min(next.0.saturating_add(room)));
                let id = self.next_read_id;
                self.next_read_id += 1;
                let term = l.term;
                if let Some(c) = self.conns.get_mut(&node) {
                    c.read = Some((id, next, end));
                }
                out.push(Action::RecoveryRead {
                    id,
                    target: node,
                    donor,
                    term,
                    start: next,
                    end,
                });
                return;
            }
            let full = room >= self.cfg.max_append_bytes as u64;
            let Some(end) = append_end(&l.buf, next, l.end_lsn, room, full) else {
                return;
            };
            let msg = append(l, next, end, buffered(&l.buf, next, end));
            if let Some(c) = self.conns.get_mut(&node) {
                c.next_lsn = end;
            }
            self.send(node, msg, out);
        }
    }
}

/// Where an append of the buffer from `next` ends: at the end of the last
/// push that fits in `room` bytes, so that an acceptor's log ends where a
/// push ended (the proxy pushes whole PostgreSQL records, and a standby fed
/// by the safekeepers can stop there). A push longer than a `full` append
/// is cut at `room`; otherwise, None: wait for room (the in-flight window).
fn append_end(
    buf: &VecDeque<(Lsn, Bytes)>,
    next: Lsn,
    end_lsn: Lsn,
    room: u64,
    full: bool,
) -> Option<Lsn> {
    let limit = Lsn(next.0.saturating_add(room).min(end_lsn.0));
    let first = buf
        .partition_point(|(start, _)| *start <= next)
        .saturating_sub(1);
    let mut cut = None;
    for (start, chunk) in buf.range(first..) {
        let chunk_end = Lsn(start.0 + chunk.len() as u64);
        if chunk_end > limit {
            break;
        }
        if chunk_end > next {
            cut = Some(chunk_end);
        }
    }
    match cut {
        Some(c) => Some(c),
        None if full || limit == end_lsn => Some(limit),
        None => None,
    }
}

/// WAL `[from, to)` out of the leader's buffer (which holds it): a slice of
/// one chunk when it lies within one (no copy), else the pieces copied
/// together.
fn buffered(buf: &VecDeque<(Lsn, Bytes)>, from: Lsn, to: Lsn) -> Bytes {
    // The chunk holding `from`: the last one starting at or below it.
    let i = buf
        .partition_point(|(start, _)| *start <= from)
        .saturating_sub(1);
    let mut out: Option<bytes::BytesMut> = None;
    for (start, chunk) in buf.range(i..) {
        if *start >= to {
            break;
        }
        let a = from.0.saturating_sub(start.0).min(chunk.len() as u64) as usize;
        let b = (to.0 - start.0).min(chunk.len() as u64) as usize;
        let piece = chunk.slice(a..b.max(a));
        match &mut out {
            None if b as u64 + start.0 >= to.0 => return piece,
            None => {
                let mut m = bytes::BytesMut::with_capacity(to.distance_from(from) as usize);
                m.extend_from_slice(&piece);
                out = Some(m);
            }
            Some(m) => m.extend_from_slice(&piece),
        }
    }
    out.map(|m| m.freeze()).unwrap_or_default()
}

/// The peer and slot horizons, sent together and only once every member
/// has answered in this term: a member not heard from may still need
/// anything, and may hold a slot anywhere. Until then both are INVALID
/// (unknown: acceptors keep the ones they stored last); after, an INVALID
/// slot horizon beside a valid peer horizon means no member has a slot.
fn horizons(l: &Leader) -> (Lsn, Lsn) {
    let heard_all = l
        .members
        .iter()
        .all(|n| l.flush.contains_key(n) && l.slot.contains_key(n));
    if !heard_all {
        return (Lsn::INVALID, Lsn::INVALID);
    }
    let peer = l.flush.values().copied().min().unwrap_or(Lsn::INVALID);
    let slot = l
        .slot
        .values()
        .copied()
        .filter(|s| s.is_valid())
        .min()
        .unwrap_or(Lsn::INVALID);
    (peer, slot)
}

fn append(l: &Leader, begin: Lsn, end: Lsn, wal: Bytes) -> ProposerMessage {
    let (peer_horizon_lsn, slot_horizon_lsn) = horizons(l);
    ProposerMessage::Append(AppendRequest {
        term: l.term,
        begin_lsn: begin,
        end_lsn: end,
        commit_lsn: l.commit_lsn,
        peer_horizon_lsn,
        slot_horizon_lsn,
        wal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::acceptor::term_lsn;

    const START: u64 = 1 << 24;

    fn proposer(n: u64) -> Proposer {
        let members = (1..=n)
            .map(|i| (NodeId(i), format!("127.0.0.1:{}", 5450 + i)))
            .collect();
        let server = ServerInfo {
            system_id: 1,
            pg_version: 150_000,
            wal_seg_size: 1 << 20,
            tli: 1,
        };
        Proposer::new(ProposerConfig::new(
            Ttid::default(),
            server,
            Lsn(START),
            members,
        ))
    }

    fn greet(p: &mut Proposer, node: u64, term: Term) -> Vec<Action> {
        p.on_connected(NodeId(node));
        p.on_message(
            NodeId(node),
            AcceptorMessage::Greeting(AcceptorGreeting {
                protocol_version: PROTOCOL_VERSION,
                node_id: NodeId(node),
                term,
                conf: crate::consensus::membership::Configuration::initial(Default::default()),
            }),
        )
    }

    fn vote(term: Term, flush: u64, history: &[(Term, u64)]) -> AcceptorMessage {
        AcceptorMessage::Vote(VoteResponse {
            term,
            granted: true,
            flush_lsn: Lsn(flush),
            commit_lsn: Lsn(START),
            term_history: TermHistory(history.iter().map(|&(t, l)| term_lsn(t, l)).collect()),
            timeline_start_lsn: Lsn(START),
            tli: 1,
            pg_ancestors: Vec::new(),
        })
    }

    fn ack(term: Term, flush: u64) -> AcceptorMessage {
        ack_holding(term, START, flush)
    }

    /// An AppendResponse from a node that stores `[local_start, flush)`.
    fn ack_holding(term: Term, local_start: u64, flush: u64) -> AcceptorMessage {
        AcceptorMessage::Append(AppendResponse {
            term,
            flush_lsn: Lsn(flush),
            commit_lsn: Lsn(START),
            slot_horizon_lsn: Lsn::INVALID,
            local_start_lsn: Lsn(local_start),
        })
    }

    /// An AppendResponse from a node whose lowest durable slot is `slot`.
    fn ack_slot(term: Term, flush: u64, slot: Lsn) -> AcceptorMessage {
        AcceptorMessage::Append(AppendResponse {
            term,
            flush_lsn: Lsn(flush),
            commit_lsn: Lsn(START),
            slot_horizon_lsn: slot,
            local_start_lsn: Lsn(START),
        })
    }

    /// (peer horizon, slot horizon) of every append in `out`.
    fn horizons_sent(out: &[Action]) -> Vec<(Lsn, Lsn)> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send(_, ProposerMessage::Append(r)) => {
                    Some((r.peer_horizon_lsn, r.slot_horizon_lsn))
                }
                _ => None,
            })
            .collect()
    }

    /// A new term knows nobody's slots: both horizons stay unknown until
    /// every member has answered in it, however many answered before; then
    /// the slot horizon is the lowest slot of any member (one without slots
    /// does not lower it), and INVALID beside a valid peer horizon once no
    /// member has one.
    #[test]
    fn appends_end_where_pushes_ended_unless_a_push_is_larger_than_an_append() {
        let buf: VecDeque<(Lsn, Bytes)> = [(100, 50), (150, 30), (180, 500)]
            .iter()
            .map(|&(s, n)| (Lsn(s), Bytes::from(vec![0u8; n])))
            .collect();
        let end = Lsn(680);
        // Room for the first two pushes but not the third.
        assert_eq!(append_end(&buf, Lsn(100), end, 100, false), Some(Lsn(180)));
        assert_eq!(append_end(&buf, Lsn(100), end, 79, false), Some(Lsn(150)));
        // Less room than the next push: wait for the window...
        assert_eq!(append_end(&buf, Lsn(180), end, 100, false), None);
        // ... unless that is a whole append: the push is cut.
        assert_eq!(append_end(&buf, Lsn(180), end, 100, true), Some(Lsn(280)));
        assert_eq!(append_end(&buf, Lsn(280), end, 1000, false), Some(end));
        assert_eq!(append_end(&buf, Lsn(120), end, 1000, false), Some(end));
    }

    #[test]
    fn horizons_go_out_only_once_every_member_reported_its_slots() {
        let mut p = proposer(3);
        p.start_election();
        greet(&mut p, 1, 0);
        greet(&mut p, 2, 0);
        p.on_message(NodeId(1), vote(1, START, &[]));
        p.on_message(NodeId(2), vote(1, START, &[]));
        assert!(p.is_leading());
        p.on_message(NodeId(1), ack_slot(1, START, Lsn(START + 10)));
        p.on_message(NodeId(2), ack_slot(1, START, Lsn::INVALID));
        let unknown = (Lsn::INVALID, Lsn::INVALID);
        let out = p.push_wal(&[1; 100]).unwrap();
        assert_eq!(horizons_sent(&out), [unknown, unknown]);
        p.on_message(NodeId(1), ack_slot(1, START + 100, Lsn(START + 10)));
        let out = p.on_message(NodeId(2), ack_slot(1, START + 100, Lsn::INVALID));
        assert!(out.contains(&Action::CommitAdvanced(Lsn(START + 100))));
        let sent = horizons_sent(&out);
        assert!(
            !sent.is_empty() && sent.iter().all(|h| *h == unknown),
            "{sent:?}"
        );
        // Node 3 answers: now every member's slots are known.
        let out = greet(&mut p, 3, 0);
        assert!(out.iter().any(|a| matches!(a,
            Action::Send(n, ProposerMessage::VoteRequest(_)) if *n == NodeId(3))));
        p.on_message(NodeId(3), vote(1, START, &[]));
        p.on_message(NodeId(3), ack_slot(1, START, Lsn(START + 20)));
        let out = p.push_wal(&[2; 10]).unwrap();
        let sent = horizons_sent(&out);
        assert!(sent.contains(&(Lsn(START), Lsn(START + 10))), "{sent:?}");
        // Node 1's slot goes: node 3's holds; then none is left anywhere.
        p.on_message(NodeId(1), ack_slot(1, START + 110, Lsn::INVALID));
        let out = p.push_wal(&[3; 10]).unwrap();
        assert!(horizons_sent(&out).contains(&(Lsn(START), Lsn(START + 20))));
        p.on_message(NodeId(3), ack_slot(1, START + 100, Lsn::INVALID));
        let out = p.push_wal(&[4; 10]).unwrap();
        assert!(horizons_sent(&out).contains(&(Lsn(START + 100), Lsn::INVALID)));
    }

    #[test]
    fn parses_member_list() {
        let m = parse_members("1@a:5432, 2@b:5433").unwrap();
        assert_eq!(m[&NodeId(2)], "b:5433");
        assert_eq!(
            parse_members("1@a:1,1@b:2"),
            Err(MembersParseError::Duplicate(NodeId(1)))
        );
        assert!(matches!(
            parse_members("x@a:1"),
            Err(MembersParseError::BadId(_))
        ));
        assert!(matches!(
            parse_members("1@a"),
            Err(MembersParseError::Syntax(_))
        ));
        assert_eq!(parse_members(""), Err(MembersParseError::Empty));
    }

    #[test]
    fn refuses_a_node_greeting_under_another_id() {
        let mut p = proposer(3);
        p.on_connected(NodeId(1));
        let out = p.on_message(
            NodeId(1),
            AcceptorMessage::Greeting(AcceptorGreeting {
                protocol_version: PROTOCOL_VERSION,
                node_id: NodeId(9),
                term: 0,
                conf: crate::consensus::membership::Configuration::initial(Default::default()),
            }),
        );
        assert!(out.contains(&Action::WrongNode {
            expected: NodeId(1),
            got: NodeId(9)
        }));
        assert!(out.contains(&Action::Disconnect(NodeId(1))));
    }

    /// Term above every greeting of a majority; donor by (last_log_term,
    /// flush) where last_log_term only counts WAL held; Elected carries each
    /// node's divergence point; commit counts only flushes past
    /// term_start_lsn.
    #[test]
    fn elects_with_the_right_donor_and_commits_by_the_raft_rule() {
        let mut p = proposer(3);
        p.start_election();
        assert!(greet(&mut p, 1, 4).is_empty());
        let out = greet(&mut p, 2, 2);
        assert_eq!(
            out,
            vec![
                Action::Send(NodeId(1), ProposerMessage::VoteRequest(VoteRequest::new(5))),
                Action::Send(NodeId(2), ProposerMessage::VoteRequest(VoteRequest::new(5))),
            ]
        );
        // node 1: long log of term 2; node 2: shorter log of term 3.
        assert!(p
            .on_message(NodeId(1), vote(5, START + 500, &[(2, START)]))
            .is_empty());
        let out = p.on_message(
            NodeId(2),
            vote(5, START + 300, &[(2, START), (3, START + 200)]),
        );
        assert_eq!(
            out[0],
            Action::Elected {
                term: 5,
                term_start_lsn: Lsn(START + 300),
                donor: NodeId(2)
            }
        );
        let history = TermHistory(vec![
            term_lsn(2, START),
            term_lsn(3, START + 200),
            term_lsn(5, START + 300),
        ]);
        let elected = |at: u64| {
            ProposerMessage::Elected(Elected {
                term: 5,
                start_streaming_at: Lsn(at),
                term_history: history.clone(),
                pg_tli: 1,
                pg_ancestors: Vec::new(),
            })
        };
        assert!(out.contains(&Action::Send(NodeId(1), elected(START + 200))));
        assert!(out.contains(&Action::Send(NodeId(2), elected(START + 300))));
        // node 1 must be brought to term_start_lsn from the donor, once the
        // donor has shown it holds our log.
        p.on_message(NodeId(1), ack(5, START + 200));
        let out = p.on_message(NodeId(2), ack(5, START + 300));
        assert!(!out.iter().any(|a| matches!(a, Action::CommitAdvanced(_))));
        assert!(out.iter().any(|a| matches!(a,
            Action::RecoveryRead { target, donor, start, end, .. }
                if *target == NodeId(1) && *donor == NodeId(2)
                    && *start == Lsn(START + 200) && *end == Lsn(START + 300))));
        // New WAL; node 1 has not reached term_start_lsn, so node 2 alone
        // is no majority.
        p.push_wal(&[7; 50]).unwrap();
        let out = p.on_message(NodeId(2), ack(5, START + 350));
        assert!(!out.iter().any(|a| matches!(a, Action::CommitAdvanced(_))));
        let out = p.on_recovery_data(1, Bytes::from(vec![1; 100]));
        assert!(out.iter().any(|a| matches!(a, Action::Send(n, ProposerMessage::Append(r))
            if *n == NodeId(1) && r.begin_lsn == Lsn(START + 200) && r.end_lsn == Lsn(START + 300))));
        let out = p.on_message(NodeId(1), ack(5, START + 300));
        assert!(out.contains(&Action::CommitAdvanced(Lsn(START + 300))));
    }

    /// A commit advance goes out with the next WAL to each node; only
    /// nodes that got none within commit_tell_delay get an empty append.
    #[test]
    fn a_commit_advance_rides_on_new_wal_and_is_told_alone_only_when_none_comes() {
        let mut p = proposer(3);
        let delay = 5;
        p.cfg.commit_tell_delay = delay;
        p.on_tick(1000);
        p.start_election();
        greet(&mut p, 1, 0);
        greet(&mut p, 2, 0);
        greet(&mut p, 3, 0);
        for n in 1..=3 {
            p.on_message(NodeId(n), vote(1, START, &[]));
        }
        for n in 1..=3 {
            p.on_message(NodeId(n), ack(1, START));
        }
        let commit_of = |out: &[Action], node: u64| -> Vec<(Lsn, usize)> {
            out.iter()
                .filter_map(|a| match a {
                    Action::Send(n, ProposerMessage::Append(r)) if *n == NodeId(node) => {
                        Some((r.commit_lsn, r.wal.len()))
                    }
                    _ => None,
                })
                .collect()
        };
        p.push_wal(&[1; 100]).unwrap();
        p.on_message(NodeId(1), ack(1, START + 100));
        let out = p.on_message(NodeId(2), ack(1, START + 100));
        assert!(out.contains(&Action::CommitAdvanced(Lsn(START + 100))));
        // Nobody is told at once.
        assert!((1..=3).all(|n| commit_of(&out, n).is_empty()), "{out:?}");
        assert_eq!(p.commit_tell_due(), Some(1000 + delay));
        // New WAL reaches nodes 1 and 2 (node 3 still has 100 bytes in
        // flight and a window left) and carries the commit.
        let out = p.push_wal(&[2; 50]).unwrap();
        for n in 1..=3 {
            assert_eq!(commit_of(&out, n), [(Lsn(START + 100), 50)], "node {n}");
        }
        // Everyone was told: nothing more goes out when the delay passes.
        let out = p.on_tick(1000 + delay);
        assert!((1..=3).all(|n| commit_of(&out, n).is_empty()), "{out:?}");
        assert_eq!(p.commit_tell_due(), None);

        // The next advance with no WAL after it, timed from when it
        // happened (the clock moved between ticks): told by an empty append
        // once the delay has passed, not before.
        let t = 1000 + 10 * delay;
        p.advance_clock(t);
        p.on_message(NodeId(1), ack(1, START + 150));
        let out = p.on_message(NodeId(2), ack(1, START + 150));
        assert!(out.contains(&Action::CommitAdvanced(Lsn(START + 150))));
        assert_eq!(p.commit_tell_due(), Some(t + delay));
        assert!(p
            .on_tick(t + delay - 1)
            .iter()
            .all(|a| !matches!(a, Action::Send(..))));
        let out = p.on_tick(t + delay);
        for n in 1..=3 {
            assert_eq!(commit_of(&out, n), [(Lsn(START + 150), 0)], "node {n}");
        }
        assert_eq!(p.commit_tell_due(), None);
    }

    /// By default every elected acceptor is told a commit advance at once.
    #[test]
    fn by_default_a_commit_advance_is_told_to_every_acceptor_at_once() {
        let mut p = proposer(3);
        assert_eq!(p.config().commit_tell_delay, 0);
        p.start_election();
        for n in 1..=3 {
            greet(&mut p, n, 0);
        }
        for n in 1..=3 {
            p.on_message(NodeId(n), vote(1, START, &[]));
        }
        for n in 1..=3 {
            p.on_message(NodeId(n), ack(1, START));
        }
        p.push_wal(&[1; 100]).unwrap();
        p.on_message(NodeId(1), ack(1, START + 100));
        let out = p.on_message(NodeId(2), ack(1, START + 100));
        assert!(out.contains(&Action::CommitAdvanced(Lsn(START + 100))));
        for n in 1..=3 {
            assert!(
                out.iter().any(
                    |a| matches!(a, Action::Send(node, ProposerMessage::Append(r))
                    if *node == NodeId(n) && r.wal.is_empty() && r.commit_lsn == Lsn(START + 100))
                ),
                "node {n} was not told: {out:?}"
            );
        }
        assert_eq!(p.commit_tell_due(), None);
    }

    #[test]
    fn buffered_wal_is_sliced_from_chunks_or_copied_across_them() {
        let buf: VecDeque<(Lsn, Bytes)> = [
            (Lsn(100), Bytes::from_static(b"abcd")),
            (Lsn(104), Bytes::from_static(b"ef")),
            (Lsn(106), Bytes::from_static(b"ghij")),
        ]
        .into_iter()
        .collect();
        let get = |a: u64, b: u64| buffered(&buf, Lsn(a), Lsn(b));
        assert_eq!(get(100, 104), &b"abcd"[..]);
        assert_eq!(get(101, 103), &b"bc"[..]);
        assert_eq!(get(104, 106), &b"ef"[..]);
        assert_eq!(get(103, 107), &b"defg"[..]);
        assert_eq!(get(100, 110), &b"abcdefghij"[..]);
        assert_eq!(get(107, 110), &b"hij"[..]);
        // A slice of one chunk shares its memory.
        assert_eq!(get(106, 110).as_ptr(), buf[2].1.as_ptr());
    }

    #[test]
    fn steps_down_on_a_higher_term() {
        let mut p = proposer(3);
        p.start_election();
        greet(&mut p, 1, 0);
        greet(&mut p, 2, 0);
        p.on_message(NodeId(1), vote(1, START, &[]));
        p.on_message(NodeId(2), vote(1, START, &[]));
        assert!(p.is_leading());
        assert_eq!(p.leader_view().unwrap().1, Lsn(START));
        let out = p.on_message(NodeId(1), ack(3, START));
        assert_eq!(out, vec![Action::SteppedDown { term: 1, seen: 3 }]);
        assert_eq!(p.push_wal(b"x"), Err(PushError::NotElected));
        assert_eq!(p.max_term_seen(), 3);
    }

    /// A node needs WAL the donor trimmed (past --max-wal-keep): it is
    /// re-seeded at the lowest LSN a source still holds, then recovered from
    /// there; a later trim past that point re-seeds it again, higher.
    #[test]
    fn reseeds_a_node_whose_wal_every_source_trimmed() {
        let mut p = proposer(3);
        p.start_election();
        greet(&mut p, 1, 0);
        greet(&mut p, 2, 0);
        p.on_message(NodeId(1), vote(1, START + 100, &[(1, START)]));
        let out = p.on_message(NodeId(2), vote(1, START + 900, &[(1, START)]));
        assert!(out.contains(&Action::Elected {
            term: 1,
            term_start_lsn: Lsn(START + 900),
            donor: NodeId(2)
        }));
        // The donor stores only [START+500, START+900).
        p.on_message(NodeId(1), ack(1, START + 100));
        let out = p.on_message(NodeId(2), ack_holding(1, START + 500, START + 900));
        let reseed = ProposerMessage::Reseed(Reseed {
            term: 1,
            start_lsn: Lsn(START + 500),
        });
        let at = out
            .iter()
            .position(|a| *a == Action::Send(NodeId(1), reseed.clone()))
            .expect("a re-seed for node 1");
        // Then recovery from the new start, never below it.
        assert!(out[at..].iter().any(|a| matches!(a,
            Action::RecoveryRead { target, donor, start, end, .. }
                if *target == NodeId(1) && *donor == NodeId(2)
                    && *start == Lsn(START + 500) && *end == Lsn(START + 900))));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::RecoveryRead { start, .. } if *start < Lsn(START + 500))));
        let out = p.on_message(NodeId(1), ack_holding(1, START + 500, START + 500));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::Send(_, ProposerMessage::Reseed(_)))));
    }

    /// While some source still holds what a node needs, it is read from
    /// there, not re-seeded.
    #[test]
    fn prefers_a_source_that_still_holds_the_wal_over_a_reseed() {
        let mut p = proposer(3);
        p.start_election();
        greet(&mut p, 1, 0);
        greet(&mut p, 2, 0);
        greet(&mut p, 3, 0);
        p.on_message(NodeId(1), vote(1, START + 100, &[(1, START)]));
        p.on_message(NodeId(2), vote(1, START + 900, &[(1, START)]));
        p.on_message(NodeId(3), vote(1, START + 900, &[(1, START)]));
        // Node 3 has not answered yet: it may hold what node 1 needs.
        let out = p.on_message(NodeId(2), ack_holding(1, START + 500, START + 900));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::Send(_, ProposerMessage::Reseed(_)))));
        let out = p.on_message(NodeId(3), ack_holding(1, START, START + 900));
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::Send(_, ProposerMessage::Reseed(_)))));
        assert!(
            out.iter().any(|a| matches!(a,
            Action::RecoveryRead { target, donor, start, .. }
                if *target == NodeId(1) && *donor == NodeId(3) && *start == Lsn(START + 100))),
            "{out:?}"
        );
    }

    /// The `create` flag of the greeting `on_connected` sends.
    fn connect_creates(p: &mut Proposer, node: u64) -> bool {
        let out = p.on_connected(NodeId(node));
        match out.as_slice() {
            [Action::Send(n, ProposerMessage::Greeting(g))] if *n == NodeId(node) => g.create,
            _ => panic!("no greeting: {out:?}"),
        }
    }

    fn lacks(node: u64, recreate: bool) -> Action {
        Action::LacksTimeline {
            node: NodeId(node),
            recreate,
        }
    }

    /// `--create-timeline` creates only when every member answered that it
    /// lacks the timeline, only on members that never held it, and a member
    /// wiped after that is reported, never created again.
    #[test]
    fn creates_only_where_every_member_lacked_the_timeline() {
        let mut p = proposer(3);
        p.cfg.create = true;
        p.start_election();
        for n in 1..=3 {
            assert!(!connect_creates(&mut p, n), "the first greeting only asks");
        }
        assert!(p.on_no_timeline(NodeId(1)).is_empty());
        assert!(p.on_no_timeline(NodeId(2)).is_empty());
        assert!(p.on_no_timeline(NodeId(3)).is_empty());
        assert!(!p.timeline_exists());
        for n in 1..=3 {
            assert!(connect_creates(&mut p, n), "node {n}");
        }
        for n in 1..=2 {
            p.on_message(
                NodeId(n),
                AcceptorMessage::Greeting(AcceptorGreeting {
                    protocol_version: PROTOCOL_VERSION,
                    node_id: NodeId(n),
                    term: 0,
                    conf: crate::consensus::membership::Configuration::initial(Default::default()),
                }),
            );
        }
        assert!(p.timeline_exists());
        // Node 3's connection broke before it answered: it never held the
        // timeline, so this creation still covers it.
        p.on_disconnected(NodeId(3));
        assert!(connect_creates(&mut p, 3));
        // Node 1 was wiped: it lacks what it held.
        p.on_disconnected(NodeId(1));
        assert!(!connect_creates(&mut p, 1));
        assert_eq!(p.on_no_timeline(NodeId(1)), vec![lacks(1, false)]);
        assert!(!connect_creates(&mut p, 1));
    }

    /// A restarted proxy with `--create-timeline` finds a member holding
    /// the timeline: it creates nothing, and reports the members that lack
    /// it, also those that answered before it knew.
    #[test]
    fn a_restarted_proxy_never_creates() {
        let mut p = proposer(3);
        p.cfg.create = true;
        p.start_election();
        assert!(!connect_creates(&mut p, 3));
        assert!(p.on_no_timeline(NodeId(3)).is_empty());
        let out = greet(&mut p, 1, 4);
        assert!(out.contains(&lacks(3, false)), "{out:?}");
        assert!(!connect_creates(&mut p, 3));
        assert_eq!(p.on_no_timeline(NodeId(3)), vec![lacks(3, false)]);
        assert!(!connect_creates(&mut p, 2));
    }

    #[test]
    fn without_create_a_timeline_no_member_holds_is_an_error() {
        let mut p = proposer(3);
        p.start_election();
        for n in 1..=3 {
            assert!(!connect_creates(&mut p, n));
        }
        assert!(p.on_no_timeline(NodeId(1)).is_empty());
        assert!(p.on_no_timeline(NodeId(2)).is_empty());
        assert_eq!(p.on_no_timeline(NodeId(3)), vec![Action::NoTimeline]);
    }

    /// A node's acknowledged flush counts only while its connection lasts:
    /// a wiped node that reconnects does not lend its old store's position
    /// to a commit.
    #[test]
    fn forgets_a_nodes_positions_when_its_connection_ends() {
        let mut p = proposer(3);
        p.start_election();
        for n in 1..=3 {
            greet(&mut p, n, 0);
        }
        for n in 1..=3 {
            p.on_message(NodeId(n), vote(1, START, &[]));
        }
        for n in 1..=3 {
            p.on_message(NodeId(n), ack(1, START));
        }
        p.push_wal(&[1; 100]).unwrap();
        let out = p.on_message(NodeId(1), ack(1, START + 100));
        assert!(!out.iter().any(|a| matches!(a, Action::CommitAdvanced(_))));
        p.on_disconnected(NodeId(1));
        let out = greet(&mut p, 1, 0);
        assert!(out
            .iter()
            .any(|a| matches!(a, Action::Send(_, ProposerMessage::VoteRequest(_)))));
        let out = p.on_message(NodeId(2), ack(1, START + 100));
        assert!(
            !out.iter().any(|a| matches!(a, Action::CommitAdvanced(_))),
            "counted node 1's old flush: {out:?}"
        );
        // What the node says on its new connection counts.
        p.on_message(NodeId(1), vote(1, START + 100, &[(1, START)]));
        let out = p.on_message(NodeId(1), ack(1, START + 100));
        assert!(
            out.contains(&Action::CommitAdvanced(Lsn(START + 100))),
            "{out:?}"
        );
    }

    /// A member the operator declared lost is re-created once, and only
    /// after a majority without it acknowledged this term's commit.
    #[test]
    fn recreates_a_member_declared_lost_once_after_a_commit_without_it() {
        let mut p = proposer(3);
        p.cfg.recreate = [NodeId(3)].into_iter().collect();
        p.start_election();
        greet(&mut p, 1, 2);
        greet(&mut p, 2, 2);
        assert!(!connect_creates(&mut p, 3));
        assert_eq!(p.on_no_timeline(NodeId(3)), vec![lacks(3, true)]);
        p.on_message(NodeId(1), vote(3, START + 100, &[(2, START)]));
        p.on_message(NodeId(2), vote(3, START + 100, &[(2, START)]));
        assert!(p.is_leading());
        // Not before a commit in this term.
        assert!(!connect_creates(&mut p, 3));
        p.on_no_timeline(NodeId(3));
        p.on_message(NodeId(1), ack(3, START + 100));
        // One acknowledgement is no majority.
        assert!(!connect_creates(&mut p, 3));
        p.on_no_timeline(NodeId(3));
        let out = p.on_message(NodeId(2), ack(3, START + 100));
        assert!(out.contains(&Action::CommitAdvanced(Lsn(START + 100))));
        assert!(connect_creates(&mut p, 3));
        let out = p.on_message(
            NodeId(3),
            AcceptorMessage::Greeting(AcceptorGreeting {
                protocol_version: PROTOCOL_VERSION,
                node_id: NodeId(3),
                term: 0,
                conf: crate::consensus::membership::Configuration::initial(Default::default()),
            }),
        );
        assert_eq!(out[0], Action::Recreated(NodeId(3)));
        assert!(out.contains(&Action::Send(
            NodeId(3),
            ProposerMessage::VoteRequest(VoteRequest::new(3))
        )));
        assert!(p.recreated().contains(&NodeId(3)));
        // Wiped again: not re-created by this proposer.
        assert_eq!(p.on_no_timeline(NodeId(3)), vec![lacks(3, false)]);
        assert!(!connect_creates(&mut p, 3));
    }

    /// An acceptor reporting the last term there is would leave nothing to
    /// campaign for: its connection is dropped and the others elect.
    #[test]
    fn an_acceptor_in_the_last_term_is_dropped_not_followed() {
        let mut p = proposer(3);
        p.start_election();
        let out = greet(&mut p, 1, Term::MAX);
        assert_eq!(out, vec![Action::Disconnect(NodeId(1))]);
        greet(&mut p, 2, 5);
        let out = greet(&mut p, 3, 5);
        assert!(out.contains(&Action::Send(
            NodeId(2),
            ProposerMessage::VoteRequest(VoteRequest::new(6))
        )));
        assert_eq!(p.max_term_seen(), 6);
    }

    /// Values from acceptors are checked: a vote history no acceptor can
    /// store, or a local_start above the flush, drops the connection; a
    /// donor flush near the end of the LSN space makes pushed WAL an error
    /// instead of an overflow.
    #[test]
    fn impossible_acceptor_values_are_refused() {
        let mut p = proposer(3);
        p.start_election();
        greet(&mut p, 1, 0);
        greet(&mut p, 2, 0);
        greet(&mut p, 3, 0);
        let long: Vec<(Term, u64)> = (1..=limits::MAX_TERM_HISTORY as u64 + 1)
            .map(|t| (t, START))
            .collect();
        let out = p.on_message(NodeId(3), vote(1, START, &long));
        assert_eq!(out, vec![Action::Disconnect(NodeId(3))]);
        let last = u64::MAX - 10;
        p.on_message(NodeId(1), vote(1, last, &[(1, START)]));
        p.on_message(NodeId(2), vote(1, last, &[(1, START)]));
        assert_eq!(p.leader_view().unwrap().1, Lsn(last));
        assert_eq!(
            p.push_wal(&[0; 20]),
            Err(PushError::PastLastLsn {
                end: Lsn(last),
                len: 20
            })
        );
        p.push_wal(&[0; 10]).unwrap();
        let out = p.on_message(NodeId(1), ack_holding(1, last, last - 1));
        assert_eq!(out, vec![Action::Disconnect(NodeId(1))]);
    }

    /// A proposer whose primary is on PostgreSQL timeline 2, left timeline
    /// 1 at `switch`.
    fn promoted(switch: u64) -> Proposer {
        let mut p = proposer(3);
        p.cfg.server.tli = 2;
        p.cfg.pg_ancestors = Some(vec![(1, Lsn(switch))]);
        p
    }

    /// Issue 19, the switch rule: a promoted primary is elected only if its
    /// timeline left the donor's at or above the end of the donor's log
    /// (which may hold acknowledged commits beyond the voters' commit_lsn),
    /// and Elected carries the new timeline; below it, nothing is elected.
    #[test]
    fn a_promoted_primary_is_elected_only_from_a_switch_at_the_end_of_the_log() {
        for (switch, elected) in [
            (START + 300, true),
            (START + 400, true),
            (START + 299, false),
        ] {
            let mut p = promoted(switch);
            p.start_election();
            greet(&mut p, 1, 1);
            greet(&mut p, 2, 1);
            p.on_message(NodeId(1), vote(2, START + 300, &[(1, START)]));
            let out = p.on_message(NodeId(2), vote(2, START + 200, &[(1, START)]));
            if elected {
                assert!(p.is_leading(), "switch at {switch}");
                assert!(out.iter().any(|a| matches!(a,
                    Action::Send(_, ProposerMessage::Elected(e))
                        if e.pg_tli == 2 && e.pg_ancestors == vec![(1, Lsn(switch))])));
            } else {
                assert!(!p.is_leading());
                assert_eq!(
                    out,
                    vec![Action::PgSwitchRefused {
                        from_tli: 1,
                        tli: 2,
                        switch: Some(Lsn(switch)),
                        wal_end: Lsn(START + 300),
                    }]
                );
            }
        }
        // A history that does not contain the donor's timeline.
        let mut p = proposer(3);
        p.cfg.server.tli = 3;
        p.cfg.pg_ancestors = Some(vec![(2, Lsn(START))]);
        p.start_election();
        greet(&mut p, 1, 1);
        greet(&mut p, 2, 1);
        p.on_message(NodeId(1), vote(2, START + 300, &[(1, START)]));
        let out = p.on_message(NodeId(2), vote(2, START + 200, &[(1, START)]));
        assert!(matches!(
            out[..],
            [Action::PgSwitchRefused { switch: None, .. }]
        ));
    }

    /// Without a primary (`--sync-only`) Elected hands on the donor's
    /// PostgreSQL timeline, so a node that missed a switch learns it.
    #[test]
    fn without_a_primary_elected_carries_the_donors_timeline() {
        let mut p = proposer(3);
        p.cfg.server.tli = 0;
        p.cfg.pg_ancestors = None;
        p.start_election();
        greet(&mut p, 1, 1);
        greet(&mut p, 2, 1);
        let switched = match vote(2, START + 300, &[(1, START), (2, START + 300)]) {
            AcceptorMessage::Vote(mut v) => {
                v.tli = 2;
                v.pg_ancestors = vec![(1, Lsn(START + 300))];
                AcceptorMessage::Vote(v)
            }
            other => other,
        };
        p.on_message(NodeId(1), switched);
        let out = p.on_message(NodeId(2), vote(2, START + 200, &[(1, START)]));
        assert!(p.is_leading());
        let elected: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Send(_, ProposerMessage::Elected(e)) => {
                    Some((e.pg_tli, e.pg_ancestors.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(elected.len(), 2);
        assert!(elected
            .iter()
            .all(|e| *e == (2, vec![(1, Lsn(START + 300))])));
    }
}
