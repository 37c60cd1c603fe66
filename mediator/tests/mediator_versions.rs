//! Coordinate Mediation 3.0 and Message Pickup 4.0 beside 2.0 / 3.0, against the real
//! mediator binary (spec/mediator.md §3.2; didcomm.org coordinate-mediation/3.0 and
//! message-pickup/4.0).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{client, introduce, MediatorProc};
use futures_util::{SinkExt as _, StreamExt as _};
use mpc_did_agent::client::{connect_ws, ClientError, LiveOptions, MediatorClient, Versions, Ws};
use mpc_did_didcomm::message::message;
use mpc_did_didcomm::protocols::coordinate_mediation::CoordinateMediationVersion;
use mpc_did_didcomm::protocols::pickup::PickupVersion;
use mpc_did_didcomm::protocols::{coordinate_mediation_v3 as cm3, pickup, pickup_v4};
use mpc_did_didcomm::Message;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Discover Features lists all four; the client picks CM 3.0 and Pickup 4.0 and registers,
/// updates, queries (paginated) and picks up with them.
#[tokio::test]
async fn client_speaks_the_newest_versions() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.url()).await;
    let d = a
        .request(message(
            "https://didcomm.org/discover-features/2.0/queries",
            json!({"queries": [{"feature-type": "protocol", "match": "https://didcomm.org/*"}]}),
        ))
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<&str> = d.body["disclosures"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["id"].as_str())
        .collect();
    for p in [
        "https://didcomm.org/coordinate-mediation/2.0",
        "https://didcomm.org/coordinate-mediation/3.0",
        "https://didcomm.org/messagepickup/3.0",
        "https://didcomm.org/message-pickup/4.0",
    ] {
        assert!(ids.contains(&p), "{p} not disclosed: {ids:?}");
    }
    assert_eq!(
        a.versions().await,
        Versions {
            cm: CoordinateMediationVersion::V3,
            pickup: PickupVersion::V4
        }
    );
    a.register().await.unwrap();
    let extra = format!("{}#extra", a.did);
    a.update_keys(&[(extra.as_str(), "add")]).await.unwrap();
    assert_eq!(a.keys().await.unwrap().len(), 2);
    // CM 3.0 recipient-query with `paginate`: one DID, and `pagination` saying one remains.
    let page = a
        .request(message(
            cm3::RECIPIENT_QUERY_TYPE,
            json!({"paginate": {"limit": 1, "offset": 0}}),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.type_, cm3::RECIPIENT_TYPE);
    assert_eq!(page.body["dids"].as_array().unwrap().len(), 1);
    assert_eq!(
        page.body["pagination"],
        json!({"count": 1, "offset": 0, "remaining": 1})
    );
    // Pickup 4.0: "If no messages are available to be sent, a delivery message with an
    // empty attachments array MUST be sent immediately."
    let empty = a
        .request(message(
            pickup_v4::DELIVERY_REQUEST_TYPE,
            json!({"message_count_limit": 10}),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(empty.type_, pickup_v4::DELIVERY_TYPE);
    assert_eq!(empty.attachments.as_deref().map(<[_]>::len), Some(0));
    // A message through the mediator, fetched and acknowledged in 4.0.
    let b = client(&m.url()).await;
    introduce(&b, &a);
    b.send(
        &a.did,
        message("https://example.org/t/1.0/n", json!({"n": 1})),
    )
    .await
    .unwrap();
    let got = a.fetch(10).await.unwrap();
    assert_eq!(got.len(), 1);
    a.ack(&[got[0].id.clone()]).await.unwrap();
    assert!(a.fetch(10).await.unwrap().is_empty());
    // Live mode through the client (4.0 with the backlog extension) still delivers what
    // was queued before it was switched on.
    b.send(
        &a.did,
        message("https://example.org/t/1.0/n", json!({"n": 2})),
    )
    .await
    .unwrap();
    let mut live = a.live().await.unwrap();
    let batch = live.next_batch(Duration::from_secs(10)).await.unwrap();
    assert_eq!(batch.len(), 1);
    live.ack(&[batch[0].id.clone()]).await.unwrap();
    live.close().await;
}

/// didcomm.org message-pickup/4.0 "Live Mode": queued messages are not pushed ("they MUST
/// still be requested with delivery-request messages"); new ones come in a `delivery`;
/// one not acknowledged "MUST be added to the queue for later pickup".
#[tokio::test]
async fn pickup4_live_mode_rules() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, a, b) = queued(dir.path(), 0).await;
    b.send(&a.did, note(1)).await.unwrap();

    let mut ws = connect_ws(&a.info.ws, &[]).await.unwrap();
    let change = message(
        pickup_v4::LIVE_DELIVERY_CHANGE_TYPE,
        json!({"live_delivery": true}),
    );
    let thid = change.id.clone();
    ws.send(WsMessage::text(a.pack_for_mediator(change).await.unwrap()))
        .await
        .unwrap();
    let status = next(&mut ws, &a).await;
    assert_eq!(status.type_, pickup_v4::STATUS_TYPE);
    assert_eq!(status.thid.as_deref(), Some(thid.as_str()));
    assert_eq!(status.body["live_delivery"], true);
    assert_eq!(status.body["message_count"], 1);
    assert!(status.body.get(pickup_v4::LIVE_BACKLOG_FIELD).is_none());
    // "live_delivery state is also indicated in the status message": on this socket it is
    // on; over HTTP (no live socket there) off.
    let ask = message(pickup_v4::STATUS_REQUEST_TYPE, json!({}));
    ws.send(WsMessage::text(a.pack_for_mediator(ask).await.unwrap()))
        .await
        .unwrap();
    let on_socket = next(&mut ws, &a).await;
    assert_eq!(on_socket.type_, pickup_v4::STATUS_TYPE);
    assert_eq!(on_socket.body["live_delivery"], true, "{}", on_socket.body);
    let over_http = a
        .request(message(pickup_v4::STATUS_REQUEST_TYPE, json!({})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(over_http.body["live_delivery"], false);

    b.send(&a.did, note(2)).await.unwrap();
    let pushed = next(&mut ws, &a).await;
    assert_eq!(pushed.type_, pickup_v4::DELIVERY_TYPE);
    let items = mpc_did_agent::client::delivered(&pushed);
    assert_eq!(items.len(), 1, "only the new message is pushed");
    let (inner, _) = a.unpack(&items[0].bytes).await.unwrap();
    assert_eq!(inner.body["n"], 2);
    drop(ws); // no messages-received

    // Both are still queued: the backlog and the unacknowledged live push.
    let mut ns = Vec::new();
    for d in a.fetch(10).await.unwrap() {
        ns.push(
            a.unpack(&d.bytes).await.unwrap().0.body["n"]
                .as_u64()
                .unwrap(),
        );
    }
    ns.sort_unstable();
    assert_eq!(ns, [1, 2]);
}

/// didcomm.org coordinate-mediation/2.0: the list messages are `keylist-update` →
/// `keylist-update-response` and `keylist-query` → `keylist` (with `keys`), and the grant's
/// `routing_did` is one DID (a string). A 2.0 client written to the spec registers and
/// queries with them; the names mpc-did used under 2.0 before 2026-12-07 are still answered
/// in kind (spec/mediator.md §3).
#[tokio::test]
async fn cm2_speaks_the_keylist_messages_of_its_spec() {
    use mpc_did_didcomm::protocols::coordinate_mediation as cm2;
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.url()).await;
    let ask = |type_: &str, body: serde_json::Value| {
        let (a, msg) = (&a, message(type_, body));
        async move { a.request(msg).await.unwrap().unwrap() }
    };
    let grant = ask(
        "https://didcomm.org/coordinate-mediation/2.0/mediate-request",
        json!({}),
    )
    .await;
    assert_eq!(
        grant.type_,
        "https://didcomm.org/coordinate-mediation/2.0/mediate-grant"
    );
    assert_eq!(
        grant.body["routing_did"],
        json!(a.info.did),
        "{}",
        grant.body
    );
    let updated = ask(
        "https://didcomm.org/coordinate-mediation/2.0/keylist-update",
        json!({"updates": [{"recipient_did": a.did, "action": "add"}]}),
    )
    .await;
    assert_eq!(
        updated.type_,
        "https://didcomm.org/coordinate-mediation/2.0/keylist-update-response"
    );
    assert_eq!(
        updated.body["updated"],
        json!([{"recipient_did": a.did, "action": "add", "result": "success"}])
    );
    let list = ask(
        "https://didcomm.org/coordinate-mediation/2.0/keylist-query",
        json!({}),
    )
    .await;
    assert_eq!(
        list.type_,
        "https://didcomm.org/coordinate-mediation/2.0/keylist"
    );
    assert_eq!(list.body["keys"], json!([{"recipient_did": a.did}]));
    // The old mpc-did names under 2.0, answered in kind.
    let extra = format!("{}#old", a.did);
    let old = ask(
        cm2::LEGACY_RECIPIENT_UPDATE_TYPE,
        json!({"updates": [{"recipient_did": extra, "action": "add"}]}),
    )
    .await;
    assert_eq!(old.type_, cm2::LEGACY_RECIPIENT_UPDATE_RESPONSE_TYPE);
    assert_eq!(old.body["updated"][0]["result"], "success");
    let old = ask(cm2::LEGACY_RECIPIENT_QUERY_TYPE, json!({})).await;
    assert_eq!(old.type_, cm2::LEGACY_RECIPIENT_TYPE);
    assert_eq!(old.body["dids"].as_array().map(Vec::len), Some(2));
    // And a forward to the DID registered with `keylist-update` is queued for it.
    let b = client(&m.url()).await;
    introduce(&b, &a);
    b.send(&a.did, note(1)).await.unwrap();
    assert_eq!(a.fetch(10).await.unwrap().len(), 1);
}

/// didcomm.org messagepickup/3.0 and message-pickup/4.0 "Live Mode Change": "Upon
/// receiving the live_delivery_change message, the mediator MUST respond with a status
/// message"; only switching live mode *on* over a connection that cannot carry it gets the
/// `e.m.live-mode-not-supported` problem report (spec/mediator.md §3).
#[tokio::test]
async fn live_mode_off_over_http_gets_a_status() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.url()).await;
    a.register().await.unwrap();
    for (change, status) in [
        (pickup::LIVE_DELIVERY_CHANGE_TYPE, pickup::STATUS_TYPE),
        (pickup_v4::LIVE_DELIVERY_CHANGE_TYPE, pickup_v4::STATUS_TYPE),
    ] {
        let off = a
            .request(message(change, json!({"live_delivery": false})))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(off.type_, status);
        assert_eq!(off.body["live_delivery"], false);
        assert_eq!(off.body["message_count"], 0);
        match a
            .request(message(change, json!({"live_delivery": true})))
            .await
        {
            Err(ClientError::Problem { code, .. }) => {
                assert_eq!(code, "e.m.live-mode-not-supported");
            }
            other => panic!("{change}: expected a problem report, got {other:?}"),
        }
    }
}

