use super::*;

const SEG: u32 = 1 << 20;

/// Synthetic WAL as a primary writes it: page headers (long at segment
/// starts) with `xlp_rem_len`, records of the given lengths (switch
/// records where marked), MAXALIGN padding. Returns the bytes and every
/// record boundary after `start`.
fn build(start: u64, records: &[(u32, bool)]) -> (Vec<u8>, Vec<u64>) {
    let mut w = Vec::new();
    let mut pos = start;
    let mut bounds = Vec::new();
    let seg = u64::from(SEG);
    // Write `n` bytes of `byte`, with page headers where pages start.
    let put = |w: &mut Vec<u8>, pos: &mut u64, content: &[u8], rem_after: &dyn Fn(usize) -> u32| {
        for (i, b) in content.iter().enumerate() {
            if (*pos).is_multiple_of(WAL_PAGE) {
                let size = if (*pos).is_multiple_of(seg) {
                    LONG_PAGE_HEADER
                } else {
                    SHORT_PAGE_HEADER
                };
                let mut h = vec![0u8; size as usize];
                h[16..20].copy_from_slice(&rem_after(i).to_le_bytes());
                w.extend_from_slice(&h);
                *pos += size;
            }
            w.push(*b);
            *pos += 1;
        }
    };
    for &(tot_len, switch) in records {
        let mut content = vec![0xAB; tot_len as usize];
        content[..4].copy_from_slice(&tot_len.to_le_bytes());
        content[16] = if switch { XLOG_SWITCH } else { 0x10 };
        content[17] = if switch { RM_XLOG_ID } else { 10 };
        let len = content.len();
        // A record that starts a page is no continuation.
        put(&mut w, &mut pos, &content, &|i| {
            if i == 0 {
                0
            } else {
                (len - i) as u32
            }
        });
        let next = if switch && !pos.is_multiple_of(seg) {
            (pos / seg + 1) * seg
        } else {
            maxalign(pos)
        };
        // Padding up to the next record, page headers included.
        while pos < next {
            if pos.is_multiple_of(WAL_PAGE) {
                let size = if pos.is_multiple_of(seg) {
                    LONG_PAGE_HEADER
                } else {
                    SHORT_PAGE_HEADER
                };
                w.extend(std::iter::repeat_n(0u8, size as usize));
                pos += size;
            } else {
                w.push(0);
                pos += 1;
            }
        }
        bounds.push(pos);
    }
    (w, bounds)
}

/// Feed `wal` in pieces of `chunk` bytes; after each piece the release
/// point must be the last boundary reached.
fn check_chunked(start: u64, wal: &[u8], bounds: &[u64], chunk: usize) {
    let mut cut = RecordCut::new(Lsn(start), SEG);
    let mut fed = start;
    for piece in wal.chunks(chunk) {
        let release = cut.feed(piece);
        fed += piece.len() as u64;
        assert_eq!(cut.pos(), Lsn(fed));
        let expected = bounds
            .iter()
            .copied()
            .filter(|b| *b <= fed)
            .max()
            .unwrap_or(start);
        assert_eq!(release, Lsn(expected), "after {fed:#x}, chunk {chunk}");
    }
}

#[test]
fn releases_up_to_the_last_complete_record_however_the_wal_is_cut() {
    // Records small and large, crossing pages and a segment start.
    let start = u64::from(SEG) - 3 * WAL_PAGE + 24;
    let recs: Vec<(u32, bool)> = [50, 8000, 24, 20_000, 333, 7, 65_000, 8168]
        .iter()
        .map(|&n| (n.max(24), false))
        .collect();
    let (wal, bounds) = build(start, &recs);
    for chunk in [1, 7, 100, 4096, 8192, 131_072] {
        check_chunked(start, &wal, &bounds, chunk);
    }
}

#[test]
fn a_switch_record_ends_at_the_next_segment() {
    let start = 2 * u64::from(SEG) + 40;
    let (wal, bounds) = build(start, &[(100, false), (24, true), (200, false)]);
    assert_eq!(bounds[1], 3 * u64::from(SEG));
    for chunk in [13, 8192, 1 << 20] {
        check_chunked(start, &wal, &bounds, chunk);
    }
}

#[test]
fn a_record_header_split_by_a_page_is_followed() {
    // The second record starts 8 bytes before a page end.
    let start = WAL_PAGE * 5 + 24;
    let first = (WAL_PAGE - 24 - 8) as u32;
    let (wal, bounds) = build(start, &[(first, false), (100, false), (40, false)]);
    check_chunked(start, &wal, &bounds, 3);
}

