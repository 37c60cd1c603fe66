//! Bad input: every case is a typed error, never a panic. spec/didcomm.md §"Bad input".
#![allow(clippy::unwrap_used)]

use ed25519_dalek::SigningKey;
use mpc_did_didcomm::jose::{b64, unb64};
use mpc_did_didcomm::protocols::oob::Invitation;
use mpc_did_didcomm::{
    pack_encrypted, pack_signed, unpack, wrap_in_forward, ContentAlg, Error, Message, PackOptions,
    SecretStore, UnpackOptions, DEFAULT_MAX_MESSAGE_SIZE, MAX_ROUTING_KEYS,
};
use mpc_did_resolver::{key, DidCommService, StaticResolver};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;

struct Fixture {
    alice: String,
    alice_keys: SecretStore,
    bob: String,
    bob_keys: SecretStore,
    carol_keys: SecretStore,
    resolver: StaticResolver,
}

fn fixture() -> Fixture {
    let mut alice_keys = SecretStore::new();
    let alice = alice_keys.insert_did_key(&SigningKey::from_bytes(&[1; 32]));
    let mut bob_keys = SecretStore::new();
    let bob = bob_keys.insert_did_key(&SigningKey::from_bytes(&[2; 32]));
    let mut carol_keys = SecretStore::new();
    let carol = carol_keys.insert_did_key(&SigningKey::from_bytes(&[3; 32]));
    let resolver = StaticResolver::new();
    for d in [&alice, &bob, &carol] {
        resolver.insert(key::resolve(d).unwrap());
    }
    Fixture {
        alice,
        alice_keys,
        bob,
        bob_keys,
        carol_keys,
        resolver,
    }
}

fn msg(f: &Fixture) -> Message {
    Message::new("1", "https://example.org/t/1.0/x", json!({"a": 1}))
        .from(f.alice.clone())
        .to(f.bob.clone())
}

/// `msg` authcrypt from Alice to Bob (forwarded when Bob's service names routing keys).
async fn pack_authcrypt(f: &Fixture) -> mpc_did_didcomm::PackedMessage {
    pack_encrypted(
        &msg(f),
        &f.bob,
        Some(&f.alice),
        None,
        &f.resolver,
        &f.alice_keys,
        &PackOptions::default(),
    )
    .await
    .unwrap()
}

async fn authcrypt(f: &Fixture) -> Value {
    serde_json::from_str(&pack_authcrypt(f).await.message).unwrap()
}

async fn bob_unpacks(f: &Fixture, v: &Value) -> Result<Message, Error> {
    unpack(
        v.to_string().as_bytes(),
        &f.resolver,
        &f.bob_keys,
        &UnpackOptions::default(),
    )
    .await
    .map(|(m, _)| m)
}

fn edit_protected(v: &mut Value, edit: impl FnOnce(&mut Value)) {
    let mut h: Value =
        serde_json::from_slice(&unb64(v["protected"].as_str().unwrap(), "p").unwrap()).unwrap();
    edit(&mut h);
    v["protected"] = Value::String(b64(h.to_string().as_bytes()));
}

#[tokio::test]
async fn wrong_recipient_has_no_secret() {
    let f = fixture();
    let v = authcrypt(&f).await;
    let r = unpack(
        v.to_string().as_bytes(),
        &f.resolver,
        &f.carol_keys,
        &UnpackOptions::default(),
    )
    .await;
    assert!(matches!(r, Err(Error::NoRecipientSecret)), "{r:?}");
}

#[tokio::test]
async fn tampered_fields_fail_opaquely() {
    let f = fixture();
    for field in ["ciphertext", "tag", "iv"] {
        let mut v = authcrypt(&f).await;
        let mut raw = unb64(v[field].as_str().unwrap(), "x").unwrap();
        raw[0] ^= 1;
        v[field] = Value::String(b64(&raw));
        let r = bob_unpacks(&f, &v).await;
        assert!(matches!(r, Err(Error::Crypto)), "{field}: {r:?}");
    }
    let mut v = authcrypt(&f).await;
    let mut raw = unb64(v["recipients"][0]["encrypted_key"].as_str().unwrap(), "x").unwrap();
    raw[5] ^= 1;
    v["recipients"][0]["encrypted_key"] = Value::String(b64(&raw));
    assert!(matches!(bob_unpacks(&f, &v).await, Err(Error::Crypto)));
}

