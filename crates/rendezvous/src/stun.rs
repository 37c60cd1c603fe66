//! STUN message codec (RFC 8489), the subset a rendezvous point needs.
//!
//! Decoding is strict where RFC 8489 §5 and §14 say MUST (top two bits zero,
//! magic cookie, length a multiple of 4 and equal to what follows the header,
//! every attribute padded to 4 bytes and inside the message, FINGERPRINT last
//! and correct) and lenient where it says "ignore" (padding bytes' values, the
//! reserved first byte of address attributes, attributes after
//! MESSAGE-INTEGRITY other than FINGERPRINT). See `spec/rendezvous.md` §2.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::StunError;

/// The fixed value in bytes 4..8 of every RFC 5389/8489 message (§6).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Header length (§5).
pub const HEADER_LEN: usize = 20;
/// Largest message accepted or produced. Binding traffic is a few hundred
/// bytes; 2 KiB leaves room for every attribute we know while bounding work
/// on hostile input (RFC 8489 §6.1 asks messages to fit a 576-byte path MTU
/// unless the MTU is known, so nothing legitimate comes near this).
pub const MAX_MESSAGE_LEN: usize = 2048;
/// At most this many attributes are parsed per message.
pub const MAX_ATTRIBUTES: usize = 64;
/// SOFTWARE, ERROR-CODE reason: fewer than 128 characters, at most 763 bytes (§14.8, §14.14).
pub const MAX_TEXT_LEN: usize = 763;
/// USERNAME: at most 513 bytes (§14.3).
pub const MAX_USERNAME_LEN: usize = 513;
/// XOR'ed into the CRC-32 to form FINGERPRINT (§14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// Attribute type codes (RFC 8489 §18.3, RFC 5780 §7, RFC 8445 §16.1).
pub mod attr {
    /// MAPPED-ADDRESS.
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// USERNAME.
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (HMAC-SHA1).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE.
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES.
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// MESSAGE-INTEGRITY-SHA256 (recognised for ordering only).
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001C;
    /// XOR-MAPPED-ADDRESS.
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PRIORITY (ICE).
    pub const PRIORITY: u16 = 0x0024;
    /// USE-CANDIDATE (ICE).
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// SOFTWARE.
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT.
    pub const FINGERPRINT: u16 = 0x8028;
    /// ICE-CONTROLLED.
    pub const ICE_CONTROLLED: u16 = 0x8029;
    /// ICE-CONTROLLING.
    pub const ICE_CONTROLLING: u16 = 0x802A;
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    pub const OTHER_ADDRESS: u16 = 0x802C;

    /// Types 0x0000-0x7FFF are comprehension-required (RFC 8489 §14).
    pub fn is_comprehension_required(t: u16) -> bool {
        t < 0x8000
    }
}

/// The 96-bit transaction id (§5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TransactionId(pub [u8; 12]);

impl TransactionId {
    /// A fresh id from the OS random source (§5: "uniformly and randomly chosen").
    pub fn random() -> Self {
        use rand_core::RngCore;
        let mut id = [0u8; 12];
        rand_core::OsRng.fill_bytes(&mut id);
        TransactionId(id)
    }
}

/// Message class (§5).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Class {
    /// 0b00.
    Request,
    /// 0b01.
    Indication,
    /// 0b10.
    SuccessResponse,
    /// 0b11.
    ErrorResponse,
}

/// A 12-bit STUN method. Only Binding (0x001) is answered here.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Method(u16);

impl Method {
    /// Binding (§18.2).
    pub const BINDING: Method = Method(0x001);

    /// A method from its 12-bit number.
    ///
    /// # Errors
    /// [`StunError::Encode`] if `m` does not fit in 12 bits.
    pub fn new(m: u16) -> Result<Self, StunError> {
        if m > 0x0FFF {
            return Err(StunError::Encode("method wider than 12 bits"));
        }
        Ok(Method(m))
    }

    /// The 12-bit number.
    pub fn number(self) -> u16 {
        self.0
    }
}

