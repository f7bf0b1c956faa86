//! Where PostgreSQL's WAL records end, so the proxy pushes whole records.
//!
//! A primary's flushed WAL can end inside a record: its WAL writer flushes
//! whole pages, and walsender sends in 128 KiB pieces. If the primary dies
//! there, a standby fed by the safekeepers replays only up to the last
//! complete record and its promoted timeline begins there, below the end of
//! the safekeepers' WAL, and the switch rule (`consensus::pg_timeline`,
//! the proposer's `switch_refusal`) refuses it: fail-over would be
//! impossible. Holding back the incomplete last record keeps the
//! safekeepers' WAL ending at a record end, where a standby stops and
//! promotes. Commits are not delayed: a commit is acknowledged once the
//! flush reported reaches its record's end, and that end is a boundary.
//!
//! The parser reads only page headers and the first bytes of each record
//! (`xl_tot_len`, `xl_info`, `xl_rmid`), as PostgreSQL's xlogreader walks
//! them. On anything it does not expect it releases everything and picks
//! up again at the next page header; a record longer than [`HOLD_CAP`] is
//! released as it comes.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::lsn::Lsn;

/// PostgreSQL's XLOG_BLCKSZ (the proxy refuses primaries with another).
pub use crate::consensus::primary_check::WAL_PAGE;
const SHORT_PAGE_HEADER: u64 = 24;
/// `xlp_info`: the record continued from the previous page was abandoned
/// (a crash-restarted primary writes XLOG_OVERWRITE_CONTRECORD here).
const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
const LONG_PAGE_HEADER: u64 = 40;
/// `xl_tot_len`..`xl_rmid` of an XLogRecord header.
const RECORD_HEAD: usize = 18;
const RECORD_HEADER_SIZE: u32 = 24;
/// PostgreSQL's XLogRecordMaxSize.
const MAX_RECORD: u32 = 1020 << 20;
const RM_XLOG_ID: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;
/// Bytes held back at most: beyond it, a record is released as it comes.
pub const HOLD_CAP: u64 = 16 << 20;

fn maxalign(l: u64) -> u64 {
    (l + 7) & !7
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Between records: the next byte starts one.
    Idle,
    /// The first bytes of a record's header.
    Head(Vec<u8>),
    /// `remaining` bytes of the record's content are still to come.
    Body { remaining: u64, switch: bool },
    /// Alignment padding (or the rest of the segment after XLOG_SWITCH) up
    /// to the next record.
    Skip { until: Lsn },
    /// Lost the thread: everything passes until the next page header.
    Lost,
}

#[derive(Debug, Clone)]
pub struct RecordCut {
    seg_size: u64,
    /// LSN of the next byte fed.
    pos: Lsn,
    /// The last record boundary fed.
    boundary: Lsn,
    state: State,
    /// Bytes of a page header being read (it starts at a page boundary).
    page_header: Option<Vec<u8>>,
}

impl RecordCut {
    /// Track WAL fed from `start`: a record boundary (the end of what the
    /// safekeepers hold), or a page start, whose header tells how much of a
    /// record continues there.
    pub fn new(start: Lsn, seg_size: u32) -> RecordCut {
        RecordCut {
            // Never 0 (the server info is checked; a divisor must not be).
            seg_size: u64::from(seg_size).max(WAL_PAGE),
            pos: start,
            boundary: start,
            state: if start.0.is_multiple_of(8) && !start.0.is_multiple_of(WAL_PAGE) {
                State::Idle
            } else {
                State::Lost
            },
            page_header: None,
        }
    }

    /// LSN of the next byte expected.
    pub fn pos(&self) -> Lsn {
        self.pos
    }

    /// Take `wal` (at [`RecordCut::pos`]); return how far WAL may be pushed:
    /// the last record boundary, or everything while the parser is lost,
    /// and never more than [`HOLD_CAP`] behind.
    pub fn feed(&mut self, mut wal: &[u8]) -> Lsn {
        while !wal.is_empty() {
            let used = self.step(wal);
            wal = &wal[used..];
        }
        if self.state == State::Lost {
            self.boundary = self.pos;
        }
        Lsn(self.boundary.0.max(self.pos.0.saturating_sub(HOLD_CAP)))
    }

