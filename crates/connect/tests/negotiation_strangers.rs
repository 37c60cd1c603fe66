//! A stranger who knows a party's DID floods it with negotiation messages (spec/session.md
//! §2 "at most 256 are kept", spec/security.md §11 principle 3: the stranger pays, not the
//! honest party). Proposals waiting for `accept` and `candidates` that overtook their
//! proposal used to share one FIFO each (256 and 64 entries), the oldest dropped: 300 junk
//! proposals evicted a peer's real proposal, and the acceptor's `accept` timed out. Now they
//! are held per authenticated sender, and a sender evicts only its own.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_connect::{Binding, Connector, ConnectorConfig};
use mpc_did_mediator::MediatorHandle;
use mpc_did_session::messages::{CANDIDATES_TYPE, PROPOSE_TYPE};
use mpc_did_testkit::mediator::{loopback_mediator as mediator, registered_agent};
use mpc_did_testkit::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn party(m: &MediatorHandle) -> Connector {
    let (agent, _) = registered_agent(&m.public_url).await;
    let config = ConnectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(60),
        ..ConnectorConfig::default()
    };
    Connector::start(agent, config).await.unwrap()
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    hex::encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_proposals_do_not_evict_a_waiting_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    let (stranger, _) = registered_agent(&m.public_url).await;
    for (x, y) in [(alice.agent(), bob.agent()), (bob.agent(), alice.agent())] {
        x.learn_service(y.did(), y.own_service()).await.unwrap();
    }
    stranger
        .learn_service(bob.agent().did(), bob.agent().own_service())
        .await
        .unwrap();
    let (a_did, b_did) = (alice.agent().did().to_owned(), bob.agent().did().to_owned());
    let binding = Binding::adhoc(&a_did, &b_did);

    // Alice proposes (her `propose` and `candidates` reach bob before he accepts).
    let proposing = {
        let (alice, b_did, binding) = (alice.clone(), b_did.clone(), binding.clone());
        tokio::spawn(async move { alice.establish(&b_did, &binding, true).await })
    };
    assert!(
        wait_until(
            || bob.negotiation_stats().received >= 2,
            Duration::from_secs(20)
        )
        .await,
        "{:?}",
        bob.negotiation_stats()
    );

    // The stranger: 300 signed proposals, and 100 `candidates` for sessions bob does not know.
    let stranger_binding = Binding::adhoc(stranger.did(), &b_did);
    for _ in 0..300 {
        let sid = random_hex();
        let propose = mpc_did_didcomm::Message::new(
            &sid,
            PROPOSE_TYPE,
            serde_json::json!({
                "session_id": sid,
                "mpc_session_id": stranger_binding.mpc_session_id,
                "roster_hash": hex::encode(stranger_binding.roster_hash),
                "suite": "Noise_KK_25519_AESGCM_SHA256",
                "noise_static": "ab".repeat(32),
            }),
        );
        stranger.send_signed(&b_did, propose).await.unwrap();
    }
    for _ in 0..100 {
        let sid = random_hex();
        let cands = mpc_did_didcomm::Message::new(
            random_hex(),
            CANDIDATES_TYPE,
            serde_json::json!({ "session_id": sid, "candidates": [], "end_of_candidates": true }),
        );
        stranger.send(&b_did, cands).await.unwrap();
    }
    assert!(
        wait_until(
            || bob.negotiation_stats().received >= 402,
            Duration::from_secs(30)
        )
        .await,
        "{:?}",
        bob.negotiation_stats()
    );

    // Bob now accepts alice's proposal: it is still there, and so are her candidates.
    let eb = bob.establish(&a_did, &binding, false).await.unwrap();
    let ea = proposing.await.unwrap().unwrap();
    assert!(
        !eb.remote.is_empty(),
        "alice's early candidates were lost: {:?}",
        bob.negotiation_stats()
    );
    let mut s = ea.handle.open_stream().await.unwrap();
    s.write_all(b"past the stranger").await.unwrap();
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut buf = [0u8; 17];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"past the stranger");
    let st = bob.negotiation_stats();
    assert!(st.evicted >= 300 - 8, "{st:?}");
    m.shutdown().await;
}
