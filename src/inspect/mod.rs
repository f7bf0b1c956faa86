//! Read-only inspection of a store or a checkpoint directory: what `skctl`
//! shows (timelines, state, chunks), checks (`verify`) and exports (WAL
//! segment files). The JSON shapes here are also what the daemon's HTTP API
//! returns for a timeline.
//!
//! A store is opened as a RocksDB *secondary* instance, so inspecting a store
//! a daemon is writing takes no lock and changes nothing. Compaction in the
//! daemon may delete an SST file the secondary still lists; reading it then
//! fails with "No such file". That is not damage: the work is retried after
//! catching up with the primary again.

pub mod checkpoint;
pub mod cli;
pub mod export;
mod progress;
pub mod verify;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::consensus::acceptor::TimelineState;
use crate::id::{NodeId, Ttid};
use crate::lsn::Lsn;
use crate::store::rocks::{ChunkInfo, RocksStore};
use crate::store::{StoreError, StoreErrorKind};

pub use progress::Progress;

/// How often a read that met a vanished file is retried after catching up.
const VANISHED_FILE_RETRIES: u32 = 8;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

impl InspectError {
    /// Whether the error reports damaged data (as opposed to a bad request
    /// or an I/O problem): `skctl` exits 1 for damage, 2 for the rest.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            InspectError::Store(
                StoreError::CorruptWal { .. }
                    | StoreError::CorruptState { .. }
                    | StoreError::CorruptStore(_)
            )
        )
    }
}

/// A store opened read-only as a RocksDB secondary instance.
pub struct Inspector {
    datadir: PathBuf,
    current: RefCell<Secondary>,
}

struct Secondary {
    // Declared first so it closes before its directory is removed.
    store: RocksStore,
    /// The secondary's own directory (RocksDB's info log and state).
    _dir: tempfile::TempDir,
}

impl Secondary {
    fn open(datadir: &Path) -> Result<Secondary, InspectError> {
        let dir = tempfile::Builder::new()
            .prefix("skctl-secondary-")
            .tempdir()
            .map_err(|source| InspectError::Io {
                what: "cannot create a directory for the RocksDB secondary instance in",
                path: std::env::temp_dir(),
                source,
            })?;
        let mut attempt = 0;
        loop {
            match RocksStore::open_read_only_secondary(datadir, dir.path()) {
                Err(e) if is_vanished_file(&e) && attempt < VANISHED_FILE_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "a file vanished while opening; retrying");
                    std::thread::sleep(backoff(attempt));
                }
                r => {
                    return Ok(Secondary {
                        store: r?,
                        _dir: dir,
                    })
                }
            }
        }
    }
}

