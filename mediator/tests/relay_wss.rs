//! The relay over `wss://` (spec/rendezvous.md §4.4): the mediator's relay behind a
//! TLS-terminating reverse proxy, as spec/mediator.md §10 deploys it. Two relay clients
//! connect with `wss://localhost:PORT/relay`, check the proxy's certificate with rustls, and
//! move data both ways through a relayed stream; without the test root the certificate is
//! refused.
#![allow(clippy::unwrap_used)]

mod common;

use common::tls_front;
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::Mediator;
use mpc_did_rendezvous::net::{NetError, RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn identity() -> RelayIdentity {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    RelayIdentity::did_key(SigningKey::from_bytes(&seed))
}

#[tokio::test]
async fn relay_over_wss_behind_a_tls_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayService::bind(RelayServiceConfig::default())
        .await
        .unwrap();
    let m = Mediator::builder(mpc_did_testkit::mediator::loopback_config(
        &dir.path().join("data"),
    ))
    .service(relay)
    .start()
    .await
    .unwrap();
    let (port, root) = tls_front(&m.addr.to_string()).await;
    let url = format!("wss://localhost:{port}/relay");

    // The proxy's certificate is not in the Mozilla roots: refused without the extra root.
    let refused = RelayConnection::connect_ws(&url, identity(), None).await;
    assert!(
        matches!(&refused, Err(NetError::WebSocket(e)) if e.contains("TLS")),
        "an unknown issuer is refused: {:?}",
        refused.as_ref().err()
    );

    let (ia, ib) = (identity(), identity());
    let roots = [root];
    let a = RelayConnection::connect_ws_with_roots(&url, ia.clone(), None, &roots)
        .await
        .unwrap();
    let b = RelayConnection::connect_ws_with_roots(&url, ib.clone(), None, &roots)
        .await
        .unwrap();
    let key = |id: &RelayIdentity| PeerAddr::Key(id.key.verifying_key().to_bytes());
    let mut sa = a.open_stream(key(&ib)).unwrap();
    let mut sb = b.open_stream(key(&ia)).unwrap();

    // 1 MiB one way, echoed in full the other way (both directions over TLS).
    let data: Vec<u8> = (0..1usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    let want: [u8; 32] = Sha256::digest(&data).into();
    let echo = tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 20];
        sb.read_exact(&mut buf).await.unwrap();
        sb.write_all(&buf).await.unwrap();
        sb.flush().await.unwrap();
        sb
    });
    sa.write_all(&data).await.unwrap();
    sa.flush().await.unwrap();
    let mut back = vec![0u8; 1 << 20];
    sa.read_exact(&mut back).await.unwrap();
    let got: [u8; 32] = Sha256::digest(&back).into();
    assert_eq!(
        got, want,
        "the bytes come back intact through the wss relay"
    );
    drop(echo.await.unwrap());
}
