//! Synchronous replication on real etcd and PostgreSQL 15: with
//! `synchronous_mode` on, a writer's every acknowledged commit survives a
//! SIGKILL of the primary, a frozen primary agent (testing watchdog, the
//! harness playing the hardware reset), an etcd freeze and a switchover;
//! the `sync` key and `synchronous_standby_names` agree at every
//! observation; strict mode blocks commits rather than lose them;
//! non-strict mode goes asynchronous and says so; quorum mode survives two
//! dead replicas; a standby that lags is replaced.
//!
//! Run as root (agents and PostgreSQL run as `postgres`) or as `postgres`.

mod common;

use common::cluster::{Cluster, Opts, Writer, monotonic_ms, psql_at, wait_for};
use leasedog::cluster::SyncState;
use leasedog::sync::{KeySet, Names};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(90);

fn opts(n: usize, yaml: &str) -> Opts {
    Opts {
        extra: (0..n).map(|i| (i, yaml.to_string())).collect(),
        ..Default::default()
    }
}

fn sync_key(c: &Cluster) -> Option<SyncState> {
    let key = format!("/service/{}/sync", c.scope);
    let v = c.etcd.ctl(&["get", "--print-value-only", &key]).ok()?;
    serde_json::from_str(v.trim()).ok()
}

/// One observation of the primary `p`: the key, its setting, the key again.
/// None when the key changed in between or names another leader; else
/// whether the key covers what PostgreSQL waits for (every commit it
/// acknowledges is held by one of any `quorum` members the key names).
fn agrees(c: &Cluster, p: usize) -> Option<(bool, String, SyncState)> {
    let k1 = sync_key(c)?;
    let s = c.nodes[p].sql("SHOW synchronous_standby_names").ok()?;
    let k2 = sync_key(c)?;
    if k1 != k2 || k1.leader.as_deref() != Some(c.nodes[p].name.as_str()) {
        return None;
    }
    Some((KeySet::from_state(&k1).covers(&Names::parse(&s)), s, k1))
}

/// Polls `f` like `wait_for`, and on every round checks that the key and
/// the setting of whichever node is the sole primary agree.
fn watch_until<T>(
    c: &Cluster,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(p) = c.sole_primary()
            && let Some((ok, s, k)) = agrees(c, p)
        {
            assert!(
                ok,
                "the sync key {k:?} does not cover synchronous_standby_names = '{s}' on {}",
                c.nodes[p].name
            );
        }
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            c.dump_logs();
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the primary `p` waits for `n` standbys and the key names
/// exactly them; returns their names.
fn wait_sync(c: &Cluster, p: usize, n: usize) -> Vec<String> {
    watch_until(
        c,
        &format!("{n} synchronous standby(s) on {}", c.nodes[p].name),
        Duration::from_secs(30),
        || {
            let (_, s, k) = agrees(c, p)?;
            let names = Names::parse(&s);
            let set = names.set()?;
            let standbys: HashSet<String> = k.standbys().into_iter().collect();
            (set.len() == n && standbys == set.iter().cloned().collect::<HashSet<_>>())
                .then(|| set.iter().cloned().collect())
        },
    )
}

/// Every key the writer saw acknowledged is in `w` on node `i`.
fn assert_all_acked_on(c: &Cluster, i: usize, acked: &[(i64, usize)], what: &str) {
    let rows = c.nodes[i].sql("SELECT k FROM w").expect("read w");
    let have: HashSet<i64> = rows.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<i64> = acked
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| !have.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "{what}: {} acknowledged commit(s) missing on {} (first {:?}) of {} acknowledged",
        lost.len(),
        c.nodes[i].name,
        &lost[..lost.len().min(5)],
        acked.len()
    );
    eprintln!(
        "{what}: all {} acknowledged commits are on {}",
        acked.len(),
        c.nodes[i].name
    );
}

