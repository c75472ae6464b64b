//! One entry's merged view: the upper tree (real files in staging) over the
//! base image's rootfs, with OCI whiteouts in the upper tree hiding base
//! names, opaque markers hiding a base directory's children, and copy-up.

use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

use crate::export::base::BaseTree;
use crate::export::longpath::short;
use crate::export::xattr;
use crate::layer::{self, NodeId, NodeKind};

/// Prefix of whiteout names (never visible, never creatable).
pub const WH: &[u8] = b".wh.";
/// The opaque-directory marker.
pub const OPQ: &[u8] = b".wh..wh..opq";
/// Prefix of copy-up temp files (hidden as whiteout-like names, skipped by pack).
pub const TMP: &str = ".wh..regfs-tmp.";

/// What a path is in the view.
#[derive(Debug, Clone)]
pub enum Obj {
    /// In the upper tree; a directory may merge a base directory below it.
    Upper {
        /// Real path.
        path: PathBuf,
        /// Its metadata (lstat).
        md: Metadata,
        /// The base directory merged below (directories that are not opaque).
        lower: Option<NodeId>,
    },
    /// Only in the base image.
    Base {
        /// Where it would be in the upper tree.
        path: PathBuf,
        /// The base node.
        node: NodeId,
    },
}

impl Obj {
    /// The upper-tree path (existing or not).
    pub fn path(&self) -> &Path {
        match self {
            Obj::Upper { path, .. } | Obj::Base { path, .. } => path,
        }
    }
}

/// An entry's view.
pub struct View {
    /// The upper tree.
    pub root: PathBuf,
    /// The base rootfs, if the entry has one.
    pub base: Option<Arc<BaseTree>>,
}

pub(crate) fn errno(n: i32) -> io::Error {
    io::Error::from_raw_os_error(n)
}

fn lstat(p: &Path) -> io::Result<Option<Metadata>> {
    match fs::symlink_metadata(&*short(p)?) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub use crate::export::staging::LONG_WH;

/// Whether the whiteout of `name` fits in a name of the staging disk.
fn wh_fits(name: &[u8]) -> bool {
    WH.len() + name.len() <= NAME_MAX
}

/// The staged file name of the whiteout of `name`.
fn wh_file(name: &[u8]) -> Vec<u8> {
    if wh_fits(name) {
        return wh_name(name);
    }
    let mut v = LONG_WH.to_vec();
    v.extend_from_slice(crate::digest::Digest::sha256_of(name).hex().as_bytes());
    v
}

/// The name whited out by staged file `file` of directory `dir` (`None`: not
/// a whiteout).
fn whited_name(dir: &Path, file: &[u8]) -> io::Result<Option<Vec<u8>>> {
    if file.starts_with(LONG_WH) {
        return fs::read(&*short(&dir.join(OsStr::from_bytes(file)))?).map(Some);
    }
    Ok(file.strip_prefix(WH).map(<[u8]>::to_vec))
}

/// The longest name of the staging disk (and of the export mount).
pub const NAME_MAX: usize = 255;

fn wh_name(name: &[u8]) -> Vec<u8> {
    let mut v = WH.to_vec();
    v.extend_from_slice(name);
    v
}

/// Components of a relative path.
pub fn components(rel: &[u8]) -> impl Iterator<Item = &[u8]> {
    rel.split(|&c| c == b'/').filter(|c| !c.is_empty())
}

/// `(parent, name)` of a relative path (`name` empty for the root).
pub fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&c| c == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[], rel),
    }
}

impl View {
    fn tree(&self) -> Option<&layer::Tree> {
        self.base.as_deref().map(|b| &*b.tree)
    }

    fn upper_obj(&self, path: PathBuf, md: Metadata, lower: Option<NodeId>) -> io::Result<Obj> {
        let lower = if md.is_dir() && lower.is_some() {
            let opaque = lstat(&path.join(OsStr::from_bytes(OPQ)))?.is_some();
            if opaque {
                None
            } else {
                lower.filter(|&n| self.tree().is_some_and(|t| t.node(n).is_dir()))
            }
        } else {
            None
        };
        Ok(Obj::Upper { path, md, lower })
    }

    /// The root of the entry.
    pub fn root_obj(&self) -> io::Result<Obj> {
        let md = fs::symlink_metadata(&self.root)?;
        let lower = self.tree().map(|t| t.root());
        self.upper_obj(self.root.clone(), md, lower)
    }

