//! Every bad request gets a problem report or an HTTP error, and the mediator stays up
//! (spec/mediator.md §4, §6).
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, introduce, MediatorProc};
use mpc_did_agent::client::ClientError;
use mpc_did_mediator::messages::{codes, message, types};
use serde_json::{json, Value};

async fn post(url: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/didcomm"))
        .header("content-type", "application/didcomm-encrypted+json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn code(v: &Value) -> &str {
    assert_eq!(
        v["type"],
        types::PROBLEM_REPORT,
        "not a problem report: {v}"
    );
    v["body"]["code"].as_str().unwrap()
}

#[tokio::test]
async fn bad_requests_are_refused_and_the_mediator_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_message_bytes = 65536\nmax_queue_messages = 2\n",
    )
    .unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&cfg));
    let url = m.url();

    // Garbage.
    for junk in [
        &b"not json"[..],
        b"{}",
        b"[1,2]",
        b"{\"ciphertext\":5}",
        b"\xff\xfe",
    ] {
        let (s, v) = post(&url, junk.to_vec()).await;
        assert_eq!(s, 400);
        assert_eq!(code(&v), codes::MALFORMED);
    }
    // Oversize (configured 64 KiB).
    let (s, v) = post(&url, vec![b' '; 70_000]).await;
    assert_eq!(s, 413);
    assert_eq!(code(&v), codes::TOO_BIG);

    // Pickup by a DID without a grant (wrong DID).
    let a = client(&url).await;
    a.register().await.unwrap();
    let stranger = client(&url).await;
    match stranger.fetch(10).await {
        Err(ClientError::Problem { code, .. }) => assert_eq!(code, codes::UNAUTHORIZED),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Registering someone else's key: the key is A's, so the stranger may not take it.
    stranger.register().await.unwrap();
    let updated = stranger
        .update_keys(&[(a.did.as_str(), "add")])
        .await
        .unwrap();
    assert_eq!(updated[0]["result"], "client_error");

    // Plaintext pickup request (no authcrypt): refused.
    let mut plain = message(types::DELIVERY_REQUEST, json!({ "limit": 5 }));
    plain.from = Some(a.did.clone());
    let (s, v) = post(&url, plain.to_json().unwrap().into_bytes()).await;
    assert_eq!(s, 403);
    assert_eq!(code(&v), codes::UNAUTHORIZED);

    // Forward to an unknown recipient.
    let nobody = client(&url).await; // never registered
    let b = client(&url).await;
    introduce(&b, &nobody);
    match b
        .send(
            &nobody.did,
            message("https://example.org/x/1.0/y", json!({})),
        )
        .await
    {
        Err(ClientError::Problem { code, .. }) => assert_eq!(code, codes::UNKNOWN_RECIPIENT),
        other => panic!("expected unknown recipient, got {other:?}"),
    }

    // A full queue refuses explicitly (limit 2), never drops silently.
    introduce(&b, &a);
    b.send(
        &a.did,
        message("https://example.org/x/1.0/y", json!({"n": 1})),
    )
    .await
    .unwrap();
    b.send(
        &a.did,
        message("https://example.org/x/1.0/y", json!({"n": 2})),
    )
    .await
    .unwrap();
    match b
        .send(
            &a.did,
            message("https://example.org/x/1.0/y", json!({"n": 3})),
        )
        .await
    {
        Err(ClientError::Problem { code, .. }) => assert_eq!(code, codes::QUEUE_FULL),
        other => panic!("expected queue full, got {other:?}"),
    }
    assert_eq!(a.status().await.unwrap()["message_count"], 2);

    // Replayed pickup: the same packed request twice.
    let req = a
        .pack_for_mediator(message(types::DELIVERY_REQUEST, json!({ "limit": 1 })))
        .await
        .unwrap();
    let (s1, _) = post(&url, req.clone().into_bytes()).await;
    assert_eq!(s1, 200);
    let (s2, body) = post(&url, req.into_bytes()).await;
    assert_eq!(s2, 409);
    // The refusal to an authenticated sender is encrypted to it.
    let (pr, _) = a.unpack(&serde_json::to_vec(&body).unwrap()).await.unwrap();
    assert_eq!(pr.body["code"], codes::REPLAY);

    // Unsupported message type, authenticated.
    match a
        .request(message("https://example.org/unknown/1.0/x", json!({})))
        .await
    {
        Err(ClientError::Problem { code, .. }) => assert_eq!(code, codes::UNSUPPORTED),
        other => panic!("expected unsupported, got {other:?}"),
    }
    // Live mode over HTTP is refused with the Pickup 3.0 code.
    match a
        .request(message(
            types::LIVE_DELIVERY_CHANGE,
            json!({"live_delivery": true}),
        ))
        .await
    {
        Err(ClientError::Problem { code, .. }) => assert_eq!(code, codes::LIVE_MODE_NOT_SUPPORTED),
        other => panic!("expected live-mode-not-supported, got {other:?}"),
    }

    // Trust Ping and Discover Features still work; the mediator is up.
    let pong = a
        .request(message(types::PING, json!({})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pong.type_, types::PING_RESPONSE);
    let disclose = a
        .request(message(types::QUERIES, json!({"queries": [{"feature-type": "protocol", "match": "https://didcomm.org/messagepickup/*"}]})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        disclose.body["disclosures"][0]["id"],
        "https://didcomm.org/messagepickup/3.0"
    );
    let health = reqwest::get(format!("{url}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);

    // Every refusal is counted in /metrics.
    // Metrics live on the operator listener, not the public port (spec/mediator.md §7).
    let metrics = reqwest::get(format!("{}/metrics", m.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, at_least) in [
        ("malformed", 5),
        ("too_large", 1),
        ("unauthorized", 2),
        ("unknown_recipient", 1),
        ("queue_full", 1),
        ("replay", 1),
        ("unsupported", 2),
    ] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "mpcdid_mediator_rejections_total{{reason=\"{reason}\"}}"
                ))
            })
            .unwrap();
        let n: u64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        assert!(n >= at_least, "{line}");
    }
    assert!(metrics.contains("mpcdid_mediator_queued_messages 2"));
    assert!(metrics.contains("mpcdid_mediator_limit{name=\"max_message_bytes\"} 65536"));

    // WebSocket garbage also gets a problem report on the socket.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", m.addr))
        .await
        .unwrap();
    use futures_util::{SinkExt as _, StreamExt as _};
    ws.send(tokio_tungstenite::tungstenite::Message::text("garbage"))
        .await
        .unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    let v: Value = serde_json::from_slice(&reply.into_data()).unwrap();
    assert_eq!(code(&v), codes::MALFORMED);
    // Graceful shutdown exits 0.
    assert!(m.terminate().success());
}

