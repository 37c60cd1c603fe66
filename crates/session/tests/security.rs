//! The key-management claims of spec/security.md §2 and §6 as tests: forward secrecy of a
//! recorded session against a later compromise of everything long-lived, fresh static keys
//! per secure session, and zeroization of the key-holding types.
//!
//! The attacker here uses snow directly (not this crate's handshake code) and opens records
//! with an independent AES-256-GCM (RustCrypto `aes-gcm`), as `tests/vectors.rs` does.
#![allow(clippy::unwrap_used)]

mod common;

use common::{
    counter_of, open_with_key, rekey, ALICE, BOB, INIT_EPH, INIT_STATIC, MPC, RESP_EPH,
    RESP_STATIC, ROSTER,
};
use mpc_did_session::messages::decode_fixed;
use mpc_did_session::{
    AcceptBody, Acceptor, HandshakeBody, ProposeBody, Proposer, Session, SessionBinding,
    SessionConfig, SessionError, StaticKeypair, EPOCH_BITS, NOISE_PARAMS,
};

const SESSION_ID: [u8; 16] = *b"forward-secrecy!";
// The attacker later learns the statics `INIT_STATIC`, `RESP_STATIC` (in reality erased;
// handing them over is the worst case of spec/security.md §1 "key compromise" (b)). The
// ephemerals `INIT_EPH`, `RESP_EPH` are for the positive control only.

const SECRET_A: &[u8] = b"initiator's MPC share: 0x5eb2a9...";
const SECRET_B: &[u8] = b"responder's MPC share: 0x77e01c...";

/// What a passive attacker records of one secure session: the DIDComm bodies (he can open
/// the authcrypt envelopes once he has the DID keys — handing him the bodies in clear is the
/// same) and every record both ways, in order.
struct Recording {
    propose: ProposeBody,
    accept: AcceptBody,
    handshake: HandshakeBody,
    /// Initiator → responder records, then responder → initiator.
    records: [Vec<Vec<u8>>; 2],
}

/// Runs a session between ALICE (acceptor, Noise initiator) and BOB (proposer, Noise
/// responder) with the statics above, and the given ephemerals or, with `None`, fresh random
/// ones as in production. The conversation crosses a key epoch and a path switch.
fn record_session(ephemerals: Option<([u8; 32], [u8; 32])>) -> Recording {
    let (init_eph, resp_eph) = match &ephemerals {
        Some((i, r)) => (Some(i), Some(r)),
        None => (None, None),
    };
    let (bob, propose) = Proposer::with_keypair(
        StaticKeypair::from_secret(RESP_STATIC),
        SESSION_ID,
        MPC,
        ROSTER,
        BOB,
        ALICE,
    );
    let (alice, accept) = Acceptor::on_propose_with(
        StaticKeypair::from_secret(INIT_STATIC),
        init_eph,
        &propose,
        MPC,
        ROSTER,
        ALICE,
        BOB,
    )
    .unwrap();
    let config = SessionConfig::default();
    let (mut b, handshake) = bob
        .on_accept_with(resp_eph, &accept, config.clone(), 0)
        .unwrap();
    let mut a = alice.on_handshake(&handshake, config, 0).unwrap();

    let mut records: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
    let s = a.open_stream().unwrap();
    a.send(0, s, SECRET_A).unwrap();
    move_all(&mut a, &mut b, &mut records);
    b.send(0, s, SECRET_B).unwrap();
    move_all(&mut a, &mut b, &mut records);
    // A new key epoch each way, then a path switch (explicit counters, RESUME frames).
    a.request_rekey();
    b.request_rekey();
    a.send(1, s, SECRET_A).unwrap();
    b.send(1, s, SECRET_B).unwrap();
    move_all(&mut a, &mut b, &mut records);
    a.resume(2).unwrap();
    b.resume(2).unwrap();
    a.send(2, s, SECRET_A).unwrap();
    move_all(&mut a, &mut b, &mut records);
    assert_eq!(a.stats().send_epoch, 1);
    Recording {
        propose,
        accept,
        handshake,
        records,
    }
}

