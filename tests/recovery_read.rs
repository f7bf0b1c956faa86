//! A donor serves a proposer's recovery read in term N only while its term
//! and last log term are N. The check runs on the published durable state,
//! but a store read also returns writes staged and not yet synced: a later
//! term's truncation and appends. Here the real daemon's connection handler,
//! the real group-commit writer and RocksDB serve the proxy's real recovery
//! read while such writes sit staged (a storage wrapper holds the sync).

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{append, greeting, wal_bytes, START};
use walkeeper::consensus::acceptor::{term_lsn, TimelineState, Write};
use walkeeper::consensus::messages::*;
use walkeeper::consensus::term_history::TermHistory;
use walkeeper::id::{NodeId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::safekeeper::timelines::Timeline;
use walkeeper::safekeeper::{connection, limits::Limits, Shared, SharedStore};
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::writer::{GroupCommitWriter, WriterHandle};
use walkeeper::store::{SlotRecord, SlotWrite, Storage, StoreError};

/// Holds every sync while closed, so staged writes stay staged.
#[derive(Default)]
struct Gate {
    /// (closed, a sync is waiting)
    state: Mutex<(bool, bool)>,
    changed: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        self.state.lock().unwrap().0 = closed;
        self.changed.notify_all();
    }

    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        while s.0 {
            s.1 = true;
            self.changed.notify_all();
            s = self.changed.wait(s).unwrap();
        }
        s.1 = false;
    }

    /// Wait until a sync waits at the gate (everything before it staged).
    fn wait_for_sync(&self) {
        let s = self.state.lock().unwrap();
        let (s, timeout) = self
            .changed
            .wait_timeout_while(s, Duration::from_secs(30), |s| !s.1)
            .unwrap();
        assert!(!timeout.timed_out() && s.1, "no sync reached the gate");
    }
}

/// Opens the gate when dropped, also when an assertion fails, so the held
/// sync finishes and the writer can stop.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

struct GatedStore {
    inner: SharedStore,
    gate: Arc<Gate>,
}

impl Storage for GatedStore {
    fn timelines(&self) -> Result<Vec<TimelineState>, StoreError> {
        self.inner.timelines()
    }
    fn write(&mut self, ttid: Ttid, writes: &[Write]) -> Result<(), StoreError> {
        self.inner.write(ttid, writes)
    }
    fn write_slot(&mut self, ttid: Ttid, write: &SlotWrite) -> Result<(), StoreError> {
        self.inner.write_slot(ttid, write)
    }
    fn sync(&mut self) -> Result<(), StoreError> {
        self.gate.pass();
        self.inner.sync()
    }
    fn read_wal(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<Vec<u8>, StoreError> {
        self.inner.read_wal(ttid, from, to)
    }
    fn slots(&self) -> Result<Vec<(Ttid, SlotRecord)>, StoreError> {
        self.inner.slots()
    }
}

/// Handle one message and wait for its sync; the reply.
fn handle(t: &Timeline, writer: &WriterHandle, msg: ProposerMessage) -> Option<AcceptorMessage> {
    let pending = t.handle(writer, &msg).expect("accepted");
    pending
        .synced
        .blocking_recv()
        .expect("the writer answers")
        .expect("synced");
    t.take_reply(pending.ticket, walkeeper::lsn::Lsn::INVALID)
}

fn elected(term: u64, at: u64, history: &[(u64, u64)]) -> ProposerMessage {
    ProposerMessage::Elected(Elected {
        term,
        start_streaming_at: Lsn(at),
        term_history: TermHistory(history.iter().map(|&(t, l)| term_lsn(t, l)).collect()),
        pg_tli: 0,
        pg_ancestors: Vec::new(),
    })
}

#[test]
fn a_recovery_read_never_serves_staged_wal_of_a_later_term() {
    let dir = tempfile::tempdir().unwrap();
    let store = SharedStore::new(RocksStore::init(dir.path().join("sk1"), NodeId(1)).unwrap());
    let gate = Arc::new(Gate::default());
    let writer = GroupCommitWriter::start(GatedStore {
        inner: store.clone(),
        gate: gate.clone(),
    });
    let _open = OpenOnDrop(gate.clone());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let shared = Arc::new(Shared::new(
        NodeId(1),
        store,
        writer.handle(),
        vec![],
        vec![],
        shutdown,
        Limits::default(),
    ));
    let w = shared.timelines.writer().clone();

    // Term 1 holds [START, START + len) on this node, durably.
    let g = greeting(&[1, 2, 3], true);
    let (t, created) = shared.timelines.greet(&g).unwrap();
    created.synced.blocking_recv().unwrap().unwrap();
    let len = 64 << 10;
    let term1 = wal_bytes(1, START, len);
    handle(&t, &w, ProposerMessage::VoteRequest(VoteRequest::new(1)));
    handle(&t, &w, elected(1, START, &[(1, START)]));
    handle(&t, &w, append(1, START, &term1, START));
    let end = START + len as u64;

    // Term 2's leader diverges halfway: this node votes, truncates there and
    // takes term 2's WAL, all staged while the sync is held.
    gate.set(true);
    let cut = START + len as u64 / 2;
    let term2 = wal_bytes(2, cut, len / 2);
    let staging = {
        let (t, w, term2) = (t.clone(), w.clone(), term2.clone());
        std::thread::spawn(move || {
            let msgs = [
                ProposerMessage::VoteRequest(VoteRequest::new(2)),
                elected(2, cut, &[(1, START), (2, cut)]),
                append(2, cut, &term2, START),
            ];
            let pending: Vec<_> = msgs
                .iter()
                .map(|m| t.handle_queued(&w, m).expect("accepted"))
                .collect();
            w.lead();
            pending
        })
    };
    gate.wait_for_sync();
    assert_eq!(t.durable().borrow().as_ref().map(|s| s.term), Some(1));
    assert_eq!(t.current_state().term, 2);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = {
        let shared = shared.clone();
        rt.spawn(async move {
            while let Ok((socket, peer)) = listener.accept().await {
                tokio::spawn(connection::serve(shared.clone(), socket, peer, true));
            }
        })
    };
    let read = |term: u64| {
        let read = walkeeper::proxy::safekeepers::recovery_read(
            "",
            &addr,
            g.ttid,
            term,
            Lsn(START),
            Lsn(end),
        );
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), read).await })
            .expect("the recovery read answers")
    };

    // A proxy of term 1 reads from this node: the durable state still says
    // term 1, but what the store returns is partly term 2's.
    let stale = read(1);
    if let Ok(bytes) = &stale {
        assert!(
            bytes[..] == term1[..],
            "term 1's recovery read returned WAL that is not term 1's log (term 2's staged appends)"
        );
    }
    assert!(
        stale.is_err(),
        "a recovery read for term 1 was served by a node already in term 2"
    );

    // Once synced, term 2's proxy reads its own log; term 1's is refused.
    gate.set(false);
    for p in staging.join().unwrap() {
        p.synced.blocking_recv().unwrap().unwrap();
    }
    let mut want = term1[..len / 2].to_vec();
    want.extend_from_slice(&term2);
    assert_eq!(read(2).expect("term 2 serves its log")[..], want[..]);
    assert!(read(1).is_err());
    server.abort();
    drop(rt);
    drop(shared);
    writer.shutdown();
}
