//! Two parties exchange DIDComm messages through a real (in-process) mediator on loopback.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mpc_did_agent::client::{ClientError, MediatorClient, MediatorInfo};
use mpc_did_agent::{expect, Agent, AgentConfig, AgentError, Hold, LiveEvent};
use mpc_did_didcomm::Message;
use mpc_did_mediator::MediatorHandle;
use mpc_did_testkit::mediator::{loopback_mediator as mediator, registered_client, Identity};
use mpc_did_testkit::wait_until;

/// A fresh party registered at `m`, its agent started.
async fn party(m: &MediatorHandle) -> Agent {
    mpc_did_testkit::mediator::registered_agent(&m.public_url)
        .await
        .0
}

const LOBBY: &str = "https://mpc-did.org/lobby/1.0/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_subscriber_with_an_authenticated_sender() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let mut inbox = bob.subscribe(LOBBY);

    let msg = Message::new("m-1", format!("{LOBBY}join"), serde_json::json!({"n": 1}));
    alice.send(bob.did(), msg).await.unwrap();
    let got = expect(&mut inbox, Duration::from_secs(10), "join", |m| {
        Some(m.clone())
    })
    .await
    .unwrap();
    assert_eq!(got.message.id, "m-1");
    assert_eq!(got.sender.as_deref(), Some(alice.did()));
    assert!(got.meta.encrypted && got.meta.authenticated);
    m.shutdown().await;
}

/// Messages that arrive before anyone subscribed are kept (not acknowledged) and handed
/// to the first matching subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_messages_wait_for_their_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    for i in 0..3 {
        let msg = Message::new(
            format!("early-{i}"),
            format!("{LOBBY}join"),
            serde_json::json!({}),
        );
        alice.send(bob.did(), msg).await.unwrap();
    }
    // The agent holds lobby messages nobody subscribed to yet (AgentConfig's default).
    assert!(
        wait_until(|| bob.held() == 3, Duration::from_secs(10)).await,
        "the 3 early messages were not held"
    );
    let mut inbox = bob.subscribe(LOBBY);
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            expect(&mut inbox, Duration::from_secs(10), "early", |m| {
                Some(m.message.id.clone())
            })
            .await
            .unwrap(),
        );
    }
    ids.sort();
    assert_eq!(ids, ["early-0", "early-1", "early-2"]);
    m.shutdown().await;
}

const SESSION: &str = mpc_did_agent::SESSION_PREFIX;

/// `n` messages of type `type_` from `stranger` to `to`, anoncrypt (no sender) unless
/// `authcrypt`, posted to `to`'s mediator 16 at a time.
async fn flood(stranger: &Agent, to: &Agent, n: usize, type_: &str, authcrypt: bool) {
    stranger
        .learn_service(to.did(), to.own_service())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        if tasks.len() >= 16 {
            tasks.join_next().await.unwrap().unwrap();
        }
        let (stranger, to, http) = (stranger.clone(), to.did().to_owned(), http.clone());
        // Ids unique across strangers (the agent drops a repeated id as a redelivery).
        let id = format!("junk-{i}-{}", stranger.did());
        let mut msg = Message::new(id, type_, serde_json::json!({"i": i}));
        msg.from = authcrypt.then(|| stranger.did().to_owned());
        msg.to = Some(vec![to.to_owned()]);
        tasks.spawn(async move {
            let c = stranger.client();
            let from = authcrypt.then_some(stranger.did());
            let packed = mpc_did_didcomm::pack_encrypted(
                &msg,
                &to,
                from,
                None,
                c.resolver(),
                c.secrets(),
                &mpc_did_didcomm::PackOptions::default(),
            )
            .await
            .unwrap();
            let uri = packed.service.unwrap().uri;
            let body = packed.message.into_bytes();
            // A stranger past the mediator's per-source quota (500 unacknowledged
            // messages, spec/security.md §11) is refused with `source-quota` until the
            // recipient acknowledges; under load the flood can outrun Bob's acks, so the
            // flooder retries like a real sender would instead of failing the test.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                match mpc_did_agent::client::post_packed(&http, &uri, body.clone()).await {
                    Ok(()) => break,
                    Err(mpc_did_agent::client::ClientError::Problem { code, .. })
                        if code.ends_with("source-quota")
                            && tokio::time::Instant::now() < deadline =>
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await; // back-off before the retry
                    }
                    Err(e) => panic!("flood message {i}: {e}"),
                }
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
}

