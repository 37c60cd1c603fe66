//! QUIC over the punched UDP socket (spec/rendezvous.md §6.1), on quinn.
//!
//! ```text
//!  UdpSocket ─STUN (gathering)─▶ srflx candidate
//!      │ into quinn::Endpoint (server + client config)      dup fd ─▶ punch datagrams
//!      ▼
//!  controlling: connect(remote) ─▶ open_bi ─▶ QuicPath (AsyncRead + AsyncWrite)
//!  controlled:  accept()        ─▶ accept_bi ─▶ QuicPath
//! ```
//!
//! TLS: each endpoint uses a fresh self-signed certificate and accepts any
//! certificate from the peer. That is deliberate: the path only has to be a
//! reliable pipe; the peer is authenticated by the Noise KK handshake carried
//! inside it, bound to both DIDs (spec/session.md), exactly as over plain TCP
//! or the relay. QUIC brings retransmission and congestion control; we write
//! neither.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::NetError;

/// ALPN of mpc-did paths over QUIC.
pub const ALPN: &[u8] = b"mpc-did-path/1";
/// Server name used in the (unchecked) certificate.
const SERVER_NAME: &str = "mpc-did";

fn quic_err(e: impl std::fmt::Display) -> NetError {
    NetError::Quic(e.to_string())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any server certificate (see the module docs for why), but still
/// checks the handshake signature against the presented certificate's key.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Bytes a peer may send on one stream ahead of our reads (one stream carries a session).
const STREAM_WINDOW: u32 = 8 << 20;

/// Connection-level window of an incoming connection until [`open_windows`]: a stranger's
/// connection that has not named a session may make us buffer this much, not 16 MiB.
const PENDING_WINDOW: u32 = 64 << 10;

/// Incoming connection attempts quinn queues for the application (its default: 65,536).
const MAX_INCOMING: usize = 256;

/// Streams a peer may have open at once on one connection: a path is one stream.
const MAX_PEER_STREAMS: u32 = 2;

/// Grant a connection the full windows of spec/rendezvous.md §6.1 (16 MiB per connection,
/// 8 MiB per stream): for an incoming connection once it carries a live session's path;
/// until then its window is 64 KiB (connections we dial have the full windows at once).
pub fn open_windows(conn: &quinn::Connection) {
    conn.set_receive_window(quinn::VarInt::from_u32(2 * STREAM_WINDOW));
}

/// `incoming`: the settings of connections peers open to us (small connection window until
/// [`open_windows`]).
fn transport(incoming: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // A path is one bidirectional stream (a peer's re-dial is a new connection): quinn's 100
    // concurrent streams per connection, each waiting for its hello, only serve strangers.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_PEER_STREAMS));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    // NAT bindings for UDP often expire after 30 s: keep them warm.
    t.keep_alive_interval(Some(Duration::from_secs(5)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(Duration::from_secs(30)) {
        t.max_idle_timeout(Some(idle));
    }
    // A lower first RTT guess retransmits a lost (not yet punched) Initial sooner.
    t.initial_rtt(Duration::from_millis(100));
    // Flow-control windows sized for paths across regions (spec/rendezvous.md §6.1 "Windows"):
    // quinn's defaults (1.25 MB per stream, sized for 100 Mbit/s at 100 ms) kept an 8 MiB
    // message at 70 ms RTT at 1.31× TCP's time; 8 MiB per stream, like Linux's default
    // receive-buffer ceiling for TCP (`tcp_rmem` max 6 MiB), brings it to TCP's.
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(quinn::VarInt::from_u32(if incoming {
        PENDING_WINDOW
    } else {
        2 * STREAM_WINDOW
    }));
    t.send_window(2 * u64::from(STREAM_WINDOW));
    t.congestion_controller_factory(Arc::new(PunchedPathCubic::default()));
    Arc::new(t)
}

/// quinn's CUBIC, except that losing what was sent before the path carried anything is not
/// read as congestion (spec/rendezvous.md §6.1 "Congestion control").
///
/// On a punched path the first datagrams are expected to be lost: the proposer's first
/// Initial may reach the acceptor's NAT before the acceptor's punch opened it. quinn counts
/// that loss as a congestion event like any other, in any packet number space (as RFC 9002's
/// pseudocode does, Appendix B); CUBIC then leaves slow start with 0.7 × its initial window of
/// 14,720 bytes and regrows it slowly — so slowly between MPyC's rounds (application-limited: no growth)
/// that MB-sized messages across 70 ms took 3.9× plain TCP's time (README, regions bench). A
/// TCP SYN lost the same way costs TCP only its initial window (RFC 5681 §3.1), not slow start.
#[derive(Debug, Default)]
pub struct PunchedPathCubic {
    cubic: quinn::congestion::CubicConfig,
}

impl quinn::congestion::ControllerFactory for PunchedPathCubic {
    fn build(
        self: Arc<Self>,
        now: std::time::Instant,
        current_mtu: u16,
    ) -> Box<dyn quinn::congestion::Controller> {
        let cubic = Arc::new(self.cubic.clone()).build(now, current_mtu);
        Box::new(PunchedPathController {
            cubic,
            first_ack: None,
            losses_ignored: 0,
        })
    }
}

/// The controller [`PunchedPathCubic`] builds: CUBIC plus the instant of the first
/// acknowledgement.
struct PunchedPathController {
    cubic: Box<dyn quinn::congestion::Controller>,
    /// When the path first delivered a packet (the first acknowledgement arrived).
    first_ack: Option<std::time::Instant>,
    /// Congestion events not passed on to CUBIC (quinn's `congestion_events` counts them).
    losses_ignored: u64,
}

impl quinn::congestion::Controller for PunchedPathController {
    fn on_sent(&mut self, now: std::time::Instant, bytes: u64, last_packet_number: u64) {
        self.cubic.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.first_ack.get_or_insert(now);
        self.cubic.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: std::time::Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.cubic
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: std::time::Instant,
        sent: std::time::Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        // Sent while the path was unproven: lost to NAT traversal, not to a full queue.
        if self.first_ack.is_none_or(|first| sent < first) {
            tracing::debug!(lost_bytes, "loss before the path opened: not congestion");
            self.losses_ignored += 1;
            return;
        }
        self.cubic
            .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.cubic.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.cubic.window()
    }

    fn metrics(&self) -> quinn::congestion::ControllerMetrics {
        self.cubic.metrics()
    }

    fn clone_box(&self) -> Box<dyn quinn::congestion::Controller> {
        Box::new(PunchedPathController {
            cubic: self.cubic.clone_box(),
            first_ack: self.first_ack,
            losses_ignored: self.losses_ignored,
        })
    }

    fn initial_window(&self) -> u64 {
        self.cubic.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

fn configs() -> Result<(quinn::ServerConfig, quinn::ClientConfig), NetError> {
    let cert =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).map_err(quic_err)?;
    let cert_der = cert.cert.der().clone();
    let key_der = PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der());
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(quic_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der.into())
        .map_err(quic_err)?;
    server.alpn_protocols = vec![ALPN.to_vec()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        QuicServerConfig::try_from(server).map_err(quic_err)?,
    ));
    server.transport_config(transport(true));
    // Attempts beyond these are refused by quinn before the application sees them; the
    // application bounds the rest per source and in all (spec/rendezvous.md §6.1
    // "Accepting"). No 0-RTT: an attempt buffers little before it is accepted.
    server.max_incoming(MAX_INCOMING);
    server.incoming_buffer_size(64 << 10);
    server.incoming_buffer_size_total(4 << 20);

    let mut client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(quic_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let mut client = quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(client).map_err(quic_err)?,
    ));
    client.transport_config(transport(false));
    Ok((server, client))
}

/// A quinn endpoint on a socket that was used for STUN first, plus a
/// duplicate of the socket for punch datagrams (same local port, so the
/// NAT mapping is the one advertised).
#[derive(Debug, Clone)]
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    punch: Arc<tokio::net::UdpSocket>,
    local: SocketAddr,
}

