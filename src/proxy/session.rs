//! One proxy session: one connection to the primary, one term. The session
//! owns the sans-IO `Proposer`, feeds it replies, time and the primary's
//! WAL, and carries out its actions. Losing the primary or the term ends the
//! session; the caller starts a new one (a new term) after a backoff.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use super::ack_latency::AckLatency;
use super::event::{Event, PrimaryGone, Refused};
use super::primary::{self, PrimaryStream};
use super::records::Holdback;
use super::safekeepers;
use super::{Config, OperatorActs, ProxyError};
use crate::consensus::messages::{ProposerMessage, ServerInfo};
use crate::consensus::pg_timeline::{self, PgAncestors};
use crate::consensus::primary_check::{self, PrimaryOrigin, Rewind, RewindAsk};
use crate::consensus::proposer::{Action, Proposer, ProposerConfig};
use crate::id::NodeId;
use crate::lsn::Lsn;
use crate::pq::client::PgWriter;

/// WAL sent to the safekeepers and not yet committed, at most; beyond it the
/// session stops reading the primary, which TCP then holds back.
const MAX_UNCOMMITTED: u64 = 64 << 20;
const TICK: Duration = Duration::from_millis(50);
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How soon a safekeeper is dialled again after its connection ended.
const REDIAL: Duration = Duration::from_millis(500);
/// … after it answered that it lacks the timeline others hold, and the
/// operator has not asked to re-create it there.
const REDIAL_LACKING: Duration = Duration::from_secs(5);

/// The primary's bytes just below term_start_lsn, kept after an election
/// until the proposer's check of them is done (`primary_check`).
struct Collect {
    term_start: Lsn,
    /// The lowest LSN the check may ask for.
    from: Lsn,
    primary: BytesMut,
    /// The range `Action::VerifyPrimary` asked for, and the source's copy.
    asked: Option<(Lsn, Lsn)>,
    safekeepers: Option<Bytes>,
}

pub(super) struct Session<'a> {
    cfg: &'a Config,
    pub(super) proposer: Proposer,
    started: Instant,
    events_tx: mpsc::Sender<Event>,
    events_rx: Option<mpsc::Receiver<Event>>,
    conns: HashMap<NodeId, mpsc::UnboundedSender<ProposerMessage>>,
    dialing: HashMap<NodeId, bool>,
    redial_at: HashMap<NodeId, Instant>,
    /// Where streaming from the primary's slot began.
    start_lsn: Lsn,
    /// None with --sync-only.
    primary_writer: Option<PgWriter>,
    /// The primary's timeline history file, handed to every safekeeper.
    history: Option<(u32, Bytes)>,
    /// Next LSN expected from the primary.
    primary_pos: Lsn,
    /// Bytes at and above term_start_lsn that arrived while the check
    /// collected (one piece: the primary is not read past term_start_lsn
    /// until the check is done, `wants_primary_wal`).
    held: Vec<Bytes>,
    /// The primary's WAL from term_start_lsn on, held until its records are
    /// complete (`records.rs`); made at the first push.
    holdback: Option<Holdback>,
    wal_seg_size: u32,
    /// Set after an election while the primary's WAL is unverified.
    collect: Option<Collect>,
    commit_lsn: Lsn,
    last_status: Instant,
    election_started: bool,
    /// (term, term_start_lsn) once elected.
    term_start: Option<(u64, Lsn)>,
    /// With --sync-only: the proposer's result (`Action::Settled`).
    pub(super) settled: Option<(u64, Lsn, BTreeSet<NodeId>)>,
    /// With --sync-only: until when members beyond the settled majority
    /// are brought along.
    pub(super) others_until: Option<Instant>,
    acks: AckLatency,
    /// Members reported as lacking the timeline in this session.
    lacking: BTreeSet<NodeId>,
    /// Set when this session ends to have the next one stream from below
    /// the slot.
    rewind_asked: Option<RewindAsk>,
}

