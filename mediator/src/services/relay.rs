//! The relay service (spec/rendezvous.md §4): WebSocket `GET /relay` on the
//! mediator's HTTP port and a plain-TCP listener, both driving one
//! [`RelayServer`] state machine.
//!
//! ```text
//!  WS /relay ─┐                      ┌──────── Mutex<Hub> ────────┐
//!  TCP port ──┴─▶ conn task: reader ─▶ RelayServer::handle ─▶ queue[B] ─Wake(B)─▶ Notify B
//!                          writer ◀── poll_transmit(A) ◀─ Notify A │ timer: handle_timeout
//!                 ClientAuth ─▶ resolve DID (did:key local, else UniversalResolver) ─▶ finish_auth
//! ```
//!
//! Each connection is opened with its source address (the TCP peer, or for
//! WebSocket the HTTP connection's peer — behind a trusted proxy the client its
//! `X-Forwarded-For` names) so the core can cap connections per address
//! (`max_clients_per_source`).
//!
//! The state machine (bounded per-client queues, rate limits, timeouts,
//! metrics) sits behind one `std::sync::Mutex`, never held across an await:
//! each connection task locks it briefly to feed a frame or drain its queue,
//! and wakes the destination's writer through a [`Notify`]. A frame from A
//! to B is therefore copied once into B's bounded queue and written by B's
//! task; nothing else buffers it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Extension;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use mpc_did_rendezvous::net::relay::{RELAY_SUBPROTOCOL, RELAY_SUBPROTOCOL_V2};
use mpc_did_rendezvous::relay::{ClientAuth, ClientToRelay, RelayToClient, VerifyingKey};
use mpc_did_rendezvous::relay_server::{
    ConnId, Handled, RelayConfig, RelayMetrics, RelayServer, ServerEvent,
};
use mpc_did_rendezvous::RelayError;
use mpc_did_resolver::{DidResolver, PublicKey, UniversalResolver};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{Service, ServiceContext};

/// Limits and listeners of the relay service.
#[derive(Clone, Debug)]
pub struct RelayServiceConfig {
    /// Plain-TCP relay listener (`None`: WebSocket only). Port 0 picks one.
    pub tcp_listen: Option<SocketAddr>,
    /// Most simultaneous relay connections.
    pub max_clients: usize,
    /// Most simultaneous relay connections from one IPv4 address or IPv6 /64 (for WebSocket
    /// behind a reverse proxy in `trusted_proxies`, the client `X-Forwarded-For` names).
    pub max_clients_per_source: usize,
    /// Per-client outgoing queue limit in bytes.
    pub max_queue_bytes: usize,
    /// Per-client outgoing queue limit in frames.
    pub max_queue_frames: usize,
    /// Per-client sustained send rate (wire bytes per second).
    pub rate_bytes_per_sec: u64,
    /// Per-client burst above the rate.
    pub burst_bytes: u64,
    /// Bytes of one sender's packets that may wait in receivers' queues before the relay
    /// stops reading that sender for a while (spec/rendezvous.md §4.5).
    pub max_backlog_bytes: usize,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Time allowed to resolve a client's DID document.
    pub resolve_timeout: Duration,
    /// Only DIDs holding a mediation grant here may use the relay (`derper --verify-clients`;
    /// spec/rendezvous.md §4.3).
    pub verify_clients: bool,
    /// Join a mesh of instances sharing a Redis (spec/rendezvous.md §4.7).
    pub mesh: Option<crate::mesh::MeshConfig>,
}

impl Default for RelayServiceConfig {
    fn default() -> Self {
        let core = RelayConfig::new("");
        RelayServiceConfig {
            tcp_listen: None,
            max_clients: core.max_clients,
            max_clients_per_source: core.max_clients_per_source,
            max_queue_bytes: core.max_queue_bytes,
            max_queue_frames: core.max_queue_frames,
            rate_bytes_per_sec: core.rate_bytes_per_sec,
            burst_bytes: core.burst_bytes,
            max_backlog_bytes: core.max_backlog_bytes,
            idle_timeout: core.idle_timeout,
            resolve_timeout: Duration::from_secs(10),
            verify_clients: false,
            mesh: None,
        }
    }
}

