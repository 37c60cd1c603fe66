//! Relay frame decoders on an arbitrary byte stream, and the relay client
//! and server cores fed with whatever decodes: never panics, decoded frames re-encode
//! to the exact bytes consumed. Seeds: fuzz/seeds/relay_frame
//! (crates/rendezvous/tests/vectors/relay_frames.json).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use mpc_did_rendezvous::relay::{
    sign_client_auth, ClientAuth, ClientToRelay, RelayToClient, SigningKey, VerifyingKey,
};
use mpc_did_rendezvous::relay_client::{ClientEvent, RelayClient};
use mpc_did_rendezvous::relay_server::{Handled, RelayConfig, RelayServer};

fuzz_target!(|data: &[u8]| {
    // Relay -> client direction, driving the client core.
    let mut client = RelayClient::new(
        SigningKey::from_bytes(&[9; 32]),
        "did:key:me",
        "did:key:me#k",
        Some("did:web:relay.example".into()),
    );
    let mut rest = data;
    while let Ok(Some((m, used))) = RelayToClient::decode(rest) {
        assert_eq!(m.to_bytes().expect("re-encodes"), rest[..used]);
        rest = &rest[used..];
        if let Ok(ClientEvent::Send(out)) = client.on_frame(m, 1_800_000_000) {
            out.to_bytes().expect("client frames encode");
        }
    }

    let t0 = Instant::now();
    let mut cfg = RelayConfig::new("did:web:relay.example");
    cfg.max_queue_frames = 8;
    cfg.burst_bytes = 4096;
    let mut server = RelayServer::new(cfg);
    // Two authenticated clients (the fuzzer cannot forge signatures, so the
    // harness logs them in to reach the forwarding paths). Signatures are
    // made once: Ed25519 would otherwise dominate the run time.
    static LOGINS: OnceLock<Vec<(ClientAuth, VerifyingKey)>> = OnceLock::new();
    let logins = LOGINS.get_or_init(|| {
        [1u8, 2]
            .iter()
            .map(|&n| {
                let sk = SigningKey::from_bytes(&[n; 32]);
                let did = format!("did:key:party{n}");
                let auth = sign_client_auth(
                    &sk,
                    &did,
                    "k",
                    "did:web:relay.example",
                    &[n; 32],
                    1_800_000_000,
                );
                (auth, sk.verifying_key())
            })
            .collect()
    });
    let mut conns = Vec::new();
    for (n, (auth, key)) in [1u8, 2].iter().zip(logins) {
        let c = server.open([*n; 32], t0).expect("room");
        server
            .handle(c, ClientToRelay::ClientAuth(auth.clone()), 0, t0)
            .expect("open conn");
        server
            .finish_auth(c, auth, Some(key), 1_800_000_000)
            .expect("valid auth");
        conns.push(c);
    }
    let mut rest = data;
    let mut i = 0u64;
    loop {
        let conn = conns[(i % 2) as usize];
        let now = t0 + Duration::from_millis(i * 7);
        match ClientToRelay::decode(rest) {
            Ok(Some((m, used))) => {
                assert_eq!(m.to_bytes().expect("re-encodes"), rest[..used]);
                rest = &rest[used..];
                if let Ok(Handled::VerifyAuth(a)) = server.handle(conn, m, used, now) {
                    // A ClientAuth on a logged-in connection is refused before
                    // any verification; the key only matters for types' sake.
                    let _ = server.finish_auth(conn, &a, Some(&logins[0].1), a.timestamp);
                }
            }
            Ok(None) => break,
            Err(e) => {
                server.on_malformed(conn, &e);
                break;
            }
        }
        while server.poll_event().is_some() {}
        server.handle_timeout(now);
        i += 1;
    }
    for c in conns {
        while server.poll_transmit(c).is_some() {}
        server.close(c);
    }
    assert_eq!(server.metrics().clients, 0);
});
