//! The read-only HTTP API (default :8008): health checks with Patroni's
//! paths and status codes, so HAProxy configurations written for Patroni
//! (`option httpchk OPTIONS /primary`) work unchanged; member and cluster
//! JSON; Prometheus metrics.
//!
//! Served by hyper on the loop's runtime from the last cycle's [`Snapshot`];
//! a request never waits on, or blocks, the HA cycle. [`route`] is pure.
//!
//! The cost of serving is bounded: at most [`MAX_CONNECTIONS`] connections
//! are served at once (more get an immediate 503 and are closed), and the
//! member and cluster JSON are serialised once per snapshot and shared by
//! every request that cycle ([`Published`]).
//!
//! Optionally over TLS (`restapi.certfile`, `keyfile`, `cafile`,
//! `verify_client`: rustls, the one etcd-client already builds) and with
//! basic authentication (`restapi.authentication`) on every path but the
//! health checks load balancers poll ([`is_health_check`]). A failed or
//! slow handshake ends that connection only ([`HANDSHAKE_TIMEOUT`]).

use crate::cluster::Role;
use crate::snapshot::{self, Published, Shared, Snapshot, SyncRole};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use log::debug;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at the same time.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a client has to finish the TLS handshake; it holds a connection
/// slot meanwhile.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The API's TLS and basic authentication, from `restapi.*`. Files are read
/// once, when the agent starts; a problem names the key and the file.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The base64 of `user:password` a request's `Authorization: Basic`
    /// must carry.
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials.
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("authentication", &self.token.is_some())
            .finish()
    }
}

impl Security {
    /// From the validated `restapi` section.
    pub fn load(r: &crate::config::RestApiConfig) -> Result<Security, String> {
        let mut s = Security::default();
        if let (Some(cert), Some(key)) = (&r.certfile, &r.keyfile) {
            s.tls = Some(tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
                r, cert, key,
            )?)));
        }
        if let Some(a) = &r.authentication {
            s.token = Some(basic_token(&a.username, &a.password).into_bytes().into());
        }
        Ok(s)
    }

    /// Whether the API serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }
}

