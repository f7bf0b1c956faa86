//! Network namespaces for partition tests: each safekeeper lives in its own
//! namespace, reached from the root namespace (the proxy, PostgreSQL and the
//! test) over a veth pair. A cut sets the namespace's end of the pair down:
//! packets vanish, no reset reaches either end, as with a pulled cable or a
//! firewall that drops.
//!
//! Addresses come from 198.18.0.0/15 (RFC 2544, set aside for test
//! networks), one /30 per pair, chosen under a file lock among those no
//! interface of the root namespace holds. The namespace (and with it the
//! pair) is deleted on drop, also when the test fails; namespaces left by a
//! test process that was SIGKILLed are deleted by the next one.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;

const PREFIX: &str = "wkf";
const LOCK: &str = "/tmp/walkeeper-netns.lock";

/// One namespace and its link to the root namespace.
pub struct NetNs {
    pub name: String,
    /// The pair's end inside the namespace.
    ns_if: String,
    /// The address in the root namespace, and the one inside.
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
    cut: bool,
}

fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why namespaces cannot be used here, if they cannot (not root, no `ip`,
/// no CAP_SYS_ADMIN in a container, ...): a namespace and a veth pair are
/// made and deleted to find out.
pub fn unavailable() -> Option<String> {
    match NetNs::create() {
        Ok(ns) => {
            drop(ns);
            None
        }
        Err(e) => Some(e),
    }
}

/// Holds an exclusive flock on the lock file while alive.
struct FileLock(std::fs::File);

impl FileLock {
    fn take() -> Result<FileLock, String> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .map_err(|e| format!("{LOCK}: {e}"))?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!("flock {LOCK}: {}", std::io::Error::last_os_error()));
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Delete namespaces of this kind whose test process is gone.
fn delete_orphans() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('x').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A /30 in 198.18.0.0/15 that no address of the root namespace lies in:
/// (host end, namespace end).
fn free_subnet() -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let used = ip(&["-o", "-4", "addr", "show"])?;
    for i in 0u32..(1 << 15) {
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i * 4;
        let host = Ipv4Addr::from(base + 1);
        let ns = Ipv4Addr::from(base + 2);
        let taken = [host, ns]
            .iter()
            .any(|a| used.contains(&format!("inet {a}/")));
        if !taken {
            return Ok((host, ns));
        }
    }
    Err("no free /30 left in 198.18.0.0/15".into())
}

impl NetNs {
    /// A new namespace with loopback up and a veth pair to the root
    /// namespace, addressed and up.
    pub fn create() -> Result<NetNs, String> {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}x{n}");
        let host_if = format!("wh{pid}x{n}");
        let ns_if = format!("wn{pid}x{n}");
        if host_if.len() > 15 {
            return Err(format!("interface name {host_if} is too long"));
        }
        let _lock = FileLock::take()?;
        delete_orphans();
        let (host_ip, ns_ip) = free_subnet()?;
        ip(&["netns", "add", &name])?;
        // From here on the namespace is deleted on drop, with the pair.
        let ns = NetNs {
            name: name.clone(),
            ns_if: ns_if.clone(),
            host_ip,
            ns_ip,
            cut: false,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if, "netns", &name,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        Ok(ns)
    }

    /// Cut the link: packets between the namespace and the rest vanish.
    pub fn cut(&mut self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]).unwrap();
        self.cut = true;
    }

    /// Restore the link (its address and route come back with it).
    pub fn heal(&mut self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"]).unwrap();
        self.cut = false;
    }

    pub fn is_cut(&self) -> bool {
        self.cut
    }

    /// `cmd` prefixed to run inside this namespace (`ip netns exec` execs
    /// the program: the child's pid is the program's).
    pub fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("deleting network namespace {}: {e}", self.name);
        }
    }
}
