//! Shared pieces of the end-to-end tests: real daemons on free loopback
//! ports in temporary directories, killed when the test ends however it ends,
//! and a minimal proposer client speaking the real wire protocol.
#![allow(dead_code)]

pub mod certs;
#[cfg(feature = "rocksdb")]
pub mod cluster;
pub mod netns;
pub mod pg;
pub mod store;
pub mod users;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::{Read, Write as IoWrite};
use walkeeper::codec::{decode_acceptor_message, encode_proposer_message, PROTOCOL_VERSION};
use walkeeper::consensus::messages::*;
use walkeeper::id::{NodeId, TenantId, TimelineId, Ttid};
use walkeeper::lsn::Lsn;

/// A port nobody listens on right now (the OS picks it).
/// A port nobody listens on now, and never handed out before by this test
/// process: the kernel may give a port just released again, so two servers
/// of one test could otherwise be told the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("binding an ephemeral port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A safekeeper process; SIGKILLed on drop unless it was stopped.
pub struct Safekeeper {
    pub child: Option<Child>,
    pub datadir: PathBuf,
    pub node_id: u64,
    pub pg_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub log: PathBuf,
    /// Flags besides the data directory, node id and addresses.
    pub args: Vec<String>,
    /// The network namespace it runs in (`ip netns exec`); None: the
    /// test's own.
    pub netns: Option<String>,
}

impl Safekeeper {
    pub fn start(datadir: &Path, node_id: u64, init: bool) -> Safekeeper {
        let pg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_on(datadir, node_id, init, pg_addr, http_addr)
    }

    /// With these flags instead of the usual ones (`--checkpoint-dir`).
    pub fn start_with(datadir: &Path, node_id: u64, init: bool, args: &[&str]) -> Safekeeper {
        let pg_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let http_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        Self::start_args(datadir, node_id, init, pg_addr, http_addr, args)
    }

    /// Checkpoints may go anywhere in the test's directory (the data
    /// directory's parent).
    fn usual_args(datadir: &Path) -> Vec<String> {
        let parent = datadir
            .parent()
            .expect("a data directory in a test directory");
        vec!["--checkpoint-dir".into(), parent.display().to_string()]
    }

    pub fn start_on(
        datadir: &Path,
        node_id: u64,
        init: bool,
        pg_addr: SocketAddr,
        http_addr: SocketAddr,
    ) -> Safekeeper {
        let args = Self::usual_args(datadir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start_args(datadir, node_id, init, pg_addr, http_addr, &args)
    }

    fn start_args(
        datadir: &Path,
        node_id: u64,
        init: bool,
        pg_addr: SocketAddr,
        http_addr: SocketAddr,
        args: &[&str],
    ) -> Safekeeper {
        let log = datadir.with_extension(format!("log.{}", std::process::id()));
        let mut sk = Safekeeper {
            child: None,
            datadir: datadir.to_path_buf(),
            node_id,
            pg_addr,
            http_addr,
            log,
            args: args.iter().map(|a| a.to_string()).collect(),
            netns: None,
        };
        sk.spawn(init);
        sk
    }

    fn spawn(&mut self, init: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let program = env!("CARGO_BIN_EXE_safekeeper");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        };
        cmd.arg("--datadir")
            .arg(&self.datadir)
            .arg("--node-id")
            .arg(self.node_id.to_string())
            .arg("--listen-pg")
            .arg(self.pg_addr.to_string())
            .arg("--listen-http")
            .arg(self.http_addr.to_string())
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if init {
            cmd.arg("--init");
        }
        self.child = Some(cmd.spawn().expect("starting the safekeeper binary"));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if TcpStream::connect(self.pg_addr).is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "safekeeper exited with {status} while starting; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "safekeeper did not listen on {} within 30 s; log:\n{}",
            self.pg_addr,
            self.log_text()
        );
    }

    /// A safekeeper inside network namespace `netns`, listening on `ip`
    /// there (reached from the test's namespace over its veth pair).
    pub fn start_in_netns(
        datadir: &Path,
        node_id: u64,
        init: bool,
        netns: &str,
        ip: std::net::Ipv4Addr,
    ) -> Safekeeper {
        let log = datadir.with_extension(format!("log.{}", std::process::id()));
        let mut sk = Safekeeper {
            child: None,
            datadir: datadir.to_path_buf(),
            node_id,
            pg_addr: SocketAddr::new(ip.into(), free_port()),
            http_addr: SocketAddr::new(ip.into(), free_port()),
            log,
            // The test's own network namespaces and addresses, reached by
            // nobody else: the safe default's refusal does not apply.
            args: [Self::usual_args(datadir), vec!["--insecure-no-auth".into()]].concat(),
            netns: Some(netns.to_string()),
        };
        sk.spawn(init);
        sk
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a stopped safekeeper only");
        self.spawn(false);
    }

    /// A stopped safekeeper's disk is replaced: its store is deleted and
    /// created anew (`--init`) under the same node id and addresses.
    pub fn wipe_and_reinit(&mut self) {
        assert!(self.child.is_none(), "wipe a stopped safekeeper only");
        std::fs::remove_dir_all(&self.datadir).unwrap();
        self.spawn(true);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("safekeeper did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- safekeeper {} log ---\n{}",
                self.node_id,
                self.log_text()
            );
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

pub fn ttid() -> Ttid {
    Ttid::new(TenantId([0x11; 16]), TimelineId([0x22; 16]))
}

pub const SEG: u32 = 16 << 20;
pub const START: u64 = SEG as u64;

pub fn greeting(node_ids: &[u64], create: bool) -> Greeting {
    Greeting {
        conf: None,
        protocol_version: PROTOCOL_VERSION,
        ttid: ttid(),
        server: ServerInfo {
            system_id: 7_000_000_000_000_000_001,
            pg_version: 150018,
            wal_seg_size: SEG,
            tli: 1,
        },
        timeline_start_lsn: Lsn(START),
        members: node_ids
            .iter()
            .map(|&n| (NodeId(n), format!("127.0.0.1:{n}")))
            .collect(),
        proposer_id: [7; 16],
        create,
        pg_ancestors: Vec::new(),
    }
}

/// A raw PostgreSQL frontend over a blocking socket.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
    /// BackendKeyData: (process id, secret key).
    pub key: Option<(i32, i32)>,
}

