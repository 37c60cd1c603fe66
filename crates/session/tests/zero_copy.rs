//! The allocation-free receive paths (spec/session.md §11 "Performance note"): borrowed
//! events and reading straight into the record decoder must deliver exactly what the
//! allocating paths deliver.
#![allow(clippy::unwrap_used)]

mod common;

use common::{handshake, pattern};
use mpc_did_session::{Event, EventRef, RecordDecoder, SessionConfig};

#[test]
fn borrowed_events_deliver_the_same_bytes_in_order_with_fin_after_data() {
    // spec §6.2: every byte once, in order; FIN after the last byte.
    let (mut a, mut b) = handshake(SessionConfig::default());
    let s0 = a.open_stream().unwrap();
    let s1 = a.open_stream().unwrap();
    let big = pattern(1, 100_000); // several records
    a.send(0, s0, &big).unwrap();
    a.send(0, s1, b"other").unwrap();
    a.send(0, s0, b"tail").unwrap();
    a.finish(0, s0).unwrap();
    while let Some(r) = a.poll_transmit() {
        b.handle_record(0, &r).unwrap();
    }
    // The run at the front: every record of `big` on s0, then s1 interrupts it.
    assert_eq!(b.queued_data(), Some((s0, big.len())));
    let mut got = std::collections::BTreeMap::<u32, Vec<u8>>::new();
    let mut order = Vec::new();
    while let Some(ev) = b.poll_event_ref() {
        match ev {
            EventRef::Data { stream, data } => {
                order.push(stream);
                got.entry(stream).or_default().extend_from_slice(data);
            }
            EventRef::Other(Event::StreamFinished { stream }) => order.push(stream + 100),
            EventRef::Other(e) => panic!("unexpected event {e:?}"),
        }
        if order.len() == big.len().div_ceil(32_000) {
            // Between polls the session may be used again: nothing is lost.
            assert!(b.queued_data().is_some());
        }
    }
    let mut expect0 = big.clone();
    expect0.extend_from_slice(b"tail");
    assert_eq!(got[&s0], expect0);
    assert_eq!(got[&s1], b"other");
    assert_eq!(order.last(), Some(&(s0 + 100)), "FIN comes after the data");
    assert_eq!(b.queued_data(), None);
}

#[test]
fn reading_into_the_decoder_in_odd_pieces_yields_the_same_records_as_push() {
    // spec §5.1: records on a byte stream, split anywhere by the path.
    let (mut a, _b) = handshake(SessionConfig::default());
    let s = a.open_stream().unwrap();
    a.send(0, s, &pattern(2, 70_000)).unwrap();
    let mut wire = Vec::new();
    let mut expect = Vec::new();
    while let Some(r) = a.poll_transmit() {
        wire.extend_from_slice(&r);
        expect.push(r);
    }
    let mut dec = RecordDecoder::new();
    let mut got = Vec::new();
    let mut at = 0;
    let mut piece = 1;
    while at < wire.len() {
        let n = piece.min(wire.len() - at);
        let spare = dec.spare(n);
        assert!(spare.len() >= n);
        spare[..n].copy_from_slice(&wire[at..at + n]);
        dec.filled(n);
        at += n;
        piece = piece * 7 % 40_000 + 1;
        while let Some(r) = dec.next_record().unwrap() {
            got.push(r);
        }
    }
    assert_eq!(got, expect);
    assert_eq!(dec.buffered(), 0);
}
