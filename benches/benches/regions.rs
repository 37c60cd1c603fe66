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
//! time, and MPyC's own elapsed time per 100 kB of its payload, with session ÷ plain of the
//! last (the workloads do fixed work per run: `mpc_did_e3::workload`).
//!
//! **Part 2, behind NATs**: the same three hosts, each now in a home namespace behind its own
//! NAT — endpoint-independent, then symmetric — with the same access delays, and a mediator
//! (DIDComm, STUN, relay) in the public namespace with its own delay
//! (`MPC_DID_REGIONS_MEDIATOR_MS`, default 10). Plain MPyC cannot connect here at all. Each
//! party runs the whole stack in its namespace: a fresh did:key registered at the mediator, a
//! connector that negotiates each pairwise session over DIDComm and picks its path (punched
//! QUIC behind EIM NATs, the relay behind symmetric ones), and MPyC behind its proxy. Reports
//! the paths, the time until the slowest party has all its sessions up, and MPyC's time per
//! 100 kB against part 1's plain MPyC between public hosts with the delay lines on.
//!
//! Needs root (network namespaces, iptables NFQUEUE). `cargo bench -p mpc-did-benches --bench
//! regions [-- FILTER]`; `MPC_DID_PYTHON` names a Python with mpyc, `MPC_DID_BENCH_REPS` the
//! repetitions (default 3). `-- probe` times single MB-sized messages over plain TCP and the
//! relay instead (see `probe`). `MPC_DID_REGIONS_CC` sets the namespaces' TCP congestion
//! control (default: the machine's). The e3 delay lines hold what a namespace receives
//! (e3/src/delay.rs: holding on the sending side capped every TCP flow).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod common;
mod mpyc_common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::latency;
use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_agent::Agent;
use mpc_did_connect::{
    mediator_stun, Binding, Connector, ConnectorConfig, QuicSetup, RelayIdentity, RelaySetup,
};
use mpc_did_driver::{DriverConfig, SessionHandle};
use mpc_did_e3::workload::{Program, Size, Workload};
use mpc_did_e3::{check_available, NatKind, Topology};
use mpc_did_proxy::PartyId;
use mpc_did_resolver::Did;
use mpc_did_resolver::{DidCommService, UniversalResolver};
use mpc_did_testkit::local;
use mpc_did_testkit::mediator::serve_public_mediator;
use mpyc_common::{median, python, run_parties, run_party, script, timing, Timing};

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
    let mut logs = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{log}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        logs.push(log);
    }
    let mut t = timing(&logs);
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

/// Behind NATs the whole stack runs: a mediator (DIDComm, STUN, relay) in the public
/// namespace, and per party an agent registered there, a connector that negotiates each
/// session over DIDComm and picks its path (punched QUIC or the relay), and MPyC behind its
/// proxy — all inside the party's home namespace.
struct NatRun {
    timing: Timing,
    /// Slowest party: first negotiation message to all its sessions up.
    setup: Duration,
    /// The path kinds the sessions came up on (party 0's view of its peers, then 1–2).
    paths: Vec<String>,
}

/// What a party tells the others before connecting: its DID and DIDComm service.
type Contact = (String, DidCommService);