#[test]
fn garbage_is_released_and_the_next_page_header_picks_up_again() {
    let start = WAL_PAGE * 3 + 24;
    let (mut wal, bounds) = build(start, &[(3000, false), (9000, false), (100, false)]);
    // Break the first record's length: not a record.
    wal[0..4].copy_from_slice(&5u32.to_le_bytes());
    let mut cut = RecordCut::new(Lsn(start), SEG);
    let page_end = WAL_PAGE * 4;
    let upto = (page_end - start) as usize;
    // Lost: everything fed is released.
    assert_eq!(cut.feed(&wal[..upto - 10]), Lsn(page_end - 10));
    // The next page's header tells where the record going on ends; from
    // there on, boundaries again.
    let release = cut.feed(&wal[upto - 10..]);
    assert_eq!(release, Lsn(*bounds.last().unwrap()));
    let mut again = cut.clone();
    let (more, more_bounds) = build(again.pos().0, &[(5000, false), (100, false)]);
    assert_eq!(again.feed(&more[..more.len() - 1]), Lsn(more_bounds[0]));
}

#[test]
fn a_disagreeing_page_header_makes_it_release_everything() {
    let start = WAL_PAGE * 3 + 24;
    let (mut wal, _) = build(start, &[(20_000, false)]);
    // The second page's rem_len lies.
    let hdr = (WAL_PAGE * 4 - start) as usize;
    wal[hdr + 16..hdr + 20].copy_from_slice(&1u32.to_le_bytes());
    let mut cut = RecordCut::new(Lsn(start), SEG);
    let half = hdr + 100;
    assert_eq!(cut.feed(&wal[..half]), Lsn(start + half as u64));
}

#[test]
fn a_record_longer_than_the_cap_is_released_as_it_comes() {
    let start = WAL_PAGE + 24;
    let big = (HOLD_CAP + 3 * WAL_PAGE) as u32;
    let (wal, bounds) = build(start, &[(big, false), (64, false)]);
    let mut cut = RecordCut::new(Lsn(start), SEG);
    let part = (HOLD_CAP + WAL_PAGE) as usize;
    assert_eq!(cut.feed(&wal[..part]), Lsn(start + part as u64 - HOLD_CAP));
    assert_eq!(cut.feed(&wal[part..]), Lsn(bounds[1]));
}

#[test]
fn a_start_at_a_page_reads_its_header_for_a_continued_record() {
    let start = WAL_PAGE * 7 + 24;
    let (wal, bounds) = build(start, &[(20_000, false), (100, false), (60, false)]);
    // Begin at the page where the first record goes on.
    let page = WAL_PAGE * 8;
    let from = (page - start) as usize;
    let mut cut = RecordCut::new(Lsn(page), SEG);
    assert_eq!(cut.feed(&wal[from..]), Lsn(*bounds.last().unwrap()));
    let mut cut = RecordCut::new(Lsn(page), SEG);
    let before_second_end = (bounds[1] - 1 - page) as usize;
    assert_eq!(
        cut.feed(&wal[from..from + before_second_end]),
        Lsn(bounds[0])
    );
}

#[test]
fn an_abandoned_record_is_released_with_the_one_overwriting_it() {
    // A record torn at a page end, then (as a crash-restarted primary
    // writes it) a page flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD whose
    // first record follows its header.
    let start = WAL_PAGE * 3 + 24;
    let (mut wal, _) = build(start, &[(24, false)]);
    let torn_at = start + wal.len() as u64;
    let mut torn = vec![0xCDu8; (WAL_PAGE * 4 - torn_at) as usize];
    torn[..4].copy_from_slice(&30_000u32.to_le_bytes());
    wal.extend_from_slice(&torn);
    let (mut next, bounds) = build(WAL_PAGE * 4, &[(100, false), (50, false)]);
    next[2..4].copy_from_slice(&XLP_FIRST_IS_OVERWRITE_CONTRECORD.to_le_bytes());
    wal.extend_from_slice(&next);
    let mut cut = RecordCut::new(Lsn(start), SEG);
    let upto = (WAL_PAGE * 4 + 30 - start) as usize;
    assert_eq!(cut.feed(&wal[..upto]), Lsn(torn_at));
    assert_eq!(cut.feed(&wal[upto..]), Lsn(bounds[1]));
}

#[test]
fn an_unaligned_start_is_lost_until_the_next_page() {
    let mut cut = RecordCut::new(Lsn(WAL_PAGE + 27), SEG);
    assert_eq!(cut.feed(&[0u8; 100]), Lsn(WAL_PAGE + 127));
}

#[test]
fn holdback_hands_on_exactly_the_released_bytes_in_order() {
    let start = WAL_PAGE * 2 + 24;
    let (wal, bounds) = build(
        start,
        &[(3000, false), (9000, false), (100, false), (70, false)],
    );
    let mut h = Holdback::new(Lsn(start), SEG);
    let mut pushed = Vec::new();
    for piece in wal.chunks(1000) {
        for out in h.feed(Bytes::copy_from_slice(piece)) {
            pushed.extend_from_slice(&out);
        }
        let end = start + pushed.len() as u64;
        assert!(
            end == start || bounds.contains(&end),
            "pushed up to {end:#x}"
        );
        assert_eq!(h.held_bytes(), h.pos().0 - end);
    }
    assert_eq!(pushed, wal[..(bounds[3] - start) as usize]);
    assert_eq!(h.held_bytes(), 0);
}
