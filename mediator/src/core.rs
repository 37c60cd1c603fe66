//! What the mediator does with one DIDComm message: unpack, authorize, act on the store,
//! and build the replies. Transport-independent: the HTTP and WebSocket shells call
//! [`Core::handle`] and carry out the returned [`Handled`].

use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mpc_did_didcomm::protocols::discover_features::{self, Disclosure};
use mpc_did_didcomm::protocols::routing::ForwardMessage;
use mpc_did_didcomm::{
    did_of, pack_encrypted_with, unpack_with, Message, PackOptions, StaticEcdhCache, UnpackOptions,
};
use mpc_did_resolver::UniversalResolver;
use serde_json::{json, Value};

use crate::config::Config;
use crate::guard::{
    Quota, ReplayCache, Reservation, Seen, SourceAddr, SourceQuotas, REPLAY_CACHE_MAX,
};
use crate::identity::MediatorIdentity;
use crate::messages::{
    ack_of, codes, message_attachment, problem_report, reply, types, wants_ack, PROTOCOLS,
};
use crate::metrics::{Metrics, Rejection};
use crate::store::{AnyStore, KeyUpdate, QueueLimits, Store, StoreError, StoredMessage};
use crate::versions::{state_changing, Mediation};
use mpc_did_didcomm::protocols::coordinate_mediation::{
    CoordinateMediationTypes, CoordinateMediationVersion as CmVersion,
};
use mpc_did_didcomm::protocols::coordinate_mediation_v3 as cm3;
use mpc_did_didcomm::protocols::pickup::PickupVersion;
use mpc_did_didcomm::protocols::pickup_v4::LIVE_BACKLOG_FIELD;

/// How long request ids are remembered against replay, and how far `created_time` may be
/// from now (spec/mediator.md §3).
pub(crate) const REPLAY_WINDOW: Duration = Duration::from_secs(300);
/// Longest message `id`, `thid` or `pthid` accepted (UUIDs are 36 characters). Ids are
/// echoed in replies and remembered against replay, so they must not be megabytes.
pub(crate) const MAX_ID_LEN: usize = 256;
/// Requests that change state (a grant, keys, a queue, a socket's live mode) must carry
/// `created_time`: a captured one cannot be replayed after the replay window.
// Which requests change state, in every protocol version: `versions::state_changing`.
/// Peers whose static-static ECDH-1PU share is remembered (spec/didcomm.md §4): about
/// 150 bytes each, so at most a few MiB.
const ECDH_CACHE_MAX: usize = 16_384;

/// The transport a message arrived on (live delivery needs a socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP POST; replies go in the response body.
    Http,
    /// WebSocket; replies and live pushes go on the socket.
    WebSocket,
}

/// The result of handling one inbound message.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    /// Packed replies, in order.
    pub replies: Vec<Vec<u8>>,
    /// Set when the message was refused; the reply (if any) is the problem report.
    pub rejection: Option<Rejection>,
    /// Live mode switched for this authenticated DID (WebSocket only).
    pub live: Option<(String, bool)>,
    /// With `live` on: the client asked for raw pushes (spec/mediator.md §3.1) and the
    /// status reply acknowledged them.
    pub live_raw: bool,
    /// Message ids acknowledged with `messages-received`, and the DID they belong to.
    pub received: Option<(String, Vec<String>)>,
    /// The message was accepted from an authenticated DID: a WebSocket that carried one is
    /// no longer anonymous (spec/mediator.md §6.1 `ws_auth_timeout_secs`).
    pub authenticated: bool,
    /// A forward was accepted and stored (what keeps an anonymous sender's WebSocket open).
    pub stored: bool,
    /// With `live` on: the Message Pickup version the live pushes speak (that of the
    /// `live-delivery-change`).
    pub live_pickup: PickupVersion,
    /// With `live` on: queued ids this socket must not push (Pickup 4.0: "Messages
    /// already in the queue are not affected by Live Mode", spec/mediator.md §3.2).
    pub live_skip: Vec<String>,
    /// The authenticated sender's DID, if any (access log: logged as a hash).
    pub did: Option<String>,
    /// The message type, if the message unpacked (access log).
    pub kind: Option<String>,
}

/// Shared state of one mediator instance.
pub(crate) struct Core {
    /// The mediator's identity.
    pub identity: MediatorIdentity,
    /// Configuration in force.
    pub config: Config,
    /// Queues, grants, keys.
    pub store: AnyStore,
    /// Counters.
    pub metrics: Metrics,
    resolver: UniversalResolver,
    replay: Mutex<ReplayCache>,
    quotas: Mutex<SourceQuotas>,
    disclosures: Vec<Disclosure>,
    /// `X25519(mediator key, client key)` per client: every delivery to a DID and every
    /// authcrypt request from it share this half of ECDH-1PU.
    ecdh: StaticEcdhCache,
    /// `limits.rate_per_did` (spec/mediator.md §6.1).
    did_rate: Mutex<crate::guard::KeyedRate<String>>,
}

/// Who sent an unpacked message, as far as the envelope proves; replies are packed for it.
pub(crate) struct Sender {
    /// The DID authenticated by authcrypt (and equal to `from`, which unpack checks).
    did: Option<String>,
    encrypted: bool,
    /// The address the message came from (per-source quotas).
    source: SourceAddr,
}

fn now_secs() -> u64 {
    crate::store::now_ms() / 1000
}

impl Core {
    /// Builds the core.
    pub(crate) fn new(
        identity: MediatorIdentity,
        config: Config,
        store: AnyStore,
        resolver: UniversalResolver,
    ) -> Self {
        let disclosures = PROTOCOLS
            .iter()
            .map(|(id, role)| Disclosure {
                feature_type: "protocol".into(),
                id: (*id).to_owned(),
                roles: vec![(*role).to_owned()],
            })
            .collect();
        let config_rate_per_did = config.limits.rate_per_did;
        let quotas = SourceQuotas::new(
            config.limits.max_queued_per_source,
            config.limits.max_queued_bytes_per_source,
            Duration::from_secs(config.limits.source_quota_secs),
        );
        Self {
            identity,
            config,
            store,
            metrics: Metrics::default(),
            quotas: Mutex::new(quotas),
            resolver,
            replay: Mutex::new(ReplayCache::new(REPLAY_WINDOW, REPLAY_CACHE_MAX)),
            disclosures,
            ecdh: StaticEcdhCache::new(ECDH_CACHE_MAX),
            did_rate: Mutex::new(crate::guard::KeyedRate::new(
                config_rate_per_did,
                config_rate_per_did.saturating_mul(2),
                crate::guard::RATE_KEYS_MAX,
            )),
        }
    }

    fn limits(&self) -> QueueLimits {
        QueueLimits {
            max_messages: self.config.limits.max_queue_messages,
            max_bytes: self.config.limits.max_queue_bytes,
        }
    }

