//! `START_REPLICATION [SLOT s] PHYSICAL X/Y [TIMELINE n] [(term 'N')]`:
//! stream WAL ([`crate::safekeeper::wal_send`]).

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Context, Next, Outcome};
use crate::lsn::Lsn;
use crate::pq::replication::{find_option, CommandOption};
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::choose_timeline;
use crate::safekeeper::wal_send;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    slot: Option<String>,
    start_lsn: Lsn,
    timeline: Option<u32>,
    options: &[CommandOption],
) -> Outcome {
    let recovery_term = match find_option(options, "term") {
        None => None,
        Some(o) => Some(
            o.value
                .as_deref()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    PgError::new(
                        sqlstate::SYNTAX_ERROR,
                        "option term needs a number, e.g. (term '5')",
                    )
                })?,
        ),
    };
    let t = choose_timeline(cx.shared, cx.client)?;
    let req = wal_send::StartRequest {
        start_lsn,
        timeline,
        recovery_term,
        slot,
    };
    Ok(
        match wal_send::serve(cx.shared, cx.conn, cx.client, t, req).await? {
            true => Next::Query,
            false => Next::Close,
        },
    )
}
