//! The client (frontend) side of the PostgreSQL v3 protocol, as much as the
//! safekeeper-proxy needs: a physical replication client of a PostgreSQL 15
//! primary, and a client of safekeepers (which speak the same protocol).
//!
//! - `conninfo`: [`ConnConfig`], libpq-style connection strings (`key=value`
//!   and `postgresql://` URIs).
//! - `backend`: backend messages off the read buffer (sans-IO).
//! - `connection`: [`PgClient`], TLS as libpq's `sslmode` asks
//!   ([`crate::tls::client`]), the start-up, simple queries and CopyBoth
//!   streaming; [`PgReader`] / [`PgWriter`], the two halves of a client
//!   after [`PgClient::into_split`], so one task can stream while another
//!   sends status updates.
//! - `auth`: trust / cleartext / md5 / SCRAM-SHA-256 authentication.
//! - `replication`: the replication commands the proxy uses.
//!
//! Reads go through a `BytesMut` and only whole frames are consumed, so
//! [`PgReader::recv_copy`] is cancel-safe; writes are queued in a buffer and
//! [`PgWriter::flush`] drops bytes from it as they are written, so it is
//! cancel-safe too. Nothing read from the socket can make this code panic: a
//! frame's length is checked against a cap from its header alone, and every
//! field is bounds-checked.

use std::io;
use std::time::Duration;

pub use crate::tls::client::SslMode;

mod auth;
mod backend;
mod connection;
mod conninfo;
mod replication;

pub(crate) use backend::{parse_data_row, parse_error_fields, parse_frame};
pub use connection::{CopyMessage, PgClient, PgReader, PgWriter};
pub use conninfo::{ConnConfig, DEFAULT_HOST, DEFAULT_PORT, DEFAULT_USER};
pub use replication::{parse_wal_segment_size, IdentifySystem, ReplicationSlotInfo};

/// Everything that can go wrong on the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection string (or an environment variable) is unusable.
    #[error("invalid connection string: {0}")]
    Config(String),

    /// TLS could not be set up: the server refused it while sslmode
    /// requires it, or the handshake failed (a certificate not trusted,
    /// expired, or not for this host).
    #[error("TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },

    #[error("could not connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },

    /// `connect_timeout` expired before the session was ready (this covers
    /// authentication too, as in libpq).
    #[error("timed out after {timeout:?} connecting to {addr}")]
    ConnectTimeout { addr: String, timeout: Duration },

    #[error("I/O error on the connection to {addr} while {context}: {source}")]
    Io {
        addr: String,
        context: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("connection to {addr} closed by the server while {context}")]
    Closed { addr: String, context: &'static str },

    /// The server sent something this client cannot accept; the connection
    /// is not usable after this.
    #[error("protocol error from {addr}: {reason}")]
    Protocol { addr: String, reason: String },

    /// Authentication failed on our side (an unsupported method, no
    /// password, a bad SCRAM server signature). A server refusing the
    /// password is a [`ClientError::Server`] with SQLSTATE 28P01.
    #[error("authentication with {addr} failed: {reason}")]
    Auth { addr: String, reason: String },

    /// An ErrorResponse from the server.
    #[error("{severity} {code}: {message}{}", detail_suffix(.detail))]
    Server {
        /// Non-localized severity (`ERROR`, `FATAL`, `PANIC`).
        severity: String,
        /// SQLSTATE.
        code: String,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },

    /// A method called in the wrong state (e.g. a query while in COPY).
    #[error("client misuse: {0}")]
    InvalidState(String),
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(d) => format!(" (DETAIL: {d})"),
        None => String::new(),
    }
}

impl ClientError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether the server sent this error (the connection may still be
    /// usable after an `ERROR`, never after a `FATAL`).
    pub fn is_server_error(&self) -> bool {
        matches!(self, ClientError::Server { .. })
    }
}
