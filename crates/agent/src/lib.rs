//! A party's control plane: its DIDComm v2 messages, sent through mediators and received
//! from its own mediator over one live WebSocket.
//!
//! **Owns**: the party side of the mediator protocols ([`client`]: discover a mediator
//! from its invitation, register (Coordinate Mediation 3.0 or 2.0, the newest the mediator
//! offers), send through it (Routing 2.0), pick up in batches or live over a WebSocket
//! (Message Pickup 4.0 or 3.0, raw live pushes)), the
//! inbox task (Message Pickup 3.0 live mode, reconnecting with backoff),
//! de-duplication by message id (delivery is at-least-once), dispatch of unpacked messages
//! to subscribers by message-type prefix (`https://mpc-did.org/session/1.0/`,
//! `…/lobby/1.0/`), holding the early messages of protocols we speak until their
//! subscriber comes, and endpoints learnt for DIDs whose documents name none (did:key).
//!
//! **Does not**: define DIDComm messages (`mpc-did-didcomm`'s `protocols`, shared with the
//! mediator), run a mediator (`mpc-did-mediator`; this crate never depends on it, so a
//! party builds no server code), interpret protocols (the session and lobby code
//! subscribe), or store anything: a message is acknowledged to the mediator only once a
//! subscriber took it, or once we decided to drop it, so what we hold is delivered again
//! after a restart.
//!
//! ## What is kept, what is dropped (spec/lobby.md §7)
//! Anyone who knows our DID can send us messages, so nothing a stranger sends may pile up
//! unacknowledged (the mediator pauses live delivery after `max_inflight` unacknowledged
//! pushes) or push out what our own protocols are waiting for. Each unpacked message is:
//! - **delivered** to the subscriber of its type prefix, and acknowledged;
//! - **held**, not acknowledged, when no subscriber can take it yet but a [`Hold`] rule
//!   says it may legitimately arrive early (a session proposal before the session code
//!   subscribes): its type has the rule's prefix, its sender is authenticated (authcrypt
//!   or signed) and, when the rule names senders (an MPC session's roster), one of them.
//!   Held messages sit in one bucket per (prefix, sender), at most [`MAX_HELD_PER_SENDER`]
//!   each and [`MAX_HELD`] in all (below the mediator's 1,000 unacknowledged pushes), of
//!   which at most [`MAX_HELD_OPEN`] from senders no rule names (an any-sender rule, or a
//!   subscriber that is behind), so strangers cannot use up the room a roster needs; a
//!   message over a bound is dropped, never an older one;
//! - **dropped and acknowledged** with a log line otherwise: unknown types, anoncrypt or
//!   plaintext messages nobody subscribed to, senders outside a rule's roster, overflow.
//!
//! Unpacking never waits for the network: a message whose sender's did:web document must
//! first be fetched waits, unacknowledged, in that DID's lane while the fetch runs, and
//! everything else goes on (spec/lobby.md §7 "Lanes"; the `lanes` module).
//!
//! A subscriber taken with [`Agent::subscribe_where`] takes only what its filter wants; the
//! rest is routed as if it had not subscribed (held, so delivered again on our next
//! connection — e.g. joins for another MPC session, kept for its `host` — or dropped).
//!
//! The live connection is kept alive: a WebSocket ping after [`AgentConfig::keepalive`]
//! without traffic, a re-connect ([`LiveEvent::Lost`]) when a ping has no answer for as
//! long again; opening it is bounded by [`AgentConfig::connect_timeout`]
//! (spec/mediator.md §8 "Keep-alive and opening").
//!
//! A subscriber taken with [`Agent::subscribe_lossless`] (a data stream) is never held for
//! or dropped from: while it is behind, the inbox waits for it and the mediator keeps the
//! rest. Held messages reach their subscriber in order per sender, as soon as it has room.
//!
//! ```text
//!  mediator ══ WS live delivery ══▶ inbox task ─unpack─▶ dedup ─▶ subscriber(type prefix) ─▶ ack
//!                                                          ├────▶ held[(prefix, sender)] (bounded; not acked)
//!                                                          └────▶ dropped (logged) ─▶ ack
//!  Agent::send(to, msg) ─authcrypt─▶ forward for to's routing keys ─HTTP POST─▶ to's mediator
//!                                    (no redirects, 10 s timeout)
//! ```
//!
//! ```no_run
//! # async fn demo(client: mpc_did_agent::client::MediatorClient) -> Result<(), mpc_did_agent::AgentError> {
//! use mpc_did_agent::{Agent, AgentConfig, Hold};
//! // Hold early session messages, but only from the two parties of our roster.
//! let config = AgentConfig {
//!     hold: vec![Hold::from_senders(mpc_did_agent::SESSION_PREFIX, ["did:key:z6MkA…", "did:key:z6MkB…"])],
//!     ..AgentConfig::default()
//! };
//! let agent = Agent::start_with(client, config).await?;
//! let mut pings = agent.subscribe("https://didcomm.org/trust-ping/2.0/");
//! if let Some(inbound) = pings.recv().await {
//!     println!("ping from {:?}", inbound.sender);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod client;
mod lanes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpc_did_didcomm::{Message, UnpackMetadata};
use mpc_did_resolver::{DidCommService, DidResolver as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{ClientError, Delivered, LiveConnection, MediatorClient};

/// The HTTP client type the mediator client uses (re-exported through its constructor).
mod reqwest_client {
    pub(crate) type Client = reqwest::Client;
}

/// Type prefix of the secure-session protocol (spec/session.md).
pub const SESSION_PREFIX: &str = "https://mpc-did.org/session/1.0/";
/// Type prefix of the lobby protocol (spec/lobby.md).
pub const LOBBY_PREFIX: &str = "https://mpc-did.org/lobby/1.0/";
/// Held messages per (type prefix, sender).
pub const MAX_HELD_PER_SENDER: usize = 64;
/// Held messages in all; well below the mediator's default of 1,000 unacknowledged live
/// pushes, so holding never stalls live delivery.
pub const MAX_HELD: usize = 512;
/// Of [`MAX_HELD`], most held from senders no roster names (a [`Hold::any_sender`] rule,
/// or a subscriber that is behind with no rule for the sender): strangers can never use
/// up the room held for a roster's members (spec/lobby.md §7).
pub const MAX_HELD_OPEN: usize = 256;
/// Message ids remembered for de-duplication.
const MAX_SEEN: usize = 4096;
/// Sending to a peer's endpoint (a URL the peer chose): total and connect timeouts.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
const SEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which messages may arrive before their subscriber and are then held for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Message-type prefix.
    pub prefix: String,
    /// Only from these (authenticated) senders; `None`: from any authenticated sender.
    pub senders: Option<HashSet<String>>,
}

