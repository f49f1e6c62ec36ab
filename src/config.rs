//! The agent's configuration: YAML schema, defaults, `LEASEDOG_*` environment
//! overrides and validation (DESIGN §1, §5). Key names follow Patroni's where
//! the concept is the same.
//!
//! SKELETON: types are fixed; loading and validation are to be completed.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/leasedog/leasedog.yml";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogMode {
    Off,
    #[default]
    Automatic,
    Required,
}

/// Which watchdog implementation to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogDriver {
    /// A Linux watchdog character device (`/dev/watchdog`), via ioctls.
    #[default]
    Device,
    /// For tests: each operation is appended as a line to `device` (a file or
    /// FIFO); nothing resets the machine.
    Testing,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    pub driver: WatchdogDriver,
    /// Seconds between the watchdog's deadline and the lease's expiry.
    pub safety_margin: u64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            mode: WatchdogMode::Automatic,
            device: PathBuf::from("/dev/watchdog"),
            driver: WatchdogDriver::Device,
            safety_margin: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Etcd3Config {
    /// `host:port` endpoints (http:// prefixes are accepted and stripped).
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Authentication {
    pub superuser: Credentials,
    pub replication: Credentials,
}

impl Default for Authentication {
    fn default() -> Self {
        Authentication {
            superuser: Credentials {
                username: "postgres".into(),
                password: None,
            },
            replication: Credentials {
                username: "replicator".into(),
                password: None,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresqlConfig {
    pub data_dir: PathBuf,
    /// Directory holding initdb, pg_ctl, pg_basebackup, pg_rewind, pg_controldata.
    pub bin_dir: PathBuf,
    /// `host:port` PostgreSQL listens on (host may be a comma list or `*`).
    pub listen: String,
    /// `host:port` other members use to reach this PostgreSQL.
    pub connect_address: String,
    /// Where the unix socket lives; the agent connects through it.
    pub socket_dir: PathBuf,
    pub authentication: Authentication,
    /// Extra postgresql.conf settings, written to the managed config file.
    pub parameters: BTreeMap<String, serde_yaml::Value>,
    /// pg_hba.conf lines; when non-empty the agent writes pg_hba.conf.
    pub pg_hba: Vec<String>,
    /// Extra initdb arguments (data checksums are always on).
    pub initdb: Vec<String>,
}

impl Default for PostgresqlConfig {
    fn default() -> Self {
        PostgresqlConfig {
            data_dir: PathBuf::new(),
            bin_dir: PathBuf::from("/usr/lib/postgresql/15/bin"),
            listen: "127.0.0.1:5432".into(),
            connect_address: String::new(),
            socket_dir: PathBuf::from("/var/run/postgresql"),
            authentication: Authentication::default(),
            parameters: BTreeMap::new(),
            pg_hba: Vec::new(),
            initdb: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestApiConfig {
    pub listen: String,
    pub connect_address: String,
}

impl Default for RestApiConfig {
    fn default() -> Self {
        RestApiConfig {
            listen: "0.0.0.0:8008".into(),
            connect_address: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TagsConfig {
    pub nofailover: bool,
    pub noloadbalance: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug, trace
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub socket: PathBuf,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from("/run/leasedog/leasedog.sock"),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub scope: String,
    pub namespace: String,
    pub name: String,
    pub etcd3: Etcd3Config,
    /// Seconds: the leader lease TTL.
    pub ttl: u64,
    /// Seconds between HA cycles.
    pub loop_wait: u64,
    /// Seconds an etcd or PostgreSQL operation may take before it counts as failed.
    pub retry_timeout: u64,
    /// Bytes a replica may lag behind the last leader position and still be promoted.
    pub maximum_lag_on_failover: u64,
    pub watchdog: WatchdogConfig,
    pub postgresql: PostgresqlConfig,
    pub restapi: RestApiConfig,
    pub tags: TagsConfig,
    pub log: LogConfig,
    pub control: ControlConfig,
    /// The file this was read from (not a YAML key).
    #[serde(skip)]
    pub source: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scope: String::new(),
            namespace: "/service/".into(),
            name: String::new(),
            etcd3: Etcd3Config::default(),
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            maximum_lag_on_failover: 1 << 20,
            watchdog: WatchdogConfig::default(),
            postgresql: PostgresqlConfig::default(),
            restapi: RestApiConfig::default(),
            tags: TagsConfig::default(),
            log: LogConfig::default(),
            control: ControlConfig::default(),
            source: PathBuf::new(),
        }
    }
}

impl Config {
    /// The etcd key prefix of this cluster: `/{namespace}/{scope}/`.
    pub fn prefix(&self) -> String {
        let ns = self.namespace.trim_matches('/');
        if ns.is_empty() {
            format!("/{}/", self.scope)
        } else {
            format!("/{}/{}/", ns, self.scope)
        }
    }

    /// Watchdog timeout in seconds: `ttl - safety_margin`.
    pub fn watchdog_timeout(&self) -> u64 {
        self.ttl.saturating_sub(self.watchdog.safety_margin)
    }
}

/// A configuration error, written for the person who edits the file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path, e.g. `watchdog.safety_margin`.
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                l,
                self.key,
                self.message
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.message),
        }
    }
}

/// Reads, overrides from the environment, and validates. All errors found
/// are returned, not only the first.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let _ = path;
    todo!("config helper")
}
