//! Network partitions with real processes (root only): etcd in one network
//! namespace, each node (agent + PostgreSQL) in its own, joined by a bridge
//! in the root namespace, where writer clients write to every node that
//! accepts writes. nftables rules inside a node's namespace cut it from etcd
//! (both directions, or one). The harness plays the hardware behind each
//! node's testing watchdog: a node whose watchdog runs out is reset (agent,
//! postmaster and backends killed at once) and rebooted once healed.
//!
//! Asserted from the acknowledged writes: the old primary's last accepted
//! write comes before the new primary's first, and before the old leader key
//! disappeared from etcd; after healing there is one primary and the old one
//! follows. A replica cut from etcd changes nothing for the primary. The
//! fence also holds when the cut leader had been paused and another node
//! resumed the cluster, and when its PostgreSQL stops answering its probes.
//! Namespaces, bridge and processes are removed even when the test fails.

mod common;

use common::cluster::{BIN_DIR, alive, monotonic_ms, wait_for, watchdog_events, watchdog_reset_at};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const N: usize = 3;
const TTL: u64 = 6;

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(format!(
            "{:?}: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = sh(args) {
        panic!("{e}");
    }
}

/// Root and nft are needed; the test is skipped (with a note) otherwise.
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || sh(&["nft", "--version"]).is_err() {
        eprintln!("SKIPPED: {test} needs root and nft (bash scripts/setup.sh installs nftables)");
        return false;
    }
    true
}

