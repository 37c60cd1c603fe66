//! Strangers who know a DID (spec/mediator.md §6.1): what one of them can hold — connection
//! slots, mediator memory, a recipient's queue, another DID's keys — is bounded, and each
//! refusal is typed. Real binary on loopback; each test fails on the mediator before the
//! fix it names.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client, introduce, metric, registered_pair, MediatorProc};
use futures_util::{SinkExt as _, StreamExt as _};
use mpc_did_agent::client::{send_message, ClientError};
use mpc_did_mediator::messages::{codes, message, types};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message as WsMessage;

fn start(dir: &tempfile::TempDir, limits: &str) -> MediatorProc {
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, format!("[limits]\n{limits}")).unwrap();
    MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&cfg))
}

async fn post(url: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/didcomm"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap().to_vec())
}

fn problem_code(e: ClientError) -> String {
    match e {
        ClientError::Problem { code, .. } => code,
        other => panic!("expected a problem report, got {other:?}"),
    }
}

/// Finding 8: a client that sends the headers and then trickles the body is cut off
/// (`408`, connection closed) after `body_timeout_secs`, not after the 300 s idle timeout.
#[tokio::test]
async fn slow_body_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "body_timeout_secs = 2\n");
    let mut tcp = tokio::net::TcpStream::connect(&m.addr).await.unwrap();
    tcp.write_all(b"POST /didcomm HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let (mut rd, mut wr) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        // One byte every 200 ms: never idle, never done (the slow peer this test is
        // about; the sleep paces it).
        while wr.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(read.is_ok(), "slow body still open after 15 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains(codes::TIMEOUT), "{text}");
    assert!(started.elapsed() < Duration::from_secs(12));
}

/// Finding 8: one source address cannot take every connection slot: past
/// `max_connections_per_ip` it gets `503`, while another address is still served and a
/// closed connection gives its slot back.
#[tokio::test]
async fn connections_are_limited_per_source_address() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "max_connections_per_ip = 3\n");
    let ws_url = format!("ws://{}/ws", m.addr);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            tokio_tungstenite::connect_async(ws_url.as_str())
                .await
                .unwrap()
                .0,
        );
    }
    let fourth = reqwest::get(format!("{}/healthz", m.url())).await.unwrap();
    assert_eq!(fourth.status().as_u16(), 503);
    let other = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let r = other
        .get(format!("{}/healthz", m.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "another address is served");
    drop(held.pop());
    let healthy = || async {
        let r = reqwest::get(format!("{}/healthz", m.url())).await.unwrap();
        r.status().is_success()
    };
    assert!(
        mpc_did_testkit::wait_until_async(healthy, Duration::from_secs(10)).await,
        "slot not given back"
    );
}