impl Hold {
    /// Hold `prefix` messages from any authenticated sender.
    #[must_use]
    pub fn any_sender(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            senders: None,
        }
    }

    /// Hold `prefix` messages from these senders only (e.g. an MPC session's roster).
    #[must_use]
    pub fn from_senders<S: Into<String>>(
        prefix: &str,
        senders: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            prefix: prefix.to_owned(),
            senders: Some(senders.into_iter().map(Into::into).collect()),
        }
    }

    fn admits(&self, inbound: &Inbound) -> bool {
        inbound.message.type_.starts_with(&self.prefix)
            && match (&inbound.sender, &self.senders) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(s), Some(set)) => set.contains(s),
            }
    }
}

/// How an [`Agent`] treats messages nobody has subscribed to yet, and how it keeps its
/// live connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// What to hold; everything else without a subscriber is acknowledged and dropped.
    pub hold: Vec<Hold>,
    /// Keep-alive of the live connection (spec/mediator.md §8 "Keep-alive and opening"):
    /// after this long without sending, or without hearing anything, the agent pings the
    /// mediator; a ping with no answer for as long again means the connection is dead,
    /// and it re-connects ([`LiveEvent::Lost`]). Default [`KEEPALIVE`].
    pub keepalive: Duration,
    /// How long opening the live WebSocket (TCP, TLS, upgrade) may take, at the start and
    /// at each re-connect. Default [`client::CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
}

/// Default [`AgentConfig::keepalive`]: well inside the mediator's 300 s idle timeout and
/// the 30 s after which NAT mappings of idle TCP connections commonly expire.
pub const KEEPALIVE: Duration = Duration::from_secs(25);

impl Default for AgentConfig {
    /// Hold our own protocols' messages (session and lobby) from any authenticated sender;
    /// [`KEEPALIVE`], [`client::CONNECT_TIMEOUT`].
    fn default() -> Self {
        Self {
            hold: vec![
                Hold::any_sender(SESSION_PREFIX),
                Hold::any_sender(LOBBY_PREFIX),
            ],
            keepalive: KEEPALIVE,
            connect_timeout: client::CONNECT_TIMEOUT,
        }
    }
}

/// What can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The mediator or a peer's endpoint failed or refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A DID could not be resolved.
    #[error("cannot resolve {did}: {reason}")]
    Resolve {
        /// The DID that failed to resolve.
        did: String,
        /// The resolver's reason.
        reason: String,
    },
    /// No message of the expected kind arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The agent has stopped.
    #[error("the control plane has stopped")]
    Stopped,
}

impl AgentError {
    /// Whether sending again later may work ([`ClientError::is_transient`]).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Client(e) if e.is_transient())
    }
}

/// A message received and unpacked.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The plaintext message.
    pub message: Message,
    /// How it was protected (encrypted? authenticated? signed by?).
    pub meta: UnpackMetadata,
    /// The authenticated sender DID (authcrypt or signature), if any.
    pub sender: Option<String>,
}

/// Which messages of its prefix a subscriber takes ([`Agent::subscribe_where`]).
type Filter = Arc<dyn Fn(&Inbound) -> bool + Send + Sync>;

struct Sub {
    prefix: String,
    tx: mpsc::Sender<Inbound>,
    /// [`Agent::subscribe_lossless`]: when it is behind, the inbox waits for it.
    lossless: bool,
    /// [`Agent::subscribe_where`]: what it does not take is routed as if it were not there.
    filter: Option<Filter>,
}

impl Sub {
    fn wants(&self, m: &Inbound) -> bool {
        m.message.type_.starts_with(&self.prefix) && self.filter.as_ref().is_none_or(|f| f(m))
    }
}

/// A held message, its queue id (acknowledged once it is handed over), and whether it
/// counts against [`MAX_HELD_OPEN`].
type Held = (Inbound, String, bool);

