//! Index a layer tar in one streaming pass: what every path is, and where its
//! bytes are in the uncompressed stream.
//!
//! Rules, chosen to match what containerd's extraction and overlayfs produce:
//!
//! - **Paths** are normalised lexically ([`normalize`]): leading `/` and `./`
//!   dropped, `.` and empty components dropped, `..` clamped at the root, so
//!   `../../etc/passwd` is `etc/passwd` and nothing is ever above the root.
//!   Names stay raw bytes.
//! - **Missing parents** are created as *implicit* directories (0o755,
//!   root:root, mtime 0, [`Node::implicit`]).
//! - **A parent that is not a directory** (a file, symlink, device, whiteout)
//!   is replaced by an implicit directory: the later entry wins, as a tar
//!   extraction into an empty directory would if it removed what is in the
//!   way. Symlinks are never followed. A whiteout replaced this way makes the
//!   directory opaque (see below).
//! - **Duplicates**: the last entry for a path wins. A non-directory always
//!   gets a fresh node (other hard links to the old one keep the old inode,
//!   as `link(2)` semantics require); a directory entry over an existing
//!   directory only updates its metadata and keeps its children (and its
//!   opaque flag); a non-directory over a directory drops the subtree.
//! - **Hard links** name the same node as their target, which must be an
//!   earlier non-directory entry of the same tar. A missing target, a target
//!   whose `..` climbs above the root, a directory or a whiteout target: the
//!   entry is skipped with a warning. The hard link header's own metadata is
//!   ignored (the inode's is what `link(2)` shows).
//! - **Whiteouts** are shown the overlayfs way: `dir/.wh.NAME` is a character
//!   device `NAME` (0/0, mode 0, [`Node::whiteout`]); `dir/.wh..wh..opq` sets
//!   [`Node::opaque`] and the xattr `trusted.overlay.opaque=y` on `dir`, in
//!   whichever order the marker and `dir`'s own entry come (eStargz puts the
//!   marker first). Other `.wh..wh.*` names (aufs metadata) are skipped.
//!   A whiteout and a real entry for the same name in one layer: the real
//!   entry is kept (it replaces the lower one anyway), and if it is a
//!   directory it is made opaque, so that the lower directory's children stay
//!   hidden as the whiteout asked.
//! - `trusted.overlay.*` xattrs from the tar itself are dropped: only the
//!   whiteout markers decide opacity.
//! - **GNU sparse** files (type `S`, old GNU format, with extension headers)
//!   are indexed as [`Content::Sparse`]. The **PAX sparse** formats (0.0, 0.1,
//!   1.0, keys `GNU.sparse.*`) are not supported: such an entry is skipped
//!   with a warning.
//! - PAX global headers (`g`) are ignored, like Go's `archive/tar` does.
//! - Entry types we do not know (`V`, `M`, …) are skipped with a warning.
//!
//! Anything malformed (bad checksum, truncated data, a bad number) is
//! [`Error::Invalid`]`("layer tar: …")`; exceeding a [`Limits`] field is
//! [`Error::TooLarge`]. Memory stays bounded: the tar crate buffers long
//! names and PAX records, and every byte it reads between two entries beyond
//! the previous entry's data is charged to a budget derived from the limits.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::error::{Error, Result};
use crate::layer::tree::{
    normalize, normalize_strict, Builder, Content, Kind, Node, NodeId, Segment, Tree,
};

/// Bounds on what one layer may make us hold or process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Tar entries (members, not counting long-name and PAX headers).
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

/// Extension headers of a GNU sparse entry are recovered from this much of
/// the most recently read stream; more (over ~10,000 segments) is skipped.
const RING: usize = 256 << 10;

/// Index the tar read from `r` (uncompressed), tagging content with `layer`.
/// Reads up to the end-of-archive marker and no further.
pub fn index_tar<R: Read>(r: R, layer: u16, limits: &Limits) -> Result<Tree> {
    index_tar_counted(r, layer, limits).map(|(t, _)| t)
}

