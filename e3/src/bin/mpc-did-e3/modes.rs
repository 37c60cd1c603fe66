//! The solutions compared, each run for real inside the namespaces.
//!
//! - `plain`: MPyC's own TCP between the hosts' public addresses.
//! - `ssl`: the same with MPyC's `--ssl` (a CA and one certificate per party, made here the
//!   way MPyC's docs ask: `.config/party_{i}.crt|key`, `.config/mpyc_ca.crt`).
//! - `wireguard`: per host a userspace `wireguard-go` interface, a full mesh of static peers
//!   (`wg set ... peer KEY allowed-ips 10.77.0.j/32 endpoint HOST:51820` for every other
//!   host, as a user of WireGuard would configure it), MPyC over the tunnel addresses.
//! - `session-direct`: mpc-did's data plane: per pair one TCP connection between the two
//!   hosts' namespaces carrying a Noise session (the DIDComm negotiation is left out: it
//!   runs in the connect tests and the `regions` bench); each MPyC behind its proxy.
//! - `didcomm-direct`: per-message DIDComm on the same paths: every MPyC message one
//!   authcrypt DIDComm message (`mpc_did_mpc::didcomm_transport`, direct carrier), the
//!   design sessions replace.
//! - `session-punched`, `session-relay`, `didcomm-mediated`: with the real mediator binary,
//!   the parties behind NATs (endpoint-independent, symmetric) or, for `didcomm-mediated`,
//!   public; see `mediated`.
//!
//! Every mode's wire bytes are the same measure: the bytes the hosts' `eth0` sent during the
//! run (IP and transport headers included), read from the namespaces' interface counters.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_did_didcomm::SecretStore;
use mpc_did_driver::{DriverConfig, SessionHandle, CLOSE_DONE};
use mpc_did_e3::workload::examples_dir;
use mpc_did_e3::{NatKind, Topology};
use mpc_did_mpc::didcomm_transport::DidcommTransport;
use mpc_did_mpc::PartyTransport;
use mpc_did_proxy::launch::{run_program, Output, Program};
use mpc_did_proxy::{PartyId, Proxy, ProxyConfig, Transport};
use mpc_did_resolver::StaticResolver;
use mpc_did_testkit::local;

use crate::mediated;

use crate::matrix::{host_name, interrupted, RunSpec};

/// A solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Plain,
    Ssl,
    WireGuard,
    SessionDirect,
    DidcommDirect,
    SessionPunched,
    SessionRelay,
    DidcommMediated,
}

impl Mode {
    pub(crate) const ALL: [Mode; 8] = [
        Mode::Plain,
        Mode::Ssl,
        Mode::WireGuard,
        Mode::SessionDirect,
        Mode::DidcommDirect,
        Mode::SessionPunched,
        Mode::SessionRelay,
        Mode::DidcommMediated,
    ];

    /// The modes that run the mediator (`mediated`).
    pub(crate) const MEDIATED: [Mode; 3] = [
        Mode::SessionPunched,
        Mode::SessionRelay,
        Mode::DidcommMediated,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Ssl => "ssl",
            Mode::WireGuard => "wireguard",
            Mode::SessionDirect => "session-direct",
            Mode::DidcommDirect => "didcomm-direct",
            Mode::SessionPunched => "session-punched",
            Mode::SessionRelay => "session-relay",
            Mode::DidcommMediated => "didcomm-mediated",
        }
    }

    /// The NAT in front of each host (the CSV's `nat` column).
    pub(crate) fn nat(self) -> &'static str {
        self.nat_kind().map_or("none", |k| match k {
            NatKind::Symmetric => "symmetric",
            _ => "eim",
        })
    }

    /// The NAT the topology puts in front of each host, if any.
    pub(crate) fn nat_kind(self) -> Option<NatKind> {
        match self {
            Mode::SessionPunched => Some(NatKind::EndpointIndependent),
            Mode::SessionRelay => Some(NatKind::Symmetric),
            _ => None,
        }
    }

    /// Whether the run needs the mediator in the public namespace.
    pub(crate) fn needs_mediator(self) -> bool {
        Self::MEDIATED.contains(&self)
    }
}

