//! did:peer round trips with the PyPI reference implementations `did-peer-2` and
//! `did-peer-4` (`tests/interop/did_peer_py.py`): their DIDs resolve here to the same keys
//! and services, and ours resolve there to the same. Runs with the interpreter in
//! `MPC_DID_PYTHON` (test.sh's venv); without it prints `SKIPPED`, unless
//! `MPC_DID_REQUIRE_INTEROP=1`, where it fails.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use mpc_did_resolver::peer::{self, Purpose};
use mpc_did_resolver::{DidDocument, PublicKey};
use serde_json::{json, Value};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/did_peer_py.py");

fn python() -> Option<String> {
    match std::env::var("MPC_DID_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var("MPC_DID_REQUIRE_INTEROP").as_deref() != Ok("1"),
                "MPC_DID_REQUIRE_INTEROP=1 but MPC_DID_PYTHON is not set"
            );
            eprintln!("SKIPPED: did:peer interop (set MPC_DID_PYTHON to a python with did-peer-2 and did-peer-4)");
            None
        }
    }
}

fn py(python: &str, req: &Value) -> Value {
    let mut child = Command::new(python)
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(req.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "did_peer_py.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Keys (id, key, relationships) and DIDComm services of a document, for comparison.
fn essence(d: &DidDocument) -> Value {
    json!({
        "keys": d.verification_method.iter().map(|vm| json!([vm.id, vm.key.to_multibase()])).collect::<Vec<_>>(),
        "authentication": d.authentication,
        "keyAgreement": d.key_agreement,
        "assertionMethod": d.assertion_method,
        "services": d.didcomm_services().iter().map(|s| json!([s.id, s.uri, s.accept, s.routing_keys])).collect::<Vec<_>>(),
    })
}

#[test]
fn did_peer_2_and_4_both_ways() {
    let Some(python) = python() else { return };
    let ed = PublicKey::Ed25519(
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
            .verifying_key()
            .to_bytes(),
    );
    let x = PublicKey::X25519(x25519_dalek::PublicKey::from([8; 32]).to_bytes());
    let service = json!({
        "type": "DIDCommMessaging",
        "serviceEndpoint": {"uri": "https://mediator.example/didcomm", "accept": ["didcomm/v2"],
                            "routingKeys": ["did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW"]}
    });
    let with_id = {
        let mut s = service.clone();
        s["id"] = json!("#didcomm-1");
        s
    };
    // Ours, as `mpc-did id create --method peer` makes them (a service with an id), and
    // one without an id (the resolver names it #service).
    let ours = vec![
        peer::did_peer_2(
            &[(Purpose::Verification, ed), (Purpose::Encryption, x)],
            &[with_id],
        )
        .unwrap(),
        peer::did_peer_2(
            &[
                (Purpose::Encryption, x),
                (Purpose::Verification, ed),
                (Purpose::Assertion, ed),
            ],
            &[service.clone(), service.clone()],
        )
        .unwrap(),
    ];
    let input4 = json!({
        "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
        "verificationMethod": [
            {"id": "#key-1", "type": "Multikey", "publicKeyMultibase": ed.to_multibase()},
            {"id": "#key-2", "type": "Multikey", "publicKeyMultibase": x.to_multibase()}
        ],
        "authentication": ["#key-1"],
        "keyAgreement": ["#key-2"],
        "service": [{"id": "#didcomm-1", "type": "DIDCommMessaging",
                     "serviceEndpoint": {"uri": "https://mediator.example/didcomm", "accept": ["didcomm/v2"], "routingKeys": []}}]
    });
    let theirs = py(
        &python,
        &json!({
            "make2": {"keys": [["V", ed.to_multibase()], ["E", x.to_multibase()]], "services": [service]},
            "make4": input4,
            "resolve": ours,
        }),
    );
    // Theirs resolve here to the keys and service they were made from.
    let did2 = theirs["did2"].as_str().unwrap();
    let d2 = peer::resolve(did2).unwrap();
    assert_eq!(d2.authentication_methods()[0].key, ed);
    assert_eq!(d2.key_agreement_methods()[0].key, x);
    let s = d2.didcomm_services();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].uri, "https://mediator.example/didcomm");
    assert_eq!(s[0].accept, vec!["didcomm/v2"]);
    assert_eq!(s[0].id, format!("{did2}#service"));
    let long = theirs["did4_long"].as_str().unwrap();
    let short = theirs["did4_short"].as_str().unwrap();
    let d4 = peer::resolve(long).unwrap();
    assert_eq!(d4.authentication_methods()[0].key, ed);
    assert_eq!(d4.key_agreement_methods()[0].key, x);
    assert_eq!(d4.also_known_as, vec![short.to_owned()]);
    assert_eq!(peer::short_form(long), Some(short));
    assert_eq!(peer::resolve_short(short, long).unwrap().id, short);
    // Ours resolve there to the same documents as here.
    for did in &ours {
        let there = &theirs["resolved"][did.as_str()];
        assert!(there.get("error").is_none(), "{did}: {there}");
        let there = DidDocument::from_json_value(there).unwrap();
        let here = peer::resolve(did).unwrap();
        assert_eq!(essence(&here), essence(&there), "{did}");
    }
}
