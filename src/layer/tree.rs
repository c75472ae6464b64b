//! The in-memory description of a filesystem tree: one layer as its tar has
//! it, or the merged rootfs of an image.
//!
//! Nodes live in one `Vec`, addressed by [`NodeId`]; node 0 is the root
//! directory. Names are raw bytes (tar names need not be UTF-8). A hard link is
//! two directory entries naming the same `NodeId`. Directory children are kept
//! sorted by name so [`Tree::lookup`] is a binary search.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

/// Index of a node in a [`Tree`].
pub type NodeId = u32;

/// The xattr overlayfs uses to mark an opaque directory.
pub const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// The same mark in the `user.` namespace, which overlayfs reads instead
/// when mounted with `userxattr` (rootless podman, unprivileged overlay).
pub const USER_OPAQUE_XATTR: &[u8] = b"user.overlay.opaque";

/// The xattr regfs answers with a file's content digest where it knows it
/// ([`Node::digest`]); a layer's own value of it is dropped.
pub const DIGEST_XATTR: &[u8] = b"user.regfs.digest";

/// What a node is. Hard links are not a kind: they are shared `NodeId`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device (also how whiteouts look in a layer view).
    CharDev,
    /// A block device.
    BlockDev,
    /// A named pipe.
    Fifo,
}

/// One stretch of a sparse file's data; everything between segments is a hole.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Offset in the file.
    pub logical: u64,
    /// Offset in the uncompressed tar stream of the layer.
    pub raw: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One independently compressed and verifiable piece of a file in a lazily
/// served layer (an eStargz or zstd:chunked blob): see [`FileData::Chunks`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Offset of the chunk's data in the file.
    pub file_offset: u64,
    /// Uncompressed length of the chunk.
    pub size: u64,
    /// Offset in the compressed blob where the chunk's gzip member or zstd frame starts.
    pub blob_offset: u64,
    /// Compressed extent to fetch: up to the next member / frame (or the TOC).
    pub blob_len: u64,
    /// Offset of the chunk's data in the decompressed member (usually 0).
    pub inner_offset: u64,
    /// Digest of the chunk's uncompressed bytes (from the verified TOC).
    pub digest: crate::digest::Digest,
    /// A run of `size` zero bytes with nothing to fetch (a containers/storage
    /// zstd:chunked `"zeros"` chunk); `digest` is still theirs to match.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zeros: bool,
}

/// Where a file's bytes live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileData {
    /// No data (directories, links, devices, or a node synthesised by us).
    None,
    /// `size` contiguous bytes at `offset` of layer `layer`'s uncompressed tar.
    Tar {
        /// The layer number the caller assigned when indexing.
        layer: u16,
        /// Offset of the data in the uncompressed tar stream.
        offset: u64,
    },
    /// A sparse file: data segments in layer `layer`'s uncompressed tar, zeros elsewhere.
    Sparse {
        /// The layer number the caller assigned when indexing.
        layer: u16,
        /// Data segments, ordered by `logical`, non-overlapping.
        segments: Vec<Segment>,
    },
    /// Chunks of a remote, lazily served layer `layer` (compressed blob offsets,
    /// verified one chunk at a time); ordered by `file_offset`, contiguous,
    /// covering the file's size.
    Chunks {
        /// The layer number the caller assigned when indexing.
        layer: u16,
        /// The file's chunks.
        chunks: Vec<Chunk>,
    },
}

impl FileData {
    /// The layer the bytes come from, if any.
    pub fn layer(&self) -> Option<u16> {
        match self {
            FileData::None => None,
            FileData::Tar { layer, .. }
            | FileData::Sparse { layer, .. }
            | FileData::Chunks { layer, .. } => Some(*layer),
        }
    }

    /// The same content, from layer `layer` instead.
    pub fn with_layer(self, layer: u16) -> FileData {
        match self {
            FileData::None => FileData::None,
            FileData::Tar { offset, .. } => FileData::Tar { layer, offset },
            FileData::Sparse { segments, .. } => FileData::Sparse { layer, segments },
            FileData::Chunks { chunks, .. } => FileData::Chunks { layer, chunks },
        }
    }
}

