//! Per-message DIDComm as the proxy's stream source: the design secure sessions replace,
//! kept as a user-selectable transport (`mpc-did run --transport didcomm`) and as the
//! evaluation's baseline (spec/e3.md §4, modes `didcomm-direct` and `didcomm-mediated`).
//!
//! Every chunk a party's MPyC writes to a peer (read in pieces of up to [`CHUNK`] bytes —
//! [`MEDIATED_CHUNK`] through a mediator — so normally one MPyC message, sometimes two
//! coalesced, and a large one split) becomes one DIDComm v2 message of
//! type [`DATA_TYPE`], authcrypt-packed (ECDH-1PU+A256KW, A256CBC-HS512) from the sender's
//! DID to the receiver's. No handshake and no symmetric state: every message pays the
//! public-key operations. Two carriers:
//!
//! - **direct** ([`DidcommTransport::direct`]): one TCP connection per pair, each packed
//!   message sent with a 4-byte big-endian length prefix (the e3 matrix's `didcomm-direct`).
//! - **mediated** ([`DidcommTransport::mediated`]): through the mediators, as DIDComm routes
//!   any message: the sender's [`Agent`] wraps it in a Routing 2.0 `forward` to the
//!   receiver's mediator, which delivers it live over the receiver's Pickup WebSocket. The
//!   body carries the run it belongs to and a per-direction sequence number, so a message
//!   of another run is ignored (with a log line) and the receiver restores the order.
//!
//! ```text
//!  MPyC i ─TCP─ proxy i ─ DidcommTransport ─ authcrypt per chunk ─┬─ TCP (direct) ─────────┐
//!                                                                 └─ mediator of j (forward)┤
//!                                                       proxy j ◄─ unpack, check sender ◄──┘
//! ```
//!
//! The lower party id opens the stream to a higher one, as with sessions. A peer that
//! reports its program failed (mediated: a `fail` message) ends the run through
//! [`Transport::peer_failure`].

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use mpc_did_agent::{Agent, AgentError, Inbound};
use mpc_did_didcomm::{
    pack_encrypted, unpack, ContentAlg, Message, PackOptions, SecretStore, UnpackOptions,
};
use mpc_did_proxy::{PartyId, PeerFailure, Transport};
use mpc_did_resolver::StaticResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// Largest piece of MPyC output packed into one DIDComm message.
pub const CHUNK: usize = 1 << 20;
/// Largest piece of MPyC output per mediated message: base64 in the body, the authcrypt
/// JWE and the `forward` around it grow it about 2.5×, and a mediator accepts 1 MiB by
/// default (`limits.max_message_bytes`).
pub const MEDIATED_CHUNK: usize = 256 << 10;
/// Largest DIDComm message accepted from a peer on a direct link (a [`CHUNK`] grows by
/// base64 and the JWE).
const MAX_MESSAGE: usize = 4 << 20;
/// The prefix of every message type this transport sends (subscribe to it before the peers
/// may send).
pub const DATA_PREFIX: &str = "https://mpc-did.example/mpyc-bytes/1.0/";
/// The type of a message carrying MPyC bytes.
pub const DATA_TYPE: &str = "https://mpc-did.example/mpyc-bytes/1.0/data";
/// Messages a mediated receiver buffers out of order per peer before it gives up on the
/// link (the mediator normally delivers in order; this bounds memory when it does not).
const MAX_REORDER: usize = 4096;

/// How a mediated sender treats refusals (spec/didcomm-transport.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediatedOptions {
    /// How long a message may keep being refused for a reason that passes ("not now":
    /// the receiver's queue or our quota at its mediator is full, the mediator is
    /// unreachable) before the link to that peer fails. Each accepted message starts the
    /// clock again.
    pub give_up: Duration,
    /// A link with nothing to send for this long sends an `alive` message (§3, "Silence").
    pub keepalive: Duration,
    /// A peer from which nothing (data, `alive`, `eof`) came for this long while we were
    /// waiting for messages has failed: its process or machine stopped without a word.
    /// At least 3 × `keepalive`. Time in which we were busy (the transport behind, the
    /// agent holding messages back) does not count.
    pub silence: Duration,
}

