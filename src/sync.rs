//! Synchronous replication, pure: which standbys PostgreSQL waits for
//! (`synchronous_standby_names`), what the `sync` key says, the order in
//! which a leader changes the two, and who may promote. No I/O: `ha` asks
//! [`plan`] for the leader's next step and [`may_take_over`] before a
//! replica races; the agent carries the step out.
//!
//! The invariant (docs/synchronous.md argues it): the key names a set `V`
//! and a `quorum` q, and **any q members of V include one that holds every
//! commit PostgreSQL acknowledged**. A candidate named in V that sees q
//! members of V (itself included) with positions published after the leader
//! was gone, and is the most advanced of them, therefore holds every
//! acknowledged commit. An empty V means only the key's leader may promote.
//!
//! PostgreSQL waits for k of a set S (`FIRST k (S)` or `ANY k (S)`). A key
//! is safe for that setting when S ⊆ V and q > |V| − k (every k-subset of S
//! meets every q-subset of V), and safe for the commits acknowledged before
//! the setting took effect when |V| − q + 1 members of V hold them (have
//! flushed the primary's position one cycle after the setting was seen in
//! force), or when it only grows a safe key (V ⊆ V′ and q′ ≥ q + |V′ \ V|).
//! The leader therefore: widens the key before PostgreSQL waits for a new
//! standby; changes PostgreSQL's setting only under a key that is safe for
//! both the old and the new setting; narrows the key only once the members
//! it keeps have caught up. Writing an empty V is always safe.

use crate::cluster::{ClusterView, LocalPostgres, Lsn, Role, SyncState};
use crate::config::SyncMode;
use std::collections::BTreeSet;

/// The synchronous settings the core needs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncConfig {
    pub mode: SyncMode,
    pub strict: bool,
    pub node_count: usize,
    /// `maximum_lag_on_syncnode`; None: no limit.
    pub max_lag: Option<u64>,
    /// `tags.nosync` of this member.
    pub nosync: bool,
}

impl SyncConfig {
    pub fn on(&self) -> bool {
        self.mode != SyncMode::Off
    }
    /// What PostgreSQL runs with before the leader has chosen standbys: in
    /// strict mode commits wait for any standby, otherwise for none.
    pub fn initial_names(&self) -> Names {
        if self.on() && self.strict {
            Names::AnyOne
        } else {
            Names::Off
        }
    }
}

/// `synchronous_standby_names` as leasedog writes and reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Names {
    /// `''`: no standby confirms commits.
    Off,
    /// `'*'`: any one connected standby confirms each commit.
    AnyOne,
    /// `FIRST k (set)` (`quorum` false) or `ANY k (set)`.
    Set {
        quorum: bool,
        k: usize,
        names: BTreeSet<String>,
    },
    /// A value leasedog did not write: which standbys confirm is unknown.
    Unknown(String),
}

fn quote_name(n: &str) -> String {
    format!("\"{}\"", n.replace('"', "\"\""))
}

impl Names {
    pub fn render(&self) -> String {
        match self {
            Names::Off => String::new(),
            Names::AnyOne => "*".into(),
            Names::Set { quorum, k, names } => format!(
                "{} {k} ({})",
                if *quorum { "ANY" } else { "FIRST" },
                names
                    .iter()
                    .map(|n| quote_name(n))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Names::Unknown(s) => s.clone(),
        }
    }

    /// Reads a value back; anything but what [`Names::render`] writes (and
    /// plain `''`/`'*'`) is [`Names::Unknown`].
    pub fn parse(s: &str) -> Names {
        let t = s.trim();
        if t.is_empty() {
            return Names::Off;
        }
        if t == "*" {
            return Names::AnyOne;
        }
        let unknown = || Names::Unknown(s.to_string());
        let (quorum, rest) = if let Some(r) = t.strip_prefix("FIRST ") {
            (false, r)
        } else if let Some(r) = t.strip_prefix("ANY ") {
            (true, r)
        } else {
            return unknown();
        };
        let Some((k, list)) = rest.split_once(' ') else {
            return unknown();
        };
        let Ok(k) = k.parse::<usize>() else {
            return unknown();
        };
        let Some(list) = list
            .trim()
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
        else {
            return unknown();
        };
        let mut names = BTreeSet::new();
        let mut chars = list.chars().peekable();
        loop {
            if chars.next() != Some('"') {
                return unknown();
            }
            let mut name = String::new();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        name.push('"');
                    }
                    Some('"') => break,
                    Some(c) => name.push(c),
                    None => return unknown(),
                }
            }
            names.insert(name);
            match chars.next() {
                Some(',') => continue,
                None => break,
                Some(_) => return unknown(),
            }
        }
        if k == 0 || k > names.len() {
            return unknown();
        }
        Names::Set { quorum, k, names }
    }

    /// The standbys named, if a set.
    pub fn set(&self) -> Option<&BTreeSet<String>> {
        match self {
            Names::Set { names, .. } => Some(names),
            _ => None,
        }
    }
}