/// Security finding 3: 1,000 anoncrypt messages of a type nobody speaks, sent by a
/// stranger who only knows Bob's DID, used to stay unacknowledged, so the mediator (which
/// pauses live delivery at 1,000 unacknowledged pushes) never pushed Bob anything again.
/// Now they are acknowledged and dropped, and a lobby message that follows is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_junk_messages_do_not_block_the_inbox() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob, stranger) = (party(&m).await, party(&m).await, party(&m).await);
    let acked_before = m.metrics().messages_acked.load(Ordering::Relaxed);
    flood(
        &stranger,
        &bob,
        1000,
        "https://junk.example/spam/1.0/x",
        false,
    )
    .await;
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let msg = Message::new("real-join", format!("{LOBBY}join"), serde_json::json!({}));
    alice.send(bob.did(), msg).await.unwrap();
    let mut inbox = bob.subscribe(LOBBY);
    let got = expect(
        &mut inbox,
        Duration::from_secs(15),
        "the lobby message",
        |m| Some(m.message.id.clone()),
    )
    .await
    .unwrap();
    assert_eq!(got, "real-join");
    // The junk was acknowledged: the mediator does not keep 1,000 unacknowledged pushes.
    assert!(
        wait_until(
            || m.metrics().messages_acked.load(Ordering::Relaxed) >= acked_before + 1000,
            Duration::from_secs(10),
        )
        .await,
        "the junk was not acknowledged"
    );
    assert_eq!(bob.held(), 0);
    m.shutdown().await;
}

/// Security finding 3 (related): junk used to push a late subscriber's early session
/// messages out of the agent's 256-entry buffer. Now early session messages are held per
/// sender, only from the roster, and junk (a stranger's session-typed authcrypt messages,
/// anoncrypt ones, unknown types) is dropped instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_does_not_evict_a_late_subscribers_session_messages() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, stranger) = (party(&m).await, party(&m).await);
    let client = registered_client(&m.public_url, Identity::generate()).await;
    let config = AgentConfig {
        hold: vec![Hold::from_senders(SESSION, [alice.did()])],
        ..AgentConfig::default()
    };
    let bob = Agent::start_with(client, config).await.unwrap();
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    for i in 0..3 {
        let msg = Message::new(
            format!("propose-{i}"),
            format!("{SESSION}propose"),
            serde_json::json!({}),
        );
        alice.send(bob.did(), msg).await.unwrap();
    }
    assert!(
        wait_until(|| bob.held() == 3, Duration::from_secs(10)).await,
        "3 proposals were not held"
    );
    flood(&stranger, &bob, 150, &format!("{SESSION}propose"), true).await;
    flood(
        &stranger,
        &bob,
        150,
        "https://junk.example/spam/1.0/x",
        false,
    )
    .await;
    // A last proposal from Alice, after the junk: once it is held, the junk was handled.
    let msg = Message::new(
        "propose-3",
        format!("{SESSION}propose"),
        serde_json::json!({}),
    );
    alice.send(bob.did(), msg).await.unwrap();
    assert!(
        wait_until(|| bob.held() == 4, Duration::from_secs(15)).await,
        "the 4th proposal was not held"
    );
    let mut inbox = bob.subscribe(SESSION);
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            expect(&mut inbox, Duration::from_secs(10), "a proposal", |m| {
                Some((m.message.id.clone(), m.sender.clone()))
            })
            .await
            .unwrap(),
        );
    }
    let alice_did = Some(alice.did().to_owned());
    assert_eq!(
        ids,
        (0..4)
            .map(|i| (format!("propose-{i}"), alice_did.clone()))
            .collect::<Vec<_>>()
    );
    assert_eq!(bob.held(), 0);
    m.shutdown().await;
}

