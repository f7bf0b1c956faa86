//! `skctl verify`: every chunk's CRC, the tiling invariant (chunks tile
//! `[local_start_lsn, flush_lsn)` with no gap and no overlap,
//! ARCHITECTURE.md, "4.1 Keys and versioned values") and the consistency of each timeline's state. Every fault is
//! named with its timeline and, where there is one, its LSN range; checking
//! goes on past a fault so one run reports them all.

use std::fmt;

use serde::Serialize;

use super::{Inspector, Progress};
use crate::consensus::acceptor::TimelineState;
use crate::id::Ttid;
use crate::lsn::{is_valid_wal_seg_size, Lsn};
use crate::store::rocks::{ChunkInfo, RocksStore};
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// A chunk's CRC does not match its key and bytes.
    Checksum,
    /// WAL in `[local_start_lsn, flush_lsn)` that no chunk holds.
    Gap,
    /// Two chunks hold the same LSNs.
    Overlap,
    /// A chunk outside `[local_start_lsn, flush_lsn)`, or reaching out of it.
    OutOfRange,
    /// RocksDB could not read the data (a block checksum, a malformed key or
    /// value).
    Unreadable,
    /// The timeline's state record is damaged or contradicts itself.
    State,
    /// WAL chunks of a timeline that has no state record.
    Orphan,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// `TENANT/TIMELINE`, or empty for a fault of the store as a whole.
    pub timeline: String,
    pub kind: FaultKind,
    pub from_lsn: Option<String>,
    pub to_lsn: Option<String>,
    pub detail: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.timeline.is_empty() {
            write!(f, "store")?;
        } else {
            write!(f, "timeline {}", self.timeline)?;
        }
        if let (Some(a), Some(b)) = (&self.from_lsn, &self.to_lsn) {
            write!(f, ": WAL {a}..{b}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// What verify looked at and what it found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub timelines: usize,
    pub chunks: u64,
    pub bytes: u64,
    pub faults: Vec<Fault>,
}

fn fault(ttid: Ttid, kind: FaultKind, range: Option<(Lsn, Lsn)>, detail: String) -> Fault {
    Fault {
        timeline: ttid.to_string(),
        kind,
        from_lsn: range.map(|r| r.0.to_string()),
        to_lsn: range.map(|r| r.1.to_string()),
        detail,
    }
}

/// A store error met while checking `ttid`, as a fault.
fn store_fault(ttid: Ttid, e: StoreError) -> Fault {
    match e {
        StoreError::CorruptWal {
            ttid: t,
            from,
            to,
            detail,
        } => fault(t, FaultKind::Unreadable, Some((from, to)), detail),
        StoreError::CorruptState { ttid: t, detail } => {
            fault(t, FaultKind::State, None, format!("state record: {detail}"))
        }
        other => fault(ttid, FaultKind::Unreadable, None, other.to_string()),
    }
}

/// Check the whole store. Errors only when the store cannot be read at all;
/// damage is reported in the [`Report`].
pub fn verify(ins: &Inspector, show_progress: bool) -> Result<Report, StoreError> {
    let mut report = Report {
        ok: true,
        timelines: 0,
        chunks: 0,
        bytes: 0,
        faults: Vec::new(),
    };
    let ids = match ins.with_retry(|s| s.timeline_ids()) {
        Ok(ids) => ids,
        Err(StoreError::CorruptStore(detail)) => {
            report.faults.push(Fault {
                timeline: String::new(),
                kind: FaultKind::Unreadable,
                from_lsn: None,
                to_lsn: None,
                detail,
            });
            report.ok = false;
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    report.timelines = ids.len();
    // Sizes for the progress bar; a state that does not decode counts 0 here
    // and is reported below.
    let total: u64 = ids
        .iter()
        .filter_map(|t| ins.with_retry(|s| s.timeline_state(*t)).ok().flatten())
        .map(|s| s.flush_lsn.distance_from(s.local_start_lsn))
        .sum();
    let mut progress = if show_progress {
        Progress::new("verify", total)
    } else {
        Progress::hidden()
    };
    for &ttid in &ids {
        let checked = ins.with_retry(|s| check_timeline(s, ttid));
        match checked {
            Ok(t) => {
                report.chunks += t.chunks;
                report.bytes += t.bytes;
                progress.add(t.bytes);
                report.faults.extend(t.faults);
            }
            Err(e) => report.faults.push(store_fault(ttid, e)),
        }
    }
    match ins.with_retry(|s| s.wal_timeline_ids()) {
        Ok(with_wal) => {
            for ttid in with_wal.into_iter().filter(|t| !ids.contains(t)) {
                report.faults.push(fault(
                    ttid,
                    FaultKind::Orphan,
                    None,
                    "WAL chunks stored for a timeline with no state record".into(),
                ));
            }
        }
        Err(StoreError::CorruptStore(detail)) => report.faults.push(Fault {
            timeline: String::new(),
            kind: FaultKind::Unreadable,
            from_lsn: None,
            to_lsn: None,
            detail,
        }),
        Err(e) => return Err(e),
    }
    progress.finish();
    report.ok = report.faults.is_empty();
    Ok(report)
}

struct Checked {
    chunks: u64,
    bytes: u64,
    faults: Vec<Fault>,
}

/// Check one timeline. Reads its state and chunks itself so a retry after a
/// catch-up sees one consistent view. A damaged state record is a fault,
/// not an error.
fn check_timeline(store: &RocksStore, ttid: Ttid) -> Result<Checked, StoreError> {
    let mut out = Checked {
        chunks: 0,
        bytes: 0,
        faults: Vec::new(),
    };
    let state = match store.timeline_state(ttid) {
        Ok(Some(s)) => s,
        // Gone since the listing: nothing to check.
        Ok(None) => return Ok(out),
        Err(StoreError::CorruptState { detail, .. }) => {
            out.faults.push(fault(
                ttid,
                FaultKind::State,
                None,
                format!("state record: {detail}"),
            ));
            return Ok(out);
        }
        Err(e) => return Err(e),
    };
    out.faults.extend(check_state(&state));
    let mut chunks = Vec::new();
    for c in store.read_chunks(ttid, Lsn(0), Lsn::MAX)? {
        match c {
            Ok(c) => chunks.push(c),
            Err(e) if super::is_vanished_file(&e) => return Err(e),
            Err(e) => {
                // The iterator stops at a damaged entry; what it read so far
                // is still checked.
                out.faults.push(store_fault(ttid, e));
                break;
            }
        }
    }
    out.chunks = chunks.len() as u64;
    out.bytes = chunks.iter().map(|c| c.len).sum();
    out.faults.extend(check_tiling(
        ttid,
        state.local_start_lsn,
        state.flush_lsn,
        &chunks,
    ));
    Ok(out)
}

/// The state's own invariants.
pub fn check_state(s: &TimelineState) -> Vec<Fault> {
    let mut v = Vec::new();
    let mut bad = |detail: String| v.push(fault(s.ttid, FaultKind::State, None, detail));
    if s.commit_lsn > s.flush_lsn {
        bad(format!(
            "commit_lsn {} is beyond flush_lsn {}",
            s.commit_lsn, s.flush_lsn
        ));
    }
    if s.local_start_lsn > s.flush_lsn {
        bad(format!(
            "local_start_lsn {} is beyond flush_lsn {}",
            s.local_start_lsn, s.flush_lsn
        ));
    }
    if s.timeline_start_lsn > s.local_start_lsn {
        bad(format!(
            "timeline_start_lsn {} is beyond local_start_lsn {}",
            s.timeline_start_lsn, s.local_start_lsn
        ));
    }
    if !s.term_history.is_well_formed() {
        bad(format!(
            "term history is malformed (terms must increase, start LSNs never decrease): {:?}",
            s.term_history.entries()
        ));
    }
    if let Some(last) = s.term_history.last() {
        if s.term < last.term {
            bad(format!(
                "term {} is below the last history term {}",
                s.term, last.term
            ));
        }
    }
    if !is_valid_wal_seg_size(s.server.wal_seg_size) {
        bad(format!(
            "wal_seg_size {} is not one PostgreSQL accepts",
            s.server.wal_seg_size
        ));
    }
    v
}

/// Chunks (in start order) against the range they must tile.
pub fn check_tiling(ttid: Ttid, lo: Lsn, hi: Lsn, chunks: &[ChunkInfo]) -> Vec<Fault> {
    let mut v = Vec::new();
    let mut pos = lo;
    for c in chunks {
        let (start, end) = (c.start, c.end());
        if !c.crc_ok {
            v.push(fault(
                ttid,
                FaultKind::Checksum,
                Some((start, end)),
                "chunk checksum mismatch".into(),
            ));
        }
        if c.len == 0 {
            v.push(fault(
                ttid,
                FaultKind::OutOfRange,
                Some((start, end)),
                "empty chunk (empty appends are never stored)".into(),
            ));
            continue;
        }
        if end <= lo || start >= hi {
            v.push(fault(
                ttid,
                FaultKind::OutOfRange,
                Some((start, end)),
                format!("chunk outside the held range {lo}..{hi}"),
            ));
            continue;
        }
        if start < lo {
            v.push(fault(
                ttid,
                FaultKind::OutOfRange,
                Some((start, end)),
                format!("chunk starts below local_start_lsn {lo}"),
            ));
        } else if start > pos {
            v.push(fault(
                ttid,
                FaultKind::Gap,
                Some((pos, start)),
                "no stored chunk holds this WAL".into(),
            ));
        } else if start < pos {
            v.push(fault(
                ttid,
                FaultKind::Overlap,
                Some((start, pos.min(end))),
                "chunks overlap".into(),
            ));
        }
        if end > hi {
            v.push(fault(
                ttid,
                FaultKind::OutOfRange,
                Some((start, end)),
                format!("chunk reaches beyond flush_lsn {hi}"),
            ));
        }
        pos = pos.max(end);
    }
    if pos < hi {
        v.push(fault(
            ttid,
            FaultKind::Gap,
            Some((pos, hi)),
            "no stored chunk holds this WAL".into(),
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(start: u64, len: u64) -> ChunkInfo {
        ChunkInfo {
            start: Lsn(start),
            len,
            crc_ok: true,
        }
    }

    fn kinds(f: &[Fault]) -> Vec<(FaultKind, Option<String>, Option<String>)> {
        f.iter()
            .map(|f| (f.kind, f.from_lsn.clone(), f.to_lsn.clone()))
            .collect()
    }

    #[test]
    fn exact_tiling_passes() {
        let t = Ttid::default();
        assert!(check_tiling(t, Lsn(100), Lsn(400), &[c(100, 100), c(200, 200)]).is_empty());
        assert!(check_tiling(t, Lsn(100), Lsn(100), &[]).is_empty());
    }

    #[test]
    fn gaps_overlaps_strays_and_bad_crcs_are_named() {
        let t = Ttid::default();
        let r = |a: u64, b: u64| (Some(Lsn(a).to_string()), Some(Lsn(b).to_string()));
        let f = check_tiling(
            t,
            Lsn(100),
            Lsn(500),
            &[
                c(0, 50),
                c(100, 100),
                c(250, 100),
                c(300, 100),
                ChunkInfo {
                    crc_ok: false,
                    ..c(400, 50)
                },
            ],
        );
        let k = kinds(&f);
        assert_eq!(k[0].0, FaultKind::OutOfRange);
        assert_eq!((k[1].0, k[1].1.clone(), k[1].2.clone()), {
            let (a, b) = r(200, 250);
            (FaultKind::Gap, a, b)
        });
        assert_eq!((k[2].0, k[2].1.clone(), k[2].2.clone()), {
            let (a, b) = r(300, 350);
            (FaultKind::Overlap, a, b)
        });
        assert_eq!((k[3].0, k[3].1.clone(), k[3].2.clone()), {
            let (a, b) = r(400, 450);
            (FaultKind::Checksum, a, b)
        });
        assert_eq!((k[4].0, k[4].1.clone(), k[4].2.clone()), {
            let (a, b) = r(450, 500);
            (FaultKind::Gap, a, b)
        });
        assert_eq!(k.len(), 5);
    }
}
