//! Test vectors of spec/session.md §10, checked in as data: `tests/vectors/session.json`.
//!
//! The test re-derives every byte with this crate (fixed static and ephemeral keys) and
//! cross-checks the handshake against snow used directly, and every record against an
//! independent AES-256-GCM (RustCrypto `aes-gcm`). Regenerate (only when the spec changes):
//! `MPC_DID_REGENERATE_VECTORS=1 cargo test -p mpc-did-session --test vectors`.
#![allow(clippy::unwrap_used, clippy::type_complexity)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use mpc_did_session::frame::{Frame, StreamState};
use mpc_did_session::messages::decode_fixed;
use mpc_did_session::{
    Acceptor, Proposer, Session, SessionBinding, SessionConfig, StaticKeypair, EPOCH_BITS,
    NOISE_PARAMS,
};
use serde_json::{json, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/session.json");

const INIT_STATIC: [u8; 32] = [0x11; 32];
const RESP_STATIC: [u8; 32] = [0x22; 32];
const INIT_EPH: [u8; 32] = [0x33; 32];
const RESP_EPH: [u8; 32] = [0x44; 32];
const SESSION_ID: [u8; 16] = *b"sess-0123456789a";
const MPC: &str = "3f0c9a1be25d47f08c6e13a5b7d9f201";
const INIT_DID: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
const RESP_DID: &str = "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG";

fn roster_hash() -> [u8; 32] {
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = i as u8;
    }
    h
}

/// The fixed conversation of spec §10.2, with the expected frame of each record.
fn conversation() -> (Value, Vec<(String, Vec<u8>, Vec<u8>)>) {
    let init = StaticKeypair::from_secret(INIT_STATIC);
    let resp = StaticKeypair::from_secret(RESP_STATIC);
    let (proposer, propose) =
        Proposer::with_keypair(resp, SESSION_ID, MPC, roster_hash(), RESP_DID, INIT_DID);
    let (acceptor, accept) = Acceptor::on_propose_with(
        init,
        Some(&INIT_EPH),
        &propose,
        MPC,
        roster_hash(),
        INIT_DID,
        RESP_DID,
    )
    .unwrap();
    let config = SessionConfig::default();
    let (mut r, handshake) = proposer
        .on_accept_with(Some(&RESP_EPH), &accept, config.clone(), 0)
        .unwrap();
    let mut i = acceptor.on_handshake(&handshake, config, 0).unwrap();

    let mut records = Vec::new();
    let mut take = |who: &str, s: &mut Session, peer: &mut Session, frames: Vec<Vec<u8>>| {
        let mut k = 0;
        while let Some(rec) = s.poll_transmit() {
            peer.handle_record(0, &rec).unwrap();
            records.push((who.to_owned(), rec, frames[k].clone()));
            k += 1;
        }
        assert_eq!(k, frames.len(), "{who}: {frames:?}");
    };
    let enc = |f: Frame<'_>| {
        let mut v = Vec::new();
        f.encode(&mut v).unwrap();
        v
    };
    let st = i.open_stream().unwrap();
    i.send(0, st, b"hello, responder").unwrap();
    take(
        "initiator",
        &mut i,
        &mut r,
        vec![enc(Frame::Data {
            stream: 0,
            data: b"hello, responder",
        })],
    );
    r.send(0, st, b"hello, initiator").unwrap();
    take(
        "responder",
        &mut r,
        &mut i,
        vec![enc(Frame::Data {
            stream: 0,
            data: b"hello, initiator",
        })],
    );
    i.finish(0, st).unwrap();
    take(
        "initiator",
        &mut i,
        &mut r,
        vec![enc(Frame::Fin {
            stream: 0,
            final_size: 16,
        })],
    );
    r.handle_timeout(20).unwrap();
    take(
        "responder",
        &mut r,
        &mut i,
        vec![enc(Frame::Ack(vec![StreamState {
            stream: 0,
            offset: 16,
            fin: true,
        }]))],
    );
    i.handle_timeout(20).unwrap();
    take(
        "initiator",
        &mut i,
        &mut r,
        vec![enc(Frame::Ack(vec![StreamState {
            stream: 0,
            offset: 16,
            fin: false,
        }]))],
    );
    i.request_rekey();
    i.handle_timeout(10_020).unwrap();
    take("initiator", &mut i, &mut r, vec![enc(Frame::Ping(3))]);
    take("responder", &mut r, &mut i, vec![enc(Frame::Pong(3))]);
    // A path switch (spec §7): each RESUME carries its counter explicitly (spec §5.1), even
    // the responder's, whose counter is the next one.
    let resume = |offset, fin| {
        enc(Frame::Resume(vec![StreamState {
            stream: 0,
            offset,
            fin,
        }]))
    };
    i.resume(10_020).unwrap();
    take("initiator", &mut i, &mut r, vec![resume(16, false)]);
    take("responder", &mut r, &mut i, vec![resume(16, true)]);
    r.send(10_020, st, b"again").unwrap();
    take(
        "responder",
        &mut r,
        &mut i,
        vec![enc(Frame::Data {
            stream: 0,
            data: b"again",
        })],
    );
    r.close(10_020, 0, "done").unwrap();
    take(
        "responder",
        &mut r,
        &mut i,
        vec![enc(Frame::Close {
            code: 0,
            reason: "done",
        })],
    );

    let binding = SessionBinding {
        session_id: SESSION_ID,
        mpc_session_id: MPC.into(),
        initiator_did: INIT_DID.into(),
        responder_did: RESP_DID.into(),
        roster_hash: roster_hash(),
        initiator_static: StaticKeypair::from_secret(INIT_STATIC).public(),
        responder_static: StaticKeypair::from_secret(RESP_STATIC).public(),
    };
    let m1: [u8; 48] = decode_fixed(&accept.handshake, "m1").unwrap();
    let m2: [u8; 48] = decode_fixed(&handshake.handshake, "m2").unwrap();
    let head = json!({
        "noise_protocol": NOISE_PARAMS,
        "session_id": hex::encode(SESSION_ID),
        "mpc_session_id": MPC,
        "initiator_did": INIT_DID,
        "responder_did": RESP_DID,
        "roster_hash": hex::encode(roster_hash()),
        "initiator_static_secret": hex::encode(INIT_STATIC),
        "initiator_static_public": hex::encode(binding.initiator_static),
        "responder_static_secret": hex::encode(RESP_STATIC),
        "responder_static_public": hex::encode(binding.responder_static),
        "initiator_ephemeral_secret": hex::encode(INIT_EPH),
        "responder_ephemeral_secret": hex::encode(RESP_EPH),
        "prologue": hex::encode(binding.prologue().unwrap()),
        "message1": hex::encode(m1),
        "message2": hex::encode(m2),
        "handshake_hash": hex::encode(i.handshake_hash()),
        "propose_body": serde_json::to_value(&propose).unwrap(),
        "accept_body": serde_json::to_value(&accept).unwrap(),
        "handshake_body": serde_json::to_value(&handshake).unwrap(),
    });
    assert_eq!(i.handshake_hash(), r.handshake_hash());
    (head, records)
}