/// A backend message: tag and body.
#[derive(Debug)]
pub struct BeMsg {
    pub tag: u8,
    pub body: Bytes,
}

impl BeMsg {
    /// Fields of an ErrorResponse / NoticeResponse.
    pub fn error_field(&self, code: u8) -> Option<String> {
        let mut b = &self.body[..];
        while !b.is_empty() && b[0] != 0 {
            let c = b[0];
            let end = b[1..].iter().position(|&x| x == 0)? + 1;
            let v = String::from_utf8_lossy(&b[1..end]).into_owned();
            if c == code {
                return Some(v);
            }
            b = &b[end + 1..];
        }
        None
    }
}

/// The start-up packet of a replication connection, with `options` (none
/// when empty).
pub fn replication_startup(options: &str) -> BytesMut {
    let mut params = vec![
        ("user", "walkeeper"),
        ("database", "replication"),
        ("replication", "true"),
    ];
    if !options.is_empty() {
        params.push(("options", options));
    }
    let mut out = BytesMut::new();
    postgres_protocol::message::frontend::startup_message(params, &mut out).unwrap();
    out
}

impl RawClient {
    pub fn connect(addr: SocketAddr, options: &str) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut c = RawClient {
            stream,
            buf: BytesMut::new(),
            key: None,
        };
        c.stream.write_all(&replication_startup(options)).unwrap();
        loop {
            let m = c.read().expect("startup reply");
            match m.tag {
                b'Z' => break,
                b'E' => panic!("startup refused: {:?}", m.error_field(b'M')),
                b'K' if m.body.len() == 8 => {
                    let at = |i: usize| i32::from_be_bytes(m.body[i..i + 4].try_into().unwrap());
                    c.key = Some((at(0), at(4)));
                }
                _ => {}
            }
        }
        c
    }

    pub fn proposer(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::connect(addr, "-c walkeeper.role=proposer");
        c.query_raw("START_WAL_PUSH");
        let m = c.read().expect("reply to START_WAL_PUSH");
        assert_eq!(m.tag, b'W', "expected CopyBothResponse, got {m:?}");
        c
    }

    /// A whole message already read, if any.
    fn buffered(&mut self) -> Option<BeMsg> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes(self.buf[1..5].try_into().unwrap()) as usize;
        if self.buf.len() <= len {
            return None;
        }
        let tag = self.buf[0];
        self.buf.advance(5);
        let body = self.buf.split_to(len - 4).freeze();
        Some(BeMsg { tag, body })
    }

    /// The next backend message; None on EOF.
    pub fn read(&mut self) -> Option<BeMsg> {
        loop {
            if let Some(m) = self.buffered() {
                return Some(m);
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading from the server: {e}"),
            }
        }
    }

    /// The next backend message within `timeout`; None when nothing came.
    pub fn try_read(&mut self, timeout: Duration) -> Option<BeMsg> {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let r = loop {
            if let Some(m) = self.buffered() {
                break Some(m);
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => break None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break None
                }
                Err(e) => panic!("reading from the server: {e}"),
            }
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        r
    }

    pub fn query_raw(&mut self, q: &str) {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(q, &mut out).unwrap();
        self.stream.write_all(&out).unwrap();
    }

    /// Run a query; the messages up to ReadyForQuery.
    pub fn query(&mut self, q: &str) -> Vec<BeMsg> {
        self.query_raw(q);
        self.reply()
    }

    /// The messages up to the next ReadyForQuery.
    pub fn reply(&mut self) -> Vec<BeMsg> {
        let mut v = Vec::new();
        loop {
            let m = self.read().expect("query reply");
            let done = m.tag == b'Z';
            v.push(m);
            if done {
                return v;
            }
        }
    }

    /// Send a CancelRequest for this connection on a new one, as psql
    /// does on Ctrl-C.
    pub fn cancel(&self) {
        let (pid, key) = self.key.expect("the server sent BackendKeyData");
        let mut c = TcpStream::connect(self.stream.peer_addr().unwrap()).expect("connecting");
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(pid, key, &mut out);
        c.write_all(&out).unwrap();
        // The server closes it without a word.
        let _ = c.read(&mut [0u8; 1]);
    }

    /// End a COPY from this side (CopyDone).
    pub fn copy_done(&mut self) {
        self.stream.write_all(&[b'c', 0, 0, 0, 4]).unwrap();
    }

    pub fn send_copy_data(&mut self, data: &[u8]) {
        let mut out = BytesMut::new();
        out.put_u8(b'd');
        out.put_u32(4 + data.len() as u32);
        out.put_slice(data);
        self.stream.write_all(&out).unwrap();
    }

    pub fn send(&mut self, msg: &ProposerMessage) {
        self.send_copy_data(&encode_proposer_message(msg));
    }

    /// The next acceptor message; panics on anything else.
    pub fn recv(&mut self) -> AcceptorMessage {
        let m = self.read().expect("a reply from the acceptor");
        match m.tag {
            b'd' => decode_acceptor_message(&m.body).expect("decoding the acceptor's reply"),
            b'E' => panic!("acceptor refused: {:?}", m.error_field(b'M')),
            other => panic!("unexpected message {:?}", other as char),
        }
    }
}

