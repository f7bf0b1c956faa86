//! May a safekeeper serve consumers up to its `commit_lsn`? (ARCHITECTURE.md,
//! "3.9 The serving rule"; issue 26.) A node answers for the cluster's commit only
//! while it is known to hold it:
//!
//! - it follows a live proposer and has learnt its current term's commit
//!   (`commit_lsn` at or beyond the start of its last term-history entry,
//!   which is that term's), and is not behind what that proposer told it; or
//! - the last `--sync-only` settled it in its current term (no vote since)
//!   and it holds that settle's LSN.
//!
//! Anything else — a term that moved (a vote, or Elected without the
//! commit), a lost proposer, a node the last settle left out, a node a
//! membership change removed (its timeline is marked left: it hears from no
//! proposer any more, so what it holds falls behind) — is refused,
//! so consumers go to another node. The daemon answers such a consumer
//! 57P03 before authentication and ends a stream that is open on the node.

use std::fmt;

use super::acceptor::TimelineState;
use super::membership::Generation;
use super::term_history::Term;
use crate::lsn::Lsn;

/// The startup option of a push connection in which a proposer promises a
/// message at least every that many milliseconds; with it, silence means
/// the proposer is gone (the daemon's `failover::PROPOSER_SILENCE`).
pub const HEARTBEAT_OPTION: &str = "walkeeper.heartbeat_ms";

/// What the node knows of its proposer right now (the daemon keeps it in
/// memory; nothing of it is durable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Contact {
    /// A proposer's push stream is open and has not gone silent.
    pub live: bool,
    /// The highest commit LSN a proposer told this node along with WAL.
    pub told_commit: Lsn,
    /// This node's flush LSN right after the last proposer message.
    pub flush: Lsn,
}

/// Why a node must not serve consumers now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServing {
    /// A membership change removed this node (ARCHITECTURE.md 3.13).
    Left { generation: Generation },
    /// A proposer told a commit beyond the WAL this node holds.
    Behind { flush: Lsn, told_commit: Lsn },
    /// The term moved (a vote, or Elected) and this node has not learnt
    /// that term's commit.
    TermCommitUnknown {
        term: Term,
        /// Start of the node's last term-history entry (INVALID: none in
        /// its current term).
        term_start: Lsn,
        commit: Lsn,
    },
    /// No live proposer, and the last `--sync-only` did not settle this
    /// node in its current term.
    NoProposer { term: Term, settled_term: Term },
}

impl fmt::Display for NotServing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotServing::Left { generation } => write!(
                f,
                "this safekeeper was removed from the timeline's members (configuration {generation}); the other safekeepers serve it"
            ),
            NotServing::Behind { flush, told_commit } => write!(
                f,
                "this safekeeper is behind (flush {flush} < commit {told_commit})"
            ),
            NotServing::TermCommitUnknown {
                term,
                term_start,
                commit,
            } => write!(
                f,
                "this safekeeper is in term {term} and has not learnt its commit (commit_lsn {commit}, term start {term_start})"
            ),
            NotServing::NoProposer { term, settled_term } => write!(
                f,
                "this safekeeper follows no live proposer in term {term} and the last --sync-only did not settle it (settled term {settled_term}); it may be missing committed WAL"
            ),
        }
    }
}

/// Whether consumers may be served up to `state.commit_lsn` (the durable
/// state), given what the node knows of its proposer.
pub fn may_serve(state: &TimelineState, contact: &Contact) -> Result<(), NotServing> {
    if state.membership.left {
        return Err(NotServing::Left {
            generation: state.membership.generation,
        });
    }
    if contact.flush < contact.told_commit {
        return Err(NotServing::Behind {
            flush: contact.flush,
            told_commit: contact.told_commit,
        });
    }
    if settled(state) {
        return Ok(());
    }
    if !knows_term_commit(state) {
        let term_start = match state.term_history.last() {
            Some(e) if e.term == state.term => e.lsn,
            _ => Lsn::INVALID,
        };
        return Err(NotServing::TermCommitUnknown {
            term: state.term,
            term_start,
            commit: state.commit_lsn,
        });
    }
    if !contact.live {
        return Err(NotServing::NoProposer {
            term: state.term,
            settled_term: state.settled_term,
        });
    }
    Ok(())
}

/// The last proposer this node followed was a `--sync-only` that settled
/// it (no vote since), and it holds and has committed that settle's LSN.
pub fn settled(s: &TimelineState) -> bool {
    s.settled_lsn.is_valid()
        && s.settled_term == s.term
        && s.flush_lsn >= s.settled_lsn
        && s.commit_lsn >= s.settled_lsn
}

