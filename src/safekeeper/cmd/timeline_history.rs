//! `TIMELINE_HISTORY n`: the history file of PostgreSQL timeline `n`.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Context, Next, Outcome};
use crate::pq::frame::{BeMessage, Column};
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::choose_timeline;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    timeline: u32,
) -> Outcome {
    let name = format!("{timeline:08X}.history");
    let t = choose_timeline(cx.shared, cx.client)?;
    // The primary's file, or one rebuilt from the switch points recorded
    // here when this node learnt the switch without it.
    let stored = cx
        .shared
        .store
        .timeline_history(t.ttid, timeline)
        .map_err(|e| PgError::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
    let content = stored
        .or_else(|| {
            let s = t.current_state();
            crate::consensus::pg_timeline::rebuilt_history_file(
                &s.pg_ancestors,
                s.server.tli,
                timeline,
            )
        })
        .ok_or_else(|| {
            PgError::new(
                sqlstate::UNDEFINED_FILE,
                format!("could not open file \"pg_wal/{name}\": this safekeeper holds no history file for timeline {timeline}"),
            )
        })?;
    // The content column is bytea-like raw bytes, as walsender sends it.
    let row = [Some(name.as_bytes()), Some(content.as_slice())];
    cx.conn.write_message(&BeMessage::RowDescription(&[
        Column::text("filename"),
        Column::text("content"),
    ]))?;
    cx.conn.write_message(&BeMessage::DataRow(&row))?;
    cx.conn
        .write_message(&BeMessage::CommandComplete("TIMELINE_HISTORY"))?;
    cx.conn.send_ready_for_query().await?;
    Ok(Next::Query)
}
