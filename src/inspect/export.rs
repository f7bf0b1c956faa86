//! `skctl export`: a timeline's WAL as ordinary PostgreSQL segment files,
//! which `pg_waldump` reads and a `restore_command` can copy.
//!
//! Files are written under temporary names and renamed only once every one
//! of them was read (every CRC checked) and synced, so a damaged range or any
//! other failure leaves no file under a segment's name: a restore_command
//! must never find half a segment, or a segment with a hole, where a whole
//! one belongs.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{InspectError, Inspector, Progress};
use crate::consensus::pg_timeline::{self, PgAncestors};
use crate::id::Ttid;
use crate::lsn::{is_valid_wal_seg_size, segment_file_name, Lsn};
use crate::store::Storage;

/// Bytes read from the store at a time.
const READ_SLICE: u64 = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Rounded down to its segment's start. Default: local_start_lsn.
    pub from: Option<Lsn>,
    /// Default: commit_lsn. Up to flush_lsn is allowed.
    pub to: Option<Lsn>,
    pub show_progress: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportedFile {
    pub name: String,
    pub start_lsn: String,
    /// End of the WAL in the file; a `.partial` file is zero-filled after it.
    pub end_lsn: String,
    pub partial: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub timeline: String,
    pub from_lsn: String,
    pub to_lsn: String,
    pub commit_lsn: String,
    /// WAL beyond commit_lsn was exported (a new proposer may still
    /// truncate it on the safekeepers).
    pub beyond_commit: bool,
    /// `%08X.history` of every PostgreSQL timeline after the first, as
    /// PostgreSQL's archive holds them.
    pub history_files: Vec<String>,
    pub files: Vec<ExportedFile>,
}

#[derive(Debug, PartialEq, Eq)]
struct Planned {
    segno: u64,
    start: Lsn,
    end: Lsn,
    partial: bool,
    name: String,
}

/// Temporary files written so far; removed unless the export completes.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InspectError {
    let path = path.to_path_buf();
    move |source| InspectError::Io { what, path, source }
}

