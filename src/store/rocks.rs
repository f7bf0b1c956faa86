//! The RocksDB store: every timeline of one safekeeper in one RocksDB
//! instance. The layout (column families, keys, values, versions) is written
//! down in `schema/store.md`; keep the two in step.
//!
//! Staging and visibility. `write` stages a call's changes into one pending
//! `WriteBatch`; `sync` makes it durable, so many appends across timelines
//! share one fsync. The trait promises that staged writes are visible to
//! later calls, and RocksDB cannot read through a plain `WriteBatch`, so
//! before anything that must read (a read, a truncation or trim that may
//! rewrite a straddling chunk) the pending batch is written *unsynced*. That
//! costs no fsync: the next sync fsyncs RocksDB's log and with it every
//! earlier unsynced record. Within one `write` call, the changes the call
//! itself made are looked up in a small overlay instead, so a call always
//! reaches RocksDB as one batch. RocksDB recovers its log with
//! `TolerateCorruptedTailRecords`: a torn last record is dropped, and damage
//! before the last record is refused at open (`CorruptStore`). So after a
//! crash each `write` call is there whole or not at all, and the calls
//! present are a prefix of those staged.
//! A crash may therefore keep staged writes beyond the last `sync` (the trait
//! allows losing them, never tearing them).
//!
//! Locking. Every method takes `&self`, so one store is shared by the
//! group-commit writer, WAL senders and the daemon's own records without a
//! lock around it. The one lock, over the pending batch and the failure
//! record, is held for in-memory work and unsynced RocksDB writes only, never
//! across an fsync or a read of stored WAL: `sync` writes the batch unsynced
//! under it (readable at once) and then syncs RocksDB's log (`SyncWAL`)
//! without it, and RocksDB lets unsynced writes and reads proceed while its
//! log is being synced. So a WAL read never waits for a sync in progress.
//! A sync acknowledges nothing if any write or sync failed before it ended
//! (see `Pending::failed`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::Bytes;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBRawIterator, DBRecoveryMode, ErrorKind, Options,
    ReadOptions, WriteBatch, WriteOptions, DB,
};

pub use super::layout::{chunk_crc, chunk_value, wal_key, STORE_FORMAT_VERSION};
use super::layout::{decode_store_meta, parse_chunk, StoreMeta};
use super::{SlotWrite, Storage, StorageFailure, StoreError, StoreErrorKind};
use crate::codec::{decode_stored, encode_stored, CodecError};
use crate::consensus::acceptor::{decode_timeline_state, TimelineState, Write};
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;

pub const CF_TIMELINE: &str = "timeline";
pub const CF_WAL: &str = "wal";
pub const CF_SLOT: &str = "slot";
const CF_DEFAULT: &str = "default";
const OUR_CFS: [&str; 3] = [CF_TIMELINE, CF_WAL, CF_SLOT];

/// Key of the store's meta record in the default column family.
pub const META_KEY: &[u8] = b"meta";

/// Key of a consumer slot: tenant ‖ timeline ‖ name (UTF-8).
pub fn slot_key(ttid: Ttid, name: &str) -> Vec<u8> {
    let mut k = ttid.key_prefix().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of a timeline history file: "history" ‖ tenant ‖ timeline ‖ TLI.
fn history_key(ttid: Ttid, tli: u32) -> Vec<u8> {
    let mut k = b"history".to_vec();
    k.extend_from_slice(&ttid.key_prefix());
    k.extend_from_slice(&tli.to_be_bytes());
    k
}

/// A key above every WAL key of `ttid` and below every key of the next
/// timeline: the exclusive end for "all WAL from here on".
fn wal_key_end(ttid: Ttid) -> [u8; 41] {
    let mut k = [0xffu8; 41];
    k[..32].copy_from_slice(&ttid.key_prefix());
    k[40] = 0;
    k
}

/// One stored chunk as `read_chunks` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub start: Lsn,
    pub len: u64,
    pub crc_ok: bool,
}

impl ChunkInfo {
    pub fn end(&self) -> Lsn {
        Lsn(self.start.0.saturating_add(self.len))
    }
}

fn io(e: rocksdb::Error) -> StoreError {
    StoreError::Io(failure(e))
}

/// A RocksDB error with its kind: its Corruption status is damage, and an
/// IOError of ENOSPC or EDQUOT a full disk. rust-rocksdb gives the status'
/// code but not its subcode (kNoSpace), so that one is told by the OS's
/// words, which RocksDB's status carries, here at the boundary only.
pub(crate) fn failure(e: rocksdb::Error) -> StorageFailure {
    let kind = match e.kind() {
        rocksdb::ErrorKind::Corruption => StoreErrorKind::Corruption,
        rocksdb::ErrorKind::IOError if no_space(e.as_ref()) => StoreErrorKind::DiskFull,
        _ => StoreErrorKind::Io,
    };
    StorageFailure::caused_by(kind, "", e)
}

/// ENOSPC or EDQUOT as the OS words them in a RocksDB status.
fn no_space(status: &str) -> bool {
    status.contains("No space left on device") || status.contains("Disk quota exceeded")
}

/// Why RocksDB would not open a store; a log it cannot replay to its end
/// gets the words an operator needs.
fn refused_open(path: &Path, e: rocksdb::Error) -> StoreError {
    if e.kind() == ErrorKind::Corruption {
        return StoreError::CorruptStore(format!(
            "{}: RocksDB cannot replay its log completely ({}); starting would drop acknowledged writes, \
             votes included, so this node must not start from it. Replace the store: stop this node, \
             move the directory aside, and bring the node back as a replaced disk (README, \
             \"When a safekeeper's disk is replaced\")",
            path.display(),
            e.into_string()
        ));
    }
    open_err(path, format!("cannot open RocksDB: {}", e.into_string()))
}