fn server_config(
    r: &crate::config::RestApiConfig,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::rustls::ServerConfig, String> {
    use crate::config::{VerifyClient, excerpt};
    use crate::dcs::read_pem;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
    let shown = |p: &std::path::Path| excerpt(&p.display().to_string());
    let certs = |k: &str, p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, String> {
        let pem = read_pem(k, p, "CERTIFICATE")?;
        let v = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{k}: {} is not a valid PEM certificate: {e}", shown(p)))?;
        if v.is_empty() {
            return Err(format!("{k}: {} holds no certificate", shown(p)));
        }
        Ok(v)
    };
    let chain = certs("restapi.certfile", cert)?;
    let pem = read_pem("restapi.keyfile", key, "PRIVATE KEY")?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "restapi.keyfile: {} is not a valid PEM private key: {e}",
            shown(key)
        )
    })?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("restapi.certfile: TLS setup: {e}"))?;
    let builder = match (&r.cafile, r.verify_client) {
        (Some(ca), VerifyClient::Optional | VerifyClient::Required) => {
            let mut roots = RootCertStore::empty();
            for c in certs("restapi.cafile", ca)? {
                roots.add(c).map_err(|e| {
                    format!(
                        "restapi.cafile: {} holds a bad CA certificate: {e}",
                        shown(ca)
                    )
                })?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if r.verify_client == VerifyClient::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let v = v
                .build()
                .map_err(|e| format!("restapi.cafile: {}: {e}", shown(ca)))?;
            builder.with_client_cert_verifier(v)
        }
        _ => {
            if let Some(ca) = &r.cafile {
                // Checked all the same, so that a later verify_client works.
                certs("restapi.cafile", ca)?;
            }
            builder.with_no_client_auth()
        }
    };
    let mut config = builder.with_single_cert(chain, private).map_err(|e| {
        format!(
            "restapi.keyfile: {} does not go with restapi.certfile {}: {e}",
            shown(key),
            shown(cert)
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `base64(user:password)`, the token of `Authorization: Basic`.
pub fn basic_token(user: &str, password: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("{user}:{password}");
    let mut out = String::with_capacity(raw.len().div_ceil(3) * 4);
    for chunk in raw.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The paths HAProxy and load balancers poll: open without authentication
/// (Patroni's rule), whatever the query string.
pub fn is_health_check(path: &str) -> bool {
    matches!(
        path.trim_end_matches('/'),
        "" | "/primary"
            | "/leader"
            | "/master"
            | "/read-write"
            | "/replica"
            | "/read-only"
            | "/health"
            | "/liveness"
            | "/readiness"
            | "/sync"
            | "/synchronous"
            | "/quorum"
            | "/async"
            | "/asynchronous"
            | "/read-only-sync"
            | "/read-only-quorum"
    )
}

/// Whether an `Authorization` header value carries `token` (the scheme
/// `Basic` in any case); the token is compared in constant time.
pub fn authorized(header: Option<&[u8]>, token: &[u8]) -> bool {
    let Some(h) = header else {
        return false;
    };
    let Some(space) = h.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (scheme, rest) = h.split_at(space);
    let given = rest.trim_ascii();
    scheme.eq_ignore_ascii_case(b"basic") && constant_time_eq(given, token)
}

/// Equal bytes, in a time that depends on the lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for (i, y) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// A response before it becomes HTTP.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    /// Shared with other replies when it is a cached body.
    pub body: Arc<str>,
}

fn json(status: u16, v: serde_json::Value) -> Reply {
    json_body(status, v.to_string().into())
}

fn json_body(status: u16, body: Arc<str>) -> Reply {
    Reply {
        status,
        content_type: "application/json",
        body,
    }
}

/// This member's JSON text, serialised once per snapshot.
pub fn member_body(p: &Published) -> Arc<str> {
    p.member_body(|s| member_json(s).to_string())
}

/// The cluster's JSON text, serialised once per snapshot.
pub fn cluster_body(p: &Published) -> Arc<str> {
    p.cluster_body(|s| cluster_json(s).to_string())
}

/// Parses `?lag=` as bytes, with optional kB/MB/GB units (as Patroni).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// This member as `/patroni` shows it.
pub fn member_json(s: &Snapshot) -> serde_json::Value {
    let role = s.role();
    let state = s.local.state_name();
    let mut xlog = serde_json::Map::new();
    if let Some(l) = s.local.lsn {
        if role == Role::Replica {
            xlog.insert("received_location".into(), l.0.into());
            xlog.insert("replayed_location".into(), l.0.into());
        } else {
            xlog.insert("location".into(), l.0.into());
        }
    }
    serde_json::json!({
        "state": state,
        "role": role.to_string(),
        "timeline": s.local.timeline,
        "xlog": xlog,
        "database_system_identifier": s.local.system_id(),
        "pause": s.paused,
        "pending_restart": s.local.running && s.local.pending_restart,
        "leader": s.leader,
        "streaming": s.local.streaming,
        "watchdog": { "armed": s.watchdog_armed },
        "tags": { "nofailover": s.nofailover, "noloadbalance": s.noloadbalance },
        "sync_standby": s.sync_role() == SyncRole::Sync,
        "quorum_standby": s.sync_role() == SyncRole::Quorum,
        "patroni": { "version": env!("CARGO_PKG_VERSION"), "scope": s.scope, "name": s.name },
        "leasedog": { "version": env!("CARGO_PKG_VERSION"), "summary": s.summary },
    })
}

/// All members as `/cluster` shows them.
pub fn cluster_json(s: &Snapshot) -> serde_json::Value {
    let Some(v) = &s.view else {
        return serde_json::json!({ "members": [], "error": "etcd not readable in the last cycle" });
    };
    let leader = v.leader.as_ref().map(|l| l.name.as_str());
    let members: Vec<_> = v
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "role": if leader == Some(m.name.as_str()) { "leader" } else if m.info.role == Role::Replica { "replica" } else { "unknown" },
                "state": m.info.state,
                "api_url": m.info.api_url,
                "conn_url": m.info.conn_url,
                "timeline": m.info.timeline,
                "xlog_location": m.info.xlog_location,
                "tags": m.info.tags,
            })
        })
        .collect();
    serde_json::json!({ "scope": s.scope, "leader": leader, "pause": v.paused(), "members": members })
}

