//! One MPyC link: the first-bytes check, then bytes both ways until both sides close.

use std::collections::BTreeSet;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

use crate::{is_loopback, nodelay, PartyId, ProxyConfig, ProxyError, Transport};

/// Bytes carried by one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// From our MPyC to the peer (including the 2-byte party id).
    pub to_peer: u64,
    /// From the peer to our MPyC.
    pub to_mpyc: u64,
}

/// Our MPyC dials peer `peer` (> us) at `listener`; carry that link into `transport.open`.
pub(crate) async fn outgoing<T: Transport>(
    transport: &T,
    cfg: &ProxyConfig,
    peer: PartyId,
    listener: TcpListener,
) -> Result<Vec<(PartyId, LinkStats)>, ProxyError> {
    let err = |source| ProxyError::Link { peer, source };
    // MPyC connects once per higher peer; anything not from loopback is not our MPyC.
    let mut tcp = loop {
        let (tcp, from) = listener.accept().await.map_err(err)?;
        if is_loopback(&from) {
            break tcp;
        }
        tracing::warn!(%from, "refused a non-loopback connection to the proxy");
    };
    drop(listener);
    nodelay(&tcp);

    let announced = read_party_id(&mut tcp).await.map_err(err)?;
    if announced != cfg.me {
        return Err(ProxyError::LocalIdMismatch {
            me: cfg.me,
            announced,
        });
    }
    let mut stream = transport.open(peer).await.map_err(err)?;
    stream
        .write_all(&announced.to_le_bytes())
        .await
        .map_err(err)?;
    let (to_peer, to_mpyc) = pipe(&mut tcp, &mut stream, cfg.buffer_size)
        .await
        .map_err(err)?;
    Ok(vec![(
        peer,
        LinkStats {
            to_peer: to_peer + 2,
            to_mpyc,
        },
    )])
}

/// Accept one stream from every lower-id peer and connect each to MPyC's own listener.
pub(crate) async fn incoming_all<T: Transport>(
    transport: Arc<T>,
    cfg: Arc<ProxyConfig>,
    mpyc_port: u16,
) -> Result<Vec<(PartyId, LinkStats)>, ProxyError> {
    let mut expected: BTreeSet<PartyId> = (0..cfg.me).collect();
    let mut links: JoinSet<Result<(PartyId, LinkStats), ProxyError>> = JoinSet::new();
    let mut done = Vec::new();
    let deadline = Instant::now() + cfg.peer_timeout;

    while !expected.is_empty() {
        tokio::select! {
            accepted = timeout(deadline.saturating_duration_since(Instant::now()), transport.accept()) => {
                let (peer, stream) = match accepted {
                    Ok(Ok(a)) => a,
                    Ok(Err(source)) => return Err(ProxyError::Link { peer: cfg.me, source }),
                    Err(_) => return Err(ProxyError::Timeout {
                        what: format!("parties {expected:?} to connect"),
                        secs: cfg.peer_timeout.as_secs(),
                    }),
                };
                if !expected.remove(&peer) {
                    return Err(ProxyError::UnexpectedPeer(peer));
                }
                let cfg = Arc::clone(&cfg);
                links.spawn(async move { incoming(stream, peer, &cfg, mpyc_port).await });
            }
            Some(joined) = links.join_next() => done.push(flatten(joined)?),
        }
    }
    while let Some(joined) = links.join_next().await {
        done.push(flatten(joined)?);
    }
    Ok(done)
}

fn flatten(
    joined: Result<Result<(PartyId, LinkStats), ProxyError>, tokio::task::JoinError>,
) -> Result<(PartyId, LinkStats), ProxyError> {
    joined.map_err(|e| ProxyError::Link {
        peer: PartyId::MAX,
        source: io::Error::other(e),
    })?
}

async fn incoming<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: PartyId,
    cfg: &ProxyConfig,
    mpyc_port: u16,
) -> Result<(PartyId, LinkStats), ProxyError> {
    let err = |source| ProxyError::Link { peer, source };
    // The spoofing check: the id MPyC's dialer announces must be the id the transport
    // authenticated, or a party could take another's place in the computation.
    let announced = read_party_id(&mut stream).await.map_err(err)?;
    if announced != peer {
        return Err(ProxyError::PartyIdMismatch {
            authenticated: peer,
            announced,
        });
    }
    let mut tcp = connect_mpyc(mpyc_port, cfg.mpyc_connect_timeout).await?;
    tcp.write_all(&announced.to_le_bytes()).await.map_err(err)?;
    let (to_peer, to_mpyc) = pipe(&mut tcp, &mut stream, cfg.buffer_size)
        .await
        .map_err(err)?;
    Ok((
        peer,
        LinkStats {
            to_peer,
            to_mpyc: to_mpyc + 2,
        },
    ))
}

/// Bytes both ways until both sides have closed; returns `(mpyc→peer, peer→mpyc)`.
///
/// A failure resets MPyC's socket (RST, not FIN): MPyC treats an orderly close as the end
/// of a link and would then wait forever for the peer's next message, while a reset makes
/// it raise and exit.
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
    tcp: &mut TcpStream,
    stream: &mut S,
    buffer: usize,
) -> io::Result<(u64, u64)> {
    let result = tokio::io::copy_bidirectional_with_sizes(tcp, stream, buffer, buffer).await;
    if result.is_err() {
        // Zero linger: close() sends RST and does not block.
        let _ = tcp.set_zero_linger();
    }
    result
}

/// MPyC may not listen yet when the first peer stream arrives: retry like MPyC itself does.
async fn connect_mpyc(port: u16, limit: Duration) -> Result<TcpStream, ProxyError> {
    let deadline = Instant::now() + limit;
    loop {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            Ok(tcp) => {
                nodelay(&tcp);
                return Ok(tcp);
            }
            Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
            Err(_) => {
                return Err(ProxyError::MpycUnreachable {
                    port,
                    secs: limit.as_secs(),
                })
            }
        }
    }
}

async fn read_party_id<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<PartyId> {
    let mut id = [0u8; 2];
    r.read_exact(&mut id).await?;
    Ok(PartyId::from_le_bytes(id))
}