#[derive(Default)]
struct Dispatch {
    subs: Vec<Sub>,
    rules: Vec<Hold>,
    /// Held messages per (prefix, sender), each in arrival order.
    held: HashMap<(String, String), VecDeque<Held>>,
    held_total: usize,
    /// Of `held_total`, those held for no roster ([`MAX_HELD_OPEN`]).
    held_open: usize,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

/// What happens to one unpacked message.
enum Route {
    /// Handed to its subscriber: acknowledge.
    Delivered,
    /// Kept for a subscriber: do not acknowledge yet.
    Held,
    /// Nobody wants it: acknowledge and forget.
    Dropped(&'static str),
    /// Its lossless subscriber is behind: wait until it has room, then route it again.
    Wait(Box<Inbound>, mpsc::Sender<Inbound>),
}

/// What the inbox does with one unpacked message.
enum Dispatched {
    /// Acknowledge it now (delivered or dropped).
    Ack,
    /// Do not acknowledge it yet (held).
    Keep,
    /// Wait until this subscriber has room, then dispatch the message again.
    Wait(Box<Inbound>, mpsc::Sender<Inbound>),
}

struct Inner {
    client: MediatorClient,
    http: reqwest_client::Client,
    dispatch: Mutex<Dispatch>,
    /// Queue ids claimed by a subscriber, to acknowledge to the mediator.
    acks: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
    /// Transitions of the live connection ([`Agent::live_events`]).
    live_events: tokio::sync::broadcast::Sender<LiveEvent>,
}

/// A transition of the agent's live connection to its mediator, sent once per change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LiveEvent {
    /// The live WebSocket dropped (a mediator restart, a network change); re-connecting
    /// with backoff and jitter. Messages wait in the mediator's queue meanwhile.
    Lost {
        /// Why it dropped.
        why: String,
    },
    /// Live again after `after`; what was queued meanwhile is being delivered.
    Back {
        /// How long it was down.
        after: Duration,
    },
}

impl std::fmt::Display for LiveEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lost { why } => {
                write!(f, "connection to our mediator lost ({why}); re-connecting")
            }
            Self::Back { after } => write!(
                f,
                "connected to our mediator again after {:.1} s",
                after.as_secs_f64()
            ),
        }
    }
}

/// A party's control plane; cheap to clone. Stops when the last clone is dropped.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
    _guard: Arc<tokio_util::sync::DropGuard>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("did", &self.inner.client.did)
            .finish()
    }
}

impl Agent {
    /// Connect to our mediator in live mode and start receiving, holding early messages
    /// as [`AgentConfig::default`] says.
    ///
    /// # Errors
    /// The first live connection fails (later failures are retried in the background).
    pub async fn start(client: MediatorClient) -> Result<Self, AgentError> {
        Self::start_with(client, AgentConfig::default()).await
    }