fn move_all(a: &mut Session, b: &mut Session, recorded: &mut [Vec<Vec<u8>>; 2]) {
    loop {
        let ab: Vec<_> = std::iter::from_fn(|| a.poll_transmit()).collect();
        let ba: Vec<_> = std::iter::from_fn(|| b.poll_transmit()).collect();
        if ab.is_empty() && ba.is_empty() {
            return;
        }
        for r in &ab {
            b.handle_record(0, r).unwrap();
        }
        for r in &ba {
            a.handle_record(0, r).unwrap();
        }
        recorded[0].extend(ab);
        recorded[1].extend(ba);
        while a.poll_event().is_some() {}
        while b.poll_event().is_some() {}
    }
}

/// The binding, rebuilt from the recorded (public) bodies and the DIDs.
fn binding_of(rec: &Recording) -> SessionBinding {
    SessionBinding {
        session_id: decode_fixed(&rec.propose.session_id, "sid").unwrap(),
        mpc_session_id: rec.propose.mpc_session_id.clone(),
        initiator_did: ALICE.into(),
        responder_did: BOB.into(),
        roster_hash: decode_fixed(&rec.propose.roster_hash, "roster").unwrap(),
        initiator_static: decode_fixed(&rec.accept.noise_static, "is").unwrap(),
        responder_static: decode_fixed(&rec.propose.noise_static, "rs").unwrap(),
    }
}

fn builder<'a>(
    prologue: &'a [u8],
    local_secret: &'a [u8; 32],
    remote_public: &'a [u8; 32],
    ephemeral: Option<&'a [u8; 32]>,
) -> snow::Builder<'a> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().unwrap();
    let b = snow::Builder::new(params)
        .prologue(prologue)
        .unwrap()
        .local_private_key(local_secret)
        .unwrap()
        .remote_public_key(remote_public)
        .unwrap();
    match ephemeral {
        Some(e) => b.fixed_ephemeral_key_for_testing_only(e),
        None => b,
    }
}

/// What an attacker reaches by replaying the recorded handshake with both statics and a
/// guess of one ephemeral: the split keys (k_ir, k_ri) and the handshake message he wrote.
/// `None` if the replay already fails.
///
/// As the responder he can always read the recorded message 1 (its `es` and `ss` need only
/// the responder's static); he then writes a message 2 with his ephemeral (the guess). As
/// the initiator he writes message 1 with the guess and reads the recorded message 2.
fn replay(rec: &Recording, as_responder: bool, guess: Option<&[u8; 32]>) -> Option<Replayed> {
    let binding = binding_of(rec);
    let prologue = binding.prologue().unwrap();
    let msg1: [u8; 48] = decode_fixed(&rec.accept.handshake, "m1").unwrap();
    let msg2: [u8; 48] = decode_fixed(&rec.handshake.handshake, "m2").unwrap();
    let mut buf = [0u8; 128];
    let mut written = [0u8; 128];
    let (mut hs, n) = if as_responder {
        let mut hs = builder(&prologue, &RESP_STATIC, &binding.initiator_static, guess)
            .build_responder()
            .unwrap();
        // The statics suffice for message 1: the attacker's machinery is right.
        assert_eq!(hs.read_message(&msg1, &mut buf).unwrap(), 0);
        let n = hs.write_message(&[], &mut written).unwrap();
        (hs, n)
    } else {
        let mut hs = builder(&prologue, &INIT_STATIC, &binding.responder_static, guess)
            .build_initiator()
            .unwrap();
        let n = hs.write_message(&[], &mut written).unwrap();
        hs.read_message(&msg2, &mut buf).ok()?;
        (hs, n)
    };
    assert!(hs.is_handshake_finished());
    let (k_ir, k_ri) = hs.dangerously_get_raw_split();
    Some(Replayed {
        keys: [k_ir, k_ri],
        written: written[..n].to_vec(),
    })
}

struct Replayed {
    keys: [[u8; 32]; 2],
    written: Vec<u8>,
}

/// Each record's counter and header length (spec §5.1). Needs no key.
fn counters(records: &[Vec<u8>]) -> Vec<(u64, usize)> {
    let mut prev = None;
    records
        .iter()
        .map(|r| {
            let c = counter_of(r, prev);
            prev = Some(c.0);
            c
        })
        .collect()
}

