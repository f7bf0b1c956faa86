//! `skctl` as a real binary on stores written by a real safekeeper: read
//! beside the running daemon (as a RocksDB secondary) and after it stopped;
//! `verify` naming damage; `export` producing segment files identical to a
//! real primary's, which pg_waldump reads, and refusing damaged WAL.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::pg::{self, Postgres};
use common::*;
use serde_json::Value;
use walkeeper::codec::{decode_stored, encode_stored};
use walkeeper::consensus::acceptor::TimelineState;
use walkeeper::lsn::{segment_file_name, Lsn};
use walkeeper::store::rocks::wal_key;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn skctl(datadir: &Path, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_skctl"))
        .arg("--datadir")
        .arg(datadir)
        .args(args)
        .output()
        .expect("running skctl");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run skctl with `--json`, expect success, parse stdout.
fn skctl_json(datadir: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let out = skctl(datadir, &a);
    assert_eq!(
        out.code, 0,
        "skctl {args:?} failed: {}{}",
        out.stdout, out.stderr
    );
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("skctl {args:?} printed no JSON ({e}): {}", out.stdout))
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {from:?} {to:?}");
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn tl() -> String {
    ttid().to_string()
}

/// `skctl export` of the test timeline from `store` into `out`, within any
/// `--from`/`--to` bounds given.
fn export(store: &Path, out: &Path, bounds: &[&str]) -> Out {
    let tl = tl();
    let mut args = vec!["export", &tl, "--out", out.to_str().unwrap()];
    args.extend_from_slice(bounds);
    skctl(store, &args)
}

#[test]
fn skctl_reads_a_store_while_the_daemon_runs_and_after_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("sk1");
    let mut sk = Safekeeper::start(&datadir, 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(42, true), 1);
    let wal = wal_bytes(1, START, 300_000);
    // Flushed to START+300000, committed to START+200000.
    let end = push(&mut p, 1, START, &wal, 100_000, START + 200_000);

    // While the daemon runs (and holds RocksDB's lock).
    let list = skctl_json(&datadir, &["timelines"]);
    let t = &list.as_array().unwrap()[0];
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(t["tenant_id"], ttid().tenant_id.to_string());
    assert_eq!(t["timeline_id"], ttid().timeline_id.to_string());
    assert_eq!(t["system_id"], "42");
    assert_eq!(t["term"], 1);
    assert_eq!(t["flush_lsn"], Lsn(end).to_string());
    assert_eq!(t["commit_lsn"], Lsn(START + 200_000).to_string());
    assert_eq!(t["local_start_lsn"], Lsn(START).to_string());
    assert_eq!(t["held_bytes"], 300_000);
    assert_eq!(t["stored_bytes"], 300_000);

    let table = skctl(&datadir, &["timelines"]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(table.stdout.contains(&tl()), "{}", table.stdout);
    assert!(table.stdout.contains(&Lsn(end).to_string()));

    let show = skctl_json(&datadir, &["show", &tl()]);
    assert_eq!(show["term_history"][0]["term"], 1);
    assert_eq!(show["term_history"][0]["start_lsn"], Lsn(START).to_string());
    assert_eq!(show["members"][0]["node_id"], 1);
    assert_eq!(show["slots"], Value::Array(vec![]));
    let show_text = skctl(&datadir, &["show", &tl()]);
    assert!(
        show_text.stdout.contains("slots: none"),
        "{}",
        show_text.stdout
    );
    assert!(show_text.stdout.contains("term history"));
    // Durable slots show with their restart LSN.
    let mut consumer = RawClient::connect(sk.pg_addr, "");
    for q in [
        "CREATE_REPLICATION_SLOT \"reserved\" PHYSICAL (RESERVE_WAL)",
        "CREATE_REPLICATION_SLOT \"idle\" PHYSICAL",
    ] {
        let reply = consumer.query(q);
        assert!(reply.iter().all(|m| m.tag != b'E'), "{q}: {reply:?}");
    }
    drop(consumer);
    let show = skctl_json(&datadir, &["show", &tl()]);
    let slots = show["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 2, "{show}");
    assert_eq!(slots[0]["name"], "idle");
    assert_eq!(slots[0]["restart_lsn"], Value::Null);
    assert_eq!(slots[1]["name"], "reserved");
    assert!(slots[1]["restart_lsn"].as_str().is_some(), "{show}");
    let show_text = skctl(&datadir, &["show", &tl()]);
    assert!(
        show_text.stdout.contains("reserved") && show_text.stdout.contains("restart "),
        "{}",
        show_text.stdout
    );
    assert!(
        show_text.stdout.contains("held_bytes           300000 ("),
        "{}",
        show_text.stdout
    );

    let chunks = skctl_json(&datadir, &["wal", &tl()]);
    let chunks = chunks.as_array().unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[1]["start_lsn"], Lsn(START + 100_000).to_string());
    assert_eq!(chunks[1]["end_lsn"], Lsn(START + 200_000).to_string());
    assert_eq!(chunks[1]["len"], 100_000);
    assert!(chunks.iter().all(|c| c["crc_ok"] == true));
    let some = skctl_json(
        &datadir,
        &[
            "wal",
            &tl(),
            "--from",
            &Lsn(START + 150_000).to_string(),
            "--to",
            &Lsn(START + 250_000).to_string(),
        ],
    );
    assert_eq!(some.as_array().unwrap().len(), 2);

    let v = skctl(&datadir, &["verify"]);
    assert_eq!(
        v.code, 0,
        "verify failed on a healthy live store: {}{}",
        v.stdout, v.stderr
    );
    assert!(v.stdout.contains("OK"), "{}", v.stdout);

    // More WAL while it runs: a fresh skctl sees it.
    let more = wal_bytes(1, end, 50_000);
    let end2 = push(&mut p, 1, end, &more, 50_000, end);
    let t = &skctl_json(&datadir, &["timelines"])[0];
    assert_eq!(t["flush_lsn"], Lsn(end2).to_string());
    assert_eq!(t["commit_lsn"], Lsn(end).to_string());

    // An unknown timeline is a clear error, not a panic.
    let other = format!("{}/{}", "ab".repeat(16), "cd".repeat(16));
    let u = skctl(&datadir, &["show", &other]);
    assert_eq!(u.code, 2);
    assert!(u.stderr.contains("does not exist"), "{}", u.stderr);
    let bad = skctl(&datadir, &["show", "not-a-timeline"]);
    assert_ne!(bad.code, 0);

    drop(p);
    assert!(sk.terminate().success());

    // After the daemon stopped: the same answers, and verify still passes.
    let t = &skctl_json(&datadir, &["timelines"])[0];
    assert_eq!(t["flush_lsn"], Lsn(end2).to_string());
    assert_eq!(t["commit_lsn"], Lsn(end).to_string());
    let v = skctl_json(&datadir, &["verify"]);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["chunks"], 4);
    assert_eq!(v["bytes"], 350_000);
    // skctl wrote nothing into the store: the daemon opens it as before.
    sk.restart();
    let t = &skctl_json(&datadir, &["timelines"])[0];
    assert_eq!(t["flush_lsn"], Lsn(end2).to_string());

    // A directory that is not a store is refused clearly.
    let none = skctl(dir.path(), &["timelines"]);
    assert_eq!(none.code, 2);
    assert!(none.stderr.contains("holds no store"), "{}", none.stderr);
}

