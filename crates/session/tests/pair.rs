//! Session behaviour on the deterministic in-memory pair (spec/session.md §5–8).
#![allow(clippy::unwrap_used)]

mod common;

use common::{pattern, stream_bytes, Pair, ALICE, BOB, MPC, ROSTER};
use mpc_did_session::{Acceptor, Event, Proposer, Role, SessionConfig, SessionError, EPOCH_BITS};

#[test]
fn handshake_agrees_and_data_flows_both_ways() {
    // spec/session.md §2, §3
    let mut p = Pair::new(SessionConfig::default());
    assert_eq!(p.a.role(), Role::Initiator);
    assert_eq!(p.b.role(), Role::Responder);
    assert_eq!(p.a.handshake_hash(), p.b.handshake_hash());

    let s = p.a.open_stream().unwrap();
    assert_eq!(s % 2, 0, "initiator opens even ids (§6.1)");
    assert_eq!(p.a.send(0, s, b"ping from A").unwrap(), 11);
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], b"ping from A");
    // B answers on the stream A opened: streams are bidirectional.
    p.b.send(0, s, b"pong from B").unwrap();
    p.flush();
    assert_eq!(stream_bytes(&p.a_events)[&s], b"pong from B");
}

#[test]
fn many_streams_interleaved_and_large_writes_are_split() {
    // spec/session.md §5.1 (records ≤ 32,777 bytes), §6
    let mut p = Pair::new(SessionConfig::default());
    let a1 = p.a.open_stream().unwrap();
    let a2 = p.a.open_stream().unwrap();
    let b1 = p.b.open_stream().unwrap();
    assert_eq!(b1 % 2, 1);
    let big = pattern(1, 200_000);
    let mut expect_b = std::collections::BTreeMap::new();
    for (i, chunk) in big.chunks(7_777).enumerate() {
        let s = if i % 2 == 0 { a1 } else { a2 };
        assert_eq!(p.a.send(p.now, s, chunk).unwrap(), chunk.len());
        expect_b
            .entry(s)
            .or_insert_with(Vec::new)
            .extend_from_slice(chunk);
    }
    p.b.send(0, b1, &big).unwrap();
    let records = p.take_b();
    assert!(records.len() >= 7, "200 kB needs at least 7 records");
    assert!(records
        .iter()
        .all(|r| r.len() <= mpc_did_session::frame::MAX_RECORD_LEN));
    p.deliver_to_a(&records);
    p.flush();
    assert_eq!(stream_bytes(&p.b_events), expect_b);
    assert_eq!(stream_bytes(&p.a_events)[&b1], big);

    p.a.finish(0, a1).unwrap();
    p.flush();
    assert!(p.b_events.contains(&Event::StreamFinished { stream: a1 }));
    assert!(matches!(p.a.send(0, a1, b"x"), Err(SessionError::State(_))));
    // The finished stream is acknowledged; the other one still works.
    p.advance(100);
    assert_eq!(p.a.stats().unacked_bytes, 0);
    p.a.send(p.now, a2, b"still open").unwrap();
    p.flush();
    assert!(stream_bytes(&p.b_events)[&a2].ends_with(b"still open"));
}

