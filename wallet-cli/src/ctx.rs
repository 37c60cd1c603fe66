//! What every command needs: where the wallet lives and how to print.

use std::path::PathBuf;

use anyhow::Context as _;

/// Global options resolved once per invocation.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The wallet directory (`--home`, else `$MPC_DID_HOME`, else the platform data dir).
    pub home: PathBuf,
    /// Print JSON for scripts instead of human-readable text.
    pub json: bool,
}

impl Ctx {
    pub fn new(home: Option<PathBuf>, json: bool) -> anyhow::Result<Self> {
        let home = match home {
            Some(h) => h,
            None => match std::env::var_os("MPC_DID_HOME") {
                Some(h) if !h.is_empty() => PathBuf::from(h),
                _ => dirs::data_dir()
                    .map(|d| d.join("mpc-did"))
                    .context("no home directory found: pass --home DIR or set MPC_DID_HOME")?,
            },
        };
        Ok(Self { home, json })
    }

    /// Adds the extra TLS roots — `--ca-cert` / `MPC_DID_CA_CERT` files and the wallet's
    /// `ca-certs.pem` — to every TLS client this process builds (Mozilla roots stay).
    pub fn install_trust(&self, files: &[PathBuf]) -> anyhow::Result<()> {
        for path in files {
            let certs =
                mpc_did_resolver::trust::load_file(path).context("--ca-cert / MPC_DID_CA_CERT")?;
            mpc_did_resolver::trust::add_roots(certs);
        }
        let wallet_roots = self.home.join(WALLET_CA_CERTS);
        if wallet_roots.exists() {
            let certs = mpc_did_resolver::trust::load_file(&wallet_roots)
                .context("the wallet's trusted CA certificates")?;
            mpc_did_resolver::trust::add_roots(certs);
        }
        Ok(())
    }
}

/// The wallet's trust setting: PEM root certificates in this file of the wallet directory
/// are trusted as `--ca-cert` ones are.
pub const WALLET_CA_CERTS: &str = "ca-certs.pem";
