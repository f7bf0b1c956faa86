//! How long WAL from the primary waits for a majority of safekeepers: the
//! proxy's share of a commit's latency, logged every 10 s.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::lsn::Lsn;

/// How long WAL from the primary waits for a majority of safekeepers (from
/// its arrival to the commit advance that covers it: the proxy's share of a
/// commit's latency), summarised in the log every `ACK_LOG_EVERY`.
pub struct AckLatency {
    /// (end LSN of a push, when it arrived), oldest first.
    pending: VecDeque<(Lsn, Instant)>,
    /// Microseconds, since the last summary.
    samples: Vec<u32>,
    since: Instant,
}

const ACK_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pushes remembered at most (memory stays bounded when nothing commits).
const ACK_PENDING_MAX: usize = 100_000;

impl AckLatency {
    pub fn new() -> AckLatency {
        AckLatency {
            pending: VecDeque::new(),
            samples: Vec::new(),
            since: Instant::now(),
        }
    }

    pub fn pushed(&mut self, end: Lsn) {
        if self.pending.len() >= ACK_PENDING_MAX {
            self.pending.pop_front();
        }
        self.pending.push_back((end, Instant::now()));
    }

    pub fn committed(&mut self, lsn: Lsn) {
        while let Some((end, at)) = self.pending.front() {
            if *end > lsn {
                break;
            }
            let us = at.elapsed().as_micros().min(u32::MAX as u128) as u32;
            if self.samples.len() < ACK_PENDING_MAX {
                self.samples.push(us);
            }
            self.pending.pop_front();
        }
    }

    pub fn maybe_log(&mut self) {
        if self.since.elapsed() < ACK_LOG_EVERY {
            return;
        }
        self.since = Instant::now();
        if self.samples.is_empty() {
            return;
        }
        self.samples.sort_unstable();
        let n = self.samples.len();
        let at = |q: f64| self.samples[((n as f64 * q) as usize).min(n - 1)];
        tracing::info!(
            pushes = n,
            p50_us = at(0.5),
            p90_us = at(0.9),
            p99_us = at(0.99),
            max_us = self.samples[n - 1],
            "WAL from the primary to a majority's flush"
        );
        self.samples.clear();
    }
}

impl Default for AckLatency {
    fn default() -> AckLatency {
        AckLatency::new()
    }
}