/// A decoded attribute. MESSAGE-INTEGRITY and FINGERPRINT are not here: the
/// encoder computes them and the decoder checks them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Attribute {
    /// MAPPED-ADDRESS (§14.1), decoded for old servers; we never send it.
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS (§14.2).
    XorMappedAddress(SocketAddr),
    /// USERNAME (§14.3).
    Username(String),
    /// ERROR-CODE (§14.8): code 300..=699.
    ErrorCode {
        /// Class*100 + number.
        code: u16,
        /// UTF-8 reason phrase.
        reason: String,
    },
    /// UNKNOWN-ATTRIBUTES (§14.9).
    UnknownAttributes(Vec<u16>),
    /// SOFTWARE (§14.14).
    Software(String),
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    ChangeRequest {
        /// "change IP" flag.
        change_ip: bool,
        /// "change port" flag.
        change_port: bool,
    },
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    ResponseOrigin(SocketAddr),
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    OtherAddress(SocketAddr),
    /// PRIORITY (RFC 8445 §7.1.1).
    Priority(u32),
    /// USE-CANDIDATE (RFC 8445 §7.1.2).
    UseCandidate,
    /// ICE-CONTROLLED tie-breaker (RFC 8445 §7.1.3).
    IceControlled(u64),
    /// ICE-CONTROLLING tie-breaker.
    IceControlling(u64),
    /// Any other attribute, kept raw so a server can list comprehension-required
    /// ones in a 420 response.
    Unknown {
        /// Attribute type.
        typ: u16,
        /// Value without padding.
        value: Vec<u8>,
    },
}

impl Attribute {
    /// The wire type code.
    pub fn typ(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => attr::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => attr::XOR_MAPPED_ADDRESS,
            Attribute::Username(_) => attr::USERNAME,
            Attribute::ErrorCode { .. } => attr::ERROR_CODE,
            Attribute::UnknownAttributes(_) => attr::UNKNOWN_ATTRIBUTES,
            Attribute::Software(_) => attr::SOFTWARE,
            Attribute::ChangeRequest { .. } => attr::CHANGE_REQUEST,
            Attribute::ResponseOrigin(_) => attr::RESPONSE_ORIGIN,
            Attribute::OtherAddress(_) => attr::OTHER_ADDRESS,
            Attribute::Priority(_) => attr::PRIORITY,
            Attribute::UseCandidate => attr::USE_CANDIDATE,
            Attribute::IceControlled(_) => attr::ICE_CONTROLLED,
            Attribute::IceControlling(_) => attr::ICE_CONTROLLING,
            Attribute::Unknown { typ, .. } => *typ,
        }
    }
}

/// A STUN message without its MESSAGE-INTEGRITY / FINGERPRINT trailer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// Class.
    pub class: Class,
    /// Method.
    pub method: Method,
    /// Transaction id.
    pub transaction_id: TransactionId,
    /// Attributes in wire order.
    pub attributes: Vec<Attribute>,
}

/// What [`decode`] saw besides the attributes.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Decoded {
    /// The message.
    pub message: Message,
    /// A MESSAGE-INTEGRITY attribute was present (check it with
    /// [`verify_integrity`] once the key is known).
    pub has_integrity: bool,
    /// A FINGERPRINT attribute was present (and was correct, or decoding fails).
    pub has_fingerprint: bool,
}

impl Message {
    /// A Binding request with a fresh random transaction id.
    pub fn binding_request() -> Self {
        Message {
            class: Class::Request,
            method: Method::BINDING,
            transaction_id: TransactionId::random(),
            attributes: Vec::new(),
        }
    }

