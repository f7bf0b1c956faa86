//! The timelines a safekeeper holds: one acceptor each, shared by every
//! proposer connection for that timeline, writing through the one
//! group-commit writer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::consensus::acceptor::{Acceptor, Event, Ready, Refusal, Reply, Seq, TimelineState};
use crate::consensus::claims::{Claim, Claims};
use crate::consensus::messages::{AcceptorMessage, Greeting, ProposerMessage};
use crate::id::{NodeId, Ttid};
use crate::store::writer::{DurableState, Synced, WriterHandle};
use crate::store::{StoreError, StoreErrorKind};

pub struct Timeline {
    pub ttid: Ttid,
    acceptor: Mutex<Acceptor>,
    durable: DurableState,
    /// Set when a write of this timeline failed: the acceptor's in-memory
    /// state may then be ahead of the disk, so it must not answer anyone
    /// until the daemon restarts and reloads the stored state.
    poisoned: Mutex<Option<(StoreErrorKind, String)>>,
    /// Which push connection of each proposer is heard
    /// (`consensus::claims`). Locked inside `acceptor`, so a claim and the
    /// check of a message are ordered.
    claims: Mutex<Claims>,
    /// Replies the acceptor released (`Acceptor::on_persisted`) that their
    /// connection has not taken yet, and the ready sets whose connection
    /// went away (their replies are dropped when released). Locked inside
    /// `acceptor`.
    released: Mutex<Released>,
}

#[derive(Default)]
struct Released {
    replies: HashMap<Seq, AcceptorMessage>,
    abandoned: std::collections::HashSet<Seq>,
}

/// A message's ready set queued for the writer: once `synced` resolves Ok,
/// [`Timeline::take_reply`] tells the acceptor what is durable and gives
/// the reply it released for this set.
pub struct PendingReply {
    pub synced: Synced,
    pub ticket: Ticket,
}

/// Which ready set a [`PendingReply`] is: its number, the one whose
/// persistence releases its reply (`Ready::waits_for`), and whether it
/// holds one.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    pub seq: Seq,
    pub waits_for: Seq,
    pub holds_reply: bool,
}

impl PendingReply {
    /// Queue `ready`'s writes (the caller leads, or wakes the writer).
    fn queued(writer: &WriterHandle, ttid: Ttid, ready: Ready) -> PendingReply {
        let ticket = Ticket {
            seq: ready.seq,
            waits_for: ready.waits_for,
            holds_reply: ready.holds_reply,
        };
        let synced = writer.enqueue(ttid, ready.writes, !ready.sync);
        PendingReply { synced, ticket }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("timeline {ttid}: an earlier write failed ({reason}); restart the safekeeper (after freeing space if the disk is full) to reload the stored state")]
    Poisoned {
        ttid: Ttid,
        /// The kind of the failure that poisoned the timeline.
        kind: StoreErrorKind,
        reason: String,
    },
    /// The store is a checkpoint: it must not be an acceptor of its old
    /// membership (the text says why and what to do).
    #[error("{0}")]
    Restored(String),
    /// A `TIMELINE_SETTLED` that does not hold on this node.
    #[error("{0}")]
    NotSettled(String),
    /// Refused by one of the daemon's own limits (`--max-timelines`, the
    /// history file's), with the SQLSTATE to answer.
    #[error("{message}")]
    Limited {
        code: crate::pq::SqlState,
        message: String,
    },
    /// A newer push connection of the same proposer greeted this
    /// timeline: this one's messages are stale.
    #[error("timeline {0}: a newer connection of the same proposer replaced this one")]
    Superseded(Ttid),
}

impl Timeline {
    /// The latest state whose writes are synced: what readers may act on.
    pub fn durable(&self) -> DurableState {
        self.durable.clone()
    }

    /// The acceptor's state including writes not yet synced.
    pub fn current_state(&self) -> TimelineState {
        self.lock().state().clone()
    }

