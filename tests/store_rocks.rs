//! The RocksDB store against its contract: init/open rules, staging, and a
//! property test that runs random appends, truncations, trims, syncs and
//! reopens on it and on `MemStorage` and demands the same answers.
#![cfg(feature = "rocksdb")]

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use walkeeper::consensus::acceptor::{TimelineState, Write};
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::store::memory::MemStorage;
use walkeeper::store::rocks::{ChunkInfo, RocksStore};
use walkeeper::store::{Storage, StoreError};

use common::store::{incompressible, raw_db, rocksdb_option, store_state};

fn ttid(n: u8) -> Ttid {
    Ttid::new(TenantId([n; 16]), TimelineId([n.wrapping_add(100); 16]))
}

/// Trims move `local_start` on; where the timeline started stays put.
fn state(ttid: Ttid, local_start: Lsn, flush: Lsn) -> TimelineState {
    let mut s = store_state(ttid, local_start, flush);
    s.server.system_id = 7;
    s.timeline_start_lsn = Lsn(0x100_0000);
    s
}

fn put_state(ttid: Ttid, local_start: Lsn, flush: Lsn) -> Write {
    Write::PutState(Box::new(state(ttid, local_start, flush)))
}

fn pattern(seed: u64, len: usize) -> Bytes {
    incompressible(seed | 1, len)
}

fn chunks(store: &RocksStore, ttid: Ttid) -> Vec<ChunkInfo> {
    store
        .read_chunks(ttid, Lsn(0), Lsn::MAX)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn open_refuses_a_missing_or_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = RocksStore::open(&missing).unwrap_err();
    assert!(
        matches!(&err, StoreError::Open { path, .. } if path.contains("nope")),
        "{err}"
    );
    let err = RocksStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    // Refusing must not have created anything.
    assert!(!missing.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn init_records_the_node_and_refuses_to_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = RocksStore::init(&path, NodeId(42)).unwrap();
    assert_eq!(store.node_id(), NodeId(42));
    drop(store);
    let err = RocksStore::init(&path, NodeId(43)).unwrap_err();
    assert!(err.to_string().contains("already holds a store"), "{err}");
    assert_eq!(RocksStore::open(&path).unwrap().node_id(), NodeId(42));

    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("file"), b"x").unwrap();
    let err = RocksStore::init(&other, NodeId(1)).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
}

/// Why a fresh store, its RocksDB then changed by `tamper`, will not open.
fn open_after(tamper: impl FnOnce(&rocksdb::DB)) -> StoreError {
    let dir = tempfile::tempdir().unwrap();
    drop(RocksStore::init(dir.path(), NodeId(1)).unwrap());
    tamper(&raw_db(dir.path()));
    RocksStore::open(dir.path()).unwrap_err()
}

#[test]
fn open_refuses_an_unknown_format_version() {
    let err = open_after(|db| {
        let mut meta = db.get(b"meta").unwrap().unwrap();
        meta[..2].copy_from_slice(&99u16.to_be_bytes());
        db.put(b"meta", meta).unwrap();
    });
    let text = err.to_string();
    assert!(matches!(err, StoreError::Open { .. }), "{text}");
    assert!(text.contains("version 99"), "{text}");
}

/// A version 3 store (timeline records without `membership`) opens: it is
/// upgraded to version 4 (meta rewritten) and its timelines read as the
/// initial configuration of their members.
#[test]
fn a_version_3_store_is_upgraded_and_reads_the_initial_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let t = ttid(1);
    let mut store = RocksStore::init(dir.path(), NodeId(1)).unwrap();
    store
        .write(t, &[put_state(t, Lsn(0x100_0000), Lsn(0x100_0000))])
        .unwrap();
    store.sync().unwrap();
    let want = store.timelines().unwrap().pop().unwrap();
    drop(store);
    {
        let db = raw_db(dir.path());
        let mut meta = db.get(b"meta").unwrap().unwrap();
        meta[..2].copy_from_slice(&3u16.to_be_bytes());
        db.put(b"meta", meta).unwrap();
        let cf = db.cf_handle("timeline").unwrap();
        let key = t.key_prefix();
        let mut rec = db.get_cf(&cf, key).unwrap().unwrap();
        // version 3 ends before the initial membership (14 bytes)
        rec.truncate(rec.len() - 14);
        rec[..2].copy_from_slice(&3u16.to_be_bytes());
        db.put_cf(&cf, key, rec).unwrap();
    }
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.timelines().unwrap(), vec![want]);
    drop(store);
    let meta = raw_db(dir.path()).get(b"meta").unwrap().unwrap();
    assert_eq!(meta[..2], 4u16.to_be_bytes());
}

