//! Async relay client over plain TCP or WebSocket (spec/rendezvous.md §4),
//! a thin shell over [`RelayClient`]: it authenticates with the party's
//! Ed25519 key, then offers one [`RelayStream`] per peer — an
//! `AsyncRead + AsyncWrite` byte stream that the session driver can use as
//! a path.
//!
//! ```text
//!  RelayStream::poll_write ─SendPacket─▶ writer task ─▶ socket ─▶ relay ─▶ peer
//!  RelayStream::poll_read ◀─ per-peer channel ◀─ reader task ◀─ socket ◀─ relay
//!  PeerGone(peer) / Overloaded / connection lost ─▶ stream error (ConnectionReset)
//! ```
//!
//! Delivery contract (§4.5): a stream is ordered and lossless until it
//! fails; it fails (reads and writes return `ConnectionReset`) when the
//! relay reports `PeerGone` for its peer, reports `Overloaded` (something
//! of ours was dropped — we cannot tell which stream it belonged to, so every
//! stream of the connection fails), or the connection closes. The session
//! driver then resumes on another path (spec/session.md §7).
//!
//! Allow-list mode ([`RelayConnection::restrict_senders`]): the connection tells the relay
//! which senders may reach it (the peers it opened streams to or allowed with
//! [`RelayConnection::allow_peer`]); the relay drops everyone else's packets before they
//! use our queue or link, and the client drops any that still arrive (with a log line).
//! Strangers who know our DID then cannot fill our pending buffers or our bandwidth.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::PollSender;

use super::NetError;
use crate::relay::{
    coalesce_send_packets, encode_send_packet, frame_len, recv_packet_ref, ClientToRelay,
    ErrorCode, OverloadReason, PeerAddr, RelayToClient, SigningKey, FRAME_HEADER_LEN,
    MAX_ALLOW_PEERS, MAX_PAYLOAD,
};
use crate::relay_client::{ClientEvent, RelayClient};
use crate::RelayError;

/// WebSocket subprotocol of the relay (spec/rendezvous.md §4.1).
pub const RELAY_SUBPROTOCOL: &str = "mpc-did-relay.1";
/// The same protocol plus `AllowPeers` (0x05): a relay that answers with it filters
/// senders for clients in allow-list mode. Clients offer both; a relay that only knows
/// `.1` picks `.1`, and the client then filters on its own side only (a `.1` relay closes
/// the connection on an unknown frame type).
pub const RELAY_SUBPROTOCOL_V2: &str = "mpc-did-relay.2";

/// Why a connection closed when the relay gave its slot to a newer connection with our
/// identity (`Error(Replaced)`, spec/rendezvous.md §4.4).
pub const REPLACED: &str = "replaced by a newer connection with our identity";

/// Frames buffered per stream before the reader task waits for the stream's reader.
const STREAM_QUEUE: usize = 256;
/// Frames and bytes kept per not-yet-opened peer (a peer may send before we open
/// our stream to it), and how many such peers.
const PENDING_FRAMES: usize = 256;
const PENDING_BYTES: usize = 4 << 20;
const PENDING_PEERS: usize = 16;
/// Keepalive: a Ping when nothing was written for this long (relay idle timeout is 60 s).
const KEEPALIVE: Duration = Duration::from_secs(20);
/// While a stream is open, a Ping after this much silence: the relay's Pong keeps the
/// relay-to-us leg busy too, so neither TCP leg sits idle longer than its retransmission
/// timeout (≥ 200 ms) and restarts slow start (`tcp_slow_start_after_idle`) before the next
/// MB-sized MPyC message (spec/rendezvous.md §7.3). Two 13-byte frames per 100 ms.
const WARM_KEEPALIVE: Duration = Duration::from_millis(100);
/// Authentication must finish within this time.
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of one WebSocket message (and frame) the relay client accepts: one relay
/// frame, header included (one message = one frame, spec/rendezvous.md §4.1), as the
/// mediator's relay endpoint bounds what it reads.
pub const MAX_WS_MESSAGE: usize = crate::relay::MAX_FRAME_LEN + crate::relay::FRAME_HEADER_LEN;
/// Received payloads up to this size are copied out of the read buffer; larger ones are
/// handed on as a slice of it (no copy). A small payload must not pin a whole read buffer
/// while it waits in a stream's queue.
const COPY_BELOW: usize = 4096;
/// Packets to one peer are joined into one frame while each is at most this size (relay
/// payloads are a byte stream, spec/rendezvous.md §4.4): many small session records then
/// cost the relay one frame, not one each; large packets are never copied for it.
const COALESCE_BELOW: usize = 16 << 10;

