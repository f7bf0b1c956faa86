//! `START_REPLICATION`: committed WAL to PostgreSQL's own clients
//! (pg_receivewal, a standby's walreceiver, a page server), and recovery
//! reads for a proposer (`(term 'N')`: up to flush_lsn, only while this
//! node's term and last_log_term are both N).
//!
//! Only durable state is served: the sender follows the timeline's
//! published durable state, which the group-commit writer updates after each
//! sync, so a consumer never sees WAL beyond a synced commit_lsn. A store
//! read returns staged writes as well, so a recovery read's term, checked on
//! the durable state, is checked again after every read on the acceptor's
//! current state: the bytes are sent only if that still holds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::Client;
use super::timelines::Timeline;
use super::Shared;
use crate::consensus::acceptor::TimelineState;
use crate::consensus::pg_timeline::{self, TimelineEnd};
use crate::consensus::term_history::Term;
use crate::lsn::{Lsn, WAL_PAGE_SIZE};
use crate::pq::connection::PqConnection;
use crate::pq::frame::{BeMessage, Column, FeMessage};
use crate::pq::replication::{pg_now, PrimaryKeepalive, StandbyReplMessage, XLogData};
use crate::pq::{sqlstate, PgError, PqError};
use crate::store::{StorageFailure, StoreError, StoreErrorKind};

/// How much WAL one store read fetches for a sender.
const READ_AHEAD: u64 = 2 << 20;

/// PostgreSQL's MAX_SEND_SIZE: chunks of at most 16 pages.
pub const MAX_SEND_SIZE: u64 = 16 * WAL_PAGE_SIZE;

/// Well within wal_receiver_timeout (60 s by default; the walreceiver pings
/// at half of it).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// How often a waiting consumer's stream asks whether this node may still
/// serve it (`failover::refusal`).
const SERVING_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The slot a stream reports into; released when the stream ends (the
/// connection may go on with other commands), as a walsender releases its
/// slot at the end of START_REPLICATION.
struct SlotUse {
    slots: Arc<super::slots::Slots>,
    ttid: crate::id::Ttid,
    name: String,
    session: u64,
}

impl Drop for SlotUse {
    fn drop(&mut self) {
        self.slots.release(self.ttid, &self.name, self.session);
    }
}

pub struct StartRequest {
    pub start_lsn: Lsn,
    pub timeline: Option<u32>,
    /// A proposer's recovery read in this term.
    pub recovery_term: Option<Term>,
    /// `START_REPLICATION SLOT "s"`: flush reports move this slot.
    pub slot: Option<String>,
}

/// Where a chunk starting at `pos` ends: at most MAX_SEND_SIZE, cut at a page
/// boundary unless `limit` (the end of what may be sent) comes first. LSNs
/// come from proposers: near `Lsn::MAX` the chunk ends there.
pub fn chunk_end(pos: Lsn, limit: Lsn) -> Lsn {
    let Some(far) = pos.checked_add(MAX_SEND_SIZE) else {
        return limit;
    };
    let cap = far.page_start();
    let cap = if cap <= pos { far } else { cap };
    cap.min(limit)
}

/// The end of a store read from `from`: READ_AHEAD on, but not past `limit`.
fn read_ahead_end(from: Lsn, limit: Lsn) -> Lsn {
    limit.min(Lsn(from.0.saturating_add(READ_AHEAD)))
}

/// Why a request cannot be served, checked before streaming starts.
pub fn check_start(state: &TimelineState, req: &StartRequest) -> Result<(), PgError> {
    if let Some(tli) = req.timeline {
        match timeline_end(state, tli) {
            TimelineEnd::NotInHistory => {
                return Err(PgError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!(
                        "requested timeline {tli} is not in this server's history (timeline {} holds timeline {})",
                        state.ttid, state.server.tli
                    ),
                ))
            }
            TimelineEnd::Ended { at, .. } if req.start_lsn > at => {
                return Err(PgError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!(
                        "requested starting point {} on timeline {tli} is not in this server's history: it forked from timeline {tli} at {at}",
                        req.start_lsn
                    ),
                ))
            }
            _ => {}
        }
    }
    if req.start_lsn < state.local_start_lsn {
        return Err(PgError::new(
            sqlstate::UNDEFINED_FILE,
            format!(
                "requested WAL segment {} has already been removed",
                req.start_lsn
                    .segment_file_name(state.server.tli, state.server.wal_seg_size)
            ),
        ));
    }
    if req.start_lsn > state.flush_lsn {
        return Err(PgError::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "requested starting point {} is ahead of the WAL flush position of this server {}",
                req.start_lsn, state.flush_lsn
            ),
        ));
    }
    if let Some(term) = req.recovery_term {
        check_recovery_term(state, term)?;
    }
    Ok(())
}

