//! `--sync-only`'s driver and what it reports. Which members it settled
//! and when that is enough is the proposer's decision (`consensus::settle`,
//! counted by the configuration in force).

use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

use tokio::sync::mpsc;

use super::event::Event;
use super::session::Session;
use super::{safekeepers, Config, OperatorActs, ProxyError};
use crate::id::NodeId;
use crate::lsn::Lsn;

/// `--sync-only`: elect without a primary, bring a majority to
/// term_start_lsn, commit it, and wait until that majority has persisted
/// the commit LSN; then keep bringing the other reachable members to it
/// until `others_until`. Every member that got there records the settle.
pub async fn sync_only(cfg: &Config, others_until: Instant) -> Result<Settled, ProxyError> {
    let mut last_err = String::new();
    let mut info = None;
    for (node, addr) in &cfg.members {
        match safekeepers::timeline_info(&cfg.safekeeper_conninfo, addr, cfg.ttid).await {
            Ok(i) => {
                info = Some(i);
                break;
            }
            Err(e) => last_err = format!("node {node}: {e}"),
        }
    }
    let (mut server, timeline_start) = info.ok_or_else(|| {
        ProxyError::Retry(format!(
            "no safekeeper could describe timeline {}: {last_err}",
            cfg.ttid
        ))
    })?;
    // No primary: claim no PostgreSQL timeline (members may differ on it
    // until a promoted primary's switch reached them all).
    server.tli = 0;
    let system_id = server.system_id;
    // Keep the sender alive so the primary branch of the loop just waits.
    let (_primary_tx, mut primary_rx) = mpsc::channel::<Event>(1);
    let mut s = Session::new(cfg, &OperatorActs::default(), server, timeline_start, None);
    s.others_until = Some(others_until);
    s.main_loop(&mut primary_rx).await?;
    let Some((term, lsn, settled)) = s.settled.take() else {
        return Err(ProxyError::Retry("sync ended without a result".into()));
    };
    // Tell every settled member, so each records it durably (consumer
    // fail-over and whole-cluster recovery ask for it).
    let peers = s.proposer.peers();
    let mut nodes = BTreeSet::new();
    for node in &settled {
        let Some(addr) = peers.get(node) else {
            continue;
        };
        match safekeepers::settle(&cfg.safekeeper_conninfo, addr, cfg.ttid, term, lsn).await {
            Ok(()) => {
                nodes.insert(*node);
            }
            Err(e) => tracing::warn!(node = node.0, "could not record the settle: {e}"),
        }
    }
    // Counted by the configuration in force, as the settle itself was.
    let conf = s.proposer.configuration();
    if !crate::consensus::settle::recorded(conf, &nodes) {
        return Err(ProxyError::Retry(format!(
            "only {} safekeepers recorded the settle of {lsn} in term {term}; a majority of the \
             configuration in force must",
            nodes.len()
        )));
    }
    let not_settled = conf
        .voters()
        .keys()
        .filter(|n| !nodes.contains(n))
        .copied()
        .collect();
    Ok(Settled {
        lsn,
        term,
        system_id,
        nodes,
        not_settled,
    })
}

/// The outcome of a successful `--sync-only`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub lsn: Lsn,
    pub term: u64,
    /// The PostgreSQL system identifier of the timeline's WAL.
    pub system_id: u64,
    /// Members that recorded the settle (`TIMELINE_SETTLED`).
    pub nodes: BTreeSet<NodeId>,
    /// Members that did not: unreachable, still behind, or the record
    /// failed. They refuse consumers until a proposer brings them along.
    pub not_settled: BTreeSet<NodeId>,
}

impl fmt::Display for Settled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |s: &BTreeSet<NodeId>| {
            let v: Vec<String> = s.iter().map(|n| n.0.to_string()).collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "settled at {} in term {}: nodes {}; not settled: {}",
            self.lsn,
            self.term,
            ids(&self.nodes),
            ids(&self.not_settled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_both_sets() {
        let s = super::Settled {
            system_id: 1,
            lsn: Lsn(0x8E796E8),
            term: 5,
            nodes: [NodeId(2), NodeId(3)].into(),
            not_settled: [NodeId(1)].into(),
        };
        assert_eq!(
            s.to_string(),
            "settled at 0/8E796E8 in term 5: nodes 2, 3; not settled: 1"
        );
    }
}
