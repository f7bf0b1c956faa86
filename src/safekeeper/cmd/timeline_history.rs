//! `TIMELINE_HISTORY n`: the history file of PostgreSQL timeline `n`.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Next;
use crate::pq::connection::PqConnection;
use crate::pq::frame::{BeMessage, Column};
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    timeline: u32,
) -> Result<Next, PqError> {
    let name = format!("{timeline:08X}.history");
    let stored = match choose_timeline(shared, client) {
        // The primary's file, or one rebuilt from the switch points
        // recorded here when this node learnt the switch without it.
        Ok(t) => shared.store.timeline_history(t.ttid, timeline).map(|f| {
            f.or_else(|| {
                let s = t.current_state();
                crate::consensus::pg_timeline::rebuilt_history_file(
                    &s.pg_ancestors,
                    s.server.tli,
                    timeline,
                )
            })
        }),
        Err((code, msg)) => {
            conn.send_error(code, &msg).await?;
            return Ok(Next::Query);
        }
    };
    match stored {
        Ok(Some(content)) => {
            // The content column is bytea-like raw bytes, as
            // walsender sends it.
            let row = [Some(name.as_bytes()), Some(content.as_slice())];
            conn.write_message(&BeMessage::RowDescription(&[
                Column::text("filename"),
                Column::text("content"),
            ]))?;
            conn.write_message(&BeMessage::DataRow(&row))?;
            conn.write_message(&BeMessage::CommandComplete("TIMELINE_HISTORY"))?;
            conn.send_ready_for_query().await?;
        }
        Ok(None) => {
            conn.send_error(
                sqlstate::UNDEFINED_FILE,
                &format!("could not open file \"pg_wal/{name}\": this safekeeper holds no history file for timeline {timeline}"),
            )
            .await?
        }
        Err(e) => conn.send_error(sqlstate::INTERNAL_ERROR, &e.to_string()).await?,
    }
    Ok(Next::Query)
}
