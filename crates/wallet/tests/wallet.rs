//! Wallet behaviour: keys match the resolver, permissions, locking, persistence.
//! spec/identity.md §4.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_resolver::{key, DidCommService, PublicKey};
use mpc_did_wallet::{Contact, Method, Wallet, WalletError};

fn mediator_service(did: &str) -> DidCommService {
    DidCommService {
        id: format!("{did}#didcomm-1"),
        uri: "https://mediator.example/didcomm".to_owned(),
        accept: vec!["didcomm/v2".to_owned()],
        routing_keys: vec!["did:web:mediator.example#key-2".to_owned()],
    }
}

#[test]
fn did_key_secret_matches_the_resolver_derivation() {
    let home = tempfile::tempdir().unwrap();
    let w = Wallet::open(home.path()).unwrap();
    let id = w.create_identity("alice", Method::Key).unwrap();
    assert!(id.did.starts_with("did:key:z6Mk"));
    assert_eq!(id.method(), "key");
    // The resolver derives the X25519 key from the DID's Ed25519 key (public map); the
    // wallet derives the secret from the seed: both must be the same key.
    let doc = key::resolve(&id.did).unwrap();
    let ka = doc.key_agreement_methods();
    assert_eq!(ka[0].key, PublicKey::X25519(id.x25519_public()));
    assert_eq!(ka[0].id, id.agreement_kid);
    assert_eq!(doc.authentication_methods()[0].id, id.auth_kid);
    assert_eq!(
        doc.authentication_methods()[0].key,
        PublicKey::Ed25519(id.ed25519_public())
    );
    assert_eq!(id.document, doc);
}

#[test]
fn seeded_identity_reproduces_the_did_key_spec_vector() {
    // tests/vectors/ed25519-x25519.json of mpc-did-resolver, seed 00…00.
    let home = tempfile::tempdir().unwrap();
    let w = Wallet::open(home.path()).unwrap();
    let id = w
        .create_identity_from_seed("v0", Method::Key, &[0; 32])
        .unwrap();
    assert_eq!(
        id.did,
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    );
    let published =
        PublicKey::from_base58("6QN8DfuN9hjgHgPvLXqgzqYE3jRRGRrmJQZkd5tL8paR", true).unwrap();
    assert_eq!(&id.agreement_secret.to_bytes(), published.as_bytes());
    assert_eq!(
        id.agreement_kid,
        format!(
            "{}#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW",
            id.did
        )
    );
}

#[test]
fn did_web_identity_document_and_services() {
    let home = tempfile::tempdir().unwrap();
    let w = Wallet::open(home.path()).unwrap();
    let id = w
        .create_identity(
            "web",
            Method::Web {
                domain: "example.com:8443/users/alice".to_owned(),
            },
        )
        .unwrap();
    assert_eq!(id.did, "did:web:example.com%3A8443:users:alice");
    assert_eq!(id.auth_kid, format!("{}#key-1", id.did));
    assert_eq!(id.agreement_kid, format!("{}#key-2", id.did));
    let doc = w.web_document("web").unwrap();
    assert_eq!(
        doc.key_agreement_methods()[0].key,
        PublicKey::X25519(id.x25519_public())
    );
    assert!(doc.didcomm_services().is_empty());

    let svc = mediator_service(&id.did);
    let updated = w.set_identity_services("web", vec![svc.clone()]).unwrap();
    assert_eq!(updated.services, vec![svc.clone()]);
    assert_eq!(
        w.web_document("web").unwrap().didcomm_services(),
        vec![svc.clone()]
    );
    // The exported document parses back to the same thing (what a resolver will see).
    let json = serde_json::to_vec(&w.web_document("web").unwrap()).unwrap();
    let back = mpc_did_resolver::DidDocument::from_json_slice(&json).unwrap();
    assert_eq!(back, w.web_document("web").unwrap());

    // did:key: services recorded in the wallet, not in the (derived) document.
    let k = w.create_identity("k", Method::Key).unwrap();
    let k2 = w
        .set_identity_services("k", vec![mediator_service(&k.did)])
        .unwrap();
    assert_eq!(k2.services.len(), 1);
    assert!(k2.document.service.is_empty());
    assert!(matches!(w.web_document("k"), Err(WalletError::NotWeb(_))));

    assert!(matches!(
        w.create_identity(
            "bad",
            Method::Web {
                domain: "exa mple.com".to_owned()
            }
        ),
        Err(WalletError::InvalidDomain(_))
    ));
}

