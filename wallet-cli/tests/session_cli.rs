//! `mpc-did session connect`, `pipe` and `session list` as a user runs them: the real
//! `mpc-did` binary twice (two wallets in temporary homes, each registered at a mediator
//! started in-process on loopback), both sides at once. spec/session.md §2 (who proposes),
//! §6 (streams), §7 (path switch and resumption).
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::thread::JoinHandle;

mod common;

use common::{bin, loopback_config, mpc_did, ok};
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Mediator, MediatorHandle};
use mpc_did_wallet::{Contact, Method, Wallet};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;

struct Party {
    home: tempfile::TempDir,
    did: String,
}

impl Party {
    fn home(&self) -> PathBuf {
        self.home.path().to_path_buf()
    }
}

struct Setup {
    m: MediatorHandle,
    _data: tempfile::TempDir,
    a: Party,
    b: Party,
}

/// A mediator on loopback (with its relay) and two wallets registered there with
/// `mpc-did mediator register`.
async fn setup() -> Setup {
    let data = tempfile::tempdir().unwrap();
    let config = loopback_config(data.path());
    // The relay's per-client rate limit (8 MiB/s by default) would only slow the 100 MiB
    // test down; its enforcement is tested in mediator/tests/rendezvous_relay.rs.
    let relay = RelayService::bind(RelayServiceConfig {
        rate_bytes_per_sec: 1 << 30,
        burst_bytes: 64 << 20,
        max_queue_bytes: 16 << 20,
        max_queue_frames: 4096,
        ..RelayServiceConfig::default()
    })
    .await
    .unwrap();
    let m = Mediator::builder(config)
        .service(relay)
        .start()
        .await
        .unwrap();
    let mut parties = Vec::new();
    for name in ["alice", "bob"] {
        let home = tempfile::tempdir().unwrap();
        let did = Wallet::open(home.path())
            .unwrap()
            .create_identity(name, Method::Key)
            .unwrap()
            .did;
        let (h, inv) = (home.path().to_path_buf(), m.invitation_url.clone());
        tokio::task::spawn_blocking(move || ok(&h, &["mediator", "register", &inv]))
            .await
            .unwrap();
        parties.push(Party { home, did });
    }
    let b = parties.pop().unwrap();
    let a = parties.pop().unwrap();
    Setup {
        m,
        _data: data,
        a,
        b,
    }
}

/// `mpc-did [--json] CMD PEER --peer-mediator URL --listen 127.0.0.1:0 EXTRA…` as a child.
fn spawn(me: &Party, peer: &Party, url: &str, cmd: &[&str], extra: &[&str]) -> Child {
    bin()
        .arg("--home")
        .arg(me.home())
        .args(cmd)
        .arg(&peer.did)
        .args([
            "--peer-mediator",
            url,
            "--listen",
            "127.0.0.1:0",
            "--timeout",
            "30",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Deterministic bytes (xorshift64*), streamed in 64 KiB chunks.
struct Gen(u64);

impl Gen {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(v.get(..chunk.len()).unwrap());
        }
    }
}

/// Write `len` deterministic bytes to the child's stdin, close it, return their SHA-256.
fn feed(child: &mut Child, seed: u64, len: u64) -> JoinHandle<[u8; 32]> {
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let mut g = Gen(seed | 1);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut left = len;
        while left > 0 {
            let n = usize::try_from(left.min(buf.len() as u64)).unwrap();
            let b = buf.get_mut(..n).unwrap();
            g.fill(b);
            h.update(&*b);
            stdin.write_all(b).unwrap();
            left -= n as u64;
        }
        drop(stdin);
        h.finalize().into()
    })
}

/// Hash everything the child writes to stdout; (SHA-256, length).
fn drain(child: &mut Child) -> JoinHandle<([u8; 32], u64)> {
    let mut out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0u64;
        loop {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            h.update(buf.get(..n).unwrap());
            total += n as u64;
        }
        (h.finalize().into(), total)
    })
}

fn stderr_of(child: &mut Child) -> JoinHandle<String> {
    let mut err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    })
}

/// Finish a child, asserting success; returns its stderr.
fn wait_ok(mut child: Child, stderr: JoinHandle<String>, what: &str) -> String {
    let status = child.wait().unwrap();
    let err = stderr.join().unwrap();
    assert!(status.success(), "{what} failed: {err}");
    err
}

