//! Running PostgreSQL's programs: pg_ctl, initdb, pg_basebackup, pg_rewind,
//! pg_controldata, each under the caller's timeout and killed when it runs
//! over. pg_ctl's postmaster inherits stdio, so pg_ctl's output goes to the
//! server log file, never to a pipe we would wait on.

use super::PgError;
use crate::cluster::{DataDir, Lsn};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// A command for one of the server programs, with a clean environment for
/// what matters: C locale, no NOTIFY_SOCKET (systemd would take the
/// postmaster's messages for ours).
pub fn command(bin_dir: &Path, program: &str) -> Command {
    let mut c = Command::new(bin_dir.join(program));
    c.env("LC_ALL", "C")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("PGDATA")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

/// Kills a child's whole process group unless told the child finished:
/// pg_basebackup forks a WAL streamer, which `kill_on_drop` (the child
/// alone) would leave writing into the data directory after a timeout or
/// an interrupted clone.
struct KillGroupOnDrop(Option<i32>);

impl KillGroupOnDrop {
    fn finished(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Runs a program that exits, capturing its output. It runs in a process
/// group of its own, killed whole on a timeout or when the caller gives up
/// (the future is dropped). Not for pg_ctl: its postmaster would be in it.
pub async fn run_captured(
    mut cmd: Command,
    what: &'static str,
    timeout: Duration,
) -> Result<String, PgError> {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().map_err(|e| PgError::Spawn {
        program: what,
        source: e,
    })?;
    let mut group = KillGroupOnDrop(child.id().map(|id| id as i32));
    let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
    if let Ok(Ok(_)) = result {
        // Exited (and reaped): its process group id may be reused.
        group.finished();
    }
    match result {
        Err(_) => Err(PgError::Timeout {
            program: what,
            after: timeout,
        }),
        Ok(Err(e)) => Err(PgError::Spawn {
            program: what,
            source: e,
        }),
        Ok(Ok(out)) => {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if out.status.success() {
                Ok(text)
            } else {
                Err(PgError::Failed {
                    program: what,
                    code: out.status.code(),
                    output: tail(&format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
                })
            }
        }
    }
}

/// Runs pg_ctl with its output appended to `log`.
pub async fn run_pg_ctl(
    bin_dir: &Path,
    args: &[&str],
    log: &Path,
    timeout: Duration,
) -> Result<(), PgError> {
    let mut cmd = command(bin_dir, "pg_ctl");
    cmd.args(args);
    // 0600: the server log can hold what clients sent (and, before
    // passfiles, held replication passwords); Debian's data directory's
    // parent is world-readable.
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| PgError::Io {
            what: format!("opening {}", log.display()),
            source: e,
        })?;
    // A log created 0644 by an older version is tightened too.
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    let err = file.try_clone().map_err(|e| PgError::Io {
        what: "log file".into(),
        source: e,
    })?;
    cmd.stdout(file).stderr(err);
    let mut child = cmd.spawn().map_err(|e| PgError::Spawn {
        program: "pg_ctl",
        source: e,
    })?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Err(_) => Err(PgError::Timeout {
            program: "pg_ctl",
            after: timeout,
        }),
        Ok(Err(e)) => Err(PgError::Spawn {
            program: "pg_ctl",
            source: e,
        }),
        Ok(Ok(st)) if st.success() => Ok(()),
        Ok(Ok(st)) => {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            Err(PgError::Failed {
                program: "pg_ctl",
                code: st.code(),
                output: tail(&text),
            })
        }
    }
}

/// The last few lines of a program's output, for an error message.
pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join("\n")
}

/// The server log beside the data directory (`<data_dir>.log`), so a base
/// backup never copies it.
pub fn log_path(data_dir: &Path) -> PathBuf {
    let mut s = data_dir.as_os_str().to_owned();
    s.push(".log");
    PathBuf::from(s)
}

/// Parses `pg_controldata` output (C locale).
pub fn parse_controldata(text: &str) -> DataDir {
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix(':'))
                .map(|v| v.trim().to_string())
        })
    };
    let Some(system_id) = field("Database system identifier") else {
        return DataDir::Invalid("pg_controldata shows no system identifier".into());
    };
    let state = field("Database cluster state").unwrap_or_default();
    let (was_primary, crashed) = match state.as_str() {
        "in production" => (true, true),
        "shut down" => (true, false),
        "in crash recovery" | "shutting down" => (true, true),
        "shut down in recovery" => (false, false),
        "in archive recovery" => (false, true),
        other => return DataDir::Invalid(format!("unexpected cluster state {other:?}")),
    };
    let timeline = field("Latest checkpoint's TimeLineID")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let checkpoint = field("Latest checkpoint location")
        .and_then(|l| Lsn::parse(&l))
        .unwrap_or_default();
    DataDir::Initialized {
        system_id,
        was_primary,
        crashed,
        timeline,
        checkpoint,
    }
}