#[test]
fn rekey_by_bytes_by_time_and_on_request() {
    // spec/session.md §5.5: new epoch at the next epoch's first counter
    let config = SessionConfig {
        rekey_bytes: 10_000,
        ..SessionConfig::default()
    };
    let mut p = Pair::new(config);
    let s = p.a.open_stream().unwrap();
    let data = pattern(2, 30_000);
    for chunk in data.chunks(1000) {
        p.a.send(p.now, s, chunk).unwrap();
    }
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], data);
    let epochs = p.a.stats().send_epoch;
    assert!(
        epochs >= 2,
        "30 kB at 10 kB per epoch rekeys at least twice, got {epochs}"
    );
    assert_eq!(p.b.stats().recv_epoch, epochs);
    assert!(p
        .b_events
        .iter()
        .any(|e| matches!(e, Event::Rekeyed { .. })));

    // On request (a key that has sealed nothing yet counts as fresh: B sends once first).
    p.b.send(p.now, s, b"first").unwrap();
    let before = p.b.stats().send_epoch;
    p.b.request_rekey();
    p.b.send(p.now, s, b"after rekey").unwrap();
    p.flush();
    assert_eq!(p.b.stats().send_epoch, before + 1);
    assert_eq!(p.a.stats().recv_epoch, before + 1);
    assert!(stream_bytes(&p.a_events)[&s].ends_with(b"after rekey"));

    // By time: 10 minutes without traffic rekeys through a PING.
    let e = p.b.stats().send_epoch;
    p.advance(600_001);
    assert_eq!(p.b.stats().send_epoch, e + 1);
    assert_eq!(p.a.stats().recv_epoch, e + 1);
}

#[test]
fn epoch_counter_arithmetic() {
    // spec/session.md §5.5: 2^20 records per epoch
    assert_eq!(mpc_did_session::epoch_of((1 << EPOCH_BITS) - 1), 0);
    assert_eq!(mpc_did_session::epoch_of(1 << EPOCH_BITS), 1);
}

fn established_with_records() -> (Pair, Vec<Vec<u8>>) {
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    for i in 0..5u8 {
        p.a.send(0, s, &[i; 40]).unwrap();
    }
    let recs = p.take_a();
    assert_eq!(recs.len(), 5);
    (p, recs)
}

#[test]
fn replayed_record_is_rejected_opaquely_and_changes_nothing() {
    // spec/session.md §5.3
    let (mut p, recs) = established_with_records();
    p.deliver_to_b(&recs[..2]);
    assert_eq!(p.b.handle_record(0, &recs[1]), Err(SessionError::Decrypt));
    assert_eq!(p.b.handle_record(0, &recs[0]), Err(SessionError::Decrypt));
    p.deliver_to_b(&recs[2..]);
    assert_eq!(stream_bytes(&p.b_events)[&0].len(), 200);
}

#[test]
fn reordered_record_is_rejected_opaquely() {
    // spec/session.md §5.3: one path delivers in order; a skipped counter is an attack
    let (mut p, recs) = established_with_records();
    p.deliver_to_b(&recs[..1]);
    assert_eq!(p.b.handle_record(0, &recs[2]), Err(SessionError::Decrypt));
    p.deliver_to_b(&recs[1..]);
    assert_eq!(stream_bytes(&p.b_events)[&0].len(), 200);
}

#[test]
fn every_single_bit_flip_and_every_truncation_is_rejected_opaquely() {
    // spec/session.md §5.3: header (length, E bit, counter), ciphertext and tag are all
    // authenticated — for a record with an explicit counter (recs[0], the first of the
    // session) and for one whose counter is implicit (recs[1])
    let (mut p, recs) = established_with_records();
    assert_eq!(recs[0][0] & 0x80, 0x80, "first record: explicit counter");
    assert_eq!(recs[1][0] & 0x80, 0, "then implicit");
    check_every_flip_and_truncation(&mut p, &recs[0]);
    p.deliver_to_b(&recs[..1]);
    check_every_flip_and_truncation(&mut p, &recs[1]);
    // After all that the genuine records are still accepted.
    p.deliver_to_b(&recs[1..]);
    assert_eq!(stream_bytes(&p.b_events)[&0].len(), 200);
}

fn check_every_flip_and_truncation(p: &mut Pair, r: &[u8]) {
    for i in 0..r.len() {
        for bit in 0..8 {
            let mut t = r.to_vec();
            t[i] ^= 1 << bit;
            assert_eq!(
                p.b.handle_record(0, &t),
                Err(SessionError::Decrypt),
                "byte {i} bit {bit}"
            );
        }
    }
    for n in 0..r.len() {
        assert_eq!(
            p.b.handle_record(0, &r[..n]),
            Err(SessionError::Decrypt),
            "truncated to {n}"
        );
    }
    let mut longer = r.to_vec();
    longer.push(0);
    assert_eq!(p.b.handle_record(0, &longer), Err(SessionError::Decrypt));
}

