//! Lazy formats: eStargz and zstd:chunked layers served one verified chunk
//! at a time (`estargz`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod estargz;
