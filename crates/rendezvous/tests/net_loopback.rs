//! The tokio STUN shell on loopback: server-reflexive discovery over UDP
//! and TCP, NAT classification with an alternate address (RFC 5780 §4.3;
//! on loopback there is no NAT), malformed input counted while service goes
//! on, and the retransmission schedule ending in a timeout.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::nat::NatMapping;
use mpc_did_rendezvous::net::{
    binding_tcp, binding_udp, classify_nat_udp, NetError, StunServer, StunServerConfig,
};
use tokio::net::UdpSocket;

fn quick() -> RetransmitSchedule {
    RetransmitSchedule {
        rto: Duration::from_millis(100),
        rc: 4,
        rm: 4,
    }
}

#[tokio::test]
async fn udp_and_tcp_discovery_on_loopback() {
    let mut cfg = StunServerConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.alternate = Some("127.0.0.2:0".parse().unwrap());
    let server = StunServer::bind(cfg).await.unwrap();
    let primary = server.local_addr().unwrap();
    assert_eq!(server.udp_addrs().len(), 3);

    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = binding_udp(&sock, primary, quick()).await.unwrap();
    assert_eq!(r.mapped, sock.local_addr().unwrap());
    assert_eq!(r.origin, Some(primary));
    assert_eq!(r.other, server.other_addr());

    let (r, me) = binding_tcp(server.tcp_addr().unwrap(), None, quick())
        .await
        .unwrap();
    assert_eq!(r.mapped, me);

    let (mapping, obs) = classify_nat_udp(&sock, primary, quick()).await.unwrap();
    assert_eq!(mapping, NatMapping::NoNat);
    assert_eq!(obs.test1, Some(sock.local_addr().unwrap()));
    assert!(server.metrics().answered.load(Ordering::Relaxed) >= 3);
    server.shutdown().await;
}

#[tokio::test]
async fn alternate_sockets_answer_and_see_the_same_mapping() {
    // Tests II and III reach A2:P1 and A2:P2; without a NAT every server
    // address sees the same source address: endpoint-independent by construction.
    let mut cfg = StunServerConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.alternate = Some("127.0.0.2:0".parse().unwrap());
    cfg.tcp = false;
    let server = StunServer::bind(cfg).await.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for addr in server.udp_addrs() {
        let r = binding_udp(&sock, *addr, quick()).await.unwrap();
        assert_eq!(r.mapped, sock.local_addr().unwrap());
        assert_eq!(r.origin, Some(*addr));
    }
}

#[tokio::test]
async fn malformed_traffic_is_counted_and_service_continues() {
    let server = StunServer::bind(StunServerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let primary = server.local_addr().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [&b"hello"[..], &[0u8; 20], &[0xFF; 3000]] {
        sock.send_to(junk, primary).await.unwrap();
    }
    // A garbage TCP stream is cut off ...
    let mut tcp = tokio::net::TcpStream::connect(server.tcp_addr().unwrap())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, &[0xC0; 40])
        .await
        .unwrap();
    let mut b = [0u8; 8];
    let n = tokio::io::AsyncReadExt::read(&mut tcp, &mut b)
        .await
        .unwrap_or(0);
    assert_eq!(n, 0);
    // ... and the server still answers everyone.
    let r = binding_udp(&sock, primary, quick()).await.unwrap();
    assert_eq!(r.mapped, sock.local_addr().unwrap());
    assert_eq!(server.metrics().malformed.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn silent_server_times_out_after_the_schedule() {
    // A bound socket that never answers.
    let sink = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let s = RetransmitSchedule {
        rto: Duration::from_millis(20),
        rc: 3,
        rm: 2,
    };
    let r = binding_udp(&sock, sink.local_addr().unwrap(), s).await;
    assert!(matches!(r, Err(NetError::TimedOut)), "{r:?}");
    // The requests followed the schedule: 3 sends.
    let mut buf = [0u8; 64];
    let mut n = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(50), sink.recv_from(&mut buf)).await
    {
        n += 1;
    }
    assert_eq!(n, 3);
}
