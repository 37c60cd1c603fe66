//! STUN Binding: the server's pure answer function and the client's
//! transaction state machine with RFC 8489 §6.2.1 retransmission timing.
//!
//! ```text
//!  client core                               server core
//!  BindingTransaction::new ─ request bytes ─▶ answer(bytes, src, local, other)
//!        ▲  poll(now): Retransmit/TimedOut           │
//!        └──────── on_response(bytes) ◀── success ───┘ (XOR-MAPPED-ADDRESS = src)
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::stun::{self, Attribute, Class, Message, Method, TransactionId};
use crate::StunError;

/// SOFTWARE value sent in responses (§14.14: SHOULD include the name).
pub const SOFTWARE: &str = concat!("mpc-did ", env!("CARGO_PKG_VERSION"));

/// Answers one STUN message received on `local` from `source`.
///
/// * Binding request: success response with XOR-MAPPED-ADDRESS = `source`,
///   RESPONSE-ORIGIN = `local`, OTHER-ADDRESS = `other` (RFC 5780 §6: lets
///   the client run the mapping tests), SOFTWARE, FINGERPRINT.
/// * Request carrying unknown comprehension-required attributes: 420 with
///   UNKNOWN-ATTRIBUTES (§6.3.1.1). CHANGE-REQUEST asking for a change is
///   answered the same way, because this server cannot send from another
///   address (RFC 5780 §6.1 allows exactly that answer).
/// * Request for another method: 400 (§6.3.1.1).
/// * Indications and responses: `Ok(None)` (no reply; §6.3.2, §6.3.3).
///
/// # Errors
/// Any [`StunError`] from [`stun::decode`]: the caller drops the datagram
/// and counts it (RFC 8489 §6.3: malformed messages are discarded silently).
pub fn answer(
    request: &[u8],
    source: SocketAddr,
    local: SocketAddr,
    other: Option<SocketAddr>,
) -> Result<Option<Vec<u8>>, StunError> {
    let decoded = stun::decode(request)?;
    let req = decoded.message;
    if req.class != Class::Request {
        return Ok(None);
    }
    let mut unknown = req.unknown_comprehension_required();
    let wants_change = req.attributes.iter().any(|a| {
        matches!(a, Attribute::ChangeRequest { change_ip, change_port } if *change_ip || *change_port)
    });
    if wants_change {
        unknown.push(stun::attr::CHANGE_REQUEST);
    }
    let mut attributes = Vec::new();
    let class = if req.method != Method::BINDING {
        attributes.push(Attribute::ErrorCode {
            code: 400,
            reason: "Bad Request".into(),
        });
        Class::ErrorResponse
    } else if !unknown.is_empty() {
        unknown.truncate(16);
        attributes.push(Attribute::ErrorCode {
            code: 420,
            reason: "Unknown Attribute".into(),
        });
        attributes.push(Attribute::UnknownAttributes(unknown));
        Class::ErrorResponse
    } else {
        attributes.push(Attribute::XorMappedAddress(source));
        attributes.push(Attribute::ResponseOrigin(local));
        if let Some(o) = other {
            attributes.push(Attribute::OtherAddress(o));
        }
        Class::SuccessResponse
    };
    attributes.push(Attribute::Software(SOFTWARE.into()));
    let resp = Message {
        class,
        method: req.method,
        transaction_id: req.transaction_id,
        attributes,
    };
    resp.encode(None, true).map(Some)
}

/// Retransmission parameters (RFC 8489 §6.2.1): initial RTO, Rc requests in
/// total, and a final wait of Rm × RTO after the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitSchedule {
    /// Initial retransmission timeout (§6.2.1: SHOULD be > 500 ms; default 500 ms).
    pub rto: Duration,
    /// Requests sent in total (Rc, default 7).
    pub rc: u32,
    /// Final wait multiplier (Rm, default 16).
    pub rm: u32,
}

