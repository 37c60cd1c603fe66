//! Test vectors for every layer of the secure-session protocol (spec/session.md §10.2),
//! checked in as data: `crates/session/tests/vectors/layers.json`.
//!
//! This test lives in `crates/connect` because it is the one crate that reaches every layer:
//! the ad-hoc binding (`Binding::adhoc`), the path hello (`mpc_did_driver::path`), the
//! session core, the relay frames (`mpc_did_rendezvous::relay`), the DIDComm envelopes
//! (`mpc_did_didcomm`) and the roster hash (`mpc_did_lobby`). Every key and every random
//! input is fixed, so every byte is reproducible. The test regenerates everything and fails
//! on any difference with the stored file; `MPC_DID_REGENERATE_VECTORS=1` rewrites it (only
//! when the spec changes). Independently of the code under test it also opens every record
//! with snow's split keys and RustCrypto AES-256-GCM, recomputes the ad-hoc and roster
//! preimages from the spec text, and replays every rejected record against a fresh receiver.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::too_many_lines)]

use std::net::SocketAddr;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use ed25519_dalek::SigningKey;
use mpc_did_connect::Binding;
use mpc_did_didcomm::jose::{
    encrypt_with_fixed_randomness_for_testing, FixedJweRandomness, RecipientKey, SenderKey,
};
use mpc_did_didcomm::{ContentAlg, Message, SecretStore};
use mpc_did_driver::path::{decode_hello, encode_hello, path_id, HELLO_LEN};
use mpc_did_lobby::{Program, Roster, RosterEntry};
use mpc_did_rendezvous::relay::{ClientToRelay, PeerAddr, RelayToClient};
use mpc_did_resolver::{key, PublicKey, StaticResolver};
use mpc_did_session::messages::{
    decode_fixed, CandidatesBody, CloseBody, ACCEPT_TYPE, CANDIDATES_TYPE, CLOSE_TYPE,
    HANDSHAKE_TYPE, PROPOSE_TYPE,
};
use mpc_did_session::{
    Acceptor, Event, Frame, Proposer, Session, SessionBinding, SessionConfig, SessionError,
    StaticKeypair, EPOCH_BITS, NOISE_PARAMS,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../session/tests/vectors/layers.json"
);

/// Ed25519 seeds of the two parties' did:key identities.
const SEED_X: [u8; 32] = [0xa1; 32];
const SEED_Y: [u8; 32] = [0xb2; 32];
/// Noise statics and ephemerals: the acceptor is the Noise initiator (spec §2).
const INIT_STATIC: [u8; 32] = [0x11; 32];
const RESP_STATIC: [u8; 32] = [0x22; 32];
const INIT_EPH: [u8; 32] = [0x33; 32];
const RESP_EPH: [u8; 32] = [0x44; 32];

const INITIATOR: usize = 0;
const RESPONDER: usize = 1;
const WHO: [&str; 2] = ["initiator", "responder"];

// ---------------------------------------------------------------------------------------
// Parties and sessions
// ---------------------------------------------------------------------------------------

struct Party {
    did: String,
    signing: SigningKey,
    secrets: SecretStore,
    x_secret: [u8; 32],
    x_kid: String,
}

fn party(seed: [u8; 32]) -> Party {
    let signing = SigningKey::from_bytes(&seed);
    let mut secrets = SecretStore::new();
    let did = secrets.insert_did_key(&signing);
    let x_secret = key::x25519_secret_from_ed25519_seed(&seed);
    let x_public = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(x_secret));
    let x_kid = format!(
        "{did}#{}",
        PublicKey::X25519(x_public.to_bytes()).to_multibase()
    );
    Party {
        did,
        signing,
        secrets,
        x_secret,
        x_kid,
    }
}

/// (proposer, acceptor): without a roster the bytewise smaller DID proposes (spec §2).
fn parties() -> (Party, Party) {
    let (x, y) = (party(SEED_X), party(SEED_Y));
    if x.did.as_bytes() < y.did.as_bytes() {
        (x, y)
    } else {
        (y, x)
    }
}

/// One established pair with everything an independent implementation needs to redo it.
struct Pair {
    init: Session,
    resp: Session,
    head: Value,
    keys: [[u8; 32]; 2],
}

fn session_id(n: u8) -> [u8; 16] {
    let mut s = *b"layer-vectors-00";
    s[15] = b'0' + n;
    s
}

fn pair(n: u8) -> Pair {
    let (prop, acc) = parties();
    let binding = Binding::adhoc(&prop.did, &acc.did);
    let sid = session_id(n);
    let (proposer, propose) = Proposer::with_keypair(
        StaticKeypair::from_secret(RESP_STATIC),
        sid,
        &binding.mpc_session_id,
        binding.roster_hash,
        &prop.did,
        &acc.did,
    );
    let (acceptor, accept) = Acceptor::on_propose_with(
        StaticKeypair::from_secret(INIT_STATIC),
        Some(&INIT_EPH),
        &propose,
        &binding.mpc_session_id,
        binding.roster_hash,
        &acc.did,
        &prop.did,
    )
    .unwrap();
    let config = SessionConfig::default();
    let (resp, handshake) = proposer
        .on_accept_with(Some(&RESP_EPH), &accept, config.clone(), 0)
        .unwrap();
    let init = acceptor.on_handshake(&handshake, config, 0).unwrap();
    let sb = SessionBinding {
        session_id: sid,
        mpc_session_id: binding.mpc_session_id.clone(),
        initiator_did: acc.did.clone(),
        responder_did: prop.did.clone(),
        roster_hash: binding.roster_hash,
        initiator_static: StaticKeypair::from_secret(INIT_STATIC).public(),
        responder_static: StaticKeypair::from_secret(RESP_STATIC).public(),
    };
    let prologue = sb.prologue().unwrap();
    let (k_ir, k_ri, hh) = snow_split(&prologue);
    assert_eq!(&hh, init.handshake_hash());
    assert_eq!(init.handshake_hash(), resp.handshake_hash());
    let m1: [u8; 48] = decode_fixed(&accept.handshake, "m1").unwrap();
    let m2: [u8; 48] = decode_fixed(&handshake.handshake, "m2").unwrap();
    let head = json!({
        "noise_protocol": NOISE_PARAMS,
        "session_id": hex::encode(sid),
        "mpc_session_id": binding.mpc_session_id,
        "roster_hash": hex::encode(binding.roster_hash),
        "initiator_did (acceptor)": acc.did,
        "responder_did (proposer)": prop.did,
        "initiator_static_secret": hex::encode(INIT_STATIC),
        "responder_static_secret": hex::encode(RESP_STATIC),
        "initiator_ephemeral_secret": hex::encode(INIT_EPH),
        "responder_ephemeral_secret": hex::encode(RESP_EPH),
        "prologue": hex::encode(&prologue),
        "message1": hex::encode(m1),
        "message2": hex::encode(m2),
        "handshake_hash": hex::encode(hh),
        "key_initiator_to_responder": hex::encode(k_ir),
        "key_responder_to_initiator": hex::encode(k_ri),
        "propose_body": serde_json::to_value(&propose).unwrap(),
        "accept_body": serde_json::to_value(&accept).unwrap(),
        "handshake_body": serde_json::to_value(&handshake).unwrap(),
    });
    Pair {
        init,
        resp,
        head,
        keys: [k_ir, k_ri],
    }
}

