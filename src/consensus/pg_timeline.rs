//! PostgreSQL timelines inside one walkeeper timeline: a promoted standby
//! continues the same LSN space on a new PostgreSQL timeline (TLI) from a
//! switch point. The chain is what the primary's history file says: each
//! ancestor TLI with the LSN where it ended (and the next one began).
//!
//! The rules here decide whether a proposer's PostgreSQL timeline may follow
//! the one an acceptor holds; the acceptor and the proposer both apply them.

use super::limits::{self, LimitExceeded};
use crate::lsn::Lsn;

/// Ancestors of a PostgreSQL timeline, oldest first: (tli, the LSN where it
/// ended and its successor began). Empty for a timeline without ancestors.
pub type PgAncestors = Vec<(u32, Lsn)>;

/// Why a proposer's PostgreSQL timeline cannot follow the stored one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The proposer's timeline is older than the one stored: its primary
    /// was superseded by a promoted standby.
    #[error("the proposer's PostgreSQL timeline {proposed} is older than timeline {stored}, which these safekeepers follow: its primary was superseded by a promoted standby and must be rebuilt (pg_rewind or a new base backup)")]
    Superseded { stored: u32, proposed: u32 },
    /// The stored timeline is not an ancestor of the proposer's, or the
    /// ancestors the acceptor knows are not a prefix of the proposer's.
    #[error("the proposer's PostgreSQL timeline {proposed} does not descend from timeline {stored} at the switch points these safekeepers recorded")]
    NotDescendant { stored: u32, proposed: u32 },
}

/// Where the proposer's timeline `new_tli` (with `new_ancestors`) leaves the
/// stored timeline `stored_tli`: `None` when they are the same timeline,
/// else the LSN where `stored_tli` ended in the proposer's history (the
/// switch point). `stored_ancestors` must be a prefix of `new_ancestors`.
pub fn switch_point(
    stored_tli: u32,
    stored_ancestors: &[(u32, Lsn)],
    new_tli: u32,
    new_ancestors: &[(u32, Lsn)],
) -> Result<Option<Lsn>, SwitchError> {
    if new_tli == stored_tli {
        return Ok(None);
    }
    if new_tli < stored_tli {
        return Err(SwitchError::Superseded {
            stored: stored_tli,
            proposed: new_tli,
        });
    }
    let not_descendant = SwitchError::NotDescendant {
        stored: stored_tli,
        proposed: new_tli,
    };
    if !new_ancestors.starts_with(stored_ancestors) {
        return Err(not_descendant);
    }
    let at = new_ancestors[stored_ancestors.len()..]
        .first()
        .filter(|(tli, _)| *tli == stored_tli)
        .ok_or(not_descendant)?;
    Ok(Some(at.1))
}

/// Where a PostgreSQL timeline of the chain ends, for its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineEnd {
    /// The newest timeline: no end yet.
    Current,
    /// It ended at `at`, where timeline `next` began.
    Ended { at: Lsn, next: u32 },
    /// Not in the chain.
    NotInHistory,
}

/// Where timeline `tli` of the chain `ancestors` + `current` ends.
pub fn end_of(ancestors: &[(u32, Lsn)], current: u32, tli: u32) -> TimelineEnd {
    if tli == current {
        return TimelineEnd::Current;
    }
    let Some(i) = ancestors.iter().position(|(t, _)| *t == tli) else {
        return TimelineEnd::NotInHistory;
    };
    let next = ancestors.get(i + 1).map(|(t, _)| *t).unwrap_or(current);
    TimelineEnd::Ended {
        at: ancestors[i].1,
        next,
    }
}

/// A history file for timeline `tli` of the chain, rebuilt from the
/// recorded switch points, for a node that took a switch but not the
/// primary's file (it missed the promoted primary's proxy and learnt the
/// switch from a later Elected). PostgreSQL reads only the timeline and the
/// switch point of each line. `None` for timeline 1, or one not in the
/// chain.
pub fn rebuilt_history_file(ancestors: &[(u32, Lsn)], current: u32, tli: u32) -> Option<Vec<u8>> {
    let upto = if tli == current {
        ancestors.len()
    } else {
        ancestors.iter().position(|(t, _)| *t == tli)?
    };
    if upto == 0 {
        return None;
    }
    let mut out = String::new();
    for (t, end) in &ancestors[..upto] {
        out.push_str(&format!("{t}\t{end}\tswitch point recorded by walkeeper\n"));
    }
    Some(out.into_bytes())
}

