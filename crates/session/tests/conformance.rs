//! Conformance tests for the rules spec/session.md states where a second implementation
//! could otherwise differ (the checklist, spec/session.md §13, points here). Each test pins one decision
//! a second implementation could otherwise make differently.
#![allow(clippy::unwrap_used)]

mod common;

use common::{counter_of, fixed_pair, open_with_key, split_keys, stream_bytes, Pair};
use mpc_did_session::{Event, Frame, SessionConfig, SessionError, EPOCH_BITS};

const E_BIT: u8 = 0x80;

/// Seals `frame` as A's next record (implicit counter unless it is A's first on the path)
/// and feeds it to B.
fn a_sends_raw(p: &mut Pair, frame: &[u8]) -> Result<(), SessionError> {
    p.a.seal_raw_frame_for_testing(p.now, frame).unwrap();
    let recs = p.take_a();
    assert_eq!(recs.len(), 1);
    let r = p.b.handle_record(p.now, &recs[0]);
    p.b_events.extend(std::iter::from_fn(|| p.b.poll_event()));
    r
}

fn b_sends_raw(p: &mut Pair, frame: &[u8]) -> Result<(), SessionError> {
    p.b.seal_raw_frame_for_testing(p.now, frame).unwrap();
    let recs = p.take_b();
    assert_eq!(recs.len(), 1);
    let r = p.a.handle_record(p.now, &recs[0]);
    p.a_events.extend(std::iter::from_fn(|| p.a.poll_event()));
    r
}

fn ack_frame(entries: &[(u32, u64, u8)], ty: u8) -> Vec<u8> {
    let mut f = vec![ty];
    f.extend_from_slice(&u16::try_from(entries.len()).unwrap().to_be_bytes());
    for (s, o, fin) in entries {
        f.extend_from_slice(&s.to_be_bytes());
        f.extend_from_slice(&o.to_be_bytes());
        f.push(*fin);
    }
    f
}

/// A pair where B (proposer, odd streams) sent 100 bytes on stream 1 and A acknowledged them.
fn b_sent_100() -> Pair {
    let mut p = Pair::new(SessionConfig::default());
    let s = p.b.open_stream().unwrap();
    assert_eq!(s, 1);
    p.b.send(0, s, &[7; 100]).unwrap();
    p.flush();
    p.advance(50); // A's delayed ACK
    assert_eq!(p.b.stats().unacked_bytes, 0);
    p
}

// ---- gap 4: every RESUME carries an explicit counter -------------------------------------

#[test]
fn a_resume_sent_on_an_existing_path_carries_an_explicit_counter() {
    // spec §5.1, §7.1 step 5: B did not switch; it answers A's RESUME on the path it has,
    // after records of its own on it, and still sends its counter explicitly.
    let mut p = Pair::new(SessionConfig::default());
    let t = p.b.open_stream().unwrap();
    p.b.send(0, t, b"before").unwrap();
    p.flush();
    p.a.resume(0).unwrap();
    let a_resume = p.take_a();
    assert_eq!(a_resume[0][0] & E_BIT, E_BIT, "A's RESUME is explicit");
    p.deliver_to_b(&a_resume);
    let b_out = p.take_b();
    assert_eq!(
        b_out[0][0] & E_BIT,
        E_BIT,
        "B's answering RESUME is explicit"
    );
    p.deliver_to_a(&b_out);
    assert!(p.a_events.contains(&Event::Resumed));
}

#[test]
fn a_waiting_side_ignores_a_resume_frame_with_an_implicit_counter() {
    // spec §5.3 / §7.1: a record without E cannot be the awaited RESUME; it is dropped
    // unopened, and the waiting side keeps waiting (an implementation that sent such a
    // RESUME would deadlock, hence the MUST in §5.1).
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"x").unwrap();
    p.flush();
    p.b.resume(0).unwrap();
    let _b_resume_lost = p.take_b();
    a_sends_raw(&mut p, &ack_frame(&[], 0x06)).unwrap();
    assert_eq!(p.b.stats().ignored_records, 1);
    assert!(!p.b_events.contains(&Event::Resumed), "still waiting");
    // A real (explicit) RESUME then resumes.
    p.a.resume(0).unwrap();
    p.flush();
    assert!(p.b_events.contains(&Event::Resumed));
}

// ---- gap 6: the first record on the first path is a RESUME -------------------------------

