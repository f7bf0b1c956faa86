//! Membership changes by joint consensus (ARCHITECTURE.md, "3.13
//! Membership changes"; issue 21). Pure rules, used by the acceptor, the
//! proposer and the simulation.
//!
//! A [`Configuration`] is the member set in force, with its [`Generation`];
//! while a change is in flight it is *joint*: `members` (the old set) and
//! `next` (the new one), and every decision (an election, a commit) needs a
//! majority of both. Only the leader of a term makes a configuration, so a
//! generation (the maker's term and a step within it) names one
//! configuration. A change from M to N takes two configurations, each
//! stored (synced) by the nodes before they acknowledge it:
//!
//! 1. joint (M, N), once every new member caught up as a learner: it was
//!    elected into the term and acknowledged flush at or above the
//!    leader's commit of that moment (each at its own moment: requiring
//!    all of them at once chases a commit that moves while the old set
//!    commits, and only liveness hangs on it, since a joint configuration
//!    needs a majority of both sets anyway);
//! 2. final (N), once a majority of M stored the joint one and a majority
//!    of N holds the WAL up to the leader's commit: from then on a proposer
//!    of an older generation cannot win a majority of M (nodes refuse votes
//!    to a generation older than their own), so nothing counted by M alone
//!    can happen any more, every configuration still able to decide (joint
//!    or final) needs a majority of N, and that majority holds every commit
//!    made before, also those a majority of M alone counted (the leader's
//!    commit covers every earlier commit). Raft gets the last part from
//!    committing the joint entry in the log; here the configuration is not
//!    in the WAL, so the leader checks the positions.
//!
//! A joint configuration whose `next` is not the leader's target is ended
//! back at M (an abort) before the leader starts its own change.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::messages::Members;
use super::quorum;
use super::term_history::Term;
use crate::id::NodeId;
use crate::lsn::Lsn;

/// Which configuration: made by the leader of `term` as its `step`-th
/// (0-based) configuration. Ordered by term, then step; one leader per term
/// makes each generation unique.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Generation {
    pub term: Term,
    pub step: u32,
}

impl Generation {
    /// The configuration a timeline is created with.
    pub const INITIAL: Generation = Generation { term: 0, step: 0 };
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.term, self.step)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Configuration {
    pub generation: Generation,
    /// The member set (the old one while joint).
    pub members: Members,
    /// The new member set while a change is in flight (joint).
    pub next: Option<Members>,
}

impl Configuration {
    pub fn initial(members: Members) -> Configuration {
        Configuration {
            generation: Generation::INITIAL,
            members,
            next: None,
        }
    }

    pub fn is_joint(&self) -> bool {
        self.next.is_some()
    }

    /// Whether `node` counts in this configuration (old or new set).
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.contains_key(&node)
            || self.next.as_ref().is_some_and(|n| n.contains_key(&node))
    }

    /// Every node that counts, with its address.
    pub fn voters(&self) -> Members {
        let mut all = self.members.clone();
        if let Some(next) = &self.next {
            all.extend(next.iter().map(|(n, a)| (*n, a.clone())));
        }
        all
    }

    /// Whether `nodes` hold a majority of every set in force.
    pub fn is_quorum(&self, nodes: &BTreeSet<NodeId>) -> bool {
        let of = |set: &Members| {
            quorum::is_majority(set.keys().filter(|n| nodes.contains(n)).count(), set.len())
        };
        of(&self.members) && self.next.as_ref().is_none_or(of)
    }

    /// The highest LSN a majority of every set in force has reached among
    /// the positions at or above `floor` (Raft's rule: only WAL of the
    /// leader's term is committed by counting). With `new_alone` (a
    /// deliberate bug for the simulation) a joint configuration counts its
    /// new set only.
    pub fn commit_lsn(
        &self,
        flush: &BTreeMap<NodeId, Lsn>,
        floor: Lsn,
        new_alone: bool,
    ) -> Option<Lsn> {
        let of = |set: &Members| {
            let reached: Vec<Lsn> = set
                .keys()
                .filter_map(|n| flush.get(n).copied())
                .filter(|f| *f >= floor)
                .collect();
            quorum::majority_lsn(&reached, set.len())
        };
        match &self.next {
            None => of(&self.members),
            Some(next) if new_alone => of(next),
            Some(next) => Some(of(&self.members)?.min(of(next)?)),
        }
    }
}

