//! Fault suite, path faults (issue 13): a party's direct paths dropped by iptables for 5 s in
//! the middle of a real 3-party `mpc-did run`. The sessions must carry on — resumed on the
//! path once it passes again, or on the relay (spec/session.md §7) — and every party must
//! print the same valid result; never a hang.
//!
//! Runs in a network namespace of its own (root; fails under `MPC_DID_REQUIRE_NETNS=1`
//! when it cannot, prints `SKIPPED` otherwise): the mediator and the three parties on its
//! loopback, each party's direct-path listener on a fixed port the rules name.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{cmd, form_lobby, registered_wallets, wait_bounded, wait_until, MediatorProc, NETNS};

/// A network namespace with only `lo` (up); deleted on drop, also when the test fails.
struct Ns(String);

impl Ns {
    fn create() -> Option<Self> {
        let root = rustix::process::geteuid().is_root();
        let tools = ["ip", "iptables"].iter().all(|t| {
            Command::new(t)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        });
        if !root || !tools {
            assert!(
                std::env::var("MPC_DID_REQUIRE_NETNS").as_deref() != Ok("1"),
                "MPC_DID_REQUIRE_NETNS=1 but root={root}, ip/iptables found={tools}"
            );
            common::skipped("needs root, iproute2 and iptables");
            return None;
        }
        let ns = Self(format!("mdp{}", std::process::id()));
        assert!(Command::new("ip")
            .args(["netns", "add", &ns.0])
            .status()
            .unwrap()
            .success());
        assert!(Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success());
        Some(ns)
    }

    /// `iptables ARGS` inside the namespace.
    fn iptables(&self, args: &[&str]) {
        let st = Command::new("ip")
            .args(["netns", "exec", &self.0, "iptables", "-w"])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "iptables {args:?}");
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The direct-path listeners of parties 0, 1, 2.
const PORTS: [u16; 3] = [47_101, 47_102, 47_103];

/// The iptables rules (`op` = `-I` to insert, `-D` to delete) dropping every TCP segment to
/// or from a party's direct-path listener: the direct paths, whoever opened them. The
/// mediator (relay, DIDComm) is on another port and keeps working.
fn rules(op: &str, port: u16) -> Vec<Vec<String>> {
    ["--dport", "--sport"]
        .iter()
        .map(|dir| {
            [
                op,
                "INPUT",
                "-p",
                "tcp",
                dir,
                &port.to_string(),
                "-j",
                "DROP",
            ]
            .map(str::to_owned)
            .to_vec()
        })
        .collect()
}

#[test]
fn direct_paths_dropped_for_five_seconds_mid_computation() {
    let Some(python) = mpc_did_testkit::python(&["numpy"]) else {
        return;
    };
    let Some(ns) = Ns::create() else { return };
    NETNS.with(|n| *n.borrow_mut() = Some(ns.0.clone()));
    let med = MediatorProc::temporary();
    let homes = registered_wallets(&med, &["p0", "p1", "p2"]);
    let paths: Vec<&Path> = homes.iter().map(tempfile::TempDir::path).collect();
    let prog = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/secretsanta.py");
    // Secret Santa for 3..24 people: long enough (several seconds) to cut the paths midway.
    let people: Vec<String> = (3..24).map(|n| n.to_string()).collect();
    let mut args = vec!["--people"];
    args.extend(people.iter().map(String::as_str));
    let sid = form_lobby(&paths, &prog, &args).sid;
    let out_dir = tempfile::tempdir().unwrap();
    let outs: Vec<PathBuf> = (0..3)
        .map(|i| out_dir.path().join(format!("party{i}.out")))
        .collect();
    let mut runs: Vec<Child> = (0..3)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", PORTS[i]);
            cmd(
                paths[i],
                &[
                    "run",
                    "--mpc",
                    &sid,
                    "--listen",
                    &listen,
                    "--no-quic",
                    "--connect-timeout",
                    "60",
                    "--resume-timeout",
                    "40",
                    "--",
                    python.to_str().unwrap(),
                    prog.to_str().unwrap(),
                ],
            )
            .stdout(std::fs::File::create(&outs[i]).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    // Mid-computation: party 2 printed its first group's result.
    let midway = wait_until(
        || std::fs::read_to_string(&outs[2]).is_ok_and(|s| s.contains("people=3 ")),
        Instant::now() + Duration::from_secs(120),
    );
    assert!(midway, "the computation never got under way");
    for port in PORTS {
        for r in rules("-I", port) {
            ns.iptables(&r.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
    std::thread::sleep(Duration::from_secs(5)); // the fault: 5 s without direct paths
                                                // Not vacuous: the computation was still under way when the paths came back.
    let running = runs
        .iter_mut()
        .map(|c| c.try_wait().unwrap().is_none())
        .filter(|&alive| alive)
        .count();
    for port in PORTS {
        for r in rules("-D", port) {
            ns.iptables(&r.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }
    assert_eq!(running, 3, "a party ended while its paths were cut");
    let results: Vec<_> = runs
        .into_iter()
        .map(|c| wait_bounded(c, Duration::from_secs(180)))
        .collect();
    NETNS.with(|n| *n.borrow_mut() = None);
    let stdouts: Vec<String> = outs
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let digest = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("result-digest: "))
            .map(str::to_owned)
    };
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.status.success(),
            "party {i} failed after its paths were cut for 5 s:\n{}\n{}",
            stdouts[i],
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(
            stdouts[i].lines().any(|l| l == "valid: True"),
            "{}",
            stdouts[i]
        );
        assert_eq!(digest(&stdouts[i]), digest(&stdouts[0]), "parties disagree");
        assert!(
            digest(&stdouts[i]).is_some(),
            "no result digest: {}",
            stdouts[i]
        );
    }
    drop(med);
}
