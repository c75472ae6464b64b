//! Index a layer tar in one streaming pass: what every path is, and where its
//! bytes are in the uncompressed stream.
//!
//! What a user sees of the layer is decided by the rules of
//! [`entries`](super::entries) (normalised paths, implicit parents,
//! duplicates, hard links, whiteouts, limits), which every layer format
//! shares; this module turns tar members into its [`Entry`]s:
//!
//! - **GNU sparse** files (type `S`, old GNU format, with extension headers)
//!   are indexed as [`FileData::Sparse`]. The **PAX sparse** formats (0.0, 0.1,
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
use crate::layer::entries::{Entry, EntryKind, TreeBuilder};
use crate::layer::tree::{FileData, NodeKind, Segment, Tree};

pub use crate::layer::entries::Limits;

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
        b: TreeBuilder::new("layer tar", limits),
        layer,
    };
    let entries = archive.entries().map_err(|e| fail(&st, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| fail(&st, e))?;
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
    let entries = ix.b.entries();
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
    b: TreeBuilder<'l>,
    layer: u16,
}

/// Metadata of one entry, decoded from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    mtime_nsec: u32,
    /// As the PAX records have them (the rules of [`entries`](super::entries) apply later).
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pax_sparse: bool,
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

impl Indexer<'_> {
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
        let mode = num(h.mode().map(u64::from), 100..108, "mode")? as u32;
        let mut uid = num(h.uid(), 108..116, "uid")?;
        let mut gid = num(h.gid(), 116..124, "gid")?;
        let mtime = num(h.mtime(), 136..148, "mtime")?;
        let mut mtime = i64::try_from(mtime).unwrap_or(i64::MAX);
        let mut mtime_nsec = 0;
        let mut xattrs = Vec::new();
        let mut pax_sparse = false;
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
                                Some(v) if key == b"uid" => uid = v,
                                Some(v) => gid = v,
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
        let ty = e.header().entry_type();
        let type_byte = e.header().as_bytes()[156];
        use tar::EntryType as T;
        let ty = match ty {
            T::XGlobalHeader => {
                tracing::debug!("ignoring a PAX global header");
                return self.b.skipped();
            }
            T::Regular if type_byte == 0 && path.ends_with(b"/") => EntryKind::Node(NodeKind::Dir),
            T::Regular | T::Continuous | T::GNUSparse => EntryKind::Node(NodeKind::File),
            T::Directory => EntryKind::Node(NodeKind::Dir),
            T::Symlink => EntryKind::Node(NodeKind::Symlink),
            T::Char => EntryKind::Node(NodeKind::CharDev),
            T::Block => EntryKind::Node(NodeKind::BlockDev),
            T::Fifo => EntryKind::Node(NodeKind::Fifo),
            T::Link => EntryKind::HardLink,
            other => {
                tracing::warn!(path = %lossy(&path), "skipping tar entry of unsupported type {:?}", other.as_byte() as char);
                return self.b.skipped();
            }
        };
        let meta = self.meta(e, &path)?;
        if meta.pax_sparse {
            tracing::warn!(path = %lossy(&path), "skipping a PAX-format sparse file (unsupported)");
            return self.b.skipped();
        }
        let link = match ty {
            EntryKind::HardLink | EntryKind::Node(NodeKind::Symlink) => e
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        let h = e.header();
        let rdev = match ty {
            EntryKind::Node(NodeKind::CharDev | NodeKind::BlockDev) => (
                h.device_major().ok().flatten().unwrap_or(0),
                h.device_minor().ok().flatten().unwrap_or(0),
            ),
            _ => (0, 0),
        };
        let content = match ty {
            EntryKind::Node(NodeKind::File) if h.entry_type().is_gnu_sparse() => {
                match self.sparse_segments(e, data_start, st) {
                    Some(segments) => FileData::Sparse {
                        layer: self.layer,
                        segments,
                    },
                    None => {
                        tracing::warn!(path = %lossy(&path), "skipping a GNU sparse file with too many segments");
                        return self.b.skipped();
                    }
                }
            }
            EntryKind::Node(NodeKind::File) => FileData::Tar {
                layer: self.layer,
                offset: e.raw_file_position(),
            },
            _ => FileData::None,
        };
        let size = match ty {
            EntryKind::Node(NodeKind::File) => e.size(),
            _ => 0,
        };
        self.b
            .add(Entry {
                mode: meta.mode,
                uid: meta.uid,
                gid: meta.gid,
                mtime: meta.mtime,
                mtime_nsec: meta.mtime_nsec,
                size,
                content,
                link: &link,
                rdev,
                xattrs: meta.xattrs,
                ..Entry::new(&path, ty)
            })
            .map(drop)
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
