//! Secure sessions with peers: negotiated over DIDComm (spec/session.md §2), then carried
//! on a data path.
//!
//! **Owns**: the session negotiation as a party runs it — `propose`/`accept`/`handshake`
//! (propose and accept signed inside authcrypt), `candidates` (also trickled after the
//! session is up), `close` — through the party's [`Agent`]; the direct-path TCP listener
//! (connections that have not named a session are capped in all and per source and must
//! send their hello within seconds: [`ListenerLimits`]) and the QUIC endpoint on a STUN-gathered UDP socket (the NAT-traversed path), whose
//! incoming paths a [`PathRouter`] hands to their session; choosing and keeping the path
//! (spec/session.md §7.4, §7.5): the proposer checks direct TCP, QUIC (host, then punched)
//! and finally the relay, re-connects when the path breaks (the session resumes, §7), and
//! while on the relay keeps retrying direct paths with backoff and moves the session when
//! one works. Its relay connections run in allow-list mode: only peers it negotiates with
//! can send to it through the relay (spec/rendezvous.md §4.4).
//!
//! **Does not**: decide who talks to whom (the lobby's roster, or the CLI for ad-hoc
//! sessions), carry MPyC (the proxy), or do cryptography itself (session + didcomm crates);
//! STUN, relay and QUIC mechanics are `mpc-did-rendezvous`'s.
//!
//! ```text
//!  proposer                     DIDComm via mediators                  acceptor
//!  Proposer::new ── propose (signed) + candidates ─────────────▶ Acceptor::on_propose
//!  on_accept    ◀── accept (signed, Noise msg 1) + candidates ── listener registered
//!  handshake (Noise msg 2) ─────────────────────────────────────▶ on_handshake, punching
//!  checks: TCP host │ QUIC host │ QUIC srflx (punched) ══ path hello + records ══▶ PathRouter
//!          └─ none works: relay stream ═══ hello + records ═══▶ relay stream ─▶ session
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
use mpc_did_rendezvous::net::{RelayConnection, RelayStream};
use mpc_did_rendezvous::relay::PeerAddr;
use mpc_did_session::messages::{
    AcceptBody, CandidatesBody, CloseBody, HandshakeBody, ProposeBody, ACCEPT_TYPE,
    CANDIDATES_TYPE, CLOSE_TYPE, HANDSHAKE_TYPE, PROPOSE_TYPE, PROTOCOL_URI,
};
use mpc_did_session::{Acceptor, Proposer, SessionConfig};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

mod listen;
mod quic;
mod select;

pub use listen::{ListenerLimits, ListenerStats};
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
            settle: Duration::from_millis(1500),
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
        peer: String,
        what: String,
        secs: u64,
    },
    /// The peer declined or aborted (DIDComm `close`).
    #[error("{peer} closed the negotiation (code {code}): {reason}")]
    Closed {
        peer: String,
        code: u16,
        reason: String,
    },
    /// The handshake failed (bad key, wrong binding, forged message).
    #[error("handshake with {peer} failed: {reason}")]
    Handshake { peer: String, reason: String },
    /// No candidate of the peer could be reached.
    #[error("no path to {peer}: {reason}")]
    NoPath { peer: String, reason: String },
    /// A local socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A secure session that is up.
#[derive(Debug, Clone)]
pub struct Established {
    pub handle: SessionHandle,
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
    pub peer: String,
    pub session_id: String,
    /// The current path (or the last one, when it is broken).
    pub path: PathInfo,
    /// Paths attached so far (more than 1: reconnections or a relay → direct upgrade).
    pub paths_attached: u64,
    pub state: SessionState,
    pub setup: Duration,
}

struct Inner {
    agent: Agent,
    router: PathRouter,
    candidates: Vec<SocketAddr>,
    config: ConnectorConfig,
    /// Negotiation messages by secure-session id.
    threads: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
    /// Proposals not yet taken by [`Connector::accept`].
    proposals: Mutex<Vec<Inbound>>,
    /// Other negotiation messages for sessions without a thread yet (lock after `threads`).
    orphans: Mutex<Vec<Inbound>>,
    new_proposal: Notify,
    sessions: Mutex<Vec<Established>>,
    /// Our home relay connection, if configured.
    relay: Option<(RelaySetup, SocketAddr, Arc<RelayConnection>)>,
    /// Connections to other parties' relays, by URL.
    foreign_relays: tokio::sync::Mutex<HashMap<String, Arc<RelayConnection>>>,
    /// The NAT-traversed path's endpoint, if configured.
    quic: Option<quic::QuicState>,
    /// The direct-path TCP listener's address.
    listen: SocketAddr,
    /// Its limits' state.
    path_listener: listen::PathListener,
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

/// A session's view of the peer's candidates (spec/session.md §2: each `candidates`
/// message adds to the previous ones).
#[derive(Debug, Default)]
pub(crate) struct RemoteCandidates {
    list: Mutex<Vec<Candidate>>,
    /// Signalled (one stored permit) when candidates were added.
    added: Notify,
}

impl RemoteCandidates {
    fn new(list: Vec<Candidate>) -> Arc<Self> {
        let r = Arc::new(Self::default());
        // The first list is not news: only later additions wake the upgrade.
        r.insert(list);
        r
    }

    /// Add candidates not known yet and wake the upgrade if any was new.
    fn add(&self, more: Vec<Candidate>) -> bool {
        let added = self.insert(more);
        if added {
            self.added.notify_one();
        }
        added
    }