#[test]
fn open_refuses_a_store_whose_init_did_not_finish() {
    let err = open_after(|db| db.delete(b"meta").unwrap());
    assert!(err.to_string().contains("init did not finish"), "{err}");
}

#[test]
fn staged_writes_are_visible_and_truncation_reads_the_pending_batch() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RocksStore::init(dir.path(), NodeId(1)).unwrap();
    let t = ttid(1);
    let base = Lsn(0x100_0000);
    let a = pattern(1, 1000);
    let b = pattern(2, 500);
    store
        .write(
            t,
            &[
                Write::AppendWal {
                    begin: base,
                    bytes: a.clone(),
                },
                put_state(t, base, Lsn(base.0 + 1000)),
            ],
        )
        .unwrap();
    // The chunk to cut is still pending (nothing synced yet).
    store
        .write(
            t,
            &[
                Write::TruncateWal {
                    from: Lsn(base.0 + 600),
                },
                Write::AppendWal {
                    begin: Lsn(base.0 + 600),
                    bytes: b.clone(),
                },
                put_state(t, base, Lsn(base.0 + 1100)),
            ],
        )
        .unwrap();
    let got = store.read_wal(t, base, Lsn(base.0 + 1100)).unwrap();
    assert_eq!(&got[..600], &a[..600]);
    assert_eq!(&got[600..], &b[..]);
    // Within one call: append, then cut into what it appended, then trim.
    store
        .write(
            t,
            &[
                Write::AppendWal {
                    begin: Lsn(base.0 + 1100),
                    bytes: pattern(3, 300),
                },
                Write::TruncateWal {
                    from: Lsn(base.0 + 1200),
                },
                Write::TrimWal {
                    below: Lsn(base.0 + 1150),
                },
                put_state(t, Lsn(base.0 + 1150), Lsn(base.0 + 1200)),
            ],
        )
        .unwrap();
    assert_eq!(
        store
            .read_wal(t, Lsn(base.0 + 1150), Lsn(base.0 + 1200))
            .unwrap(),
        pattern(3, 300)[50..100].to_vec()
    );
    assert_eq!(
        chunks(&store, t),
        vec![ChunkInfo {
            start: Lsn(base.0 + 1150),
            len: 50,
            crc_ok: true
        }]
    );
    store.sync().unwrap();
    drop(store);
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(
        store.timelines().unwrap(),
        vec![state(t, Lsn(base.0 + 1150), Lsn(base.0 + 1200))]
    );
    assert!(matches!(
        store.read_wal(t, base, Lsn(base.0 + 1200)),
        Err(StoreError::NotHeld { .. })
    ));
    assert!(matches!(
        store.read_wal(ttid(9), base, base),
        Err(StoreError::UnknownTimeline(_))
    ));
}

#[test]
fn unsynced_writes_are_not_kept_by_a_drop_without_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = RocksStore::init(dir.path(), NodeId(1)).unwrap();
    let t = ttid(1);
    store.write(t, &[put_state(t, Lsn(10), Lsn(10))]).unwrap();
    store.sync().unwrap();
    store
        .write(
            t,
            &[
                Write::AppendWal {
                    begin: Lsn(10),
                    bytes: pattern(1, 10),
                },
                put_state(t, Lsn(10), Lsn(20)),
            ],
        )
        .unwrap();
    drop(store);
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.timelines().unwrap(), vec![state(t, Lsn(10), Lsn(10))]);
    assert!(chunks(&store, t).is_empty());
}

// ---- property test ----

#[derive(Debug, Clone)]
enum Op {
    /// Appends (lengths) in one call, then the new state.
    Append {
        tl: usize,
        lens: Vec<usize>,
    },
    /// Truncate at a point chosen by `at` within the held range.
    Truncate {
        tl: usize,
        at: u64,
    },
    /// Trim below a point chosen by `at`.
    Trim {
        tl: usize,
        at: u64,
    },
    /// One call: append, then truncate into it (and maybe trim), then state.
    AppendCut {
        tl: usize,
        len: usize,
        cut: u64,
        trim: Option<u64>,
    },
    Read {
        tl: usize,
        a: u64,
        b: u64,
    },
    Sync,
    Reopen,
}

