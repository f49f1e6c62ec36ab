//! Rolling restarts (`leasedog restart`), pure: what this member does about
//! the `restart` request in etcd. The CLI writes the request; every agent
//! reads it in its cycle and the order follows from the member keys:
//! replicas first, one at a time in name order, each only once those before
//! it restarted and stream again; the primary last, in place under its key
//! and watchdog (PostgreSQL stops, the leader's loop starts it again as
//! after a crash: no failover). Each member publishes the request's id in
//! its member key (`restarted`) once it restarted or found the request not
//! meant for it; the leader deletes the request when everyone has.
//!
//! With `switchover` (`restart --switchover`), the primary's turn is a
//! switchover instead: the leader writes the `failover` key (as `leasedog
//! switchover` without `--to`: the best replica, which has restarted
//! already), the HA core carries it out as any switchover, and the former
//! primary, now a replica, is then restarted like the others. If the
//! switchover does not happen (refused or abandoned by the HA core) and the
//! leader still leads, the request ends there: the primary is not restarted
//! in place, which the operator chose not to have.
//!
//! A request with `scheduled_at` (`restart --at`) is nobody's business
//! before its time ([`timing`]): the leader starts it then by taking the
//! time out of the key, and drops it if it first sees it more than 1.5
//! loop_wait late, as Patroni drops a stale scheduled action.
//!
//! Nothing here touches the fence: stopping PostgreSQL is always safe, and
//! starting it again is the HA core's decision, under its usual rules.

use crate::cluster::{ClusterView, Member, RestartRequest};

/// What this member does about the request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do (already done, or waiting for the others to finish).
    Idle,
    /// Not meant for this member: publish the id without restarting.
    Skip,
    /// Stop PostgreSQL now and publish the id; the HA loop starts it again.
    Restart,
    /// The leader's turn with `switchover`: write the `failover` key (no
    /// target: the best replica); restarted as a replica afterwards.
    Switchover,
    /// Its turn has not come: why.
    Wait(String),
    /// The leader: everyone is done, delete the request.
    Finish,
    /// The leader: the switchover it asked for did not happen and it still
    /// leads: delete the request without restarting, for this reason.
    Abandon(String),
}

/// This member as the step sees it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Me<'a> {
    pub name: &'a str,
    /// This agent already restarted or skipped for this request (its
    /// member key may not show it yet).
    pub carried_out: bool,
    /// Its PostgreSQL has a pending restart.
    pub pending: bool,
    /// Its PostgreSQL runs.
    pub running: bool,
    /// As the leader, this agent wrote the `failover` key for this
    /// request's switchover (kept in memory only: an agent restarted
    /// meanwhile asks again).
    pub handed_over: bool,
}

/// Whether `req` is meant for member `name`, which leads or not and has a
/// pending restart or not.
pub fn meant_for(req: &RestartRequest, name: &str, leads: bool, pending: bool) -> bool {
    (req.members.is_empty() || req.members.iter().any(|m| m == name))
        && (!req.pending || pending)
        && match req.role.as_deref() {
            Some("primary") => leads,
            Some("replica") => !leads,
            _ => true,
        }
}

fn done(req: &RestartRequest, m: &Member) -> bool {
    m.info.restarted.as_deref() == Some(req.id.as_str())
}

/// Done and running again: a replica streams, the primary answers.
fn settled(req: &RestartRequest, m: &Member, leads: bool) -> bool {
    done(req, m) && m.info.state == "running" && (leads || m.info.streaming)
}

