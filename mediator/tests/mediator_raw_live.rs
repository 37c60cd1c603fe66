//! Raw live mode (spec/mediator.md §3.1) against the real `mpc-did-mediator` binary on
//! loopback: queued-before-live and live pushes as binary frames, deletion only on
//! `messages-received`, redelivery of what was not acknowledged, two instances on one
//! Redis, and the wrapped mode beside it.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::{client, introduce, registered_pair, wait_live_sessions, wait_queued, MediatorProc};
use mpc_did_agent::client::{Delivered, LiveConnection, MediatorClient, MediatorInfo};
use mpc_did_mediator::messages::message;
use mpc_did_testkit::mediator::RedisServer;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

fn note(i: u64) -> mpc_did_didcomm::Message {
    message("https://example.org/test/1.0/note", json!({ "n": i }))
}

/// Reads pushes until `want` distinct messages came; returns `n` → delivered item.
async fn take(
    a: &MediatorClient,
    live: &mut LiveConnection,
    want: usize,
) -> HashMap<u64, Delivered> {
    let mut got = HashMap::new();
    while got.len() < want {
        for d in live.next_batch(WAIT).await.unwrap() {
            let (msg, meta) = a.unpack(&d.bytes).await.unwrap();
            assert!(
                meta.authenticated,
                "the pushed bytes are the sender's authcrypt"
            );
            got.insert(msg.body["n"].as_u64().unwrap(), d);
        }
    }
    got
}

fn ids(got: &HashMap<u64, Delivered>, ns: impl IntoIterator<Item = u64>) -> Vec<String> {
    ns.into_iter().map(|n| got[&n].id.clone()).collect()
}

/// spec/mediator.md §3.1: queued-before-live messages and live arrivals are pushed raw;
/// they are the stored forwarded bytes (the same as a `delivery-request` returns); only
/// acknowledged ones are deleted, and the rest come back on the next raw connection.
#[tokio::test]
async fn raw_live_delivers_acks_and_redelivers() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    for i in 0..3 {
        b.send(&a.did, note(i)).await.unwrap();
    }
    let queued = a.fetch(10).await.unwrap();
    assert_eq!(queued.len(), 3);

    let mut live = a.live_raw(WAIT).await.unwrap();
    let got = take(&a, &mut live, 3).await;
    let mut pushed: Vec<Delivered> = got.values().cloned().collect();
    let mut expected = queued.clone();
    pushed.sort_by(|x, y| x.id.cmp(&y.id));
    expected.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(
        pushed, expected,
        "raw pushes carry the stored message as is"
    );
    live.ack(&ids(&got, 0..3)).await.unwrap();

    for i in 3..6 {
        b.send(&a.did, note(i)).await.unwrap();
    }
    let got = take(&a, &mut live, 3).await;
    assert_eq!(
        got.keys().copied().collect::<BTreeSet<_>>(),
        (3..6).collect()
    );
    // Acknowledge 3 and 4 only; 5 stays queued.
    live.ack(&ids(&got, 3..5)).await.unwrap();
    assert!(wait_queued(&a, 1).await, "3 and 4 were not deleted");
    live.close().await;

    let mut again = a.live_raw(WAIT).await.unwrap();
    let got = take(&a, &mut again, 1).await;
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![5]);
    again.ack(&ids(&got, [5])).await.unwrap();
    assert!(wait_queued(&a, 0).await, "5 was not deleted");
    again.close().await;

    // The wrapped mode is unchanged beside it.
    let mut wrapped = a.live().await.unwrap();
    b.send(&a.did, note(6)).await.unwrap();
    let got = take(&a, &mut wrapped, 1).await;
    assert!(got.contains_key(&6));
    wrapped.ack(&ids(&got, [6])).await.unwrap();
    wrapped.close().await;
}

/// spec/mediator.md §3.1: raw pushes go only to the DID that switched raw mode on; a
/// second DID's raw socket on the same mediator sees only its own messages.
#[tokio::test]
async fn raw_live_is_bound_to_its_did() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.url()).await;
    a.register().await.unwrap();
    let c = client(&m.url()).await;
    c.register().await.unwrap();
    let b = client(&m.url()).await;
    introduce(&b, &a);
    introduce(&b, &c);
    let mut la = a.live_raw(WAIT).await.unwrap();
    let mut lc = c.live_raw(WAIT).await.unwrap();
    b.send(&a.did, note(1)).await.unwrap();
    b.send(&c.did, note(2)).await.unwrap();
    let ga = take(&a, &mut la, 1).await;
    let gc = take(&c, &mut lc, 1).await;
    assert_eq!(ga.keys().copied().collect::<Vec<_>>(), vec![1]);
    assert_eq!(gc.keys().copied().collect::<Vec<_>>(), vec![2]);
    // Nothing else arrives on either socket.
    assert!(la.next_batch(Duration::from_millis(300)).await.is_err());
    assert!(lc.next_batch(Duration::from_millis(300)).await.is_err());
    la.close().await;
    lc.close().await;
}

/// spec/mediator.md §3.1, §5: raw live on instance 2 of two sharing one Redis gets what
/// instance 1 accepted (pub/sub wake-up), and the acknowledgement deletes it for both.
#[tokio::test]
async fn raw_live_across_two_instances() {
    let redis = RedisServer::start().unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let m1 = MediatorProc::start(d1.path(), &["--store", &redis.url]);
    let m2 = MediatorProc::start(d2.path(), &["--store", &redis.url]);
    let a1 = client(&m1.url()).await;
    a1.register().await.unwrap();
    let a2 = a1
        .with_mediator(MediatorInfo::discover(&m2.url()).await.unwrap())
        .unwrap();
    let b = client(&m1.url()).await;
    introduce(&b, &a1);
    b.send(&a1.did, note(0)).await.unwrap();
    let mut live = a2.live_raw(WAIT).await.unwrap();
    assert!(
        wait_live_sessions(&m2.admin_url(), 1).await,
        "raw live on instance 2"
    );
    b.send(&a1.did, note(1)).await.unwrap();
    let got = take(&a2, &mut live, 2).await;
    assert_eq!(
        got.keys().copied().collect::<BTreeSet<_>>(),
        (0..2).collect()
    );
    live.ack(&ids(&got, 0..2)).await.unwrap();
    assert!(
        wait_queued(&a1, 0).await,
        "the acknowledgement deletes for both instances"
    );
    live.close().await;
}