const TIMELINES: usize = 3;

fn op() -> impl Strategy<Value = Op> {
    let tl = 0..TIMELINES;
    prop_oneof![
        6 => (tl.clone(), prop::collection::vec(1usize..6000, 1..4))
            .prop_map(|(tl, lens)| Op::Append { tl, lens }),
        2 => (tl.clone(), any::<u64>()).prop_map(|(tl, at)| Op::Truncate { tl, at }),
        2 => (tl.clone(), any::<u64>()).prop_map(|(tl, at)| Op::Trim { tl, at }),
        1 => (tl.clone(), 1usize..3000, any::<u64>(), prop::option::of(any::<u64>()))
            .prop_map(|(tl, len, cut, trim)| Op::AppendCut { tl, len, cut, trim }),
        3 => (tl.clone(), any::<u64>(), any::<u64>()).prop_map(|(tl, a, b)| Op::Read { tl, a, b }),
        2 => Just(Op::Sync),
        1 => Just(Op::Reopen),
    ]
}

/// What the timeline must hold: the bytes from its base LSN up to flush.
struct Model {
    base: Lsn,
    local_start: Lsn,
    bytes: Vec<u8>,
}

impl Model {
    fn flush(&self) -> Lsn {
        Lsn(self.base.0 + self.bytes.len() as u64)
    }
    /// A point in [local_start, flush].
    fn point(&self, r: u64) -> Lsn {
        let span = self.flush().0 - self.local_start.0;
        Lsn(self.local_start.0 + r % (span + 1))
    }
}

/// `dir` is declared last so it is removed after the store is closed.
struct Pair {
    rocks: Option<RocksStore>,
    mem: MemStorage,
    models: Vec<Model>,
    seed: u64,
    dir: tempfile::TempDir,
}

impl Pair {
    fn rocks(&mut self) -> &mut RocksStore {
        self.rocks.as_mut().expect("open")
    }

