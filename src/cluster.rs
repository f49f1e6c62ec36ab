//! Domain types shared by the decision core and the I/O modules: what a
//! member publishes, what the cluster looks like in etcd, what the local
//! PostgreSQL looks like, and the time base the core reasons in.
//!
//! Everything here is plain data plus parsing of the JSON values that live in
//! etcd (Patroni's layout, DESIGN §4). No I/O.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Milliseconds on the agent's monotonic clock (or the simulator's clock).
/// The decision core never reads a clock itself: it is handed `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    pub fn from_secs(s: u64) -> Millis {
        Millis(s * 1000)
    }
    pub fn plus(self, d: u64) -> Millis {
        Millis(self.0.saturating_add(d))
    }
    pub fn minus(self, d: u64) -> Millis {
        Millis(self.0.saturating_sub(d))
    }
    /// `self - earlier`, zero when `earlier` is later.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// A WAL position (PostgreSQL `pg_lsn`), as a byte offset.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's text form `X/Y` (both hexadecimal).
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return None;
        }
        Some(Lsn((hi << 32) | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// A PostgreSQL timeline id.
pub type Timeline = u32;

/// The role a member reports for its PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[serde(alias = "master")]
    Primary,
    Replica,
    #[default]
    #[serde(other)]
    Unknown,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        })
    }
}

/// Member tags, as Patroni's `tags` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nofailover: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub noloadbalance: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nosync: bool,
}

/// The value of `members/{name}`: what one agent publishes about itself.
/// Field names follow Patroni so that tools reading Patroni's keys work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    #[serde(default)]
    pub conn_url: String,
    #[serde(default)]
    pub api_url: String,
    /// "running", "stopped", "starting", "bootstrapping", ...
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub role: Role,
    /// Current WAL position: write position on a primary, the furthest of
    /// received and replayed on a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    #[serde(default)]
    pub tags: Tags,
    #[serde(default)]
    pub version: String,
    /// The leader key's create_revision this member last saw: the fencing epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<i64>,
    /// True while this replica's WAL receiver is streaming.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub streaming: bool,
    /// Patroni 4's field for the same (`patronictl list` shows it as the
    /// member's state): "streaming" while the WAL receiver streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    /// This member saw the cluster paused (maintenance mode) in its last cycle.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    /// The etcd revision of a read that showed no leader, made before the
    /// probe whose position this key carries: a position published after
    /// the leader was gone (a synchronous standby's promotion rule counts
    /// only those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaderless_rev: Option<i64>,
    /// A changed PostgreSQL setting waits for a restart (Patroni's field).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending_restart: bool,
    /// The id of the last `restart` request this member carried out (or
    /// found not meant for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarted: Option<String>,
    /// The id of the last `reload` request this member carried out (or
    /// found not meant for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reloaded: Option<String>,
}

/// A member as read from etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub info: MemberInfo,
    /// The etcd lease the key is bound to, when read from etcd. Every agent
    /// (and Patroni) binds its member key to its lease: a key bound to none
    /// was written by hand or by a hostile writer.
    pub lease: Option<i64>,
}

impl Member {
    /// Written without a lease: never a failover candidate, however good
    /// the position it claims (or anyone who can write etcd could hold
    /// every failover off).
    pub fn unleased(&self) -> bool {
        self.lease == Some(0)
    }

    pub fn lsn(&self) -> Lsn {
        Lsn(self.info.xlog_location.unwrap_or(0))
    }
}

/// The leader key: its value is the plain member name (Patroni's layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub name: String,
    /// The etcd lease the key is bound to.
    pub lease: i64,
    /// The key's create_revision: the fencing epoch of this leadership.
    pub create_revision: i64,
    pub mod_revision: i64,
}

/// The value of the `status` key, written by the leader each cycle, in
/// Patroni's layout (3.x/4.x): `{"optime": N, "slots": {"name": lsn, ...},
/// "retain_slots": ["name", ...]}`, plus leasedog's `timeline`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The leader's last known WAL write position.
    #[serde(default)]
    pub optime: u64,
    /// The physical replication slots that exist on the leader, with their
    /// restart LSN as a byte offset. None: not known (absent, as an older
    /// leader writes it, or unreadable): a replica then streams without its
    /// slot (`ha::stream_slot`). Read leniently: any other shape of the
    /// field counts as absent, and the rest of the key is still used.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_slots"
    )]
    pub slots: Option<BTreeMap<String, u64>>,
    /// The member slots the leader keeps (Patroni: those of members that
    /// exist in the cluster). Read leniently: anything odd is empty.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lenient_names"
    )]
    pub retain_slots: Vec<String>,
    /// The leader's timeline (leasedog addition; Patroni ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// The key's mod_revision when read from etcd (0 otherwise): a status
    /// written after the leader key's creation was written in this term
    /// (the leader writes it in a txn that compares the key).
    #[serde(skip)]
    pub mod_revision: i64,
}