    /// The first XOR-MAPPED-ADDRESS, else the first MAPPED-ADDRESS (§14.1:
    /// clients fall back to it for RFC 3489 servers).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.attributes
            .iter()
            .find_map(|a| match a {
                Attribute::XorMappedAddress(s) => Some(*s),
                _ => None,
            })
            .or_else(|| {
                self.attributes.iter().find_map(|a| match a {
                    Attribute::MappedAddress(s) => Some(*s),
                    _ => None,
                })
            })
    }

    /// The OTHER-ADDRESS attribute, if any (RFC 5780).
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::OtherAddress(s) => Some(*s),
            _ => None,
        })
    }

    /// The ERROR-CODE attribute, if any.
    pub fn error_code(&self) -> Option<(u16, &str)> {
        self.attributes.iter().find_map(|a| match a {
            Attribute::ErrorCode { code, reason } => Some((*code, reason.as_str())),
            _ => None,
        })
    }

    /// Types of the comprehension-required attributes this codec does not
    /// understand (a server answers 420 listing them, a client discards the
    /// response: §6.3.1, §6.3.3).
    pub fn unknown_comprehension_required(&self) -> Vec<u16> {
        self.attributes
            .iter()
            .filter_map(|a| match a {
                Attribute::Unknown { typ, .. } if attr::is_comprehension_required(*typ) => {
                    Some(*typ)
                }
                _ => None,
            })
            .collect()
    }

    /// Encodes the message, appending MESSAGE-INTEGRITY (HMAC-SHA1 with
    /// `integrity_key`, §14.5) and FINGERPRINT (§14.7) when asked.
    ///
    /// # Errors
    /// [`StunError::Encode`] if an attribute value is out of range (text too
    /// long, error code outside 300..=699, ...) or the message would exceed
    /// [`MAX_MESSAGE_LEN`].
    pub fn encode(
        &self,
        integrity_key: Option<&[u8]>,
        fingerprint: bool,
    ) -> Result<Vec<u8>, StunError> {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&message_type(self.class, self.method).to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf.extend_from_slice(&self.transaction_id.0);
        for a in &self.attributes {
            encode_attribute(&mut buf, a, &self.transaction_id)?;
            if buf.len() > MAX_MESSAGE_LEN {
                return Err(StunError::Encode("message too long"));
            }
        }
        if let Some(key) = integrity_key {
            // §14.5: the length field covers the MESSAGE-INTEGRITY attribute
            // (and nothing after it) while the HMAC is computed.
            let l = buf.len() - HEADER_LEN + 24;
            set_length(&mut buf, l)?;
            let mac = hmac_sha1(key, &buf)?;
            put_attr_header(&mut buf, attr::MESSAGE_INTEGRITY, 20)?;
            buf.extend_from_slice(&mac);
        }
        if fingerprint {
            let l = buf.len() - HEADER_LEN + 8;
            set_length(&mut buf, l)?;
            let crc = crc32(&buf) ^ FINGERPRINT_XOR;
            put_attr_header(&mut buf, attr::FINGERPRINT, 4)?;
            buf.extend_from_slice(&crc.to_be_bytes());
        }
        let l = buf.len() - HEADER_LEN;
        set_length(&mut buf, l)?;
        if buf.len() > MAX_MESSAGE_LEN {
            return Err(StunError::Encode("message too long"));
        }
        Ok(buf)
    }
}

/// How many bytes the STUN message starting at `prefix` occupies, for framing
/// STUN over a byte stream (RFC 8489 §6.2.2). `Ok(None)` means fewer than 20
/// bytes are available yet.
///
/// # Errors
/// The header checks of [`decode`]: top bits, magic cookie, length.
pub fn message_len(prefix: &[u8]) -> Result<Option<usize>, StunError> {
    let Some(header) = prefix.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = check_header(header)?;
    Ok(Some(HEADER_LEN + len))
}

/// Quick test for demultiplexing STUN from other traffic on one socket
/// (RFC 8489 §7.1 / RFC 7983): top bits zero and the magic cookie.
pub fn looks_like_stun(buf: &[u8]) -> bool {
    matches!(buf.get(..HEADER_LEN).map(check_header), Some(Ok(_)))
}

/// Validates the fixed header and returns the body length it announces.
fn check_header(h: &[u8]) -> Result<usize, StunError> {
    let b0 = *h.first().ok_or(StunError::Truncated)?;
    if b0 & 0xC0 != 0 {
        return Err(StunError::NotStun);
    }
    if be32(h, 4)? != MAGIC_COOKIE {
        return Err(StunError::BadMagicCookie);
    }
    let len = usize::from(be16(h, 2)?);
    if !len.is_multiple_of(4) {
        return Err(StunError::BadLength);
    }
    if HEADER_LEN + len > MAX_MESSAGE_LEN {
        return Err(StunError::TooLong);
    }
    Ok(len)
}

