//! One agent per PostgreSQL: an exclusive lock next to the data directory
//! and next to the control socket, taken before anything else is touched.
//!
//! A second `leasedog run` with the same configuration (or another file
//! naming the same data directory or socket) would otherwise bind, read and
//! even act beside the running agent. `flock` locks go with the process:
//! a crashed agent leaves no stale lock, only a harmless empty file.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Held for the life of the process; the locks go when it is dropped.
#[derive(Debug)]
pub struct InstanceLock {
    _locks: Vec<Flock<File>>,
}

/// `<data_dir>.leasedog.lock` and `<socket>.lock`.
pub fn lock_paths(data_dir: &Path, socket: &Path) -> [PathBuf; 2] {
    let with = |p: &Path, suffix: &str| {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [with(data_dir, ".leasedog.lock"), with(socket, ".lock")]
}

/// Takes both locks, or says which one another process holds.
pub fn lock(data_dir: &Path, socket: &Path) -> Result<InstanceLock, String> {
    let [data_lock, socket_lock] = lock_paths(data_dir, socket);
    let mut locks = Vec::new();
    for (path, what) in [
        (data_lock, format!("data directory {}", data_dir.display())),
        (socket_lock, format!("control socket {}", socket.display())),
    ] {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => locks.push(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(format!(
                    "another leasedog is running for the {what} (it holds {}): stop it first; nothing was touched",
                    path.display()
                ));
            }
            Err((_, e)) => return Err(format!("cannot lock {}: {e}", path.display())),
        }
    }
    Ok(InstanceLock { _locks: locks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let (data, sock) = (dir.path().join("data"), dir.path().join("run/a.sock"));
        let first = lock(&data, &sock).unwrap();
        let e = lock(&data, &sock).unwrap_err();
        assert!(
            e.contains("another leasedog is running for the data directory"),
            "{e}"
        );
        // Another data directory, the same socket: refused too.
        let e = lock(&dir.path().join("other"), &sock).unwrap_err();
        assert!(e.contains("control socket"), "{e}");
        drop(first);
        lock(&data, &sock).unwrap();
    }
}
