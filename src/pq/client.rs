//! The client (frontend) side of the PostgreSQL v3 protocol, as much as the
//! safekeeper-proxy needs: a physical replication client of a PostgreSQL 15
//! primary, and a client of safekeepers (which speak the same protocol).
//!
//! - [`ConnConfig`]: libpq-style connection strings (`key=value` and
//!   `postgresql://` URIs).
//! - [`PgClient`]: TLS as libpq's `sslmode` asks ([`crate::tls::client`]),
//!   trust / cleartext / md5 / SCRAM-SHA-256 authentication, simple queries,
//!   CopyBoth streaming, and the replication commands the proxy uses.
//! - [`PgReader`] / [`PgWriter`]: the two halves of a client after
//!   [`PgClient::into_split`], so one task can stream while another sends
//!   status updates.
//!
//! Reads go through a `BytesMut` and only whole frames are consumed, so
//! [`PgReader::recv_copy`] is cancel-safe; writes are queued in a buffer and
//! [`PgWriter::flush`] drops bytes from it as they are written, so it is
//! cancel-safe too. Nothing read from the socket can make this code panic: a
//! frame's length is checked against a cap from its header alone, and every
//! field is bounds-checked.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

pub use crate::tls::client::SslMode;
use crate::tls::client::TlsKeys;
use crate::tls::MaybeTls;

use crate::lsn::{is_valid_wal_seg_size, Lsn};

pub const DEFAULT_PORT: u16 = 5432;
pub const DEFAULT_USER: &str = "postgres";
pub const DEFAULT_HOST: &str = "localhost";

/// CopyData carries XLogData (PostgreSQL cuts at 128 KiB) and safekeeper
/// messages (about 1 MiB of WAL); DataRow may carry a timeline history file.
/// Generous, but a garbage length must not make us wait for gigabytes.
const MAX_LARGE_MESSAGE_LEN: usize = 64 << 20;
/// Every other backend message (errors, notices, parameter status, ...).
const MAX_MESSAGE_LEN: usize = 1 << 20;
const READ_CHUNK: usize = 64 * 1024;
/// libpq's floor for `connect_timeout`: shorter values are unreliable.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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

// ---------------------------------------------------------------------------
// Connection strings

/// A parsed connection string.
///
/// Multi-host strings (`host=a,b port=1,2`) are accepted but only the first
/// host (and first port) is used: the proxy is given one primary.
/// Without `password=` or `$PGPASSWORD`, the password comes from the
/// password file (`passfile=`, `$PGPASSFILE` or `~/.pgpass`) when the
/// server asks for one.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// Host name, IP address, or a Unix-socket directory (starts with `/`).
    pub host: String,
    /// Numeric address to connect to instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    /// libpq's `passfile`: where to look for a password not given.
    pub passfile: Option<std::path::PathBuf>,
    pub dbname: Option<String>,
    pub application_name: Option<String>,
    /// Command-line options for the server (`-c name=value ...`).
    pub options: Option<String>,
    /// `None`: no limit beyond the operating system's.
    pub connect_timeout: Option<Duration>,
    pub sslmode: SslMode,
    /// Keepalive and unacknowledged-data bounds on a TCP connection (not a
    /// conninfo keyword: the proxy sets it for its safekeeper connections).
    pub tcp_liveness: Option<super::liveness::TcpLiveness>,
    /// `sslrootcert`, `sslcert`, `sslkey`.
    pub tls_keys: TlsKeys,
}

impl fmt::Debug for ConnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnConfig")
            .field("host", &self.host)
            .field("hostaddr", &self.hostaddr)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("passfile", &self.passfile)
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("options", &self.options)
            .field("connect_timeout", &self.connect_timeout)
            .field("sslmode", &self.sslmode)
            .field("tcp_liveness", &self.tcp_liveness)
            .field("tls_keys", &self.tls_keys)
            .finish()
    }
}

impl Default for ConnConfig {
    fn default() -> Self {
        ConnConfig {
            host: DEFAULT_HOST.into(),
            hostaddr: None,
            port: DEFAULT_PORT,
            user: DEFAULT_USER.into(),
            password: None,
            passfile: None,
            dbname: None,
            application_name: None,
            options: None,
            connect_timeout: None,
            sslmode: SslMode::default(),
            tcp_liveness: None,
            tls_keys: TlsKeys::default(),
        }
    }
}

/// libpq keywords that are valid but mean nothing to this client.
const IGNORED_KEYWORDS: &[&str] = &[
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "load_balance_hosts",
    "client_encoding",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "sslpassword",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requirepeer",
    "krbsrvname",
    "gsslib",
    "service",
    "replication",
];

impl ConnConfig {
    /// Parses a libpq connection string, taking defaults from the
    /// environment (`PGHOST`, `PGHOSTADDR`, `PGPORT`, `PGUSER`,
    /// `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`, `PGOPTIONS`,
    /// `PGCONNECT_TIMEOUT`, `PGSSLMODE`) for what it leaves out.
    pub fn parse(s: &str) -> Result<ConnConfig, ClientError> {
        Self::parse_with_env(s, |name| std::env::var(name).ok())
    }

    /// [`ConnConfig::parse`] with an explicit environment.
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConnConfig, ClientError> {
        let pairs = if is_uri(s) {
            parse_uri(s)?
        } else {
            parse_keyword_value(s)?
        };
        let mut given: HashMap<String, String> = HashMap::new();
        for (k, v) in pairs {
            given.insert(k, v);
        }
        let get = |key: &str, var: &str| -> Option<String> {
            given
                .get(key)
                .cloned()
                .or_else(|| env(var))
                .filter(|v| !v.is_empty())
        };

        let mut cfg = ConnConfig::default();
        for key in given.keys() {
            let known = matches!(
                key.as_str(),
                "host"
                    | "hostaddr"
                    | "port"
                    | "user"
                    | "password"
                    | "passfile"
                    | "dbname"
                    | "application_name"
                    | "fallback_application_name"
                    | "options"
                    | "connect_timeout"
                    | "sslmode"
                    | "sslrootcert"
                    | "sslcert"
                    | "sslkey"
                    | "gssencmode"
                    | "channel_binding"
            ) || IGNORED_KEYWORDS.contains(&key.as_str());
            if !known {
                return Err(ClientError::Config(format!(
                    "invalid connection option \"{key}\""
                )));
            }
        }
        if let Some(h) = get("host", "PGHOST") {
            cfg.host = first_of_list(&h).to_string();
            if cfg.host.is_empty() {
                cfg.host = DEFAULT_HOST.into();
            }
        }
        if let Some(a) = get("hostaddr", "PGHOSTADDR") {
            let a = first_of_list(&a);
            cfg.hostaddr = Some(a.parse().map_err(|_| {
                ClientError::Config(format!(
                    "invalid hostaddr \"{a}\": not a numeric IP address"
                ))
            })?);
        }
        if let Some(p) = get("port", "PGPORT") {
            let p = first_of_list(&p).trim();
            cfg.port = match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(ClientError::Config(format!("invalid port number: \"{p}\""))),
            };
        }
        if let Some(u) = get("user", "PGUSER") {
            cfg.user = u;
        }
        cfg.password = given.get("password").cloned().or_else(|| env("PGPASSWORD"));
        cfg.passfile = get("passfile", "PGPASSFILE")
            .map(std::path::PathBuf::from)
            .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".pgpass")));
        cfg.dbname = get("dbname", "PGDATABASE");
        cfg.application_name = get("application_name", "PGAPPNAME")
            .or_else(|| given.get("fallback_application_name").cloned());
        cfg.options = get("options", "PGOPTIONS");
        if let Some(t) = get("connect_timeout", "PGCONNECT_TIMEOUT") {
            let secs: i64 = t.trim().parse().map_err(|_| {
                ClientError::Config(format!("invalid connect_timeout value: \"{t}\""))
            })?;
            cfg.connect_timeout = (secs > 0)
                .then(|| Duration::from_secs(secs.unsigned_abs()).max(MIN_CONNECT_TIMEOUT));
        }
        if let Some(m) = get("sslmode", "PGSSLMODE") {
            cfg.sslmode = SslMode::parse(&m)
                .ok_or_else(|| ClientError::Config(format!("invalid sslmode value: \"{m}\"")))?;
        }
        cfg.tls_keys = TlsKeys {
            sslrootcert: get("sslrootcert", "PGSSLROOTCERT").map(Into::into),
            sslcert: get("sslcert", "PGSSLCERT").map(Into::into),
            sslkey: get("sslkey", "PGSSLKEY").map(Into::into),
        };
        if let Some(m) = get("gssencmode", "PGGSSENCMODE") {
            match m.as_str() {
                "disable" | "prefer" => {}
                "require" => {
                    return Err(ClientError::Config(
                        "gssencmode=require is not supported: this client does not do GSSAPI \
                         encryption"
                            .into(),
                    ))
                }
                _ => {
                    return Err(ClientError::Config(format!(
                        "invalid gssencmode value: \"{m}\""
                    )))
                }
            }
        }
        if let Some(m) = get("channel_binding", "PGCHANNELBINDING") {
            match m.as_str() {
                "disable" | "prefer" => {}
                "require" => {
                    return Err(ClientError::Config(
                        "channel_binding=require is not supported: this client does not do SCRAM channel binding".into(),
                    ))
                }
                _ => {
                    return Err(ClientError::Config(format!(
                        "invalid channel_binding value: \"{m}\""
                    )))
                }
            }
        }
        Ok(cfg)
    }

    /// Where this connects, for messages.
    pub fn address(&self) -> String {
        if let Some(a) = self.hostaddr {
            return SocketAddr::new(a, self.port).to_string();
        }
        if self.host.starts_with('/') {
            return self.unix_socket_path();
        }
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn unix_socket_path(&self) -> String {
        format!("{}/.s.PGSQL.{}", self.host.trim_end_matches('/'), self.port)
    }
}