/// What a node stores of its configuration beside `TimelineState::members`
/// (timeline state version 4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The generation of the configuration stored last.
    pub generation: Generation,
    /// The new member set of a joint configuration.
    pub next: Option<Members>,
    /// This node was a member and a configuration without it was stored
    /// here: it was removed, votes no more and refuses proposers. It keeps
    /// its WAL until the operator deletes the timeline.
    pub left: bool,
}

/// Whether two member sets name the same nodes (addresses may differ).
pub fn same_ids(a: &Members, b: &Members) -> bool {
    a.keys().eq(b.keys())
}

/// Whether a proposer given `members` may go on under `conf`, the
/// configuration in force: its list is the one in force (or the target of
/// the change in flight), or the operator asked for a change
/// (`--change-members`). Else a mistyped list would change the membership,
/// and commits would wait for members that do not exist.
pub fn confirmed(
    conf: &Configuration,
    members: &Members,
    change_asked: bool,
) -> Result<(), String> {
    let target = conf.next.as_ref().unwrap_or(&conf.members);
    if change_asked || same_ids(target, members) {
        return Ok(());
    }
    let ids = |m: &Members| {
        m.keys()
            .map(|n| n.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    Err(format!(
        "the safekeepers list {} but the timeline's members are {} (generation {}){}: give that list, \
         or pass --change-members to change the membership to the one given",
        ids(members),
        ids(target),
        conf.generation,
        if conf.is_joint() { ", a change in flight" } else { "" },
    ))
}

/// The generation after `current` for the leader of `term`, or None when
/// `current` was made in a later term (then this leader is stale).
fn next_generation(current: Generation, term: Term) -> Option<Generation> {
    match current.term.cmp(&term) {
        std::cmp::Ordering::Less => Some(Generation { term, step: 0 }),
        std::cmp::Ordering::Equal => current
            .step
            .checked_add(1)
            .map(|step| Generation { term, step }),
        std::cmp::Ordering::Greater => None,
    }
}

/// What the leader knows of the change's progress in its term.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Flush each node acknowledged in this term (after Elected).
    pub flush: &'a BTreeMap<NodeId, Lsn>,
    /// The leader's commit_lsn (INVALID: nothing committed in this term).
    pub commit_lsn: Lsn,
    /// Nodes that acknowledged (stored, synced) `current` in this term.
    pub stored_current: &'a BTreeSet<NodeId>,
    /// Nodes that, at some acknowledgement in this term, had flushed up to
    /// the leader's commit of that moment (learners that caught up).
    pub caught_up: &'a BTreeSet<NodeId>,
}

/// The next configuration the leader of `term` makes on its way from
/// `current` to `target`, if one is due now (module comment):
/// - not joint, other ids than `target`: the joint configuration, once
///   every new member caught up (`Progress::caught_up`);
/// - joint: the final one (`next` if it is `target`, else back to
///   `members`), once a majority of `members` stored the joint one and a
///   majority of the final set acknowledged flush at or above the leader's
///   commit.
pub fn next_configuration(
    current: &Configuration,
    target: &Members,
    term: Term,
    p: Progress<'_>,
) -> Option<Configuration> {
    let generation = next_generation(current.generation, term)?;
    match &current.next {
        None => {
            if same_ids(&current.members, target) || !p.commit_lsn.is_valid() {
                return None;
            }
            let seeded = target
                .keys()
                .filter(|n| !current.members.contains_key(n))
                .all(|n| p.caught_up.contains(n));
            seeded.then(|| Configuration {
                generation,
                members: current.members.clone(),
                next: Some(target.clone()),
            })
        }
        Some(next) => {
            let stored = current
                .members
                .keys()
                .filter(|n| p.stored_current.contains(n))
                .count();
            if !quorum::is_majority(stored, current.members.len()) {
                return None;
            }
            let members = if same_ids(next, target) {
                next.clone()
            } else {
                current.members.clone()
            };
            let reached: Vec<Lsn> = members
                .keys()
                .filter_map(|n| p.flush.get(n).copied())
                .collect();
            let holds_commit = p.commit_lsn.is_valid()
                && quorum::majority_lsn(&reached, members.len()).is_some_and(|l| l >= p.commit_lsn);
            if !holds_commit {
                return None;
            }
            Some(Configuration {
                generation,
                members,
                next: None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u64]) -> Members {
        ids.iter()
            .map(|&i| (NodeId(i), format!("h{i}:5432")))
            .collect()
    }

    fn nodes(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().map(|&i| NodeId(i)).collect()
    }

    fn flush(pairs: &[(u64, u64)]) -> BTreeMap<NodeId, Lsn> {
        pairs.iter().map(|&(n, l)| (NodeId(n), Lsn(l))).collect()
    }

    fn joint(old: &[u64], new: &[u64]) -> Configuration {
        Configuration {
            generation: Generation { term: 3, step: 0 },
            members: set(old),
            next: Some(set(new)),
        }
    }

    /// A joint configuration decides only with a majority of the old set
    /// and of the new one; a plain one with a majority of its set.
    #[test]
    fn another_member_list_needs_the_operators_word() {
        let m = |ids: &[u64]| -> Members {
            ids.iter()
                .map(|n| (NodeId(*n), format!("h{n}:1")))
                .collect()
        };
        let conf = Configuration::initial(m(&[1, 2, 3]));
        assert!(confirmed(&conf, &m(&[1, 2, 3]), false).is_ok());
        let refused = confirmed(&conf, &m(&[1, 2, 4]), false).unwrap_err();
        assert!(
            refused.contains("--change-members") && refused.contains("1,2,3"),
            "{refused}"
        );
        assert!(confirmed(&conf, &m(&[1, 2, 4]), true).is_ok());
        // A change in flight goes on with its target's list.
        let joint = Configuration {
            next: Some(m(&[1, 2, 4])),
            ..conf
        };
        assert!(confirmed(&joint, &m(&[1, 2, 4]), false).is_ok());
        assert!(confirmed(&joint, &m(&[1, 2, 3]), false).is_err());
    }

    #[test]
    fn a_joint_quorum_needs_a_majority_of_both_sets() {
        let plain = Configuration::initial(set(&[1, 2, 3]));
        assert!(plain.is_quorum(&nodes(&[1, 2])));
        assert!(!plain.is_quorum(&nodes(&[1, 4, 5])));
        // 3 -> 5: {1,2,3} and {1,2,3,4,5}
        let grow = joint(&[1, 2, 3], &[1, 2, 3, 4, 5]);
        assert!(
            !grow.is_quorum(&nodes(&[1, 2])),
            "a majority of the old set alone"
        );
        assert!(
            !grow.is_quorum(&nodes(&[3, 4, 5])),
            "a majority of the new set alone"
        );
        assert!(grow.is_quorum(&nodes(&[1, 2, 4])));
        // replace 3 by 4: {1,2,3} and {1,2,4}
        let replace = joint(&[1, 2, 3], &[1, 2, 4]);
        assert!(replace.is_quorum(&nodes(&[1, 2])));
        assert!(
            !replace.is_quorum(&nodes(&[1, 3])),
            "3 is not in the new set"
        );
        assert!(
            !replace.is_quorum(&nodes(&[2, 4])),
            "4 is not in the old set"
        );
        assert!(replace.contains(NodeId(4)) && replace.contains(NodeId(3)));
        assert!(!replace.contains(NodeId(5)));
    }

    /// The commit of a joint configuration is the lower of the two sets'
    /// majority positions; positions below the floor (older terms) and of
    /// nodes outside the configuration do not count.
    #[test]
    fn a_joint_commit_is_the_lower_of_both_majorities() {
        let grow = joint(&[1, 2, 3], &[1, 2, 3, 4, 5]);
        let f = flush(&[(1, 100), (2, 90), (3, 10), (4, 80), (5, 70), (9, 500)]);
        // old: 100, 90, 10 -> 90; new: 100, 90, 80, 70, 10 -> 80
        assert_eq!(grow.commit_lsn(&f, Lsn(0), false), Some(Lsn(80)));
        // the deliberate bug counts the new set alone
        assert_eq!(grow.commit_lsn(&f, Lsn(0), true), Some(Lsn(80)));
        let f = flush(&[(3, 100), (4, 100), (5, 100)]);
        assert_eq!(
            grow.commit_lsn(&f, Lsn(0), false),
            None,
            "no majority of the old set"
        );
        assert_eq!(
            grow.commit_lsn(&f, Lsn(0), true),
            Some(Lsn(100)),
            "the bug commits"
        );
        let plain = Configuration::initial(set(&[1, 2, 3]));
        let f = flush(&[(1, 50), (2, 40), (3, 5)]);
        assert_eq!(plain.commit_lsn(&f, Lsn(0), false), Some(Lsn(40)));
        assert_eq!(
            plain.commit_lsn(&f, Lsn(45), false),
            None,
            "below the floor"
        );
    }

    /// Joint first, and only once every new member caught up: each
    /// reached the leader's commit at one of its acknowledgements, not
    /// necessarily all at the same time (the commit moves meanwhile).
    #[test]
    fn the_joint_configuration_waits_for_the_new_members_to_be_seeded() {
        let current = Configuration::initial(set(&[1, 2, 3, 4]));
        let target = set(&[1, 2, 3, 4, 5, 6]);
        let none = BTreeSet::new();
        // 5 caught up earlier and is behind the commit now; 6 has not yet
        let f = flush(&[(1, 100), (2, 100), (3, 100), (5, 60), (6, 60)]);
        let p = |caught_up| Progress {
            flush: &f,
            commit_lsn: Lsn(100),
            stored_current: &none,
            caught_up,
        };
        let five = nodes(&[5]);
        assert_eq!(next_configuration(&current, &target, 7, p(&five)), None);
        let both = nodes(&[5, 6]);
        let j = next_configuration(&current, &target, 7, p(&both)).expect("joint");
        assert_eq!(j.generation, Generation { term: 7, step: 0 });
        assert_eq!(j.members, current.members);
        assert_eq!(j.next, Some(target.clone()));
        // nothing to change: no configuration
        assert_eq!(
            next_configuration(&current, &set(&[1, 2, 3, 4]), 7, p(&both)),
            None
        );
        // nothing committed in this term yet: wait
        let nothing = Progress {
            commit_lsn: Lsn::INVALID,
            ..p(&both)
        };
        assert_eq!(next_configuration(&current, &target, 7, nothing), None);
    }

    /// Final once a majority of the old set stored the joint one: the new
    /// set, or the old one back when the leader's target is another.
    #[test]
    fn the_final_configuration_waits_for_a_majority_of_the_old_set() {
        let j = joint(&[1, 2, 3], &[1, 2, 4]);
        let f = flush(&[(1, 100), (2, 100), (3, 100), (4, 100)]);
        let none = BTreeSet::new();
        let p = |stored| Progress {
            flush: &f,
            commit_lsn: Lsn(100),
            stored_current: stored,
            caught_up: &none,
        };
        let one = nodes(&[1, 4]);
        assert_eq!(next_configuration(&j, &set(&[1, 2, 4]), 3, p(&one)), None);
        let two = nodes(&[1, 2]);
        let fin = next_configuration(&j, &set(&[1, 2, 4]), 3, p(&two)).expect("final");
        assert_eq!(fin.generation, Generation { term: 3, step: 1 });
        assert_eq!(fin.members, set(&[1, 2, 4]));
        assert!(!fin.is_joint());
        // another leader (term 5) with another target ends the change at the old set
        let back = next_configuration(&j, &set(&[1, 2, 5]), 5, p(&two)).expect("abort");
        assert_eq!(back.generation, Generation { term: 5, step: 0 });
        assert_eq!(back.members, set(&[1, 2, 3]));
        // a leader of an older term than the configuration makes none
        assert_eq!(next_configuration(&j, &set(&[1, 2, 4]), 2, p(&two)), None);
    }

    /// 5 -> 3: a commit a majority of the old set alone counted before the
    /// joint configuration ({3,4,5} at 100) is not on a majority of the new
    /// set ({1,2} at 50): the final configuration waits until it is, or an
    /// election by {1,2} would lose it (found by the simulation, shrink seed
    /// 10346, before this rule).
    #[test]
    fn the_final_configuration_waits_for_the_new_set_to_hold_the_commit() {
        let j = joint(&[1, 2, 3, 4, 5], &[1, 2, 3]);
        let stored = nodes(&[3, 4, 5]);
        let target = set(&[1, 2, 3]);
        let behind = flush(&[(1, 50), (2, 50), (3, 100), (4, 100), (5, 100)]);
        let none = BTreeSet::new();
        let p = |f| Progress {
            flush: f,
            commit_lsn: Lsn(100),
            stored_current: &stored,
            caught_up: &none,
        };
        assert_eq!(next_configuration(&j, &target, 3, p(&behind)), None);
        let caught_up = flush(&[(1, 100), (2, 50), (3, 100)]);
        let fin = next_configuration(&j, &target, 3, p(&caught_up)).expect("final");
        assert_eq!(fin.members, target);
    }

    /// The proposer counts by the newest configuration a member stored:
    /// a joint one learnt from greetings makes it dial the new member,
    /// wait for a quorum of both sets, and ask for votes in that
    /// generation (which older-generation nodes would refuse).
    #[test]
    fn a_proposer_counts_by_the_newest_configuration_a_member_told_it() {
        use crate::consensus::messages::{
            AcceptorGreeting, AcceptorMessage, ProposerMessage, ServerInfo,
        };
        use crate::consensus::proposer::{Action, Proposer, ProposerConfig};
        let server = ServerInfo {
            system_id: 1,
            pg_version: 150_000,
            wal_seg_size: 1 << 20,
            tli: 1,
        };
        let cfg = ProposerConfig::new(Default::default(), server, Lsn(1 << 20), set(&[1, 2, 3]));
        let mut p = Proposer::new(cfg);
        let grow = joint(&[1, 2, 3], &[1, 2, 3, 4, 5]);
        let greeting = |node: u64, conf: Configuration| {
            AcceptorMessage::Greeting(AcceptorGreeting {
                protocol_version: crate::codec::PROTOCOL_VERSION,
                node_id: NodeId(node),
                term: 2,
                conf,
            })
        };
        let _ = p.start_election();
        p.on_connected(NodeId(1));
        let out = p.on_message(NodeId(1), greeting(1, grow.clone()));
        assert!(out.contains(&Action::Configured {
            conf: grow.clone(),
            made: false
        }));
        assert!(
            p.peers().contains_key(&NodeId(5)),
            "the new members are dialled"
        );
        p.on_connected(NodeId(2));
        let out = p.on_message(
            NodeId(2),
            greeting(2, Configuration::initial(set(&[1, 2, 3]))),
        );
        assert_eq!(
            p.configuration(),
            &grow,
            "an older configuration is not taken"
        );
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::Send(_, ProposerMessage::VoteRequest(_)))),
            "{{1,2}} is a majority of the old set, not of the new one"
        );
        p.on_connected(NodeId(4));
        let out = p.on_message(NodeId(4), greeting(4, grow.clone()));
        let votes: Vec<_> = out
            .iter()
            .filter_map(|a| match a {
                Action::Send(n, ProposerMessage::VoteRequest(v)) => Some((*n, v.generation)),
                _ => None,
            })
            .collect();
        assert_eq!(
            votes.len(),
            3,
            "{{1,2,4}}: a majority of both sets: {out:?}"
        );
        assert!(votes.iter().all(|(_, g)| *g == grow.generation));
    }

    /// A node removed by a final configuration whose maker stopped before
    /// telling it: a later proposer learns of it from a member's older
    /// (joint) configuration, dials it and tells it; one that already
    /// stores a configuration without it is let go at its greeting.
    #[test]
    fn a_later_proposer_tells_a_removed_node() {
        use crate::consensus::messages::{AcceptorGreeting, AcceptorMessage, ServerInfo};
        use crate::consensus::proposer::{Action, Proposer, ProposerConfig};
        let server = ServerInfo {
            system_id: 1,
            pg_version: 150_000,
            wal_seg_size: 1 << 20,
            tli: 1,
        };
        let greeting = |node: u64, conf: Configuration| {
            AcceptorMessage::Greeting(AcceptorGreeting {
                protocol_version: crate::codec::PROTOCOL_VERSION,
                node_id: NodeId(node),
                term: 3,
                conf,
            })
        };
        let replace = joint(&[1, 2, 3], &[1, 2, 4]);
        let fin = Configuration {
            generation: Generation { term: 3, step: 1 },
            members: set(&[1, 2, 4]),
            next: None,
        };
        let new_proposer = || {
            let cfg =
                ProposerConfig::new(Default::default(), server, Lsn(1 << 20), set(&[1, 2, 4]));
            let mut p = Proposer::new(cfg);
            let _ = p.start_election();
            p.on_connected(NodeId(1));
            p.on_message(NodeId(1), greeting(1, fin.clone()));
            p
        };
        let mut p = new_proposer();
        assert!(!p.peers().contains_key(&NodeId(3)), "nothing names 3 yet");
        p.on_connected(NodeId(4));
        p.on_message(NodeId(4), greeting(4, replace.clone()));
        assert_eq!(p.configuration(), &fin);
        assert!(
            p.peers().contains_key(&NodeId(3)),
            "the joint configuration names 3, the final one does not: 3 is dialled to be told"
        );
        // 3 itself answers with the final configuration: it knows already.
        p.on_connected(NodeId(3));
        let out = p.on_message(NodeId(3), greeting(3, fin.clone()));
        assert!(out.contains(&Action::Removed(NodeId(3))), "{out:?}");
        assert!(out.contains(&Action::Disconnect(NodeId(3))), "{out:?}");
        assert!(!p.peers().contains_key(&NodeId(3)));
        // 3 still on the joint configuration is asked for its vote (then
        // told by Configure once elected, as the maker would have).
        let mut p = new_proposer();
        p.on_connected(NodeId(4));
        p.on_message(NodeId(4), greeting(4, replace.clone()));
        p.on_connected(NodeId(3));
        let out = p.on_message(NodeId(3), greeting(3, replace.clone()));
        assert!(!out.contains(&Action::Removed(NodeId(3))), "{out:?}");
        assert!(p.peers().contains_key(&NodeId(3)));
    }

    #[test]
    fn generations_order_by_term_then_step() {
        let a = Generation { term: 2, step: 5 };
        let b = Generation { term: 3, step: 0 };
        assert!(Generation::INITIAL < a && a < b);
        assert_eq!(next_generation(a, 2), Some(Generation { term: 2, step: 6 }));
        assert_eq!(next_generation(a, 4), Some(Generation { term: 4, step: 0 }));
        assert_eq!(next_generation(b, 2), None);
    }
}
