//! Trimming WAL nobody needs any more (ARCHITECTURE.md, "3.10 Slots and
//! retention horizons": the removal horizon). A background task, once a second: store the slots that moved,
//! then per timeline compute the horizon, invalidate slots that would hold
//! more than `--max-wal-keep`, and trim whole segments below it through the
//! group-commit writer (appends keep flowing: a trim is one more batch).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Shared;
use crate::consensus::acceptor::TimelineState;
use crate::id::Ttid;
use crate::lsn::Lsn;

pub const DEFAULT_MAX_WAL_KEEP: u64 = 4 << 30;
const INTERVAL: Duration = Duration::from_secs(1);
/// How often a capped horizon is logged again for one timeline.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Commit samples kept per timeline for a time-based retention: one every
/// retention / SAMPLES at most, so the floor errs (by at most that much) on
/// the side of keeping more.
const SAMPLES: u32 = 256;

/// `--wal-retention`: WAL always kept below commit_lsn, as bytes or as the
/// age of its commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The last N bytes below commit_lsn (0: none).
    Bytes(u64),
    /// WAL committed less than this long ago.
    Age(Duration),
}

impl fmt::Display for Retention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Retention::Bytes(n) => write!(f, "{n} bytes"),
            Retention::Age(d) => write!(f, "{}", format_duration(*d)),
        }
    }
}

fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    [(86400, "d"), (3600, "h"), (60, "min")]
        .iter()
        .find(|(unit, _)| secs.is_multiple_of(*unit))
        .map_or_else(
            || format!("{secs}s"),
            |(unit, name)| format!("{}{name}", secs / unit),
        )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// WAL always kept below commit_lsn (`--wal-retention`).
    pub retention: Retention,
    /// Most bytes below commit_lsn anyone may hold back (`--max-wal-keep`).
    pub max_wal_keep: u64,
}

/// The daemon's defaults: `--wal-retention 1GB`, `--max-wal-keep 4GB`.
impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            retention: Retention::Bytes(1 << 30),
            max_wal_keep: DEFAULT_MAX_WAL_KEEP,
        }
    }
}

const SIZE_UNITS: &str = "kB, MB, GB or TB";
const TIME_UNITS: &str = "ms, s, min, h or d";

/// Split `"10 min"` into its number and its unit.
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

fn size_unit(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    })
}

/// Milliseconds per unit, as PostgreSQL writes durations.
fn time_unit(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "s" => 1000,
        "min" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    })
}

