//! Stream benchmark (spec/session.md §6; README "Benchmarks"): bulk throughput and small-message round trips of one
//! session stream on the direct loopback TCP path, against plain loopback TCP measured in the
//! same run. Target: session direct ≥ 0.5× plain TCP throughput.
//!
//! Run: `cargo bench -p mpc-did-benches --bench stream` (prints a markdown table). Without
//! `--bench` (as `cargo test --benches` runs it) it does a small smoke run.
//!
//! Setup: one process, a 2-worker tokio runtime (the machine's two cores), both ends in it.
//! Session mode is the real driver (crates/driver) over a real Noise session with its own
//! loopback TCP path (`local::session_pair_with`: the handshake without the DIDComm round
//! trips, which `session_setup` measures). Throughput: the sender writes `total` bytes in
//! 64 KiB writes and shuts down; the clock stops when the receiver reads EOF. The modes
//! alternate for several rounds; the table gives medians. Latency: 64-byte ping-pong round
//! trips, median and p99. The received bytes are checked (SHA-256 of a counter pattern), so
//! a fast but wrong stream cannot score.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;

use std::future::Future;
use std::time::Duration;

use common::{latency, median, pattern, tcp_pair, throughput};

use mpc_did_driver::{DriverConfig, SessionHandle, SessionStream};
use mpc_did_testkit::local;

/// One session pair on a fresh loopback path, a stream opened on one side and the future
/// of its acceptance on the other.
async fn session_streams() -> (
    SessionStream,
    impl Future<Output = SessionStream>,
    SessionHandle,
    SessionHandle,
) {
    let (a, b) = local::session_pair_with(
        "did:example:bench-a",
        "did:example:bench-b",
        DriverConfig::default(),
        |s| Box::new(s),
    )
    .await
    .unwrap();
    let sa = a.open_stream().await.unwrap();
    let b2 = b.clone();
    let sb = async move { b2.accept_stream().await.unwrap() };
    (sa, sb, a, b)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (total, rounds, pings) = if full {
        (256 << 20, 5, 5_000)
    } else {
        (4 << 20, 1, 200)
    };
    let rt = common::runtime();
    rt.block_on(async move {
        let (chunks, digest) = pattern(total);
        let (mut plain, mut session) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            let (a, b) = tcp_pair().await;
            let p = throughput(a, async move { b }, &chunks, digest).await;
            let (sa, sb, ha, hb) = session_streams().await;
            let s = throughput(sa, sb, &chunks, digest).await;
            ha.close(0, "bench done").await;
            hb.close(0, "bench done").await;
            eprintln!(
                "round {r}: plain {p:.0} MiB/s, session {s:.0} MiB/s ({:.2}×)",
                s / p
            );
            plain.push(p);
            session.push(s);
        }
        let (p, s) = (median(plain), median(session));

        let (a, b) = tcp_pair().await;
        let (p50, p99) = latency(a, async move { b }, pings).await;
        let (sa, sb, ha, hb) = session_streams().await;
        let (s50, s99) = latency(sa, sb, pings).await;
        ha.close(0, "bench done").await;
        hb.close(0, "bench done").await;

        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "\n### Stream over loopback ({} MiB × {rounds} rounds, median; {pings} pings)\n",
            total >> 20
        );
        println!("| mode | throughput | ratio | RTT p50 | RTT p99 |");
        println!("|---|---:|---:|---:|---:|");
        println!(
            "| plain TCP | {p:.0} MiB/s | 1.00× | {:.0} µs | {:.0} µs |",
            us(p50),
            us(p99)
        );
        println!(
            "| session, direct TCP path | {s:.0} MiB/s | {:.2}× | {:.0} µs | {:.0} µs |",
            s / p,
            us(s50),
            us(s99)
        );
    });
}