/// `n` messages `seq-0`, `seq-1`, … of type `type_` from `from` to `to`, one after the
/// other (each accepted by `to`'s mediator before the next).
async fn send_numbered(from: &Agent, to: &Agent, n: usize, type_: &str) {
    from.learn_service(to.did(), to.own_service())
        .await
        .unwrap();
    for i in 0..n {
        let msg = Message::new(format!("seq-{i}"), type_, serde_json::json!({ "i": i }));
        from.send(to.did(), msg).await.unwrap();
    }
}

/// Read `n` messages from `inbox` and check they are `seq-0` … `seq-{n-1}` in order.
async fn expect_numbered(
    inbox: &mut tokio::sync::mpsc::Receiver<mpc_did_agent::Inbound>,
    n: usize,
) {
    for i in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(15), inbox.recv())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {n} never came"))
            .unwrap();
        assert_eq!(got.message.id, format!("seq-{i}"));
    }
}

/// spec/lobby.md §7: messages held because their subscriber was behind are handed over
/// as soon as it has room — also when no further message comes to trigger it (the
/// sender may be waiting for our answer to what we hold). Before the fix the last 40
/// stayed held until some other message arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_reach_a_subscriber_that_catches_up_with_no_new_message() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    let mut inbox = bob.subscribe(LOBBY);
    // 256 fill the subscriber's channel, 40 are held (within the 64 per sender).
    send_numbered(&alice, &bob, 296, &format!("{LOBBY}data")).await;
    assert!(
        wait_until(|| bob.held() == 40, Duration::from_secs(15)).await,
        "{} held, not 40",
        bob.held()
    );
    expect_numbered(&mut inbox, 296).await;
    assert!(wait_until(|| bob.held() == 0, Duration::from_secs(5)).await);
    m.shutdown().await;
}

/// spec/lobby.md §7, "Lossless subscribers": a lossless subscriber that is behind by far
/// more than the hold bounds (256 waiting + 64 held per sender) loses nothing and keeps
/// the order: the inbox waits for it, and the mediator keeps the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lossless_subscriber_far_behind_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob) = (party(&m).await, party(&m).await);
    let prefix = "https://mpc-did.example/test-data/1.0/";
    let mut inbox = bob.subscribe_lossless(prefix);
    send_numbered(&alice, &bob, 450, &format!("{prefix}data")).await;
    assert_eq!(
        bob.held(),
        0,
        "a lossless subscriber's messages are never held"
    );
    expect_numbered(&mut inbox, 450).await;
    m.shutdown().await;
}

/// spec/mediator.md §8 "Keep-alive and opening", spec/lobby.md §7 "Lossless subscribers":
/// while a lossless subscriber is behind, the inbox waits for it — and keeps pinging. Before,
/// it sent nothing while it waited, so a subscriber behind for longer than the mediator's
/// idle timeout (here 1 s) lost the live connection (`LiveEvent::Lost`, a re-connect and
/// everything unacknowledged pushed again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_far_behind_does_not_stop_the_keep_alive() {
    let dir = tempfile::tempdir().unwrap();
    let m = mpc_did_testkit::mediator::loopback_mediator_with(dir.path(), |c| {
        c.limits.idle_timeout_secs = 1;
    })
    .await;
    let client = registered_client(&m.public_url, Identity::generate()).await;
    let config = AgentConfig {
        keepalive: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let bob = Agent::start_with(client, config).await.unwrap();
    let alice = party(&m).await;
    let mut events = bob.live_events();
    let prefix = "https://mpc-did.example/test-data/1.0/";
    let mut inbox = bob.subscribe_lossless(prefix);
    // 256 fill the subscriber's slots; the inbox waits with the 257th.
    send_numbered(&alice, &bob, 300, &format!("{prefix}data")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    expect_numbered(&mut inbox, 300).await;
    // A connection closed meanwhile is noticed once the inbox reads again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        matches!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "the live connection was lost while the subscriber was behind"
    );
    m.shutdown().await;
}

/// A TCP proxy in front of the mediator's WebSocket whose open connections can be frozen:
/// they stay open but nothing passes any more (a connection that died without a close, as
/// after a NAT mapping expired or the mediator's host rebooted hard). Connections opened
/// after a freeze pass again.
struct FreezingProxy {
    addr: std::net::SocketAddr,
    current: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
}