/// didcomm.org messagepickup/3.0 "Message Received -> Status": with `return_route: all` (our
/// client sets it) the mediator answers a 3.0 `messages-received` with the updated status;
/// 4.0 dropped that answer and the header, so a 4.0 one gets none (spec/mediator.md §3).
#[tokio::test]
async fn pickup3_messages_received_gets_the_updated_status() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, a, _b) = queued(dir.path(), 3).await;
    let delivery = a
        .request(message(pickup::DELIVERY_REQUEST_TYPE, json!({"limit": 2})))
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<String> = mpc_did_agent::client::delivered(&delivery)
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids.len(), 2);
    let status = a
        .request(message(
            pickup::MESSAGES_RECEIVED_TYPE,
            json!({"message_id_list": ids}),
        ))
        .await
        .unwrap()
        .expect("a 3.0 messages-received with return_route all is answered");
    assert_eq!(status.type_, pickup::STATUS_TYPE);
    assert_eq!(status.body["message_count"], 1);
    let last = a.fetch(10).await.unwrap();
    assert_eq!(last.len(), 1);
    let answer = a
        .request(message(
            pickup_v4::MESSAGES_RECEIVED_TYPE,
            json!({"message_id_list": [last[0].id]}),
        ))
        .await
        .unwrap();
    assert!(answer.is_none(), "4.0: no answer, got {answer:?}");
    assert!(a.fetch(10).await.unwrap().is_empty());
}

