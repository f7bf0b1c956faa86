//! `--promote-check`: once the primary is gone, whether a standby may be
//! promoted without losing an acknowledged commit. The safekeepers are
//! settled first (as `--sync-only` does: the settled LSN covers every commit
//! the primary acknowledged), then the standby's replay position is compared
//! with it. A standby promoted below the settled LSN lacks acknowledged
//! commits, and its proxy would be refused (`consensus::pg_timeline`).

use std::fmt;
use std::time::{Duration, Instant};

use super::settle::Settled;
use super::{run_sync_only, Config, ProxyError};
use crate::lsn::Lsn;
use crate::pq::client::{ConnConfig, PgClient};

/// What the standby says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbyReport {
    pub in_recovery: bool,
    /// End of the last record it replayed; None before it replayed any.
    pub replay_lsn: Option<Lsn>,
    pub system_id: u64,
}

/// Whether the standby may be promoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It replayed every acknowledged commit.
    Safe { replayed: Lsn, settled: Lsn },
    /// It has not (yet) replayed up to the settled LSN.
    Behind { replayed: Option<Lsn>, settled: Lsn },
    /// It is not a standby (already promoted, or a primary).
    NotInRecovery,
    /// It is a copy of another database cluster.
    OtherSystem { standby: u64, safekeepers: u64 },
}

impl Verdict {
    pub fn is_safe(&self) -> bool {
        matches!(self, Verdict::Safe { .. })
    }

    /// Whether waiting may change the answer.
    fn may_change(&self) -> bool {
        matches!(self, Verdict::Behind { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Safe { replayed, settled } => write!(
                f,
                "safe to promote: the standby replayed up to {replayed}, at or past {settled}, the end of every acknowledged commit"
            ),
            Verdict::Behind { replayed, settled } => write!(
                f,
                "NOT safe to promote: the standby replayed up to {}, below {settled}, the end of the acknowledged commits; \
                 let it replay from the safekeepers (primary_conninfo naming them) and check again",
                replayed.map_or("nothing yet".to_string(), |l| l.to_string())
            ),
            Verdict::NotInRecovery => write!(
                f,
                "NOT a standby: the server is not in recovery (already promoted, or a primary); nothing to check"
            ),
            Verdict::OtherSystem {
                standby,
                safekeepers,
            } => write!(
                f,
                "NOT this cluster's standby: its system identifier is {standby}, the safekeepers hold WAL of {safekeepers}"
            ),
        }
    }
}

/// The rule: a standby of the same system that replayed at least up to the
/// settled LSN holds every acknowledged commit.
pub fn verdict(settled: &Settled, standby: &StandbyReport) -> Verdict {
    if standby.system_id != settled.system_id {
        return Verdict::OtherSystem {
            standby: standby.system_id,
            safekeepers: settled.system_id,
        };
    }
    if !standby.in_recovery {
        return Verdict::NotInRecovery;
    }
    match standby.replay_lsn {
        Some(replayed) if replayed >= settled.lsn => Verdict::Safe {
            replayed,
            settled: settled.lsn,
        },
        replayed => Verdict::Behind {
            replayed,
            settled: settled.lsn,
        },
    }
}

const STANDBY_QUERY: &str = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), \
     (SELECT system_identifier FROM pg_control_system())";

/// Ask the standby where it stands.
pub async fn standby_report(cfg: &ConnConfig) -> Result<StandbyReport, ProxyError> {
    let fail = |e: String| ProxyError::Fatal(format!("standby {}: {e}", cfg.address()));
    let mut client = PgClient::connect(cfg, false, "")
        .await
        .map_err(|e| fail(e.to_string()))?;
    let rows = client
        .simple_query(STANDBY_QUERY)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = client.close().await;
    parse_report(&rows).map_err(fail)
}

fn parse_report(rows: &[Vec<Option<String>>]) -> Result<StandbyReport, String> {
    let [row] = rows else {
        return Err(format!("expected one row, got {}", rows.len()));
    };
    let [Some(recovery), replay, Some(system)] = row.as_slice() else {
        return Err(format!("unexpected answer {row:?}"));
    };
    Ok(StandbyReport {
        in_recovery: recovery == "t",
        replay_lsn: replay
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|e| format!("replay LSN: {e}"))?,
        system_id: system
            .parse()
            .map_err(|_| format!("system identifier {system:?}"))?,
    })
}

/// Settle the safekeepers (within `settle_within`), then ask the standby
/// until it is safe to promote or `wait` has passed.
pub async fn run(
    cfg: Config,
    standby: ConnConfig,
    settle_within: Duration,
    wait: Duration,
) -> Result<(Settled, Verdict), ProxyError> {
    let settled = run_sync_only(cfg, settle_within).await?;
    tracing::info!(commit_lsn = %settled.lsn, "safekeepers settled; asking the standby");
    let until = Instant::now() + wait;
    loop {
        let v = verdict(&settled, &standby_report(&standby).await?);
        if !v.may_change() || Instant::now() >= until {
            return Ok((settled, v));
        }
        tracing::debug!("{v}; asking again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settled(lsn: u64) -> Settled {
        Settled {
            lsn: Lsn(lsn),
            term: 3,
            system_id: 7,
            nodes: Default::default(),
            not_settled: Default::default(),
        }
    }

    fn standby(replay: Option<u64>) -> StandbyReport {
        StandbyReport {
            in_recovery: true,
            replay_lsn: replay.map(Lsn),
            system_id: 7,
        }
    }

    #[test]
    fn safe_only_at_or_past_the_settled_lsn() {
        assert!(verdict(&settled(100), &standby(Some(100))).is_safe());
        assert!(verdict(&settled(100), &standby(Some(101))).is_safe());
        assert_eq!(
            verdict(&settled(100), &standby(Some(99))),
            Verdict::Behind {
                replayed: Some(Lsn(99)),
                settled: Lsn(100)
            }
        );
        assert!(!verdict(&settled(100), &standby(None)).is_safe());
    }

    #[test]
    fn another_system_or_a_primary_is_never_safe_and_final() {
        let other = StandbyReport {
            system_id: 8,
            ..standby(Some(200))
        };
        let v = verdict(&settled(100), &other);
        assert!(!v.is_safe() && !v.may_change(), "{v}");
        let primary = StandbyReport {
            in_recovery: false,
            ..standby(Some(200))
        };
        let v = verdict(&settled(100), &primary);
        assert_eq!(v, Verdict::NotInRecovery);
        assert!(!v.may_change());
    }

    #[test]
    fn parses_the_standbys_answer() {
        let row = |r: Option<&str>| {
            vec![vec![
                Some("t".to_string()),
                r.map(str::to_string),
                Some("7301".to_string()),
            ]]
        };
        assert_eq!(
            parse_report(&row(Some("0/3000148"))).unwrap(),
            StandbyReport {
                in_recovery: true,
                replay_lsn: Some(Lsn(0x3000148)),
                system_id: 7301
            }
        );
        assert_eq!(parse_report(&row(None)).unwrap().replay_lsn, None);
        assert!(parse_report(&row(Some("garbage"))).is_err());
        assert!(parse_report(&[]).is_err());
    }
}