/// Both sides pipe at once: `a_len` bytes a→b and `b_len` bytes b→a; each side's output
/// must hash to what the other side was fed. `extra_a` goes to a's command line.
async fn pipe_both_ways(
    m: &MediatorHandle,
    a: &Party,
    b: &Party,
    a_len: u64,
    b_len: u64,
    extra_a: &[&str],
) -> (String, String) {
    let url = m.public_url.clone();
    let mut ca = spawn(
        a,
        b,
        &url,
        &["pipe"],
        &[["--progress"].as_slice(), extra_a].concat(),
    );
    let mut cb = spawn(b, a, &url, &["pipe"], &["--progress"]);
    let (fa, fb) = (feed(&mut ca, 7, a_len), feed(&mut cb, 11, b_len));
    let (oa, ob) = (drain(&mut ca), drain(&mut cb));
    let (ea, eb) = (stderr_of(&mut ca), stderr_of(&mut cb));
    let (ea, eb) =
        tokio::task::spawn_blocking(move || (wait_ok(ca, ea, "pipe a"), wait_ok(cb, eb, "pipe b")))
            .await
            .unwrap();
    let (ha, hb) = (fa.join().unwrap(), fb.join().unwrap());
    let (oa, ob) = (oa.join().unwrap(), ob.join().unwrap());
    assert_eq!(ob, (ha, a_len), "b's output is not a's input");
    assert_eq!(oa, (hb, b_len), "a's output is not b's input");
    (ea, eb)
}

/// Both children run to the end (off the runtime's threads); their outputs.
async fn both_outputs(a: Child, b: Child) -> (Output, Output) {
    tokio::task::spawn_blocking(move || {
        (a.wait_with_output().unwrap(), b.wait_with_output().unwrap())
    })
    .await
    .unwrap()
}

fn session_log(p: &Party) -> Vec<Value> {
    let out = ok(&p.home(), &["--json", "session", "list"]);
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

// spec/session.md §2: the smaller DID proposes; both ends report the same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reports_path_setup_and_rtt_on_both_sides() {
    let s = setup().await;
    let url = s.m.public_url.clone();
    let rounds = ["--rounds", "7"];
    let ca = spawn(&s.a, &s.b, &url, &["--json", "session", "connect"], &rounds);
    let cb = spawn(&s.b, &s.a, &url, &["--json", "session", "connect"], &rounds);
    let (oa, ob) = both_outputs(ca, cb).await;
    for o in [&oa, &ob] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let va: Value = serde_json::from_slice(&oa.stdout).unwrap();
    let vb: Value = serde_json::from_slice(&ob.stdout).unwrap();
    assert_eq!(va["session_id"], vb["session_id"]);
    assert_eq!(va["peer"], s.b.did.as_str());
    assert_eq!(vb["peer"], s.a.did.as_str());
    let a_proposes = s.a.did < s.b.did;
    assert_eq!(va["role"], if a_proposes { "proposer" } else { "acceptor" });
    assert_eq!(vb["role"], if a_proposes { "acceptor" } else { "proposer" });
    for v in [&va, &vb] {
        assert_eq!(v["path"]["kind"], "direct");
        assert_eq!(v["peer_endpoint_from"], "flag");
        assert_eq!(v["rtt_ms"]["samples"], 7);
        assert!(v["rtt_ms"]["min"].as_f64().unwrap() > 0.0);
        assert!(v["rtt_ms"]["min"].as_f64().unwrap() <= v["rtt_ms"]["max"].as_f64().unwrap());
        assert!(v["setup_ms"].as_f64().unwrap() > 0.0);
    }
    // The proposer dialed, so it knows the remote address: the acceptor's listener.
    let proposer = if a_proposes { &va } else { &vb };
    assert!(proposer["path"]["remote"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    // `session list` shows the recorded session, ended normally, with its RTT.
    for (p, v) in [(&s.a, &va), (&s.b, &vb)] {
        let log = session_log(p);
        assert_eq!(log.len(), 1, "{log:?}");
        let e = &log[0];
        assert_eq!(e["session_id"], v["session_id"]);
        assert_eq!(e["command"], "connect");
        assert!(e["state"].as_str().unwrap().starts_with("closed"), "{e}");
        assert!(e["rtt_ms"].as_f64().is_some());
        assert!(e["ended"].as_u64().is_some());
    }
    let text = ok(&s.a.home(), &["session", "list"]);
    assert!(
        text.contains(&s.b.did) && text.contains("connect"),
        "{text}"
    );
    s.m.shutdown().await;
}

/// The acceptance size: 100 MiB each way is the criterion; the default test moves
/// 100 MiB one way and 8 MiB back (both directions at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_moves_100_mib_with_matching_sha256_over_a_direct_path() {
    let s = setup().await;
    let (ea, _) = pipe_both_ways(&s.m, &s.a, &s.b, 100 * MIB, 8 * MIB, &[]).await;
    assert!(ea.contains("direct TCP"), "{ea}");
    // The figure for humans (`cargo test -- --nocapture`); no speed assertion.
    eprintln!("{}", ea.lines().last().unwrap_or_default());
    assert!(
        ea.contains("done: sent 104857600 B, received 8388608 B"),
        "{ea}"
    );
    for p in [&s.a, &s.b] {
        let log = session_log(p);
        assert_eq!(log.len(), 1);
        assert_eq!(log[0]["command"], "pipe");
        assert!(log[0]["sent"].as_u64().is_some());
    }
    s.m.shutdown().await;
}

/// spec/rendezvous.md §6.3 (relay fallback): 100 MiB through the mediator's relay, SHA-256 checked on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_moves_100_mib_with_matching_sha256_over_a_forced_relay_path() {
    let s = setup().await;
    let url = s.m.public_url.clone();
    let extra = ["--progress", "--relay-only"];
    let mut ca = spawn(&s.a, &s.b, &url, &["pipe"], &extra);
    let mut cb = spawn(&s.b, &s.a, &url, &["pipe"], &extra);
    let (fa, fb) = (feed(&mut ca, 7, 100 * MIB), feed(&mut cb, 11, 8 * MIB));
    let (oa, ob) = (drain(&mut ca), drain(&mut cb));
    let (ea, eb) = (stderr_of(&mut ca), stderr_of(&mut cb));
    let (ea, eb) =
        tokio::task::spawn_blocking(move || (wait_ok(ca, ea, "pipe a"), wait_ok(cb, eb, "pipe b")))
            .await
            .unwrap();
    assert_eq!(
        ob.join().unwrap(),
        (fa.join().unwrap(), 100 * MIB),
        "b's output is not a's input"
    );
    assert_eq!(
        oa.join().unwrap(),
        (fb.join().unwrap(), 8 * MIB),
        "a's output is not b's input"
    );
    // The proposer chose the path and reports it.
    let proposer = if s.a.did < s.b.did { &ea } else { &eb };
    assert!(proposer.contains("relayed via"), "{proposer}");
    eprintln!("{}", ea.lines().last().unwrap_or_default());
    s.m.shutdown().await;
}

