//! A party's control plane: its DIDComm v2 messages, sent through mediators and received
//! from its own mediator over one live WebSocket.
//!
//! **Owns**: the inbox task (Message Pickup 3.0 live mode, reconnecting with backoff),
//! de-duplication by message id (delivery is at-least-once), dispatch of unpacked messages
//! to subscribers by message-type prefix (`https://mpc-did.org/session/1.0/`,
//! `…/lobby/1.0/`), and endpoints learnt for DIDs whose documents name none (did:key).
//!
//! **Does not**: interpret protocols (the session and lobby code subscribe), or store
//! anything: a message is acknowledged to the mediator only once a subscriber took it, so
//! what nobody claimed is delivered again after a restart.
//!
//! ```text
//!  mediator ══ WS live delivery ══▶ inbox task ─unpack─▶ dedup ─▶ subscriber(type prefix) ─▶ ack
//!                                                          └────▶ unclaimed (bounded; not acked)
//!  Agent::send(to, msg) ─authcrypt─▶ forward for to's routing keys ─HTTP POST─▶ to's mediator
//! ```
//!
//! ```no_run
//! # async fn demo(client: mpc_did_mediator::client::MediatorClient) -> Result<(), mpc_did_agent::AgentError> {
//! let agent = mpc_did_agent::Agent::start(client).await?;
//! let mut pings = agent.subscribe("https://didcomm.org/trust-ping/2.0/");
//! if let Some(inbound) = pings.recv().await {
//!     println!("ping from {:?}", inbound.sender);
//! }
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpc_did_didcomm::{Message, UnpackMetadata};
use mpc_did_mediator::client::{ClientError, Delivered, LiveConnection, MediatorClient};
use mpc_did_resolver::{DidCommService, DidResolver as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The HTTP client type the mediator client uses (re-exported through its constructor).
mod reqwest_client {
    pub type Client = reqwest::Client;
}

/// Messages held for subscribers that have not subscribed yet.
const MAX_UNCLAIMED: usize = 256;
/// Message ids remembered for de-duplication.
const MAX_SEEN: usize = 4096;

/// What can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The mediator or a peer's endpoint failed or refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A DID could not be resolved.
    #[error("cannot resolve {did}: {reason}")]
    Resolve { did: String, reason: String },
    /// No message of the expected kind arrived in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The agent has stopped.
    #[error("the control plane has stopped")]
    Stopped,
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

struct Sub {
    prefix: String,
    tx: mpsc::Sender<Inbound>,
}

#[derive(Default)]
struct Dispatch {
    subs: Vec<Sub>,
    unclaimed: VecDeque<(Inbound, String)>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
}

struct Inner {
    client: MediatorClient,
    http: reqwest_client::Client,
    dispatch: Mutex<Dispatch>,
    /// Queue ids claimed by a subscriber, to acknowledge to the mediator.
    acks: mpsc::UnboundedSender<String>,
    stop: CancellationToken,
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
    /// Connect to our mediator in live mode and start receiving.
    ///
    /// # Errors
    /// The first live connection fails (later failures are retried in the background).
    pub async fn start(client: MediatorClient) -> Result<Self, AgentError> {
        let live = client.live().await?;
        let (acks, ack_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let http = mpc_did_mediator::client::new_http_client()?;
        let inner = Arc::new(Inner {
            client,
            http,
            dispatch: Mutex::new(Dispatch::default()),
            acks,
            stop: stop.clone(),
        });
        tokio::spawn(inbox(Arc::downgrade(&inner), live, ack_rx, stop.clone()));
        Ok(Self {
            inner,
            _guard: Arc::new(stop.drop_guard()),
        })
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

    /// Send `msg` to `to` (authcrypt from us, forwarded through `to`'s mediator).
    ///
    /// # Errors
    /// `to` has no known endpoint, or its mediator refused.
    pub async fn send(&self, to: &str, msg: Message) -> Result<(), AgentError> {
        self.inner.client.send(to, msg).await?;
        Ok(())
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
        mpc_did_mediator::client::post_packed(
            &self.inner.http,
            &svc.uri,
            packed.message.into_bytes(),
        )
        .await?;
        Ok(())
    }

    /// Receive every message whose type starts with `type_prefix` (including ones that
    /// arrived before this call and nobody claimed yet). One subscriber per prefix: a new
    /// subscription replaces an older one.
    #[must_use]
    pub fn subscribe(&self, type_prefix: &str) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(256);
        let mut claimed = Vec::new();
        if let Ok(mut d) = self.inner.dispatch.lock() {
            d.subs
                .retain(|s| s.prefix != type_prefix && !s.tx.is_closed());
            let mut keep = VecDeque::new();
            while let Some((m, qid)) = d.unclaimed.pop_front() {
                if m.message.type_.starts_with(type_prefix) {
                    match tx.try_send(m) {
                        Ok(()) => claimed.push(qid),
                        Err(e) => keep.push_back((e.into_inner(), qid)),
                    }
                } else {
                    keep.push_back((m, qid));
                }
            }
            d.unclaimed = keep;
            d.subs.push(Sub {
                prefix: type_prefix.to_owned(),
                tx,
            });
        }
        for qid in claimed {
            let _ = self.inner.acks.send(qid);
        }
        rx
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

impl Inner {
    /// Route one unpacked message; returns whether it may be acknowledged now.
    fn dispatch(&self, inbound: Inbound, qid: &str) -> bool {
        let Ok(mut d) = self.dispatch.lock() else {
            return false;
        };
        if !inbound.message.id.is_empty() {
            if d.seen.contains(&inbound.message.id) {
                return true; // a redelivery of something already handled
            }
            d.seen.insert(inbound.message.id.clone());
            d.seen_order.push_back(inbound.message.id.clone());
            if d.seen_order.len() > MAX_SEEN {
                if let Some(old) = d.seen_order.pop_front() {
                    d.seen.remove(&old);
                }
            }
        }
        d.subs.retain(|s| !s.tx.is_closed());
        let target = d
            .subs
            .iter()
            .find(|s| inbound.message.type_.starts_with(&s.prefix))
            .map(|s| s.tx.clone());
        let unclaimed = match target {
            Some(tx) => match tx.try_send(inbound) {
                Ok(()) => return true,
                Err(e) => e.into_inner(),
            },
            None => inbound,
        };
        // Nobody wants it (yet), or its subscriber is behind: keep it, unacknowledged, so
        // it is not lost; the mediator still has it if we stop first.
        d.unclaimed.push_back((unclaimed, qid.to_owned()));
        if d.unclaimed.len() > MAX_UNCLAIMED {
            d.unclaimed.pop_front();
        }
        false
    }
}

async fn inbox(
    inner: std::sync::Weak<Inner>,
    mut live: LiveConnection,
    mut ack_rx: mpsc::UnboundedReceiver<String>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let batch = tokio::select! {
            () = stop.cancelled() => break,
            Some(qid) = ack_rx.recv() => {
                let mut ids = vec![qid];
                while let Ok(more) = ack_rx.try_recv() { ids.push(more); }
                if let Err(e) = live.ack(&ids).await {
                    tracing::debug!("ack failed ({e}); the mediator will deliver again");
                }
                continue;
            }
            b = live.next_batch(Duration::from_secs(25)) => b,
        };
        let Some(agent) = inner.upgrade() else { break };
        match batch {
            Ok(items) => {
                backoff = Duration::from_millis(200);
                let mut acks = Vec::new();
                for Delivered { id, bytes } in items {
                    match agent.client.unpack(&bytes).await {
                        Ok((message, meta)) => {
                            let sender = meta
                                .encrypted_from_kid
                                .as_deref()
                                .or(meta.sign_from.as_deref())
                                .map(|kid| kid.split('#').next().unwrap_or(kid).to_owned());
                            let inbound = Inbound {
                                message,
                                meta,
                                sender,
                            };
                            if agent.dispatch(inbound, &id) {
                                acks.push(id);
                            }
                        }
                        Err(e) => {
                            // It can never be read: acknowledge so it is not redelivered forever.
                            tracing::warn!("dropping a message that does not unpack: {e}");
                            acks.push(id);
                        }
                    }
                }
                if let Err(e) = live.ack(&acks).await {
                    tracing::debug!("ack failed ({e}); the mediator will deliver again");
                }
            }
            Err(ClientError::Timeout) => {}
            Err(e) => {
                tracing::warn!("live connection lost ({e}); reconnecting in {backoff:?}");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match agent.client.live().await {
                    Ok(l) => live = l,
                    Err(e) => tracing::warn!("reconnect failed: {e}"),
                }
            }
        }
    }
    live.close().await;
}