impl FreezingProxy {
    async fn start(backend: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let current = Arc::new(std::sync::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let tokens = current.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let frozen = tokens.lock().unwrap().clone();
                tokio::spawn(async move {
                    let mut server = tokio::net::TcpStream::connect(backend).await.unwrap();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = frozen.cancelled() => {
                            // Keep both sockets open, pass nothing.
                            std::future::pending::<()>().await;
                        }
                    }
                });
            }
        });
        Self { addr, current }
    }

    /// Freeze the connections open now.
    fn freeze(&self) {
        let mut t = self.current.lock().unwrap();
        t.cancel();
        *t = tokio_util::sync::CancellationToken::new();
    }

    /// `client` talking to its mediator's WebSocket through this proxy.
    fn route(&self, client: &MediatorClient) -> MediatorClient {
        let mut ws = url::Url::parse(&client.info.ws).unwrap();
        ws.set_port(Some(self.addr.port())).unwrap();
        client
            .with_mediator(MediatorInfo {
                ws: ws.to_string(),
                ..client.info.clone()
            })
            .unwrap()
    }
}

/// The address of `client`'s mediator WebSocket.
fn ws_addr(client: &MediatorClient) -> std::net::SocketAddr {
    let ws = url::Url::parse(&client.info.ws).unwrap();
    let host: std::net::IpAddr = ws.host_str().unwrap().parse().unwrap();
    (host, ws.port().unwrap()).into()
}

/// spec/mediator.md §8 "Keep-alive and opening": a connection on which nothing arrives any
/// more (not even the pong to a ping) is declared lost and opened again; before the fix
/// the agent waited on it for ever and never heard of the messages queued meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_declared_lost_and_opened_again() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let alice = party(&m).await;
    let direct = registered_client(&m.public_url, Identity::generate()).await;
    let proxy = FreezingProxy::start(ws_addr(&direct)).await;
    let config = AgentConfig {
        keepalive: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let bob = Agent::start_with(proxy.route(&direct), config)
        .await
        .unwrap();
    let mut events = bob.live_events();
    proxy.freeze();
    let lost =
        mpc_did_testkit::mediator::next_live_event(&mut events, Duration::from_secs(20)).await;
    assert!(matches!(lost, LiveEvent::Lost { .. }), "{lost:?}");
    let back =
        mpc_did_testkit::mediator::next_live_event(&mut events, Duration::from_secs(20)).await;
    assert!(matches!(back, LiveEvent::Back { .. }), "{back:?}");
    // Messages flow on the new connection.
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let mut inbox = bob.subscribe(LOBBY);
    let msg = Message::new("after", format!("{LOBBY}join"), serde_json::json!({}));
    alice.send(bob.did(), msg).await.unwrap();
    let got = expect(&mut inbox, Duration::from_secs(10), "the message", |m| {
        Some(m.message.id.clone())
    })
    .await
    .unwrap();
    assert_eq!(got, "after");
    m.shutdown().await;
}

/// spec/mediator.md §8 "Keep-alive and opening": an idle, healthy connection is pinged, so
/// the mediator's idle timeout never closes it. Before the fix a mediator closed it after
/// `idle_timeout_secs` of silence and the agent reported the connection lost. Here two
/// other idle connections, opened after the agent's and one after the other, are closed
/// by that timeout while the agent's stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_kept_alive() {
    let dir = tempfile::tempdir().unwrap();
    let m = mpc_did_testkit::mediator::loopback_mediator_with(dir.path(), |c| {
        c.limits.idle_timeout_secs = 1;
    })
    .await;
    let client = registered_client(&m.public_url, Identity::generate()).await;
    let config = AgentConfig {
        keepalive: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let bob = Agent::start_with(client, config).await.unwrap();
    let mut events = bob.live_events();
    let watcher = registered_client(&m.public_url, Identity::generate()).await;
    for _ in 0..2 {
        let mut idle = watcher.live().await.unwrap();
        let closed = idle.next_batch(Duration::from_secs(20)).await;
        assert!(
            matches!(closed, Err(ClientError::Unexpected(_))),
            "the idle watcher's connection was closed: {closed:?}"
        );
    }
    assert!(
        matches!(
            events.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty)
        ),
        "the agent's connection stayed up"
    );
    m.shutdown().await;
}

