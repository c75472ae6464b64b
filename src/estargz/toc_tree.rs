//! A verified TOC → a layer [`Tree`]: each TOC entry becomes an
//! [`Entry`] for the rules every layer format shares
//! ([`crate::layer::entries`]: normalised paths, implicit parents, last
//! entry wins, overlay-style whiteouts and opaque directories, hard links
//! sharing a node, limits), with regular files as [`FileData::Chunks`]
//! (further `chunk` entries appended to their file). The TOC file itself and
//! the landmark files are not part of the tree.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::toc::{Toc, TocEntry};
use super::{Format, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::entries::{Entry, EntryKind, TreeBuilder};
use crate::layer::tree::normalize;
use crate::layer::{Chunk, FileData, Limits, NodeId, NodeKind, Tree};

/// What a lazy layer needs besides the blob: its tree and where prefetching ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LazyIndex {
    /// Chunk compression.
    pub format: Format,
    /// Blob offset where chunk data ends (the TOC's start).
    pub data_end: u64,
    /// With a `.prefetch.landmark`: chunks starting before this blob offset are
    /// prioritised and prefetched.
    pub prefetch_end: Option<u64>,
    /// The layer's tree; files are [`FileData::Chunks`] of layer `layer`.
    pub tree: Tree,
}

/// Build the tree of a TOC whose chunk data ends at blob offset `data_end`,
/// tagging file contents with `layer`.
pub fn toc_to_tree(
    toc: &Toc,
    format: Format,
    data_end: u64,
    layer: u16,
    limits: &Limits,
) -> Result<LazyIndex> {
    if toc.entries.len() as u64 > limits.max_entries.saturating_mul(4) {
        return Err(Error::TooLarge(format!(
            "TOC with {} entries",
            toc.entries.len()
        )));
    }
    // Every member / frame start, to bound each chunk's compressed extent.
    let mut starts: Vec<u64> = toc
        .entries
        .iter()
        .filter(|e| e.offset > 0 && !is_zeros(e))
        .map(|e| e.offset as u64)
        .collect();
    starts.push(data_end);
    starts.sort_unstable();
    starts.dedup();
    let extent = |off: u64, end_offset: i64| -> Result<u64> {
        if off >= data_end {
            return Err(Error::invalid(format!(
                "TOC: chunk offset {off} beyond the data"
            )));
        }
        if end_offset > off as i64 && end_offset as u64 <= data_end {
            return Ok(end_offset as u64 - off);
        }
        let i = starts.partition_point(|&s| s <= off);
        Ok(starts[i] - off)
    };

    let mut b = TreeBuilder::new("TOC", limits);
    let mut prefetch_end = None;
    let mut last_file: Option<(NodeId, &str)> = None;
    for e in &toc.entries {
        let known = match &*e.chunk_type {
            "" | "data" => true,
            // containers/storage writes holes (runs of zeros) of zstd:chunked
            // files as chunks with no data.
            "zeros" => format == Format::ZstdChunked,
            _ => false,
        };
        if !known {
            return Err(Error::Unsupported(format!(
                "TOC: {}: chunk type {:?}",
                e.name, e.chunk_type
            )));
        }
        if e.kind == "chunk" {
            let Some((id, name)) = last_file else {
                return Err(Error::invalid("TOC: a chunk before any regular file"));
            };
            if !e.name.is_empty() && e.name != name {
                return Err(Error::invalid(format!(
                    "TOC: chunk of {} after {name}",
                    e.name
                )));
            }
            let FileData::Chunks { chunks, .. } = &b.node(id).content else {
                return Err(Error::invalid(format!(
                    "TOC: chunk of an empty file {name}"
                )));
            };
            let digest = parse_digest(&e.chunk_digest, &e.name)?;
            let chunk = entry_chunk(e, digest, &extent)?;
            let expected = chunks.last().map(|c| c.file_offset + c.size).unwrap_or(0);
            if chunk.file_offset != expected {
                return Err(Error::invalid(format!(
                    "TOC: {name}: chunks not contiguous"
                )));
            }
            b.push_chunk(id, chunk)?;
            continue;
        }
        last_file = None;
        let comps = normalize(e.name.as_bytes());
        if comps.len() == 1 {
            let n = comps[0];
            if n == PREFETCH_LANDMARK.as_bytes() {
                prefetch_end = Some(e.offset.max(0) as u64);
                b.skipped()?;
                continue;
            }
            if n == NO_PREFETCH_LANDMARK.as_bytes() || n == TOC_NAME.as_bytes() {
                b.skipped()?;
                continue;
            }
        }
        match entry(e, layer, &extent)? {
            Some(entry) => {
                if let Some(id) = b.add(entry)? {
                    last_file = Some((id, &*e.name));
                }
            }
            None => b.skipped()?,
        }
    }
    let mut tree = b.finish();
    // The last chunk of each file runs to the file's end (chunkSize 0).
    fix_sizes(&mut tree, limits.max_uncompressed)?;
    Ok(LazyIndex {
        format,
        data_end,
        prefetch_end,
        tree,
    })
}

