//! Damaged data on disk is reported as corruption of a named timeline and LSN
//! range (or a named timeline's state), and never returned as WAL.
#![cfg(feature = "rocksdb")]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use walkeeper::consensus::acceptor::{TimelineState, Write};
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::{wal_key, RocksStore};
use walkeeper::store::{Storage, StoreError};

use common::store::{incompressible, raw_db, store_state};

const BASE: Lsn = Lsn(0x200_0000);

fn ttid(n: u8) -> Ttid {
    Ttid::new(TenantId([n; 16]), TimelineId([0xab; 16]))
}

fn state(ttid: Ttid, flush: Lsn) -> TimelineState {
    store_state(ttid, BASE, flush)
}

/// Incompressible bytes, so they land in an SST as they are.
fn noise(seed: u64, len: usize) -> Bytes {
    incompressible(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1, len)
}

/// A store with `n` chunks of `len` bytes for timeline `t`, synced and closed.
fn store_with_chunks(path: &Path, t: Ttid, n: usize, len: usize) -> Vec<u8> {
    let mut store = RocksStore::init(path, NodeId(1)).unwrap();
    let mut all = Vec::new();
    for i in 0..n {
        let begin = Lsn(BASE.0 + (i * len) as u64);
        let bytes = noise(i as u64 + 1, len);
        all.extend_from_slice(&bytes);
        store
            .write(
                t,
                &[
                    Write::AppendWal { begin, bytes },
                    Write::PutState(Box::new(state(t, Lsn(begin.0 + len as u64)))),
                ],
            )
            .unwrap();
    }
    store.sync().unwrap();
    all
}

/// Rewrite the record under `key` in column family `cf` with `edit`,
/// behind the store's back.
fn tamper(path: &Path, cf: &str, key: impl AsRef<[u8]>, edit: impl FnOnce(&mut Vec<u8>)) {
    let db = raw_db(path);
    let cf = db.cf_handle(cf).unwrap();
    let mut v = db.get_cf(cf, &key).unwrap().unwrap();
    edit(&mut v);
    db.put_cf(cf, key, v).unwrap();
}

fn assert_corrupt_wal(r: Result<Vec<u8>, StoreError>, t: Ttid, from: Lsn, to: Lsn) {
    match r {
        Err(StoreError::CorruptWal {
            ttid,
            from: f,
            to: e,
            ..
        }) => {
            assert_eq!(ttid, t);
            assert_eq!((f, e), (from, to));
        }
        other => panic!("expected CorruptWal of {t} {from}..{to}, got {other:?}"),
    }
}

fn assert_corrupt_state(err: StoreError, t: Ttid) {
    assert!(
        matches!(err, StoreError::CorruptState { ttid, .. } if ttid == t),
        "{err}"
    );
}

#[test]
fn a_chunk_with_a_bad_crc_is_corrupt_wal() {
    let dir = tempfile::tempdir().unwrap();
    let t = ttid(1);
    let all = store_with_chunks(dir.path(), t, 4, 1000);
    tamper(dir.path(), "wal", wal_key(t, Lsn(BASE.0 + 2000)), |v| {
        v[500] ^= 0x01
    });
    let mut store = RocksStore::open(dir.path()).unwrap();
    let (c2, c3) = (Lsn(BASE.0 + 2000), Lsn(BASE.0 + 3000));
    assert_corrupt_wal(store.read_wal(t, BASE, Lsn(BASE.0 + 4000)), t, c2, c3);
    assert_corrupt_wal(store.read_wal(t, Lsn(c2.0 + 10), Lsn(c2.0 + 20)), t, c2, c3);
    // Intact neighbours still read.
    assert_eq!(store.read_wal(t, BASE, c2).unwrap(), all[..2000]);
    assert_eq!(
        store.read_wal(t, c3, Lsn(BASE.0 + 4000)).unwrap(),
        all[3000..]
    );
    let verdicts: Vec<bool> = store
        .read_chunks(t, BASE, Lsn::MAX)
        .unwrap()
        .map(|c| c.unwrap().crc_ok)
        .collect();
    assert_eq!(verdicts, [true, true, false, true]);
    // Cutting into the damaged chunk must not launder it under a fresh CRC.
    let err = store
        .write(
            t,
            &[
                Write::TruncateWal {
                    from: Lsn(c2.0 + 100),
                },
                Write::PutState(Box::new(state(t, Lsn(c2.0 + 100)))),
            ],
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::CorruptWal { ttid, .. } if ttid == t),
        "{err}"
    );
}

