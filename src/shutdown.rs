//! Graceful shutdown: the daemons stop on SIGTERM or SIGINT.

use tokio::signal::unix::{self, SignalKind};

/// Resolves at the first SIGTERM or SIGINT.
pub async fn signal() {
    let (mut term, mut int) = match (
        unix::signal(SignalKind::terminate()),
        unix::signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
