//! The emulated NATs behave as FACTS.md measured: EIM keeps one mapping for all
//! destinations, symmetric NAT maps each destination anew; cleanup leaves nothing behind.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use mpc_did_e3::{NatKind, Topology};

fn topology() -> Option<Topology> {
    Topology::builder()
        .host("eim", NatKind::EndpointIndependent)
        .host("sym", NatKind::Symmetric)
        .host("open", NatKind::None)
        .build_or_skip()
}

/// A UDP socket in the public namespace that answers each datagram with the sender's
/// address as it saw it (what a STUN server does, without the codec).
fn reflector(topo: &Topology, ip: std::net::Ipv4Addr) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let sock = topo
        .public()
        .run(move || UdpSocket::bind((ip, 0)))
        .unwrap()
        .unwrap();
    let addr = sock.local_addr().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let h = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = sock.recv_from(&mut buf) {
            if sock.send_to(from.to_string().as_bytes(), from).is_err() {
                break;
            }
        }
    });
    (addr, h)
}

fn mapped(sock: &UdpSocket, to: SocketAddr) -> SocketAddr {
    sock.send_to(b"?", to).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    std::str::from_utf8(&buf[..n]).unwrap().parse().unwrap()
}

#[test]
fn nat_mappings_match_their_kind() {
    let Some(topo) = topology() else { return };
    let (r1, _h1) = reflector(&topo, Topology::PUBLIC_ADDR);
    let (r2, _h2) = reflector(&topo, Topology::PUBLIC_ADDR2);

    for (name, same_mapping) in [("eim", true), ("sym", false), ("open", true)] {
        let host = topo.host(name).unwrap();
        let sock = host
            .ns
            .run(|| UdpSocket::bind("0.0.0.0:0"))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let m1 = mapped(&sock, r1);
        let m2 = mapped(&sock, r2);
        assert_eq!(
            m1.ip(),
            host.public_ip(),
            "{name}: seen from the public side"
        );
        assert_eq!(m1 == m2, same_mapping, "{name}: {m1} vs {m2}");
    }
    // A NAT filters: a packet from a public address the host never talked to, sent to the
    // host's mapping, is dropped; the same from the address it talked to goes through.
    let eim = topo.host("eim").unwrap();
    let sock = eim
        .ns
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .unwrap()
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mapping = mapped(&sock, r1);
    let stranger = topo
        .public()
        .run(|| UdpSocket::bind("198.51.100.1:0"))
        .unwrap()
        .unwrap();
    stranger.send_to(b"unsolicited", mapping).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        sock.recv_from(&mut buf).is_err(),
        "unsolicited packet passed the NAT"
    );
}

#[test]
fn spawned_threads_live_in_the_namespace() {
    let Some(topo) = topology() else { return };
    let host = topo.host("open").unwrap().clone();
    let h = host
        .ns
        .spawn(move || {
            // Binding the host's own address only works inside its namespace.
            UdpSocket::bind((host.addr, 0)).map(|s| s.local_addr().unwrap().ip())
        })
        .unwrap();
    let ip = h.join().unwrap().unwrap().unwrap();
    assert_eq!(ip, topo.host("open").unwrap().addr);
}

#[test]
fn namespaces_are_deleted_on_drop_even_after_a_panic() {
    let Some(topo) = topology() else { return };
    let names: Vec<String> = [
        topo.public().name().to_owned(),
        topo.host("eim").unwrap().ns.name().to_owned(),
    ]
    .to_vec();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _topo = topo;
        panic!("a test failing half-way");
    }));
    assert!(result.is_err());
    for n in names {
        assert!(
            !std::path::Path::new(&format!("/var/run/netns/{n}")).exists(),
            "{n} left behind"
        );
    }
}
