//! The etcd layer against a real etcd: leases, the leader transactions,
//! expiry, odd data, a frozen etcd, a dead endpoint, and the watch.

mod common;

use common::etcd::EtcdServer;
use leasedog::cluster::{MemberInfo, Role, Status};
use leasedog::dcs::{Dcs, DcsError, spawn_watch, spawn_watch_with_silence};
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(3);
const PREFIX: &str = "/service/t/";

fn dcs(e: &EtcdServer, name: &str, ttl: u64) -> Dcs {
    Dcs::new(vec![e.endpoint()], PREFIX.into(), name.into(), ttl)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn leader_race_confirm_release() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let (mut a, mut b) = (dcs(&e, "a", 10), dcs(&e, "b", 10));
        let v = a.read(T).await.unwrap();
        assert!(v.leader.is_none() && v.members.is_empty());

        let ka = a.keepalive(T).await.unwrap();
        assert!(ka.granted_new && ka.ttl_left > 0);
        let again = a.keepalive(T).await.unwrap();
        assert_eq!(again.lease_id, ka.lease_id);
        assert!(!again.granted_new);
        b.keepalive(T).await.unwrap();

        // Exactly one wins.
        let wa = a.acquire_leader(T).await.unwrap();
        let wb = b.acquire_leader(T).await.unwrap();
        assert!(wa && !wb);
        assert!(
            a.confirm_leader(
                Some(&Status {
                    optime: 7,
                    timeline: Some(1),
                    slots: Some([("b".to_string(), 5)].into()),
                    retain_slots: vec!["b".into()],
                    ..Default::default()
                }),
                T
            )
            .await
            .unwrap()
        );
        assert!(!b.confirm_leader(None, T).await.unwrap());

        // Patroni's layout: the plain name, bound to the winner's lease.
        let v = b.read(T).await.unwrap();
        let l = v.leader.unwrap();
        assert_eq!(l.name, "a");
        assert_eq!(l.lease, ka.lease_id);
        let st = v.status.unwrap();
        assert_eq!(st.optime, 7);
        // Patroni's slots layout, written in this term: after the key's creation.
        assert_eq!(st.slots, Some([("b".to_string(), 5)].into()));
        assert_eq!(st.retain_slots, vec!["b".to_string()]);
        assert!(st.mod_revision > l.create_revision, "{st:?} {l:?}");
        assert_eq!(
            e.ctl(&["get", "--print-value-only", "/service/t/leader"])
                .unwrap()
                .trim(),
            "a"
        );

        // Only the holder can release.
        assert!(!b.release_leader(T).await.unwrap());
        assert!(a.release_leader(T).await.unwrap());
        assert!(b.acquire_leader(T).await.unwrap());
    });
}

#[test]
fn expired_lease_removes_leader_and_member_keys() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let mut a = dcs(&e, "a", 2);
        a.keepalive(T).await.unwrap();
        let info = MemberInfo {
            role: Role::Primary,
            state: "running".into(),
            ..Default::default()
        };
        a.put_member(&info, T).await.unwrap();
        assert!(a.acquire_leader(T).await.unwrap());
        let v = a.read(T).await.unwrap();
        assert!(v.leader.is_some() && v.members.len() == 1);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let v = a.read(T).await.unwrap();
            if v.leader.is_none() && v.members.is_empty() {
                break;
            }
            assert!(Instant::now() < end, "keys outlived the lease");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The next keep-alive finds the lease gone and grants a new one.
        let ka = a.keepalive(T).await.unwrap();
        assert!(ka.granted_new);
    });
}

#[test]
fn take_over_a_key_left_by_a_previous_process() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let mut old = dcs(&e, "a", 30);
        old.keepalive(T).await.unwrap();
        assert!(old.acquire_leader(T).await.unwrap());
        let mut new = dcs(&e, "a", 30);
        let ka = new.keepalive(T).await.unwrap();
        let rev = new.read(T).await.unwrap().leader.unwrap().mod_revision;
        assert!(
            !new.take_over_leader(rev + 100, T).await.unwrap(),
            "a stale revision must fail"
        );
        assert!(new.take_over_leader(rev, T).await.unwrap());
        assert_eq!(
            new.read(T).await.unwrap().leader.unwrap().lease,
            ka.lease_id
        );
        assert!(new.confirm_leader(None, T).await.unwrap());
    });
}

