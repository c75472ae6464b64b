//! Tools of regfs's benchmarks (`scripts/bench`), std only: [`link`], one
//! direction of an emulated network link (delay and bandwidth), and
//! [`proxy`], a TCP proxy on loopback that applies a pair of them; the
//! `latency-proxy` binary runs one.

pub mod link;
pub mod proxy;
