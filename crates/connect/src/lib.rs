//! Secure sessions with peers: negotiated over DIDComm (spec/session.md §2), then carried
//! on a data path.
//!
//! **Owns**: the session negotiation as a party runs it — `propose`/`accept`/`handshake`
//! (propose and accept signed inside authcrypt), `candidates` (also trickled after the
//! session is up), `close` — through the party's [`Agent`]; the direct-path TCP listener
//! (connections that have not named a registered session are capped in all and per source,
//! evictable, and must send their hello within seconds: [`ListenerLimits`]) and the QUIC
//! endpoint on a STUN-gathered UDP socket (the NAT-traversed path; its incoming connections
//! bounded the same way), whose incoming paths a [`PathRouter`] hands to their session; TCP hole punching from the
//! listener's port (simultaneous open, its mapping learnt over STUN/TCP; spec/rendezvous.md
//! §6.2); choosing and keeping the path (spec/session.md §7.4, §7.5): the proposer checks
//! direct TCP, QUIC (host, then punched) and punched TCP, raced against the relay after a
//! short head start (spec/rendezvous.md §6.4), re-connects when the path breaks (the session resumes, §7), and
//! while on the relay keeps retrying direct paths with backoff and moves the session when
//! one works. Its relay connections run in allow-list mode: only peers it negotiates with
//! can send to it through the relay (spec/rendezvous.md §4.4), and are relay links that
//! re-dial a restarted relay with backoff and jitter (§7.3); each path or relay transition
//! is reported once ([`Connector::path_events`], printed by the CLI).
//!
//! **Does not**: decide who talks to whom (the lobby's roster, or the CLI for ad-hoc
//! sessions), carry MPyC (the proxy), or do cryptography itself (session + didcomm crates);
//! STUN, relay and QUIC mechanics are `mpc-did-rendezvous`'s.
//!
//! Modules by job: `negotiate` (the DIDComm messages above; what it holds for later is
//! held per sender by `held`), `open` (direct checks and the
//! relay, ranked by `select`, the only path selector), `keep` (re-connecting, upgrading from
//! the relay, serving relay paths), `events` (path transitions), `listen` and `quic` (the
//! incoming ends), `tcp_punch` (simultaneous open); this file keeps
//! [`Connector`], its configs and the errors ([`ConnectError`]; [`PathError`] says why no
//! path opened).
//!
//! ```text
//!  proposer                     DIDComm via mediators                  acceptor
//!  Proposer::new ── propose (signed) + candidates ─────────────▶ Acceptor::on_propose
//!  on_accept    ◀── accept (signed, Noise msg 1) + candidates ── listener registered
//!                                          (punching starts on the proposer's candidates)
//!  handshake (Noise msg 2) ─────────────────────────────────────▶ on_handshake, punching
//!  checks: TCP host │ QUIC host │ QUIC srflx │ TCP srflx ══ path hello + records ══▶ PathRouter
//!          └─ none opened within the head start: relay stream ═══ hello ═══▶ relay stream
//!  on the relay: retry the checks (1 s, 2 s, … ≤ 30 s; at once on new candidates) ─▶ switch
//! ```
//!
//! ```no_run
//! # async fn demo(agent: mpc_did_agent::Agent, peer: &str) -> Result<(), mpc_did_connect::ConnectError> {
//! use mpc_did_connect::{Binding, Connector, ConnectorConfig};
//! let connector = Connector::start(agent.clone(), ConnectorConfig::default()).await?;
//! let binding = Binding::adhoc(agent.did(), peer);
//! let est = connector.establish(peer, &binding, agent.did() < peer).await?;
//! let stream = est.handle.open_stream().await?;
//! # drop(stream); Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpc_did_agent::{Agent, AgentError, Inbound};
use mpc_did_didcomm::Message;
pub use mpc_did_driver::PathInfo;
use mpc_did_driver::{path, DriverConfig, PathRouter, SessionHandle, SessionState};
pub use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::candidate::{Candidate, CandidateKind, Transport};
use mpc_did_rendezvous::nat::NatMapping;
use mpc_did_rendezvous::net::quic::{QuicEndpoint, QuicPath};
pub use mpc_did_rendezvous::net::RelayIdentity;
use mpc_did_rendezvous::net::{Backoff, RelayDial, RelayLink, RelayStream};
use mpc_did_rendezvous::relay::PeerAddr;
use mpc_did_session::messages::{
    AcceptBody, CandidatesBody, CloseBody, HandshakeBody, ProposeBody, ACCEPT_TYPE,
    CANDIDATES_TYPE, CLOSE_TYPE, HANDSHAKE_TYPE, PROPOSE_TYPE, PROTOCOL_URI,
};
use mpc_did_session::{Acceptor, Proposer, SessionConfig};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