/// Who we authenticate as.
#[derive(Clone, Debug)]
pub struct RelayIdentity {
    /// The Ed25519 key that signs the challenge.
    pub key: SigningKey,
    /// Our DID.
    pub did: String,
    /// The verification method id of `key` in our DID document
    /// (`did:key:z…#z…` for a did:key).
    pub key_id: String,
}

impl RelayIdentity {
    /// The identity of a did:key derived from `key`.
    pub fn did_key(key: SigningKey) -> Self {
        let did = did_key_of(&key.verifying_key().to_bytes());
        let frag = did.trim_start_matches("did:key:").to_owned();
        RelayIdentity {
            key_id: format!("{did}#{frag}"),
            did,
            key,
        }
    }
}

/// `did:key:z6Mk…` for an Ed25519 public key (multicodec 0xed01, base58btc).
fn did_key_of(pk: &[u8; 32]) -> String {
    let mut bytes = Vec::with_capacity(34);
    bytes.extend_from_slice(&[0xed, 0x01]);
    bytes.extend_from_slice(pk);
    format!("did:key:z{}", bs58::encode(bytes).into_string())
}

/// Counters of one relay connection.
#[derive(Debug, Default)]
pub struct RelayClientMetrics {
    /// Packets received and handed to a stream.
    pub packets_in: AtomicU64,
    /// Packets sent.
    pub packets_out: AtomicU64,
    /// Packets from peers with no stream, dropped because the pending buffer was full.
    pub dropped_unrouted: AtomicU64,
    /// `Overloaded` notices from the relay.
    pub overloaded: AtomicU64,
    /// `PeerGone` notices from the relay.
    pub peer_gone: AtomicU64,
    /// Packets from senders outside the allow-list, dropped here.
    pub dropped_not_allowed: AtomicU64,
    /// Frames that made no sense in the connection's state, ignored.
    pub stray_frames: AtomicU64,
}

struct Route {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    failed: Arc<Mutex<Option<&'static str>>>,
}

/// Packets from a peer without a stream yet: its DID, the payloads, their bytes.
type Pending = (String, VecDeque<Bytes>, usize);

#[derive(Default)]
struct Routes {
    streams: HashMap<PeerAddr, Route>,
    pending: HashMap<[u8; 32], Pending>,
    closed: Option<&'static str>,
    next_id: u64,
    /// `Some`: allow-list mode, oldest first (at most [`MAX_ALLOW_PEERS`]).
    allow: Option<VecDeque<PeerAddr>>,
    /// The allow-list changed since the writer last sent it.
    allow_dirty: bool,
}

impl Routes {
    /// Adds `peer` to the allow-list (in allow-list mode); the oldest entry without a
    /// stream makes room when it is full. Whether the list changed.
    fn allow(&mut self, peer: &PeerAddr) -> bool {
        let Some(list) = self.allow.as_mut() else {
            return false;
        };
        if list.contains(peer) {
            return false;
        }
        if list.len() >= MAX_ALLOW_PEERS {
            let streams = &self.streams;
            let old = list
                .iter()
                .position(|p| !streams.contains_key(p))
                .unwrap_or(0);
            list.remove(old);
        }
        list.push_back(peer.clone());
        self.allow_dirty = true;
        true
    }

    fn allows(&self, src_key: &[u8; 32], src_did: &str) -> bool {
        self.allow.as_ref().is_none_or(|list| {
            list.iter().any(|p| match p {
                PeerAddr::Key(k) => k == src_key,
                PeerAddr::Did(d) => d == src_did,
            })
        })
    }

    fn fail(&mut self, addr: &PeerAddr, why: &'static str) {
        if let Some(r) = self.streams.remove(addr) {
            set_failed(&r.failed, why);
        }
    }
    fn fail_all(&mut self, why: &'static str) {
        for (_, r) in self.streams.drain() {
            set_failed(&r.failed, why);
        }
    }
}

fn set_failed(f: &Mutex<Option<&'static str>>, why: &'static str) {
    if let Ok(mut g) = f.lock() {
        g.get_or_insert(why);
    }
}

struct Shared {
    routes: Mutex<Routes>,
    metrics: RelayClientMetrics,
    /// Send pacing (bytes per second, burst bytes); 0 = unpaced.
    rate: AtomicU64,
    burst: AtomicU64,
    /// Wakes the writer to send a changed allow-list.
    allow_changed: tokio::sync::Notify,
    /// The relay understands `AllowPeers` (negotiated `mpc-did-relay.2`).
    relay_filters: bool,
    /// Becomes `true` once the connection is closed (for [`RelayConnection::closed`]).
    down: tokio::sync::watch::Sender<bool>,
}

