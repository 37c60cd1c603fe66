//! did:peer resolution against the examples of the did:peer method specification
//! (`tests/vectors/peer/`, source in `tests/vectors/README.md`), and bad input: each
//! malformed did:peer is a typed error naming the problem.
#![allow(clippy::unwrap_used)]

use mpc_did_resolver::peer::{self, Purpose};
use mpc_did_resolver::{
    DidDocument, DidResolver, PeerError, PublicKey, ResolveError, UniversalResolver,
};
use proptest::prelude::*;
use serde_json::{json, Value};

fn vector(name: &str) -> Value {
    let path = format!("{}/tests/vectors/peer/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Compares our document with the spec's: same keys under the same (absolute) ids, same
/// relationships, same services. Our parser makes relative ids absolute ("Both relative and
/// absolute references are valid within DID Documents", did:peer spec, numalgo 4 note).
fn assert_same_document(ours: &DidDocument, theirs: &Value) {
    let expected = DidDocument::from_json_value(theirs).unwrap();
    assert_eq!(ours.id, expected.id);
    let keys = |d: &DidDocument| -> Vec<(String, PublicKey, String)> {
        d.verification_method
            .iter()
            .map(|vm| (vm.id.clone(), vm.key, vm.controller.clone()))
            .collect()
    };
    let mut a = keys(ours);
    let mut b = keys(&expected);
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, b);
    assert_eq!(ours.authentication, expected.authentication);
    assert_eq!(ours.key_agreement, expected.key_agreement);
    assert_eq!(ours.assertion_method, expected.assertion_method);
    assert_eq!(ours.capability_invocation, expected.capability_invocation);
    assert_eq!(ours.capability_delegation, expected.capability_delegation);
    assert_eq!(ours.service, expected.service);
    assert_eq!(ours.didcomm_services(), expected.didcomm_services());
}

#[test]
fn numalgo_2_spec_example() {
    // did:peer spec, "Resolving a did:peer:2": "Set the `id` of the verification method to
    // `#key-N` where `N` is an incrementing number starting at `1`" and "Set `id` to
    // `#service` for the first such service. For all subsequent services WITHOUT an `id`,
    // set `id` to `#service-1`".
    let v = vector("numalgo2-spec-example.json");
    let did = v["did"].as_str().unwrap();
    let doc = peer::resolve(did).unwrap();
    assert_same_document(&doc, &v["document"]);
    let s = doc.didcomm_services();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].id, format!("{did}#service"));
    assert_eq!(s[1].id, format!("{did}#service-1"));
    // "t"→"type", "dm"→"DIDCommMessaging", "s"→"serviceEndpoint", "a"→"accept",
    // "r"→"routingKeys", inside the nested endpoint object too.
    assert_eq!(s[0].uri, "http://example.com/didcomm");
    assert_eq!(s[0].accept, vec!["didcomm/v2"]);
    assert_eq!(
        s[0].routing_keys,
        vec!["did:example:123456789abcdefghi#key-1"]
    );
    assert_eq!(s[1].uri, "http://example.com/another");
    assert!(matches!(
        doc.key_agreement_methods()[0].key,
        PublicKey::X25519(_)
    ));
    assert!(matches!(
        doc.authentication_methods()[0].key,
        PublicKey::Ed25519(_)
    ));
}

#[test]
fn numalgo_2_encoding_reproduces_the_spec_did() {
    // did:peer spec, "Generating a did:peer:2": keys then services, each service
    // abbreviated, stringified without whitespace and base64url-encoded without padding.
    let v = vector("numalgo2-spec-example.json");
    let did = v["did"].as_str().unwrap();
    let doc = peer::resolve(did).unwrap();
    let keys: Vec<(Purpose, PublicKey)> = vec![
        (Purpose::Verification, doc.authentication_methods()[0].key),
        (Purpose::Encryption, doc.key_agreement_methods()[0].key),
    ];
    // The spec's services carry no id (the resolver adds them). JSON member order is not
    // fixed by the spec (serde_json sorts, the spec's example writes "t" first), so the
    // services are compared decoded, not as bytes.
    let services: Vec<Value> = v["document"]["service"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.as_object_mut().unwrap().remove("id");
            s
        })
        .collect();
    let ours = peer::did_peer_2(&keys, &services).unwrap();
    let again = peer::resolve(&ours).unwrap();
    assert_eq!(again.didcomm_services().len(), 2);
    for (a, b) in again.didcomm_services().iter().zip(doc.didcomm_services()) {
        assert_eq!(
            (&a.uri, &a.accept, &a.routing_keys),
            (&b.uri, &b.accept, &b.routing_keys)
        );
    }
    // The key part of the DID is the spec's byte for byte.
    let key_part = |d: &str| d.split(".S").next().unwrap().to_owned();
    assert_eq!(key_part(&ours), key_part(did));
}

