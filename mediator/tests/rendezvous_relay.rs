//! The relay service on loopback (spec/rendezvous.md §4): two clients
//! exchange data (WebSocket on the mediator's HTTP port and plain TCP);
//! spoofed and unauthenticated clients, frames to unknown peers, oversize
//! frames and a flood are refused with typed errors and counted, while the
//! mediator stays up and other clients are unaffected.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig, RelayServiceHandle};
use mpc_did_mediator::{Mediator, MediatorHandle};
use mpc_did_rendezvous::net::{NetError, RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{
    ClientToRelay, ErrorCode, PeerAddr, RelayToClient, SigningKey, MAX_FRAME_LEN,
};
use mpc_did_rendezvous::RelayError;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn identity() -> RelayIdentity {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    RelayIdentity::did_key(SigningKey::from_bytes(&seed))
}

fn key_of(id: &RelayIdentity) -> PeerAddr {
    PeerAddr::Key(id.key.verifying_key().to_bytes())
}

struct Relay {
    m: MediatorHandle,
    h: RelayServiceHandle,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn ws(&self) -> String {
        format!("ws://{}/relay", self.m.addr)
    }
    fn tcp(&self) -> std::net::SocketAddr {
        self.h.tcp_addr().unwrap()
    }
}

async fn start(cfg: RelayServiceConfig) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    let config = mpc_did_testkit::mediator::loopback_config(&dir.path().join("data"));
    let relay = RelayService::bind(RelayServiceConfig {
        tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..cfg
    })
    .await
    .unwrap();
    let h = relay.handle();
    let m = Mediator::builder(config)
        .service(relay)
        .start()
        .await
        .unwrap();
    Relay { m, h, _dir: dir }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn healthy(r: &Relay) -> bool {
    let mut s = TcpStream::connect(r.m.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out.starts_with(b"HTTP/1.1 200")
}

// spec/rendezvous.md §4.1-4.4: WS and TCP clients reach each other by key,
// both directions, data intact.
#[tokio::test]
async fn two_clients_exchange_data_over_websocket_and_tcp() {
    let r = start(RelayServiceConfig::default()).await;
    let (ia, ib) = (identity(), identity());
    let a = RelayConnection::connect_ws(&r.ws(), ia.clone(), Some(r.m.did.clone()))
        .await
        .unwrap();
    let b = RelayConnection::connect_tcp(r.tcp(), ib.clone(), Some(r.m.did.clone()))
        .await
        .unwrap();
    assert_eq!(a.relay_id(), r.m.did);
    let mut sa = a.open_stream(key_of(&ib)).unwrap();
    let mut sb = b.open_stream(key_of(&ia)).unwrap();

    // 1 MiB each way at once (below the default 8 MiB/s, 1 MiB burst limit).
    let up = pattern(1 << 20, 1);
    let down = pattern(1 << 20, 2);
    let (up2, down2) = (up.clone(), down.clone());
    let (ra, rb) = tokio::join!(
        async move {
            let (mut rd, mut wr) = tokio::io::split(&mut sa);
            let w = async { wr.write_all(&up2).await };
            let mut got = vec![0u8; down2.len()];
            let rdf = rd.read_exact(&mut got);
            let (w, rdr) = tokio::join!(w, rdf);
            w.unwrap();
            rdr.unwrap();
            got
        },
        async move {
            let (mut rd, mut wr) = tokio::io::split(&mut sb);
            let w = async { wr.write_all(&down).await };
            let mut got = vec![0u8; 1 << 20];
            let rdf = rd.read_exact(&mut got);
            let (w, rdr) = tokio::join!(w, rdf);
            w.unwrap();
            rdr.unwrap();
            got
        }
    );
    assert_eq!(Sha256::digest(&rb), Sha256::digest(&up));
    assert_eq!(Sha256::digest(&ra), Sha256::digest(pattern(1 << 20, 2)));
    let m = r.h.metrics().unwrap();
    assert_eq!(m.auth_ok, 2);
    assert_eq!(m.authenticated, 2);
    assert!(m.forwarded_bytes >= 2 << 20, "{m:?}");
    assert_eq!(m.dropped_rate_limited + m.dropped_queue_full, 0);
    let text = r.h.prometheus();
    assert!(text.contains("mpcdid_relay_auth_ok_total 2"), "{text}");
    r.m.shutdown().await;
}

// spec/rendezvous.md §4.3, §8: a client claiming a DID whose document does not
// list its key is refused (opaque AuthFailed); the relay's identity is checked.
#[tokio::test]
async fn spoofed_and_unauthenticated_clients_are_refused() {
    let r = start(RelayServiceConfig::default()).await;
    let victim = identity();
    let mut spoof = identity();
    spoof.did = victim.did.clone();
    spoof.key_id = victim.key_id.clone();
    let err = RelayConnection::connect_tcp(r.tcp(), spoof, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Relay(RelayError::AuthenticationFailed)),
        "{err:?}"
    );
    // A key id that is not in the DID document (a key agreement key is not an
    // authentication method).
    let mut odd = identity();
    odd.key_id = format!("{}#nope", odd.did);
    let err = RelayConnection::connect_ws(&r.ws(), odd, None)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        NetError::Relay(RelayError::AuthenticationFailed)
    ));
    // Wrong relay identity expected by the client.
    let err = RelayConnection::connect_tcp(r.tcp(), identity(), Some("did:web:other".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, NetError::Relay(RelayError::WrongRelay)),
        "{err:?}"
    );

    // No ClientAuth at all: a SendPacket is answered Error(NotAuthenticated), then close.
    let mut raw = TcpStream::connect(r.tcp()).await.unwrap();
    let challenge = read_frame(&mut raw).await.unwrap();
    assert!(matches!(challenge, RelayToClient::ServerChallenge { .. }));
    let pkt = ClientToRelay::SendPacket {
        dst: key_of(&victim),
        payload: b"hi".to_vec(),
    };
    raw.write_all(&pkt.to_bytes().unwrap()).await.unwrap();
    assert_eq!(
        read_frame(&mut raw).await,
        Some(RelayToClient::Error(ErrorCode::NotAuthenticated))
    );
    assert_eq!(read_frame(&mut raw).await, None, "closed");

    let m = r.h.metrics().unwrap();
    assert_eq!(m.auth_failed, 2, "{m:?}");
    assert_eq!(m.not_authenticated, 1);
    assert_eq!(m.auth_ok, 0);
    assert!(healthy(&r).await);
    r.m.shutdown().await;
}