/// spec/mediator.md §8 "Keep-alive and opening": opening the live connection is bounded.
/// A mediator address that accepts TCP and then says nothing used to hang `Agent::start`
/// for ever; now it fails with an error naming the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mediator_that_never_answers_fails_the_start_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let client = registered_client(&m.public_url, Identity::generate()).await;
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = mute.local_addr().unwrap();
    // Accept and hold every connection; never answer.
    let _held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            open.push(s);
        }
    });
    let url = format!("ws://{addr}/ws");
    let client = client
        .with_mediator(MediatorInfo {
            ws: url.clone(),
            ..client.info.clone()
        })
        .unwrap();
    let config = AgentConfig {
        connect_timeout: Duration::from_millis(300),
        ..AgentConfig::default()
    };
    let started = tokio::time::timeout(Duration::from_secs(30), Agent::start_with(client, config))
        .await
        .expect("the start gave up by itself");
    let e = started.unwrap_err();
    assert!(
        matches!(
            &e,
            AgentError::Client(ClientError::ConnectTimeout { url: u, .. }) if *u == url
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
    m.shutdown().await;
}

/// spec/lobby.md §7: strangers cannot use up the room held for a roster. Twelve
/// strangers flood a subscriber that does not read (its channel fills, the rest is held
/// because it is behind); a roster member's message that follows is still held and
/// reaches it. Before the fix the strangers' messages took all of MAX_HELD and the roster
/// member's was dropped and acknowledged — lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cannot_use_up_the_room_held_for_a_roster() {
    let dir = tempfile::tempdir().unwrap();
    let m = mpc_did_testkit::mediator::loopback_mediator_with(dir.path(), |c| {
        // Every party here sends from 127.0.0.1: the per-source quota is not under test.
        c.limits.max_queued_per_source = 100_000;
    })
    .await;
    let alice = party(&m).await;
    let client = registered_client(&m.public_url, Identity::generate()).await;
    let config = AgentConfig {
        hold: vec![Hold::from_senders(SESSION, [alice.did()])],
        ..AgentConfig::default()
    };
    let bob = Agent::start_with(client, config).await.unwrap();
    let mut inbox = bob.subscribe(SESSION);
    // 256 fill the channel; the rest would be held for the subscriber that is behind.
    let strangers = 12;
    let per = mpc_did_agent::MAX_HELD_PER_SENDER;
    assert!(256 + mpc_did_agent::MAX_HELD <= strangers * per);
    for _ in 0..strangers {
        let stranger = party(&m).await;
        flood(&stranger, &bob, per, &format!("{SESSION}propose"), true).await;
    }
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    // The inbox handles messages in the order the mediator pushes them: a marker Bob
    // reads shows that everything sent before it was routed.
    let marker = "https://mpc-did.example/test-marker/1.0/";
    let mut markers = bob.subscribe(marker);
    let mark = |n: u32| {
        let msg = Message::new(
            format!("mark-{n}"),
            format!("{marker}x"),
            serde_json::json!({}),
        );
        alice.send(bob.did(), msg)
    };
    mark(0).await.unwrap();
    expect(
        &mut markers,
        Duration::from_secs(30),
        "the first marker",
        |_| Some(()),
    )
    .await
    .unwrap();
    let msg = Message::new(
        "from-the-roster",
        format!("{SESSION}propose"),
        serde_json::json!({}),
    );
    alice.send(bob.did(), msg).await.unwrap();
    mark(1).await.unwrap();
    expect(
        &mut markers,
        Duration::from_secs(30),
        "the second marker",
        |_| Some(()),
    )
    .await
    .unwrap();
    let from_alice = Some(alice.did().to_owned());
    let got = expect(
        &mut inbox,
        Duration::from_secs(30),
        "the roster member's message",
        |m| (m.sender == from_alice).then(|| m.message.id.clone()),
    )
    .await
    .unwrap();
    assert_eq!(got, "from-the-roster");
    m.shutdown().await;
}