/// Prometheus text format.
pub fn metrics(s: &Snapshot, now: Instant) -> String {
    let b = |x: bool| if x { 1 } else { 0 };
    let mut out = String::new();
    let mut m = |name: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{scope=\"{}\",name=\"{}\"}} {value}\n", s.scope, s.name));
    };
    m(
        "leasedog_primary",
        "1 when this node holds the leader key with PostgreSQL writable.",
        b(s.leader && s.local.writable()).to_string(),
    );
    m(
        "leasedog_replica",
        "1 when PostgreSQL runs as a replica.",
        b(s.role() == Role::Replica).to_string(),
    );
    m(
        "leasedog_postgres_running",
        "1 when PostgreSQL answers.",
        b(s.local.running).to_string(),
    );
    m(
        "leasedog_lease_seconds_left",
        "Time left on this node's etcd lease.",
        format!("{:.3}", s.lease_left_ms.unwrap_or(0) as f64 / 1000.0),
    );
    m(
        "leasedog_watchdog_armed",
        "1 when the watchdog is armed.",
        b(s.watchdog_armed).to_string(),
    );
    m(
        "leasedog_watchdog_last_feed_age_seconds",
        "Seconds since the watchdog was last fed (-1 when never).",
        s.watchdog_last_feed
            .map(|t| format!("{:.3}", now.duration_since(t).as_secs_f64()))
            .unwrap_or("-1".into()),
    );
    m(
        "leasedog_loop_duration_seconds",
        "Duration of the last HA cycle.",
        format!("{:.3}", s.cycle_ms as f64 / 1000.0),
    );
    m(
        "leasedog_replication_lag_bytes",
        "Bytes behind the leader (replicas).",
        s.lag_bytes().unwrap_or(0).to_string(),
    );
    m(
        "leasedog_sync_standby",
        "1 when the sync key names this member as a synchronous (or quorum) standby.",
        b(matches!(s.sync_role(), SyncRole::Sync | SyncRole::Quorum)).to_string(),
    );
    m(
        "leasedog_synchronous_standbys",
        "Standbys the leader's sync key names (0: asynchronous, or commits waiting in strict mode; -1: no sync key).",
        s.sync_standbys()
            .map(|n| n.to_string())
            .unwrap_or("-1".into()),
    );
    m(
        "leasedog_pending_restart",
        "1 when a changed PostgreSQL setting waits for a restart.",
        b(s.local.running && s.local.pending_restart).to_string(),
    );
    m(
        "leasedog_paused",
        "1 in maintenance mode.",
        b(s.paused).to_string(),
    );
    m(
        "leasedog_timeline",
        "PostgreSQL timeline.",
        s.local.timeline.unwrap_or(0).to_string(),
    );
    out
}

