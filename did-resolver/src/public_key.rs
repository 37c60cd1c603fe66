//! Public keys and their encodings: multibase/multicodec (`z6Mk…`, `z6LS…`), JWK (OKP,
//! RFC 8037) and raw base58 (the legacy `publicKeyBase58`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::error::KeyError;

/// Multicodec code of an Ed25519 public key (`ed25519-pub`, varint `0xed 0x01`).
pub const MULTICODEC_ED25519_PUB: u64 = 0xed;
/// Multicodec code of an X25519 public key (`x25519-pub`, varint `0xec 0x01`).
pub const MULTICODEC_X25519_PUB: u64 = 0xec;

/// Longest multibase string we try to decode: a 32-byte key plus a 2-byte codec is 47
/// base58 characters; 128 leaves room for larger unsupported keys to get a precise
/// "unsupported key type" error instead of "too long".
const MAX_MULTIBASE_LEN: usize = 256;

/// A public key of a type this project uses.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PublicKey {
    /// Ed25519 signing key (authentication, assertion).
    Ed25519([u8; 32]),
    /// X25519 key-agreement key.
    X25519([u8; 32]),
}

impl PublicKey {
    /// The raw 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        match self {
            Self::Ed25519(b) | Self::X25519(b) => b,
        }
    }

    /// `Ed25519` or `X25519`: the JWK `crv` name.
    pub fn curve(&self) -> &'static str {
        match self {
            Self::Ed25519(_) => "Ed25519",
            Self::X25519(_) => "X25519",
        }
    }

    fn codec(&self) -> u64 {
        match self {
            Self::Ed25519(_) => MULTICODEC_ED25519_PUB,
            Self::X25519(_) => MULTICODEC_X25519_PUB,
        }
    }

    /// Multibase (base58btc, `z`) of multicodec varint ‖ key bytes, e.g. `z6Mk…` for
    /// Ed25519 and `z6LS…` for X25519.
    pub fn to_multibase(&self) -> String {
        let mut buf = Vec::with_capacity(34);
        write_varint(self.codec(), &mut buf);
        buf.extend_from_slice(self.as_bytes());
        format!("z{}", bs58::encode(buf).into_string())
    }

    /// Decodes a multibase/multicodec public key.
    ///
    /// # Errors
    /// [`KeyError`]: not base58btc (`z`), invalid base58, bad varint, a codec other than
    /// Ed25519/X25519 ([`KeyError::UnsupportedCodec`]), or a wrong key length.
    pub fn from_multibase(s: &str) -> Result<Self, KeyError> {
        let mut chars = s.chars();
        let prefix = chars.next().ok_or(KeyError::Empty)?;
        if prefix != 'z' {
            return Err(KeyError::UnsupportedMultibase(prefix));
        }
        if s.len() > MAX_MULTIBASE_LEN {
            return Err(KeyError::TooLong(s.len()));
        }
        let bytes =
            bs58::decode(chars.as_str())
                .into_vec()
                .map_err(|_| KeyError::InvalidEncoding {
                    encoding: "base58btc",
                })?;
        let (codec, key) = read_varint(&bytes)?;
        match codec {
            MULTICODEC_ED25519_PUB => Ok(Self::Ed25519(key32("Ed25519", key)?)),
            MULTICODEC_X25519_PUB => Ok(Self::X25519(key32("X25519", key)?)),
            other => Err(KeyError::UnsupportedCodec(other)),
        }
    }

    /// The key as an OKP JWK (RFC 8037 §2): `{"kty":"OKP","crv":…,"x":…}`.
    pub fn to_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": self.curve(),
            "x": URL_SAFE_NO_PAD.encode(self.as_bytes()),
        })
    }

    /// Decodes an OKP JWK with `crv` `Ed25519` or `X25519`. Other members (`kid`, `use`,
    /// `alg`, …) are ignored; a private `d` member is refused.
    ///
    /// # Errors
    /// [`KeyError::UnsupportedJwk`] for other key types/curves, [`KeyError::InvalidJwk`] if
    /// malformed, [`KeyError::PrivateKeyInJwk`] if it carries `d`.
    pub fn from_jwk(jwk: &Value) -> Result<Self, KeyError> {
        let obj = jwk
            .as_object()
            .ok_or_else(|| KeyError::InvalidJwk("not a JSON object".to_owned()))?;
        let field = |name: &str| -> Result<&str, KeyError> {
            obj.get(name)
                .ok_or_else(|| KeyError::InvalidJwk(format!("missing {name:?}")))?
                .as_str()
                .ok_or_else(|| KeyError::InvalidJwk(format!("{name:?} is not a string")))
        };
        let kty = field("kty")?;
        if kty != "OKP" {
            return Err(KeyError::UnsupportedJwk(format!("kty {kty:?} (only OKP)")));
        }
        let crv = field("crv")?;
        if obj.contains_key("d") {
            return Err(KeyError::PrivateKeyInJwk);
        }
        let x = field("x")?;
        if x.len() > 64 {
            return Err(KeyError::TooLong(x.len()));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| KeyError::InvalidEncoding {
                encoding: "base64url",
            })?;
        match crv {
            "Ed25519" => Ok(Self::Ed25519(key32("Ed25519", &raw)?)),
            "X25519" => Ok(Self::X25519(key32("X25519", &raw)?)),
            other => Err(KeyError::UnsupportedJwk(format!(
                "crv {other:?} (only Ed25519, X25519)"
            ))),
        }
    }

    /// Decodes a raw base58btc key (legacy `publicKeyBase58`, no multibase prefix, no
    /// multicodec); the caller says which curve from the method `type`.
    ///
    /// # Errors
    /// [`KeyError`] if not base58 or not 32 bytes.
    pub fn from_base58(s: &str, x25519: bool) -> Result<Self, KeyError> {
        if s.len() > MAX_MULTIBASE_LEN {
            return Err(KeyError::TooLong(s.len()));
        }
        let raw = bs58::decode(s)
            .into_vec()
            .map_err(|_| KeyError::InvalidEncoding {
                encoding: "base58btc",
            })?;
        if x25519 {
            Ok(Self::X25519(key32("X25519", &raw)?))
        } else {
            Ok(Self::Ed25519(key32("Ed25519", &raw)?))
        }
    }

    /// Raw base58btc of the key bytes (legacy `publicKeyBase58`).
    pub fn to_base58(&self) -> String {
        bs58::encode(self.as_bytes()).into_string()
    }
}