/// spec/lobby.md §7: what a `subscribe_where` subscriber does not want is routed as if
/// it had not subscribed: held (a Hold rule admits it) and not acknowledged, so the next
/// program of the same identity gets it. Before the fix a `run`'s lobby subscriber took
/// every lobby message and the joins for another MPC session were acknowledged and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_a_subscriber_does_not_want_are_delivered_again_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let alice = party(&m).await;
    let client = registered_client(&m.public_url, Identity::generate()).await;
    // AgentConfig's default holds lobby messages from any authenticated sender.
    let bob = Agent::start(client.clone()).await.unwrap();
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let mut ours = bob.subscribe_where(LOBBY, |m| m.message.body["session"] == "ours");
    for (id, session) in [("theirs-1", "theirs"), ("ours-1", "ours")] {
        let msg = Message::new(
            id,
            format!("{LOBBY}join"),
            serde_json::json!({ "session": session }),
        );
        alice.send(bob.did(), msg).await.unwrap();
    }
    let got = expect(&mut ours, Duration::from_secs(10), "our join", |m| {
        (m.message.body["session"] == "ours").then(|| m.message.id.clone())
    })
    .await
    .unwrap();
    assert_eq!(got, "ours-1");
    assert!(
        wait_until(|| bob.held() == 1, Duration::from_secs(10)).await,
        "the other join is held, not taken"
    );
    // The next program of the same identity gets it from the mediator.
    bob.stop();
    drop((bob, ours));
    assert!(
        wait_until(
            || m.metrics().live_sessions.load(Ordering::Relaxed) == 1,
            Duration::from_secs(10)
        )
        .await,
        "the first program's live connection closed"
    );
    let next = Agent::start(client).await.unwrap();
    let mut lobby = next.subscribe(LOBBY);
    let got = expect(&mut lobby, Duration::from_secs(10), "the other join", |m| {
        Some(m.message.id.clone())
    })
    .await
    .unwrap();
    assert_eq!(got, "theirs-1");
    m.shutdown().await;
}

/// spec/lobby.md §7 (de-duplication): a message id is remembered with its authenticated
/// sender. A stranger who sends first under the id of a message another party is still to
/// send us (ids travel in threads, invitations and logs) does not make us drop the real
/// one as a redelivery. Before, ids alone were remembered and the friend's message was
/// acknowledged and lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_message_under_a_friends_id_does_not_drop_the_friends() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let (alice, bob, mallory) = (party(&m).await, party(&m).await, party(&m).await);
    for from in [&alice, &mallory] {
        from.learn_service(bob.did(), bob.own_service())
            .await
            .unwrap();
    }
    let mut inbox = bob.subscribe(LOBBY);
    let type_ = format!("{LOBBY}join");
    let msg = |n: u32| Message::new("shared-id", type_.clone(), serde_json::json!({ "n": n }));
    mallory.send(bob.did(), msg(1)).await.unwrap();
    let first = expect(&mut inbox, Duration::from_secs(10), "mallory's", |m| {
        Some(m.clone())
    })
    .await
    .unwrap();
    assert_eq!(first.sender.as_deref(), Some(mallory.did()));
    alice.send(bob.did(), msg(2)).await.unwrap();
    let second = expect(&mut inbox, Duration::from_secs(10), "alice's", |m| {
        Some(m.clone())
    })
    .await
    .unwrap();
    assert_eq!(second.sender.as_deref(), Some(alice.did()));
    assert_eq!(second.message.body["n"], 2);
    m.shutdown().await;
}

/// Bob, registered at `m`, whose resolver fetches did:web documents over plain HTTP from
/// loopback (what a did:web host on the Internet is to a real party) within `timeout`.
async fn party_fetching_local_did_web(m: &MediatorHandle, timeout: Duration) -> Agent {
    use mpc_did_resolver::{UniversalResolver, WebResolverConfig};
    let id = Identity::generate();
    let info = MediatorInfo::discover(&m.public_url).await.unwrap();
    let config = WebResolverConfig {
        allow_http: true,
        timeout,
        ..WebResolverConfig::default()
    }
    .allowing_private_hosts();
    let resolver = UniversalResolver::with_config(config).unwrap();
    let client = MediatorClient::new(info, &id.did, id.secrets, resolver).unwrap();
    client.register().await.unwrap();
    Agent::start(client).await.unwrap()
}

