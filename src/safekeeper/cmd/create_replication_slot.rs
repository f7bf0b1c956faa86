//! `CREATE_REPLICATION_SLOT s [TEMPORARY] PHYSICAL [RESERVE_WAL]`.

use tokio::io::{AsyncRead, AsyncWrite};

use super::{slot_stored, Context, Next, Outcome};
use crate::lsn::Lsn;
use crate::pq::frame::Column;
use crate::pq::{sqlstate, PgError};
use crate::safekeeper::client::choose_timeline;

pub async fn apply<S: AsyncRead + AsyncWrite + Unpin>(
    cx: &mut Context<'_, S>,
    slot: String,
    temporary: bool,
    reserve_wal: bool,
) -> Outcome {
    let t = choose_timeline(cx.shared, cx.client)?;
    let state = t.current_state();
    // A consumer with no position starts at the segment holding the
    // commit LSN (IDENTIFY_SYSTEM's xlogpos, rounded down).
    let reserve = reserve_wal.then(|| {
        state
            .commit_lsn
            .segment_start(state.server.wal_seg_size)
            .max(state.local_start_lsn)
    });
    let slots = &cx.shared.slots;
    let writer = cx.shared.timelines.writer();
    let synced = slots.create(writer, t.ttid, &slot, temporary, reserve, cx.client.session)?;
    if !slot_stored(synced).await {
        slots.forget(t.ttid, &slot);
        return Err(PgError::new(
            sqlstate::INTERNAL_ERROR,
            format!(
                "timeline {}: storing replication slot \"{slot}\" failed",
                t.ttid
            ),
        )
        .into());
    }
    tracing::info!(timeline = %t.ttid, slot = %slot, temporary, reserve = ?reserve, "replication slot created");
    cx.conn.write_result_set(
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
    cx.conn.send_ready_for_query().await?;
    Ok(Next::Query)
}
