//! The other side of the mediator protocols: register with a mediator, send through one,
//! pick up (batch over HTTP, live over WebSocket) and acknowledge.
//!
//! Used by [`crate::Agent`], by the `mpc-did` CLI (`mediator register`, `send`, `inbox`),
//! by the tests and by the benchmark. Every request to the mediator is authcrypt from the
//! client's DID, as the mediator requires (spec/mediator.md §3). The newest Coordinate
//! Mediation and Message Pickup versions the mediator discloses are used
//! ([`pick_versions`], spec/mediator.md §3.2). The messages are those of
//! `mpc_did_didcomm::protocols` (`coordinate_mediation`, `pickup`, `ack`), the same
//! definitions the mediator answers with; this module adds only the I/O (HTTP POST,
//! WebSocket live mode) and lives with the party, so a party never builds server code.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use mpc_did_didcomm::message::{message, ENCRYPTED_TYP};
use mpc_did_didcomm::protocols::ack::acked_ids;
use mpc_did_didcomm::protocols::coordinate_mediation::CoordinateMediationVersion;
use mpc_did_didcomm::protocols::discover_features::{self, Disclosure, Query};
use mpc_did_didcomm::protocols::pickup::{
    attachment_bytes, decode_raw_push, PickupVersion, RawPushError, RAW_LIVE_FIELD,
};
use mpc_did_didcomm::protocols::pickup_v4::LIVE_BACKLOG_FIELD;
use mpc_did_didcomm::protocols::report_problem::PROBLEM_REPORT_TYPE;
use mpc_did_didcomm::{
    pack_encrypted, pack_encrypted_with, unpack_with, Message, PackOptions, SecretStore,
    StaticEcdhCache, UnpackMetadata, UnpackOptions,
};
use mpc_did_resolver::{DidCommService, DidDocument, UniversalResolver};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What can go wrong talking to a mediator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Network or HTTP failure.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// WebSocket failure.
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// Packing or unpacking failed.
    #[error("didcomm: {0}")]
    DidComm(#[from] mpc_did_didcomm::Error),
    /// The mediator refused with a problem report.
    #[error("mediator refused ({code}): {comment}")]
    Problem {
        /// Report Problem 2.0 code.
        code: String,
        /// Its comment.
        comment: String,
    },
    /// The mediator denied mediation.
    #[error("mediation denied")]
    Denied,
    /// An answer of the wrong shape or status.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// The URL is not a mediator invitation or endpoint.
    #[error("bad mediator URL: {0}")]
    Url(String),
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// A raw live push frame that cannot be read (spec/mediator.md §3.1).
    #[error("bad raw push frame: {0}")]
    RawPush(#[from] RawPushError),
    /// The mediator did not acknowledge raw live mode (it is not an mpc-did mediator, or
    /// an older one): use [`MediatorClient::live`].
    #[error("the mediator does not offer raw live delivery")]
    RawUnsupported,
    /// Opening the WebSocket (TCP connect, TLS, upgrade) took longer than `after`.
    #[error(
        "no WebSocket connection to {url} within {after:?}: check the mediator's address \
         and port, that it is running, and that no firewall drops the connection"
    )]
    ConnectTimeout {
        /// The WebSocket URL.
        url: String,
        /// The limit that passed.
        after: Duration,
    },
    /// A live connection on which nothing arrived, not even the answer to a ping, for
    /// `silent` (a connection that died without a close: NAT expiry, a hard reboot).
    #[error("nothing from the mediator for {silent:?}, not even a pong")]
    Silent {
        /// How long nothing arrived.
        silent: Duration,
    },
    /// A write on a live connection did not finish within `after` ([`WRITE_TIMEOUT`]): the
    /// mediator keeps the connection open but stopped reading it. The connection is then
    /// unusable; every later call on it returns this error (spec/mediator.md §8).
    #[error("the mediator took nothing we sent for {after:?}: it stopped reading")]
    Stalled {
        /// How long the write waited.
        after: Duration,
    },
    /// An answer longer than the client reads (`what` it was, `max` bytes): more than any
    /// mediator legitimately sends ([`MAX_MEDIATOR_MESSAGE`], [`MAX_OOB_SIZE`]).
    #[error("{what}: answer larger than {max} bytes")]
    TooLarge {
        /// Which answer.
        what: String,
        /// The bound it passed.
        max: usize,
    },
}

impl ClientError {
    /// Whether the same request may succeed later: the endpoint was unreachable or slow,
    /// answered 429 or 5xx, or refused with a Report Problem code that says "not now"
    /// (the receiver's queue or storage is full, the sender is over its rate or
    /// per-source quota, the body was late: spec/mediator.md §4). Everything else (the
    /// recipient is unknown, the message too big or malformed, not authorized) is not.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http(e) => !e.is_builder(),
            Self::Timeout
            | Self::ConnectTimeout { .. }
            | Self::Silent { .. }
            | Self::Stalled { .. } => true,
            Self::Unexpected(s) => s
                .strip_prefix("HTTP ")
                .is_some_and(|st| st.starts_with('5') || st.starts_with("429")),
            Self::Problem { code, .. } => {
                // `<sorter>.<scope>.<descriptors>` (Report Problem 2.0).
                let descriptor = code.splitn(3, '.').nth(2).unwrap_or_default();
                descriptor.starts_with("me.res")
                    || matches!(
                        descriptor,
                        "req.source-quota" | "req.rate-limited" | "req.timeout" | "req.time"
                    )
            }
            _ => false,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Self::WebSocket(Box::new(e))
    }
}

/// A mediator as published at `GET /oob`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MediatorInfo {
    /// The mediator's DID.
    pub did: String,
    /// Key id that forwards are encrypted to.
    pub routing_key: String,
    /// `POST` endpoint.
    pub http: String,
    /// WebSocket endpoint.
    pub ws: String,
    /// Its Out-of-Band invitation URL.
    pub invitation_url: String,
    /// The port of its STUN service on the mediator's host, if it runs one (`/oob`
    /// `services.stun.port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stun_port: Option<u16>,
}

impl MediatorInfo {
    /// Learns a mediator from its invitation URL (`…/oob?_oob=…`) or its base URL: fetches
    /// `{origin}/oob` and, for an invitation, checks that the DIDs agree.
    ///
    /// # Errors
    /// Bad URL, network failure, or an invitation naming another DID.
    pub async fn discover(url: &str) -> Result<Self, ClientError> {
        let parsed = url::Url::parse(url).map_err(|e| ClientError::Url(e.to_string()))?;
        let invited = if url.contains("_oob=") {
            let inv = mpc_did_didcomm::protocols::oob::Invitation::decode(url)?;
            Some(inv.from)
        } else {
            None
        };
        let mut base = parsed.clone();
        base.set_query(None);
        base.set_fragment(None);
        let path = base.path().trim_end_matches('/').to_owned();
        let path = path
            .strip_suffix("/oob")
            .or_else(|| path.strip_suffix("/didcomm"))
            .unwrap_or(&path)
            .to_owned();
        base.set_path(&format!("{path}/oob"));
        let resp = http_client()?
            .get(base.as_str())
            .send()
            .await?
            .error_for_status()?;
        let body = read_capped(resp, MAX_OOB_SIZE, "GET /oob").await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ClientError::Unexpected(format!("/oob is not JSON: {e}")))?;
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ClientError::Unexpected(format!("/oob without {p}")))
        };
        let info = Self {
            did: s("/did")?,
            routing_key: s("/routing_key")?,
            http: s("/endpoints/http")?,
            ws: s("/endpoints/ws")?,
            invitation_url: s("/invitation_url")?,
            stun_port: v
                .pointer("/services/stun/port")
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0),
        };
        if invited.is_some_and(|d| d != info.did) {
            return Err(ClientError::Url(
                "the invitation names another DID than the mediator at this address".into(),
            ));
        }
        Ok(info)
    }

    /// The mediator's DID document as a client needs it (did:key document plus the
    /// endpoint), for a resolver overlay.
    ///
    /// # Errors
    /// The DID is not a did:key.
    pub fn document(&self) -> Result<DidDocument, ClientError> {
        let mut doc = mpc_did_resolver::key::resolve(&self.did)
            .map_err(|e| ClientError::Unexpected(e.to_string()))?;
        doc.service.push(
            DidCommService {
                id: format!("{}#didcomm-1", self.did),
                uri: self.http.clone(),
                accept: vec!["didcomm/v2".into()],
                routing_keys: Vec::new(),
            }
            .to_service(),
        );
        Ok(doc)
    }

    /// The `DIDCommMessaging` service a DID mediated here publishes: send to this
    /// mediator's endpoint, wrapped in a forward for its routing key.
    #[must_use]
    pub fn service_for(&self, did: &str) -> DidCommService {
        DidCommService {
            id: format!("{did}#didcomm-1"),
            uri: self.http.clone(),
            accept: vec!["didcomm/v2".into()],
            routing_keys: vec![self.routing_key.clone()],
        }
    }
}

/// Most bytes of a mediator's `GET /oob` answer [`MediatorInfo::discover`] reads (a few
/// hundred in practice).
pub const MAX_OOB_SIZE: usize = 64 << 10;

