//! A source layer's tar replayed entry by entry into a [`TarSink`] (the
//! export packer's sink: eStargz or zstd:chunked), as a [`TarProducer`].
//!
//! Each entry is written again from its parsed metadata with the export
//! packer's header code ([`append_entry`]): name (PAX `path` when long),
//! type, mode, owner, mtime, link target (PAX `linkpath`), device numbers,
//! `SCHILY.xattr.*` records, and the content byte for byte. Other PAX
//! records (atime, ctime, user and group names) are not kept; no layer
//! reader uses them. A source that is itself eStargz or zstd:chunked loses
//! its TOC entry and landmark files: the sink writes its own.
//!
//! Two ways in:
//! - [`Replay::Stream`]: the tar as it comes (nothing buffered), entries in
//!   source order after a `.no.prefetch.landmark`.
//! - [`Replay::Spooled`]: a tar spooled to an unlinked temporary file and
//!   scanned once ([`Spool`]), then written in a [`Plan`]'s order:
//!   prioritised files first (each after those of its parent directories
//!   not written yet, as stargz-snapshotter's `sortEntries` moves them),
//!   then `.prefetch.landmark`, then every other entry in source order.
//!   A plan that prioritises nothing starts with `.no.prefetch.landmark`.
//!   Hard links keep coming after their targets: a prioritised path that
//!   is a hard link prioritises its target instead, and a target moved
//!   forward only moves further from the links after it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tar::{EntryType, Header};

use crate::estargz::{NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_NAME};
use crate::export::pack::{
    append_entry, finish, set_link, set_name, EntryDesc, PackStats, TarProducer, TarSink,
};

/// The byte a landmark file holds (stargz-snapshotter's `landmarkContents`).
const LANDMARK_CONTENT: u8 = 0x0f;

/// `name` without leading `./` and `/` and trailing `/`: how a trace and
/// a tar may both spell a path.
pub fn normalize(name: &[u8]) -> &[u8] {
    let mut n = name;
    loop {
        if let Some(r) = n.strip_prefix(b"./") {
            n = r;
        } else if let Some(r) = n.strip_prefix(b"/") {
            n = r;
        } else {
            break;
        }
    }
    while let Some(r) = n.strip_suffix(b"/") {
        n = r;
    }
    if n == b"." {
        return b"";
    }
    n
}

/// Whether a source entry belongs to the lazy format rather than to the
/// image (a TOC or landmark at the layer's root): not copied.
fn is_format_file(name: &[u8]) -> bool {
    let n = normalize(name);
    n == TOC_NAME.as_bytes()
        || n == PREFETCH_LANDMARK.as_bytes()
        || n == NO_PREFETCH_LANDMARK.as_bytes()
}

/// What a scanned entry is, as far as planning needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    Reg,
    /// A directory.
    Dir,
    /// A hard link to this (normalised) name.
    Link(Vec<u8>),
    /// Anything else (symlinks, devices, fifos).
    Other,
}

/// One entry of a spooled tar.
#[derive(Clone, Debug)]
pub struct Scanned {
    /// Where its first header (PAX or GNU long name included) starts.
    start: u64,
    /// Its normalised name.
    pub name: Vec<u8>,
    /// What it is.
    pub kind: Kind,
}

/// A layer's uncompressed tar in an unlinked temporary file, scanned.
#[derive(Debug)]
pub struct Spool {
    file: File,
    /// The entries, in tar order (format files excluded).
    pub entries: Vec<Scanned>,
    by_name: HashMap<Vec<u8>, usize>,
    /// Names that more than one entry has (the last one wins when the
    /// layer is applied, so none of them may move).
    repeated: HashSet<Vec<u8>>,
}

