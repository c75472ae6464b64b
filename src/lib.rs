//! regfs: a container registry as a read-only filesystem.
//!
//! In the order a read travels (the README's map of `src/` says more):
//! [`fuse`] is the only module that names `fuser`, thin adapters over
//! [`fs`], the filesystem core, testable without a mount; [`content`] fetches
//! every kind of content once, verified, into [`cache`]; [`layer`] and
//! [`estargz`] turn layer blobs into trees by one set of entry rules;
//! [`image`] parses manifests and configs; [`registry`] speaks the
//! distribution v2 API behind the [`registry::RegistryApi`] seam and knows
//! nothing of FUSE. [`export`] is the writable side; [`als`] shows the layers
//! as a containers/storage additional layer store.

pub mod als;
pub mod blocking;
pub mod cache;
pub mod content;
pub mod diff;
pub mod digest;
pub mod error;
pub mod estargz;
pub mod exec_deps;
pub mod export;
pub mod reference;
pub mod rfc3339;
pub mod telemetry;

pub use error::{Error, Result};
pub mod fs;
pub mod fuse;
pub mod handover;
pub mod image;
pub mod layer;
pub mod registry;

#[cfg(test)]
mod fs_over_memory_tests;
