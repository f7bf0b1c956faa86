//! Consumers in the simulation: what each node knows of its proposer (as
//! the daemon's `safekeeper::failover::ProposerLiveness` keeps it), and the
//! check that, once the cluster is calm, a consumer reaches every committed
//! LSN: the node it reads from serves it, or hands it off (the serving rule,
//! `consensus::serving::may_serve`, refuses) to a node that does. A node
//! may serve a lower commit for a while (it learns the commit with the next
//! message of its proposer), so the simulation asks only that this holds at
//! some step late in the calm phase.

use crate::consensus::acceptor::TimelineState;
use crate::consensus::messages::ProposerMessage;
use crate::consensus::serving::{may_serve, Contact};
use crate::lsn::Lsn;

/// Simulated milliseconds of silence after which a proposer counts as gone
/// (the daemon's `failover::PROPOSER_SILENCE`).
pub const PROPOSER_SILENCE_MS: u64 = 3000;

/// What a node heard from proposers since it last started (memory only).
#[derive(Debug, Clone, Copy, Default)]
pub struct Heard {
    /// Simulated time of the last proposer message handled.
    at: u64,
    /// The highest commit LSN told along with WAL.
    told_commit: Lsn,
    /// The node's flush LSN right after the last proposer message.
    flush: Lsn,
}

impl Heard {
    /// A proposer message was handled at `now`, leaving the node at `flush`.
    /// A heartbeat's commit says nothing about WAL not sent yet.
    pub fn heard(&mut self, now: u64, msg: &ProposerMessage, flush: Lsn) {
        self.at = now;
        if let ProposerMessage::Append(a) = msg {
            if !a.wal.is_empty() {
                self.told_commit = self.told_commit.max(a.commit_lsn);
            }
        }
        self.flush = flush;
    }

    /// The contact `may_serve` judges: live while a proposer's stream is
    /// open and not silent.
    pub fn contact(&self, now: u64, open_stream: bool) -> Contact {
        Contact {
            live: open_stream && now.saturating_sub(self.at) < PROPOSER_SILENCE_MS,
            told_commit: self.told_commit,
            flush: self.flush,
        }
    }
}

/// One node as a consumer sees it: its durable state and contact.
pub struct Serving<'a> {
    pub node: usize,
    pub state: &'a TimelineState,
    pub contact: Contact,
}

/// Every node serves `committed`, or hands its consumers off to a node that
/// does. `nodes` are the nodes up and holding the timeline.
pub fn check_reach(nodes: &[Serving<'_>], committed: Lsn) -> Result<(), String> {
    let mut served_by = None;
    let mut handing_off = Vec::new();
    for n in nodes {
        match may_serve(n.state, &n.contact) {
            Ok(()) if n.state.commit_lsn < committed => {
                return Err(format!(
                    "node {} serves consumers only up to {}, below the committed {committed}",
                    n.node + 1,
                    n.state.commit_lsn
                ));
            }
            Ok(()) => served_by = Some(n.node),
            Err(why) => handing_off.push((n.node, why)),
        }
    }
    if served_by.is_none() && !handing_off.is_empty() {
        let why: Vec<String> = handing_off
            .iter()
            .map(|(n, why)| format!("node {}: {why}", n + 1))
            .collect();
        return Err(format!(
            "no node serves the committed {committed}: {}",
            why.join("; ")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::serving::tests::{live, state};

    #[test]
    fn a_node_serving_below_the_commit_is_caught() {
        let s = state();
        let nodes = [Serving {
            node: 0,
            state: &s,
            contact: live(),
        }];
        assert!(check_reach(&nodes, Lsn(4000)).is_ok());
        let e = check_reach(&nodes, Lsn(4001)).unwrap_err();
        assert!(e.contains("serves consumers only up to 0/FA0"), "{e}");
    }

    #[test]
    fn nodes_that_all_hand_off_are_caught_and_one_serving_is_enough() {
        let s = state();
        let gone = Contact {
            live: false,
            ..live()
        };
        let mut nodes = vec![
            Serving {
                node: 0,
                state: &s,
                contact: gone,
            },
            Serving {
                node: 1,
                state: &s,
                contact: gone,
            },
        ];
        let e = check_reach(&nodes, Lsn(4000)).unwrap_err();
        assert!(e.contains("no node serves the committed"), "{e}");
        nodes[1].contact = live();
        assert!(check_reach(&nodes, Lsn(4000)).is_ok());
    }

    #[test]
    fn a_proposer_falls_silent_after_the_bound() {
        let mut h = Heard::default();
        let msg = ProposerMessage::VoteRequest(crate::consensus::messages::VoteRequest::new(1));
        h.heard(1000, &msg, Lsn(5000));
        assert!(h.contact(1000 + PROPOSER_SILENCE_MS - 1, true).live);
        assert!(!h.contact(1000 + PROPOSER_SILENCE_MS, true).live);
        assert!(!h.contact(1000, false).live);
        assert_eq!(h.contact(1000, true).told_commit, Lsn::INVALID);
    }
}
