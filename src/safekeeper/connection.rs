//! One client connection on the PostgreSQL-protocol port: startup, then
//! replication commands until the client leaves. Proposers say so in their
//! startup options (`-c walkeeper.role=proposer`); everyone else is a
//! consumer. With `--users-file` the client authenticates
//! ([`super::auth`]) and its role decides which commands it may run.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::timelines::Timeline;
use super::{wal_push, wal_send, Shared};
use crate::id::Ttid;
use crate::logging::{clip, MAX_LOGGED_CLIENT_TEXT};
use crate::pq::connection::{Handshake, PqConnection, ServerParams, StartupParams};
use crate::pq::frame::{BeMessage, Column, FeMessage};
use crate::pq::replication::{find_option, ReplicationCommand};
use crate::pq::{sqlstate, PqError};

pub(crate) const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub(crate) const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// Who is on the other end, from the startup packet.
#[derive(Debug)]
pub struct Client {
    pub peer: SocketAddr,
    pub params: StartupParams,
    pub is_proposer: bool,
    /// The role it authenticated with; `None` without `--users-file`
    /// (everyone trusted, as before authentication existed).
    pub role: Option<crate::auth::Role>,
    /// This connection's id for slot ownership ([`super::slots::Session`]).
    pub session: u64,
    /// Its cancel key, and a cancel request for it.
    pub cancel: super::cancel::Registration,
    /// A history file put before the greeting of a timeline that does not
    /// exist yet ([`super::history`]).
    pub pending_history: std::sync::Mutex<super::history::Pending>,
}

impl Client {
    /// The timeline named by `-c tenant_id=… -c timeline_id=…`, if any.
    pub fn named_timeline(&self) -> Result<Option<Ttid>, String> {
        let tenant = self.params.option("tenant_id");
        let timeline = self.params.option("timeline_id");
        match (tenant, timeline) {
            (None, None) => Ok(None),
            (Some(t), Some(l)) => {
                let tenant_id = t.parse().map_err(|e| format!("{e}"))?;
                let timeline_id = l.parse().map_err(|e| format!("{e}"))?;
                Ok(Some(Ttid::new(tenant_id, timeline_id)))
            }
            _ => Err("name both tenant_id and timeline_id (options='-c tenant_id=… -c timeline_id=…'), or neither when the safekeeper holds one timeline".into()),
        }
    }
}

/// Serve one connection. `admitted`: it is within `--max-connections`;
/// otherwise it is told so (53300) once it sent its start-up packet, and
/// closed. The start-up must end within `--authentication-timeout`.
pub async fn serve(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr, admitted: bool) {
    let timeout = shared.limits.authentication_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let Some(mut conn) = super::encryption::negotiate_by(deadline, &shared.tls, socket, peer).await
    else {
        return;
    };
    let started = match tokio::time::timeout_at(deadline, start(&shared, &mut conn, peer, admitted))
        .await
    {
        Ok(started) => started,
        Err(_) => {
            // As PostgreSQL's authentication_timeout: closed without a word.
            tracing::debug!(%peer, ?timeout, "start-up not finished in time (--authentication-timeout); closing");
            return;
        }
    };
    let result = match started {
        Ok(Some((client, _session))) => serve_commands(&shared, &mut conn, &client).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => tracing::debug!(%peer, "connection closed"),
        Err(e) if e.is_disconnect() => tracing::debug!(%peer, "client went away: {e}"),
        Err(e) => {
            // The text may be the client's own (a bad start-up parameter):
            // the log gets a bounded part of it, the client all of it.
            let text = e.to_string();
            tracing::warn!(%peer, "connection failed: {}", clip(&text, MAX_LOGGED_CLIENT_TEXT));
            // Tell the client why, if it can still hear us.
            let _ = conn.send_fatal(e.sqlstate(), &text).await;
        }
    }
}

