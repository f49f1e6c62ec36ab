//! systemd's readiness protocol (`sd_notify`), without libsystemd: one
//! datagram of `KEY=value` lines to the socket named in `NOTIFY_SOCKET`.
//!
//! The unit is `Type=notify`, so `systemctl start leasedog` returns once the
//! first HA cycle has run (`READY=1`), not when the process has merely been
//! forked. `STATUS=` carries the loop's one-line summary to `systemctl
//! status`; `STOPPING=1` marks a graceful shutdown. Sending never blocks: the
//! socket is non-blocking and a failure is only logged, because the HA loop
//! must not wait on systemd. Children (pg_ctl, callbacks) are started without
//! `NOTIFY_SOCKET`, so the postmaster cannot speak for us.

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

    /// Sends one notification, e.g. `READY=1` or `STATUS=...`.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.addr) {
            log::debug!("sd_notify {state:?}: {e}");
        }
    }
}

/// A `STATUS=` line: one line, bounded, whatever the summary holds.
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
