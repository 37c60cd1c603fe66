//! Medians, ranges and the shared measurement loops (throughput with window flow control,
//! 64-byte ping-pong).

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Repetitions per comparison: `PEERS_REPS`, at least 1, default 5.
pub fn reps() -> usize {
    std::env::var("PEERS_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize)
        .max(1)
}

/// Median, min and max of one figure over the repetitions.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summary(v: &[f64]) -> Summary {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return Summary {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Summary {
        median,
        min: s[0],
        max: s[n - 1],
    }
}

/// "median (min–max)" with `digits` decimals.
pub fn fmt(s: Summary, digits: usize) -> String {
    format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits)
}

/// Percentile of sorted values.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// 64-byte ping-pong round trips from `a` to the echoing `b`: (p50, p99) in µs.
/// `b` is a future because a session stream is announced to its peer by its first frame.
pub async fn ping_pong<A, B, F>(mut a: A, b: F, rounds: usize) -> anyhow::Result<(f64, f64)>
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: std::future::Future<Output = std::io::Result<B>> + Send + 'static,
{
    let echo = tokio::spawn(async move {
        let mut b = b.await?;
        let mut buf = [0u8; 64];
        for _ in 0..rounds {
            b.read_exact(&mut buf).await?;
            b.write_all(&buf).await?;
            b.flush().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut rtts = Vec::with_capacity(rounds);
    let mut buf = [7u8; 64];
    for _ in 0..rounds {
        let t = Instant::now();
        a.write_all(&buf).await?;
        a.flush().await?;
        tokio::time::timeout(Duration::from_secs(10), a.read_exact(&mut buf))
            .await
            .context("ping-pong: no echo within 10 s")??;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    echo.await??;
    rtts.sort_by(f64::total_cmp);
    Ok((pct(&rtts, 0.5), pct(&rtts, 0.99)))
}

/// Bulk transfer of `total` bytes in `chunk`-byte writes; the receiver acknowledges every
/// `window` bytes with one byte and the sender keeps at most `in_flight` windows
/// unacknowledged (the flow control every relay mode uses). MiB/s from the first write to
/// the last acknowledgement.
pub async fn windowed<A, B>(
    mut tx: A,
    mut rx: B,
    total: usize,
    chunk: usize,
    window: usize,
    in_flight: usize,
) -> anyhow::Result<(f64, A, B)>
where
    A: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let windows = total / window;
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        let mut buf = vec![0u8; window];
        for _ in 0..windows {
            rx.read_exact(&mut buf).await?;
            rx.write_all(&[1]).await?;
            rx.flush().await?;
        }
        Ok::<_, std::io::Error>(rx)
    });
    let data = vec![0x5au8; chunk];
    let mut acked = 0usize;
    let mut ack = [0u8; 1];
    for w in 0..windows {
        while w - acked >= in_flight {
            tokio::time::timeout(Duration::from_secs(20), tx.read_exact(&mut ack))
                .await
                .map_err(|_| anyhow!("no acknowledgement within 20 s"))??;
            acked += 1;
        }
        let mut left = window;
        while left > 0 {
            let n = left.min(chunk);
            tx.write_all(&data[..n]).await?;
            left -= n;
        }
        tx.flush().await?;
    }
    while acked < windows {
        tokio::time::timeout(Duration::from_secs(20), tx.read_exact(&mut ack))
            .await
            .map_err(|_| anyhow!("no acknowledgement within 20 s"))??;
        acked += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    let rx = recv.await??;
    Ok(((windows * window) as f64 / secs / (1 << 20) as f64, tx, rx))
}

/// Current RSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) of a process so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Bulk stream throughput: the sender writes `total` bytes in 64 KiB writes and shuts down;
/// the clock stops when the receiver reads EOF. MiB/s; an error if bytes are missing.
pub async fn stream_throughput<A, B, F>(mut tx: A, rx: F, total: usize) -> anyhow::Result<f64>
where
    A: AsyncWrite + Unpin + Send + 'static,
    B: AsyncRead + Unpin + Send + 'static,
    F: std::future::Future<Output = std::io::Result<B>> + Send + 'static,
{
    let t0 = Instant::now();
    let recv = tokio::spawn(async move {
        let mut rx = rx.await?;
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0usize;
        loop {
            let k = rx.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok::<_, std::io::Error>((n, t0.elapsed()))
    });
    let chunk = vec![0x5au8; 64 << 10];
    let mut left = total;
    while left > 0 {
        let k = left.min(chunk.len());
        tx.write_all(&chunk[..k]).await?;
        left -= k;
    }
    tx.shutdown().await?;
    let (n, elapsed) = tokio::time::timeout(Duration::from_secs(120), recv)
        .await
        .context("receiver did not reach EOF within 120 s")???;
    if n != total {
        return Err(anyhow!("received {n} of {total} bytes"));
    }
    Ok(total as f64 / elapsed.as_secs_f64() / (1 << 20) as f64)
}
