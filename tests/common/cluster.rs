//! A real leasedog cluster for tests: one etcd (see `etcd.rs`), N PostgreSQL
//! 15 instances and N agents, on free loopback ports, each agent running as
//! the `postgres` user from a copy of the binary that user can read. Every
//! process is killed by PID when the cluster is dropped, even on failure.

#![allow(dead_code)]

use super::etcd::EtcdServer;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Timing and fencing settings of a test cluster.
#[derive(Debug, Clone)]
pub struct Opts {
    pub ttl: u64,
    pub loop_wait: u64,
    pub retry_timeout: u64,
    pub safety_margin: u64,
    pub watchdog_mode: &'static str,
    /// Extra YAML appended to node i's config (by index), e.g. tags.
    pub extra: Vec<(usize, String)>,
    /// Configure every callback to append its arguments to `callbacks.log`.
    pub callbacks: bool,
    /// What etcd the agents use.
    pub etcd: EtcdSetup,
    /// YAML lines inserted under every node's `restapi:` section (indented
    /// by two spaces); `{certs}` becomes the directory of the test
    /// certificates (`etcd::make_certs`), made when it is named.
    pub restapi_extra: String,
}

/// Passwords the `TlsRbac` setup configures (trust authentication does not
/// check them; the agent must keep them secret all the same).
pub const SUPERUSER_SECRET: &str = "superuser-secret-5b1e";
pub const REPLICATION_SECRET: &str = "replication-secret-9c4d";

/// The etcd of a test cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EtcdSetup {
    /// One member, plain gRPC.
    #[default]
    Plain,
    /// One member, TLS with client certificates and RBAC on: the agents
    /// connect as user `leasedog`, whose role reads and writes the
    /// cluster's prefix only. PostgreSQL's replication connections are TLS
    /// only too (`hostssl`), verified by the replicas (`verify-full`).
    TlsRbac,
    /// `n` members, every agent given all of them.
    Members(usize),
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            ttl: 6,
            loop_wait: 1,
            retry_timeout: 2,
            safety_margin: 2,
            watchdog_mode: "automatic",
            extra: Vec::new(),
            callbacks: false,
            etcd: EtcdSetup::Plain,
            restapi_extra: String::new(),
        }
    }
}

/// The uid/gid of the `postgres` user, or None when we already are it.
fn postgres_ids() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let out = Command::new("id").args(["-u", "postgres"]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = Command::new("id").args(["-g", "postgres"]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some((uid, gid))
}

/// Gives `path` (recursively) to the postgres user, when running as root.
pub fn chown_to_postgres(path: &Path) {
    chown_r(path, postgres_ids());
}

fn chown_r(path: &Path, ids: Option<(u32, u32)>) {
    if let Some((u, g)) = ids {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{u}:{g}"))
            .arg(path)
            .status();
        assert!(st.is_ok_and(|s| s.success()), "chown {}", path.display());
    }
}

/// A bin_dir of links to PostgreSQL's programs, with a shell script in
/// place of `program`.
pub fn wrapped_bin_dir(dir: &Path, program: &str, script: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    for e in std::fs::read_dir(BIN_DIR).expect("read bin_dir") {
        let e = e.expect("entry");
        if e.file_name() != program {
            std::os::unix::fs::symlink(e.path(), dir.join(e.file_name())).expect("symlink");
        }
    }
    set_wrapper(dir, program, script);
}

/// Replaces the script that stands for `program` in a wrapped bin_dir.
pub fn set_wrapper(dir: &Path, program: &str, script: &str) {
    let tmp = dir.join(format!("{program}.new"));
    std::fs::write(&tmp, format!("#!/bin/sh\n{script}\n")).expect("write wrapper");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&tmp, dir.join(program)).expect("rename wrapper");
}

/// Points node i's config at another bin_dir (read at start or reload).
pub fn use_bin_dir(node: &Node, dir: &Path) {
    let cfg = std::fs::read_to_string(&node.config).expect("read config");
    let cfg = cfg.replace(
        &format!("bin_dir: {BIN_DIR}"),
        &format!("bin_dir: {}", dir.display()),
    );
    std::fs::write(&node.config, cfg).expect("write config");
}

