//! Session mode against WireGuard between two network namespaces.
//!
//! Topology: `mpc-did-e3`'s (two hosts with public addresses on one bridge, no NAT, no
//! added delay); namespaces are removed when the topology drops, also on failure. WireGuard:
//! userspace `wireguard-go` in each namespace (this kernel has no WireGuard module), one
//! static peer each, configured with `wg set` as a user would; TCP runs over the tunnel
//! addresses. Session: our Noise session and driver (`mpc-did-testkit::local::session_pair_on`:
//! the real handshake without the DIDComm round trips) over a direct TCP connection between
//! the same two namespaces. Baseline: plain TCP between the namespaces.
//!
//! Throughput: 64 KiB writes of `total` bytes, then shutdown; the clock stops at the
//! receiver's EOF. Latency: 64-byte ping-pong, p50 and p99. Both ends of every mode run in
//! this process (their sockets inside the namespaces); WireGuard's crypto runs in the two
//! `wireguard-go` processes, ours in this process — all on the same two cores.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use mpc_did_driver::DriverConfig;
use mpc_did_e3::{NatKind, Topology};

use crate::stats::{fmt, ping_pong, stream_throughput, summary};

const WG_PORT: u16 = 51_820;

fn tunnel_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 0, u8::try_from(i + 1).unwrap_or(254))
}

/// Two `wireguard-go` interfaces, one per host; stopped on drop.
struct WgPair {
    procs: Vec<Child>,
    ifaces: Vec<String>,
}

impl Drop for WgPair {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for iface in &self.ifaces {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
        }
    }
}