impl Default for MediatedOptions {
    fn default() -> Self {
        Self {
            give_up: Duration::from_secs(120),
            keepalive: Duration::from_secs(5),
            silence: Duration::from_secs(30),
        }
    }
}

/// The pause before the `attempt`-th (0-based) re-send of a refused message: 50 ms,
/// doubling, at most 2 s.
fn resend_delay(attempt: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << attempt.min(6))
        .min(Duration::from_secs(2))
}

/// A party's per-message DIDComm links to its peers, as the proxy's [`Transport`].
pub struct DidcommTransport {
    opens: Mutex<BTreeMap<PartyId, DuplexStream>>,
    accepts: Mutex<mpsc::Receiver<(PartyId, DuplexStream)>>,
    failures: Mutex<mpsc::Receiver<PeerFailure>>,
    mediated: Option<Mediated>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for DidcommTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DidcommTransport")
            .field("mediated", &self.mediated.is_some())
            .finish_non_exhaustive()
    }
}

/// What a mediated transport needs to tell peers of a failure: the agent and each peer's
/// DID with the run id of the pair.
#[derive(Clone)]
struct Mediated {
    agent: Agent,
    peers: Vec<(String, String)>,
}

impl Drop for DidcommTransport {
    fn drop(&mut self) {
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

/// The local ends: which streams we open and which we accept, plus the far ends per peer.
struct Ends {
    opens: BTreeMap<PartyId, DuplexStream>,
    accepts: mpsc::Receiver<(PartyId, DuplexStream)>,
    far: Vec<(PartyId, DuplexStream)>,
}

fn ends(me: PartyId, peers: &[PartyId]) -> Ends {
    let (tx, accepts) = mpsc::channel(peers.len().max(1));
    let mut opens = BTreeMap::new();
    let mut far = Vec::new();
    for &p in peers {
        let (near, f) = tokio::io::duplex(CHUNK);
        if me < p {
            opens.insert(p, near);
        } else {
            // Cannot fail: the channel holds one slot per peer.
            let _ = tx.try_send((p, near));
        }
        far.push((p, f));
    }
    Ends {
        opens,
        accepts,
        far,
    }
}

fn encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode(body: &serde_json::Value) -> Option<Vec<u8>> {
    body.get("d").and_then(|d| d.as_str()).and_then(|d| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(d)
            .ok()
    })
}

impl DidcommTransport {
    /// Party `me`'s transport over one direct TCP connection per peer: `links` names each
    /// peer's party id, DID and the connection. `secrets` holds our DID's keys; `resolver`
    /// resolves our DID and every peer's.
    #[must_use]
    pub fn direct(
        me: PartyId,
        my_did: &str,
        secrets: SecretStore,
        resolver: StaticResolver,
        links: Vec<(PartyId, String, TcpStream)>,
    ) -> Self {
        let ids: Vec<PartyId> = links.iter().map(|(p, _, _)| *p).collect();
        let e = ends(me, &ids);
        let keys = Arc::new((my_did.to_owned(), secrets, resolver));
        let (_fail_tx, failures) = mpsc::channel(1);
        let mut tasks = Vec::new();
        for ((_, peer_did, link), (_, far)) in links.into_iter().zip(e.far) {
            let (link_r, link_w) = link.into_split();
            let (far_r, far_w) = tokio::io::split(far);
            tasks.push(tokio::spawn(direct_out(
                Arc::clone(&keys),
                peer_did.clone(),
                far_r,
                link_w,
            )));
            tasks.push(tokio::spawn(direct_in(
                Arc::clone(&keys),
                peer_did,
                link_r,
                far_w,
            )));
        }
        Self {
            opens: Mutex::new(e.opens),
            accepts: Mutex::new(e.accepts),
            failures: Mutex::new(failures),
            mediated: None,
            tasks: std::sync::Mutex::new(tasks),
        }
    }