#[test]
fn names_defaults_and_errors() {
    let home = tempfile::tempdir().unwrap();
    let w = Wallet::open(home.path()).unwrap();
    assert!(matches!(
        w.default_identity(),
        Err(WalletError::NoIdentities)
    ));
    for bad in ["", "-x", "a b", "é", &"x".repeat(65)] {
        assert!(
            matches!(
                w.create_identity(bad, Method::Key),
                Err(WalletError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
    let a = w.create_identity("a", Method::Key).unwrap();
    let b = w.create_identity("b", Method::Key).unwrap();
    assert!(matches!(
        w.create_identity("a", Method::Key),
        Err(WalletError::IdentityExists(_))
    ));
    assert!(matches!(
        w.identity("zz"),
        Err(WalletError::NoSuchIdentity(_))
    ));
    assert_eq!(w.default_identity().unwrap().did, a.did);
    w.set_default_identity("b").unwrap();
    assert_eq!(w.default_identity().unwrap().did, b.did);
    let names: Vec<String> = w
        .identities()
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, vec!["a", "b"]);
}

#[test]
fn debug_redacts_secrets() {
    let home = tempfile::tempdir().unwrap();
    let w = Wallet::open(home.path()).unwrap();
    let id = w.create_identity("a", Method::Key).unwrap();
    let dbg = format!("{id:?}");
    assert!(dbg.contains("<redacted>"));
    assert!(!dbg.contains(&hex::encode(id.signing_key.to_bytes())));
    assert!(!dbg.contains(&hex::encode(id.agreement_secret.to_bytes())));
    assert!(!dbg.contains(&format!("{:?}", id.signing_key.to_bytes())));
}

#[test]
fn persists_across_reopen() {
    let home = tempfile::tempdir().unwrap();
    let (did, seed) = {
        let w = Wallet::open(home.path()).unwrap();
        let id = w.create_identity("alice", Method::Key).unwrap();
        w.add_contact(&Contact {
            did: "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG".to_owned(),
            name: "bob".to_owned(),
            mediator: Some("did:web:mediator.example".to_owned()),
            document: None,
        })
        .unwrap();
        w.set_setting("mediator", "https://m.example").unwrap();
        (id.did, id.signing_key.to_bytes())
    };
    let w = Wallet::open(home.path()).unwrap();
    let id = w.identity("alice").unwrap();
    assert_eq!(id.did, did);
    assert_eq!(id.signing_key.to_bytes(), seed);
    let c = w
        .contact("did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG")
        .unwrap()
        .unwrap();
    assert_eq!(c.name, "bob");
    assert_eq!(c.mediator.as_deref(), Some("did:web:mediator.example"));
    assert_eq!(w.contacts().unwrap().len(), 1);
    assert_eq!(w.contact("did:key:nobody").unwrap(), None);
    assert_eq!(
        w.setting("mediator").unwrap().as_deref(),
        Some("https://m.example")
    );
    assert_eq!(w.setting("nope").unwrap(), None);
    assert!(w.remove_contact(&c.did).unwrap());
    assert!(w.contacts().unwrap().is_empty());
}

#[test]
fn second_open_is_in_use_then_free_after_drop() {
    let home = tempfile::tempdir().unwrap();
    let first = Wallet::open(home.path()).unwrap();
    match Wallet::open_with_wait(home.path(), Duration::ZERO) {
        Err(WalletError::InUse { path }) => {
            assert_eq!(path, home.path().join("wallet.lock"));
            let msg = WalletError::InUse { path }.to_string();
            assert!(msg.contains("wallet in use"), "{msg}");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    drop(first);
    Wallet::open_with_wait(home.path(), Duration::ZERO).unwrap();
}

#[test]
fn open_waits_a_bounded_time_for_the_holder() {
    let home = tempfile::tempdir().unwrap();
    let first = Wallet::open(home.path()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        tx.send(()).unwrap();
        // A holder that is slow to let go (simulated): the opener below must wait.
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
    });
    rx.recv().unwrap();
    // Released after ~300 ms, well inside the wait.
    let w = Wallet::open_with_wait(home.path(), Duration::from_secs(10)).unwrap();
    holder.join().unwrap();
    drop(w);
}

#[cfg(unix)]
#[test]
fn directory_0700_and_files_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("nested").join("home");
    let w = Wallet::open(&home).unwrap();
    w.create_identity("alice", Method::Key).unwrap();
    fn walk(dir: &std::path::Path, files: &mut usize) {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(&e.path(), files);
            } else if ft.is_file() {
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", e.path().display());
                *files += 1;
            }
        }
    }
    let mut files = 0;
    walk(&home, &mut files);
    assert!(
        files >= 2,
        "expected the lock file and sled files, saw {files}"
    );

    // A looser pre-existing directory is tightened.
    drop(w);
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _w = Wallet::open(&home).unwrap();
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

#[test]
fn reopening_at_once_in_the_same_process_always_works() {
    // A process that records several things opens the wallet once per record (e.g. `run`
    // logs each secure session as it closes). sled lets go of its own file lock a moment
    // after the wallet is dropped; the next open must wait for that, not fail.
    let home = tempfile::tempdir().unwrap();
    for i in 0..300 {
        let w = Wallet::open_with_wait(home.path(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("open {i}: {e}"));
        w.set_setting("k", &i.to_string()).unwrap();
    }
}