/// Split keys and handshake hash computed by snow used directly.
fn snow_split(prologue: &[u8]) -> ([u8; 32], [u8; 32], [u8; 32]) {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let ip = StaticKeypair::from_secret(INIT_STATIC).public();
    let rp = StaticKeypair::from_secret(RESP_STATIC).public();
    let mut init = snow::Builder::new(params.clone())
        .prologue(prologue)
        .unwrap()
        .local_private_key(&INIT_STATIC)
        .unwrap()
        .remote_public_key(&rp)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&INIT_EPH)
        .build_initiator()
        .unwrap();
    let mut resp = snow::Builder::new(params)
        .prologue(prologue)
        .unwrap()
        .local_private_key(&RESP_STATIC)
        .unwrap()
        .remote_public_key(&ip)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&RESP_EPH)
        .build_responder()
        .unwrap();
    let (mut a, mut b) = ([0u8; 100], [0u8; 100]);
    let n = init.write_message(&[], &mut a).unwrap();
    resp.read_message(&a[..n], &mut b).unwrap();
    let n = resp.write_message(&[], &mut a).unwrap();
    init.read_message(&a[..n], &mut b).unwrap();
    let hh: [u8; 32] = init.get_handshake_hash().try_into().unwrap();
    let (k1, k2) = init.dangerously_get_raw_split();
    (k1, k2, hh)
}

// ---------------------------------------------------------------------------------------
// Independent record parsing and opening (spec §5.1, §5.2, §5.5)
// ---------------------------------------------------------------------------------------

fn rekey(k: [u8; 32]) -> [u8; 32] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&u64::MAX.to_be_bytes());
    let out = Aes256Gcm::new_from_slice(&k)
        .unwrap()
        .encrypt(
            Nonce::from_slice(&n),
            Payload {
                msg: &[0u8; 32],
                aad: &[],
            },
        )
        .unwrap();
    out[..32].try_into().unwrap()
}

/// (counter, header length): E set → explicit, else the previous counter + 1.
fn counter_of(record: &[u8], prev: Option<u64>) -> (u64, usize) {
    let length = u16::from_be_bytes([record[0], record[1]]);
    if length & 0x8000 != 0 {
        assert_eq!(usize::from(length & 0x7fff) + 10, record.len());
        (u64::from_be_bytes(record[2..10].try_into().unwrap()), 10)
    } else {
        assert_eq!(usize::from(length) + 2, record.len());
        (prev.unwrap() + 1, 2)
    }
}

fn open(record: &[u8], counter: u64, header_len: usize, k0: [u8; 32]) -> Vec<u8> {
    let mut k = k0;
    for _ in 0..counter >> EPOCH_BITS {
        k = rekey(k);
    }
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Aes256Gcm::new_from_slice(&k)
        .unwrap()
        .decrypt(
            Nonce::from_slice(&n),
            Payload {
                msg: &record[header_len..],
                aad: &record[..header_len],
            },
        )
        .expect("record opens with the split key of its direction")
}

fn text_or_hex(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => json!(s),
        Err(_) => json!({ "hex": hex::encode(b) }),
    }
}

/// A frame for humans (the `frame` hex is normative).
fn describe(frame: &[u8]) -> Value {
    let states = |v: &[mpc_did_session::StreamState]| -> Value {
        v.iter()
            .map(|s| json!({"stream": s.stream, "offset": s.offset, "fin": s.fin}))
            .collect()
    };
    match Frame::decode(frame).unwrap() {
        Frame::Data { stream, data } => {
            json!({"type": "DATA", "stream": stream, "data": text_or_hex(data)})
        }
        Frame::Fin { stream, final_size } => {
            json!({"type": "FIN", "stream": stream, "final_size": final_size})
        }
        Frame::Ack(v) => json!({"type": "ACK", "streams": states(&v)}),
        Frame::Resume(v) => json!({"type": "RESUME", "streams": states(&v)}),
        Frame::Ping(t) => json!({"type": "PING", "token": t}),
        Frame::Pong(t) => json!({"type": "PONG", "token": t}),
        Frame::Close { code, reason } => json!({"type": "CLOSE", "code": code, "reason": reason}),
    }
}

/// The bytes written on paths, in order, with what each receiver delivered.
struct Conv {
    keys: [[u8; 32]; 2],
    prev: [Option<u64>; 2],
    items: Vec<Value>,
    now: u64,
}

impl Conv {
    fn new(keys: [[u8; 32]; 2]) -> Self {
        Self {
            keys,
            prev: [None, None],
            items: Vec::new(),
            now: 0,
        }
    }

    /// The proposer (Noise responder, the side that dials, spec §7.4) opens path `path`.
    fn hello(&mut self, path: u32, hh: &[u8; 32]) {
        self.items.push(json!({
            "path": path,
            "from": "responder",
            "hello": hex::encode(encode_hello(&path_id(hh))),
        }));
    }

    /// Drains `dir`'s records; each reaches `peer` if `deliver`, else is lost with the path.
    fn take(
        &mut self,
        path: u32,
        dir: usize,
        s: &mut Session,
        peer: &mut Session,
        deliver: bool,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(rec) = s.poll_transmit() {
            let (counter, header_len) = counter_of(&rec, self.prev[dir]);
            self.prev[dir] = Some(counter);
            let frame = open(&rec, counter, header_len, self.keys[dir]);
            if deliver {
                peer.handle_record(self.now, &rec).unwrap();
            }
            self.items.push(json!({
                "path": path,
                "from": WHO[dir],
                "counter": counter,
                "explicit_counter": header_len == 10,
                "frame": hex::encode(&frame),
                "decoded": describe(&frame),
                "record": hex::encode(&rec),
                "delivered": deliver,
            }));
            out.push(rec);
        }
        out
    }

