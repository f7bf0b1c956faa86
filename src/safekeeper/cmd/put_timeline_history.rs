//! `PUT_TIMELINE_HISTORY n 'hex'`: a proposer hands over its primary's
//! history file ([`crate::safekeeper::history`] decides what is kept).

use tokio::io::{AsyncRead, AsyncWrite};

use super::{complete, Context, Outcome};
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::Client;
use crate::safekeeper::{history, Shared};

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    timeline: u32,
    content: Vec<u8>,
) -> Outcome {
    cx.client.require_proposer("PUT_TIMELINE_HISTORY")?;
    put(cx.shared, cx.client, timeline, content)
        .await
        .inspect_err(
            |e| tracing::warn!(peer = %cx.client.peer, "PUT_TIMELINE_HISTORY refused: {e}"),
        )?;
    complete(cx.conn, "PUT_TIMELINE_HISTORY").await
}

async fn put(
    shared: &Shared,
    client: &Client,
    timeline: u32,
    content: Vec<u8>,
) -> Result<(), PgError> {
    let ttid = match client.named_timeline() {
        Ok(Some(t)) => t,
        _ => {
            return Err(PgError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                "PUT_TIMELINE_HISTORY needs -c tenant_id=… -c timeline_id=…",
            ))
        }
    };
    match shared.timelines.get(ttid) {
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
    }
}