/// Run one session against the primary. Returns only with an error: the
/// primary or the term went away (retry), or a fatal condition.
///
/// `rewind` carries, from one session to the next, where streaming starts
/// below the slot's restart LSN: the safekeepers' end of WAL after
/// whole-cluster recovery from checkpoints, or, once, a page below
/// term_start_lsn for the check of the primary's WAL (from WAL the primary
/// kept by `wal_keep_size`).
/// `acts` are the operator's one-shot requests (create the timeline,
/// re-create it on lost members): what a session carried out is removed.
pub async fn run(
    cfg: &Config,
    rewind: &mut Rewind,
    acts: &mut OperatorActs,
) -> Result<(), ProxyError> {
    let primary_cfg = cfg
        .primary
        .clone()
        .ok_or_else(|| ProxyError::Fatal("--primary is required unless --sync-only".into()))?;
    let stream_from = rewind.next_stream_from();
    let required = stream_from
        .filter(|(_, required)| *required)
        .map(|(lsn, _)| lsn);
    let primary =
        match primary::connect(&primary_cfg, &cfg.slot, stream_from.map(|(lsn, _)| lsn)).await {
            Err(ProxyError::WalRemoved(e)) if required.is_some() => {
                return Err(wal_gone(required.unwrap_or_default(), &e))
            }
            r => r?,
        };
    tracing::info!(
        system_id = primary.server.system_id,
        tli = primary.server.tli,
        flush = %primary.flush_lsn,
        start = %primary.start_lsn,
        slot = %cfg.slot,
        "streaming from the primary; asking the safekeepers for votes"
    );
    let (primary_tx, mut primary_rx) = mpsc::channel::<Event>(16);
    let PrimaryStream {
        server,
        start_lsn,
        reader,
        writer,
        flush_lsn,
        history,
    } = primary;
    let reader_task = tokio::spawn(primary::run_reader(reader, primary_tx));
    let ancestors = match &history {
        Some((tli, content)) => pg_timeline::parse_history_file(content, *tli)
            .map_err(|e| ProxyError::Fatal(format!("primary: {e}")))?,
        None => Vec::new(),
    };
    let origin = PrimaryOrigin {
        stream_start: start_lsn,
        end_of_wal: flush_lsn,
        rewind_tried: rewind.tried,
    };
    let mut s = Session::new(
        cfg,
        acts,
        server,
        start_lsn,
        Some((writer, ancestors, origin)),
    );
    s.history = history;
    let result = s.main_loop(&mut primary_rx).await.map(|_| ());
    reader_task.abort();
    acts.carried_out(&s.proposer);
    let rewound = required.is_some_and(|r| r.segment_start(server.wal_seg_size) == start_lsn);
    if let Some(ask) = s.rewind_asked {
        rewind.ask(ask);
    }
    match result {
        Err(ProxyError::WalRemoved(e)) if rewound => {
            Err(wal_gone(required.unwrap_or_default(), &e))
        }
        other => other,
    }
}

fn wal_gone(from: Lsn, e: &str) -> ProxyError {
    ProxyError::Fatal(format!(
        "the safekeepers' WAL ends at {from}, and the primary no longer holds the WAL after it \
         ({e}): the commits since cannot be recovered from this primary (it keeps WAL for \
         wal_keep_size; raise it before relying on restores from checkpoints)"
    ))
}