fn open_err(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Open {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

/// How the daemon tunes its store; the default is what every other opener
/// (skctl, tests, checkpoints) uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreTuning {
    /// Bytes per second for RocksDB's memtable flushes and compactions
    /// (never the synced WAL writes). On a disk shared with other fsyncing
    /// processes, an unlimited 64 MiB flush stalls everyone's fsync for its
    /// duration; limited, it is spread out. None: unlimited.
    pub background_write_limit: Option<u64>,
}

fn tuned_options(tuning: &StoreTuning) -> Options {
    let mut o = db_options();
    if let Some(limit) = tuning.background_write_limit {
        // RocksDB's defaults: refill every 100 ms, fairness 10.
        o.set_ratelimiter(limit.min(i64::MAX as u64) as i64, 100_000, 10);
        // Without it the kernel writes a flushed file back in one burst at
        // its end, which the limiter cannot spread.
        o.set_bytes_per_sync(1 << 20);
    }
    o
}

fn db_options() -> Options {
    let mut o = Options::default();
    // WAL arrives in chunks of up to 1 MiB; a 64 MiB memtable holds a few
    // hundred of them before a flush, and four let ingest continue while one
    // flushes.
    o.set_write_buffer_size(64 << 20);
    o.set_max_write_buffer_number(4);
    // The timeline column family is written rarely; without a bound its
    // memtable would pin every RocksDB log file since its last flush.
    o.set_max_total_wal_size(256 << 20);
    // A torn last record of the log is an unsynced (so unacknowledged)
    // write: RocksDB drops it. Anything else it cannot replay is refused at
    // open: point-in-time recovery would stop at a damaged record in the
    // middle and silently drop every later, acknowledged one (votes
    // included). RocksDB turns log recycling off in this mode: a recycled
    // file's stale tail looks like such damage.
    o.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    o
}

fn cf_descriptors<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<ColumnFamilyDescriptor> {
    names
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, db_options()))
        .collect()
}

/// Changes one `write` call made, for lookups within the same call (its
/// changes are not in RocksDB yet).
#[derive(Default)]
struct CallView {
    /// Chunks this call put, by start LSN.
    puts: BTreeMap<Lsn, Bytes>,
    /// Stored chunks at and above this were truncated by this call.
    masked_from: Option<Lsn>,
    /// Stored chunks below this were trimmed by this call.
    masked_below: Option<Lsn>,
}

enum Op {
    Put(&'static str, Vec<u8>, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
}

struct Pending {
    batch: WriteBatch,
    /// Writes made to RocksDB unsynced so far (staged batches made
    /// readable, batches of `sync` and of the store's own records), counted.
    written: u64,
    /// `written` as of the start of the last sync that succeeded: what is
    /// durable for sure.
    synced: u64,
    /// Key ranges trimmed since the last sync, compacted once it is durable.
    trimmed: Vec<(Vec<u8>, Vec<u8>)>,
    /// The first write or sync that failed. RocksDB may have dropped what
    /// it was given (a failed write loses its batch; after a background
    /// error RocksDB refuses writes while syncing its log still succeeds),
    /// so from then on every write, sync and read fails: nothing staged at
    /// or after the failure can be acknowledged. Only a reopen clears it.
    failed: Option<StorageFailure>,
}

impl Pending {
    fn check(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(first) => Err(StoreError::Failed(first.clone())),
            None => Ok(()),
        }
    }

    /// Record a failed write or sync (the first one is kept) and return it.
    fn fail(&mut self, e: rocksdb::Error) -> StoreError {
        let failure = failure(e);
        tracing::error!(error = %failure, "a RocksDB write or sync failed; the store accepts nothing more until it is reopened");
        self.failed.get_or_insert_with(|| failure.clone());
        // Whatever was staged with it is gone or unknown.
        self.batch = WriteBatch::default();
        StoreError::Io(failure)
    }

    /// Write `batch` to RocksDB unsynced: readable at once, durable with
    /// the next sync of the log. No fsync, so fine under the lock.
    fn write_unsynced(&mut self, db: &DB, batch: WriteBatch) -> Result<(), StoreError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        db.write_opt(batch, &wo).map_err(|e| self.fail(e))?;
        self.written += 1;
        Ok(())
    }

    /// Make the staged batch readable (see the module comment).
    fn flush(&mut self, db: &DB) -> Result<(), StoreError> {
        self.check()?;
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.write_unsynced(db, batch)
    }
}

/// Compacts trimmed key ranges on its own thread, so range tombstones turn
/// into free space without delaying the sync that trimmed them.
struct Compactor {
    tx: Option<mpsc::Sender<(Vec<u8>, Vec<u8>)>>,
    thread: Option<JoinHandle<()>>,
}

