//! Fuzzes the session transport of an established pair (spec/session.md §5–7): arbitrary
//! bytes as a path byte stream (record decoder + `handle_record`), arbitrary authenticated
//! frame plaintexts (the post-decryption parser and state machine), interleaved with
//! writes, timers and path switches. Nothing may panic or hang.
//!
//! Input: a sequence of `op:u8 len:u16le bytes[len]`. The pair uses the fixed keys of
//! `crates/session/tests/vectors/session.json`, so the initiator's records there are valid
//! seeds for op 0 (records with an explicit counter first, then implicit ones: spec §5.1).
//! `fuzz/seeds/session_frame/` is built from those vectors and checked by
//! `crates/session/tests/vectors.rs` (`fuzz_seeds_embed_the_vectors`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mpc_did_session::{Acceptor, Proposer, RecordDecoder, Session, SessionConfig, StaticKeypair};

const MPC: &str = "3f0c9a1be25d47f08c6e13a5b7d9f201";
const INIT_DID: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
const RESP_DID: &str = "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG";

fn pair() -> Option<(Session, Session)> {
    let mut roster = [0u8; 32];
    for (i, b) in roster.iter_mut().enumerate() {
        *b = i as u8;
    }
    let init = StaticKeypair::from_secret([0x11; 32]);
    let resp = StaticKeypair::from_secret([0x22; 32]);
    let (proposer, propose) =
        Proposer::with_keypair(resp, *b"sess-0123456789a", MPC, roster, RESP_DID, INIT_DID);
    let (acceptor, accept) = Acceptor::on_propose_with(
        init,
        Some(&[0x33; 32]),
        &propose,
        MPC,
        roster,
        INIT_DID,
        RESP_DID,
    )
    .ok()?;
    let config = SessionConfig {
        max_unacked_bytes: 1 << 20,
        ..SessionConfig::default()
    };
    let (r, hs) = proposer
        .on_accept_with(Some(&[0x44; 32]), &accept, config.clone(), 0)
        .ok()?;
    let i = acceptor.on_handshake(&hs, config, 0).ok()?;
    Some((i, r))
}

fn deliver(from: &mut Session, to: &mut Session, now: u64) {
    // Bounded: a session answers a record with at most a few records.
    for _ in 0..64 {
        let Some(rec) = from.poll_transmit() else {
            break;
        };
        let _ = to.handle_record(now, &rec);
    }
    while to.poll_event().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let Some((mut a, mut b)) = pair() else { return };
    let stream = a.open_stream().unwrap_or(0);
    let mut dec = RecordDecoder::new();
    let mut now = 0u64;
    let mut rest = data;
    while let [op, l0, l1, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (chunk, next) = tail.split_at(len);
        rest = next;
        match op % 5 {
            0 => {
                dec.push(chunk);
                loop {
                    match dec.next_record() {
                        Ok(Some(rec)) => {
                            let _ = b.handle_record(now, &rec);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            dec = RecordDecoder::new();
                            break;
                        }
                    }
                }
                while b.poll_event().is_some() {}
            }
            1 => {
                let _ = a.seal_raw_frame_for_testing(now, chunk);
                deliver(&mut a, &mut b, now);
            }
            2 => {
                let _ = a.send(now, stream, chunk);
                deliver(&mut a, &mut b, now);
                deliver(&mut b, &mut a, now);
            }
            3 => {
                now += u64::from(chunk.first().copied().unwrap_or(1)) * 1000;
                let _ = a.handle_timeout(now);
                let _ = b.handle_timeout(now);
                deliver(&mut a, &mut b, now);
                deliver(&mut b, &mut a, now);
            }
            _ => {
                let _ = a.resume(now);
                let _ = b.resume(now);
                deliver(&mut a, &mut b, now);
                deliver(&mut b, &mut a, now);
            }
        }
    }
});
