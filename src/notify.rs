//! systemd's readiness protocol (`sd_notify`), without libsystemd: one
//! datagram of `KEY=value` lines to the socket named in `NOTIFY_SOCKET`.
//!
//! The unit is `Type=notify`, so `systemctl start leasedog` returns once the
//! first HA cycle has run (`READY=1`), not when the process has merely been
//! forked. `STATUS=` carries the loop's one-line summary to `systemctl
//! status`; `STOPPING=1` marks a graceful shutdown. Sending never blocks: the
//! socket is non-blocking and a failure is only logged, because the HA loop
//! must not wait on systemd. The one wait is a disarm's `BARRIER=1` (at most
//! a second, the watchdog being disarmed): systemd must have dropped its
//! stored copy of the device before it can be opened again. Children
//! (pg_ctl, callbacks) are started without `NOTIFY_SOCKET`, so the
//! postmaster cannot speak for us.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where the notifications go, parsed from `NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
    socket: UnixDatagram,
}

impl Notifier {
    /// The notifier for this process, when systemd asked for one.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::new(&path.to_string_lossy()) {
            Ok(n) => Some(n),
            Err(e) => {
                log::warn!("NOTIFY_SOCKET {path:?} unusable: {e}; systemd will not hear READY=1");
                None
            }
        }
    }

    /// A notifier for a path, or for an abstract socket written `@name`.
    pub fn new(path: &str) -> std::io::Result<Notifier> {
        let addr = match path.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name.as_bytes())?
            }
            None if path.starts_with('/') => SocketAddr::from_pathname(path)?,
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "expected an absolute path or @name",
                ));
            }
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Notifier { addr, socket })
    }

    /// Hands `fd` to systemd's file descriptor store under `name`
    /// (`FDSTORE=1`, needs `FileDescriptorStoreMax=` in the unit): systemd
    /// keeps it open if this process dies and passes it back on restart.
    pub fn store_fd(&self, fd: std::os::fd::BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
        self.send_with_fd(&format!("FDSTORE=1\nFDNAME={name}"), fd)
    }

    /// Sends `msg` with one descriptor attached (SCM_RIGHTS).
    fn send_with_fd(&self, msg: &str, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
        use std::os::fd::{AsRawFd, RawFd};
        let addr = match (self.addr.as_pathname(), {
            use std::os::linux::net::SocketAddrExt;
            self.addr.as_abstract_name()
        }) {
            (Some(p), _) => UnixAddr::new(p),
            (None, Some(n)) => UnixAddr::new_abstract(n),
            (None, None) => return Err(std::io::Error::other("unnamed notify socket")),
        }
        .map_err(std::io::Error::from)?;
        let iov = [std::io::IoSlice::new(msg.as_bytes())];
        let fds: [RawFd; 1] = [fd.as_raw_fd()];
        sendmsg(
            self.socket.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )
        .map(|_| ())
        .map_err(std::io::Error::from)
    }

    /// Waits, at most `timeout`, until systemd has processed every
    /// notification sent before (`BARRIER=1`, systemd 246 and later: it
    /// closes the pipe end passed with it once it reads the message, and it
    /// reads them in order). True when it did.
    pub fn barrier(&self, timeout: std::time::Duration) -> std::io::Result<bool> {
        use std::os::fd::{AsFd, AsRawFd};
        let (rx, tx) = std::io::pipe()?;
        self.send_with_fd("BARRIER=1", tx.as_fd())?;
        drop(tx);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut p = libc::pollfd {
                fd: rx.as_raw_fd(),
                events: 0,
                revents: 0,
            };
            // Rounded up: a truncated timeout would return just before the
            // deadline.
            let ms = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for an open descriptor.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 && std::time::Instant::now() < deadline {
                continue;
            }
            // Every write end closed: systemd got past the message.
            return Ok(n > 0 && p.revents & libc::POLLHUP != 0);
        }
    }

    /// Asks systemd to close its stored copy of `name`.
    pub fn remove_fd(&self, name: &str) {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
    }

    /// Sends one notification, e.g. `READY=1` or `STATUS=...`.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            log::debug!("sd_notify {state:?}: {e}");
        }
    }
}

