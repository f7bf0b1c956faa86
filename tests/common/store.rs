//! Store fixtures shared by the store tests and benches/store.rs (which
//! includes this file by path, so it names nothing else from tests/common):
//! timeline states, incompressible payloads, and the RocksDB under a store.
#![allow(dead_code)]

use bytes::Bytes;
use walkeeper::consensus::acceptor::TimelineState;
use walkeeper::consensus::messages::ServerInfo;
use walkeeper::consensus::term_history::TermHistory;
use walkeeper::id::{NodeId, Ttid};
use walkeeper::lsn::Lsn;

/// A timeline state for store tests: node 1 its only member, term 1, WAL
/// held from `start` (where the timeline starts and is committed) to `flush`.
pub fn store_state(ttid: Ttid, start: Lsn, flush: Lsn) -> TimelineState {
    TimelineState {
        ttid,
        server: ServerInfo {
            system_id: 1,
            pg_version: 150000,
            wal_seg_size: 16 << 20,
            tli: 1,
        },
        members: [(NodeId(1), "127.0.0.1:1".to_string())]
            .into_iter()
            .collect(),
        timeline_start_lsn: start,
        local_start_lsn: start,
        term: 1,
        term_history: TermHistory::default(),
        flush_lsn: flush,
        commit_lsn: start,
        peer_horizon_lsn: Lsn::INVALID,
        slot_horizon_lsn: Lsn::INVALID,
        settled_term: 0,
        settled_lsn: Lsn::INVALID,
        pg_ancestors: Vec::new(),
        membership: Default::default(),
    }
}

/// `len` xorshift bytes from the non-zero generator state `state`: RocksDB
/// cannot compress them, so what is written is what lands on disk.
pub fn incompressible(state: u64, len: usize) -> Bytes {
    let mut x = state;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

/// The RocksDB under a store, opened behind the store's back: the way to
/// damage or inspect what it keeps on disk.
#[cfg(feature = "rocksdb")]
pub fn raw_db(path: &std::path::Path) -> rocksdb::DB {
    rocksdb::DB::open_cf(
        &rocksdb::Options::default(),
        path,
        ["timeline", "wal", "slot"],
    )
    .unwrap()
}

/// What RocksDB says it was opened with, from the info log it writes at
/// every open (the last open's lines come last).
pub fn rocksdb_option(datadir: &std::path::Path, name: &str) -> String {
    let log = std::fs::read_to_string(datadir.join("LOG")).expect("RocksDB's info log");
    let key = format!("Options.{name}: ");
    log.lines()
        .filter_map(|l| l.split_once(&key).map(|(_, v)| v.trim().to_string()))
        .next_back()
        .unwrap_or_else(|| panic!("no {key} in RocksDB's LOG"))
}
