//! The local PostgreSQL instance: what it is (probe), what it runs with
//! (conf), and what we do to it (ctl): initdb, start, stop (fast, then
//! immediate), promote, follow, clone, rewind, slots.
//!
//! Every operation takes the caller's timeout; processes run with
//! tokio::process and are killed when they run over.

pub mod conf;
pub mod ctl;
pub mod probe;

pub use conf::Upstream;

use crate::cluster::{DataDir, LocalPostgres};
use crate::config::PostgresqlConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What went wrong, for the log.
#[derive(Debug)]
pub enum PgError {
    Spawn {
        program: &'static str,
        source: std::io::Error,
    },
    Timeout {
        program: &'static str,
        after: Duration,
    },
    Failed {
        program: &'static str,
        code: Option<i32>,
        output: String,
    },
    Io {
        what: String,
        source: std::io::Error,
    },
    Query(String),
    NotEmpty(PathBuf),
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PgError::Spawn { program, source } => write!(f, "cannot run {program}: {source}"),
            PgError::Timeout { program, after } => {
                write!(f, "{program} did not finish within {after:?}")
            }
            PgError::Failed {
                program,
                code,
                output,
            } => {
                write!(
                    f,
                    "{program} failed (exit {}): {output}",
                    code.map(|c| c.to_string()).unwrap_or("by signal".into())
                )
            }
            PgError::Io { what, source } => write!(f, "{what}: {source}"),
            PgError::Query(e) => write!(f, "query failed: {e}"),
            PgError::NotEmpty(p) => {
                write!(f, "{} is not empty: refusing to overwrite it", p.display())
            }
        }
    }
}

impl std::error::Error for PgError {}

/// An error with its causes: tokio-postgres says only "db error" or "error
/// connecting to server" and keeps PostgreSQL's message (`ERROR: all
/// replication slots are in use`) or the I/O error in its source.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.ends_with(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// How PostgreSQL was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    AlreadyStopped,
    Fast,
    Immediate,
}

/// How a stop budget is shared: the status check, the fast shutdown, the
/// immediate one (the final status check gets what is left).
struct StopSplit {
    status: Duration,
    fast: Duration,
    immediate: Duration,
}

fn split_budget(budget: Duration) -> StopSplit {
    let ms = budget.as_millis() as u64;
    let (status, fast, immediate) = crate::ha::stop_split_ms(ms);
    StopSplit {
        status: Duration::from_millis(status),
        fast: Duration::from_millis(fast),
        immediate: Duration::from_millis(immediate),
    }
}

fn secs(d: Duration) -> String {
    d.as_secs().max(1).to_string()
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The local instance.
pub struct Postgres {
    cfg: PostgresqlConfig,
    member: String,
    client: Option<tokio_postgres::Client>,
    /// The newest timeline the WAL receiver reported since the last start.
    streamed_tli: Option<u32>,
    /// What the last successful probe said of recovery, since this agent
    /// last started or promoted the server: an unanswered probe of a server
    /// last seen in recovery is an unknown *replica* (it becomes writable
    /// only by a promotion). None: nothing known.
    seen_in_recovery: Option<bool>,
    /// Synchronous mode: `synchronous_standby_names` is leasedog's. The
    /// value every start begins with, and the one in force now.
    sync_initial: Option<String>,
    sync_names: Option<String>,
    /// Notified when the probe's connection ends: a PostgreSQL that dies
    /// (or restarts) wakes the loop at once instead of at its next cycle.
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The cluster-wide settings last written to `leasedog-cluster.conf`
    /// (and, when the server ran, reloaded). None: not written yet by
    /// this agent.
    cluster_params: Option<BTreeMap<String, String>>,
    /// The pg_hba.conf lines last found in the file (written if need be)
    /// and, when the server ran, reloaded. None: not looked at yet.
    hba_applied: Option<Vec<String>>,
    /// pg_hba.conf was rewritten while the server ran and the reload has
    /// not succeeded yet.
    hba_reload_pending: bool,
    /// A replica's settings raised to pg_control's at its last start
    /// (`hot_standby::raise`), kept at the end of `leasedog.conf`: the
    /// server runs with them until a restart, which the member key shows
    /// as a pending restart.
    raised: Vec<crate::hot_standby::Raised>,
}

/// What `pg_ctl status` says of the postmaster. Only its exit code 3 (no
/// server running) means stopped; a timeout, a failure to run pg_ctl
/// (EAGAIN under TasksMax, ENOENT after bin_dir changed), exit 4 (data
/// directory not accessible) or anything else is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postmaster {
    Running,
    Stopped,
    Unknown(String),
}

/// Reads `pg_ctl status`'s outcome.
pub fn postmaster_from(outcome: &Result<String, PgError>) -> Postmaster {
    match outcome {
        Ok(_) => Postmaster::Running,
        Err(PgError::Failed { code: Some(3), .. }) => Postmaster::Stopped,
        Err(e) => Postmaster::Unknown(e.to_string()),
    }
}

impl Postgres {
    pub fn new(cfg: PostgresqlConfig, member: String) -> Postgres {
        Postgres {
            cfg,
            member,
            client: None,
            streamed_tli: None,
            seen_in_recovery: None,
            sync_initial: None,
            sync_names: None,
            wake: None,
            cluster_params: None,
            hba_applied: None,
            hba_reload_pending: false,
            raised: Vec::new(),
        }
    }

    /// After a reload of the file: the settings a running replica was
    /// started with above the cluster's stay known (and pending).
    pub fn keep_raised_from(&mut self, before: &Postgres) {
        self.raised = before.raised.clone();
    }

    /// The loop's wake-up: notified when the probe's connection ends.
    pub fn wake_on_disconnect(&mut self, wake: std::sync::Arc<tokio::sync::Notify>) {
        self.wake = Some(wake);
    }

