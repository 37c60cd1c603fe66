//! STUN codec, relay frame codec, candidate gathering and path selection, with no I/O.
//!
//! (Skeleton: the issue that builds this crate replaces this page with what it owns, what it
//! must not touch, a flow diagram and a runnable example.)
#![forbid(unsafe_code)]