/// A free TCP port on 127.0.0.1 for a server of a test, taken below the
/// kernel's ephemeral range (32768-60999): a port from that range (a bind
/// to port 0) can be the local end of any outgoing connection a moment
/// later (an agent's to etcd, a client's), and the server meant to listen
/// on it then cannot (seen once: a replica's PostgreSQL failing to start
/// for 90 s, "Is another postmaster already running on port ..."). Each
/// port is handed out once per test process, and only if it binds now.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let random = std::collections::hash_map::RandomState::new();
    for i in 0u64.. {
        let mut h = random.build_hasher();
        h.write_u64(i);
        let p = 20_000 + (h.finish() % 12_000) as u16;
        if !given.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            given.push(p);
            return p;
        }
    }
    unreachable!("ports 20000..32000 all taken")
}

/// Milliseconds of CLOCK_MONOTONIC, the clock the testing watchdog logs in.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The process exists and is not a zombie (a killed postmaster whose parent
/// does not reap it stays a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A testing watchdog's log: (monotonic ms, operation) lines; a line still
/// being written is skipped.
pub fn watchdog_events(path: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (ms, op) = l.split_once(' ')?;
            Some((ms.parse().ok()?, op.to_string()))
        })
        .collect()
}

/// When emulated hardware behind the testing watchdog would reset the node
/// (monotonic ms): the last `open` or `keepalive` plus the timeout read back
/// (`timeout N`), unless a `magic-close` came after it. A plain `close` (a
/// crashed agent) leaves it counting, as `nowayout` hardware does. None when
/// not armed.
pub fn watchdog_reset_at(events: &[(u64, String)]) -> Option<u64> {
    let (mut last_ping, mut timeout_ms) = (None, None);
    for (t, op) in events {
        match op.as_str() {
            "open" => {
                last_ping = Some(*t);
                timeout_ms = None;
            }
            "keepalive" => last_ping = last_ping.map(|_| *t),
            "magic-close" => last_ping = None,
            other => {
                if let Some(n) = other.strip_prefix("timeout ")
                    && let Ok(n) = n.parse::<u64>()
                {
                    timeout_ms = Some(n * 1000);
                }
            }
        }
    }
    Some(last_ping? + timeout_ms?)
}

/// Runs SQL through psql as `postgres` on the server listening on `sock`
/// (its socket directory) and `port`; Err with psql's stderr.
pub fn psql(sock: &Path, port: u16, sql: &str) -> Result<String, String> {
    psql_at(sock, port, sql, 2)
}

/// psql as `postgres` against `host` (a socket directory or an address),
/// giving up on connecting after `connect_timeout_s`.
pub fn psql_at(
    host: impl AsRef<std::ffi::OsStr>,
    port: u16,
    sql: &str,
    connect_timeout_s: u32,
) -> Result<String, String> {
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
        ])
        .arg("-h")
        .arg(host)
        .arg("-p")
        .arg(port.to_string())
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", connect_timeout_s.to_string())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The watchdog feeds (`keepalive`, monotonic ms) of `events` between
/// `from` and `to`, and the longest time the device went unfed in that
/// window: between two feeds, or from the last feed to `to`. u64::MAX when
/// there was no feed at all.
pub fn feeds_and_longest_gap(events: &[(u64, String)], from: u64, to: u64) -> (Vec<u64>, u64) {
    let feeds: Vec<u64> = events
        .iter()
        .filter(|(t, o)| o == "keepalive" && *t >= from && *t <= to)
        .map(|(t, _)| *t)
        .collect();
    let worst = match feeds.last() {
        None => u64::MAX,
        Some(last) => feeds
            .windows(2)
            .map(|w| w[1] - w[0])
            .chain(std::iter::once(to - last))
            .max()
            .unwrap_or(0),
    };
    (feeds, worst)
}

/// One HTTP/1.0 GET (the server closes the connection): the raw response.
pub fn http_get(addr: &str, path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())?;
    let mut v = Vec::new();
    s.read_to_end(&mut v)?;
    Ok(v)
}