    /// Child `name` of directory `dir`, if it is there.
    pub fn child(&self, dir: &Obj, name: &[u8]) -> io::Result<Option<Obj>> {
        if name.starts_with(WH) || name == b"." || name == b".." {
            return Ok(None);
        }
        let n = OsStr::from_bytes(name);
        match dir {
            Obj::Upper { path, md, lower } => {
                if !md.is_dir() {
                    return Err(errno(libc::ENOTDIR));
                }
                let cpath = path.join(n);
                let whited = lstat(&path.join(OsStr::from_bytes(&wh_file(name))))?.is_some();
                let below = if whited {
                    None
                } else {
                    lower.and_then(|l| self.tree()?.lookup(l, name))
                };
                match lstat(&cpath)? {
                    Some(cmd) => Ok(Some(self.upper_obj(cpath, cmd, below)?)),
                    None => Ok(below.map(|node| Obj::Base { path: cpath, node })),
                }
            }
            Obj::Base { path, node } => {
                let t = self.tree().ok_or_else(|| errno(libc::EIO))?;
                if !t.node(*node).is_dir() {
                    return Err(errno(libc::ENOTDIR));
                }
                Ok(t.lookup(*node, name).map(|c| Obj::Base {
                    path: path.join(n),
                    node: c,
                }))
            }
        }
    }

    /// Resolve a relative path (`ENOENT` if it is not in the view).
    pub fn resolve(&self, rel: &[u8]) -> io::Result<Obj> {
        let mut obj = self.root_obj()?;
        for c in components(rel) {
            obj = self.child(&obj, c)?.ok_or_else(|| errno(libc::ENOENT))?;
        }
        Ok(obj)
    }

