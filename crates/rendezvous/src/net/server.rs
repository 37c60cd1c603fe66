//! STUN Binding server on UDP and TCP (RFC 8489 §6.2.1, §6.2.2), with an
//! optional alternate address for RFC 5780 mapping tests.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::binding::answer;
use crate::source::{KeyedRate, SourceAddr, SourceCounts, RATE_KEYS_MAX};
use crate::stun::{self, MAX_MESSAGE_LEN};

/// Where to listen.
#[derive(Clone, Debug)]
pub struct StunServerConfig {
    /// Primary address A1:P1 (UDP, and TCP if `tcp`). Port 0 picks one.
    pub primary: SocketAddr,
    /// Alternate address A2:P2 (different IP and port). When set, the server
    /// also listens on A2:P1 and A2:P2 (UDP) and announces A2:P2 as
    /// OTHER-ADDRESS from the primary, so clients can classify their NAT
    /// mapping (RFC 5780 §4.3). Port 0 picks one.
    pub alternate: Option<SocketAddr>,
    /// Also answer over TCP on the primary address.
    pub tcp: bool,
    /// Most simultaneous TCP connections.
    pub max_tcp_connections: usize,
    /// Most simultaneous TCP connections from one IPv4 address or IPv6 /64, so that one
    /// client cannot hold every slot (a Binding needs one short connection).
    pub max_tcp_per_source: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// UDP answers per second to one IPv4 address or IPv6 /64 (0: unlimited). A UDP
    /// request's source address is not proven, so without this a stranger could make the
    /// server send a spoofed victim 72-byte answers for 20-byte requests at any rate
    /// (spec/rendezvous.md §8 "STUN reflection").
    pub udp_answers_per_source: u64,
    /// Answers one source may get at once before its rate applies.
    pub udp_burst_per_source: u64,
    /// UDP answers per second in all (0: unlimited): what the server sends when the
    /// requests carry many spoofed sources.
    pub udp_answers_total: u64,
}

impl StunServerConfig {
    /// UDP + TCP on `primary`, no alternate address.
    pub fn new(primary: SocketAddr) -> Self {
        StunServerConfig {
            primary,
            alternate: None,
            tcp: true,
            max_tcp_connections: 256,
            max_tcp_per_source: 8,
            tcp_idle_timeout: Duration::from_secs(30),
            udp_answers_per_source: 50,
            udp_burst_per_source: 100,
            udp_answers_total: 5_000,
        }
    }
}

/// Counters of a running server.
#[derive(Debug, Default)]
pub struct StunMetrics {
    /// Responses sent (success and error).
    pub answered: AtomicU64,
    /// Messages dropped as malformed (RFC 8489 §6.3: silently).
    pub malformed: AtomicU64,
    /// Well-formed messages that need no answer (indications, responses).
    pub ignored: AtomicU64,
    /// TCP connections accepted.
    pub tcp_accepted: AtomicU64,
    /// TCP connections refused at the limit (global or per source).
    pub tcp_refused: AtomicU64,
    /// Of those, refused at the per-source limit.
    pub tcp_refused_per_source: AtomicU64,
    /// UDP requests left unanswered because their source, or the server in all, was over
    /// its answer rate.
    pub udp_rate_limited: AtomicU64,
}

/// Open TCP connections per source (IPv4 address or IPv6 /64).
#[derive(Debug, Default)]
struct PerSource(Mutex<SourceCounts>);