    /// Add candidates not known yet (at most 64 in all, spec/session.md §2); returns
    /// whether any was new.
    fn insert(&self, more: Vec<Candidate>) -> bool {
        let Ok(mut list) = self.list.lock() else {
            return false;
        };
        let mut added = false;
        for c in more {
            if list.len() < 64
                && !list
                    .iter()
                    .any(|o| o.addr == c.addr && o.kind == c.kind && o.transport == c.transport)
            {
                list.push(c);
                added = true;
            }
        }
        list.sort_by_key(|c| std::cmp::Reverse(c.priority));
        added
    }

    pub(crate) fn snapshot(&self) -> Vec<Candidate> {
        self.list.lock().map(|l| l.clone()).unwrap_or_default()
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
        let listener = TcpListener::bind(config.listen).await?;
        let local = listener.local_addr()?;
        let candidates = if config.advertise.is_empty() {
            host_candidates(local, &agent)
        } else {
            config.advertise.clone()
        };
        let router = PathRouter::new();
        let path_listener = listen::PathListener::default();
        tokio::spawn(path_listener.clone().serve(
            listener,
            router.clone(),
            config.path_listener.clone(),
        ));
        let quic = match &config.quic {
            Some(setup) => {
                let q = quic::start(setup, |udp| host_candidates(udp, &agent)).await?;
                tracing::info!(
                    "QUIC path endpoint on {} (NAT mapping {:?}); candidates {:?}",
                    q.endpoint.local_addr(),
                    q.nat_mapping,
                    q.candidates.iter().map(|c| c.addr).collect::<Vec<_>>()
                );
                tokio::spawn(quic::serve(q.endpoint.clone(), router.clone()));
                Some(q)
            }
            None => None,
        };
        let relay = match &config.relay {
            Some(setup) => {
                let conn = RelayConnection::connect_ws(
                    &setup.url,
                    setup.identity.clone(),
                    setup.expected_relay.clone(),
                )
                .await
                .map_err(|e| ConnectError::NoPath {
                    peer: setup.url.clone(),
                    reason: format!("cannot connect to our relay: {e}"),
                })?;
                // Only peers we negotiate with may send to us through it (spec/rendezvous.md
                // §4.4): a stranger who knows our DID cannot flood our relay link.
                conn.restrict_senders();
                let addr = relay_addr(&setup.url).unwrap_or(local);
                Some((setup.clone(), addr, Arc::new(conn)))
            }
            None => None,
        };
        let rx = agent.subscribe(&format!("{PROTOCOL_URI}/"));
        let inner = Arc::new(Inner {
            agent,
            router,
            candidates,
            config,
            threads: Mutex::new(HashMap::new()),
            proposals: Mutex::new(Vec::new()),
            orphans: Mutex::new(Vec::new()),
            new_proposal: Notify::new(),
            sessions: Mutex::new(Vec::new()),
            relay,
            foreign_relays: tokio::sync::Mutex::new(HashMap::new()),
            quic,
            listen: local,
            path_listener,
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

    /// Counters of the direct-path listener (refused, evicted and timed-out connections).
    #[must_use]
    pub fn listener_stats(&self) -> ListenerStats {
        self.inner.path_listener.stats()
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

    /// Propose a secure session to `peer` and connect its path (we dial).
    ///
    /// # Errors
    /// The peer declines, does not answer in time, the handshake fails, or none of its
    /// candidates can be reached.
    pub async fn propose(
        &self,
        peer: &str,
        binding: &Binding,
    ) -> Result<Established, ConnectError> {
        let start = Instant::now();
        let me = self.inner.agent.did().to_owned();
        let mut sid = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut sid);
        let sid_hex = hex::encode(sid);
        let (proposer, body) =
            Proposer::new(sid, &binding.mpc_session_id, binding.roster_hash, &me, peer);
        let mut rx = self.open_thread(&sid_hex);
        let result = async {
            let propose = message(&sid_hex, PROPOSE_TYPE, &body, None)?;
            self.inner.agent.send_signed(peer, propose).await?;
            self.send_candidates(peer, &sid_hex).await?;

            let mut remote = Vec::new();
            let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
            let accept: AcceptBody = loop {
                let m = self
                    .next(&mut rx, deadline, peer, "accept the proposal")
                    .await?;
                match kind(&m) {
                    Some("accept") if signed_by(&m, peer) => break body_of(&m, peer)?,
                    Some("candidates") => remote.extend(candidates_of(&m)),
                    Some("close") => return Err(closed(&m, peer)),
                    _ => tracing::debug!("ignored {} from {:?}", m.message.type_, m.sender),
                }
            };
            let (session, hs) = proposer
                .on_accept(&accept, SessionConfig::default(), 0)
                .map_err(|e| self.handshake_failed(peer, &sid_hex, &e.to_string()))?;
            let handshake = message(&new_id(), HANDSHAKE_TYPE, &hs, Some(&sid_hex))?;
            self.inner.agent.send(peer, handshake).await?;
            let handle = SessionHandle::spawn(session, self.inner.config.driver.clone());
            // The acceptor's candidates may still be on their way.
            while remote.is_empty() {
                let m = self
                    .next(&mut rx, deadline, peer, "send its candidates")
                    .await?;
                if kind(&m) == Some("candidates") {
                    remote.extend(candidates_of(&m));
                }
            }
            remote.sort_by_key(|c: &Candidate| std::cmp::Reverse(c.priority));
            let shared = RemoteCandidates::new(remote.clone());
            let (_, closed_rx) = mpsc::channel(1);
            let thread = std::mem::replace(&mut rx, closed_rx);
            self.follow(&sid_hex, peer, &handle, &shared, thread);
            let path = self
                .connect_path(
                    &handle,
                    peer,
                    &remote,
                    self.inner.config.force_relay,
                    deadline,
                )
                .await?;
            tokio::spawn(keep_path(
                self.clone(),
                handle.clone(),
                peer.to_owned(),
                shared,
            ));
            Ok(Established {
                handle,
                peer: peer.to_owned(),
                session_id: sid_hex.clone(),
                path,
                setup: start.elapsed(),
                remote,
                proposer: true,
            })
        }
        .await;
        if result.is_err() {
            self.forget(&sid_hex);
        }
        self.record(result)
    }

    /// Wait for `peer`'s proposal for `binding`, accept it, and wait until the peer has
    /// connected the path.
    ///
    /// # Errors
    /// No proposal in time, a proposal for another binding (declined with `close` code 1),
    /// or a failed handshake.
    pub async fn accept(&self, peer: &str, binding: &Binding) -> Result<Established, ConnectError> {
        let me = self.inner.agent.did().to_owned();
        let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
        let proposal = self.wait_proposal(peer, binding, deadline).await?;
        let start = Instant::now();
        let body: ProposeBody = body_of(&proposal, peer)?;
        let sid_hex = body.session_id.clone();
        let mut rx = self.open_thread(&sid_hex);
        let result = async {
            let (acceptor, accept) = match Acceptor::on_propose(
                &body,
                &binding.mpc_session_id,
                binding.roster_hash,
                &me,
                peer,
            ) {
                Ok(a) => a,
                Err(e) => {
                    self.send_close(peer, &sid_hex, 1, &e.to_string()).await;
                    return Err(ConnectError::Handshake {
                        peer: peer.to_owned(),
                        reason: e.to_string(),
                    });
                }
            };
            // The proposer may reach us through our relay as soon as it has our accept: let
            // it through (our relay connection accepts only peers we named).
            if let Some((_, _, conn)) = &self.inner.relay {
                match self.relay_peer(peer).await {
                    Ok(addr) => conn.allow_peer(&addr),
                    Err(e) => tracing::debug!("cannot name {peer} to our relay: {e}"),
                }
            }
            let accept = message(&new_id(), ACCEPT_TYPE, &accept, Some(&proposal.message.id))?;
            self.inner.agent.send_signed(peer, accept).await?;
            self.send_candidates(peer, &sid_hex).await?;
            let mut remote = Vec::new();
            let hs: HandshakeBody = loop {
                let m = self
                    .next(&mut rx, deadline, peer, "complete the handshake")
                    .await?;
                match kind(&m) {
                    Some("handshake") => break body_of(&m, peer)?,
                    Some("candidates") => remote.extend(candidates_of(&m)),
                    Some("close") => return Err(closed(&m, peer)),
                    _ => {}
                }
            };
            let session = acceptor
                .on_handshake(&hs, SessionConfig::default(), 0)
                .map_err(|e| ConnectError::Handshake {
                    peer: peer.to_owned(),
                    reason: e.to_string(),
                })?;
            let handle = SessionHandle::spawn(session, self.inner.config.driver.clone());
            self.inner.router.register(&handle);
            let shared = RemoteCandidates::new(remote.clone());
            let (_, closed_rx) = mpsc::channel(1);
            let thread = std::mem::replace(&mut rx, closed_rx);
            self.follow(&sid_hex, peer, &handle, &shared, thread);
            if let Some(q) = &self.inner.quic {
                tokio::spawn(quic::punch_while_relayed(
                    q.endpoint.clone(),
                    handle.clone(),
                    Arc::clone(&shared),
                    q.setup.punch_interval,
                ));
            }
            if let Some((setup, _, conn)) = &self.inner.relay {
                match self.relay_peer(peer).await {
                    Ok(addr) => {
                        tokio::spawn(serve_relay_paths(
                            Arc::clone(conn),
                            handle.clone(),
                            addr,
                            setup.url.clone(),
                        ));
                    }
                    Err(e) => tracing::warn!("no relay path possible with {peer}: {e}"),
                }
            }
            let mut state = handle.watch_state();
            let connected = tokio::time::timeout_at(
                deadline,
                state.wait_for(|s| *s == SessionState::Connected),
            )
            .await;
            if !matches!(connected, Ok(Ok(_))) {
                return Err(ConnectError::Timeout {
                    peer: peer.to_owned(),
                    what: "connect the data path".into(),
                    secs: self.inner.config.handshake_timeout.as_secs(),
                });
            }
            let path = handle
                .path()
                .current
                .unwrap_or(PathInfo::Direct { remote: None });
            Ok(Established {
                handle,
                peer: peer.to_owned(),
                session_id: sid_hex.clone(),
                path,
                setup: start.elapsed(),
                remote,
                proposer: false,
            })
        }
        .await;
        if result.is_err() {
            self.forget(&sid_hex);
        }
        self.record(result)
    }

    /// Switch an established session to a new path now (the proposer's side; the
    /// session resumes without losing a byte). `relay` picks the relay even when a direct
    /// candidate works.
    ///
    /// # Errors
    /// [`ConnectError::NoPath`] when nothing can be reached, or when we are not the side
    /// that owns the path.
    pub async fn reconnect(
        &self,
        est: &Established,
        relay: bool,
    ) -> Result<PathInfo, ConnectError> {
        if !est.proposer {
            return Err(ConnectError::NoPath {
                peer: est.peer.clone(),
                reason: "only the proposer opens paths".into(),
            });
        }
        let deadline = tokio::time::Instant::now() + self.inner.config.handshake_timeout;
        let remote = self
            .remote_of(&est.session_id)
            .map_or_else(|| est.remote.clone(), |r| r.snapshot());
        self.connect_path(&est.handle, &est.peer, &remote, relay, deadline)
            .await
    }

    fn remote_of(&self, sid: &str) -> Option<Arc<RemoteCandidates>> {
        self.inner.remotes.lock().ok()?.get(sid).cloned()
    }

    /// After establishment, keep the negotiation thread open for the session's life:
    /// trickled `candidates` from `peer` add to `shared` (and wake the upgrade, §7.5).
    fn follow(
        &self,
        sid: &str,
        peer: &str,
        handle: &SessionHandle,
        shared: &Arc<RemoteCandidates>,
        mut rx: mpsc::Receiver<Inbound>,
    ) {
        if let Ok(mut r) = self.inner.remotes.lock() {
            r.insert(sid.to_owned(), Arc::clone(shared));
        }
        let (this, sid, peer, handle, shared) = (
            Arc::downgrade(&self.inner),
            sid.to_owned(),
            peer.to_owned(),
            handle.clone(),
            Arc::clone(shared),
        );
        tokio::spawn(async move {
            let ended = handle.ended();
            tokio::pin!(ended);
            loop {
                tokio::select! {
                    m = rx.recv() => match m {
                        Some(m) if m.sender.as_deref() == Some(peer.as_str())
                            && m.meta.authenticated
                            && kind(&m) == Some("candidates") =>
                        {
                            if shared.add(candidates_of(&m)) {
                                tracing::info!("secure session {sid}: {peer} announced new candidates");
                            }
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = &mut ended => break,
                }
            }
            if let Some(inner) = this.upgrade() {
                if let Ok(mut t) = inner.threads.lock() {
                    t.remove(&sid);
                }
                if let Ok(mut r) = inner.remotes.lock() {
                    r.remove(&sid);
                }
            }
        });
    }

    fn forget(&self, sid: &str) {
        self.close_thread(sid);
        if let Ok(mut r) = self.inner.remotes.lock() {
            r.remove(sid);
        }
    }

    /// Connect `handle` to the peer: direct TCP candidates first, then the peer's relay
    /// candidates; with `relay_only`, the relay or nothing.
    async fn connect_path(
        &self,
        handle: &SessionHandle,
        peer: &str,
        remote: &[Candidate],
        relay_only: bool,
        deadline: tokio::time::Instant,
    ) -> Result<PathInfo, ConnectError> {
        let has_direct = remote.iter().any(|c| select::rank(c).is_some());
        let relays: Vec<String> = remote.iter().filter_map(|c| c.relay_url.clone()).collect();
        let mut why = Vec::new();
        if !relay_only && has_direct {
            // Leave time for the relay when direct candidates do not answer: one full round
            // of checks (3 s) and an attach.
            let direct_deadline = if relays.is_empty() {
                deadline
            } else {
                deadline.min(tokio::time::Instant::now() + DIRECT_BUDGET)
            };
            match self.direct_path(handle, remote, direct_deadline).await {
                Ok(p) => return Ok(p),
                Err(e) => {
                    tracing::info!("no direct path to {peer} ({e}); trying the relay");
                    why.push(e);
                }
            }
        }
        for url in &relays {
            // A relay stream fails as a whole when the relay reports an overload on its
            // connection; a fresh stream a moment later usually works.
            for attempt in 0..3u64 {
                match self.relay_path(handle, peer, url).await {
                    Ok(()) => return Ok(PathInfo::Relayed { relay: url.clone() }),
                    Err(e) => {
                        why.push(format!("relay {url}: {e}"));
                        if tokio::time::Instant::now() >= deadline {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                    }
                }
            }
        }
        if why.is_empty() {
            why.push("the peer announced no candidate we can use".into());
        }
        Err(ConnectError::NoPath {
            peer: peer.to_owned(),
            reason: why.join("; "),
        })
    }

    /// A direct path (spec/session.md §7.5): TCP to the peer's host candidates and QUIC to
    /// its host and server-reflexive QUIC candidates, checked all at once and in rounds until
    /// `deadline`; the best that works (TCP host, QUIC host, QUIC punched) carries the
    /// session.
    async fn direct_path(
        &self,
        handle: &SessionHandle,
        remote: &[Candidate],
        deadline: tokio::time::Instant,
    ) -> Result<PathInfo, String> {
        let quic = self.inner.quic.as_ref().map(|q| q.endpoint.clone());
        let own = quic.as_ref().map(QuicEndpoint::local_addr);
        let targets: Vec<(u8, Candidate)> = remote
            .iter()
            .filter_map(|c| {
                let r = select::rank(c)?;
                if c.transport == Transport::Quic
                    && !own.is_some_and(|o| quic::is_quic_target(c, o))
                {
                    return None;
                }
                Some((r, c.clone()))
            })
            .take(MAX_DIRECT_CHECKS)
            .collect();
        if targets.is_empty() {
            return Err("the peer announced no direct candidate we can use".into());
        }
        let settle = self.inner.config.upgrade.settle;
        let rounds = async {
            let mut pause = Duration::from_millis(20);
            loop {
                let last = match one_round(handle, &targets, quic.as_ref(), settle).await {
                    Ok(p) => return Ok(p),
                    // No candidate answered at all: another round now would fail the same
                    // way (the relay, or the upgrade's backoff, takes over).
                    Err((e, false)) => return Err(e),
                    // A path opened but the session did not connect on it (e.g. the peer
                    // had not processed the handshake yet): try again shortly.
                    Err((e, true)) => e,
                };
                if tokio::time::Instant::now() + pause > deadline {
                    return Err(last);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        };
        tokio::time::timeout_at(deadline, rounds)
            .await
            .unwrap_or_else(|_| Err("direct paths: no answer in time".into()))
    }

    /// Open a path to `peer` through the relay at `url` (ours, or the peer's).
    async fn relay_path(
        &self,
        handle: &SessionHandle,
        peer: &str,
        url: &str,
    ) -> Result<(), String> {
        let conn = self.relay_connection(url).await?;
        let mut stream = conn
            .open_stream(self.relay_peer(peer).await?)
            .map_err(|e| e.to_string())?;
        // The peer answers only after our hello, so whatever this stream already holds are
        // records of an earlier relay path (kept by the relay client while no stream was
        // open); they would fail to authenticate here and cost the new path.
        drain_stale(&mut stream).await;
        path::send_hello(&mut stream, &handle.path_id())
            .await
            .map_err(|e| e.to_string())?;
        let info = PathInfo::Relayed {
            relay: url.to_owned(),
        };
        handle
            .attach_path_as(Box::new(stream), Some(info))
            .await
            .map_err(|e| e.to_string())?;
        let mut st = handle.watch_state();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            st.wait_for(|s| *s != SessionState::Connecting),
        )
        .await;
        if handle.state() == SessionState::Connected {
            Ok(())
        } else {
            Err(format!(
                "no answer through the relay (state {:?})",
                handle.state()
            ))
        }
    }

    /// How the relay names `peer`: the Ed25519 key it authenticates with (the first
    /// authentication key of its DID document), which is also how the relay labels the
    /// packets it sends.
    async fn relay_peer(&self, peer: &str) -> Result<PeerAddr, String> {
        use mpc_did_resolver::DidResolver as _;
        let doc = self
            .inner
            .agent
            .client()
            .resolver()
            .resolve(peer)
            .await
            .map_err(|e| e.to_string())?;
        doc.authentication_methods()
            .iter()
            .find_map(|m| match m.key {
                mpc_did_resolver::PublicKey::Ed25519(k) => Some(PeerAddr::Key(k)),
                _ => None,
            })
            .ok_or_else(|| format!("{peer} has no Ed25519 authentication key"))
    }

    async fn relay_connection(&self, url: &str) -> Result<Arc<RelayConnection>, String> {
        let Some((setup, _, home)) = &self.inner.relay else {
            return Err("no relay identity configured (ConnectorConfig::relay)".into());
        };
        if setup.url == url && home.is_open() {
            return Ok(Arc::clone(home));
        }
        let mut foreign = self.inner.foreign_relays.lock().await;
        if let Some(c) = foreign.get(url).filter(|c| c.is_open()) {
            return Ok(Arc::clone(c));
        }
        let conn = RelayConnection::connect_ws(url, setup.identity.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        // Streams we open name the peers allowed to answer.
        conn.restrict_senders();
        let conn = Arc::new(conn);
        foreign.insert(url.to_owned(), Arc::clone(&conn));
        Ok(conn)
    }

    fn record(&self, r: Result<Established, ConnectError>) -> Result<Established, ConnectError> {
        if let (Ok(e), Ok(mut list)) = (&r, self.inner.sessions.lock()) {
            list.push(e.clone());
        }
        r
    }

    fn open_thread(&self, sid: &str) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(32);
        if let Ok(mut t) = self.inner.threads.lock() {
            // Messages that came before the thread existed (the proposer's `candidates`
            // overtake our acceptance of its `propose`) are delivered first.
            if let Ok(mut o) = self.inner.orphans.lock() {
                let (mine, rest): (Vec<Inbound>, Vec<Inbound>) = o
                    .drain(..)
                    .partition(|m| session_of(m).as_deref() == Some(sid));
                *o = rest;
                for m in mine {
                    let _ = tx.try_send(m);
                }
            }
            t.insert(sid.to_owned(), tx);
        }
        rx
    }

    fn close_thread(&self, sid: &str) {
        if let Ok(mut t) = self.inner.threads.lock() {
            t.remove(sid);
        }
    }

    /// The next negotiation message from `peer` (others are dropped: spec §2, the
    /// authenticated sender must be the expected peer).
    async fn next(
        &self,
        rx: &mut mpsc::Receiver<Inbound>,
        deadline: tokio::time::Instant,
        peer: &str,
        what: &str,
    ) -> Result<Inbound, ConnectError> {
        loop {
            let m = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .map_err(|_| ConnectError::Timeout {
                    peer: peer.to_owned(),
                    what: what.to_owned(),
                    secs: self.inner.config.handshake_timeout.as_secs(),
                })?
                .ok_or(ConnectError::Agent(AgentError::Stopped))?;
            if m.sender.as_deref() == Some(peer) && m.meta.authenticated {
                return Ok(m);
            }
            tracing::warn!(sender = ?m.sender, "dropped a negotiation message not from {peer}");
        }
    }

    async fn wait_proposal(
        &self,
        peer: &str,
        binding: &Binding,
        deadline: tokio::time::Instant,
    ) -> Result<Inbound, ConnectError> {
        loop {
            let notified = self.inner.new_proposal.notified();
            if let Some(p) = self.take_proposal(peer, binding) {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ConnectError::Timeout {
                    peer: peer.to_owned(),
                    what: "propose a session".into(),
                    secs: self.inner.config.handshake_timeout.as_secs(),
                });
            }
        }
    }

    fn take_proposal(&self, peer: &str, binding: &Binding) -> Option<Inbound> {
        let mut list = self.inner.proposals.lock().ok()?;
        let i = list.iter().position(|m| {
            m.sender.as_deref() == Some(peer)
                && signed_by(m, peer)
                && m.message
                    .body
                    .get("mpc_session_id")
                    .and_then(|v| v.as_str())
                    == Some(binding.mpc_session_id.as_str())
        })?;
        Some(list.remove(i))
    }

    async fn send_candidates(&self, peer: &str, sid: &str) -> Result<(), ConnectError> {
        let cands: Vec<serde_json::Value> = self
            .inner
            .candidates
            .iter()
            .enumerate()
            .filter_map(|(i, a)| {
                let c = Candidate::new(
                    CandidateKind::Host,
                    Transport::Tcp,
                    *a,
                    u16::try_from(i).unwrap_or(u16::MAX),
                    None,
                );
                serde_json::to_value(c).ok()
            })
            .collect();
        let mut cands = cands;
        if let Some(q) = &self.inner.quic {
            cands.extend(
                q.candidates
                    .iter()
                    .filter_map(|c| serde_json::to_value(c).ok()),
            );
        }
        if let Some((setup, addr, _)) = &self.inner.relay {
            if let Ok(v) = serde_json::to_value(Candidate::relay(Transport::Tcp, *addr, &setup.url))
            {
                cands.push(v);
            }
        }
        let body = CandidatesBody {
            session_id: sid.to_owned(),
            candidates: cands,
            end_of_candidates: true,
        };
        let m = message(&new_id(), CANDIDATES_TYPE, &body, Some(sid))?;
        self.inner.agent.send(peer, m).await?;
        Ok(())
    }

    async fn send_close(&self, peer: &str, sid: &str, code: u16, reason: &str) {
        let body = CloseBody {
            session_id: sid.to_owned(),
            code,
            reason: reason.chars().take(200).collect(),
        };
        if let Ok(m) = message(&new_id(), CLOSE_TYPE, &body, Some(sid)) {
            if let Err(e) = self.inner.agent.send(peer, m).await {
                tracing::debug!("could not send close to {peer}: {e}");
            }
        }
    }

    fn handshake_failed(&self, peer: &str, sid: &str, reason: &str) -> ConnectError {
        let (this, peer_s, sid_s, reason_s) = (
            self.clone(),
            peer.to_owned(),
            sid.to_owned(),
            reason.to_owned(),
        );
        tokio::spawn(async move { this.send_close(&peer_s, &sid_s, 2, &reason_s).await });
        ConnectError::Handshake {
            peer: peer.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Route negotiation messages: proposals wait for `accept`, the rest go to their thread.
async fn dispatch(inner: std::sync::Weak<Inner>, mut rx: mpsc::Receiver<Inbound>) {
    while let Some(m) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { break };
        if kind(&m) == Some("propose") {
            if let Ok(mut p) = inner.proposals.lock() {
                p.push(m);
                // Unclaimed proposals from peers nobody waits for are bounded.
                if p.len() > 256 {
                    p.remove(0);
                }
            }
            inner.new_proposal.notify_waiters();
            continue;
        }
        let Some(sid) = session_of(&m) else {
            continue;
        };
        let Ok(threads) = inner.threads.lock() else {
            break;
        };
        match threads.get(&sid) {
            Some(tx) => {
                let _ = tx.try_send(m);
            }
            // Perhaps for a session we are about to accept: kept for a while (bounded).
            None => {
                if let Ok(mut o) = inner.orphans.lock() {
                    o.push(m);
                    if o.len() > MAX_ORPHANS {
                        o.remove(0);
                        tracing::debug!("negotiation message for an unknown session dropped");
                    }
                }
            }
        }
    }
}

/// Most direct-path checks in one round.
const MAX_DIRECT_CHECKS: usize = 16;
/// How long the first connection tries direct paths before the relay when the peer has a
/// relay candidate: one round of checks (3 s each, in parallel) plus an attach.
const DIRECT_BUDGET: Duration = Duration::from_secs(6);
/// A direct check (TCP connect, QUIC handshake) without an answer after this has failed
/// (spec/rendezvous.md §5.3).
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a freshly attached path may take to carry the peer's first record.
const CONNECT_WAIT: Duration = Duration::from_secs(2);

/// One round of direct checks: all at once, selection by rank (spec/session.md §7.5), then
/// the path hello on the winner; if the session does not connect on it, the next success.
/// The error says why and whether any path opened at all (worth another round).
async fn one_round(
    handle: &SessionHandle,
    targets: &[(u8, Candidate)],
    quic: Option<&QuicEndpoint>,
    settle: Duration,
) -> Result<PathInfo, (String, bool)> {
    let mut checks = tokio::task::JoinSet::new();
    for (i, (_, c)) in targets.iter().enumerate() {
        let (c, q) = (c.clone(), quic.cloned());
        checks.spawn(async move { (i, open_direct(&c, q.as_ref()).await) });
    }
    let mut sel = Selection::new(targets.iter().map(|t| t.0).collect(), settle);
    let mut opened: HashMap<usize, (path::BoxPath, PathInfo)> = HashMap::new();
    let mut why = Vec::new();
    let order = loop {
        let done = match sel.decide(Instant::now()) {
            Decision::Take(order) => break order,
            Decision::NothingWorked => return Err((why.join("; "), false)),
            Decision::Wait(Some(t)) => tokio::select! {
                d = checks.join_next() => d,
                () = tokio::time::sleep_until(t.into()) => continue,
            },
            Decision::Wait(None) => checks.join_next().await,
        };
        match done {
            Some(Ok((i, r))) => {
                sel.on_result(i, r.is_ok(), Instant::now());
                match r {
                    Ok(p) => {
                        opened.insert(i, p);
                    }
                    Err(e) => why.push(e),
                }
            }
            // Checks do not panic; a set that ran dry without a decision has nothing.
            Some(Err(_)) | None => return Err((why.join("; "), false)),
        }
    };
    // Checks still running cannot win any more.
    checks.abort_all();
    for i in order {
        let Some((mut p, info)) = opened.remove(&i) else {
            continue;
        };
        // The hello is the nomination: the acceptor attaches whatever path names its session.
        match path::send_hello(&mut p, &handle.path_id()).await {
            Ok(()) => {
                handle
                    .attach_path_as(p, Some(info.clone()))
                    .await
                    .map_err(|e| (e.to_string(), false))?;
                if connected_soon(handle).await {
                    return Ok(info);
                }
                why.push(format!("{info}: no answer on the path"));
            }
            Err(e) => why.push(format!("{info}: {e}")),
        }
    }
    Err((why.join("; "), true))
}

/// Connected only once the peer's first record authenticates on the new path (spec §7.3);
/// a listener that does not know the session drops it.
async fn connected_soon(handle: &SessionHandle) -> bool {
    let mut st = handle.watch_state();
    let _ = tokio::time::timeout(
        CONNECT_WAIT,
        st.wait_for(|s| *s != SessionState::Connecting),
    )
    .await;
    handle.state() == SessionState::Connected
}

/// One direct check: a TCP connection to a host candidate, or a QUIC connection (after a
/// punch datagram that opens our NAT towards it) with one stream opened on it.
async fn open_direct(
    c: &Candidate,
    quic: Option<&QuicEndpoint>,
) -> Result<(path::BoxPath, PathInfo), String> {
    let addr = c.addr;
    match (c.transport, quic) {
        (Transport::Tcp, _) => {
            let tcp = tokio::time::timeout(CHECK_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| format!("TCP {addr}: connect timed out"))?
                .map_err(|e| format!("TCP {addr}: {e}"))?;
            tcp.set_nodelay(true)
                .map_err(|e| format!("TCP {addr}: {e}"))?;
            Ok((Box::new(tcp), PathInfo::Direct { remote: Some(addr) }))
        }
        (Transport::Quic, Some(q)) => {
            let _ = q.punch(addr).await;
            let conn = tokio::time::timeout(CHECK_TIMEOUT, q.connect(addr))
                .await
                .map_err(|_| format!("QUIC {addr}: no handshake within {CHECK_TIMEOUT:?}"))?
                .map_err(|e| format!("QUIC {addr}: {e}"))?;
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| format!("QUIC {addr}: {e}"))?;
            let p = QuicPath::new(conn, send, recv);
            Ok((Box::new(p), PathInfo::Quic { remote: addr }))
        }
        _ => Err(format!(
            "{addr}: no way to check a {:?} candidate",
            c.transport
        )),
    }
}

/// The proposer owns the path (spec/session.md §7.4, §7.5): when it breaks, connect again
/// (direct first, then relay) until the session is over; while it is on the relay, retry
/// direct paths with backoff (`UpgradeConfig`), at once when the peer announces new
/// candidates, and switch when one works (the session resumes without loss, §7).
async fn keep_path(
    connector: Connector,
    handle: SessionHandle,
    peer: String,
    remote: Arc<RemoteCandidates>,
) {
    let cfg = connector.inner.config.upgrade.clone();
    let mut state = handle.watch_state();
    let mut backoff = cfg.first;
    let mut next_try = tokio::time::Instant::now() + backoff;
    // Set when restoring through the relay alone failed: the next attempt tries everything.
    let mut relay_restore_failed = false;
    loop {
        if handle.state().is_over() {
            return;
        }
        let on_relay = matches!(handle.path().current, Some(PathInfo::Relayed { .. }));
        let upgrade = cfg.enabled
            && on_relay
            && !connector.inner.config.force_relay
            && remote.snapshot().iter().any(|c| select::rank(c).is_some());
        tokio::select! {
            r = async { state.wait_for(|s| *s == SessionState::NoPath || s.is_over()).await.map(|_| ()) } => {
                if r.is_err() || handle.state().is_over() {
                    return;
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let cands = remote.snapshot();
                // Direct first, then the relay; only the relay with `force_relay`, and
                // first when the path lost was the relay (spec/session.md §7.4): the direct
                // candidates did not work a moment ago, and checking them again would leave
                // the session without a path for a whole round of checks (up to 6 s). The
                // upgrade below keeps trying them.
                let lost_relay = matches!(handle.path().last, Some(PathInfo::Relayed { .. }));
                let relay_only = connector.inner.config.force_relay
                    || (lost_relay && !relay_restore_failed);
                match connector
                    .connect_path(&handle, &peer, &cands, relay_only, deadline)
                    .await
                {
                    Ok(p) => {
                        relay_restore_failed = false;
                        tracing::info!("secure session path restored: {p}");
                    }
                    Err(e) => {
                        relay_restore_failed = relay_only;
                        tracing::warn!("cannot restore the path ({e}); retrying");
                    }
                }
                backoff = cfg.first;
                next_try = tokio::time::Instant::now() + backoff;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            () = tokio::time::sleep_until(next_try), if upgrade => {
                let deadline = tokio::time::Instant::now() + DIRECT_BUDGET;
                match connector.direct_path(&handle, &remote.snapshot(), deadline).await {
                    Ok(p) => {
                        tracing::info!("secure session with {peer} upgraded from the relay to {p}");
                        backoff = cfg.first;
                    }
                    Err(e) => {
                        tracing::debug!("no direct path to {peer} yet ({e}); next try in {:?}", backoff * 2);
                        backoff = (backoff * 2).min(cfg.max);
                    }
                }
                next_try = tokio::time::Instant::now() + backoff;
            }
            () = remote.added.notified() => {
                // New candidates: try them now.
                backoff = cfg.first;
                next_try = tokio::time::Instant::now();
            }
        }
    }
}

/// The acceptor's side of relay paths: keep a relay stream to the peer open and hand it to
/// the session when the proposer's hello arrives on it; again after each path change.
async fn serve_relay_paths(
    conn: Arc<RelayConnection>,
    handle: SessionHandle,
    peer: PeerAddr,
    url: String,
) {
    loop {
        if handle.state().is_over() || !conn.is_open() {
            return;
        }
        let mut stream = match conn.open_stream(peer.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("relay stream to {peer:?}: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let ended = handle.ended();
        let expected = path::encode_hello(&handle.path_id());
        let found = tokio::select! {
            f = find_hello(&mut stream, &expected) => f,
            _ = ended => return,
        };
        match found {
            Ok(rest) => {
                let (notify, dropped) = tokio::sync::oneshot::channel();
                let wrapped = DropNotify {
                    inner: stream,
                    prefix: rest,
                    _notify: notify,
                };
                let info = PathInfo::Relayed { relay: url.clone() };
                if handle
                    .attach_path_as(Box::new(wrapped), Some(info))
                    .await
                    .is_err()
                {
                    return;
                }
                // Wait until the session lets go of this stream, then offer a fresh one.
                let _ = dropped.await;
            }
            Err(e) => {
                tracing::debug!("relay stream from {peer:?} ended before a hello: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Read until the exact hello of our session, skipping what comes before it: records the
/// peer sent on its previous relay stream (before it switched away and back) can still be
/// in flight ahead of the new hello on the same relay connection. Returns the bytes read
/// after the hello.
async fn find_hello(
    stream: &mut RelayStream,
    expected: &[u8; path::HELLO_LEN],
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt as _;
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(buf.get(..n).unwrap_or_default());
        if let Some(at) = seen.windows(path::HELLO_LEN).position(|w| w == expected) {
            return Ok(seen.split_off(at + path::HELLO_LEN));
        }
        // Keep only a possible partial hello at the end.
        let keep = seen.len().saturating_sub(path::HELLO_LEN - 1);
        seen.drain(..keep);
    }
}

/// Discard what a fresh relay stream delivers before we have spoken (bounded: 50 ms of
/// quiet ends it, 1 s at most).
async fn drain_stale(stream: &mut RelayStream) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = vec![0u8; 64 * 1024];
    let mut dropped = 0usize;
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => dropped += n,
            _ => break,
        }
    }
    if dropped > 0 {
        tracing::debug!("dropped {dropped} stale bytes from an earlier relay path");
    }
}

/// A stream that tells, by dropping a oneshot sender, when it is dropped.
struct DropNotify {
    inner: RelayStream,
    /// Bytes read past the hello, returned first.
    prefix: Vec<u8>,
    _notify: tokio::sync::oneshot::Sender<()>,
}

impl tokio::io::AsyncRead for DropNotify {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let rest = self.prefix.split_off(n);
            buf.put_slice(&self.prefix);
            self.prefix = rest;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for DropNotify {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn relay_addr(url: &str) -> Option<SocketAddr> {
    url::Url::parse(url)
        .ok()?
        .socket_addrs(|| Some(443))
        .ok()?
        .into_iter()
        .next()
}

fn host_candidates(local: SocketAddr, agent: &Agent) -> Vec<SocketAddr> {
    if !local.ip().is_unspecified() {
        return vec![local];
    }
    let mut out = vec![SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        local.port(),
    )];
    // The interface that routes towards our mediator is the one peers elsewhere can
    // reach (a UDP "connect" sends nothing; it only picks the route).
    let mediator_host = url::Url::parse(&agent.client().info.http)
        .ok()
        .and_then(|u| u.socket_addrs(|| Some(443)).ok())
        .and_then(|a| a.into_iter().next());
    if let Some(target) = mediator_host {
        if let Ok(sock) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
            if sock.connect(target).is_ok() {
                if let Ok(l) = sock.local_addr() {
                    let a = SocketAddr::new(l.ip(), local.port());
                    if !l.ip().is_loopback() && !out.contains(&a) {
                        out.insert(0, a);
                    }
                }
            }
        }
    }
    out
}

fn new_id() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

fn message<T: serde::Serialize>(
    id: &str,
    type_: &str,
    body: &T,
    thid: Option<&str>,
) -> Result<Message, ConnectError> {
    let body = serde_json::to_value(body)
        .map_err(|e| ConnectError::Io(std::io::Error::other(e.to_string())))?;
    let mut m = Message::new(id, type_, body);
    m.thid = thid.map(str::to_owned);
    Ok(m)
}

/// Negotiation messages for sessions not (yet) known, kept at most.
const MAX_ORPHANS: usize = 64;

fn session_of(m: &Inbound) -> Option<String> {
    m.message
        .body
        .get("session_id")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

fn kind(m: &Inbound) -> Option<&str> {
    m.message
        .type_
        .strip_prefix(PROTOCOL_URI)
        .and_then(|s| s.strip_prefix('/'))
}

fn signed_by(m: &Inbound, did: &str) -> bool {
    m.meta
        .sign_from
        .as_deref()
        .is_some_and(|kid| kid.split('#').next() == Some(did))
}

fn body_of<T: serde::de::DeserializeOwned>(m: &Inbound, peer: &str) -> Result<T, ConnectError> {
    serde_json::from_value(m.message.body.clone()).map_err(|e| ConnectError::Handshake {
        peer: peer.to_owned(),
        reason: format!("malformed {}: {e}", m.message.type_),
    })
}

fn candidates_of(m: &Inbound) -> Vec<Candidate> {
    let Ok(body) = serde_json::from_value::<CandidatesBody>(m.message.body.clone()) else {
        return Vec::new();
    };
    if body.check().is_err() {
        return Vec::new();
    }
    body.candidates
        .into_iter()
        .filter_map(|c| serde_json::from_value(c).ok())
        .collect()
}

fn closed(m: &Inbound, peer: &str) -> ConnectError {
    let body: CloseBody = serde_json::from_value(m.message.body.clone()).unwrap_or(CloseBody {
        session_id: String::new(),
        code: 4,
        reason: "malformed close".into(),
    });
    ConnectError::Closed {
        peer: peer.to_owned(),
        code: body.code,
        reason: body.reason,
    }
}
