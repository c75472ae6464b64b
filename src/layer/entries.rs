//! The one place where the rules that decide what a user sees of a layer are
//! applied. Every layer format's reader turns its entries into [`Entry`]s and
//! feeds them, in layer order, to a [`TreeBuilder`]: the tar indexer
//! ([`crate::layer::index`]) and the eStargz / zstd:chunked TOC reader
//! ([`crate::estargz::toc_tree`]). A rule fixed here holds for every format.
//!
//! The rules, chosen to match what containerd's extraction and overlayfs
//! produce:
//!
//! - **Limits** ([`Limits`]): at most `max_entries` entries, a path or link
//!   target of at most `max_name_len` bytes, at most `max_xattr_bytes` of
//!   xattrs per entry, at most `max_metadata_bytes` of names, link targets,
//!   xattrs and content maps (sparse segments, chunks) held for the layer,
//!   and at most `2 × max_entries + 4096` nodes (implicit directories
//!   count). Exceeding one is [`Error::TooLarge`].
//! - **Paths** are normalised lexically ([`normalize`]): leading `/` and `./`
//!   dropped, `.` and empty components dropped, `..` clamped at the root, so
//!   `../../etc/passwd` is `etc/passwd` and nothing is ever above the root.
//!   Names stay raw bytes. A non-directory naming the root is skipped.
//! - **Missing parents** are created as *implicit* directories (0o755,
//!   root:root, mtime 0, [`Node::implicit`]).
//! - **A parent that is not a directory** (a file, symlink, device, whiteout)
//!   is replaced by an implicit directory: the later entry wins, as an
//!   extraction into an empty directory would if it removed what is in the
//!   way. Symlinks are never followed. A whiteout replaced this way makes the
//!   directory opaque (see below).
//! - **Duplicates**: the last entry for a path wins. A non-directory always
//!   gets a fresh node (other hard links to the old one keep the old inode,
//!   as `link(2)` semantics require); a directory entry over an existing
//!   directory only updates its metadata and keeps its children (and its
//!   opaque flag); a non-directory over a directory drops the subtree.
//! - **Hard links** name the same node as their target, which must be an
//!   earlier non-directory entry of the same layer. A missing target, a
//!   target whose `..` climbs above the root, a directory or a whiteout
//!   target: the entry is skipped with a warning. The hard link entry's own
//!   metadata is ignored (the inode's is what `link(2)` shows).
//! - **Whiteouts** are shown the overlayfs way: `dir/.wh.NAME` is a character
//!   device `NAME` (0/0, mode 0, [`Node::whiteout`]); `dir/.wh..wh..opq` sets
//!   [`Node::opaque`] and the xattrs `trusted.overlay.opaque=y` and
//!   `user.overlay.opaque=y` on `dir`, in
//!   whichever order the marker and `dir`'s own entry come (eStargz puts the
//!   marker first). Other whiteout-like names (`.wh..wh.*`, aufs metadata;
//!   `.wh.`, `.wh..`, `.wh...`) are skipped with a warning, creating nothing.
//!   A whiteout and a real entry for the same name in one layer: the real
//!   entry is kept (it replaces the lower one anyway), and if it is a
//!   directory it is made opaque, so that the lower directory's children
//!   stay hidden as the whiteout asked.
//! - **Xattrs**: `trusted.overlay.*` and `user.overlay.*` from the layer itself are dropped (only
//!   the whiteout markers decide opacity), and so is `user.regfs.digest`
//!   (regfs answers it itself); the rest are sorted by name, and
//!   for a repeated name the last wins.
//! - **Owners** that do not fit 32 bits are 65534 (nobody), with a warning.
//! - A symlink with an empty target is kept, with a warning.

use crate::error::{Error, Result};
use crate::layer::tree::{
    normalize, normalize_strict, Builder, Chunk, FileData, Node, NodeId, NodeKind, Segment, Tree,
};

/// Bounds on what one layer may make us hold or process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Entries (tar members, not counting long-name and PAX headers; TOC
    /// entries other than chunks).
    pub max_entries: u64,
    /// Bytes in one entry's path (and in a link target).
    pub max_name_len: usize,
    /// Bytes of xattr names and values of one entry.
    pub max_xattr_bytes: usize,
    /// Bytes of the uncompressed tar stream.
    pub max_uncompressed: u64,
    /// Bytes of names, link targets and xattrs held for the whole layer.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_name_len: 4096,
            max_xattr_bytes: 1 << 20,
            max_uncompressed: 64 << 30,
            max_metadata_bytes: 512 << 20,
        }
    }
}

