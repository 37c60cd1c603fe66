//! The session driver over real loopback TCP paths.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

mod common;

use common::{connect, handles, tcp_pair};
use mpc_did_driver::{path, DriverConfig, PathRouter, SessionState};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn streams_both_ways_with_eof() {
    let (a, b) = handles(DriverConfig::default());
    connect(&a, &b).await;
    let mut s1 = a.open_stream().await.unwrap();
    let mut s2 = b.open_stream().await.unwrap();
    s1.write_all(b"from a").await.unwrap();
    s2.write_all(b"from b").await.unwrap();
    let mut r1 = b.accept_stream().await.unwrap();
    let mut r2 = a.accept_stream().await.unwrap();
    assert_eq!(r1.id(), s1.id());
    let mut buf = [0u8; 6];
    r1.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"from a");
    r2.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"from b");
    // A reply on the accepted stream reaches the opener's stream.
    r1.write_all(b"reply").await.unwrap();
    let mut reply = [0u8; 5];
    s1.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"reply");
    s1.shutdown().await.unwrap();
    let mut rest = Vec::new();
    r1.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    assert_eq!(a.state(), SessionState::Connected);
}

/// spec/session.md §7.1–7.2: a transfer survives a forced path switch in the middle, with
/// matching SHA-256 on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_transfer_survives_path_switches() {
    let (a, b) = handles(DriverConfig::default());
    connect(&a, &b).await;
    let total: usize = 32 << 20;
    let mut tx = a.open_stream().await.unwrap();
    let writer = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut sent = 0;
        let mut chunk = vec![0u8; 48 * 1024];
        while sent < total {
            for c in chunk.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *c = x as u8;
            }
            let n = chunk.len().min(total - sent);
            tx.write_all(&chunk[..n]).await.unwrap();
            h.update(&chunk[..n]);
            sent += n;
        }
        tx.shutdown().await.unwrap();
        h.finalize()
    });
    let mut rx = b.accept_stream().await.unwrap();
    let (a2, b2) = (a.clone(), b.clone());
    let reader = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        let mut switches = 0;
        loop {
            let n = rx.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            got += n;
            // Switch paths twice mid-transfer, as a relay→direct upgrade would.
            if (got > total / 3 && switches == 0) || (got > 2 * total / 3 && switches == 1) {
                switches += 1;
                connect(&a2, &b2).await;
            }
        }
        (got, h.finalize(), switches)
    });
    let sent_hash = writer.await.unwrap();
    let (got, got_hash, switches) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(switches, 2);
    assert_eq!(got, total);
    assert_eq!(got_hash, sent_hash);
    let stats = a.stats().await.unwrap();
    eprintln!(
        "retransmitted after switches: {} bytes",
        stats.retransmitted_bytes
    );
}

/// A path that dies (not replaced yet) leaves the session waiting; a new path resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_path_then_resume() {
    let (a, b) = handles(DriverConfig::default());
    let (mut x, mut y) = tcp_pair().await;
    path::send_hello(&mut x, &a.path_id()).await.unwrap();
    path::read_hello(&mut y, Duration::from_secs(5))
        .await
        .unwrap();
    // Keep a clone of the sockets' fds alive via std to be able to kill the path.
    let xs = x.into_std().unwrap();
    let kill = xs.try_clone().unwrap();
    a.attach_path(Box::new(TcpStream::from_std(xs).unwrap()))
        .await
        .unwrap();
    b.attach_path(Box::new(y)).await.unwrap();

    let mut s = a.open_stream().await.unwrap();
    s.write_all(b"before").await.unwrap();
    let mut r = b.accept_stream().await.unwrap();
    let mut buf = [0u8; 6];
    r.read_exact(&mut buf).await.unwrap();

    kill.shutdown(std::net::Shutdown::Both).unwrap();
    let mut st = b.watch_state();
    tokio::time::timeout(
        Duration::from_secs(5),
        st.wait_for(|s| *s == SessionState::NoPath),
    )
    .await
    .unwrap()
    .unwrap();
    s.write_all(b"during").await.unwrap(); // buffered: no path
    connect(&a, &b).await;
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"during");
}

#[tokio::test]
async fn error_close_is_an_error_for_the_peer_normal_close_is_not() {
    let (a, b) = handles(DriverConfig::default());
    connect(&a, &b).await;
    let mut s = a.open_stream().await.unwrap();
    s.write_all(b"x").await.unwrap();
    let mut r = b.accept_stream().await.unwrap();
    let mut one = [0u8; 1];
    r.read_exact(&mut one).await.unwrap();
    a.close(1, "party 0 failed").await;
    let state = tokio::time::timeout(Duration::from_secs(5), b.ended())
        .await
        .unwrap();
    assert!(state.is_error(), "{state:?}");
    assert_eq!(
        state,
        SessionState::Closed {
            code: 1,
            reason: "party 0 failed".into(),
            by_peer: true
        }
    );
    // The stream was not finished: reading reports an error, not EOF.
    assert!(r.read(&mut one).await.is_err());

    let (c, d) = handles(DriverConfig::default());
    connect(&c, &d).await;
    c.close(0, "done").await;
    let state = tokio::time::timeout(Duration::from_secs(5), d.ended())
        .await
        .unwrap();
    assert!(state.is_over() && !state.is_error(), "{state:?}");
}

