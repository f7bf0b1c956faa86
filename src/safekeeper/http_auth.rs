//! Who may use the HTTP port: with `--http-token-file`, every request must
//! carry `Authorization: Bearer <token>` (the HTTP port's admin
//! credential), except `GET /v1/status` and `GET /metrics` when
//! `--http-public-status` leaves them open for monitoring. Missing or
//! malformed credentials: 401; a wrong token: 403; both with a JSON error.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Shared;

/// Shortest token accepted: 128 bits of hex, or more.
pub const MIN_TOKEN_LEN: usize = 32;

/// The HTTP port's policy.
#[derive(Clone, Default)]
pub struct HttpAuth {
    /// SHA-256 of the token: compared in constant time, whatever the
    /// length of what a client sends.
    token_hash: Option<[u8; 32]>,
    /// `/v1/status` and `/metrics` without a token.
    public_status: bool,
}

impl std::fmt::Debug for HttpAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpAuth")
            .field("token", &self.token_hash.map(|_| "********"))
            .field("public_status", &self.public_status)
            .finish()
    }
}

impl HttpAuth {
    /// Read the token from `path` (one line; surrounding whitespace
    /// ignored).
    pub fn load(path: &Path, public_status: bool) -> Result<HttpAuth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--http-token-file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN || token.contains(char::is_whitespace) {
            return Err(format!(
                "--http-token-file {}: the token must be one word of at least {MIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)",
                path.display()
            ));
        }
        Ok(HttpAuth {
            token_hash: Some(Sha256::digest(token.as_bytes()).into()),
            public_status,
        })
    }

    pub fn is_on(&self) -> bool {
        self.token_hash.is_some()
    }

    /// Why `request` may not pass, if it may not.
    fn check(
        &self,
        method: &Method,
        path: &str,
        authorization: Option<&[u8]>,
    ) -> Result<(), Refusal> {
        let Some(want) = &self.token_hash else {
            return Ok(());
        };
        if self.public_status && method == Method::GET && matches!(path, "/v1/status" | "/metrics")
        {
            return Ok(());
        }
        let Some(value) = authorization else {
            return Err(Refusal::Missing);
        };
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))
            .ok_or(Refusal::Malformed)?;
        let got: [u8; 32] = Sha256::digest(token.trim_ascii()).into();
        if bool::from(got.ct_eq(want)) {
            Ok(())
        } else {
            Err(Refusal::Wrong)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
    Wrong,
}

impl Refusal {
    fn response(self) -> Response {
        let (code, msg) = match self {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "this endpoint needs a token: send Authorization: Bearer <token> (the safekeeper's --http-token-file)",
            ),
            Refusal::Malformed => (
                StatusCode::UNAUTHORIZED,
                "the Authorization header must be Bearer <token>",
            ),
            Refusal::Wrong => (StatusCode::FORBIDDEN, "the token is not valid"),
        };
        let body = axum::Json(serde_json::json!({ "error": msg }));
        let mut resp = (code, body).into_response();
        if code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// The middleware in front of every route.
pub async fn require(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match shared
        .http_auth
        .check(request.method(), request.uri().path(), authorization)
    {
        Ok(()) => next.run(request).await,
        Err(r) => {
            tracing::info!(method = %request.method(), path = %crate::logging::clip(request.uri().path(), crate::logging::MAX_LOGGED_CLIENT_TEXT), refusal = ?r, "HTTP request refused");
            r.response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(public_status: bool) -> HttpAuth {
        HttpAuth {
            token_hash: Some(Sha256::digest(b"t0ken").into()),
            public_status,
        }
    }

    #[test]
    fn bearer_tokens_and_public_status() {
        let post = Method::POST;
        let get = Method::GET;
        assert_eq!(
            HttpAuth::default().check(&post, "/v1/checkpoint", None),
            Ok(())
        );
        let a = on(false);
        assert_eq!(
            a.check(&post, "/v1/checkpoint", None),
            Err(Refusal::Missing)
        );
        assert_eq!(a.check(&get, "/metrics", None), Err(Refusal::Missing));
        assert_eq!(
            a.check(&post, "/v1/checkpoint", Some(b"Basic eDp5")),
            Err(Refusal::Malformed)
        );
        assert_eq!(
            a.check(&post, "/v1/checkpoint", Some(b"Bearer nope")),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            a.check(&post, "/v1/checkpoint", Some(b"Bearer t0ken")),
            Ok(())
        );
        let p = on(true);
        assert_eq!(p.check(&get, "/metrics", None), Ok(()));
        assert_eq!(p.check(&get, "/v1/status", None), Ok(()));
        assert_eq!(p.check(&get, "/v1/timelines", None), Err(Refusal::Missing));
        assert_eq!(p.check(&post, "/v1/status", None), Err(Refusal::Missing));
    }
}
