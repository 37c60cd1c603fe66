//! One MPyC link: the first-bytes check, then bytes both ways until both sides close.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

use crate::{LinkDir, PartyId, ProxyConfig, ProxyError, Transport};

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
    listener: UnixListener,
    dir: &LinkDir,
) -> Result<Vec<(PartyId, LinkStats)>, ProxyError> {
    let err = |source| ProxyError::Link { peer, source };
    // The socket lives in a 0700 directory, so only our user can connect; the credential
    // check is a second lock (spec/security.md §10). MPyC connects once per higher peer.
    let mut sock = loop {
        let (sock, _) = listener.accept().await.map_err(err)?;
        if same_user(&sock) {
            break sock;
        }
    };
    drop(listener);
    let _ = std::fs::remove_file(dir.link_path(peer));

    let announced = read_party_id(&mut sock).await.map_err(err)?;
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
    let (to_peer, to_mpyc) = pipe(&mut sock, &mut stream, cfg.buffer_size)
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
    mpyc_socket: PathBuf,
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
                let (cfg, socket) = (Arc::clone(&cfg), mpyc_socket.clone());
                links.spawn(async move { incoming(stream, peer, &cfg, &socket).await });
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
    mpyc_socket: &Path,
) -> Result<(PartyId, LinkStats), ProxyError> {
    let err = |source| ProxyError::Link { peer, source };
    // The spoofing check: the id MPyC's dialer announces must be the id the transport
    // authenticated, or a party could take another's place in the computation.
    // Bounded like the wait for the stream itself: a peer that opens its stream and never
    // sends the id would otherwise keep `incoming_all` waiting for ever.
    let announced = match timeout(cfg.peer_timeout, read_party_id(&mut stream)).await {
        Ok(r) => r.map_err(err)?,
        Err(_) => {
            return Err(ProxyError::Timeout {
                what: format!("party {peer} to announce its id"),
                secs: cfg.peer_timeout.as_secs(),
            })
        }
    };
    if announced != peer {
        return Err(ProxyError::PartyIdMismatch {
            authenticated: peer,
            announced,
        });
    }
    let mut sock = connect_mpyc(mpyc_socket, cfg.mpyc_connect_timeout).await?;
    sock.write_all(&announced.to_le_bytes())
        .await
        .map_err(err)?;
    let (to_peer, to_mpyc) = pipe(&mut sock, &mut stream, cfg.buffer_size)
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
/// Like `tokio::io::copy_bidirectional`, with one difference on the way to MPyC: every
/// chunk the stream has ready is gathered into the buffer before one write to MPyC's
/// socket (a session stream yields one chunk per record), so a burst of records costs one
/// `write` here and one `data_received` in MPyC's Python instead of one each. The way from
/// MPyC is one read, one stream write (one session record), as before.
async fn pipe<S: AsyncRead + AsyncWrite + Unpin>(
    mpyc: &mut UnixStream,
    stream: &mut S,
    buffer: usize,
) -> io::Result<(u64, u64)> {
    // A Unix stream has no RST: after an error MPyC may see an orderly EOF and wait for
    // its peer forever, so the launcher stops the program whenever the proxy fails
    // (`launch::run_program`).
    let mut to_peer = Half::new(buffer, false);
    let mut to_mpyc = Half::new(buffer, true);
    let (mut up, mut down) = (None, None);
    std::future::poll_fn(|cx| {
        if up.is_none() {
            if let Poll::Ready(r) = to_peer.poll_copy(cx, &mut *mpyc, &mut *stream) {
                up = Some(r?);
            }
        }
        if down.is_none() {
            if let Poll::Ready(r) = to_mpyc.poll_copy(cx, &mut *stream, &mut *mpyc) {
                down = Some(r?);
            }
        }
        match (up, down) {
            (Some(u), Some(d)) => Poll::Ready(Ok((u, d))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of [`pipe`]: a fixed buffer, filled by reads and drained by writes.
struct Half {
    buf: Box<[u8]>,
    /// `buf[start..end]` is read and not yet written.
    start: usize,
    end: usize,
    /// Keep reading while the reader has more ready before writing (see [`pipe`]).
    gather: bool,
    /// The reader reported EOF.
    eof: bool,
    /// Bytes were written since the writer's last flush.
    unflushed: bool,
    /// Bytes written so far.
    copied: u64,
}

impl Half {
    fn new(size: usize, gather: bool) -> Self {
        Self {
            buf: vec![0; size.max(1)].into_boxed_slice(),
            start: 0,
            end: 0,
            gather,
            eof: false,
            unflushed: false,
            copied: 0,
        }
    }

    /// Copy until the reader's EOF has been passed on as the writer's shutdown; returns the
    /// bytes copied.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.start == self.end && !self.eof {
                self.start = 0;
                self.end = 0;
                // The first read waits; with `gather`, further reads take only what is
                // ready now.
                while let Some(free) = self.buf.get_mut(self.end..).filter(|f| !f.is_empty()) {
                    let mut rb = ReadBuf::new(free);
                    match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
                        Poll::Ready(Ok(())) if rb.filled().is_empty() => self.eof = true,
                        Poll::Ready(Ok(())) => self.end += rb.filled().len(),
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending if self.end == 0 => {
                            // Nothing more to send for now: let a buffering writer send
                            // what it holds (as `copy_bidirectional` does).
                            if self.unflushed {
                                ready!(Pin::new(&mut *writer).poll_flush(cx))?;
                                self.unflushed = false;
                            }
                            return Poll::Pending;
                        }
                        Poll::Pending => break,
                    }
                    if self.eof || !self.gather {
                        break;
                    }
                }
            }
            while self.start < self.end {
                let chunk = self.buf.get(self.start..self.end).unwrap_or_default();
                let n = ready!(Pin::new(&mut *writer).poll_write(cx, chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the link's other side accepts no more bytes",
                    )));
                }
                self.start += n;
                self.copied += n as u64;
                self.unflushed = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *writer).poll_shutdown(cx))?;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }
}