    /// Writes the cluster-wide settings (the `config` key's
    /// `postgresql.parameters`) to `leasedog-cluster.conf` when they differ
    /// from what this agent last wrote, and reloads a running server.
    /// Returns the names set, changed or removed, and what was left out
    /// (see `conf::cluster_conf`); None when nothing changed or there is no
    /// data directory yet. A failed reload is an error and is tried again
    /// next time (the file is written again too).
    pub async fn apply_cluster_parameters(
        &mut self,
        params: &BTreeMap<String, String>,
        running: bool,
        timeout: Duration,
    ) -> Result<Option<(Vec<String>, Vec<String>)>, PgError> {
        if self.cluster_params.as_ref() == Some(params) || !self.data().join("PG_VERSION").exists()
        {
            return Ok(None);
        }
        let before = self.cluster_params.take().unwrap_or_default();
        let changed: Vec<String> = params
            .iter()
            .filter(|(k, v)| before.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .chain(before.keys().filter(|k| !params.contains_key(*k)).cloned())
            .collect();
        let (text, skipped) = conf::cluster_conf(params, self.sync_initial.is_some());
        let path = self.data().join(conf::CLUSTER_FILE);
        conf::write_atomic(&path, &text).map_err(io(format!("writing {}", path.display())))?;
        // A data directory from before this file existed: its managed file
        // is rewritten with the include at the next start; until then the
        // include goes first (everything after it wins, as it will then).
        let managed = self.data().join(conf::MANAGED_FILE);
        if let Ok(m) = std::fs::read_to_string(&managed)
            && !m.contains(conf::CLUSTER_INCLUDE_LINE)
        {
            let text = format!("{}\n{m}", conf::CLUSTER_INCLUDE_LINE);
            conf::write_atomic(&managed, &text)
                .map_err(io(format!("writing {}", managed.display())))?;
        }
        if running {
            self.reload(timeout).await?;
        }
        self.cluster_params = Some(params.clone());
        Ok(Some((changed, skipped)))
    }

    /// Takes `lines` as pg_hba.conf (the `config` key's `postgresql.pg_hba`
    /// over the file's): every later write of the managed files uses them,
    /// and when pg_hba.conf holds something else it is written now and a
    /// running server reloaded (as Patroni). Returns whether it was
    /// written, and the lines PostgreSQL could not read (from
    /// `pg_hba_file_rules`: it keeps its old rules then, and would refuse
    /// to start). Empty `lines`: pg_hba.conf is left alone. A failed reload
    /// is an error and is tried again next time.
    pub async fn apply_pg_hba(
        &mut self,
        lines: &[String],
        running: bool,
        timeout: Duration,
    ) -> Result<(bool, Vec<String>), PgError> {
        self.cfg.pg_hba = lines.to_vec();
        if lines.is_empty()
            || self.hba_applied.as_deref() == Some(lines)
            || !self.data().join("PG_VERSION").exists()
        {
            return Ok((false, Vec::new()));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let path = self.data().join("pg_hba.conf");
        let text = conf::hba_conf(lines);
        let written = std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str());
        if written {
            conf::write_atomic(&path, &text).map_err(io(format!("writing {}", path.display())))?;
            self.hba_reload_pending = running;
        }
        let mut unreadable = Vec::new();
        if running && self.hba_reload_pending {
            self.reload(left()).await?;
            self.hba_reload_pending = false;
            let client = self.client(left()).await?;
            let rows = tokio::time::timeout(
                left(),
                client.query(
                    "SELECT coalesce(line_number, 0), error FROM pg_hba_file_rules WHERE error IS NOT NULL",
                    &[],
                ),
            )
            .await
            .map_err(|_| PgError::Query("reading pg_hba_file_rules timed out".into()))?
            .map_err(|e| PgError::Query(error_chain(&e)))?;
            for r in rows {
                let line: i32 = r.try_get(0).unwrap_or(0);
                let error: String = r.try_get(1).unwrap_or_default();
                unreadable.push(format!("pg_hba.conf line {line}: {error}"));
            }
        }
        self.hba_applied = Some(lines.to_vec());
        Ok((written, unreadable))
    }

    /// Empties the data directory of a stopped replica for a reinit: the
    /// directory is renamed aside (one atomic step: from then on the data
    /// directory is absent, which the next cycle clones again, also after
    /// a crash right here), made again empty, and the old one removed. A
    /// data directory that cannot be renamed (a mount point) is an error:
    /// nothing is removed.
    pub fn empty_for_reinit(&mut self) -> Result<(), PgError> {
        let data = self.data().to_path_buf();
        let aside = PathBuf::from(format!("{}.leasedog-reinit", data.display()));
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(io(format!("removing {}", aside.display())))?;
        }
        std::fs::rename(&data, &aside).map_err(io(format!(
            "renaming {} to {} (a data directory that is a mount point cannot be reinitialized: empty it by hand)",
            data.display(),
            aside.display()
        )))?;
        self.client = None;
        self.streamed_tli = None;
        self.seen_in_recovery = None;
        self.cluster_params = None;
        self.hba_applied = None;
        self.raised.clear();
        create_dir_0700(&data)?;
        std::fs::remove_dir_all(&aside).map_err(io(format!("removing {}", aside.display())))
    }

    /// Synchronous mode: leasedog sets `synchronous_standby_names`, and
    /// every start begins with `initial` (see `sync::SyncConfig::initial_names`).
    pub fn manage_sync_names(&mut self, initial: Option<String>) {
        self.sync_initial = initial.clone();
        self.sync_names = initial;
    }

