//! Benchmarks for mpc-did. The criterion benches live in `benches/benches/*.rs`; this library
//! holds helpers they share. Figures go into the README's benchmark table, always as ratios
//! against a baseline measured in the same run.
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
