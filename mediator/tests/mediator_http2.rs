//! The mediator's HTTP listener (spec/mediator.md §2, §6): HTTP/2 with prior knowledge
//! (h2c) beside HTTP/1.1 on the same port, idle HTTP/2 connections closed after
//! `idle_timeout_secs`, and the configured `listen(2)` backlog. Real binary on loopback.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{metric, registered_pair, MediatorProc};
use mpc_did_agent::client::send_message;
use mpc_did_mediator::messages::message;
use serde_json::json;

/// spec/mediator.md §2: many forwards in flight on one HTTP/2 connection are all stored
/// (202 each) and all picked up; they used one TCP connection.
#[tokio::test]
async fn forwards_multiplexed_on_one_http2_connection() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let (a, b) = registered_pair(&m.url()).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let health = h2.get(format!("{}/healthz", m.url())).send().await.unwrap();
    assert_eq!(health.version(), reqwest::Version::HTTP_2);
    assert!(health.status().is_success());

    let before = metric(&m.admin_url(), "mpcdid_mediator_connections_total").await;
    let sends = (0..40).map(|i| {
        let (h2, b, to) = (h2.clone(), b.clone(), a.did.clone());
        tokio::spawn(async move {
            let msg = message("https://example.org/test/1.0/note", json!({ "n": i }));
            send_message(&h2, &b.did, b.secrets(), b.resolver(), &to, msg).await
        })
    });
    for s in futures_util::future::join_all(sends).await {
        s.unwrap().unwrap();
    }
    // The 40 requests opened no connection besides the one /healthz used (the /metrics
    // reads go to the operator listener, which the public counters do not see).
    let after = metric(&m.admin_url(), "mpcdid_mediator_connections_total").await;
    assert_eq!(
        after - before,
        0,
        "the 40 sends reused the one HTTP/2 connection"
    );

    let got = a.fetch(100).await.unwrap();
    let mut ns: Vec<u64> = Vec::new();
    for d in &got {
        let (msg, meta) = a.unpack(&d.bytes).await.unwrap();
        assert!(meta.authenticated);
        ns.push(msg.body["n"].as_u64().unwrap());
    }
    ns.sort_unstable();
    assert_eq!(ns, (0..40).collect::<Vec<u64>>());
}

/// spec/mediator.md §6 `idle_timeout_secs`: an HTTP/2 connection that carries no request
/// for that long is closed by the mediator (GOAWAY, then EOF), as HTTP/1.1 keep-alive
/// connections are by the header read timeout.
#[tokio::test]
async fn idle_http2_connection_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mediator.toml");
    std::fs::write(&config, "[limits]\nidle_timeout_secs = 1\n").unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&config));
    let tcp = tokio::net::TcpStream::connect(&m.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get(format!("{}/healthz", m.url()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    // Then nothing: the server ends the connection. (The bound only keeps a broken build
    // from hanging the suite; the timeout is 1 s.)
    tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .expect("the mediator closes an idle HTTP/2 connection")
        .unwrap()
        .unwrap();
    assert!(sender.is_closed());
}

/// spec/mediator.md §6 `listen_backlog`: the listening socket has the configured backlog
/// (`ss` shows it as the Send-Q of a LISTEN socket), not tokio's fixed 1,024.
#[test]
fn listen_backlog_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mediator.toml");
    std::fs::write(&config, "[limits]\nlisten_backlog = 2000\n").unwrap();
    let m = MediatorProc::start_with_config(&dir.path().join("data"), &[], Some(&config));
    let port = m.addr.rsplit_once(':').unwrap().1;
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2, installed by test.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let somaxconn: u64 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let send_q: u64 = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("no LISTEN socket on {port}: {text:?}"))
        .parse()
        .unwrap();
    assert_eq!(send_q, 2000.min(somaxconn), "{text}");
}
