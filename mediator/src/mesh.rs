//! The relay mesh (spec/rendezvous.md §4.7): mediator instances that share a Redis
//! forward relay packets to the instance that holds the destination, as the relays of a
//! Tailscale DERP region do.
//!
//! ```text
//!  client A ─▶ instance 1: RelayServer ── MeshEvent::Forward ─▶ router ─ GET presence ─▶ Redis
//!                                                                 │ link (TCP, mesh key)
//!  client B ◀─ instance 2: RelayServer ◀─ deliver_from_mesh ◀─ inbound ◀┘
//!  presence: Joined/Left ─▶ {prefix}relay:k:<key hex> / relay:d:<did> = "host:port|auth_ms" EX ttl
//! ```
//!
//! Three tasks besides one per link: the **presence** task writes who is connected here
//! (the newest authentication takes the entry and tells the instance it displaced, which
//! fails its stale connection as `Replaced`; a refresh every third of the TTL never takes
//! an entry another instance holds, and finding one means the connection here is stale;
//! withdrawn on leave and on shutdown only if still ours), the
//! **router** looks each destination up (cached briefly) and hands the frame to that
//! instance's link, and the **listener** accepts links from the other instances and feeds
//! what arrives into the local relay core. Every link is authenticated both ways with the
//! shared mesh key (`mesh_proto`). A packet that cannot be delivered is answered as a
//! single relay answers it: `PeerGone` when no instance holds the peer (or its instance
//! cannot be reached), `Overloaded(PeerQueueFull)` when a queue on the way is full. The
//! relay core never waits for the mesh: every hand-over is a non-blocking `try_send` into a
//! bounded queue.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_did_rendezvous::relay::{OverloadReason, PeerAddr, RelayToClient};
use mpc_did_rendezvous::relay_server::{MeshEvent, RelayServer};
use rand_core::{OsRng, RngCore};
use redis::aio::ConnectionManager;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::mesh_proto::{check_proof, client_proof, server_proof, MeshFrame, MIN_KEY_LEN};

/// What the router carries: the relay core's events, and `Moved` notes from the presence
/// task for the instance a client moved away from.
pub(crate) enum RouterMsg {
    Core(MeshEvent),
    Moved { to: String, frame: MeshFrame },
}

/// How the relay service joins a mesh of instances.
#[derive(Clone)]
pub struct MeshConfig {
    /// Where this instance accepts links from the other instances (a private address).
    pub listen: SocketAddr,
    /// The address the other instances dial (default: the bound `listen` address, which
    /// then must name a concrete IP, not `0.0.0.0`).
    pub advertise: Option<SocketAddr>,
    /// The shared mesh key (at least 32 bytes), the same on every instance.
    pub key: Zeroizing<Vec<u8>>,
    /// The Redis holding the presence table (the mediator's store).
    pub redis_url: String,
    /// Key prefix in Redis (the store's `redis_prefix`).
    pub prefix: String,
    /// How long a presence entry lives unless refreshed.
    pub presence_ttl: Duration,
    /// Accept a `listen` address that is neither loopback nor private (links are
    /// authenticated, not encrypted, and frames after the handshake carry no MAC).
    pub allow_public_listen: bool,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("redis_url", &self.redis_url)
            .field("prefix", &self.prefix)
            .field("presence_ttl", &self.presence_ttl)
            .field("allow_public_listen", &self.allow_public_listen)
            .finish_non_exhaustive()
    }
}

impl MeshConfig {
    /// Checks the key length, that the advertised address can be dialled, and that the
    /// listener is on a loopback or private address (unless `allow_public_listen`).
    ///
    /// # Errors
    /// A message naming the setting to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.key.len() < MIN_KEY_LEN {
            return Err(format!(
                "relay.mesh.key_file: the mesh key must be at least {MIN_KEY_LEN} bytes (e.g. `openssl rand -hex 32 > mesh.key`)"
            ));
        }
        if !self.allow_public_listen && !is_private(self.listen.ip()) {
            return Err(format!(
                "relay.mesh.listen: {} is not a loopback or private address; the mesh links are authenticated, not encrypted (frames after the handshake carry no MAC): bind the private network's address, or set relay.mesh.allow_public_listen = true behind a firewall or VPN",
                self.listen
            ));
        }
        // Without `advertise` the bound listen address is announced (port 0 is resolved).
        let adv = self.advertise.unwrap_or(self.listen);
        if adv.ip().is_unspecified() || (self.advertise.is_some() && adv.port() == 0) {
            return Err(format!(
                "relay.mesh.advertise: other instances cannot dial {adv}; set the address they reach this instance at"
            ));
        }
        Ok(())
    }
}