impl<'a> Session<'a> {
    pub(super) fn new(
        cfg: &'a Config,
        acts: &OperatorActs,
        server: ServerInfo,
        start_lsn: Lsn,
        primary: Option<(PgWriter, PgAncestors, PrimaryOrigin)>,
    ) -> Session<'a> {
        let mut pcfg = ProposerConfig::new(cfg.ttid, server, start_lsn, cfg.members.clone());
        let (primary_writer, ancestors, origin) = match primary {
            Some((w, a, o)) => (Some(w), Some(a), Some(o)),
            None => (None, None, None),
        };
        pcfg.pg_ancestors = ancestors;
        pcfg.primary = origin;
        pcfg.settle = cfg.sync_only;
        pcfg.create = acts.create;
        pcfg.recreate = acts.recreate.clone();
        pcfg.proposer_id = cfg.proposer_id;
        if cfg.sync_only {
            // Acceptors record a commit-only heartbeat lazily and their
            // replies report a commit_lsn only once it is synced: the next
            // heartbeat (nothing new) syncs it. Settle soon after the commit.
            pcfg.heartbeat_interval = 100;
        }
        let (events_tx, events_rx) = mpsc::channel::<Event>(4096);
        Session {
            cfg,
            proposer: Proposer::new(pcfg),
            started: Instant::now(),
            events_tx,
            events_rx: Some(events_rx),
            conns: HashMap::new(),
            dialing: HashMap::new(),
            redial_at: HashMap::new(),
            start_lsn,
            primary_writer,
            history: None,
            primary_pos: start_lsn,
            held: Vec::new(),
            holdback: None,
            wal_seg_size: server.wal_seg_size,
            collect: None,
            commit_lsn: Lsn::INVALID,
            last_status: Instant::now(),
            election_started: false,
            term_start: None,
            settled: None,
            others_until: None,
            acks: AckLatency::new(),
            lacking: BTreeSet::new(),
            rewind_asked: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs until an error, or with --sync-only until the proposer says
    /// the settle is done (`self.settled`).
    pub(super) async fn main_loop(
        &mut self,
        primary_rx: &mut mpsc::Receiver<Event>,
    ) -> Result<(), ProxyError> {
        let mut events_rx = self.events_rx.take().expect("main_loop runs once");
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.dial_all();
        loop {
            let take_primary = self.wants_primary_wal();
            let tell_commit_at = self
                .proposer
                .commit_tell_due()
                .map(|ms| tokio::time::Instant::from_std(self.started) + Duration::from_millis(ms));
            tokio::select! {
                _ = tick.tick() => self.on_tick().await?,
                // A tick early: everything else in it is timed or done once.
                _ = tokio::time::sleep_until(tell_commit_at.unwrap_or_else(tokio::time::Instant::now)), if tell_commit_at.is_some() => self.on_tick().await?,
                Some(ev) = events_rx.recv() => self.on_event(ev).await?,
                Some(ev) = primary_rx.recv(), if take_primary => self.on_event(ev).await?,
            }
            if self.cfg.sync_only {
                let others_due = self.others_until.is_some_and(|u| Instant::now() >= u);
                let actions = self.proposer.settle_due(&self.reachable(), others_due);
                self.apply(actions).await?;
                if self.settled.is_some() {
                    return Ok(());
                }
            }
        }
    }

    /// With --sync-only: the nodes that may still be settled (connected,
    /// or their first connection attempt under way).
    fn reachable(&self) -> BTreeSet<NodeId> {
        self.proposer
            .peers()
            .into_keys()
            .filter(|n| {
                self.conns.contains_key(n)
                    || (self.dialing.get(n) == Some(&true) && !self.redial_at.contains_key(n))
            })
            .collect()
    }

    /// Read the primary only while elected, while still collecting the
    /// checked range or verified, and while uncommitted WAL is bounded.
    fn wants_primary_wal(&self) -> bool {
        if self.primary_writer.is_none() {
            return false;
        }
        if let Some(c) = &self.collect {
            return self.primary_pos < c.term_start;
        }
        match self.proposer.leader_view() {
            Some((_, _, _, end, commit)) if self.proposer.takes_wal() => {
                end.distance_from(commit.max(self.commit_lsn)) < MAX_UNCOMMITTED
            }
            _ => false,
        }
    }

    /// Dial every node the proposer talks to: `--safekeepers` and the
    /// members of the configuration in force (ARCHITECTURE.md 3.13).
    fn dial_all(&mut self) {
        let nodes: Vec<(NodeId, String)> = self.proposer.peers().into_iter().collect();
        for (node, addr) in nodes {
            if self.conns.contains_key(&node) || self.dialing.get(&node).copied().unwrap_or(false) {
                continue;
            }
            if self
                .redial_at
                .get(&node)
                .is_some_and(|t| Instant::now() < *t)
            {
                continue;
            }
            self.dialing.insert(node, true);
            tokio::spawn(safekeepers::run_push_connection(
                self.cfg.safekeeper_conninfo.clone(),
                node,
                addr,
                self.cfg.ttid,
                self.history.clone(),
                self.events_tx.clone(),
            ));
        }
    }

    async fn on_tick(&mut self) -> Result<(), ProxyError> {
        self.dial_all();
        let actions = self.maybe_start_election();
        self.apply(actions).await?;
        let now = self.now_ms();
        let actions = self.proposer.on_tick(now);
        self.apply(actions).await?;
        if self.collect.is_some() {
            let actions = self.proposer.on_primary_end(self.primary_pos);
            self.apply(actions).await?;
        }
        if self.last_status.elapsed() >= STATUS_INTERVAL {
            self.send_status(false).await?;
        }
        self.acks.maybe_log();
        Ok(())
    }

    /// The proposer waits for a majority of greetings itself (and creates a
    /// timeline only once every member said it lacks it).
    fn maybe_start_election(&mut self) -> Vec<Action> {
        if self.election_started {
            return Vec::new();
        }
        self.election_started = true;
        self.proposer.start_election()
    }

    fn send_to(&mut self, node: NodeId, msg: ProposerMessage) {
        if let Some(tx) = self.conns.get(&node) {
            if tx.send(msg).is_err() {
                self.conns.remove(&node);
            }
        }
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), ProxyError> {
        let now = self.now_ms();
        self.proposer.advance_clock(now);
        match ev {
            Event::Connected { node, sender } => {
                tracing::debug!(node = node.0, "connected to safekeeper");
                self.dialing.insert(node, false);
                self.conns.insert(node, sender);
                let actions = self.proposer.on_connected(node);
                self.apply(actions).await?;
                let actions = self.maybe_start_election();
                self.apply(actions).await?;
            }
            Event::Disconnected {
                node,
                reason,
                refused,
            } => {
                if refused == Some(Refused::Mismatch) {
                    return Err(ProxyError::Fatal(reason));
                }
                self.dialing.insert(node, false);
                if refused == Some(Refused::NoTimeline) {
                    tracing::debug!(node = node.0, "safekeeper lacks the timeline: {reason}");
                    self.conns.remove(&node);
                    self.redial_at.insert(node, Instant::now() + REDIAL);
                    let actions = self.proposer.on_no_timeline(node);
                    return self.apply(actions).await;
                }
                if self.conns.remove(&node).is_some() {
                    tracing::warn!(node = node.0, "safekeeper connection lost: {reason}");
                    self.proposer.on_disconnected(node);
                } else {
                    tracing::debug!(node = node.0, "safekeeper unreachable: {reason}");
                }
                self.redial_at.insert(node, Instant::now() + REDIAL);
            }
            Event::Reply { node, msg } => {
                let actions = self.proposer.on_message(node, msg);
                self.apply(actions).await?;
            }
            Event::RecoveryData { id, wal } => {
                let actions = self.proposer.on_recovery_data(id, wal);
                self.apply(actions).await?;
            }
            Event::RecoveryFailed { id, reason } => {
                tracing::warn!("recovery read failed: {reason}");
                let actions = self.proposer.on_recovery_failed(id);
                self.apply(actions).await?;
            }
            Event::CheckData(result) => match result {
                Ok(bytes) => {
                    if let Some(c) = &mut self.collect {
                        c.safekeepers = Some(bytes);
                    }
                    self.try_finish_check().await?;
                }
                Err(e) => {
                    tracing::warn!("reading the safekeepers' WAL to check the primary: {e}");
                    if let Some(c) = &mut self.collect {
                        c.asked = None;
                    }
                    let actions = self.proposer.on_primary_check_failed();
                    self.apply(actions).await?;
                }
            },
            Event::PrimaryWal { start, wal } => self.on_primary_wal(start, wal).await?,
            Event::PrimaryPing => self.send_status(false).await?,
            Event::PrimaryGone(PrimaryGone {
                reason,
                wal_removed,
            }) => {
                return Err(if wal_removed {
                    ProxyError::WalRemoved(reason)
                } else {
                    ProxyError::Retry(reason)
                });
            }
        }
        Ok(())
    }

    async fn apply(&mut self, actions: Vec<Action>) -> Result<(), ProxyError> {
        for a in actions {
            match a {
                Action::Send(node, msg) => self.send_to(node, msg),
                Action::Disconnect(node) => {
                    // Dropping the sender ends that connection's task.
                    if self.conns.remove(&node).is_some() {
                        tracing::warn!(
                            node = node.0,
                            "closing the connection to safekeeper {node}: no reply within the response timeout, or a reply out of step"
                        );
                    }
                    self.redial_at.insert(node, Instant::now() + REDIAL);
                }
                Action::RecoveryRead {
                    id,
                    donor,
                    term,
                    start,
                    end,
                    target,
                } => {
                    let Some(addr) = self.proposer.peers().get(&donor).cloned() else {
                        let more = self.proposer.on_recovery_failed(id);
                        Box::pin(self.apply(more)).await?;
                        continue;
                    };
                    tracing::debug!(target = target.0, donor = donor.0, %start, %end, "recovery read");
                    let tx = self.events_tx.clone();
                    let ttid = self.cfg.ttid;
                    let conninfo = self.cfg.safekeeper_conninfo.clone();
                    tokio::spawn(async move {
                        let read =
                            safekeepers::recovery_read(&conninfo, &addr, ttid, term, start, end);
                        let ev = match read.await {
                            Ok(wal) => Event::RecoveryData { id, wal },
                            Err(reason) => Event::RecoveryFailed { id, reason },
                        };
                        let _ = tx.send(ev).await;
                    });
                }
                Action::Elected {
                    term,
                    term_start_lsn,
                    donor,
                } => {
                    tracing::info!(term, %term_start_lsn, donor = donor.0, "elected");
                    self.term_start = Some((term, term_start_lsn));
                    if !self.proposer.takes_wal() && self.primary_writer.is_some() {
                        // The proposer checks the primary first: keep its
                        // bytes the check may ask for (at most
                        // CHECK_BYTES below term_start_lsn).
                        let lowest = term_start_lsn.0.saturating_sub(primary_check::CHECK_BYTES);
                        self.collect = Some(Collect {
                            term_start: term_start_lsn,
                            from: Lsn(lowest).max(self.start_lsn),
                            primary: BytesMut::new(),
                            asked: None,
                            safekeepers: None,
                        });
                    }
                }
                Action::VerifyPrimary {
                    term,
                    source,
                    from,
                    to,
                    short,
                } => self.verify_primary(term, source, from, to, short),
                Action::PrimaryVerified { from, to } => {
                    tracing::info!(%from, %to, "the primary's WAL matches the safekeepers'; streaming");
                    self.collect = None;
                    // What arrived above term_start while checking.
                    for rest in std::mem::take(&mut self.held) {
                        Box::pin(self.push(rest)).await?;
                    }
                }
                Action::RewindPrimary(ask) => {
                    self.rewind_asked = Some(ask);
                    return Err(ProxyError::Retry(match ask {
                        RewindAsk::ToEnd(end) => format!(
                            "rewinding: the safekeepers' WAL ends at {end}, below the slot's start \
                             {}; streaming again from {end}",
                            self.start_lsn
                        ),
                        RewindAsk::ForCheck { term_start, from } => format!(
                            "rewinding: the primary's stream starts at {}, less than a WAL page \
                             below the safekeepers' end of WAL {term_start}; streaming again from \
                             {from}'s segment to compare a full page",
                            self.start_lsn
                        ),
                    }));
                }
                Action::PrimaryRefused(refusal) => {
                    return Err(ProxyError::Fatal(refusal.to_string()));
                }
                Action::Settled { term, lsn, nodes } => self.settled = Some((term, lsn, nodes)),
                Action::SteppedDown { term, seen } => {
                    return Err(ProxyError::Retry(format!(
                        "another proposer won: term {seen} is above ours ({term}); stopped streaming"
                    )));
                }
                Action::CommitAdvanced(lsn) => {
                    self.commit_lsn = lsn;
                    self.send_status(false).await?;
                    self.acks.committed(lsn);
                }
                Action::WrongNode { expected, got } => {
                    return Err(ProxyError::Fatal(format!(
                        "the safekeeper at {} says it is node {}, but --safekeepers lists it as node {}",
                        self.cfg.members.get(&expected).map(String::as_str).unwrap_or("?"),
                        got.0,
                        expected.0
                    )));
                }
                Action::LacksTimeline { node, recreate } => self.report_lacking(node, recreate),
                Action::NoTimeline => {
                    return Err(ProxyError::Fatal(format!(
                        "no safekeeper holds timeline {} (start the proxy with --create-timeline to create it)",
                        self.cfg.ttid
                    )));
                }
                Action::PgSwitchRefused {
                    from_tli,
                    tli,
                    switch,
                    wal_end,
                } => {
                    let fork = match switch {
                        Some(at) => format!("left timeline {from_tli} at {at}"),
                        None => format!("does not descend from timeline {from_tli}"),
                    };
                    return Err(ProxyError::Fatal(format!(
                        "the primary is on PostgreSQL timeline {tli}, which {fork}, but the safekeepers hold                          timeline {from_tli}'s WAL up to {wal_end}, which may hold acknowledged commits:                          this promoted standby lacks them. Run safekeeper-proxy --sync-only, let a standby                          fed only from the safekeepers replay up to the LSN it prints, and promote that one"
                    )));
                }
                Action::Configured { conf, made } => {
                    if !made {
                        // --sync-only never changes the membership: it
                        // settles by the configuration in force.
                        crate::consensus::membership::confirmed(
                            &conf,
                            &self.cfg.members,
                            self.cfg.change_members && !self.cfg.sync_only,
                        )
                        .map_err(ProxyError::Fatal)?;
                    }
                    tracing::info!(
                        generation = %conf.generation,
                        members = ?conf.members.keys().map(|n| n.0).collect::<Vec<_>>(),
                        next = ?conf.next.as_ref().map(|n| n.keys().map(|n| n.0).collect::<Vec<_>>()),
                        made,
                        "membership configuration in force"
                    );
                }
                Action::Removed(node) => {
                    tracing::info!(
                        node = node.0,
                        "safekeeper {node} stored the configuration that removed it"
                    );
                }
                Action::Recreated(node) => {
                    self.lacking.remove(&node);
                    tracing::warn!(
                        node = node.0,
                        "re-created timeline {} on safekeeper {node}, as --recreate-timeline-on asked: \
                         it catches up from its peers and is counted again; remove the flag",
                        self.cfg.ttid
                    );
                }
            }
        }
        Ok(())
    }

    /// A member lacks the timeline the others hold: say so once a session,
    /// and what the operator does about it.
    fn report_lacking(&mut self, node: NodeId, recreate: bool) {
        if !recreate {
            self.redial_at.insert(node, Instant::now() + REDIAL_LACKING);
        }
        if !self.lacking.insert(node) {
            return;
        }
        let addr = self
            .cfg
            .members
            .get(&node)
            .map(String::as_str)
            .unwrap_or("?");
        if recreate {
            tracing::warn!(
                node = node.0,
                "safekeeper {node} at {addr} does not hold timeline {}, which other members hold; \
                 as --recreate-timeline-on asks, it is re-created there once this term has \
                 committed without it",
                self.cfg.ttid
            );
        } else {
            tracing::error!(
                node = node.0,
                "safekeeper {node} at {addr} does not hold timeline {}, which other members hold: \
                 its store was lost or re-initialised, and it has forgotten the WAL it acknowledged \
                 and the votes it gave. It is not counted (the others must make a majority). \
                 To bring it back, restart the proxy once with --recreate-timeline-on {node} \
                 (README.md, \"When a safekeeper's disk is replaced\")",
                self.cfg.ttid
            );
        }
    }

    /// The proposer asks to compare `[from, to)`: read the source's copy;
    /// the primary's is collected from its stream (`on_primary_wal`).
    fn verify_primary(&mut self, term: u64, source: NodeId, from: Lsn, to: Lsn, short: bool) {
        if short {
            tracing::warn!(
                %from, %to,
                "comparing less than a WAL page of the primary's WAL with the safekeepers': the \
                 primary no longer streams the WAL below its slot's segment (or the safekeepers \
                 trimmed it); keep wal_keep_size above one segment for a stronger check"
            );
        }
        if let Some(c) = &mut self.collect {
            c.asked = Some((from, to));
            c.safekeepers = None;
        }
        let addr = self
            .proposer
            .peers()
            .get(&source)
            .cloned()
            .unwrap_or_default();
        let tx = self.events_tx.clone();
        let ttid = self.cfg.ttid;
        let conninfo = self.cfg.safekeeper_conninfo.clone();
        tokio::spawn(async move {
            let r = safekeepers::recovery_read(&conninfo, &addr, ttid, term, from, to).await;
            let _ = tx.send(Event::CheckData(r)).await;
        });
    }

    async fn on_primary_wal(&mut self, start: Lsn, wal: Bytes) -> Result<(), ProxyError> {
        if start != self.primary_pos {
            return Err(ProxyError::Retry(format!(
                "primary sent WAL at {start}, expected {}",
                self.primary_pos
            )));
        }
        let end = start.checked_add(wal.len() as u64).ok_or_else(|| {
            ProxyError::Retry(format!(
                "primary sent {} bytes of WAL at {start}, beyond the last LSN",
                wal.len()
            ))
        })?;
        self.primary_pos = end;
        if self.proposer.takes_wal() && self.collect.is_none() {
            return self.push(wal).await;
        }
        let Some(c) = &mut self.collect else {
            return Err(ProxyError::Retry(
                "primary WAL arrived before the election".into(),
            ));
        };
        // Keep the part in [from, term_start); hold the rest.
        let (compare, held) = primary_check::split_piece(start, wal.len(), c.from, c.term_start);
        if let Some(r) = compare {
            c.primary.extend_from_slice(&wal[r]);
        }
        if let Some(at) = held {
            self.held.push(wal.slice(at..));
        }
        self.try_finish_check().await
    }

    /// Both copies of the asked range are here: the proposer decides.
    async fn try_finish_check(&mut self) -> Result<(), ProxyError> {
        let Some(c) = &self.collect else {
            return Ok(());
        };
        let (Some((from, to)), Some(theirs)) = (c.asked, &c.safekeepers) else {
            return Ok(());
        };
        let have_to = Lsn(c.from.0 + c.primary.len() as u64);
        if have_to < to || from < c.from {
            return Ok(());
        }
        let a = from.distance_from(c.from) as usize;
        let b = to.distance_from(c.from) as usize;
        let actions = self.proposer.on_primary_check(&c.primary[a..b], theirs);
        self.apply(actions).await
    }

    /// Push the primary's WAL up to its last complete record: the
    /// safekeepers' WAL always ends where a standby can stop and promote.
    async fn push(&mut self, wal: Bytes) -> Result<(), ProxyError> {
        if wal.is_empty() {
            return Ok(());
        }
        let holdback = match self.holdback.as_mut() {
            Some(h) => h,
            None => {
                let Some((_, _, _, end, _)) = self.proposer.leader_view() else {
                    return Err(ProxyError::Retry("WAL to push while not leading".into()));
                };
                self.holdback.insert(Holdback::new(end, self.wal_seg_size))
            }
        };
        // One push per release: the proposer cuts appends only where a push
        // ended (`append_end`), so acceptors' logs end at record ends too.
        let pieces = holdback.feed(wal);
        let release = match pieces.as_slice() {
            [] => return Ok(()),
            [one] => one.clone(),
            many => Bytes::from(many.concat()),
        };
        match self.proposer.push_wal(&release) {
            Ok(actions) => {
                if let Some((_, _, _, end, _)) = self.proposer.leader_view() {
                    self.acks.pushed(end);
                }
                self.apply(actions).await
            }
            Err(e) => Err(ProxyError::Retry(format!(
                "WAL from the primary not taken: {e}"
            ))),
        }
    }

    /// Tell the primary how far the quorum has flushed: write = flush =
    /// apply = commit LSN, so synchronous_commit waits for a majority.
    async fn send_status(&mut self, reply_requested: bool) -> Result<(), ProxyError> {
        self.last_status = Instant::now();
        let Some(writer) = self.primary_writer.as_mut() else {
            return Ok(());
        };
        // Never beyond what a majority flushed in this term: that is what
        // makes a fenced proxy harmless.
        let pos = self.commit_lsn.max(self.start_lsn);
        writer
            .send_status_update(pos, pos, pos, reply_requested)
            .map_err(|e| ProxyError::Retry(format!("primary: {e}")))?;
        writer
            .flush()
            .await
            .map_err(|e| ProxyError::Retry(format!("primary: {e}")))
    }
}
