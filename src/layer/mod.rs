//! Layer tars: decompression, streaming index, whiteout merge.
//!
//! - [`compression`]: media type → codec, streaming decoders.
//! - [`tree`]: the in-memory, serialisable [`Tree`] of one layer or of a
//!   merged rootfs, and [`read_content`] to serve a file's bytes from the
//!   uncompressed layer tars.
//! - [`entries`]: the rules that decide what a user sees of a layer
//!   (whiteouts, implicit parents, hard links, duplicates, hostile names,
//!   limits), applied by one [`TreeBuilder`] that every format feeds.
//! - [`index`]: [`index_tar`] builds a layer's tree from its tar in one
//!   streaming pass, feeding tar members to a [`TreeBuilder`].
//! - [`ingest`](mod@ingest): [`ingest()`] hashes, decompresses, stores and
//!   indexes a fetched layer blob in one pass, checking both digests.
//! - [`span`]: the span index of a gzip layer (zlib checkpoints + span
//!   digests) for random access by Range requests; [`zran`] its FFI core;
//!   [`span_windows`] its windows as a blob apart, fetched one at a time.
//! - [`merge`](mod@merge): [`merge()`] applies OCI whiteouts across layers.
//!
//! Pure Rust: no FUSE, no network, no async.

pub mod compression;
pub mod entries;
pub mod index;
pub mod ingest;
pub mod merge;
pub mod resolve;
pub mod span;
pub mod span_windows;
pub mod tree;
pub mod zran;

pub use compression::Compression;
pub use entries::{Entry, EntryKind, Limits, TreeBuilder};
pub use index::index_tar;
pub use ingest::{ingest, ingest_spans, BlobCheck, IngestStats};
pub use merge::merge;
pub use tree::{
    normalize, read_content, read_full_at, Chunk, FileData, Node, NodeId, NodeKind, ReadAt,
    Segment, Tree, DIGEST_XATTR, OPAQUE_XATTR, USER_OPAQUE_XATTR,
};

#[cfg(test)]
pub(crate) mod testutil;