struct Conn {
    notify: Arc<Notify>,
    /// Cancelled when the core closes the connection (timed out, refused, failed): the
    /// connection task ends on it even while its writer is blocked on a client that does
    /// not read (spec/rendezvous.md §4.5).
    closing: CancellationToken,
}

struct Hub {
    server: RelayServer,
    conns: HashMap<ConnId, Conn>,
    /// Where mesh events go (spec/rendezvous.md §4.7); `None` without a mesh.
    mesh: Option<crate::mesh::MeshTx>,
}

impl Hub {
    /// Delivers the state machine's events to the connection tasks.
    fn pump(&mut self) {
        // Mesh events first: dispatching one may queue a notice to a local client.
        if let Some(mesh) = &self.mesh {
            while let Some(ev) = self.server.poll_mesh() {
                mesh.dispatch(ev, &mut self.server);
            }
        }
        while let Some(ev) = self.server.poll_event() {
            let (ServerEvent::Wake(c) | ServerEvent::Close(c)) = ev;
            if let Some(conn) = self.conns.get(&c) {
                if matches!(ev, ServerEvent::Close(_)) {
                    conn.closing.cancel();
                }
                conn.notify.notify_one();
            }
        }
    }
}

struct Inner {
    hub: Mutex<Hub>,
    resolver: UniversalResolver,
    resolve_timeout: Duration,
    /// Longest a batch write to a client may take (the idle timeout): a client that does
    /// not read for that long is closed and its slots freed.
    write_timeout: Duration,
    /// Wakes the timer when a connection opens (its deadline may be the earliest).
    timer: Notify,
    /// The mediator's shutdown: every relay connection ends with it.
    stop: CancellationToken,
    /// Set with `verify_clients`: only DIDs with a mediation grant authenticate.
    grants: Option<crate::GrantCheck>,
}

impl crate::mesh::RelayAccess for Inner {
    fn with_server(&self, f: &mut dyn FnMut(&mut RelayServer)) {
        let mut hub = self.lock();
        f(&mut hub.server);
        hub.pump();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic while holding the lock cannot leave the relay's invariants
        // half-updated in a way that matters more than stopping service.
        self.hub
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Shared view of a running relay service (metrics, TCP address).
#[derive(Clone)]
pub struct RelayServiceHandle {
    inner: watch::Receiver<Option<Arc<Inner>>>,
    tcp_addr: Option<SocketAddr>,
    mesh_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for RelayServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServiceHandle")
            .field("tcp_addr", &self.tcp_addr)
            .finish_non_exhaustive()
    }
}

impl RelayServiceHandle {
    /// The bound plain-TCP relay address, if any.
    #[must_use]
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The bound mesh listener's address, if this instance is in a mesh.
    #[must_use]
    pub fn mesh_addr(&self) -> Option<SocketAddr> {
        self.mesh_addr
    }

    /// A snapshot of the relay's counters (`None` before the service started).
    #[must_use]
    pub fn metrics(&self) -> Option<RelayMetrics> {
        let inner = self.inner.borrow().clone()?;
        let m = inner.lock().server.metrics().clone();
        Some(m)
    }

