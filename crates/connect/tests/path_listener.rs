//! Finding 10 (spec/session.md §7.3): a waiting party's direct-path listener used to keep
//! every accepted connection until its 10 s hello deadline, with no cap, so 1,100 idle
//! connections took 1,100 descriptors (past the usual 1,024 limit: every session of the
//! party failed). Now connections that have not named a session are capped per source and
//! in all, silent ones make way for new ones, and a hello is due within 3 s.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_did_connect::{Binding, Connector, ConnectorConfig, ListenerLimits, PathInfo, QuicSetup};
use mpc_did_mediator::MediatorHandle;
use mpc_did_rendezvous::net::quic::QuicEndpoint;
use mpc_did_testkit::mediator::{loopback_mediator as mediator, registered_agent};
use mpc_did_testkit::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A registered party with direct paths only (no relay: this is about the listener).
async fn party(m: &MediatorHandle) -> Connector {
    let (agent, _) = registered_agent(&m.public_url).await;
    let config = ConnectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(20),
        ..ConnectorConfig::default()
    };
    Connector::start(agent, config).await.unwrap()
}

/// Open descriptors of this process.
/// Alice proposes, Bob accepts, an ad-hoc binding of the two; both sessions within 20 s.
async fn establish_pair(
    alice: &Connector,
    bob: &Connector,
) -> (mpc_did_connect::Established, mpc_did_connect::Established) {
    let (a_did, b_did) = (alice.agent().did(), bob.agent().did());
    let binding = Binding::adhoc(a_did, b_did);
    let (ea, eb) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(
            alice.establish(b_did, &binding, true),
            bob.establish(a_did, &binding, false)
        )
    })
    .await
    .expect("no session within 20 s under the attack");
    (ea.unwrap(), eb.unwrap())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// The soft limit on open files of this process (`/proc/self/limits`).
fn fd_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

async fn idle_from(src: &str, to: SocketAddr) -> Option<TcpStream> {
    let sock = TcpSocket::new_v4().ok()?;
    sock.bind(format!("{src}:0").parse().ok()?).ok()?;
    tokio::time::timeout(Duration::from_secs(2), sock.connect(to))
        .await
        .ok()?
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_exhaust_the_path_listener() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    let limits = ListenerLimits::default();
    let target = bob.listen_addr();
    let baseline = open_fds();

    // The attack of the finding, 1,100 idle connections (fewer if this process may not
    // open twice that many descriptors: its own ends count too): a fifth from one address,
    // the rest from 100 others, all held open and silent.
    let n = 1100.min(fd_limit().saturating_sub(baseline + 200) / 2);
    assert!(n >= 300, "fd limit too low for this test ({})", fd_limit());
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let src = if i < n / 5 {
            "127.0.0.2".to_owned()
        } else {
            format!("127.0.1.{}", 10 + i % 100)
        };
        if let Some(s) = idle_from(&src, target).await {
            held.push(s);
        }
    }
    // The party holds at most `max_pending` of them: our own `held` ends plus that.
    let bound = baseline + held.len() + limits.max_pending + 64;
    assert!(
        wait_until(|| open_fds() <= bound, Duration::from_secs(3)).await,
        "{} descriptors open for {} idle connections (bound {bound}): {:?}",
        open_fds(),
        held.len(),
        bob.listener_stats()
    );
    let seen =
        |s: &mpc_did_connect::ListenerStats| s.accepted + s.refused_per_source + s.refused_full;
    assert!(
        wait_until(
            || seen(&bob.listener_stats()) >= held.len() as u64,
            Duration::from_secs(10)
        )
        .await,
        "listener saw {:?}",
        bob.listener_stats()
    );
    let st = bob.listener_stats();
    assert!(st.pending <= limits.max_pending as u64, "{st:?}");
    assert!(
        st.refused_per_source as usize >= n / 5 - limits.max_per_source,
        "{st:?}"
    );

    // A session with bob still establishes on the direct path, while the silent
    // connections are still open.
    alice
        .agent()
        .learn_service(bob.agent().did(), bob.agent().own_service())
        .await
        .unwrap();
    bob.agent()
        .learn_service(alice.agent().did(), alice.agent().own_service())
        .await
        .unwrap();
    let started = Instant::now();
    let (ea, eb) = establish_pair(&alice, &bob).await;
    assert!(
        matches!(ea.path, PathInfo::Direct { remote: Some(_) }),
        "{:?}",
        ea.path
    );
    let mut s = ea.handle.open_stream().await.unwrap();
    s.write_all(b"through the crowd").await.unwrap();
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut buf = [0u8; 17];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"through the crowd");
    eprintln!(
        "session in {:?} with {} idle connections attempted; listener {:?}",
        started.elapsed(),
        held.len(),
        bob.listener_stats()
    );
    drop(held);
    m.shutdown().await;
}

// Connections that say nothing are closed at the hello deadline.
#[tokio::test]
async fn silent_connection_is_closed_at_the_hello_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let bob = party(&m).await;
    let mut s = TcpStream::connect(bob.listen_addr()).await.unwrap();
    let started = Instant::now();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut b))
        .await
        .expect("still open after 8 s");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2), "closed after {took:?}");
    assert_eq!(bob.listener_stats().hello_timeouts, 1);
    m.shutdown().await;
}

/// A well-formed path hello naming no session: `MDP1`, four zero bytes, 16 random ones.
fn bogus_hello() -> [u8; 24] {
    let mut id = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    mpc_did_driver::path::encode_hello(&id)
}

