//! The MPC session (spec/lobby.md) end to end, as users would run it: a real `mpc-did-mediator` binary on loopback
//! (its own process), three wallets in temporary homes, `mpc-did mpc new / invite / join /
//! host` (spec/lobby.md §1), then three concurrent `mpc-did run` processes, each running
//! real MPyC (from PyPI, `MPC_DID_PYTHON`) over secure sessions through its own proxy.
//!
//! Without `MPC_DID_PYTHON` the tests that need MPyC are skipped with a message, unless
//! `MPC_DID_REQUIRE_INTEROP=1` (CI, test.sh), where they fail.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{
    alive, children_of, cmd, form_lobby, ok, registered_wallets, wait_bounded, wait_until,
    MediatorProc, NETNS,
};
use mpc_did_wallet::Wallet;

/// MPyC's Python (with numpy); `None`: skip (the test kit's policy, which fails instead
/// under `MPC_DID_REQUIRE_INTEROP=1`).
fn python() -> Option<PathBuf> {
    mpc_did_testkit::python(&["numpy"])
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

struct Lobby {
    _med: MediatorProc,
    homes: Vec<tempfile::TempDir>,
    sid: String,
}

impl Lobby {
    fn home(&self, i: usize) -> &Path {
        self.homes[i].path()
    }
}

/// Three wallets registered at a real mediator; party 0 creates the MPC session, the
/// others join from its invitation URL; party 0 hosts until the roster is out.
fn lobby(program: &Path, args: &[&str]) -> Lobby {
    let med = MediatorProc::temporary();
    let homes = registered_wallets(&med, &["p0", "p1", "p2"]);
    let paths: Vec<&Path> = homes.iter().map(tempfile::TempDir::path).collect();
    let formed = form_lobby(&paths, program, args);
    assert_eq!(formed.sid.len(), 32, "{}", formed.sid);
    let hosted = &formed.answers[0];
    assert_eq!(hosted["party"], 0);
    let mut ids = vec![0];
    for v in &formed.answers[1..] {
        // spec/lobby.md §4: every party holds the same roster (same hash).
        assert_eq!(v["roster"]["roster_hash"], hosted["roster"]["roster_hash"]);
        ids.push(v["party"].as_u64().unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids, [0, 1, 2], "party ids are 0..N-1");
    Lobby {
        _med: med,
        homes,
        sid: formed.sid,
    }
}

fn spawn_run(l: &Lobby, i: usize, python: &Path, program: &Path) -> Child {
    spawn_run_with(l, i, python, program, &[])
}

/// As [`spawn_run`], with `extra` options for `run` (e.g. `--relay-only`).
fn spawn_run_with(l: &Lobby, i: usize, python: &Path, program: &Path, extra: &[&str]) -> Child {
    let mut args = vec![
        "run",
        "--session",
        &l.sid,
        "--listen",
        "127.0.0.1:0",
        "--connect-timeout",
        "60",
        "--resume-timeout",
        "10",
    ];
    args.extend_from_slice(extra);
    args.extend(["--", python.to_str().unwrap(), program.to_str().unwrap()]);
    cmd(l.home(i), &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn digest(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.strip_prefix("result-digest: "))
        .unwrap_or_else(|| panic!("no result digest in {out}"))
}

fn three_runs(program: &str, args: &[&str]) -> Option<Vec<String>> {
    three_runs_with(program, args, &[])
}

/// Three `run` processes with `extra` options; returns their stderr.
fn three_runs_with(program: &str, args: &[&str], extra: &[&str]) -> Option<Vec<String>> {
    let python = python()?;
    let prog = example(program);
    let l = lobby(&prog, args);
    let runs: Vec<Child> = (0..3)
        .map(|i| spawn_run_with(&l, i, &python, &prog, extra))
        .collect();
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| wait_bounded(c, Duration::from_secs(180)))
        .collect();
    let stdouts: Vec<String> = outs
        .iter()
        .map(|o| {
            assert!(
                o.status.success(),
                "run failed: {}\n{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8(o.stdout.clone()).unwrap()
        })
        .collect();
    for s in &stdouts {
        assert!(s.lines().any(|l| l == "valid: True"), "{s}");
        assert_eq!(digest(s), digest(&stdouts[0]), "parties disagree");
    }
    let errs: Vec<String> = outs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
        .collect();
    assert!(
        errs[0].contains("secure session with party 1 up"),
        "{}",
        errs[0]
    );
    no_warnings(&errs);
    // `session list` shows the secure sessions `run` opened (issue 13: progress), one per
    // peer, closed after the successful run.
    let list: serde_json::Value =
        serde_json::from_str(&ok(l.home(0), &["--json", "session", "list"])).unwrap();
    let runs: Vec<&serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["command"] == "run")
        .collect();
    assert_eq!(runs.len(), 2, "{list}");
    assert!(runs.iter().all(|e| e["state"] == "closed"), "{list}");
    Some(errs)
}

/// A run that works prints no warning (they are on by default: a warning must mean
/// something a user should look at).
fn no_warnings(errs: &[String]) {
    for e in errs {
        assert!(
            !e.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with("WARN ") || l.starts_with("mpc-did: warning:")
            }),
            "a clean run printed a warning:\n{e}"
        );
    }
}