    /// Both sides resume on a new path (spec §7.1, §7.3): hello, then each side's RESUME.
    fn open_path(&mut self, path: u32, p: &mut Pair) {
        let hh = *p.init.handshake_hash();
        self.hello(path, &hh);
        p.resp.resume(self.now).unwrap();
        p.init.resume(self.now).unwrap();
        self.take(path, RESPONDER, &mut p.resp, &mut p.init, true);
        self.take(path, INITIATOR, &mut p.init, &mut p.resp, true);
        // Retransmissions queued by the RESUMEs.
        self.take(path, RESPONDER, &mut p.resp, &mut p.init, true);
        self.take(path, INITIATOR, &mut p.init, &mut p.resp, true);
    }
}

/// Every DATA byte and FIN a session delivered, per stream.
fn delivered(s: &mut Session) -> Value {
    let mut m = serde_json::Map::new();
    while let Some(e) = s.poll_event() {
        match e {
            Event::Data { stream, data } => {
                let e = m
                    .entry(stream.to_string())
                    .or_insert_with(|| json!({"data": "", "fin": false}));
                let old = e["data"].as_str().unwrap().to_owned();
                e["data"] = json!(old + std::str::from_utf8(&data).unwrap());
            }
            Event::StreamFinished { stream } => {
                m.entry(stream.to_string())
                    .or_insert_with(|| json!({"data": "", "fin": false}))["fin"] = json!(true);
            }
            Event::Closed { code, reason } => {
                m.insert("closed".into(), json!({"code": code, "reason": reason}));
            }
            _ => {}
        }
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------
// The layers
// ---------------------------------------------------------------------------------------

/// spec §2 (ad-hoc sessions): mpc_session_id "adhoc" and the roster hash of the pair.
fn adhoc_binding() -> Value {
    let (prop, acc) = parties();
    let (small, large) = (prop.did.as_str(), acc.did.as_str());
    let mut pre = b"mpc-did/adhoc/1".to_vec();
    for d in [small, large] {
        pre.extend_from_slice(&u32::try_from(d.len()).unwrap().to_be_bytes());
        pre.extend_from_slice(d.as_bytes());
    }
    let hash: [u8; 32] = Sha256::digest(&pre).into();
    let b = Binding::adhoc(small, large);
    assert_eq!(
        b,
        Binding::adhoc(large, small),
        "order of the DIDs is irrelevant"
    );
    assert_eq!(b.roster_hash, hash, "spec text and Binding::adhoc agree");
    json!({
        "smaller_did (proposer)": small,
        "larger_did (acceptor)": large,
        "label": "mpc-did/adhoc/1",
        "preimage": hex::encode(&pre),
        "mpc_session_id": b.mpc_session_id,
        "roster_hash": hex::encode(b.roster_hash),
    })
}

/// spec §7.3: path id and hello, with hellos a listener must drop.
fn path_hello() -> Value {
    let p = pair(1);
    let hh = *p.init.handshake_hash();
    let mut pre = b"mpc-did/path/1".to_vec();
    pre.extend_from_slice(&hh);
    let id: [u8; 16] = Sha256::digest(&pre)[..16].try_into().unwrap();
    assert_eq!(id, path_id(&hh));
    let hello = encode_hello(&id);
    assert_eq!(hello.len(), HELLO_LEN);
    assert_eq!(decode_hello(&hello).unwrap(), id);
    let mut bad_reserved = hello;
    bad_reserved[7] = 1;
    let mut bad_magic = hello;
    bad_magic[3] = b'2';
    for bad in [bad_reserved, bad_magic] {
        assert!(decode_hello(&bad).is_err());
    }
    json!({
        "handshake_hash": hex::encode(hh),
        "label": "mpc-did/path/1",
        "path_id": hex::encode(id),
        "hello": hex::encode(hello),
        "malformed": [
            {"why": "reserved byte not zero", "hello": hex::encode(bad_reserved)},
            {"why": "magic is not MDP1", "hello": hex::encode(bad_magic)},
        ],
    })
}

/// spec §7.1: path 1 breaks with records of both directions lost; on path 2 both RESUMEs
/// make each side retransmit exactly what the other lacks.
fn resume_retransmit() -> Value {
    let mut p = pair(1);
    let mut c = Conv::new(p.keys);
    c.open_path(1, &mut p);
    let si = p.init.open_stream().unwrap();
    let sr = p.resp.open_stream().unwrap();
    p.init.send(c.now, si, b"initiator part 1; ").unwrap();
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    p.resp.send(c.now, sr, b"responder part 1; ").unwrap();
    c.take(1, RESPONDER, &mut p.resp, &mut p.init, true);
    // The ACKs of 20 ms later: part 1 of each side is acknowledged.
    c.now = 20;
    p.init.handle_timeout(c.now).unwrap();
    p.resp.handle_timeout(c.now).unwrap();
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    c.take(1, RESPONDER, &mut p.resp, &mut p.init, true);
    // Written, but the path breaks before they arrive.
    p.init.send(c.now, si, b"initiator part 2 (lost)").unwrap();
    p.init.finish(c.now, si).unwrap();
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, false);
    p.resp.send(c.now, sr, b"responder part 2 (lost)").unwrap();
    c.take(1, RESPONDER, &mut p.resp, &mut p.init, false);
    // Path 2: both RESUMEs, then each side retransmits from the offset the other listed.
    c.now = 40;
    c.open_path(2, &mut p);
    c.now = 60;
    p.init.handle_timeout(c.now).unwrap();
    p.resp.handle_timeout(c.now).unwrap();
    c.take(2, INITIATOR, &mut p.init, &mut p.resp, true);
    c.take(2, RESPONDER, &mut p.resp, &mut p.init, true);
    let got = json!({
        "initiator": delivered(&mut p.init),
        "responder": delivered(&mut p.resp),
    });
    json!({"session": p.head, "items": c.items, "delivered": got})
}

/// spec §5.4, §6.1: stream ids of two-byte varints (≥ 64), listed in ACKs as u32.
fn high_stream_ids() -> Value {
    let mut p = pair(2);
    let mut c = Conv::new(p.keys);
    c.open_path(1, &mut p);
    // Open 33 streams a side; the last ones are 64 (initiator) and 65 (responder).
    let mut last = (0, 0);
    for _ in 0..33 {
        last = (p.init.open_stream().unwrap(), p.resp.open_stream().unwrap());
    }
    assert_eq!(last, (64, 65));
    // Both the last stream below 64 and the first one at or above it carry a byte each, so
    // the vectors show the varint length change.
    for (si, sr) in [(62, 63), (64, 65)] {
        p.init.send(c.now, si, format!("s{si}").as_bytes()).unwrap();
        p.resp.send(c.now, sr, format!("s{sr}").as_bytes()).unwrap();
    }
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    c.take(1, RESPONDER, &mut p.resp, &mut p.init, true);
    c.now = 20;
    p.init.handle_timeout(c.now).unwrap();
    p.resp.handle_timeout(c.now).unwrap();
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    c.take(1, RESPONDER, &mut p.resp, &mut p.init, true);
    let got = json!({
        "initiator": delivered(&mut p.init),
        "responder": delivered(&mut p.resp),
    });
    json!({"session": p.head, "items": c.items, "delivered": got})
}

/// The outcome of feeding one record, as the vectors name it.
fn outcome(r: &Result<(), SessionError>, ignored_before: u64, s: &Session) -> Value {
    match r {
        Ok(()) if s.stats().ignored_records > ignored_before => json!({"result": "ignored"}),
        Ok(()) => json!({"result": "accepted"}),
        Err(SessionError::Decrypt) => json!({"result": "rejected"}),
        Err(SessionError::Malformed(_)) => json!({"result": "failed", "error": "malformed"}),
        Err(SessionError::Protocol(_)) => json!({"result": "failed", "error": "protocol"}),
        Err(SessionError::Limit(_)) => json!({"result": "failed", "error": "limit"}),
        Err(SessionError::State(_)) => json!({"result": "session over"}),
        Err(e) => json!({"result": "other", "error": e.to_string()}),
    }
}

/// Feeds a case to a fresh responder: (outcome of `record`, outcome of `then`).
fn replay(
    n: u8,
    awaiting: bool,
    sends: Option<bool>,
    before: &[Vec<u8>],
    record: &[u8],
    then: Option<&[u8]>,
) -> Value {
    let mut p = pair(n);
    if awaiting {
        p.resp.resume(0).unwrap();
    }
    if let Some(fin) = sends {
        receiver_sends(&mut p.resp, fin);
    }
    for r in before {
        p.resp.handle_record(0, r).unwrap();
    }
    let ignored = p.resp.stats().ignored_records;
    let res = p.resp.handle_record(0, record);
    let mut out = outcome(&res, ignored, &p.resp);
    if let Some(t) = then {
        let ignored = p.resp.stats().ignored_records;
        let r2 = p.resp.handle_record(0, t);
        out["then"] = outcome(&r2, ignored, &p.resp);
    }
    out
}

/// What the responder wrote before the case, for the ACK cases: `hello` on its stream 1,
/// and its FIN if `fin`.
fn receiver_sends(s: &mut Session, fin: bool) {
    let st = s.open_stream().unwrap();
    assert_eq!(st, 1);
    s.send(0, st, b"hello").unwrap();
    if fin {
        s.finish(0, st).unwrap();
    }
    while s.poll_transmit().is_some() {}
}

/// The initiator's records for the rejection cases: RESUME (counter 0) on a fresh path,
/// then whatever `script` makes it send (`seal_raw_frame_for_testing` for frames this
/// implementation never sends).
fn sender_records(n: u8, script: impl FnOnce(&mut Session)) -> Vec<Vec<u8>> {
    let mut p = pair(n);
    p.init.resume(0).unwrap();
    p.resp.resume(0).unwrap();
    while let Some(r) = p.resp.poll_transmit() {
        p.init.handle_record(0, &r).unwrap();
    }
    script(&mut p.init);
    std::iter::from_fn(|| p.init.poll_transmit()).collect()
}

fn raw(s: &mut Session, frame: &[u8]) {
    s.seal_raw_frame_for_testing(0, frame).unwrap();
}

fn ping_frame(token: u64) -> Vec<u8> {
    let mut f = vec![0x04];
    f.extend_from_slice(&token.to_be_bytes());
    f
}

/// `k` epochs of PINGs, then a RESUME: the RESUME's counter is in epoch `k`.
fn resume_after_epochs(k: u64) -> Vec<Vec<u8>> {
    // `resume` discards the unsent PINGs: only the RESUME is left to send.
    let recs = sender_records(3, |s| {
        for i in 0..k {
            s.request_rekey();
            raw(s, &ping_frame(i));
        }
        s.resume(0).unwrap();
    });
    assert_eq!(recs.len(), 1);
    recs
}

/// spec §5.3 and §5.4–§6: each receive rule, with the outcome at the responder.
fn rejected_records() -> Value {
    let n = 3;
    // RESUME, DATA "x" (implicit), DATA "y" (implicit).
    let base = sender_records(n, |s| {
        let st = s.open_stream().unwrap();
        s.send(0, st, b"x").unwrap();
        s.send(0, st, b"y").unwrap();
    });
    let (resume, data_x, data_y) = (&base[0], &base[1], &base[2]);
    let mut extended = data_x.clone();
    extended.push(0);
    let truncated = data_x[..data_x.len() - 1].to_vec();
    let mut tampered = data_x.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let mut short = vec![0x80, 16];
    short.extend_from_slice(&[0u8; 8 + 16]);
    // A responder's own record (its RESUME at counter 0) fed back to it.
    let own = {
        let mut p = pair(n);
        p.resp.resume(0).unwrap();
        p.resp.poll_transmit().unwrap()
    };
    // Epoch skips: PINGs at the first counters of epochs 1 and 2 (explicit counters).
    let epochs = sender_records(n, |s| {
        for t in 1..=2 {
            s.request_rekey();
            raw(s, &ping_frame(t));
        }
    });
    let (ping_e1, ping_e2) = (&epochs[1], &epochs[2]);
    let at_4096 = resume_after_epochs(4096);
    let at_4097 = resume_after_epochs(4097);
    let failing = |frames: &[&[u8]]| {
        sender_records(n, |s| {
            for f in frames {
                raw(s, f);
            }
        })
    };
    // One byte on each of the initiator's streams 0, 2, …, 2048: the 1,025th is too many.
    let many: Vec<Vec<u8>> = (0..=1024u16)
        .map(|i| {
            let id = 2 * i;
            let mut f = vec![0x01];
            if id < 64 {
                f.push(u8::try_from(id).unwrap());
            } else {
                f.extend_from_slice(&(0x4000 | id).to_be_bytes());
            }
            f.push(b'z');
            f
        })
        .collect();
    let fin_0_2 = [&[0x02, 0, 0, 0, 0][..], &2u64.to_be_bytes()].concat();
    let fin_0_3 = [&[0x02, 0, 0, 0, 0][..], &3u64.to_be_bytes()].concat();
    let resume_twice = {
        let one = [&[0, 0, 0, 1][..], &0u64.to_be_bytes(), &[0]].concat();
        [&[0x06, 0, 2][..], &one, &one].concat()
    };
    let ack_fin_2 = [&[0x03, 0, 1, 0, 0, 0, 1][..], &0u64.to_be_bytes(), &[2]].concat();
    // Stream 0 exists at the responder once DATA named it; it has sent 0 bytes on it.
    let ack_beyond = [&[0x03, 0, 1, 0, 0, 0, 0][..], &5u64.to_be_bytes(), &[0]].concat();

    // (name, spec rule, receiver awaiting RESUME, accepted before, record, then, expected)
    type Case<'a> = (
        &'a str,
        &'a str,
        bool,
        Vec<Vec<u8>>,
        Vec<u8>,
        Option<Vec<u8>>,
        Value,
    );
    let rej = || json!({"result": "rejected", "then": {"result": "accepted"}});
    let mut cases: Vec<Case<'_>> = vec![
        (
            "length field larger than the record",
            "§5.3 rule 1",
            false,
            vec![resume.clone()],
            truncated,
            Some(data_x.clone()),
            rej(),
        ),
        (
            "record longer than its length field",
            "§5.3 rule 1",
            false,
            vec![resume.clone()],
            extended,
            Some(data_x.clone()),
            rej(),
        ),
        (
            "ciphertext shorter than 17 bytes",
            "§5.1",
            false,
            vec![resume.clone()],
            short,
            Some(data_x.clone()),
            rej(),
        ),
        (
            "implicit counter before any record was accepted",
            "§5.3 rule 2",
            false,
            vec![],
            data_x.clone(),
            Some(resume.clone()),
            rej(),
        ),
        (
            "replayed record (explicit counter not above last)",
            "§5.3 rule 3",
            false,
            vec![resume.clone(), data_x.clone()],
            resume.clone(),
            Some(data_y.clone()),
            rej(),
        ),
        (
            "tampered ciphertext",
            "§5.3 rule 4",
            false,
            vec![resume.clone()],
            tampered,
            Some(data_x.clone()),
            rej(),
        ),
        (
            "record of the other direction",
            "§5.3 rule 4",
            false,
            vec![],
            own,
            Some(resume.clone()),
            rej(),
        ),
        (
            "a record was dropped (implicit counter implies the wrong nonce)",
            "§5.3 rules 4, 5",
            false,
            vec![resume.clone()],
            data_y.clone(),
            Some(data_x.clone()),
            rej(),
        ),
        (
            "explicit counter skips an epoch and is not a RESUME",
            "§5.3 rule 5, §5.5",
            false,
            vec![resume.clone()],
            ping_e2.clone(),
            Some(ping_e1.clone()),
            rej(),
        ),
        (
            "RESUME 4,096 epochs ahead (the bound is inclusive)",
            "§5.5",
            false,
            vec![resume.clone()],
            at_4096[0].clone(),
            None,
            json!({"result": "accepted"}),
        ),
        (
            "RESUME 4,097 epochs ahead",
            "§5.5",
            false,
            vec![resume.clone()],
            at_4097[0].clone(),
            None,
            json!({"result": "rejected"}),
        ),
        (
            "waiting for RESUME: a record without E is ignored unopened",
            "§5.3, §7.1 step 4",
            true,
            vec![],
            data_x.clone(),
            Some(resume.clone()),
            json!({"result": "ignored", "then": {"result": "accepted"}}),
        ),
        (
            "waiting for RESUME: an authenticated non-RESUME is ignored, last unchanged",
            "§5.3, §7.1 step 4",
            true,
            vec![],
            ping_e1.clone(),
            Some(resume.clone()),
            json!({"result": "ignored", "then": {"result": "accepted"}}),
        ),
    ];
    let fail =
        |e: &str| json!({"result": "failed", "error": e, "then": {"result": "session over"}});
    let post: Vec<(&str, &str, Vec<&[u8]>, &str)> = vec![
        (
            "unknown frame type 0x08",
            "§5.4",
            vec![&[0x08]],
            "malformed",
        ),
        (
            "DATA with a non-minimal varint stream id",
            "§5.4",
            vec![&[0x01, 0x40, 0x00, b'x']],
            "malformed",
        ),
        (
            "DATA with stream id 2^32 (an 8-byte varint)",
            "§5.4",
            vec![&[0x01, 0xc0, 0, 0, 1, 0, 0, 0, 0, b'x']],
            "malformed",
        ),
        (
            "PING with a trailing byte",
            "§5.4",
            vec![&[0x04, 0, 0, 0, 0, 0, 0, 0, 1, 0]],
            "malformed",
        ),
        ("ACK with fin = 2", "§5.4", vec![&ack_fin_2], "malformed"),
        (
            "DATA on a stream of the receiver's parity it never opened",
            "§6.1",
            vec![&[0x01, 0x01, b'x']],
            "protocol",
        ),
        (
            "DATA on the initiator's 1,025th stream (id 2048)",
            "§6.1",
            many.iter().map(Vec::as_slice).collect(),
            "limit",
        ),
        (
            "FIN whose final_size is not the bytes received",
            "§6.2",
            vec![&[0x01, 0x00, b'a', b'b', b'c'], &fin_0_2],
            "protocol",
        ),
        (
            "non-empty DATA after FIN",
            "§6.2",
            vec![
                &[0x01, 0x00, b'a', b'b', b'c'],
                &fin_0_3,
                &[0x01, 0x00, b'd'],
            ],
            "protocol",
        ),
        (
            "ACK for more than was ever sent",
            "§6.3",
            vec![&[0x01, 0x00, b'a', b'b', b'c'], &ack_beyond],
            "protocol",
        ),
        (
            "RESUME listing a stream twice",
            "§7.1 step 3",
            vec![&resume_twice],
            "protocol",
        ),
    ];
    for (name, rule, frames, err) in post {
        let recs = failing(&frames);
        let (last, before) = recs.split_last().unwrap();
        cases.push((
            name,
            rule,
            false,
            before.to_vec(),
            last.clone(),
            Some(data_y.clone()),
            fail(err),
        ));
    }
    let mut cases: Vec<(Option<bool>, Case<'_>)> = cases.into_iter().map(|c| (None, c)).collect();
    // ACK validity (§6.3) and FIN (§6.2): the responder wrote `hello` (5 bytes) on its
    // stream 1 (and its FIN where stated); the initiator's ACKs name that stream.
    let ack = |entries: &[(u32, u64, u8)]| {
        let mut f = vec![0x03];
        f.extend_from_slice(&u16::try_from(entries.len()).unwrap().to_be_bytes());
        for (stream, offset, fin) in entries {
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(&offset.to_be_bytes());
            f.push(*fin);
        }
        f
    };
    let fin_0_0 = [&[0x02, 0, 0, 0, 0][..], &0u64.to_be_bytes()].concat();
    let ok = || json!({"result": "accepted"});
    // (name, spec rule, the responder also sent its FIN, the initiator's frames, expected)
    type AckCase<'a> = (&'a str, &'a str, bool, Vec<Vec<u8>>, Value);
    let acks: Vec<AckCase<'_>> = vec![
        ("empty ACK (n = 0)", "§6.3", false, vec![ack(&[])], ok()),
        (
            "ACK below an offset already acknowledged (no effect)",
            "§6.3",
            false,
            vec![ack(&[(1, 5, 0)]), ack(&[(1, 3, 0)])],
            ok(),
        ),
        (
            "ACK listing a stream twice",
            "§6.3",
            false,
            vec![ack(&[(1, 2, 0), (1, 5, 0)])],
            ok(),
        ),
        (
            "ACK with offset 0, fin 0 for a stream the receiver never opened (no effect)",
            "§6.3",
            false,
            vec![ack(&[(3, 0, 0)])],
            ok(),
        ),
        (
            "ACK with fin = 1 when no FIN was sent",
            "§6.3",
            false,
            vec![ack(&[(1, 5, 1)])],
            fail("protocol"),
        ),
        (
            "ACK with fin = 1 at an offset below the FIN",
            "§6.3",
            true,
            vec![ack(&[(1, 4, 1)])],
            fail("protocol"),
        ),
        (
            "ACK with fin = 0 after the FIN was acknowledged (no effect)",
            "§6.3, §7.1 step 3",
            true,
            vec![ack(&[(1, 5, 1)]), ack(&[(1, 5, 0)])],
            ok(),
        ),
        (
            "a stream whose only frame is a zero-byte FIN",
            "§6.2",
            false,
            vec![fin_0_0],
            ok(),
        ),
    ];
    for (name, rule, fin, frames, expected) in acks {
        let recs = sender_records(n, |s| {
            for f in &frames {
                raw(s, f);
            }
        });
        let (last, before) = recs.split_last().unwrap();
        let then = (expected["result"] == "failed").then(|| data_y.clone());
        let name: &str = name;
        cases.push((
            Some(fin),
            (
                name,
                rule,
                false,
                before.to_vec(),
                last.clone(),
                then,
                expected,
            ),
        ));
    }
    let mut out = Vec::new();
    for (sends, (name, rule, awaiting, before, record, then, expected)) in cases {
        let got = replay(n, awaiting, sends, &before, &record, then.as_deref());
        assert_eq!(got, expected, "{name}");
        out.push(json!({
            "name": name,
            "rule": rule,
            "receiver": "responder",
            "receiver_awaiting_resume": awaiting,
            "receiver_sent": sends.map(|fin| json!({"stream": 1, "data": "hello", "fin": fin})),
            "accepted_before": before.iter().map(hex::encode).collect::<Vec<_>>(),
            "record": hex::encode(&record),
            "then": then.map(hex::encode),
            "expected": expected,
        }));
    }
    json!({"session": pair(n).head, "cases": out})
}