    /// The counters in the Prometheus text format (empty before start).
    #[must_use]
    pub fn prometheus(&self) -> String {
        self.metrics()
            .map(|m| prometheus_text(&m))
            .unwrap_or_default()
    }
}

/// The relay's counters as Prometheus text (series `mpcdid_relay_*`).
#[must_use]
pub fn prometheus_text(m: &RelayMetrics) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2048);
    let gauges = [
        ("clients", "Relay connections open now.", m.clients),
        (
            "authenticated",
            "Relay connections authenticated now.",
            m.authenticated,
        ),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(
            out,
            "# HELP mpcdid_relay_{name} {help}\n# TYPE mpcdid_relay_{name} gauge\nmpcdid_relay_{name} {v}"
        );
    }
    let counters = [
        ("accepted_total", "Relay connections accepted.", m.accepted),
        (
            "rejected_full_total",
            "Relay connections refused at max clients.",
            m.rejected_full,
        ),
        (
            "rejected_per_source_total",
            "Relay connections refused at the per-address limit.",
            m.rejected_per_source,
        ),
        (
            "auth_ok_total",
            "Successful relay authentications.",
            m.auth_ok,
        ),
        (
            "auth_failed_total",
            "Failed relay authentications.",
            m.auth_failed,
        ),
        (
            "not_authenticated_total",
            "Packets sent before authentication.",
            m.not_authenticated,
        ),
        (
            "malformed_total",
            "Malformed or oversize relay frames.",
            m.malformed,
        ),
        (
            "forwarded_packets_total",
            "Packets forwarded.",
            m.forwarded_packets,
        ),
        (
            "forwarded_bytes_total",
            "Payload bytes forwarded.",
            m.forwarded_bytes,
        ),
        (
            "unknown_peer_total",
            "Packets to peers not connected here.",
            m.unknown_peer,
        ),
        (
            "dropped_rate_limited_total",
            "Packets dropped by the sender's rate limit.",
            m.dropped_rate_limited,
        ),
        (
            "dropped_queue_full_total",
            "Packets dropped on a full destination queue.",
            m.dropped_queue_full,
        ),
        (
            "dropped_not_allowed_total",
            "Packets to a client whose allow-list does not name the sender.",
            m.dropped_not_allowed,
        ),
        (
            "dropped_control_total",
            "Control frames dropped on a full queue.",
            m.dropped_control,
        ),
        (
            "timed_out_total",
            "Connections closed idle or unauthenticated.",
            m.timed_out,
        ),
        (
            "replaced_total",
            "Connections replaced by a newer one with the same key.",
            m.replaced,
        ),
        (
            "mesh_out_packets_total",
            "Packets handed to the mesh for peers on other instances.",
            m.mesh_out_packets,
        ),
        (
            "mesh_in_packets_total",
            "Packets from other instances queued to clients here.",
            m.mesh_in_packets,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP mpcdid_relay_{name} {help}\n# TYPE mpcdid_relay_{name} counter\nmpcdid_relay_{name} {v}"
        );
    }
    out
}

/// The relay as a mediator [`Service`]: `GET /relay` (WebSocket, subprotocol
/// `mpc-did-relay.1`), `GET /metrics/relay` (Prometheus text) and an optional
/// plain-TCP listener.
pub struct RelayService {
    cfg: RelayServiceConfig,
    listener: Option<TcpListener>,
    mesh_listener: Option<TcpListener>,
    resolver: Option<UniversalResolver>,
    tx: watch::Sender<Option<Arc<Inner>>>,
    handle: RelayServiceHandle,
}

