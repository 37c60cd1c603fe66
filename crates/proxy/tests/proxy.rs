//! The proxy against raw sockets that behave like MPyC, and against real MPyC processes.
//!
//! The transport here is plain loopback TCP whose first two bytes name the opening party:
//! a test stand-in for the Noise session streams that authenticate the peer in mpc-did.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use mpc_did_proxy::launch::{run_program, LaunchError, Output, Program};
use mpc_did_proxy::{PartyId, PeerFailure, Proxy, ProxyConfig, ProxyError, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

struct TcpTransport {
    me: PartyId,
    listener: TcpListener,
    peers: Vec<SocketAddr>,
    /// Stands in for the session layer's "party failed" signal between the test parties.
    failures: tokio::sync::broadcast::Sender<PeerFailure>,
}

impl Transport for TcpTransport {
    type Stream = TcpStream;
    async fn open(&self, peer: PartyId) -> io::Result<TcpStream> {
        let mut s = TcpStream::connect(self.peers[usize::from(peer)]).await?;
        s.write_all(&self.me.to_le_bytes()).await?;
        Ok(s)
    }
    async fn accept(&self) -> io::Result<(PartyId, TcpStream)> {
        let (mut s, _) = self.listener.accept().await?;
        let mut id = [0; 2];
        s.read_exact(&mut id).await?;
        Ok((PartyId::from_le_bytes(id), s))
    }
    async fn peer_failure(&self) -> PeerFailure {
        let mut rx = self.failures.subscribe();
        loop {
            match rx.recv().await {
                Ok(f) if f.peer != self.me => return f,
                Ok(_) => {}
                Err(_) => std::future::pending::<()>().await,
            }
        }
    }
    async fn report_failure(&self, reason: &str) {
        let _ = self.failures.send(PeerFailure {
            peer: self.me,
            reason: reason.to_owned(),
        });
    }
}

async fn transports(m: u16) -> Vec<TcpTransport> {
    let mut listeners = Vec::new();
    for _ in 0..m {
        listeners.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap());
    }
    let peers: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let (failures, _) = tokio::sync::broadcast::channel(16);
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, listener)| TcpTransport {
            me: PartyId::try_from(i).unwrap(),
            listener,
            peers: peers.clone(),
            failures: failures.clone(),
        })
        .collect()
}

/// The `-P` entry for `party` in a proxy's MPyC arguments.
fn p_entry(args: &[String], party: usize) -> String {
    args.iter()
        .enumerate()
        .filter(|(_, a)| *a == "-P")
        .nth(party)
        .map(|(i, _)| args[i + 1].clone())
        .unwrap()
}

#[test]
fn mpyc_args_follow_mpycs_layout() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let proxy = Proxy::bind(ProxyConfig::new(3, 1)).await.unwrap();
        let args = proxy.mpyc_args();
        assert_eq!(&args[..2], ["-M3", "-I1"]);
        assert_eq!(args.iter().filter(|a| *a == "-P").count(), 3);
        // spec/security.md §10: no entry names a TCP port MPyC could listen on or dial.
        assert_eq!(p_entry(&args, 0), "mpc-did-link.invalid:1");
        assert_eq!(p_entry(&args, 1), ":-1");
        assert_eq!(p_entry(&args, 2), "mpc-did-link.invalid:2");
        assert!(proxy.link_path(2).starts_with(proxy.link_dir()));
        assert!(matches!(
            Proxy::bind(ProxyConfig::new(3, 3)).await,
            Err(ProxyError::Config { .. })
        ));
    });
}

/// Two parties; their "MPyC"s are raw sockets speaking MPyC's opening and closing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_arrive_in_order_and_close_propagates() {
    let mut ts = transports(2).await.into_iter();
    let (t0, t1) = (ts.next().unwrap(), ts.next().unwrap());
    let p0 = Proxy::bind(ProxyConfig::new(2, 0)).await.unwrap();
    let p1 = Proxy::bind(ProxyConfig::new(2, 1)).await.unwrap();
    let dial = p0.link_path(1);
    let mpyc1_socket = p1.mpyc_socket();
    let run0 = tokio::spawn(p0.run(std::sync::Arc::new(t0)));
    let run1 = tokio::spawn(p1.run(std::sync::Arc::new(t1)));

    // Party 1's MPyC listens; party 0's dials and announces id 0.
    let mpyc1 = UnixListener::bind(&mpyc1_socket).unwrap();
    let mut m0 = UnixStream::connect(&dial).await.unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    m0.write_all(&0u16.to_le_bytes()).await.unwrap();
    m0.write_all(&payload).await.unwrap();
    let (mut m1, _) = mpyc1.accept().await.unwrap();

    let mut got = vec![0; 2 + payload.len()];
    m1.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..2], &[0, 0]);
    assert_eq!(&got[2..], &payload[..]);
    m1.write_all(b"reply").await.unwrap();
    let mut reply = [0; 5];
    m0.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"reply");

    // MPyC's shutdown: the lower party closes, the higher sees EOF and closes too.
    m0.shutdown().await.unwrap();
    let mut rest = Vec::new();
    m1.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    drop(m1);
    let mut rest = Vec::new();
    m0.read_to_end(&mut rest).await.unwrap();
    drop(m0);

    let r0 = run0.await.unwrap().unwrap();
    let r1 = run1.await.unwrap().unwrap();
    assert_eq!(r0.bytes_out(), 2 + payload.len() as u64);
    assert_eq!(r1.bytes_in(), 2 + payload.len() as u64);
    assert_eq!(r0.bytes_in(), 5);
}