/// Many rounds of tiny messages: a valid derangement all three parties agree on.
#[test]
fn secret_santa_three_wallets_three_processes() {
    three_runs("secretsanta.py", &["--people", "3", "4", "5"]);
}

/// The same with every secure session forced onto the mediator's relay (spec/session.md
/// §7.5): MPyC's byte streams survive the relay's framing and pacing.
#[test]
fn secret_santa_through_the_relay() {
    let Some(errs) = three_runs_with("secretsanta.py", &["--people", "3", "4"], &["--relay-only"])
    else {
        return;
    };
    for e in &errs {
        assert!(
            e.lines()
                .filter(|l| l.contains("secure session with party"))
                .all(|l| l.contains("relay")),
            "every session on the relay: {e}"
        );
    }
}

/// `run --transport didcomm` (spec/didcomm-transport.md §4): every MPyC message one
/// authcrypt DIDComm message through the real mediator, no secure session opened; the
/// three parties still agree on a valid result.
#[test]
fn secret_santa_over_per_message_didcomm() {
    let Some(python) = python() else { return };
    let prog = example("secretsanta.py");
    let l = lobby(&prog, &["--people", "3", "4"]);
    let runs: Vec<Child> = (0..3)
        .map(|i| spawn_run_with(&l, i, &python, &prog, &["--transport", "didcomm"]))
        .collect();
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| wait_bounded(c, Duration::from_secs(180)))
        .collect();
    let mut digests = Vec::new();
    for o in &outs {
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "run failed: {out}\n{err}");
        assert!(out.lines().any(|l| l == "valid: True"), "{out}");
        assert!(err.contains("over per-message DIDComm"), "{err}");
        assert!(!err.contains("secure session with party"), "{err}");
        no_warnings(&[err.into_owned()]);
        digests.push(digest(&out).to_owned());
    }
    assert!(digests.iter().all(|d| *d == digests[0]), "parties disagree");
}

/// spec/lobby.md §8 "Same transport": one party chose `--transport didcomm`, the others
/// the default sessions. Each side learns it from the other's first `ready` and every party
/// stops within seconds naming the transports, instead of waiting out `--connect-timeout`
/// (60 s here) for sessions or data that never come.
#[test]
fn parties_on_different_transports_stop_at_once_saying_so() {
    let Some(python) = python() else { return };
    let prog = example("secretsanta.py");
    let l = lobby(&prog, &["--people", "3", "4"]);
    let started = std::time::Instant::now();
    let runs: Vec<Child> = (0..3)
        .map(|i| {
            let extra: &[&str] = if i == 2 {
                &["--transport", "didcomm"]
            } else {
                &[]
            };
            spawn_run_with(&l, i, &python, &prog, extra)
        })
        .collect();
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| wait_bounded(c, Duration::from_secs(120)))
        .collect();
    let waited = started.elapsed();
    for (i, o) in outs.iter().enumerate() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "party {i} succeeded: {err}");
        assert!(err.contains("--transport"), "party {i}: {err}");
        assert!(
            !err.contains("did not start its run"),
            "party {i} waited: {err}"
        );
        assert!(
            !err.contains("starting secretsanta"),
            "party {i} started MPyC: {err}"
        );
    }
    let didcomm = String::from_utf8_lossy(&outs[2].stderr);
    assert!(
        didcomm.contains("runs with --transport session, this party with --transport didcomm"),
        "{didcomm}"
    );
    assert!(
        waited < Duration::from_secs(45),
        "the parties took {waited:?} to stop (connect timeout 60 s)"
    );
}

/// Large messages (secure arrays of 100,000 elements).
#[test]
fn inner_product_three_wallets_three_processes() {
    three_runs("innerproduct.py", &["--length", "100000"]);
}

