//! The cluster-wide configuration (the `config` key) as operators edit it
//! (`show-config`, `edit-config`) and as members take it over their own
//! file. Pure: the YAML text, the edits (`--set`, `--pg`, `--apply`), the
//! checks that refuse a bad value before anything is written, the unified
//! diff shown before asking, and [`effective`]: the settings a member runs
//! with, its file's with the key's over them. The CLI reads the key, calls
//! these, and writes by compare-and-swap.
//!
//! What the agents apply from the key: `pause`, `postgresql.parameters`
//! (written to `leasedog-cluster.conf`, reloaded, `pending_restart`
//! published; the hot-standby-critical ones from the key only, see
//! `crate::hot_standby`), and [`KeySettings`]: `maximum_lag_on_failover`,
//! `primary_start_timeout`, `postgresql.use_slots`,
//! `postgresql.use_pg_rewind` and `postgresql.pg_hba`, where the key wins
//! over the member's file once it holds them (Patroni's rule), and the
//! fence's timing (`ttl`, `loop_wait`, `retry_timeout`, taken together;
//! the agent moves its lease and watchdog to them, see `ha::NodeState::
//! fence_ttl_ms`), and the synchronous settings (`synchronous_mode`,
//! `_strict`, `synchronous_node_count`, `maximum_lag_on_syncnode`: the
//! leader's `sync::plan` takes PostgreSQL and the sync key from wherever
//! they are to what the key asks, in its safe order).

use crate::cluster::DynamicConfig;
use crate::config::{Config, PostgresqlConfig, SyncMode};
use crate::ha::HaConfig;
use serde_json::{Map, Value};

/// The key's value as YAML (`{}` when there is none).
pub fn to_yaml(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "{}\n".into(),
        _ => serde_yaml::to_string(v).unwrap_or_else(|_| "{}\n".into()),
    }
}

/// Parses edited YAML into the key's JSON value.
pub fn from_yaml(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let y: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let v = serde_json::to_value(y).map_err(|e| format!("not representable as JSON: {e}"))?;
    if !v.is_object() {
        return Err("expected a mapping of keys (postgresql:, pause:, ...)".into());
    }
    Ok(v)
}

/// Sets a dotted path (`postgresql.parameters.work_mem`); null removes it.
pub fn set_path(v: &mut Value, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let Some(last) = parts.pop() else { return };
    let mut cur = v;
    for p in parts {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(m) = cur.as_object_mut() else { return };
        cur = m
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    if let Some(m) = cur.as_object_mut() {
        if value.is_null() {
            m.remove(last);
        } else {
            m.insert(last.to_string(), value);
        }
    }
}

/// `key=value` as `--set` takes it: the value is read as YAML (numbers,
/// booleans, null to remove).
pub fn parse_assignment(s: &str) -> Result<(String, Value), String> {
    let (k, raw) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    let k = k.trim();
    if k.is_empty() || k.split('.').any(|p| p.is_empty()) {
        return Err(format!("{s:?}: expected a dotted key before '='"));
    }
    let y: serde_yaml::Value = if raw.trim().is_empty() {
        serde_yaml::Value::Null
    } else {
        serde_yaml::from_str(raw).unwrap_or(serde_yaml::Value::String(raw.to_string()))
    };
    let v = serde_json::to_value(y).map_err(|e| format!("{s:?}: {e}"))?;
    Ok((k.to_string(), v))
}

/// Merges `patch` into `v` (Patroni's `--apply`): mappings merge key by
/// key, null removes, anything else replaces.
pub fn merge(v: &mut Value, patch: &Value) {
    match (v.as_object_mut(), patch.as_object()) {
        (Some(m), Some(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    m.remove(k);
                } else if pv.is_object() && m.get(k).is_some_and(|x| x.is_object()) {
                    if let Some(x) = m.get_mut(k) {
                        merge(x, pv);
                    }
                } else {
                    m.insert(k.clone(), pv.clone());
                }
            }
        }
        _ => *v = patch.clone(),
    }
}

