//! Framing of the PostgreSQL v3 protocol, server side: frontend messages are
//! parsed out of a `BytesMut`, backend messages are appended to one.
//!
//! A frame's length is checked against a per-type cap as soon as its header
//! is buffered, so a hostile length can neither allocate much nor make us wait
//! for gigabytes; the readers never consume a partial frame.

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::replication::{PrimaryKeepalive, XLogData};
use super::PqError;

/// Protocol 3.0 in a StartupMessage (major 3 in the high 16 bits).
pub const PROTOCOL_VERSION_3_0: u32 = 3 << 16;
/// Magic "protocol versions" of the untyped requests (major 1234).
pub const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;
pub const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
pub const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;

/// PostgreSQL's own `MAX_STARTUP_PACKET_LENGTH`: a longer startup packet is
/// refused by a real server too, so no client sends one.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;
/// CopyData carries WAL pushes (1 MiB of WAL plus headers) and XLogData; twice
/// that leaves room without letting a peer make us buffer much.
pub const MAX_COPY_DATA_LEN: usize = 2 << 20;
/// Every other frontend message: passwords, CopyFail, unknown tags.
pub const MAX_MESSAGE_LEN: usize = 64 << 10;
/// A simple query: room for a proposer's `PUT_TIMELINE_HISTORY` of a history
/// file as large as the daemon stores, in hex, so the two limits agree. No
/// larger than a CopyData, so no connection can buffer more than it could.
pub const MAX_QUERY_LEN: usize = 2 * super::replication::MAX_HISTORY_FILE_LEN + 1024;
const _: () = assert!(MAX_QUERY_LEN <= MAX_COPY_DATA_LEN + 4096);

/// A packet of the startup phase, which has no type byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeStartupPacket {
    /// Answer `N` (no TLS) and read the next startup packet.
    SslRequest,
    /// Answer `N` (no GSS encryption) and read the next startup packet.
    GssEncRequest,
    CancelRequest {
        process_id: i32,
        secret_key: i32,
    },
    /// Protocol major 3; `minor` above 0 (or `_pq_.` parameters) deserves a
    /// NegotiateProtocolVersion in reply.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// A typed frontend message, after startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeMessage {
    /// Simple query, without its terminating NUL.
    Query(String),
    CopyData(Bytes),
    CopyDone,
    /// The client's reason for aborting COPY.
    CopyFail(String),
    Sync,
    Terminate,
    /// `p`: cleartext password, md5 hash or SASL data, depending on what the
    /// server asked for, so left raw.
    Password(Bytes),
    /// Any other tag (extended-query messages, FunctionCall, Flush, …): the
    /// daemon answers it with an error rather than dropping the connection.
    Unknown {
        tag: u8,
        body: Bytes,
    },
}

fn read_cstr<'a>(buf: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], PqError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| PqError::malformed(what, "missing string terminator"))?;
    let s = &buf[..nul];
    *buf = &buf[nul + 1..];
    Ok(s)
}

fn utf8<'a>(b: &'a [u8], what: &'static str) -> Result<&'a str, PqError> {
    std::str::from_utf8(b).map_err(|_| PqError::malformed(what, "string is not valid UTF-8"))
}

/// Total length (length word included) of the startup packet at the front of
/// `buf`, once its length word is buffered and acceptable.
pub(crate) fn startup_frame_len(buf: &[u8]) -> Result<Option<usize>, PqError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(PqError::BadLength {
            what: "startup",
            len: len as i64,
        });
    }
    let len = len as usize;
    if len > MAX_STARTUP_PACKET_LEN {
        return Err(PqError::TooLarge {
            what: "startup",
            len,
            max: MAX_STARTUP_PACKET_LEN,
        });
    }
    Ok(Some(len))
}

/// Total length (type byte included) of the typed message at the front of
/// `buf`, once its header is buffered and acceptable.
pub(crate) fn message_frame_len(buf: &[u8]) -> Result<Option<usize>, PqError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let what = tag_name(tag);
    if len < 4 {
        return Err(PqError::BadLength {
            what,
            len: len as i64,
        });
    }
    let len = len as usize;
    let max = match tag {
        b'd' => MAX_COPY_DATA_LEN,
        b'Q' => MAX_QUERY_LEN,
        _ => MAX_MESSAGE_LEN,
    };
    if len > max {
        return Err(PqError::TooLarge { what, len, max });
    }
    Ok(Some(len + 1))
}