    /// Sets `synchronous_standby_names` on the running primary and reloads;
    /// succeeds once the server reports the new value.
    pub async fn set_sync_names(&mut self, names: &str, timeout: Duration) -> Result<(), PgError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        self.sync_names = Some(names.to_string());
        self.write_managed(None)?;
        self.reload(left()).await?;
        loop {
            let client = self.client(left()).await?;
            let got = tokio::time::timeout(
                left(),
                client.query_one("SELECT current_setting('synchronous_standby_names')", &[]),
            )
            .await;
            match got {
                Ok(Ok(row)) => {
                    let v: String = row
                        .try_get(0)
                        .map_err(|e| PgError::Query(error_chain(&e)))?;
                    if v == names {
                        return Ok(());
                    }
                }
                Ok(Err(e)) => return Err(PgError::Query(error_chain(&e))),
                Err(_) => {
                    self.client = None;
                    return Err(PgError::Query(
                        "timed out reading synchronous_standby_names".into(),
                    ));
                }
            }
            if left() < Duration::from_millis(20) {
                return Err(PgError::Query(format!(
                    "the server did not take synchronous_standby_names = '{names}' in time"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn data(&self) -> &Path {
        &self.cfg.data_dir
    }

    fn bin(&self) -> &Path {
        &self.cfg.bin_dir
    }

    fn data_str(&self) -> String {
        self.cfg.data_dir.display().to_string()
    }

    fn log(&self) -> PathBuf {
        ctl::log_path(self.data())
    }

    fn port(&self) -> u16 {
        conf::split_listen(&self.cfg.listen).1
    }

    async fn client(&mut self, timeout: Duration) -> Result<&tokio_postgres::Client, PgError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let mut c = tokio_postgres::Config::new();
            c.host_path(&self.cfg.socket_dir)
                .port(self.port())
                .user(&self.cfg.authentication.superuser.username)
                .dbname("postgres")
                .application_name("leasedog")
                .connect_timeout(timeout)
                .options(format!(
                    "-c statement_timeout={}",
                    timeout.as_millis().max(100)
                ));
            if let Some(p) = &self.cfg.authentication.superuser.password {
                c.password(p);
            }
            let (client, conn) = tokio::time::timeout(timeout, c.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| PgError::Query("connect timed out".into()))?
                .map_err(|e| PgError::Query(error_chain(&e)))?;
            let wake = self.wake.clone();
            tokio::spawn(async move {
                let _ = conn.await;
                // Also when the agent drops the client itself: one early
                // cycle, which decides from fresh observations as any.
                if let Some(w) = wake {
                    w.notify_one();
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or_else(|| PgError::Query("no connection".into()))
    }

    /// Runs SQL (no result) within the timeout.
    pub async fn execute(&mut self, sql: &str, timeout: Duration) -> Result<(), PgError> {
        let client = self.client(timeout).await?;
        match tokio::time::timeout(timeout, client.batch_execute(sql)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PgError::Query(error_chain(&e))),
            Err(_) => {
                self.client = None;
                Err(PgError::Query(format!("timed out after {timeout:?}")))
            }
        }
    }

    /// How the instance is, this cycle, all within `timeout`. A failed query
    /// means *stopped* only when the data directory is positively empty or
    /// `pg_ctl status` says no server runs; otherwise the state is unknown.
    pub async fn probe(&mut self, timeout: Duration) -> LocalPostgres {
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        match self.query_state(timeout).await {
            Ok(l) => {
                self.seen_in_recovery = Some(l.in_recovery);
                l
            }
            Err(e) => {
                log::debug!("probe: {e}");
                self.client = None;
                let data_dir = self.controldata(left()).await;
                let postmaster = match &data_dir {
                    // Nothing to run from: no server of ours can be up.
                    DataDir::Empty => Postmaster::Stopped,
                    _ => self.postmaster_status(left()).await,
                };
                let unknown = match postmaster {
                    Postmaster::Stopped => false,
                    Postmaster::Running => {
                        log::debug!("probe: the postmaster runs but did not answer ({e})");
                        true
                    }
                    Postmaster::Unknown(why) => {
                        log::debug!("probe: {e}; pg_ctl status: {why}");
                        true
                    }
                };
                if !unknown {
                    self.seen_in_recovery = None;
                }
                LocalPostgres {
                    data_dir,
                    unknown,
                    in_recovery: unknown && self.seen_in_recovery == Some(true),
                    ..Default::default()
                }
            }
        }
    }

    /// The postmaster as `pg_ctl status` sees it, within the timeout.
    pub async fn postmaster_status(&self, timeout: Duration) -> Postmaster {
        if timeout.is_zero() {
            return Postmaster::Unknown("no time left to run pg_ctl status".into());
        }
        let mut cmd = ctl::command(self.bin(), "pg_ctl");
        cmd.arg("status").arg("-D").arg(self.data());
        postmaster_from(&ctl::run_captured(cmd, "pg_ctl status", timeout).await)
    }

    /// True only when the data directory positively holds no cluster: it is
    /// absent or empty, or readable without a `PG_VERSION` (a postmaster
    /// cannot run from it). Any error reading it is false.
    async fn holds_no_cluster(&self, timeout: Duration) -> bool {
        let timeout = timeout.max(Duration::from_millis(200));
        if self.data_dir_empty(timeout).await == Ok(true) {
            return true;
        }
        let version = self.data().join("PG_VERSION");
        let look = tokio::task::spawn_blocking(move || std::fs::symlink_metadata(version));
        matches!(
            tokio::time::timeout(timeout, look).await,
            Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::NotFound
        )
    }

    /// Whether the data directory is empty, read off the loop's thread
    /// within the timeout (a stalled volume blocks the reading thread, not
    /// the loop).
    async fn data_dir_empty(&self, timeout: Duration) -> Result<bool, String> {
        let dir = self.data().to_path_buf();
        let read = tokio::task::spawn_blocking(move || ctl::dir_is_empty(&dir));
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(Ok(empty))) => Ok(empty),
            Ok(Ok(Err(e))) => Err(format!("cannot read {}: {e}", self.data_str())),
            Ok(Err(e)) => Err(format!("reading {}: {e}", self.data_str())),
            Err(_) => Err(format!(
                "reading {} did not finish within {timeout:?}",
                self.data_str()
            )),
        }
    }

    async fn query_state(&mut self, timeout: Duration) -> Result<LocalPostgres, PgError> {
        let started = tokio::time::Instant::now();
        let raised = !self.raised.is_empty();
        let client = self.client(timeout).await?;
        let row = tokio::time::timeout(timeout, client.query_one(probe::PROBE_SQL, &[]))
            .await
            .map_err(|_| PgError::Query("probe timed out".into()))?
            .map_err(|e| PgError::Query(error_chain(&e)))?;
        let get = |e: tokio_postgres::Error| PgError::Query(error_chain(&e));
        let mut state = probe::from_row(
            row.try_get(0).map_err(get)?,
            row.try_get(1).map_err(get)?,
            row.try_get(2).map_err(get)?,
            row.try_get(3).map_err(get)?,
            row.try_get(4).map_err(get)?,
            row.try_get(5).map_err(get)?,
            row.try_get(6).map_err(get)?,
        );
        if !state.in_recovery {
            state.sync_names = Some(row.try_get(7).map_err(get)?);
        }
        // A replica started with raised settings runs other values than
        // the cluster's until it restarts (PostgreSQL sees none pending:
        // its files say what it runs).
        state.pending_restart = row.try_get(8).map_err(get)? || raised;
        if state.in_recovery {
            // Once the WAL receiver stops, PostgreSQL only reports the
            // last restartpoint's timeline: remember the newest it streamed.
            if state.streaming {
                self.streamed_tli = state.timeline.max(self.streamed_tli);
            }
            state.timeline = state.timeline.max(self.streamed_tli);
        } else {
            let rows = tokio::time::timeout(timeout, client.query(probe::REPLICATION_SQL, &[]))
                .await
                .map_err(|_| PgError::Query("replication query timed out".into()))?
                .map_err(|e| PgError::Query(error_chain(&e)))?;
            for r in rows {
                let name: Option<String> = r.try_get(0).map_err(get)?;
                let lsn: String = r.try_get(2).map_err(get)?;
                state.replication.push(crate::cluster::ReplicaStat {
                    name: name.unwrap_or_default(),
                    streaming: r.try_get(1).map_err(get)?,
                    flush: crate::cluster::Lsn::parse(&lsn).unwrap_or_default(),
                });
            }
            // Best effort, in what is left of the probe's time (it never
            // makes the probe longer): only the `status` key's list of
            // slots depends on it, and a list left unknown makes replicas
            // stream without their slot, never stop streaming.
            let left = timeout.saturating_sub(started.elapsed());
            match tokio::time::timeout(left, client.query(probe::SLOTS_SQL, &[])).await {
                Ok(Ok(rows)) => {
                    let slots = rows
                        .iter()
                        .filter_map(|r| {
                            let name: String = r.try_get(0).ok()?;
                            let lsn: String = r.try_get(1).ok()?;
                            Some((name, crate::cluster::Lsn::parse(&lsn).unwrap_or_default()))
                        })
                        .collect();
                    state.slots = Some(slots);
                }
                Ok(Err(e)) => log::debug!("probe: slot list: {}", error_chain(&e)),
                Err(_) => log::debug!("probe: slot list timed out"),
            }
        }
        if !state.in_recovery {
            self.streamed_tli = None;
        }
        // The managed file says what is in force: a reload that failed (or
        // timed out) may or may not have applied a new value, and a later
        // outside reload (an operator's pg_reload_conf) must not apply one
        // the rules have moved on from.
        if let Some(in_force) = &state.sync_names
            && self.sync_names.as_ref().is_some_and(|f| f != in_force)
        {
            self.sync_names = Some(in_force.clone());
            if let Err(e) = self.write_managed(None) {
                log::warn!("rewriting synchronous_standby_names as in force: {e}");
            }
        }
        Ok(state)
    }

    /// The data directory as the control file describes it.
    pub async fn controldata(&self, timeout: Duration) -> DataDir {
        match self.data_dir_empty(timeout).await {
            Ok(true) => return DataDir::Empty,
            Ok(false) => {}
            Err(e) => return DataDir::Unreadable(e),
        }
        if !self.data().join("global/pg_control").exists() {
            return DataDir::Invalid(format!(
                "{} is not empty but holds no PostgreSQL cluster",
                self.data_str()
            ));
        }
        let mut cmd = ctl::command(self.bin(), "pg_controldata");
        cmd.arg("-D").arg(self.data());
        match ctl::run_captured(cmd, "pg_controldata", timeout).await {
            Ok(text) => ctl::parse_controldata(&text),
            Err(e @ PgError::Failed { .. }) => DataDir::Invalid(e.to_string()),
            Err(e) => DataDir::Unreadable(e.to_string()),
        }
    }

    /// Creates a new cluster in an empty data directory, checksums on.
    pub async fn initdb(&self, timeout: Duration) -> Result<(), PgError> {
        if !ctl::dir_is_empty(self.data()).map_err(io(format!("reading {}", self.data_str())))? {
            return Err(PgError::NotEmpty(self.data().into()));
        }
        create_dir_0700(self.data())?;
        let mut cmd = ctl::command(self.bin(), "initdb");
        cmd.arg("-D")
            .arg(self.data())
            .arg("--data-checksums")
            .arg("-U")
            .arg(&self.cfg.authentication.superuser.username);
        if !self.cfg.initdb.iter().any(|a| a.starts_with("--auth")) {
            cmd.arg("--auth-local=trust")
                .arg("--auth-host=scram-sha-256");
        }
        cmd.args(&self.cfg.initdb);
        let fresh = ctl::EmptyOnDrop::new(self.data());
        ctl::run_captured(cmd, "initdb", timeout).await?;
        fresh.keep();
        self.primary_conf_with(self.sync_initial.as_deref())
    }

    fn ensure_include_and_hba(&self) -> Result<(), PgError> {
        let pc = self.data().join("postgresql.conf");
        let text = std::fs::read_to_string(&pc).map_err(io(format!("reading {}", pc.display())))?;
        if let Some(new) = conf::with_include(&text) {
            conf::write_atomic(&pc, &new).map_err(io(format!("writing {}", pc.display())))?;
        }
        if !self.cfg.pg_hba.is_empty() {
            let p = self.data().join("pg_hba.conf");
            conf::write_atomic(&p, &conf::hba_conf(&self.cfg.pg_hba))
                .map_err(io(format!("writing {}", p.display())))?;
        }
        Ok(())
    }

    /// Writes `<data_dir>.pgpass` (0600) with the configured replication and
    /// superuser passwords: primary_conninfo, pg_basebackup and pg_rewind
    /// name this file instead of carrying a password.
    fn write_passfile(&self) -> Result<(), PgError> {
        let a = &self.cfg.authentication;
        let text: String = [&a.replication, &a.superuser]
            .iter()
            .filter_map(|c| {
                c.password
                    .as_deref()
                    .map(|p| conf::pgpass_line(&c.username, p))
            })
            .collect();
        let p = conf::passfile_of(&self.cfg);
        conf::write_atomic(&p, &text).map_err(io(format!("writing {}", p.display())))
    }

    fn write_managed(&self, upstream: Option<&Upstream>) -> Result<(), PgError> {
        self.managed_with(upstream, self.sync_names.as_deref())
    }

    fn managed_with(
        &self,
        upstream: Option<&Upstream>,
        sync_names: Option<&str>,
    ) -> Result<(), PgError> {
        self.ensure_include_and_hba()?;
        if upstream.is_some() {
            self.write_passfile()?;
        }
        let p = self.data().join(conf::MANAGED_FILE);
        let text = conf::with_raised(
            &conf::managed_conf(&self.cfg, &self.member, upstream, sync_names),
            &self.raised,
        );
        conf::write_atomic(&p, &text).map_err(io(format!("writing {}", p.display())))
    }

    /// The hot-standby-critical settings of the cluster in effect here:
    /// those last written to `leasedog-cluster.conf`, else the defaults.
    fn critical_in_effect(&self) -> BTreeMap<&'static str, String> {
        crate::hot_standby::in_effect(&self.cluster_params.clone().unwrap_or_default())
    }

    /// Before a start: a replica's settings raised to what pg_control
    /// records where the cluster's are lower (`hot_standby::raise`), a
    /// primary's not raised; `leasedog.conf` rewritten when that changes
    /// its last section. pg_controldata runs within `timeout`; when it
    /// fails, the file stays as it is (a replica that cannot start says
    /// why in the server log) and the failure is logged.
    async fn raise_for_start(&mut self, standby: bool, timeout: Duration) -> Result<(), PgError> {
        let raised = if standby {
            let mut cmd = ctl::command(self.bin(), "pg_controldata");
            cmd.arg("-D").arg(self.data());
            match ctl::run_captured(cmd, "pg_controldata", timeout).await {
                Ok(text) => crate::hot_standby::raise(
                    &self.critical_in_effect(),
                    &crate::hot_standby::parse_control(&text),
                ),
                Err(e) => {
                    log::warn!(
                        "reading the primary's settings in pg_control before a replica's start: {e}"
                    );
                    return Ok(());
                }
            }
        } else {
            Vec::new()
        };
        for r in &raised {
            log::warn!(
                "{}: the cluster says {} but pg_control records {} (the primary's): this replica starts with {} and shows a pending restart until it runs the cluster's value",
                r.name,
                r.cluster,
                r.value,
                r.value
            );
        }
        self.raised = raised;
        let p = self.data().join(conf::MANAGED_FILE);
        let Ok(text) = std::fs::read_to_string(&p) else {
            return Ok(());
        };
        let new = conf::with_raised(&text, &self.raised);
        if new != text {
            conf::write_atomic(&p, &new).map_err(io(format!("writing {}", p.display())))?;
        }
        Ok(())
    }

    /// Configures a primary start: managed settings, no standby.signal.
    pub fn write_primary_conf(&mut self) -> Result<(), PgError> {
        self.raised.clear();
        self.sync_names = self.sync_initial.clone();
        self.primary_conf_with(self.sync_names.as_deref())
    }

    fn primary_conf_with(&self, sync_names: Option<&str>) -> Result<(), PgError> {
        self.managed_with(None, sync_names)?;
        let s = self.data().join("standby.signal");
        if s.exists() {
            std::fs::remove_file(&s).map_err(io(format!("removing {}", s.display())))?;
        }
        Ok(())
    }

    /// Configures a read-only start: standby.signal, streaming from
    /// `upstream` when given.
    pub fn write_standby(&mut self, upstream: Option<&Upstream>) -> Result<(), PgError> {
        self.sync_names = self.sync_initial.clone();
        self.write_managed(upstream)?;
        let s = self.data().join("standby.signal");
        std::fs::write(&s, b"").map_err(io(format!("writing {}", s.display())))
    }

    /// Starts the server and waits until it accepts connections. A
    /// `standby` start (standby.signal written) is known to be in recovery
    /// from now on, also while it does not answer yet: it leaves recovery
    /// only by a promotion.
    pub async fn start(&mut self, timeout: Duration, standby: bool) -> Result<(), PgError> {
        self.client = None;
        self.streamed_tli = None;
        self.seen_in_recovery = standby.then_some(true);
        let data = self.data_str();
        let log = self.log();
        // Everything within `timeout`: a leader's start is bounded so that
        // it is back in time to renew and feed (`ha::start_wait_ms`).
        let deadline = tokio::time::Instant::now() + timeout;
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        let status_time = (timeout / 10).max(Duration::from_millis(500).min(timeout / 2));
        let status = self.postmaster_status(status_time).await;
        if let Postmaster::Unknown(why) = status {
            // Starting a second postmaster beside one we cannot see is
            // pointless, and its failure would say nothing.
            return Err(PgError::Query(format!(
                "not starting: cannot tell whether PostgreSQL runs ({why})"
            )));
        }
        if status == Postmaster::Running {
            // Already up (still starting?): wait for it rather than fail.
            while !left().is_zero() {
                if self
                    .query_state(Duration::from_millis(500).min(left()))
                    .await
                    .is_ok()
                {
                    return Ok(());
                }
                self.client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Err(PgError::Timeout {
                program: "pg_ctl start",
                after: timeout,
            });
        }
        self.raise_for_start(standby, left() / 4).await?;
        // pg_ctl's own -t counts whole seconds; it is killed at our
        // deadline (the postmaster, in its own session, starts on).
        let t = secs(left());
        ctl::run_pg_ctl(
            self.bin(),
            &["start", "-w", "-s", "-t", &t, "-D", &data],
            &log,
            left().max(Duration::from_millis(100)),
        )
        .await
        .map_err(|e| match e {
            PgError::Failed { program, code, .. } => PgError::Failed {
                program,
                code,
                output: ctl::tail(&std::fs::read_to_string(&log).unwrap_or_default()),
            },
            e => e,
        })
    }

    /// Stops the server, all within `budget`: fast for most of it, then
    /// immediate. Succeeds only once the server is *known* stopped: a
    /// `pg_ctl` that cannot run, times out or fails is an error, never
    /// "already stopped" (the caller would release the key or disarm).
    pub async fn stop(&mut self, budget: Duration) -> Result<StopOutcome, PgError> {
        self.stop_with(budget, true).await
    }

    /// A fast (clean) shutdown only, within `budget`: an error when it does
    /// not finish (the server may still be shutting down). For switchovers:
    /// an immediate shutdown skips the checkpoint the standbys must receive.
    pub async fn stop_cleanly(&mut self, budget: Duration) -> Result<StopOutcome, PgError> {
        self.stop_with(budget, false).await
    }

    async fn stop_with(
        &mut self,
        budget: Duration,
        escalate: bool,
    ) -> Result<StopOutcome, PgError> {
        self.client = None;
        let end = tokio::time::Instant::now() + budget;
        let left = || end.saturating_duration_since(tokio::time::Instant::now());
        let split = split_budget(budget);
        match self.postmaster_status(split.status).await {
            Postmaster::Stopped => return Ok(StopOutcome::AlreadyStopped),
            Postmaster::Running => {}
            Postmaster::Unknown(_) if self.holds_no_cluster(split.status).await => {
                // pg_ctl exits 4 for a directory without a cluster (an
                // emptied, interrupted clone): nothing can run from it.
                return Ok(StopOutcome::AlreadyStopped);
            }
            Postmaster::Unknown(why) => {
                log::warn!("cannot tell whether PostgreSQL runs ({why}): stopping it anyway")
            }
        }
        let data = self.data_str();
        let log = self.log();
        let fast = if escalate {
            split.fast.min(left())
        } else {
            left().saturating_sub(split.status)
        };
        match ctl::run_pg_ctl(
            self.bin(),
            &[
                "stop",
                "-m",
                "fast",
                "-w",
                "-s",
                "-t",
                &secs(fast),
                "-D",
                &data,
            ],
            &log,
            fast,
        )
        .await
        {
            Ok(()) => return Ok(StopOutcome::Fast),
            Err(e) if !escalate => return Err(e),
            Err(e) => log::warn!("fast shutdown did not finish ({e}): escalating to immediate"),
        }
        let immediate = split.immediate.min(left());
        let r = ctl::run_pg_ctl(
            self.bin(),
            &[
                "stop",
                "-m",
                "immediate",
                "-w",
                "-s",
                "-t",
                &secs(immediate),
                "-D",
                &data,
            ],
            &log,
            immediate,
        )
        .await;
        // pg_ctl stop also fails when the server went away by itself
        // meanwhile: only its status tells.
        match self.postmaster_status(left()).await {
            Postmaster::Stopped => Ok(StopOutcome::Immediate),
            Postmaster::Running => Err(r.err().unwrap_or(PgError::Query(
                "PostgreSQL still runs after an immediate shutdown".into(),
            ))),
            Postmaster::Unknown(why) => Err(PgError::Query(format!(
                "cannot confirm that PostgreSQL stopped ({why})"
            ))),
        }
    }

    /// Promotes a replica and waits until it accepts writes.
    pub async fn promote(&mut self, timeout: Duration) -> Result<(), PgError> {
        // From now on an unanswered probe may hide a primary.
        self.seen_in_recovery = None;
        let data = self.data_str();
        let t = secs(timeout);
        ctl::run_pg_ctl(
            self.bin(),
            &["promote", "-w", "-s", "-t", &t, "-D", &data],
            &self.log(),
            timeout,
        )
        .await
    }

    /// Re-reads the configuration files (primary_conninfo is reloadable).
    pub async fn reload(&mut self, timeout: Duration) -> Result<(), PgError> {
        let data = self.data_str();
        ctl::run_pg_ctl(
            self.bin(),
            &["reload", "-s", "-D", &data],
            &self.log(),
            timeout,
        )
        .await
    }

    /// Clones the upstream into the empty data directory.
    pub async fn basebackup(&mut self, from: &Upstream, timeout: Duration) -> Result<(), PgError> {
        if !ctl::dir_is_empty(self.data()).map_err(io(format!("reading {}", self.data_str())))? {
            return Err(PgError::NotEmpty(self.data().into()));
        }
        create_dir_0700(self.data())?;
        self.write_passfile()?;
        let mut cmd = ctl::command(self.bin(), "pg_basebackup");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-X", "stream", "-c", "fast", "--no-password", "-d"])
            .arg(from.conninfo(None, &conf::passfile_of(&self.cfg)));
        // The directory was empty before: a failed or interrupted clone
        // leaves it empty again.
        let fresh = ctl::EmptyOnDrop::new(self.data());
        ctl::run_captured(cmd, "pg_basebackup", timeout).await?;
        fresh.keep();
        Ok(())
    }

    /// Rewinds a former primary onto the upstream's history. A cluster that
    /// crashed is first brought to a clean shutdown by single-user crash
    /// recovery (it accepts no connections, so it cannot take writes).
    pub async fn rewind(&mut self, from: &Upstream, timeout: Duration) -> Result<(), PgError> {
        self.client = None;
        if let DataDir::Initialized { crashed: true, .. } = self.controldata(timeout).await {
            log::info!("running crash recovery in single-user mode before pg_rewind");
            let s = self.data().join("standby.signal");
            let _ = std::fs::remove_file(&s);
            let mut cmd = ctl::command(self.bin(), "postgres");
            cmd.arg("--single")
                .arg("-D")
                .arg(self.data())
                .arg("-c")
                .arg("listen_addresses=")
                .arg("postgres");
            ctl::run_captured(cmd, "postgres --single", timeout).await?;
        }
        let mut source = from.clone();
        source.user = self.cfg.authentication.superuser.username.clone();
        source.password = self.cfg.authentication.superuser.password.clone();
        source.ssl = conf::ssl_params(&self.cfg.authentication.superuser);
        // A just-promoted source may not have checkpointed its new timeline
        // into its control file yet; pg_rewind would then see one timeline
        // and rewind nothing. Ask it for a checkpoint first.
        self.write_passfile()?;
        self.checkpoint_upstream(&source, timeout).await?;
        let mut cmd = ctl::command(self.bin(), "pg_rewind");
        cmd.arg("--target-pgdata").arg(self.data()).arg(format!(
            "--source-server={}",
            source.conninfo(Some("postgres"), &conf::passfile_of(&self.cfg))
        ));
        let out = ctl::run_captured(cmd, "pg_rewind", timeout).await?;
        log::info!("pg_rewind: {}", ctl::tail(&out).replace('\n', "; "));
        Ok(())
    }

    /// `CHECKPOINT` on the rewind source. With the superuser's TLS settings,
    /// through psql with the same connection string as pg_rewind (the
    /// password from the passfile); without, over a plain connection.
    async fn checkpoint_upstream(&self, up: &Upstream, timeout: Duration) -> Result<(), PgError> {
        if up.ssl.is_empty() {
            return checkpoint_upstream_plain(up, timeout).await;
        }
        let mut cmd = ctl::command(self.bin(), "psql");
        cmd.args(["-X", "-q", "--no-password", "-c", "CHECKPOINT", "-d"])
            .arg(up.conninfo(Some("postgres"), &conf::passfile_of(&self.cfg)));
        ctl::run_captured(cmd, "psql CHECKPOINT", timeout)
            .await
            .map(|_| ())
            .map_err(|e| PgError::Query(format!("CHECKPOINT on {}:{}: {e}", up.host, up.port)))
    }

    /// Creates the replication role after bootstrap (unless it is the superuser).
    pub async fn create_replication_user(&mut self, timeout: Duration) -> Result<(), PgError> {
        let r = self.cfg.authentication.replication.clone();
        if r.username == self.cfg.authentication.superuser.username {
            return Ok(());
        }
        let pw = r
            .password
            .as_deref()
            .map(|p| format!(" PASSWORD {}", quote_literal(p)))
            .unwrap_or_default();
        let sql = format!(
            // synchronous_commit local for this transaction: in strict
            // synchronous mode the new primary waits for any standby, and
            // none can connect before this role exists.
            "DO $$BEGIN PERFORM set_config('synchronous_commit', 'local', true); IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN CREATE ROLE {id} WITH REPLICATION LOGIN{pw}; END IF; END$$",
            lit = quote_literal(&r.username),
            id = quote_ident(&r.username),
        );
        self.execute(&sql, timeout).await
    }

    /// Keeps one physical slot per other member; drops inactive unknown
    /// physical ones; moves an inactive member slot that retains more than
    /// `member_slots_max_retained` bytes up to the present. Logical slots
    /// are never dropped or moved here. Returns every slot that existed
    /// (before this call's changes): the leader's cheap check for the
    /// permanent logical slots (`cluster::plan_logical_slots`).
    pub async fn sync_slots(
        &mut self,
        wanted: &[String],
        ignored: &[crate::cluster::SlotMatch],
        timeout: Duration,
    ) -> Result<Vec<crate::cluster::ExistingSlot>, PgError> {
        let client = self.client(timeout).await?;
        let rows = tokio::time::timeout(
            timeout,
            client.query(
                // Retained beyond the last checkpoint's redo point: what
                // PostgreSQL keeps only because of the slot.
                "SELECT slot_name::text, active,
                        GREATEST(COALESCE((SELECT redo_lsn FROM pg_control_checkpoint())
                                          - restart_lsn, 0), 0)::bigint,
                        slot_type::text, COALESCE(database::text, ''),
                        COALESCE(plugin::text, '')
                   FROM pg_replication_slots",
                &[],
            ),
        )
        .await
        .map_err(|_| PgError::Query("slot query timed out".into()))?
        .map_err(|e| PgError::Query(error_chain(&e)))?;
        let mut existing = Vec::new();
        let mut all = Vec::new();
        for r in &rows {
            let get = |e: tokio_postgres::Error| PgError::Query(e.to_string());
            let name: String = r.try_get(0).map_err(get)?;
            let active: bool = r.try_get(1).map_err(get)?;
            let retained: i64 = r.try_get(2).map_err(get)?;
            let kind: String = r.try_get(3).map_err(get)?;
            if kind == "physical" {
                existing.push((name.clone(), active, retained.max(0) as u64));
            }
            all.push(crate::cluster::ExistingSlot {
                name,
                kind,
                database: r.try_get(4).map_err(get)?,
                plugin: r.try_get(5).map_err(get)?,
            });
        }
        let cap = self.cfg.member_slots_max_retained;
        let mut sql = String::new();
        let ignore = |n: &str| ignored.iter().any(|m| m.matches_physical(n));
        for w in wanted.iter().filter(|w| !ignore(w)) {
            match existing.iter().find(|(n, _, _)| n == w) {
                None => sql.push_str(&format!(
                    "SELECT pg_create_physical_replication_slot({}, true);",
                    quote_literal(w)
                )),
                Some((_, false, retained)) if cap > 0 && *retained > cap => {
                    log::warn!(
                        "replication slot {w} is inactive and retains {retained} bytes of WAL before the last checkpoint, over postgresql.member_slots_max_retained ({cap}): moving it to the present (its member will need the WAL from elsewhere or a rewind/clone)"
                    );
                    sql.push_str(&format!(
                        "SELECT pg_drop_replication_slot({l}); SELECT pg_create_physical_replication_slot({l}, true);",
                        l = quote_literal(w)
                    ));
                }
                Some(_) => {}
            }
        }
        for (n, active, _) in &existing {
            if !active && !wanted.contains(n) && !ignore(n) {
                sql.push_str(&format!(
                    "SELECT pg_drop_replication_slot({});",
                    quote_literal(n)
                ));
            }
        }
        if !sql.is_empty() {
            self.execute(&sql, timeout).await?;
        }
        Ok(all)
    }

    /// The work of creating one permanent logical slot on this server,
    /// to be run off the loop (`tokio::spawn`): creating a logical slot
    /// waits for every transaction older than it to end, which on a busy
    /// primary can take longer than a cycle may. Its own connection, to
    /// the slot's database (a logical slot belongs to one), as superuser
    /// over the socket; bounded by `connect` to connect and by
    /// [`LOGICAL_SLOT_TIMEOUT`] in all (`statement_timeout` too, so the
    /// server gives up with us). Made only when no slot by that name exists
    /// yet; on a server in recovery PostgreSQL 15 refuses (no logical
    /// decoding on a standby). Some(LSN) when this call made it, None when
    /// it existed already.
    pub fn create_logical_slot(
        &self,
        slot: &crate::cluster::LogicalSlot,
        connect: Duration,
    ) -> impl std::future::Future<Output = Result<Option<String>, PgError>> + Send + 'static {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.cfg.socket_dir)
            .port(self.port())
            .user(&self.cfg.authentication.superuser.username)
            .dbname(&slot.database)
            .application_name("leasedog")
            .connect_timeout(connect)
            .options(format!(
                // synchronous_commit local: in strict synchronous mode with
                // no standby, nothing this session does waits for one.
                "-c statement_timeout={} -c synchronous_commit=local",
                LOGICAL_SLOT_TIMEOUT.as_millis()
            ));
        if let Some(p) = &self.cfg.authentication.superuser.password {
            c.password(p);
        }
        let sql = format!(
            "SELECT (pg_create_logical_replication_slot({n}, {p})).lsn::text WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {n})",
            n = quote_literal(&slot.name),
            p = quote_literal(&slot.plugin),
        );
        let database = slot.database.clone();
        async move {
            let work = async {
                let (client, conn) =
                    tokio::time::timeout(connect, c.connect(tokio_postgres::NoTls))
                        .await
                        .map_err(|_| {
                            PgError::Query(format!("connecting to database {database} timed out"))
                        })?
                        .map_err(|e| {
                            PgError::Query(format!(
                                "connecting to database {database}: {}",
                                error_chain(&e)
                            ))
                        })?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let r = client.query(&sql, &[]).await;
                task.abort();
                let rows = r.map_err(|e| PgError::Query(error_chain(&e)))?;
                match rows.first() {
                    None => Ok(None),
                    Some(row) => row
                        .try_get::<_, String>(0)
                        .map(Some)
                        .map_err(|e| PgError::Query(e.to_string())),
                }
            };
            tokio::time::timeout(LOGICAL_SLOT_TIMEOUT + connect, work)
                .await
                .map_err(|_| {
                    PgError::Query(format!(
                        "timed out after {:?}",
                        LOGICAL_SLOT_TIMEOUT + connect
                    ))
                })?
        }
    }
}

/// How long the creation of a permanent logical slot may take, off the
/// loop (it waits for the transactions running when it started).
pub const LOGICAL_SLOT_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to `up` as its user, on database postgres, plain TCP.
fn upstream_config(up: &Upstream, timeout: Duration) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&up.host)
        .port(up.port)
        .user(&up.user)
        .dbname("postgres")
        .application_name("leasedog")
        .connect_timeout(timeout);
    if let Some(p) = &up.password {
        c.password(p);
    }
    c
}

/// The WAL position a remote standby has received
/// (`pg_last_wal_receive_lsn()`, as superuser over TCP).
pub async fn received_lsn(
    up: &Upstream,
    timeout: Duration,
) -> Result<crate::cluster::Lsn, PgError> {
    let c = upstream_config(up, timeout);
    let work = async {
        let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = client
            .query_one(
                "SELECT COALESCE(pg_last_wal_receive_lsn(), '0/0')::text",
                &[],
            )
            .await;
        task.abort();
        r
    };
    let row = match tokio::time::timeout(timeout, work).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => return Err(PgError::Query(format!("{}:{}: {e}", up.host, up.port))),
        Err(_) => return Err(PgError::Query(format!("{}:{} timed out", up.host, up.port))),
    };
    let text: String = row
        .try_get(0)
        .map_err(|e| PgError::Query(error_chain(&e)))?;
    crate::cluster::Lsn::parse(&text)
        .ok_or_else(|| PgError::Query(format!("unreadable LSN {text:?}")))
}

