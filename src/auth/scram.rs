//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! runs it (`auth-scram.c`): no channel binding, no authorization identity,
//! the user name taken from the startup packet. Sans-IO: messages in,
//! messages out; [`crate::safekeeper::auth`] carries them over the wire.
//!
//! The crypto is the `sha2`, `hmac` and `subtle` crates' (RustCrypto): the
//! server only needs HMAC-SHA-256, SHA-256 and a constant-time comparison,
//! as it holds the verifier (StoredKey, ServerKey), never the password.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::verifier::Verifier;

pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Bytes of the server's part of the nonce (PostgreSQL: 18).
const SERVER_NONCE_LEN: usize = 18;

/// Why an exchange ended without authenticating the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The client's message is not SCRAM as PostgreSQL accepts it
    /// (SQLSTATE 08P01).
    #[error("malformed SCRAM message: {0}")]
    Malformed(String),
    /// The proof does not match, or the user does not exist (SQLSTATE
    /// 28P01; the two are not told apart).
    #[error("password authentication failed")]
    Failed,
    /// The OS random source failed.
    #[error("cannot draw a nonce: {0}")]
    Random(String),
}

fn malformed(why: impl Into<String>) -> ScramError {
    ScramError::Malformed(why.into())
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The exchange after the client's first message, waiting for its final
/// one. `verifier` is `None` for a user that does not exist: the exchange
/// runs as for a real one (with a mock salt) and fails at the end, so the
/// client cannot tell, as in PostgreSQL.
pub struct ServerFirst {
    verifier: Option<Verifier>,
    client_first_bare: String,
    server_first: String,
    /// `c=` the client must send back: the base64 of its GS2 header.
    channel_binding: String,
    nonce: String,
}

impl ServerFirst {
    /// Answer the client's first message (the SASLInitialResponse data).
    /// `mock` is the salt and iteration count to show for an unknown user.
    pub fn start(
        client_first: &[u8],
        verifier: Option<Verifier>,
        mock: (&[u8], u32),
    ) -> Result<ServerFirst, ScramError> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| malformed("the client's first message is not UTF-8"))?;
        let (gs2_header, bare) = split_gs2_header(text)?;
        let client_nonce = parse_client_first_bare(bare)?;
        let mut raw = [0u8; SERVER_NONCE_LEN];
        getrandom::fill(&mut raw).map_err(|e| ScramError::Random(e.to_string()))?;
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let (salt, iterations) = match &verifier {
            Some(v) => (B64.encode(&v.salt), v.iterations),
            None => (B64.encode(mock.0), mock.1),
        };
        let server_first = format!("r={nonce},s={salt},i={iterations}");
        Ok(ServerFirst {
            verifier,
            client_first_bare: bare.to_string(),
            server_first,
            channel_binding: B64.encode(gs2_header),
            nonce,
        })
    }

    /// The server-first-message (the SASLContinue data).
    pub fn message(&self) -> &str {
        &self.server_first
    }

    /// Check the client's final message (the SASLResponse data); the
    /// server-final-message (the SASLFinal data) when its proof is right.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| malformed("the client's final message is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| malformed("the client's final message has no proof (p=)"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or_else(|| malformed("the client's final message does not start with c="))?;
        if cbind != self.channel_binding {
            return Err(malformed(
                "unexpected SCRAM channel-binding attribute in the client's final message",
            ));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| malformed("the client's final message has no nonce (r=)"))?;
        if nonce != self.nonce {
            return Err(malformed("the client's final nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| malformed("the client proof is not base64"))?;
        if proof.len() != 32 {
            return Err(malformed("the client proof is not 32 bytes"));
        }
        let Some(v) = self.verifier else {
            return Err(ScramError::Failed);
        };
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let signature = hmac(&v.stored_key, &[auth_message.as_bytes()]);
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        if !bool::from(stored.ct_eq(&v.stored_key)) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&v.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// Split `gs2-header` from `client-first-message-bare`. Channel binding
/// (`p=`) and an authorization identity are refused, as PostgreSQL does
/// when it does not offer SCRAM-SHA-256-PLUS.
fn split_gs2_header(text: &str) -> Result<(&str, &str), ScramError> {
    let flag_end = text
        .find(',')
        .ok_or_else(|| malformed("no GS2 header in the client's first message"))?;
    match &text[..flag_end] {
        // n: the client does not do channel binding; y: it does but
        // believes the server does not (true: no -PLUS is offered).
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(malformed(
                "the client selected channel binding, which this server does not offer",
            ))
        }
        _ => return Err(malformed("unexpected channel-binding flag")),
    }
    let rest = &text[flag_end + 1..];
    let authzid_end = rest
        .find(',')
        .ok_or_else(|| malformed("unterminated GS2 header"))?;
    if !rest[..authzid_end].is_empty() {
        return Err(malformed(
            "the client uses an authorization identity, which is not supported",
        ));
    }
    let header_len = flag_end + 1 + authzid_end + 1;
    Ok((&text[..header_len], &text[header_len..]))
}

/// The client's nonce from `n=user,r=nonce[,ext…]`. The user name is
/// ignored (libpq sends it empty): the startup packet's counts.
fn parse_client_first_bare(bare: &str) -> Result<&str, ScramError> {
    let mut attrs = bare.split(',');
    match attrs.next() {
        Some(a) if a.starts_with("n=") => {}
        Some(a) if a.starts_with("m=") => {
            return Err(malformed("mandatory SCRAM extensions are not supported"))
        }
        _ => return Err(malformed("expected n= in the client's first message")),
    }
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| malformed("expected r= in the client's first message"))?;
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err(malformed("the client nonce is empty or not printable"));
    }
    Ok(nonce)
}