/// Decodes one complete STUN message (one UDP datagram, or one frame cut with
/// [`message_len`]).
///
/// # Errors
/// Every rule of `spec/rendezvous.md` §2.2 has its own [`StunError`] variant:
/// short input, top bits, magic cookie, length not a multiple of 4 or not
/// matching the input, an attribute running past the end, a malformed known
/// attribute, too many attributes, FINGERPRINT not last or wrong.
pub fn decode(buf: &[u8]) -> Result<Decoded, StunError> {
    if buf.len() < HEADER_LEN {
        return Err(StunError::Truncated);
    }
    if buf.len() > MAX_MESSAGE_LEN {
        return Err(StunError::TooLong);
    }
    let len = check_header(buf)?;
    if HEADER_LEN + len != buf.len() {
        return Err(StunError::LengthMismatch);
    }
    let typ = be16(buf, 0)?;
    let (class, method) = split_message_type(typ);
    let mut tid = [0u8; 12];
    tid.copy_from_slice(buf.get(8..20).ok_or(StunError::Truncated)?);
    let tid = TransactionId(tid);

    let mut attributes = Vec::new();
    let mut has_integrity = false;
    let mut has_fingerprint = false;
    let mut count = 0usize;
    let mut off = HEADER_LEN;
    while off < buf.len() {
        if has_fingerprint {
            return Err(StunError::FingerprintNotLast);
        }
        count += 1;
        if count > MAX_ATTRIBUTES {
            return Err(StunError::TooManyAttributes);
        }
        let atyp = be16(buf, off).map_err(|_| StunError::AttributeOverrun)?;
        let alen = usize::from(be16(buf, off + 2).map_err(|_| StunError::AttributeOverrun)?);
        let padded = (alen + 3) & !3;
        let vstart = off + 4;
        if vstart + padded > buf.len() {
            return Err(StunError::AttributeOverrun);
        }
        let value = buf
            .get(vstart..vstart + alen)
            .ok_or(StunError::AttributeOverrun)?;
        match atyp {
            attr::FINGERPRINT => {
                if alen != 4 {
                    return Err(StunError::BadAttribute(atyp));
                }
                // §14.7: CRC-32 over everything before this attribute, with
                // the header length already covering it (it is last).
                let want = crc32(buf.get(..off).ok_or(StunError::Truncated)?) ^ FINGERPRINT_XOR;
                if be32(value, 0)? != want {
                    return Err(StunError::BadFingerprint);
                }
                has_fingerprint = true;
            }
            attr::MESSAGE_INTEGRITY => {
                if alen != 20 {
                    return Err(StunError::BadAttribute(atyp));
                }
                if !has_integrity {
                    has_integrity = true;
                }
            }
            // §14.5/§14.6: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256
            // and FINGERPRINT count; everything else is ignored.
            _ if has_integrity => {}
            attr::MESSAGE_INTEGRITY_SHA256 => {}
            _ => attributes.push(decode_attribute(atyp, value, &tid)?),
        }
        off = vstart + padded;
    }
    Ok(Decoded {
        message: Message {
            class,
            method,
            transaction_id: tid,
            attributes,
        },
        has_integrity,
        has_fingerprint,
    })
}