/// `CHECKPOINT` on a remote server as the superuser, without TLS.
async fn checkpoint_upstream_plain(up: &Upstream, timeout: Duration) -> Result<(), PgError> {
    let c = upstream_config(up, timeout);
    let work = async {
        let (client, conn) = c.connect(tokio_postgres::NoTls).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let r = client.batch_execute("CHECKPOINT").await;
        task.abort();
        r
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PgError::Query(format!(
            "CHECKPOINT on {}:{}: {}",
            up.host,
            up.port,
            error_chain(&e)
        ))),
        Err(_) => Err(PgError::Query(format!(
            "CHECKPOINT on {}:{} timed out",
            up.host, up.port
        ))),
    }
}

fn create_dir_0700(p: &Path) -> Result<(), PgError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !p.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(io(format!("creating {}", p.display())))?;
    }
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", p.display())))
}

#[cfg(test)]
mod tests {

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("db error")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    /// "db error" alone says nothing: the cause PostgreSQL gave is kept.
    #[test]
    fn errors_keep_their_causes() {
        let e = Outer(std::io::Error::other(
            "ERROR: all replication slots are in use",
        ));
        assert_eq!(
            error_chain(&e),
            "db error: ERROR: all replication slots are in use"
        );
        let plain = std::io::Error::other("x");
        assert_eq!(error_chain(&plain), "x");
    }
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A Postgres whose `pg_ctl` is a script.
    fn with_pg_ctl(dir: &Path, script: &str) -> Postgres {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let p = bin.join("pg_ctl");
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = PostgresqlConfig {
            data_dir: dir.join("data"),
            bin_dir: bin,
            ..Default::default()
        };
        Postgres::new(cfg, "n1".into())
    }

