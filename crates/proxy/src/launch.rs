//! Launch an unmodified MPyC program against a bound [`Proxy`] and supervise both.
//!
//! The program runs in its own process group so that a Ctrl-C reaches mpc-did first and is
//! then forwarded to the whole group (Python and anything it spawned); after a grace period
//! the group is killed. When the program exits, its proxy links are dropped; when the proxy
//! fails (a peer's link broke, a party id was spoofed), the program is stopped the same
//! way. Nothing outlives [`run_program`] but its exit status.
//!
//! Even a SIGKILL of mpc-did (which no handler sees) does not orphan the program: where
//! util-linux `setpriv` supports `--pdeathsig`, the program is started as
//! `setpriv --pdeathsig KILL -- <argv>`, so the kernel kills it when the thread that
//! spawned it dies (see [`run_program`] for which thread that is). `unsafe` is forbidden in
//! this workspace, so `prctl(PR_SET_PDEATHSIG)` in a `pre_exec` hook is not an option;
//! `setpriv` sets the same flag and then `exec`s the program, which keeps its pid.
//!
//! [`find_python`] is the one place that decides which Python runs MPyC (the CLI, tests and
//! benches all use it). What a test does when there is none (skip, or fail under
//! `MPC_DID_REQUIRE_INTEROP=1`) is the test kit's policy (`mpc-did-testkit`), not this
//! crate's.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use std::sync::Arc;

use crate::{PeerFailure, Proxy, ProxyError, ProxyReport, Transport};

/// How the program's output reaches the user.
#[derive(Debug, Clone)]
pub enum Output {
    /// The program writes straight to our stdout/stderr.
    Inherit,
    /// Each line is printed with this prefix (several parties in one terminal).
    Prefixed(String),
    /// Collected and returned in [`RunOutcome::stdout`] (tests, `--json`).
    Capture,
}

/// What to run: `argv[0]` is the interpreter or program, the rest its arguments; the
/// proxy's `-M/-I/-P` arguments are appended after them.
#[derive(Debug, Clone)]
pub struct Program {
    /// The command line: interpreter or program first, then its arguments.
    pub argv: Vec<OsString>,
    /// Where the program's stdout and stderr go.
    pub output: Output,
    /// How long the program may take to stop after SIGINT/SIGTERM before SIGKILL.
    pub grace: Duration,
}

/// How long a broken link waits for the peer failure report that may explain it.
const PEER_REPORT_GRACE: Duration = Duration::from_secs(2);

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// The program's exit status.
    pub status: ExitStatus,
    /// The proxy's byte counts, when it finished cleanly.
    pub proxy: Result<ProxyReport, ProxyError>,
    /// The program's stdout, with [`Output::Capture`].
    pub stdout: String,
    /// The program's stderr (MPyC's log), with [`Output::Capture`].
    pub stderr: String,
    /// Set when the program was stopped because a peer failed.
    pub peer_failure: Option<PeerFailure>,
}

/// Why a run could not happen at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LaunchError {
    /// [`Program::argv`] is empty.
    #[error("no program given: pass e.g. `-- python prog.py`")]
    NoProgram,
    /// The program could not be started (not found, not executable).
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: OsString,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// Waiting for the program's exit failed.
    #[error("waiting for the program failed: {0}")]
    Wait(#[source] std::io::Error),
    /// The run was stopped (the `stop` future resolved, e.g. on Ctrl-C) before the
    /// program exited; the program was stopped too.
    #[error("interrupted")]
    Interrupted,
    /// The program's private links could not be set up.
    #[error("cannot prepare the program's links: {0}")]
    Links(#[source] ProxyError),
    /// The program ran but never loaded the start-up hook that routes MPyC's links through
    /// the proxy (Python started with `-I`, `-E` or `-S`, or not a Python program); it
    /// has been stopped.
    #[error(
        "the program did not load mpc-did's MPyC link hook within {secs} s and was stopped: \
         run MPyC programs with a plain `python prog.py` (not `python -I`, `-E` or `-S`)"
    )]
    HookNotLoaded {
        /// How long the program had, in seconds.
        secs: u64,
    },
}

