//! The daemon's resource limits (issue 24): caps on connections, WAL
//! senders, replication slots and timelines, answered with PostgreSQL's
//! SQLSTATEs when reached, and the start-up and HTTP header timeouts, so no
//! client, however many sockets it opens, can take the node's memory or
//! file descriptors.
//!
//! Memory a connection can hold (README, "Limits"): a frame being read (a
//! CopyData or a query of up to 2 MiB, `pq::frame`), plus for a proposer the
//! WAL read but not yet synced ([`MAX_PUSH_IN_FLIGHT_BYTES`]), for a WAL
//! sender the WAL it read ahead (two blocks of `wal_send::READ_AHEAD`) and
//! what the client did not take yet (up to 256 KiB plus one chunk).

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// WAL a proposer connection may have read and not yet seen synced; beyond
/// it the connection stops reading, which pushes back through TCP. Twice
/// what an honest proxy keeps in flight (`ProposerConfig::max_inflight_bytes`),
/// so only a proposer that ignores its own window waits on it.
pub const MAX_PUSH_IN_FLIGHT_BYTES: usize = 32 << 20;

/// Connections over `max_connections` that are still told why (53300 after
/// their start-up packet) at one time; beyond these a new socket is closed
/// at once, so a flood cannot hold more descriptors than the caps allow.
pub const MAX_REFUSING: usize = 32;

/// The caps and timeouts, from the daemon's flags.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-connections`: sockets on the PostgreSQL-protocol port, any
    /// role, start-up included (PostgreSQL's max_connections).
    pub max_connections: usize,
    /// `--max-wal-senders`: START_REPLICATION streams of consumers
    /// (proposers' recovery reads are not counted).
    pub max_wal_senders: usize,
    /// `--max-replication-slots`: slots of every timeline together,
    /// temporary ones included.
    pub max_replication_slots: usize,
    /// `--max-timelines`: timelines a greeting may create.
    pub max_timelines: usize,
    /// `--authentication-timeout`: a socket that has not finished its
    /// start-up in this time is closed.
    pub authentication_timeout: Duration,
    /// `--max-http-connections`: open sockets on the HTTP port.
    pub max_http_connections: usize,
    /// `--http-header-timeout`: an HTTP connection that has not sent a
    /// request's headers in this time (also between requests) is closed,
    /// and a request body must arrive within it too.
    pub http_header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100,
            max_wal_senders: 10,
            max_replication_slots: 10,
            max_timelines: 1000,
            authentication_timeout: Duration::from_secs(60),
            max_http_connections: 32,
            http_header_timeout: Duration::from_secs(10),
        }
    }
}

/// One place under a cap, counted in a gauge for as long as it lives, so
/// every way out of a handler (errors included) gives it back.
pub struct Place<G: Deref<Target = AtomicU64>>(G);

impl<G: Deref<Target = AtomicU64>> Place<G> {
    /// Counted without a cap.
    pub fn count(gauge: G) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Place(gauge)
    }

    /// A place if fewer than `max` are taken.
    pub fn take(gauge: G, max: usize) -> Option<Self> {
        let max = u64::try_from(max).unwrap_or(u64::MAX);
        gauge
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(gauge))
    }
}

impl<G: Deref<Target = AtomicU64>> Drop for Place<G> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lets one log line through per `every`, and counts the ones it held back,
/// for conditions that can repeat as fast as a loop spins (a failing
/// accept).
#[derive(Debug)]
pub struct LogThrottle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    pub fn new(every: Duration) -> Self {
        LogThrottle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(lines held back since the last one)` when this one may be
    /// logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// `--authentication-timeout` and `--http-header-timeout`: a duration of
/// at least 1 s (PostgreSQL's authentication_timeout ranges 1 s to 600 s);
/// `30s`, `2min`, or bare seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    use super::retention::{parse_retention, Retention};
    let d = match (s.trim().parse::<u64>(), parse_retention(s)) {
        (Ok(secs), _) => Duration::from_secs(secs),
        (_, Ok(Retention::Age(d))) => d,
        _ => return Err(format!("{s:?} is not a duration (e.g. 60s, 2min)")),
    };
    if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
        return Err(format!("{s:?}: use 1s to 600s"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_capped_and_given_back() {
        let gauge = AtomicU64::new(0);
        let a = Place::take(&gauge, 2).unwrap();
        let b = Place::take(&gauge, 2).unwrap();
        assert!(Place::take(&gauge, 2).is_none());
        assert_eq!(gauge.load(Ordering::Relaxed), 2);
        drop(a);
        let c = Place::take(&gauge, 2).unwrap();
        drop((b, c));
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        assert!(Place::take(&gauge, 0).is_none());
    }

    #[test]
    fn the_throttle_lets_one_line_through_per_period_and_counts_the_rest() {
        let mut t = LogThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_secs(10)), Some(5));
        assert_eq!(t.allow(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn timeouts_are_durations_within_postgresqls_range() {
        assert_eq!(parse_timeout("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_timeout("2min"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("5"), Ok(Duration::from_secs(5)));
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("1h").is_err());
        assert!(parse_timeout("soon").is_err());
    }
}
