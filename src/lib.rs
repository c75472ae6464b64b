//! regfs: a container registry as a read-only filesystem.
//!
//! The crate follows the data path of `DESIGN.md`: [`registry`] speaks the
//! distribution v2 API and knows nothing of FUSE; [`image`] parses manifests and
//! configs; [`layer`] indexes layer tars and merges them; [`cache`] stores
//! verified content; [`fs`] is the filesystem core, testable without a mount;
//! [`fuse`] is the only module that names `fuser`.

pub mod blocking;
pub mod cache;
pub mod content;
pub mod digest;
pub mod error;
pub mod estargz;
pub mod export;
pub mod reference;
pub mod rfc3339;
pub mod telemetry;

pub use error::{Error, Result};
pub mod fs;
pub mod fuse;
pub mod image;
pub mod layer;
pub mod registry;

#[cfg(test)]
mod fs_over_memory_tests;
