//! Where timelines live: the storage trait the acceptor's writes go through,
//! an in-memory implementation (for the simulation and tests) and the RocksDB
//! one (`rocks`, behind the `rocksdb` feature).

#[cfg(feature = "rocksdb")]
pub mod checkpoint;
pub mod faulty;
pub mod layout;
pub mod memory;
#[cfg(feature = "rocksdb")]
pub mod rocks;
pub mod writer;

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{CodecError, Versioned};
use crate::consensus::acceptor::{TimelineState, Write};
use crate::id::Ttid;
use crate::lsn::Lsn;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("timeline {ttid}: stored WAL {from}..{to} is corrupt: {detail}")]
    CorruptWal {
        ttid: Ttid,
        from: Lsn,
        to: Lsn,
        detail: String,
    },
    #[error("timeline {ttid}: stored state is corrupt: {detail}")]
    CorruptState { ttid: Ttid, detail: String },
    #[error("timeline {ttid}: WAL {from}..{to} is not held here (held: {held_from}..{held_to})")]
    NotHeld {
        ttid: Ttid,
        from: Lsn,
        to: Lsn,
        held_from: Lsn,
        held_to: Lsn,
    },
    #[error("timeline {0} does not exist in this store")]
    UnknownTimeline(Ttid),
    #[error("store at {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("store is corrupt: {0}")]
    CorruptStore(String),
    #[error("invalid write: {0}")]
    Invalid(String),
    #[error("storage I/O failed: {0}")]
    Io(StorageFailure),
    /// A write or sync failed earlier: what was staged since may be lost,
    /// so nothing more is written or acknowledged until the daemon reopens
    /// the store from what is durable. Carries the first failure.
    #[error("an earlier write or sync failed ({0}); nothing staged since then is acknowledged: restart the safekeeper (after freeing space if the disk is full) to reopen the store from what is durable")]
    Failed(StorageFailure),
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// What kind of failure a store error is, as the daemon tells its clients
/// (53100, XX001, XX000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The disk (or its quota) is full: the operator must free space.
    DiskFull,
    /// Stored data is damaged.
    Corruption,
    /// Any other failure: an I/O error, a refused write, a bug.
    Io,
}

impl StoreErrorKind {
    /// ENOSPC and EDQUOT are a full disk; the rest is I/O.
    pub fn of_io(e: &std::io::Error) -> StoreErrorKind {
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                StoreErrorKind::DiskFull
            }
            _ => StoreErrorKind::Io,
        }
    }
}

/// A failed storage operation: its kind, what was being done, and the
/// error that caused it.
#[derive(Debug, Clone)]
pub struct StorageFailure {
    pub kind: StoreErrorKind,
    what: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StorageFailure {
    /// A failure with no underlying error (an injected one, say).
    pub fn new(kind: StoreErrorKind, what: impl Into<String>) -> StorageFailure {
        StorageFailure {
            kind,
            what: what.into(),
            source: None,
        }
    }

    /// `what` failed because of `source`.
    pub fn caused_by(
        kind: StoreErrorKind,
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageFailure {
        StorageFailure {
            kind,
            what: what.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// `what` failed with an OS error; its kind follows the error's.
    pub fn io(what: impl Into<String>, e: std::io::Error) -> StorageFailure {
        StorageFailure::caused_by(StoreErrorKind::of_io(&e), what, e)
    }
}

impl std::fmt::Display for StorageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.source, self.what.is_empty()) {
            (Some(source), true) => write!(f, "{source}"),
            (Some(source), false) => write!(f, "{}: {source}", self.what),
            (None, _) => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for StorageFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl StoreError {
    /// A storage failure of `kind` with no underlying error.
    pub fn io(kind: StoreErrorKind, what: impl Into<String>) -> StoreError {
        StoreError::Io(StorageFailure::new(kind, what))
    }

    /// What kind of failure this is: damage read back is corruption, a
    /// failed operation is what its cause was.
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            StoreError::CorruptWal { .. }
            | StoreError::CorruptState { .. }
            | StoreError::CorruptStore(_) => StoreErrorKind::Corruption,
            StoreError::Io(f) | StoreError::Failed(f) => f.kind,
            StoreError::NotHeld { .. }
            | StoreError::UnknownTimeline(_)
            | StoreError::Open { .. }
            | StoreError::Invalid(_)
            | StoreError::Codec(_) => StoreErrorKind::Io,
        }
    }

    /// This error as the first failure that every later write, sync and
    /// read of the store fails with.
    pub fn into_failure(self: Arc<Self>) -> StorageFailure {
        match &*self {
            StoreError::Failed(first) => first.clone(),
            other => StorageFailure {
                kind: other.kind(),
                what: String::new(),
                source: Some(self),
            },
        }
    }
}

/// A durable consumer slot of one timeline (temporary slots are never
/// stored). Keyed by tenant ‖ timeline ‖ name; see schema/store.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub name: String,
    /// WAL from here on is kept for the consumer; `Lsn::INVALID` until the
    /// slot reserves WAL or hears its first flush report.
    pub restart_lsn: Lsn,
    /// Why the slot no longer holds WAL back (it exceeded --max-wal-keep).
    pub invalidated: Option<String>,
}

impl Versioned for SlotRecord {
    const WHAT: &'static str = "slot";
    const FORMAT_VERSION: u16 = 1;
}

/// A store-level change of one timeline that is not the acceptor's: a
/// consumer slot. The daemon sends them through the group-commit writer
/// beside the acceptor's writes, so they share its syncs and its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotWrite {
    /// Store (or replace) a consumer slot.
    Put(Box<SlotRecord>),
    /// Remove a consumer slot.
    Delete { name: String },
}

/// One change a storage stages for a timeline: the acceptor's, or the
/// store's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrite {
    Acceptor(Write),
    Slot(SlotWrite),
}

/// Durable storage of many timelines.
///
/// `write` stages changes: they are visible to later calls on this storage at
/// once, but durable only after `sync` returns. A crash loses every staged,
/// unsynced write and nothing else. Writes of one timeline are applied in the
/// order given.
pub trait Storage {
    /// The state of every stored timeline.
    fn timelines(&self) -> Result<Vec<TimelineState>, StoreError>;

    /// Stage `writes` for one timeline.
    fn write(&mut self, ttid: Ttid, writes: &[Write]) -> Result<(), StoreError>;

    /// Stage a slot change of one timeline, after everything staged
    /// before. Required of every storage (no default: a wrapper that forgot
    /// to forward it once refused every slot).
    fn write_slot(&mut self, ttid: Ttid, write: &SlotWrite) -> Result<(), StoreError>;

    /// Make every staged write durable.
    fn sync(&mut self) -> Result<(), StoreError>;

    /// WAL `[from, to)` of a timeline, checked; an error rather than a short
    /// or damaged read.
    fn read_wal(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<Vec<u8>, StoreError>;

    /// Every stored consumer slot. Storages that never see `SlotWrite` (test
    /// doubles) keep the default.
    fn slots(&self) -> Result<Vec<(Ttid, SlotRecord)>, StoreError> {
        Ok(Vec::new())
    }
}