/// didcomm.org message-pickup/4.0 "Version Change Log": `delivery-request` names its limit
/// `message_count_limit`, and `status` gives its times in epoch milliseconds without
/// `longest_waited_seconds`; 3.0 keeps `limit` and seconds (spec/mediator.md §3.2).
#[tokio::test]
async fn pickup4_fields_follow_the_4_0_spec() {
    let dir = tempfile::tempdir().unwrap();
    let (_m, a, _b) = queued(dir.path(), 2).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let status = |type_: &'static str| {
        let a = &a;
        async move {
            a.request(message(type_, json!({})))
                .await
                .unwrap()
                .unwrap()
                .body
        }
    };
    let v4 = status(pickup_v4::STATUS_REQUEST_TYPE).await;
    assert_eq!(v4["message_count"], 2);
    for field in ["oldest_received_time", "newest_received_time"] {
        let t = v4[field].as_u64().unwrap();
        assert!(t.abs_diff(now_ms) < 60_000, "{field} {t} is not in ms");
    }
    assert!(v4.get("longest_waited_seconds").is_none(), "{v4}");
    let v3 = status(pickup::STATUS_REQUEST_TYPE).await;
    let t = v3["oldest_received_time"].as_u64().unwrap();
    assert!(t.abs_diff(now_ms / 1000) < 60, "3.0 time {t} is not in s");
    assert!(v3["longest_waited_seconds"].is_u64(), "{v3}");

    let fetch = |body: serde_json::Value| {
        let a = &a;
        async move {
            a.request(message(pickup_v4::DELIVERY_REQUEST_TYPE, body))
                .await
        }
    };
    for body in [
        json!({"message_count_limit": 1}),
        // what mpc-did clients sent before: still served
        json!({"limit": 1}),
        json!({"message_count_limit": 1, "limit": 5}),
    ] {
        let d = fetch(body.clone()).await.unwrap().unwrap();
        assert_eq!(d.type_, pickup_v4::DELIVERY_TYPE, "{body}");
        assert_eq!(d.attachments.as_deref().map(<[_]>::len), Some(1), "{body}");
    }
    for body in [json!({}), json!({"message_count_limit": "1", "limit": 1})] {
        match fetch(body.clone()).await {
            Err(ClientError::Problem { code, comment }) => {
                assert_eq!(code, "e.p.msg.bad-request", "{body}");
                assert!(comment.contains("message_count_limit"), "{comment}");
            }
            other => panic!("{body}: expected a problem report, got {other:?}"),
        }
    }
    // The client's own fetch speaks 4.0 (`message_count_limit`).
    assert_eq!(a.fetch(1).await.unwrap().len(), 1);
}

