//! `START_WAL_PUSH`: a proposer's CopyBoth stream of codec messages driving
//! the timeline's acceptor. Messages are handled as they arrive (the proxy
//! pipelines) and replies go out in order, each only after the sync that
//! covers its writes. Everything already received is handled before the
//! connection writes it (`WriterHandle::lead`), so the messages of one read
//! share one sync, written on this task's thread when the storage is free.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::pg_errors::write_failure_code;
use super::timelines::{HandleError, PendingReply, Timeline};
use super::Shared;
use crate::codec::{decode_proposer_message, encode_acceptor_message};
use crate::consensus::acceptor::Refusal;
use crate::consensus::claims::Claim;
use crate::consensus::messages::{AcceptorMessage, ProposerMessage};
use crate::pq::connection::PqConnection;
use crate::pq::frame::{BeMessage, ErrorNotice, FeMessage};
use crate::pq::sqlstate;
use crate::pq::{PgError, PqError, SqlState};
use crate::store::StoreErrorKind;

/// Replies that may wait for syncs at once on one connection; beyond it (or
/// beyond `limits::MAX_PUSH_IN_FLIGHT_BYTES` of messages) the connection
/// stops reading, which pushes back on the proposer through TCP.
const MAX_IN_FLIGHT: usize = 256;
use super::limits::MAX_PUSH_IN_FLIGHT_BYTES;

/// A push stream whose proposer promised heartbeats (at least one a
/// second) and has sent nothing for this long, with no reply of ours
/// pending, is closed: its link went silent (issue 22). The proxy gives up
/// on an unanswered request after as long.
pub const PUSH_SILENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Why the push stream ended.
enum End {
    /// The proposer closed it (CopyDone, Terminate or EOF).
    Closed,
    /// We refused something and said so; the connection must close.
    Refused,
    /// The daemon is shutting down; everything read was synced and answered.
    Shutdown,
}

pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    peer: std::net::SocketAddr,
    heartbeats: bool,
    history: super::history::Pending,
) -> Result<(), PqError> {
    let _counted = super::Place::count(&shared.proposers);
    let mut timeline: Option<Arc<Timeline>> = None;
    let mut in_flight: VecDeque<PendingReply> = VecDeque::new();
    let result = stream(
        shared,
        conn,
        peer,
        (heartbeats, history),
        &mut timeline,
        &mut in_flight,
    )
    .await;
    // Replies never taken (a refusal, a shutdown or a broken connection
    // ended the stream) are dropped when the acceptor releases them.
    if let Some(t) = &timeline {
        for pending in &in_flight {
            t.abandon(pending.ticket);
        }
    }
    result
}

