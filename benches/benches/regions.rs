//! MPyC between emulated regions: the same programs over plain MPyC TCP and in session mode,
//! with the parties in network namespaces whose traffic crosses user-space delay lines
//! (`mpc_did_e3::DelayLine`; this kernel has no netem), in the same run.
//!
//! Three hosts on the e3 public bridge, one per region. Host `i` gets a one-way access delay
//! `d_i` on everything it sends and receives, so the round-trip time between hosts `i` and `j`
//! is `2·(d_i + d_j)`. Defaults `MPC_DID_REGIONS_MS=2,10,25` give RTTs of 24, 54 and 70 ms —
//! a city, a country and a continent apart.
//!
//! - *plain*: each MPyC party runs inside its host's namespace (`ip netns exec`) and dials the
//!   others' public addresses, MPyC's own networking.
//! - *session*: each party's MPyC and proxy run on this machine's loopback (as they do for a
//!   user), and only the session paths cross the emulated Internet: one TCP connection per
//!   pair, opened from host `i`'s namespace to host `j`'s, carrying the Noise session.
//!
//! Every workload runs first without delay lines (the namespaces' own veth path) and then
//! with them, alternating modes in each repetition. Reports the median 64-byte round trip
//! between the two farthest hosts over plain TCP and over a session stream, the median wall
//! time, and MPyC's own elapsed time per 100 kB of its payload (secretsanta draws until it
//! finds a derangement, so the work of a run varies; time per payload byte compares runs of
//! different length), with session ÷ plain of the last.
//!
//! Needs root (network namespaces, iptables NFQUEUE). `cargo bench -p mpc-did-benches --bench
//! regions [-- FILTER]`; `MPC_DID_PYTHON` names a Python with mpyc, `MPC_DID_BENCH_REPS` the
//! repetitions (default 3).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
mod mpyc_common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::latency;
use mpc_did_driver::{local, DriverConfig, SessionHandle};
use mpc_did_e3::{check_available, NatKind, Topology};
use mpc_did_proxy::PartyId;
use mpyc_common::{draws, median, parse_stop, python, run_parties, script, Timing};

const PARTIES: usize = 3;

fn names() -> Vec<String> {
    (0..PARTIES).map(|i| format!("r{i}")).collect()
}

fn delays() -> Vec<Duration> {
    let spec = std::env::var("MPC_DID_REGIONS_MS").unwrap_or_else(|_| "2,10,25".into());
    let v: Vec<Duration> = spec
        .split(',')
        .map(|x| Duration::from_millis(x.trim().parse().expect("MPC_DID_REGIONS_MS: ms,ms,ms")))
        .collect();
    assert_eq!(
        v.len(),
        PARTIES,
        "MPC_DID_REGIONS_MS needs {PARTIES} values"
    );
    v
}

fn addrs(topo: &Topology) -> Vec<Ipv4Addr> {
    names().iter().map(|n| topo.host(n).unwrap().addr).collect()
}