fn first_of_list(v: &str) -> &str {
    v.split(',').next().unwrap_or("")
}

fn is_uri(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

fn parse_keyword_value(s: &str) -> Result<Vec<(String, String)>, ClientError> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let start = i;
        while chars
            .get(i)
            .is_some_and(|&c| c != '=' && !c.is_whitespace())
        {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if chars.get(i) != Some(&'=') {
            return Err(ClientError::Config(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if chars.get(i) == Some(&'\'') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(ClientError::Config(
                            "unterminated quoted string in connection info string".into(),
                        ))
                    }
                    Some('\\') => {
                        if let Some(&c) = chars.get(i + 1) {
                            value.push(c);
                        }
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
        } else {
            while let Some(&c) = chars.get(i) {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    if let Some(&n) = chars.get(i + 1) {
                        value.push(n);
                    }
                    i += 2;
                } else {
                    value.push(c);
                    i += 1;
                }
            }
        }
        out.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, ClientError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ClientError::Config(format!("invalid percent-encoded token: \"{s}\""))
                })?;
            if hex == 0 {
                return Err(ClientError::Config(format!(
                    "forbidden value %00 in percent-encoded value: \"{s}\""
                )));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ClientError::Config(format!("percent-encoded value is not UTF-8: \"{s}\"")))
}

fn parse_uri(s: &str) -> Result<Vec<(String, String)>, ClientError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .unwrap_or(s);
    let mut out = Vec::new();
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    // A password may itself contain '@' only percent-encoded, so the last
    // '@' ends the user info.
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, pw) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), percent_decode(user)?));
            }
            if let Some(pw) = pw {
                out.push(("password".into(), percent_decode(pw)?));
            }
            hosts
        }
        None => authority,
    };
    let first = first_of_list(hosts);
    let (host, port) = if let Some(bracketed) = first.strip_prefix('[') {
        let (h, after) = bracketed.split_once(']').ok_or_else(|| {
            ClientError::Config(format!(
                "missing \"]\" in IPv6 host address in URI: \"{s}\""
            ))
        })?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| {
                ClientError::Config(format!(
                    "unexpected character after IPv6 host address in URI: \"{s}\""
                ))
            })?),
        };
        (h.to_string(), port)
    } else {
        match first.split_once(':') {
            Some((h, p)) => (percent_decode(h)?, Some(p)),
            None => (percent_decode(first)?, None),
        }
    };
    if !host.is_empty() {
        out.push(("host".into(), host));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        out.push(("port".into(), percent_decode(p)?));
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        out.push(("dbname".into(), percent_decode(db)?));
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ClientError::Config(format!(
                "missing key/value separator \"=\" in URI query parameter: \"{pair}\""
            ))
        })?;
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        // libpq's JDBC-compatible spelling.
        if k == "ssl" && v == "true" {
            out.push(("sslmode".into(), "require".into()));
        } else {
            out.push((k, v));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Backend frames (sans-IO)

/// A backend message: its type byte and body (length word stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) tag: u8,
    pub(crate) body: Bytes,
}

/// Takes one whole backend message off the front of `buf`; `Ok(None)` (and
/// nothing consumed) until all of it is buffered.
pub(crate) fn parse_frame(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(format!(
            "invalid length {len} of message type {:?}",
            tag as char
        ));
    }
    let len = len as usize;
    let max = if matches!(tag, b'd' | b'D') {
        MAX_LARGE_MESSAGE_LEN
    } else {
        MAX_MESSAGE_LEN
    };
    if len > max {
        return Err(format!(
            "message type {:?} of {len} bytes exceeds the limit of {max}",
            tag as char
        ));
    }
    if buf.len() < len + 1 {
        // Room for the rest of the frame, but a claimed length alone must
        // not make us allocate much before the bytes arrive.
        buf.reserve((len + 1 - buf.len()).min(MAX_MESSAGE_LEN));
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1).freeze();
    frame.advance(5);
    Ok(Some(Frame { tag, body: frame }))
}

fn take_cstr(b: &mut Bytes) -> Result<Bytes, String> {
    let nul = b
        .iter()
        .position(|&c| c == 0)
        .ok_or("missing string terminator")?;
    let s = b.split_to(nul);
    b.advance(1);
    Ok(s)
}

fn take_i32(b: &mut Bytes) -> Result<i32, String> {
    if b.len() < 4 {
        return Err("message too short".into());
    }
    Ok(b.get_i32())
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Default)]
pub(crate) struct ErrorFields {
    severity: Option<String>,
    severity_nonlocalized: Option<String>,
    code: Option<String>,
    message: Option<String>,
    detail: Option<String>,
    hint: Option<String>,
}

pub(crate) fn parse_error_fields(mut body: Bytes) -> Result<ErrorFields, String> {
    let mut f = ErrorFields::default();
    loop {
        if body.is_empty() {
            return Err("error fields without terminator".into());
        }
        let code = body.get_u8();
        if code == 0 {
            return Ok(f);
        }
        let v = lossy(&take_cstr(&mut body)?);
        match code {
            b'S' => f.severity = Some(v),
            b'V' => f.severity_nonlocalized = Some(v),
            b'C' => f.code = Some(v),
            b'M' => f.message = Some(v),
            b'D' => f.detail = Some(v),
            b'H' => f.hint = Some(v),
            _ => {}
        }
    }
}

impl ErrorFields {
    fn into_error(self) -> ClientError {
        ClientError::Server {
            severity: self
                .severity_nonlocalized
                .or(self.severity)
                .unwrap_or_else(|| "ERROR".into()),
            code: self.code.unwrap_or_else(|| "XX000".into()),
            message: self.message.unwrap_or_default(),
            detail: self.detail,
            hint: self.hint,
        }
    }
}

pub(crate) fn parse_data_row(mut body: Bytes) -> Result<Vec<Option<Bytes>>, String> {
    if body.len() < 2 {
        return Err("DataRow too short".into());
    }
    let n = body.get_i16();
    if n < 0 {
        return Err(format!("DataRow with {n} columns"));
    }
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = take_i32(&mut body)?;
        if len == -1 {
            row.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| format!("DataRow column length {len}"))?;
        if body.len() < len {
            return Err("DataRow column runs past the message".into());
        }
        row.push(Some(body.split_to(len)));
    }
    if !body.is_empty() {
        return Err("data after the last DataRow column".into());
    }
    Ok(row)
}

fn text_row(row: Vec<Option<Bytes>>) -> Vec<Option<String>> {
    row.into_iter().map(|v| v.map(|b| lossy(&b))).collect()
}

// ---------------------------------------------------------------------------
// Streams

type TlsStream = MaybeTls<TcpStream>;

