//! One 64-byte message after another through an in-memory session pair, exactly the work of
//! the `session` criterion bench and `mpc-did bench local` (seal, open, deliver, ACK
//! bookkeeping), for `perf stat` / `perf record` per message (spec/session.md §11):
//!
//! ```text
//! cargo build --release -p mpc-did-session --example record_loop
//! perf stat -e instructions,task-clock target/release/examples/record_loop 2000000 64
//! ```
//! Arguments: messages (default 2,000,000), payload bytes (default 64) and optionally
//! `floor`: then the loop times the record format's own AES-256-GCM floor instead (ring
//! seal + copy + open of the same plaintext, the 2-byte header as associated data, as
//! `record_format_floor` in benches/benches/session.rs). Prints the wall time per message;
//! divide perf's counters by the message count.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use mpc_did_session::{Acceptor, EventRef, Proposer, Session, SessionConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().map_or(2_000_000, |a| a.parse().unwrap());
    let size: usize = args.next().map_or(64, |a| a.parse().unwrap());
    if args.next().as_deref() == Some("floor") {
        return floor(n, size);
    }
    let config = SessionConfig {
        ack_threshold_bytes: 1 << 20,
        ..SessionConfig::default()
    };
    let (bob, propose) = Proposer::new([1; 16], "mpc", [7; 32], "did:key:b", "did:key:a");
    let (alice, accept) =
        Acceptor::on_propose(&propose, "mpc", [7; 32], "did:key:a", "did:key:b").unwrap();
    let (mut b, hs) = bob.on_accept(&accept, config.clone(), 0).unwrap();
    let mut a = alice.on_handshake(&hs, config, 0).unwrap();
    let stream = a.open_stream().unwrap();
    let msg = vec![0x5a; size];
    let start = Instant::now();
    let mut got = 0usize;
    for _ in 0..n {
        got += one_message(&mut a, &mut b, stream, black_box(&msg));
    }
    let el = start.elapsed();
    assert_eq!(got as u64, n * size as u64);
    println!(
        "{n} messages of {size} B: {:.1} ns/message",
        el.as_nanos() as f64 / n as f64
    );
}

/// As `one_message` in benches/benches/session.rs.
fn one_message(a: &mut Session, b: &mut Session, stream: u32, msg: &[u8]) -> usize {
    let n = a.send(0, stream, msg).unwrap();
    assert_eq!(n, msg.len());
    while let Some(rec) = a.poll_transmit_ref() {
        b.handle_record(0, rec).unwrap();
    }
    let mut got = 0;
    while let Some(ev) = b.poll_event_ref() {
        if let EventRef::Data { data, .. } = ev {
            got += black_box(data).len();
        }
    }
    while let Some(ack) = b.poll_transmit_ref() {
        a.handle_record(0, ack).unwrap();
    }
    while a.poll_event().is_some() {}
    got
}

/// The record format's crypto floor, as `bench_format_floor` in benches/benches/session.rs.
fn floor(n: u64, size: usize) {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[3; 32]).unwrap());
    let msg = vec![0x5a; size];
    let mut rec = vec![0u8; 2 + 2 + size + 16];
    let mut rx = vec![0u8; 2 + size + 16];
    let start = Instant::now();
    for counter in 0..n {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        let (hdr, body) = rec.split_at_mut(2);
        body[0] = 0x01;
        body[1] = 0x00;
        body[2..2 + size].copy_from_slice(black_box(&msg));
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&hdr[..]),
                &mut body[..2 + size],
            )
            .unwrap();
        body[2 + size..].copy_from_slice(tag.as_ref());
        rx.copy_from_slice(body);
        let pt = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&hdr[..]),
                &mut rx,
            )
            .unwrap();
        black_box(pt.len());
    }
    let el = start.elapsed();
    println!(
        "floor, {n} records of {size} B: {:.1} ns/record",
        el.as_nanos() as f64 / n as f64
    );
}