/// [`index_tar`], also returning the number of tar entries seen.
pub(crate) fn index_tar_counted<R: Read>(r: R, layer: u16, limits: &Limits) -> Result<(Tree, u64)> {
    let allowance = header_allowance(limits);
    let st = Rc::new(RefCell::new(Shared {
        pos: 0,
        limit: limits.max_uncompressed,
        budget: allowance,
        failure: None,
        ring: vec![0; RING],
    }));
    let mut archive = tar::Archive::new(Tracked {
        inner: r,
        st: Rc::clone(&st),
    });
    let mut ix = Indexer {
        b: Builder::new(),
        layer,
        limits,
        entries: 0,
        meta_bytes: 0,
        max_nodes: limits
            .max_entries
            .saturating_mul(2)
            .saturating_add(4096)
            .min(u32::MAX as u64 - 1),
    };
    let entries = archive.entries().map_err(|e| fail(&st, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(&st, e))?;
        ix.entries += 1;
        if ix.entries > limits.max_entries {
            return Err(Error::TooLarge(format!(
                "layer tar: more than {} entries",
                limits.max_entries
            )));
        }
        let data_start = st.borrow().pos;
        let sparse = entry.header().entry_type().is_gnu_sparse();
        let stored = if sparse {
            entry.header().entry_size().unwrap_or(0)
        } else {
            entry.size()
        };
        // What the tar crate may read before handing us the next entry: this
        // entry's data (skipped), then the next entry's headers.
        st.borrow_mut().budget = stored.saturating_add(511).saturating_add(allowance);
        ix.entry(&mut entry, data_start, &st)?;
    }
    let entries = ix.entries;
    Ok((ix.b.finish(), entries))
}

/// Bytes of headers, long names and PAX records one entry may bring.
fn header_allowance(limits: &Limits) -> u64 {
    let name = limits.max_name_len as u64 + 1024;
    // main header + L + K + x headers, two long names, one PAX record set
    // (path, linkpath, xattrs, times…), GNU sparse extension headers.
    4 * 512 + 2 * name + (limits.max_xattr_bytes as u64 + 2 * name + (64 << 10)) + RING as u64
}

fn fail(st: &Rc<RefCell<Shared>>, e: io::Error) -> Error {
    st.borrow_mut()
        .failure
        .take()
        .unwrap_or_else(|| Error::Invalid(format!("layer tar: {e}")))
}

/// State shared between the reader under the tar crate and the indexer.
struct Shared {
    /// Bytes read so far: the position in the uncompressed stream.
    pos: u64,
    /// `max_uncompressed`.
    limit: u64,
    /// Bytes that may still be read before the next entry is handed to us.
    budget: u64,
    /// Why the reader failed, when it was our limits.
    failure: Option<Error>,
    /// The last `RING` bytes read; byte at position p is at `p % RING`.
    ring: Vec<u8>,
}

impl Shared {
    /// The bytes `[start, self.pos)` if they are still in the ring.
    fn recent(&self, start: u64) -> Option<Vec<u8>> {
        let len = self.pos.checked_sub(start)?;
        if len > RING as u64 {
            return None;
        }
        let at = (start % RING as u64) as usize;
        let len = len as usize;
        let mut out = Vec::with_capacity(len);
        let first = len.min(RING - at);
        out.extend_from_slice(&self.ring[at..at + first]);
        out.extend_from_slice(&self.ring[..len - first]);
        Some(out)
    }
}

/// The reader the tar crate reads: counts, enforces limits, keeps the ring.
struct Tracked<R> {
    inner: R,
    st: Rc<RefCell<Shared>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut st = self.st.borrow_mut();
        let start = st.pos;
        st.pos += n as u64;
        if st.pos > st.limit {
            let msg = format!("layer tar: uncompressed stream exceeds {} bytes", st.limit);
            st.failure = Some(Error::TooLarge(msg.clone()));
            return Err(io::Error::other(msg));
        }
        if n as u64 > st.budget {
            let msg =
                "layer tar: entry headers (long names, PAX records) exceed the limits".to_string();
            st.failure = Some(Error::TooLarge(msg.clone()));
            return Err(io::Error::other(msg));
        }
        st.budget -= n as u64;
        // Copy the last RING bytes read into the ring, in at most two pieces.
        let keep = n.min(RING);
        let mut src = &buf[n - keep..n];
        let mut at = ((start + (n - keep) as u64) % RING as u64) as usize;
        while !src.is_empty() {
            let k = src.len().min(RING - at);
            st.ring[at..at + k].copy_from_slice(&src[..k]);
            src = &src[k..];
            at = 0;
        }
        Ok(n)
    }
}

struct Indexer<'l> {
    b: Builder,
    layer: u16,
    limits: &'l Limits,
    entries: u64,
    meta_bytes: u64,
    max_nodes: u64,
}

