//! Finding 13 (spec/rendezvous.md §7.1): one client used to be able to hold every STUN/TCP
//! slot (256) with idle connections. Now one address holds at most `max_tcp_per_source`
//! (default 8) and everyone else still gets answers.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::net::{binding_tcp, StunServer, StunServerConfig};
use mpc_did_testkit::wait_until;
use tokio::net::{TcpSocket, TcpStream};

async fn idle_from(src: &str, server: SocketAddr) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(format!("{src}:0").parse().ok()?).ok()?;
    sock.connect(server).await.ok()
}

#[tokio::test]
async fn one_client_cannot_hold_every_tcp_slot() {
    let server = StunServer::bind(StunServerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let tcp = server.tcp_addr().unwrap();
    // 300 idle connections from one address: more than the 256 slots.
    let mut held = Vec::new();
    for _ in 0..300 {
        if let Some(s) = idle_from("127.0.0.2", tcp).await {
            held.push(s);
        }
    }
    let m = server.metrics();
    let seen = || {
        m.tcp_accepted.load(Ordering::Relaxed) + m.tcp_refused.load(Ordering::Relaxed)
            >= held.len() as u64
    };
    assert!(
        wait_until(seen, Duration::from_secs(10)).await,
        "the server did not see every connection"
    );
    // Another client is answered at once.
    let quick = RetransmitSchedule {
        rto: Duration::from_millis(200),
        rc: 3,
        rm: 4,
    };
    let (r, me) = binding_tcp(tcp, None, quick)
        .await
        .expect("another client got no STUN/TCP answer");
    assert_eq!(r.mapped, me);
    assert!(m.tcp_accepted.load(Ordering::Relaxed) <= 9, "{m:?}");
    assert!(
        m.tcp_refused_per_source.load(Ordering::Relaxed) >= 292,
        "{m:?}"
    );
    drop(held);
    server.shutdown().await;
}
