//! The relay over `wss://` (spec/rendezvous.md §4.4): the mediator's relay behind a
//! TLS-terminating reverse proxy, as spec/mediator.md §10 deploys it. Two relay clients
//! connect with `wss://localhost:PORT/relay`, check the proxy's certificate with rustls, and
//! move data both ways through a relayed stream; without the test root the certificate is
//! refused.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Config, Mediator};
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

/// A TLS proxy on loopback in front of `backend` with a fresh self-signed certificate for
/// `localhost`; returns its port and the certificate (DER) to trust.
async fn tls_front(backend: std::net::SocketAddr) -> (u16, Vec<u8>) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = ck.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert_der.clone().into()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut up = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, cert_der)
}

#[tokio::test]
async fn relay_over_wss_behind_a_tls_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayService::bind(RelayServiceConfig::default())
        .await
        .unwrap();
    let m = Mediator::builder(Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.path().join("data"),
        ..Config::default()
    })
    .service(relay)
    .start()
    .await
    .unwrap();
    let (port, root) = tls_front(m.addr).await;
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