/// Everything the test created, torn down in Drop.
struct Net {
    id: u32,
    etcd: Option<Child>,
    /// Agent i's process (`ip netns exec` and `setpriv` exec into it).
    agents: Mutex<Vec<Option<Child>>>,
    dirs: Vec<std::path::PathBuf>,
    tmp: tempfile::TempDir,
    bin: std::path::PathBuf,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("ld{}{}", self.id, name)
    }
    fn ip(&self, host: u8) -> String {
        // A subnet of 10.0.0.0/8 chosen by this process's id, every octet < 250.
        format!(
            "10.{}.{}.{host}",
            100 + (self.id / 250) % 150,
            self.id % 250
        )
    }
    fn node_ip(&self, i: usize) -> String {
        self.ip(11 + i as u8)
    }
    fn bridge(&self) -> String {
        format!("ldbr{}", self.id)
    }
    fn node_ns(&self, i: usize) -> String {
        self.ns(&format!("n{i}"))
    }

    fn setup() -> Net {
        // Several tests run in one process, one after the other: each gets
        // its own names and subnet.
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let id = (std::process::id() + 7919 * SEQ.fetch_add(1, Ordering::Relaxed)) % 50_000;
        let tmp = tempfile::Builder::new()
            .prefix("leasedog-part")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = tmp.path().join("leasedog");
        std::fs::copy(env!("CARGO_BIN_EXE_leasedog"), &bin).unwrap();
        let net = Net {
            id,
            etcd: None,
            agents: Mutex::new((0..N).map(|_| None).collect()),
            dirs: Vec::new(),
            tmp,
            bin,
        };
        let br = net.bridge();
        // A run killed before its Drop (or an earlier process with the same
        // id modulo 50,000) may have left objects with our names.
        let _ = sh(&["ip", "link", "del", &br]);
        for name in std::iter::once("e".to_string()).chain((0..N).map(|i| format!("n{i}"))) {
            let _ = sh(&["ip", "netns", "del", &net.ns(&name)]);
            let _ = sh(&["ip", "link", "del", &format!("v{}{}a", net.id, name)]);
        }
        must(&["ip", "link", "add", &br, "type", "bridge"]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", net.ip(254)),
            "dev",
            &br,
        ]);
        must(&["ip", "link", "set", &br, "up"]);
        let mut hosts = vec![("e".to_string(), net.ip(1))];
        for i in 0..N {
            hosts.push((format!("n{i}"), net.node_ip(i)));
        }
        for (name, ip) in hosts {
            let ns = net.ns(&name);
            let (a, b) = (
                format!("v{}{}a", net.id, name),
                format!("v{}{}b", net.id, name),
            );
            must(&["ip", "netns", "add", &ns]);
            must(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b]);
            must(&["ip", "link", "set", &a, "master", &br]);
            must(&["ip", "link", "set", &a, "up"]);
            must(&["ip", "link", "set", &b, "netns", &ns]);
            must(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                &b,
            ]);
            must(&["ip", "-n", &ns, "link", "set", &b, "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Namespaces, etcd, configs and the N agents (not yet healthy).
    fn start() -> Net {
        let mut net = Net::setup();
        let etcd_dir = net.tmp.path().join("etcd");
        let (e, c) = (net.ip(1), format!("http://{}:2379", net.ip(1)));
        let peer = format!("http://{e}:2380");
        let ens = net.ns("e");
        net.etcd = Some(net.spawn(
            &ens,
            &[
                "etcd",
                "--name=e",
                &format!("--data-dir={}", etcd_dir.display()),
                &format!("--listen-client-urls={c}"),
                &format!("--advertise-client-urls={c}"),
                &format!("--listen-peer-urls={peer}"),
                &format!("--initial-advertise-peer-urls={peer}"),
                &format!("--initial-cluster=e={peer}"),
            ],
            &net.tmp.path().join("etcd.log"),
        ));
        let subnet = format!("{}/24", net.ip(0));
        for i in 0..N {
            let dir = net.tmp.path().join(format!("n{i}"));
            std::fs::create_dir_all(dir.join("sock")).unwrap();
            let yaml = format!(
                "scope: part\nname: n{i}\netcd3:\n  hosts: [\"{e}:2379\"]\nttl: {TTL}\nloop_wait: 1\nretry_timeout: 2\n\
                 watchdog:\n  mode: automatic\n  driver: testing\n  device: {wd}\n  safety_margin: 2\n\
                 postgresql:\n  data_dir: {data}\n  bin_dir: {BIN_DIR}\n  listen: {ip}:5432\n  connect_address: {ip}:5432\n  socket_dir: {sock}\n\
                 \x20 pg_hba:\n    - local all all trust\n    - host all all {subnet} trust\n    - host replication all {subnet} trust\n\
                 \x20 parameters:\n    shared_buffers: 16MB\n    fsync: \"off\"\n\
                 restapi:\n  listen: {ip}:8008\ncontrol:\n  socket: {ctl}\nlog:\n  level: debug\n",
                wd = dir.join("watchdog.log").display(),
                data = dir.join("data").display(),
                ip = net.node_ip(i),
                sock = dir.join("sock").display(),
                ctl = dir.join("leasedog.sock").display(),
            );
            std::fs::write(dir.join("leasedog.yml"), yaml).unwrap();
            net.dirs.push(dir);
        }
        // The nodes' directories only: etcd (root) is already writing its own,
        // and a recursive chown racing with it fails on files etcd just removed
        // (its snap/.touch) — the one setup failure seen in CI.
        must(&[
            "chown",
            "postgres:postgres",
            net.tmp.path().to_str().unwrap(),
        ]);
        for dir in &net.dirs {
            must(&["chown", "-R", "postgres:postgres", dir.to_str().unwrap()]);
        }
        for i in 0..N {
            net.start_agent(i);
        }
        net
    }

    /// Runs `args` in namespace `ns`, output appended to `log`.
    fn spawn(&self, ns: &str, args: &[&str], log: &std::path::Path) -> Child {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap()
    }

    /// The command line of node i's binary, as postgres, in its namespace.
    fn as_node(&self, i: usize) -> Vec<String> {
        vec![
            "setpriv".into(),
            "--reuid=postgres".into(),
            "--regid=postgres".into(),
            "--init-groups".into(),
            self.bin.display().to_string(),
            "-c".into(),
            self.dirs[i].join("leasedog.yml").display().to_string(),
        ]
    }

    fn start_agent(&self, i: usize) {
        let mut args = self.as_node(i);
        args.push("run".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self.spawn(&self.node_ns(i), &args, &self.dirs[i].join("agent.log"));
        self.agents.lock().unwrap()[i] = Some(child);
    }

    fn agent_running(&self, i: usize) -> bool {
        self.agents.lock().unwrap()[i].is_some()
    }

    /// The CLI run on node i (in its namespace, as postgres): exit code and
    /// output.
    fn cli(&self, i: usize, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(i)])
            .args(self.as_node(i))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Node i's postmaster, from its pid file, if alive.
    fn postmaster_pid(&self, i: usize) -> Option<i32> {
        let text = std::fs::read_to_string(self.dirs[i].join("data/postmaster.pid")).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// What a watchdog reset does to node i: agent, postmaster and every
    /// backend gone at once. The postmaster is stopped first so that it
    /// forks no new child meanwhile.
    fn reset(&self, i: usize) {
        if let Some(mut a) = self.agents.lock().unwrap()[i].take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        if let Some(pm) = self.postmaster_pid(i) {
            // SAFETY: kill(2) of the postmaster named in our pid file.
            unsafe { libc::kill(pm, libc::SIGSTOP) };
            for child in children_of(pm) {
                // SAFETY: kill(2) of that postmaster's children.
                unsafe { libc::kill(child, libc::SIGKILL) };
            }
            // SAFETY: as above.
            unsafe { libc::kill(pm, libc::SIGKILL) };
        }
    }

    /// Cuts node i from etcd: requests (output), replies (input), or both.
    fn cut(&self, i: usize, requests: bool, replies: bool) {
        let ns = self.node_ns(i);
        let etcd = self.ip(1);
        let mut rules = String::from("table inet leasedogcut {\n");
        rules.push_str(&format!(
            "  chain out {{ type filter hook output priority 0; {} }}\n",
            if requests {
                format!("ip daddr {etcd} drop;")
            } else {
                String::new()
            }
        ));
        rules.push_str(&format!(
            "  chain in {{ type filter hook input priority 0; {} }}\n}}\n",
            if replies {
                format!("ip saddr {etcd} drop;")
            } else {
                String::new()
            }
        ));
        let path = self.tmp.path().join(format!("cut{i}.nft"));
        std::fs::write(&path, rules).unwrap();
        must(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "nft",
            "-f",
            path.to_str().unwrap(),
        ]);
    }

    fn heal(&self, i: usize) {
        let ns = self.node_ns(i);
        let _ = sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "nft",
            "delete",
            "table",
            "inet",
            "leasedogcut",
        ]);
    }

    fn psql(&self, i: usize, sql: &str) -> Result<String, String> {
        common::cluster::psql_at(self.node_ip(i), 5432, sql, 1)
    }

    /// etcdctl from the root namespace (which reaches etcd over the bridge).
    fn etcdctl(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &format!("http://{}:2379", self.ip(1)),
                "--command-timeout=1s",
            ])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn leader(&self) -> Option<String> {
        let v = self.etcdctl(&["get", "--print-value-only", "/service/part/leader"])?;
        (!v.is_empty()).then_some(v)
    }

    /// The lease the leader key is bound to, in hex as etcdctl takes it.
    fn leader_lease(&self) -> Option<String> {
        let out = self.etcdctl(&["get", "-w", "json", "/service/part/leader"])?;
        Some(format!("{:x}", common::etcd::lease_of_get_json(&out)?))
    }

    /// Whole seconds etcd says the lease has left (truncated), -1 once it
    /// expired.
    fn lease_ttl(&self, hex: &str) -> Option<i64> {
        let out = self.etcdctl(&["lease", "timetolive", hex, "-w", "json"])?;
        common::etcd::time_to_live_json(&out).map(|(left, _)| left)
    }

    /// Polls etcd until the leader key no longer names `old`: (a lower
    /// bound of when `lease` expired on etcd, when the key was seen gone).
    /// Each `lease timetolive` answer bounds the expiry from below by
    /// `sent + ttl` (etcd truncates to whole seconds and answers after
    /// `sent`); the key is seen gone up to a poll late.
    fn wait_lease_gone(&self, old: &str, lease: &str) -> (Instant, Instant) {
        let mut expiry_lb: Option<Instant> = None;
        let key_gone = wait_for("old leader key gone", Duration::from_secs(TTL * 3), || {
            let sent = Instant::now();
            if let Some(ttl) = self.lease_ttl(lease)
                && ttl >= 0
            {
                let lb = sent + Duration::from_secs(ttl as u64);
                expiry_lb = Some(expiry_lb.map_or(lb, |e| e.max(lb)));
            }
            (self.leader().as_deref() != Some(old)).then(Instant::now)
        });
        (
            expiry_lb.expect("etcd reported the lease's time to live"),
            key_gone,
        )
    }

    fn paused(&self) -> Option<bool> {
        let out = self.etcdctl(&["get", "--print-value-only", "/service/part/config"])?;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        Some(v["pause"] == true)
    }

    fn primary(&self) -> Option<usize> {
        let p: Vec<usize> = (0..N)
            .filter(|&i| self.psql(i, "SELECT pg_is_in_recovery()").as_deref() == Ok("f"))
            .collect();
        (p.len() == 1).then(|| p[0])
    }

    fn healthy(&self, timeout: Duration) -> usize {
        wait_for("one primary, two streaming replicas", timeout, || {
            let p = self.primary()?;
            let n: usize = self.psql(p, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name LIKE 'n%'").ok()?.parse().ok()?;
            (n == N - 1
                && (0..N).all(|i| {
                    i == p || self.psql(i, "SELECT pg_is_in_recovery()").as_deref() == Ok("t")
                }))
            .then_some(p)
        })
    }

    fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dirs[i].join("agent.log")).unwrap_or_default()
    }
}