mod events;
mod held;
mod keep;
mod listen;
mod negotiate;
mod open;
mod quic;
mod select;
mod tcp_punch;

pub use events::PathEvent;
use keep::{drain_stale, keep_path, serve_relay_paths, RemoteCandidates};
pub use listen::{ListenerLimits, ListenerStats};
use negotiate::{dispatch, message, new_id};
use open::{host_candidates, relay_addr, DIRECT_BUDGET, RELAY_HEAD_START};
pub use quic::QuicSetup;
use select::{Decision, Selection};

/// What a secure session is bound to (spec/session.md §4): the MPC session and its roster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// The lobby's MPC session id.
    pub mpc_session_id: String,
    /// The roster hash (spec/lobby.md §3).
    pub roster_hash: [u8; 32],
}

impl Binding {
    /// For sessions outside any MPC session (`mpc-did session connect`, `pipe`): id
    /// `adhoc`, roster hash = SHA-256 of `"mpc-did/adhoc/1" || lp(smaller DID) || lp(larger
    /// DID)`, the same on both sides.
    #[must_use]
    pub fn adhoc(a: &str, b: &str) -> Self {
        let (x, y) = if a <= b { (a, b) } else { (b, a) };
        let mut h = Sha256::new();
        h.update(b"mpc-did/adhoc/1");
        for d in [x, y] {
            h.update(u32::try_from(d.len()).unwrap_or(u32::MAX).to_be_bytes());
            h.update(d.as_bytes());
        }
        Self {
            mpc_session_id: "adhoc".into(),
            roster_hash: h.finalize().into(),
        }
    }
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// Direct-path TCP listener.
    pub listen: SocketAddr,
    /// What incoming connections on it may hold before they name a session.
    pub path_listener: ListenerLimits,
    /// Host candidates to announce; empty: the listener's address (with an unspecified
    /// listener: loopback and the address of the interface that routes to our mediator).
    pub advertise: Vec<SocketAddr>,
    /// How long each negotiation step may wait for the peer.
    pub handshake_timeout: Duration,
    /// The session driver's tunables.
    pub driver: DriverConfig,
    /// Our home relay (the relay service of our mediator), announced as a relay candidate
    /// and used when no direct path works.
    pub relay: Option<RelaySetup>,
    /// Use the relay even when a direct path would work (tests, restrictive networks).
    pub force_relay: bool,
    /// The NAT-traversed path: QUIC over a UDP socket whose public address STUN tells
    /// (spec/rendezvous.md §6.1). `None`: direct TCP and relay only.
    pub quic: Option<QuicSetup>,
    /// Moving a session from the relay to a direct path when one appears (spec/session.md
    /// §7.5).
    pub upgrade: UpgradeConfig,
}

/// When the proposer retries direct paths while its session is on the relay
/// (spec/session.md §7.5).
#[derive(Debug, Clone)]
pub struct UpgradeConfig {
    /// Try at all.
    pub enabled: bool,
    /// First retry this long after the session went on the relay; then doubling ...
    pub first: Duration,
    /// ... up to this interval. New candidates from the peer restart at `first`.
    pub max: Duration,
    /// After the first direct check succeeds, how long to wait for a better one still
    /// running (also used for the first path; spec/rendezvous.md §5.4).
    pub settle: Duration,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            first: Duration::from_secs(1),
            max: Duration::from_secs(30),
            settle: Duration::from_millis(300),
        }
    }
}

