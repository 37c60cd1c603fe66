//! A QUIC path whose first Initial is lost (spec/rendezvous.md §6.1 "Congestion control").
//!
//! On a punched path the proposer's first Initial can reach the acceptor's NAT before the
//! acceptor's punch opened it. Here a UDP forwarder on loopback plays that NAT: it drops the
//! first datagram the client sends and forwards everything after it, both ways. quinn re-sends
//! the Initial after its probe timeout and declares the first one lost; that loss must not
//! leave the path in congestion avoidance with a window of 0.7 × the initial one (it kept
//! MB-sized MPyC messages across 70 ms at 3.9× plain TCP's time, README "MPyC between
//! emulated regions"). With quinn's plain CUBIC this test fails: the window stays near 10 kB.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use mpc_did_rendezvous::net::quic::QuicEndpoint;
use tokio::net::UdpSocket;

/// Enough to leave the handshake's window behind, small enough that the forwarder (one task,
/// default socket buffers) loses nothing else.
const PAYLOAD: usize = 64 << 10;
/// quinn's initial congestion window (`CubicConfig::default`: 10 × 1,472 bytes).
const INITIAL_WINDOW: u64 = 14_720;

/// Forwards datagrams between the first sender it hears from (the client) and `server`,
/// dropping the client's first datagram. Returns its own address.
async fn first_datagram_lost(server: SocketAddr) -> SocketAddr {
    let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut client: Option<SocketAddr> = None;
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            if from == server {
                if let Some(c) = client {
                    let _ = sock.send_to(&buf[..n], c).await;
                }
            } else if client.is_none() {
                // The NAT was still closed: this one is lost.
                client = Some(from);
            } else {
                let _ = sock.send_to(&buf[..n], server).await;
            }
        }
    });
    addr
}

#[tokio::test]
async fn losing_the_first_initial_does_not_shrink_the_window() {
    let server_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server = QuicEndpoint::new(server_sock).unwrap();
    let via = first_datagram_lost(server.local_addr()).await;
    let client = QuicEndpoint::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();

    let receiver = tokio::spawn(async move {
        let conn = server.accept().await.unwrap();
        let (_send, mut recv) = conn.accept_bi().await.unwrap();
        let data = recv.read_to_end(PAYLOAD + 1).await.unwrap();
        assert_eq!(data.len(), PAYLOAD);
        conn
    });
    let conn = tokio::time::timeout(std::time::Duration::from_secs(20), client.connect(via))
        .await
        .expect("handshake within 20 s")
        .unwrap();
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&vec![7u8; PAYLOAD]).await.unwrap();
    send.finish().unwrap();
    let server_conn = tokio::time::timeout(std::time::Duration::from_secs(20), receiver)
        .await
        .expect("64 KiB within 20 s")
        .unwrap();
    let _ = send.stopped().await;

    let s = conn.stats();
    eprintln!("client path: {:?}", s.path);
    assert!(
        s.path.lost_packets >= 1,
        "the first Initial was dropped and declared lost"
    );
    assert_eq!(s.path.lost_packets, 1, "nothing else was lost");
    // Slow start went on after the lost Initial: 64 KiB acknowledged grows the window past
    // its initial size (with the loss read as congestion it is 0.7 × that, ≈ 10 kB).
    assert!(
        s.path.cwnd > INITIAL_WINDOW,
        "congestion window {} after 64 KiB: the lost Initial was read as congestion",
        s.path.cwnd
    );
    assert_eq!(
        mpc_did_rendezvous::net::quic::losses_ignored(&conn),
        s.path.congestion_events,
        "the one congestion event quinn counted is the ignored loss"
    );
    drop(server_conn);
}
