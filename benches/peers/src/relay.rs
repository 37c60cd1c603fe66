//! Our relay (the mediator's relay service, plain TCP and WebSocket transports) against
//! iroh's relay (`iroh-relay` server over plain HTTP, its own client), both in this process
//! on loopback, with direct loopback TCP as the baseline.
//!
//! Equal work: `TOTAL` bytes in writes of `chunk` bytes (1,200 B — the QUIC datagram size
//! iroh relays — and 16 KiB); the receiver acknowledges every 256 KiB and the sender keeps at
//! most 4 windows unacknowledged, so neither relay's bounded queues overflow (iroh drops
//! datagrams when a client's queue is full; a loss would stall the window and is reported
//! as an error, not hidden). Latency: 64-byte ping-pong, p50 and p99.
//!
//! What differs by design: our relay carries a byte stream between two identities (each
//! client proves a did:key); iroh's relays datagrams between endpoint ids, each datagram
//! one frame. Neither side adds TLS here (both accept it in production).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use iroh_base::{RelayUrl, SecretKey};
use iroh_relay::client::{Client, ClientBuilder};
use iroh_relay::protos::relay::{ClientToRelayMsg, Datagrams, RelayToClientMsg};
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Config, Mediator};
use mpc_did_rendezvous::net::{RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::{fmt, pct, ping_pong, summary, windowed};

const WINDOW: usize = 256 << 10;
const IN_FLIGHT: usize = 4;

async fn tcp_pair() -> anyhow::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let a = TcpStream::connect(l.local_addr()?).await?;
    let (b, _) = l.accept().await?;
    a.set_nodelay(true)?;
    b.set_nodelay(true)?;
    Ok((a, b))
}

fn identity(n: u8) -> RelayIdentity {
    RelayIdentity::did_key(SigningKey::from_bytes(&[n; 32]))
}

fn key(n: u8) -> PeerAddr {
    PeerAddr::Key(SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes())
}

/// Two connections to our relay (plain TCP if `tcp`, else WebSocket) and a stream between them.
async fn ours_pair(
    tcp: Option<SocketAddr>,
    ws: &str,
    n: u8,
) -> anyhow::Result<(
    impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    RelayConnection,
    RelayConnection,
)> {
    let (ia, ib) = (identity(n), identity(n + 1));
    let (a, b) = match tcp {
        Some(addr) => (
            RelayConnection::connect_tcp(addr, ia, None).await?,
            RelayConnection::connect_tcp(addr, ib, None).await?,
        ),
        None => (
            RelayConnection::connect_ws(ws, ia, None).await?,
            RelayConnection::connect_ws(ws, ib, None).await?,
        ),
    };
    a.set_send_rate(0, 0);
    b.set_send_rate(0, 0);
    let sa = a.open_stream(key(n + 1))?;
    let sb = b.open_stream(key(n))?;
    Ok((sa, sb, a, b))
}

fn iroh_tls() -> rustls::ClientConfig {
    // Only consulted for https:// relay URLs; this benchmark's relay URL is http://.
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
    .unwrap_or_else(|_| {
        rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    })
}

async fn iroh_client(url: &RelayUrl, seed: u8) -> anyhow::Result<(Client, iroh_base::EndpointId)> {
    let sk = SecretKey::from_bytes(&[seed; 32]);
    let id = sk.public();
    let c = ClientBuilder::new(url.clone(), sk, iroh_dns::dns::DnsResolver::new())
        .tls_client_config(iroh_tls())
        .connect()
        .await
        .context("iroh relay client connect")?;
    Ok((c, id))
}

/// Next datagram payload length on an iroh client (other relay messages are skipped).
async fn iroh_next(c: &mut Client) -> anyhow::Result<usize> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .map_err(|_| anyhow!("iroh relay: nothing received within 20 s (datagram lost?)"))?
            .ok_or_else(|| anyhow!("iroh relay: connection closed"))??;
        match m {
            RelayToClientMsg::Datagrams { datagrams, .. } => return Ok(datagrams.contents.len()),
            // The relay's keep-alive: answered as its client must.
            RelayToClientMsg::Ping(p) => c.send(ClientToRelayMsg::Pong(p)).await?,
            other => eprintln!("iroh relay: {other:?}"),
        }
    }
}

