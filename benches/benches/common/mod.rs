//! Helpers shared by the stream-level benchmarks (`relay`, `stream`).
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

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