/// spec/mediator.md §3.2 "Client": a live connection that does not get the backlog pushed
/// (plain 4.0, as a foreign mediator speaks it) fetches it with `delivery-request`s on the
/// same socket, page after page, and still gets new arrivals pushed; nothing is lost and the
/// queue ends empty. Without the fallback the 150 queued messages never arrive.
#[tokio::test]
async fn pickup4_backlog_is_fetched_when_the_mediator_does_not_push_it() {
    // More than one page (the client asks for 100 beyond the unacknowledged ones; the
    // mediator's own cap is 100 per delivery).
    const QUEUED: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let (_m, a, b) = queued(dir.path(), QUEUED).await;
    let mut live = a
        .live_with(
            &[],
            LiveOptions {
                backlog_extension: false,
            },
        )
        .await
        .unwrap();
    let mut got = std::collections::BTreeSet::new();
    let mut sent_new = false;
    while got.len() < (QUEUED + 1) as usize {
        let batch = live
            .next_batch(Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("stuck after {} of {}: {e}", got.len(), QUEUED + 1));
        let mut ids = Vec::new();
        for d in batch {
            let (inner, _) = a.unpack(&d.bytes).await.unwrap();
            got.insert(inner.body["n"].as_u64().unwrap());
            ids.push(d.id);
        }
        live.ack(&ids).await.unwrap();
        if !sent_new {
            // A new arrival while the backlog is being fetched is pushed live.
            b.send(&a.did, note(QUEUED)).await.unwrap();
            sent_new = true;
        }
    }
    assert_eq!(got, (0..=QUEUED).collect());
    live.close().await;
    // Acknowledged on the socket: nothing stays queued.
    let left = async {
        loop {
            let st = a
                .request(message(pickup_v4::STATUS_REQUEST_TYPE, json!({})))
                .await
                .unwrap()
                .unwrap();
            if st.body["message_count"] == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), left)
        .await
        .expect("the queue is empty once everything is acknowledged");
}

