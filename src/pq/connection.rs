//! A PostgreSQL-protocol connection, server side: buffered reads of frontend
//! messages, buffered writes of backend messages, and the startup handshake.
//!
//! `read_message` and `flush` are cancel-safe (bytes read stay in the read
//! buffer, bytes written leave the write buffer as they go), so both can sit
//! in a `tokio::select!` loop.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};

use super::frame::{
    message_frame_len, startup_frame_len, BeMessage, Column, ErrorNotice, FeMessage,
    FeStartupPacket, Severity, TransactionStatus,
};
use super::replication::parse_pg_bool;
use super::{sqlstate, PgError, PqError, SqlState};

const READ_CHUNK: usize = 8 * 1024;
/// What `until_closed` buffers at most of a client that keeps sending
/// while it should be waiting for an answer.
const MAX_BUFFERED_WHILE_WAITING: usize = 1 << 20;

/// What the server reports as `server_version`: clients check the major
/// version (pg_receivewal accepts 9.3 to 15), so it must look like 15.x.
pub const DEFAULT_SERVER_VERSION: &str = "15.0 (walkeeper)";

/// The `replication` startup parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicationMode {
    /// Absent or false: a normal SQL connection.
    #[default]
    Off,
    /// `true` (or any PostgreSQL boolean spelling of it): physical walsender.
    Physical,
    /// `database`: logical walsender.
    Logical,
}

/// The StartupMessage parameters the daemon cares about, and all of them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    pub user: String,
    /// As sent; PostgreSQL would default it to `user`, but a physical
    /// replication connection ignores it anyway.
    pub database: Option<String>,
    pub replication: ReplicationMode,
    pub application_name: Option<String>,
    /// `-c name=value` / `--name=value` settings from `options`, in order.
    pub options: Vec<(String, String)>,
    /// Every parameter as sent (`options` unsplit), without `_pq_.` ones.
    pub raw: Vec<(String, String)>,
}