/// Opens one record with the key of its counter's epoch (spec §5.5), derived from `k0`.
fn open_one(record: &[u8], c: (u64, usize), k0: [u8; 32]) -> Option<Vec<u8>> {
    let mut k = k0;
    for _ in 0..c.0 >> EPOCH_BITS {
        k = rekey(k);
    }
    open_with_key(record, c, k)
}

/// One direction's frames, or `None` as soon as one record does not open.
fn open_direction(records: &[Vec<u8>], k0: [u8; 32]) -> Option<Vec<Vec<u8>>> {
    records
        .iter()
        .zip(counters(records))
        .map(|(r, c)| open_one(r, c, k0))
        .collect()
}

fn contains(haystack: &[Vec<u8>], needle: &[u8]) -> usize {
    haystack
        .iter()
        .filter(|f| f.windows(needle.len()).any(|w| w == needle))
        .count()
}

/// Whether `keys` open any recorded record, in either direction, under either split key.
fn opens_anything(rec: &Recording, keys: [[u8; 32]; 2]) -> bool {
    rec.records.iter().any(|dir| {
        dir.iter()
            .zip(counters(dir))
            .any(|(r, c)| keys.iter().any(|k| open_one(r, c, *k).is_some()))
    })
}

/// Ephemeral secrets a later attacker might try: the leaked statics (an implementation
/// deriving ephemerals from statics), all-zero, the other side's static.
fn guesses() -> Vec<Option<[u8; 32]>> {
    vec![
        None, // a fresh random ephemeral
        Some([0; 32]),
        Some(INIT_STATIC),
        Some(RESP_STATIC),
    ]
}

#[test]
fn positive_control_the_ephemeral_secret_is_what_opens_a_recorded_session() {
    // The attacker's replay and record opener are correct: given one true ephemeral secret
    // besides the statics, they reproduce the recorded handshake and open every record.
    let rec = record_session(Some((INIT_EPH, RESP_EPH)));
    let recorded = [
        decode_fixed::<48>(&rec.handshake.handshake, "m2").unwrap(),
        decode_fixed::<48>(&rec.accept.handshake, "m1").unwrap(),
    ];
    for (as_responder, eph, msg) in [
        (true, RESP_EPH, recorded[0]),
        (false, INIT_EPH, recorded[1]),
    ] {
        let r = replay(&rec, as_responder, Some(&eph)).expect("the replay completes");
        assert_eq!(r.written, msg, "the replay rewrites the recorded message");
        let keys = r.keys;
        let a_to_b = open_direction(&rec.records[0], keys[0]).expect("A→B records open");
        let b_to_a = open_direction(&rec.records[1], keys[1]).expect("B→A records open");
        assert_eq!(
            contains(&a_to_b, SECRET_A),
            3,
            "incl. epoch 1 and after the resume"
        );
        assert_eq!(contains(&b_to_a, SECRET_B), 2);
    }
    assert!(rec.records[0].len() >= 4 && rec.records[1].len() >= 3);
}

#[test]
fn a_recorded_session_does_not_open_with_the_did_keys_and_both_statics() {
    // spec/security.md §2 "Forward secrecy": the same recording and attacker as the positive
    // control, minus the ephemeral secrets (erased by the endpoints). Once with the fixed
    // ephemerals of the control (so the only difference is the attacker's knowledge), once
    // with production's random ones.
    for rec in [
        record_session(Some((INIT_EPH, RESP_EPH))),
        record_session(None),
    ] {
        let msg2: [u8; 48] = decode_fixed(&rec.handshake.handshake, "m2").unwrap();
        for guess in guesses() {
            // As the initiator he cannot even read the recorded message 2 ...
            assert!(replay(&rec, false, guess.as_ref()).is_none(), "{guess:?}");
            // ... as the responder he finishes a handshake, but not the recorded one: his
            // keys open nothing.
            let r = replay(&rec, true, guess.as_ref()).unwrap();
            assert_ne!(r.written, msg2, "{guess:?}");
            assert!(!opens_anything(&rec, r.keys), "{guess:?}");
        }
    }
}

