//! The deterministic simulation of the real acceptor and proposer
//! (`walkeeper::sim`): a few hundred seeds with every fault the scheduler
//! knows, and proof that the invariant checker catches deliberate bugs.
//! tools/SIMULATION.md has the command for a long run.

use walkeeper::sim::{self, SimOptions};

fn run_seeds(nodes: usize, proposers: usize, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let opts = SimOptions::new(seed, nodes, proposers);
        if let Err(v) = sim::run(&opts) {
            panic!("{v}");
        }
    }
}

#[test]
fn three_nodes_one_proposer() {
    run_seeds(3, 1, 0..100);
}

#[test]
fn three_nodes_three_proposers() {
    run_seeds(3, 3, 0..100);
}

#[test]
fn five_nodes_two_proposers() {
    run_seeds(5, 2, 0..100);
}

#[test]
fn five_nodes_three_proposers() {
    run_seeds(5, 3, 0..100);
}

#[test]
fn a_seed_replays_exactly() {
    let opts = SimOptions::new(42, 5, 3);
    let a = sim::run(&opts).expect("seed 42 passes");
    let b = sim::run(&opts).expect("seed 42 passes");
    assert_eq!(
        (
            a.elections,
            a.commit_lsn,
            a.committed_bytes,
            a.node_crashes,
            a.refusals
        ),
        (
            b.elections,
            b.commit_lsn,
            b.committed_bytes,
            b.node_crashes,
            b.refusals
        )
    );
    assert!(a.committed_bytes > 0 && a.elections > 0);
}

/// The first failing seed in `0..limit`, with its report.
fn first_violation(limit: u64, set: impl Fn(&mut SimOptions)) -> Option<sim::Violation> {
    (0..limit).find_map(|seed| {
        let mut opts = SimOptions::new(seed, 3, 3);
        set(&mut opts);
        sim::run(&opts).err()
    })
}

/// Donor chosen by flush_lsn alone: a stale long log wins an election over
/// committed WAL of a later term. First caught at seed 76 (3 nodes, 3
/// proposers); the test allows up to 300 seeds.
#[test]
fn checker_catches_donor_ignoring_last_log_term() {
    let v = first_violation(300, |o| {
        o.proposer_faults.donor_ignores_last_log_term = true
    })
    .expect("a donor chosen without last_log_term must break an invariant within 300 seeds");
    eprintln!("caught: {v}");
    assert!(v.replay.contains("--fault donor-ignores-last-log-term"));
    assert!(v.replay.contains(&format!("--start {} ", v.seed)));
}

/// Appends accepted before Elected: the acceptor's history no longer
/// describes its WAL. First caught at seed 152 (3 nodes, 3 proposers); the
/// test allows up to 300 seeds.
#[test]
fn checker_catches_append_before_elected() {
    let v = first_violation(300, |o| {
        o.acceptor_faults.accept_append_before_elected = true
    })
    .expect("appends before Elected must break an invariant within 300 seeds");
    eprintln!("caught: {v}");
    assert!(v.replay.contains("--fault accept-append-before-elected"));
}
