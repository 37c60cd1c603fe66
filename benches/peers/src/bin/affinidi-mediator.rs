//! Affinidi's mediator (crates.io `affinidi-messaging-mediator`, Redis backend) in its own
//! process, started through its embedding API (`MediatorBuilder`, the code path its binary's
//! `start(config_path)` routes through) with the allocator its shipped binary uses (jemalloc).
//!
//! Usage: `affinidi-mediator REDIS_URL LUA_FUNCTIONS_FILE`. Prints one line,
//! `HTTP_ENDPOINT MEDIATOR_DID`, then serves until its stdin closes.
//!
//! Configuration differences from the shipped `conf/mediator.toml`, each to keep a limit
//! from capping the benchmark (the same is done for our mediator): per-IP rate limit off
//! (every client is 127.0.0.1), queue limits raised, and the global ACL default is
//! ALLOW_ALL so that benchmark DIDs can open live WebSockets without an admin adding each.

use std::io::BufRead as _;
use std::sync::Arc;

use affinidi_messaging_mediator::builder::{MediatorBuilder, TlsMode};
use affinidi_messaging_mediator::common::config::{LimitsConfig, ProcessorsConfig, SecurityConfig};
use affinidi_messaging_mediator_common::database::config::DatabaseConfig;
use affinidi_messaging_mediator_common::secrets::backends::MemoryStore as SecretsMemoryStore;
use affinidi_messaging_mediator_common::MediatorSecrets;
use affinidi_secrets_resolver::{SecretsResolver as _, ThreadedSecretsResolver};
use affinidi_tdk::dids::{
    KeyType, OneOrMany, PeerKeyRole, PeerService, PeerServiceEndpoint, PeerServiceEndpointLong, DID,
};
use anyhow::{anyhow, Context as _};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (redis_url, lua) = match (args.get(1), args.get(2)) {
        (Some(r), Some(l)) => (r.clone(), l.clone()),
        _ => {
            return Err(anyhow!(
                "usage: affinidi-mediator REDIS_URL LUA_FUNCTIONS_FILE"
            ))
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(redis_url, lua))
}

async fn run(redis_url: String, lua: String) -> anyhow::Result<()> {
    affinidi_messaging_test_mediator::install_default_crypto_provider();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let base = format!("http://{addr}/mediator/v1");
    // The mediator's did:peer carries its HTTP and WebSocket endpoints and the `#auth`
    // service the SDK authenticates against (as the mediator-setup wizard writes it).
    let services = vec![
        PeerService {
            type_: "dm".into(),
            endpoint: PeerServiceEndpoint::Long(OneOrMany::Many(vec![
                PeerServiceEndpointLong {
                    uri: base.clone(),
                    accept: vec!["didcomm/v2".into()],
                    routing_keys: vec![],
                },
                PeerServiceEndpointLong {
                    uri: format!("ws://{addr}/mediator/v1/ws"),
                    accept: vec!["didcomm/v2".into()],
                    routing_keys: vec![],
                },
            ])),
            id: None,
        },
        PeerService {
            type_: "Authentication".into(),
            endpoint: PeerServiceEndpoint::Uri(format!("{base}/authenticate")),
            id: Some("#auth".into()),
        },
    ];
    let (did, secrets) = DID::generate_did_peer_with_services(
        vec![
            (PeerKeyRole::Verification, KeyType::Ed25519),
            (PeerKeyRole::Encryption, KeyType::X25519),
        ],
        Some(services),
    )
    .map_err(|e| anyhow!("mediator DID: {e}"))?;
    let (resolver, _task) = ThreadedSecretsResolver::new(None).await;
    resolver.insert_vec(&secrets).await;
    let resolver = Arc::new(resolver);

    let jwt = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
        .map_err(|e| anyhow!("JWT key: {e}"))?;
    let mut security = SecurityConfig::headless(resolver.clone());
    security
        .set_jwt_keys_from_pkcs8(jwt.as_ref())
        .map_err(|e| anyhow!("JWT key: {e}"))?;
    security.use_ssl = false;
    security.global_acl_default = affinidi_messaging_test_mediator::acl::allow_all();
    // The benchmark's messages are Routing 2.0 forwards, anoncrypt on the outside (as ours
    // are); Affinidi's default refuses an anonymous outer envelope, and its own switch to
    // accept one requires session-DID matching off.
    security.block_anonymous_outer_envelope = false;
    security.force_session_did_match = false;

    let limits = LimitsConfig {
        rate_limit_per_ip: 0,
        queued_send_messages_per_peer: 10_000_000,
        queued_send_messages_soft: 10_000_000,
        queued_send_messages_hard: 10_000_000,
        queued_receive_messages_soft: 10_000_000,
        queued_receive_messages_hard: 10_000_000,
        max_websocket_connections: 30_000,
        ..LimitsConfig::default()
    };

    let database = DatabaseConfig {
        functions_file: Some(lua),
        database_url: redis_url,
        ..DatabaseConfig::default()
    };
    let token = tokio_util::sync::CancellationToken::new();
    let handle = MediatorBuilder::new(resolver)
        .mediator_did(&did)
        .admin_did("did:key:z6MkpeersBenchAdminNotUsed")
        .secrets_backend(MediatorSecrets::new(Arc::new(SecretsMemoryStore::new(
            "peers-bench",
        ))))
        .secrets_backend_url("memory://(peers bench)")
        .database(database)
        .listener(listener)
        .api_prefix("/mediator/v1/")
        .security(security)
        .limits(limits)
        .processors(ProcessorsConfig::default())
        .tls(TlsMode::Plain)
        .start(token.clone())
        .await
        .map_err(|e| anyhow!("mediator start: {e}"))?;
    println!("{base} {did}");
    tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        while std::io::stdin()
            .lock()
            .read_line(&mut s)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await
    .context("stdin watcher")?;
    handle.shutdown();
    let _ = handle.join().await;
    Ok(())
}