/// psql that gives up after `secs`: the client is killed (a cancel would
/// let PostgreSQL report a commit whose synchronous wait it cut short as a
/// success). None when it did not return in time.
fn psql_within(c: &Cluster, i: usize, sql: &str, secs: u32) -> Option<Result<String, String>> {
    let out = std::process::Command::new("timeout")
        .args(["-s", "KILL", &secs.to_string()])
        .arg(format!("{}/psql", common::cluster::BIN_DIR))
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .arg("-h")
        .arg(c.nodes[i].socket_dir())
        .arg("-p")
        .arg(c.nodes[i].pg_port.to_string())
        .arg("-c")
        .arg(sql)
        .output()
        .expect("run psql");
    match out.status.code() {
        Some(0) => Some(Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())),
        Some(137) | None => None,
        Some(_) => Some(Err(String::from_utf8_lossy(&out.stderr).trim().to_string())),
    }
}

fn index_of(c: &Cluster, name: &str) -> usize {
    c.nodes.iter().position(|n| n.name == name).expect("member")
}

fn new_primary(c: &Cluster, old: usize) -> usize {
    watch_until(c, "a new primary", Duration::from_secs(40), || {
        c.sole_primary().filter(|&i| i != old)
    })
}

#[test]
fn sync_on_loses_no_acknowledged_commit_through_kill_switchover_freeze_and_etcd_hang() {
    let mut c = Cluster::start(3, opts(3, "synchronous_mode: on\n"));
    let p = c.wait_healthy(BOOT);
    let standby = wait_sync(&c, p, 1).remove(0);
    let writer = Writer::start(&c, p);
    writer.wait_acked_on(p, 0, 20, Duration::from_secs(20));

    // 1. SIGKILL of the primary's agent and postmaster: only the
    // synchronous standby may take over, and it holds every commit.
    let t0 = Instant::now();
    c.kill_agent(p);
    c.kill_postmaster(p);
    let q = new_primary(&c, p);
    eprintln!(
        "sync on, SIGKILL: {} writable after {:.2}s",
        c.nodes[q].name,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        c.nodes[q].name, standby,
        "only the synchronous standby may promote"
    );
    assert_all_acked_on(&c, q, &writer.acked(), "after SIGKILL of the primary");
    c.start_agent(p);
    assert_eq!(c.wait_healthy(Duration::from_secs(60)), q);
    let standby = wait_sync(&c, q, 1).remove(0);
    let (k, _) = *writer.acked().last().expect("acked");
    writer.wait_acked_on(q, k, 10, Duration::from_secs(20));

    // 2. Switchover without a name: to the synchronous standby.
    let t0 = Instant::now();
    let out = c.leasedog(0).arg("switchover").output().expect("cli");
    assert!(
        out.status.success(),
        "switchover: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r = new_primary(&c, q);
    eprintln!(
        "sync on, switchover: {} writable after {:.2}s",
        c.nodes[r].name,
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        c.nodes[r].name, standby,
        "a switchover goes to the synchronous standby"
    );
    assert_all_acked_on(&c, r, &writer.acked(), "after the switchover");
    assert_eq!(c.wait_healthy(Duration::from_secs(60)), r);
    let standby = wait_sync(&c, r, 1).remove(0);
    let (k, _) = *writer.acked().last().expect("acked");
    writer.wait_acked_on(r, k, 10, Duration::from_secs(20));

    // 3. The primary's agent frozen: the harness plays the hardware and
    // resets the node (kills its postmaster) when the watchdog runs out.
    wait_for("watchdog fed", Duration::from_secs(10), || {
        c.nodes[r]
            .watchdog_events()
            .iter()
            .any(|(_, o)| o == "keepalive")
            .then_some(())
    });
    c.freeze_agent(r);
    let frozen = monotonic_ms();
    let reset_at = watch_until(&c, "the watchdog deadline", Duration::from_secs(5), || {
        common::cluster::watchdog_reset_at(&c.nodes[r].watchdog_events())
            .filter(|_| monotonic_ms() > frozen + 300)
    });
    watch_until(&c, "the emulated reset", Duration::from_secs(15), || {
        (monotonic_ms() >= reset_at).then_some(())
    });
    c.kill_postmaster(r);
    let s = new_primary(&c, r);
    assert_eq!(
        c.nodes[s].name, standby,
        "only the synchronous standby may promote after the reset"
    );
    assert_all_acked_on(&c, s, &writer.acked(), "after the frozen primary's reset");
    c.thaw_agent(r);
    assert_eq!(c.wait_healthy(Duration::from_secs(60)), s);
    wait_sync(&c, s, 1);
    let (k, _) = *writer.acked().last().expect("acked");
    writer.wait_acked_on(s, k, 10, Duration::from_secs(20));

    // 4. etcd hangs: the primary stops before its lease runs out; when
    // etcd is back a member the key allows leads again.
    c.etcd.freeze();
    watch_until(
        &c,
        "the primary stops",
        Duration::from_secs(c.opts.ttl + 2),
        || (c.nodes[s].is_primary() != Some(true)).then_some(()),
    );
    c.etcd.thaw();
    let last = c.wait_healthy(Duration::from_secs(60));
    wait_sync(&c, last, 1);
    let (k, _) = *writer.acked().last().expect("acked");
    writer.wait_acked_on(last, k, 10, Duration::from_secs(30));

    let acked = writer.stop();
    assert_all_acked_on(&c, last, &acked, "at the end");
    let standby = index_of(&c, &wait_sync(&c, last, 1)[0]);
    wait_for(
        "the standby holds every commit",
        Duration::from_secs(20),
        || {
            let rows = c.nodes[standby].sql("SELECT count(*) FROM w").ok()?;
            (rows.parse::<usize>().ok()? >= acked.len()).then_some(())
        },
    );
    assert_all_acked_on(&c, standby, &acked, "on the synchronous standby at the end");
}

#[test]
fn strict_mode_blocks_commits_without_a_standby_and_non_strict_goes_asynchronous() {
    // Strict: both replicas stopped, a commit waits rather than succeed.
    let mut c = Cluster::start(
        3,
        opts(3, "synchronous_mode: on\nsynchronous_mode_strict: true\n"),
    );
    let p = c.wait_healthy(BOOT);
    wait_sync(&c, p, 1);
    let writer = Writer::start(&c, p);
    writer.wait_acked_on(p, 0, 10, Duration::from_secs(20));
    let acked_before = writer.stop();
    for i in (0..3).filter(|&i| i != p) {
        c.stop_agent(i, Duration::from_secs(30));
    }
    watch_until(&c, "'*' with an empty key", Duration::from_secs(30), || {
        let (_, s, k) = agrees(&c, p)?;
        (s == "*" && k.standbys().is_empty()).then_some(())
    });
    let blocked = psql_within(&c, p, "INSERT INTO w VALUES (-1)", 3);
    assert!(
        blocked.is_none(),
        "strict mode answered a commit with no standby: {blocked:?}"
    );
    // A standby comes back: commits flow again, and it is named.
    let back = (0..3).find(|&i| i != p).expect("replica");
    c.start_agent(back);
    let named = wait_sync(&c, p, 1);
    assert_eq!(named, vec![c.nodes[back].name.clone()]);
    psql_within(&c, p, "INSERT INTO w VALUES (-2)", 10)
        .expect("a commit returns with the standby back")
        .expect("commit with the standby back");
    assert_all_acked_on(&c, back, &acked_before, "strict mode");
    drop(c);

    // Non-strict: the leader drops to asynchronous, and says so.
    let mut c = Cluster::start(3, opts(3, "synchronous_mode: on\n"));
    let p = c.wait_healthy(BOOT);
    wait_sync(&c, p, 1);
    for i in (0..3).filter(|&i| i != p) {
        c.stop_agent(i, Duration::from_secs(30));
    }
    watch_until(
        &c,
        "asynchronous with an empty key",
        Duration::from_secs(30),
        || {
            let (_, s, k) = agrees(&c, p)?;
            (s.is_empty() && k.standbys().is_empty()).then_some(())
        },
    );
    psql_within(&c, p, "CREATE TABLE a (x int)", 5)
        .expect("non-strict mode commits without a standby")
        .expect("create");
    psql_within(&c, p, "INSERT INTO a VALUES (1)", 5)
        .expect("non-strict mode commits without a standby")
        .expect("insert");
    assert!(
        c.nodes[p]
            .agent_log_text()
            .contains("replicating asynchronously"),
        "the agent's log says it went asynchronous"
    );
    let out = c.leasedog(p).args(["list"]).output().expect("list");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        list.contains("asynchronous"),
        "list says the cluster is asynchronous:\n{list}"
    );
}

