//! `walkeeper-sim`: run the deterministic consensus simulation over a range
//! of seeds (see tools/SIMULATION.md). Parses flags, calls `walkeeper::sim`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use clap::Parser;
use walkeeper::sim::{self, SimOptions};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of walkeeper's proposer and acceptors")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Acceptors: 3 to 5.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(3..=5))]
    nodes: u64,
    /// Proposers: 1 to 3.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3))]
    proposers: u64,
    #[arg(long, default_value_t = 3000)]
    chaos_steps: usize,
    #[arg(long, default_value_t = 3000)]
    calm_steps: usize,
    /// Switch on a deliberate bug: accept-append-before-elected,
    /// donor-ignores-last-log-term, reseed-at-source-flush,
    /// create-on-every-greeting, store-unknown-slot-horizon,
    /// joint-counts-new-alone, reply-before-persisted, retry-failed-sync,
    /// ignore-failed-write, crash-keeps-non-prefix, accept-diverged-primary,
    /// settle-counts-minority.
    #[arg(long)]
    fault: Vec<String>,
    /// No failed writes or syncs nor full disks (crashes still keep any
    /// prefix of the unsynced writes).
    #[arg(long)]
    no_storage_faults: bool,
    /// Run a membership change (then --nodes is the change's):
    /// replace-one, grow, shrink, two-configs.
    #[arg(long)]
    change: Option<String>,
    /// Print the last steps before a violation.
    #[arg(long)]
    trace: bool,
    /// Worker threads (each simulation itself is single-threaded).
    #[arg(long)]
    jobs: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut base = SimOptions::new(0, args.nodes as usize, args.proposers as usize);
    base.chaos_steps = args.chaos_steps;
    base.calm_steps = args.calm_steps;
    base.trace = args.trace;
    base.storage_faults = !args.no_storage_faults;
    for f in &args.fault {
        match f.as_str() {
            "accept-append-before-elected" => {
                base.acceptor_faults.accept_append_before_elected = true
            }
            "donor-ignores-last-log-term" => {
                base.proposer_faults.donor_ignores_last_log_term = true
            }
            "reseed-at-source-flush" => base.proposer_faults.reseed_at_source_flush = true,
            "create-on-every-greeting" => base.proposer_faults.create_on_every_greeting = true,
            "store-unknown-slot-horizon" => base.acceptor_faults.store_unknown_slot_horizon = true,
            "joint-counts-new-alone" => base.proposer_faults.joint_counts_new_alone = true,
            "reply-before-persisted" => base.acceptor_faults.reply_before_persisted = true,
            "retry-failed-sync" => base.disk_bugs.retry_failed_sync = true,
            "ignore-failed-write" => base.disk_bugs.ignore_failed_write = true,
            "crash-keeps-non-prefix" => base.disk_bugs.crash_keeps_non_prefix = true,
            "accept-diverged-primary" => base.proposer_faults.accept_diverged_primary = true,
            "settle-counts-minority" => base.proposer_faults.settle_counts_minority = true,
            other => {
                eprintln!("unknown fault {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(name) = &args.change {
        let Some(change) = sim::MemberChange::parse(name) else {
            eprintln!("unknown change {name:?}");
            return ExitCode::from(2);
        };
        base = SimOptions {
            change: Some(change),
            nodes: change.nodes(),
            ..base
        };
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = AtomicU64::new(args.start);
    let end = args.start + args.seeds;
    let failures = Mutex::new(Vec::new());
    let committed = AtomicU64::new(0);
    let reseeds = AtomicU64::new(0);
    let changes_done = AtomicU64::new(0);
    let storage_failures = AtomicU64::new(0);
    let late = [AtomicU64::new(0), AtomicU64::new(0)];
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let mut opts = base.clone();
                opts.seed = seed;
                match sim::run(&opts) {
                    Ok(o) => {
                        committed.fetch_add(o.committed_bytes, Ordering::Relaxed);
                        reseeds.fetch_add(o.reseeds, Ordering::Relaxed);
                        changes_done.fetch_add(o.changes_done.min(1), Ordering::Relaxed);
                        storage_failures.fetch_add(o.storage_failures, Ordering::Relaxed);
                        late[0].fetch_add(o.late_heard, Ordering::Relaxed);
                        late[1].fetch_add(o.late_refused, Ordering::Relaxed);
                    }
                    Err(v) => {
                        eprintln!("VIOLATION {v}");
                        failures.lock().expect("no panics while held").push(seed);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().expect("threads joined");
    println!(
        "{} seeds ({}..{}), {} nodes, {} proposers, change {}: {} violations, {} committed bytes in total, {} re-seeds, {} seeds ending with the change done, {} storage failures, {} late messages of replaced connections heard and {} refused, {:.1}s",
        args.seeds,
        args.start,
        end,
        base.nodes,
        args.proposers,
        args.change.as_deref().unwrap_or("none"),
        failures.len(),
        committed.load(Ordering::Relaxed),
        reseeds.load(Ordering::Relaxed),
        changes_done.load(Ordering::Relaxed),
        storage_failures.load(Ordering::Relaxed),
        late[0].load(Ordering::Relaxed),
        late[1].load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
