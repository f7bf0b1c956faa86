//! When a consumer should be sent to another safekeeper (DESIGN.md,
//! "Serving WAL", fail-over). libpq tries the next host of a multi-host
//! conninfo only on a failed connection or SQLSTATE 57P03 before
//! authentication, so a node that may be missing committed WAL says so then.
//!
//! Refused: a node that knows it is behind (its flush LSN is below the commit
//! LSN a proposer told it), and a node that has lost its proposer (no push
//! stream open and no message for 3 s) unless the last `--sync-only` settled
//! it (the durable `settled_term`/`settled_lsn` of the timeline state).
//! Proposer liveness is kept in memory per timeline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::id::Ttid;
use crate::lsn::Lsn;

pub const PROPOSER_SILENCE: Duration = Duration::from_secs(3);

#[derive(Debug, Clone)]
struct Heard {
    at: Instant,
    /// The highest commit LSN a proposer told this node.
    told_commit: Lsn,
    /// This node's flush LSN right after the last proposer message.
    flush: Lsn,
    open_streams: u32,
}

#[derive(Default)]
pub struct ProposerLiveness {
    map: Mutex<HashMap<Ttid, Heard>>,
}

/// An open push stream for one timeline; counts as hearing the proposer
/// while it lives.
pub struct Stream {
    liveness: Arc<ProposerLiveness>,
    ttid: Ttid,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let mut map = self.liveness.lock();
        if let Some(h) = map.get_mut(&self.ttid) {
            h.open_streams = h.open_streams.saturating_sub(1);
            h.at = Instant::now();
        }
    }
}

impl ProposerLiveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ttid, Heard>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stream(self: &Arc<Self>, ttid: Ttid) -> Stream {
        let mut map = self.lock();
        let h = map.entry(ttid).or_insert_with(|| Heard {
            at: Instant::now(),
            told_commit: Lsn::INVALID,
            flush: Lsn::INVALID,
            open_streams: 0,
        });
        h.open_streams += 1;
        h.at = Instant::now();
        Stream {
            liveness: self.clone(),
            ttid,
        }
    }

    /// A proposer message was handled; `flush`: this node's flush LSN after
    /// it. `told_commit` comes from appends carrying WAL only: a heartbeat's
    /// commit says nothing about WAL this node was not sent yet.
    pub fn heard(&self, ttid: Ttid, told_commit: Option<Lsn>, flush: Lsn) {
        if let Some(h) = self.lock().get_mut(&ttid) {
            h.at = Instant::now();
            if let Some(c) = told_commit {
                h.told_commit = h.told_commit.max(c);
            }
            h.flush = flush;
        }
    }

    /// Why a consumer of `ttid` should go elsewhere, if it should.
    /// `settled`: the last `--sync-only` left this node holding its commit.
    pub fn refusal(&self, ttid: Ttid, settled: bool) -> Option<String> {
        let map = self.lock();
        // Nothing heard since this daemon started: nothing known to be
        // missing, and a restarted node must serve a --sync-only'd cluster
        // with no proposer left.
        let h = map.get(&ttid)?;
        if h.flush < h.told_commit {
            return Some(format!(
                "the database system is not yet accepting connections: this safekeeper is behind on timeline {ttid} (flush {} < commit {}); try another one",
                h.flush, h.told_commit
            ));
        }
        if h.open_streams == 0 && h.at.elapsed() >= PROPOSER_SILENCE && !settled {
            return Some(format!(
                "the database system is not yet accepting connections: this safekeeper has heard no proposer for timeline {ttid} for {} s and may be missing committed WAL; try another one",
                h.at.elapsed().as_secs()
            ));
        }
        None
    }
}

/// Why a consumer of `t` should try another safekeeper, if it should.
pub fn refusal(shared: &super::Shared, t: &super::timelines::Timeline) -> Option<String> {
    let settled = t
        .durable()
        .borrow()
        .as_ref()
        .is_some_and(|s| settled_by_sync_only(s));
    shared.liveness.refusal(t.ttid, settled)
}

/// The last proposer this node followed was a `--sync-only` that counted it
/// in its settled majority (no later term since), and it holds that commit.
fn settled_by_sync_only(s: &crate::consensus::acceptor::TimelineState) -> bool {
    s.settled_lsn.is_valid() && s.settled_term == s.term && s.flush_lsn >= s.settled_lsn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_knows_it_is_behind_is_refused() {
        let l = Arc::new(ProposerLiveness::default());
        let t = Ttid::default();
        assert!(l.refusal(t, false).is_none());
        let s = l.stream(t);
        l.heard(t, Some(Lsn(100)), Lsn(50));
        assert!(l.refusal(t, false).unwrap().contains("behind"));
        l.heard(t, Some(Lsn(90)), Lsn(120));
        assert!(l.refusal(t, false).is_none());
        drop(s);
        // Lost its proposer, but only just.
        assert!(l.refusal(t, false).is_none());
    }
}
