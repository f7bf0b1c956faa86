//! `READ_REPLICATION_SLOT s`: a slot's type, restart LSN and timeline.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Context, Next, Outcome};
use crate::pq::frame::Column;
use crate::safekeeper::client::choose_timeline;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    slot: &str,
) -> Outcome {
    let t = choose_timeline(cx.shared, cx.client)?;
    let state = t.current_state();
    // All NULL for a slot that does not exist, as PostgreSQL answers;
    // an invalidated or never-reserved slot has no restart LSN.
    let row = match cx.shared.slots.get(t.ttid, slot) {
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
    cx.conn.write_result_set(
        &[
            Column::text("slot_type"),
            Column::text("restart_lsn"),
            Column::int8("restart_tli"),
        ],
        &[row],
        "READ_REPLICATION_SLOT",
    )?;
    cx.conn.send_ready_for_query().await?;
    Ok(Next::Query)
}
