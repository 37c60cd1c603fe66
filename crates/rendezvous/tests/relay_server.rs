//! Relay server core (spec/rendezvous.md §4.4-4.5): authentication, opaque
//! forwarding, and every bad-input case of §4.5 and §8 (unauthenticated and
//! spoofed clients, unknown peers, oversize frames, floods), each rejected
//! with a typed error and counted, with other clients unaffected.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mpc_did_rendezvous::relay::{
    sign_client_auth, ClientToRelay, ErrorCode, OverloadReason, PeerAddr, RelayToClient,
};
use mpc_did_rendezvous::relay_server::{ConnId, Handled, RelayConfig, RelayServer, ServerEvent};
use mpc_did_rendezvous::RelayError;

const RELAY: &str = "did:web:mediator.example";
const UNIX: u64 = 1_800_000_000;

struct Party {
    sk: SigningKey,
    did: String,
}

fn party(n: u8) -> Party {
    Party {
        sk: SigningKey::from_bytes(&[n; 32]),
        did: format!("did:key:party{n}"),
    }
}

impl Party {
    fn key(&self) -> [u8; 32] {
        self.sk.verifying_key().to_bytes()
    }
}

fn drain(s: &mut RelayServer, c: ConnId) -> Vec<RelayToClient> {
    std::iter::from_fn(|| s.poll_transmit(c)).collect()
}

fn events(s: &mut RelayServer) -> Vec<ServerEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn feed(
    s: &mut RelayServer,
    c: ConnId,
    m: ClientToRelay,
    now: Instant,
) -> Result<Handled, RelayError> {
    let len = m.encoded_len();
    s.handle(c, m, len, now)
}

/// Opens a connection and authenticates `p` on it, as the mediator shell would.
fn login(s: &mut RelayServer, p: &Party, now: Instant) -> ConnId {
    let c = s.open([p.key()[0]; 32], now).unwrap();
    let Some(RelayToClient::ServerChallenge { relay_id, nonce }) = s.poll_transmit(c) else {
        panic!("no challenge")
    };
    assert_eq!(relay_id, RELAY);
    let auth = sign_client_auth(
        &p.sk,
        &p.did,
        &format!("{}#k", p.did),
        &relay_id,
        &nonce,
        UNIX,
    );
    let Handled::VerifyAuth(a) = feed(s, c, ClientToRelay::ClientAuth(auth), now).unwrap() else {
        panic!()
    };
    s.finish_auth(c, &a, Some(&p.sk.verifying_key()), UNIX + 5)
        .unwrap();
    assert_eq!(drain(s, c), vec![RelayToClient::AuthOk]);
    c
}

fn server() -> RelayServer {
    RelayServer::new(RelayConfig::new(RELAY))
}

#[test]
fn forwards_opaque_packets_by_key_and_did() {
    let t = Instant::now();
    let mut s = server();
    let (a, b) = (party(1), party(2));
    let ca = login(&mut s, &a, t);
    let cb = login(&mut s, &b, t);
    events(&mut s);
    feed(
        &mut s,
        ca,
        ClientToRelay::SendPacket {
            dst: PeerAddr::Key(b.key()),
            payload: b"noise-1".to_vec(),
        },
        t,
    )
    .unwrap();
    feed(
        &mut s,
        ca,
        ClientToRelay::SendPacket {
            dst: PeerAddr::Did(b.did.clone()),
            payload: b"noise-2".to_vec(),
        },
        t,
    )
    .unwrap();
    assert_eq!(events(&mut s), vec![ServerEvent::Wake(cb)]);
    let got = drain(&mut s, cb);
    let want = |p: &[u8]| RelayToClient::RecvPacket {
        src_key: a.key(),
        src_did: a.did.clone(),
        payload: p.to_vec(),
    };
    assert_eq!(got, vec![want(b"noise-1"), want(b"noise-2")]);
    assert_eq!(s.metrics().forwarded_packets, 2);
    assert_eq!(s.metrics().forwarded_bytes, 14);
    assert_eq!(s.metrics().authenticated, 2);
    // Ping gets a Pong.
    feed(&mut s, ca, ClientToRelay::Ping([5; 8]), t).unwrap();
    assert_eq!(drain(&mut s, ca), vec![RelayToClient::Pong([5; 8])]);
}

