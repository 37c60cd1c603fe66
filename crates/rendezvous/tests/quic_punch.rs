//! QUIC over the STUN socket on loopback (spec/rendezvous.md §6.1): both
//! parties gather candidates on one UDP socket each (host + srflx from a
//! real STUN server), hand the socket to quinn, run the connectivity checks
//! (the controlling side decides and nominates) and carry data both ways on
//! the chosen QUIC stream. Without a NAT the host pair wins (`Direct`).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::candidate::{CandidateKind, PathKind};
use mpc_did_rendezvous::net::connect::{default_planner, establish, gather_quic, Establish};
use mpc_did_rendezvous::net::quic::QuicEndpoint;
use mpc_did_rendezvous::net::{StunServer, StunServerConfig};
use mpc_did_rendezvous::relay::PeerAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

fn quick() -> RetransmitSchedule {
    RetransmitSchedule {
        rto: Duration::from_millis(100),
        rc: 4,
        rm: 4,
    }
}

#[tokio::test]
async fn quic_path_over_the_stun_socket_on_loopback() {
    let stun = StunServer::bind(StunServerConfig::new("127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let stun_addr = stun.local_addr().unwrap();
    let mut parties = Vec::new();
    for _ in 0..2 {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let me = sock.local_addr().unwrap();
        let g = gather_quic(&sock, &[me], stun_addr, stun.tcp_addr(), None, quick())
            .await
            .unwrap();
        // No NAT: the reflexive address is the host address (dropped as
        // redundant, RFC 8445 §5.1.3); the TCP srflx stays.
        assert!(g
            .candidates
            .iter()
            .any(|c| c.kind == CandidateKind::Host && c.addr == me));
        assert!(g
            .candidates
            .iter()
            .all(|c| c.kind != CandidateKind::ServerReflexive || c.addr != me));
        parties.push((QuicEndpoint::new(sock).unwrap(), g));
    }
    let (b, a) = (parties.pop().unwrap(), parties.pop().unwrap());
    let ea = Establish {
        quic: Some(a.0.clone()),
        relay: None,
        peer: PeerAddr::Key([1; 32]),
        local: a.1.candidates.clone(),
        remote: b.1.candidates.clone(),
        controlling: true,
        planner: default_planner(),
        deadline: Duration::from_secs(10),
    };
    let eb = Establish {
        quic: Some(b.0.clone()),
        relay: None,
        peer: PeerAddr::Key([2; 32]),
        local: b.1.candidates.clone(),
        remote: a.1.candidates.clone(),
        controlling: false,
        planner: default_planner(),
        deadline: Duration::from_secs(10),
    };
    let (ra, rb) = tokio::join!(establish(ea), establish(eb));
    let (ca, mut pa) = ra.unwrap();
    let (cb, mut pb) = rb.unwrap();
    assert_eq!(ca.kind, PathKind::Direct);
    assert_eq!(cb.kind, PathKind::Direct);
    assert_eq!(ca.remote.addr, b.0.local_addr());
    assert_eq!(cb.remote.addr, a.0.local_addr());

    // 4 MiB A → B, then B answers with a checksum-like echo of the length
    // and last bytes: the stream is reliable and ordered.
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        pa.write_all(&d2).await.unwrap();
        pa.flush().await.unwrap();
        let mut ack = [0u8; 8];
        pa.read_exact(&mut ack).await.unwrap();
        u64::from_be_bytes(ack)
    });
    let mut got = vec![0u8; data.len()];
    pb.read_exact(&mut got).await.unwrap();
    assert!(got == data, "QUIC stream corrupted the data");
    pb.write_all(&(got.len() as u64).to_be_bytes())
        .await
        .unwrap();
    assert_eq!(writer.await.unwrap(), data.len() as u64);
}
