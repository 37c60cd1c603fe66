//! End to end: our MPyC programs over plain TCP (MPyC's own networking), in session mode
//! (each party's MPyC → its proxy → Noise sessions over loopback TCP), and over MPyC's own
//! TLS (`--ssl`), in the same run.
//!
//! Workloads do equal work in every run (the evaluation's: Secret Santa high with a fixed
//! `--draws 16`, `mpc_did_e3::workload`; innerproduct of 100,000 elements). Modes alternate
//! within each repetition (rotating order, ≥ 5 repetitions); per mode the bench prints the
//! median wall time, its range (min–max), the ratio of medians to plain, the range of the
//! per-repetition ratios, and the CPU of the MPyC processes beside that of this process (all
//! proxies and sessions, in session mode); each repetition is also printed on stderr.
//!
//! Reports per workload and mode the median wall time from launch to the last party's exit,
//! the median of MPyC's own "elapsed time" (connected → shutdown, the part the data plane
//! can slow down; it leaves out connection set-up, so also the TLS handshakes of `--ssl`),
//! and the bytes on the wire. Session setup (the DIDComm handshake) is not included: see the
//! session benches for that.
//!
//! Bytes on the wire are counted the same way in every mode: the TCP payload written into
//! the sockets that connect two parties, both directions, all links. Session mode counts the
//! writes on its session paths (Noise records); plain and `--ssl` runs put a counting TCP
//! relay in front of every listening party. The relay adds a hop, so those byte counts come
//! from one extra run per mode, and the timed runs go direct. MPyC's own "bytes sent"
//! (payload only) is printed beside as a cross-check.
//!
//! `--ssl` needs `.config/party_{i}.crt`, `.config/party_{i}.key` and `.config/mpyc_ca.crt`
//! relative to MPyC's working directory (mpyc/runtime.py, `start`), and a dialer checks its
//! peer's certificate against the host name `MPyC party {j}`: the bench makes a CA and one
//! certificate per party (ECDSA P-256, rcgen) in a temporary directory and runs MPyC there.
//!
//! `cargo bench -p mpc-did-benches --bench mpyc`; `MPC_DID_PYTHON` names a Python with
//! mpyc (test.sh makes `.venv`), `MPC_DID_BENCH_REPS` the repetitions (default 5),
//! `MPC_DID_BENCH_WORKLOADS` `santa` or `innerproduct` (default both), `MPC_DID_BENCH_SSL=0`
//! leaves out `--ssl`, `MPC_DID_BENCH_RUNTIME=current_thread` runs the proxies and sessions on
//! one thread (spec/proxy-performance.md).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
mod mpyc_common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use mpc_did_e3::workload::{Program, Size, Workload};
use mpc_did_testkit::local;
use mpyc_common::{median, parse_stop, python, run_parties, script};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

const PARTIES: u16 = 3;

#[derive(Clone)]
struct Run {
    wall: Duration,
    mpyc: Duration,
    /// TCP payload between the parties (session mode; plain and TLS: see `Relays`).
    bytes: u64,
    /// MPyC's own "bytes sent", summed over the parties.
    mpyc_bytes: u64,
    /// CPU time of the MPyC processes (user + system, all parties).
    cpu_mpyc: Duration,
    /// CPU time of this process during the run: in session mode every party's proxy and
    /// sessions run here; in the other modes it only waits.
    cpu_ours: Duration,
}

/// `(this process, its waited-for children)` CPU time, user + system, from
/// `/proc/self/stat` (clock ticks of 10 ms).
fn cpu_times() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime are fields 14–17, i.e. 11–14 after the name.
    let tick = |i: usize| Duration::from_millis(f.get(i).copied().unwrap_or(0) * 10);
    (tick(11) + tick(12), tick(13) + tick(14))
}

async fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    l.local_addr().unwrap().port()
}

/// The key and certificate files MPyC's `--ssl` reads from `.config/` (mpyc/runtime.py):
/// one CA, and per party a certificate for the host name `MPyC party {i}`, which is what
/// a dialer passes as `server_hostname`.
fn write_tls_config(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let config = dir.join(".config");
    std::fs::create_dir_all(&config).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "mpc-did bench MPyC CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(config.join("mpyc_ca.crt"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for i in 0..PARTIES {
        let name = format!("MPyC party {i}");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.clone()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(config.join(format!("party_{i}.crt")), cert.pem()).unwrap();
        std::fs::write(config.join(format!("party_{i}.key")), key.serialize_pem()).unwrap();
    }
}