/// Every problem with an edited value, each naming its key; empty when it
/// can be written.
pub fn check(before: &Value, after: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    if let Some(p) = after.get("pause")
        && !p.is_boolean()
    {
        errors.push(format!("pause: expected true or false, got {p}"));
    }
    match after.get("slots") {
        None => {}
        Some(Value::Object(slots)) => {
            for (name, def) in slots {
                if !crate::cluster::valid_slot_name(name) {
                    errors.push(format!(
                        "slots.{name}: not a slot name (lower-case letters, digits and _, at most 63)"
                    ));
                    continue;
                }
                match def
                    .get("type")
                    .and_then(|t| t.as_str())
                    .unwrap_or("physical")
                {
                    "physical" => {}
                    "logical" => {
                        // The same rule as the leader's
                        // (`DynamicConfig::permanent_logical_slots`).
                        for k in ["database", "plugin"] {
                            if crate::cluster::logical_slot_field(def, k).is_none() {
                                let got = def.get(k).map_or("nothing".into(), |v| v.to_string());
                                errors.push(format!(
                                    "slots.{name}.{k}: a logical slot needs it (a non-empty text), got {got}"
                                ));
                            }
                        }
                    }
                    other => errors.push(format!(
                        "slots.{name}.type: expected physical or logical, got {other}"
                    )),
                }
            }
        }
        Some(x) => errors.push(format!(
            "slots: expected a mapping of name: {{type: ...}}, got {x}"
        )),
    }
    match after.get("ignore_slots") {
        None => {}
        Some(Value::Array(list)) => {
            for (i, m) in list.iter().enumerate() {
                match m.as_object() {
                    Some(o) if !o.is_empty() => {
                        for (k, v) in o {
                            if !["name", "type", "database", "plugin"].contains(&k.as_str()) {
                                errors.push(format!(
                                    "ignore_slots[{i}].{k}: expected name, type, database or plugin"
                                ));
                            } else if !v.is_string() {
                                errors.push(format!("ignore_slots[{i}].{k}: expected text, got {v}"));
                            }
                        }
                    }
                    _ => errors.push(format!(
                        "ignore_slots[{i}]: expected a mapping of name/type/database/plugin, got {m}"
                    )),
                }
            }
        }
        Some(x) => errors.push(format!("ignore_slots: expected a list, got {x}")),
    }
    for (k, parse) in TOP_LEVEL {
        if let Some(x) = after.get(k)
            && let Err(e) = parse(x)
        {
            errors.push(e);
        }
    }
    if TIMING.iter().any(|k| before.get(k) != after.get(k)) {
        // The values the members would run with: the key's, or for one it
        // lacks, the default (each member's file, which this does not see).
        let d = Config::default();
        let mut t = [d.ttl, d.loop_wait, d.retry_timeout];
        let mut parsed = true;
        for (k, slot) in TIMING.iter().zip(t.iter_mut()) {
            match after.get(k).map(|x| parse_seconds(k, x)) {
                Some(Ok(x)) => *slot = x,
                Some(Err(e)) => {
                    errors.push(e);
                    parsed = false;
                }
                None => {}
            }
        }
        if parsed {
            let mut c = d;
            (c.ttl, c.loop_wait, c.retry_timeout) = (t[0], t[1], t[2]);
            c.watchdog.mode = crate::config::WatchdogMode::Off;
            errors.extend(
                crate::config::validate(&c)
                    .into_iter()
                    .filter(|e| TIMING.contains(&e.key.as_str()))
                    .map(|e| format!("{}: {}", e.key, e.message)),
            );
        }
    }
    match after.get("postgresql") {
        None => {}
        Some(Value::Object(pg)) => {
            for (k, parse) in IN_POSTGRESQL {
                if let Some(x) = pg.get(k)
                    && let Err(e) = parse(x)
                {
                    errors.push(e);
                }
            }
            match pg.get("parameters") {
                None => {}
                Some(Value::Object(params)) => {
                    for (name, value) in params {
                        if let Some(e) = check_parameter(name, value) {
                            errors.push(format!("postgresql.parameters.{name}: {e}"));
                        }
                    }
                }
                Some(x) => errors.push(format!(
                    "postgresql.parameters: expected a mapping of setting: value, got {x}"
                )),
            }
        }
        Some(x) => errors.push(format!("postgresql: expected a mapping, got {x}")),
    }
    errors
}

fn check_parameter(name: &str, value: &Value) -> Option<String> {
    if !crate::postgres::conf::valid_setting_name(name) {
        return Some("not a PostgreSQL setting name (letters, digits, _ and .)".into());
    }
    if crate::postgres::conf::OWN_SETTINGS.contains(&name) {
        return Some(
            "set by leasedog on each member (postgresql.listen, the leader it streams from): not a cluster-wide setting"
                .into(),
        );
    }
    let text = match value {
        Value::String(s) if s.chars().any(|c| c.is_control()) => {
            return Some("the value holds a control character (a line break?)".into());
        }
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
        other => return Some(format!("expected a single value, got {other}")),
    };
    // The hot-standby-critical settings: Patroni's bounds (a member would
    // refuse the value and use the default).
    crate::hot_standby::check(name, &text)
}