impl Default for RetransmitSchedule {
    fn default() -> Self {
        RetransmitSchedule {
            rto: Duration::from_millis(500),
            rc: 7,
            rm: 16,
        }
    }
}

impl RetransmitSchedule {
    /// Offsets from the first send at which each request goes out: 0, RTO,
    /// 3 RTO, 7 RTO, ... (the interval doubles), `rc` entries.
    pub fn send_offsets(&self) -> Vec<Duration> {
        let mut out = Vec::new();
        let mut at = Duration::ZERO;
        let mut interval = self.rto;
        for _ in 0..self.rc {
            out.push(at);
            at = at.saturating_add(interval);
            interval = interval.saturating_mul(2);
        }
        out
    }

    /// When the transaction fails if nothing came back: the last send plus
    /// Rm × RTO (39.5 s with the defaults, as §6.2.1's example says).
    pub fn give_up_after(&self) -> Duration {
        self.send_offsets()
            .last()
            .copied()
            .unwrap_or_default()
            .saturating_add(self.rto.saturating_mul(self.rm))
    }

    /// Over TCP there is no retransmission; the transaction times out after
    /// Ti = 39.5 s (§6.2.2).
    pub fn reliable() -> Self {
        RetransmitSchedule {
            rto: Duration::from_millis(39_500),
            rc: 1,
            rm: 1,
        }
    }
}

/// What the shell should do next for a [`BindingTransaction`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransactionPoll {
    /// Send [`BindingTransaction::request`] now.
    Transmit,
    /// Nothing to do before this instant.
    WaitUntil(Instant),
    /// No response in time (§6.2.1 "transaction has failed").
    TimedOut,
    /// A response was accepted; poll no more.
    Done,
}

/// The outcome of a Binding transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingResponse {
    /// Our address as the server saw it (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// The server's alternate address (OTHER-ADDRESS), for NAT classification.
    pub other: Option<SocketAddr>,
    /// Where the server says it sent from (RESPONSE-ORIGIN).
    pub origin: Option<SocketAddr>,
    /// Round-trip time from the last transmission (RFC 8489 §6.2.1 note:
    /// ambiguous when retransmitted; good enough for path ranking).
    pub rtt: Duration,
}

/// One client Binding transaction: the request bytes plus the retransmission
/// clock, matched by transaction id. No sockets: the shell sends on
/// [`TransactionPoll::Transmit`] and feeds datagrams to [`Self::on_response`].
#[derive(Debug)]
pub struct BindingTransaction {
    id: TransactionId,
    request: Vec<u8>,
    offsets: Vec<Duration>,
    give_up: Duration,
    started: Instant,
    sent: usize,
    last_sent: Instant,
    done: bool,
}

impl BindingTransaction {
    /// A new transaction with a random id, started at `now`.
    ///
    /// # Errors
    /// [`StunError::Encode`] only if encoding fails (it cannot for a bare request).
    pub fn new(schedule: RetransmitSchedule, now: Instant) -> Result<Self, StunError> {
        Self::with_message(Message::binding_request(), schedule, now)
    }

    /// A transaction for a given request (for example one with CHANGE-REQUEST
    /// or ICE attributes). A FINGERPRINT is appended so a peer multiplexing
    /// STUN with QUIC on one socket can tell them apart (§7).
    ///
    /// # Errors
    /// [`StunError::Encode`] if the message cannot be encoded.
    pub fn with_message(
        msg: Message,
        schedule: RetransmitSchedule,
        now: Instant,
    ) -> Result<Self, StunError> {
        Ok(BindingTransaction {
            id: msg.transaction_id,
            request: msg.encode(None, true)?,
            offsets: schedule.send_offsets(),
            give_up: schedule.give_up_after(),
            started: now,
            sent: 0,
            last_sent: now,
            done: false,
        })
    }

    /// The transaction id.
    pub fn id(&self) -> TransactionId {
        self.id
    }