/// spec/session.md §7.3: a hello protects a connection from eviction only once it names a
/// registered session. Before, any well-formed hello did, and a connection with one waited
/// 5 s for its session: 8 sources × 32 such connections held all 256 slots, re-dialled as
/// they closed, and an honest direct path was refused (`refused_full`). Now they stay
/// evictable, and the honest opener's connection takes the oldest one's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_hellos_naming_no_session_do_not_lock_out_an_honest_path() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    let limits = ListenerLimits::default();
    let target = bob.listen_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let sources = limits.max_pending / limits.max_per_source;
    let mut attackers = Vec::new();
    for i in 0..limits.max_pending {
        let src = format!("127.0.3.{}", 1 + i % sources);
        let stop = stop.clone();
        attackers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut s) = idle_from(&src, target).await {
                    if s.write_all(&bogus_hello()).await.is_ok() {
                        // Held until the listener closes it.
                        let mut b = [0u8; 1];
                        let _ = s.read(&mut b).await;
                    }
                }
                // Pacing between re-dials, not synchronisation.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    assert!(
        wait_until(
            || bob.listener_stats().pending >= limits.max_pending as u64,
            Duration::from_secs(10)
        )
        .await,
        "{:?}",
        bob.listener_stats()
    );

    alice
        .agent()
        .learn_service(bob.agent().did(), bob.agent().own_service())
        .await
        .unwrap();
    bob.agent()
        .learn_service(alice.agent().did(), alice.agent().own_service())
        .await
        .unwrap();
    let (ea, eb) = establish_pair(&alice, &bob).await;
    assert!(
        matches!(ea.path, PathInfo::Direct { remote: Some(_) }),
        "{:?}",
        ea.path
    );
    let st = bob.listener_stats();
    assert_eq!(st.refused_full, 0, "the honest path was refused: {st:?}");
    assert!(st.evicted >= 1, "{st:?}");
    let mut s = ea.handle.open_stream().await.unwrap();
    s.write_all(b"past bogus hellos").await.unwrap();
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut buf = [0u8; 17];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"past bogus hellos");
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    m.shutdown().await;
}

/// A party whose direct paths can only be QUIC (its TCP candidate does not answer).
async fn quic_party(m: &MediatorHandle, dead_tcp: bool) -> Connector {
    let (agent, _) = registered_agent(&m.public_url).await;
    let mut config = ConnectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        handshake_timeout: Duration::from_secs(20),
        quic: Some(QuicSetup {
            listen: "127.0.0.1:0".parse().unwrap(),
            tcp_punch: false,
            ..QuicSetup::default()
        }),
        ..ConnectorConfig::default()
    };
    if dead_tcp {
        // A port nobody listens on.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        config.advertise = vec![l.local_addr().unwrap()];
    }
    Connector::start(agent, config).await.unwrap()
}

/// spec/rendezvous.md §6.1 "Accepting": the QUIC path endpoint bounds connections that have
/// not named a session as the TCP listener does. Before, it took every QUIC connection (quinn
/// queues 65,536 attempts) with up to 100 streams each: one source could hold any number.
/// Now one source gets `max_per_source`, the rest are refused, and an honest QUIC path from
/// another address still opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_connections_from_one_source_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (quic_party(&m, false).await, quic_party(&m, true).await);
    let limits = ListenerLimits::default();
    let (cands, _) = bob.quic_candidates();
    let addr = cands[0].addr;

    let stranger =
        QuicEndpoint::new(tokio::net::UdpSocket::bind("127.0.0.4:0").await.unwrap()).unwrap();
    let (mut held, mut refused) = (Vec::new(), 0);
    for _ in 0..2 * limits.max_per_source {
        match stranger.connect(addr).await {
            Ok(conn) => {
                // A stream with a well-formed hello naming no session.
                if let Ok((mut send, recv)) = conn.open_bi().await {
                    let _ = send.write_all(&bogus_hello()).await;
                    held.push((conn, send, recv));
                }
            }
            Err(_) => refused += 1,
        }
    }
    let st = bob.quic_listener_stats();
    assert!(
        refused >= 1 && st.refused_per_source >= 1,
        "{refused} refused of {}; {st:?}",
        2 * limits.max_per_source
    );
    assert!(st.pending <= limits.max_per_source as u64, "{st:?}");

    // An honest QUIC path (from another address) opens meanwhile.
    for (x, y) in [(&alice, &bob), (&bob, &alice)] {
        x.agent()
            .learn_service(y.agent().did(), y.agent().own_service())
            .await
            .unwrap();
    }
    let (ea, eb) = establish_pair(&alice, &bob).await;
    assert_eq!(ea.path, PathInfo::Quic { remote: addr });
    let mut s = ea.handle.open_stream().await.unwrap();
    s.write_all(b"quic past crowds").await.unwrap();
    let mut r = eb.handle.accept_stream().await.unwrap();
    let mut buf = [0u8; 16];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"quic past crowds");
    drop(held);
    m.shutdown().await;
}

/// spec/rendezvous.md §6.1 "Accepting": a QUIC connection that opens no stream is closed at
/// its hello deadline (before, it lived as long as the peer's keep-alives did).
#[tokio::test]
async fn silent_quic_connection_is_closed_at_the_hello_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let bob = quic_party(&m, true).await;
    let (cands, _) = bob.quic_candidates();
    let stranger =
        QuicEndpoint::new(tokio::net::UdpSocket::bind("127.0.0.5:0").await.unwrap()).unwrap();
    let conn = stranger.connect(cands[0].addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), conn.closed())
        .await
        .expect("a silent QUIC connection still open after 20 s");
    assert_eq!(bob.quic_listener_stats().hello_timeouts, 1);
    m.shutdown().await;
}