/// Most bytes of one answer from the mediator the client reads: an HTTP reply
/// ([`MediatorClient::request`]) or one WebSocket message on a live connection. The
/// mediator packs a `delivery` to at most 1 MiB (`DEFAULT_MAX_MESSAGE_SIZE`, the unpack
/// limit; spec/mediator.md §3 "Delivery batches") and a raw push carries one message that
/// fits such a delivery; four times that leaves a margin and still keeps what a malicious
/// mediator can make the client buffer small.
pub const MAX_MEDIATOR_MESSAGE: usize = 4 * mpc_did_didcomm::DEFAULT_MAX_MESSAGE_SIZE;

fn http_client() -> Result<reqwest::Client, ClientError> {
    // Mozilla roots plus the process's extra roots (`mpc-did --ca-cert`).
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64);
    Ok(mpc_did_resolver::trust::with_extra_roots(builder)?.build()?)
}

/// A message taken from the queue: its queue id (for `messages-received`) and the
/// packed DIDComm message as the sender sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Queue id.
    pub id: String,
    /// The packed message.
    pub bytes: Vec<u8>,
}

/// A DID's connection to its mediator.
#[derive(Clone)]
pub struct MediatorClient {
    /// The mediator.
    pub info: MediatorInfo,
    /// Our DID.
    pub did: String,
    secrets: SecretStore,
    resolver: UniversalResolver,
    http: reqwest::Client,
    /// Static-static ECDH-1PU shares with the mediator (and other senders of what we
    /// unpack): every request and every delivery reuses the same one.
    ecdh: Arc<StaticEcdhCache>,
    /// The protocol versions spoken with this mediator, learnt once ([`Self::versions`]).
    versions: Arc<tokio::sync::OnceCell<Versions>>,
}

/// What [`MediatorClient::unpack_local`] made of a message.
#[derive(Debug)]
pub enum LocalUnpack {
    /// Unpacked (boxed: they are large).
    Done(Box<Message>, Box<UnpackMetadata>),
    /// Unpacking needs this DID's document, which needs a did:web fetch.
    NeedsFetch(String),
    /// It does not unpack (and no fetch would change that).
    Failed(ClientError),
}

/// A resolver that answers only what needs no fetch and remembers the DID that would.
struct LocalOnly<'a> {
    inner: &'a UniversalResolver,
    wanted: std::sync::Mutex<Option<String>>,
}

impl mpc_did_resolver::DidResolver for LocalOnly<'_> {
    fn resolve(
        &self,
        did: &str,
    ) -> impl std::future::Future<Output = Result<DidDocument, mpc_did_resolver::ResolveError>> + Send
    {
        let did = did.to_owned();
        async move {
            if !self.inner.resolves_without_fetch(&did) {
                let mut wanted = self
                    .wanted
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                wanted.get_or_insert_with(|| did.clone());
                return Err(mpc_did_resolver::ResolveError::NeedsFetch(did));
            }
            // (Should the document expire in between, this fetches: a delay, never a loss.)
            mpc_did_resolver::DidResolver::resolve(self.inner, &did).await
        }
    }
}

/// Peers whose ECDH-1PU static share a client remembers.
const CLIENT_ECDH_CACHE_MAX: usize = 256;

impl MediatorClient {
    /// A client for `did` (whose private keys are in `secrets`). The mediator's document
    /// is added to `resolver`'s overlay.
    ///
    /// # Errors
    /// The HTTP client cannot be built or the mediator DID is not a did:key.
    pub fn new(
        info: MediatorInfo,
        did: &str,
        secrets: SecretStore,
        resolver: UniversalResolver,
    ) -> Result<Self, ClientError> {
        resolver.insert(info.document()?);
        Ok(Self {
            info,
            did: did.to_owned(),
            secrets,
            resolver,
            http: http_client()?,
            ecdh: Arc::new(StaticEcdhCache::new(CLIENT_ECDH_CACHE_MAX)),
            versions: Arc::new(tokio::sync::OnceCell::new()),
        })
    }

    /// Our secrets.
    #[must_use]
    pub fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    /// The same identity talking to another mediator.
    ///
    /// # Errors
    /// As [`Self::new`].
    pub fn with_mediator(&self, info: MediatorInfo) -> Result<Self, ClientError> {
        Self::new(info, &self.did, self.secrets.clone(), self.resolver.clone())
    }

    /// The resolver (with the mediator's document in its overlay).
    #[must_use]
    pub fn resolver(&self) -> &UniversalResolver {
        &self.resolver
    }

    /// Authcrypt `msg` from us to the mediator (what [`Self::request`] sends).
    ///
    /// # Errors
    /// Packing failure.
    pub async fn pack_for_mediator(&self, msg: Message) -> Result<String, ClientError> {
        self.pack_request(msg).await
    }

    async fn pack_request(&self, mut msg: Message) -> Result<String, ClientError> {
        msg.from = Some(self.did.clone());
        msg.to = Some(vec![self.info.did.clone()]);
        ask_for_return_route(&mut msg);
        let opts = PackOptions {
            forward: false,
            ..PackOptions::default()
        };
        let p = pack_encrypted_with(
            &msg,
            &self.info.did,
            Some(&self.did),
            None,
            &self.resolver,
            &self.secrets,
            &opts,
            Some(&self.ecdh),
        )
        .await?;
        Ok(p.message)
    }

    /// Unpacks a message addressed to us.
    ///
    /// # Errors
    /// Any unpack failure.
    pub async fn unpack(&self, bytes: &[u8]) -> Result<(Message, UnpackMetadata), ClientError> {
        Ok(unpack_with(
            bytes,
            &self.resolver,
            &self.secrets,
            &UnpackOptions::default(),
            Some(&self.ecdh),
        )
        .await?)
    }

    /// [`Self::unpack`] without waiting for the network: a message whose unpacking needs a
    /// sender's did:web document that is not cached yet comes back as
    /// [`LocalUnpack::NeedsFetch`] naming that DID (fetch it with [`Self::fetch_document`],
    /// then try again). The inbox uses it so that a sender on a slow host delays only its
    /// own messages (spec/lobby.md §7 "Lanes").
    pub async fn unpack_local(&self, bytes: &[u8]) -> LocalUnpack {
        let local = LocalOnly {
            inner: &self.resolver,
            wanted: std::sync::Mutex::new(None),
        };
        let result = unpack_with(
            bytes,
            &local,
            &self.secrets,
            &UnpackOptions::default(),
            Some(&self.ecdh),
        )
        .await;
        let wanted = local
            .wanted
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (result, wanted) {
            (Ok((m, meta)), _) => LocalUnpack::Done(Box::new(m), Box::new(meta)),
            (Err(_), Some(did)) => LocalUnpack::NeedsFetch(did),
            (Err(e), None) => LocalUnpack::Failed(e.into()),
        }
    }

