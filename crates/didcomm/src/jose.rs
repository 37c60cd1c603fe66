//! The JOSE layer DIDComm v2 needs, on RustCrypto primitives: JWE (General JSON
//! serialisation) with ECDH-ES+A256KW / ECDH-1PU+A256KW over X25519 and A256CBC-HS512,
//! A256GCM, XC20P content encryption; JWS (General JSON) with EdDSA over Ed25519.
//!
//! Everything here takes raw keys; which key belongs to whom is decided by the caller
//! ([`crate::unpack`]). Specs: RFC 7516 (JWE), RFC 7515 (JWS), RFC 7518 §4.6 (ECDH-ES, Concat
//! KDF), §5.2 (A256CBC-HS512), §4.4/§5.3 (AES-KW, AES-GCM), draft-madden-jose-ecdh-1pu-04
//! §2.3 (1PU with the tag in the KDF's SuppPubInfo), draft-irtf-cfrg-xchacha (XC20P),
//! RFC 8037 (OKP keys, EdDSA). See `spec/didcomm.md` for why each choice.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256, Sha512};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::ecdh_cache::x25519_checked;
pub use crate::ecdh_cache::StaticEcdhCache;
use crate::error::{Error, Result};
use crate::message::{media_type_matches, ENCRYPTED_TYP, SIGNED_TYP};

/// Most recipients one envelope may carry; more is treated as malformed (a cheap DoS guard:
/// each recipient may cost an ECDH on unpack).
pub const MAX_RECIPIENTS: usize = 64;

/// base64url without padding (RFC 7515 §2).
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Strict base64url decoding (no padding, no other alphabet).
///
/// # Errors
/// [`Error::Malformed`] naming `what`.
pub fn unb64(s: &str, what: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| Error::malformed(format!("{what} is not base64url")))
}

fn unb64_32(s: &str, what: &str) -> Result<[u8; 32]> {
    unb64(s, what)?
        .try_into()
        .map_err(|_| Error::malformed(format!("{what} is not 32 bytes")))
}

/// Key management algorithm of a JWE (`alg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyAlg {
    /// Anonymous: ECDH-ES with AES-256 key wrap.
    EcdhEsA256kw,
    /// Authenticated: ECDH-1PU (draft-madden-04) with AES-256 key wrap.
    Ecdh1puA256kw,
}

impl KeyAlg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdhEsA256kw => "ECDH-ES+A256KW",
            Self::Ecdh1puA256kw => "ECDH-1PU+A256KW",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "ECDH-ES+A256KW" => Ok(Self::EcdhEsA256kw),
            "ECDH-1PU+A256KW" => Ok(Self::Ecdh1puA256kw),
            other => Err(Error::Unsupported(format!("alg {other:?}"))),
        }
    }
}

/// Content encryption algorithm of a JWE (`enc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContentAlg {
    /// AES-256-CBC + HMAC-SHA-512/256 (RFC 7518 §5.2.5); the only one DIDComm allows for
    /// authcrypt, and what we send.
    A256CbcHs512,
    /// AES-256-GCM (RFC 7518 §5.3); received in anoncrypt.
    A256Gcm,
    /// XChaCha20-Poly1305; received in anoncrypt.
    Xc20p,
}

