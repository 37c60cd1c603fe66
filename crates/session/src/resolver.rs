//! The crypto snow runs the handshake with: ring's hash, cipher and RNG, as with snow's own
//! `ring-accelerated` default, but X25519 keys held in zeroizing memory.
//!
//! snow 0.10 zeroizes nothing: its `Dh25519` keeps a static or ephemeral secret in a plain
//! array, so a dropped handshake state would leave both secrets in freed memory — where a
//! later memory dump could find the ephemerals that forward secrecy rests on
//! (spec/security.md §2). Here they live in `x25519_dalek::StaticSecret`, erased on drop.

use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::{ZeroizeOnDrop, Zeroizing};

/// Resolves X25519 to [`ZeroizingX25519`] and everything else to ring.
pub(crate) struct ZeroizingResolver;

impl CryptoResolver for ZeroizingResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        RingResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        match choice {
            DHChoice::Curve25519 => Some(Box::new(ZeroizingX25519::default())),
            _ => None,
        }
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        RingResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

/// An X25519 key pair for snow whose secret is zeroized on drop (and when replaced).
#[derive(ZeroizeOnDrop)]
pub(crate) struct ZeroizingX25519 {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl Default for ZeroizingX25519 {
    fn default() -> Self {
        Self {
            secret: x25519_dalek::StaticSecret::from([0u8; 32]),
            public: [0u8; 32],
        }
    }
}

impl Dh for ZeroizingX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let n = privkey.len().min(32);
        if let (Some(dst), Some(src)) = (bytes.get_mut(..n), privkey.get(..n)) {
            dst.copy_from_slice(src);
        }
        // The old secret is dropped, hence zeroized, by the assignment.
        self.secret = x25519_dalek::StaticSecret::from(*bytes);
        self.public = x25519_dalek::PublicKey::from(&self.secret).to_bytes();
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(&mut bytes[..])?;
        self.set(&bytes[..]);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        let their: [u8; 32] = pubkey
            .get(..32)
            .and_then(|p| p.try_into().ok())
            .ok_or(snow::Error::Dh)?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(their));
        out.get_mut(..32)
            .ok_or(snow::Error::Dh)?
            .copy_from_slice(shared.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn zeroized_on_drop<T: ZeroizeOnDrop>() {}

    #[test]
    fn handshake_secrets_are_held_in_zeroizing_memory() {
        // Compile-time: snow's handshake state holds the static and ephemeral secrets in
        // this type (`resolve_dh`), whose drop zeroizes them.
        zeroized_on_drop::<ZeroizingX25519>();
        let dh = ZeroizingResolver.resolve_dh(&DHChoice::Curve25519).unwrap();
        assert_eq!(dh.name(), "25519");
    }

    #[test]
    fn agrees_with_snows_own_x25519() {
        // RFC 7748 §6.1 (Alice's and Bob's keys); tests/vectors.rs checks whole handshakes
        // against snow's default resolver.
        let a = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap();
        let b_pub = hex::decode("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
            .unwrap();
        let mut dh = ZeroizingX25519::default();
        dh.set(&a);
        assert_eq!(
            hex::encode(dh.pubkey()),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let mut out = [0u8; 32];
        dh.dh(&b_pub, &mut out).unwrap();
        assert_eq!(
            hex::encode(out),
            "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"
        );
        assert!(dh.dh(&b_pub[..31], &mut out).is_err());
    }
}