    /// As [`Self::start`], holding early messages as `config` says.
    ///
    /// # Errors
    /// The first live connection fails (later failures are retried in the background).
    pub async fn start_with(
        client: MediatorClient,
        config: AgentConfig,
    ) -> Result<Self, AgentError> {
        let live = client.live_within(config.connect_timeout).await?;
        let (acks, ack_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        // Peers' endpoints are URLs the peers chose: no redirects (a 307 would carry our
        // POST elsewhere) and a short timeout.
        let http = mpc_did_resolver::trust::with_extra_roots(
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(SEND_TIMEOUT)
                .connect_timeout(SEND_CONNECT_TIMEOUT)
                .pool_max_idle_per_host(64),
        )
        .and_then(reqwest::ClientBuilder::build)
        .map_err(ClientError::from)?;
        let inner = Arc::new(Inner {
            client,
            http,
            dispatch: Mutex::new(Dispatch {
                rules: config.hold,
                ..Dispatch::default()
            }),
            acks,
            stop: stop.clone(),
            live_events: tokio::sync::broadcast::channel(16).0,
        });
        let timing = Timing {
            keepalive: config.keepalive,
            connect_timeout: config.connect_timeout,
        };
        tokio::spawn(inbox(
            Arc::downgrade(&inner),
            live,
            ack_rx,
            stop.clone(),
            timing,
        ));
        Ok(Self {
            inner,
            _guard: Arc::new(stop.drop_guard()),
        })
    }

    /// Transitions of the live connection from now on: lost, back (each once).
    #[must_use]
    pub fn live_events(&self) -> tokio::sync::broadcast::Receiver<LiveEvent> {
        self.inner.live_events.subscribe()
    }

    /// Our DID.
    #[must_use]
    pub fn did(&self) -> &str {
        &self.inner.client.did
    }

    /// The mediator client (our mediator, our keys, our resolver).
    #[must_use]
    pub fn client(&self) -> &MediatorClient {
        &self.inner.client
    }

    /// Our own DIDComm service (at our mediator), to give to peers.
    #[must_use]
    pub fn own_service(&self) -> DidCommService {
        self.inner.client.info.service_for(&self.inner.client.did)
    }

    /// Remember where `did` receives DIDComm (its document may name no endpoint, as
    /// with did:key): later sends to it go there.
    ///
    /// # Errors
    /// [`AgentError::Resolve`] if `did` cannot be resolved.
    pub async fn learn_service(
        &self,
        did: &str,
        service: DidCommService,
    ) -> Result<(), AgentError> {
        let resolver = self.inner.client.resolver();
        let mut doc = resolver
            .resolve(did)
            .await
            .map_err(|e| AgentError::Resolve {
                did: did.to_owned(),
                reason: e.to_string(),
            })?;
        doc.service.retain(|s| !s.is_didcomm());
        doc.service.push(service.to_service());
        resolver.insert(doc);
        Ok(())
    }

    /// Send `msg` to `to` (authcrypt from us, forwarded through `to`'s mediator); the POST
    /// follows no redirect and gives up after 10 s.
    ///
    /// # Errors
    /// `to` has no known endpoint, or its mediator refused.
    pub async fn send(&self, to: &str, msg: Message) -> Result<(), AgentError> {
        let c = &self.inner.client;
        crate::client::send_message(&self.inner.http, &c.did, c.secrets(), c.resolver(), to, msg)
            .await?;
        Ok(())
    }

    /// Also hold messages matching `rule` until their subscriber comes (see the crate
    /// docs); e.g. an MPC session's roster once it is known.
    pub fn hold(&self, rule: Hold) {
        if let Ok(mut d) = self.inner.dispatch.lock() {
            d.rules.push(rule);
        }
    }

    /// Send `msg` to `to` signed by us (JWS EdDSA with our authentication key) inside
    /// authcrypt: for messages whose binding to our DID must be provable beyond the
    /// recipient (spec/session.md §2: `propose`, `accept`; spec/lobby.md: the roster).
    ///
    /// # Errors
    /// `to` has no known endpoint, packing fails, or its mediator refused.
    pub async fn send_signed(&self, to: &str, mut msg: Message) -> Result<(), AgentError> {
        let client = &self.inner.client;
        msg.from = Some(client.did.clone());
        msg.to = Some(vec![to.to_owned()]);
        let packed = mpc_did_didcomm::pack_encrypted(
            &msg,
            to,
            Some(&client.did),
            Some(&client.did),
            client.resolver(),
            client.secrets(),
            &mpc_did_didcomm::PackOptions::default(),
        )
        .await
        .map_err(ClientError::from)?;
        let svc = packed.service.ok_or_else(|| {
            AgentError::Client(ClientError::Url(format!(
                "{to} has no DIDCommMessaging service"
            )))
        })?;
        crate::client::post_packed(&self.inner.http, &svc.uri, packed.message.into_bytes()).await?;
        Ok(())
    }

    /// As [`Self::send`], trying again after a pause of `pause` while the failure is
    /// transient ([`AgentError::is_transient`]: a busy, restarting or unreachable mediator)
    /// and `limit` has not passed since the first try. The mediator stores a message id
    /// once (spec/mediator.md §3), so a retry of one that did arrive is harmless. Returns
    /// the number of tries with the outcome.
    ///
    /// # Errors
    /// The last failure; [`AgentError::Timeout`] when `limit` passed during a try.
    pub async fn send_within(
        &self,
        to: &str,
        msg: Message,
        limit: Duration,
        pause: Duration,
    ) -> (u32, Result<(), AgentError>) {
        within_limit(limit, pause, || self.send(to, msg.clone())).await
    }

    /// As [`Self::send_signed`], trying again after a pause of `pause` while the failure
    /// is transient ([`AgentError::is_transient`]: a busy or unreachable mediator) and
    /// `limit` has not passed since the first try. The mediator stores a message id once
    /// (spec/mediator.md §3), so a retry of one that did arrive is harmless. Returns the
    /// number of tries with the outcome.
    ///
    /// # Errors
    /// The last failure; [`AgentError::Timeout`] when `limit` passed during a try.
    pub async fn send_signed_within(
        &self,
        to: &str,
        msg: Message,
        limit: Duration,
        pause: Duration,
    ) -> (u32, Result<(), AgentError>) {
        within_limit(limit, pause, || self.send_signed(to, msg.clone())).await
    }

    /// Receive every message whose type starts with `type_prefix` (including held ones
    /// that arrived before this call). One subscriber per prefix: a new subscription
    /// replaces an older one. While the subscriber is behind (256 waiting), further
    /// messages of its prefix are held as for a [`Hold`] rule from any authenticated
    /// sender (within the same bounds: beyond them they are dropped), and handed over as
    /// it catches up.
    #[must_use]
    pub fn subscribe(&self, type_prefix: &str) -> mpsc::Receiver<Inbound> {
        self.add_subscriber(type_prefix, false, None)
    }

    /// As [`Self::subscribe`], taking only the messages of `type_prefix` for which
    /// `wanted` is true. The others are routed as if nobody had subscribed: held if a
    /// [`Hold`] rule admits them — not acknowledged, so the mediator delivers them again
    /// on our next connection, e.g. to another program of the same identity — and
    /// dropped otherwise (spec/lobby.md §7: a `run` keeps the joins for another MPC
    /// session for the `host` of that session).
    #[must_use]
    pub fn subscribe_where(
        &self,
        type_prefix: &str,
        wanted: impl Fn(&Inbound) -> bool + Send + Sync + 'static,
    ) -> mpsc::Receiver<Inbound> {
        self.add_subscriber(type_prefix, false, Some(Arc::new(wanted)))
    }

    /// As [`Self::subscribe`], but nothing of this prefix is ever dropped for being
    /// early or too many: while the subscriber is behind, the inbox stops taking messages
    /// from the mediator until it has room (backpressure: the mediator keeps them, and
    /// refuses senders once its queue or their quota is full — spec/lobby.md §7,
    /// "Lossless subscribers"). For a consumer that reads all the time, such as the
    /// per-message MPyC transport (spec/didcomm-transport.md §3); one that stops reading
    /// stops every delivery to this agent.
    #[must_use]
    pub fn subscribe_lossless(&self, type_prefix: &str) -> mpsc::Receiver<Inbound> {
        self.add_subscriber(type_prefix, true, None)
    }

    fn add_subscriber(
        &self,
        type_prefix: &str,
        lossless: bool,
        filter: Option<Filter>,
    ) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(256);
        let mut claimed = Vec::new();
        if let Ok(mut d) = self.inner.dispatch.lock() {
            d.subs
                .retain(|s| s.prefix != type_prefix && !s.tx.is_closed());
            d.subs.push(Sub {
                prefix: type_prefix.to_owned(),
                tx,
                lossless,
                filter,
            });
            d.flush(&mut claimed);
        }
        for qid in claimed {
            let _ = self.inner.acks.send(qid);
        }
        rx
    }

