//! The storage contract (spec/mediator.md §5), run against both backends.
#![allow(clippy::unwrap_used)]

use super::*;
use mpc_did_testkit::mediator::RedisServer;

const LIMITS: QueueLimits = QueueLimits {
    max_messages: 3,
    max_bytes: 1000,
};

async fn contract<S: Store>(s: &S) {
    // Grants and keys (Coordinate Mediation 2.0).
    assert!(!s.has_grant("did:ex:a").await.unwrap());
    s.grant("did:ex:a").await.unwrap();
    s.grant("did:ex:a").await.unwrap();
    assert!(s.has_grant("did:ex:a").await.unwrap());
    assert_eq!(
        s.add_key("did:ex:a", "did:ex:a#k1").await.unwrap(),
        KeyUpdate::Success
    );
    assert_eq!(
        s.add_key("did:ex:a", "did:ex:a#k1").await.unwrap(),
        KeyUpdate::NoChange
    );
    assert_eq!(
        s.add_key("did:ex:b", "did:ex:a#k1").await.unwrap(),
        KeyUpdate::Conflict
    );
    assert_eq!(
        s.add_key("did:ex:a", "did:ex:a").await.unwrap(),
        KeyUpdate::Success
    );
    assert_eq!(
        s.keys("did:ex:a").await.unwrap(),
        vec!["did:ex:a", "did:ex:a#k1"]
    );
    assert_eq!(
        s.key_owner("did:ex:a#k1").await.unwrap().as_deref(),
        Some("did:ex:a")
    );
    assert_eq!(
        s.remove_key("did:ex:b", "did:ex:a#k1").await.unwrap(),
        KeyUpdate::Conflict
    );
    assert_eq!(
        s.remove_key("did:ex:a", "did:ex:a#k1").await.unwrap(),
        KeyUpdate::Success
    );
    assert_eq!(
        s.remove_key("did:ex:a", "did:ex:a#k1").await.unwrap(),
        KeyUpdate::NoChange
    );
    assert_eq!(s.key_owner("did:ex:a#k1").await.unwrap(), None);

    // Queues (Pickup 3.0): order, duplicates, limits, status, removal.
    let mut arrivals = s.arrivals();
    let a = s
        .enqueue("did:ex:a", "did:ex:a", b"one", LIMITS)
        .await
        .unwrap();
    assert!(!a.duplicate);
    let again = s
        .enqueue("did:ex:a", "did:ex:a", b"one", LIMITS)
        .await
        .unwrap();
    assert_eq!(
        again,
        Enqueued {
            id: a.id.clone(),
            duplicate: true
        }
    );
    let b = s
        .enqueue("did:ex:a", "did:ex:a#k2", b"two!", LIMITS)
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let v = arrivals.recv().await.unwrap();
            if v == "did:ex:a" {
                return v;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, "did:ex:a");
    let st = s.status("did:ex:a", None).await.unwrap();
    assert_eq!((st.message_count, st.total_bytes), (2, 7));
    assert!(st.oldest_ms.unwrap() <= st.newest_ms.unwrap());
    let st = s.status("did:ex:a", Some("did:ex:a#k2")).await.unwrap();
    assert_eq!((st.message_count, st.total_bytes), (1, 4));
    assert_eq!(
        s.status("did:ex:nobody", None).await.unwrap(),
        QueueStatus::default()
    );

    let all = s.fetch("did:ex:a", None, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.data.as_slice()).collect::<Vec<_>>(),
        [&b"one"[..], b"two!"]
    );
    assert_eq!(all[1].recipient_key, "did:ex:a#k2");
    assert_eq!(s.fetch("did:ex:a", None, 1).await.unwrap().len(), 1);
    let only = s.fetch("did:ex:a", Some("did:ex:a#k2"), 10).await.unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].id, b.id);

    // Limits refuse explicitly and leave the queue as it was.
    s.enqueue("did:ex:a", "did:ex:a", b"three", LIMITS)
        .await
        .unwrap();
    assert!(matches!(
        s.enqueue("did:ex:a", "did:ex:a", b"four", LIMITS).await,
        Err(StoreError::QueueFull("max_messages"))
    ));
    assert!(matches!(
        s.enqueue("did:ex:c", "did:ex:c", &[7u8; 1001], LIMITS)
            .await,
        Err(StoreError::QueueFull("max_bytes"))
    ));
    assert_eq!(
        s.totals().await.unwrap(),
        StoreTotals {
            messages: 3,
            bytes: 12
        }
    );

    // `still_queued` names what is waiting, for its owner only.
    let still = s
        .still_queued("did:ex:a", &[a.id.clone(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(still, std::iter::once(a.id.clone()).collect());
    assert!(s
        .still_queued("did:ex:other", std::slice::from_ref(&a.id))
        .await
        .unwrap()
        .is_empty());

    // Removal: only listed ids, replays are harmless, other owners untouched.
    assert_eq!(
        s.remove("did:ex:other", std::slice::from_ref(&a.id))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.remove("did:ex:a", &[a.id.clone(), "nope".into()])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.remove("did:ex:a", std::slice::from_ref(&a.id))
            .await
            .unwrap(),
        0
    );
    assert!(s
        .still_queued("did:ex:a", std::slice::from_ref(&a.id))
        .await
        .unwrap()
        .is_empty());
    let left = s.fetch("did:ex:a", None, 10).await.unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(left[0].id, b.id);
    assert_eq!(
        s.totals().await.unwrap(),
        StoreTotals {
            messages: 2,
            bytes: 9
        }
    );
    let ids: Vec<String> = left.iter().map(|m| m.id.clone()).collect();
    assert_eq!(s.remove("did:ex:a", &ids).await.unwrap(), 2);
    assert_eq!(
        s.status("did:ex:a", None).await.unwrap(),
        QueueStatus::default()
    );
    assert_eq!(s.totals().await.unwrap(), StoreTotals::default());

    // Binary data survives unchanged.
    let bin: Vec<u8> = (0..=255u8).collect();
    s.enqueue(
        "did:ex:a",
        "k",
        &bin,
        QueueLimits {
            max_messages: 9,
            max_bytes: 9999,
        },
    )
    .await
    .unwrap();
    assert_eq!(s.fetch("did:ex:a", None, 9).await.unwrap()[0].data, bin);

    // Live pushes read only what was not sent yet (spec/mediator.md §11.2): what is in
    // flight is skipped by id and reported as still queued once the whole queue was seen.
    for i in 0..3u8 {
        s.enqueue("did:ex:u", "did:ex:u", &[b'u', i], LIMITS)
            .await
            .unwrap();
    }
    let all = s.fetch("did:ex:u", None, 9).await.unwrap();
    let ids: Vec<String> = all.iter().map(|m| m.id.clone()).collect();
    let sent: HashSet<String> = [ids[0].clone()].into();
    let one = s.fetch_unsent("did:ex:u", &sent, 1).await.unwrap();
    assert_eq!(one.messages, vec![all[1].clone()], "oldest unsent first");
    let rest = s.fetch_unsent("did:ex:u", &sent, 9).await.unwrap();
    assert_eq!(rest.messages, all[1..].to_vec());
    assert_eq!(rest.still_queued, Some(sent.clone()));
    s.remove("did:ex:u", &ids[..1]).await.unwrap();
    let gone = s.fetch_unsent("did:ex:u", &sent, 9).await.unwrap();
    assert_eq!(
        gone.still_queued,
        Some(HashSet::new()),
        "acknowledged elsewhere"
    );
    assert_eq!(gone.messages, all[1..].to_vec());
    s.remove("did:ex:u", &ids[1..]).await.unwrap();

    // Metadata: first writer wins.
    assert_eq!(s.meta("identity").await.unwrap(), None);
    assert_eq!(s.meta_init("identity", b"x").await.unwrap(), b"x");
    assert_eq!(s.meta_init("identity", b"y").await.unwrap(), b"x");
    assert_eq!(s.meta("identity").await.unwrap().unwrap(), b"x");
}

#[tokio::test]
async fn sled_contract() {
    let dir = tempfile::tempdir().unwrap();
    let s = SledStore::open(dir.path()).unwrap();
    contract(&s).await;
}

#[tokio::test]
async fn sled_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let limits = QueueLimits {
        max_messages: 10,
        max_bytes: 100,
    };
    {
        let s = SledStore::open(dir.path()).unwrap();
        s.enqueue("did:ex:a", "did:ex:a", b"kept", limits)
            .await
            .unwrap();
    }
    // The group-commit task releases the database lock when it sees the store dropped.
    let mut reopened = SledStore::open(dir.path());
    for _ in 0..50 {
        if reopened.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        reopened = SledStore::open(dir.path());
    }
    let s = reopened.unwrap();
    assert_eq!(
        s.fetch("did:ex:a", None, 10).await.unwrap()[0].data,
        b"kept"
    );
    assert_eq!(s.totals().await.unwrap().messages, 1);
}

#[tokio::test]
async fn redis_contract() {
    let server = RedisServer::start().unwrap();
    let s = RedisStore::connect(&server.url, "t:").await.unwrap();
    contract(&s).await;
    // A second instance on the same Redis sees the same queues and hears arrivals.
    let s2 = RedisStore::connect(&server.url, "t:").await.unwrap();
    let mut arrivals = s2.arrivals();
    // Wait for the subscriber to be up (it announces "*").
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), arrivals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ARRIVAL_ALL);
    let limits = QueueLimits {
        max_messages: 10,
        max_bytes: 100,
    };
    s.enqueue("did:ex:z", "did:ex:z", b"hi", limits)
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), arrivals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, "did:ex:z");
    assert_eq!(s2.fetch("did:ex:z", None, 10).await.unwrap()[0].data, b"hi");
}