/// `1GB`, `512MB`, `64kB`, `4096` (bytes), as PostgreSQL writes sizes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (n, unit) = number_and_unit(s)
        .ok_or_else(|| format!("{s:?} is not a size: expected e.g. 4GB, 512MB, 0"))?;
    let mult = size_unit(unit)
        .ok_or_else(|| format!("{s:?}: unknown size unit {unit:?} (use {SIZE_UNITS})"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// `--wal-retention`: a size (`1GB`, `512MB`, `0`) or a duration (`30s`,
/// `10min`, `1h`, `2d`), as PostgreSQL writes them. A bare number is bytes.
pub fn parse_retention(s: &str) -> Result<Retention, String> {
    let s = s.trim();
    let (n, unit) = number_and_unit(s).ok_or_else(|| {
        format!("{s:?} is neither a size nor a duration: expected e.g. 1GB, 512MB, 10min, 2d or 0")
    })?;
    if let Some(mult) = size_unit(unit) {
        return n
            .checked_mul(mult)
            .map(Retention::Bytes)
            .ok_or_else(|| format!("{s:?} is too large"));
    }
    if let Some(ms) = time_unit(unit) {
        return n
            .checked_mul(ms)
            .map(|ms| Retention::Age(Duration::from_millis(ms)))
            .ok_or_else(|| format!("{s:?} is too long"));
    }
    Err(format!(
        "{s:?}: unknown unit {unit:?}: give a size ({SIZE_UNITS}) or a duration ({TIME_UNITS}), e.g. 1GB or 10min"
    ))
}

/// When a timeline's commit_lsn was seen where: (time, commit_lsn) samples,
/// oldest first, so a time-based retention can tell what was committed long
/// enough ago. In memory only: after a restart nothing is trimmed by age
/// until the daemon has run for the retention period.
#[derive(Debug, Clone, Default)]
pub struct CommitHistory {
    samples: VecDeque<(Instant, Lsn)>,
}

impl CommitHistory {
    /// Note that at `now` the commit LSN was `commit`. A sample is kept only
    /// when the commit moved and the last one is at least `age / SAMPLES`
    /// old; samples no longer needed for a floor of `age` are dropped.
    pub fn record(&mut self, now: Instant, commit: Lsn, age: Duration) {
        let step = age / SAMPLES;
        match self.samples.back() {
            Some(&(_, last)) if commit <= last => {}
            Some(&(at, _)) if now.saturating_duration_since(at) < step => {}
            _ => self.samples.push_back((now, commit)),
        }
        // Keep the newest sample that is at least `age` old, nothing older.
        while self.samples.len() >= 2 && now.saturating_duration_since(self.samples[1].0) >= age {
            self.samples.pop_front();
        }
    }

    /// The time-based retention floor: every byte below it was committed at
    /// least `age` before `now`. None while no sample is that old (nothing
    /// may be trimmed by age yet).
    pub fn floor(&self, now: Instant, age: Duration) -> Option<Lsn> {
        self.samples
            .iter()
            .rev()
            .find(|(at, _)| now.saturating_duration_since(*at) >= age)
            .map(|(_, lsn)| *lsn)
    }
}

/// What one pass does to a timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Trim whole segments below the one holding this.
    pub horizon: Lsn,
    /// Slots on this node that would hold more than --max-wal-keep: (name,
    /// position).
    pub invalidate: Vec<(String, Lsn)>,
    /// Set when --max-wal-keep overrode the horizon: what held it.
    pub capped: Option<String>,
}

/// The retention floor of a timeline whose commit LSN is `commit`: below
/// it, `--wal-retention` keeps nothing. INVALID (keep everything) for an
/// age whose history is not that long yet.
pub fn retention_floor(
    retention: Retention,
    commit: Lsn,
    history: &CommitHistory,
    now: Instant,
) -> Lsn {
    match retention {
        Retention::Bytes(n) => Lsn(commit.0.saturating_sub(n)),
        Retention::Age(age) => history
            .floor(now, age)
            .map_or(Lsn::INVALID, |f| f.min(commit)),
    }
}

/// The removal horizon: min(slots here, the peer and slot horizons the
/// proposer reports, the retention floor), but never more than
/// max_wal_keep below commit_lsn.
pub fn plan(
    state: &TimelineState,
    holders: &[(String, Lsn)],
    retention_floor: Lsn,
    max_wal_keep: u64,
) -> Plan {
    let commit = state.commit_lsn;
    let mut horizon = retention_floor.min(commit);
    let mut held_by = "the retention floor (--wal-retention)".to_string();
    let mut hold = |at: Lsn, what: String| {
        if at < horizon {
            horizon = at;
            held_by = what;
        }
    };
    for (name, at) in holders {
        hold(*at, format!("slot \"{name}\" at {at}"));
    }
    // What the other members need, by the proposer's last report that
    // covered them all (see `TimelineState::members_horizon`).
    let members = state.members_horizon();
    let what = if !state.peer_horizon_lsn.is_valid() {
        "a member not yet heard from".to_string()
    } else if members == state.slot_horizon_lsn {
        format!("a slot on another safekeeper at {members}")
    } else {
        format!("the peer horizon {members}")
    };
    hold(members, what);
    let floor = Lsn(commit.0.saturating_sub(max_wal_keep));
    if horizon >= floor {
        return Plan {
            horizon,
            invalidate: vec![],
            capped: None,
        };
    }
    let cut = floor.segment_start(state.server.wal_seg_size);
    Plan {
        horizon: floor,
        invalidate: holders
            .iter()
            .filter(|(_, at)| *at < cut)
            .cloned()
            .collect(),
        capped: Some(held_by),
    }
}

/// Per-timeline memory of the retention task between passes.
#[derive(Default)]
struct Memory {
    /// When a capped horizon was last logged.
    warned: HashMap<Ttid, Instant>,
    /// Commit samples, for a time-based --wal-retention.
    commits: HashMap<Ttid, CommitHistory>,
}

pub async fn run(shared: Arc<Shared>, cfg: RetentionConfig) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if let Retention::Age(age) = cfg.retention {
        tracing::info!(
            "--wal-retention {}: WAL committed less than that long ago is kept; commit times are \
             remembered only while the daemon runs, so nothing is trimmed by age until it has \
             run for {} (slots and peers still hold what they need)",
            cfg.retention,
            format_duration(age)
        );
    }
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            _ = tick.tick() => pass(&shared, &cfg, &mut memory).await,
            _ = shutdown.changed() => break,
        }
    }
}

/// Store every slot whose position moved since it was last stored.
pub async fn flush_slots(shared: &Shared) {
    for (ttid, name, lsn, synced) in shared.slots.flush(shared.timelines.writer()) {
        match synced.await {
            Ok(Ok(())) => shared.slots.stored(ttid, &name, lsn),
            Ok(Err(e)) => {
                tracing::error!(timeline = %ttid, slot = %name, error = %e, "storing the slot failed")
            }
            Err(_) => {
                tracing::error!(timeline = %ttid, slot = %name, "the group-commit writer stopped")
            }
        }
    }
}