async fn nat_party(
    me: usize,
    to_main: std::sync::mpsc::Sender<(usize, Contact)>,
    from_main: std::sync::mpsc::Receiver<Vec<Contact>>,
    python: &Path,
    prog: &str,
    args: &[String],
) -> (Duration, Vec<String>, String) {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut secrets = mpc_did_didcomm::SecretStore::new();
    let did = secrets.insert_did_key(&signing);
    let http = format!("http://{}:8080", Topology::PUBLIC_ADDR);
    let info = MediatorInfo::discover(&http).await.unwrap();
    let relay = RelaySetup {
        url: format!("ws://{}:8080/relay", Topology::PUBLIC_ADDR),
        identity: RelayIdentity::did_key(signing),
        expected_relay: Some(info.did.clone()),
    };
    let client =
        MediatorClient::new(info, &did, secrets, UniversalResolver::new().unwrap()).unwrap();
    client.register().await.unwrap();
    let agent = Agent::start(client).await.unwrap();
    let config = ConnectorConfig {
        handshake_timeout: Duration::from_secs(30),
        relay: Some(relay),
        quic: Some(QuicSetup {
            stun: mediator_stun(&agent),
            ..QuicSetup::default()
        }),
        ..ConnectorConfig::default()
    };
    let connector = Connector::start(agent.clone(), config).await.unwrap();
    to_main
        .send((me, (agent.did().to_owned(), agent.own_service())))
        .unwrap();
    let all = tokio::task::spawn_blocking(move || from_main.recv().unwrap())
        .await
        .unwrap();
    for (j, (peer, service)) in all.iter().enumerate() {
        if j != me {
            agent.learn_service(peer, service.clone()).await.unwrap();
        }
    }
    // No lobby here: every party binds its sessions to the same list of DIDs, in party order.
    let binding = Binding {
        mpc_session_id: "regions-bench".into(),
        roster_hash: <sha2::Sha256 as sha2::Digest>::digest(
            all.iter()
                .map(|(d, _)| d.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .into(),
    };
    let peers: Vec<(PartyId, Did)> = all
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != me)
        .map(|(j, (peer, _))| (PartyId::try_from(j).unwrap(), Did::parse(peer).unwrap()))
        .collect();
    let me_id = PartyId::try_from(me).unwrap();
    let start = Instant::now();
    let established = mpc_did_mpc::run::establish_all(&connector, &binding, me_id, &peers, &|_| {})
        .await
        .unwrap();
    let setup = start.elapsed();
    let mut sessions = BTreeMap::new();
    let mut paths = Vec::new();
    let mut handles = Vec::new();
    for (j, _, est) in established {
        paths.push(format!("{me}–{j} {}", est.path.kind()));
        handles.push((j, est.handle.clone()));
        sessions.insert(j, est.handle);
    }
    let log = run_party(me_id, sessions, python, prog, args).await;
    // A path attached more than once means the session lost its path and resumed.
    for (j, h) in handles {
        let attached = h.path().attached;
        if attached > 1 {
            eprintln!("  party {me}: session with {j} attached {attached} paths");
        }
    }
    (setup, paths, log)
}

fn run_nat(topo: &Topology, python: &Path, prog: &str, args: &[String]) -> NatRun {
    let (to_main, from_parties) = std::sync::mpsc::channel();
    let mut to_parties = Vec::new();
    let mut threads = Vec::new();
    let start = Instant::now();
    for (i, name) in names().iter().enumerate() {
        let (tx, rx) = std::sync::mpsc::channel();
        to_parties.push(tx);
        let to_main = to_main.clone();
        let (python, prog, args) = (python.to_owned(), prog.to_owned(), args.to_vec());
        threads.push(
            topo.host(name)
                .unwrap()
                .ns
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(nat_party(i, to_main, rx, &python, &prog, &args))
                })
                .unwrap(),
        );
    }
    let mut contacts: Vec<Option<Contact>> = vec![None; PARTIES];
    for _ in 0..PARTIES {
        let (i, c) = from_parties
            .recv_timeout(Duration::from_secs(60))
            .expect("a party did not register at the mediator");
        contacts[i] = Some(c);
    }
    let all: Vec<Contact> = contacts.into_iter().map(Option::unwrap).collect();
    for tx in &to_parties {
        tx.send(all.clone()).unwrap();
    }
    let (mut logs, mut setup, mut paths) = (Vec::new(), Duration::ZERO, Vec::new());
    for t in threads {
        let (s, p, log) = t.join().unwrap().unwrap();
        setup = setup.max(s);
        paths.extend(p);
        logs.push(log);
    }
    let mut timing = timing(&logs);
    timing.wall = start.elapsed();
    NatRun {
        timing,
        setup,
        paths,
    }
}