    /// A refusal before the message could be unpacked (size, rate): a plaintext problem
    /// report.
    pub(crate) fn refuse_raw(&self, why: Rejection, code: &str, comment: &str) -> Handled {
        self.metrics.reject(why);
        Handled {
            replies: vec![plain(&problem_report(code, comment, None))],
            rejection: Some(why),
            ..Handled::default()
        }
    }

    /// Handles one packed DIDComm message that arrived from `source`.
    pub(crate) async fn handle(
        &self,
        raw: &[u8],
        transport: Transport,
        source: SourceAddr,
    ) -> Handled {
        self.handle_on(raw, transport, source, None).await
    }

    /// As [`Self::handle`], on a WebSocket whose live mode is on for `live_did` (so a
    /// `status` for that DID says `live_delivery: true`, as Pickup 3.0/4.0 ask).
    pub(crate) async fn handle_on(
        &self,
        raw: &[u8],
        transport: Transport,
        source: SourceAddr,
        live_did: Option<&str>,
    ) -> Handled {
        self.metrics.messages_in.fetch_add(1, Ordering::Relaxed);
        let max = usize::try_from(self.config.limits.max_message_bytes).unwrap_or(usize::MAX);
        if raw.len() > max {
            return self.refuse_raw(
                Rejection::TooLarge,
                codes::TOO_BIG,
                &format!("message larger than {max} bytes"),
            );
        }
        let opts = UnpackOptions { max_size: max };
        let unpacked = unpack_with(
            raw,
            &self.resolver,
            &self.identity.secrets,
            &opts,
            Some(&self.ecdh),
        )
        .await;
        let (msg, meta) = match unpacked {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "unpack failed");
                return self.refuse_raw(
                    Rejection::Malformed,
                    codes::MALFORMED,
                    "cannot unpack this message (not DIDComm v2, not for this mediator, or failed authentication)",
                );
            }
        };
        let sender = Sender {
            did: meta
                .encrypted_from_kid
                .as_deref()
                .map(|k| did_of(k).to_owned()),
            encrypted: meta.encrypted,
            source,
        };
        let long = [Some(&msg.id), msg.thid.as_ref(), msg.pthid.as_ref()]
            .into_iter()
            .flatten()
            .any(|i| i.len() > MAX_ID_LEN);
        if long {
            // Answer without echoing the id (the problem report's pthid would carry it).
            self.metrics.reject(Rejection::Malformed);
            let pr = problem_report(
                codes::BAD_REQUEST,
                &format!("id, thid and pthid must be at most {MAX_ID_LEN} bytes"),
                None,
            );
            return Handled {
                replies: vec![self.pack(pr, &sender).await],
                rejection: Some(Rejection::Malformed),
                ..Handled::default()
            };
        }
        if let Some(did) = &sender.did {
            let allowed = self
                .did_rate
                .lock()
                .is_ok_and(|mut r| r.allow(did, Instant::now()));
            if !allowed {
                self.metrics.reject(Rejection::RateLimited);
                let pr = problem_report(
                    codes::RATE_LIMITED,
                    "too many requests from this DID: slow down",
                    Some(&msg),
                );
                return Handled {
                    replies: vec![self.pack(pr, &sender).await],
                    rejection: Some(Rejection::RateLimited),
                    did: Some(did.clone()),
                    kind: Some(msg.type_.clone()),
                    ..Handled::default()
                };
            }
        }
        let mut out = self.dispatch(&msg, &sender, transport, live_did).await;
        if out.rejection.is_some() {
            tracing::debug!(typ = %msg.type_, rejection = ?out.rejection, "refused");
        } else {
            out.authenticated = sender.did.is_some();
        }
        out.did.clone_from(&sender.did);
        out.kind = Some(msg.type_.clone());
        out
    }

    async fn dispatch(
        &self,
        msg: &Message,
        sender: &Sender,
        transport: Transport,
        live_did: Option<&str>,
    ) -> Handled {
        // Freshness checks apply to authenticated requests; forwards are idempotent by
        // content (spec/mediator.md §3). The replay cache comes later, once the request is
        // known to be one a grant allows (`remember`).
        if sender.did.is_some() {
            let now = now_secs();
            let window = REPLAY_WINDOW.as_secs();
            if msg.expires_time.is_some_and(|e| e < now) {
                return self
                    .refuse(
                        msg,
                        sender,
                        Rejection::Replay,
                        codes::REPLAY,
                        "message expired",
                    )
                    .await;
            }
            if msg.created_time.is_none() && state_changing(&msg.type_) {
                return self
                    .refuse(
                        msg,
                        sender,
                        Rejection::Replay,
                        codes::REPLAY,
                        "created_time is required on this request",
                    )
                    .await;
            }
            if msg
                .created_time
                .is_some_and(|c| c.saturating_add(window) < now || c > now + window)
            {
                return self
                    .refuse(
                        msg,
                        sender,
                        Rejection::Replay,
                        codes::REPLAY,
                        "created_time outside the replay window",
                    )
                    .await;
            }
        }
        match msg.type_.as_str() {
            types::FORWARD => self.forward(msg, sender).await,
            types::PING => {
                let wanted = msg
                    .body
                    .get("response_requested")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let mut h = Handled::default();
                if wanted {
                    h.replies.push(
                        self.pack(reply(types::PING_RESPONSE, json!({}), msg), sender)
                            .await,
                    );
                }
                h
            }
            types::QUERIES => match discover_features::disclose(msg, &self.disclosures) {
                Ok(d) => self.answer(d, sender).await,
                Err(_) => {
                    self.refuse(
                        msg,
                        sender,
                        Rejection::Malformed,
                        codes::BAD_REQUEST,
                        "bad queries body",
                    )
                    .await
                }
            },
            types::PROBLEM_REPORT => {
                // Anyone may send one, up to the message size limit: the log gets its code
                // and the start of its comment, not a megabyte of stranger-chosen text.
                tracing::info!(
                    from = ?sender.did,
                    code = %clip(msg.body.get("code").unwrap_or(&serde_json::Value::Null), 64),
                    comment = %clip(msg.body.get("comment").unwrap_or(&serde_json::Value::Null), 200),
                    "problem report received"
                );
                Handled::default()
            }
            t if Mediation::of(t).is_some() => {
                let Some(did) = sender.did.clone() else {
                    return self
                        .refuse(
                            msg,
                            sender,
                            Rejection::Unauthorized,
                            codes::UNAUTHORIZED,
                            "this request must be authcrypt-encrypted by its sender",
                        )
                        .await;
                };
                let route = Mediation::of(t);
                if let Some(Mediation::Cm(cm, name)) = route {
                    // Coordinate Mediation 3.0 bodies are read strictly (spec/mediator.md
                    // §3.2): a field the protocol does not define is refused, named.
                    if cm == CmVersion::V3 {
                        if let Err(e) = cm3_body_ok(msg, name) {
                            return self.bad_request(msg, sender, &e.to_string()).await;
                        }
                    }
                    if name == "mediate-request" {
                        return self.mediate_request(msg, sender, &did, cm).await;
                    }
                }
                match self.store.has_grant(&did).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return self
                            .refuse(
                                msg,
                                sender,
                                Rejection::Unauthorized,
                                codes::UNAUTHORIZED,
                                "no mediation grant for this DID: send mediate-request first",
                            )
                            .await
                    }
                    Err(e) => return self.storage_failed(msg, sender, &e).await,
                }
                if let Some(refused) = self.remember(msg, sender, &did).await {
                    return refused;
                }
                let res = match route {
                    Some(Mediation::Cm(cm, "recipient-update")) => {
                        self.recipient_update(msg, sender, &did, cm).await
                    }
                    Some(Mediation::Cm(cm, "recipient-query")) => {
                        self.recipient_query(msg, sender, &did, cm).await
                    }
                    Some(Mediation::Pickup(p, "status-request")) => {
                        let live = live_did == Some(did.as_str());
                        self.status(msg, sender, &did, live, Extensions::default(), p)
                            .await
                    }
                    Some(Mediation::Pickup(p, "delivery-request")) => {
                        let live = live_did == Some(did.as_str());
                        self.delivery_request(msg, sender, &did, p, live).await
                    }
                    Some(Mediation::Pickup(p, "messages-received")) => {
                        let live = live_did == Some(did.as_str());
                        self.messages_received(msg, sender, &did, p, live).await
                    }
                    Some(Mediation::Pickup(p, "live-delivery-change")) => {
                        self.live_change(msg, sender, &did, transport, p).await
                    }
                    _ => Ok(self
                        .refuse(
                            msg,
                            sender,
                            Rejection::Unsupported,
                            codes::UNSUPPORTED,
                            "unsupported message type",
                        )
                        .await),
                };
                match res {
                    Ok(h) => h,
                    Err(e) => self.storage_failed(msg, sender, &e).await,
                }
            }
            _ => {
                self.refuse(
                    msg,
                    sender,
                    Rejection::Unsupported,
                    codes::UNSUPPORTED,
                    "unsupported message type",
                )
                .await
            }
        }
    }

    /// Records a granted DID's request in the replay cache (spec/mediator.md §3 rule 5);
    /// the refusal if it is a replay or its source has used up its share of the cache.
    /// Called only after the grant check: what a stranger sends without a grant, of a
    /// type nobody handles, or that needs no grant (`mediate-request`, whose replay grants
    /// nothing the DID could not ask for again, pings, queries, problem reports,
    /// forwards) is never remembered, so it cannot fill the cache for others.
    async fn remember(&self, msg: &Message, sender: &Sender, did: &str) -> Option<Handled> {
        let seen = self.replay.lock().map_or(Seen::Full, |mut c| {
            c.check_and_insert(did, &msg.id, sender.source, Instant::now())
        });
        match seen {
            Seen::Fresh => None,
            Seen::Full => Some(
                self.refuse(
                    msg,
                    sender,
                    Rejection::RateLimited,
                    codes::RATE_LIMITED,
                    "too many recent requests to check for replay; retry later",
                )
                .await,
            ),
            Seen::Replay => Some(
                self.refuse(
                    msg,
                    sender,
                    Rejection::Replay,
                    codes::REPLAY,
                    "message id already processed",
                )
                .await,
            ),
        }
    }

    async fn forward(&self, msg: &Message, sender: &Sender) -> Handled {
        if !sender.encrypted {
            return self
                .refuse(
                    msg,
                    sender,
                    Rejection::Unauthorized,
                    codes::UNAUTHORIZED,
                    "forward messages must be encrypted to the mediator",
                )
                .await;
        }
        let fwd = match ForwardMessage::from_message(msg) {
            Ok(f) => f,
            Err(e) => return self.bad_request(msg, sender, &e.to_string()).await,
        };
        if fwd.expires_time.is_some_and(|e| e < now_secs()) {
            return self
                .refuse(
                    msg,
                    sender,
                    Rejection::Replay,
                    codes::REPLAY,
                    "forward expired",
                )
                .await;
        }
        let owner = match self.owner_of(&fwd.next).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                return self
                    .refuse(
                        msg,
                        sender,
                        Rejection::UnknownRecipient,
                        codes::UNKNOWN_RECIPIENT,
                        "no mediated recipient has this key",
                    )
                    .await
            }
            Err(e) => return self.storage_failed(msg, sender, &e).await,
        };
        let bytes = fwd.forwarded_bytes();
        if !deliverable_alone(&bytes, &owner) {
            // Accepting it would leave the recipient's queue stuck: no delivery carrying it
            // fits what a party accepts (spec/mediator.md §3, "Delivery batches").
            return self
                .refuse(
                    msg,
                    sender,
                    Rejection::TooLarge,
                    codes::TOO_BIG,
                    &format!(
                        "the forwarded message ({} bytes) is too large to deliver: a delivery may be at most {MAX_DELIVERY_BYTES} bytes; send a smaller message",
                        bytes.len()
                    ),
                )
                .await;
        }
        let src = sender.source;
        // The place is taken under the id the message will be stored with, so that an
        // acknowledgement arriving before `settle` (a live recipient is fast) frees it.
        let id = crate::store::message_id(&bytes);
        let reservation = match self.reserve_place(&owner, src, &id, bytes.len()).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                let l = &self.config.limits;
                return self
                    .refuse(
                        msg,
                        sender,
                        Rejection::SourceQuota,
                        codes::SOURCE_QUOTA,
                        &format!(
                            "this address already has {} messages or {} bytes waiting for this recipient",
                            l.max_queued_per_source, l.max_queued_bytes_per_source
                        ),
                    )
                    .await;
            }
            Err(e) => return self.storage_failed(msg, sender, &e).await,
        };
        let res = self
            .store
            .enqueue(&owner, &fwd.next, &bytes, self.limits())
            .await;
        let stored = matches!(&res, Ok(e) if !e.duplicate);
        if let Ok(mut q) = self.quotas.lock() {
            q.settle(&owner, reservation, stored);
        }
        match res {
            Ok(e) => {
                if !e.duplicate {
                    self.metrics.messages_stored.fetch_add(1, Ordering::Relaxed);
                }
                let mut h = Handled {
                    stored: true,
                    ..Handled::default()
                };
                // A sender that asked (`please_ack`) is told the message is stored: the
                // WebSocket's durability acknowledgement, as 202 is HTTP's (§2).
                if wants_ack(msg) {
                    h.replies.push(self.pack(ack_of(msg), sender).await);
                }
                h
            }
            Err(StoreError::QueueFull(which)) => {
                self.refuse(
                    msg,
                    sender,
                    Rejection::QueueFull,
                    codes::QUEUE_FULL,
                    &format!("the recipient's queue is full ({which})"),
                )
                .await
            }
            Err(e) => self.storage_failed(msg, sender, &e).await,
        }
    }

    /// Takes `src`'s place for the message `id` (`len` bytes) in `owner`'s queue; `None`
    /// when `src` is at its quota (spec/mediator.md §6.1). Places held for
    /// `source_quota_secs` are freed only once the store says their messages no longer
    /// wait.
    async fn reserve_place(
        &self,
        owner: &str,
        src: SourceAddr,
        id: &str,
        len: usize,
    ) -> Result<Option<Reservation>, StoreError> {
        let len = u64::try_from(len).unwrap_or(u64::MAX);
        let mut checked = false;
        loop {
            let quota = self.quotas.lock().map_or(Quota::Full, |mut q| {
                q.reserve(owner, src, id, len, Instant::now())
            });
            match quota {
                Quota::Granted(r) => return Ok(Some(r)),
                Quota::Check(stale) if !checked => {
                    checked = true;
                    let still = self.store.still_queued(owner, &stale).await?;
                    if let Ok(mut q) = self.quotas.lock() {
                        q.confirm(owner, &stale, &still, Instant::now());
                    }
                }
                Quota::Check(_) | Quota::Full => return Ok(None),
            }
        }
    }

    /// The mediated DID that registered `next` (a DID, or a DID URL whose DID registered).
    async fn owner_of(&self, next: &str) -> Result<Option<String>, StoreError> {
        if let Some(o) = self.store.key_owner(next).await? {
            return Ok(Some(o));
        }
        let did = did_of(next);
        if did != next {
            return self.store.key_owner(did).await;
        }
        Ok(None)
    }

    async fn mediate_request(
        &self,
        msg: &Message,
        sender: &Sender,
        did: &str,
        cm: CmVersion,
    ) -> Handled {
        let policy = &self.config.mediation;
        let allowed = !policy.deny.iter().any(|d| d == did)
            && (policy.allow.is_empty() || policy.allow.iter().any(|d| d == did));
        if !allowed {
            self.metrics.reject(Rejection::Unauthorized);
            return Handled {
                replies: vec![
                    self.pack(reply(cm.types().mediate_deny, json!({}), msg), sender)
                        .await,
                ],
                rejection: Some(Rejection::Unauthorized),
                ..Handled::default()
            };
        }
        if let Err(e) = self.store.grant(did).await {
            return self.storage_failed(msg, sender, &e).await;
        }
        self.metrics.grants.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%did, "mediation granted");
        let grant = reply(
            cm.types().mediate_grant,
            json!({ "routing_did": cm.routing_did(&self.identity.did) }),
            msg,
        );
        self.answer(grant, sender).await
    }

    async fn recipient_update(
        &self,
        msg: &Message,
        sender: &Sender,
        did: &str,
        cm: CmVersion,
    ) -> Result<Handled, StoreError> {
        let Some(updates) = msg.body.get("updates").and_then(Value::as_array) else {
            return Ok(self
                .bad_request(msg, sender, "body.updates must be an array")
                .await);
        };
        // Refused before any store work: a 12,000-entry update cost 0.5 s and a 1 MiB reply.
        let max_updates = self.config.limits.max_updates_per_request;
        if updates.len() as u64 > max_updates {
            return Ok(self
                .refuse(
                    msg,
                    sender,
                    Rejection::TooLarge,
                    codes::TOO_BIG,
                    &format!("at most {max_updates} updates per recipient-update"),
                )
                .await);
        }
        let mut count = self.store.keys(did).await?.len() as u64;
        let mut updated = Vec::with_capacity(updates.len());
        for u in updates {
            let key = u.get("recipient_did").and_then(Value::as_str).unwrap_or("");
            let action = u.get("action").and_then(Value::as_str).unwrap_or("");
            let result = if !key.starts_with("did:") || key.len() > 2048 {
                "client_error"
            } else {
                match action {
                    // Only the DID itself or a DID URL under it: forwards to a key are
                    // queued for whoever registered it, so registering another DID's key
                    // would divert its mail (spec/mediator.md §3 rule 3).
                    "add" if !owns_key(did, key) => "client_error",
                    "add" if count >= self.config.limits.max_keys_per_did => "client_error",
                    "add" => match self.claim_key(did, key).await? {
                        KeyUpdate::Success => {
                            count += 1;
                            "success"
                        }
                        KeyUpdate::NoChange => "no_change",
                        KeyUpdate::Conflict => "client_error",
                    },
                    "remove" => match self.store.remove_key(did, key).await? {
                        KeyUpdate::Success => {
                            count = count.saturating_sub(1);
                            "success"
                        }
                        KeyUpdate::NoChange => "no_change",
                        KeyUpdate::Conflict => "client_error",
                    },
                    _ => "client_error",
                }
            };
            updated.push(json!({ "recipient_did": key, "action": action, "result": result }));
        }
        let r = reply(
            cm_types(msg, cm).recipient_update_response,
            json!({ "updated": updated }),
            msg,
        );
        Ok(self.answer(r, sender).await)
    }

    /// Adds `key` (which `did` owns, see [`owns_key`]) to `did`'s keys. A registration of
    /// it by another DID (a squatter, from before ownership was checked) is removed first.
    async fn claim_key(&self, did: &str, key: &str) -> Result<KeyUpdate, StoreError> {
        match self.store.add_key(did, key).await? {
            KeyUpdate::Conflict => {}
            other => return Ok(other),
        }
        if let Some(squatter) = self.store.key_owner(key).await? {
            if squatter != did {
                tracing::warn!(%did, %squatter, %key, "key registered by another DID: reclaimed");
                self.store.remove_key(&squatter, key).await?;
            }
        }
        self.store.add_key(did, key).await
    }

    async fn recipient_query(
        &self,
        msg: &Message,
        sender: &Sender,
        did: &str,
        cm: CmVersion,
    ) -> Result<Handled, StoreError> {
        let keys = self.store.keys(did).await?;
        // Coordinate Mediation 3.0 `paginate` (checked by `cm3_body_ok`): one page, and
        // `pagination` describing it.
        let paginate = match cm {
            CmVersion::V3 => cm3::parse_body::<cm3::RecipientQueryBody>(msg)
                .ok()
                .and_then(|b| b.paginate),
            CmVersion::V2 => None,
        };
        let (page, pagination) = match paginate {
            Some(p) => {
                let (page, pagination) = p.page(&keys);
                (page, Some(pagination))
            }
            None => (&keys[..], None),
        };
        let dids: Vec<Value> = page.iter().map(|k| json!({ "recipient_did": k })).collect();
        let types = cm_types(msg, cm);
        let mut body = json!({});
        body[types.list_field] = json!(dids);
        if let Some(p) = pagination {
            body["pagination"] = json!(p);
        }
        let r = reply(types.recipient, body, msg);
        Ok(self.answer(r, sender).await)
    }

    /// Pickup 3.0/4.0 `status` for `did` (optionally filtered by `body.recipient_did`).
    async fn status(
        &self,
        msg: &Message,
        sender: &Sender,
        did: &str,
        live: bool,
        ext: Extensions,
        p: PickupVersion,
    ) -> Result<Handled, StoreError> {
        let filter = msg.body.get("recipient_did").and_then(Value::as_str);
        let st = self.store.status(did, filter).await?;
        let now = crate::store::now_ms();
        let mut body = json!({
            "message_count": st.message_count,
            "total_bytes": st.total_bytes,
            "live_delivery": live,
        });
        if let Some(f) = filter {
            body["recipient_did"] = json!(f);
        }
        if ext.raw {
            // The acknowledgement a raw-mode client waits for (spec/mediator.md §3.1).
            body[crate::messages::RAW_LIVE_FIELD] = json!(true);
        }
        if ext.backlog {
            // Pickup 4.0 backlog pushes honoured (spec/mediator.md §3.2).
            body[LIVE_BACKLOG_FIELD] = json!(true);
        }
        // Pickup 3.0 gives the times in epoch seconds and `longest_waited_seconds`; 4.0 in
        // epoch milliseconds and drops `longest_waited_seconds` ("redundant in regards to
        // oldest_received_time"), spec/mediator.md §3.2.
        let v4 = p == PickupVersion::V4;
        let time = |ms: u64| if v4 { ms } else { ms / 1000 };
        if let Some(o) = st.oldest_ms {
            body["oldest_received_time"] = json!(time(o));
            if !v4 {
                body["longest_waited_seconds"] = json!(now.saturating_sub(o) / 1000);
            }
        }
        if let Some(n) = st.newest_ms {
            body["newest_received_time"] = json!(time(n));
        }
        let r = reply(p.types().status, body, msg);
        Ok(self.answer(r, sender).await)
    }

    async fn delivery_request(
        &self,
        msg: &Message,
        sender: &Sender,
        did: &str,
        p: PickupVersion,
        live: bool,
    ) -> Result<Handled, StoreError> {
        let Some(limit) = delivery_limit(&msg.body, p) else {
            let field = match p {
                PickupVersion::V3 => "limit",
                PickupVersion::V4 => "message_count_limit",
            };
            return Ok(self
                .bad_request(msg, sender, &format!("body.{field} must be a number"))
                .await);
        };
        let limit = limit.min(self.config.limits.max_delivery_batch);
        let filter = msg.body.get("recipient_did").and_then(Value::as_str);
        let batch = self
            .store
            .fetch(did, filter, usize::try_from(limit).unwrap_or(usize::MAX))
            .await?;
        if batch.is_empty() && p == PickupVersion::V3 {
            // Pickup 3.0: with nothing queued, answer with a status message. (4.0: "If no
            // messages are available to be sent, a delivery message with an empty
            // attachments array MUST be sent immediately.")
            return self
                .status(msg, sender, did, live, Extensions::default(), p)
                .await;
        }
        let Some(to) = sender.did.as_deref() else {
            let d = self.delivery_in(p, &batch, Some(msg), filter);
            return Ok(self.answer(d, sender).await);
        };
        self.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
        let (packed, _) = self.pack_delivery(p, &batch, Some(msg), filter, to).await;
        Ok(Handled {
            replies: vec![packed],
            ..Handled::default()
        })
    }

    /// Packs for `to` a `delivery` of the longest prefix of `batch` (at least one message)
    /// whose packed size stays within what a party accepts, [`MAX_DELIVERY_BYTES`]
    /// (spec/mediator.md §3, "Delivery batches"); returns the packed bytes and how many
    /// messages they carry. The prefix is first estimated from the stored sizes
    /// ([`delivery_prefix`]) and halved if the packed result is still too large, so the
    /// bound holds whatever the estimate missed.
    pub(crate) async fn pack_delivery(
        &self,
        p: PickupVersion,
        batch: &[StoredMessage],
        request: Option<&Message>,
        filter: Option<&str>,
        to: &str,
    ) -> (Vec<u8>, usize) {
        let mut n = delivery_prefix(batch, to);
        loop {
            let mut m = self.delivery_message(p, &batch[..n], request, filter);
            let packed = self.pack_for(&mut m, to).await;
            if packed.len() <= MAX_DELIVERY_BYTES || n <= 1 {
                self.metrics
                    .messages_delivered
                    .fetch_add(n as u64, Ordering::Relaxed);
                return (packed, n);
            }
            tracing::debug!(
                n,
                len = packed.len(),
                "delivery over the byte bound; halving"
            );
            n /= 2;
        }
    }

    /// A `delivery` of Pickup version `p` carrying `batch` (counted as delivered).
    pub(crate) fn delivery_in(
        &self,
        p: PickupVersion,
        batch: &[StoredMessage],
        request: Option<&Message>,
        filter: Option<&str>,
    ) -> Message {
        let m = self.delivery_message(p, batch, request, filter);
        self.metrics
            .messages_delivered
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        m
    }

    fn delivery_message(
        &self,
        p: PickupVersion,
        batch: &[StoredMessage],
        request: Option<&Message>,
        filter: Option<&str>,
    ) -> Message {
        let mut body = json!({});
        if let Some(f) = filter {
            body["recipient_did"] = json!(f);
        }
        let delivery = p.types().delivery;
        let mut m = match request {
            Some(r) => reply(delivery, body, r),
            None => crate::messages::message(delivery, body),
        };
        m.attachments = Some(
            batch
                .iter()
                .map(|s| message_attachment(&s.id, &s.data))
                .collect(),
        );
        m
    }

    async fn messages_received(
        &self,
        msg: &Message,
        sender: &Sender,
        did: &str,
        p: PickupVersion,
        live: bool,
    ) -> Result<Handled, StoreError> {
        let Some(list) = msg.body.get("message_id_list").and_then(Value::as_array) else {
            return Ok(self
                .bad_request(msg, sender, "body.message_id_list must be an array")
                .await);
        };
        let ids: Vec<String> = list
            .iter()
            .filter_map(Value::as_str)
            .take(10_000)
            .map(str::to_owned)
            .collect();
        let n = self.store.remove(did, &ids).await?;
        self.metrics.messages_acked.fetch_add(n, Ordering::Relaxed);
        if let Ok(mut q) = self.quotas.lock() {
            q.acked(did, &ids);
        }
        // Pickup 3.0: "Message Received -> Status" — the mediator "SHOULD send an updated
        // status message"; sent when the request asks for answers (`return_route: all`).
        // 4.0 dropped both the answer and the header, so nothing goes back there.
        let wants = msg.extra.get("return_route").and_then(Value::as_str) == Some("all");
        let mut h = if p == PickupVersion::V3 && wants {
            self.status(msg, sender, did, live, Extensions::default(), p)
                .await?
        } else {
            Handled::default()
        };
        h.received = Some((did.to_owned(), ids));
        Ok(h)
    }

    async fn live_change(
        &self,
        msg: &Message,
        sender: &Sender,
        did: &str,
        transport: Transport,
        p: PickupVersion,
    ) -> Result<Handled, StoreError> {
        let Some(on) = msg.body.get("live_delivery").and_then(Value::as_bool) else {
            return Ok(self
                .bad_request(msg, sender, "body.live_delivery must be a boolean")
                .await);
        };
        // Only switching it *on* needs a socket; `live_delivery: false` over HTTP is
        // answered with a status like any other change ("Upon receiving the
        // live_delivery_change message, the mediator MUST respond with a status message").
        if on && transport != Transport::WebSocket {
            return Ok(self
                .refuse(
                    msg,
                    sender,
                    Rejection::Unsupported,
                    codes::LIVE_MODE_NOT_SUPPORTED,
                    "live delivery needs a WebSocket connection",
                )
                .await);
        }
        // Raw pushes (an mpc-did extension, spec/mediator.md §3.1) only with live mode on.
        let raw = on
            && msg
                .body
                .get(crate::messages::RAW_LIVE_FIELD)
                .and_then(Value::as_bool)
                .unwrap_or(false);
        // Pickup 4.0: "Messages already in the queue are not affected by Live Mode; they
        // MUST still be requested with delivery-request messages" — unless the client asks
        // for them (an mpc-did extension, spec/mediator.md §3.2). Pickup 3.0 live mode
        // pushes them, as it always did here.
        let backlog = on
            && p == PickupVersion::V4
            && msg
                .body
                .get(LIVE_BACKLOG_FIELD)
                .and_then(Value::as_bool)
                .unwrap_or(false);
        let skip = if on && p == PickupVersion::V4 && !backlog {
            let max = usize::try_from(self.config.limits.max_queue_messages).unwrap_or(usize::MAX);
            self.store
                .fetch(did, None, max)
                .await?
                .into_iter()
                .map(|m| m.id)
                .collect()
        } else {
            Vec::new()
        };
        let ext = Extensions { raw, backlog };
        let mut h = self.status(msg, sender, did, on, ext, p).await?;
        h.live = Some((did.to_owned(), on));
        h.live_raw = raw;
        h.live_pickup = p;
        h.live_skip = skip;
        Ok(h)
    }

    async fn storage_failed(&self, msg: &Message, sender: &Sender, e: &StoreError) -> Handled {
        tracing::error!(error = %e, "storage failure");
        self.refuse(
            msg,
            sender,
            Rejection::Storage,
            codes::STORAGE,
            "storage failure; retry later",
        )
        .await
    }

    /// A reply to `sender` as the whole answer.
    async fn answer(&self, m: Message, sender: &Sender) -> Handled {
        Handled {
            replies: vec![self.pack(m, sender).await],
            ..Handled::default()
        }
    }

    /// Refuses a request of the wrong shape (`e.p.msg.bad-request`).
    async fn bad_request(&self, msg: &Message, sender: &Sender, comment: &str) -> Handled {
        self.refuse(
            msg,
            sender,
            Rejection::Malformed,
            codes::BAD_REQUEST,
            comment,
        )
        .await
    }

    async fn refuse(
        &self,
        msg: &Message,
        sender: &Sender,
        why: Rejection,
        code: &str,
        comment: &str,
    ) -> Handled {
        self.metrics.reject(why);
        Handled {
            replies: vec![
                self.pack(problem_report(code, comment, Some(msg)), sender)
                    .await,
            ],
            rejection: Some(why),
            ..Handled::default()
        }
    }

    /// Packs a reply: authcrypt to an authenticated sender, plaintext otherwise
    /// (unauthenticated senders only ever get problem reports, pings and disclosures).
    pub(crate) async fn pack(&self, mut m: Message, sender: &Sender) -> Vec<u8> {
        self.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
        let Some(to) = &sender.did else {
            return plain(&m);
        };
        self.pack_for(&mut m, to).await
    }

    /// Authcrypt `m` from the mediator to `to` (a DID). Falls back to plaintext only if
    /// `to` cannot be resolved (then the reply carries nothing but a problem code).
    pub(crate) async fn pack_for(&self, m: &mut Message, to: &str) -> Vec<u8> {
        m.from = Some(self.identity.did.clone());
        m.to = Some(vec![to.to_owned()]);
        let opts = PackOptions {
            forward: false,
            ..PackOptions::default()
        };
        match pack_encrypted_with(
            m,
            to,
            Some(&self.identity.did),
            None,
            &self.resolver,
            &self.identity.secrets,
            &opts,
            Some(&self.ecdh),
        )
        .await
        {
            Ok(p) => p.message.into_bytes(),
            Err(e) => {
                tracing::warn!(error = %e, %to, "cannot pack reply");
                plain(&problem_report(
                    codes::STORAGE,
                    "cannot encrypt a reply to the sender",
                    None,
                ))
            }
        }
    }
}

