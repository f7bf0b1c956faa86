//! When a consumer should be sent to another safekeeper (ARCHITECTURE.md,
//! "3.9 The serving rule"). libpq tries the next host of a multi-host
//! conninfo only on a failed connection or SQLSTATE 57P03 before
//! authentication, so a node that may be missing committed WAL says so then,
//! and ends a stream already open on it the same way.
//!
//! The decision is `consensus::serving::may_serve`; this module keeps what
//! it needs to know of the proposer, in memory per timeline: whether a push
//! stream is open and still talking, and the commit it told along with WAL.
//! A proposer that promises heartbeats (startup option
//! `walkeeper.heartbeat_ms`, at most 1000: the proxy sends an append at
//! least every second) is held to it: once its stream has been silent for
//! [`PROPOSER_SILENCE`] the node no longer counts as following it, so a
//! node cut off from the proxy stops serving within that bound even while
//! the TCP connection looks open. A push stream without the promise (a test
//! client, a tool) counts while it is open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::consensus::serving::{may_serve, Contact, HEARTBEAT_OPTION};
use crate::id::Ttid;
use crate::lsn::Lsn;

pub const PROPOSER_SILENCE: Duration = Duration::from_secs(3);

/// Whether a push connection promised heartbeats often enough for
/// [`PROPOSER_SILENCE`] to mean it is gone.
pub fn promises_heartbeats(params: &crate::pq::connection::StartupParams) -> bool {
    params
        .option(HEARTBEAT_OPTION)
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|ms| ms > 0 && ms <= 1000)
}

#[derive(Debug, Clone)]
struct Heard {
    at: Instant,
    /// The highest commit LSN a proposer told this node.
    told_commit: Lsn,
    /// This node's flush LSN right after the last proposer message.
    flush: Lsn,
    open_streams: u32,
    /// An open stream promised heartbeats ([`HEARTBEAT_OPTION`]).
    heartbeats: bool,
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
            if h.open_streams == 0 {
                h.heartbeats = false;
            }
        }
    }
}

impl ProposerLiveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Ttid, Heard>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A push stream opened; `heartbeats`: it promised them.
    pub fn stream(self: &Arc<Self>, ttid: Ttid, heartbeats: bool) -> Stream {
        let mut map = self.lock();
        let h = map.entry(ttid).or_insert_with(|| Heard {
            at: Instant::now(),
            told_commit: Lsn::INVALID,
            flush: Lsn::INVALID,
            open_streams: 0,
            heartbeats: false,
        });
        h.open_streams += 1;
        h.at = Instant::now();
        h.heartbeats |= heartbeats;
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

    /// What this node knows of the proposer of `ttid` now. Nothing heard
    /// since this daemon started: no live proposer.
    pub fn contact(&self, ttid: Ttid) -> Contact {
        let map = self.lock();
        let Some(h) = map.get(&ttid) else {
            return Contact::default();
        };
        Contact {
            live: h.open_streams > 0 && !(h.heartbeats && h.at.elapsed() >= PROPOSER_SILENCE),
            told_commit: h.told_commit,
            flush: h.flush,
        }
    }
}

/// Why a consumer of `t` should try another safekeeper, if it should. A
/// checkpoint served as such (restored, not in whole-cluster recovery) is
/// no cluster member and serves what it holds.
pub fn refusal(shared: &super::Shared, t: &super::timelines::Timeline) -> Option<String> {
    if shared.acceptor_refusal().is_some() {
        return None;
    }
    let durable = t.durable();
    let state = durable.borrow();
    let state = state.as_ref()?;
    may_serve(state, &shared.liveness.contact(t.ttid))
        .err()
        .map(|why| {
            format!(
                "the database system is not yet accepting connections: timeline {}: {why}; try another safekeeper",
                t.ttid
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_follows_streams_and_their_heartbeats() {
        let l = Arc::new(ProposerLiveness::default());
        let t = Ttid::default();
        assert_eq!(l.contact(t), Contact::default());
        let s = l.stream(t, true);
        l.heard(t, Some(Lsn(100)), Lsn(50));
        let c = l.contact(t);
        assert!(c.live);
        assert_eq!((c.told_commit, c.flush), (Lsn(100), Lsn(50)));
        l.heard(t, None, Lsn(120));
        assert!(l.contact(t).live, "heard just now");
        // A stream that promised heartbeats, gone silent, no longer counts.
        l.lock().get_mut(&t).unwrap().at = Instant::now() - PROPOSER_SILENCE;
        assert!(!l.contact(t).live);
        drop(s);
        assert!(!l.contact(t).live, "no stream open");
        // A stream without the promise counts while it is open.
        let _s = l.stream(t, false);
        l.lock().get_mut(&t).unwrap().at = Instant::now() - PROPOSER_SILENCE;
        assert!(l.contact(t).live);
    }
}