async fn pass(shared: &Shared, cfg: &RetentionConfig, memory: &mut Memory) {
    flush_slots(shared).await;
    let writer = shared.timelines.writer();
    let all = shared.timelines.all();
    memory
        .commits
        .retain(|ttid, _| all.iter().any(|t| t.ttid == *ttid));
    let warned = &mut memory.warned;
    'timelines: for t in all {
        let Some(state) = t.durable().borrow().clone() else {
            continue;
        };
        let now = Instant::now();
        let history = memory.commits.entry(t.ttid).or_default();
        if let Retention::Age(age) = cfg.retention {
            history.record(now, state.commit_lsn, age);
        }
        let floor = retention_floor(cfg.retention, state.commit_lsn, history, now);
        // A slot whose WAL is no longer stored here (the proposer re-seeded
        // this node past it) cannot be served: say so rather than report a
        // restart LSN that fails, and stop it holding WAL on the peers.
        let (gone, holders): (Vec<_>, Vec<_>) = shared
            .slots
            .holders(t.ttid)
            .into_iter()
            .partition(|(_, at)| *at < state.local_start_lsn);
        let plan = plan(&state, &holders, floor, cfg.max_wal_keep);
        let gone = gone.into_iter().map(|(name, at)| {
            let reason = format!(
                "its restart LSN {at} is below {}, the first WAL this safekeeper still stores (it was re-seeded)",
                state.local_start_lsn
            );
            (name, reason)
        });
        let too_far = plan.invalidate.iter().map(|(name, at)| {
            let reason = format!(
                "its restart LSN {at} is more than --max-wal-keep ({} bytes) behind commit LSN {}",
                cfg.max_wal_keep, state.commit_lsn
            );
            (name.clone(), reason)
        });
        for (name, reason) in gone.chain(too_far) {
            tracing::warn!(timeline = %t.ttid, slot = %name, "invalidating replication slot: {reason}");
            if let Some(synced) = shared.slots.invalidate(writer, t.ttid, &name, reason) {
                if !matches!(synced.await, Ok(Ok(()))) {
                    // Not trimming: the slot may still be valid on disk.
                    tracing::error!(timeline = %t.ttid, slot = %name, "storing the invalidated slot failed; not trimming");
                    continue 'timelines;
                }
            }
        }
        if let Some(by) = &plan.capped {
            if warned
                .get(&t.ttid)
                .is_none_or(|w| w.elapsed() >= WARN_EVERY)
            {
                warned.insert(t.ttid, Instant::now());
                tracing::warn!(timeline = %t.ttid, horizon = %plan.horizon, "{by} holds WAL more than --max-wal-keep behind commit; trimming past it");
            }
        }
        if let Some(synced) = t.trim(writer, plan.horizon) {
            match synced.await {
                Ok(Ok(())) => {
                    let s = t.current_state();
                    tracing::debug!(timeline = %t.ttid, local_start_lsn = %s.local_start_lsn, held_bytes = s.flush_lsn.0.saturating_sub(s.local_start_lsn.0), "trimmed");
                }
                Ok(Err(e)) => {
                    tracing::error!(timeline = %t.ttid, error = %e, "trimming failed");
                    t.poison(e.kind(), &format!("trimming failed: {e}"));
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(commit: u64, peer: u64, slot: u64) -> TimelineState {
        let mut s = crate::store::memory::tests_state();
        s.commit_lsn = Lsn(commit);
        s.flush_lsn = Lsn(commit);
        s.peer_horizon_lsn = Lsn(peer);
        s.slot_horizon_lsn = Lsn(slot);
        s
    }

    const KEEP: u64 = DEFAULT_MAX_WAL_KEEP;

    #[test]
    fn the_horizon_is_the_lowest_holder() {
        let none = Lsn(u64::MAX);
        let s = state(100 << 20, 90 << 20, 0);
        assert_eq!(plan(&s, &[], none, KEEP).horizon, Lsn(90 << 20));
        let p = plan(&s, &[("a".into(), Lsn(50 << 20))], none, KEEP);
        assert_eq!(p.horizon, Lsn(50 << 20));
        assert!(p.invalidate.is_empty());
        let s = state(100 << 20, 90 << 20, 40 << 20);
        assert_eq!(plan(&s, &[], none, KEEP).horizon, Lsn(40 << 20));
        // The retention floor keeps bytes below commit.
        let s = state(100 << 20, 90 << 20, 0);
        let floor = retention_floor(
            Retention::Bytes(30 << 20),
            s.commit_lsn,
            &CommitHistory::default(),
            Instant::now(),
        );
        assert_eq!(floor, Lsn(70 << 20));
        assert_eq!(plan(&s, &[], floor, KEEP).horizon, Lsn(70 << 20));
        // A member not heard from holds everything.
        let s = state(100 << 20, 0, 0);
        assert_eq!(plan(&s, &[], none, KEEP).horizon, s.local_start_lsn);
    }

    #[test]
    fn max_wal_keep_invalidates_the_slot_holding_wal_back() {
        let s = state(200 << 20, 190 << 20, 0);
        let p = plan(
            &s,
            &[
                ("old".into(), Lsn(32 << 20)),
                ("new".into(), Lsn(180 << 20)),
            ],
            s.commit_lsn,
            64 << 20,
        );
        assert_eq!(p.horizon, Lsn(136 << 20));
        assert_eq!(p.invalidate, vec![("old".to_string(), Lsn(32 << 20))]);
        assert!(p.capped.unwrap().contains("old"));
        // A time-based retention that holds everything is capped too, and
        // invalidates no slot that is within the cap.
        let p = plan(
            &s,
            &[("new".into(), Lsn(180 << 20))],
            Lsn::INVALID,
            64 << 20,
        );
        assert_eq!(p.horizon, Lsn(136 << 20));
        assert!(p.invalidate.is_empty());
        assert!(p.capped.unwrap().contains("--wal-retention"));
    }

    #[test]
    fn a_time_based_floor_is_the_commit_of_the_newest_sample_old_enough() {
        let age = Duration::from_secs(600);
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut h = CommitHistory::default();
        let floor =
            |h: &CommitHistory, now| retention_floor(Retention::Age(age), Lsn(1 << 40), h, now);
        // Before the daemon has watched commits for `age`: nothing by age.
        for sec in 0..600 {
            h.record(at(sec), Lsn(1000 + sec), age);
            assert_eq!(floor(&h, at(sec)), Lsn::INVALID, "at {sec} s");
        }
        // From then on: what was committed `age` ago (samples are at most
        // age/256 = 2.34 s apart, so the floor lags by at most that).
        for sec in 600..2000 {
            h.record(at(sec), Lsn(1000 + sec), age);
            let f = floor(&h, at(sec)).0;
            assert!(
                f <= 1000 + sec - 600,
                "at {sec} s: floor {f} keeps too little"
            );
            assert!(
                f + 3 >= 1000 + sec - 600,
                "at {sec} s: floor {f} keeps too much"
            );
        }
        assert!(
            h.samples.len() <= SAMPLES as usize + 2,
            "{}",
            h.samples.len()
        );
        // Idle: the floor reaches the last sampled commit once that is old
        // enough; the very last commit, sampled late, a little later.
        let f = floor(&h, at(2000 + 599)).0;
        assert!((2996..=2999).contains(&f), "{f}");
        h.record(at(2000 + 600), Lsn(2999), age);
        h.record(at(3300), Lsn(2999), age);
        assert_eq!(floor(&h, at(3300)), Lsn(2999));
        // Never above the commit LSN.
        assert_eq!(
            retention_floor(Retention::Age(age), Lsn(5), &h, at(5000)),
            Lsn(5)
        );
        // A zero age keeps nothing beyond the last commit seen.
        let mut h = CommitHistory::default();
        h.record(t0, Lsn(7), Duration::ZERO);
        assert_eq!(
            retention_floor(Retention::Age(Duration::ZERO), Lsn(7), &h, t0),
            Lsn(7)
        );
    }

    #[test]
    fn sizes_parse_like_postgresql_writes_them() {
        assert_eq!(parse_size("4GB"), Ok(4 << 30));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("GB").is_err());
        assert!(parse_size("10min").unwrap_err().contains("size unit"));
    }

    #[test]
    fn retention_is_a_size_or_a_duration() {
        assert_eq!(parse_retention("1GB"), Ok(Retention::Bytes(1 << 30)));
        assert_eq!(parse_retention("0"), Ok(Retention::Bytes(0)));
        assert_eq!(parse_retention("512 MB"), Ok(Retention::Bytes(512 << 20)));
        let secs = |n| Ok(Retention::Age(Duration::from_secs(n)));
        assert_eq!(parse_retention("30s"), secs(30));
        assert_eq!(parse_retention("10min"), secs(600));
        assert_eq!(parse_retention("10 min"), secs(600));
        assert_eq!(parse_retention("1h"), secs(3600));
        assert_eq!(parse_retention("2d"), secs(2 * 86400));
        assert_eq!(
            parse_retention("250ms"),
            Ok(Retention::Age(Duration::from_millis(250)))
        );
        let e = parse_retention("1 fortnight").unwrap_err();
        assert!(e.contains("\"fortnight\"") && e.contains("min"), "{e}");
        assert!(parse_retention("fortnight").is_err());
        assert!(parse_retention("-1h").is_err());
        assert!(parse_retention("99999999999999999d").is_err());
        for r in ["10min", "2d", "1h", "30s", "250ms"] {
            assert_eq!(parse_retention(r).unwrap().to_string(), r);
        }
    }
}
