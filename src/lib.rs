//! walkeeper: a quorum WAL safekeeper for PostgreSQL. See ARCHITECTURE.md
//! and `schema/` for the protocol and the on-disk layout.

pub mod auth;
pub mod codec;
pub mod consensus;
pub mod fuzzing;
pub mod id;
#[cfg(feature = "rocksdb")]
pub mod inspect;
pub mod logging;
pub mod lsn;
pub mod pq;
pub mod proxy;
#[cfg(feature = "rocksdb")]
pub mod safekeeper;
pub mod shutdown;
pub mod sim;
pub mod store;
pub mod tls;