/// This member's step (`me`), once the request is due ([`timing`]).
pub fn step(req: &RestartRequest, view: &ClusterView, me: &Me) -> Step {
    if view.paused() {
        return Step::Wait("maintenance mode: restarts wait for resume".into());
    }
    let Some(leader) = view.leader.as_ref().map(|l| l.name.as_str()) else {
        return Step::Wait("no leader".into());
    };
    let leads = leader == me.name;
    let mut replicas: Vec<&Member> = view.members.iter().filter(|m| m.name != leader).collect();
    replicas.sort_by(|a, b| a.name.cmp(&b.name));
    if me.carried_out {
        let everyone = view
            .members
            .iter()
            .all(|m| settled(req, m, m.name == leader) || (m.name == me.name && me.running));
        return if leads && everyone {
            Step::Finish
        } else {
            Step::Idle
        };
    }
    // A former primary that handed over is still the primary this request
    // meant (`--role primary`).
    if !meant_for(req, me.name, leads || me.handed_over, me.pending) {
        return Step::Skip;
    }
    let before: Vec<&&Member> = if leads {
        replicas.iter().collect()
    } else {
        replicas
            .iter()
            .filter(|m| m.name.as_str() < me.name)
            .collect()
    };
    if let Some(m) = before.iter().find(|m| !settled(req, m, false)) {
        return Step::Wait(if done(req, m) {
            format!("{} restarted and does not stream yet", m.name)
        } else {
            format!("{} restarts first", m.name)
        });
    }
    if leads && req.switchover {
        if me.handed_over {
            return match &view.failover {
                Some(_) => Step::Wait("the switchover is under way".into()),
                None => Step::Abandon(
                    "the switchover did not happen (refused or abandoned: see the log above); \
                     the primary was not restarted"
                        .into(),
                ),
            };
        }
        if view.failover.is_some() {
            return Step::Wait("another switchover is requested: it goes first".into());
        }
        if !me.running {
            return Step::Wait("PostgreSQL is not running".into());
        }
        return Step::Switchover;
    }
    if !me.running {
        return Step::Wait("PostgreSQL is not running".into());
    }
    Step::Restart
}

/// Whether a request runs now, by its `scheduled_at` (`restart --at`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Timing {
    /// Not scheduled (or started): the request runs.
    Now,
    /// Not yet, or not for this member to start: as if there were no
    /// request; look again in this many ms (None: at the usual time).
    Hold(Option<u64>),
    /// The leader: its time has come: take the time out of the key, after
    /// which every member runs it.
    Start,
    /// The leader: delete the request without running it, for this reason.
    Drop(String),
}

