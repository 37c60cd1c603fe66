//! Our relay (the mediator's relay service, plain TCP and WebSocket transports) against
//! iroh's relay (`iroh-relay` server over plain HTTP, its own client), both in this process
//! on loopback, with direct loopback TCP as the baseline.
//!
//! Equal work: `TOTAL` bytes in writes of `chunk` bytes (1,200 B — the QUIC datagram size
//! iroh relays — and 16 KiB); the receiver acknowledges every `WINDOW` bytes and the sender
//! keeps at most `IN_FLIGHT` windows unacknowledged, the same bound on every path.
//!
//! That bound is chosen for iroh's relay, which is a datagram relay for QUIC: its server
//! hands each datagram to the recipient's send queue with a non-blocking `try_send` and
//! drops it when that queue (`PER_CLIENT_SEND_QUEUE_DEPTH`, 512 datagrams) is full; QUIC's
//! loss recovery and congestion control above it are what make that safe in iroh. A
//! benchmark driver without them must never have more datagrams unacknowledged than that
//! queue holds, or a receiver that drains slower than the sender queues (any loaded
//! machine) loses datagrams and the window never completes: that was the stall of the
//! first runs (4 × 256 KiB = 874 datagrams of 1,200 B in flight). Now 4 × 128 KiB = 440
//! datagrams, checked at compile time against iroh's constant. Loss is still measured, not
//! assumed: the iroh server's own counters (datagrams received from clients vs written to
//! clients) are compared after every transfer, and a transfer that stops making progress
//! for 10 s fails with the number of datagrams the relay dropped.
//!
//! Sending: each window is queued into the iroh client's `Sink` with `feed` and written
//! with one `flush` (the client's own batching path; our relay streams get `write_all` per
//! chunk and one `flush` per window). Latency: 64-byte ping-pong, p50 and p99.
//!
//! What differs by design: our relay carries a byte stream between two identities (each
//! client proves a did:key); iroh's relays datagrams between endpoint ids, each datagram
//! one frame. Neither side adds TLS here (both accept it in production).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use iroh_base::{RelayUrl, SecretKey};
use iroh_relay::client::{Client, ClientBuilder};
use iroh_relay::protos::relay::{
    ClientToRelayMsg, Datagrams, RelayToClientMsg, PER_CLIENT_SEND_QUEUE_DEPTH,
};
use iroh_relay::server::Metrics as IrohMetrics;
use mpc_did_mediator::services::relay::{RelayService, RelayServiceConfig};
use mpc_did_mediator::{Config, Mediator};
use mpc_did_rendezvous::net::{RelayConnection, RelayIdentity};
use mpc_did_rendezvous::relay::{PeerAddr, SigningKey};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::{fmt, pct, ping_pong, summary, windowed};

const WINDOW: usize = 128 << 10;
const IN_FLIGHT: usize = 4;
/// The smallest write: one QUIC datagram as iroh relays it.
const SMALL: usize = 1200;
/// How long a transfer may go without progress before it is declared stalled.
const STALL: Duration = Duration::from_secs(10);

// Datagrams unacknowledged at once must fit iroh's per-client send queue (module docs).
const _: () = assert!(IN_FLIGHT * WINDOW.div_ceil(SMALL) < PER_CLIENT_SEND_QUEUE_DEPTH);

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

/// The iroh client's TLS configuration, only consulted for https:// relay URLs (this
/// benchmark's is http://): the process-wide rustls provider `main` installs.
fn iroh_tls() -> anyhow::Result<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .ok_or_else(|| anyhow!("no rustls crypto provider installed"))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

async fn iroh_client(url: &RelayUrl, seed: u8) -> anyhow::Result<(Client, iroh_base::EndpointId)> {
    let sk = SecretKey::from_bytes(&[seed; 32]);
    let id = sk.public();
    let c = ClientBuilder::new(url.clone(), sk, iroh_dns::dns::DnsResolver::new())
        .tls_client_config(iroh_tls()?)
        .connect()
        .await
        .context("iroh relay client connect")?;
    Ok((c, id))
}

/// Datagrams the iroh server received from clients but did not write to their recipients
/// so far (dropped at a full per-client queue, or for a gone recipient).
fn iroh_lost(m: &IrohMetrics) -> u64 {
    m.send_packets_recv
        .get()
        .saturating_sub(m.send_packets_sent.get())
}

