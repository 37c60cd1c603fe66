//! The network shell: accept loop (connection limits in total and per source address,
//! per-connection rate, idle timeout, graceful drain), the HTTP routes (request bodies read
//! under a deadline and a per-connection byte budget) and the WebSocket session loop (an
//! unauthenticated socket has a deadline that pings do not extend). Limits:
//! spec/mediator.md §6, §6.1.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::core::{Core, Transport};
use crate::guard::SourceAddr;
use crate::live::{LiveHub, LiveSub};
use crate::messages::codes;
use crate::metrics::Rejection;
use crate::store::Store as _;
use mpc_did_didcomm::protocols::pickup::PickupVersion;
use mpc_did_rendezvous::source::SourceCounts;

/// Media types of DIDComm v2 envelopes (defined in `mpc_did_didcomm::message`).
pub use mpc_did_didcomm::message::{
    ENCRYPTED_TYP as ENCRYPTED_MEDIA_TYPE, PLAIN_TYP as PLAIN_MEDIA_TYPE,
    SIGNED_TYP as SIGNED_MEDIA_TYPE,
};

/// State shared by every route.
#[derive(Clone)]
pub(crate) struct AppState {
    /// Protocol core.
    pub core: Arc<Core>,
    /// Live sessions.
    pub hub: Arc<LiveHub>,
    /// Cancelled when the server drains.
    pub cancel: CancellationToken,
    /// Tracks connection and session tasks for the drain.
    pub tracker: TaskTracker,
    /// `GET /oob` document.
    pub oob: Arc<serde_json::Value>,
    /// `GET /did.json` document.
    pub did_doc: Arc<serde_json::Value>,
    /// `limits.rate_per_ip`: messages per client address over all its connections.
    pub ip_rate: Arc<Mutex<crate::guard::KeyedRate<SourceAddr>>>,
    /// What `/readyz` reports.
    pub health: Arc<crate::health::Health>,
    /// Per-source bookkeeping shared by all connections: body bytes per source, open
    /// WebSockets per client behind a trusted proxy.
    pub clients: Arc<ClientCounts>,
}

/// What each source holds over all connections (spec/mediator.md §6.1). A direct peer's
/// connections are counted at accept; behind a trusted proxy, whose connections carry many
/// clients, each request's client (by `X-Forwarded-For`) is counted here instead.
#[derive(Default)]
pub(crate) struct ClientCounts {
    /// Unfinished request-body bytes per source (`max_body_bytes_per_source`).
    bodies: Mutex<SourceBodies>,
    /// Open WebSockets per client behind a trusted proxy (`max_connections_per_ip`).
    websockets: PerSource,
}

impl ClientCounts {
    /// The unfinished-body counter `source`'s requests share.
    fn body_counter(&self, source: SourceAddr) -> Option<Arc<AtomicU64>> {
        self.bodies.lock().ok().map(|mut b| b.counter(source))
    }
}

/// Token bucket for the per-connection message rate.
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Per-connection facts, inserted into each request's extensions.
pub(crate) struct ConnInfo {
    /// Remote address.
    pub peer: SocketAddr,
    /// The source it counts against (per-source limits, spec/mediator.md §6.1).
    source: SourceAddr,
    /// The peer is one of `trusted_proxies`: each request's client is read from its
    /// `X-Forwarded-For`.
    via_proxy: bool,
    bucket: Mutex<Bucket>,
    rate: f64,
    burst: f64,
    /// Bytes of request bodies being read on this connection now (HTTP/2 streams).
    body_bytes: Arc<AtomicU64>,
    /// The same over all connections of its source, when the source is counted (not
    /// behind a trusted proxy, `max_connections_per_ip` on).
    source_body_bytes: Option<Arc<AtomicU64>>,
    core: Arc<Core>,
    _permit: OwnedSemaphorePermit,
    _slot: Option<SourceSlot>,
}

/// Open connections per source address.
type PerSource = Arc<Mutex<SourceCounts>>;