impl Compactor {
    fn start(db: Arc<DB>) -> Self {
        let (tx, rx) = mpsc::channel::<(Vec<u8>, Vec<u8>)>();
        let thread = std::thread::Builder::new()
            .name("store-compact".into())
            .spawn(move || {
                while let Ok((from, to)) = rx.recv() {
                    if let Some(cf) = db.cf_handle(CF_WAL) {
                        db.compact_range_cf(cf, Some(&from), Some(&to));
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::warn!("cannot start the compaction thread; trimmed WAL is compacted by RocksDB's own schedule");
        }
        Compactor {
            tx: thread.as_ref().map(|_| tx),
            thread,
        }
    }

    fn request(&self, from: Vec<u8>, to: Vec<u8>) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((from, to));
        }
    }

    fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RocksDB-backed [`Storage`]; see the module comment for staging semantics.
/// Dropping it without a `sync` discards the pending batch, like a crash
/// would (writes already made readable may survive, as whole calls).
pub struct RocksStore {
    db: Arc<DB>,
    path: PathBuf,
    node_id: NodeId,
    /// The staged batch and the failure record; see the module comment.
    pending: Mutex<Pending>,
    /// Held by `write` for a whole call: a call's view of the stored chunks
    /// (a truncation's straddling chunk) must not change under it. Only the
    /// one writer takes it; readers and syncs never do.
    staging: Mutex<()>,
    compactor: Compactor,
    /// Tests hold a sync here, with its batch readable and its fsync not
    /// begun.
    #[cfg(test)]
    sync_hold: hold::SyncHold,
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        // The compaction thread holds the DB; it must let go before a
        // reopen in this process can take RocksDB's lock.
        self.compactor.stop();
    }
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.path)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl RocksStore {
    /// Create a new store for node `node_id` at `path`, which must not exist
    /// or be an empty directory.
    pub fn init(path: impl AsRef<Path>, node_id: NodeId) -> Result<Self, StoreError> {
        Self::init_tuned(path, node_id, &StoreTuning::default())
    }

    /// [`RocksStore::init`] with the daemon's tuning.
    pub fn init_tuned(
        path: impl AsRef<Path>,
        node_id: NodeId,
        tuning: &StoreTuning,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if path.exists() {
            let mut entries = std::fs::read_dir(path)
                .map_err(|e| open_err(path, format!("cannot list the directory: {e}")))?;
            if path.join("CURRENT").exists() {
                return Err(open_err(
                    path,
                    "already holds a store; refusing to init over it",
                ));
            }
            if entries.next().is_some() {
                return Err(open_err(
                    path,
                    "directory is not empty; init needs an empty or new directory",
                ));
            }
        }
        std::fs::create_dir_all(path)
            .map_err(|e| open_err(path, format!("cannot create the directory: {e}")))?;
        let mut opts = tuned_options(tuning);
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_error_if_exists(true);
        let db = DB::open_cf_descriptors(&opts, path, cf_descriptors(OUR_CFS))
            .map_err(|e| open_err(path, format!("cannot create RocksDB: {}", e.into_string())))?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        db.put_opt(META_KEY, encode_stored(&StoreMeta { node_id })?, &sync)
            .map_err(|e| {
                open_err(
                    path,
                    format!("cannot record the store meta: {}", e.into_string()),
                )
            })?;
        Ok(Self::from_db(db, path, node_id))
    }

    /// Open an existing store. A missing store, one whose init did not finish
    /// and one of an unknown format version are refused.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_tuned(path, &StoreTuning::default())
    }

