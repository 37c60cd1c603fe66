//! Secure sessions through `Connector::establish` between two real agents behind NATs in
//! Linux network namespaces this test creates (spec/session.md §7.5,
//! spec/rendezvous.md §6): a real mediator (DIDComm + STUN with an alternate address +
//! relay) in the "public" namespace, each party in a "home" namespace behind its own NAT
//! namespace (e3: real iptables NATs). Negotiation goes through the mediator (DIDComm), the
//! QUIC candidates come from the mediator's STUN service, and the path is whatever the
//! connector picks:
//!
//! - endpoint-independent × endpoint-independent → punched QUIC;
//! - symmetric × symmetric → the relay;
//! - EIM × EIM with the peers' UDP (and TCP) blocked at first → the relay, then, once the
//!   UDP block is lifted in the middle of a stream, the automatic upgrade to punched QUIC;
//! - EIM × EIM with all UDP dropped at both NATs → TCP hole punching (simultaneous open,
//!   spec/rendezvous.md §6.2): a direct TCP path to the peer's NAT address;
//! - symmetric × symmetric with all UDP dropped → the relay (TCP punching fails too);
//! - EIM × EIM with the regions bench's delays: nothing the proposer sends is dropped at the
//!   acceptor's NAT (it punched before its accept left).
//!
//! Every transfer is checked by SHA-256 (the receiver sends its digest back).
//! `MPC_DID_NAT_DELAYS_MS=a,b,m` (opt-in) adds one-way delays to A, B and the mediator. Namespaces are
//! deleted when the topology drops, also when an assertion fails. Skips (with a message)
//! without root / iproute2 / iptables, unless `MPC_DID_REQUIRE_NETNS=1`.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mpc_did_agent::Agent;
use mpc_did_connect::{
    mediator_stun, Binding, Connector, ConnectorConfig, PathInfo, QuicSetup, RelayIdentity,
    RelaySetup, UpgradeConfig,
};
use mpc_did_e3::{NatKind, Topology};
use mpc_did_rendezvous::candidate::CandidateKind;
use mpc_did_rendezvous::nat::NatMapping;
use mpc_did_resolver::DidCommService;
use mpc_did_testkit::mediator::{registered_client, serve_public_mediator, Identity};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAYLOAD: usize = 8 << 20;

/// What one party saw.
#[derive(Debug)]
struct Outcome {
    nat: NatMapping,
    srflx: bool,
    /// The TCP server-reflexive candidate (spec/rendezvous.md §6.2) and the listener's
    /// port it maps.
    tcp_srflx: Option<SocketAddr>,
    listen_port: u16,
    /// The path when the session came up, and at the end.
    first: PathInfo,
    last: Option<PathInfo>,
    attached: u64,
    setup: Duration,
    /// Bytes moved and whether the digest matched.
    bytes: u64,
    ok: bool,
    /// From the unblock to the switch (upgrade scenario, proposer).
    upgrade_after: Option<Duration>,
    /// UDP packets this party's NAT dropped as unsolicited (no mapping yet) during the run.
    unsolicited_udp: u64,
}

type Unblock = Box<dyn FnOnce() + Send>;

async fn agent(seed: [u8; 32]) -> (Agent, RelaySetup) {
    let id = Identity::from_seed(seed);
    let signing = id.signing.clone();
    let url = format!("http://{}:8080", Topology::PUBLIC_ADDR);
    let client = registered_client(&url, id).await;
    let relay = RelaySetup {
        url: format!("ws://{}:8080/relay", Topology::PUBLIC_ADDR),
        identity: RelayIdentity::did_key(signing),
        expected_relay: Some(client.info.did.clone()),
    };
    (Agent::start(client).await.unwrap(), relay)
}