/// Resident memory of a process in KiB (VmRSS in /proc/PID/status).
pub fn vm_rss_kib(pid: i32) -> Option<u64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    st.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub pg_port: u16,
    pub api_port: u16,
    pub watchdog_log: PathBuf,
    pub agent_log: PathBuf,
    pub agent: Option<Child>,
}

impl Node {
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// The postmaster's PID from postmaster.pid, if any.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    pub fn agent_pid(&self) -> Option<i32> {
        self.agent.as_ref().map(|c| c.id() as i32)
    }

    /// Runs SQL through psql on this node; Err with psql's stderr.
    pub fn sql(&self, sql: &str) -> Result<String, String> {
        psql(&self.socket_dir(), self.pg_port, sql)
    }

    /// Some(true) primary, Some(false) replica, None not answering.
    pub fn is_primary(&self) -> Option<bool> {
        match self.sql("SELECT pg_is_in_recovery()").ok()?.as_str() {
            "f" => Some(true),
            "t" => Some(false),
            _ => None,
        }
    }

    /// The testing watchdog's log: (monotonic ms, operation) lines.
    pub fn watchdog_events(&self) -> Vec<(u64, String)> {
        watchdog_events(&self.watchdog_log)
    }

    pub fn agent_log_text(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }
}

pub struct Cluster {
    pub etcd: EtcdServer,
    /// With `EtcdSetup::Members`: the members after the first (`etcd`).
    pub etcd_members: Vec<EtcdServer>,
    pub nodes: Vec<Node>,
    pub bin: PathBuf,
    pub scope: String,
    pub opts: Opts,
    ids: Option<(u32, u32)>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    /// Writes configs for `n` nodes and starts etcd (agents not started).
    pub fn new(n: usize, opts: Opts) -> Cluster {
        let ids = postgres_ids();
        let tmp = tempfile::Builder::new()
            .prefix("leasedog-test")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let bin = tmp.path().join("leasedog");
        std::fs::copy(env!("CARGO_BIN_EXE_leasedog"), &bin).expect("copy binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let scope = "testcluster".to_string();
        let certs = tmp.path().join("certs");
        let (etcd, etcd_members, etcd3) = match opts.etcd {
            EtcdSetup::Plain => {
                let e = EtcdServer::start();
                let y = format!("etcd3:\n  hosts: [\"{}\"]\n", e.endpoint());
                (e, Vec::new(), y)
            }
            EtcdSetup::TlsRbac => {
                std::fs::create_dir_all(&certs).expect("mkdir certs");
                super::etcd::make_certs(&certs);
                let mut e = EtcdServer::start_tls(&certs);
                e.enable_auth(&format!("/service/{scope}/"));
                let y = format!(
                    "etcd3:\n  hosts: [\"{}\"]\n  protocol: https\n  cacert: {c}/ca.pem\n  cert: {c}/client.pem\n  key: {c}/client.key\n  username: leasedog\n  password: leasedog-secret\n",
                    e.endpoint().trim_start_matches("https://"),
                    c = certs.display()
                );
                (e, Vec::new(), y)
            }
            EtcdSetup::Members(n) => {
                let mut m = EtcdServer::cluster(n);
                let hosts: Vec<String> =
                    m.iter().map(|e| format!("\"{}\"", e.endpoint())).collect();
                let y = format!("etcd3:\n  hosts: [{}]\n", hosts.join(", "));
                let first = m.remove(0);
                (first, m, y)
            }
        };
        if opts.restapi_extra.contains("{certs}") && !certs.join("ca.pem").exists() {
            std::fs::create_dir_all(&certs).expect("mkdir certs");
            super::etcd::make_certs(&certs);
        }
        let mut restapi_extra = opts
            .restapi_extra
            .replace("{certs}", &certs.display().to_string());
        if !restapi_extra.is_empty() && !restapi_extra.ends_with('\n') {
            restapi_extra.push('\n');
        }
        let mut nodes = Vec::new();
        for i in 0..n {
            let name = format!("node{}", i + 1);
            let dir = tmp.path().join(&name);
            std::fs::create_dir_all(dir.join("sock")).expect("mkdir");
            let node = Node {
                data_dir: dir.join("data"),
                config: dir.join("leasedog.yml"),
                watchdog_log: dir.join("watchdog.log"),
                agent_log: dir.join("agent.log"),
                pg_port: free_port(),
                api_port: free_port(),
                name,
                dir,
                agent: None,
            };
            let extra: String = opts
                .extra
                .iter()
                .filter(|(j, _)| *j == i)
                .map(|(_, y)| format!("{y}\n"))
                .collect();
            let yaml = format!(
                r#"scope: {scope}
name: {name}
{etcd3}ttl: {ttl}
loop_wait: {lw}
retry_timeout: {rt}
watchdog:
  mode: {mode}
  driver: testing
  device: {wd}
  safety_margin: {sm}
postgresql:
  data_dir: {data}
  bin_dir: {BIN_DIR}
  listen: 127.0.0.1:{port}
  connect_address: 127.0.0.1:{port}
  socket_dir: {sock}
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - {repl_hba} replication all 127.0.0.1/32 trust
  callbacks: {callbacks}
  parameters:
    shared_buffers: 16MB
    max_connections: 30
    fsync: "off"
{pg_tls}restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
{restapi_extra}control:
  socket: {ctl}
log:
  level: debug
{extra}"#,
                etcd3 = etcd3,
                restapi_extra = restapi_extra,
                // With TlsRbac, replication is TLS only and verified.
                repl_hba = if opts.etcd == EtcdSetup::TlsRbac {
                    "hostssl"
                } else {
                    "host"
                },
                pg_tls = if opts.etcd == EtcdSetup::TlsRbac {
                    format!(
                        "    ssl: \"on\"\n    ssl_cert_file: {c}/server.pem\n    ssl_key_file: {c}/server.key\n  authentication:\n    superuser:\n      username: postgres\n      password: {SUPERUSER_SECRET}\n    replication:\n      username: replicator\n      password: {REPLICATION_SECRET}\n      sslmode: verify-full\n      sslrootcert: {c}/ca.pem\n",
                        c = certs.display()
                    )
                } else {
                    String::new()
                },
                ttl = opts.ttl,
                lw = opts.loop_wait,
                rt = opts.retry_timeout,
                mode = opts.watchdog_mode,
                wd = node.watchdog_log.display(),
                sm = opts.safety_margin,
                data = node.data_dir.display(),
                port = node.pg_port,
                sock = node.socket_dir().display(),
                api = node.api_port,
                ctl = node.dir.join("leasedog.sock").display(),
                name = node.name,
                callbacks = if opts.callbacks {
                    let script = node.dir.join("cb.sh");
                    let log = node.dir.join("callbacks.log");
                    std::fs::write(
                        &script,
                        format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
                    )
                    .expect("callback script");
                    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                        .expect("chmod");
                    let s = script.display();
                    format!("{{on_start: {s}, on_stop: {s}, on_role_change: {s}}}")
                } else {
                    "{}".to_string()
                },
            );
            std::fs::write(&node.config, yaml).expect("write config");
            nodes.push(node);
        }
        chown_r(tmp.path(), ids);
        Cluster {
            etcd,
            etcd_members,
            nodes,
            bin,
            scope,
            opts,
            ids,
            _tmp: tmp,
        }
    }

    /// Starts etcd and all `n` agents.
    pub fn start(n: usize, opts: Opts) -> Cluster {
        let mut c = Cluster::new(n, opts);
        for i in 0..n {
            c.start_agent(i);
        }
        c
    }

    /// etcdctl against whichever etcd member answers (`Members` setups
    /// lose members on purpose).
    pub fn etcd_ctl_any(&self, args: &[&str]) -> Option<String> {
        std::iter::once(&self.etcd)
            .chain(self.etcd_members.iter())
            .find_map(|e| e.ctl(args).ok())
    }

    /// The test certificates of `EtcdSetup::TlsRbac` (see `etcd::make_certs`).
    pub fn certs(&self) -> PathBuf {
        self._tmp.path().join("certs")
    }

    /// A command running the binary as the postgres user.
    pub fn leasedog(&self, i: usize) -> Command {
        self.leasedog_with(&self.nodes[i].config)
    }

    /// A command running the binary as the postgres user with this file.
    pub fn leasedog_with(&self, config: &Path) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-c").arg(config);
        if let Some((u, g)) = self.ids {
            cmd.uid(u).gid(g).env("HOME", "/var/lib/postgresql");
        }
        cmd
    }

