//! Property tests: codec round trips, byte-stream splitting, loss + resume (spec/session.md §5, §7).
#![allow(clippy::unwrap_used)]

mod common;

use common::{pattern, stream_bytes, Pair};
use mpc_did_session::frame::{
    decode_varint, encode_varint, varint_len, Frame, RecordHeader, StreamState, MAX_CIPHERTEXT_LEN,
    MAX_DATA_PER_FRAME, MAX_VARINT, MIN_CIPHERTEXT_LEN,
};
use mpc_did_session::{RecordDecoder, SessionConfig};
use proptest::prelude::*;

fn stream_state() -> impl Strategy<Value = StreamState> {
    (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(stream, offset, fin)| StreamState {
        stream,
        offset,
        fin,
    })
}

#[derive(Debug, Clone)]
enum OwnedFrame {
    Data(u32, Vec<u8>),
    Fin(u32, u64),
    Ack(Vec<StreamState>),
    Ping(u64),
    Pong(u64),
    Resume(Vec<StreamState>),
    Close(u16, String),
}

impl OwnedFrame {
    fn borrow(&self) -> Frame<'_> {
        match self {
            OwnedFrame::Data(s, d) => Frame::Data {
                stream: *s,
                data: d,
            },
            OwnedFrame::Fin(s, f) => Frame::Fin {
                stream: *s,
                final_size: *f,
            },
            OwnedFrame::Ack(v) => Frame::Ack(v.clone()),
            OwnedFrame::Ping(t) => Frame::Ping(*t),
            OwnedFrame::Pong(t) => Frame::Pong(*t),
            OwnedFrame::Resume(v) => Frame::Resume(v.clone()),
            OwnedFrame::Close(c, r) => Frame::Close {
                code: *c,
                reason: r,
            },
        }
    }
}

