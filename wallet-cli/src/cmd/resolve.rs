//! `mpc-did resolve DID`: resolve a did:key or did:web and print its DID document
//! (spec/identity.md §2–3).

use std::time::Duration;

use anyhow::Context as _;
use mpc_did_resolver::{
    DidDocument, DidResolver as _, KeyFormat, UniversalResolver, WebResolverConfig,
};

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Examples:
  mpc-did resolve did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp
  mpc-did resolve did:web:example.com --json
  mpc-did resolve did:web:localhost%3A8443 --ca-cert test-ca.pem --allow-private-hosts

did:key resolves locally. did:web is fetched over HTTPS with a timeout, a 64 KiB
limit and no redirects to other hosts, from public addresses only (not loopback,
private or link-local ones unless --allow-private-hosts).")]
pub struct ResolveArgs {
    /// The DID to resolve (did:key:… or did:web:…).
    did: String,
    /// Fetch did:web over plain HTTP instead of HTTPS. Local testing only.
    #[arg(long)]
    allow_http: bool,
    /// Let did:web reach loopback, private and link-local addresses (refused by default:
    /// spec/identity.md §3.3). Local testing only.
    #[arg(long)]
    allow_private_hosts: bool,
    /// did:web fetch timeout in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
}

pub async fn run(ctx: &Ctx, a: ResolveArgs) -> anyhow::Result<()> {
    if !(a.timeout.is_finite() && a.timeout > 0.0 && a.timeout <= 600.0) {
        anyhow::bail!("--timeout must be between 0 and 600 seconds");
    }
    let config = WebResolverConfig {
        timeout: Duration::from_secs_f64(a.timeout),
        allow_http: a.allow_http,
        allow_private_hosts: a.allow_private_hosts,
        // Extra roots: the global --ca-cert (WebResolverConfig::default reads them).
        ..WebResolverConfig::default()
    };
    let resolver = UniversalResolver::with_config(config)?;
    let doc = resolver
        .resolve(&a.did)
        .await
        .with_context(|| format!("cannot resolve {}", a.did))?;
    if ctx.json {
        println!("{}", serde_json::to_string_pretty(&doc.to_json())?);
    } else {
        print_human(&doc);
    }
    Ok(())
}

fn print_human(doc: &DidDocument) {
    println!("DID document of {}", doc.id);
    println!("verification methods:");
    for vm in &doc.verification_method {
        let key = match vm.format {
            KeyFormat::Jwk => vm.key.to_jwk().to_string(),
            _ => vm.key.to_multibase(),
        };
        println!(
            "  {} ({}, {}): {}",
            vm.id,
            vm.method_type,
            vm.key.curve(),
            key
        );
    }
    for u in &doc.unsupported_methods {
        let id = u.get("id").and_then(|v| v.as_str()).unwrap_or("?");
        println!("  {id} (unsupported key type, ignored)");
    }
    for (name, refs) in [
        ("authentication", &doc.authentication),
        ("assertionMethod", &doc.assertion_method),
        ("keyAgreement", &doc.key_agreement),
    ] {
        if !refs.is_empty() {
            println!("{name}:");
            for r in refs {
                println!("  {r}");
            }
        }
    }
    let services = doc.didcomm_services();
    if !services.is_empty() {
        println!("DIDComm services:");
        for s in services {
            println!("  {} -> {}", s.id, s.uri);
            if !s.accept.is_empty() {
                println!("    accept: {}", s.accept.join(", "));
            }
            if !s.routing_keys.is_empty() {
                println!("    routingKeys: {}", s.routing_keys.join(", "));
            }
        }
    }
}