/// Finding 8: a WebSocket that never authenticates is closed after `ws_auth_timeout_secs`
/// although it keeps pinging; one that sent an authenticated request stays open.
#[tokio::test]
async fn unauthenticated_websocket_closed_despite_pings() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "ws_auth_timeout_secs = 2\n");
    let ws_url = format!("ws://{}/ws", m.addr);
    let (mut anon, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    let (mut authed, _) = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap();
    let a = client(&m.url()).await;
    let ping = a
        .pack_for_mediator(message(types::PING, json!({})))
        .await
        .unwrap();
    authed.send(WsMessage::text(ping)).await.unwrap();
    let pong = authed.next().await.unwrap().unwrap();
    let (pong, _) = a.unpack(&pong.into_data()).await.unwrap();
    assert_eq!(pong.type_, types::PING_RESPONSE);

    let started = Instant::now();
    let mut anon_closed = None;
    while started.elapsed() < Duration::from_secs(10) && anon_closed.is_none() {
        for ws in [&mut anon, &mut authed] {
            let _ = ws.send(WsMessage::Ping(b"keep me".to_vec().into())).await;
        }
        let step = tokio::time::timeout(Duration::from_millis(300), anon.next()).await;
        if let Ok(None | Some(Err(_)) | Some(Ok(WsMessage::Close(_)))) = step {
            anon_closed = Some(started.elapsed());
        }
        // Keep the authenticated socket's pongs read.
        while let Ok(Some(Ok(_))) =
            tokio::time::timeout(Duration::from_millis(1), authed.next()).await
        {}
    }
    let closed = anon_closed.expect("unauthenticated socket still open after 10 s of pings");
    assert!(
        closed >= Duration::from_millis(1500),
        "closed too early: {closed:?}"
    );
    // The authenticated one is still served.
    let ping = a
        .pack_for_mediator(message(types::PING, json!({})))
        .await
        .unwrap();
    authed.send(WsMessage::text(ping)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match authed.next().await {
                Some(Ok(WsMessage::Text(t))) => return t.as_bytes().to_vec(),
                Some(Ok(_)) => {}
                other => panic!("authenticated socket closed: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    let (pong, _) = a.unpack(&reply).await.unwrap();
    assert_eq!(pong.type_, types::PING_RESPONSE);
}

/// Counts the 429 answers on `rx` until `want` came or 10 s passed; any other status fails
/// the test.
async fn refusals(rx: &mut tokio::sync::mpsc::UnboundedReceiver<u16>, want: usize) -> usize {
    let mut refused = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused < want {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(429)) => refused += 1,
            Ok(Some(s)) => panic!("unexpected status {s}"),
            Ok(None) | Err(_) => break,
        }
    }
    refused
}

/// Finding 9: unfinished HTTP/2 bodies on one connection cannot pin more than
/// `max_body_bytes_per_connection`: streams past the budget are refused (`429`) at once,
/// while their bodies are still unfinished.
#[tokio::test]
async fn unfinished_http2_bodies_are_bounded_per_connection() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let dir = tempfile::tempdir().unwrap();
    let m = start(
        &dir,
        "max_message_bytes = 1048576\nmax_body_bytes_per_connection = 1048576\nbody_timeout_secs = 30\n",
    );
    let tcp = tokio::net::TcpStream::connect(&m.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let chunk = bytes::Bytes::from(vec![b' '; 100_000]);
    let streams: u32 = 40;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..streams {
        // 100 kB of body, then nothing more: never finished.
        let first = futures_util::stream::once(std::future::ready(
            Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())),
        ));
        let body = StreamBody::new(first.chain(futures_util::stream::pending()));
        let req = hyper::Request::post(format!("{}/didcomm", m.url()))
            .body(body)
            .unwrap();
        let mut sender = sender.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Ok(resp) = sender.send_request(req).await {
                let _ = tx.send(resp.status().as_u16());
            }
        });
    }
    // 4 MB sent, 1 MiB allowed: most streams must be refused long before the body timeout.
    let refused = refusals(&mut rx, 25).await;
    assert!(
        refused >= 25,
        "only {refused} of {streams} unfinished streams refused within 10 s"
    );
    conn.abort();
    let health = reqwest::get(format!("{}/healthz", m.url())).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// Finding 9, over connections: the per-connection budget alone let one address with
/// 1,000 connections pin 4 GiB of unfinished bodies. All connections of one source share
/// `max_body_bytes_per_source` (spec/mediator.md §6.1): here 8 connections, each under its
/// own 1 MiB budget, send 500 kB each and stop; past the source's 2 MiB the rest get `429`
/// while their bodies are still unfinished, and another address is still served.
#[tokio::test]
async fn unfinished_bodies_are_bounded_per_source() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(
        &dir,
        "max_message_bytes = 1048576\nmax_body_bytes_per_connection = 1048576\nmax_body_bytes_per_source = 2097152\nbody_timeout_secs = 30\n",
    );
    let conns: u32 = 8;
    let (mut rx, drivers) = unfinished_bodies(&m, conns, None).await;
    // 4 MB sent, 2 MiB allowed: at least 3 must be refused long before the body timeout.
    let refused = refusals(&mut rx, 3).await;
    assert!(
        refused >= 3,
        "only {refused} of {conns} unfinished bodies refused within 10 s"
    );
    // Another address is not charged for them.
    let http = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let ping = serde_json::to_vec(&message(types::PING, json!({}))).unwrap();
    let resp = http
        .post(format!("{}/didcomm", m.url()))
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    for d in drivers {
        d.abort();
    }
}

