//! Per-message DIDComm cost: pack + unpack in each mode at 64 B, 1 KiB and 64 KiB of
//! payload. This is the per-message baseline the session layer (benches/session.rs) is
//! compared with: every DIDComm message pays public-key operations (ECDH, signatures)
//! that a Noise session pays once per handshake.
//!
//! Run: `cargo bench -p mpc-did-benches --bench didcomm`. Keys are two did:key identities
//! resolved from a static resolver (no I/O inside the timed loop).
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use mpc_did_didcomm::{
    pack_encrypted, pack_plaintext, pack_signed, unpack, ContentAlg, Message, PackOptions,
    SecretStore, UnpackOptions,
};
use mpc_did_resolver::{key, StaticResolver};
use serde_json::json;

/// The static resolver answers at once: poll to completion without a runtime.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

#[derive(Clone, Copy)]
enum Mode {
    Plain,
    Signed,
    Anoncrypt,
    Authcrypt,
    SignedAuthcrypt,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Signed => "signed",
            Mode::Anoncrypt => "anoncrypt",
            Mode::Authcrypt => "authcrypt",
            Mode::SignedAuthcrypt => "signed+authcrypt",
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut alice_keys = SecretStore::new();
    let alice = alice_keys.insert_did_key(&SigningKey::from_bytes(&[1; 32]));
    let mut bob_keys = SecretStore::new();
    let bob = bob_keys.insert_did_key(&SigningKey::from_bytes(&[2; 32]));
    let r = StaticResolver::new();
    r.insert(key::resolve(&alice).unwrap());
    r.insert(key::resolve(&bob).unwrap());
    let opts = PackOptions {
        anon_enc: ContentAlg::A256CbcHs512,
        protect_sender: false,
        forward: false,
    };
    let uopts = UnpackOptions::default();

    let mut g = c.benchmark_group("didcomm_pack_unpack");
    for size in [64usize, 1024, 64 * 1024] {
        let msg = Message::new(
            "bench",
            "https://example.org/b/1.0/b",
            json!({"d": "a".repeat(size)}),
        )
        .from(alice.clone())
        .to(bob.clone());
        g.throughput(Throughput::Bytes(size as u64));
        for mode in [
            Mode::Plain,
            Mode::Signed,
            Mode::Anoncrypt,
            Mode::Authcrypt,
            Mode::SignedAuthcrypt,
        ] {
            g.bench_with_input(BenchmarkId::new(mode.name(), size), &msg, |b, msg| {
                b.iter(|| {
                    let packed = match mode {
                        Mode::Plain => pack_plaintext(msg).unwrap(),
                        Mode::Signed => {
                            block_on(pack_signed(msg, &alice, &r, &alice_keys))
                                .unwrap()
                                .0
                        }
                        Mode::Anoncrypt => {
                            let mut m = msg.clone();
                            m.from = None;
                            block_on(pack_encrypted(&m, &bob, None, None, &r, &alice_keys, &opts))
                                .unwrap()
                                .message
                        }
                        Mode::Authcrypt => {
                            block_on(pack_encrypted(
                                msg,
                                &bob,
                                Some(&alice),
                                None,
                                &r,
                                &alice_keys,
                                &opts,
                            ))
                            .unwrap()
                            .message
                        }
                        Mode::SignedAuthcrypt => {
                            block_on(pack_encrypted(
                                msg,
                                &bob,
                                Some(&alice),
                                Some(&alice),
                                &r,
                                &alice_keys,
                                &opts,
                            ))
                            .unwrap()
                            .message
                        }
                    };
                    let (m, _) =
                        block_on(unpack(black_box(packed.as_bytes()), &r, &bob_keys, &uopts))
                            .unwrap();
                    black_box(m)
                });
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
