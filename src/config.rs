//! The agent's configuration: YAML schema, defaults, `LEASEDOG_*` environment
//! overrides and validation (DESIGN §1, §5). Key names follow Patroni's where
//! the concept is the same, and Patroni's own forms (`etcd3.host`,
//! `bootstrap.dcs.ttl`, ...) are accepted so a patroni.yml moves over easily.
//!
//! Every error names the file, the line (when the key is in the file), the
//! dotted key and what was expected; all errors are reported at once.

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

/// Patroni's `synchronous_mode`: off, on (`FIRST n (...)`: every listed
/// standby confirms each commit) or quorum (`ANY n (...)`). `true` and
/// `false` are read as on and off, as Patroni does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    #[default]
    Off,
    On,
    Quorum,
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
    /// `host:port` endpoints (`http://` and `https://` prefixes are accepted
    /// and stripped; `https://` sets `protocol: https`).
    pub hosts: Vec<String>,
    /// `http` (default) or `https` (TLS, verified against `cacert`).
    pub protocol: String,
    /// PEM file of the CA that signed etcd's server certificates.
    pub cacert: Option<PathBuf>,
    /// PEM files of this agent's client certificate and its (unencrypted)
    /// key, for etcd's `--client-cert-auth`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Patroni's name for the password of an encrypted key: not supported
    /// (refused with a message), kept so that the error names it.
    pub key_password: Option<String>,
    /// etcd RBAC user (`etcdctl user add`) and its password.
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
    /// libpq's TLS settings for connections to other members (Patroni's
    /// `authentication` keys): `disable` .. `verify-full`, and PEM files.
    pub sslmode: Option<String>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslcrl: Option<PathBuf>,
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
                ..Default::default()
            },
            replication: Credentials {
                username: "replicator".into(),
                ..Default::default()
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
    /// Commands run as `<cmd> <action> <role> <scope>` when PostgreSQL
    /// starts, stops or changes role (Patroni's postgresql.callbacks).
    pub callbacks: Callbacks,
    /// Bytes of WAL the leader lets an *inactive* member slot retain before
    /// it moves the slot up to the present (drop and create again): a
    /// member key anyone can write must not make the primary keep WAL
    /// without end. 0 turns the cap off (PostgreSQL's own
    /// `max_slot_wal_keep_size` still applies).
    pub member_slots_max_retained: u64,
    /// The password file the agent writes (0600) for libpq: replication,
    /// pg_basebackup, pg_rewind (Patroni: postgresql.pgpass). Default:
    /// `<data_dir>.pgpass`, beside the data directory so that a base
    /// backup never copies it.
    pub pgpass: Option<PathBuf>,
    /// Physical replication slots for members (Patroni's `use_slots`): the
    /// leader keeps one per other member, and a replica streams with its
    /// own once the leader's `status` key shows it exists (without one
    /// until then). Off: no member slots, and replicas stream without.
    pub use_slots: bool,
}

/// Patroni-style callbacks; each is a command line (split on whitespace).
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Callbacks {
    pub on_start: Option<String>,
    pub on_stop: Option<String>,
    pub on_role_change: Option<String>,
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
            callbacks: Callbacks::default(),
            member_slots_max_retained: 16 << 30,
            pgpass: None,
            use_slots: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestApiConfig {
    pub listen: String,
    pub connect_address: String,
    /// PEM certificate (chain) the API serves with over TLS (Patroni's
    /// `restapi.certfile`); unset: plain HTTP.
    pub certfile: Option<PathBuf>,
    /// PEM file of `certfile`'s unencrypted private key.
    pub keyfile: Option<PathBuf>,
    /// Patroni's password of an encrypted key: not supported (refused with
    /// a message), kept so that the error names it.
    pub keyfile_password: Option<String>,
    /// PEM file of the CA that client certificates are verified against.
    pub cafile: Option<PathBuf>,
    /// Client certificates: `none` (not asked for), `optional` (verified
    /// when given) or `required`.
    pub verify_client: VerifyClient,
    /// Basic authentication for every path but the health checks.
    pub authentication: Option<ApiAuthentication>,
}

impl Default for RestApiConfig {
    fn default() -> Self {
        RestApiConfig {
            listen: "0.0.0.0:8008".into(),
            connect_address: String::new(),
            certfile: None,
            keyfile: None,
            keyfile_password: None,
            cafile: None,
            verify_client: VerifyClient::None,
            authentication: None,
        }
    }
}

/// `restapi.verify_client` (Patroni's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VerifyClient {
    #[default]
    None,
    Optional,
    Required,
}

/// `restapi.authentication`: the user and password of HTTP basic
/// authentication.
#[derive(Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ApiAuthentication {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for ApiAuthentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("ApiAuthentication")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TagsConfig {
    pub nofailover: bool,
    pub noloadbalance: bool,
    /// Never chosen as a synchronous standby.
    pub nosync: bool,
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
    /// Seconds a leader whose PostgreSQL died may take to start it again in
    /// place before it gives up the leader key (Patroni's name).
    pub primary_start_timeout: u64,
    /// Synchronous replication (Patroni's names).
    pub synchronous_mode: SyncMode,
    /// With no eligible standby, commits wait (`synchronous_standby_names
    /// = '*'`) rather than go asynchronous.
    pub synchronous_mode_strict: bool,
    /// How many standbys confirm each commit.
    pub synchronous_node_count: u64,
    /// Bytes a standby may lag and still be chosen as synchronous; -1: no limit.
    pub maximum_lag_on_syncnode: i64,
    pub watchdog: WatchdogConfig,
    pub postgresql: PostgresqlConfig,
    pub restapi: RestApiConfig,
    pub tags: TagsConfig,
    pub log: LogConfig,
    pub control: ControlConfig,
    /// `bootstrap.dcs.postgresql.parameters`: the cluster-wide settings the
    /// member that bootstraps the cluster writes into the `config` key.
    pub bootstrap_parameters: BTreeMap<String, serde_yaml::Value>,
    /// The file this was read from (not a YAML key).
    #[serde(skip)]
    pub source: PathBuf,
}

impl Config {
    /// The `config` key the member that bootstraps the cluster writes, in
    /// Patroni's JSON shape: the timing and synchronous settings this file
    /// runs with, `postgresql.use_pg_rewind`/`use_slots`, and
    /// `bootstrap.dcs.postgresql.parameters`.
    pub fn initial_dynamic_config(&self) -> serde_json::Value {
        let sync = match self.synchronous_mode {
            SyncMode::Off => serde_json::Value::Bool(false),
            SyncMode::On => serde_json::Value::Bool(true),
            SyncMode::Quorum => serde_json::Value::String("quorum".into()),
        };
        let parameters: serde_json::Map<String, serde_json::Value> = self
            .bootstrap_parameters
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), serde_json::to_value(v).ok()?)))
            .collect();
        serde_json::json!({
            "ttl": self.ttl,
            "loop_wait": self.loop_wait,
            "retry_timeout": self.retry_timeout,
            "maximum_lag_on_failover": self.maximum_lag_on_failover,
            "primary_start_timeout": self.primary_start_timeout,
            "synchronous_mode": sync,
            "synchronous_mode_strict": self.synchronous_mode_strict,
            "synchronous_node_count": self.synchronous_node_count,
            "maximum_lag_on_syncnode": self.maximum_lag_on_syncnode,
            "postgresql": {
                "use_pg_rewind": true,
                "use_slots": self.postgresql.use_slots,
                "parameters": parameters,
            },
        })
    }
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
            primary_start_timeout: 300,
            synchronous_mode: SyncMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            maximum_lag_on_syncnode: -1,
            watchdog: WatchdogConfig::default(),
            postgresql: PostgresqlConfig::default(),
            restapi: RestApiConfig::default(),
            tags: TagsConfig::default(),
            log: LogConfig::default(),
            control: ControlConfig::default(),
            bootstrap_parameters: BTreeMap::new(),
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
    let text = read_bounded(path).map_err(|message| {
        vec![ConfigError {
            file: path.into(),
            line: None,
            key: "(file)".into(),
            message,
        }]
    })?;
    load_str(&text, path, &|k| std::env::var(k).ok())
}

/// The largest configuration file accepted. A real one is a few kB; the cap
/// keeps a wrong path (a log file, a device) from being read into memory.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// The deepest nesting of mappings and sequences accepted. leasedog's schema
/// needs 4; the cap refuses hostile documents before the YAML parser, whose
/// cost grows with the depth, ever sees them.
pub const MAX_DEPTH: usize = 64;

