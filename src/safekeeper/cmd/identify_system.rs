//! `IDENTIFY_SYSTEM`: the system id, PostgreSQL timeline and commit LSN of
//! the timeline the client means.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Next;
use crate::pq::connection::PqConnection;
use crate::pq::frame::Column;
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
) -> Result<Next, PqError> {
    let t = match choose_timeline(shared, client) {
        Ok(t) => t,
        Err((code, msg)) => {
            conn.send_error(code, &msg).await?;
            return Ok(Next::Query);
        }
    };
    let state = t.durable().borrow().clone();
    let Some(state) = state else {
        conn.send_error(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            &format!("timeline {} is being created", t.ttid),
        )
        .await?;
        return Ok(Next::Query);
    };
    let rows = vec![vec![
        Some(state.server.system_id.to_string()),
        Some(state.server.tli.to_string()),
        Some(state.commit_lsn.to_string()),
        None,
    ]];
    conn.write_result_set(
        &[
            Column::text("systemid"),
            Column::int4("timeline"),
            Column::text("xlogpos"),
            Column::text("dbname"),
        ],
        &rows,
        "IDENTIFY_SYSTEM",
    )?;
    conn.send_ready_for_query().await?;
    Ok(Next::Query)
}
