//! A deterministic tar writer for a staged tree.
//!
//! The same tree always gives the same bytes: entries in sorted name order
//! (depth first, each directory's children sorted by their raw names), no
//! user or group names, no access or change times, PAX records only when
//! needed (long names, long link targets, xattrs) and in sorted order.
//! Hard links are found by `(dev, ino)`; symlinks are never followed. Modes,
//! owners and mtimes are kept; `source_date_epoch` clamps mtimes to it.
//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) are written with fixed
//! metadata. The root directory itself is not an entry (its metadata comes
//! from the base image, or is the runtime's default).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{EntryType, Header};

use super::xattr;

/// Options of [`write_tar`].
#[derive(Clone, Debug, Default)]
pub struct PackOptions {
    /// Clamp every mtime to at most this (seconds since the epoch).
    pub source_date_epoch: Option<i64>,
}

/// What [`write_tar`] wrote.
#[derive(Clone, Debug, Default)]
pub struct PackStats {
    /// Tar entries (without PAX headers).
    pub entries: u64,
    /// Bytes of file content.
    pub content_bytes: u64,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Copy-up temp files of the export filesystem: never packed.
const TMP_PREFIX: &[u8] = b".wh..regfs-tmp.";

/// One tar entry as the sink sees it (for an eStargz TOC).
#[derive(Clone, Debug, Default)]
pub struct EntryDesc {
    /// The name as stored (directories end in `/`).
    pub name: Vec<u8>,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo`.
    pub kind: &'static str,
    /// Content size of a regular file.
    pub size: u64,
    /// Modification time (seconds since the epoch, as written).
    pub mtime: i64,
    /// Symlink target, or the first name of a hard link.
    pub link: Vec<u8>,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Device numbers.
    pub dev: (u32, u32),
    /// Extended attributes, sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// Where [`write_tar`] writes: a byte stream, told about entry boundaries
/// (the default methods suit a plain tar; an eStargz writer starts a gzip
/// member where file content starts and builds its TOC from the entries).
pub trait TarSink: Write {
    /// Entry `e` follows (its headers are written next).
    fn entry(&mut self, _e: &EntryDesc) -> io::Result<()> {
        Ok(())
    }
    /// A regular file's `size` content bytes, after its header (the padding
    /// to 512 bytes is written by the caller).
    fn content(&mut self, data: &mut dyn Read, size: u64) -> io::Result<()> {
        let n = io::copy(&mut data.take(size), self)?;
        if n != size {
            return Err(io::Error::other("short file content"));
        }
        Ok(())
    }
    /// The end-of-archive blocks follow.
    fn end(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TarSink for Vec<u8> {}

/// Something that writes a whole tar stream into a [`TarSink`]: a staged
/// directory ([`DirTree`]), or a source layer's tar replayed entry by entry
/// (`crate::convert::transcribe`). The compression pipeline
/// ([`super::compress::pack_from`]) runs it on a thread of its own.
pub trait TarProducer: Send {
    /// Write every entry and the end-of-archive blocks to `out` (calling
    /// `out.end()` before them); `progress` gets content bytes as they go.
    fn produce<W: TarSink>(
        self,
        out: W,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<(W, PackStats)>;
}

/// A staged directory tree as a [`TarProducer`] (see [`write_tar`]).
pub struct DirTree<'a> {
    /// The tree's root (not itself an entry).
    pub root: &'a Path,
    /// How to pack it.
    pub opts: &'a PackOptions,
}

impl TarProducer for DirTree<'_> {
    fn produce<W: TarSink>(
        self,
        out: W,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<(W, PackStats)> {
        write_tar(self.root, out, self.opts, progress)
    }
}

/// Write the tree under `root` as a tar stream to `out` (finished, with the
/// end-of-archive blocks). `progress` is called with content bytes as they go.
pub fn write_tar<W: TarSink>(
    root: &Path,
    out: W,
    opts: &PackOptions,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(W, PackStats)> {
    let mut b = tar::Builder::new(out);
    let mut st = Packer {
        opts,
        links: HashMap::new(),
        stats: PackStats::default(),
        progress,
    };
    st.dir(&mut b, root, &mut Vec::new())?;
    finish(b, st.stats)
}

/// End a tar stream: tell the sink, write the end-of-archive blocks, and
/// hand the sink back.
pub fn finish<W: TarSink>(mut b: tar::Builder<W>, stats: PackStats) -> io::Result<(W, PackStats)> {
    b.get_mut().end()?;
    b.finish()?;
    Ok((b.into_inner()?, stats))
}

struct Packer<'a> {
    opts: &'a PackOptions,
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: PackStats,
    progress: &'a mut dyn FnMut(u64),
}

impl Packer<'_> {
    fn dir<W: TarSink>(
        &mut self,
        b: &mut tar::Builder<W>,
        dir: &Path,
        name: &mut Vec<u8>,
    ) -> io::Result<()> {
        // Deep trees: a short name for this directory (its children's
        // paths then fit in a system call).
        let dir = super::longpath::short(dir)?;
        let dir: &std::path::Path = &dir;
        let mut children: Vec<_> = fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for c in children {
            if c.as_bytes().starts_with(TMP_PREFIX) {
                continue; // an unfinished copy-up
            }
            let path = dir.join(&c);
            let len = name.len();
            name.extend_from_slice(c.as_bytes());
            let md = fs::symlink_metadata(&path)?;
            if md.is_dir() {
                name.push(b'/');
                self.entry(b, &path, &md, name)?;
                self.dir(b, &path, name)?;
            } else {
                self.entry(b, &path, &md, name)?;
            }
            name.truncate(len);
        }
        Ok(())
    }

    fn entry<W: TarSink>(
        &mut self,
        b: &mut tar::Builder<W>,
        path: &Path,
        md: &fs::Metadata,
        name: &[u8],
    ) -> io::Result<()> {
        let ft = md.file_type();
        let base = name
            .rsplit(|&c| c == b'/')
            .find(|s| !s.is_empty())
            .unwrap_or(name);
        let mut h = Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if ft.is_file() && base.starts_with(WHITEOUT_PREFIX) {
            // A whiteout or opaque marker: fixed metadata, no content. A long
            // whiteout (`staging::LONG_WH`) holds the name it whites out.
            let long;
            let name = if base.starts_with(crate::export::staging::LONG_WH) {
                let mut n = name[..name.len() - base.len()].to_vec();
                n.extend_from_slice(WHITEOUT_PREFIX);
                n.extend_from_slice(&fs::read(path)?);
                long = n;
                &long[..]
            } else {
                name
            };
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_size(0);
            set_name(&mut h, name, &mut pax);
            h.set_cksum();
            let d = EntryDesc {
                name: name.to_vec(),
                kind: "reg",
                mode: 0o644,
                ..EntryDesc::default()
            };
            return self.append(b, &h, &pax, &d, None);
        }
        let mtime = match self.opts.source_date_epoch {
            Some(e) => md.mtime().min(e),
            None => md.mtime(),
        };
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        set_name(&mut h, name, &mut pax);
        let mut d = EntryDesc {
            name: name.to_vec(),
            mtime: mtime.max(0),
            mode: md.mode() & 0o7777,
            uid: md.uid() as u64,
            gid: md.gid() as u64,
            ..EntryDesc::default()
        };
        for (k, v) in xattr::all(path)? {
            let k =
                String::from_utf8(k).map_err(|_| io::Error::other("xattr name is not UTF-8"))?;
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
            d.xattrs.push((k, v));
        }
        d.xattrs.sort();
        if !ft.is_dir() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key) {
                h.set_entry_type(EntryType::Link);
                let first = first.clone();
                set_link(&mut h, &first, &mut pax);
                h.set_cksum();
                d.kind = "hardlink";
                d.link = first;
                return self.append(b, &h, &pax, &d, None);
            }
            self.links.insert(key, name.to_vec());
        }
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
            d.kind = "dir";
        } else if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(path)?;
            set_link(&mut h, target.as_os_str().as_bytes(), &mut pax);
            d.kind = "symlink";
            d.link = target.as_os_str().as_bytes().to_vec();
        } else if ft.is_fifo() {
            h.set_entry_type(EntryType::Fifo);
            d.kind = "fifo";
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            d.kind = if ft.is_char_device() { "char" } else { "block" };
            let rdev = md.rdev();
            h.set_device_major(libc::major(rdev))?;
            h.set_device_minor(libc::minor(rdev))?;
            d.dev = (libc::major(rdev), libc::minor(rdev));
        } else if ft.is_socket() {
            tracing::warn!(path = %path.display(), "sockets cannot be packed; skipped");
            return Ok(());
        } else {
            h.set_entry_type(EntryType::Regular);
            let size = md.len();
            h.set_size(size);
            h.set_cksum();
            // Read exactly `size` bytes even if the file changes under us.
            let f = File::open(path)?;
            let mut data = f.take(size).chain(io::repeat(0)).take(size);
            self.stats.content_bytes += size;
            (self.progress)(size);
            d.kind = "reg";
            d.size = size;
            return self.append(b, &h, &pax, &d, Some(&mut data));
        }
        h.set_cksum();
        self.append(b, &h, &pax, &d, None)
    }

    fn append<W: TarSink>(
        &mut self,
        b: &mut tar::Builder<W>,
        h: &Header,
        pax: &[(String, Vec<u8>)],
        d: &EntryDesc,
        data: Option<&mut dyn Read>,
    ) -> io::Result<()> {
        self.stats.entries += 1;
        append_entry(b, h, pax, d, data)
    }
}

/// Write one entry: tell the sink about `d`, then the PAX records (sorted,
/// if any), the header `h`, and for a regular file `h.size()` bytes of
/// `data` and the padding.
pub fn append_entry<W: TarSink>(
    b: &mut tar::Builder<W>,
    h: &Header,
    pax: &[(String, Vec<u8>)],
    d: &EntryDesc,
    data: Option<&mut dyn Read>,
) -> io::Result<()> {
    b.get_mut().entry(d)?;
    if !pax.is_empty() {
        let mut sorted: Vec<_> = pax.iter().collect();
        sorted.sort();
        b.append_pax_extensions(sorted.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let out = b.get_mut();
    out.write_all(h.as_bytes())?;
    let size = h.size()?;
    if let Some(data) = data {
        out.content(data, size)?;
        let pad = (512 - size % 512) % 512;
        out.write_all(&[0u8; 512][..pad as usize])?;
    }
    Ok(())
}

/// Put `name` in the header; longer than the field: a PAX `path` record too.
pub fn set_name(h: &mut Header, name: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    put(&mut h.as_old_mut().name, name, "path", pax);
}

/// Put a link target in the header; longer than the field: a PAX `linkpath` record.
pub fn set_link(h: &mut Header, target: &[u8], pax: &mut Vec<(String, Vec<u8>)>) {
    put(&mut h.as_old_mut().linkname, target, "linkpath", pax);
}

/// `value` into a header field, cut to it; whole in a PAX `key` record when longer.
fn put(field: &mut [u8], value: &[u8], key: &str, pax: &mut Vec<(String, Vec<u8>)>) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
    if value.len() > field.len() {
        pax.push((key.into(), value.to_vec()));
    }
}
