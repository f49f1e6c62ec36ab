//! The decision core: a pure function from what this node observed to what it
//! must do, plus the timing rules of the safety argument (DESIGN §1).
//!
//! Like raft-rs's `Ready`, [`decide`] performs no I/O, reads no clock and
//! never awaits: the agent (and the simulator in `tests/`) hand it a
//! snapshot and execute the returned [`Action`]s in order, stopping at the
//! first one that fails. Everything that decides *when* the watchdog may be
//! fed or PostgreSQL must stop lives here too, so the simulator checks the
//! very rules the agent runs.

use crate::cluster::{
    ClusterView, DataDir, LocalPostgres, Lsn, Member, Millis, Role, Status, conn_host_port,
    slot_name,
};
use crate::config::{Config, WatchdogMode};
use crate::sync::{InForce, KeySet, Names, Step, SyncConfig};

/// The fixed part of the slack the feed rule keeps between the watchdog
/// deadline and the lease expiry: driver rounding and scheduling, in ms.
pub const SLACK_FIXED_MS: u64 = 500;

/// How much longer than requested a watchdog may run, in percent of its
/// timeout: an i6300esb counts 1,024 ticks of a nominal 1 kHz clock per
/// requested second (2.4 % long) while reading back the requested value
/// (QEMU's emulation: 0.7 %, measured by `scripts/vm-systemd-test.sh`).
/// Together with clock drift
/// between this node and etcd (well under 0.1 %), this is the rate part of
/// the slack.
pub const WATCHDOG_RATE_PCT: u64 = 3;

/// How soon a node that is waiting for its peers' fresh positions looks again.
pub const RECHECK_MS: u64 = 200;

/// The settings the core needs, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    pub name: String,
    pub ttl_ms: u64,
    pub loop_wait_ms: u64,
    pub retry_timeout_ms: u64,
    pub safety_margin_ms: u64,
    pub maximum_lag_on_failover: u64,
    pub nofailover: bool,
    pub watchdog_mode: WatchdogMode,
    /// `postgresql.use_slots`: member replication slots.
    pub use_slots: bool,
    /// `postgresql.use_pg_rewind` (the `config` key's; on without it): a
    /// former primary is rewound before it follows, and a replica left on
    /// an older timeline is rewound. Off: neither; such a replica waits
    /// for `leasedog reinit`.
    pub use_pg_rewind: bool,
    /// `synchronous_mode` and its companions.
    pub sync: SyncConfig,
    /// `primary_start_timeout`: how long a leader whose PostgreSQL died
    /// tries to start it in place before it releases the key.
    pub primary_start_timeout_ms: u64,
}

impl HaConfig {
    pub fn from_config(c: &Config) -> HaConfig {
        HaConfig {
            name: c.name.clone(),
            ttl_ms: c.ttl * 1000,
            loop_wait_ms: c.loop_wait * 1000,
            retry_timeout_ms: c.retry_timeout * 1000,
            safety_margin_ms: c.watchdog.safety_margin * 1000,
            maximum_lag_on_failover: c.maximum_lag_on_failover,
            nofailover: c.tags.nofailover,
            watchdog_mode: c.watchdog.mode,
            use_slots: c.postgresql.use_slots,
            use_pg_rewind: true,
            sync: SyncConfig {
                mode: c.synchronous_mode,
                strict: c.synchronous_mode_strict,
                node_count: c.synchronous_node_count as usize,
                max_lag: u64::try_from(c.maximum_lag_on_syncnode).ok(),
                nosync: c.tags.nosync,
            },
            primary_start_timeout_ms: c.primary_start_timeout * 1000,
        }
    }

    /// The watchdog timeout to request: `ttl - safety_margin`, in seconds.
    pub fn watchdog_timeout_secs(&self) -> u32 {
        (self.ttl_ms.saturating_sub(self.safety_margin_ms) / 1000) as u32
    }

    /// Time allowed to stop PostgreSQL (fast, then immediate) before the
    /// earlier of the lease and watchdog deadlines.
    pub fn stop_budget_ms(&self) -> u64 {
        (self.retry_timeout_ms / 2).max(1000)
    }

    /// How long before its stop deadline a leader's cycle begins: half the
    /// window between a feed (or renewal) and the stop deadline, at most
    /// retry_timeout. At ttl 4 / safety_margin 2 the window is 1 s, so the
    /// leader cycles every half second; at 30/10/10/5 it is 20 s and
    /// loop_wait comes first.
    pub fn cycle_lead_ms(&self) -> u64 {
        let fence_ms = if self.watchdog_mode == WatchdogMode::Off {
            self.ttl_ms
        } else {
            (self.watchdog_timeout_secs() as u64 * 1000).min(self.ttl_ms)
        };
        (fence_ms.saturating_sub(self.stop_budget_ms()) / 2).min(self.retry_timeout_ms)
    }

    /// The slack of the feed rule: a fixed part plus a part that scales with
    /// the watchdog timeout, because hardware that runs `WATCHDOG_RATE_PCT`
    /// long overshoots a 25 s timeout by 0.75 s but a 4 s one by 0.12 s.
    pub fn feed_slack_ms(&self) -> u64 {
        let wd_ms = self.watchdog_timeout_secs() as u64 * 1000;
        SLACK_FIXED_MS + wd_ms * WATCHDOG_RATE_PCT / 100
    }

    /// The drift check of the safety argument: a feed allowed right after a
    /// renewal must leave room for the slack, or the watchdog could outlast
    /// the lease. Err names the values.
    pub fn check_drift(&self) -> Result<(), String> {
        let slack = self.feed_slack_ms();
        if self.safety_margin_ms <= slack {
            return Err(format!(
                "safety_margin ({} ms) must exceed the feed slack {} ms = {SLACK_FIXED_MS} ms + {WATCHDOG_RATE_PCT}% of the watchdog timeout ttl - safety_margin = {} s (watchdogs may run that much long): raise safety_margin or lower ttl",
                self.safety_margin_ms,
                slack,
                self.watchdog_timeout_secs()
            ));
        }
        Ok(())
    }
}

/// How a stop budget of `budget_ms` is shared out: (`pg_ctl status`, fast
/// shutdown, immediate shutdown); the rest, a tenth, is left for the final
/// `pg_ctl status` that confirms the server stopped. Every step from "must
/// stop" to "known stopped" fits in the budget.
pub fn stop_split_ms(budget_ms: u64) -> (u64, u64, u64) {
    (budget_ms / 10, budget_ms * 55 / 100, budget_ms * 25 / 100)
}

/// What the agent remembers between cycles, as the core sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeState {
    /// This agent's etcd lease, once granted.
    pub lease_id: Option<i64>,
    /// The TTL etcd granted that lease. A lease keeps the TTL it was
    /// granted with: a change of `ttl` takes a new lease (a replica's next
    /// renewal, a leader's `MoveLease`), and until then the fence counts
    /// with the smaller of the two (`fence_ttl_ms`).
    pub lease_ttl_ms: Option<u64>,
    /// A move of the leader key to a new lease ended without an answer: the
    /// key may be on that lease, which nobody renews, and so may be gone
    /// from this instant (its grant's send time plus its TTL). The fence
    /// counts with it until a later move succeeds (its txn compares the
    /// key's revision, which the lost one's would no longer match) or a new
    /// term begins.
    pub move_bound: Option<Millis>,
    /// Send instant of the last keep-alive that etcd answered with TTL > 0.
    pub last_renewal: Option<Millis>,
    /// The last leader confirmation (or acquisition) succeeded, and nothing
    /// since said otherwise.
    pub leader_confirmed: bool,
    /// Send instant of the last confirm, acquire or take-over txn that
    /// found the leader key ours. A renewed lease alone does not prove the
    /// key is still bound to it (a key naming a vanished member can be
    /// replaced, see `orphan_leader`): a leader's deadlines run from the
    /// earlier of this and `last_renewal`.
    pub last_confirmed: Option<Millis>,
    /// A leader key on a live lease naming no member: its mod revision and
    /// since when this node has seen it so. Past `orphan_grace_ms` it is
    /// replaced by a short-lived placeholder (never deleted: see
    /// `Action::ReplaceOrphanLeader`).
    pub orphan_leader: Option<(i64, Millis)>,
    /// The watchdog device is open and counting.
    pub watchdog_armed: bool,
    /// When the armed watchdog fires unless fed: last feed + read-back timeout.
    pub watchdog_deadline: Option<Millis>,
    /// The armed watchdog's timeout as read back, in seconds.
    pub watchdog_timeout_secs: Option<u32>,
    /// The last attempt to arm failed.
    pub watchdog_arm_failed: bool,
    /// The cluster was paused at the last successful read. Never used for a
    /// safety decision: a pause can end at any moment, from any node.
    pub paused: bool,
    /// Since when PostgreSQL's state has been unknown (probe failed and not
    /// confirmed stopped).
    pub unknown_since: Option<Millis>,
    /// Since when this replica has not streamed while the leader is on a
    /// later timeline (it may have diverged and need a rewind).
    pub stalled_since: Option<Millis>,
    /// Since when the cluster has had no leader (as this node saw it).
    pub no_leader_since: Option<Millis>,
    /// The leader's address this replica was seen streaming from, with the
    /// leader key's create revision (one term of one leader). While the
    /// stream holds, a different address in the leader's member key is not
    /// followed: anyone who can write etcd can forge that key, and the
    /// leader's own agent rewrites it within a cycle.
    pub streaming_from: Option<(i64, String)>,
    /// Leader: `synchronous_standby_names` in force and who caught up
    /// since it took effect (the sync rules' memory).
    pub sync_in_force: InForce,
    /// Confirmed leader whose PostgreSQL was writable in this term.
    pub led_writable: bool,
    /// Since when such a leader's PostgreSQL has been known stopped (it
    /// died): restarted in place until `primary_start_timeout`.
    pub primary_down_since: Option<Millis>,
    /// When this node last gave up its key because its PostgreSQL did not
    /// start again: it stands aside for a ttl, as after a switchover.
    pub gave_up_at: Option<Millis>,
    /// A replica was started or pointed at its leader then and has not been
    /// seen streaming since: the loop looks again soon, so that its member
    /// key says "streaming" within a moment of it, not a loop_wait later.
    pub stream_wanted_since: Option<Millis>,
    /// A leader started its PostgreSQL as primary then (a crash recovery
    /// may take long): while it starts (not answering, unknown) the leader
    /// holds the key and the fence until `primary_start_timeout`, not only
    /// a ttl.
    pub primary_start_at: Option<Millis>,
}

impl NodeState {
    /// The local lease deadline: the last renewal's *send* time plus ttl;
    /// for a confirmed leader, from the earlier of that and the last
    /// confirmation's send time (`fence_base`).
    pub fn lease_deadline(&self, cfg: &HaConfig) -> Option<Millis> {
        let d = self.fence_base()?.plus(self.fence_ttl_ms(cfg));
        // The bound of an unknown move concerns the key this node holds as
        // leader: a member that lost it counts from its own lease (a
        // candidate's stale bound would keep it from ever arming).
        match self.move_bound {
            Some(b) if self.leader_confirmed => Some(d.min(b)),
            _ => Some(d),
        }
    }

    /// The ttl the fence counts with: the smaller of the configured one and
    /// the one etcd granted our lease, so that across a change of `ttl`
    /// (which takes a new lease) the shorter budget holds until both are in
    /// force.
    pub fn fence_ttl_ms(&self, cfg: &HaConfig) -> u64 {
        self.lease_ttl_ms.map_or(cfg.ttl_ms, |l| l.min(cfg.ttl_ms))
    }

    /// The watchdog timeout that fits the fence now: `fence_ttl -
    /// safety_margin`. After a change of `ttl` it shrinks at once and grows
    /// only once the key is on a lease of the new ttl.
    pub fn watchdog_target_secs(&self, cfg: &HaConfig) -> u32 {
        (self.fence_ttl_ms(cfg).saturating_sub(cfg.safety_margin_ms) / 1000) as u32
    }

    /// A confirmed leader whose key must go to a new lease: its lease was
    /// granted another ttl than the configured one, or a move's outcome is
    /// unknown (moving again settles it).
    pub fn lease_needs_move(&self, cfg: &HaConfig) -> bool {
        self.leader_confirmed
            && (self.lease_ttl_ms.is_some_and(|l| l != cfg.ttl_ms) || self.move_bound.is_some())
    }

    /// What the feed rule and the leader's deadlines count from: the last
    /// renewal's send time, and for a confirmed leader the earlier of that
    /// and its last confirmation's send time. Before `base + ttl` no other
    /// member can hold the key: the lease bound to it lives that long, and
    /// a replacement of an orphan key (the only write to a key on another's
    /// live lease) comes after the confirmation and blocks the key for a
    /// further ttl.
    pub fn fence_base(&self) -> Option<Millis> {
        let renewal = self.last_renewal?;
        match (self.leader_confirmed, self.last_confirmed) {
            (true, Some(c)) => Some(renewal.min(c)),
            _ => Some(renewal),
        }
    }

    /// The instant by which a leader that has not renewed must begin to stop
    /// PostgreSQL: the earlier of the lease and watchdog deadlines, less the
    /// stop budget. None when there is no lease at all.
    pub fn must_stop_at(&self, cfg: &HaConfig) -> Option<Millis> {
        let lease = self.lease_deadline(cfg)?;
        let hard = match (self.watchdog_armed, self.watchdog_deadline) {
            (true, Some(wd)) => lease.min(wd),
            _ => lease,
        };
        Some(hard.minus(cfg.stop_budget_ms()))
    }

    /// What a leader has left, at `now`, to stop PostgreSQL cleanly: until
    /// the earlier of its lease and watchdog deadlines, less the fixed
    /// slack, at least a second. None when it is not the confirmed leader.
    pub fn clean_stop_budget_ms(&self, cfg: &HaConfig, now: Millis) -> Option<u64> {
        let stop = self.must_stop_at(cfg).filter(|_| self.leader_confirmed)?;
        Some(
            stop.plus(cfg.stop_budget_ms())
                .since(now)
                .saturating_sub(SLACK_FIXED_MS)
                .max(1000),
        )
    }

    /// This node may keep PostgreSQL writable at `now`.
    pub fn may_stay_primary(&self, cfg: &HaConfig, now: Millis) -> bool {
        self.leader_confirmed && self.must_stop_at(cfg).is_some_and(|t| now < t)
    }

    /// A confirmed leader whose stop deadline has come: from here until the
    /// stop, nothing but the fence runs (no etcd read, no publish, no other
    /// step), so the whole stop budget goes to the stop (DESIGN §1.5).
    pub fn past_stop_deadline(&self, cfg: &HaConfig, now: Millis) -> bool {
        self.leader_confirmed && !self.may_stay_primary(cfg, now)
    }
}

/// How the node state changes with each outcome. The agent and the simulator
/// both call these, so they follow the same rules.
impl NodeState {
    /// After this cycle's etcd read: the leader key is ours only if it holds
    /// our name *and* our lease; a lease past its local deadline is gone.
    pub fn observe(
        &mut self,
        cfg: &HaConfig,
        view: Option<&ClusterView>,
        local: &LocalPostgres,
        now: Millis,
    ) {
        if let Some(v) = view {
            let leader_tl = v
                .leader
                .as_ref()
                .filter(|l| l.name != cfg.name)
                .and_then(|l| v.member(&l.name))
                .and_then(|m| m.info.timeline);
            let stalled = local.running
                && local.in_recovery
                && !local.streaming
                && leader_tl.is_some_and(|tl| local.timeline.is_some_and(|mine| mine < tl));
            self.no_leader_since = if v.leader.is_none() {
                self.no_leader_since.or(Some(now))
            } else {
                None
            };
            self.stalled_since = if stalled {
                self.stalled_since.or(Some(now))
            } else {
                None
            };
            self.paused = v.paused();
            let streaming_from_leader = v.leader.as_ref().and_then(|l| {
                let addr = v
                    .member(&l.name)
                    .and_then(|m| conn_host_port(&m.info.conn_url))?;
                (l.name != cfg.name
                    && local.running
                    && local.in_recovery
                    && local.streaming
                    && local.following.as_deref() == Some(addr.as_str()))
                .then_some((l.create_revision, addr))
            });
            let pinned_still_holds = |(rev, addr): &(i64, String)| {
                local.streaming
                    && local.following.as_deref() == Some(addr.as_str())
                    && v.leader.as_ref().is_some_and(|l| l.create_revision == *rev)
            };
            self.streaming_from = streaming_from_leader
                .or_else(|| self.streaming_from.take().filter(pinned_still_holds));
            self.orphan_leader = v
                .leader
                .as_ref()
                .filter(|l| l.name != cfg.name && l.lease != 0 && v.member(&l.name).is_none())
                .map(|l| match self.orphan_leader {
                    Some((rev, since)) if rev == l.mod_revision => (rev, since),
                    _ => (l.mod_revision, now),
                });
            let ours = v
                .leader
                .as_ref()
                .is_some_and(|l| l.name == cfg.name && Some(l.lease) == self.lease_id);
            if !ours {
                self.leader_confirmed = false;
            }
        }
        if self.lease_deadline(cfg).is_some_and(|d| now >= d) {
            self.leader_confirmed = false;
        }
        if local.streaming || !local.running {
            self.stream_wanted_since = None;
        }
        if local.running || !self.leader_confirmed {
            self.primary_start_at = None;
        }
        self.sync_in_force.observe(local);
        if !self.leader_confirmed {
            self.led_writable = false;
        } else if local.writable() {
            self.led_writable = true;
        }
        // Stopped or starting (not answering) both count: a start that
        // keeps failing must not reset the clock.
        self.primary_down_since = if self.led_writable && !local.running {
            self.primary_down_since.or(Some(now))
        } else {
            None
        };
        if self
            .primary_down_since
            .is_some_and(|t| now.since(t) >= cfg.primary_start_timeout_ms)
        {
            self.gave_up_at = Some(now);
        }
        self.unknown_since = if local.unknown {
            self.unknown_since.or(Some(now))
        } else {
            None
        };
    }

    /// The leader is starting PostgreSQL as primary.
    pub fn on_primary_start(&mut self, now: Millis) {
        self.primary_start_at = Some(now);
    }

    /// PostgreSQL was started as a replica, or pointed at a new upstream.
    pub fn on_follow_started(&mut self, now: Millis) {
        self.stream_wanted_since = Some(now);
    }

    /// A keep-alive *sent* at `sent` was answered with TTL > 0 for
    /// `lease_id`, a lease granted `ttl_ms`.
    pub fn on_renewed(&mut self, sent: Millis, lease_id: i64, granted_new: bool, ttl_ms: u64) {
        if granted_new || self.lease_id != Some(lease_id) {
            // A new lease: no key is bound to it yet.
            self.leader_confirmed = false;
        }
        self.lease_id = Some(lease_id);
        self.lease_ttl_ms = Some(ttl_ms);
        self.last_renewal = Some(sent);
    }

    /// The outcome of a confirm, acquire or take-over txn *sent* at `sent`.
    pub fn on_leader_txn(&mut self, sent: Millis, won: bool) {
        self.leader_confirmed = won;
        if won {
            self.last_confirmed = Some(sent);
        }
    }

    /// An acquire or take-over txn sent at `sent` put the key on our lease:
    /// a new term, at a revision no earlier move compared.
    pub fn on_acquired(&mut self, sent: Millis) {
        self.on_leader_txn(sent, true);
        self.move_bound = None;
    }