/// The STUN service of our mediator: the port it publishes at `/oob` (`services.stun.port`,
/// `mpc-did-mediator --stun`) on the mediator's host. `None` if it runs no STUN service or
/// its URL does not resolve (the session then has direct and relay paths only).
#[must_use]
pub fn mediator_stun(agent: &Agent) -> Option<SocketAddr> {
    let info = &agent.client().info;
    let port = info.stun_port?;
    let url = url::Url::parse(&info.http).ok()?;
    let host = url.socket_addrs(|| Some(443)).ok()?.into_iter().next()?;
    Some(SocketAddr::new(host.ip(), port))
}

/// How to reach and authenticate to a relay.
#[derive(Debug, Clone)]
pub struct RelaySetup {
    /// `ws://host:port/relay` (or `wss://`).
    pub url: String,
    /// Our DID and the Ed25519 key that answers the relay's challenge.
    pub identity: RelayIdentity,
    /// The relay's (mediator's) DID; a relay with another identity is refused.
    pub expected_relay: Option<String>,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            path_listener: ListenerLimits::default(),
            advertise: Vec::new(),
            handshake_timeout: Duration::from_secs(60),
            driver: DriverConfig::default(),
            relay: None,
            force_relay: false,
            quic: None,
            upgrade: UpgradeConfig::default(),
        }
    }
}

/// Why a secure session could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The control plane failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The peer did not answer in time.
    #[error(
        "{peer} did not {what} within {secs} s (is it running and registered at its mediator?)"
    )]
    Timeout {
        /// The peer's DID.
        peer: String,
        /// The step that did not happen (e.g. "connect the data path").
        what: String,
        /// How long we waited, in seconds.
        secs: u64,
    },
    /// The peer declined or aborted (DIDComm `close`).
    #[error("{peer} closed the negotiation (code {code}): {reason}")]
    Closed {
        /// The peer's DID.
        peer: String,
        /// The `close` message's code.
        code: u16,
        /// The `close` message's reason.
        reason: String,
    },
    /// The handshake failed (bad key, wrong binding, forged message).
    #[error("handshake with {peer} failed: {reason}")]
    Handshake {
        /// The peer's DID.
        peer: String,
        /// What was wrong (the session layer's error).
        reason: String,
    },
    /// No candidate of the peer could be reached.
    #[error("no path to {peer}: {reason}")]
    NoPath {
        /// The peer's DID.
        peer: String,
        /// Why each attempt failed.
        reason: PathError,
    },
    /// A local socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why no path could be opened to a peer (spec/session.md §7.5), as