/// The answer to a request, from the published snapshot alone.
pub fn route(method: &Method, path: &str, query: &str, p: &Published, now: Instant) -> Reply {
    let s = &p.snap;
    if ![Method::GET, Method::HEAD, Method::OPTIONS].contains(method) {
        return json(
            405,
            serde_json::json!({ "error": "read-only API: use GET, HEAD or OPTIONS" }),
        );
    }
    let running = s.local.running;
    let primary = s.leader && s.local.writable();
    let replica = running && s.local.in_recovery;
    let code = |ok: bool| if ok { 200 } else { 503 };
    let body = member_body(p);
    match path.trim_end_matches('/') {
        "" | "/primary" | "/leader" | "/master" | "/read-write" => json_body(code(primary), body),
        "/replica" => {
            let lag_ok = match query_param(query, "lag") {
                None => true,
                Some(v) => match parse_size(v) {
                    Some(max) => s.lag_bytes().is_some_and(|l| l <= max),
                    None => {
                        return json(
                            400,
                            serde_json::json!({ "error": format!("bad lag value {}: bytes, or a number with kB/MB/GB", crate::config::excerpt(v)) }),
                        );
                    }
                },
            };
            json_body(code(replica && !s.noloadbalance && lag_ok), body)
        }
        "/read-only" => json_body(code(primary || replica), body),
        // Patroni's synchronous checks: a standby the sync key names (an
        // unreadable key is unknown: 503 everywhere).
        "/sync" | "/synchronous" => {
            json_body(code(replica && s.sync_role() == SyncRole::Sync), body)
        }
        "/quorum" => json_body(code(replica && s.sync_role() == SyncRole::Quorum), body),
        "/async" | "/asynchronous" => {
            json_body(code(replica && s.sync_role() == SyncRole::Async), body)
        }
        "/read-only-sync" => json_body(
            code(primary || replica && s.sync_role() == SyncRole::Sync),
            body,
        ),
        "/read-only-quorum" => json_body(
            code(primary || replica && s.sync_role() == SyncRole::Quorum),
            body,
        ),
        "/health" => json_body(code(running), body),
        "/liveness" => {
            let age = now.duration_since(s.cycle_at);
            json(
                code(age < Duration::from_millis(s.stale_after_ms)),
                serde_json::json!({ "last_cycle_ms_ago": age.as_millis() as u64 }),
            )
        }
        "/readiness" => json_body(code(primary || replica), body),
        "/patroni" => json_body(200, body),
        "/cluster" => json_body(200, cluster_body(p)),
        "/metrics" => Reply {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body: metrics(s, now).into(),
        },
        _ => json(
            404,
            serde_json::json!({ "error": format!("no such endpoint: {}", crate::config::excerpt(path)) }),
        ),
    }
}

/// Serves the plain HTTP API until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Shared) {
    serve_with(listener, shared, Security::default()).await
}

/// Serves the API until the task is dropped. Each connection gets a header
/// timeout; malformed requests get 400 from hyper and the listener goes on.
/// With TLS, a handshake that fails or takes over [`HANDSHAKE_TIMEOUT`]
/// ends that connection only.
pub async fn serve_with(listener: TcpListener, shared: Shared, security: Security) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                debug!("API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Never wait on this client: one non-blocking write, then close.
            let _ = stream.try_write(BUSY.as_bytes());
            debug!("API: refused {peer}, over the limit of {MAX_CONNECTIONS} connections");
            continue;
        };
        let shared = shared.clone();
        let security = security.clone();
        tokio::spawn(async move {
            match &security.tls {
                None => connection(stream, peer, shared, security.token).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => connection(tls, peer, shared, security.token).await,
                        Ok(Err(e)) => debug!("API: TLS handshake with {peer} failed: {e}"),
                        Err(_) => debug!(
                            "API: TLS handshake with {peer} not done in {}s: closed",
                            HANDSHAKE_TIMEOUT.as_secs()
                        ),
                    }
                }
            }
            drop(slot);
        });
    }
}

/// The reply to a request: 401 when `token` is set and the path is no
/// health check and the request does not carry it; else [`route`]'s.
fn answer(req: &Request<hyper::body::Incoming>, token: Option<&[u8]>, shared: &Shared) -> Reply {
    if let Some(t) = token
        && !is_health_check(req.uri().path())
        && !authorized(
            req.headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            t,
        )
    {
        return json(
            401,
            serde_json::json!({ "error": "authentication required (restapi.authentication)" }),
        );
    }
    let published = snapshot::current(shared);
    route(
        req.method(),
        req.uri().path(),
        req.uri().query().unwrap_or(""),
        &published,
        Instant::now(),
    )
}

/// Serves HTTP/1 on one accepted (and maybe TLS) connection.
async fn connection<I>(io: I, peer: std::net::SocketAddr, shared: Shared, token: Option<Arc<[u8]>>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let r = answer(&req, token.as_deref(), &shared);
        let body = if req.method() == Method::GET {
            Bytes::from_owner(Body(r.body))
        } else {
            Bytes::new()
        };
        let mut resp = Response::builder()
            .status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header("Content-Type", r.content_type);
        if r.status == 401 {
            resp = resp.header("WWW-Authenticate", "Basic realm=\"leasedog\"");
        }
        let resp = resp.body(Full::new(body));
        async move { resp }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(5))
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    if let Err(e) = tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .unwrap_or(Ok(()))
    {
        debug!("API connection from {peer}: {e}");
    }
}