/// A counting TCP relay in front of each listening party: every byte it forwards, both
/// directions, is added to `bytes`.
struct Relays {
    ports: Vec<u16>,
    bytes: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relays {
    async fn start(targets: &[u16]) -> Self {
        let bytes = Arc::new(AtomicU64::new(0));
        let mut ports = Vec::new();
        let mut tasks = Vec::new();
        for &target in targets {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            ports.push(l.local_addr().unwrap().port());
            let bytes = Arc::clone(&bytes);
            tasks.push(tokio::spawn(async move {
                while let Ok((inbound, _)) = l.accept().await {
                    let bytes = Arc::clone(&bytes);
                    tokio::spawn(async move {
                        // The target may not listen yet. MPyC's dialer already counts this
                        // connection as made (a TCP accept), so keep trying rather than drop it.
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let outbound = loop {
                            match TcpStream::connect((Ipv4Addr::LOCALHOST, target)).await {
                                Ok(s) => break s,
                                Err(_) if Instant::now() < deadline => {
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                Err(_) => return,
                            }
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let mut a = Counting {
                            inner: inbound,
                            written: Arc::clone(&bytes),
                        };
                        let mut b = Counting {
                            inner: outbound,
                            written: bytes,
                        };
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    });
                }
            }));
        }
        Self {
            ports,
            bytes,
            tasks,
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// MPyC's own networking, `--ssl` or not; through counting relays when `count` is set.
async fn run_mpyc(python: &Path, prog: &str, args: &[String], ssl: bool, count: bool) -> Run {
    let mut ports = Vec::new();
    for _ in 0..PARTIES {
        ports.push(free_port().await);
    }
    let relays = if count {
        Some(Relays::start(&ports).await)
    } else {
        None
    };
    let dir = tempfile::tempdir().unwrap();
    if ssl {
        write_tls_config(dir.path());
    }
    let cpu0 = cpu_times();
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..PARTIES {
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(script(prog))
            .args(args)
            .arg(format!("-M{PARTIES}"))
            .arg(format!("-I{i}"));
        if ssl {
            cmd.arg("--ssl");
        }
        for (j, p) in ports.iter().enumerate() {
            // A party listens on its own entry's port: that one stays direct; the others
            // (which it dials) go through the relay when counting.
            let port = match &relays {
                Some(r) if j != usize::from(i) => r.ports[j],
                _ => *p,
            };
            cmd.arg("-P").arg(format!("127.0.0.1:{port}"));
        }
        cmd.current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        children.push(cmd.spawn().unwrap());
    }
    let (mut mpyc, mut mpyc_bytes) = (Duration::ZERO, 0);
    for c in children {
        let out = c.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // MPyC logs to stdout.
        let log = String::from_utf8_lossy(&out.stdout);
        assert!(
            !ssl || log.contains("connected via SSL"),
            "--ssl run without TLS: {log}"
        );
        let (e, b) = parse_stop(&log);
        mpyc = mpyc.max(e);
        mpyc_bytes += b;
    }
    let wall = start.elapsed();
    let cpu1 = cpu_times();
    Run {
        wall,
        mpyc,
        bytes: relays.map_or(0, |r| r.bytes.load(Ordering::Relaxed)),
        mpyc_bytes,
        cpu_mpyc: cpu1.1.saturating_sub(cpu0.1),
        cpu_ours: cpu1.0.saturating_sub(cpu0.0),
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
    let cpu0 = cpu_times();
    let t = run_parties(maps, python, prog, args).await;
    let cpu1 = cpu_times();
    Run {
        wall: t.wall,
        mpyc: t.mpyc,
        bytes: written.load(Ordering::Relaxed) - after_setup,
        mpyc_bytes: t.mpyc_bytes,
        cpu_mpyc: cpu1.1.saturating_sub(cpu0.1),
        cpu_ours: cpu1.0.saturating_sub(cpu0.0),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Session,
    Ssl,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Plain, Mode::Session, Mode::Ssl];
    fn label(self) -> &'static str {
        match self {
            Mode::Plain => "plain TCP",
            Mode::Session => "session (Noise)",
            Mode::Ssl => "MPyC --ssl (TLS)",
        }
    }
}

/// 64-byte round trips, (median, p99): plain loopback TCP; a session stream; and MPyC's whole
/// path in session mode — Unix socket → proxy → session → proxy → Unix socket — with the two
/// "MPyC" ends played by tasks of this process (spec/proxy-performance.md).
async fn hop_latency(rounds: usize) -> [(Duration, Duration); 3] {
    use mpc_did_mpc::PartyTransport;
    use mpc_did_proxy::{Proxy, ProxyConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (a, b) = common::tcp_pair().await;
    let plain = common::latency(a, async move { b }, rounds).await;

    let maps = local::local_mesh(2, |t| Box::new(t)).await.unwrap();
    let (sa, sb) = (maps[0][&1].clone(), maps[1][&0].clone());
    let stream = sa.open_stream().await.unwrap();
    let session = common::latency(
        stream,
        async move { sb.accept_stream().await.unwrap() },
        rounds,
    )
    .await;

    let mut maps = local::local_mesh(2, |t| Box::new(t)).await.unwrap();
    let (m1, m0) = (maps.pop().unwrap(), maps.pop().unwrap());
    let p0 = Proxy::bind(ProxyConfig::new(2, 0)).await.unwrap();
    let p1 = Proxy::bind(ProxyConfig::new(2, 1)).await.unwrap();
    let dial = p0.link_path(1);
    // Party 1's "MPyC" listens where its proxy delivers party 0's link.
    let listener = UnixListener::bind(p1.mpyc_socket()).unwrap();
    let runs = [
        tokio::spawn(p0.run(Arc::new(PartyTransport::new(0, m0)))),
        tokio::spawn(p1.run(Arc::new(PartyTransport::new(1, m1)))),
    ];
    let mut x = UnixStream::connect(dial).await.unwrap();
    x.write_all(&0u16.to_le_bytes()).await.unwrap();
    let echo = async move {
        let (mut y, _) = listener.accept().await.unwrap();
        let mut id = [0u8; 2];
        y.read_exact(&mut id).await.unwrap();
        y
    };
    let proxied = common::latency(x, echo, rounds).await;
    for r in runs {
        r.abort();
    }
    [plain, session, proxied]
}

/// The length of innerproduct's vectors (the "innerproduct 100k": two rounds of
/// MB-sized messages).
const INNERPRODUCT_LENGTH: u32 = 100_000;

/// `min–max` of a set of durations, in seconds.
fn range(v: &[Duration]) -> String {
    let min = v.iter().min().copied().unwrap_or_default();
    let max = v.iter().max().copied().unwrap_or_default();
    format!("{:.3}–{:.3} s", min.as_secs_f64(), max.as_secs_f64())
}

/// `min–max` of ratios.
fn ratio_range(v: &[f64]) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.3}–{max:.3}×")
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
        .unwrap_or(5)
        .max(1);
    // `MPC_DID_BENCH_WORKLOADS=santa` or `=innerproduct` runs one workload only;
    // `MPC_DID_BENCH_SSL=0` leaves out the `--ssl` mode (plain and session alternate).
    let only = std::env::var("MPC_DID_BENCH_WORKLOADS").unwrap_or_default();
    let with_ssl = std::env::var("MPC_DID_BENCH_SSL").as_deref() != Ok("0");
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| with_ssl || *m != Mode::Ssl)
        .collect();
    // `MPC_DID_BENCH_RUNTIME=current_thread` runs the proxies and sessions on one thread
    // (to measure what cross-thread wake-ups cost; `mpc-did run` uses the multi-thread one).
    let rt = match std::env::var("MPC_DID_BENCH_RUNTIME").as_deref() {
        Ok("current_thread") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        _ => tokio::runtime::Runtime::new().unwrap(),
    };
    // Fixed work per run (the evaluation's workloads, `mpc_did_e3::workload`: Secret Santa
    // with `--draws 16`), so wall-time ratios between modes compare equal work.
    let santa = Workload::new(Program::SecretSanta, Size::High);
    let workloads: Vec<(&str, &str, &str, Vec<String>)> = vec![
        (
            "santa",
            "secretsanta high (many rounds, small messages)",
            santa.program.script(),
            santa.args(),
        ),
        (
            "innerproduct",
            "innerproduct 100k (few rounds, MB messages)",
            "innerproduct.py",
            vec!["--length".into(), INNERPRODUCT_LENGTH.to_string()],
        ),
    ];
    let run = |mode: Mode, prog: &str, args: &[String]| match mode {
        Mode::Plain => rt.block_on(run_mpyc(&python, prog, args, false, false)),
        Mode::Session => rt.block_on(run_session(&python, prog, args)),
        Mode::Ssl => rt.block_on(run_mpyc(&python, prog, args, true, false)),
    };
    let rounds = 2000;
    let [plain, session, proxied] = rt.block_on(hop_latency(rounds));
    println!(
        "64 B round trips ({rounds}, median / p99): plain TCP {:.1} / {:.1} µs; session stream \
         {:.1} / {:.1} µs; MPyC's session-mode path (Unix → proxy → session → proxy → Unix) \
         {:.1} / {:.1} µs\n",
        plain.0.as_secs_f64() * 1e6,
        plain.1.as_secs_f64() * 1e6,
        session.0.as_secs_f64() * 1e6,
        session.1.as_secs_f64() * 1e6,
        proxied.0.as_secs_f64() * 1e6,
        proxied.1.as_secs_f64() * 1e6,
    );
    println!(
        "| workload | mode | wall median of {reps} | wall range | median ÷ plain median | \
         per-rep ÷ plain (range) | MPyC elapsed | elapsed per 100 kB of MPyC payload | vs plain \
         | bytes on the wire | ÷ MPyC payload | vs plain | CPU: MPyC / proxies + sessions |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (key, label, prog, args) in workloads {
        if !only.is_empty() && !only.split(',').any(|w| w.trim() == key) {
            continue;
        }
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(), Vec::new(), Vec::new()];
        for rep in 0..reps {
            // Alternate, rotating the order, so drift on a shared machine hits every mode
            // alike.
            for k in 0..modes.len() {
                let mode = modes[(rep + k) % modes.len()];
                let m = mode as usize;
                let r = run(mode, prog, &args);
                eprintln!(
                    "{key} rep {rep} {}: wall {:.3} s, MPyC elapsed {:.3} s, MPyC bytes {}, \
                     CPU: MPyC {:.2} s, this process (proxies + sessions) {:.2} s",
                    mode.label(),
                    r.wall.as_secs_f64(),
                    r.mpyc.as_secs_f64(),
                    r.mpyc_bytes,
                    r.cpu_mpyc.as_secs_f64(),
                    r.cpu_ours.as_secs_f64(),
                );
                runs[m].push(r);
            }
        }
        // Byte counts of the two modes without a session layer come from one counted run
        // each (see the module docs); session mode counts in its timed runs.
        let counted = [
            vec![rt.block_on(run_mpyc(&python, prog, &args, false, true))],
            runs[1].clone(),
            if with_ssl {
                vec![rt.block_on(run_mpyc(&python, prog, &args, true, true))]
            } else {
                Vec::new()
            },
        ];
        // Runs do equal work (fixed draws), so wall times compare directly; time per payload
        // byte and wire bytes per payload byte are kept as a cross-check within each run.
        let per_byte = |r: &Run| {
            Duration::from_secs_f64(r.mpyc.as_secs_f64() * 1e5 / (r.mpyc_bytes as f64).max(1.0))
        };
        let overhead = |r: &Run| r.bytes as f64 / (r.mpyc_bytes as f64).max(1.0);
        let walls: Vec<Vec<Duration>> = runs
            .iter()
            .map(|rs| rs.iter().map(|r| r.wall).collect())
            .collect();
        let wall: Vec<Duration> = walls
            .iter()
            .map(|w| {
                if w.is_empty() {
                    Duration::ZERO
                } else {
                    median(w.clone())
                }
            })
            .collect();
        let med = |rs: &[Run], f: &dyn Fn(&Run) -> Duration| {
            if rs.is_empty() {
                Duration::ZERO
            } else {
                median(rs.iter().map(f).collect())
            }
        };
        let elapsed: Vec<Duration> = runs.iter().map(|rs| med(rs, &|r| r.mpyc)).collect();
        let norm: Vec<Duration> = runs.iter().map(|rs| med(rs, &per_byte)).collect();
        let cpu_mpyc: Vec<Duration> = runs.iter().map(|rs| med(rs, &|r| r.cpu_mpyc)).collect();
        let cpu_ours: Vec<Duration> = runs.iter().map(|rs| med(rs, &|r| r.cpu_ours)).collect();
        let over: Vec<f64> = counted
            .iter()
            .map(|rs| {
                let mut v: Vec<f64> = rs.iter().map(overhead).collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied().unwrap_or_default()
            })
            .collect();
        let wire: Vec<u64> = counted
            .iter()
            .map(|rs| rs.last().map_or(0, |r| r.bytes))
            .collect();
        for mode in &modes {
            let m = *mode as usize;
            // Each repetition ran every mode once, back to back: its own ratio.
            let paired: Vec<f64> = walls[m]
                .iter()
                .zip(&walls[0])
                .map(|(w, p)| w.as_secs_f64() / p.as_secs_f64().max(1e-9))
                .collect();
            println!(
                "| {label} | {} | {:.3} s | {} | **{:.3}×** | {} | {:.3} s | {:.2} ms | {:.3}× | {} | {:.3} | {:.3}× | {:.2} / {:.2} s |",
                mode.label(),
                wall[m].as_secs_f64(),
                range(&walls[m]),
                wall[m].as_secs_f64() / wall[0].as_secs_f64().max(1e-9),
                ratio_range(&paired),
                elapsed[m].as_secs_f64(),
                norm[m].as_secs_f64() * 1e3,
                norm[m].as_secs_f64() / norm[0].as_secs_f64().max(1e-12),
                wire[m],
                over[m],
                over[m] / over[0].max(1e-9),
                cpu_mpyc[m].as_secs_f64(),
                cpu_ours[m].as_secs_f64(),
            );
        }
        if with_ssl {
            println!(
                "| {label} | session ÷ --ssl | | | {:.3}× | | | | {:.3}× | | | {:.3}× | |",
                wall[1].as_secs_f64() / wall[2].as_secs_f64().max(1e-9),
                norm[1].as_secs_f64() / norm[2].as_secs_f64().max(1e-12),
                over[1] / over[2].max(1e-9),
            );
        }
    }
}