#[test]
fn spoofed_signature_is_refused() {
    let t = Instant::now();
    let mut s = server();
    let (alice, mallory) = (party(1), party(66));
    let c = s.open([7; 32], t).unwrap();
    let Some(RelayToClient::ServerChallenge { nonce, .. }) = s.poll_transmit(c) else {
        panic!()
    };
    // Mallory claims Alice's DID but signs with her own key.
    let auth = sign_client_auth(&mallory.sk, &alice.did, "k", RELAY, &nonce, UNIX);
    let Handled::VerifyAuth(a) = feed(&mut s, c, ClientToRelay::ClientAuth(auth), t).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        s.finish_auth(c, &a, Some(&alice.sk.verifying_key()), UNIX),
        Err(RelayError::AuthenticationFailed)
    );
    assert_eq!(drain(&mut s, c), vec![RelayToClient::AuthFailed]);
    assert!(events(&mut s).contains(&ServerEvent::Close(c)));
    assert_eq!(s.metrics().auth_failed, 1);
    // Unresolvable DID: also AuthFailed.
    let c2 = s.open([8; 32], t).unwrap();
    drain(&mut s, c2);
    let auth = sign_client_auth(&alice.sk, &alice.did, "k", RELAY, &[8; 32], UNIX);
    let Handled::VerifyAuth(a) = feed(&mut s, c2, ClientToRelay::ClientAuth(auth), t).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        s.finish_auth(c2, &a, None, UNIX),
        Err(RelayError::AuthenticationFailed)
    );
    // A signature over another connection's nonce (replay) fails.
    let c3 = s.open([9; 32], t).unwrap();
    drain(&mut s, c3);
    let replay = sign_client_auth(&alice.sk, &alice.did, "k", RELAY, &[8; 32], UNIX);
    let Handled::VerifyAuth(a) = feed(&mut s, c3, ClientToRelay::ClientAuth(replay), t).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        s.finish_auth(c3, &a, Some(&alice.sk.verifying_key()), UNIX),
        Err(RelayError::AuthenticationFailed)
    );
    assert_eq!(s.metrics().auth_failed, 3);
    assert_eq!(s.metrics().authenticated, 0);
}

#[test]
fn packets_before_auth_are_rejected() {
    let t = Instant::now();
    let mut s = server();
    let b = party(2);
    let cb = login(&mut s, &b, t);
    let c = s.open([1; 32], t).unwrap();
    drain(&mut s, c);
    let r = feed(
        &mut s,
        c,
        ClientToRelay::SendPacket {
            dst: PeerAddr::Key(b.key()),
            payload: vec![1],
        },
        t,
    );
    assert_eq!(r, Err(RelayError::NotAuthenticated));
    assert_eq!(
        drain(&mut s, c),
        vec![RelayToClient::Error(ErrorCode::NotAuthenticated)]
    );
    assert!(events(&mut s).contains(&ServerEvent::Close(c)));
    assert!(drain(&mut s, cb).is_empty(), "nothing reached B");
    assert_eq!(s.metrics().not_authenticated, 1);
    // Frames after the close decision are ignored.
    assert_eq!(
        feed(&mut s, c, ClientToRelay::Ping([0; 8]), t),
        Ok(Handled::Done)
    );
    assert!(drain(&mut s, c).is_empty());
    s.close(c);
    assert_eq!(
        feed(&mut s, c, ClientToRelay::Ping([0; 8]), t),
        Err(RelayError::UnknownConnection)
    );
}

