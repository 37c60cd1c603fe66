//! Helpers shared by the stream-level benchmarks (`relay`, `stream`, `path_quic`).
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// 64-byte ping-pong round trips from `a` to the echoing `b`: (median, p99). `b` is a future
/// because a session stream is announced to its peer by its first frame.
pub async fn latency<A, B, F>(mut a: A, b: F, rounds: usize) -> (Duration, Duration)
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Future<Output = B> + Send + 'static,
{
    let echo = tokio::spawn(async move {
        let mut b = b.await;
        let mut buf = [0u8; 64];
        for _ in 0..rounds {
            b.read_exact(&mut buf).await.unwrap();
            b.write_all(&buf).await.unwrap();
            b.flush().await.unwrap();
        }
    });
    let mut rtts = Vec::with_capacity(rounds);
    let mut buf = [7u8; 64];
    for _ in 0..rounds {
        let t = Instant::now();
        a.write_all(&buf).await.unwrap();
        a.flush().await.unwrap();
        a.read_exact(&mut buf).await.unwrap();
        rtts.push(t.elapsed());
    }
    echo.await.unwrap();
    rtts.sort();
    let p = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize];
    (p(0.5), p(0.99))
}

/// A connected loopback TCP pair with `TCP_NODELAY`.
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (b, _) = l.accept().await.unwrap();
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// Bytes per write in the throughput runs.
pub const CHUNK: usize = 64 << 10;

/// Deterministic payload of `total` bytes in [`CHUNK`]s (chunk `k` holds a pattern of `k`),
/// and its SHA-256: every mode moves the same bytes.
pub fn pattern(total: usize) -> (Vec<Vec<u8>>, [u8; 32]) {
    let mut h = Sha256::new();
    let chunks: Vec<Vec<u8>> = (0..total / CHUNK)
        .map(|k| {
            let c: Vec<u8> = (0..CHUNK).map(|i| (k * 31 + i) as u8).collect();
            h.update(&c);
            c
        })
        .collect();
    (chunks, h.finalize().into())
}

/// MiB/s from the first write to the receiver's EOF; panics if the bytes differ. `rx` is a
/// future because a session stream is announced to the peer by its first frame.
pub async fn throughput<A, B, F>(mut tx: A, rx: F, chunks: &[Vec<u8>], digest: [u8; 32]) -> f64
where
    A: AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + Unpin + Send + 'static,
    F: Future<Output = B> + Send + 'static,
{
    let total: usize = chunks.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        let mut rx = rx.await;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0usize;
        loop {
            let k = rx.read(&mut buf).await.unwrap();
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k;
        }
        (n, <[u8; 32]>::from(h.finalize()), t0.elapsed())
    });
    for c in chunks {
        tx.write_all(c).await.unwrap();
    }
    tx.shutdown().await.unwrap();
    let (n, got, elapsed) = recv.await.unwrap();
    assert_eq!(n, total, "every byte arrives");
    assert_eq!(got, digest, "the bytes arrive intact and in order");
    total as f64 / elapsed.as_secs_f64() / (1 << 20) as f64
}

/// CPU time of this process so far (user + system, all threads), from /proc/self/stat.
pub fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime, stime are 14th, 15th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse::<u64>().ok())
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A two-worker tokio runtime: the machine's two cores, both ends of a bench in it.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