pub fn export(
    ins: &Inspector,
    ttid: Ttid,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport, InspectError> {
    let state = ins.timeline(ttid)?;
    let seg = state.server.wal_seg_size;
    if !is_valid_wal_seg_size(seg) {
        return Err(InspectError::Refused(format!(
            "timeline {ttid}: stored wal_seg_size {seg} is not a valid segment size; run skctl verify"
        )));
    }
    let tli = state.server.tli;
    if let Err(e) = pg_timeline::check_ancestors(&state.pg_ancestors, tli) {
        return Err(InspectError::Refused(format!(
            "timeline {ttid}: {e}; run skctl verify"
        )));
    }
    // min: a state whose commit passes its flush is damage verify reports;
    // export still offers what is held.
    let to = opts.to.unwrap_or(state.commit_lsn.min(state.flush_lsn));
    if to > state.flush_lsn {
        return Err(InspectError::Refused(format!(
            "timeline {ttid}: --to {to} is beyond the WAL held here (flush_lsn {})",
            state.flush_lsn
        )));
    }
    let asked_from = opts.from.unwrap_or(state.local_start_lsn);
    let from = asked_from.segment_start(seg);
    if from < state.local_start_lsn {
        return Err(InspectError::Refused(format!(
            "timeline {ttid}: export starts at a segment start, {from} (the segment of {asked_from}), \
             but this store holds WAL only from {} (earlier WAL was trimmed)",
            state.local_start_lsn
        )));
    }
    if from >= to {
        return Err(InspectError::Refused(format!(
            "timeline {ttid}: nothing to export from {from} to {to} (held: {}..{}, committed up to {})",
            state.local_start_lsn, state.flush_lsn, state.commit_lsn
        )));
    }

    let plan = plan_segments(from, to, seg, &state.pg_ancestors, tli);
    let histories = history_files(ins, ttid, &state.pg_ancestors, tli)?;

    std::fs::create_dir_all(out).map_err(io_err("cannot create the output directory", out))?;
    let names = histories
        .iter()
        .map(|(n, _)| n)
        .chain(plan.iter().map(|p| &p.name));
    for name in names {
        let path = out.join(name);
        if path.exists() {
            return Err(InspectError::Refused(format!(
                "{} already exists; export into an empty directory",
                path.display()
            )));
        }
    }

    let mut progress = if opts.show_progress {
        let total = plan.iter().map(|p| p.end.0 - p.start.0).sum();
        Progress::new(format!("export {ttid}"), total)
    } else {
        Progress::hidden()
    };
    let mut temps = TempFiles(Vec::new());
    for (name, content) in &histories {
        let tmp = out.join(format!(".{name}.skctl-tmp"));
        let mut file = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        temps.0.push(tmp.clone());
        file.write_all(content)
            .and_then(|()| file.sync_all())
            .map_err(io_err("cannot write", &tmp))?;
    }
    for p in &plan {
        let tmp = out.join(format!(".{}.skctl-tmp", p.name));
        let mut file = File::create(&tmp).map_err(io_err("cannot create", &tmp))?;
        temps.0.push(tmp.clone());
        let mut pos = p.start;
        while pos < p.end {
            let next = Lsn(pos.0.saturating_add(READ_SLICE)).min(p.end);
            // A retry after a catch-up may find the range trimmed (NotHeld):
            // that is reported, not papered over.
            let bytes = ins.with_retry(|s| s.read_wal(ttid, pos, next))?;
            file.write_all(&bytes)
                .map_err(io_err("cannot write", &tmp))?;
            progress.add(bytes.len() as u64);
            pos = next;
        }
        if p.partial {
            // PostgreSQL's partial segments are full-sized, zeros after the
            // WAL; set_len fills with zeros.
            file.set_len(u64::from(seg))
                .map_err(io_err("cannot extend", &tmp))?;
        }
        file.sync_all().map_err(io_err("cannot sync", &tmp))?;
        tracing::debug!(segment = p.segno, name = %p.name, "segment written");
    }
    progress.finish();
    let names = histories
        .iter()
        .map(|(n, _)| n)
        .chain(plan.iter().map(|p| &p.name));
    for (name, tmp) in names.zip(&temps.0) {
        let path = out.join(name);
        std::fs::rename(tmp, &path).map_err(io_err("cannot rename into place", &path))?;
    }
    temps.0.clear();
    File::open(out)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync the directory", out))?;

    Ok(ExportReport {
        timeline: ttid.to_string(),
        from_lsn: from.to_string(),
        to_lsn: to.to_string(),
        commit_lsn: state.commit_lsn.to_string(),
        beyond_commit: to > state.commit_lsn,
        history_files: histories.into_iter().map(|(n, _)| n).collect(),
        files: plan
            .iter()
            .map(|p| ExportedFile {
                name: p.name.clone(),
                start_lsn: p.start.to_string(),
                end_lsn: p.end.to_string(),
                partial: p.partial,
            })
            .collect(),
    })
}

/// The segment files of `[from, to)`, PostgreSQL timeline by timeline, as
/// PostgreSQL's archive names them: a timeline that ended inside a segment
/// leaves that segment as `.partial` (up to its switch point), and its
/// successor's first segment holds the same segment whole, the bytes before
/// the switch point included. `from` is a segment start.
fn plan_segments(
    from: Lsn,
    to: Lsn,
    seg: u32,
    ancestors: &PgAncestors,
    current: u32,
) -> Vec<Planned> {
    let seg_len = u64::from(seg);
    // Each timeline with the LSN where it began and ended (the current one
    // at `to`).
    let mut spans = Vec::with_capacity(ancestors.len() + 1);
    let mut begin = Lsn(0);
    for &(t, end) in ancestors {
        spans.push((t, begin, end));
        begin = end;
    }
    spans.push((current, begin, to));
    let mut plan = Vec::new();
    for (t, begin, end) in spans {
        let (start, end) = (begin.max(from), end.min(to));
        if start >= end {
            continue;
        }
        for segno in start.segment_number(seg)..=Lsn(end.0 - 1).segment_number(seg) {
            let seg_start = Lsn(segno * seg_len);
            let seg_end = Lsn(seg_start.0 + seg_len);
            let partial = seg_end > end;
            let base = segment_file_name(t, segno, seg);
            plan.push(Planned {
                segno,
                start: seg_start,
                end: seg_end.min(end),
                partial,
                name: if partial {
                    format!("{base}.partial")
                } else {
                    base
                },
            });
        }
    }
    plan
}

/// The history file of every PostgreSQL timeline after the first: the one
/// the primary handed over, or one rebuilt from the recorded switch points
/// (as the daemon's TIMELINE_HISTORY serves it).
fn history_files(
    ins: &Inspector,
    ttid: Ttid,
    ancestors: &PgAncestors,
    current: u32,
) -> Result<Vec<(String, Vec<u8>)>, InspectError> {
    let later = ancestors.iter().skip(1).map(|(t, _)| *t);
    let tlis: Vec<u32> = later
        .chain((!ancestors.is_empty()).then_some(current))
        .collect();
    let mut out = Vec::with_capacity(tlis.len());
    for t in tlis {
        let stored = ins.with_retry(|s| s.timeline_history(ttid, t))?;
        let content = stored
            .or_else(|| pg_timeline::rebuilt_history_file(ancestors, current, t))
            .ok_or_else(|| {
                InspectError::Refused(format!(
                    "timeline {ttid}: no history file of PostgreSQL timeline {t}"
                ))
            })?;
        out.push((format!("{t:08X}.history"), content));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u32 = 16 << 20;

    fn names(plan: &[Planned]) -> Vec<(&str, Lsn, Lsn)> {
        plan.iter()
            .map(|p| (p.name.as_str(), p.start, p.end))
            .collect()
    }

    #[test]
    fn one_timeline_ends_partial_at_to() {
        let plan = plan_segments(Lsn(SEG as u64), Lsn(0x2_800_000), SEG, &vec![], 1);
        assert_eq!(
            names(&plan),
            vec![
                (
                    "000000010000000000000001",
                    Lsn(0x1_000_000),
                    Lsn(0x2_000_000)
                ),
                (
                    "000000010000000000000002.partial",
                    Lsn(0x2_000_000),
                    Lsn(0x2_800_000)
                ),
            ]
        );
    }

    #[test]
    fn a_switch_inside_a_segment_leaves_a_partial_and_a_whole_copy() {
        let ancestors = vec![(1, Lsn(0x1_400_000))];
        let plan = plan_segments(Lsn(0), Lsn(0x2_000_000), SEG, &ancestors, 2);
        assert_eq!(
            names(&plan),
            vec![
                ("000000010000000000000000", Lsn(0), Lsn(0x1_000_000)),
                (
                    "000000010000000000000001.partial",
                    Lsn(0x1_000_000),
                    Lsn(0x1_400_000)
                ),
                (
                    "000000020000000000000001",
                    Lsn(0x1_000_000),
                    Lsn(0x2_000_000)
                ),
            ]
        );
    }

    #[test]
    fn a_switch_at_a_segment_start_leaves_no_partial() {
        let ancestors = vec![(1, Lsn(0x1_000_000)), (2, Lsn(0x3_000_100))];
        let plan = plan_segments(Lsn(0x1_000_000), Lsn(0x3_000_200), SEG, &ancestors, 5);
        assert_eq!(
            names(&plan),
            vec![
                (
                    "000000020000000000000001",
                    Lsn(0x1_000_000),
                    Lsn(0x2_000_000)
                ),
                (
                    "000000020000000000000002",
                    Lsn(0x2_000_000),
                    Lsn(0x3_000_000)
                ),
                (
                    "000000020000000000000003.partial",
                    Lsn(0x3_000_000),
                    Lsn(0x3_000_100)
                ),
                (
                    "000000050000000000000003.partial",
                    Lsn(0x3_000_000),
                    Lsn(0x3_000_200)
                ),
            ]
        );
    }

    #[test]
    fn timelines_before_the_export_are_left_out() {
        let ancestors = vec![(1, Lsn(0x1_400_000))];
        let plan = plan_segments(Lsn(0x2_000_000), Lsn(0x3_000_000), SEG, &ancestors, 2);
        assert_eq!(
            names(&plan),
            vec![(
                "000000020000000000000002",
                Lsn(0x2_000_000),
                Lsn(0x3_000_000)
            )]
        );
    }
}
