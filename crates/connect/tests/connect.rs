//! Secure sessions negotiated over DIDComm through a real (in-process) mediator on
//! loopback, carried on direct TCP paths (spec/session.md §2, §7).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_connect::{
    Binding, ConnectError, Connector, ConnectorConfig, Established, PathInfo, QuicSetup,
    RelayIdentity, RelaySetup, UpgradeConfig,
};
use mpc_did_driver::SessionState;
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Mediator, MediatorHandle};
use mpc_did_rendezvous::candidate::{Candidate, CandidateKind, Transport};
use mpc_did_testkit::mediator::{loopback_config, registered_agent};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn mediator(dir: &std::path::Path) -> MediatorHandle {
    let config = loopback_config(dir);
    // This test is about path switches, not the relay's rate limits (tested in
    // mediator/tests/rendezvous_relay.rs): keep them out of the way.
    let relay = RelayService::bind(RelayServiceConfig {
        rate_bytes_per_sec: 1 << 30,
        burst_bytes: 64 << 20,
        max_queue_bytes: 16 << 20,
        max_queue_frames: 4096,
        ..RelayServiceConfig::default()
    })
    .await
    .unwrap();
    Mediator::builder(config)
        .service(relay)
        .start()
        .await
        .unwrap()
}

async fn party(m: &MediatorHandle) -> Connector {
    party_with(m, false).await
}

async fn party_with(m: &MediatorHandle, force_relay: bool) -> Connector {
    party_cfg(m, |c| c.force_relay = force_relay).await
}

/// A party with a did:key whose Ed25519 key also answers its mediator relay's challenge.
async fn party_cfg(m: &MediatorHandle, tweak: impl FnOnce(&mut ConnectorConfig)) -> Connector {
    let (agent, signing) = registered_agent(&m.public_url).await;
    let relay = RelaySetup {
        url: format!("{}/relay", m.public_url.replacen("http://", "ws://", 1)),
        identity: RelayIdentity::did_key(signing),
        expected_relay: Some(m.did.clone()),
    };
    let mut config = ConnectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(20),
        relay: Some(relay),
        ..ConnectorConfig::default()
    };
    tweak(&mut config);
    Connector::start(agent, config).await.unwrap()
}

async fn introduce(a: &Connector, b: &Connector) {
    a.agent()
        .learn_service(b.agent().did(), b.agent().own_service())
        .await
        .unwrap();
    b.agent()
        .learn_service(a.agent().did(), a.agent().own_service())
        .await
        .unwrap();
}

/// Introduce `alice` and `bob` and open an ad-hoc session between them, `alice` proposing.
async fn connect_pair(alice: &Connector, bob: &Connector) -> (Established, Established) {
    introduce(alice, bob).await;
    let (a_did, b_did) = (alice.agent().did(), bob.agent().did());
    let binding = Binding::adhoc(a_did, b_did);
    let (ea, eb) = tokio::join!(
        alice.establish(b_did, &binding, true),
        bob.establish(a_did, &binding, false)
    );
    (ea.unwrap(), eb.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_session_carries_data_and_survives_a_broken_path() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    let (a_did, b_did) = (alice.agent().did(), bob.agent().did());
    assert_eq!(Binding::adhoc(a_did, b_did), Binding::adhoc(b_did, a_did));
    let (ea, eb) = connect_pair(&alice, &bob).await;
    assert_eq!(ea.session_id, eb.session_id);
    assert!(matches!(
        ea.path,
        mpc_did_connect::PathInfo::Direct { remote: Some(_) }
    ));

    let mut s = ea.handle.open_stream().await.unwrap();
    s.write_all(b"over a negotiated session").await.unwrap();
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut buf = [0u8; 25];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over a negotiated session");

    // Break the path from the acceptor's side (as a NAT timeout would): the proposer
    // re-dials and the session resumes; bytes written meanwhile arrive.
    let (dead, other_end) = tokio::io::duplex(64);
    drop(other_end);
    eb.handle.attach_path(Box::new(dead)).await.unwrap();
    s.write_all(b"after").await.unwrap();
    let mut after = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut after))
        .await
        .expect("the path was not restored")
        .unwrap();
    assert_eq!(&after, b"after");
    assert_eq!(alice.sessions().len(), 1);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_for_another_mpc_session_is_declined() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    introduce(&alice, &bob).await;
    let (a_did, b_did) = (alice.agent().did().to_owned(), bob.agent().did().to_owned());
    let ours = Binding::adhoc(&a_did, &b_did);
    let mut theirs = ours.clone();
    theirs.roster_hash[0] ^= 1;
    let (ea, eb) = tokio::join!(
        alice.establish(&b_did, &theirs, true),
        bob.establish(&a_did, &ours, false)
    );
    assert!(
        matches!(ea, Err(ConnectError::Closed { code: 1, .. })),
        "{ea:?}"
    );
    assert!(matches!(eb, Err(ConnectError::Handshake { .. })), "{eb:?}");
    assert!(alice.sessions().is_empty());
    let _ = SessionState::NoPath;
    m.shutdown().await;
}