#[test]
fn unknown_peer_gets_peer_gone() {
    let t = Instant::now();
    let mut s = server();
    let a = party(1);
    let ca = login(&mut s, &a, t);
    let dst = PeerAddr::Did("did:key:nobody".into());
    feed(
        &mut s,
        ca,
        ClientToRelay::SendPacket {
            dst: dst.clone(),
            payload: vec![1],
        },
        t,
    )
    .unwrap();
    assert_eq!(drain(&mut s, ca), vec![RelayToClient::PeerGone(dst)]);
    assert_eq!(s.metrics().unknown_peer, 1);
    // A peer that disconnected is gone too.
    let b = party(2);
    let cb = login(&mut s, &b, t);
    s.close(cb);
    feed(
        &mut s,
        ca,
        ClientToRelay::SendPacket {
            dst: PeerAddr::Key(b.key()),
            payload: vec![1],
        },
        t,
    )
    .unwrap();
    assert_eq!(
        drain(&mut s, ca),
        vec![RelayToClient::PeerGone(PeerAddr::Key(b.key()))]
    );
}

#[test]
fn malformed_and_oversize_frames_close_only_that_client() {
    let t = Instant::now();
    let mut s = server();
    let (a, b) = (party(1), party(2));
    let ca = login(&mut s, &a, t);
    let cb = login(&mut s, &b, t);
    events(&mut s);
    // The shell's decoder reported an oversize header.
    let mut big = vec![0x02];
    big.extend_from_slice(&u32::MAX.to_be_bytes());
    let err = ClientToRelay::decode(&big).unwrap_err();
    s.on_malformed(ca, &err);
    assert_eq!(
        drain(&mut s, ca),
        vec![RelayToClient::Error(ErrorCode::FrameTooLarge)]
    );
    assert!(events(&mut s).contains(&ServerEvent::Close(ca)));
    assert_eq!(s.metrics().malformed, 1);
    // B is unaffected: still reachable by another client.
    let c = party(3);
    let cc = login(&mut s, &c, t);
    feed(
        &mut s,
        cc,
        ClientToRelay::SendPacket {
            dst: PeerAddr::Key(b.key()),
            payload: vec![9],
        },
        t,
    )
    .unwrap();
    assert_eq!(drain(&mut s, cb).len(), 1);
    // A second ClientAuth is a protocol error.
    let again = sign_client_auth(&c.sk, &c.did, "k", RELAY, &[0; 32], UNIX);
    assert_eq!(
        feed(&mut s, cc, ClientToRelay::ClientAuth(again), t),
        Ok(Handled::Done)
    );
    assert_eq!(
        drain(&mut s, cc),
        vec![RelayToClient::Error(ErrorCode::Malformed)]
    );
}

#[test]
fn flood_is_rate_limited_and_others_unaffected() {
    let t = Instant::now();
    let mut cfg = RelayConfig::new(RELAY);
    cfg.rate_bytes_per_sec = 10_000;
    cfg.burst_bytes = 10_000;
    let mut s = RelayServer::new(cfg);
    let (flooder, victim, other, friend) = (party(1), party(2), party(3), party(4));
    let cf = login(&mut s, &flooder, t);
    let cv = login(&mut s, &victim, t);
    let co = login(&mut s, &other, t);
    let cfr = login(&mut s, &friend, t);
    let pkt = |dst: &Party| ClientToRelay::SendPacket {
        dst: PeerAddr::Key(dst.key()),
        payload: vec![0; 962],
    };
    // 1000 bytes on the wire each (5 header + 33 peer + 962): 10 fit in the burst, the rest is dropped.
    for _ in 0..100 {
        feed(&mut s, cf, pkt(&victim), t).unwrap();
    }
    assert_eq!(s.metrics().forwarded_packets, 10);
    assert_eq!(s.metrics().dropped_rate_limited, 90);
    // The flooder is told once (not 90 times) ...
    assert_eq!(
        drain(&mut s, cf),
        vec![RelayToClient::Overloaded(OverloadReason::RateLimited)]
    );
    assert_eq!(drain(&mut s, cv).len(), 10);
    // ... while another client's traffic flows.
    feed(&mut s, co, pkt(&friend), t).unwrap();
    assert_eq!(drain(&mut s, cfr).len(), 1);
    // Tokens refill with time: 0.5 s later, 5 more packets.
    let later = t + Duration::from_millis(500);
    for _ in 0..10 {
        feed(&mut s, cf, pkt(&victim), later).unwrap();
    }
    assert_eq!(drain(&mut s, cv).len(), 5);
    assert_eq!(s.metrics().dropped_rate_limited, 95);
}

