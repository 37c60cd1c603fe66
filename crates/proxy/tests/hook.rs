//! spec/security.md §10, "fail closed", for the start-up hook alone: whatever MPyC's
//! options say, MPyC under the hook never listens on a TCP port and never dials anything
//! but this run's link sockets; the program is stopped with a message instead (exit status
//! 77). Real MPyC, started by hand with the proxy's arguments and environment after
//! crafted ones (what a program argument that slipped past the offer check would do).
//! Needs Python with MPyC (`MPC_DID_PYTHON`); skipped with a message without it.
#![allow(clippy::unwrap_used)]

use std::ffi::OsString;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mpc_did_proxy::{Proxy, ProxyConfig};

/// The exit status of a program the hook stopped (`_REFUSED_STATUS` in sitecustomize.py).
const REFUSED: i32 = 77;

/// Starts MPyC's runtime (and, with `OWN_TCP_PORT` set, first opens a TCP listener of the
/// program's own and makes a TCP connection of its own there).
const PROGRAM: &str = r"
import asyncio, os, sys
from mpyc.runtime import mpc
async def own():
    server = await asyncio.start_server(lambda r, w: w.close(), '127.0.0.1', 0)
    server.close()
    print('own listener made', file=sys.stderr, flush=True)
    _, w = await asyncio.open_connection('127.0.0.1', int(os.environ['OWN_TCP_PORT']))
    w.close()
    print('own connection made', flush=True)
if os.environ.get('OWN_TCP_PORT'):
    mpc.run(own())
mpc.run(mpc.start())
mpc.run(mpc.shutdown())
";

struct Run {
    child: Child,
    // Holds the link sockets and the hook until the program is done.
    _proxy: Proxy,
    _dir: tempfile::TempDir,
}

/// Party `me` of `m`: `python program <crafted> <the proxy's arguments>`, in a fresh
/// directory holding `files`.
async fn start(
    python: &PathBuf,
    (m, me): (u16, u16),
    crafted: &[String],
    files: &[(&str, String)],
    env: &[(&str, String)],
) -> Run {
    let proxy = Proxy::bind(ProxyConfig::new(m, me)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("start.py");
    std::fs::write(&program, PROGRAM).unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let child = Command::new(python)
        .current_dir(dir.path())
        .arg(&program)
        .args(crafted)
        .args(proxy.mpyc_args())
        .envs(proxy.program_env().unwrap())
        .envs(
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Run {
        child,
        _proxy: proxy,
        _dir: dir,
    }
}

/// The program's exit status and stderr. A program still running after `within` is
/// killed and the test fails with `what_it_did()`, asked while it still runs.
fn finish(
    mut run: Run,
    within: Duration,
    what_it_did: impl FnOnce() -> String,
) -> (Option<i32>, String) {
    let deadline = Instant::now() + within;
    let exited =
        mpc_did_testkit::wait_until_blocking(|| run.child.try_wait().unwrap().is_some(), deadline);
    let hung = (!exited).then(what_it_did);
    if hung.is_some() {
        run.child.kill().unwrap();
    }
    let out = run.child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(what) = hung {
        panic!("the program kept running: {what}\n{stderr}");
    }
    (out.status.code(), stderr)
}

fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `-hB<b>` (the offer-check bypass of version 1) makes party `i` use TCP port `b+i`:
/// party 1 would listen there on every interface, party 0 would dial a link this run
/// does not have (and retry it forever). Both are stopped at once instead.
#[tokio::test]
async fn mpyc_told_to_use_tcp_ports_is_stopped_not_exposed() {
    let Some(python) = mpc_did_testkit::python(&[]) else {
        return;
    };
    let port = free_tcp_port();
    let bypass = vec![format!("-hB{}", port - 1)];
    for me in [1, 0] {
        let run = start(&python, (2, me), &bypass, &[], &[]).await;
        let (status, stderr) = finish(run, Duration::from_secs(60), || {
            let listening = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok();
            format!("party {me}, listening on TCP port {port}: {listening}")
        });
        assert_eq!(status, Some(REFUSED), "party {me}: {stderr}");
        assert!(
            stderr.contains("mpc-did: stopped: MPyC would")
                && stderr.contains("spec/security.md §10"),
            "party {me}: {stderr}"
        );
    }
}

/// A config file (`-C`, which MPyC prefers to every `-P`) makes MPyC dial a stranger over
/// plain TCP and hand it its PRSS keys: stopped before it connects. The program's own
/// listeners and connections are not MPyC's and still work.
#[tokio::test]
async fn mpyc_told_to_dial_a_tcp_address_is_stopped_before_connecting() {
    let Some(python) = mpc_did_testkit::python(&[]) else {
        return;
    };
    let stranger = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    stranger.set_nonblocking(true).unwrap();
    let addr = stranger.local_addr().unwrap();
    let own = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    own.set_nonblocking(true).unwrap();
    let ini = format!(
        "[Party 0]\nhost =\nport =\n[Party 1]\nhost = 127.0.0.1\nport = {}\n",
        addr.port()
    );
    let files = [(".config/parties.ini", ini)];
    let env = [("OWN_TCP_PORT", own.local_addr().unwrap().port().to_string())];
    let crafted = vec!["-hCparties.ini".to_owned()];
    let run = start(&python, (2, 0), &crafted, &files, &env).await;
    let (status, stderr) = finish(run, Duration::from_secs(60), || {
        let dialled = stranger.accept().is_ok();
        format!("MPyC connected to the stranger's TCP port: {dialled}")
    });
    assert!(
        stranger.accept().is_err(),
        "MPyC connected to {addr} over TCP"
    );
    assert!(
        own.accept().is_ok(),
        "the program's own connection was refused"
    );
    assert!(
        stderr.contains("own listener made"),
        "the program's own listener was refused: {stderr}"
    );
    assert_eq!(status, Some(REFUSED), "{stderr}");
    assert!(
        stderr.contains(&format!("connect over TCP to 127.0.0.1:{}", addr.port())),
        "{stderr}"
    );
}
