//! Interop with SICPA's Rust DIDComm crate (`didcomm` 0.4.1, by the spec's authors), an
//! independent implementation used here as a test oracle (dev-dependency only): our
//! authcrypt / anoncrypt / signed messages unpack there, theirs unpack here.
//! spec/didcomm.md §"Interoperability".
#![allow(clippy::unwrap_used)]

use didcomm::algorithms::AnonCryptAlg;
use didcomm::did::resolvers::ExampleDIDResolver;
use didcomm::did::DIDDoc;
use didcomm::secrets::resolvers::ExampleSecretsResolver;
use didcomm::secrets::Secret as TheirSecret;
use ed25519_dalek::SigningKey;
use mpc_did_didcomm::jose::b64;
use mpc_did_didcomm::{
    pack_encrypted, pack_signed, unpack, ContentAlg, Message, PackOptions, SecretStore,
    UnpackOptions,
};
use mpc_did_resolver::{key, StaticResolver};
use serde_json::{json, Value};

struct Party {
    did: String,
    keys: SecretStore,
    /// Their form of our DID document and secrets.
    doc: DIDDoc,
    secrets: Vec<TheirSecret>,
}

/// A did:key identity, and the same document and keys in SICPA's types: every method as
/// `JsonWebKey2020` with `publicKeyJwk` (their crate reads JWK methods; the keys are the
/// ones our resolver derived).
fn party(seed: u8) -> Party {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let mut keys = SecretStore::new();
    let did = keys.insert_did_key(&sk);
    let ours = key::resolve(&did).unwrap();
    let vms: Vec<Value> = ours
        .verification_method
        .iter()
        .map(|vm| {
            json!({"id": vm.id, "type": "JsonWebKey2020", "controller": vm.controller,
                   "publicKeyJwk": vm.key.to_jwk()})
        })
        .collect();
    let doc: DIDDoc = serde_json::from_value(json!({
        "id": did,
        "keyAgreement": ours.key_agreement,
        "authentication": ours.authentication,
        "verificationMethod": vms,
        "service": [],
    }))
    .unwrap();
    let xs = key::x25519_secret_from_ed25519_seed(&[seed; 32]);
    let xp = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(xs)).to_bytes();
    let secrets = vec![
        serde_json::from_value(
            json!({"id": ours.authentication[0], "type": "JsonWebKey2020",
            "privateKeyJwk": {"kty": "OKP", "crv": "Ed25519",
                              "x": b64(&sk.verifying_key().to_bytes()), "d": b64(&[seed; 32])}}),
        )
        .unwrap(),
        serde_json::from_value(
            json!({"id": ours.key_agreement[0], "type": "JsonWebKey2020",
            "privateKeyJwk": {"kty": "OKP", "crv": "X25519", "x": b64(&xp), "d": b64(&xs)}}),
        )
        .unwrap(),
    ];
    Party {
        did,
        keys,
        doc,
        secrets,
    }
}

fn resolver(ps: &[&Party]) -> StaticResolver {
    let r = StaticResolver::new();
    for p in ps {
        r.insert(key::resolve(&p.did).unwrap());
    }
    r
}

fn message(a: &Party, b: &Party, anonymous: bool) -> Message {
    let mut m = Message::new(
        "interop-2",
        "https://didcomm.org/trust-ping/2.0/ping",
        json!({"response_requested": true}),
    )
    .to(b.did.clone())
    .created_time(1_700_000_000);
    if !anonymous {
        m.from = Some(a.did.clone());
    }
    m
}

/// Their view of a message, read back into ours for comparison.
fn back(m: &didcomm::Message) -> Message {
    Message::from_json(serde_json::to_string(m).unwrap().as_bytes()).unwrap()
}

