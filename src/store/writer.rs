//! The group-commit writer: one owner of the storage's write side at a time;
//! every connection and timeline hands it writes, and it makes all that
//! queued up together durable with one sync. Each caller is answered only
//! after the sync that covers its writes, and in the order the writes were
//! submitted, so a reply computed after a write is never released before it
//! is on disk.
//!
//! Writes go into one queue. Whoever holds the storage drains it in order:
//! usually the writer's own thread, woken by `submit`; but a caller that
//! queued with `enqueue` may then `lead` and run the batch itself when the
//! storage is free. A WAL push connection does that, so a safekeeper with
//! one busy proposer stages, syncs and answers on the connection's own
//! thread, the way `pg_receivewal` writes, syncs and replies: no hand-over
//! to another thread and back for every append, which on a small machine
//! costs more than the staging itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::{SlotWrite, Storage, StoreError, StoreErrorKind};
use crate::consensus::acceptor::{TimelineState, Write};
use crate::id::Ttid;

/// Upper bound of WAL bytes gathered into one batch, so one sync does not
/// wait for an unbounded amount of data.
const MAX_BATCH_BYTES: usize = 32 << 20;
const MAX_BATCH_REQUESTS: usize = 4096;

/// Lazy writes (commit-only state changes, see `Ready::sync`) staged
/// without a sync are synced by the next batch that syncs anyway, or by a
/// sync of their own at most this long after the first of them was staged
/// (also while requests that need no sync keep coming): that bounds how long
/// readers wait to see such a commit, and is long enough that a busy
/// timeline's next append nearly always comes first.
const LAZY_SYNC_DELAY: Duration = Duration::from_millis(10);

/// Per-batch figures, for metrics and the benchmark.
#[derive(Debug, Clone, Copy)]
pub struct BatchStats {
    pub batches: u64,
    pub requests: u64,
    pub wal_bytes: u64,
    pub last_batch_requests: u64,
    pub last_sync: Duration,
    pub sync_time_total: Duration,
    /// Seconds per sync (one fsync of the whole batch).
    pub sync_seconds: Histogram,
    /// Seconds from submitting a write carrying WAL to its reply being
    /// released: queueing, staging and the sync together.
    pub append_seconds: Histogram,
    /// Requests per synced batch.
    pub batch_requests: Histogram,
}

impl Default for BatchStats {
    fn default() -> Self {
        BatchStats {
            batches: 0,
            requests: 0,
            wal_bytes: 0,
            last_batch_requests: 0,
            last_sync: Duration::ZERO,
            sync_time_total: Duration::ZERO,
            sync_seconds: Histogram::new(LATENCY_BUCKETS),
            append_seconds: Histogram::new(LATENCY_BUCKETS),
            batch_requests: Histogram::new(BATCH_SIZE_BUCKETS),
        }
    }
}

/// Upper bounds (seconds) for latency histograms: from a fast NVMe fsync to
/// a disk in trouble.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds for requests per batch; MAX_BATCH_REQUESTS is the ceiling.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

const MAX_BUCKETS: usize = 16;

/// A fixed-bucket histogram in Prometheus' shape (cumulative on output).
/// Fixed size so [`BatchStats`] stays `Copy` and cheap to snapshot.
#[derive(Debug, Clone, Copy)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last slot used is
    /// for values above every bound.
    counts: [u64; MAX_BUCKETS + 1],
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    /// `bounds` ascending, at most 16 of them (longer lists are cut).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds: &bounds[..bounds.len().min(MAX_BUCKETS)],
            counts: [0; MAX_BUCKETS + 1],
            count: 0,
            sum: 0.0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
    }

    /// (upper bound, observations at or below it) for each bound; the
    /// `+Inf` bucket is `count`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut acc = 0u64;
        self.bounds
            .iter()
            .zip(self.counts.iter())
            .map(move |(b, c)| {
                acc += c;
                (*b, acc)
            })
    }
}

struct Request {
    ttid: Ttid,
    writes: Vec<Write>,
    /// A slot change, staged after `writes` (see `WriterHandle::submit_slot`).
    slot: Option<SlotWrite>,
    /// Need not be synced before `done` (see `WriterHandle::submit_lazy`).
    lazy: bool,
    done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
    submitted: Instant,
}

/// Per timeline, the latest synced state, for readers.
type Published = Arc<Mutex<HashMap<Ttid, watch::Sender<Option<Arc<TimelineState>>>>>>;

/// Durable state published for readers (WAL senders): only ever a state
/// whose writes are synced.
pub type DurableState = watch::Receiver<Option<Arc<TimelineState>>>;

/// Resolves with the outcome of queued writes (see each way to queue them).
pub type Synced = oneshot::Receiver<Result<(), Arc<StoreError>>>;