/// `conns` HTTP/2 connections to `m`, each sending a request of 500 kB of body and then
/// nothing more (never finished), with `X-Forwarded-For: xff` if given. The statuses that
/// come back arrive on the receiver; the connection drivers are returned to be aborted.
async fn unfinished_bodies(
    m: &MediatorProc,
    conns: u32,
    xff: Option<&str>,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<u16>,
    Vec<tokio::task::JoinHandle<Result<(), hyper::Error>>>,
) {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let chunk = bytes::Bytes::from(vec![b' '; 500_000]);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut drivers = Vec::new();
    for _ in 0..conns {
        let tcp = tokio::net::TcpStream::connect(&m.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        drivers.push(tokio::spawn(conn));
        let first = futures_util::stream::once(std::future::ready(
            Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())),
        ));
        let body = StreamBody::new(first.chain(futures_util::stream::pending()));
        let mut req = hyper::Request::post(format!("{}/didcomm", m.url()));
        if let Some(x) = xff {
            req = req.header("x-forwarded-for", x);
        }
        let req = req.body(body).unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            if let Ok(resp) = sender.send_request(req).await {
                let _ = tx.send(resp.status().as_u16());
            }
        });
    }
    (rx, drivers)
}

/// Behind a trusted proxy (audit of 2026-12-07): the proxy's connections carry many
/// clients, so they were not counted per source at all, and one client could take every
/// WebSocket slot and pin unfinished bodies up to the global limits. Now each client, by
/// `X-Forwarded-For`, has `max_connections_per_ip` WebSockets and
/// `max_body_bytes_per_source` of unfinished bodies (spec/mediator.md §6.1); another client
/// behind the same proxy is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_client_has_its_own_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "trusted_proxies = [\"127.0.0.1\"]\n[limits]\nmax_connections_per_ip = 4\nmax_message_bytes = 1048576\nmax_body_bytes_per_connection = 1048576\nmax_body_bytes_per_source = 2097152\nbody_timeout_secs = 30\n",
    )
    .unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&cfg));

    // WebSockets: the fifth of one client is refused, another client's is accepted.
    let ws = |xff: &'static str| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                format!("ws://{}/ws", m.addr),
            )
            .unwrap();
        req.headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let mut held = Vec::new();
    for i in 0..4 {
        let (s, _) = ws("198.51.100.7")
            .await
            .unwrap_or_else(|e| panic!("WebSocket {i} of the client refused: {e}"));
        held.push(s);
    }
    let fifth = ws("198.51.100.7").await;
    assert!(
        fifth.is_err(),
        "a fifth WebSocket of one client was accepted"
    );
    let (other, _) = ws("198.51.100.8")
        .await
        .expect("another client behind the proxy was refused");
    drop(held);
    drop(other);

    // Unfinished bodies: 8 × 500 kB from one client, 2 MiB allowed.
    let (mut rx, drivers) = unfinished_bodies(&m, 8, Some("198.51.100.7")).await;
    let refused = refusals(&mut rx, 3).await;
    assert!(
        refused >= 3,
        "only {refused} of 8 unfinished bodies of one client refused within 10 s"
    );
    let ping = serde_json::to_vec(&message(types::PING, json!({}))).unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/didcomm", m.url()))
        .header("x-forwarded-for", "198.51.100.8")
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "another client was charged");
    for d in drivers {
        d.abort();
    }
}