/// `did:web:127.0.0.1%3A<port>:<path>` and a document for it with one Ed25519
/// authentication key; the key's secret in `secrets`.
fn did_web_signer(
    port: u16,
    path: &str,
    secrets: &mut mpc_did_didcomm::SecretStore,
) -> (String, String, mpc_did_resolver::DidDocument) {
    use mpc_did_resolver::{DidDocument, PublicKey, VerificationMethod};
    let did = format!("did:web:127.0.0.1%3A{port}:{path}");
    let kid = format!("{did}#key-1");
    let signing = ed25519_dalek::SigningKey::from_bytes(&rand_seed());
    let mut doc = DidDocument::new(&did);
    doc.verification_method.push(VerificationMethod::multikey(
        &kid,
        &did,
        PublicKey::Ed25519(signing.verifying_key().to_bytes()),
    ));
    doc.authentication.push(kid.clone());
    secrets.insert(&kid, mpc_did_didcomm::Secret::Ed25519(signing));
    (did, kid, doc)
}

fn rand_seed() -> [u8; 32] {
    let id = Identity::generate();
    id.signing.to_bytes()
}

/// Sends `to` (an agent at a loopback mediator) a lobby message numbered `n`, signed by
/// `kid` (a did:web key whose document is only in `resolver`) and anoncrypted: unpacking
/// it needs the signer's did:web document.
async fn send_signed_by_did_web(
    to: &Agent,
    from: &str,
    kid: &str,
    n: usize,
    resolver: &mpc_did_resolver::UniversalResolver,
    secrets: &mpc_did_didcomm::SecretStore,
) {
    let mut msg = Message::new(
        format!("web-{n}-{}", from.len() + n),
        format!("{LOBBY}join"),
        serde_json::json!({ "n": n }),
    );
    msg.from = Some(from.to_owned());
    msg.to = Some(vec![to.did().to_owned()]);
    let packed = mpc_did_didcomm::pack_encrypted(
        &msg,
        to.did(),
        None,
        Some(kid),
        resolver,
        secrets,
        &mpc_did_didcomm::PackOptions::default(),
    )
    .await
    .unwrap();
    let uri = packed.service.unwrap().uri;
    mpc_did_agent::client::post_packed(&reqwest::Client::new(), &uri, packed.message.into_bytes())
        .await
        .unwrap();
}

/// A resolver that knows `to`'s service and the documents in `docs` (the sender's side).
async fn sender_resolver(
    to: &Agent,
    docs: Vec<mpc_did_resolver::DidDocument>,
) -> mpc_did_resolver::UniversalResolver {
    use mpc_did_resolver::DidResolver as _;
    let resolver = mpc_did_resolver::UniversalResolver::new().unwrap();
    let mut doc = resolver.resolve(to.did()).await.unwrap();
    doc.service.push(to.own_service().to_service());
    resolver.insert(doc);
    for d in docs {
        resolver.insert(d);
    }
    resolver
}

