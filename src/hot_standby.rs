//! The hot-standby-critical settings, pure. A hot standby replays the
//! primary's WAL only if some of its settings are equal to the primary's or
//! not lower (max_connections, max_worker_processes, max_wal_senders,
//! max_prepared_transactions, max_locks_per_transaction), and replication
//! itself needs others (wal_level, hot_standby, wal_log_hints,
//! max_replication_slots, wal_keep_size, track_commit_timestamp). Patroni
//! (its `ConfigHandler.CMDLINE_OPTIONS`) takes them from the cluster's
//! dynamic configuration only, with a default and a lower bound each, and
//! never from a member's own file; leasedog does the same:
//!
//! - [`cluster_parameters`]: the `config` key's `postgresql.parameters` as
//!   `leasedog-cluster.conf` gets them: every critical setting present, the
//!   key's value when it passes its check, else the default (refused,
//!   named).
//! - [`ignored_local`]: what a member's `leasedog.yml` sets of them, named
//!   with the value used instead (`postgres::conf::managed_conf` leaves
//!   them out).
//! - [`raise`]: on a replica, each "not lower than the primary" setting is
//!   raised to the value pg_control records (the primary's, as of the last
//!   replayed checkpoint or parameter change), so a replica starts in the
//!   middle of a rolling change; the member then shows a pending restart.

use std::collections::BTreeMap;
use std::path::Path;

/// How a critical setting's value is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A whole number of at least this.
    Int(i64),
    /// A size of at least this many MB (a bare number is MB).
    SizeMb(i64),
    /// A boolean.
    Bool,
    /// Must be on.
    On,
    /// replica or logical (hot_standby, its older name, reads as replica).
    WalLevel,
}

/// One hot-standby-critical setting.
#[derive(Debug, Clone, Copy)]
pub struct Critical {
    pub name: &'static str,
    /// Patroni's default, used when the key does not hold a good value.
    pub default: &'static str,
    pub rule: Rule,
    /// The label of pg_controldata's line recording the primary's value,
    /// for the settings a replica must not run lower than.
    pub control: Option<&'static str>,
}

/// Patroni 4.1.5's list (less listen_addresses, port and cluster_name,
/// which are each member's own, and wal_keep_segments, which PostgreSQL
/// 13 replaced: see [`cluster_parameters`]).
pub const CRITICAL: [Critical; 11] = [
    Critical {
        name: "wal_level",
        default: "replica",
        rule: Rule::WalLevel,
        control: None,
    },
    Critical {
        name: "hot_standby",
        default: "on",
        rule: Rule::On,
        control: None,
    },
    Critical {
        name: "max_connections",
        default: "100",
        rule: Rule::Int(25),
        control: Some("max_connections setting"),
    },
    Critical {
        name: "max_wal_senders",
        default: "10",
        rule: Rule::Int(3),
        control: Some("max_wal_senders setting"),
    },
    Critical {
        name: "wal_keep_size",
        default: "128MB",
        rule: Rule::SizeMb(16),
        control: None,
    },
    Critical {
        name: "max_prepared_transactions",
        default: "0",
        rule: Rule::Int(0),
        control: Some("max_prepared_xacts setting"),
    },
    Critical {
        name: "max_locks_per_transaction",
        default: "64",
        rule: Rule::Int(32),
        control: Some("max_locks_per_xact setting"),
    },
    Critical {
        name: "track_commit_timestamp",
        default: "off",
        rule: Rule::Bool,
        control: None,
    },
    Critical {
        name: "max_replication_slots",
        default: "10",
        rule: Rule::Int(4),
        control: None,
    },
    Critical {
        name: "max_worker_processes",
        default: "8",
        rule: Rule::Int(2),
        control: Some("max_worker_processes setting"),
    },
    Critical {
        name: "wal_log_hints",
        default: "on",
        rule: Rule::On,
        control: None,
    },
];

/// PostgreSQL 12's name for wal_keep_size, in segments of 16 MB: taken
/// from the key as wal_keep_size when that is absent, never written.
pub const WAL_KEEP_SEGMENTS: &str = "wal_keep_segments";

/// Whether `name` is one of the settings only the `config` key sets.
pub fn is_critical(name: &str) -> bool {
    name == WAL_KEEP_SEGMENTS || CRITICAL.iter().any(|c| c.name == name)
}

fn find(name: &str) -> Option<&'static Critical> {
    CRITICAL.iter().find(|c| c.name == name)
}

/// A whole number as PostgreSQL reads one (surrounding blanks allowed).
fn int(v: &str) -> Option<i64> {
    v.trim().parse().ok()
}