#[test]
fn quorum_mode_survives_two_dead_replicas_then_the_primary() {
    let yaml = "synchronous_mode: quorum\nsynchronous_node_count: 2\n";
    let mut c = Cluster::start(5, opts(5, yaml));
    let p = c.wait_healthy(BOOT);
    wait_sync(&c, p, 4);
    let (_, s, k) = watch_until(&c, "the quorum key", Duration::from_secs(10), || {
        agrees(&c, p)
    });
    assert!(
        s.starts_with("ANY 2 ("),
        "synchronous_standby_names = '{s}'"
    );
    assert_eq!(
        k.quorum,
        Some(3),
        "four standbys, two confirm: a candidate sees three"
    );
    let writer = Writer::start(&c, p);
    writer.wait_acked_on(p, 0, 20, Duration::from_secs(20));
    // Two replicas die: commits go on with the two left.
    let dead: Vec<usize> = (0..5).filter(|&i| i != p).take(2).collect();
    for &i in &dead {
        c.kill_agent(i);
        c.kill_postmaster(i);
    }
    wait_sync(&c, p, 2);
    let (k0, _) = *writer.acked().last().expect("acked");
    writer.wait_acked_on(p, k0, 20, Duration::from_secs(30));
    // Then the primary: one of the two left promotes, with every commit.
    c.kill_agent(p);
    c.kill_postmaster(p);
    let q = new_primary(&c, p);
    assert!(!dead.contains(&q));
    let acked = writer.stop();
    assert_all_acked_on(
        &c,
        q,
        &acked,
        "quorum mode after two replicas and the primary died",
    );
}

