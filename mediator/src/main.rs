//! `mpc-did-mediator`: the DIDComm v2 mediator binary. A thin wrapper around
//! [`mpc_did_mediator::Mediator`]: read the config file, apply flags (flags win), start,
//! wait for ctrl-c or SIGTERM, drain.
//!
//! Exit status: 0 after a clean shutdown, 1 if the mediator cannot start.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::services::stun::StunService;
use mpc_did_mediator::{Config, Mediator};
use mpc_did_rendezvous::net::StunServerConfig;

/// DIDComm v2 mediator: Coordinate Mediation 2.0, Routing 2.0, Pickup 3.0 (live over
/// WebSocket), Trust Ping, Discover Features, Report Problem.
///
/// Examples:
///   mpc-did-mediator --listen 127.0.0.1:8080 --data ./mediator-data
///   mpc-did-mediator --config /etc/mpc-did-mediator.toml
///   mpc-did-mediator --store redis://127.0.0.1:6379 --public-url https://mediator.example.org
#[derive(Parser, Debug)]
#[command(name = "mpc-did-mediator", version, verbatim_doc_comment)]
struct Args {
    /// TOML configuration file (see mediator/deploy/mediator.toml).
    #[arg(long, short = 'c', env = "MPC_DID_MEDIATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:8080 (port 0: any free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (sled database with queues and the mediator's key).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Store: `sled` or `redis://host:port[/db]`.
    #[arg(long)]
    store: Option<String>,
    /// URL clients reach this mediator at (the https URL behind a TLS proxy).
    #[arg(long)]
    public_url: Option<String>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `mpc_did_mediator=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Do not serve the relay (by default it is served over WebSocket at `/relay` on the
    /// HTTP port, so it works wherever the mediator works).
    #[arg(long)]
    no_relay: bool,
    /// Also serve the relay over plain TCP on this address (e.g. 0.0.0.0:3479).
    #[arg(long, value_name = "ADDR")]
    relay_tcp: Option<SocketAddr>,
    /// Serve STUN Binding over UDP and TCP on this address [default when given without a
    /// value: 0.0.0.0:3478].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "0.0.0.0:3478")]
    stun: Option<SocketAddr>,
    /// A second STUN address (another IP) announced as OTHER-ADDRESS, so clients can
    /// classify their NAT mapping (RFC 5780).
    #[arg(long, value_name = "ADDR", requires = "stun")]
    stun_alternate: Option<SocketAddr>,
    /// Most relay connections from one IPv4 address or IPv6 /64 (behind a reverse proxy
    /// every WebSocket client has the proxy's address: raise it there) [default: 32].
    #[arg(long, value_name = "N")]
    relay_max_per_ip: Option<usize>,
    /// Only DIDs with a mediation grant here may use the relay (config `relay.verify_clients`).
    #[arg(long)]
    relay_verify_clients: bool,
    /// Join the relay mesh: accept links from the other instances on this private address
    /// (config `relay.mesh.listen`; needs a Redis store and `--relay-mesh-key-file`).
    #[arg(long, value_name = "ADDR")]
    relay_mesh_listen: Option<SocketAddr>,
    /// Address the other instances dial (config `relay.mesh.advertise`) [default: the
    /// mesh listen address].
    #[arg(long, value_name = "ADDR")]
    relay_mesh_advertise: Option<SocketAddr>,
    /// File with the shared mesh key, ≥ 32 bytes (config `relay.mesh.key_file`).
    #[arg(long, value_name = "FILE")]
    relay_mesh_key_file: Option<PathBuf>,
    /// Most STUN/TCP connections from one IPv4 address or IPv6 /64 [default: 8].
    #[arg(long, value_name = "N", requires = "stun")]
    stun_tcp_max_per_ip: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // key=value fields on stderr; colours only on a terminal (journald gets plain text).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mpc-did-mediator: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("mpc-did-mediator: error: {}", chain.join(": "));
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Config::from_toml(&text).with_context(|| format!("invalid {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(d) = args.data {
        config.data = d;
    }
    if let Some(s) = args.store {
        config.store = s;
    }
    if let Some(u) = args.public_url {
        config.public_url = Some(u);
    }
    let mut builder = Mediator::builder(config.clone());
    let mut stun_addr = None;
    if let Some(primary) = args.stun {
        let mut cfg = StunServerConfig::new(primary);
        cfg.alternate = args.stun_alternate;
        if let Some(n) = args.stun_tcp_max_per_ip {
            cfg.max_tcp_per_source = n;
        }
        let stun = StunService::bind(cfg)
            .await
            .with_context(|| format!("cannot serve STUN on {primary}"))?;
        stun_addr = stun.handle().primary;
        builder = builder.service(stun);
    }
    let mut relay_tcp = None;
    let mut relay_mesh = None;
    if !args.no_relay {
        let r = &mut config.relay;
        if let Some(n) = args.relay_max_per_ip {
            r.max_clients_per_ip = n as u64;
        }
        r.verify_clients |= args.relay_verify_clients;
        if args.relay_mesh_listen.is_some() {
            r.mesh.listen = args.relay_mesh_listen;
        }
        if args.relay_mesh_advertise.is_some() {
            r.mesh.advertise = args.relay_mesh_advertise;
        }
        if args.relay_mesh_key_file.is_some() {
            r.mesh.key_file = args.relay_mesh_key_file.clone();
        }
        let store = config.store_config().map_err(anyhow::Error::msg)?;
        let relay_cfg = RelayServiceConfig {
            tcp_listen: args.relay_tcp,
            ..config
                .relay
                .service_config(&store, &config.redis_prefix)
                .map_err(anyhow::Error::msg)
                .context("invalid relay settings")?
        };
        let relay = RelayService::bind(relay_cfg)
            .await
            .context("cannot bind the relay's TCP or mesh listener")?;
        relay_tcp = relay.handle().tcp_addr();
        relay_mesh = relay.handle().mesh_addr();
        builder = builder.service(relay);
    }
    let handle = builder.start().await?;
    let relay_url = (!args.no_relay).then(|| {
        format!(
            "{}/relay",
            handle
                .public_url
                .replacen("https://", "wss://", 1)
                .replacen("http://", "ws://", 1)
        )
    });
    // One line on stdout for scripts and tests: where and who we are.
    println!(
        "{}",
        serde_json::json!({
            "addr": handle.addr.to_string(),
            "did": handle.did,
            "invitation_url": handle.invitation_url,
            "relay_url": relay_url,
            "relay_tcp": relay_tcp.map(|a| a.to_string()),
            "relay_mesh": relay_mesh.map(|a| a.to_string()),
            "stun": stun_addr.map(|a| a.to_string()),
        })
    );
    shutdown_signal().await;
    tracing::info!("shutting down: draining connections");
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
