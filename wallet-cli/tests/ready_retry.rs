//! spec/lobby.md §8 "Ready": a `ready` that fails for now is sent again until the run's
//! connect deadline. Two real mediators, one party at each: party 0's mediator is killed
//! (kill -9) while party 0 waits in its run, party 1 starts its run then — its `ready` to
//! party 0 fails — and the mediator comes back on the same address and data. Party 0 must
//! learn of party 1's attempt and both must finish the MPC; before, the lost `ready` was
//! never sent again and both waited their whole `--connect-timeout`, then failed.
//!
//! The same harness shows the roster of `mpc host` reaching a party whose mediator restarts
//! while it is sent (spec/lobby.md §1 "Roster delivery").
//!
//! The MPC test needs MPyC (`MPC_DID_PYTHON`, else the repository's `.venv`); skipped with a message
//! without one, unless `MPC_DID_REQUIRE_INTEROP=1`.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{cmd, form_lobby, ok, wait_bounded, wait_until, RestartableMediator};

/// A child's stderr, collected in the background.
struct Watch(Arc<Mutex<String>>);

impl Watch {
    fn new(mut stream: impl Read + Send + 'static) -> Self {
        let seen = Arc::new(Mutex::new(String::new()));
        let s = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self(seen)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    fn wait_for(&self, text: &str, limit: Duration) {
        let appeared = wait_until(
            || self.0.lock().unwrap().contains(text),
            Instant::now() + limit,
        );
        assert!(appeared, "{text:?} never appeared in: {}", self.text());
    }
}

fn python() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let found = mpc_did_proxy::launch::find_python(&[venv], &["numpy"]).unwrap();
    if found.is_none() {
        common::skipped("set MPC_DID_PYTHON to a Python with mpyc (./test.sh does)");
    }
    found
}

fn run(home: &Path, sid: &str, python: &Path, prog: &Path) -> Child {
    cmd(
        home,
        &[
            "run",
            "--session",
            sid,
            "--listen",
            "127.0.0.1:0",
            "--connect-timeout",
            "40",
            "--",
            python.to_str().unwrap(),
            prog.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

#[test]
fn a_ready_reaches_a_peer_whose_mediator_restarts_while_we_start() {
    let Some(python) = python() else { return };
    let mut med0 = RestartableMediator::new();
    let med1 = RestartableMediator::new();
    let (home0, did0) = med0.wallets(&["p0"]).remove(0);
    let (home1, _) = med1.wallets(&["p1"]).remove(0);
    let prog = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/secretsanta.py");
    let sid = form_lobby(&[home0.path(), home1.path()], &prog, &["--people", "3"]).sid;

    // Party 0 waits in its run; its `ready` is stored at party 1's mediator.
    let mut run0 = run(home0.path(), &sid, &python, &prog);
    let err0 = Watch::new(run0.stderr.take().unwrap());
    err0.wait_for("waiting for the other parties", Duration::from_secs(60));
    // Party 0's mediator dies; party 1 starts and cannot tell party 0 it is up.
    med0.kill9();
    let mut run1 = run(home1.path(), &sid, &python, &prog);
    let err1 = Watch::new(run1.stderr.take().unwrap());
    err1.wait_for("cannot send ready to", Duration::from_secs(60));
    // The outage lasts a few seconds more, then the mediator is back where it was.
    std::thread::sleep(Duration::from_secs(3));
    med0.start();

    let outs = [
        wait_bounded(run0, Duration::from_secs(120)),
        wait_bounded(run1, Duration::from_secs(120)),
    ];
    let errs = [err0.text(), err1.text()];
    for (i, out) in outs.iter().enumerate() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "party {i} failed:\n{stdout}\n{}",
            errs[i]
        );
        assert!(stdout.lines().any(|l| l == "valid: True"), "{stdout}");
    }
    assert!(
        errs[1].contains(&format!("ready reached {did0}")),
        "party 1 does not say its ready got through: {}",
        errs[1]
    );
}

/// spec/lobby.md §1 "Roster delivery": `mpc host` sends the roster again while a party's
/// mediator refuses for now, and stores it first. Party 1's mediator is killed after
/// party 1 joined, the last party joins then, and the mediator comes back: the host and
/// every joiner finish. Before, the one failed send ended `host` with an error before the
/// roster was stored, while party 2, which got it, thought it was in.
#[test]
fn the_roster_reaches_a_party_whose_mediator_restarts_while_it_is_sent() {
    let med0 = RestartableMediator::new();
    let mut med1 = RestartableMediator::new();
    let (home0, _) = med0.wallets(&["p0"]).remove(0);
    let (home1, did1) = med1.wallets(&["p1"]).remove(0);
    let (home2, _) = med0.wallets(&["p2"]).remove(0);
    let prog = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/secretsanta.py");
    let prog_s = prog.to_str().unwrap();
    let sid = ok(
        home0.path(),
        &["mpc", "new", "--parties", "3", "--program", prog_s],
    )
    .trim()
    .to_owned();
    let inv = ok(
        home0.path(),
        &["--json", "invite", "--mpc", &sid, "--no-qr"],
    );
    let url = serde_json::from_str::<serde_json::Value>(&inv).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let join = |home: &Path| {
        cmd(
            home,
            &[
                "--json",
                "join",
                &url,
                "--program",
                prog_s,
                "--timeout",
                "90",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let mut host = cmd(
        home0.path(),
        &["--json", "mpc", "host", "--mpc", &sid, "--timeout", "90"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let host_err = Watch::new(host.stderr.take().unwrap());
    let join1 = join(home1.path());
    host_err.wait_for("party 1 joined", Duration::from_secs(60));
    med1.kill9();
    let join2 = join(home2.path());
    // The roster's first send to party 1 failed (or, before, `host` gave up).
    let tried = wait_until(
        || {
            host_err
                .text()
                .contains("cannot send the roster to party 1")
                || host.try_wait().unwrap().is_some()
        },
        Instant::now() + Duration::from_secs(60),
    );
    assert!(tried, "party 2 never joined: {}", host_err.text());
    std::thread::sleep(Duration::from_secs(3));
    med1.start();
    let hosted = wait_bounded(host, Duration::from_secs(120));
    assert!(hosted.status.success(), "host failed: {}", host_err.text());
    assert!(
        host_err
            .text()
            .contains(&format!("the roster reached party 1 ({did1})")),
        "{}",
        host_err.text()
    );
    for (i, j) in [(1, join1), (2, join2)] {
        let out = wait_bounded(j, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "party {i}'s join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