impl Inspector {
    /// Open the store or checkpoint at `datadir` for reading.
    pub fn open(datadir: &Path) -> Result<Inspector, InspectError> {
        Ok(Inspector {
            datadir: datadir.to_path_buf(),
            current: RefCell::new(Secondary::open(datadir)?),
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.current.borrow().store.node_id()
    }

    /// Move the view forward to what the primary has written since.
    ///
    /// This opens a fresh secondary instance rather than calling RocksDB's
    /// `try_catch_up_with_primary`: with RocksDB 11.8 an instance that
    /// caught up can keep serving a value from its memtable that the primary
    /// has since flushed and overwritten (facebook/rocksdb#14444, #15051),
    /// which would show a timeline state older than its WAL. A fresh open
    /// replays the primary's MANIFEST and logs from scratch and has no such
    /// memtable.
    pub fn catch_up(&self) -> Result<(), InspectError> {
        let fresh = Secondary::open(&self.datadir)?;
        *self.current.borrow_mut() = fresh;
        Ok(())
    }

    /// Run `f`, and when it failed on a file that compaction removed, catch
    /// up and run it again. `f` must read everything it needs itself, so
    /// that a retry sees one consistent, newer view.
    pub fn with_retry<T>(
        &self,
        mut f: impl FnMut(&RocksStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut attempt = 0;
        loop {
            let r = f(&self.current.borrow().store);
            match r {
                Err(e) if is_vanished_file(&e) && attempt < VANISHED_FILE_RETRIES => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "a file vanished under the secondary; catching up");
                    std::thread::sleep(backoff(attempt));
                    if let Err(again) = self.catch_up() {
                        return Err(match again {
                            InspectError::Store(s) => s,
                            other => StoreError::io(StoreErrorKind::Io, other.to_string()),
                        });
                    }
                }
                r => return r,
            }
        }
    }

    /// Every timeline's state, in id order.
    pub fn timelines(&self) -> Result<Vec<TimelineState>, StoreError> {
        use crate::store::Storage;
        let mut v = self.with_retry(|s| s.timelines())?;
        v.sort_by_key(|s| s.ttid);
        Ok(v)
    }

    pub fn timeline(&self, ttid: Ttid) -> Result<TimelineState, StoreError> {
        self.with_retry(|s| s.timeline_state(ttid))?
            .ok_or(StoreError::UnknownTimeline(ttid))
    }

    /// The mark of the checkpoint this store is (None once cleared or for a
    /// live store), and the cleared mark of one it was restored from.
    pub fn checkpoint_marks(
        &self,
    ) -> Result<
        (
            Option<crate::store::checkpoint::CheckpointMark>,
            Option<crate::store::checkpoint::CheckpointMark>,
        ),
        StoreError,
    > {
        use crate::store::checkpoint;
        self.with_retry(|s| Ok((checkpoint::mark(s)?, checkpoint::restored_from(s)?)))
    }

    /// The durable consumer slots of `ttid`, by name (temporary slots are
    /// never stored).
    pub fn slots(&self, ttid: Ttid) -> Result<Vec<SlotInfo>, StoreError> {
        use crate::store::Storage;
        let mut v: Vec<SlotInfo> = self
            .with_retry(|s| s.slots())?
            .into_iter()
            .filter(|(t, _)| *t == ttid)
            .map(|(_, r)| SlotInfo {
                name: r.name,
                restart_lsn: r.restart_lsn.is_valid().then(|| r.restart_lsn.to_string()),
                invalidated: r.invalidated,
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    /// The chunks of `ttid` overlapping `[from, to)`.
    pub fn chunks(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<Vec<ChunkInfo>, StoreError> {
        self.with_retry(|s| s.read_chunks(ttid, from, to)?.collect())
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(20 << attempt.min(6))
}

/// A RocksDB error about a file that is gone: compaction in the primary
/// removed it after the secondary last caught up.
pub fn is_vanished_file(e: &StoreError) -> bool {
    let text = match e {
        StoreError::Io(f) => f.to_string(),
        StoreError::CorruptStore(t) => t.clone(),
        StoreError::CorruptWal { detail, .. } | StoreError::CorruptState { detail, .. } => {
            detail.clone()
        }
        StoreError::Open { detail, .. } => detail.clone(),
        _ => return false,
    };
    text.contains("No such file")
}

/// One timeline as `skctl` and the HTTP API show it. LSNs are written the
/// way PostgreSQL writes them; the system id is a string because it does not
/// fit in a JSON number that every reader keeps exact.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineInfo {
    pub tenant_id: String,
    pub timeline_id: String,
    pub system_id: String,
    pub pg_version: u32,
    pub wal_seg_size: u32,
    pub tli: u32,
    pub term: u64,
    pub last_log_term: u64,
    pub term_history: Vec<HistoryEntry>,
    pub timeline_start_lsn: String,
    pub local_start_lsn: String,
    pub flush_lsn: String,
    pub commit_lsn: String,
    pub peer_horizon_lsn: String,
    pub slot_horizon_lsn: String,
    /// Term and LSN of the last `--sync-only` that settled this node (0 and
    /// 0/0: never).
    pub settled_term: u64,
    pub settled_lsn: String,
    pub members: Vec<Member>,
    /// The membership configuration's generation (term.step).
    pub generation: String,
    /// While a membership change is in flight (joint): the new member set.
    pub next_members: Option<Vec<Member>>,
    /// This node was removed from the members (it keeps its WAL).
    pub left: bool,
    /// WAL held here: `flush_lsn - local_start_lsn` (chunks tile that
    /// range), what retention trims.
    pub held_bytes: u64,
    /// The same as `held_bytes`, under its first name (kept for scripts).
    pub stored_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    pub term: u64,
    pub start_lsn: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub node_id: u64,
    pub address: String,
}

impl From<&TimelineState> for TimelineInfo {
    fn from(s: &TimelineState) -> Self {
        TimelineInfo {
            tenant_id: s.ttid.tenant_id.to_string(),
            timeline_id: s.ttid.timeline_id.to_string(),
            system_id: s.server.system_id.to_string(),
            pg_version: s.server.pg_version,
            wal_seg_size: s.server.wal_seg_size,
            tli: s.server.tli,
            term: s.term,
            last_log_term: s.last_log_term(),
            term_history: s
                .term_history
                .entries()
                .iter()
                .map(|e| HistoryEntry {
                    term: e.term,
                    start_lsn: e.lsn.to_string(),
                })
                .collect(),
            timeline_start_lsn: s.timeline_start_lsn.to_string(),
            local_start_lsn: s.local_start_lsn.to_string(),
            flush_lsn: s.flush_lsn.to_string(),
            commit_lsn: s.commit_lsn.to_string(),
            peer_horizon_lsn: s.peer_horizon_lsn.to_string(),
            slot_horizon_lsn: s.slot_horizon_lsn.to_string(),
            settled_term: s.settled_term,
            settled_lsn: s.settled_lsn.to_string(),
            members: member_list(&s.members),
            generation: s.membership.generation.to_string(),
            next_members: s.membership.next.as_ref().map(member_list),
            left: s.membership.left,
            held_bytes: s.flush_lsn.distance_from(s.local_start_lsn),
            stored_bytes: s.flush_lsn.distance_from(s.local_start_lsn),
        }
    }
}

fn member_list(m: &crate::consensus::messages::Members) -> Vec<Member> {
    m.iter()
        .map(|(n, a)| Member {
            node_id: n.0,
            address: a.clone(),
        })
        .collect()
}

/// A durable consumer slot, for `skctl show`.
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub name: String,
    /// None until the slot reserves WAL or hears its first flush report.
    pub restart_lsn: Option<String>,
    /// Why the slot no longer holds WAL back.
    pub invalidated: Option<String>,
}

/// One stored chunk, for `skctl wal`.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkRow {
    pub start_lsn: String,
    pub end_lsn: String,
    pub len: u64,
    pub crc_ok: bool,
}

impl From<&ChunkInfo> for ChunkRow {
    fn from(c: &ChunkInfo) -> Self {
        ChunkRow {
            start_lsn: c.start.to_string(),
            end_lsn: c.end().to_string(),
            len: c.len,
            crc_ok: c.crc_ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::acceptor::Write;
    use crate::consensus::messages::ServerInfo;
    use crate::consensus::term_history::TermHistory;
    use crate::store::Storage;

    fn state(flush: Lsn) -> TimelineState {
        TimelineState {
            ttid: Ttid::default(),
            server: ServerInfo {
                system_id: 1,
                pg_version: 150000,
                wal_seg_size: 16 << 20,
                tli: 1,
            },
            members: [(NodeId(1), "a:1".to_string())].into_iter().collect(),
            timeline_start_lsn: Lsn(1 << 24),
            local_start_lsn: Lsn(1 << 24),
            term: 1,
            term_history: TermHistory::default(),
            flush_lsn: flush,
            commit_lsn: Lsn(1 << 24),
            peer_horizon_lsn: Lsn::INVALID,
            slot_horizon_lsn: Lsn::INVALID,
            settled_term: 0,
            settled_lsn: Lsn::INVALID,
            pg_ancestors: Vec::new(),
            membership: Default::default(),
        }
    }

    fn append(store: &mut RocksStore, at: u64, len: usize) {
        store
            .write(
                Ttid::default(),
                &[
                    Write::AppendWal {
                        begin: Lsn(at),
                        bytes: vec![7u8; len].into(),
                    },
                    Write::PutState(Box::new(state(Lsn(at + len as u64)))),
                ],
            )
            .unwrap();
        store.sync().unwrap();
    }

    #[test]
    fn the_secondary_catches_up_with_a_live_primary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut primary = RocksStore::init(&path, NodeId(1)).unwrap();
        append(&mut primary, 1 << 24, 1000);
        let ins = Inspector::open(&path).unwrap();
        assert_eq!(ins.node_id(), NodeId(1));
        assert_eq!(ins.timelines().unwrap()[0].flush_lsn, Lsn((1 << 24) + 1000));
        // Flushed before the secondary looks again: the case RocksDB's own
        // catch-up gets wrong (it keeps the memtable it replayed at open).
        append(&mut primary, (1 << 24) + 1000, 500);
        primary.flush_memtables().unwrap();
        ins.catch_up().unwrap();
        let t = ins.timeline(Ttid::default()).unwrap();
        assert_eq!(t.flush_lsn, Lsn((1 << 24) + 1500));
        assert_eq!(
            ins.chunks(Ttid::default(), Lsn(0), Lsn::MAX).unwrap().len(),
            2
        );
        // The secondary never wrote to the store: the primary reopens it.
        drop(ins);
        drop(primary);
        RocksStore::open(&path).unwrap();
    }

    #[test]
    fn a_vanished_file_is_retried_and_damage_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        drop(RocksStore::init(&path, NodeId(1)).unwrap());
        let ins = Inspector::open(&path).unwrap();
        let mut calls = 0;
        let r = ins.with_retry(|_| {
            calls += 1;
            if calls == 1 {
                Err(StoreError::io(
                    StoreErrorKind::Io,
                    "IO error: No such file or directory: While open a file for random read: /s/000012.sst: No such file or directory",
                ))
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
        assert_eq!(calls, 2);
        let mut calls = 0;
        let r: Result<(), _> = ins.with_retry(|_| {
            calls += 1;
            Err(StoreError::CorruptWal {
                ttid: Ttid::default(),
                from: Lsn(1),
                to: Lsn(2),
                detail: "block checksum mismatch".into(),
            })
        });
        assert!(matches!(r, Err(StoreError::CorruptWal { .. })));
        assert_eq!(calls, 1);
    }
}
