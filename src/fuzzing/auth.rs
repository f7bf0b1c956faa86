//! Authentication input from clients and operators: the users file, a
//! password file, and the client's side of a SCRAM-SHA-256 exchange.

use crate::auth::scram::ServerFirst;
use crate::auth::{Users, Verifier};
use crate::pq::passfile;

/// Stands in the client's final message for the server nonce, so inputs
/// can reach the proof check.
const NONCE: &[u8] = b"{N}";

/// The first byte picks: a users file (a parsed verifier prints as text
/// that parses equal), a password file lookup, or a SCRAM exchange with
/// the client's first and final messages split at the first NUL: it must
/// fail (no input knows the password) without a panic.
pub fn auth(data: &[u8]) {
    let Some((&which, raw)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(raw);
    match which % 3 {
        0 => {
            if let Ok(users) = Users::parse(&text) {
                for line in text.lines() {
                    if let Some(v) = line
                        .split_whitespace()
                        .nth(2)
                        .and_then(|v| v.parse::<Verifier>().ok())
                    {
                        assert_eq!(v.to_string().parse::<Verifier>().as_ref(), Ok(&v));
                    }
                }
                let _ = users.len();
            }
        }
        1 => {
            let target = passfile::Target {
                host: "h",
                port: 5454,
                database: "replication",
                user: "u",
            };
            let _ = passfile::find(&text, target);
        }
        _ => scram(raw),
    }
}

fn scram(raw: &[u8]) {
    let (first, last) = match raw.iter().position(|b| *b == 0) {
        Some(i) => (&raw[..i], &raw[i + 1..]),
        None => (raw, &[][..]),
    };
    // A verifier for some password no input carries.
    let verifier = Verifier {
        iterations: 4096,
        salt: vec![1; 16],
        stored_key: [2; 32],
        server_key: [3; 32],
    };
    let Ok(server) = ServerFirst::start(first, Some(verifier), (&[0; 16], 4096)) else {
        return;
    };
    let nonce = server
        .message()
        .strip_prefix("r=")
        .and_then(|m| m.split(',').next())
        .expect("the server-first-message starts with its nonce")
        .as_bytes()
        .to_vec();
    let mut last = last.to_vec();
    while let Some(i) = last.windows(NONCE.len()).position(|w| w == NONCE) {
        last.splice(i..i + NONCE.len(), nonce.iter().copied());
    }
    assert!(
        server.finish(&last).is_err(),
        "an exchange succeeded without the password"
    );
}
