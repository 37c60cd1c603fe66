//! The relay core's mesh hook (spec/rendezvous.md §4.7), two `RelayServer`s wired by hand
//! as the mediator's mesh shell wires them: presence events, a packet for a peer on the
//! other instance, the receiver's allow-list and queue limit applied there, and notices
//! travelling back to the sender. Deterministic: no sockets, explicit time.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ed25519_dalek::SigningKey;
use mpc_did_rendezvous::relay::{
    sign_client_auth, ClientToRelay, OverloadReason, PeerAddr, RelayToClient,
};
use mpc_did_rendezvous::relay_server::{ConnId, Handled, MeshEvent, RelayConfig, RelayServer};

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

fn mesh(s: &mut RelayServer) -> Vec<MeshEvent> {
    std::iter::from_fn(|| s.poll_mesh()).collect()
}

fn login(s: &mut RelayServer, p: &Party, now: Instant) -> ConnId {
    let c = s.open([p.key()[0]; 32], now).unwrap();
    let Some(RelayToClient::ServerChallenge { relay_id, nonce }) = s.poll_transmit(c) else {
        panic!("no challenge")
    };
    let auth = sign_client_auth(&p.sk, &p.did, "k", &relay_id, &nonce, UNIX);
    let len = ClientToRelay::ClientAuth(auth.clone()).encoded_len();
    let Handled::VerifyAuth(a) = s
        .handle(c, ClientToRelay::ClientAuth(auth), len, now)
        .unwrap()
    else {
        panic!()
    };
    s.finish_auth(c, &a, Some(&p.sk.verifying_key()), UNIX + 5)
        .unwrap();
    assert_eq!(drain(s, c), vec![RelayToClient::AuthOk]);
    c
}

fn send(s: &mut RelayServer, c: ConnId, dst: PeerAddr, payload: &[u8], now: Instant) {
    let m = ClientToRelay::SendPacket {
        dst,
        payload: payload.to_vec(),
    };
    let len = m.encoded_len();
    s.handle(c, m, len, now).unwrap();
}

/// Carries every event of `from` to `to` as the mesh shell does when `to` holds the peer.
fn carry(from: &mut RelayServer, to: &mut RelayServer, now: Instant) -> usize {
    let mut n = 0;
    for ev in mesh(from) {
        match ev {
            MeshEvent::Forward {
                src_key,
                src_did,
                dst,
                payload,
            } => {
                to.deliver_from_mesh(src_key, src_did, dst, payload, now);
                n += 1;
            }
            MeshEvent::Notice { to_key, frame } => {
                to.mesh_notice(&to_key, frame, now);
                n += 1;
            }
            _ => {}
        }
    }
    n
}

#[test]
fn without_the_hook_an_unknown_peer_is_peer_gone() {
    let t = Instant::now();
    let mut s = RelayServer::new(RelayConfig::new(RELAY));
    let a = party(1);
    let ca = login(&mut s, &a, t);
    send(&mut s, ca, PeerAddr::Key([9; 32]), b"x", t);
    assert_eq!(
        drain(&mut s, ca),
        vec![RelayToClient::PeerGone(PeerAddr::Key([9; 32]))]
    );
    assert!(mesh(&mut s).is_empty());
}

#[test]
fn presence_events_follow_authentication_and_close() {
    let t = Instant::now();
    let mut s = RelayServer::new(RelayConfig::new(RELAY));
    s.enable_mesh();
    let a = party(1);
    let c1 = login(&mut s, &a, t);
    assert_eq!(
        mesh(&mut s),
        vec![MeshEvent::Joined {
            key: a.key(),
            did: a.did.clone()
        }]
    );
    // A reconnect replaces the old connection: the old one's close withdraws nothing.
    let c2 = login(&mut s, &a, t);
    s.close(c1);
    assert_eq!(
        mesh(&mut s),
        vec![MeshEvent::Joined {
            key: a.key(),
            did: a.did.clone()
        }]
    );
    assert_eq!(s.authenticated_peers(), vec![(a.key(), a.did.clone())]);
    s.close(c2);
    assert_eq!(
        mesh(&mut s),
        vec![MeshEvent::Left {
            key: a.key(),
            did: a.did.clone()
        }]
    );
}

