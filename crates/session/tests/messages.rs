//! DIDComm body types of spec/session.md §2.
#![allow(clippy::unwrap_used)]

use mpc_did_session::messages::{
    decode_fixed, to_hex, AcceptBody, CandidatesBody, CloseBody, HandshakeBody, ProposeBody,
    ACCEPT_TYPE, CANDIDATES_TYPE, CLOSE_TYPE, HANDSHAKE_TYPE, MAX_CANDIDATES, PROPOSE_TYPE,
    PROTOCOL_URI,
};
use mpc_did_session::{Acceptor, Proposer, SessionError};
use proptest::prelude::*;
use serde_json::json;

#[test]
fn type_uris_extend_the_protocol_uri() {
    for (t, name) in [
        (PROPOSE_TYPE, "propose"),
        (ACCEPT_TYPE, "accept"),
        (HANDSHAKE_TYPE, "handshake"),
        (CANDIDATES_TYPE, "candidates"),
        (CLOSE_TYPE, "close"),
    ] {
        assert_eq!(t, format!("{PROTOCOL_URI}/{name}"));
    }
}

#[test]
fn bodies_ignore_unknown_members_and_default_optional_ones() {
    // spec/session.md §2: unknown members are ignored
    let c: CandidatesBody = serde_json::from_value(json!({
        "session_id": "00", "candidates": [{"kind": "host"}], "x-future": 1
    }))
    .unwrap();
    assert!(!c.end_of_candidates);
    c.check().unwrap();
    let close: CloseBody = serde_json::from_value(json!({"session_id": "00", "code": 1})).unwrap();
    assert_eq!(close.reason, "");
    // A missing required member is an error.
    assert!(serde_json::from_value::<HandshakeBody>(json!({"session_id": "00"})).is_err());
}

#[test]
fn too_many_candidates_are_refused() {
    let c = CandidatesBody {
        session_id: "00".into(),
        candidates: vec![json!({}); MAX_CANDIDATES + 1],
        end_of_candidates: true,
    };
    assert!(matches!(c.check(), Err(SessionError::Limit(_))));
}

#[test]
fn hex_fields_are_strict() {
    // spec/session.md §2: lowercase hex of the exact length
    assert_eq!(decode_fixed::<2>("0aff", "x").unwrap(), [0x0a, 0xff]);
    for bad in ["0AFF", "0aff00", "0af", "zzzz", ""] {
        assert!(decode_fixed::<2>(bad, "x").is_err(), "{bad}");
    }
}

#[test]
fn mismatched_bodies_are_refused_before_noise() {
    let (bob, propose) = Proposer::new([1; 16], "m", [2; 32], "did:b", "did:a");
    let mut p = propose.clone();
    p.suite = "Noise_KK_25519_ChaChaPoly_BLAKE2s".into();
    assert!(matches!(
        Acceptor::on_propose(&p, "m", [2; 32], "did:a", "did:b"),
        Err(SessionError::Setup(_))
    ));
    assert!(Acceptor::on_propose(&propose, "other", [2; 32], "did:a", "did:b").is_err());
    let (_alice, mut accept) =
        Acceptor::on_propose(&propose, "m", [2; 32], "did:a", "did:b").unwrap();
    accept.session_id = to_hex(&[9; 16]);
    assert!(matches!(
        bob.on_accept(&accept, Default::default(), 0),
        Err(SessionError::Setup(_))
    ));
}

proptest! {
    /// Every body survives a JSON round trip (spec/session.md §2).
    #[test]
    fn bodies_round_trip(
        sid in proptest::collection::vec(any::<u8>(), 16),
        key in proptest::collection::vec(any::<u8>(), 32),
        text in ".{0,40}",
        code in any::<u16>(),
        fin in any::<bool>(),
    ) {
        let propose = ProposeBody {
            session_id: to_hex(&sid), mpc_session_id: text.clone(), roster_hash: to_hex(&key),
            suite: text.clone(), noise_static: to_hex(&key),
        };
        let accept = AcceptBody {
            session_id: to_hex(&sid), suite: text.clone(), noise_static: to_hex(&key), handshake: to_hex(&key),
        };
        let hs = HandshakeBody { session_id: to_hex(&sid), handshake: to_hex(&key) };
        let cand = CandidatesBody { session_id: to_hex(&sid), candidates: vec![json!({"t": text.clone()})], end_of_candidates: fin };
        let close = CloseBody { session_id: to_hex(&sid), code, reason: text };
        prop_assert_eq!(serde_json::from_str::<ProposeBody>(&serde_json::to_string(&propose).unwrap()).unwrap(), propose);
        prop_assert_eq!(serde_json::from_str::<AcceptBody>(&serde_json::to_string(&accept).unwrap()).unwrap(), accept);
        prop_assert_eq!(serde_json::from_str::<HandshakeBody>(&serde_json::to_string(&hs).unwrap()).unwrap(), hs);
        prop_assert_eq!(serde_json::from_str::<CandidatesBody>(&serde_json::to_string(&cand).unwrap()).unwrap(), cand);
        prop_assert_eq!(serde_json::from_str::<CloseBody>(&serde_json::to_string(&close).unwrap()).unwrap(), close);
        prop_assert_eq!(decode_fixed::<32>(&to_hex(&key), "k").unwrap().to_vec(), key);
    }
}