/// mpc-did extensions a `status` acknowledges (spec/mediator.md §3.1, §3.2).
#[derive(Debug, Clone, Copy, Default)]
struct Extensions {
    /// Raw live pushes.
    raw: bool,
    /// Pickup 4.0 live mode pushes the backlog too.
    backlog: bool,
}

/// Reads a Coordinate Mediation 3.0 request body strictly (the shapes of
/// `mpc_did_didcomm::protocols::coordinate_mediation_v3`); other messages pass.
fn cm3_body_ok(msg: &Message, name: &str) -> Result<(), mpc_did_didcomm::Error> {
    match name {
        "mediate-request" => cm3::parse_body::<cm3::MediateRequest>(msg).map(drop),
        "recipient-update" => cm3::parse_body::<cm3::RecipientUpdateBody>(msg).map(drop),
        "recipient-query" => cm3::parse_body::<cm3::RecipientQueryBody>(msg).map(drop),
        _ => Ok(()),
    }
}

/// Whether `key` (a `recipient_did`) is `did` itself or a DID URL under it (`did#frag`,
/// `did?query`): only then may `did` register it. Whether the fragment names a real key
/// matters to `did` alone: nothing under its DID can route anyone else's mail.
/// The Coordinate Mediation names to answer `msg` in: its version's, or, for a 2.0 request
/// under the names mpc-did used before 2026-12-07 (`recipient-update`, `recipient-query`),
/// those (spec/mediator.md §3).
fn cm_types(msg: &Message, cm: CmVersion) -> &'static CoordinateMediationTypes {
    use mpc_did_didcomm::protocols::coordinate_mediation as cm2;
    let legacy = [
        cm2::LEGACY_RECIPIENT_UPDATE_TYPE,
        cm2::LEGACY_RECIPIENT_QUERY_TYPE,
    ];
    if cm == CmVersion::V2 && legacy.contains(&msg.type_.as_str()) {
        &cm2::LEGACY_TYPES
    } else {
        cm.types()
    }
}