/// Finding 9: a 600 kB message id (kept for 300 s by the replay cache and echoed in the
/// reply) is refused; ids up to 256 bytes still work.
#[tokio::test]
async fn huge_message_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "max_message_bytes = 4194304\n");
    let a = client(&m.url()).await;
    let mut ping = message(types::PING, json!({}));
    ping.id = "x".repeat(600_000);
    let code = problem_code(a.request(ping).await.unwrap_err());
    assert_eq!(code, codes::BAD_REQUEST);
    let mut ping = message(types::PING, json!({}));
    ping.id = "y".repeat(256);
    let pong = a.request(ping).await.unwrap().unwrap();
    assert_eq!(pong.type_, types::PING_RESPONSE);
}

/// Finding 11: a DID cannot register another DID (or a key under it) to divert its mail,
/// and the owner's own registration still succeeds.
#[tokio::test]
async fn keylist_squatting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "");
    let url = m.url();
    let alice = client(&url).await;
    let mallory = client(&url).await;
    mallory.register().await.unwrap();
    let alice_key = format!("{}#{}", alice.did, &alice.did["did:key:".len()..]);
    let updated = mallory
        .update_keys(&[(alice.did.as_str(), "add"), (alice_key.as_str(), "add")])
        .await
        .unwrap();
    assert_eq!(updated[0]["result"], "client_error", "{updated:?}");
    assert_eq!(updated[1]["result"], "client_error", "{updated:?}");
    assert!(!mallory.keys().await.unwrap().contains(&alice.did));
    // Alice registers her DID and a key under it.
    alice.register().await.unwrap();
    let updated = alice
        .update_keys(&[(alice_key.as_str(), "add")])
        .await
        .unwrap();
    assert_eq!(updated[0]["result"], "success", "{updated:?}");
    assert_eq!(alice.keys().await.unwrap().len(), 2);
    // Mail for Alice reaches Alice.
    let bob = client(&url).await;
    introduce(&bob, &alice);
    bob.send(
        &alice.did,
        message("https://example.org/x/1.0/y", json!({})),
    )
    .await
    .unwrap();
    assert_eq!(alice.fetch(10).await.unwrap().len(), 1);
    assert!(mallory.fetch(10).await.unwrap().is_empty());
}

/// Finding 11, after the fact: a key squatted before the ownership rule (seeded here
/// straight into a Redis store, as an old mediator left it) is taken back when its owner
/// registers it, and the owner's mail then reaches the owner. Redis backend.
#[tokio::test]
async fn squatted_key_is_taken_back_by_its_owner() {
    use mpc_did_mediator::store::{KeyUpdate, RedisStore, Store as _};
    let redis = mpc_did_testkit::mediator::RedisServer::start().unwrap();
    let (alice_did, alice_secrets) = mpc_did_testkit::mediator::ephemeral_identity();
    let mallory = "did:key:z6MkfakeMallory";
    let store = RedisStore::connect(&redis.url, "mpcdid:").await.unwrap();
    store.grant(mallory).await.unwrap();
    assert_eq!(
        store.add_key(mallory, &alice_did).await.unwrap(),
        KeyUpdate::Success
    );
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &["--store", &redis.url]);
    let info = mpc_did_agent::client::MediatorInfo::discover(&m.url())
        .await
        .unwrap();
    let alice = mpc_did_agent::client::MediatorClient::new(
        info,
        &alice_did,
        alice_secrets,
        mpc_did_resolver::UniversalResolver::new().unwrap(),
    )
    .unwrap();
    alice.register().await.unwrap();
    assert_eq!(alice.keys().await.unwrap(), vec![alice_did.clone()]);
    assert_eq!(
        store.key_owner(&alice_did).await.unwrap(),
        Some(alice_did.clone())
    );
    assert!(store.keys(mallory).await.unwrap().is_empty());
    let bob = client(&m.url()).await;
    introduce(&bob, &alice);
    bob.send(
        &alice_did,
        message("https://example.org/x/1.0/y", json!({})),
    )
    .await
    .unwrap();
    assert_eq!(alice.fetch(10).await.unwrap().len(), 1);
}

