//! The `skctl` command line. Tables for people by default, `--json` for
//! scripts. Exit status: 0 when all is well, 1 when the store holds damage
//! (verify found a fault, export met a damaged range), 2 for anything else
//! (a bad argument, a missing store, an I/O error).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use super::export::{export, ExportOptions};
use super::progress::human_bytes;
use super::verify::verify;
use super::{ChunkRow, InspectError, Inspector, SlotInfo, TimelineInfo};
use crate::id::Ttid;
use crate::lsn::Lsn;

/// Inspect, verify and export a walkeeper store or checkpoint, read-only.
///
/// Safe beside a running safekeeper: the store is opened as a RocksDB
/// secondary instance, which takes no lock and writes nothing to DIR.
#[derive(Parser, Debug)]
#[command(name = "skctl", version, about, long_about)]
pub struct Args {
    /// A safekeeper's store, or a checkpoint of one.
    #[arg(long, short = 'D', value_name = "DIR", global = true)]
    datadir: Option<PathBuf>,

    /// Print JSON on stdout instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every timeline: ids, system id, term, flush/commit LSN, local start
    /// LSN, stored bytes.
    Timelines,
    /// One timeline's full state and term history.
    Show {
        #[arg(value_name = "TENANT/TIMELINE")]
        timeline: Ttid,
    },
    /// One timeline's stored WAL chunks: start, end, length, CRC verdict.
    Wal {
        #[arg(value_name = "TENANT/TIMELINE")]
        timeline: Ttid,
        /// Chunks overlapping [FROM, TO) only.
        #[arg(long, value_name = "LSN")]
        from: Option<Lsn>,
        #[arg(long, value_name = "LSN")]
        to: Option<Lsn>,
    },
    /// Check every CRC, that chunks tile [local_start_lsn, flush_lsn), and
    /// each timeline's state. Exit 0 only when everything holds.
    Verify,
    /// Write WAL as PostgreSQL segment files (pg_waldump and restore_command
    /// read them), named by the PostgreSQL timeline each belongs to, with
    /// the history file of every timeline after the first. A timeline's
    /// last segment is `.partial` when it ended inside it (at a promotion,
    /// or at the end of the export).
    Export {
        #[arg(value_name = "TENANT/TIMELINE")]
        timeline: Ttid,
        /// Output directory (created if missing; existing segment files are
        /// not overwritten).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Start of the export, rounded down to its segment's start
        /// [default: local_start_lsn].
        #[arg(long, value_name = "LSN")]
        from: Option<Lsn>,
        /// End of the export [default: commit_lsn]. Up to flush_lsn is
        /// allowed, but WAL beyond commit_lsn may still be truncated by a new
        /// proposer.
        #[arg(long, value_name = "LSN")]
        to: Option<Lsn>,
    },
    /// Take a RocksDB checkpoint (a backup): of a running daemon with
    /// `--http ADDR` (its --listen-http; OUT is a path on its machine), or
    /// of a stopped store with `--datadir DIR`. OUT must not exist. The
    /// checkpoint is marked as one: a daemon started on it refuses to act
    /// as an acceptor of its old cluster (see `--restore-cluster`).
    Checkpoint {
        /// A running daemon's HTTP address, e.g. 127.0.0.1:7676.
        #[arg(long, value_name = "ADDR", conflicts_with = "datadir")]
        http: Option<String>,
        /// The new checkpoint directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// With --http: the file holding the daemon's bearer token (its
        /// --http-token-file).
        #[arg(
            long,
            value_name = "FILE",
            env = "WALKEEPER_HTTP_TOKEN_FILE",
            requires = "http"
        )]
        token_file: Option<PathBuf>,
    },
    /// Whether DIR is a checkpoint: the mark it carries (node, time, LSNs
    /// per timeline), or the checkpoint it was restored from.
    Mark,
    /// Print a line of the safekeeper's --users-file for a new user:
    /// NAME ROLE SCRAM-SHA-256$… The password is read from the terminal
    /// (asked twice, not echoed) or from the first line of stdin; only its
    /// SCRAM verifier is printed.
    User {
        /// The user name clients give (libpq's user=).
        #[arg(value_name = "NAME")]
        name: String,
        /// proposer (the proxy), consumer (standbys, pg_receivewal) or
        /// admin.
        #[arg(long, value_name = "ROLE")]
        role: crate::auth::Role,
    },
}

/// Parse arguments, run, and give the exit status.
pub fn main() -> ExitCode {
    init_logging();
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skctl: {e}");
            if e.is_damage() {
                ExitCode::from(1)
            } else {
                ExitCode::from(2)
            }
        }
    }
}