#[test]
fn full_destination_queue_drops_and_tells_sender() {
    let t = Instant::now();
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_queue_frames = 4;
    cfg.max_queue_bytes = 100_000;
    let mut s = RelayServer::new(cfg);
    let (a, b) = (party(1), party(2));
    let ca = login(&mut s, &a, t);
    let cb = login(&mut s, &b, t);
    for _ in 0..10 {
        feed(
            &mut s,
            ca,
            ClientToRelay::SendPacket {
                dst: PeerAddr::Key(b.key()),
                payload: vec![1; 100],
            },
            t,
        )
        .unwrap();
    }
    assert_eq!(s.metrics().dropped_queue_full, 6);
    assert_eq!(s.metrics().forwarded_packets, 4);
    assert_eq!(
        drain(&mut s, ca),
        vec![RelayToClient::Overloaded(OverloadReason::PeerQueueFull)]
    );
    // Bounded memory: the queue holds exactly 4 frames' bytes.
    let one = RelayToClient::RecvPacket {
        src_key: a.key(),
        src_did: a.did.clone(),
        payload: vec![1; 100],
    }
    .encoded_len();
    assert_eq!(s.queued_bytes(cb), Some(4 * one));
    assert_eq!(drain(&mut s, cb).len(), 4);
    assert_eq!(s.queued_bytes(cb), Some(0));
    // Byte limit too.
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_queue_bytes = 1000;
    let mut s = RelayServer::new(cfg);
    let ca = login(&mut s, &a, t);
    let cb = login(&mut s, &b, t);
    for _ in 0..5 {
        feed(
            &mut s,
            ca,
            ClientToRelay::SendPacket {
                dst: PeerAddr::Key(b.key()),
                payload: vec![1; 300],
            },
            t,
        )
        .unwrap();
    }
    assert!(s.queued_bytes(cb).unwrap() <= 1000);
    assert_eq!(s.metrics().forwarded_packets, 2);
}

#[test]
fn client_limit_refuses_with_overloaded() {
    let t = Instant::now();
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_clients = 2;
    let mut s = RelayServer::new(cfg);
    let c1 = s.open([1; 32], t).unwrap();
    s.open([2; 32], t).unwrap();
    assert_eq!(s.open([3; 32], t), Err(RelayError::TooManyClients));
    assert_eq!(
        RelayServer::refusal_frame(),
        RelayToClient::Overloaded(OverloadReason::TooManyClients)
    );
    assert_eq!(s.metrics().rejected_full, 1);
    s.close(c1);
    assert!(s.open([4; 32], t).is_ok());
    assert_eq!(s.metrics().clients, 2);
}

#[test]
fn idle_and_unauthenticated_connections_time_out() {
    let t = Instant::now();
    let mut s = server();
    let a = party(1);
    let ca = login(&mut s, &a, t);
    let lurker = s.open([5; 32], t).unwrap();
    drain(&mut s, lurker);
    events(&mut s);
    let auth_deadline = s.next_timeout().unwrap();
    assert_eq!(auth_deadline, t + Duration::from_secs(10));
    s.handle_timeout(auth_deadline);
    assert_eq!(
        events(&mut s),
        vec![ServerEvent::Wake(lurker), ServerEvent::Close(lurker)]
    );
    assert_eq!(
        drain(&mut s, lurker),
        vec![RelayToClient::Error(ErrorCode::IdleTimeout)]
    );
    s.close(lurker);
    // A's keepalive at 50 s moves its deadline.
    feed(
        &mut s,
        ca,
        ClientToRelay::Pong([0; 8]),
        t + Duration::from_secs(50),
    )
    .unwrap();
    s.handle_timeout(t + Duration::from_secs(61));
    assert!(events(&mut s).is_empty());
    assert_eq!(s.next_timeout(), Some(t + Duration::from_secs(110)));
    s.handle_timeout(t + Duration::from_secs(110));
    assert!(events(&mut s).contains(&ServerEvent::Close(ca)));
    assert_eq!(s.metrics().timed_out, 2);
}

