//! A real etcd for tests: free loopback ports, a temporary data directory,
//! polled until it answers, killed by PID when dropped (even on failure).

#![allow(dead_code)]

use super::cluster::free_port;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    child: Child,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    /// This member's name and the whole cluster's `--initial-cluster`.
    name: String,
    initial_cluster: String,
    /// Certificates (`Certs`) when clients must use TLS with a client
    /// certificate.
    tls: Option<std::path::PathBuf>,
    /// `user:password` etcdctl uses once RBAC is on.
    auth: Option<String>,
    /// The uid this member runs as (members of a cluster started as root
    /// each get their own, so nftables can tell their packets apart).
    uid: Option<u32>,
}

/// The uid of member `i` of a multi-member etcd started as root.
fn member_uid(i: usize) -> u32 {
    64_000 + i as u32
}

/// Runs `openssl args` in `dir`; panics with its stderr when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl (bash scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key, unencrypted (`openssl req` arguments).
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// Keys 0600 (PostgreSQL and libpq refuse others), the rest 0644; the
/// harness gives them to the postgres user.
fn key_modes(dir: &std::path::Path) {
    for f in std::fs::read_dir(dir).expect("certs").flatten() {
        use std::os::unix::fs::PermissionsExt;
        let key = f.path().extension().is_some_and(|e| e == "key");
        let mode = if key { 0o600 } else { 0o644 };
        let _ = std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode));
    }
}

/// Test certificates made with the `openssl` command: a CA, etcd's server
/// certificate for 127.0.0.1 (also its peer certificate), and a client
/// certificate (CN leasedog) — all in `dir` as ca.pem, server.pem/.key,
/// client.pem/.key, readable by the postgres user.
pub fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| openssl(dir, args);
    let ec = EC_KEY;
    let mut a = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=leasedog-test-ca",
    ];
    a.extend(ec);
    a.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    run(&a);
    for (who, eku) in [
        ("server", "serverAuth,clientAuth"),
        ("client", "clientAuth"),
    ] {
        let cn = if who == "server" {
            "/CN=etcd"
        } else {
            "/CN=leasedog"
        };
        let key = format!("{who}.key");
        let csr = format!("{who}.csr");
        let pem = format!("{who}.pem");
        let ext = format!("{who}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={eku}\n"),
        )
        .expect("ext file");
        let mut a = vec!["req", "-subj", cn];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &csr]);
        run(&a);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ]);
    }
    key_modes(dir);
}

/// Client certificates etcd must refuse, beside `make_certs`' files in
/// `dir`: `other-client.pem/.key` from another CA, and `expired.pem` (key
/// `client.key`) from the right CA but valid only in 2020.
pub fn make_bad_client_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| openssl(dir, args);
    let ec = EC_KEY;
    let mut a = vec!["req", "-x509", "-days", "2", "-subj", "/CN=another-ca"];
    a.extend(ec);
    a.extend(["-keyout", "other-ca.key", "-out", "other-ca.pem"]);
    run(&a);
    let mut a = vec!["req", "-subj", "/CN=leasedog"];
    a.extend(ec);
    a.extend(["-keyout", "other-client.key", "-out", "other-client.csr"]);
    run(&a);
    run(&[
        "x509",
        "-req",
        "-in",
        "other-client.csr",
        "-CA",
        "other-ca.pem",
        "-CAkey",
        "other-ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "client.ext",
        "-out",
        "other-client.pem",
    ]);
    // `openssl ca` can back-date; `x509 -req` cannot.
    std::fs::write(dir.join("index.txt"), "").expect("index");
    std::fs::write(dir.join("serial"), "1000\n").expect("serial");
    std::fs::write(
        dir.join("ca.cnf"),
        "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nserial = serial\nnew_certs_dir = .\ndefault_md = sha256\npolicy = p\nx509_extensions = ext\n[p]\ncommonName = supplied\n[ext]\nextendedKeyUsage = clientAuth\nsubjectAltName = IP:127.0.0.1\n",
    )
    .expect("ca.cnf");
    run(&[
        "req",
        "-new",
        "-key",
        "client.key",
        "-subj",
        "/CN=leasedog",
        "-out",
        "expired.csr",
    ]);
    run(&[
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-cert",
        "ca.pem",
        "-keyfile",
        "ca.key",
        "-in",
        "expired.csr",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200102000000Z",
        "-notext",
        "-out",
        "expired.pem",
    ]);
    key_modes(dir);
}

impl EtcdServer {
    /// Starts etcd and waits until it serves requests.
    pub fn start() -> EtcdServer {
        Self::start_with(None)
    }