/// When a process exits, to 5 ms.
struct ExitWatch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Option<Instant>>>,
}

impl ExitWatch {
    fn start(pid: i32) -> ExitWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while alive(pid) {
                if s.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Some(Instant::now())
        });
        ExitWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// When it exited, or None if it still runs.
    fn finish(mut self) -> Option<Instant> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take()?.join().unwrap()
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let child: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
        let ppid: i32 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == pid).then_some(child)
    })
    .collect()
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for a in self.agents.lock().unwrap().iter_mut().flatten() {
            let _ = a.kill();
            let _ = a.wait();
        }
        for d in &self.dirs {
            if let Ok(text) = std::fs::read_to_string(d.join("data/postmaster.pid"))
                && let Some(pid) = text
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse::<i32>().ok())
            {
                // SAFETY: kill(2) of the postmaster recorded by this test.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
            }
        }
        if std::thread::panicking() {
            for d in &self.dirs {
                eprintln!(
                    "==== {} ====\n{}",
                    d.display(),
                    std::fs::read_to_string(d.join("agent.log")).unwrap_or_default()
                );
            }
        }
        for name in ["e".to_string()]
            .into_iter()
            .chain((0..N).map(|i| format!("n{i}")))
        {
            let _ = sh(&["ip", "netns", "del", &self.ns(&name)]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge()]);
    }
}