/// `slots` as Patroni reads it: an object, or a string holding one; every
/// value an LSN, anything else in its place 0 (the name still exists).
/// Any other shape is None (unknown), never an error.
fn lenient_slots<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, u64>>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let v = match v {
        serde_json::Value::String(s) => serde_json::from_str(&s).unwrap_or_default(),
        v => v,
    };
    Ok(match v {
        serde_json::Value::Object(m) => Some(
            m.into_iter()
                .map(|(k, v)| (k, v.as_u64().unwrap_or(0)))
                .collect(),
        ),
        _ => None,
    })
}

/// A list of names, or a string holding one; non-strings are left out and
/// any other shape is empty, never an error.
fn lenient_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    let v = match v {
        serde_json::Value::String(s) => serde_json::from_str(&s).unwrap_or_default(),
        v => v,
    };
    Ok(match v {
        serde_json::Value::Array(a) => a
            .into_iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    })
}

/// The dynamic part of the `config` key that leasedog acts on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DynamicConfig {
    #[serde(default)]
    pub pause: bool,
    /// Every other field in the key is kept and written back untouched.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One entry of `ignore_slots` (Patroni's): a slot matches when every
/// attribute given matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotMatch {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

impl SlotMatch {
    /// A physical slot by this name (physical slots have no database or plugin).
    pub fn matches_physical(&self, name: &str) -> bool {
        self.name.as_deref().is_none_or(|n| n == name)
            && self.kind.as_deref().is_none_or(|k| k == "physical")
            && self.database.is_none()
            && self.plugin.is_none()
    }

    /// A logical slot: every attribute this entry gives is the slot's.
    pub fn matches_logical(&self, slot: &LogicalSlot) -> bool {
        self.name.as_deref().is_none_or(|n| n == slot.name)
            && self.kind.as_deref().is_none_or(|k| k == "logical")
            && self.database.as_deref().is_none_or(|d| d == slot.database)
            && self.plugin.as_deref().is_none_or(|p| p == slot.plugin)
    }
}

/// A logical replication slot: a permanent one of `slots:` (Patroni's
/// `{name: {type: logical, database: db, plugin: pgoutput}}`), or one that
/// exists on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalSlot {
    pub name: String,
    pub database: String,
    pub plugin: String,
}

/// A replication slot as `pg_replication_slots` shows it on the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingSlot {
    pub name: String,
    /// `physical` or `logical`.
    pub kind: String,
    /// A logical slot's database and output plugin (empty for physical).
    pub database: String,
    pub plugin: String,
}

/// What a leader does this cycle about the permanent logical slots
/// ([`plan_logical_slots`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogicalPlan {
    /// Configured, not ignored, and no slot by that name exists: create.
    pub create: Vec<LogicalSlot>,
    /// A slot by that name exists but is not what `slots:` says (physical,
    /// another database or plugin): left as it is, said in the log.
    pub mismatched: Vec<(LogicalSlot, ExistingSlot)>,
}

/// The leader's cheap check for permanent logical slots: which to create
/// (missing, not matched by `ignore_slots`) and which exist otherwise than
/// configured. Never a drop: leasedog does not drop logical slots (a
/// consumer's position would be lost with it).
pub fn plan_logical_slots(
    wanted: &[LogicalSlot],
    ignored: &[SlotMatch],
    existing: &[ExistingSlot],
) -> LogicalPlan {
    let mut plan = LogicalPlan::default();
    for w in wanted {
        if ignored.iter().any(|m| m.matches_logical(w)) {
            continue;
        }
        match existing.iter().find(|e| e.name == w.name) {
            None => plan.create.push(w.clone()),
            Some(e) if e.kind == "logical" && e.database == w.database && e.plugin == w.plugin => {}
            Some(e) => plan.mismatched.push((w.clone(), e.clone())),
        }
    }
    plan
}

/// A logical slot definition's `database` or `plugin`: a non-empty text,
/// else None (the same rule for `edit-config`'s checks and the leader).
pub fn logical_slot_field<'a>(def: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    def.get(key)
        .and_then(|x| x.as_str())
        .filter(|x| !x.is_empty())
}