/// One inode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// What it is.
    pub kind: NodeKind,
    /// Permission bits including setuid, setgid and sticky (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Logical size: file length, symlink target length, 0 otherwise.
    pub size: u64,
    /// Number of names (files), or 2 + child directories (directories).
    pub nlink: u32,
    /// Device major and minor (devices only).
    pub rdev: (u32, u32),
    /// Symlink target, stored as written in the tar.
    pub link_target: Option<Vec<u8>>,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Where the bytes are.
    pub content: FileData,
    /// The digest of a regular file's whole content, when the layer's format
    /// records it (an eStargz / zstd:chunked TOC entry's `digest`); `None`
    /// when unknown (plain tar layers). Shown as `user.regfs.digest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<crate::digest::Digest>,
    /// Directory entries sorted by name (directories only).
    pub children: Vec<(Vec<u8>, NodeId)>,
    /// An overlayfs-style whiteout (layer views only; never in a merged tree).
    pub whiteout: bool,
    /// An opaque directory (layer views only; never in a merged tree).
    pub opaque: bool,
    /// A directory the tar never described: created because an entry needed
    /// it as a parent (or the root without a `./` entry). Its metadata is a
    /// default (0o755 root:root, mtime 0) that must not override a lower
    /// layer's directory when merging.
    pub implicit: bool,
}

impl Node {
    /// A directory with default metadata, marked implicit.
    pub fn implicit_dir() -> Node {
        Node {
            implicit: true,
            ..Node::new(NodeKind::Dir, 0o755)
        }
    }

    /// A node of `kind` with `mode` and everything else zero or empty.
    pub fn new(kind: NodeKind, mode: u32) -> Node {
        Node {
            kind,
            mode: mode & 0o7777,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            nlink: 1,
            rdev: (0, 0),
            link_target: None,
            xattrs: Vec::new(),
            content: FileData::None,
            digest: None,
            children: Vec::new(),
            whiteout: false,
            opaque: false,
            implicit: false,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Dir
    }

    /// The value of xattr `name`.
    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| self.xattrs[i].1.as_slice())
    }

    /// Set xattr `name`, keeping the list sorted and unique.
    pub fn set_xattr(&mut self, name: Vec<u8>, value: Vec<u8>) {
        match self.xattrs.binary_search_by(|(n, _)| n.cmp(&name)) {
            Ok(i) => self.xattrs[i].1 = value,
            Err(i) => self.xattrs.insert(i, (name, value)),
        }
    }

    /// Remove xattr `name` if present.
    pub fn remove_xattr(&mut self, name: &[u8]) {
        if let Ok(i) = self
            .xattrs
            .binary_search_by(|(n, _)| n.as_slice().cmp(name))
        {
            self.xattrs.remove(i);
        }
    }

    /// Mark (or unmark) this directory opaque, with the overlayfs xattr in
    /// both namespaces (`trusted.` for overlayfs mounted by root, `user.`
    /// for `userxattr` mounts).
    pub(crate) fn set_opaque(&mut self, opaque: bool) {
        self.opaque = opaque;
        for name in [OPAQUE_XATTR, USER_OPAQUE_XATTR] {
            if opaque {
                self.set_xattr(name.to_vec(), b"y".to_vec());
            } else {
                self.remove_xattr(name);
            }
        }
    }
}

/// A filesystem tree. Node 0 is the root directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Builder::new().finish()
    }
}

impl Tree {
    /// The root directory.
    pub fn root(&self) -> NodeId {
        0
    }

    /// The node `id`. Panics if `id` is not from this tree.
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    /// The node `id`, if it exists.
    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    /// Number of nodes (inodes, not names: hard links count once).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: the root always exists. (For clippy's sake.)
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// All nodes, indexed by `NodeId`.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All nodes, mutable (for builders that fix up contents after `finish`).
    pub(crate) fn nodes_mut(&mut self) -> &mut [Node] {
        &mut self.nodes
    }