/// The hardware behind every node's testing watchdog: a node whose
/// watchdog runs out (last feed + timeout, see `watchdog_reset_at`) is
/// reset at once. Resets: (node, monotonic ms, instant).
struct Hardware {
    stop: Arc<AtomicBool>,
    resets: Arc<Mutex<Vec<(usize, u64, Instant)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hardware {
    fn start(net: &Arc<Net>) -> Hardware {
        let stop = Arc::new(AtomicBool::new(false));
        let resets = Arc::new(Mutex::new(Vec::new()));
        let (net, s, r) = (net.clone(), stop.clone(), resets.clone());
        let thread = std::thread::spawn(move || {
            // Events up to a reset belong to the node's previous boot.
            let mut booted_at = [0u64; N];
            while !s.load(Ordering::Relaxed) {
                for (i, boot) in booted_at.iter_mut().enumerate() {
                    let events: Vec<_> = watchdog_events(&net.dirs[i].join("watchdog.log"))
                        .into_iter()
                        .filter(|(t, _)| *t > *boot)
                        .collect();
                    let now = monotonic_ms();
                    if watchdog_reset_at(&events).is_some_and(|at| now >= at) {
                        net.reset(i);
                        eprintln!("emulated watchdog: node n{i} reset at {now}");
                        r.lock().unwrap().push((i, now, Instant::now()));
                        *boot = now;
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Hardware {
            stop,
            resets,
            thread: Some(thread),
        }
    }

    fn resets_of(&self, i: usize) -> Vec<Instant> {
        self.resets
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _, _)| *n == i)
            .map(|(_, _, t)| *t)
            .collect()
    }
}

impl Drop for Hardware {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An acknowledged write: (node, sent, acknowledged). A write commits
/// between its sending and its acknowledgement.
type Acks = Arc<Mutex<Vec<(usize, Instant, Instant)>>>;

/// Clients writing to every node at once, one thread per node, a new
/// connection per statement (as an application reconnecting would).
struct Writers {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    acks: Acks,
}

impl Writers {
    fn start(net: &Arc<Net>) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Acks = Arc::new(Mutex::new(Vec::new()));
        let key = Arc::new(AtomicU64::new(0));
        let threads = (0..N)
            .map(|i| {
                let (net, stop, acks, key) = (net.clone(), stop.clone(), acks.clone(), key.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let k = key.fetch_add(1, Ordering::Relaxed);
                        let sql = format!("INSERT INTO w VALUES ({k}, {i}, clock_timestamp())");
                        let sent = Instant::now();
                        if net.psql(i, &sql).is_ok() {
                            acks.lock().unwrap().push((i, sent, Instant::now()));
                        } else {
                            // A replica refuses at once: do not spin.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                })
            })
            .collect();
        Writers {
            stop,
            threads,
            acks,
        }
    }

    /// A client on one connection to node i, opened now and kept: it goes
    /// on writing as long as that backend accepts writes, whatever happens
    /// to new connections. Its acknowledgements join `acks`.
    fn add_session(&mut self, net: &Net, i: usize) {
        let (stop, acks) = (self.stop.clone(), self.acks.clone());
        let conn = format!(
            "host={} port=5432 user=postgres dbname=postgres connect_timeout=2 application_name=session_writer",
            net.node_ip(i)
        );
        let (tx, rx) = std::sync::mpsc::channel();
        self.threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, connection) =
                    match tokio_postgres::connect(&conn, tokio_postgres::NoTls).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                tokio::spawn(connection);
                let _ = tx.send(Ok(()));
                let mut k = 1_000_000_000u64 * (i as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let sql = format!("INSERT INTO w VALUES ({k}, {i}, clock_timestamp())");
                    let sent = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(5), client.batch_execute(&sql))
                        .await
                    {
                        Ok(Ok(())) => acks.lock().unwrap().push((i, sent, Instant::now())),
                        Ok(Err(e)) => {
                            eprintln!("session writer on n{i} ends: {e}");
                            return;
                        }
                        Err(_) => {
                            eprintln!("session writer on n{i} ends: a write hung 5 s");
                            return;
                        }
                    }
                }
            });
        }));
        rx.recv().unwrap().expect("session writer connects");
    }

    fn finish(mut self) -> Vec<(usize, Instant, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.acks.lock().unwrap().clone()
    }

    /// The first node other than `old` acknowledging a write sent after `t`.
    fn new_primary(&self, old: usize, t: Instant, timeout: Duration) -> usize {
        wait_for("a new primary", timeout, || {
            self.acks
                .lock()
                .unwrap()
                .iter()
                .find(|(i, s, _)| *i != old && *s > t)
                .map(|(i, _, _)| *i)
        })
    }

    /// Waits until node i acknowledged `n` writes sent after `t`.
    fn wait_writes(&self, i: usize, t: Instant, n: usize, timeout: Duration) {
        wait_for(&format!("{n} writes on n{i}"), timeout, || {
            (self
                .acks
                .lock()
                .unwrap()
                .iter()
                .filter(|(j, s, _)| *j == i && *s > t)
                .count()
                >= n)
                .then_some(())
        });
    }
}

