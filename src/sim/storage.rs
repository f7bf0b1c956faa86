//! A node's simulated disk: [`MemStorage`] with the faults a real disk
//! has. A write call may fail (after staging part of it), a sync may fail
//! (after part of what was staged reached the disk; the rest never will,
//! and a retry does not bring it back), the disk may be full for a while
//! (every write refused), and a crash keeps any prefix of the write calls
//! not yet synced, not only none of them. Faults are drawn from the disk's
//! own random stream, so they do not shift the scheduler's choices.
//!
//! What the node does about a failure is the driver's part, in `mod.rs`:
//! like the daemon, it tells the acceptor (`Acceptor::on_storage_failed`),
//! which fails the timeline closed until a restart. [`DiskBugs`] break
//! that on purpose, to show the checker catches it.

use super::rng::Rng;
use crate::consensus::acceptor::Write;
use crate::id::Ttid;
use crate::store::memory::MemStorage;
use crate::store::{Storage, StoreError, StoreErrorKind};

/// Deliberate bugs of the node's storage handling, switched on only by
/// tests that check the simulation's invariant checker catches them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskBugs {
    /// After a failed sync, sync again and carry on as if it succeeded
    /// (what the failed one dropped stays lost).
    pub retry_failed_sync: bool,
    /// Carry on after a refused or failed write as if it was staged.
    pub ignore_failed_write: bool,
    /// A crash keeps the unsynced write calls but the first: not a prefix.
    pub crash_keeps_non_prefix: bool,
}

/// How often a write call fails and a sync fails (in a thousand), a step
/// fills a node's disk (in ten thousand), and a crash keeps part of what
/// was unsynced (in a hundred).
const WRITE_FAILS: u64 = 1;
const SYNC_FAILS: u64 = 2;
const FILLS: u64 = 3;
const CRASH_KEEPS_SOME: u64 = 50;

pub struct Disk {
    pub store: MemStorage,
    /// Writes are refused until then (simulated ms).
    full_until: u64,
    rng: Rng,
}

impl Disk {
    pub fn new(seed: u64) -> Disk {
        Disk {
            store: MemStorage::new(),
            full_until: 0,
            rng: Rng::new(seed),
        }
    }

    /// A new empty disk (a replaced one), with the same random stream.
    pub fn wipe(&mut self) {
        self.store = MemStorage::new();
        self.full_until = 0;
    }

    /// The disk is full until `until`.
    pub fn fill(&mut self, until: u64) {
        self.full_until = self.full_until.max(until);
    }

    /// The operator freed space.
    pub fn free(&mut self) {
        self.full_until = 0;
    }

    pub fn is_full(&self, now: u64) -> bool {
        now < self.full_until
    }

    /// Stage one write call; with `faults`, it may fail, staging none of
    /// it: the daemon's RocksDB store collects a call's changes and adds
    /// them to its batch at once (`RocksStore::stage`), so a call is staged
    /// whole or not at all. (A model that staged a part found seed 3274 of
    /// 3 nodes: an Elected's truncation staged without its state record,
    /// made durable by a later sync; the daemon cannot do that.) Refused
    /// while the disk is full.
    pub fn write(
        &mut self,
        ttid: Ttid,
        writes: &[Write],
        now: u64,
        faults: bool,
    ) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        if self.is_full(now) {
            return Err(StoreError::io(
                StoreErrorKind::DiskFull,
                "No space left on device",
            ));
        }
        if faults && self.rng.below(1000) < WRITE_FAILS {
            return Err(StoreError::io(
                StoreErrorKind::Io,
                format!(
                    "injected failure of a write call of {} writes",
                    writes.len()
                ),
            ));
        }
        self.store.write(ttid, writes)
    }

    /// Sync; with `faults`, it may fail after only some of the staged
    /// write calls reached the disk.
    pub fn sync(&mut self, faults: bool) -> Result<(), StoreError> {
        let staged = self.store.unsynced();
        if faults && staged > 0 && self.rng.below(1000) < SYNC_FAILS {
            let kept = self.rng.below(staged as u64 + 1) as usize;
            self.store.fail_sync(kept);
            return Err(StoreError::io(
                StoreErrorKind::Io,
                format!("injected sync failure ({kept} of {staged} write calls reached the disk)"),
            ));
        }
        self.store.sync()
    }

    /// Lose power: keep a prefix of the unsynced write calls (none, half
    /// the time), or, with the bug, all of them but the first. Returns
    /// (unsynced, kept).
    pub fn crash(&mut self, bugs: DiskBugs) -> (usize, usize) {
        let staged = self.store.unsynced();
        if bugs.crash_keeps_non_prefix && staged >= 2 {
            self.store.crash_keeping_only(|i| i != 0);
            return (staged, staged - 1);
        }
        let kept = if self.rng.chance(CRASH_KEEPS_SOME) {
            self.rng.below(staged as u64 + 1) as usize
        } else {
            0
        };
        self.store.crash_keeping(kept);
        (staged, kept)
    }

    /// Whether this step fills the disk (drawn from the disk's stream).
    pub fn fills_now(&mut self) -> bool {
        self.rng.below(10_000) < FILLS
    }

    pub fn draw(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.range(lo, hi)
    }
}
