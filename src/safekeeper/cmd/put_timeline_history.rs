//! `PUT_TIMELINE_HISTORY n 'hex'`: a proposer hands over its primary's
//! history file ([`crate::safekeeper::history`] decides what is kept).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Next;
use crate::pq::connection::PqConnection;
use crate::pq::frame::BeMessage;
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::Client;
use crate::safekeeper::{history, Shared};

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    timeline: u32,
    content: Vec<u8>,
) -> Result<Next, PqError> {
    if !client.is_proposer {
        conn.send_error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "PUT_TIMELINE_HISTORY is for proposers: connect with options='-c walkeeper.role=proposer'",
        )
        .await?;
        return Ok(Next::Query);
    }
    let ttid = match client.named_timeline() {
        Ok(Some(t)) => t,
        _ => {
            conn.send_error(
                sqlstate::INVALID_PARAMETER_VALUE,
                "PUT_TIMELINE_HISTORY needs -c tenant_id=… -c timeline_id=…",
            )
            .await?;
            return Ok(Next::Query);
        }
    };
    let stored = match shared.timelines.get(ttid) {
        Some(t) if !history::waits_for_greeting(&t, timeline) => {
            history::store(shared, &t, timeline, content, None).await
        }
        // The greeting on this connection is to create it, or to
        // continue it on a newer PostgreSQL timeline.
        _ => history::check_size(timeline, &content).map(|()| {
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
    Ok(Next::Query)
}
