//! The user-space delay line (README "e3", spec/e3.md §2): it adds its delay in both
//! directions, carries a TCP stream intact, loses nothing it holds when it stops, and leaves
//! no rule behind.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use mpc_did_e3::{NatKind, Topology};

fn topology() -> Option<Topology> {
    Topology::builder()
        .host("a", NatKind::None)
        .host("b", NatKind::None)
        .build_or_skip()
}

/// A UDP echo server on host `b`; returns its address.
fn echo(topo: &Topology) -> std::net::SocketAddr {
    let b = topo.host("b").unwrap();
    let sock =
        b.ns.run(move || UdpSocket::bind((b.addr, 0)))
            .unwrap()
            .unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
    addr
}

fn client(topo: &Topology) -> UdpSocket {
    let a = topo.host("a").unwrap();
    let s =
        a.ns.run(move || UdpSocket::bind((a.addr, 0)))
            .unwrap()
            .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn rtt(sock: &UdpSocket, to: std::net::SocketAddr) -> Duration {
    let t = Instant::now();
    sock.send_to(b"ping", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    t.elapsed()
}

fn nfqueue_rules(topo: &Topology, host: &str) -> usize {
    let out = topo
        .host(host)
        .unwrap()
        .ns
        .command("iptables")
        .arg("-S")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("NFQUEUE"))
        .count()
}

#[test]
fn round_trip_carries_both_hosts_delay_both_ways() {
    let Some(topo) = topology() else { return };
    let to = echo(&topo);
    let sock = client(&topo);
    let da = topo
        .host("a")
        .unwrap()
        .ns
        .delay(Duration::from_millis(20))
        .unwrap();
    let db = topo
        .host("b")
        .unwrap()
        .ns
        .delay(Duration::from_millis(30))
        .unwrap();
    assert_eq!(nfqueue_rules(&topo, "a"), 2);
    // a→b passes a's OUTPUT (20) and b's INPUT (30); the answer b's OUTPUT and a's INPUT.
    for _ in 0..5 {
        let r = rtt(&sock, to);
        assert!(r >= Duration::from_millis(100), "rtt {r:?} < 2·(20+30) ms");
    }
    let (sa, sb) = (da.finish().unwrap(), db.finish().unwrap());
    // 5 requests out + 5 answers in on each side.
    assert!(sa.packets >= 10 && sb.packets >= 10, "{sa:?} {sb:?}");
    assert_eq!(nfqueue_rules(&topo, "a"), 0);
    assert_eq!(nfqueue_rules(&topo, "b"), 0);
    // Without the lines the path is back to its own speed (and still works).
    rtt(&sock, to);
}

#[test]
fn stopping_releases_what_it_holds() {
    let Some(topo) = topology() else { return };
    let to = echo(&topo);
    let sock = client(&topo);
    let line = topo
        .host("a")
        .unwrap()
        .ns
        .delay(Duration::from_secs(30))
        .unwrap();
    sock.send_to(b"held", to).unwrap();
    // Once the datagram is in the queue, stop the line long before its 30 s are up: it
    // must be released, not dropped.
    assert!(
        mpc_did_testkit::wait_until_blocking(
            || line.held() == 1,
            std::time::Instant::now() + Duration::from_secs(10)
        ),
        "the datagram never reached the delay line"
    );
    let stats = line.finish().unwrap();
    assert_eq!(stats.packets, 1, "{stats:?}");
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"held");
}

#[test]
fn tcp_stream_is_intact_through_delay_lines() {
    let Some(topo) = topology() else { return };
    let (a, b) = (topo.host("a").unwrap(), topo.host("b").unwrap());
    let _la = a.ns.delay(Duration::from_millis(5)).unwrap();
    let _lb = b.ns.delay(Duration::from_millis(7)).unwrap();
    let listener =
        b.ns.run(move || TcpListener::bind((b.addr, 0)))
            .unwrap()
            .unwrap();
    let addr = listener.local_addr().unwrap();
    let data: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expect = data.clone();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let mut c = a.ns.run(move || TcpStream::connect(addr)).unwrap().unwrap();
    c.write_all(&data).unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let got = server.join().unwrap();
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "stream altered by the delay line");
}
