//! Relay benchmark (spec/rendezvous.md §7.4): throughput and added latency of the
//! mediator's relay (plain TCP and WebSocket transports) against a direct
//! loopback TCP stream, measured in the same run. Target: relayed
//! throughput ≥ 0.3× direct.
//!
//! Run: `cargo bench -p mpc-did-benches --bench relay` (prints a markdown
//! table; `MPC_DID_RELAY_BENCH_MIB=1024` moves 1 GiB per path and repetition instead of
//! 256 MiB, `MPC_DID_RELAY_BENCH_REPS` sets the repetitions, default 5). Without `--bench`
//! (as `cargo test --benches` runs it) it does a small smoke run.
//!
//! Equal work: every repetition moves the same bytes over each of the three paths, in an
//! order that rotates from one repetition to the next; the ratio × direct is taken per
//! repetition (against direct TCP of the same repetition) and reported as median and range.
//!
//! Setup: one process, a 2-worker tokio runtime; the mediator runs
//! in-process with the relay service (rate limit raised to 64 GiB/s, queues
//! and the per-sender backlog to 8 MiB so the limits do not cap the
//! measurement; client pacing off).
//!
//! Besides throughput it reports the process's CPU time (user + system, all
//! threads: bench ends, relay clients and the mediator) per MiB moved on each
//! path: unlike throughput, that figure hardly moves when other work shares
//! the cores, so builds compared on a busy machine compare by it; and the context switches
//! of the process's threads per MiB (the hand-offs between tasks that park and wake).
//! Throughput: 1 MiB windows, at most 4 unacknowledged (the receiver
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

/// Context switches (voluntary + involuntary) of this process's live threads so far, from
/// /proc/self/task/*/status: the hand-offs between tasks and threads a path costs.
fn ctx_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                n += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    n
}

/// Minor page faults of this process so far (all threads), from /proc/self/stat: buffers
/// that are allocated fresh (and their pages faulted in) instead of reused.
fn page_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    // minflt is the 10th field, the 8th after the command name.
    rest.split_whitespace()
        .nth(7)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

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

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// One path's figures per repetition.
#[derive(Default)]
struct PathRuns {
    mibs: Vec<f64>,
    ratio: Vec<f64>,
    cpu: Vec<f64>,
    csw: Vec<f64>,
    faults: Vec<f64>,
}

type Pair = (Box<dyn Duplex>, Box<dyn Duplex>);

trait Duplex: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Duplex for T {}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    // `MPC_DID_RELAY_BENCH_MIB`: MiB per path and repetition (default 256; more gives the
    // 10 ms CPU clock more to count).
    let mib: usize = std::env::var("MPC_DID_RELAY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
        .max(4);
    let reps: usize = std::env::var("MPC_DID_RELAY_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 5 } else { 1 })
        .max(1);
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
        // `MPC_DID_RELAY_BENCH_MEDIATOR_THREADS=N`: the mediator on a runtime of its own with
        // N workers, as it is in deployment (its own process), instead of sharing the bench's
        // two workers with both relay clients and the bench's ends.
        let own: usize = std::env::var("MPC_DID_RELAY_BENCH_MEDIATOR_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mrt = (own > 0).then(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(own)
                .enable_all()
                .build()
                .unwrap()
        });
        let start = async move { Mediator::builder(config).service(relay).start().await };
        let m = match &mrt {
            Some(r) => r.spawn(start).await.unwrap(),
            None => start.await,
        }
        .unwrap();
        let ws = format!("ws://{}/relay", m.addr);
        let tcp = h.tcp_addr();

        let names = [
            "direct TCP (loopback)",
            "relay, plain TCP",
            "relay, WebSocket",
        ];
        let (a, b) = tcp_pair().await;
        let mut pairs: Vec<Option<Pair>> = vec![Some((Box::new(a), Box::new(b)))];
        // The relay connections live for the whole run (their streams are the paths).
        let mut conns = Vec::new();
        for (via, n) in [(tcp, 10u8), (None, 20u8)] {
            let (ca, cb) = relay_pair(via, &ws, n).await;
            let sa = ca.open_stream(key(&ca, n + 1)).unwrap();
            let sb = cb.open_stream(key(&cb, n)).unwrap();
            pairs.push(Some((Box::new(sa), Box::new(sb))));
            conns.push((ca, cb));
        }
        let mib = (total >> 20) as f64;
        let mut runs: Vec<PathRuns> = (0..names.len()).map(|_| PathRuns::default()).collect();
        for rep in 0..reps {
            let mut tp = [0f64; 3];
            for k in 0..names.len() {
                let p = (rep + k) % names.len();
                let (a, b) = pairs[p].take().unwrap();
                let (cpu0, csw0, pf0) = (cpu_time(), ctx_switches(), page_faults());
                let (t, a, b) = throughput(a, b, total).await;
                let cpu = (cpu_time() - cpu0).as_secs_f64() * 1e6 / mib;
                let csw = (ctx_switches() - csw0) as f64 / mib;
                let faults = (page_faults() - pf0) as f64 / mib;
                pairs[p] = Some((a, b));
                tp[p] = t;
                runs[p].mibs.push(t);
                runs[p].cpu.push(cpu);
                runs[p].csw.push(csw);
                runs[p].faults.push(faults);
            }
            for (p, r) in runs.iter_mut().enumerate() {
                r.ratio.push(tp[p] / tp[0]);
            }
        }
        let mut lat = Vec::new();
        for pair in &mut pairs {
            let (a, b) = pair.take().unwrap();
            lat.push(latency(a, std::future::ready(b), rounds).await);
        }
        let metrics = h.metrics().unwrap();
        assert_eq!(
            metrics.dropped_queue_full + metrics.dropped_rate_limited,
            0,
            "the window flow control keeps the relay lossless"
        );

        println!(
            "\n{} MiB per path and repetition, {reps} repetitions (order rotating), {rounds} round trips\n",
            total >> 20
        );
        println!(
            "| path | MiB/s median (min–max) | × direct median (per-rep min–max) | RTT p50 µs | RTT p99 µs | added p50 µs | CPU µs per MiB | CPU × direct | context switches per MiB | page faults per MiB |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let direct_cpu = median(&mut runs[0].cpu.clone()).max(1.0);
        let direct_p50 = lat[0].0;
        for (p, r) in runs.iter_mut().enumerate() {
            let (lo, hi) = range(&r.mibs);
            let (rlo, rhi) = range(&r.ratio);
            let cpu = median(&mut r.cpu);
            let (p50, p99) = lat[p];
            println!(
                "| {} | {:.0} ({lo:.0}–{hi:.0}) | {:.2} ({rlo:.2}–{rhi:.2}) | {} | {} | {} | {cpu:.0} | {:.2} | {:.1} | {:.1} |",
                names[p],
                median(&mut r.mibs),
                median(&mut r.ratio),
                p50.as_micros(),
                p99.as_micros(),
                p50.as_micros() as i128 - direct_p50.as_micros() as i128,
                cpu / direct_cpu,
                median(&mut r.csw),
                median(&mut r.faults),
            );
        }
        drop(conns);
        m.shutdown().await;
        if let Some(r) = mrt {
            r.shutdown_background();
        }
    });
}
