//! [`SessionId`]: the id of one secure session (spec/session.md §2), as opposed to the MPC
//! session (the lobby's `MpcSessionId`, in `mpc-did-lobby`).

use crate::SessionError;

/// The id of a secure session: the 16 random bytes the proposer picks, written as 32
/// lowercase hex digits in `propose`/`accept`/`handshake`. Parsed at the edge
/// ([`str::parse`], serde), so a value of this type is always well formed.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId([u8; 16]);

impl SessionId {
    /// The raw bytes (bound into the Noise prologue, spec/session.md §4).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl From<[u8; 16]> for SessionId {
    fn from(b: [u8; 16]) -> Self {
        Self(b)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl std::str::FromStr for SessionId {
    type Err = SessionError;

    fn from_str(s: &str) -> Result<Self, SessionError> {
        let mut out = [0u8; 16];
        if s.len() != 32 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SessionError::Malformed("session id"));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| SessionError::Malformed("session id"))?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for SessionId {
    type Error = SessionError;

    fn try_from(s: String) -> Result<Self, SessionError> {
        s.parse()
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> Self {
        id.to_string()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_32_lowercase_hex_digits() {
        let id: SessionId = "000102030405060708090a0b0c0d0e0f".parse().unwrap();
        assert_eq!(id.as_bytes()[15], 15);
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f");
        for bad in [
            "",
            "00",
            "000102030405060708090A0B0C0D0E0F",
            &"zz".repeat(16),
        ] {
            assert!(bad.parse::<SessionId>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<SessionId>(&json).unwrap(), id);
    }
}
