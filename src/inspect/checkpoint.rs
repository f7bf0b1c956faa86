//! `skctl checkpoint`: a RocksDB checkpoint of a running daemon (through its
//! HTTP API) or of a stopped store (opened directly).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use super::InspectError;
use crate::store::checkpoint::{self, CheckpointInfo};
use crate::store::rocks::RocksStore;

/// Checkpoint a stopped store. Opening it takes RocksDB's lock, so a store a
/// daemon is running on is refused (ask the daemon with `--http` instead).
pub fn of_stopped_store(datadir: &Path, out: &Path) -> Result<CheckpointInfo, InspectError> {
    if out.exists() {
        return Err(InspectError::Refused(format!(
            "{} already exists: a checkpoint goes into a new directory",
            out.display()
        )));
    }
    let store = RocksStore::open(datadir).map_err(|e| match e {
        crate::store::StoreError::Open { detail, .. } if detail.contains("lock") => {
            InspectError::Refused(format!(
                "{} is in use (is a safekeeper running on it? then use skctl checkpoint --http ADDR): {detail}",
                datadir.display()
            ))
        }
        other => other.into(),
    })?;
    let mark = checkpoint::create(&store, out).map_err(checkpoint_error)?;
    Ok(mark.info(out))
}

fn checkpoint_error(e: checkpoint::CheckpointError) -> InspectError {
    match e {
        checkpoint::CheckpointError::Store(s) => InspectError::Store(s),
        other => InspectError::Refused(other.to_string()),
    }
}

/// Ask the daemon at `addr` (its `--listen-http`) for a checkpoint into
/// `out`, a path on the daemon's machine; with the bearer token in
/// `token_file` when the daemon has `--http-token-file`.
pub fn over_http(
    addr: &str,
    out: &Path,
    token_file: Option<&Path>,
) -> Result<CheckpointInfo, InspectError> {
    let token = token_file
        .map(|path| {
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|source| InspectError::Io {
                    what: "cannot read the token file",
                    path: path.to_path_buf(),
                    source,
                })
        })
        .transpose()?;
    let out = std::path::absolute(out).map_err(|source| InspectError::Io {
        what: "cannot make the path absolute:",
        path: out.to_path_buf(),
        source,
    })?;
    let body = serde_json::json!({ "path": out }).to_string();
    let (status, reply) = post(addr, "/v1/checkpoint", &body, token.as_deref())?;
    if status == 200 {
        return serde_json::from_slice(&reply).map_err(|e| {
            InspectError::Refused(format!("{addr}: unexpected checkpoint reply: {e}"))
        });
    }
    let msg = serde_json::from_slice::<serde_json::Value>(&reply)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&reply).into_owned());
    Err(InspectError::Refused(format!(
        "{addr}: checkpoint failed (HTTP {status}): {msg}"
    )))
}

/// A minimal HTTP/1.1 POST: the daemon's API is the only server it talks to,
/// and one request needs no client library.
fn post(
    addr: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(u16, Vec<u8>), InspectError> {
    let refused = |what: &str, e: &dyn std::fmt::Display| {
        InspectError::Refused(format!("{addr}: {what}: {e}"))
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| refused("bad address", &e))?
        .next()
        .ok_or_else(|| InspectError::Refused(format!("{addr}: resolves to no address")))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(10))
        .map_err(|e| refused("cannot connect", &e))?;
    // A checkpoint flushes memtables and hard-links files: seconds at most.
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| refused("sending the request", &e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .map_err(|e| refused("reading the reply", &e))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| InspectError::Refused(format!("{addr}: malformed HTTP reply")))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let payload = &raw[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| InspectError::Refused(format!("{addr}: malformed status line")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(payload)
            .ok_or_else(|| InspectError::Refused(format!("{addr}: malformed chunked reply")))?
    } else {
        payload.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(
            super::dechunk(b"3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(super::dechunk(b"5\r\nab"), None);
    }
}