/// Split keys computed by snow itself, independently of this crate's handshake code.
fn snow_reference(v: &Value) -> (Vec<u8>, Vec<u8>, Vec<u8>, [u8; 32], [u8; 32]) {
    let h = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let prologue = h("prologue");
    let (is, rs, ie, re) = (
        h("initiator_static_secret"),
        h("responder_static_secret"),
        h("initiator_ephemeral_secret"),
        h("responder_ephemeral_secret"),
    );
    let (ip, rp) = (h("initiator_static_public"), h("responder_static_public"));
    let mut init = snow::Builder::new(params.clone())
        .prologue(&prologue)
        .unwrap()
        .local_private_key(&is)
        .unwrap()
        .remote_public_key(&rp)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&ie)
        .build_initiator()
        .unwrap();
    let mut resp = snow::Builder::new(params)
        .prologue(&prologue)
        .unwrap()
        .local_private_key(&rs)
        .unwrap()
        .remote_public_key(&ip)
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&re)
        .build_responder()
        .unwrap();
    let mut m1 = vec![0u8; 100];
    let n = init.write_message(&[], &mut m1).unwrap();
    m1.truncate(n);
    let mut buf = vec![0u8; 100];
    assert_eq!(resp.read_message(&m1, &mut buf).unwrap(), 0);
    let mut m2 = vec![0u8; 100];
    let n = resp.write_message(&[], &mut m2).unwrap();
    m2.truncate(n);
    assert_eq!(init.read_message(&m2, &mut buf).unwrap(), 0);
    let hh = init.get_handshake_hash().to_vec();
    let (k1, k2) = init.dangerously_get_raw_split();
    assert_eq!(resp.dangerously_get_raw_split(), (k1, k2));
    (m1, m2, hh, k1, k2)
}

/// Noise REKEY (Noise spec §4.2) with an independent AES-256-GCM.
fn rekey(k: [u8; 32]) -> [u8; 32] {
    let c = Aes256Gcm::new_from_slice(&k).unwrap();
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&u64::MAX.to_be_bytes());
    let out = c
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

/// The counter and header length of a record (spec §5.1), parsed independently of the
/// crate: with E (bit 15 of the length) the counter follows, else it is `prev + 1`.
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

/// Opens a record (spec §5.2) with an independent AES-256-GCM.
fn open_independently(record: &[u8], prev: Option<u64>, k0: [u8; 32]) -> Vec<u8> {
    let (counter, header_len) = counter_of(record, prev);
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
        .unwrap()
}