fn tag_name(tag: u8) -> &'static str {
    match tag {
        b'Q' => "Query",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'S' => "Sync",
        b'X' => "Terminate",
        b'p' => "PasswordMessage",
        _ => "frontend",
    }
}

impl FeStartupPacket {
    /// Take one complete startup packet off the front of `buf`; `Ok(None)`
    /// if more bytes are needed (nothing is consumed then).
    pub fn parse(buf: &mut BytesMut) -> Result<Option<FeStartupPacket>, PqError> {
        let Some(len) = startup_frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        let frame = buf.split_to(len).freeze();
        Self::parse_body(&frame[4..]).map(Some)
    }

    fn parse_body(mut body: &[u8]) -> Result<FeStartupPacket, PqError> {
        let code = body.get_u32();
        let major = (code >> 16) as u16;
        let minor = (code & 0xffff) as u16;
        let fixed = |body: &[u8], what: &'static str, want: usize| {
            if body.len() != want {
                return Err(PqError::BadLength {
                    what,
                    len: (body.len() + 8) as i64,
                });
            }
            Ok(())
        };
        match code {
            SSL_REQUEST_CODE => {
                fixed(body, "SSLRequest", 0)?;
                Ok(FeStartupPacket::SslRequest)
            }
            GSSENC_REQUEST_CODE => {
                fixed(body, "GSSENCRequest", 0)?;
                Ok(FeStartupPacket::GssEncRequest)
            }
            CANCEL_REQUEST_CODE => {
                fixed(body, "CancelRequest", 8)?;
                Ok(FeStartupPacket::CancelRequest {
                    process_id: body.get_i32(),
                    secret_key: body.get_i32(),
                })
            }
            _ if major == 3 => Ok(FeStartupPacket::Startup {
                minor,
                params: Self::parse_params(body)?,
            }),
            _ => Err(PqError::UnsupportedProtocol { major, minor }),
        }
    }

    fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, PqError> {
        const WHAT: &str = "StartupMessage";
        let mut params = Vec::new();
        loop {
            if body.is_empty() {
                return Err(PqError::malformed(
                    WHAT,
                    "missing terminator after parameters",
                ));
            }
            let name = read_cstr(&mut body, WHAT)?;
            if name.is_empty() {
                if !body.is_empty() {
                    return Err(PqError::malformed(WHAT, "data after the parameter list"));
                }
                return Ok(params);
            }
            let value = read_cstr(&mut body, WHAT)?;
            params.push((utf8(name, WHAT)?.to_owned(), utf8(value, WHAT)?.to_owned()));
        }
    }
}

impl FeMessage {
    /// Take one complete typed message off the front of `buf`; `Ok(None)` if
    /// more bytes are needed (nothing is consumed then).
    pub fn parse(buf: &mut BytesMut) -> Result<Option<FeMessage>, PqError> {
        let Some(len) = message_frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < len {
            return Ok(None);
        }
        let tag = buf[0];
        let mut frame = buf.split_to(len).freeze();
        frame.advance(5);
        Self::parse_body(tag, frame).map(Some)
    }

    fn parse_body(tag: u8, body: Bytes) -> Result<FeMessage, PqError> {
        let what = tag_name(tag);
        let empty = |msg: FeMessage| {
            if body.is_empty() {
                Ok(msg)
            } else {
                Err(PqError::malformed(what, "unexpected message body"))
            }
        };
        let cstr_body = |body: &Bytes| -> Result<Bytes, PqError> {
            let mut rest: &[u8] = body;
            let s = read_cstr(&mut rest, what)?;
            if !rest.is_empty() {
                return Err(PqError::malformed(what, "data after the string"));
            }
            Ok(body.slice(..s.len()))
        };
        match tag {
            b'Q' => {
                let q = cstr_body(&body)?;
                Ok(FeMessage::Query(utf8(&q, what)?.to_owned()))
            }
            b'd' => Ok(FeMessage::CopyData(body)),
            b'c' => empty(FeMessage::CopyDone),
            b'f' => {
                let m = cstr_body(&body)?;
                Ok(FeMessage::CopyFail(
                    String::from_utf8_lossy(&m).into_owned(),
                ))
            }
            b'S' => empty(FeMessage::Sync),
            b'X' => empty(FeMessage::Terminate),
            b'p' => Ok(FeMessage::Password(body)),
            _ => Ok(FeMessage::Unknown { tag, body }),
        }
    }
}