impl ContentAlg {
    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Self::A256CbcHs512 => "A256CBC-HS512",
            Self::A256Gcm => "A256GCM",
            Self::Xc20p => "XC20P",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "A256CBC-HS512" => Ok(Self::A256CbcHs512),
            "A256GCM" => Ok(Self::A256Gcm),
            "XC20P" => Ok(Self::Xc20p),
            other => Err(Error::Unsupported(format!("enc {other:?}"))),
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::A256CbcHs512 => 64,
            Self::A256Gcm | Self::Xc20p => 32,
        }
    }

    fn iv_len(self) -> usize {
        match self {
            Self::A256CbcHs512 => 16,
            Self::A256Gcm => 12,
            Self::Xc20p => 24,
        }
    }

    fn tag_len(self) -> usize {
        match self {
            Self::A256CbcHs512 => 32,
            Self::A256Gcm | Self::Xc20p => 16,
        }
    }

    /// Encrypt; returns (ciphertext, tag).
    fn seal(self, cek: &[u8], iv: &[u8], aad: &[u8], pt: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
        match self {
            Self::A256CbcHs512 => {
                let (mac_key, enc_key) = cek.split_at(32);
                let ct = cbc::Encryptor::<aes::Aes256>::new_from_slices(enc_key, iv)
                    .map_err(|_| Error::Crypto)?
                    .encrypt_padded_vec_mut::<Pkcs7>(pt);
                let tag = cbc_hs512_tag(mac_key, aad, iv, &ct)?;
                Ok((ct, tag))
            }
            Self::A256Gcm => {
                let c = aes_gcm::Aes256Gcm::new_from_slice(cek).map_err(|_| Error::Crypto)?;
                let out = c
                    .encrypt(aes_gcm::Nonce::from_slice(iv), Payload { msg: pt, aad })
                    .map_err(|_| Error::Crypto)?;
                Ok(split_tag(out, 16))
            }
            Self::Xc20p => {
                let c = chacha20poly1305::XChaCha20Poly1305::new_from_slice(cek)
                    .map_err(|_| Error::Crypto)?;
                let out = c
                    .encrypt(
                        chacha20poly1305::XNonce::from_slice(iv),
                        Payload { msg: pt, aad },
                    )
                    .map_err(|_| Error::Crypto)?;
                Ok(split_tag(out, 16))
            }
        }
    }

    fn open(self, cek: &[u8], iv: &[u8], aad: &[u8], ct: &[u8], tag: &[u8]) -> Result<Vec<u8>> {
        if cek.len() != self.key_len() || iv.len() != self.iv_len() || tag.len() != self.tag_len() {
            return Err(Error::Crypto);
        }
        match self {
            Self::A256CbcHs512 => {
                let (mac_key, enc_key) = cek.split_at(32);
                // Verify before decrypting (RFC 7518 §5.2.2.2): no padding oracle.
                let mut mac = hmac_for(mac_key, aad, iv, ct)?;
                mac.update(&al_bits(aad));
                mac.verify_truncated_left(tag).map_err(|_| Error::Crypto)?;
                cbc::Decryptor::<aes::Aes256>::new_from_slices(enc_key, iv)
                    .map_err(|_| Error::Crypto)?
                    .decrypt_padded_vec_mut::<Pkcs7>(ct)
                    .map_err(|_| Error::Crypto)
            }
            Self::A256Gcm => {
                let c = aes_gcm::Aes256Gcm::new_from_slice(cek).map_err(|_| Error::Crypto)?;
                let joined = [ct, tag].concat();
                c.decrypt(
                    aes_gcm::Nonce::from_slice(iv),
                    Payload { msg: &joined, aad },
                )
                .map_err(|_| Error::Crypto)
            }
            Self::Xc20p => {
                let c = chacha20poly1305::XChaCha20Poly1305::new_from_slice(cek)
                    .map_err(|_| Error::Crypto)?;
                let joined = [ct, tag].concat();
                c.decrypt(
                    chacha20poly1305::XNonce::from_slice(iv),
                    Payload { msg: &joined, aad },
                )
                .map_err(|_| Error::Crypto)
            }
        }
    }
}

fn split_tag(mut out: Vec<u8>, n: usize) -> (Vec<u8>, Vec<u8>) {
    let tag = out.split_off(out.len().saturating_sub(n));
    (out, tag)
}

fn al_bits(aad: &[u8]) -> [u8; 8] {
    ((aad.len() as u64).wrapping_mul(8)).to_be_bytes()
}

fn hmac_for(mac_key: &[u8], aad: &[u8], iv: &[u8], ct: &[u8]) -> Result<Hmac<Sha512>> {
    let mut mac = <Hmac<Sha512> as Mac>::new_from_slice(mac_key).map_err(|_| Error::Crypto)?;
    mac.update(aad);
    mac.update(iv);
    mac.update(ct);
    Ok(mac)
}

fn cbc_hs512_tag(mac_key: &[u8], aad: &[u8], iv: &[u8], ct: &[u8]) -> Result<Vec<u8>> {
    let mut mac = hmac_for(mac_key, aad, iv, ct)?;
    mac.update(&al_bits(aad));
    let full = mac.finalize().into_bytes();
    Ok(full.get(..32).ok_or(Error::Crypto)?.to_vec())
}

/// Concat KDF (NIST SP 800-56A, as profiled by RFC 7518 §4.6.2) for a 256-bit key-wrapping
/// key. For ECDH-1PU in key-wrapping mode the JWE tag is appended to SuppPubInfo as a
/// length-prefixed octet string (draft-madden-jose-ecdh-1pu-04 §2.3), which binds the
/// sender's authentication to this exact ciphertext.
fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], tag: Option<&[u8]>) -> [u8; 32] {
    fn lp(h: &mut Sha256, data: &[u8]) {
        h.update((data.len() as u32).to_be_bytes());
        h.update(data);
    }
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    lp(&mut h, alg.as_bytes());
    lp(&mut h, apu);
    lp(&mut h, apv);
    h.update(256u32.to_be_bytes());
    if let Some(tag) = tag {
        lp(&mut h, tag);
    }
    h.finalize().into()
}