#[test]
fn records_of_another_session_or_direction_are_rejected() {
    // spec/session.md §4: keys are unique per handshake and direction
    let (mut p, recs) = established_with_records();
    let mut other = Pair::new(SessionConfig::default());
    assert_eq!(
        other.b.handle_record(0, &recs[0]),
        Err(SessionError::Decrypt)
    );
    // A's own record reflected back to A.
    assert_eq!(p.a.handle_record(0, &recs[0]), Err(SessionError::Decrypt));
    p.deliver_to_b(&recs);
}

#[test]
fn handshake_fails_for_another_binding() {
    // spec/session.md §4: the prologue binds session id, MPC session, DIDs, roster, statics
    let (bob, propose) = Proposer::new([3; 16], MPC, ROSTER, BOB, ALICE);
    // Alice believes she is talking to someone else: the prologue differs.
    let (alice, accept) =
        Acceptor::on_propose(&propose, MPC, ROSTER, ALICE, "did:key:z6MkMallory").unwrap();
    assert_eq!(
        bob.on_accept(&accept, SessionConfig::default(), 0)
            .unwrap_err(),
        SessionError::Decrypt
    );
    drop(alice);
    // A proposal for another roster is refused before any Noise message.
    let err = Acceptor::on_propose(&propose, MPC, [0; 32], ALICE, BOB).unwrap_err();
    assert!(matches!(err, SessionError::Setup(_)));
    // A tampered message 2 fails at the acceptor.
    let (bob, propose) = Proposer::new([4; 16], MPC, ROSTER, BOB, ALICE);
    let (alice, accept) = Acceptor::on_propose(&propose, MPC, ROSTER, ALICE, BOB).unwrap();
    let (_b, mut hs) = bob.on_accept(&accept, SessionConfig::default(), 0).unwrap();
    let mut raw = hex_decode(&hs.handshake);
    raw[40] ^= 1;
    hs.handshake = mpc_did_session::messages::to_hex(&raw);
    assert_eq!(
        alice
            .on_handshake(&hs, SessionConfig::default(), 0)
            .unwrap_err(),
        SessionError::Decrypt
    );
}

fn hex_decode(s: &str) -> Vec<u8> {
    let a: [u8; 48] = mpc_did_session::messages::decode_fixed(s, "test").unwrap();
    a.to_vec()
}

#[test]
fn path_switch_resumes_without_loss_or_duplication() {
    // spec/session.md §7
    let config = SessionConfig {
        ack_threshold_bytes: 1 << 40,
        ..SessionConfig::default()
    };
    let mut p = Pair::new(config);
    let s = p.a.open_stream().unwrap();
    let t = p.b.open_stream().unwrap();
    let data_a = pattern(5, 300_000);
    let data_b = pattern(6, 100_000);
    p.a.send(0, s, &data_a[..150_000]).unwrap();
    p.b.send(0, t, &data_b[..50_000]).unwrap();
    // Half of A's records arrive, then the path dies; B's records are all lost.
    let ab = p.take_a();
    let _lost_ba = p.take_b();
    p.deliver_to_b(&ab[..ab.len() / 2]);
    // Written while no path works: buffered.
    p.a.send(0, s, &data_a[150_000..]).unwrap();
    p.b.send(0, t, &data_b[50_000..]).unwrap();
    p.b.finish(0, t).unwrap();
    // A new path (e.g. the relay) comes up; both sides resume.
    p.now = 5_000;
    p.a.resume(p.now).unwrap();
    p.b.resume(p.now).unwrap();
    p.flush();
    assert!(p.a_events.contains(&Event::Resumed) && p.b_events.contains(&Event::Resumed));
    assert_eq!(stream_bytes(&p.b_events)[&s], data_a);
    assert_eq!(stream_bytes(&p.a_events)[&t], data_b);
    assert!(p.a_events.contains(&Event::StreamFinished { stream: t }));
    assert!(p.a.stats().retransmitted_bytes > 0);
    // RESUME acknowledged everything the peer had; the rest is acknowledged after a delay.
    p.advance(50);
    assert_eq!(p.a.stats().unacked_bytes, 0);
    assert_eq!(p.b.stats().unacked_bytes, 0);
}

