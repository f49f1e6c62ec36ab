//! Network partitions with real processes (root only): etcd in one network
//! namespace, each node (agent + PostgreSQL) in its own, joined by a bridge
//! in the root namespace, where a writer client writes to every node that
//! accepts writes. nftables rules inside a node's namespace cut it from etcd
//! (both directions, or one).
//!
//! Asserted from the acknowledged writes: the old primary's last accepted
//! write comes before the new primary's first, and before the old leader key
//! disappeared from etcd; after healing there is one primary and the old one
//! follows. A replica cut from etcd changes nothing for the primary.
//! Namespaces, bridge and processes are removed even when the test fails.

mod common;

use common::cluster::{BIN_DIR, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Everything the test created, torn down in Drop.
struct Net {
    id: u32,
    children: Vec<Child>,
    dirs: Vec<std::path::PathBuf>,
    _tmp: tempfile::TempDir,
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

    fn setup() -> Net {
        let id = std::process::id() % 50_000;
        let tmp = tempfile::Builder::new()
            .prefix("leasedog-part")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let bin = tmp.path().join("leasedog");
        std::fs::copy(env!("CARGO_BIN_EXE_leasedog"), &bin).unwrap();
        let net = Net {
            id,
            children: Vec::new(),
            dirs: Vec::new(),
            _tmp: tmp,
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

    fn spawn(&mut self, ns: &str, args: &[&str], log: &std::path::Path) {
        let f = std::fs::File::create(log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    /// Cuts node i from etcd: requests (output), replies (input), or both.
    fn cut(&self, i: usize, requests: bool, replies: bool) {
        let ns = self.ns(&format!("n{i}"));
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
        let path = self._tmp.path().join(format!("cut{i}.nft"));
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
        let ns = self.ns(&format!("n{i}"));
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
        let out = Command::new(format!("{BIN_DIR}/psql"))
            .args([
                "-X",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-h",
            ])
            .arg(self.node_ip(i))
            .args(["-p", "5432", "-c", sql])
            .env("PGCONNECT_TIMEOUT", "1")
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }

    fn leader(&self) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &format!("http://{}:2379", self.ip(1)),
                "--command-timeout=1s",
            ])
            .args(["get", "--print-value-only", "/service/part/leader"])
            .output()
            .ok()?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!v.is_empty()).then_some(v)
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
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
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

/// Acknowledged writes: (node, instant).
type Acks = Arc<Mutex<Vec<(usize, Instant)>>>;

fn writer(net: Arc<Net>, stop: Arc<AtomicBool>, acks: Acks) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for i in 0..N {
                k += 1;
                let sql = format!("INSERT INTO w VALUES ({k}, {i}, clock_timestamp())");
                if net.psql(i, &sql).is_ok() {
                    acks.lock().unwrap().push((i, Instant::now()));
                }
            }
        }
    })
}

#[test]
fn partitions_from_etcd() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || sh(&["nft", "--version"]).is_err() {
        eprintln!(
            "SKIPPED: partitions_from_etcd needs root and nft (bash scripts/setup.sh installs nftables)"
        );
        return;
    }
    let mut net = Net::setup();
    let etcd_dir = net._tmp.path().join("etcd");
    let (e, c) = (net.ip(1), format!("http://{}:2379", net.ip(1)));
    let peer = format!("http://{e}:2380");
    let ens = net.ns("e");
    net.spawn(
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
        &net._tmp.path().join("etcd.log"),
    );
    let subnet = format!("{}/24", net.ip(0));
    for i in 0..N {
        let dir = net._tmp.path().join(format!("n{i}"));
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        let yaml = format!(
            "scope: part\nname: n{i}\netcd3:\n  hosts: [\"{e}:2379\"]\nttl: {TTL}\nloop_wait: 1\nretry_timeout: 2\n\
             watchdog:\n  mode: automatic\n  driver: testing\n  device: {wd}\n  safety_margin: 2\n\
             postgresql:\n  data_dir: {data}\n  bin_dir: {BIN_DIR}\n  listen: {ip}:5432\n  connect_address: {ip}:5432\n  socket_dir: {sock}\n\
             \x20 pg_hba:\n    - local all all trust\n    - host all all {subnet} trust\n    - host replication all {subnet} trust\n\
             \x20 parameters:\n    shared_buffers: 16MB\n    fsync: \"off\"\n\
             restapi:\n  listen: {ip}:8008\ncontrol:\n  socket: {ctl}\n",
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
        net._tmp.path().to_str().unwrap(),
    ]);
    for dir in &net.dirs {
        must(&["chown", "-R", "postgres:postgres", dir.to_str().unwrap()]);
    }
    for i in 0..N {
        let ns = net.ns(&format!("n{i}"));
        let cfg = net.dirs[i].join("leasedog.yml");
        let log = net.dirs[i].join("agent.log");
        let bin = net.bin.display().to_string();
        net.spawn(
            &ns,
            &[
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                &bin,
                "-c",
                cfg.to_str().unwrap(),
                "run",
            ],
            &log,
        );
    }
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
        let stop = Arc::new(AtomicBool::new(false));
        let acks: Acks = Arc::new(Mutex::new(Vec::new()));
        let w = writer(net.clone(), stop.clone(), acks.clone());
        let old_name = format!("n{leader}");
        wait_for("writes on the primary", Duration::from_secs(10), || {
            acks.lock()
                .unwrap()
                .iter()
                .any(|(i, _)| *i == leader)
                .then_some(())
        });
        let cut_at = Instant::now();
        net.cut(leader, requests, replies);
        // When the old key goes (its lease expired), as seen from etcd.
        let key_gone = wait_for("old leader key gone", Duration::from_secs(TTL * 3), || {
            (net.leader().as_deref() != Some(old_name.as_str())).then(Instant::now)
        });
        let new = wait_for("a new primary", Duration::from_secs(30), || {
            acks.lock()
                .unwrap()
                .iter()
                .find(|(i, t)| *i != leader && *t > cut_at)
                .map(|(i, _)| *i)
        });
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        w.join().unwrap();
        let acks = acks.lock().unwrap().clone();
        let last_old = acks
            .iter()
            .filter(|(i, _)| *i == leader)
            .map(|(_, t)| *t)
            .max()
            .unwrap();
        let first_new = acks
            .iter()
            .filter(|(i, t)| *i == new && *t > cut_at)
            .map(|(_, t)| *t)
            .min()
            .unwrap();
        eprintln!(
            "cut n{leader} (requests {requests}, replies {replies}): old primary's last write {:.2}s after the cut, \
             lease gone at {:.2}s, n{new}'s first write at {:.2}s",
            last_old.duration_since(cut_at).as_secs_f64(),
            key_gone.duration_since(cut_at).as_secs_f64(),
            first_new.duration_since(cut_at).as_secs_f64()
        );
        assert!(
            last_old < first_new,
            "the old primary accepted a write after the new one did"
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
