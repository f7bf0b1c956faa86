//! Term history: which term wrote the WAL from which LSN on.
//!
//! Entry `(term, start_lsn)` says that WAL from `start_lsn` up to the next
//! entry's start was written by the proposer of `term`. Two logs with the same
//! entry up to an LSN hold the same bytes up to it (log matching), which is
//! what lets elections truncate precisely.

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

pub type Term = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermLsn {
    pub term: Term,
    pub lsn: Lsn,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermHistory(pub Vec<TermLsn>);

impl TermHistory {
    pub fn empty() -> Self {
        TermHistory(Vec::new())
    }

    pub fn entries(&self) -> &[TermLsn] {
        &self.0
    }

    pub fn last(&self) -> Option<TermLsn> {
        self.0.last().copied()
    }

    /// The history as it applies to WAL ending at `flush_lsn`: entries that
    /// start beyond it describe WAL this node does not hold and say nothing.
    pub fn up_to(&self, flush_lsn: Lsn) -> TermHistory {
        TermHistory(
            self.0
                .iter()
                .copied()
                .take_while(|e| e.lsn <= flush_lsn)
                .collect(),
        )
    }

    /// Term of the last entry starting at or below `flush_lsn` (0 when none).
    pub fn last_log_term(&self, flush_lsn: Lsn) -> Term {
        self.up_to(flush_lsn).last().map_or(0, |e| e.term)
    }

    /// Terms strictly increase and start LSNs never decrease.
    pub fn is_well_formed(&self) -> bool {
        self.0
            .windows(2)
            .all(|w| w[0].term < w[1].term && w[0].lsn <= w[1].lsn)
    }

    /// The highest LSN up to which a node with history `self` (holding WAL up
    /// to `flush_lsn`) agrees with a proposer's history `proposer`, i.e. where
    /// the node's log must be truncated before it follows the proposer.
    /// `None` when they share no term at all.
    pub fn highest_common_point(&self, flush_lsn: Lsn, proposer: &TermHistory) -> Option<Lsn> {
        let mine = self.up_to(flush_lsn);
        let mut last_common = None;
        for (i, (a, b)) in mine.0.iter().zip(proposer.0.iter()).enumerate() {
            if a.term != b.term || a.lsn != b.lsn {
                break;
            }
            last_common = Some(i);
        }
        let i = last_common?;
        // The common term ends where the next entry starts; at the end of a
        // history it runs to the node's flush (or, for the proposer, on for
        // ever since it keeps writing).
        let my_end = mine.0.get(i + 1).map_or(flush_lsn, |e| e.lsn);
        let proposer_end = proposer.0.get(i + 1).map_or(Lsn::MAX, |e| e.lsn);
        Some(my_end.min(proposer_end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(Term, u64)]) -> TermHistory {
        TermHistory(
            entries
                .iter()
                .map(|&(term, lsn)| TermLsn {
                    term,
                    lsn: Lsn(lsn),
                })
                .collect(),
        )
    }

    #[test]
    fn up_to_and_last_log_term_ignore_wal_not_held() {
        let th = h(&[(1, 100), (3, 200), (5, 300)]);
        assert_eq!(th.up_to(Lsn(250)), h(&[(1, 100), (3, 200)]));
        assert_eq!(th.last_log_term(Lsn(250)), 3);
        assert_eq!(th.last_log_term(Lsn(300)), 5);
        assert_eq!(th.last_log_term(Lsn(50)), 0);
    }

    #[test]
    fn common_point_is_min_of_ends_of_last_common_term() {
        let prop = h(&[(1, 100), (4, 400)]);
        // node wrote term 1 up to 500, then term 2 from 500: common up to 400.
        let node = h(&[(1, 100), (2, 500)]);
        assert_eq!(node.highest_common_point(Lsn(600), &prop), Some(Lsn(400)));
        // node holds term 1 up to 300 only: common up to 300.
        assert_eq!(
            h(&[(1, 100)]).highest_common_point(Lsn(300), &prop),
            Some(Lsn(300))
        );
        // same last term: common up to node's flush.
        assert_eq!(prop.highest_common_point(Lsn(450), &prop), Some(Lsn(450)));
        // no common term.
        assert_eq!(h(&[(2, 100)]).highest_common_point(Lsn(300), &prop), None);
        // entries beyond the node's flush are ignored.
        assert_eq!(
            h(&[(1, 100), (2, 500)]).highest_common_point(Lsn(450), &prop),
            Some(Lsn(400))
        );
    }

    #[test]
    fn well_formed() {
        assert!(h(&[(1, 100), (2, 100), (5, 300)]).is_well_formed());
        assert!(!h(&[(2, 100), (2, 200)]).is_well_formed());
        assert!(!h(&[(1, 300), (2, 200)]).is_well_formed());
        assert_eq!(h(&[(1, 1)]).up_to(Lsn(0)), TermHistory::empty());
    }
}