impl Shared {
    /// Marks the connection closed (first reason wins) and fails every stream.
    fn close(&self, why: &'static str) {
        if let Ok(mut r) = self.routes.lock() {
            r.closed.get_or_insert(why);
            r.fail_all(why);
        }
        self.down.send_replace(true);
    }
}

/// Default send pacing: none (0). The relay enforces its per-client byte rate by reading
/// a client no faster than the rate, so TCP's own flow control slows the sender and nothing
/// is dropped for the rate (spec/rendezvous.md §4.5); a fixed client pace below the relay's
/// limit only throttled MB-sized MPyC messages under what the path carries.
pub const DEFAULT_SEND_RATE: u64 = 0;
/// Default pacing burst (unused while [`DEFAULT_SEND_RATE`] is 0).
pub const DEFAULT_SEND_BURST: u64 = 512 << 10;

/// An authenticated relay connection. Dropping it closes the connection
/// (and fails its streams).
pub struct RelayConnection {
    shared: Arc<Shared>,
    /// Encoded frames to the writer task.
    out: mpsc::Sender<Vec<u8>>,
    relay_id: String,
    did: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RelayConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConnection")
            .field("relay_id", &self.relay_id)
            .field("did", &self.did)
            .finish_non_exhaustive()
    }
}

impl Drop for RelayConnection {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.shared.close("relay connection dropped");
    }
}

type Ws = super::ws::WsStream;

enum FrameReader {
    Tcp(tokio::net::tcp::OwnedReadHalf, BytesMut),
    Ws(futures_util::stream::SplitStream<Ws>),
}

/// What the reader got: a packet read in place (its payload not copied), or any other frame.
enum Incoming {
    Packet {
        src_key: [u8; 32],
        src_did: Bytes,
        payload: Bytes,
    },
    Frame(RelayToClient),
}

/// `frame` (exactly one encoded frame) as an [`Incoming`]: a `RecvPacket` keeps its payload
/// as a slice of `frame` (copied only when small), anything else is decoded.
fn incoming(frame: Bytes) -> Result<Incoming, NetError> {
    if let Some(p) = recv_packet_ref(&frame)? {
        let did = FRAME_HEADER_LEN + 32 + 2;
        let src_did = frame.slice(did..did + p.src_did.len());
        let payload = if p.payload.len() < COPY_BELOW {
            Bytes::copy_from_slice(frame.get(p.payload).unwrap_or_default())
        } else {
            frame.slice(p.payload)
        };
        return Ok(Incoming::Packet {
            src_key: p.src_key,
            src_did,
            payload,
        });
    }
    match RelayToClient::decode(&frame)? {
        Some((f, used)) if used == frame.len() => Ok(Incoming::Frame(f)),
        _ => Err(RelayError::Malformed.into()),
    }
}

enum FrameWriter {
    Tcp(tokio::net::tcp::OwnedWriteHalf),
    Ws(futures_util::stream::SplitSink<Ws, Message>),
}

impl FrameReader {
    /// The next frame; `Ok(None)` at a clean end of the connection.
    async fn next(&mut self) -> Result<Option<Incoming>, NetError> {
        match self {
            FrameReader::Tcp(rd, buf) => loop {
                // Whole frames are cut off the buffer without moving the rest (no drain).
                if let Some(used) = frame_len(buf)? {
                    return incoming(buf.split_to(used).freeze()).map(Some);
                }
                if buf.capacity() - buf.len() < 16 << 10 {
                    buf.reserve(128 << 10);
                }
                if rd.read_buf(buf).await? == 0 {
                    return Ok(None);
                }
            },
            FrameReader::Ws(s) => loop {
                let Some(msg) = s.next().await else {
                    return Ok(None);
                };
                match msg.map_err(|e| NetError::WebSocket(e.to_string()))? {
                    // One message = exactly one frame (spec §4.1).
                    Message::Binary(b) => return incoming(b).map(Some),
                    Message::Close(_) => return Ok(None),
                    _ => {}
                }
            },
        }
    }

    /// The next frame during authentication (nothing is delivered before `AuthOk`).
    async fn next_frame(&mut self) -> Result<Option<RelayToClient>, NetError> {
        Ok(match self.next().await? {
            None => None,
            Some(Incoming::Frame(f)) => Some(f),
            Some(Incoming::Packet {
                src_key,
                src_did,
                payload,
            }) => Some(RelayToClient::RecvPacket {
                src_key,
                src_did: String::from_utf8_lossy(&src_did).into_owned(),
                payload: payload.to_vec(),
            }),
        })
    }
}

