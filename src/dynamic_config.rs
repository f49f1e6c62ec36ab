//! The cluster-wide configuration (the `config` key) as operators edit it:
//! `show-config` and `edit-config`. Pure: the YAML text, the edits
//! (`--set`, `--pg`, `--apply`), the checks that refuse a bad value before
//! anything is written, and the unified diff shown before asking. The CLI
//! reads the key, calls these, and writes by compare-and-swap.
//!
//! What the agents apply from the key today: `pause` and
//! `postgresql.parameters` (written to `leasedog-cluster.conf`, reloaded,
//! `pending_restart` published). The timing and synchronous settings are
//! written at bootstrap for `patronictl show-config` and read from each
//! member's file: changing them here is refused, with the way to do it.

use serde_json::{Map, Value};

/// Keys the agents read from their own file in this version: a change in
/// the `config` key would mislead (nothing would apply it).
pub const FROM_THE_FILE: [&str; 9] = [
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "primary_start_timeout",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "maximum_lag_on_syncnode",
];

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
    for k in FROM_THE_FILE {
        if before.get(k) != after.get(k) {
            errors.push(format!(
                "{k}: read from each member's leasedog.yml in this version, not from the config key: change it there and restart the agents one at a time (replicas first)"
            ));
        }
    }
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
    match after.get("postgresql") {
        None => {}
        Some(Value::Object(pg)) => {
            for b in ["use_pg_rewind", "use_slots"] {
                if let Some(x) = pg.get(b)
                    && !x.is_boolean()
                {
                    errors.push(format!("postgresql.{b}: expected true or false, got {x}"));
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
    match value {
        Value::String(s) if s.chars().any(|c| c.is_control()) => {
            Some("the value holds a control character (a line break?)".into())
        }
        Value::String(_) | Value::Number(_) | Value::Bool(_) => None,
        other => Some(format!("expected a single value, got {other}")),
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
        let bad = json!({"ttl": 10, "pause": "yes", "slots": {"Bad": {}, "l": {"type": "logical"}, "e": {"type": "logical", "database": "", "plugin": 7}}, "ignore_slots": [{"nme": "x"}, 3], "postgresql": {"use_slots": 1, "parameters": {"port": 5433, "bad name": 1, "x": "a\nb", "y": [1]}}});
        let e = check(&before, &bad).join("\n");
        for want in [
            "ttl: read from each member's leasedog.yml",
            "pause: expected true or false",
            "postgresql.use_slots: expected true or false",
            "postgresql.parameters.port: set by leasedog",
            "postgresql.parameters.bad name: not a PostgreSQL setting name",
            "postgresql.parameters.x: the value holds a control character",
            "postgresql.parameters.y: expected a single value",
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