    /// Resolve, `None` if it does not exist.
    pub fn try_resolve(&self, rel: &[u8]) -> io::Result<Option<Obj>> {
        match self.resolve(rel) {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the base has `rel` below its parent (whatever the upper tree says
    /// about the name itself): deleting or renaming it away needs a whiteout.
    pub fn lower_has(&self, rel: &[u8]) -> io::Result<bool> {
        let (parent, name) = split(rel);
        Ok(match self.try_resolve(parent)? {
            Some(Obj::Upper { lower: Some(l), .. }) => {
                self.tree().and_then(|t| t.lookup(l, name)).is_some()
            }
            Some(Obj::Base { node, .. }) => {
                self.tree().and_then(|t| t.lookup(node, name)).is_some()
            }
            _ => false,
        })
    }

    /// The link count of a directory: 2 plus its subdirectories in the view
    /// (for one merging a base directory, the upper count alone is short).
    pub fn dir_nlink(&self, obj: &Obj) -> Option<u32> {
        let Obj::Upper {
            path,
            lower: Some(l),
            ..
        } = obj
        else {
            return None;
        };
        let t = self.tree()?;
        let mut upper = std::collections::HashMap::new();
        let mut whited = std::collections::HashSet::new();
        for e in fs::read_dir(&*short(path).ok()?).ok()? {
            let e = e.ok()?;
            let n = e.file_name().as_bytes().to_vec();
            match whited_name(path, &n).ok()? {
                Some(w) => {
                    whited.insert(w);
                }
                None => {
                    upper.insert(n, e.file_type().ok()?.is_dir());
                }
            }
        }
        let lower_dirs = t
            .children(*l)
            .iter()
            .filter(|(n, c)| t.node(*c).is_dir() && !whited.contains(n) && !upper.contains_key(n))
            .count();
        Some(2 + (upper.values().filter(|d| **d).count() + lower_dirs) as u32)
    }

    /// Whether `obj` is a directory.
    pub fn is_dir(&self, obj: &Obj) -> bool {
        match obj {
            Obj::Upper { md, .. } => md.is_dir(),
            Obj::Base { node, .. } => self.tree().is_some_and(|t| t.node(*node).is_dir()),
        }
    }

    /// The visible children of directory `dir`, sorted by name.
    pub fn list(&self, dir: &Obj) -> io::Result<Vec<(Vec<u8>, Obj)>> {
        let mut out = Vec::new();
        match dir {
            Obj::Upper { path, lower, .. } => {
                let mut names = std::collections::BTreeSet::new();
                let mut whited = std::collections::HashSet::new();
                for e in fs::read_dir(&*short(path)?)? {
                    let n = e?.file_name().as_bytes().to_vec();
                    match whited_name(path, &n)? {
                        Some(w) => whited.insert(w),
                        None => names.insert(n),
                    };
                }
                if let (Some(l), Some(t)) = (lower, self.tree()) {
                    for (n, _) in t.children(*l) {
                        if !whited.contains(n) {
                            names.insert(n.clone());
                        }
                    }
                }
                for n in names {
                    if let Some(o) = self.child(dir, &n)? {
                        out.push((n, o));
                    }
                }
            }
            Obj::Base { path, node } => {
                let t = self.tree().ok_or_else(|| errno(libc::EIO))?;
                for (n, c) in t.children(*node) {
                    out.push((
                        n.clone(),
                        Obj::Base {
                            path: path.join(OsStr::from_bytes(n)),
                            node: *c,
                        },
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Make sure `rel` exists in the upper tree (copying it and its parents up
    /// from the base); returns its real path. Other names of a hard-linked base
    /// file are copied up as links to the same file.
    pub fn copy_up(&self, rel: &[u8]) -> io::Result<PathBuf> {
        match self.resolve(rel)? {
            Obj::Upper { path, .. } => Ok(path),
            Obj::Base { path, node } => {
                let (parent, _) = split(rel);
                self.copy_up(parent)?;
                let t = self.tree().ok_or_else(|| errno(libc::EIO))?;
                keeping_mtime(&path, || self.copy_node(node, &path))?;
                if !t.node(node).is_dir() && t.node(node).nlink > 1 {
                    for (other, n) in t.walk() {
                        if n != node || other == rel {
                            continue;
                        }
                        if let Some(Obj::Base { path: op, node: on }) = self.try_resolve(&other)? {
                            if on == node {
                                let (oparent, _) = split(&other);
                                self.copy_up(oparent)?;
                                keeping_mtime(&op, || {
                                    fs::hard_link(&*short(&path)?, &*short(&op)?)
                                })?;
                            }
                        }
                    }
                }
                Ok(path)
            }
        }
    }

    fn copy_node(&self, node: NodeId, dst: &Path) -> io::Result<()> {
        let base = self.base.as_ref().ok_or_else(|| errno(libc::EIO))?;
        let n = base.tree.node(node);
        let parent = dst.parent().ok_or_else(|| errno(libc::EINVAL))?;
        let tmp = parent.join(format!("{TMP}{:016x}", rand::random::<u64>()));
        let tmp = short(&tmp)?;
        let tmp: &Path = &tmp;
        match n.kind {
            NodeKind::File => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(tmp)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                while off < n.size {
                    let got = layer::read_content(n, &base.files, off, &mut buf)?;
                    if got == 0 {
                        break;
                    }
                    f.write_all(&buf[..got])?;
                    off += got as u64;
                }
                f.sync_data()?;
            }
            NodeKind::Dir => fs::create_dir(tmp)?,
            NodeKind::Symlink => std::os::unix::fs::symlink(
                OsStr::from_bytes(n.link_target.as_deref().unwrap_or_default()),
                tmp,
            )?,
            NodeKind::Fifo | NodeKind::CharDev | NodeKind::BlockDev => {
                let kind = match n.kind {
                    NodeKind::Fifo => SFlag::S_IFIFO,
                    NodeKind::CharDev => SFlag::S_IFCHR,
                    _ => SFlag::S_IFBLK,
                };
                nix::sys::stat::mknod(
                    tmp,
                    kind,
                    Mode::from_bits_truncate(0o600),
                    libc::makedev(n.rdev.0, n.rdev.1),
                )?;
            }
        }
        std::os::unix::fs::lchown(tmp, Some(n.uid), Some(n.gid))?;
        if n.kind != NodeKind::Symlink {
            fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(n.mode))?;
        }
        for (k, v) in &n.xattrs {
            xattr::set(tmp, k, v, 0)?;
        }
        let t = TimeSpec::new(n.mtime, n.mtime_nsec as _);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            tmp,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
        fs::rename(tmp, &*short(dst)?)?;
        Ok(())
    }

    /// Create the whiteout of `name` in upper directory `dir`.
    pub fn whiteout(&self, dir: &Path, name: &[u8]) -> io::Result<()> {
        let mut f = File::create(&*short(&dir.join(OsStr::from_bytes(&wh_file(name))))?)?;
        if !wh_fits(name) {
            f.write_all(name)?;
        }
        Ok(())
    }

    /// Remove the whiteout of `name` in `dir`; whether there was one.
    pub fn unwhiteout(&self, dir: &Path, name: &[u8]) -> io::Result<bool> {
        match fs::remove_file(&*short(&dir.join(OsStr::from_bytes(&wh_file(name))))?) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Mark upper directory `dir` opaque.
    pub fn make_opaque(&self, dir: &Path) -> io::Result<()> {
        File::create(&*short(&dir.join(OsStr::from_bytes(OPQ)))?)?;
        Ok(())
    }

    /// Remove the whiteouts inside upper directory `dir` (it is empty in the view).
    pub fn clear_whiteouts(&self, dir: &Path) -> io::Result<()> {
        let dir = short(dir)?;
        for e in fs::read_dir(&*dir)? {
            let e = e?;
            if e.file_name().as_bytes().starts_with(WH) {
                fs::remove_file(e.path())?;
            }
        }
        Ok(())
    }
}

/// Run `f`, which adds `path` to its directory, and give the directory its
/// atime and mtime back: a copy-up changes nothing the user did, as on
/// overlayfs (the directory's ctime does move; nothing can set a ctime).
fn keeping_mtime(path: &Path, f: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| errno(libc::EINVAL))?;
    let md = fs::symlink_metadata(&*short(dir)?)?;
    f()?;
    let at = TimeSpec::new(md.atime(), md.atime_nsec());
    let mt = TimeSpec::new(md.mtime(), md.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &*short(dir)?,
        &at,
        &mt,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

/// `(dev, ino)` of an upper object that has other names.
pub fn identity(md: &Metadata) -> Option<(u64, u64)> {
    (!md.is_dir() && md.nlink() > 1).then(|| (md.dev(), md.ino()))
}
