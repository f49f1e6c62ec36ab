//! Production transport on real etcd and PostgreSQL 15: etcd over TLS with
//! client certificates and RBAC (the agents' user may touch their cluster's
//! prefix only), and a three-member etcd that loses a member — killed, or
//! hung with its connections open — without a failover.
//!
//! Run as root (agents and PostgreSQL are started as `postgres`) or as
//! `postgres`.

mod common;

use common::cluster::{
    Cluster, EtcdSetup, Opts, Writer, feeds_and_longest_gap, monotonic_ms, wait_for,
};
use common::cluster::{REPLICATION_SECRET, SUPERUSER_SECRET};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(90);
/// Watchdog timeout 4 s (ttl 6 - safety_margin 2): a feed gap this long is
/// within it with room for one late renewal.
const MAX_FEED_GAP_MS: u64 = 3000;
/// Watchdog timeout 7 s (ttl 10 - safety_margin 3): an election may hold
/// renewals for a few seconds; 2 s to spare.
const ELECTION_FEED_GAP_MS: u64 = 5000;

/// Every process's command line, sampled every 20 ms until stopped: the
/// secrets must appear in none (pg_basebackup during the clones, pg_rewind
/// during the rejoin, psql, the agents).
struct CmdlineWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl CmdlineWatch {
    fn start(secrets: &'static [&'static str]) -> CmdlineWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut found = Vec::new();
            let mut programs = std::collections::BTreeSet::new();
            while !s.load(Ordering::Relaxed) {
                for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
                        continue;
                    };
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    if let Some(prog) = line.split_whitespace().next() {
                        programs.insert(prog.rsplit('/').next().unwrap_or(prog).to_string());
                    }
                    if secrets.iter().any(|x| line.contains(x)) {
                        found.push(line);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("command lines sampled of: {programs:?}");
            found
        });
        CmdlineWatch {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}

impl Drop for CmdlineWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const SECRETS: &[&str] = &[SUPERUSER_SECRET, REPLICATION_SECRET, "leasedog-secret"];