#[test]
fn the_first_path_opens_with_resume_at_counter_0() {
    // spec §7.3: a driver calls resume() on every path, the first included: each side's
    // first record of the session is a RESUME (no streams) with explicit counter 0.
    let mut p = fixed_pair(SessionConfig::default());
    let [k_ir, k_ri] = split_keys();
    p.a.resume(0).unwrap();
    p.b.resume(0).unwrap();
    for (recs, key) in [(p.take_a(), k_ir), (p.take_b(), k_ri)] {
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0][0] & E_BIT, E_BIT);
        let c = counter_of(&recs[0], None);
        assert_eq!(c.0, 0);
        let pt = open_with_key(&recs[0], c, key).unwrap();
        assert_eq!(Frame::decode(&pt).unwrap(), Frame::Resume(vec![]));
        if key == k_ir {
            p.deliver_to_b(&recs);
        } else {
            p.deliver_to_a(&recs);
        }
    }
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"hello").unwrap();
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], b"hello");
}

#[test]
fn data_before_the_first_resume_is_ignored_then_retransmitted() {
    // spec §7.3 with §5.3: a peer that opens the first path with DATA (the §10 vectors
    // exercise the record layer alone, without a path) is ignored by a side waiting for
    // the RESUME; nothing is lost once the RESUME comes.
    let mut p = Pair::new(SessionConfig::default());
    p.b.resume(0).unwrap();
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"early").unwrap();
    let early = p.take_a();
    assert_eq!(early[0][0] & E_BIT, E_BIT);
    p.deliver_to_b(&early);
    assert_eq!(p.b.stats().ignored_records, 1);
    assert!(stream_bytes(&p.b_events).is_empty());
    p.a.resume(0).unwrap();
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], b"early", "delivered once");
}

// ---- gap 7: ignored is neither accepted nor rejected -------------------------------------

#[test]
fn a_record_ignored_while_waiting_changes_no_state_and_a_forged_one_is_rejected() {
    // spec §5.3: while waiting for RESUME an authenticated non-RESUME record is *ignored*:
    // `last` and the receive epoch stay, so the same record is ignored again (not rejected
    // as a replay); one that does not authenticate is *rejected*.
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"a").unwrap();
    p.flush();
    p.b.resume(0).unwrap();
    p.a.request_rekey();
    p.a.send(0, s, b"b").unwrap();
    let r = p.take_a();
    assert_eq!(r[0][0] & E_BIT, E_BIT, "epoch skip: explicit");
    for _ in 0..2 {
        assert_eq!(p.b.handle_record(0, &r[0]), Ok(()));
    }
    assert_eq!(p.b.stats().ignored_records, 2);
    assert_eq!(
        p.b.stats().recv_epoch,
        0,
        "epoch not moved by an ignored record"
    );
    let mut bad = r[0].clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(p.b.handle_record(0, &bad), Err(SessionError::Decrypt));
    p.a.resume(0).unwrap();
    p.flush();
    assert_eq!(stream_bytes(&p.b_events)[&s], b"ab");
}

// ---- gap 8: stream ids ---------------------------------------------------------------------

fn data_frame(stream: u32, data: &[u8]) -> Vec<u8> {
    let mut f = vec![0x01];
    varint(u64::from(stream), &mut f);
    f.extend_from_slice(data);
    f
}

/// QUIC varint, minimal (RFC 9000 §16), written independently of the crate.
fn varint(v: u64, out: &mut Vec<u8>) {
    if v < 64 {
        out.push(v as u8);
    } else if v < 16_384 {
        out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes());
    } else {
        out.extend_from_slice(&(0xc000_0000_0000_0000 | v).to_be_bytes());
    }
}

#[test]
fn peer_stream_ids_may_skip_and_arrive_out_of_order() {
    // spec §6.1: the opener SHOULD use its ids in increasing order, but a receiver MUST NOT
    // enforce order or gaps; it counts distinct streams against the limit.
    let mut p = Pair::new(SessionConfig::default());
    for (id, byte) in [(200u32, 1u8), (64, 2), (2, 3), (70_000, 4)] {
        a_sends_raw(&mut p, &data_frame(id, &[byte; 3])).unwrap();
    }
    let got = stream_bytes(&p.b_events);
    assert_eq!(got.len(), 4);
    assert_eq!(got[&70_000], vec![4; 3]);
}

#[test]
fn the_limit_counts_distinct_peer_streams_not_id_values() {
    // spec §6.1: with max_streams = 3, ids 0, 1000 and 5000 are fine, a fourth fails.
    let cfg = SessionConfig {
        max_streams: 3,
        ..SessionConfig::default()
    };
    let mut p = Pair::new(cfg);
    for id in [0u32, 1000, 5000] {
        a_sends_raw(&mut p, &data_frame(id, b"z")).unwrap();
    }
    assert_eq!(
        a_sends_raw(&mut p, &data_frame(6, b"z")),
        Err(SessionError::Limit("streams"))
    );
}

