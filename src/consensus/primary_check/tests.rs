use super::*;

#[test]
fn pieces_split_at_term_start_also_when_wholly_above_it() {
    let (from, ts) = (Lsn(1000), Lsn(2000));
    assert_eq!(
        split_piece(Lsn(500), 1000, from, ts),
        (Some(500..1000), None)
    );
    assert_eq!(
        split_piece(Lsn(1500), 1000, from, ts),
        (Some(0..500), Some(500))
    );
    assert_eq!(split_piece(Lsn(2000), 300, from, ts), (None, Some(0)));
    // A second piece beyond term_start, before the check finished.
    assert_eq!(split_piece(Lsn(2500), 300, from, ts), (None, Some(0)));
    assert_eq!(split_piece(Lsn(0), 10, from, ts), (None, None));
}

const SEG: u64 = 16 << 20;

#[test]
fn a_term_far_from_the_stream_start_compares_check_bytes() {
    let r = check_range(Lsn(SEG + 100_000), Lsn(SEG), Lsn(SEG), false);
    assert_eq!(
        r,
        CheckRange::Compare {
            from: Lsn(SEG + 100_000 - CHECK_BYTES),
            short: false
        }
    );
}

#[test]
fn at_least_a_page_is_compared_from_the_stream_start() {
    let r = check_range(Lsn(2 * SEG + WAL_PAGE), Lsn(2 * SEG), Lsn(SEG), false);
    assert_eq!(
        r,
        CheckRange::Compare {
            from: Lsn(2 * SEG),
            short: false
        }
    );
}

#[test]
fn less_than_a_page_on_the_stream_asks_for_a_rewind_once() {
    for below in [0, 40, WAL_PAGE - 1] {
        let term_start = Lsn(2 * SEG + below);
        let r = check_range(term_start, Lsn(2 * SEG), Lsn(SEG), false);
        assert_eq!(
            r,
            CheckRange::Rewind {
                from: Lsn(term_start.0 - WAL_PAGE)
            },
            "{below}"
        );
        let r = check_range(term_start, Lsn(2 * SEG), Lsn(SEG), true);
        assert_eq!(
            r,
            CheckRange::Compare {
                from: Lsn(2 * SEG),
                short: true
            }
        );
    }
}

#[test]
fn a_fresh_timeline_has_nothing_to_compare_and_never_rewinds() {
    let r = check_range(Lsn(SEG), Lsn(SEG), Lsn(SEG), false);
    assert_eq!(
        r,
        CheckRange::Compare {
            from: Lsn(SEG),
            short: false
        }
    );
    // A timeline that holds less than a page compares all of it.
    let r = check_range(Lsn(SEG + 100), Lsn(SEG), Lsn(SEG), false);
    assert_eq!(
        r,
        CheckRange::Compare {
            from: Lsn(SEG),
            short: false
        }
    );
}

#[test]
fn a_required_rewind_below_the_check_rewind_wins_and_a_check_rewind_is_used_once() {
    let mut r = Rewind {
        to_end: Some(Lsn(SEG)),
        ..Rewind::default()
    };
    assert_eq!(r.next_stream_from(), Some((Lsn(SEG), true)));
    assert_eq!(r.next_stream_from(), Some((Lsn(SEG), true)));
    r.for_check = Some((Lsn(3 * SEG), Lsn(3 * SEG - WAL_PAGE)));
    assert_eq!(r.next_stream_from(), Some((Lsn(SEG), true)));
    assert!(r.tried_for(Lsn(3 * SEG)));
    r.to_end = None;
    r.for_check = Some((Lsn(3 * SEG), Lsn(3 * SEG - WAL_PAGE)));
    assert_eq!(r.next_stream_from(), Some((Lsn(3 * SEG - WAL_PAGE), false)));
    assert_eq!(r.next_stream_from(), None);
    assert!(r.tried_for(Lsn(3 * SEG)));
    assert!(!r.tried_for(Lsn(4 * SEG)));
}

const TS: Lsn = Lsn(SEG + 100_000);

fn origin() -> PrimaryOrigin {
    PrimaryOrigin {
        stream_start: Lsn(SEG),
        end_of_wal: Lsn(2 * SEG),
        rewind_tried: None,
    }
}

fn verify_step(gate: &mut Gate) -> Step {
    gate.on_ack(3, NodeId(2), TS, Lsn(SEG), 0)
        .expect("a source that holds the range is asked")
}

#[test]
fn without_a_primary_or_anything_below_term_start_wal_is_taken_at_once() {
    assert_eq!(Gate::elected(TS, Lsn(SEG), None, 0), (Gate::Open, None));
    assert_eq!(
        Gate::elected(Lsn(SEG), Lsn(SEG), Some(&origin()), 0),
        (Gate::Open, None)
    );
}