/// What an entry makes: a node of some [`NodeKind`], or another name for an
/// earlier node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A file, directory, symlink, device or fifo.
    Node(NodeKind),
    /// A hard link to the earlier entry named by [`Entry::link`].
    HardLink,
}

/// One entry of a layer, as its format describes it, before any rule.
#[derive(Clone, Debug)]
pub struct Entry<'a> {
    /// The path as stored (raw bytes, not normalised).
    pub path: &'a [u8],
    /// What it makes.
    pub kind: EntryKind,
    /// Mode bits as stored (only `0o7777` is kept).
    pub mode: u32,
    /// Owner as stored (65534 if it does not fit 32 bits).
    pub uid: u64,
    /// Group as stored (65534 if it does not fit 32 bits).
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Size of a regular file.
    pub size: u64,
    /// Where a regular file's bytes are (in the format's terms).
    pub content: FileData,
    /// The digest of a regular file's whole content, if the format records it.
    pub digest: Option<crate::digest::Digest>,
    /// Symlink target or hard link target, as stored.
    pub link: &'a [u8],
    /// Device major and minor.
    pub rdev: (u32, u32),
    /// Extended attributes in the order stored (repeats allowed).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Entry<'a> {
    /// An entry of kind `kind` at `path`, everything else zero or empty.
    pub fn new(path: &'a [u8], kind: EntryKind) -> Entry<'a> {
        Entry {
            path,
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            content: FileData::None,
            digest: None,
            link: b"",
            rdev: (0, 0),
            xattrs: Vec::new(),
        }
    }
}