    /// How many messages are held for subscribers that have not come yet (tests, metrics).
    #[must_use]
    pub fn held(&self) -> usize {
        self.inner.dispatch.lock().map_or(0, |d| d.held_total)
    }

    /// Stop the inbox task now (also happens when the last clone is dropped).
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

/// Wait for the next message on `rx` for which `pick` returns `Some`, within `limit`;
/// others are dropped.
///
/// # Errors
/// [`AgentError::Timeout`] naming `what`, or [`AgentError::Stopped`].
pub async fn expect<T>(
    rx: &mut mpsc::Receiver<Inbound>,
    limit: Duration,
    what: &str,
    mut pick: impl FnMut(&Inbound) -> Option<T>,
) -> Result<T, AgentError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| AgentError::Timeout(what.to_owned()))?
            .ok_or(AgentError::Stopped)?;
        if let Some(t) = pick(&m) {
            return Ok(t);
        }
        tracing::debug!(r#type = %m.message.type_, "ignored while waiting for {what}");
    }
}

impl Dispatch {
    /// Hand held messages to subscribers that can take them now; their queue ids go to
    /// `claimed` (to acknowledge).
    fn flush(&mut self, claimed: &mut Vec<String>) {
        self.subs.retain(|s| !s.tx.is_closed());
        if self.held_total == 0 {
            return;
        }
        let Self {
            subs,
            held,
            held_total,
            held_open,
            ..
        } = self;
        for bucket in held.values_mut() {
            // In order: the first that cannot go keeps those behind it (the subscriber
            // reads meanwhile, so a later one could otherwise overtake it).
            while let Some((m, qid, open)) = bucket.pop_front() {
                let Some(sub) = subs.iter().find(|s| s.wants(&m)) else {
                    bucket.push_front((m, qid, open));
                    break;
                };
                match sub.tx.try_send(m) {
                    Ok(()) => {
                        claimed.push(qid);
                        *held_total -= 1;
                        *held_open -= usize::from(open);
                    }
                    Err(e) => {
                        bucket.push_front((e.into_inner(), qid, open));
                        break;
                    }
                }
            }
        }
        held.retain(|_, b| !b.is_empty());
    }

    /// Whether messages from `sender` are held that `sub` would take.
    fn holds_for(&self, sub: &Sub, sender: Option<&str>) -> bool {
        let Some(sender) = sender else { return false };
        self.held_total > 0
            && self.held.iter().any(|((_, from), bucket)| {
                from == sender && bucket.iter().any(|(m, _, _)| sub.wants(m))
            })
    }

    /// The subscribers that are full while messages are held for them: once one has room,
    /// a [`Self::flush`] hands them over (no new message may come to trigger one: the
    /// sender may be waiting for our answer to what we hold).
    fn blocked_subscribers(&self) -> Vec<mpsc::Sender<Inbound>> {
        let mut out: Vec<mpsc::Sender<Inbound>> = Vec::new();
        for b in self.held.values() {
            let Some((m, _, _)) = b.front() else { continue };
            let sub = self.subs.iter().find(|s| s.wants(m) && !s.tx.is_closed());
            if let Some(s) = sub {
                if !out.iter().any(|t| t.same_channel(&s.tx)) {
                    out.push(s.tx.clone());
                }
            }
        }
        out
    }

    /// Route one unpacked message.
    fn route(&mut self, inbound: Inbound, qid: &str, claimed: &mut Vec<String>) -> Route {
        if dedup_key(&inbound).is_some_and(|k| self.seen.contains(&k)) {
            // A redelivery (after a reconnect) of something handled or held: a held one
            // stays unacknowledged until its subscriber takes the copy we have.
            let id = &inbound.message.id;
            let held = self.held.values().any(|b| {
                b.iter()
                    .any(|(m, _, _)| &m.message.id == id && m.sender == inbound.sender)
            });
            return if held { Route::Held } else { Route::Delivered };
        }
        // Earlier held messages go first, so one sender's messages keep their order.
        self.flush(claimed);
        let sub = self.subs.iter().find(|s| s.wants(&inbound));
        // A roster's rule first: what it admits is held within the room strangers cannot
        // use up; what only an any-sender rule admits counts against MAX_HELD_OPEN.
        let rule = self
            .rules
            .iter()
            .filter(|r| r.admits(&inbound))
            .max_by_key(|r| r.senders.is_some());
        let held_prefix = rule.map(|r| (r.prefix.clone(), r.senders.is_none()));
        let (inbound, prefix) = match sub {
            // Messages of this sender still held for the subscriber go first: the
            // subscriber may have made room since the flush above.
            Some(s) if self.holds_for(s, inbound.sender.as_deref()) => {
                if s.lossless {
                    return Route::Wait(Box::new(inbound), s.tx.clone());
                }
                let behind_prefix = (s.prefix.clone(), true);
                (inbound, Some(held_prefix.unwrap_or(behind_prefix)))
            }
            Some(s) => {
                let behind_prefix = (s.prefix.clone(), true);
                match s.tx.try_send(inbound) {
                    Ok(()) => return Route::Delivered,
                    Err(mpsc::error::TrySendError::Full(m)) if s.lossless => {
                        return Route::Wait(Box::new(m), s.tx.clone());
                    }
                    // The subscriber is behind: hold under its prefix, if authenticated.
                    Err(e) => (e.into_inner(), Some(held_prefix.unwrap_or(behind_prefix))),
                }
            }
            None => (inbound, held_prefix),
        };
        let Some((prefix, open)) = prefix else {
            return Route::Dropped(if inbound.sender.is_none() {
                "unauthenticated, and nobody subscribed to its type"
            } else {
                "nobody subscribed to its type, and it is not one we hold"
            });
        };
        let Some(sender) = inbound.sender.clone() else {
            return Route::Dropped("unauthenticated, and its subscriber is behind");
        };
        if self.held_total >= MAX_HELD {
            return Route::Dropped("too many messages held already");
        }
        if open && self.held_open >= MAX_HELD_OPEN {
            return Route::Dropped("too many messages held from senders no roster names");
        }
        let id = dedup_key(&inbound);
        let bucket = self.held.entry((prefix, sender)).or_default();
        if bucket.len() >= MAX_HELD_PER_SENDER {
            return Route::Dropped("too many messages held from this sender already");
        }
        bucket.push_back((inbound, qid.to_owned(), open));
        self.held_total += 1;
        self.held_open += usize::from(open);
        self.remember_id(id);
        Route::Held
    }