    /// The entries of directory `dir`, sorted by name (empty for non-directories).
    pub fn children(&self, dir: NodeId) -> &[(Vec<u8>, NodeId)] {
        self.get(dir).map(|n| n.children.as_slice()).unwrap_or(&[])
    }

    /// The entry `name` of directory `dir`.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let c = self.children(dir);
        c.binary_search_by(|(n, _)| n.as_slice().cmp(name))
            .ok()
            .map(|i| c[i].1)
    }

    /// The node at `path` (relative to the root; a leading `/`, `.` components
    /// and empty components are ignored, `..` is lexical and clamped at the
    /// root). Symlinks are not followed.
    pub fn lookup_path(&self, path: &[u8]) -> Option<NodeId> {
        let mut id = self.root();
        for comp in normalize(path) {
            id = self.lookup(id, comp)?;
        }
        Some(id)
    }

    /// A path of `node` (relative to the root; the first name found for a
    /// hard link): each step up is a scan of the directories' entries, so
    /// nothing is allocated per entry as [`Tree::walk`] does.
    pub fn path_of(&self, node: NodeId) -> Option<Vec<u8>> {
        let mut names: Vec<&[u8]> = Vec::new();
        let mut at = node;
        while at != self.root() {
            let (parent, name) = self.nodes.iter().enumerate().find_map(|(d, n)| {
                let (name, _) = n.children.iter().find(|(_, c)| *c == at)?;
                Some((d as NodeId, name.as_slice()))
            })?;
            if names.len() >= self.nodes.len() {
                return None;
            }
            names.push(name);
            at = parent;
        }
        names.reverse();
        Some(names.join(&b'/'))
    }

    /// Every path in the tree (depth first, sorted), with its node. Hard links
    /// appear once per name. Mostly for tests and debugging.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), self.root())];
        while let Some((path, id)) = stack.pop() {
            for (name, child) in self.children(id).iter().rev() {
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                stack.push((p, *child));
            }
            out.push((path, id));
        }
        out
    }
}

