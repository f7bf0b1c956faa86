//! `--sync-only`'s count (ARCHITECTURE.md, "3.11 Settle"): which members
//! persisted the commit of term_start_lsn in the settling term, and when
//! that is enough, counted by the configuration in force (both sets while
//! joint; `membership::Configuration::is_quorum` over `quorum.rs`), never
//! by the list the operator gave. It settles every member it can reach,
//! not only a quorum: a member left out keeps an older commit and must not
//! look like it holds the cluster's (`consensus::serving`).

use std::collections::BTreeSet;

use super::membership::Configuration;
use super::messages::AppendResponse;
use super::term_history::Term;
use crate::id::NodeId;
use crate::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    pub term: Term,
    /// term_start_lsn: the end of the WAL the safekeepers hold.
    pub lsn: Lsn,
    /// Members whose AppendResponse in `term` showed `lsn` flushed and
    /// committed (replies are released only after the sync).
    pub settled: BTreeSet<NodeId>,
    reported: bool,
}

impl Settle {
    pub fn new(term: Term, lsn: Lsn) -> Settle {
        Settle {
            term,
            lsn,
            settled: BTreeSet::new(),
            reported: false,
        }
    }

    pub fn on_append(&mut self, node: NodeId, a: &AppendResponse) {
        if a.term == self.term && a.commit_lsn >= self.lsn && a.flush_lsn >= self.lsn {
            self.settled.insert(node);
        }
    }

    /// Done once a quorum of `conf` settled and no voter is left that may
    /// still be brought along (`reachable`, not settled), or once the time
    /// for those is up. With `minority` (a deliberate bug for the
    /// simulation) one settled member is enough, at once.
    pub fn done(
        &self,
        conf: &Configuration,
        reachable: &BTreeSet<NodeId>,
        others_due: bool,
        minority: bool,
    ) -> bool {
        if minority {
            return !self.settled.is_empty();
        }
        if !conf.is_quorum(&self.settled) {
            return false;
        }
        others_due
            || conf
                .voters()
                .keys()
                .all(|n| self.settled.contains(n) || !reachable.contains(n))
    }

    /// The result, once.
    pub fn report(&mut self) -> Option<(Term, Lsn, BTreeSet<NodeId>)> {
        if std::mem::replace(&mut self.reported, true) {
            return None;
        }
        Some((self.term, self.lsn, self.settled.clone()))
    }
}

/// Whether the members that recorded the settle (`TIMELINE_SETTLED`) are a
/// quorum of the configuration in force.
pub fn recorded(conf: &Configuration, nodes: &BTreeSet<NodeId>) -> bool {
    conf.is_quorum(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::membership::{Configuration, Generation};
    use crate::consensus::messages::Members;

    fn members(ids: &[u64]) -> Members {
        ids.iter()
            .map(|i| (NodeId(*i), format!("h{i}:1")))
            .collect()
    }

    fn ack(term: Term, flush: u64, commit: u64) -> AppendResponse {
        AppendResponse {
            term,
            flush_lsn: Lsn(flush),
            commit_lsn: Lsn(commit),
            slot_horizon_lsn: Lsn::INVALID,
            local_start_lsn: Lsn(0),
        }
    }

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().map(|i| NodeId(*i)).collect()
    }

    /// Each case: settled nodes, reachable nodes, time up → done.
    #[test]
    fn waits_for_reachable_members_after_the_quorum() {
        let conf = Configuration::initial(members(&[1, 2, 3]));
        let cases: &[(&[u64], &[u64], bool, bool)] = &[
            (&[1], &[1, 2, 3], false, false),
            (&[1, 2], &[1, 2, 3], false, false),
            (&[1, 2, 3], &[1, 2, 3], false, true),
            (&[1, 2], &[1, 2], false, true),
            (&[1, 2], &[1, 2, 3], true, true),
            (&[1], &[1], true, false),
        ];
        for &(settled, reachable, due, want) in cases {
            let mut s = Settle::new(4, Lsn(100));
            for n in settled {
                s.on_append(NodeId(*n), &ack(4, 100, 100));
            }
            assert_eq!(
                s.done(&conf, &ids(reachable), due, false),
                want,
                "settled {settled:?}, reachable {reachable:?}, due {due}"
            );
        }
    }

    #[test]
    fn only_this_terms_persisted_commit_of_the_lsn_settles() {
        let mut s = Settle::new(4, Lsn(100));
        s.on_append(NodeId(1), &ack(3, 100, 100));
        s.on_append(NodeId(2), &ack(4, 100, 99));
        s.on_append(NodeId(3), &ack(4, 99, 99));
        assert!(s.settled.is_empty());
        s.on_append(NodeId(3), &ack(4, 120, 100));
        assert_eq!(s.settled, ids(&[3]));
        assert_eq!(s.report(), Some((4, Lsn(100), ids(&[3]))));
        assert_eq!(s.report(), None, "reported once");
    }

    /// Counted by the configuration in force, not by a list: while joint,
    /// a majority of each set; a majority of the new set alone is not.
    #[test]
    fn a_joint_configuration_needs_a_majority_of_both_sets() {
        let conf = Configuration {
            generation: Generation { term: 3, step: 0 },
            members: members(&[1, 2, 3]),
            next: Some(members(&[4, 5, 6])),
        };
        let mut s = Settle::new(4, Lsn(100));
        for n in [4, 5, 6, 1] {
            s.on_append(NodeId(n), &ack(4, 100, 100));
        }
        assert!(!s.done(&conf, &ids(&[]), true, false));
        assert!(s.done(&conf, &ids(&[]), true, true), "the deliberate bug");
        s.on_append(NodeId(2), &ack(4, 100, 100));
        assert!(s.done(&conf, &ids(&[]), true, false));
        assert!(!recorded(&conf, &ids(&[4, 5, 6])));
        assert!(recorded(&conf, &ids(&[1, 2, 4, 5])));
    }
}
