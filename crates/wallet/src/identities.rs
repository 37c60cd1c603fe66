//! Identity files: did:peer:2 creation, and exporting / importing an identity's keys
//! (`mpc-did id export` / `id import`, spec/identity.md §"Export and import").
//!
//! Export formats (one JSON object each, written to 0600 files by [`write_private_file`]):
//! - **`jwk`**: a JWK Set (RFC 7517 §5) of OKP keys (RFC 8037): the Ed25519
//!   authentication key and the X25519 keyAgreement key, each with `kid` (its DID URL) and,
//!   only when private keys are asked for, `d`. Extra members (allowed by RFC 7517 §5)
//!   say which identity it is: `did`, `name`, `services`.
//! - **`multibase`**: the same with `publicKeyMultibase` and, when private,
//!   `secretKeyMultibase` (multicodec `ed25519-priv` 0x1300 / `x25519-priv` 0x1302,
//!   base58btc).
//!
//! Import takes either export with private keys (the DID's document must list exactly
//! these public keys), a bare JWK Set with an Ed25519 private key (becomes a did:key), or
//! a seed: 64 hex characters, the Ed25519 seed of a did:key.

use std::io::Write as _;
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mpc_did_resolver::peer::{self, Purpose};
use mpc_did_resolver::{key, DidCommService, PublicKey};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use crate::{identity_from_record, Identity, IdentityRecord, Wallet, WalletError, RECORD_VERSION};

/// Multicodec `ed25519-priv` (0x1300) as a varint.
const ED25519_PRIV: [u8; 2] = [0x80, 0x26];
/// Multicodec `x25519-priv` (0x1302) as a varint.
const X25519_PRIV: [u8; 2] = [0x82, 0x26];
/// Largest key file [`Wallet::import_identity`] reads.
pub const MAX_KEY_FILE_BYTES: usize = 64 * 1024;

/// How [`Wallet::export_identity`] writes keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// A JWK Set (RFC 7517) of OKP keys (RFC 8037).
    Jwk,
    /// Multikey-style `publicKeyMultibase` / `secretKeyMultibase`.
    Multibase,
}

/// The did:peer:2 of a new identity: `V` Ed25519, `E` X25519, then the services with
/// relative ids `#didcomm-1`, `#didcomm-2`, … (did:peer spec: "service `id` attributes
/// MUST be relative").
pub(crate) fn did_peer_2(
    ed_pub: &[u8; 32],
    x_pub: &[u8; 32],
    services: &[DidCommService],
) -> Result<String, WalletError> {
    let services: Vec<Value> = services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({
                "id": format!("#didcomm-{}", i + 1),
                "type": mpc_did_resolver::DIDCOMM_SERVICE_TYPE,
                "serviceEndpoint": {"uri": s.uri, "accept": s.accept, "routingKeys": s.routing_keys},
            })
        })
        .collect();
    peer::did_peer_2(
        &[
            (Purpose::Verification, PublicKey::Ed25519(*ed_pub)),
            (Purpose::Encryption, PublicKey::X25519(*x_pub)),
        ],
        &services,
    )
    .map_err(|e| WalletError::Storage(format!("cannot encode the did:peer:2: {e}")))
}

/// Writes `contents` to `path` readable and writable by the owner only (0600), replacing
/// a previous file. The mode is set when the file is created, so the secret is never
/// readable by others, even briefly.
///
/// # Errors
/// [`WalletError::Io`].
pub fn write_private_file(path: &Path, contents: &[u8]) -> Result<(), WalletError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.create(true).truncate(true).write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(crate::io_err("cannot create", path))?;
    crate::set_mode(path, 0o600)?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(crate::io_err("cannot write", path))
}