#[test]
fn a_synchronous_standby_that_lags_is_replaced() {
    let yaml = "synchronous_mode: on\nmaximum_lag_on_syncnode: 1048576\n";
    let c = Cluster::start(3, opts(3, yaml));
    let p = c.wait_healthy(BOOT);
    let standby = wait_sync(&c, p, 1).remove(0);
    let a = index_of(&c, &standby);
    c.nodes[p]
        .sql("CREATE TABLE big (x int, pad text)")
        .expect("create");
    // The standby stops flushing: its WAL receiver is stopped.
    let receiver: i32 = wait_for(
        "the standby's WAL receiver",
        Duration::from_secs(10),
        || {
            c.nodes[a]
                .sql("SELECT pid FROM pg_stat_wal_receiver")
                .ok()?
                .parse()
                .ok()
        },
    );
    // SAFETY: a plain signal to a process the test started.
    unsafe { libc::kill(receiver, libc::SIGSTOP) };
    let sock = c.nodes[p].socket_dir();
    let port = c.nodes[p].pg_port;
    let t0 = Instant::now();
    let big = std::thread::spawn(move || {
        // Connects at once; the commit waits for a standby that confirms.
        psql_at(
            &sock,
            port,
            "INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
            5,
        )
    });
    let replaced = watch_until(
        &c,
        "another synchronous standby",
        Duration::from_secs(40),
        || {
            let names = wait_sync_once(&c, p)?;
            (names != vec![standby.clone()]).then_some(names)
        },
    );
    let done = big.join().expect("thread");
    // SAFETY: as above.
    unsafe { libc::kill(receiver, libc::SIGCONT) };
    eprintln!(
        "lagging standby {standby} replaced by {:?}; the big commit returned after {:.2}s",
        replaced,
        t0.elapsed().as_secs_f64()
    );
    done.expect("the commit completes once another standby confirms it");
    assert!(!replaced.contains(&standby));

    // A failover onto the member the key no longer names is refused unless
    // the operator accepts losing commits.
    let out = c
        .leasedog(p)
        .args(["failover", "--to", &standby])
        .output()
        .expect("cli");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "failover to {standby} was accepted");
    assert!(
        err.contains("not a synchronous standby") && err.contains("--allow-data-loss"),
        "{err}"
    );
    assert_eq!(c.sole_primary(), Some(p), "nothing moved");
}