/// The node processed Elected for its current term and has been told a
/// commit at or beyond that term's start: it holds every commit made before
/// this term. A node that never joined a term (term 0) has nothing to miss.
pub fn knows_term_commit(s: &TimelineState) -> bool {
    match s.term_history.last() {
        None => s.term == 0,
        Some(e) => e.term == s.term && s.commit_lsn >= e.lsn,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::consensus::acceptor::term_lsn;
    use crate::consensus::messages::ServerInfo;
    use crate::consensus::term_history::TermHistory;
    use crate::id::Ttid;

    /// A node that followed term 3 from LSN 1000 and holds WAL to 5000,
    /// committed to 4000.
    pub(crate) fn state() -> TimelineState {
        TimelineState {
            ttid: Ttid::default(),
            server: ServerInfo {
                system_id: 1,
                pg_version: 150000,
                wal_seg_size: 16 << 20,
                tli: 1,
            },
            members: Default::default(),
            timeline_start_lsn: Lsn(0),
            local_start_lsn: Lsn(0),
            term: 3,
            term_history: TermHistory(vec![term_lsn(1, 0), term_lsn(3, 1000)]),
            flush_lsn: Lsn(5000),
            commit_lsn: Lsn(4000),
            peer_horizon_lsn: Lsn::INVALID,
            slot_horizon_lsn: Lsn::INVALID,
            settled_term: 0,
            settled_lsn: Lsn::INVALID,
            pg_ancestors: Vec::new(),
            membership: Default::default(),
        }
    }

    pub(crate) fn live() -> Contact {
        Contact {
            live: true,
            told_commit: Lsn(4000),
            flush: Lsn(5000),
        }
    }

    #[test]
    fn a_node_following_a_live_proposer_with_its_terms_commit_serves() {
        assert_eq!(may_serve(&state(), &live()), Ok(()));
    }

    #[test]
    fn a_node_told_a_commit_beyond_its_wal_is_behind() {
        let c = Contact {
            told_commit: Lsn(6000),
            ..live()
        };
        assert!(matches!(
            may_serve(&state(), &c),
            Err(NotServing::Behind { .. })
        ));
    }

    #[test]
    fn a_vote_without_the_new_terms_commit_stops_serving() {
        // Voted in term 4: no Elected for it yet.
        let mut s = state();
        s.term = 4;
        assert!(matches!(
            may_serve(&s, &live()),
            Err(NotServing::TermCommitUnknown { term: 4, .. })
        ));
        // Elected for term 4 at 5000, commit still below it.
        s.term_history.0.push(term_lsn(4, 5000));
        assert!(matches!(
            may_serve(&s, &live()),
            Err(NotServing::TermCommitUnknown {
                term_start: Lsn(5000),
                ..
            })
        ));
        // Told the commit of term 4's start.
        s.commit_lsn = Lsn(5000);
        assert_eq!(may_serve(&s, &live()), Ok(()));
    }

    #[test]
    fn without_a_live_proposer_only_a_settled_node_serves() {
        let gone = Contact {
            live: false,
            ..live()
        };
        let mut s = state();
        assert!(matches!(
            may_serve(&s, &gone),
            Err(NotServing::NoProposer { .. })
        ));
        // A daemon that just started knows nothing of a proposer.
        assert!(may_serve(&s, &Contact::default()).is_err());
        s.settled_term = 3;
        s.settled_lsn = Lsn(4000);
        assert_eq!(may_serve(&s, &gone), Ok(()));
        assert_eq!(may_serve(&s, &Contact::default()), Ok(()));
    }

    #[test]
    fn a_settle_of_an_earlier_term_or_beyond_the_commit_does_not_count() {
        let mut s = state();
        s.settled_term = 2;
        s.settled_lsn = Lsn(1000);
        assert!(!settled(&s));
        s.settled_term = 3;
        s.settled_lsn = Lsn(4500);
        assert!(!settled(&s), "commit 4000 is below the settled 4500");
        // The node outside the settled majority: its term was raised by the
        // settle (a vote) but it never learnt the commit.
        let mut left_out = state();
        left_out.term = 5;
        assert!(may_serve(&left_out, &Contact::default()).is_err());
    }

    /// A removed node serves no consumer, settled or not, whatever its
    /// proposer contact: it hears from no proposer any more.
    #[test]
    fn a_node_removed_from_the_members_does_not_serve() {
        let mut s = state();
        s.settled_term = 3;
        s.settled_lsn = Lsn(4000);
        s.membership.left = true;
        s.membership.generation = Generation { term: 3, step: 1 };
        let why = may_serve(&s, &live()).unwrap_err();
        assert_eq!(
            why,
            NotServing::Left {
                generation: Generation { term: 3, step: 1 }
            }
        );
        assert!(why.to_string().contains("removed"), "{why}");
        assert!(may_serve(&s, &Contact::default()).is_err());
    }

    #[test]
    fn a_timeline_never_elected_serves_only_with_a_live_proposer() {
        let mut s = state();
        s.term = 0;
        s.term_history = TermHistory::empty();
        s.commit_lsn = Lsn(0);
        s.flush_lsn = Lsn(0);
        let c = Contact {
            live: true,
            told_commit: Lsn::INVALID,
            flush: Lsn::INVALID,
        };
        assert_eq!(may_serve(&s, &c), Ok(()));
        assert!(may_serve(&s, &Contact::default()).is_err());
    }
}
