//! A real etcd for tests: free loopback ports, a temporary data directory,
//! polled until it answers, killed by PID when dropped (even on failure).

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdServer {
    child: Child,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

impl EtcdServer {
    /// Starts etcd and waits until it serves requests.
    pub fn start() -> EtcdServer {
        for _attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("leasedog-etcd")
                .tempdir()
                .expect("tempdir");
            let (client_port, peer_port) = (free_port(), free_port());
            let child = spawn(dir.path(), client_port, peer_port);
            let mut server = EtcdServer {
                child,
                client_port,
                peer_port,
                dir,
            };
            if server.wait_ready(Duration::from_secs(20)) {
                return server;
            }
            eprintln!("etcd did not come up; log:\n{}", server.log());
            let _ = server.child.kill();
            let _ = server.child.wait();
        }
        panic!("etcd failed to start three times");
    }

    /// Stops etcd (SIGTERM: it closes its streams) and starts it again on
    /// the same data and ports: clients see their streams end; leases
    /// survive.
    pub fn restart(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let _ = self.child.wait();
        self.child = spawn(self.dir.path(), self.client_port, self.peer_port);
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
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoint(),
                    "--dial-timeout=1s",
                    "--command-timeout=1s",
                ])
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

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
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

    /// Runs etcdctl against this server; stdout on success.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint(), "--command-timeout=2s"])
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

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &std::path::Path, client_port: u16, peer_port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .expect("etcd log");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let client = format!("http://127.0.0.1:{client_port}");
    Command::new("etcd")
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=test={peer}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn etcd (is etcd-server installed? bash scripts/setup.sh)")
}
