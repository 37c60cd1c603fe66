//! The relay across instances (spec/rendezvous.md §4.7, issue 18 item 2): two real
//! `mpc-did-mediator` processes share one real `redis-server` and form a relay mesh; relay
//! clients connected to different instances — directly or through a round-robin TCP
//! proxy, as behind one hostname — reach each other with data intact, a packet to a peer
//! no instance holds is answered `PeerGone`, and a mesh link without the key is refused.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read as _, Write as _};
use std::time::Duration;

use common::MediatorProc;
use mpc_did_rendezvous::net::{RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use mpc_did_testkit::mediator::{RedisServer, RoundRobinProxy};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn identity() -> RelayIdentity {
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    RelayIdentity::did_key(SigningKey::from_bytes(&seed))
}

fn key_of(id: &RelayIdentity) -> PeerAddr {
    PeerAddr::Key(id.key.verifying_key().to_bytes())
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// `redis-server`, or `None` (test skipped) when it is missing and interop is not required.
fn redis() -> Option<RedisServer> {
    match RedisServer::start() {
        Ok(r) => Some(r),
        Err(e) if std::env::var("MPC_DID_REQUIRE_INTEROP").as_deref() != Ok("1") => {
            println!("SKIPPED: redis-server is not available ({e})");
            None
        }
        Err(e) => panic!("redis-server is required (MPC_DID_REQUIRE_INTEROP=1): {e}"),
    }
}

struct Mesh {
    _redis: RedisServer,
    _dirs: Vec<tempfile::TempDir>,
    instances: Vec<MediatorProc>,
    mesh_addrs: Vec<String>,
}

/// Two instances on one Redis, each in the mesh with `key` (a mesh listener on a free
/// loopback port, announced in Redis).
fn two_instances(redis: RedisServer) -> Mesh {
    instances(redis, 2)
}

/// `n` instances on one Redis, as [`two_instances`].
fn instances(redis: RedisServer, n: usize) -> Mesh {
    let mut mesh = Mesh {
        _redis: redis,
        _dirs: Vec::new(),
        instances: Vec::new(),
        mesh_addrs: Vec::new(),
    };
    for _ in 0..n {
        mesh.start_instance();
    }
    mesh
}

impl Mesh {
    /// Starts one more instance on the mesh's Redis.
    fn start_instance(&mut self) {
        let redis = &self._redis;
        {
            let d = tempfile::tempdir().unwrap();
            let key = d.path().join("mesh.key");
            std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
            let conf = d.path().join("mediator.toml");
            std::fs::write(
            &conf,
            format!(
                "store = \"{}\"\n[relay]\nmax_clients_per_ip = 64\n[relay.mesh]\nlisten = \"127.0.0.1:0\"\nkey_file = \"{}\"\npresence_ttl_secs = 6\n",
                redis.url,
                key.display()
            ),
        )
        .unwrap();
            let m = MediatorProc::start_with_config(&d.path().join("data"), &[], Some(&conf));
            if let Some(first) = self.instances.first() {
                assert_eq!(first.did, m.did, "one mediator, several instances");
            }
            self.mesh_addrs.push(m.relay_mesh.clone().unwrap());
            self.instances.push(m);
            self._dirs.push(d);
        }
    }
}

async fn connect(url: &str, id: &RelayIdentity, did: &str) -> RelayConnection {
    RelayConnection::connect_ws(url, id.clone(), Some(did.to_owned()))
        .await
        .unwrap()
}

/// Both directions at once, `n` bytes each way; returns what each side read.
async fn exchange(
    a: &RelayConnection,
    ia: &RelayIdentity,
    b: &RelayConnection,
    ib: &RelayIdentity,
    n: usize,
) {
    let mut sa = a.open_stream(key_of(ib)).unwrap();
    let mut sb = b.open_stream(key_of(ia)).unwrap();
    let (up, down) = (pattern(n, 1), pattern(n, 2));
    let (u2, d2) = (up.clone(), down.clone());
    let run = async {
        tokio::join!(
            async move {
                let (mut rd, mut wr) = tokio::io::split(&mut sa);
                let mut got = vec![0u8; n];
                let (w, r) = tokio::join!(wr.write_all(&u2), rd.read_exact(&mut got));
                w.unwrap();
                r.unwrap();
                got
            },
            async move {
                let (mut rd, mut wr) = tokio::io::split(&mut sb);
                let mut got = vec![0u8; n];
                let (w, r) = tokio::join!(wr.write_all(&d2), rd.read_exact(&mut got));
                w.unwrap();
                r.unwrap();
                got
            }
        )
    };
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("relay exchange across instances timed out");
    assert_eq!(Sha256::digest(&rb), Sha256::digest(&up));
    assert_eq!(Sha256::digest(&ra), Sha256::digest(&down));
}

/// A client connects, then waits until the other instance can see it in Redis (presence is
/// written asynchronously after authentication; spec §4.7).
async fn wait_present(redis_url: &str, id: &RelayIdentity) {
    let client = redis::Client::open(redis_url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let entry = format!(
        "mpcdid:relay:k:{}",
        hex::encode(id.key.verifying_key().to_bytes())
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v: Option<String> = redis::cmd("GET")
            .arg(&entry)
            .query_async(&mut con)
            .await
            .unwrap();
        if v.is_some() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One counter of `/metrics/relay` on the operator listener `addr` (spec/mediator.md §7).
async fn metric(addr: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics/relay"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("mpcdid_relay_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

// §4.7: a client on instance 1 and one on instance 2 exchange 1 MiB each way; the packets
// crossed the mesh (counted on both instances), nothing was reported unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_different_instances_exchange_data() {
    let Some(redis) = redis() else { return };
    let url = redis.url.clone();
    let mesh = two_instances(redis);
    let [m1, m2] = [&mesh.instances[0], &mesh.instances[1]];
    let (ia, ib) = (identity(), identity());
    let a = connect(&format!("ws://{}/relay", m1.addr), &ia, &m1.did).await;
    let b = connect(&format!("ws://{}/relay", m2.addr), &ib, &m2.did).await;
    wait_present(&url, &ia).await;
    wait_present(&url, &ib).await;
    exchange(&a, &ia, &b, &ib, 1 << 20).await;
    for m in [m1, m2] {
        assert!(metric(&m.admin, "mesh_out_packets_total").await > 0);
        assert!(metric(&m.admin, "mesh_in_packets_total").await > 0);
        assert_eq!(metric(&m.admin, "unknown_peer_total").await, 0);
    }
}

// §4.7 behind one hostname: three clients through a round-robin proxy land on alternating
// instances; every pair exchanges data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_clients_behind_a_round_robin_proxy() {
    let Some(redis) = redis() else { return };
    let url = redis.url.clone();
    let mesh = two_instances(redis);
    let backends = mesh
        .instances
        .iter()
        .map(|m| m.addr.parse().unwrap())
        .collect();
    let proxy = RoundRobinProxy::start(backends).unwrap();
    let did = mesh.instances[0].did.clone();
    let relay = format!("ws://{}/relay", proxy.addr);
    let ids = [identity(), identity(), identity()];
    let mut conns = Vec::new();
    for id in &ids {
        conns.push(connect(&relay, id, &did).await);
        wait_present(&url, id).await;
    }
    for (i, j) in [(0, 1), (1, 2), (0, 2)] {
        exchange(&conns[i], &ids[i], &conns[j], &ids[j], 256 << 10).await;
    }
    // Connections 0 and 2 landed on instance 1, connection 1 on instance 2: both carried.
    for m in &mesh.instances {
        assert!(metric(&m.admin, "mesh_in_packets_total").await > 0);
    }
}

// §4.7: a packet for a peer that no instance holds fails the sender's stream, as on one
// relay (`PeerGone`), and is counted as unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_peer_anywhere_is_peer_gone() {
    let Some(redis) = redis() else { return };
    let mesh = two_instances(redis);
    let m1 = &mesh.instances[0];
    let ia = identity();
    let a = connect(&format!("ws://{}/relay", m1.addr), &ia, &m1.did).await;
    let nobody = identity();
    let mut s = a.open_stream(key_of(&nobody)).unwrap();
    s.write_all(b"hello?").await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no PeerGone within 10 s");
    assert!(r.is_err(), "stream to an unknown peer must fail, got {r:?}");
    assert!(metric(&m1.admin, "unknown_peer_total").await >= 1);
}

// §4.7 link authentication: a dialer that does not know the mesh key gets no server proof;
// the listener closes the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_link_without_the_key_is_refused() {
    let Some(redis) = redis() else { return };
    let mesh = two_instances(redis);
    let addr = mesh.mesh_addrs[0].clone();
    let got = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut nonce = [0u8; 32];
        tcp.read_exact(&mut nonce).unwrap();
        // A nonce and a proof made with the wrong key.
        tcp.write_all(&[7u8; 64]).unwrap();
        let mut rest = Vec::new();
        let _ = tcp.read_to_end(&mut rest);
        rest
    })
    .await
    .unwrap();
    assert!(got.is_empty(), "the listener answered a bad proof: {got:?}");
}