    #[tokio::test]
    async fn a_failing_pg_ctl_is_never_stopped() {
        let d = tempfile::tempdir().unwrap();
        // Exit 4 (data directory not accessible), a hang, a missing program:
        // the stop fails rather than answer "already stopped".
        for script in ["exit 4", "sleep 5", "exit 1"] {
            let mut pg = with_pg_ctl(d.path(), script);
            std::fs::create_dir_all(d.path().join("data")).unwrap();
            std::fs::write(d.path().join("data/PG_VERSION"), "15\n").unwrap();
            let r = pg.stop(Duration::from_millis(600)).await;
            assert!(r.is_err(), "{script}: {r:?}");
            assert!(matches!(
                pg.postmaster_status(Duration::from_millis(300)).await,
                Postmaster::Unknown(_)
            ));
        }
        let mut pg = with_pg_ctl(d.path(), "exit 4");
        std::fs::remove_file(d.path().join("bin/pg_ctl")).unwrap();
        assert!(pg.stop(Duration::from_millis(600)).await.is_err());
        // Only exit 3 means stopped.
        let mut pg = with_pg_ctl(d.path(), "exit 3");
        assert_eq!(
            pg.stop(Duration::from_millis(600)).await.unwrap(),
            StopOutcome::AlreadyStopped
        );
        // A directory with no cluster in it runs nothing, whatever pg_ctl says.
        let mut pg = with_pg_ctl(d.path(), "exit 4");
        std::fs::remove_file(d.path().join("data/PG_VERSION")).unwrap();
        assert_eq!(
            pg.stop(Duration::from_millis(600)).await.unwrap(),
            StopOutcome::AlreadyStopped
        );
    }

