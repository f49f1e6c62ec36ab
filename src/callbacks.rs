//! Patroni-style callbacks (`postgresql.callbacks.on_start|on_stop|on_role_change`):
//! run as `<cmd> <action> <role> <scope>` in a task off the loop, killed
//! after a timeout. A failing or hanging callback is logged and never
//! stalls the HA cycle.

use crate::config::Callbacks;
use log::{info, warn};
use std::process::Stdio;
use std::time::Duration;

/// Which event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Start,
    Stop,
    RoleChange,
}

impl Event {
    pub fn action(self) -> &'static str {
        match self {
            Event::Start => "on_start",
            Event::Stop => "on_stop",
            Event::RoleChange => "on_role_change",
        }
    }
}

/// The command line for an event, if one is configured.
pub fn command_for(cb: &Callbacks, ev: Event, role: &str, scope: &str) -> Option<Vec<String>> {
    let cmd = match ev {
        Event::Start => cb.on_start.as_ref(),
        Event::Stop => cb.on_stop.as_ref(),
        Event::RoleChange => cb.on_role_change.as_ref(),
    }?;
    let mut argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
    if argv.is_empty() {
        return None;
    }
    argv.extend([ev.action().to_string(), role.to_string(), scope.to_string()]);
    Some(argv)
}

/// Spawns the callback in its own task; returns at once.
pub fn fire(cb: &Callbacks, ev: Event, role: &str, scope: &str, timeout: Duration) {
    let Some(argv) = command_for(cb, ev, role, scope) else {
        return;
    };
    tokio::spawn(run(argv, timeout));
}

/// Runs a callback to completion or until the timeout kills it.
pub async fn run(argv: Vec<String>, timeout: Duration) {
    {
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_remove("NOTIFY_SOCKET")
            .kill_on_drop(true);
        let shown = argv.join(" ");
        match cmd.spawn() {
            Err(e) => warn!("callback {shown}: cannot run: {e}"),
            Ok(mut child) => match tokio::time::timeout(timeout, child.wait()).await {
                Ok(Ok(st)) if st.success() => info!("callback {shown}: done"),
                Ok(Ok(st)) => warn!("callback {shown}: exited with {st}"),
                Ok(Err(e)) => warn!("callback {shown}: {e}"),
                Err(_) => warn!("callback {shown}: killed after {timeout:?}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let cb = Callbacks {
            on_start: Some("/usr/local/bin/notify --flag".into()),
            ..Default::default()
        };
        assert_eq!(
            command_for(&cb, Event::Start, "primary", "main").unwrap(),
            [
                "/usr/local/bin/notify",
                "--flag",
                "on_start",
                "primary",
                "main"
            ]
        );
        assert_eq!(command_for(&cb, Event::Stop, "primary", "main"), None);
    }
}
