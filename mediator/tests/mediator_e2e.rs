//! End-to-end tests of the real `mpc-did-mediator` binary on loopback
//! (spec/mediator.md §2–§6).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{client, introduce, registered_pair, tls_front, wait_queued, MediatorProc};
use mpc_did_agent::client::WsSender;
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
    let (a, b) = registered_pair(&m.url()).await;
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
    assert!(
        wait_queued(&a, 0).await,
        "acknowledged messages were not deleted"
    );
}

/// spec/mediator.md §2, §5: a message acknowledged with HTTP 202, or over WebSocket with
/// the `ack` its `please_ack` asked for, survives `kill -9`.
#[tokio::test]
async fn kill9_between_ack_and_pickup_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    for i in 0..10 {
        b.send(&a.did, text_message(i)).await.unwrap();
    }
    let mut ws = WsSender::connect(&b.info.ws, &[], Duration::from_secs(20))
        .await
        .unwrap();
    for i in 10..20 {
        ws.send(&b.did, b.secrets(), b.resolver(), &a.did, text_message(i))
            .await
            .unwrap();
    }
    let did = m.did.clone();
    m.kill9();
    let m2 = MediatorProc::start(dir.path(), &[]);
    assert_eq!(m2.did, did, "the mediator keeps its DID across restarts");
    let a2 = mpc_did_agent::client::MediatorClient::new(
        mpc_did_agent::client::MediatorInfo::discover(&m2.url())
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

fn a_secrets(c: &mpc_did_agent::client::MediatorClient) -> mpc_did_didcomm::SecretStore {
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

/// spec/mediator.md §2: `please_ack` on a forward is answered with an empty message whose
/// `ack` names the forward — over HTTP in the response (200 instead of 202) — and a refused
/// forward sent over WebSocket gets its problem report instead of an `ack`.
#[tokio::test]
async fn forward_acks_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;

    let mut msg = text_message(1);
    msg.from = Some(b.did.clone());
    msg.to = Some(vec![a.did.clone()]);
    let opts = mpc_did_didcomm::PackOptions {
        forward: false,
        ..Default::default()
    };
    let inner = mpc_did_didcomm::pack_encrypted(
        &msg,
        &a.did,
        Some(&b.did),
        None,
        b.resolver(),
        b.secrets(),
        &opts,
    )
    .await
    .unwrap();
    let fwd = mpc_did_didcomm::wrap_in_forward_with(
        &inner.message,
        &a.did,
        std::slice::from_ref(&a.info.routing_key),
        b.resolver(),
        opts.anon_enc,
        true,
    )
    .await
    .unwrap();
    let resp = reqwest::Client::new()
        .post(&a.info.http)
        .header("content-type", "application/didcomm-encrypted+json")
        .body(fwd.message.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ack = mpc_did_didcomm::Message::from_json(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(ack.type_, mpc_did_mediator::messages::types::EMPTY);
    assert_eq!(
        mpc_did_mediator::messages::acked_ids(&ack),
        vec![fwd.id.clone()]
    );
    assert_eq!(ack.thid.as_deref(), Some(fwd.id.as_str()));
    // Stored once, acknowledged again when sent again (forwards are idempotent).
    let mut ws = WsSender::connect(&b.info.ws, &[], Duration::from_secs(20))
        .await
        .unwrap();
    ws.send_forward(&fwd.message, &fwd.id).await.unwrap();
    assert_eq!(a.status().await.unwrap()["message_count"], 1);

    // A recipient nobody registered: the problem report, not an ack, ends the wait.
    let c = client(&m.url()).await;
    introduce(&b, &c);
    let err = ws
        .send(&b.did, b.secrets(), b.resolver(), &c.did, text_message(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, mpc_did_agent::client::ClientError::Problem { code, .. }
            if code == "e.p.xfer.unknown-recipient"),
        "{err}"
    );
    // The socket is still usable after a refusal.
    ws.send(&b.did, b.secrets(), b.resolver(), &a.did, text_message(3))
        .await
        .unwrap();
    assert_eq!(a.status().await.unwrap()["message_count"], 2);
    ws.close().await;
}