/// The answer to a connection over [`MAX_CONNECTIONS`].
const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: 50\r\nConnection: close\r\n\r\n{\"error\":\"too many connections: try again later\"}\n";

/// A cached body handed to hyper without a copy.
struct Body(Arc<str>);

impl AsRef<[u8]> for Body {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{DataDir, LocalPostgres, Lsn};

    fn snap(running: bool, in_recovery: bool, leader: bool) -> Snapshot {
        let mut s = Snapshot::new("demo", "n1");
        s.local = LocalPostgres {
            data_dir: DataDir::Empty,
            running,
            in_recovery,
            timeline: Some(1),
            lsn: Some(Lsn(100)),
            streaming: in_recovery,
            following: None,
            replication: Vec::new(),
            unknown: false,
            ..Default::default()
        };
        s.leader = leader;
        s
    }

    fn status(path: &str, s: &Snapshot) -> u16 {
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        route(
            &Method::GET,
            p,
            q,
            &Published::new(s.clone()),
            Instant::now(),
        )
        .status
    }

    #[test]
    fn patroni_status_codes() {
        let primary = snap(true, false, true);
        let replica = snap(true, true, false);
        let stopped = snap(false, false, false);
        let unconfirmed = snap(true, false, false);
        for p in ["/", "/primary", "/leader", "/master", "/read-write"] {
            assert_eq!(status(p, &primary), 200, "{p}");
            assert_eq!(status(p, &replica), 503, "{p}");
            assert_eq!(status(p, &stopped), 503, "{p}");
            assert_eq!(
                status(p, &unconfirmed),
                503,
                "a writable PostgreSQL without the key is not the primary"
            );
        }
        assert_eq!(status("/replica", &replica), 200);
        assert_eq!(status("/replica", &primary), 503);
        assert_eq!(status("/replica", &stopped), 503);
        assert_eq!(
            (
                status("/read-only", &primary),
                status("/read-only", &replica),
                status("/read-only", &stopped)
            ),
            (200, 200, 503)
        );
        assert_eq!(
            (status("/health", &replica), status("/health", &stopped)),
            (200, 503)
        );
        assert_eq!(
            (
                status("/readiness", &primary),
                status("/readiness", &stopped)
            ),
            (200, 503)
        );
        assert_eq!(status("/liveness", &stopped), 200);
        let mut stale = stopped.clone();
        stale.stale_after_ms = 0;
        assert_eq!(status("/liveness", &stale), 503);
        assert_eq!(status("/patroni", &stopped), 200);
        assert_eq!(status("/nope", &stopped), 404);
        assert_eq!(
            route(
                &Method::POST,
                "/primary",
                "",
                &Published::new(primary.clone()),
                Instant::now()
            )
            .status,
            405
        );
        assert_eq!(
            route(
                &Method::OPTIONS,
                "/primary",
                "",
                &Published::new(primary.clone()),
                Instant::now()
            )
            .status,
            200
        );
    }

    #[test]
    fn replica_lag_and_noloadbalance() {
        let mut r = snap(true, true, false);
        let v = crate::cluster::ClusterView {
            leader: Some(crate::cluster::Leader {
                name: "p".into(),
                lease: 1,
                create_revision: 1,
                mod_revision: 1,
            }),
            members: vec![crate::cluster::Member {
                name: "p".into(),
                info: crate::cluster::MemberInfo {
                    xlog_location: Some(100 + 2048),
                    ..Default::default()
                },
                lease: Some(1),
            }],
            ..Default::default()
        };
        r.view = Some(v);
        assert_eq!(r.lag_bytes(), Some(2048));
        assert_eq!(status("/replica?lag=4kB", &r), 200);
        assert_eq!(status("/replica?lag=1024", &r), 503);
        assert_eq!(status("/replica?lag=lots", &r), 400);
        r.noloadbalance = true;
        assert_eq!(status("/replica", &r), 503);
    }

    #[test]
    fn cluster_body_is_serialised_once_per_snapshot() {
        let shared = snapshot::shared(snap(true, false, true));
        let get = |path: &str| {
            route(
                &Method::GET,
                path,
                "",
                &snapshot::current(&shared),
                Instant::now(),
            )
        };
        let (a, b) = (get("/cluster"), get("/cluster"));
        assert_eq!(a.status, 200);
        assert!(
            Arc::ptr_eq(&a.body, &b.body),
            "the second /cluster reuses the first one's body"
        );
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(v["error"], "etcd not readable in the last cycle");
        let (m1, m2) = (get("/patroni"), get("/health"));
        assert!(Arc::ptr_eq(&m1.body, &m2.body));
        // The next cycle's snapshot gets its own body.
        let mut next = snap(true, false, true);
        next.view = Some(crate::cluster::ClusterView::default());
        snapshot::write(&shared, next);
        let c = get("/cluster");
        assert!(!Arc::ptr_eq(&a.body, &c.body));
        assert!(c.body.contains("\"members\":[]"), "{}", c.body);
        assert!(Arc::ptr_eq(&c.body, &get("/cluster").body));
    }

    /// Reads one HTTP response (headers and a Content-Length body).
    async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn connections_over_the_limit_get_503() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = snapshot::shared(snap(true, false, true));
        let server = tokio::spawn(serve(listener, shared));
        // Fill every slot with an idle connection; the server accepts in
        // order, so once the next one is refused, all of these hold a slot.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut refused = String::new();
        extra.read_to_string(&mut refused).await.unwrap();
        assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
        let (head, body) = refused.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{refused}"
        );
        assert!(body.contains("too many connections"));
        // A freed slot serves again.
        idle.pop();
        let mut served = String::new();
        for _ in 0..500 {
            served = http_get(addr, "/cluster").await.unwrap_or_default();
            if served.starts_with("HTTP/1.1 200") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        assert!(served.ends_with(&*cluster_body(&Published::new(snap(true, false, true)))));
        server.abort();
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn synchronous_checks_follow_the_sync_key() {
        use crate::cluster::{ClusterView, Leader, SyncState};
        let with_key = |standbys: &str, quorum: Option<u64>| {
            let mut s = snap(true, true, false);
            s.view = Some(ClusterView {
                leader: Some(Leader {
                    name: "n0".into(),
                    lease: 1,
                    create_revision: 1,
                    mod_revision: 1,
                }),
                sync: Some(SyncState {
                    leader: Some("n0".into()),
                    sync_standby: Some(standbys.into()),
                    quorum,
                    mod_revision: 2,
                }),
                ..Default::default()
            });
            s
        };
        let sync = with_key("n1,n2", None);
        let paths = [
            "/sync",
            "/synchronous",
            "/quorum",
            "/async",
            "/asynchronous",
            "/read-only-sync",
        ];
        let codes = |s: &Snapshot| paths.map(|p| status(p, s));
        assert_eq!(codes(&sync), [200, 200, 503, 503, 503, 200]);
        assert_eq!(
            codes(&with_key("n1,n2", Some(2))),
            [503, 503, 200, 503, 503, 503]
        );
        assert_eq!(codes(&with_key("n2", None)), [503, 503, 503, 200, 200, 503]);
        // An unreadable key or etcd is unknown: no check says yes.
        let mut unknown = sync.clone();
        unknown.view.as_mut().unwrap().sync_unreadable = true;
        assert_eq!(codes(&unknown), [503; 6]);
        let mut blind = sync.clone();
        blind.view = None;
        assert_eq!(codes(&blind), [503; 6]);
        // The primary passes read-only-sync; it is no standby.
        let primary = snap(true, false, true);
        assert_eq!(status("/read-only-sync", &primary), 200);
        assert_eq!(status("/sync", &primary), 503);
        let m = metrics(&sync, Instant::now());
        assert!(
            m.contains("leasedog_sync_standby{scope=\"demo\",name=\"n1\"} 1"),
            "{m}"
        );
        assert!(
            m.contains("leasedog_synchronous_standbys{scope=\"demo\",name=\"n1\"} 2"),
            "{m}"
        );
    }

    #[test]
    fn metrics_text() {
        let mut s = snap(true, false, true);
        s.paused = true;
        let m = metrics(&s, Instant::now());
        assert!(
            m.contains("leasedog_primary{scope=\"demo\",name=\"n1\"} 1"),
            "{m}"
        );
        assert!(m.contains("leasedog_paused{scope=\"demo\",name=\"n1\"} 1"));
        let j = member_json(&s);
        assert_eq!(j["role"], "primary");
        assert_eq!(j["pause"], true);
    }

    #[test]
    fn basic_authentication_rule() {
        // RFC 7617's example.
        assert_eq!(
            basic_token("Aladdin", "open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(basic_token("a", "b"), "YTpi");
        assert_eq!(basic_token("ab", "c"), "YWI6Yw==");
        let t = basic_token("admin", "s3cret");
        let t = t.as_bytes();
        let ok = format!("Basic {}", String::from_utf8_lossy(t));
        assert!(authorized(Some(ok.as_bytes()), t));
        assert!(authorized(Some(ok.replace("Basic", "basic").as_bytes()), t));
        assert!(!authorized(None, t));
        assert!(!authorized(Some(b"Basic"), t));
        assert!(!authorized(Some(b"Bearer YWRtaW46czNjcmV0"), t));
        let wrong = format!("Basic {}", basic_token("admin", "s3creT"));
        assert!(!authorized(Some(wrong.as_bytes()), t));
        assert!(
            !authorized(Some(&ok.as_bytes()[..ok.len() - 1]), t),
            "a prefix"
        );
        assert!(!authorized(Some(format!("{ok}x").as_bytes()), t), "longer");
        for p in [
            "/",
            "",
            "/primary",
            "/leader",
            "/master",
            "/read-write",
            "/replica",
            "/read-only",
            "/health",
            "/liveness",
            "/readiness",
            "/replica/",
        ] {
            assert!(is_health_check(p), "{p}");
        }
        for p in [
            "/patroni",
            "/cluster",
            "/metrics",
            "/nope",
            "/healthz",
            "//patroni",
        ] {
            assert!(!is_health_check(p), "{p}");
        }
    }

    #[tokio::test]
    async fn authentication_closes_all_but_the_health_checks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = snapshot::shared(snap(true, false, true));
        let security = Security::load(&crate::config::RestApiConfig {
            authentication: Some(crate::config::ApiAuthentication {
                username: "admin".into(),
                password: "s3cret".into(),
            }),
            ..Default::default()
        })
        .unwrap();
        assert!(!security.tls());
        assert!(!format!("{security:?}").contains("s3cret"));
        let server = tokio::spawn(serve_with(listener, shared, security));
        for p in ["/primary", "/health?x=1", "/replica?lag=1MB", "/"] {
            let r = http_get(addr, p).await.unwrap();
            assert!(!r.starts_with("HTTP/1.1 401"), "{p}: {r}");
        }
        for p in ["/patroni", "/cluster", "/metrics?x", "/nope"] {
            let r = http_get(addr, p).await.unwrap();
            assert!(r.starts_with("HTTP/1.1 401"), "{p}: {r}");
            assert!(
                r.to_ascii_lowercase()
                    .contains("www-authenticate: basic realm=\"leasedog\""),
                "{r}"
            );
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!(
                "GET /patroni HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
                basic_token("admin", "s3cret")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        server.abort();
    }

    #[test]
    fn tls_files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let notpem = dir.path().join("not.pem");
        std::fs::write(&notpem, "hello").unwrap();
        let cfg = |cert: &std::path::Path, key: &std::path::Path| crate::config::RestApiConfig {
            certfile: Some(cert.into()),
            keyfile: Some(key.into()),
            ..Default::default()
        };
        let e = Security::load(&cfg(&missing, &notpem)).unwrap_err();
        assert!(
            e.starts_with("restapi.certfile:") && e.contains("missing.pem"),
            "{e}"
        );
        let fake_cert = dir.path().join("cert.pem");
        std::fs::write(
            &fake_cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = Security::load(&cfg(&fake_cert, &notpem)).unwrap_err();
        assert!(
            e.starts_with("restapi.keyfile:") && e.contains("not.pem"),
            "{e}"
        );
        let e = Security::load(&cfg(&fake_cert, &missing)).unwrap_err();
        assert!(
            e.starts_with("restapi.keyfile:") && e.contains("missing.pem"),
            "{e}"
        );
    }
}
