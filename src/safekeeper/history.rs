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

use super::pg_errors::write_failure_code;
use super::timelines::Timeline;
use super::Shared;
use crate::pq::replication::MAX_HISTORY_FILE_LEN;
use crate::pq::{sqlstate, PgError};

/// A history file put on a connection before its greeting.
pub type Pending = Option<(u32, Vec<u8>)>;

/// Why a history file is refused: an SQLSTATE and a message for the client.
pub type Refusal = PgError;

/// Whether a file this large may be stored at all.
pub fn check_size(tli: u32, content: &[u8]) -> Result<(), Refusal> {
    if content.len() > MAX_HISTORY_FILE_LEN {
        return Err(PgError::new(
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
/// streams, or `greeted`, the one of a greeting it took. The synced write
/// runs on a blocking thread, never on the caller's async worker.
pub async fn store(
    shared: &Shared,
    t: &Timeline,
    tli: u32,
    content: Vec<u8>,
    greeted: Option<u32>,
) -> Result<(), Refusal> {
    check_size(tli, &content)?;
    let streams = t.current_state().server.tli;
    if tli != streams && Some(tli) != greeted {
        return Err(PgError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "timeline {} streams PostgreSQL timeline {streams}: it keeps the history file of that timeline only, not of {tli}",
                t.ttid
            ),
        ));
    }
    let (store, ttid, bytes) = (shared.store.clone(), t.ttid, content.len());
    let failed = |code, e: &dyn std::fmt::Display| {
        PgError::new(code, format!("timeline {ttid}: storing history {tli}: {e}"))
    };
    tokio::task::spawn_blocking(move || store.put_timeline_history(ttid, tli, &content))
        .await
        .map_err(|e| failed(sqlstate::INTERNAL_ERROR, &e))?
        .map_err(|e| failed(write_failure_code(e.kind()), &e))?;
    tracing::info!(timeline = %ttid, tli, bytes, "stored the timeline history file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{mpsc, Arc};
    use std::time::Duration;

    use super::super::{limits::Limits, Shared, SharedStore};
    use crate::id::NodeId;
    use crate::store::rocks::RocksStore;
    use crate::store::writer::GroupCommitWriter;
    use crate::store::Storage;

    /// Long enough for anything that does not wait for the held sync.
    const ANSWER: Duration = Duration::from_secs(30);

    #[test]
    fn the_history_files_synced_write_blocks_neither_the_async_worker_nor_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SharedStore::new(RocksStore::init(dir.path().join("store"), NodeId(1)).unwrap());
        let writer = GroupCommitWriter::start(store.clone());
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared::new(
            NodeId(1),
            store.clone(),
            writer.handle(),
            vec![],
            vec![],
            shutdown,
            Limits::default(),
        ));
        let (t, created) = shared
            .timelines
            .greet(&crate::store::memory::tests_greeting())
            .unwrap();
        created.synced.blocking_recv().unwrap().unwrap();
        let ttid = t.ttid;
        let file = b"1\t0/3000000\tno recovery target specified\n".to_vec();

        // The put's fsync is held. On a runtime with one worker thread, the
        // task storing the file must leave that thread to other tasks.
        let held = store.rocks().sync_hold().arm();
        let (ran, worker_free) = mpsc::channel();
        let runtime = {
            let (shared, store, file) = (shared.clone(), store.clone(), file.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let put =
                        tokio::spawn(async move { super::store(&shared, &t, 1, file, None).await });
                    while !store.rocks().sync_hold().holding() {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    let _ = ran.send(());
                    put.await.unwrap()
                })
            })
        };
        assert!(held.wait_held(ANSWER), "the history file's sync never came");
        worker_free
            .recv_timeout(ANSWER)
            .expect("the async worker was blocked by the history file's synced write");

        // Readers of the store are answered meanwhile.
        let (tx, rx) = mpsc::channel();
        let reader = store.clone();
        std::thread::spawn(move || tx.send(reader.timelines().map(|t| t.len())));
        let read = rx
            .recv_timeout(ANSWER)
            .expect("a read of the store waited for the history file's sync");
        assert_eq!(read.unwrap(), 1);
        assert!(store.rocks().sync_hold().holding());

        drop(held);
        runtime.join().unwrap().unwrap();
        assert_eq!(store.timeline_history(ttid, 1).unwrap(), Some(file));
        drop(shared);
        writer.shutdown();
    }
}