/// The `sync` key's set and quorum, as the rules read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeySet {
    pub names: BTreeSet<String>,
    pub quorum: usize,
}

impl KeySet {
    pub fn empty() -> KeySet {
        KeySet::default()
    }
    pub fn from_state(s: &SyncState) -> KeySet {
        let names: BTreeSet<String> = s.standbys().into_iter().collect();
        let quorum = if names.is_empty() { 0 } else { s.quorum() };
        KeySet { names, quorum }
    }
    /// The key's value; `quorum` is written when it is not one, and always
    /// in quorum mode (`list` shows Quorum Standby from it, as patronictl).
    pub fn to_state(&self, leader: &str, quorum_mode: bool) -> SyncState {
        SyncState {
            leader: Some(leader.to_string()),
            sync_standby: (!self.names.is_empty())
                .then(|| self.names.iter().cloned().collect::<Vec<_>>().join(",")),
            quorum: (!self.names.is_empty() && (quorum_mode || self.quorum != 1))
                .then_some(self.quorum as u64),
            mod_revision: 0,
        }
    }
    /// The smallest key safe for a setting.
    fn minimal_for(names: &Names) -> KeySet {
        match names {
            Names::Set { k, names, .. } => KeySet {
                quorum: names.len() - k + 1,
                names: names.clone(),
            },
            _ => KeySet::empty(),
        }
    }
    /// Safe for commits PostgreSQL acknowledges under `names`.
    pub fn covers(&self, names: &Names) -> bool {
        if self.names.is_empty() {
            return true;
        }
        match names {
            Names::Set { k, names, .. } => {
                names.is_subset(&self.names)
                    && self.quorum >= 1
                    && self.quorum <= self.names.len()
                    && self.quorum + k > self.names.len()
            }
            _ => false,
        }
    }
    /// Safe for commits acknowledged before: grows a safe key.
    fn grows(&self, from: &KeySet) -> bool {
        from.names.is_subset(&self.names)
            && (from.names.is_empty() && self.names.is_empty()
                || !from.names.is_empty()
                    && self.quorum >= from.quorum + self.names.difference(&from.names).count())
    }
    /// Safe for commits acknowledged before: enough of its members caught up.
    fn held_by(&self, caught_up: &BTreeSet<String>) -> bool {
        self.names.is_empty()
            || self.names.intersection(caught_up).count() + self.quorum > self.names.len()
    }
}

/// What the leader knows about the setting in force (`NodeState`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InForce {
    /// The setting as the last probe read it.
    pub names: Option<Names>,
    /// The primary's position one cycle after `names` was first seen in
    /// force: every commit acknowledged before the change is at or below it.
    pub since: Option<Lsn>,
    /// Members seen with a flush position at or past `since`.
    pub caught_up: BTreeSet<String>,
}

impl InForce {
    /// After a probe of the leader's PostgreSQL.
    pub fn observe(&mut self, local: &LocalPostgres) {
        let Some(raw) = (local.writable())
            .then_some(local.sync_names.as_deref())
            .flatten()
        else {
            *self = InForce::default();
            return;
        };
        let names = Names::parse(raw);
        if self.names.as_ref() != Some(&names) {
            *self = InForce {
                names: Some(names),
                since: None,
                caught_up: BTreeSet::new(),
            };
            return;
        }
        if self.since.is_none() {
            self.since = local.lsn;
        }
        if let Some(since) = self.since {
            for r in &local.replication {
                if r.flush >= since {
                    self.caught_up.insert(r.name.clone());
                }
            }
        }
    }
}