/// spec/session.md §7.5: a forced-relay session carries data, and survives forced switches
/// relay → direct → relay in the middle of a transfer without losing a byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_path_and_switches_between_relay_and_direct() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party_with(&m, true).await, party(&m).await);
    let (ea, eb) = connect_pair(&alice, &bob).await;
    assert!(matches!(ea.path, PathInfo::Relayed { .. }), "{:?}", ea.path);

    let total = 4 << 20;
    let mut s = ea.handle.open_stream().await.unwrap();
    let writer = tokio::spawn(async move {
        let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
        for chunk in data.chunks(32 * 1024) {
            s.write_all(chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        data
    });
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut switched = 0;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .expect("stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.len() > total / 3 && switched == 0 {
            switched = 1;
            assert!(matches!(
                alice.reconnect(&ea, false).await.unwrap(),
                PathInfo::Direct { .. }
            ));
        }
        if got.len() > 2 * total / 3 && switched == 1 {
            switched = 2;
            assert!(matches!(
                alice.reconnect(&ea, true).await.unwrap(),
                PathInfo::Relayed { .. }
            ));
        }
    }
    let sent = writer.await.unwrap();
    assert_eq!(switched, 2);
    assert_eq!(got.len(), sent.len());
    assert!(got == sent, "bytes differ after path switches");
    m.shutdown().await;
}

/// A loopback TCP port nobody listens on (bound, then released).
fn dead_port() -> std::net::SocketAddr {
    // On 127.0.0.2: the connectors listen on 127.0.0.1:0 and could be given this very port
    // once it is free again (it happened: the "dead" candidate then reached the peer).
    let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    l.local_addr().unwrap()
}

/// Forward every connection to `listen` to `to` (a NAT port that opens late).
async fn forwarder(listen: std::net::SocketAddr, to: std::net::SocketAddr) {
    let l = tokio::net::TcpListener::bind(listen).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut b) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
}