impl Drop for Writers {
    fn drop(&mut self) {
        // Joined, also when a test fails: a thread left running would hold
        // the last `Arc<Net>`, and the namespaces and processes would
        // outlive the test process.
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// From the writes: the old primary's last acknowledgement and the new
/// primary's first write sent after `cut_at`. Asserts that the two never
/// accepted writes at once (the old one's last write was acknowledged
/// before the new one's first was even sent) and that no third node took
/// writes after the cut.
fn no_two_writers(
    acks: &[(usize, Instant, Instant)],
    old: usize,
    new: usize,
    cut_at: Instant,
) -> (Instant, Instant) {
    let last_old = acks
        .iter()
        .filter(|(i, _, _)| *i == old)
        .map(|(_, _, a)| *a)
        .max()
        .unwrap();
    let first_new = acks
        .iter()
        .filter(|(i, s, _)| *i == new && *s > cut_at)
        .map(|(_, s, _)| *s)
        .min()
        .unwrap();
    // Fails when the old primary still took a write once the new one did.
    assert!(
        last_old < first_new,
        "two writers: n{old}'s last write was acknowledged {:.3}s after n{new}'s first was sent",
        last_old.duration_since(first_new).as_secs_f64()
    );
    // Fails when a third node accepted a write after the cut.
    let others: Vec<usize> = acks
        .iter()
        .filter(|(i, s, _)| *s > cut_at && *i != old && *i != new)
        .map(|(i, _, _)| *i)
        .collect();
    assert!(others.is_empty(), "third writers after the cut: {others:?}");
    (last_old, first_new)
}

/// The old leader's watchdog after the cut (monotonic ms `cut_ms`): its
/// last feed, when the hardware would have fired, and when the agent
/// disarmed it, relative to the cut.
fn watchdog_after_cut(net: &Net, i: usize, cut_ms: u64) -> String {
    let events = watchdog_events(&net.dirs[i].join("watchdog.log"));
    let disarm = events
        .iter()
        .find(|(t, o)| *t > cut_ms && o == "magic-close")
        .map(|(t, _)| *t);
    let before: Vec<_> = events
        .iter()
        .filter(|(t, _)| disarm.is_none_or(|d| *t < d))
        .cloned()
        .collect();
    let last_feed = before
        .iter()
        .filter(|(_, o)| o == "keepalive" || o == "open")
        .map(|(t, _)| *t)
        .max();
    let rel = |t: Option<u64>| {
        t.map_or("never".to_string(), |t| {
            format!("{:.2}s", (t as f64 - cut_ms as f64) / 1000.0)
        })
    };
    format!(
        "watchdog last fed at {}, would fire at {}, disarmed at {}",
        rel(last_feed),
        rel(watchdog_reset_at(&before)),
        rel(disarm)
    )
}

/// When the old primary was fenced: its postmaster gone or the node reset,
/// whichever came first. Panics when neither happened.
fn fenced_at(pm_gone: Option<Instant>, reset: Option<Instant>) -> Instant {
    match (pm_gone, reset) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) | (None, Some(a)) => a,
        (None, None) => panic!("the old primary's PostgreSQL still runs"),
    }
}