/// Loopback, RFC 1918, shared (RFC 6598, e.g. Tailscale), link-local, or IPv6 unique-local
/// / link-local: an address strangers on the Internet do not reach directly. `0.0.0.0` is
/// not (it listens on every interface).
fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_private(std::net::IpAddr::V4(v4)),
            None => {
                let first = v6.segments()[0];
                v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
            }
        },
    }
}

/// Access to the local relay core: runs `f` under the relay's lock, then delivers the
/// core's events (wakes writers, hands mesh events back to [`MeshTx::dispatch`]).
pub(crate) trait RelayAccess: Send + Sync + 'static {
    fn with_server(&self, f: &mut dyn FnMut(&mut RelayServer));
}

/// Frames queued per link (each ≤ one relay frame, ~64 KiB).
const LINK_QUEUE: usize = 256;
/// Events queued for the router.
const ROUTER_QUEUE: usize = 1024;
/// Authenticated links from other instances at once.
const MAX_INBOUND: usize = 64;
/// Inbound handshakes in progress at once, from all sources together (a slot is held from
/// accept until the peer proved the key, at most [`INBOUND_HANDSHAKE_TIMEOUT`]).
const MAX_PENDING: usize = 64;
/// Inbound handshakes in progress from one source (an IPv4 address or an IPv6 /64): a
/// stranger reconnecting to the mesh port holds at most these, and the instances, at other
/// addresses, still get in.
const MAX_PENDING_PER_SOURCE: usize = 4;
/// An inbound handshake is one round trip on a private network.
const INBOUND_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Refused connections are logged at most once per this interval, with their count.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// How long a looked-up route is trusted.
const ROUTE_TTL: Duration = Duration::from_secs(1);
/// How long "no instance holds it" is trusted (short: a peer may be connecting now).
const NO_ROUTE_TTL: Duration = Duration::from_millis(250);
/// A link that failed is not dialled again for this long.
const REDIAL_AFTER: Duration = Duration::from_secs(1);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most of the router's queue one sender's forwards may hold: one client sending to many
/// peers cannot fill it for everyone (audit 18 M3); past it, its packets are answered
/// `Overloaded(PeerQueueFull)` at once.
const ROUTER_SHARE: usize = ROUTER_QUEUE / 4;
/// Presence lookups (Redis `GET`s for destinations without a cached route) one sender may
/// cause per second, and its burst; past them its packets to uncached destinations are
/// answered `PeerGone` without a lookup.
const LOOKUP_RATE: f64 = 100.0;
const LOOKUP_BURST: f64 = 200.0;

/// Forwards of each sender waiting in the router's queue.
type Share = Arc<std::sync::Mutex<HashMap<[u8; 32], usize>>>;

fn lock_share(s: &Share) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], usize>> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `Moved` notes from other instances queued for the presence task.
const MOVED_QUEUE: usize = 1024;

/// The relay core's side of the mesh: where [`MeshEvent`]s go.
pub(crate) struct MeshTx {
    router: mpsc::Sender<RouterMsg>,
    share: Share,
    presence: mpsc::UnboundedSender<MeshEvent>,
}

/// The tasks' side, taken by [`run`].
pub(crate) struct MeshRx {
    router_tx: mpsc::Sender<RouterMsg>,
    share: Share,
    router: mpsc::Receiver<RouterMsg>,
    presence: mpsc::UnboundedReceiver<MeshEvent>,
}

/// The two queues between the relay core and the mesh tasks.
pub(crate) fn channels() -> (MeshTx, MeshRx) {
    let (rt, rr) = mpsc::channel(ROUTER_QUEUE);
    let (pt, pr) = mpsc::unbounded_channel();
    let share = Share::default();
    (
        MeshTx {
            router: rt.clone(),
            share: share.clone(),
            presence: pt,
        },
        MeshRx {
            router_tx: rt.clone(),
            share,
            router: rr,
            presence: pr,
        },
    )
}