    /// Resolves `did` with the network allowed, so that its document (or its failure) is
    /// remembered for [`Self::unpack_local`]. A resolver that is busy (too many did:web
    /// fetches in flight) is asked again every 200 ms for up to `patience`.
    ///
    /// # Errors
    /// The resolution's error, the last one when busy past `patience`.
    pub async fn fetch_document(
        &self,
        did: &str,
        patience: Duration,
    ) -> Result<(), mpc_did_resolver::ResolveError> {
        use mpc_did_resolver::{DidResolver as _, ResolveError};
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.resolver.resolve(did).await {
                Ok(_) => return Ok(()),
                Err(ResolveError::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends one request over HTTP and returns the mediator's reply (if any), turning a
    /// problem report into [`ClientError::Problem`].
    ///
    /// # Errors
    /// Network failure, a problem report, or an undecryptable answer.
    pub async fn request(&self, msg: Message) -> Result<Option<Message>, ClientError> {
        let packed = self.pack_request(msg).await?;
        let resp = self
            .http
            .post(&self.info.http)
            .header("content-type", ENCRYPTED_TYP)
            .body(packed)
            .send()
            .await?;
        let status = resp.status();
        let body = read_capped(resp, MAX_MEDIATOR_MESSAGE, "the mediator's reply").await?;
        if body.is_empty() {
            if status.is_success() {
                return Ok(None);
            }
            return Err(ClientError::Unexpected(format!("HTTP {status}")));
        }
        let reply = self.read_reply(&body).await?;
        Ok(Some(reply))
    }

    /// Unpacks a mediator reply; problem reports become errors.
    async fn read_reply(&self, body: &[u8]) -> Result<Message, ClientError> {
        // Refusals to unauthenticated senders come back as plaintext.
        let msg = match self.unpack(body).await {
            Ok((m, _)) => m,
            Err(e) => return Err(e),
        };
        if msg.type_ == PROBLEM_REPORT_TYPE {
            return Err(problem(&msg));
        }
        Ok(msg)
    }

    /// Coordinate Mediation 2.0/3.0: `mediate-request`, then `keylist-update` (2.0) /
    /// `recipient-update` (3.0) adding our DID (so forwards to it, or to any of its key
    /// ids, are queued for us).
    ///
    /// # Errors
    /// [`ClientError::Denied`], a problem report, or network failure.
    pub async fn register(&self) -> Result<(), ClientError> {
        let cm = self.versions().await.cm.types();
        let reply = self
            .request(message(cm.mediate_request, json!({})))
            .await?
            .ok_or_else(|| ClientError::Unexpected("no answer to mediate-request".into()))?;
        match reply.type_.as_str() {
            t if t == cm.mediate_grant => {}
            t if t == cm.mediate_deny => return Err(ClientError::Denied),
            other => return Err(ClientError::Unexpected(other.to_owned())),
        }
        self.update_keys(&[(self.did.as_str(), "add")]).await?;
        Ok(())
    }

    /// Coordinate Mediation 2.0 `keylist-update` / 3.0 `recipient-update`; returns the
    /// `updated` list.
    ///
    /// # Errors
    /// A problem report or network failure.
    pub async fn update_keys(&self, updates: &[(&str, &str)]) -> Result<Vec<Value>, ClientError> {
        let ups: Vec<Value> = updates
            .iter()
            .map(|(k, a)| json!({ "recipient_did": k, "action": a }))
            .collect();
        let cm = self.versions().await.cm.types();
        let reply = self
            .request(message(cm.recipient_update, json!({ "updates": ups })))
            .await?
            .ok_or_else(|| ClientError::Unexpected("no answer to recipient-update".into()))?;
        Ok(reply
            .body
            .get("updated")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Coordinate Mediation 2.0 `keylist-query` / 3.0 `recipient-query`: our registered
    /// DIDs and key ids.
    ///
    /// # Errors
    /// A problem report or network failure.
    pub async fn keys(&self) -> Result<Vec<String>, ClientError> {
        let cm = self.versions().await.cm.types();
        let reply = self
            .request(message(cm.recipient_query, json!({})))
            .await?
            .ok_or_else(|| ClientError::Unexpected("no answer to recipient-query".into()))?;
        // 2.0 `keylist` lists them under `keys`, 3.0 `recipient` under `dids`; a mediator
        // that mixes them up is read all the same.
        let list = reply
            .body
            .get(cm.list_field)
            .or_else(|| reply.body.get("dids"))
            .or_else(|| reply.body.get("keys"));
        Ok(list
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.get("recipient_did").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Pickup 3.0 `status-request`: the status body.
    ///
    /// # Errors
    /// A problem report or network failure.
    pub async fn status(&self) -> Result<Value, ClientError> {
        let p = self.versions().await.pickup.types();
        let reply = self
            .request(message(p.status_request, json!({})))
            .await?
            .ok_or_else(|| ClientError::Unexpected("no answer to status-request".into()))?;
        Ok(reply.body)
    }

    /// Pickup 3.0/4.0 `delivery-request` for up to `limit` messages (empty if none).
    ///
    /// # Errors
    /// A problem report or network failure.
    pub async fn fetch(&self, limit: u64) -> Result<Vec<Delivered>, ClientError> {
        let v = self.versions().await.pickup;
        let reply = self
            .request(delivery_request(v, limit))
            .await?
            .ok_or_else(|| ClientError::Unexpected("no answer to delivery-request".into()))?;
        Ok(delivered(&reply))
    }

    /// Pickup 3.0 `messages-received`: the mediator may now delete these.
    ///
    /// # Errors
    /// A problem report or network failure.
    pub async fn ack(&self, ids: &[String]) -> Result<(), ClientError> {
        if ids.is_empty() {
            return Ok(());
        }
        let p = self.versions().await.pickup.types();
        self.request(message(
            p.messages_received,
            json!({ "message_id_list": ids }),
        ))
        .await?;
        Ok(())
    }

    /// Packs `msg` for `to` (authcrypt from us) and sends it along `to`'s DIDComm service
    /// (from `resolver`: add `to`'s document with its service to the overlay first),
    /// wrapped in forwards for its routing keys. Returns the recipient's service URI.
    ///
    /// # Errors
    /// `to` has no usable service or key, packing fails, or the mediator refuses.
    pub async fn send(&self, to: &str, msg: Message) -> Result<String, ClientError> {
        send_message(
            &self.http,
            &self.did,
            &self.secrets,
            &self.resolver,
            to,
            msg,
        )
        .await
    }

    /// Opens a WebSocket and switches live delivery on.
    ///
    /// # Errors
    /// Connection failure or a refusal.
    pub async fn live(&self) -> Result<LiveConnection, ClientError> {
        self.live_with_roots(&[]).await
    }

    /// As [`Self::live`], giving up on opening the WebSocket (TCP, TLS, upgrade) after
    /// `connect_timeout` instead of [`CONNECT_TIMEOUT`].
    ///
    /// # Errors
    /// As [`Self::live`]; [`ClientError::ConnectTimeout`].
    pub async fn live_within(
        &self,
        connect_timeout: Duration,
    ) -> Result<LiveConnection, ClientError> {
        let ws = connect_ws_within(&self.info.ws, &[], connect_timeout).await?;
        self.live_on(ws, LiveOptions::default()).await
    }

    /// As [`Self::live`], trusting `extra_roots` (DER certificates) besides the Mozilla
    /// roots for a `wss://` endpoint (a private CA, a test certificate).
    ///
    /// # Errors
    /// As [`Self::live`].
    pub async fn live_with_roots(
        &self,
        extra_roots: &[Vec<u8>],
    ) -> Result<LiveConnection, ClientError> {
        self.live_with(extra_roots, LiveOptions::default()).await
    }

    /// As [`Self::live_with_roots`], with `options`.
    ///
    /// # Errors
    /// As [`Self::live`].
    pub async fn live_with(
        &self,
        extra_roots: &[Vec<u8>],
        options: LiveOptions,
    ) -> Result<LiveConnection, ClientError> {
        let ws = connect_ws(&self.info.ws, extra_roots).await?;
        self.live_on(ws, options).await
    }

    async fn live_on(&self, ws: Ws, options: LiveOptions) -> Result<LiveConnection, ClientError> {
        let mut conn = LiveConnection::new(self.clone(), ws);
        let pickup = self.versions().await.pickup;
        conn.switch_on(pickup, false, options.backlog_extension)
            .await?;
        Ok(conn)
    }

    /// Re-opens live delivery after the WebSocket dropped (a mediator restart, a network
    /// change): waits [`reconnect_delay`] before each attempt (exponential backoff with
    /// jitter) and tries until it works or `give_up` has passed. Messages queued meanwhile
    /// are delivered on the new connection (the mediator sends its queue when live mode is
    /// switched on), and unacknowledged ones again, so the caller catches up by reading it.
    ///
    /// # Errors
    /// The last attempt's error once `give_up` has passed.
    pub async fn live_again(&self, give_up: Duration) -> Result<LiveConnection, ClientError> {
        // `Duration::MAX`: never give up.
        let until = tokio::time::Instant::now().checked_add(give_up);
        let mut attempt = 0u32;
        loop {
            tokio::time::sleep(reconnect_delay(attempt)).await;
            attempt = attempt.saturating_add(1);
            match self.live().await {
                Ok(l) => return Ok(l),
                Err(e) if until.is_some_and(|u| tokio::time::Instant::now() >= u) => return Err(e),
                Err(e) => tracing::debug!(attempt, "live re-connect failed: {e}"),
            }
        }
    }

    /// Opens a WebSocket in raw live mode (an mpc-did extension of Pickup 3.0,
    /// spec/mediator.md §3.1): the mediator pushes each queued message as one binary
    /// frame instead of an authcrypt `delivery`, which saves an authcrypt on each side per
    /// push. Waits (at most `timeout`) for the mediator's `status` acknowledging raw mode.
    /// [`LiveConnection::next_batch`] returns the same [`Delivered`] items as in
    /// [`Self::live`]; acknowledgements stay authcrypt `messages-received`.
    ///
    /// # Errors
    /// Connection failure, a refusal, [`ClientError::Timeout`], or
    /// [`ClientError::RawUnsupported`] when the mediator answers without acknowledging raw
    /// mode (the socket is then closed).
    pub async fn live_raw(&self, timeout: Duration) -> Result<LiveConnection, ClientError> {
        self.live_raw_with_roots(&[], timeout).await
    }

    /// As [`Self::live_raw`], trusting `extra_roots` as [`Self::live_with_roots`] does.
    ///
    /// # Errors
    /// As [`Self::live_raw`].
    pub async fn live_raw_with_roots(
        &self,
        extra_roots: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<LiveConnection, ClientError> {
        let ws = connect_ws(&self.info.ws, extra_roots).await?;
        let mut conn = LiveConnection::new(self.clone(), ws);
        let pickup = self.versions().await.pickup;
        let thid = conn.switch_on(pickup, true, true).await?;
        // The mediator answers live-delivery-change with a status before it pushes
        // anything; only that status (in our thread, authcrypt) switches raw mode on here.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = conn.next_message(left).await?;
            if m.type_ != pickup.types().status || m.thid.as_deref() != Some(thid.as_str()) {
                // A wrapped push (a mediator without raw mode): keep its messages.
                conn.pending.extend(delivered(&m));
                continue;
            }
            if m.body.get(RAW_LIVE_FIELD).and_then(Value::as_bool) == Some(true) {
                conn.raw = true;
                conn.backlog.on_status(&m);
                return Ok(conn);
            }
            conn.close().await;
            return Err(ClientError::RawUnsupported);
        }
    }
}

// ---- Protocol versions: which Coordinate Mediation / Message Pickup the mediator gets ----

/// The versions of the mediation protocols a client speaks with one mediator
/// (spec/mediator.md §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Versions {
    /// Coordinate Mediation 2.0 or 3.0.
    pub cm: CoordinateMediationVersion,
    /// Message Pickup 3.0 or 4.0.
    pub pickup: PickupVersion,
}

/// The newest version of each mediation protocol among those a mediator discloses
/// (Discover Features 2.0) with the `mediator` role; 2.0 / 3.0 (what every mpc-did
/// mediator speaks) for a protocol it does not disclose.
#[must_use]
pub fn pick_versions(disclosed: &[Disclosure]) -> Versions {
    let offered = |piuri: &str| {
        disclosed.iter().any(|d| {
            d.feature_type == "protocol"
                && d.id == piuri
                && (d.roles.is_empty() || d.roles.iter().any(|r| r == "mediator"))
        })
    };
    let cm = CoordinateMediationVersion::ALL
        .into_iter()
        .rev()
        .find(|v| offered(v.types().piuri))
        .unwrap_or_default();
    let pickup = PickupVersion::ALL
        .into_iter()
        .rev()
        .find(|v| offered(v.types().piuri))
        .unwrap_or_default();
    Versions { cm, pickup }
}

impl MediatorClient {
    /// The mediation protocol versions spoken with this mediator: asked with a Discover
    /// Features query, and the answer remembered by this client and its clones. A mediator
    /// that answers without a usable disclose gets Coordinate Mediation 2.0 and Message
    /// Pickup 3.0 (remembered too); one that cannot be reached gets them for this call
    /// only, and is asked again next time (a mediator down at the first call must not be
    /// spoken to in the old versions for the client's whole life).
    pub async fn versions(&self) -> Versions {
        self.versions
            .get_or_try_init(|| async {
                let query = discover_features::queries(
                    [
                        "https://didcomm.org/coordinate-mediation/*",
                        "https://didcomm.org/messagepickup/*",
                        "https://didcomm.org/message-pickup/*",
                    ]
                    .into_iter()
                    .map(|m| Query {
                        feature_type: "protocol".into(),
                        match_: m.into(),
                    })
                    .collect(),
                );
                match self.request(query).await {
                    Ok(Some(d)) => Ok(match discover_features::parse_disclose(&d) {
                        Ok(disclosed) => pick_versions(&disclosed),
                        Err(e) => {
                            tracing::debug!(error = %e, "bad disclose: using CM 2.0 / Pickup 3.0");
                            Versions::default()
                        }
                    }),
                    Ok(None) => Ok(Versions::default()),
                    Err(e) => {
                        tracing::debug!(error = %e, "discover features failed: CM 2.0 / Pickup 3.0 for now, asking again next time");
                        Err(())
                    }
                }
            })
            .await
            .copied()
            .unwrap_or_default()
    }
}

/// Sets `return_route: "all"` on a request to the mediator: Coordinate Mediation 2.0/3.0
/// and Message Pickup 3.0/4.0 require it ("must be set each time the communication channel
/// is established: once per established websocket, and every message for an HTTP POST"),
/// and a mediator that follows them answers nothing without it. Pickup 4.0 removed it from
/// `messages-received` ("not required"), so that one goes without (spec/mediator.md §8).
/// A header the caller set is kept.
fn ask_for_return_route(msg: &mut Message) {
    if msg.type_ == mpc_did_didcomm::protocols::pickup_v4::MESSAGES_RECEIVED_TYPE {
        return;
    }
    msg.extra
        .entry(RETURN_ROUTE.to_owned())
        .or_insert_with(|| json!("all"));
}

/// The DIDComm `return_route` header.
const RETURN_ROUTE: &str = "return_route";

/// Redirects an Out-of-Band short link may take before it names the invitation.
const SHORT_LINK_HOPS: usize = 5;
/// How long fetching a short link may take, all hops together.
const SHORT_LINK_TIMEOUT: Duration = Duration::from_secs(15);

/// Fetches what an Out-of-Band **short link** (`https://…?_oobid=…`) stands for (DIDComm
/// v2.1 "Short URL Message Retrieval": "On receipt of this form of message, the agent must
/// do an HTTP GET to retrieve the associated encoded message"): an HTTP GET without
/// following redirects by itself; a redirect to a URL with `_oob` ends there, a redirect to
/// another URL is followed (at most 5 times, http(s) only); a `200` answer is
/// taken if its body is the invitation's JSON or a URL with `_oob`. Returns that URL or
/// JSON, for [`mpc_did_didcomm::protocols::oob::Invitation::decode`] (spec/didcomm.md §5 "Invitations").
///
/// # Errors
/// [`ClientError::Url`] for a link that is not http(s), a redirect loop or an answer that
/// holds no invitation; network failure; [`ClientError::Unexpected`] for another HTTP
/// status; [`ClientError::Timeout`] after 15 s.
pub async fn resolve_short_link(link: &str) -> Result<String, ClientError> {
    tokio::time::timeout(SHORT_LINK_TIMEOUT, resolve_short_link_hops(link))
        .await
        .map_err(|_| ClientError::Timeout)?
}

async fn resolve_short_link_hops(link: &str) -> Result<String, ClientError> {
    use mpc_did_didcomm::protocols::oob::MAX_INVITATION_SIZE;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(SHORT_LINK_TIMEOUT)
        .build()?;
    let mut url = url::Url::parse(link).map_err(|e| ClientError::Url(e.to_string()))?;
    for _ in 0..=SHORT_LINK_HOPS {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ClientError::Url(format!(
                "short link {url}: only http and https can be fetched"
            )));
        }
        let resp = http
            .get(url.clone())
            .header(
                "accept",
                "application/didcomm-plain+json, application/json, text/plain",
            )
            .send()
            .await?;
        let status = resp.status();
        if status.is_redirection() {
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ClientError::Url(format!("{url}: {status} without a Location")))?;
            url = url
                .join(to)
                .map_err(|e| ClientError::Url(format!("{url}: bad Location {to:?}: {e}")))?;
            if url.query_pairs().any(|(k, _)| k == "_oob") {
                return Ok(url.into());
            }
            continue;
        }
        if !status.is_success() {
            return Err(ClientError::Unexpected(format!(
                "short link {url}: HTTP {status}"
            )));
        }
        let body = read_capped(resp, MAX_INVITATION_SIZE, "")
            .await
            .map_err(|e| match e {
                ClientError::TooLarge { .. } => ClientError::Url(format!(
                    "short link {url}: answer larger than {MAX_INVITATION_SIZE} bytes"
                )),
                e => e,
            })?;
        let text = String::from_utf8_lossy(&body).trim().to_owned();
        if text.starts_with('{') || text.contains("_oob=") {
            return Ok(text);
        }
        return Err(ClientError::Url(format!(
            "short link {url} answered without an invitation (neither its JSON nor a URL with _oob)"
        )));
    }
    Err(ClientError::Url(format!(
        "short link {link}: more than {SHORT_LINK_HOPS} redirects"
    )))
}

/// A `live-delivery-change` switching live mode on in Pickup version `p` (with raw pushes
/// if `raw`). In 4.0 with `backlog` it asks for the backlog too ([`LIVE_BACKLOG_FIELD`]),
/// so that live mode delivers what was queued before, as in 3.0.
fn live_change(p: PickupVersion, raw: bool, backlog: bool) -> Message {
    let mut body = json!({ "live_delivery": true });
    if raw {
        body[RAW_LIVE_FIELD] = json!(true);
    }
    if p == PickupVersion::V4 && backlog {
        body[LIVE_BACKLOG_FIELD] = json!(true);
    }
    message(p.types().live_delivery_change, body)
}

/// A `delivery-request` for up to `limit` messages: Pickup 3.0 calls the field `limit`,
/// 4.0 `message_count_limit` (spec/mediator.md §3.2).
fn delivery_request(p: PickupVersion, limit: u64) -> Message {
    let field = match p {
        PickupVersion::V3 => "limit",
        PickupVersion::V4 => "message_count_limit",
    };
    let mut body = json!({});
    body[field] = json!(limit);
    message(p.types().delivery_request, body)
}

/// How a live connection is switched on ([`MediatorClient::live_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveOptions {
    /// In Pickup 4.0, ask the mediator to push the messages queued before live mode too
    /// (the mpc-did extension [`LIVE_BACKLOG_FIELD`]; default `true`). Either way the
    /// backlog arrives: a mediator that does not honour the field (or a connection that
    /// does not ask) gets `delivery-request`s for it (spec/mediator.md §3.2 "Client").
    /// `false` speaks plain 4.0 from the start.
    pub backlog_extension: bool,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            backlog_extension: true,
        }
    }
}

