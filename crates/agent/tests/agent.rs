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

/// The next live event, failing the test if none comes in `limit`.
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<LiveEvent>,
    limit: Duration,
) -> LiveEvent {
    tokio::time::timeout(limit, events.recv())
        .await
        .expect("a live event in time")
        .unwrap()
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
    let lost = next_event(&mut events, Duration::from_secs(20)).await;
    assert!(matches!(lost, LiveEvent::Lost { .. }), "{lost:?}");
    let back = next_event(&mut events, Duration::from_secs(20)).await;
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