/// spec §5.1, rendezvous.md §4.2, §7.3: a relay path, frame by frame.
fn relay_records() -> Value {
    let (prop, acc) = parties();
    let key = |p: &Party| p.signing.verifying_key().to_bytes();
    let mut p = pair(4);
    let mut c = Conv::new(p.keys);
    c.open_path(1, &mut p);
    let st = p.init.open_stream().unwrap();
    p.init.send(c.now, st, b"relayed bytes").unwrap();
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    // A second path on the same relay streams (the proposer reconnected, or switched
    // back): its hello arrives at a record boundary of the byte stream already in use.
    c.now = 40;
    c.open_path(2, &mut p);
    let sr = p.resp.open_stream().unwrap();
    p.resp.send(c.now, sr, b"after the second hello").unwrap();
    c.take(2, RESPONDER, &mut p.resp, &mut p.init, true);
    let field = |i: &Value, k: &str| hex::decode(i[k].as_str().unwrap()).unwrap();
    // (sender is the proposer, payload): the byte stream of each direction, cut into
    // packets; the acceptor's DATA record is cut in two to show that packet boundaries
    // mean nothing.
    let mut packets: Vec<(bool, Vec<u8>)> = Vec::new();
    for i in &c.items {
        let bytes = if i.get("hello").is_some() {
            field(i, "hello")
        } else {
            field(i, "record")
        };
        let from_proposer = i["from"] == "responder";
        if !from_proposer && i["decoded"]["type"] == "DATA" {
            packets.push((false, bytes[..7].to_vec()));
            packets.push((false, bytes[7..].to_vec()));
        } else {
            packets.push((from_proposer, bytes));
        }
    }
    let mut frames = Vec::new();
    for (from_proposer, payload) in &packets {
        let (src, dst) = if *from_proposer {
            (&prop, &acc)
        } else {
            (&acc, &prop)
        };
        let send = ClientToRelay::SendPacket {
            dst: PeerAddr::Key(key(dst)),
            payload: payload.clone(),
        };
        let recv = RelayToClient::RecvPacket {
            src_key: key(src),
            src_did: src.did.clone(),
            payload: payload.clone(),
        };
        frames.push(json!({
            "from": if *from_proposer { "proposer" } else { "acceptor" },
            "payload": hex::encode(payload),
            "send_packet (sender → relay)": hex::encode(send.to_bytes().unwrap()),
            "recv_packet (relay → receiver)": hex::encode(recv.to_bytes().unwrap()),
        }));
    }
    let ping = RelayToClient::Ping(*b"relayp01");
    let pong = ClientToRelay::Pong(*b"relayp01");
    json!({
        "session": p.head,
        "proposer_ed25519": hex::encode(key(&prop)),
        "acceptor_ed25519": hex::encode(key(&acc)),
        "items": c.items,
        "packets": frames,
        "keepalive": {
            "ping (relay → client)": hex::encode(ping.to_bytes().unwrap()),
            "pong (client → relay)": hex::encode(pong.to_bytes().unwrap()),
        },
    })
}