/// Unfinished request-body bytes per source address, shared by its open connections
/// (`max_body_bytes_per_source`); an entry lives while one of them does.
#[derive(Default)]
struct SourceBodies {
    map: std::collections::HashMap<SourceAddr, std::sync::Weak<AtomicU64>>,
    /// Size after the last sweep of dead entries.
    swept: usize,
}

impl SourceBodies {
    /// The counter `source`'s connections share.
    fn counter(&mut self, source: SourceAddr) -> Arc<AtomicU64> {
        if let Some(c) = self.map.get(&source).and_then(std::sync::Weak::upgrade) {
            return c;
        }
        if self.map.len() >= 2 * self.swept.max(512) {
            self.map.retain(|_, w| w.strong_count() > 0);
            self.swept = self.map.len();
        }
        let c = Arc::new(AtomicU64::new(0));
        self.map.insert(source, Arc::downgrade(&c));
        c
    }
}

/// One connection's place in its source's count; given back on drop.
struct SourceSlot {
    counts: PerSource,
    source: SourceAddr,
}

impl SourceSlot {
    /// Takes a place for `source`, unless it has `max` connections open already.
    fn take(counts: &PerSource, source: SourceAddr, max: u64) -> Option<Self> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        counts.lock().ok()?.try_add(source, max).then(|| Self {
            counts: counts.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut c) = self.counts.lock() {
            c.remove(self.source);
        }
    }
}

impl ConnInfo {
    /// The source a request on this connection counts against: the peer, or behind a
    /// trusted proxy the client its `X-Forwarded-For` names (spec/mediator.md §6.1).
    pub(crate) fn client_source(&self, headers: &axum::http::HeaderMap) -> SourceAddr {
        if !self.via_proxy {
            return self.source;
        }
        SourceAddr::of(self.client_ip(headers))
    }

    /// The client's address: the peer, or behind a trusted proxy the client its
    /// `X-Forwarded-For` names (also what the relay's per-address cap counts).
    pub(crate) fn client_ip(&self, headers: &axum::http::HeaderMap) -> std::net::IpAddr {
        if !self.via_proxy {
            return self.peer.ip();
        }
        let values: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        crate::guard::client_address(self.peer.ip(), &values, &self.core.config.trusted_proxies)
    }