/// lobby spec, "party id check": a peer whose stream announces another id is dropped.
#[tokio::test]
async fn spoofed_party_id_is_refused() {
    let mut ts = transports(3).await;
    let t2 = ts.pop().unwrap();
    let peer_addr = t2.peers[2];
    let p2 = Proxy::bind(ProxyConfig::new(3, 2)).await.unwrap();
    let run = tokio::spawn(p2.run(std::sync::Arc::new(t2)));

    // The transport authenticated party 0, but its MPyC stream claims to be party 1.
    let mut s = TcpStream::connect(peer_addr).await.unwrap();
    s.write_all(&0u16.to_le_bytes()).await.unwrap();
    s.write_all(&1u16.to_le_bytes()).await.unwrap();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            ProxyError::PartyIdMismatch {
                authenticated: 0,
                announced: 1
            }
        ),
        "{err}"
    );
}

/// MPyC's Python (with numpy); `None`: skip (the test kit's policy, which fails instead
/// under `MPC_DID_REQUIRE_INTEROP=1`).
fn python() -> Option<PathBuf> {
    mpc_did_testkit::python(&["numpy"])
}

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// Three real MPyC processes, each launched by `run_program` against its own proxy;
/// party `stop_party` is interrupted (like Ctrl-C) after `stop_after`.
async fn run_three(
    program: &str,
    extra: &[&str],
    stop: Option<(usize, Duration)>,
) -> Vec<Result<mpc_did_proxy::launch::RunOutcome, LaunchError>> {
    let Some(python) = python() else {
        return Vec::new();
    };
    let m = 3;
    let mut runs = Vec::new();
    for (i, t) in transports(m).await.into_iter().enumerate() {
        let proxy = Proxy::bind(ProxyConfig::new(m, PartyId::try_from(i).unwrap()))
            .await
            .unwrap();
        let mut argv = vec![
            python.clone().into_os_string(),
            example(program).into_os_string(),
        ];
        argv.extend(extra.iter().map(Into::into));
        let program = Program {
            argv,
            output: Output::Capture,
            grace: Duration::from_secs(3),
        };
        let stop_after = stop.filter(|(p, _)| *p == i).map(|(_, d)| d);
        runs.push(tokio::spawn(async move {
            let stop = async move {
                match stop_after {
                    // The user's Ctrl-C, `d` into the run (a scheduled event, not a wait).
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            run_program(proxy, std::sync::Arc::new(t), program, stop).await
        }));
    }
    let mut outcomes = Vec::new();
    for r in runs {
        let outcome = tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("a party hung")
            .unwrap();
        outcomes.push(outcome);
    }
    outcomes
}

fn successful(
    outcomes: Vec<Result<mpc_did_proxy::launch::RunOutcome, LaunchError>>,
) -> Vec<String> {
    outcomes
        .into_iter()
        .map(|o| {
            let o = o.unwrap();
            assert!(o.status.success(), "{}", o.stdout);
            o.proxy.unwrap();
            o.stdout
        })
        .collect()
}

fn digest(output: &str) -> &str {
    output
        .lines()
        .find_map(|l| l.strip_prefix("result-digest: "))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mpyc_secret_santa_through_proxies() {
    let outs = successful(run_three("secretsanta.py", &["--people", "3", "4", "5"], None).await);
    for o in &outs {
        assert!(o.contains("valid: True"), "{o}");
        assert_eq!(digest(o), digest(&outs[0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_mpyc_large_messages_through_proxies() {
    let outs = successful(run_three("innerproduct.py", &["--length", "50000"], None).await);
    for o in &outs {
        assert!(o.contains("valid: True"), "{o}");
        assert_eq!(digest(o), digest(&outs[0]));
    }
}

/// The crate docs ("an error on either side closes both"): killing one party makes the others exit with an error instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_party_stops_the_others_with_an_error() {
    let people: Vec<String> = (3..60).map(|n| n.to_string()).collect();
    let mut extra = vec!["--people"];
    extra.extend(people.iter().map(String::as_str));
    let outcomes = run_three(
        "secretsanta.py",
        &extra,
        Some((2, Duration::from_millis(2500))),
    )
    .await;
    if outcomes.is_empty() {
        return;
    }
    let mut it = outcomes.into_iter();
    for party in 0..2 {
        let o = it.next().unwrap().unwrap();
        assert!(!o.status.success(), "party {party} should have failed");
        let failure = o.peer_failure.expect("stopped because of a peer");
        assert_eq!(failure.peer, 2);
    }
    assert!(matches!(it.next().unwrap(), Err(LaunchError::Interrupted)));
}

/// A program that does not exist is named in the error (it is looked up before `setpriv`
/// would hide the failure in its own exit status), and a program that exists runs through
/// the launcher with its exit status passed on.
#[tokio::test]
async fn launch_errors_name_the_program_and_statuses_pass_through() {
    let mut ts = transports(2).await.into_iter();
    let (t0, t1) = (ts.next().unwrap(), ts.next().unwrap());
    let proxy = Proxy::bind(ProxyConfig::new(2, 0)).await.unwrap();
    let missing = Program {
        argv: vec!["/nonexistent/python".into(), "prog.py".into()],
        output: Output::Capture,
        grace: Duration::from_secs(1),
    };
    let err = run_program(
        proxy,
        std::sync::Arc::new(t0),
        missing,
        std::future::pending(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, LaunchError::Spawn { program, .. } if program == "/nonexistent/python"),
        "{err}"
    );

    // `sh` from $PATH; its own arguments end before the proxy's `-M/-I/-P`, which become
    // $0.. of the script and are ignored.
    let proxy = Proxy::bind(ProxyConfig::new(2, 1)).await.unwrap();
    let sh = Program {
        argv: vec!["sh".into(), "-c".into(), "echo ran; exit 3".into()],
        output: Output::Capture,
        grace: Duration::from_secs(1),
    };
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        run_program(proxy, std::sync::Arc::new(t1), sh, std::future::pending()),
    )
    .await
    .expect("the launcher hung")
    .unwrap();
    assert_eq!(out.stdout, "ran\n");
    assert_eq!(out.status.code(), Some(3));
}

/// spec/security.md §10: the link directory is private to our user, holds only the
/// sockets of this run, and is gone when the proxy is.
#[tokio::test]
async fn links_live_in_a_private_directory_removed_after_the_run() {
    use std::os::unix::fs::PermissionsExt;
    let proxy = Proxy::bind(ProxyConfig::new(3, 0)).await.unwrap();
    let dir = proxy.link_dir().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    assert!(proxy.link_path(1).exists() && proxy.link_path(2).exists());
    let env = proxy.program_env().unwrap();
    let pythonpath = &env.iter().find(|(k, _)| k == "PYTHONPATH").unwrap().1;
    assert!(
        PathBuf::from(pythonpath.to_str().unwrap().split(':').next().unwrap())
            .join("sitecustomize.py")
            .is_file()
    );
    drop(proxy);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// A program that never loads the link hook (here Python in isolated mode, which ignores
/// PYTHONPATH) is stopped with an error that says why, instead of MPyC listening on a
/// TCP port or retrying its dials forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_without_the_link_hook_is_stopped_not_exposed() {
    let Some(python) = python() else { return };
    let mut ts = transports(2).await.into_iter();
    let t1 = ts.nth(1).unwrap();
    let proxy = Proxy::bind(ProxyConfig::new(2, 1)).await.unwrap();
    let program = Program {
        argv: vec![
            python.into_os_string(),
            "-I".into(),
            example("secretsanta.py").into_os_string(),
        ],
        output: Output::Capture,
        grace: Duration::from_secs(1),
    };
    let outcome = tokio::time::timeout(
        Duration::from_secs(90),
        run_program(
            proxy,
            std::sync::Arc::new(t1),
            program,
            std::future::pending(),
        ),
    )
    .await
    .expect("the launcher hung");
    match outcome {
        // MPyC as party 1 tries to listen on port -1 and fails at once.
        Ok(o) => assert!(!o.status.success(), "{}", o.stderr),
        Err(e) => assert!(matches!(e, LaunchError::HookNotLoaded { .. }), "{e}"),
    }
}

/// A link directory left by a run that was killed (SIGKILL runs no destructor) is removed
/// by the next proxy that starts in the same place; a live run's directory is not.
#[tokio::test]
async fn a_killed_runs_link_directory_is_swept_by_the_next_run() {
    let parent = tempfile::tempdir().unwrap();
    let cfg = |me| ProxyConfig {
        link_dir_parent: Some(parent.path().to_owned()),
        ..ProxyConfig::new(2, me)
    };
    let live = Proxy::bind(cfg(0)).await.unwrap();
    // What a killed run leaves: its directory, named after a pid that no longer runs.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = parent
        .path()
        .join(format!("mpc-did-{dead_pid}-0123456789abcdef"));
    std::fs::create_dir_all(stale.join("py")).unwrap();
    std::fs::write(stale.join("loaded-1"), b"").unwrap();
    let other = Proxy::bind(cfg(1)).await.unwrap();
    assert!(!stale.exists(), "the killed run's directory is still there");
    assert!(
        live.link_dir().exists(),
        "a live run's directory was removed"
    );
    drop((live, other));
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
}
