//! did:web resolution against real local HTTPS servers started by each test, with a
//! self-signed CA made here and handed to the resolver as an extra root.
//! spec/identity.md §3 (did:web URL mapping, resolver limits).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mpc_did_resolver::{
    DidCommService, DidDocument, DidResolver, DocumentError, PublicKey, ResolveError,
    UniversalResolver, VerificationMethod, WebResolver, WebResolverConfig, MAX_DOCUMENT_BYTES,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the test server answers for a path.
enum Reply {
    Json(Vec<u8>),
    /// Body without Content-Length, delimited by connection close.
    Unsized(Vec<u8>),
    Redirect(String),
    Status(u16),
}

type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

struct TestServer {
    addr: SocketAddr,
    ca_pem: Vec<u8>,
    hits: Arc<AtomicUsize>,
}

/// A CA, and a leaf certificate for `localhost` and `127.0.0.1` signed by it.
fn make_pki() -> (Vec<u8>, CertificateDer<'static>, PrivateKeyDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mpc-did test CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    (
        ca.pem().into_bytes(),
        leaf.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    )
}

/// Starts an HTTP/1.1 server on 127.0.0.1 (TLS unless `plain`): reads one request, answers
/// with `handler(path)`, closes.
async fn start(handler: Handler, plain: bool) -> TestServer {
    let (ca_pem, leaf, key) = make_pki();
    let acceptor = if plain {
        None
    } else {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf], key)
        .unwrap();
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(tcp).await {
                            serve_one(tls, &handler, &counter).await;
                        }
                    }
                    None => serve_one(tcp, &handler, &counter).await,
                }
            });
        }
    });
    TestServer { addr, ca_pem, hits }
}

async fn serve_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    handler: &Handler,
    hits: &AtomicUsize,
) {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&req);
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let head = |status: &str, extra: &str| {
        format!("HTTP/1.1 {status}\r\n{extra}Connection: close\r\n\r\n").into_bytes()
    };
    let mut out = match handler(&path) {
        Reply::Json(body) => {
            let mut h = head(
                "200 OK",
                &format!(
                    "Content-Type: application/did+json\r\nContent-Length: {}\r\n",
                    body.len()
                ),
            );
            h.extend_from_slice(&body);
            h
        }
        Reply::Unsized(body) => {
            let mut h = head("200 OK", "Content-Type: application/json\r\n");
            h.extend_from_slice(&body);
            h
        }
        Reply::Redirect(to) => head(
            "302 Found",
            &format!("Location: {to}\r\nContent-Length: 0\r\n"),
        ),
        Reply::Status(code) => head(&format!("{code} Nope"), "Content-Length: 0\r\n"),
    };
    let _ = s.write_all(&out).await;
    let _ = s.shutdown().await;
    out.clear();
}

/// The test servers listen on loopback, so every resolver here opts in to private hosts
/// (the default refuses them: see `ssrf_*` below).
fn local() -> WebResolverConfig {
    WebResolverConfig::default().allowing_private_hosts()
}

fn config(server: &TestServer) -> WebResolverConfig {
    WebResolverConfig {
        timeout: Duration::from_secs(5),
        extra_roots: vec![server.ca_pem.clone()],
        ..local()
    }
}

/// A did:web document as our wallet publishes it: Ed25519 + X25519 JWKs and a DIDComm
/// service.
fn document(did: &str) -> DidDocument {
    let mut doc = DidDocument::new(did);
    let auth = format!("{did}#key-1");
    let ka = format!("{did}#key-2");
    doc.verification_method
        .push(VerificationMethod::json_web_key(
            &auth,
            did,
            PublicKey::Ed25519([9; 32]),
        ));
    doc.verification_method
        .push(VerificationMethod::json_web_key(
            &ka,
            did,
            PublicKey::X25519([8; 32]),
        ));
    doc.authentication.push(auth);
    doc.key_agreement.push(ka);
    doc.service.push(
        DidCommService {
            id: format!("{did}#didcomm"),
            uri: "https://mediator.example/didcomm".to_owned(),
            accept: vec!["didcomm/v2".to_owned()],
            routing_keys: vec!["did:web:mediator.example#key-2".to_owned()],
        }
        .to_service(),
    );
    doc
}

