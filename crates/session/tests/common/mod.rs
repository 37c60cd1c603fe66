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

/// Fixed keys for tests that must know the split keys: the session is built with these
/// statics and ephemerals, and [`split_keys`] recomputes its keys with snow used directly.
pub const INIT_STATIC: [u8; 32] = [0xa1; 32];
pub const RESP_STATIC: [u8; 32] = [0xb2; 32];
pub const INIT_EPH: [u8; 32] = [0xc3; 32];
pub const RESP_EPH: [u8; 32] = [0xd4; 32];
pub const FIXED_SESSION_ID: [u8; 16] = *b"fixed-session-id";

/// A pair like [`Pair::new`], but with the fixed keys above (A = ALICE the acceptor / Noise
/// initiator, B = BOB the proposer).
pub fn fixed_pair(config: SessionConfig) -> Pair {
    use mpc_did_session::StaticKeypair;
    let (bob, propose) = Proposer::with_keypair(
        StaticKeypair::from_secret(RESP_STATIC),
        FIXED_SESSION_ID,
        MPC,
        ROSTER,
        BOB,
        ALICE,
    );
    let (alice, accept) = Acceptor::on_propose_with(
        StaticKeypair::from_secret(INIT_STATIC),
        Some(&INIT_EPH),
        &propose,
        MPC,
        ROSTER,
        ALICE,
        BOB,
    )
    .unwrap();
    let (b, hs) = bob
        .on_accept_with(Some(&RESP_EPH), &accept, config.clone(), 0)
        .unwrap();
    let a = alice.on_handshake(&hs, config, 0).unwrap();
    Pair {
        a,
        b,
        now: 0,
        a_events: Vec::new(),
        b_events: Vec::new(),
    }
}

/// The split keys `[k_ir, k_ri]` of [`fixed_pair`], computed by snow directly.
pub fn split_keys() -> [[u8; 32]; 2] {
    use mpc_did_session::{SessionBinding, StaticKeypair, NOISE_PARAMS};
    let binding = SessionBinding {
        session_id: FIXED_SESSION_ID,
        mpc_session_id: MPC.into(),
        initiator_did: ALICE.into(),
        responder_did: BOB.into(),
        roster_hash: ROSTER,
        initiator_static: StaticKeypair::from_secret(INIT_STATIC).public(),
        responder_static: StaticKeypair::from_secret(RESP_STATIC).public(),
    };
    let prologue = binding.prologue().unwrap();
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let build = |local: &[u8; 32], remote: &[u8; 32], eph: &[u8; 32], initiator: bool| {
        let b = snow::Builder::new(params.clone())
            .prologue(&prologue)
            .unwrap()
            .local_private_key(local)
            .unwrap()
            .remote_public_key(remote)
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(eph);
        if initiator {
            b.build_initiator().unwrap()
        } else {
            b.build_responder().unwrap()
        }
    };
    let mut i = build(&INIT_STATIC, &binding.responder_static, &INIT_EPH, true);
    let mut r = build(&RESP_STATIC, &binding.initiator_static, &RESP_EPH, false);
    let (mut m, mut buf) = ([0u8; 64], [0u8; 64]);
    let n = i.write_message(&[], &mut m).unwrap();
    r.read_message(&m[..n], &mut buf).unwrap();
    let n = r.write_message(&[], &mut m).unwrap();
    i.read_message(&m[..n], &mut buf).unwrap();
    let (k_ir, k_ri) = i.dangerously_get_raw_split();
    [k_ir, k_ri]
}

/// Noise REKEY (Noise spec §4.2) with an independent AES-256-GCM.
pub fn rekey(k: [u8; 32]) -> [u8; 32] {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&u64::MAX.to_be_bytes());
    let out = aes_gcm::Aes256Gcm::new_from_slice(&k)
        .unwrap()
        .encrypt(
            aes_gcm::Nonce::from_slice(&n),
            Payload {
                msg: &[0u8; 32],
                aad: &[],
            },
        )
        .unwrap();
    out[..32].try_into().unwrap()
}

/// A record's counter and header length (spec §5.1), parsed independently of the crate:
/// explicit if E (bit 15 of the length) is set, else `prev + 1`.
pub fn counter_of(record: &[u8], prev: Option<u64>) -> (u64, usize) {
    let length = u16::from_be_bytes([record[0], record[1]]);
    if length & 0x8000 != 0 {
        (u64::from_be_bytes(record[2..10].try_into().unwrap()), 10)
    } else {
        (prev.unwrap() + 1, 2)
    }
}

/// Opens one record (spec §5.2: header as AD, counter as nonce) under `key` with an
/// independent AES-256-GCM; `None` if it does not authenticate.
pub fn open_with_key(
    record: &[u8],
    (counter, header_len): (u64, usize),
    key: [u8; 32],
) -> Option<Vec<u8>> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    aes_gcm::Aes256Gcm::new_from_slice(&key)
        .unwrap()
        .decrypt(
            aes_gcm::Nonce::from_slice(&n),
            Payload {
                msg: &record[header_len..],
                aad: &record[..header_len],
            },
        )
        .ok()
}