impl MeshTx {
    /// Hands one event of the core to the mesh tasks without waiting. Presence changes are
    /// never dropped (their queue grows only with connections); a packet that finds the
    /// router's queue full is dropped and its sender told, as a full relay queue does.
    pub(crate) fn dispatch(&self, ev: MeshEvent, server: &mut RelayServer) {
        match ev {
            MeshEvent::Joined { .. } | MeshEvent::Left { .. } => {
                let _ = self.presence.send(ev);
            }
            MeshEvent::Forward { src_key, .. } => {
                let mut share = lock_share(&self.share);
                let n = share.get(&src_key).copied().unwrap_or(0);
                let queued = n < ROUTER_SHARE && self.router.try_send(RouterMsg::Core(ev)).is_ok();
                if queued {
                    share.insert(src_key, n + 1);
                } else {
                    server.mesh_notice(
                        &src_key,
                        RelayToClient::Overloaded(OverloadReason::PeerQueueFull),
                        Instant::now(),
                    );
                }
            }
            // A notice that cannot be queued is lost: it is advice, and the sender's
            // session notices the gap anyway (spec/session.md §7).
            _ => {
                let _ = self.router.try_send(RouterMsg::Core(ev));
            }
        }
    }
}

/// Runs the mesh until `stop`: presence, router and the listener for other instances.
pub(crate) async fn run(
    cfg: MeshConfig,
    listener: TcpListener,
    rx: MeshRx,
    access: Arc<dyn RelayAccess>,
    stop: CancellationToken,
) {
    let me = cfg.advertise.unwrap_or(cfg.listen).to_string();
    let key = Arc::new(cfg.key.clone());
    let redis = loop {
        match connect_redis(&cfg.redis_url).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "relay mesh: cannot reach Redis; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    tracing::info!(listen = %cfg.listen, advertise = %me, "relay mesh up");
    let (moved_tx, moved_rx) = mpsc::channel(MOVED_QUEUE);
    let presence = Presence {
        redis: redis.clone(),
        prefix: cfg.prefix.clone(),
        me: me.clone(),
        ttl: cfg.presence_ttl,
        router: rx.router_tx.clone(),
        held: HashMap::new(),
        last_stamp: 0,
    };
    let router = Router {
        redis,
        prefix: cfg.prefix,
        me,
        key: key.clone(),
        access: access.clone(),
        routes: HashMap::new(),
        links: HashMap::new(),
        stop: stop.clone(),
        share: rx.share,
        lookups: HashMap::new(),
    };
    tokio::join!(
        presence.run(rx.presence, moved_rx, access.clone(), stop.clone()),
        router.run(rx.router),
        accept_loop(listener, key, access, moved_tx, stop.clone()),
    );
}

async fn connect_redis(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(2))
        .set_response_timeout(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config).await
}

fn key_entry(prefix: &str, key: &[u8; 32]) -> String {
    format!("{prefix}relay:k:{}", hex::encode(key))
}

fn did_entry(prefix: &str, did: &str) -> String {
    format!("{prefix}relay:d:{did}")
}

/// The instance a presence value names, and the authentication time (Unix ms) it carries
/// (`host:port|auth_ms`; an entry without the time, from an older instance, has none).
fn split_entry(v: &str) -> (&str, Option<u64>) {
    match v.split_once('|') {
        Some((owner, at)) => (owner, at.parse().ok()),
        None => (v, None),
    }
}

/// A client authenticated here: the newest authentication takes its entries, whoever held
/// them, and the script returns what each named before (`''` if nothing) so the displaced
/// instance can be told. `ARGV`: value, TTL seconds.
const CLAIM: &str = r"
local prev = {}
for i, k in ipairs(KEYS) do
  prev[i] = redis.call('GET', k) or ''
  redis.call('SET', k, ARGV[1], 'EX', ARGV[2])
end
return prev";

/// The periodic refresh: renews an entry that is missing or names this instance, never
/// one another instance holds (a newer authentication there); returns `''` for a renewed
/// entry and the other holder's value otherwise. `ARGV`: this instance, TTL seconds, then
/// one value per key.
const REFRESH: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  local cur = redis.call('GET', k)
  if (not cur) or string.match(cur, '^[^|]*') == ARGV[1] then
    redis.call('SET', k, ARGV[2 + i], 'EX', ARGV[2])
    out[i] = ''
  else
    out[i] = cur
  end
end
return out";

/// Deletes a presence entry only if it still names this instance (the client may have
/// moved to another instance meanwhile).
const DELETE_IF_MINE: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^[^|]*') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Entries refreshed by one script call (the script holds Redis while it runs).
const REFRESH_CHUNK: usize = 256;

