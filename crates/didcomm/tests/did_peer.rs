//! DIDComm with did:peer identities, resolved by the real `UniversalResolver` (no
//! overlay): a did:peer:2 sender and recipient pack and unpack every mode, and a
//! did:peer:2 whose service names a mediator gets its messages wrapped in a Routing 2.0
//! `forward` for the mediator's routing key. spec/identity.md, spec/didcomm.md §4.
#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use mpc_did_didcomm::{
    pack_encrypted, unpack, ForwardMessage, Message, PackOptions, Secret, SecretStore,
    UnpackOptions,
};
use mpc_did_resolver::peer::{self, Purpose};
use mpc_did_resolver::{key, PublicKey, UniversalResolver};
use serde_json::json;
use x25519_dalek::StaticSecret;

/// A did:peer:2 identity (V Ed25519 `#key-1`, E X25519 `#key-2`) from a seed, with its
/// secrets, optionally with a DIDCommMessaging service through `mediator`'s key.
fn peer_identity(seed: u8, mediator: Option<&str>) -> (String, SecretStore) {
    let signing = SigningKey::from_bytes(&[seed; 32]);
    let x = StaticSecret::from(key::x25519_secret_from_ed25519_seed(&[seed; 32]));
    let services: Vec<_> = mediator
        .map(|m| {
            json!({"id": "#didcomm-1", "type": "DIDCommMessaging", "serviceEndpoint": {
                "uri": "https://mediator.example/didcomm", "accept": ["didcomm/v2"],
                "routingKeys": [m]}})
        })
        .into_iter()
        .collect();
    let did = peer::did_peer_2(
        &[
            (
                Purpose::Verification,
                PublicKey::Ed25519(signing.verifying_key().to_bytes()),
            ),
            (
                Purpose::Encryption,
                PublicKey::X25519(x25519_dalek::PublicKey::from(&x).to_bytes()),
            ),
        ],
        &services,
    )
    .unwrap();
    let mut s = SecretStore::new();
    s.insert(format!("{did}#key-1"), Secret::Ed25519(signing));
    s.insert(format!("{did}#key-2"), Secret::X25519(x));
    (did, s)
}

#[tokio::test]
async fn did_peer_sender_and_recipient_every_mode() {
    let resolver = UniversalResolver::new().unwrap();
    let (alice, alice_keys) = peer_identity(1, None);
    let (bob, bob_keys) = peer_identity(2, None);
    let msg = Message::new("1", "https://example.org/t/1.0/x", json!({"k": 1}))
        .from(alice.clone())
        .to(bob.clone());
    let opts = PackOptions {
        forward: false,
        ..PackOptions::default()
    };
    for (from, sign, protect) in [
        (None, None, false),
        (Some(alice.as_str()), None, false),
        (Some(alice.as_str()), Some(alice.as_str()), true),
        (None, Some(alice.as_str()), false),
    ] {
        let o = PackOptions {
            protect_sender: protect,
            ..opts.clone()
        };
        let packed = pack_encrypted(&msg, &bob, from, sign, &resolver, &alice_keys, &o)
            .await
            .unwrap();
        let (got, meta) = unpack(
            packed.message.as_bytes(),
            &resolver,
            &bob_keys,
            &UnpackOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(got, msg);
        assert_eq!(meta.authenticated, from.is_some() || sign.is_some());
        if from.is_some() {
            assert_eq!(meta.encrypted_from_kid, Some(format!("{alice}#key-2")));
        }
        if sign.is_some() {
            assert_eq!(meta.sign_from, Some(format!("{alice}#key-1")));
        }
    }
}

#[tokio::test]
async fn did_peer_service_routes_through_the_mediator() {
    // The mediator is a did:key; Bob's did:peer:2 service names its keyAgreement key as
    // routing key (what `mpc-did id create --method peer --mediator URL` writes).
    let resolver = UniversalResolver::new().unwrap();
    let mut mediator_keys = SecretStore::new();
    let mediator = mediator_keys.insert_did_key(&SigningKey::from_bytes(&[9; 32]));
    let routing_key = key::resolve(&mediator).unwrap().key_agreement[0].clone();
    let (alice, alice_keys) = peer_identity(1, None);
    let (bob, bob_keys) = peer_identity(2, Some(&routing_key));
    let msg = Message::new("1", "https://example.org/t/1.0/x", json!({}))
        .from(alice.clone())
        .to(bob.clone());
    let packed = pack_encrypted(
        &msg,
        &bob,
        Some(&alice),
        None,
        &resolver,
        &alice_keys,
        &PackOptions::default(),
    )
    .await
    .unwrap();
    let svc = packed.service.clone().unwrap();
    assert_eq!(svc.uri, "https://mediator.example/didcomm");
    assert_eq!(svc.id, format!("{bob}#didcomm-1"));
    // The mediator unpacks a forward for Bob's DID ...
    let (fwd, _) = unpack(
        packed.message.as_bytes(),
        &resolver,
        &mediator_keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    let fwd = ForwardMessage::from_message(&fwd).unwrap();
    assert_eq!(fwd.next, bob);
    // ... and Bob unpacks what it forwards.
    let (got, meta) = unpack(
        &fwd.forwarded_bytes(),
        &resolver,
        &bob_keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, msg);
    assert!(meta.authenticated);
}