/// A did:key party from `seed`: its mediator client (to register) and its relay identity.
fn party(
    seed: [u8; 32],
    info: mpc_did_agent::client::MediatorInfo,
) -> (mpc_did_agent::client::MediatorClient, RelayIdentity) {
    use mpc_did_didcomm::{Secret, SecretStore};
    use mpc_did_resolver::key;
    let signing = SigningKey::from_bytes(&seed);
    let did = key::did_from_ed25519(&signing.verifying_key().to_bytes());
    let doc = key::resolve(&did).unwrap();
    let mut secrets = SecretStore::new();
    secrets.insert(
        doc.key_agreement_methods()[0].id.clone(),
        Secret::X25519(x25519_dalek::StaticSecret::from(
            key::x25519_secret_from_ed25519_seed(&seed),
        )),
    );
    secrets.insert(
        doc.authentication_methods()[0].id.clone(),
        Secret::Ed25519(signing.clone()),
    );
    let client = mpc_did_agent::client::MediatorClient::new(
        info,
        &did,
        secrets,
        mpc_did_resolver::UniversalResolver::new().unwrap(),
    )
    .unwrap();
    (client, RelayIdentity::did_key(signing))
}

// spec/rendezvous.md §4.8 (`derper --verify-clients`): with `--relay-verify-clients` a DID
// without a mediation grant is refused (opaque AuthFailed); once it registered, the same
// key is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_clients_admits_only_granted_dids() {
    let d = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(&d.path().join("data"), &["--relay-verify-clients"]);
    let relay = format!("ws://{}/relay", m.addr);
    let info = mpc_did_agent::client::MediatorInfo::discover(&m.url())
        .await
        .unwrap();
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let (client, id) = party(seed, info);
    let refused = RelayConnection::connect_ws(&relay, id.clone(), Some(m.did.clone())).await;
    assert!(refused.is_err(), "an ungranted DID was admitted");
    assert_eq!(metric(&m.admin, "auth_failed_total").await, 1);
    client.register().await.unwrap();
    let admitted = RelayConnection::connect_ws(&relay, id, Some(m.did.clone())).await;
    assert!(
        admitted.is_ok(),
        "a granted DID was refused: {:?}",
        admitted.err()
    );
}

