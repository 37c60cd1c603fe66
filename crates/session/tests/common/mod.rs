//! A deterministic in-memory pair of sessions: no sockets, a virtual millisecond clock
//! (STYLE.md §4; the shape of quinn-proto's `tests/util.rs`).
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use mpc_did_session::{Acceptor, Event, Proposer, Session, SessionConfig};

pub const MPC: &str = "mpc-session-42";
pub const ROSTER: [u8; 32] = [9u8; 32];
pub const ALICE: &str = "did:key:z6MkAlice";
pub const BOB: &str = "did:key:z6MkBob";

/// Side `A` is the acceptor (Noise initiator), side `B` the proposer (Noise responder).
pub struct Pair {
    pub a: Session,
    pub b: Session,
    pub now: u64,
    pub a_events: Vec<Event>,
    pub b_events: Vec<Event>,
}

pub fn handshake(config: SessionConfig) -> (Session, Session) {
    let (bob, propose) = Proposer::new([3; 16], MPC, ROSTER, BOB, ALICE);
    let (alice, accept) = Acceptor::on_propose(&propose, MPC, ROSTER, ALICE, BOB).unwrap();
    let (b, hs) = bob.on_accept(&accept, config.clone(), 0).unwrap();
    let a = alice.on_handshake(&hs, config, 0).unwrap();
    (a, b)
}

impl Pair {
    pub fn new(config: SessionConfig) -> Self {
        let (a, b) = handshake(config);
        Self {
            a,
            b,
            now: 0,
            a_events: Vec::new(),
            b_events: Vec::new(),
        }
    }

    /// Records waiting in A's outbox (A → B).
    pub fn take_a(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.a.poll_transmit()).collect()
    }

    /// Records waiting in B's outbox (B → A).
    pub fn take_b(&mut self) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| self.b.poll_transmit()).collect()
    }

    pub fn deliver_to_b(&mut self, records: &[Vec<u8>]) {
        for r in records {
            self.b.handle_record(self.now, r).unwrap();
        }
        self.b_events
            .extend(std::iter::from_fn(|| self.b.poll_event()));
    }

    pub fn deliver_to_a(&mut self, records: &[Vec<u8>]) {
        for r in records {
            self.a.handle_record(self.now, r).unwrap();
        }
        self.a_events
            .extend(std::iter::from_fn(|| self.a.poll_event()));
    }

    /// Moves records both ways until both outboxes are empty.
    pub fn flush(&mut self) {
        for _ in 0..10_000 {
            let ab = self.take_a();
            let ba = self.take_b();
            if ab.is_empty() && ba.is_empty() {
                return;
            }
            self.deliver_to_b(&ab);
            self.deliver_to_a(&ba);
        }
        panic!("pair did not quiesce");
    }

    /// Advances the clock, runs both timers and flushes.
    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.a.handle_timeout(self.now).unwrap();
        self.b.handle_timeout(self.now).unwrap();
        self.flush();
    }
}

/// Concatenates the `Data` events per stream.
pub fn stream_bytes(events: &[Event]) -> BTreeMap<u32, Vec<u8>> {
    let mut m: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for e in events {
        if let Event::Data { stream, data } = e {
            m.entry(*stream).or_default().extend_from_slice(data);
        }
    }
    m
}

/// A deterministic byte pattern.
pub fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
