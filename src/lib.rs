//! walkeeper: a quorum WAL safekeeper for PostgreSQL. See DESIGN.md (shared)
//! and `schema/` for the protocol and the on-disk layout.

pub mod codec;
pub mod consensus;
pub mod id;
pub mod lsn;
pub mod store;