// spec/rendezvous.md §7.2: with `--relay-verify-clients` the grant is checked before the
// client's DID is resolved. A stranger naming a did:web on a host that hangs used to make
// the relay fetch it (and wait for the fetch timeout) only to refuse it for having no grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_clients_refuses_an_ungranted_did_web_without_fetching_it() {
    let d = tempfile::tempdir().unwrap();
    let silent = mpc_did_testkit::SilentHost::start().await;
    // Private did:web hosts allowed, so that only the grant check can keep the relay from
    // fetching this one.
    let conf = d.path().join("mediator.toml");
    std::fs::write(&conf, "allow_private_did_web = true\n").unwrap();
    let m = MediatorProc::start_with_config(
        &d.path().join("data"),
        &["--relay-verify-clients"],
        Some(&conf),
    );
    let relay = format!("ws://{}/relay", m.addr);
    let did = format!("did:web:127.0.0.1%3A{}", silent.addr.port());
    let stranger = RelayIdentity {
        key: identity().key,
        key_id: format!("{did}#key-1"),
        did,
    };
    let started = std::time::Instant::now();
    let refused = RelayConnection::connect_ws(&relay, stranger, Some(m.did.clone())).await;
    let took = started.elapsed();
    assert!(refused.is_err(), "an ungranted did:web was admitted");
    assert_eq!(
        silent.connections_before_ours().await,
        0,
        "the relay fetched an ungranted DID's document"
    );
    assert!(took < Duration::from_secs(3), "refused after {took:?}");
    assert_eq!(metric(&m.admin, "auth_failed_total").await, 1);
}

