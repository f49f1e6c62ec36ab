//! What the last HA cycle saw and did, shared read-only with the HTTP API and
//! the control socket. The loop replaces it after every cycle; readers never
//! wait on the loop and the loop never waits on them.
//!
//! Each cycle's snapshot is published as an immutable [`Published`]: readers
//! take a reference to it (no copy of the cluster view per request), and the
//! JSON bodies the API and the control socket answer with are serialised at
//! most once per snapshot, on first use, so a flood of `/cluster` requests
//! costs one serialisation per cycle, not one per request.

use crate::cluster::{ClusterView, LocalPostgres, Role};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// One cycle's outcome.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub scope: String,
    pub name: String,
    pub local: LocalPostgres,
    /// None when etcd could not be read in that cycle.
    pub view: Option<ClusterView>,
    /// This node holds the leader key (confirmed in the last renewal).
    pub leader: bool,
    pub paused: bool,
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub watchdog_armed: bool,
    pub watchdog_last_feed: Option<Instant>,
    /// Time left on this node's lease, in ms (None without a lease).
    pub lease_left_ms: Option<u64>,
    pub cycle_at: Instant,
    pub cycle_ms: u64,
    /// `loop_wait + ttl` in ms: a cycle older than this means the loop is stuck.
    pub stale_after_ms: u64,
    pub summary: String,
}

/// This member's part in synchronous replication, from the last cycle's
/// read of the `sync` key (written by the current leader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRole {
    /// Named by the key, `synchronous_mode: on`.
    Sync,
    /// Named by the key, `synchronous_mode: quorum`.
    Quorum,
    /// Not named (or no key: asynchronous replication).
    Async,
    /// etcd or the key could not be read: unknown.
    Unknown,
}

impl Snapshot {
    pub fn sync_role(&self) -> SyncRole {
        let Some(v) = &self.view else {
            return SyncRole::Unknown;
        };
        if v.sync_unreadable {
            return SyncRole::Unknown;
        }
        let leader = v.leader.as_ref().map(|l| l.name.as_str());
        match v
            .sync
            .as_ref()
            .filter(|s| s.leader.as_deref() == leader && leader.is_some())
        {
            Some(s) if s.standbys().iter().any(|n| n == &self.name) => {
                if s.quorum.is_some() {
                    SyncRole::Quorum
                } else {
                    SyncRole::Sync
                }
            }
            _ => SyncRole::Async,
        }
    }

    /// Standbys the current leader's key names; None without such a key.
    pub fn sync_standbys(&self) -> Option<usize> {
        let v = self.view.as_ref()?;
        let leader = v.leader.as_ref()?;
        v.sync
            .as_ref()
            .filter(|s| s.leader.as_deref() == Some(leader.name.as_str()))
            .map(|s| s.standbys().len())
    }

    pub fn new(scope: &str, name: &str) -> Snapshot {
        Snapshot {
            scope: scope.into(),
            name: name.into(),
            local: LocalPostgres::default(),
            view: None,
            leader: false,
            paused: false,
            nofailover: false,
            noloadbalance: false,
            watchdog_armed: false,
            watchdog_last_feed: None,
            lease_left_ms: None,
            cycle_at: Instant::now(),
            cycle_ms: 0,
            stale_after_ms: 60_000,
            summary: "starting".into(),
        }
    }

    /// The role to report: the key holder with a writable PostgreSQL is the
    /// primary; a running server in recovery is a replica.
    pub fn role(&self) -> Role {
        self.local.role()
    }

    /// Bytes this replica is behind the leader's last published position.
    pub fn lag_bytes(&self) -> Option<u64> {
        let view = self.view.as_ref()?;
        let leader = view.leader.as_ref()?;
        let top = view
            .member(&leader.name)
            .and_then(|m| m.info.xlog_location)
            .or(view.status.as_ref().map(|s| s.optime))?;
        Some(top.saturating_sub(self.local.lsn?.0))
    }
}

/// A snapshot as published by the loop, with its serialised bodies.
#[derive(Debug)]
pub struct Published {
    pub snap: Snapshot,
    member_body: OnceLock<Arc<str>>,
    cluster_body: OnceLock<Arc<str>>,
}

impl Published {
    pub fn new(snap: Snapshot) -> Published {
        Published {
            snap,
            member_body: OnceLock::new(),
            cluster_body: OnceLock::new(),
        }
    }

    /// This member's JSON (`/patroni`, control `status`), made by `make` on
    /// the first call for this snapshot and shared afterwards.
    pub fn member_body(&self, make: impl FnOnce(&Snapshot) -> String) -> Arc<str> {
        self.member_body
            .get_or_init(|| make(&self.snap).into())
            .clone()
    }

    /// The cluster's JSON (`/cluster`), made at most once per snapshot.
    pub fn cluster_body(&self, make: impl FnOnce(&Snapshot) -> String) -> Arc<str> {
        self.cluster_body
            .get_or_init(|| make(&self.snap).into())
            .clone()
    }
}

/// The shared handle: the last published snapshot.
pub type Shared = Arc<Mutex<Arc<Published>>>;

/// A handle holding `snap` (the loop makes it once, at start).
pub fn shared(snap: Snapshot) -> Shared {
    Arc::new(Mutex::new(Arc::new(Published::new(snap))))
}

/// The last published snapshot, without copying it (a poisoned lock still
/// holds the last good value).
pub fn current(s: &Shared) -> Arc<Published> {
    match s.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// Reads a copy.
pub fn read(s: &Shared) -> Snapshot {
    current(s).snap.clone()
}

/// Publishes the next snapshot; its bodies are made afresh when asked for.
pub fn write(s: &Shared, snap: Snapshot) {
    let next = Arc::new(Published::new(snap));
    match s.lock() {
        Ok(mut g) => *g = next,
        Err(p) => *p.into_inner() = next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_made_once_per_snapshot() {
        let s = shared(Snapshot::new("demo", "n1"));
        let calls = std::cell::Cell::new(0);
        let make = |snap: &Snapshot| {
            calls.set(calls.get() + 1);
            format!("{} {}", snap.name, snap.summary)
        };
        let p = current(&s);
        let a = p.cluster_body(make);
        let b = current(&s).cluster_body(make);
        assert!(Arc::ptr_eq(&a, &b), "the second request reuses the body");
        assert_eq!(calls.get(), 1);
        assert_eq!(&*a, "n1 starting");
        let mut next = Snapshot::new("demo", "n1");
        next.summary = "leader".into();
        write(&s, next);
        assert_eq!(&*current(&s).cluster_body(make), "n1 leader");
        assert_eq!(calls.get(), 2);
        // The member body has its own cache.
        assert_eq!(&*current(&s).member_body(|_| "m".into()), "m");
        assert_eq!(&*current(&s).member_body(|_| "other".into()), "m");
        assert_eq!(read(&s).summary, "leader");
    }
}