/// What one run measured; `error` set means the run failed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    pub(crate) wall: Option<Duration>,
    pub(crate) mpyc: Option<Duration>,
    pub(crate) wire_bytes: Option<u64>,
    pub(crate) mpyc_bytes: Option<u64>,
    pub(crate) setup: Option<Duration>,
    pub(crate) paths: Vec<String>,
    pub(crate) error: Option<String>,
}

/// MPyC listens on a fresh port each run (namespaces are reused across runs).
fn next_port() -> u16 {
    static PORT: AtomicU16 = AtomicU16::new(0);
    21_000 + PORT.fetch_add(1, Ordering::Relaxed) % 20_000
}

pub(crate) fn run(spec: &RunSpec, topo: &Topology, python: &Path, timeout: Duration) -> Outcome {
    let before = wire_bytes(topo, spec.parties);
    let mut out = match spec.mode {
        Mode::Plain => mpyc_processes(spec, topo, python, timeout, None, false),
        Mode::Ssl => mpyc_processes(spec, topo, python, timeout, None, true),
        Mode::WireGuard => match WgMesh::up(topo, spec.parties) {
            Ok(mesh) => {
                let mut o = mpyc_processes(
                    spec,
                    topo,
                    python,
                    timeout,
                    Some(&mesh.tunnel_addrs()),
                    false,
                );
                o.setup = Some(mesh.setup);
                drop(mesh);
                o
            }
            Err(e) => Outcome {
                error: Some(format!("wireguard setup: {e}")),
                ..Outcome::default()
            },
        },
        Mode::SessionDirect => session_direct(spec, topo, python, timeout),
        Mode::DidcommDirect => didcomm_direct(spec, topo, python, timeout),
        Mode::SessionPunched | Mode::SessionRelay | Mode::DidcommMediated => {
            mediated::run(spec, topo, python, timeout)
        }
    };
    if out.paths.is_empty() && out.error.is_none() {
        out.paths = vec![match spec.mode {
            Mode::Plain => "tcp",
            Mode::Ssl => "tls",
            Mode::WireGuard => "wireguard-udp",
            Mode::SessionDirect => "direct-tcp",
            Mode::DidcommDirect => "didcomm-authcrypt-direct-tcp",
            Mode::DidcommMediated => "didcomm-authcrypt-mediated",
            // Recorded per pair by the run (`0-1:quic`); empty only when it failed.
            Mode::SessionPunched | Mode::SessionRelay => "unknown",
        }
        .to_owned()];
    }
    if let (Ok(b), Ok(a)) = (before, wire_bytes(topo, spec.parties)) {
        out.wire_bytes = Some(a.saturating_sub(b));
    }
    out
}

/// Bytes sent by all hosts' `eth0` so far.
fn wire_bytes(topo: &Topology, n: usize) -> Result<u64, String> {
    let mut sum = 0;
    for i in 0..n {
        let host = topo.host(&host_name(i)).ok_or("no host")?;
        let out = host
            .ns
            .command("cat")
            .arg("/sys/class/net/eth0/statistics/tx_bytes")
            .output()
            .map_err(|e| e.to_string())?;
        sum += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .map_err(|e| e.to_string())?;
    }
    Ok(sum)
}

fn host_addrs(topo: &Topology, n: usize) -> Result<Vec<Ipv4Addr>, String> {
    (0..n)
        .map(|i| {
            topo.host(&host_name(i))
                .map(|h| h.addr)
                .ok_or_else(|| "no host".to_owned())
        })
        .collect()
}

/// MPyC's "Stop MPyC -- elapsed time: 0:00:01.234|bytes sent: 5678".
pub(crate) fn parse_stop(log: &str) -> Option<(Duration, u64)> {
    let line = log.lines().find(|l| l.contains("Stop MPyC"))?;
    let t = line.split("elapsed time: ").nth(1)?.split('|').next()?;
    let secs = t
        .split(':')
        .map(|x| x.trim().parse::<f64>())
        .try_fold(0.0, |acc, x| x.map(|x| acc * 60.0 + x))
        .ok()?;
    let bytes = line.split("bytes sent: ").nth(1)?.trim().parse().ok()?;
    Some((Duration::from_secs_f64(secs), bytes))
}

