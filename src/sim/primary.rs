//! The proxy's check of the primary and `--sync-only`'s settle, simulated
//! (ARCHITECTURE.md 3.8 and 3.11): the real proposer decides
//! (`consensus::primary_check`, `consensus::settle`), this module plays the
//! driver and the checker.
//!
//! Each proposer start draws its primary: in the chaos phase one in six is
//! wrong — another cluster's WAL, or a history that diverged somewhere in
//! the range the check compares — and one in five starts is a `--sync-only`
//! run instead (no primary). Checked: a wrong primary is never taken (no
//! `PrimaryVerified` for bytes other than the leader's log), the right one
//! is never refused, and a settle is reported only when a quorum of the
//! configuration in force durably holds and has committed its LSN in its
//! term, at or past every commit acknowledged in an earlier term.

use super::rng::Rng;
use super::{expected_wal, wal_byte, Check, Sim};
use crate::consensus::primary_check::PrimaryOrigin;
use crate::consensus::proposer::{Action, ProposerConfig};
use crate::consensus::term_history::Term;
use crate::id::NodeId;
use crate::lsn::Lsn;
use crate::store::Storage;

/// Which primary a proposer host streams from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// The primary the safekeepers follow: its WAL is the leader's log.
    Right,
    /// Another cluster: every byte its own.
    OtherCluster,
    /// The same cluster's WAL up to a point inside the checked range, then
    /// another history (an old primary after a fail-over).
    Diverged,
    /// `--sync-only`: no primary; settles and exits.
    SyncOnly,
}

/// How long a `--sync-only` run brings reachable members along after a
/// quorum settled (ms).
const OTHERS_MS: u64 = 2_000;

pub(super) struct Primaries {
    rng: Rng,
    /// Per host: its primary, and when its proposer started.
    hosts: Vec<(Kind, u64)>,
    pub settles: u64,
    pub refusals: u64,
}

impl Primaries {
    pub fn new(seed: u64, hosts: usize) -> Primaries {
        Primaries {
            rng: Rng::new(seed ^ 0x9121_3A11_9121_3A11),
            hosts: vec![(Kind::Right, 0); hosts],
            settles: 0,
            refusals: 0,
        }
    }
}

impl Sim {
    /// A proposer starts on host `p` with `cfg`: draw its primary.
    pub(super) fn primary_starts(&mut self, p: usize, cfg: &mut ProposerConfig) {
        let pr = &mut self.primaries;
        let kind = if self.calm {
            Kind::Right
        } else {
            match pr.rng.range(0, 30) {
                0..=2 => Kind::OtherCluster,
                3..=4 => Kind::Diverged,
                5..=10 => Kind::SyncOnly,
                _ => Kind::Right,
            }
        };
        pr.hosts[p] = (kind, self.now);
        if kind == Kind::SyncOnly {
            cfg.settle = true;
            cfg.pg_ancestors = None;
            cfg.heartbeat_interval = cfg.heartbeat_interval.min(20);
            return;
        }
        // The simulated primary keeps every WAL byte from the timeline's
        // start: the check compares up to CHECK_BYTES and never rewinds.
        cfg.primary = Some(PrimaryOrigin {
            stream_start: self.start_lsn,
            end_of_wal: Lsn::MAX,
            rewind_tried: None,
        });
    }

    /// The driver's part of the check and the settle, for one action.
    pub(super) fn on_primary_action(&mut self, p: usize, action: Action) -> Check {
        let kind = self.primaries.hosts[p].0;
        match action {
            Action::VerifyPrimary {
                term,
                source,
                from,
                to,
                ..
            } => self.verify_primary(p, kind, term, source, from, to),
            Action::PrimaryVerified { from, to } => {
                self.log(|| format!("p{p} verified its primary ({kind:?}) over {from}..{to}"));
                Ok(())
            }
            Action::PrimaryRefused(r) => {
                self.log(|| format!("p{p} refused its primary ({kind:?}): {r}"));
                if kind == Kind::Right {
                    return Err(format!(
                        "p{p} refused the primary the safekeepers follow: {r}"
                    ));
                }
                self.primaries.refusals += 1;
                self.stop_proposer(p);
                Ok(())
            }
            Action::RewindPrimary(ask) => Err(format!(
                "p{p} asked to rewind ({ask:?}) a primary that keeps all its WAL"
            )),
            Action::Settled { term, lsn, nodes } => self.check_settled(p, term, lsn, nodes),
            other => Err(format!("p{p}: {other:?} is no primary action")),
        }
    }

