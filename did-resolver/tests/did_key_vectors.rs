//! The did:key specification's published test vectors (see `tests/vectors/README.md`),
//! checked against our resolver and key derivation. spec/identity.md §2.
#![allow(clippy::unwrap_used)]

use mpc_did_resolver::{key, DidDocument, PublicKey};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// Same DID, same method ids with the same keys, same relationships. Type names differ on
/// purpose (we emit `Multikey`, the vectors use the 2018/2019/2020 suite types).
fn assert_equivalent(ours: &DidDocument, published: &DidDocument) {
    assert_eq!(ours.id, published.id);
    let keys = |d: &DidDocument| {
        let mut v: Vec<(String, PublicKey)> = d
            .verification_method
            .iter()
            .map(|m| (m.id.clone(), m.key))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(
        keys(ours),
        keys(published),
        "verification methods of {}",
        ours.id
    );
    assert_eq!(ours.authentication, published.authentication);
    assert_eq!(ours.assertion_method, published.assertion_method);
    assert_eq!(ours.key_agreement, published.key_agreement);
    assert_eq!(ours.capability_invocation, published.capability_invocation);
    assert_eq!(ours.capability_delegation, published.capability_delegation);
}

fn b58(s: &Value) -> [u8; 32] {
    bs58_decode(s.as_str().unwrap())
}

fn bs58_decode(s: &str) -> [u8; 32] {
    // Decoded through the public API: a publicKeyBase58 of an X25519 key.
    *PublicKey::from_base58(s, true).unwrap().as_bytes()
}

#[test]
fn ed25519_x25519_vectors() {
    let v = load("ed25519-x25519.json");
    let entries = v.as_object().unwrap();
    assert_eq!(entries.len(), 5);
    for (did, entry) in entries {
        // Seed → Ed25519 public key → DID (RFC 8032 key generation, multicodec 0xed).
        let seed: [u8; 32] = hex::decode(entry["seed"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
        let ed_pub = sk.verifying_key().to_bytes();
        assert_eq!(
            ed_pub,
            b58(&entry["verificationKeyPair"]["publicKeyBase58"])
        );
        assert_eq!(&key::did_from_ed25519(&ed_pub), did);

        // Public derivation (birational map) gives the published X25519 key and id.
        let ka = &entry["keyAgreementKeyPair"];
        let x_pub = key::ed25519_to_x25519_public(&ed_pub).unwrap();
        assert_eq!(x_pub, b58(&ka["publicKeyBase58"]));
        assert_eq!(
            format!("#{}", PublicKey::X25519(x_pub).to_multibase()),
            ka["id"].as_str().unwrap()
        );

        // Secret derivation (SHA-512 of the seed, clamped) gives the published private key,
        // and its public key is the same X25519 key: the wallet's secret matches the
        // resolver's public key.
        let x_secret = key::x25519_secret_from_ed25519_seed(&seed);
        assert_eq!(x_secret, b58(&ka["privateKeyBase58"]));
        let from_secret =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(x_secret)).to_bytes();
        assert_eq!(from_secret, x_pub);

        // The whole document.
        let ours = key::resolve(did).unwrap();
        let published = DidDocument::from_json_value(&entry["didDocument"]).unwrap();
        assert_equivalent(&ours, &published);
    }
}

#[test]
fn x25519_vectors() {
    let v = load("x25519.json");
    let docs = v["didDocument"].as_object().unwrap();
    assert_eq!(docs.len(), 3);
    for (did, doc) in docs {
        let ours = key::resolve(did).unwrap();
        let published = DidDocument::from_json_value(doc).unwrap();
        assert_equivalent(&ours, &published);
        assert!(
            ours.authentication.is_empty(),
            "an X25519 key cannot authenticate"
        );
        assert_eq!(ours.key_agreement_methods().len(), 1);
    }
}

#[test]
fn spec_example_document() {
    let v = load("spec-example-ed25519.json");
    let published = DidDocument::from_json_value(&v).unwrap();
    // The embedded keyAgreement method was normalised into verificationMethod.
    assert_eq!(published.verification_method.len(), 2);
    let ours = key::resolve(&published.id).unwrap();
    assert_equivalent(&ours, &published);
    assert_eq!(
        ours.key_agreement,
        vec![format!(
            "{}#z6LSj72tK8brWgZja8NLRwPigth2T9QRiG1uH9oKZuKjdh9p",
            published.id
        )]
    );
}

#[test]
fn our_documents_reparse_identically() {
    for did in load("ed25519-x25519.json").as_object().unwrap().keys() {
        let doc = key::resolve(did).unwrap();
        let bytes = serde_json::to_vec(&doc).unwrap();
        assert_eq!(DidDocument::from_json_slice(&bytes).unwrap(), doc);
    }
}
