//! Replication commands (the walsender grammar of PostgreSQL 15, physical
//! only, plus our own `START_WAL_PUSH` and recovery-read options) and the
//! CopyData sub-messages exchanged while streaming.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::sqlstate;
use super::PqError;
use crate::lsn::Lsn;

/// A `(name value, ...)` option of a replication command. Unquoted names are
/// folded to lower case, as PostgreSQL does; a value keeps its spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOption {
    pub name: String,
    pub value: Option<String>,
}

/// The option called `name`, if present.
pub fn find_option<'a>(options: &'a [CommandOption], name: &str) -> Option<&'a CommandOption> {
    options.iter().find(|o| o.name.eq_ignore_ascii_case(name))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand {
    /// Blank query (or a lone `;`): answered with EmptyQueryResponse.
    Empty,
    IdentifySystem,
    Show {
        name: String,
    },
    TimelineHistory {
        timeline: u32,
    },
    ReadReplicationSlot {
        slot: String,
    },
    /// Physical slots only; `reserve_wal` from the legacy `RESERVE_WAL`
    /// keyword or the `(RESERVE_WAL [bool])` option.
    CreateReplicationSlot {
        slot: String,
        temporary: bool,
        reserve_wal: bool,
    },
    DropReplicationSlot {
        slot: String,
        wait: bool,
    },
    /// Physical streaming. `options` is our extension (e.g. `(term '5')` for a
    /// proposer's recovery read); PostgreSQL clients send none.
    StartReplication {
        slot: Option<String>,
        start_lsn: Lsn,
        timeline: Option<u32>,
        options: Vec<CommandOption>,
    },
    /// A proxy hands a safekeeper the primary's history file of a timeline
    /// above 1 (ours: `PUT_TIMELINE_HISTORY n 'hex of the file'`), so
    /// consumers can ask TIMELINE_HISTORY for it. At most
    /// [`MAX_HISTORY_FILE_LEN`] bytes are stored.
    PutTimelineHistory {
        timeline: u32,
        content: Vec<u8>,
    },
    /// A proposer starts pushing WAL in CopyBoth.
    StartWalPush {
        options: Vec<CommandOption>,
    },
    /// `TIMELINE_SETTLED (term 'N', lsn 'X/Y')`: our extension, sent by
    /// `safekeeper-proxy --sync-only` to each node of the majority it
    /// settled, so the node records it durably.
    TimelineSettled {
        term: u64,
        lsn: Lsn,
    },
    /// A command we do not implement (SQL, BASE_BACKUP, logical
    /// replication, …), with the query text: answer FEATURE_NOT_SUPPORTED.
    Unsupported(String),
}

/// A syntax error in a command we do implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReplicationParseError(pub String);

impl From<ReplicationParseError> for super::PgError {
    fn from(e: ReplicationParseError) -> super::PgError {
        super::PgError::new(e.sqlstate(), e.0)
    }
}

impl ReplicationParseError {
    pub fn sqlstate(&self) -> sqlstate::SqlState {
        sqlstate::SYNTAX_ERROR
    }
}

fn syntax(msg: impl Into<String>) -> ReplicationParseError {
    ReplicationParseError(msg.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Unquoted word, folded to lower case.
    Ident(String),
    /// `"double-quoted"` identifier, case kept.
    Quoted(String),
    /// `'string'` literal.
    Str(String),
    /// Unsigned integer, as written.
    Num(String),
    /// `X/X`, as written.
    Lsn(String),
    LParen,
    RParen,
    Comma,
    Dot,
    Semicolon,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) | Tok::Num(s) | Tok::Lsn(s) => write!(f, "{s}"),
            Tok::Quoted(s) => write!(f, "\"{s}\""),
            Tok::Str(s) => write!(f, "'{s}'"),
            Tok::LParen => f.write_str("("),
            Tok::RParen => f.write_str(")"),
            Tok::Comma => f.write_str(","),
            Tok::Dot => f.write_str("."),
            Tok::Semicolon => f.write_str(";"),
        }
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

fn is_ident_cont(c: char) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == '$'
}

