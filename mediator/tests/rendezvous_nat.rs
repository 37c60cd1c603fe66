//! NAT traversal in Linux network namespaces created by this test (issue 5
//! item 6; spec/rendezvous.md §6): a mediator with the STUN and relay
//! services in the "public" namespace, two parties each in a "home"
//! namespace behind its own NAT namespace (e3: real iptables NATs).
//!
//! - endpoint-independent × endpoint-independent → a punched QUIC path;
//! - symmetric × symmetric → the relay (punching cannot work, FACTS.md);
//!
//! and either path carries a real Noise session (mpc-did-driver) with 8 MiB
//! intact (SHA-256 checked by the receiver and sent back). Each party gathers candidates on its UDP socket (STUN tests
//! I-III against the mediator), authenticates to the relay over WebSocket,
//! exchanges candidates (here over an in-process channel, in the product
//! inside DIDComm) and runs the connectivity checks. The namespaces are
//! deleted when the topology drops, also when an assertion fails; nothing
//! leaves them (all addresses are the topology's own).
//!
//! Skips (with a message) without root / iproute2 / iptables, unless
//! `MPC_DID_REQUIRE_NETNS=1`, which makes that a failure.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::mpsc;
use std::time::Duration;

use mpc_did_driver::{path, DriverConfig, SessionHandle};
use mpc_did_e3::{NatKind, Topology};
use mpc_did_mediator::testkit::serve_public_mediator;
use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::candidate::{Candidate, PathKind};
use mpc_did_rendezvous::nat::NatMapping;
use mpc_did_rendezvous::net::connect::{default_planner, establish, gather_quic, Establish};
use mpc_did_rendezvous::net::quic::QuicEndpoint;
use mpc_did_rendezvous::net::{RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use mpc_did_session::{Acceptor, Proposer, Session, SessionConfig};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAYLOAD: usize = 8 << 20;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn schedule() -> RetransmitSchedule {
    RetransmitSchedule {
        rto: Duration::from_millis(200),
        rc: 5,
        rm: 4,
    }
}

struct PartyResult {
    kind: PathKind,
    nat: NatMapping,
    ok: bool,
}

#[allow(clippy::too_many_arguments)]
async fn party(
    me: SocketAddr,
    seed: [u8; 32],
    peer_key: [u8; 32],
    mediator_did: String,
    controlling: bool,
    session: Session,
    to_peer: mpsc::Sender<Vec<Candidate>>,
    from_peer: mpsc::Receiver<Vec<Candidate>>,
) -> PartyResult {
    let handle = SessionHandle::spawn(session, DriverConfig::default());
    // Made before any connection exists: a receiver that stalls its runtime
    // for long lets the relay's bounded queue for it fill, and the relay then
    // drops and reports Overloaded (spec §4.5) instead of buffering.
    let data: Vec<u8> = (0..PAYLOAD)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect();
    let want = Sha256::digest(&data);
    let stun = SocketAddr::V4(SocketAddrV4::new(Topology::PUBLIC_ADDR, 3478));
    let http = SocketAddr::V4(SocketAddrV4::new(Topology::PUBLIC_ADDR, 8080));
    let url = format!("ws://{http}/relay");
    let sock = tokio::net::UdpSocket::bind(me).await.unwrap();
    let me = sock.local_addr().unwrap();
    let g = gather_quic(&sock, &[me], stun, None, Some((http, &url)), schedule())
        .await
        .unwrap();
    let relay = RelayConnection::connect_ws(
        &url,
        RelayIdentity::did_key(SigningKey::from_bytes(&seed)),
        Some(mediator_did),
    )
    .await
    .unwrap();
    to_peer.send(g.candidates.clone()).unwrap();
    let remote = tokio::task::spawn_blocking(move || from_peer.recv().unwrap())
        .await
        .unwrap();
    let quic = QuicEndpoint::new(sock).unwrap();
    let (choice, mut path) = establish(Establish {
        quic: Some(quic.clone()),
        relay: Some(&relay),
        peer: PeerAddr::Key(peer_key),
        local: g.candidates,
        remote,
        controlling,
        planner: default_planner(),
        deadline: Duration::from_secs(20),
    })
    .await
    .unwrap();
    eprintln!(
        "{}: {:?} path {} -> {} (rtt {:?})",
        if controlling { "A" } else { "B" },
        choice.kind,
        choice.local.addr,
        choice.remote.addr,
        choice.rtt
    );
    // The chosen path carries a real Noise session (spec/session.md): the
    // opener writes the path hello, both attach, then one stream each way.
    let ok = tokio::time::timeout(Duration::from_secs(60), async {
        if controlling {
            path::send_hello(&mut path, &handle.path_id()).await?;
        } else {
            let id = path::read_hello(&mut path, Duration::from_secs(10))
                .await
                .map_err(std::io::Error::other)?;
            assert_eq!(id, handle.path_id(), "path hello names our session");
        }
        handle.attach_path(Box::new(path)).await?;
        if controlling {
            let mut s = handle.open_stream().await?;
            s.write_all(&data).await?;
            s.flush().await?;
            let mut back = [0u8; 32];
            s.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back[..] == want[..])
        } else {
            let mut s = handle
                .accept_stream()
                .await
                .ok_or_else(|| std::io::Error::other("no stream"))?;
            let mut got = vec![0u8; PAYLOAD];
            s.read_exact(&mut got).await?;
            let h = Sha256::digest(&got);
            s.write_all(&h).await?;
            s.flush().await?;
            // Let the digest leave before the session is dropped.
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok(h[..] == want[..])
        }
    })
    .await;
    eprintln!("transfer: {ok:?}");
    let ok = matches!(ok, Ok(Ok(true)));
    quic.close();
    PartyResult {
        kind: choice.kind,
        nat: g.nat_mapping,
        ok,
    }
}