    fn both(&mut self, t: Ttid, writes: &[Write]) {
        self.rocks().write(t, writes).unwrap();
        self.mem.write(t, writes).unwrap();
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { tl, lens } => {
                let t = ttid(*tl as u8);
                let mut writes = Vec::new();
                for &len in lens {
                    self.seed += 1;
                    let bytes = pattern(self.seed, len);
                    let m = &mut self.models[*tl];
                    writes.push(Write::AppendWal {
                        begin: m.flush(),
                        bytes: bytes.clone(),
                    });
                    m.bytes.extend_from_slice(&bytes);
                }
                let m = &self.models[*tl];
                writes.push(put_state(t, m.local_start, m.flush()));
                self.both(t, &writes);
            }
            Op::Truncate { tl, at } => {
                let t = ttid(*tl as u8);
                let m = &mut self.models[*tl];
                let from = m.point(*at);
                m.bytes.truncate((from.0 - m.base.0) as usize);
                let writes = [
                    Write::TruncateWal { from },
                    put_state(t, m.local_start, m.flush()),
                ];
                self.both(t, &writes);
            }
            Op::Trim { tl, at } => {
                let t = ttid(*tl as u8);
                let m = &mut self.models[*tl];
                m.local_start = m.point(*at);
                let writes = [
                    Write::TrimWal {
                        below: m.local_start,
                    },
                    put_state(t, m.local_start, m.flush()),
                ];
                self.both(t, &writes);
            }
            Op::AppendCut { tl, len, cut, trim } => {
                let t = ttid(*tl as u8);
                self.seed += 1;
                let bytes = pattern(self.seed, *len);
                let m = &mut self.models[*tl];
                let begin = m.flush();
                let mut writes = vec![Write::AppendWal {
                    begin,
                    bytes: bytes.clone(),
                }];
                m.bytes.extend_from_slice(&bytes);
                let from = m.point(*cut);
                writes.push(Write::TruncateWal { from });
                m.bytes.truncate((from.0 - m.base.0) as usize);
                if let Some(trim) = trim {
                    m.local_start = m.point(*trim);
                    writes.push(Write::TrimWal {
                        below: m.local_start,
                    });
                }
                writes.push(put_state(t, m.local_start, m.flush()));
                self.both(t, &writes);
            }
            Op::Read { tl, a, b } => {
                let t = ttid(*tl as u8);
                let m = &self.models[*tl];
                // Mostly inside the held range, sometimes around it.
                let lo = m.local_start.0.saturating_sub(100);
                let span = m.flush().0 + 100 - lo;
                let (mut x, mut y) = (lo + a % (span + 1), lo + b % (span + 1));
                if x > y && a % 8 != 0 {
                    std::mem::swap(&mut x, &mut y);
                }
                let (x, y) = (Lsn(x), Lsn(y));
                let r = self.rocks.as_ref().expect("open").read_wal(t, x, y);
                let e = self.mem.read_wal(t, x, y);
                match (&r, &e) {
                    (Ok(r), Ok(e)) => {
                        assert_eq!(r, e, "read {x}..{y}");
                        let off = (x.0 - m.base.0) as usize;
                        assert_eq!(&r[..], &m.bytes[off..off + r.len()]);
                    }
                    (Err(StoreError::NotHeld { .. }), Err(StoreError::NotHeld { .. })) => {}
                    _ => panic!("read {x}..{y}: rocks {r:?}, memory {e:?}"),
                }
            }
            Op::Sync => {
                self.rocks().sync().unwrap();
                self.mem.sync().unwrap();
            }
            Op::Reopen => {
                self.rocks().sync().unwrap();
                self.mem.sync().unwrap();
                self.rocks = None;
                self.rocks = Some(RocksStore::open(self.dir.path()).unwrap());
            }
        }
    }

    fn check(&self) {
        let rocks = self.rocks.as_ref().expect("open");
        assert_eq!(rocks.timelines().unwrap(), self.mem.timelines().unwrap());
        for (i, m) in self.models.iter().enumerate() {
            let t = ttid(i as u8);
            let layout = chunks(rocks, t);
            // Tiling: [local_start, flush) with no gap or overlap.
            let mut pos = m.local_start;
            for c in &layout {
                assert!(c.crc_ok, "{c:?}");
                assert_eq!(c.start, pos, "chunks of {t}: {layout:?}");
                pos = c.end();
            }
            assert_eq!(pos, m.flush(), "chunks of {t}: {layout:?}");
            let mem_layout: Vec<(Lsn, usize)> = self.mem.chunk_layout(t);
            let rocks_layout: Vec<(Lsn, usize)> =
                layout.iter().map(|c| (c.start, c.len as usize)).collect();
            assert_eq!(rocks_layout, mem_layout);
            let all = rocks.read_wal(t, m.local_start, m.flush()).unwrap();
            let off = (m.local_start.0 - m.base.0) as usize;
            assert_eq!(&all[..], &m.bytes[off..]);
        }
    }
}

fn run(ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::init(dir.path(), NodeId(1)).unwrap();
    let mut pair = Pair {
        dir,
        rocks: Some(rocks),
        mem: MemStorage::new(),
        models: Vec::new(),
        seed: 0,
    };
    for i in 0..TIMELINES {
        let base = Lsn(0x100_0000 * (i as u64 + 1) + 17 * i as u64);
        pair.models.push(Model {
            base,
            local_start: base,
            bytes: Vec::new(),
        });
        pair.both(ttid(i as u8), &[put_state(ttid(i as u8), base, base)]);
    }
    for op in ops {
        pair.apply(op);
        if matches!(
            op,
            Op::Sync | Op::Reopen | Op::Truncate { .. } | Op::Trim { .. }
        ) {
            pair.check();
        }
    }
    pair.check();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn rocks_store_matches_memory(ops in prop::collection::vec(op(), 1..60)) {
        run(&ops);
    }
}

#[test]
fn a_background_write_limit_reaches_rocksdb_on_init_and_open() {
    use walkeeper::store::rocks::StoreTuning;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let limited = StoreTuning {
        background_write_limit: Some(32 << 20),
    };
    drop(RocksStore::init_tuned(&path, NodeId(1), &limited).unwrap());
    assert_ne!(rocksdb_option(&path, "rate_limiter"), "(nil)");
    assert_eq!(rocksdb_option(&path, "bytes_per_sync"), "1048576");

    drop(RocksStore::open(&path).unwrap());
    assert_eq!(rocksdb_option(&path, "rate_limiter"), "(nil)");
    assert_eq!(rocksdb_option(&path, "bytes_per_sync"), "0");

    drop(RocksStore::open_tuned(&path, &limited).unwrap());
    assert_ne!(rocksdb_option(&path, "rate_limiter"), "(nil)");
}