/// Most messages one backlog `delivery-request` asks for beyond those delivered on the
/// socket and not yet acknowledged (which a 4.0 mediator hands out again first).
const BACKLOG_PAGE: u64 = 100;

/// A Pickup 4.0 live connection's backlog: the messages queued before live mode was
/// switched on, which a 4.0 mediator does not push ("they MUST still be requested with
/// `delivery-request` messages") unless it honours [`LIVE_BACKLOG_FIELD`]
/// (spec/mediator.md §3.2 "Client").
#[derive(Debug, Default)]
struct Backlog {
    /// The `live-delivery-change` whose `status` is awaited (4.0 only), and whether it
    /// asked for the backlog.
    change: Option<(String, bool)>,
    /// A `delivery-request` goes out at the next [`LiveConnection::next_batch`] (after the
    /// caller has acknowledged what the previous one brought).
    due: bool,
    /// The `delivery-request` whose `delivery` is awaited.
    request: Option<String>,
    /// Ids this socket delivered, by live push or backlog request, not yet acknowledged.
    unacked: std::collections::HashSet<String>,
    /// Ids the backlog requests brought (a page of none new ends the draining).
    seen: std::collections::HashSet<String>,
}

impl Backlog {
    /// The `status` answering our change: unless the mediator honours the backlog field,
    /// start draining the queue with `delivery-request`s.
    fn on_status(&mut self, m: &Message) {
        let Some((id, _)) = &self.change else { return };
        if m.thid.as_deref() != Some(id.as_str()) {
            return;
        }
        self.change = None;
        if m.body.get(LIVE_BACKLOG_FIELD).and_then(Value::as_bool) == Some(true) {
            return;
        }
        // `message_count` is REQUIRED; a status without it is drained all the same.
        let queued = m.body.get("message_count").and_then(Value::as_u64);
        if queued == Some(0) {
            return;
        }
        tracing::info!(
            queued = ?queued,
            "the mediator does not push what was queued before live mode (Pickup 4.0): \
             asking for it with delivery-request"
        );
        self.due = true;
    }