/// Checks the first MESSAGE-INTEGRITY (HMAC-SHA1, §14.5) of a message that
/// [`decode`] accepted. For short-term credentials the key is the password
/// (after OpaqueString, which leaves ASCII unchanged; §9.1.1).
///
/// # Errors
/// [`StunError::AuthenticationFailed`] if the attribute is missing, malformed
/// or wrong (one opaque variant); framing errors as in [`decode`].
pub fn verify_integrity(buf: &[u8], key: &[u8]) -> Result<(), StunError> {
    if buf.len() < HEADER_LEN || buf.len() > MAX_MESSAGE_LEN {
        return Err(StunError::AuthenticationFailed);
    }
    let mut off = HEADER_LEN;
    while off + 4 <= buf.len() {
        let atyp = be16(buf, off)?;
        let alen = usize::from(be16(buf, off + 2)?);
        let vstart = off + 4;
        if atyp == attr::MESSAGE_INTEGRITY {
            let mac = buf
                .get(vstart..vstart + 20)
                .filter(|_| alen == 20)
                .ok_or(StunError::AuthenticationFailed)?;
            let mut covered = buf.get(..off).ok_or(StunError::Truncated)?.to_vec();
            set_length(&mut covered, off - HEADER_LEN + 24)?;
            let mut h = <Hmac<Sha1> as Mac>::new_from_slice(key)
                .map_err(|_| StunError::AuthenticationFailed)?;
            h.update(&covered);
            // Constant-time comparison.
            return h
                .verify_slice(mac)
                .map_err(|_| StunError::AuthenticationFailed);
        }
        off = vstart + ((alen + 3) & !3);
    }
    Err(StunError::AuthenticationFailed)
}

fn message_type(class: Class, method: Method) -> u16 {
    let m = method.0;
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::SuccessResponse => 0b10,
        Class::ErrorResponse => 0b11,
    };
    // §5 figure 3: M11..M7 C1 M6..M4 C0 M3..M0.
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

fn split_message_type(t: u16) -> (Class, Method) {
    let m = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let c = ((t >> 4) & 1) | ((t >> 7) & 2);
    let class = match c {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::SuccessResponse,
        _ => Class::ErrorResponse,
    };
    (class, Method(m))
}