    /// Takes one token; `false` if the connection is over its rate.
    fn allow(&self) -> bool {
        let Ok(mut b) = self.bucket.lock() else {
            return false;
        };
        let now = Instant::now();
        let elapsed = now.duration_since(b.last).as_secs_f64();
        b.last = now;
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Drop for ConnInfo {
    fn drop(&mut self) {
        self.core
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HTTP routes of the DIDComm mediator on the public port; `extra` (services such as
/// the relay) is merged. Metrics are not served here: `/metrics*` answers 404 (they are
/// on the operator listener, [`crate::admin`]).
pub(crate) fn router(state: AppState, extra: Vec<Router>) -> Router {
    let mut r = Router::new()
        .route("/didcomm", post(post_didcomm))
        .route("/", post(post_didcomm))
        .route("/ws", get(ws_upgrade))
        .route("/healthz", get(crate::admin::healthz))
        .route("/oob", get(oob))
        .route("/did.json", get(did_json))
        .route("/.well-known/did.json", get(did_json))
        .with_state(state);
    for e in extra {
        r = r.merge(e);
    }
    r.layer(axum::middleware::from_fn(hide_operator_paths))
}

/// Keeps the services' metrics (`/metrics/relay`, `/metrics/stun`) off the public port.
async fn hide_operator_paths(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if crate::admin::is_operator_path(req.uri().path()) {
        return StatusCode::NOT_FOUND.into_response();
    }
    next.run(req).await
}

/// Seconds a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `state.cancel`, each served on its own tracked task; with
/// `tls`, each speaks TLS first (built-in TLS, spec/mediator.md §10).
pub(crate) async fn serve(
    listener: TcpListener,
    state: AppState,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let limits = &state.core.config.limits;
    let sem = Arc::new(Semaphore::new(
        usize::try_from(limits.max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS),
    ));
    let idle = Duration::from_secs(limits.idle_timeout_secs.max(1));
    let per_source: PerSource = Arc::default();
    loop {
        let accepted = tokio::select! {
            () = state.cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = &state.core.metrics;
        let source = SourceAddr::of(peer.ip());
        let via_proxy = {
            let ip = match peer.ip() {
                std::net::IpAddr::V6(v6) => {
                    v6.to_ipv4_mapped().map_or(peer.ip(), std::net::IpAddr::V4)
                }
                v4 => v4,
            };
            state.core.config.trusted_proxies.contains(&ip)
        };
        // A trusted proxy carries many clients: its connections are not counted as one
        // source's (each request's client is, by X-Forwarded-For).
        let slot = match limits.max_connections_per_ip {
            _ if via_proxy => Some(None),
            0 => Some(None),
            max => SourceSlot::take(&per_source, source, max).map(Some),
        };
        let (Ok(permit), Some(slot)) = (sem.clone().try_acquire_owned(), slot) else {
            metrics.reject(Rejection::Connections);
            tokio::spawn(async move {
                // Read the request head first: closing with unread input would reset the
                // connection and the client would never see the 503.
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
                )
                .await;
                let _ = stream
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.connections_total.fetch_add(1, Ordering::Relaxed);
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        // Counted with the source's connections: the per-connection body budget alone let
        // one address with 1,000 connections pin 4 GiB (spec/mediator.md §6.1).
        let source_body_bytes = slot
            .as_ref()
            .filter(|_| limits.max_body_bytes_per_source > 0)
            .and_then(|_| state.clients.body_counter(source));
        let conn = Arc::new(ConnInfo {
            peer,
            source,
            via_proxy,
            body_bytes: Arc::default(),
            source_body_bytes,
            _slot: slot,
            bucket: Mutex::new(Bucket {
                tokens: limits.rate_burst as f64,
                last: Instant::now(),
            }),
            rate: limits.rate_per_connection as f64,
            burst: limits.rate_burst as f64,
            core: state.core.clone(),
            _permit: permit,
        });
        let app = app.clone();
        let cancel = state.cancel.clone();
        match &acceptor {
            None => {
                state
                    .tracker
                    .spawn(serve_connection(stream, conn, app, cancel, idle));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                state.tracker.spawn(async move {
                    let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    match tls.await {
                        Ok(Ok(s)) => serve_connection(s, conn, app, cancel, idle).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(peer = %conn.peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    conn: Arc<ConnInfo>,
    app: Router,
    cancel: CancellationToken,
    idle: Duration,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let streams = u32::try_from(conn.core.config.limits.max_streams_per_connection)
        .unwrap_or(u32::MAX)
        .max(1);
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(conn.clone());
        let mut app = app.clone();
        let busy = seen.begin();
        async move {
            let r = tower_service::Service::call(&mut app, req).await;
            drop(busy);
            r
        }
    });
    // HTTP/1.1, or HTTP/2 with prior knowledge (h2c) on the same port: a sender with many
    // messages multiplexes them on one connection and they share group commits (§6, §11).
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(streams)
        .keep_alive_interval(Some(idle))
        .keep_alive_timeout(Duration::from_secs(20));
    let c = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(c);
    loop {
        // HTTP/1.1 closes idle keep-alive connections by its header read timeout; HTTP/2 has
        // none, so a connection with no request for `idle` is shut down gracefully here.
        let check = tokio::time::sleep(activity.idle_deadline(idle));
        tokio::select! {
            _ = c.as_mut() => return,
            () = cancel.cancelled() => break,
            () = check => {
                if activity.is_idle(idle) {
                    break;
                }
            }
        }
    }
    c.as_mut().graceful_shutdown();
    // Hyper finishes the response it is writing before it stops; a client that pipelines
    // requests and never reads keeps that write blocked for ever. It gets `idle` more to
    // read, then the connection is dropped (spec/mediator.md §6.1).
    if tokio::time::timeout(idle, c).await.is_err() {
        tracing::debug!("connection did not finish its responses in time: dropped");
    }
}

/// When a connection last finished a request, and how many it is serving now.
struct Activity {
    active: std::sync::atomic::AtomicUsize,
    last: Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            active: std::sync::atomic::AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }
}

/// Held while a request is served.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.last.lock() {
            *l = Instant::now();
        }
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn last(&self) -> Instant {
        self.last.lock().map_or_else(|_| Instant::now(), |l| *l)
    }

    /// How long until the connection would have been idle for `idle`.
    fn idle_deadline(&self, idle: Duration) -> Duration {
        idle.saturating_sub(self.last().elapsed())
            .max(Duration::from_millis(100))
    }

    fn is_idle(&self, idle: Duration) -> bool {
        self.active.load(Ordering::Relaxed) == 0 && self.last().elapsed() >= idle
    }
}

async fn oob(State(st): State<AppState>) -> Response {
    axum::Json(st.oob.as_ref().clone()).into_response()
}

async fn did_json(State(st): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/did+json")],
        st.did_doc.to_string(),
    )
        .into_response()
}

fn status_for(r: Rejection) -> StatusCode {
    match r {
        Rejection::Malformed => StatusCode::BAD_REQUEST,
        Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Rejection::Unauthorized => StatusCode::FORBIDDEN,
        Rejection::Replay => StatusCode::CONFLICT,
        Rejection::UnknownRecipient => StatusCode::NOT_FOUND,
        Rejection::QueueFull => StatusCode::INSUFFICIENT_STORAGE,
        Rejection::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Rejection::Connections => StatusCode::SERVICE_UNAVAILABLE,
        Rejection::Unsupported => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Media type of a packed reply (encrypted ones carry `ciphertext`).
fn media_type(reply: &[u8]) -> &'static str {
    let head = reply.get(..reply.len().min(4096)).unwrap_or_default();
    if head.windows(12).any(|w| w == b"\"ciphertext\"")
        || reply.windows(12).any(|w| w == b"\"ciphertext\"")
    {
        ENCRYPTED_MEDIA_TYPE
    } else {
        PLAIN_MEDIA_TYPE
    }
}

fn didcomm_response(status: StatusCode, reply: Option<Vec<u8>>) -> Response {
    match reply {
        None => status.into_response(),
        Some(r) => {
            let mt = media_type(&r);
            let mut resp = (status, Body::from(r)).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(mt));
            resp
        }
    }
}

/// Why a request body was not read.
enum BodyError {
    /// Larger than `max_message_bytes`.
    TooLarge,
    /// Not complete within `body_timeout_secs`.
    Timeout,
    /// The connection's unfinished bodies would exceed `max_body_bytes_per_connection`.
    OverBudget,
    /// Its source's unfinished bodies would exceed `max_body_bytes_per_source`.
    SourceOverBudget,
    /// The client broke the body off (reset stream, bad chunking).
    Failed,
}

/// Bytes of one request body counted against its connection's budget until the request
/// is answered; given back on drop.
struct BodyCharge {
    total: Arc<AtomicU64>,
    /// The source's total, when it is counted.
    source: Option<Arc<AtomicU64>>,
    n: u64,
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        self.total.fetch_sub(self.n, Ordering::Relaxed);
        if let Some(s) = &self.source {
            s.fetch_sub(self.n, Ordering::Relaxed);
        }
    }
}

/// Reads a request body within `limits.body_timeout_secs`, charging each chunk to the
/// connection as it arrives: one HTTP/2 connection's unfinished bodies cannot hold more
/// than its budget (spec/mediator.md §6.1), a slow body is cut off, and an oversize one
/// is refused as soon as it is known to be.
async fn read_body(
    body: Body,
    core: &Core,
    conn: &ConnInfo,
    client_bodies: Option<Arc<AtomicU64>>,
) -> Result<(bytes::Bytes, BodyCharge), BodyError> {
    use futures_util::StreamExt as _;
    let limits = &core.config.limits;
    let max = usize::try_from(limits.max_message_bytes).unwrap_or(usize::MAX);
    let budget = limits
        .max_body_bytes_per_connection
        .max(limits.max_message_bytes);
    let timeout = Duration::from_secs(limits.body_timeout_secs.max(1));
    let source_budget = limits.max_body_bytes_per_source.max(budget);
    let mut charge = BodyCharge {
        total: conn.body_bytes.clone(),
        source: client_bodies.or_else(|| conn.source_body_bytes.clone()),
        n: 0,
    };
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Failed)?;
            if buf.len().saturating_add(chunk.len()) > max {
                return Err(BodyError::TooLarge);
            }
            let len = chunk.len() as u64;
            let before = charge.total.fetch_add(len, Ordering::Relaxed);
            let source_before = charge
                .source
                .as_ref()
                .map_or(0, |s| s.fetch_add(len, Ordering::Relaxed));
            charge.n += len;
            if before.saturating_add(len) > budget {
                return Err(BodyError::OverBudget);
            }
            if source_before.saturating_add(len) > source_budget {
                return Err(BodyError::SourceOverBudget);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    let bytes = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| BodyError::Timeout)??;
    Ok((bytes, charge))
}

async fn post_didcomm(
    State(st): State<AppState>,
    Extension(conn): Extension<Arc<ConnInfo>>,
    version: axum::http::Version,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    let core = &st.core;
    let source = conn.client_source(&headers);
    if !conn.allow() || !ip_allows(&st, source) {
        let h = core.refuse_raw(
            Rejection::RateLimited,
            codes::RATE_LIMITED,
            "too many messages on this connection",
        );
        crate::admin::access_log_early("http", 429, "too many messages on this connection");
        return didcomm_response(StatusCode::TOO_MANY_REQUESTS, h.replies.into_iter().next());
    }
    // Behind a trusted proxy the client, not the proxy's connection, is the source whose
    // unfinished bodies are counted (spec/mediator.md §6.1).
    let client_bodies = if conn.via_proxy && core.config.limits.max_body_bytes_per_source > 0 {
        st.clients.body_counter(source)
    } else {
        None
    };
    let (bytes, _charge) = match read_body(body, core, &conn, client_bodies).await {
        Ok(b) => b,
        Err(e) => {
            core.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
            let limits = &core.config.limits;
            let (why, status, code, comment) = match e {
                BodyError::TooLarge => (
                    Rejection::TooLarge,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::TOO_BIG,
                    format!("message larger than {} bytes", limits.max_message_bytes),
                ),
                BodyError::Timeout => (
                    Rejection::Timeout,
                    StatusCode::REQUEST_TIMEOUT,
                    codes::TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        limits.body_timeout_secs
                    ),
                ),
                BodyError::OverBudget => (
                    Rejection::RateLimited,
                    StatusCode::TOO_MANY_REQUESTS,
                    codes::RATE_LIMITED,
                    "too many unfinished request bodies on this connection".to_owned(),
                ),
                BodyError::SourceOverBudget => (
                    Rejection::RateLimited,
                    StatusCode::TOO_MANY_REQUESTS,
                    codes::RATE_LIMITED,
                    "too many unfinished request bodies from this address".to_owned(),
                ),
                BodyError::Failed => (
                    Rejection::Malformed,
                    StatusCode::BAD_REQUEST,
                    codes::MALFORMED,
                    "the request body was broken off".to_owned(),
                ),
            };
            let h = core.refuse_raw(why, code, &comment);
            crate::admin::access_log_early("http", status.as_u16(), &comment);
            let mut resp = didcomm_response(status, h.replies.into_iter().next());
            if version <= axum::http::Version::HTTP_11 {
                // The rest of the body is unread: this connection cannot carry another
                // request (HTTP/2 just resets the stream).
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            return resp;
        }
    };
    let h = core.handle(&bytes, Transport::Http, source).await;
    let status = match h.rejection {
        Some(r) => status_for(r),
        None if h.replies.is_empty() => StatusCode::ACCEPTED,
        None => StatusCode::OK,
    };
    let bytes_out = h.replies.first().map_or(0, Vec::len);
    crate::admin::access_log("http", &h, status.as_u16(), bytes.len(), bytes_out);
    didcomm_response(status, h.replies.into_iter().next())
}

/// One token of `limits.rate_per_ip` for `source`.
fn ip_allows(st: &AppState, source: SourceAddr) -> bool {
    st.ip_rate
        .lock()
        .is_ok_and(|mut r| r.allow(&source, Instant::now()))
}

async fn ws_upgrade(
    State(st): State<AppState>,
    Extension(conn): Extension<Arc<ConnInfo>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let source = conn.client_source(&headers);
    // A direct peer's connections were counted at accept; behind a trusted proxy each
    // WebSocket is one client's, by `X-Forwarded-For` (spec/mediator.md §6.1).
    let slot = match st.core.config.limits.max_connections_per_ip {
        max if conn.via_proxy && max > 0 => {
            match SourceSlot::take(&st.clients.websockets, source, max) {
                Some(slot) => Some(slot),
                None => {
                    st.core.metrics.reject(Rejection::Connections);
                    crate::admin::access_log_early(
                        "ws",
                        503,
                        "too many connections from this address",
                    );
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many connections from this address",
                    )
                        .into_response();
                }
            }
        }
        _ => None,
    };
    let max = usize::try_from(st.core.config.limits.max_message_bytes).unwrap_or(usize::MAX);
    let tracker = st.tracker.clone();
    // Small buffers: an idle session should cost a few KiB, not the 128 KiB default.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let _slot = slot;
                ws_session(st, socket, conn, source).await;
            })
        })
}

/// What a WebSocket session remembers between frames.
struct Session {
    live: Option<(String, LiveSub)>,
    /// Live pushes are raw binary frames, not authcrypt `delivery` messages
    /// (spec/mediator.md §3.1).
    raw: bool,
    /// Ids pushed on this socket and not yet acknowledged.
    inflight: HashSet<String>,
    /// Pickup version of the live pushes, and queued ids they skip (Pickup 4.0 leaves
    /// the backlog to `delivery-request`, spec/mediator.md §3.2).
    pickup: PickupVersion,
    skip: HashSet<String>,
    /// Bytes pushed on this socket (the access summary's `bytes_out`, with the replies).
    pushed: usize,
}

async fn ws_session(st: AppState, mut socket: WebSocket, conn: Arc<ConnInfo>, source: SourceAddr) {
    let core = st.core.clone();
    let m = &core.metrics;
    m.websockets_open.fetch_add(1, Ordering::Relaxed);
    let idle = Duration::from_secs(core.config.limits.idle_timeout_secs.max(1));
    // Until a request authenticates the socket, only stored forwards (an anonymous
    // sender's work) keep it open — not pings, not refused frames (spec/mediator.md §6.1).
    let auth_wait = Duration::from_secs(core.config.limits.ws_auth_timeout_secs.max(1));
    let mut anonymous_until = Some(tokio::time::Instant::now() + auth_wait);
    let mut s = Session {
        live: None,
        raw: false,
        inflight: HashSet::new(),
        pickup: PickupVersion::V3,
        skip: HashSet::new(),
        pushed: 0,
    };
    tracing::debug!(peer = %conn.peer, "websocket open");
    let opened = tokio::time::Instant::now();
    let mut access = crate::admin::WsAccess::default();
    loop {
        let wake = s.live.as_ref().map(|(_, sub)| sub.notify.clone());
        let woken = async move {
            match wake {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        let auth_deadline = anonymous_until;
        let unauthenticated = async move {
            match auth_deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            () = st.cancel.cancelled() => {
                close(&mut socket, idle).await;
                break;
            }
            () = unauthenticated => {
                tracing::debug!(peer = %conn.peer, "websocket not authenticated in time");
                m.reject(Rejection::Timeout);
                close(&mut socket, idle).await;
                break;
            }
            () = woken => {
                // Let arrivals that come together share one delivery (one authcrypt for
                // the batch instead of one per message): a short coalescing window.
                let window = core.config.limits.live_coalesce_ms;
                if window > 0 {
                    tokio::time::sleep(Duration::from_millis(window)).await;
                } else {
                    // No added delay, but let the writers of the same group commit (woken
                    // together) record their arrivals first: they then share this push.
                    tokio::task::yield_now().await;
                }
                let by = write_deadline(idle, anonymous_until);
                if written(by, push_pending(&core, &mut s, &mut socket)).await.is_err() {
                    break;
                }
                continue;
            }
            f = tokio::time::timeout(idle, socket.recv()) => f,
        };
        let bytes = match frame {
            Err(_) => {
                tracing::debug!(peer = %conn.peer, "websocket idle timeout");
                close(&mut socket, idle).await;
                break;
            }
            Ok(None | Some(Err(_))) => break,
            Ok(Some(Ok(msg))) => match msg {
                WsMessage::Text(t) => bytes::Bytes::from(t),
                WsMessage::Binary(b) => b,
                WsMessage::Close(_) => break,
                _ => continue,
            },
        };
        let h = if conn.allow() && ip_allows(&st, source) {
            let live_did = s.live.as_ref().map(|(d, _)| d.as_str());
            core.handle_on(&bytes, Transport::WebSocket, source, live_did)
                .await
        } else {
            core.refuse_raw(
                Rejection::RateLimited,
                codes::RATE_LIMITED,
                "too many messages on this connection",
            )
        };
        access.frame(
            &h,
            h.rejection.map_or(200, |r| status_for(r).as_u16()),
            bytes.len(),
            h.replies.iter().map(Vec::len).sum(),
        );
        if h.authenticated {
            anonymous_until = None;
        } else if h.stored && anonymous_until.is_some() {
            anonymous_until = Some(tokio::time::Instant::now() + auth_wait);
        }
        // Every write has a deadline, the idle timeout or the auth deadline if sooner: a
        // client that sends and never reads would otherwise block this task in a write,
        // where neither deadline can fire (spec/mediator.md §6.1).
        let by = write_deadline(idle, anonymous_until);
        let mut failed = false;
        for r in h.replies {
            if written(by, send(&mut socket, r)).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            if tokio::time::Instant::now() >= by {
                tracing::debug!(peer = %conn.peer, "websocket does not read: closed");
                if anonymous_until.is_some() {
                    m.reject(Rejection::Timeout);
                }
            }
            break;
        }
        if let Some((did, ids)) = h.received {
            if s.live.as_ref().is_some_and(|(d, _)| *d == did) {
                for id in &ids {
                    s.inflight.remove(id);
                }
                // Room in the window: push what is still waiting.
                let by = write_deadline(idle, anonymous_until);
                if written(by, push_pending(&core, &mut s, &mut socket))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        if let Some((did, on)) = h.live {
            if s.live.is_some() {
                m.live_sessions.fetch_sub(1, Ordering::Relaxed);
            }
            s.live = None;
            s.raw = h.live_raw;
            s.inflight.clear();
            s.pickup = h.live_pickup;
            s.skip = h.live_skip.into_iter().collect();
            if on {
                // Registering leaves a permit: the next loop turn pushes everything queued
                // before live mode was switched on.
                s.live = Some((did.clone(), st.hub.register(&did)));
                m.live_sessions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if s.live.is_some() {
        m.live_sessions.fetch_sub(1, Ordering::Relaxed);
    }
    m.websockets_open.fetch_sub(1, Ordering::Relaxed);
    access.pushed(s.pushed);
    access.close(opened.elapsed().as_secs_f64());
    tracing::debug!(peer = %conn.peer, "websocket closed");
}

/// When the writes of this loop turn must be done: `idle` from now, or the auth deadline
/// of a socket not yet authenticated if that comes first.
fn write_deadline(
    idle: Duration,
    anonymous_until: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let by = tokio::time::Instant::now() + idle;
    anonymous_until.map_or(by, |d| d.min(by))
}

/// `write` with a deadline: a socket whose client does not read fails it once `by` passes.
async fn written<T>(
    by: tokio::time::Instant,
    write: impl std::future::Future<Output = Result<T, axum::Error>>,
) -> Result<T, axum::Error> {
    match tokio::time::timeout_at(by, write).await {
        Ok(r) => r,
        Err(e) => Err(axum::Error::new(e)),
    }
}

/// Sends a close frame, unless the client has not read for `idle`.
async fn close(socket: &mut WebSocket, idle: Duration) {
    let _ = tokio::time::timeout(idle, socket.send(WsMessage::Close(None))).await;
}

async fn send(socket: &mut WebSocket, bytes: Vec<u8>) -> Result<(), axum::Error> {
    let text = String::from_utf8(bytes).unwrap_or_default();
    socket.send(WsMessage::text(text)).await
}

/// Pushes queued messages not yet pushed on this socket, in `delivery` batches, until the
/// queue is exhausted or `max_inflight` unacknowledged messages are out.
async fn push_pending(
    core: &Core,
    s: &mut Session,
    socket: &mut WebSocket,
) -> Result<(), axum::Error> {
    let Some((did, _)) = &s.live else {
        return Ok(());
    };
    let did = did.clone();
    let batch_max = usize::try_from(core.config.limits.max_delivery_batch.max(1)).unwrap_or(100);
    let window = usize::try_from(core.config.limits.max_inflight.max(1)).unwrap_or(1000);
    loop {
        if s.inflight.len() >= window {
            return Ok(());
        }
        let take = batch_max.min(window - s.inflight.len());
        // Only the bodies this push sends are read; what is in flight or skipped is passed
        // over by id (spec/mediator.md §11.2: reading every unacknowledged body again on
        // each push cost O(in flight) copies per push).
        let except: HashSet<String> = if s.skip.is_empty() {
            std::mem::take(&mut s.inflight)
        } else {
            s.inflight.union(&s.skip).cloned().collect()
        };
        let fetched = core.store.fetch_unsent(&did, &except, take).await;
        if s.skip.is_empty() {
            s.inflight = except;
        }
        let unsent = match fetched {
            Ok(q) => q,
            Err(e) => {
                tracing::error!(error = %e, "live delivery: store fetch failed");
                return Ok(());
            }
        };
        if let Some(present) = &unsent.still_queued {
            // We saw the whole queue: forget ids acknowledged elsewhere (another socket of
            // the same DID), so they do not hold the window.
            s.inflight.retain(|id| present.contains(id));
            s.skip.retain(|id| present.contains(id));
        }
        let mut fresh = unsent.messages;
        if fresh.is_empty() {
            return Ok(());
        }
        let mut full = fresh.len() == batch_max;
        if s.raw {
            s.pushed += push_raw(core, socket, &did, &fresh, s.pickup).await?;
        } else {
            // Bounded by bytes too (spec/mediator.md §3): what does not fit goes next round.
            let (packed, n) = core.pack_delivery(s.pickup, &fresh, None, None, &did).await;
            if n < fresh.len() {
                fresh.truncate(n);
                full = true;
            }
            core.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
            s.pushed += packed.len();
            send(socket, packed).await?;
        }
        s.inflight.extend(fresh.into_iter().map(|m| m.id));
        if !full {
            return Ok(());
        }
    }
}

/// Raw live mode (spec/mediator.md §3.1): each message as one binary frame
/// `id_len || id || stored bytes`, no authcrypt (the stored forwarded message is already
/// encrypted for the recipient; the socket is bound to `did` by its authenticated
/// `live-delivery-change`). Frames are queued and flushed once per batch. Returns the bytes
/// sent.
async fn push_raw(
    core: &Core,
    socket: &mut WebSocket,
    did: &str,
    batch: &[crate::store::StoredMessage],
    pickup: PickupVersion,
) -> Result<usize, axum::Error> {
    use futures_util::SinkExt as _;
    let mut wrapped = Vec::new();
    let mut bytes = 0;
    for m in batch {
        match crate::messages::encode_raw_push(&m.id, &m.data) {
            Some(frame) => {
                bytes += frame.len();
                socket.feed(WsMessage::Binary(frame.into())).await?;
                core.metrics
                    .messages_delivered
                    .fetch_add(1, Ordering::Relaxed);
                core.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
            }
            // Store ids are hex, so this does not happen; never drop a message though.
            None => wrapped.push(m.clone()),
        }
    }
    if !wrapped.is_empty() {
        let mut msg = core.delivery_in(pickup, &wrapped, None, None);
        let packed = core.pack_for(&mut msg, did).await;
        core.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
        bytes += packed.len();
        let text = String::from_utf8(packed).unwrap_or_default();
        socket.feed(WsMessage::text(text)).await?;
    }
    socket.flush().await?;
    Ok(bytes)
}
