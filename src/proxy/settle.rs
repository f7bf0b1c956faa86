//! What `--sync-only` reports. Which members it settled and when that is
//! enough is the proposer's decision (`consensus::settle`, counted by the
//! configuration in force).

use std::collections::BTreeSet;
use std::fmt;

use crate::id::NodeId;
use crate::lsn::Lsn;

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
