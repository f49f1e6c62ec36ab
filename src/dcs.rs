//! etcd v3, the distributed configuration store (DCS): this agent's lease,
//! the leader key's transactions, member keys, and a watch that wakes the
//! loop (DESIGN §2, §4).
//!
//! Facts that shape this module (etcd-client 0.21 against etcd 3.4):
//! - the per-request timeout does not cover streams, so every call here is
//!   wrapped in `tokio::time::timeout` with the caller's budget;
//! - a keep-alive stream against a frozen etcd never returns by itself: it is
//!   dropped after any error or timeout and recreated on the next call;
//! - with several endpoints, a dead one is not evicted by the client and keeps
//!   failing a share of calls: so we keep one client per endpoint, use the
//!   current one, and rotate to the next after an error or timeout.
//!
//! There is no background renewer: [`Dcs::keepalive`] sends one keep-alive
//! and awaits one answer, and only the HA loop calls it. If the loop hangs,
//! renewal stops.

use crate::cluster::{
    ClusterView, DynamicConfig, FailoverRequest, KeyParse, Leader, MemberInfo, Status, parse_key,
};
use crate::ha::ORPHAN_PLACEHOLDER;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions,
};
use log::{debug, warn};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Why an etcd call failed.
#[derive(Debug)]
pub enum DcsError {
    Timeout {
        op: &'static str,
        endpoint: String,
    },
    Etcd {
        op: &'static str,
        endpoint: String,
        source: etcd_client::Error,
    },
    /// etcd closed the connection right after the TLS handshake while we
    /// present a client certificate: how etcd refuses one (TLS 1.3 lets
    /// the client finish its handshake before the server checks it).
    Refused {
        op: &'static str,
        endpoint: String,
        source: etcd_client::Error,
    },
    NoLease,
    /// etcd answered for another lease, or with a shorter TTL than asked:
    /// the lease deadline the fence computes would be wrong.
    Lease(String),
}

impl std::fmt::Display for DcsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DcsError::Timeout { op, endpoint } => write!(f, "etcd {op} timed out ({endpoint})"),
            DcsError::Etcd {
                op,
                endpoint,
                source,
            } => write!(
                f,
                "etcd {op} failed ({endpoint}): {}",
                etcd_error_text(source)
            ),
            DcsError::Refused {
                op,
                endpoint,
                source,
            } => write!(
                f,
                "etcd {op} failed ({endpoint}): etcd closed the connection after the TLS handshake, which is how it refuses a client certificate: check that etcd3.cert is signed by etcd's --trusted-ca-file, is not expired and allows client authentication ({})",
                etcd_error_text(source)
            ),
            DcsError::NoLease => write!(f, "no etcd lease yet"),
            DcsError::Lease(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for DcsError {}

/// An etcd client error with its causes: a failed connection is only
/// "transport error" until its source says why (a refused or expired
/// certificate, a refused connection).
fn etcd_error_text(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::TransportError(t) => {
            format!("transport error: {}", crate::postgres::error_chain(t))
        }
        other => crate::postgres::error_chain(other),
    }
}

/// The answer to a keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    pub lease_id: i64,
    /// The previous lease was gone (or there was none): this is a new one.
    pub granted_new: bool,
    pub ttl_left: i64,
    /// The TTL etcd granted this lease, in seconds.
    pub granted_ttl: i64,
}

/// A leader key move (`Dcs::move_leader`) once its lease was granted.
#[derive(Debug)]
pub struct Moving {
    pub lease_id: i64,
    /// Seconds, as granted.
    pub ttl: i64,
    pub txn_sent: std::time::Instant,
    /// The txn: moved, not moved (the key is not ours as we knew it), or
    /// unknown (the key may be on the new lease, which nobody renews).
    pub moved: Result<bool, DcsError>,
}

/// HTTP/2 pings: etcd (gRPC's enforcement policy) closes a connection
/// whose client pings more often than `--grpc-keepalive-min-time` (5 s by
/// default) or pings with no stream open, and every stream on it ends and is
/// made again. So: every 10 s, only while a stream is open. A dead endpoint
/// is found by each call's own timeout, not by the pings.
///
/// `require_leader`: an etcd member cut off from its quorum refuses every
/// request (watches included) rather than answer from its old state.
fn connect_options(t: &Transport) -> ConnectOptions {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(2))
        .with_keep_alive_while_idle(false)
        .with_require_leader(true);
    if let Some(tls) = &t.tls {
        o = o.with_tls(tls.clone());
    }
    if let Some((user, password)) = &t.user {
        // A token that expired (etcd's --auth-token-ttl, 5 min by default)
        // or was revoked is renewed by the client and the call retried.
        o = o
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true);
    }
    o
}

/// How the agent talks to etcd: TLS (CA, client certificate) and RBAC user,
/// from `etcd3.*`. Files are read once, when the agent starts; a problem
/// names the key and the file.
#[derive(Clone, Default)]
pub struct Transport {
    tls: Option<etcd_client::TlsOptions>,
    /// A client certificate is presented (etcd3.cert).
    client_cert: bool,
    user: Option<(String, String)>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish()
    }
}

/// Reads a PEM file and checks it holds `what` (`CERTIFICATE`, `PRIVATE KEY`).
pub(crate) fn read_pem(key: &str, path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    let shown = crate::config::excerpt(&path.display().to_string());
    let meta = std::fs::metadata(path).map_err(|e| format!("{key}: cannot read {shown}: {e}"))?;
    if !meta.is_file() || meta.len() > 1 << 20 {
        return Err(format!("{key}: {shown} is not a PEM file of at most 1 MiB"));
    }
    let pem = std::fs::read(path).map_err(|e| format!("{key}: cannot read {shown}: {e}"))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("ENCRYPTED") {
        return Err(format!(
            "{key}: {shown} is an encrypted key: give it unencrypted (mode 0600), e.g. `openssl pkey -in enc.key -out etcd.key`"
        ));
    }
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(what));
    if !found {
        return Err(format!(
            "{key}: {shown} holds no PEM block of type {what} (expected -----BEGIN ...{what}-----)"
        ));
    }
    Ok(pem)
}

impl Transport {
    /// From the validated `etcd3` section.
    pub fn load(e: &crate::config::Etcd3Config) -> Result<Transport, String> {
        let mut t = Transport::default();
        if e.protocol == "https" {
            use etcd_client::{Certificate, Identity, TlsOptions};
            let mut tls = TlsOptions::new();
            if let Some(ca) = &e.cacert {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem(
                    "etcd3.cacert",
                    ca,
                    "CERTIFICATE",
                )?));
            }
            if let (Some(cert), Some(key)) = (&e.cert, &e.key) {
                let cert = read_pem("etcd3.cert", cert, "CERTIFICATE")?;
                let key = read_pem("etcd3.key", key, "PRIVATE KEY")?;
                tls = tls.identity(Identity::from_pem(cert, key));
                t.client_cert = true;
            }
            t.tls = Some(tls);
        }
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            t.user = Some((u.clone(), p.clone()));
        }
        Ok(t)
    }
}

