//! Membership changes in the simulation (tools/SIMULATION.md): which nodes
//! hold the timeline at the start, which member list each proposer host
//! is given (the target of its change), and which node dies for good.

use crate::consensus::messages::Members;
use crate::id::NodeId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    /// {1,2,3} -> {1,2,4}; node 3 dies for good a third into the chaos.
    ReplaceOne,
    /// {1,2,3} -> {1,2,3,4,5}.
    Grow,
    /// {1,2,3,4,5} -> {1,2,3}.
    Shrink,
    /// {1,2,3}; the proxies are given {1,2,4}, {1,2,3,5} and {1,2,3}: each
    /// elected one changes the configuration to its own list.
    TwoConfigs,
}

impl MemberChange {
    pub const ALL: [MemberChange; 4] = [
        MemberChange::ReplaceOne,
        MemberChange::Grow,
        MemberChange::Shrink,
        MemberChange::TwoConfigs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MemberChange::ReplaceOne => "replace-one",
            MemberChange::Grow => "grow",
            MemberChange::Shrink => "shrink",
            MemberChange::TwoConfigs => "two-configs",
        }
    }

    pub fn parse(name: &str) -> Option<MemberChange> {
        MemberChange::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Nodes simulated (ids 1..=n).
    pub fn nodes(self) -> usize {
        match self {
            MemberChange::ReplaceOne => 4,
            _ => 5,
        }
    }

    /// The members the timeline is created with.
    pub fn initial(self) -> Members {
        match self {
            MemberChange::Shrink => members(&[1, 2, 3, 4, 5]),
            _ => members(&[1, 2, 3]),
        }
    }

    /// The member list proposer host `p` is given.
    pub fn target(self, p: usize) -> Members {
        match self {
            MemberChange::ReplaceOne => members(&[1, 2, 4]),
            MemberChange::Grow => members(&[1, 2, 3, 4, 5]),
            MemberChange::Shrink => members(&[1, 2, 3]),
            MemberChange::TwoConfigs => match p % 3 {
                0 => members(&[1, 2, 4]),
                1 => members(&[1, 2, 3, 5]),
                _ => members(&[1, 2, 3]),
            },
        }
    }

    /// The node (index) that dies for good, if any.
    pub fn dies(self) -> Option<usize> {
        match self {
            MemberChange::ReplaceOne => Some(2),
            _ => None,
        }
    }
}

/// Members with the simulation's addresses.
pub fn members(ids: &[u64]) -> Members {
    ids.iter()
        .map(|&i| (NodeId(i), format!("127.0.0.1:{}", 5450 + i)))
        .collect()
}