enum ReadStream {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

enum WriteStream {
    Tcp(tcp::OwnedWriteHalf),
    Unix(unix::OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

impl ReadStream {
    async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            ReadStream::Tcp(s) => s.read_buf(buf).await,
            ReadStream::Unix(s) => s.read_buf(buf).await,
            ReadStream::Tls(s) => s.read_buf(buf).await,
        }
    }
}

impl WriteStream {
    async fn write_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            WriteStream::Tcp(s) => s.write_buf(buf).await,
            WriteStream::Unix(s) => s.write_buf(buf).await,
            WriteStream::Tls(s) => s.write_buf(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            WriteStream::Tcp(s) => s.flush().await,
            WriteStream::Unix(s) => s.flush().await,
            WriteStream::Tls(s) => s.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            WriteStream::Tcp(s) => s.shutdown().await,
            WriteStream::Unix(s) => s.shutdown().await,
            WriteStream::Tls(s) => s.shutdown().await,
        }
    }
}

/// Where the reader is in the protocol: what it may expect next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// ReadyForQuery seen: nothing more will come unasked.
    Idle,
    /// A query is in flight and its ReadyForQuery has not been read.
    Busy,
    /// CopyBoth: CopyData flows until either side sends CopyDone.
    Copy,
}

/// What [`PgReader::recv_copy`] hands back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyMessage {
    /// A CopyData body (for replication, decode it with
    /// [`ServerReplMessage::decode`](super::replication::ServerReplMessage::decode)).
    Data(Bytes),
    /// The server has ended its side of the COPY. What follows is the
    /// command's trail: rows (e.g. next timeline and its start position at
    /// the end of a timeline), CommandComplete(s) and ReadyForQuery — read
    /// them with more `recv_copy` calls, after answering with CopyDone.
    Done,
    /// A row of a result set sent after the COPY, in text.
    Row(Vec<Option<String>>),
    /// A CommandComplete tag (e.g. `START_STREAMING`).
    CommandComplete(String),
    /// The command is over; the connection takes queries again.
    ReadyForQuery,
}

/// The receiving half of a connection.
pub struct PgReader {
    stream: ReadStream,
    buf: BytesMut,
    phase: Phase,
    addr: Arc<str>,
    params: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
}

/// The sending half of a connection. Sends queue bytes in a buffer; nothing
/// reaches the server until [`PgWriter::flush`].
pub struct PgWriter {
    stream: WriteStream,
    buf: BytesMut,
    addr: Arc<str>,
}

/// A connection to a PostgreSQL server (or a safekeeper).
pub struct PgClient {
    reader: PgReader,
    writer: PgWriter,
}

impl PgReader {
    fn protocol(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.to_string(),
            reason: reason.into(),
        }
    }

    /// The next whole message from the socket. Cancel-safe: bytes read stay
    /// in `buf`, and a frame leaves `buf` only whole.
    async fn read_frame(&mut self, context: &'static str) -> Result<Frame, ClientError> {
        loop {
            match parse_frame(&mut self.buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(reason) => return Err(self.protocol(reason)),
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| ClientError::Io {
                    addr: self.addr.to_string(),
                    context,
                    source,
                })?;
            if n == 0 {
                return Err(ClientError::Closed {
                    addr: self.addr.to_string(),
                    context,
                });
            }
        }
    }

    /// The next message that is not asynchronous (ParameterStatus,
    /// NoticeResponse, NotificationResponse are absorbed here). Cancel-safe:
    /// absorbing is synchronous.
    async fn next_message(&mut self, context: &'static str) -> Result<Frame, ClientError> {
        loop {
            let f = self.read_frame(context).await?;
            match f.tag {
                b'S' => {
                    let mut b = f.body;
                    let parsed = take_cstr(&mut b).and_then(|k| Ok((k, take_cstr(&mut b)?)));
                    let (k, v) =
                        parsed.map_err(|e| self.protocol(format!("ParameterStatus: {e}")))?;
                    self.params.insert(lossy(&k), lossy(&v));
                }
                b'N' => {
                    if let Ok(n) = parse_error_fields(f.body) {
                        tracing::info!(
                            server = %self.addr,
                            severity = %n.severity_nonlocalized.or(n.severity).unwrap_or_default(),
                            code = %n.code.unwrap_or_default(),
                            "server notice: {}",
                            n.message.unwrap_or_default()
                        );
                    }
                }
                b'A' => {}
                _ => return Ok(f),
            }
        }
    }

    fn server_error(&self, body: Bytes) -> ClientError {
        match parse_error_fields(body) {
            Ok(f) => f.into_error(),
            Err(e) => self.protocol(format!("ErrorResponse: {e}")),
        }
    }

    /// Reads up to and including ReadyForQuery, discarding everything: the
    /// remains of a command whose error was already reported.
    async fn drain_to_ready(&mut self) -> Result<(), ClientError> {
        while self.phase != Phase::Idle {
            let f = self.next_message("draining to ReadyForQuery").await?;
            if f.tag == b'Z' {
                self.phase = Phase::Idle;
            }
        }
        Ok(())
    }

    /// Makes sure no earlier command is still in flight before a new one.
    async fn ready_for_query(&mut self) -> Result<(), ClientError> {
        match self.phase {
            Phase::Idle => Ok(()),
            Phase::Busy => self.drain_to_ready().await,
            Phase::Copy => Err(ClientError::InvalidState(
                "the connection is in COPY mode: send CopyDone and read with recv_copy up to \
                 ReadyForQuery first"
                    .into(),
            )),
        }
    }

    /// Reads the results of a simple query up to ReadyForQuery: all rows of
    /// all result sets; the first ErrorResponse is returned after the drain.
    async fn read_results(
        &mut self,
        writer: &mut PgWriter,
    ) -> Result<Vec<Vec<Option<Bytes>>>, ClientError> {
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.next_message("reading query results").await?;
            match f.tag {
                b'T' | b'C' | b'I' => {}
                b'D' => rows.push(
                    parse_data_row(f.body).map_err(|e| self.protocol(format!("DataRow: {e}")))?,
                ),
                b'E' => {
                    let e = self.server_error(f.body);
                    error.get_or_insert(e);
                }
                b'Z' => {
                    self.phase = Phase::Idle;
                    return match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    };
                }
                // A COPY FROM STDIN: refuse it so the server ends the command.
                b'G' => {
                    frontend::copy_fail("COPY is not supported by simple_query", &mut writer.buf)
                        .map_err(|e| self.protocol(e.to_string()))?;
                    writer.flush().await?;
                }
                // COPY TO STDOUT: its data is dropped with the rest.
                b'H' | b'd' | b'c' => {}
                b'W' => {
                    self.phase = Phase::Copy;
                    return Err(ClientError::InvalidState(
                        "the query started CopyBoth: use start_copy_both".into(),
                    ));
                }
                t => {
                    return Err(self.protocol(format!(
                        "unexpected message type {:?} in query results",
                        t as char
                    )))
                }
            }
        }
    }

    /// Waits for CopyBothResponse after a query was sent.
    async fn read_copy_both_response(&mut self) -> Result<(), ClientError> {
        loop {
            let f = self.next_message("waiting for CopyBothResponse").await?;
            match f.tag {
                b'W' => {
                    self.phase = Phase::Copy;
                    return Ok(());
                }
                b'E' => {
                    let e = self.server_error(f.body);
                    self.drain_to_ready().await?;
                    return Err(e);
                }
                b'Z' => {
                    self.phase = Phase::Idle;
                    return Err(self
                        .protocol("the command completed without starting CopyBoth".to_string()));
                }
                b'T' | b'D' | b'C' | b'I' => {}
                t => {
                    return Err(self.protocol(format!(
                        "unexpected message type {:?} while waiting for CopyBothResponse",
                        t as char
                    )))
                }
            }
        }
    }

    /// The next message of a CopyBoth stream, or of the trail after it.
    ///
    /// Cancel-safe, so it can sit in a `tokio::select!`. An ErrorResponse
    /// (the server ending the stream with an error) is returned as
    /// [`ClientError::Server`]; the connection can take queries again once
    /// the rest of the command is drained, which the next query does.
    pub async fn recv_copy(&mut self) -> Result<CopyMessage, ClientError> {
        if self.phase == Phase::Idle {
            return Err(ClientError::InvalidState(
                "recv_copy: no COPY in progress".into(),
            ));
        }
        loop {
            let f = self.next_message("streaming").await?;
            return match f.tag {
                b'd' => Ok(CopyMessage::Data(f.body)),
                b'c' => {
                    self.phase = Phase::Busy;
                    Ok(CopyMessage::Done)
                }
                b'T' => continue,
                b'D' => parse_data_row(f.body)
                    .map(|r| CopyMessage::Row(text_row(r)))
                    .map_err(|e| self.protocol(format!("DataRow: {e}"))),
                b'C' => {
                    let mut b = f.body;
                    take_cstr(&mut b)
                        .map(|t| CopyMessage::CommandComplete(lossy(&t)))
                        .map_err(|e| self.protocol(format!("CommandComplete: {e}")))
                }
                b'Z' => {
                    self.phase = Phase::Idle;
                    Ok(CopyMessage::ReadyForQuery)
                }
                b'E' => {
                    self.phase = Phase::Busy;
                    Err(self.server_error(f.body))
                }
                t => Err(self.protocol(format!(
                    "unexpected message type {:?} while streaming",
                    t as char
                ))),
            };
        }
    }

    /// A ParameterStatus value the server reported (`server_version`,
    /// `integer_datetimes`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The server's process id and cancel key.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.backend_key
    }

    /// The address this connection was made to.
    pub fn address(&self) -> &str {
        &self.addr
    }
}