fn check_recovery_term(state: &TimelineState, term: Term) -> Result<(), PgError> {
    if !state.serves_recovery_read(term) {
        return Err(PgError::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "timeline {}: recovery read for term {term} refused: this node is in term {} with last log term {}",
                state.ttid,
                state.term,
                state.last_log_term()
            ),
        ));
    }
    Ok(())
}

/// Where PostgreSQL timeline `tli` ends in this timeline's LSN space.
fn timeline_end(state: &TimelineState, tli: u32) -> TimelineEnd {
    pg_timeline::end_of(&state.pg_ancestors, state.server.tli, tli)
}

/// How far a sender may go for this state.
fn send_limit(state: &TimelineState, recovery: bool) -> Lsn {
    if recovery {
        state.flush_lsn
    } else {
        state.commit_lsn
    }
}

pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    timeline: Arc<Timeline>,
    req: StartRequest,
) -> Result<bool, PqError> {
    if req.recovery_term.is_some() && !client.is_proposer {
        conn.send_error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "recovery reads (term option) are for proposers: connect with options='-c walkeeper.role=proposer'",
        )
        .await?;
        return Ok(true);
    }
    let mut durable = timeline.durable();
    let Some(state) = durable.borrow_and_update().clone() else {
        conn.send_error(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            &format!("timeline {} is being created", timeline.ttid),
        )
        .await?;
        return Ok(true);
    };
    if let Err(e) = check_start(&state, &req) {
        tracing::info!(timeline = %timeline.ttid, peer = %client.peer, start = %req.start_lsn, "START_REPLICATION refused: {e}");
        conn.send_pg_error(&e).await?;
        return Ok(true);
    }
    let recovery = req.recovery_term.is_some();
    // Proposers' recovery reads are not consumers: they are not counted, so
    // consumers can never keep a proposer from recovering.
    let max_senders = shared.limits.max_wal_senders;
    let _counted = match recovery {
        true => None,
        false => match super::Place::take(&shared.consumers, max_senders) {
            Some(place) => Some(place),
            None => {
                tracing::info!(timeline = %timeline.ttid, peer = %client.peer, max_senders, "START_REPLICATION refused: --max-wal-senders reached");
                conn.send_error(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    &format!("number of requested standby connections exceeds max_wal_senders (currently {max_senders})"),
                )
                .await?;
                return Ok(true);
            }
        },
    };
    if let Some(name) = &req.slot {
        if let Err(e) = shared
            .slots
            .acquire(timeline.ttid, name, client.session, req.start_lsn)
        {
            conn.send_pg_error(&e).await?;
            return Ok(true);
        }
    }
    let slot = req.slot.clone().map(|name| SlotUse {
        slots: shared.slots.clone(),
        ttid: timeline.ttid,
        name,
        session: client.session,
    });
    // The PostgreSQL timeline streamed: a stream of an older one ends at
    // its switch point with the next timeline, as a walsender's does.
    let stream_tli = req.timeline.unwrap_or(state.server.tli);
    if let TimelineEnd::Ended { at, next } = timeline_end(&state, stream_tli) {
        if req.start_lsn == at {
            // Nothing to stream: no COPY, only where the next one begins.
            send_next_timeline(conn, next, at).await?;
            return end_stream(conn, slot, true).await;
        }
    }
    tracing::info!(timeline = %timeline.ttid, peer = %client.peer, start = %req.start_lsn, tli = stream_tli, recovery, application_name = ?client.params.application_name, "streaming WAL");
    conn.send(&BeMessage::CopyBothResponse).await?;

    let mut state = state;
    let mut pos = req.start_lsn;
    // WAL read from the store and not sent yet: (start, bytes). Below
    // commit_lsn (or, for a recovery read, within this term) it cannot
    // change under us.
    let mut read_ahead: (Lsn, Bytes) = (pos, Bytes::new());
    let mut next_read: Option<PendingRead> = None;
    let mut shutdown = shared.shutdown.clone();
    let mut keepalive = tokio::time::interval(KEEPALIVE_INTERVAL);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.tick().await;
    let mut serving_check = tokio::time::interval(SERVING_CHECK_INTERVAL);
    loop {
        if let Some(term) = req.recovery_term {
            if let Err(e) = check_recovery_term(&state, term) {
                // The term moved on: what this node holds may no longer be
                // the log the proposer elected on. Stop at once.
                tracing::info!(timeline = %timeline.ttid, "recovery read stopped: {e}");
                conn.send_pg_fatal(&e).await?;
                return Ok(false);
            }
        }
        let mut limit = send_limit(&state, recovery);
        if let TimelineEnd::Ended { at, next } = timeline_end(&state, stream_tli) {
            if pos >= at {
                tracing::info!(timeline = %timeline.ttid, peer = %client.peer, tli = stream_tli, at = %at, next, "end of the streamed PostgreSQL timeline");
                return end_timeline(conn, &timeline, slot, at, next).await;
            }
            limit = limit.min(at);
        }
        if pos < limit {
            let end = chunk_end(pos, limit);
            let held_end = Lsn(read_ahead.0 .0.saturating_add(read_ahead.1.len() as u64));
            if pos < read_ahead.0 || end > held_end {
                // One store read serves many messages: each read checks the
                // CRC of every stored chunk it touches (tools/BENCHMARKS.md,
                // catch-up read).
                let read = match next_read.take() {
                    Some(r) if r.from == pos && r.to >= end => r,
                    _ => spawn_read(shared, &timeline, pos, read_ahead_end(pos, limit)),
                };
                let read_end = read.to;
                match read.finish().await {
                    Ok(w) => {
                        if let Some(term) = req.recovery_term {
                            // The read saw staged writes too, which the
                            // durable state checked above does not show (a
                            // later term's truncation and appends): it is
                            // this term's log only if the acceptor, with
                            // every write issued so far, still says so.
                            if let Err(e) = check_recovery_term(&timeline.current_state(), term) {
                                tracing::info!(timeline = %timeline.ttid, "recovery read stopped: {e}");
                                conn.send_pg_fatal(&e).await?;
                                return Ok(false);
                            }
                        }
                        read_ahead = (pos, Bytes::from(w));
                    }
                    Err(e) => {
                        let e = read_failure(&e, &state);
                        tracing::error!(timeline = %timeline.ttid, from = %pos, to = %read_end, "{e}");
                        conn.send_pg_fatal(&e).await?;
                        return Ok(false);
                    }
                }
                // The next block is read while this one goes out.
                if read_end < limit {
                    next_read = Some(spawn_read(
                        shared,
                        &timeline,
                        read_end,
                        read_ahead_end(read_end, limit),
                    ));
                }
            }
            let from = (pos.0 - read_ahead.0 .0) as usize;
            let to = (end.0 - read_ahead.0 .0) as usize;
            let msg = XLogData {
                data_start: pos,
                wal_end: limit,
                send_time: pg_now(),
                data: read_ahead.1.slice(from..to),
            };
            conn.write_message(&BeMessage::XLogData(&msg))?;
            pos = end;
            // Let the client's messages and state changes in between chunks.
            if conn.pending_write_len() > 256 * 1024 || pos >= limit {
                conn.flush().await?;
            }
            if let Some(s) = durable
                .has_changed()
                .ok()
                .filter(|c| *c)
                .and_then(|_| durable.borrow_and_update().clone())
            {
                state = s;
            }
            if let Ended(keep_open) =
                drain_client(conn, &timeline, slot.as_ref(), pos, limit).await?
            {
                return end_stream(conn, slot, keep_open).await;
            }
            continue;
        }
        if !recovery {
            if let Some(why) = super::failover::refusal(shared, &timeline) {
                // Waiting here would hold the consumer on a commit this node
                // is not known to hold: hand it to the next host.
                tracing::info!(timeline = %timeline.ttid, peer = %client.peer, at = %pos, "consumer sent elsewhere: {why}");
                conn.send_fatal(sqlstate::CANNOT_CONNECT_NOW, &why).await?;
                return Ok(false);
            }
        }
        tokio::select! {
            changed = durable.changed() => {
                if changed.is_err() {
                    return Ok(false);
                }
                if let Some(s) = durable.borrow_and_update().clone() {
                    state = s;
                }
            }
            msg = conn.read_message() => {
                if let Ended(keep_open) = on_client_message(conn, &timeline, slot.as_ref(), msg?, pos, limit).await? {
                    return end_stream(conn, slot, keep_open).await;
                }
            }
            _ = keepalive.tick() => {
                send_keepalive(conn, limit, false).await?;
            }
            // Proposer silence is a matter of time: look again.
            _ = serving_check.tick(), if !recovery => {}
            _ = shutdown.changed() => {
                conn.send_fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection due to administrator command").await?;
                return Ok(false);
            }
        }
    }
}

