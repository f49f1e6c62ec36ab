//! The fence when observations fail, on real etcd and PostgreSQL 15: a
//! `pg_ctl` that cannot tell whether PostgreSQL runs (the stalled data volume
//! or a bin_dir gone after a reload) is never taken for "stopped".
//!
//! Run as root (agents and PostgreSQL are started as `postgres`) or as
//! `postgres`.

mod common;

use common::cluster::{
    BIN_DIR, Cluster, Opts, monotonic_ms, set_wrapper, use_bin_dir, wait_for, wrapped_bin_dir,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(90);

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
        "pg_ctl",
        "echo 'pg_ctl: could not access directory' >&2; exit 4",
    );
    use_bin_dir(&c.nodes[0], &wrapped);
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
    set_wrapper(&wrapped, "pg_ctl", &format!("exec {BIN_DIR}/pg_ctl \"$@\""));
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

/// psql against one node's socket; None when it fails.
fn psql(sock: &Path, port: u16, sql: &str) -> Option<String> {
    common::cluster::psql(sock, port, sql).ok()
}

/// A client that keeps writing (about 100 kB of WAL per statement) to
/// whichever node accepts writes, until stopped; counts acknowledged rows.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(c: &Cluster) -> Writer {
        let nodes: Vec<(PathBuf, u16)> = c
            .nodes
            .iter()
            .map(|n| (n.socket_dir(), n.pg_port))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (s, a) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let ok = nodes.iter().any(|(sock, port)| {
                    psql(
                        sock,
                        *port,
                        "INSERT INTO w SELECT g, repeat('x', 200) FROM generate_series(1, 500) g",
                    )
                    .is_some()
                });
                if ok {
                    a.fetch_add(500, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        });
        Writer {
            stop,
            acked,
            thread: Some(thread),
        }
    }

    /// Stops writing; returns the rows acknowledged.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked.load(Ordering::Relaxed)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Defect: a primary killed under write load (what a watchdog reset does)
/// never came back: its start held the loop for 30 s while recovery could
/// not reach consistency, its lease and member key lapsed meanwhile, so the
/// new leader never created its replication slot, which the start waited
/// for. Now the old primary streams again while the writes go on.
#[test]
fn a_primary_killed_under_writes_rejoins_and_streams() {
    let mut c = Cluster::start(3, Opts::default());
    with_logs_on_failure(&mut c, killed_under_writes_rejoins);
}

fn killed_under_writes_rejoins(c: &mut Cluster) {
    let p = c.wait_healthy(BOOT);
    c.nodes[p].sql("CREATE TABLE w (g int, pad text)").unwrap();
    let writer = Writer::start(c);
    wait_for("writes flowing", Duration::from_secs(10), || {
        (writer.acked.load(Ordering::Relaxed) >= 5000).then_some(())
    });
    // A reset: agent and postmaster gone at once, mid-write.
    c.kill_agent(p);
    c.kill_postmaster(p);
    let new_p = wait_for("a new primary", Duration::from_secs(30), || {
        (0..3).find(|&i| i != p && c.nodes[i].is_primary() == Some(true))
    });
    // The new primary takes writes for a while before the old node boots.
    let at = writer.acked.load(Ordering::Relaxed);
    wait_for("writes on the new primary", Duration::from_secs(20), || {
        (writer.acked.load(Ordering::Relaxed) >= at + 20_000).then_some(())
    });
    let booted = Instant::now();
    c.start_agent(p);
    let name = c.nodes[p].name.clone();
    wait_for(
        "the old primary streams again",
        Duration::from_secs(90),
        || {
            let n = c.nodes[new_p]
            .sql(&format!(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = '{name}' AND state = 'streaming'"
            ))
            .ok()?;
            (n == "1").then_some(())
        },
    );
    eprintln!(
        "old primary {name} streaming {:.1}s after its agent started, under writes",
        booted.elapsed().as_secs_f64()
    );
    let acked = writer.finish();
    let on_new = c.nodes[new_p].sql("SELECT count(*) FROM w").unwrap();
    wait_for("the old primary caught up", Duration::from_secs(30), || {
        (c.nodes[p].sql("SELECT count(*) FROM w").ok()? == on_new).then_some(())
    });
    assert!(on_new.parse::<u64>().unwrap() > 0 && acked > 0);
    assert_eq!(c.nodes[p].is_primary(), Some(false));
}

