//! `SHOW name`: the few settings replication clients ask a walsender for.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{Context, Next, Outcome};
use crate::pq::frame::Column;
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    name: &str,
) -> Outcome {
    let v = value(cx.shared, cx.client, name).ok_or_else(|| {
        PgError::new(
            sqlstate::UNDEFINED_OBJECT,
            format!("unrecognized configuration parameter \"{name}\""),
        )
    })?;
    cx.conn
        .write_result_set(&[Column::text(name)], &[vec![Some(v)]], "SHOW")?;
    cx.conn.send_ready_for_query().await?;
    Ok(Next::Query)
}

/// The value of setting `name`; `None`: no such setting here.
fn value(shared: &Shared, client: &Client, name: &str) -> Option<String> {
    match name.to_ascii_lowercase().as_str() {
        "wal_segment_size" => match choose_timeline(shared, client) {
            Ok(t) => Some(format_size(t.current_state().server.wal_seg_size)),
            // Before any timeline exists, PostgreSQL's default.
            Err(_) => Some(format_size(crate::lsn::DEFAULT_WAL_SEG_SIZE)),
        },
        "data_directory_mode" => Some("0700".to_string()),
        // What a --sync-only proxy, which has no primary to ask,
        // needs to greet with.
        "walkeeper.pg_version" => choose_timeline(shared, client)
            .ok()
            .map(|t| t.current_state().server.pg_version.to_string()),
        "walkeeper.timeline_start_lsn" => choose_timeline(shared, client)
            .ok()
            .map(|t| t.current_state().timeline_start_lsn.to_string()),
        "server_version" => Some(crate::pq::connection::DEFAULT_SERVER_VERSION.to_string()),
        "server_version_num" => Some("150000".to_string()),
        "integer_datetimes" => Some("on".to_string()),
        _ => None,
    }
}

/// `wal_segment_size` as PostgreSQL shows it (`16MB`, `1GB`), which is what
/// pg_receivewal parses.
fn format_size(bytes: u32) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}GB", bytes >> 30)
    } else {
        format!("{}MB", bytes >> 20)
    }
}