    fn verify_primary(
        &mut self,
        p: usize,
        kind: Kind,
        term: Term,
        source: NodeId,
        from: Lsn,
        to: Lsn,
    ) -> Check {
        let n = (source.0 - 1) as usize;
        let node = &self.nodes[n];
        // A recovery read in `term`, as the daemon serves it.
        let theirs = match (
            node.acceptor.as_ref(),
            node.storage.store.durable_state(self.ttid),
        ) {
            (Some(a), Some(d))
                if node.up
                    && a.failed().is_none()
                    && node.side == self.hosts[p].side
                    && d.serves_recovery_read(term)
                    && a.state().serves_recovery_read(term) =>
            {
                node.storage.store.read_wal(self.ttid, from, to).ok()
            }
            _ => None,
        };
        let Some(history) = self.hosts[p]
            .proposer
            .as_ref()
            .and_then(|x| x.leader_view())
            .map(|v| v.2.clone())
        else {
            return Ok(());
        };
        let log = expected_wal(&history, from, to);
        let primary: Vec<u8> = match kind {
            Kind::Right | Kind::SyncOnly => log.clone(),
            Kind::OtherCluster => (from.0..to.0)
                .map(|l| wal_byte(term ^ (1 << 40), l))
                .collect(),
            Kind::Diverged => {
                let at = self.primaries.rng.range(from.0, to.0 - 1);
                (from.0..to.0)
                    .zip(&log)
                    .map(|(l, b)| {
                        if l < at {
                            *b
                        } else {
                            wal_byte(term ^ (1 << 41), l)
                        }
                    })
                    .collect()
            }
        };
        let Some(prop) = self.hosts[p].proposer.as_mut() else {
            return Ok(());
        };
        let actions = match theirs {
            Some(theirs) => prop.on_primary_check(&primary, &theirs),
            None => prop.on_primary_check_failed(),
        };
        if primary != log
            && actions
                .iter()
                .any(|a| matches!(a, Action::PrimaryVerified { .. }))
        {
            return Err(format!(
                "p{p} in term {term} took a primary ({kind:?}) whose WAL in {from}..{to} is not \
                 the safekeepers' log"
            ));
        }
        self.apply(p, actions)
    }

    /// With `--sync-only` on host `p`: ask the proposer whether it is done.
    pub(super) fn settle_tick(&mut self, p: usize) -> Check {
        let (kind, started) = self.primaries.hosts[p];
        if kind != Kind::SyncOnly {
            return Ok(());
        }
        let reachable = self
            .conns
            .keys()
            .filter(|(h, _)| *h == p)
            .map(|(_, n)| NodeId(*n as u64 + 1))
            .collect();
        let due = self.now >= started + OTHERS_MS;
        let Some(prop) = self.hosts[p].proposer.as_mut() else {
            return Ok(());
        };
        let actions = prop.settle_due(&reachable, due);
        self.apply(p, actions)
    }

    /// A settle is true only if the members it reports are a quorum of the
    /// configuration in force that durably holds and has committed `lsn`,
    /// and `lsn` covers every commit acknowledged in an earlier term.
    fn check_settled(
        &mut self,
        p: usize,
        term: Term,
        lsn: Lsn,
        nodes: std::collections::BTreeSet<NodeId>,
    ) -> Check {
        let Some(conf) = self.hosts[p]
            .proposer
            .as_ref()
            .map(|x| x.configuration().clone())
        else {
            return Ok(());
        };
        let holders: std::collections::BTreeSet<NodeId> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, node)| {
                node.storage
                    .store
                    .durable_state(self.ttid)
                    .is_some_and(|d| d.flush_lsn >= lsn && d.commit_lsn >= lsn)
            })
            .map(|(i, _)| NodeId(i as u64 + 1))
            .collect();
        // The reported members record the settle (and serve by it): each
        // must hold it, and they must be a quorum.
        if !conf.is_quorum(&nodes) || !nodes.is_subset(&holders) {
            return Err(format!(
                "p{p} settled {lsn} in term {term} on {nodes:?} (durably holding and committed: \
                 {holders:?}): no quorum of {conf:?} that holds it"
            ));
        }
        let acked = self.committed_in_term.range(..term).map(|(_, c)| *c).max();
        if let Some(c) = acked.filter(|c| *c > lsn) {
            return Err(format!(
                "p{p} settled {lsn} in term {term}, below {c}, acknowledged in an earlier term"
            ));
        }
        self.log(|| format!("p{p} settled {lsn} in term {term} on {nodes:?}"));
        self.primaries.settles += 1;
        self.stop_proposer(p);
        Ok(())
    }
}

/// The `--fault` flags of this module's deliberate bugs, for the replay
/// command.
pub(super) fn replay_faults(f: &crate::consensus::proposer::ProposerFaults, cmd: &mut String) {
    if f.accept_diverged_primary {
        cmd.push_str(" --fault accept-diverged-primary");
    }
    if f.settle_counts_minority {
        cmd.push_str(" --fault settle-counts-minority");
    }
}