/// Runs a test body; prints the agents' logs when it fails.
fn with_logs_on_failure(c: &mut Cluster, body: fn(&mut Cluster)) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(c)));
    if let Err(e) = r {
        c.dump_logs();
        std::panic::resume_unwind(e);
    }
}

/// A member's own key deleted or forged behind its back is rewritten within
/// a cycle or two, not left until its own state changes.
#[test]
fn a_deleted_or_forged_member_key_is_rewritten() {
    let mut c = Cluster::start(1, Opts::default());
    with_logs_on_failure(&mut c, deleted_member_key_is_rewritten);
}

fn deleted_member_key_is_rewritten(c: &mut Cluster) {
    wait_for("primary", BOOT, || {
        (c.nodes[0].is_primary() == Some(true)).then_some(())
    });
    let key = format!("/service/{}/members/node1", c.scope);
    let own = format!("127.0.0.1:{}", c.nodes[0].pg_port);
    // Ours again: the agent's own address and state (its position may have
    // moved meanwhile, so not byte for byte the old value).
    let ours = |c: &Cluster| {
        c.etcd
            .ctl(&["get", "--print-value-only", &key])
            .ok()
            .filter(|v| v.contains(&own) && v.contains("\"running\""))
    };
    wait_for("member key", Duration::from_secs(10), || ours(c));
    c.etcd.ctl(&["del", &key]).unwrap();
    let t = Instant::now();
    wait_for("member key rewritten", Duration::from_secs(5), || ours(c));
    eprintln!(
        "deleted member key back after {:.2}s",
        t.elapsed().as_secs_f64()
    );
    c.etcd
        .ctl(&[
            "put",
            &key,
            r#"{"conn_url":"postgres://10.6.6.6:5432/postgres","state":"running","role":"master"}"#,
        ])
        .unwrap();
    wait_for(
        "forged member key rewritten",
        Duration::from_secs(5),
        || ours(c),
    );
}

