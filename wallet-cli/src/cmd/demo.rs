//! `mpc-did demo [--parties N] [--program secretsanta|innerproduct]`: the whole system on
//! one machine, for real: an in-process mediator on loopback, N party wallets in a
//! temporary directory, the lobby over DIDComm, a secure session between every pair, and
//! an unmodified MPyC program through them; then the same program over MPyC's own plain
//! TCP, and a comparison.
//!
//! Nothing is simulated: each party is a separate wallet and identity talking to the
//! mediator over HTTP/WebSocket, and each MPyC party is its own Python process that sees
//! only its local proxy. Everything (wallets, mediator store, programs) lives in a temp
//! directory removed at the end, also on Ctrl-C.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_mediator::{Config, Mediator};
use mpc_did_proxy::launch::{self, Output};
use mpc_did_resolver::UniversalResolver;
use mpc_did_wallet::{Method, Wallet};

use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};

use mpc_did_mpc::party::secrets;
use mpc_did_mpc::run::{run_party, RunSpec, RunTransport};
use mpc_did_mpc::{lobby, PathPolicy};

use crate::cmd::mpc::invitation_url;
use crate::ctx::Ctx;

/// The example programs, embedded so that the demo runs from any directory.
const SECRETSANTA: &str = include_str!("../../../examples/secretsanta.py");
const INNERPRODUCT: &str = include_str!("../../../examples/innerproduct.py");

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Python: $MPC_DID_PYTHON, else ./.venv/bin/python, else python3 if `import mpyc` works, else
a venv created once under the user cache dir (pip install mpyc==0.11 numpy).")]
pub struct DemoArgs {
    /// Number of parties (2 to 8).
    #[arg(long, default_value_t = 3)]
    pub parties: u16,
    /// Which example: secretsanta (many small messages) or innerproduct (large messages).
    #[arg(long, default_value = "secretsanta")]
    pub program: String,
    /// Skip the plain-TCP comparison run.
    #[arg(long)]
    pub no_compare: bool,
}

fn example(name: &str) -> anyhow::Result<(&'static str, &'static str, Vec<String>)> {
    match name.trim_end_matches(".py") {
        "secretsanta" => Ok((
            "secretsanta.py",
            SECRETSANTA,
            vec![
                "--people".into(),
                "3".into(),
                "4".into(),
                "5".into(),
                "6".into(),
            ],
        )),
        "innerproduct" => Ok((
            "innerproduct.py",
            INNERPRODUCT,
            vec!["--length".into(), "100000".into()],
        )),
        other => anyhow::bail!("unknown program {other:?}: secretsanta or innerproduct"),
    }
}

pub async fn run(_ctx: &Ctx, a: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (2..=8).contains(&a.parties),
        "--parties must be 2 to 8 for the demo"
    );
    let example = example(&a.program)?;
    let python = find_python().await?;
    let dir = tempfile::Builder::new().prefix("mpc-did-demo-").tempdir()?;
    let result = tokio::select! {
        r = demo(dir.path(), &python, a.parties, example, !a.no_compare) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    drop(dir);
    result
}

/// MPyC's closing log line: "Stop MPyC -- elapsed time: 0:00:01.234|bytes sent: 5678".
#[must_use]
pub fn parse_stop(log: &str) -> Option<(Duration, u64)> {
    let line = log.lines().find(|l| l.contains("Stop MPyC"))?;
    let t = line.split("elapsed time: ").nth(1)?.split('|').next()?;
    let secs = t
        .split(':')
        .map(|x| x.trim().parse::<f64>().ok())
        .try_fold(0.0, |acc, x| x.map(|x| acc * 60.0 + x))?;
    let bytes = line.split("bytes sent: ").nth(1)?.trim().parse().ok()?;
    Some((Duration::from_secs_f64(secs.max(0.0)), bytes))
}

/// MPyC's log lines start with a timestamp (`2026-01-01 12:00:00,123 ...`).
fn is_log(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() > 10 && b.iter().take(4).all(u8::is_ascii_digit) && b.get(4) == Some(&b'-')
}

