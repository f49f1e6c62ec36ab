//! The HA loop: observe → decide → act → publish, on one thread
//! (DESIGN §2). This is the only module where decisions meet I/O.
//!
//! Each cycle reads the cluster prefix from etcd and probes the local
//! PostgreSQL, asks [`ha::decide`] what to do, runs the returned actions in
//! order (stopping at the first failure), and publishes this member's key.
//! Lease renewal and watchdog feeding happen *only* here, inside a cycle: if
//! this loop stalls, renewal and feeding stop, and the hardware fences.

use crate::callbacks::{self, Event};
use crate::cluster::FailoverRequest;
use crate::cluster::{ClusterView, LocalPostgres, MemberInfo, Millis, Tags};
use crate::config::{Config, WatchdogMode};
use crate::control::Command;
use crate::dcs::{self, Dcs};
use crate::dynamic_config::{self, KeySettings};
use crate::ha::{self, Action, Decision, HaConfig, Input, NodeState};
use crate::postgres::{self, Postgres};
use crate::snapshot::{self, Shared, Snapshot};
use crate::watchdog::{self, Watchdog};
use log::{debug, error, info, warn};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;

/// Operations that may legitimately take long (initdb, base backup) get this
/// much time at most.
const LONG_OP: Duration = Duration::from_secs(3600);

/// The agent: owns every piece of local state.
pub struct Agent {
    cfg: Config,
    ha: HaConfig,
    dcs: Dcs,
    pg: Postgres,
    watchdog: Option<Watchdog>,
    node: NodeState,
    started: Instant,
    wake: Arc<Notify>,
    last_summary: String,
    /// The `restart` request this member carried out (or skipped) last.
    restarted: Option<String>,
    /// The `reinit` request whose data directory emptying this agent did.
    reinitialized: Option<String>,
    /// The `reload` request this member carried out last, and whether the
    /// run loop is to read the file again (as on SIGHUP).
    reloaded: Option<String>,
    reload_wanted: bool,
    /// The last restart wait reported (logged once per change).
    restart_wait: String,
    /// The `restart` request whose switchover this agent asked for as the
    /// leader (`restart --switchover`).
    restart_handover: Option<String>,
    /// When a scheduled restart wants this agent to look again (its time,
    /// or the leader's start of it).
    restart_wake: Option<Millis>,
    /// This cycle's etcd read and probe of PostgreSQL (before any action).
    last_view: Option<ClusterView>,
    last_local: LocalPostgres,
    /// The last cycle, for the HTTP API and the control socket.
    shared: Shared,
    /// The member key as last written, with the lease it was bound to.
    published: Option<(Option<i64>, MemberInfo)>,
    /// This cycle's read was already compared with what we published.
    member_key_checked: bool,
    /// When the watchdog was last armed or fed.
    last_feed: Option<Instant>,
    /// When each recent warning was last logged, to rate-limit repeats.
    warned: std::collections::HashMap<String, Millis>,
    /// systemd's notification socket, when started by a `Type=notify` unit.
    notifier: Option<crate::notify::Notifier>,
    /// For the watch's own connections.
    transport: crate::dcs::Transport,
    /// The watch's copy of the cluster's keys.
    cache: crate::dcs::SharedCache,
    /// The last cycle was steady and every step of it succeeded: this one
    /// may begin on the watch's copy instead of a read.
    steady: bool,
    /// The HTTP API's TLS and basic authentication.
    api_security: crate::api::Security,
    /// Permanent logical slots being created off the loop, by name
    /// (`postgres::Postgres::create_logical_slot`); at most one each.
    logical_slot_jobs: std::collections::BTreeMap<String, LogicalSlotJob>,
    /// The settings of the `config` key in effect over the file's
    /// (`dynamic_config::effective`), the key they came from (applied
    /// again over a reloaded file), and the key's values last refused.
    key: KeySettings,
    key_config: Option<crate::cluster::DynamicConfig>,
    key_refused: Vec<String>,
    /// Synchronous mode was turned off: `clear_sync_names` still to do.
    sync_clear_pending: bool,
    /// The hot-standby-critical settings of this member's file last named
    /// as ignored (`hot_standby::ignored_local`): logged again only when
    /// they change.
    local_ignored: Vec<String>,
}

/// The creation of one permanent logical slot, running off the loop.
/// Some(LSN): made at that position; None: it existed already.
type LogicalSlotJob = tokio::task::JoinHandle<Result<Option<String>, postgres::PgError>>;

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM/SIGINT: PostgreSQL stopped, key released, watchdog disarmed.
    Graceful,
}

impl Agent {
    /// `transport`: TLS and RBAC user for etcd (`dcs::Transport::load`).
    pub fn new(cfg: Config, transport: crate::dcs::Transport) -> Agent {
        let key = KeySettings::of_file(&cfg);
        let ha = key.ha_config(&cfg);
        let dcs = Dcs::new(
            cfg.etcd_endpoints(),
            cfg.prefix(),
            cfg.name.clone(),
            cfg.ttl,
        )
        .with_transport(transport.clone());
        let wake = Arc::new(Notify::new());
        let mut pg = Postgres::new(cfg.postgresql.clone(), cfg.name.clone());
        pg.manage_sync_names(sync_initial(&ha));
        pg.wake_on_disconnect(wake.clone());
        let shared = snapshot::shared(Snapshot::new(&cfg.scope, &cfg.name));
        Agent {
            cfg,
            ha,
            dcs,
            pg,
            watchdog: None,
            node: NodeState::default(),
            started: Instant::now(),
            wake,
            last_summary: String::new(),
            restarted: None,
            reinitialized: None,
            reloaded: None,
            reload_wanted: false,
            restart_wait: String::new(),
            restart_handover: None,
            restart_wake: None,
            last_view: None,
            last_local: LocalPostgres::default(),
            warned: std::collections::HashMap::new(),
            shared,
            last_feed: None,
            published: None,
            member_key_checked: false,
            notifier: crate::notify::Notifier::from_env(),
            transport,
            cache: Default::default(),
            steady: false,
            api_security: crate::api::Security::default(),
            logical_slot_jobs: std::collections::BTreeMap::new(),
            key,
            key_config: None,
            key_refused: Vec::new(),
            sync_clear_pending: false,
            local_ignored: Vec::new(),
        }
    }

    /// The HTTP API's TLS and basic authentication
    /// (`api::Security::load`); plain and open without.
    pub fn with_api_security(mut self, security: crate::api::Security) -> Agent {
        self.api_security = security;
        self
    }

    /// After a crash, systemd hands back the watchdog the previous process
    /// stored: it is still open and counting from that process's last
    /// feed. It is taken over as armed (opening the device again would fail:
    /// it opens once); the decisions feed or disarm it as always.
    fn adopt_stored_watchdog(&mut self) {
        let Some(fd) = crate::notify::passed_fd(WATCHDOG_FD_NAME) else {
            return;
        };
        match Watchdog::adopt(self.cfg.watchdog.driver, &self.cfg.watchdog.device, fd) {
            Ok(w) => {
                let secs = if w.timeout() > 0 {
                    w.timeout()
                } else {
                    self.ha.watchdog_timeout_secs()
                };
                warn!(
                    "took over the armed watchdog {} from systemd's file descriptor store (the previous agent died with it armed); timeout {secs}s",
                    self.cfg.watchdog.device.display()
                );
                self.node.on_armed(self.now(), secs);
                self.watchdog = Some(w);
            }
            Err(e) => error!("the watchdog passed back by systemd is unusable: {e}"),
        }
    }

    /// Tells systemd something (`READY=1`, `STATUS=…`), when it listens.
    fn notify(&self, state: &str) {
        if let Some(n) = &self.notifier {
            n.send(state);
        }
    }

    fn now(&self) -> Millis {
        Millis(self.started.elapsed().as_millis() as u64)
    }

    /// A confirmed leader past its stop deadline whose PostgreSQL (as last
    /// probed) may be writable: only the stop may run now.
    fn fence_pending(&self) -> bool {
        self.node.past_stop_deadline(&self.ha, self.now()) && self.last_local.may_be_writable()
    }

    /// A read or probe of the cycle: for a leader, half of what is left
    /// before its stop deadline (`ha::observe_timeout_ms`).
    fn observe_timeout(&self) -> Duration {
        Duration::from_millis(ha::observe_timeout_ms(&self.ha, &self.node, self.now()))
    }

    fn io_timeout(&self) -> Duration {
        Duration::from_millis(ha::io_timeout_ms(&self.ha, &self.node, self.now()))
    }

    /// Logs a warning, but the same text at most once per 30 s.
    fn warn_limited(&mut self, msg: String) {
        let key = msg.clone();
        self.warn_limited_as(key, msg);
    }

    /// Logs `msg` as a warning unless one with the same `key` was logged
    /// in the last 30 s (then at debug level); true when logged. For a
    /// message quoting something that changes from cycle to cycle (a time
    /// ago, a value a hostile writer rewrites) under a fixed key.
    fn warn_limited_as(&mut self, key: String, msg: String) -> bool {
        let now = self.now();
        if self
            .warned
            .get(&key)
            .is_some_and(|at| now.since(*at) < 30_000)
        {
            debug!("{msg}");
            return false;
        }
        if self.warned.len() > 64 {
            self.warned.retain(|_, at| now.since(*at) < 30_000);
        }
        warn!("{msg}");
        self.warned.insert(key, now);
        true
    }