#[test]
fn packets_cross_instances_in_order_and_notices_come_back() {
    let t = Instant::now();
    let (mut one, mut two) = (
        RelayServer::new(RelayConfig::new(RELAY)),
        RelayServer::new(RelayConfig::new(RELAY)),
    );
    one.enable_mesh();
    two.enable_mesh();
    let (a, b) = (party(1), party(2));
    let ca = login(&mut one, &a, t);
    let cb = login(&mut two, &b, t);
    mesh(&mut one);
    mesh(&mut two);

    for i in 0..5u8 {
        send(&mut one, ca, PeerAddr::Key(b.key()), &[i; 100], t);
    }
    send(&mut one, ca, PeerAddr::Did(b.did.clone()), b"by did", t);
    // Nothing answered locally: the packets wait for the mesh.
    assert!(drain(&mut one, ca).is_empty());
    assert_eq!(one.metrics().mesh_out_packets, 6);
    assert_eq!(carry(&mut one, &mut two, t), 6);
    let got = drain(&mut two, cb);
    assert_eq!(got.len(), 6);
    for (i, f) in got.iter().take(5).enumerate() {
        let RelayToClient::RecvPacket {
            src_key,
            src_did,
            payload,
        } = f
        else {
            panic!("{f:?}")
        };
        assert_eq!((*src_key, src_did.as_str()), (a.key(), a.did.as_str()));
        assert_eq!(payload, &vec![i as u8; 100]);
    }
    assert_eq!(two.metrics().mesh_in_packets, 6);

    // B names only someone else: A's next packet is refused there and A hears PeerGone,
    // exactly as from a single relay (§4.4).
    let m = ClientToRelay::AllowPeers(Some(vec![PeerAddr::Key([7; 32])]));
    let len = m.encoded_len();
    two.handle(cb, m, len, t).unwrap();
    send(&mut one, ca, PeerAddr::Key(b.key()), b"stranger now", t);
    carry(&mut one, &mut two, t);
    assert!(drain(&mut two, cb).is_empty());
    assert_eq!(carry(&mut two, &mut one, t), 1);
    assert_eq!(
        drain(&mut one, ca),
        vec![RelayToClient::PeerGone(PeerAddr::Key(b.key()))]
    );
    assert_eq!(two.metrics().dropped_not_allowed, 1);
}

#[test]
fn a_full_receiver_queue_tells_the_remote_sender() {
    let t = Instant::now();
    let mut cfg = RelayConfig::new(RELAY);
    cfg.max_queue_frames = 3;
    let (mut one, mut two) = (RelayServer::new(cfg.clone()), RelayServer::new(cfg));
    one.enable_mesh();
    two.enable_mesh();
    let (a, b) = (party(1), party(2));
    let ca = login(&mut one, &a, t);
    let cb = login(&mut two, &b, t);
    mesh(&mut one);
    mesh(&mut two);
    for _ in 0..5 {
        send(&mut one, ca, PeerAddr::Key(b.key()), b"p", t);
    }
    carry(&mut one, &mut two, t);
    // Three fit; the rest are dropped and one notice (per packet) goes back; the sender's
    // relay sends at most one Overloaded a second.
    assert_eq!(two.queued_bytes(cb).map(|b| b > 0), Some(true));
    assert!(carry(&mut two, &mut one, t) >= 1);
    assert_eq!(
        drain(&mut one, ca),
        vec![RelayToClient::Overloaded(OverloadReason::PeerQueueFull)]
    );
    assert_eq!(drain(&mut two, cb).len(), 3);
    assert_eq!(two.metrics().dropped_queue_full, 2);
}

#[test]
fn notices_for_unknown_keys_and_stray_frames_are_ignored() {
    let t = Instant::now();
    let mut s = RelayServer::new(RelayConfig::new(RELAY));
    s.enable_mesh();
    let a = party(1);
    let ca = login(&mut s, &a, t);
    s.mesh_notice(&[3; 32], RelayToClient::PeerGone(PeerAddr::Key([4; 32])), t);
    s.mesh_notice(&a.key(), RelayToClient::AuthOk, t);
    assert!(drain(&mut s, ca).is_empty());
    s.deliver_from_mesh(
        [5; 32],
        "did:key:x".into(),
        PeerAddr::Key([6; 32]),
        vec![1],
        t,
    );
    assert!(matches!(
        mesh(&mut s).as_slice(),
        [
            MeshEvent::Joined { .. },
            MeshEvent::Notice {
                to_key: [5, ..],
                frame: RelayToClient::PeerGone(_)
            }
        ]
    ));
}