    /// [`RocksStore::open`] with the daemon's tuning.
    pub fn open_tuned(path: impl AsRef<Path>, tuning: &StoreTuning) -> Result<Self, StoreError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(open_err(
                path,
                "no such directory; create a store with init first",
            ));
        }
        if !path.join("CURRENT").exists() {
            return Err(open_err(path, "holds no store; create one with init first"));
        }
        let opts = tuned_options(tuning);
        let cfs = DB::list_cf(&opts, path)
            .map_err(|e| open_err(path, format!("cannot read the store: {}", e.into_string())))?;
        // Open with whatever column families exist so the version check below
        // runs even on a store of another layout.
        let db =
            DB::open_cf_descriptors(&opts, path, cf_descriptors(cfs.iter().map(|s| s.as_str())))
                .map_err(|e| refused_open(path, e))?;
        let node_id = check_layout(&db, path, &cfs)?;
        upgrade_meta(&db, path, node_id)?;
        Ok(Self::from_db(db, path, node_id))
    }

    /// Open a store for reading only, beside a daemon that may be writing
    /// it, as a RocksDB *secondary* instance: it takes no lock and writes
    /// nothing under `path`; RocksDB keeps its own info log and state in
    /// `secondary_path` (a private, writable directory). The view is the
    /// primary's as of the open or the last [`RocksStore::try_catch_up`].
    /// Nothing can be written: syncing a staged write fails.
    pub fn open_read_only_secondary(
        path: impl AsRef<Path>,
        secondary_path: impl AsRef<Path>,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let secondary_path = secondary_path.as_ref();
        if !path.join("CURRENT").exists() {
            return Err(open_err(
                path,
                "holds no store (no RocksDB CURRENT file); is this a store or checkpoint directory?",
            ));
        }
        let mut opts = db_options();
        // A secondary must hold every SST open: compaction in the primary
        // deletes files, and an open descriptor keeps them readable until
        // the next catch-up.
        opts.set_max_open_files(-1);
        let cfs = DB::list_cf(&opts, path)
            .map_err(|e| open_err(path, format!("cannot read the store: {}", e.into_string())))?;
        let db = DB::open_cf_descriptors_as_secondary(
            &opts,
            path,
            secondary_path,
            cf_descriptors(cfs.iter().map(|s| s.as_str())),
        )
        .map_err(|e| {
            open_err(
                path,
                format!("cannot open RocksDB as a secondary: {}", e.into_string()),
            )
        })?;
        let node_id = check_layout(&db, path, &cfs)?;
        // A secondary never trims, so it needs no compactor.
        let compactor = Compactor {
            tx: None,
            thread: None,
        };
        Ok(Self::assemble(Arc::new(db), path, node_id, compactor))
    }

    /// Bring a secondary instance up to what the primary has written since
    /// the open or the last catch-up.
    ///
    /// Caution: RocksDB 11.8 can keep serving a value replayed into the
    /// secondary's memtable after the primary flushed and overwrote it
    /// (facebook/rocksdb#14444, #15051). For a view that must be current and
    /// consistent, open a new secondary instance instead (`skctl` does).
    pub fn try_catch_up(&self) -> Result<(), StoreError> {
        self.db.try_catch_up_with_primary().map_err(io)
    }

    /// Every timeline with a state record, whether or not the record
    /// decodes (so `skctl verify` can name a damaged one and go on).
    pub fn timeline_ids(&self) -> Result<Vec<Ttid>, StoreError> {
        let mut out = Vec::new();
        self.scan(CF_TIMELINE, |key, _| {
            out.push(ttid_of_key(key, CF_TIMELINE)?);
            Ok(None)
        })?;
        Ok(out)
    }

    /// Every timeline that has WAL chunks stored, with or without a state
    /// record (a timeline without one is orphaned WAL).
    pub fn wal_timeline_ids(&self) -> Result<Vec<Ttid>, StoreError> {
        let mut out = Vec::new();
        self.scan(CF_WAL, |key, _| {
            let ttid = ttid_of_key(key.get(..32).unwrap_or(key), CF_WAL)?;
            out.push(ttid);
            // On to the next timeline's chunks.
            Ok(Some(wal_key_end(ttid).to_vec()))
        })?;
        Ok(out)
    }

    /// Visit every entry of a column family in key order (staged writes
    /// included); `visit` may return a key to seek to instead of the next
    /// entry. A damaged column family is `CorruptStore`.
    fn scan(
        &self,
        name: &'static str,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<Option<Vec<u8>>, StoreError>,
    ) -> Result<(), StoreError> {
        self.flush_pending()?;
        let mut it = self.db.raw_iterator_cf(self.cf(name)?);
        it.seek_to_first();
        while it.valid() {
            let (Some(key), Some(value)) = (it.key(), it.value()) else {
                break;
            };
            match visit(key, value)? {
                Some(to) => it.seek(to),
                None => it.next(),
            }
        }
        it.status().map_err(|e| {
            StoreError::CorruptStore(format!("{name} column family: {}", e.into_string()))
        })
    }

    /// The stored state of one timeline, if it exists.
    pub fn timeline_state(&self, ttid: Ttid) -> Result<Option<TimelineState>, StoreError> {
        self.flush_pending()?;
        self.state_of(ttid)
    }

    fn from_db(db: DB, path: &Path, node_id: NodeId) -> Self {
        let db = Arc::new(db);
        let compactor = Compactor::start(db.clone());
        Self::assemble(db, path, node_id, compactor)
    }

    fn assemble(db: Arc<DB>, path: &Path, node_id: NodeId, compactor: Compactor) -> Self {
        RocksStore {
            compactor,
            db,
            path: path.to_path_buf(),
            node_id,
            pending: Mutex::new(Pending {
                batch: WriteBatch::default(),
                written: 0,
                synced: 0,
                trimmed: Vec::new(),
                failed: None,
            }),
            staging: Mutex::new(()),
            #[cfg(test)]
            sync_hold: hold::SyncHold::default(),
        }
    }

    /// The RocksDB instance, for checkpoints (`store::checkpoint`), which
    /// run beside the writer without holding the store's lock.
    pub(crate) fn db(&self) -> Arc<DB> {
        self.db.clone()
    }

    /// Where tests hold this store's syncs.
    #[cfg(test)]
    pub(crate) fn sync_hold(&self) -> &hold::SyncHold {
        &self.sync_hold
    }

    /// The node id recorded at init.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Store a PostgreSQL timeline history file (`%08X.history`) of a
    /// timeline, synced. Kept in the default column family under
    /// `history ‖ tenant ‖ timeline ‖ tli (u32 BE)` (schema/store.md).
    pub fn put_timeline_history(
        &self,
        ttid: Ttid,
        tli: u32,
        content: &[u8],
    ) -> Result<(), StoreError> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(history_key(ttid, tli), content);
        self.write_synced_beside(batch)
    }

    /// Write a batch of the store's own records (not a timeline's staged
    /// writes) durably, at once. Blocking for one fsync, during which
    /// nothing else waits (see the module comment). A failure counts as any
    /// other: the store accepts nothing more until it is reopened.
    pub(crate) fn write_synced_beside(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let upto = {
            let mut p = self.lock_pending();
            p.check()?;
            p.write_unsynced(&self.db, batch)?;
            p.written
        };
        self.sync_log(upto)
    }

    /// Make every write up to the `upto`th durable by syncing RocksDB's log,
    /// without the pending lock. Fails if any write or sync failed before
    /// it ends, ours or another's: what it covered is not acknowledged.
    fn sync_log(&self, upto: u64) -> Result<(), StoreError> {
        #[cfg(test)]
        self.sync_hold.pass();
        let synced = self.db.flush_wal(true);
        let mut p = self.lock_pending();
        if let Err(e) = synced {
            return Err(p.fail(e));
        }
        p.check()?;
        p.synced = p.synced.max(upto);
        Ok(())
    }

    /// A stored timeline history file, if any.
    pub fn timeline_history(&self, ttid: Ttid, tli: u32) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(history_key(ttid, tli)).map_err(io)
    }

    /// Write every memtable out to SST files (checkpoints, tests). Staged
    /// writes are included, unsynced.
    pub fn flush_memtables(&self) -> Result<(), StoreError> {
        self.flush_pending()?;
        for name in OUR_CFS {
            self.db
                .flush_cf(self.cf(name)?)
                .map_err(|e| self.lock_pending().fail(e))?;
        }
        Ok(())
    }

    /// The chunks of `ttid` that overlap `[from, to)`, in LSN order, with
    /// whether each one's CRC matches. For inspection (`skctl verify`); it
    /// does not consult the timeline state, so it also shows chunks outside
    /// `[local_start_lsn, flush_lsn)`.
    pub fn read_chunks(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<ChunkIter<'_>, StoreError> {
        self.flush_pending()?;
        self.chunk_iter(ttid, from, to)
    }

    fn chunk_iter(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<ChunkIter<'_>, StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(wal_key(ttid, Lsn(0)).to_vec());
        ro.set_iterate_upper_bound(wal_key(ttid, to).to_vec());
        let it = self.db.raw_iterator_cf_opt(self.cf(CF_WAL)?, ro);
        Ok(ChunkIter {
            it,
            ttid,
            from,
            to,
            pos: from,
            started: false,
            done: from >= to,
        })
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StoreError> {
        self.db.cf_handle(name).ok_or_else(|| {
            StoreError::io(
                StoreErrorKind::Io,
                format!("column family {name:?} is not open"),
            )
        })
    }

    fn lock_pending(&self) -> MutexGuard<'_, Pending> {
        // A panic elsewhere while holding the lock leaves a batch that is
        // still a valid sequence of whole calls; keep using it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make staged writes readable (unsynced; see the module comment).
    /// After a failed write or sync this fails too (see `Pending::failed`).
    fn flush_pending(&self) -> Result<(), StoreError> {
        self.lock_pending().flush(&self.db)
    }

    fn state_of(&self, ttid: Ttid) -> Result<Option<TimelineState>, StoreError> {
        let raw = self
            .db
            .get_cf(self.cf(CF_TIMELINE)?, ttid.key_prefix())
            .map_err(|e| match e.kind() {
                ErrorKind::Corruption => StoreError::CorruptState {
                    ttid,
                    detail: e.into_string(),
                },
                _ => io(e),
            })?;
        raw.map(|raw| decode_state(ttid, &raw)).transpose()
    }

    /// The last chunk of `ttid` starting below `x`, as this call sees it
    /// (stored chunks under the call's own changes), its CRC checked.
    fn chunk_before(
        &self,
        ttid: Ttid,
        x: Lsn,
        view: &CallView,
    ) -> Result<Option<(Lsn, Bytes)>, StoreError> {
        let from_view = view
            .puts
            .range(..x)
            .next_back()
            .map(|(l, b)| (*l, b.clone()));
        let upper = view.masked_from.map_or(x, |m| m.min(x));
        let lower = view.masked_below.unwrap_or(Lsn(0));
        let stored = if lower < upper {
            self.last_stored_chunk(ttid, lower, upper)?
        } else {
            None
        };
        Ok(match (from_view, stored) {
            (Some(v), Some(s)) => Some(if s.0 > v.0 { s } else { v }),
            (v, s) => v.or(s),
        })
    }

    fn last_stored_chunk(
        &self,
        ttid: Ttid,
        lower: Lsn,
        upper: Lsn,
    ) -> Result<Option<(Lsn, Bytes)>, StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(wal_key(ttid, lower).to_vec());
        ro.set_iterate_upper_bound(wal_key(ttid, upper).to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_WAL)?, ro);
        it.seek_to_last();
        if !it.valid() {
            return match it.status() {
                Ok(()) => Ok(None),
                Err(e) => Err(wal_read_error(ttid, lower, upper, e)),
            };
        }
        let (Some(key), Some(value)) = (it.key(), it.value()) else {
            return Ok(None);
        };
        let (start, payload, crc_ok) = parse_chunk(ttid, key, value, lower, upper)?;
        let end = Lsn(start.0.saturating_add(payload.len() as u64));
        if !crc_ok {
            return Err(StoreError::CorruptWal {
                ttid,
                from: start,
                to: end,
                detail: "chunk checksum mismatch".into(),
            });
        }
        Ok(Some((start, Bytes::copy_from_slice(payload))))
    }
}

