//! Deterministic simulation of the real [`Acceptor`] and [`Proposer`] over
//! [`MemStorage`], checking the invariants of ARCHITECTURE.md
//! ("5. The simulation") after every step.
//!
//! One thread, one seeded PRNG, simulated time. The scheduler delays,
//! drops and reorders messages across connections (each connection stays
//! FIFO, like TCP), breaks and re-opens connections, partitions nodes,
//! crashes nodes (losing every unsynced write) and restarts them (at most
//! one with a wiped store, as after a disk replacement and `--init`: it
//! lacks the timeline), and crashes, starts and stops proposers. Every
//! proposer runs with `create` set, as a restarted proxy started with
//! `--create-timeline`. Every proposer writes WAL bytes
//! derived from (term, LSN), so WAL of one term never equals another's and a
//! breach of log safety shows as different bytes.
//!
//! A run has a chaos phase and then a calm phase (partitions healed, a
//! majority up, one proposer, no faults but one restart of the proxy while
//! a minority goes down, a third of the way in) in which commits must advance.

mod connections;
mod consumers;
pub mod membership;
mod primary;
pub mod rng;
pub mod storage;

pub use membership::MemberChange;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use bytes::Bytes;

use crate::codec::PROTOCOL_VERSION;
use crate::consensus::acceptor::{Acceptor, AcceptorFaults, Refusal, Reply, Seq, Write};
use crate::consensus::messages::*;
use crate::consensus::proposer::{Action, Proposer, ProposerConfig, ProposerFaults};
use crate::consensus::quorum;
use crate::consensus::term_history::{Term, TermHistory};
use crate::id::{NodeId, TenantId, TimelineId, Ttid};
use crate::lsn::Lsn;
use crate::store::Storage;
use rng::Rng;
pub use storage::DiskBugs;

/// The WAL byte the proposer of `term` writes at `lsn`.
pub fn wal_byte(term: Term, lsn: u64) -> u8 {
    let mut z = term.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ lsn.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z = (z ^ (z >> 32)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z >> 56) as u8
}

/// The WAL a log with `history` holds in `[from, to)`.
fn expected_wal(history: &TermHistory, from: Lsn, to: Lsn) -> Vec<u8> {
    let e = history.entries();
    let mut i = 0;
    (from.0..to.0)
        .map(|lsn| {
            while i + 1 < e.len() && e[i + 1].lsn.0 <= lsn {
                i += 1;
            }
            let term = e.get(i).filter(|x| x.lsn.0 <= lsn).map_or(0, |x| x.term);
            wal_byte(term, lsn)
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub seed: u64,
    /// 3 to 5 acceptors.
    pub nodes: usize,
    /// 1 to 3 proposers.
    pub proposers: usize,
    pub chaos_steps: usize,
    pub calm_steps: usize,
    pub acceptor_faults: AcceptorFaults,
    pub proposer_faults: ProposerFaults,
    /// Keep a trace of what happened, printed with a violation.
    pub trace: bool,
    /// A membership change to run (`nodes` is then the change's).
    pub change: Option<MemberChange>,
    /// Storage faults in the chaos phase: failed writes and syncs, full
    /// disks (see `storage`). Crashes keep any prefix of the unsynced
    /// writes either way.
    pub storage_faults: bool,
    pub disk_bugs: DiskBugs,
}

impl SimOptions {
    pub fn new(seed: u64, nodes: usize, proposers: usize) -> SimOptions {
        SimOptions {
            seed,
            nodes,
            proposers,
            chaos_steps: 3000,
            calm_steps: 3000,
            acceptor_faults: AcceptorFaults::default(),
            proposer_faults: ProposerFaults::default(),
            trace: false,
            change: None,
            storage_faults: true,
            disk_bugs: DiskBugs::default(),
        }
    }

    /// A run of the membership change `change`.
    pub fn with_change(seed: u64, proposers: usize, change: MemberChange) -> SimOptions {
        SimOptions {
            change: Some(change),
            ..SimOptions::new(seed, change.nodes(), proposers)
        }
    }

    /// Whether one node may come back with a wiped store: in a quarter of
    /// the seeds (a 3-node run is left with two nodes after it, which
    /// exercises less of everything else).
    pub fn wipes(&self) -> bool {
        self.seed % 4 == 1
    }

    /// The command that replays exactly this run.
    pub fn replay_command(&self) -> String {
        let mut cmd = format!(
            "cargo run --release --no-default-features --bin walkeeper-sim -- --start {} --seeds 1 --nodes {} --proposers {} --chaos-steps {} --calm-steps {}",
            self.seed, self.nodes.min(5), self.proposers, self.chaos_steps, self.calm_steps
        );
        if self.acceptor_faults.accept_append_before_elected {
            cmd.push_str(" --fault accept-append-before-elected");
        }
        if self.proposer_faults.donor_ignores_last_log_term {
            cmd.push_str(" --fault donor-ignores-last-log-term");
        }
        if self.proposer_faults.reseed_at_source_flush {
            cmd.push_str(" --fault reseed-at-source-flush");
        }
        if self.proposer_faults.create_on_every_greeting {
            cmd.push_str(" --fault create-on-every-greeting");
        }
        if self.acceptor_faults.store_unknown_slot_horizon {
            cmd.push_str(" --fault store-unknown-slot-horizon");
        }
        if self.proposer_faults.joint_counts_new_alone {
            cmd.push_str(" --fault joint-counts-new-alone");
        }
        if self.acceptor_faults.reply_before_persisted {
            cmd.push_str(" --fault reply-before-persisted");
        }
        if self.disk_bugs.retry_failed_sync {
            cmd.push_str(" --fault retry-failed-sync");
        }
        if self.disk_bugs.ignore_failed_write {
            cmd.push_str(" --fault ignore-failed-write");
        }
        if self.disk_bugs.crash_keeps_non_prefix {
            cmd.push_str(" --fault crash-keeps-non-prefix");
        }
        if !self.storage_faults {
            cmd.push_str(" --no-storage-faults");
        }
        primary::replay_faults(&self.proposer_faults, &mut cmd);
        if let Some(c) = self.change {
            cmd.push_str(" --change ");
            cmd.push_str(c.name());
        }
        cmd.push_str(" --trace");
        cmd
    }
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub step: usize,
    pub time: u64,
    pub what: String,
    pub replay: String,
    pub trace: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "seed {} step {} (t={}ms): {}\n  replay: {}",
            self.seed, self.step, self.time, self.what, self.replay
        )
    }
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub elections: u64,
    pub commit_lsn: Lsn,
    pub committed_bytes: u64,
    pub node_crashes: u64,
    pub refusals: u64,
    pub trims: u64,
    pub reseeds: u64,
    /// Nodes restarted with a wiped store.
    pub wipes: u64,
    /// Configurations made by proposers (membership changes).
    pub configurations: u64,
    /// Proposer hosts whose configuration in force at the end is their
    /// own member list, not joint.
    pub changes_done: u64,
    /// Failed writes and syncs, refused writes of a full disk.
    pub storage_failures: u64,
    /// Late messages of replaced push connections the nodes heard (their
    /// connection was still the newest claim) and refused (superseded).
    pub late_heard: u64,
    pub late_refused: u64,
}

struct Node {
    up: bool,
    /// Its store was wiped once: it may lack the timeline (acceptor None
    /// while up).
    wiped: bool,
    storage: storage::Disk,
    acceptor: Option<Acceptor>,
    /// Where the replies the acceptor holds go, by ready set: (proposer,
    /// connection id, truncations staged when it was handled).
    routes: BTreeMap<Seq, (usize, u64, u64)>,
    /// The last ready set whose writes went to storage, and the last one
    /// synced (what `on_persisted` is told).
    staged_seq: Seq,
    synced_seq: Seq,
    /// Truncations staged so far: a reply followed by a truncation in the
    /// same batch may claim WAL the batch removes (it goes to a stale
    /// proposer, which only reads its term).
    truncations: u64,
    side: u8,
    mem_term: Term,
    mem_commit: Lsn,
    durable_term: Term,
    durable_commit: Lsn,
    /// Committed WAL below this was compared with the reference.
    verified_to: Lsn,
    /// A consumer's durable slot on this node: the position it has
    /// confirmed (stored at once). None: no slot, or invalidated because
    /// this node no longer holds its WAL.
    slot: Option<Lsn>,
    /// What it heard from proposers since it last started.
    heard: consumers::Heard,
    /// Gone for good (a membership change replaces it).
    dead: bool,
    /// Which push connection of each proposer it hears.
    claims: crate::consensus::claims::Claims,
}

