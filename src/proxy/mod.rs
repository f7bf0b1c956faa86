//! safekeeper-proxy: a physical replication client of the primary that
//! pushes every byte of WAL to the safekeepers as the consensus proposer and
//! reports the quorum-flushed LSN back to the primary, so that with
//! `synchronous_standby_names = 'safekeeper_proxy'` commits wait for a
//! majority of safekeepers.

pub mod ack_latency;
pub mod event;
pub mod primary;
pub mod promote_check;
pub mod records;
pub mod safekeepers;
pub mod session;
pub mod settle;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::consensus::messages::Members;
use crate::consensus::proposer::Proposer;
use crate::id::{NodeId, Ttid};
use crate::pq::client::ConnConfig;

/// What `--sync-only` keeps of its timeout for recording the settle on
/// each member once the others have had their time.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    /// None only with `sync_only`.
    pub primary: Option<ConnConfig>,
    pub members: Members,
    pub ttid: Ttid,
    pub slot: String,
    pub create_timeline: bool,
    /// Members whose copy of the timeline was lost (`--recreate-timeline-on`).
    pub recreate_timeline_on: BTreeSet<NodeId>,
    pub proposer_id: [u8; 16],
    /// Elect without a primary, settle what the safekeepers hold, exit.
    pub sync_only: bool,
    /// `--change-members`: a `members` list other than the timeline's
    /// starts a membership change (consensus/membership.rs).
    pub change_members: bool,
    /// `--safekeeper-conninfo`: libpq keys of every connection to a
    /// safekeeper (sslmode, sslrootcert, …), host and port excepted.
    pub safekeeper_conninfo: String,
}

/// The operator's one-shot requests, carried from session to session: each
/// is done at most once in the proxy's life.
#[derive(Debug, Clone, Default)]
pub struct OperatorActs {
    /// Create the timeline if no member holds it.
    pub create: bool,
    /// Re-create the timeline on these members, which lost it.
    pub recreate: BTreeSet<NodeId>,
}

impl OperatorActs {
    pub fn new(cfg: &Config) -> OperatorActs {
        OperatorActs {
            create: cfg.create_timeline,
            recreate: cfg.recreate_timeline_on.clone(),
        }
    }

    /// Drop what a session's proposer found done: once any member holds the
    /// timeline it is never created again, and a member is re-created once.
    pub fn carried_out(&mut self, proposer: &Proposer) {
        if proposer.timeline_exists() {
            self.create = false;
        }
        for node in proposer.recreated() {
            self.recreate.remove(node);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Worth another try after a pause: the primary or the term went away.
    #[error("{0}")]
    Retry(String),
    /// A configuration error or a primary that is not the one the
    /// safekeepers follow: retrying cannot help.
    #[error("{0}")]
    Fatal(String),
    /// The primary no longer holds the WAL asked for (SQLSTATE 58P01):
    /// retried, unless the session needed that WAL (`session.rs`).
    #[error("{0}")]
    WalRemoved(String),
}

/// `--sync-only`: make what the safekeepers hold committed and readable
/// without a primary; retried (each try a new term) for up to `within`.
/// Members beyond the settled majority are brought along until
/// [`SETTLE_MARGIN`] (or half of `within`, if less) before that.
pub async fn run_sync_only(cfg: Config, within: Duration) -> Result<settle::Settled, ProxyError> {
    let deadline = std::time::Instant::now() + within;
    let others_until = deadline
        .checked_sub(SETTLE_MARGIN.min(within / 2))
        .unwrap_or(deadline);
    let mut backoff = Duration::from_millis(200);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let attempt = tokio::time::timeout(left, settle::sync_only(&cfg, others_until)).await;
        let attempt = attempt.unwrap_or_else(|_| {
            Err(ProxyError::Retry(format!(
                "no majority of safekeepers settled within {} s",
                within.as_secs()
            )))
        });
        match attempt {
            Ok(lsn) => return Ok(lsn),
            Err(ProxyError::Fatal(e)) => return Err(ProxyError::Fatal(e)),
            Err(ProxyError::Retry(e) | ProxyError::WalRemoved(e))
                if std::time::Instant::now() + backoff > deadline =>
            {
                return Err(ProxyError::Fatal(format!("--sync-only gave up: {e}")))
            }
            Err(ProxyError::Retry(e) | ProxyError::WalRemoved(e)) => {
                tracing::warn!("sync attempt failed: {e}; retrying in a new term");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Run sessions until a fatal error or `stop` resolves. Every session is a
/// new connection to the primary and a new term.
pub async fn run(
    cfg: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ProxyError> {
    tokio::pin!(stop);
    let mut backoff = Duration::from_millis(200);
    let mut rewind = crate::consensus::primary_check::Rewind::default();
    let mut acts = OperatorActs::new(&cfg);
    loop {
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            _ = &mut stop => {
                tracing::info!("stopping");
                return Ok(());
            }
            r = session::run(&cfg, &mut rewind, &mut acts) => r,
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(ProxyError::Fatal(e)) => return Err(ProxyError::Fatal(e)),
            Err(ProxyError::Retry(e) | ProxyError::WalRemoved(e)) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(200);
                }
                tracing::warn!(
                    "session ended: {e}; starting a new one (new term) in {} ms",
                    backoff.as_millis()
                );
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A random-enough proposer id for logs: time and pid mixed.
pub fn new_proposer_id() -> [u8; 16] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = t ^ ((std::process::id() as u128) << 64);
    mixed.to_be_bytes()
}