#[tokio::test]
async fn truncated_and_oversized() {
    let f = fixture();
    let s = authcrypt(&f).await.to_string();
    for cut in [0, 1, s.len() / 2, s.len() - 1] {
        let r = unpack(
            &s.as_bytes()[..cut],
            &f.resolver,
            &f.bob_keys,
            &UnpackOptions::default(),
        )
        .await;
        assert!(matches!(r, Err(Error::Malformed(_))), "cut {cut}: {r:?}");
    }
    let opts = UnpackOptions { max_size: 100 };
    let r = unpack(s.as_bytes(), &f.resolver, &f.bob_keys, &opts).await;
    assert!(matches!(r, Err(Error::TooLarge { .. })), "{r:?}");
}

#[tokio::test]
async fn unknown_alg_and_enc() {
    let f = fixture();
    let mut v = authcrypt(&f).await;
    edit_protected(&mut v, |h| h["alg"] = json!("RSA-OAEP"));
    assert!(matches!(
        bob_unpacks(&f, &v).await,
        Err(Error::Unsupported(_))
    ));
    let mut v = authcrypt(&f).await;
    edit_protected(&mut v, |h| h["enc"] = json!("A128GCM"));
    assert!(matches!(
        bob_unpacks(&f, &v).await,
        Err(Error::Unsupported(_))
    ));
    let mut v = authcrypt(&f).await;
    edit_protected(&mut v, |h| h["epk"]["crv"] = json!("P-256"));
    assert!(matches!(
        bob_unpacks(&f, &v).await,
        Err(Error::Unsupported(_))
    ));
}

#[tokio::test]
async fn skid_apu_mismatch_and_swapped_sender() {
    let f = fixture();
    // apu no longer names the skid.
    let mut v = authcrypt(&f).await;
    edit_protected(&mut v, |h| h["apu"] = json!(b64(b"did:example:mallory#k")));
    assert!(matches!(
        bob_unpacks(&f, &v).await,
        Err(Error::HeaderMismatch(_))
    ));
    // skid and apu consistently rewritten to carol's key: the header is authenticated
    // (it is the AAD) and carol's key gives another KEK, so it fails opaquely.
    let carol_kid = key::resolve(&did_of_store(&f.carol_keys, &f))
        .unwrap()
        .key_agreement[0]
        .clone();
    let mut v = authcrypt(&f).await;
    edit_protected(&mut v, |h| {
        h["skid"] = json!(carol_kid);
        h["apu"] = json!(b64(carol_kid.as_bytes()));
    });
    assert!(matches!(bob_unpacks(&f, &v).await, Err(Error::Crypto)));
    // apv that does not match the recipients.
    let mut v = authcrypt(&f).await;
    edit_protected(&mut v, |h| h["apv"] = json!(b64(&[0; 32])));
    assert!(matches!(
        bob_unpacks(&f, &v).await,
        Err(Error::HeaderMismatch(_))
    ));
}

fn did_of_store(_s: &SecretStore, _f: &Fixture) -> String {
    key::did_from_ed25519(&SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes())
}

#[tokio::test]
async fn duplicate_recipients() {
    let f = fixture();
    let mut v = authcrypt(&f).await;
    let first = v["recipients"][0].clone();
    v["recipients"].as_array_mut().unwrap().push(first);
    assert!(matches!(
        bob_unpacks(&f, &v).await,
        Err(Error::DuplicateRecipient(_))
    ));
}

#[tokio::test]
async fn non_json_and_wrong_shapes() {
    let f = fixture();
    for input in [
        &b"\xff\xfe"[..],
        b"not json",
        b"[]",
        b"42",
        b"{}",
        b"{\"ciphertext\": 1}",
        b"{\"signatures\": []}",
        b"{\"id\": \"1\", \"type\": \"t\", \"body\": []}",
    ] {
        let r = unpack(input, &f.resolver, &f.bob_keys, &UnpackOptions::default()).await;
        assert!(matches!(r, Err(Error::Malformed(_))), "{input:?}: {r:?}");
    }
}

