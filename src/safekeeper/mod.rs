//! The safekeeper daemon: one RocksDB store, one PostgreSQL-protocol port for
//! proposers and consumers, one HTTP port.

pub mod auth;
pub mod cancel;
pub mod client;
pub mod cmd;
pub mod connection;
pub mod encryption;
pub mod failover;
pub mod history;
pub mod http;
pub mod http_auth;
pub mod limits;
pub mod metrics;
pub mod pg_errors;
pub mod retention;
pub mod slots;
pub mod timelines;
pub mod wal_push;
pub mod wal_send;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::id::NodeId;
use crate::store::rocks::RocksStore;
use crate::store::writer::GroupCommitWriter;
use crate::store::Storage;
use timelines::Timelines;

#[derive(Debug, Clone)]
pub struct Config {
    pub datadir: PathBuf,
    /// Create a new store in `datadir` (refused if one exists).
    pub init: bool,
    pub node_id: Option<NodeId>,
    pub listen_pg: SocketAddr,
    pub listen_http: SocketAddr,
    /// `--wal-retention` and `--max-wal-keep`.
    pub retention: retention::RetentionConfig,
    /// Whole-cluster recovery: act as an acceptor even on a store restored
    /// from a checkpoint (every proposer stopped, every node restored); the
    /// restore mark is cleared once `--sync-only` settles this node.
    pub restore_cluster: bool,
    /// `--background-write-limit`.
    pub store_tuning: crate::store::rocks::StoreTuning,
    /// Caps and timeouts (`--max-connections` and the like).
    pub limits: limits::Limits,
    /// `--checkpoint-dir`: where `POST /v1/checkpoint` may write; without
    /// it checkpoints over HTTP are refused.
    pub checkpoint_dir: Option<PathBuf>,
    /// `--users-file` and the like: who may connect, and how.
    pub access: auth::Access,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`, `--tls-required`,
    /// `--http-tls`.
    pub tls: encryption::TlsConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--checkpoint-dir {}: {source}", path.display())]
    CheckpointDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot listen for HTTP (--listen-http) on {addr}: {source}")]
    ListenHttp {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// The store shared by the group-commit writer, the WAL senders and the
/// daemon's own records. No lock around it: the store locks only its staged
/// batch, never across an fsync or a read (`store::rocks`), so a WAL read
/// does not wait for the writer's sync, nor the writer for a long read.
#[derive(Clone)]
pub struct SharedStore(Arc<RocksStore>);

impl SharedStore {
    pub fn new(store: RocksStore) -> SharedStore {
        SharedStore(Arc::new(store))
    }

    pub fn rocks(&self) -> &RocksStore {
        &self.0
    }

    /// Store a timeline history file, synced. Blocking for one fsync: call
    /// it from a blocking thread (`history::store` does).
    pub fn put_timeline_history(
        &self,
        ttid: crate::id::Ttid,
        tli: u32,
        content: &[u8],
    ) -> Result<(), crate::store::StoreError> {
        self.0.put_timeline_history(ttid, tli, content)
    }

    pub fn timeline_history(
        &self,
        ttid: crate::id::Ttid,
        tli: u32,
    ) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
        self.0.timeline_history(ttid, tli)
    }

    /// Blocking (a long read for a large range): call it from a blocking
    /// thread (`wal_send` does).
    pub fn read_wal(
        &self,
        ttid: crate::id::Ttid,
        from: crate::lsn::Lsn,
        to: crate::lsn::Lsn,
    ) -> Result<Vec<u8>, crate::store::StoreError> {
        self.0.read_wal(ttid, from, to)
    }
}

impl Storage for SharedStore {
    fn timelines(
        &self,
    ) -> Result<Vec<crate::consensus::acceptor::TimelineState>, crate::store::StoreError> {
        self.0.timelines()
    }
    fn write(
        &mut self,
        ttid: crate::id::Ttid,
        writes: &[crate::consensus::acceptor::Write],
    ) -> Result<(), crate::store::StoreError> {
        self.0.stage(ttid, writes)
    }
    fn write_slot(
        &mut self,
        ttid: crate::id::Ttid,
        write: &crate::store::SlotWrite,
    ) -> Result<(), crate::store::StoreError> {
        self.0.stage_slot(ttid, write)
    }
    fn sync(&mut self) -> Result<(), crate::store::StoreError> {
        self.0.sync_staged()
    }
    fn read_wal(
        &self,
        ttid: crate::id::Ttid,
        from: crate::lsn::Lsn,
        to: crate::lsn::Lsn,
    ) -> Result<Vec<u8>, crate::store::StoreError> {
        SharedStore::read_wal(self, ttid, from, to)
    }
    fn slots(
        &self,
    ) -> Result<Vec<(crate::id::Ttid, crate::store::SlotRecord)>, crate::store::StoreError> {
        self.0.slots()
    }
}

/// The synced state, or (for a timeline whose creation is not synced yet)
/// the acceptor's current one.
pub fn state_of(t: &timelines::Timeline) -> crate::consensus::acceptor::TimelineState {
    let durable = t.durable().borrow().clone();
    match durable {
        Some(s) => (*s).clone(),
        None => t.current_state(),
    }
}

/// State shared by every connection.
pub struct Shared {
    pub timelines: Timelines,
    pub store: SharedStore,
    /// Flips to true when the daemon is shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
    /// Open sockets on the PostgreSQL-protocol port within
    /// `--max-connections`.
    pub connections: Arc<AtomicU64>,
    /// Open START_WAL_PUSH streams.
    pub proposers: AtomicU64,
    /// Open START_REPLICATION streams, recovery reads excepted.
    pub consumers: AtomicU64,
    pub slots: Arc<slots::Slots>,
    /// Connections' cancel keys (BackendKeyData).
    pub cancels: Arc<cancel::Cancels>,
    pub liveness: Arc<failover::ProposerLiveness>,
    /// The mark of the checkpoint this store is, while it is not cleared.
    pub restored: std::sync::Mutex<Option<crate::store::checkpoint::CheckpointMark>>,
    pub restore_cluster: bool,
    pub limits: limits::Limits,
    /// `--checkpoint-dir`, resolved (symbolic links followed) at start.
    pub checkpoint_dir: Option<http::CheckpointDir>,
    /// SCRAM users (`--users-file`); `None`: every client is trusted.
    pub auth: Option<Arc<auth::PgAuth>>,
    /// The HTTP port's bearer token (`--http-token-file`), if any.
    pub http_auth: http_auth::HttpAuth,
    /// TLS on the PostgreSQL-protocol port.
    pub tls: encryption::PortsTls,
}

impl Shared {
    /// The state of a node that serves `loaded` timelines and `stored_slots`
    /// through `writer`, within `limits`; not restored from a checkpoint,
    /// and without `--checkpoint-dir`.
    pub fn new(
        node_id: NodeId,
        store: SharedStore,
        writer: crate::store::writer::WriterHandle,
        loaded: Vec<crate::consensus::acceptor::TimelineState>,
        stored_slots: Vec<(crate::id::Ttid, crate::store::SlotRecord)>,
        shutdown: watch::Receiver<bool>,
        limits: limits::Limits,
    ) -> Shared {
        Shared {
            timelines: Timelines::new(node_id, writer, loaded, limits.max_timelines),
            store,
            shutdown,
            started: Instant::now(),
            connections: Arc::default(),
            proposers: AtomicU64::new(0),
            consumers: AtomicU64::new(0),
            slots: slots::Slots::new(stored_slots, limits.max_replication_slots),
            cancels: Arc::default(),
            liveness: Arc::default(),
            restored: std::sync::Mutex::new(None),
            restore_cluster: false,
            limits,
            checkpoint_dir: None,
            auth: None,
            http_auth: Default::default(),
            tls: encryption::PortsTls::default(),
        }
    }

    /// Why this node must not act as an acceptor of its old membership, if
    /// it must not.
    pub fn acceptor_refusal(&self) -> Option<String> {
        if self.restore_cluster {
            return None;
        }
        let restored = self.restored.lock().unwrap_or_else(|e| e.into_inner());
        restored.as_ref().map(|mark| {
            format!(
                "this safekeeper's store is {}: it has forgotten the votes it gave and the WAL it \
                 acknowledged since, so it refuses to act as an acceptor of its old membership \
                 (joining a live cluster needs a membership change). For whole-cluster recovery \
                 (every proposer stopped, every node restored) start it with --restore-cluster \
                 and run safekeeper-proxy --sync-only",
                mark.describe()
            )
        })
    }

    /// Checkpoint the store into `out` without holding the store's lock
    /// while RocksDB works. Blocking.
    pub fn checkpoint(
        &self,
        out: &std::path::Path,
    ) -> Result<crate::store::checkpoint::CheckpointMark, crate::store::checkpoint::CheckpointError>
    {
        let store = self.store.rocks();
        crate::store::checkpoint::create_from_db(&store.db(), store.path(), store.node_id(), out)
    }

    /// Clear the restore mark durably, once `--sync-only` settled every
    /// timeline of the checkpoint on this node under `--restore-cluster`
    /// (a durable settle in a term above the checkpoint's). Until then the
    /// mark stays: a timeline not settled yet still holds only what the
    /// checkpoint held.
    pub fn clear_restored(&self) -> Result<(), crate::store::StoreError> {
        let mut restored = self.restored.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mark) = restored.as_ref().filter(|_| self.restore_cluster) else {
            return Ok(());
        };
        let unsettled: Vec<String> = mark
            .timelines
            .iter()
            .filter(|c| {
                let durable = self
                    .timelines
                    .get(c.ttid)
                    .and_then(|t| t.durable().borrow().clone());
                durable.is_none_or(|s| s.settled_term <= c.term)
            })
            .map(|c| c.ttid.to_string())
            .collect();
        if !unsettled.is_empty() {
            tracing::info!(
                "whole-cluster recovery: the restore mark stays until every timeline of the checkpoint is settled; not yet: {}",
                unsettled.join(", ")
            );
            return Ok(());
        }
        crate::store::checkpoint::clear_mark(self.store.rocks())?;
        if let Some(mark) = restored.take() {
            tracing::info!(
                "whole-cluster recovery settled this node: cleared the mark of {}",
                mark.describe()
            );
        }
        Ok(())
    }
}

pub use limits::Place;

/// `--background-write-limit`: a size per second, 0 for none. Below
/// 1MB a 64 MiB memtable would take over a minute to flush, and the
/// safekeeper's writes would stall behind it.
pub fn parse_background_write_limit(s: &str) -> Result<u64, String> {
    match retention::parse_size(s)? {
        n if n > 0 && n < 1 << 20 => Err(format!(
            "{s:?} per second is too slow for RocksDB's flushes: use 1MB or more, or 0 for no limit"
        )),
        n => Ok(n),
    }
}

/// Open (or with `init`, create) the store, checking the node id.
pub fn open_store(config: &Config) -> Result<RocksStore, DaemonError> {
    if let Some(limit) = config.store_tuning.background_write_limit {
        tracing::info!(
            bytes_per_second = limit,
            "RocksDB flushes and compactions are limited (--background-write-limit)"
        );
    }
    if config.init {
        let node_id = config.node_id.ok_or_else(|| {
            DaemonError::Config(
                "--init needs --node-id: a new store must know which node it is".into(),
            )
        })?;
        let store = RocksStore::init_tuned(&config.datadir, node_id, &config.store_tuning)?;
        tracing::info!(datadir = %config.datadir.display(), node_id = node_id.0, "initialised a new store");
        return Ok(store);
    }
    let store = RocksStore::open_tuned(&config.datadir, &config.store_tuning)?;
    if let Some(n) = config.node_id {
        if n != store.node_id() {
            return Err(DaemonError::Config(format!(
                "--node-id {} does not match the store at {}, which belongs to node {}",
                n.0,
                config.datadir.display(),
                store.node_id().0
            )));
        }
    }
    Ok(store)
}

/// Run until `stop` resolves (SIGTERM/SIGINT in the binary): then stop
/// accepting, let connections finish what they have read, sync it, and return.
pub async fn run(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    // Before anything is created or bound: a refused start changes nothing.
    let access = config.access.check(config.listen_pg, config.listen_http)?;
    let store = open_store(&config)?;
    let node_id = store.node_id();
    let loaded = store.timelines()?;
    let stored_slots = store.slots()?;
    let restored = crate::store::checkpoint::mark(&store)?;
    match (&restored, config.restore_cluster) {
        (Some(mark), false) => tracing::warn!(
            "this store is {}: proposers will be refused (it forgot votes and acknowledged WAL); \
             consumers and the HTTP API are served. For whole-cluster recovery restart with --restore-cluster",
            mark.describe()
        ),
        (Some(mark), true) => tracing::warn!(
            "--restore-cluster: acting as an acceptor on {}; the mark is cleared once \
             safekeeper-proxy --sync-only settles this node. Every proposer must be stopped \
             and every node restored",
            mark.describe()
        ),
        (None, true) => tracing::warn!(
            "--restore-cluster given, but this store is not a checkpoint (or its mark was cleared); it has no effect"
        ),
        (None, false) => {}
    }
    let checkpoint_dir = config
        .checkpoint_dir
        .as_deref()
        .map(|dir| http::checkpoint_dir(dir, &config.datadir))
        .transpose()?;
    let tls = config.tls.load()?;
    let store = SharedStore::new(store);
    let writer = GroupCommitWriter::start(store.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // HTTP first: once the PostgreSQL port answers, status and metrics do.
    let http_listener = TcpListener::bind(config.listen_http)
        .await
        .map_err(|source| DaemonError::ListenHttp {
            addr: config.listen_http,
            source,
        })?;
    let listener = TcpListener::bind(config.listen_pg)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.listen_pg,
            source,
        })?;
    let shared = Arc::new(Shared {
        restored: std::sync::Mutex::new(restored),
        restore_cluster: config.restore_cluster,
        checkpoint_dir,
        auth: access.pg,
        http_auth: access.http,
        tls,
        ..Shared::new(
            node_id,
            store,
            writer.handle(),
            loaded,
            stored_slots,
            shutdown_rx,
            config.limits.clone(),
        )
    });
    let retention_task = tokio::spawn(retention::run(shared.clone(), config.retention));
    let listen_http = http_listener
        .local_addr()
        .map_err(|source| DaemonError::ListenHttp {
            addr: config.listen_http,
            source,
        })?;
    let http_server = tokio::spawn(http::serve(http_listener, shared.clone()));
    let tls_reloader = tokio::spawn(encryption::reload_on_sighup(shared.tls.server.clone()));
    if shared.checkpoint_dir.is_none() {
        tracing::info!("no --checkpoint-dir: POST /v1/checkpoint is refused (skctl checkpoint --datadir works on a stopped store)");
    }
    tracing::info!(
        node_id = node_id.0,
        listen_pg = %listener.local_addr().map_err(|source| DaemonError::Listen { addr: config.listen_pg, source })?,
        %listen_http,
        tls = shared.tls.server.is_some(),
        tls_required = shared.tls.required,
        http_tls = shared.tls.http,
        timelines = shared.timelines.all().len(),
        "safekeeper ready"
    );

    let mut connections = JoinSet::new();
    // Connections over --max-connections being told so.
    let refusing: Arc<AtomicU64> = Arc::default();
    let mut accept_failures = limits::LogThrottle::new(Duration::from_secs(10));
    let mut closed_at_once = limits::LogThrottle::new(Duration::from_secs(10));
    let max_connections = config.limits.max_connections;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let admitted = Place::take(shared.connections.clone(), max_connections);
                    let refused = match admitted {
                        Some(_) => None,
                        None => match Place::take(refusing.clone(), limits::MAX_REFUSING) {
                            Some(place) => Some(place),
                            None => {
                                if let Some(more) = closed_at_once.allow(Instant::now()) {
                                    tracing::warn!(%peer, max_connections, also_since_last_report = more, "too many connections, and too many being refused: closing new ones without a word");
                                }
                                continue;
                            }
                        },
                    };
                    let _ = socket.set_nodelay(true);
                    // A peer behind a silent link is dropped by the kernel.
                    let _ = crate::pq::liveness::TcpLiveness::PEER.apply(&socket);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        // Both places are held until the connection ends.
                        connection::serve(shared, socket, peer, admitted.is_some()).await;
                        drop((admitted, refused));
                    });
                }
                Err(e) => {
                    // EMFILE and the like: keep serving the connections we
                    // have, and say so now and then rather than ten times a
                    // second.
                    if let Some(more) = accept_failures.allow(Instant::now()) {
                        tracing::warn!(error = %e, also_since_last_report = more, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    tracing::info!(
        connections = connections.len(),
        "shutting down: no new connections; finishing in-flight writes"
    );
    drop(listener);
    let _ = shutdown_tx.send(true);
    let drain = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; closing them");
        connections.abort_all();
    }
    // The HTTP server watches the same shutdown flag; it only reads, so
    // nothing is lost by cutting a slow client off.
    let http_abort = http_server.abort_handle();
    match tokio::time::timeout(Duration::from_secs(5), http_server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task ended abnormally"),
        Err(_) => {
            tracing::warn!("HTTP server still busy 5 s after shutdown; closing it");
            http_abort.abort();
        }
    }
    tls_reloader.abort();
    if let Err(e) = retention_task.await {
        tracing::warn!(error = %e, "retention task ended abnormally");
    }
    // Slot positions reported since the last pass survive a clean stop.
    retention::flush_slots(&shared).await;
    drop(shared);
    // Every write queued so far is synced before this returns.
    tokio::task::spawn_blocking(move || writer.shutdown())
        .await
        .map_err(|e| DaemonError::Config(format!("group-commit writer panicked: {e}")))?;
    tracing::info!("safekeeper stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::parse_background_write_limit as parse;
    use super::SharedStore;
    use crate::consensus::acceptor::Write;
    use crate::id::NodeId;
    use crate::lsn::Lsn;
    use crate::store::rocks::RocksStore;
    use crate::store::writer::GroupCommitWriter;

    /// Long enough for anything that does not wait for the held sync.
    const ANSWER: Duration = Duration::from_secs(30);

    #[test]
    fn a_wal_read_does_not_wait_for_the_writers_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SharedStore::new(RocksStore::init(dir.path().join("store"), NodeId(1)).unwrap());
        let writer = GroupCommitWriter::start(store.clone());
        let h = writer.handle();
        let mut s = crate::store::memory::tests_state();
        let (ttid, start) = (s.ttid, s.flush_lsn);
        h.submit(ttid, vec![Write::PutState(Box::new(s.clone()))])
            .blocking_recv()
            .unwrap()
            .unwrap();

        // The writer stages an append and syncs it; its fsync is held.
        let held = store.rocks().sync_hold().arm();
        let wal = Bytes::from(vec![7u8; 64 << 10]);
        let end = Lsn(start.0 + wal.len() as u64);
        s.flush_lsn = end;
        let synced = h.submit(
            ttid,
            vec![
                Write::AppendWal {
                    begin: start,
                    bytes: wal.clone(),
                },
                Write::PutState(Box::new(s)),
            ],
        );
        assert!(held.wait_held(ANSWER), "the writer's sync never came");

        // A WAL sender reads meanwhile: it is answered, with the writes
        // being synced (staged writes are readable), before the sync ends.
        let (tx, rx) = mpsc::channel();
        let reader = store.clone();
        std::thread::spawn(move || tx.send(reader.read_wal(ttid, start, end)));
        let read = rx
            .recv_timeout(ANSWER)
            .expect("the WAL read waited for the writer's sync");
        assert_eq!(read.unwrap(), wal);
        assert!(store.rocks().sync_hold().holding());

        drop(held);
        synced.blocking_recv().unwrap().unwrap();
        writer.shutdown();
    }

    #[test]
    fn background_write_limit_is_a_size_per_second_or_zero() {
        assert_eq!(parse("0"), Ok(0));
        assert_eq!(parse("32MB"), Ok(32 << 20));
        assert_eq!(parse("1MB"), Ok(1 << 20));
        assert!(parse("1023kB").unwrap_err().contains("1MB or more"));
        assert!(parse("fast").is_err());
    }
}