impl FrameWriter {
    /// Writes encoded frames and flushes once: over TCP one gathering write (no copy into a
    /// joint buffer), over WebSocket one binary message per frame (the frame's bytes move
    /// into the message; the WebSocket layer copies them once while masking).
    async fn send(&mut self, frames: &mut Vec<Vec<u8>>) -> Result<(), NetError> {
        match self {
            FrameWriter::Tcp(w) => {
                let mut slices: Vec<io::IoSlice<'_>> =
                    frames.iter().map(|f| io::IoSlice::new(f)).collect();
                let mut rest = &mut slices[..];
                while !rest.is_empty() {
                    let n = w.write_vectored(rest).await?;
                    if n == 0 {
                        return Err(NetError::Io(io::ErrorKind::WriteZero.into()));
                    }
                    io::IoSlice::advance_slices(&mut rest, n);
                }
                w.flush().await?;
                frames.clear();
            }
            FrameWriter::Ws(s) => {
                for f in frames.drain(..) {
                    s.feed(Message::binary(f))
                        .await
                        .map_err(|e| NetError::WebSocket(e.to_string()))?;
                }
                s.flush()
                    .await
                    .map_err(|e| NetError::WebSocket(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Encodes and writes one frame (authentication).
    async fn send_frame(&mut self, f: &ClientToRelay) -> Result<(), NetError> {
        self.send(&mut vec![f.to_bytes()?]).await
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RelayConnection {
    /// Connects to a relay's plain-TCP port and authenticates. With
    /// `expected_relay` (the mediator's DID), a relay with another identity is refused.
    ///
    /// # Errors
    /// Socket errors, [`NetError::TimedOut`], [`NetError::Relay`] with
    /// `AuthenticationFailed`, `WrongRelay` or a protocol error.
    pub async fn connect_tcp(
        addr: SocketAddr,
        me: RelayIdentity,
        expected_relay: Option<String>,
    ) -> Result<Self, NetError> {
        let tcp = tokio::time::timeout(AUTH_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| NetError::TimedOut)??;
        tcp.set_nodelay(true)?;
        let (rd, wr) = tcp.into_split();
        // Plain TCP has no version negotiation: allow-lists are enforced on our side only.
        Self::start(
            FrameReader::Tcp(rd, BytesMut::with_capacity(128 << 10)),
            FrameWriter::Tcp(wr),
            me,
            expected_relay,
            false,
            None,
        )
        .await
    }

    /// Connects to a relay's WebSocket endpoint (`ws://host:port/relay`, or `wss://` behind
    /// a TLS reverse proxy, checked against the Mozilla roots) and authenticates.
    ///
    /// # Errors
    /// As [`Self::connect_tcp`], plus [`NetError::WebSocket`].
    pub async fn connect_ws(
        url: &str,
        me: RelayIdentity,
        expected_relay: Option<String>,
    ) -> Result<Self, NetError> {
        Self::connect_ws_with_roots(url, me, expected_relay, &[]).await
    }

    /// As [`Self::connect_ws`], also trusting the DER certificates `extra_roots` for a
    /// `wss://` relay (a private CA).
    ///
    /// # Errors
    /// As [`Self::connect_ws`].
    pub async fn connect_ws_with_roots(
        url: &str,
        me: RelayIdentity,
        expected_relay: Option<String>,
        extra_roots: &[Vec<u8>],
    ) -> Result<Self, NetError> {
        Self::connect_ws_allowing(url, me, expected_relay, extra_roots, None).await
    }

    /// As [`Self::connect_ws_with_roots`], in allow-list mode from the first frame on when
    /// `allow` is given (the list of [`Self::restrict_senders`] / [`Self::allow_peer`]):
    /// packets the relay held or forwarded for us before we could name our peers are then
    /// kept for those peers and dropped for anyone else. A re-dial after a lost connection
    /// ([`super::RelayLink`]) uses it to carry the list over.
    ///
    /// # Errors
    /// As [`Self::connect_ws`].
    pub async fn connect_ws_allowing(
        url: &str,
        me: RelayIdentity,
        expected_relay: Option<String>,
        extra_roots: &[Vec<u8>],
        allow: Option<Vec<PeerAddr>>,
    ) -> Result<Self, NetError> {
        let mut req = url
            .into_client_request()
            .map_err(|e| NetError::WebSocket(e.to_string()))?;
        // Offer both versions; the relay picks the newest it speaks.
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("mpc-did-relay.2, mpc-did-relay.1"),
        );
        let (ws, protocol) = tokio::time::timeout(
            AUTH_TIMEOUT,
            super::ws::connect_negotiated(req, extra_roots, MAX_WS_MESSAGE),
        )
        .await
        .map_err(|_| NetError::TimedOut)??;
        let filters = protocol.as_deref() == Some(RELAY_SUBPROTOCOL_V2);
        let (wr, rd) = ws.split();
        Self::start(
            FrameReader::Ws(rd),
            FrameWriter::Ws(wr),
            me,
            expected_relay,
            filters,
            allow,
        )
        .await
    }

    async fn start(
        mut rd: FrameReader,
        mut wr: FrameWriter,
        me: RelayIdentity,
        expected_relay: Option<String>,
        relay_filters: bool,
        allow: Option<Vec<PeerAddr>>,
    ) -> Result<Self, NetError> {
        let mut core = RelayClient::new(me.key, me.did.clone(), me.key_id, expected_relay);
        let relay_id = tokio::time::timeout(AUTH_TIMEOUT, async {
            let mut relay_id = None;
            loop {
                let frame = rd
                    .next_frame()
                    .await?
                    .ok_or(NetError::Io(io::ErrorKind::UnexpectedEof.into()))?;
                if let RelayToClient::ServerChallenge { relay_id: r, .. } = &frame {
                    relay_id = Some(r.clone());
                }
                match core.on_frame(frame, now_unix())? {
                    ClientEvent::Send(f) => wr.send_frame(&f).await?,
                    ClientEvent::Ready => return Ok::<_, NetError>(relay_id.unwrap_or_default()),
                    ClientEvent::Closed(None) => {
                        return Err(RelayError::AuthenticationFailed.into())
                    }
                    ClientEvent::Closed(Some(code)) => return Err(RelayError::Closed(code).into()),
                    // The relay refused us for a limit: say which, not "unexpected frame".
                    ClientEvent::Overloaded(OverloadReason::TooManyFromSource) => {
                        return Err(RelayError::TooManyFromSource.into())
                    }
                    ClientEvent::Overloaded(_) => return Err(RelayError::TooManyClients.into()),
                    _ => {}
                }
            }
        })
        .await
        .map_err(|_| NetError::TimedOut)??;

        let mut routes = Routes::default();
        if let Some(list) = allow {
            let mut l: VecDeque<PeerAddr> = list.into_iter().collect();
            while l.len() > MAX_ALLOW_PEERS {
                l.pop_front();
            }
            routes.allow = Some(l);
            routes.allow_dirty = true;
        }
        let shared = Arc::new(Shared {
            routes: Mutex::new(routes),
            metrics: RelayClientMetrics::default(),
            rate: AtomicU64::new(DEFAULT_SEND_RATE),
            burst: AtomicU64::new(DEFAULT_SEND_BURST),
            allow_changed: tokio::sync::Notify::new(),
            relay_filters,
            down: tokio::sync::watch::channel(false).0,
        });
        // A list given at connect goes out before any packet (the writer finds the permit).
        shared.allow_changed.notify_one();
        let (out, out_rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        let writer = tokio::spawn(writer_task(wr, out_rx, shared.clone()));
        let reader = tokio::spawn(reader_task(rd, core, out.clone(), shared.clone()));
        Ok(RelayConnection {
            shared,
            out,
            relay_id,
            did: me.did,
            tasks: vec![reader, writer],
        })
    }

    /// The relay's identity (its DID) from the challenge.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// Our DID.
    pub fn did(&self) -> &str {
        &self.did
    }

    /// This connection's counters.
    pub fn metrics(&self) -> &RelayClientMetrics {
        &self.shared.metrics
    }

    /// Paces what this connection sends to `rate` bytes per second with
    /// bursts of `burst` bytes (`rate` 0: unpaced, the default). Not needed for
    /// the relay's rate limit, which this project's relay enforces by reading
    /// slower (spec §4.5); useful to share a slow uplink or to emulate a link.
    pub fn set_send_rate(&self, rate: u64, burst: u64) {
        self.shared.rate.store(rate, Ordering::Relaxed);
        self.shared.burst.store(burst, Ordering::Relaxed);
    }

    /// Switches to allow-list mode: from now on only peers this connection opened a stream
    /// to, or allowed with [`Self::allow_peer`], can reach it. The relay is told (it drops
    /// everyone else's packets and answers them `PeerGone`), and packets from others that
    /// still arrive are dropped here. At most [`MAX_ALLOW_PEERS`] peers are listed; beyond
    /// that the oldest without an open stream is forgotten.
    pub fn restrict_senders(&self) {
        if let Ok(mut r) = self.shared.routes.lock() {
            if r.allow.is_none() {
                let mut list: VecDeque<PeerAddr> = VecDeque::new();
                for p in r.streams.keys() {
                    if list.len() < MAX_ALLOW_PEERS {
                        list.push_back(p.clone());
                    }
                }
                // Packets already waiting from peers we never named are strangers'.
                r.pending.clear();
                r.allow = Some(list);
                r.allow_dirty = true;
            }
        }
        self.shared.allow_changed.notify_one();
    }

    /// Lets `peer` reach this connection in allow-list mode (a no-op otherwise). Call it
    /// before the peer may send, e.g. before answering its session proposal: its packets
    /// are then kept until a stream to it opens.
    pub fn allow_peer(&self, peer: &PeerAddr) {
        let changed = self
            .shared
            .routes
            .lock()
            .map(|mut r| r.allow(peer))
            .unwrap_or(false);
        if changed {
            self.shared.allow_changed.notify_one();
        }
    }

    /// Whether the relay itself drops packets from senders outside our allow-list
    /// (negotiated over WebSocket); otherwise only this client drops them, after they used
    /// the relay's queue and our link.
    pub fn relay_filters(&self) -> bool {
        self.shared.relay_filters
    }

    /// The allow-list (`None`: everyone may send).
    pub fn allowed_peers(&self) -> Option<Vec<PeerAddr>> {
        let r = self.shared.routes.lock().ok()?;
        r.allow.as_ref().map(|l| l.iter().cloned().collect())
    }

    /// Resolves once the connection is closed (lost, refused by the relay, or dropped).
    pub async fn closed(&self) {
        let mut rx = self.shared.down.subscribe();
        let _ = rx.wait_for(|down| *down).await;
    }

    /// Why the connection closed; `None` while it is open.
    pub fn close_reason(&self) -> Option<&'static str> {
        self.shared.routes.lock().ok().and_then(|r| r.closed)
    }

    /// Whether the connection is still up.
    pub fn is_open(&self) -> bool {
        self.shared
            .routes
            .lock()
            .map(|r| r.closed.is_none())
            .unwrap_or(false)
    }

    /// A byte stream to `peer` (its Ed25519 key, or its DID). Packets the
    /// peer sent before this call are delivered first. Opening a second
    /// stream to the same peer fails the first.
    ///
    /// # Errors
    /// `ConnectionReset` if the connection is closed.
    pub fn open_stream(&self, peer: PeerAddr) -> io::Result<RelayStream> {
        let mut routes = self
            .shared
            .routes
            .lock()
            .map_err(|_| io::Error::other("relay client state poisoned"))?;
        if let Some(why) = routes.closed {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, why));
        }
        let (tx, rx) = mpsc::channel(STREAM_QUEUE.max(PENDING_FRAMES));
        let pending_key = match &peer {
            PeerAddr::Key(k) => Some(*k),
            PeerAddr::Did(d) => routes
                .pending
                .iter()
                .find(|(_, (did, _, _))| did == d)
                .map(|(k, _)| *k),
        };
        if let Some((_, frames, _)) = pending_key.and_then(|k| routes.pending.remove(&k)) {
            for f in frames {
                // Cannot fail: the channel holds PENDING_FRAMES and is new.
                let _ = tx.try_send(f);
            }
        }
        if routes.allow(&peer) {
            self.shared.allow_changed.notify_one();
        }
        routes.next_id += 1;
        let id = routes.next_id;
        let failed = Arc::new(Mutex::new(None));
        routes.fail(&peer, "replaced by a newer stream");
        routes.streams.insert(
            peer.clone(),
            Route {
                id,
                tx,
                failed: failed.clone(),
            },
        );
        Ok(RelayStream {
            peer,
            id,
            rx,
            buf: Bytes::new(),
            tx: PollSender::new(self.out.clone()),
            failed,
            shared: Arc::downgrade(&self.shared),
        })
    }
}

async fn writer_task(mut wr: FrameWriter, mut rx: mpsc::Receiver<Vec<u8>>, shared: Arc<Shared>) {
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(64);
    // Pacing: `credit_at` is when the bytes sent so far are "paid for".
    let mut credit_at = tokio::time::Instant::now();
    let why = loop {
        let busy = shared
            .routes
            .lock()
            .map(|r| !r.streams.is_empty())
            .unwrap_or(false);
        let idle = if busy { WARM_KEEPALIVE } else { KEEPALIVE };
        let first = tokio::select! {
            r = tokio::time::timeout(idle, rx.recv()) => match r {
                Ok(Some(f)) => Some(f),
                Ok(None) => break "relay connection dropped",
                Err(_) => ClientToRelay::Ping(now_unix().to_be_bytes()).to_bytes().ok(),
            },
            () = shared.allow_changed.notified() => None,
        };
        // A changed allow-list goes first: it must reach the relay before packets that
        // invite answers from a newly allowed peer.
        let allow = shared.routes.lock().ok().and_then(|mut r| {
            if !r.allow_dirty || !shared.relay_filters {
                return None;
            }
            r.allow_dirty = false;
            r.allow
                .as_ref()
                .map(|l| l.iter().cloned().collect::<Vec<_>>())
        });
        if let Some(list) = allow {
            match ClientToRelay::AllowPeers(Some(list)).to_bytes() {
                Ok(f) => batch.push(f),
                Err(_) => tracing::warn!("relay allow-list not encodable; not sent"),
            }
        }
        if let Some(f) = first {
            batch.push(f);
        }
        if batch.is_empty() {
            continue;
        }
        let mut bytes = 0usize;
        // Take whatever else is queued (up to 256 frames, 1 MiB): one flush for all — one
        // socket write, so one wake-up of the relay's reader — and small packets to the same
        // peer joined into one frame.
        while batch.len() < 256 && bytes < 1 << 20 {
            let Ok(f) = rx.try_recv() else { break };
            bytes += f.len();
            let joined = f.len() <= COALESCE_BELOW
                && batch.last_mut().is_some_and(|last| {
                    last.len() <= COALESCE_BELOW && coalesce_send_packets(last, &f)
                });
            if !joined {
                batch.push(f);
            }
        }
        // Packets as they go on the wire (joined ones count once).
        let packets = batch.iter().filter(|f| f.first() == Some(&0x02)).count() as u64;
        let rate = shared.rate.load(Ordering::Relaxed);
        if rate > 0 {
            let wire: usize = batch.iter().map(Vec::len).sum();
            let burst =
                Duration::from_secs_f64(shared.burst.load(Ordering::Relaxed) as f64 / rate as f64);
            let now = tokio::time::Instant::now();
            // A token bucket as a virtual clock: idle time banks at most
            // `burst` worth of credit; each batch costs wire/rate.
            let floor = now.checked_sub(burst).unwrap_or(now);
            credit_at = credit_at.max(floor) + Duration::from_secs_f64(wire as f64 / rate as f64);
            if credit_at > now {
                tokio::time::sleep_until(credit_at).await;
            }
        }
        if wr.send(&mut batch).await.is_err() {
            break "relay connection lost";
        }
        shared
            .metrics
            .packets_out
            .fetch_add(packets, Ordering::Relaxed);
        batch.clear();
    };
    shared.close(why);
}

async fn reader_task(
    mut rd: FrameReader,
    mut core: RelayClient,
    out: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
) {
    let why = loop {
        let frame = match rd.next().await {
            // Packets skip the core's event (it would only hand them back): the reader runs
            // after authentication, where the core accepts every RecvPacket.
            Ok(Some(Incoming::Packet {
                src_key,
                src_did,
                payload,
            })) if core.is_ready() => {
                let did = std::str::from_utf8(&src_did).unwrap_or_default();
                deliver(&shared, src_key, did, payload).await;
                continue;
            }
            Ok(Some(Incoming::Packet {
                src_key,
                src_did,
                payload,
            })) => RelayToClient::RecvPacket {
                src_key,
                src_did: String::from_utf8_lossy(&src_did).into_owned(),
                payload: payload.to_vec(),
            },
            Ok(Some(Incoming::Frame(f))) => f,
            Ok(None) => break "relay closed the connection",
            Err(_) => break "relay connection lost",
        };
        let event = match core.on_frame(frame, now_unix()) {
            Ok(e) => e,
            Err(_) => break "unexpected frame from the relay",
        };
        match event {
            ClientEvent::Send(f) => {
                let Ok(bytes) = f.to_bytes() else {
                    break "relay frame not encodable";
                };
                if out.send(bytes).await.is_err() {
                    break "relay connection dropped";
                }
            }
            ClientEvent::Packet {
                src_key,
                src_did,
                payload,
            } => deliver(&shared, src_key, &src_did, payload.into()).await,
            ClientEvent::PeerGone(p) => {
                shared.metrics.peer_gone.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut r) = shared.routes.lock() {
                    r.fail(&p, "peer not connected to the relay");
                }
            }
            ClientEvent::Overloaded(_) => {
                shared.metrics.overloaded.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut r) = shared.routes.lock() {
                    r.fail_all("relay overloaded: a packet was dropped");
                }
            }
            ClientEvent::Closed(Some(ErrorCode::Replaced)) => break REPLACED,
            ClientEvent::Closed(_) => break "relay closed the connection",
            ClientEvent::Stray(what) => {
                shared.metrics.stray_frames.fetch_add(1, Ordering::Relaxed);
                tracing::info!("relay sent {what}; ignored");
            }
            ClientEvent::Ready | ClientEvent::Nothing => {}
        }
    };
    shared.close(why);
}

async fn deliver(shared: &Shared, src_key: [u8; 32], src_did: &str, payload: Bytes) {
    let target = {
        let Ok(mut routes) = shared.routes.lock() else {
            return;
        };
        if !routes.allows(&src_key, src_did) {
            // A stranger (or a peer we stopped listening to): never buffered.
            shared
                .metrics
                .dropped_not_allowed
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(from = %src_did, "relay packet from a sender not allowed; dropped");
            return;
        }
        let found = routes
            .streams
            .get(&PeerAddr::Key(src_key))
            .map(|r| (PeerAddr::Key(src_key), r.id, r.tx.clone()))
            .or_else(|| {
                let d = PeerAddr::Did(src_did.to_owned());
                routes.streams.get(&d).map(|r| (d, r.id, r.tx.clone()))
            });
        if found.is_none() {
            // Not opened yet: keep a bounded backlog (the peer may be faster
            // than our session setup).
            let room =
                routes.pending.len() < PENDING_PEERS || routes.pending.contains_key(&src_key);
            let entry = routes
                .pending
                .entry(src_key)
                .or_insert_with(|| (src_did.to_owned(), VecDeque::new(), 0));
            if room && entry.1.len() < PENDING_FRAMES && entry.2 + payload.len() <= PENDING_BYTES {
                entry.2 += payload.len();
                entry.1.push_back(payload);
            } else {
                if entry.1.is_empty() {
                    routes.pending.remove(&src_key);
                }
                shared
                    .metrics
                    .dropped_unrouted
                    .fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        found
    };
    let Some((addr, id, tx)) = target else {
        return;
    };
    // Waiting here applies backpressure to the whole connection: a slow
    // stream reader slows the relay's queue to us, which the relay bounds.
    if tx.send(payload).await.is_ok() {
        shared.metrics.packets_in.fetch_add(1, Ordering::Relaxed);
    } else if let Ok(mut r) = shared.routes.lock() {
        if r.streams.get(&addr).is_some_and(|x| x.id == id) {
            r.streams.remove(&addr);
        }
    }
}

/// A byte stream to one peer through the relay (a session path). Writes
/// are cut into packets of at most [`MAX_PAYLOAD`] bytes.
pub struct RelayStream {
    peer: PeerAddr,
    id: u64,
    rx: mpsc::Receiver<Bytes>,
    buf: Bytes,
    tx: PollSender<Vec<u8>>,
    failed: Arc<Mutex<Option<&'static str>>>,
    shared: std::sync::Weak<Shared>,
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl RelayStream {
    /// The peer this stream talks to.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    fn failure(&self) -> Option<io::Error> {
        let why = self.failed.lock().ok().and_then(|g| *g)?;
        Some(io::Error::new(io::ErrorKind::ConnectionReset, why))
    }
}

impl Drop for RelayStream {
    fn drop(&mut self) {
        if let Some(s) = self.shared.upgrade() {
            if let Ok(mut r) = s.routes.lock() {
                if r.streams.get(&self.peer).is_some_and(|x| x.id == self.id) {
                    r.streams.remove(&self.peer);
                }
            }
        }
    }
}

impl AsyncRead for RelayStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.buf.is_empty() {
                let n = self.buf.len().min(out.remaining());
                out.put_slice(self.buf.split_to(n).as_ref());
                return Poll::Ready(Ok(()));
            }
            match ready!(self.rx.poll_recv(cx)) {
                Some(p) => self.buf = p,
                // The route is gone: the stream failed (never a clean EOF:
                // the relay has no end-of-stream, and a session must not
                // mistake a failure for a close).
                None => {
                    return Poll::Ready(Err(self.failure().unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::ConnectionReset, "relay stream closed")
                    })))
                }
            }
        }
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.failure() {
            return Poll::Ready(Err(e));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "relay connection closed",
            )));
        }
        let n = buf.len().min(MAX_PAYLOAD);
        // Encoded here, once: the writer task passes these bytes on as they are.
        let frame = encode_send_packet(&self.peer, buf.get(..n).unwrap_or_default())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        if self.tx.send_item(frame).is_err() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "relay connection closed",
            )));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Frames go to the writer task at once; it writes and flushes each batch.
        match self.failure() {
            Some(e) => Poll::Ready(Err(e)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
