//! `mpc-did invite ...` (being built; see the issue that owns it).

use crate::ctx::Ctx;

#[derive(clap::Args, Debug)]
pub struct InviteArgs {}

pub async fn run(_ctx: &Ctx, _args: InviteArgs) -> anyhow::Result<()> {
    anyhow::bail!("`mpc-did invite` is not built yet")
}