#[test]
fn reconnect_replaces_old_connection() {
    let t = Instant::now();
    let mut s = server();
    let (a, b) = (party(1), party(2));
    let old = login(&mut s, &a, t);
    let cb = login(&mut s, &b, t);
    let new = login(&mut s, &a, t);
    assert!(events(&mut s).contains(&ServerEvent::Close(old)));
    assert_eq!(
        drain(&mut s, old),
        vec![RelayToClient::Error(ErrorCode::Replaced)]
    );
    s.close(old); // must not unregister the new connection
    feed(
        &mut s,
        cb,
        ClientToRelay::SendPacket {
            dst: PeerAddr::Key(a.key()),
            payload: vec![3],
        },
        t,
    )
    .unwrap();
    assert_eq!(drain(&mut s, new).len(), 1);
    assert_eq!(s.metrics().replaced, 1);
    assert_eq!(s.metrics().authenticated, 2);
}

#[test]
fn auth_finishing_after_timeout_does_not_replace_live_connection() {
    let t = Instant::now();
    let mut s = server();
    let a = party(1);
    let live = login(&mut s, &a, t);
    // A second connection for the same key starts authenticating; the DID
    // resolution takes longer than the auth timeout.
    let slow = s.open([2; 32], t).unwrap();
    let Some(RelayToClient::ServerChallenge { nonce, .. }) = s.poll_transmit(slow) else {
        panic!()
    };
    let auth = sign_client_auth(&a.sk, &a.did, "k", RELAY, &nonce, UNIX);
    let Handled::VerifyAuth(auth) = feed(&mut s, slow, ClientToRelay::ClientAuth(auth), t).unwrap()
    else {
        panic!()
    };
    s.handle_timeout(t + Duration::from_secs(11));
    assert_eq!(
        s.finish_auth(slow, &auth, Some(&a.sk.verifying_key()), UNIX),
        Err(RelayError::AuthenticationFailed)
    );
    assert_eq!(s.metrics().replaced, 0);
    let b = party(2);
    let cb = login(&mut s, &b, t + Duration::from_secs(11));
    feed(
        &mut s,
        cb,
        ClientToRelay::SendPacket {
            dst: PeerAddr::Key(a.key()),
            payload: vec![1],
        },
        t + Duration::from_secs(11),
    )
    .unwrap();
    assert_eq!(drain(&mut s, live).len(), 1);
}

// Finding 6 (spec/rendezvous.md §4.5): DIDs are free, so one source may hold only
// `max_clients_per_source` connections; others still get in, and a closed connection
// frees its source's slot.
#[test]
fn one_source_cannot_take_every_slot() {
    let t = Instant::now();
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_clients = 8;
    cfg.max_clients_per_source = 3;
    let mut s = RelayServer::new(cfg);
    let attacker: std::net::IpAddr = "203.0.113.9".parse().unwrap();
    let mut held = Vec::new();
    for i in 0..8u8 {
        match s.open_from([i; 32], attacker, t) {
            Ok(c) => held.push(c),
            Err(e) => assert_eq!(e, RelayError::TooManyFromSource),
        }
    }
    assert_eq!(held.len(), 3);
    assert_eq!(s.metrics().rejected_per_source, 5);
    assert_eq!(
        RelayServer::refusal_frame_for(&RelayError::TooManyFromSource),
        RelayToClient::Overloaded(OverloadReason::TooManyFromSource)
    );
    // An IPv6 /64 is one source; another /64 is not.
    let v6a: std::net::IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let v6b: std::net::IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
    let v6c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
    for ip in [v6a, v6b, v6a] {
        s.open_from([9; 32], ip, t).unwrap();
    }
    assert_eq!(
        s.open_from([9; 32], v6b, t),
        Err(RelayError::TooManyFromSource)
    );
    s.open_from([9; 32], v6c, t).unwrap();
    // Honest parties elsewhere get the remaining global slot ...
    s.open_from([10; 32], "198.51.100.1".parse().unwrap(), t)
        .unwrap();
    assert_eq!(
        s.open_from([11; 32], "198.51.100.2".parse().unwrap(), t),
        Err(RelayError::TooManyClients)
    );
    // ... and a closed connection frees its source's slot.
    s.close(held[0]);
    s.open_from([12; 32], attacker, t).unwrap();
}