/// The leader's next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write the `sync` key (compare-and-swap on the revision read).
    WriteKey(KeySet),
    /// Set `synchronous_standby_names` and reload.
    SetNames(Names),
    /// Nothing to change; why, when waiting.
    Hold(Option<String>),
}

/// The standbys that may confirm commits, best first: streaming from us
/// now, not `nosync`, within `maximum_lag_on_syncnode`; current ones
/// first (a standby is not replaced without a reason), then by position.
pub fn candidates(
    cfg: &SyncConfig,
    me: &str,
    view: &ClusterView,
    local: &LocalPostgres,
    current: Option<&Names>,
) -> Vec<String> {
    let top = local.lsn.unwrap_or_default();
    let mut c: Vec<(bool, Lsn, String)> = local
        .replication
        .iter()
        .filter(|r| r.streaming && r.name != me)
        .filter(|r| {
            view.member(&r.name).is_some_and(|m| {
                !m.info.tags.nosync
                    && !m.unleased()
                    && m.info.role == Role::Replica
                    && m.info.state == "running"
            })
        })
        .filter(|r| {
            cfg.max_lag
                .is_none_or(|max| top.0.saturating_sub(r.flush.0) <= max)
        })
        .map(|r| {
            let cur = current
                .and_then(|n| n.set())
                .is_some_and(|s| s.contains(&r.name));
            (cur, r.flush, r.name.clone())
        })
        .collect();
    c.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    c.dedup_by(|a, b| a.2 == b.2);
    c.into_iter().map(|(_, _, n)| n).collect()
}

/// The setting wanted for these candidates.
pub fn wanted(cfg: &SyncConfig, cands: &[String]) -> Names {
    if cands.is_empty() {
        return if cfg.strict {
            Names::AnyOne
        } else {
            Names::Off
        };
    }
    match cfg.mode {
        SyncMode::Quorum => Names::Set {
            quorum: true,
            k: cfg.node_count.min(cands.len()),
            names: cands.iter().cloned().collect(),
        },
        _ => {
            let names: BTreeSet<String> = cands.iter().take(cfg.node_count).cloned().collect();
            Names::Set {
                quorum: false,
                k: names.len(),
                names,
            }
        }
    }
}

/// The leader's next step towards the wanted setting, one per cycle. `key`
/// is the `sync` key as read (None when absent or unreadable);
/// `in_force` what the leader knows of PostgreSQL's setting.
pub fn plan(
    cfg: &SyncConfig,
    me: &str,
    view: &ClusterView,
    local: &LocalPostgres,
    in_force: &InForce,
) -> Step {
    let Some(current) = &in_force.names else {
        return Step::Hold(Some("synchronous_standby_names not read yet".into()));
    };
    let key = match &view.sync {
        Some(s) if s.leader.as_deref() == Some(me) && !view.sync_unreadable => {
            KeySet::from_state(s)
        }
        _ => return Step::WriteKey(KeySet::empty()),
    };
    // A key that does not cover what PostgreSQL does (edited by hand, or
    // the setting changed behind our back): the empty key is always safe.
    if !key.covers(current) {
        return Step::WriteKey(KeySet::empty());
    }
    let cands = candidates(cfg, me, view, local, Some(current));
    let want = wanted(cfg, &cands);
    if *current == want {
        let min = KeySet::minimal_for(current);
        if key == min {
            return Step::Hold(None);
        }
        if min.held_by(&in_force.caught_up) {
            return Step::WriteKey(min);
        }
        let waiting: Vec<&String> = min.names.difference(&in_force.caught_up).collect();
        return Step::Hold(Some(format!(
            "waiting for {} to catch up before naming {} in the sync key",
            waiting
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if waiting.len() == 1 { "it" } else { "them" }
        )));
    }
    if key.covers(&want) {
        return Step::SetNames(want);
    }
    // Widen the key so that it covers both settings, as a growth of the
    // safe key it is now.
    match (&want, current) {
        (
            Names::Set {
                k: kw, names: sw, ..
            },
            Names::Set { k: kc, .. },
        ) => {
            let names: BTreeSet<String> = key.names.union(sw).cloned().collect();
            let grown = names.difference(&key.names).count();
            let need = names.len() + 1 - (*kw).min(*kc);
            let quorum = need.max(key.quorum + grown).min(names.len());
            let wide = KeySet { names, quorum };
            if wide.covers(current) && wide.covers(&want) && wide.grows(&key) {
                Step::WriteKey(wide)
            } else {
                Step::WriteKey(KeySet::empty())
            }
        }
        // Towards no standby, or from a setting without a known set: only
        // the empty key covers every step on the way.
        _ => Step::WriteKey(KeySet::empty()),
    }
}

