//! One module per command group; each owns its clap arguments and its `run`.

pub mod didcomm;
pub mod id;
pub mod invite;
pub mod resolve;
