//! WebSocket client connections over plain TCP (`ws://`) or TLS (`wss://`), for the relay
//! client and any other WebSocket user in the workspace (spec/rendezvous.md §4.4).
//!
//! TLS is rustls with its ring provider (the provider the rest of the tree already uses);
//! server certificates are checked against the Mozilla roots (webpki-roots) plus any extra
//! roots the caller passes (a private CA, a test certificate) and the process's
//! (`mpc_did_resolver::trust`, set by `mpc-did --ca-cert`). Relay payloads are Noise
//! records either way; TLS hides the relay's own framing and lets the relay sit behind the
//! same TLS reverse proxy as the mediator.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::WebSocketStream;

use super::NetError;

/// A byte stream a WebSocket runs over: plain TCP or TLS over TCP.
pub trait WsIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> WsIo for T {}

/// Bytes of frames a relay WebSocket writer buffers before it writes them (a flush writes
/// the rest); used by the relay client and the mediator's relay endpoint.
pub const WS_WRITE_BUFFER: usize = 1 << 20;
/// Most bytes one read of a relay WebSocket takes from its socket.
pub const WS_READ_BUFFER: usize = 256 << 10;

/// How long opening a WebSocket (TCP connect, TLS, upgrade) may take in [`connect`] and
/// [`connect_negotiated`]: an address that drops SYNs would otherwise take the OS's ~127 s,
/// and one that accepts TCP and then says nothing would hang for ever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on the socket: first probe after this much silence, then one per
/// [`TCP_KEEPALIVE_INTERVAL`], so that the kernel notices a peer that vanished (a NAT
/// mapping expired, a host rebooted hard) even when the application sends nothing.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// See [`TCP_KEEPALIVE_IDLE`].
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A client WebSocket over [`WsIo`].
pub type WsStream = WebSocketStream<Box<dyn WsIo>>;

/// Opens the WebSocket `request` names (`ws://` or `wss://`, host, port, path; extra headers
/// such as `Sec-WebSocket-Protocol` are sent as given), with `TCP_NODELAY` and TCP keepalive
/// set, within [`CONNECT_TIMEOUT`]. The server's messages (and frames) may be at most
/// `max_message` bytes: each use names what its server can legitimately send (the relay
/// client one relay frame, the mediator client one delivery batch), so that a server
/// cannot make the connection buffer tungstenite's default 64 MiB; a longer one ends the
/// stream with a capacity error ("Message too long").
///
/// # Errors
/// [`NetError::WebSocket`] for a URL that is not `ws://`/`wss://` or has no host, an extra
/// root that is not a certificate, a TLS failure (unknown issuer, wrong name) or a refused
/// upgrade; [`NetError::Io`] when the TCP connection fails; [`NetError::TimedOut`] when
/// the whole opening took longer than [`CONNECT_TIMEOUT`].
pub async fn connect(
    request: Request,
    extra_roots: &[Vec<u8>],
    max_message: usize,
) -> Result<WsStream, NetError> {
    connect_within(request, extra_roots, max_message, CONNECT_TIMEOUT).await
}

/// As [`connect`], giving up after `limit` instead of [`CONNECT_TIMEOUT`].
///
/// # Errors
/// As [`connect`]; [`NetError::TimedOut`] after `limit`.
pub async fn connect_within(
    request: Request,
    extra_roots: &[Vec<u8>],
    max_message: usize,
    limit: Duration,
) -> Result<WsStream, NetError> {
    connect_negotiated_within(request, extra_roots, max_message, limit)
        .await
        .map(|(ws, _)| ws)
}

/// As [`connect`], also returning the subprotocol the server chose
/// (`Sec-WebSocket-Protocol` of its answer), if any.
///
/// # Errors
/// As [`connect`].
pub async fn connect_negotiated(
    request: Request,
    extra_roots: &[Vec<u8>],
    max_message: usize,
) -> Result<(WsStream, Option<String>), NetError> {
    connect_negotiated_within(request, extra_roots, max_message, CONNECT_TIMEOUT).await
}

/// As [`connect_negotiated`], giving up after `limit`.
///
/// # Errors
/// As [`connect_within`].
pub async fn connect_negotiated_within(
    request: Request,
    extra_roots: &[Vec<u8>],
    max_message: usize,
    limit: Duration,
) -> Result<(WsStream, Option<String>), NetError> {
    tokio::time::timeout(limit, open(request, extra_roots, max_message))
        .await
        .map_err(|_| NetError::TimedOut)?
}

async fn open(
    request: Request,
    extra_roots: &[Vec<u8>],
    max_message: usize,
) -> Result<(WsStream, Option<String>), NetError> {
    let uri = request.uri().clone();
    let tls = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        other => {
            return Err(NetError::WebSocket(format!(
                "{uri}: not a WebSocket URL (scheme {other:?}; use ws:// or wss://)"
            )))
        }
    };
    let host = uri
        .host()
        .ok_or_else(|| NetError::WebSocket(format!("{uri}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL);
    socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive)?;
    let io: Box<dyn WsIo> = if tls {
        Box::new(tls_connect(tcp, &host, extra_roots).await?)
    } else {
        Box::new(tcp)
    };
    // Frames are buffered until a batch is flushed (one write per batch, not one per
    // 128 KiB): each write on a socket wakes its reader, and wake-ups, not copies, are what
    // a relayed byte costs most (spec/rendezvous.md §7.3).
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .write_buffer_size(WS_WRITE_BUFFER)
        .read_buffer_size(WS_READ_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
        .await
        .map_err(|e| NetError::WebSocket(e.to_string()))?;
    let protocol = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((ws, protocol))
}

async fn tls_connect(
    tcp: TcpStream,
    host: &str,
    extra_roots: &[Vec<u8>],
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // The process's extra roots (`mpc-did --ca-cert`) as well as the caller's.
    for der in mpc_did_resolver::trust::extra_roots()
        .iter()
        .chain(extra_roots)
    {
        roots
            .add(rustls::pki_types::CertificateDer::from(der.clone()))
            .map_err(|e| NetError::WebSocket(format!("extra TLS root: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| NetError::WebSocket(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| NetError::WebSocket(format!("TLS server name {host}: {e}")))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| NetError::WebSocket(format!("TLS with {host}: {e}")))
}
