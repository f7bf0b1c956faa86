//! Test certificates, made with rcgen into a test's temporary directory:
//! a CA, a server certificate for 127.0.0.1 and localhost signed by it, a
//! client certificate, an expired server certificate, and a second CA with
//! a server certificate of its own. Certificates are world-readable (a
//! standby, running as postgres, reads the CA); keys are 0600.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
};

pub struct Certs {
    pub dir: PathBuf,
    ca: (Certificate, KeyPair),
}

/// Names for which the server certificates are valid.
pub const SERVER_NAMES: &[&str] = &["127.0.0.1", "localhost"];

fn ca(name: &str) -> (Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let key = KeyPair::generate().unwrap();
    (params.self_signed(&key).unwrap(), key)
}

fn leaf(names: &[&str], cn: &str, issuer: &(Certificate, KeyPair)) -> (Certificate, KeyPair) {
    leaf_with(names, cn, issuer, |_| {})
}

fn leaf_with(
    names: &[&str],
    cn: &str,
    issuer: &(Certificate, KeyPair),
    edit: impl FnOnce(&mut CertificateParams),
) -> (Certificate, KeyPair) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    edit(&mut params);
    let key = KeyPair::generate().unwrap();
    (params.signed_by(&key, &issuer.0, &issuer.1).unwrap(), key)
}

impl Certs {
    pub fn new(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let certs = Certs {
            dir: dir.to_path_buf(),
            ca: ca("walkeeper test CA"),
        };
        std::fs::write(certs.path("ca.crt"), certs.ca.0.pem()).unwrap();
        certs.write("server", &leaf(SERVER_NAMES, "safekeeper", &certs.ca));
        certs.write("client", &leaf(&[], "walkeeper", &certs.ca));
        certs.write(
            "expired",
            &leaf_with(SERVER_NAMES, "safekeeper", &certs.ca, |p| {
                p.not_before = rcgen::date_time_ymd(2019, 1, 1);
                p.not_after = rcgen::date_time_ymd(2020, 1, 1);
            }),
        );
        let other = ca("another CA");
        std::fs::write(certs.path("other-ca.crt"), other.0.pem()).unwrap();
        certs.write("other", &leaf(SERVER_NAMES, "safekeeper", &other));
        certs
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `NAME.crt` and `NAME.key` (0600).
    fn write(&self, name: &str, (cert, key): &(Certificate, KeyPair)) {
        std::fs::write(self.path(&format!("{name}.crt")), cert.pem()).unwrap();
        let key_path = self.path(&format!("{name}.key"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A new server certificate and key (same names, same CA) over
    /// `server.crt` and `server.key`; its DER.
    pub fn renew_server(&self) -> Vec<u8> {
        let renewed = leaf(SERVER_NAMES, "safekeeper renewed", &self.ca);
        self.write("server", &renewed);
        renewed.0.der().to_vec()
    }

    /// A self-signed certificate for 127.0.0.1 and localhost with its key,
    /// as `server.crt` and `server.key` in a PostgreSQL data directory
    /// (owned by postgres, the key 0600); the certificate's path, which is
    /// also the CA to verify it with.
    pub fn self_signed_into(datadir: &Path) -> PathBuf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(
            SERVER_NAMES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (crt, key_path) = (datadir.join("server.crt"), datadir.join("server.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        for f in [&crt, &key_path] {
            let (ok, _, err) = super::run(
                std::process::Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(f),
            );
            assert!(ok, "chown {f:?}: {err}");
        }
        crt
    }

    /// The certificate a TLS client gets from the PostgreSQL-protocol port
    /// at `addr` now (after an SSLRequest), checked against this CA.
    pub fn served_certificate(&self, addr: std::net::SocketAddr) -> Vec<u8> {
        use walkeeper::tls::client::{start_tls, SslMode, TlsKeys};
        let keys = TlsKeys {
            sslrootcert: Some(self.path("ca.crt")),
            ..TlsKeys::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = start_tls(SslMode::VerifyFull, &keys, "127.0.0.1", socket)
                .await
                .unwrap();
            tls.peer_certificate().expect("a certificate").to_vec()
        })
    }

    /// The DER of the (first) certificate in `NAME.crt`.
    pub fn der(&self, name: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_file(self.path(&format!("{name}.crt")))
            .unwrap()
            .to_vec()
    }

    /// `--tls-cert … --tls-key …` of the certificate `NAME`.
    pub fn server_args(&self, name: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{name}.crt")).display().to_string(),
            "--tls-key".into(),
            self.path(&format!("{name}.key")).display().to_string(),
        ]
    }

    /// libpq keys that verify a server against this CA by host name.
    pub fn verify_full(&self) -> String {
        format!(
            "sslmode=verify-full sslrootcert={}",
            self.path("ca.crt").display()
        )
    }
}