/// The stream is over: release its slot, and only then, when the connection
/// goes on, tell the client it may send the next command (as a walsender
/// does), so a command it sends next on any connection finds the slot free.
async fn end_stream<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    slot: Option<SlotUse>,
    keep_open: bool,
) -> Result<bool, PqError> {
    drop(slot);
    if keep_open {
        conn.send_ready_for_query().await?;
    }
    Ok(keep_open)
}

/// The streamed PostgreSQL timeline ended at `at`: CopyDone, wait for the
/// client's, then the next timeline (walsender.c, `StartReplication`).
async fn end_timeline<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    timeline: &Timeline,
    slot: Option<SlotUse>,
    at: Lsn,
    next: u32,
) -> Result<bool, PqError> {
    conn.send(&BeMessage::CopyDone).await?;
    loop {
        match conn.read_message().await? {
            Some(FeMessage::CopyDone) => break,
            Some(FeMessage::CopyData(body)) => {
                if let (Ok(StandbyReplMessage::StatusUpdate(s)), Some(u)) =
                    (StandbyReplMessage::decode(&body), slot.as_ref())
                {
                    u.slots.confirm(timeline.ttid, &u.name, s.flush_lsn);
                }
            }
            None | Some(FeMessage::Terminate) => return Ok(false),
            Some(other) => {
                conn.send_fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    &format!("unexpected message after the end of the timeline: {other:?}"),
                )
                .await?;
                return Ok(false);
            }
        }
    }
    send_next_timeline(conn, next, at).await?;
    end_stream(conn, slot, true).await
}

