//! The client's side of TLS, as libpq does it: `sslmode` says whether to
//! ask for TLS and how much of the server's certificate to check,
//! `sslrootcert` whom to trust, `sslcert`/`sslkey` who we are.
//!
//! | sslmode     | TLS            | checks                                   |
//! |-------------|----------------|------------------------------------------|
//! | disable     | never          |                                          |
//! | allow       | if refused clear | none (as require)                      |
//! | prefer      | if offered     | none (as require)                        |
//! | require     | always         | none; with a root file, as verify-ca     |
//! | verify-ca   | always         | chain to `sslrootcert`, validity dates   |
//! | verify-full | always         | as verify-ca, and the host name          |

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{load_certs, load_key, load_roots, provider, MaybeTls, TlsError};

/// What libpq's `sslmode` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// In clear; TLS only if the server refuses the clear connection.
    Allow,
    /// TLS if the server offers it, else in clear.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// Whether a connection in clear is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

/// The TLS keys of a connection string (or their libpq defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsKeys {
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
}

/// libpq's defaults: `~/.postgresql/root.crt`, `postgresql.crt`,
/// `postgresql.key`, each used only when it exists (the root file is
/// required by verify-ca and verify-full).
fn default_file(name: &str) -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".postgresql").join(name))
}

/// The rustls client configuration for `mode` with `keys`; `None` for
/// `disable`.
pub fn client_config(mode: SslMode, keys: &TlsKeys) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let rootcert = match &keys.sslrootcert {
        Some(p) if p.as_os_str() == "system" => {
            return Err(TlsError::Config(
                "sslrootcert=system is not supported: name a CA file".into(),
            ))
        }
        Some(p) => Some(p.clone()),
        None => default_file("root.crt").filter(|p| p.exists()),
    };
    let verify_name = match (mode, &rootcert) {
        (SslMode::VerifyFull, Some(_)) => true,
        (SslMode::VerifyCa, Some(_)) => false,
        // libpq: "if a root CA file exists, sslmode=require behaves like
        // verify-ca".
        (SslMode::Require, Some(_)) => false,
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::Config(format!(
                "sslmode={} needs the CA to check the server's certificate with: set \
                 sslrootcert (default ~/.postgresql/root.crt, which does not exist)",
                if mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
            )))
        }
        _ => false,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (&rootcert, mode) {
        (Some(path), SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull) => {
            let roots = load_roots("sslrootcert", path)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| TlsError::Config(format!("sslrootcert: {e}")))?;
            if verify_name {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
        _ => Arc::new(Unchecked(provider())),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let sslcert = keys
        .sslcert
        .clone()
        .or_else(|| default_file("postgresql.crt").filter(|p| p.exists()));
    let config = match sslcert {
        None => builder.with_no_client_auth(),
        Some(cert) => {
            let sslkey = keys
                .sslkey
                .clone()
                .or_else(|| default_file("postgresql.key"))
                .ok_or_else(|| TlsError::Config("sslcert given without sslkey".into()))?;
            let chain = load_certs("sslcert", &cert)?;
            let key = load_key("sslkey", &sslkey)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Config(format!("sslcert and sslkey: {e}")))?
        }
    };
    Ok(Some(Arc::new(config)))
}

/// The TLS handshake as the client of `host` (a name or an address: what
/// verify-full checks the certificate against).
pub async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ClientConfig>,
    host: &str,
    stream: S,
) -> std::io::Result<MaybeTls<S>> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("host {host:?} cannot be checked against a certificate: {e}"),
        )
    })?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await?;
    Ok(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Client(
        tls,
    ))))
}

/// verify-ca: the chain, the dates and the signatures are checked, the
/// host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, once the chain is valid.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer, allow, require without a root file: encrypted, but anyone can
/// be on the other end (as in libpq). The handshake's own signatures are
/// still checked.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why TLS could not be started on a connection.
#[derive(Debug, thiserror::Error)]
pub enum StartTlsError {
    #[error(transparent)]
    Config(#[from] TlsError),
    #[error("I/O error while {context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
    /// The server answered `N` and the sslmode does not allow clear.
    #[error("the server does not support SSL, but SSL was required (sslmode)")]
    Refused,
    #[error("unexpected answer {0:#04x} to an SSL request")]
    Unexpected(u8),
    /// The handshake failed: a certificate not trusted, expired or not for
    /// this host, or a server that is not speaking TLS.
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// Before the startup packet: ask for TLS as libpq does (SSLRequest) and
/// do the handshake if the server agrees. With `prefer` or `allow` a server
/// answering `N` is spoken to in clear.
pub async fn start_tls<S: AsyncRead + AsyncWrite + Unpin>(
    mode: SslMode,
    keys: &TlsKeys,
    host: &str,
    mut stream: S,
) -> Result<MaybeTls<S>, StartTlsError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(config) = client_config(mode, keys)? else {
        return Ok(MaybeTls::Plain(stream));
    };
    let io = |context| move |source| StartTlsError::Io { context, source };
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&crate::pq::frame::SSL_REQUEST_CODE.to_be_bytes());
    stream
        .write_all(&request)
        .await
        .map_err(io("sending an SSL request"))?;
    // One byte, and nothing read beyond it: what follows is TLS.
    let answer = stream
        .read_u8()
        .await
        .map_err(io("reading the answer to an SSL request"))?;
    match answer {
        b'S' => connect(config, host, stream)
            .await
            .map_err(StartTlsError::Handshake),
        b'N' if mode.requires_tls() => Err(StartTlsError::Refused),
        b'N' => Ok(MaybeTls::Plain(stream)),
        other => Err(StartTlsError::Unexpected(other)),
    }
}