/// Give each file's last chunk its size, check that the chunks tile the file,
/// and refuse holes over `max_hole` bytes (a hole's digest is checked by
/// hashing its zeros: that work is bounded).
fn fix_sizes(tree: &mut Tree, max_hole: u64) -> Result<()> {
    for n in tree.nodes_mut() {
        let size = n.size;
        if let FileData::Chunks { chunks, .. } = &mut n.content {
            let mut at = 0;
            let count = chunks.len();
            for (i, c) in chunks.iter_mut().enumerate() {
                if i + 1 == count && c.size == 0 {
                    c.size = size.saturating_sub(c.file_offset);
                }
                if c.file_offset != at {
                    return Err(Error::invalid("TOC: chunks not contiguous"));
                }
                if c.zeros && c.size > max_hole {
                    return Err(Error::TooLarge(format!(
                        "TOC: a hole of more than {max_hole} bytes"
                    )));
                }
                at = c.file_offset.saturating_add(c.size);
            }
            if at != size {
                return Err(Error::invalid(format!(
                    "TOC: chunks cover {at} bytes of a {size}-byte file"
                )));
            }
        }
    }
    Ok(())
}

/// A containers/storage hole: a chunk of zeros with no data in the blob.
fn is_zeros(e: &TocEntry) -> bool {
    e.chunk_type == "zeros"
}

/// The chunk entry `e` describes (for a regular file's entry, its first).
fn entry_chunk(
    e: &TocEntry,
    digest: Digest,
    extent: &dyn Fn(u64, i64) -> Result<u64>,
) -> Result<Chunk> {
    let zeros = is_zeros(e);
    let (blob_offset, blob_len, inner_offset) = if zeros {
        (0, 0, 0)
    } else {
        let off = non_neg(e.offset, "offset")?;
        (
            off,
            extent(off, e.end_offset)?,
            non_neg(e.inner_offset, "innerOffset")?,
        )
    };
    Ok(Chunk {
        file_offset: non_neg(e.chunk_offset, "chunkOffset")?,
        size: non_neg(e.chunk_size, "chunkSize")?,
        blob_offset,
        blob_len,
        inner_offset,
        digest,
        zeros,
    })
}

fn non_neg(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::invalid(format!("TOC: negative {what}")))
}

fn parse_digest(s: &str, name: &str) -> Result<Digest> {
    s.parse::<Digest>()
        .map_err(|_| Error::invalid(format!("TOC: {name}: bad or missing digest {s:?}")))
}

/// The entry `e` describes for the rules of [`crate::layer::entries`], or
/// `None` (with a warning) for a type we do not know.
fn entry<'t>(
    e: &'t TocEntry,
    layer: u16,
    extent: &dyn Fn(u64, i64) -> Result<u64>,
) -> Result<Option<Entry<'t>>> {
    let ty = match &*e.kind {
        "dir" => EntryKind::Node(NodeKind::Dir),
        "reg" => EntryKind::Node(NodeKind::File),
        "symlink" => EntryKind::Node(NodeKind::Symlink),
        "char" => EntryKind::Node(NodeKind::CharDev),
        "block" => EntryKind::Node(NodeKind::BlockDev),
        "fifo" => EntryKind::Node(NodeKind::Fifo),
        "hardlink" => EntryKind::HardLink,
        other => {
            tracing::warn!(name = %e.name, "skipping TOC entry of unknown type {other:?}");
            return Ok(None);
        }
    };
    let mut xattrs = Vec::with_capacity(e.xattrs.len());
    for (k, v) in &e.xattrs {
        let v = base64::engine::general_purpose::STANDARD
            .decode(v)
            .map_err(|_| Error::invalid(format!("TOC: {}: xattr {k} not base64", e.name)))?;
        xattrs.push((k.as_bytes().to_vec(), v));
    }
    let (mtime, mtime_nsec) = if e.modtime.is_empty() {
        (0, 0)
    } else {
        crate::rfc3339::parse(&e.modtime).unwrap_or_else(|| {
            tracing::warn!(name = %e.name, modtime = %e.modtime, "bad TOC modtime");
            (0, 0)
        })
    };
    // A negative owner does not fit 32 bits either: the rules make it 65534.
    let id = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
    let content = if ty == EntryKind::Node(NodeKind::File) && e.size > 0 {
        let digest = if !e.chunk_digest.is_empty() {
            parse_digest(&e.chunk_digest, &e.name)?
        } else if e.chunk_size == 0 {
            parse_digest(&e.digest, &e.name)?
        } else {
            return Err(Error::invalid(format!("TOC: {}: no chunkDigest", e.name)));
        };
        FileData::Chunks {
            layer,
            chunks: vec![entry_chunk(e, digest, extent)?],
        }
    } else {
        FileData::None
    };
    let dev = |v: i64| u32::try_from(v.max(0)).unwrap_or(u32::MAX);
    Ok(Some(Entry {
        mode: (e.mode & 0o7777) as u32,
        uid: id(e.uid),
        gid: id(e.gid),
        mtime,
        mtime_nsec,
        size: if ty == EntryKind::Node(NodeKind::File) {
            e.size
        } else {
            0
        },
        content,
        // The TOC's claim for the whole file (the TOC itself is verified);
        // a malformed one is just unknown, never an error.
        digest: (ty == EntryKind::Node(NodeKind::File))
            .then(|| e.digest.parse::<Digest>().ok())
            .flatten(),
        link: e.link_name.as_bytes(),
        rdev: (dev(e.dev_major), dev(e.dev_minor)),
        xattrs,
        ..Entry::new(e.name.as_bytes(), ty)
    }))
}
