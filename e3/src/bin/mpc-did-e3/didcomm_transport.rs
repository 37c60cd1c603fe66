//! Per-message DIDComm as an MPyC transport: the design the session layer replaces
//! (issue 15 item 2), measured on the same paths as the sessions.
//!
//! Each pair of parties gets one TCP connection between their namespaces (the same direct
//! path as `session-direct`). Every chunk the local MPyC writes (read in pieces of up to
//! [`CHUNK`] bytes, so normally one MPyC message, sometimes two coalesced) becomes one
//! DIDComm v2 message `{"d": base64url(bytes)}`, authcrypt-packed (ECDH-1PU+A256KW,
//! A256CBC-HS512) from the sender's did:key to the receiver's, and is sent with a 4-byte
//! length prefix; the receiver unpacks it, checks that it was authenticated and comes from
//! the peer's DID, and hands the bytes to its MPyC. No session, no handshake: every message
//! pays the public-key operations.
//!
//! This implements `mpc_did_proxy::Transport`, so it can drive `run_program` like the
//! session transport does. Wiring it into `mpc-did run --transport didcomm` would pass it in
//! place of `PartyTransport` once the links are opened (directly, as here, or through the
//! mediators as `forward` messages).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use base64::Engine as _;
use mpc_did_didcomm::{
    pack_encrypted, unpack, ContentAlg, Message, PackOptions, SecretStore, UnpackOptions,
};
use mpc_did_proxy::{PartyId, Transport};
use mpc_did_resolver::{key, StaticResolver};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// Largest piece of MPyC output packed into one DIDComm message.
const CHUNK: usize = 1 << 20;
/// Largest DIDComm message accepted from a peer (a 1 MiB chunk grows by base64 and JWE).
const MAX_MESSAGE: usize = 4 << 20;
const MSG_TYPE: &str = "https://mpc-did.example/mpyc-bytes/1.0/data";

/// One party's identity and everyone's DID documents.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) did: String,
    secrets: SecretStore,
    resolver: StaticResolver,
}

/// did:key identities for `n` parties, each able to resolve the others (in memory).
pub(crate) fn identities(n: usize) -> Result<Vec<Identity>, String> {
    let resolver = StaticResolver::new();
    let mut out = Vec::new();
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[0] = u8::try_from(i + 1).map_err(|e| e.to_string())?;
        seed[1] = 0xe3;
        let mut secrets = SecretStore::new();
        let did = secrets.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&seed));
        resolver.insert(key::resolve(&did).map_err(|e| e.to_string())?);
        out.push(Identity {
            did,
            secrets,
            resolver: resolver.clone(),
        });
    }
    Ok(out)
}

/// One party's links, as `mpc_did_proxy::Transport`.
pub(crate) struct DidcommTransport {
    opens: Mutex<BTreeMap<PartyId, DuplexStream>>,
    accepts: Mutex<mpsc::Receiver<(PartyId, DuplexStream)>>,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
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

/// Build every party's transport from the pairwise links: `links[(i, j)]` (i < j) is the
/// TCP connection's (i end, j end).
pub(crate) fn mesh(
    ids: &[Identity],
    links: Vec<((usize, usize), (TcpStream, TcpStream))>,
) -> Result<Vec<Arc<DidcommTransport>>, String> {
    let n = ids.len();
    let mut opens: Vec<BTreeMap<PartyId, DuplexStream>> = (0..n).map(|_| BTreeMap::new()).collect();
    let mut accept_tx = Vec::new();
    let mut accept_rx = Vec::new();
    for _ in 0..n {
        let (tx, rx) = mpsc::channel(n.max(1));
        accept_tx.push(tx);
        accept_rx.push(rx);
    }
    let mut tasks: Vec<Vec<tokio::task::JoinHandle<()>>> = (0..n).map(|_| Vec::new()).collect();
    for ((i, j), (x, y)) in links {
        let pi = PartyId::try_from(i).map_err(|e| e.to_string())?;
        let pj = PartyId::try_from(j).map_err(|e| e.to_string())?;
        // i (lower id) dials j: i's proxy opens, j's proxy accepts.
        let (near_i, far_i) = tokio::io::duplex(CHUNK);
        let (near_j, far_j) = tokio::io::duplex(CHUNK);
        opens[i].insert(pj, near_i);
        accept_tx[j]
            .try_send((pi, near_j))
            .map_err(|_| "accept queue full".to_owned())?;
        tasks[i].extend(pump(ids[i].clone(), ids[j].did.clone(), x, far_i));
        tasks[j].extend(pump(ids[j].clone(), ids[i].did.clone(), y, far_j));
    }
    Ok(opens
        .into_iter()
        .zip(accept_rx)
        .zip(tasks)
        .map(|((o, rx), t)| {
            Arc::new(DidcommTransport {
                opens: Mutex::new(o),
                accepts: Mutex::new(rx),
                tasks: std::sync::Mutex::new(t),
            })
        })
        .collect())
}

/// Copy MPyC's bytes (from `far`) to the link as DIDComm messages, and the link's DIDComm
/// messages back to `far`.
fn pump(
    me: Identity,
    peer: String,
    link: TcpStream,
    far: DuplexStream,
) -> [tokio::task::JoinHandle<()>; 2] {
    let (mut link_r, mut link_w) = link.into_split();
    let (mut far_r, mut far_w) = tokio::io::split(far);
    let out_id = me.clone();
    let out_peer = peer.clone();
    let out = tokio::spawn(async move {
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
            let body = serde_json::json!({
                "d": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&buf[..n])
            });
            let msg = Message::new(format!("{}-{seq}", out_id.did), MSG_TYPE, body)
                .from(out_id.did.clone())
                .to(out_peer.clone());
            let packed = match pack_encrypted(
                &msg,
                &out_peer,
                Some(&out_id.did),
                None,
                &out_id.resolver,
                &out_id.secrets,
                &opts,
            )
            .await
            {
                Ok(p) => p.message,
                Err(e) => {
                    eprintln!("didcomm transport: pack failed: {e}");
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
    });
    let inbound = tokio::spawn(async move {
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
                eprintln!("didcomm transport: {len}-byte message from {peer} refused");
                break;
            }
            let mut packed = vec![0u8; len];
            if link_r.read_exact(&mut packed).await.is_err() {
                break;
            }
            let (msg, meta) = match unpack(&packed, &me.resolver, &me.secrets, &uopts).await {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("didcomm transport: unpack failed: {e}");
                    break;
                }
            };
            if !meta.authenticated || msg.from.as_deref() != Some(peer.as_str()) {
                eprintln!("didcomm transport: a message not authenticated as {peer} ignored");
                continue;
            }
            let Some(data) = msg.body.get("d").and_then(|d| d.as_str()).and_then(|d| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(d)
                    .ok()
            }) else {
                eprintln!("didcomm transport: a message without data from {peer} ignored");
                continue;
            };
            if far_w.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = far_w.shutdown().await;
    });
    [out, inbound]
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
}
