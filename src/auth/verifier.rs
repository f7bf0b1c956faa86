//! A SCRAM-SHA-256 verifier in PostgreSQL's own format (what `pg_authid`
//! holds, what `postgres_protocol::password::scram_sha_256` writes):
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, salt and
//! keys in base64.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys let an attacker try passwords offline: never logged.
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for `password`, with a random salt and PostgreSQL's
    /// default 4096 iterations (postgres-protocol's implementation, the
    /// same as libpq's `PQencryptPasswordConn`).
    pub fn from_password(password: &str) -> Verifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        text.parse()
            .unwrap_or_else(|e| unreachable!("postgres-protocol wrote a bad verifier: {e}"))
    }
}

impl FromStr for Verifier {
    type Err = String;

    fn from_str(s: &str) -> Result<Verifier, String> {
        let bad = |why: &str| format!("not a SCRAM-SHA-256 verifier ({why})");
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(|| {
            bad("expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
        })?;
        let (params, keys) = rest.split_once('$').ok_or_else(|| bad("no keys"))?;
        let (iterations, salt) = params
            .split_once(':')
            .ok_or_else(|| bad("expected <iterations>:<salt>"))?;
        let iterations: u32 = iterations
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("the iteration count is not a positive number"))?;
        let salt = B64
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("the salt is not base64"))?;
        let (stored, server) = keys
            .split_once(':')
            .ok_or_else(|| bad("expected <StoredKey>:<ServerKey>"))?;
        let key = |k: &str, what: &str| -> Result<[u8; 32], String> {
            B64.decode(k)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or_else(|| bad(&format!("{what} is not 32 bytes of base64")))
        };
        Ok(Verifier {
            iterations,
            salt,
            stored_key: key(stored, "StoredKey")?,
            server_key: key(server, "ServerKey")?,
        })
    }
}

impl fmt::Display for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_format_round_trips() {
        // As PostgreSQL writes it (salt bytes 1..=16).
        let pg = "SCRAM-SHA-256$4096:AQIDBAUGBwgJCgsMDQ4PEA==$Xy/hd+jn5XL6ykBV3sIthJ7NGBo8WMMJsIvCNQQZO4Y=:Mpoj8bN/G8KIY8AOnjY3m44I+BrBvM6j4J6Q5VmkO/8=";
        let v: Verifier = pg.parse().unwrap();
        assert_eq!(v.iterations, 4096);
        assert_eq!(v.salt, (1..=16).collect::<Vec<u8>>());
        assert_eq!(v.to_string(), pg);
        let fresh = Verifier::from_password("pw");
        assert_eq!(fresh.to_string().parse::<Verifier>().unwrap(), fresh);
    }

    #[test]
    fn malformed_verifiers_are_refused() {
        for bad in [
            "",
            "md5abcdef",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:!!$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AQID$AAAA:AAAA",
            "SCRAM-SHA-256$4096:AQID",
        ] {
            assert!(bad.parse::<Verifier>().is_err(), "{bad:?}");
        }
    }
}