/// Split `path` into components the way containerd does: leading `/` and `.`
/// dropped, empty components dropped, `..` resolved lexically and clamped at
/// the root so nothing can name a place above it.
pub fn normalize(path: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Like [`normalize`], but `None` if a `..` would climb above the root.
pub fn normalize_strict(path: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out: Vec<&[u8]> = Vec::new();
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

/// A mutable tree under construction: children in `BTreeMap`s so inserts and
/// replacements are cheap; [`Builder::finish`] drops unreachable nodes,
/// recomputes `nlink` and freezes the children into sorted vectors.
pub(crate) struct Builder {
    pub(crate) nodes: Vec<Node>,
    kids: Vec<BTreeMap<Vec<u8>, NodeId>>,
}

impl Builder {
    /// A builder holding only an implicit root.
    pub(crate) fn new() -> Builder {
        Builder {
            nodes: vec![Node::implicit_dir()],
            kids: vec![BTreeMap::new()],
        }
    }

    pub(crate) fn add(&mut self, mut node: Node) -> NodeId {
        let id = NodeId::try_from(self.nodes.len()).expect("more than 2^32 nodes");
        node.children = Vec::new();
        self.nodes.push(node);
        self.kids.push(BTreeMap::new());
        id
    }

    pub(crate) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id as usize]
    }

    pub(crate) fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        self.kids[dir as usize].get(name).copied()
    }

    /// Point `dir/name` at `id`, replacing whatever was there (its subtree
    /// becomes unreachable and is dropped by `finish`).
    pub(crate) fn set_child(&mut self, dir: NodeId, name: &[u8], id: NodeId) {
        let kids = &mut self.kids[dir as usize];
        match kids.get_mut(name) {
            Some(slot) => *slot = id,
            None => {
                kids.insert(name.to_vec(), id);
            }
        }
    }

    pub(crate) fn remove_child(&mut self, dir: NodeId, name: &[u8]) {
        self.kids[dir as usize].remove(name);
    }

    pub(crate) fn clear_children(&mut self, dir: NodeId) {
        self.kids[dir as usize].clear();
    }

    /// Freeze: renumber reachable nodes breadth first from the root, drop the
    /// rest, sort children, recompute `nlink`.
    pub(crate) fn finish(self) -> Tree {
        let Builder {
            mut nodes,
            mut kids,
        } = self;
        const UNSEEN: NodeId = NodeId::MAX;
        let mut new_id = vec![UNSEEN; nodes.len()];
        let mut order: Vec<NodeId> = vec![0];
        let mut refs: Vec<u32> = vec![0; nodes.len()];
        new_id[0] = 0;
        let mut i = 0;
        while i < order.len() {
            let old = order[i] as usize;
            i += 1;
            for &child in kids[old].values() {
                refs[child as usize] = refs[child as usize].saturating_add(1);
                if new_id[child as usize] == UNSEEN {
                    new_id[child as usize] = order.len() as NodeId;
                    order.push(child);
                }
            }
        }
        let is_dir: Vec<bool> = nodes.iter().map(|n| n.kind == NodeKind::Dir).collect();
        let mut out = Vec::with_capacity(order.len());
        for &old in &order {
            let old = old as usize;
            let mut node = std::mem::replace(&mut nodes[old], Node::new(NodeKind::Fifo, 0));
            let map = std::mem::take(&mut kids[old]);
            let mut subdirs = 0u32;
            let mut children = Vec::with_capacity(map.len());
            for (name, child) in map {
                if is_dir[child as usize] {
                    subdirs += 1;
                }
                children.push((name, new_id[child as usize]));
            }
            node.children = children;
            node.nlink = if node.kind == NodeKind::Dir {
                2u32.saturating_add(subdirs)
            } else {
                refs[old].max(1)
            };
            node.xattrs.shrink_to_fit();
            out.push(node);
        }
        Tree { nodes: out }
    }
}

/// Random-access reads of a layer's uncompressed tar (a cache file, usually).
pub trait ReadAt {
    /// Read up to `buf.len()` bytes at `offset`; 0 at end of data.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl ReadAt for std::fs::File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

impl ReadAt for Vec<u8> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.as_slice().read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
}

/// Read from `data` at `offset` until `buf` is full or the data ends, as
/// `pread` to a file would; the bytes read.
pub fn read_full_at(data: &dyn ReadAt, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match data.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Fill `buf` exactly from `data` at `offset`; a short source is an error
/// (the cache file is shorter than the index says: corrupt cache).
fn read_exact_at(data: &dyn ReadAt, buf: &mut [u8], offset: u64) -> io::Result<()> {
    if read_full_at(data, buf, offset)? < buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "layer data shorter than its index",
        ));
    }
    Ok(())
}

