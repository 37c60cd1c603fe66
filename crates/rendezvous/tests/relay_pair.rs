//! Deterministic in-memory harness: two relay clients and the relay server
//! exchanging real encoded bytes, chunked as a TCP stream would deliver
//! them (spec/rendezvous.md §4).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ed25519_dalek::SigningKey;
use mpc_did_rendezvous::relay::{ClientToRelay, OverloadReason, PeerAddr, RelayToClient};
use mpc_did_rendezvous::relay_client::{ClientEvent, RelayClient};
use mpc_did_rendezvous::relay_server::{ConnId, Handled, RelayConfig, RelayServer, ServerEvent};
use mpc_did_rendezvous::RelayError;

const RELAY: &str = "did:web:mediator.example";
const UNIX: u64 = 1_800_000_000;

/// One side of a connection: the client core plus the two byte pipes.
struct Peer {
    client: RelayClient,
    conn: ConnId,
    to_relay: Vec<u8>,
    from_relay: Vec<u8>,
    events: Vec<ClientEvent>,
    key: SigningKey,
}

struct World {
    server: RelayServer,
    peers: Vec<Peer>,
    now: Instant,
    chunk: usize,
}

impl World {
    fn new(chunk: usize) -> Self {
        World {
            server: RelayServer::new(RelayConfig::new(RELAY)),
            peers: vec![],
            now: Instant::now(),
            chunk,
        }
    }

    fn join(&mut self, n: u8) -> usize {
        let key = SigningKey::from_bytes(&[n; 32]);
        let did = format!("did:key:party{n}");
        let client = RelayClient::new(
            key.clone(),
            did.clone(),
            format!("{did}#key"),
            Some(RELAY.into()),
        );
        let conn = self.server.open([n; 32], self.now).unwrap();
        self.peers.push(Peer {
            client,
            conn,
            to_relay: vec![],
            from_relay: vec![],
            events: vec![],
            key,
        });
        self.peers.len() - 1
    }