fn key32(kind: &'static str, b: &[u8]) -> Result<[u8; 32], KeyError> {
    b.try_into()
        .map_err(|_| KeyError::InvalidLength { kind, len: b.len() })
}

/// Unsigned LEB128 varint as used by multicodec.
fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads a multicodec varint (at most 9 bytes, minimal encoding), returns it and the rest.
fn read_varint(b: &[u8]) -> Result<(u64, &[u8]), KeyError> {
    let mut v: u64 = 0;
    for (i, &byte) in b.iter().enumerate().take(9) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // Minimal encoding: a trailing zero byte (other than a lone 0) is overlong.
            if byte == 0 && i > 0 {
                return Err(KeyError::InvalidCodec);
            }
            return Ok((v, b.get(i + 1..).unwrap_or_default()));
        }
    }
    Err(KeyError::InvalidCodec)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefixes_are_the_published_ones() {
        // did:key spec: Ed25519 keys start "z6Mk", X25519 keys "z6LS".
        assert!(PublicKey::Ed25519([7; 32])
            .to_multibase()
            .starts_with("z6Mk"));
        assert!(PublicKey::X25519([7; 32])
            .to_multibase()
            .starts_with("z6LS"));
    }

    #[test]
    fn rejects_bad_multibase() {
        assert_eq!(PublicKey::from_multibase(""), Err(KeyError::Empty));
        assert!(matches!(
            PublicKey::from_multibase("uABC"),
            Err(KeyError::UnsupportedMultibase('u'))
        ));
        assert!(matches!(
            PublicKey::from_multibase("z0OIl"),
            Err(KeyError::InvalidEncoding { .. })
        ));
        // secp256k1-pub (0xe7) key: a real did:key from the spec's secp256k1 examples.
        assert!(matches!(
            PublicKey::from_multibase("zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"),
            Err(KeyError::UnsupportedCodec(0xe7))
        ));
        let mut short = vec![0xed, 0x01];
        short.extend_from_slice(&[1; 31]);
        let s = format!("z{}", bs58::encode(short).into_string());
        assert!(matches!(
            PublicKey::from_multibase(&s),
            Err(KeyError::InvalidLength { len: 31, .. })
        ));
        assert!(matches!(
            PublicKey::from_multibase(&format!("z{}", "2".repeat(400))),
            Err(KeyError::TooLong(_))
        ));
        // Overlong varint (0xed encoded with a redundant 0x80 0x00 tail).
        let s = format!("z{}", bs58::encode([0xed, 0x81, 0x00]).into_string());
        assert_eq!(PublicKey::from_multibase(&s), Err(KeyError::InvalidCodec));
    }

    #[test]
    fn jwk_round_trip_and_rejections() {
        // RFC 8037 Appendix A.2: the Ed25519 public key of the A.1 example.
        let jwk =
            json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let k = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(
            hex::encode(k.as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert_eq!(k.to_jwk(), jwk);
        let with_d = json!({"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"});
        assert_eq!(PublicKey::from_jwk(&with_d), Err(KeyError::PrivateKeyInJwk));
        let p256 = json!({"kty":"EC","crv":"P-256","x":"a","y":"b"});
        assert!(matches!(
            PublicKey::from_jwk(&p256),
            Err(KeyError::UnsupportedJwk(_))
        ));
        let ed448 = json!({"kty":"OKP","crv":"Ed448","x":"AAAA"});
        assert!(matches!(
            PublicKey::from_jwk(&ed448),
            Err(KeyError::UnsupportedJwk(_))
        ));
        let bad = json!({"kty":"OKP","crv":"X25519","x":"!!"});
        assert!(matches!(
            PublicKey::from_jwk(&bad),
            Err(KeyError::InvalidEncoding { .. })
        ));
        assert!(matches!(
            PublicKey::from_jwk(&json!([])),
            Err(KeyError::InvalidJwk(_))
        ));
    }

    fn any_key() -> impl Strategy<Value = PublicKey> {
        (any::<bool>(), any::<[u8; 32]>()).prop_map(|(x, b)| {
            if x {
                PublicKey::X25519(b)
            } else {
                PublicKey::Ed25519(b)
            }
        })
    }

    proptest! {
        #[test]
        fn multibase_round_trip(k in any_key()) {
            prop_assert_eq!(PublicKey::from_multibase(&k.to_multibase()).unwrap(), k);
        }

        #[test]
        fn jwk_round_trip(k in any_key()) {
            prop_assert_eq!(PublicKey::from_jwk(&k.to_jwk()).unwrap(), k);
        }

        #[test]
        fn varint_round_trip(v in 0u64..(1u64 << 63)) {
            // Multicodec varints are at most 9 bytes, i.e. 63 bits.
            let mut buf = Vec::new();
            write_varint(v, &mut buf);
            buf.push(42);
            let (got, rest) = read_varint(&buf).unwrap();
            prop_assert_eq!(got, v);
            prop_assert_eq!(rest, &[42u8][..]);
        }

        #[test]
        fn from_multibase_never_panics(s in "\\PC{0,80}") {
            let _ = PublicKey::from_multibase(&s);
            let _ = PublicKey::from_multibase(&format!("z{s}"));
        }
    }
}