/// spec/lobby.md §7 "Lanes" (security audit of 2026-12-07, the gap it left): a stranger
/// who names did:web senders on a host that accepts connections and never answers used
/// to hold the whole inbox for the did:web timeout per message (messages were unpacked
/// one at a time). Now such messages wait in their senders' lanes while the fetches run,
/// and a friend's message that came after them is delivered at once; the stranger's are
/// dropped (acknowledged) once the fetches fail, so nothing stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_did_web_host_delays_only_its_own_senders() {
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    // The silent host: accepts, reads nothing, answers nothing, closes nothing.
    let silent = mpc_did_testkit::SilentHost::start().await;
    let port = silent.addr.port();
    let fetch_timeout = Duration::from_secs(3);
    let bob = party_fetching_local_did_web(&m, fetch_timeout).await;
    let alice = party(&m).await;
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let mut inbox = bob.subscribe(LOBBY);
    let acked_before = m.metrics().messages_acked.load(Ordering::Relaxed);

    // Six messages, each signed by another did:web DID on the silent host.
    const STRANGERS: usize = 6;
    let mut secrets = mpc_did_didcomm::SecretStore::new();
    let signers: Vec<_> = (0..STRANGERS)
        .map(|i| did_web_signer(port, &format!("u{i}"), &mut secrets))
        .collect();
    let resolver = sender_resolver(&bob, signers.iter().map(|s| s.2.clone()).collect()).await;
    for (i, (did, kid, _)) in signers.iter().enumerate() {
        send_signed_by_did_web(&bob, did, kid, i, &resolver, &secrets).await;
    }
    // Then a friend's message.
    let started = tokio::time::Instant::now();
    let msg = Message::new("friend-1", format!("{LOBBY}join"), serde_json::json!({}));
    alice.send(bob.did(), msg).await.unwrap();
    let got = expect(
        &mut inbox,
        Duration::from_secs(20),
        "the friend's join",
        |m| Some(m.clone()),
    )
    .await
    .unwrap();
    let waited = started.elapsed();
    assert_eq!(got.message.id, "friend-1");
    assert_eq!(got.sender.as_deref(), Some(alice.did()));
    // One fetch timeout would already be 3 s; six in a row 18 s.
    assert!(
        waited < Duration::from_secs(2),
        "the friend's message waited {waited:?} behind the silent host's senders"
    );
    // The stranger's six are dropped and acknowledged once their fetches failed (four at
    // once: a site's share of the fetch slots, then the other two), nothing delivered.
    assert!(
        wait_until(
            || m.metrics().messages_acked.load(Ordering::Relaxed)
                >= acked_before + 1 + STRANGERS as u64,
            Duration::from_secs(30),
        )
        .await,
        "the silent host's messages were not all acknowledged"
    );
    assert!(
        inbox.try_recv().is_err(),
        "a message of the silent host's senders was delivered"
    );
    m.shutdown().await;
}

/// A did:web DID's document served, but slowly: its messages wait for it while a friend's
/// message that came later is delivered at once, and then they come, in the order sent
/// (spec/lobby.md §7 "Lanes"). Messages unpacked one at a time delivered nothing until
/// the document came, the friend's last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_did_web_senders_messages_wait_for_its_document_in_order() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let m = mediator(dir.path()).await;
    let host = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = host.local_addr().unwrap().port();
    let mut secrets = mpc_did_didcomm::SecretStore::new();
    let (carol, kid, doc) = did_web_signer(port, "carol", &mut secrets);
    let body = doc.to_json().to_string();
    const SERVE_AFTER: Duration = Duration::from_secs(3);
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = fetches.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = host.accept().await {
            let (body, counted) = (body.clone(), counted.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                assert!(
                    req.starts_with(b"GET /carol/did.json "),
                    "{}",
                    String::from_utf8_lossy(&req)
                );
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(SERVE_AFTER).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    let bob = party_fetching_local_did_web(&m, Duration::from_secs(10)).await;
    let alice = party(&m).await;
    alice
        .learn_service(bob.did(), bob.own_service())
        .await
        .unwrap();
    let mut inbox = bob.subscribe(LOBBY);
    let resolver = sender_resolver(&bob, vec![doc]).await;
    for n in 0..3 {
        send_signed_by_did_web(&bob, &carol, &kid, n, &resolver, &secrets).await;
    }
    alice
        .send(
            bob.did(),
            Message::new("friend-2", format!("{LOBBY}join"), serde_json::json!({})),
        )
        .await
        .unwrap();
    let mut order = Vec::new();
    for _ in 0..4 {
        let got = expect(&mut inbox, Duration::from_secs(30), "a join", |m| {
            Some(m.clone())
        })
        .await
        .unwrap();
        order.push(match got.sender.as_deref() {
            Some(s) if s == carol => format!("carol-{}", got.message.body["n"]),
            _ => got.message.id.clone(),
        });
    }
    assert_eq!(order, ["friend-2", "carol-0", "carol-1", "carol-2"]);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch for the three messages"
    );
    m.shutdown().await;
}