// Finding 7 (spec/rendezvous.md §4.5): a receiver's queue is shared fairly between
// senders. When a flooder has filled it, the flooder's frames are dropped (and only the
// flooder is told); the honest sender's frames get in and are served in turn.
#[test]
fn flooder_fills_a_receivers_queue_but_honest_sender_is_not_dropped() {
    let t = Instant::now();
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_queue_bytes = 64 * 1024;
    cfg.max_queue_frames = 1000;
    let mut s = RelayServer::new(cfg);
    let (flooder, victim, honest) = (party(1), party(2), party(3));
    let cf = login(&mut s, &flooder, t);
    let cv = login(&mut s, &victim, t);
    let ch = login(&mut s, &honest, t);
    let pkt = |seq: u8, n: usize| ClientToRelay::SendPacket {
        dst: PeerAddr::Did(victim.did.clone()),
        payload: vec![seq; n],
    };
    // The flood fills the whole queue and overflows it.
    for _ in 0..100 {
        feed(&mut s, cf, pkt(0xff, 1000), t).unwrap();
    }
    let dropped_flood = s.metrics().dropped_queue_full;
    assert!(dropped_flood > 0);
    assert_eq!(
        drain(&mut s, cf),
        vec![RelayToClient::Overloaded(OverloadReason::PeerQueueFull)]
    );
    // The honest sender's 20 frames all get in: the flooder's tail makes room.
    for i in 0..20 {
        feed(&mut s, ch, pkt(i, 1000), t).unwrap();
    }
    assert_eq!(
        drain(&mut s, ch),
        vec![],
        "the honest sender is never told to back off"
    );
    assert!(s.queued_bytes(cv).unwrap() <= 64 * 1024);
    // The flooder's further frames are the ones dropped (it is told at most once a second).
    let before = s.metrics().dropped_queue_full;
    for _ in 0..10 {
        feed(&mut s, cf, pkt(0xff, 1000), t).unwrap();
    }
    assert_eq!(s.metrics().dropped_queue_full, before + 10);
    // Delivery alternates between the two senders (deficit round robin), and the honest
    // frames arrive complete and in order.
    let out = drain(&mut s, cv);
    let honest_seq: Vec<u8> = out
        .iter()
        .filter_map(|f| match f {
            RelayToClient::RecvPacket {
                src_key, payload, ..
            } if *src_key == honest.key() => Some(payload[0]),
            _ => None,
        })
        .collect();
    assert_eq!(honest_seq, (0..20).collect::<Vec<u8>>());
    let first_honest = out
        .iter()
        .position(
            |f| matches!(f, RelayToClient::RecvPacket { src_key, .. } if *src_key == honest.key()),
        )
        .unwrap();
    assert!(
        first_honest < 130,
        "honest frames wait behind at most one quantum, at {first_honest}"
    );
}

