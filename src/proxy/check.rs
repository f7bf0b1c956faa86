//! Which WAL below term_start_lsn the proxy compares between the primary and
//! the safekeepers after each election, and where the primary's stream must
//! start for that. Pure: decided here, carried out by the session.

use crate::lsn::Lsn;

/// How much of the primary's WAL just below term_start_lsn is compared with
/// the safekeepers' copy after each election, at most.
pub const CHECK_BYTES: u64 = 64 * 1024;
/// PostgreSQL's WAL page (XLOG_BLCKSZ): the least the check compares
/// whenever the safekeepers hold that much below term_start_lsn. Fewer
/// bytes may be little more than a page header, which two histories of one
/// cluster share.
pub const WAL_PAGE: u64 = 8192;

/// What the check compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckRange {
    /// Compare `[from, term_start)`; `short` when it is less than a page
    /// although the safekeepers hold more (the primary no longer streams
    /// the WAL below its slot's segment).
    Compare { from: Lsn, short: bool },
    /// The primary's stream starts too close to term_start: stream again
    /// from the segment holding `from` to compare a page.
    Rewind { from: Lsn },
}

/// Where a piece of the primary's WAL at `start`, `len` bytes long, falls
/// while the check collects: the byte range inside it to compare
/// (`[from, term_start)`), and the offset from which it is held for after
/// the check (at and above `term_start`). Any of the pieces may lie wholly
/// above `term_start`.
pub fn split_piece(
    start: Lsn,
    len: usize,
    from: Lsn,
    term_start: Lsn,
) -> (Option<std::ops::Range<usize>>, Option<usize>) {
    let end = start.0.saturating_add(len as u64);
    let lo = from.0.max(start.0);
    let hi = term_start.0.min(end);
    let compare = (lo < hi).then(|| (lo - start.0) as usize..(hi - start.0) as usize);
    let held = (end > term_start.0).then(|| term_start.0.saturating_sub(start.0) as usize);
    (compare, held)
}

/// The range to compare below `term_start`, for a primary stream that began
/// at `stream_start` and safekeepers whose WAL begins at `wal_start` (the
/// timeline's start). `rewind_tried`: a session already streamed (or
/// tried to) from below the slot for this term_start and could not
/// compare a page (the primary or the donor no longer holds it).
pub fn check_range(
    term_start: Lsn,
    stream_start: Lsn,
    wal_start: Lsn,
    rewind_tried: bool,
) -> CheckRange {
    let want = Lsn(term_start.0.saturating_sub(CHECK_BYTES)).max(wal_start);
    if want >= stream_start {
        return CheckRange::Compare {
            from: want,
            short: false,
        };
    }
    // The safekeepers hold `held` bytes below term_start (nothing on a
    // fresh timeline); the stream gives `streamed` of them.
    let held = term_start.0.saturating_sub(wal_start.0);
    let streamed = term_start.0.saturating_sub(stream_start.0);
    if streamed >= held.min(WAL_PAGE) {
        return CheckRange::Compare {
            from: stream_start,
            short: false,
        };
    }
    if rewind_tried {
        return CheckRange::Compare {
            from: stream_start,
            short: true,
        };
    }
    CheckRange::Rewind {
        from: Lsn(term_start.0 - WAL_PAGE.min(held)),
    }
}

/// Where the next session asks the primary to stream from, below the slot's
/// restart point, carried from one session to the next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewind {
    /// The safekeepers' WAL ends here, below the slot's start (after
    /// whole-cluster recovery from checkpoints): streaming must start there,
    /// or the commits since cannot be recovered from this primary.
    pub to_end: Option<Lsn>,
    /// The check of term_start `.0` wants the WAL from `.1`: the next
    /// session streams from there, once.
    pub for_check: Option<(Lsn, Lsn)>,
    /// The term_start whose check had its one rewind.
    pub tried: Option<Lsn>,
}

impl Rewind {
    /// The LSN the next session streams from, if below the slot, and
    /// whether that is required (not only for the check). A rewind for the
    /// check is used by one session only.
    pub fn next_stream_from(&mut self) -> Option<(Lsn, bool)> {
        let check = self.for_check.take().map(|(term_start, from)| {
            self.tried = Some(term_start);
            from
        });
        match (self.to_end, check) {
            (Some(end), Some(from)) if from < end => Some((from, false)),
            (Some(end), _) => Some((end, true)),
            (None, Some(from)) => Some((from, false)),
            (None, None) => None,
        }
    }