/// A value of the key as an error quotes it: JSON, cut when long.
fn shown(v: &Value) -> String {
    let t = v.to_string();
    if t.chars().count() <= 80 {
        t
    } else {
        crate::config::excerpt(&t)
    }
}

/// `maximum_lag_on_failover`: bytes, as `check-config` accepts them.
fn parse_lag(v: &Value) -> Result<u64, String> {
    let r = crate::config::MAX_LAG_RANGE;
    v.as_u64().filter(|x| r.contains(x)).ok_or_else(|| {
        format!(
            "maximum_lag_on_failover: expected a whole number of bytes in {}..={}, got {}",
            r.start(),
            r.end(),
            shown(v)
        )
    })
}

/// `primary_start_timeout`: seconds, as `check-config` accepts them.
/// The fence's timing, taken from the key together: a member runs with
/// all three from the key or, when the three with its own
/// `watchdog.safety_margin` break a rule of `check-config`, keeps the ones
/// in force.
const TIMING: [&str; 3] = ["ttl", "loop_wait", "retry_timeout"];

fn parse_seconds(key: &str, v: &Value) -> Result<u64, String> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|t| t.trim().parse().ok()))
        .ok_or_else(|| {
            format!(
                "{key}: expected a whole number of seconds, got {}",
                shown(v)
            )
        })
}

fn parse_start_timeout(v: &Value) -> Result<u64, String> {
    let max = crate::config::PRIMARY_START_TIMEOUT_MAX;
    v.as_u64().filter(|x| *x <= max).ok_or_else(|| {
        format!(
            "primary_start_timeout: expected a whole number of seconds in 0..={max}, got {}",
            shown(v)
        )
    })
}

fn parse_use_slots(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| {
        format!(
            "postgresql.use_slots: expected true or false, got {}",
            shown(v)
        )
    })
}

fn parse_use_pg_rewind(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| {
        format!(
            "postgresql.use_pg_rewind: expected true or false, got {}",
            shown(v)
        )
    })
}

/// `postgresql.pg_hba`: a non-empty list of lines, none with a control
/// character (a line break would smuggle in a rule of its own; a tab, a
/// field separator in pg_hba.conf, is fine). An empty list would leave a
/// pg_hba.conf that refuses every connection, the agent's own too.
fn parse_pg_hba(v: &Value) -> Result<Vec<String>, String> {
    let Some(list) = v.as_array() else {
        return Err(format!(
            "postgresql.pg_hba: expected a list of pg_hba.conf lines, got {}",
            shown(v)
        ));
    };
    if list.is_empty() {
        return Err(
            "postgresql.pg_hba: expected at least one line, got [] (it would refuse every connection; remove the key to keep each member's own lines)"
                .into(),
        );
    }
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in list.iter().enumerate() {
        match line.as_str() {
            Some(l) if l.chars().any(|c| c.is_control() && c != '\t') => errors.push(format!(
                "postgresql.pg_hba[{i}]: the line holds a control character (a line break?), got {}",
                shown(line)
            )),
            Some(l) => lines.push(l.to_string()),
            None => errors.push(format!(
                "postgresql.pg_hba[{i}]: expected a line of text, got {}",
                shown(line)
            )),
        }
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors.join("; "))
    }
}

type Check = fn(&Value) -> Result<(), String>;

/// The top-level keys a member takes from the key, with their checks.
const TOP_LEVEL: [(&str, Check); 6] = [
    ("maximum_lag_on_failover", |v| parse_lag(v).map(drop)),
    ("primary_start_timeout", |v| {
        parse_start_timeout(v).map(drop)
    }),
    ("synchronous_mode", |v| parse_sync_mode(v).map(drop)),
    ("synchronous_mode_strict", |v| {
        parse_sync_strict(v).map(drop)
    }),
    ("synchronous_node_count", |v| {
        parse_sync_node_count(v).map(drop)
    }),
    ("maximum_lag_on_syncnode", |v| {
        parse_sync_max_lag(v).map(drop)
    }),
];