/// The start-up phase: the handshake up to and including "authentication".
/// `None` when the connection ends there (a cancel request, a refusal).
async fn start<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    peer: SocketAddr,
    admitted: bool,
) -> Result<Option<(Client, super::slots::Session)>, PqError> {
    let params = match conn.handshake().await? {
        None => return Ok(None),
        Some(Handshake::Cancel {
            process_id,
            secret_key,
        }) => {
            // Served also beyond --max-connections, as PostgreSQL does.
            if shared.cancels.cancel(process_id, secret_key) {
                tracing::info!(%peer, pid = process_id, "cancel request for connection {process_id}");
            } else {
                tracing::info!(%peer, pid = process_id, "cancel request with an unknown process id or key; ignored");
            }
            return Ok(None);
        }
        Some(Handshake::Startup(p)) => p,
    };
    if !admitted {
        tracing::debug!(%peer, "refused: --max-connections reached");
        conn.send_fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
        .await?;
        return Ok(None);
    }
    let is_proposer = params.option("walkeeper.role") == Some("proposer");
    let session = shared.slots.session();
    let cancel = shared.cancels.register(session.id);
    let mut client = Client {
        peer,
        params,
        is_proposer,
        role: None,
        session: session.id,
        cancel,
        pending_history: Default::default(),
    };
    // Before authentication: only then does libpq try the next host.
    if !is_proposer {
        if let Some(why) = choose_timeline(shared, &client)
            .ok()
            .and_then(|t| super::failover::refusal(shared, &t))
        {
            tracing::info!(%peer, "consumer sent elsewhere: {why}");
            conn.send_fatal(sqlstate::CANNOT_CONNECT_NOW, &why).await?;
            return Ok(None);
        }
    }
    if let Some(auth) = &shared.auth {
        match super::auth::authenticate(conn, auth, &client.params.user, peer).await? {
            Some(role) => client.role = Some(role),
            None => return Ok(None),
        }
    }
    tracing::debug!(%peer, proposer = is_proposer, application_name = ?client.params.application_name, "client connected");
    let server = ServerParams {
        process_id: client.cancel.process_id(),
        secret_key: client.cancel.secret_key(),
        ..ServerParams::default()
    };
    conn.accept_trust(&client.params, &server).await?;
    Ok(Some((client, session)))
}

/// Simple queries until the client leaves.
async fn serve_commands<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
) -> Result<(), PqError> {
    loop {
        let Some(msg) = conn.read_message().await? else {
            return Ok(());
        };
        match msg {
            FeMessage::Query(text) => {
                let _running = client.cancel.command();
                if !run_command(shared, conn, client, &text).await? {
                    return Ok(());
                }
            }
            FeMessage::Terminate => return Ok(()),
            FeMessage::Sync => conn.send_ready_for_query().await?,
            other => {
                let what = match other {
                    FeMessage::Unknown { tag, .. } => format!("message type {:?}", tag as char),
                    _ => "a COPY message outside COPY".into(),
                };
                conn.send_error(
                    sqlstate::PROTOCOL_VIOLATION,
                    &format!("unsupported {what}: this server speaks the simple query protocol of a walsender"),
                )
                .await?;
            }
        }
    }
}