/// A device without WDIOF_MAGICCLOSE stops on any close, so a crashed agent
/// would leave its primary unfenced: required mode refuses it (and never
/// takes the leader key), after closing it again.
#[test]
fn required_mode_refuses_a_watchdog_without_magic_close() {
    let mut c = Cluster::new(
        1,
        Opts {
            watchdog_mode: "required",
            ..Opts::default()
        },
    );
    c.start_agent_env(0, &[("LEASEDOG_TESTING_WATCHDOG_NO_MAGICCLOSE", "1")]);
    with_logs_on_failure(&mut c, |c| {
        wait_for("the refusal", Duration::from_secs(10), || {
            c.nodes[0]
                .agent_log_text()
                .contains("does not support the magic close")
                .then_some(())
        });
        let end = Instant::now() + Duration::from_secs(4);
        while Instant::now() < end {
            assert_eq!(c.leader(), None, "took the leader key");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(!c.nodes[0].data_dir.join("PG_VERSION").exists());
        let ops: Vec<String> = c.nodes[0]
            .watchdog_events()
            .into_iter()
            .map(|(_, o)| o)
            .collect();
        assert_eq!(
            ops.last().map(String::as_str),
            Some("magic-close"),
            "{ops:?}"
        );
    });
}

/// API and control-socket load runs on the loop's thread: it must never
/// delay a watchdog feed. 16 clients flood `/cluster`, `/primary` and the
/// socket's `status` for 6 s; the feeds keep their rhythm.
#[test]
fn api_and_socket_floods_never_move_a_feed() {
    let mut c = Cluster::start(1, Opts::default());
    with_logs_on_failure(&mut c, |c| {
        wait_for("primary", BOOT, || {
            (c.nodes[0].is_primary() == Some(true)).then_some(())
        });
        let api = format!("127.0.0.1:{}", c.nodes[0].api_port);
        let sock = c.nodes[0].dir.join("leasedog.sock");
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let start = common::cluster::monotonic_ms();
        let mut threads = Vec::new();
        for i in 0..16 {
            let (api, sock, stop, served) =
                (api.clone(), sock.clone(), stop.clone(), served.clone());
            threads.push(std::thread::spawn(move || {
                use std::io::{Read, Write};
                while !stop.load(Ordering::Relaxed) {
                    let ok = if i % 4 == 3 {
                        std::os::unix::net::UnixStream::connect(&sock).and_then(|mut s| {
                            s.write_all(b"{\"cmd\":\"status\"}\n")?;
                            let mut b = [0u8; 4096];
                            s.read(&mut b)
                        })
                    } else {
                        let path = if i % 2 == 0 { "/cluster" } else { "/primary" };
                        common::cluster::http_get(&api, path).map(|v| v.len())
                    };
                    if ok.is_ok() {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        let end = common::cluster::monotonic_ms();
        let (feeds, worst) = common::cluster::feeds_and_longest_gap(
            &c.nodes[0].watchdog_events(),
            start.saturating_sub(1500),
            end,
        );
        let n = served.load(Ordering::Relaxed);
        eprintln!(
            "{n} requests in 6 s ({} per s); {} feeds, longest gap {worst} ms (watchdog timeout 4000 ms)",
            n / 6,
            feeds.len()
        );
        assert!(n > 600, "the flood did not flood: {n} requests");
        assert!(feeds.len() >= 4, "feeds: {feeds:?}");
        // loop_wait 1 s, watchdog timeout 4 s: a gap of 2.5 s would be a
        // cycle and a half lost to the load.
        assert!(
            worst < 2500,
            "a feed came {worst} ms after the previous one"
        );
    });
}

/// SIGHUP re-reads the file off the loop's thread: a file that cannot be
/// read (here a FIFO nobody writes, as a hung mount would be) or that costs
/// a lot to parse (aliases expanding to a billion nodes) never moves a
/// feed, and a reload that fails changes nothing. Before, the loop read the
/// file itself: a deeply nested file stalled it 18 s.
#[test]
fn a_reload_that_hangs_or_fails_never_moves_a_feed() {
    let mut c = Cluster::start(1, Opts::default());
    with_logs_on_failure(&mut c, |c| {
        wait_for("primary", BOOT, || {
            (c.nodes[0].is_primary() == Some(true)).then_some(())
        });
        let path = c.nodes[0].config.clone();
        let good = std::fs::read_to_string(&path).unwrap();
        let pid = c.nodes[0].agent_pid().unwrap();
        let hup = || {
            // SAFETY: kill(2) on the agent we spawned.
            unsafe { libc::kill(pid, libc::SIGHUP) };
        };

        // A file whose aliases expand without end: refused, nothing changes.
        let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            laughs += &format!(
                "a{i}: &a{i} [{}]\n",
                vec![format!("*a{}", i - 1); 10].join(", ")
            );
        }
        std::fs::write(&path, laughs).unwrap();
        let start = monotonic_ms();
        for _ in 0..20 {
            hup();
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_for("the refusal", Duration::from_secs(10), || {
            c.nodes[0]
                .agent_log_text()
                .contains("reload refused")
                .then_some(())
        });

        // A file that never answers: the read waits on its own thread.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        hup();
        std::thread::sleep(Duration::from_secs(5));
        hup();
        let end = monotonic_ms();
        let (feeds, worst) =
            common::cluster::feeds_and_longest_gap(&c.nodes[0].watchdog_events(), start, end);
        eprintln!(
            "{} feeds in {} ms, longest gap {worst} ms",
            feeds.len(),
            end - start
        );
        assert!(feeds.len() >= 4, "feeds: {feeds:?}");
        assert!(
            worst < 2500,
            "a feed came {worst} ms after the previous one"
        );
        assert_eq!(c.nodes[0].is_primary(), Some(true));

        // The file answers at last: the waiting reload completes.
        std::fs::write(&path, &good).unwrap();
        wait_for("the reload", Duration::from_secs(10), || {
            c.nodes[0]
                .agent_log_text()
                .contains("configuration reloaded")
                .then_some(())
        });
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, good).unwrap();
        // (`list` reads the same file: only now can it be asked.)
        assert_eq!(c.leader().as_deref(), Some("node1"));
    });
}

/// A second `leasedog run` for the same data directory (its own port and
/// socket, so nothing else stops it) exits at once with a clear message and
/// touches nothing; the running agent keeps its socket and its PostgreSQL.
/// Before the lock, it ran beside the first one.
#[test]
fn a_second_agent_for_the_same_data_directory_is_refused() {
    let mut c = Cluster::start(1, Opts::default());
    with_logs_on_failure(&mut c, |c| {
        wait_for("primary", BOOT, || {
            (c.nodes[0].is_primary() == Some(true)).then_some(())
        });
        let cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
        let api = c.nodes[0].api_port;
        let other_port = common::cluster::free_port();
        let sock = c.nodes[0].dir.join("leasedog.sock");
        let other_sock = c.nodes[0].dir.join("second.sock");
        let second = c.nodes[0].dir.join("second.yaml");
        let cfg = cfg
            .replace(
                &format!("127.0.0.1:{api}"),
                &format!("127.0.0.1:{other_port}"),
            )
            .replace(
                &sock.display().to_string(),
                &other_sock.display().to_string(),
            );
        std::fs::write(&second, cfg).unwrap();
        std::fs::set_permissions(
            &second,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
        )
        .unwrap();
        let mut child = c
            .leasedog_with(&second)
            .arg("run")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(1),
            "second agent: {text}"
        );
        assert!(
            text.contains("another leasedog is running for the data directory"),
            "{text}"
        );
        assert!(!other_sock.exists(), "the second agent made its socket");
        assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
        assert_eq!(c.nodes[0].is_primary(), Some(true));
    });
}

/// Anyone who can write etcd can make the leader keep a slot: a forged
/// member key for "ghost" gets a slot that nobody uses. Its retained WAL is
/// capped (`postgresql.member_slots_max_retained`, 4 MiB here): once over,
/// the slot is moved up to the present. Before, it kept WAL without end.
#[test]
fn a_slot_for_a_forged_member_retains_at_most_the_cap() {
    let mut c = Cluster::new(1, Opts::default());
    c.start_agent_env(
        0,
        &[("LEASEDOG_POSTGRESQL_MEMBER_SLOTS_MAX_RETAINED", "4194304")],
    );
    with_logs_on_failure(&mut c, |c| {
        wait_for("primary", BOOT, || {
            (c.nodes[0].is_primary() == Some(true)).then_some(())
        });
        let key = format!("/service/{}/members/ghost", c.scope);
        c.etcd
            .ctl(&[
                "put",
                &key,
                r#"{"conn_url":"postgres://127.0.0.1:1/postgres","api_url":"http://127.0.0.1:1/patroni","state":"running","role":"replica","xlog_location":0,"timeline":1}"#,
            ])
            .unwrap();
        let retained = |c: &Cluster| -> Option<u64> {
            c.nodes[0]
                .sql("SELECT GREATEST((SELECT redo_lsn FROM pg_control_checkpoint()) - restart_lsn, 0)::bigint FROM pg_replication_slots WHERE slot_name = 'ghost'")
                .ok()
                .and_then(|s| s.trim().parse().ok())
        };
        wait_for("the ghost's slot", Duration::from_secs(20), || retained(c));
        // About 30 MB of WAL and a checkpoint after it: the slot alone
        // holds it, well over the cap.
        for _ in 0..3 {
            c.nodes[0]
                .sql("CREATE TABLE IF NOT EXISTS filler AS SELECT 1 AS x WHERE false; INSERT INTO filler SELECT generate_series(1, 300000)")
                .unwrap();
        }
        c.nodes[0].sql("CHECKPOINT").unwrap();
        wait_for("the slot moved up", Duration::from_secs(30), || {
            c.nodes[0]
                .agent_log_text()
                .contains("replication slot ghost is inactive and retains")
                .then_some(())
        });
        let now = retained(c).expect("the slot is kept for the member");
        assert!(now < 4 << 20, "the ghost's slot retains {now} bytes");
    });
}