/// Reads a quoted token whose quote is doubled to escape it.
fn quoted(chars: &[char], i: &mut usize, q: char) -> Result<String, ReplicationParseError> {
    let mut s = String::new();
    *i += 1;
    loop {
        match chars.get(*i) {
            None => return Err(syntax(format!("unterminated quoted string ({q})"))),
            Some(&c) if c == q => {
                if chars.get(*i + 1) == Some(&q) {
                    s.push(q);
                    *i += 2;
                } else {
                    *i += 1;
                    return Ok(s);
                }
            }
            Some(&c) => {
                s.push(c);
                *i += 1;
            }
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Tok>, ReplicationParseError> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // Longest match first, like the flex scanner: `A/B` is an LSN even
        // though `A` alone would be a word.
        let hex_end = i + chars[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if hex_end > i
            && chars.get(hex_end) == Some(&'/')
            && chars
                .get(hex_end + 1)
                .is_some_and(|c| c.is_ascii_hexdigit())
        {
            let end = hex_end
                + 1
                + chars[hex_end + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
            toks.push(Tok::Lsn(chars[i..end].iter().collect()));
            i = end;
            continue;
        }
        match c {
            '(' => toks.push(Tok::LParen),
            ')' => toks.push(Tok::RParen),
            ',' => toks.push(Tok::Comma),
            '.' => toks.push(Tok::Dot),
            ';' => toks.push(Tok::Semicolon),
            '"' => {
                let s = quoted(&chars, &mut i, '"')?;
                if s.is_empty() {
                    return Err(syntax("zero-length delimited identifier"));
                }
                toks.push(Tok::Quoted(s));
                continue;
            }
            '\'' => {
                toks.push(Tok::Str(quoted(&chars, &mut i, '\'')?));
                continue;
            }
            _ if c.is_ascii_digit() => {
                let end = i + chars[i..].iter().take_while(|c| c.is_ascii_digit()).count();
                toks.push(Tok::Num(chars[i..end].iter().collect()));
                i = end;
                continue;
            }
            _ if is_ident_start(c) => {
                let end = i + chars[i..].iter().take_while(|&&c| is_ident_cont(c)).count();
                let word: String = chars[i..end].iter().collect();
                toks.push(Tok::Ident(word.to_ascii_lowercase()));
                i = end;
                continue;
            }
            _ => return Err(syntax(format!("syntax error at or near \"{c}\""))),
        }
        i += 1;
    }
    Ok(toks)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn near(&self) -> String {
        match self.peek() {
            Some(t) => format!("syntax error at or near \"{t}\""),
            None => "syntax error at end of input".to_string(),
        }
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w == kw)
    }

    fn eat_kw(&mut self, kw: &str) -> bool {
        let yes = self.is_kw(kw);
        if yes {
            self.pos += 1;
        }
        yes
    }

    fn expect_kw(&mut self, kw: &str) -> Result<(), ReplicationParseError> {
        if self.eat_kw(kw) {
            Ok(())
        } else {
            Err(syntax(self.near()))
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        let yes = self.peek() == Some(tok);
        if yes {
            self.pos += 1;
        }
        yes
    }

    /// An identifier, quoted or not.
    fn name(&mut self) -> Result<String, ReplicationParseError> {
        match self.peek() {
            Some(Tok::Ident(s)) | Some(Tok::Quoted(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(syntax(self.near())),
        }
    }

    /// `name ('.' name)*`, for SHOW and option names.
    fn dotted_name(&mut self) -> Result<String, ReplicationParseError> {
        let mut s = self.name()?;
        while self.eat(&Tok::Dot) {
            s.push('.');
            s.push_str(&self.name()?);
        }
        Ok(s)
    }

    fn timeline(&mut self) -> Result<u32, ReplicationParseError> {
        match self.peek() {
            Some(Tok::Num(n)) => {
                let tli = n
                    .parse::<u32>()
                    .map_err(|_| syntax(format!("invalid timeline {n}")))?;
                self.pos += 1;
                if tli == 0 {
                    return Err(syntax("invalid timeline 0"));
                }
                Ok(tli)
            }
            _ => Err(syntax(self.near())),
        }
    }

    fn lsn(&mut self) -> Result<Lsn, ReplicationParseError> {
        match self.peek() {
            Some(Tok::Lsn(s)) => {
                let lsn = s.parse::<Lsn>().map_err(|e| syntax(e.to_string()))?;
                self.pos += 1;
                Ok(lsn)
            }
            _ => Err(syntax(self.near())),
        }
    }

    /// After `(`: `name [value] {, name [value]} )`. Names must be unique.
    fn option_list(&mut self) -> Result<Vec<CommandOption>, ReplicationParseError> {
        let mut opts: Vec<CommandOption> = Vec::new();
        loop {
            let name = self.dotted_name()?;
            let value = match self.peek() {
                Some(Tok::Ident(s) | Tok::Quoted(s) | Tok::Str(s) | Tok::Num(s) | Tok::Lsn(s)) => {
                    let s = s.clone();
                    self.pos += 1;
                    Some(s)
                }
                _ => None,
            };
            if find_option(&opts, &name).is_some() {
                return Err(syntax(format!("conflicting or redundant options: {name}")));
            }
            opts.push(CommandOption { name, value });
            if self.eat(&Tok::RParen) {
                return Ok(opts);
            }
            if !self.eat(&Tok::Comma) {
                return Err(syntax(self.near()));
            }
        }
    }

    fn opt_option_list(&mut self) -> Result<Vec<CommandOption>, ReplicationParseError> {
        if self.eat(&Tok::LParen) {
            self.option_list()
        } else {
            Ok(Vec::new())
        }
    }

    /// Only an optional `;` may follow the command.
    fn end(&mut self) -> Result<(), ReplicationParseError> {
        self.eat(&Tok::Semicolon);
        if self.peek().is_some() {
            return Err(syntax(self.near()));
        }
        Ok(())
    }
}

/// PostgreSQL's `parse_bool`: unique prefixes of true/false/yes/no, on/off, 1/0.
pub fn parse_pg_bool(s: &str) -> Option<bool> {
    let l = s.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| l.len() >= min && word.starts_with(l.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) || l == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || l == "0" {
        Some(false)
    } else {
        None
    }
}

const KNOWN_COMMANDS: &[&str] = &[
    "identify_system",
    "show",
    "timeline_history",
    "read_replication_slot",
    "create_replication_slot",
    "drop_replication_slot",
    "start_replication",
    "start_wal_push",
    "timeline_settled",
    "put_timeline_history",
];

impl ReplicationCommand {
    /// Parse a simple-query string sent on a replication connection.
    /// Unknown commands (including all SQL) come back as `Unsupported`, so
    /// that only a malformed command we implement is a syntax error.
    pub fn parse(text: &str) -> Result<ReplicationCommand, ReplicationParseError> {
        let trimmed = text.trim_start();
        let first: String = trimmed
            .chars()
            .take_while(|&c| is_ident_cont(c))
            .collect::<String>()
            .to_ascii_lowercase();
        if first.is_empty() {
            let rest = trimmed.trim_end();
            if rest.is_empty() || rest == ";" {
                return Ok(ReplicationCommand::Empty);
            }
            return Ok(ReplicationCommand::Unsupported(text.to_owned()));
        }
        if !KNOWN_COMMANDS.contains(&first.as_str()) {
            return Ok(ReplicationCommand::Unsupported(text.to_owned()));
        }
        let mut p = Parser {
            toks: tokenize(text)?,
            pos: 1,
        };
        let cmd = match first.as_str() {
            "identify_system" => ReplicationCommand::IdentifySystem,
            "show" => ReplicationCommand::Show {
                name: p.dotted_name()?,
            },
            "timeline_history" => ReplicationCommand::TimelineHistory {
                timeline: p.timeline()?,
            },
            "read_replication_slot" => ReplicationCommand::ReadReplicationSlot { slot: p.name()? },
            "create_replication_slot" => {
                let slot = p.name()?;
                let temporary = p.eat_kw("temporary");
                if p.is_kw("logical") {
                    return Ok(ReplicationCommand::Unsupported(text.to_owned()));
                }
                p.expect_kw("physical")?;
                let reserve_wal = parse_physical_slot_options(&mut p)?;
                ReplicationCommand::CreateReplicationSlot {
                    slot,
                    temporary,
                    reserve_wal,
                }
            }
            "drop_replication_slot" => ReplicationCommand::DropReplicationSlot {
                slot: p.name()?,
                wait: p.eat_kw("wait"),
            },
            "start_replication" => {
                let slot = if p.eat_kw("slot") {
                    Some(p.name()?)
                } else {
                    None
                };
                if p.is_kw("logical") {
                    return Ok(ReplicationCommand::Unsupported(text.to_owned()));
                }
                p.eat_kw("physical");
                let start_lsn = p.lsn()?;
                let timeline = if p.eat_kw("timeline") {
                    Some(p.timeline()?)
                } else {
                    None
                };
                ReplicationCommand::StartReplication {
                    slot,
                    start_lsn,
                    timeline,
                    options: p.opt_option_list()?,
                }
            }
            "put_timeline_history" => {
                let timeline = p.timeline()?;
                let content = match p.peek() {
                    Some(Tok::Str(hex)) => decode_hex(hex),
                    _ => None,
                }
                .ok_or_else(|| {
                    syntax("PUT_TIMELINE_HISTORY n 'hex': the history file's bytes in quoted hex")
                })?;
                p.pos += 1;
                ReplicationCommand::PutTimelineHistory { timeline, content }
            }
            "start_wal_push" => ReplicationCommand::StartWalPush {
                options: p.opt_option_list()?,
            },
            "timeline_settled" => {
                let options = p.opt_option_list()?;
                let value = |name: &str| {
                    find_option(&options, name)
                        .and_then(|o| o.value.clone())
                        .ok_or_else(|| {
                            syntax(format!(
                                "TIMELINE_SETTLED needs option {name}: TIMELINE_SETTLED (term 'N', lsn 'X/Y')"
                            ))
                        })
                };
                let term = value("term")?;
                let lsn = value("lsn")?;
                ReplicationCommand::TimelineSettled {
                    term: term.parse().map_err(|_| {
                        syntax(format!("TIMELINE_SETTLED: term {term:?} is not a number"))
                    })?,
                    lsn: lsn
                        .parse()
                        .map_err(|e| syntax(format!("TIMELINE_SETTLED: lsn {lsn:?}: {e}")))?,
                }
            }
            _ => return Ok(ReplicationCommand::Unsupported(text.to_owned())),
        };
        p.end()?;
        Ok(cmd)
    }
}

/// Legacy `[RESERVE_WAL]` or `(RESERVE_WAL [bool], ...)`; the other
/// options PostgreSQL knows are for logical slots and so are errors here.
fn parse_physical_slot_options(p: &mut Parser) -> Result<bool, ReplicationParseError> {
    if p.eat(&Tok::LParen) {
        let mut reserve_wal = false;
        for opt in p.option_list()? {
            if opt.name != "reserve_wal" {
                return Err(syntax(format!("unrecognized option: {}", opt.name)));
            }
            reserve_wal = match &opt.value {
                None => true,
                Some(v) => parse_pg_bool(v)
                    .ok_or_else(|| syntax(format!("reserve_wal requires a Boolean value: {v}")))?,
            };
        }
        return Ok(reserve_wal);
    }
    let mut reserve_wal = false;
    while let Some(Tok::Ident(w)) = p.peek() {
        match w.as_str() {
            "reserve_wal" if !reserve_wal => reserve_wal = true,
            "reserve_wal" => return Err(syntax("conflicting or redundant options: reserve_wal")),
            _ => return Err(syntax(format!("unrecognized option: {w}"))),
        }
        p.pos += 1;
    }
    Ok(reserve_wal)
}

// ---------------------------------------------------------------------------
// Streaming sub-messages (inside CopyData)

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A PostgreSQL timestamp (µs since 2000-01-01 UTC) for `t`.
pub fn to_pg_timestamp(t: SystemTime) -> i64 {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match t.duration_since(pg_epoch) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// The time a PostgreSQL timestamp names; `None` if the system clock type
/// cannot represent it.
pub fn from_pg_timestamp(ts: i64) -> Option<SystemTime> {
    let pg_epoch = UNIX_EPOCH.checked_add(Duration::from_secs(PG_EPOCH_UNIX_SECS))?;
    let d = Duration::from_micros(ts.unsigned_abs());
    if ts >= 0 {
        pg_epoch.checked_add(d)
    } else {
        pg_epoch.checked_sub(d)
    }
}

/// Now, as a PostgreSQL timestamp (for `sendTime` fields).
pub fn pg_now() -> i64 {
    to_pg_timestamp(SystemTime::now())
}

pub const XLOG_DATA_TAG: u8 = b'w';
pub const PRIMARY_KEEPALIVE_TAG: u8 = b'k';
pub const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';
pub const HOT_STANDBY_FEEDBACK_TAG: u8 = b'h';

/// Bytes of an XLogData before its WAL.
pub const XLOG_DATA_HEADER_LEN: usize = 25;
pub const PRIMARY_KEEPALIVE_LEN: usize = 18;
pub const STANDBY_STATUS_UPDATE_LEN: usize = 34;
pub const HOT_STANDBY_FEEDBACK_LEN: usize = 25;

/// `w`: WAL from `data_start`; the server's WAL end and clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    pub data_start: Lsn,
    pub wal_end: Lsn,
    pub send_time: i64,
    pub data: Bytes,
}

/// `k`: the server's WAL end; `reply_requested` asks for a status update now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    pub wal_end: Lsn,
    pub send_time: i64,
    pub reply_requested: bool,
}

/// `r`: what the client has written, flushed and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub apply_lsn: Lsn,
    pub send_time: i64,
    pub reply_requested: bool,
}

/// `h`: the standby's xmin horizons (walreceivers send one even with
/// `hot_standby_feedback` off; a WAL server only needs to accept it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotStandbyFeedback {
    pub send_time: i64,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

fn check_len(
    what: &'static str,
    body: &[u8],
    tag: u8,
    len: usize,
    exact: bool,
) -> Result<(), PqError> {
    if body.first() != Some(&tag) {
        return Err(PqError::malformed(
            what,
            format!("expected tag {:?}", tag as char),
        ));
    }
    if body.len() < len || (exact && body.len() != len) {
        return Err(PqError::malformed(
            what,
            format!(
                "{} bytes, expected {}{len}",
                body.len(),
                if exact { "" } else { "at least " }
            ),
        ));
    }
    Ok(())
}

impl XLogData {
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(XLOG_DATA_HEADER_LEN + self.data.len());
        buf.put_u8(XLOG_DATA_TAG);
        buf.put_u64(self.data_start.0);
        buf.put_u64(self.wal_end.0);
        buf.put_i64(self.send_time);
        buf.put_slice(&self.data);
    }

    /// Decodes a CopyData body; the WAL is a slice of `body`, not a copy.
    pub fn decode(body: &Bytes) -> Result<XLogData, PqError> {
        check_len("XLogData", body, XLOG_DATA_TAG, XLOG_DATA_HEADER_LEN, false)?;
        let mut b = &body[1..];
        Ok(XLogData {
            data_start: Lsn(b.get_u64()),
            wal_end: Lsn(b.get_u64()),
            send_time: b.get_i64(),
            data: body.slice(XLOG_DATA_HEADER_LEN..),
        })
    }

    /// The LSN just past this message's WAL; `None` on overflow.
    pub fn data_end(&self) -> Option<Lsn> {
        self.data_start.checked_add(self.data.len() as u64)
    }
}

impl PrimaryKeepalive {
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(PRIMARY_KEEPALIVE_TAG);
        buf.put_u64(self.wal_end.0);
        buf.put_i64(self.send_time);
        buf.put_u8(self.reply_requested as u8);
    }

    pub fn decode(body: &[u8]) -> Result<PrimaryKeepalive, PqError> {
        check_len(
            "keepalive",
            body,
            PRIMARY_KEEPALIVE_TAG,
            PRIMARY_KEEPALIVE_LEN,
            true,
        )?;
        let mut b = &body[1..];
        Ok(PrimaryKeepalive {
            wal_end: Lsn(b.get_u64()),
            send_time: b.get_i64(),
            reply_requested: b.get_u8() != 0,
        })
    }
}

impl StandbyStatusUpdate {
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(STANDBY_STATUS_UPDATE_TAG);
        buf.put_u64(self.write_lsn.0);
        buf.put_u64(self.flush_lsn.0);
        buf.put_u64(self.apply_lsn.0);
        buf.put_i64(self.send_time);
        buf.put_u8(self.reply_requested as u8);
    }

    pub fn decode(body: &[u8]) -> Result<StandbyStatusUpdate, PqError> {
        check_len(
            "standby status update",
            body,
            STANDBY_STATUS_UPDATE_TAG,
            STANDBY_STATUS_UPDATE_LEN,
            true,
        )?;
        let mut b = &body[1..];
        Ok(StandbyStatusUpdate {
            write_lsn: Lsn(b.get_u64()),
            flush_lsn: Lsn(b.get_u64()),
            apply_lsn: Lsn(b.get_u64()),
            send_time: b.get_i64(),
            reply_requested: b.get_u8() != 0,
        })
    }
}

