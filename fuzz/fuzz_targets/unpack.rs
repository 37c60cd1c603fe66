//! Fuzz the DIDComm unpacker with the spec appendix's keys and documents, so that inputs
//! mutated from the appendix messages (the seeds) reach decryption and verification.
//! It must never panic or hang; every failure is a typed error.
#![no_main]

use std::future::Future;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use mpc_did_didcomm::{unpack, Envelope, SecretStore, UnpackOptions};
use mpc_did_resolver::{DidDocument, StaticResolver};

const ALICE: &str = include_str!("../../crates/didcomm/tests/vectors/appendix/did-alice.json");
const BOB: &str = include_str!("../../crates/didcomm/tests/vectors/appendix/did-bob.json");
const BOB_SECRETS: &str =
    include_str!("../../crates/didcomm/tests/vectors/appendix/secrets-bob.json");

/// The resolver here answers at once, so polling to completion never spins.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fn setup() -> (StaticResolver, SecretStore) {
    let r = StaticResolver::new();
    for d in [ALICE, BOB] {
        if let Ok(doc) = DidDocument::from_json_slice(d.as_bytes()) {
            r.insert(doc);
        }
    }
    let mut s = SecretStore::new();
    if let Ok(serde_json::Value::Array(keys)) = serde_json::from_str(BOB_SECRETS) {
        for mut k in keys {
            // Appendix A.2's published typo: "kid " with a trailing space.
            if let Some(o) = k.as_object_mut() {
                if let Some(v) = o.remove("kid ") {
                    o.insert("kid".into(), v);
                }
            }
            let _ = s.insert_jwk(&k);
        }
    }
    (r, s)
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static KEYS: (StaticResolver, SecretStore) = setup();
    }
    let _ = Envelope::parse(data);
    KEYS.with(|(r, s)| {
        let _ = block_on(unpack(data, r, s, &UnpackOptions::default()));
    });
});