/// [`ConnectError::NoPath`] reports it: one variant per step that can fail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The peer announced no candidate we can use.
    #[error("the peer announced no candidate we can use")]
    NoCandidate,
    /// The peer announced no direct candidate we can use.
    #[error("the peer announced no direct candidate we can use")]
    NoDirectCandidate,
    /// Direct checks went on until the deadline without a path.
    #[error("direct paths: no answer in time")]
    DirectTimedOut,
    /// A TCP connection to a host candidate did not complete in time.
    #[error("TCP {addr}: connect timed out")]
    TcpTimedOut {
        /// The candidate's address.
        addr: SocketAddr,
    },
    /// A TCP connection to a host candidate failed.
    #[error("TCP {addr}: {source}")]
    Tcp {
        /// The candidate's address.
        addr: SocketAddr,
        /// The connect error.
        source: std::io::Error,
    },
    /// No QUIC handshake with a candidate in time.
    #[error("QUIC {addr}: no handshake within {after:?}")]
    QuicTimedOut {
        /// The candidate's address.
        addr: SocketAddr,
        /// How long we tried.
        after: Duration,
    },
    /// The QUIC connection or its stream failed.
    #[error("QUIC {addr}: {source}")]
    Quic {
        /// The candidate's address.
        addr: SocketAddr,
        /// quinn's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A candidate of a transport we cannot check.
    #[error("{addr}: no way to check a {transport:?} candidate")]
    Unsupported {
        /// The candidate's address.
        addr: SocketAddr,
        /// Its transport.
        transport: Transport,
    },
    /// The path opened but the session did not connect on it.
    #[error("{info}: no answer on the path")]
    NoAnswer {
        /// The path that opened.
        info: PathInfo,
    },
    /// The path opened but its hello could not be sent.
    #[error("{info}: {source}")]
    Hello {
        /// The path that opened.
        info: PathInfo,
        /// The write error.
        source: std::io::Error,
    },
    /// The session refused the path (it has ended).
    #[error("{0}")]
    Attach(std::io::Error),
    /// A path through the relay at `url` failed.
    #[error("relay {url}: {source}")]
    Relay {
        /// The relay's URL.
        url: String,
        /// What failed on the way through it.
        source: Box<PathError>,
    },
    /// The relay stream was attached but the peer did not answer through it.
    #[error("no answer through the relay (state {state:?})")]
    RelayNoAnswer {
        /// The session's state when we gave up.
        state: SessionState,
    },
    /// Relay paths need a relay identity ([`ConnectorConfig::relay`]).
    #[error("no relay identity configured (ConnectorConfig::relay)")]
    NoRelayIdentity,
    /// The relay connection or stream failed.
    #[error("{0}")]
    RelayIo(std::io::Error),
    /// Connecting to the relay failed.
    #[error("{0}")]
    RelayConnect(mpc_did_rendezvous::net::NetError),
    /// The relay connection is lost and did not come back in time (it is re-dialled in the
    /// background with backoff).
    #[error("relay {url} is unreachable (re-connecting)")]
    RelayDown {
        /// The relay's URL.
        url: String,
    },
    /// The peer's DID document could not be resolved (to name it to the relay).
    #[error("{0}")]
    Resolve(mpc_did_resolver::ResolveError),
    /// The peer's DID document has no key the relay can name it by.
    #[error("{peer} has no Ed25519 authentication key")]
    NoRelayKey {
        /// The peer's DID.
        peer: String,
    },
    /// Our own relay ([`ConnectorConfig::relay`]) could not be reached at start.
    #[error("cannot connect to our relay: {0}")]
    OwnRelay(mpc_did_rendezvous::net::NetError),
    /// Only the proposer opens paths ([`Connector::reconnect`] on the acceptor).
    #[error("only the proposer opens paths")]
    NotProposer,
    /// Several attempts failed, in the order they were made.
    #[error("{}", join(.0))]
    All(Vec<PathError>),
}