/// Transaction status in ReadyForQuery. A WAL server is always idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TransactionStatus {
    fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// Column types of our result sets (always sent in text format). Clients
/// read some columns by type, e.g. `restart_tli` as int8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Int4,
    Int8,
}

impl ColumnType {
    pub fn oid(self) -> u32 {
        match self {
            ColumnType::Text => 25,
            ColumnType::Int4 => 23,
            ColumnType::Int8 => 20,
        }
    }

    /// `pg_type.typlen`: -1 for varlena.
    pub fn typlen(self) -> i16 {
        match self {
            ColumnType::Text => -1,
            ColumnType::Int4 => 4,
            ColumnType::Int8 => 8,
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column<'a> {
    pub name: &'a str,
    pub ty: ColumnType,
}

impl<'a> Column<'a> {
    pub const fn text(name: &'a str) -> Self {
        Column {
            name,
            ty: ColumnType::Text,
        }
    }
    pub const fn int4(name: &'a str) -> Self {
        Column {
            name,
            ty: ColumnType::Int4,
        }
    }
    pub const fn int8(name: &'a str) -> Self {
        Column {
            name,
            ty: ColumnType::Int8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// Fields of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorNotice {
    pub severity: Severity,
    /// SQLSTATE, see [`super::sqlstate`].
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorNotice {
    pub fn new(severity: Severity, code: impl AsRef<str>, message: impl Into<String>) -> Self {
        ErrorNotice {
            severity,
            code: code.as_ref().to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn error(code: impl AsRef<str>, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    pub fn fatal(code: impl AsRef<str>, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A backend message, written with [`BeMessage::write`].
#[derive(Debug, Clone, Copy)]
pub enum BeMessage<'a> {
    AuthenticationOk,
    /// AuthenticationSASL: the mechanisms offered.
    AuthenticationSasl(&'a [&'a str]),
    /// AuthenticationSASLContinue: the server's SASL challenge.
    AuthenticationSaslContinue(&'a [u8]),
    /// AuthenticationSASLFinal: the server's last SASL message.
    AuthenticationSaslFinal(&'a [u8]),
    ParameterStatus {
        name: &'a str,
        value: &'a str,
    },
    BackendKeyData {
        process_id: i32,
        secret_key: i32,
    },
    /// Newest minor version we support (0) and the `_pq_.` options we did
    /// not recognise.
    NegotiateProtocolVersion {
        newest_minor: u16,
        unrecognized: &'a [String],
    },
    ReadyForQuery(TransactionStatus),
    RowDescription(&'a [Column<'a>]),
    /// Text-format cells; `None` is SQL NULL.
    DataRow(&'a [Option<&'a [u8]>]),
    CommandComplete(&'a str),
    EmptyQueryResponse,
    ErrorResponse(&'a ErrorNotice),
    NoticeResponse(&'a ErrorNotice),
    /// Text format, zero columns: what walsender sends for START_REPLICATION.
    CopyBothResponse,
    CopyData(&'a [u8]),
    CopyDone,
    /// CopyData holding an XLogData, written without copying the WAL twice.
    XLogData(&'a XLogData),
    /// CopyData holding a primary keepalive.
    Keepalive(&'a PrimaryKeepalive),
}

/// Appends a frame, patching its length word in afterwards. On any error
/// the buffer is left as it was, so a half-written frame never goes out.
fn write_framed(
    buf: &mut BytesMut,
    tag: u8,
    body: impl FnOnce(&mut BytesMut) -> Result<(), PqError>,
) -> Result<(), PqError> {
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    if let Err(e) = body(buf) {
        buf.truncate(start);
        return Err(e);
    }
    let len = buf.len() - start - 1;
    let Ok(len32) = i32::try_from(len) else {
        buf.truncate(start);
        return Err(PqError::TooLarge {
            what: "backend",
            len,
            max: i32::MAX as usize,
        });
    };
    buf[start + 1..start + 5].copy_from_slice(&len32.to_be_bytes());
    Ok(())
}

fn put_cstr(buf: &mut BytesMut, s: &str, what: &'static str) -> Result<(), PqError> {
    if s.as_bytes().contains(&0) {
        return Err(PqError::malformed(what, "string contains a NUL byte"));
    }
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
    Ok(())
}

fn count_i16(n: usize, what: &'static str) -> Result<i16, PqError> {
    i16::try_from(n).map_err(|_| PqError::malformed(what, format!("{n} columns")))
}

/// Error text often quotes client input; an error about bad input must
/// still go out, so NULs are replaced rather than refused.
fn no_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\\0"))
    } else {
        Cow::Borrowed(s)
    }
}

fn write_error_fields(buf: &mut BytesMut, e: &ErrorNotice) -> Result<(), PqError> {
    let sev = e.severity.as_str();
    let mut field = |code: u8, value: &str| {
        buf.put_u8(code);
        buf.put_slice(no_nul(value).as_bytes());
        buf.put_u8(0);
    };
    field(b'S', sev);
    field(b'V', sev);
    field(b'C', &e.code);
    field(b'M', &e.message);
    if let Some(d) = &e.detail {
        field(b'D', d);
    }
    if let Some(h) = &e.hint {
        field(b'H', h);
    }
    buf.put_u8(0);
    Ok(())
}

impl BeMessage<'_> {
    /// Append the message to `buf`. Fails (leaving `buf` unchanged) only on
    /// content the protocol cannot carry: NUL inside a name, more than
    /// 32767 columns, a frame over 2 GiB.
    pub fn write(&self, buf: &mut BytesMut) -> Result<(), PqError> {
        match *self {
            BeMessage::AuthenticationOk => write_framed(buf, b'R', |b| {
                b.put_i32(0);
                Ok(())
            }),
            BeMessage::AuthenticationSasl(mechanisms) => write_framed(buf, b'R', |b| {
                b.put_i32(10);
                for m in mechanisms {
                    put_cstr(b, m, "AuthenticationSASL")?;
                }
                b.put_u8(0);
                Ok(())
            }),
            BeMessage::AuthenticationSaslContinue(data) => write_framed(buf, b'R', |b| {
                b.put_i32(11);
                b.put_slice(data);
                Ok(())
            }),
            BeMessage::AuthenticationSaslFinal(data) => write_framed(buf, b'R', |b| {
                b.put_i32(12);
                b.put_slice(data);
                Ok(())
            }),
            BeMessage::ParameterStatus { name, value } => write_framed(buf, b'S', |b| {
                put_cstr(b, name, "ParameterStatus")?;
                put_cstr(b, value, "ParameterStatus")
            }),
            BeMessage::BackendKeyData {
                process_id,
                secret_key,
            } => write_framed(buf, b'K', |b| {
                b.put_i32(process_id);
                b.put_i32(secret_key);
                Ok(())
            }),
            BeMessage::NegotiateProtocolVersion {
                newest_minor,
                unrecognized,
            } => write_framed(buf, b'v', |b| {
                b.put_i32((3 << 16) | newest_minor as i32);
                let n = i32::try_from(unrecognized.len()).map_err(|_| {
                    PqError::malformed("NegotiateProtocolVersion", "too many options")
                })?;
                b.put_i32(n);
                for opt in unrecognized {
                    put_cstr(b, opt, "NegotiateProtocolVersion")?;
                }
                Ok(())
            }),
            BeMessage::ReadyForQuery(status) => write_framed(buf, b'Z', |b| {
                b.put_u8(status.byte());
                Ok(())
            }),
            BeMessage::RowDescription(columns) => write_framed(buf, b'T', |b| {
                b.put_i16(count_i16(columns.len(), "RowDescription")?);
                for c in columns {
                    put_cstr(b, c.name, "RowDescription")?;
                    b.put_u32(0); // table oid: not a table column
                    b.put_i16(0); // attribute number
                    b.put_u32(c.ty.oid());
                    b.put_i16(c.ty.typlen());
                    b.put_i32(-1); // typmod
                    b.put_i16(0); // text format
                }
                Ok(())
            }),
            BeMessage::DataRow(cells) => write_framed(buf, b'D', |b| {
                b.put_i16(count_i16(cells.len(), "DataRow")?);
                for cell in cells {
                    match cell {
                        None => b.put_i32(-1),
                        Some(v) => {
                            let n = i32::try_from(v.len()).map_err(|_| PqError::TooLarge {
                                what: "DataRow",
                                len: v.len(),
                                max: i32::MAX as usize,
                            })?;
                            b.put_i32(n);
                            b.put_slice(v);
                        }
                    }
                }
                Ok(())
            }),
            BeMessage::CommandComplete(tag) => {
                write_framed(buf, b'C', |b| put_cstr(b, tag, "CommandComplete"))
            }
            BeMessage::EmptyQueryResponse => write_framed(buf, b'I', |_| Ok(())),
            BeMessage::ErrorResponse(e) => write_framed(buf, b'E', |b| write_error_fields(b, e)),
            BeMessage::NoticeResponse(e) => write_framed(buf, b'N', |b| write_error_fields(b, e)),
            BeMessage::CopyBothResponse => write_framed(buf, b'W', |b| {
                b.put_u8(0); // overall format: text
                b.put_i16(0); // no columns
                Ok(())
            }),
            BeMessage::CopyData(data) => write_framed(buf, b'd', |b| {
                b.put_slice(data);
                Ok(())
            }),
            BeMessage::CopyDone => write_framed(buf, b'c', |_| Ok(())),
            BeMessage::XLogData(x) => write_framed(buf, b'd', |b| {
                x.encode(b);
                Ok(())
            }),
            BeMessage::Keepalive(k) => write_framed(buf, b'd', |b| {
                k.encode(b);
                Ok(())
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::lsn::Lsn;
    use postgres_protocol::message::frontend;

    /// A backend message as a test sees it: tag and body.
    pub(crate) fn split_backend(mut buf: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let tag = buf[0];
            let len = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize;
            out.push((tag, buf[5..1 + len].to_vec()));
            buf = &buf[1 + len..];
        }
        out
    }

    /// Error/notice fields as (code, value) pairs.
    pub(crate) fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        let mut rest = body;
        while rest[0] != 0 {
            let code = rest[0];
            let nul = rest[1..].iter().position(|&b| b == 0).unwrap();
            out.push((code, String::from_utf8(rest[1..1 + nul].to_vec()).unwrap()));
            rest = &rest[2 + nul..];
        }
        assert_eq!(rest, [0]);
        out
    }

    fn parse_all_startup(bytes: &[u8]) -> Result<Option<FeStartupPacket>, PqError> {
        FeStartupPacket::parse(&mut BytesMut::from(bytes))
    }

    #[test]
    fn startup_message_round_trip() {
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", "postgres"),
                ("database", "replication"),
                ("replication", "true"),
                ("application_name", "walreceiver"),
            ],
            &mut buf,
        )
        .unwrap();
        buf.put_slice(b"next");
        let pkt = FeStartupPacket::parse(&mut buf).unwrap().unwrap();
        assert_eq!(
            pkt,
            FeStartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "postgres".into()),
                    ("database".into(), "replication".into()),
                    ("replication".into(), "true".into()),
                    ("application_name".into(), "walreceiver".into()),
                ]
            }
        );
        assert_eq!(&buf[..], b"next", "exactly one packet consumed");
    }

    #[test]
    fn ssl_gss_and_cancel_requests() {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        assert_eq!(&buf[..], [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]);
        assert_eq!(
            FeStartupPacket::parse(&mut buf).unwrap(),
            Some(FeStartupPacket::SslRequest)
        );
        assert_eq!(
            parse_all_startup(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).unwrap(),
            Some(FeStartupPacket::GssEncRequest)
        );
        let mut buf = BytesMut::new();
        frontend::cancel_request(42, -7, &mut buf);
        assert_eq!(
            FeStartupPacket::parse(&mut buf).unwrap(),
            Some(FeStartupPacket::CancelRequest {
                process_id: 42,
                secret_key: -7
            })
        );
    }

    #[test]
    fn startup_needs_whole_packet() {
        let mut full = BytesMut::new();
        frontend::startup_message([("user", "u")], &mut full).unwrap();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(FeStartupPacket::parse(&mut part).unwrap(), None);
            assert_eq!(part.len(), cut, "nothing consumed");
        }
    }

    #[test]
    fn startup_rejects_bad_lengths_and_layouts() {
        // length below the minimum
        for len in [-1i32, 0, 3, 4, 7] {
            let mut b = BytesMut::new();
            b.put_i32(len);
            b.put_u32(PROTOCOL_VERSION_3_0);
            assert!(
                matches!(parse_all_startup(&b), Err(PqError::BadLength { .. })),
                "{len}"
            );
        }
        // oversized: refused from the header alone, before any body arrives
        let mut b = BytesMut::new();
        b.put_i32(i32::MAX);
        assert!(matches!(
            parse_all_startup(&b),
            Err(PqError::TooLarge { .. })
        ));
        let mut b = BytesMut::new();
        b.put_i32(MAX_STARTUP_PACKET_LEN as i32 + 1);
        assert!(matches!(
            parse_all_startup(&b),
            Err(PqError::TooLarge { .. })
        ));
        // SSLRequest with a body; CancelRequest too short
        let mut b = BytesMut::new();
        b.put_i32(12);
        b.put_u32(SSL_REQUEST_CODE);
        b.put_u32(0);
        assert!(parse_all_startup(&b).is_err());
        let mut b = BytesMut::new();
        b.put_i32(12);
        b.put_u32(CANCEL_REQUEST_CODE);
        b.put_u32(0);
        assert!(parse_all_startup(&b).is_err());
        // protocol 2.0 and an unknown 1234.x request
        for code in [2 << 16, (1234 << 16) | 9999] {
            let mut b = BytesMut::new();
            b.put_i32(9);
            b.put_u32(code);
            b.put_u8(0);
            assert!(matches!(
                parse_all_startup(&b),
                Err(PqError::UnsupportedProtocol { .. })
            ));
        }
        // missing the final terminator, value without NUL, data after it
        for body in [
            &b"user\0u\0"[..],
            b"user\0u",
            b"user\0u\0\0x",
            b"",
            b"\xff\0x\0\0",
        ] {
            let mut b = BytesMut::new();
            b.put_i32(8 + body.len() as i32);
            b.put_u32(PROTOCOL_VERSION_3_0);
            b.put_slice(body);
            assert!(
                matches!(parse_all_startup(&b), Err(PqError::Malformed { .. })),
                "{body:?}"
            );
        }
        // a newer minor version is accepted (and negotiated down later)
        let mut b = BytesMut::new();
        b.put_i32(9);
        b.put_u32(PROTOCOL_VERSION_3_0 | 2);
        b.put_u8(0);
        assert_eq!(
            parse_all_startup(&b).unwrap(),
            Some(FeStartupPacket::Startup {
                minor: 2,
                params: vec![]
            })
        );
    }

    #[test]
    fn typed_messages_round_trip() {
        let mut buf = BytesMut::new();
        frontend::query("IDENTIFY_SYSTEM", &mut buf).unwrap();
        frontend::CopyData::new(&b"r0123"[..])
            .unwrap()
            .write(&mut buf);
        frontend::copy_done(&mut buf);
        frontend::copy_fail("bye", &mut buf).unwrap();
        frontend::sync(&mut buf);
        frontend::password_message(b"secret", &mut buf).unwrap();
        frontend::flush(&mut buf);
        frontend::terminate(&mut buf);
        let mut got = Vec::new();
        while let Some(m) = FeMessage::parse(&mut buf).unwrap() {
            got.push(m);
        }
        assert!(buf.is_empty());
        assert_eq!(
            got,
            vec![
                FeMessage::Query("IDENTIFY_SYSTEM".into()),
                FeMessage::CopyData(Bytes::from_static(b"r0123")),
                FeMessage::CopyDone,
                FeMessage::CopyFail("bye".into()),
                FeMessage::Sync,
                FeMessage::Password(Bytes::from_static(b"secret\0")),
                FeMessage::Unknown {
                    tag: b'H',
                    body: Bytes::new()
                },
                FeMessage::Terminate,
            ]
        );
    }

    #[test]
    fn typed_message_needs_whole_frame() {
        let mut full = BytesMut::new();
        frontend::query("SHOW wal_segment_size", &mut full).unwrap();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(FeMessage::parse(&mut part).unwrap(), None);
            assert_eq!(part.len(), cut);
        }
    }

    fn frame(tag: u8, len: i32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(tag);
        b.put_i32(len);
        b.put_slice(body);
        b
    }

    #[test]
    fn typed_messages_reject_bad_lengths_and_bodies() {
        for len in [i32::MIN, -1, 0, 3] {
            assert!(matches!(
                FeMessage::parse(&mut frame(b'Q', len, b"")),
                Err(PqError::BadLength { .. })
            ));
        }
        // caps are checked on the header alone
        let over_copy = MAX_COPY_DATA_LEN as i32 + 1;
        assert!(matches!(
            FeMessage::parse(&mut frame(b'd', over_copy, b"")),
            Err(PqError::TooLarge { .. })
        ));
        assert!(matches!(
            FeMessage::parse(&mut frame(b'd', i32::MAX, b"")),
            Err(PqError::TooLarge { .. })
        ));
        let over_msg = MAX_MESSAGE_LEN as i32 + 1;
        for tag in [b'p', b'f', b'P', 0] {
            assert!(matches!(
                FeMessage::parse(&mut frame(tag, over_msg, b"")),
                Err(PqError::TooLarge { .. })
            ));
        }
        let over_query = MAX_QUERY_LEN as i32 + 1;
        assert!(matches!(
            FeMessage::parse(&mut frame(b'Q', over_query, b"")),
            Err(PqError::TooLarge { .. })
        ));
        // a query as long as the largest history file needs is fine
        let q = format!(
            "PUT_TIMELINE_HISTORY 4294967295 '{}'\0",
            "ab".repeat(crate::pq::replication::MAX_HISTORY_FILE_LEN)
        );
        let mut b = frame(b'Q', 4 + q.len() as i32, q.as_bytes());
        assert!(matches!(
            FeMessage::parse(&mut b),
            Ok(Some(FeMessage::Query(_)))
        ));
        // a CopyData at the cap is fine
        let body = vec![7u8; MAX_COPY_DATA_LEN - 4];
        let mut b = frame(b'd', MAX_COPY_DATA_LEN as i32, &body);
        assert!(matches!(
            FeMessage::parse(&mut b).unwrap(),
            Some(FeMessage::CopyData(d)) if d.len() == body.len()
        ));
        // query without NUL, with data after NUL, not UTF-8
        for body in [&b"SELECT 1"[..], b"SELECT 1\0x", b"\xff\xfe\0"] {
            let mut b = frame(b'Q', 4 + body.len() as i32, body);
            assert!(
                matches!(FeMessage::parse(&mut b), Err(PqError::Malformed { .. })),
                "{body:?}"
            );
        }
        // fixed-size messages with a body
        for tag in [b'c', b'S', b'X'] {
            assert!(FeMessage::parse(&mut frame(tag, 5, b"x")).is_err());
        }
    }

    #[test]
    fn backend_messages_encode_exactly() {
        let mut buf = BytesMut::new();
        BeMessage::AuthenticationOk.write(&mut buf).unwrap();
        assert_eq!(&buf[..], b"R\0\0\0\x08\0\0\0\0");

        let mut buf = BytesMut::new();
        BeMessage::CopyBothResponse.write(&mut buf).unwrap();
        assert_eq!(&buf[..], b"W\0\0\0\x07\0\0\0");

        let mut buf = BytesMut::new();
        BeMessage::ReadyForQuery(TransactionStatus::Idle)
            .write(&mut buf)
            .unwrap();
        assert_eq!(&buf[..], b"Z\0\0\0\x05I");

        let mut buf = BytesMut::new();
        BeMessage::ParameterStatus {
            name: "integer_datetimes",
            value: "on",
        }
        .write(&mut buf)
        .unwrap();
        assert_eq!(&buf[..], b"S\0\0\0\x19integer_datetimes\0on\0");

        let mut buf = BytesMut::new();
        BeMessage::BackendKeyData {
            process_id: 1,
            secret_key: 2,
        }
        .write(&mut buf)
        .unwrap();
        assert_eq!(&buf[..], b"K\0\0\0\x0c\0\0\0\x01\0\0\0\x02");

        let mut buf = BytesMut::new();
        BeMessage::CommandComplete("IDENTIFY_SYSTEM")
            .write(&mut buf)
            .unwrap();
        BeMessage::EmptyQueryResponse.write(&mut buf).unwrap();
        BeMessage::CopyData(b"abc").write(&mut buf).unwrap();
        BeMessage::CopyDone.write(&mut buf).unwrap();
        assert_eq!(
            split_backend(&buf),
            vec![
                (b'C', b"IDENTIFY_SYSTEM\0".to_vec()),
                (b'I', vec![]),
                (b'd', b"abc".to_vec()),
                (b'c', vec![]),
            ]
        );

        let mut buf = BytesMut::new();
        BeMessage::NegotiateProtocolVersion {
            newest_minor: 0,
            unrecognized: &["_pq_.x".to_string()],
        }
        .write(&mut buf)
        .unwrap();
        assert_eq!(&buf[..], b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0");
    }

    #[test]
    fn row_description_and_data_row() {
        let mut buf = BytesMut::new();
        let cols = [
            Column::text("systemid"),
            Column::int4("timeline"),
            Column::text("xlogpos"),
            Column::int8("restart_tli"),
        ];
        BeMessage::RowDescription(&cols).write(&mut buf).unwrap();
        BeMessage::DataRow(&[Some(b"7000"), Some(b"1"), Some(b""), None])
            .write(&mut buf)
            .unwrap();
        let msgs = split_backend(&buf);
        let (tag, body) = &msgs[0];
        assert_eq!(*tag, b'T');
        let mut b = &body[..];
        assert_eq!(b.get_i16(), 4);
        for (name, oid, len) in [
            ("systemid", 25, -1),
            ("timeline", 23, 4),
            ("xlogpos", 25, -1),
            ("restart_tli", 20, 8),
        ] {
            let nul = b.iter().position(|&c| c == 0).unwrap();
            assert_eq!(&b[..nul], name.as_bytes());
            b.advance(nul + 1);
            assert_eq!(b.get_u32(), 0);
            assert_eq!(b.get_i16(), 0);
            assert_eq!(b.get_u32(), oid);
            assert_eq!(b.get_i16(), len);
            assert_eq!(b.get_i32(), -1);
            assert_eq!(b.get_i16(), 0);
        }
        assert!(b.is_empty());
        let (tag, body) = &msgs[1];
        assert_eq!(*tag, b'D');
        assert_eq!(
            &body[..],
            b"\0\x04\0\0\0\x047000\0\0\0\x011\0\0\0\0\xff\xff\xff\xff"
        );
    }

    #[test]
    fn error_and_notice_fields() {
        let e = ErrorNotice::error("0A000", "nope")
            .with_detail("d")
            .with_hint("h");
        let mut buf = BytesMut::new();
        BeMessage::ErrorResponse(&e).write(&mut buf).unwrap();
        BeMessage::NoticeResponse(&ErrorNotice::new(Severity::Notice, "00000", "hi"))
            .write(&mut buf)
            .unwrap();
        let msgs = split_backend(&buf);
        assert_eq!(msgs[0].0, b'E');
        assert_eq!(
            error_fields(&msgs[0].1),
            vec![
                (b'S', "ERROR".into()),
                (b'V', "ERROR".into()),
                (b'C', "0A000".into()),
                (b'M', "nope".into()),
                (b'D', "d".into()),
                (b'H', "h".into()),
            ]
        );
        assert_eq!(msgs[1].0, b'N');
        assert_eq!(error_fields(&msgs[1].1)[0], (b'S', "NOTICE".into()));
        // NUL in error text is escaped, not a framing error
        let mut buf = BytesMut::new();
        BeMessage::ErrorResponse(&ErrorNotice::fatal("XX000", "a\0b"))
            .write(&mut buf)
            .unwrap();
        assert_eq!(error_fields(&split_backend(&buf)[0].1)[3].1, "a\\0b");
    }

    #[test]
    fn unencodable_backend_messages_leave_buffer_unchanged() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(BeMessage::ParameterStatus {
            name: "a\0b",
            value: "c"
        }
        .write(&mut buf)
        .is_err());
        assert!(BeMessage::RowDescription(&[Column::text("x\0")])
            .write(&mut buf)
            .is_err());
        let many = vec![None; 40_000];
        assert!(BeMessage::DataRow(&many).write(&mut buf).is_err());
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn streaming_messages_are_framed_as_copy_data() {
        let x = XLogData {
            data_start: Lsn(0x100_0000),
            wal_end: Lsn(0x100_2000),
            send_time: 5,
            data: Bytes::from_static(b"wal"),
        };
        let k = PrimaryKeepalive {
            wal_end: Lsn(9),
            send_time: 6,
            reply_requested: true,
        };
        let mut buf = BytesMut::new();
        BeMessage::XLogData(&x).write(&mut buf).unwrap();
        BeMessage::Keepalive(&k).write(&mut buf).unwrap();
        let msgs = split_backend(&buf);
        assert_eq!(msgs[0].0, b'd');
        assert_eq!(msgs[0].1.len(), 25 + 3);
        assert_eq!(msgs[1].0, b'd');
        assert_eq!(msgs[1].1.len(), 18);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = FeStartupPacket::parse(&mut buf) {}
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = FeMessage::parse(&mut buf) {}
        }

        #[test]
        fn arbitrary_startup_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut buf = BytesMut::new();
            buf.put_i32(8 + body.len() as i32);
            buf.put_u32(PROTOCOL_VERSION_3_0);
            buf.put_slice(&body);
            let _ = FeStartupPacket::parse(&mut buf);
        }
    }
}