impl Wallet {
    /// The identity's keys as JSON text in `format`; private keys only when `private`.
    ///
    /// # Errors
    /// [`WalletError::NoSuchIdentity`], storage errors.
    pub fn export_identity(
        &self,
        name: &str,
        format: ExportFormat,
        private: bool,
    ) -> Result<Zeroizing<String>, WalletError> {
        let id = self.identity(name)?;
        let seed = Zeroizing::new(id.signing_key.to_bytes());
        let x_secret = Zeroizing::new(id.agreement_secret.to_bytes());
        let entries = [
            (
                &id.auth_kid,
                PublicKey::Ed25519(id.ed25519_public()),
                &seed,
                ED25519_PRIV,
            ),
            (
                &id.agreement_kid,
                PublicKey::X25519(id.x25519_public()),
                &x_secret,
                X25519_PRIV,
            ),
        ];
        let mut keys = Vec::new();
        for (kid, public, secret, codec) in entries {
            let mut k = match format {
                ExportFormat::Jwk => public.to_jwk(),
                ExportFormat::Multibase => json!({"publicKeyMultibase": public.to_multibase()}),
            };
            if let Some(obj) = k.as_object_mut() {
                obj.insert("kid".into(), Value::String(kid.clone()));
                if private {
                    let (name, value) = match format {
                        ExportFormat::Jwk => ("d", URL_SAFE_NO_PAD.encode(secret.as_slice())),
                        ExportFormat::Multibase => {
                            let mut raw = Zeroizing::new(codec.to_vec());
                            raw.extend_from_slice(secret.as_slice());
                            (
                                "secretKeyMultibase",
                                format!("z{}", bs58::encode(raw.as_slice()).into_string()),
                            )
                        }
                    };
                    obj.insert(name.into(), Value::String(value));
                }
            }
            keys.push(k);
        }
        let out = json!({
            "did": id.did,
            "name": id.name,
            "services": id.services,
            "keys": keys,
        });
        let text =
            serde_json::to_string_pretty(&out).map_err(|e| WalletError::Storage(e.to_string()))?;
        Ok(Zeroizing::new(text + "\n"))
    }

    /// Imports an identity from a key file's text (see the module docs) under `name`
    /// (default: the file's `name`, else `imported`).
    ///
    /// # Errors
    /// [`WalletError::InvalidKeyFile`] naming what is wrong (no private key, keys that do
    /// not belong to the DID, unsupported DID method, malformed text),
    /// [`WalletError::IdentityExists`], [`WalletError::InvalidName`], storage errors.
    pub fn import_identity(&self, name: Option<&str>, text: &str) -> Result<Identity, WalletError> {
        if text.len() > MAX_KEY_FILE_BYTES {
            return Err(bad(format!("larger than {MAX_KEY_FILE_BYTES} bytes")));
        }
        let trimmed = text.trim();
        let parsed = if trimmed.len() == 64 && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(trimmed, seed.as_mut()).map_err(|_| bad("seed is not hex"))?;
            let ed_pub = ed25519_dalek::SigningKey::from_bytes(&seed)
                .verifying_key()
                .to_bytes();
            Parsed {
                did: key::did_from_ed25519(&ed_pub),
                name: None,
                seed,
                x_secret: Zeroizing::new([0; 32]),
                x_given: false,
                services: Vec::new(),
            }
        } else {
            parse_key_file(trimmed)?
        };
        let name = name
            .map(str::to_owned)
            .or_else(|| parsed.name.clone())
            .unwrap_or_else(|| "imported".to_owned());
        crate::validate_name(&name)?;
        let x_secret = if parsed.x_given {
            parsed.x_secret.clone()
        } else {
            // No X25519 key in the file: the did:key derivation from the seed.
            Zeroizing::new(key::x25519_secret_from_ed25519_seed(&parsed.seed))
        };
        let services = if parsed.did.starts_with("did:peer:") && parsed.services.is_empty() {
            peer::resolve(&parsed.did)
                .map(|d| d.didcomm_services())
                .unwrap_or_default()
        } else {
            parsed.services.clone()
        };
        let record = IdentityRecord {
            v: RECORD_VERSION,
            name: name.clone(),
            did: parsed.did.clone(),
            seq: self.db.generate_id()?,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ed25519_seed: hex::encode(parsed.seed.as_slice()),
            x25519_secret: hex::encode(x_secret.as_slice()),
            services,
        };
        // The keys must be the DID's: identity_from_record checks them against the
        // document (did:key, did:peer) or builds the document from them (did:web).
        let identity = identity_from_record(&record).map_err(|_| {
            bad(format!(
                "the private keys in the file do not belong to {}",
                parsed.did
            ))
        })?;
        let bytes = Zeroizing::new(
            serde_json::to_vec(&record).map_err(|e| WalletError::Storage(e.to_string()))?,
        );
        let swapped = self.identities.compare_and_swap(
            name.as_bytes(),
            None::<&[u8]>,
            Some(bytes.as_slice()),
        )?;
        if swapped.is_err() {
            return Err(WalletError::IdentityExists(name));
        }
        self.flush()?;
        Ok(identity)
    }
}

struct Parsed {
    did: String,
    name: Option<String>,
    seed: Zeroizing<[u8; 32]>,
    x_secret: Zeroizing<[u8; 32]>,
    x_given: bool,
    services: Vec<DidCommService>,
}

fn bad(reason: impl Into<String>) -> WalletError {
    WalletError::InvalidKeyFile(reason.into())
}