    /// A `delivery` answering our backlog request: ask for the next page once the caller
    /// is done with this one, unless it brought nothing new.
    fn on_delivery(&mut self, m: &Message, items: &[Delivered]) {
        if self.request.is_none() || m.thid != self.request {
            return;
        }
        self.request = None;
        let mut new = 0usize;
        for d in items {
            if self.seen.insert(d.id.clone()) {
                new += 1;
            }
        }
        if new > 0 {
            self.due = true;
        } else {
            tracing::debug!(
                seen = self.seen.len(),
                "the backlog is drained (a delivery with nothing new)"
            );
        }
    }
}

/// The wait before re-connect attempt `attempt` (0-based) of a live WebSocket: 250 ms
/// doubling up to 8 s, scaled by a random factor in [0.5, 1.5) so that the clients of a
/// restarted mediator do not all come back in the same instant.
#[must_use]
pub fn reconnect_delay(attempt: u32) -> Duration {
    mpc_did_rendezvous::net::Backoff {
        first: Duration::from_millis(250),
        max: Duration::from_secs(8),
    }
    .delay(attempt)
}

/// Packs `msg` from `from` to `to` (authcrypt), wraps it in forwards for the routing keys
/// of `to`'s first DIDComm service (found through `resolver`) and POSTs it to that
/// service's URI. Returns the URI. Needs no mediator of the sender's own.
///
/// # Errors
/// `to` has no usable service or key, packing fails, or the endpoint refuses.
pub async fn send_message(
    http: &reqwest::Client,
    from: &str,
    secrets: &SecretStore,
    resolver: &UniversalResolver,
    to: &str,
    mut msg: Message,
) -> Result<String, ClientError> {
    msg.from = Some(from.to_owned());
    msg.to = Some(vec![to.to_owned()]);
    let p = pack_encrypted(
        &msg,
        to,
        Some(from),
        None,
        resolver,
        secrets,
        &PackOptions::default(),
    )
    .await?;
    let svc = p
        .service
        .ok_or_else(|| ClientError::Url(format!("{to} has no DIDCommMessaging service")))?;
    if !(svc.uri.starts_with("http://") || svc.uri.starts_with("https://")) {
        return Err(ClientError::Url(format!(
            "{to}'s service endpoint {} is not an http(s) URL",
            svc.uri
        )));
    }
    post_packed(http, &svc.uri, p.message.into_bytes()).await?;
    Ok(svc.uri)
}

/// An HTTP client with the timeouts the mediator client uses.
///
/// # Errors
/// The TLS backend cannot be initialised.
pub fn new_http_client() -> Result<reqwest::Client, ClientError> {
    http_client()
}

/// POSTs a packed message to a DIDComm HTTP endpoint; `Ok` on 2xx.
///
/// # Errors
/// Network failure, or a non-2xx status ([`ClientError::Problem`] when the body is a
/// plaintext problem report).
pub async fn post_packed(
    http: &reqwest::Client,
    uri: &str,
    body: Vec<u8>,
) -> Result<(), ClientError> {
    let resp = http
        .post(uri)
        .header("content-type", ENCRYPTED_TYP)
        .body(body)
        .send()
        .await?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // Too long or broken: just the status.
    let body = read_capped(resp, MAX_ERROR_BODY, "")
        .await
        .unwrap_or_default();
    match Message::from_json(&body) {
        Ok(m) if m.type_ == PROBLEM_REPORT_TYPE => Err(problem(&m)),
        _ => Err(ClientError::Unexpected(format!("HTTP {status}"))),
    }
}

/// Most bytes of an error answer's body read (a problem report is far smaller); the
/// endpoint is a URL a peer chose, so its answer is bounded like everything else read.
const MAX_ERROR_BODY: usize = 16 << 10;

/// The body of `resp` (`what` it is, for the error) if it fits in `max` bytes, read
/// without buffering more than that: a declared longer length is refused before reading.
///
/// # Errors
/// [`ClientError::TooLarge`] past `max` bytes; a network failure while reading.
async fn read_capped(
    mut resp: reqwest::Response,
    max: usize,
    what: &str,
) -> Result<Vec<u8>, ClientError> {
    let too_large = || ClientError::TooLarge {
        what: what.to_owned(),
        max,
    };
    if resp
        .content_length()
        .is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX))
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn problem(m: &Message) -> ClientError {
    let s = |k: &str| {
        m.body
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    ClientError::Problem {
        code: s("code"),
        comment: s("comment"),
    }
}

/// The messages a Pickup 3.0 or 4.0 `delivery` carries (none for a `status`).
#[must_use]
pub fn delivered(m: &Message) -> Vec<Delivered> {
    if !PickupVersion::is_delivery(&m.type_) {
        return Vec::new();
    }
    m.attachments
        .iter()
        .flatten()
        .filter_map(|a| {
            Some(Delivered {
                id: a.id.clone()?,
                bytes: attachment_bytes(a)?,
            })
        })
        .collect()
}

pub use mpc_did_rendezvous::net::ws::{WsIo as Io, WsStream as Ws};

/// How long opening a WebSocket to a mediator (TCP connect, TLS, upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = mpc_did_rendezvous::net::ws::CONNECT_TIMEOUT;

/// Opens a WebSocket to `url` (`ws://` or `wss://`) within [`CONNECT_TIMEOUT`]. For
/// `wss://` the server certificate is checked against the Mozilla roots (webpki-roots)
/// plus `extra_roots` (DER), with rustls and its ring provider — the dialer the relay
/// client uses too ([`mpc_did_rendezvous::net::ws::connect`]). A message from the mediator
/// longer than [`MAX_MEDIATOR_MESSAGE`] ends the stream with an error.
///
/// # Errors
/// Bad URL, TCP/TLS failure, a refused upgrade, or [`ClientError::ConnectTimeout`].
pub async fn connect_ws(url: &str, extra_roots: &[Vec<u8>]) -> Result<Ws, ClientError> {
    connect_ws_within(url, extra_roots, CONNECT_TIMEOUT).await
}

/// As [`connect_ws`], giving up after `limit`.
///
/// # Errors
/// As [`connect_ws`].
pub async fn connect_ws_within(
    url: &str,
    extra_roots: &[Vec<u8>],
    limit: Duration,
) -> Result<Ws, ClientError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let request = url.into_client_request()?;
    mpc_did_rendezvous::net::ws::connect_within(request, extra_roots, MAX_MEDIATOR_MESSAGE, limit)
        .await
        .map_err(|e| match e {
            mpc_did_rendezvous::net::NetError::TimedOut => ClientError::ConnectTimeout {
                url: url.to_owned(),
                after: limit,
            },
            e => ClientError::Unexpected(format!("WebSocket to {url}: {e}")),
        })
}

/// A WebSocket for sending through a mediator with durable acknowledgements: each forward
/// carries DIDComm v2 `please_ack`, and [`Self::send`] returns once the mediator answered
/// with the `ack` naming it — sent only after the message is stored, so it survives a
/// crash as an HTTP `202` does (spec/mediator.md §2). One message at a time; the socket
/// stays open for the next.
pub struct WsSender {
    ws: Ws,
    timeout: Duration,
}

impl WsSender {
    /// Opens the mediator's WebSocket endpoint (`MediatorInfo::ws`); `extra_roots` as
    /// [`connect_ws`]. `send` waits at most `timeout` for each acknowledgement.
    ///
    /// # Errors
    /// As [`connect_ws`].
    pub async fn connect(
        ws_url: &str,
        extra_roots: &[Vec<u8>],
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Ok(Self {
            ws: connect_ws(ws_url, extra_roots).await?,
            timeout,
        })
    }