impl DynamicConfig {
    /// The permanent physical slots of `slots:` (Patroni's
    /// `{name: {type: physical}}`; a slot without a type is physical).
    pub fn permanent_physical_slots(&self) -> Vec<String> {
        let Some(map) = self.other.get("slots").and_then(|s| s.as_object()) else {
            return Vec::new();
        };
        map.iter()
            .filter(|(name, v)| {
                crate::cluster::valid_slot_name(name)
                    && v.get("type")
                        .and_then(|t| t.as_str())
                        .is_none_or(|t| t == "physical")
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The permanent logical slots of `slots:` (`type: logical` with a
    /// database and a plugin; an entry without them is refused by
    /// `edit-config` and skipped here).
    pub fn permanent_logical_slots(&self) -> Vec<LogicalSlot> {
        let Some(map) = self.other.get("slots").and_then(|s| s.as_object()) else {
            return Vec::new();
        };
        map.iter()
            .filter(|(name, v)| {
                crate::cluster::valid_slot_name(name)
                    && v.get("type").and_then(|t| t.as_str()) == Some("logical")
            })
            .filter_map(|(name, v)| {
                Some(LogicalSlot {
                    name: name.clone(),
                    database: logical_slot_field(v, "database")?.to_string(),
                    plugin: logical_slot_field(v, "plugin")?.to_string(),
                })
            })
            .collect()
    }

    /// `ignore_slots`: slots leasedog never creates, moves or drops.
    pub fn ignore_slots(&self) -> Vec<SlotMatch> {
        let Some(list) = self.other.get("ignore_slots").and_then(|s| s.as_array()) else {
            return Vec::new();
        };
        let text =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        list.iter()
            .filter(|v| v.is_object())
            .map(|v| SlotMatch {
                name: text(v, "name"),
                kind: text(v, "type"),
                database: text(v, "database"),
                plugin: text(v, "plugin"),
            })
            .collect()
    }

    /// `postgresql.parameters` as PostgreSQL setting text (booleans as
    /// on/off, numbers as written), sorted by name; empty when the key has
    /// none. A value that is no scalar (a list, a map) is left out and
    /// named in the second list.
    pub fn pg_parameters(&self) -> (BTreeMap<String, String>, Vec<String>) {
        let mut out = BTreeMap::new();
        let mut odd = Vec::new();
        let Some(map) = self
            .other
            .get("postgresql")
            .and_then(|p| p.get("parameters"))
            .and_then(|p| p.as_object())
        else {
            return (out, odd);
        };
        for (k, v) in map {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                _ => {
                    odd.push(k.clone());
                    continue;
                }
            };
            out.insert(k.clone(), text);
        }
        (out, odd)
    }
}

/// The value of the `sync` key (Patroni's layout): the leader that wrote it,
/// the synchronous standbys (comma-separated), and how many of them a
/// candidate must see before it promotes (absent: one).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncState {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub sync_standby: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u64>,
    /// The key's mod_revision (not in the value).
    #[serde(skip)]
    pub mod_revision: i64,
}

impl SyncState {
    pub fn standbys(&self) -> Vec<String> {
        self.sync_standby
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
    /// At least one, at most the number of standbys.
    pub fn quorum(&self) -> usize {
        let n = self.standbys().len().max(1);
        (self.quorum.unwrap_or(1) as usize).clamp(1, n)
    }
}

/// The value of the `failover` key: a switchover or failover request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    /// A failover an operator forced onto a member that may lack
    /// acknowledged commits (synchronous mode); not in Patroni's layout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_data_loss: bool,
}

/// One consistent read of the cluster prefix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    pub leader: Option<Leader>,
    pub members: Vec<Member>,
    /// System identifier of the cluster once bootstrapped.
    pub initialize: Option<String>,
    pub config: DynamicConfig,
    pub failover: Option<FailoverRequest>,
    pub status: Option<Status>,
    /// The `sync` key, when present and readable; when present and
    /// unreadable, a placeholder naming no leader with the key's
    /// mod_revision only (for the leader's compare-and-swap).
    pub sync: Option<SyncState>,
    /// The `sync` key is present but could not be read: unknown, never
    /// taken for absent.
    pub sync_unreadable: bool,
    /// The `restart` key: a rolling restart in progress (`leasedog restart`).
    pub restart: Option<RestartRequest>,
    /// The `reinit` key: a replica to rebuild (`leasedog reinit`).
    pub reinit: Option<ReinitRequest>,
    /// The `reload` key: members to reload (`leasedog reload`).
    pub reload: Option<ReloadRequest>,
    /// etcd revision of the read.
    pub revision: i64,
}

/// The `reload` key: members that read their file again and reload
/// PostgreSQL (all when `members` is empty).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    /// The key's mod_revision (not in the value).
    #[serde(skip)]
    pub mod_revision: i64,
}

/// The `reinit` key: the replica whose data directory is emptied and cloned
/// again from the leader, or from the member `from` names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReinitRequest {
    pub id: String,
    pub member: String,
    /// The member to clone from (`reinit --from`): a running replica or
    /// the leader. None: the leader. The rebuilt replica streams from the
    /// leader either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The key's mod_revision (not in the value).
    #[serde(skip)]
    pub mod_revision: i64,
}