#[test]
fn every_secure_session_has_fresh_static_keys_and_fresh_transport_keys() {
    // spec/session.md §3, spec/security.md §2: the statics come from the OS RNG per secure
    // session (`Proposer::new`, `Acceptor::on_propose`: the constructors `crates/connect`
    // and `crates/driver` use) — two sessions between the same DIDs, with the same session
    // id, MPC session and roster, share no key.
    let run = || {
        let (bob, propose) = Proposer::new(SESSION_ID, MPC, ROSTER, BOB, ALICE);
        let (alice, accept) = Acceptor::on_propose(&propose, MPC, ROSTER, ALICE, BOB).unwrap();
        let (b, hs) = bob.on_accept(&accept, SessionConfig::default(), 0).unwrap();
        let a = alice
            .on_handshake(&hs, SessionConfig::default(), 0)
            .unwrap();
        (propose.noise_static, accept.noise_static, a, b)
    };
    let (p1, a1, mut sa1, mut sb1) = run();
    let (p2, a2, mut sa2, mut sb2) = run();
    let statics = [&p1, &a1, &p2, &a2];
    for (i, x) in statics.iter().enumerate() {
        for y in &statics[i + 1..] {
            assert_ne!(x, y, "a static key was reused");
        }
    }
    assert_ne!(sa1.handshake_hash(), sa2.handshake_hash());
    // Different transport keys: the same plaintext at the same counter seals differently,
    // and each session's records open only in that session.
    let mut sealed = Vec::new();
    for s in [&mut sa1, &mut sa2] {
        let id = s.open_stream().unwrap();
        s.send(0, id, b"same bytes, same counter").unwrap();
        sealed.push(s.poll_transmit().unwrap());
    }
    assert_ne!(sealed[0], sealed[1]);
    assert_eq!(sb2.handle_record(0, &sealed[0]), Err(SessionError::Decrypt));
    assert_eq!(sb1.handle_record(0, &sealed[1]), Err(SessionError::Decrypt));
    sb1.handle_record(0, &sealed[0]).unwrap();
    sb2.handle_record(0, &sealed[1]).unwrap();
}

/// Compiles only for types whose drop zeroizes them.
fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}

#[test]
fn key_holding_types_zeroize_on_drop() {
    // spec/session.md §9 "the static secret keys are zeroized". The Noise static secret is
    // the only raw key a caller can hold (`Proposer` holds one until `on_accept` consumes
    // it); removing the derive from `StaticKeypair` stops this test from compiling. Transport
    // keys are never exposed: the split keys live in `Zeroizing` buffers until installed in
    // cipher objects, which overwrite them on drop (unit test in src/cipher.rs).
    zeroized_on_drop::<StaticKeypair>();
    zeroized_on_drop::<zeroize::Zeroizing<[u8; 32]>>();
}

#[test]
fn current_keys_expose_later_epochs_but_no_earlier_one() {
    // spec/session.md §5.5: an attacker who dumps a side's memory in epoch 2 gets k_2. REKEY
    // is a public function, so k_2 opens epoch 2 and every later epoch of the session (what
    // "at most the current epoch" overstated); it opens no earlier one, because REKEY is
    // one-way (AES-256 of zeros under the key) and k_0, k_1 were erased.
    let mut p = common::fixed_pair(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    let mut by_epoch = Vec::new();
    let mut prev = None;
    for e in 0..4u64 {
        p.a.send(0, s, format!("epoch {e}").as_bytes()).unwrap();
        let recs = p.take_a();
        let c = counter_of(&recs[0], prev);
        prev = Some(c.0);
        assert_eq!(c.0 >> EPOCH_BITS, e);
        by_epoch.push((recs[0].clone(), c));
        p.deliver_to_b(&recs);
        p.a.request_rekey();
    }
    let k0 = common::split_keys()[0];
    let k2 = rekey(rekey(k0));
    let opens = |e: usize, k| open_with_key(&by_epoch[e].0, by_epoch[e].1, k).is_some();
    assert!(opens(2, k2));
    assert!(opens(3, rekey(k2)), "later epochs follow from k_2");
    assert!(!opens(1, k2) && !opens(0, k2), "earlier ones do not");
    assert!(
        opens(1, rekey(k0)) && opens(0, k0),
        "(those records are genuine)"
    );
}