/// One change `stage_ops` stages.
enum Staged<'a> {
    Acceptor(&'a Write),
    Slot(&'a SlotWrite),
}

impl RocksStore {
    /// [`Storage::write`] through a shared reference: calls are taken one
    /// at a time, and a sync or read beside them waits for no more than the
    /// moment it takes to add a call's changes to the batch.
    pub fn stage(&self, ttid: Ttid, writes: &[Write]) -> Result<(), StoreError> {
        self.stage_ops(ttid, writes.iter().map(Staged::Acceptor))
    }

    /// [`Storage::write_slot`] through a shared reference, as [`RocksStore::stage`].
    pub fn stage_slot(&self, ttid: Ttid, write: &SlotWrite) -> Result<(), StoreError> {
        self.stage_ops(ttid, std::iter::once(Staged::Slot(write)))
    }

    fn stage_ops<'a>(
        &self,
        ttid: Ttid,
        writes: impl Iterator<Item = Staged<'a>>,
    ) -> Result<(), StoreError> {
        let _one_call = self.staging.lock().unwrap_or_else(|e| e.into_inner());
        self.lock_pending().check()?;
        let mut ops = Vec::with_capacity(writes.size_hint().0);
        let mut view = CallView::default();
        let mut trimmed = Vec::new();
        let mut flushed = false;
        for w in writes {
            let w = match w {
                Staged::Acceptor(w) => w,
                Staged::Slot(SlotWrite::Put(r)) => {
                    ops.push(Op::Put(
                        CF_SLOT,
                        slot_key(ttid, &r.name),
                        encode_stored(&**r)?,
                    ));
                    continue;
                }
                Staged::Slot(SlotWrite::Delete { name }) => {
                    ops.push(Op::Delete(CF_SLOT, slot_key(ttid, name)));
                    continue;
                }
            };
            match w {
                Write::AppendWal { begin, bytes } => {
                    // An empty chunk would hold no WAL but could replace a
                    // chunk starting at the same LSN.
                    if bytes.is_empty() {
                        continue;
                    }
                    if begin.checked_add(bytes.len() as u64).is_none() {
                        return Err(StoreError::Invalid(format!(
                            "append at {begin} overflows the LSN space"
                        )));
                    }
                    ops.push(Op::Put(
                        CF_WAL,
                        wal_key(ttid, *begin).to_vec(),
                        chunk_value(ttid, *begin, bytes),
                    ));
                    view.puts.insert(*begin, bytes.clone());
                }
                Write::TruncateWal { from } => {
                    if !flushed {
                        self.flush_pending()?;
                        flushed = true;
                    }
                    if let Some((start, bytes)) = self.chunk_before(ttid, *from, &view)? {
                        let keep = from.0 - start.0;
                        if keep < bytes.len() as u64 {
                            let kept = bytes.slice(..keep as usize);
                            ops.push(Op::Put(
                                CF_WAL,
                                wal_key(ttid, start).to_vec(),
                                chunk_value(ttid, start, &kept),
                            ));
                            view.puts.insert(start, kept);
                        }
                    }
                    ops.push(Op::DeleteRange(
                        CF_WAL,
                        wal_key(ttid, *from).to_vec(),
                        wal_key_end(ttid).to_vec(),
                    ));
                    view.puts.split_off(from);
                    view.masked_from = Some(view.masked_from.map_or(*from, |m| m.min(*from)));
                }
                Write::TrimWal { below } => {
                    if !flushed {
                        self.flush_pending()?;
                        flushed = true;
                    }
                    let straddling = self.chunk_before(ttid, *below, &view)?;
                    let range = (
                        wal_key(ttid, Lsn(0)).to_vec(),
                        wal_key(ttid, *below).to_vec(),
                    );
                    ops.push(Op::DeleteRange(CF_WAL, range.0.clone(), range.1.clone()));
                    view.puts = view.puts.split_off(below);
                    if let Some((start, bytes)) = straddling {
                        let skip = below.0 - start.0;
                        if skip < bytes.len() as u64 {
                            let rest = bytes.slice(skip as usize..);
                            ops.push(Op::Put(
                                CF_WAL,
                                wal_key(ttid, *below).to_vec(),
                                chunk_value(ttid, *below, &rest),
                            ));
                            view.puts.insert(*below, rest);
                        }
                    }
                    view.masked_below = Some(view.masked_below.map_or(*below, |m| m.max(*below)));
                    trimmed.push(range);
                }
                Write::PutState(s) => {
                    if s.ttid != ttid {
                        return Err(StoreError::Invalid(format!(
                            "state of timeline {} written as timeline {ttid}",
                            s.ttid
                        )));
                    }
                    ops.push(Op::Put(
                        CF_TIMELINE,
                        ttid.key_prefix().to_vec(),
                        encode_stored(&**s)?,
                    ));
                }
            }
        }
        let timeline_cf = self.cf(CF_TIMELINE)?;
        let wal_cf = self.cf(CF_WAL)?;
        let slot_cf = self.cf(CF_SLOT)?;
        let cf = |name| match name {
            CF_WAL => wal_cf,
            CF_SLOT => slot_cf,
            _ => timeline_cf,
        };
        let mut p = self.lock_pending();
        // A failure since the check above (a reader's flush) ends this too.
        p.check()?;
        for op in ops {
            match op {
                Op::Put(name, k, v) => p.batch.put_cf(cf(name), k, v),
                Op::DeleteRange(name, a, b) => p.batch.delete_range_cf(cf(name), a, b),
                Op::Delete(name, k) => p.batch.delete_cf(cf(name), k),
            }
        }
        p.trimmed.extend(trimmed);
        Ok(())
    }

    /// [`Storage::sync`] through a shared reference. The staged batch is
    /// written unsynced under the pending lock (so it stays readable
    /// throughout), then RocksDB's log is synced without that lock: reads,
    /// staging and the store's own records go on meanwhile.
    pub fn sync_staged(&self) -> Result<(), StoreError> {
        let (upto, unsynced, trimmed) = {
            let mut p = self.lock_pending();
            p.flush(&self.db)?;
            (
                p.written,
                p.written != p.synced,
                std::mem::take(&mut p.trimmed),
            )
        };
        if unsynced {
            self.sync_log(upto)?;
        }
        for (from, to) in trimmed {
            self.compactor.request(from, to);
        }
        Ok(())
    }
}

