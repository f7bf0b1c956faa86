//! Who is on the other end of a connection, and the timeline it means: what
//! the commands ([`super::cmd`]), the WAL sender and the slot registry need
//! to know about a client, apart from the connection that serves it.

use std::net::SocketAddr;
use std::sync::Arc;

use super::timelines::Timeline;
use super::Shared;
use crate::id::Ttid;
use crate::pq::connection::StartupParams;
use crate::pq::{sqlstate, PgError};

/// Who is on the other end, from the startup packet.
#[derive(Debug)]
pub struct Client {
    pub peer: SocketAddr,
    pub params: StartupParams,
    pub is_proposer: bool,
    /// The role it authenticated with; `None` without `--users-file`
    /// (everyone trusted, as before authentication existed).
    pub role: Option<crate::auth::Role>,
    /// This connection's id for slot ownership ([`super::slots::Session`]).
    pub session: u64,
    /// Its cancel key, and a cancel request for it.
    pub cancel: super::cancel::Registration,
    /// A history file put before the greeting of a timeline that does not
    /// exist yet ([`super::history`]).
    pub pending_history: std::sync::Mutex<super::history::Pending>,
}

impl Client {
    /// The timeline named by `-c tenant_id=… -c timeline_id=…`, if any.
    pub fn named_timeline(&self) -> Result<Option<Ttid>, String> {
        let tenant = self.params.option("tenant_id");
        let timeline = self.params.option("timeline_id");
        match (tenant, timeline) {
            (None, None) => Ok(None),
            (Some(t), Some(l)) => {
                let tenant_id = t.parse().map_err(|e| format!("{e}"))?;
                let timeline_id = l.parse().map_err(|e| format!("{e}"))?;
                Ok(Some(Ttid::new(tenant_id, timeline_id)))
            }
            _ => Err("name both tenant_id and timeline_id (options='-c tenant_id=… -c timeline_id=…'), or neither when the safekeeper holds one timeline".into()),
        }
    }

    /// Refused (42501) unless a proposer connected: `command` is for
    /// proposers only.
    pub fn require_proposer(&self, command: &str) -> Result<(), PgError> {
        if self.is_proposer {
            return Ok(());
        }
        Err(PgError::new(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "{command} is for proposers: connect with options='-c walkeeper.role=proposer'"
            ),
        ))
    }

    /// The history file put on this connection before its greeting, taken.
    pub fn take_pending_history(&self) -> super::history::Pending {
        self.pending_history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

/// The timeline a consumer means: the one its startup options name, or the
/// only one this safekeeper holds.
pub fn choose_timeline(shared: &Shared, client: &Client) -> Result<Arc<Timeline>, PgError> {
    match client.named_timeline() {
        Err(e) => Err(PgError::new(sqlstate::INVALID_PARAMETER_VALUE, e)),
        Ok(Some(ttid)) => shared.timelines.get(ttid).ok_or_else(|| {
            PgError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!("timeline {ttid} does not exist on this safekeeper"),
            )
        }),
        Ok(None) => {
            let all = shared.timelines.all();
            match all.len() {
                1 => Ok(all[0].clone()),
                0 => Err(PgError::new(sqlstate::UNDEFINED_OBJECT, "this safekeeper holds no timeline yet")),
                n => Err(PgError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("this safekeeper holds {n} timelines: name one with options='-c tenant_id=… -c timeline_id=…'"),
                )),
            }
        }
    }
}