/// `synchronous_mode`: true, false, on, off or quorum (Patroni's forms).
fn parse_sync_mode(v: &Value) -> Result<SyncMode, String> {
    match v {
        Value::Bool(true) => Ok(SyncMode::On),
        Value::Bool(false) => Ok(SyncMode::Off),
        Value::String(t) => match t.trim().to_ascii_lowercase().as_str() {
            "on" | "true" => Ok(SyncMode::On),
            "off" | "false" => Ok(SyncMode::Off),
            "quorum" => Ok(SyncMode::Quorum),
            _ => Err(format!(
                "synchronous_mode: expected true, false or quorum, got {}",
                shown(v)
            )),
        },
        _ => Err(format!(
            "synchronous_mode: expected true, false or quorum, got {}",
            shown(v)
        )),
    }
}

fn parse_sync_strict(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| {
        format!(
            "synchronous_mode_strict: expected true or false, got {}",
            shown(v)
        )
    })
}

/// `synchronous_node_count`: 1..=64, as `check-config` accepts it.
fn parse_sync_node_count(v: &Value) -> Result<u64, String> {
    v.as_u64().filter(|n| (1..=64).contains(n)).ok_or_else(|| {
        format!(
            "synchronous_node_count: expected a number of standbys in 1..=64, got {}",
            shown(v)
        )
    })
}

/// `maximum_lag_on_syncnode`: -1 (no limit) or bytes above 0.
fn parse_sync_max_lag(v: &Value) -> Result<i64, String> {
    v.as_i64().filter(|n| *n == -1 || *n > 0).ok_or_else(|| {
        format!(
            "maximum_lag_on_syncnode: expected -1 (no limit) or a number of bytes above 0, got {}",
            shown(v)
        )
    })
}

/// The keys under `postgresql` a member takes from the key (beside
/// `parameters`), with their checks.
const IN_POSTGRESQL: [(&str, Check); 3] = [
    ("use_slots", |v| parse_use_slots(v).map(drop)),
    ("use_pg_rewind", |v| parse_use_pg_rewind(v).map(drop)),
    ("pg_hba", |v| parse_pg_hba(v).map(drop)),
];

/// The settings of the `config` key a member takes over its own file
/// (Patroni's rule for dynamic keys: once the key holds one, it wins).
#[derive(Debug, Clone, PartialEq)]
pub struct KeySettings {
    /// Bytes.
    pub maximum_lag_on_failover: u64,
    /// Seconds.
    pub primary_start_timeout: u64,
    pub use_slots: bool,
    /// Off: a former primary starts as a replica without pg_rewind, and a
    /// replica left behind on an older timeline waits for `reinit`.
    pub use_pg_rewind: bool,
    /// The lines of pg_hba.conf; empty: leasedog leaves the file alone.
    pub pg_hba: Vec<String>,
    /// `ttl`, `loop_wait`, `retry_timeout`, seconds.
    pub timing: [u64; 3],
    pub synchronous_mode: SyncMode,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: u64,
    /// -1: no limit.
    pub maximum_lag_on_syncnode: i64,
}

impl KeySettings {
    /// The member's file alone. `use_pg_rewind` is not a setting of the
    /// file: leasedog rewinds unless the key says otherwise.
    pub fn of_file(file: &Config) -> KeySettings {
        KeySettings {
            maximum_lag_on_failover: file.maximum_lag_on_failover,
            primary_start_timeout: file.primary_start_timeout,
            use_slots: file.postgresql.use_slots,
            use_pg_rewind: true,
            pg_hba: file.postgresql.pg_hba.clone(),
            timing: [file.ttl, file.loop_wait, file.retry_timeout],
            synchronous_mode: file.synchronous_mode,
            synchronous_mode_strict: file.synchronous_mode_strict,
            synchronous_node_count: file.synchronous_node_count,
            maximum_lag_on_syncnode: file.maximum_lag_on_syncnode,
        }
    }

    /// The decision core's settings: the file's, with these over them.
    pub fn ha_config(&self, file: &Config) -> HaConfig {
        let mut ha = HaConfig::from_config(file);
        ha.maximum_lag_on_failover = self.maximum_lag_on_failover;
        ha.primary_start_timeout_ms = self.primary_start_timeout * 1000;
        ha.use_slots = self.use_slots;
        ha.use_pg_rewind = self.use_pg_rewind;
        let [ttl, loop_wait, retry_timeout] = self.timing;
        ha.ttl_ms = ttl * 1000;
        ha.loop_wait_ms = loop_wait * 1000;
        ha.retry_timeout_ms = retry_timeout * 1000;
        ha.sync.mode = self.synchronous_mode;
        ha.sync.strict = self.synchronous_mode_strict;
        ha.sync.node_count = self.synchronous_node_count as usize;
        ha.sync.max_lag = u64::try_from(self.maximum_lag_on_syncnode).ok();
        ha
    }