#[test]
fn a_chunk_under_the_wrong_lsn_is_corrupt_wal() {
    let dir = tempfile::tempdir().unwrap();
    let t = ttid(2);
    store_with_chunks(dir.path(), t, 3, 700);
    {
        // Same length, so the tiling still looks right: only the CRC, which
        // covers the key, can tell.
        let db = raw_db(dir.path());
        let wal = db.cf_handle("wal").unwrap();
        let v = db.get_cf(wal, wal_key(t, BASE)).unwrap().unwrap();
        db.put_cf(wal, wal_key(t, Lsn(BASE.0 + 700)), v).unwrap();
    }
    let store = RocksStore::open(dir.path()).unwrap();
    assert_corrupt_wal(
        store.read_wal(t, BASE, Lsn(BASE.0 + 2100)),
        t,
        Lsn(BASE.0 + 700),
        Lsn(BASE.0 + 1400),
    );
}

#[test]
fn a_chunk_of_another_timeline_is_corrupt_wal() {
    let dir = tempfile::tempdir().unwrap();
    let (t, u) = (ttid(3), ttid(4));
    store_with_chunks(dir.path(), t, 2, 500);
    {
        let db = raw_db(dir.path());
        let wal = db.cf_handle("wal").unwrap();
        let timeline = db.cf_handle("timeline").unwrap();
        let v = db.get_cf(wal, wal_key(t, BASE)).unwrap().unwrap();
        db.put_cf(wal, wal_key(u, BASE), v).unwrap();
        let s = walkeeper::codec::encode_stored(&state(u, Lsn(BASE.0 + 500))).unwrap();
        db.put_cf(timeline, u.key_prefix(), s).unwrap();
    }
    let store = RocksStore::open(dir.path()).unwrap();
    assert_corrupt_wal(
        store.read_wal(u, BASE, Lsn(BASE.0 + 500)),
        u,
        BASE,
        Lsn(BASE.0 + 500),
    );
}

fn largest_sst(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("an SST file")
}

#[test]
fn flipped_bytes_in_an_sst_are_corrupt_wal() {
    let dir = tempfile::tempdir().unwrap();
    let t = ttid(5);
    let (n, len) = (4usize, 64 << 10);
    store_with_chunks(dir.path(), t, n, len);
    {
        let store = RocksStore::open(dir.path()).unwrap();
        store.flush_memtables().unwrap();
    }
    let sst = largest_sst(dir.path());
    let mut data = std::fs::read(&sst).unwrap();
    assert!(
        data.len() > n * len,
        "{} holds {} bytes",
        sst.display(),
        data.len()
    );
    // A third of the way in is inside the data blocks (index, filters and
    // footer sit at the end).
    let at = data.len() / 3;
    for b in &mut data[at..at + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&sst, &data).unwrap();

    let store = RocksStore::open(dir.path()).unwrap();
    let end = Lsn(BASE.0 + (n * len) as u64);
    match store.read_wal(t, BASE, end) {
        Err(StoreError::CorruptWal { ttid, from, to, .. }) => {
            assert_eq!(ttid, t);
            assert!(BASE <= from && from < to && to <= end, "{from}..{to}");
        }
        other => panic!(
            "expected CorruptWal of {t}, got {:?}",
            other.map(|v| v.len())
        ),
    }
    // The chunk inventory reports it too, as an error rather than as data.
    let listed: Vec<_> = store.read_chunks(t, BASE, end).unwrap().collect();
    assert!(
        listed.iter().any(
            |c| matches!(c, Err(StoreError::CorruptWal { ttid, .. }) if *ttid == t)
                || matches!(c, Ok(c) if !c.crc_ok)
        ),
        "{listed:?}"
    );
}

