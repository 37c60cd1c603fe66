//! spec/session.md §2.1: what an ad-hoc secure session (`mpc-did pipe`,
//! `mpc-did session connect`: no lobby, no roster) binds in its prologue. The expected
//! hashes were computed independently (Python `hashlib` + `struct.pack('>I', len)`).
#![allow(clippy::unwrap_used)]

use mpc_did_connect::Binding;
use sha2::{Digest, Sha256};

/// The spec text, written out: SHA-256("mpc-did/adhoc/1" || u32be len || smaller DID ||
/// u32be len || larger DID), smaller = bytewise on the UTF-8 strings.
fn by_the_spec(a: &str, b: &str) -> [u8; 32] {
    let (x, y) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut h = Sha256::new();
    h.update(b"mpc-did/adhoc/1");
    for d in [x, y] {
        h.update((d.len() as u32).to_be_bytes());
        h.update(d.as_bytes());
    }
    h.finalize().into()
}

#[test]
fn adhoc_binding_is_the_documented_hash_with_mpc_session_id_adhoc() {
    for (a, b, want) in [
        (
            "did:web:example.org:bob",
            "did:key:z6MkAlice",
            "22375e09b3dc1a590ddd7dedd5908c60a799521f9b9f25bf702e4b1dfc04e0a0",
        ),
        // Bytewise, not case-insensitive: "Z" (0x5a) sorts before "a" (0x61).
        (
            "did:key:abe",
            "did:key:Zed",
            "66003dd74ac7f4b85383721ea32429c9088c442f2cc730d3e0beaea45e4cf00a",
        ),
    ] {
        let ours = Binding::adhoc(a, b);
        assert_eq!(ours.mpc_session_id, "adhoc");
        assert_eq!(hex::encode(ours.roster_hash), want);
        assert_eq!(ours.roster_hash, by_the_spec(a, b));
        assert_eq!(Binding::adhoc(b, a), ours, "the same on both sides");
    }
}
