//! The `mpc-did-mediator` binary serves STUN (UDP and TCP) and the relay (WebSocket on the
//! HTTP port, plain TCP) when asked to, and says where on its startup line.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use mpc_did_rendezvous::binding::RetransmitSchedule;
use mpc_did_rendezvous::net::{binding_tcp, binding_udp, RelayConnection, RelayIdentity};

#[tokio::test]
async fn binary_serves_stun_and_relay() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mpc-did-mediator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--stun",
            "127.0.0.1:0",
        ])
        .args(["--relay-tcp", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let stun: SocketAddr = v["stun"].as_str().unwrap().parse().unwrap();
    let relay_tcp: SocketAddr = v["relay_tcp"].as_str().unwrap().parse().unwrap();
    let relay_url = v["relay_url"].as_str().unwrap().to_owned();
    let mediator_did = v["did"].as_str().unwrap().to_owned();

    // Clients learn the STUN port from /oob (spec/mediator.md §2, §9).
    let info = mpc_did_agent::client::MediatorInfo::discover(
        v["addr"]
            .as_str()
            .map_or_else(|| panic!("no addr in {line}"), |a| format!("http://{a}"))
            .as_str(),
    )
    .await
    .unwrap();
    assert_eq!(info.stun_port, Some(stun.port()));

    // STUN over UDP and TCP: our mapped address on loopback is our own socket address.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let got = binding_udp(&sock, stun, RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!(got.mapped, sock.local_addr().unwrap());
    let (got, local) = binding_tcp(stun, None, RetransmitSchedule::default())
        .await
        .unwrap();
    assert_eq!(got.mapped, local);

    // The relay authenticates a did:key client over both transports, and checks the
    // mediator's identity.
    let key = || ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let ws = RelayConnection::connect_ws(
        &relay_url,
        RelayIdentity::did_key(key()),
        Some(mediator_did.clone()),
    )
    .await
    .unwrap();
    assert!(ws.is_open());
    drop(ws);
    let tcp =
        RelayConnection::connect_tcp(relay_tcp, RelayIdentity::did_key(key()), Some(mediator_did))
            .await
            .unwrap();
    assert!(tcp.is_open());
    let _ = child.kill();
    let _ = child.wait();
}