#[tokio::test]
async fn signer_is_not_from() {
    let f = fixture();
    // Alice signs a message claiming to be from Carol.
    let mut m = msg(&f);
    let (jws, _) = pack_signed(&m, &f.alice, &f.resolver, &f.alice_keys)
        .await
        .unwrap();
    let mut v: Value = serde_json::from_str(&jws).unwrap();
    m.from = Some(did_of_store(&f.carol_keys, &f));
    let payload = m.to_json().unwrap();
    // Re-sign the altered payload with Alice's key so the signature itself is valid.
    let alice_sk = SigningKey::from_bytes(&[1; 32]);
    let kid = v["signatures"][0]["header"]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    v = serde_json::from_str(&mpc_did_didcomm::jose::sign(
        payload.as_bytes(),
        &kid,
        &alice_sk,
    ))
    .unwrap();
    assert!(matches!(
        bob_unpacks(&f, &v).await,
        Err(Error::SenderMismatch(_))
    ));
    // And the packer refuses to sign for another from.
    assert!(matches!(
        pack_signed(&m, &f.alice, &f.resolver, &f.alice_keys).await,
        Err(Error::SenderMismatch(_))
    ));
}

#[tokio::test]
async fn authcrypt_sender_is_not_from() {
    let f = fixture();
    let m = msg(&f);
    assert!(matches!(
        pack_encrypted(
            &m,
            &f.bob,
            Some(&did_of_store(&f.carol_keys, &f)),
            None,
            &f.resolver,
            &f.carol_keys,
            &PackOptions::default()
        )
        .await,
        Err(Error::SenderMismatch(_))
    ));
}

#[tokio::test]
async fn anoncrypt_inside_authcrypt_is_rejected() {
    let f = fixture();
    // authcrypt(anoncrypt(plain)) is not a layering the spec allows.
    let mut m = msg(&f);
    m.from = None;
    let inner = pack_encrypted(
        &m,
        &f.bob,
        None,
        None,
        &f.resolver,
        &f.alice_keys,
        &PackOptions::default(),
    )
    .await
    .unwrap();
    let outer = mpc_did_didcomm::jose::encrypt(
        inner.message.as_bytes(),
        &[mpc_did_didcomm::jose::RecipientKey {
            kid: &inner.to_kids[0],
            public: x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(
                key::x25519_secret_from_ed25519_seed(&[2; 32]),
            ))
            .to_bytes(),
        }],
        Some(&mpc_did_didcomm::jose::SenderKey {
            kid: &key::resolve(&f.alice).unwrap().key_agreement[0],
            secret: &x25519_dalek::StaticSecret::from(key::x25519_secret_from_ed25519_seed(
                &[1; 32],
            )),
        }),
        mpc_did_didcomm::ContentAlg::A256CbcHs512,
    )
    .unwrap();
    let r = unpack(
        outer.as_bytes(),
        &f.resolver,
        &f.bob_keys,
        &UnpackOptions::default(),
    )
    .await;
    assert!(matches!(r, Err(Error::TooDeep)), "{r:?}");
}

/// Bob's did:key document with one DIDComm service listing `n` copies of Carol's
/// X25519 key as routing keys (a valid key: each copy is one more forward layer).
fn with_routing_keys(f: &Fixture, n: usize) -> Vec<String> {
    let carol = key::resolve(&did_of_store(&f.carol_keys, f)).unwrap();
    let carol_kid = carol.key_agreement[0].clone();
    f.resolver.insert(carol);
    let mut bob = key::resolve(&f.bob).unwrap();
    let keys = vec![carol_kid; n];
    bob.service.push(
        DidCommService {
            id: format!("{}#didcomm-1", f.bob),
            uri: "https://mediator.example".into(),
            accept: vec!["didcomm/v2".into()],
            routing_keys: keys.clone(),
        }
        .to_service(),
    );
    f.resolver.insert(bob);
    keys
}

/// Audit H1: every routing key is one anoncrypt forward layer around the previous JWE
/// (about ×4/3 each), so 64 keys meant about 10¹¹ bytes. Packing to a DID whose service
/// lists 64 is now quick: that service is not usable (`MAX_ROUTING_KEYS`), nothing is
/// wrapped.
#[tokio::test]
async fn pack_to_a_service_with_64_routing_keys_is_quick() {
    let f = fixture();
    with_routing_keys(&f, 64);
    let started = std::time::Instant::now();
    let p = pack_authcrypt(&f).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(p.service.is_none(), "{:?}", p.service);
    assert!(p.message.len() < 8 * 1024, "{} bytes", p.message.len());
    // Up to the cap, the service is used and the message forwarded.
    with_routing_keys(&f, MAX_ROUTING_KEYS);
    let p = pack_authcrypt(&f).await;
    assert_eq!(p.service.unwrap().routing_keys.len(), MAX_ROUTING_KEYS);
}