async fn read_frame(s: &mut TcpStream) -> Option<RelayToClient> {
    let mut buf = Vec::new();
    loop {
        if let Some((f, used)) = RelayToClient::decode(&buf).unwrap() {
            assert_eq!(used, buf.len(), "one frame at a time here");
            return Some(f);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

// spec/rendezvous.md §4.4: a packet to a key not connected here → PeerGone,
// which fails the stream (ConnectionReset) and is counted.
#[tokio::test]
async fn frame_to_unknown_peer_fails_the_stream() {
    let r = start(RelayServiceConfig::default()).await;
    let a = RelayConnection::connect_ws(&r.ws(), identity(), None)
        .await
        .unwrap();
    let mut s = a.open_stream(key_of(&identity())).unwrap();
    s.write_all(b"anyone there?").await.unwrap();
    let mut b = [0u8; 1];
    let e = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(
        a.metrics()
            .peer_gone
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(r.h.metrics().unwrap().unknown_peer, 1);
    // The connection itself is still usable.
    assert!(a.is_open());
    r.m.shutdown().await;
}

// spec/rendezvous.md §4.2: a header announcing more than MAX_FRAME_LEN is
// refused from the header alone (TCP) or by the WebSocket message limit.
#[tokio::test]
async fn oversize_frames_are_refused() {
    let r = start(RelayServiceConfig::default()).await;
    let mut raw = TcpStream::connect(r.tcp()).await.unwrap();
    let _challenge = read_frame(&mut raw).await.unwrap();
    let mut hdr = vec![0x02];
    hdr.extend_from_slice(&u32::try_from(MAX_FRAME_LEN + 1).unwrap().to_be_bytes());
    raw.write_all(&hdr).await.unwrap();
    assert_eq!(
        read_frame(&mut raw).await,
        Some(RelayToClient::Error(ErrorCode::FrameTooLarge))
    );
    assert_eq!(read_frame(&mut raw).await, None);
    assert_eq!(r.h.metrics().unwrap().malformed, 1);

    // Over WebSocket: a message larger than a frame can be is cut off by the
    // server (the socket closes), and the relay keeps serving.
    use futures_util::SinkExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(r.ws()).await.unwrap();
    let _ = ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            0u8;
            MAX_FRAME_LEN + 64
        ]))
        .await;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        use futures_util::StreamExt;
        loop {
            match ws.next().await {
                None | Some(Err(_)) => break,
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok());
    assert!(healthy(&r).await);
    // Still serving relay clients.
    RelayConnection::connect_tcp(r.tcp(), identity(), None)
        .await
        .unwrap();
    r.m.shutdown().await;
}

// spec/rendezvous.md §4.5 ("Rate limit by backpressure"): a client sending above its
// byte-rate limit is read no faster than the limit — its writes slow down, nothing of it is
// dropped and its stream stays up — and another pair keeps working meanwhile.
#[tokio::test]
async fn flood_is_slowed_to_the_rate_without_drops_and_other_clients_are_unaffected() {
    const RATE: usize = 2 << 20;
    const BURST: usize = 256 << 10;
    const FLOOD: usize = 3 << 20;
    let r = start(RelayServiceConfig {
        rate_bytes_per_sec: RATE as u64,
        burst_bytes: BURST as u64,
        ..RelayServiceConfig::default()
    })
    .await;
    let (ifl, isink, ia, ib) = (identity(), identity(), identity(), identity());
    let flooder = RelayConnection::connect_tcp(r.tcp(), ifl.clone(), None)
        .await
        .unwrap();
    let sink = RelayConnection::connect_tcp(r.tcp(), isink.clone(), None)
        .await
        .unwrap();
    let a = RelayConnection::connect_ws(&r.ws(), ia.clone(), None)
        .await
        .unwrap();
    let b = RelayConnection::connect_ws(&r.ws(), ib.clone(), None)
        .await
        .unwrap();
    let mut fs = flooder.open_stream(key_of(&isink)).unwrap();
    let mut sink_stream = sink.open_stream(key_of(&ifl)).unwrap();
    let flood_data = pattern(FLOOD, 3);
    let f2 = flood_data.clone();
    let t0 = std::time::Instant::now();
    // As fast as the client can: no pacing of its own (the default).
    let flood = tokio::spawn(async move {
        for c in f2.chunks(60_000) {
            fs.write_all(c).await.unwrap();
        }
        fs
    });
    // Meanwhile A → B: 256 KiB in 16 KiB writes, well below the limit.
    let mut sa = a.open_stream(key_of(&ib)).unwrap();
    let mut sb = b.open_stream(key_of(&ia)).unwrap();
    let data = pattern(256 << 10, 9);
    let d2 = data.clone();
    let w = tokio::spawn(async move {
        for c in d2.chunks(16 << 10) {
            sa.write_all(c).await.unwrap();
            // Paces A's writes well below the rate limit (not a wait for a condition).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sa
    });
    let mut got = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(20), sb.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, data);
    let _sa = w.await.unwrap();

    // Every flood byte arrives, in order, through a stream that never failed.
    let mut flood_got = vec![0u8; FLOOD];
    tokio::time::timeout(
        Duration::from_secs(30),
        sink_stream.read_exact(&mut flood_got),
    )
    .await
    .unwrap()
    .unwrap();
    let elapsed = t0.elapsed();
    assert!(flood_got == flood_data, "the flood arrives intact");
    let _fs = flood.await.unwrap();
    // The relay passed at most BURST + RATE × t wire bytes (≥ the payload) by time t: a
    // lower bound that only the limiter can enforce (a slow machine only adds time).
    let floor = Duration::from_secs_f64((FLOOD - BURST) as f64 / RATE as f64);
    assert!(
        elapsed >= floor,
        "{elapsed:?} < {floor:?}: the rate was not enforced"
    );
    assert_eq!(
        flooder
            .metrics()
            .overloaded
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let m = r.h.metrics().unwrap();
    assert_eq!(m.dropped_rate_limited, 0, "{m:?}");
    assert!(r
        .h
        .prometheus()
        .contains("mpcdid_relay_dropped_rate_limited_total"),);
    assert!(healthy(&r).await);
    r.m.shutdown().await;
}
