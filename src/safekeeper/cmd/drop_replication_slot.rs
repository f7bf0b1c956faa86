//! `DROP_REPLICATION_SLOT s [WAIT]`.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{complete, slot_stored, Context, Next, Outcome};
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::choose_timeline;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    slot: &str,
    wait: bool,
) -> Outcome {
    let (shared, client) = (cx.shared, cx.client);
    let t = choose_timeline(shared, client)?;
    let writer = shared.timelines.writer();
    // Without WAIT a slot another session uses is refused (55006);
    // with it, dropped once that session lets go, as PostgreSQL does.
    let dropped = if wait {
        // Also ends when the client cancels (psql's Ctrl-C) or goes
        // away: an abandoned wait must not drop the slot later.
        tokio::select! {
            dropped = shared.slots.drop_slot_wait(
                writer,
                t.ttid,
                slot,
                client.session,
                shared.shutdown.clone(),
            ) => dropped,
            _ = client.cancel.requested() => {
                tracing::info!(timeline = %t.ttid, slot = %slot, "DROP_REPLICATION_SLOT WAIT cancelled by the client; the slot stays");
                Err(PgError::new(sqlstate::QUERY_CANCELED, "canceling statement due to user request"))
            }
            _ = cx.conn.until_closed() => {
                tracing::info!(timeline = %t.ttid, slot = %slot, "the client of DROP_REPLICATION_SLOT WAIT went away; the slot stays");
                return Ok(Next::Query);
            }
        }
    } else {
        shared.slots.drop_slot(writer, t.ttid, slot, client.session)
    };
    let synced = match dropped {
        Err(e) if e.code == sqlstate::ADMIN_SHUTDOWN => {
            cx.conn.send_pg_fatal(&e).await?;
            return Ok(Next::Close);
        }
        dropped => dropped?,
    };
    tracing::info!(timeline = %t.ttid, slot = %slot, "replication slot dropped");
    if !slot_stored(synced).await {
        return Err(PgError::new(
            sqlstate::INTERNAL_ERROR,
            format!("timeline {}: storing the slot change failed", t.ttid),
        )
        .into());
    }
    complete(cx.conn, "DROP_REPLICATION_SLOT").await
}