/// `skctl user`: the users-file line for `name`.
fn user_line(name: &str, role: crate::auth::Role) -> Result<ExitCode, InspectError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InspectError::Refused(format!(
            "user name {name:?}: must be non-empty, without spaces or control characters"
        )));
    }
    let password = crate::auth::password::read(&format!("Password for {name}: "))
        .map_err(|e| InspectError::Refused(format!("reading the password: {e}")))?;
    if password.is_empty() {
        return Err(InspectError::Refused("empty password".into()));
    }
    let verifier = crate::auth::Verifier::from_password(&password);
    println!("{}", crate::auth::users::line(name, role, &verifier));
    Ok(ExitCode::SUCCESS)
}

/// Quiet unless RUST_LOG asks: stderr is for the answer's errors.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(args: &Args) -> Result<ExitCode, InspectError> {
    if let Command::User { name, role } = &args.command {
        return user_line(name, *role);
    }
    if let Command::Checkpoint {
        http,
        out,
        token_file,
    } = &args.command
    {
        let info = match (http, &args.datadir) {
            (Some(addr), _) => super::checkpoint::over_http(addr, out, token_file.as_deref())?,
            (None, Some(dir)) => super::checkpoint::of_stopped_store(dir, out)?,
            (None, None) => {
                return Err(InspectError::Refused(
                    "checkpoint needs --http ADDR (a running daemon) or --datadir DIR (a stopped store)"
                        .into(),
                ))
            }
        };
        if args.json {
            print_json(&info)?;
        } else {
            println!("checkpoint of node {} in {}", info.node_id, info.path);
            for t in &info.timelines {
                println!(
                    "  {}  term {}  flush {}  commit {}",
                    t.timeline, t.term, t.flush_lsn, t.commit_lsn
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(datadir) = &args.datadir else {
        return Err(InspectError::Refused(
            "--datadir DIR is required: the store or checkpoint to read".into(),
        ));
    };
    let ins = Inspector::open(datadir)?;
    let show_progress = std::io::stderr().is_terminal();
    match &args.command {
        Command::Timelines => {
            let list: Vec<TimelineInfo> = ins.timelines()?.iter().map(Into::into).collect();
            if args.json {
                print_json(&list)?;
            } else if list.is_empty() {
                println!("no timelines in {}", datadir.display());
            } else {
                let rows = list
                    .iter()
                    .map(|t| {
                        vec![
                            format!("{}/{}", t.tenant_id, t.timeline_id),
                            t.system_id.clone(),
                            t.term.to_string(),
                            t.flush_lsn.clone(),
                            t.commit_lsn.clone(),
                            t.local_start_lsn.clone(),
                            human_bytes(t.held_bytes),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "TIMELINE",
                        "SYSTEM ID",
                        "TERM",
                        "FLUSH",
                        "COMMIT",
                        "LOCAL START",
                        "HELD",
                    ],
                    rows,
                );
            }
        }
        Command::Show { timeline } => {
            let info = TimelineInfo::from(&ins.timeline(*timeline)?);
            let slots = ins.slots(*timeline)?;
            if args.json {
                #[derive(Serialize)]
                struct Show<'a> {
                    #[serde(flatten)]
                    info: &'a TimelineInfo,
                    slots: &'a [SlotInfo],
                }
                print_json(&Show {
                    info: &info,
                    slots: &slots,
                })?;
            } else {
                print_show(&info, &slots);
            }
        }
        Command::Wal { timeline, from, to } => {
            // The state is read only to name an unknown timeline clearly.
            ins.timeline(*timeline)?;
            let chunks = ins.chunks(*timeline, from.unwrap_or(Lsn(0)), to.unwrap_or(Lsn::MAX))?;
            let rows: Vec<ChunkRow> = chunks.iter().map(Into::into).collect();
            if args.json {
                print_json(&rows)?;
            } else if rows.is_empty() {
                println!("no chunks stored in that range");
            } else {
                let bad = rows.iter().filter(|r| !r.crc_ok).count();
                print_table(
                    &["START", "END", "LEN", "CRC"],
                    rows.iter()
                        .map(|r| {
                            vec![
                                r.start_lsn.clone(),
                                r.end_lsn.clone(),
                                r.len.to_string(),
                                if r.crc_ok { "ok" } else { "BAD" }.to_string(),
                            ]
                        })
                        .collect(),
                );
                println!(
                    "{} chunks, {}{}",
                    rows.len(),
                    human_bytes(rows.iter().map(|r| r.len).sum()),
                    if bad > 0 {
                        format!(", {bad} with a bad checksum")
                    } else {
                        String::new()
                    }
                );
            }
            if rows.iter().any(|r| !r.crc_ok) {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Checkpoint { .. } | Command::User { .. } => {}
        Command::Mark => {
            let (mark, restored) = ins.checkpoint_marks()?;
            if args.json {
                #[derive(Serialize)]
                struct Marks {
                    checkpoint: Option<crate::store::checkpoint::CheckpointInfo>,
                    restored_from: Option<crate::store::checkpoint::CheckpointInfo>,
                }
                print_json(&Marks {
                    checkpoint: mark.as_ref().map(|m| m.info(datadir)),
                    restored_from: restored.as_ref().map(|m| m.info(datadir)),
                })?;
            } else {
                match (&mark, &restored) {
                    (Some(m), _) => println!(
                        "{} is {}; a daemon on it refuses proposers unless --restore-cluster",
                        datadir.display(),
                        m.describe()
                    ),
                    (None, Some(r)) => println!(
                        "{} was restored from {}; whole-cluster recovery cleared the mark",
                        datadir.display(),
                        r.describe()
                    ),
                    (None, None) => println!("{} is not a checkpoint", datadir.display()),
                }
            }
        }
        Command::Verify => {
            let report = verify(&ins, show_progress)?;
            if args.json {
                print_json(&report)?;
            } else {
                for f in &report.faults {
                    println!("FAULT {f}");
                }
                println!(
                    "{}: {} timelines, {} chunks, {} checked, {} faults",
                    if report.ok { "OK" } else { "DAMAGED" },
                    report.timelines,
                    report.chunks,
                    human_bytes(report.bytes),
                    report.faults.len()
                );
            }
            if !report.ok {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Export {
            timeline,
            out,
            from,
            to,
        } => {
            let report = export(
                &ins,
                *timeline,
                out,
                &ExportOptions {
                    from: *from,
                    to: *to,
                    show_progress,
                },
            )?;
            if report.beyond_commit {
                eprintln!(
                    "skctl: warning: exported WAL beyond commit_lsn {}; a new proposer may still truncate it",
                    report.commit_lsn
                );
            }
            if args.json {
                print_json(&report)?;
            } else {
                for h in &report.history_files {
                    println!("{h}");
                }
                for f in &report.files {
                    println!(
                        "{}  {}..{}{}",
                        f.name,
                        f.start_lsn,
                        f.end_lsn,
                        if f.partial {
                            "  (partial, zero-filled)"
                        } else {
                            ""
                        }
                    );
                }
                println!(
                    "exported {}..{} of {} into {}",
                    report.from_lsn,
                    report.to_lsn,
                    report.timeline,
                    out.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json<T: Serialize>(v: &T) -> Result<(), InspectError> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| InspectError::Refused(format!("cannot encode JSON: {e}")))?;
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) is not worth an error.
    let _ = writeln!(out, "{text}");
    Ok(())
}

fn print_show(t: &TimelineInfo, slots: &[SlotInfo]) {
    let lines = [
        ("tenant_id", t.tenant_id.clone()),
        ("timeline_id", t.timeline_id.clone()),
        ("system_id", t.system_id.clone()),
        ("pg_version", t.pg_version.to_string()),
        ("wal_seg_size", human_bytes(t.wal_seg_size as u64)),
        ("tli", t.tli.to_string()),
        ("term", t.term.to_string()),
        ("last_log_term", t.last_log_term.to_string()),
        ("timeline_start_lsn", t.timeline_start_lsn.clone()),
        ("local_start_lsn", t.local_start_lsn.clone()),
        ("flush_lsn", t.flush_lsn.clone()),
        ("commit_lsn", t.commit_lsn.clone()),
        ("peer_horizon_lsn", t.peer_horizon_lsn.clone()),
        ("slot_horizon_lsn", t.slot_horizon_lsn.clone()),
        (
            "settled",
            format!("term {} at {}", t.settled_term, t.settled_lsn),
        ),
        (
            "held_bytes",
            format!("{} ({})", t.held_bytes, human_bytes(t.held_bytes)),
        ),
        ("members", members_text(&t.members)),
        (
            "membership",
            match (&t.next_members, t.left) {
                (_, true) => format!("generation {}; this node was removed (left)", t.generation),
                (Some(next), _) => format!(
                    "generation {}; changing to {} (joint: both sets decide)",
                    t.generation,
                    members_text(next)
                ),
                (None, _) => format!("generation {}", t.generation),
            },
        ),
    ];
    let mut out = std::io::stdout().lock();
    for (k, v) in lines {
        let _ = writeln!(out, "{k:<20} {v}");
    }
    let _ = writeln!(out, "term history:");
    if t.term_history.is_empty() {
        let _ = writeln!(out, "  (empty: no proposer was elected yet)");
    }
    for e in &t.term_history {
        let _ = writeln!(out, "  term {:<10} from {}", e.term, e.start_lsn);
    }
    if slots.is_empty() {
        let _ = writeln!(out, "slots: none");
    } else {
        let _ = writeln!(out, "slots:");
    }
    for s in slots {
        let at = s.restart_lsn.as_deref().unwrap_or("(no restart LSN)");
        match &s.invalidated {
            None => {
                let _ = writeln!(out, "  {:<20} restart {at}", s.name);
            }
            Some(why) => {
                let _ = writeln!(out, "  {:<20} invalidated: {why}", s.name);
            }
        }
    }
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line(headers.to_vec()));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r.iter().map(String::as_str).collect()));
    }
}

fn members_text(m: &[crate::inspect::Member]) -> String {
    m.iter()
        .map(|m| format!("{}@{}", m.node_id, m.address))
        .collect::<Vec<_>>()
        .join(", ")
}