// spec/session.md §7: a new path mid-transfer; no byte lost or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_survives_a_forced_path_switch_in_the_middle() {
    let s = setup().await;
    // Only the proposer (the smaller DID) knows the peer's address and can redial.
    let (x, y) = if s.a.did < s.b.did {
        (&s.a, &s.b)
    } else {
        (&s.b, &s.a)
    };
    let (ex, _) = pipe_both_ways(
        &s.m,
        x,
        y,
        100 * MIB,
        8 * MIB,
        &["--switch-path-after", "41943040"],
    )
    .await;
    assert!(ex.contains("forced a path switch"), "{ex}");
    assert!(ex.contains("path switched"), "{ex}");
    s.m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_unknown_peer_endpoint_and_mismatched_commands() {
    let s = setup().await;
    // A did:key peer names no endpoint: say how to give one.
    let out = mpc_did(
        &s.a.home(),
        &["session", "connect", &s.b.did, "--timeout", "2"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peer-mediator"), "{err}");

    // One side pipes, the other measures RTT: both fail naming the other's command.
    let url = s.m.public_url.clone();
    let mut ca = spawn(&s.a, &s.b, &url, &["pipe"], &[]);
    drop(ca.stdin.take());
    let cb = spawn(&s.b, &s.a, &url, &["session", "connect"], &[]);
    let (oa, ob) = both_outputs(ca, cb).await;
    assert!(!oa.status.success() && !ob.status.success());
    let (ea, eb) = (
        String::from_utf8_lossy(&oa.stderr),
        String::from_utf8_lossy(&ob.stderr),
    );
    // Each side names the other's command, or (if the peer's CLOSE came first) reports
    // the peer's reason, which names ours.
    assert!(ea.contains("`mpc-did session connect`"), "{ea}");
    assert!(
        eb.contains("`mpc-did pipe`") || eb.contains("both sides must run the same command"),
        "{eb}"
    );

    // --relay-only against a mediator without a relay: a clear error, no silent fallback.
    let plain = Mediator::builder(loopback_config(&s._data.path().join("plain")))
        .start()
        .await
        .unwrap();
    let home = tempfile::tempdir().unwrap();
    Wallet::open(home.path())
        .unwrap()
        .create_identity("carol", Method::Key)
        .unwrap();
    let (h, inv) = (home.path().to_path_buf(), plain.invitation_url.clone());
    tokio::task::spawn_blocking(move || ok(&h, &["mediator", "register", &inv]))
        .await
        .unwrap();
    let out = mpc_did(
        home.path(),
        &[
            "session",
            "connect",
            &s.b.did,
            "--peer-mediator",
            &url,
            "--relay-only",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--relay-only") && err.contains("relay"),
        "{err}"
    );
    plain.shutdown().await;
    s.m.shutdown().await;
}

/// Without `--peer-mediator`, the peer's mediator comes from the wallet contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_finds_the_peer_mediator_in_the_wallet_contacts() {
    let s = setup().await;
    let url = s.m.public_url.clone();
    Wallet::open(s.a.home.path())
        .unwrap()
        .add_contact(&Contact {
            did: s.b.did.clone(),
            name: "bob".into(),
            mediator: Some(s.m.invitation_url.clone()),
            document: None,
        })
        .unwrap();
    let ca = bin()
        .arg("--home")
        .arg(s.a.home())
        .args([
            "--json",
            "session",
            "connect",
            &s.b.did,
            "--listen",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cb = spawn(&s.b, &s.a, &url, &["--json", "session", "connect"], &[]);
    let (oa, ob) = both_outputs(ca, cb).await;
    for o in [&oa, &ob] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let va: Value = serde_json::from_slice(&oa.stdout).unwrap();
    assert_eq!(va["peer_endpoint_from"], "contact-mediator");
    s.m.shutdown().await;
}