// spec/mediator.md §5: after a Redis restart the mediator reconnects instead of failing forever.
// The server is killed and started again mid-test on the same port and data; what was
// acknowledged before survives (appendfsync always), and the same store works again.
#[tokio::test]
async fn redis_reconnects_after_restart() {
    let mut server = RedisServer::start().unwrap();
    let s = RedisStore::connect(&server.url, "r:").await.unwrap();
    let mut arrivals = s.arrivals();
    // The subscriber announces "*" once it is subscribed.
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), arrivals.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ARRIVAL_ALL);
    let limits = QueueLimits {
        max_messages: 10,
        max_bytes: 1000,
    };
    s.enqueue("did:ex:r", "did:ex:r", b"before", limits)
        .await
        .unwrap();
    server.restart().unwrap();
    // The first command may meet the dead connection and fail (storage error, retry
    // later); within a few seconds commands succeed again on a new connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut failures = 0;
    loop {
        match s.enqueue("did:ex:r", "did:ex:r", b"after", limits).await {
            Ok(_) => break,
            Err(e) => {
                failures += 1;
                assert!(
                    std::time::Instant::now() < deadline,
                    "no reconnection after {failures} failures: {e}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let got: Vec<Vec<u8>> = s
        .fetch("did:ex:r", None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.data)
        .collect();
    assert_eq!(got, vec![b"before".to_vec(), b"after".to_vec()]);
    // The arrivals subscription came back too: it announces "*" after resubscribing,
    // then forwards new arrivals.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut saw_all = false;
    while std::time::Instant::now() < deadline && !saw_all {
        if let Ok(Ok(a)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), arrivals.recv()).await
        {
            saw_all = a == ARRIVAL_ALL;
        }
    }
    assert!(saw_all, "the arrivals subscriber resubscribed");
    s.enqueue("did:ex:r", "did:ex:r", b"later", limits)
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match arrivals.recv().await {
                Ok(a) if a == "did:ex:r" => return a,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, "did:ex:r");
}