#[test]
fn a_slot_ahead_of_the_safekeepers_rewinds_to_their_end() {
    let o = PrimaryOrigin {
        stream_start: Lsn(3 * SEG),
        ..origin()
    };
    let (gate, step) = Gate::elected(TS, Lsn(SEG), Some(&o), 0);
    assert_eq!(gate, Gate::Shut);
    assert_eq!(step, Some(Step::Rewind(RewindAsk::ToEnd(TS))));
}

#[test]
fn the_same_bytes_open_the_gate() {
    let (mut gate, step) = Gate::elected(TS, Lsn(SEG), Some(&origin()), 0);
    assert_eq!(step, None);
    assert!(!gate.is_open());
    // A node below term_start, or one that trimmed past it, is no source.
    assert_eq!(gate.on_ack(3, NodeId(1), Lsn(TS.0 - 1), Lsn(SEG), 0), None);
    assert_eq!(gate.on_ack(3, NodeId(1), TS, TS, 0), None);
    let from = Lsn(TS.0 - CHECK_BYTES);
    assert_eq!(
        verify_step(&mut gate),
        Step::Verify {
            term: 3,
            source: NodeId(2),
            from,
            to: TS,
            short: false
        }
    );
    let wal = vec![7u8; CHECK_BYTES as usize];
    assert_eq!(
        gate.on_bytes(&wal, &wal, false),
        Some(Step::Verified { from, to: TS })
    );
    assert!(gate.is_open());
}

#[test]
fn a_primary_that_differs_anywhere_is_refused() {
    let from = Lsn(TS.0 - CHECK_BYTES);
    let ours = vec![7u8; CHECK_BYTES as usize];
    for at in [0, CHECK_BYTES as usize / 2, CHECK_BYTES as usize - 1] {
        let (mut gate, _) = Gate::elected(TS, Lsn(SEG), Some(&origin()), 0);
        verify_step(&mut gate);
        let mut theirs = ours.clone();
        theirs[at] = 8;
        assert_eq!(
            gate.on_bytes(&theirs, &ours, false),
            Some(Step::Refused(PrimaryRefusal::Differs {
                at: Lsn(from.0 + at as u64),
                from,
                to: TS
            }))
        );
        assert_eq!(gate, Gate::Shut);
        assert_eq!(
            gate.on_bytes(&ours, &ours, false),
            None,
            "shut for the term"
        );
    }
    // The deliberate bug compares the first half only.
    let (mut gate, _) = Gate::elected(TS, Lsn(SEG), Some(&origin()), 0);
    verify_step(&mut gate);
    let mut theirs = ours.clone();
    theirs[CHECK_BYTES as usize - 1] = 8;
    assert!(matches!(
        gate.on_bytes(&theirs, &ours, true),
        Some(Step::Verified { .. })
    ));
}

#[test]
fn a_failed_read_asks_again_later_and_a_trimmed_source_gives_what_it_holds() {
    let (mut gate, _) = Gate::elected(TS, Lsn(SEG), Some(&origin()), 0);
    verify_step(&mut gate);
    assert_eq!(gate.on_failed(100), None);
    assert_eq!(gate.on_ack(3, NodeId(2), TS, Lsn(SEG), 50), None);
    let local_start = Lsn(TS.0 - 100);
    assert_eq!(
        gate.on_ack(3, NodeId(3), TS, local_start, 100),
        Some(Step::Verify {
            term: 3,
            source: NodeId(3),
            from: local_start,
            to: TS,
            short: true
        })
    );
    // Bytes of another length than asked: read again.
    assert_eq!(gate.on_bytes(&[1, 2], &[1, 2], false), None);
    assert!(matches!(gate, Gate::Waiting { .. }));
}

#[test]
fn a_primary_short_of_term_start_is_refused_after_the_grace() {
    // term_start beyond the primary's end of WAL at connect: 5 s.
    let o = PrimaryOrigin {
        end_of_wal: Lsn(SEG + 10),
        ..origin()
    };
    let (mut gate, _) = Gate::elected(TS, Lsn(SEG), Some(&o), 1000);
    let end = Lsn(TS.0 - 5);
    assert_eq!(gate.on_primary_end(end, 1000 + BEHIND_GRACE_MS - 1), None);
    assert_eq!(gate.on_primary_end(TS, 1000 + BEHIND_GRACE_MS), None);
    assert_eq!(
        gate.on_primary_end(end, 1000 + BEHIND_GRACE_MS),
        Some(Step::Refused(PrimaryRefusal::Behind {
            to: TS,
            primary_end: end
        }))
    );
    // Otherwise 30 s.
    let (mut gate, _) = Gate::elected(TS, Lsn(SEG), Some(&origin()), 0);
    assert_eq!(gate.on_primary_end(end, BEHIND_GRACE_MS), None);
    assert!(gate.on_primary_end(end, STREAM_GRACE_MS).is_some());
}