/// HH:MM:SS.mmm (UTC), as the agents log.
fn wall_clock(t: std::time::SystemTime) -> String {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn secs(t: Instant, since: Instant) -> f64 {
    if t >= since {
        t.duration_since(since).as_secs_f64()
    } else {
        -since.duration_since(t).as_secs_f64()
    }
}

#[test]
fn partitions_from_etcd() {
    if !can_run("partitions_from_etcd") {
        return;
    }
    let net = Net::start();
    let p = net.healthy(Duration::from_secs(120));
    net.psql(p, "CREATE TABLE w (k bigint, node int, at timestamptz)")
        .unwrap();
    let net = Arc::new(net);

    // A replica cut from etcd: nothing changes for the primary.
    let r = (p + 1) % N;
    net.cut(r, true, true);
    let end = Instant::now() + Duration::from_secs(TTL + 3);
    while Instant::now() < end {
        assert_eq!(
            net.primary(),
            Some(p),
            "the primary changed when a replica lost etcd"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    net.heal(r);
    net.healthy(Duration::from_secs(60));

    // The leader cut from etcd: both directions, then requests only.
    let mut leader = p;
    for (requests, replies) in [(true, true), (true, false), (false, true)] {
        let writers = Writers::start(&net);
        let old_name = format!("n{leader}");
        let t0 = Instant::now();
        writers.wait_writes(leader, t0, 1, Duration::from_secs(10));
        let cut_at = Instant::now();
        net.cut(leader, requests, replies);
        // When the old key goes (its lease expired), as seen from etcd.
        let key_gone = wait_for("old leader key gone", Duration::from_secs(TTL * 3), || {
            (net.leader().as_deref() != Some(old_name.as_str())).then(Instant::now)
        });
        let new = writers.new_primary(leader, cut_at, Duration::from_secs(30));
        writers.wait_writes(new, cut_at, 5, Duration::from_secs(10));
        let acks = writers.finish();
        let (last_old, first_new) = no_two_writers(&acks, leader, new, cut_at);
        eprintln!(
            "cut n{leader} (requests {requests}, replies {replies}): old primary's last write {:.2}s after the cut, \
             lease gone at {:.2}s, n{new}'s first write at {:.2}s",
            secs(last_old, cut_at),
            secs(key_gone, cut_at),
            secs(first_new, cut_at)
        );
        assert!(
            last_old < key_gone,
            "the old primary accepted writes after its lease expired"
        );
        net.heal(leader);
        let p2 = net.healthy(Duration::from_secs(90));
        assert_eq!(
            p2, new,
            "after healing the new primary stays and the old one follows"
        );
        leader = new;
    }
}

/// Maintenance mode does not suspend the fence. The cluster is paused, the
/// leader cut from etcd, and another node resumes the cluster while the cut
/// leader cannot know (its lease and member key are still in etcd, so the
/// resume guard lets it through). Once the lease runs out a replica is
/// promoted; the old leader must have fenced itself first: stopped its
/// PostgreSQL (`decide_blind`/rule W ignore the pause it last saw) or been
/// reset by its watchdog, which it stopped feeding.
#[test]
fn pause_partition_resume_never_two_writers() {
    if !can_run("pause_partition_resume_never_two_writers") {
        return;
    }
    let net = Arc::new(Net::start());
    let hw = Hardware::start(&net);
    let p = net.healthy(Duration::from_secs(120));
    net.psql(p, "CREATE TABLE w (k bigint, node int, at timestamptz)")
        .unwrap();
    let r = (p + 1) % N;
    let old_name = format!("n{p}");

    let (code, out) = net.cli(r, &["pause", "--wait"]);
    assert_eq!(code, 0, "pause: {out}");
    assert_eq!(net.paused(), Some(true));
    let writers = Writers::start(&net);
    let t0 = Instant::now();
    writers.wait_writes(p, t0, 3, Duration::from_secs(10));
    // The primary keeps its fence while paused (fails if it disarmed).
    let events = watchdog_events(&net.dirs[p].join("watchdog.log"));
    assert!(
        watchdog_reset_at(&events).is_some(),
        "the paused primary's watchdog is not armed: {events:?}"
    );

    let lease = net.leader_lease().unwrap();
    let pm_exit = ExitWatch::start(net.postmaster_pid(p).unwrap());
    let (cut_at, cut_ms) = (Instant::now(), monotonic_ms());
    net.cut(p, true, true);
    // Resume from a replica while the leader is cut. Fails if the guard
    // refused it (the leader's key and member key still exist).
    let (code, out) = net.cli(r, &["resume"]);
    let resumed_at = Instant::now();
    assert_eq!(code, 0, "resume from n{r} while n{p} is cut: {out}");
    assert_eq!(net.paused(), Some(false));

    let (expiry_lb, key_gone) = net.wait_lease_gone(&old_name, &lease);
    let new = writers.new_primary(p, cut_at, Duration::from_secs(30));
    writers.wait_writes(new, cut_at, 5, Duration::from_secs(10));
    let pm_gone = pm_exit.finish();
    let reset = hw.resets_of(p).first().copied();
    let acks = writers.finish();
    let (last_old, first_new) = no_two_writers(&acks, p, new, cut_at);
    eprintln!(
        "paused, cut n{p}, resumed from n{r} {:.2}s after the cut: old primary's last write at {:.2}s, \
         postmaster gone at {}, watchdog reset at {}; lease expiry (etcd) not before {:.2}s, key gone at {:.2}s; \
         n{new}'s first write at {:.2}s; n{p}: {}",
        secs(resumed_at, cut_at),
        secs(last_old, cut_at),
        pm_gone.map_or("never".into(), |t| format!("{:.2}s", secs(t, cut_at))),
        reset.map_or("never".into(), |t| format!("{:.2}s", secs(t, cut_at))),
        secs(expiry_lb, cut_at),
        secs(key_gone, cut_at),
        secs(first_new, cut_at),
        watchdog_after_cut(&net, p, cut_ms)
    );
    // The old leader fenced: its PostgreSQL stopped by the agent, or the
    // node reset by the emulated watchdog, before the lease could have
    // expired on etcd. Fails if neither happened, or too late.
    let fenced = fenced_at(pm_gone, reset);
    assert!(
        fenced < expiry_lb,
        "the old primary was fenced {:.3}s after the lease's earliest expiry",
        secs(fenced, expiry_lb)
    );
    // Fails if the old primary took a write once its lease could have
    // expired.
    assert!(
        last_old < expiry_lb,
        "the old primary's last write {:.3}s after the lease's earliest expiry",
        secs(last_old, expiry_lb)
    );

    net.heal(p);
    if !net.agent_running(p) {
        // The node "reboots".
        net.start_agent(p);
    }
    let p2 = net.healthy(Duration::from_secs(90));
    // Fails if the old leader took its role back (or no single primary).
    assert_eq!(p2, new, "after healing the new primary stays");
    assert_eq!(net.paused(), Some(false), "the cluster is paused again");
}

/// Holds ACCESS EXCLUSIVE on pg_authid in an open transaction on node i:
/// every new login waits for it (a backend looks its role up in pg_authid),
/// while established sessions go on writing — as a stuck catalog
/// maintenance (VACUUM FULL pg_authid, a migration's LOCK) does. The
/// agent's own connection is terminated under the lock, so its next probe
/// must reconnect and waits until it times out. `pg_ctl status`/`stop`
/// still work (files and signals).
struct LoginLock {
    release: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LoginLock {
    /// Returns the lock and how many agent connections were terminated.
    fn take(net: &Net, i: usize) -> (LoginLock, i64) {
        let conn = format!(
            "host={} port=5432 user=postgres dbname=postgres connect_timeout=2 application_name=login_lock",
            net.node_ip(i)
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = rt.block_on(async {
                let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(connection);
                client
                    .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_authid IN ACCESS EXCLUSIVE MODE")
                    .await
                    .map_err(|e| e.to_string())?;
                let n: i64 = client
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'leasedog'",
                        &[],
                    )
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                Ok::<_, String>((client, n))
            });
            match client {
                Ok((client, n)) => {
                    let _ = tx.send(Ok(n));
                    // The transaction stays open until released (or the
                    // server goes away); then the connection is dropped.
                    let _ = wait.recv();
                    drop(client);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        let n = rx.recv().unwrap().expect("lock pg_authid");
        (
            LoginLock {
                release,
                thread: Some(thread),
            },
            n,
        )
    }
}

impl Drop for LoginLock {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cut leader whose PostgreSQL stops answering its probes: every probe
/// after the cut waits for a login that cannot finish and times out, the
/// one at the fence's deadline included (its timeout is cut to the time
/// left, and `pg_ctl status` may get none). The agent must still stop
/// PostgreSQL before its lease expires on etcd. Measured on the etcd side:
/// a lower bound of the lease's expiry from `lease timetolive` (sent +
/// whole seconds left), and when the key vanished; on the node: the last
/// write acknowledged on a session opened before (it writes as long as
/// PostgreSQL accepts) and when the postmaster exited.
#[test]
fn a_cut_leader_with_hung_probes_stops_before_its_lease_expires() {
    if !can_run("a_cut_leader_with_hung_probes_stops_before_its_lease_expires") {
        return;
    }
    let net = Arc::new(Net::start());
    let hw = Hardware::start(&net);
    let p = net.healthy(Duration::from_secs(120));
    net.psql(p, "CREATE TABLE w (k bigint, node int, at timestamptz)")
        .unwrap();
    let old_name = format!("n{p}");
    let mut writers = Writers::start(&net);
    writers.add_session(&net, p);
    let t0 = Instant::now();
    writers.wait_writes(p, t0, 20, Duration::from_secs(10));
    let pm = net.postmaster_pid(p).unwrap();
    let lease = net.leader_lease().unwrap();
    let log_before = net.agent_log(p).len();

    let pm_exit = ExitWatch::start(pm);
    let (cut_at, cut_ms, cut_wall) = (Instant::now(), monotonic_ms(), std::time::SystemTime::now());
    net.cut(p, true, true);
    let (lock, terminated) = LoginLock::take(&net, p);
    let locked_at = Instant::now();
    // Fails if the agent had no connection to lose: its probes would not
    // have had to log in again.
    assert!(terminated >= 1, "no agent connection was terminated");

    let (expiry_lb, key_gone) = net.wait_lease_gone(&old_name, &lease);
    let new = writers.new_primary(p, cut_at, Duration::from_secs(30));
    writers.wait_writes(new, cut_at, 5, Duration::from_secs(10));
    let pm_gone = pm_exit.finish();
    let reset = hw.resets_of(p).first().copied();
    let acks = writers.finish();
    let (last_old, first_new) = no_two_writers(&acks, p, new, cut_at);
    let log = net.agent_log(p)[log_before..].to_string();
    let probe_timeouts = log
        .lines()
        .filter(|l| l.contains("probe: ") && l.contains("timed out"))
        .count();
    eprintln!(
        "cut n{p} and locked its logins at {:.2}s: old primary's last write at {:.2}s, postmaster gone at {}, \
         watchdog reset at {}; lease expiry (etcd) not before {:.2}s, key gone at {:.2}s; n{new}'s first write at {:.2}s; \
         {probe_timeouts} probe timeouts logged; n{p}: {}",
        secs(locked_at, cut_at),
        secs(last_old, cut_at),
        pm_gone.map_or("never".into(), |t| format!("{:.2}s", secs(t, cut_at))),
        reset.map_or("never".into(), |t| format!("{:.2}s", secs(t, cut_at))),
        secs(expiry_lb, cut_at),
        secs(key_gone, cut_at),
        secs(first_new, cut_at),
        watchdog_after_cut(&net, p, cut_ms)
    );
    // The old leader's log from the cut to its disarm, to read the
    // cycle that stopped PostgreSQL against the wall clock of the cut.
    eprintln!("the cut at {} UTC; n{p}'s log:", wall_clock(cut_wall));
    for l in log
        .lines()
        .take_while(|l| !l.contains("watchdog disarmed"))
        .take(60)
    {
        eprintln!("  {l}");
    }
    // Fails if the probes never timed out: the lock did not hold logins
    // back, and this test would not test what it says.
    assert!(probe_timeouts >= 1, "no probe timed out:\n{log}");
    // Fails if PostgreSQL neither stopped nor was reset.
    let fenced = fenced_at(pm_gone, reset);
    // Fails if the old primary accepted a write, or was still running as
    // one, once its lease could have expired on etcd.
    assert!(
        last_old < expiry_lb,
        "the old primary's last write {:.3}s after the lease's earliest expiry",
        secs(last_old, expiry_lb)
    );
    assert!(
        fenced < expiry_lb,
        "the old primary stopped {:.3}s after the lease's earliest expiry",
        secs(fenced, expiry_lb)
    );
    assert!(fenced < key_gone);

    drop(lock);
    net.heal(p);
    if !net.agent_running(p) {
        net.start_agent(p);
    }
    let p2 = net.healthy(Duration::from_secs(90));
    assert_eq!(p2, new, "after healing the new primary stays");
}