/// Checks the relay vectors: frames decode, and each receiver's concatenated payloads are
/// the path hello and records that its session accepts.
fn check_relay(v: &Value) {
    let mut streams = [Vec::new(), Vec::new()];
    for f in v["packets"].as_array().unwrap() {
        let send = hex::decode(f["send_packet (sender → relay)"].as_str().unwrap()).unwrap();
        let recv = hex::decode(f["recv_packet (relay → receiver)"].as_str().unwrap()).unwrap();
        let (s, used) = ClientToRelay::decode(&send).unwrap().unwrap();
        assert_eq!(used, send.len());
        let (r, used) = RelayToClient::decode(&recv).unwrap().unwrap();
        assert_eq!(used, recv.len());
        let (
            ClientToRelay::SendPacket { payload: a, .. },
            RelayToClient::RecvPacket { payload: b, .. },
        ) = (s, r)
        else {
            panic!("not a packet");
        };
        assert_eq!(a, b);
        streams[usize::from(f["from"] == "proposer")].extend_from_slice(&a);
    }
    let mut p = pair(4);
    let hello = encode_hello(&path_id(p.init.handshake_hash()));
    let (to_acceptor, to_proposer) = (&streams[1], &streams[0]);
    assert!(to_acceptor.starts_with(&hello));
    // The proposer dialled: it resumed before writing its first hello.
    p.resp.resume(0).unwrap();
    // What each application wrote (the peer's RESUMEs acknowledge it).
    let si = p.init.open_stream().unwrap();
    p.init.send(0, si, b"relayed bytes").unwrap();
    let sr = p.resp.open_stream().unwrap();
    p.resp.send(0, sr, b"after the second hello").unwrap();
    let mut hellos = 0;
    for (bytes, s) in [(to_acceptor, &mut p.init), (to_proposer, &mut p.resp)] {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            // At a record boundary: a path hello (a new path on this stream), or a record.
            if let Some(after) = rest.strip_prefix(&hello[..]) {
                hellos += 1;
                s.resume(0).unwrap();
                rest = after;
                continue;
            }
            let length = u16::from_be_bytes([rest[0], rest[1]]);
            let n = usize::from(length & 0x7fff) + if length & 0x8000 != 0 { 10 } else { 2 };
            s.handle_record(0, &rest[..n]).unwrap();
            rest = &rest[n..];
        }
    }
    assert_eq!(hellos, 2);
    assert_eq!(
        delivered(&mut p.resp),
        json!({"0": {"data": "relayed bytes", "fin": false}})
    );
    assert_eq!(
        delivered(&mut p.init),
        json!({"1": {"data": "after the second hello", "fin": false}})
    );
}

