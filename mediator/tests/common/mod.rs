//! Shared helpers: run the real `mpc-did-mediator` binary, make did:key identities, put a
//! TLS proxy in front of a mediator.
#![allow(clippy::unwrap_used, dead_code)]

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use mpc_did_agent::client::{MediatorClient, MediatorInfo};
use mpc_did_didcomm::{Secret, SecretStore};
use mpc_did_resolver::{key, UniversalResolver};

/// A running mediator process (killed with SIGKILL on drop).
pub struct MediatorProc {
    pub child: Child,
    pub addr: String,
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mpc-did-mediator"));
        cmd.args(["--listen", "127.0.0.1:0", "--log", "warn", "--data"])
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
            did: v["did"].as_str().unwrap().to_owned(),
            invitation_url: v["invitation_url"].as_str().unwrap().to_owned(),
            relay_mesh: v["relay_mesh"].as_str().map(str::to_owned),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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

/// A fresh did:key identity: DID and its secrets.
pub fn identity() -> (String, SecretStore) {
    let mut seed = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let did = key::did_from_ed25519(&signing.verifying_key().to_bytes());
    let doc = key::resolve(&did).unwrap();
    let mut secrets = SecretStore::new();
    secrets.insert(
        doc.key_agreement_methods()[0].id.clone(),
        Secret::X25519(x25519_dalek::StaticSecret::from(
            key::x25519_secret_from_ed25519_seed(&seed),
        )),
    );
    secrets.insert(
        doc.authentication_methods()[0].id.clone(),
        Secret::Ed25519(signing),
    );
    (did, secrets)
}

/// A client for a fresh identity at the mediator `url`.
pub async fn client(url: &str) -> MediatorClient {
    let info = MediatorInfo::discover(url).await.unwrap();
    let (did, secrets) = identity();
    MediatorClient::new(info, &did, secrets, UniversalResolver::new().unwrap()).unwrap()
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

/// A sample (`name value`, no labels) from the mediator's `/metrics`.
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