    /// `MoveLease`: a lease of `ttl_ms` granted with its request sent at
    /// `granted`, then the txn sent at `sent`. Moved: the key is on the new
    /// lease, which lives from at least `granted`. Not moved (the compare
    /// failed): the key is not ours as we knew it. Unknown (None): the key
    /// may be on the new lease, gone at `granted + ttl_ms` unless renewed.
    pub fn on_lease_moved(
        &mut self,
        granted: Millis,
        sent: Millis,
        lease_id: i64,
        ttl_ms: u64,
        moved: Option<bool>,
    ) {
        match moved {
            Some(true) => {
                self.lease_id = Some(lease_id);
                self.lease_ttl_ms = Some(ttl_ms);
                self.last_renewal = Some(granted);
                self.last_confirmed = Some(sent);
                self.move_bound = None;
            }
            Some(false) => self.leader_confirmed = false,
            None => {
                let b = granted.plus(ttl_ms);
                self.move_bound = Some(self.move_bound.map_or(b, |x| x.min(b)));
            }
        }
    }

    pub fn on_released(&mut self) {
        self.leader_confirmed = false;
    }

    /// The watchdog was opened at `now` with a read-back timeout.
    pub fn on_armed(&mut self, now: Millis, timeout_secs: u32) {
        self.watchdog_armed = true;
        self.watchdog_arm_failed = false;
        self.watchdog_deadline = Some(now.plus(timeout_secs as u64 * 1000));
        self.watchdog_timeout_secs = Some(timeout_secs);
    }

    pub fn on_arm_failed(&mut self) {
        self.watchdog_arm_failed = true;
    }

    pub fn on_fed(&mut self, now: Millis, timeout_secs: u32) {
        self.watchdog_deadline = Some(now.plus(timeout_secs as u64 * 1000));
        self.watchdog_timeout_secs = Some(timeout_secs);
    }

    /// A new timeout was asked at `now` (SETTIMEOUT, which also pings):
    /// `Some(read back)`, or None when it failed and the device may run
    /// either, pinged or not: the stop is planned for the earlier deadline
    /// of the two, and the feed rule assumes the longer timeout until a
    /// read-back says otherwise.
    pub fn on_watchdog_timeout_set(&mut self, now: Millis, asked: u32, got: Option<u32>) {
        match got {
            Some(t) => self.on_fed(now, t),
            None => {
                let before = self.watchdog_timeout_secs.unwrap_or(asked);
                let new = now.plus(asked as u64 * 1000);
                self.watchdog_deadline = Some(self.watchdog_deadline.map_or(new, |d| d.min(new)));
                self.watchdog_timeout_secs = Some(before.max(asked));
            }
        }
    }

    pub fn on_disarmed(&mut self) {
        self.watchdog_armed = false;
        self.watchdog_deadline = None;
        self.watchdog_timeout_secs = None;
    }
}

/// The feed rule (DESIGN §1.3): arming, feeding or re-setting at `now` a
/// watchdog of `timeout_secs` is allowed only if it would fire, running
/// `WATCHDOG_RATE_PCT` long, more than `SLACK_FIXED_MS` before the lease
/// deadline (`NodeState::lease_deadline`: the fence base plus the smaller
/// of the configured and the granted ttl). With the configured timeout
/// `ttl - safety_margin` this is: the renewal was *sent* less than
/// `safety_margin - slack` ago.
pub fn may_feed(cfg: &HaConfig, node: &NodeState, now: Millis, timeout_secs: u32) -> bool {
    let (Some(base), Some(deadline)) = (node.fence_base(), node.lease_deadline(cfg)) else {
        return false;
    };
    let wd_ms = timeout_secs as u64 * 1000;
    now >= base && now.plus(wd_ms + wd_ms * WATCHDOG_RATE_PCT / 100 + SLACK_FIXED_MS) < deadline
}

/// The value of a leader key that replaced an orphan one: no member can
/// have this name (names are letters, digits, `_ . -`), so every member waits
/// while it lives and races when its lease expires.
pub const ORPHAN_PLACEHOLDER: &str = "(replaced orphan leader key)";

impl HaConfig {
    /// How long a leader key on a live lease may name no member before it is
    /// replaced: two ttls, so that a leader whose member key was lost has
    /// many cycles to write it again.
    pub fn orphan_grace_ms(&self) -> u64 {
        2 * self.ttl_ms
    }

    /// The placeholder's lease: two ttls from its grant. The grant and the
    /// replacing txn both happen within one I/O timeout (< ttl), so the
    /// placeholder lives more than a ttl past the replacement, and the
    /// replaced leader's deadlines end within a ttl of its last
    /// confirmation, which came before the replacement.
    pub fn orphan_placeholder_ttl_secs(&self) -> i64 {
        (2 * self.ttl_ms).div_ceil(1000) as i64
    }
}

/// The timeout for an I/O call made at `now`: `retry_timeout`, shortened so
/// that a leader's call returns before it must start stopping PostgreSQL.
pub fn io_timeout_ms(cfg: &HaConfig, node: &NodeState, now: Millis) -> u64 {
    let mut t = cfg.retry_timeout_ms;
    if node.leader_confirmed
        && let Some(stop) = node.must_stop_at(cfg)
    {
        t = t.min(stop.since(now).max(100));
    }
    t
}

/// How long starting PostgreSQL may hold the loop: half a ttl (the member
/// key, bound to the lease, must be published meanwhile), at least a
/// second; for a leader, half of what is left before its stop deadline, so
/// that it comes back in time to renew and feed (at ttl 4 that is about
/// half a second: a slower start goes on in the background, seen as
/// starting until `primary_start_timeout`).
pub fn start_wait_ms(cfg: &HaConfig, node: &NodeState, now: Millis) -> u64 {
    let t = (cfg.ttl_ms / 2).max(1000);
    if node.leader_confirmed {
        t.min(io_timeout_ms(cfg, node, now) / 2).max(100)
    } else {
        t
    }
}

/// How long a replica may fail to follow a leader on a later timeline before
/// it is stopped and rewound.
pub fn stall_limit_ms(cfg: &HaConfig) -> u64 {
    (3 * cfg.loop_wait_ms).max(5000)
}

/// A member to stream from, clone from or rewind from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub member: String,
    pub conn_url: String,
    /// The replication slot on it to stream with (`primary_slot_name`);
    /// None: stream without one. Only streaming reads it.
    pub slot: Option<String>,
}

/// Which replication slot a replica streams with from the leader
/// ([`stream_slot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamSlot {
    /// Its own member slot.
    Use(String),
    /// No slot, for this reason (said in the decision's summary).
    Without(String),
    /// `use_slots` is off: never a slot.
    Off,
}

impl StreamSlot {
    pub fn slot(&self) -> Option<String> {
        match self {
            StreamSlot::Use(s) => Some(s.clone()),
            _ => None,
        }
    }
    /// For a summary: why the stream has no slot, if that needs saying.
    fn note(&self) -> String {
        match self {
            StreamSlot::Without(why) => format!(" (without a replication slot: {why})"),
            _ => String::new(),
        }
    }
}

/// The slot rule, liveness only: a replica names its slot in
/// `primary_slot_name` only when `use_slots` is on and either the leader's
/// `status` key, written in the leader's current term, lists the slot, or
/// the replica already streams from the leader with it. Otherwise it streams
/// without one: a slot that does not exist on the leader makes PostgreSQL
/// refuse the stream (`replication slot "x" does not exist`) for as long as
/// it is missing, and the leader creates it only once it sees the member's
/// key. A status that does not list slots (an older leader, a value that
/// is unreadable) is unknown, and unknown never holds the stream back.
/// When the slot appears, the next cycle switches to it (a reload).
pub fn stream_slot(cfg: &HaConfig, view: &ClusterView, local: &LocalPostgres) -> StreamSlot {
    if !cfg.use_slots {
        return StreamSlot::Off;
    }
    let mine = slot_name(&cfg.name);
    let Some(leader) = &view.leader else {
        return StreamSlot::Without("no leader".into());
    };
    let target = view
        .member(&leader.name)
        .and_then(|m| conn_host_port(&m.info.conn_url));
    if local.running
        && local.in_recovery
        && local.streaming
        && local.slot.as_deref() == Some(mine.as_str())
        && target.is_some()
        && local.following == target
    {
        return StreamSlot::Use(mine);
    }
    let status = view
        .status
        .as_ref()
        .filter(|s| s.mod_revision > leader.create_revision);
    match status.map(|s| &s.slots) {
        None => StreamSlot::Without(format!(
            "{} has written no status in its term yet",
            leader.name
        )),
        Some(None) => StreamSlot::Without(format!(
            "{}'s status key lists no slots (an older leader, or unreadable)",
            leader.name
        )),
        Some(Some(slots)) if slots.contains_key(&mine) => StreamSlot::Use(mine),
        Some(Some(_)) => StreamSlot::Without(format!("{} has no slot {mine} yet", leader.name)),
    }
}

/// One step for the agent. Steps run in order; the first failure ends the
/// sequence, except for the steps [`Action::continues_on_failure`] names.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send one keep-alive of this agent's lease (grant one if none).
    KeepAlive,
    /// Txn: leader key still ours (value and lease); also writes `status`.
    ConfirmLeader {
        status: Option<Status>,
    },
    /// Txn: create the leader key if absent, bound to our lease.
    AcquireLeader,
    /// Txn: re-bind a leader key that holds our name (left by our previous
    /// process) to our lease.
    TakeOverLeader {
        mod_revision: i64,
    },
    /// Txn: delete the leader key if it holds our name.
    ReleaseLeader,
    /// Txn: delete a leader key bound to no lease (it never expires), if it
    /// is still the key observed at `mod_revision` and still unleased.
    ClearUnleasedLeader {
        mod_revision: i64,
    },
    /// Txn: a leader key on a live lease that has named no member for
    /// `orphan_grace_ms` (a hand or a hostile writer made it, and may keep
    /// its lease alive) is replaced, if it is still the key observed at
    /// `mod_revision` and `members/<name>` still does not exist, by
    /// [`ORPHAN_PLACEHOLDER`] bound to a fresh lease of
    /// `orphan_placeholder_ttl_secs` that nobody renews. Never deleted: a
    /// real leader that lost its member key may still be writable, and
    /// stays so until its confirmation fails or its deadline (counted from
    /// a confirmation before the replacement, `NodeState::fence_base`)
    /// passes; the placeholder holds the key for longer than that.
    ReplaceOrphanLeader {
        mod_revision: i64,
        name: String,
    },
    /// Open the watchdog and set its timeout; allowed only under the feed rule.
    ArmWatchdog {
        required: bool,
    },
    /// Ping the watchdog; skipped (not failed) when the feed rule forbids.
    FeedWatchdog,
    /// Re-set the armed watchdog's timeout (SETTIMEOUT, read back; it pings,
    /// so only under the feed rule with the new timeout): a change of `ttl`
    /// shrinks it before the key moves to a shorter lease and grows it only
    /// once the key is on a longer one (`NodeState::watchdog_target_secs`).
    SetWatchdogTimeout {
        secs: u32,
    },
    /// A confirmed leader's key to a lease of the configured ttl: grant it,
    /// then a txn that puts the key (and the member key) on it if the key
    /// still holds our name, our lease and `mod_revision`. Only once the
    /// armed watchdog fits the new ttl.
    MoveLease {
        mod_revision: i64,
    },
    /// A member that does not hold the key takes a lease of the configured
    /// ttl in place of one granted another (its member key moves with its
    /// next publish; the old lease is left to expire).
    NewLease,
    /// Magic close. Only ever emitted when PostgreSQL is not writable.
    DisarmWatchdog,
    Initdb,
    /// Start PostgreSQL as a primary (no standby.signal).
    StartPrimary,
    /// Start PostgreSQL read-only, streaming from `upstream` if given.
    StartReplica {
        upstream: Option<Upstream>,
    },
    /// A running replica: point primary_conninfo at `upstream` and reload.
    Follow {
        upstream: Upstream,
    },
    Promote,
    /// Stop PostgreSQL: fast, then immediate. Succeeds only once stopped.
    StopPostgres,
    /// A switchover's stop: a fast (clean) shutdown only, whose shutdown
    /// checkpoint the standbys receive. Fails rather than escalate.
    StopCleanly,
    /// A switchover's check before the key goes: the candidate received
    /// this server's shutdown checkpoint, so it holds every acknowledged
    /// commit. If not, the switchover is abandoned (the request deleted)
    /// and this node stays the leader (it starts PostgreSQL again).
    ConfirmHandover {
        candidate: Upstream,
    },
    /// pg_basebackup into the empty data directory.
    Clone {
        upstream: Upstream,
    },
    /// pg_rewind a former primary onto the upstream's history.
    Rewind {
        upstream: Upstream,
    },
    /// Create the replication role after bootstrap.
    CreateReplicationUser,
    /// Txn: create `initialize` with the system identifier.
    WriteInitialize {
        system_id: String,
    },
    /// Leader: keep one physical slot per other member.
    SyncSlots {
        slots: Vec<String>,
    },
    /// Delete the `failover` key: the request is done or refused.
    DeleteFailover,
    /// Txn: write the `sync` key naming us as leader with these standbys,
    /// if it is still at the revision read (`None`: absent).
    WriteSync {
        standbys: KeySet,
        mod_revision: Option<i64>,
    },
    /// Txn: delete the `sync` key (synchronous mode is off), if it is still
    /// at the revision read.
    DeleteSync {
        mod_revision: i64,
    },
    /// Set `synchronous_standby_names` on our primary and reload; succeeds
    /// once the server reports the new value.
    SetSyncNames {
        names: String,
    },
}

impl Action {
    /// A failed lease renewal does not end the sequence: what follows it may
    /// be the fence (stop PostgreSQL before the lease runs out), and etcd
    /// being unreachable is exactly when the fence must run. Every later
    /// step that needs etcd fails on its own; feeding needs a fresh renewal
    /// by the feed rule.
    pub fn continues_on_failure(&self) -> bool {
        matches!(self, Action::KeepAlive)
    }

    /// The steps that still run once a leader is past its stop deadline
    /// ([`NodeState::past_stop_deadline`]): every other step (an etcd call,
    /// a publish, a slot sync) would spend the stop budget before the stop.
    pub fn is_fence(&self) -> bool {
        matches!(self, Action::StopPostgres | Action::DisarmWatchdog)
    }
}

/// What to do this cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// One line for the log: why.
    pub summary: String,
    /// When the next cycle should run at the latest, by the deadlines as
    /// they were before this cycle's actions.
    pub next_cycle: Millis,
    /// The same without the stop-deadline cap: once the actions ran (a
    /// renewal and a feed move the deadlines), [`next_wake`] caps it again.
    pub next_if_renewed: Millis,
}

/// When the loop runs next, once this cycle's actions ran (`node` as they
/// left it): for a confirmed leader no later than `cycle_lead_ms` before
/// its stop deadline, so that the next cycle's read, probe and renewal fit
/// before it; otherwise as decided.
pub fn next_wake(cfg: &HaConfig, node: &NodeState, d: &Decision, now: Millis) -> Millis {
    match node.must_stop_at(cfg).filter(|_| node.leader_confirmed) {
        Some(stop) => d
            .next_if_renewed
            .min(stop.minus(cfg.cycle_lead_ms()))
            .max(now),
        None => d.next_cycle,
    }
}

/// The time a confirmed leader gives one read or probe: half of what is
/// left before its stop deadline (at most retry_timeout), so that a slow
/// etcd or PostgreSQL leaves room for the renewal and the feed.
pub fn observe_timeout_ms(cfg: &HaConfig, node: &NodeState, now: Millis) -> u64 {
    let t = io_timeout_ms(cfg, node, now);
    if node.leader_confirmed {
        (t / 2).max(100).min(t)
    } else {
        t
    }
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub now: Millis,
    pub cfg: &'a HaConfig,
    /// None when this cycle's etcd read failed.
    pub view: Option<&'a ClusterView>,
    pub local: &'a LocalPostgres,
    pub node: &'a NodeState,
}

struct Plan<'a> {
    i: Input<'a>,
    actions: Vec<Action>,
    next_cycle: Millis,
    next_if_renewed: Millis,
}