#[test]
fn numalgo_4_spec_example_long_and_short() {
    let v = vector("numalgo4-spec-example.json");
    let long = v["long"].as_str().unwrap();
    let short = v["short"].as_str().unwrap();
    // "Verify the hash over the encoded document" and "contextualize": id = the DID,
    // alsoKnownAs gets the other form, controller defaults to the DID.
    let doc = peer::resolve(long).unwrap();
    assert_same_document(&doc, &v["long_document"]);
    assert_eq!(doc.also_known_as, vec![short.to_owned()]);
    assert_eq!(peer::short_form(long), Some(short));
    // "It is not possible to resolve a short form did:peer:4 without first seeing and
    // storing it's long form counterpart."
    assert!(matches!(
        peer::resolve(short),
        Err(ResolveError::Peer(PeerError::ShortFormUnknown(_)))
    ));
    let sdoc = peer::resolve_short(short, long).unwrap();
    assert_same_document(&sdoc, &v["short_document"]);
    assert_eq!(sdoc.also_known_as, vec![long.to_owned()]);
    // The universal resolver remembers long forms it resolved.
    let u = UniversalResolver::new().unwrap();
    assert!(matches!(
        block_on(u.resolve(short)),
        Err(ResolveError::Peer(PeerError::ShortFormUnknown(_)))
    ));
    block_on(u.resolve(long)).unwrap();
    assert_eq!(block_on(u.resolve(short)).unwrap().id, short);
    // A long form that is not this short form's is refused.
    let other = "did:peer:4zQmd8CpeFPci817KDsbSAKWcXAE2mjvCQSasRewvbSF54Bc";
    assert!(matches!(
        peer::resolve_short(other, long),
        Err(ResolveError::Peer(PeerError::LongFormMismatch(_)))
    ));
}

fn peer_err(did: &str) -> PeerError {
    match peer::resolve(did) {
        Err(ResolveError::Peer(e)) => e,
        other => panic!("{did}: expected a did:peer error, got {other:?}"),
    }
}

const ED: &str = "z6Mkj3PUd1WjvaDhNZhhhXQdz5UnZXmS7ehtx8bsPpD47kKc";
const X: &str = "z6LSg8zQom395jKLrGiBNruB9MM6V8PWuf2FpEy4uRFiqQBR";

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn bad_input_is_typed() {
    // numalgo: only 0, 2 and 4 are resolvable without stored state.
    assert_eq!(
        peer_err(&format!("did:peer:1{ED}")),
        PeerError::UnsupportedNumalgo('1')
    );
    assert_eq!(
        peer_err(&format!("did:peer:9{ED}")),
        PeerError::UnsupportedNumalgo('9')
    );
    // Unknown purpose code (the spec's codes are A E V I D S).
    assert_eq!(
        peer_err(&format!("did:peer:2.V{ED}.X{X}")),
        PeerError::UnknownPurpose {
            index: 1,
            code: 'X'
        }
    );
    // Bad multibase: not base58btc, bad base58, unsupported codec, wrong length.
    for bad in [
        "uAAAA",
        "z0OIl",
        "zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
    ] {
        assert!(
            matches!(
                peer_err(&format!("did:peer:2.V{bad}")),
                PeerError::Key { index: 0, .. }
            ),
            "{bad}"
        );
    }
    // Service: not base64url, not JSON, not an object.
    assert_eq!(
        peer_err(&format!("did:peer:2.E{X}.SA")),
        PeerError::ServiceNotBase64 { index: 1 }
    );
    // Characters outside the DID syntax are refused before did:peer parsing.
    assert!(matches!(
        peer::resolve(&format!("did:peer:2.E{X}.S!!")),
        Err(ResolveError::InvalidDid(_))
    ));
    assert!(matches!(
        peer_err(&format!("did:peer:2.E{X}.S{}", b64("not json"))),
        PeerError::ServiceNotJson { index: 1, .. }
    ));
    assert_eq!(
        peer_err(&format!("did:peer:2.E{X}.S{}", b64("[1,2]"))),
        PeerError::ServiceNotObject { index: 1 }
    );
    assert_eq!(
        peer_err(&format!("did:peer:2.E{X}.S{}", b64("\"dm\""))),
        PeerError::ServiceNotObject { index: 1 }
    );
    // Empty element, missing leading '.'.
    assert_eq!(
        peer_err(&format!("did:peer:2.E{X}..V{ED}")),
        PeerError::EmptyElement { index: 1 }
    );
    assert!(matches!(
        peer_err(&format!("did:peer:2E{X}")),
        PeerError::Malformed(_)
    ));
    // did:peer:4 whose hash does not match its long form: change one character of the
    // encoded document.
    let v = vector("numalgo4-spec-example.json");
    let long = v["long"].as_str().unwrap();
    let mut tampered = long.to_owned();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'z' { 'y' } else { 'z' });
    assert_eq!(peer_err(&tampered), PeerError::HashMismatch);
    // A hash that is not a sha2-256 multihash.
    let (_, enc) = long
        .strip_prefix("did:peer:4")
        .unwrap()
        .split_once(':')
        .unwrap();
    assert!(matches!(
        peer_err(&format!("did:peer:4z{ED}:{enc}")),
        PeerError::Malformed(_)
    ));
    // Errors read as sentences, with no Rust debug forms.
    let text = ResolveError::Peer(PeerError::UnknownPurpose {
        index: 1,
        code: 'X',
    })
    .to_string();
    assert!(text.contains("unknown purpose code"), "{text}");
    assert!(!text.contains("Some("), "{text}");
}

