//! A real PostgreSQL 15 for tests: initdb'd in a temporary directory owned by
//! the `postgres` user (PostgreSQL refuses to run as root), on a free
//! loopback port, stopped (immediate) on drop even when the test fails.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{free_port, run, SEG};
use walkeeper::lsn::{segment_file_name, Lsn};

pub fn pg_bin(name: &str) -> PathBuf {
    let dir = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(name)
}

/// Whether PostgreSQL 15 is here to test against. Tests that need it say so
/// and skip when it is not (tools/setup.sh installs it).
pub fn available() -> bool {
    pg_bin("postgres").exists()
}

/// Whether PostgreSQL 15 is absent, so the calling test is to return at once;
/// it says SKIPPED, so a green run does not hide that nothing was tested.
pub fn absent() -> bool {
    if available() {
        return false;
    }
    eprintln!("SKIPPED: PostgreSQL 15 binaries not found (run tools/setup.sh)");
    true
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .arg("-u")
        .arg("postgres")
        .output()
        .expect("id");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a postgres user");
    let out = Command::new("id")
        .arg("-g")
        .arg("postgres")
        .output()
        .expect("id");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a postgres group");
    (uid, gid)
}

/// A directory the `postgres` user owns, under a fresh temporary directory.
pub fn postgres_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (uid, gid) = postgres_ids();
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    assert_eq!(
        unsafe { libc::chown(c.as_ptr(), uid, gid) },
        0,
        "chown {dir:?}"
    );
    // The postgres user must be able to walk into the temporary base.
    let mut p = base.to_path_buf();
    loop {
        let mut perm = std::fs::metadata(&p).unwrap().permissions();
        if perm.mode() & 0o001 == 0 {
            perm.set_mode(perm.mode() | 0o711);
            std::fs::set_permissions(&p, perm).unwrap();
        }
        if !p.pop() || p.as_os_str().is_empty() || p == Path::new("/") {
            break;
        }
    }
    dir
}

pub fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("runuser");
    c.arg("-u").arg("postgres").arg("--").arg(program);
    c
}

pub struct Postgres {
    pub datadir: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
}

impl Postgres {
    /// initdb and start a primary with WAL kept for the tests (and hint
    /// bits logged, so that a superseded primary can be `pg_rewind`ed).
    pub fn start_primary(base: &Path, extra_conf: &str) -> Postgres {
        let root = postgres_dir(base, "pg");
        let datadir = root.join("data");
        let (ok, out, err) = run(as_postgres(&pg_bin("initdb"))
            .arg("-D")
            .arg(&datadir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]));
        assert!(ok, "initdb failed: {out}{err}");
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 10\nmax_replication_slots = 10\n\
             wal_keep_size = '2GB'\nfsync = off\nsynchronous_commit = on\n\
             wal_log_hints = on\n{extra_conf}\n",
            root.display()
        );
        append_conf(&datadir, &conf);
        let mut pg = Postgres {
            log: root.join("log"),
            datadir,
            port,
            running: false,
        };
        pg.start();
        pg
    }

    /// A standby from `pg_basebackup -X none` of `primary`, not started.
    pub fn basebackup(base: &Path, primary: &Postgres, name: &str) -> Postgres {
        let root = postgres_dir(base, name);
        let datadir = root.join("data");
        let (ok, out, err) = run(as_postgres(&pg_bin("pg_basebackup"))
            .arg("-D")
            .arg(&datadir)
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "none",
                "--no-sync",
                "-c",
                "fast",
            ])
            .arg("-p")
            .arg(primary.port.to_string()));
        assert!(ok, "pg_basebackup failed: {out}{err}");
        let port = free_port();
        append_conf(
            &datadir,
            &format!(
                "port = {port}\nunix_socket_directories = '{}'\n",
                root.display()
            ),
        );
        Postgres {
            log: root.join("log"),
            datadir,
            port,
            running: false,
        }
    }

    /// A server in an existing data directory, not started.
    pub fn at(datadir: PathBuf, port: u16, log: PathBuf) -> Postgres {
        Postgres {
            datadir,
            port,
            log,
            running: false,
        }
    }

    /// Make the next start a standby (`standby.signal`, owned by postgres).
    pub fn mark_standby(&self) {
        let signal = self.datadir.join("standby.signal");
        std::fs::write(&signal, "").unwrap();
        let (ok, _, err) = run(Command::new("chown").arg("postgres:postgres").arg(&signal));
        assert!(ok, "chown {signal:?}: {err}");
    }

    pub fn start(&mut self) {
        let (ok, out, err) = run(as_postgres(&pg_bin("pg_ctl"))
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "60", "start"]));
        assert!(ok, "pg_ctl start failed: {out}{err}\n{}", self.log_text());
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = run(as_postgres(&pg_bin("pg_ctl"))
                .arg("-D")
                .arg(&self.datadir)
                .args(["-m", "immediate", "-w", "stop"]));
            self.running = false;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Run SQL through psql; stdout, unaligned and tuples only.
    pub fn sql(&self, sql: &str) -> String {
        let (ok, out, err) = run(psql(self.port, sql).args(["-v", "ON_ERROR_STOP=1"]));
        assert!(ok, "psql {sql:?} failed: {err}");
        out.trim().to_string()
    }

    pub fn system_id(&self) -> u64 {
        self.sql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .unwrap()
    }

    pub fn pg_wal(&self) -> PathBuf {
        self.datadir.join("pg_wal")
    }
}