impl<'a> Plan<'a> {
    fn new(i: Input<'a>) -> Plan<'a> {
        let wake = i.now.plus(i.cfg.loop_wait_ms);
        let mut next = wake;
        if i.node.leader_confirmed
            && let Some(stop) = i.node.must_stop_at(i.cfg)
        {
            next = next.min(stop.max(i.now));
        }
        Plan {
            i,
            actions: Vec::new(),
            next_cycle: next,
            next_if_renewed: wake,
        }
    }
    fn push(&mut self, a: Action) -> &mut Self {
        self.actions.push(a);
        self
    }
    fn recheck_in(&mut self, ms: u64) -> &mut Self {
        self.next_cycle = self.next_cycle.min(self.i.now.plus(ms));
        self.next_if_renewed = self.next_if_renewed.min(self.i.now.plus(ms));
        self
    }
    fn done(self, summary: impl Into<String>) -> Decision {
        Decision {
            actions: self.actions,
            summary: summary.into(),
            next_cycle: self.next_cycle,
            next_if_renewed: self.next_if_renewed,
        }
    }
    /// Arm if not armed, else feed: the fence for a node that is or is about
    /// to be writable. Nothing when the watchdog is off. A confirmed leader
    /// whose ttl changed re-sets the watchdog's timeout in place of a feed
    /// and moves its key to a lease of the new ttl once the watchdog fits
    /// it: shrink, move; or move, grow.
    fn fence(&mut self) {
        let (cfg, node) = (self.i.cfg, self.i.node);
        let mode = cfg.watchdog_mode;
        let armed = node.watchdog_armed && mode != WatchdogMode::Off;
        if node.lease_needs_move(cfg)
            && (!armed || node.watchdog_timeout_secs <= Some(cfg.watchdog_timeout_secs()))
            && let Some(l) = self.i.view.and_then(|v| v.leader.as_ref())
            && l.name == cfg.name
            && Some(l.lease) == node.lease_id
        {
            self.push(Action::MoveLease {
                mod_revision: l.mod_revision,
            });
        }
        if mode == WatchdogMode::Off {
            return;
        }
        if self.i.node.watchdog_armed {
            let target = node.watchdog_target_secs(cfg);
            if node.leader_confirmed && node.watchdog_timeout_secs.is_some_and(|t| t != target) {
                self.push(Action::SetWatchdogTimeout { secs: target });
            } else {
                self.push(Action::FeedWatchdog);
            }
        } else {
            self.push(Action::ArmWatchdog {
                required: mode == WatchdogMode::Required,
            });
        }
    }
    /// Stop a writable PostgreSQL, then disarm once it is confirmed stopped.
    fn stop_and_disarm(&mut self) {
        self.push(Action::StopPostgres);
        if self.i.node.watchdog_armed {
            self.push(Action::DisarmWatchdog);
        }
    }
    /// Disarm, unless PostgreSQL may be writable (known or unknown).
    fn disarm_if_armed(&mut self) {
        if self.i.node.watchdog_armed && !self.i.local.may_be_writable() {
            self.push(Action::DisarmWatchdog);
        }
    }
}

/// The decision. Pure: same input, same output.
pub fn decide(i: Input<'_>) -> Decision {
    let mut d = decide_plan(i);
    // A replica's lease carries only its member key: renewed when it is
    // due, not every cycle (etcd traffic). A plan that does anything else
    // (a race, a start) renews as before: a race takes the key on a lease
    // just renewed.
    let other_ttl = i.node.lease_ttl_ms.is_some_and(|l| l != i.cfg.ttl_ms);
    if d.actions == [Action::KeepAlive]
        && !i.node.leader_confirmed
        && !other_ttl
        && !replica_renewal_due(i.cfg, i.node, i.now)
    {
        d.actions.clear();
    }
    // A member that does not hold the key and whose lease was granted
    // another ttl takes a new one in place of renewing it.
    if !i.node.leader_confirmed && other_ttl {
        for a in d.actions.iter_mut() {
            if *a == Action::KeepAlive {
                *a = Action::NewLease;
            }
        }
    }
    d
}

/// Whether a node that is not the leader renews its lease this cycle: when
/// it has none, or when less than the larger of half the ttl and two
/// cycles' worth of time (loop_wait + retry_timeout each) is left of it,
/// so that a failed renewal is tried again at least once before the member
/// key expires. At 30/10/10 that is every cycle (as Patroni); at 20/1/3
/// every 10 s instead of every second.
pub fn replica_renewal_due(cfg: &HaConfig, node: &NodeState, now: Millis) -> bool {
    let (Some(_), Some(last)) = (node.lease_id, node.last_renewal) else {
        return true;
    };
    let left = last.plus(cfg.ttl_ms).since(now);
    let keep = (cfg.ttl_ms / 2).max(2 * (cfg.loop_wait_ms + cfg.retry_timeout_ms));
    left < keep
}

impl Decision {
    /// A decision that changes nothing: renew, confirm the key that is
    /// already ours, feed, keep the slots. The only kind the agent takes on
    /// its watch-kept view of etcd; any other (a race, a promotion, a
    /// demotion, a follow, a request carried out) is decided again on a
    /// read of its own (`agent::cycle`), so a stale view never makes a node
    /// take or give up anything.
    pub fn is_steady(&self) -> bool {
        self.actions.iter().all(|a| {
            matches!(
                a,
                Action::KeepAlive
                    | Action::ConfirmLeader { .. }
                    | Action::FeedWatchdog
                    | Action::SyncSlots { .. }
            )
        })
    }
}

fn decide_plan(i: Input<'_>) -> Decision {
    let mut p = Plan::new(i);
    let (cfg, local, node, now) = (i.cfg, i.local, i.node, i.now);

    // Rule W: a PostgreSQL that is or may be writable and is past its fence
    // must stop first, whatever else is true (DESIGN §1.5) — also in
    // maintenance mode: a pause can be lifted from any node at any moment,
    // and this node would not know it.
    if local.may_be_writable() && node.leader_confirmed && !node.may_stay_primary(cfg, now) {
        p.stop_and_disarm();
        return p.done("lease not renewed in time: stopping PostgreSQL before the lease expires");
    }

    let Some(view) = i.view else {
        return decide_blind(p);
    };

    if view.paused() {
        return decide_paused(p, view);
    }

    let ours = view
        .leader
        .as_ref()
        .is_some_and(|l| l.name == cfg.name && Some(l.lease) == node.lease_id);

    // A data directory from another cluster is never managed, and never
    // left writable: this node is not a member of this cluster.
    if let (Some(cluster_id), Some(local_id)) = (view.initialize.as_deref(), local.system_id())
        && !cluster_id.is_empty()
        && cluster_id != local_id
    {
        p.push(Action::KeepAlive);
        if local.may_be_writable() {
            p.stop_and_disarm();
        } else {
            p.disarm_if_armed();
        }
        if view.leader.as_ref().is_some_and(|l| l.name == cfg.name) {
            p.push(Action::ReleaseLeader);
        }
        return p.done(format!(
            "refusing to manage the data directory: its system identifier {local_id} is not the cluster's {cluster_id}"
        ));
    }

    if local.unknown {
        return decide_unknown(p, ours);
    }

    if let DataDir::Invalid(why) | DataDir::Unreadable(why) = &local.data_dir {
        // Known stopped (the unknown case is above): nothing to fence, and
        // nothing to run as leader.
        p.push(Action::KeepAlive);
        p.disarm_if_armed();
        if ours {
            p.push(Action::ReleaseLeader);
        }
        return p.done(format!("data directory unusable: {why}"));
    }

    match &view.leader {
        Some(l) if l.name == cfg.name && Some(l.lease) == node.lease_id => decide_leader(p, view),
        Some(l) if l.name == cfg.name => {
            // The key carries our name but another lease: our previous
            // process. Re-bind it rather than wait for it to expire.
            p.push(Action::KeepAlive);
            // No arming or feeding before the key is ours again: it is still
            // bound to the old lease, whose last renewal this process does
            // not know, so a feed timed from our lease could outlast it.
            // Until the take-over, a watchdog armed by the previous process
            // counts down against the old lease; the next cycle (at once)
            // confirms the key and arms or feeds against the lease it is
            // bound to now. A PostgreSQL that is not running needs no fence.
            p.push(Action::TakeOverLeader {
                mod_revision: l.mod_revision,
            });
            p.recheck_in(0);
            p.done("the leader key holds our name from a previous run: taking it over")
        }
        Some(l) if l.lease == 0 => {
            // No agent writes a leader key without a lease: this one would
            // hold the cluster leaderless forever. Our own name with no lease
            // is taken over above; anyone else's is cleared.
            p.push(Action::KeepAlive);
            if p.i.local.may_be_writable() {
                p.stop_and_disarm();
            }
            p.push(Action::ClearUnleasedLeader {
                mod_revision: l.mod_revision,
            });
            p.recheck_in(0);
            p.done(format!(
                "the leader key names {} but is bound to no lease (it would never expire): clearing it",
                l.name
            ))
        }
        Some(l)
            if node.orphan_leader.is_some_and(|(rev, since)| {
                rev == l.mod_revision && now.since(since) >= cfg.orphan_grace_ms()
            }) =>
        {
            // Never deleted (see the action): a placeholder on a lease
            // nobody renews holds the key for two ttls, then the members
            // race as after any lease expiry.
            p.push(Action::KeepAlive);
            if p.i.local.may_be_writable() {
                p.stop_and_disarm();
            } else {
                p.disarm_if_armed();
            }
            p.push(Action::ReplaceOrphanLeader {
                mod_revision: l.mod_revision,
                name: l.name.clone(),
            });
            p.done(format!(
                "the leader key has named {}, which is no member, for {} s: replacing it with a placeholder that expires in {} s",
                crate::config::excerpt(&l.name),
                cfg.orphan_grace_ms() / 1000,
                cfg.orphan_placeholder_ttl_secs()
            ))
        }
        Some(l) => decide_follower(p, view, l.name.clone()),
        None => decide_no_leader(p, view),
    }
}

impl Plan<'_> {
    /// Synchronous mode, before PostgreSQL becomes writable (a promotion, a
    /// start as primary, which begins with `sync::SyncConfig::initial_names`):
    /// the `sync` key must name us and no standby, so that nobody promotes
    /// on the strength of a key that does not describe this primary.
    fn sync_key_before_writable(&mut self, view: &ClusterView) {
        let cfg = self.i.cfg;
        if !cfg.sync.on() {
            return;
        }
        let ready = !view.sync_unreadable
            && view.sync.as_ref().is_some_and(|s| {
                s.leader.as_deref() == Some(cfg.name.as_str()) && s.standbys().is_empty()
            });
        if !ready {
            self.push(Action::WriteSync {
                standbys: KeySet::empty(),
                mod_revision: view.sync.as_ref().map(|s| s.mod_revision),
            });
        }
    }

    /// Before taking the key with the intent to promote: a node that cannot
    /// arm in required mode must not take it.
    fn fence_for_acquire(&mut self) {
        match self.i.cfg.watchdog_mode {
            WatchdogMode::Off => {}
            _ if self.i.node.watchdog_armed => {
                self.push(Action::FeedWatchdog);
            }
            WatchdogMode::Required => {
                self.push(Action::ArmWatchdog { required: true });
            }
            // Automatic: arming happens right before PostgreSQL becomes
            // writable; nothing to do before the key.
            WatchdogMode::Automatic => {}
        }
    }
}

/// PostgreSQL did not answer and is not known to be stopped. As leader:
/// hold the key and keep the fence (it may be writable), and after a ttl of
/// this try to stop it, so that the next cycle sees a known state. Without
/// the key: stop it if it may be writable; never a candidate.
fn decide_unknown(mut p: Plan<'_>, ours: bool) -> Decision {
    let (cfg, local, node, now) = (p.i.cfg, p.i.local, p.i.node, p.i.now);
    p.push(Action::KeepAlive);
    let soon = cfg.loop_wait_ms.min(1000);
    if ours {
        p.push(Action::ConfirmLeader { status: None });
        if local.may_be_writable() {
            p.fence();
        }
        let starting = node
            .primary_start_at
            .is_some_and(|t| now.since(t) < cfg.primary_start_timeout_ms);
        if !starting
            && node
                .unknown_since
                .is_some_and(|t| now.since(t) >= cfg.ttl_ms)
        {
            p.push(Action::StopPostgres);
            p.recheck_in(soon);
            return p.done(
                "PostgreSQL has not answered for a ttl: stopping it, holding the leader key until it is known stopped",
            );
        }
        p.recheck_in(soon);
        if starting {
            return p.done(
                "PostgreSQL is starting as primary: holding the leader key and the fence until it answers (primary_start_timeout)",
            );
        }
        return p.done("PostgreSQL does not answer: holding the leader key and the fence until its state is known");
    }
    if local.may_be_writable() {
        p.stop_and_disarm();
        p.recheck_in(soon);
        return p.done(
            "PostgreSQL does not answer and may be writable without the leader key: stopping it",
        );
    }
    p.recheck_in(soon);
    p.done("PostgreSQL (last seen in recovery) does not answer: waiting")
}

/// etcd could not be read this cycle. A leader still tries to renew (the
/// read may have failed alone); everyone else waits. Pause is unknown here
/// and plays no part: an unconfirmed PostgreSQL that may be writable stops.
/// The renewal's failure does not cancel the stop (`continues_on_failure`).
fn decide_blind(mut p: Plan<'_>) -> Decision {
    let (local, node) = (p.i.local, p.i.node);
    if !node.leader_confirmed && local.may_be_writable() {
        // The stop first: the renewal that follows (etcd is unreachable)
        // may spend a whole timeout, and nothing makes this one leader.
        p.stop_and_disarm();
        p.push(Action::KeepAlive);
        return p.done("etcd unreachable and no leader lease: stopping the unconfirmed primary");
    }
    p.push(Action::KeepAlive);
    if node.leader_confirmed {
        p.push(Action::ConfirmLeader { status: None });
        if local.may_be_writable() {
            p.fence();
        }
        return p.done("etcd read failed: trying to renew the leader lease");
    }
    p.disarm_if_armed();
    p.done("etcd read failed: waiting")
}

/// Maintenance mode: nothing is started, stopped or promoted. The leader
/// keeps its key *and its fence*: a pause can be lifted from any node while
/// this one hangs or is cut off, and then a replica may promote once the
/// lease is gone — so a writable leader stays armed and fed as always.
/// Others disarm.
fn decide_paused(mut p: Plan<'_>, view: &ClusterView) -> Decision {
    let (cfg, local, node) = (p.i.cfg, p.i.local, p.i.node);
    p.push(Action::KeepAlive);
    let mine = view.leader.as_ref().is_some_and(|l| l.name == cfg.name);
    if mine {
        let status = status_of(cfg, view, local);
        if view
            .leader
            .as_ref()
            .is_some_and(|l| Some(l.lease) == node.lease_id)
        {
            p.push(Action::ConfirmLeader { status });
        } else if let Some(l) = &view.leader {
            p.push(Action::TakeOverLeader {
                mod_revision: l.mod_revision,
            });
        }
    } else if view.leader.is_none() && local.writable() {
        p.push(Action::AcquireLeader);
    }
    let leading = mine
        && view
            .leader
            .as_ref()
            .is_some_and(|l| Some(l.lease) == node.lease_id);
    if leading && local.may_be_writable() {
        p.fence();
    } else {
        p.disarm_if_armed();
    }
    p.done("maintenance mode: no automatic actions")
}

/// The slots a leader keeps: one per other member, when `use_slots` is on.
fn member_slots(cfg: &HaConfig, view: &ClusterView) -> Vec<String> {
    if !cfg.use_slots {
        return Vec::new();
    }
    view.members
        .iter()
        .filter(|m| m.name != cfg.name)
        .map(|m| slot_name(&m.name))
        .collect()
}

/// The leader's `status`: its position and timeline, the physical slots
/// it has (as this cycle's probe saw them; replicas stream with theirs
/// once listed), and the member slots among them (`retain_slots`).
fn status_of(cfg: &HaConfig, view: &ClusterView, local: &LocalPostgres) -> Option<Status> {
    if !local.writable() {
        return None;
    }
    let kept = member_slots(cfg, view);
    local.lsn.map(|l| Status {
        optime: l.0,
        timeline: local.timeline,
        slots: local
            .slots
            .as_ref()
            .map(|s| s.iter().map(|(n, lsn)| (n.clone(), lsn.0)).collect()),
        retain_slots: local
            .slots
            .iter()
            .flat_map(|s| s.keys())
            .filter(|n| kept.contains(n))
            .cloned()
            .collect(),
        mod_revision: 0,
    })
}

/// We hold the leader key with our own lease.
fn decide_leader(mut p: Plan<'_>, view: &ClusterView) -> Decision {
    let (cfg, local, node, now) = (p.i.cfg, p.i.local, p.i.node, p.i.now);
    p.push(Action::KeepAlive);
    p.push(Action::ConfirmLeader {
        status: status_of(cfg, view, local),
    });

    if cfg.watchdog_mode == WatchdogMode::Required
        && node.watchdog_arm_failed
        && !node.watchdog_armed
    {
        if local.writable() {
            p.push(Action::StopPostgres);
        }
        p.push(Action::ReleaseLeader);
        return p.done("watchdog required but it cannot be armed: giving up the leader key");
    }

    if local.writable() {
        p.fence();
        p.push(Action::SyncSlots {
            slots: member_slots(cfg, view),
        });
        if let Some(req) = &view.failover {
            if req.member.as_deref() == Some(cfg.name.as_str())
                || req.leader.as_deref().is_some_and(|l| l != cfg.name)
            {
                // The request brought us here (or names someone else as
                // leader): it is done.
                p.push(Action::DeleteFailover);
                return p.done("switchover done: I am the new leader");
            }
            // An operator's failover that accepts losing commits picks its
            // member without the synchronous rule.
            let unsynced;
            let rules = if req.allow_data_loss {
                unsynced = HaConfig {
                    sync: SyncConfig::default(),
                    ..cfg.clone()
                };
                &unsynced
            } else {
                cfg
            };
            match switchover_target(rules, view, local, req.member.as_deref()) {
                Ok(target) => {
                    // Stop cleanly (replicas receive the shutdown
                    // checkpoint), make sure the candidate has it, then let
                    // the key go; disarm only once PostgreSQL is stopped.
                    let Some(candidate) = view.member(&target).map(|m| Upstream {
                        member: target.clone(),
                        conn_url: m.info.conn_url.clone(),
                        slot: None,
                    }) else {
                        p.push(Action::DeleteFailover);
                        return p.done(format!("switchover refused: no member key for {target}"));
                    };
                    p.push(Action::StopCleanly);
                    p.push(Action::ConfirmHandover { candidate });
                    if let Some(a) = handover_sync_key(cfg, view, &target) {
                        p.push(a);
                    }
                    p.push(Action::ReleaseLeader);
                    if node.watchdog_armed {
                        p.push(Action::DisarmWatchdog);
                    }
                    p.recheck_in(0);
                    return p.done(format!(
                        "switchover: stopping PostgreSQL and handing the leader key to {target}"
                    ));
                }
                Err(why) => {
                    p.push(Action::DeleteFailover);
                    return p.done(format!("switchover refused: {why}"));
                }
            }
        }
        if view.initialize.is_none()
            && let Some(id) = local.system_id()
        {
            p.push(Action::CreateReplicationUser);
            p.push(Action::WriteInitialize {
                system_id: id.to_string(),
            });
            return p.done("bootstrap: primary running, recording the cluster's system identifier");
        }
        if cfg.sync.on() {
            return sync_step(p, view);
        }
        if let Some(s) = &view.sync {
            // Synchronous mode is off: a key left from when it was on would
            // hold back a later failover once it is turned on again.
            p.push(Action::DeleteSync {
                mod_revision: s.mod_revision,
            });
        }
        return p.done("no action: I am the leader with the lease");
    }

    if node
        .primary_down_since
        .is_some_and(|t| now.since(t) >= cfg.primary_start_timeout_ms)
    {
        // Known stopped (not unknown): nothing to fence. The best replica
        // promotes now rather than after the lease.
        p.disarm_if_armed();
        p.push(Action::ReleaseLeader);
        return p.done(format!(
            "PostgreSQL died and did not start again within primary_start_timeout ({} s): releasing the leader key",
            cfg.primary_start_timeout_ms / 1000
        ));
    }

    if local.running {
        // A replica that won the key: fence, then promote.
        p.fence();
        p.sync_key_before_writable(view);
        p.push(Action::Promote);
        p.recheck_in(0);
        return p.done("promoting: I hold the leader key");
    }

    match &local.data_dir {
        DataDir::Empty if view.initialize.is_none() => {
            // initdb holds the loop for seconds (more on a slow machine)
            // and no PostgreSQL runs yet: nothing to fence, so the watchdog
            // (armed when the key was taken in required mode) must not be
            // left to fire meanwhile. It is armed again before the start.
            p.disarm_if_armed();
            p.push(Action::Initdb);
            p.recheck_in(0);
            p.done("bootstrap: I won the race, running initdb")
        }
        DataDir::Empty => {
            p.push(Action::ReleaseLeader);
            p.done("holding the leader key with an empty data directory: releasing it")
        }
        DataDir::Initialized {
            was_primary: true, ..
        } => {
            p.fence();
            p.sync_key_before_writable(view);
            p.push(Action::StartPrimary);
            p.recheck_in(0);
            p.done("starting PostgreSQL as primary: I hold the leader key")
        }
        DataDir::Initialized { .. } => {
            // A former replica: start it read-only, promote next cycle (a
            // plain start would not switch timeline).
            p.push(Action::StartReplica { upstream: None });
            p.recheck_in(0);
            p.done("starting PostgreSQL read-only before promoting")
        }
        DataDir::Invalid(why) | DataDir::Unreadable(why) => {
            p.done(format!("data directory unusable: {why}"))
        }
    }
}

/// A writable leader in synchronous mode: one step of `sync::plan`.
fn sync_step(mut p: Plan<'_>, view: &ClusterView) -> Decision {
    let (cfg, local, node) = (p.i.cfg, p.i.local, p.i.node);
    let soon = cfg.loop_wait_ms.min(1000);
    let list = |names: &std::collections::BTreeSet<String>| {
        names.iter().cloned().collect::<Vec<_>>().join(", ")
    };
    match crate::sync::plan(&cfg.sync, &cfg.name, view, local, &node.sync_in_force) {
        Step::WriteKey(k) => {
            let what = if k.names.is_empty() {
                "naming no synchronous standby in the sync key".to_string()
            } else {
                format!(
                    "naming {} in the sync key (quorum {})",
                    list(&k.names),
                    k.quorum
                )
            };
            p.push(Action::WriteSync {
                standbys: k,
                mod_revision: view.sync.as_ref().map(|s| s.mod_revision),
            });
            p.recheck_in(soon);
            p.done(format!("synchronous replication: {what}"))
        }
        Step::SetNames(n) => {
            let what = match &n {
                Names::Off => {
                    "no eligible synchronous standby: replicating asynchronously (synchronous_mode_strict is off)".to_string()
                }
                Names::AnyOne => {
                    "no eligible synchronous standby: commits wait for any standby (synchronous_mode_strict)".to_string()
                }
                other => format!("PostgreSQL now waits for {}", other.render()),
            };
            p.push(Action::SetSyncNames { names: n.render() });
            p.recheck_in(soon);
            p.done(format!("synchronous replication: {what}"))
        }
        Step::Hold(Some(why)) => {
            p.recheck_in(soon);
            p.done(format!("synchronous replication: {why}"))
        }
        Step::Hold(None) => {
            let names = node.sync_in_force.names.clone().unwrap_or(Names::Off);
            let what = match &names {
                Names::Off => "asynchronous: no eligible synchronous standby".to_string(),
                Names::AnyOne => {
                    "no eligible synchronous standby: commits wait (synchronous_mode_strict)"
                        .to_string()
                }
                Names::Set { names, .. } => format!("synchronous standby {}", list(names)),
                Names::Unknown(s) => format!("synchronous_standby_names is {s:?}"),
            };
            p.done(format!("no action: I am the leader with the lease; {what}"))
        }
    }
}