proptest! {
    // Round trip: any Ed25519/X25519 keys with any purposes, and a DIDCommMessaging
    // service with any URI, resolve to the same keys, relationships and service.
    #[test]
    fn did_peer_2_round_trip(
        keys in proptest::collection::vec((0usize..5, any::<bool>(), any::<[u8; 32]>()), 1..5),
        uri in "https://[a-z]{1,12}\\.example/[a-z0-9/]{0,20}",
        nested in any::<bool>(),
    ) {
        let purposes = [Purpose::Assertion, Purpose::Encryption, Purpose::Verification,
                        Purpose::CapabilityInvocation, Purpose::CapabilityDelegation];
        let keys: Vec<(Purpose, PublicKey)> = keys.into_iter().map(|(p, x, b)| {
            (purposes[p], if x { PublicKey::X25519(b) } else { PublicKey::Ed25519(b) })
        }).collect();
        let svc = if nested {
            json!({"type": "DIDCommMessaging", "serviceEndpoint":
                   [{"uri": uri, "accept": ["didcomm/v2"], "routingKeys": []}]})
        } else {
            json!({"type": "DIDCommMessaging", "serviceEndpoint": uri, "accept": ["didcomm/v2"]})
        };
        let did = peer::did_peer_2(&keys, &[svc]).unwrap();
        let doc = peer::resolve(&did).unwrap();
        prop_assert_eq!(doc.verification_method.len(), keys.len());
        for (i, (_, k)) in keys.iter().enumerate() {
            prop_assert_eq!(doc.verification_method[i].key, *k);
            prop_assert_eq!(&doc.verification_method[i].id, &format!("{did}#key-{}", i + 1));
        }
        let s = doc.didcomm_services();
        prop_assert_eq!(s.len(), 1);
        prop_assert_eq!(&s[0].uri, &uri);
    }

    // Any string after "did:peer:" resolves or fails with a typed error; never panics.
    #[test]
    fn resolve_never_panics(s in "[0-9A-Za-z._:-]{0,120}") {
        let _ = peer::resolve(&format!("did:peer:{s}"));
        let _ = peer::resolve(&format!("did:peer:2.{s}"));
        let _ = peer::resolve(&format!("did:peer:4{s}"));
    }

    // Single-character changes in the spec's did:peer:2 never panic, and changes inside a
    // key element are refused or give a different key.
    #[test]
    fn mutated_spec_did_never_panics(pos in 11usize..400, c in "[0-9A-Za-z._-]") {
        let v = vector("numalgo2-spec-example.json");
        let did = v["did"].as_str().unwrap();
        let mut bytes = did.as_bytes().to_vec();
        if let Some(b) = bytes.get_mut(pos) {
            *b = c.as_bytes()[0];
        }
        let _ = peer::resolve(&String::from_utf8(bytes).unwrap());
    }
}