fn decode_attribute(t: u16, v: &[u8], tid: &TransactionId) -> Result<Attribute, StunError> {
    let bad = StunError::BadAttribute(t);
    Ok(match t {
        attr::MAPPED_ADDRESS => Attribute::MappedAddress(decode_addr(t, v, None)?),
        attr::XOR_MAPPED_ADDRESS => Attribute::XorMappedAddress(decode_addr(t, v, Some(tid))?),
        attr::RESPONSE_ORIGIN => Attribute::ResponseOrigin(decode_addr(t, v, None)?),
        attr::OTHER_ADDRESS => Attribute::OtherAddress(decode_addr(t, v, None)?),
        attr::USERNAME => Attribute::Username(decode_text(t, v, MAX_USERNAME_LEN)?),
        attr::SOFTWARE => Attribute::Software(decode_text(t, v, MAX_TEXT_LEN)?),
        attr::ERROR_CODE => {
            if v.len() < 4 {
                return Err(bad);
            }
            let class = u16::from(*v.get(2).ok_or(StunError::BadAttribute(t))? & 0x07);
            let number = u16::from(*v.get(3).ok_or(StunError::BadAttribute(t))?);
            if !(3..=6).contains(&class) || number > 99 {
                return Err(bad);
            }
            let reason = decode_text(t, v.get(4..).unwrap_or_default(), MAX_TEXT_LEN)?;
            Attribute::ErrorCode {
                code: class * 100 + number,
                reason,
            }
        }
        attr::UNKNOWN_ATTRIBUTES => {
            if !v.len().is_multiple_of(2) {
                return Err(bad);
            }
            Attribute::UnknownAttributes(
                v.chunks_exact(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect(),
            )
        }
        attr::CHANGE_REQUEST => {
            if v.len() != 4 {
                return Err(bad);
            }
            let flags = be32(v, 0)?;
            Attribute::ChangeRequest {
                change_ip: flags & 0x4 != 0,
                change_port: flags & 0x2 != 0,
            }
        }
        attr::PRIORITY => {
            if v.len() != 4 {
                return Err(bad);
            }
            Attribute::Priority(be32(v, 0)?)
        }
        attr::USE_CANDIDATE => {
            if !v.is_empty() {
                return Err(bad);
            }
            Attribute::UseCandidate
        }
        attr::ICE_CONTROLLED | attr::ICE_CONTROLLING => {
            let arr: [u8; 8] = v.try_into().map_err(|_| StunError::BadAttribute(t))?;
            let n = u64::from_be_bytes(arr);
            if t == attr::ICE_CONTROLLED {
                Attribute::IceControlled(n)
            } else {
                Attribute::IceControlling(n)
            }
        }
        _ => Attribute::Unknown {
            typ: t,
            value: v.to_vec(),
        },
    })
}

fn decode_text(t: u16, v: &[u8], max: usize) -> Result<String, StunError> {
    if v.len() > max {
        return Err(StunError::BadAttribute(t));
    }
    String::from_utf8(v.to_vec()).map_err(|_| StunError::BadAttribute(t))
}

/// Address attributes (§14.1, §14.2): reserved byte, family (1 = IPv4,
/// 2 = IPv6), port, address; the XOR form XORs port and address with the
/// cookie (and, for IPv6, the transaction id).
fn decode_addr(t: u16, v: &[u8], xor: Option<&TransactionId>) -> Result<SocketAddr, StunError> {
    let bad = || StunError::BadAttribute(t);
    let family = *v.get(1).ok_or_else(bad)?;
    let mut port = be16(v, 2).map_err(|_| bad())?;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (family, v.len()) {
        (0x01, 8) => {
            let mut a = [0u8; 4];
            a.copy_from_slice(v.get(4..8).ok_or_else(bad)?);
            if xor.is_some() {
                for (b, k) in a.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(a))
        }
        (0x02, 20) => {
            let mut a = [0u8; 16];
            a.copy_from_slice(v.get(4..20).ok_or_else(bad)?);
            if let Some(tid) = xor {
                let key = cookie.iter().chain(tid.0.iter());
                for (b, k) in a.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(a))
        }
        _ => return Err(bad()),
    };
    Ok(SocketAddr::new(ip, port))
}

fn encode_addr(buf: &mut Vec<u8>, addr: &SocketAddr, xor: Option<&TransactionId>) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = if xor.is_some() {
        addr.port() ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        addr.port()
    };
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.extend_from_slice(&[0, 0x01]);
            buf.extend_from_slice(&port.to_be_bytes());
            let mut a = ip.octets();
            if xor.is_some() {
                for (b, k) in a.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            buf.extend_from_slice(&a);
        }
        IpAddr::V6(ip) => {
            buf.extend_from_slice(&[0, 0x02]);
            buf.extend_from_slice(&port.to_be_bytes());
            let mut a = ip.octets();
            if let Some(tid) = xor {
                for (b, k) in a.iter_mut().zip(cookie.iter().chain(tid.0.iter())) {
                    *b ^= k;
                }
            }
            buf.extend_from_slice(&a);
        }
    }
}

