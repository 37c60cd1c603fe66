//! The mediated per-message transport against a real (in-process) mediator whose
//! per-source quota is tiny, so that its refusals happen on purpose
//! (spec/didcomm-transport.md §2, "Refusals").
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mpc_did_agent::{Agent, AgentConfig, Hold};
use mpc_did_mpc::didcomm_transport::{DidcommTransport, MediatedOptions, DATA_PREFIX};
use mpc_did_proxy::Transport as _;
use mpc_did_testkit::mediator::MediatorHandle;
use mpc_did_testkit::mediator::{
    loopback_mediator, loopback_mediator_with, registered_agent, registered_client, Identity,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A mediator that refuses a sender address with `source-quota` once 2 of its messages
/// wait unacknowledged for one recipient.
async fn strict_mediator(dir: &std::path::Path) -> MediatorHandle {
    loopback_mediator_with(dir, |c| c.limits.max_queued_per_source = 2).await
}

/// Sender `a` (started) and receiver `b`, whose agent holds — does not acknowledge —
/// `a`'s data messages until its transport subscribes; each knows the other's endpoint.
async fn pair(m: &MediatorHandle) -> (Agent, Agent) {
    let (a, _) = registered_agent(&m.public_url).await;
    let c = registered_client(&m.public_url, Identity::generate()).await;
    let config = AgentConfig {
        hold: vec![Hold::from_senders(DATA_PREFIX, [a.did()])],
        ..AgentConfig::default()
    };
    let b = Agent::start_with(c, config).await.unwrap();
    a.learn_service(b.did(), b.own_service()).await.unwrap();
    b.learn_service(a.did(), a.own_service()).await.unwrap();
    (a, b)
}

/// Two started agents at `m`, each knowing the other's endpoint.
async fn live_pair(m: &MediatorHandle) -> (Agent, Agent) {
    let (a, _) = registered_agent(&m.public_url).await;
    let (b, _) = registered_agent(&m.public_url).await;
    a.learn_service(b.did(), b.own_service()).await.unwrap();
    b.learn_service(a.did(), a.own_service()).await.unwrap();
    (a, b)
}

/// Six pieces, each its own message (the sender reads the next once the last was sent).
async fn write_pieces(mut x: tokio::io::DuplexStream) -> Vec<u8> {
    let mut all = Vec::new();
    for i in 0..6u8 {
        let piece = vec![i; 1000];
        x.write_all(&piece).await.unwrap();
        all.extend(piece);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    x.shutdown().await.unwrap();
    all
}

/// §2: a message the receiver's mediator refuses for a reason that passes
/// (`source-quota`: the receiver has not acknowledged the last two) is sent again until
/// it is taken; the receiver gets every byte and the end of the stream. Before the fix
/// the sender stopped at the first refusal and the receiver waited for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_messages_are_sent_again_once_the_receiver_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let m = strict_mediator(dir.path()).await;
    let (a, b) = pair(&m).await;
    let (a_did, b_did) = (a.did().to_owned(), b.did().to_owned());
    let data_a = a.subscribe_lossless(DATA_PREFIX);
    let ta = DidcommTransport::mediated(0, a, vec![(1, b_did, "run-1".into())], data_a);
    let writer = tokio::spawn(write_pieces(ta.open(1).await.unwrap()));
    // The receiver comes late: by now its mediator has refused the sender at least once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(b.held() >= 2, "b holds {} messages", b.held());
    let data_b = b.subscribe_lossless(DATA_PREFIX);
    let tb = DidcommTransport::mediated(1, b, vec![(0, a_did, "run-1".into())], data_b);
    let (peer, mut y) = tb.accept().await.unwrap();
    assert_eq!(peer, 0);
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), y.read_to_end(&mut got))
        .await
        .expect("the stream did not end: a refused message was lost")
        .unwrap();
    assert_eq!(got, writer.await.unwrap());
    m.shutdown().await;
}

/// §2: refused for longer than `give_up`, the link fails as a failure of that peer,
/// with the mediator's reason — not a silent wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_catches_up_is_a_peer_failure() {
    let dir = tempfile::tempdir().unwrap();
    let m = strict_mediator(dir.path()).await;
    let (a, b) = pair(&m).await;
    let data_a = a.subscribe_lossless(DATA_PREFIX);
    let options = MediatedOptions {
        give_up: Duration::from_secs(1),
        ..MediatedOptions::default()
    };
    let ta = DidcommTransport::mediated_with(
        0,
        a,
        vec![(1, b.did().to_owned(), "run-1".into())],
        data_a,
        options,
    );
    let _writer = tokio::spawn(write_pieces(ta.open(1).await.unwrap()));
    let f = tokio::time::timeout(Duration::from_secs(20), ta.peer_failure())
        .await
        .expect("no failure reported: the sender waits silently");
    assert_eq!(f.peer, 1);
    assert!(f.reason.contains("source-quota"), "{}", f.reason);
    drop(b);
    m.shutdown().await;
}

