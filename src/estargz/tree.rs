//! A verified TOC → a layer [`Tree`], by the rules of
//! [`crate::layer::index`] (normalised paths, implicit parents, last entry
//! wins, overlay-style whiteouts and opaque directories, hard links sharing a
//! node), with regular files as [`Content::Chunks`]. The TOC file itself and
//! the landmark files are not part of the tree.

use base64::Engine;
use serde::{Deserialize, Serialize};

use super::toc::{Toc, TocEntry};
use super::{Format, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::tree::{normalize, normalize_strict, Builder};
use crate::layer::{Chunk, Content, Kind, Limits, Node, NodeId, Tree};

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
    /// The layer's tree; files are [`Content::Chunks`] of layer `layer`.
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

    let mut b = TreeBuilder {
        b: Builder::new(),
        max_nodes: limits.max_entries.saturating_mul(2).saturating_add(4096),
    };
    let mut prefetch_end = None;
    let mut last_file: Option<(NodeId, String)> = None;
    for e in &toc.entries {
        let known = match e.chunk_type.as_str() {
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
        if e.name.len() > limits.max_name_len || e.link_name.len() > limits.max_name_len {
            return Err(Error::TooLarge("TOC: a name beyond the limit".into()));
        }
        if e.kind == "chunk" {
            let Some((id, name)) = &last_file else {
                return Err(Error::invalid("TOC: a chunk before any regular file"));
            };
            if !e.name.is_empty() && e.name != *name {
                return Err(Error::invalid(format!(
                    "TOC: chunk of {} after {name}",
                    e.name
                )));
            }
            let Content::Chunks { chunks, .. } = &mut b.b.node_mut(*id).content else {
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
            chunks.push(chunk);
            continue;
        }
        let comps = normalize(e.name.as_bytes());
        if comps.len() == 1 {
            let n = comps[0];
            if n == PREFETCH_LANDMARK.as_bytes() {
                prefetch_end = Some(e.offset.max(0) as u64);
                continue;
            }
            if n == NO_PREFETCH_LANDMARK.as_bytes() || n == TOC_NAME.as_bytes() {
                continue;
            }
        }
        last_file = None;
        if let Some(id) = b.entry(e, layer, &extent)? {
            last_file = Some((id, e.name.clone()));
        }
    }
    let mut tree = b.b.finish();
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
        if let Content::Chunks { chunks, .. } = &mut n.content {
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

struct TreeBuilder {
    b: Builder,
    max_nodes: u64,
}

impl TreeBuilder {
    fn add(&mut self, node: Node) -> Result<NodeId> {
        if self.b.nodes.len() as u64 >= self.max_nodes {
            return Err(Error::TooLarge("TOC: too many nodes".into()));
        }
        Ok(self.b.add(node))
    }

    /// The directory at `comps`, creating implicit directories and replacing
    /// non-directories on the way (a replaced whiteout makes it opaque).
    fn ensure_dir(&mut self, comps: &[&[u8]]) -> Result<NodeId> {
        let mut id = 0;
        for c in comps {
            id = match self.b.child(id, c) {
                Some(x) if self.b.node(x).is_dir() => x,
                existing => {
                    let mut dir = Node::implicit_dir();
                    if existing.is_some_and(|x| self.b.node(x).whiteout) {
                        dir.set_opaque(true);
                    }
                    let new = self.add(dir)?;
                    self.b.set_child(id, c, new);
                    new
                }
            };
        }
        Ok(id)
    }

    fn find(&self, comps: &[&[u8]]) -> Option<NodeId> {
        let mut id = 0;
        for c in comps {
            if !self.b.node(id).is_dir() {
                return None;
            }
            id = self.b.child(id, c)?;
        }
        Some(id)
    }

    /// Add one non-chunk entry; returns the node of a non-empty regular file
    /// (further `chunk` entries attach to it).
    fn entry(
        &mut self,
        e: &TocEntry,
        layer: u16,
        extent: &dyn Fn(u64, i64) -> Result<u64>,
    ) -> Result<Option<NodeId>> {
        let kind = match e.kind.as_str() {
            "dir" => Some(Kind::Dir),
            "reg" => Some(Kind::File),
            "symlink" => Some(Kind::Symlink),
            "char" => Some(Kind::CharDev),
            "block" => Some(Kind::BlockDev),
            "fifo" => Some(Kind::Fifo),
            "hardlink" => None,
            other => {
                tracing::warn!(name = %e.name, "skipping TOC entry of unknown type {other:?}");
                return Ok(None);
            }
        };
        let comps = normalize(e.name.as_bytes());
        let meta = Meta::of(e)?;
        let Some((&name, parent)) = comps.split_last() else {
            if kind == Some(Kind::Dir) {
                meta.apply_dir(self.b.node_mut(0));
            }
            return Ok(None);
        };
        if let Some(rest) = name.strip_prefix(b".wh.") {
            let dir = self.ensure_dir(parent)?;
            if rest == b".wh..opq" {
                self.b.node_mut(dir).set_opaque(true);
                return Ok(None);
            }
            if rest.starts_with(b".wh.") || rest.is_empty() || rest == b"." || rest == b".." {
                return Ok(None);
            }
            match self.b.child(dir, rest) {
                None => {
                    let w = Node {
                        whiteout: true,
                        mtime: meta.mtime.0,
                        mtime_nsec: meta.mtime.1,
                        ..Node::new(Kind::CharDev, 0)
                    };
                    let id = self.add(w)?;
                    self.b.set_child(dir, rest, id);
                }
                Some(x) if self.b.node(x).is_dir() => self.b.node_mut(x).set_opaque(true),
                Some(_) => {}
            }
            return Ok(None);
        }
        let Some(kind) = kind else {
            // A hard link: the same node as an earlier non-directory.
            let target = normalize_strict(e.link_name.as_bytes())
                .and_then(|t| self.find(&t))
                .filter(|&t| !self.b.node(t).is_dir() && !self.b.node(t).whiteout);
            match target {
                Some(t) => {
                    let dir = self.ensure_dir(parent)?;
                    self.b.set_child(dir, name, t);
                }
                None => {
                    tracing::warn!(name = %e.name, target = %e.link_name, "skipping a hard link to a missing target")
                }
            }
            return Ok(None);
        };
        let dir = self.ensure_dir(parent)?;
        if kind == Kind::Dir {
            match self.b.child(dir, name) {
                Some(x) if self.b.node(x).is_dir() => meta.apply_dir(self.b.node_mut(x)),
                existing => {
                    let opaque = existing.is_some_and(|x| self.b.node(x).whiteout);
                    let mut n = Node::new(Kind::Dir, 0);
                    meta.apply_dir(&mut n);
                    if opaque {
                        n.set_opaque(true);
                    }
                    let id = self.add(n)?;
                    self.b.set_child(dir, name, id);
                }
            }
            return Ok(None);
        }
        let mut node = Node {
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime.0,
            mtime_nsec: meta.mtime.1,
            xattrs: meta.xattrs,
            ..Node::new(kind, meta.mode)
        };
        let mut file = false;
        match kind {
            Kind::File if e.size > 0 => {
                node.size = e.size;
                let digest = if !e.chunk_digest.is_empty() {
                    parse_digest(&e.chunk_digest, &e.name)?
                } else if e.chunk_size == 0 {
                    parse_digest(&e.digest, &e.name)?
                } else {
                    return Err(Error::invalid(format!("TOC: {}: no chunkDigest", e.name)));
                };
                node.content = Content::Chunks {
                    layer,
                    chunks: vec![entry_chunk(e, digest, extent)?],
                };
                file = true;
            }
            Kind::Symlink => {
                node.size = e.link_name.len() as u64;
                node.link_target = Some(e.link_name.as_bytes().to_vec());
            }
            Kind::CharDev | Kind::BlockDev => {
                node.rdev = (e.dev_major.max(0) as u32, e.dev_minor.max(0) as u32);
            }
            _ => {}
        }
        let id = self.add(node)?;
        self.b.set_child(dir, name, id);
        Ok(file.then_some(id))
    }
}

/// An entry's metadata in the tree's terms.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    fn of(e: &TocEntry) -> Result<Meta> {
        let id32 = |v: i64| u32::try_from(v).unwrap_or(65534);
        let mut xattrs = Vec::with_capacity(e.xattrs.len());
        for (k, v) in &e.xattrs {
            if k.starts_with("trusted.overlay.") {
                continue;
            }
            let v = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| Error::invalid(format!("TOC: {}: xattr {k} not base64", e.name)))?;
            xattrs.push((k.as_bytes().to_vec(), v));
        }
        let mtime = if e.modtime.is_empty() {
            (0, 0)
        } else {
            crate::rfc3339::parse(&e.modtime).unwrap_or_else(|| {
                tracing::warn!(name = %e.name, modtime = %e.modtime, "bad TOC modtime");
                (0, 0)
            })
        };
        Ok(Meta {
            mode: (e.mode & 0o7777) as u32,
            uid: id32(e.uid),
            gid: id32(e.gid),
            mtime,
            xattrs,
        })
    }

    fn apply_dir(self, n: &mut Node) {
        n.mode = self.mode;
        n.uid = self.uid;
        n.gid = self.gid;
        (n.mtime, n.mtime_nsec) = self.mtime;
        n.xattrs = self.xattrs;
        n.implicit = false;
        let opaque = n.opaque;
        n.set_opaque(opaque);
    }
}