/// Part 2: every party behind its own NAT of `kind`, the mediator in the public namespace
/// with its own access delay; `plain` is part 1's plain-TCP time per 100 kB per workload
/// (public hosts, delay lines on) to compare with.
fn nat_part(
    kind: NatKind,
    python: &Path,
    workloads: &[(&str, &str, Vec<String>)],
    reps: usize,
    plain: &BTreeMap<String, f64>,
) {
    let mut builder = Topology::builder();
    for n in names() {
        builder = builder.host(&n, kind);
    }
    let topo = builder.build().unwrap();
    set_cc(&topo);
    let (_dir, mediator, stop_tx, _) = public_mediator(&topo);
    let mut lines: Vec<_> = names()
        .iter()
        .zip(delays())
        .map(|(n, d)| delay_line(&topo.host(n).unwrap().ns, d))
        .collect();
    lines.push(delay_line(topo.public(), mediator_delay()));
    for (label, prog, args) in workloads {
        let mut runs = Vec::new();
        for rep in 0..reps {
            let r = run_nat(&topo, python, prog, args);
            eprintln!(
                "  {kind:?} NATs, {label} rep {}: sessions up in {:.2} s on {}; MPyC {:.2} s \
                 ({} kB, {} draws), wall {:.2} s",
                rep + 1,
                r.setup.as_secs_f64(),
                r.paths.join(", "),
                r.timing.mpyc.as_secs_f64(),
                r.timing.mpyc_bytes / 1000,
                r.timing.draws,
                r.timing.wall.as_secs_f64(),
            );
            runs.push(r);
        }
        let setup = median(runs.iter().map(|r| r.setup).collect()).as_secs_f64();
        let per = median(runs.iter().map(|r| per_100k(&r.timing)).collect()).as_secs_f64();
        let mut kinds: Vec<String> = runs
            .iter()
            .flat_map(|r| {
                r.paths
                    .iter()
                    .map(|p| p.split(' ').nth(1).unwrap_or("?").to_owned())
            })
            .collect();
        kinds.sort();
        kinds.dedup();
        let base = plain.get(*label).copied().unwrap_or(f64::NAN);
        println!(
            "| {label} | {kind:?} NATs | {} | {setup:.2} s | {:.1} ms | {:.2}× |",
            kinds.join(" + "),
            per * 1e3,
            per / base,
        );
    }
    drop(lines);
    let _ = stop_tx.send(());
    if let Ok(Ok(Some(r))) = mediator.join() {
        eprintln!("  {kind:?} NATs: relay {r:?}");
    }
}

