//! The local control socket (`control.socket`, mode 0660): one JSON request
//! per line, one JSON reply per line. Only root and the agent's own user may
//! command (checked with the peer's credentials). Garbage gets an error reply
//! and the connection and the agent go on.
//!
//! Bounded whatever a client does: a request line may be at most
//! [`MAX_LINE_BYTES`] (a longer one gets an error reply and the connection is
//! closed, having buffered no more than the limit), and at most
//! [`MAX_CONNECTIONS`] clients are served at once (one more gets an error
//! line and is closed at once), so no local client can exhaust the agent's
//! memory or tasks.
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
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The longest request line accepted, newline excluded.
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// Clients served at the same time.
pub const MAX_CONNECTIONS: usize = 16;

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

/// Binds the socket (replacing a stale one, refusing a live one) with mode
/// 0660.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    // A socket that answers belongs to a running agent: a second instance
    // must not take it away. Only a stale one (nobody listening) goes.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another leasedog is running: its control socket {} answers; stop it first",
            path.display()
        ));
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
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                debug!("control accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Never wait on this client: one non-blocking write, then close.
            let line = reply(
                false,
                "error",
                format!("too many connections (at most {MAX_CONNECTIONS}): try again later").into(),
            );
            let _ = stream.try_write(line.as_bytes());
            debug!("control socket: refused a connection over the limit of {MAX_CONNECTIONS}");
            continue;
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
            drop(slot);
        });
    }
}

/// One request line, read with at most `MAX_LINE_BYTES + 1` bytes buffered.
#[derive(Debug, PartialEq)]
enum Line {
    Text(String),
    End,
    TooLong,
    NotUtf8,
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    let n = r
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(Line::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_LINE_BYTES {
        return Ok(Line::TooLong);
    }
    Ok(String::from_utf8(buf).map_or(Line::NotUtf8, Line::Text))
}

async fn session(
    stream: UnixStream,
    allowed: bool,
    shared: Shared,
    to_loop: mpsc::Sender<Request>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let line = match tokio::time::timeout(Duration::from_secs(300), read_line(&mut r)).await {
            Ok(Ok(Line::Text(l))) => l,
            Ok(Ok(Line::End)) | Err(_) => return Ok(()),
            Ok(Ok(bad @ (Line::TooLong | Line::NotUtf8))) => {
                // Say so and end this connection: the rest of the stream
                // cannot be split into requests reliably.
                let why = if bad == Line::TooLong {
                    format!(
                        "request line longer than {MAX_LINE_BYTES} bytes: expected one JSON request per line"
                    )
                } else {
                    "unreadable request: expected UTF-8 JSON, one request per line".to_string()
                };
                w.write_all(reply(false, "error", why.into()).as_bytes())
                    .await?;
                return Ok(());
            }
            Ok(Err(e)) => return Err(e),
        };
        if line.trim().is_empty() {
            continue;
        }
        let out = match parse(&line) {
            Err(e) => reply(false, "error", e.into()),
            // The member JSON serialised once per snapshot, as the API's.
            Ok(None) => format!(
                "{{\"ok\":true,\"status\":{}}}\n",
                crate::api::member_body(&snapshot::current(&shared))
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

    #[tokio::test]
    async fn a_live_socket_is_never_taken_over_a_stale_one_is() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("ctl.sock");
        let first = bind(&path).unwrap();
        let e = bind(&path).unwrap_err();
        assert!(e.contains("another leasedog is running"), "{e}");
        // The first instance's socket still answers.
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(first);
        // Its file is left behind, stale: a new instance replaces it.
        assert!(path.exists());
        let _second = bind(&path).unwrap();
    }
    use crate::snapshot::Snapshot;

    /// A served socket in a temporary directory (kept alive by the guard).
    async fn served() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        mpsc::Receiver<Request>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leasedog.sock");
        let listener = bind(&path).unwrap();
        let shared = snapshot::shared(Snapshot::new("demo", "n1"));
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, shared, tx));
        (dir, path, rx)
    }

    async fn read_reply(s: &mut BufReader<UnixStream>) -> serde_json::Value {
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    async fn status(path: &Path) -> Result<serde_json::Value, String> {
        request(
            path,
            &serde_json::json!({"cmd": "status"}),
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn overlong_line_is_refused_and_disconnected() {
        let (_dir, path, _rx) = served().await;
        // A line of exactly the limit is read (and is not JSON).
        let mut s = BufReader::new(UnixStream::connect(&path).await.unwrap());
        let mut at_limit = vec![b'x'; MAX_LINE_BYTES];
        at_limit.push(b'\n');
        s.get_mut().write_all(&at_limit).await.unwrap();
        let r = read_reply(&mut s).await;
        assert_eq!(r["ok"], false);
        assert!(
            r["error"].as_str().unwrap().contains("not a JSON request"),
            "{r}"
        );
        // One byte more without a newline: error, then the server closes
        // while the client could still be sending.
        let mut s = BufReader::new(UnixStream::connect(&path).await.unwrap());
        s.get_mut()
            .write_all(&vec![b'{'; MAX_LINE_BYTES + 1])
            .await
            .unwrap();
        let r = read_reply(&mut s).await;
        assert_eq!(r["ok"], false);
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains(&format!("longer than {MAX_LINE_BYTES} bytes")),
            "{r}"
        );
        // Closed after the error: end of stream (or a reset, when the server
        // left bytes unread).
        let mut rest = Vec::new();
        let end = s.read_to_end(&mut rest).await;
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?} {}", rest.len());
        // A flood of 16 MiB gets the same answer; the agent goes on.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = s.split();
        let flood = async {
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..16 {
                if w.write_all(&chunk).await.is_err() {
                    return true; // the server hung up
                }
            }
            false
        };
        let mut lines = BufReader::new(r);
        let mut line = String::new();
        let (hung_up, _) = tokio::join!(flood, lines.read_line(&mut line));
        assert!(hung_up, "the server stopped reading");
        assert!(line.contains("longer than"), "{line}");
        let st = status(&path).await.unwrap();
        assert_eq!(st["ok"], true);
        assert_eq!(st["status"]["patroni"]["name"], "n1");
        // Not UTF-8: an error too.
        let mut s = BufReader::new(UnixStream::connect(&path).await.unwrap());
        s.get_mut().write_all(b"\xff\xfe\n").await.unwrap();
        let r = read_reply(&mut s).await;
        assert!(r["error"].as_str().unwrap().contains("UTF-8"), "{r}");
    }

    #[tokio::test]
    async fn connections_over_the_limit_are_refused() {
        let (_dir, path, _rx) = served().await;
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            let mut s = BufReader::new(UnixStream::connect(&path).await.unwrap());
            s.get_mut()
                .write_all(b"{\"cmd\":\"status\"}\n")
                .await
                .unwrap();
            assert_eq!(read_reply(&mut s).await["ok"], true);
            held.push(s);
        }
        let mut extra = BufReader::new(UnixStream::connect(&path).await.unwrap());
        let r = read_reply(&mut extra).await;
        assert_eq!(r["ok"], false);
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains(&format!("too many connections (at most {MAX_CONNECTIONS})")),
            "{r}"
        );
        let mut rest = Vec::new();
        extra.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed after the error");
        // Closing one frees a slot (the server notices the close soon).
        held.pop();
        let mut answer = Err(String::new());
        for _ in 0..500 {
            answer = status(&path).await;
            if answer.as_ref().is_ok_and(|r| r["ok"] == true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(answer.unwrap()["ok"], true);
    }

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