/// How many messages a `delivery-request` asks for: Pickup 3.0's `limit`, 4.0's
/// `message_count_limit` (renamed in 4.0 "for increased specificity"). A 4.0 request with
/// only `limit` is still served: mpc-did clients before 2026-12-07 sent it (spec/mediator.md
/// §3.2).
fn delivery_limit(body: &Value, p: PickupVersion) -> Option<u64> {
    let field = |name: &str| body.get(name).and_then(Value::as_u64);
    match p {
        PickupVersion::V3 => field("limit"),
        PickupVersion::V4 => field("message_count_limit").or_else(|| {
            body.get("message_count_limit")
                .is_none()
                .then(|| field("limit"))
                .flatten()
        }),
    }
}

/// `v` as JSON text (control characters escaped), at most `max` bytes of it: longer text
/// is cut at a character boundary and ends in `…`.
fn clip(v: &Value, max: usize) -> String {
    // Serialise at most `max` bytes of a long string (a comment may be a megabyte), then
    // cut what the escaping made longer.
    let text = match v.as_str() {
        Some(t) if t.len() > max => {
            let mut end = max;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", Value::from(t.get(..end).unwrap_or_default()))
        }
        _ => v.to_string(),
    };
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", text.get(..end).unwrap_or_default())
}

fn owns_key(did: &str, key: &str) -> bool {
    did_of(key) == did
}

