//! The denial-of-service bounds of spec/security.md §8, each at its default value, on the
//! deterministic pair (`tests/common`).
#![allow(clippy::unwrap_used)]

mod common;

use common::{pattern, stream_bytes, Pair};
use mpc_did_session::frame::Frame;
use mpc_did_session::messages::{CandidatesBody, MAX_CANDIDATES};
use mpc_did_session::{Event, SessionConfig, SessionError, EPOCH_BITS, MAX_EPOCH_SKIP};
use serde_json::json;

const MIB: usize = 1 << 20;

#[test]
fn unacknowledged_send_data_is_bounded_at_8_mib_over_all_streams() {
    // spec/session.md §6.3, spec/security.md §8: "at most 8 MiB of unacknowledged send data"
    let config = SessionConfig::default();
    assert_eq!(config.max_unacked_bytes, 8 * MIB);
    let mut p = Pair::new(config);
    let (s, t) = (p.a.open_stream().unwrap(), p.a.open_stream().unwrap());
    let data = pattern(1, 5 * MIB);
    assert_eq!(p.a.send(0, s, &data).unwrap(), 5 * MIB);
    // The bound is over all streams: the second stream gets only the remaining 3 MiB.
    assert_eq!(p.a.send(0, t, &data).unwrap(), 3 * MIB);
    assert_eq!(p.a.send(0, s, b"x").unwrap(), 0, "a full sender refuses");
    assert_eq!(p.a.send_capacity(), 0);
    assert_eq!(p.a.stats().unacked_bytes, 8 * MIB);
    // The path dies with everything in flight. On the new path the peer's RESUME makes the
    // sender retransmit all of it, without growing the buffer: it still refuses.
    let _lost = p.take_a();
    p.a.resume(0).unwrap();
    p.b.resume(0).unwrap();
    let resume_a = p.take_a();
    let resume_b = p.take_b();
    p.deliver_to_a(&resume_b);
    assert_eq!(p.a.stats().unacked_bytes, 8 * MIB);
    assert_eq!(p.a.stats().retransmitted_bytes, (8 * MIB) as u64);
    assert_eq!(p.a.send(0, t, b"x").unwrap(), 0);
    assert!(!p.a_events.contains(&Event::Writable));
    // The peer gets every byte once; its ACKs free the space and wake the writer.
    p.deliver_to_b(&resume_a);
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], data);
    assert_eq!(stream_bytes(&p.b_events)[&t], data[..3 * MIB]);
    p.advance(20);
    assert!(p.a_events.contains(&Event::Writable));
    assert_eq!(p.a.send_capacity(), 8 * MIB);
    assert_eq!(p.a.send(p.now, s, b"x").unwrap(), 1);
}

#[test]
fn the_1025th_stream_opened_locally_is_refused() {
    // spec/session.md §6.1, spec/security.md §8: each side opens at most 1,024 streams
    let mut p = Pair::new(SessionConfig::default());
    assert_eq!(SessionConfig::default().max_streams, 1024);
    for (side, first) in [(&mut p.a, 0u32), (&mut p.b, 1)] {
        for i in 0..1024u32 {
            assert_eq!(side.open_stream().unwrap(), first + 2 * i);
        }
        assert_eq!(side.open_stream(), Err(SessionError::Limit("streams")));
        assert!(
            !side.is_closed(),
            "a local refusal does not end the session"
        );
    }
    // Both sides at their limit, and every stream of both works both ways: each side's
    // limit counts its own opens only, so the peer's 1,024 do not exceed it.
    for i in 0..1024u32 {
        p.a.send(0, 2 * i, b"a").unwrap();
        p.b.send(0, 2 * i + 1, b"b").unwrap();
    }
    p.flush();
    for i in 0..1024u32 {
        p.a.send(0, 2 * i + 1, b"A").unwrap();
        p.b.send(0, 2 * i, b"B").unwrap();
    }
    p.flush();
    assert!(!p.a.is_closed() && !p.b.is_closed());
    let (at_a, at_b) = (stream_bytes(&p.a_events), stream_bytes(&p.b_events));
    assert_eq!(at_a.len(), 2048);
    assert_eq!(at_b.len(), 2048);
    assert_eq!(at_b[&2046], b"a");
    assert_eq!(at_a[&2047], b"b");
    assert_eq!(at_a[&2046], b"B");
}