/// What is waiting to be written, and what the writer thread must look at.
struct Queue {
    requests: VecDeque<Request>,
    /// Shutting down: nothing more is taken, and the thread exits once what
    /// was queued is synced.
    closed: bool,
    /// Set while lazy writes may sit staged without a sync: the writer
    /// thread wakes by then and syncs them if nobody else did.
    lazy_deadline: Option<Instant>,
}

/// The storage and what belongs to its owner of the moment.
struct Core {
    /// None once the writer has stopped (the storage is closed with it).
    storage: Option<Box<dyn Storage + Send>>,
    /// States of lazy writes staged but not synced yet, oldest first: they
    /// are published after the sync that makes them durable.
    deferred: Vec<(Ttid, Box<TimelineState>)>,
    /// Lazy writes are staged and not synced, since `unsynced_since`: they
    /// are synced at most LAZY_SYNC_DELAY later even while other requests
    /// keep arriving (many timelines' heartbeats need no sync either).
    unsynced: bool,
    unsynced_since: Instant,
    /// The first sync that failed. What it covered may be lost on disk
    /// while acceptors already count it, so nothing is acknowledged any
    /// more, on any timeline: every later request fails with it until the
    /// daemon restarts and reopens the store from what is durable.
    failed: Option<Arc<StoreError>>,
    /// Timelines one of whose requests failed to stage. The acceptor
    /// already applied that request in memory, so the requests it handled
    /// after it build on writes that are not there: all of them fail.
    failed_timelines: HashMap<Ttid, Arc<StoreError>>,
}

impl Core {
    /// Why a request of `ttid` must fail without being staged, if it must.
    fn refusal(&self, ttid: Ttid) -> Option<Arc<StoreError>> {
        self.failed
            .as_ref()
            .or_else(|| self.failed_timelines.get(&ttid))
            .map(|first| match &**first {
                StoreError::Failed(_) => first.clone(),
                _ => Arc::new(StoreError::Failed(first.clone().into_failure())),
            })
    }

    /// When staged lazy writes must be synced, if any are staged.
    fn lazy_deadline(&self) -> Option<Instant> {
        self.unsynced.then(|| self.unsynced_since + LAZY_SYNC_DELAY)
    }
}

struct Inner {
    queue: Mutex<Queue>,
    /// The writer thread waits on it for requests or its lazy deadline.
    wake: Condvar,
    core: Mutex<Core>,
    published: Published,
    stats: Mutex<BatchStats>,
}

/// A panic elsewhere while holding one of these locks leaves data that is
/// still consistent between whole steps; keep using it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone)]
pub struct WriterHandle {
    inner: Arc<Inner>,
}

pub struct GroupCommitWriter {
    handle: WriterHandle,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommitWriter {
    pub fn start<S: Storage + Send + 'static>(storage: S) -> GroupCommitWriter {
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                requests: VecDeque::new(),
                closed: false,
                lazy_deadline: None,
            }),
            wake: Condvar::new(),
            core: Mutex::new(Core {
                storage: Some(Box::new(storage)),
                deferred: Vec::new(),
                unsynced: false,
                unsynced_since: Instant::now(),
                failed: None,
                failed_timelines: HashMap::new(),
            }),
            published: Arc::default(),
            stats: Mutex::default(),
        });
        let thread_inner = inner.clone();
        let thread = std::thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || {
                let _closes = CloseOnExit(&thread_inner);
                run(&thread_inner)
            })
            .expect("spawning the group-commit thread");
        GroupCommitWriter {
            handle: WriterHandle { inner },
            thread: Some(thread),
        }
    }

    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Finish every queued write, sync it, and stop. Handles still held
    /// elsewhere get errors afterwards.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        lock(&self.handle.inner.queue).closed = true;
        self.handle.inner.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for GroupCommitWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stopped() -> Arc<StoreError> {
    Arc::new(StoreError::io(
        StoreErrorKind::Io,
        "the group-commit writer has stopped",
    ))
}

impl WriterHandle {
    /// Queue writes for one timeline; the receiver resolves once they are
    /// synced. Submission order is the order they reach the disk.
    pub fn submit(&self, ttid: Ttid, writes: Vec<Write>) -> Synced {
        self.submit_with(ttid, writes, false)
    }

    /// Queue writes that need no sync of their own (`!Ready::sync`): the
    /// receiver resolves once they are staged and everything submitted
    /// before them is synced. They reach the disk with the next sync, in
    /// submission order; readers see their state only after that sync.
    pub fn submit_lazy(&self, ttid: Ttid, writes: Vec<Write>) -> Synced {
        self.submit_with(ttid, writes, true)
    }

