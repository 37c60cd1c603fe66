//! Two parties exchange DIDComm messages through a real (in-process) mediator on loopback.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_agent::{expect, Agent};
use mpc_did_didcomm::Message;
use mpc_did_mediator::client::{MediatorClient, MediatorInfo};
use mpc_did_mediator::{testkit, Config, Mediator, MediatorHandle};
use mpc_did_resolver::UniversalResolver;

async fn mediator(dir: &std::path::Path) -> MediatorHandle {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        ..Config::default()
    };
    Mediator::builder(config).start().await.unwrap()
}

async fn party(m: &MediatorHandle) -> Agent {
    let (did, secrets) = testkit::ephemeral_identity();
    let info = MediatorInfo::discover(&m.public_url).await.unwrap();
    let client =
        MediatorClient::new(info, &did, secrets, UniversalResolver::new().unwrap()).unwrap();
    client.register().await.unwrap();
    Agent::start(client).await.unwrap()
}

const LOBBY: &str = "https://mpc-did.org/lobby/1.0/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_subscriber_with_an_authenticated_sender() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let mut inbox = bob.subscribe(LOBBY);

    let msg = Message::new("m-1", format!("{LOBBY}join"), serde_json::json!({"n": 1}));
    alice.send(bob.did(), msg).await.unwrap();
    let got = expect(&mut inbox, Duration::from_secs(10), "join", |m| {
        Some(m.clone())
    })
    .await
    .unwrap();
    assert_eq!(got.message.id, "m-1");
    assert_eq!(got.sender.as_deref(), Some(alice.did()));
    assert!(got.meta.encrypted && got.meta.authenticated);
    m.shutdown().await;
}

/// Messages that arrive before anyone subscribed are kept (not acknowledged) and handed
/// to the first matching subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_messages_wait_for_their_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    for i in 0..3 {
        let msg = Message::new(
            format!("early-{i}"),
            format!("{LOBBY}join"),
            serde_json::json!({}),
        );
        alice.send(bob.did(), msg).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut inbox = bob.subscribe(LOBBY);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            expect(&mut inbox, Duration::from_secs(10), "early", |m| {
                Some(m.message.id.clone())
            })
            .await
            .unwrap(),
        );
    }
    ids.sort();
    assert_eq!(ids, ["early-0", "early-1", "early-2"]);
    m.shutdown().await;
}