#[test]
fn a_damaged_state_record_is_corrupt_state() {
    let dir = tempfile::tempdir().unwrap();
    let t = ttid(6);
    store_with_chunks(dir.path(), t, 1, 100);
    tamper(dir.path(), "timeline", t.key_prefix(), |v| {
        v.truncate(v.len() / 2)
    });
    let store = RocksStore::open(dir.path()).unwrap();
    assert_corrupt_state(store.timelines().unwrap_err(), t);
    assert_corrupt_state(store.read_wal(t, BASE, Lsn(BASE.0 + 100)).unwrap_err(), t);
}

#[test]
fn a_state_record_of_another_version_is_corrupt_state() {
    let dir = tempfile::tempdir().unwrap();
    let t = ttid(7);
    store_with_chunks(dir.path(), t, 1, 100);
    tamper(dir.path(), "timeline", t.key_prefix(), |v| {
        v[..2].copy_from_slice(&7u16.to_be_bytes())
    });
    let store = RocksStore::open(dir.path()).unwrap();
    assert_corrupt_state(store.timelines().unwrap_err(), t);
}

/// A store whose every write (`n` appends of `len` bytes, each with its
/// state) was synced on its own and lives only in RocksDB's log (nothing
/// was flushed to an SST): the log's path, and the WAL written.
fn store_in_its_log(path: &Path, t: Ttid, n: usize, len: usize) -> (PathBuf, Vec<u8>) {
    let mut store = RocksStore::init(path, NodeId(1)).unwrap();
    let mut all = Vec::new();
    for i in 0..n {
        let begin = Lsn(BASE.0 + (i * len) as u64);
        let bytes = noise(i as u64 + 7, len);
        all.extend_from_slice(&bytes);
        let s = state(t, Lsn(begin.0 + len as u64));
        store
            .write(
                t,
                &[
                    Write::AppendWal { begin, bytes },
                    Write::PutState(Box::new(s)),
                ],
            )
            .unwrap();
        store.sync().unwrap();
    }
    drop(store);
    let log = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a RocksDB log file");
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(
        size > (n * len) as u64,
        "the writes are in the log ({size} bytes)"
    );
    (log, all)
}

#[test]
fn a_damaged_record_inside_the_log_refuses_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let t = ttid(1);
    let (log, _) = store_in_its_log(&path, t, 64, 1024);
    // One flipped byte in the middle: every record after it was synced,
    // so acknowledged; none of them may silently go.
    let mut bytes = std::fs::read(&log).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&log, &bytes).unwrap();
    match RocksStore::open(&path) {
        Err(StoreError::CorruptStore(text)) => {
            assert!(text.contains("cannot replay its log"), "{text}");
            assert!(
                text.contains("disk is replaced"),
                "names what to do: {text}"
            );
        }
        Err(other) => panic!("expected a corrupt store, got {other}"),
        Ok(store) => panic!(
            "opened a store whose log is damaged in the middle; it holds WAL to {}",
            store.timeline_state(t).unwrap().unwrap().flush_lsn
        ),
    }
}

#[test]
fn a_torn_last_record_is_dropped_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let t = ttid(1);
    let (n, len) = (64, 1024);
    let (log, all) = store_in_its_log(&path, t, n, len);
    // A crash in the middle of the last write: it was never synced, so
    // never acknowledged.
    let size = std::fs::metadata(&log).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    f.set_len(size - 100).unwrap();
    drop(f);
    let store = RocksStore::open(&path).expect("a torn last record is a crash, not damage");
    let kept = Lsn(BASE.0 + ((n - 1) * len) as u64);
    assert_eq!(store.timeline_state(t).unwrap().unwrap().flush_lsn, kept);
    assert_eq!(store.read_wal(t, BASE, kept).unwrap(), all[..(n - 1) * len]);
}