/// How many characters of a bad value an error message quotes.
pub const EXCERPT_CHARS: usize = 80;

/// Reads at most [`MAX_FILE_BYTES`] (+1 to notice a larger file, also one
/// whose size the metadata does not tell, such as a device or a FIFO).
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let too_big = |size: String| {
        format!(
            "the file is {size} bytes, over the limit of {MAX_FILE_BYTES} bytes (1 MiB): expected a leasedog YAML configuration of a few kB"
        )
    };
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the configuration file: {e}"))?;
    if let Ok(m) = file.metadata()
        && m.len() > MAX_FILE_BYTES as u64
    {
        return Err(too_big(m.len().to_string()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read the configuration file: {e}"))?;
    if bytes.len() > MAX_FILE_BYTES {
        return Err(too_big(format!("more than {MAX_FILE_BYTES}")));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "not UTF-8 text (invalid byte at offset {}): expected a YAML file",
            e.utf8_error().valid_up_to()
        )
    })
}

/// `s` quoted for an error message, cut to [`EXCERPT_CHARS`] characters (with
/// `…` and the full length) so a huge value never makes a huge message.
pub fn excerpt(s: &str) -> String {
    match s.char_indices().nth(EXCERPT_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &s[..cut], s.len()),
    }
}

/// A path quoted like [`excerpt`].
fn excerpt_path(p: &Path) -> String {
    excerpt(&p.to_string_lossy())
}

/// Shortens every `` `...` `` or `"..."` span of a parser's message that is
/// longer than [`EXCERPT_CHARS`] (serde quotes the offending value or key in
/// full), then caps the whole message as a last resort.
fn shorten_quoted(msg: &str) -> String {
    let mut out = String::new();
    let mut rest = msg;
    while let Some(start) = rest.find(['`', '"']) {
        let delim = rest[start..].chars().next().unwrap_or('"');
        out.push_str(&rest[..=start]);
        let body = &rest[start + 1..];
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            if escaped {
                escaped = false;
            } else if c == '\\' && delim == '"' {
                escaped = true;
            } else if c == delim {
                end = Some(i);
                break;
            }
        }
        let (inner, after) = match end {
            Some(i) => (&body[..i], &body[i..]),
            None => (body, ""),
        };
        match inner.char_indices().nth(EXCERPT_CHARS) {
            Some((cut, _)) => {
                out.push_str(&inner[..cut]);
                out.push('…');
            }
            None => out.push_str(inner),
        }
        match after.chars().next() {
            Some(c) => {
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    const MAX_MESSAGE_CHARS: usize = 1000;
    match out.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &out[..cut]),
        None => out,
    }
}

/// Makes every error short, whatever the input: keys and parser messages
/// can quote text straight from the file or the environment.
fn tidy(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    for e in &mut errors {
        if e.key.chars().nth(EXCERPT_CHARS).is_some() {
            let cut: String = e.key.chars().take(EXCERPT_CHARS).collect();
            e.key = format!("{cut}…");
        }
        e.message = shorten_quoted(&e.message);
    }
    errors
}

/// The line where the nesting of `text` first exceeds `limit`, found without
/// parsing: flow brackets (`[`, `{`) count one level each, and so do block
/// levels (deeper indentation, each `- ` of a sequence entry). Quoted
/// scalars, comments and block scalars (`|`, `>`) are skipped. Linear in the
/// length of the text.
fn too_deep(text: &str, limit: usize) -> Option<usize> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<char> = None;
    let mut block_scalar_at: Option<usize> = None;
    for (n, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start_matches(' ');
        let indent = raw.len() - trimmed.len();
        if let Some(at) = block_scalar_at {
            if trimmed.trim().is_empty() || indent > at {
                continue;
            }
            block_scalar_at = None;
        }
        let mut line = trimmed;
        let mut dashes = 0;
        if quote.is_none() && flow == 0 {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            while indents.last().is_some_and(|&i| i >= indent) {
                indents.pop();
            }
            indents.push(indent);
            while let Some(r) = line.strip_prefix("- ").or_else(|| line.strip_prefix("-\t")) {
                line = r.trim_start();
                dashes += 1;
            }
            if line == "-" {
                dashes += 1;
            }
            if indents.len() + dashes > limit {
                return Some(n + 1);
            }
        }
        let block_depth = indents.len() + dashes;
        let mut prev = ' ';
        // The last character outside quotes that is not a space: quotes and
        // brackets open a node only where a node can start (first on the
        // line, after `: `, `? ` or, in flow, after `[`, `{`, `,`), not inside
        // a plain scalar like `a: it's [sic]`.
        let mut last: Option<char> = None;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match quote {
                Some('"') => {
                    if c == '\\' {
                        chars.next();
                    } else if c == '"' {
                        quote = None;
                        last = Some(c);
                    }
                }
                Some(_) => {
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            quote = None;
                            last = Some(c);
                        }
                    }
                }
                None => {
                    let node_start = match last {
                        None => true,
                        Some(':') => prev.is_whitespace() || flow > 0,
                        Some('?') => prev.is_whitespace(),
                        Some(l) => flow > 0 && "[{,".contains(l),
                    };
                    match c {
                        '#' if prev.is_whitespace() => break,
                        '"' | '\'' if node_start => quote = Some(c),
                        '[' | '{' if node_start || flow > 0 => {
                            flow += 1;
                            if block_depth + flow > limit {
                                return Some(n + 1);
                            }
                        }
                        ']' | '}' if flow > 0 => flow -= 1,
                        _ => {}
                    }
                    if !c.is_whitespace() {
                        last = Some(c);
                    }
                }
            }
            prev = c;
        }
        if quote.is_none() && flow == 0 {
            let value = line
                .split_once(": ")
                .map(|(_, v)| v)
                .unwrap_or(line)
                .split(" #")
                .next()
                .unwrap_or("")
                .trim();
            if value.starts_with(['|', '>'])
                && value[1..]
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '+' || c == '-')
            {
                block_scalar_at = Some(indent);
            }
        }
    }
    None
}

/// libpq's `sslmode` values.
const SSLMODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

/// Scalar keys that can be overridden as `LEASEDOG_<PATH>` (dots become
/// underscores, upper case).
const ENV_KEYS: &[&str] = &[
    "scope",
    "namespace",
    "name",
    "etcd3.hosts",
    "etcd3.protocol",
    "etcd3.cacert",
    "etcd3.cert",
    "etcd3.key",
    "etcd3.username",
    "etcd3.password",
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "primary_start_timeout",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "maximum_lag_on_syncnode",
    "watchdog.mode",
    "watchdog.device",
    "watchdog.driver",
    "watchdog.safety_margin",
    "postgresql.data_dir",
    "postgresql.bin_dir",
    "postgresql.listen",
    "postgresql.connect_address",
    "postgresql.socket_dir",
    "postgresql.member_slots_max_retained",
    "postgresql.use_slots",
    "postgresql.authentication.superuser.username",
    "postgresql.authentication.superuser.password",
    "postgresql.authentication.replication.username",
    "postgresql.authentication.replication.password",
    "restapi.listen",
    "restapi.connect_address",
    "restapi.certfile",
    "restapi.keyfile",
    "restapi.cafile",
    "restapi.verify_client",
    "restapi.authentication.username",
    "restapi.authentication.password",
    "tags.nofailover",
    "tags.noloadbalance",
    "tags.nosync",
    "log.level",
    "control.socket",
];

/// The environment variable that overrides `key`.
pub fn env_name(key: &str) -> String {
    format!("LEASEDOG_{}", key.replace('.', "_").to_uppercase())
}

/// The 1-based line of a dotted key in YAML text, found by indentation.
pub fn find_line(text: &str, key: &str) -> Option<usize> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    let mut child_indent: Option<usize> = None;
    for (i, raw) in text.lines().enumerate() {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        if parent_indent.is_some_and(|p| indent <= p) {
            return None;
        }
        let level_indent = match (depth, child_indent) {
            (0, _) => 0,
            (_, Some(c)) => c,
            (_, None) => {
                child_indent = Some(indent);
                indent
            }
        };
        if indent != level_indent {
            continue;
        }
        let Some((k, _)) = trimmed.split_once(':') else {
            continue;
        };
        if k.trim().trim_matches(['"', '\'']) == parts[depth] {
            if depth + 1 == parts.len() {
                return Some(i + 1);
            }
            depth += 1;
            parent_indent = Some(indent);
            child_indent = None;
        }
    }
    None
}