/// Empties a directory when dropped, unless the work that fills it was
/// kept: a failed or interrupted initdb or pg_basebackup must leave the data
/// directory as empty as it found it, or the next attempt would refuse it.
pub struct EmptyOnDrop<'a>(Option<&'a Path>);

impl<'a> EmptyOnDrop<'a> {
    pub fn new(dir: &'a Path) -> Self {
        EmptyOnDrop(Some(dir))
    }
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for EmptyOnDrop<'_> {
    fn drop(&mut self) {
        let Some(dir) = self.0 else {
            return;
        };
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
}

/// Whether the directory is missing or empty. Only a directory that is
/// positively absent or positively empty is empty: any other error (EACCES
/// after a stray `chown -R`, EIO, EMFILE) is returned, never taken for
/// "empty" — an empty data directory lets a leader release its key.
pub fn dir_is_empty(p: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(p) {
        Ok(mut it) => match it.next() {
            None => Ok(true),
            Some(Ok(_)) => Ok(false),
            Some(Err(e)) => Err(e),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7312345678901234567
Database cluster state:               in production
pg_control last modified:             Mon Nov 23 03:00:00 2026
Latest checkpoint location:           0/3000060
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's TimeLineID:       2
";

    #[test]
    fn empty_on_drop_empties_unless_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("base")).unwrap();
        std::fs::write(d.path().join("base/1"), "x").unwrap();
        std::fs::write(d.path().join("PG_VERSION"), "15").unwrap();
        EmptyOnDrop::new(d.path()).keep();
        assert!(!dir_is_empty(d.path()).unwrap(), "kept");
        drop(EmptyOnDrop::new(d.path()));
        assert!(dir_is_empty(d.path()).unwrap(), "emptied");
        assert!(d.path().exists(), "the directory itself stays");
    }

    #[tokio::test]
    async fn a_timed_out_program_is_killed_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        let pidfile = d.path().join("child.pid");
        let mut cmd = Command::new("sh");
        // The shell starts a grandchild and waits: both must die.
        cmd.arg("-c")
            .arg(format!("sleep 60 & echo $! > {}; wait", pidfile.display()));
        let r = run_captured(cmd, "sh", Duration::from_millis(500)).await;
        assert!(matches!(r, Err(PgError::Timeout { .. })), "{r:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let end = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            // Gone, or a zombie waiting for init to reap it.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, r)| r.chars().next()));
            if matches!(state, None | Some(Some('Z'))) {
                break;
            }
            assert!(
                std::time::Instant::now() < end,
                "the grandchild {pid} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn controldata_primary_replica_and_garbage() {
        match parse_controldata(SAMPLE) {
            DataDir::Initialized {
                system_id,
                was_primary,
                crashed,
                timeline,
                checkpoint,
            } => {
                assert_eq!(system_id, "7312345678901234567");
                assert!(was_primary && crashed);
                assert_eq!(timeline, 2);
                assert_eq!(checkpoint, Lsn(0x3000060));
            }
            other => panic!("{other:?}"),
        }
        let replica = SAMPLE.replace("in production", "shut down in recovery");
        assert!(matches!(
            parse_controldata(&replica),
            DataDir::Initialized {
                was_primary: false,
                crashed: false,
                ..
            }
        ));
        let clean = SAMPLE.replace("in production", "shut down");
        assert!(matches!(
            parse_controldata(&clean),
            DataDir::Initialized {
                was_primary: true,
                crashed: false,
                ..
            }
        ));
        assert!(matches!(parse_controldata("nonsense"), DataDir::Invalid(_)));
        assert!(matches!(
            parse_controldata(&SAMPLE.replace("in production", "weird")),
            DataDir::Invalid(_)
        ));
    }

    #[test]
    fn log_beside_data_dir() {
        assert_eq!(
            log_path(Path::new("/var/lib/pg/data")),
            PathBuf::from("/var/lib/pg/data.log")
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let s: String = (0..10).map(|i| format!("l{i}\n")).collect();
        assert_eq!(tail(&s), "l4\nl5\nl6\nl7\nl8\nl9");
    }
}