    /// Whether the check of `term_start` already had its rewind.
    pub fn tried_for(&self, term_start: Lsn) -> bool {
        self.tried == Some(term_start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_split_at_term_start_also_when_wholly_above_it() {
        let (from, ts) = (Lsn(1000), Lsn(2000));
        assert_eq!(
            split_piece(Lsn(500), 1000, from, ts),
            (Some(500..1000), None)
        );
        assert_eq!(
            split_piece(Lsn(1500), 1000, from, ts),
            (Some(0..500), Some(500))
        );
        assert_eq!(split_piece(Lsn(2000), 300, from, ts), (None, Some(0)));
        // A second piece beyond term_start, before the check finished.
        assert_eq!(split_piece(Lsn(2500), 300, from, ts), (None, Some(0)));
        assert_eq!(split_piece(Lsn(0), 10, from, ts), (None, None));
    }

    const SEG: u64 = 16 << 20;

    #[test]
    fn a_term_far_from_the_stream_start_compares_check_bytes() {
        let r = check_range(Lsn(SEG + 100_000), Lsn(SEG), Lsn(SEG), false);
        assert_eq!(
            r,
            CheckRange::Compare {
                from: Lsn(SEG + 100_000 - CHECK_BYTES),
                short: false
            }
        );
    }

    #[test]
    fn at_least_a_page_is_compared_from_the_stream_start() {
        let r = check_range(Lsn(2 * SEG + WAL_PAGE), Lsn(2 * SEG), Lsn(SEG), false);
        assert_eq!(
            r,
            CheckRange::Compare {
                from: Lsn(2 * SEG),
                short: false
            }
        );
    }

    #[test]
    fn less_than_a_page_on_the_stream_asks_for_a_rewind_once() {
        for below in [0, 40, WAL_PAGE - 1] {
            let term_start = Lsn(2 * SEG + below);
            let r = check_range(term_start, Lsn(2 * SEG), Lsn(SEG), false);
            assert_eq!(
                r,
                CheckRange::Rewind {
                    from: Lsn(term_start.0 - WAL_PAGE)
                },
                "{below}"
            );
            let r = check_range(term_start, Lsn(2 * SEG), Lsn(SEG), true);
            assert_eq!(
                r,
                CheckRange::Compare {
                    from: Lsn(2 * SEG),
                    short: true
                }
            );
        }
    }

    #[test]
    fn a_fresh_timeline_has_nothing_to_compare_and_never_rewinds() {
        let r = check_range(Lsn(SEG), Lsn(SEG), Lsn(SEG), false);
        assert_eq!(
            r,
            CheckRange::Compare {
                from: Lsn(SEG),
                short: false
            }
        );
        // A timeline that holds less than a page compares all of it.
        let r = check_range(Lsn(SEG + 100), Lsn(SEG), Lsn(SEG), false);
        assert_eq!(
            r,
            CheckRange::Compare {
                from: Lsn(SEG),
                short: false
            }
        );
    }

    #[test]
    fn a_required_rewind_below_the_check_rewind_wins_and_a_check_rewind_is_used_once() {
        let mut r = Rewind {
            to_end: Some(Lsn(SEG)),
            ..Rewind::default()
        };
        assert_eq!(r.next_stream_from(), Some((Lsn(SEG), true)));
        assert_eq!(r.next_stream_from(), Some((Lsn(SEG), true)));
        r.for_check = Some((Lsn(3 * SEG), Lsn(3 * SEG - WAL_PAGE)));
        assert_eq!(r.next_stream_from(), Some((Lsn(SEG), true)));
        assert!(r.tried_for(Lsn(3 * SEG)));
        r.to_end = None;
        r.for_check = Some((Lsn(3 * SEG), Lsn(3 * SEG - WAL_PAGE)));
        assert_eq!(r.next_stream_from(), Some((Lsn(3 * SEG - WAL_PAGE), false)));
        assert_eq!(r.next_stream_from(), None);
        assert!(r.tried_for(Lsn(3 * SEG)));
        assert!(!r.tried_for(Lsn(4 * SEG)));
    }
}