/// The dotted path of the key on a 1-based line of YAML text.
fn key_path_at(text: &str, line: usize) -> Option<String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate().take(line) {
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let indent = raw.len() - trimmed.len();
        let Some((k, _)) = trimmed.split_once(':') else {
            continue;
        };
        while stack.last().is_some_and(|(ind, _)| *ind >= indent) {
            stack.pop();
        }
        stack.push((indent, k.trim().trim_matches(['"', '\'']).to_string()));
        if i + 1 == line {
            break;
        }
    }
    (!stack.is_empty()).then(|| {
        stack
            .iter()
            .map(|(_, k)| k.as_str())
            .collect::<Vec<_>>()
            .join(".")
    })
}

fn get_path<'a>(v: &'a serde_yaml::Value, key: &str) -> Option<&'a serde_yaml::Value> {
    key.split('.').try_fold(v, |v, k| v.get(k))
}

fn set_path(v: &mut serde_yaml::Value, key: &str, value: serde_yaml::Value) {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = v;
    for (i, p) in parts.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = serde_yaml::Value::Mapping(Default::default());
        }
        let Some(map) = cur.as_mapping_mut() else {
            return;
        };
        let k = serde_yaml::Value::String((*p).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return;
        }
        cur = map
            .entry(k)
            .or_insert(serde_yaml::Value::Mapping(Default::default()));
    }
}

fn remove_path(v: &mut serde_yaml::Value, key: &str) -> Option<serde_yaml::Value> {
    let (parent, last) = match key.rsplit_once('.') {
        Some((p, l)) => (Some(p), l),
        None => (None, key),
    };
    let map = match parent {
        Some(p) => {
            let mut cur = v;
            for k in p.split('.') {
                cur = cur.get_mut(k)?;
            }
            cur.as_mapping_mut()?
        }
        None => v.as_mapping_mut()?,
    };
    map.remove(last)
}

/// Patroni's spellings, turned into ours.
fn normalize(v: &mut serde_yaml::Value) {
    use serde_yaml::Value;
    // etcd3.host (single) -> etcd3.hosts
    if let Some(h) = remove_path(v, "etcd3.host")
        && get_path(v, "etcd3.hosts").is_none()
    {
        set_path(v, "etcd3.hosts", h);
    }
    // hosts as "a:1,b:2"
    if let Some(Value::String(s)) = get_path(v, "etcd3.hosts").cloned() {
        let list = s
            .split(',')
            .map(|h| Value::String(h.trim().to_string()))
            .filter(|h| h.as_str() != Some(""))
            .collect();
        set_path(v, "etcd3.hosts", Value::Sequence(list));
    }
    // bootstrap.dcs.{ttl,...} when the top-level key is absent
    if let Some(boot) = remove_path(v, "bootstrap") {
        if get_path(v, "bootstrap_parameters").is_none()
            && let Some(x) = get_path(&boot, "dcs.postgresql.parameters")
        {
            set_path(v, "bootstrap_parameters", x.clone());
        }
        for k in [
            "ttl",
            "loop_wait",
            "retry_timeout",
            "maximum_lag_on_failover",
            "primary_start_timeout",
            "master_start_timeout",
            "synchronous_mode",
            "synchronous_mode_strict",
            "synchronous_node_count",
            "maximum_lag_on_syncnode",
        ] {
            if get_path(v, k).is_none()
                && let Some(x) = get_path(&boot, &format!("dcs.{k}"))
            {
                set_path(v, k, x.clone());
            }
        }
    }
    // Patroni's older name.
    if let Some(x) = remove_path(v, "master_start_timeout")
        && get_path(v, "primary_start_timeout").is_none()
    {
        set_path(v, "primary_start_timeout", x);
    }
    // synchronous_mode: true/false as Patroni writes it.
    if let Some(Value::Bool(b)) = get_path(v, "synchronous_mode").cloned() {
        let word = if b { "on" } else { "off" };
        set_path(v, "synchronous_mode", Value::String(word.into()));
    }
    // Parameters may be numbers or booleans.
    if let Some(Value::Mapping(m)) = v
        .get_mut("postgresql")
        .and_then(|p| p.get_mut("parameters"))
    {
        for (_, val) in m.iter_mut() {
            let s = match val {
                Value::Bool(b) => {
                    if *b {
                        "on".to_string()
                    } else {
                        "off".to_string()
                    }
                }
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            *val = Value::String(s);
        }
    }
}

/// `host:port` with a valid port.
fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    let s = s.strip_prefix("http://").unwrap_or(s);
    let (h, p) = s.rsplit_once(':')?;
    let port = p.parse::<u16>().ok().filter(|&p| p > 0)?;
    (!h.is_empty()).then_some((h, port))
}

fn concrete_host(listen: &str) -> Option<String> {
    let (hosts, port) = parse_host_port(listen)?;
    let first = hosts.split(',').next()?.trim();
    if first.is_empty() || first == "*" || first == "0.0.0.0" || first == "::" || first == "[::]" {
        return None;
    }
    Some(format!("{first}:{port}"))
}

/// Like `load`, from text, with the environment given as a function.
pub fn load_str(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    load_checked(text, source, env).map_err(tidy)
}