    /// Packs `msg` from `from` to `to` (authcrypt), wraps it in forwards for the routing
    /// keys of `to`'s DIDComm service — the first of which must be this socket's
    /// mediator — asking that mediator for an `ack`, sends it and waits for the `ack`.
    ///
    /// # Errors
    /// `to` has no service behind a mediator, packing fails, the mediator refuses (its
    /// problem report), the socket fails, or no `ack` within the timeout
    /// ([`ClientError::Timeout`]; the message may or may not be stored: send it again, the
    /// mediator stores a forward once, spec/mediator.md §3).
    pub async fn send(
        &mut self,
        from: &str,
        secrets: &SecretStore,
        resolver: &UniversalResolver,
        to: &str,
        mut msg: Message,
    ) -> Result<(), ClientError> {
        msg.from = Some(from.to_owned());
        msg.to = Some(vec![to.to_owned()]);
        let opts = PackOptions {
            forward: false,
            ..PackOptions::default()
        };
        let p = pack_encrypted(&msg, to, Some(from), None, resolver, secrets, &opts).await?;
        let routing = p
            .service
            .map(|s| s.routing_keys)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ClientError::Url(format!("{to} has no DIDComm service behind a mediator"))
            })?;
        let fwd = mpc_did_didcomm::wrap_in_forward_with(
            &p.message,
            to,
            &routing,
            resolver,
            opts.anon_enc,
            true,
        )
        .await?;
        self.send_forward(&fwd.message, &fwd.id).await
    }

    /// Sends an already wrapped forward whose plaintext asks for an `ack` (as
    /// [`mpc_did_didcomm::wrap_in_forward_with`] makes it) and waits for the `ack` naming
    /// `forward_id`.
    ///
    /// # Errors
    /// As [`Self::send`].
    pub async fn send_forward(
        &mut self,
        forward: &str,
        forward_id: &str,
    ) -> Result<(), ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        // A mediator that stopped reading must not hold the write for ever either.
        tokio::time::timeout(self.timeout, self.ws.send(WsMessage::text(forward)))
            .await
            .map_err(|_| ClientError::Timeout)??;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout)?
                .ok_or_else(|| ClientError::Unexpected("socket closed".into()))??;
            let bytes = match frame {
                WsMessage::Text(t) => t.as_bytes().to_vec(),
                WsMessage::Binary(b) => b.to_vec(),
                WsMessage::Close(_) => return Err(ClientError::Unexpected("socket closed".into())),
                _ => continue,
            };
            // The sender is anonymous to the mediator: acks and refusals come as plaintext.
            let m = Message::from_json(&bytes)?;
            if m.type_ == PROBLEM_REPORT_TYPE {
                return Err(problem(&m));
            }
            if acked_ids(&m).iter().any(|id| id == forward_id) {
                return Ok(());
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A live-mode WebSocket: the mediator pushes `delivery` messages as they arrive.
pub struct LiveConnection {
    client: MediatorClient,
    ws: Ws,
    pending: Vec<Delivered>,
    /// Raw mode acknowledged: binary frames are raw pushes (spec/mediator.md §3.1).
    raw: bool,
    /// An error met while draining ready frames into a batch, returned by the next call.
    deferred: Option<ClientError>,
    /// Pickup 4.0: what was queued before live mode, fetched with `delivery-request`.
    backlog: Backlog,
    /// When a frame (any: a push, a status, a pong) last arrived, and when we last sent
    /// one: the keep-alive schedule ([`Self::keep_alive`]).
    last_heard: tokio::time::Instant,
    last_sent: tokio::time::Instant,
    /// A ping sent at this time and nothing heard since.
    ping_sent: Option<tokio::time::Instant>,
    /// A frame read from the socket whose processing has not finished: kept so that a
    /// caller that drops [`Self::next_batch`] at an `.await` (the inbox's `select!` with
    /// its keep-alive timer) loses nothing; the next call processes it first.
    unread: Option<WsMessage>,
    /// A write that did not finish within [`WRITE_TIMEOUT`]: the connection is unusable
    /// and every later call says so ([`ClientError::Stalled`]).
    stalled: bool,
}

/// How long one write on a live connection (a request, an acknowledgement, a ping) may
/// take before the connection counts as lost ([`ClientError::Stalled`]). Writes are small;
/// one that waits this long is stuck behind a full socket buffer that a mediator which
/// keeps the connection open has stopped reading (spec/mediator.md §8 "Keep-alive and
/// opening"). Without a bound the inbox, which acknowledges between reads, would wait on
/// it for ever: its keep-alive cannot fire meanwhile.
pub const WRITE_TIMEOUT: Duration = CONNECT_TIMEOUT;

/// Most raw pushes [`LiveConnection::next_batch`] gathers into one batch.
const RAW_BATCH_MAX: usize = 1000;
/// Most unacknowledged ids a live connection remembers for its backlog requests.
const MAX_UNACKED_TRACKED: usize = 10_000;

impl LiveConnection {
    fn new(client: MediatorClient, ws: Ws) -> Self {
        Self {
            client,
            ws,
            pending: Vec::new(),
            raw: false,
            deferred: None,
            backlog: Backlog::default(),
            last_heard: tokio::time::Instant::now(),
            last_sent: tokio::time::Instant::now(),
            ping_sent: None,
            unread: None,
            stalled: false,
        }
    }

    /// Writes `frame` within [`WRITE_TIMEOUT`]; past it the connection is marked stalled.
    async fn write(&mut self, frame: WsMessage) -> Result<(), ClientError> {
        self.check_stalled()?;
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(frame)).await {
            Ok(sent) => Ok(sent?),
            Err(_) => {
                self.stalled = true;
                self.check_stalled()
            }
        }
    }

    /// [`ClientError::Stalled`] once a write timed out.
    fn check_stalled(&self) -> Result<(), ClientError> {
        if self.stalled {
            return Err(ClientError::Stalled {
                after: WRITE_TIMEOUT,
            });
        }
        Ok(())
    }

    /// When [`Self::keep_alive`] has something to do next, for keep-alive `interval`.
    #[must_use]
    pub fn keep_alive_at(&self, interval: Duration) -> tokio::time::Instant {
        match self.ping_sent {
            Some(p) => p + interval,
            None => self.last_sent.min(self.last_heard) + interval,
        }
    }

    /// Keeps the connection alive and checks it is (spec/mediator.md §8 "Keep-alive and
    /// opening"): once nothing was sent, or nothing heard, for `interval`, sends a
    /// WebSocket ping (the mediator counts it as activity against its idle timeout and
    /// answers with a pong); once a ping has had no answer, nor anything else, for
    /// `interval`, the connection is dead. Call it at [`Self::keep_alive_at`].
    ///
    /// # Errors
    /// [`ClientError::Silent`] when the connection is dead; a socket failure sending the
    /// ping; [`ClientError::Stalled`] when a write did not finish in time (this one or an
    /// earlier one).
    pub async fn keep_alive(&mut self, interval: Duration) -> Result<(), ClientError> {
        self.check_stalled()?;
        let now = tokio::time::Instant::now();
        if self.ping_sent.is_some_and(|p| now >= p + interval) {
            // Frames that arrived while the caller was busy elsewhere count.
            self.drain_ready().await;
            if self.ping_sent.is_some() {
                return Err(ClientError::Silent {
                    silent: now - self.last_heard,
                });
            }
        }
        if self.ping_sent.is_none() && now >= self.keep_alive_at(interval) {
            self.write(WsMessage::Ping(Default::default())).await?;
            self.last_sent = now;
            self.ping_sent = Some(now);
        }
        Ok(())
    }

    /// Sends the `live-delivery-change` switching live mode on; returns its id.
    async fn switch_on(
        &mut self,
        pickup: PickupVersion,
        raw: bool,
        backlog: bool,
    ) -> Result<String, ClientError> {
        let change = live_change(pickup, raw, backlog);
        let id = change.id.clone();
        if pickup == PickupVersion::V4 {
            self.backlog.change = Some((id.clone(), backlog));
        }
        self.send(change).await?;
        Ok(id)
    }

    /// Sends the next backlog `delivery-request` if one is due.
    async fn request_backlog(&mut self) -> Result<(), ClientError> {
        if !self.backlog.due {
            return Ok(());
        }
        let limit = BACKLOG_PAGE + self.backlog.unacked.len() as u64;
        let req = delivery_request(PickupVersion::V4, limit);
        let id = req.id.clone();
        self.send(req).await?;
        self.backlog.due = false;
        self.backlog.request = Some(id);
        Ok(())
    }

    /// Sends one request on the socket (authcrypt to the mediator).
    ///
    /// # Errors
    /// Packing or socket failure; [`ClientError::Stalled`] when the write did not finish
    /// within [`WRITE_TIMEOUT`] (or an earlier one did not).
    pub async fn send(&mut self, msg: Message) -> Result<(), ClientError> {
        self.check_stalled()?;
        let packed = self.client.pack_request(msg).await?;
        self.write(WsMessage::text(packed)).await?;
        self.last_sent = tokio::time::Instant::now();
        Ok(())
    }

    /// The next mediator message on the socket (unpacked), waiting at most `timeout`.
    /// Pings are answered by the library; [`Self::keep_alive`] sends ours.
    ///
    /// # Errors
    /// [`ClientError::Timeout`], a closed socket, or an unpack failure.
    /// In raw mode, raw pushes met meanwhile are kept for [`Self::next_batch`].
    ///
    /// # Errors
    /// [`ClientError::Timeout`], a closed socket, an unpack failure, or (raw mode) a
    /// malformed raw push ([`ClientError::RawPush`]).
    pub async fn next_message(&mut self, timeout: Duration) -> Result<Message, ClientError> {
        self.check_stalled()?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Cancel safety: a frame taken off the socket stays in `unread` until it has
            // been processed, so dropping this future at an `.await` loses no message.
            // (Today unpacking a push does not wait — the mediator's did:key document is
            // in the resolver's overlay — so this guards the contract, not a seen loss.)
            let msg = match self.unread.take() {
                Some(m) => m,
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let frame = tokio::time::timeout(left, self.ws.next())
                        .await
                        .map_err(|_| ClientError::Timeout)?;
                    frame.ok_or_else(|| ClientError::Unexpected("socket closed".into()))??
                }
            };
            self.unread = Some(msg.clone());
            let read = self.read_frame(Some(Ok(msg))).await;
            self.unread = None;
            match read? {
                Frame::Message(m) => return Ok(*m),
                Frame::Raw(d) => self.pending.push(d),
                Frame::ChangeRefused(e) => return Err(e),
                Frame::Other => {}
            }
        }
    }

    /// Classifies one frame from the socket (`None`: the stream ended).
    async fn read_frame(
        &mut self,
        frame: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Frame, ClientError> {
        let frame = frame.ok_or_else(|| ClientError::Unexpected("socket closed".into()))??;
        self.last_heard = tokio::time::Instant::now();
        self.ping_sent = None;
        let bytes = match frame {
            WsMessage::Text(t) => t.as_bytes().to_vec(),
            WsMessage::Binary(b) if self.raw => {
                let (id, bytes) = decode_raw_push(&b)?;
                return Ok(Frame::Raw(Delivered {
                    id,
                    bytes: bytes.to_vec(),
                }));
            }
            WsMessage::Binary(b) => b.to_vec(),
            WsMessage::Close(_) => return Err(ClientError::Unexpected("socket closed".into())),
            _ => return Ok(Frame::Other),
        };
        let (m, _) = self.client.unpack(&bytes).await?;
        if m.type_ == PROBLEM_REPORT_TYPE {
            if let Some((id, true)) = &self.backlog.change {
                let about = |t: &Option<String>| t.as_deref() == Some(id.as_str());
                if about(&m.thid) || about(&m.pthid) {
                    self.backlog.change = None;
                    return Ok(Frame::ChangeRefused(problem(&m)));
                }
            }
            return Err(problem(&m));
        }
        Ok(Frame::Message(Box::new(m)))
    }

    /// The next batch of pushed messages (skipping `status` messages), waiting at most
    /// `timeout` for it.
    ///
    /// # Errors
    /// As [`Self::next_message`]; [`ClientError::Stalled`] once a write (an
    /// acknowledgement, say) did not finish in time, so that a caller that only logs a
    /// failed [`Self::ack`] re-connects at its next read.
    pub async fn next_batch(&mut self, timeout: Duration) -> Result<Vec<Delivered>, ClientError> {
        self.check_stalled()?;
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            return Ok(self.handed_out(batch));
        }
        self.request_backlog().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .map_err(|_| ClientError::Timeout)?;
            match self.read_frame(frame).await? {
                Frame::Message(m) => {
                    self.backlog.on_status(&m);
                    let d = delivered(&m);
                    self.backlog.on_delivery(&m, &d);
                    if !d.is_empty() {
                        return Ok(self.handed_out(d));
                    }
                    // A backlog page that brought nothing, or a status that starts one.
                    self.request_backlog().await?;
                }
                Frame::ChangeRefused(e) => {
                    // A strict 4.0 mediator refused the backlog field: switch live mode
                    // on without it and fetch the backlog ourselves.
                    tracing::info!(
                        "the mediator refused the backlog extension ({e}); plain Pickup 4.0"
                    );
                    self.switch_on(PickupVersion::V4, false, false).await?;
                }
                Frame::Raw(d) => {
                    // Raw pushes come one per frame: gather those already received so
                    // that the caller acknowledges them together.
                    // Gathered in `pending`, not a local: dropped mid-way, the next call
                    // hands them out.
                    self.pending.push(d);
                    self.drain_ready().await;
                    let batch = std::mem::take(&mut self.pending);
                    return Ok(self.handed_out(batch));
                }
                Frame::Other => {}
            }
        }
    }

    /// Notes the ids of a batch given to the caller as delivered and not acknowledged.
    fn handed_out(&mut self, batch: Vec<Delivered>) -> Vec<Delivered> {
        if self.backlog.unacked.len() < MAX_UNACKED_TRACKED {
            self.backlog
                .unacked
                .extend(batch.iter().map(|d| d.id.clone()));
        }
        batch
    }

    /// Appends the messages of frames that are already readable (without waiting) to
    /// `pending`; an error is kept for the next call so the gathered messages are not lost.
    /// Cancel-safe as [`Self::next_batch`]: a frame being processed stays in `unread`.
    async fn drain_ready(&mut self) {
        use futures_util::FutureExt as _;
        while self.pending.len() < RAW_BATCH_MAX {
            let Some(frame) = self.ws.next().now_or_never() else {
                return;
            };
            let msg = match frame {
                Some(Ok(m)) => m,
                None => {
                    self.deferred = Some(ClientError::Unexpected("socket closed".into()));
                    return;
                }
                Some(Err(e)) => {
                    self.deferred = Some(e.into());
                    return;
                }
            };
            self.unread = Some(msg.clone());
            let read = self.read_frame(Some(Ok(msg))).await;
            self.unread = None;
            match read {
                Ok(Frame::Raw(d)) => self.pending.push(d),
                Ok(Frame::Message(m)) => self.pending.extend(delivered(&m)),
                Ok(Frame::Other) => {}
                Ok(Frame::ChangeRefused(e)) | Err(e) => {
                    self.deferred = Some(e);
                    return;
                }
            }
        }
    }

    /// Acknowledges messages (`messages-received`).
    ///
    /// # Errors
    /// As [`Self::send`].
    pub async fn ack(&mut self, ids: &[String]) -> Result<(), ClientError> {
        if ids.is_empty() {
            return Ok(());
        }
        let p = self.client.versions().await.pickup.types();
        self.send(message(
            p.messages_received,
            json!({ "message_id_list": ids }),
        ))
        .await?;
        for id in ids {
            self.backlog.unacked.remove(id);
        }
        Ok(())
    }

    /// The client this connection belongs to.
    #[must_use]
    pub fn client(&self) -> &MediatorClient {
        &self.client
    }

    /// Closes the socket (drops it when writes stalled or the close frame does not go out
    /// within [`WRITE_TIMEOUT`]).
    pub async fn close(mut self) {
        if !self.stalled {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, self.ws.close(None)).await;
        }
    }
}

