//! Relay benchmark (spec/rendezvous.md §7.4): throughput and added latency of the
//! mediator's relay (plain TCP and WebSocket transports) against a direct
//! loopback TCP stream, measured in the same run. Target: relayed
//! throughput ≥ 0.3× direct.
//!
//! Run: `cargo bench -p mpc-did-benches --bench relay` (prints a markdown
//! table; `MPC_DID_RELAY_BENCH_MIB=1024` moves 1 GiB per path instead of 256 MiB). Without `--bench` (as `cargo test --benches` runs it) it does a
//! small smoke run.
//!
//! Setup: one process, a 2-worker tokio runtime; the mediator runs
//! in-process with the relay service (rate limit raised to 64 GiB/s, queues
//! and the per-sender backlog to 8 MiB so the limits do not cap the
//! measurement; client pacing off).
//!
//! Besides throughput it reports the process's CPU time (user + system, all
//! threads: bench ends, relay clients and the mediator) per MiB moved on each
//! path: unlike throughput, that figure hardly moves when other work shares
//! the cores, so builds compared on a busy machine compare by it. Throughput: 1 MiB windows, at most 4 unacknowledged (the receiver
//! acks each window with one byte) — the same flow control over the direct
//! TCP stream and the relay streams, so the relay's bounded queues never
//! overflow. Latency: 64-byte ping-pong round trips, median and p99.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::{latency, tcp_pair};
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Config, Mediator};
use mpc_did_rendezvous::net::{RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const WINDOW: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

/// CPU time of this process so far (user + system, all threads), from /proc/self/stat.
fn cpu_time() -> std::time::Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 14th field.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    // Clock ticks of 10 ms (USER_HZ = 100 on Linux).
    std::time::Duration::from_millis(f.iter().sum::<u64>() * 10)
}

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

async fn relay_pair(
    tcp: Option<SocketAddr>,
    ws: &str,
    n: u8,
) -> (RelayConnection, RelayConnection) {
    let (ia, ib) = (identity(n), identity(n + 1));
    let (a, b) = match tcp {
        Some(addr) => (
            RelayConnection::connect_tcp(addr, ia, None).await.unwrap(),
            RelayConnection::connect_tcp(addr, ib, None).await.unwrap(),
        ),
        None => (
            RelayConnection::connect_ws(ws, ia, None).await.unwrap(),
            RelayConnection::connect_ws(ws, ib, None).await.unwrap(),
        ),
    };
    a.set_send_rate(0, 0);
    b.set_send_rate(0, 0);
    (a, b)
}

fn key(c: &RelayConnection, n: u8) -> PeerAddr {
    let _ = c;
    PeerAddr::Key(SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes())
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `MPC_DID_RELAY_BENCH_MIB`: MiB per path (default 256; more gives the 10 ms CPU
    // clock more to count).
    let mib: usize = std::env::var("MPC_DID_RELAY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        .max(4);
    let (total, rounds) = if full {
        (mib << 20, 2000)
    } else {
        (8 << 20, 50)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data: dir.path().join("m"),
            ..Config::default()
        };
        let relay = RelayService::bind(RelayServiceConfig {
            tcp_listen: Some("127.0.0.1:0".parse().unwrap()),
            rate_bytes_per_sec: 64 << 30,
            burst_bytes: 16 << 20,
            max_queue_bytes: 8 << 20,
            max_queue_frames: 4096,
            max_backlog_bytes: 8 << 20,
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
        let ws = format!("ws://{}/relay", m.addr);
        let tcp = h.tcp_addr();

        let mut rows = Vec::new();
        let mib = (total >> 20) as f64;
        let (a, b) = tcp_pair().await;
        let cpu0 = cpu_time();
        let (direct_tp, a, b) = throughput(a, b, total).await;
        let direct_cpu = (cpu_time() - cpu0).as_secs_f64() * 1e6 / mib;
        let (direct_p50, direct_p99) = latency(a, std::future::ready(b), rounds).await;
        rows.push((
            "direct TCP (loopback)",
            direct_tp,
            direct_p50,
            direct_p99,
            direct_cpu,
        ));

        for (name, via, n) in [
            ("relay, plain TCP", tcp, 10u8),
            ("relay, WebSocket", None, 20u8),
        ] {
            let (ca, cb) = relay_pair(via, &ws, n).await;
            let sa = ca.open_stream(key(&ca, n + 1)).unwrap();
            let sb = cb.open_stream(key(&cb, n)).unwrap();
            let cpu0 = cpu_time();
            let (tp, sa, sb) = throughput(sa, sb, total).await;
            let cpu = (cpu_time() - cpu0).as_secs_f64() * 1e6 / mib;
            let (p50, p99) = latency(sa, std::future::ready(sb), rounds).await;
            rows.push((name, tp, p50, p99, cpu));
        }
        let metrics = h.metrics().unwrap();
        assert_eq!(
            metrics.dropped_queue_full + metrics.dropped_rate_limited,
            0,
            "the window flow control keeps the relay lossless"
        );

        println!("\n{} MiB per run, {} round trips\n", total >> 20, rounds);
        println!(
            "| path | throughput MiB/s | × direct | RTT p50 µs | RTT p99 µs | added p50 µs | CPU µs per MiB | CPU × direct |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for (name, tp, p50, p99, cpu) in &rows {
            println!(
                "| {name} | {tp:.0} | {:.2} | {} | {} | {} | {cpu:.0} | {:.2} |",
                tp / direct_tp,
                p50.as_micros(),
                p99.as_micros(),
                p50.as_micros() as i128 - direct_p50.as_micros() as i128,
                cpu / direct_cpu.max(1.0),
            );
        }
        m.shutdown().await;
    });
}
