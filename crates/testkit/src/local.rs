//! Sessions between parties in one process, over loopback TCP: the real handshake and the
//! real driver, without the DIDComm round trips. For benchmarks of the data plane and for
//! tests; networked parties use the DIDComm negotiation instead (`mpc-did-connect`).

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::time::Duration;

use mpc_did_session::{Acceptor, Proposer, SessionConfig};
use tokio::net::{TcpListener, TcpStream};

use mpc_did_driver::{path, DriverConfig, SessionHandle};

fn setup_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("session setup: {e}"))
}

/// Two sessions bound to `a_did`/`b_did`, each driven by its own task, with one loopback TCP
/// path between them. Wrap the path streams with `wrap` (e.g. to count bytes).
///
/// # Errors
/// Handshake or socket errors.
pub async fn session_pair_with<W>(
    a_did: &str,
    b_did: &str,
    config: DriverConfig,
    wrap: W,
) -> io::Result<(SessionHandle, SessionHandle)>
where
    W: Fn(TcpStream) -> path::BoxPath,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let x = TcpStream::connect(listener.local_addr()?).await?;
    let (y, _) = listener.accept().await?;
    session_pair_on(a_did, b_did, config, x, y, wrap).await
}

/// As [`session_pair_with`], over a TCP connection the caller made: `x` is `a_did`'s end,
/// `y` is `b_did`'s (for example the two ends of a connection between two network
/// namespaces, to run the data plane over an emulated Internet path). Sets `TCP_NODELAY`.
///
/// # Errors
/// Handshake or socket errors.
pub async fn session_pair_on<W>(
    a_did: &str,
    b_did: &str,
    config: DriverConfig,
    x: TcpStream,
    y: TcpStream,
    wrap: W,
) -> io::Result<(SessionHandle, SessionHandle)>
where
    W: Fn(TcpStream) -> path::BoxPath,
{
    x.set_nodelay(true)?;
    y.set_nodelay(true)?;
    session_pair_over(a_did, b_did, config, wrap(x), wrap(y)).await
}

/// As [`session_pair_on`], over any pair of connected byte streams (e.g. the two ends of a
/// QUIC stream): `x` is `a_did`'s end, `y` is `b_did`'s.
///
/// # Errors
/// Handshake or stream errors.
pub async fn session_pair_over(
    a_did: &str,
    b_did: &str,
    config: DriverConfig,
    mut x: path::BoxPath,
    mut y: path::BoxPath,
) -> io::Result<(SessionHandle, SessionHandle)> {
    let roster = [0u8; 32];
    let mut sid = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut sid);
    let (p, propose) = Proposer::new(sid, "local", roster, a_did, b_did);
    let (acc, accept) =
        Acceptor::on_propose(&propose, "local", roster, b_did, a_did).map_err(setup_err)?;
    let (a, hs) = p
        .on_accept(&accept, SessionConfig::default(), 0)
        .map_err(setup_err)?;
    let b = acc
        .on_handshake(&hs, SessionConfig::default(), 0)
        .map_err(setup_err)?;
    let (ha, hb) = (
        SessionHandle::spawn(a, config.clone()),
        SessionHandle::spawn(b, config),
    );
    path::send_hello(&mut x, &ha.path_id()).await?;
    path::read_hello(&mut y, Duration::from_secs(5))
        .await
        .map_err(setup_err)?;
    ha.attach_path(x).await?;
    hb.attach_path(y).await?;
    Ok((ha, hb))
}

/// Sessions between every pair of `n` parties; entry `i` maps each peer's id to party
/// `i`'s session with it.
///
/// # Errors
/// As [`session_pair_with`].
pub async fn local_mesh<W>(n: u16, wrap: W) -> io::Result<Vec<BTreeMap<u16, SessionHandle>>>
where
    W: Fn(TcpStream) -> path::BoxPath,
{
    let mut maps: Vec<BTreeMap<u16, SessionHandle>> = (0..n).map(|_| BTreeMap::new()).collect();
    for i in 0..n {
        for j in i + 1..n {
            let (hi, hj) = session_pair_with(
                &format!("did:example:party{i}"),
                &format!("did:example:party{j}"),
                DriverConfig::default(),
                &wrap,
            )
            .await?;
            if let Some(m) = maps.get_mut(usize::from(i)) {
                m.insert(j, hi);
            }
            if let Some(m) = maps.get_mut(usize::from(j)) {
                m.insert(i, hj);
            }
        }
    }
    Ok(maps)
}
