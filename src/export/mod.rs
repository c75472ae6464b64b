//! The writable export side: a staging directory turned into an image.
//!
//! - [`staging`]: the durable staging area, one directory per entry.
//! - [`fs`]: the writable filesystem over it (copy-up from a `--from` base,
//!   whiteouts), plain Rust; `crate::fuse::export` links fuser to it.
//! - [`pack`] and [`compress`]: a deterministic tar, compressed and hashed
//!   in one pass, streamed to the upload as it is produced; [`estargz`]:
//!   the eStargz and zstd:chunked layouts (a member per chunk, TOC,
//!   footer); [`block`]: the piece of tar the tar side hands a compressor
//!   (both use it); [`stream_push`]: a packed layer uploaded as it is made.
//! - [`longpath`]: staging paths longer than one system call takes.
//! - [`image`]: the config and manifest; [`push`]: blobs then the manifest.
//! - [`commit`]: the whole commit, with progress, and [`Exporter`], the
//!   service the filesystem and the control socket share.

pub mod base;
pub mod block;
pub mod commit;
pub mod compress;
pub mod estargz;
pub mod fs;
pub mod image;
pub mod longpath;
pub mod pack;
pub mod push;
pub mod staging;
pub mod stream_push;
pub mod xattr;

pub use commit::{CommitOptions, CommitOutcome, CommitProgress, Exporter};
pub use compress::{Codec, Packed};
pub use image::ManifestFormat;
pub use staging::{EntryMeta, Staging};
