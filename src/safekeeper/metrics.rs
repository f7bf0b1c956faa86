//! The daemon's Prometheus metrics (`GET /metrics`): per-timeline positions,
//! connection gauges, and the group-commit writer's batch statistics and
//! latency histograms (collected in `store::writer`), in the text exposition
//! format.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::{state_of, Shared};
use crate::consensus::acceptor::TimelineState;
use crate::store::writer::Histogram;

/// Prometheus text exposition format, written by hand: a dozen series do
/// not need a metrics crate.
pub fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let all = shared.timelines.all();
    let states: Vec<TimelineState> = all.iter().map(|t| state_of(t)).collect();
    let labels = |s: &TimelineState| {
        format!(
            "tenant_id=\"{}\",timeline_id=\"{}\"",
            s.ttid.tenant_id, s.ttid.timeline_id
        )
    };
    type Field = fn(&TimelineState) -> u64;
    let per_timeline: [(&str, &str, Field); 5] = [
        (
            "walkeeper_flush_lsn",
            "End of the WAL durably held, as a byte position.",
            |s| s.flush_lsn.0,
        ),
        (
            "walkeeper_commit_lsn",
            "Committed WAL position (durably recorded here), as a byte position.",
            |s| s.commit_lsn.0,
        ),
        (
            "walkeeper_local_start_lsn",
            "First WAL position still stored here.",
            |s| s.local_start_lsn.0,
        ),
        (
            "walkeeper_held_bytes",
            "WAL bytes stored here (flush_lsn - local_start_lsn); retention trims them.",
            |s| s.flush_lsn.distance_from(s.local_start_lsn),
        ),
        ("walkeeper_term", "Current term of the timeline.", |s| {
            s.term
        }),
    ];
    for (name, help, value) in per_timeline {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in &states {
            let _ = writeln!(out, "{name}{{{}}} {}", labels(s), value(s));
        }
    }
    let gauges = [
        (
            "walkeeper_connections",
            "Open connections on the PostgreSQL-protocol port (at most --max-connections).",
            shared.connections.load(Ordering::Relaxed),
        ),
        (
            "walkeeper_timelines",
            "Timelines held by this safekeeper.",
            all.len() as u64,
        ),
        (
            "walkeeper_connected_proposers",
            "Open START_WAL_PUSH streams.",
            shared.proposers.load(Ordering::Relaxed),
        ),
        (
            "walkeeper_connected_consumers",
            "Open START_REPLICATION streams (proposers' recovery reads excepted).",
            shared.consumers.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let _ = writeln!(
        out,
        "# HELP walkeeper_uptime_seconds Seconds since the daemon started.\n\
         # TYPE walkeeper_uptime_seconds gauge\nwalkeeper_uptime_seconds {}",
        shared.started.elapsed().as_secs_f64()
    );
    let stats = shared.timelines.writer().stats();
    let counters = [
        (
            "walkeeper_wal_written_bytes_total",
            "WAL bytes written to the store (synced).",
            stats.wal_bytes,
        ),
        (
            "walkeeper_write_requests_total",
            "Write requests through the group-commit writer.",
            stats.requests,
        ),
        (
            "walkeeper_sync_batches_total",
            "Group-commit batches synced (one fsync each).",
            stats.batches,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    histogram(
        &mut out,
        "walkeeper_append_seconds",
        "From submitting a write carrying WAL to its sync completing.",
        &stats.append_seconds,
    );
    histogram(
        &mut out,
        "walkeeper_fsync_seconds",
        "Duration of each group-commit sync.",
        &stats.sync_seconds,
    );
    histogram(
        &mut out,
        "walkeeper_batch_requests",
        "Write requests per group-commit batch.",
        &stats.batch_requests,
    );
    out
}

fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (le, n) in h.cumulative() {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}", h.sum);
    let _ = writeln!(out, "{name}_count {}", h.count);
}
