//! `--sync-only` in the proposer: when the members that persisted the
//! commit of term_start_lsn are a quorum of the configuration in force
//! (`consensus::settle`).

use std::collections::BTreeSet;

use super::{Action, Proposer};
use crate::id::NodeId;

impl Proposer {
    /// With `cfg.settle`, once: `Action::Settled` when a quorum of the
    /// configuration in force settled and no member of it is left that may
    /// still settle (`reachable`: connected, or its first connection under
    /// way), or the time for those is up (`others_due`).
    pub fn settle_due(&mut self, reachable: &BTreeSet<NodeId>, others_due: bool) -> Vec<Action> {
        let minority = self.cfg.faults.settle_counts_minority;
        let Some(s) = self.settle.as_mut() else {
            return Vec::new();
        };
        if !s.done(&self.conf, reachable, others_due, minority) {
            return Vec::new();
        }
        let Some((term, lsn, nodes)) = s.report() else {
            return Vec::new();
        };
        vec![Action::Settled { term, lsn, nodes }]
    }
}
