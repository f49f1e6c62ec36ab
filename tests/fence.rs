//! The fence when observations fail, on real etcd and PostgreSQL 15: a
//! `pg_ctl` that cannot tell whether PostgreSQL runs (the stalled data volume
//! or a bin_dir gone after a reload) is never taken for "stopped".
//!
//! Run as root (agents and PostgreSQL are started as `postgres`) or as
//! `postgres`.

mod common;

use common::cluster::{BIN_DIR, Cluster, Opts, monotonic_ms, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(90);

/// A bin_dir of links to PostgreSQL's programs, with a `pg_ctl` script in
/// place of the real one.
fn wrapped_bin_dir(dir: &Path, pg_ctl_script: &str) {
    std::fs::create_dir_all(dir).unwrap();
    for e in std::fs::read_dir(BIN_DIR).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "pg_ctl" {
            std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).unwrap();
        }
    }
    set_pg_ctl(dir, pg_ctl_script);
}

fn set_pg_ctl(dir: &Path, script: &str) {
    let tmp = dir.join("pg_ctl.new");
    std::fs::write(&tmp, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dir.join("pg_ctl")).unwrap();
}

/// Defect: a failed `pg_ctl status` (exit 4 here, as when the data
/// directory cannot be accessed) meant "already stopped": on SIGTERM the
/// leader released its key, magic-closed its watchdog and exited 0 with
/// PostgreSQL still writable. Now it keeps the key, stops feeding (the
/// hardware would reset the node before the lease expires), never disarms
/// while PostgreSQL may be writable, and finishes the stop once pg_ctl works.
#[test]
fn sigterm_with_a_failing_pg_ctl_keeps_the_key_and_the_fence() {
    let mut c = Cluster::start(1, Opts::default());
    with_logs_on_failure(&mut c, sigterm_with_a_failing_pg_ctl);
}

fn sigterm_with_a_failing_pg_ctl(c: &mut Cluster) {
    wait_for("primary", BOOT, || {
        (c.nodes[0].is_primary() == Some(true)).then_some(())
    });
    wait_for("watchdog fed", Duration::from_secs(10), || {
        c.nodes[0]
            .watchdog_events()
            .iter()
            .any(|(_, o)| o == "keepalive")
            .then_some(())
    });
    // pg_ctl now fails the way it does for an inaccessible data directory.
    let wrapped = c.nodes[0].dir.join("wrapped-bin");
    wrapped_bin_dir(
        &wrapped,
        "echo 'pg_ctl: could not access directory' >&2; exit 4",
    );
    let cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let cfg = cfg.replace(
        &format!("bin_dir: {BIN_DIR}"),
        &format!("bin_dir: {}", wrapped.display()),
    );
    std::fs::write(&c.nodes[0].config, cfg).unwrap();
    let pid = c.nodes[0].agent_pid().unwrap();
    // SAFETY: kill(2) on the agent we spawned.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_for("reload", Duration::from_secs(10), || {
        c.nodes[0]
            .agent_log_text()
            .contains("configuration reloaded")
            .then_some(())
    });

    let term_at = monotonic_ms();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    wait_for("the agent refuses to exit", Duration::from_secs(15), || {
        c.nodes[0]
            .agent_log_text()
            .contains("PostgreSQL may still be writable: not exiting")
            .then_some(())
    });
    // Half a ttl later: still alive, still the leader, PostgreSQL still up,
    // never disarmed, and not fed since the stop began.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(common::cluster::alive(pid), "the agent exited");
    assert_eq!(c.leader().as_deref(), Some("node1"), "leader key released");
    assert_eq!(c.nodes[0].is_primary(), Some(true));
    let events = c.nodes[0].watchdog_events();
    assert!(
        !events.iter().any(|(_, o)| o == "magic-close"),
        "watchdog disarmed while PostgreSQL may be writable: {events:?}"
    );
    let stay_logged = monotonic_ms();
    let late_feeds: Vec<_> = events
        .iter()
        .filter(|(t, o)| o == "keepalive" && *t > term_at + 3000)
        .collect();
    assert!(
        late_feeds.is_empty(),
        "fed after the stop failed: {late_feeds:?}"
    );

    // pg_ctl works again: the stop completes, then key and watchdog go.
    set_pg_ctl(&wrapped, &format!("exec {BIN_DIR}/pg_ctl \"$@\""));
    let code = c.stop_agent(0, Duration::from_secs(30));
    assert_eq!(code, Some(0));
    assert_eq!(c.nodes[0].postmaster_pid(), None, "PostgreSQL still runs");
    let events = c.nodes[0].watchdog_events();
    assert!(
        events
            .iter()
            .any(|(t, o)| o == "magic-close" && *t >= stay_logged),
        "disarmed once stopped: {events:?}"
    );
    assert_eq!(c.leader(), None, "key released after the stop");
}

/// Runs a test body; prints the agents' logs when it fails.
fn with_logs_on_failure(c: &mut Cluster, body: fn(&mut Cluster)) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(c)));
    if let Err(e) = r {
        c.dump_logs();
        std::panic::resume_unwind(e);
    }
}