fn encode_attribute(
    buf: &mut Vec<u8>,
    a: &Attribute,
    tid: &TransactionId,
) -> Result<(), StunError> {
    let start = buf.len();
    buf.extend_from_slice(&a.typ().to_be_bytes());
    buf.extend_from_slice(&[0, 0]);
    match a {
        Attribute::MappedAddress(s) | Attribute::ResponseOrigin(s) | Attribute::OtherAddress(s) => {
            encode_addr(buf, s, None)
        }
        Attribute::XorMappedAddress(s) => encode_addr(buf, s, Some(tid)),
        Attribute::Username(u) => {
            if u.len() > MAX_USERNAME_LEN {
                return Err(StunError::Encode("USERNAME too long"));
            }
            buf.extend_from_slice(u.as_bytes());
        }
        Attribute::Software(s) => {
            if s.len() > MAX_TEXT_LEN {
                return Err(StunError::Encode("SOFTWARE too long"));
            }
            buf.extend_from_slice(s.as_bytes());
        }
        Attribute::ErrorCode { code, reason } => {
            if !(300..=699).contains(code) {
                return Err(StunError::Encode("error code outside 300..=699"));
            }
            if reason.len() > MAX_TEXT_LEN {
                return Err(StunError::Encode("reason phrase too long"));
            }
            // Both fit in a byte: class 3..=6, number 0..=99.
            let class = (code / 100) as u8;
            let number = (code % 100) as u8;
            buf.extend_from_slice(&[0, 0, class, number]);
            buf.extend_from_slice(reason.as_bytes());
        }
        Attribute::UnknownAttributes(ts) => {
            if ts.len() > 32 {
                return Err(StunError::Encode("too many unknown attributes"));
            }
            for t in ts {
                buf.extend_from_slice(&t.to_be_bytes());
            }
        }
        Attribute::ChangeRequest {
            change_ip,
            change_port,
        } => {
            let flags = (u32::from(*change_ip) << 2) | (u32::from(*change_port) << 1);
            buf.extend_from_slice(&flags.to_be_bytes());
        }
        Attribute::Priority(p) => buf.extend_from_slice(&p.to_be_bytes()),
        Attribute::UseCandidate => {}
        Attribute::IceControlled(n) | Attribute::IceControlling(n) => {
            buf.extend_from_slice(&n.to_be_bytes())
        }
        Attribute::Unknown { typ, value } => {
            if matches!(
                *typ,
                attr::MESSAGE_INTEGRITY | attr::FINGERPRINT | attr::MESSAGE_INTEGRITY_SHA256
            ) {
                return Err(StunError::Encode("integrity/fingerprint are computed"));
            }
            if value.len() > MAX_MESSAGE_LEN {
                return Err(StunError::Encode("attribute too long"));
            }
            buf.extend_from_slice(value)
        }
    }
    let vlen = buf.len() - start - 4;
    let vlen16 = u16::try_from(vlen).map_err(|_| StunError::Encode("attribute too long"))?;
    if let Some(l) = buf.get_mut(start + 2..start + 4) {
        l.copy_from_slice(&vlen16.to_be_bytes());
    }
    // §14: pad to a 4-byte boundary with zeros (receivers ignore the values).
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
    Ok(())
}

fn put_attr_header(buf: &mut Vec<u8>, t: u16, len: u16) -> Result<(), StunError> {
    buf.extend_from_slice(&t.to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn set_length(buf: &mut [u8], len: usize) -> Result<(), StunError> {
    let l = u16::try_from(len).map_err(|_| StunError::Encode("message too long"))?;
    buf.get_mut(2..4)
        .ok_or(StunError::Encode("no header"))?
        .copy_from_slice(&l.to_be_bytes());
    Ok(())
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> Result<[u8; 20], StunError> {
    let mut h = <Hmac<Sha1> as Mac>::new_from_slice(key)
        .map_err(|_| StunError::Encode("HMAC key rejected"))?;
    h.update(data);
    Ok(h.finalize().into_bytes().into())
}

fn be16(b: &[u8], at: usize) -> Result<u16, StunError> {
    let s = b.get(at..at + 2).ok_or(StunError::Truncated)?;
    Ok(u16::from_be_bytes([s[0], s[1]]))
}

fn be32(b: &[u8], at: usize) -> Result<u32, StunError> {
    let s = b.get(at..at + 4).ok_or(StunError::Truncated)?;
    Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// CRC-32 (ISO-HDLC / IEEE 802.3, reflected polynomial 0xEDB88320), the one
/// FINGERPRINT uses (§14.7). A 1 KiB table built at compile time; STUN
/// messages are small, so a dependency for SIMD CRC is not worth it.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn message_type_bits() {
        // RFC 8489 §5: Binding request 0x0001, success 0x0101, error 0x0111,
        // indication 0x0011.
        assert_eq!(message_type(Class::Request, Method::BINDING), 0x0001);
        assert_eq!(
            message_type(Class::SuccessResponse, Method::BINDING),
            0x0101
        );
        assert_eq!(message_type(Class::ErrorResponse, Method::BINDING), 0x0111);
        assert_eq!(message_type(Class::Indication, Method::BINDING), 0x0011);
        for m in [0u16, 1, 0x0FFF, 0x0ABC] {
            for c in [
                Class::Request,
                Class::Indication,
                Class::SuccessResponse,
                Class::ErrorResponse,
            ] {
                let t = message_type(c, Method(m));
                assert_eq!(t & 0xC000, 0);
                assert_eq!(split_message_type(t), (c, Method(m)));
            }
        }
    }
}