fn run_out(cmd: &mut Command, stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(anyhow!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl WgPair {
    fn up(topo: &Topology, names: [&str; 2]) -> anyhow::Result<Self> {
        let keydir = tempfile::tempdir()?;
        let mut keys = Vec::new();
        for i in 0..2 {
            let private = run_out(Command::new("wg").arg("genkey"), None)?;
            let public = run_out(Command::new("wg").arg("pubkey"), Some(&private))?;
            let path = keydir.path().join(format!("h{i}.key"));
            std::fs::write(&path, format!("{private}\n"))?;
            keys.push((path, public));
        }
        let mut pair = Self {
            procs: Vec::new(),
            ifaces: Vec::new(),
        };
        for i in 0..2 {
            let host = topo.host(names[i]).ok_or_else(|| anyhow!("no host"))?;
            let peer = topo.host(names[1 - i]).ok_or_else(|| anyhow!("no host"))?;
            let iface = format!("pw{}x{i}", std::process::id() % 1_000_000);
            let child = host
                .ns
                .command("wireguard-go")
                .arg("-f")
                .arg(&iface)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("wireguard-go")?;
            pair.procs.push(child);
            pair.ifaces.push(iface.clone());
            let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() {
                if Instant::now() > deadline {
                    return Err(anyhow!("{iface}: wireguard-go did not start within 10 s"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            run_out(
                host.ns
                    .command("wg")
                    .arg("set")
                    .arg(&iface)
                    .arg("private-key")
                    .arg(&keys[i].0)
                    .arg("listen-port")
                    .arg(WG_PORT.to_string())
                    .arg("peer")
                    .arg(&keys[1 - i].1)
                    .arg("allowed-ips")
                    .arg(format!("{}/32", tunnel_addr(1 - i)))
                    .arg("endpoint")
                    .arg(format!("{}:{WG_PORT}", peer.addr)),
                None,
            )?;
            host.ns
                .exec(&[
                    "ip",
                    "address",
                    "add",
                    &format!("{}/24", tunnel_addr(i)),
                    "dev",
                    &iface,
                ])
                .map_err(|e| anyhow!("{e}"))?;
            host.ns
                .exec(&["ip", "link", "set", &iface, "up"])
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(pair)
    }
}

/// A TCP connection from host `a`'s namespace to `to` (an address of host `b`), `TCP_NODELAY`.
fn cross_pair(
    topo: &Topology,
    names: [&str; 2],
    to: Ipv4Addr,
) -> anyhow::Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
    let ha = topo.host(names[0]).ok_or_else(|| anyhow!("no host"))?;
    let hb = topo.host(names[1]).ok_or_else(|| anyhow!("no host"))?;
    let listener = hb
        .ns
        .run(move || TcpListener::bind((to, 0)))
        .map_err(|e| anyhow!("{e}"))??;
    let addr = listener.local_addr()?;
    let x = ha
        .ns
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
        .map_err(|e| anyhow!("{e}"))??;
    let (y, _) = listener.accept()?;
    let tok = |s: TcpStream| -> anyhow::Result<tokio::net::TcpStream> {
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        Ok(tokio::net::TcpStream::from_std(s)?)
    };
    Ok((tok(x)?, tok(y)?))
}

fn check_tools() -> anyhow::Result<()> {
    mpc_did_e3::check_available().map_err(|e| anyhow!("network namespaces: {e}"))?;
    for (tool, pkg) in [("wireguard-go", "wireguard-go"), ("wg", "wireguard-tools")] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return Err(anyhow!(
                "`{tool}` not found: install the Debian package {pkg} (apt-get install {pkg})"
            ));
        }
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(anyhow!(
            "/dev/net/tun is missing: wireguard-go needs a TUN device"
        ));
    }
    Ok(())
}

const MODES: [&str; 3] = [
    "plain TCP (baseline)",
    "WireGuard (wireguard-go), TCP over the tunnel",
    "ours: session stream, direct TCP path",
];

pub async fn run(reps: usize, quick: bool) -> anyhow::Result<()> {
    check_tools()?;
    mpc_did_e3::sweep_stale();
    let (total, rounds) = if quick {
        (8 << 20, 100)
    } else {
        (128 << 20, 2000)
    };
    let names = ["pa", "pb"];
    let topo = Topology::builder()
        .host(names[0], NatKind::None)
        .host(names[1], NatKind::None)
        .build()
        .map_err(|e| anyhow!("topology: {e}"))?;
    let wg = WgPair::up(&topo, names)?;
    let b_addr = topo.host(names[1]).ok_or_else(|| anyhow!("no host"))?.addr;
    // The tunnel needs a first handshake; do it before any clock runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cross_pair(&topo, names, tunnel_addr(1)) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                return Err(anyhow!("WireGuard tunnel did not come up: {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }

    let mut tp = vec![Vec::new(); MODES.len()];
    let mut r50 = vec![Vec::new(); MODES.len()];
    let mut r99 = vec![Vec::new(); MODES.len()];
    for rep in 0..reps {
        for (mi, mode) in MODES.iter().enumerate() {
            let to = if mi == 1 { tunnel_addr(1) } else { b_addr };
            let (x, y) = cross_pair(&topo, names, to)?;
            let (t, p50, p99) = if mi < 2 {
                let t = stream_throughput(x, async move { Ok(y) }, total).await?;
                let (x, y) = cross_pair(&topo, names, to)?;
                let (p50, p99) = ping_pong(x, async move { Ok(y) }, rounds).await?;
                (t, p50, p99)
            } else {
                let (ha, hb) = mpc_did_testkit::local::session_pair_on(
                    "did:example:peers-a",
                    "did:example:peers-b",
                    DriverConfig::default(),
                    x,
                    y,
                    |s| Box::new(s),
                )
                .await?;
                let sa = ha.open_stream().await?;
                let hb2 = hb.clone();
                let t = stream_throughput(
                    sa,
                    async move {
                        hb2.accept_stream().await.ok_or_else(|| {
                            std::io::Error::other("session closed before the stream arrived")
                        })
                    },
                    total,
                )
                .await?;
                // A second stream on the same session for the round trips.
                let sa = ha.open_stream().await?;
                let hb2 = hb.clone();
                let (p50, p99) = ping_pong(
                    sa,
                    async move {
                        hb2.accept_stream().await.ok_or_else(|| {
                            std::io::Error::other("session closed before the stream arrived")
                        })
                    },
                    rounds,
                )
                .await?;
                ha.close(0, "bench done").await;
                hb.close(0, "bench done").await;
                (t, p50, p99)
            };
            eprintln!(
                "wireguard rep {rep}: {mode}: {t:.0} MiB/s, RTT p50 {p50:.0} µs, p99 {p99:.0} µs"
            );
            tp[mi].push(t);
            r50[mi].push(p50);
            r99[mi].push(p99);
        }
    }
    drop(wg);
    drop(topo);

    println!(
        "## Session mode vs WireGuard between two network namespaces\n\n{} MiB per run in 64 KiB writes; {rounds} 64-byte round trips; {reps} alternating repetitions, median (min–max); × = ratio of medians to plain TCP between the same namespaces.\n",
        total >> 20
    );
    println!("| mode | throughput MiB/s | × plain | RTT p50 µs | RTT p99 µs | added p50 µs |");
    println!("|---|---:|---:|---:|---:|---:|");
    let base = summary(&tp[0]).median;
    let base50 = summary(&r50[0]).median;
    for (mi, mode) in MODES.iter().enumerate() {
        let s = summary(&tp[mi]);
        let s50 = summary(&r50[mi]);
        println!(
            "| {mode} | {} | {:.2} | {} | {} | {:.0} |",
            fmt(s, 0),
            s.median / base,
            fmt(s50, 0),
            fmt(summary(&r99[mi]), 0),
            s50.median - base50
        );
    }
    println!();
    Ok(())
}