#[test]
fn a_finished_stream_still_counts_against_the_limit() {
    // spec/session.md §6.1: streams count for the whole session (ids are never reused), so
    // a side opens 1,024 streams in the session's life, not 1,024 at a time.
    let mut p = Pair::new(SessionConfig {
        max_streams: 4,
        ..SessionConfig::default()
    });
    for _ in 0..4 {
        let s = p.a.open_stream().unwrap();
        p.a.send(0, s, b"x").unwrap();
        p.a.finish(0, s).unwrap();
        p.flush();
        p.b.finish(0, s).unwrap();
    }
    p.advance(20);
    assert_eq!(p.a.stats().unacked_bytes, 0);
    assert_eq!(p.a.open_stream(), Err(SessionError::Limit("streams")));
}

fn data_frame(stream: u32) -> Vec<u8> {
    let mut v = Vec::new();
    Frame::Data { stream, data: b"s" }.encode(&mut v).unwrap();
    v
}

#[test]
fn the_peers_1025th_stream_fails_the_session_with_a_limit_error() {
    // spec/session.md §5.3, §6.1: the peer's frames open streams at the receiver; the 1,025th
    // is refused with a typed error, and the faulty peer's session fails. (The peer's own
    // `open_stream` would refuse first; the frames are sealed raw, as a faulty peer would.)
    let mut p = Pair::new(SessionConfig::default());
    for i in 0..1024u32 {
        p.a.seal_raw_frame_for_testing(0, &data_frame(2 * i))
            .unwrap();
    }
    let accepted = p.take_a();
    p.deliver_to_b(&accepted);
    assert_eq!(stream_bytes(&p.b_events).len(), 1024);
    p.a.seal_raw_frame_for_testing(0, &data_frame(2048))
        .unwrap();
    let record = p.take_a();
    assert_eq!(
        p.b.handle_record(0, &record[0]),
        Err(SessionError::Limit("streams"))
    );
    assert!(p.b.is_closed(), "the session failed");
    assert!(matches!(
        p.b.handle_record(0, &record[0]),
        Err(SessionError::State(_))
    ));
}

fn candidates_body(n: usize) -> CandidatesBody {
    // Parsed from JSON as the receiver does (crates/connect `candidates_of`).
    let list: Vec<_> = (0..n)
        .map(|i| json!({"transport": "tcp", "kind": "host", "address": format!("192.0.2.1:{}", 1000 + i)}))
        .collect();
    serde_json::from_value(json!({
        "session_id": "00112233445566778899aabbccddeeff",
        "candidates": list,
    }))
    .unwrap()
}

#[test]
fn a_candidates_message_holds_at_most_64_candidates() {
    // spec/session.md §2, spec/security.md §8
    assert_eq!(MAX_CANDIDATES, 64);
    candidates_body(64).check().unwrap();
    assert_eq!(
        candidates_body(65).check(),
        Err(SessionError::Limit("candidates"))
    );
}

/// A record with an explicit counter and a ciphertext that cannot authenticate.
fn forged(counter: u64) -> Vec<u8> {
    let ct = [0x5a; 40];
    let mut r = (0x8000u16 | ct.len() as u16).to_be_bytes().to_vec();
    r.extend_from_slice(&counter.to_be_bytes());
    r.extend_from_slice(&ct);
    r
}

#[test]
fn a_forged_record_more_than_4096_epochs_ahead_costs_no_key_derivation() {
    // spec/session.md §5.5, spec/security.md §8: "4,096 epochs of forward key derivation per
    // record". A forged record 4,097 epochs ahead is rejected before any derivation; one
    // exactly 4,096 ahead costs 4,096 (and is rejected); the session survives both.
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"first").unwrap();
    p.flush();
    let before = p.b.stats();
    assert_eq!(before.trial_keys_derived, 0);

    let far = (MAX_EPOCH_SKIP + 1) << EPOCH_BITS;
    for r in [forged(far), forged(far + 17), forged(u64::MAX - 1)] {
        assert_eq!(p.b.handle_record(0, &r), Err(SessionError::Decrypt));
    }
    assert_eq!(
        p.b.stats(),
        before,
        "rejected unopened: no derivation, no change"
    );

    let start = std::time::Instant::now();
    let edge = MAX_EPOCH_SKIP << EPOCH_BITS;
    assert_eq!(
        p.b.handle_record(0, &forged(edge)),
        Err(SessionError::Decrypt)
    );
    let took = start.elapsed();
    let after = p.b.stats();
    assert_eq!(after.trial_keys_derived, MAX_EPOCH_SKIP);
    assert_eq!(after.recv_epoch, 0, "the derived key was not kept");
    assert_eq!(after.records_received, before.records_received);
    eprintln!("a forged record {MAX_EPOCH_SKIP} epochs ahead cost {took:?}");

    // The session survives: the next genuine record (implicit counter) is accepted.
    assert!(!p.b.is_closed());
    p.a.send(0, s, b" second").unwrap();
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], b"first second");
}