    /// Party `me`'s transport through the mediators: every chunk is sent with
    /// [`Agent::send`] (authcrypt, forwarded through the peer's mediator) and `inbound`
    /// must be the agent's subscription to [`DATA_PREFIX`], taken before any peer may
    /// send. `peers` names each peer's party id, DID and the run id of the pair (e.g. the
    /// pair of attempts, spec/lobby.md §8); the peer must use the same run id. Messages from
    /// DIDs that are not `peers`, unauthenticated ones and those of another run are ignored
    /// with a log line. Take `inbound` with [`Agent::subscribe_lossless`]: with a plain
    /// subscription the agent drops data once this transport is far enough behind.
    #[must_use]
    pub fn mediated(
        me: PartyId,
        agent: Agent,
        peers: Vec<(PartyId, String, String)>,
        inbound: mpsc::Receiver<Inbound>,
    ) -> Self {
        Self::mediated_with(me, agent, peers, inbound, MediatedOptions::default())
    }

    /// As [`Self::mediated`], with `options`.
    #[must_use]
    pub fn mediated_with(
        me: PartyId,
        agent: Agent,
        peers: Vec<(PartyId, String, String)>,
        inbound: mpsc::Receiver<Inbound>,
        options: MediatedOptions,
    ) -> Self {
        let ids: Vec<PartyId> = peers.iter().map(|(p, _, _)| *p).collect();
        let e = ends(me, &ids);
        let (fail_tx, failures) = mpsc::channel(peers.len().max(1));
        let mut tasks = Vec::new();
        let mut writers = BTreeMap::new();
        for ((pid, did, run), (_, far)) in peers.iter().zip(e.far) {
            let (far_r, far_w) = tokio::io::split(far);
            let (tx, rx) = mpsc::channel(256);
            writers.insert(did.clone(), (*pid, run.clone(), tx));
            tasks.push(tokio::spawn(mediated_out(
                Outgoing {
                    agent: agent.clone(),
                    run: run.clone(),
                    peer: (*pid, did.clone()),
                    failures: fail_tx.clone(),
                    options,
                },
                far_r,
            )));
            tasks.push(tokio::spawn(mediated_writer(rx, far_w)));
        }
        let silence = options.silence.max(options.keepalive.saturating_mul(3));
        let live = agent.live_events();
        tasks.push(tokio::spawn(mediated_in(
            inbound, writers, fail_tx, silence, live,
        )));
        Self {
            opens: Mutex::new(e.opens),
            accepts: Mutex::new(e.accepts),
            failures: Mutex::new(failures),
            mediated: Some(Mediated {
                agent,
                peers: peers.into_iter().map(|(_, d, r)| (d, r)).collect(),
            }),
            tasks: std::sync::Mutex::new(tasks),
        }
    }
}

type Keys = Arc<(String, SecretStore, StaticResolver)>;

/// MPyC's bytes → one authcrypt message per chunk, length-prefixed on the link.
async fn direct_out(
    keys: Keys,
    peer: String,
    mut far_r: ReadHalf<DuplexStream>,
    mut link_w: tokio::net::tcp::OwnedWriteHalf,
) {
    let (did, secrets, resolver) = &*keys;
    let opts = PackOptions {
        anon_enc: ContentAlg::A256CbcHs512,
        protect_sender: false,
        forward: false,
    };
    let mut buf = vec![0u8; CHUNK];
    let mut seq = 0u64;
    loop {
        let n = match far_r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seq += 1;
        let msg = Message::new(
            format!("{did}-{seq}"),
            DATA_TYPE,
            serde_json::json!({ "d": encode(&buf[..n]) }),
        )
        .from(did.clone())
        .to(peer.clone());
        let packed =
            match pack_encrypted(&msg, &peer, Some(did), None, resolver, secrets, &opts).await {
                Ok(p) => p.message,
                Err(e) => {
                    tracing::warn!("didcomm transport: pack for {peer} failed: {e}");
                    break;
                }
            };
        let Ok(len) = u32::try_from(packed.len()) else {
            break;
        };
        if link_w.write_all(&len.to_be_bytes()).await.is_err()
            || link_w.write_all(packed.as_bytes()).await.is_err()
        {
            break;
        }
    }
    let _ = link_w.shutdown().await;
}

/// Length-prefixed messages from the link → unpacked, sender checked → MPyC.
async fn direct_in(
    keys: Keys,
    peer: String,
    mut link_r: tokio::net::tcp::OwnedReadHalf,
    mut far_w: WriteHalf<DuplexStream>,
) {
    let (_, secrets, resolver) = &*keys;
    let uopts = UnpackOptions {
        max_size: MAX_MESSAGE,
    };
    loop {
        let mut len = [0u8; 4];
        if link_r.read_exact(&mut len).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_MESSAGE {
            tracing::warn!("didcomm transport: {len}-byte message from {peer} refused");
            break;
        }
        let mut packed = vec![0u8; len];
        if link_r.read_exact(&mut packed).await.is_err() {
            break;
        }
        let (msg, meta) = match unpack(&packed, resolver, secrets, &uopts).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("didcomm transport: a message from {peer} did not unpack: {e}");
                break;
            }
        };
        if !meta.authenticated || msg.from.as_deref() != Some(peer.as_str()) {
            tracing::info!("didcomm transport: a message not authenticated as {peer} ignored");
            continue;
        }
        let Some(data) = decode(&msg.body) else {
            tracing::info!("didcomm transport: a message without data from {peer} ignored");
            continue;
        };
        if far_w.write_all(&data).await.is_err() {
            break;
        }
    }
    let _ = far_w.shutdown().await;
}

