//! What the CLI tests share: the `mpc-did` binary runner ([`cmd`], [`mpc_did`], [`ok`]),
//! the mediator spawners (the real `mpc-did-mediator` binary as its own process,
//! [`MediatorProc`], or a config for one in-process on loopback), wallets registered at a
//! mediator, [`RestartableMediator`] (the real mediator stopped and started again on one
//! address and data directory), [`wait_until`] (the poll that replaces sleep-then-assert)
//! and [`skipped`].
//!
//! Each test file is its own crate and uses part of this module.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The `mpc-did` binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_mpc-did");

thread_local! {
    /// The network namespace this test thread runs its processes in (`None`: ours).
    pub static NETNS: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// `program` as a command, inside this thread's [`NETNS`] if one is set.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match NETNS.with(|n| n.borrow().clone()) {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// `mpc-did` with no `MPC_DID_HOME` from the environment.
pub fn bin() -> Command {
    let mut c = command(BIN);
    c.env_remove("MPC_DID_HOME");
    c
}

/// `mpc-did --home HOME ARGS…` with stdin closed.
pub fn cmd(home: &Path, args: &[&str]) -> Command {
    let mut c = bin();
    c.arg("--home").arg(home).args(args).stdin(Stdio::null());
    c
}

/// Runs `mpc-did --home HOME ARGS…` to the end.
pub fn mpc_did(home: &Path, args: &[&str]) -> Output {
    cmd(home, args).output().unwrap()
}

/// Runs `mpc-did --home HOME ARGS…`, which must succeed; its stdout.
pub fn ok(home: &Path, args: &[&str]) -> String {
    let out = mpc_did(home, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `cond` until it holds (`true`) or `deadline` passes (`false`, after one last
/// try): the test kit's poll, for these tests' threads.
#[allow(unused_imports)] // each test file is its own crate and uses part of this module
pub use mpc_did_testkit::wait_until_blocking as wait_until;

/// Wait for a child at most `limit`; kill it (and fail) if it does not exit.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let exited = wait_until(
        || child.try_wait().unwrap().is_some(),
        Instant::now() + limit,
    );
    if exited {
        return child.wait_with_output().unwrap();
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "process did not exit within {limit:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real mediator binary next to ours, built (once per test process) from this tree:
/// cargo builds only the binaries of the package under test, and a binary left from an
/// older tree would test old code silently.
pub fn mediator_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin = PathBuf::from(BIN).with_file_name("mpc-did-mediator");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let st = Command::new(cargo)
                .args([
                    "build",
                    "-p",
                    "mpc-did-mediator",
                    "--bin",
                    "mpc-did-mediator",
                ])
                .status()
                .unwrap();
            assert!(st.success(), "building mpc-did-mediator failed");
            assert!(bin.exists(), "{} missing", bin.display());
            bin
        })
        .clone()
}

/// The real `mpc-did-mediator` binary on loopback (in this thread's [`NETNS`] if one is
/// set), killed on drop.
pub struct MediatorProc {
    child: Child,
    pub invitation_url: String,
    /// The store of [`MediatorProc::temporary`], removed after the process is killed.
    _data: Option<tempfile::TempDir>,
}

impl MediatorProc {
    /// One storing in a temporary directory of its own.
    pub fn temporary() -> Self {
        let data = tempfile::tempdir().unwrap();
        let mut m = Self::start_in(data.path());
        m._data = Some(data);
        m
    }

    /// One storing in `data`.
    pub fn start_in(data: &Path) -> Self {
        let mut child = command(mediator_bin())
            .args(["--listen", "127.0.0.1:0", "--log", "warn", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let v = start_line(&mut child);
        Self {
            child,
            invitation_url: v["invitation_url"].as_str().unwrap().to_owned(),
            _data: None,
        }
    }
}

impl Drop for MediatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One wallet in a temporary home per name, each holding a did:key identity of that name
/// registered at `med` with `mpc-did mediator register`.
pub fn registered_wallets(med: &MediatorProc, names: &[&str]) -> Vec<tempfile::TempDir> {
    names
        .iter()
        .map(|name| {
            let h = tempfile::tempdir().unwrap();
            mpc_did_wallet::Wallet::open(h.path())
                .unwrap()
                .create_identity(name, mpc_did_wallet::Method::Key)
                .unwrap();
            ok(h.path(), &["mediator", "register", &med.invitation_url]);
            h
        })
        .collect()
}

/// A config for a mediator started in-process on loopback, storing in `data`.
pub fn loopback_config(data: &Path) -> mpc_did_mediator::Config {
    mpc_did_mediator::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data: data.to_path_buf(),
        ..mpc_did_mediator::Config::default()
    }
}

/// Says on stderr that (part of) the running test is skipped and why (`SKIPPED: …`).
#[allow(unused_imports)] // each test file is its own crate and uses part of this module
pub use mpc_did_testkit::skipped;

/// An MPC session formed in the lobby (spec/lobby.md §1): its id and each party's JSON
/// answer (`mpc host` for party 0, then `join` of parties 1, 2, …).
pub struct Formed {
    /// The MPC session id.
    pub sid: String,
    /// Party 0's `mpc host --json` answer, then each joiner's `join --json` answer.
    pub answers: Vec<serde_json::Value>,
}

/// Forms the lobby of an MPC session of `program` (with `args` for it) among the wallets at
/// `homes`: `homes[0]` creates and invites (`invite --mpc`; other tests use the hidden
/// `--session` alias), the
/// others `join` the invitation URL while `homes[0]` runs `mpc host`; panics unless every
/// step succeeds within 60 s.
pub fn form_lobby(homes: &[&Path], program: &Path, args: &[&str]) -> Formed {
    let prog = program.to_str().unwrap();
    let parties = homes.len().to_string();
    let mut new_args = vec!["mpc", "new", "--parties", &parties, "--program", prog, "--"];
    new_args.extend_from_slice(args);
    let sid = ok(homes[0], &new_args).trim().to_owned();
    let inv = ok(homes[0], &["--json", "invite", "--mpc", &sid, "--no-qr"]);
    let url = serde_json::from_str::<serde_json::Value>(&inv).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let joiners: Vec<Child> = homes[1..]
        .iter()
        .map(|h| {
            cmd(
                h,
                &["--json", "join", &url, "--program", prog, "--timeout", "60"],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let hosted = ok(
        homes[0],
        &["--json", "mpc", "host", "--mpc", &sid, "--timeout", "60"],
    );
    let mut answers = vec![serde_json::from_str(&hosted).unwrap()];
    for j in joiners {
        let out = wait_bounded(j, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "join failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        answers.push(serde_json::from_slice(&out.stdout).unwrap());
    }
    Formed { sid, answers }
}

/// The child processes of `pid` (all its threads'), as pid strings; none once it is gone.
pub fn children_of(pid: u32) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(c.split_whitespace().map(str::to_owned));
            }
        }
    }
    out
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The real mediator on a fixed port with a data directory that outlives its process, so
/// that it comes back with the same DID, registrations and queues at the same URLs.
pub struct RestartableMediator {
    pub data: tempfile::TempDir,
    pub port: u16,
    pub child: Option<Child>,
    pub invitation_url: String,
}

impl RestartableMediator {
    pub fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut m = Self {
            data: tempfile::tempdir().unwrap(),
            port,
            child: None,
            invitation_url: String::new(),
        };
        m.start();
        m
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(mediator_bin())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--log", "warn", "--data"])
            .arg(self.data.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let v = start_line(&mut child);
        self.invitation_url = v["invitation_url"].as_str().unwrap().to_owned();
        self.child = Some(child);
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// kill -9: no drain.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM: drains and exits (bounded).
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let mut c = self.child.take().unwrap();
        let exited = wait_until(
            || c.try_wait().unwrap().is_some(),
            Instant::now() + Duration::from_secs(20),
        );
        assert!(exited, "the mediator did not exit within 20 s of SIGTERM");
        c.wait().unwrap()
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Wallets registered here, one per name, each with a did:key of that name.
    pub fn wallets(&self, names: &[&str]) -> Vec<(tempfile::TempDir, String)> {
        names
            .iter()
            .map(|name| {
                let h = tempfile::tempdir().unwrap();
                let did = mpc_did_wallet::Wallet::open(h.path())
                    .unwrap()
                    .create_identity(name, mpc_did_wallet::Method::Key)
                    .unwrap()
                    .did;
                ok(h.path(), &["mediator", "register", &self.invitation_url]);
                (h, did)
            })
            .collect()
    }
}

impl Drop for RestartableMediator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The JSON line a mediator child prints on stdout once it serves.
fn start_line(child: &mut std::process::Child) -> serde_json::Value {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("mediator did not start ({e}): {line:?}"))
}
