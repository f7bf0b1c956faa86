//! The proposer's side of the primary check (`consensus::primary_check`):
//! the gate opened after each election, the source it reads the
//! safekeepers' copy from, and the driver's answers.

use super::{Action, Phase, Proposer};
use crate::consensus::messages::AppendResponse;
use crate::consensus::primary_check::{Gate, Step};
use crate::consensus::settle::Settle;
use crate::consensus::term_history::Term;
use crate::id::NodeId;
use crate::lsn::Lsn;

impl From<Step> for Action {
    fn from(step: Step) -> Action {
        match step {
            Step::Verify {
                term,
                source,
                from,
                to,
                short,
            } => Action::VerifyPrimary {
                term,
                source,
                from,
                to,
                short,
            },
            Step::Rewind(ask) => Action::RewindPrimary(ask),
            Step::Verified { from, to } => Action::PrimaryVerified { from, to },
            Step::Refused(r) => Action::PrimaryRefused(r),
        }
    }
}

impl Proposer {
    /// Whether `push_wal` takes WAL now: leading, and the primary verified.
    pub fn takes_wal(&self) -> bool {
        self.is_leading() && self.gate.is_open()
    }

    /// A new term is led from `term_start`: the check of the primary (or
    /// the settle) begins.
    pub(super) fn after_election(&mut self, term_start: Lsn, out: &mut Vec<Action>) {
        let Phase::Leading(l) = &self.phase else {
            return;
        };
        let term = l.term;
        // The safekeepers' WAL begins where their history's first term
        // does (a source may have trimmed: it then gives what it holds).
        let wal_start = l.history.0.first().map_or(term_start, |e| e.lsn);
        let (gate, step) =
            Gate::elected(term_start, wal_start, self.cfg.primary.as_ref(), self.now);
        self.gate = gate;
        out.extend(step.map(Action::from));
        self.settle = self.cfg.settle.then(|| Settle::new(term, term_start));
    }

    /// `node` acknowledged in the term led: it may be the source of the
    /// check, or settled.
    pub(super) fn on_leader_ack(
        &mut self,
        term: Term,
        node: NodeId,
        a: &AppendResponse,
        out: &mut Vec<Action>,
    ) {
        if let Some(s) = self.settle.as_mut() {
            s.on_append(node, a);
        }
        let step = self
            .gate
            .on_ack(term, node, a.flush_lsn, a.local_start_lsn, self.now);
        out.extend(step.map(Action::from));
    }

    /// The driver read the primary's and `source`'s bytes of the range
    /// `Action::VerifyPrimary` asked for: the verdict.
    pub fn on_primary_check(&mut self, primary: &[u8], safekeepers: &[u8]) -> Vec<Action> {
        if !self.is_leading() {
            return Vec::new();
        }
        let faulty = self.cfg.faults.accept_diverged_primary;
        let step = self.gate.on_bytes(primary, safekeepers, faulty);
        step.map(Action::from).into_iter().collect()
    }

    /// The read from the source failed (it left the term, trimmed, is
    /// gone): another acknowledging member is asked after a heartbeat.
    pub fn on_primary_check_failed(&mut self) -> Vec<Action> {
        let retry = self.now + self.cfg.heartbeat_interval;
        self.gate.on_failed(retry);
        Vec::new()
    }

    /// The primary has streamed up to `primary_end`: refused once that is
    /// short of term_start_lsn past the grace (`primary_check`).
    pub fn on_primary_end(&mut self, primary_end: Lsn) -> Vec<Action> {
        if !self.is_leading() {
            return Vec::new();
        }
        let step = self.gate.on_primary_end(primary_end, self.now);
        step.map(Action::from).into_iter().collect()
    }
}
