//! Session data plane: seal + open of one application message through an established
//! `mpc_did_session::Session` pair (record framing, AES-256-GCM, stream bookkeeping, ACKs),
//! and a full handshake. Compare with the DIDComm authcrypt bench measured in the same run.
//!
//! `cargo bench -p mpc-did-benches --bench session`
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mpc_did_session::{Acceptor, EventRef, Proposer, Session, SessionConfig};

const MPC: &str = "3f0c9a1be25d47f08c6e13a5b7d9f201";
const ROSTER: [u8; 32] = [7; 32];
const ALICE: &str = "did:key:z6MkAlice";
const BOB: &str = "did:key:z6MkBob";

fn config() -> SessionConfig {
    // An ACK every 1 MiB: the receiver acknowledges in bulk as it would under load.
    SessionConfig {
        ack_threshold_bytes: 1 << 20,
        ..SessionConfig::default()
    }
}

/// The complete handshake of spec/session.md §2: fresh static keys for both sides,
/// propose → accept (Noise message 1) → handshake (Noise message 2).
fn handshake() -> (Session, Session) {
    let (bob, propose) = Proposer::new([1; 16], MPC, ROSTER, BOB, ALICE);
    let (alice, accept) = Acceptor::on_propose(&propose, MPC, ROSTER, ALICE, BOB).unwrap();
    let (b, hs) = bob.on_accept(&accept, config(), 0).unwrap();
    let a = alice.on_handshake(&hs, config(), 0).unwrap();
    (a, b)
}

/// One message A → B: seal into records, open them, deliver the bytes; ACKs flow back.
fn one_message(a: &mut Session, b: &mut Session, stream: u32, msg: &[u8]) -> usize {
    let n = a.send(0, stream, msg).unwrap();
    assert_eq!(n, msg.len(), "send buffer full: ACKs are not flowing");
    while let Some(rec) = a.poll_transmit_ref() {
        b.handle_record(0, rec).unwrap();
    }
    // Borrowed, as the driver takes them: no allocation per record.
    let mut got = 0;
    while let Some(ev) = b.poll_event_ref() {
        if let EventRef::Data { data, .. } = ev {
            got += black_box(data).len();
        }
    }
    while let Some(ack) = b.poll_transmit_ref() {
        a.handle_record(0, ack).unwrap();
    }
    while a.poll_event().is_some() {}
    got
}

fn bench_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_seal_open");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for size in [64usize, 1024, 64 * 1024] {
        let (mut a, mut b) = handshake();
        let stream = a.open_stream().unwrap();
        let msg = vec![0x5a; size];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &msg, |bench, msg| {
            bench.iter(|| black_box(one_message(&mut a, &mut b, stream, black_box(msg))));
        });
    }
    g.finish();
}

/// Baseline in the same run: bare snow transport (stateless, explicit nonce) seal + open of
/// one payload, no framing, no streams — what the session layer adds is the difference.
fn bench_bare_snow(c: &mut Criterion) {
    let params: snow::params::NoiseParams = "Noise_KK_25519_AESGCM_SHA256".parse().unwrap();
    let ki = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let kr = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut i = snow::Builder::new(params.clone())
        .local_private_key(&ki.private)
        .unwrap()
        .remote_public_key(&kr.public)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .local_private_key(&kr.private)
        .unwrap()
        .remote_public_key(&ki.public)
        .unwrap()
        .build_responder()
        .unwrap();
    let mut buf = vec![0u8; 65_535];
    let mut out = vec![0u8; 65_535];
    let n = i.write_message(&[], &mut buf).unwrap();
    r.read_message(&buf[..n], &mut out).unwrap();
    let n = r.write_message(&[], &mut buf).unwrap();
    i.read_message(&buf[..n], &mut out).unwrap();
    let i = i.into_stateless_transport_mode().unwrap();
    let r = r.into_stateless_transport_mode().unwrap();
    let mut g = c.benchmark_group("bare_snow_seal_open");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut nonce = 0u64;
    for size in [64usize, 1024, 65_519] {
        let msg = vec![0x5a; size];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &msg, |bench, msg| {
            bench.iter(|| {
                let n = i.write_message(nonce, black_box(msg), &mut buf).unwrap();
                let m = r.read_message(nonce, &buf[..n], &mut out).unwrap();
                nonce += 1;
                black_box(m)
            });
        });
    }
    g.finish();
}

/// The crypto floor of the record format (spec/session.md §5.1–5.2, §11 "Performance note"):
/// ring AES-256-GCM seal + open, in place, of the same plaintext a DATA record carries (type
/// byte, 1-byte stream id, the payload) with the 2-byte record header as associated data,
/// plus the one copy the receiver makes. No framing, no streams: what the session adds
/// beyond its own format is the difference to `session_seal_open`.
fn bench_format_floor(c: &mut Criterion) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[3; 32]).unwrap());
    let mut g = c.benchmark_group("record_format_floor_seal_open");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    let mut counter = 0u64;
    for size in [64usize, 1024] {
        let msg = vec![0x5a; size];
        let mut rec = vec![0u8; 2 + 2 + size + 16];
        let mut rx = vec![0u8; 2 + size + 16];
        g.throughput(Throughput::Elements(1));
        g.bench_with_input(BenchmarkId::from_parameter(size), &msg, |bench, msg| {
            bench.iter(|| {
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&counter.to_be_bytes());
                counter += 1;
                let (hdr, body) = rec.split_at_mut(2);
                body[0] = 0x01;
                body[1] = 0x00;
                body[2..2 + size].copy_from_slice(black_box(msg));
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(&hdr[..]),
                        &mut body[..2 + size],
                    )
                    .unwrap();
                body[2 + size..].copy_from_slice(tag.as_ref());
                rx.copy_from_slice(body);
                let pt = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(&hdr[..]),
                        &mut rx,
                    )
                    .unwrap();
                black_box(pt.len())
            });
        });
    }
    g.finish();
}

fn bench_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_handshake");
    g.measurement_time(Duration::from_secs(3)).sample_size(30);
    g.bench_function("full_kk_both_sides", |bench| {
        bench.iter(|| black_box(handshake()))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_messages,
    bench_bare_snow,
    bench_format_floor,
    bench_handshake
);
criterion_main!(benches);