impl HotStandbyFeedback {
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(HOT_STANDBY_FEEDBACK_TAG);
        buf.put_i64(self.send_time);
        buf.put_u32(self.xmin);
        buf.put_u32(self.xmin_epoch);
        buf.put_u32(self.catalog_xmin);
        buf.put_u32(self.catalog_xmin_epoch);
    }

    pub fn decode(body: &[u8]) -> Result<HotStandbyFeedback, PqError> {
        check_len(
            "hot standby feedback",
            body,
            HOT_STANDBY_FEEDBACK_TAG,
            HOT_STANDBY_FEEDBACK_LEN,
            true,
        )?;
        let mut b = &body[1..];
        Ok(HotStandbyFeedback {
            send_time: b.get_i64(),
            xmin: b.get_u32(),
            xmin_epoch: b.get_u32(),
            catalog_xmin: b.get_u32(),
            catalog_xmin_epoch: b.get_u32(),
        })
    }
}

/// What a WAL sender puts in CopyData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReplMessage {
    XLogData(XLogData),
    Keepalive(PrimaryKeepalive),
}

impl ServerReplMessage {
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            ServerReplMessage::XLogData(x) => x.encode(buf),
            ServerReplMessage::Keepalive(k) => k.encode(buf),
        }
    }

    pub fn decode(body: &Bytes) -> Result<ServerReplMessage, PqError> {
        match body.first() {
            Some(&XLOG_DATA_TAG) => XLogData::decode(body).map(ServerReplMessage::XLogData),
            Some(&PRIMARY_KEEPALIVE_TAG) => {
                PrimaryKeepalive::decode(body).map(ServerReplMessage::Keepalive)
            }
            other => Err(unexpected_tag("replication server", other)),
        }
    }
}