/// The one-row result set after a stream of an older timeline: the next
/// timeline and where it starts; then both command tags, as PostgreSQL's
/// walsender sends them (ReadyForQuery follows in `end_stream`).
async fn send_next_timeline<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    next: u32,
    at: Lsn,
) -> Result<(), PqError> {
    let (tli, pos) = (next.to_string(), at.to_string());
    conn.write_message(&BeMessage::RowDescription(&[
        Column::int8("next_tli"),
        Column::text("next_tli_startpos"),
    ]))?;
    conn.write_message(&BeMessage::DataRow(&[
        Some(tli.as_bytes()),
        Some(pos.as_bytes()),
    ]))?;
    conn.write_message(&BeMessage::CommandComplete("START_STREAMING"))?;
    conn.write_message(&BeMessage::CommandComplete("START_REPLICATION"))?;
    Ok(())
}

/// Start reading WAL `[from, to)` on the blocking pool.
fn spawn_read(shared: &Arc<Shared>, timeline: &Timeline, from: Lsn, to: Lsn) -> PendingRead {
    let store = shared.store.clone();
    let ttid = timeline.ttid;
    let task = tokio::task::spawn_blocking(move || store.read_wal(ttid, from, to));
    PendingRead { from, to, task }
}

/// What a consumer is told when reading stored WAL failed: only damage is
/// "data corrupted".
fn read_failure(e: &StoreError, state: &TimelineState) -> PgError {
    match e {
        StoreError::NotHeld { from, held_from, .. } if from < held_from => PgError::new(
            sqlstate::UNDEFINED_FILE,
            format!(
                "requested WAL segment {} has already been removed (this node now holds WAL from {held_from}: it was trimmed or re-seeded while the stream read)",
                from.segment_file_name(state.server.tli, state.server.wal_seg_size)
            ),
        ),
        e => match PgError::from(e) {
            damaged if damaged.code == sqlstate::DATA_CORRUPTED => damaged,
            failed => PgError::new(failed.code, format!("reading WAL failed: {e}")),
        },
    }
}

