//! `mpc-did resolve ...` (being built; see the issue that owns it).

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
pub struct ResolveArgs {}

pub async fn run(_ctx: &Ctx, _args: ResolveArgs) -> anyhow::Result<()> {
    anyhow::bail!("`mpc-did resolve` is not built yet")
}
