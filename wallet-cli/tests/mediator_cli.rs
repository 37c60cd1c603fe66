//! `mpc-did mediator register`, `send` and `inbox [--watch]` run as a user would: the real
//! `mpc-did` binary, wallets in temporary homes, and a mediator started in-process on
//! loopback (as `mpc-did demo` does). spec/mediator.md §8.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{bin, loopback_config, mpc_did, ok, wait_until};
use mpc_did_mediator::Mediator;
use mpc_did_wallet::{Method, Wallet};
use serde_json::Value;

fn new_identity(home: &Path, name: &str) -> String {
    let w = Wallet::open(home).unwrap();
    w.create_identity(name, Method::Key).unwrap().did
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_send_inbox_and_watch() {
    let data = tempfile::tempdir().unwrap();
    let m = Mediator::builder(loopback_config(data.path()))
        .start()
        .await
        .unwrap();

    let alice_home = tempfile::tempdir().unwrap();
    let bob_home = tempfile::tempdir().unwrap();
    let alice = new_identity(alice_home.path(), "alice");
    let bob = new_identity(bob_home.path(), "bob");
    let (ah, bh) = (alice_home.path().to_owned(), bob_home.path().to_owned());
    let inv = m.invitation_url.clone();
    let url = m.public_url.clone();

    let run = move |f: Box<dyn FnOnce() -> String + Send>| tokio::task::spawn_blocking(f);

    // Register from the invitation URL; the identity's service now names the mediator.
    let out = {
        let ah = ah.clone();
        run(Box::new(move || {
            ok(&ah, &["--json", "mediator", "register", &inv])
        }))
        .await
        .unwrap()
    };
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["did"], alice.as_str());
    assert_eq!(v["mediator"]["did"], m.did.as_str());
    assert_eq!(v["service"]["routingKeys"][0], m.routing_key.as_str());
    let w = Wallet::open(&ah).unwrap();
    assert_eq!(
        w.identity("alice").unwrap().services[0].routing_keys,
        vec![m.routing_key.clone()]
    );
    drop(w);

    // Bob sends; Alice reads and acknowledges; a second read finds nothing.
    {
        let (bh, alice, url) = (bh.clone(), alice.clone(), url.clone());
        run(Box::new(move || {
            ok(
                &bh,
                &[
                    "send",
                    &alice,
                    "--body",
                    r#"{"hello":"alice"}"#,
                    "--via",
                    &url,
                ],
            )
        }))
        .await
        .unwrap();
    }
    let out = {
        let ah = ah.clone();
        run(Box::new(move || ok(&ah, &["--json", "inbox"])))
            .await
            .unwrap()
    };
    let line: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["from"], bob.as_str());
    assert_eq!(line["body"]["hello"], "alice");
    assert_eq!(line["authenticated"], true);
    let out = {
        let ah = ah.clone();
        run(Box::new(move || ok(&ah, &["inbox"]))).await.unwrap()
    };
    assert_eq!(out.trim(), "no messages");

    // --watch: one message queued before it starts, one sent while it runs.
    {
        let (bh, alice, url) = (bh.clone(), alice.clone(), url.clone());
        run(Box::new(move || {
            ok(
                &bh,
                &["send", &alice, "--body", r#"{"n":1}"#, "--via", &url],
            )
        }))
        .await
        .unwrap();
    }
    let mut watch = bin()
        .arg("--home")
        .arg(&ah)
        .args(["--json", "inbox", "--watch", "--max", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let printed = Arc::new(AtomicUsize::new(0));
    let reader = {
        let printed = Arc::clone(&printed);
        tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map(|l| {
                    let n = serde_json::from_str::<Value>(&l.unwrap()).unwrap()["body"]["n"]
                        .as_u64()
                        .unwrap();
                    printed.fetch_add(1, Ordering::SeqCst);
                    n
                })
                .collect::<Vec<_>>()
        })
    };
    // The watch opens its live WebSocket before it prints what was queued: once the first
    // message is out, the second is sent while it runs.
    let watching = tokio::task::spawn_blocking(move || {
        wait_until(
            || printed.load(Ordering::SeqCst) > 0,
            Instant::now() + Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    assert!(watching, "the watch never printed the queued message");
    {
        let (bh, alice, url) = (bh.clone(), alice.clone(), url.clone());
        run(Box::new(move || {
            ok(
                &bh,
                &["send", &alice, "--body", r#"{"n":2}"#, "--via", &url],
            )
        }))
        .await
        .unwrap();
    }
    let ns = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ns, vec![1, 2]);
    assert!(watch.wait().unwrap().success());

    // Both were acknowledged.
    let out = {
        let ah = ah.clone();
        run(Box::new(move || ok(&ah, &["--json", "mediator", "status"])))
            .await
            .unwrap()
    };
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["message_count"], 0);

    // Sending to a DID whose mediator is unknown fails with advice.
    let out = mpc_did(
        &bh,
        &[
            "send",
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
            "--body",
            "{}",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--via"));
    m.shutdown().await;
}
