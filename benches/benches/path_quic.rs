//! Session throughput over a QUIC path against the same session over a direct TCP path
//! (issue 17 item 4; spec/rendezvous.md §6.1; README "Benchmarks"), in one run on loopback.
//!
//! Run: `cargo bench -p mpc-did-benches --bench path_quic` (prints a markdown table). Without
//! `--bench` (as `cargo test --benches` runs it) it does a small smoke run.
//!
//! Modes, alternating each round, equal work (the same 256 MiB pattern, SHA-256 checked):
//! - **session, TCP path**: the real driver over a real Noise session on a loopback TCP
//!   connection (`testkit::local::session_pair_with`);
//! - **session, QUIC path**: the same over one bidirectional stream of a quinn connection
//!   between two `rendezvous::net::quic::QuicEndpoint`s on loopback UDP sockets — the
//!   endpoint, TLS and transport settings a punched path uses (the punch itself is not part
//!   of the data path);
//! - **QUIC stream alone**: the same QUIC stream without the session, to split the QUIC
//!   path's cost between quinn and the session above it.
//!
//! Besides MiB/s it prints the process's CPU time per MiB moved (user + system, both ends),
//! a figure that other work on the machine moves far less than wall-clock throughput.
//!
//! `-- delayed` (root): the QUIC stream alone against plain TCP between two e3 hosts whose
//! delay lines make a 70 ms RTT (the regions bench's r1–r2), 8 MiB each, alternating, with
//! quinn's statistics (lost packets, congestion events and window, MTU) after each QUIC run:
//! what a punched path does with MB-sized messages across regions.
//! Loopback has no loss and a 64 KiB MTU of which QUIC uses its own datagram size, so this
//! measures the cost per byte of each path, not its behaviour on the Internet (the `regions`
//! bench does that).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use std::future::Future;

use common::{median, pattern, process_cpu, throughput};
use mpc_did_driver::{DriverConfig, SessionHandle, SessionStream};
use mpc_did_rendezvous::net::quic::{QuicEndpoint, QuicPath};
use mpc_did_testkit::local;

const A: &str = "did:example:bench-a";
const B: &str = "did:example:bench-b";

/// Two ends of one QUIC bidirectional stream between endpoints on `ua` and `ub` (the
/// endpoints are returned so they live as long as the paths).
async fn quic_pair_on(
    ua: tokio::net::UdpSocket,
    ub: tokio::net::UdpSocket,
) -> (QuicPath, QuicPath, QuicEndpoint, QuicEndpoint) {
    let (ea, eb) = (
        QuicEndpoint::new(ua).unwrap(),
        QuicEndpoint::new(ub).unwrap(),
    );
    let (ca, cb) = tokio::join!(ea.connect(eb.local_addr()), eb.accept());
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    let (mut sa, ra) = ca.open_bi().await.unwrap();
    // A stream is announced to the peer by its first byte.
    sa.write_all(&[0]).await.unwrap();
    let (sb, mut rb) = cb.accept_bi().await.unwrap();
    let mut one = [0u8; 1];
    rb.read_exact(&mut one).await.unwrap();
    (QuicPath::new(ca, sa, ra), QuicPath::new(cb, sb, rb), ea, eb)
}

/// [`quic_pair_on`] two fresh loopback UDP sockets.
async fn quic_pair() -> (QuicPath, QuicPath, QuicEndpoint, QuicEndpoint) {
    let ua = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ub = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    quic_pair_on(ua, ub).await
}

/// A session stream on `a`, and the future of its acceptance on `b`.
async fn streams(
    a: &SessionHandle,
    b: &SessionHandle,
) -> (SessionStream, impl Future<Output = SessionStream>) {
    let sa = a.open_stream().await.unwrap();
    let b2 = b.clone();
    (sa, async move { b2.accept_stream().await.unwrap() })
}

/// One run of `f`: (MiB/s, CPU µs per MiB).
async fn measured<F: Future<Output = f64>>(mib: f64, f: F) -> (f64, f64) {
    let cpu0 = process_cpu();
    let rate = f.await;
    (rate, (process_cpu() - cpu0).as_secs_f64() * 1e6 / mib)
}