fn parse_key_file(text: &str) -> Result<Parsed, WalletError> {
    let v: Value = serde_json::from_str(text).map_err(|_| {
        bad("neither JSON (a JWK Set or an `id export` file) nor a 64-hex-digit seed")
    })?;
    let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
    let keys = obj
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"keys\" array"))?;
    let mut seed: Option<Zeroizing<[u8; 32]>> = None;
    let mut x: Option<Zeroizing<[u8; 32]>> = None;
    for k in keys.iter().take(16) {
        let Some(ko) = k.as_object() else { continue };
        let (curve, secret) = secret_of(ko)?;
        let Some(secret) = secret else { continue };
        let slot = match curve {
            Curve::Ed25519 => &mut seed,
            Curve::X25519 => &mut x,
        };
        if slot.is_some() {
            return Err(bad("more than one private key of the same curve"));
        }
        *slot = Some(secret);
    }
    let seed = seed.ok_or_else(|| {
        bad("no Ed25519 private key: export with `mpc-did id export NAME --private`")
    })?;
    let did = match obj.get("did") {
        Some(Value::String(d)) => d.clone(),
        Some(_) => return Err(bad("\"did\" is not a string")),
        None => {
            let ed_pub = ed25519_dalek::SigningKey::from_bytes(&seed)
                .verifying_key()
                .to_bytes();
            key::did_from_ed25519(&ed_pub)
        }
    };
    if !["did:key:", "did:peer:2", "did:web:"]
        .iter()
        .any(|p| did.starts_with(p))
    {
        return Err(bad(format!(
            "{did}: only did:key, did:peer:2 and did:web identities can be imported"
        )));
    }
    let services = match obj.get("services") {
        None | Some(Value::Null) => Vec::new(),
        Some(s) => serde_json::from_value(s.clone())
            .map_err(|_| bad("\"services\" is not a list of DIDComm services"))?,
    };
    let name = obj.get("name").and_then(Value::as_str).map(str::to_owned);
    Ok(Parsed {
        did,
        name,
        seed,
        x_given: x.is_some(),
        x_secret: x.unwrap_or_else(|| Zeroizing::new([0; 32])),
        services,
    })
}

/// A 32-byte private key, wiped on drop.
type Secret32 = Zeroizing<[u8; 32]>;

enum Curve {
    Ed25519,
    X25519,
}