/// One direction of a mediated link: to whom, in which run, and where its failure goes.
struct Outgoing {
    agent: Agent,
    run: String,
    peer: (PartyId, String),
    failures: mpsc::Sender<PeerFailure>,
    options: MediatedOptions,
}

impl Outgoing {
    /// Send `msg`, again while it is refused for a reason that passes (spec/
    /// didcomm-transport.md §2), for at most `options.give_up`.
    async fn send(&self, msg: Message) -> Result<(), AgentError> {
        let peer = &self.peer.1;
        let start = tokio::time::Instant::now();
        let mut attempt = 0u32;
        let mut told = Duration::ZERO;
        loop {
            let e = match self.agent.send(peer, msg.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let waited = start.elapsed();
            if !e.is_transient() || waited >= self.options.give_up {
                return Err(e);
            }
            if waited >= told + Duration::from_secs(10) {
                told = waited;
                tracing::warn!(
                    "didcomm transport: messages to {peer} refused for {} s ({e}); retrying for up to {} s",
                    waited.as_secs(),
                    self.options.give_up.as_secs()
                );
            } else {
                tracing::debug!("didcomm transport: a message to {peer} refused ({e}); retrying");
            }
            tokio::time::sleep(resend_delay(attempt)).await;
            attempt = attempt.saturating_add(1);
        }
    }

    /// The link is lost: our run ends with a failure naming the peer, and the peer is told
    /// (best effort: its mediator may refuse this too).
    async fn fail(&self, e: &AgentError) {
        let (pid, peer) = &self.peer;
        let reason = format!(
            "messages to it could not be sent through its mediator ({e}); a party that no longer receives cannot go on"
        );
        tracing::warn!("didcomm transport: sending to {peer} failed: {e}");
        let _ = self.failures.try_send(PeerFailure { peer: *pid, reason });
        let body = serde_json::json!({
            "run": self.run,
            "fail": format!("its messages to us could not be sent ({e})"),
        });
        let msg = Message::new(mpc_did_didcomm::message::new_id(), DATA_TYPE, body);
        if let Err(e) = self.agent.send(peer, msg).await {
            tracing::info!("didcomm transport: telling {peer} of the failure: {e}");
        }
    }
}

/// MPyC's bytes → one message per chunk through the mediators; `eof` when MPyC closes.
/// The next chunk is read once the mediator took the last, so a receiver that is behind
/// slows MPyC down instead of losing data.
async fn mediated_out(out: Outgoing, mut far_r: ReadHalf<DuplexStream>) {
    let mut buf = vec![0u8; MEDIATED_CHUNK];
    let mut seq = 0u64;
    loop {
        // A read error ends the link like an EOF; nothing to send for `keepalive`: `alive`
        // (reading is cancel-safe: no byte is lost when the timer wins).
        let read = tokio::time::timeout(out.options.keepalive, far_r.read(&mut buf)).await;
        let Ok(read) = read else {
            let body = serde_json::json!({ "run": out.run, "alive": true });
            let msg = Message::new(mpc_did_didcomm::message::new_id(), DATA_TYPE, body);
            if let Err(e) = out.send(msg).await {
                out.fail(&e).await;
                break;
            }
            continue;
        };
        let n = read.unwrap_or_default();
        let body = if n == 0 {
            serde_json::json!({ "run": out.run, "seq": seq, "eof": true })
        } else {
            serde_json::json!({ "run": out.run, "seq": seq, "d": encode(&buf[..n]) })
        };
        let msg = Message::new(mpc_did_didcomm::message::new_id(), DATA_TYPE, body);
        if let Err(e) = out.send(msg).await {
            out.fail(&e).await;
            break;
        }
        if n == 0 {
            break;
        }
        seq += 1;
    }
}

/// Bytes for one peer's MPyC, in order; `None` ends the stream.
async fn mediated_writer(
    mut rx: mpsc::Receiver<Option<Vec<u8>>>,
    mut far_w: WriteHalf<DuplexStream>,
) {
    while let Some(Some(data)) = rx.recv().await {
        if far_w.write_all(&data).await.is_err() {
            break;
        }
    }
    let _ = far_w.shutdown().await;
}

/// A peer's party id, the pair's run id, and where its bytes go (`None`: end of stream).
type Writer = (PartyId, String, mpsc::Sender<Option<Vec<u8>>>);

/// The subscription → per peer, checked and in sequence order → its writer.
async fn mediated_in(
    mut inbound: mpsc::Receiver<Inbound>,
    writers: BTreeMap<String, Writer>,
    failures: mpsc::Sender<PeerFailure>,
    silence: Duration,
    mut live: tokio::sync::broadcast::Receiver<mpc_did_agent::LiveEvent>,
) {
    struct Peer {
        next: u64,
        waiting: BTreeMap<u64, Option<Vec<u8>>>,
        done: bool,
        /// Time spent waiting for messages since this peer's last one.
        silent: Duration,
    }
    let mut state: BTreeMap<String, Peer> = writers
        .keys()
        .map(|d| {
            (
                d.clone(),
                Peer {
                    next: 0,
                    waiting: BTreeMap::new(),
                    done: false,
                    silent: Duration::ZERO,
                },
            )
        })
        .collect();
    // How often silence is checked while nothing arrives.
    let tick = (silence / 4).max(Duration::from_millis(10));
    // Since when our own live connection to our mediator is down (then the silence is
    // ours, and the failure says so).
    let mut down_since: Option<(tokio::time::Instant, String)> = None;
    loop {
        loop {
            match live.try_recv() {
                Ok(mpc_did_agent::LiveEvent::Lost { why }) => {
                    down_since.get_or_insert((tokio::time::Instant::now(), why));
                }
                Ok(_) => down_since = None,
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
        let waiting = tokio::time::Instant::now();
        let next = tokio::time::timeout(tick, inbound.recv()).await;
        // Only time spent waiting counts as silence: while we work through a backlog (or
        // the agent holds messages back for us) a live peer's `alive` may be queued.
        let waited = waiting.elapsed();
        for (did, peer) in &mut state {
            if peer.done {
                continue;
            }
            peer.silent += waited;
            if peer.silent >= silence {
                if let Some((pid, _, tx)) = writers.get(did) {
                    let reason = match &down_since {
                        Some((t, why)) => format!(
                            "no message from it for {} s, while our own connection to our mediator has been down for {} s ({why})",
                            silence.as_secs(),
                            t.elapsed().as_secs()
                        ),
                        None => format!(
                            "no message from it for {} s (its program or machine stopped?)",
                            silence.as_secs()
                        ),
                    };
                    let _ = failures.try_send(PeerFailure { peer: *pid, reason });
                    let _ = tx.send(None).await;
                }
                peer.done = true;
                peer.waiting.clear();
            }
        }
        let m = match next {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(_) => continue,
        };
        let Some(sender) = m.sender.clone().filter(|_| m.meta.authenticated) else {
            tracing::info!("didcomm transport: an unauthenticated data message ignored");
            continue;
        };
        let (Some((pid, run, tx)), Some(peer)) = (writers.get(&sender), state.get_mut(&sender))
        else {
            tracing::info!("didcomm transport: a data message from {sender}, not a peer, ignored");
            continue;
        };
        let body = &m.message.body;
        if body.get("run").and_then(|r| r.as_str()) != Some(run.as_str()) {
            tracing::info!(
                "didcomm transport: a data message of another run from {sender} ignored"
            );
            continue;
        }
        peer.silent = Duration::ZERO;
        if body.get("alive").and_then(serde_json::Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(reason) = body.get("fail").and_then(|r| r.as_str()) {
            let _ = failures.try_send(PeerFailure {
                peer: *pid,
                reason: reason.to_owned(),
            });
            // It stops sending: its silence from now on is no second failure.
            peer.done = true;
            continue;
        }
        let Some(seq) = body.get("seq").and_then(serde_json::Value::as_u64) else {
            tracing::info!(
                "didcomm transport: a data message without sequence from {sender} ignored"
            );
            continue;
        };
        let item = if body.get("eof").and_then(serde_json::Value::as_bool) == Some(true) {
            None
        } else if let Some(d) = decode(body) {
            Some(d)
        } else {
            tracing::info!("didcomm transport: a data message without data from {sender} ignored");
            continue;
        };
        if peer.done || seq < peer.next {
            tracing::info!(
                "didcomm transport: a repeated data message {seq} from {sender} ignored"
            );
            continue;
        }
        if peer.waiting.len() >= MAX_REORDER {
            let _ = failures.try_send(PeerFailure {
                peer: *pid,
                reason: format!("more than {MAX_REORDER} messages out of order"),
            });
            peer.done = true;
            let _ = tx.send(None).await;
            continue;
        }
        peer.waiting.insert(seq, item);
        while let Some(item) = peer.waiting.remove(&peer.next) {
            peer.next += 1;
            let end = item.is_none();
            if tx.send(item).await.is_err() || end {
                peer.done = true;
                peer.waiting.clear();
                break;
            }
        }
    }
}

impl Transport for DidcommTransport {
    type Stream = DuplexStream;

    async fn open(&self, peer: PartyId) -> io::Result<Self::Stream> {
        self.opens.lock().await.remove(&peer).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("no link to party {peer}"))
        })
    }

    async fn accept(&self) -> io::Result<(PartyId, Self::Stream)> {
        self.accepts
            .lock()
            .await
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no more peers"))
    }

    async fn peer_failure(&self) -> PeerFailure {
        match self.failures.lock().await.recv().await {
            Some(f) => f,
            None => std::future::pending().await,
        }
    }

    async fn report_failure(&self, reason: &str) {
        let Some(m) = &self.mediated else { return };
        for (peer, run) in &m.peers {
            let body = serde_json::json!({ "run": run, "fail": reason });
            let msg = Message::new(mpc_did_didcomm::message::new_id(), DATA_TYPE, body);
            if let Err(e) = m.agent.send(peer, msg).await {
                tracing::info!("didcomm transport: telling {peer} of the failure: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use mpc_did_didcomm::UnpackMetadata;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn data(from: &str, authenticated: bool, body: serde_json::Value) -> Inbound {
        let mut meta = UnpackMetadata::default();
        meta.authenticated = authenticated;
        Inbound {
            message: Message::new("id", DATA_TYPE, body),
            meta,
            sender: Some(from.to_owned()),
        }
    }

    fn d(bytes: &[u8]) -> String {
        encode(bytes)
    }

    /// spec/didcomm-transport.md §3: in `seq` order whatever the arrival order; another
    /// run's, an unauthenticated, a stranger's and a repeated message are ignored; `eof`
    /// ends the stream; `fail` is a peer failure.
    #[tokio::test]
    async fn mediated_receiver_orders_and_filters() {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (w_tx, mut w_rx) = mpsc::channel(16);
        let (f_tx, mut f_rx) = mpsc::channel(4);
        let mut writers = BTreeMap::new();
        writers.insert("did:peer".to_owned(), (1, "run-a".to_owned(), w_tx));
        let (_live_tx, live_rx) = tokio::sync::broadcast::channel(4);
        let task = tokio::spawn(mediated_in(
            in_rx,
            writers,
            f_tx,
            Duration::from_secs(3600),
            live_rx,
        ));
        let msgs = [
            data(
                "did:peer",
                true,
                serde_json::json!({"run": "run-a", "seq": 1, "d": d(b"world")}),
            ),
            data(
                "did:peer",
                true,
                serde_json::json!({"run": "run-old", "seq": 0, "d": d(b"stale")}),
            ),
            data(
                "did:peer",
                false,
                serde_json::json!({"run": "run-a", "seq": 0, "d": d(b"forged")}),
            ),
            data(
                "did:stranger",
                true,
                serde_json::json!({"run": "run-a", "seq": 0, "d": d(b"strange")}),
            ),
            data(
                "did:peer",
                true,
                serde_json::json!({"run": "run-a", "seq": 0, "d": d(b"hello ")}),
            ),
            data(
                "did:peer",
                true,
                serde_json::json!({"run": "run-a", "seq": 0, "d": d(b"again")}),
            ),
            data(
                "did:peer",
                true,
                serde_json::json!({"run": "run-a", "seq": 2, "eof": true}),
            ),
            data(
                "did:peer",
                true,
                serde_json::json!({"run": "run-a", "fail": "it broke"}),
            ),
        ];
        for m in msgs {
            in_tx.send(m).await.unwrap();
        }
        let mut got = Vec::new();
        while let Some(Some(chunk)) = w_rx.recv().await {
            got.extend(chunk);
        }
        assert_eq!(got, b"hello world");
        let f = tokio::time::timeout(Duration::from_secs(5), f_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((f.peer, f.reason.as_str()), (1, "it broke"));
        drop(in_tx);
        task.await.unwrap();
    }

    /// The direct carrier on loopback: real authcrypt both ways, the lower id opens, EOF
    /// propagates.
    #[tokio::test]
    async fn direct_carrier_moves_bytes_both_ways() {
        let resolver = StaticResolver::new();
        let mut ids = Vec::new();
        for i in 0..2u8 {
            let mut secrets = SecretStore::new();
            let did = secrets.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&[i + 7; 32]));
            resolver.insert(mpc_did_resolver::key::resolve(&did).unwrap());
            ids.push((did, secrets));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (a, (b, _)) = (a.unwrap(), b.unwrap());
        let (did0, s0) = ids.remove(0);
        let (did1, s1) = ids.remove(0);
        let t0 =
            DidcommTransport::direct(0, &did0, s0, resolver.clone(), vec![(1, did1.clone(), a)]);
        let t1 = DidcommTransport::direct(1, &did1, s1, resolver, vec![(0, did0, b)]);
        let mut x = t0.open(1).await.unwrap();
        let (peer, mut y) = t1.accept().await.unwrap();
        assert_eq!(peer, 0);
        x.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        y.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        y.write_all(b"pong").await.unwrap();
        y.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), x.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, b"pong");
        assert!(t0.open(1).await.is_err(), "one stream per peer");
    }
}
