//! What the last HA cycle saw and did, shared read-only with the HTTP API and
//! the control socket. The loop replaces it after every cycle; readers never
//! wait on the loop and the loop never waits on them.

use crate::cluster::{ClusterView, LocalPostgres, Role};
use std::sync::{Arc, Mutex};
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

impl Snapshot {
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

/// The shared handle.
pub type Shared = Arc<Mutex<Snapshot>>;

/// Reads a copy (a poisoned lock still holds the last good value).
pub fn read(s: &Shared) -> Snapshot {
    match s.lock() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

pub fn write(s: &Shared, snap: Snapshot) {
    match s.lock() {
        Ok(mut g) => *g = snap,
        Err(p) => *p.into_inner() = snap,
    }
}
