//! A real mediator on loopback and the parties registered at it; fresh did:key identities;
//! a real `redis-server` on a free loopback port; the mediator with STUN and relay as the
//! network-namespace NAT tests run it.
//!
//! ```no_run
//! # async fn demo() {
//! let dir = tempfile::tempdir().unwrap();
//! let m = mpc_did_testkit::mediator::loopback_mediator(dir.path()).await;
//! let (alice, _) = mpc_did_testkit::mediator::registered_agent(&m.public_url).await;
//! let (bob, _) = mpc_did_testkit::mediator::registered_agent(&m.public_url).await;
//! alice.learn_service(bob.did(), bob.own_service()).await.unwrap();
//! # }
//! ```

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_agent::Agent;
use mpc_did_didcomm::SecretStore;
pub use mpc_did_mediator::MediatorHandle;
use mpc_did_mediator::{Config, Mediator};
use mpc_did_resolver::UniversalResolver;

/// A `redis-server` child with AOF persistence and `appendfsync always` (the durability
/// setting spec/mediator.md §5 requires), killed on drop.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:PORT`
    pub url: String,
    port: u16,
    dir: TempDir,
}

/// A directory removed on drop (kept dependency-free on purpose).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl RedisServer {
    /// Starts `redis-server` (from `$PATH`) and waits until it accepts connections.
    ///
    /// # Errors
    /// `redis-server` is missing or does not come up within 10 s.
    pub fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!(
            "mpc-did-redis-{}-{port}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir)?;
        let dir = TempDir(dir);
        let child = spawn_redis(port, &dir.0)?;
        let mut server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            port,
            dir,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same port and
    /// data directory; with `appendfsync always` everything acknowledged survives.
    ///
    /// # Errors
    /// The new server does not come up within 10 s.
    pub fn restart(&mut self) -> std::io::Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_redis(self.port, &self.dir.0)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(std::io::Error::other("redis-server did not start"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path) -> std::io::Result<Child> {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh did:key party without a wallet: its DID, its secrets (the Ed25519 key under
/// the authentication kid, the derived X25519 key under the keyAgreement kid), and the
/// Ed25519 key itself (a relay identity answers the relay's challenge with it).
#[derive(Clone, Debug)]
pub struct Identity {
    /// The `did:key:z6Mk…` DID.
    pub did: String,
    /// The DID's secrets, as a [`MediatorClient`] takes them.
    pub secrets: SecretStore,
    /// The Ed25519 key the DID is made of.
    pub signing: SigningKey,
}

impl Identity {
    /// A new random did:key identity.
    #[must_use]
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        Self::from_seed(seed)
    }

    /// The did:key identity of the Ed25519 `seed` (deterministic: vectors, repeatable
    /// tests).
    #[must_use]
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&seed);
        let mut secrets = SecretStore::new();
        let did = secrets.insert_did_key(&signing);
        Self {
            did,
            secrets,
            signing,
        }
    }
}

/// A fresh did:key identity (Ed25519, X25519 derived) and its secrets, for tests and
/// benchmarks that need parties without a wallet.
#[must_use]
pub fn ephemeral_identity() -> (String, SecretStore) {
    let id = Identity::generate();
    (id.did, id.secrets)
}

/// The configuration of a mediator on `127.0.0.1`, port chosen by the OS, storing in `data`
/// (sled); callers add services (`Mediator::builder(loopback_config(dir)).service(relay)`).
#[must_use]
pub fn loopback_config(data: &Path) -> Config {
    Config {
        listen: SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)),
        data: data.to_path_buf(),
        ..Config::default()
    }
}

/// A mediator on loopback with the default configuration and no extra service (no STUN,
/// no relay), storing in `data`.
///
/// # Panics
/// The mediator does not start (a test set-up failure).
#[allow(clippy::expect_used)]
pub async fn loopback_mediator(data: &Path) -> MediatorHandle {
    Mediator::builder(loopback_config(data))
        .start()
        .await
        .expect("loopback mediator starts")
}

/// As [`loopback_mediator`], with `configure` applied to the configuration first (a test's
/// own limits).
///
/// # Panics
/// The mediator does not start (a test set-up failure).
#[allow(clippy::expect_used)]
pub async fn loopback_mediator_with(
    data: &Path,
    configure: impl FnOnce(&mut Config),
) -> MediatorHandle {
    let mut config = loopback_config(data);
    configure(&mut config);
    Mediator::builder(config)
        .start()
        .await
        .expect("loopback mediator starts")
}

/// A [`MediatorClient`] for `id` at the mediator whose base URL is `url`, not registered
/// (resolves did:key and did:web with the real resolver).
///
/// # Panics
/// The mediator's invitation cannot be fetched or the client cannot be made.
#[allow(clippy::expect_used)]
pub async fn client(url: &str, id: Identity) -> MediatorClient {
    let info = MediatorInfo::discover(url)
        .await
        .expect("mediator invitation");
    let resolver = UniversalResolver::new().expect("resolver");
    MediatorClient::new(info, &id.did, id.secrets, resolver).expect("mediator client")
}

/// As [`client`], registered at the mediator (Coordinate Mediation 2.0, spec/mediator.md).
///
/// # Panics
/// As [`client`], or the mediator refuses the registration.
#[allow(clippy::expect_used)]
pub async fn registered_client(url: &str, id: Identity) -> MediatorClient {
    let c = client(url, id).await;
    c.register().await.expect("mediation granted");
    c
}

