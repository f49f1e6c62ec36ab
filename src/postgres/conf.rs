//! The settings leasedog manages, as text: `leasedog.conf` (included from
//! postgresql.conf), `pg_hba.conf`, and connection strings. Pure functions;
//! writing the files is `write_atomic`.

use crate::cluster::slot_name;
use crate::config::PostgresqlConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The include line appended to postgresql.conf.
pub const INCLUDE_LINE: &str = "include_if_exists = 'leasedog.conf'";
/// The managed file's name inside the data directory.
pub const MANAGED_FILE: &str = "leasedog.conf";

/// The cluster-wide settings (`postgresql.parameters` of the `config` key),
/// included from `leasedog.conf` before the local file's parameters (as in
/// Patroni, a member's own file wins) and the settings leasedog owns.
pub const CLUSTER_FILE: &str = "leasedog-cluster.conf";

/// The include line for [`CLUSTER_FILE`].
pub const CLUSTER_INCLUDE_LINE: &str = "include_if_exists = 'leasedog-cluster.conf'";

/// Settings the `config` key cannot set: leasedog's own (where this member
/// listens, what it streams from).
pub const OWN_SETTINGS: [&str; 5] = [
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "primary_conninfo",
    "primary_slot_name",
];

/// A name PostgreSQL accepts for a setting (custom ones have a dot).
pub fn valid_setting_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && k.len() <= 63
}

/// The text of [`CLUSTER_FILE`], and what was left out (with why): names
/// PostgreSQL would not parse, values with control characters (a line
/// break would make the file unreadable and PostgreSQL refuse to start),
/// and the settings leasedog owns.
pub fn cluster_conf(
    params: &BTreeMap<String, String>,
    sync_managed: bool,
) -> (String, Vec<String>) {
    let mut out = String::from(
        "# Managed by leasedog: postgresql.parameters of the cluster's config key (leasedog edit-config).\n",
    );
    let mut skipped = Vec::new();
    for (k, v) in params {
        if !valid_setting_name(k) {
            skipped.push(format!(
                "{:?}: not a setting name",
                crate::config::excerpt(k)
            ));
        } else if v.chars().any(|c| c.is_control()) {
            skipped.push(format!("{k}: the value holds a control character"));
        } else if OWN_SETTINGS.iter().any(|o| o == k)
            || (sync_managed && k == "synchronous_standby_names")
        {
            skipped.push(format!("{k}: set by leasedog"));
        } else {
            out.push_str(&format!("{k} = {}\n", quote(v)));
        }
    }
    (out, skipped)
}

/// Quotes a value for postgresql.conf.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a value for a libpq connection string.
pub fn conninfo_quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// The password file beside the data directory (`<data_dir>.pgpass`, mode
/// 0600, like the server log beside it: a base backup never copies it).
pub fn passfile_path(data_dir: &Path) -> PathBuf {
    let mut s = data_dir.as_os_str().to_owned();
    s.push(".pgpass");
    PathBuf::from(s)
}

/// The password file the agent keeps: `postgresql.pgpass`, or
/// `<data_dir>.pgpass`.
pub fn passfile_of(cfg: &crate::config::PostgresqlConfig) -> PathBuf {
    cfg.pgpass
        .clone()
        .unwrap_or_else(|| passfile_path(&cfg.data_dir))
}

/// One `.pgpass` line for `user` on every host, port and database, with
/// `:` and `\` escaped as libpq expects.
pub fn pgpass_line(user: &str, password: &str) -> String {
    let esc = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", esc(user), esc(password))
}

/// `host:port` split, the host part possibly a comma list.
pub fn split_listen(listen: &str) -> (String, u16) {
    match listen.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(5432)),
        None => (listen.to_string(), 5432),
    }
}

/// A server to stream from, clone from or rewind from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub application_name: String,
    /// libpq TLS settings (`sslmode`, `sslrootcert`, ...) of the credentials.
    pub ssl: Vec<(&'static str, String)>,
    /// Stream with the member's replication slot (`primary_slot_name`);
    /// false: without one (`ha::stream_slot` says when).
    pub with_slot: bool,
}

