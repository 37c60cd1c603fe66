//! The relay server as a state machine without I/O: client table,
//! authentication state, per-client bounded outgoing queues shared fairly
//! between senders, per-source and global connection limits, receivers'
//! allow-lists, byte-rate limits (token buckets with explicit time), idle
//! timeouts and metrics.
//!
//! The mediator's shell owns the sockets and does three things per
//! connection: feed decoded frames to [`RelayServer::handle`], write what
//! [`RelayServer::poll_transmit`] yields when a [`ServerEvent::Wake`]
//! arrives, and drop the connection on [`ServerEvent::Close`] (after
//! flushing). Time is always passed in, so tests need no clock.
//!
//! ```text
//!  socket A ─frames─▶ handle(A, ..) ──▶ queue[B].flow[A] ──Wake(B)──▶ poll_transmit(B) ─▶ socket B
//!                         │ auth? ──▶ Handled::VerifyAuth ─▶ shell resolves DID key ─▶ finish_auth
//!                         └ limits ─▶ Overloaded / PeerGone / Error frames + metrics
//! ```
//!
//! Each receiver's queue holds one FIFO per sender (so order per sender→receiver pair is
//! kept) served by deficit round robin; when the queue is full, frames are dropped from the
//! sender with the longest backlog there (longest-queue drop), and only that sender is told.
//! A stranger flooding a party's DID therefore loses its own frames, not the honest
//! sender's (spec/rendezvous.md §4.5).
//!
//! Several relays can act as one (a mesh of instances, §4.7): with
//! [`RelayServer::enable_mesh`], a packet for a peer not connected here and every client
//! joining or leaving become [`MeshEvent`]s for the shell, which carries them to the
//! instance holding the peer; that instance feeds them to [`RelayServer::deliver_from_mesh`]
//! and answers go back through [`RelayServer::mesh_notice`].

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;

use crate::relay::{
    verify_client_auth, ClientAuth, ClientToRelay, ErrorCode, OverloadReason, PeerAddr,
    RelayToClient,
};
use crate::source::{SourceAddr, SourceCounts};
use crate::RelayError;

/// Limits and identity of a relay.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The relay's identity (its DID) bound into every challenge.
    pub relay_id: String,
    /// Most simultaneous connections (authenticated or not).
    pub max_clients: usize,
    /// Most simultaneous connections from one source (an IPv4 address or an IPv6 /64),
    /// authenticated or not, counted for connections opened with [`RelayServer::open_from`].
    /// DIDs cost nothing to make, so without it one host could take every slot.
    pub max_clients_per_source: usize,
    /// Per-client outgoing queue limit in encoded bytes (all senders together).
    pub max_queue_bytes: usize,
    /// Per-client outgoing queue limit in frames (all senders together).
    pub max_queue_frames: usize,
    /// Sustained byte rate a client may send (bytes per second, wire size).
    pub rate_bytes_per_sec: u64,
    /// Burst a client may send above the rate.
    pub burst_bytes: u64,
    /// Bytes of one sender's packets that may wait in receivers' queues (all together)
    /// before the relay stops reading that sender until they drain (spec/rendezvous.md §4.5,
    /// "Backlog by backpressure"); keeps a fast sender from overflowing a slow receiver's
    /// queue, which would drop packets and cost the session a resume.
    pub max_backlog_bytes: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// A connection must authenticate within this time.
    pub auth_timeout: Duration,
    /// Accepted difference between a client's timestamp and the relay's clock.
    pub max_clock_skew_secs: u64,
}

impl RelayConfig {
    /// Defaults sized for MPyC traffic through one small mediator.
    pub fn new(relay_id: impl Into<String>) -> Self {
        RelayConfig {
            relay_id: relay_id.into(),
            // 256 × 4 MiB: the queues can hold at most 1 GiB in all. A 1 MiB queue overflowed
            // when MPyC sent MB-sized messages to a receiver 70–110 ms away (each drop costs
            // the session a resume; spec/rendezvous.md §4.5).
            max_clients: 256,
            // Honest use is one connection per party and relay; 32 leaves room for many
            // parties behind one NAT, and a single host can take at most 1/8 of the slots.
            max_clients_per_source: 32,
            max_queue_bytes: 4 << 20,
            max_queue_frames: 4096,
            // The rate shares the relay's uplink among clients; it no longer protects the
            // receivers' queues (the backlog bound below does), so it is set for a path of a
            // few hundred Mbit/s rather than for the queue (was 8 MiB/s, burst 1 MiB: MB-sized
            // MPyC messages waited for it).
            rate_bytes_per_sec: 64 << 20,
            burst_bytes: 8 << 20,
            // Half a receiver's queue: two senders at their bound still fit one receiver.
            max_backlog_bytes: 2 << 20,
            idle_timeout: Duration::from_secs(60),
            auth_timeout: Duration::from_secs(10),
            max_clock_skew_secs: 120,
        }
    }
}

/// A connection handle, allocated by [`RelayServer::open`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the shell must do for some connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// Frames are waiting in this connection's queue: drain [`RelayServer::poll_transmit`].
    Wake(ConnId),
    /// Flush the queue, then close this connection and call [`RelayServer::close`].
    Close(ConnId),
}