fn x25519(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    // A low-order public key yields an all-zero secret: rejected (RFC 7748 §6.1).
    x25519_checked(secret, public)
}

/// `apv` as DIDComm defines it: SHA-256 of the recipient kids, sorted, joined with `.`.
pub fn apv_for(kids: &[&str]) -> Vec<u8> {
    let mut sorted: Vec<&str> = kids.to_vec();
    sorted.sort_unstable();
    Sha256::digest(sorted.join(".").as_bytes()).to_vec()
}

/// One recipient of a JWE to be packed.
#[derive(Debug, Clone)]
pub struct RecipientKey<'a> {
    /// Absolute DID URL of the recipient's keyAgreement key.
    pub kid: &'a str,
    /// Its X25519 public key.
    pub public: [u8; 32],
}

/// The sender of an authcrypt JWE.
pub struct SenderKey<'a> {
    /// Absolute DID URL of the sender's keyAgreement key (`skid`).
    pub kid: &'a str,
    /// Its X25519 secret.
    pub secret: &'a StaticSecret,
}

/// Encrypt `plaintext` to every recipient: anoncrypt (ECDH-ES+A256KW) when `sender` is
/// `None`, authcrypt (ECDH-1PU+A256KW) otherwise. Returns the General JSON serialisation.
///
/// # Errors
/// [`Error::Unsupported`] for authcrypt with an `enc` other than A256CBC-HS512 (DIDComm
/// forbids it), [`Error::DuplicateRecipient`], [`Error::NoKey`] for no recipients,
/// [`Error::Crypto`] for a low-order recipient key.
pub fn encrypt(
    plaintext: &[u8],
    recipients: &[RecipientKey<'_>],
    sender: Option<&SenderKey<'_>>,
    enc: ContentAlg,
) -> Result<String> {
    encrypt_with(plaintext, recipients, sender, enc, None)
}

/// [`encrypt`], taking the static-static ECDH-1PU share `Zs` from `cache` when given
/// (same output format; see [`StaticEcdhCache`]). Anoncrypt ignores the cache.
///
/// # Errors
/// As [`encrypt`].
pub fn encrypt_with(
    plaintext: &[u8],
    recipients: &[RecipientKey<'_>],
    sender: Option<&SenderKey<'_>>,
    enc: ContentAlg,
    cache: Option<&StaticEcdhCache>,
) -> Result<String> {
    encrypt_inner(plaintext, recipients, sender, enc, cache, None, None)
}

/// The random inputs of one JWE, fixed: test vectors only (the session protocol's
/// `crates/session/tests/vectors/layers.json`, `didcomm_envelopes`), so that an envelope
/// can be reproduced byte for byte. Never use fixed randomness to send anything.
#[doc(hidden)]
pub struct FixedJweRandomness<'a> {
    /// The ephemeral X25519 secret (`epk`).
    pub epk_secret: [u8; 32],
    /// The content encryption key (64 bytes for A256CBC-HS512).
    pub cek: &'a [u8],
    /// The IV (16 bytes for A256CBC-HS512).
    pub iv: &'a [u8],
}

/// [`encrypt`] with fixed randomness (see [`FixedJweRandomness`]); test vectors only.
///
/// # Errors
/// As [`encrypt`]; [`Error::Malformed`] if the CEK or IV length does not fit `enc`.
#[doc(hidden)]
pub fn encrypt_with_fixed_randomness_for_testing(
    plaintext: &[u8],
    recipients: &[RecipientKey<'_>],
    sender: Option<&SenderKey<'_>>,
    enc: ContentAlg,
    fixed: &FixedJweRandomness<'_>,
) -> Result<String> {
    if fixed.cek.len() != enc.key_len() || fixed.iv.len() != enc.iv_len() {
        return Err(Error::malformed("fixed CEK or IV of the wrong length"));
    }
    encrypt_inner(plaintext, recipients, sender, enc, None, Some(fixed), None)
}

/// Header variations other implementations send and the DIDComm spec allows, for tests
/// of the receiving side only (never used to send).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderVariantsForTesting<'a> {
    /// Leave `skid` out of an authcrypt header (the sender is then only in `apu`).
    pub omit_skid: bool,
    /// Use this `typ` instead of `application/didcomm-encrypted+json`.
    pub typ: Option<&'a str>,
}

/// [`encrypt`] with header variations (see [`HeaderVariantsForTesting`]); tests only.
///
/// # Errors
/// As [`encrypt`].
#[doc(hidden)]
pub fn encrypt_with_header_variants_for_testing(
    plaintext: &[u8],
    recipients: &[RecipientKey<'_>],
    sender: Option<&SenderKey<'_>>,
    enc: ContentAlg,
    variants: HeaderVariantsForTesting<'_>,
) -> Result<String> {
    encrypt_inner(
        plaintext,
        recipients,
        sender,
        enc,
        None,
        None,
        Some(variants),
    )
}

fn encrypt_inner(
    plaintext: &[u8],
    recipients: &[RecipientKey<'_>],
    sender: Option<&SenderKey<'_>>,
    enc: ContentAlg,
    cache: Option<&StaticEcdhCache>,
    fixed: Option<&FixedJweRandomness<'_>>,
    variants: Option<HeaderVariantsForTesting<'_>>,
) -> Result<String> {
    let variants = variants.unwrap_or_default();
    if recipients.is_empty() {
        return Err(Error::NoKey("no recipient keys".into()));
    }
    if recipients.len() > MAX_RECIPIENTS {
        return Err(Error::malformed("too many recipients"));
    }
    let kids: Vec<&str> = recipients.iter().map(|r| r.kid).collect();
    check_unique(&kids)?;
    let alg = if sender.is_some() {
        if enc != ContentAlg::A256CbcHs512 {
            return Err(Error::Unsupported(format!(
                "authcrypt with {} (DIDComm requires A256CBC-HS512)",
                enc.name()
            )));
        }
        KeyAlg::Ecdh1puA256kw
    } else {
        KeyAlg::EcdhEsA256kw
    };
    let epk_secret = match fixed {
        Some(f) => StaticSecret::from(f.epk_secret),
        None => StaticSecret::random_from_rng(OsRng),
    };
    let epk = XPublic::from(&epk_secret);
    let apv = apv_for(&kids);
    let apu = sender.map(|s| s.kid.as_bytes().to_vec());
    let mut header = json!({
        "typ": variants.typ.unwrap_or(ENCRYPTED_TYP),
        "alg": alg.name(),
        "enc": enc.name(),
        "epk": {"kty": "OKP", "crv": "X25519", "x": b64(epk.as_bytes())},
        "apv": b64(&apv),
    });
    if let (Some(s), Some(apu), Some(obj)) = (sender, &apu, header.as_object_mut()) {
        if !variants.omit_skid {
            obj.insert("skid".into(), Value::String(s.kid.to_owned()));
        }
        obj.insert("apu".into(), Value::String(b64(apu)));
    }
    let protected = b64(header.to_string().as_bytes());

    let mut cek = Zeroizing::new(vec![0u8; enc.key_len()]);
    let mut iv = vec![0u8; enc.iv_len()];
    match fixed {
        Some(f) => {
            cek.copy_from_slice(f.cek);
            iv.copy_from_slice(f.iv);
        }
        None => {
            OsRng.fill_bytes(&mut cek);
            OsRng.fill_bytes(&mut iv);
        }
    }
    let (ct, tag) = enc.seal(&cek, &iv, protected.as_bytes(), plaintext)?;

    let apu_bytes = apu.unwrap_or_default();
    let mut out_recipients = Vec::with_capacity(recipients.len());
    for r in recipients {
        let ze = x25519(&epk_secret, &r.public)?;
        let kek = match sender {
            None => concat_kdf(ze.as_ref(), alg.name(), &apu_bytes, &apv, None),
            Some(s) => {
                let zs = match cache {
                    Some(c) => c.shared(s.secret, &r.public)?,
                    None => x25519(s.secret, &r.public)?,
                };
                let z = Zeroizing::new([ze.as_slice(), zs.as_slice()].concat());
                concat_kdf(&z, alg.name(), &apu_bytes, &apv, Some(&tag))
            }
        };
        let kek = Zeroizing::new(kek);
        let wrapped = aes_kw::KekAes256::from(*kek)
            .wrap_vec(&cek)
            .map_err(|_| Error::Crypto)?;
        out_recipients.push(json!({"header": {"kid": r.kid}, "encrypted_key": b64(&wrapped)}));
    }
    Ok(json!({
        "protected": protected,
        "recipients": out_recipients,
        "iv": b64(&iv),
        "ciphertext": b64(&ct),
        "tag": b64(&tag),
    })
    .to_string())
}

fn check_unique(kids: &[&str]) -> Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for k in kids {
        if !seen.insert(*k) {
            return Err(Error::DuplicateRecipient((*k).to_owned()));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct RawJwe {
    protected: String,
    recipients: Vec<RawRecipient>,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct RawFlatJwe {
    protected: String,
    header: RawRecipientHeader,
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct RawRecipient {
    header: RawRecipientHeader,
    encrypted_key: String,
}

#[derive(Deserialize)]
struct RawRecipientHeader {
    kid: String,
}

#[derive(Deserialize)]
struct RawProtected {
    #[serde(default)]
    typ: Option<String>,
    alg: String,
    enc: String,
    epk: Value,
    #[serde(default)]
    apu: Option<String>,
    #[serde(default)]
    apv: Option<String>,
    #[serde(default)]
    skid: Option<String>,
}

/// A parsed (not yet decrypted) JWE.
#[derive(Debug, Clone)]
pub struct Jwe {
    protected_b64: String,
    /// Key management algorithm.
    pub alg: KeyAlg,
    /// Content encryption algorithm.
    pub enc: ContentAlg,
    epk: [u8; 32],
    apu: Vec<u8>,
    apv: Vec<u8>,
    skid: Option<String>,
    recipients: Vec<(String, Vec<u8>)>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

impl Jwe {
    /// Parse and check a JWE's structure and headers (no key is used yet); General or
    /// flattened JSON serialisation (RFC 7516 §7.2). For authcrypt without `skid`, the
    /// sender kid is read from `apu`.
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::Unsupported`] (alg, enc, epk curve),
    /// [`Error::DuplicateRecipient`], [`Error::HeaderMismatch`] (skid/apu, apv),
    /// [`Error::Crypto`] for a tag or IV of the wrong length.
    pub fn parse(value: &Value) -> Result<Self> {
        let raw: RawJwe =
            if value.get("recipients").is_none() && value.get("encrypted_key").is_some() {
                // RFC 7516 §7.2.2: the flattened JWE JSON serialisation carries the one
                // recipient's "header" and "encrypted_key" at the top level.
                let flat: RawFlatJwe =
                    serde_json::from_value(value.clone()).map_err(Error::malformed)?;
                RawJwe {
                    protected: flat.protected,
                    recipients: vec![RawRecipient {
                        header: flat.header,
                        encrypted_key: flat.encrypted_key,
                    }],
                    iv: flat.iv,
                    ciphertext: flat.ciphertext,
                    tag: flat.tag,
                }
            } else {
                serde_json::from_value(value.clone()).map_err(Error::malformed)?
            };
        let header_bytes = unb64(&raw.protected, "protected")?;
        let h: RawProtected = serde_json::from_slice(&header_bytes).map_err(Error::malformed)?;
        if let Some(typ) = &h.typ {
            if !media_type_matches(typ, ENCRYPTED_TYP) {
                return Err(Error::malformed(format!("JWE typ {typ:?}")));
            }
        }
        let alg = KeyAlg::parse(&h.alg)?;
        let enc = ContentAlg::parse(&h.enc)?;
        let epk = parse_okp(&h.epk, "X25519")?;
        if raw.recipients.is_empty() || raw.recipients.len() > MAX_RECIPIENTS {
            return Err(Error::malformed("recipient count out of range"));
        }
        let mut recipients = Vec::with_capacity(raw.recipients.len());
        for r in raw.recipients {
            recipients.push((r.header.kid, unb64(&r.encrypted_key, "encrypted_key")?));
        }
        let kids: Vec<&str> = recipients.iter().map(|(k, _)| k.as_str()).collect();
        check_unique(&kids)?;
        let apv = match &h.apv {
            Some(a) => unb64(a, "apv")?,
            None => return Err(Error::HeaderMismatch("apv missing")),
        };
        if apv != apv_for(&kids) {
            return Err(Error::HeaderMismatch(
                "apv does not match the recipient kids",
            ));
        }
        let apu = match &h.apu {
            Some(a) => unb64(a, "apu")?,
            None => Vec::new(),
        };
        let skid = if alg == KeyAlg::Ecdh1puA256kw {
            // DIDComm Messaging v2.1 §"ECDH-1PU key wrapping and common protected headers":
            // "authcrypt implementations MUST be able to resolve the sender kid from the
            // `apu` header if `skid` is not set."
            let skid = match h.skid {
                Some(skid) => skid,
                None => String::from_utf8(apu.clone())
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or(Error::HeaderMismatch(
                        "authcrypt names its sender neither in skid nor in apu",
                    ))?,
            };
            if apu != skid.as_bytes() {
                return Err(Error::HeaderMismatch("apu is not the skid"));
            }
            if enc != ContentAlg::A256CbcHs512 {
                return Err(Error::Unsupported(format!(
                    "authcrypt with enc {}",
                    enc.name()
                )));
            }
            Some(skid)
        } else {
            None
        };
        let iv = unb64(&raw.iv, "iv")?;
        let tag = unb64(&raw.tag, "tag")?;
        if iv.len() != enc.iv_len() {
            return Err(Error::malformed("iv length does not fit enc"));
        }
        if tag.len() != enc.tag_len() {
            return Err(Error::Crypto);
        }
        Ok(Self {
            protected_b64: raw.protected,
            alg,
            enc,
            epk,
            apu,
            apv,
            skid,
            recipients,
            iv,
            ciphertext: unb64(&raw.ciphertext, "ciphertext")?,
            tag,
        })
    }

    /// The recipients' key ids, in envelope order.
    pub fn recipient_kids(&self) -> impl Iterator<Item = &str> {
        self.recipients.iter().map(|(k, _)| k.as_str())
    }

    /// The sender's key id (`skid`) for authcrypt; `None` for anoncrypt.
    pub fn sender_kid(&self) -> Option<&str> {
        self.skid.as_deref()
    }

    /// Decrypt as recipient `kid` holding `secret`. For authcrypt, `sender_public` is the
    /// X25519 key of [`Self::sender_kid`] (as resolved by the caller); for anoncrypt it
    /// must be `None`.
    ///
    /// # Errors
    /// [`Error::NoRecipientSecret`] if `kid` is not a recipient; [`Error::Crypto`] for any
    /// key-unwrap or content decryption failure; [`Error::NoKey`] if authcrypt is missing
    /// the sender key.
    pub fn decrypt(
        &self,
        kid: &str,
        secret: &StaticSecret,
        sender_public: Option<&[u8; 32]>,
    ) -> Result<Vec<u8>> {
        self.decrypt_with(kid, secret, sender_public, None)
    }

    /// [`Self::decrypt`], taking the static-static ECDH-1PU share `Zs` from `cache` when
    /// given (see [`StaticEcdhCache`]). Anoncrypt ignores the cache.
    ///
    /// # Errors
    /// As [`Self::decrypt`].
    pub fn decrypt_with(
        &self,
        kid: &str,
        secret: &StaticSecret,
        sender_public: Option<&[u8; 32]>,
        cache: Option<&StaticEcdhCache>,
    ) -> Result<Vec<u8>> {
        let wrapped = self
            .recipients
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, w)| w)
            .ok_or(Error::NoRecipientSecret)?;
        let ze = x25519(secret, &self.epk)?;
        let kek = match (self.alg, sender_public) {
            (KeyAlg::EcdhEsA256kw, None) => {
                concat_kdf(ze.as_ref(), self.alg.name(), &self.apu, &self.apv, None)
            }
            (KeyAlg::Ecdh1puA256kw, Some(sp)) => {
                let zs = match cache {
                    Some(c) => c.shared(secret, sp)?,
                    None => x25519(secret, sp)?,
                };
                let z = Zeroizing::new([ze.as_slice(), zs.as_slice()].concat());
                concat_kdf(&z, self.alg.name(), &self.apu, &self.apv, Some(&self.tag))
            }
            (KeyAlg::Ecdh1puA256kw, None) => {
                return Err(Error::NoKey("authcrypt sender key".into()))
            }
            (KeyAlg::EcdhEsA256kw, Some(_)) => {
                return Err(Error::HeaderMismatch("sender key given for anoncrypt"))
            }
        };
        let kek = Zeroizing::new(kek);
        let cek = Zeroizing::new(
            aes_kw::KekAes256::from(*kek)
                .unwrap_vec(wrapped)
                .map_err(|_| Error::Crypto)?,
        );
        self.enc.open(
            &cek,
            &self.iv,
            self.protected_b64.as_bytes(),
            &self.ciphertext,
            &self.tag,
        )
    }
}

/// Parse an OKP JWK (RFC 8037) of curve `crv` to its 32-byte public key.
///
/// # Errors
/// [`Error::Unsupported`] for another `kty`/`crv`, [`Error::Malformed`] for a bad `x`.
pub fn parse_okp(jwk: &Value, crv: &str) -> Result<[u8; 32]> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let got = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    if kty != "OKP" || got != crv {
        return Err(Error::Unsupported(format!(
            "key {kty}/{got} (want OKP/{crv})"
        )));
    }
    let x = jwk
        .get("x")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::malformed("JWK without x"))?;
    unb64_32(x, "JWK x")
}

/// Sign `payload` with EdDSA; returns the JWS General JSON serialisation. The signer's
/// `kid` is in the protected header, where the signature covers it (and where Veramo looks
/// for it), and also in the unprotected header, as the DIDComm spec's examples put it
/// (and where SICPA's implementations look). RFC 7515 §7.2.1 wants the two header sets
/// disjoint; spec/didcomm.md §3 explains why we repeat this one identical value anyway.
pub fn sign(payload: &[u8], kid: &str, key: &SigningKey) -> String {
    let protected = b64(json!({"typ": SIGNED_TYP, "alg": "EdDSA", "kid": kid})
        .to_string()
        .as_bytes());
    let payload_b64 = b64(payload);
    let sig = key.sign(format!("{protected}.{payload_b64}").as_bytes());
    json!({
        "payload": payload_b64,
        "signatures": [{
            "protected": protected,
            "signature": b64(&sig.to_bytes()),
            "header": {"kid": kid},
        }],
    })
    .to_string()
}

#[derive(Deserialize)]
struct RawJws {
    payload: String,
    signatures: Vec<RawSignature>,
}

#[derive(Deserialize)]
struct RawFlatJws {
    payload: String,
    protected: String,
    signature: String,
    #[serde(default)]
    header: Option<Value>,
}

#[derive(Deserialize)]
struct RawSignature {
    protected: String,
    signature: String,
    #[serde(default)]
    header: Option<Value>,
}

#[derive(Deserialize, Serialize)]
struct RawJwsHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
}

/// A parsed (not yet verified) JWS.
#[derive(Debug, Clone)]
pub struct Jws {
    payload_b64: String,
    payload: Vec<u8>,
    signatures: Vec<JwsSignature>,
}

#[derive(Debug, Clone)]
struct JwsSignature {
    protected_b64: String,
    kid: String,
    signature: [u8; 64],
}

impl Jws {
    /// Parse a JWS in the General or the flattened JSON serialisation (RFC 7515 §7.2).
    /// Only EdDSA signatures are accepted.
    ///
    /// # Errors
    /// [`Error::Malformed`], [`Error::Unsupported`] for another `alg`, [`Error::Crypto`] for
    /// a signature of the wrong length.
    pub fn parse(value: &Value) -> Result<Self> {
        let raw: RawJws = if value.get("signatures").is_none() && value.get("signature").is_some() {
            // RFC 7515 §7.2.2: "The flattened JWS JSON Serialization syntax is based upon
            // the general syntax but flattens it, optimizing it for the single digital
            // signature/MAC case": the one signature's members sit at the top level.
            let flat: RawFlatJws =
                serde_json::from_value(value.clone()).map_err(Error::malformed)?;
            RawJws {
                payload: flat.payload,
                signatures: vec![RawSignature {
                    protected: flat.protected,
                    signature: flat.signature,
                    header: flat.header,
                }],
            }
        } else {
            serde_json::from_value(value.clone()).map_err(Error::malformed)?
        };
        if raw.signatures.is_empty() || raw.signatures.len() > MAX_RECIPIENTS {
            return Err(Error::malformed("signature count out of range"));
        }
        let mut signatures = Vec::with_capacity(raw.signatures.len());
        for s in raw.signatures {
            let h: RawJwsHeader = serde_json::from_slice(&unb64(&s.protected, "JWS protected")?)
                .map_err(Error::malformed)?;
            if h.alg != "EdDSA" {
                return Err(Error::Unsupported(format!("JWS alg {:?}", h.alg)));
            }
            if let Some(typ) = &h.typ {
                if !media_type_matches(typ, SIGNED_TYP) {
                    return Err(Error::malformed(format!("JWS typ {typ:?}")));
                }
            }
            let unprotected_kid = s
                .header
                .as_ref()
                .and_then(|hd| hd.get("kid"))
                .and_then(Value::as_str);
            let kid = match (h.kid, unprotected_kid) {
                (Some(k), None) => k,
                (None, Some(k)) => k.to_owned(),
                // Both: accepted only when identical (spec/didcomm.md §3), so that the
                // key the signature commits to is the key we look up.
                (Some(k), Some(u)) if k == u => k,
                (Some(_), Some(_)) => {
                    return Err(Error::HeaderMismatch(
                        "JWS kid differs between the protected and unprotected header",
                    ))
                }
                (None, None) => return Err(Error::malformed("JWS signature without kid")),
            };
            let signature: [u8; 64] = unb64(&s.signature, "signature")?
                .try_into()
                .map_err(|_| Error::Crypto)?;
            signatures.push(JwsSignature {
                protected_b64: s.protected,
                kid,
                signature,
            });
        }
        Ok(Self {
            payload: unb64(&raw.payload, "payload")?,
            payload_b64: raw.payload,
            signatures,
        })
    }

    /// The signers' key ids, in envelope order.
    pub fn signer_kids(&self) -> impl Iterator<Item = &str> {
        self.signatures.iter().map(|s| s.kid.as_str())
    }

    /// The (unverified) payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Verify the signature made by `kid` with `key`; returns the payload.
    ///
    /// # Errors
    /// [`Error::Crypto`] if `kid` did not sign or the signature does not verify.
    pub fn verify(&self, kid: &str, key: &VerifyingKey) -> Result<&[u8]> {
        let s = self
            .signatures
            .iter()
            .find(|s| s.kid == kid)
            .ok_or(Error::Crypto)?;
        let input = format!("{}.{}", s.protected_b64, self.payload_b64);
        key.verify_strict(
            input.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&s.signature),
        )
        .map_err(|_| Error::Crypto)?;
        Ok(&self.payload)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kp() -> (StaticSecret, [u8; 32]) {
        let s = StaticSecret::random_from_rng(OsRng);
        let p = XPublic::from(&s).to_bytes();
        (s, p)
    }

    #[test]
    fn anoncrypt_all_encs_round_trip() {
        let (bs, bp) = kp();
        for enc in [
            ContentAlg::A256CbcHs512,
            ContentAlg::A256Gcm,
            ContentAlg::Xc20p,
        ] {
            let r = [RecipientKey {
                kid: "did:example:bob#k1",
                public: bp,
            }];
            let jwe = encrypt(b"hello", &r, None, enc).unwrap();
            let v: Value = serde_json::from_str(&jwe).unwrap();
            let parsed = Jwe::parse(&v).unwrap();
            assert_eq!(parsed.enc, enc);
            assert_eq!(
                parsed.decrypt("did:example:bob#k1", &bs, None).unwrap(),
                b"hello"
            );
        }
    }

    #[test]
    fn authcrypt_needs_right_sender_key() {
        let (bs, bp) = kp();
        let (as_, ap) = kp();
        let (_, other) = kp();
        let r = [RecipientKey {
            kid: "did:example:bob#k1",
            public: bp,
        }];
        let s = SenderKey {
            kid: "did:example:alice#k1",
            secret: &as_,
        };
        let jwe = encrypt(b"hi", &r, Some(&s), ContentAlg::A256CbcHs512).unwrap();
        let parsed = Jwe::parse(&serde_json::from_str(&jwe).unwrap()).unwrap();
        assert_eq!(parsed.sender_kid(), Some("did:example:alice#k1"));
        assert_eq!(
            parsed
                .decrypt("did:example:bob#k1", &bs, Some(&ap))
                .unwrap(),
            b"hi"
        );
        assert!(matches!(
            parsed.decrypt("did:example:bob#k1", &bs, Some(&other)),
            Err(Error::Crypto)
        ));
    }

    #[test]
    fn authcrypt_rejects_other_enc() {
        let (_, bp) = kp();
        let (as_, _) = kp();
        let r = [RecipientKey {
            kid: "did:example:bob#k1",
            public: bp,
        }];
        let s = SenderKey {
            kid: "did:example:alice#k1",
            secret: &as_,
        };
        assert!(matches!(
            encrypt(b"hi", &r, Some(&s), ContentAlg::Xc20p),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn low_order_epk_is_rejected() {
        let (bs, bp) = kp();
        let r = [RecipientKey {
            kid: "did:example:bob#k1",
            public: bp,
        }];
        let jwe = encrypt(b"x", &r, None, ContentAlg::A256CbcHs512).unwrap();
        let mut v: Value = serde_json::from_str(&jwe).unwrap();
        let h = unb64(v["protected"].as_str().unwrap(), "p").unwrap();
        let mut h: Value = serde_json::from_slice(&h).unwrap();
        h["epk"]["x"] = Value::String(b64(&[0u8; 32]));
        v["protected"] = Value::String(b64(h.to_string().as_bytes()));
        let parsed = Jwe::parse(&v).unwrap();
        assert!(matches!(
            parsed.decrypt("did:example:bob#k1", &bs, None),
            Err(Error::Crypto)
        ));
    }

    #[test]
    fn jws_round_trip_and_tamper() {
        let key = SigningKey::generate(&mut OsRng);
        let jws = sign(b"payload", "did:example:a#k", &key);
        let mut v: Value = serde_json::from_str(&jws).unwrap();
        let parsed = Jws::parse(&v).unwrap();
        assert_eq!(
            parsed
                .verify("did:example:a#k", &key.verifying_key())
                .unwrap(),
            b"payload"
        );
        v["payload"] = Value::String(b64(b"payloaD"));
        let parsed = Jws::parse(&v).unwrap();
        assert!(matches!(
            parsed.verify("did:example:a#k", &key.verifying_key()),
            Err(Error::Crypto)
        ));
    }
}
