//! A relay that misbehaves toward the relay client (loopback, a fake relay speaking
//! WebSocket): what it can make the client buffer is bounded by one relay frame.
// `result_large_err`: tungstenite's handshake callback signature, not ours.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use ed25519_dalek::SigningKey;
use futures_util::SinkExt as _;
use mpc_did_rendezvous::net::relay::{MAX_WS_MESSAGE, RELAY_SUBPROTOCOL_V2};
use mpc_did_rendezvous::net::{RelayConnection, RelayIdentity};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// A fake relay that accepts one WebSocket (choosing the v2 subprotocol) and sends one
/// binary message of `len` bytes before anything else.
async fn relay_sending(len: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let choose = |_: &Request, mut resp: Response| {
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(RELAY_SUBPROTOCOL_V2),
            );
            Ok(resp)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, choose)
            .await
            .unwrap();
        let _ = ws.send(Message::binary(vec![0u8; len])).await;
        // Keep the connection open while the client reads.
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    });
    format!("ws://{addr}/relay")
}

/// audit M3: a relay message is one relay frame (spec/rendezvous.md §4.1), so the client
/// refuses a longer one as soon as its header says so. Before the fix the client took
/// tungstenite's default 64 MiB messages, and buffered this 2 MiB one whole before
/// failing to decode it.
#[tokio::test]
async fn a_relay_message_longer_than_a_frame_is_refused() {
    let url = relay_sending(2 << 20).await;
    let me = RelayIdentity::did_key(SigningKey::from_bytes(&[7; 32]));
    let err = match RelayConnection::connect_ws(&url, me, None).await {
        Ok(_) => panic!("a 2 MiB relay message was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("Message too long") && err.contains(&MAX_WS_MESSAGE.to_string()),
        "{err}"
    );
}
