//! eStargz and zstd:chunked: layers that can be read one file at a time.
//!
//! A library of its own (no filesystem, no network): it recognises a lazily
//! servable layer from its descriptor's annotations ([`LazySpec`]), parses the
//! footer ([`footer`]), decodes and verifies the table of contents ([`toc`]),
//! turns it into a [`Tree`](crate::layer::Tree) whose files are
//! [`FileData::Chunks`](crate::layer::FileData::Chunks) ([`toc_tree`](mod@toc_tree)),
//! and decompresses and verifies one chunk ([`chunk`]).
//!
//! Trust: the TOC is believed only when it hashes to the digest the (verified)
//! manifest names in an annotation; each chunk only when it hashes to its
//! `chunkDigest` in that TOC. A layer without those annotations is not lazy.
//!
//! Formats (from the specifications, not guessed):
//! - eStargz (containerd/stargz-snapshotter `docs/estargz.md`): a gzip tar
//!   whose regular files start new gzip members; the last tar entry is the TOC
//!   `stargz.index.json`; a 51-byte footer (an empty gzip member) holds the
//!   TOC's offset in its extra field. Annotation
//!   `containerd.io/snapshot/stargz/toc.digest` = sha256 of the TOC JSON.
//! - zstd:chunked (containers/storage `pkg/chunked`, stargz-snapshotter
//!   `estargz/zstdchunked`): zstd frames instead of gzip members; the TOC is a
//!   zstd frame inside a skippable frame, located by the annotation
//!   `…zstd-chunked.manifest-position` = `offset:length:lengthUncompressed:type`
//!   and verified by `…zstd-chunked.manifest-checksum` (sha256 of the
//!   compressed bytes at that position).

pub mod chunk;
pub mod footer;
pub mod toc;
pub mod toc_tree;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image::BlobRef;
use crate::layer::Compression;

pub use chunk::decode_chunk;
pub use footer::{parse_footer, tail_fetch_size, FOOTER_SIZE, LEGACY_FOOTER_SIZE};
pub use toc::{Toc, TocEntry};
pub use toc_tree::{toc_to_tree, LazyIndex};

/// The descriptor annotation holding the sha256 of the eStargz TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// zstd:chunked manifest checksum annotations (containers/storage, stargz-snapshotter).
pub const ZSTD_CHECKSUM_ANNOTATIONS: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
];
/// zstd:chunked manifest position annotations (containers/storage, stargz-snapshotter).
pub const ZSTD_POSITION_ANNOTATIONS: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
];
/// The TOC's name inside an eStargz tar (hidden from the tree).
pub const TOC_NAME: &str = "stargz.index.json";
/// Files before this landmark (in TOC order) are prefetched.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Present when no file is prioritised.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The largest TOC we fetch (compressed) or decode (uncompressed).
pub const MAX_TOC_SIZE: u64 = 256 << 20;

/// How the chunks of a lazy layer are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Format {
    /// Gzip members (eStargz).
    Estargz,
    /// Zstd frames (zstd:chunked).
    ZstdChunked,
}

/// Where a lazy layer's TOC is and what it must hash to, from the descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LazySpec {
    /// eStargz: TOC located by the footer, JSON verified by `toc_digest`.
    Estargz {
        /// The `toc.digest` annotation.
        toc_digest: Digest,
    },
    /// zstd:chunked: TOC at `offset..offset+length` (compressed), verified by
    /// `checksum`; its JSON also by `toc_digest` when that annotation is there.
    ZstdChunked {
        /// Offset of the compressed TOC in the blob.
        offset: u64,
        /// Compressed length.
        length: u64,
        /// Uncompressed length.
        length_uncompressed: u64,
        /// sha256 of the compressed TOC bytes.
        checksum: Digest,
        /// The optional `toc.digest` annotation (sha256 of the JSON).
        toc_digest: Option<Digest>,
    },
}

impl LazySpec {
    /// The lazy description of `desc`, or `None` when the layer must be served
    /// whole (no annotations, malformed annotations, another media type).
    pub fn from_descriptor(desc: &BlobRef) -> Option<LazySpec> {
        let a = &desc.annotations;
        let get = |keys: &[&str]| keys.iter().find_map(|k| a.get(*k));
        let toc_digest = a
            .get(TOC_DIGEST_ANNOTATION)
            .and_then(|v| v.parse::<Digest>().ok());
        match Compression::from_media_type(&desc.media_type).ok()? {
            Compression::Gzip => Some(LazySpec::Estargz {
                toc_digest: toc_digest?,
            }),
            Compression::Zstd => {
                let checksum = get(&ZSTD_CHECKSUM_ANNOTATIONS)?.parse::<Digest>().ok()?;
                let pos = get(&ZSTD_POSITION_ANNOTATIONS)?;
                let f: Vec<u64> = pos
                    .split(':')
                    .map(|p| p.parse::<u64>())
                    .collect::<Result<_, _>>()
                    .ok()?;
                // offset:length:lengthUncompressed:type (type 1 = the JSON TOC)
                if f.len() != 4 || f[3] != 1 {
                    tracing::warn!(digest = %desc.digest, position = %pos, "unsupported zstd:chunked manifest position; serving the layer whole");
                    return None;
                }
                let end = f[0].checked_add(f[1])?;
                if end > desc.size || f[1] > MAX_TOC_SIZE || f[2] > MAX_TOC_SIZE {
                    tracing::warn!(digest = %desc.digest, position = %pos, "zstd:chunked manifest position out of range; serving the layer whole");
                    return None;
                }
                Some(LazySpec::ZstdChunked {
                    offset: f[0],
                    length: f[1],
                    length_uncompressed: f[2],
                    checksum,
                    toc_digest,
                })
            }
            _ => None,
        }
    }

    /// The chunk compression.
    pub fn format(&self) -> Format {
        match self {
            LazySpec::Estargz { .. } => Format::Estargz,
            LazySpec::ZstdChunked { .. } => Format::ZstdChunked,
        }
    }

    /// The digest that anchors trust in the TOC (and names its cached index).
    pub fn anchor(&self) -> &Digest {
        match self {
            LazySpec::Estargz { toc_digest } => toc_digest,
            LazySpec::ZstdChunked { checksum, .. } => checksum,
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