fn frame() -> impl Strategy<Value = OwnedFrame> {
    prop_oneof![
        (
            prop_oneof![0u32..64, 64u32..16_384, 16_384u32..(1 << 30), any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(s, d)| OwnedFrame::Data(s, d)),
        (any::<u32>(), any::<u64>()).prop_map(|(s, f)| OwnedFrame::Fin(s, f)),
        proptest::collection::vec(stream_state(), 0..20).prop_map(OwnedFrame::Ack),
        any::<u64>().prop_map(OwnedFrame::Ping),
        any::<u64>().prop_map(OwnedFrame::Pong),
        proptest::collection::vec(stream_state(), 0..20).prop_map(OwnedFrame::Resume),
        (any::<u16>(), "[a-z é]{0,60}").prop_map(|(c, r)| OwnedFrame::Close(c, r)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// spec/session.md §5.4: every frame decodes to itself.
    #[test]
    fn frame_round_trip(f in frame()) {
        let frame = f.borrow();
        let mut buf = Vec::new();
        frame.encode(&mut buf).unwrap();
        prop_assert_eq!(buf.len(), frame.encoded_len());
        prop_assert_eq!(Frame::decode(&buf).unwrap(), frame);
    }

    /// RFC 9000 §16 as required by spec/session.md §5.4: every value has exactly one
    /// encoding, the shortest; the longer ones are rejected.
    #[test]
    fn varint_round_trip_and_minimality(
        v in prop_oneof![0u64..64, 0u64..16_384, 0u64..(1 << 30), 0u64..=MAX_VARINT],
        tail in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let mut buf = Vec::new();
        encode_varint(v, &mut buf).unwrap();
        let n = varint_len(v).unwrap();
        prop_assert_eq!(buf.len(), n);
        buf.extend_from_slice(&tail);
        let (got, rest) = decode_varint(&buf).unwrap();
        prop_assert_eq!(got, v);
        prop_assert_eq!(rest, &tail[..]);
        // Every longer form of the same value is malformed.
        for (len, prefix) in [(2usize, 0x40u8), (4, 0x80), (8, 0xc0)] {
            if len <= n {
                continue;
            }
            let mut long = v.to_be_bytes()[8 - len..].to_vec();
            long[0] |= prefix;
            prop_assert!(decode_varint(&long).is_err(), "{} in {} bytes", v, len);
        }
        prop_assert!(encode_varint(MAX_VARINT + 1 + (v >> 2), &mut Vec::new()).is_err());
    }

    /// spec/session.md §5.1: the record header round-trips with and without a counter.
    #[test]
    fn record_header_round_trip(
        ct_len in MIN_CIPHERTEXT_LEN..=MAX_CIPHERTEXT_LEN,
        counter in proptest::option::of(any::<u64>()),
    ) {
        let h = RecordHeader { ciphertext_len: ct_len, counter };
        let (bytes, n) = h.to_bytes().unwrap();
        prop_assert_eq!(n, if counter.is_some() { 10 } else { 2 });
        prop_assert_eq!(RecordHeader::peek(&bytes[..n]).unwrap(), Some(h));
        prop_assert_eq!(RecordHeader::peek(&bytes[..n - 1]).unwrap(), None);
        let mut record = bytes[..n].to_vec();
        record.resize(n + ct_len, 0);
        prop_assert_eq!(RecordHeader::parse(&record).unwrap(), h);
        record.push(0);
        prop_assert!(RecordHeader::parse(&record).is_err());
    }

    /// The frame decoder never panics on arbitrary bytes.
    #[test]
    fn frame_decode_arbitrary(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Frame::decode(&bytes);
    }

    /// spec/session.md §5.1: any split of the byte stream yields the same records.
    #[test]
    fn record_stream_any_split(
        sizes in proptest::collection::vec(1usize..3000, 1..12),
        cuts in proptest::collection::vec(1usize..5000, 1..40),
    ) {
        let mut p = Pair::new(SessionConfig::default());
        let s = p.a.open_stream().unwrap();
        for (i, n) in sizes.iter().enumerate() {
            // Early rekeys mix explicit counters into the implicit ones (spec §5.1).
            if i % 3 == 2 {
                p.a.request_rekey();
            }
            p.a.send(0, s, &pattern(i as u8, *n)).unwrap();
        }
        let records = p.take_a();
        let wire: Vec<u8> = records.concat();
        let mut dec = RecordDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut k = 0;
        while pos < wire.len() {
            let n = cuts[k % cuts.len()].min(wire.len() - pos);
            k += 1;
            dec.push(&wire[pos..pos + n]);
            pos += n;
            while let Some(r) = dec.next_record().unwrap() {
                out.push(r);
            }
        }
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(&out, &records);
        p.deliver_to_b(&out);
        let total: usize = sizes.iter().sum();
        prop_assert_eq!(stream_bytes(&p.b_events)[&s].len(), total);
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// Side A (true) or B writes n bytes on its stream.
    Write(bool, usize),
    /// Deliver up to n records each way.
    Deliver(usize),
    /// The path dies: undelivered records are lost; both sides (0), only A (1) or only B (2)
    /// notice and resume — the other learns of it from the RESUME.
    SwitchPath(u8),
    /// Time passes (delayed ACKs, keepalives).
    Tick(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (any::<bool>(), 1usize..(MAX_DATA_PER_FRAME * 2)).prop_map(|(a, n)| Step::Write(a, n)),
        3 => (0usize..6).prop_map(Step::Deliver),
        1 => (0u8..3).prop_map(Step::SwitchPath),
        1 => (1u64..50).prop_map(Step::Tick),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// spec/session.md §7: whatever is lost when paths die, after resuming every byte arrives
    /// exactly once and in order.
    #[test]
    fn random_path_loss_never_loses_or_duplicates(steps in proptest::collection::vec(step(), 1..40)) {
        let config = SessionConfig { max_unacked_bytes: 1 << 20, rekey_bytes: 200_000, ..SessionConfig::default() };
        let mut p = Pair::new(config);
        let sa = p.a.open_stream().unwrap();
        let sb = p.b.open_stream().unwrap();
        let (mut wrote_a, mut wrote_b) = (Vec::new(), Vec::new());
        let (mut q_ab, mut q_ba): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (Vec::new(), Vec::new());
        let mut seed = 0u8;
        for st in steps {
            match st {
                Step::Write(a, n) => {
                    seed = seed.wrapping_add(1);
                    let data = pattern(seed, n);
                    let (sess, s, wrote) = if a { (&mut p.a, sa, &mut wrote_a) } else { (&mut p.b, sb, &mut wrote_b) };
                    let k = sess.send(p.now, s, &data).unwrap();
                    wrote.extend_from_slice(&data[..k]);
                }
                Step::Deliver(n) => {
                    q_ab.extend(p.take_a());
                    q_ba.extend(p.take_b());
                    let ab: Vec<_> = q_ab.drain(..n.min(q_ab.len())).collect();
                    let ba: Vec<_> = q_ba.drain(..n.min(q_ba.len())).collect();
                    p.deliver_to_b(&ab);
                    p.deliver_to_a(&ba);
                }
                Step::SwitchPath(who) => {
                    q_ab.clear();
                    q_ba.clear();
                    let _ = p.take_a();
                    let _ = p.take_b();
                    if who != 2 {
                        p.a.resume(p.now).unwrap();
                    }
                    if who != 1 {
                        p.b.resume(p.now).unwrap();
                    }
                }
                Step::Tick(ms) => {
                    p.now += ms;
                    p.a.handle_timeout(p.now).unwrap();
                    p.b.handle_timeout(p.now).unwrap();
                }
            }
        }
        // Finally a path that works until everything is through.
        p.a.resume(p.now).unwrap();
        p.b.resume(p.now).unwrap();
        p.flush();
        p.advance(100);
        let got_b = stream_bytes(&p.b_events).remove(&sa).unwrap_or_default();
        let got_a = stream_bytes(&p.a_events).remove(&sb).unwrap_or_default();
        prop_assert!(got_b == wrote_a, "A→B: {} of {} bytes", got_b.len(), wrote_a.len());
        prop_assert!(got_a == wrote_b, "B→A: {} of {} bytes", got_a.len(), wrote_b.len());
        prop_assert_eq!(p.a.stats().unacked_bytes, 0);
        prop_assert_eq!(p.b.stats().unacked_bytes, 0);
    }
}
