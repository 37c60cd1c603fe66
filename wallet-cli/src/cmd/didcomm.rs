//! `mpc-did didcomm ...` (being built; see the issue that owns it).

use crate::ctx::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum DidcommCommand {}

pub async fn run(_ctx: &Ctx, cmd: DidcommCommand) -> anyhow::Result<()> {
    match cmd {}
}
