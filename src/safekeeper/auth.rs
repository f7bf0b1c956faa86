//! Authentication on the PostgreSQL-protocol port: SCRAM-SHA-256 against
//! the users file (`--users-file`), as PostgreSQL runs it, over any stream
//! (plain TCP or TLS). Then each command is checked against the user's
//! role ([`privilege`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::http_auth::HttpAuth;
use super::DaemonError;
use crate::auth::scram::{self, ScramError, ServerFirst};
use crate::auth::users::UsersError;
use crate::auth::{Privilege, Role, Users};
use crate::logging::{clip, MAX_LOGGED_CLIENT_TEXT};
use crate::pq::connection::PqConnection;
use crate::pq::frame::{BeMessage, FeMessage};
use crate::pq::replication::{find_option, ReplicationCommand};
use crate::pq::{sqlstate, PqError};

/// Who may connect, as configured: the daemon's authentication flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Access {
    /// Users of the PostgreSQL-protocol port, one a line: NAME ROLE
    /// VERIFIER, ROLE proposer, consumer or admin, VERIFIER PostgreSQL's
    /// SCRAM-SHA-256$… (write lines with `skctl user NAME --role ROLE`).
    /// Clients then authenticate with SCRAM-SHA-256 and may do what their
    /// role allows. Without it every client is trusted.
    #[arg(long, value_name = "FILE", env = "WALKEEPER_USERS_FILE")]
    pub users_file: Option<PathBuf>,

    /// A file holding the HTTP port's bearer token (one word, 32 characters
    /// or more, e.g. `openssl rand -hex 32`). Every HTTP request must then
    /// send `Authorization: Bearer <token>`.
    #[arg(long, value_name = "FILE", env = "WALKEEPER_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<PathBuf>,

    /// With --http-token-file: leave GET /v1/status and GET /metrics open
    /// (for monitoring); everything else still needs the token.
    #[arg(
        long,
        env = "WALKEEPER_HTTP_PUBLIC_STATUS",
        requires = "http_token_file"
    )]
    pub http_public_status: bool,

    /// Listen on a non-loopback address without authentication (no
    /// --users-file for --listen-pg, no --http-token-file for
    /// --listen-http). Anyone who reaches such a port can then push WAL,
    /// raise terms and read all WAL: only behind a network you trust
    /// completely. A warning is logged at every start.
    #[arg(long, env = "WALKEEPER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// What [`Access::check`] loaded.
#[derive(Default)]
pub struct Loaded {
    pub pg: Option<Arc<PgAuth>>,
    pub http: HttpAuth,
}

impl Access {
    /// Load what is configured, at start; refuse a port on a non-loopback
    /// address without authentication unless --insecure-no-auth says so.
    pub fn check(
        &self,
        listen_pg: SocketAddr,
        listen_http: SocketAddr,
    ) -> Result<Loaded, DaemonError> {
        let open = |addr: SocketAddr, configured: bool| !configured && !addr.ip().is_loopback();
        let mut refused = Vec::new();
        if open(listen_pg, self.users_file.is_some()) {
            refused.push(format!(
                "--listen-pg {listen_pg} without --users-file (create one with `skctl user NAME --role proposer|consumer|admin >> FILE`)"
            ));
        }
        if open(listen_http, self.http_token_file.is_some()) {
            refused.push(format!(
                "--listen-http {listen_http} without --http-token-file (a file holding a token, e.g. from `openssl rand -hex 32`)"
            ));
        }
        if !refused.is_empty() {
            let what = refused.join("; ");
            if !self.insecure_no_auth {
                return Err(DaemonError::Config(format!(
                    "refusing to listen on a non-loopback address without authentication: {what}. \
                     Configure authentication, bind 127.0.0.1, or (only on a network you trust \
                     completely) pass --insecure-no-auth"
                )));
            }
            tracing::warn!("--insecure-no-auth: listening without authentication: {what}. Anyone who reaches these ports can push WAL, raise terms and read every byte of WAL");
        }
        let pg = match &self.users_file {
            None => None,
            Some(path) => {
                let auth = PgAuth::load(path).map_err(|e| DaemonError::Config(e.to_string()))?;
                tracing::info!(users = auth.users().len(), path = %path.display(), "SCRAM-SHA-256 authentication on the PostgreSQL-protocol port (--users-file)");
                Some(Arc::new(auth))
            }
        };
        let http = match &self.http_token_file {
            None => HttpAuth::default(),
            Some(path) => {
                let http =
                    HttpAuth::load(path, self.http_public_status).map_err(DaemonError::Config)?;
                tracing::info!(
                    public_status = self.http_public_status,
                    "the HTTP port needs a bearer token (--http-token-file)"
                );
                http
            }
        };
        Ok(Loaded { pg, http })
    }
}

