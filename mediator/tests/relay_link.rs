//! `RelayLink` against the mediator's relay service on loopback, stopped and started again
//! on the same port (spec/rendezvous.md §7.3 "Re-attaching"): the link reports the loss
//! once, re-dials with backoff, reports it is back once, and its new connection keeps the
//! allow-list, so the peer it allowed reaches it through the restarted relay and a
//! stranger does not.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Config, Mediator, MediatorHandle};
use mpc_did_rendezvous::net::{
    Backoff, RelayConnection, RelayDial, RelayIdentity, RelayLink, RelayLinkEvent,
};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use rand_core::{OsRng, RngCore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn identity() -> RelayIdentity {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    RelayIdentity::did_key(SigningKey::from_bytes(&seed))
}

fn key_of(id: &RelayIdentity) -> PeerAddr {
    PeerAddr::Key(id.key.verifying_key().to_bytes())
}

async fn start(data: &std::path::Path, listen: SocketAddr) -> MediatorHandle {
    let config = Config {
        listen,
        data: data.to_path_buf(),
        ..Config::default()
    };
    let relay = RelayService::bind(RelayServiceConfig::default())
        .await
        .unwrap();
    Mediator::builder(config)
        .service(relay)
        .start()
        .await
        .unwrap()
}

async fn next_event(rx: &mut tokio::sync::broadcast::Receiver<RelayLinkEvent>) -> RelayLinkEvent {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("no link event within 20 s")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_comes_back_after_a_relay_restart_with_its_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let addr = m.addr;
    let url = format!("ws://{addr}/relay");
    let (me, friend, stranger) = (identity(), identity(), identity());
    let link = RelayLink::connect(
        RelayDial {
            url: url.clone(),
            identity: me.clone(),
            expected_relay: Some(m.did.clone()),
            extra_roots: Vec::new(),
        },
        true,
        Backoff::default(),
    )
    .await
    .unwrap();
    link.allow_peer(&key_of(&friend));
    let mut events = link.subscribe();
    let first = link.current().unwrap();

    // The relay goes away (drain) and comes back on the same port 1 s later.
    m.shutdown().await;
    match next_event(&mut events).await {
        RelayLinkEvent::Down { url: u, .. } => assert_eq!(u, url),
        other => panic!("expected Down, got {other:?}"),
    }
    assert!(!first.is_open(), "the old connection must be closed");
    assert!(link.current().is_none());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = start(dir.path(), addr).await;
    match next_event(&mut events).await {
        RelayLinkEvent::Up { attempts, .. } => assert!(attempts >= 1),
        other => panic!("expected Up, got {other:?}"),
    }
    let conn = link.connection(Duration::from_secs(5)).await.unwrap();
    assert!(conn.allowed_peers().unwrap().contains(&key_of(&friend)));

    // The allowed friend reaches us through the restarted relay; the stranger does not.
    let f = RelayConnection::connect_ws(&url, friend.clone(), Some(m.did.clone()))
        .await
        .unwrap();
    let s = RelayConnection::connect_ws(&url, stranger, Some(m.did.clone()))
        .await
        .unwrap();
    let mut from_stranger = s.open_stream(key_of(&me)).unwrap();
    let _ = from_stranger.write_all(b"junk").await;
    let mut to_me = f.open_stream(key_of(&me)).unwrap();
    to_me.write_all(b"hello again").await.unwrap();
    let mut mine = conn.open_stream(key_of(&friend)).unwrap();
    let mut got = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), mine.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got, b"hello again");
    // The stranger got `PeerGone` (its stream failed) rather than reaching us.
    let mut buf = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(5), from_stranger.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Err(_))),
        "the stranger's stream should fail: {r:?}"
    );
    // One Down and one Up: nothing more was announced.
    assert!(events.try_recv().is_err());
    m.shutdown().await;
}
