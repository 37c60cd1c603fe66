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

/// Audit H2: a client that sends Binding requests and never reads the answers used to
/// block its connection in a write with no deadline (the idle timeout wrapped only the
/// read), so the connection and its per-source slot stayed taken for good. The write now
/// has the idle deadline too: the connection is closed and the address is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_closed_and_its_slot_freed() {
    use tokio::io::AsyncWriteExt as _;
    let mut cfg = StunServerConfig::new("127.0.0.1:0".parse().unwrap());
    cfg.tcp_idle_timeout = Duration::from_secs(1);
    cfg.max_tcp_per_source = 1;
    let server = StunServer::bind(cfg).await.unwrap();
    let tcp = server.tcp_addr().unwrap();
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.7:0".parse().unwrap()).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let s = sock.connect(tcp).await.unwrap();
    let (_rd, mut wr) = s.into_split();
    // 20-byte Binding requests (RFC 8489 §5: type, length 0, magic cookie, transaction id).
    let mut chunk = Vec::new();
    for i in 0u32..1000 {
        chunk.extend_from_slice(&[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]);
        chunk.extend_from_slice(&[0; 8]);
        chunk.extend_from_slice(&i.to_be_bytes());
    }
    let started = std::time::Instant::now();
    let flood = tokio::spawn(async move { while wr.write_all(&chunk).await.is_ok() {} });
    tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("the connection of a client that does not read is still open after 20 s")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(15));
    // The address's only slot is free: a Binding from it is answered.
    let quick = RetransmitSchedule {
        rto: Duration::from_millis(200),
        rc: 3,
        rm: 4,
    };
    let mut answered = false;
    for _ in 0..20 {
        if binding_tcp(tcp, Some("127.0.0.7:0".parse().unwrap()), quick)
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(answered, "the address's slot was not given back");
    server.shutdown().await;
}