impl StartupParams {
    pub fn from_params(raw: Vec<(String, String)>) -> Result<StartupParams, PqError> {
        // Later duplicates win, as in PostgreSQL.
        let get = |name: &str| {
            raw.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let user = get("user").unwrap_or_default();
        if user.is_empty() {
            return Err(PqError::Startup {
                sqlstate: sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                message: "no PostgreSQL user name specified in startup packet".into(),
            });
        }
        let replication = match get("replication") {
            None => ReplicationMode::Off,
            Some(v) if v == "database" => ReplicationMode::Logical,
            Some(v) => match parse_pg_bool(&v) {
                Some(true) => ReplicationMode::Physical,
                Some(false) => ReplicationMode::Off,
                None => {
                    return Err(PqError::Startup {
                        sqlstate: sqlstate::INVALID_PARAMETER_VALUE,
                        message: format!("invalid value for parameter \"replication\": \"{v}\""),
                    })
                }
            },
        };
        let options = match get("options") {
            Some(o) => parse_options(&o)?,
            None => Vec::new(),
        };
        Ok(StartupParams {
            user,
            database: get("database"),
            replication,
            application_name: get("application_name"),
            options,
            raw,
        })
    }

    /// A startup parameter by name (the last one if repeated).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.raw
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A `-c` setting from `options` by name, case-insensitively as GUC
    /// names are (the last one if repeated).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Split `options` into words the way the server does (`pg_split_opts`):
/// whitespace separates, a backslash makes the next character literal, so
/// `a\ b` is one word and `\\` is a backslash.
pub fn split_options(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        let mut escaped = false;
        while let Some(&c) = chars.peek() {
            if c.is_ascii_whitespace() && !escaped {
                break;
            }
            chars.next();
            if !escaped && c == '\\' {
                escaped = true;
            } else {
                escaped = false;
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// Parse `options` into `(name, value)` settings. Only the setting switches
/// are accepted (`-c name=value`, `-cname=value`, `--name=value`); dashes in
/// a name become underscores, as in PostgreSQL.
pub fn parse_options(s: &str) -> Result<Vec<(String, String)>, PqError> {
    let bad = |message: String| PqError::Startup {
        sqlstate: sqlstate::SYNTAX_ERROR,
        message,
    };
    let setting = |arg: &str, switch: &str| {
        let Some((name, value)) = arg.split_once('=') else {
            return Err(bad(format!("{switch}{arg} requires a value")));
        };
        if name.is_empty() {
            return Err(bad(format!("invalid option \"{switch}{arg}\": empty name")));
        }
        Ok((name.replace('-', "_"), value.to_owned()))
    };
    let mut out = Vec::new();
    let mut words = split_options(s).into_iter();
    while let Some(word) = words.next() {
        if let Some(rest) = word.strip_prefix("--") {
            out.push(setting(rest, "--")?);
        } else if word == "-c" {
            let arg = words
                .next()
                .ok_or_else(|| bad("option \"-c\" requires an argument".into()))?;
            out.push(setting(&arg, "-c ")?);
        } else if let Some(rest) = word.strip_prefix("-c") {
            out.push(setting(rest, "-c ")?);
        } else {
            return Err(bad(format!(
                "invalid command-line argument for server process: {word}"
            )));
        }
    }
    Ok(out)
}

/// How a connection's startup phase ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Authenticate (or refuse) next.
    Startup(StartupParams),
    /// A cancel request for another connection; this one then closes.
    Cancel { process_id: i32, secret_key: i32 },
}

/// What the server tells a client after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerParams {
    pub server_version: String,
    /// BackendKeyData; a cancel request quoting them is for this connection.
    pub process_id: i32,
    pub secret_key: i32,
    /// Further ParameterStatus values; one named like a default replaces it.
    pub extra: Vec<(String, String)>,
}

impl Default for ServerParams {
    fn default() -> Self {
        ServerParams {
            server_version: DEFAULT_SERVER_VERSION.to_owned(),
            process_id: 0,
            secret_key: 0,
            extra: Vec::new(),
        }
    }
}

/// Buffered PostgreSQL-protocol connection over any tokio stream. Reading
/// needs `S: AsyncRead`, writing `S: AsyncWrite`, so the halves from
/// [`PqConnection::into_split`] each get only their own side.
#[derive(Debug)]
pub struct PqConnection<S> {
    stream: S,
    read_buf: BytesMut,
    write_buf: BytesMut,
}

impl<S> PqConnection<S> {
    pub fn new(stream: S) -> Self {
        PqConnection {
            stream,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            write_buf: BytesMut::with_capacity(READ_CHUNK),
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes read from the peer and not yet taken as a message.
    pub fn buffered_len(&self) -> usize {
        self.read_buf.len()
    }

    /// The same connection over `f(stream)` (the socket as one variant of
    /// a stream that may also be TLS), its buffers kept.
    pub fn map_stream<T>(self, f: impl FnOnce(S) -> T) -> PqConnection<T> {
        PqConnection {
            stream: f(self.stream),
            read_buf: self.read_buf,
            write_buf: self.write_buf,
        }
    }

    /// The stream, once nothing is buffered either way (before a TLS
    /// handshake on it); `None` if something is.
    pub fn into_stream(self) -> Result<S, Self> {
        if self.read_buf.is_empty() && self.write_buf.is_empty() {
            Ok(self.stream)
        } else {
            Err(self)
        }
    }

    /// Bytes written but not yet flushed; a sender can stop producing when
    /// this grows (the client is not reading).
    pub fn pending_write_len(&self) -> usize {
        self.write_buf.len()
    }

    /// Buffer a backend message; nothing is sent until a flush.
    pub fn write_message(&mut self, msg: &BeMessage<'_>) -> Result<(), PqError> {
        msg.write(&mut self.write_buf)
    }

    /// Buffer RowDescription, one DataRow per row and CommandComplete with
    /// `command_tag` (walsender uses the command's name, e.g.
    /// `IDENTIFY_SYSTEM`). Rows must have one cell per column; on any error
    /// nothing is buffered.
    pub fn write_result_set(
        &mut self,
        columns: &[Column<'_>],
        rows: &[Vec<Option<String>>],
        command_tag: &str,
    ) -> Result<(), PqError> {
        if let Some(row) = rows.iter().find(|r| r.len() != columns.len()) {
            return Err(PqError::Protocol(format!(
                "result row has {} cells for {} columns",
                row.len(),
                columns.len()
            )));
        }
        let start = self.write_buf.len();
        let mut write = || {
            BeMessage::RowDescription(columns).write(&mut self.write_buf)?;
            let mut cells: Vec<Option<&[u8]>> = Vec::with_capacity(columns.len());
            for row in rows {
                cells.clear();
                cells.extend(row.iter().map(|c| c.as_deref().map(str::as_bytes)));
                BeMessage::DataRow(&cells).write(&mut self.write_buf)?;
            }
            BeMessage::CommandComplete(command_tag).write(&mut self.write_buf)
        };
        let result = write();
        if result.is_err() {
            self.write_buf.truncate(start);
        }
        result
    }
}

impl<S: AsyncRead + AsyncWrite> PqConnection<S> {
    /// Separate reading from writing (e.g. a WAL sender reading status
    /// updates while it streams), keeping already-buffered bytes.
    pub fn into_split(self) -> (PqConnection<ReadHalf<S>>, PqConnection<WriteHalf<S>>) {
        let (r, w) = tokio::io::split(self.stream);
        (
            PqConnection {
                stream: r,
                read_buf: self.read_buf,
                write_buf: BytesMut::new(),
            },
            PqConnection {
                stream: w,
                read_buf: BytesMut::new(),
                write_buf: self.write_buf,
            },
        )
    }
}

impl<S: AsyncRead + Unpin> PqConnection<S> {
    /// Read more bytes for the frame at the front of the buffer. `false` on
    /// a clean end of stream (nothing buffered).
    async fn fill(
        &mut self,
        frame_len: fn(&[u8]) -> Result<Option<usize>, PqError>,
        context: &'static str,
    ) -> Result<bool, PqError> {
        // Reserve the whole (already length-checked) frame at once, so a big
        // CopyData does not grow the buffer in many steps.
        let want = frame_len(&self.read_buf)?
            .unwrap_or(0)
            .saturating_sub(self.read_buf.len());
        self.read_buf.reserve(want.max(READ_CHUNK));
        let n = self
            .stream
            .read_buf(&mut self.read_buf)
            .await
            .map_err(PqError::io(context))?;
        if n == 0 {
            if self.read_buf.is_empty() {
                return Ok(false);
            }
            return Err(PqError::UnexpectedEof { context });
        }
        Ok(true)
    }

    /// Resolves once the client has closed its end (or the connection
    /// failed), for a server that waits long before answering. Whatever the
    /// client sends meanwhile stays buffered for `read_message` (up to a
    /// bound; beyond it this just waits). Cancel-safe.
    pub async fn until_closed(&mut self) {
        while self.read_buf.len() < MAX_BUFFERED_WHILE_WAITING {
            match self.fill(message_frame_len, "waiting for the client").await {
                Ok(true) => {}
                Ok(false) | Err(_) => return,
            }
        }
        std::future::pending::<()>().await
    }

    /// The request code (the word after the length) of the next
    /// startup-phase packet, which stays buffered; `None` if the client
    /// closed first.
    pub async fn peek_startup_code(&mut self) -> Result<Option<u32>, PqError> {
        loop {
            if startup_frame_len(&self.read_buf)?.is_some() && self.read_buf.len() >= 8 {
                let code = [
                    self.read_buf[4],
                    self.read_buf[5],
                    self.read_buf[6],
                    self.read_buf[7],
                ];
                return Ok(Some(u32::from_be_bytes(code)));
            }
            if !self
                .fill(startup_frame_len, "reading a startup packet")
                .await?
            {
                return Ok(None);
            }
        }
    }

    /// The next startup-phase packet; `None` if the client closed first.
    pub async fn read_startup_packet(&mut self) -> Result<Option<FeStartupPacket>, PqError> {
        loop {
            if let Some(p) = FeStartupPacket::parse(&mut self.read_buf)? {
                return Ok(Some(p));
            }
            if !self
                .fill(startup_frame_len, "reading a startup packet")
                .await?
            {
                return Ok(None);
            }
        }
    }

    /// The next typed frontend message; `None` if the client closed the
    /// connection between messages. Cancel-safe.
    pub async fn read_message(&mut self) -> Result<Option<FeMessage>, PqError> {
        loop {
            if let Some(m) = FeMessage::parse(&mut self.read_buf)? {
                return Ok(Some(m));
            }
            if !self.fill(message_frame_len, "reading a message").await? {
                return Ok(None);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> PqConnection<S> {
    /// Send everything buffered. Cancel-safe: what was not yet written stays
    /// buffered.
    pub async fn flush(&mut self) -> Result<(), PqError> {
        while !self.write_buf.is_empty() {
            let n = self
                .stream
                .write_buf(&mut self.write_buf)
                .await
                .map_err(PqError::io("writing to the client"))?;
            if n == 0 {
                return Err(PqError::Io {
                    context: "writing to the client",
                    source: std::io::ErrorKind::WriteZero.into(),
                });
            }
        }
        self.stream
            .flush()
            .await
            .map_err(PqError::io("flushing to the client"))
    }

    /// Write one message and flush.
    pub async fn send(&mut self, msg: &BeMessage<'_>) -> Result<(), PqError> {
        self.write_message(msg)?;
        self.flush().await
    }

    pub async fn send_ready_for_query(&mut self) -> Result<(), PqError> {
        self.send(&BeMessage::ReadyForQuery(TransactionStatus::Idle))
            .await
    }

    /// ERROR then ReadyForQuery, the end of a failed simple query; the
    /// connection stays usable.
    pub async fn send_error(&mut self, sqlstate: SqlState, message: &str) -> Result<(), PqError> {
        self.send_error_notice(&ErrorNotice::error(sqlstate.code(), message))
            .await
    }

    /// [`Self::send_error`] of a [`PgError`], with its detail and hint.
    pub async fn send_pg_error(&mut self, e: &PgError) -> Result<(), PqError> {
        self.send_error_notice(&e.notice(Severity::Error)).await
    }

    /// [`Self::send_fatal`] of a [`PgError`], with its detail and hint.
    pub async fn send_pg_fatal(&mut self, e: &PgError) -> Result<(), PqError> {
        self.send(&BeMessage::ErrorResponse(&e.notice(Severity::Fatal)))
            .await
    }

    /// Like [`Self::send_error`] with detail, hint or another severity.
    pub async fn send_error_notice(&mut self, e: &ErrorNotice) -> Result<(), PqError> {
        self.write_message(&BeMessage::ErrorResponse(e))?;
        self.send_ready_for_query().await
    }

    /// FATAL, without ReadyForQuery: the caller closes the connection next.
    /// Sent before authentication with `CANNOT_CONNECT_NOW`, it makes libpq
    /// try the next host of a multi-host conninfo.
    pub async fn send_fatal(&mut self, sqlstate: SqlState, message: &str) -> Result<(), PqError> {
        self.send(&BeMessage::ErrorResponse(&ErrorNotice::fatal(
            sqlstate.code(),
            message,
        )))
        .await
    }

    /// [`Self::write_result_set`] and flush (no ReadyForQuery: the end of a
    /// timeline follows a result set with more CommandCompletes).
    pub async fn send_result_set(
        &mut self,
        columns: &[Column<'_>],
        rows: &[Vec<Option<String>>],
        command_tag: &str,
    ) -> Result<(), PqError> {
        self.write_result_set(columns, rows, command_tag)?;
        self.flush().await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> PqConnection<S> {
    /// The startup phase up to, not including, authentication: refuses TLS
    /// and GSS encryption with `N` (the client goes on in clear), then reads
    /// the StartupMessage. `None` if the client closed first.
    ///
    /// A client asking for protocol 3.x with x > 0 or `_pq_.` options gets a
    /// NegotiateProtocolVersion; it is buffered, so it goes out ahead of
    /// whatever the caller sends next, as in PostgreSQL.
    pub async fn handshake(&mut self) -> Result<Option<Handshake>, PqError> {
        let (mut ssl_done, mut gss_done) = (false, false);
        loop {
            let Some(packet) = self.read_startup_packet().await? else {
                return Ok(None);
            };
            match packet {
                FeStartupPacket::SslRequest if !ssl_done => ssl_done = true,
                FeStartupPacket::GssEncRequest if !gss_done => gss_done = true,
                FeStartupPacket::SslRequest | FeStartupPacket::GssEncRequest => {
                    return Err(PqError::Protocol(
                        "encryption requested twice in one startup".into(),
                    ));
                }
                FeStartupPacket::CancelRequest {
                    process_id,
                    secret_key,
                } => {
                    return Ok(Some(Handshake::Cancel {
                        process_id,
                        secret_key,
                    }))
                }
                FeStartupPacket::Startup { minor, params } => {
                    let (proto_opts, params): (Vec<_>, Vec<_>) = params
                        .into_iter()
                        .partition(|(k, _)| k.starts_with("_pq_."));
                    if minor > 0 || !proto_opts.is_empty() {
                        let names: Vec<String> = proto_opts.into_iter().map(|(k, _)| k).collect();
                        self.write_message(&BeMessage::NegotiateProtocolVersion {
                            newest_minor: 0,
                            unrecognized: &names,
                        })?;
                    }
                    return StartupParams::from_params(params).map(|p| Some(Handshake::Startup(p)));
                }
            }
            self.answer_encryption_request(false).await?;
        }
    }

    /// The one-byte answer to an SSLRequest or a GSSENCRequest: `S`/`G`
    /// (`accept`: the handshake follows) or `N` (go on in clear).
    pub async fn answer_encryption_request(&mut self, accept: bool) -> Result<(), PqError> {
        self.write_buf.put_u8(if accept { b'S' } else { b'N' });
        self.flush().await
    }

    /// Accept the client without a password: AuthenticationOk, the
    /// ParameterStatus values clients check (pg_receivewal refuses a server
    /// without `integer_datetimes=on` or with a `server_version` major
    /// outside 9.3–15), BackendKeyData and ReadyForQuery.
    pub async fn accept_trust(
        &mut self,
        startup: &StartupParams,
        server: &ServerParams,
    ) -> Result<(), PqError> {
        let mut params: Vec<(&str, &str)> = vec![
            (
                "application_name",
                startup.application_name.as_deref().unwrap_or(""),
            ),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"),
            ("IntervalStyle", "postgres"),
            ("server_encoding", "UTF8"),
            ("server_version", &server.server_version),
            ("session_authorization", &startup.user),
            ("standard_conforming_strings", "on"),
            ("TimeZone", "UTC"),
        ];
        for (name, value) in &server.extra {
            match params.iter_mut().find(|(n, _)| n == name) {
                Some(p) => p.1 = value,
                None => params.push((name, value)),
            }
        }
        let start = self.write_buf.len();
        let mut write = || {
            self.write_message(&BeMessage::AuthenticationOk)?;
            for (name, value) in &params {
                self.write_message(&BeMessage::ParameterStatus { name, value })?;
            }
            self.write_message(&BeMessage::BackendKeyData {
                process_id: server.process_id,
                secret_key: server.secret_key,
            })?;
            self.write_message(&BeMessage::ReadyForQuery(TransactionStatus::Idle))
        };
        if let Err(e) = write() {
            self.write_buf.truncate(start);
            return Err(e);
        }
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::pq::frame::tests::{error_fields, split_backend};
    use crate::pq::frame::MAX_COPY_DATA_LEN;
    use bytes::Bytes;
    use postgres_protocol::message::frontend;
    use tokio::io::{duplex, DuplexStream};

    /// Read one backend message from the client end.
    async fn recv(client: &mut DuplexStream) -> (u8, Vec<u8>) {
        let tag = client.read_u8().await.unwrap();
        let len = client.read_i32().await.unwrap() as usize;
        let mut body = vec![0; len - 4];
        client.read_exact(&mut body).await.unwrap();
        (tag, body)
    }

    async fn send_raw(client: &mut DuplexStream, f: impl FnOnce(&mut BytesMut)) {
        let mut buf = BytesMut::new();
        f(&mut buf);
        client.write_all(&buf).await.unwrap();
    }

    fn startup(buf: &mut BytesMut, params: &[(&str, &str)]) {
        frontend::startup_message(params.iter().copied(), buf).unwrap();
    }

    const WALRECEIVER: &[(&str, &str)] = &[
        ("user", "postgres"),
        ("database", "replication"),
        ("replication", "true"),
        ("application_name", "walreceiver"),
    ];

    #[tokio::test]
    async fn ssl_refused_then_trust_then_query_error() {
        let (mut client, server) = duplex(64);
        let server = tokio::spawn(async move {
            let mut conn = PqConnection::new(server);
            let Some(Handshake::Startup(params)) = conn.handshake().await.unwrap() else {
                panic!("no startup")
            };
            assert_eq!(params.user, "postgres");
            assert_eq!(params.replication, ReplicationMode::Physical);
            assert_eq!(params.application_name.as_deref(), Some("walreceiver"));
            assert_eq!(params.database.as_deref(), Some("replication"));
            let server_params = ServerParams {
                process_id: 77,
                secret_key: 88,
                ..Default::default()
            };
            conn.accept_trust(&params, &server_params).await.unwrap();
            let msg = conn.read_message().await.unwrap();
            assert_eq!(msg, Some(FeMessage::Query("BASE_BACKUP".into())));
            conn.send_error(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "BASE_BACKUP is not supported",
            )
            .await
            .unwrap();
            assert_eq!(
                conn.read_message().await.unwrap(),
                Some(FeMessage::Terminate)
            );
            assert_eq!(conn.read_message().await.unwrap(), None);
        });

        send_raw(&mut client, frontend::ssl_request).await;
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        send_raw(&mut client, |b| startup(b, WALRECEIVER)).await;

        assert_eq!(recv(&mut client).await, (b'R', vec![0, 0, 0, 0]));
        let mut status = Vec::new();
        loop {
            let (tag, body) = recv(&mut client).await;
            match tag {
                b'S' => {
                    let parts: Vec<String> = body
                        .split(|&b| b == 0)
                        .take(2)
                        .map(|s| String::from_utf8(s.to_vec()).unwrap())
                        .collect();
                    status.push((parts[0].clone(), parts[1].clone()));
                }
                b'K' => {
                    assert_eq!(body, [0, 0, 0, 77, 0, 0, 0, 88]);
                    break;
                }
                _ => panic!("unexpected {}", tag as char),
            }
        }
        let get = |n: &str| status.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("server_version"), Some("15.0 (walkeeper)"));
        assert_eq!(get("integer_datetimes"), Some("on"));
        assert_eq!(get("server_encoding"), Some("UTF8"));
        assert_eq!(get("client_encoding"), Some("UTF8"));
        assert_eq!(get("standard_conforming_strings"), Some("on"));
        assert_eq!(get("DateStyle"), Some("ISO, MDY"));
        assert_eq!(get("application_name"), Some("walreceiver"));
        assert_eq!(recv(&mut client).await, (b'Z', b"I".to_vec()));

        send_raw(&mut client, |b| frontend::query("BASE_BACKUP", b).unwrap()).await;
        let (tag, body) = recv(&mut client).await;
        assert_eq!(tag, b'E');
        let fields = error_fields(&body);
        assert!(fields.contains(&(b'S', "ERROR".into())));
        assert!(fields.contains(&(b'V', "ERROR".into())));
        assert!(fields.contains(&(b'C', "0A000".into())));
        assert!(fields.contains(&(b'M', "BASE_BACKUP is not supported".into())));
        assert_eq!(recv(&mut client).await, (b'Z', b"I".to_vec()));

        send_raw(&mut client, frontend::terminate).await;
        drop(client);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn gss_and_ssl_refused_once_each() {
        let (mut client, server) = duplex(1024);
        let server = tokio::spawn(async move {
            let mut conn = PqConnection::new(server);
            let hs = conn.handshake().await.unwrap().unwrap();
            assert!(matches!(hs, Handshake::Startup(p) if p.user == "u"));
            let err = conn.handshake().await.unwrap_err();
            assert!(matches!(err, PqError::Protocol(_)), "{err}");
        });
        client
            .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30])
            .await
            .unwrap();
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        send_raw(&mut client, frontend::ssl_request).await;
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        send_raw(&mut client, |b| startup(b, &[("user", "u")])).await;
        // a second startup on the same stream: SSL twice is refused
        send_raw(&mut client, frontend::ssl_request).await;
        assert_eq!(client.read_u8().await.unwrap(), b'N');
        send_raw(&mut client, frontend::ssl_request).await;
        server.await.unwrap();
    }

    #[tokio::test]
    async fn cancel_request_and_closed_before_startup() {
        let (mut client, server) = duplex(1024);
        send_raw(&mut client, |b| frontend::cancel_request(5, 6, b)).await;
        drop(client);
        let mut conn = PqConnection::new(server);
        assert_eq!(
            conn.handshake().await.unwrap(),
            Some(Handshake::Cancel {
                process_id: 5,
                secret_key: 6
            })
        );
        assert_eq!(conn.handshake().await.unwrap(), None);
    }

    #[tokio::test]
    async fn startup_without_user_is_refused_with_28000() {
        let (mut client, server) = duplex(1024);
        send_raw(&mut client, |b| startup(b, &[("database", "x")])).await;
        let err = PqConnection::new(server).handshake().await.unwrap_err();
        assert_eq!(err.sqlstate(), "28000");
    }

    #[tokio::test]
    async fn refusing_before_auth_sends_fatal_57p03_only() {
        let (mut client, server) = duplex(1024);
        send_raw(&mut client, |b| startup(b, WALRECEIVER)).await;
        let mut conn = PqConnection::new(server);
        conn.handshake().await.unwrap().unwrap();
        conn.send_fatal(sqlstate::CANNOT_CONNECT_NOW, "behind")
            .await
            .unwrap();
        drop(conn);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        let msgs = split_backend(&rest);
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].0, b'E');
        let fields = error_fields(&msgs[0].1);
        assert!(fields.contains(&(b'S', "FATAL".into())));
        assert!(fields.contains(&(b'C', "57P03".into())));
    }

    #[tokio::test]
    async fn newer_minor_version_is_negotiated_down() {
        let (mut client, server) = duplex(1024);
        let mut pkt = BytesMut::new();
        let body = b"user\0u\0_pq_.opt\0x\0\0";
        pkt.put_i32(8 + body.len() as i32);
        pkt.put_u32((3 << 16) | 1);
        pkt.put_slice(body);
        client.write_all(&pkt).await.unwrap();
        let mut conn = PqConnection::new(server);
        let Some(Handshake::Startup(p)) = conn.handshake().await.unwrap() else {
            panic!()
        };
        assert_eq!(p.raw, vec![("user".to_string(), "u".to_string())]);
        conn.accept_trust(&p, &ServerParams::default())
            .await
            .unwrap();
        let (tag, body) = recv(&mut client).await;
        assert_eq!(tag, b'v');
        assert_eq!(body, b"\0\x03\0\0\0\0\0\x01_pq_.opt\0");
        assert_eq!(recv(&mut client).await.0, b'R');
    }

    #[tokio::test]
    async fn eof_between_and_inside_messages() {
        let (mut client, server) = duplex(1024);
        send_raw(&mut client, |b| {
            frontend::query("IDENTIFY_SYSTEM", b).unwrap()
        })
        .await;
        client.write_all(b"Q\0\0\0\x20IDENT").await.unwrap();
        drop(client);
        let mut conn = PqConnection::new(server);
        assert_eq!(
            conn.read_message().await.unwrap(),
            Some(FeMessage::Query("IDENTIFY_SYSTEM".into()))
        );
        let err = conn.read_message().await.unwrap_err();
        assert!(matches!(err, PqError::UnexpectedEof { .. }), "{err}");
        assert!(err.is_disconnect());

        let (client, server) = duplex(1024);
        drop(client);
        assert_eq!(
            PqConnection::new(server).read_message().await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn oversized_header_fails_without_waiting_for_body() {
        let (mut client, server) = duplex(1024);
        client.write_all(b"d\x7f\xff\xff\xff").await.unwrap();
        let mut conn = PqConnection::new(server);
        let res = tokio::time::timeout(Duration::from_secs(5), conn.read_message())
            .await
            .expect("hung waiting for the body");
        assert!(matches!(res, Err(PqError::TooLarge { .. })));

        let (mut client, server) = duplex(1024);
        client.write_all(&[0x40, 0, 0, 0]).await.unwrap();
        let res = tokio::time::timeout(
            Duration::from_secs(5),
            PqConnection::new(server).read_startup_packet(),
        )
        .await
        .unwrap();
        assert!(matches!(res, Err(PqError::TooLarge { .. })));

        let (mut client, server) = duplex(1024);
        client.write_all(&[0, 0, 0, 2]).await.unwrap();
        assert!(matches!(
            PqConnection::new(server).read_startup_packet().await,
            Err(PqError::BadLength { .. })
        ));
    }

    #[tokio::test]
    async fn large_copy_data_through_a_small_pipe() {
        let (mut client, server) = duplex(4096);
        let payload: Vec<u8> = (0..MAX_COPY_DATA_LEN - 4).map(|i| i as u8).collect();
        let expect = Bytes::from(payload.clone());
        let writer = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            frontend::CopyData::new(&payload[..])
                .unwrap()
                .write(&mut buf);
            frontend::copy_done(&mut buf);
            client.write_all(&buf).await.unwrap();
            client
        });
        let mut conn = PqConnection::new(server);
        assert_eq!(
            conn.read_message().await.unwrap(),
            Some(FeMessage::CopyData(expect))
        );
        assert_eq!(
            conn.read_message().await.unwrap(),
            Some(FeMessage::CopyDone)
        );
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn result_set_then_ready_for_query() {
        let (mut client, server) = duplex(4096);
        let mut conn = PqConnection::new(server);
        let cols = [
            Column::text("systemid"),
            Column::int4("timeline"),
            Column::text("xlogpos"),
            Column::text("dbname"),
        ];
        let rows = vec![vec![
            Some("7000000000000000001".to_string()),
            Some("1".to_string()),
            Some("0/1000000".to_string()),
            None,
        ]];
        // a malformed row buffers nothing
        assert!(conn
            .write_result_set(&cols, &[vec![None]], "IDENTIFY_SYSTEM")
            .is_err());
        assert_eq!(conn.pending_write_len(), 0);
        conn.send_result_set(&cols, &rows, "IDENTIFY_SYSTEM")
            .await
            .unwrap();
        conn.send_ready_for_query().await.unwrap();
        let (t, _) = recv(&mut client).await;
        assert_eq!(t, b'T');
        let (t, body) = recv(&mut client).await;
        assert_eq!(t, b'D');
        assert_eq!(&body[..2], [0, 4]);
        assert_eq!(&body[body.len() - 4..], [0xff; 4]);
        assert_eq!(
            recv(&mut client).await,
            (b'C', b"IDENTIFY_SYSTEM\0".to_vec())
        );
        assert_eq!(recv(&mut client).await, (b'Z', b"I".to_vec()));
    }

    #[tokio::test]
    async fn split_halves_keep_buffered_bytes() {
        let (mut client, server) = duplex(4096);
        send_raw(&mut client, |b| {
            frontend::query("START_REPLICATION 0/0", b).unwrap();
            frontend::CopyData::new(&b"r"[..]).unwrap().write(b);
        })
        .await;
        let mut conn = PqConnection::new(server);
        assert!(matches!(
            conn.read_message().await.unwrap(),
            Some(FeMessage::Query(_))
        ));
        conn.write_message(&BeMessage::CopyBothResponse).unwrap();
        let (mut reader, mut writer) = conn.into_split();
        writer.flush().await.unwrap();
        assert_eq!(recv(&mut client).await, (b'W', vec![0, 0, 0]));
        assert_eq!(
            reader.read_message().await.unwrap(),
            Some(FeMessage::CopyData(Bytes::from_static(b"r")))
        );
    }

    #[test]
    fn options_split_like_libpq_and_postgres() {
        assert_eq!(split_options(""), Vec::<String>::new());
        assert_eq!(split_options("  a  b\t"), vec!["a", "b"]);
        assert_eq!(split_options(r"-c a=b\ c"), vec!["-c", "a=b c"]);
        assert_eq!(split_options(r"x\\y \\"), vec![r"x\y", r"\"]);
        assert_eq!(split_options(r"trailing\"), vec!["trailing"]);
        assert_eq!(
            parse_options(r"-c walkeeper.role=proposer --search-path=a\ b -cx=1 -c empty=")
                .unwrap(),
            vec![
                ("walkeeper.role".to_string(), "proposer".to_string()),
                ("search_path".to_string(), "a b".to_string()),
                ("x".to_string(), "1".to_string()),
                ("empty".to_string(), String::new()),
            ]
        );
        for bad in ["-c", "-c x", "--x", "-B 100", "plain", "-c =v", "--=v"] {
            assert!(parse_options(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn startup_params_from_raw() {
        let raw = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        let p = StartupParams::from_params(raw(&[
            ("user", "proxy"),
            ("options", "-c walkeeper.role=proposer"),
            ("replication", "on"),
        ]))
        .unwrap();
        assert_eq!(p.option("WALKEEPER.ROLE"), Some("proposer"));
        assert_eq!(p.get("replication"), Some("on"));
        assert_eq!(p.replication, ReplicationMode::Physical);
        assert_eq!(p.database, None);
        for (v, mode) in [
            ("database", ReplicationMode::Logical),
            ("false", ReplicationMode::Off),
            ("1", ReplicationMode::Physical),
        ] {
            let p = StartupParams::from_params(raw(&[("user", "u"), ("replication", v)])).unwrap();
            assert_eq!(p.replication, mode, "{v}");
        }
        let e = StartupParams::from_params(raw(&[("user", "u"), ("replication", "maybe")]))
            .unwrap_err();
        assert_eq!(e.sqlstate(), "22023");
        let e = StartupParams::from_params(raw(&[("user", "u"), ("options", "-x")])).unwrap_err();
        assert_eq!(e.sqlstate(), "42601");
        assert!(StartupParams::from_params(raw(&[("user", "")])).is_err());
    }
}