impl PgWriter {
    /// Queues a CopyData message.
    pub fn send_copy_data(&mut self, data: &[u8]) -> Result<(), ClientError> {
        frontend::CopyData::new(data)
            .map_err(|_| {
                ClientError::InvalidState(format!("CopyData of {} bytes is too large", data.len()))
            })?
            .write(&mut self.buf);
        Ok(())
    }

    /// Queues CopyDone: this side of the CopyBoth is over.
    pub fn send_copy_done(&mut self) {
        frontend::copy_done(&mut self.buf);
    }

    /// Queues a standby status update (`r`) stamped with the current time.
    pub fn send_status_update(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ClientError> {
        let mut b = BytesMut::with_capacity(super::replication::STANDBY_STATUS_UPDATE_LEN);
        super::replication::StandbyStatusUpdate {
            write_lsn: write,
            flush_lsn: flush,
            apply_lsn: apply,
            send_time: super::replication::pg_now(),
            reply_requested,
        }
        .encode(&mut b);
        self.send_copy_data(&b)
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Writes out everything queued. Cancel-safe: written bytes leave the
    /// buffer as they go, so a later call resumes where this one stopped.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        let io_err = |addr: &Arc<str>, source| ClientError::Io {
            addr: addr.to_string(),
            context: "writing",
            source,
        };
        while !self.buf.is_empty() {
            let n = self
                .stream
                .write_buf(&mut self.buf)
                .await
                .map_err(|e| io_err(&self.addr, e))?;
            if n == 0 {
                return Err(io_err(&self.addr, io::ErrorKind::WriteZero.into()));
            }
        }
        self.stream.flush().await.map_err(|e| io_err(&self.addr, e))
    }

    fn queue_query(&mut self, sql: &str) -> Result<(), ClientError> {
        frontend::query(sql, &mut self.buf)
            .map_err(|e| ClientError::InvalidState(format!("cannot send query: {e}")))
    }
}

/// Connect, and ask for TLS if `sslmode` (`tls`: this attempt's wish) says
/// so; never over a Unix socket, as libpq.
async fn open_stream(
    cfg: &ConnConfig,
    tls: SslMode,
) -> Result<(ReadStream, WriteStream, String), ClientError> {
    if cfg.hostaddr.is_none() && cfg.host.starts_with('/') {
        let path = cfg.unix_socket_path();
        let s = UnixStream::connect(&path)
            .await
            .map_err(|source| ClientError::Connect {
                addr: path.clone(),
                source,
            })?;
        let (r, w) = s.into_split();
        return Ok((ReadStream::Unix(r), WriteStream::Unix(w), path));
    }
    let addrs: Vec<SocketAddr> = match cfg.hostaddr {
        Some(a) => vec![SocketAddr::new(a, cfg.port)],
        None => tokio::net::lookup_host((cfg.host.as_str(), cfg.port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: cfg.address(),
                source,
            })?
            .collect(),
    };
    // Like libpq, try every address the name resolves to.
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => {
                s.set_nodelay(true).map_err(|source| ClientError::Connect {
                    addr: a.to_string(),
                    source,
                })?;
                if let Some(l) = &cfg.tcp_liveness {
                    l.apply(&s).map_err(|source| ClientError::Connect {
                        addr: a.to_string(),
                        source,
                    })?;
                }
                let name = if cfg.hostaddr.is_some() || cfg.host == a.ip().to_string() {
                    a.to_string()
                } else {
                    format!("{} ({a})", cfg.address())
                };
                let s = crate::tls::client::start_tls(tls, &cfg.tls_keys, &cfg.host, s)
                    .await
                    .map_err(|e| match e {
                        crate::tls::client::StartTlsError::Config(e) => {
                            ClientError::Config(e.to_string())
                        }
                        e => ClientError::Tls {
                            addr: name.clone(),
                            reason: e.to_string(),
                        },
                    })?;
                return Ok(match s {
                    MaybeTls::Plain(s) => {
                        let (r, w) = s.into_split();
                        (ReadStream::Tcp(r), WriteStream::Tcp(w), name)
                    }
                    tls => {
                        let (r, w) = tokio::io::split(tls);
                        (ReadStream::Tls(r), WriteStream::Tls(w), name)
                    }
                });
            }
            Err(e) => last = Some((a, e)),
        }
    }
    Err(match last {
        Some((a, source)) => ClientError::Connect {
            addr: format!("{} ({a})", cfg.address()),
            source,
        },
        None => ClientError::Connect {
            addr: cfg.address(),
            source: io::Error::new(io::ErrorKind::NotFound, "the host name resolved to nothing"),
        },
    })
}

/// `IDENTIFY_SYSTEM`'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: u64,
    pub timeline: u32,
    pub xlogpos: Lsn,
    /// `None` on a physical replication connection.
    pub dbname: Option<String>,
}

/// `READ_REPLICATION_SLOT`'s answer for a slot that exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationSlotInfo {
    /// `physical` (or `logical`).
    pub slot_type: String,
    /// `None` for a physical slot that has not reserved WAL yet.
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<u32>,
}

/// Slot names as PostgreSQL allows them (`ReplicationSlotValidateName`),
/// which also makes them safe to splice into a command.
fn check_slot_name(name: &str) -> Result<(), ClientError> {
    let ok = !name.is_empty()
        && name.len() < 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ClientError::InvalidState(format!(
            "invalid replication slot name \"{name}\": use at most 63 lower case letters, \
             digits and underscores"
        )))
    }
}

/// Parses a `SHOW wal_segment_size` value such as `16MB` or `1GB`.
pub fn parse_wal_segment_size(v: &str) -> Option<u32> {
    let v = v.trim();
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let n: u64 = v.get(..digits)?.parse().ok()?;
    let mult: u64 = match v.get(digits..)?.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    let size = u32::try_from(n.checked_mul(mult)?).ok()?;
    is_valid_wal_seg_size(size).then_some(size)
}

impl PgClient {
    /// Connects and authenticates, over TLS as `sslmode` says. `allow`
    /// tries in clear first and again over TLS if the server refuses that.
    ///
    /// `replication` asks for a physical walsender (`replication=true`);
    /// `extra_options` is appended to the configured `options` (e.g.
    /// `-c timeline_id=...` for a safekeeper). `connect_timeout` bounds the
    /// whole thing, authentication included.
    pub async fn connect(
        cfg: &ConnConfig,
        replication: bool,
        extra_options: &str,
    ) -> Result<PgClient, ClientError> {
        let fut = async {
            match cfg.sslmode {
                SslMode::Allow => {
                    match Self::connect_inner(cfg, replication, extra_options, SslMode::Disable)
                        .await
                    {
                        Err(e) if e.is_server_error() => {
                            Self::connect_inner(cfg, replication, extra_options, SslMode::Require)
                                .await
                        }
                        other => other,
                    }
                }
                mode => Self::connect_inner(cfg, replication, extra_options, mode).await,
            }
        };
        match cfg.connect_timeout {
            Some(timeout) => tokio::time::timeout(timeout, fut).await.map_err(|_| {
                ClientError::ConnectTimeout {
                    addr: cfg.address(),
                    timeout,
                }
            })?,
            None => fut.await,
        }
    }

