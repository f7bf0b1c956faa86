//! A safekeeper whose disk fills up, on a real (small) tmpfs: the proposer
//! gets a clear error, nothing acknowledged is lost, the daemon keeps
//! answering other connections, and once there is space again a restart
//! resumes where the acknowledged WAL ends.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use walkeeper::codec::decode_acceptor_message;
use walkeeper::consensus::messages::*;
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::Storage;

/// A tmpfs of a fixed size, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// None where mounting is not allowed (not root, or no CAP_SYS_ADMIN).
    fn mount(path: &Path, megabytes: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).unwrap();
        let (ok, _, err) = run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}M"), "tmpfs"])
            .arg(path));
        if !ok {
            return Err(err);
        }
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn resize(&self, megabytes: u64) {
        let (ok, _, err) = run(Command::new("mount")
            .args(["-o", &format!("remount,size={megabytes}M")])
            .arg(&self.path));
        assert!(ok, "remounting the tmpfs: {err}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    // Dropped after the safekeeper below (locals drop in reverse order).
    let mnt = match Tmpfs::mount(&dir.path().join("mnt"), 48) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs to fill (needs root): {e}");
            return;
        }
    };
    let datadir = mnt.path.join("sk1");
    let mut sk = Safekeeper::start(&datadir, 1, true);
    let mut p = RawClient::proposer(sk.pg_addr);
    elect_single(&mut p, greeting_for(42, true), 1);

    // One 128 KiB append at a time until the store refuses one.
    let chunk = 128 * 1024;
    let mut acked = START;
    let refusal = loop {
        assert!(
            acked < START + (512 << 20),
            "512 MiB fitted on a 48 MiB tmpfs?"
        );
        let wal = wal_bytes(1, acked, chunk);
        p.send(&append(1, acked, &wal, acked));
        let m = p
            .read()
            .expect("a reply or an error, not a dropped connection");
        match m.tag {
            b'd' => match decode_acceptor_message(&m.body).unwrap() {
                AcceptorMessage::Append(a) => {
                    assert_eq!(a.flush_lsn, Lsn(acked + chunk as u64));
                    acked += chunk as u64;
                }
                other => panic!("{other:?}"),
            },
            b'E' => break m,
            other => panic!("unexpected message {:?}", other as char),
        }
    };
    let code = refusal.error_field(b'C').unwrap_or_default();
    let message = refusal.error_field(b'M').unwrap_or_default();
    eprintln!(
        "refused after {} MiB acknowledged: {code} {message}",
        (acked - START) >> 20
    );
    assert_eq!(code, "53100", "{message}");
    assert!(
        message.contains("No space left on device") && message.contains(&ttid().to_string()),
        "{message}"
    );
    assert!(acked > START + (8 << 20), "only {acked} acknowledged");

    // The daemon is up: other connections are answered, and a new proposer
    // gets the same clear error rather than a hang.
    let mut other = RawClient::connect(sk.pg_addr, "-c walkeeper.role=proposer");
    let reply = other.query("IDENTIFY_SYSTEM");
    assert!(reply.iter().any(|m| m.tag == b'D'), "{reply:?}");
    let mut p2 = RawClient::proposer(sk.pg_addr);
    p2.send(&ProposerMessage::Greeting(greeting_for(42, false)));
    let m = p2.read().expect("an answer to the greeting");
    assert_eq!(m.tag, b'E', "a greeting on a timeline that failed to store");
    assert!(
        m.error_field(b'M')
            .unwrap_or_default()
            .contains("No space left on device"),
        "{:?}",
        m.error_field(b'M')
    );
    assert!(
        sk.log_text().contains("No space left on device"),
        "the log says why"
    );
    drop((p, p2, other));

    // Space again, and a restart: every acknowledged byte is there and the
    // timeline takes WAL again.
    sk.kill9();
    mnt.resize(256);
    sk.restart();
    let mut p = RawClient::proposer(sk.pg_addr);
    p.send(&ProposerMessage::Greeting(greeting_for(42, false)));
    assert!(matches!(p.recv(), AcceptorMessage::Greeting(_)));
    p.send(&ProposerMessage::VoteRequest(VoteRequest::new(2)));
    let AcceptorMessage::Vote(v) = p.recv() else {
        panic!("expected a vote");
    };
    assert!(
        v.granted && v.flush_lsn >= Lsn(acked),
        "{v:?} acked {acked}"
    );
    let flush = v.flush_lsn;
    p.send(&ProposerMessage::Elected(Elected {
        term: 2,
        start_streaming_at: flush,
        term_history: walkeeper::consensus::term_history::TermHistory(vec![
            walkeeper::consensus::acceptor::term_lsn(1, START),
            walkeeper::consensus::acceptor::term_lsn(2, flush.0),
        ]),
        pg_tli: 0,
        pg_ancestors: Vec::new(),
    }));
    assert!(matches!(p.recv(), AcceptorMessage::Append(a) if a.flush_lsn == flush));
    let more = wal_bytes(2, flush.0, 1 << 20);
    let end = push(
        &mut p,
        2,
        flush.0,
        &more,
        chunk,
        flush.0 + more.len() as u64,
    );
    drop(p);
    sk.kill9();
    let store = RocksStore::open(&datadir).unwrap();
    let held = store.read_wal(ttid(), Lsn(START), Lsn(acked)).unwrap();
    assert!(
        held == wal_bytes(1, START, (acked - START) as usize),
        "acknowledged WAL changed"
    );
    assert_eq!(store.read_wal(ttid(), flush, Lsn(end)).unwrap(), more);
}

