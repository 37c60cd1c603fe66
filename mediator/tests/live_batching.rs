//! Live `delivery` batching in the standard (wrapped) mode, on the real binary
//! (spec/mediator.md §3 "Delivery batches", §11.2 "Batching"): what is queued when a live
//! session wakes goes out as ONE authcrypt Pickup `delivery` with one attachment per
//! message; every attachment is acknowledged by id; nothing is lost, not even when the
//! mediator is killed between the push and the acknowledgement.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{registered_pair, wait_queued, MediatorProc};
use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_mediator::messages::message;
use serde_json::json;

fn note(i: usize) -> mpc_did_didcomm::Message {
    message("https://example.org/test/1.0/note", json!({ "n": i }))
}

/// The `n` of each delivered message, by store id.
async fn numbers(
    c: &MediatorClient,
    batch: &[mpc_did_agent::client::Delivered],
) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for d in batch {
        let (m, _) = c.unpack(&d.bytes).await.unwrap();
        out.insert(d.id.clone(), m.body["n"].as_u64().unwrap());
    }
    out
}

/// spec/mediator.md §11.2 "Batching": eight messages queued before the recipient goes
/// live are pushed as one `delivery` carrying eight attachments (the client's
/// `next_batch` returns the attachments of one received frame), all distinct, all
/// acknowledged with one `messages-received`; the queue is then empty. A client that
/// takes one attachment at a time (Pickup `delivery-request` with `limit` 1) still gets
/// exactly one.
#[tokio::test]
async fn queued_messages_go_out_in_one_delivery_and_are_all_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    for i in 0..8 {
        b.send(&a.did, note(i)).await.unwrap();
    }
    assert!(wait_queued(&a, 8).await);
    assert_eq!(
        a.fetch(1).await.unwrap().len(),
        1,
        "limit 1: one attachment"
    );

    let mut live = a.live().await.unwrap();
    let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
    assert_eq!(
        batch.len(),
        8,
        "one delivery, one attachment per queued message"
    );
    let got = numbers(&a, &batch).await;
    assert_eq!(
        got.values().copied().collect::<HashSet<_>>(),
        (0..8).collect(),
        "every message once"
    );
    live.ack(&batch.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(wait_queued(&a, 0).await, "all eight acknowledged");
    live.close().await;
}

/// spec/mediator.md §5 and §11.2: the mediator is killed (SIGKILL) after it pushed a
/// batch of six and the recipient acknowledged only three of them. Nothing is lost: after
/// the restart the three unacknowledged ones are still queued (the acknowledged ones may
/// come again — at-least-once), and live mode pushes them in one delivery again.
#[tokio::test]
async fn a_mediator_killed_mid_batch_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    for i in 0..6 {
        b.send(&a.did, note(i)).await.unwrap();
    }
    assert!(wait_queued(&a, 6).await);
    let mut live = a.live().await.unwrap();
    let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
    assert_eq!(batch.len(), 6, "one delivery of six");
    let first = numbers(&a, &batch).await;
    let acked: Vec<String> = batch[..3].iter().map(|d| d.id.clone()).collect();
    live.ack(&acked).await.unwrap();
    assert!(wait_queued(&a, 3).await, "three acknowledged");
    m.kill9();

    let m2 = MediatorProc::start(dir.path(), &[]);
    let a2 = MediatorClient::new(
        MediatorInfo::discover(&m2.url()).await.unwrap(),
        &a.did,
        a.secrets().clone(),
        mpc_did_resolver::UniversalResolver::new().unwrap(),
    )
    .unwrap();
    let mut live2 = a2.live().await.unwrap();
    let again = live2.next_batch(Duration::from_secs(10)).await.unwrap();
    let again_ids: HashSet<&str> = again.iter().map(|d| d.id.as_str()).collect();
    for d in &batch[3..] {
        assert!(
            again_ids.contains(d.id.as_str()),
            "unacknowledged message {} lost in the restart",
            first[&d.id]
        );
    }
    assert!(again.len() <= 6, "nothing invented");
    live2
        .ack(&again.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(wait_queued(&a2, 0).await);
    live2.close().await;
}
