//! `mpc-did id …` and `mpc-did resolve …` run as a user would: the real binary, a wallet
//! in a temporary --home. spec/identity.md.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::path::Path;

mod common;

use common::mpc_did;
use mpc_did_resolver::{DidDocument, PublicKey};
use serde_json::Value;

fn ok_json(home: &Path, args: &[&str]) -> Value {
    let out = mpc_did(home, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Exit status 1 and exactly one line on stderr, containing every `needles`.
fn fails_with(home: &Path, args: &[&str], needles: &[&str]) {
    let out = mpc_did(home, args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.starts_with("mpc-did: error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} should mention {n:?}");
    }
}

#[test]
fn create_then_resolve_has_the_derived_key_agreement_key() {
    let home = tempfile::tempdir().unwrap();
    let created = ok_json(home.path(), &["id", "create", "--name", "alice", "--json"]);
    let did = created["did"].as_str().unwrap().to_owned();
    assert!(did.starts_with("did:key:z6Mk"), "{did}");

    // What a resolver derives from the DID alone…
    let doc = ok_json(home.path(), &["resolve", &did, "--json"]);
    assert_eq!(doc["id"], did);
    let ka_id = doc["keyAgreement"][0].as_str().unwrap();
    let vm = doc["verificationMethod"]
        .as_array()
        .unwrap()
        .iter()
        .find(|vm| vm["id"] == ka_id)
        .unwrap();
    let resolved_key = vm["publicKeyMultibase"].as_str().unwrap();
    assert!(resolved_key.starts_with("z6LS"));
    // did:key spec: the X25519 method id is the DID + "#" + the X25519 multibase.
    assert_eq!(ka_id, format!("{did}#{resolved_key}"));

    // …is the public key of the secret the wallet holds (computed from the secret by
    // `id show`, and checked once more here through the wallet library).
    let shown = ok_json(home.path(), &["id", "show", "alice", "--json"]);
    assert_eq!(shown["keyAgreement"]["publicKeyMultibase"], resolved_key);
    assert_eq!(shown["keyAgreement"]["kid"], ka_id);
    let wallet = mpc_did_wallet::Wallet::open(home.path()).unwrap();
    let id = wallet.identity("alice").unwrap();
    assert_eq!(
        PublicKey::X25519(id.x25519_public()).to_multibase(),
        resolved_key
    );
}

#[test]
fn resolve_matches_the_did_key_spec_vector() {
    // did-resolver/tests/vectors/ed25519-x25519.json, seed 00…00.
    let home = tempfile::tempdir().unwrap();
    let did = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
    let doc = ok_json(home.path(), &["resolve", did, "--json"]);
    assert_eq!(
        doc["keyAgreement"][0],
        format!("{did}#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW")
    );
    let human = mpc_did(home.path(), &["resolve", did]);
    assert!(human.status.success());
    assert!(String::from_utf8(human.stdout)
        .unwrap()
        .contains("keyAgreement:"));
}

#[test]
fn list_show_and_no_secrets_printed() {
    let home = tempfile::tempdir().unwrap();
    ok_json(home.path(), &["id", "create", "--name", "a", "--json"]);
    ok_json(home.path(), &["id", "create", "--name", "b", "--json"]);
    let list = ok_json(home.path(), &["id", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(list[0]["default"], true);
    assert_eq!(list[1]["default"], false);

    // `show` without a name shows the default; `id default` changes it.
    assert_eq!(ok_json(home.path(), &["id", "show", "--json"])["name"], "a");
    ok_json(home.path(), &["id", "default", "b", "--json"]);
    assert_eq!(ok_json(home.path(), &["id", "show", "--json"])["name"], "b");

    // Gather every output and make sure no private key appears in any form we print.
    let mut all = String::new();
    for args in [
        &["id", "list"][..],
        &["id", "list", "--json"],
        &["id", "show", "a"],
        &["id", "show", "a", "--json"],
        &["id", "show", "b", "--json"],
    ] {
        let out = mpc_did(home.path(), args);
        assert!(out.status.success());
        all.push_str(&String::from_utf8(out.stdout).unwrap());
        all.push_str(&String::from_utf8(out.stderr).unwrap());
    }
    let wallet = mpc_did_wallet::Wallet::open(home.path()).unwrap();
    for name in ["a", "b"] {
        let id = wallet.identity(name).unwrap();
        let ed = id.signing_key.to_bytes();
        let x = id.agreement_secret.to_bytes();
        for secret in [ed, x] {
            let forms = [
                hex_lower(&secret),
                // base64url, as a JWK "d" would carry it.
                PublicKey::Ed25519(secret).to_jwk()["x"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                PublicKey::Ed25519(secret).to_base58(),
            ];
            for f in forms {
                assert!(!all.contains(&f), "secret of {name} printed");
            }
        }
    }
}

fn hex_lower(b: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(char::from(DIGITS[usize::from(x >> 4)]));
        s.push(char::from(DIGITS[usize::from(x & 0xf)]));
    }
    s
}

#[test]
fn export_web_writes_the_document_to_publish() {
    let home = tempfile::tempdir().unwrap();
    let created = ok_json(
        home.path(),
        &[
            "id",
            "create",
            "--name",
            "shop",
            "--method",
            "web",
            "--domain",
            "localhost:8443/u/shop",
            "--json",
        ],
    );
    assert_eq!(created["did"], "did:web:localhost%3A8443:u:shop");
    let out = home.path().join("did.json");
    let res = ok_json(
        home.path(),
        &[
            "id",
            "export-web",
            "shop",
            "--out",
            out.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(res["url"], "https://localhost:8443/u/shop/did.json");
    let doc = DidDocument::from_json_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(doc.id, "did:web:localhost%3A8443:u:shop");
    assert_eq!(
        PublicKey::X25519(*doc.key_agreement_methods()[0].key.as_bytes()).to_multibase(),
        created["keyAgreement"]["publicKeyMultibase"]
            .as_str()
            .unwrap()
    );
    assert_eq!(doc.authentication_methods().len(), 1);
}

/// did:web end to end without TLS dependencies in this crate: publish the exported
/// document on a loopback plain-HTTP server and resolve it with `--allow-http` (the HTTPS
/// path is tested against a real TLS server in did-resolver/tests/did_web.rs).
#[test]
fn exported_did_web_document_resolves_from_a_local_server() {
    let home = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let domain = format!("localhost:{port}");
    let created = ok_json(
        home.path(),
        &[
            "id", "create", "--name", "w", "--method", "web", "--domain", &domain, "--json",
        ],
    );
    let did = created["did"].as_str().unwrap().to_owned();
    let file = home.path().join("did.json");
    ok_json(
        home.path(),
        &[
            "id",
            "export-web",
            "w",
            "--out",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    let body = std::fs::read(&file).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
        }
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/did+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    let doc = ok_json(
        home.path(),
        &[
            "resolve",
            &did,
            "--allow-http",
            "--allow-private-hosts",
            "--timeout",
            "5",
            "--json",
        ],
    );
    let request = server.join().unwrap();
    assert!(
        request.starts_with("GET /.well-known/did.json HTTP/1.1"),
        "{request}"
    );
    assert_eq!(doc, created["document"]);
}

#[test]
fn errors_are_one_line_with_a_cause_and_exit_1() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    fails_with(
        h,
        &["id", "show"],
        &["no identity yet", "mpc-did id create"],
    );
    fails_with(
        h,
        &["id", "show", "bob"],
        &["no identity named 'bob'", "mpc-did id create --name bob"],
    );
    ok_json(h, &["id", "create", "--name", "alice", "--json"]);
    fails_with(
        h,
        &["id", "create", "--name", "alice"],
        &["already exists", "--name"],
    );
    fails_with(
        h,
        &["id", "create", "--name", "bad name"],
        &["invalid identity name"],
    );
    fails_with(
        h,
        &["id", "export-web", "alice", "--out", "x.json"],
        &["not a did:web identity"],
    );
    fails_with(
        h,
        &[
            "id",
            "create",
            "--name",
            "w",
            "--method",
            "web",
            "--domain",
            "exa mple.com",
        ],
        &["invalid did:web domain"],
    );
    fails_with(
        h,
        &["id", "create", "--name", "k", "--domain", "example.com"],
        &["--method web"],
    );
    fails_with(
        h,
        &["resolve", "not-a-did"],
        &["cannot resolve", "invalid DID"],
    );
    fails_with(
        h,
        &["resolve", "did:example:123"],
        &["unsupported DID method \"example\""],
    );
    fails_with(
        h,
        &[
            "resolve",
            "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
        ],
        &["unsupported key type"],
    );
    fails_with(h, &["resolve", "did:key:z6Mk"], &["did:key"]);
    // A port nobody listens on: a transport error naming the URL.
    fails_with(
        h,
        &["resolve", "did:web:127.0.0.1%3A9", "--timeout", "3"],
        &["https://127.0.0.1:9/.well-known/did.json"],
    );

    // Usage errors are clap's: exit status 2.
    let out = mpc_did(h, &["id", "create", "--method", "web"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_second_process_gets_wallet_in_use() {
    let home = tempfile::tempdir().unwrap();
    // This test process holds the wallet; the CLI waits its bounded time, then gives up.
    let _held = mpc_did_wallet::Wallet::open(home.path()).unwrap();
    fails_with(
        home.path(),
        &["id", "list"],
        &["wallet in use", "wallet.lock"],
    );
}

#[test]
fn help_has_examples() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["id", "create", "--help"][..],
        &["resolve", "--help"],
        &["id", "export-web", "--help"],
    ] {
        let out = mpc_did(home.path(), args);
        assert!(out.status.success());
        assert!(
            String::from_utf8(out.stdout).unwrap().contains("Example"),
            "{args:?}"
        );
    }
}
