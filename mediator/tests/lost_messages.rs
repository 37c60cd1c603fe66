//! Regression tests for the lost-message bugs other mediators shipped (issue 13), against
//! the real `mpc-did-mediator` binary on loopback: a message racing the switch to live mode,
//! a second WebSocket for the same DID, identical message bytes stored twice, a message
//! acknowledged twice. spec/mediator.md §2 (Pickup 3.0, at-least-once delivery, a sender's
//! retry of the same envelope is stored once), §5 (queues).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{registered_pair, MediatorProc};
use mpc_did_agent::client::{post_packed, ClientError, LiveConnection, MediatorClient};
use mpc_did_didcomm::envelope::{pack_encrypted, PackOptions};
use mpc_did_mediator::messages::message;
use serde_json::json;

fn text_message(i: usize) -> mpc_did_didcomm::Message {
    message("https://example.org/test/1.0/note", json!({ "n": i }))
}

/// `from`'s message number `i` to `to`, packed once: the forward's URI and bytes.
async fn pack(from: &MediatorClient, to: &str, i: usize) -> (String, Vec<u8>) {
    let mut msg = text_message(i);
    msg.from = Some(from.did.clone());
    msg.to = Some(vec![to.to_owned()]);
    let p = pack_encrypted(
        &msg,
        to,
        Some(&from.did),
        None,
        from.resolver(),
        from.secrets(),
        &PackOptions::default(),
    )
    .await
    .unwrap();
    (p.service.unwrap().uri, p.message.into_bytes())
}

async fn queued(a: &MediatorClient) -> u64 {
    a.status().await.unwrap()["message_count"].as_u64().unwrap()
}