/// Whether a member can take over in a planned switchover: running,
/// streaming, not nofailover, within maximum_lag_on_failover of the leader.
/// The leader's live view of its replication connections, when it has one,
/// is preferred to the members' published positions.
pub fn switchover_candidate_ok(
    cfg: &HaConfig,
    view: &ClusterView,
    m: &Member,
    leader: &LocalPostgres,
) -> Result<(), String> {
    if m.info.tags.nofailover {
        return Err(format!("{} is tagged nofailover", m.name));
    }
    if m.unleased() {
        return Err(format!(
            "{}'s member key is bound to no lease (no agent wrote it)",
            m.name
        ));
    }
    if m.info.state != "running" || m.info.role != Role::Replica {
        return Err(format!("{} is not a running replica", m.name));
    }
    if cfg.sync.on() {
        // Synchronous mode: only a standby the sync key names holds every
        // acknowledged commit (and the new leader's key will name only it).
        let named = !view.sync_unreadable
            && view
                .sync
                .as_ref()
                .is_some_and(|s| s.standbys().iter().any(|n| n == &m.name));
        if !named {
            return Err(format!(
                "{} is not a synchronous standby (synchronous_mode is on)",
                m.name
            ));
        }
    }
    // A walsender that has not had the standby's first reply yet shows no
    // flush position (0/0 here): that says nothing, so the member's own
    // published position counts then. (Safety does not hang on this: the
    // hand-over itself checks that the candidate got the shutdown
    // checkpoint.)
    let live = leader
        .replication
        .iter()
        .find(|r| r.name == m.name && r.flush.0 > 0);
    let (streaming, lsn) = match live {
        Some(r) => (r.streaming, r.flush),
        None => (m.info.streaming, m.lsn()),
    };
    if !streaming {
        return Err(format!("{} is not streaming", m.name));
    }
    let lag = leader.lsn.unwrap_or_default().0.saturating_sub(lsn.0);
    if lag > cfg.maximum_lag_on_failover {
        return Err(format!(
            "{} is {lag} bytes behind (maximum_lag_on_failover {})",
            m.name, cfg.maximum_lag_on_failover
        ));
    }
    Ok(())
}

/// The member a switchover hands over to: the named one if it qualifies,
/// else the most advanced one that does.
pub fn switchover_target(
    cfg: &HaConfig,
    view: &ClusterView,
    local: &LocalPostgres,
    named: Option<&str>,
) -> Result<String, String> {
    let top = local;
    match named {
        Some(n) if n == cfg.name => Err(format!("{n} is already the leader")),
        Some(n) => {
            let m = view
                .member(n)
                .ok_or_else(|| format!("no member named {n}"))?;
            switchover_candidate_ok(cfg, view, m, top).map(|_| n.to_string())
        }
        None => view
            .members
            .iter()
            .filter(|m| m.name != cfg.name && switchover_candidate_ok(cfg, view, m, top).is_ok())
            .max_by(|a, b| a.lsn().cmp(&b.lsn()).then(b.name.cmp(&a.name)))
            .map(|m| m.name.clone())
            .ok_or_else(|| "no healthy replica to hand over to".to_string()),
    }
}

/// Synchronous mode, a switchover once `ConfirmHandover` succeeded: the
/// `sync` key narrowed to the candidate alone, quorum 1, before the leader
/// key goes. PostgreSQL is stopped and the candidate holds its shutdown
/// checkpoint, so it holds every commit ever acknowledged: the narrowed key
/// keeps the invariant, and the candidate satisfies the promotion rule on
/// its own, in the first cycle without a leader. Without it, a key that
/// names more standbys with a quorum over one (quorum mode; mode on while a
/// standby is being replaced) has the candidate wait until enough of the
/// other standbys published positions after the leader left: member keys
/// wake nobody, so a whole loop_wait. None when the key says so already
/// (mode on with one standby) or synchronous mode is off.
fn handover_sync_key(cfg: &HaConfig, view: &ClusterView, target: &str) -> Option<Action> {
    if !cfg.sync.on() || view.sync_unreadable {
        return None;
    }
    let only = KeySet {
        names: std::iter::once(target.to_string()).collect(),
        quorum: 1,
    };
    let current = view.sync.as_ref();
    if current.is_some_and(|s| {
        s.leader.as_deref() == Some(cfg.name.as_str()) && KeySet::from_state(s) == only
    }) {
        return None;
    }
    Some(Action::WriteSync {
        standbys: only,
        mod_revision: current.map(|s| s.mod_revision),
    })
}

/// How long after a replica's start (or a new upstream) the loop looks
/// every [`RECHECK_MS`] for its stream to begin.
pub const STREAM_WATCH_MS: u64 = 15_000;

/// Where an empty data directory is cloned from: the leader (`leader`), or
/// the member a `reinit --from` for this member names, while that member
/// qualifies (`cluster::clone_source_refusal`: another member, running,
/// with an address). Otherwise the leader: an emptied replica never waits
/// on a source that went away. Either way it streams from the leader after.
pub fn clone_source(view: &ClusterView, me: &str, leader: &Upstream) -> Upstream {
    view.reinit
        .as_ref()
        .filter(|r| r.member == me)
        .and_then(|r| r.from.as_deref())
        .filter(|f| crate::cluster::clone_source_refusal(view, me, f).is_none())
        .and_then(|f| view.member(f))
        .map(|m| Upstream {
            member: m.name.clone(),
            conn_url: m.info.conn_url.clone(),
            slot: None,
        })
        .unwrap_or_else(|| leader.clone())
}

/// Someone else leads: follow them.
fn decide_follower(mut p: Plan<'_>, view: &ClusterView, leader: String) -> Decision {
    let local = p.i.local;
    p.push(Action::KeepAlive);
    if p.i
        .node
        .stream_wanted_since
        .is_some_and(|t| p.i.now.since(t) < STREAM_WATCH_MS)
    {
        // Publish "streaming" as soon as it is true (rejoin time).
        p.recheck_in(RECHECK_MS);
    }
    if local.may_be_writable() {
        p.stop_and_disarm();
        p.recheck_in(0);
        return p.done(format!("demoting: {leader} holds the leader key"));
    }
    p.disarm_if_armed();

    let slot = stream_slot(p.i.cfg, view, local);
    let upstream = view.member(&leader).and_then(|m| {
        (!m.info.conn_url.is_empty()).then(|| Upstream {
            member: leader.clone(),
            conn_url: m.info.conn_url.clone(),
            slot: slot.slot(),
        })
    });
    let note = slot.note();
    let leader_running = view
        .member(&leader)
        .is_some_and(|m| m.info.state == "running" && m.info.role == Role::Primary);
    // Member keys do not wake the loop: look again soon while waiting on one.
    let soon = p.i.cfg.loop_wait_ms.min(1000);
    let Some(upstream) = upstream else {
        p.recheck_in(soon);
        if leader == ORPHAN_PLACEHOLDER {
            return p.done(
                "the leader key holds the placeholder of a replaced orphan key: waiting for it to expire",
            );
        }
        return p.done(format!(
            "waiting for leader {} to publish its address",
            crate::config::excerpt(&leader)
        ));
    };

    match &local.data_dir {
        DataDir::Empty => {
            if view.initialize.is_some() && leader_running {
                let source = clone_source(view, &p.i.cfg.name, &upstream);
                let what = if source.member == leader {
                    format!("cloning from leader {leader}{note}")
                } else {
                    format!(
                        "cloning from {} (reinit --from), then streaming from leader {leader}{note}",
                        source.member
                    )
                };
                p.push(Action::Clone { upstream: source });
                p.push(Action::StartReplica {
                    upstream: Some(upstream),
                });
                p.done(what)
            } else {
                p.recheck_in(soon);
                p.done(format!("waiting for leader {leader} to finish bootstrap"))
            }
        }
        DataDir::Initialized { was_primary, .. } if !local.running => {
            if *was_primary && !p.i.cfg.use_pg_rewind {
                p.push(Action::StartReplica {
                    upstream: Some(upstream),
                });
                return p.done(format!(
                    "starting as a replica of {leader} without pg_rewind (postgresql.use_pg_rewind is off): if this former primary diverged it will not stream and needs `leasedog reinit`{note}"
                ));
            }
            if *was_primary {
                if !leader_running {
                    p.recheck_in(soon);
                    return p.done(format!(
                        "waiting for leader {leader} to run before rewinding"
                    ));
                }
                p.push(Action::Rewind {
                    upstream: upstream.clone(),
                });
            }
            p.push(Action::StartReplica {
                upstream: Some(upstream),
            });
            p.done(format!("starting as a replica of {leader}{note}"))
        }
        _ if local.running => {
            if p.i
                .node
                .stalled_since
                .is_some_and(|t| p.i.now.since(t) >= stall_limit_ms(p.i.cfg))
            {
                if !p.i.cfg.use_pg_rewind {
                    p.recheck_in(soon);
                    return p.done(format!(
                        "not streaming from {leader}, which is on a later timeline, and postgresql.use_pg_rewind is off: waiting for `leasedog reinit` of this member"
                    ));
                }
                p.push(Action::StopPostgres);
                p.push(Action::Rewind {
                    upstream: upstream.clone(),
                });
                p.push(Action::StartReplica {
                    upstream: Some(upstream),
                });
                return p.done(format!(
                    "not streaming from {leader}, which is on a later timeline: rewinding{note}"
                ));
            }
            let target = conn_host_port(&upstream.conn_url);
            let leader_rev = view.leader.as_ref().map(|l| l.create_revision);
            if let Some((rev, addr)) = &p.i.node.streaming_from
                && Some(*rev) == leader_rev
                && local.streaming
                && local.following.as_deref() == Some(addr.as_str())
                && target.as_deref() != Some(addr.as_str())
            {
                return p.done(format!(
                    "streaming from leader {leader} at {addr}: not following the changed address {:?} in its member key while the stream holds",
                    upstream.conn_url
                ));
            }
            if target.is_some() && local.following != target {
                p.push(Action::Follow { upstream });
                return p.done(format!("following the new leader {leader}{note}"));
            }
            if target.is_some() && local.slot != upstream.slot {
                // Only the slot changes: a reload restarts the WAL receiver
                // with it (primary_slot_name is reloadable since PG 13).
                let what = match &upstream.slot {
                    Some(s) => format!("switching to replication slot {s} on leader {leader}"),
                    None => format!("following leader {leader} without a replication slot"),
                };
                p.push(Action::Follow { upstream });
                return p.done(format!("{what}{note}"));
            }
            p.done(format!("no action: streaming from leader {leader}{note}"))
        }
        _ => p.done("waiting"),
    }
}

/// Eligible members that would beat us, given positions.
fn ahead_of_me<'v>(
    cfg: &HaConfig,
    view: &'v ClusterView,
    local: &LocalPostgres,
    my_lsn: Lsn,
    my_tl: u32,
    i_am_primary: bool,
) -> Option<&'v Member> {
    view.members.iter().find(|m| {
        m.name != cfg.name
            && !m.info.tags.nofailover
            && !m.unleased()
            && m.info.state == "running"
            && m.info.role == Role::Replica
            && m.info.timeline.unwrap_or(0) >= my_tl
            && if i_am_primary {
                // A replica streaming from this primary now holds a prefix
                // of its WAL: a position it published after this node's
                // probe (the primary still writes) only looks ahead. One
                // that does not stream from it may really be ahead (a
                // primary that came back without the tail of its WAL).
                m.info.timeline.unwrap_or(0) > my_tl
                    || (m.lsn() > my_lsn
                        && !local
                            .replication
                            .iter()
                            .any(|r| r.streaming && r.name == m.name))
            } else {
                m.lsn() > my_lsn || (m.lsn() == my_lsn && m.name < cfg.name)
            }
    })
}

/// Why a replica must not race although the leader key is gone: the former
/// primary may still be writable. etcd can lose a lease before its time (a
/// raft leader that resumes after a hang longer than the lease TTL revokes
/// the leases it saw expire: etcd#15247, fixed in 3.4.28 and 3.5.11), and
/// then the key is gone while its holder's fence still runs. Its fence ends
/// within a ttl of the loss (its loop stops PostgreSQL before its lease
/// deadline, its watchdog fires before that), so a replica waits a ttl from
/// the moment it saw the key gone while it sees the old primary alive: its
/// own WAL receiver still streams, or a member key bound to a live lease,
/// published after its member saw the leader key gone (`leaderless_rev`),
/// says that member runs as primary on our timeline or a later one (what
/// Patroni calls "primary is still alive"). The primary takes its key back
/// meanwhile, or stops and ends the stream. (A key published before the
/// loss says nothing: a leader that released its key after its PostgreSQL
/// died has not yet written "stopped".)
fn former_primary_alive(
    cfg: &HaConfig,
    view: &ClusterView,
    local: &LocalPostgres,
) -> Option<String> {
    if local.writable() {
        return None;
    }
    if local.running && local.in_recovery && local.streaming {
        let from = local.following.as_deref().unwrap_or("its upstream");
        return Some(format!("my WAL receiver still streams from {from}"));
    }
    let my_tl = local.timeline.unwrap_or(0);
    view.members
        .iter()
        .find(|m| {
            m.name != cfg.name
                && !m.unleased()
                && m.info.state == "running"
                && m.info.role == Role::Primary
                && m.info.leaderless_rev.is_some()
                && m.info.timeline.unwrap_or(0) >= my_tl
        })
        .map(|m| format!("{} still runs as primary", m.name))
}