/// Reads a file from `pos` on, without moving a shared offset.
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Tracks the position in a tar stream: every byte read passes here.
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Spool {
    /// Copy `tar` to its end into an unlinked file in `dir`, then scan it.
    pub fn new(tar: &mut dyn Read, dir: &Path) -> io::Result<Spool> {
        let path = dir.join(format!(
            ".regfs-convert-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let _ = std::fs::remove_file(&path);
        io::copy(tar, &mut io::BufWriter::with_capacity(1 << 20, &mut file))?;
        let entries = scan(&file)?;
        let mut by_name = HashMap::new();
        let mut repeated = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            // The last entry of a name wins.
            if by_name.insert(e.name.clone(), i).is_some() {
                repeated.insert(e.name.clone());
            }
        }
        Ok(Spool {
            file,
            entries,
            by_name,
            repeated,
        })
    }

    /// The index of the entry named `name` (normalised), if any.
    pub fn find(&self, name: &[u8]) -> Option<usize> {
        self.by_name.get(normalize(name)).copied()
    }

    /// The entry named `name` if it may move: the only one of that name.
    fn movable(&self, name: &[u8]) -> Option<usize> {
        let name = normalize(name);
        (!self.repeated.contains(name))
            .then(|| self.find(name))
            .flatten()
    }
}

/// The entries of the tar in `file`, with where each starts.
fn scan(file: &File) -> io::Result<Vec<Scanned>> {
    let mut ar = tar::Archive::new(Counted {
        inner: BufReader::with_capacity(1 << 20, At { file, pos: 0 }),
        pos: 0,
    });
    let mut out = Vec::new();
    let mut next_start = 0u64;
    for e in ar.entries()? {
        let e = e?;
        let start = next_start;
        let size = e.size();
        next_start = e.raw_file_position() + size.div_ceil(512) * 512;
        let name = e.path_bytes();
        if is_format_file(&name) {
            continue;
        }
        let kind = match e.header().entry_type() {
            EntryType::Regular | EntryType::Continuous => Kind::Reg,
            EntryType::Directory => Kind::Dir,
            EntryType::Link => Kind::Link(
                e.link_name_bytes()
                    .map(|l| normalize(&l).to_vec())
                    .unwrap_or_default(),
            ),
            _ => Kind::Other,
        };
        out.push(Scanned {
            start,
            name: normalize(&name).to_vec(),
            kind,
        });
    }
    Ok(out)
}

/// The order in which a spooled layer is written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Entry indexes, each once: the prioritised part, then the rest.
    pub order: Vec<usize>,
    /// How many of `order` come before the landmark (0: none prioritised,
    /// `.no.prefetch.landmark` first).
    pub prioritized: usize,
}

impl Plan {
    /// How many regular files come before the landmark.
    pub fn prioritized_files(&self, spool: &Spool) -> usize {
        self.order[..self.prioritized]
            .iter()
            .filter(|&&i| spool.entries[i].kind == Kind::Reg)
            .count()
    }
}

/// The regular file `name` stands for in `spool`: itself, or a hard
/// link's target; `None` also when that name has several entries (moving
/// the last one first would let an earlier one win).
pub fn regular_file(spool: &Spool, name: &[u8]) -> Option<usize> {
    let i = spool.find(name)?;
    match &spool.entries[i].kind {
        Kind::Reg => spool.movable(name),
        Kind::Link(target) => {
            let t = spool.movable(target)?;
            (spool.entries[t].kind == Kind::Reg && t < i).then_some(t)
        }
        _ => None,
    }
}

/// Plan `spool` with the regular files `wanted` (entry indexes, in the
/// order they are wanted) first, each after its parent directories.
pub fn plan(spool: &Spool, wanted: &[usize]) -> Plan {
    let mut order = Vec::new();
    let mut taken = HashSet::new();
    for &w in wanted {
        if taken.contains(&w) {
            continue;
        }
        let name = &spool.entries[w].name;
        for (i, _) in name.iter().enumerate().filter(|(_, &c)| c == b'/') {
            if let Some(d) = spool.movable(&name[..i]) {
                if spool.entries[d].kind == Kind::Dir && d < w && taken.insert(d) {
                    order.push(d);
                }
            }
        }
        taken.insert(w);
        order.push(w);
    }
    let prioritized = order.len();
    order.extend((0..spool.entries.len()).filter(|i| !taken.contains(i)));
    Plan { order, prioritized }
}

/// A source tar as a [`TarProducer`].
pub enum Replay<'a> {
    /// Entries in source order, read as they come.
    Stream(&'a mut (dyn Read + Send)),
    /// Entries of a spooled tar in the plan's order.
    Spooled(&'a Spool, &'a Plan),
}

impl TarProducer for Replay<'_> {
    fn produce<W: TarSink>(
        self,
        out: W,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<(W, PackStats)> {
        let mut b = tar::Builder::new(out);
        let mut stats = PackStats::default();
        match self {
            Replay::Stream(tar) => {
                landmark(&mut b, NO_PREFETCH_LANDMARK)?;
                let mut ar = tar::Archive::new(tar);
                for e in ar.entries()? {
                    copy_entry(&mut b, &mut e?, &mut stats, progress)?;
                }
            }
            Replay::Spooled(spool, plan) => {
                if plan.prioritized == 0 {
                    landmark(&mut b, NO_PREFETCH_LANDMARK)?;
                }
                for (n, &i) in plan.order.iter().enumerate() {
                    if n == plan.prioritized && n > 0 {
                        landmark(&mut b, PREFETCH_LANDMARK)?;
                    }
                    let at = At {
                        file: &spool.file,
                        pos: spool.entries[i].start,
                    };
                    let mut ar = tar::Archive::new(BufReader::new(at));
                    let mut entries = ar.entries()?;
                    let e = entries
                        .next()
                        .ok_or_else(|| io::Error::other("spooled tar: an entry vanished"))?;
                    copy_entry(&mut b, &mut e?, &mut stats, progress)?;
                }
                if plan.prioritized > 0 && plan.prioritized == plan.order.len() {
                    landmark(&mut b, PREFETCH_LANDMARK)?;
                }
            }
        }
        finish(b, stats)
    }
}