/// psql running `sql` as postgres on the loopback server at `port`, unaligned
/// tuples only, no psqlrc: what a test client or a load thread needs.
pub fn psql(port: u16, sql: &str) -> Command {
    let mut cmd = Command::new(pg_bin("psql"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-XAtq",
    ])
    .arg("-p")
    .arg(port.to_string())
    .arg("-c")
    .arg(sql);
    cmd
}

pub fn append_conf(datadir: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(datadir.join("postgresql.conf"))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running && std::thread::panicking() {
            eprintln!(
                "--- postgres log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        self.stop();
    }
}

/// pg_receivewal into `out` from the server on `port`, from the start of
/// segment `first` until it has received past `endpos`. It resumes from the
/// newest segment it finds: a zero-filled partial `first` makes it start
/// there instead of at the server's current position.
pub fn receive_wal(out: &Path, port: u16, first: u64, endpos: Lsn) {
    let (ok, stdout, stderr) = run(&mut receive_wal_command(out, port, first, endpos));
    assert!(
        ok,
        "pg_receivewal from port {port} failed: {stdout}{stderr}"
    );
}

/// The pg_receivewal command of [`receive_wal`], with the zero-filled
/// partial of segment `first` already written to `out`.
pub fn receive_wal_command(out: &Path, port: u16, first: u64, endpos: Lsn) -> Command {
    std::fs::write(
        out.join(format!("{}.partial", segment_file_name(1, first, SEG))),
        vec![0u8; SEG as usize],
    )
    .unwrap();
    let mut cmd = Command::new(pg_bin("pg_receivewal"));
    cmd.arg("-D")
        .arg(out)
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "--no-loop",
            "--no-sync",
        ])
        .arg("-p")
        .arg(port.to_string())
        .arg("-E")
        .arg(endpos.to_string());
    cmd
}

/// Every segment in `segnos` that pg_receivewal wrote to `got` (complete or
/// `.partial`) is byte-identical to the primary's in `pg_wal`.
pub fn assert_same_segments(got: &Path, pg_wal: &Path, segnos: std::ops::RangeInclusive<u64>) {
    for segno in segnos {
        let name = segment_file_name(1, segno, SEG);
        let ours = std::fs::read(got.join(&name))
            .or_else(|_| std::fs::read(got.join(format!("{name}.partial"))))
            .unwrap_or_else(|e| panic!("{name} missing: {e}"));
        let want = std::fs::read(pg_wal.join(&name)).unwrap();
        assert!(ours == want, "segment {name} differs from the primary's");
    }
}