struct Presence {
    redis: ConnectionManager,
    prefix: String,
    me: String,
    ttl: Duration,
    /// Where `Moved` notes for other instances go.
    router: mpsc::Sender<RouterMsg>,
    /// The authentication time (Unix ms) of each key and DID held here: the generation
    /// written with its entry, which a `Moved` note must name to fail the connection.
    held: HashMap<PeerAddr, u64>,
    last_stamp: u64,
}

impl Presence {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<MeshEvent>,
        mut moved: mpsc::Receiver<(PeerAddr, u64)>,
        access: Arc<dyn RelayAccess>,
        stop: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval((self.ttl / 3).max(Duration::from_secs(1)));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    // Shutdown: the connections here are going; withdraw what is still ours
                    // now rather than leave entries naming a stopped instance for the TTL.
                    let _ = tokio::time::timeout(Duration::from_secs(2), self.withdraw_all()).await;
                    return;
                }
                ev = rx.recv() => match ev {
                    Some(MeshEvent::Joined { key, did }) => self.joined(key, did).await,
                    Some(MeshEvent::Left { key, did }) => {
                        for who in [PeerAddr::Key(key), PeerAddr::Did(did)] {
                            self.held.remove(&who);
                            self.withdraw(&who).await;
                        }
                    }
                    Some(_) => {}
                    None => return,
                },
                m = moved.recv() => {
                    if let Some((who, auth_ms)) = m {
                        self.moved(&who, auth_ms, access.as_ref());
                    }
                }
                _ = refresh.tick() => self.refresh(access.as_ref()).await,
            }
        }
    }

    /// This instance's authentication time for a new holder: Unix ms, strictly increasing
    /// here (it also tells two authentications of one key here apart).
    fn stamp(&mut self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.last_stamp = now.max(self.last_stamp.saturating_add(1));
        self.last_stamp
    }

    fn entry(&self, who: &PeerAddr) -> String {
        match who {
            PeerAddr::Key(k) => key_entry(&self.prefix, k),
            PeerAddr::Did(d) => did_entry(&self.prefix, d),
        }
    }

    /// A client authenticated here: take its entries and tell each instance that held one
    /// that its connection is displaced.
    async fn joined(&mut self, key: [u8; 32], did: String) {
        let at = self.stamp();
        let who = [PeerAddr::Key(key), PeerAddr::Did(did)];
        for w in &who {
            self.held.insert(w.clone(), at);
        }
        let script = redis::Script::new(CLAIM);
        let mut inv = script.prepare_invoke();
        for w in &who {
            inv.key(self.entry(w));
        }
        inv.arg(format!("{}|{at}", self.me))
            .arg(self.ttl.as_secs().max(1));
        let prev: Vec<String> = match inv.invoke_async(&mut self.redis).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "relay mesh: cannot write presence");
                return;
            }
        };
        for (w, p) in who.into_iter().zip(prev) {
            let (owner, auth_ms) = split_entry(&p);
            let Some(auth_ms) = auth_ms.filter(|_| !owner.is_empty() && owner != self.me) else {
                continue;
            };
            tracing::info!(instance = %owner, "relay mesh: a client re-authenticated here; telling the instance it left");
            let note = RouterMsg::Moved {
                to: owner.to_owned(),
                frame: MeshFrame::Moved { who: w, auth_ms },
            };
            // Lost only when the router is swamped; that instance's own refresh then
            // finds the entry taken (within a third of the TTL).
            if self.router.try_send(note).is_err() {
                tracing::warn!(instance = %owner, "relay mesh: router queue full; the displaced instance learns at its next refresh");
            }
        }
    }

    /// Another instance says the client holding `who` authenticated there, displacing the
    /// entry this instance wrote at `auth_ms`: fail the connection here if it is still
    /// that one (a newer authentication here since, or a forged or replayed note, is
    /// ignored with a log line).
    fn moved(&mut self, who: &PeerAddr, auth_ms: u64, access: &dyn RelayAccess) {
        if self.held.get(who) != Some(&auth_ms) {
            tracing::info!(
                "relay mesh: ignored a stale 'moved' note (not the connection held here)"
            );
            return;
        }
        self.held.remove(who);
        let mut failed = false;
        access.with_server(&mut |s| failed = s.replaced_elsewhere(who));
        if failed {
            tracing::info!(
                "relay mesh: a client moved to another instance; its connection here is replaced"
            );
        }
    }

    /// Renews the entries of every client authenticated here; an entry another instance
    /// holds means that client authenticated there since: its connection here is stale.
    async fn refresh(&mut self, access: &dyn RelayAccess) {
        let mut peers = Vec::new();
        access.with_server(&mut |s| peers = s.authenticated_peers());
        // Only what the presence task announced (a Joined still queued is written by it).
        let items: Vec<(PeerAddr, u64)> = peers
            .into_iter()
            .flat_map(|(k, d)| [PeerAddr::Key(k), PeerAddr::Did(d)])
            .filter_map(|w| self.held.get(&w).map(|at| (w, *at)))
            .collect();
        let script = redis::Script::new(REFRESH);
        let mut stale = Vec::new();
        for chunk in items.chunks(REFRESH_CHUNK) {
            let mut inv = script.prepare_invoke();
            inv.arg(&self.me).arg(self.ttl.as_secs().max(1));
            for (w, at) in chunk {
                inv.key(self.entry(w)).arg(format!("{}|{at}", self.me));
            }
            let out: Vec<String> = match inv.invoke_async(&mut self.redis).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "relay mesh: cannot refresh presence");
                    return;
                }
            };
            for ((w, _), o) in chunk.iter().zip(out) {
                if !o.is_empty() {
                    stale.push(w.clone());
                }
            }
        }
        if stale.is_empty() {
            return;
        }
        for w in &stale {
            self.held.remove(w);
        }
        let mut failed = 0usize;
        access.with_server(&mut |s| {
            failed = stale.iter().filter(|w| s.replaced_elsewhere(w)).count();
        });
        tracing::info!(
            failed,
            "relay mesh: clients authenticated at another instance since; their connections here are replaced"
        );
    }

    async fn withdraw(&mut self, who: &PeerAddr) {
        let r: Result<i64, _> = redis::Script::new(DELETE_IF_MINE)
            .key(self.entry(who))
            .arg(&self.me)
            .invoke_async(&mut self.redis)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "relay mesh: cannot withdraw presence");
        }
    }

    async fn withdraw_all(&mut self) {
        let held: Vec<PeerAddr> = self.held.drain().map(|(w, _)| w).collect();
        for w in &held {
            self.withdraw(w).await;
        }
    }
}