/// A store read in flight, so the disk works while the socket sends.
struct PendingRead {
    from: Lsn,
    to: Lsn,
    task: tokio::task::JoinHandle<Result<Vec<u8>, StoreError>>,
}

impl PendingRead {
    async fn finish(mut self) -> Result<Vec<u8>, StoreError> {
        (&mut self.task).await.map_err(|e| {
            StoreError::Io(StorageFailure::caused_by(
                StoreErrorKind::Io,
                "the read task failed",
                e,
            ))
        })?
    }
}

impl Drop for PendingRead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Handle client messages that are already buffered, without waiting.
async fn drain_client<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    timeline: &Timeline,
    slot: Option<&SlotUse>,
    pos: Lsn,
    limit: Lsn,
) -> Result<Stream, PqError> {
    loop {
        let msg = tokio::select! {
            biased;
            m = conn.read_message() => m,
            _ = std::future::ready(()) => return Ok(Streaming),
        };
        if let ended @ Ended(_) = on_client_message(conn, timeline, slot, msg?, pos, limit).await? {
            return Ok(ended);
        }
    }
}

async fn send_keepalive<S: AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    wal_end: Lsn,
    reply_requested: bool,
) -> Result<(), PqError> {
    conn.send(&BeMessage::Keepalive(&PrimaryKeepalive {
        wal_end,
        send_time: pg_now(),
        reply_requested,
    }))
    .await
}

/// Whether a stream goes on after a client message.
enum Stream {
    Streaming,
    /// It is over; whether the connection stays open for more commands.
    Ended(bool),
}
use Stream::{Ended, Streaming};