impl RelayService {
    /// Binds the TCP listener (if configured); the relay starts with the mediator.
    ///
    /// # Errors
    /// The TCP address cannot be bound.
    pub async fn bind(cfg: RelayServiceConfig) -> std::io::Result<Self> {
        let listener = match cfg.tcp_listen {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let tcp_addr = listener.as_ref().map(TcpListener::local_addr).transpose()?;
        let mut cfg = cfg;
        let mesh_listener = match &mut cfg.mesh {
            Some(m) => {
                m.validate().map_err(std::io::Error::other)?;
                let l = TcpListener::bind(m.listen).await?;
                if m.advertise.is_none() {
                    m.advertise = Some(l.local_addr()?);
                }
                Some(l)
            }
            None => None,
        };
        let mesh_addr = mesh_listener
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let (tx, rx) = watch::channel(None);
        Ok(RelayService {
            cfg,
            listener,
            mesh_listener,
            resolver: None,
            tx,
            handle: RelayServiceHandle {
                inner: rx,
                tcp_addr,
                mesh_addr,
            },
        })
    }

    /// Resolves clients' DIDs with `resolver` (default: the mediator's own resolver, with
    /// its did:web settings, cache and per-site fetch slots).
    #[must_use]
    pub fn with_resolver(mut self, resolver: UniversalResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Metrics and addresses, usable after the service moved into the mediator.
    #[must_use]
    pub fn handle(&self) -> RelayServiceHandle {
        self.handle.clone()
    }
}

impl Service for RelayService {
    fn name(&self) -> &'static str {
        "relay"
    }

    fn routes(&self) -> Option<Router> {
        let rx = self.handle.inner.clone();
        let metrics = self.handle.clone();
        Some(
            Router::new()
                .route("/relay", get(ws_upgrade))
                .with_state(rx)
                .route(
                    "/metrics/relay",
                    get(move || {
                        let m = metrics.clone();
                        async move { m.prometheus() }
                    }),
                ),
        )
    }

    fn run(
        self: Box<Self>,
        ctx: ServiceContext,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        Box::pin(async move {
            // The mediator's own resolver unless one was given: the same did:web settings
            // (`allow_private_did_web`), cache and per-site fetch slots as its DIDComm side.
            let resolver = self.resolver.unwrap_or_else(|| ctx.resolver.clone());
            let mut core = RelayConfig::new(ctx.identity.did.clone());
            core.max_clients = self.cfg.max_clients;
            core.max_clients_per_source = self.cfg.max_clients_per_source;
            core.max_queue_bytes = self.cfg.max_queue_bytes;
            core.max_queue_frames = self.cfg.max_queue_frames;
            core.rate_bytes_per_sec = self.cfg.rate_bytes_per_sec;
            core.burst_bytes = self.cfg.burst_bytes;
            core.max_backlog_bytes = self.cfg.max_backlog_bytes;
            core.idle_timeout = self.cfg.idle_timeout;
            let mut server = RelayServer::new(core);
            let mesh = match (self.cfg.mesh.clone(), self.mesh_listener) {
                (Some(m), Some(l)) => {
                    server.enable_mesh();
                    let (tx, rx) = crate::mesh::channels();
                    Some((tx, rx, m, l))
                }
                _ => None,
            };
            let (mesh_tx, mesh_run) = match mesh {
                Some((tx, rx, m, l)) => (Some(tx), Some((rx, m, l))),
                None => (None, None),
            };
            let inner = Arc::new(Inner {
                hub: Mutex::new(Hub {
                    server,
                    conns: HashMap::new(),
                    mesh: mesh_tx,
                }),
                resolver,
                resolve_timeout: self.cfg.resolve_timeout,
                write_timeout: self.cfg.idle_timeout.max(Duration::from_secs(1)),
                timer: Notify::new(),
                stop: ctx.shutdown.clone(),
                grants: self.cfg.verify_clients.then(|| ctx.grants.clone()),
            });
            self.tx.send_replace(Some(inner.clone()));
            let stop = ctx.shutdown.clone();
            let timer = tokio::spawn(timer_task(inner.clone(), stop.clone()));
            if let Some((rx, m, l)) = mesh_run {
                let access: Arc<dyn crate::mesh::RelayAccess> = inner.clone();
                tokio::spawn(crate::mesh::run(m, l, rx, access, stop.clone()));
            }
            if let Some(listener) = self.listener {
                tracing::info!(addr = ?listener.local_addr().ok(), "relay listening on TCP");
                accept_loop(listener, inner, stop.clone()).await;
            }
            stop.cancelled().await;
            timer.abort();
        })
    }
}

async fn timer_task(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        let next = inner.lock().server.next_timeout();
        let sleep = match next {
            Some(t) => tokio::time::sleep_until(t.into()),
            None => tokio::time::sleep(Duration::from_secs(3600)),
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = inner.timer.notified() => continue,
            () = sleep => {}
        }
        let mut hub = inner.lock();
        hub.server.handle_timeout(Instant::now());
        hub.pump();
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, from)) => {
                let _ = tcp.set_nodelay(true);
                let (rd, wr) = tcp.into_split();
                tokio::spawn(serve_conn(
                    inner.clone(),
                    Reader::Tcp(rd, bytes::BytesMut::with_capacity(128 << 10)),
                    Writer::Tcp(wr, Vec::new()),
                    Some(from.ip()),
                    stop.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn ws_upgrade(
    State(rx): State<watch::Receiver<Option<Arc<Inner>>>>,
    conn: Option<Extension<Arc<crate::server::ConnInfo>>>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    // The per-source limit counts the HTTP connection's peer, or behind a trusted reverse
    // proxy the client its `X-Forwarded-For` names (spec/rendezvous.md §4.5).
    let source = conn.map(|Extension(c)| c.client_ip(&headers));
    let mut rx = rx;
    // The service task publishes the hub when the mediator starts; a request
    // that races it waits briefly.
    let inner =
        match tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some)).await {
            Ok(Ok(g)) => g.clone(),
            _ => None,
        };
    let Some(inner) = inner else {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let max = mpc_did_rendezvous::relay::MAX_FRAME_LEN + 5;
    // `.2` adds AllowPeers; a client offering only `.1` never sends it.
    ws.protocols([RELAY_SUBPROTOCOL_V2, RELAY_SUBPROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        // One socket write per batch of frames rather than one per 128 KiB: every write
        // wakes the receiving client (spec/rendezvous.md §7.3).
        .write_buffer_size(mpc_did_rendezvous::net::ws::WS_WRITE_BUFFER)
        .read_buffer_size(mpc_did_rendezvous::net::ws::WS_READ_BUFFER)
        .on_upgrade(move |socket| {
            let (wr, rd) = socket.split();
            let stop = inner.stop.clone();
            serve_conn(inner, Reader::Ws(rd), Writer::Ws(wr), source, stop)
        })
}

enum Reader {
    Tcp(tokio::net::tcp::OwnedReadHalf, bytes::BytesMut),
    Ws(futures_util::stream::SplitStream<WebSocket>),
}

enum Writer {
    /// The socket and a buffer reused for every batch.
    Tcp(tokio::net::tcp::OwnedWriteHalf, Vec<u8>),
    Ws(futures_util::stream::SplitSink<WebSocket, WsMessage>),
}

enum Read {
    Frame(ClientToRelay, usize),
    Bad(RelayError),
    End,
}

impl Reader {
    async fn next(&mut self) -> Read {
        match self {
            Reader::Tcp(rd, buf) => loop {
                match ClientToRelay::decode(buf) {
                    Ok(Some((f, used))) => {
                        // O(1): the rest of the buffer is not moved (a `Vec::drain` moved
                        // it once per frame).
                        bytes::Buf::advance(buf, used);
                        return Read::Frame(f, used);
                    }
                    Ok(None) => {}
                    Err(e) => return Read::Bad(e),
                }
                if buf.capacity() - buf.len() < 16 << 10 {
                    buf.reserve(128 << 10);
                }
                match rd.read_buf(buf).await {
                    Ok(0) | Err(_) => return Read::End,
                    Ok(_) => {}
                }
            },
            Reader::Ws(s) => loop {
                match s.next().await {
                    None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return Read::End,
                    Some(Ok(WsMessage::Binary(b))) => {
                        return match ClientToRelay::decode(&b) {
                            Ok(Some((f, used))) if used == b.len() => Read::Frame(f, used),
                            Ok(_) => Read::Bad(RelayError::Malformed),
                            Err(e) => Read::Bad(e),
                        }
                    }
                    // Text is not part of the protocol.
                    Some(Ok(WsMessage::Text(_))) => return Read::Bad(RelayError::Malformed),
                    Some(Ok(_)) => {}
                }
            },
        }
    }
}

impl Writer {
    async fn send(&mut self, frames: &[RelayToClient]) -> bool {
        match self {
            Writer::Tcp(w, buf) => {
                // One gathering write per batch: headers (and small frames) in `buf`, large
                // payloads passed on where the core keeps them, not copied again.
                buf.clear();
                let mut parts: Vec<(usize, &[u8])> = Vec::with_capacity(frames.len());
                for f in frames {
                    let Ok(payload) = f.write_head_to(buf) else {
                        return false;
                    };
                    if payload.len() < COPY_BELOW {
                        buf.extend_from_slice(payload);
                    } else {
                        parts.push((buf.len(), payload));
                    }
                }
                let mut slices = Vec::with_capacity(2 * parts.len() + 1);
                let mut at = 0;
                for (end, payload) in parts {
                    slices.push(std::io::IoSlice::new(buf.get(at..end).unwrap_or_default()));
                    slices.push(std::io::IoSlice::new(payload));
                    at = end;
                }
                slices.push(std::io::IoSlice::new(buf.get(at..).unwrap_or_default()));
                slices.retain(|s| !s.is_empty());
                let mut rest = &mut slices[..];
                while !rest.is_empty() {
                    match w.write_vectored(rest).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
                    }
                }
                w.flush().await.is_ok()
            }
            Writer::Ws(s) => {
                // One allocation for the batch; each frame is a slice of it (one message
                // per frame, spec/rendezvous.md §4.1).
                let mut all = Vec::with_capacity(frames.iter().map(|f| f.encoded_len()).sum());
                let mut ends = Vec::with_capacity(frames.len());
                for f in frames {
                    if f.write_to(&mut all).is_err() {
                        return false;
                    }
                    ends.push(all.len());
                }
                let all = bytes::Bytes::from(all);
                let mut start = 0;
                for end in ends {
                    if s.feed(WsMessage::Binary(all.slice(start..end)))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                    start = end;
                }
                s.flush().await.is_ok()
            }
        }
    }

    async fn close(&mut self) {
        match self {
            Writer::Tcp(w, _) => {
                let _ = w.shutdown().await;
            }
            Writer::Ws(s) => {
                let _ = s.close().await;
            }
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Resolves the Ed25519 key `auth.key_id` of `auth.did`; it must be one of
/// the document's authentication methods. `None` for every failure (the
/// relay answers one opaque AuthFailed).
async fn resolve_key(inner: &Inner, auth: &ClientAuth) -> Option<VerifyingKey> {
    if let Some(grants) = &inner.grants {
        // `--verify-clients`: strangers without a grant here cannot use the relay. Checked
        // before the DID is resolved, so a stranger naming a did:web on a slow or hostile
        // host costs a store lookup, not a fetch (spec/rendezvous.md §7.2).
        match grants.has_grant(&auth.did).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "relay: cannot check the mediation grant");
                return None;
            }
        }
    }
    let doc = if auth.did.starts_with("did:key:") {
        mpc_did_resolver::key::resolve(&auth.did).ok()?
    } else {
        tokio::time::timeout(inner.resolve_timeout, inner.resolver.resolve(&auth.did))
            .await
            .ok()?
            .ok()?
    };
    let vm = doc.authentication_methods().into_iter().find(|vm| {
        doc.verification_method(&auth.key_id)
            .is_some_and(|x| x.id == vm.id)
    })?;
    match vm.key {
        PublicKey::Ed25519(k) => VerifyingKey::from_bytes(&k).ok(),
        PublicKey::X25519(_) => None,
    }
}

/// Payloads below this size are copied next to their frame's header for the socket write;
/// larger ones are written from where the relay queued them (a gathering write).
const COPY_BELOW: usize = 4096;

/// Longest time the writer may take to send a closing connection's last frames.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time a refused connection's refusal frame may take.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest time a sender goes unread because its packets wait at slow receivers.
const BACKLOG_PAUSE_MAX: Duration = Duration::from_millis(500);

async fn serve_conn(
    inner: Arc<Inner>,
    mut rd: Reader,
    mut wr: Writer,
    source: Option<IpAddr>,
    stop: CancellationToken,
) {
    let mut nonce = [0u8; 32];
    OsRng.fill_bytes(&mut nonce);
    let notify = Arc::new(Notify::new());
    let closing = CancellationToken::new();
    let opened = {
        let mut hub = inner.lock();
        let r = match source {
            Some(ip) => hub.server.open_from(nonce, ip, Instant::now()),
            None => hub.server.open(nonce, Instant::now()),
        };
        if let Ok(id) = r {
            hub.conns.insert(
                id,
                Conn {
                    notify: notify.clone(),
                    closing: closing.clone(),
                },
            );
            hub.pump();
        }
        r
    };
    let id = match opened {
        Ok(id) => id,
        Err(e) => {
            tracing::debug!(?source, "relay connection refused: {e}");
            let refusal = async {
                let _ = wr.send(&[RelayServer::refusal_frame_for(&e)]).await;
                wr.close().await;
            };
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, refusal).await;
            return;
        }
    };
    inner.timer.notify_one();

    let writer = async {
        let mut batch = Vec::with_capacity(64);
        loop {
            notify.notified().await;
            loop {
                let done = closing.is_cancelled();
                {
                    let mut hub = inner.lock();
                    while batch.len() < 256 {
                        match hub.server.poll_transmit(id) {
                            Some(f) => batch.push(f),
                            None => break,
                        }
                    }
                }
                if batch.is_empty() {
                    if done {
                        let _ = tokio::time::timeout(inner.write_timeout, wr.close()).await;
                        return;
                    }
                    break;
                }
                // Every write has a deadline: a client that stops reading fills its socket
                // buffer, and without one this task (and the client's slots) would wait
                // for it for ever.
                match tokio::time::timeout(inner.write_timeout, wr.send(&batch)).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(_) => {
                        tracing::debug!(?source, "relay client does not read: closed");
                        return;
                    }
                }
                batch.clear();
            }
        }
    };

    let reader = async {
        let mut since_yield = 0u32;
        loop {
            match rd.next().await {
                Read::Frame(frame, len) => {
                    let (handled, pause) = {
                        let mut hub = inner.lock();
                        let now = Instant::now();
                        let r = hub.server.handle(id, frame, len, now);
                        hub.pump();
                        (r, hub.server.read_pause(id, now))
                    };
                    match handled {
                        Ok(Handled::VerifyAuth(auth)) => {
                            let key = resolve_key(&inner, &auth).await;
                            let mut hub = inner.lock();
                            let _ = hub.server.finish_auth(id, &auth, key.as_ref(), now_unix());
                            hub.pump();
                        }
                        Ok(Handled::Done) => {}
                        Err(_) => return true,
                    }
                    if closing.is_cancelled() {
                        return true;
                    }
                    // Let destination writers run every few frames: a reader
                    // draining a full socket buffer must not fill a peer's
                    // queue faster than its writer can empty it (on a busy or
                    // single-threaded runtime that would turn into drops).
                    // The byte-rate limit is enforced by reading this client no faster
                    // than its rate: TCP then slows the sender down, and nothing is
                    // dropped for the rate (spec/rendezvous.md §4.5).
                    // A sender whose packets pile up at slow receivers is not read either
                    // until they drain (the core's backlog bound): asked again after each
                    // pause.
                    // Bounded: a receiver that stalls must not stall its senders for good
                    // (after `BACKLOG_PAUSE_MAX` the sender is read again, and a full queue
                    // drops as before).
                    if let Some(mut pause) = pause {
                        since_yield = 0;
                        let paused = Instant::now();
                        loop {
                            tokio::time::sleep(pause).await;
                            if paused.elapsed() >= BACKLOG_PAUSE_MAX {
                                break;
                            }
                            if closing.is_cancelled() {
                                return true;
                            }
                            match inner.lock().server.read_pause(id, Instant::now()) {
                                Some(p) => pause = p,
                                None => break,
                            }
                        }
                        continue;
                    }
                    since_yield += 1;
                    if since_yield >= 8 {
                        since_yield = 0;
                        tokio::task::yield_now().await;
                    }
                }
                Read::Bad(e) => {
                    let mut hub = inner.lock();
                    hub.server.on_malformed(id, &e);
                    hub.pump();
                    return true;
                }
                Read::End => return false,
            }
        }
    };

    tokio::pin!(writer, reader);
    tokio::select! {
        () = &mut writer => {}
        flush = &mut reader => {
            if flush {
                // The relay queued a final frame (Error / AuthFailed): let the
                // writer send it and close, but not forever.
                let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut writer).await;
            }
        }
        // The core closed the connection (idle, unauthenticated, …) while the reader waits
        // for a frame that may never come: the writer gets a bounded time to send what the
        // core queued last, then the connection ends either way.
        () = closing.cancelled() => {
            let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut writer).await;
        }
        () = stop.cancelled() => {}
    }
    let mut hub = inner.lock();
    hub.conns.remove(&id);
    hub.server.close(id);
}