/// The timeline a 32-byte key prefix names.
fn ttid_of_key(prefix: &[u8], cf: &str) -> Result<Ttid, StoreError> {
    let Ok(prefix) = <[u8; 32]>::try_from(prefix) else {
        return Err(StoreError::CorruptStore(format!(
            "{cf} column family: malformed key of {} bytes",
            prefix.len()
        )));
    };
    let mut tenant = [0u8; 16];
    let mut timeline = [0u8; 16];
    tenant.copy_from_slice(&prefix[..16]);
    timeline.copy_from_slice(&prefix[16..]);
    Ok(Ttid::new(
        crate::id::TenantId(tenant),
        crate::id::TimelineId(timeline),
    ))
}

/// Check a freshly opened store's meta record and column families; the
/// node id it records.
fn check_layout(db: &DB, path: &Path, cfs: &[String]) -> Result<NodeId, StoreError> {
    let meta = db
        .get(META_KEY)
        .map_err(|e| {
            open_err(
                path,
                format!("cannot read the store meta: {}", e.into_string()),
            )
        })?
        .ok_or_else(|| {
            open_err(
                path,
                "no store meta record: init did not finish; remove the directory and init again",
            )
        })?;
    let (meta, _version) = decode_store_meta(&meta).map_err(|e| match e {
        CodecError::UnknownVersion { found, known, .. } => open_err(
            path,
            format!("store format version {found}; this build knows version {known} only"),
        ),
        other => open_err(path, format!("damaged store meta record: {other}")),
    })?;
    for want in OUR_CFS {
        if !cfs.iter().any(|c| c == want) {
            return Err(open_err(path, format!("column family {want:?} is missing")));
        }
    }
    if let Some(extra) = cfs
        .iter()
        .find(|c| c.as_str() != CF_DEFAULT && !OUR_CFS.contains(&c.as_str()))
    {
        return Err(open_err(
            path,
            format!("unknown column family {extra:?} in a version {STORE_FORMAT_VERSION} store"),
        ));
    }
    Ok(meta.node_id)
}