/// Nobody holds the leader key.
fn decide_no_leader(mut p: Plan<'_>, view: &ClusterView) -> Decision {
    let (cfg, local) = (p.i.cfg, p.i.local);
    p.push(Action::KeepAlive);

    // No `initialize` key: a new cluster — or an existing one whose keys
    // were wiped. Only a node with nothing to lose (an empty data directory)
    // or a writable primary races for the key: a replica that won would
    // promote beside the running primary, without any lag rule. Replicas
    // wait a ttl for the primary to take its key back, then elect as after
    // any loss of the leader (the most advanced one leads).
    let leaderless_for =
        p.i.node
            .no_leader_since
            .map(|t| p.i.now.since(t))
            .unwrap_or(0);
    let has_data = matches!(local.data_dir, DataDir::Initialized { .. });
    // A stopped former primary (an existing data directory to adopt) races
    // too, once member keys had two cycles to reappear and none of them
    // shows another member running.
    let others_running = view
        .members
        .iter()
        .any(|m| m.name != cfg.name && m.info.state != "stopped");
    let adopts = matches!(
        local.data_dir,
        DataDir::Initialized {
            was_primary: true,
            ..
        }
    ) && local.known_stopped()
        && !others_running
        && leaderless_for >= 2 * cfg.loop_wait_ms;
    let races = !has_data || local.writable() || adopts;
    if view.initialize.is_none() && (races || leaderless_for < cfg.ttl_ms) {
        if cfg.nofailover {
            return p.done("waiting for bootstrap: tagged nofailover");
        }
        if !races {
            p.recheck_in(p.i.cfg.loop_wait_ms.min(1000));
            return p.done(
                "no leader and no initialize key (wiped?): waiting for the primary to take its key back",
            );
        }
        // In required mode a node that cannot arm never takes the key.
        p.fence_for_acquire();
        p.push(Action::AcquireLeader);
        p.recheck_in(0);
        return p.done("bootstrap: racing for the leader key");
    }

    if cfg.nofailover {
        if local.writable() {
            p.stop_and_disarm();
            return p.done("no leader and tagged nofailover: stopping the primary");
        }
        p.disarm_if_armed();
        return p.done("no leader; tagged nofailover: not a candidate");
    }

    // The member that handed over in a switchover does not take the key
    // back — for a ttl: if no candidate could take it (all of them behind,
    // say), waiting longer would leave the cluster leaderless for good.
    let leaderless_for =
        p.i.node
            .no_leader_since
            .map(|t| p.i.now.since(t))
            .unwrap_or(0);
    if p.i
        .node
        .gave_up_at
        .is_some_and(|t| p.i.now.since(t) < cfg.ttl_ms)
        && !local.running
    {
        p.disarm_if_armed();
        p.recheck_in(p.i.cfg.loop_wait_ms.min(1000));
        return p.done(
            "no leader: I gave up the key when PostgreSQL did not start again; standing aside for a ttl",
        );
    }
    if leaderless_for < cfg.ttl_ms
        && view.failover.as_ref().is_some_and(|f| {
            f.leader.as_deref() == Some(cfg.name.as_str())
                && f.member.as_deref() != Some(cfg.name.as_str())
        })
    {
        p.disarm_if_armed();
        p.recheck_in(p.i.cfg.loop_wait_ms.min(1000));
        return p.done("no leader: I handed over in a switchover, waiting for the new leader");
    }
    match &local.data_dir {
        DataDir::Empty => {
            return p.done("no leader and no data: waiting for a leader to clone from");
        }
        DataDir::Initialized { .. } if !local.running => {
            // Start read-only to learn our position; decide next cycle.
            p.disarm_if_armed();
            p.push(Action::StartReplica { upstream: None });
            p.recheck_in(0);
            return p.done("no leader: starting PostgreSQL read-only to take part in the election");
        }
        _ => {}
    }

    let my_lsn = local.lsn.unwrap_or_default();
    let my_tl = local.timeline.unwrap_or(0);
    // Synchronous mode: only the members the sync key names may promote
    // (`sync::may_take_over`), unless an operator's failover names this
    // member and accepts losing commits. Being named is no exception
    // otherwise: a switchover's old leader names its checked candidate
    // alone in the key before it lets the leader key go, and a request
    // whose leader died before acting on it (`failover --to` while the dead
    // leader's lease runs out) proves nothing about this member's WAL.
    let request = view.failover.as_ref();
    let named_me = request.and_then(|f| f.member.as_deref()) == Some(cfg.name.as_str());
    let forced = named_me && request.is_some_and(|f| f.allow_data_loss);
    let vouched = cfg.sync.on()
        && !view.sync_unreadable
        && view.sync.as_ref().is_some_and(|s| s.leader.is_some());
    if !forced && let Err(why) = crate::sync::may_take_over(&cfg.sync, &cfg.name, view, my_lsn) {
        if local.writable() {
            p.stop_and_disarm();
        }
        p.recheck_in(p.i.cfg.loop_wait_ms.min(1000));
        return p.done(format!("not a candidate: {why}"));
    }
    if let Some(st) = &view.status {
        if let Some(tl) = st.timeline
            && my_tl < tl
        {
            return p.done(format!(
                "not a candidate: my timeline {my_tl} is behind the cluster's {tl}"
            ));
        }
        // A member the sync key vouches for holds every acknowledged
        // commit: what it lacks was never acknowledged.
        let lag = st.optime.saturating_sub(my_lsn.0);
        if lag > cfg.maximum_lag_on_failover && !(vouched || forced) {
            if local.writable() {
                p.stop_and_disarm();
            }
            return p.done(format!(
                "not a candidate: {lag} bytes behind the last leader position (maximum_lag_on_failover {})",
                cfg.maximum_lag_on_failover
            ));
        }
    }
    // A switchover or failover names who takes over: the others wait, as
    // long as the named member is alive to do it.
    if let Some(target) = view.failover.as_ref().and_then(|f| f.member.as_deref())
        && target != cfg.name
        && view
            .member(target)
            .is_some_and(|m| m.info.state == "running" && !m.info.tags.nofailover && !m.unleased())
    {
        if local.writable() {
            p.stop_and_disarm();
        }
        p.recheck_in(p.i.cfg.loop_wait_ms.min(1000));
        return p.done(format!("no leader: {target} was asked to take over"));
    }
    if named_me {
        p.fence_for_acquire();
        p.push(Action::AcquireLeader);
        p.recheck_in(0);
        return p.done("no leader: I was asked to take over, taking the key");
    }
    // Compare against fresh positions: give every member one round to
    // publish its current position (ours included) before comparing. Bounded:
    // a position that keeps moving (an old primary still streaming) must not
    // hold the election back forever.
    // A primary that is still writable races at once: nobody holds more
    // than it does, and every replica waits for it (below).
    let writable = local.writable();
    if !writable
        && leaderless_for < cfg.ttl_ms
        && let Some(why) = former_primary_alive(cfg, view, local)
    {
        p.recheck_in(p.i.cfg.loop_wait_ms.min(1000));
        return p.done(format!(
            "no leader, but the former primary may still be writable ({why}): not racing for a ttl"
        ));
    }
    let published = view.member(&cfg.name).map(|m| m.lsn());
    let waited =
        p.i.node
            .no_leader_since
            .map(|t| p.i.now.since(t))
            .unwrap_or(0);
    if !writable && published != Some(my_lsn) && waited < 2 * RECHECK_MS {
        p.recheck_in(RECHECK_MS);
        return p.done("no leader: publishing my position before the election");
    }
    // In synchronous mode only the members the key names compete.
    let competes = |m: &Member| {
        !vouched
            || view.sync.as_ref().is_some_and(|s| {
                s.leader.as_deref() == Some(m.name.as_str())
                    || s.standbys().iter().any(|n| n == &m.name)
            })
    };
    if let Some(better) =
        ahead_of_me(cfg, view, local, my_lsn, my_tl, writable).filter(|m| competes(m))
    {
        let name = better.name.clone();
        if local.writable() {
            p.stop_and_disarm();
        }
        p.recheck_in(p.i.cfg.loop_wait_ms.min(1000));
        return p.done(format!("no leader: {name} is the better candidate"));
    }
    p.fence_for_acquire();
    p.push(Action::AcquireLeader);
    p.recheck_in(0);
    p.done("no leader: I am the healthiest candidate, taking the key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Leader, MemberInfo, Tags};

    fn cfg(mode: WatchdogMode) -> HaConfig {
        HaConfig {
            name: "b".into(),
            ttl_ms: 6000,
            loop_wait_ms: 1000,
            retry_timeout_ms: 2000,
            safety_margin_ms: 2000,
            maximum_lag_on_failover: 1 << 20,
            nofailover: false,
            watchdog_mode: mode,
            use_slots: true,
            use_pg_rewind: true,
            sync: Default::default(),
            primary_start_timeout_ms: 300_000,
        }
    }

    fn member(name: &str, role: Role, lsn: u64, tl: u32) -> Member {
        Member {
            name: name.into(),
            info: MemberInfo {
                conn_url: format!("postgres://127.0.0.1:{}/postgres", 5000 + name.len()),
                state: "running".into(),
                role,
                xlog_location: Some(lsn),
                timeline: Some(tl),
                ..Default::default()
            },
            lease: Some(9),
        }
    }

    fn leader(name: &str, lease: i64) -> Option<Leader> {
        Some(Leader {
            name: name.into(),
            lease,
            create_revision: 5,
            mod_revision: 7,
        })
    }

    fn initialized(was_primary: bool) -> DataDir {
        DataDir::Initialized {
            system_id: "42".into(),
            was_primary,
            crashed: false,
            timeline: 1,
            checkpoint: Lsn(100),
        }
    }

    fn primary(lsn: u64) -> LocalPostgres {
        LocalPostgres {
            data_dir: initialized(true),
            running: true,
            in_recovery: false,
            timeline: Some(1),
            lsn: Some(Lsn(lsn)),
            ..Default::default()
        }
    }

    fn replica(lsn: u64, following: &str) -> LocalPostgres {
        LocalPostgres {
            data_dir: initialized(false),
            running: true,
            in_recovery: true,
            timeline: Some(1),
            lsn: Some(Lsn(lsn)),
            streaming: true,
            following: Some(following.into()),
            replication: Vec::new(),
            unknown: false,
            ..Default::default()
        }
    }

    /// A replica whose primary died: its WAL receiver no longer streams.
    fn orphan(lsn: u64) -> LocalPostgres {
        LocalPostgres {
            streaming: false,
            ..replica(lsn, "x:1")
        }
    }

    fn stopped(was_primary: bool) -> LocalPostgres {
        LocalPostgres {
            data_dir: initialized(was_primary),
            ..Default::default()
        }
    }

    fn view(leader_: Option<Leader>, members: Vec<Member>) -> ClusterView {
        ClusterView {
            leader: leader_,
            members,
            initialize: Some("42".into()),
            status: Some(Status {
                optime: 1000,
                timeline: Some(1),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A node that renewed at t=10s and is confirmed leader, watchdog armed.
    fn leading(armed: bool) -> NodeState {
        NodeState {
            lease_id: Some(9),
            last_renewal: Some(Millis(10_000)),
            leader_confirmed: true,
            watchdog_armed: armed,
            watchdog_deadline: armed.then_some(Millis(14_000)),
            ..Default::default()
        }
    }

    fn replica_node() -> NodeState {
        NodeState {
            lease_id: Some(9),
            last_renewal: Some(Millis(10_000)),
            ..Default::default()
        }
    }

    fn run(
        c: &HaConfig,
        now: u64,
        v: Option<&ClusterView>,
        l: &LocalPostgres,
        n: &NodeState,
    ) -> Decision {
        decide(Input {
            now: Millis(now),
            cfg: c,
            view: v,
            local: l,
            node: n,
        })
    }

    use Action::*;

    /// The feed rule for a node whose fence counts from `base`, with the
    /// configured watchdog timeout.
    fn feeds_at(c: &HaConfig, now: Millis, base: Option<Millis>) -> bool {
        let n = NodeState {
            last_renewal: base,
            ..NodeState::default()
        };
        may_feed(c, &n, now, c.watchdog_timeout_secs())
    }

    #[test]
    fn feed_rule_uses_the_send_time() {
        let c = cfg(WatchdogMode::Automatic);
        assert!(feeds_at(&c, Millis(10_000), Some(Millis(10_000))));
        // wd 4 s: slack 500 ms + 3% of 4 s = 620 ms of a 2 s margin.
        assert_eq!(c.feed_slack_ms(), 620);
        assert!(feeds_at(&c, Millis(11_379), Some(Millis(10_000))));
        assert!(!feeds_at(&c, Millis(11_380), Some(Millis(10_000))));
        assert!(!feeds_at(&c, Millis(10_000), None));
        // A clock that went backwards never feeds.
        assert!(!feeds_at(&c, Millis(9_000), Some(Millis(10_000))));
        // The hardware deadline of an allowed feed lies before the lease expiry.
        // Even on hardware that runs WATCHDOG_RATE_PCT long.
        let wd_ms = c.watchdog_timeout_secs() as u64 * 1000;
        let latest_feed = 10_000 + c.safety_margin_ms - c.feed_slack_ms() - 1;
        assert!(latest_feed + wd_ms * (100 + WATCHDOG_RATE_PCT) / 100 < 10_000 + c.ttl_ms);
    }

    #[test]
    fn after_an_etcd_wipe_only_the_primary_races() {
        let c = cfg(WatchdogMode::Required);
        let mut v = view(None, vec![]);
        v.initialize = None;
        v.status = None;
        let mut n = replica_node();
        n.no_leader_since = Some(Millis(10_000));
        // A replica does not race (it would promote beside the primary).
        let d = run(&c, 11_000, Some(&v), &replica(900, "x:1"), &n);
        assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);
        // The writable primary takes its key back.
        let d = run(&c, 11_000, Some(&v), &primary(1000), &leading(true));
        assert!(
            d.actions.ends_with(&[FeedWatchdog, AcquireLeader]),
            "{:?}",
            d.actions
        );
        // An empty node still bootstraps.
        let d = run(&c, 11_000, Some(&v), &LocalPostgres::default(), &n);
        assert!(d.actions.contains(&AcquireLeader), "{:?}", d.actions);
        // A stopped former primary adopts its data after two cycles, unless
        // another member runs.
        let d = run(&c, 10_500, Some(&v), &stopped(true), &n);
        assert!(!d.actions.contains(&AcquireLeader), "{:?}", d.actions);
        let d = run(&c, 12_000, Some(&v), &stopped(true), &n);
        assert!(d.actions.contains(&AcquireLeader), "{:?}", d.actions);
        let mut v2 = v.clone();
        v2.members = vec![member("a", Role::Primary, 1000, 1)];
        let d = run(&c, 12_000, Some(&v2), &stopped(true), &n);
        assert!(!d.actions.contains(&AcquireLeader), "{:?}", d.actions);
        // A ttl without a leader: the replicas elect as after any failover.
        let d = run(&c, 16_000, Some(&v), &replica(900, "x:1"), &n);
        assert!(!d.summary.contains("wiped"), "{}", d.summary);
    }

    #[test]
    fn a_handed_over_leader_waits_a_ttl_at_most() {
        let c = cfg(WatchdogMode::Required);
        let mut v = view(None, vec![member("a", Role::Replica, 900, 1)]);
        v.failover = Some(crate::cluster::FailoverRequest {
            leader: Some("b".into()),
            member: None,
            scheduled_at: None,
            allow_data_loss: false,
        });
        let mut n = replica_node();
        n.no_leader_since = Some(Millis(10_000));
        let d = run(&c, 11_000, Some(&v), &replica(1000, "x:1"), &n);
        assert!(d.summary.contains("handed over"), "{}", d.summary);
        // A ttl (6 s) later nobody took the key: it takes part again.
        let d = run(&c, 16_000, Some(&v), &replica(1000, "x:1"), &n);
        assert!(!d.summary.contains("handed over"), "{}", d.summary);
    }

    #[test]
    fn a_leader_key_without_a_lease_is_cleared() {
        let c = cfg(WatchdogMode::Required);
        let mut v = view(leader("a", 0), vec![]);
        let d = run(&c, 11_000, Some(&v), &replica(900, "x:1"), &replica_node());
        assert_eq!(
            d.actions,
            vec![KeepAlive, ClearUnleasedLeader { mod_revision: 7 }]
        );
        // A writable node stops first: whoever the key names may run too.
        let d = run(&c, 11_000, Some(&v), &primary(1000), &replica_node());
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                StopPostgres,
                ClearUnleasedLeader { mod_revision: 7 }
            ]
        );
        // Our own name without a lease: taken over, as after a restart.
        v.leader = leader("b", 0);
        let d = run(&c, 11_000, Some(&v), &stopped(true), &replica_node());
        assert_eq!(
            d.actions,
            vec![KeepAlive, TakeOverLeader { mod_revision: 7 }]
        );
    }

    #[test]
    fn a_leader_key_naming_no_member_is_replaced_after_the_grace() {
        let c = cfg(WatchdogMode::Required);
        let v = view(
            leader("ghost", 77),
            vec![member("a", Role::Replica, 900, 1)],
        );
        let mut n = replica_node();
        n.observe(&c, Some(&v), &replica(900, "x:1"), Millis(10_000));
        assert_eq!(n.orphan_leader, Some((7, Millis(10_000))));
        // Within the grace (two ttls): a follower that waits.
        let d = run(&c, 21_999, Some(&v), &replica(900, "x:1"), &n);
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, ReplaceOrphanLeader { .. }))
        );
        // Past it: replaced (never deleted), and a writable node stops first.
        let d = run(&c, 22_000, Some(&v), &replica(900, "x:1"), &n);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                ReplaceOrphanLeader {
                    mod_revision: 7,
                    name: "ghost".into()
                }
            ]
        );
        let d = run(&c, 22_000, Some(&v), &primary(1000), &n);
        assert_eq!(d.actions[..2], [KeepAlive, StopPostgres]);
        assert!(matches!(d.actions.last(), Some(ReplaceOrphanLeader { .. })));
        // The grace restarts when the key changes, and ends when its member
        // shows up.
        let mut v2 = v.clone();
        v2.leader.as_mut().unwrap().mod_revision = 8;
        n.observe(&c, Some(&v2), &replica(900, "x:1"), Millis(23_000));
        assert_eq!(n.orphan_leader, Some((8, Millis(23_000))));
        v2.members.push(member("ghost", Role::Primary, 1000, 1));
        n.observe(&c, Some(&v2), &replica(900, "x:1"), Millis(24_000));
        assert_eq!(n.orphan_leader, None);
        // A failed read changes nothing; our own name is never an orphan.
        n.observe(&c, Some(&v), &replica(900, "x:1"), Millis(25_000));
        n.observe(&c, None, &replica(900, "x:1"), Millis(99_000));
        assert_eq!(n.orphan_leader, Some((7, Millis(25_000))));
        let own = view(leader("b", 77), vec![]);
        n.observe(&c, Some(&own), &replica(900, "x:1"), Millis(99_000));
        assert_eq!(n.orphan_leader, None);
        // The placeholder outlives the grace of a fresh observer.
        assert!(c.orphan_placeholder_ttl_secs() as u64 * 1000 >= c.orphan_grace_ms());
        assert!(c.orphan_placeholder_ttl_secs() as u64 * 1000 > c.ttl_ms + c.retry_timeout_ms);
    }

    #[test]
    fn a_renewal_without_a_confirmation_does_not_extend_a_leader() {
        let c = cfg(WatchdogMode::Required);
        let mut n = leading(true);
        n.on_leader_txn(Millis(10_050), true);
        assert_eq!(n.fence_base(), Some(Millis(10_000)));
        // Renewed at 11 s, but the confirmation failed (no answer, or
        // denied): the leader's deadlines count from the confirmation.
        n.on_renewed(Millis(11_000), 9, false, c.ttl_ms);
        assert_eq!(n.fence_base(), Some(Millis(10_050)));
        assert_eq!(n.lease_deadline(&c), Some(Millis(16_050)));
        assert!(!feeds_at(&c, Millis(11_430), n.fence_base()));
        assert!(feeds_at(&c, Millis(11_429), n.fence_base()));
        // Confirmed again: both move on.
        n.on_leader_txn(Millis(11_010), true);
        assert_eq!(n.fence_base(), Some(Millis(11_000)));
        // A replica's feed rule (arming before taking the key) counts from
        // its renewal only.
        let mut r = replica_node();
        r.last_confirmed = Some(Millis(1_000));
        assert_eq!(r.fence_base(), Some(Millis(10_000)));
    }

    #[test]
    fn slack_scales_with_the_watchdog_timeout_and_config_checks_it() {
        let mut c = cfg(WatchdogMode::Required);
        c.ttl_ms = 30_000;
        c.safety_margin_ms = 5_000;
        // 25 s on an i6300esb lasts about 25.6 s: a fixed 500 ms is not enough.
        assert_eq!(c.feed_slack_ms(), 500 + 750);
        assert!(c.check_drift().is_ok());
        c.ttl_ms = 600_000;
        c.safety_margin_ms = 10_000;
        let e = c.check_drift().unwrap_err();
        assert!(e.contains("safety_margin") && e.contains("18200"), "{e}");
        for (ttl, sm) in [(6_000, 2_000), (30_000, 5_000), (8_000, 2_000)] {
            c.ttl_ms = ttl;
            c.safety_margin_ms = sm;
            assert!(c.check_drift().is_ok(), "ttl {ttl} safety_margin {sm}");
        }
    }

    #[test]
    fn stop_split_fits_the_budget() {
        for b in [1000, 1500, 5000, 120_000] {
            let (st, fast, imm) = stop_split_ms(b);
            assert!(st + fast + imm < b, "{b}");
            assert!(
                b - (st + fast + imm) >= b / 10 - 1,
                "room for the final status check"
            );
        }
    }

    #[test]
    fn must_stop_before_the_earlier_deadline() {
        let c = cfg(WatchdogMode::Automatic);
        let n = leading(true); // lease 16s, watchdog 14s, budget 1s
        assert_eq!(n.must_stop_at(&c), Some(Millis(13_000)));
        let n = leading(false);
        assert_eq!(n.must_stop_at(&c), Some(Millis(15_000)));
        assert!(n.may_stay_primary(&c, Millis(14_999)));
        assert!(!n.may_stay_primary(&c, Millis(15_000)));
        assert_eq!(io_timeout_ms(&c, &leading(true), Millis(12_500)), 500);
        assert_eq!(io_timeout_ms(&c, &replica_node(), Millis(12_500)), 2000);
    }

    #[test]
    fn leader_renews_then_feeds() {
        let c = cfg(WatchdogMode::Automatic);
        let v = view(
            leader("b", 9),
            vec![
                member("a", Role::Replica, 900, 1),
                member("b", Role::Primary, 1000, 1),
            ],
        );
        let d = run(&c, 11_000, Some(&v), &primary(1000), &leading(true));
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                ConfirmLeader {
                    status: Some(Status {
                        optime: 1000,
                        timeline: Some(1),
                        ..Default::default()
                    })
                },
                FeedWatchdog,
                SyncSlots {
                    slots: vec!["a".into()]
                },
            ]
        );
        assert_eq!(d.next_cycle, Millis(12_000));
    }

    /// A change of ttl on a confirmed leader (ttl 6 s, watchdog 4 s): to
    /// 12 s, the key moves first (the watchdog stays 4 s while the fence
    /// counts with the 6 s lease) and the watchdog grows to 10 s only once
    /// the key is on a 12 s lease; back to 6 s, the watchdog shrinks to 4 s
    /// first and the key moves only then. A move without an answer bounds
    /// the fence by the new lease's expiry; a candidate is not held by it.
    #[test]
    fn a_ttl_change_moves_the_key_and_the_watchdog_in_the_safe_order() {
        let mut c = cfg(WatchdogMode::Required);
        let members = || {
            vec![
                member("a", Role::Replica, 900, 1),
                member("b", Role::Primary, 1000, 1),
            ]
        };
        let v = view(leader("b", 9), members());
        let mut n = leading(true);
        n.lease_ttl_ms = Some(6000);
        n.watchdog_timeout_secs = Some(4);
        let moves = |d: &Decision| {
            d.actions
                .iter()
                .position(|a| matches!(a, MoveLease { mod_revision: 7 }))
        };
        // Grow: the move, then a feed at the old timeout.
        c.ttl_ms = 12_000;
        assert_eq!((n.fence_ttl_ms(&c), n.watchdog_target_secs(&c)), (6000, 4));
        let d = run(&c, 11_000, Some(&v), &primary(1000), &n);
        let fed = d.actions.iter().position(|a| *a == FeedWatchdog);
        assert!(moves(&d).is_some() && moves(&d) < fed, "{:?}", d.actions);
        assert!(!d.is_steady());
        n.on_lease_moved(Millis(11_000), Millis(11_010), 10, 12_000, Some(true));
        assert_eq!((n.lease_id, n.fence_ttl_ms(&c)), (Some(10), 12_000));
        assert_eq!(n.lease_deadline(&c), Some(Millis(23_000)));
        let v = view(leader("b", 10), members());
        let d = run(&c, 12_000, Some(&v), &primary(1000), &n);
        assert!(
            d.actions.contains(&SetWatchdogTimeout { secs: 10 }),
            "{:?}",
            d.actions
        );
        assert_eq!(moves(&d), None);
        n.on_watchdog_timeout_set(Millis(12_000), 10, Some(10));
        // Shrink: the watchdog first, the move in the next cycle.
        c.ttl_ms = 6000;
        assert_eq!(n.lease_deadline(&c), Some(Millis(17_000)));
        let d = run(&c, 13_000, Some(&v), &primary(1000), &n);
        assert!(
            d.actions.contains(&SetWatchdogTimeout { secs: 4 }),
            "{:?}",
            d.actions
        );
        assert_eq!(moves(&d), None, "moved before the watchdog shrank");
        // The feed rule holds the new timeout against the shorter budget.
        assert!(may_feed(&c, &n, Millis(12_000), 4));
        assert!(!may_feed(&c, &n, Millis(12_000), 10));
        n.on_watchdog_timeout_set(Millis(13_000), 4, Some(4));
        let d = run(&c, 14_000, Some(&v), &primary(1000), &n);
        assert!(moves(&d).is_some(), "{:?}", d.actions);
        // No answer: the key may be on a lease granted at 14 s that nobody
        // renews, gone at 20 s.
        n.on_lease_moved(Millis(14_000), Millis(14_010), 11, 6000, None);
        n.on_renewed(Millis(15_000), 10, false, 12_000);
        n.on_leader_txn(Millis(15_005), true);
        assert_eq!(n.lease_deadline(&c), Some(Millis(20_000)));
        // A failed SETTIMEOUT: the stop planned for the earlier deadline,
        // the feed rule with the longer timeout.
        let mut w = n.clone();
        w.on_watchdog_timeout_set(Millis(15_000), 10, None);
        assert_eq!(w.watchdog_timeout_secs, Some(10));
        assert_eq!(w.watchdog_deadline, Some(Millis(17_000)));
        // Lost the key: the bound no longer holds a candidate back.
        n.leader_confirmed = false;
        assert_eq!(n.lease_deadline(&c), Some(Millis(21_000)));
        n.on_acquired(Millis(16_000));
        assert_eq!(n.move_bound, None);
    }

    /// A streaming replica renews only when its lease is due (more than
    /// half the ttl and two cycles' time gone); a leader every cycle; a
    /// replica that races renews first, whatever is left of its lease.
    #[test]
    fn a_replica_renews_when_due_a_leader_every_cycle() {
        let mut c = cfg(WatchdogMode::Automatic);
        c.ttl_ms = 20_000;
        c.loop_wait_ms = 1000;
        c.retry_timeout_ms = 3000;
        let v = view(
            leader("a", 7),
            vec![
                member("a", Role::Primary, 1000, 1),
                member("b", Role::Replica, 1000, 1),
            ],
        );
        let n = replica_node(); // renewed at 10 s: lease to 30 s
        let at = |now| run(&c, now, Some(&v), &replica(1000, "127.0.0.1:5001"), &n);
        assert!(at(11_000).actions.is_empty(), "{:?}", at(11_000));
        assert!(at(11_000).is_steady());
        assert!(at(20_000).actions.is_empty());
        // 10 s left (half the ttl, more than 2 x (1 + 3) s): due.
        assert_eq!(at(20_001).actions, vec![KeepAlive]);
        // 30/10/10: two cycles are 40 s, more than the lease: every cycle.
        let mut slow = c.clone();
        slow.ttl_ms = 30_000;
        slow.loop_wait_ms = 10_000;
        slow.retry_timeout_ms = 10_000;
        let d = run(
            &slow,
            10_001,
            Some(&v),
            &replica(1000, "127.0.0.1:5001"),
            &n,
        );
        assert_eq!(d.actions, vec![KeepAlive]);
        // No lease yet: renew (grant).
        let none = NodeState::default();
        let d = run(
            &c,
            11_000,
            Some(&v),
            &replica(1000, "127.0.0.1:5001"),
            &none,
        );
        assert_eq!(d.actions, vec![KeepAlive]);
        // The leader key gone: the race renews first, lease fresh or not.
        let gone = view(None, v.members.clone());
        let d = run(&c, 11_000, Some(&gone), &orphan(1000), &n);
        assert_eq!(d.actions.first(), Some(&KeepAlive), "{d:?}");
        // A leader renews every cycle, and that is steady.
        let lv = view(
            leader("b", 9),
            vec![
                member("a", Role::Replica, 900, 1),
                member("b", Role::Primary, 1000, 1),
            ],
        );
        let d = run(&c, 10_500, Some(&lv), &primary(1000), &leading(true));
        assert_eq!(d.actions.first(), Some(&KeepAlive));
        assert!(d.is_steady(), "{d:?}");
    }

    /// Only "nothing changes" is steady: a race, a promotion, a demotion, a
    /// follow are not, so the agent decides them again on a read of its own.
    #[test]
    fn only_renew_confirm_feed_is_steady() {
        let c = cfg(WatchdogMode::Automatic);
        let members = vec![
            member("a", Role::Primary, 1000, 1),
            member("b", Role::Replica, 1000, 1),
        ];
        // The key gone (a race), a leader key naming us on another lease
        // (a take-over), a writable node under another's key (a demotion),
        // a replica following the wrong address (a follow).
        let cases = [
            (view(None, members.clone()), orphan(1000), replica_node()),
            (
                view(leader("b", 3), members.clone()),
                replica(1000, "127.0.0.1:5001"),
                replica_node(),
            ),
            (
                view(leader("a", 7), members.clone()),
                primary(1000),
                replica_node(),
            ),
            (
                view(leader("a", 7), members.clone()),
                replica(1000, "x:1"),
                replica_node(),
            ),
        ];
        for (v, l, n) in cases {
            let d = run(&c, 30_000, Some(&v), &l, &n);
            assert!(!d.is_steady(), "{d:?} taken as steady");
        }
    }

    #[test]
    fn next_cycle_never_later_than_must_stop() {
        let c = cfg(WatchdogMode::Automatic);
        let v = view(leader("b", 9), vec![]);
        let d = run(&c, 12_500, Some(&v), &primary(1000), &leading(true));
        assert_eq!(d.next_cycle, Millis(13_000));
    }

    #[test]
    fn leader_arms_when_not_armed_and_never_with_mode_off() {
        let v = view(leader("b", 9), vec![]);
        let d = run(
            &cfg(WatchdogMode::Automatic),
            11_000,
            Some(&v),
            &primary(1000),
            &leading(false),
        );
        assert_eq!(d.actions[2], ArmWatchdog { required: false });
        let d = run(
            &cfg(WatchdogMode::Required),
            11_000,
            Some(&v),
            &primary(1000),
            &leading(false),
        );
        assert_eq!(d.actions[2], ArmWatchdog { required: true });
        let d = run(
            &cfg(WatchdogMode::Off),
            11_000,
            Some(&v),
            &primary(1000),
            &leading(false),
        );
        assert!(
            !d.actions
                .iter()
                .any(|a| matches!(a, ArmWatchdog { .. } | FeedWatchdog))
        );
    }

    #[test]
    fn rule_w_stops_a_primary_past_its_fence() {
        let c = cfg(WatchdogMode::Automatic);
        let v = view(leader("b", 9), vec![]);
        let d = run(&c, 13_000, Some(&v), &primary(1000), &leading(true));
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog]);
        // Even when etcd cannot be read.
        let d = run(&c, 13_000, None, &primary(1000), &leading(true));
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog]);
        // Also in maintenance mode: a pause can be lifted from another node
        // while this one cannot see etcd (the old rule skipped it).
        let mut n = leading(false);
        n.paused = true;
        let d = run(&c, 15_000, None, &primary(1000), &n);
        assert_eq!(d.actions, vec![StopPostgres]);
    }

    #[test]
    fn blind_cycles() {
        let c = cfg(WatchdogMode::Automatic);
        let d = run(&c, 11_000, None, &primary(1000), &leading(true));
        assert_eq!(
            d.actions,
            vec![KeepAlive, ConfirmLeader { status: None }, FeedWatchdog]
        );
        // The stop first: the renewal may spend a whole timeout.
        let d = run(&c, 11_000, None, &primary(1000), &replica_node());
        assert_eq!(d.actions, vec![StopPostgres, KeepAlive]);
        let d = run(&c, 11_000, None, &replica(900, "x:1"), &replica_node());
        assert_eq!(d.actions, vec![KeepAlive]);
    }

    #[test]
    fn a_failed_renewal_never_cancels_the_fence() {
        // Defect: the blind stop came after KeepAlive, whose failure ended
        // the sequence, so an unconfirmed primary cut from etcd never stopped.
        assert!(KeepAlive.continues_on_failure());
        for a in [ConfirmLeader { status: None }, StopPostgres, AcquireLeader] {
            assert!(!a.continues_on_failure(), "{a:?}");
        }
        let c = cfg(WatchdogMode::Required);
        let mut n = replica_node();
        n.watchdog_armed = true;
        let d = run(&c, 11_000, None, &primary(1000), &n);
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog, KeepAlive]);
        // A stale pause flag changes nothing when etcd cannot be read.
        n.paused = true;
        let d = run(&c, 11_000, None, &primary(1000), &n);
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog, KeepAlive]);
    }

    #[test]
    fn pause_never_suspends_the_fence() {
        let c = cfg(WatchdogMode::Required);
        let mut v = view(leader("b", 9), vec![]);
        v.config.pause = true;
        // Past the fence (must stop at 13 s): rule W, paused or not.
        let mut n = leading(true);
        n.paused = true;
        let d = run(&c, 13_000, Some(&v), &primary(1000), &n);
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog]);
        let d = run(&c, 13_000, None, &primary(1000), &n);
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog]);
        // A paused replica disarms; a paused leader does not.
        let mut v = view(leader("a", 1), vec![]);
        v.config.pause = true;
        let d = run(&c, 11_000, Some(&v), &replica(900, "x:1"), &{
            let mut r = replica_node();
            r.watchdog_armed = true;
            r
        });
        assert_eq!(d.actions, vec![KeepAlive, DisarmWatchdog]);
    }

    fn unknown(in_recovery: bool) -> LocalPostgres {
        LocalPostgres {
            data_dir: initialized(!in_recovery),
            unknown: true,
            in_recovery,
            ..Default::default()
        }
    }

    #[test]
    fn unknown_is_not_stopped() {
        let c = cfg(WatchdogMode::Required);
        let v = view(leader("b", 9), vec![member("b", Role::Primary, 1000, 1)]);
        // Leader: holds the key, keeps the fence, never releases.
        let d = run(&c, 11_000, Some(&v), &unknown(false), &leading(true));
        assert_eq!(
            d.actions,
            vec![KeepAlive, ConfirmLeader { status: None }, FeedWatchdog]
        );
        // After a ttl of not knowing: try to stop, still no release.
        let mut n = leading(true);
        n.unknown_since = Some(Millis(4_000));
        let d = run(&c, 11_000, Some(&v), &unknown(false), &n);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                ConfirmLeader { status: None },
                FeedWatchdog,
                StopPostgres
            ]
        );
        // Rule W counts unknown as writable.
        let d = run(&c, 13_000, Some(&v), &unknown(false), &leading(true));
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog]);
        let d = run(&c, 13_000, None, &unknown(false), &leading(true));
        assert_eq!(d.actions, vec![StopPostgres, DisarmWatchdog]);
        // Someone else leads: an unknown that may be writable is stopped
        // before disarming; one last seen in recovery waits, armed stays.
        let v = view(leader("a", 1), vec![member("a", Role::Primary, 1000, 1)]);
        let mut n = replica_node();
        n.watchdog_armed = true;
        let d = run(&c, 11_000, Some(&v), &unknown(false), &n);
        assert_eq!(d.actions, vec![KeepAlive, StopPostgres, DisarmWatchdog]);
        let d = run(&c, 11_000, Some(&v), &unknown(true), &replica_node());
        assert_eq!(d.actions, vec![KeepAlive]);
        // No leader: never a candidate while unknown.
        let v = view(None, vec![]);
        let d = run(&c, 11_000, Some(&v), &unknown(true), &replica_node());
        assert_eq!(d.actions, vec![KeepAlive]);
        let d = run(&c, 11_000, None, &unknown(false), &replica_node());
        assert_eq!(d.actions, vec![StopPostgres, KeepAlive]);
    }

    #[test]
    fn an_unreadable_data_directory_is_not_empty() {
        let c = cfg(WatchdogMode::Required);
        let v = view(leader("b", 9), vec![]);
        let unreadable = DataDir::Unreadable("Permission denied".into());
        // Known stopped: releasing is safe (and lets a replica lead).
        let l = LocalPostgres {
            data_dir: unreadable.clone(),
            ..Default::default()
        };
        let d = run(&c, 11_000, Some(&v), &l, &leading(false));
        assert_eq!(d.actions, vec![KeepAlive, ReleaseLeader]);
        // Unknown: the key is held and the fence kept.
        let l = LocalPostgres {
            data_dir: unreadable,
            unknown: true,
            ..Default::default()
        };
        let d = run(&c, 11_000, Some(&v), &l, &leading(true));
        assert!(!d.actions.contains(&ReleaseLeader), "{:?}", d.actions);
        assert!(d.actions.contains(&FeedWatchdog), "{:?}", d.actions);
    }

    #[test]
    fn paused_does_nothing_automatic() {
        let c = cfg(WatchdogMode::Automatic);
        let mut v = view(leader("b", 9), vec![]);
        v.config.pause = true;
        let d = run(&c, 11_000, Some(&v), &primary(1000), &leading(true));
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                ConfirmLeader {
                    status: Some(Status {
                        optime: 1000,
                        timeline: Some(1),
                        ..Default::default()
                    })
                },
                // The fence holds in maintenance mode too.
                FeedWatchdog
            ]
        );
        // A replica with no leader neither starts, promotes nor acquires.
        let mut v = view(None, vec![]);
        v.config.pause = true;
        for local in [replica(1000, "x:1"), stopped(false)] {
            let d = run(&c, 11_000, Some(&v), &local, &replica_node());
            assert_eq!(d.actions, vec![KeepAlive]);
        }
        // A primary that lost its key while paused takes it back.
        let d = run(&c, 11_000, Some(&v), &primary(1000), &replica_node());
        assert_eq!(d.actions, vec![KeepAlive, AcquireLeader]);
    }

    #[test]
    fn foreign_data_directory_is_refused() {
        let c = cfg(WatchdogMode::Automatic);
        let mut v = view(leader("a", 1), vec![member("a", Role::Primary, 1000, 1)]);
        v.initialize = Some("77".into());
        let d = run(&c, 11_000, Some(&v), &stopped(false), &replica_node());
        assert_eq!(d.actions, vec![KeepAlive]);
        assert!(
            d.summary.contains("77") && d.summary.contains("42"),
            "{}",
            d.summary
        );
        // Never left writable, and the key goes only after the stop.
        let v2 = {
            let mut v2 = view(leader("b", 9), vec![]);
            v2.initialize = Some("77".into());
            v2
        };
        let d = run(&c, 11_000, Some(&v2), &primary(1000), &leading(true));
        assert_eq!(
            d.actions,
            vec![KeepAlive, StopPostgres, DisarmWatchdog, ReleaseLeader]
        );
    }

    #[test]
    fn leader_promotes_a_replica_after_fencing() {
        let c = cfg(WatchdogMode::Automatic);
        let v = view(leader("b", 9), vec![]);
        let d = run(&c, 11_000, Some(&v), &replica(1000, "x:1"), &leading(false));
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                ConfirmLeader { status: None },
                ArmWatchdog { required: false },
                Promote
            ]
        );
        assert_eq!(d.next_cycle, Millis(11_000));
    }

    #[test]
    fn bootstrap_sequence() {
        let c = cfg(WatchdogMode::Automatic);
        let mut v = view(None, vec![]);
        v.initialize = None;
        v.status = None;
        let empty = LocalPostgres::default();
        // 1. race for the key
        let d = run(&c, 11_000, Some(&v), &empty, &replica_node());
        assert_eq!(d.actions, vec![KeepAlive, AcquireLeader]);
        // 2. the winner runs initdb
        v.leader = leader("b", 9);
        let d = run(&c, 11_000, Some(&v), &empty, &leading(false));
        assert_eq!(
            d.actions,
            vec![KeepAlive, ConfirmLeader { status: None }, Initdb]
        );
        // ...having disarmed a watchdog armed for the race: initdb holds
        // the loop and there is nothing to fence yet.
        let d = run(&c, 11_000, Some(&v), &empty, &leading(true));
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                ConfirmLeader { status: None },
                DisarmWatchdog,
                Initdb
            ]
        );
        // 3. starts as primary, armed first
        let d = run(&c, 11_000, Some(&v), &stopped(true), &leading(false));
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                ConfirmLeader { status: None },
                ArmWatchdog { required: false },
                StartPrimary
            ]
        );
        // 4. records the system identifier
        let d = run(&c, 11_000, Some(&v), &primary(10), &leading(true));
        assert!(d.actions.ends_with(&[
            CreateReplicationUser,
            WriteInitialize {
                system_id: "42".into()
            }
        ]));
        // A loser with an empty directory waits for the leader to finish.
        v.leader = leader("a", 1);
        let d = run(&c, 11_000, Some(&v), &empty, &replica_node());
        assert_eq!(d.actions, vec![KeepAlive]);
        // Required mode arms before racing.
        let mut v2 = v.clone();
        v2.leader = None;
        let d = run(
            &cfg(WatchdogMode::Required),
            11_000,
            Some(&v2),
            &empty,
            &replica_node(),
        );
        assert_eq!(
            d.actions,
            vec![KeepAlive, ArmWatchdog { required: true }, AcquireLeader]
        );
        // nofailover never races.
        let mut c2 = c.clone();
        c2.nofailover = true;
        v.leader = None;
        let d = run(&c2, 11_000, Some(&v), &empty, &replica_node());
        assert_eq!(d.actions, vec![KeepAlive]);
    }

    #[test]
    fn leader_with_empty_dir_after_bootstrap_releases() {
        let c = cfg(WatchdogMode::Automatic);
        let v = view(leader("b", 9), vec![]);
        let d = run(
            &c,
            11_000,
            Some(&v),
            &LocalPostgres::default(),
            &leading(false),
        );
        assert_eq!(d.actions.last(), Some(&ReleaseLeader));
    }

    #[test]
    fn leader_former_replica_starts_read_only_first() {
        let c = cfg(WatchdogMode::Automatic);
        let v = view(leader("b", 9), vec![]);
        let d = run(&c, 11_000, Some(&v), &stopped(false), &leading(false));
        assert_eq!(d.actions.last(), Some(&StartReplica { upstream: None }));
        assert!(!d.actions.iter().any(|a| matches!(a, ArmWatchdog { .. })));
    }

    #[test]
    fn required_watchdog_that_fails_gives_up_the_key() {
        let c = cfg(WatchdogMode::Required);
        let v = view(leader("b", 9), vec![]);
        let mut n = leading(false);
        n.watchdog_arm_failed = true;
        let d = run(&c, 11_000, Some(&v), &primary(1000), &n);
        assert_eq!(d.actions[2..], [StopPostgres, ReleaseLeader]);
        let d = run(&c, 11_000, Some(&v), &replica(1000, "x:1"), &n);
        assert_eq!(d.actions[2..], [ReleaseLeader]);
    }

    #[test]
    fn key_with_our_name_from_a_previous_run_is_taken_over() {
        let c = cfg(WatchdogMode::Required);
        let v = view(leader("b", 3), vec![]);
        // A running primary: the key first, then (next cycle) the fence,
        // armed or fed against the lease the key is bound to.
        for node in [replica_node(), leading(true)] {
            let d = run(&c, 11_000, Some(&v), &primary(1000), &node);
            assert_eq!(
                d.actions,
                vec![KeepAlive, TakeOverLeader { mod_revision: 7 }]
            );
            assert_eq!(d.next_cycle, Millis(11_000), "confirmed at once");
        }
        // Nothing running: nothing to fence either.
        let d = run(&c, 11_000, Some(&v), &stopped(true), &replica_node());
        assert_eq!(
            d.actions,
            vec![KeepAlive, TakeOverLeader { mod_revision: 7 }]
        );
    }

    /// Past its stop deadline a confirmed leader runs only the fence steps;
    /// before it, or when not the leader, everything runs.
    #[test]
    fn past_the_stop_deadline_only_the_fence_runs() {
        let c = cfg(WatchdogMode::Automatic);
        let n = leading(true);
        let stop_at = n.must_stop_at(&c).unwrap();
        assert!(!n.past_stop_deadline(&c, stop_at.minus(1)));
        assert!(n.past_stop_deadline(&c, stop_at));
        assert!(!replica_node().past_stop_deadline(&c, stop_at));
        assert!(StopPostgres.is_fence() && DisarmWatchdog.is_fence());
        for a in [
            KeepAlive,
            ConfirmLeader { status: None },
            ReleaseLeader,
            StopCleanly,
            SyncSlots { slots: vec![] },
        ] {
            assert!(!a.is_fence(), "{a:?}");
        }
    }

    /// A forged address in the leader's member key does not move a replica
    /// that streams from the leader: only a replica whose stream is gone (or
    /// a new leader term) takes the published address.
    #[test]
    fn a_streaming_replica_ignores_a_changed_leader_address() {
        let c = cfg(WatchdogMode::Automatic);
        let a = member("a", Role::Primary, 1000, 1);
        let a_addr = conn_host_port(&a.info.conn_url).unwrap();
        let v = view(leader("a", 1), vec![a.clone()]);
        let streaming = replica(900, &a_addr);
        let mut n = replica_node();
        n.observe(&c, Some(&v), &streaming, Millis(10_000));
        assert_eq!(n.streaming_from, Some((5, a_addr.clone())));

        let mut forged = a.clone();
        forged.info.conn_url = "postgres://203.0.113.9:5432/postgres".into();
        let hostile = view(leader("a", 1), vec![forged.clone()]);
        n.observe(&c, Some(&hostile), &streaming, Millis(11_000));
        assert_eq!(n.streaming_from, Some((5, a_addr.clone())), "kept");
        let d = run(&c, 11_000, Some(&hostile), &streaming, &n);
        assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);
        let up = Upstream {
            member: "a".into(),
            conn_url: forged.info.conn_url.clone(),
            slot: None,
        };

        // The stream ended: the published address is all there is.
        let mut broken = streaming.clone();
        broken.streaming = false;
        let mut n2 = n.clone();
        n2.observe(&c, Some(&hostile), &broken, Millis(12_000));
        assert_eq!(n2.streaming_from, None);
        let d = run(&c, 12_000, Some(&hostile), &broken, &n2);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                Follow {
                    upstream: up.clone()
                }
            ]
        );

        // A new term of the leader key: its address is followed.
        let mut new_term = hostile.clone();
        new_term.leader.as_mut().unwrap().create_revision = 9;
        let mut n3 = n.clone();
        n3.observe(&c, Some(&new_term), &streaming, Millis(12_000));
        let d = run(&c, 12_000, Some(&new_term), &streaming, &n3);
        assert_eq!(d.actions, vec![KeepAlive, Follow { upstream: up }]);
    }

    /// `reinit --from`: an emptied replica clones from the member the
    /// request names while it runs and has an address, and streams from
    /// the leader after; otherwise (gone, stopped, itself, a request for
    /// another member) from the leader.
    #[test]
    fn reinit_clones_from_the_named_member_else_the_leader() {
        let c = cfg(WatchdogMode::Automatic);
        let a = member("a", Role::Primary, 1000, 1);
        let mut cc = member("cc", Role::Replica, 1000, 1);
        let leader_up = Upstream {
            member: "a".into(),
            conn_url: a.info.conn_url.clone(),
            slot: None,
        };
        let cc_up = Upstream {
            member: "cc".into(),
            conn_url: cc.info.conn_url.clone(),
            slot: None,
        };
        let mut v = view(leader("a", 1), vec![a.clone(), cc.clone()]);
        v.reinit = Some(crate::cluster::ReinitRequest {
            id: "1".into(),
            member: "b".into(),
            from: Some("cc".into()),
            mod_revision: 3,
        });
        let d = run(
            &c,
            11_000,
            Some(&v),
            &LocalPostgres::default(),
            &replica_node(),
        );
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                Clone { upstream: cc_up },
                StartReplica {
                    upstream: Some(leader_up.clone())
                }
            ],
            "{}",
            d.summary
        );
        assert!(d.summary.contains("cloning from cc"), "{}", d.summary);
        let from_leader = |v: &ClusterView| {
            let d = run(
                &c,
                11_000,
                Some(v),
                &LocalPostgres::default(),
                &replica_node(),
            );
            assert_eq!(
                d.actions,
                vec![
                    KeepAlive,
                    Clone {
                        upstream: leader_up.clone()
                    },
                    StartReplica {
                        upstream: Some(leader_up.clone())
                    }
                ]
            );
        };
        // The source stopped meanwhile: the leader.
        cc.info.state = "stopped".into();
        let mut stopped = v.clone();
        stopped.members[1] = cc;
        from_leader(&stopped);
        // Gone, or this member itself, or a request for another member.
        let mut gone = v.clone();
        gone.members.pop();
        from_leader(&gone);
        let mut itself = v.clone();
        itself.reinit.as_mut().unwrap().from = Some("b".into());
        from_leader(&itself);
        let mut other = v.clone();
        other.reinit.as_mut().unwrap().member = "cc".into();
        from_leader(&other);
    }

    #[test]
    fn follower_branches() {
        let c = cfg(WatchdogMode::Automatic);
        let a = member("a", Role::Primary, 1000, 2);
        let a_addr = conn_host_port(&a.info.conn_url).unwrap();
        let up = Upstream {
            member: "a".into(),
            conn_url: a.info.conn_url.clone(),
            slot: None,
        };
        let v = view(leader("a", 1), vec![a.clone()]);
        let n = replica_node();

        // A stale primary demotes, and disarms only after the stop.
        let mut armed = n.clone();
        armed.watchdog_armed = true;
        let d = run(&c, 11_000, Some(&v), &primary(1000), &armed);
        assert_eq!(d.actions, vec![KeepAlive, StopPostgres, DisarmWatchdog]);
        // A stopped replica disarms a leftover watchdog.
        let d = run(&c, 11_000, Some(&v), &replica(900, &a_addr), &armed);
        assert_eq!(d.actions, vec![KeepAlive, DisarmWatchdog]);

        let d = run(&c, 11_000, Some(&v), &LocalPostgres::default(), &n);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                Clone {
                    upstream: up.clone()
                },
                StartReplica {
                    upstream: Some(up.clone())
                }
            ]
        );
        let d = run(&c, 11_000, Some(&v), &stopped(true), &n);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                Rewind {
                    upstream: up.clone()
                },
                StartReplica {
                    upstream: Some(up.clone())
                }
            ]
        );
        let d = run(&c, 11_000, Some(&v), &stopped(false), &n);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                StartReplica {
                    upstream: Some(up.clone())
                }
            ]
        );
        let d = run(&c, 11_000, Some(&v), &replica(900, "elsewhere:1"), &n);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                Follow {
                    upstream: up.clone()
                }
            ]
        );
        let d = run(&c, 11_000, Some(&v), &replica(900, &a_addr), &n);
        assert_eq!(d.actions, vec![KeepAlive]);

        // A replica stuck on an old timeline is rewound after the stall limit.
        let mut stuck = replica(900, &a_addr);
        stuck.streaming = false;
        let mut n2 = n.clone();
        n2.observe(&c, Some(&v), &stuck, Millis(11_000));
        assert_eq!(n2.stalled_since, Some(Millis(11_000)));
        assert_eq!(
            run(&c, 12_000, Some(&v), &stuck, &n2).actions,
            vec![KeepAlive]
        );
        let d = run(&c, 11_000 + stall_limit_ms(&c), Some(&v), &stuck, &n2);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                StopPostgres,
                Rewind {
                    upstream: up.clone()
                },
                StartReplica {
                    upstream: Some(up.clone())
                }
            ]
        );
        // postgresql.use_pg_rewind off (the config key's): a former
        // primary starts as a replica without a rewind, and a stuck
        // replica is left running for `reinit`.
        let no_rewind = HaConfig {
            use_pg_rewind: false,
            ..c.clone()
        };
        let d = run(&no_rewind, 11_000, Some(&v), &stopped(true), &n);
        assert_eq!(
            d.actions,
            vec![
                KeepAlive,
                StartReplica {
                    upstream: Some(up.clone())
                }
            ]
        );
        assert!(d.summary.contains("use_pg_rewind is off"), "{}", d.summary);
        let d = run(
            &no_rewind,
            11_000 + stall_limit_ms(&c),
            Some(&v),
            &stuck,
            &n2,
        );
        assert_eq!(d.actions, vec![KeepAlive]);
        assert!(d.summary.contains("reinit"), "{}", d.summary);
        // Streaming again clears it.
        n2.observe(&c, Some(&v), &replica(900, &a_addr), Millis(12_000));
        assert_eq!(n2.stalled_since, None);

        // A leader that is not running yet: no clone, no rewind.
        let mut a_down = a.clone();
        a_down.info.state = "stopped".into();
        let v2 = view(leader("a", 1), vec![a_down]);
        assert_eq!(
            run(&c, 11_000, Some(&v2), &LocalPostgres::default(), &n).actions,
            vec![KeepAlive]
        );
        assert_eq!(
            run(&c, 11_000, Some(&v2), &stopped(true), &n).actions,
            vec![KeepAlive]
        );
        // A leader without a member key: wait.
        let v3 = view(leader("a", 1), vec![]);
        assert_eq!(
            run(&c, 11_000, Some(&v3), &stopped(false), &n).actions,
            vec![KeepAlive]
        );
    }

    fn election_view(others: Vec<Member>, me_lsn: u64) -> ClusterView {
        let mut ms = others;
        ms.push(member("b", Role::Replica, me_lsn, 1));
        view(None, ms)
    }

    #[test]
    fn failover_best_candidate_takes_the_key() {
        let c = cfg(WatchdogMode::Automatic);
        let v = election_view(
            vec![
                member("a", Role::Replica, 900, 1),
                member("c", Role::Replica, 1000, 1),
            ],
            1000,
        );
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &replica_node());
        assert_eq!(d.actions, vec![KeepAlive, AcquireLeader], "{}", d.summary);
        // Required mode arms before the key.
        let d = run(
            &cfg(WatchdogMode::Required),
            11_000,
            Some(&v),
            &orphan(1000),
            &replica_node(),
        );
        assert_eq!(
            d.actions,
            vec![KeepAlive, ArmWatchdog { required: true }, AcquireLeader]
        );
    }

    #[test]
    fn failover_losers_wait() {
        let c = cfg(WatchdogMode::Automatic);
        let n = replica_node();
        // Someone ahead.
        let v = election_view(vec![member("c", Role::Replica, 1001, 1)], 1000);
        assert_eq!(
            run(&c, 11_000, Some(&v), &orphan(1000), &n).actions,
            vec![KeepAlive]
        );
        // A tie goes to the smaller name.
        let v = election_view(vec![member("a", Role::Replica, 1000, 1)], 1000);
        assert_eq!(
            run(&c, 11_000, Some(&v), &orphan(1000), &n).actions,
            vec![KeepAlive]
        );
        // ...unless that one is nofailover or not running.
        let mut a = member("a", Role::Replica, 1000, 1);
        a.info.tags = Tags {
            nofailover: true,
            ..Default::default()
        };
        let v = election_view(vec![a], 1000);
        assert!(
            run(&c, 11_000, Some(&v), &orphan(1000), &n)
                .actions
                .contains(&AcquireLeader)
        );
        // A member key bound to no lease (written by hand or by a hostile
        // writer) claiming any position never holds a failover off.
        let mut junk = member("junk", Role::Replica, u64::MAX >> 2, 1);
        junk.lease = Some(0);
        let v = election_view(vec![junk.clone()], 1000);
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &n);
        assert!(d.actions.contains(&AcquireLeader), "{}", d.summary);
        junk.lease = Some(77);
        let v = election_view(vec![junk], 1000);
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &n);
        assert!(!d.actions.contains(&AcquireLeader), "{}", d.summary);
        // Lagging beyond maximum_lag_on_failover.
        let mut v = election_view(vec![], 1000);
        v.status = Some(Status {
            optime: 1000 + (1 << 20) + 1,
            timeline: Some(1),
            ..Default::default()
        });
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &n);
        assert_eq!(d.actions, vec![KeepAlive]);
        assert!(d.summary.contains("maximum_lag_on_failover"));
        // Timeline behind the cluster's.
        let mut v = election_view(vec![], 1000);
        v.status = Some(Status {
            optime: 1000,
            timeline: Some(2),
            ..Default::default()
        });
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &n);
        assert_eq!(d.actions, vec![KeepAlive]);
        assert!(d.summary.contains("timeline"));
        // Our published position is stale: publish first, look again soon.
        let v = election_view(vec![], 990);
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &n);
        assert_eq!(d.actions, vec![KeepAlive]);
        assert_eq!(d.next_cycle, Millis(11_000 + RECHECK_MS));
        // ...but not forever: a position that keeps moving does not block.
        let mut waited = n.clone();
        waited.no_leader_since = Some(Millis(11_000 - 2 * RECHECK_MS));
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &waited);
        assert!(d.actions.contains(&AcquireLeader), "{d:?}");
        // nofailover never takes part.
        let mut c2 = c.clone();
        c2.nofailover = true;
        let v = election_view(vec![], 1000);
        assert_eq!(
            run(&c2, 11_000, Some(&v), &orphan(1000), &n).actions,
            vec![KeepAlive]
        );
    }

    /// etcd lost the leader's lease early (etcd#15247): the key is gone while
    /// the old primary's fence still runs. Replicas that see it alive wait a
    /// ttl; the old primary takes its key back at once, ties included.
    #[test]
    fn a_lost_key_goes_back_to_a_primary_that_still_runs() {
        let c = cfg(WatchdogMode::Automatic);
        let n = NodeState {
            no_leader_since: Some(Millis(11_000)),
            ..replica_node()
        };
        let v = election_view(vec![member("c", Role::Replica, 900, 1)], 1000);
        // Still streaming: not racing, for a ttl from the loss.
        let d = run(&c, 11_000, Some(&v), &replica(1000, "x:1"), &n);
        assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);
        assert!(d.summary.contains("may still be writable"), "{}", d.summary);
        let d = run(
            &c,
            11_000 + c.ttl_ms - 1,
            Some(&v),
            &replica(1000, "x:1"),
            &n,
        );
        assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);
        let d = run(&c, 11_000 + c.ttl_ms, Some(&v), &replica(1000, "x:1"), &n);
        assert!(d.actions.contains(&AcquireLeader), "{}", d.summary);
        // Not streaming, but a leased member key, published since the key
        // was gone, says a member runs as primary on our timeline.
        let mut alive = member("a", Role::Primary, 900, 1);
        alive.info.leaderless_rev = Some(40);
        let v = election_view(vec![alive.clone()], 1000);
        let d = run(&c, 11_500, Some(&v), &orphan(1000), &n);
        assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);
        assert!(
            d.summary.contains("a still runs as primary"),
            "{}",
            d.summary
        );
        // ...published before the loss, on an older timeline, or written
        // without a lease: no.
        let v = election_view(vec![member("a", Role::Primary, 900, 1)], 1000);
        let d = run(&c, 11_500, Some(&v), &orphan(1000), &n);
        assert!(d.actions.contains(&AcquireLeader), "{}", d.summary);
        let mut old_tl = alive.clone();
        old_tl.info.timeline = Some(0);
        let v = election_view(vec![old_tl], 1000);
        let d = run(&c, 11_500, Some(&v), &orphan(1000), &n);
        assert!(d.actions.contains(&AcquireLeader), "{}", d.summary);
        let mut junk = alive;
        junk.lease = Some(0);
        let v = election_view(vec![junk], 1000);
        let d = run(&c, 11_500, Some(&v), &orphan(1000), &n);
        assert!(d.actions.contains(&AcquireLeader), "{}", d.summary);
        // The old primary races at once, without a publishing round, and a
        // replica that published the same position does not beat it.
        let mut v = election_view(vec![member("a", Role::Replica, 1000, 1)], 900);
        v.members.retain(|m| m.name != "b");
        let d = run(&c, 11_000, Some(&v), &primary(1000), &n);
        assert!(d.actions.contains(&AcquireLeader), "{}", d.summary);
        // Nor one streaming from it whose position, published after the
        // primary's probe (the primary still writes), looks ahead of it
        // (CI: the primary stopped and a failover followed).
        let mut v = election_view(vec![member("a", Role::Replica, 1010, 1)], 900);
        v.members.retain(|m| m.name != "b");
        let mut writing = primary(1000);
        writing.replication = vec![crate::cluster::ReplicaStat {
            name: "a".into(),
            streaming: true,
            flush: Lsn(1000),
        }];
        let d = run(&c, 11_000, Some(&v), &writing, &n);
        assert!(d.actions.contains(&AcquireLeader), "{}", d.summary);
        // A member on a later timeline is ahead of it.
        let mut v = election_view(vec![member("a", Role::Replica, 1010, 2)], 900);
        v.members.retain(|m| m.name != "b");
        let d = run(&c, 11_000, Some(&v), &primary(1000), &n);
        assert!(!d.actions.contains(&AcquireLeader), "{}", d.summary);
    }
    #[test]
    fn no_leader_stopped_node_starts_read_only_and_empty_waits() {
        let c = cfg(WatchdogMode::Automatic);
        let v = election_view(vec![], 1000);
        let d = run(&c, 11_000, Some(&v), &stopped(true), &replica_node());
        assert_eq!(d.actions, vec![KeepAlive, StartReplica { upstream: None }]);
        let d = run(
            &c,
            11_000,
            Some(&v),
            &LocalPostgres::default(),
            &replica_node(),
        );
        assert_eq!(d.actions, vec![KeepAlive]);
    }

    #[test]
    fn unconfirmed_primary_without_leader_competes_or_stops() {
        let c = cfg(WatchdogMode::Automatic);
        let n = replica_node();
        let v = election_view(vec![member("a", Role::Replica, 500, 1)], 1000);
        assert_eq!(
            run(&c, 11_000, Some(&v), &primary(1000), &n).actions,
            vec![KeepAlive, AcquireLeader]
        );
        let v = election_view(vec![member("a", Role::Replica, 2000, 1)], 1000);
        assert_eq!(
            run(&c, 11_000, Some(&v), &primary(1000), &n).actions,
            vec![KeepAlive, StopPostgres]
        );
    }

    #[test]
    fn switchover_decisions() {
        let c = cfg(WatchdogMode::Automatic);
        let mut a = member("a", Role::Replica, 1000, 1);
        a.info.streaming = true;
        let mut v = view(
            leader("b", 9),
            vec![a.clone(), member("b", Role::Primary, 1000, 1)],
        );
        v.failover = Some(crate::cluster::FailoverRequest {
            leader: Some("b".into()),
            member: Some("a".into()),
            scheduled_at: None,
            allow_data_loss: false,
        });
        // The leader stops, releases, then disarms.
        let d = run(&c, 11_000, Some(&v), &primary(1000), &leading(true));
        let candidate = Upstream {
            member: "a".into(),
            conn_url: a.info.conn_url.clone(),
            slot: None,
        };
        assert!(
            d.actions.ends_with(&[
                StopCleanly,
                ConfirmHandover { candidate },
                ReleaseLeader,
                DisarmWatchdog
            ]),
            "{:?}",
            d.actions
        );
        // A non-streaming or lagging target is refused and the request cleared.
        let mut v2 = v.clone();
        v2.members[0].info.streaming = false;
        let d = run(&c, 11_000, Some(&v2), &primary(1000), &leading(true));
        assert_eq!(d.actions.last(), Some(&DeleteFailover));
        assert!(d.summary.contains("not streaming"), "{}", d.summary);
        let d = run(
            &c,
            11_000,
            Some(&v),
            &primary(1000 + (1 << 20) + 1),
            &leading(true),
        );
        assert!(d.summary.contains("behind"), "{}", d.summary);
        // With no leader, the named member takes the key; the old leader and
        // the others wait.
        let mut nv = v.clone();
        nv.leader = None;
        let mut ca = c.clone();
        ca.name = "a".into();
        assert!(
            run(
                &ca,
                11_000,
                Some(&nv),
                &replica(1000, "x:1"),
                &replica_node()
            )
            .actions
            .contains(&AcquireLeader)
        );
        let d = run(&c, 11_000, Some(&nv), &stopped(true), &replica_node());
        assert!(
            !d.actions.contains(&AcquireLeader)
                && !d.actions.iter().any(|a| matches!(a, StartReplica { .. })),
            "{d:?}"
        );
        let mut cc = c.clone();
        cc.name = "c".into();
        nv.members.push(member("c", Role::Replica, 2000, 1));
        assert!(
            !run(
                &cc,
                11_000,
                Some(&nv),
                &replica(2000, "x:1"),
                &replica_node()
            )
            .actions
            .contains(&AcquireLeader)
        );
        // The new leader clears the request.
        let mut done = v.clone();
        done.leader = leader("a", 9);
        let d = run(&ca, 11_000, Some(&done), &primary(1000), &leading(true));
        assert_eq!(d.actions.last(), Some(&DeleteFailover));
    }

    /// Quorum mode: the key {a, c} asks for 2 of them. A switchover's
    /// old leader narrows it to the candidate alone once the hand-over is
    /// checked, so that the candidate takes the key in its first cycle
    /// without a leader; with the key as it was, it would wait a loop_wait
    /// for c to publish a position after the leader left.
    #[test]
    fn a_switchover_narrows_the_sync_key_to_the_checked_candidate() {
        let mut c = cfg(WatchdogMode::Automatic);
        c.sync = SyncConfig {
            mode: crate::config::SyncMode::Quorum,
            node_count: 1,
            ..Default::default()
        };
        let streaming = |name: &str| {
            let mut m = member(name, Role::Replica, 1000, 1);
            m.info.streaming = true;
            m
        };
        let key = |standbys: &str, quorum: u64, rev: i64| {
            Some(crate::cluster::SyncState {
                leader: Some("b".into()),
                sync_standby: Some(standbys.into()),
                quorum: Some(quorum),
                mod_revision: rev,
            })
        };
        let mut v = view(
            leader("b", 9),
            vec![
                streaming("a"),
                member("b", Role::Primary, 1000, 1),
                streaming("c"),
            ],
        );
        v.sync = key("a,c", 2, 50);
        v.revision = 60;
        v.failover = Some(crate::cluster::FailoverRequest {
            leader: Some("b".into()),
            member: None,
            scheduled_at: None,
            allow_data_loss: false,
        });
        let d = run(&c, 11_000, Some(&v), &primary(1000), &leading(true));
        let only_a = KeySet {
            names: ["a".to_string()].into(),
            quorum: 1,
        };
        let candidate = Upstream {
            member: "a".into(),
            conn_url: v.members[0].info.conn_url.clone(),
            slot: None,
        };
        assert!(
            d.actions.ends_with(&[
                StopCleanly,
                ConfirmHandover { candidate },
                WriteSync {
                    standbys: only_a,
                    mod_revision: Some(50),
                },
                ReleaseLeader,
                DisarmWatchdog
            ]),
            "{:?}",
            d.actions
        );

        // The leader key gone, the key as b left it: a takes the leader key
        // at once, although c has published nothing since.
        let mut ca = c.clone();
        ca.name = "a".into();
        let mut nv = v.clone();
        nv.leader = None;
        nv.members[1].info.state = "stopped".into();
        nv.sync = key("a", 1, 61);
        nv.revision = 62;
        let d = run(&ca, 11_000, Some(&nv), &orphan(1000), &replica_node());
        assert!(d.actions.contains(&AcquireLeader), "{d:?}");
        // With the key as it was, a waits for c (a loop_wait: member keys
        // wake nobody); c, named by no key now, is no candidate.
        let mut wide = nv.clone();
        wide.sync = key("a,c", 2, 50);
        let d = run(&ca, 11_000, Some(&wide), &orphan(1000), &replica_node());
        assert!(!d.actions.contains(&AcquireLeader), "{d:?}");
        assert_eq!(d.next_cycle, Millis(11_000 + c.loop_wait_ms));
        let mut cc = c.clone();
        cc.name = "c".into();
        let d = run(&cc, 11_000, Some(&nv), &orphan(1000), &replica_node());
        assert!(!d.actions.contains(&AcquireLeader), "{d:?}");

        // Mode on with one standby: the key names only the candidate
        // already, nothing to write.
        c.sync.mode = crate::config::SyncMode::On;
        v.sync = Some(crate::cluster::SyncState {
            quorum: None,
            ..key("a", 1, 50).unwrap()
        });
        let d = run(&c, 11_000, Some(&v), &primary(1000), &leading(true));
        assert!(
            !d.actions.iter().any(|a| matches!(a, WriteSync { .. }))
                && d.actions.ends_with(&[ReleaseLeader, DisarmWatchdog]),
            "{:?}",
            d.actions
        );
    }

    /// Quorum mode, key {a, c} quorum 2: c alone may hold a commit. A
    /// request naming a (`failover --to a` while the dead leader b's lease
    /// runs out, or a switchover b never acted on) is no hand-over: a waits
    /// for c's position published after the leader left, and gives way to
    /// it when c is ahead.
    #[test]
    fn a_request_naming_a_standby_is_no_handover_when_its_leader_died() {
        let mut c = cfg(WatchdogMode::Automatic);
        c.name = "a".into();
        c.sync = SyncConfig {
            mode: crate::config::SyncMode::Quorum,
            node_count: 1,
            ..Default::default()
        };
        let mut v = view(
            None,
            vec![
                member("a", Role::Replica, 1000, 1),
                member("c", Role::Replica, 1200, 1),
            ],
        );
        v.sync = Some(crate::cluster::SyncState {
            leader: Some("b".into()),
            sync_standby: Some("a,c".into()),
            quorum: Some(2),
            mod_revision: 50,
        });
        v.revision = 60;
        v.failover = Some(crate::cluster::FailoverRequest {
            leader: Some("b".into()),
            member: Some("a".into()),
            scheduled_at: None,
            allow_data_loss: false,
        });
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &replica_node());
        assert!(!d.actions.contains(&AcquireLeader), "{d:?}");
        assert!(d.summary.contains("2 needed"), "{}", d.summary);
        // c published since the leader left, and is ahead: still not a.
        v.members[1].info.leaderless_rev = Some(55);
        let d = run(&c, 11_000, Some(&v), &orphan(1000), &replica_node());
        assert!(!d.actions.contains(&AcquireLeader), "{d:?}");
        assert!(d.summary.contains("ahead"), "{}", d.summary);
    }

    #[test]
    fn decide_is_deterministic() {
        let c = cfg(WatchdogMode::Automatic);
        let v = election_view(vec![member("a", Role::Replica, 900, 1)], 1000);
        let l = replica(1000, "x:1");
        let n = replica_node();
        assert_eq!(
            run(&c, 11_000, Some(&v), &l, &n),
            run(&c, 11_000, Some(&v), &l, &n)
        );
    }

    /// Defect 10's last item: a replica streams without its slot until the
    /// leader's status (written in its term) lists the slot, then switches
    /// to it; while it streams with the slot it keeps it; a status without
    /// slots (an older leader) is unknown and never holds the stream back.
    #[test]
    fn replica_streams_without_its_slot_until_the_leader_lists_it() {
        let c = cfg(WatchdogMode::Automatic);
        let a = member("a", Role::Primary, 1000, 1);
        let a_addr = conn_host_port(&a.info.conn_url).unwrap();
        let n = replica_node();
        let with_status = |slots: Option<&[&str]>, mod_revision: i64| {
            let mut v = view(leader("a", 1), vec![a.clone()]);
            v.status = Some(Status {
                optime: 1000,
                timeline: Some(1),
                slots: slots.map(|s| s.iter().map(|n| (n.to_string(), 100)).collect()),
                mod_revision,
                ..Default::default()
            });
            v
        };
        let up = |slot: Option<&str>| Upstream {
            member: "a".into(),
            conn_url: a.info.conn_url.clone(),
            slot: slot.map(String::from),
        };
        let start = |slot: Option<&str>| {
            vec![
                KeepAlive,
                StartReplica {
                    upstream: Some(up(slot)),
                },
            ]
        };
        let follow = |slot: Option<&str>| vec![KeepAlive, Follow { upstream: up(slot) }];

        // The leader key was created at revision 5 (`leader()`).
        type Case<'a> = (Option<&'a [&'a str]>, i64, Option<&'a str>, &'a str);
        let cases: [Case; 5] = [
            (Some(&["b"]), 4, None, "no status in its term"),
            (None, 6, None, "lists no slots"),
            (Some(&[]), 6, None, "has no slot b yet"),
            (Some(&["c", "a"]), 6, None, "has no slot b yet"),
            (Some(&["b"]), 6, Some("b"), ""),
        ];
        for (slots, rev, want, why) in cases {
            let v = with_status(slots, rev);
            let d = run(&c, 11_000, Some(&v), &stopped(false), &n);
            assert_eq!(d.actions, start(want), "{slots:?} {rev}: {}", d.summary);
            if want.is_none() {
                assert!(
                    d.summary.contains("without a replication slot") && d.summary.contains(why),
                    "{}",
                    d.summary
                );
            }
        }
        // No status key at all: the same as unknown.
        let mut v = with_status(None, 6);
        v.status = None;
        let d = run(&c, 11_000, Some(&v), &stopped(false), &n);
        assert_eq!(d.actions, start(None), "{}", d.summary);

        // Streaming without the slot: once it is listed, switch to it.
        let slotless = replica(900, &a_addr);
        let listed = with_status(Some(&["b"]), 6);
        let unlisted = with_status(Some(&[]), 6);
        let d = run(&c, 11_000, Some(&listed), &slotless, &n);
        assert_eq!(d.actions, follow(Some("b")), "{}", d.summary);
        assert!(
            d.summary.contains("switching to replication slot b"),
            "{}",
            d.summary
        );
        let d = run(&c, 11_000, Some(&unlisted), &slotless, &n);
        assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);

        // Streaming with it: kept, whatever the status says (it may lag).
        let mut with_slot = slotless.clone();
        with_slot.slot = Some("b".into());
        for v in [
            &listed,
            &unlisted,
            &with_status(None, 6),
            &with_status(None, 4),
        ] {
            let d = run(&c, 11_000, Some(v), &with_slot, &n);
            assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);
        }
        // Configured with it but not streaming, and it is not listed: the
        // stream is refused for as long as it is missing: go without.
        let mut refused = with_slot.clone();
        refused.streaming = false;
        let d = run(&c, 11_000, Some(&unlisted), &refused, &n);
        assert_eq!(d.actions, follow(None), "{}", d.summary);
        let d = run(&c, 11_000, Some(&listed), &refused, &n);
        assert_eq!(d.actions, vec![KeepAlive], "{}", d.summary);

        // A new leader's address: the slot on it must be listed too.
        let d = run(&c, 11_000, Some(&unlisted), &replica(900, "old:1"), &n);
        assert_eq!(d.actions, follow(None), "{}", d.summary);
        let mut elsewhere = with_slot.clone();
        elsewhere.following = Some("old:1".into());
        let d = run(&c, 11_000, Some(&unlisted), &elsewhere, &n);
        assert_eq!(d.actions, follow(None), "{}", d.summary);

        // use_slots off: never a slot, and one in use is dropped.
        let mut off = c.clone();
        off.use_slots = false;
        let d = run(&off, 11_000, Some(&listed), &stopped(false), &n);
        assert_eq!(d.actions, start(None), "{}", d.summary);
        assert!(!d.summary.contains("without a replication slot"));
        let d = run(&off, 11_000, Some(&listed), &with_slot, &n);
        assert_eq!(d.actions, follow(None), "{}", d.summary);
    }

    /// The leader writes the slots it has into `status` (Patroni's layout):
    /// all physical slots with their restart LSNs, and its members' among
    /// them as `retain_slots`; with use_slots off it keeps no member slot.
    #[test]
    fn leader_publishes_its_slots_in_status() {
        let c = cfg(WatchdogMode::Automatic);
        let v = view(
            leader("b", 9),
            vec![
                member("a", Role::Replica, 900, 1),
                member("b", Role::Primary, 1000, 1),
            ],
        );
        let mut local = primary(1000);
        local.slots = Some([("a".to_string(), Lsn(800)), ("x".to_string(), Lsn(50))].into());
        let d = run(&c, 11_000, Some(&v), &local, &leading(true));
        let want = Status {
            optime: 1000,
            timeline: Some(1),
            slots: Some([("a".to_string(), 800), ("x".to_string(), 50)].into()),
            retain_slots: vec!["a".into()],
            mod_revision: 0,
        };
        assert_eq!(d.actions[1], ConfirmLeader { status: Some(want) });
        assert!(d.actions.contains(&SyncSlots {
            slots: vec!["a".into()]
        }));
        // Unknown slots on the leader stay unknown in status.
        let d = run(&c, 11_000, Some(&v), &primary(1000), &leading(true));
        assert!(
            matches!(&d.actions[1], ConfirmLeader { status: Some(s) } if s.slots.is_none()),
            "{:?}",
            d.actions
        );
        let mut off = c.clone();
        off.use_slots = false;
        let d = run(&off, 11_000, Some(&v), &local, &leading(true));
        assert!(d.actions.contains(&SyncSlots { slots: vec![] }));
        assert!(
            matches!(&d.actions[1], ConfirmLeader { status: Some(s) } if s.retain_slots.is_empty() && s.slots.is_some()),
            "{:?}",
            d.actions
        );
    }
    #[test]
    fn a_leader_whose_postgres_died_restarts_it_until_primary_start_timeout() {
        let mut c = cfg(WatchdogMode::Automatic);
        c.primary_start_timeout_ms = 5_000;
        let v = view(leader("b", 9), vec![member("b", Role::Primary, 1000, 1)]);
        let mut n = leading(true);
        // Writable in this term, then found stopped (it died).
        n.observe(&c, Some(&v), &primary(1000), Millis(10_000));
        assert!(n.led_writable);
        n.observe(&c, Some(&v), &stopped(true), Millis(10_100));
        assert_eq!(n.primary_down_since, Some(Millis(10_100)));
        let d = run(&c, 10_100, Some(&v), &stopped(true), &n);
        assert!(d.actions.contains(&Action::StartPrimary), "{d:?}");
        assert!(!d.actions.contains(&Action::ReleaseLeader));
        // Still down at the timeout: the key goes, the watchdog too (it is
        // known stopped), and no start.
        n.observe(&c, Some(&v), &stopped(true), Millis(15_100));
        let d = run(&c, 15_100, Some(&v), &stopped(true), &n);
        assert!(d.actions.contains(&Action::ReleaseLeader), "{d:?}");
        // Released, it stands aside for a ttl rather than start again.
        let mut after = n.clone();
        after.on_released();
        let nobody = view(None, vec![member("a", Role::Replica, 990, 1)]);
        after.observe(&c, Some(&nobody), &stopped(true), Millis(15_300));
        let d = run(&c, 15_300, Some(&nobody), &stopped(true), &after);
        assert!(d.summary.contains("standing aside"), "{d:?}");
        assert!(!d.actions.contains(&Action::StartReplica { upstream: None }));
        assert!(d.actions.contains(&Action::DisarmWatchdog));
        assert!(!d.actions.contains(&Action::StartPrimary));
        // Starting (unknown) counts too: the clock runs on...
        let mut u = stopped(true);
        u.unknown = true;
        n.observe(&c, Some(&v), &u, Millis(15_200));
        assert_eq!(n.primary_down_since, Some(Millis(10_100)));
        // ...but only a known stopped PostgreSQL lets the key go: an
        // unknown one is held and fenced (decide_unknown).
        let d = run(&c, 15_200, Some(&v), &u, &n);
        assert!(!d.actions.contains(&Action::ReleaseLeader), "{d:?}");
        n.observe(&c, Some(&v), &primary(1000), Millis(15_300));
        assert_eq!(n.primary_down_since, None);
        // A bootstrap's first start (never writable in this term) is no death.
        let mut fresh = leading(false);
        fresh.observe(&c, Some(&v), &stopped(true), Millis(10_000));
        assert_eq!(fresh.primary_down_since, None);
    }
    #[test]
    fn a_leader_starting_its_primary_holds_past_a_ttl_until_primary_start_timeout() {
        let mut c = cfg(WatchdogMode::Automatic);
        c.primary_start_timeout_ms = 60_000;
        let v = view(leader("b", 9), vec![member("b", Role::Primary, 1000, 1)]);
        let mut starting = stopped(true);
        starting.unknown = true;
        let mut n = leading(true);
        n.on_primary_start(Millis(10_000));
        n.unknown_since = Some(Millis(10_000));
        let renewed_at = |n: &mut NodeState, t: u64| {
            n.last_renewal = Some(Millis(t));
            n.last_confirmed = Some(Millis(t));
            n.watchdog_deadline = Some(Millis(t + 4000));
        };
        // Past a ttl (6 s) of no answer, but within the start's window.
        renewed_at(&mut n, 16_900);
        let d = run(&c, 17_000, Some(&v), &starting, &n);
        assert!(!d.actions.contains(&Action::StopPostgres), "{d:?}");
        assert!(
            d.actions.contains(&Action::FeedWatchdog),
            "fenced meanwhile: {d:?}"
        );
        // Past primary_start_timeout it is stopped like any silent server.
        renewed_at(&mut n, 70_400);
        let d = run(&c, 70_500, Some(&v), &starting, &n);
        assert!(d.actions.contains(&Action::StopPostgres), "{d:?}");
        // Without a start of ours, a ttl of silence stops it.
        n.primary_start_at = None;
        renewed_at(&mut n, 16_900);
        let d = run(&c, 17_000, Some(&v), &starting, &n);
        assert!(d.actions.contains(&Action::StopPostgres), "{d:?}");
    }
}