/// Whether this node may take the leader key in a failover, by the `sync`
/// key. A switchover's candidate needs no exception: the old leader names
/// it alone in the key (quorum 1) once it checked the hand-over. A request
/// that names a member vouches for nothing: its leader may have died before
/// it acted on it.
pub fn may_take_over(
    cfg: &SyncConfig,
    me: &str,
    view: &ClusterView,
    my_lsn: Lsn,
) -> Result<(), String> {
    if !cfg.on() {
        return Ok(());
    }
    if view.sync_unreadable {
        return Err("the sync key cannot be read: not promoting".into());
    }
    let Some(sync) = view.sync.as_ref().filter(|s| s.leader.is_some()) else {
        // No sync key: synchronous replication never started here.
        return Ok(());
    };
    if sync.leader.as_deref() == Some(me) {
        return Ok(());
    }
    let key = KeySet::from_state(sync);
    if !key.names.contains(me) {
        return Err(format!(
            "not a synchronous standby (the sync key names {})",
            if key.names.is_empty() {
                format!("only {}", sync.leader.as_deref().unwrap_or(""))
            } else {
                key.names.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        ));
    }
    let mut seen = 1;
    for n in key.names.iter().filter(|n| n.as_str() != me) {
        let Some(m) = view.member(n) else { continue };
        let fresh = m.info.leaderless_rev.is_some_and(|r| r > sync.mod_revision);
        if !fresh || m.unleased() || m.info.state != "running" || m.info.role != Role::Replica {
            continue;
        }
        if m.lsn() > my_lsn {
            return Err(format!("{n}, also a synchronous standby, is ahead"));
        }
        seen += 1;
    }
    if seen < key.quorum {
        return Err(format!(
            "sees {seen} of the {} synchronous standbys with positions published since the leader left; {} needed",
            key.names.len(),
            key.quorum
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(quorum: bool, k: usize, names: &[&str]) -> Names {
        Names::Set {
            quorum,
            k,
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn key(names: &[&str], quorum: usize) -> KeySet {
        KeySet {
            names: names.iter().map(|s| s.to_string()).collect(),
            quorum,
        }
    }

    use crate::cluster::{Leader, Member, MemberInfo, ReplicaStat};

    fn cfg(mode: SyncMode, strict: bool) -> SyncConfig {
        SyncConfig {
            mode,
            strict,
            node_count: 1,
            max_lag: None,
            nosync: false,
        }
    }

    fn replica(name: &str, lsn: u64, leaderless_rev: Option<i64>) -> Member {
        Member {
            name: name.into(),
            info: MemberInfo {
                state: "running".into(),
                role: Role::Replica,
                xlog_location: Some(lsn),
                streaming: true,
                leaderless_rev,
                ..Default::default()
            },
            lease: Some(7),
        }
    }

    fn view(sync: Option<(&str, &[&str], Option<u64>)>, members: Vec<Member>) -> ClusterView {
        ClusterView {
            leader: Some(Leader {
                name: "p".into(),
                lease: 7,
                create_revision: 1,
                mod_revision: 1,
            }),
            members,
            sync: sync.map(|(l, names, quorum)| SyncState {
                leader: Some(l.into()),
                sync_standby: (!names.is_empty()).then(|| names.join(",")),
                quorum,
                mod_revision: 50,
            }),
            revision: 60,
            ..Default::default()
        }
    }

    /// The primary `p`, streaming to these (name, flush) standbys.
    fn primary(names: &Names, streams: &[(&str, u64)]) -> LocalPostgres {
        LocalPostgres {
            running: true,
            lsn: Some(Lsn(1000)),
            replication: streams
                .iter()
                .map(|(n, f)| ReplicaStat {
                    name: n.to_string(),
                    streaming: true,
                    flush: Lsn(*f),
                })
                .collect(),
            sync_names: Some(names.render()),
            data_dir: crate::cluster::DataDir::Initialized {
                system_id: "1".into(),
                was_primary: true,
                crashed: false,
                timeline: 1,
                checkpoint: Lsn(0),
            },
            ..Default::default()
        }
    }

    fn in_force(names: &Names, caught_up: &[&str]) -> InForce {
        InForce {
            names: Some(names.clone()),
            since: Some(Lsn(900)),
            caught_up: caught_up.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_standby_is_waited_for_under_the_empty_key_and_named_once_caught_up() {
        let c = cfg(SyncMode::On, false);
        let a = set(false, 1, &["a"]);
        let members = || vec![replica("a", 990, None)];
        // No key yet: the empty key first.
        let v = view(None, members());
        let l = primary(&Names::Off, &[("a", 990)]);
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&Names::Off, &[])),
            Step::WriteKey(KeySet::empty())
        );
        // Under the empty key PostgreSQL may wait for a.
        let v = view(Some(("p", &[], None)), members());
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&Names::Off, &[])),
            Step::SetNames(a.clone())
        );
        // Named only once it holds what was acknowledged before.
        let l = primary(&a, &[("a", 990)]);
        assert!(matches!(
            plan(&c, "p", &v, &l, &in_force(&a, &[])),
            Step::Hold(Some(_))
        ));
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&a, &["a"])),
            Step::WriteKey(key(&["a"], 1))
        );
        let v = view(Some(("p", &["a"], None)), members());
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&a, &["a"])),
            Step::Hold(None)
        );
    }

    #[test]
    fn a_replaced_standby_leaves_the_key_only_after_the_new_one_caught_up() {
        let c = cfg(SyncMode::On, false);
        let (a, b) = (set(false, 1, &["a"]), set(false, 1, &["b"]));
        let members = vec![replica("a", 500, None), replica("b", 990, None)];
        // a stopped streaming: the key widens first (both, quorum 2)...
        let v = view(Some(("p", &["a"], None)), members.clone());
        let l = primary(&a, &[("b", 990)]);
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&a, &["a"])),
            Step::WriteKey(key(&["a", "b"], 2))
        );
        // ...then PostgreSQL waits for b...
        let v = view(Some(("p", &["a", "b"], Some(2))), members.clone());
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&a, &["a"])),
            Step::SetNames(b.clone())
        );
        // ...and a leaves the key once b holds everything.
        let l = primary(&b, &[("b", 990)]);
        assert!(matches!(
            plan(&c, "p", &v, &l, &in_force(&b, &[])),
            Step::Hold(Some(_))
        ));
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&b, &["b"])),
            Step::WriteKey(key(&["b"], 1))
        );
    }

    #[test]
    fn with_no_standby_the_key_empties_before_postgresql_stops_waiting() {
        let a = set(false, 1, &["a"]);
        let v = view(Some(("p", &["a"], None)), vec![replica("a", 500, None)]);
        let l = primary(&a, &[]);
        for strict in [false, true] {
            let c = cfg(SyncMode::On, strict);
            assert_eq!(
                plan(&c, "p", &v, &l, &in_force(&a, &["a"])),
                Step::WriteKey(KeySet::empty())
            );
            let empty = view(Some(("p", &[], None)), vec![]);
            let want = if strict { Names::AnyOne } else { Names::Off };
            assert_eq!(
                plan(&c, "p", &empty, &l, &in_force(&a, &["a"])),
                Step::SetNames(want)
            );
        }
    }

    #[test]
    fn quorum_mode_waits_for_any_k_and_the_key_asks_for_the_rest_plus_one() {
        let mut c = cfg(SyncMode::Quorum, false);
        c.node_count = 2;
        let all = set(true, 2, &["a", "b", "c", "d"]);
        let streams = [("a", 990), ("b", 990), ("c", 990), ("d", 990)];
        let members = streams.iter().map(|(n, f)| replica(n, *f, None)).collect();
        let v = view(Some(("p", &[], None)), members);
        let l = primary(&Names::Off, &streams);
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&Names::Off, &[])),
            Step::SetNames(all.clone())
        );
        let l = primary(&all, &streams);
        assert_eq!(
            plan(&c, "p", &v, &l, &in_force(&all, &["a", "b", "c", "d"])),
            Step::WriteKey(key(&["a", "b", "c", "d"], 3))
        );
    }

    #[test]
    fn only_named_standbys_that_see_a_quorum_may_take_over() {
        let c = cfg(SyncMode::On, false);
        let fresh = Some(61);
        let v = view(
            Some(("p", &["a"], None)),
            vec![replica("a", 900, fresh), replica("b", 990, fresh)],
        );
        assert_eq!(may_take_over(&c, "a", &v, Lsn(900)), Ok(()));
        assert!(may_take_over(&c, "b", &v, Lsn(990)).is_err());
        // Unless there is no key at all.
        let none = view(None, vec![]);
        assert_eq!(may_take_over(&c, "b", &none, Lsn(0)), Ok(()));
        let mut unreadable = v.clone();
        unreadable.sync_unreadable = true;
        assert!(may_take_over(&c, "a", &unreadable, Lsn(900)).is_err());
        // Quorum 2 of {a, b}: a needs b's position, published after the
        // leader left, and must not be behind it.
        let q = |b_rev: Option<i64>, b_lsn: u64| {
            view(
                Some(("p", &["a", "b"], Some(2))),
                vec![replica("a", 900, fresh), replica("b", b_lsn, b_rev)],
            )
        };
        assert!(may_take_over(&c, "a", &q(Some(40), 800), Lsn(900)).is_err());
        assert_eq!(may_take_over(&c, "a", &q(fresh, 800), Lsn(900)), Ok(()));
        assert!(may_take_over(&c, "a", &q(fresh, 950), Lsn(900)).is_err());
        // Synchronous mode off: no rule.
        let off = cfg(SyncMode::Off, false);
        assert_eq!(may_take_over(&off, "b", &v, Lsn(0)), Ok(()));
    }

    #[test]
    fn names_round_trip() {
        for n in [
            Names::Off,
            Names::AnyOne,
            set(false, 1, &["node2"]),
            set(true, 2, &["a", "b\"q", "c"]),
        ] {
            assert_eq!(Names::parse(&n.render()), n, "{}", n.render());
        }
        assert_eq!(set(false, 1, &["n2"]).render(), "FIRST 1 (\"n2\")");
        assert!(matches!(Names::parse("n2"), Names::Unknown(_)));
        assert!(matches!(Names::parse("FIRST 3 (\"a\")"), Names::Unknown(_)));
    }

    #[test]
    fn a_key_covers_a_setting_only_if_every_ack_set_meets_every_quorum() {
        assert!(key(&["a"], 1).covers(&set(false, 1, &["a"])));
        assert!(!key(&["a"], 1).covers(&set(false, 1, &["b"])));
        assert!(!key(&["a", "b"], 1).covers(&set(false, 1, &["a"])));
        assert!(key(&["a", "b"], 2).covers(&set(false, 1, &["a"])));
        assert!(key(&["a", "b", "c", "d"], 3).covers(&set(true, 2, &["a", "b", "c", "d"])));
        assert!(!key(&["a", "b", "c", "d"], 2).covers(&set(true, 2, &["a", "b", "c", "d"])));
        assert!(!key(&["a"], 1).covers(&Names::AnyOne));
        assert!(KeySet::empty().covers(&Names::AnyOne));
    }
}