#[test]
fn finished_streams_are_listed_in_resume_forever() {
    // spec §6.1, §7.1: a finished stream is never forgotten: the receiver lists it in every
    // RESUME (else the sender, which had its bytes acknowledged, fails the session).
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"done").unwrap();
    p.a.finish(0, s).unwrap();
    p.flush();
    p.advance(50);
    assert!(p.b_events.contains(&Event::StreamFinished { stream: s }));
    for _ in 0..2 {
        p.a.resume(p.now).unwrap();
        p.b.resume(p.now).unwrap();
        p.flush();
        assert!(!p.a.is_closed());
        assert_eq!(p.a.stats().unacked_bytes, 0);
    }
}

// ---- gap 9: ACK validity -------------------------------------------------------------------

#[test]
fn a_decreasing_ack_and_a_stream_listed_twice_are_ignored_not_errors() {
    // spec §6.3: ACK is cumulative; a lower offset than already acknowledged carries no
    // information and is ignored; entries are applied in order.
    let mut p = b_sent_100();
    a_sends_raw(&mut p, &ack_frame(&[(1, 10, 0)], 0x03)).unwrap();
    a_sends_raw(&mut p, &ack_frame(&[(1, 100, 0), (1, 50, 0)], 0x03)).unwrap();
    assert_eq!(p.b.stats().unacked_bytes, 0);
    p.b.send(p.now, 1, b"more").unwrap();
    p.flush();
    assert!(!p.b.is_closed());
}

#[test]
fn an_empty_ack_is_valid_and_does_nothing() {
    let mut p = b_sent_100();
    let before = p.b.stats().unacked_bytes;
    a_sends_raw(&mut p, &ack_frame(&[], 0x03)).unwrap();
    assert_eq!(p.b.stats().unacked_bytes, before);
}

#[test]
fn an_ack_with_fin_for_a_fin_never_sent_fails_the_session() {
    let mut p = b_sent_100();
    assert!(matches!(
        a_sends_raw(&mut p, &ack_frame(&[(1, 100, 1)], 0x03)),
        Err(SessionError::Protocol(_))
    ));
    assert!(matches!(
        p.b.send(p.now, 1, b"x"),
        Err(SessionError::State(_))
    ));
}

#[test]
fn an_ack_beyond_what_was_sent_or_for_an_unknown_stream_fails_the_session() {
    let mut p = b_sent_100();
    assert!(matches!(
        a_sends_raw(&mut p, &ack_frame(&[(1, 101, 0)], 0x03)),
        Err(SessionError::Protocol(_))
    ));
    let mut p = b_sent_100();
    // Offset 0 without FIN for a stream B never sent on is no claim at all: ignored.
    a_sends_raw(&mut p, &ack_frame(&[(3, 0, 0)], 0x03)).unwrap();
    assert!(matches!(
        a_sends_raw(&mut p, &ack_frame(&[(3, 1, 0)], 0x03)),
        Err(SessionError::Protocol(_))
    ));
}

// ---- gap 10: RESUME and FINs ----------------------------------------------------------------

#[test]
fn a_resume_with_fin_0_after_the_fin_was_acknowledged_fails_the_session() {
    // spec §7.1 step 3 (decision, spec/decisions.md): like an offset below the acknowledged
    // one, a FIN the peer had acknowledged cannot be un-delivered.
    let mut p = b_sent_100();
    p.b.finish(p.now, 1).unwrap();
    p.flush();
    p.advance(50);
    // A RESUME listing the stream with fin = 0 (A did not switch paths in B's view: step 5).
    assert_eq!(
        a_sends_raw(&mut p, &ack_frame(&[(1, 100, 0)], 0x06)),
        Err(SessionError::Protocol("RESUME below acknowledged FIN"))
    );
    // The control: fin = 1 is accepted.
    let mut p = b_sent_100();
    p.b.finish(p.now, 1).unwrap();
    p.flush();
    p.advance(50);
    a_sends_raw(&mut p, &ack_frame(&[(1, 100, 1)], 0x06)).unwrap();
    assert!(p.b_events.contains(&Event::Resumed));
}