/// PostgreSQL's default; what an unknown user's mock exchange shows.
const MOCK_ITERATIONS: u32 = 4096;

/// The users and this process's secret for unknown users' mock salts.
pub struct PgAuth {
    users: Users,
    mock_secret: [u8; 32],
}

impl PgAuth {
    /// Load `--users-file`.
    pub fn load(path: &Path) -> Result<PgAuth, UsersError> {
        let users = Users::load(path)?;
        Ok(PgAuth::new(users))
    }

    pub fn new(users: Users) -> PgAuth {
        let mut mock_secret = [0u8; 32];
        // Without the OS random source the mock salts are still per-user
        // and stable; only predictable. Nothing else depends on it.
        if let Err(e) = getrandom::fill(&mut mock_secret) {
            tracing::warn!("no random secret for unknown users' mock salts: {e}");
        }
        PgAuth { users, mock_secret }
    }

    pub fn users(&self) -> &Users {
        &self.users
    }
}

fn failed(user: &str) -> PqError {
    PqError::Startup {
        sqlstate: sqlstate::INVALID_PASSWORD,
        message: format!("password authentication failed for user \"{user}\""),
    }
}

fn violation(message: impl Into<String>) -> PqError {
    PqError::Startup {
        sqlstate: sqlstate::PROTOCOL_VIOLATION,
        message: message.into(),
    }
}

/// Run the SCRAM-SHA-256 exchange for `user` (the startup packet's). The
/// user's role once its proof is right, with AuthenticationSASLFinal
/// buffered (AuthenticationOk must follow). `None` when the client left
/// (libpq does so to ask for a password, then comes back). A wrong
/// password and an unknown user fail alike, 28P01, after the same
/// exchange.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
    auth: &PgAuth,
    user: &str,
    peer: SocketAddr,
) -> Result<Option<Role>, PqError> {
    conn.send(&BeMessage::AuthenticationSasl(&[scram::MECHANISM]))
        .await?;
    let Some(initial) = read_password_message(conn).await? else {
        tracing::debug!(%peer, "client left when asked for a password");
        return Ok(None);
    };
    let client_first = parse_initial_response(&initial)?;
    let known = auth.users.get(user);
    let salt = scram::mock_salt(&auth.mock_secret, user);
    let exchange = ServerFirst::start(
        client_first,
        known.map(|u| u.verifier.clone()),
        (&salt, MOCK_ITERATIONS),
    )
    .map_err(|e| scram_error(e, user))?;
    conn.send(&BeMessage::AuthenticationSaslContinue(
        exchange.message().as_bytes(),
    ))
    .await?;
    let Some(client_final) = read_password_message(conn).await? else {
        tracing::debug!(%peer, "client left during the SCRAM exchange");
        return Ok(None);
    };
    match exchange.finish(&client_final) {
        Ok(server_final) => {
            let role = known.map(|u| u.role).ok_or_else(|| failed(user))?;
            conn.write_message(&BeMessage::AuthenticationSaslFinal(server_final.as_bytes()))?;
            tracing::debug!(%peer, user = %clip(user, MAX_LOGGED_CLIENT_TEXT), %role, "authenticated");
            Ok(Some(role))
        }
        Err(e) => {
            // The reason goes to the log only, as in PostgreSQL.
            let why = match (&e, known) {
                (ScramError::Failed, None) => "no such user in --users-file",
                (ScramError::Failed, Some(_)) => "the password does not match",
                _ => "malformed exchange",
            };
            tracing::info!(%peer, user = %clip(user, MAX_LOGGED_CLIENT_TEXT), "password authentication failed: {why}");
            Err(scram_error(e, user))
        }
    }
}