impl Node {
    /// A new acceptor (restored, created, or none) holds no reply and
    /// numbers its ready sets from 1 again.
    fn forget_replies(&mut self) {
        self.routes.clear();
        self.staged_seq = 0;
        self.synced_seq = 0;
        self.claims = Default::default();
    }
}

struct Host {
    proposer: Option<Proposer>,
    incarnation: u64,
    active: bool,
    side: u8,
    backoff_until: u64,
    term: Term,
    commit: Lsn,
    /// The configuration its proposer counts by, as of the actions applied
    /// so far (a commit is checked against the one it was counted by).
    conf: Option<crate::consensus::membership::Configuration>,
}

struct Conn {
    id: u64,
    to_node: VecDeque<(u64, ProposerMessage)>,
    to_prop: VecDeque<(u64, AcceptorMessage)>,
    /// The node's side of it, as the claim rule sees it.
    claim: crate::consensus::claims::Claim,
}

struct Read {
    due: u64,
    p: usize,
    incarnation: u64,
    id: u64,
    donor: usize,
    term: Term,
    start: Lsn,
    end: Lsn,
}

struct Sim {
    opts: SimOptions,
    rng: Rng,
    /// Consumers' slots draw from their own stream, so the scheduler's
    /// choices stay those of the seed.
    slot_rng: Rng,
    now: u64,
    step: usize,
    calm: bool,
    ttid: Ttid,
    start_lsn: Lsn,
    cfg: ProposerConfig,
    nodes: Vec<Node>,
    hosts: Vec<Host>,
    conns: BTreeMap<(usize, usize), Conn>,
    next_conn: u64,
    reconnect_at: BTreeMap<(usize, usize), u64>,
    lingering: Vec<connections::Lingering>,
    reads: Vec<Read>,
    /// Committed WAL from `start_lsn` on, as first seen committed anywhere.
    reference: Vec<u8>,
    votes: BTreeMap<(usize, Term), usize>,
    /// Highest commit a proposer reported in each term.
    committed_in_term: BTreeMap<Term, Lsn>,
    leaders: BTreeMap<Term, (usize, u64)>,
    /// Nodes that go down during the calm phase (see `mid_calm`).
    calm_down: Vec<usize>,
    /// The proposer host of the calm phase.
    calm_keep: usize,
    trace: VecDeque<String>,
    out: Outcome,
    primaries: primary::Primaries,
}

type Check = Result<(), String>;

/// Run one seeded simulation.
pub fn run(opts: &SimOptions) -> Result<Outcome, Violation> {
    let mut sim = Sim::new(opts.clone());
    let total = opts.chaos_steps + opts.calm_steps;
    let mut calm_base = Lsn::INVALID;
    let mut consumers_reached: Check =
        Err("the calm phase was too short to check consumers".into());
    for step in 0..total {
        sim.step = step;
        if step == opts.chaos_steps {
            calm_base = sim.begin_calm();
        }
        if step > opts.chaos_steps {
            sim.mid_calm(step - opts.chaos_steps);
        }
        if step == opts.chaos_steps / 3 {
            sim.kill_for_good();
        }
        if let Err(what) = sim.step_once().and_then(|_| sim.check_nodes()) {
            return Err(sim.violation(what));
        }
        if step >= opts.chaos_steps + opts.calm_steps * 2 / 3 && consumers_reached.is_err() {
            consumers_reached = sim.check_consumers(calm_base);
        }
    }
    // Progress: a majority up and connected to one proposer for the whole
    // calm phase must have committed WAL beyond what was committed before.
    let best = sim.hosts.iter().map(|h| h.commit).max().unwrap_or_default();
    if best <= calm_base {
        let what = format!(
            "no progress: commit stuck at {} through {} calm steps ({} ms)",
            calm_base, opts.calm_steps, sim.now
        );
        return Err(sim.violation(what));
    }
    // Consumers: in the last third of the calm phase, at some step every
    // node up serves what was committed before it, or hands its consumers
    // off to one that does (earlier, a node may still serve the commit it
    // knows while the new term is being elected).
    if let Err(what) = consumers_reached {
        return Err(sim.violation(what));
    }
    sim.out.commit_lsn = sim
        .start_lsn
        .max(Lsn(sim.start_lsn.0 + sim.reference.len() as u64));
    sim.out.committed_bytes = sim.reference.len() as u64;
    if let Some(c) = opts.change {
        sim.out.changes_done = sim
            .hosts
            .iter()
            .enumerate()
            .filter_map(|(p, h)| h.proposer.as_ref().map(|x| (p, x.configuration())))
            .filter(|(p, conf)| {
                !conf.is_joint()
                    && crate::consensus::membership::same_ids(&conf.members, &c.target(*p))
            })
            .count() as u64;
    }
    Ok(sim.out)
}

impl Sim {
    fn new(opts: SimOptions) -> Sim {
        let mut rng = Rng::new(opts.seed);
        let mut slot_rng = Rng::new(opts.seed ^ 0x510F_510F_510F_510F);
        let ttid = Ttid::new(TenantId([0x11; 16]), TimelineId([0x22; 16]));
        let server = ServerInfo {
            system_id: 7_000_000_000_000_000_001,
            pg_version: 150_000,
            wal_seg_size: 1 << 20,
            tli: 1,
        };
        let start_lsn = Lsn(1 << 24);
        let all_nodes = opts.change.map_or(opts.nodes, |c| c.nodes());
        let members: Members = match opts.change {
            Some(c) => c.initial(),
            None => membership::members(&(1..=opts.nodes as u64).collect::<Vec<_>>()),
        };
        let greeting = Greeting {
            conf: None,
            protocol_version: PROTOCOL_VERSION,
            ttid,
            server,
            timeline_start_lsn: start_lsn,
            members: members.clone(),
            proposer_id: [0; 16],
            create: true,
            pg_ancestors: Vec::new(),
        };
        // The timeline exists on every member before any proposer runs, as
        // `--create-timeline` with every member reachable leaves it.
        let nodes = (0..all_nodes)
            .map(|i| {
                let id = NodeId(i as u64 + 1);
                let mut storage = storage::Disk::new(opts.seed ^ 0xD15C ^ ((i as u64) << 32));
                // A node outside the initial members starts without the
                // timeline (a fresh store), as a wiped one does.
                let acceptor = members.contains_key(&id).then(|| {
                    let (mut acceptor, ready) =
                        Acceptor::create(id, &greeting).expect("valid greeting");
                    acceptor.faults = opts.acceptor_faults;
                    storage
                        .store
                        .write(ttid, &ready.writes)
                        .expect("memory store");
                    storage.store.sync().expect("memory store");
                    // Set up before the run: the greeting's reply goes nowhere.
                    let _ = acceptor.on_persisted(ready.seq);
                    acceptor
                });
                Node {
                    up: true,
                    wiped: acceptor.is_none(),
                    dead: false,
                    storage,
                    acceptor,
                    routes: BTreeMap::new(),
                    staged_seq: 0,
                    synced_seq: 0,
                    truncations: 0,
                    side: 0,
                    mem_term: 0,
                    mem_commit: start_lsn,
                    durable_term: 0,
                    durable_commit: start_lsn,
                    verified_to: start_lsn,
                    slot: (slot_rng.chance(50) && members.contains_key(&id)).then_some(start_lsn),
                    heard: consumers::Heard::default(),
                    claims: Default::default(),
                }
            })
            .collect();
        let mut cfg = ProposerConfig::new(ttid, server, start_lsn, members.clone());
        cfg.create = true;
        cfg.heartbeat_interval = 50;
        // Commit advances told with the next WAL, after a delay, or at once
        // (from the seed, so the random stream stays as it was).
        cfg.commit_tell_delay = [5, 0, 30][(opts.seed % 3) as usize];
        cfg.response_timeout = 400;
        cfg.election_timeout = 400;
        cfg.max_append_bytes = 256;
        cfg.max_inflight_bytes = 2048;
        cfg.max_buffer_bytes = 1024;
        cfg.faults = opts.proposer_faults;
        let hosts = (0..opts.proposers)
            .map(|i| Host {
                proposer: None,
                incarnation: 0,
                active: i == 0 || rng.chance(50),
                side: 0,
                backoff_until: rng.range(0, 100),
                term: 0,
                commit: Lsn::INVALID,
                conf: None,
            })
            .collect();
        Sim {
            primaries: primary::Primaries::new(opts.seed, opts.proposers),
            opts,
            rng,
            slot_rng,
            now: 0,
            step: 0,
            calm: false,
            ttid,
            start_lsn,
            cfg,
            nodes,
            hosts,
            conns: BTreeMap::new(),
            next_conn: 1,
            reconnect_at: BTreeMap::new(),
            lingering: Vec::new(),
            reads: Vec::new(),
            reference: Vec::new(),
            votes: BTreeMap::new(),
            committed_in_term: BTreeMap::new(),
            leaders: BTreeMap::new(),
            calm_down: Vec::new(),
            calm_keep: 0,
            trace: VecDeque::new(),
            out: Outcome::default(),
        }
    }

