//! Extra TLS trust anchors for this process: root certificates added to the Mozilla set
//! (webpki-roots) wherever a party opens a TLS connection — did:web fetches, the mediator
//! client's HTTPS requests and WebSockets, the relay's `wss://` (spec/identity.md §3.4).
//!
//! The CLI installs them once at start-up (`mpc-did --ca-cert FILE`, `MPC_DID_CA_CERT`, or
//! the wallet's `ca-certs.pem`); every client built afterwards trusts them. No I/O besides
//! [`load_file`]; the crate's TLS users read [`extra_roots`].

use std::sync::RwLock;

use base64::Engine as _;

/// DER certificates added with [`add_roots`].
static EXTRA_ROOTS: RwLock<Vec<Vec<u8>>> = RwLock::new(Vec::new());

/// Why a CA certificate file was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The file could not be read.
    #[error("cannot read CA certificate file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file holds no certificate (PEM `CERTIFICATE` blocks or one DER certificate).
    #[error("{path} holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks or DER)")]
    Empty {
        /// The file.
        path: String,
    },
    /// A PEM block is not valid base64.
    #[error("{path}: certificate block {index} is not valid base64")]
    BadPem {
        /// The file.
        path: String,
        /// 1-based index of the block.
        index: usize,
    },
}

/// Adds DER root certificates for every TLS client built after this call.
pub fn add_roots(ders: impl IntoIterator<Item = Vec<u8>>) {
    if let Ok(mut r) = EXTRA_ROOTS.write() {
        merge_roots(&mut r, ders);
    }
}

/// Appends the certificates of `ders` that `roots` does not hold yet.
fn merge_roots(roots: &mut Vec<Vec<u8>>, ders: impl IntoIterator<Item = Vec<u8>>) {
    for d in ders {
        if !roots.contains(&d) {
            roots.push(d);
        }
    }
}

/// The DER root certificates added with [`add_roots`] (empty unless the program added some).
#[must_use]
pub fn extra_roots() -> Vec<Vec<u8>> {
    EXTRA_ROOTS.read().map(|r| r.clone()).unwrap_or_default()
}

/// The certificates in a PEM text (every `CERTIFICATE` block) or, if it is not PEM, the
/// bytes as one DER certificate. `name` labels errors.
///
/// # Errors
/// [`TrustError::Empty`] for an empty input or PEM without certificate blocks,
/// [`TrustError::BadPem`] for a block that is not base64.
pub fn parse_certificates(name: &str, bytes: &[u8]) -> Result<Vec<Vec<u8>>, TrustError> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let text = std::str::from_utf8(bytes)
        .ok()
        .filter(|t| t.contains("-----BEGIN"));
    let Some(text) = text else {
        // DER: a SEQUENCE (0x30) with a long length; anything else is not a certificate.
        if bytes.len() > 4 && bytes.first() == Some(&0x30) {
            return Ok(vec![bytes.to_vec()]);
        }
        return Err(TrustError::Empty { path: name.into() });
    };
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(BEGIN) {
        let body = &rest[start + BEGIN.len()..];
        let Some(end) = body.find(END) else {
            return Err(TrustError::BadPem {
                path: name.into(),
                index: out.len() + 1,
            });
        };
        let b64: String = body[..end]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| TrustError::BadPem {
                path: name.into(),
                index: out.len() + 1,
            })?;
        out.push(der);
        rest = &body[end + END.len()..];
    }
    if out.is_empty() {
        return Err(TrustError::Empty { path: name.into() });
    }
    Ok(out)
}

/// Reads a CA certificate file (PEM bundle or one DER certificate).
///
/// # Errors
/// The file cannot be read or holds no certificate ([`parse_certificates`]).
pub fn load_file(path: &std::path::Path) -> Result<Vec<Vec<u8>>, TrustError> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
        path: name.clone(),
        source,
    })?;
    parse_certificates(&name, &bytes)
}

/// Adds [`extra_roots`] to a reqwest client builder (the Mozilla roots stay).
///
/// # Errors
/// A stored root that reqwest does not accept as a certificate.
#[cfg(feature = "web")]
pub fn with_extra_roots(
    mut builder: reqwest::ClientBuilder,
) -> Result<reqwest::ClientBuilder, reqwest::Error> {
    for der in extra_roots() {
        builder = builder.add_root_certificate(reqwest::Certificate::from_der(&der)?);
    }
    Ok(builder)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_pem_bundles_and_der() {
        let a = base64::engine::general_purpose::STANDARD.encode([0x30, 0x82, 1, 2, 3, 4]);
        let pem = format!(
            "junk\n-----BEGIN CERTIFICATE-----\n{a}\n-----END CERTIFICATE-----\n\
             -----BEGIN CERTIFICATE-----\n{a}\n-----END CERTIFICATE-----\n"
        );
        let certs = parse_certificates("x", pem.as_bytes()).unwrap();
        assert_eq!(certs, vec![vec![0x30, 0x82, 1, 2, 3, 4]; 2]);
        assert_eq!(
            parse_certificates("x", &[0x30, 0x82, 1, 2, 3])
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            parse_certificates("x", b""),
            Err(TrustError::Empty { .. })
        ));
        assert!(matches!(
            parse_certificates("x", b"-----BEGIN PRIVATE KEY-----\nAA==\n"),
            Err(TrustError::Empty { .. })
        ));
        assert!(matches!(
            parse_certificates(
                "x",
                b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----"
            ),
            Err(TrustError::BadPem { index: 1, .. })
        ));
    }

    #[test]
    fn added_roots_are_deduplicated() {
        // On a local list: the process-wide one is shared by every test of this binary, and
        // these are not certificates (a client built meanwhile would refuse them).
        let mut r = vec![vec![2]];
        merge_roots(&mut r, [vec![1], vec![1], vec![2]]);
        assert_eq!(r, vec![vec![2], vec![1]]);
    }
}