/// Audit H1, the defence in the packer itself: more than `MAX_ROUTING_KEYS` keys given to
/// `wrap_in_forward` is a typed error before any work.
#[tokio::test]
async fn wrap_in_forward_refuses_64_routing_keys_quickly() {
    let f = fixture();
    let keys = with_routing_keys(&f, 64);
    let inner = authcrypt(&f).await.to_string();
    let started = std::time::Instant::now();
    let r = wrap_in_forward(&inner, &f.bob, &keys, &f.resolver, ContentAlg::A256CbcHs512).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    match r {
        Err(Error::TooManyRoutingKeys { count: 64, limit }) => {
            assert_eq!(limit, MAX_ROUTING_KEYS);
        }
        other => panic!("{:?}", other.map(|m| m.len())),
    }
    let four = wrap_in_forward(
        &inner,
        &f.bob,
        &keys[..MAX_ROUTING_KEYS],
        &f.resolver,
        ContentAlg::A256CbcHs512,
    )
    .await
    .unwrap();
    // Four layers of ×4/3 plus about 1 kB of headers each.
    assert!(four.len() < 32 * 1024, "{} bytes", four.len());
}

/// Audit H1: no forward layer wraps more than `DEFAULT_MAX_MESSAGE_SIZE` (the next hop
/// would refuse it): about 900 kB wrapped once is 1.2 MB, too large to wrap again.
#[tokio::test]
async fn wrap_in_forward_stops_past_the_message_size_limit() {
    let f = fixture();
    let keys = with_routing_keys(&f, 2);
    let big = Message::new(
        "1",
        "https://example.org/t/1.0/x",
        json!({"pad": "x".repeat(650_000)}),
    )
    .from(f.alice.clone())
    .to(f.bob.clone());
    let opts = PackOptions {
        forward: false,
        ..PackOptions::default()
    };
    let inner = pack_encrypted(
        &big,
        &f.bob,
        Some(&f.alice),
        None,
        &f.resolver,
        &f.alice_keys,
        &opts,
    )
    .await
    .unwrap()
    .message;
    assert!(inner.len() < DEFAULT_MAX_MESSAGE_SIZE, "{}", inner.len());
    let once = wrap_in_forward(
        &inner,
        &f.bob,
        &keys[..1],
        &f.resolver,
        ContentAlg::A256CbcHs512,
    )
    .await
    .unwrap();
    assert!(once.len() > DEFAULT_MAX_MESSAGE_SIZE, "{}", once.len());
    match wrap_in_forward(&inner, &f.bob, &keys, &f.resolver, ContentAlg::A256CbcHs512).await {
        Err(Error::TooLarge { size, limit }) => {
            assert_eq!(limit, DEFAULT_MAX_MESSAGE_SIZE);
            assert!(size > limit);
        }
        other => panic!("{:?}", other.map(|m| m.len())),
    }
}