#[test]
fn odd_data_is_skipped() {
    let e = EtcdServer::start();
    e.ctl(&["put", "/service/t/members/x", "{not json"])
        .unwrap();
    e.ctl(&[
        "put",
        "/service/t/members/y",
        r#"{"role":"replica","state":"running"}"#,
    ])
    .unwrap();
    e.ctl(&["put", "/service/t/status", "garbage"]).unwrap();
    rt().block_on(async {
        let v = dcs(&e, "a", 10).read(T).await.unwrap();
        assert_eq!(v.members.len(), 1);
        assert_eq!(v.members[0].name, "y");
        assert!(v.status.is_none());
    });
}

#[test]
fn frozen_etcd_times_out_and_recovers() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let mut a = dcs(&e, "a", 10);
        a.keepalive(T).await.unwrap();
        a.keepalive(T).await.unwrap();
        e.freeze();
        let budget = Duration::from_millis(700);
        for what in ["keepalive", "read"] {
            let t0 = Instant::now();
            let r = if what == "keepalive" {
                a.keepalive(budget).await.map(|_| ())
            } else {
                a.read(budget).await.map(|_| ())
            };
            let took = t0.elapsed();
            assert!(matches!(r, Err(DcsError::Timeout { .. })), "{what}: {r:?}");
            assert!(
                took < budget + Duration::from_millis(300),
                "{what} took {took:?}"
            );
        }
        e.thaw();
        let ka = a.keepalive(T).await.unwrap();
        assert!(!ka.granted_new, "the lease survived a short freeze");
    });
}

/// An etcd restart is not a lost lease: the agent keeps its lease (leases
/// survive restarts) and so its leader key, instead of granting a new lease
/// and stranding the key on the old one.
#[test]
fn a_restarted_etcd_keeps_the_lease_and_the_key() {
    let mut e = EtcdServer::start();
    rt().block_on(async {
        let mut a = dcs(&e, "a", 10);
        let first = a.keepalive(T).await.unwrap();
        a.keepalive(T).await.unwrap();
        assert!(a.acquire_leader(T).await.unwrap());
        e.restart();
        let end = Instant::now() + Duration::from_secs(10);
        let ka = loop {
            match a.keepalive(T).await {
                Ok(ka) => break ka,
                Err(err) => assert!(
                    Instant::now() < end,
                    "no keep-alive after the restart: {err}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(!ka.granted_new, "a new lease after an etcd restart");
        assert_eq!(ka.lease_id, first.lease_id);
        assert!(
            a.confirm_leader(None, T).await.unwrap(),
            "the leader key is still ours"
        );
    });
}

#[test]
fn a_dead_endpoint_costs_at_most_one_failure() {
    let e = EtcdServer::start();
    let dead = format!("http://127.0.0.1:{}", common::cluster::free_port());
    rt().block_on(async {
        let mut a = Dcs::new(vec![dead, e.endpoint()], PREFIX.into(), "a".into(), 10);
        let mut failures = 0;
        for _ in 0..6 {
            if a.read(Duration::from_secs(1)).await.is_err() {
                failures += 1;
            }
        }
        assert!(failures <= 1, "{failures} failures");
        assert!(a.keepalive(T).await.is_ok());
    });
}

#[test]
fn watch_wakes_on_leader_change() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let notify = Arc::new(tokio::sync::Notify::new());
        let _w = spawn_watch(
            vec![e.endpoint()],
            PREFIX.into(),
            notify.clone(),
            Default::default(),
            Default::default(),
        );
        let mut a = dcs(&e, "a", 10);
        a.keepalive(T).await.unwrap();
        // Give the watch time to be established: retry until it fires.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            a.acquire_leader(T).await.unwrap();
            a.release_leader(T).await.unwrap();
            if tokio::time::timeout(Duration::from_millis(500), notify.notified())
                .await
                .is_ok()
            {
                break;
            }
            assert!(Instant::now() < end, "the watch never woke us");
        }
    });
}

