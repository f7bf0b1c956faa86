//! `READ_REPLICATION_SLOT s`: a slot's type, restart LSN and timeline.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{after_slot_command, Next};
use crate::pq::connection::PqConnection;
use crate::pq::frame::Column;
use crate::pq::PqError;
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    slot: &str,
) -> Result<Next, PqError> {
    let t = match choose_timeline(shared, client) {
        Ok(t) => t,
        Err((code, msg)) => {
            conn.send_error(code, &msg).await?;
            return Ok(after_slot_command(shared));
        }
    };
    let state = t.current_state();
    // All NULL for a slot that does not exist, as PostgreSQL answers;
    // an invalidated or never-reserved slot has no restart LSN.
    let row = match shared.slots.get(t.ttid, slot) {
        None => vec![None, None, None],
        Some(s) if s.invalidated.is_some() || !s.restart_lsn.is_valid() => {
            vec![Some("physical".to_string()), None, None]
        }
        Some(s) => vec![
            Some("physical".to_string()),
            Some(s.restart_lsn.to_string()),
            Some(state.server.tli.to_string()),
        ],
    };
    conn.write_result_set(
        &[
            Column::text("slot_type"),
            Column::text("restart_lsn"),
            Column::int8("restart_tli"),
        ],
        &[row],
        "READ_REPLICATION_SLOT",
    )?;
    conn.send_ready_for_query().await?;
    Ok(after_slot_command(shared))
}
