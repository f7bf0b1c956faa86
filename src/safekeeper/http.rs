//! The daemon's HTTP API: status, timelines, and Prometheus metrics.
//!
//! Everything here reads, except `POST /v1/checkpoint`, which writes a
//! RocksDB checkpoint of the store into a new directory under
//! `--checkpoint-dir` (the store itself is not changed). Timelines are shown
//! as their durable (synced) state, the same state WAL senders act on.
//!
//! The port takes at most `--max-http-connections` sockets (one more is
//! answered 503 and closed), and a connection that has not sent a request's
//! headers within `--http-header-timeout`, or a request body, is closed.

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::limits::{LogThrottle, Place};
use super::{state_of, DaemonError, Shared};
use crate::id::{TenantId, TimelineId, Ttid};
use crate::inspect::TimelineInfo;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/timelines", get(timelines))
        .route("/v1/timelines/{tenant}/{timeline}", get(timeline))
        .route("/metrics", get(metrics))
        .route("/v1/checkpoint", axum::routing::post(checkpoint))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            super::http_auth::require,
        ))
        .with_state(shared)
}

/// What a connection over `--max-http-connections` is told before it is
/// closed (without reading its request).
const TOO_MANY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\ncontent-length: 62\r\nconnection: close\r\n\r\n\
{\"error\":\"too many HTTP connections (--max-http-connections)\"}";

/// Serve until the daemon's shutdown flag flips.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let limits = shared.limits.clone();
    let app = router(shared.clone());
    let open: Arc<AtomicU64> = Arc::default();
    let shutdown = stopped(shared.shutdown.clone());
    tokio::pin!(shutdown);
    let mut connections = JoinSet::new();
    let mut accept_failures = LogThrottle::new(Duration::from_secs(10));
    let mut too_many = LogThrottle::new(Duration::from_secs(10));
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Some(place) = Place::take(open.clone(), limits.max_http_connections) else {
                        if let Some(more) = too_many.allow(Instant::now()) {
                            tracing::warn!(%peer, max = limits.max_http_connections, also_since_last_report = more, "too many HTTP connections; refusing new ones");
                        }
                        let _ = socket.try_write(TOO_MANY);
                        continue;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let stop = stopped(shared.shutdown.clone());
                    let header_timeout = limits.http_header_timeout;
                    let tls = shared.tls.http_server().cloned();
                    connections.spawn(async move {
                        let _place = place;
                        // The handshake within the header timeout too.
                        let Some(socket) = accept_tls(tls, socket, peer, header_timeout).await else {
                            return;
                        };
                        let mut http = hyper::server::conn::http1::Builder::new();
                        http.timer(hyper_util::rt::TokioTimer::new())
                            .header_read_timeout(header_timeout);
                        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(socket), service);
                        tokio::pin!(conn);
                        let served = tokio::select! {
                            r = conn.as_mut() => Some(r),
                            () = stop => None,
                        };
                        let result = match served {
                            Some(r) => r,
                            None => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        };
                        if let Err(e) = result {
                            tracing::debug!(%peer, "HTTP connection ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    if let Some(more) = accept_failures.allow(Instant::now()) {
                        tracing::warn!(error = %e, also_since_last_report = more, "HTTP accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// The TLS handshake if the port speaks TLS (`None`: it failed, and the
/// connection is dropped).
async fn accept_tls(
    tls: Option<Arc<crate::tls::server::TlsServer>>,
    socket: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    within: Duration,
) -> Option<crate::tls::MaybeTls<tokio::net::TcpStream>> {
    let Some(tls) = tls else {
        return Some(crate::tls::MaybeTls::Plain(socket));
    };
    match tokio::time::timeout(within, tls.accept(socket)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::info!(%peer, "HTTP: TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP: TLS handshake not done within --http-header-timeout");
            None
        }
    }
}

/// Resolves once the daemon's shutdown flag is set.
async fn stopped(mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
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
    /// A new directory on the daemon's machine, under `--checkpoint-dir`.
    path: std::path::PathBuf,
}

/// `--checkpoint-dir`, resolved at start: the one directory under which
/// `POST /v1/checkpoint` writes, and the store's own directory, which is
/// never written into.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
    store: PathBuf,
}

/// Resolve `--checkpoint-dir` (created if missing) beside the store at
/// `datadir`.
pub fn checkpoint_dir(dir: &FsPath, datadir: &FsPath) -> Result<CheckpointDir, DaemonError> {
    let resolve = |p: &FsPath| {
        std::fs::create_dir_all(p)
            .and_then(|()| std::fs::canonicalize(p))
            .map_err(|source| DaemonError::CheckpointDir {
                path: p.to_path_buf(),
                source,
            })
    };
    Ok(CheckpointDir {
        dir: resolve(dir)?,
        store: resolve(datadir)?,
    })
}

impl CheckpointDir {
    /// Where a checkpoint asked for at `requested` goes (symbolic links in
    /// it resolved), if that is under the directory and outside the store.
    pub fn resolve(&self, requested: &FsPath) -> Result<PathBuf, String> {
        if requested.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "path {} contains \"..\"; name the new directory plainly",
                requested.display()
            ));
        }
        // The deepest part that exists, resolved; the rest is to be made.
        let mut existing = requested;
        let mut missing = Vec::new();
        let resolved = loop {
            match std::fs::canonicalize(existing) {
                Ok(r) => break r,
                Err(_) => match (existing.file_name(), existing.parent()) {
                    (Some(name), Some(parent)) => {
                        missing.push(name);
                        existing = parent;
                    }
                    _ => return Err(format!("path {} cannot be resolved", requested.display())),
                },
            }
        };
        let target = missing.iter().rev().fold(resolved, |p, name| p.join(name));
        if target == self.dir || !target.starts_with(&self.dir) {
            return Err(format!(
                "path {} is not under --checkpoint-dir {}: checkpoints go into a new directory there",
                requested.display(),
                self.dir.display()
            ));
        }
        if target.starts_with(&self.store) {
            return Err(format!(
                "path {} is inside the store's own directory {}",
                requested.display(),
                self.store.display()
            ));
        }
        Ok(target)
    }
}

/// Most bytes a checkpoint request body may have: it names one path.
const MAX_CHECKPOINT_BODY: usize = 64 << 10;

/// `POST /v1/checkpoint {"path": DIR}`: 200 with what the checkpoint holds,
/// 403 when checkpoints are off (no `--checkpoint-dir`) or DIR is not under
/// that directory, 409 when DIR exists, 400 for a bad body, 408 for a body
/// not sent within `--http-header-timeout`, 500 when RocksDB fails.
async fn checkpoint(State(shared): State<Arc<Shared>>, body: axum::body::Body) -> Response {
    let Some(dir) = shared.checkpoint_dir.clone() else {
        return error(
            StatusCode::FORBIDDEN,
            "checkpoints over HTTP are off: start the safekeeper with --checkpoint-dir DIR to allow them under DIR (or use skctl checkpoint --datadir on a stopped store)",
        );
    };
    let timeout = shared.limits.http_header_timeout;
    let body = match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_CHECKPOINT_BODY))
        .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("reading the body: {e}")),
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {timeout:?} (--http-header-timeout)"),
            )
        }
    };
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
    let out = match dir.resolve(&req.path) {
        Ok(out) => out,
        Err(why) => {
            tracing::warn!(path = %crate::logging::clip(&req.path.display().to_string(), crate::logging::MAX_LOGGED_CLIENT_TEXT), "checkpoint refused: {}", crate::logging::clip(&why, 2 * crate::logging::MAX_LOGGED_CLIENT_TEXT));
            return error(StatusCode::FORBIDDEN, why);
        }
    };
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
        super::metrics::render(&shared),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_503_answer_says_its_length_right() {
        let text = std::str::from_utf8(super::TOO_MANY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(serde_json::from_str::<serde_json::Value>(body).is_ok());
    }
}