/// Plaintext JSON of a message.
fn plain(m: &Message) -> Vec<u8> {
    m.to_json().map(String::into_bytes).unwrap_or_default()
}

/// The largest packed message a party accepts (`mpc_did_didcomm::DEFAULT_MAX_MESSAGE_SIZE`,
/// what `mpc_did_agent`'s client unpacks): every `delivery` stays within it.
pub(crate) const MAX_DELIVERY_BYTES: usize = mpc_did_didcomm::DEFAULT_MAX_MESSAGE_SIZE;

/// Bytes of a delivery's plaintext besides its attachments and DIDs (type, ids, thread,
/// times, body) — generous.
const DELIVERY_BASE: usize = 1024;
/// Bytes one attachment adds besides its data (`{"id":"…","data":{"json":…}}`, commas).
const ATTACHMENT_OVERHEAD: usize = 160;
/// Bytes of an authcrypt JWE besides its base64url ciphertext (protected header with the
/// ephemeral key, apu/apv, skid; recipients with wrapped keys; tag, iv) — generous.
const PACK_OVERHEAD: usize = 8 * 1024;

/// Upper bound of the plaintext bytes a stored message adds to a delivery.
fn attachment_bound(m_len: usize, looks_json: bool) -> usize {
    // A JSON object is inlined (serde_json re-serialization never grows a JWE, which holds
    // only strings; 1/64 slack for anything else); other bytes are base64url.
    let data = if looks_json {
        m_len + m_len / 64
    } else {
        m_len.div_ceil(3) * 4
    };
    data + ATTACHMENT_OVERHEAD
}

