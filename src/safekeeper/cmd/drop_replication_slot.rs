//! `DROP_REPLICATION_SLOT s [WAIT]`.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{after_slot_command, slot_stored, Next};
use crate::pq::connection::PqConnection;
use crate::pq::frame::BeMessage;
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::slots::SlotError;
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    slot: &str,
    wait: bool,
) -> Result<Next, PqError> {
    drop_slot(shared, conn, client, slot, wait).await?;
    Ok(after_slot_command(shared))
}

async fn drop_slot<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    slot: &str,
    wait: bool,
) -> Result<(), PqError> {
    let t = match choose_timeline(shared, client) {
        Ok(t) => t,
        Err((code, msg)) => return conn.send_error(code, &msg).await,
    };
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
                Err(SlotError {
                    code: sqlstate::QUERY_CANCELED,
                    message: "canceling statement due to user request".into(),
                })
            }
            _ = conn.until_closed() => {
                tracing::info!(timeline = %t.ttid, slot = %slot, "the client of DROP_REPLICATION_SLOT WAIT went away; the slot stays");
                return Ok(());
            }
        }
    } else {
        shared.slots.drop_slot(writer, t.ttid, slot, client.session)
    };
    let synced = match dropped {
        Err(e) if e.code == sqlstate::ADMIN_SHUTDOWN => {
            // The connection closes after this (`after_slot_command`).
            return conn.send_fatal(e.code, &e.message).await;
        }
        Err(e) => return conn.send_error(e.code, &e.message).await,
        Ok(synced) => {
            tracing::info!(timeline = %t.ttid, slot = %slot, "replication slot dropped");
            synced
        }
    };
    if !slot_stored(synced).await {
        return conn
            .send_error(
                sqlstate::INTERNAL_ERROR,
                &format!("timeline {}: storing the slot change failed", t.ttid),
            )
            .await;
    }
    conn.write_message(&BeMessage::CommandComplete("DROP_REPLICATION_SLOT"))?;
    conn.send_ready_for_query().await
}