    /// Remember the id of a message we delivered or hold (not of one we dropped: junk
    /// must not push the ids of real messages out of the de-duplication window).
    fn remember_id(&mut self, key: Option<String>) {
        let Some(id) = key else {
            return;
        };
        if !self.seen.insert(id.clone()) {
            return;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > MAX_SEEN {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

/// What de-duplication remembers of a message: its id **with its authenticated sender**
/// (none for an anonymous one), so that a stranger who sends a message under the id of
/// one we are still to get from somebody else does not make us drop the real one as a
/// redelivery. `None` for a message without an id (never de-duplicated).
fn dedup_key(inbound: &Inbound) -> Option<String> {
    let id = &inbound.message.id;
    (!id.is_empty()).then(|| format!("{}\n{id}", inbound.sender.as_deref().unwrap_or("")))
}

impl Inner {
    /// Route one unpacked message: acknowledge it now, keep it, or wait for its subscriber.
    fn dispatch(&self, inbound: Inbound, qid: &str) -> Dispatched {
        let Ok(mut d) = self.dispatch.lock() else {
            return Dispatched::Keep;
        };
        let id = dedup_key(&inbound);
        let type_ = inbound.message.type_.clone();
        let sender = inbound.sender.clone();
        let mut claimed = Vec::new();
        let route = d.route(inbound, qid, &mut claimed);
        if matches!(route, Route::Delivered) {
            d.remember_id(id);
        }
        drop(d);
        for q in claimed {
            let _ = self.acks.send(q);
        }
        match route {
            Route::Delivered => Dispatched::Ack,
            Route::Held => Dispatched::Keep,
            Route::Wait(m, tx) => Dispatched::Wait(m, tx),
            Route::Dropped(why) => {
                tracing::debug!(r#type = %type_, sender = ?sender, "dropped a message: {why}");
                Dispatched::Ack
            }
        }
    }

    /// Hand held messages to subscribers that have room now and acknowledge them.
    fn flush(&self) {
        let mut claimed = Vec::new();
        if let Ok(mut d) = self.dispatch.lock() {
            d.flush(&mut claimed);
        }
        for q in claimed {
            let _ = self.acks.send(q);
        }
    }

    fn blocked_subscribers(&self) -> Vec<mpsc::Sender<Inbound>> {
        self.dispatch
            .lock()
            .map(|d| d.blocked_subscribers())
            .unwrap_or_default()
    }
}

/// Until one of `subs` (subscribers that are behind) has room for one message, or is
/// closed; never when there are none.
async fn room(subs: Vec<mpsc::Sender<Inbound>>) {
    if subs.is_empty() {
        return std::future::pending().await;
    }
    // Each permit is dropped at once: the room is taken by the flush that follows.
    let waits = subs
        .iter()
        .map(|tx| Box::pin(async move { drop(tx.reserve().await) }));
    futures_util::future::select_all(waits).await;
}

/// The inbox's clocks ([`AgentConfig`]).
#[derive(Clone, Copy)]
struct Timing {
    keepalive: Duration,
    connect_timeout: Duration,
}

async fn inbox(
    inner: std::sync::Weak<Inner>,
    mut live: LiveConnection,
    mut ack_rx: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
    timing: Timing,
) {
    // Failed re-connects in a row (spec: exponential backoff with jitter, client.rs).
    let mut failures = 0u32;
    // Since when the live connection is down (reported once when it drops, once when back).
    let mut down_since: Option<tokio::time::Instant> = None;
    // Messages waiting for their sender's did:web document, and the fetches' answers.
    let mut lanes = lanes::Lanes::default();
    let (fetched_tx, mut fetched_rx) = mpsc::unbounded_channel::<String>();
    'inbox: loop {
        let blocked = inner
            .upgrade()
            .map(|a| a.blocked_subscribers())
            .unwrap_or_default();
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            () = room(blocked) => {
                if let Some(agent) = inner.upgrade() {
                    agent.flush();
                }
                continue;
            }
            Some(qid) = ack_rx.recv() => {
                let mut ids = vec![qid];
                while let Ok(more) = ack_rx.try_recv() { ids.push(more); }
                if let Err(e) = live.ack(&ids).await {
                    tracing::debug!("ack failed ({e}); the mediator will deliver again");
                }
                continue;
            }
            // A connection that died without a close (NAT expiry, a hard reboot) sends
            // nothing, and an idle one would be closed by the mediator: keep it alive and
            // notice when it is not (spec/mediator.md §8 "Keep-alive and opening").
            () = tokio::time::sleep_until(live.keep_alive_at(timing.keepalive)) => {
                match live.keep_alive(timing.keepalive).await {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                }
            }
            // A sender's did:web document was fetched (or failed): its lane goes on.
            Some(did) = fetched_rx.recv() => {
                let Some(agent) = inner.upgrade() else { break };
                let mut turn = Turn::new(&agent, &mut lanes, &fetched_tx, &stop, &mut live, timing.keepalive);
                for item in turn.lanes.take(&did) {
                    let going = match item {
                        lanes::Waiting::Packed(d) => turn.take_packed(d, Some(&did)).await,
                        lanes::Waiting::Unpacked(id, inbound) => turn.deliver(*inbound, id).await,
                    };
                    if !going {
                        break 'inbox;
                    }
                }
                turn.finish().await;
                continue;
            }
            b = live.next_batch(timing.keepalive) => b,
        };
        let Some(agent) = inner.upgrade() else { break };
        match batch {
            Ok(items) => {
                failures = 0;
                let mut turn = Turn::new(
                    &agent,
                    &mut lanes,
                    &fetched_tx,
                    &stop,
                    &mut live,
                    timing.keepalive,
                );
                for d in items {
                    if !turn.take_packed(d, None).await {
                        break 'inbox;
                    }
                }
                turn.finish().await;
            }
            Err(ClientError::Timeout) => {}
            Err(e) => {
                let pause = crate::client::reconnect_delay(failures);
                tracing::warn!("live connection lost ({e}); reconnecting in {pause:?}");
                if down_since.is_none() {
                    down_since = Some(tokio::time::Instant::now());
                    let _ = agent
                        .live_events
                        .send(LiveEvent::Lost { why: e.to_string() });
                }
                // Do not keep the agent alive while we wait.
                drop(agent);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
                let Some(agent) = inner.upgrade() else { break };
                match agent.client.live_within(timing.connect_timeout).await {
                    Ok(l) => {
                        tracing::info!("live connection to the mediator is back");
                        if let Some(t) = down_since.take() {
                            let _ = agent
                                .live_events
                                .send(LiveEvent::Back { after: t.elapsed() });
                        }
                        live = l;
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!("reconnect failed: {e}");
                    }
                }
            }
        }
    }
    live.close().await;
}

/// How long a lane's fetch asks a busy resolver again (too many did:web fetches in flight)
/// before its messages are given up.
const FETCH_PATIENCE: Duration = Duration::from_secs(30);

/// The authenticated sender of an unpacked message: the authcrypt sender's or the
/// signer's DID.
fn sender_of(meta: &UnpackMetadata) -> Option<String> {
    meta.encrypted_from_kid
        .as_deref()
        .or(meta.sign_from.as_deref())
        .map(|kid| kid.split('#').next().unwrap_or(kid).to_owned())
}

/// One turn of the inbox over delivered messages: what handling them needs, and the
/// acknowledgements they leave (sent by [`Turn::finish`]).
struct Turn<'a> {
    agent: &'a Inner,
    lanes: &'a mut lanes::Lanes,
    fetched_tx: &'a mpsc::UnboundedSender<String>,
    stop: &'a CancellationToken,
    live: &'a mut LiveConnection,
    keepalive: Duration,
    acks: Vec<String>,
}

impl<'a> Turn<'a> {
    fn new(
        agent: &'a Inner,
        lanes: &'a mut lanes::Lanes,
        fetched_tx: &'a mpsc::UnboundedSender<String>,
        stop: &'a CancellationToken,
        live: &'a mut LiveConnection,
        keepalive: Duration,
    ) -> Self {
        Self {
            agent,
            lanes,
            fetched_tx,
            stop,
            live,
            keepalive,
            acks: Vec::new(),
        }
    }

    /// Acknowledges what this turn delivered or dropped.
    async fn finish(self) {
        if let Err(e) = self.live.ack(&self.acks).await {
            tracing::debug!("ack failed ({e}); the mediator will deliver again");
        }
    }

    /// One delivered message: unpacked and routed, or parked in the lane of the DID whose
    /// document it needs (spec/lobby.md §7 "Lanes"; the fetch starts with the lane).
    /// `fetched` is the DID whose lane is being unpacked again: needing it once more means
    /// its document could not be had, and the message is dropped. Returns false if the
    /// agent stopped.
    async fn take_packed(&mut self, d: Delivered, fetched: Option<&str>) -> bool {
        use crate::client::LocalUnpack;
        match self.agent.client.unpack_local(&d.bytes).await {
            LocalUnpack::Done(message, meta) => {
                let inbound = Inbound {
                    sender: sender_of(&meta),
                    message: *message,
                    meta: *meta,
                };
                self.route_unpacked(d.id, inbound).await
            }
            LocalUnpack::NeedsFetch(did) if fetched != Some(did.as_str()) => {
                if !self.lanes.has_room(&did) {
                    // Over a bound: waiting here would hold everyone's messages behind a
                    // fetch, and leaving it unacknowledged would fill the mediator's live
                    // window; so it is dropped (spec/lobby.md §7 "Lanes", bounds).
                    tracing::warn!(
                        "dropping a message that needs the DID document of {did}: {} messages \
                         already wait for did:web documents",
                        lanes::MAX_WAITING
                    );
                    self.acks.push(d.id);
                    return true;
                }
                if self.lanes.park(&did, lanes::Waiting::Packed(d)) {
                    tracing::debug!("fetching the DID document of {did}; its messages wait");
                    let (client, tx) = (self.agent.client.clone(), self.fetched_tx.clone());
                    tokio::spawn(async move {
                        if let Err(e) = client.fetch_document(&did, FETCH_PATIENCE).await {
                            tracing::info!("the DID document of {did} could not be fetched: {e}");
                        }
                        let _ = tx.send(did);
                    });
                }
                true
            }
            LocalUnpack::NeedsFetch(did) => {
                tracing::warn!(
                    "dropping a message from {did}: its DID document could not be fetched"
                );
                self.acks.push(d.id);
                true
            }
            LocalUnpack::Failed(e) => {
                // It can never be read: acknowledge so it is not redelivered forever.
                tracing::warn!("dropping a message that does not unpack: {e}");
                self.acks.push(d.id);
                true
            }
        }
    }

    /// An unpacked message: routed now, or queued behind its sender's earlier messages
    /// that still wait for a document (over a bound it is delivered now, ahead of them).
    /// Returns false if the agent stopped.
    async fn route_unpacked(&mut self, id: String, inbound: Inbound) -> bool {
        match inbound.sender.clone() {
            Some(sender) if self.lanes.is_waiting(&sender) && self.lanes.has_room(&sender) => {
                self.lanes
                    .park(&sender, lanes::Waiting::Unpacked(id, Box::new(inbound)));
                true
            }
            _ => self.deliver(inbound, id).await,
        }
    }

    /// Dispatches one unpacked message, waiting while its lossless subscriber is behind
    /// (spec/lobby.md §7: take nothing more from the mediator until it has room) and
    /// keeping the live connection alive meanwhile (spec/mediator.md §8). Returns false if
    /// the agent stopped meanwhile.
    async fn deliver(&mut self, inbound: Inbound, id: String) -> bool {
        let mut next = inbound;
        loop {
            match self.agent.dispatch(next, &id) {
                Dispatched::Ack => self.acks.push(id),
                Dispatched::Keep => {}
                Dispatched::Wait(m, tx) => {
                    if !self.wait_for_room(&tx).await {
                        return false;
                    }
                    next = *m;
                    continue;
                }
            }
            return true;
        }
    }

    /// Waits until `tx` has room, pinging the mediator as the keep-alive is due: a
    /// subscriber may be behind for longer than the mediator's idle timeout or a NAT's
    /// mapping lasts. Returns false if the agent stopped.
    async fn wait_for_room(&mut self, tx: &mpsc::Sender<Inbound>) -> bool {
        let mut pinging = true;
        loop {
            let ping_at = self.live.keep_alive_at(self.keepalive);
            tokio::select! {
                () = self.stop.cancelled() => return false,
                _ = tx.reserve() => return true,
                () = tokio::time::sleep_until(ping_at), if pinging => {
                    if let Err(e) = self.live.keep_alive(self.keepalive).await {
                        // The next read notices and re-connects; what we hold is delivered again.
                        tracing::debug!("keep-alive while a subscriber is behind failed: {e}");
                        pinging = false;
                    }
                }
            }
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good (not [`AgentError::is_transient`]), or
/// `limit` has passed since the start (a try still running then ends as
/// [`AgentError::Timeout`]); waits `pause` between tries. Returns the number of tries.
async fn within_limit<F, Fut>(
    limit: Duration,
    pause: Duration,
    mut attempt: F,
) -> (u32, Result<(), AgentError>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), AgentError>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, attempt()).await {
            Err(_) => {
                return (
                    tries,
                    Err(AgentError::Timeout(format!("an answer within {limit:?}"))),
                )
            }
            Ok(Err(e))
                if e.is_transient()
                    && deadline.saturating_duration_since(tokio::time::Instant::now()) > pause =>
            {
                tracing::debug!(tries, "send failed for now ({e}); trying again");
                tokio::time::sleep(pause).await;
            }
            Ok(r) => return (tries, r),
        }
    }
}

#[cfg(test)]
mod retry_tests {
    use super::*;

    fn busy() -> AgentError {
        AgentError::Client(ClientError::Unexpected(
            "HTTP 503 Service Unavailable".into(),
        ))
    }

    // A mediator that answers 503 twice, then takes the message: three tries, success.
    #[tokio::test]
    async fn transient_failures_are_tried_again_within_the_limit() {
        let mut n = 0;
        let (tries, r) = within_limit(Duration::from_secs(5), Duration::from_millis(20), || {
            n += 1;
            let r = if n <= 2 { Err(busy()) } else { Ok(()) };
            async move { r }
        })
        .await;
        assert_eq!(tries, 3);
        assert!(r.is_ok(), "{r:?}");
    }

    // A permanent refusal is not tried again; a mediator busy for longer than the limit
    // ends with its last error once no pause fits; one that never answers ends at the limit.
    #[tokio::test]
    async fn permanent_failures_and_the_limit_end_the_tries() {
        let denied = || async { Err(AgentError::Client(ClientError::Denied)) };
        let (tries, r) =
            within_limit(Duration::from_secs(5), Duration::from_millis(250), denied).await;
        assert_eq!(tries, 1);
        assert!(
            matches!(r, Err(AgentError::Client(ClientError::Denied))),
            "{r:?}"
        );

        // 1 s with 250 ms pauses: 4 tries (0, 0.25, 0.5, 0.75 s), then no pause fits.
        let (tries, r) = tokio::time::timeout(
            Duration::from_secs(10),
            within_limit(
                Duration::from_secs(1),
                Duration::from_millis(250),
                || async { Err(busy()) },
            ),
        )
        .await
        .expect("the limit ends the tries");
        assert!(r.as_ref().is_err_and(AgentError::is_transient), "{r:?}");
        assert!((2..=4).contains(&tries), "{tries}");

        let (tries, r) = within_limit(
            Duration::from_millis(300),
            Duration::from_millis(50),
            std::future::pending::<Result<(), AgentError>>,
        )
        .await;
        assert_eq!(tries, 1);
        assert!(matches!(r, Err(AgentError::Timeout(_))), "{r:?}");
    }
}