/// Whether the chain is well formed: TLIs increase and switch points do
/// not go back, all below `current`, and within the limit.
pub fn check_ancestors(ancestors: &[(u32, Lsn)], current: u32) -> Result<(), String> {
    limits::check_pg_history(ancestors).map_err(|e: LimitExceeded| e.to_string())?;
    let mut prev: Option<(u32, Lsn)> = None;
    for &(tli, end) in ancestors {
        if tli >= current || prev.is_some_and(|(t, e)| tli <= t || end < e) {
            return Err(format!(
                "timeline history of {current} is malformed at timeline {tli} (ends {end})"
            ));
        }
        prev = Some((tli, end));
    }
    Ok(())
}

/// Parse a PostgreSQL history file (`%08X.history` of timeline `current`):
/// lines `parentTLI <tab> switchpoint <tab> reason`, blank lines and `#`
/// comments skipped, as PostgreSQL's `readTimeLineHistory` does.
pub fn parse_history_file(content: &[u8], current: u32) -> Result<PgAncestors, String> {
    let text = std::str::from_utf8(content)
        .map_err(|_| format!("history file of timeline {current} is not text"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = || format!("history file of timeline {current}: bad line {line:?}");
        let tli: u32 = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let lsn: Lsn = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        out.push((tli, lsn));
    }
    check_ancestors(&out, current)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_history_file_as_postgres_writes_it() {
        let f =
            b"1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n";
        assert_eq!(
            parse_history_file(f, 3).unwrap(),
            vec![(1, Lsn(0x3000158)), (2, Lsn(0x5000000))]
        );
        assert!(parse_history_file(b"2\t0/1\tx\n1\t0/2\tx\n", 3).is_err());
        assert!(parse_history_file(b"3\t0/1\tx\n", 3).is_err());
        assert!(parse_history_file(b"x\n", 2).is_err());
    }

    #[test]
    fn a_descendant_switches_at_the_end_of_the_stored_timeline() {
        let chain = vec![(1, Lsn(100)), (2, Lsn(200))];
        assert_eq!(switch_point(1, &[], 1, &[]), Ok(None));
        assert_eq!(switch_point(1, &[], 3, &chain), Ok(Some(Lsn(100))));
        assert_eq!(switch_point(2, &chain[..1], 3, &chain), Ok(Some(Lsn(200))));
        assert!(matches!(
            switch_point(2, &[(1, Lsn(99))], 3, &chain),
            Err(SwitchError::NotDescendant { .. })
        ));
        assert!(matches!(
            switch_point(2, &[], 3, &[(1, Lsn(100))]),
            Err(SwitchError::NotDescendant { .. })
        ));
        assert!(matches!(
            switch_point(2, &chain[..1], 1, &[]),
            Err(SwitchError::Superseded { .. })
        ));
    }

    #[test]
    fn a_history_file_is_rebuilt_from_the_switch_points() {
        let chain = vec![(1, Lsn(0x3000158)), (2, Lsn(0x5000000))];
        let f = rebuilt_history_file(&chain, 3, 3).unwrap();
        assert_eq!(parse_history_file(&f, 3).unwrap(), chain);
        let f = rebuilt_history_file(&chain, 3, 2).unwrap();
        assert_eq!(parse_history_file(&f, 2).unwrap(), chain[..1]);
        assert_eq!(rebuilt_history_file(&chain, 3, 1), None);
        assert_eq!(rebuilt_history_file(&chain, 3, 4), None);
    }

    #[test]
    fn consumers_learn_where_a_timeline_ended_and_what_followed() {
        let chain = vec![(1, Lsn(100)), (2, Lsn(200))];
        assert_eq!(end_of(&chain, 3, 3), TimelineEnd::Current);
        let ended = |at, next| TimelineEnd::Ended { at: Lsn(at), next };
        assert_eq!(end_of(&chain, 3, 1), ended(100, 2));
        assert_eq!(end_of(&chain, 3, 2), ended(200, 3));
        assert_eq!(end_of(&chain, 3, 4), TimelineEnd::NotInHistory);
    }
}