#[test]
fn session_vectors() {
    // spec/session.md §10
    let (head, records) = conversation();
    let mut generated = head.clone();
    let (m1, m2, hh, k1, k2) = snow_reference(&head);
    generated["key_initiator_to_responder"] = json!(hex::encode(k1));
    generated["key_responder_to_initiator"] = json!(hex::encode(k2));
    let mut prev = [None, None];
    generated["records"] = Value::Array(
        records
            .iter()
            .map(|(who, rec, frame)| {
                let dir = usize::from(who == "responder");
                let (counter, header_len) = counter_of(rec, prev[dir]);
                prev[dir] = Some(counter);
                json!({
                    "from": who,
                    "counter": counter,
                    "explicit_counter": header_len == 10,
                    "frame": hex::encode(frame),
                    "record": hex::encode(rec),
                })
            })
            .collect(),
    );
    generated["source"] =
        json!("spec/session.md §10; generated by crates/session/tests/vectors.rs");

    if std::env::var_os("MPC_DID_REGENERATE_VECTORS").is_some() {
        std::fs::write(
            PATH,
            serde_json::to_string_pretty(&generated).unwrap() + "\n",
        )
        .unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(
        stored, generated,
        "this crate no longer reproduces the stored vectors"
    );

    // snow, used directly, agrees on the handshake (the vectors pin our prologue + framing).
    assert_eq!(hex::encode(m1), stored["message1"]);
    assert_eq!(hex::encode(m2), stored["message2"]);
    assert_eq!(hex::encode(hh), stored["handshake_hash"]);

    // Every record opens with an independent AES-GCM to the stored frame, which decodes.
    let mut saw_rekeyed = false;
    let (mut explicit, mut implicit) = (0, 0);
    let mut prev = [None, None];
    for r in stored["records"].as_array().unwrap() {
        let rec = hex::decode(r["record"].as_str().unwrap()).unwrap();
        let frame = hex::decode(r["frame"].as_str().unwrap()).unwrap();
        let dir = usize::from(r["from"] == "responder");
        let key = if dir == 0 { k1 } else { k2 };
        assert_eq!(open_independently(&rec, prev[dir], key), frame);
        let counter = r["counter"].as_u64().unwrap();
        prev[dir] = Some(counter);
        Frame::decode(&frame).unwrap();
        saw_rekeyed |= counter >> EPOCH_BITS > 0;
        if r["explicit_counter"].as_bool().unwrap() {
            explicit += 1;
        } else {
            implicit += 1;
        }
    }
    assert!(saw_rekeyed, "the vectors include a record of epoch 1");
    assert!(
        explicit >= 4 && implicit >= 4,
        "{explicit} explicit, {implicit} implicit"
    );
}

/// One fuzz input op of `fuzz/fuzz_targets/session_frame.rs`: `op:u8 len:u16le bytes`.
fn fuzz_op(out: &mut Vec<u8>, op: u8, bytes: &[u8]) {
    out.push(op);
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_le_bytes());
    out.extend_from_slice(bytes);
}

#[test]
fn fuzz_seeds_embed_the_vectors() {
    // The seeds of fuzz/seeds/session_frame/ are built from session.json (the fuzz pair uses
    // the same fixed keys), so they stay valid when the wire format changes:
    // `MPC_DID_REGENERATE_VECTORS=1` rewrites them with the vectors.
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let records = stored["records"].as_array().unwrap();
    let field = |r: &Value, k: &str| hex::decode(r[k].as_str().unwrap()).unwrap();
    // op 1: every frame, sealed by the initiator as an arbitrary authenticated plaintext.
    let mut raw_frames = Vec::new();
    for r in records {
        fuzz_op(&mut raw_frames, 1, &field(r, "frame"));
    }
    // op 0: the initiator's records as path bytes for the responder.
    let mut vector_records = Vec::new();
    for r in records.iter().filter(|r| r["from"] == "initiator") {
        fuzz_op(&mut vector_records, 0, &field(r, "record"));
    }
    // Writes, a path switch, a timer, a truncated RESUME frame, then a stale record.
    let mut write_resume = Vec::new();
    fuzz_op(&mut write_resume, 2, &b"hello".repeat(20));
    fuzz_op(&mut write_resume, 4, &[]);
    fuzz_op(&mut write_resume, 2, b"again");
    fuzz_op(&mut write_resume, 3, &[11]);
    fuzz_op(
        &mut write_resume,
        1,
        &[6, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0],
    );
    fuzz_op(&mut write_resume, 0, &field(&records[0], "record"));

    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fuzz/seeds/session_frame"
    );
    for (name, bytes) in [
        ("raw_frames", raw_frames),
        ("vector_records", vector_records),
        ("write_resume", write_resume),
    ] {
        let path = format!("{dir}/{name}");
        if std::env::var_os("MPC_DID_REGENERATE_VECTORS").is_some() {
            std::fs::write(&path, &bytes).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{path} is stale");
    }
}