// spec/rendezvous.md §4.4: a receiver that sent AllowPeers hears only from the listed
// senders; a stranger's packet is dropped at the relay and the stranger sees PeerGone,
// exactly as if the receiver were offline. `AllowPeers(None)` opens up again.
#[test]
fn allow_list_drops_strangers_packets() {
    let t = Instant::now();
    let mut s = server();
    let (stranger, party_b, friend) = (party(1), party(2), party(3));
    let cs = login(&mut s, &stranger, t);
    let cb = login(&mut s, &party_b, t);
    let cf = login(&mut s, &friend, t);
    feed(
        &mut s,
        cb,
        ClientToRelay::AllowPeers(Some(vec![PeerAddr::Did(friend.did.clone())])),
        t,
    )
    .unwrap();
    let to_b = |b: &[u8]| ClientToRelay::SendPacket {
        dst: PeerAddr::Key(party_b.key()),
        payload: b.to_vec(),
    };
    feed(&mut s, cs, to_b(b"junk"), t).unwrap();
    assert_eq!(
        drain(&mut s, cs),
        vec![RelayToClient::PeerGone(PeerAddr::Key(party_b.key()))]
    );
    feed(&mut s, cf, to_b(b"hello"), t).unwrap();
    let got = drain(&mut s, cb);
    assert_eq!(got.len(), 1);
    assert!(matches!(&got[0], RelayToClient::RecvPacket { payload, .. } if payload == b"hello"));
    assert_eq!(s.metrics().dropped_not_allowed, 1);
    feed(&mut s, cb, ClientToRelay::AllowPeers(None), t).unwrap();
    feed(&mut s, cs, to_b(b"now ok"), t).unwrap();
    assert_eq!(drain(&mut s, cb).len(), 1);
}

/// spec/rendezvous.md §4.5 "Backlog by backpressure": once a sender's packets waiting at
/// receivers exceed `max_backlog_bytes`, `read_pause` holds its reads until they drain; the
/// count follows every way a packet leaves a queue (sent, dropped, receiver closed).
#[test]
fn sender_backlog_pauses_its_reads_until_receivers_drain() {
    let t = Instant::now();
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_backlog_bytes = 1000;
    let mut s = RelayServer::new(cfg);
    let (a, b, c) = (party(1), party(2), party(3));
    let ca = login(&mut s, &a, t);
    let cb = login(&mut s, &b, t);
    let cc = login(&mut s, &c, t);
    let send = |s: &mut RelayServer, to: &Party| {
        feed(
            s,
            ca,
            ClientToRelay::SendPacket {
                dst: PeerAddr::Key(to.key()),
                payload: vec![1; 300],
            },
            t,
        )
        .unwrap();
    };
    let one = RelayToClient::RecvPacket {
        src_key: a.key(),
        src_did: a.did.clone(),
        payload: vec![1; 300],
    }
    .encoded_len();
    for _ in 0..2 {
        send(&mut s, &b);
        send(&mut s, &c);
    }
    assert_eq!(s.backlog_bytes(ca), Some(4 * one));
    assert!(4 * one > 1000);
    assert!(s.read_pause(ca, t).is_some(), "over the bound: not read");
    assert_eq!(s.read_pause(cb, t), None, "other clients are read");
    // B reads its two packets: A is back under the bound.
    assert_eq!(drain(&mut s, cb).len(), 2);
    assert_eq!(s.backlog_bytes(ca), Some(2 * one));
    assert_eq!(s.read_pause(ca, t), None);
    // C goes away with A's packets still queued: they no longer count.
    s.close(cc);
    assert_eq!(s.backlog_bytes(ca), Some(0));
    // Dropped packets leave the count too (a tiny queue at B).
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_queue_frames = 1;
    let mut s = RelayServer::new(cfg);
    let ca = login(&mut s, &a, t);
    let cx = login(&mut s, &c, t);
    let cb = login(&mut s, &b, t);
    for from in [ca, cx] {
        feed(
            &mut s,
            from,
            ClientToRelay::SendPacket {
                dst: PeerAddr::Key(b.key()),
                payload: vec![1; 300],
            },
            t,
        )
        .unwrap();
    }
    let total = s.backlog_bytes(ca).unwrap() + s.backlog_bytes(cx).unwrap();
    assert_eq!(
        Some(total),
        s.queued_bytes(cb),
        "the backlog is what B's queue holds"
    );
    drain(&mut s, cb);
    assert_eq!(
        (s.backlog_bytes(ca), s.backlog_bytes(cx)),
        (Some(0), Some(0))
    );
}