fn scram_error(e: ScramError, user: &str) -> PqError {
    match e {
        ScramError::Failed => failed(user),
        ScramError::Malformed(m) => violation(format!("malformed SCRAM message: {m}")),
        ScramError::Random(m) => PqError::Startup {
            sqlstate: sqlstate::INTERNAL_ERROR,
            message: m,
        },
    }
}

/// The next message, which must be a PasswordMessage ('p'); `None` if
/// the client closed.
async fn read_password_message<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut PqConnection<S>,
) -> Result<Option<bytes::Bytes>, PqError> {
    match conn.read_message().await? {
        None | Some(FeMessage::Terminate) => Ok(None),
        Some(FeMessage::Password(body)) => Ok(Some(body)),
        Some(_) => Err(violation(
            "expected a SASL response message during authentication",
        )),
    }
}

/// SASLInitialResponse: mechanism name, then the length-prefixed data.
fn parse_initial_response(body: &[u8]) -> Result<&[u8], PqError> {
    let nul = body
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| violation("malformed SASLInitialResponse: no mechanism name"))?;
    if &body[..nul] != scram::MECHANISM.as_bytes() {
        return Err(violation(
            "client selected an invalid SASL authentication mechanism",
        ));
    }
    let rest = &body[nul + 1..];
    let len = rest
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| violation("malformed SASLInitialResponse: no data length"))?;
    let data = &rest[4..];
    if usize::try_from(len).ok() != Some(data.len()) {
        return Err(violation(
            "malformed SASLInitialResponse: the data length does not match",
        ));
    }
    Ok(data)
}

/// What `command` needs of the connection's role.
pub fn privilege(command: &ReplicationCommand) -> Privilege {
    match command {
        ReplicationCommand::StartWalPush { .. }
        | ReplicationCommand::PutTimelineHistory { .. }
        | ReplicationCommand::TimelineSettled { .. } => Privilege::Propose,
        // A recovery read serves WAL not yet committed, for a proposer in
        // its term.
        ReplicationCommand::StartReplication { options, .. }
            if find_option(options, "term").is_some() =>
        {
            Privilege::Propose
        }
        ReplicationCommand::Empty
        | ReplicationCommand::IdentifySystem
        | ReplicationCommand::Show { .. }
        | ReplicationCommand::TimelineHistory { .. }
        | ReplicationCommand::ReadReplicationSlot { .. }
        | ReplicationCommand::CreateReplicationSlot { .. }
        | ReplicationCommand::DropReplicationSlot { .. }
        | ReplicationCommand::StartReplication { .. }
        | ReplicationCommand::Unsupported(_) => Privilege::Consume,
    }
}

