//! STUN reflection (spec/rendezvous.md §8 "STUN reflection/amplification", §7.1): a UDP
//! request's source address is not proven, so a stranger who spoofs a victim's address
//! could make a public STUN server send that victim 72-byte answers for 20-byte requests
//! as fast as it can send them. The server now answers one IPv4 address or IPv6 /64 at most
//! `udp_burst_per_source` at once and `udp_answers_per_source` per second after that, and
//! at most `udp_answers_total` per second in all; other sources are still answered at once.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::net::{binding_udp, StunServer, StunServerConfig};
use mpc_did_rendezvous::stun::Message;
use mpc_did_testkit::wait_until;
use tokio::net::UdpSocket;

fn quick() -> RetransmitSchedule {
    RetransmitSchedule {
        rto: Duration::from_millis(100),
        rc: 4,
        rm: 4,
    }
}

/// Sends `n` Binding requests from `sock` to `server` and counts the answers that arrive
/// within `linger` after the last one. Returns (answers, seconds the sending took).
async fn flood(sock: &UdpSocket, server: SocketAddr, n: usize, linger: Duration) -> (usize, f64) {
    let req = Message::binding_request().encode(None, true).unwrap();
    let start = Instant::now();
    let mut answers = 0;
    let mut buf = [0u8; 1500];
    for _ in 0..n {
        sock.send_to(&req, server).await.unwrap();
        // Let the server (same runtime) read it: this measures its limits, not the
        // kernel's socket buffer.
        tokio::task::yield_now().await;
        // Read what is there already, so the socket's receive buffer never overflows and
        // every answer sent is counted.
        while sock.try_recv_from(&mut buf).is_ok() {
            answers += 1;
        }
    }
    let took = start.elapsed().as_secs_f64();
    while let Ok(Ok(_)) = tokio::time::timeout(linger, sock.recv_from(&mut buf)).await {
        answers += 1;
    }
    (answers, took)
}

#[tokio::test]
async fn a_spoofed_flood_gets_a_bounded_number_of_answers_and_others_are_still_answered() {
    let cfg = StunServerConfig::new("127.0.0.1:0".parse().unwrap());
    let (rate, burst) = (cfg.udp_answers_per_source, cfg.udp_burst_per_source);
    assert!(rate > 0 && burst > 0, "the default limits per source");
    let server = StunServer::bind(cfg).await.unwrap();
    let primary = server.local_addr().unwrap();

    // The "victim" address: everything sent from 127.0.0.2 stands for spoofed requests.
    let victim = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let sent = 2_000;
    let (answers, took) = flood(&victim, primary, sent, Duration::from_millis(300)).await;
    let allowed = burst as f64 + rate as f64 * (took + 0.3);
    assert!(
        (answers as f64) <= allowed + 1.0,
        "{answers} answers to {sent} requests in {took:.2} s: the bound is {allowed:.0}"
    );
    assert!(
        answers >= burst as usize,
        "the burst is answered: {answers}"
    );
    let m = server.metrics();
    let limited = || m.udp_rate_limited.load(Ordering::Relaxed) >= (sent - answers) as u64;
    assert!(
        wait_until(limited, Duration::from_secs(5)).await,
        "refusals counted: {m:?}"
    );

    // Another address is answered at once: budgets are per source.
    let other = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let r = binding_udp(&other, primary, quick())
        .await
        .expect("another source got no answer while the flood's source was limited");
    assert_eq!(r.mapped, other.local_addr().unwrap());

    // The limited source is answered again once its bucket refilled.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = binding_udp(&victim, primary, quick())
        .await
        .expect("the flood's source stays limited after its rate refilled");
    assert_eq!(r.mapped, victim.local_addr().unwrap());
    server.shutdown().await;
}

#[tokio::test]
async fn many_sources_together_get_at_most_the_total_rate() {
    let mut cfg = StunServerConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.udp_answers_per_source = 1_000_000;
    cfg.udp_burst_per_source = 1_000_000;
    cfg.udp_answers_total = 50;
    let server = StunServer::bind(cfg).await.unwrap();
    let primary = server.local_addr().unwrap();
    let start = Instant::now();
    let mut answers = 0;
    for i in 2..7 {
        let sock = UdpSocket::bind(format!("127.0.0.{i}:0")).await.unwrap();
        answers += flood(&sock, primary, 200, Duration::from_millis(50))
            .await
            .0;
    }
    let took = start.elapsed().as_secs_f64();
    let allowed = 50.0 + 50.0 * took;
    assert!(
        (answers as f64) <= allowed + 1.0,
        "{answers} answers to 1,000 requests from 5 sources in {took:.2} s: the bound is {allowed:.0}"
    );
    assert!(answers >= 50, "the total burst is answered: {answers}");
    server.shutdown().await;
}

#[tokio::test]
async fn zero_means_unlimited() {
    let mut cfg = StunServerConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.udp_answers_per_source = 0;
    cfg.udp_answers_total = 0;
    let server = StunServer::bind(cfg).await.unwrap();
    let sock = UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let (answers, _) = flood(
        &sock,
        server.local_addr().unwrap(),
        500,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(answers, 500, "{:?}", server.metrics());
    assert_eq!(server.metrics().udp_rate_limited.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}
