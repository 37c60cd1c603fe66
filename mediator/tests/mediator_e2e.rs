//! End-to-end tests of the real `mpc-did-mediator` binary on loopback
//! (spec/mediator.md §2–§6).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{client, introduce, tls_front, MediatorProc};
use mpc_did_mediator::messages::message;
use serde_json::json;

fn text_message(i: usize) -> mpc_did_didcomm::Message {
    message("https://example.org/test/1.0/note", json!({ "n": i }))
}

/// spec/mediator.md §2: A registers, B sends to A through a forward, A picks up and
/// acknowledges; the queue is then empty.
#[tokio::test]
async fn register_forward_pickup_ack() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.invitation_url).await;
    assert_eq!(a.info.did, m.did);
    a.register().await.unwrap();
    assert_eq!(a.keys().await.unwrap(), vec![a.did.clone()]);
    let b = client(&m.url()).await;
    introduce(&b, &a);
    b.send(&a.did, text_message(7)).await.unwrap();
    assert_eq!(a.status().await.unwrap()["message_count"], 1);
    let got = a.fetch(10).await.unwrap();
    assert_eq!(got.len(), 1);
    let (msg, meta) = a.unpack(&got[0].bytes).await.unwrap();
    assert_eq!(msg.body["n"], 7);
    assert_eq!(msg.from.as_deref(), Some(b.did.as_str()));
    assert!(meta.authenticated);
    // Not deleted before messages-received (at-least-once).
    assert_eq!(a.fetch(10).await.unwrap(), got);
    a.ack(&[got[0].id.clone()]).await.unwrap();
    assert!(a.fetch(10).await.unwrap().is_empty());
    assert_eq!(a.status().await.unwrap()["message_count"], 0);
}

/// spec/mediator.md §2 (Pickup 3.0 live mode): messages queued while A was offline are
/// pushed as soon as A switches live mode on; later ones are pushed as they arrive.
#[tokio::test]
async fn offline_then_live() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.url()).await;
    a.register().await.unwrap();
    let b = client(&m.url()).await;
    introduce(&b, &a);
    for i in 0..3 {
        b.send(&a.did, text_message(i)).await.unwrap();
    }
    let mut live = a.live().await.unwrap();
    let mut seen = HashSet::new();
    while seen.len() < 3 {
        let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
        for d in &batch {
            let (msg, _) = a.unpack(&d.bytes).await.unwrap();
            seen.insert(msg.body["n"].as_u64().unwrap());
        }
        live.ack(&batch.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    for i in 3..6 {
        b.send(&a.did, text_message(i)).await.unwrap();
    }
    while seen.len() < 6 {
        let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
        for d in &batch {
            let (msg, _) = a.unpack(&d.bytes).await.unwrap();
            seen.insert(msg.body["n"].as_u64().unwrap());
        }
        live.ack(&batch.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    assert_eq!(seen, (0..6).collect());
    live.close().await;
    // Acknowledged over the socket: nothing left.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(a.status().await.unwrap()["message_count"], 0);
}

/// spec/mediator.md §5: a message acknowledged with HTTP 202 survives `kill -9`.
#[tokio::test]
async fn kill9_between_ack_and_pickup_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.url()).await;
    a.register().await.unwrap();
    let b = client(&m.url()).await;
    introduce(&b, &a);
    for i in 0..20 {
        b.send(&a.did, text_message(i)).await.unwrap();
    }
    let did = m.did.clone();
    m.kill9();
    let m2 = MediatorProc::start(dir.path(), &[]);
    assert_eq!(m2.did, did, "the mediator keeps its DID across restarts");
    let a2 = mpc_did_mediator::client::MediatorClient::new(
        mpc_did_mediator::client::MediatorInfo::discover(&m2.url())
            .await
            .unwrap(),
        &a.did,
        a_secrets(&a),
        mpc_did_resolver::UniversalResolver::new().unwrap(),
    )
    .unwrap();
    let got = a2.fetch(100).await.unwrap();
    assert_eq!(got.len(), 20);
    let mut ns = HashSet::new();
    for d in &got {
        ns.insert(
            a2.unpack(&d.bytes).await.unwrap().0.body["n"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(ns, (0..20).collect());
}

fn a_secrets(c: &mpc_did_mediator::client::MediatorClient) -> mpc_did_didcomm::SecretStore {
    c.secrets().clone()
}

/// Live delivery over `wss://` (the mediator behind a TLS-terminating proxy, as
/// spec/mediator.md §10 deploys it): the client checks the certificate with rustls.
#[tokio::test]
async fn live_delivery_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    // A TLS proxy on loopback in front of the mediator, with a certificate for localhost.
    let (tls_port, cert_der) = tls_front(&m.addr).await;

    let a = client(&m.url()).await;
    a.register().await.unwrap();
    let mut info = a.info.clone();
    info.ws = format!("wss://localhost:{tls_port}/ws");
    let a_tls = a.with_mediator(info).unwrap();
    let b = client(&m.url()).await;
    introduce(&b, &a);
    b.send(&a.did, text_message(42)).await.unwrap();
    // Without the test root the certificate is refused.
    assert!(a_tls.live().await.is_err());
    let mut live = a_tls.live_with_roots(&[cert_der]).await.unwrap();
    let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
    assert_eq!(a.unpack(&batch[0].bytes).await.unwrap().0.body["n"], 42);
    live.ack(&[batch[0].id.clone()]).await.unwrap();
    live.close().await;
}