    async fn connect_inner(
        cfg: &ConnConfig,
        replication: bool,
        extra_options: &str,
        tls: SslMode,
    ) -> Result<PgClient, ClientError> {
        let (r, w, addr) = open_stream(cfg, tls).await?;
        let addr: Arc<str> = addr.into();
        let mut client = PgClient {
            reader: PgReader {
                stream: r,
                buf: BytesMut::with_capacity(READ_CHUNK),
                phase: Phase::Busy,
                addr: addr.clone(),
                params: HashMap::new(),
                backend_key: None,
            },
            writer: PgWriter {
                stream: w,
                buf: BytesMut::new(),
                addr,
            },
        };
        let options = [cfg.options.as_deref().unwrap_or(""), extra_options]
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        // Physical walsenders ignore the database; PostgreSQL's own clients
        // send "replication", so do the same for identical server logs.
        let database = cfg
            .dbname
            .clone()
            .or_else(|| replication.then(|| "replication".to_string()));
        let mut params: Vec<(&str, &str)> = vec![("user", &cfg.user), ("client_encoding", "UTF8")];
        if let Some(db) = &database {
            params.push(("database", db));
        }
        if let Some(app) = &cfg.application_name {
            params.push(("application_name", app));
        }
        if replication {
            params.push(("replication", "true"));
        }
        if !options.is_empty() {
            params.push(("options", &options));
        }
        frontend::startup_message(params, &mut client.writer.buf)
            .map_err(|e| ClientError::Config(format!("cannot encode the startup packet: {e}")))?;
        client.writer.flush().await?;
        let database = database.as_deref().unwrap_or(&cfg.user);
        client.authenticate(cfg, database).await?;
        client.finish_startup().await?;
        Ok(client)
    }

    fn auth_error(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Auth {
            addr: self.reader.addr.to_string(),
            reason: reason.into(),
        }
    }

    /// The password: given, or from the password file for this host,
    /// port, `database` (as sent in the startup packet) and user.
    fn password(&self, cfg: &ConnConfig, database: &str) -> Result<String, ClientError> {
        if let Some(p) = &cfg.password {
            return Ok(p.clone());
        }
        let host = match &cfg.host {
            h if h.starts_with('/') => "localhost",
            h => h.as_str(),
        };
        let target = super::passfile::Target {
            host,
            port: cfg.port,
            database,
            user: &cfg.user,
        };
        cfg.passfile
            .as_deref()
            .and_then(|path| super::passfile::lookup(path, target))
            .ok_or_else(|| {
                self.auth_error(format!(
                    "the server requested password authentication for user \"{}\" but no password \
                     was supplied (set password=, PGPASSWORD or a line in the password file{})",
                    cfg.user,
                    cfg.passfile
                        .as_deref()
                        .map(|p| format!(" {}", p.display()))
                        .unwrap_or_default()
                ))
            })
    }

    async fn authenticate(&mut self, cfg: &ConnConfig, database: &str) -> Result<(), ClientError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.reader.next_message("authenticating").await?;
            let mut body = f.body;
            match f.tag {
                b'R' => {}
                b'E' => return Err(self.reader.server_error(body)),
                // Only sent if we asked for a newer minor or _pq_ options,
                // which we never do; harmless either way.
                b'v' => continue,
                t => {
                    return Err(self.reader.protocol(format!(
                        "unexpected message type {:?} during authentication",
                        t as char
                    )))
                }
            }
            let code = take_i32(&mut body)
                .map_err(|e| self.reader.protocol(format!("Authentication: {e}")))?;
            // Encoded aside so the error helpers can borrow `self`.
            let mut msg = BytesMut::new();
            let out = &mut msg;
            match code {
                0 => return Ok(()),
                3 => {
                    let pw = self.password(cfg, database)?;
                    frontend::password_message(pw.as_bytes(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                }
                5 => {
                    let pw = self.password(cfg, database)?;
                    let salt: [u8; 4] = body[..]
                        .try_into()
                        .map_err(|_| self.reader.protocol("md5 request without a 4-byte salt"))?;
                    let hash = md5_hash(cfg.user.as_bytes(), pw.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                }
                10 => {
                    let pw = self.password(cfg, database)?;
                    let mut mechanisms = Vec::new();
                    while !body.is_empty() {
                        let m = take_cstr(&mut body)
                            .map_err(|e| self.reader.protocol(format!("SASL: {e}")))?;
                        if m.is_empty() {
                            break;
                        }
                        mechanisms.push(lossy(&m));
                    }
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(self.auth_error(format!(
                            "the server offers SASL mechanisms {mechanisms:?}; only SCRAM-SHA-256 \
                             without channel binding is supported"
                        )));
                    }
                    // "n": we do not support channel binding (no TLS).
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                    scram = Some(s);
                }
                11 => {
                    let Some(s) = scram.as_mut() else {
                        return Err(self.reader.protocol("SASLContinue before SASL"));
                    };
                    if let Err(e) = s.update(&body) {
                        return Err(self.auth_error(format!("SCRAM: {e}")));
                    }
                    frontend::sasl_response(s.message(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                }
                12 => {
                    let Some(mut s) = scram.take() else {
                        return Err(self.reader.protocol("SASLFinal before SASL"));
                    };
                    if let Err(e) = s.finish(&body) {
                        return Err(
                            self.auth_error(format!("SCRAM server signature rejected: {e}"))
                        );
                    }
                    continue;
                }
                2 => return Err(self.auth_error("Kerberos V5 authentication is not supported")),
                6 => return Err(self.auth_error("SCM credentials authentication is not supported")),
                7 | 8 => return Err(self.auth_error("GSSAPI authentication is not supported")),
                9 => return Err(self.auth_error("SSPI authentication is not supported")),
                c => return Err(self.auth_error(format!("unknown authentication request {c}"))),
            }
            self.writer.buf.extend_from_slice(&msg);
            self.writer.flush().await?;
        }
    }

    async fn finish_startup(&mut self) -> Result<(), ClientError> {
        loop {
            let f = self.reader.next_message("starting the session").await?;
            let mut body = f.body;
            match f.tag {
                b'K' => {
                    let pid = take_i32(&mut body);
                    let key = take_i32(&mut body);
                    if let (Ok(pid), Ok(key)) = (pid, key) {
                        self.reader.backend_key = Some((pid, key));
                    }
                }
                b'Z' => {
                    self.reader.phase = Phase::Idle;
                    return Ok(());
                }
                b'E' => return Err(self.reader.server_error(body)),
                b'v' => {}
                t => {
                    return Err(self.reader.protocol(format!(
                        "unexpected message type {:?} during startup",
                        t as char
                    )))
                }
            }
        }
    }

    /// A ParameterStatus value the server reported.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.reader.parameter(name)
    }

    /// The server's process id and cancel key.
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.reader.backend_key
    }

    pub fn address(&self) -> &str {
        self.reader.address()
    }

    /// Runs a simple query; all rows of all its result sets, as text (bytes
    /// that are not UTF-8 are replaced). On an ErrorResponse the results are
    /// drained to ReadyForQuery before the error is returned, so the
    /// connection stays usable.
    ///
    /// Multiple statements' rows are concatenated. A command left over from
    /// an earlier error (e.g. a stream that ended in an ErrorResponse) is
    /// drained first; a COPY still open is refused rather than drained, as
    /// draining it would wait for our own CopyDone. (After the server's
    /// CopyDone, send ours before the next query: that is not checked.)
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ClientError> {
        Ok(self
            .simple_query_raw(sql)
            .await?
            .into_iter()
            .map(text_row)
            .collect())
    }