fn join(errors: &[PathError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A secure session that is up.
#[derive(Debug, Clone)]
pub struct Established {
    /// The running session: streams, path, state.
    pub handle: SessionHandle,
    /// The peer's DID.
    pub peer: String,
    /// The secure session id (hex).
    pub session_id: String,
    /// The path when the session came up (it may change: [`SessionHandle::path`]).
    pub path: PathInfo,
    /// From the first negotiation message to a connected path.
    pub setup: Duration,
    /// The peer's candidates (the proposer uses them to reconnect).
    pub remote: Vec<Candidate>,
    /// Whether we proposed (and so own the path).
    pub proposer: bool,
}

/// One established session, for listings.
#[derive(Debug, Clone)]
pub struct SessionSummary {
    /// The peer's DID.
    pub peer: String,
    /// The secure session id (hex).
    pub session_id: String,
    /// The current path (or the last one, when it is broken).
    pub path: PathInfo,
    /// Paths attached so far (more than 1: reconnections or a relay → direct upgrade).
    pub paths_attached: u64,
    /// The session's state now.
    pub state: SessionState,
    /// From the first negotiation message to a connected path.
    pub setup: Duration,
}

/// Counters of the negotiation messages a connector received (spec/session.md §2).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NegotiationStats {
    /// Negotiation messages received (of any sender).
    pub received: u64,
    /// Dropped at once: no authenticated sender, or a `propose` not signed by its sender.
    pub unauthenticated: u64,
    /// Held messages dropped to make room (the sender's own oldest, or the largest
    /// sender's when all were full), and new ones refused because all were full.
    pub evicted: u64,
}

struct Inner {
    agent: Agent,
    router: PathRouter,
    candidates: Vec<SocketAddr>,
    config: ConnectorConfig,
    /// Negotiation messages by secure-session id.
    threads: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
    /// Proposals not yet taken by [`Connector::accept`], per sender (`held`).
    proposals: Mutex<held::HeldBySender<Inbound>>,
    /// Other negotiation messages for sessions without a thread yet, per sender (lock
    /// after `threads`).
    orphans: Mutex<held::HeldBySender<Inbound>>,
    /// What [`negotiate::dispatch`] did ([`Connector::negotiation_stats`]).
    negotiation: Mutex<NegotiationStats>,
    new_proposal: Notify,
    sessions: Mutex<Vec<Established>>,
    /// Our home relay, if configured: a link that re-dials after a loss (spec/rendezvous.md
    /// §7.3).
    relay: Option<(RelaySetup, SocketAddr, Arc<RelayLink>)>,
    /// Links to other parties' relays, by URL (re-dialling too).
    foreign_relays: tokio::sync::Mutex<HashMap<String, Arc<RelayLink>>>,
    /// Path and relay transitions ([`Connector::path_events`]).
    events: tokio::sync::broadcast::Sender<PathEvent>,
    /// The NAT-traversed path's endpoint, if configured.
    quic: Option<quic::QuicState>,
    /// The direct-path TCP listener's address.
    listen: SocketAddr,
    /// TCP hole punching (spec/rendezvous.md §6.2): the listener's port, which punching
    /// sockets share, and our TCP server-reflexive candidate (its public mapping). Both or
    /// nothing: without a mapping to announce the peer cannot punch towards us.
    tcp_punch: Option<(u16, Candidate)>,
    /// Its limits' state.
    path_listener: listen::PathListener,
    /// The QUIC endpoint's incoming connections, bounded as the listener's.
    quic_listener: listen::PathListener,
    /// Each session's peer candidates, growing as `candidates` messages arrive.
    remotes: Mutex<HashMap<String, Arc<RemoteCandidates>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Ends the QUIC accept loop and every QUIC path of this connector.
        if let Some(q) = &self.quic {
            q.endpoint.close();
        }
    }
}

/// A party's secure-session endpoint; cheap to clone.
#[derive(Clone)]
pub struct Connector {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("did", &self.inner.agent.did())
            .field("candidates", &self.inner.candidates)
            .finish()
    }
}

