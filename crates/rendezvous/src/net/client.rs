//! STUN client: server-reflexive address discovery over UDP and TCP, and
//! RFC 5780 mapping classification, driving [`BindingTransaction`].

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, UdpSocket};

use super::NetError;
use crate::binding::{BindingResponse, BindingTransaction, RetransmitSchedule, TransactionPoll};
use crate::nat::{classify_mapping, probe_targets, MappingObservations, NatMapping};
use crate::stun::{self, MAX_MESSAGE_LEN};
use crate::StunError;

/// One Binding transaction from `socket` to `server` over UDP, retransmitted
/// on `schedule`. Datagrams that are not the answer (other sources' traffic,
/// garbage, other transactions) are skipped. The caller must not read from
/// `socket` concurrently.
///
/// # Errors
/// [`NetError::TimedOut`] after the schedule; [`NetError::Stun`] for an
/// error response; [`NetError::Io`] for socket errors.
pub async fn binding_udp(
    socket: &UdpSocket,
    server: SocketAddr,
    schedule: RetransmitSchedule,
) -> Result<BindingResponse, NetError> {
    let mut tx = BindingTransaction::new(schedule, Instant::now())?;
    let mut buf = vec![0u8; MAX_MESSAGE_LEN + 1];
    loop {
        let deadline = match tx.poll(Instant::now()) {
            TransactionPoll::Transmit => {
                socket.send_to(tx.request(), server).await?;
                continue;
            }
            TransactionPoll::WaitUntil(t) => t,
            TransactionPoll::TimedOut | TransactionPoll::Done => return Err(NetError::TimedOut),
        };
        let recv = tokio::time::timeout_at(deadline.into(), socket.recv_from(&mut buf)).await;
        let Ok(received) = recv else {
            continue; // deadline: poll again (retransmit or give up)
        };
        let (n, _from) = match received {
            Ok(x) => x,
            // An ICMP error from an earlier send (Linux reports them on
            // connected sockets and some platforms always): keep waiting.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(datagram) = buf.get(..n) else {
            continue;
        };
        match tx.on_response(datagram, Instant::now()) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(e @ (StunError::ErrorResponse(_) | StunError::UnexpectedMessage)) => {
                return Err(e.into())
            }
            // Not a valid STUN message: not our answer.
            Err(_) => {}
        }
    }
}

/// One Binding transaction over a new TCP connection to `server`, optionally
/// from `local` (to learn the mapping of a port used for TCP simultaneous
/// open). Returns the response and the connection's local address.
///
/// # Errors
/// As [`binding_udp`]; the whole exchange is bounded by Ti = 39.5 s
/// (RFC 8489 §6.2.2) or `schedule`'s equivalent.
pub async fn binding_tcp(
    server: SocketAddr,
    local: Option<SocketAddr>,
    schedule: RetransmitSchedule,
) -> Result<(BindingResponse, SocketAddr), NetError> {
    let limit = schedule.give_up_after();
    tokio::time::timeout(limit, async {
        let sock = if server.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(l) = local {
            sock.set_reuseaddr(true)?;
            // The port is usually held by our own listener too (the TCP simultaneous-open
            // port, spec §6.2): Linux lets a second socket bind a listening port only when
            // both set SO_REUSEPORT.
            #[cfg(unix)]
            sock.set_reuseport(true)?;
            sock.bind(l)?;
        }
        let mut stream = sock.connect(server).await?;
        let me = stream.local_addr()?;
        let mut tx = BindingTransaction::new(RetransmitSchedule::reliable(), Instant::now())?;
        let _ = tx.poll(Instant::now());
        stream.write_all(tx.request()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            if let Some(len) = stun::message_len(&buf)? {
                if buf.len() >= len {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    if let Some(r) = tx.on_response(&msg, Instant::now())? {
                        return Ok((r, me));
                    }
                    continue;
                }
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(NetError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            if buf.len() > MAX_MESSAGE_LEN {
                return Err(StunError::TooLong.into());
            }
        }
    })
    .await
    .map_err(|_| NetError::TimedOut)?
}

/// Runs RFC 5780 §4.3 tests I-III from `socket` against a server whose
/// primary address is `primary` and classifies the mapping. A test that gets
/// no answer leaves the result [`NatMapping::Unknown`] (as does a server
/// without OTHER-ADDRESS).
///
/// # Errors
/// [`NetError::Io`] for socket errors and test I failures other than a
/// timeout.
pub async fn classify_nat_udp(
    socket: &UdpSocket,
    primary: SocketAddr,
    schedule: RetransmitSchedule,
) -> Result<(NatMapping, MappingObservations), NetError> {
    let mut obs = MappingObservations::default();
    let local = vec![socket.local_addr()?];
    let first = match binding_udp(socket, primary, schedule).await {
        Ok(r) => r,
        Err(NetError::TimedOut) => return Ok((NatMapping::Unknown, obs)),
        Err(e) => return Err(e),
    };
    obs.test1 = Some(first.mapped);
    if let Some(other) = first.other {
        let (t2, t3) = probe_targets(primary, other);
        obs.test2 = binding_udp(socket, t2, schedule)
            .await
            .ok()
            .map(|r| r.mapped);
        if obs.test2.is_some() && obs.test2 != obs.test1 {
            obs.test3 = binding_udp(socket, t3, schedule)
                .await
                .ok()
                .map(|r| r.mapped);
        }
    }
    Ok((classify_mapping(&obs, &local), obs))
}