/// The windowed bulk transfer over iroh's relay: datagrams of `chunk` bytes.
async fn iroh_windowed(
    mut a: Client,
    a_id: iroh_base::EndpointId,
    mut b: Client,
    b_id: iroh_base::EndpointId,
    total: usize,
    chunk: usize,
) -> anyhow::Result<(f64, Client, Client)> {
    let windows = total / WINDOW;
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        let mut got = 0usize;
        for w in 1..=windows {
            while got < w * WINDOW {
                got += iroh_next(&mut b).await?;
            }
            b.send(ClientToRelayMsg::Datagrams {
                dst_endpoint_id: a_id,
                datagrams: Datagrams::from([1u8]),
            })
            .await?;
        }
        Ok::<_, anyhow::Error>(b)
    });
    let data = vec![0x5au8; chunk];
    let mut acked = 0usize;
    for w in 0..windows {
        while w - acked >= IN_FLIGHT {
            iroh_next(&mut a).await?;
            acked += 1;
        }
        let mut left = WINDOW;
        while left > 0 {
            let n = left.min(chunk);
            a.feed(ClientToRelayMsg::Datagrams {
                dst_endpoint_id: b_id,
                datagrams: Datagrams::from(&data[..n]),
            })
            .await?;
            left -= n;
        }
        a.flush().await?;
    }
    while acked < windows {
        iroh_next(&mut a).await?;
        acked += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let b = recv.await??;
    Ok(((windows * WINDOW) as f64 / secs / (1 << 20) as f64, a, b))
}

