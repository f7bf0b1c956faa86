//! `TIMELINE_SETTLED (term 'N', lsn 'X/Y')`: record durably that
//! `--sync-only` settled this node, and on a `--restore-cluster` node clear
//! the restore mark after that.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Next;
use crate::lsn::Lsn;
use crate::pq::connection::PqConnection;
use crate::pq::frame::BeMessage;
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    term: u64,
    lsn: Lsn,
) -> Result<Next, PqError> {
    if let Err((code, msg)) = settle(shared, client, term, lsn).await {
        tracing::warn!(peer = %client.peer, term, %lsn, "TIMELINE_SETTLED refused: {msg}");
        conn.send_error(code, &msg).await?;
        return Ok(Next::Query);
    }
    conn.write_message(&BeMessage::CommandComplete("TIMELINE_SETTLED"))?;
    conn.send_ready_for_query().await?;
    Ok(Next::Query)
}

async fn settle(
    shared: &Arc<Shared>,
    client: &Client,
    term: u64,
    lsn: Lsn,
) -> Result<(), (&'static str, String)> {
    if !client.is_proposer {
        return Err((
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "TIMELINE_SETTLED is for proposers: connect with options='-c walkeeper.role=proposer'"
                .into(),
        ));
    }
    let t = choose_timeline(shared, client)?;
    let synced = t
        .settle(shared.timelines.writer(), term, lsn)
        .map_err(|e| (sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string()))?;
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