/// The stream itself; what is in flight when it ends is left in
/// `in_flight`.
async fn stream<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    peer: std::net::SocketAddr,
    (heartbeats, history): (bool, super::history::Pending),
    timeline: &mut Option<Arc<Timeline>>,
    in_flight: &mut VecDeque<PendingReply>,
) -> Result<(), PqError> {
    conn.write_message(&BeMessage::CopyBothResponse)?;
    conn.flush().await?;
    let mut shutdown = shared.shutdown.clone();
    // Bytes of the messages whose replies are in flight.
    let mut in_flight_bytes: VecDeque<usize> = VecDeque::new();
    let mut queued_bytes = 0usize;
    let mut greeted = Greeted {
        live: None,
        heartbeats,
        history,
        claim: Claim {
            proposer_id: None,
            conn: NEXT_PUSH_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        },
    };
    let mut stopping = *shutdown.borrow();
    let mut heard_at = tokio::time::Instant::now();
    let end = loop {
        if stopping && in_flight.is_empty() {
            break End::Shutdown;
        }
        let silent = greeted.heartbeats && in_flight.is_empty() && !stopping;
        tokio::select! {
            biased;
            _ = tokio::time::sleep_until(heard_at + PUSH_SILENCE), if silent => {
                let ttid = timeline.as_ref().map(|t| t.ttid.to_string()).unwrap_or_default();
                tracing::warn!(timeline = %ttid, %peer, "the proposer promised heartbeats and sent nothing for {} s: closing the push stream", PUSH_SILENCE.as_secs());
                break End::Refused;
            }
            synced = async { (&mut in_flight.front_mut().expect("guarded by the select condition").synced).await }, if !in_flight.is_empty() => {
                let pending = in_flight.pop_front().expect("non-empty");
                queued_bytes -= in_flight_bytes.pop_front().unwrap_or(0);
                heard_at = tokio::time::Instant::now();
                match synced {
                    Ok(Ok(())) => {
                        if let Some(reply) = take_reply(shared, timeline.as_deref(), &pending) {
                            conn.write_message(&BeMessage::CopyData(&encode_acceptor_message(&reply)))?;
                        }
                        if in_flight.is_empty() {
                            conn.flush().await?;
                        }
                    }
                    Ok(Err(e)) => {
                        let ttid = timeline.as_ref().map(|t| t.ttid.to_string()).unwrap_or_default();
                        tracing::error!(timeline = %ttid, %peer, error = %e, "write failed; nothing more is acknowledged on this connection");
                        if let Some(t) = timeline.as_deref() { t.poison(e.kind(), &e.to_string()); }
                        refuse(conn, write_failure_code(e.kind()), format!("timeline {ttid}: storing failed: {e}")).await?;
                        break End::Refused;
                    }
                    Err(_) => {
                        // Its writes may be staged or lost: the acceptor's
                        // state may be ahead of the disk.
                        if let Some(t) = timeline.as_deref() { t.poison(StoreErrorKind::Io, "the group-commit writer stopped"); }
                        refuse(conn, sqlstate::INTERNAL_ERROR, "the group-commit writer stopped".into()).await?;
                        break End::Refused;
                    }
                }
            }
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
            }
            msg = conn.read_message(), if !stopping && in_flight.len() < MAX_IN_FLIGHT && queued_bytes < MAX_PUSH_IN_FLIGHT_BYTES => {
                // Take every message already here before writing, so they
                // share one sync, then write them on this thread when the
                // storage is free (`WriterHandle::lead`).
                let mut msg = msg;
                heard_at = tokio::time::Instant::now();
                // Leads when dropped, also when an error ends the loop: what
                // was queued must not wait for someone else to write it.
                let mut lead = Lead { writer: shared.timelines.writer(), queued: false };
                let ended = loop {
                    let read = msg?;
                    let bytes = match &read {
                        Some(FeMessage::CopyData(b)) => b.len(),
                        _ => 0,
                    };
                    match on_message(shared, conn, peer, timeline, &mut greeted, read).await? {
                        Step::Queued(pending) => {
                            in_flight.push_back(pending);
                            in_flight_bytes.push_back(bytes);
                            queued_bytes += bytes;
                            lead.queued = true;
                        }
                        Step::End(end) => break Some(end),
                    }
                    if in_flight.len() >= MAX_IN_FLIGHT || queued_bytes >= MAX_PUSH_IN_FLIGHT_BYTES {
                        break None;
                    }
                    msg = tokio::select! {
                        biased;
                        m = conn.read_message() => m,
                        _ = std::future::ready(()) => break None,
                    };
                };
                drop(lead);
                if let Some(end) = ended {
                    break end;
                }
            }
        }
    };
    match end {
        End::Closed => {
            // Answer what was already read before the connection goes.
            while let Some(pending) = in_flight.front_mut() {
                let synced = (&mut pending.synced).await;
                let pending = in_flight.pop_front().expect("non-empty");
                if let Ok(Ok(())) = synced {
                    if let Some(reply) = take_reply(shared, timeline.as_deref(), &pending) {
                        conn.write_message(&BeMessage::CopyData(&encode_acceptor_message(&reply)))?;
                    }
                } else if let Some(t) = timeline.as_deref() {
                    t.abandon(pending.ticket);
                }
            }
            let _ = conn.flush().await;
        }
        End::Shutdown => {
            let notice = ErrorNotice::fatal(
                sqlstate::ADMIN_SHUTDOWN,
                "terminating connection due to administrator command",
            );
            conn.write_message(&BeMessage::ErrorResponse(&notice))?;
            let _ = conn.flush().await;
        }
        End::Refused => {}
    }
    Ok(())
}

/// Writes what a read queued (`WriterHandle::lead`) when it goes out of
/// scope.
struct Lead<'a> {
    writer: &'a crate::store::writer::WriterHandle,
    queued: bool,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        // Leading blocks for a sync: on the daemon's multi-threaded runtime
        // the worker first hands its other tasks to another thread, so no
        // connection waits behind this fsync.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| self.writer.lead())
            }
            _ => self.writer.lead(),
        }
    }
}

/// What the connection does once greeted.
struct Greeted {
    /// This stream in the node's proposer liveness (failover), while it
    /// lasts.
    live: Option<super::failover::Stream>,
    /// The proposer promised heartbeats (its start-up options).
    heartbeats: bool,
    /// A history file put before the greeting, stored once the timeline
    /// exists.
    history: super::history::Pending,
    /// This connection as the claim rule sees it (`consensus::claims`):
    /// the proposer id its greeting gave and its number; its claim on the
    /// timeline for that proposer id is made
    /// by its first vote request.
    claim: Claim,
}

/// Push connections numbered in the order this daemon took them (from 1),
/// for the claim rule: a proxy dials anew only after giving up on its old
/// connection.
static NEXT_PUSH_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What one proposer message led to.
enum Step {
    /// Its writes are queued (not yet written: the caller leads); the
    /// reply waits for them.
    Queued(PendingReply),
    End(End),
}