#[test]
fn verify_and_wal_beside_a_daemon_under_write_load() {
    // Enough WAL to make the daemon flush memtables and delete and recycle
    // log files while skctl runs: a file that vanishes under the secondary
    // must be retried, never reported as damage.
    let dir = tempfile::tempdir().unwrap();
    let datadir = dir.path().join("sk1");
    let sk = Safekeeper::start(&datadir, 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(7, true), 1);
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut pos = START;
            let piece = wal_bytes(1, 0, 256 * 1024);
            // 160 MiB in rounds of 8 MiB.
            for _ in 0..20 {
                let round: Vec<u8> = piece.iter().copied().cycle().take(8 << 20).collect();
                pos = push(&mut p, 1, pos, &round, 256 * 1024, pos);
            }
            done.store(true, Ordering::SeqCst);
            (p, pos)
        })
    };
    let mut runs = 0;
    while !done.load(Ordering::SeqCst) || runs < 3 {
        let v = skctl(&datadir, &["--json", "verify"]);
        assert_eq!(
            v.code, 0,
            "verify beside a writing daemon failed: {}{}",
            v.stdout, v.stderr
        );
        let w = skctl(&datadir, &["--json", "wal", &tl()]);
        assert_eq!(w.code, 0, "wal failed: {}{}", w.stdout, w.stderr);
        runs += 1;
    }
    let (_p, end) = writer.join().unwrap();
    let t = &skctl_json(&datadir, &["timelines"])[0];
    assert_eq!(t["flush_lsn"], Lsn(end).to_string());
    assert!(runs >= 3);
}