/// What a streaming client puts in CopyData.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyReplMessage {
    StatusUpdate(StandbyStatusUpdate),
    HotStandbyFeedback(HotStandbyFeedback),
}

impl StandbyReplMessage {
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            StandbyReplMessage::StatusUpdate(s) => s.encode(buf),
            StandbyReplMessage::HotStandbyFeedback(h) => h.encode(buf),
        }
    }

    pub fn decode(body: &[u8]) -> Result<StandbyReplMessage, PqError> {
        match body.first() {
            Some(&STANDBY_STATUS_UPDATE_TAG) => {
                StandbyStatusUpdate::decode(body).map(StandbyReplMessage::StatusUpdate)
            }
            Some(&HOT_STANDBY_FEEDBACK_TAG) => {
                HotStandbyFeedback::decode(body).map(StandbyReplMessage::HotStandbyFeedback)
            }
            other => Err(unexpected_tag("standby", other)),
        }
    }
}

fn unexpected_tag(what: &'static str, tag: Option<&u8>) -> PqError {
    match tag {
        None => PqError::malformed(what, "empty CopyData"),
        Some(t) => PqError::malformed(what, format!("unexpected message type {:?}", *t as char)),
    }
}

fn decode_hex(h: &str) -> Option<Vec<u8>> {
    // Hex digits only: `u8::from_str_radix` alone would take a sign ("+f").
    if !h.len().is_multiple_of(2) || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
        .collect()
}

