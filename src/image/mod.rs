//! The image model: manifests, indexes, configs and platforms, parsed from the
//! bytes the registry served. Typed, pure, no I/O: every digest named here is
//! checked by whoever fetches the bytes it names.

pub mod config;
pub mod manifest;
pub mod media_type;
pub mod platform;

pub use config::ImageConfig;
pub use manifest::{BlobRef, ImageManifest, IndexEntry, Manifest};
pub use platform::Platform;
