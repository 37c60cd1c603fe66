//! End to end: our MPyC programs over plain TCP (MPyC's own networking) and in session mode
//! (each party's MPyC → its proxy → Noise sessions over loopback TCP), in the same run.
//!
//! Reports per workload and mode the median wall time from launch to the last party's exit,
//! the median of MPyC's own "elapsed time" (connected → shutdown, the part the data plane
//! can slow down), and the bytes on the wire (plain: MPyC's "bytes sent"; session: bytes
//! written to the session paths, i.e. the same payload plus Noise records). Session setup
//! (the DIDComm handshake) is not included: see the session benches for that.
//!
//! `cargo bench -p mpc-did-benches --bench mpyc`; `MPC_DID_PYTHON` names a Python with
//! mpyc (test.sh makes `.venv`), `MPC_DID_BENCH_REPS` the repetitions (default 5).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mpc_did_driver::{local, PartyTransport, CLOSE_DONE};
use mpc_did_proxy::launch::{run_program, Output, Program};
use mpc_did_proxy::{Proxy, ProxyConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

const PARTIES: u16 = 3;

struct Run {
    wall: Duration,
    mpyc: Duration,
    bytes: u64,
}

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("MPC_DID_PYTHON")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")))
        .filter(|p| p.exists())?;
    let ok = std::process::Command::new(&p)
        .args(["-c", "import mpyc"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(p)
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// MPyC's "Stop MPyC -- elapsed time: 0:00:01.234|bytes sent: 5678".
fn parse_stop(log: &str) -> (Duration, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("Stop MPyC"))
        .unwrap_or_default();
    let elapsed = line
        .split("elapsed time: ")
        .nth(1)
        .and_then(|r| r.split('|').next())
        .map(|t| {
            let parts: Vec<f64> = t.split(':').filter_map(|x| x.trim().parse().ok()).collect();
            parts.iter().fold(0.0, |acc, x| acc * 60.0 + x)
        })
        .unwrap_or_default();
    let bytes = line
        .split("bytes sent: ")
        .nth(1)
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_default();
    (Duration::from_secs_f64(elapsed), bytes)
}

async fn free_port() -> u16 {
    let l = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    l.local_addr().unwrap().port()
}

async fn run_plain(python: &std::path::Path, prog: &str, args: &[String]) -> Run {
    let mut ports = Vec::new();
    for _ in 0..PARTIES {
        ports.push(free_port().await);
    }
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..PARTIES {
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(script(prog))
            .args(args)
            .arg(format!("-M{PARTIES}"))
            .arg(format!("-I{i}"));
        for p in &ports {
            cmd.arg("-P").arg(format!("127.0.0.1:{p}"));
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        children.push(cmd.spawn().unwrap());
    }
    let (mut mpyc, mut bytes) = (Duration::ZERO, 0);
    for c in children {
        let out = c.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // MPyC logs to stdout.
        let (e, b) = parse_stop(&String::from_utf8_lossy(&out.stdout));
        mpyc = mpyc.max(e);
        bytes += b;
    }
    Run {
        wall: start.elapsed(),
        mpyc,
        bytes,
    }
}

/// A path that counts the bytes written to it.
struct Counting {
    inner: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn run_session(python: &std::path::Path, prog: &str, args: &[String]) -> Run {
    let written = Arc::new(AtomicU64::new(0));
    let w = Arc::clone(&written);
    let maps = local::local_mesh(PARTIES, move |t| {
        Box::new(Counting {
            inner: t,
            written: Arc::clone(&w),
        })
    })
    .await
    .unwrap();
    let after_setup = written.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut runs = Vec::new();
    for (i, sessions) in maps.into_iter().enumerate() {
        let me = u16::try_from(i).unwrap();
        let transport = Arc::new(PartyTransport::new(me, sessions));
        let proxy = Proxy::bind(ProxyConfig::new(PARTIES, me)).await.unwrap();
        let mut argv = vec![python.as_os_str().to_owned(), script(prog).into_os_string()];
        argv.extend(args.iter().map(Into::into));
        let program = Program {
            argv,
            output: Output::Capture,
            grace: Duration::from_secs(3),
        };
        runs.push(tokio::spawn(async move {
            let out = run_program(
                proxy,
                Arc::clone(&transport),
                program,
                std::future::pending(),
            )
            .await
            .unwrap();
            transport.close_all(CLOSE_DONE, "done").await;
            out
        }));
    }
    let mut mpyc = Duration::ZERO;
    for r in runs {
        let out = r.await.unwrap();
        assert!(out.status.success(), "{}", out.stderr);
        mpyc = mpyc.max(parse_stop(&out.stdout).0);
    }
    Run {
        wall: start.elapsed(),
        mpyc,
        bytes: written.load(Ordering::Relaxed) - after_setup,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would pass nothing: run only
    // when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(python) = python() else {
        println!(
            "mpyc bench skipped: no Python with mpyc (set MPC_DID_PYTHON or run ./test.sh once)"
        );
        return;
    };
    let reps: usize = std::env::var("MPC_DID_BENCH_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let people: Vec<String> = (3..=12).map(|n| n.to_string()).collect();
    let mut santa = vec!["--people".to_owned()];
    santa.extend(people);
    let workloads: Vec<(&str, &str, Vec<String>)> = vec![
        (
            "secretsanta (many rounds, small messages)",
            "secretsanta.py",
            santa,
        ),
        (
            "innerproduct (few rounds, MB messages)",
            "innerproduct.py",
            vec!["--length".into(), "200000".into()],
        ),
    ];
    println!("| workload | mode | wall (median of {reps}) | MPyC elapsed | vs plain | bytes on the wire | vs plain |");
    println!("|---|---|---|---|---|---|---|");
    for (label, prog, args) in workloads {
        let (mut pw, mut pm, mut sw, mut sm) = (vec![], vec![], vec![], vec![]);
        let (mut pb, mut sb) = (0, 0);
        for rep in 0..reps {
            // Alternate the order so drift on a shared machine hits both modes alike.
            let (p, s) = if rep % 2 == 0 {
                let p = rt.block_on(run_plain(&python, prog, &args));
                (p, rt.block_on(run_session(&python, prog, &args)))
            } else {
                let s = rt.block_on(run_session(&python, prog, &args));
                (rt.block_on(run_plain(&python, prog, &args)), s)
            };
            pw.push(p.wall);
            pm.push(p.mpyc);
            sw.push(s.wall);
            sm.push(s.mpyc);
            pb = p.bytes;
            sb = s.bytes;
        }
        let (pw, pm, sw, sm) = (median(pw), median(pm), median(sw), median(sm));
        println!(
            "| {label} | plain TCP | {:.3} s | {:.3} s | 1.00× | {pb} | 1.00× |",
            pw.as_secs_f64(),
            pm.as_secs_f64()
        );
        println!(
            "| {label} | session | {:.3} s | {:.3} s | {:.2}× (MPyC elapsed) | {sb} | {:.2}× |",
            sw.as_secs_f64(),
            sm.as_secs_f64(),
            sm.as_secs_f64() / pm.as_secs_f64().max(1e-9),
            sb as f64 / (pb as f64).max(1.0)
        );
    }
}