    pub fn start_agent(&mut self, i: usize) {
        self.start_agent_env(i, &[]);
    }

    /// Starts agent `i` with extra environment variables.
    pub fn start_agent_env(&mut self, i: usize, env: &[(&str, &str)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.nodes[i].agent_log)
            .expect("agent log");
        let err = log.try_clone().expect("clone log");
        let child = self
            .leasedog(i)
            .arg("run")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("spawn agent");
        self.nodes[i].agent = Some(child);
    }

    fn signal_agent(&self, i: usize, sig: i32) {
        if let Some(pid) = self.nodes[i].agent_pid() {
            // SAFETY: plain kill(2) on a child we spawned.
            unsafe { libc::kill(pid, sig) };
        }
    }

    pub fn kill_agent(&mut self, i: usize) {
        self.signal_agent(i, libc::SIGKILL);
        if let Some(mut c) = self.nodes[i].agent.take() {
            let _ = c.wait();
        }
    }

    pub fn freeze_agent(&self, i: usize) {
        self.signal_agent(i, libc::SIGSTOP);
    }

    pub fn thaw_agent(&self, i: usize) {
        self.signal_agent(i, libc::SIGCONT);
    }

    /// SIGTERM, then wait for the agent to exit; returns its exit code.
    pub fn stop_agent(&mut self, i: usize, timeout: Duration) -> Option<i32> {
        self.signal_agent(i, libc::SIGTERM);
        let mut child = self.nodes[i].agent.take()?;
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "agent {} did not exit within {timeout:?}",
                    self.nodes[i].name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill_postmaster(&self, i: usize) {
        if let Some(pid) = self.nodes[i].postmaster_pid() {
            // SAFETY: kill(2) of the postmaster found in postmaster.pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }

    /// Index of the node whose PostgreSQL accepts writes, when exactly one does.
    pub fn sole_primary(&self) -> Option<usize> {
        let p: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_primary() == Some(true))
            .collect();
        (p.len() == 1).then(|| p[0])
    }

    /// Waits for one primary and every other node a streaming replica.
    pub fn wait_healthy(&self, timeout: Duration) -> usize {
        wait_for("one primary and streaming replicas", timeout, || {
            let p = self.sole_primary()?;
            // Every other running node is a replica (a base backup's WAL
            // stream also shows as 'streaming' in pg_stat_replication).
            for (i, n) in self.nodes.iter().enumerate() {
                if i != p && n.agent.is_some() && n.is_primary() != Some(false) {
                    return None;
                }
            }
            let streaming: usize = self.nodes[p]
                .sql("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
                .ok()?
                .parse()
                .ok()?;
            (streaming + 1 == self.nodes.iter().filter(|n| n.agent.is_some()).count()).then_some(p)
        })
    }

    /// The leader key's value in etcd, through `leasedog list --json`.
    pub fn leader(&self) -> Option<String> {
        let out = self.leasedog(0).args(["list", "--json"]).output().ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["leader"].as_str().map(String::from)
    }

    /// Waits until etcd shows every other running member as a streaming
    /// replica (member keys are published once per cycle).
    pub fn wait_published_streaming(&self, timeout: Duration) {
        let want = self.nodes.iter().filter(|n| n.agent.is_some()).count() - 1;
        wait_for("members published as streaming", timeout, || {
            let out = self.leasedog(0).args(["list", "--json"]).output().ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let n = v["members"]
                .as_array()?
                .iter()
                .filter(|m| m["role"] == "Replica")
                .count();
            (n == want).then_some(())
        });
    }

    /// Waits until every other running member streams from the primary
    /// through its own slot (active): a replica that started without its
    /// slot (not yet listed in the leader's `status`) switches to it with a
    /// reload, which restarts its walreceiver; a switchover in that moment
    /// finds the candidate not streaming.
    pub fn wait_streaming_through_slots(&self, timeout: Duration) {
        let want = (self.nodes.iter().filter(|n| n.agent.is_some()).count() - 1).to_string();
        wait_for("replicas streaming through their slots", timeout, || {
            let p = self.sole_primary()?;
            let active = self.nodes[p]
                .sql("SELECT count(*) FROM pg_replication_slots WHERE active")
                .ok()?;
            (active == want).then_some(())
        });
    }

    pub fn dump_logs(&self) {
        for n in &self.nodes {
            eprintln!("===== {} agent log =====\n{}", n.name, n.agent_log_text());
            let pg_log = std::fs::read_to_string(n.dir.join("data.log")).unwrap_or_default();
            let tail: Vec<&str> = pg_log.lines().rev().take(15).collect();
            eprintln!("===== {} postgres log (tail) =====", n.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for i in 0..self.nodes.len() {
            self.thaw_agent(i);
            self.kill_agent(i);
        }
        for n in &self.nodes {
            if let Some(pid) = n.postmaster_pid() {
                // SAFETY: SIGQUIT asks the postmaster for an immediate shutdown.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
                let end = Instant::now() + Duration::from_secs(5);
                while alive(pid) && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(20));
                }
                // SAFETY: last resort.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A client that writes through faults: a thread inserting increasing keys
/// into table `w (k bigint primary key)` on whichever node accepts them,
/// remembering each acknowledged key and the node that acknowledged it.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Inserts that failed (psql error or timeout), on any node.
    failed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<(i64, usize)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Creates `w` on the primary `p` and starts writing.
    pub fn start(c: &Cluster, p: usize) -> Writer {
        c.nodes[p]
            .sql("CREATE TABLE IF NOT EXISTS w (k bigint PRIMARY KEY)")
            .expect("create w");
        let targets: Vec<(PathBuf, u16)> = c
            .nodes
            .iter()
            .map(|n| (n.socket_dir(), n.pg_port))
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let failed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, a, f) = (stop.clone(), acked.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            let mut k = 0i64;
            let mut at = p;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let (sock, port) = &targets[at];
                match psql_at(sock, *port, &format!("INSERT INTO w VALUES ({k})"), 1) {
                    Ok(_) => a.lock().expect("acked").push((k, at)),
                    Err(_) => {
                        f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        at = (at + 1) % targets.len();
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        Writer {
            stop,
            failed,
            acked,
            thread: Some(thread),
        }
    }

    /// Inserts that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Acknowledged keys so far, with the node that acknowledged each.
    pub fn acked(&self) -> Vec<(i64, usize)> {
        self.acked.lock().expect("acked").clone()
    }

    /// Waits until node `i` acknowledged `n` keys after key `after`.
    pub fn wait_acked_on(&self, i: usize, after: i64, n: usize, timeout: Duration) {
        wait_for(&format!("{n} writes on node {i}"), timeout, || {
            (self
                .acked()
                .iter()
                .filter(|(k, at)| *at == i && *k > after)
                .count()
                >= n)
                .then_some(())
        });
    }

    /// Stops writing; every acknowledged key.
    pub fn stop(mut self) -> Vec<(i64, usize)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Cluster {
    /// The old primary `old` is a streaming replica of `new` again and holds
    /// every key `new` acknowledged (what a failover may lose is what only
    /// the old primary acknowledged before it failed).
    pub fn wait_rejoined_with(
        &self,
        old: usize,
        new: usize,
        acked: &[(i64, usize)],
        timeout: Duration,
    ) {
        let keys: Vec<String> = acked
            .iter()
            .filter(|(_, at)| *at == new)
            .map(|(k, _)| k.to_string())
            .collect();
        assert!(!keys.is_empty(), "the new primary acknowledged no write");
        let sql = format!("SELECT count(*) FROM w WHERE k IN ({})", keys.join(","));
        wait_for(
            "the old primary streams every acknowledged write",
            timeout,
            || {
                let streaming = self.nodes[old]
                    .sql("SELECT status FROM pg_stat_wal_receiver")
                    .ok()?;
                let n: usize = self.nodes[old].sql(&sql).ok()?.parse().ok()?;
                (streaming == "streaming" && n == keys.len()).then_some(())
            },
        );
    }
}