/// Finding 12: a state-changing request without `created_time` is refused, so a captured
/// one cannot be replayed once the 300 s replay window is over.
#[tokio::test]
async fn state_changing_request_needs_created_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "");
    let a = client(&m.url()).await;
    a.register().await.unwrap();
    let mut remove = message(
        types::RECIPIENT_UPDATE,
        json!({ "updates": [{ "recipient_did": a.did, "action": "remove" }] }),
    );
    remove.created_time = None;
    let packed = a.pack_for_mediator(remove).await.unwrap();
    let (status, body) = post(&m.url(), packed.into_bytes()).await;
    assert_eq!(status, 409);
    let (pr, _) = a.unpack(&body).await.unwrap();
    assert_eq!(pr.body["code"], codes::REPLAY);
    assert_eq!(a.keys().await.unwrap(), vec![a.did.clone()]);
    // Read-only requests keep working without it.
    let mut status_req = message(types::STATUS_REQUEST, json!({}));
    status_req.created_time = None;
    let st = a.request(status_req).await.unwrap().unwrap();
    assert_eq!(st.type_, types::STATUS);
}

/// Finding 14: a 12,000-entry `recipient-update` is refused before any store work, with a
/// short problem report; the keylist is unchanged.
#[tokio::test]
async fn large_keylist_update_is_refused_cheaply() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "max_message_bytes = 8388608\n");
    let a = client(&m.url()).await;
    a.register().await.unwrap();
    let keys: Vec<String> = (0..12_000).map(|i| format!("{}#k{i}", a.did)).collect();
    let ups: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "add")).collect();
    let packed = a
        .pack_for_mediator(message(
            types::RECIPIENT_UPDATE,
            json!({ "updates": ups.iter().map(|(k, act)| json!({"recipient_did": k, "action": act})).collect::<Vec<Value>>() }),
        ))
        .await
        .unwrap();
    let (status, body) = post(&m.url(), packed.into_bytes()).await;
    assert_eq!(status, 413);
    assert!(body.len() < 4096, "reply of {} bytes", body.len());
    let (pr, _) = a.unpack(&body).await.unwrap();
    assert_eq!(pr.body["code"], codes::TOO_BIG);
    assert_eq!(a.keys().await.unwrap(), vec![a.did.clone()]);
    // 100 entries are still one request.
    let updated = a.update_keys(&ups[..100]).await.unwrap();
    assert_eq!(updated.len(), 100);
    assert_eq!(updated[0]["result"], "success");
}

/// Finding 3 (mediator half): 1,000 messages from one stranger do not fill the recipient's
/// queue nor its live window: past `max_queued_per_source` (default 500) they are refused
/// (`429`, `e.p.req.source-quota`), and a message from another address is still pushed to
/// a recipient that never acknowledged the stranger's.
#[tokio::test]
async fn one_stranger_cannot_block_a_recipients_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "");
    let (alice, stranger) = registered_pair(&m.url()).await;
    let mut stored = 0;
    let mut refused = 0;
    for n in 0..1_000 {
        let junk = message("https://example.org/unknown/1.0/junk", json!({ "n": n }));
        match stranger.send(&alice.did, junk).await {
            Ok(_) => stored += 1,
            Err(e) => {
                assert_eq!(problem_code(e), codes::SOURCE_QUOTA);
                refused += 1;
            }
        }
    }
    // A friend on another address (127.0.0.2 is loopback too).
    let friend = client(&m.url()).await;
    introduce(&friend, &alice);
    let http = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let hello = message("https://example.org/chat/1.0/hello", json!({ "hi": true }));
    send_message(
        &http,
        &friend.did,
        friend.secrets(),
        friend.resolver(),
        &alice.did,
        hello,
    )
    .await
    .unwrap();
    // Alice goes live and never acknowledges anything.
    let mut live = alice.live().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = match live.next_batch(left).await {
            Ok(b) => b,
            Err(e) => panic!("friend's message not pushed after {seen} pushes: {e:?}"),
        };
        seen += batch.len();
        let mut found = false;
        for d in &batch {
            let (msg, _) = alice.unpack(&d.bytes).await.unwrap();
            found |= msg.type_ == "https://example.org/chat/1.0/hello";
        }
        if found {
            break;
        }
    }
    live.close().await;
    assert_eq!((stored, refused), (500, 500));
}

