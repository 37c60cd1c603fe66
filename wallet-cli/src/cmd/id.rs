//! `mpc-did id ...` (being built; see the issue that owns it).

use crate::ctx::Ctx;

#[derive(clap::Subcommand, Debug)]
pub enum IdCommand {}

pub async fn run(_ctx: &Ctx, cmd: IdCommand) -> anyhow::Result<()> {
    match cmd {}
}
