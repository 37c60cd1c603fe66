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
}