/// Run one simple query. Returns false when the connection must close.
async fn run_command<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    text: &str,
) -> Result<bool, PqError> {
    let command = match ReplicationCommand::parse(text) {
        Ok(c) => c,
        Err(e) => {
            conn.send_error(e.sqlstate(), &e.to_string()).await?;
            return Ok(true);
        }
    };
    if let Some(why) = super::auth::refusal(client.role, &client.params.user, &command) {
        tracing::warn!(peer = %client.peer, "refused: {why}");
        conn.send_error(INSUFFICIENT_PRIVILEGE, &why).await?;
        return Ok(true);
    }
    match command {
        ReplicationCommand::Empty => {
            conn.write_message(&crate::pq::frame::BeMessage::EmptyQueryResponse)?;
            conn.send_ready_for_query().await?;
        }
        ReplicationCommand::IdentifySystem => match choose_timeline(shared, client) {
            Ok(t) => {
                let state = t.durable().borrow().clone();
                let Some(state) = state else {
                    conn.send_error(
                        OBJECT_NOT_IN_PREREQUISITE_STATE,
                        &format!("timeline {} is being created", t.ttid),
                    )
                    .await?;
                    return Ok(true);
                };
                let rows = vec![vec![
                    Some(state.server.system_id.to_string()),
                    Some(state.server.tli.to_string()),
                    Some(state.commit_lsn.to_string()),
                    None,
                ]];
                conn.write_result_set(
                    &[
                        Column::text("systemid"),
                        Column::int4("timeline"),
                        Column::text("xlogpos"),
                        Column::text("dbname"),
                    ],
                    &rows,
                    "IDENTIFY_SYSTEM",
                )?;
                conn.send_ready_for_query().await?;
            }
            Err((code, msg)) => conn.send_error(code, &msg).await?,
        },
        ReplicationCommand::StartWalPush { .. } => {
            if !client.is_proposer {
                conn.send_error(
                    INSUFFICIENT_PRIVILEGE,
                    "START_WAL_PUSH is for proposers: connect with options='-c walkeeper.role=proposer'",
                )
                .await?;
                return Ok(true);
            }
            let heartbeats = super::failover::promises_heartbeats(&client.params);
            let history = client
                .pending_history
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            wal_push::serve(shared, conn, client.peer, heartbeats, history).await?;
            return Ok(false);
        }
        ReplicationCommand::Show { name } => {
            let value = match name.to_ascii_lowercase().as_str() {
                "wal_segment_size" => match choose_timeline(shared, client) {
                    Ok(t) => Some(format_size(t.current_state().server.wal_seg_size)),
                    // Before any timeline exists, PostgreSQL's default.
                    Err(_) => Some(format_size(crate::lsn::DEFAULT_WAL_SEG_SIZE)),
                },
                "data_directory_mode" => Some("0700".to_string()),
                // What a --sync-only proxy, which has no primary to ask,
                // needs to greet with.
                "walkeeper.pg_version" => choose_timeline(shared, client)
                    .ok()
                    .map(|t| t.current_state().server.pg_version.to_string()),
                "walkeeper.timeline_start_lsn" => choose_timeline(shared, client)
                    .ok()
                    .map(|t| t.current_state().timeline_start_lsn.to_string()),
                "server_version" => Some(crate::pq::connection::DEFAULT_SERVER_VERSION.to_string()),
                "server_version_num" => Some("150000".to_string()),
                "integer_datetimes" => Some("on".to_string()),
                _ => None,
            };
            match value {
                Some(v) => {
                    conn.write_result_set(&[Column::text(&name)], &[vec![Some(v)]], "SHOW")?;
                    conn.send_ready_for_query().await?;
                }
                None => {
                    conn.send_error(
                        sqlstate::UNDEFINED_OBJECT,
                        &format!("unrecognized configuration parameter \"{name}\""),
                    )
                    .await?
                }
            }
        }
        ReplicationCommand::TimelineHistory { timeline } => {
            let name = format!("{timeline:08X}.history");
            let stored = match choose_timeline(shared, client) {
                // The primary's file, or one rebuilt from the switch points
                // recorded here when this node learnt the switch without it.
                Ok(t) => shared.store.timeline_history(t.ttid, timeline).map(|f| {
                    f.or_else(|| {
                        let s = t.current_state();
                        crate::consensus::pg_timeline::rebuilt_history_file(
                            &s.pg_ancestors,
                            s.server.tli,
                            timeline,
                        )
                    })
                }),
                Err((code, msg)) => {
                    conn.send_error(code, &msg).await?;
                    return Ok(true);
                }
            };
            match stored {
                Ok(Some(content)) => {
                    // The content column is bytea-like raw bytes, as
                    // walsender sends it.
                    let row = [Some(name.as_bytes()), Some(content.as_slice())];
                    conn.write_message(&BeMessage::RowDescription(&[
                        Column::text("filename"),
                        Column::text("content"),
                    ]))?;
                    conn.write_message(&BeMessage::DataRow(&row))?;
                    conn.write_message(&BeMessage::CommandComplete("TIMELINE_HISTORY"))?;
                    conn.send_ready_for_query().await?;
                }
                Ok(None) => {
                    conn.send_error(
                        sqlstate::UNDEFINED_FILE,
                        &format!("could not open file \"pg_wal/{name}\": this safekeeper holds no history file for timeline {timeline}"),
                    )
                    .await?
                }
                Err(e) => conn.send_error(sqlstate::INTERNAL_ERROR, &e.to_string()).await?,
            }
        }
        ReplicationCommand::PutTimelineHistory { timeline, content } => {
            if !client.is_proposer {
                conn.send_error(
                    INSUFFICIENT_PRIVILEGE,
                    "PUT_TIMELINE_HISTORY is for proposers: connect with options='-c walkeeper.role=proposer'",
                )
                .await?;
                return Ok(true);
            }
            let ttid = match client.named_timeline() {
                Ok(Some(t)) => t,
                _ => {
                    conn.send_error(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "PUT_TIMELINE_HISTORY needs -c tenant_id=… -c timeline_id=…",
                    )
                    .await?;
                    return Ok(true);
                }
            };
            let stored = match shared.timelines.get(ttid) {
                Some(t) if !super::history::waits_for_greeting(&t, timeline) => {
                    super::history::store(shared, &t, timeline, content, None).await
                }
                // The greeting on this connection is to create it, or to
                // continue it on a newer PostgreSQL timeline.
                _ => super::history::check_size(timeline, &content).map(|()| {
                    tracing::debug!(timeline = %ttid, tli = timeline, "history file kept until this connection's greeting creates the timeline");
                    *client
                        .pending_history
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some((timeline, content));
                }),
            };
            match stored {
                Ok(()) => {
                    conn.write_message(&BeMessage::CommandComplete("PUT_TIMELINE_HISTORY"))?;
                    conn.send_ready_for_query().await?;
                }
                Err((code, msg)) => {
                    tracing::warn!(peer = %client.peer, "PUT_TIMELINE_HISTORY refused: {msg}");
                    conn.send_error(code, &msg).await?
                }
            }
        }
        c @ (ReplicationCommand::ReadReplicationSlot { .. }
        | ReplicationCommand::CreateReplicationSlot { .. }
        | ReplicationCommand::DropReplicationSlot { .. }) => {
            super::slots::run_command(shared, conn, client, c).await?;
            if *shared.shutdown.borrow() {
                // A DROP_REPLICATION_SLOT … WAIT cut short by the shutdown.
                return Ok(false);
            }
        }
        ReplicationCommand::StartReplication {
            slot,
            start_lsn,
            timeline,
            options,
        } => {
            let recovery_term = match find_option(&options, "term") {
                None => None,
                Some(o) => match o.value.as_deref().and_then(|v| v.parse().ok()) {
                    Some(t) => Some(t),
                    None => {
                        conn.send_error(
                            sqlstate::SYNTAX_ERROR,
                            "option term needs a number, e.g. (term '5')",
                        )
                        .await?;
                        return Ok(true);
                    }
                },
            };
            let t = match choose_timeline(shared, client) {
                Ok(t) => t,
                Err((code, msg)) => {
                    conn.send_error(code, &msg).await?;
                    return Ok(true);
                }
            };
            let req = wal_send::StartRequest {
                start_lsn,
                timeline,
                recovery_term,
                slot,
            };
            return wal_send::serve(shared, conn, client, t, req).await;
        }
        ReplicationCommand::TimelineSettled { term, lsn } => {
            if let Err((code, msg)) = settle(shared, client, term, lsn).await {
                tracing::warn!(peer = %client.peer, term, %lsn, "TIMELINE_SETTLED refused: {msg}");
                conn.send_error(code, &msg).await?;
                return Ok(true);
            }
            conn.write_message(&crate::pq::frame::BeMessage::CommandComplete(
                "TIMELINE_SETTLED",
            ))?;
            conn.send_ready_for_query().await?;
        }
        ReplicationCommand::Unsupported(text) => {
            conn.send_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                &format!("command not supported by this safekeeper: {}", text.trim()),
            )
            .await?;
        }
    }
    Ok(true)
}