/// Upper bound of the packed size of a delivery whose plaintext is `plain` bytes
/// (A256CBC-HS512 pads to 16 bytes, base64url grows by 4/3).
fn packed_bound(plain: usize) -> usize {
    (plain + 16).div_ceil(3) * 4 + PACK_OVERHEAD
}

fn plain_base(to: &str) -> usize {
    // `from` (the mediator's DID is short) and `to` appear in the plaintext and the header.
    DELIVERY_BASE + 4 * to.len()
}

/// How many of `batch`'s first messages one delivery to `to` may carry (at least one of a
/// non-empty batch):
/// the longest prefix whose packed size is bounded by [`MAX_DELIVERY_BYTES`].
pub(crate) fn delivery_prefix(batch: &[StoredMessage], to: &str) -> usize {
    let mut plain = plain_base(to);
    let mut n = 0;
    for m in batch {
        plain += attachment_bound(m.data.len(), m.data.first() == Some(&b'{'));
        if n > 0 && packed_bound(plain) > MAX_DELIVERY_BYTES {
            break;
        }
        n += 1;
    }
    n.max(1).min(batch.len())
}

/// Whether the forwarded message `data` fits in a delivery on its own, by the same bound
/// [`delivery_prefix`] uses (checked when it is forwarded, so that nothing is accepted that
/// could never be delivered).
pub(crate) fn deliverable_alone(data: &[u8], to: &str) -> bool {
    packed_bound(plain_base(to) + attachment_bound(data.len(), data.first() == Some(&b'{')))
        <= MAX_DELIVERY_BYTES
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn stored(len: usize) -> StoredMessage {
        let mut data = vec![b'x'; len];
        data[0] = b'{';
        StoredMessage {
            id: "0".repeat(64),
            recipient_key: String::new(),
            received_ms: 0,
            data,
        }
    }

    const TO: &str = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK";

    // spec/mediator.md §3.2: 3.0 reads `limit`, 4.0 `message_count_limit` (and, only when
    // that is absent, the `limit` of older mpc-did clients).
    #[test]
    fn problem_report_text_is_clipped_for_the_log() {
        assert_eq!(clip(&json!("short"), 64), "\"short\"");
        let long = clip(&json!("é".repeat(1000)), 200);
        assert!(long.len() <= 200 + "…".len(), "{}", long.len());
        assert!(long.ends_with('…'));
        assert_eq!(
            clip(&json!("a\nb"), 64),
            "\"a\\nb\"",
            "control characters escaped"
        );
        assert_eq!(clip(&Value::Null, 64), "null");
    }

    #[test]
    fn delivery_limit_per_version() {
        let v3 = PickupVersion::V3;
        let v4 = PickupVersion::V4;
        assert_eq!(delivery_limit(&json!({ "limit": 5 }), v3), Some(5));
        assert_eq!(
            delivery_limit(&json!({ "message_count_limit": 5 }), v3),
            None
        );
        assert_eq!(
            delivery_limit(&json!({ "message_count_limit": 7 }), v4),
            Some(7)
        );
        assert_eq!(
            delivery_limit(&json!({ "message_count_limit": 7, "limit": 1 }), v4),
            Some(7)
        );
        assert_eq!(delivery_limit(&json!({ "limit": 3 }), v4), Some(3));
        assert_eq!(
            delivery_limit(&json!({ "message_count_limit": "7", "limit": 3 }), v4),
            None
        );
        assert_eq!(delivery_limit(&json!({}), v4), None);
        assert_eq!(
            delivery_limit(&json!({ "message_count_limit": -1 }), v4),
            None
        );
    }

    // spec/mediator.md §3 "Delivery batches": 14 stored messages of 135 KB (a 100 KB body
    // after two JWE layers) never share one delivery; the bound keeps every prefix within
    // the client's limit and always takes at least one message.
    #[test]
    fn prefixes_stay_within_the_client_limit() {
        let batch: Vec<_> = (0..14).map(|_| stored(135_000)).collect();
        let n = delivery_prefix(&batch, TO);
        assert!((1..14).contains(&n), "{n}");
        let plain: usize = plain_base(TO)
            + batch[..n]
                .iter()
                .map(|m| attachment_bound(m.data.len(), true))
                .sum::<usize>();
        assert!(packed_bound(plain) <= MAX_DELIVERY_BYTES);
        // One more would not fit.
        let more: usize = plain + attachment_bound(135_000, true);
        assert!(packed_bound(more) > MAX_DELIVERY_BYTES);
        assert_eq!(delivery_prefix(&[stored(2_000_000)], TO), 1);
        assert_eq!(delivery_prefix(&[], TO), 0);
    }

    // A message that could only ever be delivered in an over-limit delivery is refused at
    // forward time; one just under the bound is accepted.
    #[test]
    fn too_large_to_deliver_is_detected() {
        assert!(deliverable_alone(&stored(700_000).data, TO));
        assert!(!deliverable_alone(&stored(790_000).data, TO));
        // Not JSON: base64url in the delivery, so the bound is lower.
        assert!(!deliverable_alone(&vec![0u8; 700_000], TO));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod replay_tests {
    use super::*;
    use crate::messages::message;
    use crate::store::SledStore;
    use mpc_did_didcomm::SecretStore;

    struct Party {
        did: String,
        secrets: SecretStore,
    }

    impl Party {
        fn new(seed: u8) -> Self {
            let mut secrets = SecretStore::new();
            let did = secrets.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&[seed; 32]));
            Self { did, secrets }
        }
    }

    async fn core_with_replay_cap(dir: &std::path::Path, cap: usize) -> Core {
        let store = AnyStore::Sled(SledStore::open(dir).unwrap());
        let identity = MediatorIdentity::load_or_create(&store).await.unwrap();
        let config = Config {
            data: dir.to_path_buf(),
            ..Config::default()
        };
        let core = Core::new(identity, config, store, UniversalResolver::new().unwrap());
        *core.replay.lock().unwrap() = ReplayCache::new(REPLAY_WINDOW, cap);
        core
    }

    /// Authcrypt from `p` to the mediator, handled as arriving from `ip`.
    async fn request(core: &Core, p: &Party, mut m: Message, ip: &str) -> Handled {
        m.from = Some(p.did.clone());
        m.to = Some(vec![core.identity.did.clone()]);
        let opts = PackOptions {
            forward: false,
            ..PackOptions::default()
        };
        let packed = mpc_did_didcomm::pack_encrypted(
            &m,
            &core.identity.did,
            Some(&p.did),
            None,
            &core.resolver,
            &p.secrets,
            &opts,
        )
        .await
        .unwrap();
        let src = SourceAddr::of(ip.parse().unwrap());
        core.handle(packed.message.as_bytes(), Transport::Http, src)
            .await
    }

    /// spec/mediator.md §3 rule 5: requests a grant does not cover — a DID without one,
    /// a type nobody handles — are not remembered against replay, so a throw-away DID
    /// cannot fill the cache; and a granted one from one address holds at most half of
    /// it and then its share, so a registered DID on another address still has its
    /// `messages-received` and `status-request` answered. Before, every authenticated
    /// request was recorded before the grant check, and a full cache refused everyone.
    #[tokio::test]
    async fn strangers_cannot_fill_the_replay_cache_for_others() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 4 * crate::guard::REPLAY_SHARES;
        let core = core_with_replay_cap(dir.path(), cap).await;
        let honest = Party::new(1);
        let h = request(
            &core,
            &honest,
            message(types::MEDIATE_REQUEST, json!({})),
            "192.0.2.1",
        )
        .await;
        assert!(h.rejection.is_none(), "{:?}", h.rejection);
        let stored = core
            .store
            .enqueue(&honest.did, &honest.did, b"{\"x\":1}", core.limits())
            .await
            .unwrap();
        assert!(!stored.duplicate);
        // A grant-less stranger: twice the cap of refused pickups and unknown types.
        let stranger = Party::new(2);
        for i in 0..cap {
            let kind = if i % 2 == 0 {
                types::STATUS_REQUEST
            } else {
                "https://example.org/unknown/1.0/x"
            };
            let h = request(&core, &stranger, message(kind, json!({})), "203.0.113.9").await;
            assert!(
                matches!(
                    h.rejection,
                    Some(Rejection::Unauthorized | Rejection::Unsupported)
                ),
                "{:?}",
                h.rejection
            );
        }
        // A granted stranger on one address, until the cache refuses it.
        let granted = Party::new(3);
        let h = request(
            &core,
            &granted,
            message(types::MEDIATE_REQUEST, json!({})),
            "203.0.113.9",
        )
        .await;
        assert!(h.rejection.is_none(), "{:?}", h.rejection);
        let mut refused = false;
        for _ in 0..2 * cap {
            let h = request(
                &core,
                &granted,
                message(types::STATUS_REQUEST, json!({})),
                "203.0.113.9",
            )
            .await;
            if h.rejection == Some(Rejection::RateLimited) {
                refused = true;
                break;
            }
            assert!(h.rejection.is_none(), "{:?}", h.rejection);
        }
        assert!(refused, "the flooding address was never refused");
        // The registered DID, from its own address, is still served.
        let h = request(
            &core,
            &honest,
            message(types::STATUS_REQUEST, json!({})),
            "192.0.2.1",
        )
        .await;
        assert!(h.rejection.is_none(), "status-request: {:?}", h.rejection);
        let id = crate::store::message_id(b"{\"x\":1}");
        let h = request(
            &core,
            &honest,
            message(types::MESSAGES_RECEIVED, json!({ "message_id_list": [id] })),
            "192.0.2.1",
        )
        .await;
        assert!(
            h.rejection.is_none(),
            "messages-received: {:?}",
            h.rejection
        );
        assert_eq!(h.received.map(|(_, ids)| ids.len()), Some(1));
        assert_eq!(
            core.store
                .status(&honest.did, None)
                .await
                .unwrap()
                .message_count,
            0
        );
    }
}