    /// [`PgClient::simple_query`] with the column values as sent.
    pub async fn simple_query_raw(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<Bytes>>>, ClientError> {
        self.reader.ready_for_query().await?;
        self.writer.queue_query(sql)?;
        self.writer.flush().await?;
        self.reader.phase = Phase::Busy;
        self.reader.read_results(&mut self.writer).await
    }

    /// Sends a query that answers with CopyBothResponse (`START_REPLICATION`,
    /// `START_WAL_PUSH`) and waits for it. An ErrorResponse before it (e.g.
    /// SQLSTATE 55006, the slot is in use) is returned as the server error,
    /// with the connection still usable.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), ClientError> {
        self.reader.ready_for_query().await?;
        self.writer.queue_query(sql)?;
        self.writer.flush().await?;
        self.reader.phase = Phase::Busy;
        self.reader.read_copy_both_response().await
    }

    /// See [`PgReader::recv_copy`]. Cancel-safe.
    pub async fn recv_copy(&mut self) -> Result<CopyMessage, ClientError> {
        self.reader.recv_copy().await
    }

    /// Queues a CopyData message; see [`PgClient::flush`].
    pub fn send_copy_data(&mut self, data: &[u8]) -> Result<(), ClientError> {
        self.writer.send_copy_data(data)
    }

    /// Queues a standby status update (`r`).
    pub fn send_status_update(
        &mut self,
        write: Lsn,
        flush: Lsn,
        apply: Lsn,
        reply_requested: bool,
    ) -> Result<(), ClientError> {
        self.writer
            .send_status_update(write, flush, apply, reply_requested)
    }

    /// Queues CopyDone.
    pub fn send_copy_done(&mut self) {
        self.writer.send_copy_done()
    }

