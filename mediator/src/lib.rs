//! DIDComm v2 mediator with STUN and relay services.
#![forbid(unsafe_code)]

pub mod store;
pub mod testkit;