/// A store with one timeline and chunks of 64 KiB from START, daemon
/// stopped. Returns the data directory and the WAL end.
fn stopped_store(dir: &Path, total: usize) -> (PathBuf, u64) {
    let datadir = dir.join("sk1");
    let mut sk = Safekeeper::start(&datadir, 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(9, true), 1);
    let wal = wal_bytes(1, START, total);
    let end = push(&mut p, 1, START, &wal, 64 * 1024, START + total as u64);
    drop(p);
    assert!(sk.terminate().success());
    (datadir, end)
}

/// Flip a byte in the chunk stored at `at`, with the rocksdb crate, in a
/// copy of the store.
fn corrupt_chunk(store: &Path, at: u64) {
    let db = common::store::raw_db(store);
    let wal = db.cf_handle("wal").unwrap();
    let key = wal_key(ttid(), Lsn(at));
    let mut v = db.get_cf(wal, key).unwrap().expect("a chunk at that LSN");
    v[100] ^= 0x40;
    db.put_cf(wal, key, v).unwrap();
    db.flush_cf(wal).unwrap();
}

#[test]
fn verify_names_the_timeline_and_range_of_a_corrupted_chunk_and_export_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let seg = SEG as u64;
    // Two and a half segments.
    let total = (2 * seg + seg / 2) as usize;
    let (datadir, end) = stopped_store(dir.path(), total);
    assert_eq!(skctl(&datadir, &["verify"]).code, 0);

    let copy = dir.path().join("damaged");
    copy_dir(&datadir, &copy);
    // A chunk in the second segment.
    let bad_start = START + seg + 5 * 64 * 1024;
    let bad_end = bad_start + 64 * 1024;
    corrupt_chunk(&copy, bad_start);

    let v = skctl(&copy, &["verify"]);
    assert_eq!(
        v.code, 1,
        "verify passed a damaged store: {}{}",
        v.stdout, v.stderr
    );
    let want = format!(
        "timeline {}: WAL {}..{}: chunk checksum mismatch",
        tl(),
        Lsn(bad_start),
        Lsn(bad_end)
    );
    assert!(v.stdout.contains(&want), "{}", v.stdout);
    let j = skctl(&copy, &["--json", "verify"]);
    assert_eq!(j.code, 1);
    let j: Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(j["ok"], false);
    assert_eq!(j["faults"].as_array().unwrap().len(), 1);
    assert_eq!(j["faults"][0]["kind"], "checksum");
    assert_eq!(j["faults"][0]["timeline"], tl());
    assert_eq!(j["faults"][0]["from_lsn"], Lsn(bad_start).to_string());

    // `wal` shows the bad chunk and exits non-zero.
    let w = skctl(&copy, &["wal", &tl()]);
    assert_eq!(w.code, 1);
    assert!(w.stdout.contains("BAD"), "{}", w.stdout);

    // Export over the damaged range is refused, leaving no file behind:
    // neither a segment under its name nor a temporary one.
    let out = dir.path().join("export-damaged");
    let e = export(&copy, &out, &[]);
    assert_eq!(e.code, 1, "export of damaged WAL succeeded: {}", e.stdout);
    assert!(
        e.stderr.contains(&tl()) && e.stderr.contains(&Lsn(bad_start).to_string()),
        "export error does not name the damage: {}",
        e.stderr
    );
    assert!(
        files_in(&out).is_empty(),
        "left behind: {:?}",
        files_in(&out)
    );

    // The first segment is intact and exports; the damaged one does not.
    let out1 = dir.path().join("export-first");
    let ok = export(&copy, &out1, &["--to", &Lsn(START + seg).to_string()]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert_eq!(files_in(&out1), [segment_file_name(1, 1, SEG)]);
    let from_third = export(
        &copy,
        &dir.path().join("export-third"),
        &["--from", &Lsn(START + 2 * seg + 12345).to_string()],
    );
    assert_eq!(from_third.code, 0, "{}", from_third.stderr);
    assert_eq!(
        files_in(&dir.path().join("export-third")),
        [format!("{}.partial", segment_file_name(1, 3, SEG))]
    );
    // The original is untouched by all this.
    assert_eq!(skctl(&datadir, &["verify"]).code, 0);
    let t = &skctl_json(&datadir, &["timelines"])[0];
    assert_eq!(t["flush_lsn"], Lsn(end).to_string());
}