/// The DIDComm layer (spec §2): each control message as plaintext, signed (propose,
/// accept) and authcrypted, with fixed JWE randomness. Routing (`forward` to the mediator)
/// is DIDComm Routing 2.0 and not part of these vectors.
fn didcomm_envelopes() -> Value {
    let (prop, acc) = parties();
    let p = pair(1);
    let sid = p.head["session_id"].as_str().unwrap().to_owned();
    let body = |k: &str| p.head[k].clone();
    let cand = mpc_did_rendezvous::candidate::Candidate::new(
        mpc_did_rendezvous::candidate::CandidateKind::Host,
        mpc_did_rendezvous::candidate::Transport::Tcp,
        "192.0.2.10:4700".parse::<SocketAddr>().unwrap(),
        0,
        None,
    );
    let candidates = serde_json::to_value(CandidatesBody {
        session_id: sid.clone(),
        candidates: vec![serde_json::to_value(cand).unwrap()],
        end_of_candidates: true,
    })
    .unwrap();
    let close = serde_json::to_value(CloseBody {
        session_id: sid.clone(),
        code: 0,
        reason: "done".into(),
    })
    .unwrap();
    let id = |b: u8| hex::encode([b; 16]);
    // (name, type, id, thid, body, sender is the proposer, signed)
    let msgs = [
        (
            "propose",
            PROPOSE_TYPE,
            sid.clone(),
            None,
            body("propose_body"),
            true,
            true,
        ),
        (
            "accept",
            ACCEPT_TYPE,
            id(0xac),
            Some(sid.clone()),
            body("accept_body"),
            false,
            true,
        ),
        (
            "handshake",
            HANDSHAKE_TYPE,
            id(0x4a),
            Some(sid.clone()),
            body("handshake_body"),
            true,
            false,
        ),
        (
            "candidates",
            CANDIDATES_TYPE,
            id(0xca),
            Some(sid.clone()),
            candidates,
            false,
            false,
        ),
        (
            "close",
            CLOSE_TYPE,
            id(0xc1),
            Some(sid.clone()),
            close,
            true,
            false,
        ),
    ];
    let resolver = StaticResolver::new();
    for d in [&prop.did, &acc.did] {
        resolver.insert(key::resolve(d).unwrap());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut out = serde_json::Map::new();
    for (i, (name, type_, mid, thid, body, from_proposer, signed)) in msgs.into_iter().enumerate() {
        let (from, to) = if from_proposer {
            (&prop, &acc)
        } else {
            (&acc, &prop)
        };
        let mut msg = Message::new(mid, type_, body);
        msg.thid = thid;
        msg.from = Some(from.did.clone());
        msg.to = Some(vec![to.did.clone()]);
        let plaintext = msg.to_json().unwrap();
        let (payload, sign_kid) = if signed {
            let (jws, kid) = rt
                .block_on(mpc_did_didcomm::pack_signed(
                    &msg,
                    &from.did,
                    &resolver,
                    &from.secrets,
                ))
                .unwrap();
            (jws, Some(kid))
        } else {
            (plaintext.clone(), None)
        };
        let b = u8::try_from(i).unwrap();
        let epk_secret = [0xe0 + b; 32];
        let cek = [0xc0 + b; 64];
        let iv = [0x10 + b; 16];
        let to_public =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(to.x_secret))
                .to_bytes();
        let sender_secret = x25519_dalek::StaticSecret::from(from.x_secret);
        let jwe = encrypt_with_fixed_randomness_for_testing(
            payload.as_bytes(),
            &[RecipientKey {
                kid: &to.x_kid,
                public: to_public,
            }],
            Some(&SenderKey {
                kid: &from.x_kid,
                secret: &sender_secret,
            }),
            ContentAlg::A256CbcHs512,
            &FixedJweRandomness {
                epk_secret,
                cek: &cek,
                iv: &iv,
            },
        )
        .unwrap();
        // The real receiver opens it: authcrypt from the sender, signed where required.
        let (got, meta) = rt
            .block_on(mpc_did_didcomm::unpack(
                jwe.as_bytes(),
                &resolver,
                &to.secrets,
                &mpc_did_didcomm::UnpackOptions::default(),
            ))
            .unwrap();
        assert_eq!(got, msg);
        assert!(meta.authenticated && meta.encrypted);
        assert_eq!(
            meta.encrypted_from_kid.as_deref(),
            Some(from.x_kid.as_str())
        );
        assert_eq!(meta.sign_from, sign_kid);
        out.insert(
            name.into(),
            json!({
                "from": from.did,
                "to": to.did,
                "plaintext": serde_json::from_str::<Value>(&plaintext).unwrap(),
                "plaintext_json": plaintext,
                "signed_jws": sign_kid.as_ref().map(|_| payload.clone()),
                "signed_by_kid": sign_kid,
                "jwe_epk_secret": hex::encode(epk_secret),
                "jwe_cek": hex::encode(cek),
                "jwe_iv": hex::encode(iv),
                "sender_kid": from.x_kid,
                "recipient_kid": to.x_kid,
                "authcrypt_jwe": serde_json::from_str::<Value>(&jwe).unwrap(),
            }),
        );
    }
    json!({
        "parties": {
            "proposer": {"did": prop.did, "ed25519_seed": hex::encode(prop.signing.to_bytes())},
            "acceptor": {"did": acc.did, "ed25519_seed": hex::encode(acc.signing.to_bytes())},
            "note": "did:key identities; the X25519 keyAgreement secret is derived from the Ed25519 seed as the did:key spec does (SHA-512 of the seed, clamped)",
        },
        "messages": Value::Object(out),
    })
}