    /// The acceptor's flush_lsn including writes not yet synced (cheaper
    /// than `current_state` on the push path).
    pub fn current_flush_lsn(&self) -> crate::lsn::Lsn {
        self.lock().state().flush_lsn
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Acceptor> {
        self.acceptor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fail every later message on this timeline with `reason`, a failure
    /// of `kind` (the first one given stays): after a failed write or trim,
    /// the acceptor's state in memory may be ahead of what the store holds.
    pub fn poison(&self, kind: StoreErrorKind, reason: &str) {
        // Under the acceptor's lock, so a handler the acceptor refuses for
        // it finds the kind (`refused`).
        let mut acceptor = self.lock();
        acceptor.on_storage_failed(reason);
        let mut p = self.poisoned.lock().unwrap_or_else(|e| e.into_inner());
        p.get_or_insert_with(|| (kind, reason.to_string()));
    }

    /// A refusal of the acceptor, whose lock the caller holds: one because
    /// storing failed is this timeline's poison, with the failure's kind.
    fn refused(&self, r: Refusal) -> HandleError {
        match r {
            Refusal::StorageFailed { .. } => self
                .check_poisoned()
                .err()
                .unwrap_or(HandleError::Refused(r)),
            r => HandleError::Refused(r),
        }
    }

    /// The writer answered `pending` Ok: every ready set up to its
    /// `waits_for` that must be synced is durable (the writer answers a set
    /// only after those before it). Tell the acceptor, keep the replies it
    /// releases for their connections, and take this set's. `slot_horizon`
    /// is this node's lowest durable slot position, which the replies
    /// report.
    pub fn take_reply(
        &self,
        ticket: Ticket,
        slot_horizon: crate::lsn::Lsn,
    ) -> Option<AcceptorMessage> {
        let mut acceptor = self.lock();
        acceptor.set_slot_horizon(slot_horizon);
        let out = acceptor.on_persisted(ticket.waits_for);
        let mut released = self.released();
        released.keep(out);
        released.replies.remove(&ticket.seq)
    }

    /// A connection goes away without taking the reply of `ticket`.
    pub fn abandon(&self, ticket: Ticket) {
        if !ticket.holds_reply {
            return;
        }
        let _acceptor = self.lock();
        let mut released = self.released();
        if released.replies.remove(&ticket.seq).is_none() {
            released.abandoned.insert(ticket.seq);
        }
    }

    fn released(&self) -> std::sync::MutexGuard<'_, Released> {
        self.released.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_poisoned(&self) -> Result<(), HandleError> {
        match &*self.poisoned.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((kind, reason)) => Err(HandleError::Poisoned {
                ttid: self.ttid,
                kind: *kind,
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Run one message through the acceptor and queue its writes. The writes
    /// are submitted under the acceptor's lock so their order on disk is the
    /// order the acceptor produced them in.
    pub fn handle(
        &self,
        writer: &WriterHandle,
        msg: &ProposerMessage,
    ) -> Result<PendingReply, HandleError> {
        let pending = self.handle_queued(writer, msg)?;
        writer.lead();
        Ok(pending)
    }

    /// As [`Timeline::handle`], but the writes are only queued: the caller
    /// must follow with `writer.lead()` (once for several messages, so they
    /// share a sync).
    pub fn handle_queued(
        &self,
        writer: &WriterHandle,
        msg: &ProposerMessage,
    ) -> Result<PendingReply, HandleError> {
        self.handle_claimed(writer, msg, None)
    }

    /// As [`Timeline::handle_queued`] for the push connection `claim`:
    /// the claim rule ([`Claims::on_message`]) decides whether the message
    /// is heard.
    pub fn handle_claimed(
        &self,
        writer: &WriterHandle,
        msg: &ProposerMessage,
        claim: Option<&mut Claim>,
    ) -> Result<PendingReply, HandleError> {
        self.check_poisoned()?;
        let mut acceptor = self.lock();
        if let Some(claim) = claim {
            let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            claims
                .on_message(msg, claim)
                .map_err(|_| HandleError::Superseded(self.ttid))?;
        }
        let ready = acceptor.handle(msg).map_err(|r| self.refused(r))?;
        log_events(self.ttid, &ready.events);
        Ok(PendingReply::queued(writer, self.ttid, ready))
    }

    /// Record durably that `--sync-only` settled this node in `term` at
    /// `lsn` (see `TimelineState::settled_lsn`); the receiver resolves once
    /// the state is synced.
    pub fn settle(
        &self,
        writer: &WriterHandle,
        term: crate::consensus::term_history::Term,
        lsn: crate::lsn::Lsn,
    ) -> Result<Synced, HandleError> {
        self.check_poisoned()?;
        let mut acceptor = self.lock();
        let ready = acceptor
            .settle(term, lsn)
            .map_err(HandleError::NotSettled)?;
        Ok(writer.submit(self.ttid, ready.writes))
    }

    /// Trim whole segments below `horizon` (bounded by commit_lsn).
    pub fn trim(&self, writer: &WriterHandle, horizon: crate::lsn::Lsn) -> Option<Synced> {
        let mut acceptor = self.lock();
        let below = crate::consensus::acceptor::trim_point(acceptor.state(), horizon);
        let ready = acceptor.trim(below)?;
        tracing::info!(timeline = %self.ttid, local_start_lsn = %acceptor.state().local_start_lsn, "trimmed WAL below the horizon");
        Some(writer.submit(self.ttid, ready.writes))
    }
}

impl Released {
    /// Keep released replies for their connections, except those of sets
    /// whose connection went away.
    fn keep(&mut self, replies: Vec<Reply>) {
        for r in replies {
            if !self.abandoned.remove(&r.seq) {
                self.replies.insert(r.seq, r.msg);
            }
        }
    }
}

fn log_events(ttid: Ttid, events: &[Event]) {
    for e in events {
        match e {
            Event::TimelineCreated => tracing::info!(timeline = %ttid, "timeline created"),
            Event::TermChanged { from, to } => {
                tracing::info!(timeline = %ttid, from, to, "term changed")
            }
            Event::Truncated { from_flush, to } => {
                tracing::warn!(timeline = %ttid, from = %from_flush, to = %to, "WAL truncated to the new proposer's history")
            }
            Event::Reseeded { from_flush, to } => {
                tracing::warn!(timeline = %ttid, flush_lsn = %from_flush, local_start_lsn = %to, "re-seeded by the proposer: the WAL this node lacked was trimmed on every peer (past --max-wal-keep); dropped the WAL held here and continuing at {to}")
            }
            Event::Configured { generation, left } => {
                tracing::info!(timeline = %ttid, %generation, left, "membership configuration stored")
            }
            Event::PgTimelineSwitched { tli, at } => {
                tracing::warn!(timeline = %ttid, tli, at = %at, "a promoted primary continues this timeline: WAL from {at} on is PostgreSQL timeline {tli}")
            }
        }
    }
}

pub struct Timelines {
    node_id: NodeId,
    writer: WriterHandle,
    map: Mutex<HashMap<Ttid, Arc<Timeline>>>,
    /// `--max-timelines`: how many a greeting may create.
    max: usize,
}

impl Timelines {
    pub fn new(
        node_id: NodeId,
        writer: WriterHandle,
        loaded: Vec<TimelineState>,
        max: usize,
    ) -> Timelines {
        let mut map = HashMap::new();
        for state in loaded {
            let ttid = state.ttid;
            writer.publish_loaded(state.clone());
            let durable = writer.durable_state(ttid);
            map.insert(
                ttid,
                Arc::new(Timeline {
                    ttid,
                    acceptor: Mutex::new(Acceptor::restore(node_id, state)),
                    durable,
                    poisoned: Mutex::new(None),
                    claims: Mutex::new(Claims::default()),
                    released: Mutex::default(),
                }),
            );
        }
        Timelines {
            node_id,
            writer,
            map: Mutex::new(map),
            max,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ttid, Arc<Timeline>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, ttid: Ttid) -> Option<Arc<Timeline>> {
        self.lock().get(&ttid).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Timeline>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|t| t.ttid);
        v
    }

    /// Answer a greeting: the existing timeline checks it, or a new one is
    /// created when the greeting asks for it.
    pub fn greet(&self, g: &Greeting) -> Result<(Arc<Timeline>, PendingReply), HandleError> {
        let mut map = self.lock();
        if let Some(t) = map.get(&g.ttid).cloned() {
            drop(map);
            let pending = t.handle(&self.writer, &ProposerMessage::Greeting(g.clone()))?;
            return Ok((t, pending));
        }
        if g.create && map.len() >= self.max {
            return Err(HandleError::Limited {
                code: crate::pq::sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                message: format!(
                    "timeline {}: this safekeeper holds {} timelines, as many as --max-timelines allows",
                    g.ttid,
                    map.len()
                ),
            });
        }
        let (acceptor, ready) = Acceptor::create(self.node_id, g)?;
        log_events(g.ttid, &ready.events);
        let durable = self.writer.durable_state(g.ttid);
        let t = Arc::new(Timeline {
            ttid: g.ttid,
            acceptor: Mutex::new(acceptor),
            durable,
            poisoned: Mutex::new(None),
            claims: Mutex::new(Claims::default()),
            released: Mutex::default(),
        });
        // Registered before the sync: a second greeting for the same timeline
        // must see it rather than create it twice. Its reply waits for this
        // sync like any other.
        map.insert(g.ttid, t.clone());
        // Submitted (the writer thread writes it), not led: the map is
        // locked here.
        let ticket = Ticket {
            seq: ready.seq,
            waits_for: ready.waits_for,
            holds_reply: ready.holds_reply,
        };
        let pending = PendingReply {
            synced: self.writer.submit(g.ttid, ready.writes),
            ticket,
        };
        Ok((t, pending))
    }
}