/// spec/lobby.md §4 party 5: a party whose program differs from the roster's is refused,
/// naming both hashes, at `join` and at `run`, and no MPyC is started.
#[test]
fn wrong_program_hash_is_refused() {
    let prog = example("secretsanta.py");
    let l = lobby(&prog, &["--people", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let evil = dir.path().join("secretsanta.py");
    let mut src = std::fs::read_to_string(&prog).unwrap();
    src.push_str("\n# changed\n");
    std::fs::write(&evil, src).unwrap();
    let good_hash = {
        let rec = std::fs::read_to_string(l.home(1).join(format!("mpc/{}.json", l.sid))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&rec).unwrap();
        v["roster"]["program"]["sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // `run` with the changed file: refused before any session or process; "python" here
    // would fail loudly if it were started, so the refusal must come first.
    let out = cmd(
        l.home(1),
        &[
            "run",
            "--session",
            &l.sid,
            "--",
            "/nonexistent/python",
            evil.to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to run"), "{err}");
    assert!(err.contains(&good_hash), "names the roster's hash: {err}");

    // `join` of a new session with the changed program: refused before joining.
    let sid2 = ok(
        l.home(0),
        &[
            "mpc",
            "new",
            "--parties",
            "2",
            "--program",
            prog.to_str().unwrap(),
        ],
    );
    let inv = ok(
        l.home(0),
        &[
            "--json",
            "mpc",
            "invite",
            "--session",
            sid2.trim(),
            "--no-qr",
        ],
    );
    let url = serde_json::from_str::<serde_json::Value>(&inv).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = cmd(
        l.home(2),
        &[
            "mpc",
            "join",
            &url,
            "--program",
            evil.to_str().unwrap(),
            "--timeout",
            "5",
        ],
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("program mismatch"), "{err}");
    assert!(err.contains(&good_hash), "{err}");
}

/// The coordinator refuses a join whose program hash differs (spec/lobby.md §4 coordinator
/// step 4) with a Report Problem `e.p.req.program-mismatch` (§5), sent by hand here
/// because `mpc join` never sends one.
#[test]
fn coordinator_refuses_a_join_with_another_program() {
    let med = MediatorProc::temporary();
    let homes = registered_wallets(&med, &["coord", "mallory"]);
    let (h0, h1) = (&homes[0], &homes[1]);
    let prog = example("secretsanta.py");
    let sid = ok(
        h0.path(),
        &[
            "mpc",
            "new",
            "--parties",
            "2",
            "--program",
            prog.to_str().unwrap(),
        ],
    )
    .trim()
    .to_owned();
    let coord_did = Wallet::open(h0.path())
        .unwrap()
        .default_identity()
        .unwrap()
        .did;
    let mallory = Wallet::open(h1.path()).unwrap().default_identity().unwrap();
    let host = cmd(
        h0.path(),
        &["mpc", "host", "--session", &sid, "--timeout", "8"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let service = &mallory.services[0];
    let body = serde_json::json!({
        "session_id": sid,
        "program_sha256": "00".repeat(32),
        "services": [{"uri": service.uri, "accept": service.accept, "routingKeys": service.routing_keys}],
    });
    let med_url = med.invitation_url.split("/oob").next().unwrap().to_owned();
    ok(
        h1.path(),
        &[
            "send",
            &coord_did,
            "--type",
            "https://mpc-did.org/lobby/1.0/join",
            "--body",
            &body.to_string(),
            "--via",
            &med_url,
        ],
    );
    // The host times out (nobody valid joined) and says whom it refused and why.
    let out = wait_bounded(host, Duration::from_secs(30));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused") && err.contains(&mallory.did),
        "{err}"
    );
    // Mallory got the Report Problem with the reason code of spec/lobby.md §5.
    let inbox = ok(h1.path(), &["--json", "inbox"]);
    assert!(inbox.contains("e.p.req.program-mismatch"), "{inbox}");
}

/// Three `mpc-did run` of a long Secret Santa (37 groups), returned once party 2's
/// program has started (its progress line on stderr) and is in the middle of the
/// computation (the first group's result on stdout). Join both watches at the end.
fn long_secret_santa_under_way(python: &Path) -> (Lobby, Vec<Child>, [Watch; 2]) {
    long_secret_santa_under_way_with(python, &[])
}

/// As [`long_secret_santa_under_way`], with `extra` options for every `run`.
fn long_secret_santa_under_way_with(
    python: &Path,
    extra: &[&str],
) -> (Lobby, Vec<Child>, [Watch; 2]) {
    let prog = example("secretsanta.py");
    let people: Vec<String> = (3..40).map(|n| n.to_string()).collect();
    let mut args = vec!["--people"];
    args.extend(people.iter().map(String::as_str));
    let l = lobby(&prog, &args);
    let mut runs: Vec<Child> = (0..3)
        .map(|i| spawn_run_with(&l, i, python, &prog, extra))
        .collect();
    let err = Watch::new(runs[2].stderr.take().unwrap());
    err.wait_for("starting secretsanta.py", Duration::from_secs(90));
    let out = Watch::new(runs[2].stdout.take().unwrap());
    out.wait_for("people=3 ", Duration::from_secs(90));
    (l, runs, [err, out])
}

/// Killing one party (Ctrl-C / SIGINT to its `mpc-did run`) makes the others exit with an
/// error within a bounded time instead of hanging.
#[test]
fn interrupting_one_party_stops_the_others() {
    let Some(python) = python() else { return };
    let (_lobby, mut runs, watches) = long_secret_santa_under_way(&python);
    let pid = runs[2].id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let victim = runs.pop().unwrap();
    let v = wait_bounded(victim, Duration::from_secs(30));
    assert!(
        !v.status.success(),
        "the interrupted party must not report success"
    );
    for w in watches {
        w.reader.join().unwrap();
    }
    for c in runs {
        let o = wait_bounded(c, Duration::from_secs(60));
        assert!(
            !o.status.success(),
            "a party finished although party 2 was interrupted: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("party 2"), "names the failed party: {err}");
    }
}

/// Collects a child's stderr or stdout in the background; `wait_for` blocks until a text
/// appears.
struct Watch {
    seen: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watch {
    fn new(mut stream: impl Read + Send + 'static) -> Self {
        let seen = Arc::new(Mutex::new(String::new()));
        let s = Arc::clone(&seen);
        let reader = std::thread::spawn(move || {
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
        Self { seen, reader }
    }

    fn wait_for(&self, text: &str, limit: Duration) {
        let appeared = wait_until(
            || self.seen.lock().unwrap().contains(text),
            Instant::now() + limit,
        );
        assert!(
            appeared,
            "{text:?} never appeared: {}",
            self.seen.lock().unwrap()
        );
    }
}

/// SIGKILL of one party's `mpc-did run` (no chance to tell anyone): its MPyC program dies
/// with it (not orphaned), and the others notice the
/// lost secure session (after `--resume-timeout`, 10 s here) and exit with an error
/// naming that party instead of hanging.
#[test]
fn killing_one_party_makes_the_others_fail() {
    kill_one_party(&[]);
}

/// The same over per-message DIDComm (spec/didcomm-transport.md §3 "Silence"): the killed
/// party sends no `eof`, `fail` or keep-alive any more, and the others fail once it has
/// been silent for `--resume-timeout` (10 s here, at least 3 keep-alives: 15 s) instead of
/// waiting for its data for ever.
#[test]
fn killing_one_party_over_per_message_didcomm_makes_the_others_fail() {
    kill_one_party(&["--transport", "didcomm"]);
}

fn kill_one_party(extra: &[&str]) {
    let Some(python) = python() else { return };
    let (l, mut runs, watches) = long_secret_santa_under_way_with(&python, extra);
    let mut victim = runs.pop().unwrap();
    let orphans = children_of(victim.id());
    assert!(!orphans.is_empty(), "party 2's MPyC is not running");
    victim.kill().unwrap();
    victim.wait().unwrap();
    // The killed `mpc-did run` had no chance to stop its MPyC program; the kernel does it
    // (`setpriv --pdeathsig KILL`, crates/proxy launch.rs): the program is gone within a
    // bounded wait instead of orphaned.
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in &orphans {
        if !wait_until(|| !alive(pid), deadline) {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
            panic!("MPyC process {pid} outlived its SIGKILLed `mpc-did run`");
        }
    }
    for w in watches {
        w.reader.join().unwrap();
    }
    let victim_id = {
        let rec = std::fs::read_to_string(l.home(2).join(format!("mpc/{}.json", l.sid))).unwrap();
        serde_json::from_str::<serde_json::Value>(&rec).unwrap()["party"]
            .as_u64()
            .unwrap()
    };
    for c in runs {
        let o = wait_bounded(c, Duration::from_secs(60));
        assert!(
            !o.status.success(),
            "a party finished although party {victim_id} was killed: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("party {victim_id} failed")),
            "names the failed party: {err}"
        );
        if extra.contains(&"didcomm") {
            assert!(err.contains("no message from it for"), "says why: {err}");
        }
    }
}

/// Stands in for MPyC on the attacker's side: dials the first higher party's proxy link
/// like MPyC would, but announces another party's id (MPyC's first 2 bytes), then waits.
const SPOOF_PY: &str = r#"
import os, socket, sys, time
args = sys.argv[1:]
m = int(next(a[2:] for a in args if a.startswith('-M')))
me = int(next(a[2:] for a in args if a.startswith('-I')))
ps = [args[i + 1] for i, a in enumerate(args) if a == '-P']
victim = me + 1
claimed = (me + 2) % m  # neither the attacker nor the party it dials
# MPyC's links are Unix sockets in the run's private directory (spec/security.md §10).
s = socket.socket(socket.AF_UNIX)
s.connect(os.path.join(os.environ['MPC_DID_LINK_DIR'], f'party-{victim}.sock'))
# Said first: the proxy drops the link (and stops this script) as soon as the id arrives.
print(f'spoof: telling party {victim} I am party {claimed}', flush=True)
s.sendall(claimed.to_bytes(2, 'little') + bytes(16 * m))
while s.recv(4096):
    pass
time.sleep(600)
"#;

/// spec/lobby.md "party id check", through real processes: party 0's program (a script in
/// place of MPyC, run by a real `mpc-did run` that passed the roster's program check)
/// announces another party's id on its link to party 1. The link is dropped, the
/// attacker's run fails naming the mismatch, and the honest parties, told that party 0
/// failed, stop their MPyC and exit non-zero: nobody hangs, nobody computes with a fake
/// party.
#[test]
fn a_spoofed_party_id_is_refused_end_to_end() {
    let Some(python) = python() else { return };
    let prog = example("secretsanta.py");
    let l = lobby(&prog, &["--people", "3", "4", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let spoof = dir.path().join("spoof.py");
    std::fs::write(&spoof, SPOOF_PY).unwrap();
    let party_of = |i: usize| {
        let rec = std::fs::read_to_string(l.home(i).join(format!("mpc/{}.json", l.sid))).unwrap();
        serde_json::from_str::<serde_json::Value>(&rec).unwrap()["party"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(party_of(0), 0, "the coordinator is party 0");
    let attacker = cmd(
        l.home(0),
        &[
            "run",
            "--session",
            &l.sid,
            "--program",
            prog.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--connect-timeout",
            "60",
            "--resume-timeout",
            "10",
            "--",
            python.to_str().unwrap(),
            spoof.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let honest: Vec<Child> = (1..3).map(|i| spawn_run(&l, i, &python, &prog)).collect();
    let a = wait_bounded(attacker, Duration::from_secs(120));
    let a_err = String::from_utf8_lossy(&a.stderr);
    assert!(!a.status.success(), "the spoofing run must fail: {a_err}");
    assert!(
        String::from_utf8_lossy(&a.stdout).contains("spoof: telling party 1 I am party 2"),
        "the spoof was sent: {a_err}"
    );
    assert!(
        a_err.contains("announced party id 2"),
        "the proxy names the mismatch: {a_err}"
    );
    for c in honest {
        let o = wait_bounded(c, Duration::from_secs(60));
        let out = String::from_utf8_lossy(&o.stdout);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "an honest party finished with a spoofed peer: {out}\n{err}"
        );
        assert!(!out.contains("valid: True"), "{out}");
        assert!(err.contains("party 0 failed"), "names the party: {err}");
    }
}

/// The stranger of spec/security.md §10: reads every process's argv (as any local user
/// can) and the Unix socket table, and connects to whatever MPyC or the proxy might be
/// listening on, sending MPyC's opening bytes (party id 0 and zero PRSS keys) when a
/// connection is accepted. `local`: from inside the parties' network namespace;
/// `remote`: to their address from another namespace. Runs until `<dir>/stop` exists.
const STRANGER_PY: &str = r#"
import os, socket, sys, time
mode, host, stop = sys.argv[1], sys.argv[2], sys.argv[3]
tried, found = set(), set()
def out(*a):
    print(*a, flush=True)
def tcp_targets():
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            args = open(f'/proc/{pid}/cmdline', 'rb').read().decode(errors='replace').split('\0')
        except OSError:
            continue
        for i, a in enumerate(args[:-1]):
            if a == '-P':
                port = args[i + 1].rsplit(':', 1)[-1]
                if port.isdigit() and 1 < int(port) < 65536:
                    yield ('tcp', int(port))
def unix_targets():
    try:
        lines = open('/proc/net/unix').read().splitlines()[1:]
    except OSError:
        return
    for l in lines:
        f = l.split()
        if len(f) >= 8 and 'mpc-did-' in f[7]:
            yield ('unix', f[7])
def attack(t):
    kind, where = t
    s = socket.socket(socket.AF_INET if kind == 'tcp' else socket.AF_UNIX)
    s.settimeout(0.3)
    try:
        s.connect((host, where) if kind == 'tcp' else where)
    except OSError as e:
        return f'REFUSED {kind} {where} ({type(e).__name__})'
    try:
        s.sendall((0).to_bytes(2, 'little') + bytes(16 * 8))
        got = s.recv(65536)
    except OSError:
        got = b''
    s.close()
    return f'CONNECTED {kind} {where} got {len(got)} bytes'
end = time.time() + 300
while not os.path.exists(stop) and time.time() < end:
    for t in list(tcp_targets()) + list(unix_targets()):
        if t not in found:
            found.add(t)
            out('TARGET', *t)
        # Listeners come and go during start-up: keep trying until one answers.
        if t not in tried:
            r = attack(t)
            if r.startswith('CONNECTED') or t[0] == 'unix':
                tried.add(t)
                out(r)
    time.sleep(0.005)
out('DONE', len(found))
"#;

/// Network namespaces for [`strangers_cannot_reach_mpyc_or_the_proxy`], deleted on drop.
struct StrangerNets {
    victim: String,
    stranger: String,
}

impl StrangerNets {
    /// `victim` (198.51.100.1, the parties and their mediator) and `stranger`
    /// (198.51.100.2) joined by a veth pair; `None` when namespaces are unavailable.
    fn create() -> Option<Self> {
        let root = rustix::process::geteuid().is_root();
        let tools = ["ip", "setpriv", "/usr/bin/python3"].iter().all(|t| {
            Command::new(t)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        });
        let required = std::env::var("MPC_DID_REQUIRE_NETNS").as_deref() == Ok("1");
        if !root || !tools {
            assert!(
                !required,
                "MPC_DID_REQUIRE_NETNS=1 but root={root}, ip/setpriv/python3 found={tools}"
            );
            common::skipped("needs root, iproute2, setpriv and /usr/bin/python3");
            return None;
        }
        let id = std::process::id();
        let nets = Self {
            victim: format!("mdv{id}"),
            stranger: format!("mds{id}"),
        };
        let (v, s) = (nets.victim.as_str(), nets.stranger.as_str());
        let (va, sa) = (format!("mdv{id}a"), format!("mds{id}b"));
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", v]);
        ip(&["netns", "add", s]);
        ip(&[
            "link", "add", &va, "netns", v, "type", "veth", "peer", "name", &sa, "netns", s,
        ]);
        for (ns, dev, addr) in [(v, &va, "198.51.100.1/24"), (s, &sa, "198.51.100.2/24")] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Some(nets)
    }

    /// The stranger script as uid/gid 65534 (nobody) inside namespace `ns`.
    fn stranger(&self, ns: &str, script: &Path, mode: &str, host: &str, stop: &Path) -> Child {
        Command::new("ip")
            .args([
                "netns", "exec", ns, "setpriv", "--reuid", "65534", "--regid", "65534",
            ])
            .args(["--clear-groups", "--", "/usr/bin/python3"])
            .arg(script)
            .args([mode, host])
            .arg(stop)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

impl Drop for StrangerNets {
    fn drop(&mut self) {
        for ns in [&self.victim, &self.stranger] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// spec/security.md §10, the ends of the secure channel: during a real three-party run,
/// another user on the parties' machine and a host in another network namespace try to
/// connect to MPyC's listener and to the proxy's links, which they find through the
/// processes' argv and the socket table. No connection is accepted (before the fix: the
/// proxy's loopback ports were in MPyC's argv and took the first dialer, and MPyC listened
/// on every interface), and the run computes the right result.
#[test]
fn strangers_cannot_reach_mpyc_or_the_proxy() {
    let Some(python) = python() else { return };
    let Some(nets) = StrangerNets::create() else {
        return;
    };
    NETNS.with(|n| *n.borrow_mut() = Some(nets.victim.clone()));
    let work = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = work.path().join("stranger.py");
    std::fs::write(&script, STRANGER_PY).unwrap();
    let stop = work.path().join("stop");
    let prog = example("secretsanta.py");
    let people = ["--people", "3", "4", "5"];
    let l = lobby(&prog, &people);
    let local = nets.stranger(&nets.victim, &script, "local", "127.0.0.1", &stop);
    let remote = nets.stranger(&nets.stranger, &script, "remote", "198.51.100.1", &stop);
    let runs: Vec<Child> = (0..3).map(|i| spawn_run(&l, i, &python, &prog)).collect();
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| wait_bounded(c, Duration::from_secs(180)))
        .collect();
    std::fs::write(&stop, b"").unwrap();
    let local = wait_bounded(local, Duration::from_secs(30));
    let remote = wait_bounded(remote, Duration::from_secs(30));
    NETNS.with(|n| *n.borrow_mut() = None);
    let (local, remote) = (
        String::from_utf8_lossy(&local.stdout).into_owned(),
        String::from_utf8_lossy(&remote.stdout).into_owned(),
    );
    for o in &outs {
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("valid: True"),
            "the run failed: {out}\n{}\nlocal stranger:\n{local}\nremote stranger:\n{remote}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for (who, log) in [("local", &local), ("remote", &remote)] {
        assert!(log.contains("DONE"), "{who} stranger did not finish: {log}");
        assert!(
            !log.contains("CONNECTED"),
            "the {who} stranger reached a party's MPyC or proxy:\n{log}"
        );
    }
    // Not vacuous: the local stranger found the links it was refused.
    assert!(
        local.lines().any(|l| l.starts_with("REFUSED")),
        "the local stranger found nothing to try:\n{local}"
    );
}

/// A loopback TCP listener that records the peers it accepts; `reply` (if any) is written
/// after a request's headers, else it never answers.
struct Listener {
    addr: std::net::SocketAddr,
    accepted: Arc<Mutex<Vec<std::net::SocketAddr>>>,
}

impl Listener {
    fn start(reply: Option<String>) -> Self {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let log = accepted.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                log.lock().unwrap().push(s.peer_addr().unwrap());
                if let Some(reply) = &reply {
                    use std::io::Write as _;
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(reply.as_bytes());
                }
                held.push(s);
            }
        });
        Self { addr, accepted }
    }

    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Connects once ourselves and waits until that connection is accepted: accepts are
    /// in order, so any earlier connection was recorded before it.
    fn connections_before_ours(&self) -> usize {
        let ours = std::net::TcpStream::connect(self.addr).unwrap();
        let me = ours.local_addr().unwrap();
        let position = || self.accepted.lock().unwrap().iter().position(|p| *p == me);
        let accepted = wait_until(
            || position().is_some(),
            Instant::now() + Duration::from_secs(10),
        );
        assert!(accepted, "listener never accepted");
        position().unwrap()
    }
}

/// Security finding 4: the lobby host used to POST a refusal to whatever endpoint a join
/// named, before any lobby check, waiting up to 30 s and following redirects, so a stranger
/// could make it probe our network and two bogus joins held it past its own timeout. Now
/// a join that does not name this MPC session is ignored (nothing is sent), a refusal to an
/// invitation holder goes out in the background without following redirects, and the MPC
/// session forms in time.
#[test]
fn bogus_joins_make_the_host_contact_nobody_and_do_not_hold_it() {
    let med = MediatorProc::temporary();
    let homes = registered_wallets(&med, &["coord", "mallory", "alice"]);
    let (h0, h1, h2) = (homes[0].path(), homes[1].path(), homes[2].path());
    let prog = example("secretsanta.py");
    let prog = prog.to_str().unwrap();
    let sid = ok(h0, &["mpc", "new", "--parties", "2", "--program", prog])
        .trim()
        .to_owned();
    let inv = ok(h0, &["--json", "invite", "--session", &sid, "--no-qr"]);
    let url = serde_json::from_str::<serde_json::Value>(&inv).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let coord_did = Wallet::open(h0).unwrap().default_identity().unwrap().did;
    // A silent service (a probe target) and one that redirects to a second silent one.
    let canary = Listener::start(None);
    let beyond = Listener::start(None);
    let redirector = Listener::start(Some(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{}/didcomm\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        beyond.addr
    )));
    let started = Instant::now();
    let host = cmd(h0, &["mpc", "host", "--session", &sid, "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let med_url = med.invitation_url.split("/oob").next().unwrap().to_owned();
    let join = |session: &str, sha: &str, endpoint: std::net::SocketAddr| {
        let body = serde_json::json!({
            "session_id": session,
            "program_sha256": sha,
            "services": [{"uri": format!("http://{endpoint}/didcomm"), "accept": ["didcomm/v2"], "routingKeys": []}],
        });
        ok(
            h1,
            &[
                "send",
                &coord_did,
                "--type",
                "https://mpc-did.org/lobby/1.0/join",
                "--body",
                &body.to_string(),
                "--via",
                &med_url,
            ],
        );
    };
    // Strangers: they know the coordinator's DID, not the MPC session.
    join(&"00".repeat(16), &"00".repeat(32), canary.addr);
    join(&"11".repeat(16), &"00".repeat(32), canary.addr);
    // An invitation holder with another program: refused, through an endpoint that
    // redirects; the redirect is not followed.
    join(&sid, &"00".repeat(32), redirector.addr);
    let refused = wait_until(
        || redirector.count() > 0,
        Instant::now() + Duration::from_secs(15),
    );
    assert!(refused, "the refusal never went out");
    // The real party joins, and the MPC session forms within the host's timeout.
    let joined = ok(
        h2,
        &["--json", "join", &url, "--program", prog, "--timeout", "30"],
    );
    let out = wait_bounded(host, Duration::from_secs(40));
    assert!(
        out.status.success(),
        "host failed after {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    let joined: serde_json::Value = serde_json::from_str(&joined).unwrap();
    assert_eq!(joined["party"], 1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        canary.connections_before_ours(),
        0,
        "a stranger's endpoint was contacted"
    );
    assert_eq!(
        beyond.connections_before_ours(),
        0,
        "a redirect was followed"
    );
}

/// Security finding 3 end to end: a stranger who knows only the coordinator's DID sends it
/// 1,000 anoncrypt messages of a type nobody speaks before `mpc host` starts. They used to
/// stay unacknowledged, the mediator stopped live pushes at 1,000, and the host timed out
/// with "only 0 of 2 parties joined" (also after a restart). Now the MPC session forms.
#[test]
fn a_thousand_junk_messages_before_mpc_host_do_not_stop_the_lobby() {
    let med = MediatorProc::temporary();
    let homes = registered_wallets(&med, &["coord", "alice"]);
    let (h0, h1) = (&homes[0], &homes[1]);
    let prog = example("secretsanta.py");
    let prog = prog.to_str().unwrap();
    let sid = ok(
        h0.path(),
        &["mpc", "new", "--parties", "2", "--program", prog],
    )
    .trim()
    .to_owned();
    let inv = ok(
        h0.path(),
        &["--json", "invite", "--session", &sid, "--no-qr"],
    );
    let url = serde_json::from_str::<serde_json::Value>(&inv).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let coord = Wallet::open(h0.path()).unwrap().default_identity().unwrap();
    // The stranger: no identity of its own, only the coordinator's DID and mediator.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let resolver = mpc_did_resolver::UniversalResolver::new().unwrap();
        let mut doc = mpc_did_resolver::key::resolve(&coord.did).unwrap();
        doc.service.push(coord.services[0].to_service());
        resolver.insert(doc);
        let resolver = Arc::new(resolver);
        // From its own address (127.0.0.2): the mediator's quotas are per source, and the
        // honest joiner below is 127.0.0.1.
        let http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
            .build()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        let mut accepted = 0;
        for i in 0..1000 {
            if tasks.len() >= 16 {
                accepted += usize::from(tasks.join_next().await.unwrap().unwrap());
            }
            let (resolver, http, to) = (resolver.clone(), http.clone(), coord.did.clone());
            tasks.spawn(async move {
                let mut msg = mpc_did_didcomm::Message::new(
                    format!("junk-{i}"),
                    "https://junk.example/spam/1.0/x",
                    serde_json::json!({"i": i}),
                );
                msg.to = Some(vec![to.clone()]);
                let packed = mpc_did_didcomm::pack_encrypted(
                    &msg,
                    &to,
                    None,
                    None,
                    &*resolver,
                    &mpc_did_didcomm::SecretStore::new(),
                    &mpc_did_didcomm::PackOptions::default(),
                )
                .await
                .unwrap();
                let uri = packed.service.unwrap().uri;
                // The mediator takes at most 500 unacknowledged messages per source and
                // recipient (spec/mediator.md §6.1); the rest are refused, typed.
                match mpc_did_agent::client::post_packed(&http, &uri, packed.message.into_bytes())
                    .await
                {
                    Ok(_) => true,
                    Err(mpc_did_agent::client::ClientError::Problem { code, .. })
                        if code == "e.p.req.source-quota" =>
                    {
                        false
                    }
                    Err(e) => panic!("junk forward failed: {e}"),
                }
            });
        }
        while let Some(t) = tasks.join_next().await {
            accepted += usize::from(t.unwrap());
        }
        assert!(accepted >= 500, "only {accepted} junk messages were queued");
    });
    let host = cmd(
        h0.path(),
        &["mpc", "host", "--session", &sid, "--timeout", "20"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let joined = ok(
        h1.path(),
        &["--json", "join", &url, "--program", prog, "--timeout", "30"],
    );
    let out = wait_bounded(host, Duration::from_secs(40));
    assert!(
        out.status.success(),
        "host failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let joined: serde_json::Value = serde_json::from_str(&joined).unwrap();
    assert_eq!(joined["party"], 1);
}