/// How the request stands at `now_ms` (unix ms) for this member, which
/// leads or not. As Patroni's scheduled actions: nothing in maintenance
/// mode; a time more than 1.5 `loop_wait_ms` past is stale and dropped,
/// not run at some arbitrary later moment (agents were down, a clock
/// jumped). Only the leader starts or drops a schedule, so every member
/// sees the same outcome: a started request has no time left in it and is
/// never stale.
pub fn timing(
    req: &RestartRequest,
    leads: bool,
    paused: bool,
    now_ms: u64,
    loop_wait_ms: u64,
) -> Timing {
    let Some(at) = req.scheduled_at.as_deref() else {
        return Timing::Now;
    };
    if paused {
        return Timing::Hold(None);
    }
    let Some(when) = crate::cluster::parse_time(at) else {
        return if leads {
            Timing::Drop(format!(
                "scheduled at an unreadable time {} (expected ISO 8601 UTC or unix seconds)",
                crate::config::excerpt(at)
            ))
        } else {
            Timing::Hold(None)
        };
    };
    let when_ms = when.saturating_mul(1000);
    if now_ms < when_ms {
        return Timing::Hold(Some(when_ms - now_ms));
    }
    if now_ms - when_ms > loop_wait_ms * 3 / 2 {
        return if leads {
            Timing::Drop(format!(
                "stale: scheduled at {} ({} s ago, more than 1.5 loop_wait)",
                crate::cluster::format_time(when),
                (now_ms - when_ms) / 1000
            ))
        } else {
            Timing::Hold(None)
        };
    }
    if leads {
        Timing::Start
    } else {
        // The leader starts it; its write does not wake us.
        Timing::Hold(Some(loop_wait_ms.min(1000)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Leader, MemberInfo, Role};

    fn member(name: &str, restarted: Option<&str>, streaming: bool) -> Member {
        Member {
            name: name.into(),
            info: MemberInfo {
                state: "running".into(),
                role: if name == "a" {
                    Role::Primary
                } else {
                    Role::Replica
                },
                streaming,
                restarted: restarted.map(String::from),
                ..Default::default()
            },
            lease: Some(9),
        }
    }

    fn view(members: Vec<Member>) -> ClusterView {
        ClusterView {
            leader: Some(Leader {
                name: "a".into(),
                lease: 9,
                create_revision: 1,
                mod_revision: 1,
            }),
            members,
            ..Default::default()
        }
    }

    /// Member `name`: carried out, pending, running; not handed over.
    fn me(name: &str, carried_out: bool, pending: bool, running: bool) -> Me<'_> {
        Me {
            name,
            carried_out,
            pending,
            running,
            handed_over: false,
        }
    }

    fn req() -> RestartRequest {
        RestartRequest {
            id: "r1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn replicas_one_at_a_time_then_the_primary() {
        let r = req();
        // Nobody has restarted: b first, c waits for b, a waits for both.
        let v = view(vec![
            member("a", None, false),
            member("b", None, true),
            member("c", None, true),
        ]);
        assert_eq!(step(&r, &v, &me("b", false, false, true)), Step::Restart);
        assert_eq!(
            step(&r, &v, &me("c", false, false, true)),
            Step::Wait("b restarts first".into())
        );
        assert!(matches!(
            step(&r, &v, &me("a", false, false, true)),
            Step::Wait(_)
        ));
        // b restarted but does not stream yet: c still waits.
        let v = view(vec![
            member("a", None, false),
            member("b", Some("r1"), false),
            member("c", None, true),
        ]);
        assert_eq!(
            step(&r, &v, &me("c", false, false, true)),
            Step::Wait("b restarted and does not stream yet".into())
        );
        // b streams again: c's turn; then the primary's.
        let v = view(vec![
            member("a", None, false),
            member("b", Some("r1"), true),
            member("c", None, true),
        ]);
        assert_eq!(step(&r, &v, &me("c", false, false, true)), Step::Restart);
        let v = view(vec![
            member("a", None, false),
            member("b", Some("r1"), true),
            member("c", Some("r1"), true),
        ]);
        assert_eq!(step(&r, &v, &me("a", false, false, true)), Step::Restart);
        // The primary restarted and runs: it finishes the request.
        let v = view(vec![
            member("a", Some("r1"), false),
            member("b", Some("r1"), true),
            member("c", Some("r1"), true),
        ]);
        assert_eq!(step(&r, &v, &me("a", true, false, true)), Step::Finish);
        assert_eq!(step(&r, &v, &me("b", true, false, true)), Step::Idle);
    }

    #[test]
    fn filters_skip_the_others() {
        let v = view(vec![
            member("a", None, false),
            member("b", None, true),
            member("c", None, true),
        ]);
        let pending = RestartRequest {
            pending: true,
            ..req()
        };
        assert_eq!(step(&pending, &v, &me("b", false, false, true)), Step::Skip);
        assert_eq!(
            step(&pending, &v, &me("b", false, true, true)),
            Step::Restart
        );
        let replicas = RestartRequest {
            role: Some("replica".into()),
            ..req()
        };
        assert_eq!(
            step(&replicas, &v, &me("a", false, false, true)),
            Step::Skip
        );
        let named = RestartRequest {
            members: vec!["c".into()],
            ..req()
        };
        assert_eq!(step(&named, &v, &me("b", false, false, true)), Step::Skip);
        // A paused cluster or no leader: wait.
        let mut paused = v.clone();
        paused.config.pause = true;
        assert!(matches!(
            step(&req(), &paused, &me("b", false, false, true)),
            Step::Wait(_)
        ));
        let mut leaderless = v;
        leaderless.leader = None;
        assert!(matches!(
            step(&req(), &leaderless, &me("b", false, false, true)),
            Step::Wait(_)
        ));
    }

    /// `--switchover`: after the replicas, the leader hands over instead of
    /// restarting; while the request is under way it waits; then the new
    /// leader (a replica that restarted) leads and the former primary, now
    /// a replica, restarts as a replica; the new leader finishes.
    #[test]
    fn switchover_instead_of_the_primary_in_place() {
        let r = RestartRequest {
            switchover: true,
            ..req()
        };
        let before = view(vec![
            member("a", None, false),
            member("b", None, true),
            member("c", None, true),
        ]);
        assert_eq!(
            step(&r, &before, &me("b", false, false, true)),
            Step::Restart
        );
        assert!(matches!(
            step(&r, &before, &me("a", false, false, true)),
            Step::Wait(_)
        ));
        let replicas_done = view(vec![
            member("a", None, false),
            member("b", Some("r1"), true),
            member("c", Some("r1"), true),
        ]);
        assert_eq!(
            step(&r, &replicas_done, &me("a", false, false, true)),
            Step::Switchover
        );
        // Someone else's switchover (or a scheduled one) goes first.
        let mut busy = replicas_done.clone();
        busy.failover = Some(Default::default());
        assert!(matches!(
            step(&r, &busy, &me("a", false, false, true)),
            Step::Wait(_)
        ));
        // Asked: waits while the key is there...
        let asked = Me {
            handed_over: true,
            ..me("a", false, false, true)
        };
        assert_eq!(
            step(&r, &busy, &asked),
            Step::Wait("the switchover is under way".into())
        );
        // ...and ends the request when it went without a switchover.
        assert!(matches!(step(&r, &replicas_done, &asked), Step::Abandon(_)));
        // Handed over: b leads; a is a replica and restarts as one, also
        // under `--role primary` (it was the primary this request meant).
        let mut after = view(vec![
            member("a", None, false),
            member("b", Some("r1"), false),
            member("c", Some("r1"), true),
        ]);
        after.leader.as_mut().unwrap().name = "b".into();
        assert_eq!(step(&r, &after, &asked), Step::Restart);
        let primary_only = RestartRequest {
            role: Some("primary".into()),
            ..r.clone()
        };
        assert_eq!(step(&primary_only, &after, &asked), Step::Restart);
        assert_eq!(
            step(&primary_only, &after, &me("a", false, false, true)),
            Step::Skip
        );
        assert_eq!(step(&r, &after, &me("b", true, false, true)), Step::Idle);
        // a restarted and streams: the new leader finishes.
        after.members[0] = member("a", Some("r1"), true);
        assert_eq!(step(&r, &after, &me("b", true, false, true)), Step::Finish);
        // Without --switchover the primary restarts in place.
        assert_eq!(
            step(&req(), &replicas_done, &me("a", false, false, true)),
            Step::Restart
        );
    }

    #[test]
    fn scheduled_requests_wait_for_their_time_and_go_stale() {
        let at = |s: &str| RestartRequest {
            scheduled_at: Some(s.into()),
            ..req()
        };
        let lw = 10_000;
        let t = 1_800_000_000u64; // 2027-01-15T08:00:00Z
        let iso = at("2027-01-15T08:00:00Z");
        assert_eq!(timing(&req(), true, false, t * 1000, lw), Timing::Now);
        // Before its time: nobody; wake at it.
        assert_eq!(
            timing(&iso, true, false, t * 1000 - 2500, lw),
            Timing::Hold(Some(2500))
        );
        assert_eq!(
            timing(&at(&t.to_string()), false, false, t * 1000 - 1, lw),
            Timing::Hold(Some(1))
        );
        // Its time: the leader starts it; the others wait for that.
        assert_eq!(timing(&iso, true, false, t * 1000, lw), Timing::Start);
        assert_eq!(
            timing(&iso, true, false, t * 1000 + 15_000, lw),
            Timing::Start
        );
        assert_eq!(
            timing(&iso, false, false, t * 1000 + 1, lw),
            Timing::Hold(Some(1000))
        );
        // More than 1.5 loop_wait late: the leader drops it.
        match timing(&iso, true, false, t * 1000 + 15_001, lw) {
            Timing::Drop(why) => assert!(why.contains("stale"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            timing(&iso, false, false, t * 1000 + 15_001, lw),
            Timing::Hold(None)
        );
        // Maintenance mode: nothing, not even the clean-up.
        assert_eq!(
            timing(&iso, true, true, t * 1000 + 99_000, lw),
            Timing::Hold(None)
        );
        // An unreadable time is dropped by the leader, never run.
        match timing(&at("tomorrow"), true, false, t * 1000, lw) {
            Timing::Drop(why) => assert!(why.contains("unreadable"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            timing(&at("tomorrow"), false, false, t * 1000, lw),
            Timing::Hold(None)
        );
    }
}
