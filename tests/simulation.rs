//! The deterministic simulation of the real acceptor and proposer
//! (`walkeeper::sim`): a few hundred seeds with every fault the scheduler
//! knows, and proof that the invariant checker catches deliberate bugs.
//! tools/SIMULATION.md has the command for a long run.

use walkeeper::sim::{self, SimOptions};

/// Runs the seeds; returns how many re-seeds (of a node that needed WAL
/// every other node had trimmed) they made.
fn run_seeds(nodes: usize, proposers: usize, seeds: std::ops::Range<u64>) -> u64 {
    let mut reseeds = 0;
    for seed in seeds {
        let opts = SimOptions::new(seed, nodes, proposers);
        match sim::run(&opts) {
            Ok(o) => reseeds += o.reseeds,
            Err(v) => panic!("{v}"),
        }
    }
    reseeds
}

/// Also checks that the runs trim past lagging nodes often enough that
/// re-seeding is exercised, not just present.
#[test]
fn three_nodes_one_proposer() {
    let reseeds = run_seeds(3, 1, 0..100);
    eprintln!("{reseeds} re-seeds");
    assert!(reseeds > 0, "100 seeds made no re-seed");
}

#[test]
fn three_nodes_three_proposers() {
    let reseeds = run_seeds(3, 3, 0..100);
    assert!(reseeds > 0, "100 seeds made no re-seed");
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
/// committed WAL of a later term. That takes a long chaos phase (a stale
/// leader feeding one node while a later term commits a shorter log, then
/// an election without that later term's majority): with 12,000 chaos steps
/// about 1 seed in 500 shows it, first at seed 530 (3 nodes, 3 proposers,
/// with storage faults); the test allows up to 2,000 seeds. (With the default 3,000 steps it is
/// about 1 in 5,000.)
#[test]
fn checker_catches_donor_ignoring_last_log_term() {
    let v = first_violation(2000, |o| {
        o.chaos_steps = 12_000;
        o.proposer_faults.donor_ignores_last_log_term = true
    })
    .expect("a donor chosen without last_log_term must break an invariant within 2000 seeds");
    eprintln!("caught: {v}");
    assert!(v.what.contains("log safety"), "{}", v.what);
    assert!(v.replay.contains("--fault donor-ignores-last-log-term"));
    assert!(v.replay.contains(&format!("--start {} ", v.seed)));
}

/// Appends accepted before Elected: the acceptor's history no longer
/// describes its WAL. First caught at seed 357 (3 nodes, 3 proposers, with
/// storage faults, lingering connections and primary checks drawn); the
/// test allows up to 800 seeds.
#[test]
fn checker_catches_append_before_elected() {
    let v = first_violation(800, |o| {
        o.acceptor_faults.accept_append_before_elected = true
    })
    .expect("appends before Elected must break an invariant within 800 seeds");
    eprintln!("caught: {v}");
    assert!(v.replay.contains("--fault accept-append-before-elected"));
}

/// A node re-seeded at its source's flush_lsn instead of the lowest LSN a
/// source still holds skips WAL that may not be committed. First caught at
/// seed 78 (3 nodes, 3 proposers); the test allows up to 300 seeds.
#[test]
fn checker_catches_a_reseed_past_committed_wal() {
    let v = first_violation(300, |o| o.proposer_faults.reseed_at_source_flush = true)
        .expect("a re-seed past committed WAL must break an invariant within 300 seeds");
    eprintln!("caught: {v}");
    assert!(v.replay.contains("--fault reseed-at-source-flush"));
}

/// A node restarted with a wiped store (a replaced disk and `--init`) that
/// the proposers' greetings re-create at term 0, whose old positions they
/// keep counting: it votes again in terms it voted in, and commits and
/// elections count WAL it no longer holds. First caught at seed 1 (3 nodes,
/// 3 proposers); the test allows up to 300 seeds.
#[test]
fn checker_catches_a_wiped_node_recreated_and_counted() {
    let v = first_violation(300, |o| o.proposer_faults.create_on_every_greeting = true)
        .expect("a wiped node re-created and counted must break an invariant within 300 seeds");
    eprintln!("caught: {v}");
    assert!(v.replay.contains("--fault create-on-every-greeting"));
}

/// Without the fault, the wiped nodes of the same seeds stay out: nobody
/// re-creates the timeline on them.
#[test]
fn wiped_nodes_happen_and_stay_out() {
    let wipes: u64 = (0..100)
        .map(|seed| {
            sim::run(&SimOptions::new(seed, 3, 3))
                .unwrap_or_else(|v| panic!("{v}"))
                .wipes
        })
        .sum();
    assert!(wipes > 3, "only {wipes} wiped nodes in 100 seeds");
}

/// The slot horizon of every append stored, also an unknown one (a new
/// term's first appends, before every member answered): nodes forget a
/// slot on another node and trim past it by the peer horizon. First caught
/// at seed 4 (3 nodes, 3 proposers); the test allows up to 300 seeds.
#[test]
fn checker_catches_a_slot_horizon_forgotten_in_a_new_term() {
    let v = first_violation(300, |o| o.acceptor_faults.store_unknown_slot_horizon = true)
        .expect("a forgotten slot horizon must break an invariant within 300 seeds");
    eprintln!("caught: {v}");
    assert!(v.what.contains("slot"), "{}", v.what);
    assert!(v.replay.contains("--fault store-unknown-slot-horizon"));
}

/// Membership changes (replace one of three with node 3 dead for good,
/// 3 -> 5, 5 -> 3, proxies given different member lists), each with 1 and
/// 3 proposers under the usual chaos (proposer crashes interrupt changes
/// at any point): no violation, and most seeds end with the change done.
#[test]
fn membership_changes() {
    for change in sim::MemberChange::ALL {
        for proposers in [1, 3] {
            let (mut done, seeds) = (0, 100);
            for seed in 0..seeds {
                let mut opts = SimOptions::with_change(seed, proposers, change);
                if change == sim::MemberChange::Grow {
                    // Two new members catch up from nothing in the calm
                    // phase while commits go on; since replies that need
                    // no sync go out at once (the acceptor's ready sets, as
                    // in the daemon) the proposer writes faster, and 3,000
                    // calm steps finish a grow in only about a fifth of
                    // the seeds (about half with 6,000).
                    opts.calm_steps = 6000;
                }
                match sim::run(&opts) {
                    Ok(o) => done += o.changes_done.min(1),
                    Err(v) => panic!("{v}"),
                }
            }
            eprintln!(
                "{}: {proposers} proposers, {done}/{seeds} done",
                change.name()
            );
            assert!(
                done * 3 > seeds,
                "{}: only {done} of {seeds} seeds finished the change",
                change.name()
            );
        }
    }
}

/// A joint configuration counting its new member set alone: a commit
/// without a majority of the old set. First caught at seed 0 (replace one,
/// 3 proposers) and seed 5 (3 -> 5); the test allows up to 300 seeds.
#[test]
fn checker_catches_joint_counting_the_new_set_alone() {
    for change in [sim::MemberChange::ReplaceOne, sim::MemberChange::Grow] {
        let v = (0..300)
            .find_map(|seed| {
                let mut opts = SimOptions::with_change(seed, 3, change);
                opts.proposer_faults.joint_counts_new_alone = true;
                sim::run(&opts).err()
            })
            .expect("counting the new set alone must break an invariant within 300 seeds");
        eprintln!("caught: {v}");
        assert!(v.what.contains("no quorum of"), "{}", v.what);
        assert!(v.replay.contains("--fault joint-counts-new-alone"));
        assert!(v.replay.contains(&format!("--change {}", change.name())));
    }
}

/// Storage faults happen in the seeds `cargo test` runs (failed writes and
/// syncs, full disks), and the runs pass: the timeline fails closed on
/// the node, and nothing it acknowledged is lost.
#[test]
fn storage_faults_happen_and_fail_closed() {
    let failures: u64 = (0..100)
        .map(|seed| {
            sim::run(&SimOptions::new(seed, 3, 3))
                .unwrap_or_else(|v| panic!("{v}"))
                .storage_failures
        })
        .sum();
    assert!(
        failures > 20,
        "only {failures} storage failures in 100 seeds"
    );
}

/// Replies released before the sync that covers their writes (the rule
/// `Acceptor::on_persisted` keeps): caught at seed 0 (3 nodes, 3
/// proposers), a vote granted before the term is durable; the test allows
/// up to 50 seeds.
#[test]
fn checker_catches_a_reply_before_persisted() {
    let v = first_violation(50, |o| o.acceptor_faults.reply_before_persisted = true)
        .expect("replies before their sync must break an invariant within 50 seeds");
    eprintln!("caught: {v}");
    assert!(v.what.contains("before persisting") || v.what.contains("beyond its durable state"));
    assert!(v.replay.contains("--fault reply-before-persisted"));
}

/// A failed sync retried into success (what it dropped stays lost): first
/// caught at seed 311 (3 nodes, 3 proposers); the test allows up to 800
/// seeds.
#[test]
fn checker_catches_a_failed_sync_retried_into_success() {
    let v = first_violation(800, |o| o.disk_bugs.retry_failed_sync = true)
        .expect("a failed sync retried into success must break an invariant within 800 seeds");
    eprintln!("caught: {v}");
    assert!(v.replay.contains("--fault retry-failed-sync"));
}

/// A failed or refused (full disk) write carried on from as if staged:
/// first caught at seed 0 (3 nodes, 3 proposers); the test allows up to
/// 100 seeds.
#[test]
fn checker_catches_a_failed_write_carried_on_from() {
    let v = first_violation(100, |o| o.disk_bugs.ignore_failed_write = true)
        .expect("a failed write carried on from must break an invariant within 100 seeds");
    eprintln!("caught: {v}");
    assert!(v.replay.contains("--fault ignore-failed-write"));
}

/// A crash that keeps the unsynced writes but the first (a disk that
/// reorders): first caught at seed 6 (3 nodes, 3 proposers), a node
/// restarting with a state whose WAL has a gap; the test allows up to 300
/// seeds.
#[test]
fn checker_catches_a_crash_keeping_a_non_prefix() {
    let v = first_violation(300, |o| o.disk_bugs.crash_keeps_non_prefix = true)
        .expect("a crash keeping a non-prefix must break an invariant within 300 seeds");
    eprintln!("caught: {v}");
    assert!(v.what.contains("does not hold whole"), "{}", v.what);
    assert!(v.replay.contains("--fault crash-keeps-non-prefix"));
}

/// The proxy's primary check and `--sync-only`'s count run in the
/// simulation (src/sim/primary.rs): comparing only half of the checked
/// range takes a primary whose history diverged, and a settle counting
/// one member reports an LSN no quorum durably committed.
#[test]
fn checker_catches_a_diverged_primary_and_a_minority_settle() {
    let v = first_violation(300, |o| o.proposer_faults.accept_diverged_primary = true)
        .expect("a diverged primary taken must be caught");
    assert!(v.what.contains("took a primary"), "{}", v.what);
    assert!(v.replay.contains("--fault accept-diverged-primary"));
    let v = first_violation(300, |o| o.proposer_faults.settle_counts_minority = true)
        .expect("a settle by a minority must be caught");
    assert!(v.what.contains("no quorum of"), "{}", v.what);
    assert!(v.replay.contains("--fault settle-counts-minority"));
}
