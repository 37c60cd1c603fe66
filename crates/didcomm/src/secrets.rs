//! Private keys, looked up by key id: the [`SecretsResolver`] trait and an in-memory
//! [`SecretStore`]. The wallet (or a test) decides where secrets live; this crate only asks.

use std::collections::HashMap;

use ed25519_dalek::SigningKey;
use serde_json::Value;
use x25519_dalek::StaticSecret;

use crate::error::{Error, Result};
use crate::jose::{parse_okp, unb64};

/// A private key of one of the types DIDComm needs here.
#[derive(Clone)]
#[non_exhaustive]
pub enum Secret {
    /// A keyAgreement key (ECDH-ES / ECDH-1PU).
    X25519(StaticSecret),
    /// An authentication key (EdDSA signatures).
    Ed25519(SigningKey),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        match self {
            Self::X25519(_) => f.write_str("Secret::X25519(..)"),
            Self::Ed25519(_) => f.write_str("Secret::Ed25519(..)"),
        }
    }
}

impl Secret {
    /// Parse a private OKP JWK (RFC 8037, with `d`). The public `x`, when present, must
    /// match `d`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for curves other than X25519/Ed25519, [`Error::Malformed`]
    /// for a bad or inconsistent key.
    pub fn from_jwk(jwk: &Value) -> Result<Self> {
        let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
        if crv != "X25519" && crv != "Ed25519" {
            return Err(Error::Unsupported(format!("secret key curve {crv:?}")));
        }
        let d = jwk
            .get("d")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::malformed("private JWK without d"))?;
        let d: [u8; 32] = unb64(d, "JWK d")?
            .try_into()
            .map_err(|_| Error::malformed("JWK d is not 32 bytes"))?;
        let (secret, public) = match crv {
            "X25519" => {
                let s = StaticSecret::from(d);
                let p = x25519_dalek::PublicKey::from(&s).to_bytes();
                (Self::X25519(s), p)
            }
            "Ed25519" => {
                let s = SigningKey::from_bytes(&d);
                let p = s.verifying_key().to_bytes();
                (Self::Ed25519(s), p)
            }
            other => return Err(Error::Unsupported(format!("secret key curve {other:?}"))),
        };
        if jwk.get("x").is_some() && parse_okp(jwk, crv)? != public {
            return Err(Error::malformed("JWK x does not match d"));
        }
        Ok(secret)
    }
}

/// Looks up our private keys by absolute key id (`did:…#fragment`).
pub trait SecretsResolver: Send + Sync {
    /// The secret for `kid`, if we hold it.
    fn secret(&self, kid: &str) -> Option<Secret>;
}

impl<T: SecretsResolver + ?Sized> SecretsResolver for &T {
    fn secret(&self, kid: &str) -> Option<Secret> {
        (**self).secret(kid)
    }
}

/// An in-memory map kid → secret.
#[derive(Clone, Default, Debug)]
pub struct SecretStore {
    map: HashMap<String, Secret>,
}

impl SecretStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) the secret for `kid`.
    pub fn insert(&mut self, kid: impl Into<String>, secret: Secret) {
        self.map.insert(kid.into(), secret);
    }

    /// Add a private JWK that carries its own `kid`.
    ///
    /// # Errors
    /// As [`Secret::from_jwk`], and [`Error::Malformed`] without a `kid`.
    pub fn insert_jwk(&mut self, jwk: &Value) -> Result<()> {
        let kid = jwk
            .get("kid")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::malformed("private JWK without kid"))?;
        let secret = Secret::from_jwk(jwk)?;
        self.insert(kid, secret);
        Ok(())
    }

    /// Add the two secrets of a `did:key` Ed25519 identity: the signing key under its
    /// authentication kid and the derived X25519 key under its keyAgreement kid (the
    /// did:key spec's derivation, as `mpc_did_resolver::key` resolves it). Returns the DID.
    pub fn insert_did_key(&mut self, signing: &SigningKey) -> String {
        use mpc_did_resolver::{key, PublicKey};
        let ed = signing.verifying_key().to_bytes();
        let did = key::did_from_ed25519(&ed);
        let x_secret =
            StaticSecret::from(key::x25519_secret_from_ed25519_seed(&signing.to_bytes()));
        let x_public = x25519_dalek::PublicKey::from(&x_secret).to_bytes();
        self.insert(
            format!("{did}#{}", PublicKey::Ed25519(ed).to_multibase()),
            Secret::Ed25519(signing.clone()),
        );
        self.insert(
            format!("{did}#{}", PublicKey::X25519(x_public).to_multibase()),
            Secret::X25519(x_secret),
        );
        did
    }

    /// Number of stored secrets.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl SecretsResolver for SecretStore {
    fn secret(&self, kid: &str) -> Option<Secret> {
        self.map.get(kid).cloned()
    }
}