/// The largest history file a safekeeper stores. PostgreSQL writes one line
/// of about 50 bytes per timeline switch, so this is some 20,000 promotions.
pub const MAX_HISTORY_FILE_LEN: usize = 1 << 20;

/// The file's bytes as PUT_TIMELINE_HISTORY carries them.
pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn put_timeline_history_carries_the_file_in_hex() {
        let file = b"1\t0/3000000\tno recovery target specified\n";
        let cmd =
            ReplicationCommand::parse(&format!("PUT_TIMELINE_HISTORY 2 '{}'", encode_hex(file)))
                .unwrap();
        assert_eq!(
            cmd,
            ReplicationCommand::PutTimelineHistory {
                timeline: 2,
                content: file.to_vec()
            }
        );
        for bad in [
            "PUT_TIMELINE_HISTORY 2 'zz'",
            "PUT_TIMELINE_HISTORY 2 'abc'",
            "PUT_TIMELINE_HISTORY 2 '+f'",
            "PUT_TIMELINE_HISTORY 2",
            "PUT_TIMELINE_HISTORY 0 ''",
        ] {
            assert!(ReplicationCommand::parse(bad).is_err(), "{bad}");
        }
    }

    use super::*;
    use ReplicationCommand as C;

    fn parse(s: &str) -> ReplicationCommand {
        ReplicationCommand::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn opt(name: &str, value: Option<&str>) -> CommandOption {
        CommandOption {
            name: name.into(),
            value: value.map(Into::into),
        }
    }

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn timeline_settled() {
        assert_eq!(
            parse("TIMELINE_SETTLED (term '7', lsn '0/3000148')"),
            C::TimelineSettled {
                term: 7,
                lsn: lsn("0/3000148")
            }
        );
        assert!(ReplicationCommand::parse("TIMELINE_SETTLED (term '7')").is_err());
        assert!(ReplicationCommand::parse("TIMELINE_SETTLED (term 'x', lsn '0/1')").is_err());
        assert!(ReplicationCommand::parse("TIMELINE_SETTLED").is_err());
    }

    #[test]
    fn walreceiver_commands() {
        // exactly what PostgreSQL 15's libpqwalreceiver sends
        assert_eq!(parse("IDENTIFY_SYSTEM"), C::IdentifySystem);
        assert_eq!(
            parse("TIMELINE_HISTORY 2"),
            C::TimelineHistory { timeline: 2 }
        );
        assert_eq!(
            parse(
                "CREATE_REPLICATION_SLOT \"pg_walreceiver_12345\" TEMPORARY PHYSICAL (RESERVE_WAL)"
            ),
            C::CreateReplicationSlot {
                slot: "pg_walreceiver_12345".into(),
                temporary: true,
                reserve_wal: true
            }
        );
        assert_eq!(
            parse("START_REPLICATION 0/3000000 TIMELINE 1"),
            C::StartReplication {
                slot: None,
                start_lsn: lsn("0/3000000"),
                timeline: Some(1),
                options: vec![]
            }
        );
        assert_eq!(
            parse("START_REPLICATION SLOT \"standby_1\" 16/B3000000 TIMELINE 3"),
            C::StartReplication {
                slot: Some("standby_1".into()),
                start_lsn: lsn("16/B3000000"),
                timeline: Some(3),
                options: vec![]
            }
        );
    }

    #[test]
    fn pg_receivewal_commands() {
        assert_eq!(
            parse("SHOW data_directory_mode"),
            C::Show {
                name: "data_directory_mode".into()
            }
        );
        assert_eq!(
            parse("SHOW wal_segment_size"),
            C::Show {
                name: "wal_segment_size".into()
            }
        );
        assert_eq!(
            parse("READ_REPLICATION_SLOT s1"),
            C::ReadReplicationSlot { slot: "s1".into() }
        );
        assert_eq!(
            parse("START_REPLICATION SLOT \"s1\" 0/1000000 TIMELINE 1"),
            C::StartReplication {
                slot: Some("s1".into()),
                start_lsn: lsn("0/1000000"),
                timeline: Some(1),
                options: vec![]
            }
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT \"s1\" PHYSICAL"),
            C::CreateReplicationSlot {
                slot: "s1".into(),
                temporary: false,
                reserve_wal: false
            }
        );
    }

    #[test]
    fn keywords_are_case_insensitive_and_whitespace_tolerant() {
        assert_eq!(parse("  identify_system ;  "), C::IdentifySystem);
        assert_eq!(parse("Identify_System;"), C::IdentifySystem);
        assert_eq!(
            parse("\tTimeline_History\n7;"),
            C::TimelineHistory { timeline: 7 }
        );
        assert_eq!(
            parse("start_replication slot S1 physical a/b timeline 2;"),
            C::StartReplication {
                slot: Some("s1".into()), // unquoted names fold to lower case
                start_lsn: Lsn(0xA_0000_000B),
                timeline: Some(2),
                options: vec![]
            }
        );
        assert_eq!(
            parse("START_REPLICATION PHYSICAL 0/0"),
            C::StartReplication {
                slot: None,
                start_lsn: Lsn(0),
                timeline: None,
                options: vec![]
            }
        );
        assert_eq!(
            parse("SHOW \"Mixed\".sub"),
            C::Show {
                name: "Mixed.sub".into()
            }
        );
        assert_eq!(
            parse("READ_REPLICATION_SLOT \"with \"\"quote\"\"\""),
            C::ReadReplicationSlot {
                slot: "with \"quote\"".into()
            }
        );
        assert_eq!(parse(""), C::Empty);
        assert_eq!(parse("  ; "), C::Empty);
    }

    #[test]
    fn create_slot_forms() {
        let slot = |temporary, reserve_wal| C::CreateReplicationSlot {
            slot: "s".into(),
            temporary,
            reserve_wal,
        };
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL"),
            slot(false, true)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL)"),
            slot(false, true)
        );
        assert_eq!(
            parse("create_replication_slot s physical(reserve_wal);"),
            slot(false, true)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s TEMPORARY PHYSICAL"),
            slot(true, false)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL ( RESERVE_WAL true )"),
            slot(false, true)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 'off')"),
            slot(false, false)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL 0)"),
            slot(false, false)
        );
        for bad in [
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL, RESERVE_WAL)",
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL maybe)",
            "CREATE_REPLICATION_SLOT s PHYSICAL (TWO_PHASE)",
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL,)",
            "CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL",
            "CREATE_REPLICATION_SLOT s PHYSICAL ()",
            "CREATE_REPLICATION_SLOT s PHYSICAL EXPORT_SNAPSHOT",
            "CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL RESERVE_WAL",
            "CREATE_REPLICATION_SLOT s",
            "CREATE_REPLICATION_SLOT PHYSICAL",
            "CREATE_REPLICATION_SLOT \"\" PHYSICAL",
            "CREATE_REPLICATION_SLOT 's' PHYSICAL",
            "CREATE_REPLICATION_SLOT s PHYSICAL;;",
        ] {
            assert!(ReplicationCommand::parse(bad).is_err(), "{bad:?} parsed");
        }
        // logical slots are a feature we lack, not a syntax error
        let logical = "CREATE_REPLICATION_SLOT s LOGICAL pgoutput";
        assert_eq!(parse(logical), C::Unsupported(logical.into()));
    }

    #[test]
    fn drop_slot_forms() {
        assert_eq!(
            parse("DROP_REPLICATION_SLOT \"s1\""),
            C::DropReplicationSlot {
                slot: "s1".into(),
                wait: false
            }
        );
        assert_eq!(
            parse("drop_replication_slot s1 wait;"),
            C::DropReplicationSlot {
                slot: "s1".into(),
                wait: true
            }
        );
        assert!(ReplicationCommand::parse("DROP_REPLICATION_SLOT").is_err());
        assert!(ReplicationCommand::parse("DROP_REPLICATION_SLOT s NOW").is_err());
    }

    #[test]
    fn start_replication_with_our_options() {
        assert_eq!(
            parse("START_REPLICATION PHYSICAL 0/1000000 TIMELINE 1 (term '5')"),
            C::StartReplication {
                slot: None,
                start_lsn: lsn("0/1000000"),
                timeline: Some(1),
                options: vec![opt("term", Some("5"))]
            }
        );
        assert_eq!(
            parse("START_REPLICATION 1/0 (TERM '7', walkeeper.until '2/0', Flag);"),
            C::StartReplication {
                slot: None,
                start_lsn: Lsn(1 << 32),
                timeline: None,
                options: vec![
                    opt("term", Some("7")),
                    opt("walkeeper.until", Some("2/0")),
                    opt("flag", None)
                ]
            }
        );
        for bad in [
            "START_REPLICATION",
            "START_REPLICATION SLOT",
            "START_REPLICATION SLOT s",
            "START_REPLICATION 0/0 TIMELINE",
            "START_REPLICATION 0/0 TIMELINE 0",
            "START_REPLICATION 0/0 TIMELINE 4294967296",
            "START_REPLICATION 0/0 TIMELINE x",
            "START_REPLICATION 123456789/0",
            "START_REPLICATION 0/0 garbage",
            "START_REPLICATION 0/0 (term '1', term '2')",
            "START_REPLICATION 0/0 (term 'unterminated)",
            "START_REPLICATION 0/0 (term '1'",
            "START_REPLICATION 0/0 TIMELINE 1 TIMELINE 1",
        ] {
            assert!(ReplicationCommand::parse(bad).is_err(), "{bad:?} parsed");
        }
        let logical = "START_REPLICATION SLOT s LOGICAL 0/0";
        assert_eq!(parse(logical), C::Unsupported(logical.into()));
    }

    #[test]
    fn start_wal_push_forms() {
        assert_eq!(parse("START_WAL_PUSH"), C::StartWalPush { options: vec![] });
        assert_eq!(
            parse("start_wal_push;"),
            C::StartWalPush { options: vec![] }
        );
        let cmd = parse("START_WAL_PUSH (proto_version '1', tenant_id 'ab''c', n 42)");
        let C::StartWalPush { options } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            options,
            vec![
                opt("proto_version", Some("1")),
                opt("tenant_id", Some("ab'c")),
                opt("n", Some("42"))
            ]
        );
        assert_eq!(
            find_option(&options, "TENANT_ID").unwrap().value.as_deref(),
            Some("ab'c")
        );
        assert!(find_option(&options, "missing").is_none());
        assert!(ReplicationCommand::parse("START_WAL_PUSH x").is_err());
        assert!(ReplicationCommand::parse("START_WAL_PUSH (a 'b' c)").is_err());
    }

    #[test]
    fn other_commands_are_unsupported_not_errors() {
        for text in [
            "SELECT 1",
            "select * from pg_stat_replication where x <> 'y';",
            "BASE_BACKUP (LABEL 'x')",
            "UPLOAD_MANIFEST",
            "1 + 1",
            "@#$%",
            "SHOWX wal_segment_size",
        ] {
            assert_eq!(parse(text), C::Unsupported(text.into()));
        }
    }

    #[test]
    fn malformed_known_commands_are_syntax_errors() {
        for bad in [
            "IDENTIFY_SYSTEM now",
            "SHOW",
            "SHOW a.",
            "SHOW 'x'",
            "SHOW a b",
            "TIMELINE_HISTORY",
            "TIMELINE_HISTORY -1",
            "TIMELINE_HISTORY 0",
            "READ_REPLICATION_SLOT",
            "READ_REPLICATION_SLOT \"unterminated",
            "IDENTIFY_SYSTEM @",
        ] {
            let err = ReplicationCommand::parse(bad).unwrap_err();
            assert_eq!(err.sqlstate(), "42601", "{bad:?}");
        }
    }

    #[test]
    fn pg_bool() {
        for t in ["true", "t", "TR", "yes", "y", "on", "1", " On "] {
            assert_eq!(parse_pg_bool(t), Some(true), "{t}");
        }
        for f in ["false", "f", "no", "n", "off", "of", "0"] {
            assert_eq!(parse_pg_bool(f), Some(false), "{f}");
        }
        for x in ["", "o", "2", "truee", "database"] {
            assert_eq!(parse_pg_bool(x), None, "{x}");
        }
    }

    #[test]
    fn streaming_messages_round_trip() {
        let x = XLogData {
            data_start: lsn("0/1000000"),
            wal_end: lsn("0/1002000"),
            send_time: 123_456,
            data: Bytes::from(vec![1u8, 2, 3, 4]),
        };
        let mut buf = BytesMut::new();
        x.encode(&mut buf);
        assert_eq!(buf.len(), 25 + 4);
        assert_eq!(&buf[..9], b"w\0\0\0\0\x01\0\0\0");
        let bytes = buf.freeze();
        assert_eq!(XLogData::decode(&bytes).unwrap(), x);
        assert_eq!(
            ServerReplMessage::decode(&bytes).unwrap(),
            ServerReplMessage::XLogData(x.clone())
        );
        assert_eq!(x.data_end(), Some(lsn("0/1000004")));

        let k = PrimaryKeepalive {
            wal_end: lsn("16/B374D848"),
            send_time: -5,
            reply_requested: true,
        };
        let mut buf = BytesMut::new();
        ServerReplMessage::Keepalive(k).encode(&mut buf);
        assert_eq!(buf.len(), 18);
        assert_eq!(buf[17], 1);
        assert_eq!(PrimaryKeepalive::decode(&buf).unwrap(), k);

        let r = StandbyStatusUpdate {
            write_lsn: Lsn(3),
            flush_lsn: Lsn(2),
            apply_lsn: Lsn(0),
            send_time: pg_now(),
            reply_requested: false,
        };
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        assert_eq!(buf.len(), 34);
        assert_eq!(
            StandbyReplMessage::decode(&buf).unwrap(),
            StandbyReplMessage::StatusUpdate(r)
        );

        let h = HotStandbyFeedback {
            send_time: 1,
            xmin: 2,
            xmin_epoch: 3,
            catalog_xmin: 4,
            catalog_xmin_epoch: 5,
        };
        let mut buf = BytesMut::new();
        StandbyReplMessage::HotStandbyFeedback(h).encode(&mut buf);
        assert_eq!(buf.len(), 25);
        assert_eq!(HotStandbyFeedback::decode(&buf).unwrap(), h);
    }

    #[test]
    fn reply_requested_is_any_nonzero_byte() {
        let mut b = vec![b'r'];
        b.extend_from_slice(&[0u8; 32]);
        b.push(7);
        let StandbyReplMessage::StatusUpdate(r) = StandbyReplMessage::decode(&b).unwrap() else {
            panic!()
        };
        assert!(r.reply_requested);
    }

    #[test]
    fn streaming_decoders_reject_bad_lengths_and_tags() {
        for n in [0usize, 1, 17, 19, 40] {
            let mut b = vec![0u8; n];
            if n > 0 {
                b[0] = b'k';
            }
            assert!(PrimaryKeepalive::decode(&b).is_err(), "k {n}");
        }
        for n in [0usize, 1, 33, 35] {
            let mut b = vec![0u8; n];
            if n > 0 {
                b[0] = b'r';
            }
            assert!(StandbyStatusUpdate::decode(&b).is_err(), "r {n}");
            assert!(StandbyReplMessage::decode(&b).is_err(), "r {n}");
        }
        for n in [0usize, 1, 24, 26] {
            let mut b = vec![0u8; n];
            if n > 0 {
                b[0] = b'h';
            }
            assert!(HotStandbyFeedback::decode(&b).is_err(), "h {n}");
            assert!(StandbyReplMessage::decode(&b).is_err(), "h {n}");
        }
        for n in [0usize, 1, 24] {
            let mut b = vec![0u8; n];
            if n > 0 {
                b[0] = b'w';
            }
            assert!(XLogData::decode(&Bytes::from(b.clone())).is_err(), "w {n}");
            assert!(ServerReplMessage::decode(&Bytes::from(b)).is_err(), "w {n}");
        }
        // XLogData with no WAL is fine
        let mut b = vec![0u8; 25];
        b[0] = b'w';
        assert!(XLogData::decode(&Bytes::from(b)).unwrap().data.is_empty());
        // wrong tags
        let mut wrong = vec![0u8; 34];
        wrong[0] = b'x';
        assert!(StandbyReplMessage::decode(&wrong).is_err());
        assert!(StandbyStatusUpdate::decode(&wrong).is_err());
        assert!(ServerReplMessage::decode(&Bytes::from(wrong)).is_err());
    }

    #[test]
    fn pg_timestamps() {
        let pg_epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);
        assert_eq!(to_pg_timestamp(pg_epoch), 0);
        assert_eq!(
            to_pg_timestamp(pg_epoch + Duration::from_micros(1_500_000)),
            1_500_000
        );
        assert_eq!(to_pg_timestamp(UNIX_EPOCH), -946_684_800_000_000);
        assert_eq!(
            from_pg_timestamp(1_500_000),
            Some(pg_epoch + Duration::from_micros(1_500_000))
        );
        assert_eq!(from_pg_timestamp(-946_684_800_000_000), Some(UNIX_EPOCH));
        // extremes must not panic
        let _ = from_pg_timestamp(i64::MAX);
        let _ = from_pg_timestamp(i64::MIN);
        // 2020-01-01 < now < 2200-01-01
        let now = pg_now();
        assert!(
            now > 631_152_000_000_000 && now < 6_311_433_600_000_000,
            "{now}"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            text in "[A-Za-z_ ;()'\",./0-9]{0,80}",
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
        ) {
            for prefix in ["", "START_REPLICATION ", "CREATE_REPLICATION_SLOT ", "START_WAL_PUSH ", "SHOW "] {
                let _ = ReplicationCommand::parse(&format!("{prefix}{text}"));
            }
            let _ = StandbyReplMessage::decode(&bytes);
            let _ = ServerReplMessage::decode(&Bytes::from(bytes));
        }
    }
}