/// The libpq TLS keywords of `creds`, in a fixed order.
pub fn ssl_params(creds: &crate::config::Credentials) -> Vec<(&'static str, String)> {
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    [
        ("sslmode", creds.sslmode.clone()),
        ("sslrootcert", path(&creds.sslrootcert)),
        ("sslcert", path(&creds.sslcert)),
        ("sslkey", path(&creds.sslkey)),
        ("sslcrl", path(&creds.sslcrl)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

impl Upstream {
    /// From a member's `postgres://host:port/db` URL and our credentials.
    pub fn from_conn_url(
        conn_url: &str,
        creds: &crate::config::Credentials,
        application_name: &str,
    ) -> Option<Upstream> {
        let hp = crate::cluster::conn_host_port(conn_url)?;
        let (host, port) = hp.rsplit_once(':')?;
        Some(Upstream {
            host: host.to_string(),
            port: port.parse().ok()?,
            user: creds.username.clone(),
            password: creds.password.clone(),
            application_name: application_name.to_string(),
            ssl: ssl_params(creds),
            with_slot: false,
        })
    }

    /// A libpq connection string for replication or pg_rewind. It never
    /// carries the password (it would be in a command line, readable by any
    /// local user, or in PostgreSQL's log on every reload): libpq reads it
    /// from `passfile`, which `Postgres::write_passfile` keeps.
    pub fn conninfo(&self, dbname: Option<&str>, passfile: &Path) -> String {
        let mut s = format!(
            "host={} port={} user={} application_name={} connect_timeout=2 keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=3",
            conninfo_quote(&self.host),
            self.port,
            conninfo_quote(&self.user),
            conninfo_quote(&self.application_name)
        );
        s.push_str(&format!(
            " passfile={}",
            conninfo_quote(&passfile.display().to_string())
        ));
        for (k, v) in &self.ssl {
            s.push_str(&format!(" {k}={}", conninfo_quote(v)));
        }
        if let Some(db) = dbname {
            s.push_str(&format!(" dbname={}", conninfo_quote(db)));
        }
        s
    }
}

/// A setting's value in leasedog.yml as PostgreSQL reads it.
pub fn yaml_scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
        serde_yaml::Value::Number(n) => n.to_string(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// The text of `leasedog.conf`. `upstream` is set for a replica that
/// streams; `primary_slot_name` is the member's slot, or empty without one.
/// `sync_names`: synchronous mode's `synchronous_standby_names` (None: the
/// parameter is the user's).
pub fn managed_conf(
    cfg: &PostgresqlConfig,
    member: &str,
    upstream: Option<&Upstream>,
    sync_names: Option<&str>,
) -> String {
    let (hosts, port) = split_listen(&cfg.listen);
    let hosts = if hosts == "0.0.0.0" {
        "*".to_string()
    } else {
        hosts
    };
    let mut out = String::from(
        "# Managed by leasedog: rewritten before every start. Edit leasedog.yml instead.\n",
    );
    let mut set = |k: &str, v: &str| out.push_str(&format!("{k} = {}\n", quote(v)));
    // The hot-standby-critical settings' defaults, under the cluster's
    // values (its file always holds them all once written): never the
    // member's own (`hot_standby::ignored_local` names those).
    for c in &crate::hot_standby::CRITICAL {
        set(c.name, c.default);
    }
    let fixed = [
        ("hot_standby_feedback", "on"),
        ("wal_receiver_status_interval", "1s"),
        ("wal_retrieve_retry_interval", "1s"),
    ];
    for (k, v) in fixed {
        if !cfg.parameters.contains_key(k) {
            set(k, v);
        }
    }
    // The cluster's settings, then this member's own (as in Patroni, the
    // local file wins, except for the hot-standby-critical ones), then
    // leasedog's.
    set("include_if_exists", CLUSTER_FILE);
    for (k, v) in &cfg.parameters {
        // The replication settings are leasedog's: a primary_slot_name
        // left in force while the stream runs without a slot would never
        // match what the agent decided.
        if OWN_SETTINGS.iter().any(|o| o == k)
            || crate::hot_standby::is_critical(k)
            || sync_names.is_some() && k == "synchronous_standby_names"
        {
            continue;
        }
        set(k, &yaml_scalar(v));
    }
    set("listen_addresses", &hosts);
    set("port", &port.to_string());
    set(
        "unix_socket_directories",
        &cfg.socket_dir.display().to_string(),
    );
    if let Some(names) = sync_names {
        set("synchronous_standby_names", names);
    }
    if let Some(up) = upstream {
        set("primary_conninfo", &up.conninfo(None, &passfile_of(cfg)));
        let slot = if up.with_slot {
            slot_name(member)
        } else {
            String::new()
        };
        set("primary_slot_name", &slot);
        set("recovery_target_timeline", "latest");
    }
    out
}

/// The first line of the section [`with_raised`] keeps at the end of
/// `leasedog.conf`.
pub const RAISED_MARK: &str =
    "# Raised to the primary's values that pg_control records (a replica must not run lower):";

/// `leasedog.conf`'s text with its last section holding `raised` (a
/// replica's settings raised to pg_control's, see `hot_standby::raise`):
/// after every other line, so they win; none: no section.
pub fn with_raised(text: &str, raised: &[crate::hot_standby::Raised]) -> String {
    let mut out = match text.find(RAISED_MARK) {
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    };
    if raised.is_empty() {
        return out;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(RAISED_MARK);
    out.push('\n');
    for r in raised {
        out.push_str(&format!("{} = {}\n", r.name, quote(&r.value.to_string())));
    }
    out
}

/// The text of pg_hba.conf from the configured lines.
pub fn hba_conf(lines: &[String]) -> String {
    let mut s = String::from(
        "# Managed by leasedog: postgresql.pg_hba of the cluster's config key, else of leasedog.yml.\n",
    );
    for l in lines {
        s.push_str(l);
        s.push('\n');
    }
    s
}

/// postgresql.conf with the include line appended once.
pub fn with_include(postgresql_conf: &str) -> Option<String> {
    if postgresql_conf.lines().any(|l| l.trim() == INCLUDE_LINE) {
        return None;
    }
    let mut s = postgresql_conf.to_string();
    if !s.ends_with('\n') && !s.is_empty() {
        s.push('\n');
    }
    s.push_str(INCLUDE_LINE);
    s.push('\n');
    Some(s)
}

/// Writes through a temporary file and a rename, mode 0600.
pub fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("leasedog-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Credentials;
    use std::path::PathBuf;

    fn cfg() -> PostgresqlConfig {
        let mut c = PostgresqlConfig {
            listen: "127.0.0.1:6543".into(),
            socket_dir: PathBuf::from("/tmp/s"),
            data_dir: PathBuf::from("/d"),
            ..Default::default()
        };
        c.parameters.insert(
            "max_connections".into(),
            serde_yaml::Value::Number(42.into()),
        );
        c.parameters
            .insert("port".into(), serde_yaml::Value::Number(1.into()));
        c.parameters
            .insert("hot_standby".into(), serde_yaml::Value::Bool(false));
        c.parameters
            .insert("work_mem".into(), serde_yaml::Value::String("4MB".into()));
        c
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("it's"), "'it''s'");
        assert_eq!(conninfo_quote("plain"), "plain");
        assert_eq!(conninfo_quote("a b'c"), "'a b\\'c'");
    }

    #[test]
    fn managed_conf_primary_and_replica() {
        let c = cfg();
        let p = managed_conf(&c, "Node-1", None, None);
        assert!(p.contains("port = '6543'\n"), "{p}");
        assert!(
            !p.contains("port = '1'"),
            "listen wins over parameters.port: {p}"
        );
        // The hot-standby-critical settings are never the member's own:
        // the defaults, under the cluster's file.
        assert!(!p.contains("max_connections = '42'"), "{p}");
        assert!(!p.contains("hot_standby = 'off'"), "{p}");
        assert!(
            p.find("max_connections = '100'").unwrap() < p.find(CLUSTER_INCLUDE_LINE).unwrap(),
            "{p}"
        );
        assert!(p.contains("hot_standby = 'on'"), "{p}");
        assert!(
            p.contains("work_mem = '4MB'"),
            "other values are the member's: {p}"
        );
        assert!(p.contains("listen_addresses = '127.0.0.1'"));
        assert!(p.contains("unix_socket_directories = '/tmp/s'"));
        assert!(!p.contains("primary_conninfo"));
        let up = Upstream {
            host: "10.0.0.2".into(),
            port: 5432,
            user: "replicator".into(),
            password: Some("s3'cret".into()),
            application_name: "Node-1".into(),
            ssl: Vec::new(),
            with_slot: true,
        };
        let r = managed_conf(&c, "Node-1", Some(&up), None);
        assert!(r.contains("primary_slot_name = 'node_1'"), "{r}");
        // Without the slot: empty, also over a slot set in parameters.
        let mut c2 = c.clone();
        c2.parameters.insert(
            "primary_slot_name".into(),
            serde_yaml::Value::String("x".into()),
        );
        let slotless = Upstream {
            with_slot: false,
            ..up.clone()
        };
        let r2 = managed_conf(&c2, "Node-1", Some(&slotless), None);
        assert!(r2.contains("primary_slot_name = ''\n"), "{r2}");
        assert!(!r2.contains("'x'"), "{r2}");
        assert!(r.contains("recovery_target_timeline = 'latest'"));
        assert!(
            r.contains("host=10.0.0.2 port=5432 user=replicator application_name=Node-1"),
            "{r}"
        );
        // The password never appears: libpq reads it from the passfile.
        assert!(!r.contains("s3") && !r.contains("password"), "{r}");
        assert!(r.contains("passfile=/d.pgpass"), "{r}");
    }

    #[test]
    fn tls_settings_of_the_credentials_go_into_the_connection_string() {
        let creds = crate::config::Credentials {
            username: "rep".into(),
            password: Some("secret".into()),
            sslmode: Some("verify-full".into()),
            sslrootcert: Some("/etc/pki/ca dir/ca.pem".into()),
            ..Default::default()
        };
        let up =
            Upstream::from_conn_url("postgres://10.0.0.2:5432/postgres", &creds, "n1").unwrap();
        let c = up.conninfo(None, Path::new("/p"));
        assert!(
            c.ends_with(" passfile=/p sslmode=verify-full sslrootcert='/etc/pki/ca dir/ca.pem'"),
            "{c}"
        );
        assert!(!c.contains("secret"), "{c}");
        let mut cfg = crate::config::PostgresqlConfig {
            data_dir: "/d".into(),
            ..Default::default()
        };
        assert_eq!(passfile_of(&cfg), PathBuf::from("/d.pgpass"));
        cfg.pgpass = Some("/run/pg/pgpass".into());
        assert_eq!(passfile_of(&cfg), PathBuf::from("/run/pg/pgpass"));
    }

    #[test]
    fn pgpass_lines_escape_colons_and_backslashes() {
        assert_eq!(pgpass_line("rep", "a:b\\c"), "*:*:*:rep:a\\:b\\\\c\n");
        assert_eq!(
            passfile_path(Path::new("/var/lib/pg/data")),
            PathBuf::from("/var/lib/pg/data.pgpass")
        );
    }

    #[test]
    fn upstream_from_conn_url() {
        let creds = Credentials {
            username: "rep".into(),
            ..Default::default()
        };
        let u =
            Upstream::from_conn_url("postgres://127.0.0.1:5433/postgres", &creds, "n1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str()),
            ("127.0.0.1", 5433, "rep")
        );
        assert!(
            u.conninfo(Some("postgres"), Path::new("/x"))
                .ends_with("passfile=/x dbname=postgres")
        );
        assert!(Upstream::from_conn_url("garbage", &creds, "n1").is_none());
    }

    /// The cluster's settings come before the member's own (which win)
    /// and leasedog's; what the key cannot set is left out and named.
    #[test]
    fn cluster_settings_are_included_before_the_members_own() {
        let text = managed_conf(&cfg(), "n1", None, None);
        let include = text.find(CLUSTER_INCLUDE_LINE).expect("include");
        assert!(include < text.find("work_mem = '4MB'").unwrap(), "{text}");
        assert!(include < text.find("listen_addresses").unwrap(), "{text}");
        let params: BTreeMap<String, String> = [
            ("work_mem", "8MB"),
            ("port", "1"),
            ("bad name", "x"),
            ("x", "a\nb"),
            ("synchronous_standby_names", "*"),
            ("search_path", "it's"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let (text, skipped) = cluster_conf(&params, true);
        assert!(text.contains("work_mem = '8MB'\n"), "{text}");
        assert!(text.contains("search_path = 'it''s'\n"), "{text}");
        assert!(!text.contains("port"), "{text}");
        assert!(!text.contains("synchronous_standby_names"), "{text}");
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        let (text, _) = cluster_conf(&params, false);
        assert!(text.contains("synchronous_standby_names = '*'"), "{text}");
    }

    /// A replica's raised settings: one section at the end, replaced
    /// whole, gone when nothing is raised.
    #[test]
    fn raised_settings_end_the_managed_file() {
        use crate::hot_standby::Raised;
        let base = managed_conf(&cfg(), "n1", None, None);
        let r = |name, value| Raised {
            name,
            value,
            cluster: "1".into(),
        };
        let once = with_raised(&base, &[r("max_connections", 120)]);
        assert!(once.starts_with(&base), "{once}");
        assert!(
            once.ends_with(&format!("{RAISED_MARK}\nmax_connections = '120'\n")),
            "{once}"
        );
        let twice = with_raised(
            &once,
            &[r("max_connections", 130), r("max_worker_processes", 16)],
        );
        assert_eq!(twice.matches(RAISED_MARK).count(), 1, "{twice}");
        assert!(!twice.contains("'120'"), "{twice}");
        assert!(twice.ends_with("max_connections = '130'\nmax_worker_processes = '16'\n"));
        assert_eq!(with_raised(&twice, &[]), base);
        assert_eq!(with_raised(&base, &[]), base);
    }

    #[test]
    fn include_line_is_added_once() {
        let once = with_include("a = 1").unwrap();
        assert!(once.ends_with("include_if_exists = 'leasedog.conf'\n"));
        assert_eq!(with_include(&once), None);
    }

    #[test]
    fn listen_split() {
        assert_eq!(
            split_listen("127.0.0.1,10.0.0.1:5433"),
            ("127.0.0.1,10.0.0.1".into(), 5433)
        );
    }
}
