//! What idle agents cost etcd: a real 3-node cluster at Patroni's default
//! timings keeps its gRPC streams (one watch and one lease keep-alive
//! stream per agent, for the agent's whole life) and none of them is ended
//! by etcd. Counted from etcd's own /metrics.

mod common;

use common::cluster::{Cluster, Opts, http_get, wait_for};
use common::etcd::EtcdServer;
use std::time::{Duration, Instant};

/// etcd's gRPC counters at one instant (Prometheus text of /metrics).
struct Metrics(Vec<(String, f64)>);

impl Metrics {
    fn of(e: &EtcdServer) -> Option<Metrics> {
        let addr = e.endpoint().trim_start_matches("http://").to_string();
        let body = http_get(&addr, "/metrics").ok()?;
        let text = String::from_utf8_lossy(&body);
        // The headers end at the first blank line.
        let (_, text) = text.split_once("\r\n\r\n")?;
        let lines: Vec<(String, f64)> = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_"))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        // A fresh etcd has counted its own started streams already: never empty.
        (!lines.is_empty()).then_some(Metrics(lines))
    }

    /// The sum of counter `name` over the series whose labels contain
    /// every one of `labels` (e.g. `grpc_method="Watch"`).
    fn sum(&self, name: &str, labels: &[&str]) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                k.split_once('{').is_some_and(|(n, _)| n == name)
                    && labels.iter().all(|l| k.contains(l))
            })
            .map(|(_, v)| *v)
            .sum::<f64>() as u64
    }

    fn started(&self, method: &str) -> u64 {
        self.sum(
            "grpc_server_started_total",
            &[&format!("grpc_method=\"{method}\"")],
        )
    }

    /// Streams or calls etcd ended with `code` (e.g. `Unavailable`: the
    /// connection under them went away).
    fn ended_with(&self, code: &str) -> u64 {
        self.sum(
            "grpc_server_handled_total",
            &[&format!("grpc_code=\"{code}\"")],
        )
    }

    fn renewals(&self) -> u64 {
        self.sum(
            "grpc_server_msg_received_total",
            &["grpc_method=\"LeaseKeepAlive\""],
        )
    }

    fn summary(&self) -> String {
        format!(
            "Watch streams started {}, LeaseKeepAlive streams started {}, ended Unavailable {}, ended Canceled {}, keep-alives {}",
            self.started("Watch"),
            self.started("LeaseKeepAlive"),
            self.ended_with("Unavailable"),
            self.ended_with("Canceled"),
            self.renewals()
        )
    }
}

/// An idle cluster at 30/10/10 keeps every etcd stream it opened. etcd
/// (gRPC's keep-alive enforcement, `--grpc-keepalive-min-time` 5 s) ends a
/// connection whose client pings too often between calls with GOAWAY
/// `too_many_pings`; the agent's watch and keep-alive streams then end
/// (`Unavailable`, `Canceled`) and are made again, one of each per cycle and
/// agent. A 10 s loop_wait leaves each connection idle long enough between
/// cycles for a 2 s ping to be refused.
#[test]
fn an_idle_cluster_keeps_its_etcd_streams() {
    let c = Cluster::start(
        3,
        Opts {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            safety_margin: 5,
            ..Opts::default()
        },
    );
    let agents = c.nodes.len() as u64;
    c.wait_healthy(Duration::from_secs(120));

    // Idle from here: nobody but the agents talks to etcd.
    let before = wait_for("etcd's metrics", Duration::from_secs(10), || {
        Metrics::of(&c.etcd)
    });
    eprintln!("healthy: {}", before.summary());
    // Three cycles of every agent; a broken stream fails the test at once.
    let window = Duration::from_secs(3 * c.opts.loop_wait + 2);
    let end = Instant::now() + window;
    let mut last = None;
    while Instant::now() < end {
        let now = wait_for("etcd's metrics", Duration::from_secs(10), || {
            Metrics::of(&c.etcd)
        });
        let remade = now.started("Watch") > before.started("Watch")
            || now.started("LeaseKeepAlive") > before.started("LeaseKeepAlive")
            || now.ended_with("Unavailable") > before.ended_with("Unavailable");
        assert!(
            !remade,
            "an idle agent's etcd streams ended and were made again: before {}; now {}",
            before.summary(),
            now.summary()
        );
        last = Some(now);
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = last.expect("at least one sample");
    eprintln!("after {window:?} idle: {}", after.summary());
    // The window saw the agents at work: every agent renewed at least twice.
    assert!(
        after.renewals() >= before.renewals() + 2 * agents,
        "the agents did not renew their leases while idle: before {}; after {}",
        before.summary(),
        after.summary()
    );
    // Over the cluster's whole life: one watch and one keep-alive stream per
    // agent, and no stream or call cut off by etcd.
    assert!(
        after.started("Watch") <= agents && after.started("LeaseKeepAlive") <= agents,
        "more streams than one of each per agent: {}",
        after.summary()
    );
    assert_eq!(
        after.ended_with("Unavailable"),
        0,
        "etcd ended streams or calls as Unavailable: {}",
        after.summary()
    );
}