#[test]
fn a_stream_whose_only_content_was_a_zero_byte_fin_must_be_listed_in_resume() {
    // spec §7.1 step 1: such a stream "has received" (its FIN): it is listed with offset 0,
    // fin 1; a RESUME omitting it fails the session of the side whose FIN was acknowledged.
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    p.a.finish(0, s).unwrap();
    p.flush();
    p.advance(50);
    assert!(p.b_events.contains(&Event::StreamFinished { stream: s }));
    // B's own RESUME lists it: A resumes fine.
    p.a.resume(p.now).unwrap();
    p.b.resume(p.now).unwrap();
    p.flush();
    assert!(!p.a.is_closed());
    // A RESUME that omits it fails A.
    assert_eq!(
        b_sends_raw(&mut p, &ack_frame(&[], 0x06)),
        Err(SessionError::Protocol("RESUME forgot a stream"))
    );
}

// ---- gap 12: epochs -------------------------------------------------------------------------

#[test]
fn a_non_resume_record_may_only_move_to_the_next_epoch() {
    // spec §5.3 rule 5, §5.5: in order is last + 1 or the first counter of epoch e + 1; a
    // non-RESUME record at the start of epoch e + 2 is rejected, though its key is derivable.
    let mut p = Pair::new(SessionConfig::default());
    let s = p.a.open_stream().unwrap();
    p.a.send(0, s, b"a").unwrap();
    p.flush();
    p.a.request_rekey();
    p.a.send(0, s, b"b").unwrap(); // epoch 1, lost
    let _lost = p.take_a();
    p.a.request_rekey();
    p.a.send(0, s, b"c").unwrap(); // epoch 2
    let r = p.take_a();
    assert_eq!(counter_of(&r[0], None).0, 2 << EPOCH_BITS);
    assert_eq!(p.b.handle_record(0, &r[0]), Err(SessionError::Decrypt));
    assert_eq!(p.b.stats().recv_epoch, 0);
    // The same skip inside a RESUME is accepted (records were lost with a path).
    p.a.resume(0).unwrap();
    p.b.resume(0).unwrap();
    p.flush();
    assert_eq!(p.b.stats().recv_epoch, 2);
    assert_eq!(stream_bytes(&p.b_events)[&s], b"abc");
}

// ---- gap 13: PING token, unknown PONG, ACK after RESUME -----------------------------------

#[test]
fn a_ping_token_is_echoed_unchanged_and_an_unknown_pong_is_ignored() {
    let mut p = fixed_pair(SessionConfig::default());
    let [_, k_ri] = split_keys();
    // Start both directions so B's answer has a known previous counter.
    p.a.resume(0).unwrap();
    p.b.resume(0).unwrap();
    p.flush();
    let token: u64 = 0xfeed_f00d_dead_beef;
    let mut ping = vec![0x04];
    ping.extend_from_slice(&token.to_be_bytes());
    a_sends_raw(&mut p, &ping).unwrap();
    let pong = p.take_b();
    assert_eq!(pong.len(), 1);
    let c = counter_of(&pong[0], Some(0));
    let pt = open_with_key(&pong[0], c, k_ri).unwrap();
    assert_eq!(Frame::decode(&pt).unwrap(), Frame::Pong(token));
    // A PONG for a token never sent: ignored, no error, no answer.
    let mut pong = vec![0x05];
    pong.extend_from_slice(&42u64.to_be_bytes());
    a_sends_raw(&mut p, &pong).unwrap();
    assert!(p.take_b().is_empty());
    assert!(!p.b.is_closed());
}

#[test]
fn resume_acknowledges_everything_it_lists_so_no_ack_follows_it() {
    // spec §6.3/§7.1: a RESUME carries the delivered offsets, so it counts as the ACK for
    // them: no separate ACK is sent for those bytes afterwards.
    let mut p = Pair::new(SessionConfig::default());
    p.a.resume(0).unwrap();
    p.b.resume(0).unwrap();
    p.flush();
    let t = p.b.open_stream().unwrap();
    p.b.send(0, t, &[1; 500]).unwrap();
    p.flush(); // A has the bytes, its ACK is delayed (20 ms)
    p.a.resume(0).unwrap();
    let recs = p.take_a();
    p.deliver_to_b(&recs);
    p.flush();
    assert_eq!(p.b.stats().unacked_bytes, 0, "the RESUME acknowledged them");
    // Without that, A's delayed ACK (20 ms) for the 500 bytes would be due now.
    p.now += 50;
    p.a.handle_timeout(p.now).unwrap();
    assert!(p.take_a().is_empty(), "no ACK after the RESUME");
}