/// A child whose output is read on a thread (no pipe can fill up and stall it).
struct Party {
    child: Child,
    output: std::thread::JoinHandle<String>,
}

impl Party {
    fn spawn(mut cmd: Command) -> std::io::Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let output = std::thread::spawn(move || {
            let mut s = String::new();
            let err = std::thread::spawn(move || {
                let mut e = String::new();
                if let Some(p) = stderr.as_mut() {
                    let _ = p.read_to_string(&mut e);
                }
                e
            });
            if let Some(p) = stdout.as_mut() {
                let _ = p.read_to_string(&mut s);
            }
            s.push_str(&err.join().unwrap_or_default());
            s
        });
        Ok(Self { child, output })
    }
}

/// Wait for all parties, polling the interrupt flag and the deadline; kill all on either
/// or when one fails. Returns each party's combined output.
fn wait_all(mut parties: Vec<Party>, deadline: Instant) -> Result<Vec<String>, String> {
    let mut failed: Option<String> = None;
    loop {
        let mut running = 0;
        for (i, p) in parties.iter_mut().enumerate() {
            match p.child.try_wait() {
                Ok(Some(st)) if !st.success() && failed.is_none() => {
                    failed = Some(format!("party {i} exited with {st}"));
                }
                Ok(Some(_)) => {}
                Ok(None) => running += 1,
                Err(e) => failed = Some(format!("party {i}: {e}")),
            }
        }
        if running == 0 {
            break;
        }
        let reason = if interrupted() {
            Some("interrupted".to_owned())
        } else if Instant::now() > deadline {
            Some("timeout".to_owned())
        } else {
            failed.clone()
        };
        if let Some(r) = reason {
            for p in &mut parties {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
            failed.get_or_insert(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs: Vec<String> = parties
        .into_iter()
        .map(|p| p.output.join().unwrap_or_default())
        .collect();
    match failed {
        Some(f) => {
            let mut lines: Vec<&str> = logs
                .iter()
                .flat_map(|l| {
                    l.lines()
                        .filter(|x| x.contains("Error") || x.contains("error"))
                })
                .take(2)
                .collect();
            // No error line (e.g. the interpreter could not be started): each log's last line.
            if lines.is_empty() {
                lines = logs
                    .iter()
                    .filter_map(|l| l.lines().rev().find(|x| !x.trim().is_empty()))
                    .take(2)
                    .collect();
            }
            let tail = lines.join(" / ");
            Err(if tail.is_empty() {
                f
            } else {
                format!("{f}: {tail}")
            })
        }
        None => Ok(logs),
    }
}

/// Fold the parties' logs into MPyC time (slowest party) and MPyC payload bytes (summed);
/// every party must have printed `valid: True`.
pub(crate) fn fold_logs(logs: &[String], out: &mut Outcome) {
    let mut mpyc = Duration::ZERO;
    let mut bytes = 0;
    for (i, log) in logs.iter().enumerate() {
        match parse_stop(log) {
            Some((e, b)) => {
                mpyc = mpyc.max(e);
                bytes += b;
            }
            None => {
                out.error = Some(format!("party {i} printed no MPyC stop line"));
                return;
            }
        }
        if !log.contains("valid: True") {
            out.error = Some(format!("party {i} did not report a valid result"));
            return;
        }
    }
    out.mpyc = Some(mpyc);
    out.mpyc_bytes = Some(bytes);
}

/// MPyC's own networking between the namespaces; `addrs` overrides the hosts' public
/// addresses (the WireGuard tunnel addresses).
fn mpyc_processes(
    spec: &RunSpec,
    topo: &Topology,
    python: &Path,
    timeout: Duration,
    addrs: Option<&[Ipv4Addr]>,
    ssl: bool,
) -> Outcome {
    let mut out = Outcome::default();
    let addrs = match addrs {
        Some(a) => a.to_vec(),
        None => match host_addrs(topo, spec.parties) {
            Ok(a) => a,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        },
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(format!("temporary directory: {e}"));
            return out;
        }
    };
    if ssl {
        if let Err(e) = write_tls_config(dir.path(), spec.parties) {
            out.error = Some(format!("TLS certificates: {e}"));
            return out;
        }
    }
    let port = next_port();
    let script = spec.workload.script_in(&examples_dir());
    let start = Instant::now();
    let mut parties = Vec::new();
    for i in 0..spec.parties {
        let Some(host) = topo.host(&host_name(i)) else {
            out.error = Some("no host".into());
            return out;
        };
        let mut cmd = host.ns.command(python);
        cmd.arg(&script)
            .args(spec.workload.args())
            .arg(format!("-M{}", spec.parties))
            .arg(format!("-I{i}"));
        if ssl {
            cmd.arg("--ssl");
        }
        for a in &addrs {
            cmd.arg("-P").arg(format!("{a}:{port}"));
        }
        cmd.current_dir(dir.path());
        match Party::spawn(cmd) {
            Ok(p) => parties.push(p),
            Err(e) => {
                out.error = Some(format!("spawn: {e}"));
                let _ = wait_all(parties, Instant::now());
                return out;
            }
        }
    }
    match wait_all(parties, start + timeout) {
        Ok(logs) => {
            out.wall = Some(start.elapsed());
            if ssl && !logs.iter().all(|l| l.contains("connected via SSL")) {
                out.error = Some("--ssl run without TLS links".into());
                return out;
            }
            fold_logs(&logs, &mut out);
        }
        Err(e) => out.error = Some(e),
    }
    out
}

/// The files MPyC's `--ssl` reads from `.config/` (mpyc/runtime.py): one CA, and per party
/// a certificate for the host name `MPyC party {i}`, which a dialer checks.
fn write_tls_config(dir: &Path, parties: usize) -> Result<(), String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let config = dir.join(".config");
    std::fs::create_dir_all(&config).map_err(|x| e(&x))?;
    let ca_key = KeyPair::generate().map_err(|x| e(&x))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(|x| e(&x))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "mpc-did e3 MPyC CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(|x| e(&x))?;
    std::fs::write(config.join("mpyc_ca.crt"), ca_cert.pem()).map_err(|x| e(&x))?;
    let issuer = Issuer::new(ca, ca_key);
    for i in 0..parties {
        let name = format!("MPyC party {i}");
        let key = KeyPair::generate().map_err(|x| e(&x))?;
        let mut params = CertificateParams::new(vec![name.clone()]).map_err(|x| e(&x))?;
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).map_err(|x| e(&x))?;
        std::fs::write(config.join(format!("party_{i}.crt")), cert.pem()).map_err(|x| e(&x))?;
        std::fs::write(config.join(format!("party_{i}.key")), key.serialize_pem())
            .map_err(|x| e(&x))?;
    }
    Ok(())
}

/// A full mesh of userspace WireGuard interfaces, one per host; removed on drop.
pub(crate) struct WgMesh {
    procs: Vec<Child>,
    ifaces: Vec<String>,
    /// The namespace and interface of each delay-line exemption, removed on drop.
    exempt: Vec<(mpc_did_e3::Netns, String)>,
    n: usize,
    setup: Duration,
}

/// WireGuard's UDP port on every host.
const WG_PORT: u16 = 51_820;

impl WgMesh {
    fn tunnel_addr(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 0, u8::try_from(i + 1).unwrap_or(254))
    }

    fn tunnel_addrs(&self) -> Vec<Ipv4Addr> {
        (0..self.n).map(Self::tunnel_addr).collect()
    }

    fn up(topo: &Topology, n: usize) -> Result<Self, String> {
        let start = Instant::now();
        let addrs = host_addrs(topo, n)?;
        let keydir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut mesh = Self {
            procs: Vec::new(),
            ifaces: Vec::new(),
            exempt: Vec::new(),
            n,
            setup: Duration::ZERO,
        };
        // 1. Keys: what each user makes once and sends the others (the public half).
        let mut publics = Vec::new();
        for i in 0..n {
            let private = run_out(Command::new("wg").arg("genkey"), None)?;
            let public = run_out(Command::new("wg").arg("pubkey"), Some(&private))?;
            let path = keydir.path().join(format!("h{i}.key"));
            std::fs::write(&path, format!("{private}\n")).map_err(|e| e.to_string())?;
            publics.push((path, public));
        }
        // 2. Interfaces: names are global (UAPI sockets in /var/run/wireguard), so unique.
        for i in 0..n {
            let host = topo.host(&host_name(i)).ok_or("no host")?;
            let iface = format!("e3w{}x{i}", std::process::id() % 1_000_000);
            let child = host
                .ns
                .command("wireguard-go")
                .arg("-f")
                .arg(&iface)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("wireguard-go: {e}"))?;
            mesh.procs.push(child);
            mesh.ifaces.push(iface.clone());
            let sock = PathBuf::from(format!("/var/run/wireguard/{iface}.sock"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !sock.exists() {
                if Instant::now() > deadline || interrupted() {
                    return Err(format!("{iface}: wireguard-go did not start"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // 3. Configuration: own key and port, then every other host as a static peer.
            let mut wg = host.ns.command("wg");
            wg.arg("set")
                .arg(&iface)
                .arg("private-key")
                .arg(&publics[i].0)
                .arg("listen-port")
                .arg(WG_PORT.to_string());
            for (j, (_, public)) in publics.iter().enumerate() {
                if j != i {
                    wg.arg("peer")
                        .arg(public)
                        .arg("allowed-ips")
                        .arg(format!("{}/32", Self::tunnel_addr(j)))
                        .arg("endpoint")
                        .arg(format!("{}:{WG_PORT}", addrs[j]));
                }
            }
            run_out(&mut wg, None)?;
            let me = format!("{}/24", Self::tunnel_addr(i));
            host.ns
                .exec(&["ip", "address", "add", &me, "dev", &iface])
                .map_err(|e| e.to_string())?;
            host.ns
                .exec(&["ip", "link", "set", &iface, "up"])
                .map_err(|e| e.to_string())?;
            // The delay line queues every non-loopback packet; the tunnel's inner packets
            // would pay the access delay a second time on top of their UDP carriers.
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                host.ns
                    .exec(&["iptables", "-I", chain, dir, &iface, "-j", "ACCEPT"])
                    .map_err(|e| e.to_string())?;
            }
            mesh.exempt.push((host.ns.clone(), iface.clone()));
        }
        mesh.setup = start.elapsed();
        Ok(mesh)
    }
}

impl Drop for WgMesh {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        for iface in &self.ifaces {
            let _ = std::fs::remove_file(format!("/var/run/wireguard/{iface}.sock"));
        }
        for (ns, iface) in &self.exempt {
            for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
                let _ = ns.exec(&["iptables", "-D", chain, dir, iface, "-j", "ACCEPT"]);
            }
        }
    }
}

fn run_out(cmd: &mut Command, stdin: Option<&str>) -> Result<String, String> {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A TCP connection from host `i`'s namespace to host `j`'s: (`i`'s end, `j`'s end).
fn cross_pair(topo: &Topology, i: usize, j: usize) -> Result<(TcpStream, TcpStream), String> {
    let hi = topo.host(&host_name(i)).ok_or("no host")?;
    let hj = topo.host(&host_name(j)).ok_or("no host")?;
    let aj = hj.addr;
    let listener = hj
        .ns
        .run(move || TcpListener::bind((aj, 0)))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let to = listener.local_addr().map_err(|e| e.to_string())?;
    let x = hi
        .ns
        .run(move || TcpStream::connect(to))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (y, _) = listener.accept().map_err(|e| e.to_string())?;
    Ok((x, y))
}

fn tokio_stream(s: TcpStream) -> Result<tokio::net::TcpStream, String> {
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    tokio::net::TcpStream::from_std(s).map_err(|e| e.to_string())
}

/// Every party's MPyC behind its own loopback proxy on `transports[i]`; their outputs.
async fn run_parties<T: Transport>(
    transports: &[Arc<T>],
    python: &Path,
    script: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<Vec<String>, String> {
    let n = transports.len();
    let mut runs = Vec::new();
    for (i, transport) in transports.iter().enumerate() {
        let transport = Arc::clone(transport);
        let (python, script, args) = (python.to_owned(), script.to_owned(), args.to_vec());
        runs.push(tokio::spawn(async move {
            run_one(i, n, transport, &python, &script, &args, timeout).await
        }));
    }
    let mut logs = Vec::new();
    let mut first_err = None;
    for r in runs {
        match r.await {
            Ok(Ok(log)) => logs.push(log),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("party task: {e}"));
            }
        }
    }
    match first_err {
        Some(_) if interrupted() => Err("interrupted".into()),
        Some(e) => Err(e),
        None => Ok(logs),
    }
}

/// Party `i` of `n`: its MPyC behind its own loopback proxy on `transport`, stopped on an
/// interrupt or after `timeout`; its output.
pub(crate) async fn run_one<T: Transport>(
    i: usize,
    n: usize,
    transport: Arc<T>,
    python: &Path,
    script: &Path,
    args: &[String],
    timeout: Duration,
) -> Result<String, String> {
    let parties = u16::try_from(n).map_err(|e| e.to_string())?;
    let me = PartyId::try_from(i).map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut argv = vec![python.as_os_str().to_owned(), script.as_os_str().to_owned()];
    argv.extend(args.iter().map(Into::into));
    let proxy = Proxy::bind(ProxyConfig::new(parties, me))
        .await
        .map_err(|e| format!("party {i} proxy: {e}"))?;
    let program = Program {
        argv,
        output: Output::Capture,
        grace: Duration::from_secs(3),
    };
    let stop = async move {
        loop {
            if interrupted() || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let r = run_program(proxy, transport, program, stop)
        .await
        .map_err(|e| format!("party {i}: {e}"))?;
    if interrupted() {
        return Err("interrupted".into());
    }
    if !r.status.success() {
        return Err(format!("party {i} exited with {}", r.status));
    }
    Ok(format!("{}{}", r.stdout, r.stderr))
}

/// did:key identities for `n` parties — (DID, its keys, a resolver knowing all of them) —
/// resolved in memory.
fn identities(n: usize) -> Result<Vec<(String, SecretStore, StaticResolver)>, String> {
    let resolver = StaticResolver::new();
    let mut out = Vec::new();
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[0] = u8::try_from(i + 1).map_err(|e| e.to_string())?;
        seed[1] = 0xe3;
        let mut secrets = SecretStore::new();
        let did = secrets.insert_did_key(&ed25519_dalek::SigningKey::from_bytes(&seed));
        resolver.insert(mpc_did_resolver::key::resolve(&did).map_err(|e| e.to_string())?);
        out.push((did, secrets, resolver.clone()));
    }
    Ok(out)
}

/// Per-message DIDComm between the namespaces: the same direct TCP path per pair as
/// `session-direct`, every MPyC message authcrypt-packed (`didcomm_transport`).
fn didcomm_direct(spec: &RunSpec, topo: &Topology, python: &Path, timeout: Duration) -> Outcome {
    let mut out = Outcome::default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error = Some(format!("runtime: {e}"));
            return out;
        }
    };
    let n = spec.parties;
    let script = spec.workload.script_in(&examples_dir());
    let args = spec.workload.args();
    let result: Result<(), String> = rt.block_on(async {
        let setup_start = Instant::now();
        let ids = identities(n)?;
        let mut links: Vec<Vec<(PartyId, String, tokio::net::TcpStream)>> =
            (0..n).map(|_| Vec::new()).collect();
        for i in 0..n {
            for j in i + 1..n {
                let (x, y) = cross_pair(topo, i, j)?;
                let pi = PartyId::try_from(i).map_err(|e| e.to_string())?;
                let pj = PartyId::try_from(j).map_err(|e| e.to_string())?;
                links[i].push((pj, ids[j].0.clone(), tokio_stream(x)?));
                links[j].push((pi, ids[i].0.clone(), tokio_stream(y)?));
            }
        }
        let transports = links
            .into_iter()
            .zip(ids)
            .enumerate()
            .map(|(i, (l, (did, secrets, resolver)))| {
                let me = PartyId::try_from(i).map_err(|e| e.to_string())?;
                Ok(Arc::new(DidcommTransport::direct(
                    me, &did, secrets, resolver, l,
                )))
            })
            .collect::<Result<Vec<_>, String>>()?;
        out.setup = Some(setup_start.elapsed());
        let start = Instant::now();
        let logs = run_parties(&transports, python, &script, &args, timeout).await?;
        out.wall = Some(start.elapsed());
        fold_logs(&logs, &mut out);
        Ok(())
    });
    if let Err(e) = result {
        out.error = Some(e);
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    out
}

/// mpc-did's data plane between the namespaces: a Noise session per pair over one TCP
/// connection from host i to host j; each party's MPyC and proxy on this machine's
/// loopback, as for a user (spec/e3.md §4).
fn session_direct(spec: &RunSpec, topo: &Topology, python: &Path, timeout: Duration) -> Outcome {
    let mut out = Outcome::default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out.error = Some(format!("runtime: {e}"));
            return out;
        }
    };
    let n = spec.parties;
    let script = spec.workload.script_in(&examples_dir());
    let args = spec.workload.args();
    let result: Result<(), String> = rt.block_on(async {
        let setup_start = Instant::now();
        let mut maps: Vec<BTreeMap<PartyId, SessionHandle>> =
            (0..n).map(|_| BTreeMap::new()).collect();
        // Every pair at once, as the parties of a real run set up their sessions at once
        // (spec/e3.md §3): the TCP connections (a blocking connect in a namespace each),
        // then the Noise handshakes.
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect();
        let conns: Vec<Result<(TcpStream, TcpStream), String>> = std::thread::scope(|s| {
            let threads: Vec<_> = pairs
                .iter()
                .map(|&(i, j)| s.spawn(move || cross_pair(topo, i, j)))
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err("connect thread panicked".into()))
                })
                .collect()
        });
        let mut handshakes = tokio::task::JoinSet::new();
        for (&(i, j), conn) in pairs.iter().zip(conns) {
            let (x, y) = conn?;
            let (x, y) = (tokio_stream(x)?, tokio_stream(y)?);
            handshakes.spawn(async move {
                let r = local::session_pair_on(
                    &format!("did:example:e3-party{i}"),
                    &format!("did:example:e3-party{j}"),
                    DriverConfig::default(),
                    x,
                    y,
                    |t| Box::new(t),
                )
                .await;
                (i, j, r)
            });
        }
        while let Some(done) = handshakes.join_next().await {
            let (i, j, r) = done.map_err(|e| format!("session set-up task: {e}"))?;
            let (hi, hj) = r.map_err(|e| format!("session {i}–{j}: {e}"))?;
            let pj = PartyId::try_from(j).map_err(|e| e.to_string())?;
            let pi = PartyId::try_from(i).map_err(|e| e.to_string())?;
            maps[i].insert(pj, hi);
            maps[j].insert(pi, hj);
        }
        out.setup = Some(setup_start.elapsed());
        let transports: Vec<Arc<PartyTransport>> = maps
            .into_iter()
            .enumerate()
            .map(|(i, sessions)| {
                PartyId::try_from(i).map(|me| Arc::new(PartyTransport::new(me, sessions)))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        let start = Instant::now();
        let logs = run_parties(&transports, python, &script, &args, timeout).await;
        for t in &transports {
            t.close_all(CLOSE_DONE, "done").await;
        }
        let logs = logs?;
        out.wall = Some(start.elapsed());
        fold_logs(&logs, &mut out);
        Ok(())
    });
    if let Err(e) = result {
        out.error = Some(e);
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    out
}