/// Builds a layer's [`Tree`] from its entries by the rules of this module.
pub struct TreeBuilder<'l> {
    b: Builder,
    limits: &'l Limits,
    /// How errors name the layer's format (`layer tar`, `TOC`).
    format: &'static str,
    entries: u64,
    meta_bytes: u64,
    max_nodes: u64,
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl<'l> TreeBuilder<'l> {
    /// An empty layer (an implicit root) bounded by `limits`; errors start
    /// with `format`.
    pub fn new(format: &'static str, limits: &'l Limits) -> TreeBuilder<'l> {
        TreeBuilder {
            b: Builder::new(),
            limits,
            format,
            entries: 0,
            meta_bytes: 0,
            max_nodes: limits
                .max_entries
                .saturating_mul(2)
                .saturating_add(4096)
                .min(u32::MAX as u64 - 1),
        }
    }

    /// Entries seen so far (applied or skipped).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// The tree. Nodes no name reaches any more are dropped.
    pub fn finish(self) -> Tree {
        self.b.finish()
    }

    /// Count an entry the format's reader skips itself (a type it does not
    /// know, a format-specific record): it still counts toward `max_entries`.
    pub fn skipped(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(Error::TooLarge(format!(
                "{}: more than {} entries",
                self.format, self.limits.max_entries
            )));
        }
        Ok(())
    }

    /// Apply one entry. Returns the node of a regular file it added (a
    /// format may add further pieces to its content: [`Self::push_chunk`]).
    pub fn add(&mut self, mut e: Entry<'_>) -> Result<Option<NodeId>> {
        self.skipped()?;
        let lim = self.limits;
        if e.path.len() > lim.max_name_len {
            return Err(Error::TooLarge(format!(
                "{}: a path of {} bytes (limit {})",
                self.format,
                e.path.len(),
                lim.max_name_len
            )));
        }
        if e.link.len() > lim.max_name_len {
            return Err(Error::TooLarge(format!(
                "{}: {}: a link target of {} bytes",
                self.format,
                lossy(e.path),
                e.link.len()
            )));
        }
        let xattrs = self.xattrs(e.path, std::mem::take(&mut e.xattrs))?;
        let comps = normalize(e.path);
        let Some((&name, parent)) = comps.split_last() else {
            // The root itself.
            if e.kind == EntryKind::Node(NodeKind::Dir) {
                let meta = DirMeta::of(&e, xattrs);
                self.charge(meta.bytes())?;
                meta.apply(self.b.node_mut(0));
            } else {
                tracing::warn!(path = %lossy(e.path), "skipping a non-directory entry naming the root");
            }
            return Ok(None);
        };
        if let Some(rest) = name.strip_prefix(b".wh.") {
            self.whiteout(&e, parent, rest)?;
            return Ok(None);
        }
        let kind = match e.kind {
            EntryKind::HardLink => {
                self.hardlink(&e, parent, name)?;
                return Ok(None);
            }
            EntryKind::Node(k) => k,
        };
        if kind == NodeKind::Dir {
            self.dir(&e, parent, name, xattrs)?;
            return Ok(None);
        }
        let mut node = Node {
            uid: id32(e.uid, e.path, "uid"),
            gid: id32(e.gid, e.path, "gid"),
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            xattrs,
            ..Node::new(kind, e.mode)
        };
        let mut bytes = name.len() + xattr_bytes(&node.xattrs);
        match kind {
            NodeKind::File => {
                node.size = e.size;
                bytes += content_bytes(&e.content);
                node.content = e.content;
                node.digest = e.digest;
            }
            NodeKind::Symlink => {
                if e.link.is_empty() {
                    tracing::warn!(path = %lossy(e.path), "symlink with an empty target");
                }
                bytes += e.link.len();
                node.size = e.link.len() as u64;
                node.link_target = Some(e.link.to_vec());
            }
            NodeKind::CharDev | NodeKind::BlockDev => node.rdev = e.rdev,
            NodeKind::Fifo | NodeKind::Dir => {}
        }
        self.charge(bytes)?;
        let dir = self.ensure_dir(parent)?;
        let id = self.add_node(node)?;
        self.b.set_child(dir, name, id);
        Ok((kind == NodeKind::File).then_some(id))
    }

    /// The node `id` (of this builder).
    pub fn node(&self, id: NodeId) -> &Node {
        self.b.node(id)
    }

    /// Append `chunk` to the chunks of file `id` (a further TOC `chunk`
    /// entry), charging it to the metadata bound.
    pub fn push_chunk(&mut self, id: NodeId, chunk: Chunk) -> Result<()> {
        self.charge(std::mem::size_of::<Chunk>())?;
        match &mut self.b.node_mut(id).content {
            FileData::Chunks { chunks, .. } => {
                chunks.push(chunk);
                Ok(())
            }
            _ => Err(Error::invalid(format!(
                "{}: a chunk of a file without chunks",
                self.format
            ))),
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.meta_bytes += bytes as u64;
        if self.meta_bytes > self.limits.max_metadata_bytes {
            return Err(Error::TooLarge(format!(
                "{}: more than {} bytes of names and xattrs",
                self.format, self.limits.max_metadata_bytes
            )));
        }
        Ok(())
    }

    fn add_node(&mut self, node: Node) -> Result<NodeId> {
        if self.b.nodes.len() as u64 >= self.max_nodes {
            return Err(Error::TooLarge(format!(
                "{}: more than {} nodes (entries and implicit directories)",
                self.format, self.max_nodes
            )));
        }
        Ok(self.b.add(node))
    }

    /// The entry's xattrs by the rules: bounded, overlay ones dropped,
    /// sorted, last wins.
    fn xattrs(
        &self,
        path: &[u8],
        mut x: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let max = self.limits.max_xattr_bytes;
        if xattr_bytes(&x) > max {
            return Err(Error::TooLarge(format!(
                "{}: {}: more than {max} bytes of xattrs",
                self.format,
                lossy(path)
            )));
        }
        x.retain(|(n, _)| {
            // `user.regfs.digest` is regfs's to answer, not the layer's.
            let overlay = n.starts_with(b"trusted.overlay.")
                || n.starts_with(b"user.overlay.")
                || n == crate::layer::tree::DIGEST_XATTR;
            if overlay {
                tracing::debug!(path = %lossy(path), "dropping an overlay or regfs digest xattr of the layer");
            }
            !overlay
        });
        // Sorted by name; for a repeated name the last one wins.
        x.reverse();
        x.sort_by(|a, b| a.0.cmp(&b.0));
        x.dedup_by(|a, b| a.0 == b.0);
        Ok(x)
    }

    /// The directory at `comps`, creating implicit directories and replacing
    /// non-directories on the way (a replaced whiteout makes it opaque).
    fn ensure_dir(&mut self, comps: &[&[u8]]) -> Result<NodeId> {
        let mut id = 0;
        for c in comps {
            id = match self.b.child(id, c) {
                Some(x) if self.b.node(x).is_dir() => x,
                existing => {
                    let was_whiteout = existing.is_some_and(|x| self.b.node(x).whiteout);
                    if existing.is_none() {
                        self.charge(c.len())?;
                    }
                    let mut dir = Node::implicit_dir();
                    if was_whiteout {
                        dir.set_opaque(true);
                    }
                    let new = self.add_node(dir)?;
                    self.b.set_child(id, c, new);
                    new
                }
            };
        }
        Ok(id)
    }

    /// The existing node at `comps`, through directories only.
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

    /// `parent/.wh.rest`: a whiteout, an opaque marker, or skipped.
    fn whiteout(&mut self, e: &Entry<'_>, parent: &[&[u8]], rest: &[u8]) -> Result<()> {
        if rest == b".wh..opq" {
            let dir = self.ensure_dir(parent)?;
            self.b.node_mut(dir).set_opaque(true);
            return Ok(());
        }
        if rest.starts_with(b".wh.") || rest.is_empty() || rest == b"." || rest == b".." {
            tracing::warn!(path = %lossy(e.path), "skipping unsupported whiteout-like entry");
            return Ok(());
        }
        let dir = self.ensure_dir(parent)?;
        match self.b.child(dir, rest) {
            None => {
                self.charge(rest.len())?;
                let w = Node {
                    whiteout: true,
                    mtime: e.mtime,
                    mtime_nsec: e.mtime_nsec,
                    ..Node::new(NodeKind::CharDev, 0)
                };
                let id = self.add_node(w)?;
                self.b.set_child(dir, rest, id);
            }
            Some(x) if self.b.node(x).is_dir() => self.b.node_mut(x).set_opaque(true),
            // A real entry (or a whiteout) already: it stays.
            Some(_) => {}
        }
        Ok(())
    }

    /// `parent/name` as another name of the earlier node `e.link`.
    fn hardlink(&mut self, e: &Entry<'_>, parent: &[&[u8]], name: &[u8]) -> Result<()> {
        if e.link.is_empty() {
            tracing::warn!(path = %lossy(e.path), "skipping a hard link without a target");
            return Ok(());
        }
        let Some(tcomps) = normalize_strict(e.link) else {
            tracing::warn!(path = %lossy(e.path), target = %lossy(e.link), "skipping a hard link whose target escapes the root");
            return Ok(());
        };
        let found = self.find(&tcomps).filter(|&t| {
            let n = self.b.node(t);
            !n.is_dir() && !n.whiteout
        });
        let Some(t) = found else {
            tracing::warn!(path = %lossy(e.path), target = %lossy(e.link), "skipping a hard link to a missing or unlinkable target");
            return Ok(());
        };
        self.charge(name.len())?;
        let dir = self.ensure_dir(parent)?;
        self.b.set_child(dir, name, t);
        Ok(())
    }

    /// A directory entry: new, or new metadata for an existing directory.
    fn dir(
        &mut self,
        e: &Entry<'_>,
        parent: &[&[u8]],
        name: &[u8],
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<()> {
        let meta = DirMeta::of(e, xattrs);
        let dir = self.ensure_dir(parent)?;
        match self.b.child(dir, name) {
            Some(x) if self.b.node(x).is_dir() => {
                self.charge(meta.bytes())?;
                meta.apply(self.b.node_mut(x));
            }
            existing => {
                let opaque = existing.is_some_and(|x| self.b.node(x).whiteout);
                self.charge(name.len() + meta.bytes())?;
                let mut n = Node::new(NodeKind::Dir, 0);
                meta.apply(&mut n);
                if opaque {
                    n.set_opaque(true);
                }
                let id = self.add_node(n)?;
                self.b.set_child(dir, name, id);
            }
        }
        Ok(())
    }
}

/// A directory entry's metadata (applied keeping children and opacity).
struct DirMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl DirMeta {
    fn of(e: &Entry<'_>, xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> DirMeta {
        DirMeta {
            mode: e.mode & 0o7777,
            uid: id32(e.uid, e.path, "uid"),
            gid: id32(e.gid, e.path, "gid"),
            mtime: e.mtime,
            mtime_nsec: e.mtime_nsec,
            xattrs,
        }
    }

    fn bytes(&self) -> usize {
        xattr_bytes(&self.xattrs)
    }

    fn apply(self, n: &mut Node) {
        n.mode = self.mode;
        n.uid = self.uid;
        n.gid = self.gid;
        n.mtime = self.mtime;
        n.mtime_nsec = self.mtime_nsec;
        n.xattrs = self.xattrs;
        n.implicit = false;
        let opaque = n.opaque;
        n.set_opaque(opaque);
    }
}

/// An owner or group that fits 32 bits, else 65534 (nobody), with a warning.
fn id32(v: u64, path: &[u8], what: &str) -> u32 {
    u32::try_from(v).unwrap_or_else(|_| {
        tracing::warn!(path = %lossy(path), "{what} {v} does not fit 32 bits; using 65534");
        65534
    })
}

fn xattr_bytes(x: &[(Vec<u8>, Vec<u8>)]) -> usize {
    x.iter().map(|(n, v)| n.len() + v.len()).sum()
}

/// What a file's content map costs to hold.
fn content_bytes(c: &FileData) -> usize {
    match c {
        FileData::None | FileData::Tar { .. } => 0,
        FileData::Sparse { segments, .. } => segments.len() * std::mem::size_of::<Segment>(),
        FileData::Chunks { chunks, .. } => chunks.len() * std::mem::size_of::<Chunk>(),
    }
}

#[cfg(test)]
mod tests;