async fn demo(
    dir: &Path,
    python: &Path,
    n: u16,
    (name, source, args): (&str, &str, Vec<String>),
    compare: bool,
) -> anyhow::Result<()> {
    let program = dir.join(name);
    std::fs::write(&program, source)?;
    println!("== mpc-did demo: {n} parties run {name} {}", args.join(" "));
    println!("   workspace: {} (removed at the end)", dir.display());

    // The relay too, as a public mediator serves it: sessions fall back to it when no
    // direct path works (on loopback the direct path always does).
    let relay = RelayService::bind(RelayServiceConfig::default())
        .await
        .context("cannot start the in-process relay")?;
    let mediator = Mediator::builder(Config {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        data: dir.join("mediator"),
        ..Config::default()
    })
    .service(relay)
    .start()
    .await
    .context("cannot start the in-process mediator")?;
    println!("-- mediator {} on {}", mediator.did, mediator.public_url);

    let mut ctxs = Vec::new();
    for i in 0..n {
        let ctx = Ctx {
            home: dir.join(format!("party{i}")),
            json: false,
        };
        let did = create_party(&ctx, &format!("party{i}"), &mediator.public_url).await?;
        println!("   wallet party{i}: {did}");
        ctxs.push(ctx);
    }

    println!("-- lobby (DIDComm through the mediator)");
    let coordinator = ctxs.first().context("no parties")?.clone();
    let rec = lobby::new_session(
        &coordinator.home,
        None,
        n,
        &program,
        args,
        Duration::from_secs(600),
    )?;
    let sid = rec.id().to_string();
    let (inv, url) = invitation_url(&coordinator, Some(&sid), None)?;
    println!(
        "   party0 created MPC session {sid}; invitation: {}…",
        url.get(..60).unwrap_or(&url)
    );
    let lobby_t = Instant::now();
    let mut lobbies = tokio::task::JoinSet::new();
    {
        let ctx = coordinator.clone();
        let sid = sid.clone();
        lobbies.spawn(async move {
            let p = |s: String| println!("   party0: {s}");
            lobby::host(&ctx.home, Some(&sid), Duration::from_secs(120), &p)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        });
    }
    for (i, ctx) in ctxs.iter().enumerate().skip(1) {
        let (ctx, inv, program) = (ctx.clone(), inv.clone(), program.clone());
        lobbies.spawn(async move {
            let p = move |s: String| println!("   party{i}: {s}");
            let rec = lobby::join(
                &ctx.home,
                &inv,
                &program,
                None,
                Duration::from_secs(120),
                &p,
            )
            .await?;
            println!(
                "   party{i}: roster received and checked: I am party {}",
                rec.party.unwrap_or_default()
            );
            Ok(())
        });
    }
    while let Some(r) = lobbies.join_next().await {
        r.context("a lobby task failed")??;
    }
    let lobby_time = lobby_t.elapsed();
    println!("   lobby done in {:.2} s", lobby_time.as_secs_f64());

    println!("-- secure sessions (Noise over direct TCP on loopback) and the MPyC run");
    let mut runs = tokio::task::JoinSet::new();
    for ctx in &ctxs {
        let (ctx, sid, program) = (ctx.clone(), sid.clone(), program.clone());
        let argv: Vec<OsString> = vec![python.into(), program.clone().into()];
        runs.spawn(async move {
            let p = |s: String| println!("   {s}");
            run_party(
                &ctx.home,
                RunSpec {
                    mpc: Some(sid),
                    program: Some(program),
                    listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                    connect_timeout: Duration::from_secs(60),
                    resume_timeout: Duration::from_secs(30),
                    // All on loopback: the direct path always works, and the in-process
                    // mediator serves no STUN to learn a public address from.
                    paths: PathPolicy {
                        no_quic: true,
                        ..PathPolicy::default()
                    },
                    command: argv,
                    output: Output::Capture,
                    transport: RunTransport::Session,
                },
                // The demo's own Ctrl-C handler removes everything.
                std::future::pending(),
                &p,
            )
            .await
        });
    }
    let mut results = Vec::new();
    while let Some(r) = runs.join_next().await {
        results.push(r.context("a party task failed")??);
    }
    results.sort_by_key(|r| r.me);

    println!("-- results");
    let mut digests = Vec::new();
    let mut failed = false;
    for r in &results {
        for line in r.outcome.stdout.lines().filter(|l| !is_log(l)) {
            println!("   [party {}] {line}", r.me);
        }
        if !r.outcome.status.success() {
            failed = true;
            println!("   [party {}] exited with {}", r.me, r.outcome.status);
            for line in r
                .outcome
                .stderr
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                println!("   [party {}] {line}", r.me);
            }
        }
        digests.push(
            r.outcome
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("result-digest: "))
                .map(str::to_owned),
        );
    }
    anyhow::ensure!(!failed, "the MPC run failed");
    let agree = digests.first().is_some_and(|d| d.is_some())
        && digests.windows(2).all(|w| w.first() == w.get(1));
    let valid = results
        .iter()
        .all(|r| r.outcome.stdout.lines().any(|l| l == "valid: True"));
    println!(
        "   all {n} parties agree on the result: {}; valid: {}",
        if agree { "yes" } else { "NO" },
        valid
    );
    anyhow::ensure!(
        agree && valid,
        "the parties' results disagree or are invalid"
    );

    let session_wall = results.iter().map(|r| r.wall).max().unwrap_or_default();
    let setup = results
        .iter()
        .map(|r| r.sessions_setup)
        .max()
        .unwrap_or_default();
    let (mut s_mpyc, mut s_bytes, mut s_wire) = (Duration::ZERO, 0u64, 0u64);
    for r in &results {
        if let Some((e, b)) = parse_stop(&r.outcome.stdout) {
            s_mpyc = s_mpyc.max(e);
            s_bytes += b;
        }
        if let Ok(rep) = &r.outcome.proxy {
            s_wire += rep.bytes_out();
        }
    }
    mediator.shutdown().await;

    if !compare {
        return Ok(());
    }
    println!("-- the same program over MPyC's plain TCP (no mpc-did), for comparison");
    let argv: Vec<String> = rec.offer.mpyc_args.clone();
    let plain = run_plain(python, &program, &argv, n).await?;
    println!();
    println!("| mode | setup | program wall time | MPyC elapsed | MPyC bytes sent |");
    println!("|---|---|---|---|---|");
    println!(
        "| plain TCP (MPyC alone) | - | {:.3} s | {:.3} s | {} |",
        plain.0.as_secs_f64(),
        plain.1.as_secs_f64(),
        plain.2
    );
    println!(
        "| mpc-did sessions (Noise, proxy) | lobby {:.2} s + sessions {:.2} s | {:.3} s | {:.3} s | {} (proxy carried {}) |",
        lobby_time.as_secs_f64(),
        setup.as_secs_f64(),
        session_wall.as_secs_f64(),
        s_mpyc.as_secs_f64(),
        s_bytes,
        s_wire
    );
    println!(
        "\nSession mode adds per-message encryption and one local hop per party; \
         setup is a one-time cost per MPC session."
    );
    Ok(())
}

