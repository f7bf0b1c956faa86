//! The start of a connection on the PostgreSQL-protocol port, before its
//! startup packet: libpq's SSLRequest is answered `S` and the TLS handshake
//! follows (`N` without `--tls-cert`), a GSSENCRequest is answered `N`, and
//! with `--tls-required` a startup packet in clear is refused, as a
//! `hostssl` line of pg_hba.conf would. Everything after (start-up,
//! authentication, replication) runs over the [`Stream`] this returns.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::pq::connection::PqConnection;
use crate::pq::frame::{CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};
use crate::pq::{sqlstate, PqError};
use crate::tls::server::TlsServer;
use crate::tls::MaybeTls;

/// A connection on the PostgreSQL-protocol port, in clear or TLS.
pub type Stream = MaybeTls<TcpStream>;

/// TLS on the daemon's ports.
#[derive(Debug, Clone, Default)]
pub struct PortsTls {
    /// `--tls-cert`/`--tls-key`: offered to clients that ask; None: every
    /// SSLRequest is answered `N`.
    pub server: Option<Arc<TlsServer>>,
    /// The HTTP port speaks only TLS (with `server`).
    pub http: bool,
    /// `--tls-required`: a startup packet in clear is refused (28000).
    /// Cancel requests are served in clear all the same: libpq sends them so.
    pub required: bool,
}

/// Why a connection ended before its startup packet.
#[derive(Debug, thiserror::Error)]
pub enum NegotiationError {
    #[error(transparent)]
    Protocol(#[from] PqError),
    /// The client asked for TLS and the handshake failed (garbage instead
    /// of a ClientHello, a client certificate refused, a client that did
    /// not trust ours).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// Negotiate encryption. `None` when the connection ends here (the client
/// left, or was refused for coming in clear with `--tls-required`).
pub async fn negotiate(
    tls: &PortsTls,
    socket: TcpStream,
    peer: SocketAddr,
) -> Result<Option<PqConnection<Stream>>, NegotiationError> {
    let mut conn = PqConnection::new(socket);
    let (mut ssl_done, mut gss_done) = (false, false);
    loop {
        let Some(code) = conn.peek_startup_code().await? else {
            return Ok(None);
        };
        let asked_twice = match code {
            SSL_REQUEST_CODE => std::mem::replace(&mut ssl_done, true),
            GSSENC_REQUEST_CODE => std::mem::replace(&mut gss_done, true),
            _ => false,
        };
        if asked_twice {
            return Err(
                PqError::Protocol("encryption requested twice in one startup".into()).into(),
            );
        }
        match code {
            SSL_REQUEST_CODE => {
                conn.read_startup_packet().await?;
                let Some(server) = &tls.server else {
                    conn.answer_encryption_request(false).await?;
                    continue;
                };
                conn.answer_encryption_request(true).await?;
                // Bytes sent after the SSLRequest, before our answer, were
                // not encrypted: PostgreSQL refuses them (CVE-2021-23214).
                let socket = conn.into_stream().map_err(|_| {
                    PqError::Protocol("received unencrypted data after SSL request".into())
                })?;
                let stream = server
                    .accept(socket)
                    .await
                    .map_err(NegotiationError::Handshake)?;
                tracing::debug!(%peer, "TLS established");
                // The startup packet follows inside TLS.
                return Ok(Some(PqConnection::new(stream)));
            }
            GSSENC_REQUEST_CODE => {
                conn.read_startup_packet().await?;
                conn.answer_encryption_request(false).await?;
            }
            CANCEL_REQUEST_CODE => return Ok(Some(conn.map_stream(MaybeTls::Plain))),
            _ if tls.required => {
                tracing::info!(%peer, "refused: a connection in clear, and --tls-required");
                conn.send_fatal(
                    sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                    "this safekeeper accepts only TLS connections (--tls-required): connect \
                     with sslmode=require, verify-ca or verify-full",
                )
                .await?;
                return Ok(None);
            }
            _ => return Ok(Some(conn.map_stream(MaybeTls::Plain))),
        }
    }
}

/// [`negotiate`] by `deadline` (`--authentication-timeout` covers it too),
/// saying in the log why a connection ended here.
pub async fn negotiate_by(
    deadline: tokio::time::Instant,
    tls: &PortsTls,
    socket: TcpStream,
    peer: SocketAddr,
) -> Option<PqConnection<Stream>> {
    match tokio::time::timeout_at(deadline, negotiate(tls, socket, peer)).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(NegotiationError::Protocol(e))) if e.is_disconnect() => {
            tracing::debug!(%peer, "client went away: {e}");
            None
        }
        Ok(Err(e)) => {
            tracing::warn!(%peer, "connection failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "encryption not negotiated in time (--authentication-timeout); closing");
            None
        }
    }
}

/// The TLS flags of the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
    pub files: Option<crate::tls::server::TlsFiles>,
    /// `--tls-required`.
    pub required: bool,
    /// TLS on the HTTP port too (with the same certificate), unless
    /// `--http-tls=false`.
    pub http: bool,
}

impl TlsConfig {
    /// Read the files.
    pub fn load(&self) -> Result<PortsTls, crate::tls::TlsError> {
        let server = match &self.files {
            Some(files) => Some(Arc::new(TlsServer::load(files.clone())?)),
            None if self.required => {
                return Err(crate::tls::TlsError::Config(
                    "--tls-required needs --tls-cert and --tls-key".into(),
                ))
            }
            None => None,
        };
        Ok(PortsTls {
            http: server.is_some() && self.http,
            server,
            required: self.required,
        })
    }
}

impl PortsTls {
    /// The server of the HTTP port, if it speaks TLS.
    pub fn http_server(&self) -> Option<&Arc<TlsServer>> {
        self.server.as_ref().filter(|_| self.http)
    }
}

/// Read the certificate and key again at every SIGHUP: new connections get
/// the renewed certificate, open ones keep their session. Unreadable files
/// leave the one in use (and say why). Runs until the task is aborted.
pub async fn reload_on_sighup(server: Option<Arc<TlsServer>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "cannot install a SIGHUP handler ({e}): certificates are read at start only"
            );
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let Some(server) = &server else {
            tracing::info!("SIGHUP: no TLS configured, nothing to reload");
            continue;
        };
        match server.reload() {
            Ok(()) => tracing::info!(
                cert = %server.files().cert.display(),
                "SIGHUP: TLS certificate and key reloaded; new connections use them"
            ),
            Err(e) => tracing::error!(
                "SIGHUP: TLS reload failed, the previous certificate stays in use: {e}"
            ),
        }
    }
}