/// One outgoing frame and, for a packet, whom to tell if it cannot be delivered.
struct Outgoing {
    bytes: Vec<u8>,
    undeliverable: Option<([u8; 32], PeerAddr)>,
}

struct Link {
    tx: mpsc::Sender<Outgoing>,
    failed_at: Option<Instant>,
}

struct Router {
    redis: ConnectionManager,
    prefix: String,
    me: String,
    key: Arc<Zeroizing<Vec<u8>>>,
    access: Arc<dyn RelayAccess>,
    routes: HashMap<PeerAddr, (Option<String>, Instant)>,
    links: HashMap<String, Link>,
    stop: CancellationToken,
    share: Share,
    /// Each sender's lookup budget: tokens and when they were counted.
    lookups: HashMap<[u8; 32], (f64, Instant)>,
}

impl Router {
    async fn run(mut self, mut rx: mpsc::Receiver<RouterMsg>) {
        loop {
            let msg = tokio::select! {
                () = self.stop.cancelled() => return,
                ev = rx.recv() => match ev { Some(ev) => ev, None => return },
            };
            let ev = match msg {
                RouterMsg::Core(ev) => ev,
                RouterMsg::Moved { to, frame } => {
                    let _ = self.send(&to, &frame, None);
                    continue;
                }
            };
            match ev {
                MeshEvent::Forward {
                    src_key,
                    src_did,
                    dst,
                    payload,
                } => {
                    {
                        let mut share = lock_share(&self.share);
                        if let Some(n) = share.get_mut(&src_key) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                share.remove(&src_key);
                            }
                        }
                    }
                    if !self.cached(&dst) && !self.take_lookup(&src_key) {
                        // Past its lookup budget: answered as for an unknown peer, no Redis.
                        self.access.with_server(&mut |s| {
                            s.mesh_notice(
                                &src_key,
                                RelayToClient::PeerGone(dst.clone()),
                                Instant::now(),
                            );
                        });
                        continue;
                    }
                    let frame = MeshFrame::Forward {
                        dst: dst.clone(),
                        packet: RelayToClient::RecvPacket {
                            src_key,
                            src_did,
                            payload,
                        },
                    };
                    let sent = match self.route(&dst).await {
                        Some(inst) => self.send(&inst, &frame, Some((src_key, dst.clone()))),
                        None => Err(Undelivered::NoRoute),
                    };
                    if let Err(why) = sent {
                        let notice = match why {
                            Undelivered::NoRoute => RelayToClient::PeerGone(dst),
                            Undelivered::Full => {
                                RelayToClient::Overloaded(OverloadReason::PeerQueueFull)
                            }
                        };
                        self.access.with_server(&mut |s| {
                            s.mesh_notice(&src_key, notice.clone(), Instant::now());
                        });
                    }
                }
                MeshEvent::Notice { to_key, frame } => {
                    if let Some(inst) = self.route(&PeerAddr::Key(to_key)).await {
                        let _ = self.send(&inst, &MeshFrame::Notice { to_key, frame }, None);
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether `dst` has a route (or "nobody") still trusted, so no lookup is needed.
    fn cached(&self, dst: &PeerAddr) -> bool {
        self.routes.get(dst).is_some_and(|(inst, at)| {
            let ttl = if inst.is_some() {
                ROUTE_TTL
            } else {
                NO_ROUTE_TTL
            };
            at.elapsed() < ttl
        })
    }

    /// Takes one presence lookup from `sender`'s budget ([`LOOKUP_RATE`]/s).
    fn take_lookup(&mut self, sender: &[u8; 32]) -> bool {
        let now = Instant::now();
        if self.lookups.len() > 65_536 {
            self.lookups.retain(|_, (t, at)| {
                *t + now.saturating_duration_since(*at).as_secs_f64() * LOOKUP_RATE < LOOKUP_BURST
            });
        }
        let (tokens, at) = self.lookups.entry(*sender).or_insert((LOOKUP_BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * LOOKUP_RATE)
            .min(LOOKUP_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The instance holding `dst` (never this one: a stale entry naming us means the peer
    /// is gone).
    async fn route(&mut self, dst: &PeerAddr) -> Option<String> {
        let now = Instant::now();
        if let Some((inst, at)) = self.routes.get(dst) {
            let ttl = if inst.is_some() {
                ROUTE_TTL
            } else {
                NO_ROUTE_TTL
            };
            if now.saturating_duration_since(*at) < ttl {
                return inst.clone();
            }
        }
        let entry = match dst {
            PeerAddr::Key(k) => key_entry(&self.prefix, k),
            PeerAddr::Did(d) => did_entry(&self.prefix, d),
        };
        let found: Option<String> = match redis::cmd("GET")
            .arg(entry)
            .query_async(&mut self.redis)
            .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "relay mesh: presence lookup failed");
                None
            }
        };
        let found = found
            .map(|v| split_entry(&v).0.to_owned())
            .filter(|i| *i != self.me);
        if self.routes.len() > 65_536 {
            self.routes.clear();
        }
        self.routes.insert(dst.clone(), (found.clone(), now));
        found
    }

    fn send(
        &mut self,
        inst: &str,
        frame: &MeshFrame,
        undeliverable: Option<([u8; 32], PeerAddr)>,
    ) -> Result<(), Undelivered> {
        let mut bytes = Vec::new();
        if frame.write_to(&mut bytes).is_err() {
            return Err(Undelivered::NoRoute);
        }
        let out = Outgoing {
            bytes,
            undeliverable,
        };
        let link = self.links.get_mut(inst);
        let out = match link {
            Some(l) if !l.tx.is_closed() => {
                return match l.tx.try_send(out) {
                    Ok(()) => Ok(()),
                    Err(mpsc::error::TrySendError::Full(_)) => Err(Undelivered::Full),
                    Err(mpsc::error::TrySendError::Closed(_)) => Err(Undelivered::NoRoute),
                };
            }
            Some(l) => {
                // The link ended: dial again, but not in a tight loop.
                let failed = *l.failed_at.get_or_insert_with(Instant::now);
                if failed.elapsed() < REDIAL_AFTER {
                    return Err(Undelivered::NoRoute);
                }
                out
            }
            None => out,
        };
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let _ = tx.try_send(out);
        tokio::spawn(link_task(
            inst.to_owned(),
            self.key.clone(),
            rx,
            self.access.clone(),
            self.stop.clone(),
        ));
        self.links.insert(
            inst.to_owned(),
            Link {
                tx,
                failed_at: None,
            },
        );
        Ok(())
    }
}

enum Undelivered {
    NoRoute,
    Full,
}

/// Dials `inst`, authenticates, then writes frames until the queue closes or a write
/// fails. Frames that could not be written are answered with `PeerGone` to their senders.
async fn link_task(
    inst: String,
    key: Arc<Zeroizing<Vec<u8>>>,
    mut rx: mpsc::Receiver<Outgoing>,
    access: Arc<dyn RelayAccess>,
    stop: CancellationToken,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(64);
    let dialled = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial(&inst, &key)).await;
    let mut tcp = match dialled {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            tracing::warn!(instance = %inst, error = %e, "relay mesh: cannot link to instance");
            None
        }
        Err(_) => {
            tracing::warn!(instance = %inst, "relay mesh: link handshake timed out");
            None
        }
    };
    let mut buf = Vec::new();
    while let Some(tcp_ref) = tcp.as_mut() {
        let n = tokio::select! {
            () = stop.cancelled() => return,
            n = rx.recv_many(&mut batch, 64) => n,
        };
        if n == 0 {
            return;
        }
        buf.clear();
        for o in &batch {
            buf.extend_from_slice(&o.bytes);
        }
        if let Err(e) = tcp_ref.write_all(&buf).await {
            tracing::warn!(instance = %inst, error = %e, "relay mesh: link lost");
            tcp = None;
        } else {
            batch.clear();
        }
    }
    // Failed: tell the senders of everything still queued, then end (the router dials
    // again later).
    rx.close();
    while let Ok(o) = rx.try_recv() {
        batch.push(o);
    }
    let gone: Vec<([u8; 32], PeerAddr)> =
        batch.into_iter().filter_map(|o| o.undeliverable).collect();
    if !gone.is_empty() {
        access.with_server(&mut |s| {
            for (k, dst) in &gone {
                s.mesh_notice(k, RelayToClient::PeerGone(dst.clone()), Instant::now());
            }
        });
    }
}

async fn dial(inst: &str, key: &[u8]) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(inst).await?;
    tcp.set_nodelay(true)?;
    let mut nonce_s = [0u8; 32];
    tcp.read_exact(&mut nonce_s).await?;
    let mut nonce_c = [0u8; 32];
    OsRng.fill_bytes(&mut nonce_c);
    let proof = client_proof(key, &nonce_s, &nonce_c).map_err(std::io::Error::other)?;
    let mut hello = Vec::with_capacity(64);
    hello.extend_from_slice(&nonce_c);
    hello.extend_from_slice(&proof);
    tcp.write_all(&hello).await?;
    let mut answer = [0u8; 32];
    tcp.read_exact(&mut answer).await?;
    check_proof(key, true, &nonce_s, &nonce_c, &answer).map_err(std::io::Error::other)?;
    Ok(tcp)
}

/// The source a pending-handshake budget is counted for: the IPv4 address, or the IPv6 /64.
fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => std::net::IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 @ std::net::IpAddr::V4(_) => v4,
    }
}