    /// What differs in `new`, for the log: `name old -> new` each.
    pub fn changes(&self, new: &KeySettings) -> Vec<String> {
        let mut out = Vec::new();
        let mut note = |name: &str, old: String, new: String| {
            if old != new {
                out.push(format!("{name} {old} -> {new}"));
            }
        };
        note(
            "maximum_lag_on_failover",
            self.maximum_lag_on_failover.to_string(),
            new.maximum_lag_on_failover.to_string(),
        );
        note(
            "primary_start_timeout",
            self.primary_start_timeout.to_string(),
            new.primary_start_timeout.to_string(),
        );
        note(
            "postgresql.use_slots",
            self.use_slots.to_string(),
            new.use_slots.to_string(),
        );
        note(
            "postgresql.use_pg_rewind",
            self.use_pg_rewind.to_string(),
            new.use_pg_rewind.to_string(),
        );
        for (i, k) in TIMING.iter().enumerate() {
            note(k, self.timing[i].to_string(), new.timing[i].to_string());
        }
        note(
            "synchronous_mode",
            format!("{:?}", self.synchronous_mode).to_lowercase(),
            format!("{:?}", new.synchronous_mode).to_lowercase(),
        );
        note(
            "synchronous_mode_strict",
            self.synchronous_mode_strict.to_string(),
            new.synchronous_mode_strict.to_string(),
        );
        note(
            "synchronous_node_count",
            self.synchronous_node_count.to_string(),
            new.synchronous_node_count.to_string(),
        );
        note(
            "maximum_lag_on_syncnode",
            self.maximum_lag_on_syncnode.to_string(),
            new.maximum_lag_on_syncnode.to_string(),
        );
        if self.pg_hba != new.pg_hba {
            out.push(format!(
                "postgresql.pg_hba ({} lines -> {} lines)",
                self.pg_hba.len(),
                new.pg_hba.len()
            ));
        }
        out
    }

    /// The local instance's settings: the file's, with these over them.
    pub fn postgresql(&self, file: &Config) -> PostgresqlConfig {
        PostgresqlConfig {
            use_slots: self.use_slots,
            pg_hba: self.pg_hba.clone(),
            ..file.postgresql.clone()
        }
    }
}

/// Takes one setting from the key: absent, the file's stays; refused, the
/// value in effect before stays and the refusal is noted.
fn take<T: Clone + std::fmt::Debug>(
    raw: Option<&Value>,
    parse: fn(&Value) -> Result<T, String>,
    slot: &mut T,
    previous: &T,
    refused: &mut Vec<String>,
) {
    if let Some(v) = raw {
        match parse(v) {
            Ok(x) => *slot = x,
            Err(e) => {
                refused.push(format!("{e}: keeping {previous:?}"));
                *slot = previous.clone();
            }
        }
    }
}

/// The settings a member runs with: its file's (`file`), with those the
/// `config` key holds over them. A value the key holds that fails the
/// checks of `edit-config` and `check-config` is refused: the value in
/// effect before (`previous`) stays, and the refusal, naming the key and
/// the value, is in the second list. Called every cycle and after a
/// reload of the file, so the key's values never give way to the file's.
pub fn effective(
    file: &Config,
    key: &DynamicConfig,
    previous: &KeySettings,
) -> (KeySettings, Vec<String>) {
    let mut out = KeySettings::of_file(file);
    let mut refused = Vec::new();
    let top = |k: &str| key.other.get(k);
    take(
        top("maximum_lag_on_failover"),
        parse_lag,
        &mut out.maximum_lag_on_failover,
        &previous.maximum_lag_on_failover,
        &mut refused,
    );
    take(
        top("primary_start_timeout"),
        parse_start_timeout,
        &mut out.primary_start_timeout,
        &previous.primary_start_timeout,
        &mut refused,
    );
    take_timing(file, key, previous, &mut out, &mut refused);
    take(
        top("synchronous_mode"),
        parse_sync_mode,
        &mut out.synchronous_mode,
        &previous.synchronous_mode,
        &mut refused,
    );
    take(
        top("synchronous_mode_strict"),
        parse_sync_strict,
        &mut out.synchronous_mode_strict,
        &previous.synchronous_mode_strict,
        &mut refused,
    );
    take(
        top("synchronous_node_count"),
        parse_sync_node_count,
        &mut out.synchronous_node_count,
        &previous.synchronous_node_count,
        &mut refused,
    );
    take(
        top("maximum_lag_on_syncnode"),
        parse_sync_max_lag,
        &mut out.maximum_lag_on_syncnode,
        &previous.maximum_lag_on_syncnode,
        &mut refused,
    );
    let pg = match top("postgresql") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            refused.push(format!(
                "postgresql: expected a mapping, got {}: keeping use_slots {}, use_pg_rewind {}, pg_hba as before",
                shown(other),
                previous.use_slots,
                previous.use_pg_rewind
            ));
            out.use_slots = previous.use_slots;
            out.use_pg_rewind = previous.use_pg_rewind;
            out.pg_hba = previous.pg_hba.clone();
            return (out, refused);
        }
    };
    take(
        pg.get("use_slots"),
        parse_use_slots,
        &mut out.use_slots,
        &previous.use_slots,
        &mut refused,
    );
    take(
        pg.get("use_pg_rewind"),
        parse_use_pg_rewind,
        &mut out.use_pg_rewind,
        &previous.use_pg_rewind,
        &mut refused,
    );
    take(
        pg.get("pg_hba"),
        parse_pg_hba,
        &mut out.pg_hba,
        &previous.pg_hba,
        &mut refused,
    );
    (out, refused)
}

