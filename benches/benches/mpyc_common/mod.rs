//! What the MPyC end-to-end benches (`mpyc`, `regions`) share: finding Python and our
//! programs, reading MPyC's own figures from its log, and running the parties of one
//! computation in session mode through their proxies (`mpc_did_mpc::run`, as `mpc-did run`
//! does).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mpc_did_driver::SessionHandle;
use mpc_did_proxy::launch::{find_python, Output};
use mpc_did_proxy::PartyId;

/// A Python with mpyc (and numpy, which our programs use): `MPC_DID_PYTHON`, the repo's
/// `.venv`, or one on `PATH`.
pub fn python() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    find_python(&[venv], &["numpy"]).unwrap()
}

/// One of our MPyC programs under `examples/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// MPyC's "Stop MPyC -- elapsed time: 0:00:01.234|bytes sent: 5678".
pub fn parse_stop(log: &str) -> (Duration, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("Stop MPyC"))
        .unwrap_or_default();
    let elapsed = line
        .split("elapsed time: ")
        .nth(1)
        .and_then(|r| r.split('|').next())
        .map(|t| {
            let parts: Vec<f64> = t.split(':').filter_map(|x| x.trim().parse().ok()).collect();
            parts.iter().fold(0.0, |acc, x| acc * 60.0 + x)
        })
        .unwrap_or_default();
    let bytes = line
        .split("bytes sent: ")
        .nth(1)
        .and_then(|b| b.trim().parse().ok())
        .unwrap_or_default();
    (Duration::from_secs_f64(elapsed), bytes)
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// What one run of a computation measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    /// Launch to the last party's exit.
    pub wall: Duration,
    /// The largest of the parties' own "elapsed time" (connected → shutdown).
    pub mpyc: Duration,
    /// MPyC's own "bytes sent", summed over the parties.
    pub mpyc_bytes: u64,
    /// secretsanta's draws (the `attempts=` it prints per group, summed; party 0's log).
    pub draws: u64,
}

/// The sum of the `attempts=N` secretsanta prints, one per group.
pub fn draws(log: &str) -> u64 {
    log.split("attempts=")
        .skip(1)
        .filter_map(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Party `me` in session mode: its MPyC process behind its own loopback proxy, whose streams
/// go into `sessions` (peer id → session), through `mpc_did_mpc::run::run_over_sessions`;
/// returns MPyC's stdout (panics, with its stderr, if it failed).
pub async fn run_party(
    me: PartyId,
    sessions: BTreeMap<PartyId, SessionHandle>,
    python: &Path,
    prog: &str,
    args: &[String],
) -> String {
    let mut argv = vec![python.as_os_str().to_owned(), script(prog).into_os_string()];
    argv.extend(args.iter().map(Into::into));
    let out = mpc_did_mpc::run::run_over_sessions(
        me,
        sessions,
        argv,
        Output::Capture,
        std::future::pending(),
    )
    .await
    .unwrap();
    assert!(out.status.success(), "party {me}: {}", out.stderr);
    out.stdout
}

/// Fold the parties' logs (party 0 first) into one [`Timing`] (`wall` left for the caller).
pub fn timing(logs: &[String]) -> Timing {
    let mut t = Timing::default();
    for (i, log) in logs.iter().enumerate() {
        if i == 0 {
            t.draws = draws(log);
        }
        let (e, b) = parse_stop(log);
        t.mpyc = t.mpyc.max(e);
        t.mpyc_bytes += b;
    }
    t
}

/// Run `prog` once in session mode with every party in this runtime: party `i`'s sessions
/// are `maps[i]` (see [`run_party`]).
pub async fn run_parties(
    maps: Vec<BTreeMap<PartyId, SessionHandle>>,
    python: &Path,
    prog: &str,
    args: &[String],
) -> Timing {
    let start = Instant::now();
    let mut runs = Vec::new();
    for (i, sessions) in maps.into_iter().enumerate() {
        let me = u16::try_from(i).unwrap();
        let (python, prog, args) = (python.to_owned(), prog.to_owned(), args.to_vec());
        runs.push(tokio::spawn(async move {
            run_party(me, sessions, &python, &prog, &args).await
        }));
    }
    let mut logs = Vec::new();
    for r in runs {
        logs.push(r.await.unwrap());
    }
    let mut t = timing(&logs);
    t.wall = start.elapsed();
    t
}
