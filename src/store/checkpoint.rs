//! Backups: RocksDB checkpoints of a store (hard links to the SST files plus
//! a synced copy of RocksDB's log), taken beside a running daemon or of a
//! stopped store, and the mark that says a directory is one.
//!
//! A checkpoint has forgotten every vote its node gave and every WAL byte it
//! acknowledged after the checkpoint. Started as an acceptor of its old
//! membership it could vote twice in a term or out-vote a commit, so each
//! checkpoint carries a durable mark (`checkpoint` in the default column
//! family, schema/store.md) written into it before it gets its final name:
//! there is never a directory under the requested name without the mark. The
//! daemon refuses proposers on a marked store unless `--restore-cluster`, and
//! only a settle of whole-cluster recovery clears the mark (moving it to
//! `restored`, kept for inspection).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rocksdb::{WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use super::rocks::RocksStore;
use super::{Storage, StoreError};
use crate::codec::{decode_stored, encode_stored, Versioned};
use crate::consensus::term_history::Term;
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;

/// Key (default column family) of the mark of a checkpoint not yet cleared.
pub const CHECKPOINT_KEY: &[u8] = b"checkpoint";
/// Key (default column family) where a cleared mark is kept: the store was
/// restored from that checkpoint and whole-cluster recovery settled it.
pub const RESTORED_KEY: &[u8] = b"restored";

/// What a checkpoint holds, recorded inside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMark {
    pub node_id: NodeId,
    /// When the checkpoint was taken, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The store it was taken from.
    pub source: String,
    pub timelines: Vec<CheckpointTimeline>,
}

impl Versioned for CheckpointMark {
    const WHAT: &'static str = "checkpoint mark";
    const FORMAT_VERSION: u16 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointTimeline {
    pub ttid: Ttid,
    pub term: Term,
    pub local_start_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
}

/// The mark as the HTTP API and `skctl` show it (LSNs as PostgreSQL writes
/// them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub path: String,
    pub node_id: u64,
    pub created_unix_ms: u64,
    pub source: String,
    pub timelines: Vec<CheckpointTimelineInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointTimelineInfo {
    pub timeline: String,
    pub term: u64,
    pub local_start_lsn: String,
    pub flush_lsn: String,
    pub commit_lsn: String,
}

impl CheckpointMark {
    pub fn info(&self, path: &Path) -> CheckpointInfo {
        CheckpointInfo {
            path: path.display().to_string(),
            node_id: self.node_id.0,
            created_unix_ms: self.created_unix_ms,
            source: self.source.clone(),
            timelines: self
                .timelines
                .iter()
                .map(|t| CheckpointTimelineInfo {
                    timeline: t.ttid.to_string(),
                    term: t.term,
                    local_start_lsn: t.local_start_lsn.to_string(),
                    flush_lsn: t.flush_lsn.to_string(),
                    commit_lsn: t.commit_lsn.to_string(),
                })
                .collect(),
        }
    }

