//! The daemon's side of TLS: its certificate and key from files, read again
//! on [`TlsServer::reload`] (SIGHUP) so a renewed certificate reaches new
//! connections while the open ones keep the session they negotiated.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{load_certs, load_key, load_roots, provider, MaybeTls, TlsError};

/// Where the daemon's TLS material lives (`--tls-cert`, `--tls-key`,
/// `--tls-client-ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM: the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: its private key (mode 0600 or less).
    pub key: PathBuf,
    /// PEM: CAs whose client certificates are accepted. When set, a client
    /// without a certificate signed by one of them is refused in the
    /// handshake.
    pub client_ca: Option<PathBuf>,
}

/// The current server configuration, replaced whole by a reload.
pub struct TlsServer {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Read the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> Result<TlsServer, TlsError> {
        let config = build(&files)?;
        Ok(TlsServer {
            files,
            current: RwLock::new(config),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Read the files again. On an error the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TLS handshake as the server, with the configuration of now.
    pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: S,
    ) -> std::io::Result<MaybeTls<S>> {
        let tls = tokio_rustls::TlsAcceptor::from(self.config())
            .accept(stream)
            .await?;
        Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(
            tls,
        ))))
    }
}

fn build(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs("--tls-cert", &files.cert)?;
    let key = load_key("--tls-key", &files.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = load_roots("--tls-client-ca", path)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config(format!("--tls-client-ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Config(format!(
            "--tls-cert {} and --tls-key {}: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })?;
    Ok(Arc::new(config))
}