fn mediator_delay() -> Duration {
    Duration::from_millis(
        std::env::var("MPC_DID_REGIONS_MEDIATOR_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10),
    )
}

/// MPyC's elapsed time per 100 kB of its payload (runs do equal work since secretsanta's
/// draws are fixed; kept as the figure the README's tables use).
fn per_100k(t: &Timing) -> Duration {
    Duration::from_secs_f64(t.mpyc.as_secs_f64() * 1e5 / (t.mpyc_bytes as f64).max(1.0))
}

/// A delay line in `ns` emulating an access link of one-way delay `d` (e3 holds received
/// packets for `2·d`; holding them at the sender capped every TCP flow, e3/src/delay.rs).
fn delay_line(ns: &mpc_did_e3::Netns, d: Duration) -> mpc_did_e3::DelayLine {
    ns.delay(d).unwrap()
}

/// The thread that runs the mediator; it returns the relay's final metrics.
type MediatorThread = std::thread::JoinHandle<
    Result<Option<mpc_did_rendezvous::relay_server::RelayMetrics>, mpc_did_e3::E3Error>,
>;

/// The real mediator (DIDComm, STUN, relay) on a thread in `topo`'s public namespace: its data
/// directory, the thread, the sender that stops it, and its DID once it serves.
fn public_mediator(
    topo: &Topology,
) -> (
    tempfile::TempDir,
    MediatorThread,
    tokio::sync::oneshot::Sender<()>,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mediator");
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mediator = topo
        .public()
        .spawn(move || {
            serve_public_mediator(
                Topology::PUBLIC_ADDR,
                Topology::PUBLIC_ADDR2,
                data,
                up_tx,
                stop_rx,
            )
        })
        .unwrap();
    let did = up_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    (dir, mediator, stop_tx, did)
}

/// `MPC_DID_REGIONS_CC=cubic|reno|bbr`: the TCP congestion control of every namespace the
/// bench makes (a per-namespace sysctl; the machine's own setting is not touched). Unset:
/// the namespaces inherit the machine's default. Returns the setting in use, for the report.
fn set_cc(topo: &Topology) -> String {
    let mut spaces: Vec<&mpc_did_e3::Netns> =
        names().iter().map(|n| &topo.host(n).unwrap().ns).collect();
    spaces.push(topo.public());
    if let Ok(cc) = std::env::var("MPC_DID_REGIONS_CC") {
        for ns in &spaces {
            ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv4.tcp_congestion_control={cc}"),
            ])
            .unwrap();
        }
    }
    let out = spaces[0]
        .command("sysctl")
        .args([
            "-n",
            "net.ipv4.tcp_congestion_control",
            "net.ipv4.tcp_slow_start_after_idle",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(", slow_start_after_idle=")
}

/// `cargo bench --bench regions -- probe`: what one MB-sized message costs over the relay
/// against plain TCP at the same access delays (issue 17). Host r2 sends
/// `MPC_DID_REGIONS_PROBE_KB` kB (default 1000) to r1, which answers one byte once it has it
/// all; timed from the first byte written to the answer, back to back and after an idle gap
/// longer than TCP's retransmission timeout (as between MPyC's rounds). Plain: r2 → r1
/// between public hosts (RTT 70 ms with the default delays). Relay: r2 and r1 behind
/// symmetric NATs, both attached to the mediator's WebSocket relay (RTT 110 ms). Prints the
/// medians and `ss -ti` of the sockets of every namespace after the idle runs.
fn probe(reps: usize) {
    let kb: usize = std::env::var("MPC_DID_REGIONS_PROBE_KB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let size = kb * 1000;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    let gaps = [Duration::ZERO, Duration::from_millis(400)];
    let delays = delays();
    let ss = |ns: &mpc_did_e3::Netns, label: &str| {
        let out = ns.command("ss").args(["-tin"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines().filter(|l| l.contains("cwnd")) {
            let keep: Vec<&str> = line
                .split_whitespace()
                .filter(|w| {
                    [
                        "cwnd:",
                        "rtt:",
                        "ssthresh:",
                        "retrans:",
                        "reord",
                        "dsack",
                        "bytes_acked:",
                        "send ",
                        "delivery_rate",
                    ]
                    .iter()
                    .any(|k| w.starts_with(k.trim()))
                        || w.ends_with("bps")
                        || *w == "bbr"
                        || *w == "cubic"
                        || *w == "reno"
                })
                .collect();
            eprintln!("    ss {label}: {}", keep.join(" "));
        }
        // Reordering and retransmission counters of the namespace's TCP stack.
        let out = ns.command("nstat").args(["-az"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let keep: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let (k, v) = (w.next()?, w.next()?);
                let wanted = [
                    "Reorder",
                    "Retrans",
                    "Lost",
                    "DSACK",
                    "SpuriousRTO",
                    "Timeouts",
                ]
                .iter()
                .any(|x| k.contains(x));
                (wanted && v != "0").then(|| format!("{}={v}", k.trim_start_matches("TcpExt")))
            })
            .collect();
        eprintln!("    nstat {label}: {}", keep.join(" "));
    };
    async fn timed<A, B>(
        mut a: A,
        mut b: B,
        size: usize,
        gap: Duration,
        reps: usize,
    ) -> (Vec<Duration>, A, B)
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let msg = vec![0x5au8; size];
        let mut out = Vec::new();
        let mut buf = vec![0u8; size];
        for _ in 0..reps {
            tokio::time::sleep(gap).await;
            let t = Instant::now();
            let send = async {
                a.write_all(&msg).await.unwrap();
                a.flush().await.unwrap();
                let mut ack = [0u8; 1];
                a.read_exact(&mut ack).await.unwrap();
            };
            let recv = async {
                b.read_exact(&mut buf).await.unwrap();
                b.write_all(&[1]).await.unwrap();
                b.flush().await.unwrap();
            };
            tokio::join!(send, recv);
            out.push(t.elapsed());
        }
        (out, a, b)
    }
    let show = |label: &str, gap: Duration, v: Vec<Duration>| {
        let all: Vec<String> = v
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
            .collect();
        let m = median(v).as_secs_f64() * 1e3;
        println!(
            "| {label} | {} ms | {m:.0} ms | {} |",
            gap.as_millis(),
            all.join(", ")
        );
        m
    };
    println!("\n{kb} kB from r2 to r1, {reps} messages per row; answer of one byte\n");
    println!("| path | idle before each | median to the answer | each (ms) |");
    println!("|---|---:|---:|---|");
    let mut plain = Vec::new();
    {
        let mut builder = Topology::builder();
        for n in names() {
            builder = builder.host(&n, NatKind::None);
        }
        let topo = builder.build().unwrap();
        let _lines: Vec<_> = names()
            .iter()
            .zip(&delays)
            .map(|(n, d)| delay_line(&topo.host(n).unwrap().ns, *d))
            .collect();
        eprintln!("  public hosts: TCP {}", set_cc(&topo));
        for gap in gaps {
            let (x, y) = cross_pair(&topo, 2, 1);
            let (v, x, y) = rt.block_on(timed(x, y, size, gap, reps));
            plain.push(show("plain TCP r2 → r1", gap, v));
            if !gap.is_zero() {
                ss(&topo.host("r2").unwrap().ns, "r2 plain");
            }
            drop((x, y));
        }
        // Two messages at once, to r1 and r0 (as MPyC sends to both peers): two TCP flows.
        let (x1, y1) = cross_pair(&topo, 2, 1);
        let (x0, y0) = cross_pair(&topo, 2, 0);
        let v = rt.block_on(async {
            let (r1, r0) = tokio::join!(
                timed(x1, y1, size, Duration::ZERO, reps),
                timed(x0, y0, size, Duration::ZERO, reps)
            );
            r1.0.iter().zip(&r0.0).map(|(a, b)| *a.max(b)).collect()
        });
        plain.push(show(
            "plain TCP r2 → r1 and r2 → r0 at once",
            Duration::ZERO,
            v,
        ));
    }
    let mut builder = Topology::builder();
    for n in names() {
        builder = builder.host(&n, NatKind::Symmetric);
    }
    let topo = builder.build().unwrap();
    eprintln!("  behind NATs: TCP {}", set_cc(&topo));
    let (_dir, mediator, stop_tx, relay_did) = public_mediator(&topo);
    let mut lines: Vec<_> = names()
        .iter()
        .zip(&delays)
        .map(|(n, d)| delay_line(&topo.host(n).unwrap().ns, *d))
        .collect();
    lines.push(delay_line(topo.public(), mediator_delay()));
    let url = format!("ws://{}:8080/relay", Topology::PUBLIC_ADDR);
    let keys: Vec<ed25519_dalek::SigningKey> = (0..3)
        .map(|_| {
            let mut seed = [0u8; 32];
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
            ed25519_dalek::SigningKey::from_bytes(&seed)
        })
        .collect();
    let handle = rt.handle().clone();
    let conn = |host: &str, k: &ed25519_dalek::SigningKey| {
        let (url, id, did, h) = (
            url.clone(),
            RelayIdentity::did_key(k.clone()),
            relay_did.clone(),
            handle.clone(),
        );
        topo.host(host)
            .unwrap()
            .ns
            .run(move || {
                h.block_on(mpc_did_rendezvous::net::RelayConnection::connect_ws(
                    &url,
                    id,
                    Some(did),
                ))
            })
            .unwrap()
            .unwrap()
    };
    let sender = conn("r2", &keys[0]);
    let receiver = conn("r1", &keys[1]);
    let pk = |k: &ed25519_dalek::SigningKey| {
        mpc_did_rendezvous::relay::PeerAddr::Key(k.verifying_key().to_bytes())
    };
    let mut relay = Vec::new();
    for gap in gaps {
        let a = sender.open_stream(pk(&keys[1])).unwrap();
        let b = receiver.open_stream(pk(&keys[0])).unwrap();
        let (v, a, b) = rt.block_on(timed(a, b, size, gap, reps));
        relay.push(show("relay (WebSocket) r2 → mediator → r1", gap, v));
        if !gap.is_zero() {
            ss(&topo.host("r2").unwrap().ns, "r2 → mediator");
            ss(topo.public(), "mediator");
        }
        drop((a, b));
    }
    {
        // Two messages at once, to r1 and r0: both on r2's one connection to the relay.
        let third = conn("r0", &keys[2]);
        let a1 = sender.open_stream(pk(&keys[1])).unwrap();
        let b1 = receiver.open_stream(pk(&keys[0])).unwrap();
        let a0 = sender.open_stream(pk(&keys[2])).unwrap();
        let b0 = third.open_stream(pk(&keys[0])).unwrap();
        let v = rt.block_on(async {
            let (r1, r0) = tokio::join!(
                timed(a1, b1, size, Duration::ZERO, reps),
                timed(a0, b0, size, Duration::ZERO, reps)
            );
            r1.0.iter().zip(&r0.0).map(|(a, b)| *a.max(b)).collect()
        });
        relay.push(show(
            "relay r2 → r1 and r2 → r0 at once (one connection from r2)",
            Duration::ZERO,
            v,
        ));
        drop(third);
    }
    println!(
        "\ntwo at once ÷ one: plain {:.2}×, relay {:.2}×",
        plain[2] / plain[0],
        relay[2] / relay[0]
    );
    for (i, gap) in gaps.iter().enumerate() {
        println!(
            "\nidle {} ms: relay ÷ plain {:.2}× (RTT ratio 110 ÷ 70 = 1.57×)",
            gap.as_millis(),
            relay[i] / plain[i]
        );
    }
    drop((sender, receiver));
    drop(lines);
    let _ = stop_tx.send(());
    if let Ok(Ok(Some(r))) = mediator.join() {
        eprintln!("  relay {r:?}");
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // `RUST_LOG=mpc_did_rendezvous=debug`: e.g. what QUIC did on each punched path.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    if let Err(e) = check_available() {
        println!("regions bench skipped: {e}");
        return;
    }
    if std::env::args().any(|a| a == "probe") {
        let reps = std::env::var("MPC_DID_BENCH_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(5);
        probe(reps);
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
    // The setting the figures were taken with (README "MPyC between emulated regions").
    println!(
        "TCP in the namespaces: {}; delay lines on ingress (2 × the one-way delay)",
        set_cc(&topo)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Fixed work per run (the evaluation's workloads, `mpc_did_e3::workload`).
    let santa = Workload::new(Program::SecretSanta, Size::Medium);
    let mut workloads: Vec<(&str, &str, Vec<String>)> = vec![
        (
            "secretsanta medium (many rounds, small messages)",
            santa.program.script(),
            santa.args(),
        ),
        (
            "innerproduct 100k (few rounds, MB messages)",
            "innerproduct.py",
            vec!["--length".into(), "100000".into()],
        ),
    ];
    // `cargo bench --bench regions -- santa`: only workloads whose label contains "santa".
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    workloads.retain(|(label, _, _)| {
        filter.is_empty() || filter.iter().any(|f| label.contains(f.as_str()))
    });
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
    // Plain MPyC between public hosts with delay lines: the baseline of part 2.
    let mut plain_delayed: BTreeMap<String, f64> = BTreeMap::new();
    for (label, prog, args) in &workloads {
        for delayed in [false, true] {
            let lines: Vec<_> = if delayed {
                names()
                    .iter()
                    .zip(&delays)
                    .map(|(n, d)| delay_line(&topo.host(n).unwrap().ns, *d))
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
            let (pw, sw) = (med(&plain, |t| t.wall), med(&session, |t| t.wall));
            let (pn, sn) = (med(&plain, per_100k), med(&session, per_100k));
            if delayed {
                plain_delayed.insert((*label).to_owned(), pn);
            }
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
    drop(topo);

    // Part 2: behind NATs, the whole stack (see `nat_part`).
    println!(
        "\nBehind NATs: one-way delays {:?} at the parties, {:?} at the mediator (DIDComm, \
         STUN, relay); each party behind its own NAT\n",
        delays,
        mediator_delay()
    );
    println!(
        "| workload | NATs | session paths | sessions up (slowest party) | MPyC elapsed per 100 kB \
         | ÷ plain MPyC between public hosts |"
    );
    println!("|---|---|---|---:|---:|---:|");
    for kind in [NatKind::EndpointIndependent, NatKind::Symmetric] {
        nat_part(kind, &python, &workloads, reps, &plain_delayed);
    }
}