async fn on_client_message<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    timeline: &Timeline,
    slot: Option<&SlotUse>,
    msg: Option<FeMessage>,
    pos: Lsn,
    limit: Lsn,
) -> Result<Stream, PqError> {
    match msg {
        None | Some(FeMessage::Terminate) => Ok(Ended(false)),
        Some(FeMessage::CopyData(body)) => {
            match StandbyReplMessage::decode(&body) {
                Ok(StandbyReplMessage::StatusUpdate(s)) => {
                    tracing::trace!(timeline = %timeline.ttid, write = %s.write_lsn, flush = %s.flush_lsn, "standby status");
                    if let Some(u) = slot {
                        u.slots.confirm(timeline.ttid, &u.name, s.flush_lsn);
                    }
                    if s.reply_requested {
                        send_keepalive(conn, limit, false).await?;
                    }
                }
                Ok(StandbyReplMessage::HotStandbyFeedback(_)) => {}
                Err(e) => {
                    conn.send_fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("invalid standby message: {e}"),
                    )
                    .await?;
                    return Ok(Ended(false));
                }
            }
            Ok(Streaming)
        }
        Some(FeMessage::CopyDone) => {
            // The client ends streaming: finish the COPY and the command;
            // the connection takes further commands, as a walsender does.
            tracing::debug!(timeline = %timeline.ttid, at = %pos, "client ended streaming");
            conn.write_message(&BeMessage::CopyDone)?;
            conn.write_message(&BeMessage::CommandComplete("COPY 0"))?;
            // ReadyForQuery follows once the slot is released (end_stream).
            Ok(Ended(true))
        }
        Some(other) => {
            conn.send_fatal(
                sqlstate::PROTOCOL_VIOLATION,
                &format!("unexpected message during streaming: {other:?}"),
            )
            .await?;
            Ok(Ended(false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19: after a switch to PostgreSQL timeline 2 at S, timeline 1 is
    /// served from below S (the stream ends at S with the next timeline),
    /// not from beyond it; timeline 2 from anywhere held; others not at all.
    #[test]
    fn an_older_timeline_is_served_up_to_its_switch_point() {
        let mut state = crate::store::memory::tests_state();
        let start = state.local_start_lsn;
        let switch = Lsn(start.0 + 5000);
        state.flush_lsn = Lsn(start.0 + 9000);
        state.server.tli = 2;
        state.pg_ancestors = vec![(1, switch)];
        let req = |lsn: Lsn, tli| StartRequest {
            start_lsn: lsn,
            timeline: Some(tli),
            recovery_term: None,
            slot: None,
        };
        assert!(check_start(&state, &req(start, 1)).is_ok());
        assert!(check_start(&state, &req(switch, 1)).is_ok());
        assert_eq!(
            check_start(&state, &req(Lsn(switch.0 + 1), 1)).map_err(|e| e.code),
            Err(sqlstate::INVALID_PARAMETER_VALUE)
        );
        assert!(check_start(&state, &req(Lsn(switch.0 + 1), 2)).is_ok());
        assert!(check_start(&state, &req(start, 3)).is_err());
        assert_eq!(
            timeline_end(&state, 1),
            TimelineEnd::Ended {
                at: switch,
                next: 2
            }
        );
    }

    #[test]
    fn chunks_are_cut_at_page_boundaries_and_at_most_128k() {
        let p = WAL_PAGE_SIZE;
        assert_eq!(chunk_end(Lsn(0), Lsn(1 << 30)), Lsn(MAX_SEND_SIZE));
        // From mid-page: up to the page boundary at or below pos + 128 KiB.
        assert_eq!(chunk_end(Lsn(100), Lsn(1 << 30)), Lsn(16 * p));
        // The limit comes first.
        assert_eq!(chunk_end(Lsn(100), Lsn(5000)), Lsn(5000));
        for start in [0u64, 1, p - 1, p, 3 * p + 17] {
            let end = chunk_end(Lsn(start), Lsn(1 << 30));
            assert!(end.0 - start <= MAX_SEND_SIZE);
            assert_eq!(end.0 % p, 0);
        }
    }

    #[test]
    fn only_damage_is_data_corrupted() {
        let mut state = crate::store::memory::tests_state();
        state.local_start_lsn = Lsn(2 << 24);
        let ttid = state.ttid;
        let removed = StoreError::NotHeld {
            ttid,
            from: Lsn(1 << 24),
            to: Lsn((1 << 24) + 100),
            held_from: Lsn(2 << 24),
            held_to: Lsn(3 << 24),
        };
        let PgError {
            code, message: msg, ..
        } = read_failure(&removed, &state);
        assert_eq!(code, sqlstate::UNDEFINED_FILE);
        assert!(
            msg.contains("000000010000000000000001 has already been removed"),
            "{msg}"
        );
        let damaged = StoreError::CorruptWal {
            ttid,
            from: Lsn(1),
            to: Lsn(2),
            detail: "chunk checksum mismatch".into(),
        };
        assert_eq!(
            read_failure(&damaged, &state).code,
            sqlstate::DATA_CORRUPTED
        );
        let failed = StoreError::Failed(StorageFailure::new(StoreErrorKind::DiskFull, "ENOSPC"));
        assert_eq!(read_failure(&failed, &state).code, sqlstate::DISK_FULL);
        let failed = StoreError::Failed(StorageFailure::new(StoreErrorKind::Io, "EIO"));
        assert_eq!(read_failure(&failed, &state).code, sqlstate::INTERNAL_ERROR);
    }

    #[test]
    fn chunks_and_reads_near_the_end_of_the_lsn_space_do_not_overflow() {
        for pos in [u64::MAX - MAX_SEND_SIZE, u64::MAX - 100, u64::MAX - 1] {
            let end = chunk_end(Lsn(pos), Lsn::MAX);
            assert!(
                end > Lsn(pos) && end.0 - pos <= MAX_SEND_SIZE,
                "{pos:x}: {end}"
            );
            assert_eq!(chunk_end(Lsn(pos), Lsn(pos + 1)), Lsn(pos + 1));
            let r = read_ahead_end(Lsn(pos), Lsn::MAX);
            assert!(r > Lsn(pos) && r.0 - pos <= READ_AHEAD);
        }
    }
}