/// Whether the process at the other end of `sock` runs as our user; refusals are logged.
fn same_user(sock: &UnixStream) -> bool {
    let me = rustix::process::geteuid().as_raw();
    match sock.peer_cred() {
        Ok(cred) if cred.uid() == me => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = ?cred.pid(),
                "refused a link connection from another user"
            );
            false
        }
        Err(e) => {
            tracing::warn!("refused a link connection whose peer is unknown: {e}");
            false
        }
    }
}

/// MPyC may not listen yet when the first peer stream arrives: retry like MPyC itself does.
async fn connect_mpyc(socket: &Path, limit: Duration) -> Result<UnixStream, ProxyError> {
    let deadline = Instant::now() + limit;
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) if same_user(&s) => return Ok(s),
            Ok(_) | Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(50)).await,
            Ok(_) | Err(_) => {
                return Err(ProxyError::MpycUnreachable {
                    socket: socket.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Audit L3: a peer whose stream is open but silent used to keep `incoming` waiting for
    /// its 2-byte id for ever; it now fails with a typed timeout after `peer_timeout`.
    #[tokio::test]
    async fn a_silent_peer_times_out_with_a_typed_error() {
        let mut cfg = ProxyConfig::new(2, 1);
        cfg.peer_timeout = Duration::from_millis(200);
        let (ours, _theirs) = tokio::io::duplex(64);
        let r = timeout(
            Duration::from_secs(10),
            incoming(ours, 0, &cfg, Path::new("/nonexistent/mpyc.sock")),
        )
        .await
        .expect("incoming still waits for the id of a silent peer after 10 s");
        assert!(matches!(r, Err(ProxyError::Timeout { .. })), "{r:?}");
    }

    /// A reader with every chunk ready at once, one chunk per read (as a session stream
    /// yields one record per read), then EOF.
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(c) = self.0.pop_front() {
                buf.put_slice(&c);
            }
            Poll::Ready(Ok(()))
        }
    }

    /// A writer that records every write call, flush and shutdown.
    #[derive(Default)]
    struct Writes {
        calls: Vec<Vec<u8>>,
        flushes: usize,
        shut: bool,
    }

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.calls.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut = true;
            Poll::Ready(Ok(()))
        }
    }

    fn copy(gather: bool, buffer: usize, chunks: &[&[u8]]) -> (Writes, u64) {
        let mut reader = Chunks(chunks.iter().map(|c| c.to_vec()).collect());
        let mut writer = Writes::default();
        let mut half = Half::new(buffer, gather);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Ok(n)) = half.poll_copy(&mut cx, &mut reader, &mut writer) else {
            panic!("a copy with every chunk ready must finish in one poll");
        };
        (writer, n)
    }

    /// Towards MPyC, ready records go out in one write (fewer syscalls and fewer
    /// `data_received` calls in MPyC), in order, and EOF becomes a shutdown.
    #[test]
    fn ready_chunks_are_gathered_into_one_write() {
        let (w, n) = copy(true, 1024, &[b"ab", b"cde", b"f"]);
        assert_eq!(w.calls, vec![b"abcdef".to_vec()]);
        assert_eq!(n, 6);
        assert!(w.shut);
    }

    /// Gathering stops at the buffer's size: the rest follows in order.
    #[test]
    fn gathering_is_bounded_by_the_buffer() {
        let (w, n) = copy(true, 4, &[b"ab", b"cd", b"ef"]);
        assert_eq!(w.calls, vec![b"abcd".to_vec(), b"ef".to_vec()]);
        assert_eq!(n, 6);
    }

    /// Towards the peer, one read is one write (one session record per read).
    #[test]
    fn without_gather_each_read_is_one_write() {
        let (w, _) = copy(false, 1024, &[b"ab", b"cde"]);
        assert_eq!(w.calls, vec![b"ab".to_vec(), b"cde".to_vec()]);
        assert!(w.shut);
    }

    /// A reader that has one chunk ready and then nothing yet (not EOF).
    struct OneThenWait(Option<Vec<u8>>);

    impl AsyncRead for OneThenWait {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.take() {
                Some(c) => {
                    buf.put_slice(&c);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Pending,
            }
        }
    }

    /// When the reader has nothing more for now, what was written is flushed once, so a
    /// transport whose stream buffers still sends it.
    #[test]
    fn written_bytes_are_flushed_when_the_reader_waits() {
        let mut reader = OneThenWait(Some(b"abc".to_vec()));
        let mut writer = Writes::default();
        let mut half = Half::new(1024, true);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(half
            .poll_copy(&mut cx, &mut reader, &mut writer)
            .is_pending());
        assert!(half
            .poll_copy(&mut cx, &mut reader, &mut writer)
            .is_pending());
        assert_eq!(writer.calls, vec![b"abc".to_vec()]);
        assert_eq!(writer.flushes, 1);
        assert!(!writer.shut);
    }
}
