//! The daemon's errors as PostgreSQL clients are told them: `From` the
//! consensus core's refusals, the store's errors and the handler's into
//! [`PgError`]. Decided on error kinds, never on error text; the core and
//! the store know nothing of SQLSTATEs.

use super::timelines::HandleError;
use crate::consensus::acceptor::Refusal;
use crate::pq::error::PgError;
use crate::pq::sqlstate::{self, SqlState};
use crate::store::{StoreError, StoreErrorKind};

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
        // The kind of the failure is the timeline's (`HandleError::Poisoned`).
        Refusal::StorageFailed { .. } => sqlstate::INTERNAL_ERROR,
        _ => sqlstate::PROTOCOL_VIOLATION,
    }
}

/// The SQLSTATE of a store failure: damage is "data corrupted", a full disk
/// 53100, anything else an internal error.
fn store_code(kind: StoreErrorKind) -> SqlState {
    match kind {
        StoreErrorKind::Corruption => sqlstate::DATA_CORRUPTED,
        StoreErrorKind::DiskFull => sqlstate::DISK_FULL,
        StoreErrorKind::Io => sqlstate::INTERNAL_ERROR,
    }
}

/// The SQLSTATE of a failed write or sync: a full disk is 53100, anything
/// else an internal error, never "data corrupted" (nothing damaged was
/// read).
pub fn write_failure_code(kind: StoreErrorKind) -> SqlState {
    match kind {
        StoreErrorKind::DiskFull => sqlstate::DISK_FULL,
        StoreErrorKind::Corruption | StoreErrorKind::Io => sqlstate::INTERNAL_ERROR,
    }
}

impl From<&Refusal> for PgError {
    fn from(r: &Refusal) -> PgError {
        PgError::new(refusal_code(r), r.to_string())
    }
}

impl From<&StoreError> for PgError {
    fn from(e: &StoreError) -> PgError {
        PgError::new(store_code(e.kind()), e.to_string())
    }
}

impl From<&HandleError> for PgError {
    fn from(e: &HandleError) -> PgError {
        let code = match e {
            HandleError::Refused(r) => refusal_code(r),
            HandleError::Store(e) => write_failure_code(e.kind()),
            HandleError::Poisoned { kind, .. } => write_failure_code(*kind),
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
    use crate::store::StorageFailure;

    #[test]
    fn errors_are_told_by_kind() {
        let unknown = Refusal::UnknownTimeline(Ttid::default());
        assert_eq!(PgError::from(&unknown).code, sqlstate::UNDEFINED_OBJECT);
        assert_eq!(PgError::from(&unknown).message, unknown.to_string());
        let damaged = StoreError::CorruptStore("bad key".into());
        assert_eq!(PgError::from(&damaged).code, sqlstate::DATA_CORRUPTED);
        let full = StoreError::Failed(StorageFailure::new(StoreErrorKind::DiskFull, "a write"));
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

    #[test]
    fn store_failures_are_told_by_their_kind_not_their_text() {
        use StoreErrorKind::*;
        // Words of a full disk in a failure of another kind decide nothing.
        let text = "No space left on device";
        for (kind, read, write) in [
            (DiskFull, sqlstate::DISK_FULL, sqlstate::DISK_FULL),
            (
                Corruption,
                sqlstate::DATA_CORRUPTED,
                sqlstate::INTERNAL_ERROR,
            ),
            (Io, sqlstate::INTERNAL_ERROR, sqlstate::INTERNAL_ERROR),
        ] {
            let io = StoreError::Io(StorageFailure::new(kind, text));
            assert_eq!(io.kind(), kind);
            assert_eq!(PgError::from(&io).code, read, "{kind:?}");
            let first = Arc::new(io).into_failure();
            assert_eq!(first.kind, kind, "the first failure keeps its kind");
            let failed = StoreError::Failed(first);
            assert_eq!(PgError::from(&failed).code, read, "{kind:?}");
            let write_failed = HandleError::Store(Arc::new(failed));
            assert_eq!(PgError::from(&write_failed).code, write, "{kind:?}");
            let poisoned = HandleError::Poisoned {
                ttid: Ttid::default(),
                kind,
                reason: text.into(),
            };
            assert_eq!(PgError::from(&poisoned).code, write, "{kind:?}");
        }
        // Damage read back is corruption whatever its words.
        let damaged = StoreError::CorruptState {
            ttid: Ttid::default(),
            detail: text.into(),
        };
        assert_eq!(damaged.kind(), Corruption);
        // An OS error's kind decides: ENOSPC and EDQUOT are a full disk.
        for (errno, kind) in [
            (libc::ENOSPC, DiskFull),
            (libc::EDQUOT, DiskFull),
            (libc::EIO, Io),
        ] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert_eq!(StorageFailure::io("a write", e).kind, kind, "errno {errno}");
        }
        // An acceptor that failed closed is an internal error, not 08P01.
        let refusal = Refusal::StorageFailed {
            ttid: Ttid::default(),
            reason: text.into(),
        };
        assert_eq!(PgError::from(&refusal).code, sqlstate::INTERNAL_ERROR);
    }
}