/// spec/lobby.md §3, with its inputs and the exact preimage.
fn roster_hash() -> Value {
    let (prop, acc) = parties();
    let third = party([0xc3; 32]);
    let rosters = [
        (
            "crates/lobby/tests/vectors/roster_hash.txt",
            Roster {
                mpc_session_id: "000102030405060708090a0b0c0d0e0f".parse().unwrap(),
                program: Program {
                    name: "p.py".into(),
                    sha256: "ab".repeat(32),
                },
                mpyc_args: vec!["--x".into()],
                parties: vec![
                    RosterEntry {
                        id: 0,
                        did: "did:key:a".into(),
                        services: vec![],
                    },
                    RosterEntry {
                        id: 1,
                        did: "did:key:b".into(),
                        services: vec![json!({"uri": "ignored"})],
                    },
                ],
                expires_time: 1,
                roster_hash: String::new(),
            },
        ),
        (
            "three parties, two arguments",
            Roster {
                mpc_session_id: "3f0c9a1be25d47f08c6e13a5b7d9f201".parse().unwrap(),
                program: Program::from_bytes("sum.py", b"from mpyc.runtime import mpc\n"),
                mpyc_args: vec!["--no-log".into(), "-T 1".into()],
                parties: [&prop, &acc, &third]
                    .iter()
                    .zip(0u16..)
                    .map(|(p, id)| RosterEntry {
                        id,
                        did: p.did.clone(),
                        services: vec![json!({"uri": "https://m.example.org/didcomm"})],
                    })
                    .collect(),
                expires_time: 1_767_225_600,
                roster_hash: String::new(),
            },
        ),
    ];
    let lp = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&u32::try_from(s.len()).unwrap().to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    let mut cases = Vec::new();
    for (name, r) in rosters {
        // The preimage as spec/lobby.md §3 lists it: program hash, expiry and arguments
        // once, after the party loop.
        let mut pre = b"mpc-did/lobby/1.0/roster".to_vec();
        pre.extend_from_slice(r.mpc_session_id.as_bytes());
        pre.extend_from_slice(&u16::try_from(r.parties.len()).unwrap().to_be_bytes());
        for p in &r.parties {
            pre.extend_from_slice(&p.id.to_be_bytes());
            lp(&mut pre, &p.did);
        }
        pre.extend_from_slice(&hex::decode(&r.program.sha256).unwrap());
        pre.extend_from_slice(&r.expires_time.to_be_bytes());
        pre.extend_from_slice(&u16::try_from(r.mpyc_args.len()).unwrap().to_be_bytes());
        for a in &r.mpyc_args {
            lp(&mut pre, a);
        }
        let hash: [u8; 32] = Sha256::digest(&pre).into();
        assert_eq!(r.compute_hash().unwrap(), hash, "{name}");
        cases.push(json!({
            "name": name,
            "session_id": r.mpc_session_id,
            "parties": r.parties.iter().map(|p| json!({"id": p.id, "did": p.did})).collect::<Vec<_>>(),
            "program_sha256": r.program.sha256,
            "expires_time": r.expires_time,
            "mpyc_args": r.mpyc_args,
            "preimage": hex::encode(&pre),
            "roster_hash": hex::encode(hash),
        }));
    }
    let lobby_txt = include_str!("../../lobby/tests/vectors/roster_hash.txt").trim();
    assert_eq!(cases[0]["roster_hash"], lobby_txt);
    json!({"cases": cases})
}