/// The etcd side of one agent.
pub struct Dcs {
    endpoints: Vec<String>,
    transport: Transport,
    clients: Vec<Option<Client>>,
    current: usize,
    /// When each endpoint last timed out: a hung member (SIGSTOP, a stalled
    /// disk) is passed over by the next rotation for `HUNG_MEMORY`, so that
    /// a fast failure elsewhere ("no leader" during an election) is retried
    /// where answers come, not on the member that just cost a timeout.
    timed_out_at: Vec<Option<tokio::time::Instant>>,
    /// Since when each endpoint has failed fast without a success between
    /// ("no leader": an election, or a member cut from its quorum, which
    /// says so for as long as the cut lasts). Retried for `ELECTION_TIME`,
    /// then passed over like a hung one.
    failing_since: Vec<Option<(tokio::time::Instant, tokio::time::Instant)>>,
    prefix: String,
    name: String,
    /// The ttl new leases are asked for (the configured one).
    ttl: i64,
    lease: Option<i64>,
    /// The TTL etcd granted `lease`: its renewals must answer no less.
    lease_ttl: i64,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// The last `config` value that could be read: an unreadable one (odd
    /// data, a hostile writer) never ends maintenance mode or changes
    /// settings.
    last_good_config: Option<crate::cluster::DynamicConfig>,
    /// When unreadable keys were last reported (once per 30 s, counted).
    skipped_reported: Option<std::time::Instant>,
    /// Keys asked for per page of a prefix read: halved when a page is too
    /// large for gRPC, grown again when pages come back small.
    page_limit: usize,
    /// The `status` value our last leader confirmation wrote, and the
    /// revision that wrote it.
    status_written: Option<(String, i64)>,
    /// From the last prefix read: the `status` key's mod_revision and the
    /// leader key's create_revision.
    status_seen: Option<(Option<i64>, Option<i64>)>,
    /// The watch's copy of the cluster's keys (`run` only; the CLI reads).
    cache: Option<SharedCache>,
}

/// The cluster's keys as the watch keeps them: a read of the prefix at one
/// revision, then every event after it, in order (an etcd txn's events
/// come in one answer, so the copy is always that of a whole revision).
/// `synced` is false until that read and again from the moment the stream
/// ends (an error, a compaction, a member cut from its quorum:
/// `require_leader`, a connection whose pings go unanswered) until the
/// next read. Patroni's etcd3 client keeps the same copy.
#[derive(Default)]
pub struct WatchCache {
    synced: bool,
    revision: i64,
    kvs: std::collections::BTreeMap<Vec<u8>, etcd_client::KeyValue>,
}

impl WatchCache {
    /// Whether the copy is in step with etcd (tests).
    pub fn synced(&self) -> bool {
        self.synced
    }
}

/// The watch's copy, shared with the loop.
pub type SharedCache = Arc<std::sync::Mutex<WatchCache>>;

/// Less time than this left after a failed attempt: no next endpoint.
const MIN_RETRY: Duration = Duration::from_millis(100);

/// The pause before another round of the endpoints (all failed fast).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// How long an endpoint that timed out is passed over by rotations.
const HUNG_MEMORY: Duration = Duration::from_secs(10);

/// How long an endpoint that keeps failing fast is still preferred to one
/// that timed out: about what an etcd election takes.
const ELECTION_TIME: Duration = Duration::from_secs(2);

/// The most keys one page of a prefix read asks for.
const MAX_PAGE_KEYS: usize = 1024;

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the key space.
    vec![0]
}

/// gRPC refused to decode an answer over its message size limit.
fn too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("message length too large"))
}

/// A `sync` key that cannot be read: unknown (`sync_unreadable`), and a
/// placeholder naming no leader that carries its revision, so that the
/// leader can replace it by compare-and-swap (with no revision, its write
/// would compare for an absent key and fail for as long as the garbage
/// stays; a promoting leader would never promote).
fn unreadable_sync(view: &mut ClusterView, mod_revision: i64) {
    view.sync_unreadable = true;
    view.sync = Some(crate::cluster::SyncState {
        mod_revision,
        ..Default::default()
    });
}

/// Values larger than this are skipped as unreadable: no key leasedog or
/// Patroni writes comes near it.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

impl Dcs {
    /// No I/O: clients connect on first use.
    pub fn new(endpoints: Vec<String>, prefix: String, name: String, ttl_secs: u64) -> Dcs {
        let n = endpoints.len().max(1);
        Dcs {
            endpoints,
            transport: Transport::default(),
            clients: (0..n).map(|_| None).collect(),
            current: 0,
            timed_out_at: vec![None; n],
            failing_since: vec![None; n],
            prefix,
            name,
            ttl: ttl_secs as i64,
            lease_ttl: ttl_secs as i64,
            lease: None,
            keeper: None,
            last_good_config: None,
            skipped_reported: None,
            page_limit: MAX_PAGE_KEYS,
            status_written: None,
            status_seen: None,
            cache: None,
        }
    }

    /// TLS and RBAC user for every connection (default: plain, no user).
    pub fn with_transport(mut self, transport: Transport) -> Dcs {
        self.transport = transport;
        self
    }

