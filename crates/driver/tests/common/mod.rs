//! Shared by the driver's integration tests: session pairs on loopback TCP paths.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use mpc_did_driver::{path, DriverConfig, SessionHandle};
use mpc_did_session::{Acceptor, Proposer, Session, SessionConfig};
use tokio::net::{TcpListener, TcpStream};

pub fn session_pair() -> (Session, Session) {
    let roster = [3u8; 32];
    let (p, propose) = Proposer::new([1; 16], "mpc", roster, "did:key:a", "did:key:b");
    let (acc, accept) =
        Acceptor::on_propose(&propose, "mpc", roster, "did:key:b", "did:key:a").unwrap();
    let (a, hs) = p.on_accept(&accept, SessionConfig::default(), 0).unwrap();
    let b = acc.on_handshake(&hs, SessionConfig::default(), 0).unwrap();
    (a, b)
}

pub fn handles(cfg: DriverConfig) -> (SessionHandle, SessionHandle) {
    let (a, b) = session_pair();
    (
        SessionHandle::spawn(a, cfg.clone()),
        SessionHandle::spawn(b, cfg),
    )
}

pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// Give both sessions a fresh path (the first one, or a switch).
pub async fn connect(a: &SessionHandle, b: &SessionHandle) {
    let (mut x, mut y) = tcp_pair().await;
    path::send_hello(&mut x, &a.path_id()).await.unwrap();
    assert_eq!(
        path::read_hello(&mut y, Duration::from_secs(5))
            .await
            .unwrap(),
        b.path_id()
    );
    a.attach_path(Box::new(x)).await.unwrap();
    b.attach_path(Box::new(y)).await.unwrap();
}

/// Three parties, three pairwise sessions over loopback TCP: the map the proxy needs.
pub async fn three_party_sessions() -> Vec<BTreeMap<u16, SessionHandle>> {
    mpc_did_testkit::local::local_mesh(3, |t| Box::new(t))
        .await
        .unwrap()
}
