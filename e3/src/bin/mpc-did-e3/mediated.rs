//! The modes that need a mediator: the real `mpc-did-mediator` binary (DIDComm, STUN with
//! an alternate address, the relay) in the topology's public namespace, and per party the
//! whole client stack inside its host's namespace — a fresh did:key registered at the
//! mediator, an `Agent`, and then:
//!
//! - `session-punched` / `session-relay`: a `Connector` (relay + QUIC with the mediator's
//!   STUN) and `mpc_did_mpc::run::establish_all`, the same call `mpc-did run` makes: each
//!   pairwise secure session negotiated over DIDComm through the mediator, on the path the
//!   connector picks — punched QUIC behind endpoint-independent NATs, the relay behind
//!   symmetric ones. The path kinds are recorded per pair (`0-1:quic`).
//! - `didcomm-mediated`: `DidcommTransport::mediated` (crates/mpc), what
//!   `mpc-did run --transport didcomm` uses: every MPyC message one authcrypt DIDComm
//!   message forwarded through the receiver's mediator.
//!
//! There is no lobby: the parties' DIDs and DIDComm services are exchanged through this
//! process, and every party binds its sessions to the same run id and DID list. One
//! mediator serves every party; a DIDComm message goes from its sender straight to the
//! receiver's mediator, so with one mediator per party the path would be the same.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_agent::Agent;
use mpc_did_connect::{
    mediator_stun, Binding, Connector, ConnectorConfig, QuicSetup, RelayIdentity, RelaySetup,
};
use mpc_did_driver::CLOSE_DONE;
use mpc_did_e3::workload::examples_dir;
use mpc_did_e3::Topology;
use mpc_did_mpc::didcomm_transport::{DidcommTransport, DATA_PREFIX};
use mpc_did_mpc::PartyTransport;
use mpc_did_proxy::PartyId;
use mpc_did_resolver::{Did, DidCommService, UniversalResolver};

use crate::matrix::{host_name, interrupted, RunSpec};
use crate::modes::{fold_logs, run_one, Mode, Outcome};

/// The mediator's HTTP port on the public address.
const HTTP_PORT: u16 = 8080;

/// The `mpc-did-mediator` binary: `MPC_DID_MEDIATOR`, else next to this binary (cargo puts
/// both in `target/<profile>/`), else on `PATH`.
pub(crate) fn mediator_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MPC_DID_MEDIATOR").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("mpc-did-mediator")))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mpc-did-mediator"))
                .find(|f| f.is_file())
        })
    };
    sibling.or_else(on_path).ok_or_else(|| {
        "`mpc-did-mediator` not found (the session-punched, session-relay and \
         didcomm-mediated modes run it): cargo build --release -p mpc-did-mediator, or set \
         MPC_DID_MEDIATOR"
            .to_owned()
    })
}

/// The real mediator binary in a topology's public namespace; killed on drop.
pub(crate) struct Mediator {
    child: Child,
    _data: tempfile::TempDir,
}

