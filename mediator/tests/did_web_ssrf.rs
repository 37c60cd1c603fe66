//! Security finding 5: a sender names its did:web in the JWE `skid`, and the mediator
//! resolves it to find the sender's key, before anything else is known about the sender.
//! A did:web on loopback must not make the mediator connect to our own host.
//! spec/identity.md §3.3.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mpc_did_didcomm::{pack_encrypted, Message, PackOptions, Secret, SecretStore};
use mpc_did_resolver::{DidDocument, PublicKey, UniversalResolver, VerificationMethod};
use mpc_did_testkit::SilentHost;

/// A did:web identity whose document exists only in our own resolver (nobody serves it).
fn web_identity(did: &str) -> (DidDocument, SecretStore) {
    let secret = x25519_dalek::StaticSecret::random_from_rng(rand_core::OsRng);
    let public = x25519_dalek::PublicKey::from(&secret);
    let kid = format!("{did}#key-x25519");
    let mut doc = DidDocument::new(did);
    doc.verification_method
        .push(VerificationMethod::json_web_key(
            &kid,
            did,
            PublicKey::X25519(public.to_bytes()),
        ));
    doc.key_agreement.push(kid.clone());
    let mut secrets = SecretStore::new();
    secrets.insert(kid, Secret::X25519(secret));
    (doc, secrets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_did_web_skid_on_loopback_is_not_fetched() {
    let canary = SilentHost::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = mpc_did_testkit::mediator::loopback_mediator(dir.path()).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let port = canary.addr.port();
    for did in [
        format!("did:web:127.0.0.1%3A{port}"),
        format!("did:web:localhost%3A{port}:mallory"),
    ] {
        let (doc, secrets) = web_identity(&did);
        let resolver = UniversalResolver::new().unwrap();
        resolver.insert(doc);
        let mut ping = Message::new(
            mpc_did_didcomm::message::new_id(),
            "https://didcomm.org/trust-ping/2.0/ping",
            serde_json::json!({"response_requested": true}),
        );
        ping.from = Some(did.clone());
        ping.to = Some(vec![m.did.clone()]);
        let packed = pack_encrypted(
            &ping,
            &m.did,
            Some(&did),
            None,
            &resolver,
            &secrets,
            &PackOptions {
                forward: false,
                ..PackOptions::default()
            },
        )
        .await
        .unwrap();
        let started = std::time::Instant::now();
        let resp = http
            .post(format!("{}/didcomm", m.public_url))
            .header("content-type", "application/didcomm-encrypted+json")
            .body(packed.message)
            .send()
            .await
            .unwrap();
        // Refused (the sender cannot be authenticated) and at once, not after a fetch.
        let status = resp.status();
        let body = resp.text().await.unwrap();
        assert_eq!(status.as_u16(), 400, "{did}: {body}");
        assert!(body.contains("e.p.msg.malformed"), "{did}: {body}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{did}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(canary.connections_before_ours().await, 0);
    m.shutdown().await;
}

/// Strangers can name any did:web as their sender, and each fetch of a silent host holds a
/// slot until the 5 s timeout: 16 such requests used to take every one of the resolver's
/// 16 slots, and an honest did:web sender on another host was refused (`Busy`) without
/// being fetched. Now one site (here the IP literal 127.0.0.1) holds at most 4 of them and
/// a did:web on another site (127.0.0.2) is still fetched (spec/mediator.md §6.1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_silent_did_web_host_cannot_take_every_fetch_slot() {
    let silent = SilentHost::start().await;
    let other = SilentHost::start_on("127.0.0.2:0").await;
    let dir = tempfile::tempdir().unwrap();
    let m = mpc_did_testkit::mediator::loopback_mediator_with(dir.path(), |c| {
        c.allow_private_did_web = true;
    })
    .await;
    let url = format!("{}/didcomm", m.public_url);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let post = |did: String| {
        let (http, url, to) = (http.clone(), url.clone(), m.did.clone());
        async move {
            let packed = pinged_from(&did, &to).await;
            http.post(url)
                .header("content-type", "application/didcomm-encrypted+json")
                .body(packed)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let port = silent.addr.port();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for n in 0..16 {
        let (req, answered) = (
            post(format!("did:web:127.0.0.1%3A{port}:{n}")),
            answered.clone(),
        );
        flood.push(tokio::spawn(async move {
            let status = req.await;
            answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            status
        }));
    }
    // Every flood request is either being fetched (held by the silent host) or answered.
    assert!(
        mpc_did_testkit::wait_until(
            || { silent.accepted() + answered.load(std::sync::atomic::Ordering::SeqCst) >= 16 },
            Duration::from_secs(10),
        )
        .await,
        "flood requests neither fetched nor answered"
    );
    assert!(silent.accepted() <= 4);
    let honest = post(format!("did:web:127.0.0.2%3A{}:alice", other.addr.port()));
    let honest = tokio::spawn(honest);
    // Either its fetch reaches the other host, or it is answered without one.
    assert!(
        mpc_did_testkit::wait_until(
            || other.accepted() > 0 || honest.is_finished(),
            Duration::from_secs(10),
        )
        .await
    );
    assert_eq!(
        other.accepted(),
        1,
        "the other host's did:web was not fetched while the silent one held the slots"
    );
    assert_eq!(honest.await.unwrap(), 400);
    for f in flood {
        assert_eq!(f.await.unwrap(), 400);
    }
    m.shutdown().await;
}

/// An authcrypt ping from the did:web `did` (its document only in our own resolver) to `to`.
async fn pinged_from(did: &str, to: &str) -> String {
    let (doc, secrets) = web_identity(did);
    let resolver = UniversalResolver::new().unwrap();
    resolver.insert(doc);
    let mut ping = Message::new(
        mpc_did_didcomm::message::new_id(),
        "https://didcomm.org/trust-ping/2.0/ping",
        serde_json::json!({"response_requested": true}),
    );
    ping.from = Some(did.to_owned());
    ping.to = Some(vec![to.to_owned()]);
    pack_encrypted(
        &ping,
        to,
        Some(did),
        None,
        &resolver,
        &secrets,
        &PackOptions {
            forward: false,
            ..PackOptions::default()
        },
    )
    .await
    .unwrap()
    .message
}