/// A size in MB: a number with an optional unit of PostgreSQL's (B, kB,
/// MB, GB, TB; none: MB), rounded down.
fn size_mb(v: &str) -> Option<i64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: i64 = n.parse().ok()?;
    let per_mb = |x: i64, div: i64| x.checked_div(div);
    match unit.trim() {
        "" | "MB" => Some(n),
        "B" => per_mb(n, 1024 * 1024),
        "kB" => per_mb(n, 1024),
        "GB" => n.checked_mul(1024),
        "TB" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// A boolean as PostgreSQL reads one.
fn boolean(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Some(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Some(false),
        _ => None,
    }
}

/// The value to write for `c`, from the key's text, or what is expected.
fn checked(c: &Critical, v: &str) -> Result<String, String> {
    let ok = match c.rule {
        Rule::Int(min) => int(v).is_some_and(|n| n >= min),
        Rule::SizeMb(min) => size_mb(v).is_some_and(|n| n >= min),
        Rule::Bool => boolean(v).is_some(),
        Rule::On => boolean(v) == Some(true),
        Rule::WalLevel => {
            return match v.trim() {
                "replica" | "hot_standby" => Ok("replica".into()),
                "logical" => Ok("logical".into()),
                _ => Err(expected(c)),
            };
        }
    };
    if ok {
        Ok(v.trim().to_string())
    } else {
        Err(expected(c))
    }
}

/// What a critical setting accepts, as an error says it.
pub fn expected(c: &Critical) -> String {
    match c.rule {
        Rule::Int(min) => format!("a whole number of at least {min}"),
        Rule::SizeMb(min) => {
            format!("a size of at least {min}MB (kB, MB, GB or TB; a number alone is MB)")
        }
        Rule::Bool => "on or off".into(),
        Rule::On => "on (a replica needs it)".into(),
        Rule::WalLevel => "replica or logical (minimal allows no replica)".into(),
    }
}

/// The check `edit-config` makes of a critical setting's value (its text
/// as the key's `postgresql.parameters` gives it): None when it is good
/// or not a critical setting.
pub fn check(name: &str, value: &str) -> Option<String> {
    if name == WAL_KEEP_SEGMENTS {
        return match int(value) {
            Some(n) if n >= 1 => None,
            _ => Some(format!(
                "expected a whole number of at least 1, got {value:?} (PostgreSQL 13 and later: set wal_keep_size instead)"
            )),
        };
    }
    let c = find(name)?;
    checked(c, value)
        .err()
        .map(|e| format!("expected {e}, got {value:?}"))
}

/// The key's `postgresql.parameters` (as text) as `leasedog-cluster.conf`
/// gets them: the other settings unchanged; every critical one present,
/// the key's value when it passes [`check`], else the default; a key's
/// `wal_keep_segments` as `wal_keep_size` (16 MB a segment) unless that is
/// set too. The second list names each value refused and the one used
/// instead (Patroni's rule: a warning, and the default).
pub fn cluster_parameters(
    key: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut out: BTreeMap<String, String> = key
        .iter()
        .filter(|(k, _)| !is_critical(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut refused = Vec::new();
    for c in &CRITICAL {
        let mut raw = key.get(c.name).cloned();
        if c.name == "wal_keep_size"
            && raw.is_none()
            && let Some(segs) = key.get(WAL_KEEP_SEGMENTS)
        {
            match int(segs).filter(|n| *n >= 1).and_then(|n| n.checked_mul(16)) {
                Some(mb) => raw = Some(format!("{mb}MB")),
                None => refused.push(format!(
                    "postgresql.parameters.{WAL_KEEP_SEGMENTS}: expected a whole number of at least 1, got {segs:?}: using wal_keep_size {}",
                    c.default
                )),
            }
        }
        let value = match raw {
            None => c.default.to_string(),
            Some(v) => match checked(c, &v) {
                Ok(x) => x,
                Err(e) => {
                    refused.push(format!(
                        "postgresql.parameters.{}: expected {e}, got {v:?}: using {} (the default)",
                        c.name, c.default
                    ));
                    c.default.to_string()
                }
            },
        };
        out.insert(c.name.to_string(), value);
    }
    (out, refused)
}

/// The critical settings in effect from [`cluster_parameters`]' output
/// (the defaults for those it lacks).
pub fn in_effect(cluster: &BTreeMap<String, String>) -> BTreeMap<&'static str, String> {
    CRITICAL
        .iter()
        .map(|c| {
            let v = cluster
                .get(c.name)
                .and_then(|v| checked(c, v).ok())
                .unwrap_or_else(|| c.default.to_string());
            (c.name, v)
        })
        .collect()
}

/// One warning per critical setting a member's file (`file`) sets in
/// `postgresql.parameters`, naming the file, the setting, its value there
/// and the value used instead (`in_effect`).
pub fn ignored_local(
    file: &Path,
    local: &BTreeMap<String, String>,
    in_effect: &BTreeMap<&'static str, String>,
) -> Vec<String> {
    local
        .iter()
        .filter(|(k, _)| is_critical(k))
        .map(|(k, v)| {
            let (shown, used) = if k == WAL_KEEP_SEGMENTS {
                ("wal_keep_size", in_effect.get("wal_keep_size"))
            } else {
                (k.as_str(), in_effect.get(k.as_str()))
            };
            format!(
                "{}: postgresql.parameters.{k} = {v:?} ignored: a hot standby needs it the same on every member, so only the cluster's config key sets it (leasedog edit-config --pg {shown}=...); using {shown} = {:?}",
                file.display(),
                used.map(String::as_str).unwrap_or("?")
            )
        })
        .collect()
}

/// The values pg_controldata records for the settings a replica must not
/// run lower than (`max_connections setting:` and the like), by setting
/// name. A line missing (or unreadable) is left out.
pub fn parse_control(text: &str) -> BTreeMap<&'static str, i64> {
    let mut out = BTreeMap::new();
    for c in &CRITICAL {
        let Some(label) = c.control else { continue };
        let value = text.lines().find_map(|l| {
            l.strip_prefix(label)
                .and_then(|r| r.strip_prefix(':'))
                .and_then(int)
        });
        if let Some(v) = value {
            out.insert(c.name, v);
        }
    }
    out
}

/// A setting a replica runs higher than the cluster says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raised {
    pub name: &'static str,
    /// pg_control's value, the one used.
    pub value: i64,
    /// The cluster's value.
    pub cluster: String,
}