/// §2: the mediator restarts (same port, same store) while MPyC bytes flow; the sender's
/// POSTs fail meanwhile (connection refused) and are sent again once it is back, and the
/// receiver's agent reconnects and gets what was queued: every byte arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mediator_restart_mid_stream_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = loopback_mediator(dir.path()).await;
    let addr = m.addr;
    let (a, b) = live_pair(&m).await;
    let (a_did, b_did) = (a.did().to_owned(), b.did().to_owned());
    let (data_a, data_b) = (
        a.subscribe_lossless(DATA_PREFIX),
        b.subscribe_lossless(DATA_PREFIX),
    );
    let ta = DidcommTransport::mediated(0, a, vec![(1, b_did, "run-1".into())], data_a);
    let tb = DidcommTransport::mediated(1, b, vec![(0, a_did, "run-1".into())], data_b);
    let mut x = ta.open(1).await.unwrap();
    let writer = tokio::spawn(async move {
        let mut all = Vec::new();
        for i in 0..30u8 {
            let piece = vec![i; 500];
            x.write_all(&piece).await.unwrap();
            all.extend(piece);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        x.shutdown().await.unwrap();
        all
    });
    let (_, mut y) = tb.accept().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        y.read_to_end(&mut got).await.map(|_| got)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    m.shutdown().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = loopback_mediator_with(dir.path(), |c| c.listen = addr).await;
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the stream did not end: bytes sent around the restart were lost")
        .unwrap()
        .unwrap();
    assert_eq!(got, writer.await.unwrap());
    m.shutdown().await;
}

/// §3 "Silence": an idle link stays up on keep-alives for longer than the silence limit;
/// a peer that stops without a word (its tasks gone: no `eof`, no `fail`, no `alive`)
/// is a peer failure once it has been silent for the limit. Before keep-alives such a
/// run waited for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_silent_is_a_peer_failure() {
    let dir = tempfile::tempdir().unwrap();
    let m = loopback_mediator(dir.path()).await;
    let (a, b) = live_pair(&m).await;
    let (a_did, b_did) = (a.did().to_owned(), b.did().to_owned());
    let (data_a, data_b) = (
        a.subscribe_lossless(DATA_PREFIX),
        b.subscribe_lossless(DATA_PREFIX),
    );
    let options = MediatedOptions {
        keepalive: Duration::from_millis(500),
        silence: Duration::from_secs(2),
        ..MediatedOptions::default()
    };
    let ta =
        DidcommTransport::mediated_with(0, a, vec![(1, b_did, "run-1".into())], data_a, options);
    let tb =
        DidcommTransport::mediated_with(1, b, vec![(0, a_did, "run-1".into())], data_b, options);
    let mut x = ta.open(1).await.unwrap();
    let (_, mut y) = tb.accept().await.unwrap();
    x.write_all(b"hello").await.unwrap();
    let mut got = [0u8; 5];
    y.read_exact(&mut got).await.unwrap();
    // Idle for twice the silence limit: keep-alives, no failure on either side.
    let early = tokio::time::timeout(Duration::from_secs(4), async {
        tokio::select! {
            f = ta.peer_failure() => f,
            f = tb.peer_failure() => f,
        }
    })
    .await;
    assert!(
        early.is_err(),
        "an idle but live peer was declared failed: {early:?}"
    );
    // B stops without a word (as a killed process does).
    drop((tb, y));
    let f = tokio::time::timeout(Duration::from_secs(15), ta.peer_failure())
        .await
        .expect("a silent peer was waited for without end");
    assert_eq!(f.peer, 1);
    assert!(f.reason.contains("no message from it"), "{}", f.reason);
    m.shutdown().await;
}

/// §3 "Silence": when the silence is ours — our mediator is gone — the failure says so
/// instead of blaming the peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_while_our_mediator_is_down_names_the_mediator() {
    let dir = tempfile::tempdir().unwrap();
    let m = loopback_mediator(dir.path()).await;
    let (a, b) = live_pair(&m).await;
    let data_a = a.subscribe_lossless(DATA_PREFIX);
    let options = MediatedOptions {
        keepalive: Duration::from_millis(500),
        silence: Duration::from_secs(2),
        ..MediatedOptions::default()
    };
    let ta = DidcommTransport::mediated_with(
        0,
        a,
        vec![(1, b.did().to_owned(), "run-1".into())],
        data_a,
        options,
    );
    m.shutdown().await;
    let f = tokio::time::timeout(Duration::from_secs(15), ta.peer_failure())
        .await
        .expect("no failure while our mediator is gone");
    assert_eq!(f.peer, 1);
    assert!(
        f.reason
            .contains("our own connection to our mediator has been down"),
        "{}",
        f.reason
    );
    drop(b);
}
