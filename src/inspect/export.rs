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
    pub files: Vec<ExportedFile>,
}

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

    let seg_len = seg as u64;
    let plan: Vec<Planned> = (from.segment_number(seg)..=Lsn(to.0 - 1).segment_number(seg))
        .map(|segno| {
            let start = Lsn(segno * seg_len);
            let seg_end = Lsn(start.0 + seg_len);
            let partial = seg_end > to;
            let base = segment_file_name(tli, segno, seg);
            Planned {
                segno,
                start,
                end: seg_end.min(to),
                partial,
                name: if partial {
                    format!("{base}.partial")
                } else {
                    base
                },
            }
        })
        .collect();

    std::fs::create_dir_all(out).map_err(io_err("cannot create the output directory", out))?;
    for p in &plan {
        let path = out.join(&p.name);
        if path.exists() {
            return Err(InspectError::Refused(format!(
                "{} already exists; export into an empty directory",
                path.display()
            )));
        }
    }

    let mut progress = if opts.show_progress {
        Progress::new(format!("export {ttid}"), to.0 - from.0)
    } else {
        Progress::hidden()
    };
    let mut temps = TempFiles(Vec::new());
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
            file.set_len(seg_len)
                .map_err(io_err("cannot extend", &tmp))?;
        }
        file.sync_all().map_err(io_err("cannot sync", &tmp))?;
        tracing::debug!(segment = p.segno, name = %p.name, "segment written");
    }
    progress.finish();
    for (p, tmp) in plan.iter().zip(&temps.0) {
        let path = out.join(&p.name);
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