#[test]
fn records_before_the_peers_resume_are_ignored() {
    // spec/session.md §7.1 step 4: after resume() only a RESUME is acted upon
    let (mut p, recs) = established_with_records();
    p.deliver_to_b(&recs[..1]);
    p.b.resume(0).unwrap();
    // recs[1] has an implicit counter: no RESUME ever does, so it is dropped unopened
    // (spec §5.3); a record after an early rekey carries its counter: it is authenticated,
    // then ignored.
    p.b.handle_record(0, &recs[1]).unwrap();
    p.a.request_rekey();
    p.a.send(0, 0, &[9; 40]).unwrap();
    let more = p.take_a();
    assert_eq!(more[0][0] & 0x80, 0x80);
    p.b.handle_record(0, &more[0]).unwrap();
    p.b_events.extend(std::iter::from_fn(|| p.b.poll_event()));
    assert_eq!(stream_bytes(&p.b_events)[&0].len(), 40);
    assert_eq!(p.b.stats().ignored_records, 2);
    p.a.resume(0).unwrap();
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&0].len(), 240);
}

#[test]
fn one_sided_path_switch_resumes_implicitly() {
    // spec/session.md §7.1 step 5: A reconnected to the relay, B never noticed
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    let t = p.b.open_stream().unwrap();
    p.a.send(0, s, &pattern(1, 5_000)).unwrap();
    p.b.send(0, t, &pattern(2, 7_000)).unwrap();
    // A's relay connection drops: everything in flight both ways is lost.
    let _lost = (p.take_a(), p.take_b());
    p.b.send(0, t, &pattern(3, 100)).unwrap(); // in flight on the relay when A comes back
    p.a.resume(0).unwrap();
    p.flush();
    let mut want_t = pattern(2, 7_000);
    want_t.extend_from_slice(&pattern(3, 100));
    assert_eq!(stream_bytes(&p.b_events)[&s], pattern(1, 5_000));
    assert_eq!(stream_bytes(&p.a_events)[&t], want_t);
    assert!(
        p.a.stats().ignored_records >= 1,
        "B's in-flight record was ignored, then resent"
    );
}

#[test]
fn stale_records_from_the_old_path_after_resume_are_rejected() {
    // spec/session.md §7.1: counters continue across paths; only later ones are accepted
    let (mut p, recs) = established_with_records();
    p.deliver_to_b(&recs[..3]);
    p.a.resume(0).unwrap();
    p.b.resume(0).unwrap();
    let resume_a = p.take_a();
    // An old record with an explicit counter: not above `last`.
    assert_eq!(p.b.handle_record(0, &recs[0]), Err(SessionError::Decrypt));
    p.deliver_to_b(&resume_a);
    p.flush();
    // An old record with an implicit counter, once the new path is active: it would be
    // `last + 1`, under which it does not authenticate (spec §5.3).
    for r in &recs {
        assert_eq!(p.b.handle_record(0, r), Err(SessionError::Decrypt));
    }
    assert_eq!(stream_bytes(&p.b_events)[&0], {
        let mut v = Vec::new();
        for i in 0..5u8 {
            v.extend_from_slice(&[i; 40]);
        }
        v
    });
}