/// `ttl`, `loop_wait`, `retry_timeout` from the key, as one: refused
/// together when one does not parse or the three break a rule of
/// `check-config` with this member's file (its `watchdog.safety_margin`:
/// the watchdog timeout and the feed slack).
fn take_timing(
    file: &Config,
    key: &DynamicConfig,
    previous: &KeySettings,
    out: &mut KeySettings,
    refused: &mut Vec<String>,
) {
    if TIMING.iter().all(|k| !key.other.contains_key(*k)) {
        return;
    }
    let mut t = out.timing;
    let mut errors = Vec::new();
    for (k, slot) in TIMING.iter().zip(t.iter_mut()) {
        match key.other.get(*k).map(|v| parse_seconds(k, v)) {
            Some(Ok(x)) => *slot = x,
            Some(Err(e)) => errors.push(e),
            None => {}
        }
    }
    if errors.is_empty() && t != out.timing {
        let mut c = file.clone();
        (c.ttl, c.loop_wait, c.retry_timeout) = (t[0], t[1], t[2]);
        errors.extend(
            crate::config::validate(&c)
                .into_iter()
                .filter(|e| TIMING.contains(&e.key.as_str()) || e.key == "watchdog.safety_margin")
                .map(|e| format!("{}: {} (with this member's file)", e.key, e.message)),
        );
    }
    if errors.is_empty() {
        out.timing = t;
    } else {
        let [ttl, loop_wait, retry_timeout] = previous.timing;
        refused.push(format!(
            "{}: keeping ttl {ttl}, loop_wait {loop_wait}, retry_timeout {retry_timeout}",
            errors.join("; ")
        ));
        out.timing = previous.timing;
    }
}