    /// Moves bytes both ways, `chunk` bytes at a time, until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            // Relay -> clients.
            while let Some(ev) = self.server.poll_event() {
                let (ServerEvent::Wake(c) | ServerEvent::Close(c)) = ev;
                let Some(p) = self.peers.iter_mut().find(|p| p.conn == c) else {
                    continue;
                };
                while let Some(f) = self.server.poll_transmit(c) {
                    f.write_to(&mut p.from_relay).unwrap();
                }
            }
            for p in &mut self.peers {
                let mut buf = Vec::new();
                for piece in std::mem::take(&mut p.from_relay).chunks(self.chunk) {
                    buf.extend_from_slice(piece);
                    while let Some((f, used)) = RelayToClient::decode(&buf).unwrap() {
                        buf.drain(..used);
                        moved = true;
                        match p.client.on_frame(f, UNIX).unwrap() {
                            ClientEvent::Send(out) => out.write_to(&mut p.to_relay).unwrap(),
                            ev => p.events.push(ev),
                        }
                    }
                }
                assert!(buf.is_empty());
            }
            // Clients -> relay.
            for i in 0..self.peers.len() {
                let bytes = std::mem::take(&mut self.peers[i].to_relay);
                let conn = self.peers[i].conn;
                let mut buf = Vec::new();
                for piece in bytes.chunks(self.chunk) {
                    buf.extend_from_slice(piece);
                    while let Some((f, used)) = ClientToRelay::decode(&buf).unwrap() {
                        buf.drain(..used);
                        moved = true;
                        if let Handled::VerifyAuth(a) =
                            self.server.handle(conn, f, used, self.now).unwrap()
                        {
                            // The shell resolves a.did's document; here the key is known.
                            assert!(a.key_id.starts_with(&a.did));
                            let vk = self.peers[i].key.verifying_key();
                            self.server.finish_auth(conn, &a, Some(&vk), UNIX).unwrap();
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, payload: &[u8]) {
        let dst = PeerAddr::Key(self.peers[to].key.verifying_key().to_bytes());
        let f = self.peers[from]
            .client
            .send_packet(dst, payload.to_vec())
            .unwrap();
        f.write_to(&mut self.peers[from].to_relay).unwrap();
    }
}

#[test]
fn two_clients_talk_through_the_relay() {
    for chunk in [1, 3, 7, 1500] {
        let mut w = World::new(chunk);
        let a = w.join(1);
        let b = w.join(2);
        assert!(matches!(
            w.peers[a]
                .client
                .send_packet(PeerAddr::Key([0; 32]), vec![]),
            Err(RelayError::NotAuthenticated)
        ));
        w.pump();
        assert_eq!(w.peers[a].events, vec![ClientEvent::Ready]);
        assert_eq!(w.peers[b].events, vec![ClientEvent::Ready]);
        w.send(a, b, b"record-1");
        w.send(a, b, b"record-2");
        w.send(b, a, &[7u8; 60_000]);
        w.pump();
        let a_key = w.peers[a].key.verifying_key().to_bytes();
        assert_eq!(
            w.peers[b].events[1..],
            [
                ClientEvent::Packet {
                    src_key: a_key,
                    src_did: "did:key:party1".into(),
                    payload: b"record-1".to_vec()
                },
                ClientEvent::Packet {
                    src_key: a_key,
                    src_did: "did:key:party1".into(),
                    payload: b"record-2".to_vec()
                },
            ]
        );
        assert!(
            matches!(&w.peers[a].events[1], ClientEvent::Packet { payload, .. } if payload.len() == 60_000)
        );
        assert_eq!(w.server.metrics().forwarded_packets, 3);
    }
}

#[test]
fn client_refuses_wrong_relay_and_unexpected_frames() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let mut c = RelayClient::new(key.clone(), "did:key:a", "did:key:a#k", Some(RELAY.into()));
    let r = c.on_frame(
        RelayToClient::ServerChallenge {
            relay_id: "did:web:evil.example".into(),
            nonce: [0; 32],
        },
        UNIX,
    );
    assert_eq!(r, Err(RelayError::WrongRelay));
    // A packet before authentication is a protocol violation by the relay.
    let mut c = RelayClient::new(key.clone(), "did:key:a", "did:key:a#k", None);
    let r = c.on_frame(
        RelayToClient::RecvPacket {
            src_key: [0; 32],
            src_did: String::new(),
            payload: vec![],
        },
        UNIX,
    );
    assert_eq!(r, Err(RelayError::UnexpectedFrame));
    // AuthFailed closes; nothing is accepted afterwards.
    let mut c = RelayClient::new(key, "did:key:a", "did:key:a#k", None);
    assert!(matches!(
        c.on_frame(
            RelayToClient::ServerChallenge {
                relay_id: RELAY.into(),
                nonce: [1; 32]
            },
            UNIX
        ),
        Ok(ClientEvent::Send(_))
    ));
    assert_eq!(
        c.on_frame(RelayToClient::AuthFailed, UNIX),
        Ok(ClientEvent::Closed(None))
    );
    assert_eq!(
        c.on_frame(RelayToClient::AuthOk, UNIX),
        Err(RelayError::UnexpectedFrame)
    );
    assert!(!c.is_ready());
}

// A frame out of place once authenticated (a second challenge or AuthOk) is ignored as
// Stray, never fatal: nothing that reaches an authenticated client ends its connection.
#[test]
fn out_of_place_frames_after_auth_are_stray_not_fatal() {
    let key = SigningKey::from_bytes(&[2; 32]);
    let mut c = RelayClient::new(key, "did:key:b", "did:key:b#k", None);
    assert!(matches!(
        c.on_frame(
            RelayToClient::ServerChallenge {
                relay_id: RELAY.into(),
                nonce: [1; 32]
            },
            UNIX
        ),
        Ok(ClientEvent::Send(_))
    ));
    assert_eq!(
        c.on_frame(RelayToClient::AuthOk, UNIX),
        Ok(ClientEvent::Ready)
    );
    assert!(matches!(
        c.on_frame(RelayToClient::AuthOk, UNIX),
        Ok(ClientEvent::Stray(_))
    ));
    assert!(matches!(
        c.on_frame(
            RelayToClient::ServerChallenge {
                relay_id: RELAY.into(),
                nonce: [2; 32]
            },
            UNIX
        ),
        Ok(ClientEvent::Stray(_))
    ));
    assert!(c.is_ready());
    // A refusal before authentication says why.
    let mut c = RelayClient::new(
        SigningKey::from_bytes(&[3; 32]),
        "did:key:c",
        "did:key:c#k",
        None,
    );
    assert_eq!(
        c.on_frame(
            RelayToClient::Overloaded(OverloadReason::TooManyFromSource),
            UNIX
        ),
        Ok(ClientEvent::Overloaded(OverloadReason::TooManyFromSource))
    );
}

/// spec/session.md §7.5 "Relay addressing": a client answers the relay's
/// Ping with a Pong carrying the same 8 bytes, before and after authentication.
#[test]
fn client_answers_a_relay_ping_with_the_same_bytes() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let mut c = RelayClient::new(key, "did:key:a", "did:key:a#k", None);
    let ping = [9, 8, 7, 6, 5, 4, 3, 2];
    assert!(matches!(
        c.on_frame(
            RelayToClient::ServerChallenge {
                relay_id: RELAY.into(),
                nonce: [0; 32],
            },
            UNIX,
        ),
        Ok(ClientEvent::Send(ClientToRelay::ClientAuth(_)))
    ));
    assert_eq!(
        c.on_frame(RelayToClient::Ping(ping), UNIX),
        Ok(ClientEvent::Send(ClientToRelay::Pong(ping)))
    );
    assert_eq!(
        c.on_frame(RelayToClient::AuthOk, UNIX),
        Ok(ClientEvent::Ready)
    );
    assert_eq!(
        c.on_frame(RelayToClient::Ping(ping), UNIX),
        Ok(ClientEvent::Send(ClientToRelay::Pong(ping)))
    );
}
