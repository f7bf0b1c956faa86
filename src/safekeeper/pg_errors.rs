//! The daemon's errors as PostgreSQL clients are told them: `From` the
//! consensus core's refusals, the store's errors and the handler's into
//! [`PgError`]. Decided on error kinds, never on error text; the core and
//! the store know nothing of SQLSTATEs.

use super::timelines::HandleError;
use crate::consensus::acceptor::Refusal;
use crate::pq::error::PgError;
use crate::pq::sqlstate::{self, SqlState};
use crate::store::StoreError;

/// The SQLSTATE of a refusal of the consensus core.
fn refusal_code(r: &Refusal) -> SqlState {
    match r {
        Refusal::UnknownTimeline(_) => sqlstate::UNDEFINED_OBJECT,
        Refusal::Mismatch { .. }
        | Refusal::NotAMember { .. }
        | Refusal::StartNotSegmentAligned { .. }
        | Refusal::ProtocolVersion { .. }
        | Refusal::PgTimeline { .. }
        | Refusal::SwitchBelowCommit { .. } => sqlstate::INVALID_PARAMETER_VALUE,
        Refusal::TooLarge { .. } => sqlstate::PROGRAM_LIMIT_EXCEEDED,
        _ => sqlstate::PROTOCOL_VIOLATION,
    }
}

/// The SQLSTATE of a store failure: damage is "data corrupted", a full disk
/// 53100, anything else an internal error.
fn store_code(e: &StoreError) -> SqlState {
    match e {
        StoreError::CorruptWal { .. }
        | StoreError::CorruptState { .. }
        | StoreError::CorruptStore(_) => sqlstate::DATA_CORRUPTED,
        e if e.is_disk_full() => sqlstate::DISK_FULL,
        _ => sqlstate::INTERNAL_ERROR,
    }
}

impl From<&Refusal> for PgError {
    fn from(r: &Refusal) -> PgError {
        PgError::new(refusal_code(r), r.to_string())
    }
}

impl From<&StoreError> for PgError {
    fn from(e: &StoreError) -> PgError {
        PgError::new(store_code(e), e.to_string())
    }
}

impl From<&HandleError> for PgError {
    fn from(e: &HandleError) -> PgError {
        let code = match e {
            HandleError::Refused(r) => refusal_code(r),
            // A failed write, not damage read back: never XX001.
            HandleError::Store(e) if e.is_disk_full() => sqlstate::DISK_FULL,
            HandleError::Store(_) => sqlstate::INTERNAL_ERROR,
            HandleError::Poisoned { reason, .. } if crate::store::is_disk_full(reason) => {
                sqlstate::DISK_FULL
            }
            HandleError::Poisoned { .. } => sqlstate::INTERNAL_ERROR,
            HandleError::Limited { code, .. } => *code,
            // Not 22023 (the proxy takes it as a refusal of the whole
            // timeline and stops) nor 42704 (a member without the
            // timeline): the rest of the cluster can go on, and this node
            // is counted again later.
            HandleError::Restored(_) | HandleError::NotSettled(_) | HandleError::Superseded(_) => {
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
            }
        };
        PgError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::id::Ttid;

    #[test]
    fn errors_are_told_by_kind() {
        let unknown = Refusal::UnknownTimeline(Ttid::default());
        assert_eq!(PgError::from(&unknown).code, sqlstate::UNDEFINED_OBJECT);
        assert_eq!(PgError::from(&unknown).message, unknown.to_string());
        let damaged = StoreError::CorruptStore("bad key".into());
        assert_eq!(PgError::from(&damaged).code, sqlstate::DATA_CORRUPTED);
        let full = StoreError::Failed("No space left on device".into());
        assert_eq!(PgError::from(&full).code, sqlstate::DISK_FULL);
        // A handler's store failure is a failed write, never damage read.
        let write = HandleError::Store(Arc::new(damaged));
        assert_eq!(PgError::from(&write).code, sqlstate::INTERNAL_ERROR);
        let restored = HandleError::Restored("a checkpoint".into());
        assert_eq!(
            PgError::from(&restored).code,
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
        );
        let refused = HandleError::Refused(unknown);
        assert_eq!(PgError::from(&refused).code, sqlstate::UNDEFINED_OBJECT);
    }
}