    /// Runs until SIGTERM/SIGINT.
    pub async fn run(mut self) -> Result<Exit, String> {
        if let Err(e) = watchdog::lock_memory() {
            warn!("could not lock memory (mlockall): {e}; paging may stall the loop");
        }
        self.adopt_stored_watchdog();
        if self.cfg.watchdog.mode != WatchdogMode::Off {
            match watchdog::boot_status(self.cfg.watchdog.driver, &self.cfg.watchdog.device) {
                Ok(true) => warn!(
                    "the last reboot of this machine was caused by the watchdog (WDIOF_CARDRESET)"
                ),
                Ok(false) => {}
                Err(e) => debug!("watchdog boot status unavailable: {e}"),
            }
        }
        let sig = |k: SignalKind, name: &str| signal(k).map_err(|e| format!("{name} handler: {e}"));
        let mut term = sig(SignalKind::terminate(), "SIGTERM")?;
        let mut int = sig(SignalKind::interrupt(), "SIGINT")?;
        let mut usr1 = sig(SignalKind::user_defined1(), "SIGUSR1")?;
        let mut usr2 = sig(SignalKind::user_defined2(), "SIGUSR2")?;
        let mut hup = sig(SignalKind::hangup(), "SIGHUP")?;
        // Bind the port before touching the socket path: a second instance
        // (or a port in use) fails here having changed nothing.
        let listener = tokio::net::TcpListener::bind(&self.cfg.restapi.listen)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen on restapi.listen {}: {e}",
                    self.cfg.restapi.listen
                )
            })?;
        let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<crate::control::Request>(8);
        let control = crate::control::bind(&self.cfg.control.socket)?;
        let _control = AbortOnDrop(tokio::spawn(crate::control::serve(
            control,
            self.shared.clone(),
            ctl_tx,
        )));
        let api = tokio::spawn(crate::api::serve_with(
            listener,
            self.shared.clone(),
            self.api_security.clone(),
        ));
        let _api = AbortOnDrop(api);
        let _watch = dcs::spawn_watch(
            self.cfg.etcd_endpoints(),
            self.cfg.prefix(),
            self.wake.clone(),
            self.transport.clone(),
            self.cache.clone(),
        );
        self.dcs.use_cache(self.cache.clone());
        info!(
            "leasedog {} starting: member {} of cluster {} (ttl {}s, loop_wait {}s, retry_timeout {}s, watchdog {:?})",
            env!("CARGO_PKG_VERSION"),
            self.cfg.name,
            self.cfg.scope,
            self.cfg.ttl,
            self.cfg.loop_wait,
            self.cfg.retry_timeout,
            self.cfg.watchdog.mode
        );
        // The API and control socket serve and the loop starts: systemd's
        // `start` returns now, not after a first cycle that may clone a
        // replica for hours.
        self.notify("READY=1");
        // A reloaded file is read and checked on a blocking thread: a huge
        // or hostile file costs that thread, never a feed of the loop.
        let (reload_tx, mut reload_rx) =
            tokio::sync::mpsc::channel::<Result<Config, Vec<crate::config::ConfigError>>>(1);
        let mut reloading = false;
        loop {
            let next = self.cycle().await;
            if std::mem::take(&mut self.reload_wanted) && !reloading {
                reloading = true;
                let (path, tx) = (self.cfg.source.clone(), reload_tx.clone());
                tokio::task::spawn_blocking(move || {
                    let _ = tx.blocking_send(crate::config::load(&path));
                });
            }
            let wait = Duration::from_millis(next.since(self.now()));
            // Biased, stop signals first: a SIGTERM that arrived during the
            // cycle (and interrupted a clone) must not lose to a wake-up
            // that is also ready, or the next cycle would clone again.
            tokio::select! {
                biased;
                _ = term.recv() => { self.shutdown().await; return Ok(Exit::Graceful); }
                _ = int.recv() => { self.shutdown().await; return Ok(Exit::Graceful); }
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = usr1.recv() => { self.command_logged(Command::Pause).await; }
                _ = usr2.recv() => { self.command_logged(Command::Resume { force: false }).await; }
                _ = hup.recv() => {
                    if reloading {
                        info!("SIGHUP: a reload is already being read; ignored");
                    } else {
                        reloading = true;
                        let (path, tx) = (self.cfg.source.clone(), reload_tx.clone());
                        tokio::task::spawn_blocking(move || {
                            let _ = tx.blocking_send(crate::config::load(&path));
                        });
                    }
                }
                Some(loaded) = reload_rx.recv() => {
                    reloading = false;
                    self.reload(loaded);
                }
                Some((cmd, answer)) = ctl_rx.recv() => {
                    let r = self.command(cmd).await;
                    let _ = answer.send(r);
                }
            }
        }
    }

    /// Runs an operator command (from a signal or the control socket):
    /// writes it to etcd, where every member's loop picks it up.
    async fn command(&mut self, cmd: Command) -> Result<String, String> {
        // Bounded like every call of the loop: a leader must not miss its
        // stop deadline while etcd hangs.
        let t = self.io_timeout();
        let result = match cmd {
            Command::Pause => {
                self.dcs.set_pause(true, false, t).await?;
                Ok("maintenance mode on".to_string())
            }
            Command::Resume { force } => {
                self.dcs.set_pause(false, force, t).await?;
                Ok("maintenance mode off".to_string())
            }
            Command::Switchover { to } => {
                let view = self.dcs.read(t).await.map_err(|e| e.to_string())?;
                let leader = view
                    .leader
                    .as_ref()
                    .map(|l| l.name.clone())
                    .ok_or("there is no leader to switch over from")?;
                let req = FailoverRequest {
                    leader: Some(leader),
                    member: to,
                    scheduled_at: None,
                    allow_data_loss: false,
                };
                self.dcs
                    .put_failover(&req, t)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok("switchover requested".to_string())
            }
        };
        self.wake.notify_one();
        result
    }

    async fn command_logged(&mut self, cmd: Command) {
        match self.command(cmd.clone()).await {
            Ok(msg) => info!("{msg} (signal)"),
            Err(e) => error!("{cmd:?} by signal failed: {e}"),
        }
    }

    /// New settings for the decision core. A new `ttl` applies to leases
    /// granted from now on; until the key is on one, the fence counts with
    /// the smaller of the two (`NodeState::fence_ttl_ms`).
    ///
    /// Synchronous mode turned on: PostgreSQL's `synchronous_standby_names`
    /// is managed from here on (the leader's `sync::plan` takes it from
    /// its initial value, key first). Turned off: the leader deletes the
    /// sync key (`ha`), and the setting is cleared on a writable primary
    /// (`clear_sync_names`), so commits stop waiting for standbys.
    fn set_ha(&mut self, ha: HaConfig) {
        self.dcs.set_ttl(ha.ttl_ms / 1000);
        if ha.sync.on() != self.ha.sync.on() {
            self.pg.manage_sync_names(sync_initial(&ha));
            self.sync_clear_pending = !ha.sync.on();
        }
        self.ha = ha;
    }

    /// After synchronous mode was turned off: a writable primary stops
    /// waiting for standbys (`synchronous_standby_names` emptied, reloaded,
    /// read back); tried each cycle until it is done or the server is no
    /// longer writable.
    async fn clear_sync_names(&mut self) {
        if !self.sync_clear_pending {
            return;
        }
        if !self.last_local.writable() {
            self.sync_clear_pending = false;
            return;
        }
        let t = self.observe_timeout();
        match self.pg.set_sync_names("", t).await {
            Ok(()) => {
                self.pg.manage_sync_names(None);
                self.sync_clear_pending = false;
                info!(
                    "synchronous_mode off: synchronous_standby_names emptied, commits no longer wait for standbys"
                );
            }
            Err(e) => self.warn_limited(format!(
                "synchronous_mode off: emptying synchronous_standby_names: {e}"
            )),
        }
    }

    /// SIGHUP: applies the re-read configuration file (read off the loop's
    /// thread): what can change while running, and says what needs a
    /// restart. A file that fails changes nothing.
    fn reload(&mut self, loaded: Result<Config, Vec<crate::config::ConfigError>>) {
        let new = match loaded {
            Ok(c) => c,
            Err(errors) => {
                for e in errors {
                    error!("reload refused: {e}");
                }
                return;
            }
        };
        let mut restart = Vec::new();
        if new.etcd3 != self.cfg.etcd3
            || new.scope != self.cfg.scope
            || new.name != self.cfg.name
            || new.namespace != self.cfg.namespace
        {
            restart.push("scope/name/namespace/etcd3");
        }
        if new.restapi != self.cfg.restapi || new.control != self.cfg.control {
            restart.push("restapi/control");
        }
        crate::logging::init(crate::logging::level(&new.log.level));
        let mut applied = new;
        applied.etcd3 = self.cfg.etcd3.clone();
        applied.scope = self.cfg.scope.clone();
        applied.name = self.cfg.name.clone();
        applied.namespace = self.cfg.namespace.clone();
        applied.restapi = self.cfg.restapi.clone();
        applied.control = self.cfg.control.clone();
        // The config key's settings stay over the new file's.
        let (key, _) = match &self.key_config {
            Some(k) => dynamic_config::effective(&applied, k, &self.key),
            None => (KeySettings::of_file(&applied), Vec::new()),
        };
        let over = KeySettings::of_file(&applied).changes(&key);
        if !over.is_empty() {
            info!(
                "config key: kept over the reloaded file: {}",
                over.join(", ")
            );
        }
        self.set_ha(key.ha_config(&applied));
        let mut pg = Postgres::new(key.postgresql(&applied), applied.name.clone());
        pg.keep_raised_from(&self.pg);
        self.pg = pg;
        self.key = key;
        // Named again against the new file in the next cycle.
        self.local_ignored.clear();
        self.pg.manage_sync_names(sync_initial(&self.ha));
        self.pg.wake_on_disconnect(self.wake.clone());
        self.cfg = applied;
        info!(
            "configuration reloaded: timings, tags, watchdog, postgresql settings (at the next start) and log level applied"
        );
        if !restart.is_empty() {
            warn!(
                "changed settings that need a restart of leasedog: {}",
                restart.join(", ")
            );
        }
    }

    /// A read of etcd made by this cycle, with a switchover scheduled for
    /// later taken out of it (and when to wake for it). None when the read
    /// failed or when the leader is past its stop deadline.
    async fn fresh_view(&mut self) -> (Option<ClusterView>, Option<u64>) {
        let t = self.observe_timeout();
        let view = if self.fence_pending() {
            // Rule W needs only the probe: no read spends the stop budget.
            debug!("past the stop deadline: no etcd read before the stop");
            None
        } else {
            match self.dcs.read(t).await {
                Ok(v) => Some(v),
                Err(e) => {
                    self.warn_limited(e.to_string());
                    None
                }
            }
        };
        // A switchover scheduled for later is not yet a request.
        let mut view = view;
        let mut wake_at_schedule = None;
        if let Some(v) = view.as_mut()
            && let Some(at) = v.failover.as_ref().and_then(|f| f.scheduled_at.as_deref())
        {
            let unix_now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match crate::cluster::parse_time(at) {
                Some(when) if when > unix_now => {
                    v.failover = None;
                    wake_at_schedule = Some((when - unix_now) * 1000);
                }
                // As Patroni: a schedule more than 1.5 loop_wait in the
                // past is stale (agents were down, clocks jumped): it is
                // dropped, not run at some arbitrary later moment.
                Some(when) if unix_now * 1000 > when * 1000 + self.ha.loop_wait_ms * 3 / 2 => {
                    // Keyed apart from the text: the age grows every
                    // cycle, and a hostile writer can rewrite the time.
                    self.warn_limited_as(
                        "stale switchover".into(),
                        format!(
                            "ignoring a stale switchover scheduled at {} ({} s ago)",
                            crate::config::excerpt(at),
                            unix_now - when
                        ),
                    );
                    v.failover = None;
                    if v.leader.as_ref().is_some_and(|l| {
                        l.name == self.cfg.name && Some(l.lease) == self.node.lease_id
                    }) {
                        let t = self.io_timeout();
                        if let Err(e) = self.dcs.delete_failover(t).await {
                            self.warn_limited(format!("clearing the stale switchover: {e}"));
                        }
                    }
                }
                Some(_) => {}
                None => {
                    self.warn_limited_as(
                        "unreadable switchover time".into(),
                        format!(
                            "ignoring a switchover scheduled at an unreadable time {}",
                            crate::config::excerpt(at)
                        ),
                    );
                    v.failover = None;
                }
            }
        }
        (view, wake_at_schedule)
    }

    /// The watch's copy of the cluster, when this cycle may begin on it:
    /// the last cycle was steady and went through, the copy is in step with
    /// etcd, and no request (switchover, restart, reload, reinit) is in it.
    fn cached_view(&mut self) -> Option<ClusterView> {
        if !self.steady || self.fence_pending() {
            return None;
        }
        self.dcs.cached_view().filter(|v| {
            v.failover.is_none() && v.restart.is_none() && v.reload.is_none() && v.reinit.is_none()
        })
    }

    /// One HA cycle. Returns when the next one should run at the latest.
    ///
    /// It begins on the watch's copy of the cluster when it can (no etcd
    /// call), and keeps what it decided on it only if that is steady
    /// (`Decision::is_steady`: renew, confirm, feed); anything else is
    /// decided again, from scratch, on a read of its own.
    async fn cycle(&mut self) -> Millis {
        let started = Instant::now();
        let cached = self.cached_view();
        let from_cache = cached.is_some();
        let (view, mut wake_at_schedule) = match cached {
            Some(v) => (Some(v), None),
            None => self.fresh_view().await,
        };
        if let Some(v) = view.as_ref()
            && !self.fence_pending()
        {
            self.apply_cluster_config(v).await;
        }
        let t = self.observe_timeout();
        let local = self.pg.probe(t).await;
        let mut view = view;
        let mut steady_on_cache = None;
        if from_cache {
            let mut trial = self.node.clone();
            let now = self.now();
            trial.observe(&self.ha, view.as_ref(), &local, now);
            let d = ha::decide(Input {
                now,
                cfg: &self.ha,
                view: view.as_ref(),
                local: &local,
                node: &trial,
            });
            if d.is_steady() {
                self.node = trial;
                steady_on_cache = Some(d);
            } else {
                debug!(
                    "the watch's copy calls for a change ({}): deciding again on a read",
                    d.summary
                );
                (view, wake_at_schedule) = self.fresh_view().await;
            }
        }
        let now = self.now();
        if steady_on_cache.is_none() {
            self.node.observe(&self.ha, view.as_ref(), &local, now);
            if let Some(v) = view.as_ref()
                && !self.fence_pending()
                && self.reinit_step(v, &local).await
            {
                // The data directory is empty: the next cycle clones it again.
                self.last_view = view;
                self.last_local = crate::cluster::LocalPostgres::default();
                self.steady = false;
                return self.now().plus(ha::RECHECK_MS);
            }
        }

        let now = self.now();
        let decision = match steady_on_cache {
            Some(d) => d,
            None => ha::decide(Input {
                now,
                cfg: &self.ha,
                view: view.as_ref(),
                local: &local,
                node: &self.node,
            }),
        };
        if decision.summary != self.last_summary {
            info!("{}", decision.summary);
            self.notify(&crate::notify::status_line(&decision.summary));
            self.last_summary = decision.summary.clone();
        } else {
            debug!("{}", decision.summary);
        }
        self.last_view = view;
        self.last_local = local;
        self.member_key_checked = false;
        let ok = self.act(&decision).await;
        self.steady = ok && decision.is_steady();
        let restarting = !self.fence_pending() && self.rolling_restart().await;
        if !self.fence_pending() {
            self.reload_request().await;
        }
        let past_deadline = self.fence_pending();
        if !past_deadline {
            self.publish().await;
        }
        self.update_snapshot(&decision.summary, started);

        // The deadlines as this cycle's renewal and feed left them.
        let mut next = ha::next_wake(&self.ha, &self.node, &decision, self.now());
        if self.node.stream_wanted_since.is_some_and(|t| t >= now) {
            // A replica started (or re-pointed) in this cycle: look again
            // soon, to publish its stream as soon as it runs.
            next = next.min(self.now().plus(ha::RECHECK_MS));
        }
        if let Some(ms) = wake_at_schedule {
            next = next.min(now.plus(ms));
        }
        if !ok {
            next = next.min(now.plus(self.ha.loop_wait_ms.min(1000)));
        }
        if restarting {
            // PostgreSQL was stopped for a restart: the next cycle starts it.
            next = next.min(self.now().plus(ha::RECHECK_MS));
        }
        if let Some(at) = self.restart_wake {
            next = next.min(at);
        }
        if past_deadline {
            // Straight to rule W's stop.
            next = self.now();
        }
        next
    }

    /// The cluster-wide PostgreSQL settings (`postgresql.parameters` of the
    /// `config` key, `leasedog edit-config`): written and reloaded when they
    /// changed. A setting that needs a restart shows as `pending_restart`
    /// in the member key from the next probe on.
    async fn apply_cluster_config(&mut self, view: &crate::cluster::ClusterView) {
        self.apply_key_settings(&view.config).await;
        let (key_params, odd) = self.key_parameters(&view.config);
        if !odd.is_empty() {
            self.warn_limited(format!(
                "config key: postgresql.parameters {} ignored: not a single value",
                odd.join(", ")
            ));
        }
        // The hot-standby-critical settings: the key's (checked) or the
        // defaults, never this member's file.
        let (params, refused) = crate::hot_standby::cluster_parameters(&key_params);
        for r in refused {
            self.warn_limited(format!("config key: refused: {r}"));
        }
        let local: std::collections::BTreeMap<String, String> = self
            .cfg
            .postgresql
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), postgres::conf::yaml_scalar(v)))
            .collect();
        let ignored = crate::hot_standby::ignored_local(
            &self.cfg.source,
            &local,
            &crate::hot_standby::in_effect(&params),
        );
        if ignored != self.local_ignored {
            for w in &ignored {
                warn!("{w}");
            }
            self.local_ignored = ignored;
        }
        let t = self.observe_timeout();
        let running = self.last_local.running;
        match self.pg.apply_cluster_parameters(&params, running, t).await {
            Ok(Some((changed, skipped))) => {
                for s in skipped {
                    self.warn_limited(format!("config key: postgresql.parameters.{s}: ignored"));
                }
                if !changed.is_empty() {
                    info!(
                        "cluster configuration: {} {}",
                        changed.join(", "),
                        if running {
                            "changed (PostgreSQL reloaded)"
                        } else {
                            "changed (for the next start)"
                        }
                    );
                }
            }
            Ok(None) => {}
            Err(e) => self.warn_limited(format!("applying the cluster configuration: {e}")),
        }
    }

    /// The `config` key's `postgresql.parameters` as text (and the names
    /// of values that are no single value); while there is no key yet
    /// (before the bootstrap writes it), those of
    /// `bootstrap.dcs.postgresql.parameters`, which it is about to hold.
    fn key_parameters(
        &self,
        key: &crate::cluster::DynamicConfig,
    ) -> (std::collections::BTreeMap<String, String>, Vec<String>) {
        if !key.other.is_empty() {
            return key.pg_parameters();
        }
        match serde_json::from_value::<crate::cluster::DynamicConfig>(
            self.cfg.initial_dynamic_config(),
        ) {
            Ok(k) => k.pg_parameters(),
            Err(e) => (
                Default::default(),
                vec![format!("bootstrap.dcs.postgresql.parameters ({e})")],
            ),
        }
    }

    /// Right after initdb, before the first start: `leasedog-cluster.conf`
    /// written (see `key_parameters`), so that the new primary starts with
    /// the cluster's hot-standby-critical settings rather than restart for
    /// them (its replicas could not run lower than it).
    async fn bootstrap_cluster_conf(&mut self, t: Duration) {
        let key = self.key_config.clone().unwrap_or_default();
        let (params, _) = crate::hot_standby::cluster_parameters(&self.key_parameters(&key).0);
        if let Err(e) = self.pg.apply_cluster_parameters(&params, false, t).await {
            warn!("writing the cluster's settings before the first start: {e}");
        }
    }

    /// The settings of the `config` key that win over the file's
    /// (`dynamic_config::effective`): taken into the decision core's
    /// settings at once, pg_hba.conf written and PostgreSQL reloaded when
    /// its lines changed. A value the key holds that fails the checks is
    /// logged as an error (once while it stays) and the one in effect kept.
    async fn apply_key_settings(&mut self, key: &crate::cluster::DynamicConfig) {
        if self.key_config.as_ref() != Some(key) {
            self.key_config = Some(key.clone());
        }
        let (settings, refused) = dynamic_config::effective(&self.cfg, key, &self.key);
        for r in refused.iter().filter(|r| !self.key_refused.contains(r)) {
            error!("config key: refused: {r}");
        }
        self.key_refused = refused;
        let changes = self.key.changes(&settings);
        if !changes.is_empty() {
            info!("config key: {} in effect", changes.join(", "));
            self.set_ha(settings.ha_config(&self.cfg));
            self.key = settings;
        }
        self.clear_sync_names().await;
        let t = self.observe_timeout();
        let running = self.last_local.running;
        match self.pg.apply_pg_hba(&self.key.pg_hba, running, t).await {
            Ok((written, unreadable)) => {
                if written {
                    info!(
                        "pg_hba.conf written ({} lines){}",
                        self.key.pg_hba.len(),
                        if running { ", PostgreSQL reloaded" } else { "" }
                    );
                }
                for u in unreadable {
                    error!(
                        "{u}: PostgreSQL keeps its previous rules and would not start with this file; fix postgresql.pg_hba"
                    );
                }
            }
            Err(e) => self.warn_limited(format!("applying postgresql.pg_hba: {e}")),
        }
    }

    /// `leasedog reinit`: a replica named in the `reinit` key stops its
    /// PostgreSQL and empties its data directory; the HA loop then clones
    /// it again from the leader, or from the member `--from` named (see
    /// `ha::clone_source`). Never on the leader, never while its
    /// PostgreSQL may be writable or the cluster is paused. True when the
    /// directory was emptied in this cycle. The member deletes the request
    /// once it streams again. A `--from` that no longer qualifies before
    /// anything was emptied (itself, gone, stopped) ends the request.
    async fn reinit_step(
        &mut self,
        view: &crate::cluster::ClusterView,
        local: &crate::cluster::LocalPostgres,
    ) -> bool {
        let Some(req) = view.reinit.clone().filter(|r| r.member == self.cfg.name) else {
            return false;
        };
        let t = self.io_timeout();
        if self.reinitialized.as_deref() == Some(req.id.as_str()) {
            if local.running && local.in_recovery && local.streaming {
                match self.dcs.delete_request("reinit", req.mod_revision, t).await {
                    Ok(_) => info!("reinit {}: cloned again and streaming", req.id),
                    Err(e) => self.warn_limited(format!("deleting the reinit request: {e}")),
                }
            }
            return false;
        }
        let leader = view.leader.as_ref().map(|l| l.name.as_str());
        if leader == Some(self.cfg.name.as_str()) || self.node.leader_confirmed {
            warn!(
                "reinit {}: refused: this member is the leader (a reinit rebuilds a replica from the leader)",
                req.id
            );
            if let Err(e) = self.dcs.delete_request("reinit", req.mod_revision, t).await {
                self.warn_limited(format!("deleting the reinit request: {e}"));
            }
            return false;
        }
        if let Some(why) = req
            .from
            .as_deref()
            .and_then(|f| crate::cluster::clone_source_refusal(view, &self.cfg.name, f))
        {
            warn!("reinit {}: refused: {why}", req.id);
            if let Err(e) = self.dcs.delete_request("reinit", req.mod_revision, t).await {
                self.warn_limited(format!("deleting the reinit request: {e}"));
            }
            return false;
        }
        let wait = if view.paused() {
            "maintenance mode is on"
        } else if leader.is_none() {
            "the cluster has no leader to clone from"
        } else if local.may_be_writable() {
            "PostgreSQL here may be writable"
        } else {
            ""
        };
        if !wait.is_empty() {
            self.warn_limited(format!("reinit {}: waiting: {wait}", req.id));
            return false;
        }
        if local.running || local.unknown {
            let total = self.ha.retry_timeout_ms.max(10_000);
            match self.pg.stop(Duration::from_millis(total)).await {
                Ok(outcome) => {
                    info!("reinit {}: PostgreSQL stopped ({outcome:?})", req.id);
                    self.callback(Event::Stop, "replica");
                }
                Err(e) => {
                    self.warn_limited(format!("reinit {}: stopping PostgreSQL: {e}", req.id));
                    return false;
                }
            }
        }
        match self.pg.empty_for_reinit() {
            Ok(()) => {
                info!(
                    "reinit {}: data directory emptied; cloning again from {}",
                    req.id,
                    req.from.as_deref().or(leader).unwrap_or("the leader")
                );
                self.reinitialized = Some(req.id);
                true
            }
            Err(e) => {
                self.warn_limited(format!("reinit {}: {e}", req.id));
                false
            }
        }
    }

    /// `leasedog reload`: a member the `reload` key names (or all) reads its
    /// file again and reloads PostgreSQL, as on SIGHUP (the run loop reads
    /// the file off the loop's thread); the leader deletes the request once
    /// every member has published its id.
    async fn reload_request(&mut self) {
        let Some(view) = self.last_view.as_ref() else {
            return;
        };
        let Some(req) = view.reload.clone() else {
            return;
        };
        if view
            .member(&self.cfg.name)
            .and_then(|m| m.info.reloaded.as_deref())
            == Some(req.id.as_str())
        {
            self.reloaded = Some(req.id.clone());
        }
        if self.reloaded.as_deref() != Some(req.id.as_str()) {
            if req.members.is_empty() || req.members.contains(&self.cfg.name) {
                info!(
                    "reload {} requested: reading the configuration file again and reloading PostgreSQL",
                    req.id
                );
                self.reload_wanted = true;
                if self.last_local.running {
                    let t = self.observe_timeout();
                    if let Err(e) = self.pg.reload(t).await {
                        self.warn_limited(format!("reload {}: PostgreSQL: {e}", req.id));
                    }
                }
            }
            self.reloaded = Some(req.id.clone());
            return;
        }
        let leads = view
            .leader
            .as_ref()
            .is_some_and(|l| l.name == self.cfg.name);
        let all = view.members.iter().all(|m| {
            m.name == self.cfg.name || m.info.reloaded.as_deref() == Some(req.id.as_str())
        });
        if leads && all {
            let t = self.io_timeout();
            match self.dcs.delete_request("reload", req.mod_revision, t).await {
                Ok(_) => info!("reload {}: every member reloaded", req.id),
                Err(e) => self.warn_limited(format!("deleting the reload request: {e}")),
            }
        }
    }

    /// This member's part in a rolling restart (`restart::step`): true when
    /// it stopped PostgreSQL for it (the next cycle starts it again).
    async fn rolling_restart(&mut self) -> bool {
        self.restart_wake = None;
        let Some(view) = self.last_view.as_ref() else {
            return false;
        };
        let Some(mut req) = view.restart.clone() else {
            self.restart_wait.clear();
            return false;
        };
        if !self.restart_due(&mut req).await {
            return false;
        }
        let Some(view) = self.last_view.as_ref() else {
            return false;
        };
        // What this member published before (a restarted agent).
        if view
            .member(&self.cfg.name)
            .and_then(|m| m.info.restarted.as_deref())
            == Some(req.id.as_str())
        {
            self.restarted = Some(req.id.clone());
        }
        let carried_out = self.restarted.as_deref() == Some(req.id.as_str());
        let l = &self.last_local;
        let me = crate::restart::Me {
            name: &self.cfg.name,
            carried_out,
            pending: l.running && l.pending_restart,
            running: l.running,
            handed_over: self.restart_handover.as_deref() == Some(req.id.as_str()),
        };
        let step = crate::restart::step(&req, view, &me);
        match step {
            crate::restart::Step::Idle => false,
            crate::restart::Step::Skip => {
                self.restarted = Some(req.id);
                false
            }
            crate::restart::Step::Wait(why) => {
                if why != self.restart_wait {
                    info!("restart {}: waiting: {why}", req.id);
                    self.restart_wait = why;
                }
                false
            }
            crate::restart::Step::Finish => {
                let t = self.io_timeout();
                match self
                    .dcs
                    .delete_request("restart", req.mod_revision, t)
                    .await
                {
                    Ok(_) => info!("restart {}: every member restarted", req.id),
                    Err(e) => self.warn_limited(format!("deleting the restart request: {e}")),
                }
                false
            }
            crate::restart::Step::Abandon(why) => {
                if !self.node.leader_confirmed {
                    return false;
                }
                let t = self.io_timeout();
                match self
                    .dcs
                    .delete_request("restart", req.mod_revision, t)
                    .await
                {
                    Ok(true) => warn!("restart {}: ended: {why}", req.id),
                    Ok(false) => {}
                    Err(e) => self.warn_limited(format!("deleting the restart request: {e}")),
                }
                false
            }
            crate::restart::Step::Switchover => {
                self.restart_switchover(&req).await;
                false
            }
            crate::restart::Step::Restart => {
                let leads = self.node.leader_confirmed;
                info!(
                    "restart {}: stopping PostgreSQL; it starts again {}",
                    req.id,
                    if leads {
                        "at once, in place, under the leader key"
                    } else {
                        "as a replica"
                    }
                );
                let total = if leads {
                    self.ha.stop_budget_ms()
                } else {
                    self.ha.retry_timeout_ms.max(10_000)
                };
                match self.pg.stop(Duration::from_millis(total)).await {
                    Ok(outcome) => {
                        info!("PostgreSQL stopped for the restart ({outcome:?})");
                        self.callback(Event::Stop, if leads { "primary" } else { "replica" });
                        self.restarted = Some(req.id);
                        true
                    }
                    Err(e) => {
                        self.warn_limited(format!("restart {}: stopping PostgreSQL: {e}", req.id));
                        false
                    }
                }
            }
        }
    }

    /// `restart --at`: whether the request runs now (`restart::timing`).
    /// The leader starts a request whose time has come by taking the time
    /// out of the key (and out of `req`: it runs in this cycle), and
    /// deletes one it finds stale or unreadable; nobody else acts on a
    /// request that still has its time.
    async fn restart_due(&mut self, req: &mut crate::cluster::RestartRequest) -> bool {
        let Some(view) = self.last_view.as_ref() else {
            return false;
        };
        let leads = self.node.leader_confirmed
            && view
                .leader
                .as_ref()
                .is_some_and(|l| l.name == self.cfg.name);
        let unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let timing =
            crate::restart::timing(req, leads, view.paused(), unix_ms, self.ha.loop_wait_ms);
        let t = self.io_timeout();
        match timing {
            crate::restart::Timing::Now => true,
            crate::restart::Timing::Hold(wake) => {
                let why = format!(
                    "scheduled at {}",
                    crate::config::excerpt(req.scheduled_at.as_deref().unwrap_or(""))
                );
                if why != self.restart_wait {
                    info!("restart {}: {why}", req.id);
                    self.restart_wait = why;
                }
                self.restart_wake = wake.map(|ms| self.now().plus(ms));
                false
            }
            crate::restart::Timing::Drop(why) => {
                match self
                    .dcs
                    .delete_request("restart", req.mod_revision, t)
                    .await
                {
                    Ok(true) => warn!("restart {}: dropped: {why}", req.id),
                    Ok(false) => {}
                    Err(e) => self.warn_limited(format!("deleting the restart request: {e}")),
                }
                false
            }
            crate::restart::Timing::Start => {
                let mut started = req.clone();
                started.scheduled_at = None;
                let json = serde_json::to_string(&started).unwrap_or_default();
                match self
                    .dcs
                    .replace_request("restart", json, req.mod_revision, t)
                    .await
                {
                    Ok(true) => {
                        info!(
                            "restart {}: its scheduled time {} has come: starting it",
                            req.id,
                            crate::config::excerpt(req.scheduled_at.as_deref().unwrap_or(""))
                        );
                        // It runs from this cycle on (the others see it in
                        // their next one). The key's new revision is not
                        // known: a delete that needs it fails and is tried
                        // again after the next read.
                        req.scheduled_at = None;
                        true
                    }
                    Ok(false) => false,
                    Err(e) => {
                        self.warn_limited(format!("starting the scheduled restart: {e}"));
                        false
                    }
                }
            }
        }
    }

    /// `restart --switchover`, the primary's turn: the `failover` key as
    /// `leasedog switchover` writes it without `--to` (the HA core picks
    /// the best replica and carries it out), written only if there is none
    /// (a switchover an operator scheduled is never overwritten), and only
    /// while some replica can take over.
    async fn restart_switchover(&mut self, req: &crate::cluster::RestartRequest) {
        let Some(view) = self.last_view.as_ref() else {
            return;
        };
        if !self.node.leader_confirmed {
            return;
        }
        if let Err(why) = ha::switchover_target(&self.ha, view, &self.last_local, None) {
            let why = format!("no switchover yet: {why}");
            if why != self.restart_wait {
                info!("restart {}: waiting: {why}", req.id);
                self.restart_wait = why;
            }
            return;
        }
        let f = FailoverRequest {
            leader: Some(self.cfg.name.clone()),
            ..Default::default()
        };
        let json = serde_json::to_string(&f).unwrap_or_default();
        let t = self.io_timeout();
        match self.dcs.put_request("failover", json, t).await {
            Ok(true) => {
                info!(
                    "restart {}: the primary's turn: switching over to the best replica first (then restarted as a replica)",
                    req.id
                );
                self.restart_handover = Some(req.id.clone());
            }
            Ok(false) => {
                let why = "another switchover is requested: it goes first".to_string();
                if why != self.restart_wait {
                    info!("restart {}: waiting: {why}", req.id);
                    self.restart_wait = why;
                }
            }
            Err(e) => {
                self.warn_limited(format!("restart {}: writing the failover key: {e}", req.id))
            }
        }
    }

    /// Runs the actions in order; false when one failed. The first failure
    /// ends the sequence, except for a step that `continues_on_failure`.
    async fn act(&mut self, d: &Decision) -> bool {
        let mut ok = true;
        for a in &d.actions {
            if !a.is_fence() && self.fence_pending() {
                debug!("past the stop deadline: skipping {}", describe(a));
                return false;
            }
            if let Err(e) = self.execute(a).await {
                self.warn_limited(format!("{}: {e}", describe(a)));
                ok = false;
                if !a.continues_on_failure() {
                    break;
                }
            }
        }
        ok
    }

    async fn execute(&mut self, a: &Action) -> Result<(), String> {
        let t = self.io_timeout();
        match a {
            Action::KeepAlive => {
                let sent = self.now();
                let ka = self.dcs.keepalive(t).await.map_err(|e| e.to_string())?;
                if ka.granted_new {
                    info!("new etcd lease {:x}", ka.lease_id);
                }
                self.node.on_renewed(
                    sent,
                    ka.lease_id,
                    ka.granted_new,
                    ka.granted_ttl as u64 * 1000,
                );
                // The member key lives on this lease: (re)write it now, not
                // after the cycle's actions, one of which may hold the loop
                // (a replica's start): the new leader makes a replication
                // slot only for members that publish a key.
                if !self.fence_pending() {
                    self.publish().await;
                }
                Ok(())
            }
            Action::ConfirmLeader { status } => {
                let sent = self.now();
                let ok = self
                    .dcs
                    .confirm_leader(status.as_ref(), t)
                    .await
                    .map_err(|e| e.to_string())?;
                self.node.on_leader_txn(sent, ok);
                if ok {
                    Ok(())
                } else {
                    Err("the leader key is no longer ours".into())
                }
            }
            Action::AcquireLeader => {
                let sent = self.now();
                let won = self
                    .dcs
                    .acquire_leader(t)
                    .await
                    .map_err(|e| e.to_string())?;
                if won {
                    self.node.on_acquired(sent);
                } else {
                    self.node.on_leader_txn(sent, won);
                }
                if won {
                    info!("acquired the leader key");
                    Ok(())
                } else {
                    Err("another member took the leader key first".into())
                }
            }
            Action::TakeOverLeader { mod_revision } => {
                let sent = self.now();
                let won = self
                    .dcs
                    .take_over_leader(*mod_revision, t)
                    .await
                    .map_err(|e| e.to_string())?;
                if won {
                    self.node.on_acquired(sent);
                    Ok(())
                } else {
                    self.node.on_leader_txn(sent, won);
                    Err("the leader key changed meanwhile".into())
                }
            }
            Action::NewLease => {
                let sent = self.now();
                let ka = self.dcs.new_lease(t).await.map_err(|e| e.to_string())?;
                info!(
                    "new etcd lease {:x} of the configured ttl ({} s)",
                    ka.lease_id, ka.granted_ttl
                );
                self.node
                    .on_renewed(sent, ka.lease_id, true, ka.granted_ttl as u64 * 1000);
                if !self.fence_pending() {
                    self.publish().await;
                }
                Ok(())
            }
            Action::MoveLease { mod_revision } => {
                let granted = self.now();
                let info = self.member_info();
                let m = match self.dcs.move_leader(*mod_revision, &info, t).await {
                    Ok(m) => m,
                    // Nothing moved: the key stays on the lease renewed as
                    // before; tried again next cycle.
                    Err(e) => {
                        self.warn_limited(format!(
                            "moving the leader key to a lease of the new ttl: {e}"
                        ));
                        return Ok(());
                    }
                };
                let sent = Millis(m.txn_sent.duration_since(self.started).as_millis() as u64);
                let ttl_ms = m.ttl as u64 * 1000;
                match m.moved {
                    Ok(true) => {
                        self.node
                            .on_lease_moved(granted, sent, m.lease_id, ttl_ms, Some(true));
                        self.published = Some((Some(m.lease_id), info));
                        info!(
                            "leader key moved to lease {:x} of {} s (ttl changed)",
                            m.lease_id, m.ttl
                        );
                        Ok(())
                    }
                    Ok(false) => {
                        self.node
                            .on_lease_moved(granted, sent, m.lease_id, ttl_ms, Some(false));
                        Err("the leader key is no longer ours".into())
                    }
                    Err(e) => {
                        // The key may be on the new lease, which is not
                        // renewed: the fence counts with its expiry until a
                        // later move settles it.
                        self.node
                            .on_lease_moved(granted, sent, m.lease_id, ttl_ms, None);
                        warn!(
                            "moving the leader key to lease {:x}: {e}; counting with that lease's expiry until a move succeeds",
                            m.lease_id
                        );
                        Ok(())
                    }
                }
            }
            Action::ReleaseLeader => {
                self.node.on_released();
                self.dcs
                    .release_leader(t)
                    .await
                    .map_err(|e| e.to_string())?;
                info!("released the leader key");
                Ok(())
            }
            Action::ClearUnleasedLeader { mod_revision } => {
                let cleared = self
                    .dcs
                    .clear_unleased_leader(*mod_revision, t)
                    .await
                    .map_err(|e| e.to_string())?;
                if cleared {
                    warn!("cleared a leader key that was bound to no lease");
                }
                Ok(())
            }
            Action::ReplaceOrphanLeader { mod_revision, name } => {
                let replaced = self
                    .dcs
                    .replace_orphan_leader(
                        *mod_revision,
                        name,
                        self.ha.orphan_placeholder_ttl_secs(),
                        t,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if replaced {
                    warn!(
                        "replaced a leader key naming {}, which is no member, by a placeholder that expires in {} s",
                        crate::config::excerpt(name),
                        self.ha.orphan_placeholder_ttl_secs()
                    );
                }
                Ok(())
            }
            Action::ArmWatchdog { required } => self.arm_watchdog(*required),
            Action::FeedWatchdog => {
                self.feed_watchdog();
                Ok(())
            }
            Action::SetWatchdogTimeout { secs } => self.set_watchdog_timeout(*secs),
            Action::DisarmWatchdog => {
                self.disarm_watchdog();
                Ok(())
            }
            Action::Initdb => {
                info!(
                    "running initdb in {}",
                    self.cfg.postgresql.data_dir.display()
                );
                // initdb holds the loop, on a slow machine for longer than a
                // ttl: the lease is renewed meanwhile, or the leader key
                // bound to it expires and the next member bootstraps a
                // cluster of its own. Nothing runs yet, so nothing to fence.
                let every = Duration::from_millis(self.ha.loop_wait_ms.clamp(100, 1000));
                let done = {
                    let initdb = until_stop_signal(self.pg.initdb(LONG_OP));
                    tokio::pin!(initdb);
                    loop {
                        tokio::select! {
                            r = &mut initdb => break r,
                            _ = tokio::time::sleep(every) => {
                                let t = Duration::from_millis(self.ha.retry_timeout_ms);
                                let sent = self.now();
                                match self.dcs.keepalive(t).await {
                                    Ok(ka) => self.node.on_renewed(
                                        sent,
                                        ka.lease_id,
                                        ka.granted_new,
                                        ka.granted_ttl as u64 * 1000,
                                    ),
                                    Err(e) => debug!("lease keep-alive during initdb: {e}"),
                                }
                            }
                        }
                    }
                };
                if done.is_ok() {
                    self.bootstrap_cluster_conf(t).await;
                }
                done
            }
            Action::StartPrimary => {
                self.pg.write_primary_conf().map_err(|e| e.to_string())?;
                // Bounded so the loop is back in time to renew and feed; a
                // longer start (crash recovery) goes on and is seen as
                // starting until primary_start_timeout.
                let now = self.now();
                self.node.on_primary_start(now);
                let t = Duration::from_millis(ha::start_wait_ms(&self.ha, &self.node, now));
                self.pg.start(t, false).await.map_err(|e| e.to_string())?;
                info!("PostgreSQL started as primary");
                self.callback(Event::Start, "primary");
                Ok(())
            }
            Action::StartReplica { upstream } => {
                let up = upstream.as_ref().map(|u| self.upstream(u)).transpose()?;
                self.pg
                    .write_standby(up.as_ref())
                    .map_err(|e| e.to_string())?;
                // Bounded by a cycle's budget: a replica whose recovery is
                // not yet consistent must not hold the loop until its lease
                // and member key lapse (the new leader makes its slot only
                // for members with a key). It goes on starting; the next
                // probes see it as an unknown server in recovery.
                let t = Duration::from_millis(ha::start_wait_ms(&self.ha, &self.node, self.now()));
                self.pg.start(t, true).await.map_err(|e| e.to_string())?;
                if upstream.is_some() {
                    let now = self.now();
                    self.node.on_follow_started(now);
                }
                match upstream {
                    Some(u) => info!(
                        "PostgreSQL started as a replica of {}{}",
                        u.member,
                        slot_said(u)
                    ),
                    None => info!("PostgreSQL started read-only"),
                }
                self.callback(Event::Start, "replica");
                Ok(())
            }
            Action::Follow { upstream } => {
                let up = self.upstream(upstream)?;
                self.pg
                    .write_standby(Some(&up))
                    .map_err(|e| e.to_string())?;
                self.pg.reload(t).await.map_err(|e| e.to_string())?;
                let now = self.now();
                self.node.on_follow_started(now);
                info!("now following {}{}", upstream.member, slot_said(upstream));
                Ok(())
            }
            Action::Promote => {
                self.pg.promote(t).await.map_err(|e| e.to_string())?;
                info!("promoted PostgreSQL: this member is the primary");
                self.callback(Event::RoleChange, "primary");
                // Bookkeeping for `leasedog history`: never fails the promotion.
                let unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let entry = serde_json::json!([
                    self.last_local.timeline.unwrap_or(0),
                    self.last_local.lsn.map(|l| l.0).unwrap_or(0),
                    "promoted by leasedog",
                    crate::cluster::format_time(unix),
                    self.cfg.name,
                ]);
                let t = self.io_timeout();
                if let Err(e) = self.dcs.append_history(entry, t).await {
                    self.warn_limited(format!(
                        "recording the timeline switch in history failed: {e}"
                    ));
                }
                Ok(())
            }
            Action::StopPostgres => self.stop_postgres().await,
            Action::StopCleanly => {
                let budget = self
                    .node
                    .clean_stop_budget_ms(&self.ha, self.now())
                    .unwrap_or(self.ha.stop_budget_ms());
                let outcome = self
                    .pg
                    .stop_cleanly(Duration::from_millis(budget))
                    .await
                    .map_err(|e| format!("no clean shutdown for the switchover: {e}"))?;
                info!("PostgreSQL stopped for the switchover ({outcome:?})");
                self.callback(Event::Stop, "primary");
                self.callback(Event::RoleChange, "demoted");
                Ok(())
            }
            Action::ConfirmHandover { candidate } => self.confirm_handover(candidate).await,
            Action::Clone { upstream } => {
                let up = self.upstream(upstream)?;
                info!("cloning from {} with pg_basebackup", upstream.member);
                until_stop_signal(self.pg.basebackup(&up, LONG_OP)).await
            }
            Action::Rewind { upstream } => {
                let up = self.upstream(upstream)?;
                info!(
                    "rewinding onto {}'s history with pg_rewind",
                    upstream.member
                );
                self.pg
                    .rewind(&up, LONG_OP)
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::CreateReplicationUser => self
                .pg
                .create_replication_user(t)
                .await
                .map_err(|e| e.to_string()),
            Action::WriteInitialize { system_id } => {
                let won = self
                    .dcs
                    .initialize(system_id, t)
                    .await
                    .map_err(|e| e.to_string())?;
                if won {
                    info!("cluster initialized with system identifier {system_id}");
                    let json = self.cfg.initial_dynamic_config().to_string();
                    match self.dcs.init_config(json, t).await {
                        Ok(true) => info!("config key written from bootstrap.dcs"),
                        Ok(false) => {}
                        Err(e) => warn!("writing the config key: {e}"),
                    }
                }
                Ok(())
            }
            Action::DeleteFailover => self.dcs.delete_failover(t).await.map_err(|e| e.to_string()),
            Action::WriteSync {
                standbys,
                mod_revision,
            } => {
                let quorum_mode = self.ha.sync.mode == crate::config::SyncMode::Quorum;
                let state = standbys.to_state(&self.cfg.name, quorum_mode);
                match self.dcs.write_sync(&state, *mod_revision, t).await {
                    Ok(true) => {
                        info!(
                            "sync key: leader {}, synchronous standbys [{}]",
                            self.cfg.name,
                            state.sync_standby.as_deref().unwrap_or("")
                        );
                        Ok(())
                    }
                    Ok(false) => {
                        Err("the sync key or the leader key changed since it was read".into())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::DeleteSync { mod_revision } => {
                match self.dcs.delete_sync(*mod_revision, t).await {
                    Ok(true) => Ok(()),
                    Ok(false) => {
                        Err("the sync key or the leader key changed since it was read".into())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Action::SetSyncNames { names } => {
                self.pg
                    .set_sync_names(names, t)
                    .await
                    .map_err(|e| e.to_string())?;
                info!("synchronous_standby_names = '{names}'");
                Ok(())
            }
            Action::SyncSlots { slots } => {
                // The members' slots, and the permanent ones of the config
                // key (`slots:`); `ignore_slots` are never touched.
                let (mut wanted, logical, ignored) = match self.last_view.as_ref() {
                    Some(v) => (
                        v.config.permanent_physical_slots(),
                        v.config.permanent_logical_slots(),
                        v.config.ignore_slots(),
                    ),
                    None => (Vec::new(), Vec::new(), Vec::new()),
                };
                wanted.extend(slots.iter().cloned());
                let existing = self
                    .pg
                    .sync_slots(&wanted, &ignored, t)
                    .await
                    .map_err(|e| e.to_string())?;
                self.sync_logical_slots(&logical, &ignored, &existing, t)
                    .await;
                Ok(())
            }
        }
    }

    /// The leader's permanent logical slots (`slots:` entries of type
    /// logical): each missing one not matched by `ignore_slots` is created
    /// off the loop, one job per slot at a time, and looked for again in
    /// the next cycle. Never fails the cycle's sequence: a failure (no such
    /// database or plugin, `wal_level` below logical, a timeout) is logged,
    /// rate-limited per slot, and tried again. Never drops a logical slot.
    async fn sync_logical_slots(
        &mut self,
        wanted: &[crate::cluster::LogicalSlot],
        ignored: &[crate::cluster::SlotMatch],
        existing: &[crate::cluster::ExistingSlot],
        t: Duration,
    ) {
        let finished: Vec<String> = self
            .logical_slot_jobs
            .iter()
            .filter(|(_, job)| job.is_finished())
            .map(|(name, _)| name.clone())
            .collect();
        for name in finished {
            let Some(job) = self.logical_slot_jobs.remove(&name) else {
                continue;
            };
            match job.await {
                Ok(Ok(Some(lsn))) => {
                    info!("permanent logical replication slot {name} created at {lsn}");
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    self.warn_limited_as(
                        format!("logical slot {name}"),
                        format!("creating permanent logical replication slot {name}: {e}"),
                    );
                }
                Err(e) => {
                    self.warn_limited_as(
                        format!("logical slot {name}"),
                        format!("creating permanent logical replication slot {name}: {e}"),
                    );
                }
            }
        }
        let plan = crate::cluster::plan_logical_slots(wanted, ignored, existing);
        for (w, e) in plan.mismatched {
            self.warn_limited_as(
                format!("logical slot {}", w.name),
                format!(
                    "slots.{n}: a {kind} slot {n} exists{on} instead of the logical one in database {db} with plugin {plugin} that the config key asks for: left as it is (leasedog drops no logical slot; drop it by hand to have it made as configured)",
                    n = w.name,
                    kind = e.kind,
                    on = if e.kind == "logical" {
                        format!(" (database {}, plugin {})", e.database, e.plugin)
                    } else {
                        String::new()
                    },
                    db = w.database,
                    plugin = w.plugin,
                ),
            );
        }
        for w in plan.create {
            if self.logical_slot_jobs.contains_key(&w.name) {
                continue;
            }
            debug!(
                "creating permanent logical replication slot {} in database {} with plugin {}",
                w.name, w.database, w.plugin
            );
            let job = tokio::spawn(self.pg.create_logical_slot(&w, t));
            self.logical_slot_jobs.insert(w.name, job);
        }
    }

    fn upstream(&self, u: &ha::Upstream) -> Result<postgres::Upstream, String> {
        postgres::Upstream::from_conn_url(
            &u.conn_url,
            &self.cfg.postgresql.authentication.replication,
            &self.cfg.name,
        )
        .map(|up| postgres::Upstream {
            with_slot: u.slot.is_some(),
            ..up
        })
        .ok_or_else(|| {
            format!(
                "member {} publishes an unusable conn_url {}",
                crate::config::excerpt(&u.member),
                crate::config::excerpt(&u.conn_url)
            )
        })
    }

    fn arm_watchdog(&mut self, required: bool) -> Result<(), String> {
        let now = self.now();
        let secs = self.node.watchdog_target_secs(&self.ha);
        if !ha::may_feed(&self.ha, &self.node, now, secs) {
            return Err("lease renewal too old to arm the watchdog safely".into());
        }
        match Watchdog::arm(self.cfg.watchdog.driver, &self.cfg.watchdog.device, secs) {
            Ok(w) if !w.magic_close() && required => {
                // Any close stops such a device: a crashed agent would leave
                // a writable primary unfenced.
                let _ = w.disarm();
                self.node.on_arm_failed();
                Err(format!(
                    "watchdog required but {} does not support the magic close (WDIOF_MAGICCLOSE): a crash of the agent would stop it",
                    self.cfg.watchdog.device.display()
                ))
            }
            Ok(w) => {
                if !w.magic_close() {
                    self.warn_limited(format!(
                        "{} does not support the magic close (WDIOF_MAGICCLOSE): it fences a hang but not a crash of the agent",
                        self.cfg.watchdog.device.display()
                    ));
                }
                info!(
                    "watchdog armed: {} ({}), timeout {}s",
                    self.cfg.watchdog.device.display(),
                    w.identity(),
                    w.timeout()
                );
                self.node.on_armed(now, w.timeout());
                self.last_feed = Some(Instant::now());
                // systemd keeps the device open if this process dies: a
                // crash must not close it (the close would ping it). Only
                // where the unit asks for it (and has a store).
                if let (Some(n), Some(fd)) = (&self.notifier, w.fd())
                    && fd_store_enabled()
                    && let Err(e) = n.store_fd(fd, WATCHDOG_FD_NAME)
                {
                    warn!(
                        "could not hand the watchdog to systemd's file descriptor store: {e}; a crash of the agent would restart its countdown"
                    );
                }
                self.watchdog = Some(w);
                Ok(())
            }
            Err(e) => {
                self.node.on_arm_failed();
                if required {
                    Err(format!("watchdog required but cannot be armed: {e}"))
                } else {
                    self.warn_limited(format!(
                        "running WITHOUT fencing: watchdog cannot be armed: {e}"
                    ));
                    Ok(())
                }
            }
        }
    }

    /// SETTIMEOUT on the armed watchdog (it pings): under the feed rule
    /// with the new timeout. A failure leaves the device's timeout unknown:
    /// the longer of the two is assumed.
    fn set_watchdog_timeout(&mut self, secs: u32) -> Result<(), String> {
        let now = self.now();
        if !ha::may_feed(&self.ha, &self.node, now, secs) {
            self.warn_limited(format!(
                "lease renewal answered late: not setting the watchdog timeout to {secs}s this cycle"
            ));
            return Ok(());
        }
        let Some(w) = self.watchdog.as_mut() else {
            return Ok(());
        };
        let before = w.timeout();
        match w.set_timeout(secs) {
            Ok(got) => {
                self.node.on_watchdog_timeout_set(now, secs, Some(got));
                self.last_feed = Some(Instant::now());
                info!("watchdog timeout {before}s -> {got}s (ttl changed)");
                if got > secs {
                    return Err(format!(
                        "the watchdog set its timeout to {got}s when {secs}s was asked: it would outlive the lease"
                    ));
                }
                Ok(())
            }
            Err(e) => {
                self.node.on_watchdog_timeout_set(now, secs, None);
                Err(format!("setting the watchdog timeout to {secs}s: {e}"))
            }
        }
    }

    fn feed_watchdog(&mut self) {
        let now = self.now();
        let secs = self.node.watchdog_timeout_secs.unwrap_or(0);
        if !ha::may_feed(&self.ha, &self.node, now, secs) {
            self.warn_limited(
                "lease renewal answered late: not feeding the watchdog this cycle".into(),
            );
            return;
        }
        let Some(w) = self.watchdog.as_mut() else {
            return;
        };
        match w.keepalive() {
            Ok(()) => {
                let before = self.node.watchdog_deadline;
                self.node.on_fed(now, w.timeout());
                self.last_feed = Some(Instant::now());
                if before.is_some_and(|d| d.since(now) < self.ha.loop_wait_ms) {
                    warn!(
                        "cycle late against the watchdog: fed {} ms before it would have fired",
                        before.map(|d| d.since(now)).unwrap_or(0)
                    );
                }
            }
            Err(e) => error!("watchdog keepalive failed: {e}"),
        }
    }

    fn disarm_watchdog(&mut self) {
        if let Some(w) = self.watchdog.take() {
            // systemd's stored copy goes too, or the device would stay open
            // (and counting) after our magic close. And it goes first: the
            // device opens once, so a copy systemd has not closed yet would
            // fail the next arm (EBUSY); the barrier waits until systemd
            // has processed the removal.
            if let Some(n) = &self.notifier {
                n.remove_fd(WATCHDOG_FD_NAME);
                if fd_store_enabled() {
                    match n.barrier(Duration::from_secs(1)) {
                        Ok(true) => {}
                        Ok(false) => warn!(
                            "systemd did not confirm the removal of the stored watchdog within 1 s: the next arm may find the device busy"
                        ),
                        Err(e) => debug!("sd_notify barrier: {e}"),
                    }
                }
            }
            match w.disarm() {
                Ok(()) => info!("watchdog disarmed"),
                Err(e) => error!("watchdog magic close failed (it may still fire): {e}"),
            }
        }
        self.node.on_disarmed();
    }

    async fn stop_postgres(&mut self) -> Result<(), String> {
        // A leader stopping against its fence gets the stop budget; otherwise
        // there is time for a clean shutdown.
        let total = if self.node.leader_confirmed {
            self.ha.stop_budget_ms()
        } else {
            self.ha.retry_timeout_ms.max(10_000)
        };
        let outcome = self
            .pg
            .stop(Duration::from_millis(total))
            .await
            .map_err(|e| e.to_string())?;
        info!("PostgreSQL stopped ({outcome:?})");
        if outcome != postgres::StopOutcome::AlreadyStopped {
            let was = if self.last_local.writable() {
                "primary"
            } else {
                "replica"
            };
            self.callback(Event::Stop, was);
            if was == "primary" {
                self.callback(Event::RoleChange, "demoted");
            }
        }
        Ok(())
    }

    /// After a switchover's clean stop: the key goes only once the candidate
    /// has received the shutdown checkpoint (then it holds every commit this
    /// primary acknowledged). Otherwise the request is deleted and this node
    /// stays the leader: the next cycle starts PostgreSQL again.
    async fn confirm_handover(&mut self, candidate: &ha::Upstream) -> Result<(), String> {
        let t = Duration::from_millis(self.ha.retry_timeout_ms);
        let shutdown = match self.pg.controldata(t).await {
            crate::cluster::DataDir::Initialized {
                crashed: false,
                checkpoint,
                ..
            } => Some(checkpoint),
            _ => None,
        };
        let mut up = self.upstream(candidate)?;
        up.user = self
            .cfg
            .postgresql
            .authentication
            .superuser
            .username
            .clone();
        up.password = self
            .cfg
            .postgresql
            .authentication
            .superuser
            .password
            .clone();
        let end = Instant::now() + t;
        let mut seen = None;
        if let Some(ckpt) = shutdown {
            while Instant::now() < end {
                let left = end.saturating_duration_since(Instant::now());
                match postgres::received_lsn(&up, left.min(Duration::from_secs(1))).await {
                    Ok(lsn) if lsn > ckpt => {
                        info!(
                            "{} received the shutdown checkpoint {ckpt} (at {lsn}): handing over",
                            candidate.member
                        );
                        return Ok(());
                    }
                    Ok(lsn) => seen = Some(lsn.to_string()),
                    Err(e) => seen = Some(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let why = match (shutdown, seen) {
            (None, _) => "PostgreSQL did not shut down cleanly".to_string(),
            (Some(c), s) => format!(
                "{} did not receive the shutdown checkpoint {c} (last seen: {})",
                candidate.member,
                s.unwrap_or_else(|| "nothing".into())
            ),
        };
        let t = self.io_timeout();
        if let Err(e) = self.dcs.delete_failover(t).await {
            warn!("clearing the abandoned switchover request: {e}");
        }
        Err(format!("switchover abandoned, staying the leader: {why}"))
    }

    fn callback(&self, ev: Event, role: &str) {
        let t = Duration::from_millis(self.ha.retry_timeout_ms.max(10_000));
        callbacks::fire(&self.cfg.postgresql.callbacks, ev, role, &self.cfg.scope, t);
    }

    fn update_snapshot(&self, summary: &str, started: Instant) {
        let now = self.now();
        snapshot::write(
            &self.shared,
            Snapshot {
                scope: self.cfg.scope.clone(),
                name: self.cfg.name.clone(),
                local: self.last_local.clone(),
                view: self.last_view.clone(),
                leader: self.node.leader_confirmed,
                paused: self.node.paused,
                nofailover: self.cfg.tags.nofailover,
                noloadbalance: self.cfg.tags.noloadbalance,
                watchdog_armed: self.node.watchdog_armed,
                watchdog_last_feed: self.last_feed,
                lease_left_ms: self.node.lease_deadline(&self.ha).map(|d| d.since(now)),
                cycle_at: Instant::now(),
                cycle_ms: started.elapsed().as_millis() as u64,
                stale_after_ms: self.ha.ttl_ms + self.ha.loop_wait_ms,
                summary: summary.to_string(),
            },
        );
    }

    /// Writes this member's key.
    async fn publish(&mut self) {
        if self.dcs.lease_id().is_none() {
            return;
        }
        let info = self.member_info();
        // The key lives as long as the lease: write it only when it changed
        // or the lease is new.
        let current = (self.dcs.lease_id(), info.clone());
        // A key deleted or changed behind our back (by a hostile or clumsy
        // writer) is rewritten: list, switchover and the resume guard read
        // it. Checked against this cycle's read, once per cycle.
        let tampered = !std::mem::replace(&mut self.member_key_checked, true)
            && self.last_view.as_ref().is_some_and(|v| {
                v.member(&self.cfg.name).map(|m| &m.info) != self.published.as_ref().map(|p| &p.1)
            });
        if self.published.as_ref() == Some(&current) && !tampered {
            return;
        }
        // For a leader, half of what is left before its stop deadline: the
        // member key must never spend the time the confirmation and the
        // feed that follow it need (an etcd member cut from its quorum
        // answers nothing until the call times out).
        let t = self.observe_timeout();
        match self.dcs.put_member(&info, t).await {
            Ok(()) => self.published = Some(current),
            Err(e) => self.warn_limited(format!("publishing member key failed: {e}")),
        }
    }

    fn member_info(&self) -> MemberInfo {
        let l = &self.last_local;
        MemberInfo {
            conn_url: format!(
                "postgres://{}/postgres",
                self.cfg.postgresql.connect_address
            ),
            api_url: format!(
                "{}://{}/patroni",
                if self.api_security.tls() {
                    "https"
                } else {
                    "http"
                },
                self.cfg.restapi.connect_address
            ),
            state: l.state_name().into(),
            role: l.role(),
            xlog_location: l.lsn.map(|x| x.0),
            timeline: l.timeline,
            tags: Tags {
                nofailover: self.cfg.tags.nofailover,
                noloadbalance: self.cfg.tags.noloadbalance,
                nosync: self.cfg.tags.nosync,
            },
            version: env!("CARGO_PKG_VERSION").into(),
            epoch: self
                .last_view
                .as_ref()
                .and_then(|v| v.leader.as_ref())
                .map(|l| l.create_revision),
            streaming: l.streaming,
            replication_state: l.streaming.then(|| "streaming".to_string()),
            pause: self.node.paused,
            // The probe that gave this position ran after this read.
            leaderless_rev: self
                .last_view
                .as_ref()
                .filter(|v| v.leader.is_none())
                .map(|v| v.revision),
            pending_restart: l.running && l.pending_restart,
            restarted: self.restarted.clone(),
            reloaded: self.reloaded.clone(),
        }
    }

    /// In maintenance mode, stopping the agent leaves PostgreSQL running, as
    /// Patroni does: the agent can be restarted or upgraded without a
    /// failover. That is safe only while the cluster stays paused, so our
    /// member key goes first (from then on `resume` is refused: it needs the
    /// leader's member key, see `cluster::resume_refusal`), and a fresh read
    /// must still show the pause. The leader key is left to expire with our
    /// lease, or to be taken back by our next process. Returns false when
    /// the normal stop must run instead.
    async fn leave_running_if_paused(&mut self) -> bool {
        let t = self.io_timeout();
        if let Err(e) = self.dcs.delete_member(t).await {
            warn!(
                "maintenance mode, but the member key could not be deleted ({e}): stopping PostgreSQL"
            );
            return false;
        }
        match self.dcs.read(t).await {
            Ok(v) if v.paused() => {}
            Ok(_) => {
                info!("maintenance mode ended meanwhile: stopping PostgreSQL");
                return false;
            }
            Err(e) => {
                warn!("cannot confirm maintenance mode ({e}): stopping PostgreSQL");
                return false;
            }
        }
        self.disarm_watchdog();
        info!("maintenance mode: leaving PostgreSQL running; start leasedog again before resuming");
        self.notify("STOPPING=1\nSTATUS=maintenance mode: PostgreSQL left running");
        true
    }

    /// Graceful stop: PostgreSQL stopped cleanly, key released, watchdog
    /// disarmed (in that order), lease revoked.
    async fn shutdown(&mut self) {
        if self.node.paused && self.leave_running_if_paused().await {
            info!("leasedog stopped");
            return;
        }
        info!("shutting down: stopping PostgreSQL");
        self.notify("STOPPING=1\nSTATUS=shutting down: stopping PostgreSQL");
        if self.node.leader_confirmed {
            // Renew once more (and feed, under the feed rule): a clean stop
            // then gets a whole lease, not what is left of the last one.
            for a in [
                Action::KeepAlive,
                Action::ConfirmLeader { status: None },
                Action::FeedWatchdog,
            ] {
                if let Err(e) = self.execute(&a).await {
                    warn!("{} before stopping: {e}", describe(&a));
                    break;
                }
            }
        }
        // A leader has until the earlier of its lease and watchdog deadlines
        // (the loop no longer renews): 60% of it for a fast (clean) stop,
        // the rest for an immediate one. Others fence nothing and may let a
        // checkpoint finish: NON_LEADER_FAST_STOP, then immediate.
        let budget = self
            .node
            .clean_stop_budget_ms(&self.ha, self.now())
            .map(Duration::from_millis)
            .unwrap_or(NON_LEADER_STOP);
        let stopped = match self.pg.stop(budget).await {
            Ok(o) => {
                info!("PostgreSQL stopped ({o:?})");
                if o != postgres::StopOutcome::AlreadyStopped {
                    let role = if self.last_local.writable() {
                        "primary"
                    } else {
                        "replica"
                    };
                    // The process is about to exit: wait for the callback.
                    if let Some(argv) = callbacks::command_for(
                        &self.cfg.postgresql.callbacks,
                        Event::Stop,
                        role,
                        &self.cfg.scope,
                    ) {
                        callbacks::run(argv, Duration::from_secs(5)).await;
                    }
                }
                true
            }
            Err(e) => {
                error!("could not stop PostgreSQL: {e}");
                false
            }
        };
        let t = Duration::from_millis(self.ha.retry_timeout_ms);
        if stopped {
            match self.dcs.release_leader(t).await {
                Ok(true) => info!("released the leader key"),
                Ok(false) => {}
                Err(e) => warn!("could not release the leader key: {e}"),
            }
            self.disarm_watchdog();
            if let Err(e) = self.dcs.revoke_lease(t).await {
                debug!("lease revoke failed: {e}");
            }
        } else {
            self.stay_until_stopped().await;
        }
        info!("leasedog stopped");
    }

    /// The graceful stop could not confirm PostgreSQL stopped: it may still
    /// be writable. Exiting now would close the watchdog, and Linux pings it
    /// on a close without the magic character — a full timeout from *now*,
    /// which can outlast the lease. So the agent stays: it no longer renews
    /// or feeds (the hardware resets this machine at last feed + timeout,
    /// before the lease expires), keeps the leader key to its lease, and
    /// tries the stop again until PostgreSQL is known stopped.
    async fn stay_until_stopped(&mut self) {
        error!(
            "PostgreSQL may still be writable: not exiting; the leader key is kept and the watchdog is no longer fed{}",
            if self.watchdog.is_some() {
                " (it resets this machine before the lease expires)"
            } else {
                ""
            }
        );
        self.notify("STATUS=stopping: PostgreSQL state unknown, watchdog not fed");
        let retry = Duration::from_millis(self.ha.stop_budget_ms());
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match self.pg.stop(retry).await {
                Ok(o) => {
                    info!("PostgreSQL stopped ({o:?}) after all");
                    break;
                }
                Err(e) => self.warn_limited(format!("stopping PostgreSQL again: {e}")),
            }
        }
        let t = Duration::from_millis(self.ha.retry_timeout_ms);
        match self.dcs.release_leader(t).await {
            Ok(true) => info!("released the leader key"),
            Ok(false) => {}
            Err(e) => warn!("could not release the leader key: {e}"),
        }
        self.disarm_watchdog();
    }
}

/// How a replica streams, for the log.
fn slot_said(u: &ha::Upstream) -> String {
    match &u.slot {
        Some(s) => format!(" with replication slot {s}"),
        None => " without a replication slot".into(),
    }
}

/// The name of the watchdog's descriptor in systemd's file descriptor store.
const WATCHDOG_FD_NAME: &str = "watchdog";

/// Whether the unit asks for the armed watchdog to be kept in systemd's
/// file descriptor store (it also needs `FileDescriptorStoreMax=`).
/// What `synchronous_standby_names` every start begins with, when
/// synchronous mode makes it leasedog's.
/// `synchronous_standby_names` before the leader chose standbys, when
/// synchronous mode is on (managed); None when it is off.
fn sync_initial(ha: &HaConfig) -> Option<String> {
    ha.sync.on().then(|| ha.sync.initial_names().render())
}

fn fd_store_enabled() -> bool {
    std::env::var_os("LEASEDOG_WATCHDOG_FDSTORE").is_some()
}

/// Runs a long operation (initdb, pg_basebackup: minutes to hours) so that
/// SIGTERM or SIGINT end it rather than wait for it: the operation is
/// dropped, which kills its process group and empties the data directory it
/// was filling, and the loop then sees the same signal and shuts down. Not
/// for pg_rewind: an interrupted rewind can leave a data directory that only
/// a new base backup repairs.
async fn until_stop_signal<E: std::fmt::Display>(
    op: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return op.await.map_err(|e| e.to_string());
    };
    tokio::select! {
        r = op => r.map_err(|e| e.to_string()),
        _ = term.recv() => Err("interrupted by SIGTERM".into()),
        _ = int.recv() => Err("interrupted by SIGINT".into()),
    }
}

/// How long a graceful shutdown of a non-leader may take to stop
/// PostgreSQL (most of it for a fast, clean stop; see `ha::stop_split_ms`).
/// Together with the stop callback and the etcd calls that follow it stays
/// within the unit's `TimeoutStopSec=180`.
const NON_LEADER_STOP: Duration = Duration::from_secs(120);

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn describe(a: &Action) -> &'static str {
    match a {
        Action::KeepAlive => "lease keep-alive",
        Action::ConfirmLeader { .. } => "leader confirmation",
        Action::AcquireLeader => "leader key acquisition",
        Action::TakeOverLeader { .. } => "leader key take-over",
        Action::ReleaseLeader => "leader key release",
        Action::ClearUnleasedLeader { .. } => "clearing an unleased leader key",
        Action::ReplaceOrphanLeader { .. } => "replacing an orphan leader key",
        Action::ArmWatchdog { .. } => "arming the watchdog",
        Action::FeedWatchdog => "feeding the watchdog",
        Action::SetWatchdogTimeout { .. } => "setting the watchdog timeout",
        Action::MoveLease { .. } => "moving the leader key to a new lease",
        Action::NewLease => "taking a lease of the new ttl",
        Action::DisarmWatchdog => "disarming the watchdog",
        Action::Initdb => "initdb",
        Action::StartPrimary => "starting PostgreSQL as primary",
        Action::StartReplica { .. } => "starting PostgreSQL as replica",
        Action::Follow { .. } => "switching upstream",
        Action::Promote => "promotion",
        Action::StopPostgres => "stopping PostgreSQL",
        Action::StopCleanly => "stopping PostgreSQL cleanly",
        Action::ConfirmHandover { .. } => "handing over",
        Action::Clone { .. } => "pg_basebackup",
        Action::Rewind { .. } => "pg_rewind",
        Action::CreateReplicationUser => "creating the replication user",
        Action::WriteInitialize { .. } => "writing the initialize key",
        Action::SyncSlots { .. } => "replication slots",
        Action::DeleteFailover => "clearing the switchover request",
        Action::WriteSync { .. } => "writing the sync key",
        Action::DeleteSync { .. } => "deleting the sync key",
        Action::SetSyncNames { .. } => "setting synchronous_standby_names",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A warning whose text changes every cycle (the age of a stale
    /// switchover, a time a hostile writer rewrites) is still logged once
    /// per 30 s: it is limited by its key, not its text.
    #[test]
    fn warnings_are_rate_limited_by_key() {
        let mut a = Agent::new(Config::default(), Default::default());
        assert!(a.warn_limited_as("stale switchover".into(), "at 1 (5 s ago)".into()));
        assert!(!a.warn_limited_as("stale switchover".into(), "at 1 (6 s ago)".into()));
        assert!(!a.warn_limited_as("stale switchover".into(), "at 2 (1 s ago)".into()));
        assert!(a.warn_limited_as("another".into(), "at 1 (6 s ago)".into()));
        a.warn_limited("same text".into());
        assert!(!a.warn_limited_as("same text".into(), "same text".into()));
    }
}