/// A landmark file as stargz-snapshotter's writer makes it: mode 0, root,
/// mtime 0, one byte.
fn landmark<W: TarSink>(b: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(1);
    h.set_path(name)?;
    h.set_cksum();
    let d = EntryDesc {
        name: name.as_bytes().to_vec(),
        kind: "reg",
        size: 1,
        ..EntryDesc::default()
    };
    append_entry(b, &h, &[], &d, Some(&mut &[LANDMARK_CONTENT][..]))
}

/// Write source entry `e` to `b` again (skipping format files and global
/// PAX headers).
fn copy_entry<W: TarSink, R: Read>(
    b: &mut tar::Builder<W>,
    e: &mut tar::Entry<'_, R>,
    stats: &mut PackStats,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let mut name = e.path_bytes().into_owned();
    if is_format_file(&name) {
        return Ok(());
    }
    let src = e.header().clone();
    let et = src.entry_type();
    let (kind, out_type) = match et {
        EntryType::Regular | EntryType::Continuous => ("reg", EntryType::Regular),
        EntryType::Directory => ("dir", EntryType::Directory),
        EntryType::Symlink => ("symlink", EntryType::Symlink),
        EntryType::Link => ("hardlink", EntryType::Link),
        EntryType::Char => ("char", EntryType::Char),
        EntryType::Block => ("block", EntryType::Block),
        EntryType::Fifo => ("fifo", EntryType::Fifo),
        EntryType::XGlobalHeader => return Ok(()),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "tar entry {:?}: type {other:?} cannot be converted",
                    String::from_utf8_lossy(&name)
                ),
            ))
        }
    };
    if kind == "dir" && !name.ends_with(b"/") {
        name.push(b'/');
    }
    let bad = |what: &str, e: io::Error| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "tar entry {:?}: {what}: {e}",
                String::from_utf8_lossy(&name)
            ),
        )
    };
    let mode = src.mode().map_err(|e| bad("mode", e))? & 0o7777;
    let mut uid = src.uid().map_err(|e| bad("uid", e))?;
    let mut gid = src.gid().map_err(|e| bad("gid", e))?;
    let mut mtime = src.mtime().map_err(|e| bad("mtime", e))? as i64;
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(pax) = e.pax_extensions().map_err(|e| bad("PAX", e))? {
        for r in pax {
            let r = r.map_err(|e| bad("PAX", e))?;
            let (Ok(k), v) = (r.key(), r.value_bytes()) else {
                continue;
            };
            let num = || {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.split('.').next()?.parse::<i64>().ok())
            };
            match k {
                "uid" => uid = num().unwrap_or(uid as i64) as u64,
                "gid" => gid = num().unwrap_or(gid as i64) as u64,
                "mtime" => mtime = num().unwrap_or(mtime),
                _ => {
                    if let Some(x) = k.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((x.to_string(), v.to_vec()));
                    }
                }
            }
        }
    }
    xattrs.sort();
    let link = match kind {
        "symlink" | "hardlink" => e
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let size = if kind == "reg" { e.size() } else { 0 };
    let mut h = Header::new_ustar();
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    h.set_entry_type(out_type);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime.max(0) as u64);
    h.set_size(size);
    set_name(&mut h, &name, &mut pax);
    if !link.is_empty() {
        set_link(&mut h, &link, &mut pax);
    }
    let mut dev = (0, 0);
    if kind == "char" || kind == "block" {
        dev = (
            src.device_major().ok().flatten().unwrap_or(0),
            src.device_minor().ok().flatten().unwrap_or(0),
        );
        h.set_device_major(dev.0)?;
        h.set_device_minor(dev.1)?;
    }
    for (k, v) in &xattrs {
        pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
    }
    h.set_cksum();
    let d = EntryDesc {
        name,
        kind,
        size,
        mtime: mtime.max(0),
        link,
        mode,
        uid,
        gid,
        dev,
        xattrs,
    };
    stats.entries += 1;
    if kind == "reg" {
        stats.content_bytes += size;
        progress(size);
        append_entry(b, &h, &pax, &d, Some(e))
    } else {
        append_entry(b, &h, &pax, &d, None)
    }
}

#[cfg(test)]
mod tests;
