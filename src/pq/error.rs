//! [`PgError`]: one error as a PostgreSQL client is told it, the typed edge
//! between the daemon's own errors (a refusal of the consensus core, a
//! store, slot or handler failure: `From` impls in
//! `crate::safekeeper::pg_errors`) and the ErrorResponse on the wire.

use super::frame::{ErrorNotice, Severity};
use super::sqlstate::SqlState;

/// What a client is told: an SQLSTATE, PostgreSQL-style wording, and
/// optionally a detail and a hint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PgError {
    pub code: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn new(code: SqlState, message: impl Into<String>) -> PgError {
        PgError {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> PgError {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> PgError {
        self.hint = Some(hint.into());
        self
    }

    /// The ErrorResponse (or NoticeResponse) fields at `severity`.
    pub fn notice(&self, severity: Severity) -> ErrorNotice {
        ErrorNotice {
            severity,
            code: self.code.code().to_owned(),
            message: self.message.clone(),
            detail: self.detail.clone(),
            hint: self.hint.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pq::sqlstate;

    #[test]
    fn detail_and_hint_reach_the_notice() {
        let e = PgError::new(sqlstate::DISK_FULL, "could not write")
            .with_detail("No space left on device")
            .with_hint("free space");
        let n = e.notice(Severity::Error);
        assert_eq!(n.code, "53100");
        assert_eq!(n.message, "could not write");
        assert_eq!(n.detail.as_deref(), Some("No space left on device"));
        assert_eq!(n.hint.as_deref(), Some("free space"));
        assert_eq!(e.to_string(), "could not write");
    }
}