/// `TIMELINE_SETTLED`: record durably that `--sync-only` settled this node,
/// and on a `--restore-cluster` node clear the restore mark after that.
async fn settle(
    shared: &Arc<Shared>,
    client: &Client,
    term: u64,
    lsn: crate::lsn::Lsn,
) -> Result<(), (&'static str, String)> {
    if !client.is_proposer {
        return Err((
            INSUFFICIENT_PRIVILEGE,
            "TIMELINE_SETTLED is for proposers: connect with options='-c walkeeper.role=proposer'"
                .into(),
        ));
    }
    let t = choose_timeline(shared, client)?;
    let synced = t
        .settle(shared.timelines.writer(), term, lsn)
        .map_err(|e| (OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string()))?;
    match synced.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            t.poison(&e.to_string());
            return Err((
                sqlstate::INTERNAL_ERROR,
                format!("timeline {}: storing the settled state failed: {e}", t.ttid),
            ));
        }
        Err(_) => {
            return Err((
                sqlstate::INTERNAL_ERROR,
                "the group-commit writer stopped".into(),
            ))
        }
    }
    tracing::info!(timeline = %t.ttid, term, %lsn, "settled by safekeeper-proxy --sync-only");
    // Only after the settled state is durable: a crash in between leaves
    // the mark, and a second --sync-only clears it.
    // A synced write: on a blocking thread, not this async worker.
    let cleared = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.clear_restored().map_err(|e| e.to_string()))
    };
    cleared
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| {
            (
                sqlstate::INTERNAL_ERROR,
                format!("clearing the restore mark: {e}"),
            )
        })
}

/// The timeline a consumer means: the one its startup options name, or the
/// only one this safekeeper holds.
pub fn choose_timeline(
    shared: &Shared,
    client: &Client,
) -> Result<Arc<Timeline>, (&'static str, String)> {
    match client.named_timeline() {
        Err(e) => Err((sqlstate::INVALID_PARAMETER_VALUE, e)),
        Ok(Some(ttid)) => shared.timelines.get(ttid).ok_or_else(|| {
            (
                sqlstate::UNDEFINED_OBJECT,
                format!("timeline {ttid} does not exist on this safekeeper"),
            )
        }),
        Ok(None) => {
            let all = shared.timelines.all();
            match all.len() {
                1 => Ok(all[0].clone()),
                0 => Err((sqlstate::UNDEFINED_OBJECT, "this safekeeper holds no timeline yet".into())),
                n => Err((
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("this safekeeper holds {n} timelines: name one with options='-c tenant_id=… -c timeline_id=…'"),
                )),
            }
        }
    }
}

/// `wal_segment_size` as PostgreSQL shows it (`16MB`, `1GB`), which is what
/// pg_receivewal parses.
fn format_size(bytes: u32) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}GB", bytes >> 30)
    } else {
        format!("{}MB", bytes >> 20)
    }
}
