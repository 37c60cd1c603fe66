//! DIDComm Messaging v2.1 and RFC 7515 requirements other implementations rely on, each
//! test built from the sentence it quotes (spec text: `docs/spec-files-v2.1-snapshot/` of
//! `decentralized-identity/didcomm-messaging`; RFC 7515). spec/didcomm.md §3.
#![allow(clippy::unwrap_used)]

use ed25519_dalek::{Signer as _, SigningKey};
use mpc_did_didcomm::jose::{
    self, b64, unb64, ContentAlg, HeaderVariantsForTesting, RecipientKey, SenderKey,
};
use mpc_did_didcomm::{
    pack_encrypted, pack_signed, unpack, Error, Message, PackOptions, SecretStore, UnpackOptions,
};
use mpc_did_resolver::{key, PublicKey, StaticResolver};
use serde_json::{json, Value};
use x25519_dalek::StaticSecret;

struct Fixture {
    alice: String,
    alice_signing: SigningKey,
    alice_keys: SecretStore,
    bob: String,
    bob_keys: SecretStore,
    resolver: StaticResolver,
}

fn fixture() -> Fixture {
    let alice_signing = SigningKey::from_bytes(&[1; 32]);
    let mut alice_keys = SecretStore::new();
    let alice = alice_keys.insert_did_key(&alice_signing);
    let mut bob_keys = SecretStore::new();
    let bob = bob_keys.insert_did_key(&SigningKey::from_bytes(&[2; 32]));
    let resolver = StaticResolver::new();
    resolver.insert(key::resolve(&alice).unwrap());
    resolver.insert(key::resolve(&bob).unwrap());
    Fixture {
        alice,
        alice_signing,
        alice_keys,
        bob,
        bob_keys,
        resolver,
    }
}

fn msg(f: &Fixture) -> Message {
    Message::new("1", "https://example.org/t/1.0/x", json!({"a": 1}))
        .from(f.alice.clone())
        .to(f.bob.clone())
}

async fn bob_unpacks(f: &Fixture, bytes: &str) -> Result<Message, Error> {
    unpack(
        bytes.as_bytes(),
        &f.resolver,
        &f.bob_keys,
        &UnpackOptions::default(),
    )
    .await
    .map(|(m, _)| m)
}

/// Alice's X25519 keyAgreement kid and secret, Bob's kid and public key.
fn keys(f: &Fixture) -> (String, StaticSecret, String, [u8; 32]) {
    let a = key::resolve(&f.alice).unwrap();
    let b = key::resolve(&f.bob).unwrap();
    let a_kid = a.key_agreement[0].clone();
    let a_secret = StaticSecret::from(key::x25519_secret_from_ed25519_seed(&[1; 32]));
    let b_vm = b.key_agreement_methods()[0].clone();
    let PublicKey::X25519(b_pub) = b_vm.key else {
        panic!("not X25519")
    };
    (a_kid, a_secret, b_vm.id, b_pub)
}

fn authcrypt_with(f: &Fixture, plain: &Message, variants: HeaderVariantsForTesting<'_>) -> String {
    let (a_kid, a_secret, b_kid, b_pub) = keys(f);
    jose::encrypt_with_header_variants_for_testing(
        plain.to_json().unwrap().as_bytes(),
        &[RecipientKey {
            kid: &b_kid,
            public: b_pub,
        }],
        Some(&SenderKey {
            kid: &a_kid,
            secret: &a_secret,
        }),
        ContentAlg::A256CbcHs512,
        variants,
    )
    .unwrap()
}

/// A JWS over `payload` signed by Alice with this protected header and unprotected
/// header, General JSON serialisation.
fn jws_with(f: &Fixture, payload: &[u8], protected: &Value, header: Option<&Value>) -> Value {
    let p = b64(protected.to_string().as_bytes());
    let pl = b64(payload);
    let sig = f.alice_signing.sign(format!("{p}.{pl}").as_bytes());
    let mut s = json!({"protected": p, "signature": b64(&sig.to_bytes())});
    if let Some(h) = header {
        s["header"] = h.clone();
    }
    json!({"payload": pl, "signatures": [s]})
}

fn alice_auth_kid(f: &Fixture) -> String {
    key::resolve(&f.alice).unwrap().authentication[0].clone()
}

#[tokio::test]
async fn authcrypt_without_skid_uses_apu() {
    // encryption.md: "authcrypt implementations MUST be able to resolve the sender kid from
    // the `apu` header if `skid` is not set."
    let f = fixture();
    let packed = authcrypt_with(
        &f,
        &msg(&f),
        HeaderVariantsForTesting {
            omit_skid: true,
            typ: None,
        },
    );
    let v: Value = serde_json::from_str(&packed).unwrap();
    let h: Value =
        serde_json::from_slice(&unb64(v["protected"].as_str().unwrap(), "p").unwrap()).unwrap();
    assert!(h.get("skid").is_none(), "the test must really omit skid");
    let (got, meta) = unpack(
        packed.as_bytes(),
        &f.resolver,
        &f.bob_keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, msg(&f));
    assert!(meta.authenticated);
    assert_eq!(meta.encrypted_from_kid, Some(keys(&f).0));
}

