//! A mediator (or whatever answers at its address) that misbehaves toward the party's
//! client: what it can make the client wait for or buffer is bounded (audit M1, M2, M3).
//! Loopback only; a real in-process mediator where the point is the agent's behaviour on
//! a real connection, fake servers where the point is a server that misbehaves.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use mpc_did_agent::client::{
    ClientError, MediatorClient, MediatorInfo, MAX_MEDIATOR_MESSAGE, MAX_OOB_SIZE,
};
use mpc_did_agent::{Agent, AgentConfig, LiveEvent};
use mpc_did_didcomm::Message;
use mpc_did_testkit::mediator::{loopback_mediator as mediator, registered_client, Identity};
use mpc_did_testkit::wait_until;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// A WebSocket man-in-the-middle in front of the mediator's live endpoint. It passes
/// messages both ways until [`Self::stall`]; then, on the connections open at that time,
/// it stops reading from the party and instead pushes it the largest message the mediator
/// sent, again and again (a mediator that keeps TCP open, pushes, and never reads).
/// Connections opened later pass normally.
struct StallingMediator {
    addr: std::net::SocketAddr,
    current: Arc<Mutex<CancellationToken>>,
    largest: Arc<Mutex<usize>>,
}

impl StallingMediator {
    async fn start(backend: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let largest = Arc::new(Mutex::new(0));
        let (tokens, sizes) = (current.clone(), largest.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let stall = tokens.lock().unwrap().clone();
                let (backend, sizes) = (backend.clone(), sizes.clone());
                tokio::spawn(async move {
                    let Ok(party) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    let med = mpc_did_agent::client::connect_ws(&backend, &[])
                        .await
                        .unwrap();
                    let (mut p_tx, mut p_rx) = party.split();
                    let (mut m_tx, mut m_rx) = med.split();
                    let mut biggest: Option<WsMessage> = None;
                    loop {
                        tokio::select! {
                            () = stall.cancelled() => break,
                            m = p_rx.next() => match m {
                                Some(Ok(m)) => {
                                    if m_tx.send(m).await.is_err() {
                                        return;
                                    }
                                }
                                _ => return,
                            },
                            m = m_rx.next() => match m {
                                Some(Ok(m)) => {
                                    if m.is_text() && m.len() > biggest.as_ref().map_or(0, WsMessage::len) {
                                        *sizes.lock().unwrap() = m.len();
                                        biggest = Some(m.clone());
                                    }
                                    if p_tx.send(m).await.is_err() {
                                        return;
                                    }
                                }
                                _ => return,
                            },
                        }
                    }
                    // Stalled: `p_rx` is never read again; everything stays open.
                    if let Some(push) = biggest {
                        while p_tx.send(push.clone()).await.is_ok() {}
                    }
                    std::future::pending::<()>().await;
                    drop((p_rx, m_tx, m_rx));
                });
            }
        });
        Self {
            addr,
            current,
            largest,
        }
    }

    fn stall(&self) {
        let mut t = self.current.lock().unwrap();
        t.cancel();
        *t = CancellationToken::new();
    }

    fn largest(&self) -> usize {
        *self.largest.lock().unwrap()
    }

    /// `client` talking to its mediator's WebSocket through this one.
    fn route(&self, client: &MediatorClient) -> MediatorClient {
        client
            .with_mediator(MediatorInfo {
                ws: format!("ws://{}/ws", self.addr),
                ..client.info.clone()
            })
            .unwrap()
    }
}