#[test]
fn a_cluster_over_tls_with_an_rbac_user() {
    let mut c = Cluster::new(
        3,
        Opts {
            etcd: EtcdSetup::TlsRbac,
            ..Opts::default()
        },
    );
    let cmdlines = CmdlineWatch::start(SECRETS);
    for i in 0..3 {
        c.start_agent(i);
    }
    let p = c.wait_healthy(BOOT);
    // Both replicas stream over TLS (replication is `hostssl` only, and
    // they verify the server's certificate: sslmode verify-full).
    wait_for("replication over TLS", Duration::from_secs(20), || {
        (c.nodes[p]
            .sql("SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl AND r.state = 'streaming'")
            .ok()?
            == "2")
            .then_some(())
    });
    // `list` reads over TLS as the RBAC user.
    let leader = wait_for("leader key", Duration::from_secs(10), || c.leader());
    assert_eq!(leader, c.nodes[p].name);
    // The RBAC user reaches nothing outside its prefix: the role works.
    let denied = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &c.etcd.endpoint()])
        .arg(format!("--cacert={}", c.certs().join("ca.pem").display()))
        .arg(format!("--cert={}", c.certs().join("client.pem").display()))
        .arg(format!("--key={}", c.certs().join("client.key").display()))
        // In the environment, not the command line: the test watches
        // every command line for secrets.
        .env("ETCDCTL_USER", "leasedog:leasedog-secret")
        .args(["get", "/elsewhere"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // Bad transport settings: a clear error that names the key and file,
    // from check-config and from the commands, and no password anywhere.
    let yaml = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    let bad = c.nodes[0].dir.join("bad.yml");
    let write_bad = |from: &str, to: &str| {
        assert!(yaml.contains(from), "{from}");
        std::fs::write(&bad, yaml.replace(from, to)).unwrap();
    };
    write_bad("ca.pem", "missing.pem");
    let out = c.leasedog_with(&bad).arg("check-config").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("etcd3.cacert") && err.contains("missing.pem"),
        "{err}"
    );
    // A CA that did not sign etcd's certificate (the client certificate is
    // no CA): the TLS handshake fails, and says so.
    // check-config finds it too (one read when TLS or a user is set).
    write_bad("ca.pem", "client.pem");
    for cmd in ["list", "check-config"] {
        let out = c.leasedog_with(&bad).arg(cmd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}");
        assert!(err.to_lowercase().contains("certificate"), "{cmd}: {err}");
    }
    write_bad("leasedog-secret", "wrong-secret");
    for cmd in ["list", "check-config"] {
        let out = c.leasedog_with(&bad).arg(cmd).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}");
        assert!(err.contains("authentication failed"), "{cmd}: {err}");
        assert!(!err.contains("wrong-secret"), "{cmd}: {err}");
    }
    // The good file passes check-config, etcd answering.
    let out = c.leasedog(0).arg("check-config").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in &c.nodes {
        assert!(
            !n.agent_log_text().contains("leasedog-secret"),
            "{}",
            n.name
        );
    }
    // Client certificates etcd refuses: one from another CA, one expired.
    common::etcd::make_bad_client_certs(&c.certs());
    common::cluster::chown_to_postgres(&c.certs());
    for (cert, key, what) in [
        ("other-client.pem", "other-client.key", "another CA"),
        ("expired.pem", "client.key", "expired"),
    ] {
        std::fs::write(
            &bad,
            yaml.replace("client.pem", cert).replace("client.key", key),
        )
        .unwrap();
        for cmd in ["list", "check-config"] {
            let out = c.leasedog_with(&bad).arg(cmd).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            eprintln!("{cmd}, client certificate from {what}: {}", err.trim());
            assert!(!out.status.success(), "{cmd}: {what}");
            assert!(
                err.to_lowercase().contains("certificate"),
                "{cmd}: {what}: {err}"
            );
        }
    }

    // Every auth token revoked (RBAC off and on again): the clients
    // authenticate again, and nothing moves.
    c.etcd.ctl(&["auth", "disable"]).unwrap();
    c.etcd.ctl(&["auth", "enable"]).unwrap();
    let from = monotonic_ms();
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        assert_eq!(
            c.sole_primary(),
            Some(p),
            "tokens revoked: the primary changed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, gap) = feeds_and_longest_gap(&c.nodes[p].watchdog_events(), from, monotonic_ms());
    eprintln!("tokens revoked: longest feed gap {gap} ms");
    assert!(gap <= MAX_FEED_GAP_MS, "tokens revoked: feed gap {gap} ms");

    // The role loses its permissions: every agent can renew its lease but
    // neither read nor confirm. Nobody takes that for "no leader"; the
    // leader, unable to prove its key, stops PostgreSQL before a ttl has
    // passed since its last confirmation. Permissions back: a primary again.
    let prefix = format!("/service/{}/", c.scope);
    let revoked = monotonic_ms();
    c.etcd
        .ctl(&[
            "role",
            "revoke-permission",
            "leasedog",
            "--prefix=true",
            &prefix,
        ])
        .unwrap();
    let stopped = wait_for("the leader stops", Duration::from_secs(10), || {
        (c.nodes[p].is_primary() != Some(true)).then(monotonic_ms)
    });
    eprintln!(
        "permissions revoked: primary stopped after {} ms",
        stopped - revoked
    );
    assert!(stopped - revoked < 6_000, "within a ttl (6 s)");
    let end = Instant::now() + Duration::from_secs(8);
    while Instant::now() < end {
        assert_eq!(
            c.sole_primary(),
            None,
            "no member promotes without permissions"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = c.nodes[p].agent_log_text();
    assert!(log.contains("permission denied"), "{log}");
    c.etcd
        .ctl(&[
            "role",
            "grant-permission",
            "leasedog",
            "--prefix=true",
            "readwrite",
            &prefix,
        ])
        .unwrap();
    let p = c.wait_healthy(Duration::from_secs(60));

    // A failover over TLS: the leader's agent and PostgreSQL killed; the
    // old primary rejoins (pg_rewind from the new one, over TCP).
    c.kill_agent(p);
    c.kill_postmaster(p);
    let p2 = wait_for("a new primary", Duration::from_secs(40), || {
        c.sole_primary().filter(|&i| i != p)
    });
    eprintln!("{} promoted over TLS", c.nodes[p2].name);
    c.nodes[p2]
        .sql("CREATE TABLE after_failover (x int)")
        .unwrap();
    c.start_agent(p);
    assert_eq!(c.wait_healthy(Duration::from_secs(60)), p2);

    // No secret anywhere: command lines (sampled all along), agent logs at
    // debug level, every etcd key, every API answer.
    let leaked = cmdlines.stop();
    assert!(leaked.is_empty(), "secrets in command lines: {leaked:?}");
    let mut places = 0;
    for n in &c.nodes {
        let log = n.agent_log_text();
        assert!(log.contains("DEBUG"), "logs at debug level");
        for x in SECRETS {
            assert!(!log.contains(x), "{} log holds a secret", n.name);
        }
        places += 1;
        for path in [
            "/",
            "/primary",
            "/replica",
            "/read-only",
            "/health",
            "/liveness",
            "/readiness",
            "/patroni",
            "/cluster",
            "/metrics",
            "/history",
            "/config",
        ] {
            let body = common::cluster::http_get(&format!("127.0.0.1:{}", n.api_port), path)
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            for x in SECRETS {
                assert!(!body.contains(x), "{}{path} holds a secret", n.name);
            }
            places += 1;
        }
    }
    let all = c.etcd.ctl(&["get", "--prefix", ""]).unwrap();
    assert!(all.contains("/members/"), "etcd read: {all}");
    for x in SECRETS {
        assert!(!all.contains(x), "an etcd key holds a secret");
    }
    eprintln!("no secret in command lines, {places} logs and API answers, or etcd");
}

/// Each agent is given all three members and talks to one at a time. The
/// raft leader among them is killed (an election), then each member in turn
/// is hung (SIGSTOP: connections stay open, nothing answers), then cut from
/// the other two by nftables (it answers, but from the minority) — so the
/// one the agents use is lost at some point: every time, the same primary
/// keeps its key, PostgreSQL is not restarted, and the watchdog is fed on
/// time.
#[test]
fn losing_one_of_three_etcd_members_causes_no_failover() {
    // An election takes etcd's election timeout (1 s) and a vote, during
    // which a lease cannot be renewed through any member: the leader must
    // have that much room between its renewals and its stop deadline. At
    // ttl 6 / safety_margin 2 it has about 3 s, which a hung raft leader
    // can exceed on a loaded machine; at ttl 10 / safety_margin 3 (watchdog
    // 7 s) about 5 s.
    let mut c = Cluster::start(
        3,
        Opts {
            etcd: EtcdSetup::Members(3),
            ttl: 10,
            retry_timeout: 3,
            safety_margin: 3,
            ..Opts::default()
        },
    );
    let p = c.wait_healthy(BOOT);
    let leader = c.nodes[p].name.clone();
    let postmaster = c.nodes[p].postmaster_pid();
    // A client writes to the primary throughout: no write may fail.
    let writer = Writer::start(&c, p);
    writer.wait_acked_on(p, 0, 5, Duration::from_secs(10));
    let member_key = |c: &Cluster| {
        c.etcd_ctl_any(&[
            "get",
            "--print-value-only",
            &format!("/service/{}/members/{}", c.scope, leader),
        ])
    };
    let hold = |c: &Cluster, what: &str, secs: u64| {
        let key_before = member_key(c);
        let from = monotonic_ms();
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            if c.sole_primary() != Some(p) {
                let log = c.nodes[p].agent_log_text();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                for l in tail.iter().rev() {
                    eprintln!("{} | {l}", c.nodes[p].name);
                }
                panic!("{what}: the primary changed");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let to = monotonic_ms();
        let (feeds, gap) = feeds_and_longest_gap(&c.nodes[p].watchdog_events(), from, to);
        eprintln!(
            "{what}: {} feeds in {} ms, longest gap {gap} ms",
            feeds.len(),
            to - from
        );
        assert!(gap <= ELECTION_FEED_GAP_MS, "{what}: feed gap {gap} ms");
        assert_eq!(c.leader().as_deref(), Some(leader.as_str()), "{what}");
        assert_eq!(
            c.nodes[p].postmaster_pid(),
            postmaster,
            "{what}: PostgreSQL restarted"
        );
        // The leader's member key keeps being rewritten (its position moves).
        assert_ne!(member_key(c), key_before, "{what}: member key not updated");
        assert_eq!(writer.failed(), 0, "{what}: a write failed");
    };
    // A member is hung for less than the lease TTL: a raft leader that
    // resumes after a longer hang revokes every lease it saw expire
    // (etcd#15247, fixed in 3.4.28 and 3.5.11; this is 3.4.23). That is
    // another test (tests/cluster.rs, a lease lost early): this one is
    // about switching endpoints.
    const HUNG: u64 = 6;
    // An election: the raft leader hung, then another one killed.
    let first = raft_leader(&c);
    member(&mut c, first).freeze();
    hold(&c, &format!("raft leader m{first} hung"), HUNG);
    member(&mut c, first).thaw();
    settled(&c);
    let second = raft_leader(&c);
    member(&mut c, second).kill();
    hold(&c, &format!("raft leader m{second} killed"), 10);
    member(&mut c, second).restart();
    settled(&c);
    for i in 0..3 {
        member(&mut c, i).freeze();
        hold(&c, &format!("m{i} hung"), HUNG);
        member(&mut c, i).thaw();
        settled(&c);
    }
    // Each member in turn cut from the other two (nftables): it still
    // answers its clients' connections but, in the minority, serves no
    // linearizable read and renews no lease; no stale answer moves anyone.
    for i in 0..3 {
        let others: Vec<u16> = (0..3)
            .filter(|&j| j != i)
            .map(|j| member(&mut c, j).peer_port())
            .collect();
        if member(&mut c, i).isolate(&others).is_none() {
            eprintln!("SKIPPED isolation: needs root");
            break;
        }
        hold(&c, &format!("m{i} isolated"), 10);
        member(&mut c, i).heal();
        // Back in the cluster, the member's higher term (it campaigned
        // alone; etcd 3.4 runs without --pre-vote by default) deposes the
        // raft leader: one more election, the same as a restart. The
        // primary holds through it too...
        hold(&c, &format!("m{i} back"), 4);
        // ...and the next member is lost only once all three agree again.
        settled(&c);
    }
    c.wait_healthy(Duration::from_secs(30));
    let acked = writer.stop();
    eprintln!(
        "{} writes acknowledged by the primary, none failed",
        acked.len()
    );
    assert!(acked.iter().all(|(_, at)| *at == p));
    for n in &c.nodes {
        let log = n.agent_log_text();
        assert!(!log.contains("stopping PostgreSQL"), "{}:\n{log}", n.name);
    }
}

fn member(c: &mut Cluster, i: usize) -> &mut common::etcd::EtcdServer {
    if i == 0 {
        &mut c.etcd
    } else {
        &mut c.etcd_members[i - 1]
    }
}

/// `etcdctl endpoint status --cluster`: one entry per member that answered.
fn endpoint_status(c: &Cluster) -> Option<Vec<serde_json::Value>> {
    let out = c
        .etcd
        .ctl(&["endpoint", "status", "--cluster", "-w", "json"])
        .ok()?;
    match serde_json::from_str(&out).ok()? {
        serde_json::Value::Array(all) => Some(all),
        _ => None,
    }
}

/// Waits until the three members answer and agree on one raft leader and
/// term: one member lost at a time is this test's claim, not one lost while
/// another still rejoins.
fn settled(c: &Cluster) {
    wait_for(
        "etcd's three members agreeing",
        Duration::from_secs(30),
        || {
            let all = endpoint_status(c)?;
            let first = &all.first()?["Status"];
            let (leader, term) = (first["leader"].as_u64()?, first["raftTerm"].as_u64()?);
            let agree = all.len() == 3
                && leader != 0
                && all.iter().all(|s| {
                    s["Status"]["leader"].as_u64() == Some(leader)
                        && s["Status"]["raftTerm"].as_u64() == Some(term)
                });
            agree.then_some(())
        },
    )
}

/// Which member (0, 1, 2) is etcd's raft leader (polled: right after an
/// election or a thaw a member may not answer yet).
fn raft_leader(c: &Cluster) -> usize {
    let mut endpoints = vec![c.etcd.endpoint()];
    endpoints.extend(c.etcd_members.iter().map(|m| m.endpoint()));
    wait_for("etcd's raft leader", Duration::from_secs(20), || {
        let all = endpoint_status(c)?;
        let leader_id = all.first()?["Status"]["leader"].as_u64()?;
        let endpoint = all
            .iter()
            .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader_id))?["Endpoint"]
            .as_str()?
            .to_string();
        endpoints.iter().position(|e| *e == endpoint)
    })
}