    /// Queue writes and wake the writer thread for them.
    fn submit_with(&self, ttid: Ttid, writes: Vec<Write>, lazy: bool) -> Synced {
        let rx = self.enqueue(ttid, writes, lazy);
        self.inner.wake.notify_one();
        rx
    }

    /// Queue writes without waking anyone: the caller must follow with
    /// [`WriterHandle::lead`] (after more `enqueue`s, if it likes, so they
    /// share one sync). Otherwise as [`WriterHandle::submit`] or, with `lazy`,
    /// [`WriterHandle::submit_lazy`].
    pub fn enqueue(&self, ttid: Ttid, writes: Vec<Write>, lazy: bool) -> Synced {
        self.enqueue_request(ttid, writes, None, lazy)
    }

    /// Queue a slot change of a timeline (the store's, not the acceptor's)
    /// and wake the writer thread; the receiver resolves once it is synced.
    pub fn submit_slot(&self, ttid: Ttid, slot: SlotWrite) -> Synced {
        let rx = self.enqueue_request(ttid, Vec::new(), Some(slot), false);
        self.inner.wake.notify_one();
        rx
    }

    fn enqueue_request(
        &self,
        ttid: Ttid,
        writes: Vec<Write>,
        slot: Option<SlotWrite>,
        lazy: bool,
    ) -> Synced {
        let (done, rx) = oneshot::channel();
        let mut q = lock(&self.inner.queue);
        if q.closed {
            let _ = done.send(Err(stopped()));
        } else {
            q.requests.push_back(Request {
                ttid,
                writes,
                slot,
                lazy,
                done: Some(done),
                submitted: Instant::now(),
            });
        }
        rx
    }

    /// Write what is queued on this thread when the storage is free (staging,
    /// the sync, and answering every request in the batch), else leave it to
    /// the writer thread. Blocks for the sync: call it where blocking for
    /// one fsync is acceptable, and not while holding locks others need.
    pub fn lead(&self) {
        let inner = &*self.inner;
        let core = match inner.core.try_lock() {
            Ok(core) => core,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => {
                // Its owner may have drained the queue before our requests
                // arrived; the thread takes them once the owner is done.
                inner.wake.notify_one();
                return;
            }
        };
        inner.lead_with(core);
    }

    /// Queue writes and wait for them to be durable.
    pub async fn write(&self, ttid: Ttid, writes: Vec<Write>) -> Result<(), Arc<StoreError>> {
        match self.submit(ttid, writes).await {
            Ok(r) => r,
            Err(_) => Err(Arc::new(StoreError::io(
                StoreErrorKind::Io,
                "the group-commit writer stopped before answering",
            ))),
        }
    }

    /// The durable state of a timeline as it changes (None until its first
    /// synced state write passes through this writer, unless seeded).
    pub fn durable_state(&self, ttid: Ttid) -> DurableState {
        let mut map = lock(&self.inner.published);
        map.entry(ttid)
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Seed the published state from what was loaded at start-up.
    pub fn publish_loaded(&self, state: TimelineState) {
        let mut map = lock(&self.inner.published);
        let tx = map
            .entry(state.ttid)
            .or_insert_with(|| watch::channel(None).0);
        tx.send_replace(Some(Arc::new(state)));
    }

    pub fn stats(&self) -> BatchStats {
        *lock(&self.inner.stats)
    }
}

/// Closes the queue when the writer thread ends, also by a panic: later
/// requests then fail at once instead of waiting for a thread that is
/// gone, and what is still queued fails too.
struct CloseOnExit<'a>(&'a Inner);

impl Drop for CloseOnExit<'_> {
    fn drop(&mut self) {
        let rest: Vec<Request> = {
            let mut q = lock(&self.0.queue);
            q.closed = true;
            q.requests.drain(..).collect()
        };
        if std::thread::panicking() {
            tracing::error!(
                queued = rest.len(),
                "the group-commit writer thread panicked; nothing more is written"
            );
        }
        for mut req in rest {
            if let Some(done) = req.done.take() {
                let _ = done.send(Err(stopped()));
            }
        }
    }
}

