//! `PUT_TIMELINE_HISTORY`: a proxy hands the safekeeper its primary's
//! history file, so consumers of a timeline above 1 can ask
//! `TIMELINE_HISTORY` for it.
//!
//! What is stored is bounded: only for a timeline this node holds, only the
//! file of the PostgreSQL timeline that timeline streams (its `server.tli`)
//! or of the newer one a greeting this node took names (a promoted
//! primary's, which descends from it), so one file per PostgreSQL timeline
//! the walkeeper timeline went through, each replaced by a newer copy, and
//! at most [`MAX_HISTORY_FILE_LEN`] bytes each. The proxy puts the file
//! before it greets, so a file for a timeline its greeting is about to
//! create, or for a newer PostgreSQL timeline, waits on the connection and
//! is stored once that greeting has created (or found) the timeline and was
//! taken; a connection that ends first stores nothing.

use super::timelines::Timeline;
use super::Shared;
use crate::pq::replication::MAX_HISTORY_FILE_LEN;
use crate::pq::sqlstate;

/// A history file put on a connection before its greeting.
pub type Pending = Option<(u32, Vec<u8>)>;

/// Why a history file is refused: an SQLSTATE and a message for the client.
pub type Refusal = (&'static str, String);

/// Whether a file this large may be stored at all.
pub fn check_size(tli: u32, content: &[u8]) -> Result<(), Refusal> {
    if content.len() > MAX_HISTORY_FILE_LEN {
        return Err((
            sqlstate::PROGRAM_LIMIT_EXCEEDED,
            format!(
                "history file of timeline {tli} is {} bytes; this safekeeper stores at most {MAX_HISTORY_FILE_LEN}",
                content.len()
            ),
        ));
    }
    Ok(())
}

/// Whether a file for `tli` put before the greeting waits for it: `t`
/// streams an older PostgreSQL timeline (a promoted primary's proxy).
pub fn waits_for_greeting(t: &Timeline, tli: u32) -> bool {
    tli > t.current_state().server.tli
}

/// Store the history file of PostgreSQL timeline `tli` for `t`: the one it
/// streams, or `greeted`, the one of a greeting it took. Blocking (one
/// synced write).
pub fn store(
    shared: &Shared,
    t: &Timeline,
    tli: u32,
    content: &[u8],
    greeted: Option<u32>,
) -> Result<(), Refusal> {
    check_size(tli, content)?;
    let streams = t.current_state().server.tli;
    if tli != streams && Some(tli) != greeted {
        return Err((
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "timeline {} streams PostgreSQL timeline {streams}: it keeps the history file of that timeline only, not of {tli}",
                t.ttid
            ),
        ));
    }
    shared
        .store
        .put_timeline_history(t.ttid, tli, content)
        .map_err(|e| {
            let code = if e.is_disk_full() {
                sqlstate::DISK_FULL
            } else {
                sqlstate::INTERNAL_ERROR
            };
            (
                code,
                format!("timeline {}: storing history {tli}: {e}", t.ttid),
            )
        })?;
    tracing::info!(timeline = %t.ttid, tli, bytes = content.len(), "stored the timeline history file");
    Ok(())
}