/// Read the bytes of file `node` at `offset` into `buf`, from
/// `layers[content.layer]` (each the uncompressed tar of one layer). Returns
/// the number of bytes read: `min(buf.len(), size - offset)`, 0 at or past the
/// end. Holes of sparse files read as zeros. Never reads beyond `size`.
pub fn read_content<D: ReadAt>(
    node: &Node,
    layers: &[D],
    offset: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    if offset >= node.size || buf.is_empty() {
        return Ok(0);
    }
    let want = (node.size - offset).min(buf.len() as u64) as usize;
    let buf = &mut buf[..want];
    let layer_file = |layer: u16| {
        layers.get(layer as usize).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("layer {layer} not available"),
            )
        })
    };
    match &node.content {
        FileData::None => {
            // Only a node we synthesised can have a size without content; be safe.
            buf.fill(0);
        }
        FileData::Tar {
            layer,
            offset: base,
        } => {
            let data = layer_file(*layer)?;
            let at = base
                .checked_add(offset)
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "offset overflow"))?;
            read_exact_at(data, buf, at)?;
        }
        FileData::Sparse { layer, segments } => {
            let data = layer_file(*layer)?;
            let end = offset + want as u64;
            buf.fill(0);
            // First segment that ends after `offset`.
            let first = segments.partition_point(|s| s.logical.saturating_add(s.len) <= offset);
            for s in &segments[first..] {
                if s.logical >= end {
                    break;
                }
                let from = s.logical.max(offset);
                let to = s.logical.saturating_add(s.len).min(end);
                if from >= to {
                    continue;
                }
                let dst = &mut buf[(from - offset) as usize..(to - offset) as usize];
                read_exact_at(data, dst, s.raw + (from - s.logical))?;
            }
        }
        FileData::Chunks { .. } => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "remote chunks are read through crate::content",
            ))
        }
    }
    Ok(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: FileData, size: u64) -> Node {
        Node {
            size,
            content,
            ..Node::new(NodeKind::File, 0o644)
        }
    }

    #[test]
    fn normalize_clamps() {
        let n = |p: &[u8]| normalize(p).concat();
        assert_eq!(normalize(b"../../etc/passwd"), vec![&b"etc"[..], b"passwd"]);
        assert_eq!(normalize(b"/./a//b/./c/../d/"), vec![&b"a"[..], b"b", b"d"]);
        assert!(normalize(b"./").is_empty());
        assert!(normalize(b"a/../../..").is_empty());
        assert_eq!(n(b"a/b/../../../x"), b"x");
        assert_eq!(normalize_strict(b"a/../../x"), None);
        assert_eq!(
            normalize_strict(b"/a/./b/../c").unwrap(),
            vec![&b"a"[..], b"c"]
        );
    }

    #[test]
    fn builder_lookup_nlink_and_gc() {
        let mut b = Builder::new();
        let d = b.add(Node::new(NodeKind::Dir, 0o755));
        b.set_child(0, b"d", d);
        let f = b.add(Node::new(NodeKind::File, 0o644));
        b.set_child(d, b"z", f);
        b.set_child(d, b"a", f); // hard link
        let sub = b.add(Node::new(NodeKind::Dir, 0o700));
        b.set_child(d, b"sub", sub);
        let gone = b.add(Node::new(NodeKind::File, 0o644));
        b.set_child(sub, b"gone", gone);
        // replace sub with a file: its subtree is dropped
        let f2 = b.add(Node::new(NodeKind::File, 0o600));
        b.set_child(d, b"sub", f2);
        let t = b.finish();
        assert_eq!(t.len(), 4, "root, d, f, f2");
        let d = t.lookup(t.root(), b"d").unwrap();
        let names: Vec<&[u8]> = t.children(d).iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, vec![&b"a"[..], b"sub", b"z"]);
        assert_eq!(t.lookup(d, b"a"), t.lookup(d, b"z"));
        assert_eq!(t.node(t.lookup(d, b"a").unwrap()).nlink, 2);
        assert_eq!(t.node(t.lookup(d, b"sub").unwrap()).nlink, 1);
        assert_eq!(t.node(d).nlink, 2);
        assert_eq!(t.node(t.root()).nlink, 3);
        assert_eq!(t.lookup_path(b"/d/./sub"), t.lookup(d, b"sub"));
        assert_eq!(t.lookup_path(b"d/sub/gone"), None);
        assert_eq!(t.lookup_path(b"../../d/a"), t.lookup(d, b"a"));
        assert_eq!(t.lookup(d, b"missing"), None);
        let paths: Vec<Vec<u8>> = t.walk().into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            vec![
                b"".to_vec(),
                b"d".to_vec(),
                b"d/a".to_vec(),
                b"d/sub".to_vec(),
                b"d/z".to_vec()
            ]
        );
    }

    #[test]
    fn path_of_names_every_node_as_walk_does() {
        let mut b = Builder::new();
        let d = b.add(Node::new(NodeKind::Dir, 0o755));
        b.set_child(0, b"usr", d);
        let lib = b.add(Node::new(NodeKind::Dir, 0o755));
        b.set_child(d, b"lib", lib);
        for i in 0..20u8 {
            let f = b.add(Node::new(NodeKind::File, 0o644));
            b.set_child(lib, format!("f{i}").as_bytes(), f);
        }
        let f = b.add(Node::new(NodeKind::File, 0o644));
        b.set_child(d, b"x", f);
        b.set_child(lib, b"y", f); // a hard link: either name will do
        let t = b.finish();
        for (path, id) in t.walk() {
            let found = t.path_of(id).unwrap();
            assert_eq!(
                t.lookup_path(&found),
                Some(id),
                "{}",
                String::from_utf8_lossy(&path)
            );
            if t.node(id).nlink < 2 {
                assert_eq!(found, path);
            }
        }
        assert_eq!(t.path_of(t.root()), Some(Vec::new()));
        assert_eq!(t.path_of(t.len() as NodeId), None);
    }

    #[test]
    fn serde_roundtrip() {
        let mut b = Builder::new();
        let f = b.add(file(
            FileData::Tar {
                layer: 3,
                offset: 512,
            },
            9,
        ));
        b.set_child(0, &[0xff, b'x'], f);
        let t = b.finish();
        let json = serde_json::to_vec(&t).unwrap();
        let back: Tree = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, t);
        assert!(back.lookup(0, &[0xff, b'x']).is_some());
    }

    #[test]
    fn read_plain_at_offsets() {
        let data: Vec<u8> = (0..2000u32).map(|i| i as u8).collect();
        let n = file(
            FileData::Tar {
                layer: 1,
                offset: 100,
            },
            50,
        );
        let layers = [Vec::new(), data.clone()];
        let mut buf = [0u8; 20];
        assert_eq!(read_content(&n, &layers, 0, &mut buf).unwrap(), 20);
        assert_eq!(&buf[..], &data[100..120]);
        assert_eq!(read_content(&n, &layers, 40, &mut buf).unwrap(), 10);
        assert_eq!(&buf[..10], &data[140..150]);
        assert_eq!(read_content(&n, &layers, 50, &mut buf).unwrap(), 0);
        assert_eq!(read_content(&n, &layers, u64::MAX, &mut buf).unwrap(), 0);
        // wrong layer number: an error, not a panic
        let bad = file(
            FileData::Tar {
                layer: 7,
                offset: 0,
            },
            5,
        );
        assert!(read_content(&bad, &layers, 0, &mut buf).is_err());
        // data shorter than the index claims
        let short = file(
            FileData::Tar {
                layer: 1,
                offset: 1990,
            },
            50,
        );
        assert!(read_content(&short, &layers, 0, &mut buf).is_err());
    }

    #[test]
    fn read_sparse_holes_are_zero() {
        let data: Vec<u8> = (0..100u8).map(|i| i + 1).collect();
        // file of 40: [0,5) hole, [5,10) data@20, [10,30) hole, [30,35) data@50, [35,40) hole
        let n = file(
            FileData::Sparse {
                layer: 0,
                segments: vec![
                    Segment {
                        logical: 5,
                        raw: 20,
                        len: 5,
                    },
                    Segment {
                        logical: 30,
                        raw: 50,
                        len: 5,
                    },
                ],
            },
            40,
        );
        let layers = [&data[..]];
        let mut all = vec![0xAAu8; 64];
        assert_eq!(read_content(&n, &layers, 0, &mut all).unwrap(), 40);
        let mut expect = [0u8; 40];
        expect[5..10].copy_from_slice(&data[20..25]);
        expect[30..35].copy_from_slice(&data[50..55]);
        assert_eq!(&all[..40], &expect[..]);
        assert_eq!(all[40], 0xAA, "never writes beyond size");
        for off in 0..41u64 {
            for len in [1usize, 3, 7, 40] {
                let mut b = vec![0xAAu8; len];
                let got = read_content(&n, &layers, off, &mut b).unwrap();
                let want_n = len.min(40 - off as usize);
                assert_eq!(got, want_n);
                assert_eq!(&b[..got], &expect[off as usize..off as usize + got]);
            }
        }
    }
}