/// A wallet with one did:key identity registered at the mediator; returns its DID.
async fn create_party(ctx: &Ctx, name: &str, mediator_url: &str) -> anyhow::Result<String> {
    let id = {
        let wallet = Wallet::open(&ctx.home)?;
        wallet.create_identity(name, Method::Key)?
    };
    let info = MediatorInfo::discover(mediator_url).await?;
    let client = MediatorClient::new(
        info.clone(),
        &id.did,
        secrets(&id),
        UniversalResolver::new()?,
    )?;
    client
        .register()
        .await
        .context("registering with the mediator")?;
    let wallet = Wallet::open(&ctx.home)?;
    wallet.set_identity_services(&id.name, vec![info.service_for(&id.did)])?;
    wallet.set_mediator(&id.name, &info)?;
    if wallet.default_identity().is_err() {
        wallet.set_default_identity(&id.name)?;
    }
    Ok(id.did)
}

/// Run the program as N plain MPyC parties on loopback; (wall, max MPyC elapsed, bytes).
async fn run_plain(
    python: &Path,
    program: &Path,
    args: &[String],
    n: u16,
) -> anyhow::Result<(Duration, Duration, u64)> {
    let mut ports = Vec::new();
    for _ in 0..n {
        let l = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        ports.push(l.local_addr()?.port());
    }
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..n {
        let mut cmd = tokio::process::Command::new(python);
        cmd.arg(program)
            .args(args)
            .arg(format!("-M{n}"))
            .arg(format!("-I{i}"));
        for p in &ports {
            cmd.arg("-P").arg(format!("127.0.0.1:{p}"));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        children.push(cmd.spawn().context("starting python")?);
    }
    let (mut mpyc, mut bytes) = (Duration::ZERO, 0);
    for c in children {
        let out = tokio::time::timeout(Duration::from_secs(300), c.wait_with_output())
            .await
            .context("the plain run hung")??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        anyhow::ensure!(
            out.status.success(),
            "plain MPyC run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((e, b)) = parse_stop(&stdout) {
            mpyc = mpyc.max(e);
            bytes += b;
        }
    }
    Ok((start.elapsed(), mpyc, bytes))
}

/// A Python with MPyC: `$MPC_DID_PYTHON`, `./.venv/bin/python`, `python3`, the cached
/// venv (through [`launch::find_python`], with numpy, which innerproduct needs); else create
/// that venv (once) with `pip install mpyc==0.11 numpy`, saying so.
///
/// # Errors
/// `$MPC_DID_PYTHON` names an unusable Python, no python3 to create the venv with, or pip
/// failed.
pub async fn find_python() -> anyhow::Result<PathBuf> {
    let cache = dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("mpc-did")
        .join("venv");
    let venv_python = cache.join("bin").join("python");
    let candidates = vec![
        PathBuf::from(".venv/bin/python"),
        PathBuf::from("python3"),
        venv_python.clone(),
    ];
    // A few `python -c import` runs at start-up: blocking is fine here.
    if let Some(p) = launch::find_python(&candidates, &["numpy"])? {
        return Ok(p);
    }
    println!(
        "-- `import mpyc` failed with every Python found; creating a venv at {} with \
         `pip install mpyc==0.11 numpy` (once; cached for later runs)",
        cache.display()
    );
    let status = tokio::process::Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&cache)
        .status()
        .await
        .context("python3 not found: install Python 3.10+ or set MPC_DID_PYTHON")?;
    anyhow::ensure!(
        status.success(),
        "python3 -m venv {} failed",
        cache.display()
    );
    let status = tokio::process::Command::new(&venv_python)
        .args(["-m", "pip", "install", "--quiet", "mpyc==0.11", "numpy"])
        .status()
        .await
        .context("running pip")?;
    anyhow::ensure!(status.success(), "pip install mpyc==0.11 numpy failed");
    anyhow::ensure!(
        launch::find_python(std::slice::from_ref(&venv_python), &["numpy"])?.is_some(),
        "the new venv at {} still cannot import mpyc",
        cache.display()
    );
    Ok(venv_python)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_mpyc_stop_line() {
        let log = "2026-01-01 00:00:00,000 Start MPyC runtime v0.11\n\
                   2026-01-01 00:00:01,500 Stop MPyC -- elapsed time: 0:01:02.5|bytes sent: 12345\n";
        let (t, b) = parse_stop(log).unwrap();
        assert_eq!(b, 12345);
        assert!((t.as_secs_f64() - 62.5).abs() < 1e-9);
        assert!(parse_stop("no such line").is_none());
        assert!(is_log("2026-01-01 00:00:00,000 Start"));
        assert!(!is_log("valid: True"));
    }
}