/// A Noise KK session pair (the handshake messages travel over DIDComm in the
/// product; here they are handed over in memory, as `mpc_did_driver::local` does).
fn noise_pair() -> (Session, Session) {
    let (a_did, b_did) = ("did:example:a", "did:example:b");
    let roster = [0u8; 32];
    let sid = [7u8; 16];
    let (p, propose) = Proposer::new(sid, "nat-test", roster, a_did, b_did);
    let (acc, accept) = Acceptor::on_propose(&propose, "nat-test", roster, b_did, a_did).unwrap();
    let (a, hs) = p.on_accept(&accept, SessionConfig::default(), 0).unwrap();
    let b = acc.on_handshake(&hs, SessionConfig::default(), 0).unwrap();
    (a, b)
}

fn run(kind: NatKind) -> Option<(PartyResult, PartyResult)> {
    let topo = Topology::builder()
        .host("a", kind)
        .host("b", kind)
        .build_or_skip()?;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m");

    // The mediator (STUN on 3478 + alternate 198.51.100.2:3479, relay on
    // /relay) in the public namespace, on its own thread and runtime.
    let (info_tx, info_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mediator = topo
        .public()
        .spawn(move || {
            serve_public_mediator(
                Topology::PUBLIC_ADDR,
                Topology::PUBLIC_ADDR2,
                data,
                info_tx,
                stop_rx,
            )
        })
        .unwrap();
    let did = info_rx.recv_timeout(Duration::from_secs(20)).unwrap();

    let (a_tx, b_rx) = mpsc::channel();
    let (b_tx, a_rx) = mpsc::channel();
    let (seed_a, seed_b) = ([11u8; 32], [22u8; 32]);
    let key = |s: &[u8; 32]| SigningKey::from_bytes(s).verifying_key().to_bytes();
    let (ka, kb) = (key(&seed_a), key(&seed_b));
    let ha = topo.host("a").unwrap();
    let hb = topo.host("b").unwrap();
    let a_addr = SocketAddr::V4(SocketAddrV4::new(ha.addr, 0));
    let b_addr = SocketAddr::V4(SocketAddrV4::new(hb.addr, 0));
    let did_b = did.clone();
    let (sa, sb) = noise_pair();
    let ta = ha
        .ns
        .spawn(move || rt().block_on(party(a_addr, seed_a, kb, did, true, sa, a_tx, a_rx)))
        .unwrap();
    let tb = hb
        .ns
        .spawn(move || rt().block_on(party(b_addr, seed_b, ka, did_b, false, sb, b_tx, b_rx)))
        .unwrap();
    let ra = ta.join().unwrap().unwrap();
    let rb = tb.join().unwrap().unwrap();
    let _ = stop_tx.send(());
    let metrics = mediator.join().unwrap().unwrap().unwrap();
    eprintln!("relay metrics: {metrics:?}");
    assert_eq!(
        metrics.auth_ok, 2,
        "both parties authenticated to the relay"
    );
    assert_eq!(metrics.dropped_rate_limited + metrics.dropped_queue_full, 0);
    drop(topo);
    Some((ra, rb))
}

#[test]
fn eim_by_eim_punches_a_direct_quic_path() {
    let Some((a, b)) = run(NatKind::EndpointIndependent) else {
        return;
    };
    assert_eq!(a.nat, NatMapping::EndpointIndependent);
    assert_eq!(b.nat, NatMapping::EndpointIndependent);
    assert_eq!(a.kind, PathKind::Punched);
    assert_eq!(b.kind, PathKind::Punched);
    assert!(a.ok && b.ok, "8 MiB arrived intact (SHA-256)");
}

#[test]
fn symmetric_by_symmetric_falls_back_to_the_relay() {
    let Some((a, b)) = run(NatKind::Symmetric) else {
        return;
    };
    assert!(
        matches!(
            a.nat,
            NatMapping::AddressDependent | NatMapping::AddressAndPortDependent
        ),
        "{:?}",
        a.nat
    );
    assert_eq!(a.kind, PathKind::Relayed);
    assert_eq!(b.kind, PathKind::Relayed);
    assert!(a.ok && b.ok, "8 MiB arrived intact (SHA-256)");
}