    #[tokio::test]
    async fn passwords_stay_in_0600_files() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let mut pg = with_pg_ctl(d.path(), "exit 0");
        pg.cfg.authentication.replication.password = Some("rep:pw".into());
        pg.cfg.authentication.superuser.password = Some("su-pw".into());
        std::fs::create_dir_all(d.path().join("data")).unwrap();
        pg.write_passfile().unwrap();
        let f = conf::passfile_path(pg.data());
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.contains("rep\\:pw") && text.contains("su-pw"),
            "{text}"
        );
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        // The server log pg_ctl writes to is 0600, also when it existed.
        std::fs::write(pg.log(), "old\n").unwrap();
        std::fs::set_permissions(pg.log(), std::fs::Permissions::from_mode(0o644)).unwrap();
        pg.reload(Duration::from_secs(2)).await.unwrap();
        assert_eq!(std::fs::metadata(pg.log()).unwrap().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn an_unreadable_data_directory_is_not_empty() {
        let d = tempfile::tempdir().unwrap();
        let pg = with_pg_ctl(d.path(), "exit 4");
        // Absent: empty.
        assert_eq!(pg.controldata(Duration::from_secs(1)).await, DataDir::Empty);
        // A file where the directory should be: not readable as a directory.
        std::fs::write(d.path().join("data"), "x").unwrap();
        assert!(matches!(
            pg.controldata(Duration::from_secs(1)).await,
            DataDir::Unreadable(_)
        ));
    }
}