/// `mpc-did pipe` (spec §10.2 pipe): each side writes on the stream it opened, preceded by
/// `mdpipe/1`; FIN at end of input; CLOSE 0 "done" once its bytes are acknowledged.
fn pipe() -> Value {
    let mut p = pair(5);
    let mut c = Conv::new(p.keys);
    c.open_path(1, &mut p);
    let (si, sr) = (p.init.open_stream().unwrap(), p.resp.open_stream().unwrap());
    for (s, st, line) in [
        (&mut p.init, si, &b"from the acceptor\n"[..]),
        (&mut p.resp, sr, &b"from the proposer\n"[..]),
    ] {
        s.send(c.now, st, b"mdpipe/1").unwrap();
        s.send(c.now, st, line).unwrap();
        s.finish(c.now, st).unwrap();
    }
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    c.take(1, RESPONDER, &mut p.resp, &mut p.init, true);
    c.now = 20;
    p.init.handle_timeout(c.now).unwrap();
    p.resp.handle_timeout(c.now).unwrap();
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    c.take(1, RESPONDER, &mut p.resp, &mut p.init, true);
    assert_eq!(p.init.stats().unacked_bytes, 0);
    assert_eq!(p.resp.stats().unacked_bytes, 0);
    // Both directions ended and are acknowledged: the acceptor closes first here; the
    // proposer, receiving CLOSE 0, ends too and sends nothing more.
    p.init.close(c.now, 0, "done").unwrap();
    c.take(1, INITIATOR, &mut p.init, &mut p.resp, true);
    assert!(p.resp.is_closed());
    let got = json!({
        "initiator": delivered(&mut p.init),
        "responder": delivered(&mut p.resp),
    });
    json!({
        "session": p.head,
        "preamble": hex::encode(b"mdpipe/1"),
        "items": c.items,
        "delivered": got,
    })
}

#[test]
fn layer_vectors() {
    let mut generated = json!({
        "source": "spec/session.md §10.2; generated by crates/connect/tests/layer_vectors.rs",
        "adhoc_binding": adhoc_binding(),
        "path_hello": path_hello(),
        "resume_retransmit": resume_retransmit(),
        "high_stream_ids": high_stream_ids(),
        "rejected_records": rejected_records(),
        "relay_records": relay_records(),
        "didcomm_envelopes": didcomm_envelopes(),
        "roster_hash": roster_hash(),
        "pipe": pipe(),
    });
    check_relay(&generated["relay_records"]);
    if std::env::var_os("MPC_DID_REGENERATE_VECTORS").is_some() {
        std::fs::write(
            PATH,
            serde_json::to_string_pretty(&generated).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    for (k, v) in generated.as_object_mut().unwrap() {
        assert_eq!(&stored[k.as_str()], v, "layers.json `{k}` is stale");
    }
    assert_eq!(stored.as_object().unwrap().len(), 10);
}
