//! The client connection: its streams (TCP, Unix socket, TLS), the two
//! halves [`PgReader`] / [`PgWriter`], connecting and the start-up, simple
//! queries and CopyBoth.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{tcp, unix, TcpStream, UnixStream};

use crate::lsn::Lsn;
use crate::tls::MaybeTls;

use super::backend::{
    lossy, parse_data_row, parse_error_fields, parse_frame, take_cstr, take_i32, text_row, Frame,
};
use super::{ClientError, ConnConfig, SslMode};

const READ_CHUNK: usize = 64 * 1024;

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

    pub(super) async fn flush(&mut self) -> io::Result<()> {
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
    /// [`ServerReplMessage::decode`](crate::pq::replication::ServerReplMessage::decode)).
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
    pub(super) buf: BytesMut,
    phase: Phase,
    pub(super) addr: Arc<str>,
    pub(super) params: HashMap<String, String>,
    pub(super) backend_key: Option<(i32, i32)>,
}

/// The sending half of a connection. Sends queue bytes in a buffer; nothing
/// reaches the server until [`PgWriter::flush`].
pub struct PgWriter {
    stream: WriteStream,
    pub(super) buf: BytesMut,
    pub(super) addr: Arc<str>,
}

/// A connection to a PostgreSQL server (or a safekeeper).
pub struct PgClient {
    pub(super) reader: PgReader,
    pub(super) writer: PgWriter,
}

impl PgReader {
    pub(super) fn protocol(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            addr: self.addr.to_string(),
            reason: reason.into(),
        }
    }

    /// The next whole message from the socket. Cancel-safe: bytes read stay
    /// in `buf`, and a frame leaves `buf` only whole.
    pub(super) async fn read_frame(&mut self, context: &'static str) -> Result<Frame, ClientError> {
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
    pub(super) async fn next_message(
        &mut self,
        context: &'static str,
    ) -> Result<Frame, ClientError> {
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

    pub(super) fn server_error(&self, body: Bytes) -> ClientError {
        match parse_error_fields(body) {
            Ok(f) => f.into_error(),
            Err(e) => self.protocol(format!("ErrorResponse: {e}")),
        }
    }

    /// Reads up to and including ReadyForQuery, discarding everything: the
    /// remains of a command whose error was already reported.
    pub(super) async fn drain_to_ready(&mut self) -> Result<(), ClientError> {
        while self.phase != Phase::Idle {
            let f = self.next_message("draining to ReadyForQuery").await?;
            if f.tag == b'Z' {
                self.phase = Phase::Idle;
            }
        }
        Ok(())
    }

    /// Makes sure no earlier command is still in flight before a new one.
    pub(super) async fn ready_for_query(&mut self) -> Result<(), ClientError> {
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
    pub(super) async fn read_results(
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
    pub(super) async fn read_copy_both_response(&mut self) -> Result<(), ClientError> {
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
        let mut b = BytesMut::with_capacity(crate::pq::replication::STANDBY_STATUS_UPDATE_LEN);
        crate::pq::replication::StandbyStatusUpdate {
            write_lsn: write,
            flush_lsn: flush,
            apply_lsn: apply,
            send_time: crate::pq::replication::pg_now(),
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

    pub(super) fn queue_query(&mut self, sql: &str) -> Result<(), ClientError> {
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

    pub(super) async fn connect_inner(
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

    pub(super) async fn finish_startup(&mut self) -> Result<(), ClientError> {
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::backend::be;
    use super::*;
    use tokio::net::TcpListener;

    fn parse(s: &str) -> ConnConfig {
        ConnConfig::parse_with_env(s, |_| None).unwrap_or_else(|e| panic!("{s:?}: {e}"))
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
