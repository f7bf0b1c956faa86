//! A whole local cluster for end-to-end tests: a real primary whose
//! commits wait for three safekeepers through safekeeper-proxy.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pg::{self, Postgres};
use super::*;
use walkeeper::id::{TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;
use walkeeper::store::rocks::RocksStore;
use walkeeper::store::Storage;

pub const SYNC_CONF: &str = "synchronous_standby_names = 'safekeeper_proxy'\n";

/// The proxy's default timeline.
pub fn default_ttid() -> Ttid {
    Ttid::new(
        "00000000000000000000000000000001"
            .parse::<TenantId>()
            .unwrap(),
        "00000000000000000000000000000001"
            .parse::<TimelineId>()
            .unwrap(),
    )
}

/// Fields drop in declaration order: the proxy stops first, the temporary
/// directory goes last, after every process that lives in it has stopped
/// (pg_ctl cannot stop a server whose data directory is gone).
pub struct Cluster {
    pub proxy: Option<Proxy>,
    pub sks: Vec<Safekeeper>,
    pub pg: Postgres,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Option<Cluster> {
        if pg::absent() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let pg = Postgres::start_primary(dir.path(), SYNC_CONF);
        let sks: Vec<Safekeeper> = (1..=3)
            .map(|n| Safekeeper::start(&dir.path().join(format!("sk{n}")), n, true))
            .collect();
        Some(Cluster::around(dir, pg, sks))
    }

    /// A cluster of this primary and these safekeepers (living in `dir`):
    /// starts the proxy with `--create-timeline` and waits until it is the
    /// primary's synchronous standby.
    pub fn around(dir: tempfile::TempDir, pg: Postgres, sks: Vec<Safekeeper>) -> Cluster {
        let mut c = Cluster {
            dir,
            pg,
            sks,
            proxy: None,
        };
        c.start_proxy("proxy1", &["--create-timeline"]);
        c.wait_sync();
        c
    }

    pub fn start_proxy(&mut self, name: &str, extra: &[&str]) {
        let refs: Vec<&Safekeeper> = self.sks.iter().collect();
        self.proxy = Some(Proxy::start(
            self.dir.path(),
            name,
            self.pg.port,
            &refs,
            extra,
        ));
    }

    /// `safekeeper-proxy --sync-only` over the cluster's safekeepers: the
    /// LSN it settled them at.
    pub fn sync_only(&self) -> Lsn {
        self.sync_only_report().0
    }

    /// `--sync-only`: the LSN, and its report of which members it settled
    /// (stderr, `settled at … : nodes …; not settled: …`).
    pub fn sync_only_report(&self) -> (Lsn, String) {
        let (ok, out, err) = run(Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
            .arg("--sync-only")
            .arg("--safekeepers")
            .arg(member_list(&self.sks))
            .args(["--sync-timeout", "60"]));
        assert!(ok, "--sync-only failed: {err}");
        let lsn = out
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not an LSN: {out:?}"));
        let report = err
            .lines()
            .find(|l| l.starts_with("safekeeper-proxy: settled at"))
            .unwrap_or_default()
            .to_string();
        (lsn, report)
    }

    /// `safekeeper-proxy --promote-check --standby <standby>`, waiting up to
    /// `wait_secs` for it: the exit code and the verdict it printed.
    pub fn promote_check(&self, standby: &Postgres, wait_secs: u32) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
            .arg("--promote-check")
            .arg("--standby")
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                standby.port
            ))
            .arg("--safekeepers")
            .arg(member_list(&self.sks))
            .args(["--sync-timeout", "60", "--promote-wait"])
            .arg(wait_secs.to_string())
            .output()
            .expect("running safekeeper-proxy --promote-check");
        let verdict = String::from_utf8_lossy(&out.stdout).trim().to_string();
        eprintln!(
            "--promote-check: {verdict}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), verdict)
    }

    /// SIGKILL the primary (its postmaster and every backend, as when its
    /// host dies: a backend busy in one long statement would go on writing
    /// without its postmaster) and the proxy together.
    pub fn kill_primary_and_proxy(&mut self) {
        let pid = std::fs::read_to_string(self.pg.datadir.join("postmaster.pid")).unwrap();
        let pid: i32 = pid.lines().next().unwrap().trim().parse().unwrap();
        // Stopped first, so it forks no backend after its children are
        // listed.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        let children = children_of(pid);
        for p in std::iter::once(pid).chain(children) {
            unsafe {
                libc::kill(p, libc::SIGKILL);
            }
        }
        self.proxy.as_mut().unwrap().kill9();
        // Until it is reaped, its pid holds postmaster.pid for a restart
        // (PostgreSQL takes a zombie for a running postmaster).
        wait_for(
            Duration::from_secs(60),
            "the killed postmaster to be gone",
            || (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(()),
        );
    }

    /// Start `standby` (from a base backup) fed only by the safekeepers,
    /// with `first` listed first in its multi-host conninfo; `extra_conf`
    /// is appended last.
    pub fn start_standby(&self, standby: &mut Postgres, first: usize, extra_conf: &str) {
        let mut order: Vec<&Safekeeper> = vec![&self.sks[first]];
        order.extend(
            self.sks
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != first)
                .map(|(_, s)| s),
        );
        start_standby_on(standby, &order, extra_conf);
    }

    pub fn wait_sync(&self) {
        wait_for(
            Duration::from_secs(60),
            "the proxy to be the synchronous standby",
            || {
                let s = self.pg.sql(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'safekeeper_proxy'",
            );
                (s == "sync").then_some(())
            },
        );
    }

    /// With safekeepers 2 and 3 killed, a commit (`sql`) does not return
    /// while one of three is up (watched for three seconds: a thing that
    /// must not happen has no condition to wait for); safekeeper 2 is
    /// restarted and the commit returns.
    pub fn assert_commit_waits_for_a_majority(&mut self, sql: &str) {
        self.sks[1].kill9();
        self.sks[2].kill9();
        let mut commit = pg::psql(self.pg.port, sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let early = commit.try_wait().unwrap();
        if early.is_some() {
            panic!("a commit returned with one of three safekeepers up: {early:?}");
        }
        self.sks[1].restart();
        let status = wait_for(Duration::from_secs(60), "the commit to return", || {
            commit.try_wait().unwrap()
        });
        assert!(status.success(), "{sql}: {status}");
    }

    pub fn flush_lsn(&self) -> Lsn {
        self.pg
            .sql("SELECT pg_current_wal_flush_lsn()")
            .parse()
            .unwrap()
    }

    pub fn pgbench(&self, args: &[&str]) -> Command {
        let mut c = Command::new(pg::pg_bin("pgbench"));
        c.args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.pg.port.to_string())
            .args(args)
            .arg("postgres");
        c
    }

    pub fn init_pgbench(&self) {
        let (ok, out, err) = run(&mut self.pgbench(&["-i", "-s", "1", "-q"]));
        assert!(ok, "pgbench -i failed: {out}{err}");
    }

    pub fn spawn_pgbench(&self, seconds: u32) -> Child {
        self.pgbench(&["-N", "-c", "4", "-T", &seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            // `pid (comm) state ppid …`; comm may hold spaces, so split
            // after its closing parenthesis.
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The primary's WAL over [from, to), from its pg_wal segment files.
/// Start `standby` fed by these safekeepers, tried in this order (a
/// multi-host `primary_conninfo`: libpq moves on to the next host when one
/// refuses).
pub fn start_standby_on(standby: &mut Postgres, order: &[&Safekeeper], extra_conf: &str) {
    let hosts: Vec<&str> = order.iter().map(|_| "127.0.0.1").collect();
    let ports: Vec<String> = order.iter().map(|s| s.pg_addr.port().to_string()).collect();
    pg::append_conf(
        &standby.datadir,
        &format!(
            "primary_conninfo = 'host={} port={} user=postgres connect_timeout=2'\nhot_standby = on\nsynchronous_standby_names = ''\n{extra_conf}\n",
            hosts.join(","),
            ports.join(",")
        ),
    );
    standby.mark_standby();
    standby.start();
}

pub fn primary_wal(pg: &Postgres, from: Lsn, to: Lsn) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        let name = pos.segment_file_name(1, SEG);
        let seg = std::fs::read(pg.pg_wal().join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let off = pos.segment_offset(SEG) as usize;
        let n = ((to.0 - pos.0) as usize).min(SEG as usize - off);
        out.extend_from_slice(&seg[off..off + n]);
        pos = Lsn(pos.0 + n as u64);
    }
    out
}

/// Open a stopped safekeeper's store: (timeline start, flush, commit, WAL
/// over [start, upto) if held).
pub fn stored(datadir: &Path, upto: Lsn) -> (Lsn, Lsn, Lsn, Option<Vec<u8>>) {
    let store = RocksStore::open(datadir).unwrap();
    let state = store
        .timelines()
        .unwrap()
        .into_iter()
        .find(|s| s.ttid == default_ttid())
        .expect("the proxy's timeline");
    let wal = (state.flush_lsn >= upto).then(|| {
        store
            .read_wal(default_ttid(), state.timeline_start_lsn, upto)
            .unwrap()
    });
    (
        state.timeline_start_lsn,
        state.flush_lsn,
        state.commit_lsn,
        wal,
    )
}

pub fn pgbench_ok(child: Child) -> u64 {
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in: {text}"))
}

/// The bound within which a standby started after `--sync-only` must have
/// received the settled LSN (its own start and a refusal or two included).
pub const STANDBY_BOUND: Duration = Duration::from_secs(30);

/// The standby receives WAL up to `synced` within STANDBY_BOUND and then
/// holds every acknowledged row.
pub fn assert_standby_gets_every_commit(standby: &Postgres, synced: Lsn, acked: &[i32]) {
    let missing = rows_missing_on(standby, synced, acked);
    assert_eq!(
        missing, 0,
        "the standby lacks {missing} acknowledged rows after replaying up to {synced}"
    );
}

/// How many acknowledged rows the standby lacks once it has received the
/// settled LSN and had time to replay it (0 as soon as it holds them all).
pub fn rows_missing_on(standby: &Postgres, synced: Lsn, acked: &[i32]) -> usize {
    wait_for(
        STANDBY_BOUND,
        "the standby to receive the settled LSN",
        || {
            let got: Lsn = standby
                .sql("SELECT coalesce(pg_last_wal_receive_lsn(), '0/0')")
                .parse()
                .ok()?;
            (got >= synced).then_some(())
        },
    );
    let list = acked
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // On standard input: a long run's list is beyond an argument's size.
    let sql = format!(
        "SELECT count(*) FROM unnest(ARRAY[{list}]::int[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.id = a.id);"
    );
    let missing = || -> usize {
        use std::io::Write;
        let mut child = pg::psql(standby.port, "")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql");
        let _ = child.stdin.take().unwrap().write_all(sql.as_bytes());
        let out = child.wait_with_output().expect("psql");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(usize::MAX)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = missing();
        if m == 0 || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Ledger clients on the primary: each row the primary acknowledged is
/// recorded, until `stop`.
pub struct Ledger {
    acked: std::sync::Arc<std::sync::Mutex<Vec<i32>>>,
    /// When each acknowledgement came, in the order of `acked`.
    times: std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ledger {
    pub fn start(port: u16) -> Ledger {
        Ledger::start_at(port, 1)
    }

    /// Ledger clients inserting ids from `first` on.
    pub fn start_at(port: u16, first: i32) -> Ledger {
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (a, s, t) = (acked.clone(), stop.clone(), times.clone());
        let thread = std::thread::spawn(move || {
            let mut i = first - 1;
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let ok = pg::psql(port, &format!("INSERT INTO ledger VALUES ({i})"))
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false);
                if ok {
                    a.lock().unwrap().push(i);
                    t.lock().unwrap().push(std::time::Instant::now());
                }
            }
        });
        Ledger {
            acked,
            times,
            stop,
            thread: Some(thread),
        }
    }

    /// Every row acknowledged so far.
    pub fn acked(&self) -> Vec<i32> {
        self.acked.lock().unwrap().clone()
    }

    /// When the first acknowledgement after `t` came, if one did.
    pub fn first_ack_after(&self, t: std::time::Instant) -> Option<std::time::Instant> {
        self.times
            .lock()
            .unwrap()
            .iter()
            .find(|at| **at > t)
            .copied()
    }

    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Wait until `n` rows more than now are acknowledged.
    pub fn wait_more(&self, n: usize) {
        let want = self.count() + n;
        wait_for(Duration::from_secs(60), "ledger commits", || {
            (self.count() >= want).then_some(())
        });
    }

    /// Stop the clients; every acknowledged row.
    pub fn stop(mut self) -> Vec<i32> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.acked.lock().unwrap().clone()
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