impl Mediator {
    /// Start it and wait until its HTTP port accepts connections.
    pub(crate) fn start(topo: &Topology) -> Result<Self, String> {
        let bin = mediator_bin()?;
        let data = tempfile::tempdir().map_err(|e| format!("mediator data directory: {e}"))?;
        let child = topo
            .public()
            .command(&bin)
            .arg("--listen")
            .arg(format!("{}:{HTTP_PORT}", Topology::PUBLIC_ADDR))
            .arg("--data")
            .arg(data.path())
            .arg("--stun")
            .arg(format!("{}:3478", Topology::PUBLIC_ADDR))
            .arg("--stun-alternate")
            .arg(format!("{}:3479", Topology::PUBLIC_ADDR2))
            .arg("--log")
            .arg("warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut m = Self { child, _data: data };
        let addr = SocketAddr::from((Topology::PUBLIC_ADDR, HTTP_PORT));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = topo
                .public()
                .run(move || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
                .unwrap_or(false);
            if up {
                return Ok(m);
            }
            if let Ok(Some(st)) = m.child.try_wait() {
                return Err(format!("the mediator exited at start ({st})"));
            }
            if Instant::now() > deadline || interrupted() {
                return Err("the mediator did not start within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mediator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a party tells the others before connecting: its DID and DIDComm service.
type Contact = (String, DidCommService);

/// What one party reports back.
struct PartyReport {
    /// From the first negotiation message to all sessions up (or the transport ready).
    setup: Duration,
    /// (pair, path kind) as the lower party saw it.
    paths: Vec<String>,
    started: Instant,
    ended: Instant,
    log: String,
}

/// One run of a mediator mode between the topology's hosts.
pub(crate) fn run(spec: &RunSpec, topo: &Topology, python: &Path, timeout: Duration) -> Outcome {
    let mut out = Outcome::default();
    let n = spec.parties;
    let deadline = Instant::now() + timeout;
    let run_id = format!(
        "e3-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let (to_main, from_parties) = mpsc::channel();
    let mut to_parties = Vec::new();
    let mut threads = Vec::new();
    for i in 0..n {
        let Some(host) = topo.host(&host_name(i)) else {
            out.error = Some("no host".into());
            return out;
        };
        let (tx, rx) = mpsc::channel();
        to_parties.push(tx);
        let to_main = to_main.clone();
        let (python, mode, run_id) = (python.to_owned(), spec.mode, run_id.clone());
        let script = spec.workload.script_in(&examples_dir());
        let args = spec.workload.args();
        let spawned = host.ns.spawn(move || -> Result<PartyReport, String> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            let r = rt.block_on(party(
                i, n, mode, &run_id, to_main, rx, &python, &script, &args, deadline,
            ));
            rt.shutdown_timeout(Duration::from_secs(2));
            r
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                out.error = Some(format!("party {i}: {e}"));
                return out;
            }
        }
    }
    drop(to_main);
    // Contacts: each party's DID and service once it is registered, then everyone's to all.
    let mut contacts: Vec<Option<Contact>> = vec![None; n];
    let mut missing = None;
    for _ in 0..n {
        match from_parties.recv_timeout(Duration::from_secs(60)) {
            Ok((i, c)) => contacts[i] = Some(c),
            Err(_) => {
                missing = Some("a party did not register at the mediator within 60 s");
                break;
            }
        }
    }
    if missing.is_none() {
        let all: Vec<Contact> = contacts.into_iter().flatten().collect();
        for tx in &to_parties {
            let _ = tx.send(all.clone());
        }
    }
    // Dropping the senders unblocks a party still waiting for the contacts.
    drop(to_parties);
    let mut reports = Vec::new();
    for (i, t) in threads.into_iter().enumerate() {
        match t.join() {
            Ok(Ok(Ok(r))) => reports.push(r),
            Ok(Ok(Err(e))) => {
                out.error.get_or_insert(e);
            }
            Ok(Err(e)) => {
                out.error.get_or_insert(format!("party {i}: {e}"));
            }
            Err(_) => {
                out.error.get_or_insert(format!("party {i} panicked"));
            }
        }
    }
    if let Some(m) = missing {
        out.error = Some(m.to_owned());
    }
    if out.error.is_some() {
        return out;
    }
    // Per-message DIDComm has no set-up of its own (registration is the user's one-time
    // step); the session modes' is the slowest party's negotiation of all its sessions.
    if spec.mode != Mode::DidcommMediated {
        out.setup = reports.iter().map(|r| r.setup).max();
    }
    let start = reports.iter().map(|r| r.started).min();
    let end = reports.iter().map(|r| r.ended).max();
    if let (Some(s), Some(e)) = (start, end) {
        out.wall = Some(e.saturating_duration_since(s));
    }
    out.paths = reports.iter().flat_map(|r| r.paths.clone()).collect();
    // `i-j:quic`, or `i-j:relay>quic` for a pair the upgrade moved before MPyC started.
    if spec.mode == Mode::SessionPunched && !out.paths.iter().all(|p| p.ends_with("quic")) {
        out.error = Some(format!("not all on punched QUIC: {}", out.paths.join(" ")));
        return out;
    }
    if spec.mode == Mode::SessionRelay && !out.paths.iter().all(|p| p.ends_with(":relay")) {
        out.error = Some(format!("not all on the relay: {}", out.paths.join(" ")));
        return out;
    }
    let logs: Vec<String> = reports.into_iter().map(|r| r.log).collect();
    fold_logs(&logs, &mut out);
    out
}

/// session-punched: how long after the set-up began a pair on the relay may take to be
/// upgraded to punched QUIC (the upgrade's first retry comes 1 s after it went on the relay).
const UPGRADE_WAIT: Duration = Duration::from_secs(30);

/// Party `me` of `n`, inside its host's namespace.
#[allow(clippy::too_many_arguments)]
async fn party(
    me: usize,
    n: usize,
    mode: Mode,
    run_id: &str,
    to_main: mpsc::Sender<(usize, Contact)>,
    from_main: mpsc::Receiver<Vec<Contact>>,
    python: &Path,
    script: &Path,
    args: &[String],
    deadline: Instant,
) -> Result<PartyReport, String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: &dyn std::fmt::Display| format!("party {me}: {what}: {err}")
    };
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let mut secrets = mpc_did_didcomm::SecretStore::new();
    let did = secrets.insert_did_key(&signing);
    let http = format!("http://{}:{HTTP_PORT}", Topology::PUBLIC_ADDR);
    let info = MediatorInfo::discover(&http)
        .await
        .map_err(|x| e("mediator discovery")(&x))?;
    let relay = RelaySetup {
        url: format!("ws://{}:{HTTP_PORT}/relay", Topology::PUBLIC_ADDR),
        identity: RelayIdentity::did_key(signing),
        expected_relay: Some(info.did.clone()),
    };
    let resolver = UniversalResolver::new().map_err(|x| e("resolver")(&x))?;
    let client =
        MediatorClient::new(info, &did, secrets, resolver).map_err(|x| e("mediator client")(&x))?;
    client.register().await.map_err(|x| e("registration")(&x))?;
    let agent = Agent::start(client).await.map_err(|x| e("agent")(&x))?;
    // Subscribed before anyone knows us: no data message can arrive unsubscribed.
    let data = (mode == Mode::DidcommMediated).then(|| agent.subscribe_lossless(DATA_PREFIX));
    let connector = if mode == Mode::DidcommMediated {
        None
    } else {
        let config = ConnectorConfig {
            handshake_timeout: Duration::from_secs(30),
            relay: Some(relay),
            quic: Some(QuicSetup {
                stun: mediator_stun(&agent),
                // session-punched measures punched QUIC, the path kind it names: TCP hole
                // punching (which races it, spec/rendezvous.md §6.2) sometimes won a pair
                // and the run was marked failed (`mpc-did run --no-tcp-punch`).
                tcp_punch: mode != Mode::SessionPunched,
                ..QuicSetup::default()
            }),
            ..ConnectorConfig::default()
        };
        Some(
            Connector::start(agent.clone(), config)
                .await
                .map_err(|x| e("connector")(&x))?,
        )
    };
    to_main
        .send((me, (agent.did().to_owned(), agent.own_service())))
        .map_err(|_| format!("party {me}: the matrix stopped"))?;
    let all = tokio::task::spawn_blocking(move || from_main.recv())
        .await
        .map_err(|x| e("contacts")(&x))?
        .map_err(|_| format!("party {me}: no contacts (another party failed to register)"))?;
    if all.len() != n {
        return Err(format!(
            "party {me}: {} contacts for {n} parties",
            all.len()
        ));
    }
    let mut peers = Vec::new();
    for (j, (peer, service)) in all.iter().enumerate() {
        if j != me {
            agent
                .learn_service(peer, service.clone())
                .await
                .map_err(|x| e("learning a peer's mediator")(&x))?;
            let pid = PartyId::try_from(j).map_err(|x| e("party id")(&x))?;
            peers.push((pid, peer.clone()));
        }
    }
    let me_id = PartyId::try_from(me).map_err(|x| e("party id")(&x))?;
    let setup_start = Instant::now();
    let timeout = deadline.saturating_duration_since(Instant::now());
    let (log, paths, setup, started) = match (connector, data) {
        (Some(connector), _) => {
            // As the lobby would: every session bound to the run and the DIDs in party order.
            let binding = Binding {
                mpc_session_id: run_id.to_owned(),
                roster_hash: <sha2::Sha256 as sha2::Digest>::digest(
                    all.iter()
                        .map(|(d, _)| d.as_str())
                        .collect::<Vec<_>>()
                        .join("\n"),
                )
                .into(),
            };
            let dids: Vec<(PartyId, Did)> = peers
                .iter()
                .map(|(p, d)| Did::parse(d).map(|d| (*p, d)))
                .collect::<Result<_, _>>()
                .map_err(|x| e("peer DID")(&x))?;
            let established =
                mpc_did_mpc::run::establish_all(&connector, &binding, me_id, &dids, &|_| {})
                    .await
                    .map_err(|x| e("secure sessions")(&x))?;
            let mut sessions = BTreeMap::new();
            let mut paths = Vec::new();
            for (j, _, est) in established {
                if me_id < j {
                    paths.push((j, est.path.kind()));
                }
                sessions.insert(j, est.handle);
            }
            if mode == Mode::SessionPunched {
                // A pair whose punch lost the race to the relay's head start (10 distant
                // parties on two cores) is moved to QUIC by the upgrade a moment later
                // (spec/rendezvous.md §6.4): measure this mode on the path it names, with
                // the wait counted in the set-up and the pair marked `relay>quic`
                // (spec/e3.md §3).
                for (j, kind) in &mut paths {
                    if *kind == "relay" {
                        tracing::warn!(
                            "party {me}: the session with party {j} came up on the relay; \
                             waiting up to {} s for its upgrade to punched QUIC",
                            UPGRADE_WAIT.saturating_sub(setup_start.elapsed()).as_secs()
                        );
                        let mut path = sessions[j].watch_path();
                        let upgraded = tokio::time::timeout(
                            UPGRADE_WAIT.saturating_sub(setup_start.elapsed()),
                            path.wait_for(|p| {
                                p.current.as_ref().is_some_and(|c| c.kind() == "quic")
                            }),
                        )
                        .await;
                        if matches!(upgraded, Ok(Ok(_))) {
                            *kind = "relay>quic";
                        }
                    }
                }
            }
            let setup = setup_start.elapsed();
            let paths: Vec<String> = paths
                .into_iter()
                .map(|(j, kind)| format!("{me}-{j}:{kind}"))
                .collect();
            let transport = Arc::new(PartyTransport::new(me_id, sessions));
            let started = Instant::now();
            let log = run_one(me, n, Arc::clone(&transport), python, script, args, timeout).await;
            transport.close_all(CLOSE_DONE, "done").await;
            (log?, paths, setup, started)
        }
        (None, Some(inbound)) => {
            let links = peers
                .into_iter()
                .map(|(p, d)| (p, d, run_id.to_owned()))
                .collect();
            let transport = Arc::new(DidcommTransport::mediated(
                me_id,
                agent.clone(),
                links,
                inbound,
            ));
            let setup = setup_start.elapsed();
            let started = Instant::now();
            let log = run_one(me, n, transport, python, script, args, timeout).await?;
            (log, Vec::new(), setup, started)
        }
        (None, None) => return Err(format!("party {me}: no transport")),
    };
    agent.stop();
    Ok(PartyReport {
        setup,
        paths,
        started,
        ended: Instant::now(),
        log,
    })
}
