//! Trimming WAL nobody needs any more (DESIGN.md, "Storage": the removal
//! horizon). A background task, once a second: store the slots that moved,
//! then per timeline compute the horizon, invalidate slots that would hold
//! more than `--max-wal-keep`, and trim whole segments below it through the
//! group-commit writer (appends keep flowing: a trim is one more batch).

use std::collections::HashMap;
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Bytes always kept below commit_lsn (`--wal-retention`).
    pub retention_bytes: u64,
    /// Most bytes below commit_lsn anyone may hold back (`--max-wal-keep`).
    pub max_wal_keep: u64,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            retention_bytes: 0,
            max_wal_keep: DEFAULT_MAX_WAL_KEEP,
        }
    }
}

/// `1GB`, `512MB`, `64kB`, `4096` (bytes), as PostgreSQL writes sizes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size: expected e.g. 4GB, 512MB, 0"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (use kB, MB, GB or TB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
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

/// The removal horizon: min(slots here, the peer and slot horizons the
/// proposer reports, commit_lsn − retention), but never more than
/// max_wal_keep below commit_lsn.
pub fn plan(state: &TimelineState, holders: &[(String, Lsn)], cfg: &RetentionConfig) -> Plan {
    let commit = state.commit_lsn;
    let mut horizon = Lsn(commit.0.saturating_sub(cfg.retention_bytes));
    let mut held_by = "the retention floor".to_string();
    let mut hold = |at: Lsn, what: String| {
        if at < horizon {
            horizon = at;
            held_by = what;
        }
    };
    for (name, at) in holders {
        hold(*at, format!("slot \"{name}\" at {at}"));
    }
    if state.peer_horizon_lsn.is_valid() {
        hold(
            state.peer_horizon_lsn,
            format!("the peer horizon {}", state.peer_horizon_lsn),
        );
    } else {
        // Not every member has reported in this term: any of them may still
        // need anything held here.
        hold(
            state.local_start_lsn,
            "a member not yet heard from in this term".into(),
        );
    }
    if state.slot_horizon_lsn.is_valid() {
        hold(
            state.slot_horizon_lsn,
            format!("a slot on another safekeeper at {}", state.slot_horizon_lsn),
        );
    }
    let floor = Lsn(commit.0.saturating_sub(cfg.max_wal_keep));
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

pub async fn run(shared: Arc<Shared>, cfg: RetentionConfig) {
    let mut shutdown = shared.shutdown.clone();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned: HashMap<Ttid, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => pass(&shared, &cfg, &mut warned).await,
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

async fn pass(shared: &Shared, cfg: &RetentionConfig, warned: &mut HashMap<Ttid, Instant>) {
    flush_slots(shared).await;
    let writer = shared.timelines.writer();
    for t in shared.timelines.all() {
        let Some(state) = t.durable().borrow().clone() else {
            continue;
        };
        let plan = plan(&state, &shared.slots.holders(t.ttid), cfg);
        for (name, at) in &plan.invalidate {
            let reason = format!(
                "its restart LSN {at} is more than --max-wal-keep ({} bytes) behind commit LSN {}",
                cfg.max_wal_keep, state.commit_lsn
            );
            tracing::warn!(timeline = %t.ttid, slot = %name, "invalidating replication slot: {reason}");
            if let Some(synced) = shared.slots.invalidate(writer, t.ttid, name, reason) {
                if !matches!(synced.await, Ok(Ok(()))) {
                    // Not trimming: the slot may still be valid on disk.
                    tracing::error!(timeline = %t.ttid, slot = %name, "storing the invalidated slot failed; not trimming");
                    continue;
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
                    t.poison(&format!("trimming failed: {e}"));
                }
                Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::acceptor::Acceptor;
    use crate::consensus::messages::{Greeting, ServerInfo};
    use crate::id::NodeId;

    const SEG: u32 = 1 << 24;

    fn state(commit: u64, peer: u64, slot: u64) -> TimelineState {
        let g = Greeting {
            protocol_version: crate::codec::PROTOCOL_VERSION,
            ttid: Ttid::default(),
            server: ServerInfo {
                system_id: 1,
                pg_version: 150000,
                wal_seg_size: SEG,
                tli: 1,
            },
            timeline_start_lsn: Lsn(SEG as u64),
            members: [(NodeId(1), "a:1".to_string())].into_iter().collect(),
            proposer_id: [0; 16],
            create: true,
        };
        let mut s = Acceptor::create(NodeId(1), &g).unwrap().0.state().clone();
        s.commit_lsn = Lsn(commit);
        s.flush_lsn = Lsn(commit);
        s.peer_horizon_lsn = Lsn(peer);
        s.slot_horizon_lsn = Lsn(slot);
        s
    }

    #[test]
    fn the_horizon_is_the_lowest_holder() {
        let cfg = RetentionConfig::default();
        let s = state(100 << 20, 90 << 20, 0);
        assert_eq!(plan(&s, &[], &cfg).horizon, Lsn(90 << 20));
        let p = plan(&s, &[("a".into(), Lsn(50 << 20))], &cfg);
        assert_eq!(p.horizon, Lsn(50 << 20));
        assert!(p.invalidate.is_empty());
        let s = state(100 << 20, 90 << 20, 40 << 20);
        assert_eq!(plan(&s, &[], &cfg).horizon, Lsn(40 << 20));
        // The retention floor keeps bytes below commit.
        let cfg = RetentionConfig {
            retention_bytes: 30 << 20,
            ..cfg
        };
        assert_eq!(
            plan(&state(100 << 20, 90 << 20, 0), &[], &cfg).horizon,
            Lsn(70 << 20)
        );
        // A member not heard from holds everything.
        let s = state(100 << 20, 0, 0);
        assert_eq!(plan(&s, &[], &cfg).horizon, s.local_start_lsn);
    }

    #[test]
    fn max_wal_keep_invalidates_the_slot_holding_wal_back() {
        let cfg = RetentionConfig {
            retention_bytes: 0,
            max_wal_keep: 64 << 20,
        };
        let s = state(200 << 20, 190 << 20, 0);
        let p = plan(
            &s,
            &[
                ("old".into(), Lsn(32 << 20)),
                ("new".into(), Lsn(180 << 20)),
            ],
            &cfg,
        );
        assert_eq!(p.horizon, Lsn(136 << 20));
        assert_eq!(p.invalidate, vec![("old".to_string(), Lsn(32 << 20))]);
        assert!(p.capped.unwrap().contains("old"));
    }

    #[test]
    fn sizes_parse_like_postgresql_writes_them() {
        assert_eq!(parse_size("4GB"), Ok(4 << 30));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("GB").is_err());
    }
}