/// Why `reinit MEMBER --from FROM` is refused (None: it is not): FROM must
/// be another member, running, with an address to clone from. The CLI
/// refuses the request, the member's agent refuses it too (it may have
/// changed since), and the HA core clones from the leader instead if the
/// source stops qualifying after the data directory was emptied.
pub fn clone_source_refusal(view: &ClusterView, member: &str, from: &str) -> Option<String> {
    if from == member {
        return Some(format!(
            "--from {from}: {member} cannot clone from itself: expected another member, a running replica or the leader"
        ));
    }
    let Some(m) = view.member(from) else {
        return Some(format!(
            "--from {from}: no member named {from}: expected a running replica or the leader"
        ));
    };
    if m.info.state != "running" {
        return Some(format!(
            "--from {from}: {from} is not running (state {}): expected a running replica or the leader",
            crate::config::excerpt(&m.info.state)
        ));
    }
    if conn_host_port(&m.info.conn_url).is_none() {
        return Some(format!(
            "--from {from}: {from} publishes no usable address (conn_url) to clone from"
        ));
    }
    None
}

/// The `restart` key: which members restart PostgreSQL (all when `members`
/// is empty; only those with a pending restart with `pending`; only the
/// primary or the replicas with `role`). Replicas go first, one at a time,
/// then the primary, in place or after a switchover (see `restart::step`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// "primary" or "replica" (None: both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Not before this time (`restart --at`: ISO 8601 UTC or unix seconds,
    /// as the `failover` key's). The leader removes it when the time has
    /// come (from then on the request runs like an unscheduled one), or
    /// deletes the request when it first sees it long past (stale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    /// `restart --switchover`: the primary is not restarted in place; when
    /// its turn comes it hands over to the best replica (a switchover) and
    /// is restarted as a replica afterwards.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switchover: bool,
    /// The key's mod_revision (not in the value).
    #[serde(skip)]
    pub mod_revision: i64,
}

/// Why resuming now could let a replica be promoted beside a primary whose
/// agent is stopped (an agent stopped in maintenance mode leaves PostgreSQL
/// running): resuming needs a leader key whose holder still publishes its
/// member key. `None` when resuming is safe, or the cluster is not paused.
pub fn resume_refusal(view: &ClusterView) -> Option<String> {
    if !view.paused() {
        return None;
    }
    match &view.leader {
        None => Some(
            "no member holds the leader key: if a primary runs without its agent (stopped while \
             paused), resuming lets a replica be promoted beside it. Start that agent first \
             (it takes the key back), or resume with --force"
                .into(),
        ),
        Some(l) if view.member(&l.name).is_none() => Some(format!(
            "the leader {}'s agent is not running (no member key): resuming lets a replica be \
             promoted beside its PostgreSQL once the key expires. Start that agent first, or \
             resume with --force",
            l.name
        )),
        Some(_) => None,
    }
}

impl ClusterView {
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }
    pub fn paused(&self) -> bool {
        self.config.pause
    }
    /// The highest timeline anyone in the cluster reports.
    pub fn max_timeline(&self) -> Timeline {
        let from_members = self.members.iter().filter_map(|m| m.info.timeline).max();
        let from_status = self.status.as_ref().and_then(|s| s.timeline);
        from_members.max(from_status).unwrap_or(0)
    }
}

/// What a parse of one etcd key produced.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyParse {
    Leader(String),
    Member(Member),
    Initialize(String),
    Config(DynamicConfig),
    Failover(FailoverRequest),
    Status(Status),
    Sync(SyncState),
    Restart(RestartRequest),
    Reinit(ReinitRequest),
    Reload(ReloadRequest),
    /// A key leasedog does not use (history, sync, ...): ignored.
    Ignored,
}

/// Parses one key (relative to the cluster prefix) and its value. Odd data
/// is an `Err` with a message; the caller logs it and skips the key.
pub fn parse_key(rel_key: &str, value: &[u8]) -> Result<KeyParse, String> {
    let text =
        std::str::from_utf8(value).map_err(|_| format!("key {rel_key}: value is not UTF-8"))?;
    if rel_key == "leader" {
        let name = text.trim();
        if name.is_empty() {
            return Err("key leader: empty value".into());
        }
        return Ok(KeyParse::Leader(name.to_string()));
    }
    if let Some(name) = rel_key.strip_prefix("members/") {
        if name.is_empty() || name.contains('/') {
            return Err(format!("key {rel_key}: not a member name"));
        }
        let info: MemberInfo = serde_json::from_str(text)
            .map_err(|e| format!("key {rel_key}: bad member JSON: {e}"))?;
        return Ok(KeyParse::Member(Member {
            name: name.to_string(),
            info,
            lease: None,
        }));
    }
    match rel_key {
        "initialize" => Ok(KeyParse::Initialize(text.trim().to_string())),
        "config" => {
            if text.trim().is_empty() {
                return Ok(KeyParse::Config(DynamicConfig::default()));
            }
            serde_json::from_str(text)
                .map(KeyParse::Config)
                .map_err(|e| format!("key config: bad JSON: {e}"))
        }
        "failover" => {
            if text.trim().is_empty() {
                return Ok(KeyParse::Ignored);
            }
            serde_json::from_str(text)
                .map(KeyParse::Failover)
                .map_err(|e| format!("key failover: bad JSON: {e}"))
        }
        "status" => serde_json::from_str(text)
            .map(KeyParse::Status)
            .map_err(|e| format!("key status: bad JSON: {e}")),
        "sync" => serde_json::from_str(text)
            .map(KeyParse::Sync)
            .map_err(|e| format!("key sync: bad JSON: {e}")),
        "restart" => serde_json::from_str(text)
            .map(KeyParse::Restart)
            .map_err(|e| format!("key restart: bad JSON: {e}")),
        "reload" => serde_json::from_str(text)
            .map(KeyParse::Reload)
            .map_err(|e| format!("key reload: bad JSON: {e}")),
        "reinit" => serde_json::from_str(text)
            .map(KeyParse::Reinit)
            .map_err(|e| format!("key reinit: bad JSON: {e}")),
        _ => Ok(KeyParse::Ignored),
    }
}