/// Finding 3, bytes (spec/mediator.md §6.1): large messages from one address fill at most
/// its `max_queued_bytes_per_source` of the recipient's queue, not `max_queue_bytes`, so a
/// large message from another address is still accepted. Counted in messages only, 10 of
/// these ~400 kB forwards filled the 4 MiB queue and every other sender got
/// `e.p.me.res.storage.queue-full` until the recipient drained it.
#[tokio::test]
async fn one_stranger_cannot_fill_a_recipients_queue_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(
        &dir,
        "max_queue_bytes = 4194304
max_queued_bytes_per_source = 1048576
",
    );
    let (alice, stranger) = registered_pair(&m.url()).await;
    let big = |n: u32| {
        message(
            "https://example.org/unknown/1.0/junk",
            json!({ "n": n, "pad": "x".repeat(300_000) }),
        )
    };
    let mut stored = 0;
    let mut refused = 0;
    for n in 0..12 {
        match stranger.send(&alice.did, big(n)).await {
            Ok(_) => stored += 1,
            Err(e) => {
                assert_eq!(problem_code(e), codes::SOURCE_QUOTA, "message {n}");
                refused += 1;
            }
        }
    }
    assert!(
        stored >= 1 && refused > 0,
        "stored {stored}, refused {refused}"
    );
    let st = alice.status().await.unwrap();
    assert!(
        st["total_bytes"].as_u64().unwrap() <= 1_048_576,
        "one address holds {} bytes",
        st["total_bytes"]
    );
    // A friend on another address (127.0.0.2 is loopback too) sends a large one as well.
    let friend = client(&m.url()).await;
    introduce(&friend, &alice);
    let http = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    send_message(
        &http,
        &friend.did,
        friend.secrets(),
        friend.resolver(),
        &alice.did,
        big(99),
    )
    .await
    .unwrap();
    assert_eq!(alice.status().await.unwrap()["message_count"], stored + 1);
}