#[tokio::test]
async fn ours_unpack_in_sicpa_rust() {
    let (a, b) = (party(21), party(22));
    let r = resolver(&[&a, &b]);
    let their_resolver = ExampleDIDResolver::new(vec![a.doc.clone(), b.doc.clone()]);
    let bob_secrets = ExampleSecretsResolver::new(b.secrets.clone());
    let no_fwd = PackOptions {
        forward: false,
        ..PackOptions::default()
    };
    let m = message(&a, &b, false);
    let anon = message(&a, &b, true);
    let mut cases: Vec<(&str, Message, String, bool, bool)> = Vec::new();
    let p = pack_encrypted(&m, &b.did, Some(&a.did), None, &r, &a.keys, &no_fwd)
        .await
        .unwrap();
    cases.push(("authcrypt", m.clone(), p.message, true, false));
    let prot = PackOptions {
        protect_sender: true,
        ..no_fwd.clone()
    };
    let p = pack_encrypted(&m, &b.did, Some(&a.did), Some(&a.did), &r, &a.keys, &prot)
        .await
        .unwrap();
    cases.push((
        "signed+authcrypt+anoncrypt",
        m.clone(),
        p.message,
        true,
        true,
    ));
    let (jws, _) = pack_signed(&m, &a.did, &r, &a.keys).await.unwrap();
    cases.push(("signed", m.clone(), jws, true, true));
    for enc in [
        ContentAlg::A256CbcHs512,
        ContentAlg::Xc20p,
        ContentAlg::A256Gcm,
    ] {
        let opts = PackOptions {
            anon_enc: enc,
            ..no_fwd.clone()
        };
        let p = pack_encrypted(&anon, &b.did, None, None, &r, &a.keys, &opts)
            .await
            .unwrap();
        cases.push(("anoncrypt", anon.clone(), p.message, false, false));
    }
    for (mode, want, packed, authenticated, signed) in cases {
        let (got, meta) = didcomm::Message::unpack(
            &packed,
            &their_resolver,
            &bob_secrets,
            &didcomm::UnpackOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(back(&got), want, "{mode}");
        assert_eq!(meta.authenticated, authenticated, "{mode}");
        assert_eq!(meta.non_repudiation, signed, "{mode}");
    }
}

#[tokio::test]
async fn sicpa_rust_messages_unpack_here() {
    let (a, b) = (party(21), party(22));
    let r = resolver(&[&a, &b]);
    let their_resolver = ExampleDIDResolver::new(vec![a.doc.clone(), b.doc.clone()]);
    let alice_secrets = ExampleSecretsResolver::new(a.secrets.clone());
    let theirs =
        |m: &Message| -> didcomm::Message { serde_json::from_str(&m.to_json().unwrap()).unwrap() };
    let m = message(&a, &b, false);
    let anon = message(&a, &b, true);
    let mut cases: Vec<(String, Message, String)> = Vec::new();
    for (from, sign_by, protect) in [
        (true, false, false),
        (true, true, false),
        (true, true, true),
        (false, false, false),
    ] {
        let msg = if from { &m } else { &anon };
        let opts = didcomm::PackEncryptedOptions {
            forward: false,
            protect_sender: protect,
            ..didcomm::PackEncryptedOptions::default()
        };
        let (packed, _) = theirs(msg)
            .pack_encrypted(
                &b.did,
                from.then_some(a.did.as_str()),
                sign_by.then_some(a.did.as_str()),
                &their_resolver,
                &alice_secrets,
                &opts,
            )
            .await
            .unwrap();
        cases.push((
            format!("from={from} sign={sign_by} protect={protect}"),
            msg.clone(),
            packed,
        ));
    }
    for (name, alg) in [
        ("XC20P", AnonCryptAlg::Xc20pEcdhEsA256kw),
        ("A256GCM", AnonCryptAlg::A256gcmEcdhEsA256kw),
    ] {
        let opts = didcomm::PackEncryptedOptions {
            forward: false,
            enc_alg_anon: alg,
            ..didcomm::PackEncryptedOptions::default()
        };
        let (packed, _) = theirs(&anon)
            .pack_encrypted(&b.did, None, None, &their_resolver, &alice_secrets, &opts)
            .await
            .unwrap();
        cases.push((format!("anoncrypt {name}"), anon.clone(), packed));
    }
    let (packed, _) = theirs(&m)
        .pack_signed(&a.did, &their_resolver, &alice_secrets)
        .await
        .unwrap();
    cases.push(("signed".into(), m.clone(), packed));
    for (name, want, packed) in cases {
        let (got, _) = unpack(packed.as_bytes(), &r, &b.keys, &UnpackOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}\n{packed}"));
        assert_eq!(got, want, "{name}");
    }
}
