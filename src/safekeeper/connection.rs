//! One client connection on the PostgreSQL-protocol port: startup, then
//! replication commands ([`super::cmd`]) until the client leaves. Proposers say so in their
//! startup options (`-c walkeeper.role=proposer`); everyone else is a
//! consumer. With `--users-file` the client authenticates
//! ([`super::auth`]) and its role decides which commands it may run.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::client::{choose_timeline, Client};
use super::cmd::{self, Next};
use super::Shared;
use crate::logging::{clip, MAX_LOGGED_CLIENT_TEXT};
use crate::pq::connection::{Handshake, PqConnection, ServerParams};
use crate::pq::frame::FeMessage;
use crate::pq::{sqlstate, PqError};

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
                if cmd::run(shared, conn, client, &text).await? == Next::Close {
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
