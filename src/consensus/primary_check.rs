//! The proposer's check of the primary's WAL (ARCHITECTURE.md, "3.8 The
//! primary's WAL is checked, not trusted"). Pure: which WAL below
//! term_start_lsn the primary must match, whether its stream must start
//! lower (`RewindAsk`), and the verdict on the bytes (`compare`); the
//! proposer keeps the [`Gate`] and the driver only reads bytes.
//!
//! After each election the proposer asks (`Action::VerifyPrimary`) for the
//! primary's WAL `[from, term_start)` and the same range from a member that
//! acknowledged term_start in this term (it holds exactly the leader's log
//! there); `Proposer::on_primary_check` compares. Until the check passes,
//! `Proposer::push_wal` takes no WAL.

use crate::id::NodeId;
use crate::lsn::Lsn;

use super::term_history::Term;

/// How much of the primary's WAL just below term_start_lsn is compared with
/// the safekeepers' copy after each election, at most.
pub const CHECK_BYTES: u64 = 64 * 1024;
/// PostgreSQL's WAL page (XLOG_BLCKSZ): the least the check compares
/// whenever the safekeepers hold that much below term_start_lsn. Fewer
/// bytes may be little more than a page header, which two histories of one
/// cluster share.
pub const WAL_PAGE: u64 = 8192;
/// How long the primary may take to stream up to term_start_lsn (ms) when
/// term_start_lsn is beyond its end of WAL at connect: the primary flushes
/// WAL before it streams it, so WAL there can only be another history.
pub const BEHIND_GRACE_MS: u64 = 5_000;
/// … when it is not (a primary still writing, a slow stream).
pub const STREAM_GRACE_MS: u64 = 30_000;

/// Where the primary's stream begins, as the driver connected it: the
/// proposer's input for the check (None in `ProposerConfig`: no primary,
/// nothing to check, as with `--sync-only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryOrigin {
    /// The first LSN the primary streams (its slot's segment start, or
    /// lower after a rewind).
    pub stream_start: Lsn,
    /// The primary's end of WAL when the driver connected.
    pub end_of_wal: Lsn,
    /// The term_start_lsn whose check already had its one rewind
    /// (`Rewind::tried`).
    pub rewind_tried: Option<Lsn>,
}

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

/// What a session asks the next one to stream from, below the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindAsk {
    /// The safekeepers' WAL ends below the slot's start (after
    /// whole-cluster recovery from checkpoints): streaming must start at
    /// their end, or the commits since cannot be recovered.
    ToEnd(Lsn),
    /// The check of `term_start` wants the primary's WAL from `from`.
    ForCheck { term_start: Lsn, from: Lsn },
}

/// Why the primary is not the one the safekeepers follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PrimaryRefusal {
    #[error(
        "the primary's WAL differs from the safekeepers' at {at} (checked {from}..{to}): this \
         primary is not the one these safekeepers follow (restored from an earlier copy, run \
         with fsync off, or another cluster)"
    )]
    Differs { at: Lsn, from: Lsn, to: Lsn },
    #[error(
        "the safekeepers hold WAL up to {to}, but the primary's end of WAL is {primary_end}: this \
         primary is not the one these safekeepers follow (restored from a copy, run with fsync \
         off, or another cluster)"
    )]
    Behind { to: Lsn, primary_end: Lsn },
}

/// What the proposer does about the primary after an election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Nothing below term_start to compare (a fresh timeline, or no
    /// primary): WAL is taken at once.
    Proceed,
    /// End the session: the next one streams from lower.
    Rewind(RewindAsk),
    /// Compare `[from, term_start)` (at least; a source that trimmed gives
    /// less).
    Verify { from: Lsn, short: bool },
}

/// The plan after an election at `term_start`, for safekeepers whose WAL
/// begins at `wal_start` (their history's first entry).
pub fn plan(term_start: Lsn, wal_start: Lsn, origin: Option<&PrimaryOrigin>) -> Plan {
    let Some(o) = origin else {
        return Plan::Proceed;
    };
    if term_start < o.stream_start {
        // The slot is ahead of the safekeepers: stream again from their
        // end, if the primary still has that WAL (the next session finds
        // out). A rewound session starts at or below term_start.
        return Plan::Rewind(RewindAsk::ToEnd(term_start));
    }
    let tried = o.rewind_tried == Some(term_start);
    match check_range(term_start, o.stream_start, wal_start, tried) {
        CheckRange::Rewind { from } => Plan::Rewind(RewindAsk::ForCheck { term_start, from }),
        CheckRange::Compare { from, .. } if from >= term_start => Plan::Proceed,
        CheckRange::Compare { from, short } => Plan::Verify { from, short },
    }
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

/// The verdict on the primary's and the safekeepers' bytes of `[from, …)`:
/// equal, or where they first differ. Lengths must match too (a short
/// side is a difference at its end). With `first_half_only` (a deliberate
/// bug for the simulation) only the first half is compared.
pub fn compare(
    from: Lsn,
    primary: &[u8],
    safekeepers: &[u8],
    first_half_only: bool,
) -> Result<(), PrimaryRefusal> {
    let to = Lsn(from.0.saturating_add(safekeepers.len() as u64));
    let (p, s) = if first_half_only {
        let half = safekeepers.len() / 2;
        (&primary[..half.min(primary.len())], &safekeepers[..half])
    } else {
        (primary, safekeepers)
    };
    if p == s {
        return Ok(());
    }
    let at = p
        .iter()
        .zip(s.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(p.len().min(s.len()));
    Err(PrimaryRefusal::Differs {
        at: Lsn(from.0 + at as u64),
        from,
        to,
    })
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

/// Where the next session asks the primary to stream from, below the slot's
/// restart point, carried from one session to the next by the driver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewind {
    /// The safekeepers' WAL ends here, below the slot's start: streaming
    /// must start there.
    pub to_end: Option<Lsn>,
    /// The check of term_start `.0` wants the WAL from `.1`: the next
    /// session streams from there, once.
    pub for_check: Option<(Lsn, Lsn)>,
    /// The term_start whose check had its one rewind.
    pub tried: Option<Lsn>,
}

impl Rewind {
    /// Take what a session asked for.
    pub fn ask(&mut self, ask: RewindAsk) {
        match ask {
            RewindAsk::ToEnd(end) => self.to_end = Some(end),
            RewindAsk::ForCheck { term_start, from } => self.for_check = Some((term_start, from)),
        }
    }

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

/// The proposer's state of the check in the term it leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Verified, or nothing to verify: WAL is taken.
    Open,
    /// A member that acknowledged term_start in this term is awaited to
    /// read the safekeepers' copy from (it then holds exactly the leader's
    /// log in `[its local_start, term_start)`).
    Waiting {
        from: Lsn,
        to: Lsn,
        short: bool,
        deadline: u64,
        retry_at: u64,
    },
    /// `Action::VerifyPrimary` went out; the answer is awaited.
    Reading {
        from: Lsn,
        to: Lsn,
        source: NodeId,
        deadline: u64,
    },
    /// Refused or rewinding: nothing is taken in this term.
    Shut,
}

/// What the gate asks of the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Verify {
        term: Term,
        source: NodeId,
        from: Lsn,
        to: Lsn,
        short: bool,
    },
    Rewind(RewindAsk),
    Verified {
        from: Lsn,
        to: Lsn,
    },
    Refused(PrimaryRefusal),
}