    /// Writes out what is queued. Cancel-safe.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.writer.flush().await
    }

    /// Independent halves, for streaming in one task while another sends.
    pub fn into_split(self) -> (PgReader, PgWriter) {
        (self.reader, self.writer)
    }

    /// The client again, from the halves of one [`PgClient::into_split`].
    pub fn reunite(reader: PgReader, writer: PgWriter) -> Result<PgClient, ClientError> {
        if !Arc::ptr_eq(&reader.addr, &writer.addr) {
            return Err(ClientError::InvalidState(
                "reunite: the halves come from different connections".into(),
            ));
        }
        Ok(PgClient { reader, writer })
    }

    /// Sends Terminate and closes the connection.
    pub async fn close(mut self) -> Result<(), ClientError> {
        frontend::terminate(&mut self.writer.buf);
        self.writer.flush().await?;
        let _ = self.writer.stream.shutdown().await;
        Ok(())
    }

    /// The first row of a single-row result, with at least `cols` columns.
    async fn one_row(&mut self, sql: &str, cols: usize) -> Result<Vec<Option<Bytes>>, ClientError> {
        let mut rows = self.simple_query_raw(sql).await?;
        if rows.len() != 1 || rows[0].len() < cols {
            return Err(self.reader.protocol(format!(
                "{sql}: expected 1 row of {cols} columns, got {} row(s) of {}",
                rows.len(),
                rows.first().map_or(0, Vec::len)
            )));
        }
        Ok(rows.swap_remove(0))
    }

    fn field<T: std::str::FromStr>(
        &self,
        what: &str,
        v: &Option<Bytes>,
    ) -> Result<Option<T>, ClientError> {
        let Some(b) = v else { return Ok(None) };
        let s = std::str::from_utf8(b)
            .map_err(|_| self.reader.protocol(format!("{what}: not UTF-8")))?;
        s.parse()
            .map(Some)
            .map_err(|_| self.reader.protocol(format!("{what}: cannot parse {s:?}")))
    }

    fn required<T: std::str::FromStr>(
        &self,
        what: &str,
        v: &Option<Bytes>,
    ) -> Result<T, ClientError> {
        self.field(what, v)?
            .ok_or_else(|| self.reader.protocol(format!("{what} is NULL")))
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ClientError> {
        let row = self.one_row("IDENTIFY_SYSTEM", 4).await?;
        Ok(IdentifySystem {
            system_id: self.required("IDENTIFY_SYSTEM systemid", &row[0])?,
            timeline: self.required("IDENTIFY_SYSTEM timeline", &row[1])?,
            xlogpos: self.required("IDENTIFY_SYSTEM xlogpos", &row[2])?,
            dbname: self.field("IDENTIFY_SYSTEM dbname", &row[3])?,
        })
    }

    /// `SHOW name` (a setting name: letters, digits, `_` and `.`).
    pub async fn show(&mut self, name: &str) -> Result<String, ClientError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(ClientError::InvalidState(format!(
                "invalid setting name \"{name}\""
            )));
        }
        let row = self.one_row(&format!("SHOW {name}"), 1).await?;
        self.required(name, &row[0])
    }

    /// `SHOW wal_segment_size`, in bytes.
    pub async fn wal_segment_size(&mut self) -> Result<u32, ClientError> {
        let v = self.show("wal_segment_size").await?;
        parse_wal_segment_size(&v).ok_or_else(|| {
            self.reader
                .protocol(format!("invalid wal_segment_size {v:?}"))
        })
    }

    /// `READ_REPLICATION_SLOT`: `None` if there is no such slot.
    pub async fn read_replication_slot(
        &mut self,
        name: &str,
    ) -> Result<Option<ReplicationSlotInfo>, ClientError> {
        check_slot_name(name)?;
        let row = self
            .one_row(&format!("READ_REPLICATION_SLOT \"{name}\""), 3)
            .await?;
        let Some(slot_type) = self.field::<String>("slot_type", &row[0])? else {
            return Ok(None);
        };
        Ok(Some(ReplicationSlotInfo {
            slot_type,
            restart_lsn: self.field("restart_lsn", &row[1])?,
            restart_tli: self.field("restart_tli", &row[2])?,
        }))
    }

    /// `CREATE_REPLICATION_SLOT "name" PHYSICAL [(RESERVE_WAL)]`. The answer's
    /// `consistent_point` is not returned: for a physical slot PostgreSQL 15
    /// reports 0/0 there (it is a logical slot's field), so read the restart
    /// LSN with [`PgClient::read_replication_slot`].
    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        reserve_wal: bool,
    ) -> Result<(), ClientError> {
        check_slot_name(name)?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT \"{name}\" PHYSICAL{}",
            if reserve_wal { " (RESERVE_WAL)" } else { "" }
        );
        self.one_row(&sql, 2).await.map(drop)
    }

    /// `DROP_REPLICATION_SLOT "name" [WAIT]`.
    pub async fn drop_replication_slot(
        &mut self,
        name: &str,
        wait: bool,
    ) -> Result<(), ClientError> {
        check_slot_name(name)?;
        let sql = format!(
            "DROP_REPLICATION_SLOT \"{name}\"{}",
            if wait { " WAIT" } else { "" }
        );
        self.simple_query_raw(&sql).await.map(drop)
    }

    /// `TIMELINE_HISTORY tli`: the history file's name and its bytes.
    pub async fn timeline_history(&mut self, tli: u32) -> Result<(String, Bytes), ClientError> {
        let row = self.one_row(&format!("TIMELINE_HISTORY {tli}"), 2).await?;
        let filename: String = self.required("TIMELINE_HISTORY filename", &row[0])?;
        let content = row[1]
            .clone()
            .ok_or_else(|| self.reader.protocol("TIMELINE_HISTORY content is NULL"))?;
        Ok((filename, content))
    }

    /// `START_REPLICATION [SLOT "s"] PHYSICAL X/X [TIMELINE n]`, waiting for
    /// CopyBothResponse.
    pub async fn start_physical_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: Option<u32>,
    ) -> Result<(), ClientError> {
        let mut sql = String::from("START_REPLICATION ");
        if let Some(s) = slot {
            check_slot_name(s)?;
            sql.push_str(&format!("SLOT \"{s}\" "));
        }
        sql.push_str(&format!("PHYSICAL {start}"));
        if let Some(t) = timeline {
            sql.push_str(&format!(" TIMELINE {t}"));
        }
        self.start_copy_both(&sql).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use tokio::net::TcpListener;

    fn env_none(_: &str) -> Option<String> {
        None
    }

    fn parse(s: &str) -> ConnConfig {
        ConnConfig::parse_with_env(s, env_none).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn parse_err(s: &str) -> String {
        ConnConfig::parse_with_env(s, env_none)
            .expect_err(s)
            .to_string()
    }

    #[test]
    fn keyword_value_defaults() {
        let c = parse("");
        assert_eq!(c, ConnConfig::default());
        assert_eq!(c.host, "localhost");
        assert_eq!(c.port, 5432);
        assert_eq!(c.user, "postgres");
        assert_eq!(c.password, None);
        assert_eq!(c.sslmode, SslMode::Prefer);
    }

    #[test]
    fn keyword_value_all_keys() {
        let c = parse(
            "host=db.example hostaddr=10.0.0.5 port=5433 user=repl password=s3cret \
             dbname=postgres application_name=safekeeper_proxy \
             options='-c wal_sender_timeout=5s' connect_timeout=10 sslmode=disable",
        );
        assert_eq!(c.host, "db.example");
        assert_eq!(c.hostaddr, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(c.port, 5433);
        assert_eq!(c.user, "repl");
        assert_eq!(c.password.as_deref(), Some("s3cret"));
        assert_eq!(c.dbname.as_deref(), Some("postgres"));
        assert_eq!(c.application_name.as_deref(), Some("safekeeper_proxy"));
        assert_eq!(c.options.as_deref(), Some("-c wal_sender_timeout=5s"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.address(), "10.0.0.5:5433");
        // the password stays out of Debug output
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn keyword_value_quoting_and_escapes() {
        let c = parse(r"  password = 'it\'s a \\ pw'   user=a\ b  options = ''  ");
        assert_eq!(c.password.as_deref(), Some(r"it's a \ pw"));
        assert_eq!(c.user, "a b");
        assert_eq!(c.options, None, "an empty value means unset");
        let c = parse("host='' port = 6000");
        assert_eq!(c.host, "localhost");
        assert_eq!(c.port, 6000);
        let c = parse("password=''");
        assert_eq!(c.password.as_deref(), Some(""));
    }

    #[test]
    fn keyword_value_errors() {
        assert!(parse_err("host").contains("missing \"=\" after \"host\""));
        assert!(parse_err("host=a port").contains("missing \"=\""));
        assert!(parse_err("password='abc").contains("unterminated"));
        assert!(parse_err("bogus=1").contains("invalid connection option \"bogus\""));
        assert!(parse_err("port=0").contains("invalid port"));
        assert!(parse_err("port=70000").contains("invalid port"));
        assert!(parse_err("port=x").contains("invalid port"));
        assert!(parse_err("hostaddr=db.example").contains("hostaddr"));
        assert!(parse_err("connect_timeout=soon").contains("connect_timeout"));
        assert!(parse_err("sslmode=sometimes").contains("invalid sslmode"));
        assert!(parse_err("channel_binding=require").contains("channel binding"));
        assert!(parse_err("gssencmode=require").contains("GSSAPI"));
    }

    #[test]
    fn keyword_value_accepts_ssl_modes_and_keys_and_ignored_keys() {
        assert_eq!(parse("sslmode=allow").sslmode, SslMode::Allow);
        assert_eq!(parse("sslmode=prefer").sslmode, SslMode::Prefer);
        assert_eq!(parse("sslmode=require").sslmode, SslMode::Require);
        assert_eq!(parse("sslmode=verify-ca").sslmode, SslMode::VerifyCa);
        let c = parse("sslmode=verify-full sslrootcert=/ca.crt sslcert=/c.crt sslkey=/c.key");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(
            c.tls_keys,
            TlsKeys {
                sslrootcert: Some("/ca.crt".into()),
                sslcert: Some("/c.crt".into()),
                sslkey: Some("/c.key".into()),
            }
        );
        let c = parse("keepalives=1 target_session_attrs=any gssencmode=disable");
        assert_eq!(c.host, "localhost");
    }

    #[test]
    fn multi_host_takes_the_first() {
        let c = parse("host=a.example,b.example port=5433,5434 hostaddr=127.0.0.2,127.0.0.3");
        assert_eq!(c.host, "a.example");
        assert_eq!(c.port, 5433);
        assert_eq!(c.hostaddr, Some("127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn connect_timeout_follows_libpq() {
        assert_eq!(parse("connect_timeout=0").connect_timeout, None);
        assert_eq!(parse("connect_timeout=-3").connect_timeout, None);
        assert_eq!(
            parse("connect_timeout=1").connect_timeout,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn environment_defaults() {
        let env = |name: &str| match name {
            "PGUSER" => Some("envuser".to_string()),
            "PGPASSWORD" => Some("envpw".to_string()),
            "PGPORT" => Some("6543".to_string()),
            "PGHOST" => Some("envhost".to_string()),
            _ => None,
        };
        let c = ConnConfig::parse_with_env("application_name=x", env).unwrap();
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password.as_deref(), Some("envpw"));
        assert_eq!(c.port, 6543);
        assert_eq!(c.host, "envhost");
        // the string wins over the environment
        let c = ConnConfig::parse_with_env("user=u password=p port=1 host=h", env).unwrap();
        assert_eq!((c.user.as_str(), c.password.as_deref()), ("u", Some("p")));
        assert_eq!((c.host.as_str(), c.port), ("h", 1));
        let tls = |name: &str| match name {
            "PGSSLMODE" => Some("verify-full".to_string()),
            "PGSSLROOTCERT" => Some("/ca.crt".to_string()),
            _ => None,
        };
        let c = ConnConfig::parse_with_env("", tls).unwrap();
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.tls_keys.sslrootcert, Some("/ca.crt".into()));
        let bad = |name: &str| (name == "PGSSLMODE").then(|| "always".to_string());
        assert!(ConnConfig::parse_with_env("", bad).is_err());
    }

    #[test]
    fn uris() {
        let c = parse("postgresql://repl:p%40ss@db.example:5433/postgres?application_name=x&connect_timeout=5");
        assert_eq!(c.user, "repl");
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 5433);
        assert_eq!(c.dbname.as_deref(), Some("postgres"));
        assert_eq!(c.application_name.as_deref(), Some("x"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(5)));

        let c = parse("postgres://");
        assert_eq!(c, ConnConfig::default());
        let c = parse("postgresql://u@h");
        assert_eq!((c.user.as_str(), c.host.as_str(), c.port), ("u", "h", 5432));
        assert_eq!(c.password, None);
        let c = parse("postgresql://[::1]:6000/db");
        assert_eq!((c.host.as_str(), c.port), ("::1", 6000));
        assert_eq!(c.address(), "[::1]:6000");
        let c = parse("postgresql://h1:1,h2:2/db");
        assert_eq!((c.host.as_str(), c.port), ("h1", 1));
        let c = parse("postgresql:///db?host=%2Ftmp&port=7000&options=-c%20a%3Db");
        assert_eq!(c.host, "/tmp");
        assert_eq!(c.address(), "/tmp/.s.PGSQL.7000");
        assert_eq!(c.options.as_deref(), Some("-c a=b"));
        let c = parse("postgresql://h?sslmode=disable");
        assert_eq!(c.sslmode, SslMode::Disable);

        assert_eq!(parse("postgresql://h?ssl=true").sslmode, SslMode::Require);
        assert_eq!(
            parse("postgresql://h?sslmode=verify-ca").sslmode,
            SslMode::VerifyCa
        );
        assert!(parse_err("postgresql://h?bogus=1").contains("bogus"));
        assert!(parse_err("postgresql://h?novalue").contains("separator"));
        assert!(parse_err("postgresql://h/%zz").contains("percent"));
        assert!(parse_err("postgresql://h/%00").contains("%00"));
        assert!(parse_err("postgresql://[::1/db").contains("]"));
        assert!(parse_err("postgresql://h:port/db").contains("invalid port"));
    }

    #[test]
    fn wal_segment_sizes() {
        assert_eq!(parse_wal_segment_size("16MB"), Some(16 << 20));
        assert_eq!(parse_wal_segment_size("1MB"), Some(1 << 20));
        assert_eq!(parse_wal_segment_size("1GB"), Some(1 << 30));
        assert_eq!(parse_wal_segment_size("65536kB"), Some(64 << 20));
        for bad in [
            "",
            "MB",
            "3MB",
            "2GB",
            "16 TB",
            "16mb",
            "-16MB",
            "99999999999999999999MB",
        ] {
            assert_eq!(parse_wal_segment_size(bad), None, "{bad}");
        }
    }

    #[test]
    fn slot_names_are_checked() {
        assert!(check_slot_name("safekeeper_proxy_1").is_ok());
        for bad in ["", "Upper", "a-b", "a\"b", &"x".repeat(64)] {
            assert!(check_slot_name(bad).is_err(), "{bad}");
        }
    }

    fn be(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![tag];
        b.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn frames_need_whole_messages_and_sane_lengths() {
        let msg = be(b'Z', b"I");
        for cut in 0..msg.len() {
            let mut b = BytesMut::from(&msg[..cut]);
            assert_eq!(parse_frame(&mut b).unwrap(), None);
            assert_eq!(b.len(), cut);
        }
        let mut b = BytesMut::from(&msg[..]);
        let f = parse_frame(&mut b).unwrap().unwrap();
        assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
        for len in [i32::MIN, -1, 0, 3] {
            let mut b = BytesMut::new();
            b.put_u8(b'E');
            b.put_i32(len);
            assert!(parse_frame(&mut b).is_err());
        }
        let mut b = BytesMut::new();
        b.put_u8(b'E');
        b.put_i32(MAX_MESSAGE_LEN as i32 + 1);
        assert!(parse_frame(&mut b).is_err());
        let mut b = BytesMut::new();
        b.put_u8(b'd');
        b.put_i32(i32::MAX);
        assert!(parse_frame(&mut b).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse_data_row(Bytes::from_static(b"\x00")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\xff\xff")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x01\x00\x00\x00\x05ab")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x01\xff\xff\xff\xfe")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x01\x00\x00")).is_err());
        assert!(parse_data_row(Bytes::from_static(b"\x00\x00x")).is_err());
        assert_eq!(
            parse_data_row(Bytes::from_static(
                b"\x00\x02\x00\x00\x00\x02ab\xff\xff\xff\xff"
            ))
            .unwrap(),
            vec![Some(Bytes::from_static(b"ab")), None]
        );
        assert!(parse_error_fields(Bytes::from_static(b"SERROR")).is_err());
        assert!(parse_error_fields(Bytes::from_static(b"SERROR\0")).is_err());
        let e = parse_error_fields(Bytes::from_static(
            b"SFEHLER\0VERROR\0C55006\0Mreplication slot \"s\" is active for PID 7\0Dd\0\0",
        ))
        .unwrap()
        .into_error();
        assert_eq!(e.sqlstate(), Some("55006"));
        assert_eq!(
            e.to_string(),
            "ERROR 55006: replication slot \"s\" is active for PID 7 (DETAIL: d)"
        );
    }

    /// A scripted server on loopback: the test drives it through the
    /// returned stream after accepting the client's startup packet.
    async fn scripted() -> (ConnConfig, tokio::task::JoinHandle<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let h = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let len = s.read_i32().await.unwrap();
            let mut startup = vec![0; len as usize - 4];
            s.read_exact(&mut startup).await.unwrap();
            let out = [
                be(b'R', &0i32.to_be_bytes()),
                be(b'S', b"server_version\x0015.18\x00"),
                be(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]),
                be(b'Z', b"I"),
            ]
            .concat();
            s.write_all(&out).await.unwrap();
            s
        });
        // This server does not answer an SSLRequest.
        let cfg = parse(&format!("host=127.0.0.1 port={port} sslmode=disable"));
        (cfg, h)
    }

    /// A client past its startup, and the scripted server's end of it.
    async fn connected(replication: bool) -> (PgClient, TcpStream) {
        let (cfg, h) = scripted().await;
        let c = PgClient::connect(&cfg, replication, "").await.unwrap();
        (c, h.await.unwrap())
    }

    async fn read_fe(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let tag = s.read_u8().await.unwrap();
        let len = s.read_i32().await.unwrap();
        let mut body = vec![0; len as usize - 4];
        s.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    /// The scripted server's side of a conversation: each message the client
    /// sends gets the next reply; the stream comes back once all are sent.
    fn serve(mut s: TcpStream, replies: Vec<Vec<u8>>) -> tokio::task::JoinHandle<TcpStream> {
        tokio::spawn(async move {
            for reply in replies {
                read_fe(&mut s).await;
                s.write_all(&reply).await.unwrap();
            }
            s
        })
    }

    /// An ErrorResponse with `sqlstate` and `message`, then ReadyForQuery.
    fn error_then_ready(sqlstate: &str, message: &str) -> Vec<u8> {
        let fields = format!("SERROR\0VERROR\0C{sqlstate}\0M{message}\0\0");
        [be(b'E', fields.as_bytes()), be(b'Z', b"I")].concat()
    }

    #[tokio::test]
    async fn recv_copy_is_cancel_safe() {
        let (mut c, mut s) = connected(true).await;
        assert_eq!(c.parameter("server_version"), Some("15.18"));
        assert_eq!(c.backend_key(), Some((7, 9)));
        let q = tokio::spawn(async move {
            let (tag, _) = read_fe(&mut s).await;
            assert_eq!(tag, b'Q');
            s.write_all(&be(b'W', b"\0\0\0")).await.unwrap();
            // One message, dribbled out a byte at a time.
            let msg = [
                be(b'd', b"hello"),
                be(b'c', b""),
                be(b'C', b"START_STREAMING\0"),
                be(b'Z', b"I"),
            ]
            .concat();
            for b in msg {
                s.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            s
        });
        c.start_copy_both("START_REPLICATION 0/0").await.unwrap();
        let mut got = Vec::new();
        let mut timeouts = 0;
        while got.last() != Some(&CopyMessage::ReadyForQuery) {
            tokio::select! {
                m = c.recv_copy() => got.push(m.unwrap()),
                _ = tokio::time::sleep(Duration::from_millis(1)) => timeouts += 1,
            }
        }
        assert!(timeouts > 0, "the select never cancelled a read");
        assert_eq!(
            got,
            vec![
                CopyMessage::Data(Bytes::from_static(b"hello")),
                CopyMessage::Done,
                CopyMessage::CommandComplete("START_STREAMING".into()),
                CopyMessage::ReadyForQuery,
            ]
        );
        assert!(matches!(
            c.recv_copy().await,
            Err(ClientError::InvalidState(_))
        ));
        drop(q.await.unwrap());
    }

    #[tokio::test]
    async fn errors_leave_the_connection_usable() {
        let (mut c, s) = connected(false).await;
        let server = serve(
            s,
            vec![
                // error in the middle of a result set
                [
                    be(
                        b'T',
                        b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0",
                    ),
                    be(b'D', b"\0\x01\0\0\0\x011"),
                    error_then_ready("22012", "division by zero"),
                ]
                .concat(),
                // error instead of CopyBothResponse
                error_then_ready("55006", "slot is active"),
                // error after CopyBothResponse, ReadyForQuery read by the next query
                [
                    be(b'W', b"\0\0\0"),
                    error_then_ready("XX000", "ahead of the WAL flush position"),
                ]
                .concat(),
                // a good query
                [
                    be(b'D', b"\0\x02\0\0\0\x02ok\xff\xff\xff\xff"),
                    be(b'C', b"SELECT 1\0"),
                    be(b'Z', b"I"),
                ]
                .concat(),
            ],
        );
        let e = c.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(e.sqlstate(), Some("22012"));
        let e = c
            .start_copy_both("START_REPLICATION 0/0")
            .await
            .unwrap_err();
        assert_eq!(e.sqlstate(), Some("55006"));
        c.start_copy_both("START_REPLICATION 9/0").await.unwrap();
        let e = c.recv_copy().await.unwrap_err();
        assert!(e.to_string().contains("ahead of the WAL flush"), "{e}");
        let rows = c.simple_query("SELECT 'ok', NULL").await.unwrap();
        assert_eq!(rows, vec![vec![Some("ok".to_string()), None]]);
        drop(server.await.unwrap());
    }

    #[tokio::test]
    async fn garbage_from_the_server_is_an_error() {
        let (mut c, s) = connected(false).await;
        let server = serve(s, vec![be(b'D', b"\0\x01\0\0\0\x09ab")]);
        let e = c.simple_query("SELECT").await.unwrap_err();
        assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
        let s = server.await.unwrap();
        drop(s);
        let e = c.simple_query("SELECT").await.unwrap_err();
        assert!(
            matches!(e, ClientError::Closed { .. } | ClientError::Io { .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn connect_errors_name_the_address() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let cfg = parse(&format!("hostaddr=127.0.0.1 port={port}"));
        let e = PgClient::connect(&cfg, false, "").await.err().unwrap();
        assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
    }
}
