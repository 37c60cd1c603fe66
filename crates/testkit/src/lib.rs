//! Test helpers of the mpc-did workspace: a dev-dependency only, never a dependency of a
//! library or a binary (`publish = false`).
//!
//! Owns what several crates' tests share, so that each set-up is written once:
//! - [`wait_until`] / [`wait_until_async`] / [`wait_until_blocking`]: poll a condition
//!   until a deadline — the replacement for sleep-then-assert;
//! - [`SilentHost`]: a TCP listener that accepts, records who connected and never answers
//!   (a did:web host that hangs, a port nobody should be made to connect to);
//! - [`python`] and [`skipped`]: the test policy for tests that need MPyC's Python (skip
//!   with `SKIPPED: …` on stderr, or fail when `MPC_DID_REQUIRE_INTEROP=1`), around the
//!   product's [`mpc_did_proxy::launch::find_python`];
//! - `mediator` (feature `mediator`): a real mediator on loopback, fresh did:key
//!   identities, parties registered at a mediator, a `redis-server` child, the mediator
//!   of the network-namespace NAT tests;
//! - `local` (feature `driver`): secure sessions between parties of one process over
//!   loopback TCP (the real handshake and driver, without the DIDComm round trips).
//!
//! It does not: mock anything (every helper starts the real component on loopback), or
//! hold protocol logic — what a test checks stays in the test.
//!
//! ```text
//!  test ──> testkit::mediator::loopback_mediator ──> mpc-did-mediator (127.0.0.1:0)
//!       ──> testkit::mediator::registered_agent ──> Agent registered there
//!       ──> testkit::wait_until(|| condition, deadline)
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! let start = tokio::time::Instant::now();
//! let after_10ms = || start.elapsed() >= Duration::from_millis(10);
//! assert!(mpc_did_testkit::wait_until(after_10ms, Duration::from_secs(5)).await);
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "driver")]
pub mod local;
#[cfg(feature = "mediator")]
pub mod mediator;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mpc_did_proxy::launch::find_python;

/// How often the `wait_until*` helpers try their condition again.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `cond` until it holds (`true`) or `within` has passed (`false`, after one last
/// try). The test asserts on the result with its own message.
///
/// The clock is tokio's, so under paused time (`#[tokio::test(start_paused = true)]`)
/// the wait advances virtual time instead of taking real time.
pub async fn wait_until(mut cond: impl FnMut() -> bool, within: Duration) -> bool {
    wait_until_async(move || std::future::ready(cond()), within).await
}

/// As [`wait_until`], for a condition that must itself wait (an HTTP request, a lock).
pub async fn wait_until_async<F, Fut>(mut cond: F, within: Duration) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return cond().await;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// As [`wait_until`], for tests without a runtime: blocks the calling thread until `cond`
/// holds or `deadline` passes.
pub fn wait_until_blocking(mut cond: impl FnMut() -> bool, deadline: Instant) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return cond();
        }
        std::thread::sleep(POLL);
    }
}

/// The environment variable that turns a skip into a failure (`./test.sh` and CI set it
/// to `1`): a test that needs Python, Redis or network namespaces must not pass without
/// having run.
pub const REQUIRE_INTEROP_ENV: &str = "MPC_DID_REQUIRE_INTEROP";

/// Whether `$MPC_DID_REQUIRE_INTEROP` is `1`.
#[must_use]
pub fn interop_required() -> bool {
    std::env::var(REQUIRE_INTEROP_ENV).as_deref() == Ok("1")
}

/// Says on stderr that (part of) the running test is skipped and why, as
/// `SKIPPED: <test>: <why>`. Written to the process's stderr, not through `eprintln!`,
/// which the test harness captures and hides for a passing test.
pub fn skipped(why: &str) {
    use std::io::Write as _;
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why}");
}

/// MPyC's Python for a test that runs MPyC programs: `$MPC_DID_PYTHON`, else the
/// repository's `.venv` (`./test.sh` makes it), if it imports `mpyc` and `modules`. `None`: the caller skips (this says [`skipped`]).
///
/// # Panics
/// `$MPC_DID_PYTHON` names a Python that cannot import the modules, or none was found
/// and [`interop_required`].
#[must_use]
#[allow(clippy::panic)]
pub fn python(modules: &[&str]) -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    let candidates = [venv];
    match find_python(&candidates, modules) {
        Ok(Some(p)) => Some(p),
        Ok(None) if interop_required() => panic!(
            "no Python imports mpyc and {modules:?} (tried $MPC_DID_PYTHON, {candidates:?}) \
             but {REQUIRE_INTEROP_ENV}=1: run ./test.sh or set MPC_DID_PYTHON"
        ),
        Ok(None) => {
            skipped("no Python with mpyc (set MPC_DID_PYTHON; ./test.sh does)");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A TCP listener that records the peers it accepts, keeps their connections open and never
/// reads or answers: a host that hangs (a did:web host a stranger names), or a port a test
/// wants to prove nobody connected to.
#[derive(Debug)]
pub struct SilentHost {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<std::net::SocketAddr>>>,
}

impl SilentHost {
    /// Listens on `127.0.0.1`, on a free port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    /// Listens on `addr` (e.g. `127.0.0.2:0`).
    ///
    /// # Panics
    /// If it cannot bind.
    #[allow(clippy::expect_used)]
    pub async fn start_on(addr: &str) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the silent host");
        let addr = listener.local_addr().expect("its address");
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, peer)) = listener.accept().await {
                if let Ok(mut l) = log.lock() {
                    l.push(peer);
                }
                held.push(s);
            }
        });
        Self { addr, accepted }
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.accepted.lock().map_or(0, |l| l.len())
    }

    /// Connects once itself and waits until that connection is accepted: accepts are in
    /// order, so every earlier connection (the code under test's) was recorded before it.
    /// Returns how many came before.
    ///
    /// # Panics
    /// If its own connection is not accepted within 10 s.
    #[allow(clippy::expect_used)]
    pub async fn connections_before_ours(&self) -> usize {
        let ours = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect to the silent host");
        let me = ours.local_addr().expect("our address");
        let position = || {
            self.accepted
                .lock()
                .ok()
                .and_then(|l| l.iter().position(|p| *p == me))
        };
        assert!(
            wait_until(|| position().is_some(), Duration::from_secs(10)).await,
            "the silent host never accepted"
        );
        position().unwrap_or(usize::MAX)
    }
}
