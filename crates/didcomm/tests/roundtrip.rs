//! Pack → unpack round trips between did:key identities in every mode, several
//! recipients, sign-then-encrypt, protect-sender, and Routing 2.0 forward wrapping.
//! spec/didcomm.md §"Modes", §"Routing".
#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use mpc_did_didcomm::protocols::routing::ForwardMessage;
use mpc_did_didcomm::{
    pack_encrypted, pack_plaintext, pack_signed, unpack, ContentAlg, Message, PackOptions,
    SecretStore, UnpackOptions,
};
use mpc_did_resolver::{key, DidCommService, DidDocument, StaticResolver};
use serde_json::json;

struct Party {
    did: String,
    keys: SecretStore,
}

fn party(seed: u8) -> Party {
    let mut keys = SecretStore::new();
    let did = keys.insert_did_key(&SigningKey::from_bytes(&[seed; 32]));
    Party { did, keys }
}

fn resolver(parties: &[&Party]) -> StaticResolver {
    let r = StaticResolver::new();
    for p in parties {
        r.insert(key::resolve(&p.did).unwrap());
    }
    r
}

fn msg(a: &Party, b: &Party) -> Message {
    Message::new(
        "m-1",
        "https://example.org/test/1.0/hello",
        json!({"n": 42}),
    )
    .from(a.did.clone())
    .to(b.did.clone())
    .created_time(1_700_000_000)
}

const NO_FWD: PackOptions = PackOptions {
    anon_enc: ContentAlg::A256CbcHs512,
    protect_sender: false,
    forward: false,
};

#[tokio::test]
async fn plaintext_round_trip() {
    let (a, b) = (party(1), party(2));
    let r = resolver(&[&a, &b]);
    let m = msg(&a, &b);
    let (got, meta) = unpack(
        pack_plaintext(&m).unwrap().as_bytes(),
        &r,
        &b.keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, m);
    assert!(!meta.encrypted && !meta.authenticated);
}

#[tokio::test]
async fn signed_round_trip() {
    let (a, b) = (party(1), party(2));
    let r = resolver(&[&a, &b]);
    let m = msg(&a, &b);
    let (jws, kid) = pack_signed(&m, &a.did, &r, &a.keys).await.unwrap();
    let (got, meta) = unpack(jws.as_bytes(), &r, &b.keys, &UnpackOptions::default())
        .await
        .unwrap();
    assert_eq!(got, m);
    assert!(meta.non_repudiation && meta.authenticated && !meta.encrypted);
    assert_eq!(meta.sign_from, Some(kid));
}

#[tokio::test]
async fn anoncrypt_round_trip_every_enc() {
    let (a, b) = (party(1), party(2));
    let r = resolver(&[&a, &b]);
    let mut m = msg(&a, &b);
    m.from = None;
    for enc in [
        ContentAlg::A256CbcHs512,
        ContentAlg::A256Gcm,
        ContentAlg::Xc20p,
    ] {
        let opts = PackOptions {
            anon_enc: enc,
            ..NO_FWD
        };
        let p = pack_encrypted(&m, &b.did, None, None, &r, &a.keys, &opts)
            .await
            .unwrap();
        let (got, meta) = unpack(p.message.as_bytes(), &r, &b.keys, &UnpackOptions::default())
            .await
            .unwrap();
        assert_eq!(got, m);
        assert!(meta.encrypted && !meta.authenticated);
        assert_eq!(
            meta.enc_alg_anon,
            Some(format!("ECDH-ES+A256KW/{}", enc.name()))
        );
    }
}

#[tokio::test]
async fn authcrypt_signed_and_protected_sender() {
    let (a, b) = (party(1), party(2));
    let r = resolver(&[&a, &b]);
    let m = msg(&a, &b);
    for (sign, protect) in [(false, false), (true, false), (false, true), (true, true)] {
        let opts = PackOptions {
            protect_sender: protect,
            ..NO_FWD
        };
        let sign_by = sign.then_some(a.did.as_str());
        let p = pack_encrypted(&m, &b.did, Some(&a.did), sign_by, &r, &a.keys, &opts)
            .await
            .unwrap();
        let (got, meta) = unpack(p.message.as_bytes(), &r, &b.keys, &UnpackOptions::default())
            .await
            .unwrap();
        assert_eq!(got, m);
        assert!(meta.encrypted && meta.authenticated);
        assert_eq!(meta.non_repudiation, sign);
        assert_eq!(meta.anonymous_sender, protect);
        assert_eq!(meta.encrypted_from_kid, p.from_kid);
    }
}