#[allow(clippy::too_many_lines)]
async fn party(
    seed: [u8; 32],
    proposer: bool,
    to_peer: mpsc::Sender<(String, DidCommService)>,
    from_peer: mpsc::Receiver<(String, DidCommService)>,
    unblock: Option<Unblock>,
) -> Outcome {
    let (agent, relay) = agent(seed).await;
    let quic = QuicSetup {
        stun: mediator_stun(&agent),
        ..QuicSetup::default()
    };
    assert_eq!(
        quic.stun,
        Some(SocketAddr::V4(SocketAddrV4::new(
            Topology::PUBLIC_ADDR,
            3478
        )))
    );
    let config = ConnectorConfig {
        handshake_timeout: Duration::from_secs(30),
        relay: Some(relay),
        quic: Some(quic),
        upgrade: UpgradeConfig {
            first: Duration::from_millis(500),
            max: Duration::from_secs(2),
            ..UpgradeConfig::default()
        },
        ..ConnectorConfig::default()
    };
    let connector = Connector::start(agent.clone(), config).await.unwrap();
    let (cands, nat) = connector.quic_candidates();
    let srflx = cands
        .iter()
        .any(|c| c.kind == CandidateKind::ServerReflexive);
    let tcp_srflx = connector.tcp_punch_candidate().map(|c| c.addr);
    let listen_port = connector.listen_addr().port();
    eprintln!(
        "{}: NAT mapping {nat:?}, QUIC candidates {:?}",
        if proposer { "A" } else { "B" },
        cands.iter().map(|c| (c.kind, c.addr)).collect::<Vec<_>>()
    );
    eprintln!("TCP server-reflexive {tcp_srflx:?} for listener port {listen_port}");
    to_peer
        .send((agent.did().to_owned(), agent.own_service()))
        .unwrap();
    let (peer, service) = tokio::task::spawn_blocking(move || from_peer.recv().unwrap())
        .await
        .unwrap();
    agent.learn_service(&peer, service).await.unwrap();
    let binding = Binding::adhoc(agent.did(), &peer);
    let est = connector
        .establish(&peer, &binding, proposer)
        .await
        .unwrap();
    eprintln!(
        "{}: session up on {} after {:?}",
        if proposer { "A" } else { "B" },
        est.path,
        est.setup
    );
    let first = est.path.clone();
    let handle = est.handle.clone();
    let mut upgrade_after = None;
    let (bytes, ok) = tokio::time::timeout(Duration::from_secs(120), async {
        if proposer {
            let mut s = handle.open_stream().await?;
            let mut h = Sha256::new();
            let mut sent = 0u64;
            let mut unblock = unblock;
            let mut unblocked_at = None;
            let mut stop_at = if unblock.is_some() {
                None
            } else {
                Some(PAYLOAD as u64)
            };
            let mut i = 0u64;
            while stop_at.is_none_or(|s| sent < s) {
                let chunk: Vec<u8> = (0..32 * 1024u64)
                    .map(|k| ((i * 131 + k * 7) % 251) as u8)
                    .collect();
                i += 1;
                s.write_all(&chunk).await?;
                h.update(&chunk);
                sent += chunk.len() as u64;
                if sent >= 1 << 20 {
                    if let Some(f) = unblock.take() {
                        // 1 MiB went over the relay: let UDP between the NATs through.
                        tokio::task::spawn_blocking(f).await?;
                        unblocked_at = Some(Instant::now());
                        eprintln!("A: UDP between the NATs unblocked after {sent} bytes");
                    }
                }
                if let Some(t) = unblocked_at {
                    let quic = matches!(handle.path().current, Some(PathInfo::Quic { .. }));
                    if quic && stop_at.is_none() {
                        upgrade_after = Some(t.elapsed());
                        stop_at = Some(sent + (2 << 20));
                    }
                    if stop_at.is_none() && t.elapsed() > Duration::from_secs(40) {
                        eprintln!("A: no upgrade 40 s after the unblock");
                        break;
                    }
                    // Pace the stream so the relay carries it at its own rate.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            s.shutdown().await?;
            let mut back = [0u8; 32];
            s.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>((sent, back[..] == h.finalize()[..]))
        } else {
            let mut s = handle
                .accept_stream()
                .await
                .ok_or_else(|| std::io::Error::other("no stream"))?;
            let mut h = Sha256::new();
            let mut got = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                got += n as u64;
            }
            s.write_all(&h.finalize()).await?;
            s.flush().await?;
            // Let the digest leave before the session is dropped (a grace before the
            // drop, not a wait before an assertion: A checks the digest it reads).
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok((got, true))
        }
    })
    .await
    .unwrap_or_else(|_| Err(std::io::Error::other("transfer timed out")))
    .unwrap_or_else(|e| {
        eprintln!("transfer failed: {e}");
        (0, false)
    });
    let p = handle.path();
    Outcome {
        nat,
        srflx,
        tcp_srflx,
        listen_port,
        first,
        last: p.current.or(p.last),
        attached: p.attached,
        setup: est.setup,
        bytes,
        ok,
        upgrade_after,
        unsolicited_udp: 0,
    }
}

/// Counts, at `host`'s NAT, the UDP packets that arrive from outside with no mapping (the
/// NAT drops them): a rule without a target, ahead of the drop.
fn count_unsolicited_udp(host: &mpc_did_e3::Host) {
    host.nat
        .as_ref()
        .unwrap()
        .ns
        .exec(&[
            "iptables",
            "-I",
            "INPUT",
            "1",
            "-i",
            "wan",
            "-p",
            "udp",
            "-m",
            "conntrack",
            "--ctstate",
            "NEW",
        ])
        .unwrap();
}

/// The counter of [`count_unsolicited_udp`]'s rule.
fn unsolicited_udp(host: &mpc_did_e3::Host) -> u64 {
    let out = host
        .nat
        .as_ref()
        .unwrap()
        .ns
        .command("iptables")
        .args(["-L", "INPUT", "1", "-v", "-n", "-x"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {text:?}"))
}

/// What the NATs do to UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Udp {
    /// Passed.
    Open,
    /// A's NAT drops UDP towards B's NAT until A has streamed 1 MiB, and TCP towards it
    /// throughout.
    BlockedAtFirst,
    /// Both NATs drop every UDP packet they would forward (STUN/UDP and QUIC included): a
    /// network that blocks UDP.
    Dropped,
}

/// Build the topology, run the mediator and both parties.
fn run(kind: NatKind, udp: Udp) -> Option<(Outcome, Outcome)> {
    // Opt-in (slow): one-way delays for A, B and the mediator, as in the regions bench
    // (e3 user-space delay lines), to see set-up times over Internet-like latency.
    let delays = match std::env::var("MPC_DID_NAT_DELAYS_MS") {
        Ok(spec) if !spec.is_empty() => {
            let ms: Vec<u64> = spec.split(',').map(|x| x.trim().parse().unwrap()).collect();
            Some(<[u64; 3]>::try_from(ms).expect("MPC_DID_NAT_DELAYS_MS=a,b,mediator"))
        }
        _ => None,
    };
    run_with(kind, udp, delays)
}

/// [`run`] with one-way delays (ms) at A, B and the mediator, if any.
fn run_with(kind: NatKind, udp: Udp, delays: Option<[u64; 3]>) -> Option<(Outcome, Outcome)> {
    let block_udp = udp == Udp::BlockedAtFirst;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let topo = Topology::builder()
        .host("a", kind)
        .host("b", kind)
        .build_or_skip()?;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m");
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
    info_rx.recv_timeout(Duration::from_secs(20)).unwrap();

    let ha = topo.host("a").unwrap().clone();
    let hb = topo.host("b").unwrap().clone();
    let _lines: Vec<mpc_did_e3::DelayLine> = match delays {
        Some(ms) => {
            eprintln!(
                "delay lines (one way): A {} ms, B {} ms, mediator {} ms",
                ms[0], ms[1], ms[2]
            );
            [&ha.ns, &hb.ns, topo.public()]
                .iter()
                .zip(ms)
                .map(|(ns, d)| ns.delay(Duration::from_millis(d)).unwrap())
                .collect()
        }
        None => Vec::new(),
    };
    let unblock: Option<Unblock> = if block_udp {
        let nat_a = ha.nat.clone().unwrap();
        let wan_b = hb.nat.as_ref().unwrap().wan.to_string();
        let rule = |op: &str, proto: &str| {
            vec![
                "iptables".to_owned(),
                op.to_owned(),
                "FORWARD".into(),
                "-p".into(),
                proto.into(),
                "-d".into(),
                wan_b.clone(),
                "-j".into(),
                "DROP".into(),
            ]
        };
        // TCP stays blocked for the whole run: punched TCP (spec/rendezvous.md §6.2) would
        // otherwise give a direct path at once and there would be nothing to upgrade.
        for proto in ["udp", "tcp"] {
            let add = rule("-I", proto);
            nat_a
                .ns
                .exec(&add.iter().map(String::as_str).collect::<Vec<_>>())
                .unwrap();
        }
        let del = rule("-D", "udp");
        Some(Box::new(move || {
            nat_a
                .ns
                .exec(&del.iter().map(String::as_str).collect::<Vec<_>>())
                .unwrap();
        }))
    } else {
        None
    };
    if udp == Udp::Dropped {
        for h in [&ha, &hb] {
            h.nat
                .as_ref()
                .unwrap()
                .ns
                .exec(&["iptables", "-I", "FORWARD", "-p", "udp", "-j", "DROP"])
                .unwrap();
        }
    }
    if kind == NatKind::EndpointIndependent {
        count_unsolicited_udp(&hb);
    }
    let (a_tx, b_rx) = mpsc::channel();
    let (b_tx, a_rx) = mpsc::channel();
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let ta = ha
        .ns
        .spawn(move || rt().block_on(party([31; 32], true, a_tx, a_rx, unblock)))
        .unwrap();
    let tb = hb
        .ns
        .spawn(move || rt().block_on(party([42; 32], false, b_tx, b_rx, None)))
        .unwrap();
    let ra = ta.join().unwrap().unwrap();
    let mut rb = tb.join().unwrap().unwrap();
    if kind == NatKind::EndpointIndependent {
        rb.unsolicited_udp = unsolicited_udp(&hb);
    }
    let _ = stop_tx.send(());
    mediator.join().unwrap().unwrap();
    eprintln!("A: {ra:?}\nB: {rb:?}");
    drop(_lines);
    drop(topo);
    Some((ra, rb))
}

#[test]
fn eim_by_eim_session_runs_on_punched_quic() {
    let Some((a, b)) = run(NatKind::EndpointIndependent, Udp::Open) else {
        return;
    };
    assert_eq!(a.nat, NatMapping::EndpointIndependent);
    assert!(
        a.srflx && b.srflx,
        "STUN gave both a server-reflexive candidate"
    );
    // Punched TCP was in the same round (spec/rendezvous.md §6.2): QUIC ranks above it.
    assert!(a.tcp_srflx.is_some() && b.tcp_srflx.is_some());
    // The proposer dialled the acceptor's server-reflexive (NAT) address.
    let nat_b = SocketAddrV4::new(std::net::Ipv4Addr::new(198, 51, 100, 12), 0);
    match &a.first {
        PathInfo::Quic { remote } => assert_eq!(remote.ip(), *nat_b.ip(), "{remote}"),
        other => panic!("A is on {other}, not QUIC"),
    }
    assert_eq!(b.first.kind(), "quic");
    assert_eq!(a.attached, 1, "no reconnection needed");
    assert!(a.ok && b.ok, "8 MiB arrived intact (SHA-256)");
    assert_eq!(b.bytes, PAYLOAD as u64);
    eprintln!("setup: A {:?}, B {:?}", a.setup, b.setup);
}

/// With Internet-like delays (the regions bench's farthest pair: RTT A–B 70 ms, the mediator
/// 40 and 70 ms away), the acceptor punches before its accept leaves (spec/rendezvous.md §6.4
/// item 3), so nothing the proposer sends — punch datagrams, its first QUIC Initial — finds
/// B's NAT closed. Before, B punched only after its accept and candidates had been posted to
/// the mediator, while the accept was already on its way to A: A's first Initial was dropped
/// at B's NAT (2 unsolicited datagrams here), quinn re-sent it ~300 ms later and, reading the
/// loss as congestion, kept the path's window small for seconds (README, regions bench: MPyC
/// at 3.9× plain TCP's time).
#[test]
fn eim_acceptor_punches_before_the_proposers_first_initial() {
    let Some((a, b)) = run_with(NatKind::EndpointIndependent, Udp::Open, Some([10, 25, 10])) else {
        return;
    };
    assert_eq!(a.first.kind(), "quic");
    assert!(a.ok && b.ok, "8 MiB arrived intact (SHA-256)");
    assert_eq!(
        b.unsolicited_udp, 0,
        "the proposer's first datagrams reached B's NAT before B had punched"
    );
}

#[test]
fn symmetric_by_symmetric_session_runs_on_the_relay() {
    let Some((a, b)) = run(NatKind::Symmetric, Udp::Open) else {
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
    assert_eq!(a.first.kind(), "relay", "{}", a.first);
    assert_eq!(b.first.kind(), "relay", "{}", b.first);
    // The background upgrade kept failing: still on the relay at the end.
    assert_eq!(a.last.as_ref().map(PathInfo::kind), Some("relay"));
    assert!(a.ok && b.ok, "8 MiB arrived intact (SHA-256)");
    assert_eq!(b.bytes, PAYLOAD as u64);
}

#[test]
fn relayed_session_upgrades_to_quic_when_udp_opens() {
    let Some((a, b)) = run(NatKind::EndpointIndependent, Udp::BlockedAtFirst) else {
        return;
    };
    assert_eq!(a.first.kind(), "relay", "{}", a.first);
    assert_eq!(b.first.kind(), "relay", "{}", b.first);
    assert!(
        a.upgrade_after.is_some(),
        "the session never left the relay"
    );
    assert_eq!(a.last.as_ref().map(PathInfo::kind), Some("quic"));
    assert_eq!(b.last.as_ref().map(PathInfo::kind), Some("quic"));
    assert!(a.attached >= 2);
    assert!(
        a.ok && b.ok,
        "the stream is intact across the upgrade (SHA-256)"
    );
    assert_eq!(a.bytes, b.bytes);
    eprintln!(
        "{} bytes, upgrade {:?} after the unblock",
        a.bytes, a.upgrade_after
    );
}

// spec/rendezvous.md §6.2: with UDP dropped at both NATs there is no QUIC path at all, and
// an endpoint-independent TCP mapping (MASQUERADE keeps the source port) lets the two
// simultaneous connects meet: the session runs on a direct TCP connection between the NATs'
// public addresses, not on the relay.
#[test]
fn udp_blocked_eim_session_runs_on_punched_tcp() {
    let Some((a, b)) = run(NatKind::EndpointIndependent, Udp::Dropped) else {
        return;
    };
    assert!(!a.srflx && !b.srflx, "no STUN over UDP: no QUIC srflx");
    let (ta, tb) = (a.tcp_srflx.unwrap(), b.tcp_srflx.unwrap());
    // Linux conntrack kept the listener's port through MASQUERADE (no --random): the
    // mapping STUN saw is the one the punching connect gets.
    assert_eq!(ta.port(), a.listen_port, "A's TCP mapping keeps its port");
    assert_eq!(tb.port(), b.listen_port, "B's TCP mapping keeps its port");
    match &a.first {
        PathInfo::Direct {
            remote: Some(remote),
        } => assert_eq!(*remote, tb, "A dialled B's TCP mapping"),
        other => panic!("A is on {other}, not punched TCP"),
    }
    assert_eq!(b.first.kind(), "direct", "{}", b.first);
    assert_eq!(a.attached, 1, "no relay first, no reconnection");
    assert_eq!(a.last.as_ref().map(PathInfo::kind), Some("direct"));
    assert!(a.ok && b.ok, "8 MiB arrived intact (SHA-256)");
    assert_eq!(b.bytes, PAYLOAD as u64);
    eprintln!("setup: A {:?}, B {:?}", a.setup, b.setup);
}

// spec/rendezvous.md §6.2-6.3: a symmetric NAT gives every connection a new random port,
// so the mapping announced is not the one the punching connect gets: TCP punching fails
// like QUIC's, and the relay carries the session.
#[test]
fn udp_blocked_symmetric_session_runs_on_the_relay() {
    let Some((a, b)) = run(NatKind::Symmetric, Udp::Dropped) else {
        return;
    };
    assert!(a.tcp_srflx.is_some() && b.tcp_srflx.is_some());
    assert_eq!(a.first.kind(), "relay", "{}", a.first);
    assert_eq!(b.first.kind(), "relay", "{}", b.first);
    assert_eq!(a.last.as_ref().map(PathInfo::kind), Some("relay"));
    assert!(a.ok && b.ok, "8 MiB arrived intact (SHA-256)");
    assert_eq!(b.bytes, PAYLOAD as u64);
}
