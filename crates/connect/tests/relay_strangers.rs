//! Finding 7 on the product path (spec/rendezvous.md §4.4-4.5): a stranger who knows a
//! party's DID floods it through the relay while the party's secure session runs on the
//! relay. The connector runs its relay connections in allow-list mode, so the relay drops
//! the stranger's packets before they reach the party's (slow) link, and the session's
//! transfer finishes at the link's speed.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_did_connect::{
    Binding, Connector, ConnectorConfig, PathInfo, RelayIdentity, RelaySetup, UpgradeConfig,
};
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig, RelayServiceHandle};
use mpc_did_mediator::{Mediator, MediatorHandle};
use mpc_did_rendezvous::net::RelayConnection;
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use mpc_did_testkit::mediator::{loopback_config, registered_agent};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

async fn mediator(dir: &std::path::Path) -> (MediatorHandle, RelayServiceHandle) {
    let config = loopback_config(dir);
    // The relay's default limits: the flood stays under its per-client rate limit.
    let relay = RelayService::bind(RelayServiceConfig::default())
        .await
        .unwrap();
    let h = relay.handle();
    let m = Mediator::builder(config)
        .service(relay)
        .start()
        .await
        .unwrap();
    (m, h)
}

fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut s);
    s
}

/// A party on the relay only, reaching it at `relay_url`.
async fn party(m: &MediatorHandle, relay_url: String) -> Connector {
    let (agent, signing) = registered_agent(&m.public_url).await;
    let config = ConnectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(20),
        relay: Some(RelaySetup {
            url: relay_url,
            identity: RelayIdentity::did_key(signing),
            expected_relay: Some(m.did.clone()),
        }),
        force_relay: true,
        upgrade: UpgradeConfig {
            enabled: false,
            ..UpgradeConfig::default()
        },
        ..ConnectorConfig::default()
    };
    Connector::start(agent, config).await.unwrap()
}

/// A loopback TCP proxy to `to` whose server → client direction is paced to `rate` bytes
/// per second: a party's slow access link (the finding measured 20 Mbit/s). Also returns
/// the bytes it carried in that direction.
async fn slow_link(to: SocketAddr, rate: u64) -> (SocketAddr, Arc<AtomicU64>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let carried = Arc::new(AtomicU64::new(0));
    let counter = carried.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let sock = TcpSocket::new_v4().unwrap();
                let _ = sock.set_recv_buffer_size(64 << 10);
                let Ok(upstream) = sock.connect(to).await else {
                    return;
                };
                let (mut ur, mut uw) = upstream.into_split();
                let (mut cr, mut cw) = client.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                    let _ = uw.shutdown().await;
                });
                let start = tokio::time::Instant::now();
                let mut sent = 0u64;
                let mut buf = vec![0u8; 16 << 10];
                loop {
                    let n = match ur.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                    sent += n as u64;
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                    // Pacing the link, not a test wait.
                    tokio::time::sleep_until(
                        start + Duration::from_secs_f64(sent as f64 / rate as f64),
                    )
                    .await;
                }
            });
        }
    });
    (addr, carried)
}

// Bound: 3 MiB through the relayed session within 20 s (about 1.5 s here, the link's
// speed) while the stranger sends up to ~7 MiB/s at the receiver's DID, and the
// receiver's 2 MiB/s link carries less than 1 MiB besides the transfer. Before allow-lists
// the flood shared the link (~3× slower here; 25× in the finding's MPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stranger_flooding_a_partys_did_does_not_stall_its_relayed_session() {
    let dir = tempfile::tempdir().unwrap();
    let (m, relay) = mediator(dir.path()).await;
    let direct = format!("{}/relay", m.public_url.replacen("http://", "ws://", 1));
    let (link, carried) = slow_link(m.addr, 2 << 20).await;
    let alice = party(&m, direct.clone()).await;
    let bob = party(&m, format!("ws://{link}/relay")).await;

    // The stranger: a throw-away did:key on the same relay, flooding Bob's DID.
    let stranger = RelayConnection::connect_ws(
        &direct,
        RelayIdentity::did_key(SigningKey::from_bytes(&seed())),
        None,
    )
    .await
    .unwrap();
    stranger.set_send_rate(7 << 20, 512 << 10);
    let stop = Arc::new(AtomicBool::new(false));
    let bob_did = PeerAddr::Did(bob.agent().did().to_owned());
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let chunk = vec![0x55u8; 60_000];
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = stranger.open_stream(bob_did.clone()) else {
                    break;
                };
                while !stop.load(Ordering::Relaxed) && s.write_all(&chunk).await.is_ok() {}
                // Refused (PeerGone) or dropped: try again, as a flooder would (this
                // paces the flood; it waits for no condition).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stranger
        })
    };

    alice
        .agent()
        .learn_service(bob.agent().did(), bob.agent().own_service())
        .await
        .unwrap();
    bob.agent()
        .learn_service(alice.agent().did(), alice.agent().own_service())
        .await
        .unwrap();
    let (a_did, b_did) = (alice.agent().did(), bob.agent().did());
    let binding = Binding::adhoc(a_did, b_did);
    let (ea, eb) = tokio::join!(
        alice.establish(b_did, &binding, true),
        bob.establish(a_did, &binding, false)
    );
    let (ea, eb) = (ea.unwrap(), eb.unwrap());
    assert!(matches!(ea.path, PathInfo::Relayed { .. }), "{:?}", ea.path);

    let data: Vec<u8> = (0..(3usize << 20)).map(|i| (i * 13 % 251) as u8).collect();
    let started = Instant::now();
    let mut w = ea.handle.open_stream().await.unwrap();
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&d2).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut got))
        .await
        .expect("the relayed transfer did not finish within 20 s under the flood")
        .unwrap();
    let took = started.elapsed();
    let _w = writer.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    // The relay path never broke: no frame of Alice's was dropped, so no resume.
    let paths = alice.sessions().first().map(|s| s.paths_attached);
    assert_eq!(
        paths,
        Some(1),
        "the relayed session lost its path under the flood (took {took:?})"
    );
    let stranger = tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .unwrap()
        .unwrap();
    // Bob's link carried the session and little else: the flood was dropped at the relay.
    let carried = carried.load(Ordering::Relaxed);
    assert!(
        carried < data.len() as u64 + (1 << 20),
        "Bob's link carried {carried} bytes for a {} byte transfer",
        data.len()
    );
    let metrics = relay.metrics().unwrap();
    assert!(metrics.dropped_not_allowed >= 1, "{metrics:?}");
    assert!(stranger.metrics().peer_gone.load(Ordering::Relaxed) >= 1);
    eprintln!("3 MiB relayed under the flood in {took:?}; relay {metrics:?}");
    m.shutdown().await;
}
