//! Majority arithmetic, kept apart so the rules read on their own (as
//! raft-rs keeps `quorum/majority.rs`). Everything counts distinct node ids
//! of the timeline's member set; callers never count connections.

use crate::lsn::Lsn;

/// How many of `members` make a majority.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

/// Whether `count` distinct members are a majority of `members`. An empty
/// member set has no majority: nothing can ever be decided by it.
pub fn is_majority(count: usize, members: usize) -> bool {
    members > 0 && count >= majority(members)
}

/// The highest LSN that a majority of `members` has reached, given the
/// positions of the members that reported one (at most one per member).
/// Members that did not report count as not having reached anything, so
/// this is `None` until a majority reported.
pub fn majority_lsn(reported: &[Lsn], members: usize) -> Option<Lsn> {
    let need = majority(members);
    if members == 0 || reported.len() < need {
        return None;
    }
    let mut sorted = reported.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.get(need - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majorities() {
        // members → majority, as a table that reads like the spec
        for (members, need) in [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)] {
            assert_eq!(majority(members), need, "{members} members");
            assert!(is_majority(need, members));
            assert!(!is_majority(need - 1, members));
        }
        assert!(!is_majority(0, 0));
    }

    /// Each case: members, reported positions → the majority LSN.
    #[test]
    fn majority_lsn_is_the_majority_th_highest() {
        let cases: &[(usize, &[u64], Option<u64>)] = &[
            (3, &[], None),
            (3, &[10], None),
            (3, &[10, 20], Some(10)),
            (3, &[30, 10, 20], Some(20)),
            (5, &[50, 40, 10], Some(10)),
            (5, &[50, 40], None),
            (5, &[5, 50, 40, 30, 20], Some(30)),
            (4, &[40, 30, 20], Some(20)),
            (4, &[40, 30], None),
            (1, &[7], Some(7)),
            (0, &[7], None),
        ];
        for &(members, reported, want) in cases {
            let reported: Vec<Lsn> = reported.iter().map(|&l| Lsn(l)).collect();
            assert_eq!(
                majority_lsn(&reported, members),
                want.map(Lsn),
                "{members} members, reported {reported:?}"
            );
        }
    }
}
