//! Local socket proxy between MPyC TCP connections and secure session streams.
//!
//! (Skeleton: the issue that builds this crate replaces this page with what it owns, what it
//! must not touch, a flow diagram and a runnable example.)
#![forbid(unsafe_code)]
