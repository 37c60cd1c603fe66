//! Issue 18 item 2 end to end: two real `mpc-did-mediator` instances share one real
//! `redis-server` and form a relay mesh (spec/rendezvous.md §4.7); a round-robin TCP proxy
//! in front of them is the mediator's one public address (`--public-url`), as behind a
//! load balancer. Three wallets register, run the lobby and a 3-party **relay-only** MPC
//! with real MPyC through it: every DIDComm request, live WebSocket and relay connection
//! lands on whichever instance the proxy picks, so relay clients of one MPC sit on
//! different instances and their packets cross the mesh.
//!
//! Needs `redis-server` and MPyC (`MPC_DID_PYTHON`); without them the test is skipped with
//! a message, unless `MPC_DID_REQUIRE_INTEROP=1` (CI, test.sh), where it fails.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::Duration;

mod common;

use common::{cmd, command, form_lobby, mediator_bin, ok, wait_bounded};
use mpc_did_proxy::launch::find_python;
use mpc_did_testkit::mediator::{RedisServer, RoundRobinProxy};

fn python() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let found = find_python(&[venv], &["numpy"]).unwrap();
    if found.is_none() {
        common::skipped("set MPC_DID_PYTHON to a Python with mpyc (./test.sh does)");
    }
    found
}

fn redis() -> Option<RedisServer> {
    match RedisServer::start() {
        Ok(r) => Some(r),
        Err(e) if std::env::var("MPC_DID_REQUIRE_INTEROP").as_deref() != Ok("1") => {
            common::skipped(&format!("redis-server is not available ({e})"));
            None
        }
        Err(e) => panic!("redis-server is required (MPC_DID_REQUIRE_INTEROP=1): {e}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A mediator instance in the mesh, killed on drop.
struct Instance {
    child: Child,
    invitation_url: String,
    relay_mesh: String,
    /// The operator listener (`/metrics/relay`; not on the public port).
    admin: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn instance(dir: &Path, port: u16, redis: &str, public: &str, key: &Path) -> Instance {
    let mut child = command(mediator_bin())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--log", "warn"])
        .arg("--data")
        .arg(dir.join("data"))
        .args(["--store", redis, "--public-url", public])
        .args([
            "--relay-mesh-listen",
            "127.0.0.1:0",
            "--relay-mesh-key-file",
        ])
        .arg(key)
        // Every relay client comes from the proxy's address.
        .args(["--relay-max-per-ip", "256"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad startup line {line:?}: {e}"));
    Instance {
        child,
        invitation_url: v["invitation_url"].as_str().unwrap().to_owned(),
        relay_mesh: v["relay_mesh"].as_str().unwrap().to_owned(),
        admin: v["admin"].as_str().unwrap().to_owned(),
    }
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// spec/rendezvous.md §4.7 (and spec/lobby.md §1 for the lobby): the whole user story
/// through two instances behind one round-robin address, sessions forced onto the relay.
#[test]
fn relay_only_mpc_through_two_instances_behind_round_robin() {
    let Some(python) = python() else { return };
    let Some(redis) = redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mesh.key");
    std::fs::write(&key, format!("{}\n", "c3".repeat(32))).unwrap();
    let ports = [free_port(), free_port()];
    let proxy = RoundRobinProxy::start(
        ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
            .collect(),
    )
    .unwrap();
    let public = format!("http://{}", proxy.addr);
    let instances: Vec<Instance> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let d = dir.path().join(format!("m{i}"));
            std::fs::create_dir_all(&d).unwrap();
            instance(&d, *p, &redis.url, &public, &key)
        })
        .collect();
    assert_ne!(instances[0].relay_mesh, instances[1].relay_mesh);
    let invitation = instances[0].invitation_url.clone();
    assert!(invitation.starts_with(&public), "{invitation}");

    // Three wallets registered through the proxy (their requests alternate instances).
    let homes: Vec<tempfile::TempDir> = ["p0", "p1", "p2"]
        .iter()
        .map(|name| {
            let h = tempfile::tempdir().unwrap();
            mpc_did_wallet::Wallet::open(h.path())
                .unwrap()
                .create_identity(name, mpc_did_wallet::Method::Key)
                .unwrap();
            ok(h.path(), &["mediator", "register", &invitation]);
            h
        })
        .collect();

    let prog = example("secretsanta.py");
    let p = prog.to_str().unwrap();
    let paths: Vec<&Path> = homes.iter().map(tempfile::TempDir::path).collect();
    let sid = form_lobby(&paths, &prog, &["--people", "3", "4"]).sid;

    let runs: Vec<Child> = (0..3)
        .map(|i| {
            cmd(
                homes[i].path(),
                &[
                    "run",
                    "--session",
                    &sid,
                    "--listen",
                    "127.0.0.1:0",
                    "--connect-timeout",
                    "60",
                    "--resume-timeout",
                    "10",
                    "--relay-only",
                    "--",
                    python.to_str().unwrap(),
                    p,
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| wait_bounded(c, Duration::from_secs(180)))
        .collect();
    let mut digests = Vec::new();
    for o in &outs {
        let (so, se) = (
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
        );
        assert!(o.status.success(), "run failed: {so}\n{se}");
        assert!(so.lines().any(|l| l == "valid: True"), "{so}");
        assert!(
            se.lines()
                .filter(|l| l.contains("secure session with party"))
                .all(|l| l.contains("relay")),
            "every session on the relay: {se}"
        );
        digests.push(
            so.lines()
                .find_map(|l| l.strip_prefix("result-digest: "))
                .unwrap()
                .to_owned(),
        );
    }
    assert!(digests.iter().all(|d| *d == digests[0]), "parties disagree");
    // Three relay clients, alternating over two instances (the proxy spreads relay upgrades
    // evenly): the sessions of one party with the others crossed the mesh.
    let crossed: u64 = instances
        .iter()
        .map(|i| relay_metric(&i.admin, "mesh_in_packets_total"))
        .sum();
    assert!(crossed > 0, "no packet crossed the mesh");
    drop(instances);
}

/// One counter of an instance's `/metrics/relay` on its operator listener `admin`.
fn relay_metric(admin: &str, name: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics/relay HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("mpcdid_relay_{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}