impl Connector {
    /// Bind the direct-path listener and start taking negotiation messages.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub async fn start(agent: Agent, config: ConnectorConfig) -> Result<Self, ConnectError> {
        let punch = config
            .quic
            .as_ref()
            .is_some_and(|q| q.tcp_punch && q.stun.is_some());
        let listener = tcp_punch::listener(config.listen, punch)?;
        let local = listener.local_addr()?;
        let candidates = if config.advertise.is_empty() {
            host_candidates(local, &agent)
        } else {
            config.advertise.clone()
        };
        let router = PathRouter::new();
        let path_listener = listen::PathListener::default();
        let quic_listener = listen::PathListener::default();
        tokio::spawn(path_listener.clone().serve(
            listener,
            router.clone(),
            config.path_listener.clone(),
        ));
        // Both mappings are learnt at once (one STUN round trip in the set-up time, not two).
        let tcp_gather = async {
            match (&config.quic, punch) {
                (Some(setup), true) => {
                    let stun = setup.stun?;
                    let c =
                        tcp_punch::gather_tcp(stun, local.port(), &candidates, setup.stun_schedule)
                            .await?;
                    Some((local.port(), c))
                }
                _ => None,
            }
        };
        let quic_start = async {
            match &config.quic {
                Some(setup) => quic::start(setup, |udp| host_candidates(udp, &agent))
                    .await
                    .map(Some),
                None => Ok(None),
            }
        };
        let (quic_started, tcp_punch) = tokio::join!(quic_start, tcp_gather);
        if let Some((_, c)) = &tcp_punch {
            tracing::info!(
                "TCP punching from port {} (mapped {})",
                local.port(),
                c.addr
            );
        }
        let quic = match quic_started? {
            Some(q) => {
                tracing::info!(
                    "QUIC path endpoint on {} (NAT mapping {:?}); candidates {:?}",
                    q.endpoint.local_addr(),
                    q.nat_mapping,
                    q.candidates.iter().map(|c| c.addr).collect::<Vec<_>>()
                );
                tokio::spawn(quic::serve(
                    q.endpoint.clone(),
                    router.clone(),
                    quic_listener.clone(),
                    config.path_listener.clone(),
                ));
                Some(q)
            }
            None => None,
        };
        let relay = match &config.relay {
            Some(setup) => {
                // Only peers we negotiate with may send to us through it (spec/rendezvous.md
                // §4.4): a stranger who knows our DID cannot flood our relay link. The link
                // re-dials with backoff when the relay restarts (§7.3).
                let dial = RelayDial {
                    url: setup.url.clone(),
                    identity: setup.identity.clone(),
                    expected_relay: setup.expected_relay.clone(),
                    extra_roots: Vec::new(),
                };
                let link = RelayLink::connect(dial, true, Backoff::default())
                    .await
                    .map_err(|e| ConnectError::NoPath {
                        peer: setup.url.clone(),
                        reason: PathError::OwnRelay(e),
                    })?;
                let addr = relay_addr(&setup.url).unwrap_or(local);
                Some((setup.clone(), addr, Arc::new(link)))
            }
            None => None,
        };
        let rx = agent.subscribe(&format!("{PROTOCOL_URI}/"));
        let (events, _) = tokio::sync::broadcast::channel(64);
        if let Some((_, _, link)) = &relay {
            tokio::spawn(events::forward_relay_events(
                link.subscribe(),
                events.clone(),
            ));
        }
        let inner = Arc::new(Inner {
            agent,
            router,
            candidates,
            config,
            threads: Mutex::new(HashMap::new()),
            proposals: Mutex::new(held::HeldBySender::new(
                negotiate::MAX_PROPOSALS_PER_SENDER,
                negotiate::MAX_PROPOSALS,
            )),
            orphans: Mutex::new(held::HeldBySender::new(
                negotiate::MAX_ORPHANS_PER_SENDER,
                negotiate::MAX_ORPHANS,
            )),
            negotiation: Mutex::new(NegotiationStats::default()),
            new_proposal: Notify::new(),
            sessions: Mutex::new(Vec::new()),
            relay,
            foreign_relays: tokio::sync::Mutex::new(HashMap::new()),
            events,
            quic,
            listen: local,
            tcp_punch,
            path_listener,
            quic_listener,
            remotes: Mutex::new(HashMap::new()),
        });
        if let Some(q) = &inner.quic {
            if let Some(stun) = q.setup.stun {
                tokio::spawn(quic::keep_mapping(
                    Arc::downgrade(&inner),
                    q.endpoint.clone(),
                    stun,
                    q.setup.mapping_keepalive,
                ));
            }
        }
        tokio::spawn(dispatch(Arc::downgrade(&inner), rx));
        Ok(Self { inner })
    }

    /// Transitions of this connector's sessions and relays, each sent once: a session's
    /// path went down or came back, a relay connection was lost or is back
    /// (spec/session.md §7.4). The CLI prints them; nothing else depends on them.
    #[must_use]
    pub fn path_events(&self) -> tokio::sync::broadcast::Receiver<PathEvent> {
        self.inner.events.subscribe()
    }

    /// Counters of the direct-path listener (refused, evicted and timed-out connections).
    #[must_use]
    pub fn listener_stats(&self) -> ListenerStats {
        self.inner.path_listener.stats()
    }

    /// Counters of the QUIC path endpoint's incoming connections, bounded with the same
    /// [`ListenerLimits`] as the direct-path listener (spec/rendezvous.md §6.1).
    #[must_use]
    pub fn quic_listener_stats(&self) -> ListenerStats {
        self.inner.quic_listener.stats()
    }

    /// Counters of the negotiation messages received (held, dropped, evicted).
    #[must_use]
    pub fn negotiation_stats(&self) -> NegotiationStats {
        self.inner
            .negotiation
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The control plane.
    #[must_use]
    pub fn agent(&self) -> &Agent {
        &self.inner.agent
    }

    /// The host candidates this connector announces.
    #[must_use]
    pub fn candidates(&self) -> &[SocketAddr] {
        &self.inner.candidates
    }

    /// The direct-path TCP listener's address (what `candidates` announce unless
    /// `advertise` says otherwise).
    #[must_use]
    pub fn listen_addr(&self) -> SocketAddr {
        self.inner.listen
    }

    /// The QUIC candidates this connector announces (host and server-reflexive) and the
    /// NAT mapping STUN found; empty without [`ConnectorConfig::quic`].
    #[must_use]
    pub fn quic_candidates(&self) -> (Vec<Candidate>, NatMapping) {
        self.inner
            .quic
            .as_ref()
            .map_or((Vec::new(), NatMapping::Unknown), |q| {
                (q.candidates.clone(), q.nat_mapping)
            })
    }

    /// Our TCP server-reflexive candidate: the public mapping of the listener's port, to
    /// which peers punch (TCP simultaneous open, spec/rendezvous.md §6.2). `None` without
    /// a STUN server, when STUN over TCP failed, or without a NAT.
    #[must_use]
    pub fn tcp_punch_candidate(&self) -> Option<Candidate> {
        self.inner.tcp_punch.as_ref().map(|(_, c)| c.clone())
    }

    /// Tell the peer of `est` about more candidates of ours (a trickled `candidates`
    /// message, spec/session.md §2), e.g. after a network change. A proposer whose session
    /// is on the relay tries them at once (§7.5).
    ///
    /// # Errors
    /// The control plane failed.
    pub async fn announce_candidates(
        &self,
        est: &Established,
        candidates: Vec<Candidate>,
    ) -> Result<(), ConnectError> {
        let cands = candidates
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok())
            .collect();
        let body = CandidatesBody {
            session_id: est.session_id.clone(),
            candidates: cands,
            end_of_candidates: true,
        };
        let m = message(&new_id(), CANDIDATES_TYPE, &body, Some(&est.session_id))?;
        self.inner.agent.send(&est.peer, m).await?;
        Ok(())
    }

    /// Every session established so far, with its current state.
    #[must_use]
    pub fn sessions(&self) -> Vec<SessionSummary> {
        let list = self
            .inner
            .sessions
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        list.into_iter()
            .map(|e| {
                let p = e.handle.path();
                SessionSummary {
                    state: e.handle.state(),
                    peer: e.peer,
                    session_id: e.session_id,
                    path: p.current.or(p.last).unwrap_or(e.path),
                    paths_attached: p.attached,
                    setup: e.setup,
                }
            })
            .collect()
    }

    /// Propose if `proposer`, else wait for the peer's proposal and accept it.
    ///
    /// # Errors
    /// As [`Connector::propose`] / [`Connector::accept`].
    pub async fn establish(
        &self,
        peer: &str,
        binding: &Binding,
        proposer: bool,
    ) -> Result<Established, ConnectError> {
        if proposer {
            self.propose(peer, binding).await
        } else {
            self.accept(peer, binding).await
        }
    }
}
