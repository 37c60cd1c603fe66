//! Delivery batches bounded by bytes (spec/mediator.md §3 "Delivery batches", issue 18
//! item 5), against the real `mpc-did-mediator` binary with the party's own client (which
//! refuses any message above 1 MiB): an inbox holding far more than 1 MiB is picked up in
//! several deliveries, each within the client's limit; a message that could never fit a
//! delivery is refused when it is forwarded — also where the mediator's request limit
//! (`limits.max_message_bytes`) is raised above it — so nothing accepted is stuck.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, introduce, MediatorProc};
use mpc_did_mediator::messages::message;
use serde_json::json;

fn note(n: usize, pad: usize) -> mpc_did_didcomm::Message {
    message(
        "https://example.org/test/1.0/note",
        json!({ "n": n, "pad": "x".repeat(pad) }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_inbox_in_bounded_deliveries_and_undeliverable_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mediator.toml");
    // Requests up to 4 MiB: only the delivery bound can refuse the large message below.
    std::fs::write(&conf, "[limits]\nmax_message_bytes = 4194304\n").unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&conf));
    let a = client(&m.invitation_url).await;
    a.register().await.unwrap();
    let b = client(&m.url()).await;
    introduce(&b, &a);

    // ≈ 780 KB once encrypted for A: a delivery carrying it would exceed 1 MiB.
    let refused = b.send(&a.did, note(0, 580_000)).await;
    let err = refused
        .expect_err("an undeliverable message was accepted")
        .to_string();
    assert!(err.contains("too large to deliver"), "{err}");
    assert_eq!(a.status().await.unwrap()["message_count"], 0);
    // ≈ 670 KB encrypted: accepted, and delivered alone within the limit.
    b.send(&a.did, note(1, 500_000)).await.unwrap();
    for i in 2..16 {
        b.send(&a.did, note(i, 100_000)).await.unwrap();
    }
    let mut got = Vec::new();
    let mut deliveries = 0;
    while got.len() < 15 {
        let batch = a.fetch(100).await.unwrap();
        assert!(
            !batch.is_empty(),
            "queue stuck after {} messages",
            got.len()
        );
        deliveries += 1;
        let mut ids = Vec::new();
        for d in &batch {
            let (msg, _) = a.unpack(&d.bytes).await.unwrap();
            got.push(msg.body["n"].as_u64().unwrap());
            ids.push(d.id.clone());
        }
        a.ack(&ids).await.unwrap();
        assert!(deliveries <= 15, "one message per delivery at worst");
    }
    assert_eq!(got, (1..16).collect::<Vec<u64>>());
    // 0.67 MB + 14 × 0.13 MB cannot fit one or two 1 MiB deliveries.
    assert!(deliveries >= 3, "{deliveries} deliveries");
    assert!(a.fetch(100).await.unwrap().is_empty());
}