#[test]
fn backpressure_then_writable() {
    // spec/session.md §6.3
    let config = SessionConfig {
        max_unacked_bytes: 10_000,
        ..SessionConfig::default()
    };
    let mut p = Pair::new(config);
    let s = p.a.open_stream().unwrap();
    assert_eq!(p.a.send(0, s, &[1; 6_000]).unwrap(), 6_000);
    assert_eq!(p.a.send(0, s, &[2; 6_000]).unwrap(), 4_000);
    assert_eq!(p.a.send(0, s, &[3; 10]).unwrap(), 0);
    assert_eq!(p.a.send_capacity(), 0);
    p.flush();
    assert!(!p.a_events.contains(&Event::Writable));
    p.advance(20); // delayed ACK
    assert!(p.a_events.contains(&Event::Writable));
    assert_eq!(p.a.send_capacity(), 10_000);
}

#[test]
fn keepalive_and_idle_detection() {
    // spec/session.md §8
    let mut p = Pair::new(SessionConfig::default());
    let sent = p.a.stats().records_sent;
    p.advance(10_000);
    assert!(
        p.a.stats().records_sent > sent,
        "a PING after 10 s of silence"
    );
    assert!(!p.a_events.contains(&Event::PathIdle));
    // The path goes silent: nothing delivered any more.
    for _ in 0..4 {
        p.now += 10_000;
        p.a.handle_timeout(p.now).unwrap();
        let _ = p.take_a();
        p.a_events.extend(std::iter::from_fn(|| p.a.poll_event()));
    }
    assert_eq!(
        p.a_events.iter().filter(|e| **e == Event::PathIdle).count(),
        1
    );
    assert!(p.a.poll_timeout().is_some());
}

#[test]
fn close_ends_the_session_on_both_sides() {
    // spec/session.md §5.4 CLOSE
    let mut p = Pair::new(SessionConfig::default());
    p.b.close(0, 0, "done").unwrap();
    p.flush();
    assert!(p.a_events.contains(&Event::Closed {
        code: 0,
        reason: "done".into()
    }));
    assert!(p.a.is_closed() && p.b.is_closed());
    assert!(matches!(p.a.open_stream(), Err(SessionError::State(_))));
    assert_eq!(p.a.poll_timeout(), None);
}

#[test]
fn peer_may_not_use_our_stream_parity() {
    // spec/session.md §6.1
    let mut p = Pair::new(SessionConfig::default());
    let s = p.b.open_stream().unwrap(); // odd
    p.b.send(0, s, b"ok").unwrap();
    p.flush();
    assert_eq!(stream_bytes(&p.a_events)[&s], b"ok");
    // Sending on an id nobody opened is refused locally.
    assert!(matches!(p.b.send(0, 2, b"x"), Err(SessionError::State(_))));
}

fn inject(p: &mut Pair, frame: &[u8]) -> Result<(), SessionError> {
    p.a.seal_raw_frame_for_testing(0, frame).unwrap();
    let recs = p.take_a();
    assert_eq!(recs.len(), 1);
    p.b.handle_record(0, &recs[0])
}

#[test]
fn authenticated_but_malformed_frames_fail_the_session() {
    // spec/session.md §5.3 (after authentication), §5.4, §6.2, §6.3
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0xff], "unknown type"),
        (vec![0x04, 0, 0], "short PING"),
        (
            vec![0x03, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            "bad fin flag",
        ),
        (vec![0x01], "DATA without stream id"),
        (
            vec![0x01, 0x40, 0x00, b'x'],
            "non-minimal varint (2 bytes for 0)",
        ),
        (
            vec![0x01, 0x80, 0x00, 0x00, 0x3f, b'x'],
            "non-minimal varint (4 bytes for 63)",
        ),
        (
            vec![0x01, 0xc0, 0, 0, 1, 0, 0, 0, 0, b'x'],
            "stream id 2^32",
        ),
        (vec![0x01, 0x01, b'x'], "receiver's own parity"),
        (
            [&[0x03, 0, 1, 0, 0, 0, 1][..], &5u64.to_be_bytes(), &[0]].concat(),
            "ack beyond sent",
        ),
        (
            [&[0x02, 0, 0, 0, 0][..], &3u64.to_be_bytes()].concat(),
            "FIN size mismatch",
        ),
    ];
    for (frame, what) in cases {
        let mut p = Pair::new(SessionConfig::default());
        let err = inject(&mut p, &frame).unwrap_err();
        assert!(
            matches!(err, SessionError::Malformed(_) | SessionError::Protocol(_)),
            "{what}: {err:?}"
        );
        assert!(p.b.is_closed(), "{what}: the session failed");
        assert!(matches!(
            p.b.handle_record(0, &[0; 40]),
            Err(SessionError::State(_))
        ));
    }
}