/// One counted connection; uncounted when dropped.
struct SourceSlot {
    table: Arc<PerSource>,
    key: SourceAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<SourceSlot> {
        let key = SourceAddr::of(ip);
        self.0.lock().ok()?.try_add(key, max).then(|| SourceSlot {
            table: self.clone(),
            key,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = self.table.0.lock() {
            t.remove(self.key);
        }
    }
}

/// A running STUN server; stops when dropped.
#[derive(Debug)]
pub struct StunServer {
    udp: Vec<SocketAddr>,
    tcp: Option<SocketAddr>,
    other: Option<SocketAddr>,
    metrics: Arc<StunMetrics>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl StunServer {
    /// Binds every socket and starts the tasks.
    ///
    /// # Errors
    /// Binding errors (address in use, address not local, ...).
    pub async fn bind(cfg: StunServerConfig) -> std::io::Result<Self> {
        let metrics = Arc::new(StunMetrics::default());
        let (stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();

        let (sockets, listener, other) = bind_all(&cfg).await?;
        // One budget for every UDP socket: RFC 5780's tests use all three, and a source
        // must not triple its rate by spreading its requests over them.
        let budget = Arc::new(Mutex::new(AnswerBudget::new(&cfg)));
        let mut udp = Vec::new();
        for (sock, announce) in sockets {
            udp.push(sock.local_addr()?);
            tasks.spawn(udp_loop(
                sock,
                announce,
                budget.clone(),
                metrics.clone(),
                stop.subscribe(),
            ));
        }
        let mut tcp = None;
        if let Some(listener) = listener {
            tcp = Some(listener.local_addr()?);
            tasks.spawn(tcp_accept_loop(
                listener,
                cfg.clone(),
                metrics.clone(),
                stop.subscribe(),
            ));
        }
        Ok(StunServer {
            udp,
            tcp,
            other,
            metrics,
            stop,
            tasks,
        })
    }

    /// The primary UDP address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.udp.first().copied()
    }

    /// All UDP addresses (primary, then A2:P1 and A2:P2 if configured).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// The TCP address, if TCP is on.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp
    }

    /// The announced OTHER-ADDRESS (A2:P2), if configured.
    pub fn other_addr(&self) -> Option<SocketAddr> {
        self.other
    }

    /// Counters.
    pub fn metrics(&self) -> &StunMetrics {
        &self.metrics
    }

    /// The counters, shared (they outlive the server, e.g. for a metrics endpoint).
    pub fn shared_metrics(&self) -> Arc<StunMetrics> {
        self.metrics.clone()
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for StunServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.tasks.abort_all();
    }
}

/// The sockets of one server: UDP sockets with the OTHER-ADDRESS they announce, the TCP
/// listener, and the alternate address.
type Bound = (
    Vec<(UdpSocket, Option<SocketAddr>)>,
    Option<TcpListener>,
    Option<SocketAddr>,
);

/// Binds every socket of `cfg`. With an ephemeral port (port 0) the sockets that must share
/// the chosen port (TCP beside the primary UDP socket, the alternate IP's socket on the
/// primary port) can find it taken by an unrelated socket; then the whole set is bound
/// again on fresh ports, a few times, instead of failing.
async fn bind_all(cfg: &StunServerConfig) -> std::io::Result<Bound> {
    let ephemeral = cfg.primary.port() == 0 || cfg.alternate.is_some_and(|a| a.port() == 0);
    let mut attempt = 0;
    loop {
        match bind_once(cfg).await {
            Err(e) if ephemeral && e.kind() == std::io::ErrorKind::AddrInUse && attempt < 16 => {
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn bind_once(cfg: &StunServerConfig) -> std::io::Result<Bound> {
    let primary = UdpSocket::bind(cfg.primary).await?;
    let primary_addr = primary.local_addr()?;
    let mut sockets = vec![];
    let mut other = None;
    if let Some(alt) = cfg.alternate {
        let a2p2 = UdpSocket::bind(alt).await?;
        let a2p2_addr = a2p2.local_addr()?;
        let a2p1 = UdpSocket::bind(SocketAddr::new(alt.ip(), primary_addr.port())).await?;
        other = Some(a2p2_addr);
        // Only the primary announces OTHER-ADDRESS: RFC 5780 §4.3 needs it
        // from test I alone, and A1:P2 (the alternate's "other") is not bound.
        sockets.push((a2p1, None));
        sockets.push((a2p2, None));
    }
    sockets.insert(0, (primary, other));
    // TCP on the same address and port as the primary UDP socket.
    let listener = if cfg.tcp {
        Some(TcpListener::bind(primary_addr).await?)
    } else {
        None
    };
    Ok((sockets, listener, other))
}

/// How often a server that keeps refusing answers says so in the log.
const RATE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Who may get a UDP answer now: a token bucket per source and one for the whole server,
/// plus what to log about refusals (at most one line per [`RATE_LOG_EVERY`]).
struct AnswerBudget {
    per_source: KeyedRate<SourceAddr>,
    total: KeyedRate<()>,
    refused_since_log: u64,
    last_log: Option<Instant>,
}

impl AnswerBudget {
    fn new(cfg: &StunServerConfig) -> Self {
        AnswerBudget {
            per_source: KeyedRate::new(
                cfg.udp_answers_per_source,
                cfg.udp_burst_per_source,
                RATE_KEYS_MAX,
            ),
            total: KeyedRate::new(cfg.udp_answers_total, cfg.udp_answers_total, 1),
            refused_since_log: 0,
            last_log: None,
        }
    }

    /// Takes one answer for `src`; `false` (and perhaps a log line) when over a budget.
    /// The source's own bucket is checked first, so a flooding source does not spend the
    /// server's total.
    fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        let source = SourceAddr::of(src);
        if self.per_source.allow(&source, now) && self.total.allow(&(), now) {
            return true;
        }
        self.refused_since_log += 1;
        if self
            .last_log
            .is_none_or(|t| now.saturating_duration_since(t) >= RATE_LOG_EVERY)
        {
            tracing::warn!(
                source = %source,
                refused = self.refused_since_log,
                "STUN: answer rate exceeded (per source or in all); requests left unanswered"
            );
            self.refused_since_log = 0;
            self.last_log = Some(now);
        }
        false
    }
}

async fn udp_loop(
    sock: UdpSocket,
    other: Option<SocketAddr>,
    budget: Arc<Mutex<AnswerBudget>>,
    metrics: Arc<StunMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let Ok(local) = sock.local_addr() else {
        return;
    };
    // One byte more than the largest message, so an oversize datagram is
    // seen as oversize rather than silently truncated into a valid one.
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
    loop {
        let (n, src) = tokio::select! {
            _ = stop.changed() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                // ICMP errors surface here on some platforms: keep serving.
                Err(_) => continue,
            },
        };
        let Some(datagram) = buf.get(..n) else {
            continue;
        };
        match answer(datagram, src, local, other) {
            Ok(Some(reply)) => {
                let allowed = budget
                    .lock()
                    .is_ok_and(|mut b| b.allow(src.ip(), Instant::now()));
                if !allowed {
                    metrics.udp_rate_limited.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if sock.send_to(&reply, src).await.is_ok() {
                    metrics.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(None) => {
                metrics.ignored.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                metrics.malformed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn tcp_accept_loop(
    listener: TcpListener,
    cfg: StunServerConfig,
    metrics: Arc<StunMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(cfg.max_tcp_connections));
    let per_source = Arc::new(PerSource::default());
    let mut conns = JoinSet::new();
    loop {
        let (stream, src) = tokio::select! {
            _ = stop.changed() => return,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Per source first: a client at its own limit must not use up global slots.
        let Some(slot) = per_source.take(src.ip(), cfg.max_tcp_per_source) else {
            metrics.tcp_refused.fetch_add(1, Ordering::Relaxed);
            metrics
                .tcp_refused_per_source
                .fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics.tcp_refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        metrics.tcp_accepted.fetch_add(1, Ordering::Relaxed);
        let metrics = metrics.clone();
        let idle = cfg.tcp_idle_timeout;
        conns.spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let _ = tcp_conn(stream, src, idle, metrics).await;
        });
    }
}

/// Serves one TCP connection: STUN messages framed by their own length
/// field (RFC 8489 §6.2.2). A malformed message ends the connection: a
/// stream cannot be resynchronised.
async fn tcp_conn(
    mut stream: TcpStream,
    src: SocketAddr,
    idle: Duration,
    metrics: Arc<StunMetrics>,
) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let mut buf = Vec::with_capacity(MAX_MESSAGE_LEN);
    let mut chunk = [0u8; 1024];
    loop {
        // Answer every complete message already buffered.
        loop {
            let len = match stun::message_len(&buf) {
                Ok(Some(len)) if buf.len() >= len => len,
                Ok(_) => break,
                Err(_) => {
                    metrics.malformed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            };
            let msg: Vec<u8> = buf.drain(..len).collect();
            match answer(&msg, src, local, None) {
                Ok(Some(reply)) => {
                    // A client that sends but does not read fills the socket buffer; the
                    // write gets the idle deadline too, or the connection and its slots
                    // would stay taken for ever.
                    match tokio::time::timeout(idle, stream.write_all(&reply)).await {
                        Ok(r) => r?,
                        Err(_) => return Ok(()),
                    }
                    metrics.answered.fetch_add(1, Ordering::Relaxed);
                }
                Ok(None) => {
                    metrics.ignored.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    metrics.malformed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
        let n = match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()),
        };
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}