/// Fill what is left of the filesystem at `dir` with one file; removing
/// it frees the space again.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0x55u8; 1 << 20];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Partial pages: write bytes until nothing more fits.
    while matches!(f.write(&[0x55]), Ok(1)) {}
    path
}

/// A staged write that RocksDB refused (a WAL reader wrote it unsynced to
/// make it readable, on a full disk) is never acknowledged by a later sync,
/// even once there is space again: RocksDB dropped it, and syncing its log
/// still works. The store accepts nothing more until it is reopened, and
/// the reopened store holds what was durable.
#[test]
fn a_write_refused_by_a_full_disk_is_never_synced_into_success() {
    use walkeeper::consensus::acceptor::Write;
    use walkeeper::id::NodeId;
    use walkeeper::store::{StoreError, StoreErrorKind};

    let dir = tempfile::tempdir().unwrap();
    let mnt = match Tmpfs::mount(&dir.path().join("mnt"), 64) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs to fill (needs root): {e}");
            return;
        }
    };
    let path = mnt.path.join("store");
    let t = ttid();
    let state = |flush: u64| Box::new(common::store::store_state(t, Lsn(START), Lsn(flush)));
    let mut store = RocksStore::init(&path, NodeId(1)).unwrap();
    store.write(t, &[Write::PutState(state(START))]).unwrap();
    store.sync().unwrap();

    let filler = fill(&mnt.path);
    let wal = wal_bytes(1, START, 1 << 20);
    let end = START + wal.len() as u64;
    store
        .write(
            t,
            &[
                Write::AppendWal {
                    begin: Lsn(START),
                    bytes: wal.into(),
                },
                Write::PutState(state(end)),
            ],
        )
        .unwrap();
    // A WAL sender reads: the staged batch goes to RocksDB first, unsynced,
    // and the full disk refuses it.
    let read = store.read_wal(t, Lsn(START), Lsn(START));
    assert!(
        matches!(&read, Err(e) if e.kind() == StoreErrorKind::DiskFull),
        "the read's write of the staged batch: {read:?}"
    );
    std::fs::remove_file(filler).unwrap();
    let synced = store.sync();
    assert!(
        synced.is_err(),
        "a sync after a refused write claimed it durable"
    );
    let again = store.write(t, &[Write::PutState(state(START))]);
    assert!(matches!(again, Err(StoreError::Failed(_))), "{again:?}");
    drop(store);

    let store = RocksStore::open(&path).unwrap();
    let held = store.timeline_state(t).unwrap().unwrap();
    assert_eq!(
        held.flush_lsn,
        Lsn(START),
        "what is durable is the state before"
    );
}
