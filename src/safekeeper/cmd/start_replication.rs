//! `START_REPLICATION [SLOT s] PHYSICAL X/Y [TIMELINE n] [(term 'N')]`:
//! stream WAL ([`crate::safekeeper::wal_send`]).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::Next;
use crate::lsn::Lsn;
use crate::pq::connection::PqConnection;
use crate::pq::replication::{find_option, CommandOption};
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::{wal_send, Shared};

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    slot: Option<String>,
    start_lsn: Lsn,
    timeline: Option<u32>,
    options: &[CommandOption],
) -> Result<Next, PqError> {
    let recovery_term = match find_option(options, "term") {
        None => None,
        Some(o) => match o.value.as_deref().and_then(|v| v.parse().ok()) {
            Some(t) => Some(t),
            None => {
                conn.send_error(
                    sqlstate::SYNTAX_ERROR,
                    "option term needs a number, e.g. (term '5')",
                )
                .await?;
                return Ok(Next::Query);
            }
        },
    };
    let t = match choose_timeline(shared, client) {
        Ok(t) => t,
        Err((code, msg)) => {
            conn.send_error(code, &msg).await?;
            return Ok(Next::Query);
        }
    };
    let req = wal_send::StartRequest {
        start_lsn,
        timeline,
        recovery_term,
        slot,
    };
    Ok(match wal_send::serve(shared, conn, client, t, req).await? {
        true => Next::Query,
        false => Next::Close,
    })
}