/// Stream from `ea` to `eb` until `ea`'s session has left the relay (`direct_when` says
/// what counts), then 1 MiB more; returns (path changes seen, sent digest, received digest,
/// bytes).
async fn stream_across_upgrade(
    ea: &Established,
    eb: &Established,
    direct_when: fn(&PathInfo) -> bool,
    on_relay: impl std::future::Future<Output = ()> + Send + 'static,
) -> ([u8; 32], [u8; 32], u64) {
    let mut s = ea.handle.open_stream().await.unwrap();
    let handle = ea.handle.clone();
    let writer = tokio::spawn(async move {
        let mut h = Sha256::new();
        let mut sent = 0u64;
        let mut after = None;
        let mut trigger = Some(on_relay);
        let mut i = 0u64;
        loop {
            let chunk: Vec<u8> = (0..16 * 1024u64)
                .map(|k| ((i * 31 + k * 7) % 251) as u8)
                .collect();
            i += 1;
            s.write_all(&chunk).await.unwrap();
            h.update(&chunk);
            sent += chunk.len() as u64;
            if sent >= 1 << 20 {
                if let Some(t) = trigger.take() {
                    // Some data went over the relay: now let the direct path appear.
                    tokio::spawn(t);
                }
            }
            let on_direct = handle.path().current.as_ref().is_some_and(direct_when);
            if on_direct && after.is_none() {
                after = Some(sent + (1 << 20));
            }
            if after.is_some_and(|a| sent >= a) {
                break;
            }
            assert!(sent < 256 << 20, "never left the relay");
            // Paces the writer (not a wait for a condition): the path switch must happen
            // mid-stream, with bytes in flight on both paths.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        s.shutdown().await.unwrap();
        (<[u8; 32]>::from(h.finalize()), sent)
    });
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut h = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), r.read(&mut buf))
            .await
            .expect("stalled")
            .unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        got += n as u64;
    }
    let (sent_digest, sent) = writer.await.unwrap();
    assert_eq!(got, sent);
    (sent_digest, h.finalize().into(), got)
}

fn quick_upgrade(first: Duration) -> UpgradeConfig {
    UpgradeConfig {
        first,
        max: Duration::from_secs(1),
        ..UpgradeConfig::default()
    }
}

/// spec/session.md §7.5: a session that had to start on the relay (the acceptor's direct
/// candidate refused connections) moves to direct TCP on its own once that candidate
/// answers, while a stream keeps flowing; not a byte lost or doubled (SHA-256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_session_upgrades_to_direct_when_the_peer_becomes_reachable() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let port = dead_port();
    let alice = party_cfg(&m, |c| {
        c.upgrade = quick_upgrade(Duration::from_millis(200))
    })
    .await;
    let bob = party_cfg(&m, |c| c.advertise = vec![port]).await;
    let (ea, eb) = connect_pair(&alice, &bob).await;
    assert!(matches!(ea.path, PathInfo::Relayed { .. }), "{:?}", ea.path);
    assert!(matches!(eb.path, PathInfo::Relayed { .. }), "{:?}", eb.path);
    let real = bob.listen_addr();
    let t0 = std::time::Instant::now();
    let (sent, got, n) = stream_across_upgrade(
        &ea,
        &eb,
        |p| matches!(p, PathInfo::Direct { .. }),
        forwarder(port, real),
    )
    .await;
    eprintln!("{n} bytes across the upgrade in {:?}", t0.elapsed());
    assert_eq!(sent, got, "bytes differ across the relay -> direct upgrade");
    let pa = ea.handle.path();
    assert_eq!(pa.current, Some(PathInfo::Direct { remote: Some(port) }));
    assert!(pa.attached >= 2, "{pa:?}");
    assert_eq!(eb.handle.path().current.map(|p| p.kind()), Some("direct"));
    let listed = alice.sessions();
    assert_eq!(listed[0].path.kind(), "direct");
    m.shutdown().await;
}

/// spec/session.md §2, §7.5: candidates the acceptor announces after the session is up
/// (trickle) make the proposer try them at once, long before its backoff would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_candidates_from_the_peer_trigger_an_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    // With a 60 s first retry, only the announcement can move the session within the test.
    let alice = party_cfg(&m, |c| c.upgrade = quick_upgrade(Duration::from_secs(60))).await;
    let bob = party_cfg(&m, |c| c.advertise = vec![dead_port()]).await;
    let (ea, eb) = connect_pair(&alice, &bob).await;
    assert!(matches!(ea.path, PathInfo::Relayed { .. }), "{:?}", ea.path);
    let real = bob.listen_addr();
    let announce = {
        let (bob, eb) = (bob.clone(), eb.clone());
        async move {
            let c = Candidate::new(CandidateKind::Host, Transport::Tcp, real, 1, None);
            bob.announce_candidates(&eb, vec![c]).await.unwrap();
        }
    };
    let t0 = std::time::Instant::now();
    let (sent, got, _) =
        stream_across_upgrade(&ea, &eb, |p| matches!(p, PathInfo::Direct { .. }), announce).await;
    assert!(t0.elapsed() < Duration::from_secs(50), "{:?}", t0.elapsed());
    assert_eq!(sent, got);
    assert_eq!(
        ea.handle.path().current,
        Some(PathInfo::Direct { remote: Some(real) })
    );
    m.shutdown().await;
}