fn did_for(addr: SocketAddr, path: &str) -> String {
    format!("did:web:localhost%3A{}{path}", addr.port())
}

/// Serves `document(did)` at the paths did:web maps `did` to, learning the port first.
async fn serve_documents(path_suffix: &'static str) -> (TestServer, String) {
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let p = port.clone();
    let handler: Handler = Arc::new(move |path| {
        let port = *p.get().unwrap();
        let did = format!("did:web:localhost%3A{port}{path_suffix}");
        let expected = if path_suffix.is_empty() {
            "/.well-known/did.json".to_owned()
        } else {
            format!("{}/did.json", path_suffix.replace(':', "/"))
        };
        if path == expected {
            Reply::Json(serde_json::to_vec(&document(&did)).unwrap())
        } else {
            Reply::Status(404)
        }
    });
    let server = start(handler, false).await;
    port.set(server.addr.port()).unwrap();
    let did = did_for(server.addr, path_suffix);
    (server, did)
}

#[tokio::test]
async fn resolves_port_form_over_https_with_own_ca_and_caches() {
    let (server, did) = serve_documents("").await;
    let resolver = WebResolver::new(config(&server)).unwrap();
    let doc = resolver.resolve(&did).await.unwrap();
    assert_eq!(doc, document(&did));
    assert_eq!(
        doc.key_agreement_methods()[0].key,
        PublicKey::X25519([8; 32])
    );
    assert_eq!(
        doc.didcomm_services()[0].uri,
        "https://mediator.example/didcomm"
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    // Second resolution within the TTL is served from the cache.
    resolver.resolve(&did).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    resolver.clear_cache();
    resolver.resolve(&did).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn resolves_path_form_through_the_trait() {
    let (server, did) = serve_documents(":user:alice").await;
    let resolver = UniversalResolver::with_config(config(&server)).unwrap();
    let doc = DidResolver::resolve(&resolver, &did).await.unwrap();
    assert_eq!(doc.id, did);
    // A zero TTL disables the cache.
    let uncached = WebResolver::new(WebResolverConfig {
        cache_ttl: Duration::ZERO,
        ..config(&server)
    })
    .unwrap();
    uncached.resolve(&did).await.unwrap();
    uncached.resolve(&did).await.unwrap();
    assert_eq!(server.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn untrusted_certificate_is_a_transport_error() {
    let (_server, did) = serve_documents("").await;
    let resolver = WebResolver::new(local()).unwrap();
    let err = resolver.resolve(&did).await.unwrap_err();
    assert!(matches!(err, ResolveError::Http { .. }), "{err}");
}

#[tokio::test]
async fn redirect_to_another_host_is_refused_same_host_followed() {
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let p = port.clone();
    let handler: Handler = Arc::new(move |path| {
        let port = *p.get().unwrap();
        match path {
            // localhost → 127.0.0.1: same server, but another host name.
            "/.well-known/did.json" => {
                Reply::Redirect(format!("https://127.0.0.1:{port}/elsewhere/did.json"))
            }
            "/same/did.json" => Reply::Redirect("/real/did.json".to_owned()),
            "/real/did.json" => Reply::Json(
                serde_json::to_vec(&document(&format!("did:web:localhost%3A{port}:same"))).unwrap(),
            ),
            _ => Reply::Status(404),
        }
    });
    let server = start(handler, false).await;
    port.set(server.addr.port()).unwrap();
    let resolver = WebResolver::new(config(&server)).unwrap();
    let err = resolver
        .resolve(&did_for(server.addr, ""))
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::RedirectRefused { .. }), "{err}");
    let ok = resolver
        .resolve(&did_for(server.addr, ":same"))
        .await
        .unwrap();
    assert_eq!(ok.id, did_for(server.addr, ":same"));
}

#[tokio::test]
async fn oversized_documents_are_refused() {
    let big = vec![b' '; MAX_DOCUMENT_BYTES + 1];
    let b1 = big.clone();
    let handler: Handler = Arc::new(move |path| match path {
        "/sized/did.json" => Reply::Json(b1.clone()),
        _ => Reply::Unsized(b1.clone()),
    });
    let server = start(handler, false).await;
    let resolver = WebResolver::new(config(&server)).unwrap();
    // Announced by Content-Length…
    let err = resolver
        .resolve(&did_for(server.addr, ":sized"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ResolveError::TooLarge {
                max: MAX_DOCUMENT_BYTES,
                ..
            }
        ),
        "{err}"
    );
    // …and counted while streaming when there is no Content-Length.
    let err = resolver
        .resolve(&did_for(server.addr, ""))
        .await
        .unwrap_err();
    assert!(matches!(err, ResolveError::TooLarge { .. }), "{err}");
}

#[tokio::test]
async fn non_json_id_mismatch_and_status_are_typed() {
    let handler: Handler = Arc::new(|path| match path {
        "/html/did.json" => Reply::Json(b"<html>hello</html>".to_vec()),
        "/other/did.json" => {
            Reply::Json(serde_json::to_vec(&document("did:web:evil.example")).unwrap())
        }
        _ => Reply::Status(404),
    });
    let server = start(handler, false).await;
    let resolver = WebResolver::new(config(&server)).unwrap();
    let err = resolver
        .resolve(&did_for(server.addr, ":html"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ResolveError::Document {
                error: DocumentError::NotJson(_),
                ..
            }
        ),
        "{err}"
    );
    let err = resolver
        .resolve(&did_for(server.addr, ":other"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ResolveError::IdMismatch { ref found, .. } if found == "did:web:evil.example"),
        "{err}"
    );
    let err = resolver
        .resolve(&did_for(server.addr, ":missing"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ResolveError::HttpStatus { status: 404, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts TCP connections and then says nothing (not even a TLS handshake).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let resolver = WebResolver::new(WebResolverConfig {
        timeout: Duration::from_millis(500),
        ..local()
    })
    .unwrap();
    let err = resolver.resolve(&did_for(addr, "")).await.unwrap_err();
    assert!(matches!(err, ResolveError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn plain_http_only_with_the_explicit_flag() {
    let port = Arc::new(std::sync::OnceLock::<u16>::new());
    let p = port.clone();
    let handler: Handler = Arc::new(move |_| {
        let did = format!("did:web:localhost%3A{}", p.get().unwrap());
        Reply::Json(serde_json::to_vec(&document(&did)).unwrap())
    });
    let server = start(handler, true).await;
    port.set(server.addr.port()).unwrap();
    let did = did_for(server.addr, "");
    // Default: HTTPS is spoken to a plain-HTTP server, which fails (here: it waits for
    // a request line that never comes, so the 1 s timeout fires).
    let strict = WebResolver::new(WebResolverConfig {
        timeout: Duration::from_secs(1),
        ..local()
    })
    .unwrap();
    assert!(strict.resolve(&did).await.is_err());
    let plain = WebResolver::new(WebResolverConfig {
        allow_http: true,
        ..local()
    })
    .unwrap();
    assert_eq!(plain.resolve(&did).await.unwrap().id, did);
}

#[tokio::test]
async fn bad_extra_root_is_a_config_error() {
    let err = WebResolver::new(WebResolverConfig {
        extra_roots: vec![
            b"-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".to_vec(),
        ],
        ..WebResolverConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, ResolveError::Config(_)), "{err}");
}

/// A TCP listener that records the peers it accepts and never answers.
struct Canary {
    addr: SocketAddr,
    accepted: Arc<std::sync::Mutex<Vec<SocketAddr>>>,
}

async fn canary() -> Canary {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, peer)) = listener.accept().await {
            log.lock().unwrap().push(peer);
            held.push(s);
        }
    });
    Canary { addr, accepted }
}

impl Canary {
    fn count(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }

    /// Connects once ourselves and waits until that connection is accepted: accepts are
    /// in order, so any earlier connection (one the resolver made) was recorded before it.
    async fn connections_before_ours(&self) -> usize {
        let ours = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let me = ours.local_addr().unwrap();
        let position = || self.accepted.lock().unwrap().iter().position(|p| *p == me);
        assert!(
            mpc_did_testkit::wait_until(|| position().is_some(), Duration::from_secs(10)).await,
            "canary never accepted"
        );
        position().unwrap()
    }
}

/// SSRF (security finding 5): a did:web naming a loopback host, by IP literal (also in
/// the integer and hex forms URL parsing normalises to 127.0.0.1) or by a name that
/// resolves to loopback, is refused before any connection.
#[tokio::test]
async fn ssrf_loopback_hosts_are_refused_without_a_connection() {
    let c = canary().await;
    let port = c.addr.port();
    let resolver = UniversalResolver::with_config(WebResolverConfig {
        allow_http: true, // even plain HTTP, the cheapest probe, is refused
        ..WebResolverConfig::default()
    })
    .unwrap();
    for did in [
        format!("did:web:127.0.0.1%3A{port}"),
        format!("did:web:2130706433%3A{port}"),
        format!("did:web:0x7f000001%3A{port}"),
        format!("did:web:localhost%3A{port}:user:alice"),
    ] {
        let err = resolver.resolve(&did).await.unwrap_err();
        assert!(
            matches!(err, ResolveError::ForbiddenAddress { .. }),
            "{did}: {err}"
        );
    }
    assert_eq!(c.connections_before_ours().await, 0);
}

#[test]
fn public_address_classification() {
    use mpc_did_resolver::web::is_public_ip;
    for private in [
        "0.0.0.0",
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "224.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",
        "64:ff9b::a00:1",
        "2002:7f00:1::",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "2001:db8::1",
    ] {
        assert!(!is_public_ip(private.parse().unwrap()), "{private}");
    }
    for public in [
        "1.1.1.1",
        "8.8.8.8",
        "100.63.255.255",
        "100.128.0.1",
        "172.32.0.1",
        "192.169.0.1",
        "2606:4700:4700::1111",
        "::ffff:1.1.1.1",
        "64:ff9b::808:808",
    ] {
        assert!(is_public_ip(public.parse().unwrap()), "{public}");
    }
}

/// A failed resolution is remembered: the second attempt fails at once, without a
/// connection (security finding 5: a silent port must not cost 10 s per probe).
#[tokio::test]
async fn failures_are_cached_so_a_second_attempt_is_instant() {
    let c = canary().await;
    let resolver = WebResolver::new(WebResolverConfig {
        timeout: Duration::from_millis(500),
        ..local()
    })
    .unwrap();
    let did = did_for(c.addr, "");
    let err = resolver.resolve(&did).await.unwrap_err();
    assert!(matches!(err, ResolveError::Timeout { .. }), "{err}");
    let started = std::time::Instant::now();
    let err = resolver.resolve(&did).await.unwrap_err();
    assert!(matches!(err, ResolveError::RecentlyFailed { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.connections_before_ours().await, 1);
}

/// At most `max_concurrent` fetches run; one more fails at once with `Busy` rather than
/// holding another outbound socket.
#[tokio::test]
async fn concurrent_fetches_are_bounded() {
    let c = canary().await;
    let resolver = WebResolver::new(WebResolverConfig {
        timeout: Duration::from_secs(5),
        max_concurrent: 2,
        ..local()
    })
    .unwrap();
    let mut pending = Vec::new();
    for path in [":a", ":b"] {
        let r = resolver.clone();
        let did = did_for(c.addr, path);
        pending.push(tokio::spawn(async move { r.resolve(&did).await }));
    }
    assert!(
        mpc_did_testkit::wait_until(|| c.count() >= 2, Duration::from_secs(10)).await,
        "fetches never connected"
    );
    let started = std::time::Instant::now();
    let err = resolver.resolve(&did_for(c.addr, ":c")).await.unwrap_err();
    assert!(matches!(err, ResolveError::Busy { limit: 2 }), "{err}");
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(c.connections_before_ours().await, 2);
    for p in pending {
        p.abort();
    }
}
