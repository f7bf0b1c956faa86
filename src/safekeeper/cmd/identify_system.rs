//! `IDENTIFY_SYSTEM`: the system id, PostgreSQL timeline and commit LSN of
//! the timeline the client means.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Context, Next, Outcome};
use crate::pq::frame::Column;
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::choose_timeline;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(cx: &mut Context<'_, S>) -> Outcome {
    let t = choose_timeline(cx.shared, cx.client)?;
    let state = t.durable().borrow().clone();
    let state = state.ok_or_else(|| {
        PgError::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("timeline {} is being created", t.ttid),
        )
    })?;
    let rows = vec![vec![
        Some(state.server.system_id.to_string()),
        Some(state.server.tli.to_string()),
        Some(state.commit_lsn.to_string()),
        None,
    ]];
    cx.conn.write_result_set(
        &[
            Column::text("systemid"),
            Column::int4("timeline"),
            Column::text("xlogpos"),
            Column::text("dbname"),
        ],
        &rows,
        "IDENTIFY_SYSTEM",
    )?;
    cx.conn.send_ready_for_query().await?;
    Ok(Next::Query)
}