/// A busy sender to a live recipient keeps its quota: a recipient that acknowledges at once
/// can acknowledge a message before the forward that stored it has settled its place (the
/// forward still waits for the store's group commit). That place must be freed all the
/// same; it used to stay taken for `source_quota_secs` (10 minutes), so a sender that talked
/// steadily to one recipient was refused (`e.p.req.source-quota`) after a few hundred
/// messages although nothing was waiting (spec/mediator.md §6.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_free_the_senders_quota() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "max_queued_per_source = 8\n");
    let (alice, bob) = registered_pair(&m.url()).await;
    let mut live = alice.live_raw(Duration::from_secs(10)).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let reader = tokio::spawn(async move {
        let mut got = 0usize;
        loop {
            let batch = tokio::select! {
                () = stopped.cancelled() => break,
                b = live.next_batch(Duration::from_secs(1)) => b,
            };
            match batch {
                Ok(items) => {
                    got += items.len();
                    let ids: Vec<String> = items.into_iter().map(|d| d.id).collect();
                    live.ack(&ids).await.unwrap();
                }
                Err(ClientError::Timeout) => {}
                Err(e) => panic!("live delivery failed: {e:?}"),
            }
        }
        live.close().await;
        got
    });
    // Four senders at once from one address, as a party's concurrent sessions are.
    let bob = std::sync::Arc::new(bob);
    let mut senders = Vec::new();
    for t in 0..4 {
        let (bob, to) = (bob.clone(), alice.did.clone());
        senders.push(tokio::spawn(async move {
            for n in 0..250 {
                // A refusal while the recipient catches up is fine; one that lasts is a
                // place held by a message already delivered.
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let msg = message("https://example.org/chat/1.0/note", json!({ "t": t, "n": n }));
                    match bob.send(&to, msg).await {
                        Ok(_) => break,
                        Err(e) => {
                            assert_eq!(problem_code(e), codes::SOURCE_QUOTA);
                            assert!(
                                Instant::now() < deadline,
                                "message {n} of sender {t} still refused after 5 s: the address's places are held by messages the recipient acknowledged"
                            );
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while alice.status().await.unwrap()["message_count"] != 0 {
        assert!(Instant::now() < deadline, "not all messages were delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    assert_eq!(reader.await.unwrap(), 1_000);
}

/// A TCP connection to `addr` whose receive buffer is as small as the kernel allows: the
/// client that sends requests and does not read their answers (audit H2).
async fn slow_reader(addr: &str) -> tokio::net::TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(addr.parse().unwrap()).await.unwrap()
}

/// Writes `chunk` until a write fails (the server closed, the kernel then resets) and says
/// when that happened; pending for ever while the server keeps the connection open.
async fn write_until_closed<W>(mut w: W, chunk: Vec<u8>) -> Instant
where
    W: tokio::io::AsyncWrite + Unpin,
{
    while w.write_all(&chunk).await.is_ok() {}
    Instant::now()
}

/// Audit H2: a WebSocket client that sends junk frames and never reads their problem
/// reports used to block its session in a write, where neither the auth deadline nor the
/// idle timeout could fire: the socket stayed open for good (180 s seen). Every write now
/// has a deadline: the connection is closed within seconds and its counts go back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_that_does_not_read_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "ws_auth_timeout_secs = 1\nidle_timeout_secs = 1\n");
    let tcp = slow_reader(&m.addr).await;
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", m.addr), tcp)
        .await
        .unwrap();
    let (mut wr, _rd) = ws.split();
    let started = Instant::now();
    let junk = "x".repeat(200);
    let flood = tokio::spawn(async move {
        while wr.send(WsMessage::text(junk.clone())).await.is_ok() {}
        Instant::now()
    });
    let ended = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("the WebSocket of a client that does not read is still open after 20 s")
        .unwrap();
    assert!(ended - started < Duration::from_secs(15));
    let closed = || async {
        metric(&m.admin_url(), "mpcdid_mediator_websockets_open").await == 0
            && metric(&m.admin_url(), "mpcdid_mediator_connections_open").await == 0
    };
    assert!(
        mpc_did_testkit::wait_until_async(closed, Duration::from_secs(10)).await,
        "the WebSocket is still counted open"
    );
}

/// Audit H2: pipelined `GET /did.json` whose answers are never read. After the idle check
/// shut the connection down gracefully, the server waited for hyper to finish a response
/// write that could not progress: the connection stayed open for good. It now gets one more
/// idle period, then it is dropped and its slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_that_are_not_read_do_not_pin_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let m = start(&dir, "idle_timeout_secs = 1\nmax_connections_per_ip = 1\n");
    let tcp = slow_reader(&m.addr).await;
    let (_rd, wr) = tcp.into_split();
    let started = Instant::now();
    let chunk = b"GET /did.json HTTP/1.1\r\nhost: x\r\n\r\n".repeat(100);
    let flood = tokio::spawn(write_until_closed(wr, chunk));
    let ended = tokio::time::timeout(Duration::from_secs(20), flood)
        .await
        .expect("the connection of a client that does not read is still open after 20 s")
        .unwrap();
    assert!(ended - started < Duration::from_secs(15));
    // The address's only slot is free again.
    let served = || async {
        reqwest::get(format!("{}/healthz", m.url()))
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    assert!(
        mpc_did_testkit::wait_until_async(served, Duration::from_secs(10)).await,
        "the slot of the closed connection was not given back"
    );
}