async fn on_message<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    peer: std::net::SocketAddr,
    timeline: &mut Option<Arc<Timeline>>,
    greeted: &mut Greeted,
    msg: Option<FeMessage>,
) -> Result<Step, PqError> {
    let bytes = match msg {
        Some(FeMessage::CopyData(bytes)) => bytes,
        Some(FeMessage::CopyDone) | Some(FeMessage::Terminate) | None => {
            return Ok(Step::End(End::Closed))
        }
        Some(FeMessage::CopyFail(reason)) => {
            tracing::info!(%peer, %reason, "proposer aborted the push stream");
            return Ok(Step::End(End::Closed));
        }
        Some(other) => {
            refuse(
                conn,
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "unexpected message during START_WAL_PUSH: {}",
                    describe(&other)
                ),
            )
            .await?;
            return Ok(Step::End(End::Refused));
        }
    };
    let msg = match decode_proposer_message(&bytes) {
        Ok(m) => m,
        Err(e) => {
            let ttid = timeline
                .as_ref()
                .map(|t| t.ttid.to_string())
                .unwrap_or_else(|| "(not greeted)".into());
            tracing::warn!(timeline = %ttid, %peer, error = %e, "malformed proposer message");
            let (code, msg) = match e {
                crate::codec::CodecError::OtherProtocol { .. } => (
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("timeline {ttid}: {e}"),
                ),
                _ => (
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("timeline {ttid}: malformed proposer message: {e}"),
                ),
            };
            refuse(conn, code, msg).await?;
            return Ok(Step::End(End::Refused));
        }
    };
    match handle(shared, timeline, greeted, &msg).await {
        Ok(pending) => {
            if let Some(t) = timeline.as_ref() {
                if greeted.live.is_none() {
                    greeted.live = Some(shared.liveness.stream(t.ttid, greeted.heartbeats));
                }
                let told = match &msg {
                    ProposerMessage::Append(a) if !a.wal.is_empty() => Some(a.commit_lsn),
                    _ => None,
                };
                shared.liveness.heard(t.ttid, told, t.current_flush_lsn());
            }
            Ok(Step::Queued(pending))
        }
        Err(e) => {
            tracing::warn!(%peer, "refused: {e}");
            refuse(conn, PgError::from(&e).code, e.to_string()).await?;
            Ok(Step::End(End::Refused))
        }
    }
}

async fn handle(
    shared: &Shared,
    timeline: &mut Option<Arc<Timeline>>,
    greeted: &mut Greeted,
    msg: &ProposerMessage,
) -> Result<PendingReply, HandleError> {
    let writer = shared.timelines.writer();
    match (timeline.as_ref(), msg) {
        (None, ProposerMessage::Greeting(g)) => {
            if let Some(why) = shared.acceptor_refusal() {
                return Err(HandleError::Restored(format!("timeline {}: {why}", g.ttid)));
            }
            let (t, pending) = shared.timelines.greet(g)?;
            // The history file put on this connection before the greeting,
            // now that the timeline exists.
            if let Some((tli, content)) = greeted.history.take() {
                super::history::store(shared, &t, tli, content, Some(g.server.tli))
                    .await
                    .map_err(|e| HandleError::Limited {
                        code: e.code,
                        message: e.message,
                    })?;
            }
            greeted.claim.proposer_id = Some(g.proposer_id);
            *timeline = Some(t);
            Ok(pending)
        }
        (None, other) => Err(HandleError::Refused(Refusal::NotGreeted {
            ttid: Default::default(),
            got: message_name(other),
        })),
        (Some(t), ProposerMessage::Greeting(g)) if g.ttid != t.ttid => {
            Err(HandleError::Refused(Refusal::Mismatch {
                ttid: t.ttid,
                field: "timeline (one connection pushes one timeline)",
                stored: t.ttid.to_string(),
                proposed: g.ttid.to_string(),
            }))
        }
        (Some(t), msg) => t.handle_claimed(writer, msg, Some(&mut greeted.claim)),
    }
}

/// The writer answered `pending` Ok: its reply, which the acceptor
/// released, with this node's lowest durable slot position (the slots are
/// the daemon's; the acceptor takes the horizon as an input).
fn take_reply(
    shared: &Shared,
    timeline: Option<&Timeline>,
    pending: &PendingReply,
) -> Option<AcceptorMessage> {
    let t = timeline?;
    t.take_reply(pending.ticket, shared.slots.durable_horizon(t.ttid))
}

fn message_name(m: &ProposerMessage) -> &'static str {
    match m {
        ProposerMessage::Greeting(_) => "Greeting",
        ProposerMessage::VoteRequest(_) => "VoteRequest",
        ProposerMessage::Elected(_) => "Elected",
        ProposerMessage::Append(_) => "AppendRequest",
        ProposerMessage::Reseed(_) => "Reseed",
        ProposerMessage::Configure(_) => "Configure",
    }
}

fn describe(m: &FeMessage) -> String {
    match m {
        FeMessage::Query(q) => format!("a query ({q:?})"),
        FeMessage::Unknown { tag, .. } => format!("message type {:?}", *tag as char),
        other => format!("{other:?}").chars().take(40).collect(),
    }
}

async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    code: SqlState,
    message: String,
) -> Result<(), PqError> {
    let notice = ErrorNotice::error(code, message);
    conn.write_message(&BeMessage::ErrorResponse(&notice))?;
    conn.flush().await
}