/// MPyC's own networking between the namespaces; `port` is where every party listens.
fn run_plain(topo: &Topology, python: &Path, prog: &str, args: &[String], port: u16) -> Timing {
    let addrs = addrs(topo);
    let start = Instant::now();
    let mut children = Vec::new();
    for (i, name) in names().iter().enumerate() {
        let mut cmd = topo.host(name).unwrap().ns.command(python);
        cmd.arg(script(prog))
            .args(args)
            .arg(format!("-M{PARTIES}"))
            .arg(format!("-I{i}"));
        for a in &addrs {
            cmd.arg("-P").arg(format!("{a}:{port}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(cmd.spawn().unwrap());
    }
    let mut t = Timing::default();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        if i == 0 {
            t.draws = draws(&log);
        }
        assert!(
            out.status.success(),
            "{log}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (e, b) = parse_stop(&log);
        t.mpyc = t.mpyc.max(e);
        t.mpyc_bytes += b;
    }
    t.wall = start.elapsed();
    t
}

/// A TCP connection from host `i`'s namespace to host `j`'s: (`i`'s end, `j`'s end).
fn cross_pair(
    topo: &Topology,
    i: usize,
    j: usize,
) -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let (names, addrs) = (names(), addrs(topo));
    let aj = addrs[j];
    let listener = topo
        .host(&names[j])
        .unwrap()
        .ns
        .run(move || TcpListener::bind((aj, 0)))
        .unwrap()
        .unwrap();
    let to = listener.local_addr().unwrap();
    let x = topo
        .host(&names[i])
        .unwrap()
        .ns
        .run(move || TcpStream::connect(to))
        .unwrap()
        .unwrap();
    let (y, _) = listener.accept().unwrap();
    let tokio_stream = |s: TcpStream| {
        s.set_nodelay(true).unwrap();
        s.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(s).unwrap()
    };
    (tokio_stream(x), tokio_stream(y))
}

/// 64-byte round trips between hosts `i` and `j`: over plain TCP and over a session stream
/// (each on its own connection between the namespaces). (plain p50, session p50).
async fn ping(topo: &Topology, i: usize, j: usize, rounds: usize) -> (Duration, Duration) {
    let (x, y) = cross_pair(topo, i, j);
    let (plain, _) = latency(x, async move { y }, rounds).await;
    let (x, y) = cross_pair(topo, i, j);
    let (a, b) = local::session_pair_on(
        "did:example:ping-a",
        "did:example:ping-b",
        DriverConfig::default(),
        x,
        y,
        |t| Box::new(t),
    )
    .await
    .unwrap();
    let sa = a.open_stream().await.unwrap();
    let b2 = b.clone();
    let (session, _) = latency(sa, async move { b2.accept_stream().await.unwrap() }, rounds).await;
    a.close(0, "bench done").await;
    b.close(0, "bench done").await;
    (plain, session)
}

/// Session mode: per pair one TCP connection from host `i`'s namespace to host `j`'s.
async fn run_session(topo: &Topology, python: &Path, prog: &str, args: &[String]) -> Timing {
    let mut maps: Vec<BTreeMap<PartyId, SessionHandle>> =
        (0..PARTIES).map(|_| BTreeMap::new()).collect();
    for i in 0..PARTIES {
        for j in i + 1..PARTIES {
            let (x, y) = cross_pair(topo, i, j);
            let (hi, hj) = local::session_pair_on(
                &format!("did:example:region{i}"),
                &format!("did:example:region{j}"),
                DriverConfig::default(),
                x,
                y,
                |t| Box::new(t),
            )
            .await
            .unwrap();
            maps[i].insert(PartyId::try_from(j).unwrap(), hi);
            maps[j].insert(PartyId::try_from(i).unwrap(), hj);
        }
    }
    run_parties(maps, python, prog, args).await
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if let Err(e) = check_available() {
        println!("regions bench skipped: {e}");
        return;
    }
    let Some(python) = python() else {
        println!(
            "regions bench skipped: no Python with mpyc (set MPC_DID_PYTHON or run ./test.sh once)"
        );
        return;
    };
    let reps: usize = std::env::var("MPC_DID_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    let delays = delays();
    let mut builder = Topology::builder();
    for n in names() {
        builder = builder.host(&n, NatKind::None);
    }
    let topo = builder.build().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let workloads: Vec<(&str, &str, Vec<String>)> = vec![
        (
            "secretsanta 3 4 5 6 (many rounds, small messages)",
            "secretsanta.py",
            ["--people", "3", "4", "5", "6"].map(String::from).to_vec(),
        ),
        (
            "innerproduct 100k (few rounds, MB messages)",
            "innerproduct.py",
            vec!["--length".into(), "100000".into()],
        ),
    ];
    let rtt = |i: usize, j: usize| (delays[i] + delays[j]) * 2;
    println!(
        "regions: one-way access delays {:?}; RTT r0–r1 {:?}, r0–r2 {:?}, r1–r2 {:?}",
        delays,
        rtt(0, 1),
        rtt(0, 2),
        rtt(1, 2)
    );
    println!(
        "| workload | delay lines | 64 B RTT r1–r2 plain / session | wall plain / session | \
         MPyC elapsed per 100 kB of payload, plain / session | session ÷ plain |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let mut port = 41_000;
    // `cargo bench --bench regions -- santa`: only workloads whose label contains "santa".
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for (label, prog, args) in &workloads {
        if !filter.is_empty() && !filter.iter().any(|f| label.contains(f.as_str())) {
            continue;
        }
        for delayed in [false, true] {
            let lines: Vec<_> = if delayed {
                names()
                    .iter()
                    .zip(&delays)
                    .map(|(n, d)| topo.host(n).unwrap().ns.delay(*d).unwrap())
                    .collect()
            } else {
                Vec::new()
            };
            let (pp, sp) = rt.block_on(ping(&topo, 1, 2, 20));
            let (mut plain, mut session) = (Vec::new(), Vec::new());
            for rep in 0..reps {
                port += 1;
                // Alternate which mode goes first so drift hits both alike.
                if rep % 2 == 0 {
                    plain.push(run_plain(&topo, &python, prog, args, port));
                    session.push(rt.block_on(run_session(&topo, &python, prog, args)));
                } else {
                    session.push(rt.block_on(run_session(&topo, &python, prog, args)));
                    plain.push(run_plain(&topo, &python, prog, args, port));
                }
                let (p, s) = (plain.last().unwrap(), session.last().unwrap());
                eprintln!(
                    "  {label} delay={delayed} rep {}: plain {:.2} s ({} kB MPyC payload, {} \
                     draws), session {:.2} s ({} kB, {} draws)",
                    rep + 1,
                    p.wall.as_secs_f64(),
                    p.mpyc_bytes / 1000,
                    p.draws,
                    s.wall.as_secs_f64(),
                    s.mpyc_bytes / 1000,
                    s.draws,
                );
            }
            drop(lines);
            let med = |v: &[Timing], f: fn(&Timing) -> Duration| {
                median(v.iter().map(f).collect()).as_secs_f64()
            };
            // secretsanta draws until it finds a derangement, so the work of a run varies:
            // compare MPyC's elapsed time per byte of its payload, both from the same run.
            let per_100k = |t: &Timing| {
                Duration::from_secs_f64(t.mpyc.as_secs_f64() * 1e5 / (t.mpyc_bytes as f64).max(1.0))
            };
            let (pw, sw) = (med(&plain, |t| t.wall), med(&session, |t| t.wall));
            let (pn, sn) = (med(&plain, per_100k), med(&session, per_100k));
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {label} | {} | {:.2} / {:.2} ms | {pw:.2} / {sw:.2} s | {:.1} / {:.1} ms | {:.2}× |",
                if delayed { "on" } else { "off" },
                ms(pp),
                ms(sp),
                pn * 1e3,
                sn * 1e3,
                sn / pn.max(1e-12),
            );
        }
    }
}