/// A version 1 to 3 store opened for writing becomes version 4: this build
/// writes timeline records of version 4, which older builds cannot read, so
/// such a build must refuse the store at open rather than meet them later.
fn upgrade_meta(db: &DB, path: &Path, node_id: NodeId) -> Result<(), StoreError> {
    let raw = db.get(META_KEY).map_err(|e| {
        open_err(
            path,
            format!("cannot read the store meta: {}", e.into_string()),
        )
    })?;
    let Some(old) = raw
        .as_deref()
        .and_then(|r| r.first_chunk::<2>())
        .map(|v| u16::from_be_bytes(*v))
        .filter(|v| *v < STORE_FORMAT_VERSION)
    else {
        return Ok(());
    };
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.put_opt(META_KEY, encode_stored(&StoreMeta { node_id })?, &sync)
        .map_err(|e| {
            open_err(
                path,
                format!(
                    "cannot upgrade the store meta to version {STORE_FORMAT_VERSION}: {}",
                    e.into_string()
                ),
            )
        })?;
    tracing::info!(path = %path.display(), "upgraded the store from format version {old} to {STORE_FORMAT_VERSION}");
    Ok(())
}

fn decode_state(ttid: Ttid, raw: &[u8]) -> Result<TimelineState, StoreError> {
    let s: TimelineState = decode_timeline_state(raw).map_err(|e| StoreError::CorruptState {
        ttid,
        detail: e.to_string(),
    })?;
    if s.ttid != ttid {
        return Err(StoreError::CorruptState {
            ttid,
            detail: format!("record names timeline {}", s.ttid),
        });
    }
    Ok(s)
}

fn wal_read_error(ttid: Ttid, from: Lsn, to: Lsn, e: rocksdb::Error) -> StoreError {
    match e.kind() {
        ErrorKind::Corruption => StoreError::CorruptWal {
            ttid,
            from,
            to,
            detail: e.into_string(),
        },
        _ => io(e),
    }
}

/// Chunks of one timeline overlapping a range; see [`RocksStore::read_chunks`].
pub struct ChunkIter<'a> {
    it: DBRawIterator<'a>,
    ttid: Ttid,
    from: Lsn,
    to: Lsn,
    /// End of the last chunk returned (for naming the range of an error).
    pos: Lsn,
    started: bool,
    done: bool,
}

/// A chunk with its payload borrowed from the iterator.
struct RawChunk<'p> {
    start: Lsn,
    payload: &'p [u8],
    crc_ok: bool,
}

impl ChunkIter<'_> {
    fn advance(&mut self) -> Result<Option<RawChunk<'_>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        if self.started {
            self.it.next();
        } else {
            self.started = true;
            self.it.seek_for_prev(wal_key(self.ttid, self.from));
            if !self.it.valid() && self.it.status().is_ok() {
                self.it.seek_to_first();
            }
        }
        loop {
            if !self.it.valid() {
                self.done = true;
                return match self.it.status() {
                    Ok(()) => Ok(None),
                    Err(e) => Err(wal_read_error(self.ttid, self.pos, self.to, e)),
                };
            }
            let (Some(key), Some(value)) = (self.it.key(), self.it.value()) else {
                self.done = true;
                return Ok(None);
            };
            let (start, len, ok) = match parse_chunk(self.ttid, key, value, self.pos, self.to) {
                Ok((start, payload, ok)) => (start, payload.len(), ok),
                Err(e) => {
                    self.done = true;
                    return Err(e);
                }
            };
            let end = start.0.saturating_add(len as u64);
            if end <= self.from.0 {
                // The chunk before `from` ends before it (a gap the caller
                // sees as the next chunk starting late).
                self.it.next();
                continue;
            }
            self.pos = Lsn(end);
            // Borrowed afresh: a borrow taken in the loop and returned from it
            // would keep `self.it` borrowed across `next()` above.
            let payload = self.it.value().and_then(|v| v.get(4..)).unwrap_or_default();
            return Ok(Some(RawChunk {
                start,
                payload,
                crc_ok: ok,
            }));
        }
    }
}