    /// Starts etcd serving clients over TLS only, requiring a client
    /// certificate signed by the CA in `certs` (see `make_certs`).
    pub fn start_tls(certs: &std::path::Path) -> EtcdServer {
        Self::start_with(Some(certs.to_path_buf()))
    }

    fn start_with(tls: Option<std::path::PathBuf>) -> EtcdServer {
        for _attempt in 0..3 {
            let mut m = Self::start_members(1, tls.clone());
            let mut server = m.remove(0);
            if server.wait_ready(Duration::from_secs(20)) {
                return server;
            }
            eprintln!("etcd did not come up; log:\n{}", server.log());
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!("etcd failed to start three times");
    }

    /// A cluster of `n` etcd members on loopback, each its own process
    /// (plain: `tls` None), all serving once this returns.
    pub fn cluster(n: usize) -> Vec<EtcdServer> {
        let mut members = Self::start_members(n, None);
        for m in &mut members {
            assert!(
                m.wait_ready(Duration::from_secs(30)),
                "etcd member {} did not come up:\n{}",
                m.name,
                m.log()
            );
        }
        members
    }

    fn start_members(n: usize, tls: Option<std::path::PathBuf>) -> Vec<EtcdServer> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        ports
            .into_iter()
            .enumerate()
            .map(|(i, (client_port, peer_port))| {
                let dir = tempfile::Builder::new()
                    .prefix("leasedog-etcd")
                    .tempdir()
                    .expect("tempdir");
                let name = format!("m{i}");
                // SAFETY: geteuid has no preconditions.
                let uid = (n > 1 && unsafe { libc::geteuid() } == 0).then(|| member_uid(i));
                if let Some(u) = uid {
                    let p = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes())
                        .expect("path");
                    // SAFETY: chown(2) on our own temporary directory.
                    unsafe { libc::chown(p.as_ptr(), u, u) };
                }
                let child = spawn(
                    dir.path(),
                    &name,
                    &initial_cluster,
                    client_port,
                    peer_port,
                    tls.as_deref(),
                    uid,
                );
                EtcdServer {
                    child,
                    client_port,
                    peer_port,
                    dir,
                    name,
                    initial_cluster: initial_cluster.clone(),
                    tls: tls.clone(),
                    auth: None,
                    uid,
                }
            })
            .collect()
    }

    /// Turns RBAC on: a root user, and a user `leasedog` (password
    /// `leasedog-secret`) whose role may read and write `prefix` only.
    /// etcdctl then runs as root.
    pub fn enable_auth(&mut self, prefix: &str) {
        for args in [
            &["user", "add", "root:root-secret"][..],
            &["role", "add", "leasedog"],
            &[
                "role",
                "grant-permission",
                "leasedog",
                "--prefix=true",
                "readwrite",
                prefix,
            ],
            &["user", "add", "leasedog:leasedog-secret"],
            &["user", "grant-role", "leasedog", "leasedog"],
            &["auth", "enable"],
        ] {
            self.ctl(args)
                .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"));
        }
        self.auth = Some("root:root-secret".into());
    }

    /// Cuts this member from the other members (nftables on loopback: its
    /// own packets to their peer ports, by its uid, and anything to its
    /// peer port are dropped) while clients still reach it: a member in the
    /// minority of a partition, which cannot serve linearizable reads or
    /// leases. None when this member has no uid of its own (not root).
    pub fn isolate(&self, others: &[u16]) -> Option<()> {
        let uid = self.uid?;
        let ports = others
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let rules = format!(
            "table inet leasedog_iso_{n} {{\n  chain out {{ type filter hook output priority 0; meta skuid {uid} tcp dport {{ {ports} }} drop; }}\n  chain in {{ type filter hook input priority 0; tcp dport {own} drop; }}\n}}\n",
            n = self.name,
            own = self.peer_port
        );
        let path = self.dir.path().join("isolate.nft");
        std::fs::write(&path, rules).expect("write nft rules");
        let out = Command::new("nft")
            .arg("-f")
            .arg(&path)
            .output()
            .expect("nft (bash scripts/setup.sh installs nftables)");
        assert!(
            out.status.success(),
            "nft: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(())
    }

    /// Undoes `isolate`.
    pub fn heal(&self) {
        let _ = Command::new("nft")
            .args([
                "delete",
                "table",
                "inet",
                &format!("leasedog_iso_{}", self.name),
            ])
            .output();
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// Kills this member (SIGKILL): its clients see connections refused.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops etcd (SIGTERM: it closes its streams) and starts it again on
    /// the same data and ports: clients see their streams end; leases
    /// survive.
    pub fn restart(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let _ = self.child.wait();
        self.child = spawn(
            self.dir.path(),
            &self.name,
            &self.initial_cluster,
            self.client_port,
            self.peer_port,
            self.tls.as_deref(),
            self.uid,
        );
        assert!(
            self.wait_ready(Duration::from_secs(20)),
            "etcd did not come back:\n{}",
            self.log()
        );
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let ok = self
                .etcdctl()
                .args(["--dial-timeout=1s", "--command-timeout=1s"])
                .args(["put", "/leasedog-test-ready", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS)
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// etcdctl for this member, with its certificates and user.
    fn etcdctl(&self) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint()]);
        if let Some(d) = &self.tls {
            c.arg(format!("--cacert={}", d.join("ca.pem").display()))
                .arg(format!("--cert={}", d.join("client.pem").display()))
                .arg(format!("--key={}", d.join("client.key").display()));
        }
        if let Some(a) = &self.auth {
            c.arg(format!("--user={a}"));
        }
        c
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// SIGSTOP: etcd hangs, connections stay open.
    /// SIGSTOP, then waits until every thread of etcd has stopped: the
    /// signal takes effect asynchronously, and a thread still running could
    /// answer one more request.
    pub fn freeze(&self) {
        let pid = self.pid();
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        let all_stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|st| {
                    // The state follows the parenthesised command name.
                    st.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                })
            })
        };
        let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !all_stopped() {
            assert!(
                std::time::Instant::now() < end,
                "etcd {pid} did not stop within 5 s of SIGSTOP"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn thaw(&self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }

    /// The lease `key` is bound to (0: none); None when it is absent or
    /// etcd did not answer.
    pub fn key_lease(&self, key: &str) -> Option<i64> {
        lease_of_get_json(&self.ctl(&["get", "-w", "json", key]).ok()?)
    }

    /// The leases of the keys under `prefix`, one per key.
    pub fn leases_under(&self, prefix: &str) -> Option<Vec<i64>> {
        let out = self.ctl(&["get", "--prefix", "-w", "json", prefix]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        match v["kvs"].as_array() {
            Some(kvs) => kvs.iter().map(|kv| kv["lease"].as_i64()).collect(),
            None => Some(Vec::new()),
        }
    }

    /// `lease timetolive` of `lease`: see `time_to_live_json`.
    pub fn lease_ttl(&self, lease: i64) -> Option<(i64, i64)> {
        let out = self
            .ctl(&["lease", "timetolive", &format!("{lease:x}"), "-w", "json"])
            .ok()?;
        time_to_live_json(&out)
    }

    /// Runs etcdctl against this server; stdout on success.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = self
            .etcdctl()
            .arg("--command-timeout=2s")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).to_string())
        }
    }
}

