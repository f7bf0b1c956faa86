//! `CREATE_REPLICATION_SLOT s [TEMPORARY] PHYSICAL [RESERVE_WAL]`.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{after_slot_command, slot_stored, Next};
use crate::lsn::Lsn;
use crate::pq::connection::PqConnection;
use crate::pq::frame::Column;
use crate::pq::{sqlstate, PqError};
use crate::safekeeper::client::{choose_timeline, Client};
use crate::safekeeper::Shared;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    slot: String,
    temporary: bool,
    reserve_wal: bool,
) -> Result<Next, PqError> {
    create(shared, conn, client, slot, temporary, reserve_wal).await?;
    Ok(after_slot_command(shared))
}

async fn create<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Arc<Shared>,
    conn: &mut PqConnection<S>,
    client: &Client,
    slot: String,
    temporary: bool,
    reserve_wal: bool,
) -> Result<(), PqError> {
    let t = match choose_timeline(shared, client) {
        Ok(t) => t,
        Err((code, msg)) => return conn.send_error(code, &msg).await,
    };
    let state = t.current_state();
    // A consumer with no position starts at the segment holding the
    // commit LSN (IDENTIFY_SYSTEM's xlogpos, rounded down).
    let reserve = reserve_wal.then(|| {
        state
            .commit_lsn
            .segment_start(state.server.wal_seg_size)
            .max(state.local_start_lsn)
    });
    let writer = shared.timelines.writer();
    let synced =
        match shared
            .slots
            .create(writer, t.ttid, &slot, temporary, reserve, client.session)
        {
            Err(e) => return conn.send_error(e.code, &e.message).await,
            Ok(synced) => synced,
        };
    if !slot_stored(synced).await {
        shared.slots.forget(t.ttid, &slot);
        return conn
            .send_error(
                sqlstate::INTERNAL_ERROR,
                &format!(
                    "timeline {}: storing replication slot \"{slot}\" failed",
                    t.ttid
                ),
            )
            .await;
    }
    tracing::info!(timeline = %t.ttid, slot = %slot, temporary, reserve = ?reserve, "replication slot created");
    conn.write_result_set(
        &[
            Column::text("slot_name"),
            Column::text("consistent_point"),
            Column::text("snapshot_name"),
            Column::text("output_plugin"),
        ],
        &[vec![
            Some(slot),
            Some(reserve.unwrap_or(Lsn::INVALID).to_string()),
            None,
            None,
        ]],
        "CREATE_REPLICATION_SLOT",
    )?;
    conn.send_ready_for_query().await
}