/// Two parties with QUIC paths on loopback; the second (the acceptor) advertises only a
/// TCP candidate that does not answer, so a direct path to it can only be QUIC.
async fn quic_parties(m: &MediatorHandle) -> (Connector, Connector) {
    let quic = QuicSetup {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..QuicSetup::default()
    };
    let q = quic.clone();
    let alice = party_cfg(m, |c| c.quic = Some(q)).await;
    let bob = party_cfg(m, |c| {
        c.advertise = vec![dead_port()];
        c.quic = Some(quic);
    })
    .await;
    (alice, bob)
}

/// A session between the two, which must be on QUIC to the acceptor's `addr`.
async fn connect_on_quic(
    alice: &Connector,
    bob: &Connector,
    addr: std::net::SocketAddr,
) -> (Established, Established) {
    let (ea, eb) = connect_pair(alice, bob).await;
    assert_eq!(ea.path, PathInfo::Quic { remote: addr });
    assert_eq!(eb.path.kind(), "quic");
    (ea, eb)
}

/// A QUIC handshake with a connector that fails (here: the client trusts no certificate and
/// aborts, as a peer's check that lost the race to another candidate is closed mid-handshake)
/// concerns that connection only: the connector still takes QUIC paths afterwards.
/// Without that, the first aborted handshake ended its accept loop and, with 10 parties,
/// whole parties took no QUIC path — nor any upgrade from the relay — for the rest of the
/// run (spec/rendezvous.md §6.1, `crates/connect/src/quic.rs` `serve`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_quic_handshake_does_not_stop_quic_paths() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = quic_parties(&m).await;
    let (cands, _) = bob.quic_candidates();
    // Two failing handshakes in a row (the second shows the first did not end the loop
    // either way).
    for _ in 0..2 {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let config = quinn::ClientConfig::new(std::sync::Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
        ));
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let r = client
            .connect_with(config, cands[0].addr, "mpc-did")
            .unwrap()
            .await;
        assert!(r.is_err(), "a client that trusts no certificate connected");
        client.wait_idle().await;
    }
    connect_on_quic(&alice, &bob, cands[0].addr).await;
}

/// The QUIC path (spec/rendezvous.md §6.1) through `Connector`: with no TCP candidate that
/// answers, the session runs on QUIC to the acceptor's host QUIC candidate, not the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_path_is_preferred_to_the_relay() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = quic_parties(&m).await;
    let (cands, _) = bob.quic_candidates();
    assert_eq!(cands.len(), 1, "{cands:?}");
    let (ea, eb) = connect_on_quic(&alice, &bob, cands[0].addr).await;
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect();
    let mut s = ea.handle.open_stream().await.unwrap();
    let w = {
        let data = data.clone();
        tokio::spawn(async move {
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
        })
    };
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    w.await.unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&data));
    // spec/session.md §9: the CLOSE reaches the peer although the closing side's QUIC
    // endpoint goes right after it (a closed endpoint discards data in flight: the peer used
    // to see a lost path instead, "is down; re-connecting" after every successful run).
    let mut state = eb.handle.watch_state();
    ea.handle.close(0, "done").await;
    drop((ea, alice));
    let end = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s != SessionState::Connected),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(
        matches!(
            end,
            SessionState::Closed {
                code: 0,
                by_peer: true,
                ..
            }
        ),
        "{end:?}"
    );
    m.shutdown().await;
}