/// 64-byte ping-pong over iroh's relay: (p50, p99) in µs.
async fn iroh_ping(
    mut a: Client,
    a_id: iroh_base::EndpointId,
    mut b: Client,
    b_id: iroh_base::EndpointId,
    rounds: usize,
) -> anyhow::Result<(f64, f64)> {
    let echo = tokio::spawn(async move {
        for _ in 0..rounds {
            let n = iroh_next(&mut b).await?;
            b.send(ClientToRelayMsg::Datagrams {
                dst_endpoint_id: a_id,
                datagrams: Datagrams::from(vec![7u8; n]),
            })
            .await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut rtts = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        a.send(ClientToRelayMsg::Datagrams {
            dst_endpoint_id: b_id,
            datagrams: Datagrams::from([7u8; 64]),
        })
        .await?;
        iroh_next(&mut a).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    echo.await??;
    rtts.sort_by(f64::total_cmp);
    Ok((pct(&rtts, 0.5), pct(&rtts, 0.99)))
}

const MODES: [&str; 4] = [
    "direct TCP (baseline)",
    "ours: relay, plain TCP",
    "ours: relay, WebSocket",
    "iroh-relay (HTTP upgrade)",
];

pub async fn run(reps: usize, quick: bool) -> anyhow::Result<()> {
    let (total, rounds) = if quick {
        (4 << 20, 100)
    } else {
        (64 << 20, 2000)
    };
    let chunks = [1200usize, 16 << 10];

    // Our relay: the mediator with its relay service, limits raised so they do not cap the
    // measurement (as benches/benches/relay.rs).
    let dir = tempfile::tempdir()?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data: dir.path().join("m"),
        ..Config::default()
    };
    let relay = RelayService::bind(RelayServiceConfig {
        tcp_listen: Some("127.0.0.1:0".parse()?),
        rate_bytes_per_sec: 64 << 30,
        burst_bytes: 16 << 20,
        max_queue_bytes: 8 << 20,
        max_queue_frames: 4096,
        ..RelayServiceConfig::default()
    })
    .await?;
    let h = relay.handle();
    let m = Mediator::builder(config).service(relay).start().await?;
    let ws = format!("ws://{}/relay", m.addr);
    let tcp = h.tcp_addr();

    // iroh's relay: its server over plain HTTP on loopback, default limits (no rate limit).
    let mut iroh_cfg: iroh_relay::server::ServerConfig = Default::default();
    iroh_cfg.relay = Some(iroh_relay::server::RelayConfig::new((
        Ipv4Addr::LOCALHOST,
        0,
    )));
    let iroh = iroh_relay::server::Server::spawn(iroh_cfg)
        .await
        .context("iroh relay server")?;
    let iroh_addr = iroh
        .http_addr()
        .ok_or_else(|| anyhow!("iroh relay: no HTTP address"))?;
    let iroh_url: RelayUrl = format!("http://{iroh_addr}")
        .parse()
        .context("iroh relay URL")?;

    // tp[chunk][mode] and rtt50/rtt99[mode], one entry per repetition.
    let mut tp = vec![vec![Vec::new(); MODES.len()]; chunks.len()];
    let mut r50 = vec![Vec::new(); MODES.len()];
    let mut r99 = vec![Vec::new(); MODES.len()];
    let mut seed = 10u8;
    for rep in 0..reps {
        for (ci, &chunk) in chunks.iter().enumerate() {
            for (mi, mode) in MODES.iter().enumerate() {
                seed = seed.wrapping_add(2).max(10);
                let v = match mi {
                    0 => {
                        let (a, b) = tcp_pair().await?;
                        windowed(a, b, total, chunk, WINDOW, IN_FLIGHT).await?.0
                    }
                    1 | 2 => {
                        let via = if mi == 1 { tcp } else { None };
                        let (sa, sb, _ca, _cb) = ours_pair(via, &ws, seed).await?;
                        windowed(sa, sb, total, chunk, WINDOW, IN_FLIGHT).await?.0
                    }
                    _ => {
                        let (a, a_id) = iroh_client(&iroh_url, seed).await?;
                        let (b, b_id) = iroh_client(&iroh_url, seed + 1).await?;
                        iroh_windowed(a, a_id, b, b_id, total, chunk).await?.0
                    }
                };
                eprintln!("relay rep {rep} chunk {chunk}: {mode}: {v:.0} MiB/s");
                tp[ci][mi].push(v);
            }
        }
        for (mi, mode) in MODES.iter().enumerate() {
            seed = seed.wrapping_add(2).max(10);
            let (p50, p99) = match mi {
                0 => {
                    let (a, b) = tcp_pair().await?;
                    ping_pong(a, async move { Ok(b) }, rounds).await?
                }
                1 | 2 => {
                    let via = if mi == 1 { tcp } else { None };
                    let (sa, sb, _ca, _cb) = ours_pair(via, &ws, seed).await?;
                    // A relay stream is announced to the peer by its first frame: the
                    // acceptor side here was opened explicitly, so both ends exist.
                    ping_pong(sa, async move { Ok(sb) }, rounds).await?
                }
                _ => {
                    let (a, a_id) = iroh_client(&iroh_url, seed).await?;
                    let (b, b_id) = iroh_client(&iroh_url, seed + 1).await?;
                    iroh_ping(a, a_id, b, b_id, rounds).await?
                }
            };
            eprintln!("relay rep {rep}: {mode}: RTT p50 {p50:.0} µs, p99 {p99:.0} µs");
            r50[mi].push(p50);
            r99[mi].push(p99);
        }
    }
    let metrics = h
        .metrics()
        .ok_or_else(|| anyhow!("our relay: no metrics"))?;
    if metrics.dropped_queue_full + metrics.dropped_rate_limited != 0 {
        return Err(anyhow!("our relay dropped frames: the run is not lossless"));
    }

    println!(
        "## Relay on loopback: ours vs iroh-relay 1.4.1\n\n{} MiB per run, acknowledged every {} KiB, ≤ {IN_FLIGHT} windows in flight; {rounds} 64-byte round trips; {reps} alternating repetitions, median (min–max); × = ratio of medians to direct TCP.\n",
        total >> 20,
        WINDOW >> 10
    );
    print!("| path |");
    for c in chunks {
        print!(" MiB/s, {c}-byte writes | × direct |");
    }
    println!(" RTT p50 µs | RTT p99 µs | added p50 µs |");
    print!("|---|");
    for _ in chunks {
        print!("---:|---:|");
    }
    println!("---:|---:|---:|");
    let base50 = summary(&r50[0]).median;
    for (mi, mode) in MODES.iter().enumerate() {
        print!("| {mode} |");
        for ci in 0..chunks.len() {
            let s = summary(&tp[ci][mi]);
            let b = summary(&tp[ci][0]).median;
            print!(" {} | {:.2} |", fmt(s, 0), s.median / b);
        }
        let s50 = summary(&r50[mi]);
        println!(
            " {} | {} | {:.0} |",
            fmt(s50, 0),
            fmt(summary(&r99[mi]), 0),
            s50.median - base50
        );
    }
    println!();
    iroh.shutdown().await.ok();
    m.shutdown().await;
    Ok(())
}