/// Outcome of [`RelayServer::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// Nothing more to do.
    Done,
    /// A ClientAuth arrived: resolve the key `auth.key_id` in the DID
    /// document of `auth.did` (async, in the shell) and call
    /// [`RelayServer::finish_auth`].
    VerifyAuth(ClientAuth),
}

/// Counters (monotonic) and gauges, for the mediator's metrics endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayMetrics {
    /// Connections open now.
    pub clients: u64,
    /// Connections authenticated now.
    pub authenticated: u64,
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused because of `max_clients`.
    pub rejected_full: u64,
    /// Connections refused because of `max_clients_per_source`.
    pub rejected_per_source: u64,
    /// Successful authentications.
    pub auth_ok: u64,
    /// Failed authentications.
    pub auth_failed: u64,
    /// Packets sent before authentication.
    pub not_authenticated: u64,
    /// Frames that did not parse or were too large.
    pub malformed: u64,
    /// Packets forwarded.
    pub forwarded_packets: u64,
    /// Payload bytes forwarded.
    pub forwarded_bytes: u64,
    /// Packets to peers not connected here.
    pub unknown_peer: u64,
    /// Packets dropped by the sender's rate limit.
    pub dropped_rate_limited: u64,
    /// Packets dropped because the destination's queue was full (the new packet, or
    /// queued packets of the sender with the longest backlog there).
    pub dropped_queue_full: u64,
    /// Packets to a client whose allow-list does not name the sender (dropped; the sender
    /// got PeerGone).
    pub dropped_not_allowed: u64,
    /// Control frames (Pong, PeerGone, Overloaded) dropped on a full queue.
    pub dropped_control: u64,
    /// Connections closed for idleness or missing authentication.
    pub timed_out: u64,
    /// Connections replaced by a newer one with the same key.
    pub replaced: u64,
    /// Packets handed to the mesh for a peer not connected here ([`RelayServer::enable_mesh`]).
    pub mesh_out_packets: u64,
    /// Packets from other instances of the mesh queued to a client here.
    pub mesh_in_packets: u64,
}