/// A loopback listener that accepts every connection and hangs up at once, counting them:
/// a direct candidate whose checks always fail.
async fn refusing_listener() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = std::sync::Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (addr, count)
}

/// spec/session.md §7.4: when its relay path is lost, the proposer restores the session
/// through the relay at once, without first checking direct candidates that failed moments
/// ago (a round of checks would leave it without a path for up to 6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_relay_path_is_restored_through_the_relay_first() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (port, checks) = refusing_listener().await;
    // No upgrade attempts: every direct check counted below comes from a path restore.
    let alice = party_cfg(&m, |c| c.upgrade.enabled = false).await;
    let bob = party_cfg(&m, |c| c.advertise = vec![port]).await;
    let (ea, eb) = connect_pair(&alice, &bob).await;
    assert!(matches!(ea.path, PathInfo::Relayed { .. }), "{:?}", ea.path);
    let before = checks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(before >= 1, "the direct candidate was never checked");

    let mut s = ea.handle.open_stream().await.unwrap();
    s.write_all(b"one").await.unwrap();
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut buf = [0u8; 3];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"one");

    // The proposer's relay path breaks (a dead stream replaces it): the proposer restores
    // the session through the relay without checking the direct candidate again.
    let attached = ea.handle.path().attached;
    let (dead, other_end) = tokio::io::duplex(64);
    drop(other_end);
    ea.handle.attach_path(Box::new(dead)).await.unwrap();
    let mut paths = ea.handle.watch_path();
    tokio::time::timeout(
        Duration::from_secs(20),
        paths.wait_for(|p| {
            p.attached > attached + 1 && matches!(p.current, Some(PathInfo::Relayed { .. }))
        }),
    )
    .await
    .expect("no relay path was attached again")
    .unwrap();
    let mut state = ea.handle.watch_state();
    tokio::time::timeout(
        Duration::from_secs(20),
        state.wait_for(|s| *s == SessionState::Connected),
    )
    .await
    .expect("the session did not connect on the restored relay path")
    .unwrap();
    assert_eq!(
        checks.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "direct candidates were checked before the relay"
    );
    m.shutdown().await;
}

