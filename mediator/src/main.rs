//! `mpc-did-mediator`: the DIDComm v2 mediator binary. A thin wrapper around
//! [`mpc_did_mediator::Mediator`]: read the config file, apply flags (flags win), validate,
//! start, wait for ctrl-c or SIGTERM, drain (stop accepting, close live WebSockets and relay
//! connections, flush the store). SIGHUP reloads the built-in TLS certificate (the rest of
//! the configuration needs a restart) and never stops the process. `admin
//! list|revoke|purge` work on the store directly (sled: with the mediator stopped; Redis:
//! any time).
//!
//! Exit status: 0 after a clean shutdown, 1 if the mediator cannot start (or an admin
//! command fails), 75 when the store stayed unwritable for `storage_fatal_secs` (for the
//! supervisor to restart it).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::services::stun::StunService;
use mpc_did_mediator::{Config, Mediator};
use mpc_did_rendezvous::net::StunServerConfig;

/// DIDComm v2 mediator: Coordinate Mediation 2.0/3.0, Routing 2.0, Pickup 3.0/4.0 (live
/// over WebSocket), Trust Ping, Discover Features, Report Problem.
///
/// Examples:
///   mpc-did-mediator --listen 127.0.0.1:8080 --data ./mediator-data
///   mpc-did-mediator --config /etc/mpc-did-mediator.toml
///   mpc-did-mediator --store redis://127.0.0.1:6379 --public-url https://mediator.example.org
///   mpc-did-mediator --listen 0.0.0.0:443 --public-url https://mediator.example.org \
///       --tls-cert fullchain.pem --tls-key privkey.pem
///   mpc-did-mediator --config /etc/mpc-did-mediator.toml admin list
#[derive(Parser, Debug)]
#[command(name = "mpc-did-mediator", version, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
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
    /// The access log is target `access` (`info,access=warn` silences it).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log format: `text` or `json` (one object per line) [default: config `log_format`].
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Built-in TLS: PEM certificate chain (needs --tls-key; reloaded on SIGHUP and when the
    /// file changes).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Built-in TLS: PEM private key.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Operator listener (/metrics, /readyz) [default: config `admin_listen`, else
    /// 127.0.0.1 with a free port].
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Do not serve STUN even if the config file's `stun` names an address.
    #[arg(long, conflicts_with = "stun")]
    no_stun: bool,
    /// Do not serve the relay (by default it is served over WebSocket at `/relay` on the
    /// HTTP port, so it works wherever the mediator works).
    #[arg(long)]
    no_relay: bool,
    /// Also serve the relay over plain TCP on this address (e.g. 0.0.0.0:3479).
    #[arg(long, value_name = "ADDR")]
    relay_tcp: Option<SocketAddr>,
    /// Serve STUN Binding over UDP and TCP on this address [default: config `stun`; when
    /// given without a value: 0.0.0.0:3478].
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "0.0.0.0:3478")]
    stun: Option<SocketAddr>,
    /// A second STUN address (another IP) announced as OTHER-ADDRESS, so clients can
    /// classify their NAT mapping (RFC 5780).
    #[arg(long, value_name = "ADDR")]
    stun_alternate: Option<SocketAddr>,
    /// Most relay connections from one IPv4 address or IPv6 /64 (behind a reverse proxy in
    /// `trusted_proxies`, the client `X-Forwarded-For` names) [default: 32].
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
    #[arg(long, value_name = "N")]
    stun_tcp_max_per_ip: Option<usize>,
    /// STUN/UDP answers per second to one IPv4 address or IPv6 /64, burst twice that (0:
    /// unlimited; a UDP source is not proven, so this caps what a spoofed victim gets)
    /// [default: 50].
    #[arg(long, value_name = "N")]
    stun_udp_rate_per_ip: Option<u64>,
    /// STUN/UDP answers per second in all (0: unlimited) [default: 5000].
    #[arg(long, value_name = "N")]
    stun_udp_rate_total: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Operator commands on the store (uses --config / --data / --store like the server).
    /// With sled, stop the mediator first (the database is single-process).
    #[command(subcommand)]
    Admin(AdminCommand),
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// List mediated DIDs: grant time, keys, waiting messages and bytes.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a DID's mediation: remove its keys and grant, delete its waiting messages.
    Revoke {
        /// The DID.
        did: String,
    },
    /// Delete every message waiting for a DID (its grant and keys stay).
    Purge {
        /// The DID.
        did: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
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
    // The server takes SIGHUP over before any start-up work (config, store repair, Redis,
    // binding): until then SIGHUP's default action kills the process, and `systemctl
    // reload` during a (re)start would leave it dead (systemd does not restart a process
    // killed by SIGHUP). A SIGHUP that arrives early is kept and handled once serving.
    let reload = match args.command {
        Some(Command::Admin(_)) => None,
        None => match rt.block_on(async { ReloadSignal::install() }) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("mpc-did-mediator: error: cannot handle SIGHUP: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mpc-did-mediator: error: {}", chain(&e));
            return ExitCode::FAILURE;
        }
    };
    init_logging(&args.log, &config.log_format);
    let result = match (&args.command, reload) {
        (Some(Command::Admin(op)), _) => rt.block_on(admin(config, op)).map(|()| Exit::Clean),
        (None, Some(reload)) => rt.block_on(run(args, config, reload)),
        (None, None) => Err(anyhow::anyhow!("SIGHUP handler missing")),
    };
    match result {
        Ok(Exit::Clean) => ExitCode::SUCCESS,
        Ok(Exit::Storage) => ExitCode::from(75),
        Err(e) => {
            eprintln!("mpc-did-mediator: error: {}", chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// How the server stopped.
enum Exit {
    /// Signal, drain, done.
    Clean,
    /// The store stayed unwritable (exit 75).
    Storage,
}

/// The error and its causes, each cause shown once (a cause whose text the message
/// already contains is not repeated).
fn chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let t = c.to_string();
        if out.contains(&t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&t);
    }
    out
}

fn init_logging(filter: &str, format: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if format == "json" {
        tracing_subscriber::registry()
            .with(filter)
            .with(mpc_did_mediator::logging::JsonLines)
            .init();
    } else {
        // key=value fields on stderr; colours only on a terminal (journald gets plain text).
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// The config file, then flags (flags win), validated.
fn load_config(args: &Args) -> anyhow::Result<Config> {
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
    if let Some(d) = &args.data {
        config.data.clone_from(d);
    }
    if let Some(s) = &args.store {
        config.store.clone_from(s);
    }
    if let Some(u) = &args.public_url {
        config.public_url = Some(u.clone());
    }
    if let Some(f) = &args.log_format {
        config.log_format.clone_from(f);
    }
    if let (Some(c), Some(k)) = (&args.tls_cert, &args.tls_key) {
        config.tls_cert = Some(c.clone());
        config.tls_key = Some(k.clone());
    }
    if let Some(a) = args.admin_listen {
        config.admin_listen = a;
    }
    if let Some(s) = args.stun {
        config.stun = s.to_string();
    }
    if args.no_stun {
        config.stun.clear();
    }
    let name = args
        .config
        .as_ref()
        .map_or_else(|| "configuration".to_owned(), |p| p.display().to_string());
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid {name}: {e}"))?;
    Ok(config)
}

async fn admin(config: Config, op: &AdminCommand) -> anyhow::Result<()> {
    use mpc_did_mediator::store::{AnyStore, RedisStore, SledStore, Store as _};
    use mpc_did_mediator::StoreConfig;
    let store = match config.store_config().map_err(anyhow::Error::msg)? {
        StoreConfig::Sled => AnyStore::Sled(SledStore::open(&config.data).with_context(|| {
            format!(
                "cannot open the store in {} (a running mediator holds it: stop it first)",
                config.data.display()
            )
        })?),
        StoreConfig::Redis(url) => {
            AnyStore::Redis(RedisStore::connect(&url, &config.redis_prefix).await?)
        }
    };
    match op {
        AdminCommand::List { json } => {
            let entries = mpc_did_mediator::admin::list(&store).await?;
            for e in &entries {
                if *json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    println!(
                        "{}  keys={} queued={} bytes={} granted_ms={}",
                        e.did, e.keys, e.queued_messages, e.queued_bytes, e.granted_ms
                    );
                }
            }
            if !*json {
                eprintln!("{} mediated DID(s)", entries.len());
            }
        }
        AdminCommand::Revoke { did } => {
            let (had, purged) = mpc_did_mediator::admin::revoke(&store, did).await?;
            if !had {
                anyhow::bail!("{did} has no mediation grant here (nothing revoked; {purged} message(s) deleted)");
            }
            println!("revoked {did}: keys and grant removed, {purged} waiting message(s) deleted");
        }
        AdminCommand::Purge { did } => {
            let n = mpc_did_mediator::admin::purge(&store, did).await?;
            store.flush().await?;
            println!("deleted {n} waiting message(s) of {did}");
        }
    }
    Ok(())
}

async fn run(args: Args, mut config: Config, mut reload: ReloadSignal) -> anyhow::Result<Exit> {
    let mut builder = Mediator::builder(config.clone());
    let mut stun_addr = None;
    if let Some(primary) = config.stun_addr().map_err(anyhow::Error::msg)? {
        let mut cfg = StunServerConfig::new(primary);
        cfg.alternate = args.stun_alternate;
        if let Some(n) = args.stun_tcp_max_per_ip {
            cfg.max_tcp_per_source = n;
        }
        if let Some(n) = args.stun_udp_rate_per_ip {
            cfg.udp_answers_per_source = n;
            cfg.udp_burst_per_source = n.saturating_mul(2);
        }
        if let Some(n) = args.stun_udp_rate_total {
            cfg.udp_answers_total = n;
        }
        let stun = StunService::bind(cfg).await.with_context(|| {
            format!("cannot serve STUN on {primary} (set stun = \"\" or --no-stun to run without)")
        })?;
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
            "admin": handle.admin_addr.to_string(),
            "did": handle.did,
            "invitation_url": handle.invitation_url,
            "public_url": handle.public_url,
            "relay_url": relay_url,
            "relay_tcp": relay_tcp.map(|a| a.to_string()),
            "relay_mesh": relay_mesh.map(|a| a.to_string()),
            "stun": stun_addr.map(|a| a.to_string()),
        })
    );
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let exit = loop {
        tokio::select! {
            () = &mut shutdown => break Exit::Clean,
            () = reload.recv() => match handle.reload_tls() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded (other settings need a restart)"),
                Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificate not reloaded; the previous one stays in force"),
            },
            () = handle.storage_failed() => break Exit::Storage,
        }
    };
    tracing::info!("shutting down: draining connections");
    handle.shutdown().await;
    Ok(exit)
}

/// SIGHUP, taken over from its default action (exit) when installed: one delivered
/// before anyone waits is kept for the next [`ReloadSignal::recv`].
struct ReloadSignal {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl ReloadSignal {
    /// Installs the handler (needs the runtime's context).
    fn install() -> std::io::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// Completes on SIGHUP (never elsewhere). Cancel-safe: select! polls it every turn.
    async fn recv(&mut self) {
        #[cfg(unix)]
        if self.hup.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// Waits for ctrl-c or SIGTERM (then the caller drains: stop accepting, close live sockets
/// with a close frame, flush the store). SIGHUP does not stop the mediator: [`ReloadSignal`]
/// handles it (reloads the built-in TLS certificate; the rest of the config is read at start).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
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
