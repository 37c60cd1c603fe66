//! Launch an unmodified MPyC program against a bound [`Proxy`] and supervise both.
//!
//! The program runs in its own process group so that a Ctrl-C reaches mpc-did first and is
//! then forwarded to the whole group (Python and anything it spawned); after a grace period
//! the group is killed. When the program exits, its proxy links are dropped; when the proxy
//! fails (a peer's link broke, a party id was spoofed), the program is stopped the same
//! way. Nothing outlives [`run_program`] but its exit status.

use std::ffi::OsString;
use std::process::{ExitStatus, Stdio};
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
    pub argv: Vec<OsString>,
    pub output: Output,
    /// How long the program may take to stop after SIGINT/SIGTERM before SIGKILL.
    pub grace: Duration,
}

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
    #[error("no program given: pass e.g. `-- python prog.py`")]
    NoProgram,
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: OsString,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the program failed: {0}")]
    Wait(#[source] std::io::Error),
    #[error("interrupted")]
    Interrupted,
}

/// Run `program` with `proxy`'s MPyC arguments, carrying its links over `transport`,
/// until the program exits (or `stop` resolves, e.g. on Ctrl-C).
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
    let mut cmd = Command::new(first);
    cmd.args(rest)
        .args(proxy.mpyc_args())
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

    let proxy_run = proxy.run(Arc::clone(&transport));
    let peer_failed = transport.peer_failure();
    tokio::pin!(proxy_run, stop, peer_failed);
    let mut proxy_result = None;
    let mut peer_failure = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(LaunchError::Wait)?,
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
            () = &mut stop => {
                stop_group(&mut child, program.grace).await;
                transport.report_failure("interrupted").await;
                return Err(LaunchError::Interrupted);
            }
        }
    };
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
