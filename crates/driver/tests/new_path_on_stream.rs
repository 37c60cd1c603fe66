//! spec/session.md §7.3: on a relay every path between two parties arrives
//! on the same byte stream at the acceptor, so a new path is recognised by its path hello at
//! a record boundary of the stream already attached, not by a new connection.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

mod common;

use common::handles;
use mpc_did_driver::{path, DriverConfig, SessionState};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

/// A relay in miniature: one stream on the acceptor's side (`far`), and whichever stream
/// the opener currently uses; a switch writes `prefix` (the new hello) to `far` first, as the
/// relay delivers the new stream's first bytes on the acceptor's existing stream.
fn relay(mut far: DuplexStream, first: DuplexStream) -> mpsc::Sender<(DuplexStream, Vec<u8>)> {
    let (tx, mut rx) = mpsc::channel::<(DuplexStream, Vec<u8>)>(1);
    tokio::spawn(async move {
        let mut near = first;
        let (mut b1, mut b2) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
        loop {
            tokio::select! {
                n = near.read(&mut b1) => match n {
                    Ok(0) | Err(_) => {
                        // The opener dropped this stream: wait for its next one.
                        let Some((next, prefix)) = rx.recv().await else { return };
                        far.write_all(&prefix).await.unwrap();
                        near = next;
                    }
                    Ok(n) => far.write_all(&b1[..n]).await.unwrap(),
                },
                n = far.read(&mut b2) => match n {
                    Ok(0) | Err(_) => return,
                    Ok(n) => { let _ = near.write_all(&b2[..n]).await; }
                },
                next = rx.recv() => {
                    let Some((next, prefix)) = next else { return };
                    far.write_all(&prefix).await.unwrap();
                    near = next;
                }
            }
        }
    });
    tx
}

/// Paused time (the paths are in-memory pipes): the 5 s limits below are virtual, so the
/// test fails deterministically if only the 30 s idle timer would have resumed the path.
#[tokio::test(start_paused = true)]
async fn a_new_hello_on_the_attached_stream_resumes_without_waiting_for_the_idle_timeout() {
    let (opener, acceptor) = handles(DriverConfig::default());
    let (acc_end, far) = tokio::io::duplex(1 << 20);
    let (op_end, near) = tokio::io::duplex(1 << 20);
    let switch = relay(far, near);
    acceptor.attach_path(Box::new(acc_end)).await.unwrap();
    opener.attach_path(Box::new(op_end)).await.unwrap();

    let mut s = opener.open_stream().await.unwrap();
    s.write_all(b"one").await.unwrap();
    let mut r = acceptor.accept_stream().await.unwrap();
    let mut buf = [0u8; 3];
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"one");

    // The opener moves to a new relay stream: its hello, then its RESUME, arrive on the
    // acceptor's current stream.
    let (op_end2, near2) = tokio::io::duplex(1 << 20);
    let hello = path::encode_hello(&opener.path_id()).to_vec();
    switch.send((near2, hello)).await.unwrap();
    opener.attach_path(Box::new(op_end2)).await.unwrap();

    // Well within the 30 s idle timeout that was the only way out before (README gap).
    let within = Duration::from_secs(5);
    s.write_all(b"two").await.unwrap();
    tokio::time::timeout(within, r.read_exact(&mut buf))
        .await
        .expect("the acceptor did not resume on the new hello")
        .unwrap();
    assert_eq!(&buf, b"two");
    r.write_all(b"back").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(within, s.read_exact(&mut back))
        .await
        .expect("nothing came back on the new path")
        .unwrap();
    assert_eq!(&back, b"back");
    assert_eq!(acceptor.path().attached, 1, "same stream, no new attach");
    assert_eq!(opener.path().attached, 2);
    assert_eq!(opener.state(), SessionState::Connected);
    assert_eq!(acceptor.state(), SessionState::Connected);
}
