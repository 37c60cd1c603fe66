//! Relay mesh benchmark (issue 18 item 2): throughput and round-trip time between two relay
//! clients on **one** mediator instance vs on **two** instances of a mesh
//! (spec/rendezvous.md §4.7), measured in the same run, same flow control as
//! `benches/relay.rs` (1 MiB windows, 4 in flight; 64-byte ping-pongs).
//!
//! Run: `cargo bench -p mpc-did-benches --bench relay_mesh` (needs `redis-server` on
//! `$PATH`; prints a markdown table). Without `--bench` (as `cargo test --benches` runs it)
//! it does a small smoke run, and it is skipped with a message when `redis-server` is
//! missing.
//!
//! Setup: one process, a 2-worker tokio runtime running both instances and both clients;
//! the instances share one real `redis-server` (presence) and link over loopback TCP; relay
//! limits raised out of the way; WebSocket transport (what parties use).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::latency;
use mpc_did_mediator::mesh::MeshConfig;
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig, RelayServiceHandle};
use mpc_did_mediator::{Config, Mediator, MediatorHandle};
use mpc_did_rendezvous::net::{RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use mpc_did_testkit::mediator::RedisServer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const WINDOW: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

async fn throughput<A, B>(mut tx: A, mut rx: B, total: usize) -> (f64, A, B)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let windows = total / WINDOW;
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        let mut buf = vec![0u8; WINDOW];
        for _ in 0..windows {
            rx.read_exact(&mut buf).await.unwrap();
            rx.write_all(&[1]).await.unwrap();
            rx.flush().await.unwrap();
        }
        rx
    });
    let chunk = vec![0x5au8; 64 << 10];
    let mut acked = 0usize;
    let mut ack = [0u8; 1];
    for w in 0..windows {
        while w - acked >= IN_FLIGHT {
            tx.read_exact(&mut ack).await.unwrap();
            acked += 1;
        }
        for _ in 0..WINDOW / chunk.len() {
            tx.write_all(&chunk).await.unwrap();
        }
        tx.flush().await.unwrap();
    }
    while acked < windows {
        tx.read_exact(&mut ack).await.unwrap();
        acked += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rx = recv.await.unwrap();
    ((windows * WINDOW) as f64 / secs / (1 << 20) as f64, tx, rx)
}

fn identity(n: u8) -> RelayIdentity {
    RelayIdentity::did_key(SigningKey::from_bytes(&[n; 32]))
}

fn key(n: u8) -> PeerAddr {
    PeerAddr::Key(SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes())
}

async fn instance(redis: &str, dir: &std::path::Path) -> (MediatorHandle, RelayServiceHandle) {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: dir.to_path_buf(),
        store: redis.to_owned(),
        ..Config::default()
    };
    let relay = RelayService::bind(RelayServiceConfig {
        rate_bytes_per_sec: 64 << 30,
        burst_bytes: 16 << 20,
        max_queue_bytes: 8 << 20,
        max_queue_frames: 4096,
        mesh: Some(MeshConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: None,
            key: vec![0x42; 32].into(),
            redis_url: redis.to_owned(),
            prefix: "mpcdid:".into(),
            presence_ttl: Duration::from_secs(30),
            allow_public_listen: false,
        }),
        ..RelayServiceConfig::default()
    })
    .await
    .unwrap();
    let h = relay.handle();
    let m = Mediator::builder(config)
        .service(relay)
        .start()
        .await
        .unwrap();
    (m, h)
}

/// Waits until the other instance can find `n` in the presence table.
async fn present(redis: &str, n: u8) {
    let client = redis::Client::open(redis).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let PeerAddr::Key(k) = key(n) else {
        unreachable!()
    };
    let entry = format!("mpcdid:relay:k:{}", hex::encode(k));
    for _ in 0..500 {
        let v: Option<String> = redis::cmd("GET")
            .arg(&entry)
            .query_async(&mut con)
            .await
            .unwrap();
        if v.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("presence of client {n} never written");
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (total, rounds) = if full {
        (256 << 20, 2000)
    } else {
        (8 << 20, 50)
    };
    let redis = match RedisServer::start() {
        Ok(r) => r,
        Err(e) => {
            println!("SKIPPED: redis-server is not available ({e})");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (m1, h1) = instance(&redis.url, d1.path()).await;
        let (m2, h2) = instance(&redis.url, d2.path()).await;
        let ws1 = format!("ws://{}/relay", m1.addr);
        let ws2 = format!("ws://{}/relay", m2.addr);
        let mut rows = Vec::new();
        for (name, a_url, b_url, n) in [
            ("one instance (both clients on it)", &ws1, &ws1, 10u8),
            ("two instances (mesh hop)", &ws1, &ws2, 20u8),
        ] {
            let a = RelayConnection::connect_ws(a_url, identity(n), None)
                .await
                .unwrap();
            let b = RelayConnection::connect_ws(b_url, identity(n + 1), None)
                .await
                .unwrap();
            a.set_send_rate(0, 0);
            b.set_send_rate(0, 0);
            present(&redis.url, n).await;
            present(&redis.url, n + 1).await;
            let sa = a.open_stream(key(n + 1)).unwrap();
            let sb = b.open_stream(key(n)).unwrap();
            let (tp, sa, sb) = throughput(sa, sb, total).await;
            let (p50, p99) = latency(sa, std::future::ready(sb), rounds).await;
            rows.push((name, tp, p50, p99));
        }
        for h in [&h1, &h2] {
            let m = h.metrics().unwrap();
            assert_eq!(
                m.dropped_queue_full + m.dropped_rate_limited,
                0,
                "the window flow control keeps the relay lossless"
            );
        }
        assert!(
            h2.metrics().unwrap().mesh_in_packets > 0,
            "no packet crossed the mesh"
        );
        let base = rows[0].1;
        println!("\n{} MiB per run, {} round trips\n", total >> 20, rounds);
        println!("| relay path | throughput MiB/s | × one instance | RTT p50 µs | RTT p99 µs |");
        println!("|---|---:|---:|---:|---:|");
        for (name, tp, p50, p99) in &rows {
            println!(
                "| {name} | {tp:.0} | {:.2} | {} | {} |",
                tp / base,
                p50.as_micros(),
                p99.as_micros()
            );
        }
        m1.shutdown().await;
        m2.shutdown().await;
    });
}