/// `-- delayed`: QUIC alone vs TCP between two hosts 70 ms apart (see the module docs).
fn delayed(rounds: usize) {
    use mpc_did_e3::{NatKind, Topology};
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let topo = Topology::builder()
        .host("a", NatKind::None)
        .host("b", NatKind::None)
        .build()
        .unwrap();
    let (a, b) = (topo.host("a").unwrap(), topo.host("b").unwrap());
    let _la = a.ns.delay(Duration::from_millis(10)).unwrap();
    let _lb = b.ns.delay(Duration::from_millis(25)).unwrap();
    let total = 8usize << 20;
    let rt = common::runtime();
    let (aa, ba) = (a.addr, b.addr);
    for r in 0..rounds {
        // TCP: std sockets bound inside the namespaces, driven by the runtime.
        let l =
            b.ns.run(move || std::net::TcpListener::bind((ba, 0)))
                .unwrap()
                .unwrap();
        let to = l.local_addr().unwrap();
        let c =
            a.ns.run(move || std::net::TcpStream::connect(to))
                .unwrap()
                .unwrap();
        let (s, _) = l.accept().unwrap();
        let tcp = rt.block_on(async {
            c.set_nonblocking(true).unwrap();
            s.set_nonblocking(true).unwrap();
            let mut c = tokio::net::TcpStream::from_std(c).unwrap();
            let mut s = tokio::net::TcpStream::from_std(s).unwrap();
            let t = Instant::now();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0;
                while n < total {
                    n += s.read(&mut buf).await.unwrap();
                }
                s.write_all(&[1]).await.unwrap();
            });
            c.write_all(&vec![7u8; total]).await.unwrap();
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.unwrap();
            reader.await.unwrap();
            t.elapsed()
        });
        // QUIC: endpoints on UDP sockets bound inside the namespaces.
        let ua =
            a.ns.run(move || std::net::UdpSocket::bind((aa, 0)))
                .unwrap()
                .unwrap();
        let ub =
            b.ns.run(move || std::net::UdpSocket::bind((ba, 0)))
                .unwrap()
                .unwrap();
        let (quic, stats) = rt.block_on(async {
            ua.set_nonblocking(true).unwrap();
            ub.set_nonblocking(true).unwrap();
            let (mut x, mut y, ea, eb) = quic_pair_on(
                tokio::net::UdpSocket::from_std(ua).unwrap(),
                tokio::net::UdpSocket::from_std(ub).unwrap(),
            )
            .await;
            let t = Instant::now();
            let reader = tokio::spawn(async move {
                let mut buf = vec![0u8; 1 << 16];
                let mut n = 0;
                while n < total {
                    n += y.read(&mut buf).await.unwrap();
                }
                y.write_all(&[1]).await.unwrap();
                y.flush().await.unwrap();
                y
            });
            x.write_all(&vec![7u8; total]).await.unwrap();
            x.flush().await.unwrap();
            let mut one = [0u8; 1];
            x.read_exact(&mut one).await.unwrap();
            let took = t.elapsed();
            let y = reader.await.unwrap();
            let st = (x.stats(), y.stats());
            drop((x, y, ea, eb));
            (took, st)
        });
        let p = &stats.0.path;
        eprintln!(
            "round {r}: 8 MiB at 70 ms RTT: TCP {:.0} ms, QUIC {:.0} ms ({:.2}×); QUIC sender: rtt {:?}, cwnd {}, congestion events {}, lost {} packets of {}, MTU {}; receiver lost {}",
            tcp.as_secs_f64() * 1e3,
            quic.as_secs_f64() * 1e3,
            quic.as_secs_f64() / tcp.as_secs_f64(),
            p.rtt,
            p.cwnd,
            p.congestion_events,
            p.lost_packets,
            p.sent_packets,
            p.current_mtu,
            stats.1.path.lost_packets,
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "delayed") {
        delayed(3);
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let mib_env = std::env::var("MPC_DID_QUIC_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let (total, rounds) = if full {
        (mib_env.unwrap_or(256) << 20, 5)
    } else {
        (4 << 20, 1)
    };
    let rt = common::runtime();
    rt.block_on(async move {
        let (chunks, digest) = pattern(total);
        let mib = (total >> 20) as f64;
        let mut res: [(Vec<f64>, Vec<f64>); 3] = Default::default();
        for r in 0..rounds {
            // TCP path.
            let (a, b) = local::session_pair_with(A, B, DriverConfig::default(), |s| Box::new(s))
                .await
                .unwrap();
            let (sa, sb) = streams(&a, &b).await;
            let tcp = measured(mib, throughput(sa, sb, &chunks, digest)).await;
            a.close(0, "bench done").await;
            b.close(0, "bench done").await;
            // QUIC path.
            let (x, y, ea, eb) = quic_pair().await;
            let (a, b) =
                local::session_pair_over(A, B, DriverConfig::default(), Box::new(x), Box::new(y))
                    .await
                    .unwrap();
            let (sa, sb) = streams(&a, &b).await;
            let quic = measured(mib, throughput(sa, sb, &chunks, digest)).await;
            a.close(0, "bench done").await;
            b.close(0, "bench done").await;
            drop((ea, eb));
            // QUIC stream alone.
            let (x, y, ea, eb) = quic_pair().await;
            let bare = measured(mib, throughput(x, async move { y }, &chunks, digest)).await;
            drop((ea, eb));
            eprintln!(
                "round {r}: session/TCP {:.0} MiB/s ({:.0} µs CPU/MiB), session/QUIC {:.0} MiB/s ({:.0}) = {:.2}×, QUIC alone {:.0} MiB/s ({:.0})",
                tcp.0, tcp.1, quic.0, quic.1, quic.0 / tcp.0, bare.0, bare.1
            );
            for (slot, (rate, cpu)) in res.iter_mut().zip([tcp, quic, bare]) {
                slot.0.push(rate);
                slot.1.push(cpu);
            }
        }
        let ratios: Vec<f64> = res[1].0.iter().zip(&res[0].0).map(|(q, t)| q / t).collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        println!(
            "\n### Session throughput by path, loopback ({} MiB × {rounds} rounds, alternating; medians)\n",
            total >> 20
        );
        println!("| path | throughput | ÷ session/TCP | CPU per MiB |");
        println!("|---|---:|---:|---:|");
        let tcp_rate = median(res[0].0.clone());
        for (name, (rates, cpus)) in [
            "session, TCP path",
            "session, QUIC path",
            "QUIC stream alone (no session)",
        ]
        .iter()
        .zip(res)
        {
            let rate = median(rates);
            println!(
                "| {name} | {rate:.0} MiB/s | {:.2}× | {:.0} µs |",
                rate / tcp_rate,
                median(cpus)
            );
        }
        println!("\nsession/QUIC ÷ session/TCP per round: {lo:.2}–{hi:.2}×");
    });
}