/// How long a started program may take to load the link hook (Python runs it before the
/// program's first line, so this is start-up time on a loaded machine).
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// Run `program` with `proxy`'s MPyC arguments, carrying its links over `transport`,
/// until the program exits (or `stop` resolves, e.g. on Ctrl-C).
///
/// The program is spawned from the thread that first polls this future, and (through
/// `setpriv --pdeathsig KILL`, see the module docs) dies with that thread. Poll it from a
/// thread that lives as long as the run: a tokio worker or the `block_on` thread, never a
/// `spawn_blocking` thread, which the runtime retires after it idles.
///
/// # Errors
/// [`LaunchError::Spawn`] if the program cannot be started, [`LaunchError::Wait`] if its
/// status cannot be read, [`LaunchError::Interrupted`] if `stop` fired (the program has
/// then been stopped).
pub async fn run_program<T: Transport>(
    proxy: Proxy,
    transport: Arc<T>,
    program: Program,
    stop: impl std::future::Future<Output = ()>,
) -> Result<RunOutcome, LaunchError> {
    let (first, rest) = program.argv.split_first().ok_or(LaunchError::NoProgram)?;
    // With setpriv in front, a missing program would only show as setpriv's exit status:
    // look it up first so the error names it.
    if resolve_program(first).is_none() {
        return Err(LaunchError::Spawn {
            program: first.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "program not found"),
        });
    }
    let mut cmd = match pdeathsig_wrapper() {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(first);
            c
        }
        None => Command::new(first),
    };
    cmd.args(rest)
        .args(proxy.mpyc_args())
        .envs(proxy.program_env().map_err(LaunchError::Links)?)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    match program.output {
        Output::Inherit => cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit()),
        Output::Prefixed(_) | Output::Capture => cmd.stdout(Stdio::piped()).stderr(Stdio::piped()),
    };
    let mut child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        program: first.clone(),
        source,
    })?;
    let printers = spawn_printers(&mut child, &program.output);

    let hook_missing = hook_watch(proxy.link_dir().to_owned(), HOOK_TIMEOUT);
    let proxy_run = proxy.run(Arc::clone(&transport));
    let peer_failed = transport.peer_failure();
    tokio::pin!(proxy_run, stop, peer_failed, hook_missing);
    let mut proxy_result = None;
    let mut peer_failure = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(LaunchError::Wait)?;
                tracing::info!("the program exited ({status})");
                break status;
            }
            failure = &mut peer_failed, if peer_failure.is_none() => {
                tracing::error!("party {} failed ({}); stopping the program", failure.peer, failure.reason);
                peer_failure = Some(failure);
                stop_group(&mut child, program.grace).await;
            }
            result = &mut proxy_run, if proxy_result.is_none() => {
                if let Err(e) = &result {
                    // A broken link: MPyC cannot recover from it; stop it rather than let
                    // it wait forever for a peer.
                    tracing::error!("{e}; stopping the program");
                    stop_group(&mut child, program.grace).await;
                }
                proxy_result = Some(result);
            }
            () = &mut hook_missing => {
                tracing::error!("the program did not load the MPyC link hook; stopping it");
                stop_group(&mut child, program.grace).await;
                transport.report_failure("program could not start its links").await;
                return Err(LaunchError::HookNotLoaded { secs: HOOK_TIMEOUT.as_secs() });
            }
            () = &mut stop => {
                stop_group(&mut child, program.grace).await;
                transport.report_failure("interrupted").await;
                return Err(LaunchError::Interrupted);
            }
        }
    };
    if peer_failure.is_none() && matches!(proxy_result, Some(Err(_))) {
        // A lost peer breaks its links and is reported as failed at about the same time;
        // when the broken link won the race, wait briefly for the report, which names
        // the cause (the party) rather than the symptom.
        if let Ok(failure) = tokio::time::timeout(PEER_REPORT_GRACE, &mut peer_failed).await {
            tracing::error!("party {} failed ({})", failure.peer, failure.reason);
            peer_failure = Some(failure);
        }
    }
    if !status.success() && peer_failure.is_none() {
        // Our peers cannot tell this from a clean close: tell them.
        transport
            .report_failure(&format!("program exited with {status}"))
            .await;
    }
    // The program is done; links it left open are closed by dropping the proxy.
    let proxy = match proxy_result {
        Some(r) => r,
        None => tokio::time::timeout(Duration::from_secs(2), proxy_run)
            .await
            .unwrap_or_else(|_| {
                Err(ProxyError::Timeout {
                    what: "links to close after the program exited".into(),
                    secs: 2,
                })
            }),
    };
    let (stdout, stderr) = printers.await;
    Ok(RunOutcome {
        status,
        proxy,
        stdout,
        stderr,
        peer_failure,
    })
}