    fn violation(&self, what: String) -> Violation {
        Violation {
            seed: self.opts.seed,
            step: self.step,
            time: self.now,
            what,
            replay: self.opts.replay_command(),
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.opts.trace {
            let line = format!("[{} t={}] {}", self.step, self.now, line());
            self.trace.push_back(line);
            if self.trace.len() > 4000 {
                self.trace.pop_front();
            }
        }
    }

    fn majority(&self) -> usize {
        quorum::majority(self.nodes.len())
    }

    fn begin_calm(&mut self) -> Lsn {
        self.calm = true;
        self.log(|| "calm phase begins".into());
        for n in 0..self.nodes.len() {
            self.nodes[n].side = 0;
            self.nodes[n].storage.free();
            let failed = self.nodes[n]
                .acceptor
                .as_ref()
                .is_some_and(|a| a.failed().is_some());
            if failed {
                // The operator restarts a node whose storage failed.
                self.crash_node(n);
            }
            if !self.nodes[n].up {
                self.restart_node(n).ok();
            }
        }
        // At most a minority goes down (a wiped node counts), a third of the
        // way into the calm phase (see `mid_calm`); none while members
        // change (the new ones may not hold the WAL yet).
        let wiped = self.nodes.iter().filter(|n| n.wiped).count();
        let spare = (self.nodes.len() - self.majority()).saturating_sub(wiped);
        let spare = if self.opts.change.is_some() { 0 } else { spare };
        let down = self.rng.below(spare as u64 + 1);
        self.calm_down = (0..down)
            .map(|_| self.rng.below(self.nodes.len() as u64) as usize)
            .collect();
        let keep = self.rng.below(self.hosts.len() as u64) as usize;
        self.calm_keep = keep;
        for p in 0..self.hosts.len() {
            self.hosts[p].side = 0;
            if p != keep {
                self.stop_proposer(p);
                self.hosts[p].active = false;
            }
        }
        self.hosts[keep].active = true;
        self.lingering.clear();
        let conns: Vec<(usize, usize)> = self.conns.keys().copied().collect();
        for (p, n) in conns {
            self.reconnect_at.insert((p, n), 0);
        }
        self.hosts
            .iter()
            .map(|h| h.commit)
            .max()
            .unwrap_or_default()
    }

    /// Whether a consumer reaches `committed` (the commit before the calm
    /// phase) now on every node up, or is handed off to one where it does.
    fn check_consumers(&self, committed: Lsn) -> Check {
        let mut serving = Vec::new();
        for (n, node) in self.nodes.iter().enumerate() {
            if !node.up {
                continue;
            }
            let Some(state) = node.storage.store.durable_state(self.ttid) else {
                continue;
            };
            let open = self
                .conns
                .keys()
                .any(|&(p, m)| m == n && self.hosts[p].active);
            serving.push(consumers::Serving {
                node: n,
                state,
                contact: node.heard.contact(self.now, open),
            });
        }
        consumers::check_reach(&serving, committed)
    }

    /// A third of the way through the calm phase the nodes chosen at its
    /// start go down and the operator restarts the proxy: its new term begins with
    /// members it cannot hear from, after terms that heard every member,
    /// so slots there must still hold.
    fn mid_calm(&mut self, steps_in: usize) {
        if steps_in != self.opts.calm_steps / 3 {
            return;
        }
        for n in std::mem::take(&mut self.calm_down) {
            if self.nodes[n].up && !self.nodes[n].wiped {
                self.crash_node(n);
            }
        }
        self.log(|| "the operator restarts the proxy".into());
        self.stop_proposer(self.calm_keep);
    }

    fn step_once(&mut self) -> Check {
        if self.opts.storage_faults && !self.calm {
            self.fill_disks();
        }
        let r = self.rng.below(1000);
        match r {
            0..=449 => self.deliver_any(),
            450..=579 => {
                let n = self.rng.below(self.nodes.len() as u64) as usize;
                self.sync_node(n)
            }
            580..=699 => {
                let p = self.rng.below(self.hosts.len() as u64) as usize;
                self.push_wal(p)
            }
            700..=719 => {
                let n = self.rng.below(self.nodes.len() as u64) as usize;
                self.trim_node(n)
            }
            720..=899 => {
                let dt = self.rng.range(1, 12);
                self.advance(dt)
            }
            _ if self.calm => {
                let dt = self.rng.range(1, 12);
                self.advance(dt)
            }
            900..=929 => {
                if let Some(&(p, n)) = self.pick_conn() {
                    self.log(|| format!("break connection p{p}-n{}", n + 1));
                    self.cut_conn(p, n)?;
                }
                Ok(())
            }
            930..=944 => {
                let n = self.rng.below(self.nodes.len() as u64) as usize;
                if self.nodes[n].up {
                    self.crash_node(n);
                }
                Ok(())
            }
            945..=964 => {
                let n = self.rng.below(self.nodes.len() as u64) as usize;
                if !self.nodes[n].up {
                    self.restart_node(n)?;
                }
                Ok(())
            }
            965..=974 => self.drop_message(),
            975..=984 => self.partition(),
            985..=989 => {
                self.log(|| "heal partition".into());
                for n in &mut self.nodes {
                    n.side = 0;
                }
                for h in &mut self.hosts {
                    h.side = 0;
                }
                Ok(())
            }
            990..=994 => {
                let p = self.rng.below(self.hosts.len() as u64) as usize;
                self.log(|| format!("proposer p{p} crashes"));
                self.stop_proposer(p);
                Ok(())
            }
            _ => {
                let p = self.rng.below(self.hosts.len() as u64) as usize;
                let active = self.hosts.iter().filter(|h| h.active).count();
                if self.hosts[p].active && active > 1 {
                    self.log(|| format!("proposer p{p} stops"));
                    self.stop_proposer(p);
                    self.hosts[p].active = false;
                } else if !self.hosts[p].active {
                    self.log(|| format!("proposer p{p} activated"));
                    self.hosts[p].active = true;
                }
                Ok(())
            }
        }
    }

    /// Sometimes a node's disk fills up for a while (drawn from the disks'
    /// own random streams).
    fn fill_disks(&mut self) {
        for n in 0..self.nodes.len() {
            let disk = &mut self.nodes[n].storage;
            if disk.fills_now() {
                let until = self.now + disk.draw(20, 400);
                disk.fill(until);
                self.log(|| format!("n{}'s disk is full until t={until}", n + 1));
            }
        }
    }

    /// Retention on one node: either below what the members and its own
    /// slot need (the peer and slot horizons the proposer reported), or,
    /// as `--max-wal-keep` does, at any point up to its commit_lsn, so a
    /// lagging peer may need WAL no node holds any more and must be
    /// re-seeded, and a slot may lose its WAL.
    fn trim_node(&mut self, n: usize) -> Check {
        let peer_horizon = self.rng.chance(50);
        let back = self.rng.range(0, 4096);
        let ttid = self.ttid;
        let node = &mut self.nodes[n];
        let Some(acceptor) = node.acceptor.as_mut() else {
            return Ok(());
        };
        let s = acceptor.state();
        let below = if peer_horizon {
            let own = node.slot.unwrap_or(Lsn(u64::MAX));
            s.members_horizon().min(own)
        } else {
            Lsn(s.commit_lsn.0.saturating_sub(back))
        };
        if !below.is_valid() {
            return Ok(());
        }
        let Some(ready) = acceptor.trim(below) else {
            return Ok(());
        };
        let to = acceptor.state().local_start_lsn;
        let faults = self.opts.storage_faults && !self.calm;
        if let Err(e) = node.storage.write(ttid, &ready.writes, self.now, faults) {
            return self.storage_failed(n, "a trim's write", &e);
        }
        let node = &mut self.nodes[n];
        node.staged_seq = ready.seq;
        {
            self.out.trims += 1;
            self.log(|| format!("n{} trims below {to}", n + 1));
            if peer_horizon {
                self.check_slots_held(n, to)?;
            }
        }
        Ok(())
    }

    /// Sometimes a consumer confirms WAL on node `n` (after its sync): its
    /// slot moves up to some point of that node's durable commit.
    fn move_slot(&mut self, n: usize) {
        if !self.slot_rng.chance(50) {
            return;
        }
        let pick = self.slot_rng.next_u64();
        let node = &mut self.nodes[n];
        let (Some(at), true) = (node.slot, node.up) else {
            return;
        };
        let commit = node.durable_commit;
        if commit > at {
            let to = Lsn(at.0 + pick % (commit.0 - at.0 + 1));
            node.slot = Some(to);
            self.log(|| format!("slot on n{} confirms {to}", n + 1));
        }
    }

    /// A trim by the horizons (not `--max-wal-keep`) keeps what every
    /// member's slot needs: a consumer that fails over from its node to
    /// this one must find its WAL.
    /// Slots of nodes a membership change removed (or of a dead one) are
    /// held no more: only members of the trimming node's configuration and
    /// of the newest one stored anywhere count.
    fn check_slots_held(&self, n: usize, local_start: Lsn) -> Check {
        let Some(own) = self.nodes[n]
            .acceptor
            .as_ref()
            .map(|a| a.state().configuration())
        else {
            return Ok(());
        };
        let newest = self
            .nodes
            .iter()
            .filter_map(|x| x.storage.store.durable_state(self.ttid))
            .map(|s| s.configuration())
            .max_by_key(|c| c.generation)
            .unwrap_or_else(|| own.clone());
        for (m, node) in self.nodes.iter().enumerate() {
            let id = NodeId(m as u64 + 1);
            if node.dead || !own.contains(id) || !newest.contains(id) {
                continue;
            }
            if let Some(at) = node.slot.filter(|at| *at < local_start) {
                return Err(format!(
                    "node {} trimmed below {local_start} by its horizons, past node {}'s slot at {at}",
                    n + 1,
                    m + 1
                ));
            }
        }
        Ok(())
    }

    fn pick_conn(&mut self) -> Option<&(usize, usize)> {
        let keys: Vec<(usize, usize)> = self.conns.keys().copied().collect();
        let k = self.rng.pick(&keys)?;
        self.conns.get_key_value(&k).map(|(k, _)| k)
    }

    fn partition(&mut self) -> Check {
        for n in &mut self.nodes {
            n.side = self.rng.below(2) as u8;
        }
        for h in &mut self.hosts {
            h.side = self.rng.below(2) as u8;
        }
        let sides: Vec<u8> = self.nodes.iter().map(|n| n.side).collect();
        self.log(|| format!("partition nodes {sides:?}"));
        let cut: Vec<(usize, usize)> = self
            .conns
            .keys()
            .filter(|(p, n)| self.hosts[*p].side != self.nodes[*n].side)
            .copied()
            .collect();
        for (p, n) in cut {
            self.cut_conn(p, n)?;
        }
        Ok(())
    }

    fn drop_message(&mut self) -> Check {
        let Some(&(p, n)) = self.pick_conn() else {
            return Ok(());
        };
        let to_node = self.rng.chance(50);
        let pick = self.rng.next_u64();
        let conn = self.conns.get_mut(&(p, n)).expect("picked");
        let dropped = if to_node && !conn.to_node.is_empty() {
            let i = (pick % conn.to_node.len() as u64) as usize;
            conn.to_node
                .remove(i)
                .map(|m| format!("{:?}", kind_p(&m.1)))
        } else if !conn.to_prop.is_empty() {
            let i = (pick % conn.to_prop.len() as u64) as usize;
            conn.to_prop.remove(i).map(|m| format!("{:?}", m.1))
        } else {
            None
        };
        if let Some(d) = dropped {
            self.log(|| format!("drop p{p}-n{}: {d}", n + 1));
        }
        Ok(())
    }

    /// The node a membership change replaces dies for good.
    fn kill_for_good(&mut self) {
        let Some(n) = self.opts.change.and_then(|c| c.dies()) else {
            return;
        };
        self.log(|| format!("node {} dies for good", n + 1));
        if self.nodes[n].up {
            self.crash_node(n);
        }
        self.nodes[n].dead = true;
    }

    fn stop_proposer(&mut self, p: usize) {
        let conns: Vec<(usize, usize)> = self.conns.keys().filter(|k| k.0 == p).copied().collect();
        for k in conns {
            self.conns.remove(&k);
        }
        self.reads.retain(|r| r.p != p);
        let h = &mut self.hosts[p];
        h.proposer = None;
        h.incarnation += 1;
        h.term = 0;
        h.commit = Lsn::INVALID;
        h.conf = None;
        h.backoff_until = self.now + 50;
    }

    fn crash_node(&mut self, n: usize) {
        let (unsynced, kept) = self.nodes[n].storage.crash(self.opts.disk_bugs);
        self.log(|| {
            format!(
                "node {} crashes (of {unsynced} unsynced write calls {kept} reached the disk)",
                n + 1
            )
        });
        self.out.node_crashes += 1;
        let node = &mut self.nodes[n];
        node.acceptor = None;
        node.up = false;
        node.forget_replies();
        node.heard = consumers::Heard::default();
        self.lingering.retain(|l| l.n != n);
        let conns: Vec<(usize, usize)> = self.conns.keys().filter(|k| k.1 == n).copied().collect();
        for (p, n) in conns {
            // Cannot fail: the proposer side only forgets the connection.
            let _ = self.close_conn(p, n);
        }
    }

    fn restart_node(&mut self, n: usize) -> Check {
        self.nodes[n].forget_replies();
        let id = NodeId(n as u64 + 1);
        if self.nodes[n].dead {
            return Ok(());
        }
        // At most one node, in the chaos phase, comes back with a new empty
        // store under its old id.
        if self.opts.wipes()
            && !self.calm
            && !self.nodes.iter().any(|x| x.wiped)
            && self.rng.chance(5)
        {
            self.wipe_node(n);
            return Ok(());
        }
        let states = self.nodes[n]
            .storage
            .store
            .timelines()
            .map_err(|e| e.to_string())?;
        let Some(state) = states.into_iter().find(|s| s.ttid == self.ttid) else {
            if self.nodes[n].wiped {
                // Still without the timeline.
                self.nodes[n].up = true;
                self.log(|| format!("node {id} restarts, without the timeline"));
                return Ok(());
            }
            return Err(format!("node {id}: timeline lost across a crash"));
        };
        let node = &mut self.nodes[n];
        if state.term < node.durable_term {
            return Err(format!(
                "node {id}: term {} after restart, below durable {}",
                state.term, node.durable_term
            ));
        }
        if state.commit_lsn < node.durable_commit {
            return Err(format!(
                "node {id}: commit {} after restart, below durable {}",
                state.commit_lsn, node.durable_commit
            ));
        }
        // What survived a crash is a prefix of what was written: the log
        // the state describes is held whole, and its committed part is
        // checked against the reference again.
        if let Err(e) =
            node.storage
                .store
                .read_wal(self.ttid, state.local_start_lsn, state.flush_lsn)
        {
            return Err(format!(
                "node {id} restarts with a log it does not hold whole ({}..{}): {e}",
                state.local_start_lsn, state.flush_lsn
            ));
        }
        node.mem_term = state.term;
        node.mem_commit = state.commit_lsn;
        node.verified_to = state.local_start_lsn;
        let mut acceptor = Acceptor::restore(id, state);
        acceptor.faults = self.opts.acceptor_faults;
        node.acceptor = Some(acceptor);
        node.up = true;
        self.log(|| format!("node {id} restarts"));
        Ok(())
    }

    /// The node's disk was replaced: it starts with an empty store under its
    /// old id. What it durably held, votes included, is gone; only the
    /// record of its votes (`votes`) remembers them, to catch a second one.
    fn wipe_node(&mut self, n: usize) {
        self.log(|| format!("node {} restarts with a wiped store", n + 1));
        self.out.wipes += 1;
        let start = self.start_lsn;
        let node = &mut self.nodes[n];
        node.storage.wipe();
        node.acceptor = None;
        node.wiped = true;
        node.up = true;
        // Its consumer's slot went with the store.
        node.slot = None;
        node.forget_replies();
        node.mem_term = 0;
        node.mem_commit = start;
        node.durable_term = 0;
        node.durable_commit = start;
        node.verified_to = start;
    }

    /// The node refused a greeting: it lacks the timeline.
    fn refuse_no_timeline(&mut self, p: usize, n: usize) -> Check {
        if self.conns.remove(&(p, n)).is_none() {
            return Ok(());
        }
        let delay = self.rng.range(5, 60);
        self.reconnect_at.insert((p, n), self.now + delay);
        let Some(prop) = self.hosts[p].proposer.as_mut() else {
            return Ok(());
        };
        let actions = prop.on_no_timeline(NodeId(n as u64 + 1));
        self.apply(p, actions)
    }

    /// The link of connection (p, n) is cut: the proposer gives up on it,
    /// but in the chaos phase what it sent may linger and arrive late.
    fn cut_conn(&mut self, p: usize, n: usize) -> Check {
        let extra = self.rng.range(20, 250);
        if let Some(c) = self
            .conns
            .get_mut(&(p, n))
            .filter(|c| !c.to_node.is_empty())
        {
            if !self.calm && self.nodes[n].up && extra.is_multiple_of(2) {
                let to_node = std::mem::take(&mut c.to_node)
                    .into_iter()
                    .map(|(due, m)| (due + extra, m))
                    .collect();
                self.lingering.push(connections::Lingering {
                    p,
                    n,
                    id: c.id,
                    to_node,
                    side: c.claim,
                });
            }
        }
        self.close_conn(p, n)
    }

    fn close_conn(&mut self, p: usize, n: usize) -> Check {
        if self.conns.remove(&(p, n)).is_none() {
            return Ok(());
        }
        let delay = self.rng.range(5, 60);
        self.reconnect_at.insert((p, n), self.now + delay);
        if let Some(prop) = self.hosts[p].proposer.as_mut() {
            prop.on_disconnected(NodeId(n as u64 + 1));
        }
        Ok(())
    }

    fn delay(&mut self) -> u64 {
        if self.rng.chance(10) {
            self.rng.range(10, 80)
        } else {
            self.rng.range(0, 8)
        }
    }

    fn deliver_any(&mut self) -> Check {
        // Any connection's head that is due may go next: that reorders
        // messages across connections, never within one.
        let mut ready = Vec::new();
        for (&(p, n), c) in &self.conns {
            if c.to_node.front().is_some_and(|m| m.0 <= self.now) {
                ready.push((p, n, true));
            }
            if c.to_prop.front().is_some_and(|m| m.0 <= self.now) {
                ready.push((p, n, false));
            }
        }
        let live = ready.len();
        for (i, l) in self.lingering.iter().enumerate() {
            if l.to_node.front().is_some_and(|m| m.0 <= self.now) {
                ready.push((i, l.n, true));
            }
        }
        let Some(k) = self.rng.pick(&(0..ready.len()).collect::<Vec<_>>()) else {
            return Ok(());
        };
        match ready[k] {
            (i, _, _) if k >= live => self.deliver_late(i),
            (p, n, true) => self.deliver_to_node(p, n),
            (p, n, false) => self.deliver_to_proposer(p, n),
        }
    }

    fn deliver_to_node(&mut self, p: usize, n: usize) -> Check {
        let conn = self.conns.get_mut(&(p, n)).expect("ready");
        let cid = conn.id;
        let (_, msg) = conn.to_node.pop_front().expect("ready");
        if self.nodes[n]
            .claims
            .on_message(&msg, &mut conn.claim)
            .is_err()
        {
            return Err(format!(
                "n{}: the live connection of p{p} is superseded",
                n + 1
            ));
        }
        self.node_handles(p, n, cid, msg, false)
    }

    /// A message of the lingering connection `i` reaches its node.
    fn deliver_late(&mut self, i: usize) -> Check {
        let l = &mut self.lingering[i];
        let (p, n, cid) = (l.p, l.n, l.id);
        let (_, msg) = l.to_node.pop_front().expect("ready");
        let admitted = self.nodes[n].claims.on_message(&msg, &mut l.side);
        if l.to_node.is_empty() || admitted.is_err() {
            self.lingering.remove(i);
        }
        if let Err(e) = admitted {
            self.out.late_refused += 1;
            let what = kind_p(&msg);
            self.log(|| {
                format!(
                    "n{} refuses late {what} of p{p}'s replaced connection: {e}",
                    n + 1
                )
            });
            return Ok(());
        }
        self.out.late_heard += 1;
        self.log(|| format!("n{} hears a late message of p{p}'s connection {cid}", n + 1));
        self.node_handles(p, n, cid, msg, true)
    }

    /// Node `n` handles `msg` of connection `cid` of proposer `p` (`late`:
    /// a lingering one, whose refusal closes only itself).
    fn node_handles(
        &mut self,
        p: usize,
        n: usize,
        cid: u64,
        msg: ProposerMessage,
        late: bool,
    ) -> Check {
        let id = NodeId(n as u64 + 1);
        let faults = self.opts.acceptor_faults;
        let node = &mut self.nodes[n];
        let (before_commit, result) = match node.acceptor.as_mut() {
            Some(acceptor) => (acceptor.state().commit_lsn, acceptor.handle(&msg)),
            // A wiped node: like the daemon, it creates the timeline when
            // the greeting asks and refuses everything else.
            None if node.up && node.wiped => match &msg {
                ProposerMessage::Greeting(g) => match Acceptor::create(id, g) {
                    Ok((mut acceptor, ready)) => {
                        acceptor.faults = faults;
                        node.acceptor = Some(acceptor);
                        node.forget_replies();
                        (Lsn::INVALID, Ok(ready))
                    }
                    Err(refusal) => (Lsn::INVALID, Err(refusal)),
                },
                _ => (Lsn::INVALID, Err(Refusal::UnknownTimeline(self.ttid))),
            },
            None => {
                return Err(format!(
                    "message for node {id}, which is down, on an open connection"
                ))
            }
        };
        let what = kind_p(&msg);
        match result {
            Err(refusal) => {
                self.out.refusals += 1;
                self.log(|| format!("n{} refuses {what} from p{p}: {refusal}", n + 1));
                if late {
                    self.lingering.retain(|l| l.id != cid);
                    Ok(())
                } else if matches!(refusal, Refusal::UnknownTimeline(_)) {
                    self.refuse_no_timeline(p, n)
                } else {
                    self.close_conn(p, n)
                }
            }
            Ok(ready) => {
                for w in &ready.writes {
                    match w {
                        Write::TruncateWal { from } if *from < before_commit => {
                            return Err(format!(
                                "node {id} truncates WAL at {from}, below its commit_lsn {before_commit}"
                            ));
                        }
                        Write::AppendWal { begin, .. } if *begin < before_commit => {
                            return Err(format!(
                                "node {id} overwrites WAL at {begin}, below its commit_lsn {before_commit}"
                            ));
                        }
                        _ => {}
                    }
                }
                let faults = self.opts.storage_faults && !self.calm;
                if let Err(e) = node
                    .storage
                    .write(self.ttid, &ready.writes, self.now, faults)
                {
                    self.storage_failed(n, "a write", &e)?;
                    if !self.opts.disk_bugs.ignore_failed_write {
                        return Ok(());
                    }
                }
                let node = &mut self.nodes[n];
                node.staged_seq = ready.seq;
                if matches!(msg, ProposerMessage::Reseed(_)) {
                    self.out.reseeds += 1;
                }
                node.truncations += ready
                    .writes
                    .iter()
                    .filter(|w| matches!(w, Write::TruncateWal { .. }))
                    .count() as u64;
                if ready.holds_reply {
                    node.routes.insert(ready.seq, (p, cid, node.truncations));
                }
                let after = node.acceptor.as_ref().expect("up").state();
                let (t, c, f) = (after.term, after.commit_lsn, after.flush_lsn);
                node.heard.heard(self.now, &msg, f);
                self.log(|| format!("n{} <- p{p} {what}: term {t} flush {f} commit {c}", n + 1));
                // Nothing more is durable, but a reply that needs no sync
                // of its own may go at once: the acceptor decides.
                self.release_replies(n)
            }
        }
    }

    /// Tell node `n`'s acceptor what is durable and send the replies it
    /// releases, checking each claims only what the node holds durably.
    fn release_replies(&mut self, n: usize) -> Check {
        let node = &mut self.nodes[n];
        let Some(acceptor) = node.acceptor.as_mut() else {
            return Ok(());
        };
        acceptor.set_slot_horizon(node.slot.unwrap_or(Lsn::INVALID));
        let replies = acceptor.on_persisted(node.synced_seq);
        for Reply { seq, msg } in replies {
            let Some((p, cid, truncations_then)) = self.nodes[n].routes.remove(&seq) else {
                continue;
            };
            self.check_reply(n, p, truncations_then, &msg)?;
            let delay = self.delay();
            let due = self.now + delay;
            if let Some(c) = self.conns.get_mut(&(p, n)).filter(|c| c.id == cid) {
                let due = c.to_prop.back().map_or(due, |m| m.0.max(due));
                c.to_prop.push_back((due, msg));
            }
        }
        Ok(())
    }

    /// No ack before sync: what a reply claims must be durable when it
    /// goes out, and a node grants a term once.
    fn check_reply(
        &mut self,
        n: usize,
        p: usize,
        truncations_then: u64,
        reply: &AcceptorMessage,
    ) -> Check {
        let id = NodeId(n as u64 + 1);
        let node = &self.nodes[n];
        let durable = node
            .storage
            .store
            .durable_state(self.ttid)
            .ok_or_else(|| format!("node {id}: no durable state"))?;
        match reply {
            AcceptorMessage::Append(a)
                if truncations_then == node.truncations
                    && (a.flush_lsn > durable.flush_lsn || a.commit_lsn > durable.commit_lsn) =>
            {
                Err(format!(
                    "node {id} acknowledges {a:?} beyond its durable state"
                ))
            }
            AcceptorMessage::Vote(v) if v.granted => {
                if durable.term < v.term {
                    return Err(format!(
                        "node {id} grants term {} before persisting it",
                        v.term
                    ));
                }
                if let Some(prev) = self.votes.insert((n, v.term), p) {
                    return Err(format!(
                        "node {id} voted twice in term {} (for p{prev}, then p{p})",
                        v.term
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn deliver_to_proposer(&mut self, p: usize, n: usize) -> Check {
        let conn = self.conns.get_mut(&(p, n)).expect("ready");
        let (_, msg) = conn.to_prop.pop_front().expect("ready");
        self.log(|| format!("p{p} <- n{} {msg:?}", n + 1));
        let Some(prop) = self.hosts[p].proposer.as_mut() else {
            return Ok(());
        };
        let actions = prop.on_message(NodeId(n as u64 + 1), msg);
        self.apply(p, actions)
    }

    /// Storing on node `n` failed: as the daemon does, the timeline fails
    /// closed (the acceptor answers nothing more until a restart) and the
    /// node's push connections are closed with the error. With the
    /// `ignore_failed_write` bug, a failed write is carried on from.
    fn storage_failed(&mut self, n: usize, what: &str, e: &crate::store::StoreError) -> Check {
        self.out.storage_failures += 1;
        self.log(|| format!("n{} {what} failed: {e}", n + 1));
        if what == "a write" && self.opts.disk_bugs.ignore_failed_write {
            return Ok(());
        }
        if let Some(acceptor) = self.nodes[n].acceptor.as_mut() {
            acceptor.on_storage_failed(&e.to_string());
        }
        let conns: Vec<(usize, usize)> = self.conns.keys().filter(|k| k.1 == n).copied().collect();
        for (p, n) in conns {
            self.close_conn(p, n)?;
        }
        Ok(())
    }

    fn sync_node(&mut self, n: usize) -> Check {
        let id = NodeId(n as u64 + 1);
        let ttid = self.ttid;
        let node = &mut self.nodes[n];
        if !node.up || (node.storage.store.unsynced() == 0 && node.routes.is_empty()) {
            return Ok(());
        }
        let faults = self.opts.storage_faults && !self.calm;
        if let Err(e) = node.storage.sync(faults) {
            if !self.opts.disk_bugs.retry_failed_sync {
                return self.storage_failed(n, "a sync", &e);
            }
            self.log(|| format!("n{} sync failed ({e}); retrying", n + 1));
            self.nodes[n]
                .storage
                .sync(false)
                .map_err(|e| e.to_string())?;
        }
        let node = &mut self.nodes[n];
        node.synced_seq = node.staged_seq;
        let durable = node
            .storage
            .store
            .durable_state(ttid)
            .cloned()
            .ok_or_else(|| format!("node {id}: no durable state"))?;
        if durable.term < node.durable_term || durable.commit_lsn < node.durable_commit {
            return Err(format!("node {id}: durable term or commit went backwards"));
        }
        node.durable_term = durable.term;
        node.durable_commit = durable.commit_lsn;
        self.move_slot(n);
        self.release_replies(n)
    }

    fn push_wal(&mut self, p: usize) -> Check {
        let len = self.rng.range(1, 600);
        let Some(prop) = self.hosts[p].proposer.as_mut() else {
            return Ok(());
        };
        let Some((term, _, _, end, commit)) = prop
            .leader_view()
            .filter(|_| prop.takes_wal() && !prop.config().settle)
        else {
            return Ok(());
        };
        // The primary waits for commits: bounded WAL ahead of the commit.
        let window = if self.calm { 4096 } else { 16384 };
        if end.distance_from(commit.max(self.start_lsn)) > window {
            return Ok(());
        }
        let wal: Vec<u8> = (end.0..end.0 + len).map(|l| wal_byte(term, l)).collect();
        let actions = prop.push_wal(&wal).map_err(|e| e.to_string())?;
        self.apply(p, actions)
    }

    fn advance(&mut self, dt: u64) -> Check {
        self.now += dt;
        let due: Vec<Read> = {
            let (due, later) = std::mem::take(&mut self.reads)
                .into_iter()
                .partition(|r| r.due <= self.now);
            self.reads = later;
            due
        };
        for r in due {
            self.complete_read(r)?;
        }
        for p in 0..self.hosts.len() {
            if !self.hosts[p].active {
                continue;
            }
            if self.hosts[p].proposer.is_none() && self.now >= self.hosts[p].backoff_until {
                self.log(|| format!("proposer p{p} starts"));
                let mut cfg = self.cfg.clone();
                cfg.proposer_id = [p as u8; 16];
                if let Some(c) = self.opts.change {
                    cfg.members = c.target(p);
                }
                self.primary_starts(p, &mut cfg);
                self.hosts[p].proposer = Some(Proposer::new(cfg));
            }
            let now = self.now;
            let backoff_until = self.hosts[p].backoff_until;
            let Some(prop) = self.hosts[p].proposer.as_mut() else {
                continue;
            };
            let mut actions = prop.on_tick(now);
            if prop.is_idle() && now >= backoff_until {
                actions.extend(prop.start_election());
            }
            self.apply(p, actions)?;
            self.settle_tick(p)?;
            let peers = match &self.hosts[p].proposer {
                Some(prop) => prop.peers(),
                None => continue,
            };
            for n in 0..self.nodes.len() {
                let can = peers.contains_key(&NodeId(n as u64 + 1))
                    && !self.conns.contains_key(&(p, n))
                    && self.nodes[n].up
                    && self.nodes[n].side == self.hosts[p].side
                    && self
                        .reconnect_at
                        .get(&(p, n))
                        .is_none_or(|t| *t <= self.now);
                if can && self.hosts[p].proposer.is_some() {
                    let id = self.next_conn;
                    self.next_conn += 1;
                    self.conns.insert(
                        (p, n),
                        Conn {
                            id,
                            to_node: VecDeque::new(),
                            to_prop: VecDeque::new(),
                            claim: crate::consensus::claims::Claim {
                                proposer_id: None,
                                conn: id,
                            },
                        },
                    );
                    self.log(|| format!("p{p} connects to n{}", n + 1));
                    let prop = self.hosts[p].proposer.as_mut().expect("checked");
                    let actions = prop.on_connected(NodeId(n as u64 + 1));
                    self.apply(p, actions)?;
                }
            }
        }
        Ok(())
    }

    fn complete_read(&mut self, r: Read) -> Check {
        if self.hosts[r.p].incarnation != r.incarnation {
            return Ok(());
        }
        let donor = &self.nodes[r.donor];
        let refused = |s: &crate::consensus::acceptor::TimelineState| {
            format!(
                "donor in term {}, last_log_term {}",
                s.term,
                s.last_log_term()
            )
        };
        // Served only while the donor's term and last_log_term are the
        // reader's term, over a path the partition allows. As in the
        // daemon: checked on the durable state, read from the store (which
        // shows unsynced writes too), then checked again on the state with
        // every write issued, which the read may have seen.
        let data = match (
            donor.acceptor.as_ref(),
            donor.storage.store.durable_state(self.ttid),
        ) {
            _ if !donor.up || donor.side != self.hosts[r.p].side => Err("unreachable".to_string()),
            (None, _) | (_, None) => Err("down".to_string()),
            // Failed closed: its state may be ahead of its store.
            (Some(a), _) if a.failed().is_some() => Err("storage failed".to_string()),
            (_, Some(d)) if !d.serves_recovery_read(r.term) => Err(refused(d)),
            (Some(a), _) => {
                let read = donor.storage.store.read_wal(self.ttid, r.start, r.end);
                if a.state().serves_recovery_read(r.term) {
                    read.map_err(|e| e.to_string())
                } else {
                    Err(refused(a.state()))
                }
            }
        };
        if let Ok(bytes) = &data {
            self.check_recovery_data(&r, bytes)?;
        }
        let result = match &data {
            Ok(_) => "ok".to_string(),
            Err(e) => e.clone(),
        };
        self.log(|| {
            format!(
                "p{} recovery read {}..{} from n{}: {result}",
                r.p,
                r.start,
                r.end,
                r.donor + 1
            )
        });
        let Some(prop) = self.hosts[r.p].proposer.as_mut() else {
            return Ok(());
        };
        let actions = match data {
            Ok(bytes) => prop.on_recovery_data(r.id, Bytes::from(bytes)),
            Err(_) => prop.on_recovery_failed(r.id),
        };
        self.apply(r.p, actions)
    }

    /// What a recovery read hands the proposer is its own log: the donor
    /// was in the reader's term with that term's history.
    fn check_recovery_data(&self, r: &Read, bytes: &[u8]) -> Check {
        let Some((term, _, history, _, _)) = self.hosts[r.p]
            .proposer
            .as_ref()
            .and_then(|p| p.leader_view())
        else {
            return Ok(());
        };
        if term != r.term || expected_wal(history, r.start, r.end) == bytes {
            return Ok(());
        }
        Err(format!(
            "p{} recovery read {}..{} from node {} in term {term} returned WAL that is not its log",
            r.p,
            r.start,
            r.end,
            r.donor + 1
        ))
    }

    fn apply(&mut self, p: usize, actions: Vec<Action>) -> Check {
        for action in actions {
            match action {
                Action::Send(node, msg) => {
                    let n = (node.0 - 1) as usize;
                    if let ProposerMessage::Append(a) = &msg {
                        self.check_horizon(p, a)?;
                    }
                    let delay = self.delay();
                    let due = self.now + delay;
                    if let Some(c) = self.conns.get_mut(&(p, n)) {
                        let due = c.to_node.back().map_or(due, |m| m.0.max(due));
                        c.to_node.push_back((due, msg));
                    }
                }
                Action::Disconnect(node) => {
                    self.log(|| format!("p{p} disconnects {node:?}"));
                    self.close_conn(p, (node.0 - 1) as usize)?;
                }
                Action::RecoveryRead {
                    id,
                    donor,
                    term,
                    start,
                    end,
                    ..
                } => {
                    let due = self.now + self.rng.range(1, 20);
                    self.reads.push(Read {
                        due,
                        p,
                        incarnation: self.hosts[p].incarnation,
                        id,
                        donor: (donor.0 - 1) as usize,
                        term,
                        start,
                        end,
                    });
                }
                Action::Elected {
                    term,
                    term_start_lsn,
                    donor,
                } => {
                    self.log(|| {
                        format!(
                            "p{p} elected in term {term}, start {term_start_lsn}, donor {donor:?}"
                        )
                    });
                    self.out.elections += 1;
                    let me = (p, self.hosts[p].incarnation);
                    if let Some(other) = self.leaders.insert(term, me) {
                        return Err(format!(
                            "two proposers elected in term {term}: {other:?} and {me:?}"
                        ));
                    }
                    self.hosts[p].term = term;
                    self.hosts[p].commit = Lsn::INVALID;
                    self.check_leader_completeness(p, term, term_start_lsn)?;
                }
                Action::SteppedDown { term, seen } => {
                    self.log(|| format!("p{p} steps down from term {term} (saw {seen})"));
                    self.hosts[p].backoff_until = self.now + self.rng.range(20, 300);
                }
                Action::CommitAdvanced(c) => self.check_proposer_commit(p, c)?,
                Action::WrongNode { expected, got } => {
                    return Err(format!("p{p}: {expected:?} greeted as {got:?}"));
                }
                Action::LacksTimeline { node, .. } => {
                    self.log(|| format!("p{p}: {node:?} lacks the timeline; not counted"));
                }
                Action::Configured { conf, made } => {
                    self.out.configurations += u64::from(made);
                    self.hosts[p].conf = Some(conf.clone());
                    self.log(|| format!("p{p} counts by {conf:?} (made: {made})"));
                }
                Action::Removed(node) => {
                    self.log(|| format!("p{p}: {node:?} removed and told"));
                }
                Action::Recreated(node) => {
                    self.log(|| format!("p{p}: {node:?} re-created"));
                }
                Action::NoTimeline => {
                    return Err(format!("p{p}: no member holds the timeline"));
                }
                Action::PgSwitchRefused { .. } => {
                    return Err(format!("p{p}: {action:?} on a single PostgreSQL timeline"));
                }
                Action::VerifyPrimary { .. }
                | Action::PrimaryVerified { .. }
                | Action::PrimaryRefused(_)
                | Action::RewindPrimary(_)
                | Action::Settled { .. } => self.on_primary_action(p, action)?,
            }
        }
        Ok(())
    }

    /// A new leader's log holds all WAL committed in earlier terms
    /// (Raft's leader completeness): otherwise it would overwrite it on the
    /// nodes that follow it. A stale leader of an older term may lack later
    /// commits; it cannot commit anything.
    fn check_leader_completeness(&self, p: usize, term: Term, term_start: Lsn) -> Check {
        let committed_end = self
            .committed_in_term
            .range(..term)
            .map(|(_, c)| *c)
            .max()
            .unwrap_or(self.start_lsn);
        let Some((_, _, history, _, _)) = self.hosts[p]
            .proposer
            .as_ref()
            .and_then(|x| x.leader_view())
        else {
            return Ok(());
        };
        if term_start < committed_end {
            return Err(format!(
                "log safety: p{p} elected in term {term} with a log ending at {term_start}, short of committed {committed_end}"
            ));
        }
        let theirs = expected_wal(history, self.start_lsn, committed_end);
        if let Some(i) = (0..theirs.len()).find(|&i| theirs[i] != self.reference[i]) {
            return Err(format!(
                "log safety: p{p} elected in term {term} with history {:?}, which differs from committed WAL at {}",
                history.entries(),
                Lsn(self.start_lsn.0 + i as u64)
            ));
        }
        Ok(())
    }

    fn check_horizon(&self, p: usize, a: &AppendRequest) -> Check {
        if !a.peer_horizon_lsn.is_valid() {
            return Ok(());
        }
        // Every node the proposer talks to (a removed one that stored its
        // removal needs nothing more).
        let peers = self.hosts[p]
            .proposer
            .as_ref()
            .map(|x| x.peers())
            .unwrap_or_default();
        for (n, node) in self.nodes.iter().enumerate() {
            let Some(d) = node.storage.store.durable_state(self.ttid) else {
                continue;
            };
            if !peers.contains_key(&NodeId(n as u64 + 1)) || d.membership.left {
                continue;
            }
            if d.term == a.term && d.flush_lsn < a.peer_horizon_lsn {
                return Err(format!(
                    "p{p} sends peer horizon {} but node {} holds only up to {}",
                    a.peer_horizon_lsn,
                    n + 1,
                    d.flush_lsn
                ));
            }
        }
        Ok(())
    }

    /// An acknowledged commit: a majority durably holds this proposer's log
    /// up to it, and it agrees with every commit seen before.
    fn check_proposer_commit(&mut self, p: usize, c: Lsn) -> Check {
        let host = &self.hosts[p];
        if c <= host.commit {
            return Err(format!("p{p}: commit went from {} to {c}", host.commit));
        }
        let prop = host.proposer.as_ref().expect("acting proposer");
        let (term, _, history, _, _) = prop.leader_view().ok_or("commit while not leading")?;
        let from = if host.commit.is_valid() {
            host.commit
        } else {
            self.start_lsn
        };
        let want = expected_wal(history, from, c);
        let known_end = Lsn(self.start_lsn.0 + self.reference.len() as u64);
        let conf = host
            .conf
            .clone()
            .unwrap_or_else(|| prop.configuration().clone());
        let mut holders = std::collections::BTreeSet::new();
        for (n, node) in self.nodes.iter().enumerate() {
            let Some(durable) = node.storage.store.durable_state(self.ttid) else {
                continue;
            };
            // A node that trimmed (or was re-seeded) past `from` holds the
            // rest, provided what it lacks was committed before.
            // (Reads see unsynced trims too: take the later start.)
            let held_from = node
                .acceptor
                .as_ref()
                .map_or(durable.local_start_lsn, |a| a.state().local_start_lsn)
                .max(durable.local_start_lsn);
            let lo = from.max(held_from);
            if durable.flush_lsn < c || lo > c || (lo > from && lo > known_end) {
                continue;
            }
            let skip = lo.distance_from(from) as usize;
            if node
                .storage
                .store
                .read_wal(self.ttid, lo, c)
                .is_ok_and(|b| b == want[skip..])
            {
                holders.insert(NodeId(n as u64 + 1));
            }
        }
        // Against the configuration in force: a majority of both sets
        // while a change is joint.
        if !conf.is_quorum(&holders) {
            return Err(format!(
                "p{p} term {term} reports commit {c} but only nodes {holders:?} durably hold its WAL {from}..{c}, no quorum of {conf:?}"
            ));
        }
        self.hosts[p].commit = c;
        let best = self.committed_in_term.entry(term).or_default();
        *best = (*best).max(c);
        self.log(|| format!("p{p} commit {c}"));
        self.check_reference(from, &want, &format!("proposer p{p} term {term}"))
    }

    fn check_reference(&mut self, from: Lsn, bytes: &[u8], who: &str) -> Check {
        let off = from.distance_from(self.start_lsn) as usize;
        if off > self.reference.len() {
            return Err(format!(
                "{who}: committed WAL at {from} beyond the known committed end"
            ));
        }
        let overlap = (self.reference.len() - off).min(bytes.len());
        if let Some(i) = (0..overlap).find(|&i| self.reference[off + i] != bytes[i]) {
            return Err(format!(
                "log safety: {who} holds committed WAL at {} that differs from what was committed before",
                Lsn(from.0 + i as u64)
            ));
        }
        self.reference.extend_from_slice(&bytes[overlap..]);
        Ok(())
    }

    /// After every step: terms and commits only grow on a running node, and
    /// each node's committed WAL matches the reference.
    fn check_nodes(&mut self) -> Check {
        for n in 0..self.nodes.len() {
            let node = &mut self.nodes[n];
            let Some(acceptor) = node.acceptor.as_ref() else {
                continue;
            };
            if acceptor.failed().is_some() {
                // Failed closed after a storage error: its state may be
                // ahead of its store, and nothing acts on it until a
                // restart reloads what is stored.
                continue;
            }
            let s = acceptor.state();
            if s.term < node.mem_term {
                return Err(format!(
                    "node {}: term went from {} to {}",
                    n + 1,
                    node.mem_term,
                    s.term
                ));
            }
            if s.commit_lsn < node.mem_commit {
                return Err(format!(
                    "node {}: commit went from {} to {}",
                    n + 1,
                    node.mem_commit,
                    s.commit_lsn
                ));
            }
            if s.commit_lsn > s.flush_lsn {
                return Err(format!(
                    "node {}: commit {} beyond flush {}",
                    n + 1,
                    s.commit_lsn,
                    s.flush_lsn
                ));
            }
            node.mem_term = s.term;
            node.mem_commit = s.commit_lsn;
            if node.slot.is_some_and(|at| at < s.local_start_lsn) {
                // Trimmed past it (`--max-wal-keep`) or re-seeded: the
                // daemon invalidates such a slot.
                node.slot = None;
            }
            if s.commit_lsn > node.verified_to {
                let from = node.verified_to.max(s.local_start_lsn);
                let to = s.commit_lsn;
                let bytes = node
                    .storage
                    .store
                    .read_wal(self.ttid, from, to)
                    .map_err(|e| e.to_string())?;
                node.verified_to = to;
                self.check_reference(from, &bytes, &format!("node {}", n + 1))?;
            }
        }
        Ok(())
    }
}

fn kind_p(m: &ProposerMessage) -> String {
    match m {
        ProposerMessage::Greeting(_) => "Greeting".into(),
        ProposerMessage::VoteRequest(v) => format!("VoteRequest({})", v.term),
        ProposerMessage::Elected(e) => format!(
            "Elected({}, at {}, {:?})",
            e.term,
            e.start_streaming_at,
            e.term_history.entries()
        ),
        ProposerMessage::Append(a) => format!(
            "Append(t{} {}..{} commit {} ph {} sh {})",
            a.term, a.begin_lsn, a.end_lsn, a.commit_lsn, a.peer_horizon_lsn, a.slot_horizon_lsn
        ),
        ProposerMessage::Reseed(r) => format!("Reseed(t{} at {})", r.term, r.start_lsn),
        ProposerMessage::Configure(c) => format!("Configure(t{} {:?})", c.term, c.conf),
    }
}