#[tokio::test]
async fn media_types_without_application_prefix() {
    // message_structure.md: "IANA types for DIDComm messages MAY omit the `application/`
    // prefix; the recipient MUST treat media types not containing `/` as having the
    // `application/` prefix present."
    let f = fixture();
    // Encrypted: typ didcomm-encrypted+json.
    let packed = authcrypt_with(
        &f,
        &msg(&f),
        HeaderVariantsForTesting {
            omit_skid: false,
            typ: Some("didcomm-encrypted+json"),
        },
    );
    assert_eq!(bob_unpacks(&f, &packed).await.unwrap(), msg(&f));
    // Signed: typ didcomm-signed+json.
    let jws = jws_with(
        &f,
        msg(&f).to_json().unwrap().as_bytes(),
        &json!({"typ": "didcomm-signed+json", "alg": "EdDSA"}),
        Some(&json!({"kid": alice_auth_kid(&f)})),
    );
    assert_eq!(bob_unpacks(&f, &jws.to_string()).await.unwrap(), msg(&f));
    // Plaintext: typ didcomm-plain+json.
    let mut plain = msg(&f);
    plain.typ = Some("didcomm-plain+json".into());
    assert!(bob_unpacks(&f, &plain.to_json().unwrap()).await.is_ok());
    // A type that is not a DIDComm one stays refused, with or without the prefix.
    let packed = authcrypt_with(
        &f,
        &msg(&f),
        HeaderVariantsForTesting {
            omit_skid: false,
            typ: Some("jose+json"),
        },
    );
    assert!(matches!(
        bob_unpacks(&f, &packed).await,
        Err(Error::Malformed(_))
    ));
}

#[tokio::test]
async fn signer_kid_is_in_the_protected_header() {
    // RFC 7515 §4.1.4: "The "kid" (key ID) Header Parameter is a hint indicating which key
    // was used to secure the JWS." Carried in the protected header the signature covers it;
    // we also keep it in the unprotected header, where the DIDComm spec's examples put it.
    let f = fixture();
    let (jws, kid) = pack_signed(&msg(&f), &f.alice, &f.resolver, &f.alice_keys)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&jws).unwrap();
    let sig = &v["signatures"][0];
    let h: Value =
        serde_json::from_slice(&unb64(sig["protected"].as_str().unwrap(), "p").unwrap()).unwrap();
    assert_eq!(h["kid"], json!(kid));
    assert_eq!(sig["header"]["kid"], json!(kid));
    assert_eq!(bob_unpacks(&f, &jws).await.unwrap(), msg(&f));
    // Protected kid only (what an RFC 7515 §7.2.1 "disjoint" implementation sends).
    let only = jws_with(
        &f,
        msg(&f).to_json().unwrap().as_bytes(),
        &json!({"typ": "application/didcomm-signed+json", "alg": "EdDSA", "kid": kid}),
        None,
    );
    assert_eq!(bob_unpacks(&f, &only.to_string()).await.unwrap(), msg(&f));
    // Two different kids: refused, so a forger cannot make us look up another key than the
    // one the signature commits to.
    let two = jws_with(
        &f,
        msg(&f).to_json().unwrap().as_bytes(),
        &json!({"alg": "EdDSA", "kid": kid}),
        Some(&json!({"kid": format!("{}#other", f.alice)})),
    );
    assert!(matches!(
        bob_unpacks(&f, &two.to_string()).await,
        Err(Error::HeaderMismatch(_))
    ));
}

#[tokio::test]
async fn flattened_jws_accepted_compact_refused() {
    // RFC 7515 §7.2.2: "The flattened JWS JSON Serialization syntax is based upon the
    // general syntax but flattens it, optimizing it for the single digital signature/MAC
    // case." It is a JSON serialisation, which DIDComm signed messages use.
    let f = fixture();
    let (jws, _) = pack_signed(&msg(&f), &f.alice, &f.resolver, &f.alice_keys)
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&jws).unwrap();
    let s = &v["signatures"][0];
    let flat = json!({
        "payload": v["payload"],
        "protected": s["protected"],
        "header": s["header"],
        "signature": s["signature"],
    });
    let (got, meta) = unpack(
        flat.to_string().as_bytes(),
        &f.resolver,
        &f.bob_keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(got, msg(&f));
    assert!(meta.non_repudiation);
    // A tampered flattened JWS fails like a general one.
    let mut bad = flat.clone();
    bad["payload"] = json!(b64(b"{}"));
    assert!(matches!(
        bob_unpacks(&f, &bad.to_string()).await,
        Err(Error::Crypto)
    ));
    // RFC 7515 §7.1 compact serialisation (BASE64URL(header).BASE64URL(payload).BASE64URL
    // (signature)): not a DIDComm form, refused with its own error, bare or as a JSON string.
    let compact = format!(
        "{}.{}.{}",
        s["protected"].as_str().unwrap(),
        v["payload"].as_str().unwrap(),
        s["signature"].as_str().unwrap()
    );
    assert!(matches!(
        bob_unpacks(&f, &compact).await,
        Err(Error::CompactSerialization("JWS"))
    ));
    assert!(matches!(
        bob_unpacks(&f, &json!(compact).to_string()).await,
        Err(Error::CompactSerialization("JWS"))
    ));
    let text = Error::CompactSerialization("JWS").to_string();
    assert!(text.contains("JSON serialisation"), "{text}");
}