/// What the data directory holds, as far as the agent can tell without a
/// running server (from `pg_controldata`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DataDir {
    /// Absent or empty: needs initdb or a base backup.
    #[default]
    Empty,
    /// A cluster is there.
    Initialized {
        system_id: String,
        /// The control file says the cluster was last a primary ("in
        /// production" or "shut down"): it may have diverged and must be
        /// rewound before it follows another leader.
        was_primary: bool,
        /// The control file says it was not shut down cleanly.
        crashed: bool,
        timeline: Timeline,
        /// Latest checkpoint location.
        checkpoint: Lsn,
    },
    /// Something is there that is not a usable data directory.
    Invalid(String),
    /// The directory could not be read (EACCES, EIO, EMFILE, a timeout on a
    /// stalled volume): it may hold anything, so it is never taken for empty.
    Unreadable(String),
}

/// What the local PostgreSQL looks like this cycle.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalPostgres {
    pub data_dir: DataDir,
    /// Known running: a postmaster answered this cycle's probe.
    pub running: bool,
    /// Not known: the probe failed and the postmaster was not confirmed
    /// stopped (`pg_ctl status` timed out, could not run, or said it runs).
    /// Never true together with `running`. Neither flag set means *known
    /// stopped*. Unknown counts as "may be writable" for every safety
    /// decision and as "not usable" for every liveness decision.
    pub unknown: bool,
    /// `pg_is_in_recovery()`. When `unknown`: true only if this agent saw
    /// the server in recovery since it last started it and has not promoted
    /// it since (a server in recovery only becomes writable by a promotion).
    pub in_recovery: bool,
    pub timeline: Option<Timeline>,
    /// Write LSN on a primary, max(receive, replay) on a replica.
    pub lsn: Option<Lsn>,
    /// Replica: its WAL receiver is streaming.
    pub streaming: bool,
    /// Replica: the `application_name`-independent host:port it follows,
    /// as configured in primary_conninfo (None when not a replica).
    pub following: Option<String>,
    /// Primary: its replication connections (pg_stat_replication), live.
    pub replication: Vec<ReplicaStat>,
    /// Replica: the `primary_slot_name` the server runs with (None when
    /// empty or not a replica).
    pub slot: Option<String>,
    /// Primary: its physical replication slots and their restart LSNs, as
    /// this cycle's probe saw them (None when not known).
    pub slots: Option<BTreeMap<String, Lsn>>,
    /// Primary: `synchronous_standby_names` in force (None when not read).
    pub sync_names: Option<String>,
    /// A changed setting waits for a restart (`pg_settings.pending_restart`).
    pub pending_restart: bool,
}

/// One replication connection as the primary sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicaStat {
    /// The replica's application_name: its member name.
    pub name: String,
    pub streaming: bool,
    /// Flushed on the replica.
    pub flush: Lsn,
}

impl LocalPostgres {
    /// The role to report: unknown when not running, replica in recovery.
    pub fn role(&self) -> Role {
        if !self.running {
            Role::Unknown
        } else if self.in_recovery {
            Role::Replica
        } else {
            Role::Primary
        }
    }

    /// The state a member key and `/patroni` publish.
    pub fn state_name(&self) -> &'static str {
        if self.running {
            "running"
        } else if self.unknown {
            "unknown"
        } else {
            "stopped"
        }
    }

    /// Known running and accepting writes.
    pub fn writable(&self) -> bool {
        self.running && !self.in_recovery
    }

    /// Writable, or not known not to be: what every safety decision (release
    /// the key, disarm the watchdog, let another node promote) must assume.
    pub fn may_be_writable(&self) -> bool {
        self.writable() || (self.unknown && !self.in_recovery)
    }

    /// Known stopped: a safe state to release the key or disarm from.
    pub fn known_stopped(&self) -> bool {
        !self.running && !self.unknown
    }
    pub fn system_id(&self) -> Option<&str> {
        match &self.data_dir {
            DataDir::Initialized { system_id, .. } => Some(system_id),
            _ => None,
        }
    }
}