/// Metadata of one entry, decoded from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: u32,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pax_sparse: bool,
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl Indexer<'_> {
    fn add(&mut self, node: Node) -> Result<NodeId> {
        if self.b.nodes.len() as u64 >= self.max_nodes {
            return Err(Error::TooLarge(format!(
                "layer tar: more than {} nodes (entries and implicit directories)",
                self.max_nodes
            )));
        }
        Ok(self.b.add(node))
    }

    fn charge(&mut self, bytes: usize) -> Result<()> {
        self.meta_bytes += bytes as u64;
        if self.meta_bytes > self.limits.max_metadata_bytes {
            return Err(Error::TooLarge(format!(
                "layer tar: more than {} bytes of names and xattrs",
                self.limits.max_metadata_bytes
            )));
        }
        Ok(())
    }

    /// The directory at `comps`, creating implicit directories and replacing
    /// non-directories on the way.
    fn ensure_dir(&mut self, comps: &[&[u8]]) -> Result<NodeId> {
        let mut id = self.b_root();
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
                    let new = self.add(dir)?;
                    self.b.set_child(id, c, new);
                    new
                }
            };
        }
        Ok(id)
    }

    fn b_root(&self) -> NodeId {
        0
    }

    /// The existing node at `comps`, through directories only.
    fn find(&self, comps: &[&[u8]]) -> Option<NodeId> {
        let mut id = self.b_root();
        for c in comps {
            if !self.b.node(id).is_dir() {
                return None;
            }
            id = self.b.child(id, c)?;
        }
        Some(id)
    }

    fn meta<R: Read>(&self, e: &mut tar::Entry<'_, R>, path: &[u8]) -> Result<Meta> {
        let h = e.header();
        let bad = |what: &str, err: io::Error| {
            Error::Invalid(format!("layer tar: {}: bad {what}: {err}", lossy(path)))
        };
        // An empty numeric field (all NUL or spaces) is 0, as Go's archive/tar reads it.
        let raw = h.as_bytes();
        let num = |v: io::Result<u64>, range: std::ops::Range<usize>, what: &str| match v {
            Ok(v) => Ok(v),
            Err(_) if raw[range.clone()].iter().all(|&b| b == 0 || b == b' ') => Ok(0),
            Err(err) => Err(bad(what, err)),
        };
        let mode = num(h.mode().map(u64::from), 100..108, "mode")? as u32 & 0o7777;
        let id32 = |v: u64, what: &str| {
            u32::try_from(v).unwrap_or_else(|_| {
                tracing::warn!(path = %lossy(path), "{what} {v} does not fit 32 bits; using 65534");
                65534
            })
        };
        let mut uid = id32(num(h.uid(), 108..116, "uid")?, "uid");
        let mut gid = id32(num(h.gid(), 116..124, "gid")?, "gid");
        let mtime = num(h.mtime(), 136..148, "mtime")?;
        let mut mtime = i64::try_from(mtime).unwrap_or(i64::MAX);
        let mut mtime_nsec = 0;
        let mut xattrs = Vec::new();
        let mut xattr_bytes = 0usize;
        let mut pax_sparse = false;
        let max_xattr = self.limits.max_xattr_bytes;
        if let Some(pax) = e.pax_extensions().map_err(|err| bad("PAX header", err))? {
            for rec in pax {
                let rec = rec.map_err(|err| {
                    Error::Invalid(format!(
                        "layer tar: {}: malformed PAX record: {err}",
                        lossy(path)
                    ))
                })?;
                let (key, value) = (rec.key_bytes(), rec.value_bytes());
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattr_bytes += name.len() + value.len();
                    if xattr_bytes > max_xattr {
                        return Err(Error::TooLarge(format!(
                            "layer tar: {}: more than {max_xattr} bytes of xattrs",
                            lossy(path)
                        )));
                    }
                    if name.starts_with(b"trusted.overlay.") {
                        tracing::debug!(path = %lossy(path), "dropping overlay xattr from the tar");
                        continue;
                    }
                    xattrs.push((name.to_vec(), value.to_vec()));
                } else if key.starts_with(b"GNU.sparse.") {
                    pax_sparse = true;
                } else {
                    match key {
                        b"mtime" => match parse_pax_time(value) {
                            Some((s, ns)) => (mtime, mtime_nsec) = (s, ns),
                            None => tracing::warn!(path = %lossy(path), "bad PAX mtime ignored"),
                        },
                        b"uid" | b"gid" => {
                            match std::str::from_utf8(value)
                                .ok()
                                .and_then(|v| v.parse::<u64>().ok())
                            {
                                Some(v) if key == b"uid" => uid = id32(v, "uid"),
                                Some(v) => gid = id32(v, "gid"),
                                None => {
                                    tracing::warn!(path = %lossy(path), "bad PAX uid/gid ignored")
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        // Sorted by name; for a repeated name the last record wins.
        xattrs.reverse();
        xattrs.sort_by(|a, b| a.0.cmp(&b.0));
        xattrs.dedup_by(|a, b| a.0 == b.0);
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            xattrs,
            pax_sparse,
        })
    }

    fn entry<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        data_start: u64,
        st: &Rc<RefCell<Shared>>,
    ) -> Result<()> {
        let path = e.path_bytes().into_owned();
        if path.len() > self.limits.max_name_len {
            return Err(Error::TooLarge(format!(
                "layer tar: a path of {} bytes (limit {})",
                path.len(),
                self.limits.max_name_len
            )));
        }
        let ty = e.header().entry_type();
        let type_byte = e.header().as_bytes()[156];
        use tar::EntryType as T;
        let kind = match ty {
            T::XGlobalHeader => {
                tracing::debug!("ignoring a PAX global header");
                return Ok(());
            }
            T::Regular if type_byte == 0 && path.ends_with(b"/") => Some(Kind::Dir),
            T::Regular | T::Continuous | T::GNUSparse => Some(Kind::File),
            T::Directory => Some(Kind::Dir),
            T::Symlink => Some(Kind::Symlink),
            T::Char => Some(Kind::CharDev),
            T::Block => Some(Kind::BlockDev),
            T::Fifo => Some(Kind::Fifo),
            T::Link => None,
            other => {
                tracing::warn!(path = %lossy(&path), "skipping tar entry of unsupported type {:?}", other.as_byte() as char);
                return Ok(());
            }
        };
        let meta = self.meta(e, &path)?;
        if meta.pax_sparse {
            tracing::warn!(path = %lossy(&path), "skipping a PAX-format sparse file (unsupported)");
            return Ok(());
        }
        let comps = normalize(&path);
        let Some((&name, parent)) = comps.split_last() else {
            // The root itself.
            if kind == Some(Kind::Dir) {
                let root = self.b.node_mut(0);
                apply_dir_meta(root, meta);
            } else {
                tracing::warn!(path = %lossy(&path), "skipping a non-directory entry naming the root");
            }
            return Ok(());
        };

        // Whiteouts.
        if let Some(rest) = name.strip_prefix(b".wh.") {
            if rest == b".wh..opq" {
                let dir = self.ensure_dir(parent)?;
                self.b.node_mut(dir).set_opaque(true);
                return Ok(());
            }
            if rest.starts_with(b".wh.") || rest.is_empty() || rest == b"." || rest == b".." {
                tracing::warn!(path = %lossy(&path), "skipping unsupported whiteout-like entry");
                return Ok(());
            }
            let dir = self.ensure_dir(parent)?;
            match self.b.child(dir, rest) {
                None => {
                    self.charge(rest.len())?;
                    let w = Node {
                        whiteout: true,
                        mtime: meta.mtime,
                        mtime_nsec: meta.mtime_nsec,
                        ..Node::new(Kind::CharDev, 0)
                    };
                    let id = self.add(w)?;
                    self.b.set_child(dir, rest, id);
                }
                Some(x) if self.b.node(x).is_dir() => self.b.node_mut(x).set_opaque(true),
                // A real entry (or a whiteout) already: it stays.
                Some(_) => {}
            }
            return Ok(());
        }

        let Some(kind) = kind else {
            return self.hardlink(e, &path, parent, name);
        };

        if kind == Kind::Dir {
            let dir = self.ensure_dir(parent)?;
            match self.b.child(dir, name) {
                Some(x) if self.b.node(x).is_dir() => {
                    self.charge(meta_bytes(&meta))?;
                    apply_dir_meta(self.b.node_mut(x), meta);
                }
                existing => {
                    let opaque = existing.is_some_and(|x| self.b.node(x).whiteout);
                    self.charge(name.len() + meta_bytes(&meta))?;
                    let mut n = Node::new(Kind::Dir, 0);
                    apply_dir_meta(&mut n, meta);
                    if opaque {
                        n.set_opaque(true);
                    }
                    let id = self.add(n)?;
                    self.b.set_child(dir, name, id);
                }
            }
            return Ok(());
        }

        let mut node = Node {
            uid: meta.uid,
            gid: meta.gid,
            mtime: meta.mtime,
            mtime_nsec: meta.mtime_nsec,
            ..Node::new(kind, meta.mode)
        };
        let mut extra = name.len() + meta_bytes(&meta);
        node.xattrs = meta.xattrs;
        match kind {
            Kind::File if ty.is_gnu_sparse() => {
                node.size = e.size();
                match self.sparse_segments(e, data_start, st) {
                    Some(segments) => {
                        extra += segments.len() * std::mem::size_of::<Segment>();
                        node.content = Content::Sparse {
                            layer: self.layer,
                            segments,
                        };
                    }
                    None => {
                        tracing::warn!(path = %lossy(&path), "skipping a GNU sparse file with too many segments");
                        return Ok(());
                    }
                }
            }
            Kind::File => {
                node.size = e.size();
                node.content = Content::Tar {
                    layer: self.layer,
                    offset: e.raw_file_position(),
                };
            }
            Kind::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if target.len() > self.limits.max_name_len {
                    return Err(Error::TooLarge(format!(
                        "layer tar: {}: a link target of {} bytes",
                        lossy(&path),
                        target.len()
                    )));
                }
                if target.is_empty() {
                    tracing::warn!(path = %lossy(&path), "symlink with an empty target");
                }
                extra += target.len();
                node.size = target.len() as u64;
                node.link_target = Some(target);
            }
            Kind::CharDev | Kind::BlockDev => {
                let h = e.header();
                node.rdev = (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                );
            }
            Kind::Fifo | Kind::Dir => {}
        }
        self.charge(extra)?;
        let dir = self.ensure_dir(parent)?;
        let id = self.add(node)?;
        self.b.set_child(dir, name, id);
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        e: &tar::Entry<'_, R>,
        path: &[u8],
        parent: &[&[u8]],
        name: &[u8],
    ) -> Result<()> {
        let Some(target) = e.link_name_bytes() else {
            tracing::warn!(path = %lossy(path), "skipping a hard link without a target");
            return Ok(());
        };
        let Some(tcomps) = normalize_strict(&target) else {
            tracing::warn!(path = %lossy(path), target = %lossy(&target), "skipping a hard link whose target escapes the root");
            return Ok(());
        };
        let found = self.find(&tcomps).filter(|&t| {
            let n = self.b.node(t);
            !n.is_dir() && !n.whiteout
        });
        let Some(t) = found else {
            tracing::warn!(path = %lossy(path), target = %lossy(&target), "skipping a hard link to a missing or unlinkable target");
            return Ok(());
        };
        self.charge(name.len())?;
        let dir = self.ensure_dir(parent)?;
        self.b.set_child(dir, name, t);
        Ok(())
    }

    /// The data segments of the GNU sparse entry `e`, whose data starts at
    /// `data_start` in the stream (after any extension headers).
    fn sparse_segments<R: Read>(
        &self,
        e: &tar::Entry<'_, R>,
        data_start: u64,
        st: &Rc<RefCell<Shared>>,
    ) -> Option<Vec<Segment>> {
        let gnu = e.header().as_gnu()?;
        let mut blocks: Vec<(u64, u64)> = Vec::new();
        let mut push = |b: &tar::GnuSparseHeader| {
            if !b.is_empty() {
                if let (Ok(o), Ok(l)) = (b.offset(), b.length()) {
                    blocks.push((o, l));
                }
            }
        };
        gnu.sparse.iter().for_each(&mut push);
        if gnu.is_extended() {
            let ext = st.borrow().recent(e.raw_file_position())?;
            for chunk in ext.chunks_exact(512) {
                let mut h = tar::GnuExtSparseHeader::new();
                h.as_mut_bytes().copy_from_slice(chunk);
                h.sparse.iter().for_each(&mut push);
            }
        }
        let mut raw = data_start;
        let mut segments = Vec::with_capacity(blocks.len());
        for (logical, len) in blocks {
            if len > 0 {
                segments.push(Segment { logical, raw, len });
                raw += len;
            }
        }
        Some(segments)
    }
}

fn meta_bytes(m: &Meta) -> usize {
    m.xattrs.iter().map(|(n, v)| n.len() + v.len()).sum()
}

/// Apply a directory entry's metadata, keeping children and opacity.
fn apply_dir_meta(n: &mut Node, m: Meta) {
    n.mode = m.mode;
    n.uid = m.uid;
    n.gid = m.gid;
    n.mtime = m.mtime;
    n.mtime_nsec = m.mtime_nsec;
    n.xattrs = m.xattrs;
    n.implicit = false;
    let opaque = n.opaque;
    n.set_opaque(opaque);
}

/// A PAX time: `[-]seconds[.fraction]`.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += (b - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    if !neg {
        Some((secs, nsec))
    } else if nsec == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nsec))
    }
}

#[cfg(test)]
mod tests;