/// A salt for a user that does not exist: the same for the same name for
/// this process's life, unpredictable without `secret`, so repeated tries
/// do not reveal that the user is unknown.
pub fn mock_salt(secret: &[u8], user: &str) -> [u8; 16] {
    let mac = hmac(secret, &[b"walkeeper mock salt", user.as_bytes()]);
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&mac[..16]);
    salt
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn verifier(password: &str) -> Verifier {
        postgres_protocol::password::scram_sha_256(password.as_bytes())
            .parse()
            .unwrap()
    }

    /// A whole exchange against postgres-protocol's client (what the proxy
    /// uses): the client's outcome and the server's.
    fn exchange(
        password: &str,
        verifier: Option<Verifier>,
    ) -> (Result<(), String>, Result<(), ScramError>) {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let server = ServerFirst::start(client.message(), verifier, (&[7u8; 16], 4096)).unwrap();
        client.update(server.message().as_bytes()).unwrap();
        match server.finish(client.message()) {
            Ok(last) => (
                client.finish(last.as_bytes()).map_err(|e| e.to_string()),
                Ok(()),
            ),
            Err(e) => (Err("refused".into()), Err(e)),
        }
    }

    #[test]
    fn the_right_password_authenticates_both_ways() {
        let (client, server) = exchange("s3cret pw", Some(verifier("s3cret pw")));
        assert_eq!(server, Ok(()));
        assert_eq!(client, Ok(()), "the client accepts the server's signature");
    }

    #[test]
    fn a_wrong_password_or_an_unknown_user_fails_alike() {
        assert_eq!(
            exchange("wrong", Some(verifier("s3cret"))).1,
            Err(ScramError::Failed)
        );
        assert_eq!(exchange("anything", None).1, Err(ScramError::Failed));
    }

    #[test]
    fn malformed_and_unsupported_first_messages_are_refused() {
        for bad in [
            &b""[..],
            b"n",
            b"x,,n=,r=abc",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=someone,n=,r=abc",
            b"n,,m=ext,n=,r=abc",
            b"n,,n=,r=",
            b"n,,n=",
            b"\xff,,n=,r=abc",
        ] {
            assert!(
                matches!(
                    ServerFirst::start(bad, None, (&[0; 16], 4096)),
                    Err(ScramError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_final_message_must_echo_the_header_and_nonce() {
        let v = verifier("pw");
        let start = || ServerFirst::start(b"n,,n=,r=clientnonce", Some(v.clone()), (&[0; 16], 1));
        let s = start().unwrap();
        let nonce = s.nonce.clone();
        let proof = B64.encode([0u8; 32]);
        assert!(matches!(
            s.finish(format!("c=eSws,r={nonce},p={proof}").as_bytes()),
            Err(ScramError::Malformed(_))
        ));
        let s = start().unwrap();
        assert!(matches!(
            s.finish(format!("c=biws,r=clientnonce,p={proof}").as_bytes()),
            Err(ScramError::Malformed(_))
        ));
        let s = start().unwrap();
        let nonce = s.nonce.clone();
        assert_eq!(
            s.finish(format!("c=biws,r={nonce},p={proof}").as_bytes()),
            Err(ScramError::Failed)
        );
    }

    #[test]
    fn mock_salts_are_stable_per_user() {
        assert_eq!(mock_salt(b"k", "a"), mock_salt(b"k", "a"));
        assert_ne!(mock_salt(b"k", "a"), mock_salt(b"k", "b"));
        assert_ne!(mock_salt(b"k", "a"), mock_salt(b"j", "a"));
    }
}