/// Datagrams lost since `before` (an `iroh_lost` reading) once the server's counters have
/// settled: it counts a datagram as written just after the write, so the recipient may
/// already hold it; up to 1 s is allowed for that.
async fn iroh_lost_since(m: &IrohMetrics, before: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let lost = iroh_lost(m).saturating_sub(before);
        if lost == 0 || Instant::now() > deadline {
            return lost;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Next datagram payload length on an iroh client (the relay's pings are answered, other
/// relay messages skipped), or an error naming the relay's losses after `STALL` without one.
async fn iroh_next(c: &mut Client, m: &IrohMetrics) -> anyhow::Result<usize> {
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        let next = tokio::time::timeout_at(deadline, c.next())
            .await
            .map_err(|_| {
                anyhow!(
                    "iroh relay: nothing received within {} s; the relay has dropped {} datagrams so far",
                    STALL.as_secs(),
                    iroh_lost(m)
                )
            })?
            .ok_or_else(|| anyhow!("iroh relay: connection closed"))??;
        match next {
            RelayToClientMsg::Datagrams { datagrams, .. } => return Ok(datagrams.contents.len()),
            // The relay's keep-alive (every 15 s): answered as its client must.
            RelayToClientMsg::Ping(p) => c.send(ClientToRelayMsg::Pong(p)).await?,
            other => eprintln!("iroh relay: {other:?}"),
        }
    }
}

/// Two clients of iroh's relay and the server's counters.
struct IrohPair {
    a: Client,
    a_id: iroh_base::EndpointId,
    b: Client,
    b_id: iroh_base::EndpointId,
    m: Arc<IrohMetrics>,
}

impl IrohPair {
    async fn connect(url: &RelayUrl, seed: u8, m: &Arc<IrohMetrics>) -> anyhow::Result<Self> {
        let (a, a_id) = iroh_client(url, seed).await?;
        let (b, b_id) = iroh_client(url, seed.wrapping_add(1)).await?;
        Ok(Self {
            a,
            a_id,
            b,
            b_id,
            m: Arc::clone(m),
        })
    }
}

/// The windowed bulk transfer over iroh's relay: datagrams of `chunk` bytes, MiB/s. An
/// error if the relay dropped any datagram of it.
async fn iroh_windowed(p: IrohPair, total: usize, chunk: usize) -> anyhow::Result<f64> {
    let IrohPair {
        mut a,
        a_id,
        mut b,
        b_id,
        m,
    } = p;
    let lost0 = iroh_lost(&m);
    let windows = total / WINDOW;
    let t0 = Instant::now();
    let mb = Arc::clone(&m);
    let recv = tokio::spawn(async move {
        let mut got = 0usize;
        for w in 1..=windows {
            while got < w * WINDOW {
                got += iroh_next(&mut b, &mb).await?;
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
            iroh_next(&mut a, &m).await?;
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
        iroh_next(&mut a, &m).await?;
        acked += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let _b = recv.await??;
    let lost = iroh_lost_since(&m, lost0).await;
    if lost != 0 {
        return Err(anyhow!(
            "iroh relay dropped {lost} datagrams of the transfer"
        ));
    }
    Ok((windows * WINDOW) as f64 / secs / (1 << 20) as f64)
}

/// 64-byte ping-pong over iroh's relay: (p50, p99) in µs.
async fn iroh_ping(p: IrohPair, rounds: usize) -> anyhow::Result<(f64, f64)> {
    let IrohPair {
        mut a,
        a_id,
        mut b,
        b_id,
        m,
    } = p;
    let mb = Arc::clone(&m);
    let echo = tokio::spawn(async move {
        for _ in 0..rounds {
            let n = iroh_next(&mut b, &mb).await?;
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
        iroh_next(&mut a, &m).await?;
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
    let chunks = [SMALL, 16 << 10];

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
    let iroh_m = Arc::clone(&iroh.metrics().server);

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
                        let p = IrohPair::connect(&iroh_url, seed, &iroh_m).await?;
                        iroh_windowed(p, total, chunk).await?
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
                    let p = IrohPair::connect(&iroh_url, seed, &iroh_m).await?;
                    iroh_ping(p, rounds).await?
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
    let lost = iroh_lost_since(&iroh_m, 0).await;
    let (iroh_in, iroh_out) = (
        iroh_m.send_packets_recv.get(),
        iroh_m.send_packets_sent.get(),
    );
    if iroh_in == 0 || lost != 0 {
        return Err(anyhow!(
            "iroh relay: {iroh_in} datagrams received from clients, {iroh_out} written to them: the run is not lossless"
        ));
    }

    println!(
        "## Relay on loopback: ours vs iroh-relay 1.4.1\n\n{} MiB per run, acknowledged every {} KiB, ≤ {IN_FLIGHT} windows in flight; {rounds} 64-byte round trips; {reps} alternating repetitions, median (min–max); × = ratio of medians to direct TCP.\n",
        total >> 20,
        WINDOW >> 10
    );
    println!(
        "Lossless on both relays: ours dropped no frame; iroh-relay's counters: {iroh_in} datagrams received from clients, {iroh_out} written to recipients.\n"
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
        for per_chunk in &tp {
            let s = summary(&per_chunk[mi]);
            let b = summary(&per_chunk[0]).median;
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
