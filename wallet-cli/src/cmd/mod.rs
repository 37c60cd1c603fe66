//! One module per command group; each owns its clap arguments and its `run`.

pub mod agent_ctx;
pub mod bench;
pub mod bench_peer;
pub mod demo;
pub mod didcomm;
pub mod id;
pub mod inbox;
pub mod invite;
pub mod mediator;
pub mod mpc;
pub mod pipe;
pub mod resolve;
pub mod send;
pub mod session;
