//! Scale-out and load: two instances sharing one real `redis-server`, duplicate
//! WebSockets, and a bounded load test (spec/mediator.md §5).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::{client, introduce, registered_pair, wait_live_sessions, wait_queued, MediatorProc};
use mpc_did_agent::client::MediatorInfo;
use mpc_did_mediator::messages::message;
use mpc_did_testkit::mediator::RedisServer;
use serde_json::json;

/// Two mediator instances on one Redis are one mediator: same DID, each delivers what
/// the other accepted, and live delivery crosses instances through pub/sub.
#[tokio::test]
async fn two_instances_share_one_redis() {
    let redis = RedisServer::start().unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let m1 = MediatorProc::start(d1.path(), &["--store", &redis.url]);
    let m2 = MediatorProc::start(d2.path(), &["--store", &redis.url]);
    assert_eq!(m1.did, m2.did);

    let a1 = client(&m1.url()).await;
    a1.register().await.unwrap();
    let a2 = a1
        .with_mediator(MediatorInfo::discover(&m2.url()).await.unwrap())
        .unwrap();
    let b = client(&m1.url()).await;
    introduce(&b, &a1); // B sends through instance 1

    // Queued through 1, picked up from 2.
    b.send(
        &a1.did,
        message("https://example.org/t/1.0/n", json!({"n": 0})),
    )
    .await
    .unwrap();
    let got = a2.fetch(10).await.unwrap();
    assert_eq!(got.len(), 1);
    a2.ack(&[got[0].id.clone()]).await.unwrap();
    assert_eq!(a1.status().await.unwrap()["message_count"], 0);

    // Live on 2, sent through 1: pushed across instances.
    let mut live = a2.live().await.unwrap();
    assert!(
        wait_live_sessions(&m2.admin_url(), 1).await,
        "live mode on instance 2"
    );
    b.send(
        &a1.did,
        message("https://example.org/t/1.0/n", json!({"n": 1})),
    )
    .await
    .unwrap();
    let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
    let (msg, _) = a2.unpack(&batch[0].bytes).await.unwrap();
    assert_eq!(msg.body["n"], 1);
    live.ack(&[batch[0].id.clone()]).await.unwrap();
    live.close().await;
}

/// Two WebSockets of the same DID: both get the message (deliver to all); nothing is
/// deleted until one acknowledges.
#[tokio::test]
async fn duplicate_websockets_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    let mut w1 = a.live().await.unwrap();
    let mut w2 = a.live().await.unwrap();
    assert!(
        wait_live_sessions(&m.admin_url(), 2).await,
        "both sockets in live mode"
    );
    b.send(
        &a.did,
        message("https://example.org/t/1.0/n", json!({"n": 5})),
    )
    .await
    .unwrap();
    let g1 = w1.next_batch(Duration::from_secs(10)).await.unwrap();
    let g2 = w2.next_batch(Duration::from_secs(10)).await.unwrap();
    assert_eq!(g1, g2);
    // The first socket dies without acknowledging: the message is still queued.
    w1.close().await;
    assert_eq!(a.status().await.unwrap()["message_count"], 1);
    w2.ack(&[g2[0].id.clone()]).await.unwrap();
    assert!(
        wait_queued(&a, 0).await,
        "the acknowledged message was not deleted"
    );
    w2.close().await;
}

/// 100 concurrent senders × 100 messages to 10 live recipients: after de-duplication by
/// message id every message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_100_clients_x_100_messages() {
    const SENDERS: usize = 100;
    const PER_SENDER: usize = 100;
    const RECIPIENTS: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    // The 100 senders share 127.0.0.1, which the per-source quota (spec/mediator.md §6.1)
    // would count as one stranger: this test is about delivery, so no quota.
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[limits]\nmax_queued_per_source = 0\n").unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&cfg));
    let url = m.url();
    let mut recipients = Vec::new();
    for _ in 0..RECIPIENTS {
        let r = client(&url).await;
        r.register().await.unwrap();
        recipients.push(r);
    }
    let mut receivers = Vec::new();
    for r in &recipients {
        let r = r.clone();
        let expected = SENDERS / RECIPIENTS * PER_SENDER;
        receivers.push(tokio::spawn(async move {
            let mut live = r.live().await.unwrap();
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut distinct = HashSet::new();
            while distinct.len() < expected {
                let batch = live.next_batch(Duration::from_secs(120)).await.unwrap();
                let ids: Vec<String> = batch.iter().map(|d| d.id.clone()).collect();
                for d in batch {
                    let (msg, _) = r.unpack(&d.bytes).await.unwrap();
                    *seen.entry(msg.id.clone()).or_default() += 1;
                    distinct.insert((msg.from.clone().unwrap(), msg.body["n"].as_u64().unwrap()));
                }
                live.ack(&ids).await.unwrap();
            }
            live.close().await;
            distinct
        }));
    }
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let s = client(&url).await;
        let to = recipients[i % RECIPIENTS].clone();
        introduce(&s, &to);
        senders.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                s.send(
                    &to.did,
                    message("https://example.org/t/1.0/n", json!({"n": n})),
                )
                .await
                .unwrap();
            }
            s.did.clone()
        }));
    }
    let mut sender_dids = Vec::new();
    for s in senders {
        sender_dids.push(s.await.unwrap());
    }
    let mut total = 0;
    for (k, r) in receivers.into_iter().enumerate() {
        let distinct = r.await.unwrap();
        let expected: HashSet<(String, u64)> = sender_dids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % RECIPIENTS == k)
            .flat_map(|(_, d)| (0..PER_SENDER as u64).map(move |n| (d.clone(), n)))
            .collect();
        assert_eq!(distinct, expected);
        total += distinct.len();
    }
    assert_eq!(total, SENDERS * PER_SENDER);
}
