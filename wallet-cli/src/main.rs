//! `mpc-did`: the command-line face of mpc-did.
//!
//! The binary only parses arguments, wires library crates together and reports; the work
//! lives in the library crates (`mpc-did-wallet`, `mpc-did-resolver`, `mpc-did-didcomm`, ...).
//! Each command group has its own module under `cmd/` that owns its clap arguments and its
//! `run` function.
//!
//! Exit status: 0 on success, 1 on any error (one line naming the cause and, where there is
//! one, what to do), 2 on a usage error (clap's own). A closed stdout (`mpc-did … | head
//! -1`) is not an error: the command exits 0 (only our stdout, see `out.rs`: a network
//! connection closed under us is an error; `pipe` still exits non-zero when the peer did not
//! acknowledge all our data).
#![forbid(unsafe_code)]
// Doc comments in this binary are its --help text, where URLs must read as plain text.
#![allow(rustdoc::bare_urls)]

mod cmd;
mod ctx;
mod out;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run secure multiparty computations with people you know only by their DID.
#[derive(Parser, Debug)]
#[command(name = "mpc-did", version, about, long_about = None)]
struct Cli {
    /// Wallet directory [default: $MPC_DID_HOME, else the platform data dir + /mpc-did].
    #[arg(long, global = true, value_name = "DIR")]
    home: Option<std::path::PathBuf>,

    /// Machine-readable JSON output instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,

    /// Also trust this root CA certificate (PEM bundle or DER) wherever a TLS connection is
    /// made: mediator (register, send, inbox, live WebSocket), relay wss://, did:web.
    /// Repeatable; added to the Mozilla roots. Also read: $MPC_DID_CA_CERT (paths separated
    /// by ':') and the wallet's own $MPC_DID_HOME/ca-certs.pem.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "MPC_DID_CA_CERT",
        value_delimiter = ':'
    )]
    ca_cert: Vec<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list, show and export identities (did:key, did:web).
    #[command(subcommand)]
    Id(cmd::id::IdCommand),
    /// Resolve a DID and print its DID document.
    Resolve(cmd::resolve::ResolveArgs),
    /// Pack and unpack DIDComm v2 messages (debugging and interop surface).
    #[command(subcommand)]
    Didcomm(cmd::didcomm::DidcommCommand),
    /// Create or decode a DIDComm Out-of-Band 2.0 invitation (URL, JSON, QR code);
    /// with --mpc ID, the invitation to an MPC session (= `mpc-did mpc invite`).
    Invite(cmd::invite::InviteArgs),
    /// Register with a DIDComm mediator and check its queue.
    #[command(subcommand)]
    Mediator(cmd::mediator::MediatorCommand),
    /// Send a DIDComm message to a DID through its mediator.
    Send(cmd::send::SendArgs),
    /// Read (and acknowledge) messages waiting at your mediator; --watch for live mode.
    Inbox(cmd::inbox::InboxArgs),
    /// Open secure sessions with peers (connect: path, setup time, RTT) and list them.
    #[command(subcommand)]
    Session(cmd::session::SessionCommand),
    /// Copy stdin to a peer and the peer's data to stdout over a secure session (netcat).
    Pipe(cmd::pipe::PipeArgs),
    /// MPC sessions: create, invite, join, host (the lobby), run the MPyC program.
    #[command(subcommand)]
    Mpc(cmd::mpc::MpcCommand),
    /// Join an MPC session from its invitation URL (same as `mpc-did mpc join`).
    Join(cmd::mpc::JoinArgs),
    /// Run the MPyC program of an MPC session (same as `mpc-did mpc run`).
    Run(cmd::mpc::run::RunArgs),
    /// Everything on one machine: mediator, N wallets, lobby, sessions, a real MPyC run.
    Demo(cmd::demo::DemoArgs),
    /// Measure per-message DIDComm against sessions (local: on this machine; peer: between
    /// two machines).
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

/// How long background work may run on after the command is done (see `main`).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn main() -> ExitCode {
    exit_quietly_on_broken_stdout();
    let cli = Cli::parse();
    // Library log lines on stderr: warnings by default (a peer's mediator refusing our
    // messages for 10 s, a lost connection to our mediator: never a silent wait); more when
    // `MPC_DID_LOG` asks (`info`: e.g. a stale or forged control message ignored;
    // `mpc_did_mpc=debug`, …; `off` for none).
    let filter = tracing_subscriber::EnvFilter::try_from_env("MPC_DID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("mpc-did: error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Work still running in the background (a blocking task, e.g. a name lookup) must not
    // keep the process from exiting once its command is done: give it a moment, then go.
    let t = std::time::Instant::now();
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    if t.elapsed() >= SHUTDOWN_GRACE {
        tracing::warn!(
            "a background task was still running {} s after the command finished; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if is_broken_pipe(&err) {
                return ExitCode::SUCCESS;
            }
            eprintln!("mpc-did: error: {}", chain(&err));
            if is_unknown_issuer(&err) {
                eprintln!(
                    "mpc-did: hint: the server's TLS certificate is not signed by a CA this \
                     machine trusts; if it comes from a private CA, pass --ca-cert FILE \
                     (or set MPC_DID_CA_CERT=FILE)"
                );
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = ctx::Ctx::new(cli.home, cli.json)?;
    ctx.install_trust(&cli.ca_cert)?;
    match cli.command {
        Command::Id(c) => cmd::id::run(&ctx, c).await,
        Command::Resolve(a) => cmd::resolve::run(&ctx, a).await,
        Command::Didcomm(c) => cmd::didcomm::run(&ctx, c).await,
        Command::Invite(a) => cmd::invite::run(&ctx, a).await,
        Command::Mediator(c) => cmd::mediator::run(&ctx, c).await,
        Command::Send(a) => cmd::send::run(&ctx, a).await,
        Command::Inbox(a) => cmd::inbox::run(&ctx, a).await,
        Command::Session(c) => cmd::session::run(&ctx, c).await,
        Command::Pipe(a) => cmd::pipe::run(&ctx, a).await,
        Command::Mpc(c) => cmd::mpc::run(&ctx, c).await,
        Command::Join(a) => cmd::mpc::run(&ctx, cmd::mpc::MpcCommand::Join(a)).await,
        Command::Run(a) => cmd::mpc::run::run_cli(&ctx, a).await,
        Command::Demo(a) => cmd::demo::run(&ctx, a).await,
        Command::Bench(c) => cmd::bench::run(&ctx, c).await,
    }
}

/// The error and its causes on one line: `outer: inner: root`.
fn chain(err: &anyhow::Error) -> String {
    err.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

/// A TLS failure because the server's chain ends in a CA we do not trust.
fn is_unknown_issuer(err: &anyhow::Error) -> bool {
    let text = format!("{err:?}");
    text.contains("UnknownIssuer") || text.contains("unknown issuer")
}

/// A reader that stops early (`mpc-did … | head -1`) is not an error: `println!` panics
/// when stdout is a closed pipe (Rust ignores SIGPIPE), so a panic hook turns exactly that
/// panic, in any thread, into exit status 0. Every other panic keeps the default report.
/// Errors returned by explicit writes (through [`out::stdout`]) are handled by
/// [`is_broken_pipe`].
fn exit_quietly_on_broken_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Whether the command failed only because our stdout was closed. Only errors marked by
/// [`out`] count: a network error of the same kind (`EPIPE` from a mediator that closed
/// while we were sending) is a failure and exits non-zero.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    out::is_stdout_closed(err)
}