/// The `host:port` of a `postgres://[user@]host:port/db` connection URL.
/// The host is a name, an IPv4 address or a bracketed IPv6 address: any
/// other character (a quote, a space, a newline from a forged member key)
/// makes the URL unusable, as it would otherwise reach `primary_conninfo`
/// in the configuration file PostgreSQL reads.
pub fn conn_host_port(conn_url: &str) -> Option<String> {
    let rest = conn_url
        .strip_prefix("postgres://")
        .or_else(|| conn_url.strip_prefix("postgresql://"))?;
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    let hp = rest.split(['/', '?']).next()?;
    let (host, port) = hp.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let name_char = |c: char| c.is_ascii_alphanumeric() || "-._%".contains(c);
    let valid = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.chars().all(|c| name_char(c) || c == ':'),
        None => !host.is_empty() && host.chars().all(name_char),
    };
    valid.then(|| format!("{host}:{port}"))
}

/// Parses a switchover time: unix seconds, or ISO 8601 in UTC
/// (`2026-11-23T05:00:00Z`, a `+00:00` suffix, or no suffix). Returns unix seconds.
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix("+00:00"))
        .unwrap_or(s);
    let (date, time) = s.split_once(['T', ' '])?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<f64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if d.len() != 3 || t.len() < 2 || !(1..=12).contains(&d[1]) || !(1..=31).contains(&d[2]) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y, m, day) = (if d[1] <= 2 { d[0] - 1 } else { d[0] }, d[1], d[2]);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400
        + (t[0] as i64) * 3600
        + (t[1] as i64) * 60
        + t.get(2).copied().unwrap_or(0.0) as i64;
    u64::try_from(secs).ok()
}

/// Formats unix seconds as ISO 8601 UTC (`2026-11-23T05:00:00Z`).
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// One timeline switch, as Patroni's `history` key holds it:
/// `[timeline, lsn, reason, timestamp, new_leader]`.
pub type HistoryEntry = (Timeline, u64, String, String, String);

/// Parses the `history` key (a JSON list of entries); odd entries are skipped.
pub fn parse_history(text: &str) -> Vec<HistoryEntry> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str::<serde_json::Value>(text)
    else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|e| {
            let a = e.as_array()?;
            Some((
                a.first()?.as_u64()? as Timeline,
                a.get(1)?.as_u64()?,
                a.get(2).and_then(|x| x.as_str()).unwrap_or("").to_string(),
                a.get(3).and_then(|x| x.as_str()).unwrap_or("").to_string(),
                a.get(4).and_then(|x| x.as_str()).unwrap_or("").to_string(),
            ))
        })
        .collect()
}