/// `mpcdid_mediator_queued_messages` from the mediator's operator listener.
async fn queued_at(m: &MediatorHandle) -> u64 {
    let mut c = tokio::net::TcpStream::connect(m.admin_addr).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("mpcdid_mediator_queued_messages "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no queued_messages gauge in {text}"))
}

/// Sessions set up and closed again, many times and many at once, leave nothing waiting at
/// the mediator: every DIDComm message of the set-up (spec/session.md §2) is picked up by a
/// party that is online, so the per-source quota (spec/mediator.md §6.1) never fills with
/// stale ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sessions_leave_no_messages_waiting_at_the_mediator() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let mut ps = Vec::new();
    for _ in 0..4 {
        ps.push(party(&m).await);
    }
    for a in &ps {
        for b in &ps {
            if a.agent().did() != b.agent().did() {
                introduce(a, b).await;
            }
        }
    }
    for round in 0..4u8 {
        // Every pair at once, each side calling establish (the smaller DID proposes).
        let mut tasks = Vec::new();
        for c in &ps {
            for p in &ps {
                let (me, peer) = (c.agent().did().to_owned(), p.agent().did().to_owned());
                if me == peer {
                    continue;
                }
                let c = c.clone();
                tasks.push(tokio::spawn(async move {
                    let proposer = me < peer;
                    let est = c
                        .establish(&peer, &Binding::adhoc(&me, &peer), proposer)
                        .await
                        .unwrap();
                    if proposer {
                        let mut s = est.handle.open_stream().await.unwrap();
                        s.write_all(&[round]).await.unwrap();
                        s.shutdown().await.unwrap();
                    } else {
                        let mut s = est.handle.accept_stream().await.unwrap();
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await.unwrap();
                        assert_eq!(b[0], round);
                    }
                    est
                }));
            }
        }
        let mut ests = Vec::new();
        for t in tasks {
            ests.push(t.await.unwrap());
        }
        for e in ests {
            e.handle.close(0, "test").await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let q = queued_at(&m).await;
        if q == 0 {
            break;
        }
        let held: Vec<usize> = ps.iter().map(|p| p.agent().held()).collect();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{q} messages still waiting at the mediator after 4 rounds of 6 sessions between online parties (held by the agents: {held:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    m.shutdown().await;
}

/// spec/session.md §2: "`close` ends the secure session (both its control state and its
/// transport)" — also once it is up. A peer that ends a session with a DIDComm `close`
/// (not a CLOSE record) is heard: the session ends at once as closed by the peer, with its
/// code and reason, instead of staying up (before, the `close` was dropped after set-up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_didcomm_close_after_set_up_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    let (ea, eb) = connect_pair(&alice, &bob).await;
    let mut close = mpc_did_didcomm::Message::new(
        "close-after-set-up",
        mpc_did_session::messages::CLOSE_TYPE,
        serde_json::json!({
            "session_id": ea.session_id,
            "code": 0,
            "reason": "done, said over DIDComm",
        }),
    );
    close.thid = Some(ea.session_id.clone());
    alice.agent().send(bob.agent().did(), close).await.unwrap();
    let mut state = eb.handle.watch_state();
    let ended = tokio::time::timeout(
        Duration::from_secs(20),
        state.wait_for(SessionState::is_over),
    )
    .await
    .expect("the DIDComm close did not end the session")
    .unwrap()
    .clone();
    assert_eq!(
        ended,
        SessionState::Closed {
            code: 0,
            reason: "done, said over DIDComm".into(),
            by_peer: true,
        }
    );
    drop(ea);
    m.shutdown().await;
}

/// spec/session.md §2: a `propose` whose binary field is not lowercase hex of the stated
/// length is malformed, "and its step fails as a handshake failure": the acceptor answers
/// `close` code 2 (a mismatched MPC session or roster is code 1, tested above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_proposal_is_answered_with_close_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let bob = party(&m).await;
    // The proposer speaks the protocol by hand: an agent without a connector.
    let (alice, _) = registered_agent(&m.public_url).await;
    alice
        .learn_service(bob.agent().did(), bob.agent().own_service())
        .await
        .unwrap();
    bob.agent()
        .learn_service(alice.did(), alice.own_service())
        .await
        .unwrap();
    let (a_did, b_did) = (alice.did().to_owned(), bob.agent().did().to_owned());
    let binding = Binding::adhoc(&a_did, &b_did);
    let sid = "0123456789abcdef0123456789abcdef";
    let propose = mpc_did_didcomm::Message::new(
        sid,
        mpc_did_session::messages::PROPOSE_TYPE,
        serde_json::json!({
            "session_id": sid,
            "mpc_session_id": binding.mpc_session_id,
            "roster_hash": hex::encode(binding.roster_hash),
            "suite": "Noise_KK_25519_AESGCM_SHA256",
            // 31 bytes: not a key
            "noise_static": "ab".repeat(31),
        }),
    );
    let mut closes = alice.subscribe("https://mpc-did.org/session/1.0/close");
    alice.send_signed(&b_did, propose).await.unwrap();
    let accepted = bob.establish(&a_did, &binding, false).await;
    assert!(
        matches!(accepted, Err(ConnectError::Handshake { .. })),
        "{accepted:?}"
    );
    let close = mpc_did_agent::expect(&mut closes, Duration::from_secs(20), "close", |m| {
        Some(m.message.body.clone())
    })
    .await
    .unwrap();
    assert_eq!(close["session_id"], sid);
    assert_eq!(close["code"], 2, "{close}");
    m.shutdown().await;
}
