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
    /// Its turn has not come: why.
    Wait(String),
    /// The leader: everyone is done, delete the request.
    Finish,
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

/// This member's step. `carried_out`: this agent already restarted or
/// skipped for this request (its member key may not show it yet);
/// `pending`: its PostgreSQL has a pending restart; `running`: it runs.
pub fn step(
    req: &RestartRequest,
    view: &ClusterView,
    me: &str,
    carried_out: bool,
    pending: bool,
    running: bool,
) -> Step {
    if view.paused() {
        return Step::Wait("maintenance mode: restarts wait for resume".into());
    }
    let Some(leader) = view.leader.as_ref().map(|l| l.name.as_str()) else {
        return Step::Wait("no leader".into());
    };
    let leads = leader == me;
    let mut replicas: Vec<&Member> = view.members.iter().filter(|m| m.name != leader).collect();
    replicas.sort_by(|a, b| a.name.cmp(&b.name));
    if carried_out {
        let everyone = view
            .members
            .iter()
            .all(|m| settled(req, m, m.name == leader) || (m.name == me && running));
        return if leads && everyone {
            Step::Finish
        } else {
            Step::Idle
        };
    }
    if !meant_for(req, me, leads, pending) {
        return Step::Skip;
    }
    let before: Vec<&&Member> = if leads {
        replicas.iter().collect()
    } else {
        replicas.iter().filter(|m| m.name.as_str() < me).collect()
    };
    if let Some(m) = before.iter().find(|m| !settled(req, m, false)) {
        return Step::Wait(if done(req, m) {
            format!("{} restarted and does not stream yet", m.name)
        } else {
            format!("{} restarts first", m.name)
        });
    }
    if !running {
        return Step::Wait("PostgreSQL is not running".into());
    }
    Step::Restart
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
        assert_eq!(step(&r, &v, "b", false, false, true), Step::Restart);
        assert_eq!(
            step(&r, &v, "c", false, false, true),
            Step::Wait("b restarts first".into())
        );
        assert!(matches!(
            step(&r, &v, "a", false, false, true),
            Step::Wait(_)
        ));
        // b restarted but does not stream yet: c still waits.
        let v = view(vec![
            member("a", None, false),
            member("b", Some("r1"), false),
            member("c", None, true),
        ]);
        assert_eq!(
            step(&r, &v, "c", false, false, true),
            Step::Wait("b restarted and does not stream yet".into())
        );
        // b streams again: c's turn; then the primary's.
        let v = view(vec![
            member("a", None, false),
            member("b", Some("r1"), true),
            member("c", None, true),
        ]);
        assert_eq!(step(&r, &v, "c", false, false, true), Step::Restart);
        let v = view(vec![
            member("a", None, false),
            member("b", Some("r1"), true),
            member("c", Some("r1"), true),
        ]);
        assert_eq!(step(&r, &v, "a", false, false, true), Step::Restart);
        // The primary restarted and runs: it finishes the request.
        let v = view(vec![
            member("a", Some("r1"), false),
            member("b", Some("r1"), true),
            member("c", Some("r1"), true),
        ]);
        assert_eq!(step(&r, &v, "a", true, false, true), Step::Finish);
        assert_eq!(step(&r, &v, "b", true, false, true), Step::Idle);
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
        assert_eq!(step(&pending, &v, "b", false, false, true), Step::Skip);
        assert_eq!(step(&pending, &v, "b", false, true, true), Step::Restart);
        let replicas = RestartRequest {
            role: Some("replica".into()),
            ..req()
        };
        assert_eq!(step(&replicas, &v, "a", false, false, true), Step::Skip);
        let named = RestartRequest {
            members: vec!["c".into()],
            ..req()
        };
        assert_eq!(step(&named, &v, "b", false, false, true), Step::Skip);
        // A paused cluster or no leader: wait.
        let mut paused = v.clone();
        paused.config.pause = true;
        assert!(matches!(
            step(&req(), &paused, "b", false, false, true),
            Step::Wait(_)
        ));
        let mut leaderless = v;
        leaderless.leader = None;
        assert!(matches!(
            step(&req(), &leaderless, "b", false, false, true),
            Step::Wait(_)
        ));
    }
}
