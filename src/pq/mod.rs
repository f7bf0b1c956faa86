//! Both sides of the PostgreSQL v3 wire protocol, as much of it as a WAL
//! server and the proxy need, and the CopyData sub-messages of streaming
//! replication.
//!
//! - [`frame`]: frontend messages in (startup phase and typed), backend
//!   messages out. Sans-IO: bytes in a `BytesMut`, so it can be fuzzed.
//! - [`connection`]: [`connection::PqConnection`], buffered I/O over a tokio
//!   stream, plus the startup handshake and trust "authentication".
//! - [`replication`]: the replication command grammar and the streaming
//!   sub-messages (`w`, `k`, `r`, `h`).
//! - [`sqlstate`]: the SQLSTATE codes the daemon answers with, and
//!   [`error::PgError`], an error as a client is told it.
//! - [`liveness`]: TCP keepalive and unacknowledged-data bounds.
//! - [`client`]: the client side, for the proxy: connection strings,
//!   trust / cleartext / md5 / SCRAM-SHA-256 authentication (password from
//!   the conninfo, `PGPASSWORD` or a [`passfile`]), replication
//!   streaming from a primary and the proposer's connections to safekeepers.
//!
//! Nothing here trusts a length read from the socket: every frame is checked
//! against a cap before its body is buffered, and malformed input is a
//! [`PqError`], never a panic.

pub mod client;
pub mod connection;
pub mod error;
pub mod frame;
pub mod liveness;
pub mod passfile;
pub mod replication;
pub mod sqlstate;

use std::io;

pub use error::PgError;
pub use sqlstate::SqlState;

/// Everything that can go wrong reading or writing the protocol.
#[derive(Debug, thiserror::Error)]
pub enum PqError {
    #[error("I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },

    /// The peer closed the connection in the middle of a message (a close
    /// between messages is reported as `Ok(None)` by the readers instead).
    #[error("connection closed by peer while {context}")]
    UnexpectedEof { context: &'static str },

    #[error("invalid {what} message length {len}")]
    BadLength { what: &'static str, len: i64 },

    #[error("{what} message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },

    #[error("malformed {what} message: {reason}")]
    Malformed { what: &'static str, reason: String },

    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0")]
    UnsupportedProtocol { major: u16, minor: u16 },

    /// Well-formed bytes in the wrong place or with unacceptable content
    /// (e.g. a StartupMessage without `user`).
    #[error("protocol violation: {0}")]
    Protocol(String),

    /// A StartupMessage that parses but cannot be accepted; `sqlstate` is
    /// what PostgreSQL answers the same packet with.
    #[error("{message}")]
    Startup { sqlstate: SqlState, message: String },
}

impl PqError {
    pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> Self {
        PqError::Malformed {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> PqError {
        move |source| PqError::Io { context, source }
    }

    /// The SQLSTATE to report this error with, when the connection is still
    /// writable enough to say so (a FATAL before closing).
    pub fn sqlstate(&self) -> SqlState {
        match self {
            PqError::Io { .. } | PqError::UnexpectedEof { .. } => sqlstate::CONNECTION_FAILURE,
            PqError::UnsupportedProtocol { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            PqError::Protocol(_) => sqlstate::PROTOCOL_VIOLATION,
            PqError::Startup { sqlstate, .. } => *sqlstate,
            PqError::BadLength { .. } | PqError::TooLarge { .. } | PqError::Malformed { .. } => {
                sqlstate::PROTOCOL_VIOLATION
            }
        }
    }

    /// Whether the error means the peer went away (nothing worth reporting
    /// to it, and usually nothing worth logging loudly).
    pub fn is_disconnect(&self) -> bool {
        match self {
            PqError::UnexpectedEof { .. } => true,
            PqError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }
}