/// An unreadable `config` (garbage, or oversized) keeps the last good one:
/// a hostile or clumsy write never ends maintenance mode. Oversized values
/// are skipped; the rest of the cluster still reads. A leader key bound to
/// no lease is cleared only while it is the key observed.
#[test]
fn odd_config_and_oversized_values_and_unleased_leader() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let mut a = dcs(&e, "a", 10);
        let key = |k: &str| format!("{PREFIX}{k}");
        e.ctl(&["put", &key("config"), r#"{"pause":true}"#])
            .unwrap();
        assert!(a.read(T).await.unwrap().paused());
        e.ctl(&["put", &key("config"), "{not json"]).unwrap();
        assert!(a.read(T).await.unwrap().paused(), "garbage ended the pause");
        let big = format!(r#"{{"pause":false,"x":"{}"}}"#, "y".repeat(100_000));
        e.ctl(&["put", &key("config"), &big]).unwrap();
        e.ctl(&["put", &key("members/huge"), &"z".repeat(100_000)])
            .unwrap();
        e.ctl(&["put", &key("initialize"), "42"]).unwrap();
        let v = a.read(T).await.unwrap();
        assert!(v.paused(), "an oversized config ended the pause");
        assert!(v.member("huge").is_none());
        assert_eq!(v.initialize.as_deref(), Some("42"));

        e.ctl(&["put", &key("leader"), "ghost"]).unwrap();
        let v = a.read(T).await.unwrap();
        let l = v.leader.unwrap();
        assert_eq!((l.name.as_str(), l.lease), ("ghost", 0));
        // A changed key (another revision) is not cleared.
        e.ctl(&["put", &key("leader"), "ghost"]).unwrap();
        assert!(!a.clear_unleased_leader(l.mod_revision, T).await.unwrap());
        let l = a.read(T).await.unwrap().leader.unwrap();
        assert!(a.clear_unleased_leader(l.mod_revision, T).await.unwrap());
        assert!(a.read(T).await.unwrap().leader.is_none());
    });
}

/// A prefix holding more than one gRPC message (4 MiB) still reads: in
/// pages of one revision, the oversized values skipped, the real keys seen.
/// Before paging, every read failed and every member was blind.
#[test]
fn a_prefix_larger_than_a_grpc_message_still_reads() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let mut client = etcd_client::Client::connect([e.endpoint()], None)
            .await
            .unwrap();
        // 7 x 1.4 MiB: about 10 MiB, each just under etcd's request limit.
        let junk = "j".repeat(1_400_000);
        for i in 0..7 {
            client
                .put(format!("{PREFIX}members/junk{i}"), junk.clone(), None)
                .await
                .unwrap();
        }
        for i in 0..1500 {
            client
                .put(format!("{PREFIX}members/small{i:04}"), "{", None)
                .await
                .unwrap();
        }
        let mut b = dcs(&e, "b", 10);
        b.keepalive(T).await.unwrap();
        let info = MemberInfo {
            role: Role::Primary,
            state: "running".into(),
            ..Default::default()
        };
        b.put_member(&info, T).await.unwrap();
        client
            .put(format!("{PREFIX}initialize"), "42", None)
            .await
            .unwrap();
        assert!(b.acquire_leader(T).await.unwrap());

        let mut a = dcs(&e, "a", 10);
        let v = a.read(Duration::from_secs(10)).await.unwrap();
        assert!(v.member("b").is_some(), "the real member was not seen");
        assert_eq!(v.leader.as_ref().map(|l| l.name.as_str()), Some("b"));
        assert_eq!(v.initialize.as_deref(), Some("42"));
        assert!(v.member("junk0").is_none() && v.member("small0001").is_none());
        // And again, with the page size it learned.
        let again = a.read(Duration::from_secs(10)).await.unwrap();
        assert_eq!(again.revision, v.revision);
        assert!(again.member("b").is_some());
    });
}