/// Handshakes in progress per source.
type PendingMap = Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>;

fn lock_pending(m: &PendingMap) -> std::sync::MutexGuard<'_, HashMap<std::net::IpAddr, usize>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One source's pending handshake; released on drop.
struct PendingSlot {
    map: PendingMap,
    source: std::net::IpAddr,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut m = lock_pending(&self.map);
        if let Some(n) = m.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.source);
            }
        }
    }
}

/// Refusals, logged at most once per [`REFUSAL_LOG_EVERY`] with their count (a stranger
/// reconnecting in a loop must not flood the log).
#[derive(Default)]
struct Refusals {
    count: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn note(m: &std::sync::Mutex<Refusals>, from: SocketAddr, why: &'static str) {
        let mut r = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.count += 1;
        let due = r.last_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY);
        if due {
            tracing::warn!(%from, refused = r.count, reason = why, "relay mesh: connections refused (logged at most every 10 s)");
            r.count = 0;
            r.last_log = Some(Instant::now());
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    key: Arc<Zeroizing<Vec<u8>>>,
    access: Arc<dyn RelayAccess>,
    moved: mpsc::Sender<(PeerAddr, u64)>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND));
    let pending_all = Arc::new(Semaphore::new(MAX_PENDING));
    let pending: PendingMap = Arc::default();
    let refusals = Arc::new(std::sync::Mutex::new(Refusals::default()));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (tcp, from) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "relay mesh: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A handshake slot: per source first, so one stranger cannot take them all.
        let source = source_of(from.ip());
        let slot = {
            let mut m = lock_pending(&pending);
            let n = m.get(&source).copied().unwrap_or(0);
            match pending_all.clone().try_acquire_owned() {
                Ok(global) if n < MAX_PENDING_PER_SOURCE => {
                    m.insert(source, n + 1);
                    Some(PendingSlot {
                        map: pending.clone(),
                        source,
                        _global: global,
                    })
                }
                _ => None,
            }
        };
        let Some(slot) = slot else {
            drop(tcp);
            Refusals::note(&refusals, from, "too many handshakes in progress");
            continue;
        };
        let (key, access, stop, moved, slots, refusals) = (
            key.clone(),
            access.clone(),
            stop.clone(),
            moved.clone(),
            slots.clone(),
            refusals.clone(),
        );
        tokio::spawn(async move {
            let shaken = tokio::select! {
                () = stop.cancelled() => return,
                r = handshake(tcp, &key) => r,
            };
            drop(slot);
            let tcp = match shaken {
                Ok(t) => t,
                Err(e) => {
                    Refusals::note(&refusals, from, "handshake failed");
                    tracing::debug!(%from, error = %e, "relay mesh: link handshake failed");
                    return;
                }
            };
            let Ok(_permit) = slots.try_acquire_owned() else {
                Refusals::note(&refusals, from, "too many links");
                return;
            };
            let r = tokio::select! {
                () = stop.cancelled() => Ok(()),
                r = inbound(tcp, access.as_ref(), &moved) => r,
            };
            if let Err(e) = r {
                tracing::warn!(%from, error = %e, "relay mesh: link from instance ended");
            }
        });
    }
}