/// Resolves if no process has loaded the link hook into `dir` within `limit`; stays
/// pending once one has.
async fn hook_watch(dir: PathBuf, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if crate::hook_loaded_in(&dir) {
            return std::future::pending().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if crate::hook_loaded_in(&dir) {
        std::future::pending().await
    }
}

/// `setpriv`, when it exists and supports `--pdeathsig` (util-linux 2.33+); checked once.
/// Without it a SIGKILLed mpc-did leaves its program running: say so once.
fn pdeathsig_wrapper() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let found = resolve_program(OsStr::new("setpriv")).filter(|setpriv| {
                std::process::Command::new(setpriv)
                    .args(["--pdeathsig", "KILL", "--", "true"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            });
            if found.is_none() {
                tracing::warn!(
                    "util-linux `setpriv --pdeathsig` is not available: if mpc-did is killed \
                     with SIGKILL, its MPyC program keeps running (install util-linux)"
                );
            }
            found
        })
        .as_deref()
}

/// `program` as `execvp` would find it: a path if it contains a `/`, else the first
/// executable file of that name in `$PATH`. Callers use it to find a missing interpreter
/// before doing anything else.
#[must_use]
pub fn resolve_program(program: &OsStr) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = Path::new(program);
    if program.as_encoded_bytes().contains(&b'/') {
        return is_exe(path).then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| is_exe(p))
}

/// The environment variable naming the Python that runs MPyC.
pub const PYTHON_ENV: &str = "MPC_DID_PYTHON";

/// `$MPC_DID_PYTHON` names a Python that cannot run MPyC.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PythonError {
    /// `$MPC_DID_PYTHON` is set but cannot import the modules.
    #[error(
        "{PYTHON_ENV}={path:?} cannot `import {modules}`: point it at a Python with them installed"
    )]
    Unusable {
        /// The Python `$MPC_DID_PYTHON` names.
        path: PathBuf,
        /// The modules it had to import (comma-separated).
        modules: String,
    },
}

/// The Python that runs MPyC programs: `$MPC_DID_PYTHON` if set (it must import
/// `modules`), else the first of `candidates` that can `import mpyc` and `modules`
/// (for example the repository's `.venv/bin/python`, then `python3`).
///
/// Returns `Ok(None)` when nothing fits: the caller sets one up (`mpc-did demo`) or skips
/// (tests, benches).
///
/// # Errors
/// [`PythonError::Unusable`] if `$MPC_DID_PYTHON` is set but cannot import the modules.
pub fn find_python(
    candidates: &[PathBuf],
    modules: &[&str],
) -> Result<Option<PathBuf>, PythonError> {
    let mut wanted = vec!["mpyc"];
    wanted.extend(modules.iter().copied().filter(|m| *m != "mpyc"));
    let wanted = wanted.join(", ");
    let imports = |python: &Path| {
        std::process::Command::new(python)
            .args(["-c", &format!("import {wanted}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if let Some(p) = std::env::var_os(PYTHON_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if imports(&p) {
            Ok(Some(p))
        } else {
            Err(PythonError::Unusable {
                path: p,
                modules: wanted,
            })
        };
    }
    if let Some(p) = candidates.iter().find(|p| imports(p)) {
        return Ok(Some(p.clone()));
    }
    Ok(None)
}

/// SIGINT to the program's group (MPyC exits on KeyboardInterrupt), then SIGKILL.
async fn stop_group(child: &mut Child, grace: Duration) {
    if let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::INT);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill().await;
}

/// Forward the child's output as configured; resolves to the captured (stdout, stderr).
fn spawn_printers(
    child: &mut Child,
    output: &Output,
) -> impl std::future::Future<Output = (String, String)> {
    let out = child.stdout.take();
    let err = child.stderr.take();
    let (prefix, capture) = match output {
        Output::Inherit => (None, false),
        Output::Prefixed(p) => (Some(p.clone()), false),
        Output::Capture => (None, true),
    };
    let out_task = out.map(|o| tokio::spawn(pump(o, prefix.clone(), capture, false)));
    let err_task = err.map(|e| tokio::spawn(pump(e, prefix, capture, true)));
    async move {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(t) = out_task {
            out = t.await.unwrap_or_default();
        }
        if let Some(t) = err_task {
            err = t.await.unwrap_or_default();
        }
        (out, err)
    }
}

async fn pump<R: AsyncRead + Unpin>(
    r: R,
    prefix: Option<String>,
    capture: bool,
    is_err: bool,
) -> String {
    let mut lines = BufReader::new(r).lines();
    let mut captured = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        match (&prefix, capture, is_err) {
            (Some(p), _, false) => println!("{p}{line}"),
            (Some(p), _, true) => eprintln!("{p}{line}"),
            (None, true, _) => {
                captured.push_str(&line);
                captured.push('\n');
            }
            (None, false, true) => eprintln!("{line}"),
            (None, false, false) => println!("{line}"),
        }
    }
    captured
}