/// A blocking HTTP/1.1 request (`Connection: close`): status and body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("headers and body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// A one-member greeting (node 1) for another PostgreSQL system.
pub fn greeting_for(system_id: u64, create: bool) -> Greeting {
    let mut g = greeting(&[1], create);
    g.server.system_id = system_id;
    g
}

/// Greet, vote, get elected at START as the only member's proposer.
pub fn elect_single(c: &mut RawClient, g: Greeting, term: u64) {
    c.send(&ProposerMessage::Greeting(g));
    assert!(matches!(c.recv(), AcceptorMessage::Greeting(_)));
    c.send(&ProposerMessage::VoteRequest(VoteRequest::new(term)));
    assert!(matches!(c.recv(), AcceptorMessage::Vote(v) if v.granted));
    c.send(&ProposerMessage::Elected(Elected {
        term,
        start_streaming_at: Lsn(START),
        term_history: walkeeper::consensus::term_history::TermHistory(vec![
            walkeeper::consensus::acceptor::term_lsn(term, START),
        ]),
        pg_tli: 0,
        pg_ancestors: Vec::new(),
    }));
    assert!(matches!(c.recv(), AcceptorMessage::Append(_)));
}

/// Push `wal` from `from` in appends of `chunk` bytes, then commit `commit`;
/// waits for every reply. Returns the end.
pub fn push(c: &mut RawClient, term: u64, from: u64, wal: &[u8], chunk: usize, commit: u64) -> u64 {
    let mut pos = from;
    let mut n = 0;
    for piece in wal.chunks(chunk) {
        c.send(&append(term, pos, piece, commit.min(pos)));
        pos += piece.len() as u64;
        n += 1;
    }
    c.send(&append(term, pos, &[], commit));
    for _ in 0..=n {
        match c.recv() {
            AcceptorMessage::Append(_) => {}
            other => panic!("{other:?}"),
        }
    }
    pos
}

pub fn append(term: u64, begin: u64, wal: &[u8], commit: u64) -> ProposerMessage {
    ProposerMessage::Append(AppendRequest {
        term,
        begin_lsn: Lsn(begin),
        end_lsn: Lsn(begin + wal.len() as u64),
        commit_lsn: Lsn(commit),
        peer_horizon_lsn: Lsn::INVALID,
        slot_horizon_lsn: Lsn::INVALID,
        wal: Bytes::copy_from_slice(wal),
    })
}

