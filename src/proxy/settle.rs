//! `--sync-only`'s bookkeeping: which members it settled, when it is done,
//! and what it reports. It settles every member it can reach, not only a
//! majority: a member left out keeps an older commit and must not look
//! like it holds the cluster's (issue 26; `consensus::serving`).

use std::collections::BTreeSet;
use std::fmt;

use crate::id::NodeId;
use crate::lsn::Lsn;

/// Where a member stands while the sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Its AppendResponse showed the settled commit persisted.
    Settled,
    /// Connected, or its first connection attempt is still under way: it
    /// may yet be brought to the settled LSN.
    Reachable,
    /// A connection attempt failed or the connection was lost.
    Unreachable,
}

/// Done once a majority settled and no reachable member is left to bring
/// along, or once a majority settled and the time for the others is up.
pub fn done(reach: &[Reach], others_due: bool) -> bool {
    let settled = reach.iter().filter(|r| **r == Reach::Settled).count();
    if !crate::consensus::quorum::is_majority(settled, reach.len()) {
        return false;
    }
    others_due || !reach.contains(&Reach::Reachable)
}

/// The outcome of a successful `--sync-only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub lsn: Lsn,
    pub term: u64,
    /// The PostgreSQL system identifier of the timeline's WAL.
    pub system_id: u64,
    /// Members that recorded the settle (`TIMELINE_SETTLED`).
    pub nodes: BTreeSet<NodeId>,
    /// Members that did not: unreachable, still behind, or the record
    /// failed. They refuse consumers until a proposer brings them along.
    pub not_settled: BTreeSet<NodeId>,
}

impl fmt::Display for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |s: &BTreeSet<NodeId>| {
            let v: Vec<String> = s.iter().map(|n| n.0.to_string()).collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "settled at {} in term {}: nodes {}; not settled: {}",
            self.lsn,
            self.term,
            ids(&self.nodes),
            ids(&self.not_settled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Reach::*;

    #[test]
    fn waits_for_reachable_members_after_the_majority() {
        assert!(!done(&[Settled, Reachable, Reachable], false));
        assert!(!done(&[Settled, Settled, Reachable], false));
        assert!(done(&[Settled, Settled, Settled], false));
        assert!(done(&[Settled, Settled, Unreachable], false));
        // Time is up for the others, but never before a majority.
        assert!(done(&[Settled, Settled, Reachable], true));
        assert!(!done(&[Settled, Unreachable, Reachable], true));
    }

    #[test]
    fn reports_both_sets() {
        let s = super::Settled {
            system_id: 1,
            lsn: Lsn(0x8E796E8),
            term: 5,
            nodes: [NodeId(2), NodeId(3)].into(),
            not_settled: [NodeId(1)].into(),
        };
        assert_eq!(
            s.to_string(),
            "settled at 0/8E796E8 in term 5: nodes 2, 3; not settled: 1"
        );
    }
}
