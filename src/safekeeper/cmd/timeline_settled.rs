//! `TIMELINE_SETTLED (term 'N', lsn 'X/Y')`: record durably that
//! `--sync-only` settled this node, and on a `--restore-cluster` node clear
//! the restore mark after that.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{complete, Context, Outcome};
use crate::lsn::Lsn;
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::pg_errors::write_failure_code;
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    term: u64,
    lsn: Lsn,
) -> Outcome {
    settle(cx.shared, cx.client, term, lsn).await.inspect_err(
        |e| tracing::warn!(peer = %cx.client.peer, term, %lsn, "TIMELINE_SETTLED refused: {e}"),
    )?;
    complete(cx.conn, "TIMELINE_SETTLED").await
}

async fn settle(shared: &Arc<Shared>, client: &Client, term: u64, lsn: Lsn) -> Result<(), PgError> {
    client.require_proposer("TIMELINE_SETTLED")?;
    let t = choose_timeline(shared, client)?;
    let synced = t
        .settle(shared.timelines.writer(), term, lsn)
        .map_err(|e| PgError::new(sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, e.to_string()))?;
    match synced.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            t.poison(e.kind(), &e.to_string());
            return Err(PgError::new(
                write_failure_code(e.kind()),
                format!("timeline {}: storing the settled state failed: {e}", t.ttid),
            ));
        }
        Err(_) => {
            return Err(PgError::new(
                sqlstate::INTERNAL_ERROR,
                "the group-commit writer stopped",
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
            PgError::new(
                sqlstate::INTERNAL_ERROR,
                format!("clearing the restore mark: {e}"),
            )
        })
}