/// The instance (its mesh address) that the presence entry for `id`'s key names, if any.
async fn owner(redis_url: &str, id: &RelayIdentity) -> Option<String> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let entry = format!(
        "mpcdid:relay:k:{}",
        hex::encode(id.key.verifying_key().to_bytes())
    );
    let v: Option<String> = redis::cmd("GET")
        .arg(&entry)
        .query_async(&mut con)
        .await
        .unwrap();
    v.map(|v| v.split('|').next().unwrap_or_default().to_owned())
}

/// Waits until the presence entry for `id` names `inst`.
async fn wait_owner(redis_url: &str, id: &RelayIdentity, inst: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = owner(redis_url, id).await;
        if o.as_deref() == Some(inst) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "presence names {o:?}, not {inst}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// §4.7 presence ownership (audit 18 H2): client X re-authenticates at instance B while its
// first connection, at A, is still open (a silently dead path looks like this to A). A must
// stop routing to the stale connection (it is failed with `Replaced`, as on one relay) and
// must not take the presence entry back on its refresh: packets from senders on A and on a
// third instance C reach X's new connection promptly, and Redis names B throughout. Before
// the fix A kept queueing to the stale socket and overwrote B's entry every ttl/3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_another_instance_is_reached_there() {
    let Some(redis) = redis() else { return };
    let url = redis.url.clone();
    let mesh = instances(redis, 3);
    let relay = |i: usize| format!("ws://{}/relay", mesh.instances[i].addr);
    let did = mesh.instances[0].did.clone();
    let (ix, isa, isc) = (identity(), identity(), identity());
    let old = connect(&relay(0), &ix, &did).await;
    wait_owner(&url, &ix, &mesh.mesh_addrs[0]).await;
    let sa = connect(&relay(0), &isa, &did).await;
    let sc = connect(&relay(2), &isc, &did).await;
    // X again, at B; `old` stays open (and keeps answering pings).
    let new = connect(&relay(1), &ix, &did).await;
    wait_owner(&url, &ix, &mesh.mesh_addrs[1]).await;
    // The stale connection at A is told at once, as a local re-authentication tells it.
    tokio::time::timeout(Duration::from_secs(5), old.closed())
        .await
        .expect("the stale connection at A was not replaced");
    assert_eq!(
        old.close_reason(),
        Some(mpc_did_rendezvous::net::relay::REPLACED)
    );
    let mut from_a = new.open_stream(key_of(&isa)).unwrap();
    let mut from_c = new.open_stream(key_of(&isc)).unwrap();
    let mut to_x_a = sa.open_stream(key_of(&ix)).unwrap();
    let mut to_x_c = sc.open_stream(key_of(&ix)).unwrap();
    // 20 packets from each sender over 5 s (longer than A's refresh interval, 2 s).
    for i in 0..20u8 {
        let (ma, mc) = ([b'a', i, 0xa5], [b'c', i, 0x5a]);
        to_x_a.write_all(&ma).await.unwrap();
        to_x_c.write_all(&mc).await.unwrap();
        for (stream, want, from) in [(&mut from_a, ma, "A"), (&mut from_c, mc, "C")] {
            let mut got = [0u8; 3];
            tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut got))
                .await
                .unwrap_or_else(|_| {
                    panic!("packet {i} from the sender on {from} did not reach X's new connection within 2 s")
                })
                .unwrap();
            assert_eq!(got, want, "packet {i} from {from}: one was lost before it");
        }
        assert_eq!(
            owner(&url, &ix).await.as_deref(),
            Some(mesh.mesh_addrs[1].as_str()),
            "presence taken back from B (packet {i})"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Closing it withdrew nothing that B holds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        owner(&url, &ix).await.as_deref(),
        Some(mesh.mesh_addrs[1].as_str())
    );
}