/// A did:web-style document with two X25519 keyAgreement keys: both are recipients and
/// either secret alone decrypts.
#[tokio::test]
async fn several_recipient_keys() {
    use mpc_did_resolver::{PublicKey, VerificationMethod};
    use x25519_dalek::{PublicKey as XP, StaticSecret};
    let a = party(1);
    let did = "did:web:bob.example";
    let mut doc = DidDocument::new(did);
    let mut secrets = Vec::new();
    for i in 0..2u8 {
        let s = StaticSecret::from([10 + i; 32]);
        let id = format!("{did}#x{i}");
        doc.verification_method.push(VerificationMethod::multikey(
            &id,
            did,
            PublicKey::X25519(XP::from(&s).to_bytes()),
        ));
        doc.key_agreement.push(id.clone());
        secrets.push((id, s));
    }
    let r = resolver(&[&a]);
    r.insert(doc);
    let m = Message::new("x", "https://example.org/t/1.0/x", json!({}))
        .from(a.did.clone())
        .to(did);
    let p = pack_encrypted(&m, did, Some(&a.did), None, &r, &a.keys, &NO_FWD)
        .await
        .unwrap();
    assert_eq!(p.to_kids.len(), 2);
    for (id, s) in secrets {
        let mut one = SecretStore::new();
        one.insert(id.clone(), mpc_did_didcomm::Secret::X25519(s));
        let (got, meta) = unpack(p.message.as_bytes(), &r, &one, &UnpackOptions::default())
            .await
            .unwrap();
        assert_eq!(got, m);
        assert_eq!(meta.decrypted_with_kid, Some(id));
    }
}

/// Routing 2.0: Bob's document names two mediators' keys; the packed message is a forward
/// for the first, whose attachment is a forward for the second, whose attachment is
/// Bob's message. Each hop unpacks with only its own key.
#[tokio::test]
async fn forward_through_two_mediators() {
    let (a, m1, m2) = (party(1), party(3), party(4));
    let mut bob_keys = SecretStore::new();
    let bob = bob_keys.insert_did_key(&SigningKey::from_bytes(&[2; 32]));
    let mut bob_doc = key::resolve(&bob).unwrap();
    let m1_kid = key::resolve(&m1.did).unwrap().key_agreement[0].clone();
    let m2_kid = key::resolve(&m2.did).unwrap().key_agreement[0].clone();
    bob_doc.service.push(
        DidCommService {
            id: format!("{bob}#didcomm"),
            uri: "https://m1.example/didcomm".into(),
            accept: vec!["didcomm/v2".into()],
            routing_keys: vec![m1_kid.clone(), m2_kid.clone()],
        }
        .to_service(),
    );
    let r = resolver(&[&a, &m1, &m2]);
    r.insert(bob_doc);
    let m = Message::new("x", "https://example.org/t/1.0/x", json!({"hi": 1}))
        .from(a.did.clone())
        .to(bob.clone());
    let p = pack_encrypted(
        &m,
        &bob,
        Some(&a.did),
        None,
        &r,
        &a.keys,
        &PackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(p.service.unwrap().uri, "https://m1.example/didcomm");

    // Mediator 1.
    let (f1, meta) = unpack(
        p.message.as_bytes(),
        &r,
        &m1.keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert!(!meta.authenticated);
    let f1 = ForwardMessage::from_message(&f1).unwrap();
    assert_eq!(f1.next, m2_kid);
    // Mediator 1 cannot read further.
    assert!(unpack(
        &f1.forwarded_bytes(),
        &r,
        &m1.keys,
        &UnpackOptions::default()
    )
    .await
    .is_err());
    // Mediator 2.
    let (f2, _) = unpack(
        &f1.forwarded_bytes(),
        &r,
        &m2.keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    let f2 = ForwardMessage::from_message(&f2).unwrap();
    assert_eq!(f2.next, bob);
    // Bob.
    let (got, meta) = unpack(
        &f2.forwarded_bytes(),
        &r,
        &bob_keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, m);
    assert!(meta.authenticated);
}
