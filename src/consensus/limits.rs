//! Bounds on what a proposer message may make an acceptor store or do,
//! checked where a value enters (the acceptor, and the proxy's own
//! configuration) so that every state the acceptor builds can be encoded
//! within the store's limit (`codec::MAX_STRUCT_SIZE`), and no term from the
//! network can exhaust the term space.

use super::messages::Members;
use super::term_history::{Term, TermHistory};
use crate::codec::MAX_STRUCT_SIZE;

/// Members of one timeline. Real clusters have 3 or 5; a majority of 32
/// already means 17 fsyncs per commit.
pub const MAX_MEMBERS: usize = 32;

/// Bytes of one member address (`HOST:PORT`): a DNS name has at most 253,
/// an IPv6 literal with brackets and port about 50.
pub const MAX_MEMBER_ADDRESS_LEN: usize = 512;

/// Entries of a term history: one per term that was elected, so this many
/// elections over a timeline's life (about 1.6 years at one election per
/// 15 minutes). With the members at their limit a timeline state of this
/// many entries still encodes within the store's limit (checked below).
pub const MAX_TERM_HISTORY: usize = 60_000;

/// Ancestors of a PostgreSQL timeline (promotions over a timeline's life).
pub const MAX_PG_HISTORY: usize = 1000;

/// How far one VoteRequest may move an acceptor's term. An honest proposer
/// asks for one above the highest term a majority reported, so the jump an
/// acceptor sees is the number of elections it missed: 2^32 of them is
/// decades of elections every second, while a hostile proposer needs 2^32
/// synced votes to exhaust the term space instead of one message.
pub const MAX_TERM_JUMP: Term = 1 << 32;

/// Encoded size of a timeline state at every limit: fixed fields (ids,
/// server info, LSNs, terms and length prefixes) stay under 256 bytes.
const MAX_STATE_SIZE: usize = 256
    + MAX_MEMBERS * (8 + 8 + MAX_MEMBER_ADDRESS_LEN)
    + MAX_TERM_HISTORY * 16
    + MAX_PG_HISTORY * 12;
const _: () = assert!(MAX_STATE_SIZE as u64 <= MAX_STRUCT_SIZE);

/// A value beyond one of these limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is {size}, above the limit of {limit}")]
pub struct LimitExceeded {
    pub what: &'static str,
    pub size: u64,
    pub limit: u64,
}

fn at_most(what: &'static str, size: usize, limit: usize) -> Result<(), LimitExceeded> {
    if size > limit {
        return Err(LimitExceeded {
            what,
            size: size as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// The number of PostgreSQL timeline ancestors.
pub fn check_pg_history(ancestors: &[(u32, crate::lsn::Lsn)]) -> Result<(), LimitExceeded> {
    at_most(
        "the number of PostgreSQL timeline ancestors",
        ancestors.len(),
        MAX_PG_HISTORY,
    )
}

/// The member count and every address length.
pub fn check_members(members: &Members) -> Result<(), LimitExceeded> {
    at_most("the number of members", members.len(), MAX_MEMBERS)?;
    let longest = members.values().map(String::len).max().unwrap_or(0);
    at_most(
        "the longest member address (bytes)",
        longest,
        MAX_MEMBER_ADDRESS_LEN,
    )
}

pub fn check_history(history: &TermHistory) -> Result<(), LimitExceeded> {
    at_most(
        "the number of term history entries",
        history.entries().len(),
        MAX_TERM_HISTORY,
    )
}

/// Whether a vote for `proposed` may move a node in term `own`: by at most
/// [`MAX_TERM_JUMP`]. A lower term is no jump (its vote is denied).
pub fn is_term_jump_allowed(own: Term, proposed: Term) -> bool {
    proposed.saturating_sub(own) <= MAX_TERM_JUMP
}