// §4.7 listener limits (audit 18 M4): 80 strangers at another address keep reconnecting to
// B's mesh port without the key and hold each connection until the listener gives up. An
// instance started afterwards still links to B and delivers to a client there: a source
// holds at most 4 handshakes in progress, so the strangers cannot take every slot. Before,
// a slot was taken at accept and held 5 s: 64 strangers locked every instance out
// (`PeerGone` for everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_on_the_mesh_port_do_not_lock_out_instances() {
    let Some(redis) = redis() else { return };
    let url = redis.url.clone();
    let mut mesh = instances(redis, 1);
    let b = &mesh.instances[0];
    let did = b.did.clone();
    let iy = identity();
    let y = connect(&format!("ws://{}/relay", b.addr), &iy, &did).await;
    let target: std::net::SocketAddr = mesh.mesh_addrs[0].parse().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut strangers = Vec::new();
    for _ in 0..80 {
        let stop = stop.clone();
        strangers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Another host than the instances (which dial from 127.0.0.1).
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind("127.0.0.2:0".parse().unwrap())
                    .expect("loopback source 127.0.0.2");
                if let Ok(mut tcp) = sock.connect(target).await {
                    // Read the nonce, then hold until the listener gives up.
                    let mut sink = [0u8; 64];
                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.start_instance();
    let c = &mesh.instances[1];
    let iz = identity();
    let z = connect(&format!("ws://{}/relay", c.addr), &iz, &did).await;
    wait_present(&url, &iy).await;
    wait_present(&url, &iz).await;
    // Fails with PeerGone (the stream errors) when C's link to B is refused.
    exchange(&z, &iz, &y, &iy, 16 << 10).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in strangers {
        s.abort();
    }
}

// §4.7 router budget (audit 18 M3): client F on instance 1 sends packets to random keys as
// fast as it can, which costs the router a Redis lookup each; meanwhile B (instance 1)
// sends 100 packets at 20/s to C (instance 2): all arrive, in order. A sender holds at most
// a quarter of the router's queue and 100 lookups/s; before, F filled the one queue and
// most of B's packets were dropped (`Overloaded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_probing_random_peers_does_not_starve_others() {
    let Some(redis) = redis() else { return };
    let url = redis.url.clone();
    let mesh = two_instances(redis);
    let [m1, m2] = [&mesh.instances[0], &mesh.instances[1]];
    let (iff, ib, ic) = (identity(), identity(), identity());
    let f = connect(&format!("ws://{}/relay", m1.addr), &iff, &m1.did).await;
    let b = connect(&format!("ws://{}/relay", m1.addr), &ib, &m1.did).await;
    let c = connect(&format!("ws://{}/relay", m2.addr), &ic, &m2.did).await;
    wait_present(&url, &ic).await;
    let mut to_c = b.open_stream(key_of(&ic)).unwrap();
    let mut from_b = c.open_stream(key_of(&ib)).unwrap();
    // Warm the route before the flood.
    to_c.write_all(&[0xff, 0xff, 0xff]).await.unwrap();
    let mut got = [0u8; 3];
    tokio::time::timeout(Duration::from_secs(5), from_b.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut k = [0u8; 32];
                OsRng.fill_bytes(&mut k);
                if let Ok(mut s) = f.open_stream(PeerAddr::Key(k)) {
                    let _ = s.write_all(b"probe").await;
                    sent += 1;
                }
                if sent.is_multiple_of(64) {
                    tokio::task::yield_now().await;
                }
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..100u16 {
        let [hi, lo] = i.to_be_bytes();
        let want = [hi, lo, 0x3c];
        tokio::time::timeout(Duration::from_secs(3), to_c.write_all(&want))
            .await
            .unwrap_or_else(|_| panic!("B could not send packet {i} within 3 s"))
            .unwrap();
        let mut got = [0u8; 3];
        tokio::time::timeout(Duration::from_secs(3), from_b.read_exact(&mut got))
            .await
            .unwrap_or_else(|_| panic!("packet {i} from B did not reach C within 3 s"))
            .unwrap();
        assert_eq!(got, want, "packet {i}: one before it was dropped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = flood.await.unwrap();
    assert!(
        sent > 1000,
        "the flood was too weak to test anything: {sent}"
    );
}