/// Per-connection rate and idle timeout (spec/mediator.md §6).
#[tokio::test]
async fn connection_limits_are_enforced() {
    use futures_util::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(
        &cfg,
        "[limits]\nrate_per_connection = 1\nrate_burst = 3\nidle_timeout_secs = 1\n",
    )
    .unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&cfg));
    let url = m.url();
    // One keep-alive connection: the burst passes, then 429 with a problem report.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let ping = message(types::PING, json!({})).to_json().unwrap();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = http
            .post(format!("{url}/didcomm"))
            .body(ping.clone())
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status().as_u16() == 429 {
            let v: Value = r.json().await.unwrap();
            assert_eq!(code(&v), codes::RATE_LIMITED);
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");

    // Idle timeout: silent WebSockets are closed by the mediator within ~1 s.
    let ws_url = format!("ws://{}/ws", m.addr);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            tokio_tungstenite::connect_async(ws_url.as_str())
                .await
                .unwrap()
                .0,
        );
    }
    for ws in &mut open {
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(m)) if m.is_close() => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(end.is_ok(), "idle socket not closed");
    }
    // Metrics live on the operator listener, not the public port (spec/mediator.md §7).
    let metrics = reqwest::get(format!("{}/metrics", m.admin_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("mpcdid_mediator_rejections_total{reason=\"rate_limited\"}"));
    assert!(!metrics.contains("rate_limited\"} 0\n"));
}

/// Over the connection limit a client gets 503 and the mediator keeps serving others.
#[tokio::test]
async fn connection_limit_refuses_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("m.toml");
    std::fs::write(&cfg, "[limits]\nmax_connections = 2\n").unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&cfg));
    let ws_url = format!("ws://{}/ws", m.addr);
    let a = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap()
        .0;
    let b = tokio_tungstenite::connect_async(ws_url.as_str())
        .await
        .unwrap()
        .0;
    let third = reqwest::get(format!("{}/healthz", m.url())).await.unwrap();
    assert_eq!(third.status().as_u16(), 503);
    drop((a, b));
    let healthy = || async {
        reqwest::get(format!("{}/healthz", m.url()))
            .await
            .is_ok_and(|r| r.status().is_success())
    };
    assert!(
        mpc_did_testkit::wait_until_async(healthy, std::time::Duration::from_secs(3)).await,
        "slots are released when connections close"
    );
}