/// The lease of the first key in `etcdctl get -w json` output (0: none).
pub fn lease_of_get_json(out: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(out).ok()?;
    v["kvs"][0]["lease"].as_i64()
}

/// `etcdctl lease timetolive -w json`: (whole seconds left, -1 once the
/// lease expired; the TTL it was granted). etcd truncates what is left to
/// whole seconds (`int64(Remaining().Seconds())`): the expiry lies in
/// [answer + ttl s, answer + ttl s + 1 s).
pub fn time_to_live_json(out: &str) -> Option<(i64, i64)> {
    let v: serde_json::Value = serde_json::from_str(out).ok()?;
    Some((v["ttl"].as_i64()?, v["granted-ttl"].as_i64()?))
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if self.uid.is_some() {
            self.heal();
        }
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(
    dir: &std::path::Path,
    name: &str,
    initial_cluster: &str,
    client_port: u16,
    peer_port: u16,
    tls: Option<&std::path::Path>,
    uid: Option<u32>,
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .expect("etcd log");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://127.0.0.1:{client_port}");
    let mut cmd = Command::new("etcd");
    if let Some(u) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(u).gid(u);
    }
    if let Some(d) = tls {
        cmd.arg(format!("--cert-file={}", d.join("server.pem").display()))
            .arg(format!("--key-file={}", d.join("server.key").display()))
            .arg(format!("--trusted-ca-file={}", d.join("ca.pem").display()))
            .arg("--client-cert-auth");
    }
    cmd.arg(format!("--name={name}"))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={initial_cluster}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn etcd (is etcd-server installed? bash scripts/setup.sh)")
}
