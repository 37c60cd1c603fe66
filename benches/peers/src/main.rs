//! Side by side with the peers (README "Side by side with the peers"; issue 17 item 8).
//!
//! `mpc-did-peers all|mediator|relay|wireguard [--quick]` measures, in one run on this
//! machine, each of our components against the project a user would pick instead:
//!
//! - `mediator`: our mediator against Affinidi's (`affinidi-messaging-mediator` with Redis,
//!   driven by its SDK `affinidi-messaging-sdk`): forward + live pickup messages/s and
//!   p50/p99 latency at 1, 10 and 100 clients, and RSS per idle live WebSocket.
//! - `relay`: our relay against iroh's (`iroh-relay`, feature `server`, its own client):
//!   throughput and round-trip time on loopback, same payload sizes, direct TCP as baseline.
//! - `wireguard`: session mode against WireGuard (`wireguard-go`) between two network
//!   namespaces (`mpc-did-e3`'s topology): stream throughput and 64-byte RTT, plain TCP
//!   between the same namespaces as baseline.
//!
//! Every comparison alternates the modes for `REPS` repetitions (5; `PEERS_REPS`
//! overrides) and prints the median and the range (min–max), and the ratio of medians
//! against the baseline measured in the same run. Child processes, Redis and namespaces
//! are removed on exit, also on failure.

mod mediator;
mod relay;
mod stats;
mod wireguard;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let what = args.first().map_or("all", String::as_str).to_owned();
    let quick = args.iter().any(|a| a == "--quick");
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(dir) = args
        .iter()
        .position(|a| a == "--child-ours")
        .and_then(|i| args.get(i + 1))
    {
        return match rt.block_on(mediator::child_ours(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: our mediator: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // rustls is built with both ring (ours, iroh) and aws-lc-rs (Affinidi's crates) here, so
    // it has no default provider until one is installed; Affinidi's own helper picks one
    // (and the JWT provider its SDK needs).
    affinidi_messaging_test_mediator::install_default_crypto_provider();
    let reps = stats::reps();
    println!(
        "# Side by side with the peers ({}; {reps} alternating repetitions; machine: {} cores)\n",
        if quick { "quick smoke run" } else { "full run" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut failed = false;
    let mut run = |name: &str, r: anyhow::Result<()>| {
        if let Err(e) = r {
            failed = true;
            println!("\n**{name}: not measured**: {e:#}\n");
            eprintln!("error: {name}: {e:#}");
        }
    };
    if what == "all" || what == "relay" {
        run("relay", rt.block_on(relay::run(reps, quick)));
    }
    if what == "all" || what == "wireguard" {
        run("wireguard", rt.block_on(wireguard::run(reps, quick)));
    }
    if what == "all" || what == "mediator" {
        run("mediator", rt.block_on(mediator::run(reps, quick)));
    }
    if !["all", "relay", "wireguard", "mediator"].contains(&what.as_str()) {
        eprintln!("usage: mpc-did-peers [all|mediator|relay|wireguard] [--quick]");
        return ExitCode::FAILURE;
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