#[test]
fn verify_finds_a_gap_and_a_state_contradiction() {
    let dir = tempfile::tempdir().unwrap();
    let (datadir, end) = stopped_store(dir.path(), 5 * 64 * 1024);
    let copy = dir.path().join("gap");
    copy_dir(&datadir, &copy);
    {
        let db = common::store::raw_db(&copy);
        let wal = db.cf_handle("wal").unwrap();
        db.delete_cf(wal, wal_key(ttid(), Lsn(START + 2 * 64 * 1024)))
            .unwrap();
        // And a state that commits beyond its own flush.
        let timeline = db.cf_handle("timeline").unwrap();
        let raw = db.get_cf(timeline, ttid().key_prefix()).unwrap().unwrap();
        let mut state: TimelineState = decode_stored(&raw).unwrap();
        state.commit_lsn = Lsn(end + 1);
        db.put_cf(
            timeline,
            ttid().key_prefix(),
            encode_stored(&state).unwrap(),
        )
        .unwrap();
    }
    let v = skctl(&copy, &["verify"]);
    assert_eq!(v.code, 1);
    let want = format!(
        "timeline {}: WAL {}..{}: no stored chunk holds this WAL",
        tl(),
        Lsn(START + 2 * 64 * 1024),
        Lsn(START + 3 * 64 * 1024)
    );
    assert!(v.stdout.contains(&want), "{}", v.stdout);
    let want = format!(
        "timeline {}: commit_lsn {} is beyond flush_lsn {}",
        tl(),
        Lsn(end + 1),
        Lsn(end)
    );
    assert!(v.stdout.contains(&want), "{}", v.stdout);
    // Exporting across the gap is refused too.
    let out = dir.path().join("out");
    let e = export(&copy, &out, &[]);
    assert_eq!(e.code, 1, "{}", e.stdout);
    assert!(files_in(&out).is_empty());
    // Exporting beyond flush_lsn, or from trimmed WAL, is a clear refusal.
    let e = export(&datadir, &out, &["--to", &Lsn(end + 1).to_string()]);
    assert_eq!(e.code, 2);
    assert!(e.stderr.contains("beyond"), "{}", e.stderr);
    let e = export(&datadir, &out, &["--from", "0/10"]);
    assert_eq!(e.code, 2);
    assert!(e.stderr.contains("trimmed"), "{}", e.stderr);
}