#[test]
fn data_frames_carry_no_offset_and_append_in_order() {
    // spec/session.md §5.4, §6.2: DATA = 0x01 stream:varint data — the next bytes of the stream
    let mut p = Pair::new(SessionConfig::default());
    inject(&mut p, &[0x01, 0x00, b'a', b'b', b'c']).unwrap();
    inject(&mut p, &[0x01, 0x00]).unwrap(); // empty: nothing delivered
    inject(&mut p, &[0x01, 0x00, b'd', b'e']).unwrap();
    // Stream 64 needs the 2-byte varint form.
    inject(&mut p, &[0x01, 0x40, 0x40, b'z']).unwrap();
    p.b_events.extend(std::iter::from_fn(|| p.b.poll_event()));
    assert_eq!(stream_bytes(&p.b_events)[&0], b"abcde");
    assert_eq!(stream_bytes(&p.b_events)[&64], b"z");
}

#[test]
fn data_after_fin_fails_the_session() {
    // spec/session.md §6.2
    let mut p = Pair::new(SessionConfig::default());
    inject(&mut p, &[0x01, 0x00, b'a']).unwrap();
    inject(
        &mut p,
        &[&[0x02, 0, 0, 0, 0][..], &1u64.to_be_bytes()].concat(),
    )
    .unwrap();
    let err = inject(&mut p, &[0x01, 0x00, b'b']).unwrap_err();
    assert!(matches!(err, SessionError::Protocol(_)), "{err:?}");
    assert!(p.b.is_closed());
}

#[test]
fn small_data_record_costs_20_bytes_and_counters_go_explicit_only_when_needed() {
    // spec/session.md §5.1: E on the first record of the session and of every path, and after
    // an epoch skip; otherwise the counter is implicit (2-byte header)
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"x").unwrap();
    p.a.send(0, s, b"y").unwrap();
    let recs = p.take_a();
    // 2 (length) + 8 (counter) + 1 (type) + 1 (stream) + 1 + 16 (tag)
    assert_eq!(recs[0].len(), 29);
    assert_eq!(recs[0][..2], [0x80, 19]);
    assert_eq!(recs[0][2..10], 0u64.to_be_bytes());
    // 2 + 1 + 1 + 1 + 16: 20 bytes of overhead around one byte of data
    assert_eq!(recs[1].len(), 21);
    assert_eq!(recs[1][..2], [0x00, 19]);
    p.deliver_to_b(&recs);
    // An early rekey skips counters: explicit.
    p.a.request_rekey();
    p.a.send(0, s, b"z").unwrap();
    p.a.send(0, s, b"w").unwrap();
    let recs = p.take_a();
    assert_eq!(recs[0][0] & 0x80, 0x80);
    assert_eq!(recs[0][2..10], (1u64 << 20).to_be_bytes());
    assert_eq!(recs[1][0] & 0x80, 0);
    p.deliver_to_b(&recs);
    // The RESUME opening a new path: explicit, even though its counter is the next one.
    p.a.resume(0).unwrap();
    let recs = p.take_a();
    assert_eq!(recs[0][0] & 0x80, 0x80);
    assert_eq!(recs[0][2..10], ((1u64 << 20) + 2).to_be_bytes());
    assert_eq!(p.a.stats().explicit_counters_sent, 3);
    p.b.resume(0).unwrap();
    p.deliver_to_b(&recs);
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], b"xyzw");
}