    /// Consume some of `wal` (at least one byte); returns how many.
    fn step(&mut self, wal: &[u8]) -> usize {
        let page_off = self.pos.0 % WAL_PAGE;
        if page_off == 0 && self.page_header.is_none() {
            self.page_header = Some(Vec::new());
        }
        if let Some(hdr) = self.page_header.as_mut() {
            let page_start = self.pos.0 - hdr.len() as u64;
            let size = if page_start.is_multiple_of(self.seg_size) {
                LONG_PAGE_HEADER
            } else {
                SHORT_PAGE_HEADER
            };
            let take = (size as usize - hdr.len()).min(wal.len());
            hdr.extend_from_slice(&wal[..take]);
            self.pos = Lsn(self.pos.0 + take as u64);
            if hdr.len() as u64 == size {
                let info = u16::from_le_bytes([hdr[2], hdr[3]]);
                let rem_len = u32::from_le_bytes([hdr[16], hdr[17], hdr[18], hdr[19]]);
                self.page_header = None;
                self.on_page_header(info, u64::from(rem_len));
            }
            return take;
        }
        let room = (WAL_PAGE - page_off) as usize;
        let avail = wal.len().min(room);
        match &mut self.state {
            State::Lost => {
                self.pos = Lsn(self.pos.0 + avail as u64);
                avail
            }
            State::Idle => {
                self.state = State::Head(Vec::with_capacity(RECORD_HEAD));
                self.step_head(wal, avail)
            }
            State::Head(_) => self.step_head(wal, avail),
            State::Body { remaining, switch } => {
                let take = avail.min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= take as u64;
                self.pos = Lsn(self.pos.0 + take as u64);
                if *remaining == 0 {
                    let next = if *switch && !self.pos.0.is_multiple_of(self.seg_size) {
                        (self.pos.0 / self.seg_size + 1) * self.seg_size
                    } else {
                        maxalign(self.pos.0)
                    };
                    self.state = State::Skip { until: Lsn(next) };
                    self.settle_skip();
                }
                take
            }
            State::Skip { until } => {
                let take = avail.min(usize::try_from(until.0 - self.pos.0).unwrap_or(usize::MAX));
                self.pos = Lsn(self.pos.0 + take as u64);
                self.settle_skip();
                take
            }
        }
    }

    fn step_head(&mut self, wal: &[u8], avail: usize) -> usize {
        let State::Head(head) = &mut self.state else {
            return 0;
        };
        let take = avail.min(RECORD_HEAD - head.len());
        head.extend_from_slice(&wal[..take]);
        self.pos = Lsn(self.pos.0 + take as u64);
        if head.len() == RECORD_HEAD {
            let tot_len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let switch = head[17] == RM_XLOG_ID && head[16] & 0xF0 == XLOG_SWITCH;
            self.state = if (RECORD_HEADER_SIZE..=MAX_RECORD).contains(&tot_len) {
                State::Body {
                    remaining: u64::from(tot_len) - RECORD_HEAD as u64,
                    switch,
                }
            } else {
                tracing::debug!(at = %self.pos, tot_len, "not a WAL record header; releasing until the next page");
                State::Lost
            };
        }
        take
    }

    /// At the end of a skip, the next record starts: a boundary.
    fn settle_skip(&mut self) {
        if let State::Skip { until } = self.state {
            if self.pos >= until {
                self.state = State::Idle;
                self.boundary = self.pos;
            }
        }
    }

    /// A page header says `rem_len` bytes of a record continue on this page.
    fn on_page_header(&mut self, info: u16, rem_len: u64) {
        if info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
            && matches!(self.state, State::Head(_) | State::Body { .. })
        {
            // The record in progress was abandoned; the next one starts
            // here. Its start stays held until that one is complete: a
            // standby reads through both to the next boundary.
            self.state = State::Idle;
            return;
        }
        let expected = match &self.state {
            State::Idle | State::Skip { .. } => 0,
            // xl_tot_len is 8-aligned, so never split by a page.
            State::Head(h) if h.len() >= 4 => {
                u64::from(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
                    .saturating_sub(h.len() as u64)
            }
            State::Head(_) => u64::MAX,
            State::Body { remaining, .. } => *remaining,
            State::Lost => {
                // Pick up again: a record (of unknown kind) continues for
                // rem_len bytes, then the next one starts.
                self.state = if rem_len == 0 {
                    State::Idle
                } else {
                    State::Body {
                        remaining: rem_len,
                        switch: false,
                    }
                };
                return;
            }
        };
        if rem_len != expected {
            tracing::debug!(at = %self.pos, rem_len, expected, "page header disagrees; releasing until the next page");
            self.state = State::Lost;
        }
    }
}

/// WAL from the primary, held until its records are complete: what
/// [`RecordCut`] releases, handed on in the pieces it arrived in (sliced,
/// not copied).
#[derive(Debug)]
pub struct Holdback {
    cut: RecordCut,
    /// LSN of the first held byte.
    start: Lsn,
    held: VecDeque<Bytes>,
}

impl Holdback {
    pub fn new(start: Lsn, seg_size: u32) -> Holdback {
        Holdback {
            cut: RecordCut::new(start, seg_size),
            start,
            held: VecDeque::new(),
        }
    }

    /// LSN of the next byte expected.
    pub fn pos(&self) -> Lsn {
        self.cut.pos()
    }

    /// Bytes held back.
    pub fn held_bytes(&self) -> u64 {
        self.cut.pos().0 - self.start.0
    }

    /// Take `wal` (at [`Holdback::pos`]); the pieces that may be pushed
    /// now, in order.
    pub fn feed(&mut self, wal: Bytes) -> Vec<Bytes> {
        let release = self.cut.feed(&wal);
        if !wal.is_empty() {
            self.held.push_back(wal);
        }
        let mut out = Vec::new();
        while self.start < release {
            let Some(front) = self.held.front_mut() else {
                break;
            };
            let want = release.0 - self.start.0;
            if front.len() as u64 <= want {
                self.start = Lsn(self.start.0 + front.len() as u64);
                out.extend(self.held.pop_front());
            } else {
                out.push(front.split_to(want as usize));
                self.start = release;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