    /// One line for logs and error messages.
    pub fn describe(&self) -> String {
        let lsns: Vec<String> = self
            .timelines
            .iter()
            .map(|t| format!("{} flush {}", t.ttid, t.flush_lsn))
            .collect();
        format!(
            "a checkpoint of node {} taken at {} ms since the epoch from {} ({})",
            self.node_id.0,
            self.created_unix_ms,
            self.source,
            if lsns.is_empty() {
                "no timelines".to_string()
            } else {
                lsns.join(", ")
            }
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{0} already exists: a checkpoint goes into a new directory")]
    Exists(PathBuf),
    #[error("checkpoint into {path}: {detail}")]
    Failed { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn failed(path: &Path, detail: impl Into<String>) -> CheckpointError {
    CheckpointError::Failed {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Checkpoint an open store into `out`, which must not exist. Safe while the
/// group-commit writer writes: RocksDB takes a consistent view (whole write
/// batches). Blocking: flushes memtables and syncs files.
pub fn create(store: &RocksStore, out: &Path) -> Result<CheckpointMark, CheckpointError> {
    create_from_db(&store.db(), store.path(), store.node_id(), out)
}

/// [`create`] for a RocksDB handle taken from a store (so the daemon need not
/// hold its store lock for the duration).
pub fn create_from_db(
    db: &DB,
    source: &Path,
    node_id: NodeId,
    out: &Path,
) -> Result<CheckpointMark, CheckpointError> {
    if out.exists() {
        return Err(CheckpointError::Exists(out.to_path_buf()));
    }
    let Some(name) = out.file_name() else {
        return Err(failed(out, "the path names no directory"));
    };
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| failed(out, format!("cannot create {}: {e}", parent.display())))?;
    // Built under another name and renamed once marked, so an interrupted
    // checkpoint never looks like a finished (or an unmarked) store.
    let mut staging_name = name.to_os_string();
    staging_name.push(".partial");
    let staging = parent.join(staging_name);
    if staging.exists() {
        return Err(failed(
            out,
            format!(
                "{} exists, left by an interrupted checkpoint; remove it first",
                staging.display()
            ),
        ));
    }
    let result = (|| {
        rocksdb::checkpoint::Checkpoint::new(db)
            .and_then(|c| c.create_checkpoint(&staging))
            .map_err(|e| failed(out, format!("RocksDB: {}", e.into_string())))?;
        let mark = mark_checkpoint(&staging, source, node_id)?;
        std::fs::rename(&staging, out).map_err(|e| {
            failed(
                out,
                format!("cannot rename {} into place: {e}", staging.display()),
            )
        })?;
        // The rename is what makes the checkpoint exist under its name.
        if let Ok(dir) = std::fs::File::open(&parent) {
            let _ = dir.sync_all();
        }
        Ok(mark)
    })();
    if result.is_err() && staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Open a fresh checkpoint and record in it what it holds.
fn mark_checkpoint(
    dir: &Path,
    source: &Path,
    node_id: NodeId,
) -> Result<CheckpointMark, CheckpointError> {
    let store = RocksStore::open(dir)?;
    if store.node_id() != node_id {
        return Err(failed(
            dir,
            format!(
                "the checkpoint belongs to node {}, the store to node {}",
                store.node_id().0,
                node_id.0
            ),
        ));
    }
    let timelines = store
        .timelines()?
        .into_iter()
        .map(|s| CheckpointTimeline {
            ttid: s.ttid,
            term: s.term,
            local_start_lsn: s.local_start_lsn,
            flush_lsn: s.flush_lsn,
            commit_lsn: s.commit_lsn,
        })
        .collect();
    let mark = CheckpointMark {
        node_id,
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        source: std::path::absolute(source)
            .unwrap_or_else(|_| source.to_path_buf())
            .display()
            .to_string(),
        timelines,
    };
    let db = store.db();
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let encoded = encode_stored(&mark).map_err(|e| failed(dir, e.to_string()))?;
    db.put_opt(CHECKPOINT_KEY, encoded, &sync)
        .map_err(|e| failed(dir, format!("cannot write the mark: {}", e.into_string())))?;
    Ok(mark)
}

fn read_key(store: &RocksStore, key: &[u8]) -> Result<Option<CheckpointMark>, StoreError> {
    let raw = store
        .db()
        .get(key)
        .map_err(|e| StoreError::CorruptStore(format!("reading {key:?}: {}", e.into_string())))?;
    raw.map(|r| {
        decode_stored::<CheckpointMark>(&r).map_err(|e| {
            StoreError::CorruptStore(format!("the {} record: {e}", String::from_utf8_lossy(key)))
        })
    })
    .transpose()
}

/// The mark of a checkpoint not yet cleared: Some when this store is a
/// checkpoint (or was restored from one) and must not act as an acceptor of
/// its old membership.
pub fn mark(store: &RocksStore) -> Result<Option<CheckpointMark>, StoreError> {
    read_key(store, CHECKPOINT_KEY)
}

/// The cleared mark of the checkpoint this store was restored from.
pub fn restored_from(store: &RocksStore) -> Result<Option<CheckpointMark>, StoreError> {
    read_key(store, RESTORED_KEY)
}

/// Clear the mark durably (one synced batch): whole-cluster recovery has
/// settled this node. The mark is kept under [`RESTORED_KEY`].
pub fn clear_mark(store: &RocksStore) -> Result<(), StoreError> {
    let db = store.db();
    let raw = db
        .get(CHECKPOINT_KEY)
        .map_err(|e| StoreError::Io(super::rocks::failure(e)))?;
    let Some(raw) = raw else {
        return Ok(());
    };
    let mut batch = WriteBatch::default();
    batch.put(RESTORED_KEY, raw);
    batch.delete(CHECKPOINT_KEY);
    store.write_synced_beside(batch)
}