/// A `STATUS=` line: one line, bounded, whatever the summary holds.
/// The index among the descriptors systemd passed (`LISTEN_PID`,
/// `LISTEN_FDS`, `LISTEN_FDNAMES`) of the one named `name`, when they are
/// meant for process `pid`.
pub fn listen_index(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    pid: u32,
    name: &str,
) -> Option<usize> {
    if listen_pid?.trim().parse::<u32>().ok()? != pid {
        return None;
    }
    let n: usize = listen_fds?.trim().parse().ok()?;
    names?.split(':').take(n).position(|x| x == name)
}

/// The descriptor named `name` that systemd passed to this process from its
/// file descriptor store, made close-on-exec (children must never hold it).
pub fn passed_fd(name: &str) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let var = |k: &str| std::env::var(k).ok();
    let i = listen_index(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
        name,
    )?;
    let raw = 3 + i as i32;
    // SAFETY: systemd passes LISTEN_FDS descriptors open from fd 3 on, for
    // this process (LISTEN_PID checked); nothing else owns them.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    let _ = nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    Some(fd)
}

pub fn status_line(summary: &str) -> String {
    let one: String = summary
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .take(200)
        .collect();
    format!("STATUS={one}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passed_descriptors_are_found_by_name_and_pid() {
        let f = |pid, fds, names| listen_index(pid, fds, names, 42, "watchdog");
        assert_eq!(f(Some("42"), Some("1"), Some("watchdog")), Some(0));
        assert_eq!(f(Some("42"), Some("2"), Some("other:watchdog")), Some(1));
        assert_eq!(
            f(Some("43"), Some("1"), Some("watchdog")),
            None,
            "another pid's"
        );
        assert_eq!(
            f(Some("42"), Some("1"), Some("other:watchdog")),
            None,
            "beyond LISTEN_FDS"
        );
        assert_eq!(f(None, Some("1"), Some("watchdog")), None);
        assert_eq!(f(Some("42"), Some("x"), Some("watchdog")), None);
    }

    #[test]
    fn a_stored_descriptor_reaches_the_socket_with_its_name() {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::os::fd::{AsFd, AsRawFd};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        let file = std::fs::File::create(dir.path().join("wd")).unwrap();
        n.store_fd(file.as_fd(), "watchdog").unwrap();
        let mut buf = [0u8; 128];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            rx.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fds: Vec<_> = msg
            .cmsgs()
            .unwrap()
            .filter_map(|c| match c {
                ControlMessageOwned::ScmRights(f) => Some(f),
                _ => None,
            })
            .flatten()
            .collect();
        let len = msg.bytes;
        assert_eq!(fds.len(), 1);
        assert_eq!(&buf[..len], b"FDSTORE=1\nFDNAME=watchdog");
    }

    #[test]
    fn a_barrier_returns_once_the_listener_has_read_what_came_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        // Nobody reads: the pipe end stays queued, the barrier times out.
        n.send("FDSTOREREMOVE=1\nFDNAME=watchdog");
        let t = std::time::Instant::now();
        assert!(!n.barrier(std::time::Duration::from_millis(200)).unwrap());
        assert!(t.elapsed() >= std::time::Duration::from_millis(200));
        // A listener that reads (and closes what it was passed) releases it.
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..3 {
                let mut buf = [0u8; 128];
                let len = rx.recv(&mut buf).unwrap(); // passed fds: not kept
                got.push(String::from_utf8_lossy(&buf[..len]).to_string());
            }
            got
        });
        assert!(n.barrier(std::time::Duration::from_secs(10)).unwrap());
        assert_eq!(
            reader.join().unwrap(),
            ["FDSTOREREMOVE=1\nFDNAME=watchdog", "BARRIER=1", "BARRIER=1"]
        );
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.send("READY=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("leasedog-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        let n = Notifier::new(&format!("@{name}")).unwrap();
        n.send("STOPPING=1");
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1");
    }

    #[test]
    fn refuses_relative_paths_and_never_blocks_without_a_listener() {
        assert!(Notifier::new("relative/path").is_err());
        let dir = tempfile::tempdir().unwrap();
        // Nobody bound: the send fails, is logged, and returns at once.
        let n = Notifier::new(dir.path().join("absent").to_str().unwrap()).unwrap();
        n.send("READY=1");
    }

    #[test]
    fn status_is_one_bounded_line() {
        assert_eq!(status_line("a\nb"), "STATUS=a b");
        assert_eq!(status_line(&"x".repeat(500)).len(), "STATUS=".len() + 200);
    }
}