#[tokio::test]
async fn authenticated_message_without_from_is_refused_in_words() {
    // message_structure.md: `from` is "OPTIONAL when the message is to be encrypted via
    // anoncrypt; REQUIRED when the message is encrypted via authcrypt", and "The `from`
    // attribute in the plaintext message MUST match the signer's `kid` in a signed
    // message." Our decision (spec/didcomm.md §3): authcrypt or signed without `from` is
    // refused; anoncrypt and plaintext without `from` are accepted.
    let f = fixture();
    let mut no_from = msg(&f);
    no_from.from = None;
    let packed = authcrypt_with(&f, &no_from, HeaderVariantsForTesting::default());
    let err = bob_unpacks(&f, &packed).await.unwrap_err();
    assert!(
        matches!(&err, Error::MissingFrom { how: "authcrypted", sender } if *sender == f.alice),
        "{err:?}"
    );
    let signed = jws_with(
        &f,
        no_from.to_json().unwrap().as_bytes(),
        &json!({"typ": "application/didcomm-signed+json", "alg": "EdDSA", "kid": alice_auth_kid(&f)}),
        None,
    );
    let err2 = bob_unpacks(&f, &signed.to_string()).await.unwrap_err();
    assert!(
        matches!(&err2, Error::MissingFrom { how: "signed", .. }),
        "{err2:?}"
    );
    // Worded for people: no Rust debug forms.
    for e in [err, err2] {
        let text = e.to_string();
        assert!(!text.contains("None") && !text.contains("Some("), "{text}");
        assert!(text.contains("from"), "{text}");
    }
    // Anoncrypt without from: fine.
    let packed = pack_encrypted(
        &no_from,
        &f.bob,
        None,
        None,
        &f.resolver,
        &f.alice_keys,
        &PackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(bob_unpacks(&f, &packed.message).await.unwrap(), no_from);
    // A wrong from names both DIDs plainly.
    let mut wrong = msg(&f);
    wrong.from = Some(f.bob.clone());
    let packed = authcrypt_with(&f, &wrong, HeaderVariantsForTesting::default());
    let text = bob_unpacks(&f, &packed).await.unwrap_err().to_string();
    assert!(text.contains(&f.alice) && text.contains(&f.bob), "{text}");
    assert!(!text.contains("Some("), "{text}");
}

#[tokio::test]
async fn body_is_optional_and_attachments_keep_media_type() {
    // message_structure.md: "`body` - OPTIONAL. ... If present, it MUST be a JSON object",
    // and for attachments "`media_type` - OPTIONAL. Describes the media type of the
    // attached content." (v2.1 renamed v2.0's `mime_type`.)
    let f = fixture();
    let text = format!(
        r#"{{"id":"2","type":"https://example.org/t/1.0/x","from":"{}","attachments":[{{"id":"a","media_type":"application/json","data":{{"json":{{"k":1}}}}}}]}}"#,
        f.alice
    );
    let m = bob_unpacks(&f, &text).await.unwrap();
    assert_eq!(m.body, json!({}));
    let a = &m.attachments.as_ref().unwrap()[0];
    assert_eq!(a.media_type.as_deref(), Some("application/json"));
    // And it packs and unpacks through authcrypt unchanged.
    let packed = pack_encrypted(
        &m.clone().to(f.bob.clone()),
        &f.bob,
        Some(&f.alice),
        None,
        &f.resolver,
        &f.alice_keys,
        &PackOptions::default(),
    )
    .await
    .unwrap();
    let back = bob_unpacks(&f, &packed.message).await.unwrap();
    assert_eq!(back.attachments, m.attachments);
}

#[test]
fn oob_invitation_attachments_use_media_type() {
    // out_of_band.md, the v2.1 invitation example (its attachment's "json" is a string
    // placeholder there; any JSON value is carried): attachments name their type with
    // `media_type`.
    let text = r#"{"type":"https://didcomm.org/out-of-band/2.0/invitation","id":"69212a3a-d068-4f9d-a2dd-4741bca89af3","from":"did:example:alice","body":{"goal_code":"","goal":""},"attachments":[{"id":"request-0","media_type":"application/json","data":{"json":"<json of protocol message>"}}]}"#;
    let inv = mpc_did_didcomm::Invitation::decode(text).unwrap();
    assert_eq!(inv.attachments.len(), 1);
    assert_eq!(
        inv.attachments[0].media_type.as_deref(),
        Some("application/json")
    );
    let back: Value = serde_json::from_str(&inv.to_json().unwrap()).unwrap();
    assert_eq!(back["attachments"][0]["media_type"], "application/json");
    assert_eq!(back["attachments"][0]["id"], "request-0");
}