impl QuicEndpoint {
    /// Takes over `socket` (after STUN gathering on it).
    ///
    /// # Errors
    /// [`NetError::Quic`] for TLS/endpoint setup, [`NetError::Io`].
    pub fn new(socket: tokio::net::UdpSocket) -> Result<Self, NetError> {
        let std = socket.into_std()?;
        let local = std.local_addr()?;
        let dup = tokio::net::UdpSocket::from_std(std.try_clone()?)?;
        let (server, client) = configs()?;
        let mut endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            std,
            Arc::new(quinn::TokioRuntime),
        )?;
        endpoint.set_default_client_config(client);
        Ok(QuicEndpoint {
            endpoint,
            punch: Arc::new(dup),
            local,
        })
    }

    /// The local socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Sends one punch datagram (a STUN Binding request with FINGERPRINT,
    /// which the peer's QUIC stack discards) to `to`, opening our NAT
    /// mapping towards it.
    ///
    /// # Errors
    /// Socket errors.
    pub async fn punch(&self, to: SocketAddr) -> Result<(), NetError> {
        let tx = crate::binding::BindingTransaction::new(
            crate::binding::RetransmitSchedule::default(),
            std::time::Instant::now(),
        )?;
        match self.punch.send_to(tx.request(), to).await {
            Ok(_) => Ok(()),
            // Unreachable candidates are expected; they just fail their check.
            Err(e) if e.kind() != io::ErrorKind::PermissionDenied => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens a QUIC connection to `to` (controlling side).
    ///
    /// # Errors
    /// [`NetError::Quic`] if the handshake fails or times out.
    pub async fn connect(&self, to: SocketAddr) -> Result<quinn::Connection, NetError> {
        self.endpoint
            .connect(to, SERVER_NAME)
            .map_err(quic_err)?
            .await
            .map_err(quic_err)
    }

    /// The next incoming QUIC connection (controlled side), handshake completed.
    ///
    /// One at a time: a server that takes connections from many peers uses
    /// [`Self::incoming`] and completes each handshake on its own task instead, so that
    /// one stalled or aborted handshake neither delays nor ends the others.
    ///
    /// # Errors
    /// [`NetError::Quic`] if the endpoint closed or the handshake failed.
    pub async fn accept(&self) -> Result<quinn::Connection, NetError> {
        let conn = self.incoming().await?.await.map_err(quic_err)?;
        // One at a time is for peers the caller trusts (tests, benchmarks): full windows.
        open_windows(&conn);
        Ok(conn)
    }

    /// The next incoming connection attempt, before its handshake: await it for the
    /// connection (whose window stays small until [`open_windows`]), or refuse it. Its failure (a peer that aborts or goes silent mid-handshake, e.g. a
    /// check that lost the race to another candidate) concerns that attempt only.
    ///
    /// # Errors
    /// [`NetError::Quic`] once the endpoint is closed.
    pub async fn incoming(&self) -> Result<quinn::Incoming, NetError> {
        self.endpoint
            .accept()
            .await
            .ok_or_else(|| NetError::Quic("endpoint closed".into()))
    }

    /// Closes every connection of the endpoint.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"closed");
    }
}

