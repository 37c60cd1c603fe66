//! What the MPyC end-to-end benches (`mpyc`, `regions`) share: finding Python and our
//! programs, reading MPyC's own figures from its log, and running the parties of one
//! computation in session mode through their proxies.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpc_did_driver::{PartyTransport, SessionHandle, CLOSE_DONE};
use mpc_did_proxy::launch::{find_python, run_program, Output, Program};
use mpc_did_proxy::{PartyId, Proxy, ProxyConfig};

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

/// Run `prog` once in session mode: party `i` is an MPyC process behind its own loopback
/// proxy, whose streams go into the sessions of `maps[i]` (peer id → session).
pub async fn run_parties(
    maps: Vec<BTreeMap<PartyId, SessionHandle>>,
    python: &Path,
    prog: &str,
    args: &[String],
) -> Timing {
    let parties = u16::try_from(maps.len()).unwrap();
    let start = Instant::now();
    let mut runs = Vec::new();
    for (i, sessions) in maps.into_iter().enumerate() {
        let me = u16::try_from(i).unwrap();
        let transport = Arc::new(PartyTransport::new(me, sessions));
        let proxy = Proxy::bind(ProxyConfig::new(parties, me)).await.unwrap();
        let mut argv = vec![python.as_os_str().to_owned(), script(prog).into_os_string()];
        argv.extend(args.iter().map(Into::into));
        let program = Program {
            argv,
            output: Output::Capture,
            grace: Duration::from_secs(3),
        };
        runs.push(tokio::spawn(async move {
            let out = run_program(
                proxy,
                Arc::clone(&transport),
                program,
                std::future::pending(),
            )
            .await
            .unwrap();
            transport.close_all(CLOSE_DONE, "done").await;
            out
        }));
    }
    let mut t = Timing::default();
    for (i, r) in runs.into_iter().enumerate() {
        let out = r.await.unwrap();
        if i == 0 {
            t.draws = draws(&out.stdout);
        }
        assert!(out.status.success(), "{}", out.stderr);
        let (e, b) = parse_stop(&out.stdout);
        t.mpyc = t.mpyc.max(e);
        t.mpyc_bytes += b;
    }
    t.wall = start.elapsed();
    t
}