    /// The request datagram.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Advances the clock. Call it when the deadline it returned passes;
    /// each `Transmit` counts as one send.
    pub fn poll(&mut self, now: Instant) -> TransactionPoll {
        if self.done {
            return TransactionPoll::Done;
        }
        if let Some(off) = self.offsets.get(self.sent) {
            let due = self.started + *off;
            if now >= due {
                self.sent += 1;
                self.last_sent = now;
                return TransactionPoll::Transmit;
            }
            return TransactionPoll::WaitUntil(due);
        }
        let end = self.started + self.give_up;
        if now >= end {
            self.done = true;
            TransactionPoll::TimedOut
        } else {
            TransactionPoll::WaitUntil(end)
        }
    }

    /// Offers a received datagram. `Ok(None)`: not ours (other transaction
    /// id, or a request): keep waiting.
    ///
    /// # Errors
    /// Decoding errors; [`StunError::ErrorResponse`] for an error response
    /// to this transaction; [`StunError::UnexpectedMessage`] for a success
    /// response without a mapped address or with unknown
    /// comprehension-required attributes (§6.3.3: discard it).
    pub fn on_response(
        &mut self,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Option<BindingResponse>, StunError> {
        let d = stun::decode(datagram)?;
        let m = d.message;
        if m.transaction_id != self.id || self.done {
            return Ok(None);
        }
        match m.class {
            Class::SuccessResponse if m.method == Method::BINDING => {
                if !m.unknown_comprehension_required().is_empty() {
                    return Err(StunError::UnexpectedMessage);
                }
                let mapped = m.mapped_address().ok_or(StunError::UnexpectedMessage)?;
                self.done = true;
                let origin = m.attributes.iter().find_map(|a| match a {
                    Attribute::ResponseOrigin(s) => Some(*s),
                    _ => None,
                });
                Ok(Some(BindingResponse {
                    mapped,
                    other: m.other_address(),
                    origin,
                    rtt: now.saturating_duration_since(self.last_sent),
                }))
            }
            Class::ErrorResponse => {
                self.done = true;
                let code = m.error_code().map(|(c, _)| c).unwrap_or(0);
                Err(StunError::ErrorResponse(code))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn default_schedule_matches_rfc_example() {
        // RFC 8489 §6.2.1: "requests would be sent at times 0 ms, 500 ms,
        // 1500 ms, 3500 ms, 7500 ms, 15500 ms, and 31500 ms ... failed at 39500 ms".
        let s = RetransmitSchedule::default();
        let ms: Vec<u128> = s.send_offsets().iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(s.give_up_after(), Duration::from_millis(39_500));
        assert_eq!(
            RetransmitSchedule::reliable().give_up_after(),
            Duration::from_millis(39_500)
        );
    }

    #[test]
    fn transaction_follows_schedule_then_times_out() {
        let t0 = Instant::now();
        let mut t = BindingTransaction::new(RetransmitSchedule::default(), t0).unwrap();
        assert_eq!(t.poll(t0), TransactionPoll::Transmit);
        assert_eq!(
            t.poll(t0),
            TransactionPoll::WaitUntil(t0 + Duration::from_millis(500))
        );
        let mut sends = 1;
        let mut now = t0;
        loop {
            match t.poll(now) {
                TransactionPoll::Transmit => sends += 1,
                TransactionPoll::WaitUntil(d) => now = d,
                TransactionPoll::TimedOut => break,
                TransactionPoll::Done => panic!("done without response"),
            }
        }
        assert_eq!(sends, 7);
        assert_eq!(now - t0, Duration::from_millis(39_500));
        assert_eq!(t.poll(now), TransactionPoll::Done);
    }

    #[test]
    fn answer_and_match() {
        let t0 = Instant::now();
        let mut t = BindingTransaction::new(RetransmitSchedule::default(), t0).unwrap();
        let src: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:3478".parse().unwrap();
        let other: SocketAddr = "198.51.100.2:3479".parse().unwrap();
        let resp = answer(t.request(), src, local, Some(other))
            .unwrap()
            .unwrap();
        // A response to another transaction is ignored (re-encoded so its
        // FINGERPRINT stays valid).
        let mut m = stun::decode(&resp).unwrap().message;
        m.transaction_id.0[0] ^= 1;
        let foreign = m.encode(None, true).unwrap();
        assert_eq!(t.on_response(&foreign, t0).unwrap(), None);
        let got = t
            .on_response(&resp, t0 + Duration::from_millis(3))
            .unwrap()
            .unwrap();
        assert_eq!(got.mapped, src);
        assert_eq!(got.other, Some(other));
        assert_eq!(got.origin, Some(local));
        assert_eq!(got.rtt, Duration::from_millis(3));
        assert_eq!(t.poll(t0), TransactionPoll::Done);
    }

    #[test]
    fn success_response_size_is_bounded() {
        // spec/rendezvous.md §7: at most 120 bytes (amplification <= 6).
        let req = Message::binding_request().encode(None, false).unwrap();
        assert_eq!(req.len(), 20);
        let v6: SocketAddr = "[2001:db8::1]:65535".parse().unwrap();
        let resp = answer(&req, v6, v6, Some(v6)).unwrap().unwrap();
        assert!(resp.len() <= 120, "{}", resp.len());
    }

    #[test]
    fn unknown_required_attribute_gets_420() {
        // RFC 8489 §6.3.1.1.
        let mut m = Message::binding_request();
        m.attributes.push(Attribute::Unknown {
            typ: 0x7F00,
            value: vec![1, 2, 3],
        });
        m.attributes.push(Attribute::Unknown {
            typ: 0xC000,
            value: vec![9],
        });
        let req = m.encode(None, false).unwrap();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let resp = stun::decode(&answer(&req, a, a, None).unwrap().unwrap())
            .unwrap()
            .message;
        assert_eq!(resp.class, Class::ErrorResponse);
        assert_eq!(resp.error_code().map(|e| e.0), Some(420));
        assert!(resp
            .attributes
            .contains(&Attribute::UnknownAttributes(vec![0x7F00])));
        let mut t =
            BindingTransaction::with_message(m, RetransmitSchedule::default(), Instant::now())
                .unwrap();
        let resp = answer(t.request(), a, a, None).unwrap().unwrap();
        assert_eq!(
            t.on_response(&resp, Instant::now()),
            Err(StunError::ErrorResponse(420))
        );
    }

    #[test]
    fn change_request_is_refused_and_other_methods_get_400() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut m = Message::binding_request();
        m.attributes.push(Attribute::ChangeRequest {
            change_ip: true,
            change_port: false,
        });
        let r = stun::decode(
            &answer(&m.encode(None, false).unwrap(), a, a, None)
                .unwrap()
                .unwrap(),
        )
        .unwrap()
        .message;
        assert_eq!(r.error_code().map(|e| e.0), Some(420));
        // A CHANGE-REQUEST with no flag set is an ordinary request.
        m.attributes = vec![Attribute::ChangeRequest {
            change_ip: false,
            change_port: false,
        }];
        let r = stun::decode(
            &answer(&m.encode(None, false).unwrap(), a, a, None)
                .unwrap()
                .unwrap(),
        )
        .unwrap()
        .message;
        assert_eq!(r.class, Class::SuccessResponse);
        m.attributes.clear();
        m.method = Method::new(0x003).unwrap(); // Allocate (TURN): not served
        let r = stun::decode(
            &answer(&m.encode(None, false).unwrap(), a, a, None)
                .unwrap()
                .unwrap(),
        )
        .unwrap()
        .message;
        assert_eq!(r.error_code().map(|e| e.0), Some(400));
    }

    #[test]
    fn indications_and_responses_get_no_answer() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut m = Message::binding_request();
        m.class = Class::Indication;
        assert_eq!(answer(&m.encode(None, true).unwrap(), a, a, None), Ok(None));
        m.class = Class::SuccessResponse;
        assert_eq!(answer(&m.encode(None, true).unwrap(), a, a, None), Ok(None));
    }
}
