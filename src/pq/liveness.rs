//! TCP-level liveness of a connection: keepalive probes on an idle
//! connection, and a bound on how long sent data may stay unacknowledged
//! (`TCP_USER_TIMEOUT`). A peer behind a link that went silent (no reset:
//! a cut cable, a dropping firewall, a paused VM) is then noticed by the
//! kernel, which fails the socket, instead of a connection that waits
//! forever and, once the link is back, delivers bytes long out of date.

use std::time::Duration;

/// Keepalive and unacknowledged-data bounds for one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLiveness {
    /// Idle time before the first keepalive probe.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
    /// Longest time sent data may stay unacknowledged.
    pub user_timeout: Duration,
}

impl TcpLiveness {
    /// Between the proxy and a safekeeper: an idle silent peer is dropped
    /// after idle + count × interval = 5 s; one that stops acknowledging
    /// data after 10 s (the proposer's response timeout).
    pub const PEER: TcpLiveness = TcpLiveness {
        idle: Duration::from_secs(2),
        interval: Duration::from_secs(1),
        count: 3,
        user_timeout: Duration::from_secs(10),
    };

    /// Apply to a connected TCP socket.
    pub fn apply<S: std::os::fd::AsRawFd>(&self, socket: &S) -> std::io::Result<()> {
        let fd = socket.as_raw_fd();
        let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
        let ms = self.user_timeout.as_millis().min(u32::MAX as u128) as libc::c_uint;
        set(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
        set(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(self.idle))?;
        set(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPINTVL,
            secs(self.interval),
        )?;
        set(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            self.count.clamp(1, i32::MAX as u32) as libc::c_int,
        )?;
        set(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            ms.min(i32::MAX as u32) as libc::c_int,
        )
    }
}

fn set(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket borrowed from its owner for this call,
    // and the option value is a c_int that lives across it.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(fd: std::os::fd::RawFd, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        let r = unsafe {
            libc::getsockopt(
                fd,
                level,
                name,
                &mut v as *mut libc::c_int as *mut libc::c_void,
                &mut len,
            )
        };
        assert_eq!(r, 0);
        v
    }

    #[test]
    fn the_options_reach_the_socket() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        TcpLiveness::PEER.apply(&s).unwrap();
        let fd = s.as_raw_fd();
        assert_eq!(get(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE), 1);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE), 2);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL), 1);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT), 3);
        assert_eq!(get(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT), 10_000);
    }
}
