//! Built-in TLS for the public port (`tls_cert` / `tls_key`, spec/mediator.md §10): a
//! rustls server whose certificate is swapped in place when the files change (checked
//! every few seconds) or on SIGHUP, so a renewal (certbot, an ACME client) needs no
//! restart. A reload that fails keeps the certificate in force and logs why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate files' modification times are checked.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The certificate in force, replaced by [`TlsFiles::reload`].
#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

/// The certificate and key files, and the certificate loaded from them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<RwLock<Current>>,
}

impl TlsFiles {
    /// Loads `cert` (PEM chain, leaf first) and `key` (PEM private key).
    ///
    /// # Errors
    /// A file cannot be read, holds no certificate or key, or the key does not fit.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let (k, stamp) = load_pair(cert, key)?;
        Ok(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: Arc::new(RwLock::new(Current { key: k, stamp })),
        })
    }

    /// Reads the files again and uses them from the next handshake on. Open connections
    /// keep their session.
    ///
    /// # Errors
    /// As [`Self::load`]; the previous certificate stays in force.
    pub fn reload(&self) -> Result<(), String> {
        let (k, stamp) = load_pair(&self.cert, &self.key)?;
        if let Ok(mut c) = self.current.write() {
            *c = Current { key: k, stamp };
        }
        Ok(())
    }

    /// Reloads when a file's modification time changed since the last load.
    pub fn reload_if_changed(&self) {
        let now = (mtime(&self.cert), mtime(&self.key));
        let before = self.current.read().map(|c| c.stamp).ok();
        if before == Some(now) {
            return;
        }
        match self.reload() {
            Ok(()) => {
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded (files changed)")
            }
            Err(e) => {
                // Remember the stamp so a half-written file is not retried in a loop; the
                // next change (or SIGHUP) tries again.
                if let Ok(mut c) = self.current.write() {
                    c.stamp = now;
                }
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in force");
            }
        }
    }

    /// A rustls server configuration answering with the current certificate; ALPN offers
    /// HTTP/2 and HTTP/1.1 (WebSocket clients use the latter).
    ///
    /// # Errors
    /// rustls refuses the protocol versions (does not happen with the ring provider).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Watches the files until `stop`.
    pub async fn watch(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(WATCH_INTERVAL) => self.reload_if_changed(),
            }
        }
    }
}

impl ResolvesServerCert for TlsFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

type Stamp = (Option<SystemTime>, Option<SystemTime>);

fn load_pair(cert: &Path, key: &Path) -> Result<(Arc<CertifiedKey>, Stamp), String> {
    let stamp = (mtime(cert), mtime(key));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "tls_cert {}: no PEM certificate in the file",
            cert.display()
        ));
    }
    let der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "tls_key {} does not belong to tls_cert {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok((Arc::new(certified), stamp))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn load_reload_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(dir.path(), "one");
        let (c2, k2) = pair(dir.path(), "two");
        let t = TlsFiles::load(&c1, &k1).unwrap();
        t.server_config().unwrap();
        let first = t.current.read().unwrap().key.cert[0].clone();
        // A key that does not belong to the certificate.
        let err = TlsFiles::load(&c1, &k2).unwrap_err();
        assert!(
            err.contains("does not belong") && err.contains("two.key"),
            "{err}"
        );
        // Missing files and files without PEM.
        let err = TlsFiles::load(&dir.path().join("nope.pem"), &k1).unwrap_err();
        assert!(err.contains("nope.pem"), "{err}");
        std::fs::write(dir.path().join("empty.pem"), "hello").unwrap();
        let err = TlsFiles::load(&dir.path().join("empty.pem"), &k1).unwrap_err();
        assert!(err.contains("empty.pem"), "{err}");
        // A failed reload keeps the certificate in force; a good one replaces it.
        std::fs::copy(&k2, &k1).unwrap();
        assert!(t.reload().is_err());
        assert_eq!(t.current.read().unwrap().key.cert[0], first);
        std::fs::copy(&c2, &c1).unwrap();
        t.reload().unwrap();
        assert_ne!(t.current.read().unwrap().key.cert[0], first);
    }
}
