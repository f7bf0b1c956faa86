//! `START_WAL_PUSH`: a proposer's WAL in CopyBoth until the connection ends
//! ([`crate::safekeeper::wal_push`]).

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Context, Next, Outcome};
use crate::safekeeper::{failover, wal_push};

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(cx: &mut Context<'_, S>) -> Outcome {
    cx.client.require_proposer("START_WAL_PUSH")?;
    let heartbeats = failover::promises_heartbeats(&cx.client.params);
    let history = cx.client.take_pending_history();
    wal_push::serve(cx.shared, cx.conn, cx.client.peer, heartbeats, history).await?;
    Ok(Next::Close)
}
