//! `mpc-did-e3`: the evaluation matrix over e3's emulated Internet (spec/e3.md §4).
//!
//! `mpc-did-e3 matrix --quick|--full --out DIR` runs every combination of workload × size ×
//! parties × scenario × mode × repetition, each party in its own network namespace behind a
//! user-space delay line, writes one CSV row per run (`DIR/results.csv`; a failed run is a
//! row marked `failed`, never dropped) and a report with tables and PNG plots
//! (`DIR/report.md`, `DIR/*.png`, drawn by matplotlib from the project's Python).
//!
//! Owns only what it creates: namespaces (via `mpc_did_e3::Topology`), wireguard-go
//! processes and their UAPI sockets, `mpc-did-mediator` processes and their data
//! directories, MPyC processes. All of them are removed when a run
//! fails, when the matrix ends, and on Ctrl-C (SIGINT/SIGTERM: the exit status is then 130).
//!
//! Exit status: 0 when the matrix ran (even with failed runs, which the CSV marks), 1 when
//! it could not start or was cut short, 130 after an interrupt.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod matrix;
mod mediated;
mod modes;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The mpc-did evaluation environment.
#[derive(Parser, Debug)]
#[command(name = "mpc-did-e3", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the evaluation matrix (as root) and write results.csv and report.md into --out.
    #[command(after_help = "\
Examples:
  sudo cargo run --release -p mpc-did-e3 -- matrix --quick --out /tmp/e3-quick
  sudo cargo run --release -p mpc-did-e3 -- matrix --full --out eval-full --reps 3
  sudo target/release/mpc-did-e3 matrix --full --parties 3 --scenario two-near --out eval-full
  sudo target/release/mpc-did-e3 matrix --full --scenario one-region --out eval-full --resume

Modes: plain, ssl, wireguard, session-direct, didcomm-direct (public hosts), and, with the
real mediator in the public namespace, session-punched (EIM NATs), session-relay
(symmetric NATs) and didcomm-mediated.

Needs root, iproute2, iptables, wireguard-go + wireguard-tools, a Python with mpyc,
numpy, scikit-learn and matplotlib (MPC_DID_PYTHON, else the repository's .venv), and
for the mediator modes the mpc-did-mediator binary (MPC_DID_MEDIATOR, else next to this
binary: cargo build --release -p mpc-did-mediator).")]
    Matrix(MatrixArgs),
}

#[derive(clap::Args, Debug)]
struct MatrixArgs {
    /// A few minutes: low sizes, 3 and 4 parties, the two near scenarios, the modes between
    /// public hosts, once; the mediator modes for Secret Santa, 3 parties, one region.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Everything: both workloads × 3 sizes × 2/3/5/10 parties × 4 scenarios × every mode.
    #[arg(long)]
    full: bool,
    /// Repetitions per combination (default: 1 with --quick, 3 with --full).
    #[arg(long)]
    reps: Option<u32>,
    /// Only modes whose name contains one of these (e.g. --mode plain --mode wireguard).
    #[arg(long = "mode", value_name = "NAME")]
    modes: Vec<String>,
    /// Only these party counts (e.g. --parties 2 --parties 3); to split a --full run.
    #[arg(long = "parties", value_name = "N")]
    parties: Vec<usize>,
    /// Only these scenarios: one-region, two-near, two-distant, several-distant.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// Only these workload sizes: low, medium, high.
    #[arg(long = "size", value_name = "NAME")]
    sizes: Vec<String>,
    /// Only these workloads: secretsanta, cnn.
    #[arg(long = "program", value_name = "NAME")]
    programs: Vec<String>,
    /// Give up on a run after this many seconds (marked failed: timeout). The CNN's high
    /// size with 10 parties is CPU-bound for many minutes on a small machine.
    #[arg(long, default_value_t = 1800)]
    run_timeout: u64,
    /// Output directory (created). A `results.csv` already there is never overwritten.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Continue the run whose `results.csv` is in `--out`: runs already there with status
    /// ok are skipped, failed ones are done again, new rows are appended, and the report
    /// covers every row. Also how a `--full` run split by `--scenario`/`--parties`/… is put
    /// together in one directory.
    #[arg(long)]
    resume: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The parties of the mediator modes run in this process: their warnings (a peer's
    // mediator refusing messages, a lost live connection) go to stderr; `MPC_DID_LOG`
    // (`info`, `mpc_did_mpc=debug`, …) asks for more.
    let filter = tracing_subscriber::EnvFilter::try_from_env("MPC_DID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    match cli.command {
        Command::Matrix(a) => {
            if !a.quick && !a.full {
                eprintln!("mpc-did-e3: error: pick --quick or --full");
                return ExitCode::from(2);
            }
            let mut plan = matrix::Plan::new(a.full, a.reps, &a.modes, a.run_timeout);
            plan.runs.retain(|r| {
                let any =
                    |want: &[String], have: &str| want.is_empty() || want.iter().any(|w| w == have);
                (a.parties.is_empty() || a.parties.contains(&r.parties))
                    && any(&a.scenarios, r.scenario.name)
                    && any(&a.sizes, r.workload.size.name())
                    && any(&a.programs, r.workload.program.name())
            });
            if plan.runs.is_empty() {
                eprintln!(
                    "mpc-did-e3: error: no run matches --mode/--parties/--scenario/--size/--program \
                     (see --help for the names)"
                );
                return ExitCode::from(2);
            }
            match matrix::run(&plan, &a.out, a.resume) {
                Ok(()) => ExitCode::SUCCESS,
                Err(matrix::MatrixError::Interrupted) => {
                    eprintln!("mpc-did-e3: interrupted; namespaces, tunnels and processes removed");
                    ExitCode::from(130)
                }
                Err(e @ matrix::MatrixError::Exists(_)) => {
                    eprintln!("mpc-did-e3: error: {e}");
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("mpc-did-e3: error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
