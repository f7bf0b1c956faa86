//! What the connection tasks tell a session (`session.rs`): replies and
//! ends of the push connections (`safekeepers.rs`), recovery reads, and the
//! primary's WAL (`primary.rs`). Its own module, so those tasks and the
//! session that spawns them import it and not each other.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::consensus::messages::{AcceptorMessage, ProposerMessage};
use crate::id::NodeId;
use crate::lsn::Lsn;

/// How a safekeeper refused the timeline: retrying the same greeting
/// cannot succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It does not hold the timeline (SQLSTATE 42704).
    NoTimeline,
    /// Another cluster, member set or segment size (22023).
    Mismatch,
}

pub enum Event {
    Connected {
        node: NodeId,
        sender: mpsc::UnboundedSender<ProposerMessage>,
    },
    Disconnected {
        node: NodeId,
        reason: String,
        /// The safekeeper refused this timeline.
        refused: Option<Refused>,
    },
    Reply {
        node: NodeId,
        msg: AcceptorMessage,
    },
    RecoveryData {
        id: u64,
        wal: Bytes,
    },
    RecoveryFailed {
        id: u64,
        reason: String,
    },
    /// The safekeepers' copy of the range the primary check compares.
    CheckData(Result<Bytes, String>),
    PrimaryWal {
        start: Lsn,
        wal: Bytes,
    },
    PrimaryPing,
    PrimaryGone(PrimaryGone),
}

/// Why the primary's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimaryGone {
    pub reason: String,
    /// The primary no longer holds the WAL asked for (its walsender's
    /// SQLSTATE 58P01, "requested WAL segment … has already been removed").
    pub wal_removed: bool,
}