/// One frame of a live socket, as [`LiveConnection`] reads it.
enum Frame {
    /// A DIDComm message from the mediator (unpacked; boxed, it is large).
    Message(Box<Message>),
    /// A raw live push.
    Raw(Delivered),
    /// A problem report refusing our `live-delivery-change` that asked for the backlog.
    ChangeRefused(ClientError),
    /// Ping, pong or another control frame.
    Other,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mpc_did_didcomm::message::reply;
    use mpc_did_didcomm::protocols::pickup::{self, encode_raw_push};
    use tokio::net::TcpListener;

    /// An endpoint that answers every request with status 500 and `body`.
    async fn answering_500(body: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    let _ = s.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        url
    }

    /// A problem report whose comment is `len` bytes.
    fn report(len: usize) -> Vec<u8> {
        let m = Message::new(
            "p-1",
            PROBLEM_REPORT_TYPE,
            json!({ "code": "e.p.me.res.storage", "comment": "x".repeat(len) }),
        );
        m.to_json().unwrap().into_bytes()
    }

    /// An error answer's body is read only up to 16 KiB (the endpoint is a URL a peer
    /// chose): a small problem report is understood, a bigger body is not read whole.
    /// Before the fix the whole body was read, however big.
    #[tokio::test]
    async fn error_bodies_are_read_only_up_to_a_bound() {
        let http = new_http_client().unwrap();
        let small = answering_500(report(100)).await;
        let e = post_packed(&http, &small, b"{}".to_vec())
            .await
            .unwrap_err();
        assert!(matches!(e, ClientError::Problem { .. }), "{e:?}");
        let big = answering_500(report(MAX_ERROR_BODY)).await;
        let e = post_packed(&http, &big, b"{}".to_vec()).await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Unexpected(s) if s.starts_with("HTTP 500")),
            "{e:?}"
        );
    }

    /// The refusals worth a retry are the "not now" codes of spec/mediator.md §4 and
    /// HTTP 429/5xx; the permanent ones are not.
    #[test]
    fn transient_refusals() {
        let p = |code: &str| ClientError::Problem {
            code: code.to_owned(),
            comment: String::new(),
        };
        for code in [
            "e.p.req.source-quota",
            "e.p.me.res.storage.queue-full",
            "e.p.me.res.storage",
            "e.p.req.rate-limited",
            "e.p.req.timeout",
        ] {
            assert!(p(code).is_transient(), "{code}");
        }
        for code in [
            "e.p.xfer.unknown-recipient",
            "e.p.msg.too-big",
            "e.p.msg.malformed",
            "e.p.req.not-authorized",
            "e.p.msg.replay",
            "garbage",
            "",
        ] {
            assert!(!p(code).is_transient(), "{code}");
        }
        assert!(ClientError::Unexpected("HTTP 503 Service Unavailable".into()).is_transient());
        assert!(ClientError::Unexpected("HTTP 429 Too Many Requests".into()).is_transient());
        assert!(!ClientError::Unexpected("HTTP 404 Not Found".into()).is_transient());
        assert!(ClientError::Timeout.is_transient());
        assert!(!ClientError::Denied.is_transient());
    }

    /// The mediator side of a scripted stand-in's one WebSocket: reads and answers
    /// authcrypt requests as the mediator's DID.
    struct StandIn {
        ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
        did: String,
        secrets: SecretStore,
        resolver: UniversalResolver,
        /// The client's DID (from the first request).
        client: String,
    }

    impl StandIn {
        /// The next request from the client, unpacked.
        async fn request(&mut self) -> Message {
            let Some(Ok(WsMessage::Text(req))) = self.ws.next().await else {
                panic!("expected a request");
            };
            let (req, meta) = mpc_did_didcomm::unpack(
                req.as_bytes(),
                &self.resolver,
                &self.secrets,
                &UnpackOptions::default(),
            )
            .await
            .unwrap();
            self.client = did_of(meta.encrypted_from_kid.as_deref().unwrap()).to_owned();
            req
        }

        /// Sends `m` to the client (authcrypt from the mediator).
        async fn answer(&mut self, mut m: Message) {
            m.from = Some(self.did.clone());
            m.to = Some(vec![self.client.clone()]);
            let opts = PackOptions {
                forward: false,
                ..PackOptions::default()
            };
            let packed = pack_encrypted(
                &m,
                &self.client,
                Some(&self.did),
                None,
                &self.resolver,
                &self.secrets,
                &opts,
            )
            .await
            .unwrap();
            self.ws.send(WsMessage::text(packed.message)).await.unwrap();
        }
    }

    /// A client of a mediator stand-in on loopback speaking Pickup `pickup`, and the
    /// stand-in's task running `script` on the one WebSocket it accepts.
    async fn stand_in<F, Fut>(
        pickup: PickupVersion,
        script: F,
    ) -> (MediatorClient, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(StandIn) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let (mdid, msecrets) = mpc_did_testkit::mediator::ephemeral_identity();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let info = MediatorInfo {
            did: mdid.clone(),
            routing_key: format!("{mdid}#key"),
            http: format!("http://127.0.0.1:{port}/didcomm"),
            ws: format!("ws://127.0.0.1:{port}/ws"),
            invitation_url: String::new(),
            stun_port: None,
        };
        let (did, secrets) = mpc_did_testkit::mediator::ephemeral_identity();
        let client =
            MediatorClient::new(info, &did, secrets, UniversalResolver::new().unwrap()).unwrap();
        // The stand-in serves one WebSocket, no Discover Features: fix the versions.
        client
            .versions
            .set(Versions {
                pickup,
                ..Versions::default()
            })
            .unwrap();
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            script(StandIn {
                ws,
                did: mdid,
                secrets: msecrets,
                resolver: UniversalResolver::new().unwrap(),
                client: String::new(),
            })
            .await;
        });
        (client, task)
    }

    /// A mediator stand-in on loopback that acknowledges raw mode (authcrypt status, as
    /// the real one does) and then sends `frames` as binary frames.
    async fn fake_mediator(
        frames: Vec<Vec<u8>>,
        acknowledge: bool,
    ) -> (MediatorClient, tokio::task::JoinHandle<()>) {
        stand_in(PickupVersion::V3, move |mut m| async move {
            let req = m.request().await;
            assert_eq!(req.type_, pickup::LIVE_DELIVERY_CHANGE_TYPE);
            assert_eq!(req.body[RAW_LIVE_FIELD], true);
            assert_eq!(req.extra[RETURN_ROUTE], "all");
            let mut body = json!({ "live_delivery": true, "message_count": 0 });
            if acknowledge {
                body[RAW_LIVE_FIELD] = json!(true);
            }
            m.answer(reply(pickup::STATUS_TYPE, body, &req)).await;
            for f in frames {
                m.ws.send(WsMessage::binary(f)).await.unwrap();
            }
            // Hold the socket open until the client is done.
            while let Some(Ok(_)) = m.ws.next().await {}
        })
        .await
    }

    // spec/mediator.md §3.2 "Client": a strict Pickup 4.0 mediator that refuses the
    // backlog field (as our own CM 3.0 refuses unknown fields) gets the change again
    // without it, and the backlog is fetched with `delivery-request`
    // (`message_count_limit`) until a page brings nothing new.
    #[tokio::test]
    async fn a_strict_4_0_mediator_gets_plain_4_0_and_the_backlog_is_requested() {
        use mpc_did_didcomm::protocols::pickup_v4 as v4;
        use mpc_did_didcomm::protocols::report_problem::PROBLEM_REPORT_TYPE;
        let (client, task) = stand_in(PickupVersion::V4, |mut m| async move {
            let first = m.request().await;
            assert_eq!(first.type_, v4::LIVE_DELIVERY_CHANGE_TYPE);
            assert_eq!(first.body[LIVE_BACKLOG_FIELD], true);
            let mut refusal = message(
                PROBLEM_REPORT_TYPE,
                json!({ "code": "e.p.msg.bad-request", "comment": "unknown field `mpc_did_backlog`" }),
            );
            refusal.pthid = Some(first.id.clone());
            m.answer(refusal).await;
            let second = m.request().await;
            assert_eq!(second.type_, v4::LIVE_DELIVERY_CHANGE_TYPE);
            assert!(second.body.get(LIVE_BACKLOG_FIELD).is_none(), "{}", second.body);
            m.answer(reply(
                v4::STATUS_TYPE,
                json!({ "live_delivery": true, "message_count": 1 }),
                &second,
            ))
            .await;
            let req = m.request().await;
            assert_eq!(req.type_, v4::DELIVERY_REQUEST_TYPE);
            assert_eq!(req.body["message_count_limit"], BACKLOG_PAGE);
            assert_eq!(req.extra[RETURN_ROUTE], "all");
            let mut page = reply(v4::DELIVERY_TYPE, json!({}), &req);
            page.attachments = Some(vec![pickup::message_attachment("q1", b"{\"x\":1}")]);
            m.answer(page).await;
            let ack = m.request().await;
            assert_eq!(ack.type_, v4::MESSAGES_RECEIVED_TYPE);
            assert_eq!(ack.body["message_id_list"], json!(["q1"]));
            // 4.0 removed return_route from messages-received.
            assert!(!ack.extra.contains_key(RETURN_ROUTE));
            let req = m.request().await;
            assert_eq!(req.type_, v4::DELIVERY_REQUEST_TYPE);
            let mut empty = reply(v4::DELIVERY_TYPE, json!({}), &req);
            empty.attachments = Some(Vec::new());
            m.answer(empty).await;
            // No further request after an empty page; hold the socket until the client
            // closes it.
            while let Some(Ok(f)) = m.ws.next().await {
                assert!(!f.is_text(), "a request after the empty page");
            }
        })
        .await;
        let mut live = client.live().await.unwrap();
        let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].id, "q1");
        live.ack(&["q1".to_owned()]).await.unwrap();
        let err = live
            .next_batch(Duration::from_millis(500))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Timeout), "{err:?}");
        live.close().await;
        task.await.unwrap();
    }

    // spec/mediator.md §3.2: the newest version of each protocol the mediator discloses
    // with the mediator role; 2.0 / 3.0 for one it does not disclose.
    #[test]
    fn picks_the_newest_offered_version() {
        let d = |id: &str, role: &str| Disclosure {
            feature_type: "protocol".into(),
            id: id.into(),
            roles: vec![role.into()],
        };
        let all = [
            d("https://didcomm.org/coordinate-mediation/2.0", "mediator"),
            d("https://didcomm.org/coordinate-mediation/3.0", "mediator"),
            d("https://didcomm.org/messagepickup/3.0", "mediator"),
            d("https://didcomm.org/message-pickup/4.0", "mediator"),
        ];
        let v = pick_versions(&all);
        assert_eq!(v.cm, CoordinateMediationVersion::V3);
        assert_eq!(v.pickup, PickupVersion::V4);
        assert_eq!(pick_versions(&all[..1]), Versions::default());
        // 4.0 offered in another role does not count.
        let v = pick_versions(&[d("https://didcomm.org/message-pickup/4.0", "recipient")]);
        assert_eq!(v.pickup, PickupVersion::V3);
        assert_eq!(pick_versions(&[]), Versions::default());
    }

    fn did_of(kid: &str) -> &str {
        mpc_did_didcomm::did_of(kid)
    }

    // spec/mediator.md §3.1: a malformed raw push is a typed error, after the good pushes
    // that came with it.
    #[tokio::test]
    async fn bad_raw_frame_is_a_typed_error() {
        let good = encode_raw_push("aa11", b"{\"ciphertext\":\"x\"}").unwrap();
        let (client, task) = fake_mediator(vec![good, b"\x09abc".to_vec()], true).await;
        let mut live = client.live_raw(Duration::from_secs(10)).await.unwrap();
        let mut got = Vec::new();
        let err = loop {
            match live.next_batch(Duration::from_secs(10)).await {
                Ok(b) => got.extend(b),
                Err(e) => break e,
            }
        };
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "aa11");
        assert_eq!(got[0].bytes, b"{\"ciphertext\":\"x\"}");
        assert!(
            matches!(err, ClientError::RawPush(RawPushError::Truncated)),
            "{err:?}"
        );
        live.close().await;
        task.await.unwrap();
    }

    // spec/mediator.md §3.1: without the acknowledgement the client does not assume raw
    // mode.
    #[tokio::test]
    async fn unacknowledged_raw_mode_is_refused() {
        let (client, task) = fake_mediator(Vec::new(), false).await;
        let err = client
            .live_raw(Duration::from_secs(10))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::RawUnsupported), "{err:?}");
        task.await.unwrap();
    }
}