#[test]
fn export_of_real_wal_is_byte_identical_to_the_primarys_and_pg_waldump_reads_it() {
    if pg::absent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let primary = Postgres::start_primary(dir.path(), "");
    primary.sql("CREATE TABLE t (i int, pad text)");
    primary.sql("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g");
    // A record boundary inside the pushed WAL, for an export ending mid-segment.
    let mid: Lsn = primary
        .sql("SELECT pg_current_wal_insert_lsn()")
        .parse()
        .unwrap();
    primary.sql("INSERT INTO t SELECT g, repeat('y', 100) FROM generate_series(1, 30000) g");
    primary.sql("SELECT pg_switch_wal()");
    let insert: Lsn = primary
        .sql("SELECT pg_current_wal_insert_lsn()")
        .parse()
        .unwrap();
    let last_full = insert.segment_number(SEG) - 1;
    let seg_path = |segno| primary.pg_wal().join(segment_file_name(1, segno, SEG));
    let mut wal = Vec::new();
    for segno in 1..=last_full {
        wal.extend(std::fs::read(seg_path(segno)).unwrap());
    }
    let end = START + wal.len() as u64;
    assert!(mid.0 > START && mid.0 < end && !mid.is_segment_start(SEG));

    let datadir = dir.path().join("sk1");
    let sk = Safekeeper::start(&datadir, 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(primary.system_id(), true), 1);
    assert_eq!(push(&mut p, 1, START, &wal, 128 * 1024, end), end);

    // Exported while the daemon runs: every segment byte-identical.
    let out = pg::postgres_dir(dir.path(), "export");
    let e = export(&datadir, &out, &[]);
    assert_eq!(e.code, 0, "export failed: {}{}", e.stdout, e.stderr);
    let names: Vec<String> = (1..=last_full)
        .map(|s| segment_file_name(1, s, SEG))
        .collect();
    assert_eq!(files_in(&out), names);
    for (segno, name) in (1..=last_full).zip(&names) {
        let got = std::fs::read(out.join(name)).unwrap();
        let want = std::fs::read(seg_path(segno)).unwrap();
        assert!(got == want, "exported {name} differs from the primary's");
    }
    let (ok, _, stderr) = run(Command::new(pg::pg_bin("pg_waldump"))
        .arg("-p")
        .arg(&out)
        .arg("-s")
        .arg(Lsn(START).to_string())
        .arg("-e")
        .arg(Lsn(end).to_string())
        .arg("-q"));
    assert!(ok, "pg_waldump failed on the export: {stderr}");

    // Up to a point inside a segment: the last file is `.partial`, full
    // size, the primary's bytes up to `mid` and zeros after.
    let out2 = dir.path().join("export-mid");
    let e = skctl(
        &datadir,
        &[
            "--json",
            "export",
            &tl(),
            "--out",
            out2.to_str().unwrap(),
            "--to",
            &mid.to_string(),
        ],
    );
    assert_eq!(e.code, 0, "{}", e.stderr);
    let report: Value = serde_json::from_str(&e.stdout).unwrap();
    let files = report["files"].as_array().unwrap();
    let last = files.last().unwrap();
    assert_eq!(last["partial"], true);
    let mid_seg = mid.segment_number(SEG);
    let partial_name = format!("{}.partial", segment_file_name(1, mid_seg, SEG));
    assert_eq!(last["name"], partial_name.as_str());
    let partial = std::fs::read(out2.join(&partial_name)).unwrap();
    assert_eq!(partial.len(), SEG as usize);
    let cut = mid.segment_offset(SEG) as usize;
    let want = std::fs::read(seg_path(mid_seg)).unwrap();
    assert!(partial[..cut] == want[..cut], "partial segment differs");
    assert!(partial[cut..].iter().all(|b| *b == 0), "not zero-filled");
    // pg_waldump does not open `.partial` files: read a renamed copy.
    let renamed = pg::postgres_dir(dir.path(), "export-mid-renamed");
    for f in files_in(&out2) {
        std::fs::copy(out2.join(&f), renamed.join(f.trim_end_matches(".partial"))).unwrap();
    }
    let (ok, _, stderr) = run(Command::new(pg::pg_bin("pg_waldump"))
        .arg("-p")
        .arg(&renamed)
        .arg("-s")
        .arg(Lsn(START).to_string())
        .arg("-e")
        .arg(mid.to_string())
        .arg("-q"));
    assert!(ok, "pg_waldump failed on the partial export: {stderr}");

    // An export into a directory that already holds those segments is
    // refused rather than overwriting them.
    let again = export(&datadir, &out, &[]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
}
