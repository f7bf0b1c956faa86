//! `START_WAL_PUSH`: a proposer's WAL in CopyBoth until the connection ends
//! ([`crate::safekeeper::wal_push`]).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Next;
use crate::pq::connection::PqConnection;
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::Client;
use crate::safekeeper::{failover, wal_push, Shared};

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
) -> Result<Next, PqError> {
    if !client.is_proposer {
        conn.send_error(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            "START_WAL_PUSH is for proposers: connect with options='-c walkeeper.role=proposer'",
        )
        .await?;
        return Ok(Next::Query);
    }
    let heartbeats = failover::promises_heartbeats(&client.params);
    let history = client.take_pending_history();
    wal_push::serve(shared, conn, client.peer, heartbeats, history).await?;
    Ok(Next::Close)
}