/// Why `role` may not run `command`, if it may not (42501). `None` role:
/// no `--users-file`, everyone is trusted.
pub fn refusal(role: Option<Role>, user: &str, command: &ReplicationCommand) -> Option<String> {
    let role = role?;
    let needed = privilege(command);
    (!role.allows(needed)).then(|| {
        format!(
            "permission denied: user \"{user}\" has the {role} role; this command needs the proposer role"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::line;
    use crate::auth::Verifier;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
    use postgres_protocol::message::frontend;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn auth() -> PgAuth {
        let v = Verifier::from_password("pw");
        PgAuth::new(Users::parse(&line("standby", Role::Consumer, &v)).unwrap())
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    /// Drive the client side of the exchange by hand, over a pipe.
    async fn run(
        user: &str,
        password: &str,
    ) -> (Result<Option<Role>, PqError>, Vec<(u8, Vec<u8>)>) {
        let (server_end, mut client) = duplex(1 << 16);
        let user_owned = user.to_string();
        let server = tokio::spawn(async move {
            let mut conn = PqConnection::new(server_end);
            let a = auth();
            let r = authenticate(&mut conn, &a, &user_owned, peer()).await;
            let _ = conn.flush().await;
            r
        });
        let mut got = Vec::new();
        let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        loop {
            let mut head = [0u8; 5];
            if client.read_exact(&mut head).await.is_err() {
                break;
            }
            let len = i32::from_be_bytes(head[1..].try_into().unwrap()) as usize;
            let mut body = vec![0u8; len - 4];
            client.read_exact(&mut body).await.unwrap();
            got.push((head[0], body.clone()));
            if head[0] != b'R' {
                break;
            }
            let mut out = bytes::BytesMut::new();
            match i32::from_be_bytes(body[..4].try_into().unwrap()) {
                10 => frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out)
                    .unwrap(),
                11 => {
                    scram.update(&body[4..]).unwrap();
                    frontend::sasl_response(scram.message(), &mut out).unwrap();
                }
                12 => {
                    scram.finish(&body[4..]).unwrap();
                    break;
                }
                c => panic!("unexpected authentication request {c}"),
            }
            client.write_all(&out).await.unwrap();
        }
        drop(client);
        (server.await.unwrap(), got)
    }

    #[tokio::test]
    async fn a_known_user_with_its_password_gets_its_role() {
        let (r, got) = run("standby", "pw").await;
        assert_eq!(r.unwrap(), Some(Role::Consumer));
        // SASL, SASLContinue, SASLFinal (the client checked its signature).
        let codes: Vec<i32> = got
            .iter()
            .map(|(_, b)| i32::from_be_bytes(b[..4].try_into().unwrap()))
            .collect();
        assert_eq!(codes, [10, 11, 12]);
    }

    #[tokio::test]
    async fn a_wrong_password_and_an_unknown_user_fail_alike() {
        for (user, pw) in [("standby", "nope"), ("ghost", "pw")] {
            let (r, got) = run(user, pw).await;
            let e = r.unwrap_err();
            assert_eq!(e.sqlstate(), "28P01");
            assert_eq!(
                e.to_string(),
                format!("password authentication failed for user \"{user}\"")
            );
            assert_eq!(got.len(), 2, "SASL and SASLContinue, as for a real user");
        }
    }

    #[test]
    fn initial_response_framing() {
        let mut ok = b"SCRAM-SHA-256\0".to_vec();
        ok.extend_from_slice(&3i32.to_be_bytes());
        ok.extend_from_slice(b"abc");
        assert_eq!(parse_initial_response(&ok).unwrap(), b"abc");
        let mut short = b"SCRAM-SHA-256\0".to_vec();
        short.extend_from_slice(&9i32.to_be_bytes());
        assert!(parse_initial_response(&short).is_err());
        assert!(parse_initial_response(b"PLAIN\0\0\0\0\0").is_err());
        assert!(parse_initial_response(b"SCRAM-SHA-256").is_err());
    }

    #[test]
    fn commands_need_their_privilege() {
        let push = ReplicationCommand::parse("START_WAL_PUSH").unwrap();
        let read = ReplicationCommand::parse("START_REPLICATION PHYSICAL 0/0").unwrap();
        let recovery =
            ReplicationCommand::parse("START_REPLICATION PHYSICAL 0/0 (term '5')").unwrap();
        assert_eq!(privilege(&push), Privilege::Propose);
        assert_eq!(privilege(&recovery), Privilege::Propose);
        assert_eq!(privilege(&read), Privilege::Consume);
        assert!(refusal(Some(Role::Consumer), "s", &push).is_some());
        assert!(refusal(Some(Role::Consumer), "s", &read).is_none());
        assert!(refusal(Some(Role::Proposer), "p", &push).is_none());
        assert!(refusal(None, "anyone", &push).is_none());
    }
}