/// On a replica: each setting pg_control records higher than the value in
/// effect (`in_effect`), raised to pg_control's (Patroni's rule: a hot
/// standby with a lower value than the primary's does not start).
pub fn raise(
    in_effect: &BTreeMap<&'static str, String>,
    control: &BTreeMap<&'static str, i64>,
) -> Vec<Raised> {
    CRITICAL
        .iter()
        .filter_map(|c| {
            let recorded = *control.get(c.name)?;
            let cluster = in_effect
                .get(c.name)
                .cloned()
                .unwrap_or_else(|| c.default.to_string());
            (int(&cluster).is_none_or(|v| recorded > v)).then_some(Raised {
                name: c.name,
                value: recorded,
                cluster,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_key_sets_every_critical_setting_with_defaults_and_checks() {
        let (out, refused) = cluster_parameters(&map(&[
            ("work_mem", "8MB"),
            ("max_connections", "200"),
            ("wal_level", "hot_standby"),
            ("track_commit_timestamp", "on"),
        ]));
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(out["work_mem"], "8MB");
        assert_eq!(out["max_connections"], "200");
        assert_eq!(out["wal_level"], "replica", "the older name");
        assert_eq!(out["track_commit_timestamp"], "on");
        for c in &CRITICAL {
            assert!(out.contains_key(c.name), "{} missing", c.name);
        }
        assert_eq!(out["max_worker_processes"], "8");
        assert_eq!(out["wal_keep_size"], "128MB");
        assert_eq!(out["hot_standby"], "on");

        // Bad values: the default, named with the value refused.
        let (out, refused) = cluster_parameters(&map(&[
            ("max_connections", "10"),
            ("max_wal_senders", "many"),
            ("wal_level", "minimal"),
            ("hot_standby", "off"),
            ("wal_log_hints", "false"),
            ("wal_keep_size", "8MB"),
            ("track_commit_timestamp", "maybe"),
        ]));
        assert_eq!(out["max_connections"], "100");
        assert_eq!(out["wal_level"], "replica");
        assert_eq!(out["hot_standby"], "on");
        assert_eq!(out["wal_keep_size"], "128MB");
        let r = refused.join("\n");
        for want in [
            "postgresql.parameters.max_connections: expected a whole number of at least 25, got \"10\": using 100 (the default)",
            "postgresql.parameters.max_wal_senders: expected a whole number of at least 3, got \"many\": using 10",
            "postgresql.parameters.wal_level: expected replica or logical (minimal allows no replica), got \"minimal\"",
            "postgresql.parameters.hot_standby: expected on (a replica needs it), got \"off\"",
            "postgresql.parameters.wal_log_hints: expected on",
            "postgresql.parameters.wal_keep_size: expected a size of at least 16MB",
            "postgresql.parameters.track_commit_timestamp: expected on or off, got \"maybe\"",
        ] {
            assert!(r.contains(want), "{want} missing in:\n{r}");
        }
        assert_eq!(refused.len(), 7);

        // wal_keep_segments: as wal_keep_size, never written.
        let (out, _) = cluster_parameters(&map(&[("wal_keep_segments", "64")]));
        assert_eq!(out["wal_keep_size"], "1024MB");
        assert!(!out.contains_key("wal_keep_segments"));
        let (out, _) = cluster_parameters(&map(&[
            ("wal_keep_segments", "64"),
            ("wal_keep_size", "1GB"),
        ]));
        assert_eq!(out["wal_keep_size"], "1GB");
    }

    #[test]
    fn checks_name_what_is_expected() {
        assert_eq!(check("work_mem", "x"), None);
        assert_eq!(check("max_connections", "25"), None);
        assert_eq!(
            check("max_connections", "24").as_deref(),
            Some("expected a whole number of at least 25, got \"24\"")
        );
        assert_eq!(check("max_prepared_transactions", "0"), None);
        assert!(check("max_prepared_transactions", "-1").is_some());
        assert_eq!(check("wal_keep_size", "16384kB"), None);
        assert_eq!(check("wal_keep_size", "2GB"), None);
        assert_eq!(check("wal_keep_size", "64"), None);
        assert!(check("wal_keep_size", "15MB").is_some());
        assert!(check("wal_keep_size", "1PB").is_some());
        assert_eq!(check("wal_level", "logical"), None);
        assert!(check("hot_standby", "off").is_some());
        assert_eq!(check("track_commit_timestamp", "off"), None);
        assert!(check("wal_keep_segments", "0").is_some());
        assert!(is_critical("wal_keep_segments") && is_critical("max_locks_per_transaction"));
        assert!(!is_critical("shared_buffers"));
    }

    #[test]
    fn a_members_own_values_are_named_with_the_one_used() {
        let (cluster, _) = cluster_parameters(&map(&[("max_connections", "200")]));
        let effect = in_effect(&cluster);
        let w = ignored_local(
            Path::new("/etc/leasedog/pg1.yml"),
            &map(&[
                ("max_connections", "30"),
                ("shared_buffers", "16MB"),
                ("wal_keep_segments", "8"),
            ]),
            &effect,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with(
                "/etc/leasedog/pg1.yml: postgresql.parameters.max_connections = \"30\" ignored"
            ),
            "{}",
            w[0]
        );
        assert!(
            w[0].ends_with("using max_connections = \"200\""),
            "{}",
            w[0]
        );
        assert!(
            w[1].ends_with("using wal_keep_size = \"128MB\""),
            "{}",
            w[1]
        );
    }

    const CONTROLDATA: &str = "pg_control version number:            1300
Database cluster state:               in archive recovery
wal_level setting:                    replica
wal_log_hints setting:                on
max_connections setting:              120
max_worker_processes setting:         8
max_wal_senders setting:              10
max_prepared_xacts setting:           0
max_locks_per_xact setting:           128
track_commit_timestamp setting:       off
";

    #[test]
    fn a_replica_runs_no_lower_than_pg_control_records() {
        let control = parse_control(CONTROLDATA);
        assert_eq!(control.len(), 5, "{control:?}");
        assert_eq!(control["max_connections"], 120);
        assert_eq!(control["max_locks_per_transaction"], 128);
        assert_eq!(control["max_prepared_transactions"], 0);

        // The cluster lowered max_connections to 110 and raised
        // max_worker_processes: only what pg_control records higher is raised.
        let (cluster, _) = cluster_parameters(&map(&[
            ("max_connections", "110"),
            ("max_worker_processes", "16"),
        ]));
        let raised = raise(&in_effect(&cluster), &control);
        assert_eq!(
            raised,
            vec![
                Raised {
                    name: "max_connections",
                    value: 120,
                    cluster: "110".into()
                },
                Raised {
                    name: "max_locks_per_transaction",
                    value: 128,
                    cluster: "64".into()
                },
            ]
        );
        // Equal or higher everywhere: nothing.
        let (cluster, _) = cluster_parameters(&map(&[
            ("max_connections", "120"),
            ("max_locks_per_transaction", "128"),
        ]));
        assert!(raise(&in_effect(&cluster), &control).is_empty());
        // An older pg_controldata without a line: that one is not raised.
        assert!(raise(&in_effect(&cluster), &parse_control("")).is_empty());
    }
}