/// The listener's side of the handshake (both sides prove the mesh key), within
/// [`INBOUND_HANDSHAKE_TIMEOUT`].
async fn handshake(mut tcp: TcpStream, key: &[u8]) -> std::io::Result<TcpStream> {
    tcp.set_nodelay(true)?;
    let mut nonce_s = [0u8; 32];
    OsRng.fill_bytes(&mut nonce_s);
    let shake = async {
        tcp.write_all(&nonce_s).await?;
        let mut hello = [0u8; 64];
        tcp.read_exact(&mut hello).await?;
        let mut nonce_c = [0u8; 32];
        nonce_c.copy_from_slice(&hello[..32]);
        let mut proof = [0u8; 32];
        proof.copy_from_slice(&hello[32..]);
        check_proof(key, false, &nonce_s, &nonce_c, &proof).map_err(std::io::Error::other)?;
        let answer = server_proof(key, &nonce_s, &nonce_c).map_err(std::io::Error::other)?;
        tcp.write_all(&answer).await
    };
    tokio::time::timeout(INBOUND_HANDSHAKE_TIMEOUT, shake)
        .await
        .map_err(|_| std::io::Error::other("mesh handshake timed out"))??;
    Ok(tcp)
}

/// Feeds the frames of an authenticated link from another instance to the relay core.
async fn inbound(
    mut tcp: TcpStream,
    access: &dyn RelayAccess,
    moved: &mpsc::Sender<(PeerAddr, u64)>,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
    let mut frames = Vec::new();
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut used = 0;
        loop {
            match MeshFrame::decode(&buf[used..]) {
                Ok(Some((f, n))) => {
                    used += n;
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        buf.drain(..used);
        if frames.is_empty() {
            continue;
        }
        // One lock for everything that arrived together.
        let now = Instant::now();
        let mut batch = std::mem::take(&mut frames);
        let mut notes = Vec::new();
        access.with_server(&mut |s| {
            for f in batch.drain(..) {
                match f {
                    MeshFrame::Forward {
                        dst,
                        packet:
                            RelayToClient::RecvPacket {
                                src_key,
                                src_did,
                                payload,
                            },
                    } => s.deliver_from_mesh(src_key, src_did, dst, payload, now),
                    MeshFrame::Notice { to_key, frame } => s.mesh_notice(&to_key, frame, now),
                    MeshFrame::Moved { who, auth_ms } => notes.push((who, auth_ms)),
                    MeshFrame::Forward { .. } => {}
                }
            }
        });
        frames = batch;
        for n in notes {
            if moved.try_send(n).is_err() {
                tracing::warn!("relay mesh: too many 'moved' notes queued; one dropped");
            }
        }
        // Let the destination writers drain before reading more (as the relay's readers do).
        tokio::task::yield_now().await;
    }
}