#[test]
fn invitation_bad_inputs() {
    for input in [
        "",
        "https://x.example/?a=b",
        "https://x.example/?_oob=!!!",
        "https://x.example/?_oobid=abc",
        "https://x.example/?_oob=bm90IGpzb24",
        "{\"id\":\"1\",\"type\":\"https://didcomm.org/out-of-band/2.0/invitation\",\"body\":{}}",
        "{\"id\":\"1\",\"type\":\"https://didcomm.org/trust-ping/2.0/ping\",\"from\":\"did:x:y\",\"body\":{}}",
    ] {
        assert!(Invitation::decode(input).is_err(), "{input}");
    }
    let big = format!("https://x.example/?_oob={}", "A".repeat(70_000));
    assert!(matches!(
        Invitation::decode(&big),
        Err(Error::TooLarge { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes never panic the unpacker.
    #[test]
    fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let f = fixture();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _ = rt.block_on(unpack(&bytes, &f.resolver, &f.bob_keys, &UnpackOptions::default()));
        let _ = Invitation::decode(&String::from_utf8_lossy(&bytes));
    }

    /// Flipping any one byte of a packed message yields an error, never a panic, and
    /// never a different message.
    #[test]
    fn byte_flips_are_caught(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let f = fixture();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let v = rt.block_on(authcrypt(&f));
        let mut bytes = v.to_string().into_bytes();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        if let Ok((m, _)) = rt.block_on(unpack(&bytes, &f.resolver, &f.bob_keys, &UnpackOptions::default())) {
            // A flip in insignificant JSON (e.g. whitespace-equivalent) may still parse;
            // the content must then be unchanged.
            prop_assert_eq!(m, msg(&f));
        }
    }

    /// Message and invitation codecs round-trip.
    #[test]
    fn message_round_trip(id in "[a-z0-9-]{1,40}", n in any::<i64>(), s in ".{0,40}", goal in proptest::option::of("[a-z.]{1,20}")) {
        let m = Message::new(id.clone(), "https://example.org/t/1.0/x", json!({"n": n, "s": s}))
            .from("did:example:a").to("did:example:b").thid("t");
        let back = Message::from_json(m.to_json().unwrap().as_bytes()).unwrap();
        prop_assert_eq!(&back, &m);
        let mut inv = Invitation::new("did:example:a");
        inv.goal_code = goal;
        inv.goal = Some(s);
        let url = inv.to_url("https://didcomm.invalid/oob").unwrap();
        prop_assert_eq!(Invitation::decode(&url).unwrap(), inv.clone());
        prop_assert_eq!(Invitation::decode(&inv.to_json().unwrap()).unwrap(), inv);
    }
}

/// Counts resolutions (each one may be a did:web fetch of up to 5 s).
struct Counting {
    inner: StaticResolver,
    calls: std::sync::atomic::AtomicUsize,
}

impl mpc_did_resolver::DidResolver for Counting {
    fn resolve(
        &self,
        did: &str,
    ) -> impl std::future::Future<
        Output = Result<mpc_did_resolver::DidDocument, mpc_did_resolver::ResolveError>,
    > + Send {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.resolve(did)
    }
}

/// spec/didcomm.md §3 "Signed messages" (audit of 2026-12-07, H3): a JWS may carry up to
/// 64 signatures, and unpacking used to resolve the signer of each one in turn until one
/// verified — 64 resolutions, i.e. up to 64 did:web fetches of 5 s, for one message a
/// stranger sent. Only the signature by the plaintext's `from` can be accepted (DIDComm
/// v2.1), so only that signer is resolved: one resolution, whatever the count.
#[tokio::test]
async fn a_jws_with_many_signatures_costs_one_resolution() {
    let f = fixture();
    let payload = msg(&f).to_json().unwrap();
    // 63 signers whose signatures do not verify (they signed another payload), then Alice.
    let mut signatures = Vec::new();
    let resolver = StaticResolver::new();
    for i in 0..63u8 {
        let sk = SigningKey::from_bytes(&[100 + i; 32]);
        let mut keys = SecretStore::new();
        let did = keys.insert_did_key(&sk);
        resolver.insert(key::resolve(&did).unwrap());
        let kid = format!(
            "{did}#{}",
            mpc_did_resolver::PublicKey::Ed25519(sk.verifying_key().to_bytes()).to_multibase()
        );
        let other: Value =
            serde_json::from_str(&mpc_did_didcomm::jose::sign(b"{\"other\":1}", &kid, &sk))
                .unwrap();
        signatures.push(other["signatures"][0].clone());
    }
    let (alice_jws, _) = pack_signed(&msg(&f), &f.alice, &f.resolver, &f.alice_keys)
        .await
        .unwrap();
    let alice_v: Value = serde_json::from_str(&alice_jws).unwrap();
    signatures.push(alice_v["signatures"][0].clone());
    for d in [&f.alice, &f.bob] {
        resolver.insert(key::resolve(d).unwrap());
    }
    let jws = json!({ "payload": b64(payload.as_bytes()), "signatures": signatures });
    assert_eq!(
        alice_v["payload"], jws["payload"],
        "same payload as Alice signed"
    );
    let counting = Counting {
        inner: resolver,
        calls: std::sync::atomic::AtomicUsize::new(0),
    };
    let bytes = jws.to_string();
    let (m, meta) = unpack(
        bytes.as_bytes(),
        &counting,
        &f.bob_keys,
        &UnpackOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(m.from.as_deref(), Some(f.alice.as_str()));
    assert!(meta.sign_from.unwrap().starts_with(&f.alice));
    assert_eq!(
        counting.calls.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one resolution for a 64-signature JWS"
    );
    // A JWS whose `from` signed nothing is refused after one resolution (the first
    // signer's, whose signature does not verify: the opaque error).
    let mut none = jws.clone();
    none["signatures"].as_array_mut().unwrap().pop();
    counting.calls.store(0, std::sync::atomic::Ordering::SeqCst);
    let refused = unpack(
        none.to_string().as_bytes(),
        &counting,
        &f.bob_keys,
        &UnpackOptions::default(),
    )
    .await;
    assert!(matches!(refused, Err(Error::Crypto)), "{refused:?}");
    assert_eq!(counting.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
