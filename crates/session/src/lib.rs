//! Noise session protocol bound to DIDs: handshake over DIDComm and transport framing, with no I/O.
//!
//! (Skeleton: the issue that builds this crate replaces this page with what it owns, what it
//! must not touch, a flow diagram and a runnable example.)
#![forbid(unsafe_code)]