/// How many gRPC streams of `method` etcd has started (its /metrics).
fn streams_started(e: &EtcdServer, method: &str) -> u64 {
    let addr = e.endpoint().trim_start_matches("http://").to_string();
    let body = common::cluster::http_get(&addr, "/metrics").unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_started_total")
                && l.contains(&format!("grpc_method=\"{method}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// An idle agent keeps its watch and keep-alive streams: etcd (by default)
/// closes a connection whose client pings more often than every 5 s
/// (`--grpc-keepalive-min-time`), and every stream on it ends and is made
/// again. 12 s of one cycle a second: at most one stream of each.
#[test]
fn an_idle_agent_keeps_its_streams() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let wake = Arc::new(tokio::sync::Notify::new());
        let _watch = spawn_watch(
            vec![e.endpoint()],
            PREFIX.into(),
            wake,
            Default::default(),
            Default::default(),
        );
        let mut a = dcs(&e, "a", 10);
        let end = Instant::now() + Duration::from_secs(12);
        while Instant::now() < end {
            a.keepalive(T).await.unwrap();
            a.read(T).await.unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let (watch, keepalive) = (
        streams_started(&e, "Watch"),
        streams_started(&e, "LeaseKeepAlive"),
    );
    eprintln!("streams started in 12 s: Watch {watch}, LeaseKeepAlive {keepalive}");
    assert!(watch <= 1 && keepalive <= 1, "streams were re-made");
}

/// A leader's confirmation writes `status` only when it changed: the same
/// status again is a comparison alone (no write, no watch event). It is
/// written again when its value changes, when someone else changed or
/// deleted the key, and in a new term (a status older than the leader key
/// does not count for `ha::stream_slot`).
#[test]
fn an_unchanged_status_is_not_written_again() {
    let e = EtcdServer::start();
    let status = |optime| Status {
        optime,
        timeline: Some(1),
        slots: Some([("b".to_string(), 5)].into()),
        ..Default::default()
    };
    rt().block_on(async {
        let mut a = dcs(&e, "a", 10);
        a.keepalive(T).await.unwrap();
        assert!(a.acquire_leader(T).await.unwrap());
        let rev = |v: &leasedog::cluster::ClusterView| v.status.as_ref().map(|s| s.mod_revision);

        a.read(T).await.unwrap();
        assert!(a.confirm_leader(Some(&status(7)), T).await.unwrap());
        let first = rev(&a.read(T).await.unwrap()).expect("status written");
        // Same status, a read between: not written again, still confirmed.
        for _ in 0..3 {
            assert!(a.confirm_leader(Some(&status(7)), T).await.unwrap());
            assert_eq!(rev(&a.read(T).await.unwrap()), Some(first));
        }
        // A new value is written.
        assert!(a.confirm_leader(Some(&status(8)), T).await.unwrap());
        let v = a.read(T).await.unwrap();
        let second = rev(&v).unwrap();
        assert!(second > first);
        assert_eq!(v.status.unwrap().optime, 8);

        // Deleted behind our back: written again after the next read.
        e.ctl(&["del", "/service/t/status"]).unwrap();
        assert_eq!(rev(&a.read(T).await.unwrap()), None);
        assert!(a.confirm_leader(Some(&status(8)), T).await.unwrap());
        let v = a.read(T).await.unwrap();
        assert_eq!(v.status.as_ref().map(|s| s.optime), Some(8));
        let third = rev(&v).unwrap();
        // Changed behind our back (same value, new revision): written again.
        let json = e
            .ctl(&["get", "--print-value-only", "/service/t/status"])
            .unwrap();
        e.ctl(&["put", "/service/t/status", json.trim()]).unwrap();
        let touched = rev(&a.read(T).await.unwrap()).unwrap();
        assert!(touched > third);
        assert!(a.confirm_leader(Some(&status(8)), T).await.unwrap());
        assert!(rev(&a.read(T).await.unwrap()).unwrap() > touched);

        // A new term: the key released and acquired again; the same status
        // is written after the new leader key.
        assert!(a.release_leader(T).await.unwrap());
        assert!(a.acquire_leader(T).await.unwrap());
        let v = a.read(T).await.unwrap();
        let created = v.leader.as_ref().unwrap().create_revision;
        assert!(rev(&v).unwrap() < created);
        assert!(a.confirm_leader(Some(&status(8)), T).await.unwrap());
        assert!(rev(&a.read(T).await.unwrap()).unwrap() > created);

        // The key gone: an unchanged status does not make it confirmed.
        assert!(a.confirm_leader(Some(&status(8)), T).await.unwrap());
        a.read(T).await.unwrap();
        e.ctl(&["del", "/service/t/leader"]).unwrap();
        assert!(!a.confirm_leader(Some(&status(8)), T).await.unwrap());
        assert!(!a.confirm_leader(None, T).await.unwrap());
        assert!(a.acquire_leader(T).await.unwrap());
        a.read(T).await.unwrap();

        // No read since our last write: written (the key was not seen).
        let after_term = rev(&a.read(T).await.unwrap()).unwrap();
        assert!(a.confirm_leader(Some(&status(9)), T).await.unwrap());
        assert!(a.confirm_leader(Some(&status(9)), T).await.unwrap());
        let v = a.read(T).await.unwrap();
        assert!(rev(&v).unwrap() >= after_term + 2, "two writes: {v:?}");
    });
}

/// Messages etcd received on gRPC `method` (its /metrics).
fn messages_received(e: &EtcdServer, method: &str) -> u64 {
    let addr = e.endpoint().trim_start_matches("http://").to_string();
    let body = common::cluster::http_get(&addr, "/metrics").unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .filter(|l| {
            l.starts_with("grpc_server_msg_received_total")
                && l.contains(&format!("grpc_method=\"{method}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A watch on a cluster that writes nothing (an idle PostgreSQL writes no
/// WAL for minutes, and its leader then publishes nothing) is not made
/// again: after a silence it asks etcd for its progress on the same stream,
/// and still wakes on the next change.
#[test]
fn a_silent_watch_is_probed_not_remade() {
    let e = EtcdServer::start();
    rt().block_on(async {
        let wake = Arc::new(tokio::sync::Notify::new());
        let silence = Duration::from_millis(500);
        let _watch = spawn_watch_with_silence(
            vec![e.endpoint()],
            PREFIX.into(),
            wake.clone(),
            Default::default(),
            Default::default(),
            silence,
        );
        // The watch stream is open (its create request arrived) ...
        let end = Instant::now() + Duration::from_secs(10);
        while messages_received(&e, "Watch") < 1 {
            assert!(Instant::now() < end, "the watch was not created");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // ... and, silent, it is probed: progress requests arrive on it.
        let end = Instant::now() + Duration::from_secs(10);
        while messages_received(&e, "Watch") < 4 {
            assert!(
                Instant::now() < end,
                "no progress requests on a silent watch"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            streams_started(&e, "Watch"),
            1,
            "a silent watch was made again"
        );
        // It still wakes the loop.
        e.ctl(&["put", "/service/t/leader", "x"]).unwrap();
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("the probed watch still wakes on a leader change");
        assert_eq!(streams_started(&e, "Watch"), 1);
    });
}

/// The watch keeps a copy of the cluster's keys that follows every put and
/// delete, and that the loop reads with no call to etcd; when the stream
/// ends (etcd killed) the copy is out of step (the loop then reads for
/// itself) until the watch is made again and has read the keys anew.
#[test]
fn the_watch_keeps_a_copy_in_step() {
    let mut e = EtcdServer::start();
    rt().block_on(async {
        let wake = Arc::new(tokio::sync::Notify::new());
        let cache: leasedog::dcs::SharedCache = Default::default();
        let _watch = spawn_watch(
            vec![e.endpoint()],
            PREFIX.into(),
            wake,
            Default::default(),
            cache.clone(),
        );
        let mut a = dcs(&e, "a", 10);
        let mut b = dcs(&e, "b", 10);
        b.use_cache(cache.clone());
        a.keepalive(T).await.unwrap();
        a.put_member(
            &MemberInfo {
                conn_url: "postgres://a:5432/postgres".into(),
                ..Default::default()
            },
            T,
        )
        .await
        .unwrap();
        assert!(a.acquire_leader(T).await.unwrap());
        let v = copy_shows(&mut b, "leader a", |v| {
            v.leader.as_ref().is_some_and(|l| l.name == "a")
        })
        .await;
        let fresh = b.read(T).await.unwrap();
        assert_eq!(
            v.leader, fresh.leader,
            "the copy's leader key differs from a read"
        );
        assert_eq!(v.members.len(), 1);
        assert_eq!(v.members[0].name, "a");
        // Reading the copy is no etcd call.
        let ranges = messages_received(&e, "Range");
        for _ in 0..20 {
            assert!(b.cached_view().is_some());
        }
        assert_eq!(
            messages_received(&e, "Range"),
            ranges,
            "cached_view called etcd"
        );
        assert!(a.release_leader(T).await.unwrap());
        copy_shows(&mut b, "the leader key gone", |v| v.leader.is_none()).await;

        e.kill();
        let end = Instant::now() + Duration::from_secs(10);
        while cache.lock().unwrap().synced() {
            assert!(
                Instant::now() < end,
                "the copy stayed in step with etcd dead"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(b.cached_view().is_none());
        e.restart();
        let mut a = dcs(&e, "a", 10);
        a.keepalive(T).await.unwrap();
        assert!(a.acquire_leader(T).await.unwrap());
        copy_shows(&mut b, "leader a after the restart", |v| {
            v.leader.as_ref().is_some_and(|l| l.name == "a")
        })
        .await;
    });
}

/// Polls the watch's copy until it shows `what`.
async fn copy_shows(
    b: &mut Dcs,
    what: &str,
    f: impl Fn(&leasedog::cluster::ClusterView) -> bool,
) -> leasedog::cluster::ClusterView {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = b.cached_view().filter(|v| f(v)) {
            return v;
        }
        assert!(Instant::now() < end, "the copy never showed {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
