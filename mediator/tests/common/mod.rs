//! Shared helpers: run the real `mpc-did-mediator` binary, put a TLS proxy in front of a
//! mediator, wait for what the mediator reports (queue length, live sessions). Identities
//! and clients come from the workspace test kit (`mpc-did-testkit`).
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use std::time::Duration;

use mpc_did_agent::client::MediatorClient;
use mpc_did_resolver::key;
use mpc_did_testkit::mediator::Identity;
use mpc_did_testkit::wait_until_async;

/// A running mediator process (killed with SIGKILL on drop).
pub struct MediatorProc {
    pub child: Child,
    pub addr: String,
    /// The operator listener (`/metrics`, `/readyz`).
    pub admin: String,
    pub did: String,
    pub invitation_url: String,
    /// The relay mesh listener, when the instance is in a mesh.
    pub relay_mesh: Option<String>,
}

impl MediatorProc {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_config(data, extra, None)
    }

    pub fn start_with_config(data: &Path, extra: &[&str], config: Option<&Path>) -> Self {
        Self::start_at("127.0.0.1:0", data, extra, config)
    }

    /// On a given public address (e.g. the one of an instance that was stopped).
    pub fn start_at(listen: &str, data: &Path, extra: &[&str], config: Option<&Path>) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpc-did-mediator"));
        cmd.args(["--listen", listen, "--log", "warn", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad startup line {line:?}: {e}"));
        Self {
            child,
            addr: v["addr"].as_str().unwrap().to_owned(),
            admin: v["admin"].as_str().unwrap().to_owned(),
            did: v["did"].as_str().unwrap().to_owned(),
            invitation_url: v["invitation_url"].as_str().unwrap().to_owned(),
            relay_mesh: v["relay_mesh"].as_str().map(str::to_owned),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL of the operator listener (metrics are not on the public port).
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// SIGKILL, no drain.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait: graceful drain.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for MediatorProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for a fresh identity at the mediator `url` (not registered).
pub async fn client(url: &str) -> MediatorClient {
    mpc_did_testkit::mediator::client(url, Identity::generate()).await
}

/// How long the waits below poll before they give up.
pub const SETTLE: Duration = Duration::from_secs(10);

/// Waits (at most [`SETTLE`]) until `c`'s mediator reports `n` messages queued for it
/// (spec/mediator.md §5: an acknowledgement deletes); `false` if it never does.
pub async fn wait_queued(c: &MediatorClient, n: u64) -> bool {
    wait_until_async(
        || async { c.status().await.unwrap()["message_count"] == n },
        SETTLE,
    )
    .await
}

/// Waits (at most [`SETTLE`]) until the mediator whose operator listener is `url` has at least `n` WebSocket
/// sessions in live-delivery mode (its `/metrics`): from then on a message sent to their
/// DID is pushed, not only queued; `false` if it never does.
pub async fn wait_live_sessions(url: &str, n: u64) -> bool {
    wait_until_async(
        || async { metric(url, "mpcdid_mediator_live_sessions").await >= n },
        SETTLE,
    )
    .await
}

/// A registered recipient A and a sender B who knows A's DID document and mediator, both
/// fresh identities at the mediator `url` (the opening of most tests).
pub async fn registered_pair(url: &str) -> (MediatorClient, MediatorClient) {
    let a = client(url).await;
    a.register().await.unwrap();
    let b = client(url).await;
    introduce(&b, &a);
    (a, b)
}

/// A sample (`name value`, no labels) from `/metrics` of the operator listener at `url`.
pub async fn metric(url: &str, name: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

/// Makes `sender` know `recipient`'s DID document with its mediator service (what an
/// invitation or a roster tells a sender in the real flow).
pub fn introduce(sender: &MediatorClient, recipient: &MediatorClient) {
    let mut doc = key::resolve(&recipient.did).unwrap();
    doc.service
        .push(recipient.info.service_for(&recipient.did).to_service());
    sender.resolver().insert(doc);
}

/// A TLS proxy on loopback in front of `backend` with a fresh self-signed certificate for
/// `localhost`; returns its port and the certificate (DER) to trust.
pub async fn tls_front(backend: &str) -> (u16, Vec<u8>) {
    use std::sync::Arc;
    let backend = backend.to_owned();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_der = ck.cert.der().to_vec();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert_der.clone().into()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, backend) = (acceptor.clone(), backend.clone());
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut up = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (port, cert_der)
}