/// A unified diff of two texts (whole-file hunk, as `patronictl` shows).
pub fn unified_diff(before: &str, after: &str) -> String {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // Longest common subsequence, table from the ends.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = format!(
        "--- before\n+++ after\n@@ -1,{} +1,{} @@\n",
        a.len(),
        b.len()
    );
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!(" {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("-{}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+{}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_merge_and_remove() {
        let mut v = json!({"ttl": 30, "postgresql": {"parameters": {"work_mem": "4MB"}}});
        let (k, x) = parse_assignment("postgresql.parameters.max_connections=200").unwrap();
        set_path(&mut v, &k, x);
        let (k, x) = parse_assignment("postgresql.parameters.work_mem=null").unwrap();
        set_path(&mut v, &k, x);
        assert_eq!(
            v,
            json!({"ttl": 30, "postgresql": {"parameters": {"max_connections": 200}}})
        );
        merge(
            &mut v,
            &json!({"pause": true, "postgresql": {"parameters": {"max_connections": null, "wal_level": "logical"}}}),
        );
        assert_eq!(
            v,
            json!({"ttl": 30, "pause": true, "postgresql": {"parameters": {"wal_level": "logical"}}})
        );
        assert!(parse_assignment("novalue").is_err());
        assert!(parse_assignment("a..b=1").is_err());
        // A value YAML cannot read is taken as text.
        assert_eq!(parse_assignment("x=a: b: c").unwrap().1, json!("a: b: c"));
    }

    #[test]
    fn checks_name_the_key() {
        let before = json!({"ttl": 30, "postgresql": {"parameters": {}}});
        let ok = json!({"ttl": 30, "pause": false, "slots": {"dr": {"type": "physical"}, "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"}}, "ignore_slots": [{"name": "barman"}, {"type": "logical", "plugin": "spock_output"}], "postgresql": {"parameters": {"work_mem": "8MB", "max_connections": 200, "fsync": true}}});
        assert_eq!(check(&before, &ok), Vec::<String>::new());
        let bad = json!({"ttl": 10, "pause": "yes", "slots": {"Bad": {}, "l": {"type": "logical"}, "e": {"type": "logical", "database": "", "plugin": 7}}, "ignore_slots": [{"nme": "x"}, 3], "postgresql": {"use_slots": 1, "parameters": {"port": 5433, "bad name": 1, "x": "a\nb", "y": [1], "max_connections": 10, "hot_standby": false, "wal_level": "minimal"}}});
        let e = check(&before, &bad).join("\n");
        for want in [
            "ttl: loop_wait + 2*retry_timeout <= ttl is broken: 10 + 2*10 = 30 > ttl 10",
            "pause: expected true or false",
            "postgresql.use_slots: expected true or false",
            "postgresql.parameters.port: set by leasedog",
            "postgresql.parameters.bad name: not a PostgreSQL setting name",
            "postgresql.parameters.x: the value holds a control character",
            "postgresql.parameters.y: expected a single value",
            "postgresql.parameters.max_connections: expected a whole number of at least 25, got \"10\"",
            "postgresql.parameters.hot_standby: expected on (a replica needs it), got \"off\"",
            "postgresql.parameters.wal_level: expected replica or logical",
            "slots.Bad: not a slot name",
            "slots.l.database: a logical slot needs it (a non-empty text), got nothing",
            "slots.e.database: a logical slot needs it (a non-empty text), got \"\"",
            "slots.e.plugin: a logical slot needs it (a non-empty text), got 7",
            "ignore_slots[0].nme: expected name, type, database or plugin",
            "ignore_slots[1]: expected a mapping",
        ] {
            assert!(e.contains(want), "{want} missing in:\n{e}");
        }
        assert!(from_yaml("- a\n- b").is_err());
        assert!(from_yaml("a: [").is_err());
        assert_eq!(from_yaml("").unwrap(), json!({}));
    }

    /// The keys members take from the key: edit-config lets them change,
    /// with the checks of check-config (the fence's timing as a whole).
    #[test]
    fn key_settings_may_change_with_their_checks() {
        let before =
            json!({"ttl": 30, "maximum_lag_on_failover": 1048576, "primary_start_timeout": 300});
        let ok = json!({"ttl": 30, "maximum_lag_on_failover": 0, "primary_start_timeout": 86400,
            "postgresql": {"use_slots": false, "use_pg_rewind": false,
                "pg_hba": ["local all all trust", "host\tall all 10.0.0.0/8 scram-sha-256"]}});
        assert_eq!(check(&before, &ok), Vec::<String>::new());
        let bad = json!({"ttl": 30, "loop_wait": "x", "retry_timeout": 20, "maximum_lag_on_failover": -1, "primary_start_timeout": 86401,
            "postgresql": {"use_pg_rewind": "yes", "pg_hba": ["local all all trust", "host all all 0.0.0.0/0 trust\nlocal all all trust", 7]}});
        let e = check(&before, &bad).join("\n");
        for want in [
            "loop_wait: expected a whole number of seconds, got \"x\"",
            "maximum_lag_on_failover: expected a whole number of bytes in 0..=4611686018427387904, got -1",
            "primary_start_timeout: expected a whole number of seconds in 0..=86400, got 86401",
            "postgresql.use_pg_rewind: expected true or false, got \"yes\"",
            "postgresql.pg_hba[1]: the line holds a control character",
            "postgresql.pg_hba[2]: expected a line of text, got 7",
        ] {
            assert!(e.contains(want), "{want} missing in:\n{e}");
        }
        let e = check(&before, &json!({"postgresql": {"pg_hba": []}})).join("\n");
        assert!(
            e.contains("postgresql.pg_hba: expected at least one line"),
            "{e}"
        );
        let e = check(
            &before,
            &json!({"postgresql": {"pg_hba": "local all all trust"}}),
        )
        .join("\n");
        assert!(e.contains("postgresql.pg_hba: expected a list"), "{e}");
    }

    fn key(v: Value) -> DynamicConfig {
        serde_json::from_value(v).unwrap()
    }

    /// The key wins over the file for the settings it holds; the file
    /// counts for the rest; a refused value leaves the one in effect.
    #[test]
    fn effective_settings_take_the_key_over_the_file() {
        let mut file = Config {
            maximum_lag_on_failover: 1000,
            primary_start_timeout: 60,
            ..Default::default()
        };
        file.postgresql.pg_hba = vec!["local all all trust".into()];
        let of_file = KeySettings::of_file(&file);
        assert!(of_file.use_slots && of_file.use_pg_rewind);

        // No key (or one without these): the file's.
        let (s, refused) = effective(&file, &key(json!({"ttl": 30})), &of_file);
        assert_eq!((s.clone(), refused), (of_file.clone(), vec![]));

        let k = key(json!({"maximum_lag_on_failover": 7777, "postgresql": {
            "use_slots": false, "use_pg_rewind": false,
            "pg_hba": ["local all all peer", "host all all 127.0.0.1/32 trust"]}}));
        let (s, refused) = effective(&file, &k, &of_file);
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(s.maximum_lag_on_failover, 7777);
        assert_eq!(
            s.primary_start_timeout, 60,
            "absent from the key: the file's"
        );
        assert!(!s.use_slots && !s.use_pg_rewind);
        assert_eq!(
            s.pg_hba,
            vec!["local all all peer", "host all all 127.0.0.1/32 trust"]
        );
        assert_eq!(
            of_file.changes(&s),
            vec![
                "maximum_lag_on_failover 1000 -> 7777",
                "postgresql.use_slots true -> false",
                "postgresql.use_pg_rewind true -> false",
                "postgresql.pg_hba (1 lines -> 2 lines)",
            ]
        );
        let ha = s.ha_config(&file);
        assert_eq!(ha.maximum_lag_on_failover, 7777);
        assert_eq!(ha.primary_start_timeout_ms, 60_000);
        assert!(!ha.use_slots && !ha.use_pg_rewind);
        assert_eq!(ha.ttl_ms, file.ttl * 1000);
        let pg = s.postgresql(&file);
        assert_eq!((pg.pg_hba.len(), pg.use_slots), (2, false));

        // A reloaded file: the key's values stay over it, the file's new
        // value counts where the key says nothing.
        let mut reloaded = file.clone();
        reloaded.maximum_lag_on_failover = 5;
        reloaded.primary_start_timeout = 30;
        let (again, _) = effective(&reloaded, &k, &s);
        assert_eq!(again.maximum_lag_on_failover, 7777);
        assert_eq!(again.primary_start_timeout, 30);
        assert_eq!(again.pg_hba, s.pg_hba);

        // Refused: the member keeps what was in effect, and says which key
        // and value it refused.
        let bad = key(
            json!({"maximum_lag_on_failover": "lots", "primary_start_timeout": 90,
            "postgresql": {"use_slots": 1, "pg_hba": ["host all all 0.0.0.0/0 trust\r"]}}),
        );
        let (kept, refused) = effective(&file, &bad, &s);
        assert_eq!(kept.maximum_lag_on_failover, 7777);
        assert_eq!(
            kept.primary_start_timeout, 90,
            "a good value beside bad ones is taken"
        );
        assert!(!kept.use_slots);
        assert_eq!(kept.pg_hba, s.pg_hba);
        let r = refused.join("\n");
        for want in [
            "maximum_lag_on_failover: expected a whole number of bytes in 0..=4611686018427387904, got \"lots\": keeping 7777",
            "postgresql.use_slots: expected true or false, got 1: keeping false",
            "postgresql.pg_hba[0]: the line holds a control character",
        ] {
            assert!(r.contains(want), "{want} missing in:\n{r}");
        }
        let (kept, refused) = effective(&file, &key(json!({"postgresql": "x"})), &s);
        assert_eq!((kept.use_slots, kept.use_pg_rewind), (false, false));
        assert_eq!(kept.pg_hba, s.pg_hba);
        assert!(
            refused[0].starts_with("postgresql: expected a mapping, got \"x\""),
            "{refused:?}"
        );
    }

    #[test]
    fn diff_shows_changed_lines() {
        let d = unified_diff("a: 1\nb: 2\nc: 3\n", "a: 1\nb: 5\nc: 3\nd: 4\n");
        assert!(d.contains("-b: 2\n+b: 5\n"), "{d}");
        assert!(d.contains("+d: 4\n"), "{d}");
        assert!(d.contains(" a: 1\n"), "{d}");
        assert_eq!(
            to_yaml(&json!({"postgresql": {"parameters": {"work_mem": "8MB"}}})),
            "postgresql:\n  parameters:\n    work_mem: 8MB\n"
        );
        assert_eq!(to_yaml(&json!({})), "{}\n");
    }
}
