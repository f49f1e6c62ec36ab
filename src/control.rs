//! The local control socket (`control.socket`, mode 0660): one JSON request
//! per line, one JSON reply per line. Only root and the agent's own user may
//! command (checked with the peer's credentials). Garbage gets an error reply
//! and the connection and the agent go on.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"pause"}`, `{"cmd":"resume"}`
//! (`"force":true` to resume although a primary may run without its agent),
//! `{"cmd":"switchover","to":"node2"}` (`to` optional). Commands that change
//! the cluster are handed to the HA loop over a channel and answered once the
//! loop has written them to etcd; `status` is answered from the snapshot.

use crate::snapshot::{self, Shared};
use log::{debug, warn};
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// A command for the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Pause,
    /// `force`: also when a primary may run without its agent.
    Resume {
        force: bool,
    },
    Switchover {
        to: Option<String>,
    },
}

/// A command and where to send the outcome.
pub type Request = (Command, oneshot::Sender<Result<String, String>>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    cmd: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    force: bool,
}

/// Parses one request line.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let w: Wire = serde_json::from_str(line.trim())
        .map_err(|e| format!("not a JSON request ({e}); try {{\"cmd\":\"status\"}}"))?;
    match w.cmd.as_str() {
        "status" => Ok(None),
        "pause" => Ok(Some(Command::Pause)),
        "resume" => Ok(Some(Command::Resume { force: w.force })),
        "switchover" => Ok(Some(Command::Switchover { to: w.to })),
        other => Err(format!(
            "unknown command {other:?}: status, pause, resume or switchover"
        )),
    }
}

fn reply(ok: bool, field: &str, value: serde_json::Value) -> String {
    let mut m = serde_json::Map::new();
    m.insert("ok".into(), ok.into());
    m.insert(field.into(), value);
    serde_json::Value::Object(m).to_string() + "\n"
}

/// Binds the socket (replacing a stale one) with mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .map_err(|e| format!("cannot bind control socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("chmod {}: {e}", path.display()))?;
    Ok(l)
}

/// Serves connections until dropped.
pub async fn serve(listener: UnixListener, shared: Shared, to_loop: mpsc::Sender<Request>) {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                debug!("control accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let allowed = stream
            .peer_cred()
            .map(|c| c.uid() == 0 || c.uid() == me)
            .unwrap_or(false);
        let (shared, to_loop) = (shared.clone(), to_loop.clone());
        tokio::spawn(async move {
            if let Err(e) = session(stream, allowed, shared, to_loop).await {
                debug!("control session: {e}");
            }
        });
    }
}

async fn session(
    stream: UnixStream,
    allowed: bool,
    shared: Shared,
    to_loop: mpsc::Sender<Request>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(300), lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            Ok(Ok(None)) | Err(_) => return Ok(()),
            Ok(Err(e)) => {
                // Not UTF-8 and the like: say so and end this connection.
                w.write_all(
                    reply(false, "error", format!("unreadable request: {e}").into()).as_bytes(),
                )
                .await?;
                return Ok(());
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let out = match parse(&line) {
            Err(e) => reply(false, "error", e.into()),
            Ok(None) => reply(
                true,
                "status",
                crate::api::member_json(&snapshot::read(&shared)),
            ),
            Ok(Some(_)) if !allowed => reply(
                false,
                "error",
                "permission denied: only root and the agent's user may command".into(),
            ),
            Ok(Some(cmd)) => {
                let (tx, rx) = oneshot::channel();
                if to_loop.send((cmd, tx)).await.is_err() {
                    reply(false, "error", "the agent is shutting down".into())
                } else {
                    match tokio::time::timeout(Duration::from_secs(30), rx).await {
                        Ok(Ok(Ok(msg))) => reply(true, "result", msg.into()),
                        Ok(Ok(Err(e))) => reply(false, "error", e.into()),
                        _ => {
                            warn!("control command got no answer from the loop");
                            reply(false, "error", "no answer from the HA loop".into())
                        }
                    }
                }
            }
        };
        w.write_all(out.as_bytes()).await?;
    }
}

/// Sends one request to a local agent's socket and returns the reply line.
pub async fn request(
    path: &Path,
    req: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let work = async {
        let mut s = UnixStream::connect(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?;
        s.write_all(format!("{req}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(s).lines();
        let line = lines
            .next_line()
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the agent closed the connection")?;
        serde_json::from_str(&line).map_err(|e| format!("bad reply {line:?}: {e}"))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "the agent did not answer in time".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse(r#"{"cmd":"pause"}"#), Ok(Some(Command::Pause)));
        assert_eq!(parse(r#"{"cmd":"status"}"#), Ok(None));
        assert_eq!(
            parse(r#"{"cmd":"switchover","to":"n2"}"#),
            Ok(Some(Command::Switchover {
                to: Some("n2".into())
            }))
        );
        assert!(parse("garbage").unwrap_err().contains("not a JSON request"));
        assert!(
            parse(r#"{"cmd":"explode"}"#)
                .unwrap_err()
                .contains("unknown command")
        );
        assert!(parse(r#"{"cmd":"pause","x":1}"#).is_err());
        assert_eq!(
            parse(r#"{"cmd":"resume"}"#),
            Ok(Some(Command::Resume { force: false }))
        );
        assert_eq!(
            parse(r#"{"cmd":"resume","force":true}"#),
            Ok(Some(Command::Resume { force: true }))
        );
    }
}