/// spec/session.md §9: a peer that closes the session while we are still sending bulk data
/// closes its socket with our bytes unread, so the kernel resets the connection; our next
/// write fails while the peer's CLOSE record is already in our receive buffer. The driver
/// used to give the path up at that write error without reading it, and waited for a
/// resume until `resume_timeout` (60 s; seen in about 4 of 10 runs of `mpc-did pipe`'s unit
/// test). Now it reads what already arrived first, so the CLOSE ends the session at once.
/// Five rounds, because whether the write fails before the CLOSE is read is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_that_arrives_while_we_send_is_not_lost_to_the_reset() {
    for round in 0..5 {
        let (a, b) = handles(DriverConfig::default());
        connect(&a, &b).await;
        let mut out = a.open_stream().await.unwrap();
        let sender = tokio::spawn(async move {
            let chunk = vec![0x5a; 64 << 10];
            // Until the session ends under us.
            while out.write_all(&chunk).await.is_ok() {}
        });
        let mut inbound = b.accept_stream().await.unwrap();
        let mut some = vec![0u8; 256 << 10];
        inbound.read_exact(&mut some).await.unwrap();
        drop(inbound);
        b.close(1, "gone").await;
        let state = tokio::time::timeout(Duration::from_secs(10), a.ended())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the peer's CLOSE was not seen within 10 s"));
        assert_eq!(
            state,
            SessionState::Closed {
                code: 1,
                reason: "gone".into(),
                by_peer: true
            },
            "round {round}"
        );
        sender.await.unwrap();
    }
}

/// spec/session.md §7.4, P12: a session without a path for `resume_timeout` fails. Paused time
/// (no socket here): the default 60 s pass virtually, and the failure comes neither
/// before nor much after them.
#[tokio::test(start_paused = true)]
async fn no_path_for_too_long_fails_the_session() {
    let cfg = DriverConfig::default();
    let limit = cfg.resume_timeout;
    let started = tokio::time::Instant::now();
    let (a, _b) = handles(cfg);
    let state = tokio::time::timeout(limit * 2, a.ended()).await.unwrap();
    assert!(matches!(state, SessionState::Failed(_)), "{state:?}");
    let took = started.elapsed();
    assert!(
        took >= limit && took < limit + Duration::from_secs(1),
        "{took:?}"
    );
}

#[tokio::test]
async fn router_hands_paths_to_their_session_and_refuses_others() {
    let (a, b) = handles(DriverConfig::default());
    let router = PathRouter::new();
    router.register(&b);
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(router.clone().serve(l));

    // A stranger's hello names no session: the connection is dropped (after the wait for a
    // session that registers late, path::REGISTER_WAIT).
    let mut stranger = TcpStream::connect(addr).await.unwrap();
    stranger
        .write_all(&path::encode_hello(&[7; 16]))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(
        tokio::time::timeout(path::REGISTER_WAIT * 3, stranger.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0),
        0
    );

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    path::send_hello(&mut tcp, &a.path_id()).await.unwrap();
    a.attach_path(Box::new(tcp)).await.unwrap();
    let mut s = a.open_stream().await.unwrap();
    s.write_all(b"routed").await.unwrap();
    let mut r = b.accept_stream().await.unwrap();
    let mut got = [0u8; 6];
    r.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"routed");
}

/// spec/session.md §7.3: a path that arrives before its session is registered (the opener
/// dialed right after the last handshake message) waits for the registration, and the
/// session records what kind of path it runs on.
#[tokio::test]
async fn router_waits_for_a_late_registration_and_labels_the_path() {
    use mpc_did_driver::PathInfo;
    let (a, b) = handles(DriverConfig::default());
    let router = PathRouter::new();
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(router.clone().serve(l));
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    path::send_hello(&mut tcp, &a.path_id()).await.unwrap();
    let info = PathInfo::Direct { remote: Some(addr) };
    a.attach_path_as(Box::new(tcp), Some(info.clone()))
        .await
        .unwrap();
    // Simulates the late registration (not a wait for a condition): the router has read
    // the hello long before `register`, and must hold the path meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.path().attached, 0, "routed before registration");
    router.register(&b);
    let mut s = a.open_stream().await.unwrap();
    s.write_all(b"late").await.unwrap();
    let mut r = b.accept_stream().await.unwrap();
    let mut got = [0u8; 4];
    r.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"late");
    assert_eq!(a.path().current, Some(info));
    assert_eq!(a.path().attached, 1);
    let pb = b.path();
    assert_eq!(pb.current, Some(PathInfo::Direct { remote: None }));
    assert_eq!(pb.current.as_ref().map(PathInfo::kind), Some("direct"));
}