/// The curve of one key entry and its private key, if it has one.
fn secret_of(ko: &Map<String, Value>) -> Result<(Curve, Option<Secret32>), WalletError> {
    let to32 = |raw: &[u8]| -> Result<Zeroizing<[u8; 32]>, WalletError> {
        let mut out = Zeroizing::new([0u8; 32]);
        if raw.len() != 32 {
            return Err(bad("a private key is not 32 bytes"));
        }
        out.copy_from_slice(raw);
        Ok(out)
    };
    if let Some(crv) = ko.get("crv").and_then(Value::as_str) {
        if ko.get("kty").and_then(Value::as_str) != Some("OKP") {
            return Err(bad("only OKP JWKs (Ed25519, X25519) are supported"));
        }
        let curve = match crv {
            "Ed25519" => Curve::Ed25519,
            "X25519" => Curve::X25519,
            other => {
                return Err(bad(format!(
                    "unsupported JWK curve {other} (Ed25519, X25519 only)"
                )))
            }
        };
        let secret = match ko.get("d").and_then(Value::as_str) {
            None => None,
            Some(d) => {
                let raw = Zeroizing::new(
                    URL_SAFE_NO_PAD
                        .decode(d)
                        .map_err(|_| bad("a JWK \"d\" is not base64url"))?,
                );
                Some(to32(&raw)?)
            }
        };
        return Ok((curve, secret));
    }
    if let Some(sk) = ko.get("secretKeyMultibase").and_then(Value::as_str) {
        let body = sk
            .strip_prefix('z')
            .ok_or_else(|| bad("secretKeyMultibase must be base58btc ('z')"))?;
        let raw = Zeroizing::new(
            bs58::decode(body)
                .into_vec()
                .map_err(|_| bad("secretKeyMultibase is not base58btc"))?,
        );
        let (curve, rest) = if let Some(r) = raw.strip_prefix(&ED25519_PRIV[..]) {
            (Curve::Ed25519, r)
        } else if let Some(r) = raw.strip_prefix(&X25519_PRIV[..]) {
            (Curve::X25519, r)
        } else {
            return Err(bad(
                "secretKeyMultibase is neither ed25519-priv nor x25519-priv",
            ));
        };
        return Ok((curve, Some(to32(rest)?)));
    }
    if let Some(pk) = ko.get("publicKeyMultibase").and_then(Value::as_str) {
        let curve = match PublicKey::from_multibase(pk) {
            Ok(PublicKey::Ed25519(_)) => Curve::Ed25519,
            Ok(PublicKey::X25519(_)) => Curve::X25519,
            Err(e) => return Err(bad(format!("publicKeyMultibase: {e}"))),
        };
        return Ok((curve, None));
    }
    Err(bad("a key entry is neither a JWK nor a multibase key"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Method;

    fn service() -> DidCommService {
        DidCommService {
            id: String::new(),
            uri: "https://mediator.example/didcomm".into(),
            accept: vec!["didcomm/v2".into()],
            routing_keys: vec!["did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp#z6LShs9GGnqk85isEBzzshkuVWrVKsRp24GnDuHk8QWkARMW".into()],
        }
    }

    #[test]
    fn export_import_round_trip_every_method_and_format() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let wa = Wallet::open(a.path()).unwrap();
        let wb = Wallet::open(b.path()).unwrap();
        let methods = [
            ("k", Method::Key),
            (
                "w",
                Method::Web {
                    domain: "example.com".into(),
                },
            ),
            (
                "p",
                Method::Peer {
                    services: vec![service()],
                },
            ),
        ];
        for (name, method) in methods {
            let orig = wa.create_identity(name, method).unwrap();
            for (i, format) in [ExportFormat::Jwk, ExportFormat::Multibase]
                .into_iter()
                .enumerate()
            {
                let public = wa.export_identity(name, format, false).unwrap();
                assert!(!public.contains("\"d\"") && !public.contains("secretKey"));
                assert!(matches!(
                    wb.import_identity(Some("x"), &public),
                    Err(WalletError::InvalidKeyFile(_))
                ));
                let private = wa.export_identity(name, format, true).unwrap();
                let new_name = format!("{name}{i}");
                let got = wb.import_identity(Some(&new_name), &private).unwrap();
                assert_eq!(got.did, orig.did);
                assert_eq!(got.signing_key.to_bytes(), orig.signing_key.to_bytes());
                assert_eq!(got.x25519_public(), orig.x25519_public());
                assert_eq!(got.document, orig.document);
                assert_eq!(got.services.len(), orig.services.len());
            }
        }
        // did:peer: the service is in the DID and in the identity.
        let p = wa.identity("p").unwrap();
        assert!(p.did.starts_with("did:peer:2.V"));
        assert_eq!(p.services[0].uri, "https://mediator.example/didcomm");
        assert_eq!(p.services[0].id, format!("{}#didcomm-1", p.did));
        assert_eq!(p.method(), "peer");
    }

    #[test]
    fn seed_and_bare_jwk_set_become_did_keys() {
        let home = tempfile::tempdir().unwrap();
        let w = Wallet::open(home.path()).unwrap();
        let seed = "00".repeat(32);
        let id = w.import_identity(Some("s"), &seed).unwrap();
        // did-resolver/tests/vectors/ed25519-x25519.json, seed 00…00.
        assert_eq!(
            id.did,
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
        );
        // RFC 8037 A.1's Ed25519 private key as a bare JWK Set.
        let set = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let id = w.import_identity(Some("j"), set).unwrap();
        assert_eq!(
            hex::encode(id.ed25519_public()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        assert!(matches!(
            w.import_identity(Some("j"), set),
            Err(WalletError::IdentityExists(_))
        ));
    }

    #[test]
    fn bad_key_files_are_typed() {
        let home = tempfile::tempdir().unwrap();
        let w = Wallet::open(home.path()).unwrap();
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"keys":[]}"#,
            r#"{"keys":[{"kty":"EC","crv":"P-256","d":"AA"}]}"#,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","d":"!!"}]}"#,
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","d":"AAAA"}]}"#,
            r#"{"did":"did:example:x","keys":[{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}]}"#,
        ] {
            assert!(
                matches!(
                    w.import_identity(Some("x"), bad),
                    Err(WalletError::InvalidKeyFile(_))
                ),
                "{bad}"
            );
        }
        // Keys that are not the DID's.
        let other = w.create_identity("o", Method::Key).unwrap();
        let text = w.export_identity("o", ExportFormat::Jwk, true).unwrap();
        let forged = text.replace(
            &other.did,
            "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        );
        let err = w.import_identity(Some("f"), &forged).unwrap_err();
        assert!(err.to_string().contains("do not belong"), "{err}");
    }

    #[test]
    fn private_file_is_0600() {
        let home = tempfile::tempdir().unwrap();
        let path = home.path().join("k.json");
        write_private_file(&path, b"secret").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
    }
}