fn load_checked(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let err = |line: Option<usize>, key: &str, message: String| ConfigError {
        file: source.into(),
        line,
        key: key.into(),
        message,
    };
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![err(
            None,
            "(file)",
            format!(
                "the file is {} bytes, over the limit of {MAX_FILE_BYTES} bytes (1 MiB): expected a leasedog YAML configuration of a few kB",
                text.len()
            ),
        )]);
    }
    if let Some(line) = too_deep(text, MAX_DEPTH) {
        return Err(vec![err(
            Some(line),
            "(syntax)",
            format!(
                "nested more than {MAX_DEPTH} levels deep (mappings, sequences, brackets): the configuration needs at most 4"
            ),
        )]);
    }
    let mut value: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            vec![err(
                e.location().map(|l| l.line()),
                "(syntax)",
                format!("not valid YAML: {e}"),
            )]
        })?
    };
    if !value.is_mapping() {
        return Err(vec![err(
            Some(1),
            "(top level)",
            "expected a mapping of keys (scope:, name:, ...)".into(),
        )]);
    }
    normalize(&mut value);

    let mut errors = Vec::new();
    for key in ENV_KEYS {
        let var = env_name(key);
        if let Some(raw) = env(&var) {
            let parsed = if *key == "etcd3.hosts" {
                serde_yaml::Value::Sequence(
                    raw.split(',')
                        .map(|h| serde_yaml::Value::String(h.trim().to_string()))
                        .collect(),
                )
            } else {
                match serde_yaml::from_str::<serde_yaml::Value>(&raw) {
                    Ok(v @ (serde_yaml::Value::Bool(_) | serde_yaml::Value::Number(_))) => v,
                    Ok(serde_yaml::Value::String(s)) => serde_yaml::Value::String(s),
                    _ => serde_yaml::Value::String(raw.clone()),
                }
            };
            // Type check against a config with only this key.
            let mut probe = serde_yaml::Value::Mapping(Default::default());
            set_path(&mut probe, key, parsed.clone());
            if let Err(e) = serde_yaml::from_value::<Config>(probe) {
                errors.push(err(
                    None,
                    key,
                    format!(
                        "environment variable {var}={} is not valid: {e}",
                        excerpt(&raw)
                    ),
                ));
                continue;
            }
            set_path(&mut value, key, parsed);
        }
    }

    let mut cfg: Config = match serde_yaml::from_value(value.clone()) {
        Ok(c) => c,
        Err(e) => {
            // Values carry no positions: re-read the normalized document as
            // text to learn which key failed, then find it in the user's file.
            let generated = serde_yaml::to_string(&value).unwrap_or_default();
            let (key, message) = match serde_yaml::from_str::<Config>(&generated) {
                Err(e2) => {
                    let msg = e2.to_string();
                    let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                    let key = e2
                        .location()
                        .and_then(|l| key_path_at(&generated, l.line()))
                        .unwrap_or_else(|| "(top level)".into());
                    (key, msg)
                }
                Ok(_) => ("(top level)".to_string(), e.to_string()),
            };
            let message = message
                .split_once(": ")
                .filter(|(p, _)| !p.contains(' '))
                .map(|(_, m)| m.to_string())
                .unwrap_or(message);
            errors.push(err(find_line(text, &key), &key, message));
            return Err(errors);
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    cfg.source = source.into();
    let mut https_host = false;
    for h in &mut cfg.etcd3.hosts {
        if let Some(rest) = h.strip_prefix("http://") {
            *h = rest.to_string();
        } else if let Some(rest) = h.strip_prefix("https://") {
            *h = rest.to_string();
            https_host = true;
        }
    }
    if cfg.etcd3.protocol.is_empty() {
        cfg.etcd3.protocol = if https_host { "https" } else { "http" }.into();
    }
    if cfg.postgresql.connect_address.is_empty()
        && let Some(a) = concrete_host(&cfg.postgresql.listen)
    {
        cfg.postgresql.connect_address = a;
    }
    if cfg.restapi.connect_address.is_empty()
        && let Some(a) = concrete_host(&cfg.restapi.listen)
    {
        cfg.restapi.connect_address = a;
    }
    let mut errors = validate(&cfg);
    for e in &mut errors {
        e.line = find_line(text, &e.key);
    }
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

/// Accepted `ttl`, seconds: a lease shorter than 2 s cannot survive one
/// etcd round trip; one over an hour leaves a dead primary's key for an hour.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 2..=3600;
/// Accepted `loop_wait`, seconds.
pub const LOOP_WAIT_RANGE: std::ops::RangeInclusive<u64> = 1..=300;
/// Accepted `retry_timeout`, seconds.
pub const RETRY_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=3600;
/// Accepted `maximum_lag_on_failover`, bytes: WAL positions are below 2^64,
/// the cap leaves room for sums without overflow.
pub const MAX_LAG_RANGE: std::ops::RangeInclusive<u64> = 0..=(1 << 62);
/// Accepted `primary_start_timeout`, seconds: at most a day.
pub const PRIMARY_START_TIMEOUT_MAX: u64 = 86_400;

/// The rules a configuration must satisfy (DESIGN §1). Pure.
pub fn validate(cfg: &Config) -> Vec<ConfigError> {
    let mut out = Vec::new();
    let mut bad = |key: &str, message: String| {
        out.push(ConfigError {
            file: cfg.source.clone(),
            line: None,
            key: key.into(),
            message,
        })
    };
    if cfg.scope.is_empty() {
        bad(
            "scope",
            "required: the cluster's name, the same on every member".into(),
        );
    }
    if cfg.name.is_empty() {
        bad(
            "name",
            "required: this member's name, unique in the cluster".into(),
        );
    } else if !cfg
        .name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        bad(
            "name",
            format!(
                "expected letters, digits, '_', '.' or '-', found {}",
                excerpt(&cfg.name)
            ),
        );
    }
    if cfg.etcd3.hosts.is_empty() {
        bad(
            "etcd3.hosts",
            "required: at least one etcd endpoint as host:port".into(),
        );
    }
    for h in &cfg.etcd3.hosts {
        if parse_host_port(h).is_none() {
            bad(
                "etcd3.hosts",
                format!("expected host:port, found {}", excerpt(h)),
            );
        }
    }
    let e = &cfg.etcd3;
    let https = e.protocol == "https";
    if !matches!(e.protocol.as_str(), "http" | "https") {
        bad(
            "etcd3.protocol",
            format!("expected http or https, found {}", excerpt(&e.protocol)),
        );
    } else if https && e.cacert.is_none() {
        bad(
            "etcd3.cacert",
            "required with protocol https: the PEM file of the CA that signed etcd's certificates"
                .into(),
        );
    }
    for (key, set) in [
        ("etcd3.cacert", e.cacert.is_some()),
        ("etcd3.cert", e.cert.is_some()),
        ("etcd3.key", e.key.is_some()),
    ] {
        if set && !https && e.protocol == "http" {
            bad(
                key,
                "given but etcd3.protocol is http: set etcd3.protocol: https".into(),
            );
        }
    }
    if e.cert.is_some() != e.key.is_some() {
        bad(
            if e.cert.is_some() {
                "etcd3.key"
            } else {
                "etcd3.cert"
            },
            "etcd3.cert and etcd3.key go together: the client certificate and its key".into(),
        );
    }
    if e.key_password.is_some() {
        bad(
            "etcd3.key_password",
            "encrypted keys are not supported: give etcd3.key unencrypted (mode 0600, owned by the agent's user), e.g. `openssl pkey -in enc.key -out etcd.key`".into(),
        );
    }
    for (who, c) in [
        ("superuser", &cfg.postgresql.authentication.superuser),
        ("replication", &cfg.postgresql.authentication.replication),
    ] {
        if let Some(m) = &c.sslmode
            && !SSLMODES.contains(&m.as_str())
        {
            bad(
                match who {
                    "superuser" => "postgresql.authentication.superuser.sslmode",
                    _ => "postgresql.authentication.replication.sslmode",
                },
                format!(
                    "expected one of {}, found {}",
                    SSLMODES.join(", "),
                    excerpt(m)
                ),
            );
        }
    }
    if e.username.is_some() != e.password.is_some() {
        bad(
            if e.username.is_some() {
                "etcd3.password"
            } else {
                "etcd3.username"
            },
            "etcd3.username and etcd3.password go together (etcd's RBAC user)".into(),
        );
    }
    // Bounds first: the rules below add and multiply these values, and the
    // loop turns them into milliseconds.
    let mut in_range = true;
    for (key, value, range, what) in [
        ("ttl", cfg.ttl, TTL_RANGE, "seconds"),
        ("loop_wait", cfg.loop_wait, LOOP_WAIT_RANGE, "seconds"),
        (
            "retry_timeout",
            cfg.retry_timeout,
            RETRY_TIMEOUT_RANGE,
            "seconds",
        ),
        (
            "maximum_lag_on_failover",
            cfg.maximum_lag_on_failover,
            MAX_LAG_RANGE,
            "bytes",
        ),
    ] {
        if !range.contains(&value) {
            in_range = false;
            bad(
                key,
                format!(
                    "expected a number of {what} in {}..={}, found {value}",
                    range.start(),
                    range.end()
                ),
            );
        }
    }
    if cfg.primary_start_timeout > PRIMARY_START_TIMEOUT_MAX {
        bad(
            "primary_start_timeout",
            format!(
                "expected a number of seconds in 0..={PRIMARY_START_TIMEOUT_MAX}, found {}",
                cfg.primary_start_timeout
            ),
        );
    }
    if !(1..=64).contains(&cfg.synchronous_node_count) {
        bad(
            "synchronous_node_count",
            format!(
                "expected a number of standbys in 1..=64, found {}",
                cfg.synchronous_node_count
            ),
        );
    }
    if cfg.maximum_lag_on_syncnode < -1 || cfg.maximum_lag_on_syncnode == 0 {
        bad(
            "maximum_lag_on_syncnode",
            format!(
                "expected -1 (no limit) or a number of bytes above 0, found {}",
                cfg.maximum_lag_on_syncnode
            ),
        );
    }
    if in_range && cfg.loop_wait + 2 * cfg.retry_timeout > cfg.ttl {
        bad(
            "ttl",
            format!(
                "loop_wait + 2*retry_timeout <= ttl is broken: {} + 2*{} = {} > ttl {}",
                cfg.loop_wait,
                cfg.retry_timeout,
                cfg.loop_wait + 2 * cfg.retry_timeout,
                cfg.ttl
            ),
        );
    }
    if cfg.watchdog.mode != WatchdogMode::Off {
        let sm = cfg.watchdog.safety_margin;
        if sm < 1 {
            bad(
                "watchdog.safety_margin",
                format!(
                    "expected a number of seconds in 1..ttl (here 1..{}), found {sm}",
                    cfg.ttl
                ),
            );
        } else if sm >= cfg.ttl {
            bad(
                "watchdog.safety_margin",
                format!(
                    "expected a number of seconds in 1..ttl (here 1..{}): less than ttl, found {sm}",
                    cfg.ttl
                ),
            );
        } else if in_range {
            let wd = cfg.ttl - sm;
            if wd < 2 * cfg.loop_wait {
                bad(
                    "watchdog.safety_margin",
                    format!(
                        "the watchdog timeout ttl - safety_margin = {} - {sm} = {wd}s must be >= 2*loop_wait = {}s",
                        cfg.ttl,
                        2 * cfg.loop_wait
                    ),
                );
            } else if let Err(e) = crate::ha::HaConfig::from_config(cfg).check_drift() {
                bad("watchdog.safety_margin", e);
            }
        }
        if cfg.watchdog.device.as_os_str().is_empty() {
            bad(
                "watchdog.device",
                "required when watchdog.mode is not off (e.g. /dev/watchdog)".into(),
            );
        }
    } else if cfg.watchdog.safety_margin > *TTL_RANGE.end() {
        // Unused with the watchdog off, but still turned into milliseconds.
        bad(
            "watchdog.safety_margin",
            format!(
                "expected a number of seconds in 0..={}, found {}",
                TTL_RANGE.end(),
                cfg.watchdog.safety_margin
            ),
        );
    }
    let abs = |p: &Path| p.is_absolute();
    if cfg.postgresql.data_dir.as_os_str().is_empty() {
        bad("postgresql.data_dir", "required: an absolute path".into());
    } else if !abs(&cfg.postgresql.data_dir) {
        bad(
            "postgresql.data_dir",
            format!(
                "expected an absolute path, found {}",
                excerpt_path(&cfg.postgresql.data_dir)
            ),
        );
    }
    if !abs(&cfg.postgresql.bin_dir) {
        bad(
            "postgresql.bin_dir",
            format!(
                "expected an absolute path, found {}",
                excerpt_path(&cfg.postgresql.bin_dir)
            ),
        );
    }
    if !abs(&cfg.postgresql.socket_dir) {
        bad(
            "postgresql.socket_dir",
            format!(
                "expected an absolute path, found {}",
                excerpt_path(&cfg.postgresql.socket_dir)
            ),
        );
    }
    for (key, val, listen) in [
        ("postgresql.listen", &cfg.postgresql.listen, true),
        (
            "postgresql.connect_address",
            &cfg.postgresql.connect_address,
            false,
        ),
        ("restapi.listen", &cfg.restapi.listen, true),
        (
            "restapi.connect_address",
            &cfg.restapi.connect_address,
            false,
        ),
    ] {
        if !listen && val.is_empty() {
            let from = key.replace("connect_address", "listen");
            let from_val = if key.starts_with("postgresql") {
                &cfg.postgresql.listen
            } else {
                &cfg.restapi.listen
            };
            if parse_host_port(from_val).is_none() {
                continue; // the listen error says it all
            }
            bad(
                key,
                format!(
                    "required when {from} is not a concrete address: give host:port others can reach"
                ),
            );
        } else if parse_host_port(val).is_none() {
            bad(key, format!("expected host:port, found {}", excerpt(val)));
        }
    }
    let r = &cfg.restapi;
    if r.certfile.is_some() != r.keyfile.is_some() {
        bad(
            if r.certfile.is_some() {
                "restapi.keyfile"
            } else {
                "restapi.certfile"
            },
            "restapi.certfile and restapi.keyfile go together: the API's TLS certificate and its unencrypted key".into(),
        );
    }
    if r.keyfile_password.is_some() {
        bad(
            "restapi.keyfile_password",
            "encrypted keys are not supported: give restapi.keyfile unencrypted (mode 0600, owned by the agent's user), e.g. `openssl pkey -in enc.key -out api.key`".into(),
        );
    }
    if r.verify_client != VerifyClient::None && r.cafile.is_none() {
        bad(
            "restapi.cafile",
            format!(
                "required with restapi.verify_client {:?}: the PEM file of the CA that signed the client certificates",
                r.verify_client
            )
            .to_lowercase(),
        );
    }
    if r.certfile.is_none() {
        for (key, set) in [
            ("restapi.cafile", r.cafile.is_some()),
            (
                "restapi.verify_client",
                r.verify_client != VerifyClient::None,
            ),
        ] {
            if set {
                bad(
                    key,
                    "given but the API serves plain HTTP: set restapi.certfile and restapi.keyfile"
                        .into(),
                );
            }
        }
    }
    if let Some(a) = &r.authentication {
        for (key, value) in [
            ("restapi.authentication.username", &a.username),
            ("restapi.authentication.password", &a.password),
        ] {
            if value.is_empty() {
                bad(
                    key,
                    "required with restapi.authentication: the user and password of HTTP basic authentication".into(),
                );
            }
        }
        if a.username.contains(':') {
            bad(
                "restapi.authentication.username",
                "contains ':', which basic authentication cannot carry in a user name".into(),
            );
        }
    }
    // The hot-standby settings the bootstrap writes into the config key:
    // Patroni's bounds, as edit-config checks them (a member would use the
    // default instead).
    for (k, v) in &cfg.bootstrap_parameters {
        let text = crate::postgres::conf::yaml_scalar(v);
        if let Some(e) = crate::hot_standby::check(k, &text) {
            bad(&format!("bootstrap.dcs.postgresql.parameters.{k}"), e);
        }
    }
    if !["error", "warn", "info", "debug", "trace"].contains(&cfg.log.level.as_str()) {
        bad(
            "log.level",
            format!(
                "expected error, warn, info, debug or trace, found {}",
                excerpt(&cfg.log.level)
            ),
        );
    }
    out
}

/// Checks what the configuration points at on this machine: the data
/// directory (absent, or a directory) and the PostgreSQL programs. Touches
/// nothing.
pub fn check_environment(cfg: &Config) -> Vec<ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let text = read_bounded(&cfg.source).unwrap_or_default();
    let line = find_line(&text, "postgresql.bin_dir");
    let mut out = Vec::new();
    let data_dir = &cfg.postgresql.data_dir;
    if let Ok(m) = std::fs::metadata(data_dir)
        && !m.is_dir()
    {
        out.push(ConfigError {
            file: cfg.source.clone(),
            line: find_line(&text, "postgresql.data_dir"),
            key: "postgresql.data_dir".into(),
            message: format!(
                "{} exists and is not a directory: expected PostgreSQL's data directory, or a path where it can be created",
                excerpt_path(data_dir)
            ),
        });
    }
    // psql only runs the CHECKPOINT before a rewind over TLS (the
    // superuser's ssl settings): needed only then.
    let su = &cfg.postgresql.authentication.superuser;
    let su_tls = su.sslmode.is_some()
        || su.sslrootcert.is_some()
        || su.sslcert.is_some()
        || su.sslkey.is_some()
        || su.sslcrl.is_some();
    let psql = su_tls.then_some("psql");
    for prog in [
        "postgres",
        "pg_ctl",
        "initdb",
        "pg_basebackup",
        "pg_rewind",
        "pg_controldata",
    ]
    .into_iter()
    .chain(psql)
    {
        let p = cfg.postgresql.bin_dir.join(prog);
        let ok =
            std::fs::metadata(&p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
        if !ok {
            out.push(ConfigError {
                file: cfg.source.clone(),
                line,
                key: "postgresql.bin_dir".into(),
                message: format!(
                    "{} has no executable {prog}: expected the directory of the PostgreSQL server programs (e.g. /usr/lib/postgresql/15/bin)",
                    excerpt_path(&cfg.postgresql.bin_dir)
                ),
            });
        }
    }
    out
}

impl Config {
    /// etcd endpoints as URLs.
    pub fn etcd_endpoints(&self) -> Vec<String> {
        let scheme = if self.etcd3.protocol == "https" {
            "https"
        } else {
            "http"
        };
        self.etcd3
            .hosts
            .iter()
            .map(|h| format!("{scheme}://{h}"))
            .collect()
    }

    /// The port PostgreSQL listens on.
    pub fn pg_port(&self) -> u16 {
        parse_host_port(&self.postgresql.listen)
            .map(|(_, p)| p)
            .unwrap_or(5432)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "scope: demo
name: pg1
etcd3:
  hosts: [\"127.0.0.1:2379\"]
ttl: 6
loop_wait: 1
retry_timeout: 2
watchdog:
  mode: required
  safety_margin: 2
postgresql:
  data_dir: /var/lib/postgresql/15/demo
  listen: 127.0.0.1:5432
restapi:
  listen: 127.0.0.1:8008
";

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn load_text(t: &str) -> Result<Config, Vec<ConfigError>> {
        load_str(t, Path::new("/etc/leasedog/leasedog.yml"), &no_env)
    }

    fn one_error(t: &str) -> ConfigError {
        let errs = load_text(t).expect_err("should fail");
        assert_eq!(errs.len(), 1, "{errs:?}");
        errs.into_iter().next().unwrap()
    }

    #[test]
    fn good_config_loads_with_defaults() {
        let c = load_text(GOOD).unwrap();
        assert_eq!(c.ttl, 6);
        assert_eq!(c.watchdog.mode, WatchdogMode::Required);
        assert_eq!(c.watchdog.device, PathBuf::from("/dev/watchdog"));
        assert_eq!(c.maximum_lag_on_failover, 1 << 20);
        assert_eq!(c.postgresql.connect_address, "127.0.0.1:5432");
        assert_eq!(c.restapi.connect_address, "127.0.0.1:8008");
        assert_eq!(c.prefix(), "/service/demo/");
        assert_eq!(c.etcd_endpoints(), vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.watchdog_timeout(), 4);
    }

    #[test]
    fn example_config_passes() {
        let c = load_str(
            include_str!("../config/leasedog.yml"),
            Path::new("config/leasedog.yml"),
            &no_env,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.ttl, 30);
        assert_eq!(c.loop_wait, 10);
        // The hot-standby settings: in bootstrap.dcs, none in the file's own.
        assert!(c.bootstrap_parameters.contains_key("max_connections"));
        assert!(
            !c.postgresql
                .parameters
                .keys()
                .any(|k| crate::hot_standby::is_critical(k))
        );
        let bad = include_str!("../config/leasedog.yml").replace(
            "        max_connections: 100",
            "        max_connections: 10",
        );
        let errors = load_str(&bad, Path::new("x.yml"), &no_env).unwrap_err();
        assert!(
            errors.iter().any(
                |e| e.key == "bootstrap.dcs.postgresql.parameters.max_connections"
                    && e.message == "expected a whole number of at least 25, got \"10\""
            ),
            "{errors:?}"
        );
    }

    #[test]
    fn timing_rule_names_the_values_and_line() {
        let e = one_error(
            &GOOD
                .replace("ttl: 6", "ttl: 4")
                .replace("safety_margin: 2", "safety_margin: 1"),
        );
        assert_eq!(e.key, "ttl");
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("1 + 2*2 = 5 > ttl 4"), "{}", e.message);
        assert!(
            e.to_string()
                .starts_with("/etc/leasedog/leasedog.yml:5: ttl:"),
            "{e}"
        );
    }

    #[test]
    fn watchdog_rules() {
        let e = one_error(&GOOD.replace("safety_margin: 2", "safety_margin: 0"));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("watchdog.safety_margin", Some(10))
        );
        let e = one_error(&GOOD.replace("safety_margin: 2", "safety_margin: 5"));
        assert!(
            e.message.contains("6 - 5 = 1s must be >= 2*loop_wait = 2s"),
            "{}",
            e.message
        );
        let e = one_error(&GOOD.replace("safety_margin: 2", "safety_margin: 6"));
        assert!(e.message.contains("less than ttl"), "{}", e.message);
        let e =
            one_error(&GOOD.replace("  safety_margin: 2", "  safety_margin: 2\n  device: \"\""));
        assert_eq!(e.key, "watchdog.device");
        // mode off skips the watchdog rules
        assert!(
            load_text(
                &GOOD
                    .replace("mode: required", "mode: off")
                    .replace("safety_margin: 2", "safety_margin: 0")
            )
            .is_ok()
        );
        // settings the tests use
        for (t, l, r, m) in [(6, 1, 2, 2), (8, 1, 2, 2), (10, 1, 3, 3), (30, 10, 10, 5)] {
            let y = GOOD
                .replace("ttl: 6", &format!("ttl: {t}"))
                .replace("loop_wait: 1", &format!("loop_wait: {l}"))
                .replace("retry_timeout: 2", &format!("retry_timeout: {r}"))
                .replace("safety_margin: 2", &format!("safety_margin: {m}"));
            assert!(load_text(&y).is_ok(), "{t}/{l}/{r}/{m}");
        }
    }

    #[test]
    fn zero_durations() {
        let errs = load_text(
            &GOOD
                .replace("loop_wait: 1", "loop_wait: 0")
                .replace("retry_timeout: 2", "retry_timeout: 0"),
        )
        .unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(
            keys.contains(&"loop_wait") && keys.contains(&"retry_timeout"),
            "{keys:?}"
        );
        let errs = load_text(&GOOD.replace("ttl: 6", "ttl: 0")).unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.key == "ttl" && e.message.contains("in 2..=3600, found 0")),
            "{errs:?}"
        );
    }

    #[test]
    fn synchronous_keys_are_read_as_patroni_writes_them_and_checked() {
        let c = load_text(&GOOD.replace("ttl: 6", "ttl: 6\nsynchronous_mode: true")).unwrap();
        assert_eq!(c.synchronous_mode, SyncMode::On);
        let c = load_text(&GOOD.replace(
            "ttl: 6",
            "ttl: 6\nbootstrap:\n  dcs:\n    synchronous_mode: quorum\n    synchronous_node_count: 2",
        ))
        .unwrap();
        assert_eq!(
            (c.synchronous_mode, c.synchronous_node_count),
            (SyncMode::Quorum, 2)
        );
        for (yaml, key, says) in [
            (
                "synchronous_mode: maybe",
                "synchronous_mode",
                "expected one of",
            ),
            (
                "synchronous_node_count: 0",
                "synchronous_node_count",
                "1..=64",
            ),
            (
                "maximum_lag_on_syncnode: 0",
                "maximum_lag_on_syncnode",
                "-1 (no limit)",
            ),
            (
                "synchronous_mode_strict: sometimes",
                "synchronous_mode_strict",
                "",
            ),
        ] {
            let errs = load_text(&GOOD.replace("ttl: 6", &format!("ttl: 6\n{yaml}"))).unwrap_err();
            assert!(
                errs.iter()
                    .any(|e| e.key == key && e.message.contains(says)),
                "{yaml}: {errs:?}"
            );
        }
    }

    #[test]
    fn timing_keys_are_bounded_and_name_the_range() {
        for (from, to, key, range) in [
            ("ttl: 6", "ttl: 18446744073709551615", "ttl", "2..=3600"),
            ("ttl: 6", "ttl: 3601", "ttl", "2..=3600"),
            ("loop_wait: 1", "loop_wait: 301", "loop_wait", "1..=300"),
            (
                "loop_wait: 1",
                "loop_wait: 18446744073709551615",
                "loop_wait",
                "1..=300",
            ),
            (
                "retry_timeout: 2",
                "retry_timeout: 9223372036854775808",
                "retry_timeout",
                "1..=3600",
            ),
            (
                "ttl: 6",
                "ttl: 6\nmaximum_lag_on_failover: 18446744073709551615",
                "maximum_lag_on_failover",
                "0..=4611686018427387904",
            ),
        ] {
            let errs = load_text(&GOOD.replace(from, to)).unwrap_err();
            assert!(
                errs.iter()
                    .any(|e| e.key == key && e.message.contains(range) && e.line.is_some()),
                "{to}: {errs:?}"
            );
        }
        let e = one_error(&GOOD.replace("safety_margin: 2", "safety_margin: 18446744073709551615"));
        assert_eq!(e.key, "watchdog.safety_margin");
        assert!(e.message.contains("1..ttl (here 1..6)"), "{}", e.message);
        let e = one_error(
            &GOOD
                .replace("mode: required", "mode: off")
                .replace("safety_margin: 2", "safety_margin: 18446744073709551615"),
        );
        assert_eq!(e.key, "watchdog.safety_margin");
        assert!(e.message.contains("0..=3600"), "{}", e.message);
        // The upper ends themselves are accepted (a ttl of an hour needs a
        // safety margin above the watchdog's 3% rate slack).
        let y = GOOD
            .replace("ttl: 6", "ttl: 3600")
            .replace("safety_margin: 2", "safety_margin: 120")
            .replace("loop_wait: 1", "loop_wait: 300")
            .replace("retry_timeout: 2", "retry_timeout: 1000")
            .replace(
                "ttl: 3600",
                "ttl: 3600\nmaximum_lag_on_failover: 4611686018427387904",
            );
        let c = load_text(&y).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((c.ttl, c.maximum_lag_on_failover), (3600, 1 << 62));
        // From the environment too.
        let env = |k: &str| (k == "LEASEDOG_TTL").then(|| "18446744073709551615".to_string());
        let errs = load_str(GOOD, Path::new("x.yml"), &env).unwrap_err();
        assert!(errs.iter().any(|e| e.key == "ttl"), "{errs:?}");
    }

    #[test]
    fn oversized_file_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.yml");
        // Not YAML at all: parsing would fail differently.
        std::fs::write(&path, vec![b'['; MAX_FILE_BYTES + 1]).unwrap();
        let errs = load(&path).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        let text = errs[0].to_string();
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("{} bytes", MAX_FILE_BYTES + 1))
                && text.contains(&format!("limit of {MAX_FILE_BYTES} bytes")),
            "{text}"
        );
        // Text handed over directly gets the same rule.
        let e = one_error(&format!("{GOOD}#{}\n", "x".repeat(MAX_FILE_BYTES)));
        assert_eq!(e.key, "(file)");
        assert!(e.message.contains("over the limit"), "{}", e.message);
        // A file at the limit is read (and judged on its content).
        std::fs::write(
            &path,
            format!("{GOOD}#{}", "x".repeat(MAX_FILE_BYTES - GOOD.len() - 1)),
        )
        .unwrap();
        assert!(load(&path).is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_fast() {
        let started = std::time::Instant::now();
        for deep in [
            "[".repeat(100_000),
            format!("scope: {}", "{a: ".repeat(100_000)),
            format!("{}x", "- ".repeat(100_000)),
            (0..1000)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect::<String>(),
        ] {
            let e = one_error(&deep);
            assert_eq!(e.key, "(syntax)", "{e}");
            assert!(e.message.contains("more than 64 levels"), "{}", e.message);
            assert!(e.line.is_some());
        }
        // Well under a second: the parser never saw these documents.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Brackets inside quotes, comments and block scalars are no nesting.
        let deep_text = "[".repeat(200);
        let y = format!(
            "{GOOD}log:\n  level: \"{deep_text}\" # {deep_text}\npostgresql_x: |\n  {deep_text}\n"
        );
        let errs = load_text(&y).unwrap_err();
        assert!(errs.iter().all(|e| e.key != "(syntax)"), "{errs:?}");
        assert_eq!(
            too_deep(&format!("a: 'it''s [{deep_text}'"), MAX_DEPTH),
            None
        );
        // A quote inside a plain scalar opens nothing: the brackets after it
        // still count.
        let sneaky = format!("a: b 'c\nb: {deep_text}");
        assert_eq!(too_deep(&sneaky, MAX_DEPTH), Some(2));
        assert_eq!(too_deep("a: b [c\nd: e", MAX_DEPTH), None);
        let dashes_and_brackets = format!("a:\n{}{}", "- ".repeat(40), "[".repeat(30));
        assert_eq!(too_deep(&dashes_and_brackets, MAX_DEPTH), Some(2));
        assert_eq!(too_deep("a: {\"k\":[1, [2]], 'x': \"y\"}", MAX_DEPTH), None);
        // The top-level mapping is the first level.
        let nested = |n: usize| format!("a: 1\nb: {}", "[".repeat(n));
        assert_eq!(too_deep(&nested(MAX_DEPTH - 1), MAX_DEPTH), None);
        assert_eq!(too_deep(&nested(MAX_DEPTH), MAX_DEPTH), Some(2));
    }

    #[test]
    fn errors_quote_only_an_excerpt_of_huge_values() {
        let huge = "y".repeat(500_000);
        let short = |e: &ConfigError| e.to_string().len() < 1200;
        // A value of ours, from the file and from the environment.
        let e = one_error(&GOOD.replace("name: pg1", &format!("name: \"p g{huge}\"")));
        assert!(short(&e) && e.message.contains("…"), "{}", e.message.len());
        let big_env = format!("pg 1{}", "z".repeat(10 << 20));
        let env = |k: &str| (k == "LEASEDOG_NAME").then(|| big_env.clone());
        let errs = load_str(GOOD, Path::new("x.yml"), &env).unwrap_err();
        assert!(errs.iter().all(short), "{}", errs[0].message.len());
        assert!(
            errs[0]
                .message
                .contains(&format!("({} bytes)", big_env.len()))
        );
        // A value the parser quotes, and a huge unknown key.
        let e = one_error(&GOOD.replace("mode: required", &format!("mode: {huge}")));
        assert!(short(&e) && e.message.contains("required"), "{}", e.message);
        let e = one_error(&GOOD.replace(
            "  safety_margin: 2",
            &format!("  safety_margin: 2\n  ? {huge}\n  : 1"),
        ));
        assert!(short(&e) && e.message.contains("unknown field"), "{e}");
        assert_eq!(excerpt("abc"), "\"abc\"");
        assert_eq!(
            excerpt(&"é".repeat(100))
                .chars()
                .filter(|&c| c == 'é')
                .count(),
            80
        );
    }

    #[test]
    fn data_dir_that_is_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let source = dir.path().join("leasedog.yml");
        let text = GOOD.replace("/var/lib/postgresql/15/demo", &file.display().to_string());
        std::fs::write(&source, &text).unwrap();
        let cfg = load_str(&text, &source, &no_env).unwrap();
        let errs = check_environment(&cfg);
        let e = errs
            .iter()
            .find(|e| e.key == "postgresql.data_dir")
            .unwrap_or_else(|| panic!("{errs:?}"));
        assert_eq!(e.line, Some(12));
        assert!(e.message.contains("exists and is not a directory"), "{e}");
        // A directory, or nothing yet, is fine.
        let mut ok = cfg.clone();
        ok.postgresql.data_dir = dir.path().into();
        assert!(
            check_environment(&ok)
                .iter()
                .all(|e| e.key != "postgresql.data_dir")
        );
        ok.postgresql.data_dir = dir.path().join("absent");
        assert!(
            check_environment(&ok)
                .iter()
                .all(|e| e.key != "postgresql.data_dir")
        );
    }

    #[test]
    fn required_and_malformed_values() {
        let e = one_error(&GOOD.replace("scope: demo\n", ""));
        assert_eq!((e.key.as_str(), e.line), ("scope", None));
        let e = one_error(&GOOD.replace("name: pg1", "name: \"pg 1\""));
        assert_eq!((e.key.as_str(), e.line), ("name", Some(2)));
        let e = one_error(&GOOD.replace("name: pg1\n", ""));
        assert_eq!(e.key, "name");
        let e = one_error(&GOOD.replace("127.0.0.1:2379", "localhost"));
        assert_eq!((e.key.as_str(), e.line), ("etcd3.hosts", Some(4)));
        let e = one_error(&GOOD.replace("  hosts: [\"127.0.0.1:2379\"]", "  hosts: []"));
        assert_eq!(e.key, "etcd3.hosts");
        let e = one_error(&GOOD.replace(
            "data_dir: /var/lib/postgresql/15/demo",
            "data_dir: relative/dir",
        ));
        assert_eq!((e.key.as_str(), e.line), ("postgresql.data_dir", Some(12)));
        let e = one_error(&GOOD.replace("  data_dir: /var/lib/postgresql/15/demo\n", ""));
        assert_eq!(e.key, "postgresql.data_dir");
        let e = one_error(&GOOD.replace(
            "  listen: 127.0.0.1:5432",
            "  listen: 127.0.0.1:5432\n  bin_dir: bin",
        ));
        assert_eq!(e.key, "postgresql.bin_dir");
        let e = one_error(&GOOD.replace(
            "  listen: 127.0.0.1:5432",
            "  listen: 127.0.0.1:5432\n  socket_dir: sock",
        ));
        assert_eq!(e.key, "postgresql.socket_dir");
        let errs = load_text(&GOOD.replace("listen: 127.0.0.1:5432", "listen: 127.0.0.1:99999"))
            .unwrap_err();
        assert_eq!(
            (errs[0].key.as_str(), errs[0].line),
            ("postgresql.listen", Some(13))
        );
        let e = one_error(&GOOD.replace("listen: 127.0.0.1:5432", "listen: 0.0.0.0:5432"));
        assert_eq!(e.key, "postgresql.connect_address");
        assert!(e.message.contains("postgresql.listen"), "{}", e.message);
        let e = one_error(&GOOD.replace("listen: 127.0.0.1:8008", "listen: nonsense"));
        assert_eq!(e.key, "restapi.listen");
        let e = one_error(&GOOD.replace("listen: 127.0.0.1:8008", "listen: 0.0.0.0:8008"));
        assert_eq!(e.key, "restapi.connect_address");
        let e = one_error(&format!("{GOOD}log:\n  level: loud\n"));
        assert_eq!((e.key.as_str(), e.line), ("log.level", Some(17)));
    }

    #[test]
    fn etcd_transport_keys_are_checked_together() {
        let hosts = "  hosts: [\"127.0.0.1:2379\"]";
        let with = |extra: &str| GOOD.replace(hosts, &format!("{hosts}\n{extra}"));
        let c = load_text(&with("  protocol: https\n  cacert: /etc/etcd/ca.pem\n  cert: /c.pem\n  key: /c.key\n  username: u\n  password: p")).unwrap();
        assert_eq!(c.etcd_endpoints(), vec!["https://127.0.0.1:2379"]);
        let c = load_text(
            &GOOD
                .replace("\"127.0.0.1:2379\"", "\"https://a:1\"")
                .replace("etcd3:\n", "etcd3:\n  cacert: /ca.pem\n"),
        )
        .unwrap();
        assert_eq!(c.etcd3.protocol, "https");
        assert_eq!(c.etcd_endpoints(), vec!["https://a:1"]);
        for (extra, key, says) in [
            ("  protocol: spdy", "etcd3.protocol", "http or https"),
            (
                "  protocol: https",
                "etcd3.cacert",
                "required with protocol https",
            ),
            ("  cacert: /ca.pem", "etcd3.cacert", "protocol is http"),
            (
                "  protocol: https\n  cacert: /a\n  cert: /c.pem",
                "etcd3.key",
                "go together",
            ),
            (
                "  protocol: https\n  cacert: /a\n  key_password: x",
                "etcd3.key_password",
                "not supported",
            ),
            ("  username: u", "etcd3.password", "go together"),
            ("  password: p", "etcd3.username", "go together"),
        ] {
            let e = one_error(&with(extra));
            assert_eq!(e.key, key, "{extra}: {e:?}");
            assert!(e.message.contains(says), "{extra}: {}", e.message);
        }
        let env = |k: &str| match k {
            "LEASEDOG_ETCD3_PROTOCOL" => Some("https".to_string()),
            "LEASEDOG_ETCD3_CACERT" => Some("/env/ca.pem".to_string()),
            "LEASEDOG_ETCD3_USERNAME" => Some("u".to_string()),
            "LEASEDOG_ETCD3_PASSWORD" => Some("from-env".to_string()),
            _ => None,
        };
        let c = load_str(GOOD, Path::new("/x.yml"), &env).unwrap();
        assert_eq!(c.etcd3.cacert.as_deref(), Some(Path::new("/env/ca.pem")));
        assert_eq!(c.etcd3.password.as_deref(), Some("from-env"));
    }

    #[test]
    fn unknown_keys_and_bad_types_have_lines() {
        let e = one_error(&GOOD.replace("  safety_margin: 2", "  safety_margin: 2\n  colour: red"));
        assert_eq!((e.key.as_str(), e.line), ("watchdog.colour", Some(11)));
        assert!(e.message.contains("unknown field"), "{}", e.message);
        let e = one_error(&GOOD.replace("ttl: 6", "ttl: abc"));
        assert_eq!((e.key.as_str(), e.line), ("ttl", Some(5)));
        let e = one_error(&GOOD.replace("mode: required", "mode: sometimes"));
        assert_eq!(e.key, "watchdog.mode");
        assert!(
            e.message.contains("off") && e.message.contains("required"),
            "{}",
            e.message
        );
        let e = one_error("scope: [unclosed\n");
        assert_eq!(e.key, "(syntax)");
        assert!(e.line.is_some());
    }

    #[test]
    fn patroni_forms_are_accepted() {
        let y = "scope: demo
name: pg1
etcd3:
  host: 10.0.0.1:2379
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 3
    postgresql:
      use_pg_rewind: true
postgresql:
  data_dir: /d
  listen: 127.0.0.1:5432
  parameters:
    max_connections: 100
    hot_standby: true
restapi:
  listen: 127.0.0.1:8008
";
        let c = load_text(y).unwrap();
        assert_eq!(c.etcd3.hosts, vec!["10.0.0.1:2379"]);
        assert_eq!((c.ttl, c.loop_wait, c.retry_timeout), (20, 2, 3));
        assert_eq!(
            c.postgresql.parameters.get("hot_standby"),
            Some(&serde_yaml::Value::String("on".into()))
        );
        let c = load_text(&y.replace("  host: 10.0.0.1:2379", "  hosts: http://a:1, b:2")).unwrap();
        assert_eq!(c.etcd3.hosts, vec!["a:1", "b:2"]);
        // top level wins over bootstrap.dcs
        let c = load_text(&format!("ttl: 25\n{y}")).unwrap();
        assert_eq!(c.ttl, 25);
    }

    #[test]
    fn environment_overrides() {
        let env = |k: &str| match k {
            "LEASEDOG_NAME" => Some("pg9".to_string()),
            "LEASEDOG_POSTGRESQL_DATA_DIR" => Some("/srv/pg".to_string()),
            "LEASEDOG_ETCD3_HOSTS" => Some("a:1,b:2".to_string()),
            "LEASEDOG_TAGS_NOFAILOVER" => Some("true".to_string()),
            "LEASEDOG_TTL" => Some("8".to_string()),
            _ => None,
        };
        let c = load_str(GOOD, Path::new("x.yml"), &env).unwrap();
        assert_eq!(c.name, "pg9");
        assert_eq!(c.postgresql.data_dir, PathBuf::from("/srv/pg"));
        assert_eq!(c.etcd3.hosts, vec!["a:1", "b:2"]);
        assert!(c.tags.nofailover);
        assert_eq!(c.ttl, 8);
        let env = |k: &str| (k == "LEASEDOG_WATCHDOG_SAFETY_MARGIN").then(|| "lots".to_string());
        let errs = load_str(GOOD, Path::new("x.yml"), &env).unwrap_err();
        assert!(
            errs[0].message.contains("LEASEDOG_WATCHDOG_SAFETY_MARGIN"),
            "{errs:?}"
        );
        assert_eq!(
            env_name("postgresql.data_dir"),
            "LEASEDOG_POSTGRESQL_DATA_DIR"
        );
    }

    #[test]
    fn line_locator() {
        let t = "a: 1\nb:\n  c: 2\n  # note\n  d:\n    e: 3\nf: 4\n";
        assert_eq!(find_line(t, "a"), Some(1));
        assert_eq!(find_line(t, "b.c"), Some(3));
        assert_eq!(find_line(t, "b.d.e"), Some(6));
        assert_eq!(find_line(t, "f"), Some(7));
        assert_eq!(find_line(t, "b.x"), None);
        assert_eq!(find_line(t, "e"), None);
    }

    #[test]
    fn restapi_tls_and_authentication_keys() {
        let with = |extra: &str| {
            GOOD.replace(
                "  listen: 127.0.0.1:8008\n",
                &format!("  listen: 127.0.0.1:8008\n{extra}"),
            )
        };
        let c = load_text(&with(
            "  certfile: /etc/leasedog/api.pem\n  keyfile: /etc/leasedog/api.key\n  cafile: /etc/leasedog/ca.pem\n  verify_client: required\n  authentication:\n    username: admin\n    password: s3cret\n",
        ))
        .unwrap();
        assert_eq!(c.restapi.verify_client, VerifyClient::Required);
        let a = c.restapi.authentication.as_ref().unwrap();
        assert_eq!(
            (a.username.as_str(), a.password.as_str()),
            ("admin", "s3cret")
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug shows no password"
        );
        assert_eq!(
            load_text(GOOD).unwrap().restapi.verify_client,
            VerifyClient::None
        );
        let e = one_error(&with("  certfile: /etc/leasedog/api.pem\n"));
        assert_eq!((e.key.as_str(), e.line), ("restapi.keyfile", None));
        let e = one_error(&with("  keyfile: /etc/leasedog/api.key\n"));
        assert_eq!((e.key.as_str(), e.line), ("restapi.certfile", None));
        let tls = "  certfile: /a.pem\n  keyfile: /a.key\n";
        let e = one_error(&with(&format!("{tls}  verify_client: required\n")));
        assert_eq!(e.key, "restapi.cafile");
        assert!(
            e.message.contains("verify_client required"),
            "{}",
            e.message
        );
        let e = one_error(&with(&format!(
            "{tls}  cafile: /ca.pem\n  verify_client: sometimes\n"
        )));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("restapi.verify_client", Some(19))
        );
        let e = one_error(&with(&format!("{tls}  keyfile_password: x\n")));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("restapi.keyfile_password", Some(18))
        );
        let e = one_error(&with("  cafile: /ca.pem\n"));
        assert_eq!(e.key, "restapi.cafile");
        assert!(e.message.contains("plain HTTP"), "{}", e.message);
        let e = one_error(&with("  authentication:\n    username: admin\n"));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("restapi.authentication.password", None)
        );
        let e = one_error(&with("  authentication:\n    password: x\n"));
        assert_eq!(e.key, "restapi.authentication.username");
        let e = one_error(&with(
            "  authentication:\n    username: a:b\n    password: x\n",
        ));
        assert_eq!(e.key, "restapi.authentication.username");
        // Environment overrides, as for every scalar key.
        let env = |k: &str| match k {
            "LEASEDOG_RESTAPI_AUTHENTICATION_USERNAME" => Some("u".to_string()),
            "LEASEDOG_RESTAPI_AUTHENTICATION_PASSWORD" => Some("p".to_string()),
            _ => None,
        };
        let c = load_str(GOOD, Path::new("/x.yml"), &env).unwrap();
        assert_eq!(c.restapi.authentication.unwrap().password, "p");
    }
}
