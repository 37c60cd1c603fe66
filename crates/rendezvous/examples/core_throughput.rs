//! Rough single-core throughput of the no-I/O cores (not a test: no
//! assertions on speed). Run: `cargo run --release -p mpc-did-rendezvous --example core_throughput`.

use std::time::{Duration, Instant};

use mpc_did_rendezvous::binding::answer;
use mpc_did_rendezvous::relay::{
    sign_client_auth, ClientToRelay, PeerAddr, RelayToClient, SigningKey,
};
use mpc_did_rendezvous::relay_server::{Handled, RelayConfig, RelayServer};
use mpc_did_rendezvous::stun::Message;

fn rate(label: &str, n: u64, took: Duration, bytes: u64) {
    let s = took.as_secs_f64();
    if bytes > 0 {
        println!(
            "{label:<44} {:>10.0} /s  {:>8.1} MB/s",
            n as f64 / s,
            bytes as f64 / s / 1e6
        );
    } else {
        println!("{label:<44} {:>10.0} /s", n as f64 / s);
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // STUN: decode a request and encode the answer.
    let req = Message::binding_request().encode(None, true)?;
    let src = "203.0.113.7:40000".parse()?;
    let local = "198.51.100.1:3478".parse()?;
    let n = 200_000u64;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(answer(std::hint::black_box(&req), src, local, Some(local))?);
    }
    rate("STUN Binding answer (decode+encode)", n, t.elapsed(), 0);

    // Relay: A -> server -> B with encode/decode on both hops, 1 KiB payloads.
    for size in [64usize, 1024, 16 * 1024] {
        let mut cfg = RelayConfig::new("did:web:relay.example");
        cfg.rate_bytes_per_sec = u64::MAX / 4;
        cfg.burst_bytes = u64::MAX / 4;
        let mut s = RelayServer::new(cfg);
        let now = Instant::now();
        let mut conns = vec![];
        let mut keys = vec![];
        for i in 1u8..=2 {
            let sk = SigningKey::from_bytes(&[i; 32]);
            let c = s.open([i; 32], now)?;
            let _ = s.poll_transmit(c);
            let a = sign_client_auth(
                &sk,
                &format!("did:key:{i}"),
                "k",
                "did:web:relay.example",
                &[i; 32],
                0,
            );
            if let Handled::VerifyAuth(a) = s.handle(c, ClientToRelay::ClientAuth(a), 0, now)? {
                s.finish_auth(c, &a, Some(&sk.verifying_key()), 0)?;
            }
            let _ = s.poll_transmit(c);
            conns.push(c);
            keys.push(sk.verifying_key().to_bytes());
        }
        let frame = ClientToRelay::SendPacket {
            dst: PeerAddr::Key(keys[1]),
            payload: vec![7; size],
        }
        .to_bytes()?;
        let n = (200_000_000 / (size as u64 + 100)).min(500_000);
        let mut out = Vec::with_capacity(size + 128);
        let t = Instant::now();
        for _ in 0..n {
            let Some((m, used)) = ClientToRelay::decode(&frame)? else {
                break;
            };
            s.handle(conns[0], m, used, now)?;
            while let Some(f) = s.poll_transmit(conns[1]) {
                out.clear();
                f.write_to(&mut out)?;
                std::hint::black_box(RelayToClient::decode(&out)?);
            }
        }
        rate(
            &format!("relay forward, {size} B payload (2 codecs)"),
            n,
            t.elapsed(),
            n * size as u64,
        );
    }
    Ok(())
}
