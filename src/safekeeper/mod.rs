//! The safekeeper daemon: one RocksDB store, one PostgreSQL-protocol port for
//! proposers and consumers, one HTTP port.

pub mod connection;
pub mod timelines;
pub mod wal_push;
pub mod wal_send;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
}

/// The store shared by the group-commit writer and the WAL senders.
// TODO: RocksDB reads need no lock; give RocksStore &self writes so senders
// do not wait behind a sync.
#[derive(Clone)]
pub struct SharedStore(Arc<std::sync::Mutex<RocksStore>>);

impl SharedStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, RocksStore> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read_wal(
        &self,
        ttid: crate::id::Ttid,
        from: crate::lsn::Lsn,
        to: crate::lsn::Lsn,
    ) -> Result<Vec<u8>, crate::store::StoreError> {
        self.lock().read_wal(ttid, from, to)
    }
}

impl Storage for SharedStore {
    fn timelines(
        &self,
    ) -> Result<Vec<crate::consensus::acceptor::TimelineState>, crate::store::StoreError> {
        self.lock().timelines()
    }
    fn write(
        &mut self,
        ttid: crate::id::Ttid,
        writes: &[crate::consensus::acceptor::Write],
    ) -> Result<(), crate::store::StoreError> {
        self.lock().write(ttid, writes)
    }
    fn sync(&mut self) -> Result<(), crate::store::StoreError> {
        self.lock().sync()
    }
    fn read_wal(
        &self,
        ttid: crate::id::Ttid,
        from: crate::lsn::Lsn,
        to: crate::lsn::Lsn,
    ) -> Result<Vec<u8>, crate::store::StoreError> {
        SharedStore::read_wal(self, ttid, from, to)
    }
}

/// State shared by every connection.
pub struct Shared {
    pub timelines: Timelines,
    pub store: SharedStore,
    /// Flips to true when the daemon is shutting down.
    pub shutdown: watch::Receiver<bool>,
}

/// Open (or with `init`, create) the store, checking the node id.
pub fn open_store(config: &Config) -> Result<RocksStore, DaemonError> {
    if config.init {
        let node_id = config.node_id.ok_or_else(|| {
            DaemonError::Config(
                "--init needs --node-id: a new store must know which node it is".into(),
            )
        })?;
        let store = RocksStore::init(&config.datadir, node_id)?;
        tracing::info!(datadir = %config.datadir.display(), node_id = node_id.0, "initialised a new store");
        return Ok(store);
    }
    let store = RocksStore::open(&config.datadir)?;
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
    let store = open_store(&config)?;
    let node_id = store.node_id();
    let loaded = store.timelines()?;
    let store = SharedStore(Arc::new(std::sync::Mutex::new(store)));
    let writer = GroupCommitWriter::start(store.clone());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let listener = TcpListener::bind(config.listen_pg)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: config.listen_pg,
            source,
        })?;
    let shared = Arc::new(Shared {
        timelines: Timelines::new(node_id, writer.handle(), loaded),
        store,
        shutdown: shutdown_rx,
    });
    tracing::info!(
        node_id = node_id.0,
        listen_pg = %listener.local_addr().map_err(|source| DaemonError::Listen { addr: config.listen_pg, source })?,
        timelines = shared.timelines.all().len(),
        "safekeeper ready"
    );

    let mut connections = JoinSet::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        connection::serve(shared, socket, peer).await;
                    });
                }
                Err(e) => {
                    // EMFILE and the like: keep serving the connections we have.
                    tracing::warn!(error = %e, "accept failed");
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
    drop(shared);
    // Every write queued so far is synced before this returns.
    tokio::task::spawn_blocking(move || writer.shutdown())
        .await
        .map_err(|e| DaemonError::Config(format!("group-commit writer panicked: {e}")))?;
    tracing::info!("safekeeper stopped cleanly");
    Ok(())
}
