//! Authentication as the server asks for it: trust, cleartext, md5 and
//! SCRAM-SHA-256, with the password from the conninfo, `PGPASSWORD` or
//! the password file.

use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

use super::backend::{lossy, take_cstr, take_i32};
use super::{ClientError, ConnConfig, PgClient};

impl PgClient {
    pub(super) fn auth_error(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Auth {
            addr: self.reader.addr.to_string(),
            reason: reason.into(),
        }
    }

    /// The password: given, or from the password file for this host,
    /// port, `database` (as sent in the startup packet) and user.
    pub(super) fn password(&self, cfg: &ConnConfig, database: &str) -> Result<String, ClientError> {
        if let Some(p) = &cfg.password {
            return Ok(p.clone());
        }
        let host = match &cfg.host {
            h if h.starts_with('/') => "localhost",
            h => h.as_str(),
        };
        let target = crate::pq::passfile::Target {
            host,
            port: cfg.port,
            database,
            user: &cfg.user,
        };
        cfg.passfile
            .as_deref()
            .and_then(|path| crate::pq::passfile::lookup(path, target))
            .ok_or_else(|| {
                self.auth_error(format!(
                    "the server requested password authentication for user \"{}\" but no password \
                     was supplied (set password=, PGPASSWORD or a line in the password file{})",
                    cfg.user,
                    cfg.passfile
                        .as_deref()
                        .map(|p| format!(" {}", p.display()))
                        .unwrap_or_default()
                ))
            })
    }

    pub(super) async fn authenticate(
        &mut self,
        cfg: &ConnConfig,
        database: &str,
    ) -> Result<(), ClientError> {
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.reader.next_message("authenticating").await?;
            let mut body = f.body;
            match f.tag {
                b'R' => {}
                b'E' => return Err(self.reader.server_error(body)),
                // Only sent if we asked for a newer minor or _pq_ options,
                // which we never do; harmless either way.
                b'v' => continue,
                t => {
                    return Err(self.reader.protocol(format!(
                        "unexpected message type {:?} during authentication",
                        t as char
                    )))
                }
            }
            let code = take_i32(&mut body)
                .map_err(|e| self.reader.protocol(format!("Authentication: {e}")))?;
            // Encoded aside so the error helpers can borrow `self`.
            let mut msg = BytesMut::new();
            let out = &mut msg;
            match code {
                0 => return Ok(()),
                3 => {
                    let pw = self.password(cfg, database)?;
                    frontend::password_message(pw.as_bytes(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                }
                5 => {
                    let pw = self.password(cfg, database)?;
                    let salt: [u8; 4] = body[..]
                        .try_into()
                        .map_err(|_| self.reader.protocol("md5 request without a 4-byte salt"))?;
                    let hash = md5_hash(cfg.user.as_bytes(), pw.as_bytes(), salt);
                    frontend::password_message(hash.as_bytes(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                }
                10 => {
                    let pw = self.password(cfg, database)?;
                    let mut mechanisms = Vec::new();
                    while !body.is_empty() {
                        let m = take_cstr(&mut body)
                            .map_err(|e| self.reader.protocol(format!("SASL: {e}")))?;
                        if m.is_empty() {
                            break;
                        }
                        mechanisms.push(lossy(&m));
                    }
                    if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                        return Err(self.auth_error(format!(
                            "the server offers SASL mechanisms {mechanisms:?}; only SCRAM-SHA-256 \
                             without channel binding is supported"
                        )));
                    }
                    // "n": we do not support channel binding (no TLS).
                    let s = ScramSha256::new(pw.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response("SCRAM-SHA-256", s.message(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                    scram = Some(s);
                }
                11 => {
                    let Some(s) = scram.as_mut() else {
                        return Err(self.reader.protocol("SASLContinue before SASL"));
                    };
                    if let Err(e) = s.update(&body) {
                        return Err(self.auth_error(format!("SCRAM: {e}")));
                    }
                    frontend::sasl_response(s.message(), out)
                        .map_err(|e| self.auth_error(e.to_string()))?;
                }
                12 => {
                    let Some(mut s) = scram.take() else {
                        return Err(self.reader.protocol("SASLFinal before SASL"));
                    };
                    if let Err(e) = s.finish(&body) {
                        return Err(
                            self.auth_error(format!("SCRAM server signature rejected: {e}"))
                        );
                    }
                    continue;
                }
                2 => return Err(self.auth_error("Kerberos V5 authentication is not supported")),
                6 => return Err(self.auth_error("SCM credentials authentication is not supported")),
                7 | 8 => return Err(self.auth_error("GSSAPI authentication is not supported")),
                9 => return Err(self.auth_error("SSPI authentication is not supported")),
                c => return Err(self.auth_error(format!("unknown authentication request {c}"))),
            }
            self.writer.buf.extend_from_slice(&msg);
            self.writer.flush().await?;
        }
    }
}