impl Gate {
    /// The gate of a new term led from `term_start` (`now`: the
    /// proposer's clock) and the step to take at once, if any.
    pub fn elected(
        term_start: Lsn,
        wal_start: Lsn,
        origin: Option<&PrimaryOrigin>,
        now: u64,
    ) -> (Gate, Option<Step>) {
        match plan(term_start, wal_start, origin) {
            Plan::Proceed => (Gate::Open, None),
            Plan::Rewind(ask) => (Gate::Shut, Some(Step::Rewind(ask))),
            Plan::Verify { from, short } => {
                let behind = origin.is_some_and(|o| term_start > o.end_of_wal);
                let grace = if behind {
                    BEHIND_GRACE_MS
                } else {
                    STREAM_GRACE_MS
                };
                let gate = Gate::Waiting {
                    from,
                    to: term_start,
                    short,
                    deadline: now.saturating_add(grace),
                    retry_at: now,
                };
                (gate, None)
            }
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Gate::Open)
    }

    /// `node` acknowledged `flush` in `term` and stores WAL from
    /// `local_start`: the source to read the safekeepers' copy from, if
    /// one is awaited and it holds the WAL just below `to`.
    pub fn on_ack(
        &mut self,
        term: Term,
        node: NodeId,
        flush: Lsn,
        local_start: Lsn,
        now: u64,
    ) -> Option<Step> {
        let Gate::Waiting {
            from,
            to,
            short,
            deadline,
            retry_at,
        } = *self
        else {
            return None;
        };
        if flush < to || local_start >= to || now < retry_at {
            return None;
        }
        // A source that trimmed gives what it holds; less than a page
        // (when more was wanted) is a short check.
        let from_here = from.max(local_start);
        let short = short || (from_here > from && to.distance_from(from_here) < WAL_PAGE);
        *self = Gate::Reading {
            from: from_here,
            to,
            source: node,
            deadline,
        };
        Some(Step::Verify {
            term,
            source: node,
            from: from_here,
            to,
            short,
        })
    }

    /// The driver read both copies of `[from, to)` as asked.
    pub fn on_bytes(&mut self, primary: &[u8], safekeepers: &[u8], faulty: bool) -> Option<Step> {
        let Gate::Reading { from, to, .. } = *self else {
            return None;
        };
        if safekeepers.len() as u64 != to.distance_from(from) {
            // Not what was asked: read it again.
            return self.on_failed(0);
        }
        match compare(from, primary, safekeepers, faulty) {
            Ok(()) => {
                *self = Gate::Open;
                Some(Step::Verified { from, to })
            }
            Err(refusal) => {
                *self = Gate::Shut;
                Some(Step::Refused(refusal))
            }
        }
    }

    /// The read of the safekeepers' copy failed: another source (or the
    /// same) is asked after `retry_at`.
    pub fn on_failed(&mut self, retry_at: u64) -> Option<Step> {
        if let Gate::Reading {
            from, to, deadline, ..
        } = *self
        {
            *self = Gate::Waiting {
                from,
                to,
                short: false,
                deadline,
                retry_at,
            };
        }
        None
    }

    /// The primary has streamed up to `primary_end` by `now`: refused when
    /// that is still short of what the safekeepers hold past the deadline.
    pub fn on_primary_end(&mut self, primary_end: Lsn, now: u64) -> Option<Step> {
        let (to, deadline) = match *self {
            Gate::Waiting { to, deadline, .. } | Gate::Reading { to, deadline, .. } => {
                (to, deadline)
            }
            _ => return None,
        };
        if primary_end >= to || now < deadline {
            return None;
        }
        *self = Gate::Shut;
        Some(Step::Refused(PrimaryRefusal::Behind { to, primary_end }))
    }
}

#[cfg(test)]
mod tests;