/// A token bucket counting bytes, refilled from explicit timestamps.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    // Tokens in byte-nanoseconds so refills are exact integers.
    tokens: u128,
    capacity: u128,
    rate: u128,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilling at `rate` bytes per second.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let capacity = u128::from(burst) * 1_000_000_000;
        TokenBucket {
            tokens: capacity,
            capacity,
            rate: u128::from(rate),
            last: now,
        }
    }

    /// How long until the bucket holds `n` bytes (at most its burst); zero if it does now.
    /// Nothing is taken.
    pub fn wait_for(&self, n: usize, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        let tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
        let need = (n as u128).saturating_mul(1_000_000_000).min(self.capacity);
        if tokens >= need || self.rate == 0 {
            return Duration::ZERO;
        }
        // Tokens are byte-nanoseconds; `rate` of them arrive per nanosecond.
        let nanos = (need - tokens).div_ceil(self.rate);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Takes `n` bytes if available.
    pub fn try_take(&mut self, n: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = self.last.max(now);
        self.tokens = self
            .tokens
            .saturating_add(elapsed.saturating_mul(self.rate))
            .min(self.capacity);
        let need = (n as u128).saturating_mul(1_000_000_000);
        if self.tokens >= need {
            self.tokens -= need;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
enum AuthState {
    Awaiting { nonce: [u8; 32] },
    Verifying { nonce: [u8; 32] },
    Authenticated { key: [u8; 32], did: String },
}

/// What deficit round robin adds per turn: one largest frame, so every turn sends at least
/// one frame.
const QUANTUM: usize = crate::relay::MAX_FRAME_LEN + crate::relay::FRAME_HEADER_LEN;

/// One sender's frames waiting for a receiver.
#[derive(Debug, Default)]
struct Flow {
    frames: VecDeque<RelayToClient>,
    bytes: usize,
    deficit: usize,
}

/// A receiver's outgoing queue: control frames first, then one FIFO per sender served by
/// deficit round robin. Limits apply to the total.
#[derive(Debug, Default)]
struct FairQueue {
    control: VecDeque<RelayToClient>,
    flows: HashMap<ConnId, Flow>,
    /// Senders with frames, in service order.
    active: VecDeque<ConnId>,
    bytes: usize,
    frames: usize,
}

impl FairQueue {
    fn push_control(&mut self, f: RelayToClient) {
        self.bytes += f.encoded_len();
        self.frames += 1;
        self.control.push_back(f);
    }

    fn push_flow(&mut self, from: ConnId, f: RelayToClient) {
        let len = f.encoded_len();
        let flow = self.flows.entry(from).or_default();
        if flow.frames.is_empty() {
            self.active.push_back(from);
        }
        flow.bytes += len;
        flow.frames.push_back(f);
        self.bytes += len;
        self.frames += 1;
    }

    /// The sender other than `except` with the most bytes queued here.
    fn longest(&self, except: ConnId) -> Option<(ConnId, usize)> {
        self.flows
            .iter()
            .filter(|(id, f)| **id != except && !f.frames.is_empty())
            .map(|(id, f)| (*id, f.bytes))
            .max_by_key(|(id, b)| (*b, *id))
    }

    fn flow_bytes(&self, of: ConnId) -> usize {
        self.flows.get(&of).map_or(0, |f| f.bytes)
    }

    /// Drops the newest frame of `of`'s flow and returns it.
    fn drop_tail(&mut self, of: ConnId) -> Option<RelayToClient> {
        let flow = self.flows.get_mut(&of)?;
        let f = flow.frames.pop_back()?;
        let len = f.encoded_len();
        flow.bytes -= len;
        self.bytes -= len;
        self.frames -= 1;
        if flow.frames.is_empty() {
            self.flows.remove(&of);
            self.active.retain(|c| *c != of);
        }
        Some(f)
    }

    /// The next frame and, for a packet, its sender.
    fn pop(&mut self) -> Option<(Option<ConnId>, RelayToClient)> {
        let (from, f) = match self.control.pop_front() {
            Some(f) => (None, f),
            None => {
                let (id, f) = self.pop_flow()?;
                (Some(id), f)
            }
        };
        self.bytes -= f.encoded_len();
        self.frames -= 1;
        Some((from, f))
    }

    fn pop_flow(&mut self) -> Option<(ConnId, RelayToClient)> {
        // Each pass either sends or gives the front flow a quantum (≥ any frame), so this
        // ends within two passes over the active flows.
        loop {
            let id = *self.active.front()?;
            let Some(flow) = self.flows.get_mut(&id) else {
                self.active.pop_front();
                continue;
            };
            let Some(head) = flow.frames.front().map(RelayToClient::encoded_len) else {
                self.flows.remove(&id);
                self.active.pop_front();
                continue;
            };
            if flow.deficit < head {
                flow.deficit += QUANTUM;
                self.active.rotate_left(1);
                continue;
            }
            flow.deficit -= head;
            flow.bytes -= head;
            let f = flow.frames.pop_front();
            if flow.frames.is_empty() {
                self.flows.remove(&id);
                self.active.pop_front();
            }
            return f.map(|f| (id, f));
        }
    }

    /// Empties the queue; the bytes each sender had in it.
    fn clear(&mut self) -> Vec<(ConnId, usize)> {
        let senders = self.flows.iter().map(|(id, f)| (*id, f.bytes)).collect();
        *self = FairQueue::default();
        senders
    }
}

#[derive(Debug)]
struct Client {
    auth: AuthState,
    queue: FairQueue,
    source: Option<SourceAddr>,
    /// `Some`: only these senders may reach this client (ClientToRelay::AllowPeers).
    allow: Option<Vec<PeerAddr>>,
    bucket: TokenBucket,
    opened: Instant,
    last_seen: Instant,
    last_overload_notice: Option<Instant>,
    woken: bool,
    closing: bool,
    /// Bytes of this client's packets waiting in receivers' queues here.
    backlog: usize,
}

/// The relay's state. One per mediator; the shell wraps it in a mutex.
#[derive(Debug)]
pub struct RelayServer {
    cfg: RelayConfig,
    clients: HashMap<ConnId, Client>,
    by_key: HashMap<[u8; 32], ConnId>,
    by_did: HashMap<String, ConnId>,
    per_source: SourceCounts,
    events: VecDeque<ServerEvent>,
    next_id: u64,
    metrics: RelayMetrics,
    /// `Some` once [`RelayServer::enable_mesh`] was called: what the mesh shell must do.
    mesh: Option<VecDeque<MeshEvent>>,
}

/// How long a shell waits before asking again whether a sender over its backlog bound may be
/// read (the receivers' writers drain meanwhile).
const BACKLOG_RECHECK: Duration = Duration::from_millis(1);

/// Overload notices to one client are sent at most this often, so a flood
/// does not turn into a flood of notices.
const OVERLOAD_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

impl RelayServer {
    /// An empty relay.
    pub fn new(cfg: RelayConfig) -> Self {
        RelayServer {
            cfg,
            clients: HashMap::new(),
            by_key: HashMap::new(),
            by_did: HashMap::new(),
            per_source: SourceCounts::default(),
            events: VecDeque::new(),
            next_id: 1,
            metrics: RelayMetrics::default(),
            mesh: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.cfg
    }

    /// The metrics.
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// The frame to write before closing a connection refused by [`Self::open`].
    pub fn refusal_frame() -> RelayToClient {
        RelayToClient::Overloaded(OverloadReason::TooManyClients)
    }

    /// The frame to write before closing a connection that [`Self::open_from`] refused with
    /// `err`.
    pub fn refusal_frame_for(err: &RelayError) -> RelayToClient {
        match err {
            RelayError::TooManyFromSource => {
                RelayToClient::Overloaded(OverloadReason::TooManyFromSource)
            }
            _ => Self::refusal_frame(),
        }
    }

    /// How long the shell should wait before reading the next frame of `conn` (spec
    /// rendezvous.md §4.5, "Rate limit by backpressure"): until the client's byte-rate
    /// bucket holds a frame of the largest size, so that the frame read next is never
    /// dropped for the rate. Meanwhile the client's socket fills and TCP slows its
    /// sender down. `None`: read now (or no such connection).
    #[must_use]
    pub fn read_pause(&self, conn: ConnId, now: Instant) -> Option<Duration> {
        let c = self.clients.get(&conn)?;
        if c.backlog > self.cfg.max_backlog_bytes {
            // Its packets wait at slow receivers: read it again once some have left. The
            // shell asks again after this pause.
            return Some(BACKLOG_RECHECK);
        }
        let wait = c.bucket.wait_for(
            crate::relay::MAX_FRAME_LEN + crate::relay::FRAME_HEADER_LEN,
            now,
        );
        (!wait.is_zero()).then_some(wait)
    }

    /// Registers a new connection whose source is unknown (not counted against
    /// `max_clients_per_source`) and queues its ServerChallenge with `nonce` (fresh random
    /// bytes from the shell). Shells that know the peer's address use [`Self::open_from`].
    ///
    /// # Errors
    /// [`RelayError::TooManyClients`] at the client limit: the shell writes
    /// [`Self::refusal_frame`] and closes.
    pub fn open(&mut self, nonce: [u8; 32], now: Instant) -> Result<ConnId, RelayError> {
        self.open_inner(nonce, None, now)
    }

    /// As [`Self::open`] for a connection from `source`, which may hold at most
    /// `max_clients_per_source` connections at once.
    ///
    /// # Errors
    /// [`RelayError::TooManyClients`] at the client limit,
    /// [`RelayError::TooManyFromSource`] at the per-source limit: the shell writes
    /// [`Self::refusal_frame`] and closes.
    pub fn open_from(
        &mut self,
        nonce: [u8; 32],
        source: IpAddr,
        now: Instant,
    ) -> Result<ConnId, RelayError> {
        self.open_inner(nonce, Some(SourceAddr::of(source)), now)
    }

    fn open_inner(
        &mut self,
        nonce: [u8; 32],
        source: Option<SourceAddr>,
        now: Instant,
    ) -> Result<ConnId, RelayError> {
        if self.clients.len() >= self.cfg.max_clients {
            self.metrics.rejected_full += 1;
            return Err(RelayError::TooManyClients);
        }
        if let Some(src) = source {
            if !self
                .per_source
                .try_add(src, self.cfg.max_clients_per_source)
            {
                self.metrics.rejected_per_source += 1;
                return Err(RelayError::TooManyFromSource);
            }
        }
        let id = ConnId(self.next_id);
        self.next_id += 1;
        self.clients.insert(
            id,
            Client {
                auth: AuthState::Awaiting { nonce },
                queue: FairQueue::default(),
                source,
                allow: None,
                bucket: TokenBucket::new(self.cfg.rate_bytes_per_sec, self.cfg.burst_bytes, now),
                opened: now,
                last_seen: now,
                last_overload_notice: None,
                woken: false,
                closing: false,
                backlog: 0,
            },
        );
        self.metrics.accepted += 1;
        self.metrics.clients = self.clients.len() as u64;
        let challenge = RelayToClient::ServerChallenge {
            relay_id: self.cfg.relay_id.clone(),
            nonce,
        };
        self.enqueue(id, challenge);
        Ok(id)
    }

    /// Feeds one decoded frame from `conn`; `wire_len` is its encoded size
    /// (what the rate limit counts).
    ///
    /// # Errors
    /// [`RelayError::UnknownConnection`]; [`RelayError::NotAuthenticated`]
    /// for a packet before authentication (an Error frame and a Close event
    /// are queued).
    pub fn handle(
        &mut self,
        conn: ConnId,
        msg: ClientToRelay,
        wire_len: usize,
        now: Instant,
    ) -> Result<Handled, RelayError> {
        let client = self
            .clients
            .get_mut(&conn)
            .ok_or(RelayError::UnknownConnection)?;
        if client.closing {
            return Ok(Handled::Done);
        }
        client.last_seen = now;
        match msg {
            ClientToRelay::ClientAuth(auth) => match client.auth {
                AuthState::Awaiting { nonce } => {
                    client.auth = AuthState::Verifying { nonce };
                    Ok(Handled::VerifyAuth(auth))
                }
                // A second ClientAuth is a protocol violation.
                _ => {
                    self.metrics.malformed += 1;
                    self.fail(conn, RelayToClient::Error(ErrorCode::Malformed));
                    Ok(Handled::Done)
                }
            },
            ClientToRelay::Ping(data) => {
                self.enqueue_control(conn, RelayToClient::Pong(data));
                Ok(Handled::Done)
            }
            ClientToRelay::Pong(_) => Ok(Handled::Done),
            ClientToRelay::AllowPeers(list) => {
                // Before authentication there is nothing to protect yet; the list is kept
                // either way (the codec bounds its length).
                client.allow = list;
                Ok(Handled::Done)
            }
            ClientToRelay::SendPacket { dst, payload } => {
                self.forward(conn, dst, payload, wire_len, now)?;
                Ok(Handled::Done)
            }
        }
    }

    /// Completes authentication once the shell resolved the signing key
    /// (`None` if the DID or key id did not resolve to an Ed25519 key).
    /// Queues AuthOk or AuthFailed (then Close).
    ///
    /// # Errors
    /// [`RelayError::AuthenticationFailed`] (opaque) or `UnknownConnection`.
    pub fn finish_auth(
        &mut self,
        conn: ConnId,
        auth: &ClientAuth,
        key: Option<&VerifyingKey>,
        now_unix: u64,
    ) -> Result<(), RelayError> {
        let client = self
            .clients
            .get_mut(&conn)
            .ok_or(RelayError::UnknownConnection)?;
        // A connection that timed out (or was failed) while its key was being
        // resolved must not authenticate: it would replace a live connection
        // with the same key.
        let AuthState::Verifying { nonce } = client.auth else {
            return Err(RelayError::AuthenticationFailed);
        };
        if client.closing {
            return Err(RelayError::AuthenticationFailed);
        }
        let verified = key.ok_or(RelayError::AuthenticationFailed).and_then(|k| {
            verify_client_auth(
                auth,
                &self.cfg.relay_id,
                &nonce,
                k,
                now_unix,
                self.cfg.max_clock_skew_secs,
            )
            .map(|()| k.to_bytes())
        });
        let key_bytes = match verified {
            Ok(k) => k,
            Err(e) => {
                self.metrics.auth_failed += 1;
                self.fail(conn, RelayToClient::AuthFailed);
                return Err(e);
            }
        };
        client.auth = AuthState::Authenticated {
            key: key_bytes,
            did: auth.did.clone(),
        };
        // One relay connection per key: a reconnecting client replaces its
        // stale connection rather than being refused.
        let old_k = self.by_key.insert(key_bytes, conn);
        let old_d = self.by_did.insert(auth.did.clone(), conn);
        for old in [old_k, old_d].into_iter().flatten() {
            if old != conn && self.clients.get(&old).is_some_and(|c| !c.closing) {
                self.metrics.replaced += 1;
                self.fail(old, RelayToClient::Error(ErrorCode::Replaced));
            }
        }
        self.metrics.auth_ok += 1;
        self.metrics.authenticated += 1;
        if let Some(out) = self.mesh.as_mut() {
            out.push_back(MeshEvent::Joined {
                key: key_bytes,
                did: auth.did.clone(),
            });
        }
        self.enqueue(conn, RelayToClient::AuthOk);
        Ok(())
    }

    /// Reports a frame from `conn` that failed to decode: counts it, queues
    /// an Error frame and a Close event (a byte stream cannot resync).
    pub fn on_malformed(&mut self, conn: ConnId, err: &RelayError) {
        self.metrics.malformed += 1;
        let code = match err {
            RelayError::FrameTooLarge => ErrorCode::FrameTooLarge,
            _ => ErrorCode::Malformed,
        };
        self.fail(conn, RelayToClient::Error(code));
    }

    /// Next frame to write to `conn`, if any.
    pub fn poll_transmit(&mut self, conn: ConnId) -> Option<RelayToClient> {
        let c = self.clients.get_mut(&conn)?;
        let Some((from, f)) = c.queue.pop() else {
            c.woken = false;
            return None;
        };
        if let Some(from) = from {
            self.unqueued(from, f.encoded_len());
        }
        Some(f)
    }

    /// `len` bytes of `from`'s packets left a receiver's queue (sent or dropped).
    fn unqueued(&mut self, from: ConnId, len: usize) {
        if let Some(s) = self.clients.get_mut(&from) {
            s.backlog = s.backlog.saturating_sub(len);
        }
    }

    /// Bytes of `conn`'s packets waiting in receivers' queues here (for tests and metrics).
    pub fn backlog_bytes(&self, conn: ConnId) -> Option<usize> {
        self.clients.get(&conn).map(|c| c.backlog)
    }

    /// Next event for the shell.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Closes idle and unauthenticated-too-long connections (an Error frame
    /// and a Close event each).
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.closing && self.expiry(c) <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.metrics.timed_out += 1;
            self.fail(id, RelayToClient::Error(ErrorCode::IdleTimeout));
        }
    }

    /// When [`Self::handle_timeout`] next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.clients
            .values()
            .filter(|c| !c.closing)
            .map(|c| self.expiry(c))
            .min()
    }

    /// Removes a connection (the shell calls this once the socket is gone).
    pub fn close(&mut self, conn: ConnId) {
        let Some(mut c) = self.clients.remove(&conn) else {
            return;
        };
        // Its senders' packets queued here are gone with it.
        for (from, bytes) in c.queue.clear() {
            self.unqueued(from, bytes);
        }
        if let Some(src) = c.source {
            self.per_source.remove(src);
        }
        if let AuthState::Authenticated { key, did } = c.auth {
            self.metrics.authenticated = self.metrics.authenticated.saturating_sub(1);
            let mut gone = false;
            if self.by_key.get(&key) == Some(&conn) {
                self.by_key.remove(&key);
                gone = true;
            }
            if self.by_did.get(&did) == Some(&conn) {
                self.by_did.remove(&did);
                gone = true;
            }
            // Not replaced by a newer connection here: the mesh forgets it.
            if let (true, Some(out)) = (gone, self.mesh.as_mut()) {
                out.push_back(MeshEvent::Left { key, did });
            }
        }
        self.metrics.clients = self.clients.len() as u64;
    }

    /// Bytes queued for `conn` (for tests and metrics).
    pub fn queued_bytes(&self, conn: ConnId) -> Option<usize> {
        self.clients.get(&conn).map(|c| c.queue.bytes)
    }

    fn expiry(&self, c: &Client) -> Instant {
        match c.auth {
            AuthState::Authenticated { .. } => c.last_seen + self.cfg.idle_timeout,
            _ => (c.opened + self.cfg.auth_timeout).min(c.last_seen + self.cfg.idle_timeout),
        }
    }

    fn forward(
        &mut self,
        from: ConnId,
        dst: PeerAddr,
        payload: Vec<u8>,
        wire_len: usize,
        now: Instant,
    ) -> Result<(), RelayError> {
        let Some(sender) = self.clients.get_mut(&from) else {
            return Err(RelayError::UnknownConnection);
        };
        let (src_key, src_did) = match &sender.auth {
            AuthState::Authenticated { key, did } => (*key, did.clone()),
            _ => {
                self.metrics.not_authenticated += 1;
                self.fail(from, RelayToClient::Error(ErrorCode::NotAuthenticated));
                return Err(RelayError::NotAuthenticated);
            }
        };
        if !sender.bucket.try_take(wire_len, now) {
            self.metrics.dropped_rate_limited += 1;
            self.notice_overload(from, OverloadReason::RateLimited, now);
            return Ok(());
        }
        let to = match &dst {
            PeerAddr::Key(k) => self.by_key.get(k),
            PeerAddr::Did(d) => self.by_did.get(d),
        }
        .copied()
        .filter(|id| self.clients.get(id).is_some_and(|c| !c.closing));
        let Some(to) = to else {
            // Mesh hook (spec/rendezvous.md §4.7): another instance may hold the peer.
            if let Some(out) = self.mesh.as_mut() {
                self.metrics.mesh_out_packets += 1;
                out.push_back(MeshEvent::Forward {
                    src_key,
                    src_did,
                    dst,
                    payload,
                });
                return Ok(());
            }
            self.metrics.unknown_peer += 1;
            self.enqueue_control(from, RelayToClient::PeerGone(dst));
            return Ok(());
        };
        // A receiver that named its peers hears from no one else; the sender is told the
        // peer is not here, which is all a stranger may learn.
        let allowed = self.clients.get(&to).is_some_and(|c| {
            c.allow.as_ref().is_none_or(|list| {
                list.iter().any(|p| match p {
                    PeerAddr::Key(k) => *k == src_key,
                    PeerAddr::Did(d) => *d == src_did,
                })
            })
        });
        if !allowed {
            self.metrics.dropped_not_allowed += 1;
            self.enqueue_control(from, RelayToClient::PeerGone(dst));
            return Ok(());
        }
        let len = payload.len();
        let frame = RelayToClient::RecvPacket {
            src_key,
            src_did,
            payload,
        };
        if !self.make_room(to, from, frame.encoded_len(), now) {
            self.metrics.dropped_queue_full += 1;
            self.notice_overload(from, OverloadReason::PeerQueueFull, now);
            return Ok(());
        }
        let Some(c) = self.clients.get_mut(&to) else {
            return Ok(());
        };
        let queued = frame.encoded_len();
        c.queue.push_flow(from, frame);
        if let Some(s) = self.clients.get_mut(&from) {
            s.backlog += queued;
        }
        self.wake(to);
        self.metrics.forwarded_packets += 1;
        self.metrics.forwarded_bytes += len as u64;
        Ok(())
    }

    fn has_room(&self, conn: ConnId, len: usize) -> bool {
        self.clients
            .get(&conn)
            .is_some_and(|c| self.fits(&c.queue, len))
    }

    fn fits(&self, q: &FairQueue, len: usize) -> bool {
        q.frames < self.cfg.max_queue_frames && q.bytes + len <= self.cfg.max_queue_bytes
    }

    /// Makes room for `len` bytes from `from` in `to`'s queue: longest-queue drop. If
    /// `from` would then hold the longest backlog there, its new frame is the one dropped
    /// (`false`); otherwise frames are dropped from the tail of the longest other sender's
    /// backlog, and that sender is told (`Overloaded`).
    fn make_room(&mut self, to: ConnId, from: ConnId, len: usize, now: Instant) -> bool {
        let mut evicted: Vec<ConnId> = Vec::new();
        let mut remote_told: Vec<[u8; 32]> = Vec::new();
        let ok = loop {
            let Some(c) = self.clients.get(&to) else {
                break false;
            };
            if self.fits(&c.queue, len) {
                break true;
            }
            let mine = c.queue.flow_bytes(from) + len;
            let Some((victim, theirs)) = c.queue.longest(from) else {
                break false;
            };
            if mine >= theirs {
                break false;
            }
            let Some(c) = self.clients.get_mut(&to) else {
                break false;
            };
            let Some(dropped) = c.queue.drop_tail(victim) else {
                break false;
            };
            self.unqueued(victim, dropped.encoded_len());
            self.metrics.dropped_queue_full += 1;
            if let (true, RelayToClient::RecvPacket { src_key, .. }) = (is_remote(victim), &dropped)
            {
                // A sender on another instance: its instance tells it.
                if let Some(out) = self.mesh.as_mut() {
                    if !remote_told.contains(src_key) {
                        remote_told.push(*src_key);
                        out.push_back(MeshEvent::Notice {
                            to_key: *src_key,
                            frame: RelayToClient::Overloaded(OverloadReason::PeerQueueFull),
                        });
                    }
                }
            } else if !evicted.contains(&victim) {
                evicted.push(victim);
            }
        };
        for v in evicted {
            self.notice_overload(v, OverloadReason::PeerQueueFull, now);
        }
        ok
    }

    fn notice_overload(&mut self, conn: ConnId, reason: OverloadReason, now: Instant) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        let due = c
            .last_overload_notice
            .is_none_or(|t| now.saturating_duration_since(t) >= OVERLOAD_NOTICE_INTERVAL);
        if due {
            c.last_overload_notice = Some(now);
            self.enqueue_control(conn, RelayToClient::Overloaded(reason));
        }
    }

    /// Queues a control frame if the queue has room; counted when dropped.
    fn enqueue_control(&mut self, conn: ConnId, frame: RelayToClient) {
        if self.has_room(conn, frame.encoded_len()) {
            self.enqueue(conn, frame);
        } else {
            self.metrics.dropped_control += 1;
        }
    }

    /// Queues a final frame (bypassing the limits: one small frame) and a Close.
    fn fail(&mut self, conn: ConnId, frame: RelayToClient) {
        if let Some(c) = self.clients.get_mut(&conn) {
            if c.closing {
                return;
            }
            c.closing = true;
            // Drop what was queued for it: the connection is going away.
            let senders = c.queue.clear();
            for (from, bytes) in senders {
                self.unqueued(from, bytes);
            }
        }
        self.enqueue(conn, frame);
        self.events.push_back(ServerEvent::Close(conn));
    }

    /// Queues a control frame (challenge, AuthOk, notices, final frames): served before
    /// packets.
    fn enqueue(&mut self, conn: ConnId, frame: RelayToClient) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        c.queue.push_control(frame);
        self.wake(conn);
    }

    fn wake(&mut self, conn: ConnId) {
        let Some(c) = self.clients.get_mut(&conn) else {
            return;
        };
        if !c.woken {
            c.woken = true;
            self.events.push_back(ServerEvent::Wake(conn));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Mesh hook (spec/rendezvous.md §4.7): relay instances that share clients' presence forward
// packets for peers connected to another instance. The core only says what must cross
// (`poll_mesh`) and takes in what arrived (`deliver_from_mesh`, `mesh_notice`); presence,
// routes and the instance-to-instance links live in the shell (the mediator's `mesh`).
// ---------------------------------------------------------------------------------------

/// What the mesh shell must do, from [`RelayServer::poll_mesh`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MeshEvent {
    /// A client authenticated here: announce that this instance holds `key` and `did`.
    Joined {
        /// Its Ed25519 key.
        key: [u8; 32],
        /// Its DID.
        did: String,
    },
    /// A client left (and no newer connection here holds its key or DID): withdraw it.
    Left {
        /// Its Ed25519 key.
        key: [u8; 32],
        /// Its DID.
        did: String,
    },
    /// A packet from a client here for a peer not connected here: find the instance that
    /// holds `dst` and hand it over there with [`RelayServer::deliver_from_mesh`]; if no
    /// instance does, call [`RelayServer::mesh_notice`] with `PeerGone(dst)` for `src_key`.
    Forward {
        /// The sender's authenticated key.
        src_key: [u8; 32],
        /// The sender's authenticated DID.
        src_did: String,
        /// The destination as the sender named it.
        dst: PeerAddr,
        /// The opaque payload.
        payload: Vec<u8>,
    },
    /// A notice for a sender connected to another instance (its packet could not be
    /// delivered here): hand it to the instance holding `to_key`, which calls
    /// [`RelayServer::mesh_notice`].
    Notice {
        /// The sender's key.
        to_key: [u8; 32],
        /// `PeerGone` or `Overloaded`.
        frame: RelayToClient,
    },
}

/// Connection ids with the top bit set stand for senders on other instances in the fair
/// queues (local ids count up from 1 and never get there).
const REMOTE_BIT: u64 = 1 << 63;

fn is_remote(c: ConnId) -> bool {
    c.0 & REMOTE_BIT != 0
}

/// The fair-queue flow id of a sender on another instance: derived from its key, so one
/// remote sender holds one flow in each receiver's queue, with no table to grow.
fn remote_conn_id(key: &[u8; 32]) -> ConnId {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    ConnId(u64::from_be_bytes(b) | REMOTE_BIT)
}

impl RelayServer {
    /// Turns on the mesh hook: packets for peers not connected here, and clients joining
    /// and leaving, become [`MeshEvent`]s instead of `PeerGone` answers.
    pub fn enable_mesh(&mut self) {
        if self.mesh.is_none() {
            self.mesh = Some(VecDeque::new());
        }
    }

    /// Next thing the mesh shell must do (always `None` without [`Self::enable_mesh`]).
    pub fn poll_mesh(&mut self) -> Option<MeshEvent> {
        self.mesh.as_mut()?.pop_front()
    }

    /// A packet that another instance forwarded for `dst`, from a sender connected there.
    /// The receiver's allow-list, queue limit and fair queueing apply as for a local
    /// sender; when the packet cannot be queued a [`MeshEvent::Notice`] for the sender is
    /// emitted (`PeerGone` if `dst` is not here or does not accept the sender,
    /// `Overloaded(PeerQueueFull)` on a full queue).
    pub fn deliver_from_mesh(
        &mut self,
        src_key: [u8; 32],
        src_did: String,
        dst: PeerAddr,
        payload: Vec<u8>,
        now: Instant,
    ) {
        let to = match &dst {
            PeerAddr::Key(k) => self.by_key.get(k),
            PeerAddr::Did(d) => self.by_did.get(d),
        }
        .copied()
        .filter(|id| self.clients.get(id).is_some_and(|c| !c.closing));
        let allowed = to.is_some_and(|to| {
            self.clients.get(&to).is_some_and(|c| {
                c.allow.as_ref().is_none_or(|list| {
                    list.iter().any(|p| match p {
                        PeerAddr::Key(k) => *k == src_key,
                        PeerAddr::Did(d) => *d == src_did,
                    })
                })
            })
        });
        let notice = |s: &mut Self, frame: RelayToClient| {
            if let Some(out) = s.mesh.as_mut() {
                out.push_back(MeshEvent::Notice {
                    to_key: src_key,
                    frame,
                });
            }
        };
        let Some(to) = to.filter(|_| allowed) else {
            if to.is_some() {
                self.metrics.dropped_not_allowed += 1;
            } else {
                self.metrics.unknown_peer += 1;
            }
            notice(self, RelayToClient::PeerGone(dst));
            return;
        };
        let from = remote_conn_id(&src_key);
        let len = payload.len();
        let frame = RelayToClient::RecvPacket {
            src_key,
            src_did,
            payload,
        };
        if !self.make_room(to, from, frame.encoded_len(), now) {
            self.metrics.dropped_queue_full += 1;
            notice(
                self,
                RelayToClient::Overloaded(OverloadReason::PeerQueueFull),
            );
            return;
        }
        let Some(c) = self.clients.get_mut(&to) else {
            return;
        };
        c.queue.push_flow(from, frame);
        self.wake(to);
        self.metrics.mesh_in_packets += 1;
        self.metrics.forwarded_packets += 1;
        self.metrics.forwarded_bytes += len as u64;
    }

    /// A notice from the mesh for the client here with `to_key`: `PeerGone` (no instance
    /// holds the destination, counted as `unknown_peer`) or `Overloaded` (sent at most once
    /// a second, as for local drops). Other frames, and keys not connected here, are
    /// ignored: a notice is advice, never a reason to fail.
    pub fn mesh_notice(&mut self, to_key: &[u8; 32], frame: RelayToClient, now: Instant) {
        let Some(conn) = self
            .by_key
            .get(to_key)
            .copied()
            .filter(|id| self.clients.get(id).is_some_and(|c| !c.closing))
        else {
            return;
        };
        match frame {
            RelayToClient::PeerGone(dst) => {
                self.metrics.unknown_peer += 1;
                self.enqueue_control(conn, RelayToClient::PeerGone(dst));
            }
            RelayToClient::Overloaded(reason) => self.notice_overload(conn, reason, now),
            _ => {}
        }
    }

    /// The client holding `who` here authenticated again at another instance of the mesh
    /// (the shell learnt it from the shared presence): its connection here is stale — a
    /// silently dead path, typically — and is failed with `Error(Replaced)`, as a local
    /// re-authentication fails it, so local senders' packets go to the mesh from now on
    /// instead of into a socket nobody reads. Its `Left` still follows once the shell
    /// closes it; the shell must not withdraw a presence entry it no longer owns.
    /// Returns whether a connection was failed.
    pub fn replaced_elsewhere(&mut self, who: &PeerAddr) -> bool {
        let conn = match who {
            PeerAddr::Key(k) => self.by_key.get(k),
            PeerAddr::Did(d) => self.by_did.get(d),
        }
        .copied()
        .filter(|id| self.clients.get(id).is_some_and(|c| !c.closing));
        let Some(conn) = conn else {
            return false;
        };
        self.metrics.replaced += 1;
        self.fail(conn, RelayToClient::Error(ErrorCode::Replaced));
        true
    }

    /// Keys and DIDs of the clients authenticated here (what the mesh shell refreshes in
    /// the shared presence table).
    pub fn authenticated_peers(&self) -> Vec<([u8; 32], String)> {
        self.clients
            .values()
            .filter_map(|c| match &c.auth {
                AuthState::Authenticated { key, did } if !c.closing => Some((*key, did.clone())),
                _ => None,
            })
            .collect()
    }
}