/// A bidirectional QUIC stream as a session path. Holds its connection
/// (and thereby the endpoint) open while it lives.
///
/// Shutting it down finishes the send stream and completes once the peer acknowledged every
/// byte written (or stopped the stream, or the connection ended): closing the endpoint right
/// after a plain `finish` would discard data still in flight — the session's CLOSE record —
/// and the peer would see a lost path instead of the close (spec/session.md §9).
pub struct QuicPath {
    recv: quinn::RecvStream,
    send: quinn::SendStream,
    conn: quinn::Connection,
    /// Set by the first `poll_shutdown`: resolves when the peer acknowledged everything.
    acked: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl std::fmt::Debug for QuicPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicPath")
            .field("remote", &self.conn.remote_address())
            .finish_non_exhaustive()
    }
}

impl QuicPath {
    /// Wraps an open stream pair of `conn`.
    pub fn new(conn: quinn::Connection, send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        QuicPath {
            recv,
            send,
            conn,
            acked: None,
        }
    }

    /// The peer's address as seen on this connection.
    pub fn remote_address(&self) -> SocketAddr {
        self.conn.remote_address()
    }

    /// The connection's statistics (packets lost, congestion window, path MTU, …): for
    /// benchmarks and diagnostics.
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// The connection's current RTT estimate.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// Of quinn's `congestion_events` ([`Self::stats`]), how many [`PunchedPathCubic`] did
    /// not apply ([`losses_ignored`]).
    pub fn losses_ignored(&self) -> u64 {
        losses_ignored(&self.conn)
    }
}

/// Of `conn`'s `congestion_events` (quinn counts every one), how many [`PunchedPathCubic`]
/// did not apply: losses of what was sent before the path opened. 0 under another controller.
pub fn losses_ignored(conn: &quinn::Connection) -> u64 {
    conn.congestion_state()
        .into_any()
        .downcast::<PunchedPathController>()
        .map_or(0, |c| c.losses_ignored)
}

/// One debug line per path when it goes: what QUIC's loss recovery and congestion control did
/// on it (`RUST_LOG=mpc_did_rendezvous=debug`), so a slow punched path can be told apart
/// from a slow peer without a packet capture.
impl Drop for QuicPath {
    fn drop(&mut self) {
        let s = self.conn.stats();
        tracing::debug!(
            remote = %self.conn.remote_address(),
            rtt_ms = s.path.rtt.as_secs_f64() * 1e3,
            cwnd = s.path.cwnd,
            mtu = s.path.current_mtu,
            sent_packets = s.path.sent_packets,
            lost_packets = s.path.lost_packets,
            lost_bytes = s.path.lost_bytes,
            congestion_events = s.path.congestion_events,
            of_which_ignored = self.losses_ignored(),
            sent_bytes = s.udp_tx.bytes,
            received_bytes = s.udp_rx.bytes,
            "QUIC path closed"
        );
    }
}

impl AsyncRead for QuicPath {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for QuicPath {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.send)
            .poll_write(cx, buf)
            .map_err(io::Error::from)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.send).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.acked.is_none() {
            // Already finished or reset: there is nothing more to deliver, `stopped` says so.
            let _ = self.send.finish();
            let stopped = self.send.stopped();
            self.acked = Some(Box::pin(async move {
                let _ = stopped.await;
            }));
        }
        match self.acked.as_mut() {
            Some(acked) => acked.as_mut().poll(cx).map(Ok),
            None => Poll::Ready(Ok(())),
        }
    }
}