#[test]
fn implicit_counter_without_a_previous_record_is_rejected() {
    // spec/session.md §5.3: no `last` yet, so the counter cannot be implied
    let (mut p, recs) = established_with_records();
    assert_eq!(p.b.handle_record(0, &recs[1]), Err(SessionError::Decrypt));
    // The same bytes with E set and counter 1 spliced in: still a forgery (the AD differs).
    let mut explicit = vec![recs[1][0] | 0x80, recs[1][1]];
    explicit.extend_from_slice(&1u64.to_be_bytes());
    explicit.extend_from_slice(&recs[1][2..]);
    p.deliver_to_b(&recs[..1]);
    assert_eq!(p.b.handle_record(0, &explicit), Err(SessionError::Decrypt));
    p.deliver_to_b(&recs[1..]);
    assert_eq!(stream_bytes(&p.b_events)[&0].len(), 200);
}

#[test]
fn explicit_counter_where_implicit_was_sent_is_rejected() {
    // spec/session.md §5.2: the AD is the header as sent, so E cannot be toggled
    let (mut p, recs) = established_with_records();
    p.deliver_to_b(&recs[..1]);
    // recs[0] re-sent with its counter made implicit: counter would be 1, nonce mismatch.
    let mut implicit = vec![recs[0][0] & 0x7f, recs[0][1]];
    implicit.extend_from_slice(&recs[0][10..]);
    assert_eq!(p.b.handle_record(0, &implicit), Err(SessionError::Decrypt));
    p.deliver_to_b(&recs[1..]);
    assert_eq!(stream_bytes(&p.b_events)[&0].len(), 200);
}

#[test]
fn resume_derives_keys_across_at_most_max_epoch_skip_epochs() {
    // spec/session.md §5.5: records lost with a dead path may span many epochs
    for (skip, ok) in [
        (mpc_did_session::MAX_EPOCH_SKIP, true),
        (mpc_did_session::MAX_EPOCH_SKIP + 1, false),
    ] {
        let mut p = Pair::new(SessionConfig::default());
        let s = p.a.open_stream().unwrap();
        p.a.send(0, s, b"a").unwrap();
        p.flush();
        for _ in 0..skip {
            p.a.request_rekey();
            p.a.send(0, s, b"b").unwrap();
        }
        let _lost = p.take_a();
        assert_eq!(p.a.stats().send_epoch, skip);
        p.a.resume(0).unwrap();
        p.b.resume(0).unwrap();
        let resume = p.take_a();
        let r = p.b.handle_record(0, &resume[0]);
        if ok {
            r.unwrap();
            assert_eq!(p.b.stats().recv_epoch, skip);
        } else {
            assert_eq!(r, Err(SessionError::Decrypt));
            assert_eq!(p.b.stats().recv_epoch, 0, "a failed trial changes nothing");
        }
    }
}

#[test]
fn time_rekey_on_a_session_that_never_sent_does_not_spin() {
    // spec/session.md §5.5: an unused epoch start is already a fresh key
    let config = SessionConfig {
        keepalive_ms: 3_600_000,
        ..SessionConfig::default()
    };
    let mut p = Pair::new(config);
    p.a.handle_timeout(600_000).unwrap();
    let sent = p.a.stats().records_sent;
    assert_eq!(sent, 1, "one PING");
    let next = p.a.poll_timeout().unwrap();
    assert!(next > 600_000, "next deadline {next} is in the future");
    p.a.handle_timeout(600_001).unwrap();
    assert_eq!(p.a.stats().records_sent, sent);
}
