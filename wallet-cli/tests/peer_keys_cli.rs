//! did:peer identities, key export/import and the small `didcomm` CLI fixes of issue 14,
//! run as a user would: the real `mpc-did` binary, wallets in temporary homes, and (for
//! did:peer with a mediator) a mediator started in-process on loopback.
//! spec/identity.md §"did:peer" and §"Export and import", spec/didcomm.md §7.
#![allow(clippy::unwrap_used)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};

mod common;

use common::{loopback_config, mpc_did, ok};
use mpc_did_mediator::Mediator;
use serde_json::Value;

fn run_stdin(home: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = common::cmd(home, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn ok_stdin(home: &Path, args: &[&str], stdin: &[u8]) -> String {
    let out = run_stdin(home, args, stdin);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn did_peer_with_mediator_registers_and_receives() {
    let data = tempfile::tempdir().unwrap();
    let m = Mediator::builder(loopback_config(data.path()))
        .start()
        .await
        .unwrap();
    let carol_home = tempfile::tempdir().unwrap();
    let bob_home = tempfile::tempdir().unwrap();
    let (ch, bh) = (carol_home.path().to_owned(), bob_home.path().to_owned());
    let (inv, url, routing_key) = (
        m.invitation_url.clone(),
        m.public_url.clone(),
        m.routing_key.clone(),
    );
    let blocking = |f: Box<dyn FnOnce() -> String + Send>| tokio::task::spawn_blocking(f);

    // `id create --method peer --mediator URL`: the DID's service is the mediator's.
    let created = {
        let (ch, inv) = (ch.clone(), inv.clone());
        blocking(Box::new(move || {
            ok(
                &ch,
                &[
                    "--json",
                    "id",
                    "create",
                    "--name",
                    "carol",
                    "--method",
                    "peer",
                    "--mediator",
                    &inv,
                ],
            )
        }))
        .await
        .unwrap()
    };
    let created = json(&created);
    let carol = created["did"].as_str().unwrap().to_owned();
    assert!(carol.starts_with("did:peer:2.V"), "{carol}");
    assert_eq!(created["method"], "peer");
    assert_eq!(
        created["services"][0]["routingKeys"][0],
        routing_key.as_str()
    );
    // Anyone resolves it from the DID alone (`mpc-did resolve`, no wallet needed).
    let doc = {
        let (bh, carol) = (bh.clone(), carol.clone());
        blocking(Box::new(move || ok(&bh, &["resolve", &carol, "--json"])))
            .await
            .unwrap()
    };
    let doc = json(&doc);
    assert_eq!(doc["id"], carol.as_str());
    assert_eq!(
        doc["service"][0]["serviceEndpoint"]["routingKeys"][0],
        routing_key.as_str()
    );
    // Registration with the mediator works for a did:peer as for a did:key.
    {
        let (ch, inv) = (ch.clone(), inv.clone());
        blocking(Box::new(move || {
            ok(&ch, &["--json", "mediator", "register", &inv])
        }))
        .await
        .unwrap();
    }
    // Bob (did:key) sends to the did:peer through the mediator; Carol picks it up.
    let bob = {
        let bh = bh.clone();
        blocking(Box::new(move || {
            json(&ok(&bh, &["--json", "id", "create", "--name", "bob"]))["did"]
                .as_str()
                .unwrap()
                .to_owned()
        }))
        .await
        .unwrap()
    };
    {
        let (bh, carol, url) = (bh.clone(), carol.clone(), url.clone());
        blocking(Box::new(move || {
            ok(
                &bh,
                &[
                    "send",
                    &carol,
                    "--body",
                    r#"{"hello":"carol"}"#,
                    "--via",
                    &url,
                ],
            )
        }))
        .await
        .unwrap();
    }
    let out = {
        let ch = ch.clone();
        blocking(Box::new(move || ok(&ch, &["--json", "inbox"])))
            .await
            .unwrap()
    };
    let line = json(out.lines().next().unwrap());
    assert_eq!(line["from"], bob.as_str());
    assert_eq!(line["body"]["hello"], "carol");
    assert_eq!(line["authenticated"], true);
    // --mediator is refused for methods that do not carry services in the DID.
    let bad = mpc_did(&bh, &["id", "create", "--name", "x", "--mediator", &inv]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--method peer"));
    drop(m);
}

#[test]
fn exported_then_imported_identities_unpack_each_others_messages() {
    let (w1, w2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = json(&ok(
        w1.path(),
        &["--json", "id", "create", "--name", "alice"],
    ))["did"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = json(&ok(
        w1.path(),
        &[
            "--json", "id", "create", "--name", "bob", "--method", "peer",
        ],
    ))["did"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(bob.starts_with("did:peer:2"));

    // Public export: no private key, no warning.
    let out = mpc_did(w1.path(), &["id", "export", "alice", "--format", "jwk"]);
    assert!(out.status.success());
    let public = json(&String::from_utf8(out.stdout).unwrap());
    assert!(public["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k.get("d").is_none()));
    assert!(out.stderr.is_empty());

    // Private exports to files: 0600, with a warning on stderr.
    let dir = tempfile::tempdir().unwrap();
    for (name, format) in [("alice", "jwk"), ("bob", "multibase")] {
        let file = dir.path().join(format!("{name}.json"));
        let out = mpc_did(
            w1.path(),
            &[
                "id",
                "export",
                name,
                "--private",
                "--format",
                format,
                "--out",
                file.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("PRIVATE keys"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name}");
        }
        let imported = json(&ok(
            w2.path(),
            &["--json", "id", "import", file.to_str().unwrap()],
        ));
        assert_eq!(imported["name"], name);
    }
    let listed = json(&ok(w2.path(), &["--json", "id", "list"]));
    let dids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["did"].as_str().unwrap())
        .collect();
    assert_eq!(dids, vec![alice.as_str(), bob.as_str()]);

    // Originals and imports talk to each other: W1's alice → W2's (imported) bob, and
    // W2's (imported) alice → W1's bob, authcrypt and signed.
    for (from_home, to_home) in [(w1.path(), w2.path()), (w2.path(), w1.path())] {
        let packed = ok_stdin(
            from_home,
            &["didcomm", "pack", "--to", &bob, "--from", "alice", "--sign"],
            br#"{"n": 1}"#,
        );
        let out = json(&ok_stdin(
            to_home,
            &["--json", "didcomm", "unpack", "-"],
            packed.as_bytes(),
        ));
        assert_eq!(out["message"]["from"], alice.as_str());
        assert_eq!(out["message"]["body"]["n"], 1);
        assert_eq!(out["metadata"]["authenticated"], true);
    }

    // A bad key file is one user-worded line.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, r#"{"keys":[]}"#).unwrap();
    let out = mpc_did(w2.path(), &["id", "import", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot import the key file") && err.contains("--private"),
        "{err}"
    );
}

#[test]
fn unpack_names_anoncrypt_signed_and_from_is_not_silently_ignored() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    ok(a.path(), &["id", "create", "--name", "alice"]);
    let bob = json(&ok(b.path(), &["--json", "id", "create", "--name", "bob"]))["did"]
        .as_str()
        .unwrap()
        .to_owned();
    // anoncrypt + signed: the sender is authenticated by the signature, not by authcrypt.
    let packed = ok_stdin(
        a.path(),
        &[
            "didcomm",
            "pack",
            "--to",
            &bob,
            "--mode",
            "anoncrypt",
            "--sign",
        ],
        b"hi",
    );
    let human = ok_stdin(b.path(), &["didcomm", "unpack", "-"], packed.as_bytes());
    assert!(human.contains("-- signed and anoncrypt"), "{human}");
    assert!(!human.contains("authcrypt ("), "{human}");
    // --from with plain / anoncrypt without --sign names no sender: a warning says so.
    for mode in ["plain", "anoncrypt"] {
        let out = run_stdin(
            a.path(),
            &[
                "didcomm", "pack", "--to", &bob, "--mode", mode, "--from", "alice",
            ],
            b"hi",
        );
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("warning: --from alice is ignored"),
            "{mode}: {err}"
        );
    }
}
