//! Secure sessions negotiated over DIDComm through a real (in-process) mediator on
//! loopback, carried on direct TCP paths (spec/session.md §2, §7).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_agent::Agent;
use mpc_did_connect::{
    Binding, ConnectError, Connector, ConnectorConfig, PathInfo, RelayIdentity, RelaySetup,
};
use mpc_did_driver::SessionState;
use mpc_did_mediator::client::{MediatorClient, MediatorInfo};
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Config, Mediator, MediatorHandle};
use mpc_did_resolver::UniversalResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn mediator(dir: &std::path::Path) -> MediatorHandle {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        ..Config::default()
    };
    // This test is about path switches, not the relay's rate limits (tested in
    // mediator/tests/rendezvous_relay.rs): keep them out of the way.
    let relay = RelayService::bind(RelayServiceConfig {
        rate_bytes_per_sec: 1 << 30,
        burst_bytes: 64 << 20,
        max_queue_bytes: 16 << 20,
        max_queue_frames: 4096,
        ..RelayServiceConfig::default()
    })
    .await
    .unwrap();
    Mediator::builder(config)
        .service(relay)
        .start()
        .await
        .unwrap()
}

async fn party(m: &MediatorHandle) -> Connector {
    party_with(m, false).await
}

/// A party with a did:key whose Ed25519 key also answers its mediator relay's challenge.
async fn party_with(m: &MediatorHandle, force_relay: bool) -> Connector {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut secrets = mpc_did_didcomm::SecretStore::new();
    let did = secrets.insert_did_key(&signing);
    let info = MediatorInfo::discover(&m.public_url).await.unwrap();
    let client =
        MediatorClient::new(info, &did, secrets, UniversalResolver::new().unwrap()).unwrap();
    client.register().await.unwrap();
    let agent = Agent::start(client).await.unwrap();
    let relay = RelaySetup {
        url: format!("{}/relay", m.public_url.replacen("http://", "ws://", 1)),
        identity: RelayIdentity::did_key(signing),
        expected_relay: Some(m.did.clone()),
    };
    let config = ConnectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(20),
        relay: Some(relay),
        force_relay,
        ..ConnectorConfig::default()
    };
    Connector::start(agent, config).await.unwrap()
}

async fn introduce(a: &Connector, b: &Connector) {
    a.agent()
        .learn_service(b.agent().did(), b.agent().own_service())
        .await
        .unwrap();
    b.agent()
        .learn_service(a.agent().did(), a.agent().own_service())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_session_carries_data_and_survives_a_broken_path() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    introduce(&alice, &bob).await;
    let (a_did, b_did) = (alice.agent().did().to_owned(), bob.agent().did().to_owned());
    let binding = Binding::adhoc(&a_did, &b_did);
    assert_eq!(binding, Binding::adhoc(&b_did, &a_did));

    let (ea, eb) = tokio::join!(
        alice.establish(&b_did, &binding, true),
        bob.establish(&a_did, &binding, false)
    );
    let (ea, eb) = (ea.unwrap(), eb.unwrap());
    assert_eq!(ea.session_id, eb.session_id);
    assert!(matches!(
        ea.path,
        mpc_did_connect::PathInfo::Direct { remote: Some(_) }
    ));

    let mut s = ea.handle.open_stream().await.unwrap();
    s.write_all(b"over a negotiated session").await.unwrap();
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut buf = [0u8; 25];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over a negotiated session");

    // Break the path from the acceptor's side (as a NAT timeout would): the proposer
    // re-dials and the session resumes; bytes written meanwhile arrive.
    let (dead, other_end) = tokio::io::duplex(64);
    drop(other_end);
    eb.handle.attach_path(Box::new(dead)).await.unwrap();
    s.write_all(b"after").await.unwrap();
    let mut after = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut after))
        .await
        .expect("the path was not restored")
        .unwrap();
    assert_eq!(&after, b"after");
    assert_eq!(alice.sessions().len(), 1);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_for_another_mpc_session_is_declined() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    introduce(&alice, &bob).await;
    let (a_did, b_did) = (alice.agent().did().to_owned(), bob.agent().did().to_owned());
    let ours = Binding::adhoc(&a_did, &b_did);
    let mut theirs = ours.clone();
    theirs.roster_hash[0] ^= 1;
    let (ea, eb) = tokio::join!(
        alice.establish(&b_did, &theirs, true),
        bob.establish(&a_did, &ours, false)
    );
    assert!(
        matches!(ea, Err(ConnectError::Closed { code: 1, .. })),
        "{ea:?}"
    );
    assert!(matches!(eb, Err(ConnectError::Handshake { .. })), "{eb:?}");
    assert!(alice.sessions().is_empty());
    let _ = SessionState::NoPath;
    m.shutdown().await;
}

/// issue 6: a forced-relay session carries data, and survives forced switches
/// relay → direct → relay in the middle of a transfer without losing a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_path_and_switches_between_relay_and_direct() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party_with(&m, true).await, party(&m).await);
    introduce(&alice, &bob).await;
    let (a_did, b_did) = (alice.agent().did().to_owned(), bob.agent().did().to_owned());
    let binding = Binding::adhoc(&a_did, &b_did);
    let (ea, eb) = tokio::join!(
        alice.establish(&b_did, &binding, true),
        bob.establish(&a_did, &binding, false)
    );
    let (ea, eb) = (ea.unwrap(), eb.unwrap());
    assert!(matches!(ea.path, PathInfo::Relayed { .. }), "{:?}", ea.path);

    let total = 4 << 20;
    let mut s = ea.handle.open_stream().await.unwrap();
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in data.chunks(32 * 1024) {
            s.write_all(chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        data
    });
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut switched = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .expect("stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > total / 3 && switched == 0 {
            switched = 1;
            assert!(matches!(
                alice.reconnect(&ea, false).await.unwrap(),
                PathInfo::Direct { .. }
            ));
        }
        if got.len() > 2 * total / 3 && switched == 1 {
            switched = 2;
            assert!(matches!(
                alice.reconnect(&ea, true).await.unwrap(),
                PathInfo::Relayed { .. }
            ));
        }
    }
    let sent = writer.await.unwrap();
    assert_eq!(switched, 2);
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes differ after path switches");
    m.shutdown().await;
}