    pub fn lease_id(&self) -> Option<i64> {
        self.lease
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel)
    }

    fn endpoint(&self) -> String {
        self.endpoints
            .get(self.current)
            .cloned()
            .unwrap_or_default()
    }

    /// After a failure: the next call goes to the next endpoint, on a fresh
    /// keep-alive stream.
    /// The next endpoint in turn that has not timed out lately; when all
    /// have, the one that timed out longest ago (possibly the current one).
    fn rotate(&mut self) {
        self.keeper = None;
        let n = self.endpoints.len();
        if n > 1 {
            self.clients[self.current] = None;
            let now = tokio::time::Instant::now();
            let ring = (1..=n).map(|k| (self.current + k) % n);
            // When it last let us down: a recent timeout, or the last of fast
            // failures that have lasted longer than an election.
            let bad_since = |i: usize| {
                let hung = self.timed_out_at[i].filter(|t| now.duration_since(*t) < HUNG_MEMORY);
                let failing = self.failing_since[i]
                    .filter(|(first, _)| now.duration_since(*first) >= ELECTION_TIME)
                    .map(|(_, last)| last);
                match (hung, failing) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                }
            };
            let fresh = ring.clone().find(|&i| bad_since(i).is_none());
            self.current = fresh
                .or_else(|| ring.min_by_key(|&i| bad_since(i)))
                .unwrap_or((self.current + 1) % n);
        }
    }

    /// The current endpoint answered with an error (not a timeout).
    fn failed_fast(&mut self) {
        let now = tokio::time::Instant::now();
        // A streak: failures with no success and no long pause between them
        // (an endpoint left alone for a while starts a new one).
        let first = self.failing_since[self.current]
            .filter(|(_, last)| now.duration_since(*last) < ELECTION_TIME)
            .map_or(now, |(f, _)| f);
        self.failing_since[self.current] = Some((first, now));
    }

    /// Runs `f` on the current endpoint's client within `timeout`.
    async fn call<T, F, Fut>(
        &mut self,
        op: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, DcsError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let endpoint = self.endpoint();
        let res = tokio::time::timeout(timeout, async {
            let client = match &self.clients[self.current] {
                Some(c) => c.clone(),
                None => {
                    let c = Client::connect(
                        [endpoint.as_str()],
                        Some(connect_options(&self.transport)),
                    )
                    .await?;
                    self.clients[self.current] = Some(c.clone());
                    c
                }
            };
            f(client).await
        })
        .await;
        match res {
            Ok(Ok(v)) => {
                self.timed_out_at[self.current] = None;
                self.failing_since[self.current] = None;
                Ok(v)
            }
            Ok(Err(source)) => {
                // An answer too large for gRPC says nothing about the endpoint.
                if !too_large(&source) {
                    self.failed_fast();
                    self.rotate();
                }
                if self.transport.client_cert && {
                    let t = etcd_error_text(&source);
                    t.contains("connection closed") || t.contains("broken pipe")
                } {
                    return Err(DcsError::Refused {
                        op,
                        endpoint,
                        source,
                    });
                }
                Err(DcsError::Etcd {
                    op,
                    endpoint,
                    source,
                })
            }
            Err(_) => {
                self.timed_out_at[self.current] = Some(tokio::time::Instant::now());
                self.rotate();
                Err(DcsError::Timeout { op, endpoint })
            }
        }
    }

    /// One linearizable read of the cluster prefix, in pages that all read
    /// the same revision. Keys with odd data are logged and skipped.
    ///
    /// Why pages: a single answer is limited to 4 MiB by gRPC; a prefix
    /// holding more (a hostile writer, thousands of junk keys) would make
    /// every read fail and every member blind. A page too large to decode
    /// is asked again at half the size, down to one key; a single key too
    /// large even alone is skipped as unreadable.
    pub async fn read(&mut self, timeout: Duration) -> Result<ClusterView, DcsError> {
        let start = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            let slice = self.attempt_time(attempt, start, timeout);
            match self.read_on(slice).await {
                Err(e) => match self.retry_pause(&e, &mut attempt, start, timeout) {
                    Some(pause) => {
                        debug!("{e}: reading from the next etcd endpoint");
                        tokio::time::sleep(pause).await;
                    }
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }

    /// With several endpoints, the first attempt of a call gets half its
    /// time (a hung member must leave time for the next), later ones all
    /// that is left.
    fn attempt_time(
        &self,
        attempt: usize,
        start: tokio::time::Instant,
        timeout: Duration,
    ) -> Duration {
        let left = timeout.saturating_sub(start.elapsed());
        if attempt == 0 && self.endpoints.len() > 1 {
            left / 2
        } else {
            left
        }
    }

    /// Whether a failed renewal or read is tried again (on the next
    /// endpoint: `call` rotated) and after what pause. Only with several
    /// endpoints, only for errors that concern the endpoint (unreachable,
    /// hung, no raft leader during an election), at most two rounds of the
    /// endpoints, and only while time is left: the caller's timeout still
    /// bounds the whole call.
    fn retry_pause(
        &self,
        e: &DcsError,
        attempt: &mut usize,
        start: tokio::time::Instant,
        timeout: Duration,
    ) -> Option<Duration> {
        let about_the_endpoint = match e {
            DcsError::Timeout { .. } => true,
            DcsError::Etcd { source, .. } => !too_large(source),
            DcsError::Refused { .. } => true,
            _ => false,
        };
        *attempt += 1;
        let left = timeout.saturating_sub(start.elapsed());
        (about_the_endpoint
            && self.endpoints.len() > 1
            && *attempt < 2 * self.endpoints.len()
            && left >= MIN_RETRY)
            .then(|| {
                // A fast failure (refused, "no leader"): give an election a
                // moment before the next round.
                if *attempt >= self.endpoints.len() {
                    RETRY_PAUSE.min(left / 2)
                } else {
                    Duration::ZERO
                }
            })
    }

    /// `read` on the current endpoint.
    async fn read_on(&mut self, timeout: Duration) -> Result<ClusterView, DcsError> {
        self.status_seen = None;
        let deadline = tokio::time::Instant::now() + timeout;
        let prefix = self.prefix.clone();
        let end = prefix_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = 0i64;
        let mut kvs: Vec<etcd_client::KeyValue> = Vec::new();
        let mut oversize: Vec<String> = Vec::new();
        let mut limit = self.page_limit;
        let mut largest_page = 0usize;
        loop {
            let res = self
                .read_page(&start, &end, limit, revision, false, deadline)
                .await;
            let resp = match res {
                Ok(r) => r,
                Err(DcsError::Etcd { source, .. }) if too_large(&source) && limit > 1 => {
                    limit /= 2;
                    self.page_limit = limit;
                    continue;
                }
                Err(DcsError::Etcd { source, .. }) if too_large(&source) => {
                    // One key alone is over the limit: learn its name and
                    // step over it.
                    let resp = self
                        .read_page(&start, &end, 1, revision, true, deadline)
                        .await?;
                    let Some(kv) = resp.kvs().first() else {
                        break;
                    };
                    oversize.push(String::from_utf8_lossy(kv.key()).into_owned());
                    start = kv.key().to_vec();
                    start.push(0);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let bytes: usize = resp
                .kvs()
                .iter()
                .map(|kv| kv.key().len() + kv.value().len())
                .sum();
            largest_page = largest_page.max(bytes);
            let more = resp.more();
            let mut resp = resp;
            let page = resp.take_kvs();
            if let Some(last) = page.last() {
                start = last.key().to_vec();
                start.push(0);
            }
            let empty = page.is_empty();
            kvs.extend(page);
            if !more || empty {
                break;
            }
        }
        // Pages came back small: ask for more per page next time.
        if largest_page < 1024 * 1024 && self.page_limit < MAX_PAGE_KEYS {
            self.page_limit = (self.page_limit * 2).min(MAX_PAGE_KEYS);
        }
        Ok(self.view_from(revision, &kvs, &oversize))
    }

    /// The cluster as the watch keeps it, when the watch is in step with
    /// etcd (`WatchCache`); None otherwise. No call to etcd.
    pub fn cached_view(&mut self) -> Option<ClusterView> {
        let (revision, kvs) = {
            let cache = self.cache.as_ref()?.lock().ok()?;
            if !cache.synced {
                return None;
            }
            (
                cache.revision,
                cache.kvs.values().cloned().collect::<Vec<_>>(),
            )
        };
        Some(self.view_from(revision, &kvs, &[]))
    }

    /// Uses the watch's copy of the cluster's keys for [`Dcs::cached_view`].
    pub fn use_cache(&mut self, cache: SharedCache) {
        self.cache = Some(cache);
    }

    /// The view of the keys read at `revision` (`oversize`: keys too large
    /// to read at all). Keys with odd data are logged and skipped.
    fn view_from(
        &mut self,
        revision: i64,
        kvs: &[etcd_client::KeyValue],
        oversize: &[String],
    ) -> ClusterView {
        self.status_seen = None;
        let mut view = ClusterView {
            revision,
            ..Default::default()
        };
        let mut skipped: Vec<String> = oversize
            .iter()
            .map(|k| format!("{k}: too large to read"))
            .collect();
        let mut config_unreadable = oversize
            .iter()
            .any(|k| k.strip_prefix(&self.prefix) == Some("config"));
        view.sync_unreadable = oversize
            .iter()
            .any(|k| k.strip_prefix(&self.prefix) == Some("sync"));
        for kv in kvs {
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                skipped.push("a key that is not UTF-8".to_string());
                continue;
            };
            let rel = key.strip_prefix(&self.prefix).unwrap_or(key);
            // A leader key that cannot be read still holds the key: seen as
            // a leader named by no member, so that nobody takes it for
            // "no leader" and it is cleared like any orphan key.
            let unreadable_leader = || Leader {
                name: String::new(),
                lease: kv.lease(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
            };
            if kv.value().len() > MAX_VALUE_BYTES {
                skipped.push(format!(
                    "{key}: {} bytes (limit {MAX_VALUE_BYTES})",
                    kv.value().len()
                ));
                config_unreadable |= rel == "config";
                if rel == "sync" {
                    unreadable_sync(&mut view, kv.mod_revision());
                }
                if rel == "leader" {
                    view.leader = Some(unreadable_leader());
                }
                continue;
            }
            match parse_key(rel, kv.value()) {
                Ok(KeyParse::Leader(name)) => {
                    view.leader = Some(Leader {
                        name,
                        lease: kv.lease(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                    })
                }
                Ok(KeyParse::Member(mut m)) => {
                    m.lease = Some(kv.lease());
                    view.members.push(m)
                }
                Ok(KeyParse::Initialize(id)) => view.initialize = Some(id),
                Ok(KeyParse::Config(c)) => {
                    self.last_good_config = Some(c.clone());
                    view.config = c;
                }
                Ok(KeyParse::Failover(f)) => view.failover = Some(f),
                Ok(KeyParse::Status(mut s)) => {
                    s.mod_revision = kv.mod_revision();
                    view.status = Some(s)
                }
                Ok(KeyParse::Sync(mut st)) => {
                    st.mod_revision = kv.mod_revision();
                    view.sync = Some(st)
                }
                Ok(KeyParse::Restart(mut r)) => {
                    r.mod_revision = kv.mod_revision();
                    view.restart = Some(r)
                }
                Ok(KeyParse::Reload(mut r)) => {
                    r.mod_revision = kv.mod_revision();
                    view.reload = Some(r)
                }
                Ok(KeyParse::Reinit(mut r)) => {
                    r.mod_revision = kv.mod_revision();
                    view.reinit = Some(r)
                }
                Ok(KeyParse::Ignored) => {}
                Err(e) => {
                    config_unreadable |= rel == "config";
                    if rel == "sync" {
                        unreadable_sync(&mut view, kv.mod_revision());
                    }
                    if rel == "leader" {
                        view.leader = Some(unreadable_leader());
                    }
                    skipped.push(format!("{key}: {e}"));
                }
            }
        }
        if config_unreadable && let Some(c) = &self.last_good_config {
            view.config = c.clone();
        }
        self.status_seen = Some((
            view.status.as_ref().map(|s| s.mod_revision),
            view.leader.as_ref().map(|l| l.create_revision),
        ));
        if !skipped.is_empty()
            && self
                .skipped_reported
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            self.skipped_reported = Some(std::time::Instant::now());
            warn!(
                "skipping {} unreadable key(s) under {} (reported once per 30 s), e.g. {}",
                skipped.len(),
                self.prefix,
                crate::config::excerpt(&skipped[0])
            );
        }
        view
    }

    /// One page of a prefix read: up to `limit` keys from `start` (before
    /// `end`) at `revision` (0: the latest), within what is left until
    /// `deadline`.
    async fn read_page(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        revision: i64,
        keys_only: bool,
        deadline: tokio::time::Instant,
    ) -> Result<etcd_client::GetResponse, DcsError> {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut opts = GetOptions::new()
            .with_range(end.to_vec())
            .with_limit(limit as i64)
            .with_revision(revision);
        if keys_only {
            opts = opts.with_keys_only();
        }
        let key = start.to_vec();
        self.call(
            "read",
            left,
            |mut c| async move { c.get(key, Some(opts)).await },
        )
        .await
    }

    async fn grant(&mut self, timeout: Duration) -> Result<KeepAlive, DcsError> {
        let (id, ttl) = self.grant_lease(timeout).await?;
        self.keeper = None;
        self.lease = Some(id);
        self.lease_ttl = ttl;
        Ok(KeepAlive {
            lease_id: id,
            granted_new: true,
            ttl_left: ttl,
            granted_ttl: ttl,
        })
    }

    /// A lease of the configured ttl, not (yet) this agent's: (id, TTL).
    async fn grant_lease(&mut self, timeout: Duration) -> Result<(i64, i64), DcsError> {
        let ttl = self.ttl;
        let resp = self
            .call("lease grant", timeout, |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?;
        if resp.ttl() < ttl {
            // The lease would expire before the deadline the fence computes.
            return Err(DcsError::Lease(format!(
                "etcd granted lease {:x} a TTL of {} s where {ttl} s was asked: refusing it (the fence needs the full ttl)",
                resp.id(),
                resp.ttl()
            )));
        }
        Ok((resp.id(), resp.ttl()))
    }

    /// The ttl of leases granted from now on (a change of `ttl` in the
    /// `config` key). The current lease keeps its own until replaced.
    pub fn set_ttl(&mut self, ttl_secs: u64) {
        self.ttl = ttl_secs as i64;
    }

    /// A member that does not hold the leader key: a new lease of the
    /// configured ttl in place of the current one, which is left to expire
    /// (the member key moves with the next publish).
    pub async fn new_lease(&mut self, timeout: Duration) -> Result<KeepAlive, DcsError> {
        self.grant(timeout).await
    }

    /// A leader's key to a new lease of the configured ttl (a change of
    /// `ttl`): grants it, then one txn puts the leader key and the member
    /// key (`member`) on it if the leader key still holds our name, our
    /// lease and `mod_revision`. `Ok((id, ttl, Ok(moved)))` once granted;
    /// `Ok((id, ttl, Err(e)))` when the txn's outcome is unknown (the key
    /// may be on the new lease, which this agent then does not renew);
    /// `Err` when no lease was granted (nothing moved). The caller notes
    /// the grant's send time; the txn's is `Moving::txn_sent`.
    pub async fn move_leader(
        &mut self,
        mod_revision: i64,
        member: &MemberInfo,
        timeout: Duration,
    ) -> Result<Moving, DcsError> {
        let start = tokio::time::Instant::now();
        let old = self.own_lease()?;
        let (id, ttl) = self.grant_lease(timeout).await?;
        let txn_sent = std::time::Instant::now();
        let leader = self.key("leader");
        let json = serde_json::to_string(member).unwrap_or_default();
        let txn = Txn::new()
            .when([
                Compare::value(leader.clone(), CompareOp::Equal, self.name.clone()),
                Compare::lease(leader.clone(), CompareOp::Equal, old),
                Compare::mod_revision(leader.clone(), CompareOp::Equal, mod_revision),
            ])
            .and_then([
                TxnOp::put(
                    leader,
                    self.name.clone(),
                    Some(PutOptions::new().with_lease(id)),
                ),
                TxnOp::put(
                    self.key(&format!("members/{}", self.name)),
                    json,
                    Some(PutOptions::new().with_lease(id)),
                ),
            ]);
        let left = timeout.saturating_sub(start.elapsed());
        let moved = self.txn("leader key move", txn, left).await;
        if let Ok(true) = moved {
            self.lease = Some(id);
            self.lease_ttl = ttl;
            self.keeper = None;
        }
        Ok(Moving {
            lease_id: id,
            ttl,
            txn_sent,
            moved,
        })
    }

    /// Sends one keep-alive for this agent's lease and awaits its answer;
    /// grants a new lease when there is none or etcd says it is gone (TTL 0,
    /// "lease not found"). A keep-alive stream that broke (the connection
    /// dropped: the stream ended or its sender closed) says nothing about
    /// the lease: it is reopened once within the same timeout, and if that
    /// fails too the call fails. Granting a new lease then would strand a
    /// leader key on the old one, which may still be alive. Ok only when
    /// etcd answered with TTL > 0. The caller records the send instant
    /// itself, before calling.
    ///
    /// With several endpoints, half the time goes to the current one and,
    /// if it fails or hangs, the rest to the next ones (`retry_pause`): a
    /// hung or dead etcd member, or an election, costs a leader part of a
    /// timeout, not a renewal (and a feed). Only renewals and reads are
    /// retried: a txn that timed out may have been applied.
    pub async fn keepalive(&mut self, timeout: Duration) -> Result<KeepAlive, DcsError> {
        let start = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            let slice = self.attempt_time(attempt, start, timeout);
            match self.keepalive_on(slice).await {
                Err(e) => match self.retry_pause(&e, &mut attempt, start, timeout) {
                    Some(pause) => {
                        debug!("{e}: renewing through the next etcd endpoint");
                        tokio::time::sleep(pause).await;
                    }
                    None => return Err(e),
                },
                ok => return ok,
            }
        }
    }

    /// `keepalive` on the current endpoint.
    async fn keepalive_on(&mut self, timeout: Duration) -> Result<KeepAlive, DcsError> {
        let Some(id) = self.lease else {
            return self.grant(timeout).await;
        };
        let endpoint = self.endpoint();
        let start = tokio::time::Instant::now();
        let mut reopened = false;
        loop {
            let fresh = self.keeper.is_none();
            let left = timeout.saturating_sub(start.elapsed());
            let res = tokio::time::timeout(left, self.keepalive_once(id, &endpoint)).await;
            let broken = match res {
                Ok(Ok(Some((rid, _)))) if rid != id => {
                    self.keeper = None;
                    return Err(DcsError::Lease(format!(
                        "etcd answered a keep-alive of lease {id:x} for lease {rid:x}"
                    )));
                }
                Ok(Ok(Some((_, ttl)))) if ttl > 0 && ttl < self.lease_ttl => {
                    return Err(DcsError::Lease(format!(
                        "etcd renewed lease {id:x} for {ttl} s where it was granted {} s: not counted as renewed",
                        self.lease_ttl
                    )));
                }
                Ok(Ok(Some((_, ttl)))) if ttl > 0 => {
                    self.timed_out_at[self.current] = None;
                    self.failing_since[self.current] = None;
                    return Ok(KeepAlive {
                        lease_id: id,
                        granted_new: false,
                        ttl_left: ttl,
                        granted_ttl: self.lease_ttl,
                    });
                }
                Ok(Ok(Some(_))) => false,
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(m))) if m == "lease not found" => {
                    false
                }
                Ok(Ok(None)) | Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => true,
                Ok(Err(source)) => {
                    self.keeper = None;
                    self.failed_fast();
                    self.rotate();
                    return Err(DcsError::Etcd {
                        op: "keep-alive",
                        endpoint,
                        source,
                    });
                }
                Err(_) => {
                    self.keeper = None;
                    self.timed_out_at[self.current] = Some(tokio::time::Instant::now());
                    self.rotate();
                    return Err(DcsError::Timeout {
                        op: "keep-alive",
                        endpoint,
                    });
                }
            };
            if broken {
                self.keeper = None;
                if fresh || reopened {
                    return Err(DcsError::Etcd {
                        op: "keep-alive",
                        endpoint,
                        source: etcd_client::Error::LeaseKeepAliveError(
                            "the keep-alive stream ended".into(),
                        ),
                    });
                }
                debug!("keep-alive stream of lease {id:x} ended; reopening it");
                reopened = true;
                continue;
            }
            // etcd says the lease is gone.
            debug!("lease {id:x} is gone; granting a new one");
            self.lease = None;
            self.keeper = None;
            let left = timeout.saturating_sub(start.elapsed());
            return self.grant(left).await;
        }
    }

    /// One keep-alive on the current stream (opened when there is none):
    /// the TTL etcd answered, or None when the stream ended.
    async fn keepalive_once(
        &mut self,
        id: i64,
        endpoint: &str,
    ) -> Result<Option<(i64, i64)>, etcd_client::Error> {
        if self.keeper.is_none() {
            let client = match &self.clients[self.current] {
                Some(c) => c.clone(),
                None => {
                    let c =
                        Client::connect([endpoint], Some(connect_options(&self.transport))).await?;
                    self.clients[self.current] = Some(c.clone());
                    c
                }
            };
            let mut c = client;
            self.keeper = Some(c.lease_keep_alive(id).await?);
        }
        let Some((keeper, stream)) = self.keeper.as_mut() else {
            return Ok(None);
        };
        keeper.keep_alive().await?;
        Ok(stream.message().await?.map(|r| (r.id(), r.ttl())))
    }

    fn own_lease(&self) -> Result<i64, DcsError> {
        self.lease.ok_or(DcsError::NoLease)
    }

    async fn txn(
        &mut self,
        op: &'static str,
        txn: Txn,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let resp = self
            .call(op, timeout, |mut c| async move { c.txn(txn).await })
            .await?;
        Ok(resp.succeeded())
    }

    /// The leader key still holds our name and our lease; on success also
    /// writes `status`, unless it is unchanged (see [`Dcs::status_unchanged`]):
    /// then the txn only reads, which etcd answers without a raft write, and
    /// the watchers get no event.
    ///
    /// A txn with no write is answered by the etcd member we reach from its
    /// own state, unless one of its reads is linearizable (etcd 3.4
    /// `isTxnSerializable` holds for a txn with no operation at all): a
    /// member cut off from its quorum could then confirm a key that is gone.
    /// So a confirmation that writes nothing reads the leader key, which
    /// makes etcd wait for its raft leader's commit index first (ReadIndex),
    /// as the write did.
    pub async fn confirm_leader(
        &mut self,
        status: Option<&Status>,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let lease = self.own_lease()?;
        let leader = self.key("leader");
        let mut ops = Vec::new();
        let json = status.map(|s| serde_json::to_string(s).unwrap_or_default());
        let write = json.filter(|j| !self.status_unchanged(j));
        match &write {
            Some(j) => ops.push(TxnOp::put(self.key("status"), j.clone(), None)),
            // Linearizable (GetOptions' default): see above.
            None => ops.push(TxnOp::get(leader.clone(), None)),
        }
        let txn = Txn::new()
            .when([
                Compare::value(leader.clone(), CompareOp::Equal, self.name.clone()),
                Compare::lease(leader, CompareOp::Equal, lease),
            ])
            .and_then(ops);
        // Until this txn is known applied, what `status` holds is not known.
        if write.is_some() {
            self.status_written = None;
        }
        let resp = self
            .call("leader confirmation", timeout, |mut c| async move {
                c.txn(txn).await
            })
            .await?;
        if let (Some(j), true) = (write, resp.succeeded()) {
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            self.status_written = (revision > 0).then_some((j, revision));
        }
        Ok(resp.succeeded())
    }

    /// `json` is what our last confirmation wrote to `status`, and the last
    /// prefix read (this cycle's) found the key still at that write's
    /// revision (nobody changed or deleted it since) and written after the
    /// leader key was created (in this term: `ha::stream_slot` trusts only
    /// such a status).
    fn status_unchanged(&self, json: &str) -> bool {
        let Some((written, revision)) = &self.status_written else {
            return false;
        };
        let Some((Some(seen), Some(leader_created))) = self.status_seen else {
            return false;
        };
        written == json && seen == *revision && *revision > leader_created
    }

    /// Creates the leader key bound to our lease, if nobody holds it.
    pub async fn acquire_leader(&mut self, timeout: Duration) -> Result<bool, DcsError> {
        let lease = self.own_lease()?;
        let leader = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(
                leader.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                leader,
                self.name.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.txn("leader acquisition", txn, timeout).await
    }

    /// Re-binds a leader key holding our name (left by our previous process)
    /// to our lease, if it did not change since we read it.
    pub async fn take_over_leader(
        &mut self,
        observed_mod_revision: i64,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let lease = self.own_lease()?;
        let leader = self.key("leader");
        let txn = Txn::new()
            .when([
                Compare::value(leader.clone(), CompareOp::Equal, self.name.clone()),
                Compare::mod_revision(leader.clone(), CompareOp::Equal, observed_mod_revision),
            ])
            .and_then([TxnOp::put(
                leader,
                self.name.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )]);
        self.txn("leader take-over", txn, timeout).await
    }

    /// Deletes a leader key bound to no lease (it would never expire: no
    /// agent writes one; a hand or a hostile writer did), only if it is
    /// still the very key observed and still bound to no lease, so that it
    /// cannot race a real leader's acquisition.
    pub async fn clear_unleased_leader(
        &mut self,
        observed_mod_revision: i64,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let leader = self.key("leader");
        let txn = Txn::new()
            .when([
                Compare::mod_revision(leader.clone(), CompareOp::Equal, observed_mod_revision),
                Compare::lease(leader.clone(), CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::delete(leader, None)]);
        self.txn("clearing an unleased leader key", txn, timeout)
            .await
    }

    /// Replaces a leader key that names no member (`name`, observed at
    /// `observed_mod_revision`) by [`ORPHAN_PLACEHOLDER`] bound to a fresh
    /// lease of `placeholder_ttl` seconds that nobody renews, only if the key
    /// is unchanged and `members/<name>` still does not exist. Grant and txn
    /// share one `timeout`, so the placeholder outlives the txn by at least
    /// `placeholder_ttl - timeout`. A lease the txn certainly did not use is
    /// revoked (best effort: it expires anyway).
    pub async fn replace_orphan_leader(
        &mut self,
        observed_mod_revision: i64,
        name: &str,
        placeholder_ttl: i64,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let granted = self
            .call("placeholder lease grant", timeout, |mut c| async move {
                c.lease_grant(placeholder_ttl, None).await
            })
            .await?;
        if granted.ttl() < placeholder_ttl {
            return Err(DcsError::Lease(format!(
                "etcd granted the placeholder lease a TTL of {} s where {placeholder_ttl} s was asked",
                granted.ttl()
            )));
        }
        let placeholder = granted.id();
        let leader = self.key("leader");
        let member = self.key(&format!("members/{name}"));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(leader.clone(), CompareOp::Equal, observed_mod_revision),
                Compare::version(member, CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(
                leader,
                ORPHAN_PLACEHOLDER,
                Some(PutOptions::new().with_lease(placeholder)),
            )]);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let replaced = self.txn("replacing an orphan leader key", txn, left).await;
        // Revoked only when the txn certainly did not apply: a timed-out txn
        // may have put the placeholder, and revoking it would free the key
        // at once.
        if matches!(replaced, Ok(false)) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = self
                .call("placeholder lease revoke", left, |mut c| async move {
                    c.lease_revoke(placeholder).await
                })
                .await;
        }
        replaced
    }

    /// Deletes the leader key if it holds our name.
    pub async fn release_leader(&mut self, timeout: Duration) -> Result<bool, DcsError> {
        let leader = self.key("leader");
        let txn = Txn::new()
            .when([Compare::value(
                leader.clone(),
                CompareOp::Equal,
                self.name.clone(),
            )])
            .and_then([TxnOp::delete(leader, None)]);
        self.txn("leader release", txn, timeout).await
    }

    /// Writes `members/<name>` bound to our lease.
    pub async fn put_member(
        &mut self,
        info: &MemberInfo,
        timeout: Duration,
    ) -> Result<(), DcsError> {
        let lease = self.own_lease()?;
        let key = self.key(&format!("members/{}", self.name));
        let json = serde_json::to_string(info).unwrap_or_default();
        self.call("member update", timeout, |mut c| async move {
            c.put(key, json, Some(PutOptions::new().with_lease(lease)))
                .await
        })
        .await
        .map(|_| ())
    }

    /// Creates `initialize` with the system identifier if absent.
    pub async fn initialize(
        &mut self,
        system_id: &str,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let key = self.key("initialize");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, system_id, None)]);
        self.txn("initialize", txn, timeout).await
    }

    /// Writes the `config` key unless it exists (the bootstrap's first
    /// dynamic configuration; a pause set before stays).
    pub async fn init_config(&mut self, json: String, timeout: Duration) -> Result<bool, DcsError> {
        let key = self.key("config");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, json, None)]);
        self.txn("config init", txn, timeout).await
    }

    /// The `config` key's value as JSON (an empty object when absent) and
    /// its mod_revision (0 when absent), for edit-config. A value that is
    /// not a JSON object is an error: edit-config never writes over what it
    /// could not show.
    pub async fn read_config(
        &mut self,
        timeout: Duration,
    ) -> Result<(serde_json::Value, i64), String> {
        let key = self.key("config");
        let resp = self
            .call("config read", timeout, |mut c| async move {
                c.get(key, None).await
            })
            .await
            .map_err(|e| e.to_string())?;
        let Some(kv) = resp.kvs().first() else {
            return Ok((serde_json::Value::Object(Default::default()), 0));
        };
        let v: serde_json::Value = serde_json::from_slice(kv.value()).map_err(|e| {
            format!(
                "the config key holds no JSON ({e}): {}",
                crate::config::excerpt(&String::from_utf8_lossy(kv.value()))
            )
        })?;
        if !v.is_object() {
            return Err(format!("the config key holds no JSON object: {v}"));
        }
        Ok((v, kv.mod_revision()))
    }

    /// Writes the `config` key if it is still at `mod_revision` (0: absent).
    pub async fn write_config_if(
        &mut self,
        value: &serde_json::Value,
        mod_revision: i64,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let key = self.key("config");
        let cmp = if mod_revision == 0 {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key.clone(), CompareOp::Equal, mod_revision)
        };
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key, value.to_string(), None)]);
        self.txn("config update", txn, timeout).await
    }

    /// Writes a request key (`restart`, `reinit`) unless one is there.
    pub async fn put_request(
        &mut self,
        name: &str,
        json: String,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let key = self.key(name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, json, None)]);
        self.txn("request", txn, timeout).await
    }

    /// Deletes a request key if it is still at `mod_revision`.
    pub async fn delete_request(
        &mut self,
        name: &str,
        mod_revision: i64,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let op = TxnOp::delete(self.key(name), None);
        self.request_if_at(name, op, mod_revision, "request delete", timeout)
            .await
    }

    /// Rewrites a request key if it is still at `mod_revision` (the leader
    /// starting a scheduled restart: the same request, its time taken out).
    pub async fn replace_request(
        &mut self,
        name: &str,
        json: String,
        mod_revision: i64,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let op = TxnOp::put(self.key(name), json, None);
        self.request_if_at(name, op, mod_revision, "request update", timeout)
            .await
    }

    /// `op` on a request key, if the key is still at `mod_revision`.
    async fn request_if_at(
        &mut self,
        name: &str,
        op: TxnOp,
        mod_revision: i64,
        what: &'static str,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.key(name),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([op]);
        self.txn(what, txn, timeout).await
    }

    /// Writes the `config` key (no lease).
    pub async fn put_config(
        &mut self,
        cfg: &DynamicConfig,
        timeout: Duration,
    ) -> Result<(), DcsError> {
        let key = self.key("config");
        let json = serde_json::to_string(cfg).unwrap_or_default();
        self.call("config update", timeout, |mut c| async move {
            c.put(key, json, None).await
        })
        .await
        .map(|_| ())
    }

    /// Maintenance mode on or off. Resuming without `force` is refused while
    /// a primary may run without its agent (`cluster::resume_refusal`), and
    /// is one txn conditional on the leader key and the leader's member key
    /// as read, so the check cannot go stale between read and write.
    pub async fn set_pause(
        &mut self,
        pause: bool,
        force: bool,
        timeout: Duration,
    ) -> Result<(), String> {
        let view = self
            .read(timeout)
            .await
            .map_err(|e| format!("cannot read the cluster from etcd: {e}"))?;
        let mut c = view.config.clone();
        c.pause = pause;
        let guarded = !pause && !force && view.paused();
        if !guarded {
            return self
                .put_config(&c, timeout)
                .await
                .map_err(|e| format!("cannot write the config key: {e}"));
        }
        if let Some(why) = crate::cluster::resume_refusal(&view) {
            return Err(format!("resume refused: {why}"));
        }
        let Some(leader) = view.leader.as_ref().map(|l| l.name.clone()) else {
            return Err("resume refused: no leader".into());
        };
        let member = self.key(&format!("members/{leader}"));
        let txn = Txn::new()
            .when([
                Compare::value(self.key("leader"), CompareOp::Equal, leader.clone()),
                Compare::version(member, CompareOp::Greater, 0),
            ])
            .and_then([TxnOp::put(
                self.key("config"),
                serde_json::to_string(&c).unwrap_or_default(),
                None,
            )]);
        match self.txn("resume", txn, timeout).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!(
                "resume refused: the leader {leader} or its member key changed meanwhile; try again"
            )),
            Err(e) => Err(format!("cannot write the config key: {e}")),
        }
    }

    /// Deletes our member key: this agent is going away.
    pub async fn delete_member(&mut self, timeout: Duration) -> Result<(), DcsError> {
        let key = self.key(&format!("members/{}", self.name));
        self.call("member delete", timeout, |mut c| async move {
            c.delete(key, None).await
        })
        .await
        .map(|_| ())
    }

    /// Writes the `sync` key (no lease, as Patroni's), if the leader key
    /// is still ours and the `sync` key is still at `mod_revision` (absent
    /// for None). False when either changed.
    pub async fn write_sync(
        &mut self,
        state: &crate::cluster::SyncState,
        mod_revision: Option<i64>,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let lease = self.own_lease()?;
        let leader = self.key("leader");
        let sync = self.key("sync");
        let json = serde_json::to_string(state).unwrap_or_default();
        let same = match mod_revision {
            Some(r) => Compare::mod_revision(sync.clone(), CompareOp::Equal, r),
            None => Compare::create_revision(sync.clone(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([
                Compare::value(leader.clone(), CompareOp::Equal, self.name.clone()),
                Compare::lease(leader, CompareOp::Equal, lease),
                same,
            ])
            .and_then([TxnOp::put(sync, json, None)]);
        self.txn("sync key", txn, timeout).await
    }

    /// Deletes the `sync` key if the leader key is ours and the `sync` key
    /// is still at `mod_revision`.
    pub async fn delete_sync(
        &mut self,
        mod_revision: i64,
        timeout: Duration,
    ) -> Result<bool, DcsError> {
        let lease = self.own_lease()?;
        let leader = self.key("leader");
        let sync = self.key("sync");
        let txn = Txn::new()
            .when([
                Compare::value(leader.clone(), CompareOp::Equal, self.name.clone()),
                Compare::lease(leader, CompareOp::Equal, lease),
                Compare::mod_revision(sync.clone(), CompareOp::Equal, mod_revision),
            ])
            .and_then([TxnOp::delete(sync, None)]);
        self.txn("sync key delete", txn, timeout).await
    }

    /// Writes the `failover` key (no lease).
    pub async fn put_failover(
        &mut self,
        req: &FailoverRequest,
        timeout: Duration,
    ) -> Result<(), DcsError> {
        let key = self.key("failover");
        let json = serde_json::to_string(req).unwrap_or_default();
        self.call("failover request", timeout, |mut c| async move {
            c.put(key, json, None).await
        })
        .await
        .map(|_| ())
    }

    pub async fn delete_failover(&mut self, timeout: Duration) -> Result<(), DcsError> {
        let key = self.key("failover");
        self.call("failover delete", timeout, |mut c| async move {
            c.delete(key, None).await
        })
        .await
        .map(|_| ())
    }

    /// The raw value of a key under the cluster prefix (None when absent).
    pub async fn get_raw(
        &mut self,
        rel: &str,
        timeout: Duration,
    ) -> Result<Option<String>, DcsError> {
        let key = self.key(rel);
        let resp = self
            .call(
                "read",
                timeout,
                |mut c| async move { c.get(key, None).await },
            )
            .await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).to_string()))
    }

    /// Appends a timeline switch to the `history` key (Patroni's format).
    pub async fn append_history(
        &mut self,
        entry: serde_json::Value,
        timeout: Duration,
    ) -> Result<(), DcsError> {
        let mut items = match self.get_raw("history", timeout).await? {
            Some(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Array(a)) => a,
                _ => {
                    warn!("the history key is not a JSON list: starting a new one");
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        items.push(entry);
        let key = self.key("history");
        let json = serde_json::Value::Array(items).to_string();
        self.call("history update", timeout, |mut c| async move {
            c.put(key, json, None).await
        })
        .await
        .map(|_| ())
    }

    /// Revokes our lease: our member key (and a leader key bound to it) go.
    pub async fn revoke_lease(&mut self, timeout: Duration) -> Result<(), DcsError> {
        let Some(id) = self.lease.take() else {
            return Ok(());
        };
        self.keeper = None;
        self.call("lease revoke", timeout, |mut c| async move {
            c.lease_revoke(id).await
        })
        .await
        .map(|_| ())
    }
}

/// A watch silent this long is asked for its progress (etcd 3.4+).
const WATCH_SILENCE: Duration = Duration::from_secs(60);

/// A watch that does not answer a progress request within this is made again.
const PROBE_WAIT: Duration = Duration::from_secs(10);

/// Stops the watch task when dropped.
pub struct WatchHandle(tokio::task::JoinHandle<()>);

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the cluster prefix, keeps the loop's copy of the cluster's keys
/// (`cache`, see [`WatchCache`]) and wakes the loop (`notify`) when the
/// leader, config, failover or initialize key changes. It never decides
/// anything. Each (re)connection reads the prefix once and watches from the
/// revision after that read; the watch is made again after errors,
/// rotating endpoints, with a short pause, and after a silence of
/// [`WATCH_SILENCE`] only if etcd does not answer a progress request.
pub fn spawn_watch(
    endpoints: Vec<String>,
    prefix: String,
    notify: Arc<Notify>,
    transport: Transport,
    cache: SharedCache,
) -> WatchHandle {
    spawn_watch_with_silence(endpoints, prefix, notify, transport, cache, WATCH_SILENCE)
}

/// Marks the copy out of step (the stream ended or was never made).
fn unsync(cache: &SharedCache) {
    if let Ok(mut c) = cache.lock() {
        c.synced = false;
    }
}

/// [`spawn_watch`] with another silence before a progress request (tests).
pub fn spawn_watch_with_silence(
    endpoints: Vec<String>,
    prefix: String,
    notify: Arc<Notify>,
    transport: Transport,
    cache: SharedCache,
    silence: Duration,
) -> WatchHandle {
    WatchHandle(tokio::spawn(async move {
        let mut i = 0usize;
        loop {
            let endpoint = endpoints
                .get(i % endpoints.len().max(1))
                .cloned()
                .unwrap_or_default();
            i += 1;
            let mut silent_since_probe = false;
            // The read and the watch from the revision after it: no event
            // falls between them. A read that fails (a prefix over gRPC's
            // message limit: hostile keys) leaves the copy out of step —
            // the loop then reads by pages itself — and the watch still
            // wakes the loop.
            let stream = tokio::time::timeout(Duration::from_secs(5), async {
                let mut c =
                    Client::connect([endpoint.as_str()], Some(connect_options(&transport))).await?;
                let read = c
                    .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                    .await;
                let mut opts = WatchOptions::new().with_prefix();
                let read = match read {
                    Ok(mut r) => {
                        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                        opts = opts.with_start_revision(revision + 1);
                        Some((revision, r.take_kvs()))
                    }
                    Err(e) => {
                        debug!("reading {prefix} for the watch on {endpoint} failed: {e}");
                        None
                    }
                };
                let stream = c.watch(prefix.as_str(), Some(opts)).await?;
                Ok::<_, etcd_client::Error>((stream, read))
            })
            .await;
            match stream {
                Ok(Ok((mut s, read))) => {
                    let keeping = read.is_some();
                    if let (Some((revision, kvs)), Ok(mut c)) = (read, cache.lock()) {
                        c.kvs = kvs.into_iter().map(|kv| (kv.key().to_vec(), kv)).collect();
                        c.revision = revision;
                        c.synced = true;
                    }
                    // The loop may have waited on a read that failed.
                    notify.notify_one();
                    loop {
                        // HTTP/2 keep-alive detects a dead connection. A
                        // silent one (an idle cluster writes nothing for
                        // minutes) is asked for its progress, which etcd
                        // answers on the same stream; only a stream that
                        // does not answer is made again (re-made streams
                        // cost etcd: tests/etcd_traffic.rs).
                        let probing = silent_since_probe;
                        let wait = if probing { PROBE_WAIT } else { silence };
                        match tokio::time::timeout(wait, s.message()).await {
                            Err(_) if !probing => {
                                if s.request_progress().await.is_err() {
                                    break;
                                }
                                silent_since_probe = true;
                            }
                            Ok(Ok(Some(r))) => {
                                silent_since_probe = false;
                                if r.canceled() || r.compact_revision() > 0 {
                                    debug!(
                                        "the watch on {endpoint} ended: {}",
                                        if r.compact_revision() > 0 {
                                            "compacted"
                                        } else {
                                            r.cancel_reason()
                                        }
                                    );
                                    break;
                                }
                                if keeping && let Ok(mut c) = cache.lock() {
                                    for e in r.events() {
                                        let Some(kv) = e.kv() else { continue };
                                        match e.event_type() {
                                            etcd_client::EventType::Put => {
                                                c.kvs.insert(kv.key().to_vec(), kv.clone());
                                            }
                                            etcd_client::EventType::Delete => {
                                                c.kvs.remove(kv.key());
                                            }
                                        }
                                    }
                                    if let Some(h) = r.header() {
                                        c.revision = c.revision.max(h.revision());
                                    }
                                }
                                // Member keys change every cycle; waking on
                                // them would make the agents wake each other
                                // forever.
                                let wakes = r.events().iter().any(|e| {
                                    e.kv()
                                        .and_then(|kv| std::str::from_utf8(kv.key()).ok())
                                        .is_some_and(|k| {
                                            let rel = k.strip_prefix(prefix.as_str()).unwrap_or(k);
                                            matches!(
                                                rel,
                                                "leader" | "config" | "failover" | "initialize"
                                            )
                                        })
                                });
                                if wakes {
                                    notify.notify_one();
                                }
                            }
                            Ok(Ok(None)) | Ok(Err(_)) => break,
                            Err(_) => break,
                        }
                    }
                    unsync(&cache);
                }
                Ok(Err(e)) => debug!("watch on {endpoint} failed: {e}"),
                Err(_) => debug!("watch on {endpoint} timed out"),
            }
            unsync(&cache);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rotation passes over an endpoint that timed out lately, and stays
    /// on the current one when every other has.
    #[test]
    fn rotation_passes_over_a_hung_endpoint() {
        let mut d = Dcs::new(
            vec!["a".into(), "b".into(), "c".into()],
            "/service/x/".into(),
            "n".into(),
            10,
        );
        let now = tokio::time::Instant::now();
        d.timed_out_at[1] = Some(now);
        d.rotate();
        assert_eq!(d.endpoint(), "c", "b timed out: a goes to c");
        d.timed_out_at[0] = Some(now);
        d.rotate();
        assert_eq!(d.endpoint(), "c", "a and b timed out: c stays");
        d.timed_out_at[2] = Some(now + Duration::from_millis(1));
        d.rotate();
        assert_eq!(d.endpoint(), "a", "all timed out: the oldest timeout first");
        // An endpoint failing fast is preferred to hung ones for an
        // election's time, then passed over too (the oldest trouble first).
        d.timed_out_at = vec![Some(now), Some(now), None];
        d.current = 2;
        d.failing_since[2] = Some((now, now));
        d.rotate();
        assert_eq!(d.endpoint(), "c", "c fails fast, a and b hung: c again");
        if let Some(long_ago) = now.checked_sub(ELECTION_TIME * 3) {
            // c has failed fast for longer than an election, last just now:
            // the endpoint that timed out longest ago is tried.
            d.timed_out_at = vec![Some(now - ELECTION_TIME), Some(now), None];
            d.failing_since[2] = Some((long_ago, now));
            d.rotate();
            assert_eq!(d.endpoint(), "a", "c failing for an election's time");
        }
        d.failing_since = vec![None, None, None];
        // Forgotten after HUNG_MEMORY.
        d.timed_out_at = vec![
            None,
            now.checked_sub(HUNG_MEMORY).map(Some).unwrap_or(None),
            Some(now),
        ];
        d.rotate();
        assert_eq!(d.endpoint(), "b");
    }
}
