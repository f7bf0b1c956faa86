//! A storage that fails on request: wraps any [`Storage`] and fails the
//! Nth `write` or `sync` from a given point on, the way a full or dying
//! disk does. For tests of the code above the storage (the group-commit
//! writer, the daemon's timelines) and for the simulation; never used by
//! the daemon itself.

use std::sync::{Arc, Mutex};

use super::{SlotRecord, SlotWrite, Storage, StoreError, StoreErrorKind};
use crate::consensus::acceptor::{TimelineState, Write};
use crate::id::Ttid;
use crate::lsn::Lsn;

/// What to fail, shared with the test that arms it while the storage is
/// in use (inside a writer).
#[derive(Debug, Default)]
pub struct Faults {
    /// Calls of `write` so far.
    pub writes: u64,
    /// Calls of `sync` so far.
    pub syncs: u64,
    /// Fail the write call with this number (1-based), once.
    pub fail_write: Option<u64>,
    /// Fail the sync call with this number (1-based), once.
    pub fail_sync: Option<u64>,
}

impl Faults {
    /// Fail the next `write` call.
    pub fn fail_next_write(&mut self) {
        self.fail_write = Some(self.writes + 1);
    }

    /// Fail the next `sync` call.
    pub fn fail_next_sync(&mut self) {
        self.fail_sync = Some(self.syncs + 1);
    }
}

pub type SharedFaults = Arc<Mutex<Faults>>;

/// The wrapped storage and its faults. A failed write stages nothing; a
/// failed sync makes nothing durable: the wrapped storage's own `sync` is
/// skipped, so what was staged stays unsynced (a
/// [`super::memory::MemStorage`] loses it on `crash`). Unlike RocksDB, the
/// wrapper itself accepts writes after a failure: the layers above must
/// not rely on the storage to refuse them.
pub struct FaultyStorage<S> {
    inner: S,
    faults: SharedFaults,
}

impl<S: Storage> FaultyStorage<S> {
    pub fn new(inner: S) -> (FaultyStorage<S>, SharedFaults) {
        let faults = SharedFaults::default();
        (
            FaultyStorage {
                inner,
                faults: faults.clone(),
            },
            faults,
        )
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn injected(what: &str, n: u64) -> StoreError {
    StoreError::io(
        StoreErrorKind::Io,
        format!("injected failure of {what} call {n}"),
    )
}

impl<S: Storage> Storage for FaultyStorage<S> {
    fn timelines(&self) -> Result<Vec<TimelineState>, StoreError> {
        self.inner.timelines()
    }

    fn write(&mut self, ttid: Ttid, writes: &[Write]) -> Result<(), StoreError> {
        {
            let mut f = self.lock();
            f.writes += 1;
            if f.fail_write == Some(f.writes) {
                return Err(injected("write", f.writes));
            }
        }
        self.inner.write(ttid, writes)
    }

    fn write_slot(&mut self, ttid: Ttid, write: &SlotWrite) -> Result<(), StoreError> {
        {
            let mut f = self.lock();
            f.writes += 1;
            if f.fail_write == Some(f.writes) {
                return Err(injected("write", f.writes));
            }
        }
        self.inner.write_slot(ttid, write)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        {
            let mut f = self.lock();
            f.syncs += 1;
            if f.fail_sync == Some(f.syncs) {
                return Err(injected("sync", f.syncs));
            }
        }
        self.inner.sync()
    }

    fn read_wal(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<Vec<u8>, StoreError> {
        self.inner.read_wal(ttid, from, to)
    }

    fn slots(&self) -> Result<Vec<(Ttid, SlotRecord)>, StoreError> {
        self.inner.slots()
    }
}