impl Iterator for ChunkIter<'_> {
    type Item = Result<ChunkInfo, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.advance() {
            Ok(Some(c)) => Some(Ok(ChunkInfo {
                start: c.start,
                len: c.payload.len() as u64,
                crc_ok: c.crc_ok,
            })),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

impl Storage for RocksStore {
    fn timelines(&self) -> Result<Vec<TimelineState>, StoreError> {
        let mut out = Vec::new();
        self.scan(CF_TIMELINE, |key, value| {
            let ttid = ttid_of_key(key, CF_TIMELINE)?;
            out.push(decode_state(ttid, value)?);
            Ok(None)
        })?;
        Ok(out)
    }

    fn write(&mut self, ttid: Ttid, writes: &[Write]) -> Result<(), StoreError> {
        self.stage(ttid, writes)
    }

    fn write_slot(&mut self, ttid: Ttid, write: &SlotWrite) -> Result<(), StoreError> {
        self.stage_slot(ttid, write)
    }

    fn sync(&mut self) -> Result<(), StoreError> {
        self.sync_staged()
    }

    fn slots(&self) -> Result<Vec<(Ttid, crate::store::SlotRecord)>, StoreError> {
        let mut out = Vec::new();
        self.scan(CF_SLOT, |key, value| {
            let ttid = ttid_of_key(key.get(..32).unwrap_or(key), CF_SLOT)?;
            let name = String::from_utf8_lossy(key.get(32..).unwrap_or_default()).into_owned();
            let record: crate::store::SlotRecord =
                decode_stored(value).map_err(|e| StoreError::CorruptState {
                    ttid,
                    detail: format!("slot {name:?}: {e}"),
                })?;
            if record.name != name {
                return Err(StoreError::CorruptState {
                    ttid,
                    detail: format!(
                        "slot record {:?} stored under the key of slot {name:?}",
                        record.name
                    ),
                });
            }
            out.push((ttid, record));
            Ok(None)
        })?;
        Ok(out)
    }

    fn read_wal(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<Vec<u8>, StoreError> {
        self.flush_pending()?;
        let state = self
            .state_of(ttid)?
            .ok_or(StoreError::UnknownTimeline(ttid))?;
        let (held_from, held_to) = (state.local_start_lsn, state.flush_lsn);
        if from > to || from < held_from || to > held_to {
            return Err(StoreError::NotHeld {
                ttid,
                from,
                to,
                held_from,
                held_to,
            });
        }
        let mut out = Vec::with_capacity((to.0 - from.0) as usize);
        let mut pos = from;
        let mut chunks = self.chunk_iter(ttid, from, to)?;
        while pos < to {
            let Some(RawChunk {
                start,
                payload,
                crc_ok,
            }) = chunks.advance()?
            else {
                break;
            };
            let end = Lsn(start.0.saturating_add(payload.len() as u64));
            if !crc_ok {
                return Err(StoreError::CorruptWal {
                    ttid,
                    from: start,
                    to: end,
                    detail: "chunk checksum mismatch".into(),
                });
            }
            if start > pos {
                return Err(StoreError::CorruptWal {
                    ttid,
                    from: pos,
                    to: start,
                    detail: "gap between stored chunks".into(),
                });
            }
            if end <= pos {
                continue;
            }
            let a = (pos.0 - start.0) as usize;
            let b = (to.min(end).0 - start.0) as usize;
            out.extend_from_slice(&payload[a..b]);
            pos = Lsn(start.0 + b as u64);
        }
        if pos < to {
            return Err(StoreError::CorruptWal {
                ttid,
                from: pos,
                to,
                detail: "no stored chunk holds this WAL".into(),
            });
        }
        Ok(out)
    }
}

/// Holding a sync of the store in a test, at the point where its batch is
/// readable and its fsync has not begun.
#[cfg(test)]
pub(crate) mod hold {
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    #[derive(Default)]
    pub(crate) struct SyncHold {
        /// (armed: syncs stop here, a sync is stopped here)
        state: Mutex<(bool, bool)>,
        changed: Condvar,
    }

    /// Releases the held syncs when dropped, also when a test fails.
    pub(crate) struct Armed<'a>(&'a SyncHold);

    impl Drop for Armed<'_> {
        fn drop(&mut self) {
            self.0.state.lock().unwrap_or_else(|e| e.into_inner()).0 = false;
            self.0.changed.notify_all();
        }
    }

    impl Armed<'_> {
        /// Whether a sync is held here within `timeout`.
        pub(crate) fn wait_held(&self, timeout: Duration) -> bool {
            let s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
            let (s, _) = self
                .0
                .changed
                .wait_timeout_while(s, timeout, |s| !s.1)
                .unwrap_or_else(|e| e.into_inner());
            s.1
        }
    }

    impl SyncHold {
        /// Whether a sync is held here now.
        pub(crate) fn holding(&self) -> bool {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).1
        }

        /// Hold every sync from now until the guard is dropped.
        pub(crate) fn arm(&self) -> Armed<'_> {
            self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
            Armed(self)
        }

        pub(super) fn pass(&self) {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            while s.0 {
                s.1 = true;
                self.changed.notify_all();
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.1 = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::RocksStore;
    use crate::consensus::acceptor::Write;
    use crate::id::NodeId;
    use crate::store::{Storage, StorageFailure, StoreError, StoreErrorKind};

    #[test]
    fn a_failure_while_a_sync_is_in_progress_fails_that_sync_and_everything_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RocksStore::init(dir.path().join("store"), NodeId(1)).unwrap());
        let s = crate::store::memory::tests_state();
        let (ttid, at) = (s.ttid, s.flush_lsn);
        store.stage(ttid, &[Write::PutState(Box::new(s))]).unwrap();
        let held = store.sync_hold().arm();
        let syncing = {
            let store = store.clone();
            std::thread::spawn(move || store.sync_staged())
        };
        assert!(
            held.wait_held(Duration::from_secs(30)),
            "the sync never came"
        );
        // Another write fails while the fsync runs (a history file's, say,
        // on a full disk): the sync's fsync then succeeds, but it must not
        // acknowledge what it covered.
        store.lock_pending().failed = Some(StorageFailure::new(
            StoreErrorKind::DiskFull,
            "injected failure",
        ));
        drop(held);
        let failed = |r: Result<(), StoreError>, what: &str| {
            assert!(matches!(r, Err(StoreError::Failed(_))), "{what}: {r:?}");
        };
        failed(syncing.join().unwrap(), "the sync in progress");
        failed(store.stage(ttid, &[]), "a later write");
        failed(store.sync_staged(), "a later sync");
        failed(store.read_wal(ttid, at, at).map(drop), "a later read");
        failed(
            store.put_timeline_history(ttid, 1, b"history"),
            "a later record of the store's own",
        );
    }
}