/// A replication slot name for a member: lowercase, [a-z0-9_], as Patroni.
/// A name PostgreSQL accepts for a replication slot: lower-case letters,
/// digits and underscores, at most 63.
pub fn valid_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub fn slot_name(member: &str) -> String {
    let mut s: String = member
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_key_reads_back_as_written() {
        // The agent rewrites its key when what etcd holds differs from what
        // it wrote: a lossy round trip would rewrite it every cycle.
        for info in [
            MemberInfo::default(),
            MemberInfo {
                conn_url: "postgres://10.0.0.1:5432/postgres".into(),
                api_url: "http://10.0.0.1:8008/patroni".into(),
                state: "unknown".into(),
                role: Role::Replica,
                xlog_location: Some(77),
                timeline: Some(3),
                tags: Tags {
                    nofailover: true,
                    noloadbalance: true,
                    nosync: true,
                },
                version: "0.1.0".into(),
                epoch: Some(9),
                streaming: true,
                replication_state: Some("streaming".into()),
                pause: true,
                leaderless_rev: Some(12),
                pending_restart: true,
                restarted: Some("17".into()),
                reloaded: Some("18".into()),
            },
        ] {
            let json = serde_json::to_string(&info).unwrap();
            match parse_key("members/n1", json.as_bytes()) {
                Ok(KeyParse::Member(m)) => assert_eq!(m.info, info),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn resume_needs_a_leader_whose_agent_runs() {
        let mut v = ClusterView::default();
        assert_eq!(resume_refusal(&v), None, "not paused: nothing to refuse");
        v.config.pause = true;
        assert!(
            resume_refusal(&v)
                .unwrap()
                .contains("no member holds the leader key")
        );
        v.leader = Some(Leader {
            name: "n1".into(),
            lease: 7,
            create_revision: 3,
            mod_revision: 3,
        });
        assert!(
            resume_refusal(&v)
                .unwrap()
                .contains("n1's agent is not running")
        );
        v.members.push(Member {
            name: "n2".into(),
            info: MemberInfo::default(),
            lease: None,
        });
        assert!(
            resume_refusal(&v).is_some(),
            "another member does not count"
        );
        v.members.push(Member {
            name: "n1".into(),
            info: MemberInfo::default(),
            lease: None,
        });
        assert_eq!(resume_refusal(&v), None);
    }

    #[test]
    fn lsn_round_trip() {
        let l = Lsn::parse("1/3000060").unwrap();
        assert_eq!(l.0, (1u64 << 32) | 0x3000060);
        assert_eq!(l.to_string(), "1/3000060");
        assert_eq!(Lsn::parse("garbage"), None);
        assert_eq!(Lsn::parse("1/"), None);
    }

    #[test]
    fn parses_patroni_member_json() {
        let v = br#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"replica","version":"4.1.5","xlog_location":1234,"timeline":2,"tags":{"nofailover":true}}"#;
        match parse_key("members/pg1", v).unwrap() {
            KeyParse::Member(m) => {
                assert_eq!(m.name, "pg1");
                assert_eq!(m.info.role, Role::Replica);
                assert_eq!(m.info.xlog_location, Some(1234));
                assert!(m.info.tags.nofailover);
            }
            other => panic!("{other:?}"),
        }
        // Patroni's older role name and unknown fields are tolerated.
        match parse_key("members/pg2", br#"{"role":"master","foo":1}"#).unwrap() {
            KeyParse::Member(m) => assert_eq!(m.info.role, Role::Primary),
            other => panic!("{other:?}"),
        }
        match parse_key("members/pg3", br#"{"role":"standby_leader"}"#).unwrap() {
            KeyParse::Member(m) => assert_eq!(m.info.role, Role::Unknown),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn odd_data_is_an_error_not_a_panic() {
        assert!(parse_key("members/pg1", b"{not json").is_err());
        assert!(parse_key("members/pg1", &[0xff, 0xfe]).is_err());
        assert!(parse_key("leader", b"  ").is_err());
        assert!(parse_key("status", b"\"x\"").is_err());
        assert_eq!(
            parse_key("history", b"whatever").unwrap(),
            KeyParse::Ignored
        );
    }

    /// Patroni's status layout both ways; an odd `slots` or `retain_slots`
    /// is unknown (None, empty), and the rest of the key is still read.
    #[test]
    fn status_slots_in_patronis_layout_read_leniently() {
        let s = Status {
            optime: 10,
            slots: Some(BTreeMap::from([("node2".to_string(), 7)])),
            retain_slots: vec!["node2".into()],
            timeline: Some(2),
            mod_revision: 5,
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(
            text,
            r#"{"optime":10,"slots":{"node2":7},"retain_slots":["node2"],"timeline":2}"#
        );
        let back = |t: &str| match parse_key("status", t.as_bytes()) {
            Ok(KeyParse::Status(s)) => s,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(
            back(&text),
            Status {
                mod_revision: 0,
                ..s
            }
        );
        // An older leader's status: slots unknown.
        let old = back(r#"{"optime":10,"timeline":2}"#);
        assert_eq!(
            (old.optime, old.slots, old.retain_slots.len()),
            (10, None, 0)
        );
        // Patroni also accepts both fields as JSON text; values that are no
        // LSN still name a slot.
        let t = back(r#"{"optime":1,"slots":"{\"a\":null,\"b\":-1}","retain_slots":"[\"a\",3]"}"#);
        assert_eq!(
            t.slots,
            Some(BTreeMap::from([("a".to_string(), 0), ("b".to_string(), 0)]))
        );
        assert_eq!(t.retain_slots, vec!["a".to_string()]);
        for odd in [
            r#"{"optime":3,"slots":[1,2],"retain_slots":{"x":1}}"#,
            r#"{"optime":3,"slots":"not json","retain_slots":"nor this"}"#,
            r#"{"optime":3,"slots":7,"retain_slots":null}"#,
            r#"{"optime":3,"slots":null}"#,
        ] {
            let s = back(odd);
            assert_eq!(
                (s.optime, s.slots, s.retain_slots.len()),
                (3, None, 0),
                "{odd}"
            );
        }
    }

    #[test]
    fn config_key_keeps_unknown_fields() {
        match parse_key("config", br#"{"pause":true,"ttl":30}"#).unwrap() {
            KeyParse::Config(c) => {
                assert!(c.pause);
                assert_eq!(c.other.get("ttl"), Some(&serde_json::json!(30)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn conn_urls() {
        assert_eq!(
            conn_host_port("postgres://10.0.0.1:5432/postgres").as_deref(),
            Some("10.0.0.1:5432")
        );
        assert_eq!(
            conn_host_port("postgres://u@h:1/postgres").as_deref(),
            Some("h:1")
        );
        assert_eq!(conn_host_port("postgres://h/postgres"), None);
        assert_eq!(conn_host_port("http://h:1"), None);
        assert_eq!(
            conn_host_port("postgresql://db-1.example_x.org:5432/postgres").as_deref(),
            Some("db-1.example_x.org:5432")
        );
        assert_eq!(
            conn_host_port("postgres://[fe80::1%eth0]:5432/postgres").as_deref(),
            Some("[fe80::1%eth0]:5432")
        );
        // A forged member key's host never reaches primary_conninfo: a
        // newline or quote would break (or inject into) the config file.
        for hostile in [
            "postgres://u:p@ev'il\nrestore_command='touch x':5432/postgres",
            "postgres://a b:1/postgres",
            "postgres://h\":1/postgres",
            "postgres://a:b:1/postgres",
            "postgres://[]:1/postgres",
            "postgres://[::1\n]:1/postgres",
        ] {
            assert_eq!(conn_host_port(hostile), None, "{hostile:?}");
        }
    }

    /// `slots:` read both ways: physical entries (no type is physical),
    /// logical ones only with a database and a plugin; `ignore_slots` keeps
    /// a configured logical slot from being made, by name or attributes;
    /// a slot that exists otherwise than configured is reported, never
    /// replaced.
    #[test]
    fn permanent_logical_slots_and_their_plan() {
        let cfg: DynamicConfig = serde_json::from_str(
            r#"{"slots": {"dr": {}, "phys": {"type": "physical"},
                "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
                "nodb": {"type": "logical", "plugin": "pgoutput"},
                "empty": {"type": "logical", "database": "", "plugin": "pgoutput"},
                "Bad": {"type": "logical", "database": "app", "plugin": "pgoutput"},
                "skip": {"type": "logical", "database": "app", "plugin": "test_decoding"},
                "moved": {"type": "logical", "database": "app", "plugin": "pgoutput"},
                "taken": {"type": "logical", "database": "app", "plugin": "pgoutput"},
                "there": {"type": "logical", "database": "app", "plugin": "pgoutput"}},
              "ignore_slots": [{"name": "cdc", "type": "physical"}, {"plugin": "test_decoding"}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.permanent_physical_slots(), vec!["dr", "phys"]);
        let logical = cfg.permanent_logical_slots();
        let names: Vec<&str> = logical.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["cdc", "moved", "skip", "taken", "there"]);
        let slot = |name: &str, kind: &str, db: &str, plugin: &str| ExistingSlot {
            name: name.into(),
            kind: kind.into(),
            database: db.into(),
            plugin: plugin.into(),
        };
        let existing = vec![
            slot("there", "logical", "app", "pgoutput"),
            slot("moved", "logical", "other", "pgoutput"),
            slot("taken", "physical", "", ""),
        ];
        let plan = plan_logical_slots(&logical, &cfg.ignore_slots(), &existing);
        // cdc: the ignore entry is for a physical slot; skip: ignored by plugin.
        let create: Vec<&str> = plan.create.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(create, vec!["cdc"]);
        let odd: Vec<&str> = plan
            .mismatched
            .iter()
            .map(|(w, _)| w.name.as_str())
            .collect();
        assert_eq!(odd, vec!["moved", "taken"]);
        // Ignored by name: not made even though `slots:` lists it.
        let by_name = [SlotMatch {
            name: Some("cdc".into()),
            ..SlotMatch::default()
        }];
        assert!(
            plan_logical_slots(&logical[..1], &by_name, &[])
                .create
                .is_empty()
        );
        // A matching entry with another database does not ignore it.
        let other_db = [SlotMatch {
            name: Some("cdc".into()),
            database: Some("other".into()),
            ..SlotMatch::default()
        }];
        assert_eq!(
            plan_logical_slots(&logical[..1], &other_db, &[])
                .create
                .len(),
            1
        );
    }

    #[test]
    fn times() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("1970-01-02T00:00:00Z"), Some(86400));
        assert_eq!(parse_time("2026-11-23T05:00:00+00:00"), Some(1795410000));
        assert_eq!(parse_time("2000-03-01 00:00"), Some(951868800));
        assert_eq!(parse_time("tomorrow"), None);
    }

    #[test]
    fn time_round_trip_and_history() {
        for t in [0, 86399, 951868800, 1795410000] {
            assert_eq!(parse_time(&format_time(t)), Some(t));
        }
        assert_eq!(format_time(1795410000), "2026-11-23T05:00:00Z");
        let h = parse_history(
            r#"[[1, 25623960, "no recovery target specified", "2019-09-23T16:57:57+02:00", "node1"], "junk", [2]]"#,
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].0, 1);
        assert_eq!(h[0].4, "node1");
        assert!(parse_history("not json").is_empty());
    }

    #[test]
    fn slot_names_are_sanitised() {
        assert_eq!(slot_name("Node-1.a"), "node_1_a");
    }
}
