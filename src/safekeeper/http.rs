//! The daemon's HTTP API: status, timelines, and Prometheus metrics.
//!
//! Everything here reads, except `POST /v1/checkpoint`, which writes a
//! RocksDB checkpoint of the store into a new directory (the store itself is
//! not changed). Timelines are shown as their durable (synced) state, the
//! same state WAL senders act on.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;

use super::timelines::Timeline;
use super::Shared;
use crate::consensus::acceptor::TimelineState;
use crate::id::{TenantId, TimelineId, Ttid};
use crate::inspect::TimelineInfo;
use crate::store::writer::Histogram;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/timelines", get(timelines))
        .route("/v1/timelines/{tenant}/{timeline}", get(timeline))
        .route("/metrics", get(metrics))
        .route("/v1/checkpoint", axum::routing::post(checkpoint))
        .fallback(not_found)
        .with_state(shared)
}

/// Serve until the daemon's shutdown flag flips.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut shutdown = shared.shutdown.clone();
    axum::serve(listener, router(shared))
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

#[derive(Serialize)]
struct ApiError {
    error: String,
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(ApiError { error: msg.into() })).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; try /v1/status, /v1/timelines, /v1/timelines/{tenant}/{timeline}, /metrics, POST /v1/checkpoint",
    )
}

#[derive(Serialize)]
struct Status {
    node_id: u64,
    version: &'static str,
    uptime_seconds: f64,
    timelines: usize,
    proposers: u64,
    consumers: u64,
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    Json(Status {
        node_id: shared.timelines.node_id().0,
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: shared.started.elapsed().as_secs_f64(),
        timelines: shared.timelines.all().len(),
        proposers: shared.proposers.load(Ordering::Relaxed),
        consumers: shared.consumers.load(Ordering::Relaxed),
    })
}

/// The synced state, or (for a timeline whose creation is not synced yet)
/// the acceptor's current one.
fn state_of(t: &Timeline) -> TimelineState {
    let durable = t.durable().borrow().clone();
    match durable {
        Some(s) => (*s).clone(),
        None => t.current_state(),
    }
}

async fn timelines(State(shared): State<Arc<Shared>>) -> Json<Vec<TimelineInfo>> {
    Json(
        shared
            .timelines
            .all()
            .iter()
            .map(|t| TimelineInfo::from(&state_of(t)))
            .collect(),
    )
}

async fn timeline(
    State(shared): State<Arc<Shared>>,
    Path((tenant, timeline)): Path<(String, String)>,
) -> Response {
    let tenant_id: TenantId = match tenant.parse() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let timeline_id: TimelineId = match timeline.parse() {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("{e}")),
    };
    let ttid = Ttid::new(tenant_id, timeline_id);
    match shared.timelines.get(ttid) {
        Some(t) => Json(TimelineInfo::from(&state_of(&t))).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("timeline {ttid} does not exist on this safekeeper"),
        ),
    }
}

#[derive(serde::Deserialize)]
struct CheckpointRequest {
    /// A new directory on the daemon's machine.
    path: std::path::PathBuf,
}

/// `POST /v1/checkpoint {"path": DIR}`: 200 with what the checkpoint holds,
/// 409 when DIR exists, 400 for a bad body, 500 when RocksDB fails.
async fn checkpoint(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let req: CheckpointRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be JSON {{\"path\": \"/new/directory\"}}: {e}"),
            )
        }
    };
    if !req.path.is_absolute() {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "path {} is relative; give an absolute path (it is resolved on the safekeeper's machine)",
                req.path.display()
            ),
        );
    }
    let out = req.path.clone();
    let task = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.checkpoint(&out))
    };
    match task.await {
        Ok(Ok(mark)) => {
            tracing::info!(path = %req.path.display(), "checkpoint taken: {}", mark.describe());
            Json(mark.info(&req.path)).into_response()
        }
        Ok(Err(e @ crate::store::checkpoint::CheckpointError::Exists(_))) => {
            error(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e)) => {
            tracing::error!(path = %req.path.display(), "checkpoint failed: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("checkpoint task failed: {e}"),
        ),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&shared),
    )
        .into_response()
}

/// Prometheus text exposition format, written by hand: a dozen series do
/// not need a metrics crate.
pub fn render_metrics(shared: &Shared) -> String {
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
