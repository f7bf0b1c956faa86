//! The consensus core: messages, term history, acceptor and proposer. No I/O
//! here: these are state machines that take a message and return what to
//! persist and what to send.

pub mod acceptor;
#[cfg(test)]
mod acceptor_cases;
pub mod claims;
pub mod limits;
pub mod membership;
pub mod messages;
pub mod pg_timeline;
pub mod primary_check;
pub mod proposer;
pub mod quorum;
#[cfg(test)]
mod quorum_cases;
#[cfg(test)]
mod script;
pub mod serving;
pub mod settle;
pub mod term_history;