/// Polls the queue length until it is `n` (bounded); the last value seen.
async fn queue_reaches(a: &MediatorClient, n: u64, limit: Duration) -> u64 {
    let until = Instant::now() + limit;
    loop {
        let q = queued(a).await;
        if q == n || Instant::now() > until {
            return q;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `live` until every number in `want` arrived or `limit` passed, acknowledging what
/// it gets; returns the numbers seen.
async fn read_live(
    a: &MediatorClient,
    live: &mut LiveConnection,
    want: &HashSet<u64>,
    limit: Duration,
) -> HashSet<u64> {
    let until = Instant::now() + limit;
    let mut seen = HashSet::new();
    while !want.is_subset(&seen) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let batch = match live.next_batch(left).await {
            Ok(b) => b,
            Err(ClientError::Timeout) => break,
            Err(e) => panic!("live connection failed: {e}"),
        };
        for d in &batch {
            let (msg, _) = a.unpack(&d.bytes).await.unwrap();
            seen.insert(msg.body["n"].as_u64().unwrap());
        }
        live.ack(&batch.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
            .await
            .unwrap();
    }
    seen
}

/// A message stored while its recipient switches to live mode must be pushed (or stay
/// queued), never fall between "queued before live" and "pushed live": six recipients
/// switch to live mode while their senders are in the middle of 30 messages each; every
/// message arrives live and every queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_racing_the_switch_to_live_mode_is_delivered_under_six_clients() {
    const N: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..6u64 {
        let url = m.url();
        clients.spawn(async move {
            let (a, b) = registered_pair(&url).await;
            let to = a.did.clone();
            let sender = tokio::spawn(async move {
                for i in 0..N {
                    b.send(&to, text_message(i)).await.unwrap();
                }
            });
            // Each client switches at a different point of its sender's run.
            tokio::time::sleep(Duration::from_millis(15 * c)).await;
            let mut live = a.live().await.unwrap();
            let want: HashSet<u64> = (0..N as u64).collect();
            let seen = read_live(&a, &mut live, &want, Duration::from_secs(30)).await;
            sender.await.unwrap();
            let missing: Vec<_> = want.difference(&seen).collect();
            assert!(
                missing.is_empty(),
                "client {c}: never delivered live: {missing:?}"
            );
            live.close().await;
            let left = queue_reaches(&a, 0, Duration::from_secs(10)).await;
            assert_eq!(left, 0, "client {c}: acknowledged messages still queued");
        });
    }
    while let Some(r) = clients.join_next().await {
        r.unwrap();
    }
}

/// A second live WebSocket for the same DID: closing the older one must not take the newer
/// one's registration with it (the bug: a per-DID slot removed when any socket of the DID
/// closes). Documented behaviour: every live socket of a DID is pushed every message
/// (each pushes what the store holds and it has not pushed yet); an acknowledgement over
/// either deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_websocket_for_the_same_did_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    let mut first = a.live().await.unwrap();
    let mut second = a.live().await.unwrap();
    // Both open: each message reaches both sockets.
    for i in 0..3 {
        b.send(&a.did, text_message(i)).await.unwrap();
    }
    let want: HashSet<u64> = (0..3).collect();
    let got_first = read_live(&a, &mut first, &want, Duration::from_secs(10)).await;
    let got_second = read_live(&a, &mut second, &want, Duration::from_secs(10)).await;
    assert_eq!(got_first, want, "the first socket missed messages");
    assert_eq!(got_second, want, "the second socket missed messages");
    // The older socket closes: the newer still gets what arrives next, live.
    first.close().await;
    for i in 3..6 {
        b.send(&a.did, text_message(i)).await.unwrap();
    }
    let want: HashSet<u64> = (3..6).collect();
    let got = read_live(&a, &mut second, &want, Duration::from_secs(10)).await;
    assert_eq!(got, want, "closing the first socket cut the second off");
    // A third socket, and the newest closes first: the remaining one still gets pushes.
    let third = a.live().await.unwrap();
    third.close().await;
    b.send(&a.did, text_message(6)).await.unwrap();
    let want: HashSet<u64> = [6].into();
    let got = read_live(&a, &mut second, &want, Duration::from_secs(10)).await;
    assert_eq!(got, want, "closing a newer socket cut the older one off");
    second.close().await;
    assert_eq!(queue_reaches(&a, 0, Duration::from_secs(10)).await, 0);
}

/// The same envelope posted twice (a sender's retry after a lost 202) is accepted both
/// times and stored once (spec/mediator.md §2): one queue entry, one delivery, and after
/// its acknowledgement nothing is left — no entry counted twice or never released. The
/// per-source quota is not used up by the repeats: with `max_queued_per_source = 2`, five
/// posts of one envelope plus one other message are all accepted, a third distinct one
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_bytes_stored_twice_are_one_message_and_leak_no_count() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mediator.toml");
    std::fs::write(&config, "[limits]\nmax_queued_per_source = 2\n").unwrap();
    let data = dir.path().join("data");
    let m = MediatorProc::start_with_config(&data, &[], Some(&config));
    let (a, b) = registered_pair(&m.url()).await;
    let http = mpc_did_agent::client::new_http_client().unwrap();
    let (uri, bytes) = pack(&b, &a.did, 1).await;
    for _ in 0..5 {
        post_packed(&http, &uri, bytes.clone()).await.unwrap();
    }
    assert_eq!(queued(&a).await, 1, "one envelope, one queue entry");
    let (_, other) = pack(&b, &a.did, 2).await;
    post_packed(&http, &uri, other).await.unwrap();
    let (_, third) = pack(&b, &a.did, 3).await;
    assert!(
        post_packed(&http, &uri, third).await.is_err(),
        "the source quota of 2 should refuse a third distinct message"
    );
    let got = a.fetch(10).await.unwrap();
    let mut ns: Vec<u64> = Vec::new();
    for d in &got {
        ns.push(
            a.unpack(&d.bytes).await.unwrap().0.body["n"]
                .as_u64()
                .unwrap(),
        );
    }
    ns.sort_unstable();
    assert_eq!(ns, [1, 2], "each stored message delivered once");
    a.ack(&got.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(queued(&a).await, 0, "acknowledged: nothing left");
    // The quota came back with the acknowledgement: the refused message goes in now.
    let (_, third) = pack(&b, &a.did, 3).await;
    post_packed(&http, &uri, third).await.unwrap();
    assert_eq!(queued(&a).await, 1);
}

/// A redelivered message acknowledged twice (once per delivery, or a retried
/// `messages-received`): no error for the client, and the second acknowledgement deletes
/// nothing else — the other queued message stays, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_acknowledged_twice_is_deleted_once_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    b.send(&a.did, text_message(1)).await.unwrap();
    // Delivered twice (at-least-once: not acknowledged yet).
    let first = a.fetch(10).await.unwrap();
    let again = a.fetch(10).await.unwrap();
    assert_eq!(first, again);
    b.send(&a.did, text_message(2)).await.unwrap();
    let id = first[0].id.clone();
    a.ack(std::slice::from_ref(&id)).await.unwrap();
    a.ack(std::slice::from_ref(&id)).await.unwrap();
    a.ack(&[id.clone(), id.clone()]).await.unwrap();
    assert_eq!(queued(&a).await, 1, "the other message must stay queued");
    let left = a.fetch(10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(a.unpack(&left[0].bytes).await.unwrap().0.body["n"], 2);
    // Over a live socket too: a repeated acknowledgement is not an error and the socket
    // keeps working.
    let mut live = a.live().await.unwrap();
    let want: HashSet<u64> = [2].into();
    assert_eq!(
        read_live(&a, &mut live, &want, Duration::from_secs(10)).await,
        want
    );
    live.ack(std::slice::from_ref(&left[0].id)).await.unwrap();
    b.send(&a.did, text_message(3)).await.unwrap();
    let want: HashSet<u64> = [3].into();
    assert_eq!(
        read_live(&a, &mut live, &want, Duration::from_secs(10)).await,
        want
    );
    live.close().await;
    assert_eq!(queue_reaches(&a, 0, Duration::from_secs(10)).await, 0);
}
