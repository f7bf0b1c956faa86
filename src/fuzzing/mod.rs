//! Entry points that fuzz every decoder of outside input (issue 24). Each
//! takes arbitrary bytes and panics on a finding: a panic in a decoder or a
//! state machine, or a value that decodes but does not survive re-encoding
//! (or cannot be stored). The libFuzzer targets in `fuzz/` and the property
//! test `tests/fuzz_entry_points.rs` call these same functions; see
//! tools/FUZZING.md.

mod auth;
mod gen;
pub mod sessions;
pub mod values;
pub mod wire;

pub use auth::auth;
pub use sessions::{acceptor_session, proposer_session};
pub use values::{conninfo, stored_values, text_values};
pub use wire::{backend, frontend, proposer_codec, replication_command, startup};

/// Structure-aware proposer messages (sizes at and past every limit): a
/// message must survive the codec unless it is too large for it, and what
/// an acceptor makes of it must be storable.
pub fn proposer_message(data: &[u8]) {
    sessions::proposer_message(data);
}

/// An entry point: arbitrary bytes in, a panic on a finding.
pub type EntryPoint = fn(&[u8]);

/// Every entry point by the name of its fuzz target.
pub const TARGETS: &[(&str, EntryPoint)] = &[
    ("startup", startup),
    ("frontend", frontend),
    ("backend", backend),
    ("replication_command", replication_command),
    ("proposer_codec", proposer_codec),
    ("proposer_message", proposer_message),
    ("stored_values", stored_values),
    ("text_values", text_values),
    ("conninfo", conninfo),
    ("auth", auth),
    ("acceptor_session", acceptor_session),
    ("proposer_session", proposer_session),
];