/// The writer thread: takes the queue whenever nobody leads, syncs lazy
/// writes left unsynced past their deadline, and at shutdown writes and
/// syncs what is left before closing the storage.
fn run(inner: &Inner) {
    loop {
        let closing = {
            let mut q = lock(&inner.queue);
            loop {
                if !q.requests.is_empty() || q.closed {
                    break;
                }
                match q.lazy_deadline {
                    Some(d) => {
                        let now = Instant::now();
                        if now >= d {
                            break;
                        }
                        q = inner
                            .wake
                            .wait_timeout(q, d - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                    None => q = inner.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
                }
            }
            q.closed
        };
        let mut core = lock(&inner.core);
        while inner.write_batch(&mut core, closing) {}
        if closing {
            // Nothing is taken any more (CloseOnExit fails anything left);
            // close the storage with the thread.
            core.storage = None;
            return;
        }
    }
}

impl Inner {
    /// [`WriterHandle::lead`] once the storage is this thread's.
    fn lead_with(&self, mut core: MutexGuard<'_, Core>) {
        // Bounded, so one connection does not write for everyone forever.
        for _ in 0..4 {
            if !self.write_batch(&mut core, false) {
                return;
            }
        }
        drop(core);
        if !lock(&self.queue).requests.is_empty() {
            self.wake.notify_one();
        }
    }

    /// Take the next batch from the queue, stage it, sync it when something
    /// in it needs that (or lazy writes waited long enough, or `closing`),
    /// publish what became durable and answer every request in it. Returns
    /// whether there was anything to take.
    fn write_batch(&self, core: &mut Core, closing: bool) -> bool {
        let mut batch: Vec<(Request, Result<(), Arc<StoreError>>, bool)> = Vec::new();
        let mut bytes = 0usize;
        // Writes staged by requests that must be synced before their reply.
        let mut must_sync = false;
        loop {
            let next = {
                let mut q = lock(&self.queue);
                if bytes >= MAX_BATCH_BYTES || batch.len() >= MAX_BATCH_REQUESTS {
                    None
                } else {
                    q.requests.pop_front()
                }
            };
            let Some(mut req) = next else { break };
            if !req.lazy && (!req.writes.is_empty() || req.slot.is_some()) {
                must_sync = true;
            }
            let req_bytes = wal_bytes(&req.writes);
            bytes += req_bytes;
            let staged = match (core.refusal(req.ttid), core.storage.as_mut()) {
                (Some(refused), _) => Err(refused),
                (None, Some(storage)) => match storage.write(req.ttid, &req.writes).and_then(|()| {
                    req.slot
                        .as_ref()
                        .map_or(Ok(()), |w| storage.write_slot(req.ttid, w))
                }) {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        let e = Arc::new(e);
                        tracing::error!(timeline = %req.ttid, error = %e, "staging a write failed; nothing more of this timeline is acknowledged until a restart");
                        core.failed_timelines.insert(req.ttid, e.clone());
                        Err(e)
                    }
                },
                (None, None) => Err(stopped()),
            };
            if req.lazy && !req.writes.is_empty() && staged.is_ok() && !core.unsynced {
                core.unsynced = true;
                core.unsynced_since = Instant::now();
            }
            // Drop the WAL payloads now; only the state is still needed.
            req.writes.retain(|w| matches!(w, Write::PutState(_)));
            batch.push((req, staged, req_bytes > 0));
        }
        // Sync when a request needs it, when staged lazy writes waited long
        // enough (also under a stream of requests that need no sync), and
        // before stopping. Every earlier batch was synced before its callers
        // were answered, except for lazy writes: a batch of only lazy
        // requests (or of requests that staged nothing) is answered at once.
        let lazy_due = core.unsynced && core.unsynced_since.elapsed() >= LAZY_SYNC_DELAY;
        let do_sync = must_sync || (core.unsynced && (closing || lazy_due));
        if batch.is_empty() && !do_sync {
            // Nothing to take; tell the thread when to look again.
            let mut q = lock(&self.queue);
            q.lazy_deadline = core.lazy_deadline();
            return false;
        }
        let started = Instant::now();
        let synced = match (do_sync, core.storage.as_mut()) {
            (false, _) => Ok(()),
            (true, Some(storage)) => storage.sync().map_err(Arc::new),
            (true, None) => Err(stopped()),
        };
        let took = started.elapsed();
        if let Err(e) = &synced {
            tracing::error!(error = %e, requests = batch.len(), "sync failed; nothing in this batch or after it is acknowledged until a restart");
            core.failed.get_or_insert_with(|| e.clone());
        }
        if do_sync {
            core.unsynced = false;
        } else if core.unsynced {
            // Lazy writes wait unsynced: make sure the thread comes back for
            // them. Waking it only when not already armed keeps a stream of
            // heartbeats from waking it for each one.
            let mut q = lock(&self.queue);
            if q.lazy_deadline.is_none() {
                q.lazy_deadline = core.lazy_deadline();
                drop(q);
                self.wake.notify_one();
            }
        }
        {
            let mut s = lock(&self.stats);
            s.requests += batch.len() as u64;
            if do_sync {
                s.batches += 1;
                s.wal_bytes += bytes as u64;
                s.last_batch_requests = batch.len() as u64;
                s.last_sync = took;
                s.sync_time_total += took;
                s.sync_seconds.observe(took.as_secs_f64());
                s.batch_requests.observe(batch.len() as f64);
                if synced.is_ok() {
                    for (req, staged, appended) in &batch {
                        if *appended && staged.is_ok() {
                            s.append_seconds
                                .observe(req.submitted.elapsed().as_secs_f64());
                        }
                    }
                }
            }
        }
        let map = lock(&self.published);
        if do_sync {
            // Staged lazy states are durable now (or lost with this batch).
            for (ttid, state) in core.deferred.drain(..) {
                if synced.is_ok() {
                    if let Some(tx) = map.get(&ttid) {
                        tx.send_replace(Some(Arc::new(*state)));
                    }
                }
            }
        }
        for (mut req, staged, _) in batch {
            let result = match (&staged, &synced) {
                (Err(e), _) | (Ok(()), Err(e)) => Err(e.clone()),
                (Ok(()), Ok(())) => Ok(()),
            };
            if result.is_ok() {
                if let Some(Write::PutState(s)) = req.writes.pop() {
                    if do_sync {
                        if let Some(tx) = map.get(&req.ttid) {
                            tx.send_replace(Some(Arc::new(*s)));
                        }
                    } else {
                        core.deferred.push((req.ttid, s));
                    }
                }
            }
            if let Some(done) = req.done.take() {
                let _ = done.send(result);
            }
        }
        true
    }
}

fn wal_bytes(writes: &[Write]) -> usize {
    writes
        .iter()
        .map(|w| match w {
            Write::AppendWal { bytes, .. } => bytes.len(),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use crate::store::memory::MemStorage;
    use bytes::Bytes;

    /// Storage that records the order of calls and can be told to fail.
    struct Recording {
        inner: MemStorage,
        log: Arc<Mutex<Vec<String>>>,
        fail_sync: bool,
    }

    impl Storage for Recording {
        fn timelines(&self) -> Result<Vec<TimelineState>, StoreError> {
            self.inner.timelines()
        }
        fn write(&mut self, ttid: Ttid, writes: &[Write]) -> Result<(), StoreError> {
            self.log
                .lock()
                .unwrap()
                .push(format!("write {}", writes.len()));
            self.inner.write(ttid, writes)
        }
        fn write_slot(&mut self, ttid: Ttid, write: &SlotWrite) -> Result<(), StoreError> {
            self.log.lock().unwrap().push("write slot".into());
            self.inner.write_slot(ttid, write)
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            self.log.lock().unwrap().push("sync".into());
            let thread = std::thread::current().name().unwrap_or("").to_string();
            self.log.lock().unwrap().push(format!("synced on {thread}"));
            if self.fail_sync {
                return Err(StoreError::io(StoreErrorKind::DiskFull, "disk full"));
            }
            self.inner.sync()
        }
        fn read_wal(&self, ttid: Ttid, from: Lsn, to: Lsn) -> Result<Vec<u8>, StoreError> {
            self.inner.read_wal(ttid, from, to)
        }
    }

    /// A writer over a `Recording` storage, and the log of what it did.
    fn recording_writer(fail_sync: bool) -> (GroupCommitWriter, Arc<Mutex<Vec<String>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let writer = GroupCommitWriter::start(Recording {
            inner: MemStorage::new(),
            log: log.clone(),
            fail_sync,
        });
        (writer, log)
    }

    fn state() -> TimelineState {
        crate::store::memory::tests_state()
    }

    /// A recording writer (with its handle and log) through which a
    /// timeline's state was written, synced and published: readers' view
    /// of it, and that state.
    async fn writer_with_synced_state() -> (
        GroupCommitWriter,
        WriterHandle,
        Arc<Mutex<Vec<String>>>,
        DurableState,
        TimelineState,
    ) {
        let (writer, log) = recording_writer(false);
        let h = writer.handle();
        let mut durable = h.durable_state(Ttid::default());
        let s = state();
        h.write(Ttid::default(), vec![Write::PutState(Box::new(s.clone()))])
            .await
            .unwrap();
        durable.changed().await.unwrap();
        (writer, h, log, durable, s)
    }

    /// Readers do not see `commit_lsn` yet, and do once the writer syncs.
    async fn published_only_later(durable: &mut DurableState, commit_lsn: Lsn) {
        assert!(durable.borrow().as_ref().unwrap().commit_lsn < commit_lsn);
        tokio::time::timeout(Duration::from_secs(5), durable.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(durable.borrow().as_ref().unwrap().commit_lsn, commit_lsn);
    }

    #[tokio::test]
    async fn replies_and_published_state_follow_the_sync() {
        let (writer, log) = recording_writer(false);
        let h = writer.handle();
        let mut durable = h.durable_state(Ttid::default());
        assert!(durable.borrow().is_none());
        let mut s = state();
        s.flush_lsn = Lsn(s.flush_lsn.0 + 3);
        let pending: Vec<_> = (0..50)
            .map(|_| {
                h.submit(
                    Ttid::default(),
                    vec![
                        Write::AppendWal {
                            begin: Lsn(1 << 24),
                            bytes: Bytes::from_static(b"abc"),
                        },
                        Write::PutState(Box::new(s.clone())),
                    ],
                )
            })
            .collect();
        for p in pending {
            p.await.unwrap().unwrap();
        }
        durable.changed().await.unwrap();
        assert_eq!(durable.borrow().as_ref().unwrap().flush_lsn, s.flush_lsn);
        let log = log.lock().unwrap().clone();
        // Every write is followed by a sync before anyone is answered, and
        // requests that queued up together share one sync.
        let last = log.iter().rev().find(|l| !l.starts_with("synced on"));
        assert_eq!(last.map(String::as_str), Some("sync"));
        assert_eq!(log.iter().filter(|l| l.starts_with("write")).count(), 50);
        let syncs = log.iter().filter(|l| *l == "sync").count();
        assert!((1..=50).contains(&syncs));
        let stats = h.stats();
        assert_eq!(stats.requests, 50);
        assert_eq!(stats.append_seconds.count, 50);
        assert_eq!(stats.batch_requests.count, stats.batches);
        assert_eq!(stats.sync_seconds.count, stats.batches);
        writer.shutdown();
    }

    #[tokio::test]
    async fn a_lazy_write_is_synced_in_time_while_requests_needing_none_keep_coming() {
        let (writer, h, _, durable, mut s) = writer_with_synced_state().await;
        s.commit_lsn = Lsn(s.commit_lsn.0 + 1);
        h.submit_lazy(Ttid::default(), vec![Write::PutState(Box::new(s.clone()))])
            .await
            .unwrap()
            .unwrap();
        // Empty requests (heartbeats of other timelines with nothing new)
        // every 2 ms never leave the writer idle for LAZY_SYNC_DELAY.
        let started = std::time::Instant::now();
        while durable.borrow().as_ref().unwrap().commit_lsn < s.commit_lsn {
            assert!(
                started.elapsed() < LAZY_SYNC_DELAY * 50,
                "the lazy commit was not synced while other requests kept coming"
            );
            h.submit(Ttid::default(), vec![]).await.unwrap().unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        writer.shutdown();
    }

    #[tokio::test]
    async fn lazy_writes_are_answered_without_a_sync_and_published_after_one() {
        let (writer, h, log, mut durable, mut s) = writer_with_synced_state().await;
        let syncs = |log: &Arc<Mutex<Vec<String>>>| {
            log.lock().unwrap().iter().filter(|l| *l == "sync").count()
        };
        assert_eq!(syncs(&log), 1);
        // A lazy write: answered at once, no sync, not visible to readers.
        s.commit_lsn = Lsn(s.commit_lsn.0 + 1);
        h.submit_lazy(Ttid::default(), vec![Write::PutState(Box::new(s.clone()))])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(syncs(&log), 1);
        // Once the writer is idle for LAZY_SYNC_DELAY it syncs and publishes.
        published_only_later(&mut durable, s.commit_lsn).await;
        assert_eq!(syncs(&log), 2);
        // A lazy write staged beside a synced one shares its sync.
        s.commit_lsn = Lsn(s.commit_lsn.0 + 1);
        let lazy = h.submit_lazy(Ttid::default(), vec![Write::PutState(Box::new(s.clone()))]);
        s.flush_lsn = Lsn(s.flush_lsn.0 + 1);
        let synced = h.submit(Ttid::default(), vec![Write::PutState(Box::new(s.clone()))]);
        lazy.await.unwrap().unwrap();
        synced.await.unwrap().unwrap();
        tokio::time::sleep(LAZY_SYNC_DELAY * 3).await;
        assert!((3..=4).contains(&syncs(&log)));
        assert_eq!(durable.borrow().as_ref().unwrap().flush_lsn, s.flush_lsn);
        writer.shutdown();
    }

    #[tokio::test]
    async fn a_leader_writes_on_its_own_thread_after_what_was_queued_before() {
        let (writer, log) = recording_writer(false);
        let h = writer.handle();
        let mut durable = h.durable_state(Ttid::default());
        let me = std::thread::current().name().unwrap_or("").to_string();
        assert_ne!(me, "group-commit");
        let put = |s: &TimelineState| Write::PutState(Box::new(s.clone()));
        let mut s = state();
        // Queued for the writer thread first (one write), then by a leader
        // (two writes): whoever writes them, they reach the storage in
        // submission order.
        let first = h.submit(Ttid::default(), vec![put(&s)]);
        s.flush_lsn = Lsn(s.flush_lsn.0 + 1);
        let mut second = h.enqueue(
            Ttid::default(),
            vec![
                Write::AppendWal {
                    begin: s.flush_lsn,
                    bytes: Bytes::from_static(b"x"),
                },
                put(&s),
            ],
            false,
        );
        h.lead();
        first.await.unwrap().unwrap();
        let second = match second.try_recv() {
            Ok(r) => r,
            // The writer thread held the storage; it answers soon.
            Err(_) => second.await.unwrap(),
        };
        second.unwrap();
        durable.changed().await.unwrap();
        assert_eq!(durable.borrow().as_ref().unwrap().flush_lsn, s.flush_lsn);
        let order: Vec<String> = log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("write"))
            .cloned()
            .collect();
        assert_eq!(order, ["write 1", "write 2"]);

        // With the storage free, a leader stages, syncs and answers on its
        // own thread: the reply is there when it returns. The storage is
        // taken here before the request is queued, so the writer thread
        // (which may wake at any time) cannot write it first: it waits for
        // the storage and then finds the queue empty.
        fn led_here(
            h: &WriterHandle,
            log: &Arc<Mutex<Vec<String>>>,
            s: &TimelineState,
            lazy: bool,
        ) {
            let core = lock(&h.inner.core);
            log.lock().unwrap().clear();
            let mut rx = h.enqueue(
                Ttid::default(),
                vec![Write::PutState(Box::new(s.clone()))],
                lazy,
            );
            h.inner.lead_with(core);
            rx.try_recv()
                .expect("answered when the leader returns")
                .unwrap();
        }
        s.flush_lsn = Lsn(s.flush_lsn.0 + 1);
        led_here(&h, &log, &s, false);
        assert_eq!(
            *log.lock().unwrap(),
            [
                "write 1".to_string(),
                "sync".into(),
                format!("synced on {me}")
            ]
        );
        assert_eq!(
            durable.borrow_and_update().as_ref().unwrap().flush_lsn,
            s.flush_lsn
        );

        // A lazy write led here is answered without a sync; the writer
        // thread syncs it by its deadline, and only then do readers see it.
        s.commit_lsn = Lsn(s.commit_lsn.0 + 1);
        led_here(&h, &log, &s, true);
        assert_eq!(*log.lock().unwrap(), ["write 1"]);
        published_only_later(&mut durable, s.commit_lsn).await;
        assert_eq!(
            *log.lock().unwrap(),
            ["write 1", "sync", "synced on group-commit"]
        );
        writer.shutdown();
        // After shutdown a leader's requests fail instead of hanging.
        let mut rx = h.enqueue(Ttid::default(), vec![put(&s)], false);
        h.lead();
        assert!(rx.try_recv().unwrap().is_err());
    }

    /// Storage whose sync panics.
    struct Panicking;

    impl Storage for Panicking {
        fn timelines(&self) -> Result<Vec<TimelineState>, StoreError> {
            Ok(Vec::new())
        }
        fn write(&mut self, _: Ttid, _: &[Write]) -> Result<(), StoreError> {
            Ok(())
        }
        fn write_slot(&mut self, _: Ttid, _: &SlotWrite) -> Result<(), StoreError> {
            Ok(())
        }
        fn sync(&mut self) -> Result<(), StoreError> {
            panic!("a storage bug (deliberate, in a test)");
        }
        fn read_wal(&self, _: Ttid, _: Lsn, _: Lsn) -> Result<Vec<u8>, StoreError> {
            Ok(Vec::new())
        }
    }

    #[tokio::test]
    async fn after_the_writer_thread_dies_requests_fail_instead_of_hanging() {
        let writer = GroupCommitWriter::start(Panicking);
        let h = writer.handle();
        let put = || vec![Write::PutState(Box::new(state()))];
        // The request in the batch that panicked is never answered Ok.
        let first = tokio::time::timeout(Duration::from_secs(5), h.submit(Ttid::default(), put()))
            .await
            .expect("an answer, not a hang");
        assert!(!matches!(first, Ok(Ok(()))));
        // Later ones fail at once.
        let later = tokio::time::timeout(Duration::from_secs(5), h.write(Ttid::default(), put()))
            .await
            .expect("an answer, not a hang");
        assert!(later.is_err());
        drop(writer);
    }

    #[test]
    fn histograms_count_cumulatively() {
        let mut h = Histogram::new(&[1.0, 2.0, 4.0]);
        for v in [0.5, 1.0, 1.5, 3.0, 9.0] {
            h.observe(v);
        }
        let c: Vec<_> = h.cumulative().collect();
        assert_eq!(c, [(1.0, 2), (2.0, 3), (4.0, 4)]);
        assert_eq!(h.count, 5);
        assert_eq!(h.sum, 15.0);
    }

    /// A writer over a storage whose writes and syncs fail when armed, its
    /// handle, the switches, and two timelines (the first one's state
    /// written and synced).
    async fn faulty_writer() -> (
        GroupCommitWriter,
        WriterHandle,
        crate::store::faulty::SharedFaults,
        Ttid,
        Ttid,
    ) {
        let (storage, faults) = crate::store::faulty::FaultyStorage::new(MemStorage::new());
        let writer = GroupCommitWriter::start(storage);
        let h = writer.handle();
        let t1 = Ttid::default();
        let t2 = Ttid::new(crate::id::TenantId([7; 16]), crate::id::TimelineId([7; 16]));
        h.write(t1, vec![Write::PutState(state_of(t1))])
            .await
            .unwrap();
        (writer, h, faults, t1, t2)
    }

    fn state_of(ttid: Ttid) -> Box<TimelineState> {
        let mut s = state();
        s.ttid = ttid;
        Box::new(s)
    }

    fn failed_with_failure<T: std::fmt::Debug>(r: Result<T, Arc<StoreError>>, what: &str) {
        match r.as_ref().map_err(|e| &**e) {
            Err(StoreError::Failed(first)) => {
                assert!(
                    first.to_string().contains("injected failure"),
                    "{what}: {first}"
                )
            }
            other => panic!("{what}: expected the earlier failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn after_a_failed_sync_nothing_more_is_acknowledged_on_any_timeline() {
        let (writer, h, faults, t1, t2) = faulty_writer().await;
        faults.lock().unwrap().fail_next_sync();
        let failed = h.write(t1, vec![Write::PutState(state_of(t1))]).await;
        assert!(failed.is_err());
        // Another connection of the same timeline: its acceptor's state
        // counts the write that failed, so its replies (even one that
        // writes nothing) must not go out; nor may any other timeline's,
        // whose writes the failed sync covered too.
        failed_with_failure(h.write(t1, vec![]).await, "an empty request");
        failed_with_failure(
            h.write(t1, vec![Write::PutState(state_of(t1))]).await,
            "the same timeline",
        );
        failed_with_failure(
            h.write(t2, vec![Write::PutState(state_of(t2))]).await,
            "another timeline",
        );
        failed_with_failure(
            h.submit_lazy(t1, vec![Write::PutState(state_of(t1))])
                .await
                .unwrap(),
            "a lazy request",
        );
        writer.shutdown();
    }

    #[tokio::test]
    async fn after_a_failed_staging_the_rest_of_that_timeline_fails() {
        let (writer, h, faults, t1, t2) = faulty_writer().await;
        faults.lock().unwrap().fail_next_write();
        // A truncation (an Elected) whose staging fails, then the new
        // term's first append of the same timeline, and another timeline's
        // write, queued together.
        let truncate = h.enqueue(t1, vec![Write::TruncateWal { from: Lsn(1 << 24) }], false);
        let append = h.enqueue(
            t1,
            vec![
                Write::AppendWal {
                    begin: Lsn(1 << 24),
                    bytes: Bytes::from_static(b"new term"),
                },
                Write::PutState(state_of(t1)),
            ],
            false,
        );
        let other = h.enqueue(t2, vec![Write::PutState(state_of(t2))], false);
        h.lead();
        assert!(truncate.await.unwrap().is_err());
        failed_with_failure(append.await.unwrap(), "the append after it");
        other.await.unwrap().unwrap();
        // Later batches too, until a restart.
        failed_with_failure(
            h.write(t1, vec![Write::PutState(state_of(t1))]).await,
            "a later request",
        );
        h.write(t2, vec![Write::PutState(state_of(t2))])
            .await
            .unwrap();
        writer.shutdown();
    }

    #[tokio::test]
    async fn a_failed_sync_fails_every_request_in_the_batch() {
        let (writer, _) = recording_writer(true);
        let h = writer.handle();
        let durable = h.durable_state(Ttid::default());
        let r = h
            .write(Ttid::default(), vec![Write::PutState(Box::new(state()))])
            .await;
        assert!(matches!(
            r.as_ref().map_err(|e| &**e),
            Err(StoreError::Io(_))
        ));
        // Nothing that failed to sync is shown to readers.
        assert!(durable.borrow().is_none());
        writer.shutdown();
        // After shutdown, writes fail instead of hanging.
        assert!(h.write(Ttid::default(), vec![]).await.is_err());
    }
}