/// Audit M1 (spec/mediator.md §8 "Keep-alive and opening"): a mediator that keeps the
/// connection open, keeps pushing, and stops reading makes each acknowledgement wait for
/// room in a full socket buffer. Before the fix the inbox waited on that write for ever
/// (its keep-alive is a branch of the same loop and cannot fire meanwhile): no
/// `LiveEvent::Lost`, no re-connect. Now a write bounded by `WRITE_TIMEOUT` fails, the
/// connection counts as lost, and the agent opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mediator_that_stops_reading_is_declared_lost_and_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let alice = mpc_did_testkit::mediator::registered_agent(&m.public_url)
        .await
        .0;
    let direct = registered_client(&m.public_url, Identity::generate()).await;
    let mitm = StallingMediator::start(direct.info.ws.clone()).await;
    let config = AgentConfig {
        keepalive: Duration::from_secs(1),
        ..AgentConfig::default()
    };
    let bob = Agent::start_with(mitm.route(&direct), config)
        .await
        .unwrap();
    let mut events = bob.live_events();
    // A message of a type nobody holds: each push of it is acknowledged (and dropped).
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let pad = "x".repeat(4000);
    let msg = Message::new(
        "junk",
        "https://mpc-did.example/junk/1.0/x",
        serde_json::json!({ "pad": pad }),
    );
    alice.send(bob.did(), msg).await.unwrap();
    assert!(
        wait_until(|| mitm.largest() > 4000, Duration::from_secs(20)).await,
        "the mediator pushed the message"
    );
    mitm.stall();
    let lost =
        mpc_did_testkit::mediator::next_live_event(&mut events, Duration::from_secs(120)).await;
    match &lost {
        LiveEvent::Lost { why } => assert!(why.contains("stopped reading"), "{why}"),
        other => panic!("{other:?}"),
    }
    let back =
        mpc_did_testkit::mediator::next_live_event(&mut events, Duration::from_secs(30)).await;
    assert!(matches!(back, LiveEvent::Back { .. }), "{back:?}");
    m.shutdown().await;
}

/// A fake HTTP server that answers every request with status 200 and a chunked body that
/// never ends (64 KiB every 10 ms, starting as JSON would). Returns its base URL.
async fn endless_body() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // The request head (the body, if any, is not read).
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             transfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n";
                if tcp.write_all(start.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = [
                    format!("{:x}\r\n", 64 << 10).into_bytes(),
                    vec![b' '; 64 << 10],
                ]
                .concat();
                loop {
                    if tcp.write_all(&chunk).await.is_err() || tcp.write_all(b"\r\n").await.is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Audit M2: `GET /oob` is read with a cap. Before the fix `discover` buffered the
/// answer until the 30 s request timeout (hundreds of MB from a fast server).
#[tokio::test]
async fn an_endless_oob_answer_is_refused() {
    let url = endless_body().await;
    let got = tokio::time::timeout(Duration::from_secs(10), MediatorInfo::discover(&url))
        .await
        .expect("discover gave up in time");
    match got {
        Err(ClientError::TooLarge { max, .. }) => assert_eq!(max, MAX_OOB_SIZE),
        other => panic!("{other:?}"),
    }
}

/// Audit M2: the mediator's reply to a request is read with a cap
/// ([`MAX_MEDIATOR_MESSAGE`], a few delivery batches). Before the fix `request` buffered
/// an endless reply until the 30 s request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_reply_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let real = registered_client(&m.public_url, Identity::generate()).await;
    let fake = real
        .with_mediator(MediatorInfo {
            http: format!("{}/didcomm", endless_body().await),
            ..real.info.clone()
        })
        .unwrap();
    let ping = Message::new(
        "ping-1",
        "https://didcomm.org/trust-ping/2.0/ping",
        serde_json::json!({}),
    );
    let got = tokio::time::timeout(Duration::from_secs(20), fake.request(ping))
        .await
        .expect("request gave up in time");
    match got {
        Err(ClientError::TooLarge { max, .. }) => assert_eq!(max, MAX_MEDIATOR_MESSAGE),
        other => panic!("{other:?}"),
    }
    m.shutdown().await;
}

/// Audit M3: a WebSocket message from the mediator longer than [`MAX_MEDIATOR_MESSAGE`]
/// ends the stream with an error as soon as its header says so. Before the fix the
/// client took tungstenite's default 64 MiB messages.
#[tokio::test]
async fn a_live_message_longer_than_a_few_batches_is_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let big = "x".repeat(MAX_MEDIATOR_MESSAGE + 1);
        let _ = ws.send(WsMessage::text(big)).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let mut ws = mpc_did_agent::client::connect_ws(&format!("ws://{addr}/ws"), &[])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an answer in time");
    match got {
        Some(Err(e)) => assert!(e.to_string().contains("Message too long"), "{e}"),
        Some(Ok(m)) => panic!("a message of {} bytes was accepted", m.len()),
        None => panic!("the stream ended without an error"),
    }
}