/// Deterministic WAL-like bytes for [begin, begin+len).
pub fn wal_bytes(term: u64, begin: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((begin + i).wrapping_mul(31) ^ term.wrapping_mul(0x9e37)) as u8)
        .collect()
}

/// Run a command and capture output; used for psql and friends.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("running a command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Read stdout lines of a child, for tests that follow a process' progress.
pub fn lines(child: &mut Child) -> impl Iterator<Item = String> {
    BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
}

/// Any other child process a test starts (pg_receivewal, …): SIGKILLed and
/// reaped on drop, however the test ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The proxy's `--safekeepers` value: `id@address`, comma-separated.
pub fn member_list<'a>(sks: impl IntoIterator<Item = &'a Safekeeper>) -> String {
    let list: Vec<String> = sks
        .into_iter()
        .map(|s| format!("{}@{}", s.node_id, s.pg_addr))
        .collect();
    list.join(",")
}

/// A safekeeper-proxy process; SIGKILLed on drop.
pub struct Proxy {
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proxy {
    pub fn start(
        log_dir: &Path,
        name: &str,
        primary_port: u16,
        members: &[&Safekeeper],
        extra: &[&str],
    ) -> Proxy {
        let list = member_list(members.iter().copied());
        Proxy::start_listing(log_dir, name, primary_port, &list, extra)
    }

    /// A proxy given `--safekeepers list` as is (`id@address,…`).
    pub fn start_listing(
        log_dir: &Path,
        name: &str,
        primary_port: u16,
        list: &str,
        extra: &[&str],
    ) -> Proxy {
        let log = log_dir.join(format!("{name}.log"));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_safekeeper-proxy"))
            .arg("--primary")
            .arg(format!("host=127.0.0.1 port={primary_port} user=postgres"))
            .arg("--safekeepers")
            .arg(list)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("starting safekeeper-proxy");
        Proxy {
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the process to exit by itself; its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let c = self.child.as_mut()?;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- proxy log {} ---\n{}",
                self.log.display(),
                self.log_text()
            );
        }
    }
}

/// Poll `f` until it returns Some, or panic with `what` after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A safekeeper's commit LSN as consumers see it (IDENTIFY_SYSTEM xlogpos);
/// None when it is down or has no timeline yet.
pub fn sk_commit_lsn(sk: &Safekeeper) -> Option<Lsn> {
    let stream = TcpStream::connect_timeout(&sk.pg_addr, Duration::from_secs(2)).ok()?;
    drop(stream);
    // As a proposer: a lagging safekeeper refuses consumers (57P03), and
    // the point here is to watch it catch up.
    let mut c = RawClient::connect(sk.pg_addr, "-c walkeeper.role=proposer");
    let reply = c.query("IDENTIFY_SYSTEM");
    let row = reply.iter().find(|m| m.tag == b'D')?;
    // DataRow: count, then (len, bytes) per column; xlogpos is the third.
    let mut b = &row.body[2..];
    let mut cols = Vec::new();
    for _ in 0..4 {
        let len = i32::from_be_bytes(b[..4].try_into().ok()?);
        b = &b[4..];
        if len < 0 {
            cols.push(None);
        } else {
            cols.push(Some(
                String::from_utf8_lossy(&b[..len as usize]).into_owned(),
            ));
            b = &b[len as usize..];
        }
    }
    cols[2].as_ref()?.parse().ok()
}

/// The body of an HTTP GET; None when the daemon does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

/// The first timeline a node's `GET /v1/timelines` lists (the tests' one
/// timeline); None while the node does not answer or holds none.
pub fn first_timeline(addr: SocketAddr) -> Option<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&http_get(addr, "/v1/timelines")?).ok()?;
    list.as_array()?.first().cloned()
}

/// The SQLSTATE and message a consumer's StartupMessage gets from `sk`, if
/// refused (before authentication, as a refused consumer is).
pub fn consumer_refusal(sk: &Safekeeper) -> Option<(String, String)> {
    let mut s = TcpStream::connect(sk.pg_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&replication_startup("")).unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).unwrap();
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).unwrap();
    if head[0] != b'E' {
        return None;
    }
    let msg = BeMsg {
        tag: head[0],
        body: body.into(),
    };
    Some((
        msg.error_field(b'C')?,
        msg.error_field(b'M').unwrap_or_default(),
    ))
}