/// The standbys the key and the setting agree on now, if they do.
fn wait_sync_once(c: &Cluster, p: usize) -> Option<Vec<String>> {
    let (_, s, k) = agrees(c, p)?;
    let names = Names::parse(&s);
    let set = names.set()?;
    let standbys: HashSet<String> = k.standbys().into_iter().collect();
    (standbys == set.iter().cloned().collect::<HashSet<_>>()).then(|| set.iter().cloned().collect())
}

/// `synchronous_mode` switched on and off through the config key under a
/// writer, as `patronictl edit-config` does: on, the leader names a
/// standby in the key and PostgreSQL waits for it (the key covering the
/// setting at every observation); off, the key is deleted and the primary
/// stops waiting (a commit with every replica stopped returns), without a
/// restart and without a failed write.
#[test]
fn synchronous_mode_switched_on_and_off_through_the_config_key() {
    let mut c = Cluster::start(3, Opts::default());
    let p = c.wait_healthy(BOOT);
    let postmaster = c.nodes[p].postmaster_pid();
    let writer = Writer::start(&c, p);
    writer.wait_acked_on(p, 0, 5, Duration::from_secs(10));
    let edit = |c: &Cluster, set: &str| {
        let out = c
            .leasedog(0)
            .args(["edit-config", "--force", "--set", set])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "edit-config --set {set}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    assert!(sync_key(&c).is_none(), "a sync key before synchronous mode");
    let t0 = Instant::now();
    edit(&c, "synchronous_mode=true");
    let named = wait_sync(&c, p, 1);
    eprintln!(
        "synchronous_mode on: {} named {:.1} s after edit-config",
        named.join(", "),
        t0.elapsed().as_secs_f64()
    );
    let (k, _) = *writer.acked().last().unwrap();
    writer.wait_acked_on(p, k, 5, Duration::from_secs(10));

    let t0 = Instant::now();
    edit(&c, "synchronous_mode=false");
    watch_until(
        &c,
        "no sync key and no standby waited for",
        Duration::from_secs(30),
        || {
            let s = c.nodes[p].sql("SHOW synchronous_standby_names").ok()?;
            (sync_key(&c).is_none() && s.is_empty()).then_some(())
        },
    );
    eprintln!(
        "synchronous_mode off: key deleted and setting emptied {:.1} s after edit-config",
        t0.elapsed().as_secs_f64()
    );
    let (k, _) = *writer.acked().last().unwrap();
    writer.wait_acked_on(p, k, 5, Duration::from_secs(10));
    assert_eq!(writer.failed(), 0, "a write failed");
    writer.stop();
    // Asynchronous again: with both replicas stopped, a commit returns.
    for i in (0..3).filter(|&i| i != p) {
        c.stop_agent(i, Duration::from_secs(30));
    }
    psql_within(&c, p, "INSERT INTO w VALUES (-1)", 5)
        .expect("an asynchronous commit returns with no standby")
        .expect("insert");
    assert_eq!(
        c.nodes[p].postmaster_pid(),
        postmaster,
        "PostgreSQL restarted"
    );
    assert!(
        c.nodes[p]
            .agent_log_text()
            .contains("synchronous_standby_names emptied")
    );
}