/// A mediator, a registered recipient `a` and a sender `b` who has sent `a` `n` notes
/// (`{"n": 0..n}`) through it.
async fn queued(dir: &std::path::Path, n: u64) -> (MediatorProc, MediatorClient, MediatorClient) {
    let m = MediatorProc::start(dir, &[]);
    let a = client(&m.url()).await;
    a.register().await.unwrap();
    let b = client(&m.url()).await;
    introduce(&b, &a);
    for i in 0..n {
        b.send(&a.did, note(i)).await.unwrap();
    }
    (m, a, b)
}

/// A test message numbered `n`.
fn note(n: u64) -> Message {
    message("https://example.org/t/1.0/n", json!({ "n": n }))
}

/// The next message on a live socket, unpacked.
async fn next(ws: &mut Ws, a: &MediatorClient) -> Message {
    let f = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    a.unpack(f.into_text().unwrap().as_bytes()).await.unwrap().0
}

/// A foreign Coordinate Mediation 3.0 request with fields the protocol does not define is
/// answered with a problem report naming the field; the mediator keeps serving.
#[tokio::test]
async fn cm3_unknown_fields_get_a_problem_report() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let a = client(&m.url()).await;
    let mut req = message(
        cm3::MEDIATE_REQUEST_TYPE,
        json!({"terms": {"accept": true}}),
    );
    req.created_time = Some(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    match a.request(req).await {
        Err(ClientError::Problem { code, comment }) => {
            assert_eq!(code, "e.p.msg.bad-request");
            assert!(comment.contains("terms"), "{comment}");
        }
        other => panic!("expected a problem report, got {other:?}"),
    }
    a.request(message(cm3::MEDIATE_REQUEST_TYPE, json!({})))
        .await
        .unwrap();
    for body in [
        json!({"updates": [{"recipient_did": a.did, "action": "add", "proof": "x"}]}),
        json!({"updates": "all"}),
        json!({"updates": [], "extra": 1}),
    ] {
        match a
            .request(message(cm3::RECIPIENT_UPDATE_TYPE, body.clone()))
            .await
        {
            Err(ClientError::Problem { code, .. }) => assert_eq!(code, "e.p.msg.bad-request"),
            other => panic!("{body}: expected a problem report, got {other:?}"),
        }
    }
    match a
        .request(message(
            cm3::RECIPIENT_QUERY_TYPE,
            json!({"paginate": {"limit": 1}}),
        ))
        .await
    {
        Err(ClientError::Problem { code, .. }) => assert_eq!(code, "e.p.msg.bad-request"),
        other => panic!("expected a problem report, got {other:?}"),
    }
    let pong = a
        .request(message(
            "https://didcomm.org/trust-ping/2.0/ping",
            json!({}),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pong.type_,
        "https://didcomm.org/trust-ping/2.0/ping-response"
    );
}

/// A mediator that cannot be reached when the client first asks gets CM 2.0 / Pickup 3.0
/// for that call only: once it is back, the client asks again and speaks CM 3.0 / Pickup
/// 4.0 (before, the first failure was remembered for the client's whole life).
#[tokio::test]
async fn versions_are_asked_again_after_the_mediator_was_down() {
    let dir = tempfile::tempdir().unwrap();
    let m = MediatorProc::start(dir.path(), &[]);
    let addr = m.addr.clone();
    let a = client(&m.url()).await;
    m.kill9();
    assert_eq!(a.versions().await, Versions::default());
    let _m = MediatorProc::start_at(&addr, dir.path(), &[], None);
    assert_eq!(
        a.versions().await,
        Versions {
            cm: CoordinateMediationVersion::V3,
            pickup: PickupVersion::V4
        }
    );
}