/// The next transition of an agent's live connection ([`Agent::live_events`]).
///
/// # Panics
/// None comes within `limit`, or the agent is gone (a test failure).
#[allow(clippy::expect_used)]
pub async fn next_live_event(
    events: &mut tokio::sync::broadcast::Receiver<mpc_did_agent::LiveEvent>,
    limit: Duration,
) -> mpc_did_agent::LiveEvent {
    tokio::time::timeout(limit, events.recv())
        .await
        .expect("a live event in time")
        .expect("the agent is running")
}

/// A fresh party registered at the mediator `url`, its [`Agent`] started (live delivery
/// running), and its Ed25519 key (for a relay identity).
///
/// # Panics
/// As [`registered_client`], or the agent does not start.
#[allow(clippy::expect_used)]
pub async fn registered_agent(url: &str) -> (Agent, SigningKey) {
    let id = Identity::generate();
    let signing = id.signing.clone();
    let c = registered_client(url, id).await;
    (Agent::start(c).await.expect("agent starts"), signing)
}

/// A mediator as the NAT tests run it in an emulated public network (`e3`'s public
/// namespace): HTTP/WebSocket on `addr:8080` (sled in `data`), the STUN service on
/// `addr:3478` with the alternate `alt:3479` (RFC 5780 behaviour discovery), and the relay
/// on `/relay`. Returns the running mediator and its relay's handle (for metrics).
///
/// # Panics
/// A port cannot be bound or the mediator does not start (test setup failures).
#[allow(clippy::expect_used)]
pub async fn start_public_mediator(
    addr: std::net::Ipv4Addr,
    alt: std::net::Ipv4Addr,
    data: PathBuf,
) -> (
    mpc_did_mediator::MediatorHandle,
    mpc_did_mediator::services::relay::RelayServiceHandle,
) {
    use std::net::{SocketAddr, SocketAddrV4};

    use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
    use mpc_did_mediator::services::stun::{StunServerConfig, StunService};

    let mut cfg = StunServerConfig::new(SocketAddr::V4(SocketAddrV4::new(addr, 3478)));
    cfg.alternate = Some(SocketAddr::V4(SocketAddrV4::new(alt, 3479)));
    let stun = StunService::bind(cfg).await.expect("STUN ports");
    let relay = RelayService::bind(RelayServiceConfig::default())
        .await
        .expect("relay");
    let relay_h = relay.handle();
    let config = mpc_did_mediator::Config {
        listen: SocketAddr::V4(SocketAddrV4::new(addr, 8080)),
        data,
        ..mpc_did_mediator::Config::default()
    };
    let m = mpc_did_mediator::Mediator::builder(config)
        .service(stun)
        .service(relay)
        .start()
        .await
        .expect("mediator start");
    (m, relay_h)
}

/// [`start_public_mediator`] on the calling thread — one that entered the public namespace —
/// with its own two-worker runtime: sends the mediator's DID on `up` once it serves, runs
/// until `stop` fires (or its sender is dropped), shuts down, and returns the relay's final
/// metrics.
///
/// # Panics
/// As [`start_public_mediator`], or when the runtime cannot be built.
#[allow(clippy::expect_used)]
pub fn serve_public_mediator(
    addr: std::net::Ipv4Addr,
    alt: std::net::Ipv4Addr,
    data: PathBuf,
    up: std::sync::mpsc::Sender<String>,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<mpc_did_rendezvous::relay_server::RelayMetrics> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let (m, relay) = start_public_mediator(addr, alt, data).await;
        let _ = up.send(m.did.clone());
        let _ = stop.await;
        let metrics = relay.metrics();
        m.shutdown().await;
        metrics
    })
}

/// A round-robin TCP proxy on a free loopback port, as an operator's load balancer in front
/// of several mediator instances: bytes are copied both ways unchanged, and connection *n*
/// of each kind goes to backend *n* mod the number of backends. Two kinds, told apart by a
/// peek at the first request line: relay upgrades (`GET /relay`) and everything else — so
/// consecutive relay clients always land on different instances, whatever other requests
/// came between (a test of the relay mesh must not pass by luck). Blocking threads, so it
/// works from any test (with or without a runtime); stopped on drop.
pub struct RoundRobinProxy {
    /// The address clients connect to.
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl RoundRobinProxy {
    /// Starts the proxy in front of `backends`.
    ///
    /// # Errors
    /// The listening socket cannot be bound.
    pub fn start(backends: Vec<std::net::SocketAddr>) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<std::net::TcpStream>>> = Arc::default();
        let (stop2, conns2) = (stop.clone(), conns.clone());
        std::thread::spawn(move || {
            // Next backend for relay upgrades and for everything else.
            let mut next = [0usize; 2];
            while !stop2.load(Ordering::Acquire) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
                let mut head = [0u8; 16];
                let seen = client.peek(&mut head).unwrap_or(0);
                let _ = client.set_read_timeout(None);
                let kind = usize::from(head[..seen].starts_with(b"GET /relay"));
                let backend = backends[next[kind] % backends.len()];
                next[kind] += 1;
                let Ok(server) = std::net::TcpStream::connect(backend) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let pairs = (
                    client.try_clone(),
                    server.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                );
                let (Ok(c_rd), Ok(s_wr), Ok(s_rd), Ok(c_wr)) = pairs else {
                    continue;
                };
                if let Ok(mut list) = conns2.lock() {
                    list.push(client);
                    list.push(server);
                }
                std::thread::spawn(move || copy_then_shutdown(c_rd, s_wr));
                std::thread::spawn(move || copy_then_shutdown(s_rd, c_wr));
            }
        });
        Ok(Self { addr, stop, conns })
    }
}

fn copy_then_shutdown(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for RoundRobinProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Ok(list) = self.conns.lock() {
            for c in list.iter() {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
