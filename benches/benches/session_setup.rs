//! Full secure-session setup as parties run it (spec/session.md §2): DIDComm propose →
//! accept → handshake + candidates through a real mediator (in-process, loopback HTTP and
//! WebSocket live delivery), then a direct TCP path, until the first data byte arrived.
//!
//! - `pair`: one pair, propose → first byte at the acceptor.
//! - `mesh10`: 10 parties, all 45 pairwise sessions up (each carried one byte), all at once.
//!
//! Criterion reports its estimates; a table with medians is printed at the end.
//!
//! `cargo bench -p mpc-did-benches --bench session_setup`
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use mpc_did_connect::{Binding, Connector, ConnectorConfig, Established};
use mpc_did_mediator::MediatorHandle;
use mpc_did_testkit::mediator as testkit;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::runtime::Runtime;

static TABLE: Mutex<Vec<(String, Vec<Duration>)>> = Mutex::new(Vec::new());

async fn party(m: &MediatorHandle) -> Connector {
    let (agent, _) = testkit::registered_agent(&m.public_url).await;
    let config = ConnectorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ConnectorConfig::default()
    };
    Connector::start(agent, config).await.unwrap()
}

async fn parties(m: &MediatorHandle, n: usize) -> Vec<Connector> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(party(m).await);
    }
    for a in &v {
        for b in &v {
            if a.agent().did() != b.agent().did() {
                a.agent()
                    .learn_service(b.agent().did(), b.agent().own_service())
                    .await
                    .unwrap();
            }
        }
    }
    v
}

/// Establish with `peer` (the smaller DID proposes) and exchange one byte: the proposer
/// sends, the acceptor receives.
async fn session_with_first_byte(me: &Connector, peer: &str) -> Established {
    let my = me.agent().did().to_owned();
    let proposer = my.as_str() < peer;
    let est = me
        .establish(peer, &Binding::adhoc(&my, peer), proposer)
        .await
        .unwrap();
    if proposer {
        let mut s = est.handle.open_stream().await.unwrap();
        s.write_all(&[1]).await.unwrap();
        s.shutdown().await.unwrap();
    } else {
        let mut s = est.handle.accept_stream().await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
    }
    est
}

/// One pair: wall time from the proposer's call to the acceptor holding the first byte.
async fn pair_once(a: &Connector, b: &Connector) -> Duration {
    let (da, db) = (a.agent().did().to_owned(), b.agent().did().to_owned());
    let start = Instant::now();
    let (ea, eb) = tokio::join!(
        session_with_first_byte(a, &db),
        session_with_first_byte(b, &da)
    );
    let t = start.elapsed();
    ea.handle.close(0, "bench").await;
    eb.handle.close(0, "bench").await;
    t
}

/// All pairs of `cs` at once; wall time until every session carried its byte.
async fn mesh_once(cs: &[Connector]) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, c) in cs.iter().enumerate() {
        for (j, p) in cs.iter().enumerate() {
            if i != j {
                let (c, peer) = (c.clone(), p.agent().did().to_owned());
                tasks.push(tokio::spawn(async move {
                    session_with_first_byte(&c, &peer).await
                }));
            }
        }
    }
    let mut ests = Vec::new();
    for t in tasks {
        ests.push(t.await.unwrap());
    }
    let t = start.elapsed();
    for e in ests {
        e.handle.close(0, "bench").await;
    }
    t
}

fn record(name: &str, d: Duration) {
    let mut t = TABLE.lock().unwrap();
    match t.iter_mut().find(|(n, _)| n == name) {
        Some((_, v)) => v.push(d),
        None => t.push((name.to_owned(), vec![d])),
    }
}

fn bench_setup(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // All parties share 127.0.0.1, so the mediator's per-IP rate (a defence against one
    // client address flooding it, sized for real addresses) would throttle the 10-party
    // mesh repeated back to back: lifted here, as every party has its own address in use.
    let mut config = testkit::loopback_config(dir.path());
    config.limits.rate_per_ip = 1_000_000;
    config.limits.rate_per_connection = 1_000_000;
    config.limits.rate_burst = 1_000_000;
    // The per-source quota of waiting messages (spec/mediator.md §6.1) stays at its default:
    // every party here is the same source for every recipient, yet only messages not yet
    // acknowledged count, and a live party acknowledges at once.
    let m = rt
        .block_on(mpc_did_mediator::Mediator::builder(config).start())
        .unwrap();

    let two = rt.block_on(parties(&m, 2));
    let mut g = c.benchmark_group("session_setup");
    g.sample_size(20).measurement_time(Duration::from_secs(10));
    g.bench_function("pair_propose_to_first_byte", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = rt.block_on(pair_once(&two[0], &two[1]));
                record("1 pair: propose → first byte", d);
                total += d;
            }
            total
        });
    });

    let ten = rt.block_on(parties(&m, 10));
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("mesh10_all_45_sessions_up", |bench| {
        bench.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let d = rt.block_on(mesh_once(&ten));
                record("10 parties: all 45 sessions up", d);
                total += d;
            }
            total
        });
    });
    g.finish();
    drop((two, ten));
    rt.block_on(m.shutdown());
}

fn print_table() {
    let t = TABLE.lock().unwrap();
    println!("\n| setup via loopback mediator | runs | median | min | max |");
    println!("|---|---|---|---|---|");
    for (name, v) in t.iter() {
        let mut v = v.clone();
        v.sort();
        let (lo, med, hi) = (v[0], v[v.len() / 2], v[v.len() - 1]);
        println!(
            "| {name} | {} | {:.1} ms | {:.1} ms | {:.1} ms |",
            v.len(),
            med.as_secs_f64() * 1e3,
            lo.as_secs_f64() * 1e3,
            hi.as_secs_f64() * 1e3
        );
    }
}

criterion_group!(benches, bench_setup);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_table();
}
