//! The writable export filesystem, in plain Rust (no fuser): entries named by
//! reference at the top, each a merged view of its upper tree in staging over
//! its base image (see [`view`]). Every operation works on real files in the
//! staging directory by path; inode numbers map to paths ([`inodes`]).
//!
//! ```text
//! EXPORTDIR/                    entries and namespace directories
//!   myapp:1.0/                  an entry: mkdir starts one (bad names: EINVAL)
//!   team/tool:latest/           `team` is a namespace directory
//!   .regfs-control              hidden; `echo "commit myapp:1.0" > .regfs-control`
//! ```
//!
//! Operations may block (disk, or loading a base image from the registry):
//! callers run them off the FUSE dispatch thread.

pub mod inodes;
pub mod view;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;

use self::inodes::{Inodes, BASE_DEV, ROOT};
use self::view::{errno, split, Obj, View, WH};
use super::base::BaseTree;
use super::commit::Exporter;
use super::staging::{parse_entry_ref, EntryMeta};
use super::xattr;
use crate::error::{Error, Result};
use crate::fs::{Attr, DirEntry, FileKind};
use crate::layer::{Kind, NodeId};
use crate::reference::validate_component;

/// The hidden control file at the top.
pub const CONTROL_FILE: &[u8] = b".regfs-control";
/// The xattr of the top directory that names the control socket.
pub const SOCKET_XATTR: &[u8] = b"user.regfs.control";
/// How long the kernel may cache entries and attributes of the export mount.
pub const TTL: Duration = Duration::from_secs(1);

/// Who is asking (new files belong to them).
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// User.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// A time to set.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    /// The current time.
    Now,
    /// This time.
    At(SystemTime),
}

/// What `setattr` changes.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Truncate / extend.
    pub size: Option<u64>,
    /// Access time.
    pub atime: Option<SetTime>,
    /// Modification time.
    pub mtime: Option<SetTime>,
}

/// `statfs` numbers.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Available blocks.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

enum Handle {
    File(Arc<File>),
    Base(Arc<BaseTree>, NodeId),
    Control(Vec<u8>),
}

/// Where a path of the mount is.
enum Loc {
    Root,
    Namespace(String),
    Control,
    Entry { entry: String, rel: Vec<u8> },
}

fn locate(path: &[u8]) -> Result<Loc> {
    if path.is_empty() {
        return Ok(Loc::Root);
    }
    if path == CONTROL_FILE {
        return Ok(Loc::Control);
    }
    let comps: Vec<&[u8]> = path.split(|&c| c == b'/').collect();
    match comps.iter().position(|c| c.contains(&b':')) {
        Some(i) => {
            let entry = comps[..=i].join(&b'/');
            let entry = String::from_utf8(entry).map_err(|_| Error::NotFound("entry".into()))?;
            let rel = comps[i + 1..].join(&b'/');
            Ok(Loc::Entry { entry, rel })
        }
        None => Ok(Loc::Namespace(
            String::from_utf8(path.to_vec()).map_err(|_| Error::NotFound("name".into()))?,
        )),
    }
}

fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    if a.is_empty() {
        return b.to_vec();
    }
    let mut v = a.to_vec();
    v.push(b'/');
    v.extend_from_slice(b);
    v
}

fn err(n: i32) -> Error {
    Error::Io(errno(n))
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(err(libc::EINVAL));
    }
    if name.starts_with(WH) {
        tracing::warn!(name = %String::from_utf8_lossy(name), "names starting with .wh. are OCI whiteouts and cannot be staged");
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

fn file_kind(ft: fs::FileType) -> FileKind {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        FileKind::Dir
    } else if ft.is_symlink() {
        FileKind::Symlink
    } else if ft.is_fifo() {
        FileKind::Fifo
    } else if ft.is_char_device() {
        FileKind::CharDev
    } else if ft.is_block_device() {
        FileKind::BlockDev
    } else {
        FileKind::File
    }
}

fn tree_kind(k: Kind) -> FileKind {
    match k {
        Kind::File => FileKind::File,
        Kind::Dir => FileKind::Dir,
        Kind::Symlink => FileKind::Symlink,
        Kind::CharDev => FileKind::CharDev,
        Kind::BlockDev => FileKind::BlockDev,
        Kind::Fifo => FileKind::Fifo,
    }
}

fn timespec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(t)) => {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
            TimeSpec::new(d.as_secs() as _, d.subsec_nanos() as _)
        }
    }
}

/// The writable export filesystem.
pub struct ExportFs {
    exp: Arc<Exporter>,
    rt: tokio::runtime::Handle,
    inodes: Mutex<Inodes>,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    namespaces: Mutex<BTreeSet<String>>,
    /// Serialises namespace-changing operations inside entries (rename, link,
    /// unlink, mkdir…): they check, then act, on several paths.
    tree_lock: Mutex<()>,
    socket: Option<PathBuf>,
    owner: Caller,
    started: SystemTime,
}

impl ExportFs {
    /// A filesystem over `exp`; blocking calls into async code use `rt`.
    /// `socket` is advertised in the top directory's `user.regfs.control` xattr.
    pub fn new(exp: Arc<Exporter>, rt: tokio::runtime::Handle, socket: Option<PathBuf>) -> Self {
        ExportFs {
            exp,
            rt,
            inodes: Mutex::default(),
            handles: Mutex::default(),
            next_fh: AtomicU64::new(1),
            namespaces: Mutex::default(),
            tree_lock: Mutex::new(()),
            socket,
            owner: Caller {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            },
            started: SystemTime::now(),
        }
    }

    /// The export service.
    pub fn exporter(&self) -> &Arc<Exporter> {
        &self.exp
    }

    fn path_of(&self, ino: u64) -> Result<Vec<u8>> {
        self.inodes
            .lock()
            .unwrap()
            .path(ino)
            .ok_or_else(|| err(libc::ESTALE))
    }

    fn meta(&self, entry: &str) -> Result<EntryMeta> {
        self.exp
            .staging()
            .get(entry)?
            .ok_or_else(|| Error::NotFound(format!("entry {entry}")))
    }

    fn view(&self, entry: &str) -> Result<View> {
        let meta = self.meta(entry)?;
        let base = match &meta.base {
            None => None,
            Some(b) => match self.exp.cached_base(&b.digest) {
                Some(t) => Some(t),
                None => self.rt.block_on(self.exp.base_tree(&meta))?,
            },
        };
        Ok(View {
            root: self.exp.staging().root(entry),
            base,
        })
    }

    fn dir_attr(&self, ino: u64, perm: u16) -> Attr {
        Attr {
            ino,
            kind: FileKind::Dir,
            perm,
            nlink: 2,
            uid: self.owner.uid,
            gid: self.owner.gid,
            size: 0,
            mtime: self.started,
            rdev: 0,
            ttl: TTL,
        }
    }

    fn obj_attr(&self, vpath: &[u8], view: &View, obj: &Obj) -> Attr {
        match obj {
            Obj::Upper { md, .. } => {
                let ino = self.inodes.lock().unwrap().ino(vpath, view::identity(md));
                Attr {
                    ino,
                    kind: file_kind(md.file_type()),
                    perm: (md.mode() & 0o7777) as u16,
                    nlink: md.nlink() as u32,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: md.size(),
                    mtime: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    rdev: md.rdev() as u32,
                    ttl: TTL,
                }
            }
            Obj::Base { node, .. } => {
                let n = view.base.as_ref().expect("base object").tree.node(*node);
                let id = (!n.is_dir() && n.nlink > 1).then_some((BASE_DEV, *node as u64));
                let ino = self.inodes.lock().unwrap().ino(vpath, id);
                let mtime = if n.mtime >= 0 {
                    SystemTime::UNIX_EPOCH + Duration::new(n.mtime as u64, n.mtime_nsec)
                } else {
                    SystemTime::UNIX_EPOCH
                };
                Attr {
                    ino,
                    kind: tree_kind(n.kind),
                    perm: (n.mode & 0o7777) as u16,
                    nlink: n.nlink,
                    uid: n.uid,
                    gid: n.gid,
                    size: match n.kind {
                        Kind::Symlink => n.link_target.as_ref().map_or(0, |t| t.len() as u64),
                        Kind::File => n.size,
                        _ => 0,
                    },
                    mtime,
                    rdev: libc::makedev(n.rdev.0, n.rdev.1) as u32,
                    ttl: TTL,
                }
            }
        }
    }

    /// Whether namespace `ns` exists (made by mkdir, or holding entries).
    fn namespace_exists(&self, ns: &str) -> Result<bool> {
        if self.namespaces.lock().unwrap().contains(ns) {
            return Ok(true);
        }
        let prefix = format!("{ns}/");
        Ok(self
            .exp
            .staging()
            .entries()?
            .iter()
            .any(|e| e.reference.starts_with(&prefix)))
    }

    /// Attributes of the object at mount path `path`.
    fn attr_at(&self, path: &[u8]) -> Result<Attr> {
        match locate(path)? {
            Loc::Root => Ok(self.dir_attr(ROOT, 0o755)),
            Loc::Control => {
                let ino = self.inodes.lock().unwrap().ino(path, None);
                let mut a = self.dir_attr(ino, 0o600);
                a.kind = FileKind::File;
                a.nlink = 1;
                Ok(a)
            }
            Loc::Namespace(ns) => {
                if !self.namespace_exists(&ns)? {
                    return Err(Error::NotFound(ns));
                }
                let ino = self.inodes.lock().unwrap().ino(path, None);
                Ok(self.dir_attr(ino, 0o755))
            }
            Loc::Entry { entry, rel } => {
                let view = self.view(&entry)?;
                let obj = view.resolve(&rel)?;
                Ok(self.obj_attr(path, &view, &obj))
            }
        }
    }

    /// Look `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let p = self.path_of(parent)?;
        if name.contains(&b'/') {
            return Err(err(libc::ENOENT));
        }
        let path = join(&p, name);
        if let Loc::Entry { entry, rel } = locate(&path)? {
            if rel.is_empty() && self.exp.staging().get(&entry)?.is_none() {
                return Err(Error::NotFound(entry));
            }
        }
        self.entry_attr(&path)
    }

    /// [`Self::attr_at`] for an entry reply: the kernel gets a reference.
    fn entry_attr(&self, path: &[u8]) -> Result<Attr> {
        let a = self.attr_at(path)?;
        self.inodes.lock().unwrap().remember(a.ino, path);
        Ok(a)
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.inodes.lock().unwrap().forget(ino, nlookup);
    }

    /// Inodes in the table (for tests).
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().unwrap().len()
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let p = self.path_of(ino)?;
        self.attr_at(&p)
    }

    /// The entries of directory `ino`.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        let p = self.path_of(ino)?;
        match locate(&p)? {
            Loc::Root | Loc::Namespace(_) => {
                let prefix = if p.is_empty() {
                    String::new()
                } else {
                    format!("{}/", String::from_utf8_lossy(&p))
                };
                let mut names: BTreeSet<(String, bool)> = BTreeSet::new();
                let refs = self
                    .exp
                    .staging()
                    .entries()?
                    .into_iter()
                    .map(|e| e.reference);
                let nss: Vec<String> = self.namespaces.lock().unwrap().iter().cloned().collect();
                for r in refs.chain(nss.into_iter().map(|n| format!("{n}/"))) {
                    if let Some(rest) = r.strip_prefix(&prefix) {
                        match rest.split_once('/') {
                            Some((ns, _)) => names.insert((ns.to_string(), true)),
                            None if !rest.is_empty() => names.insert((rest.to_string(), true)),
                            None => false,
                        };
                    }
                }
                let mut out = Vec::new();
                for (n, _) in names {
                    let path = join(&p, n.as_bytes());
                    let ino = self.inodes.lock().unwrap().ino(&path, None);
                    out.push(DirEntry {
                        ino,
                        name: n.into_bytes(),
                        kind: FileKind::Dir,
                    });
                }
                Ok(out)
            }
            Loc::Control => Err(err(libc::ENOTDIR)),
            Loc::Entry { entry, rel } => {
                let view = self.view(&entry)?;
                let dir = view.resolve(&rel)?;
                if !view.is_dir(&dir) {
                    return Err(err(libc::ENOTDIR));
                }
                let mut out = Vec::new();
                for (name, obj) in view.list(&dir)? {
                    let a = self.obj_attr(&join(&p, &name), &view, &obj);
                    out.push(DirEntry {
                        ino: a.ino,
                        name,
                        kind: a.kind,
                    });
                }
                Ok(out)
            }
        }
    }

    /// Resolve `(parent, name)` to an entry location inside one entry.
    fn entry_child(&self, parent: u64, name: &[u8]) -> Result<(String, Vec<u8>, Vec<u8>)> {
        let p = self.path_of(parent)?;
        let path = join(&p, name);
        match locate(&path)? {
            Loc::Entry { entry, rel } if !rel.is_empty() => Ok((entry, rel, path)),
            _ => Err(err(libc::EPERM)),
        }
    }

    /// Make a directory: a new entry or namespace at the top, else a real one.
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, who: Caller) -> Result<Attr> {
        let p = self.path_of(parent)?;
        let path = join(&p, name);
        match locate(&path)? {
            Loc::Entry { entry, rel } if rel.is_empty() => {
                if let Err(e) = parse_entry_ref(&entry) {
                    tracing::warn!(name = %entry, reason = %e, "mkdir: not a valid image reference");
                    return Err(err(libc::EINVAL));
                }
                if self.exp.staging().get(&entry)?.is_some() {
                    return Err(err(libc::EEXIST));
                }
                self.exp.staging().create(&EntryMeta::new(&entry)?)?;
                let root = self.exp.staging().root(&entry);
                fs::set_permissions(&root, fs::Permissions::from_mode(mode & 0o7777))?;
                std::os::unix::fs::lchown(&root, Some(who.uid), Some(who.gid))?;
                tracing::info!(entry = %entry, "export entry created");
                self.entry_attr(&path)
            }
            Loc::Namespace(ns) => {
                let name = std::str::from_utf8(name).map_err(|_| err(libc::EINVAL))?;
                if let Err(e) = validate_component(name) {
                    tracing::warn!(name, reason = %e, "mkdir: not a valid repository name component");
                    return Err(err(libc::EINVAL));
                }
                if self.namespace_exists(&ns)? {
                    return Err(err(libc::EEXIST));
                }
                self.namespaces.lock().unwrap().insert(ns);
                self.entry_attr(&path)
            }
            Loc::Root | Loc::Control => Err(err(libc::EEXIST)),
            Loc::Entry { entry, rel } => {
                check_name(name)?;
                let _g = self.tree_lock.lock().unwrap();
                let view = self.view(&entry)?;
                let (dir, real) = self.prepare_create(&view, &rel)?;
                fs::create_dir(&real)?;
                self.finish_create(&real, mode, who, false)?;
                let had_wh = view.unwhiteout(&dir, name)?;
                if had_wh || view.lower_has(&rel)? {
                    view.make_opaque(&real)?;
                }
                self.entry_attr(&path)
            }
        }
    }

    /// Check that `rel` is free and its parent is a directory; copy the parent
    /// up. Returns (upper parent dir, upper path).
    fn prepare_create(&self, view: &View, rel: &[u8]) -> Result<(PathBuf, PathBuf)> {
        let (parent, name) = split(rel);
        let pobj = view.resolve(parent)?;
        if !view.is_dir(&pobj) {
            return Err(err(libc::ENOTDIR));
        }
        if view.child(&pobj, name)?.is_some() {
            return Err(err(libc::EEXIST));
        }
        let dir = view.copy_up(parent)?;
        let real = dir.join(OsStr::from_bytes(name));
        Ok((dir, real))
    }

    fn finish_create(
        &self,
        real: &std::path::Path,
        mode: u32,
        who: Caller,
        symlink: bool,
    ) -> Result<()> {
        std::os::unix::fs::lchown(real, Some(who.uid), Some(who.gid))?;
        if !symlink {
            fs::set_permissions(real, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        Ok(())
    }

    /// Create and open a regular file. Returns its attributes and a handle.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Attr, u64)> {
        check_name(name)?;
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        if let Some(existing) = view.try_resolve(&rel)? {
            if flags & libc::O_EXCL != 0 {
                return Err(err(libc::EEXIST));
            }
            if view.is_dir(&existing) {
                return Err(err(libc::EISDIR));
            }
            drop(_g);
            let a = self.attr_at(&path)?;
            let fh = self.open(a.ino, flags)?;
            return Ok((self.entry_attr(&path)?, fh));
        }
        let (dir, real) = self.prepare_create(&view, &rel)?;
        let acc = flags & libc::O_ACCMODE;
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&real)?;
        self.finish_create(&real, mode, who, false)?;
        view.unwhiteout(&dir, name)?;
        let a = self.entry_attr(&path)?;
        Ok((a, self.add_handle(Handle::File(Arc::new(f)))))
    }

    /// Make a fifo, device (root only) or empty regular file.
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
        who: Caller,
    ) -> Result<Attr> {
        check_name(name)?;
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let (dir, real) = self.prepare_create(&view, &rel)?;
        let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
        match kind {
            SFlag::S_IFIFO | SFlag::S_IFREG => {}
            SFlag::S_IFCHR | SFlag::S_IFBLK if who.uid == 0 => {}
            SFlag::S_IFCHR | SFlag::S_IFBLK => return Err(err(libc::EPERM)),
            _ => return Err(err(libc::EPERM)),
        }
        nix::sys::stat::mknod(&real, kind, Mode::from_bits_truncate(0o600), rdev as _)
            .map_err(io::Error::from)?;
        self.finish_create(&real, mode, who, false)?;
        view.unwhiteout(&dir, name)?;
        self.entry_attr(&path)
    }

    /// Make a symlink.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], who: Caller) -> Result<Attr> {
        check_name(name)?;
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let (dir, real) = self.prepare_create(&view, &rel)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &real)?;
        self.finish_create(&real, 0, who, true)?;
        view.unwhiteout(&dir, name)?;
        self.entry_attr(&path)
    }

    /// Make a hard link to `ino` at `(parent, name)`.
    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        let src = self.path_of(ino)?;
        let Loc::Entry {
            entry: se,
            rel: srel,
        } = locate(&src)?
        else {
            return Err(err(libc::EPERM));
        };
        let (entry, rel, path) = self.entry_child(parent, name)?;
        if se != entry {
            return Err(err(libc::EXDEV));
        }
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let sobj = view.resolve(&srel)?;
        if view.is_dir(&sobj) {
            return Err(err(libc::EPERM));
        }
        let (dir, real) = self.prepare_create(&view, &rel)?;
        let sreal = view.copy_up(&srel)?;
        fs::hard_link(&sreal, &real)?;
        view.unwhiteout(&dir, name)?;
        let md = fs::symlink_metadata(&real)?;
        if let Some(id) = view::identity(&md) {
            self.inodes.lock().unwrap().set_identity(ino, id);
        }
        self.entry_attr(&path)
    }

    /// Remove a non-directory.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        let (entry, rel, path) = self.entry_child(parent, name)?;
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&entry)?;
        let obj = view.resolve(&rel)?;
        if view.is_dir(&obj) {
            return Err(err(libc::EISDIR));
        }
        let lower = view.lower_has(&rel)?;
        let (parent_rel, _) = split(&rel);
        let dir = view.copy_up(parent_rel)?;
        if let Obj::Upper { path: real, .. } = &obj {
            fs::remove_file(real)?;
        }
        if lower {
            view.whiteout(&dir, name)?;
        }
        self.inodes.lock().unwrap().remove(&path);
        Ok(())
    }

    /// Remove an empty directory (at the top: an empty entry or namespace).
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        let p = self.path_of(parent)?;
        let path = join(&p, name);
        match locate(&path)? {
            Loc::Entry { entry, rel } if rel.is_empty() => {
                let view = self.view(&entry)?;
                if !view.list(&view.root_obj()?)?.is_empty() {
                    return Err(err(libc::ENOTEMPTY));
                }
                if self.exp.progress(&entry).is_some() {
                    return Err(err(libc::EBUSY));
                }
                self.exp.staging().remove(&entry)?;
                self.inodes.lock().unwrap().remove(&path);
                tracing::info!(entry = %entry, "export entry removed");
                Ok(())
            }
            Loc::Namespace(ns) => {
                let prefix = format!("{ns}/");
                if self
                    .exp
                    .staging()
                    .entries()?
                    .iter()
                    .any(|e| e.reference.starts_with(&prefix))
                    || self
                        .namespaces
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|n| n.starts_with(&prefix))
                {
                    return Err(err(libc::ENOTEMPTY));
                }
                if !self.namespaces.lock().unwrap().remove(&ns) {
                    return Err(err(libc::ENOENT));
                }
                Ok(())
            }
            Loc::Root | Loc::Control => Err(err(libc::ENOTDIR)),
            Loc::Entry { entry, rel } => {
                let _g = self.tree_lock.lock().unwrap();
                let view = self.view(&entry)?;
                let obj = view.resolve(&rel)?;
                if !view.is_dir(&obj) {
                    return Err(err(libc::ENOTDIR));
                }
                if !view.list(&obj)?.is_empty() {
                    return Err(err(libc::ENOTEMPTY));
                }
                let lower = view.lower_has(&rel)?;
                let (parent_rel, _) = split(&rel);
                let dir = view.copy_up(parent_rel)?;
                if let Obj::Upper { path: real, .. } = &obj {
                    view.clear_whiteouts(real)?;
                    fs::remove_dir(real)?;
                }
                if lower {
                    view.whiteout(&dir, name)?;
                }
                self.inodes.lock().unwrap().remove(&path);
                Ok(())
            }
        }
    }

    /// Rename, replacing the target (flags other than 0: `EINVAL`).
    pub fn rename(&self, p1: u64, n1: &[u8], p2: u64, n2: &[u8], flags: u32) -> Result<()> {
        if flags != 0 {
            return Err(err(libc::EINVAL));
        }
        check_name(n2)?;
        let (from, to) = (join(&self.path_of(p1)?, n1), join(&self.path_of(p2)?, n2));
        let (Loc::Entry { entry: e1, rel: r1 }, Loc::Entry { entry: e2, rel: r2 }) =
            (locate(&from)?, locate(&to)?)
        else {
            return Err(err(libc::EPERM));
        };
        if r1.is_empty() || r2.is_empty() {
            return Err(err(libc::EPERM));
        }
        if e1 != e2 {
            return Err(err(libc::EXDEV));
        }
        let _g = self.tree_lock.lock().unwrap();
        let view = self.view(&e1)?;
        let src = view.resolve(&r1)?;
        if r1 == r2 {
            return Ok(());
        }
        if r2.starts_with(&r1) && r2.get(r1.len()) == Some(&b'/') {
            return Err(err(libc::EINVAL));
        }
        let src_dir = view.is_dir(&src);
        let (p2rel, _) = split(&r2);
        let pobj = view.resolve(p2rel)?;
        if !view.is_dir(&pobj) {
            return Err(err(libc::ENOTDIR));
        }
        let dst = view.child(&pobj, n2)?;
        if let Some(d) = &dst {
            match (src_dir, view.is_dir(d)) {
                (true, false) => return Err(err(libc::ENOTDIR)),
                (false, true) => return Err(err(libc::EISDIR)),
                (true, true) if !view.list(d)?.is_empty() => return Err(err(libc::ENOTEMPTY)),
                _ => {}
            }
        }
        // A directory merged with (or only in) the base cannot move in the upper
        // tree alone; like overlayfs without redirect_dir: EXDEV, and mv copies.
        let merged = match &src {
            Obj::Upper { lower, .. } => lower.is_some(),
            Obj::Base { .. } => true,
        };
        if src_dir && merged {
            return Err(err(libc::EXDEV));
        }
        let src_lower = view.lower_has(&r1)?;
        let dst_lower = view.lower_has(&r2)?;
        let sreal = view.copy_up(&r1)?;
        let ddir = view.copy_up(p2rel)?;
        let dreal = ddir.join(OsStr::from_bytes(n2));
        if let Some(Obj::Upper { path, md, .. }) = &dst {
            if md.is_dir() {
                view.clear_whiteouts(path)?;
            }
        }
        fs::rename(&sreal, &dreal)?;
        let had_wh = view.unwhiteout(&ddir, n2)?;
        if src_dir && (dst_lower || had_wh) {
            view.make_opaque(&dreal)?;
        }
        if src_lower {
            let (p1rel, _) = split(&r1);
            let sdir = view.copy_up(p1rel)?;
            view.whiteout(&sdir, n1)?;
        }
        self.inodes.lock().unwrap().rename(&from, &to);
        Ok(())
    }

    /// Real path of `ino` after copy-up (inside an entry only).
    fn upper_of(&self, ino: u64) -> Result<(View, PathBuf)> {
        let p = self.path_of(ino)?;
        let Loc::Entry { entry, rel } = locate(&p)? else {
            return Err(err(libc::EPERM));
        };
        let view = self.view(&entry)?;
        let _g = self.tree_lock.lock().unwrap();
        let real = view.copy_up(&rel)?;
        Ok((view, real))
    }

    /// Change attributes.
    pub fn setattr(&self, ino: u64, fh: Option<u64>, s: &SetAttr) -> Result<Attr> {
        let p = self.path_of(ino)?;
        if let Loc::Control = locate(&p)? {
            return self.getattr(ino);
        }
        let (_view, real) = self.upper_of(ino)?;
        let md = fs::symlink_metadata(&real)?;
        if s.uid.is_some() || s.gid.is_some() {
            std::os::unix::fs::lchown(&real, s.uid, s.gid)?;
        }
        if let Some(m) = s.mode {
            if !md.file_type().is_symlink() {
                fs::set_permissions(&real, fs::Permissions::from_mode(m & 0o7777))?;
            }
        }
        if let Some(size) = s.size {
            if md.is_dir() {
                return Err(err(libc::EISDIR));
            }
            let file = fh.and_then(|fh| match self.handles.lock().unwrap().get(&fh) {
                Some(Handle::File(f)) => Some(f.clone()),
                _ => None,
            });
            match file {
                Some(f) => f.set_len(size)?,
                None => OpenOptions::new().write(true).open(&real)?.set_len(size)?,
            }
        }
        if s.atime.is_some() || s.mtime.is_some() {
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &real,
                &timespec(s.atime),
                &timespec(s.mtime),
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(io::Error::from)?;
        }
        self.getattr(ino)
    }

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let p = self.path_of(ino)?;
        let Loc::Entry { entry, rel } = locate(&p)? else {
            return Err(err(libc::EINVAL));
        };
        let view = self.view(&entry)?;
        match view.resolve(&rel)? {
            Obj::Upper { path, .. } => Ok(fs::read_link(path)?.as_os_str().as_bytes().to_vec()),
            Obj::Base { node, .. } => view
                .base
                .as_ref()
                .and_then(|b| b.tree.node(node).link_target.clone())
                .ok_or_else(|| err(libc::EINVAL)),
        }
    }

    fn add_handle(&self, h: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, h);
        fh
    }

    /// Open `ino` (copying it up first when opened for writing).
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        let p = self.path_of(ino)?;
        let (entry, rel) = match locate(&p)? {
            Loc::Control => return Ok(self.add_handle(Handle::Control(self.status_text()))),
            Loc::Entry { entry, rel } => (entry, rel),
            _ => return Err(err(libc::EISDIR)),
        };
        let acc = flags & libc::O_ACCMODE;
        let writing = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let view = self.view(&entry)?;
        let obj = view.resolve(&rel)?;
        if view.is_dir(&obj) {
            return Err(err(libc::EISDIR));
        }
        let real = match (&obj, writing) {
            (Obj::Base { node, .. }, false) => {
                let base = view.base.clone().ok_or_else(|| err(libc::EIO))?;
                return Ok(self.add_handle(Handle::Base(base, *node)));
            }
            (Obj::Upper { path, .. }, _) => path.clone(),
            (Obj::Base { .. }, true) => {
                let _g = self.tree_lock.lock().unwrap();
                view.copy_up(&rel)?
            }
        };
        let f = OpenOptions::new()
            .read(acc != libc::O_WRONLY)
            .write(acc != libc::O_RDONLY)
            .truncate(flags & libc::O_TRUNC != 0 && acc != libc::O_RDONLY)
            .custom_flags(flags & (libc::O_SYNC | libc::O_DSYNC | libc::O_NOFOLLOW))
            .open(&real)?;
        if flags & libc::O_TRUNC != 0 && acc == libc::O_RDONLY {
            f.set_len(0)?;
        }
        Ok(self.add_handle(Handle::File(Arc::new(f))))
    }

    /// Read from open file `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(f)) => Handle::File(f.clone()),
            Some(Handle::Base(b, n)) => Handle::Base(b.clone(), *n),
            Some(Handle::Control(t)) => Handle::Control(t.clone()),
            None => return Err(err(libc::EBADF)),
        };
        let mut buf = vec![0u8; size as usize];
        let got = match h {
            Handle::File(f) => {
                let mut got = 0;
                while got < buf.len() {
                    let n = f.read_at(&mut buf[got..], offset + got as u64)?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                got
            }
            Handle::Base(b, n) => {
                crate::layer::read_content(b.tree.node(n), &b.files, offset, &mut buf)?
            }
            Handle::Control(t) => {
                let start = (offset as usize).min(t.len());
                let end = (start + buf.len()).min(t.len());
                buf[..end - start].copy_from_slice(&t[start..end]);
                end - start
            }
        };
        buf.truncate(got);
        Ok(buf)
    }

    /// Write to open file `fh` (on the control file: run the commands written).
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let f = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(f)) => f.clone(),
            Some(Handle::Control(_)) => {
                self.control(data)?;
                return Ok(data.len() as u32);
            }
            Some(Handle::Base(..)) => return Err(err(libc::EBADF)),
            None => return Err(err(libc::EBADF)),
        };
        f.write_all_at(data, offset)?;
        Ok(data.len() as u32)
    }

    /// `fsync` / `fdatasync` of open file `fh`.
    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let f = match self.handles.lock().unwrap().get(&fh) {
            Some(Handle::File(f)) => f.clone(),
            _ => return Ok(()),
        };
        if datasync {
            f.sync_data()?;
        } else {
            f.sync_all()?;
        }
        Ok(())
    }

    /// `fsync` of directory `ino` (its upper directory, if any).
    pub fn fsyncdir(&self, ino: u64) -> Result<()> {
        let p = self.path_of(ino)?;
        if let Loc::Entry { entry, rel } = locate(&p)? {
            if let Obj::Upper { path, .. } = self.view(&entry)?.resolve(&rel)? {
                File::open(path)?.sync_all()?;
            }
        }
        Ok(())
    }

    /// Whether `ino` is the control file (its reads are generated, not sized).
    pub fn is_control(&self, ino: u64) -> bool {
        self.inodes.lock().unwrap().path(ino).as_deref() == Some(CONTROL_FILE)
    }

    /// Forget open file `fh`.
    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// Filesystem numbers of the staging directory.
    pub fn statfs(&self) -> Result<StatFs> {
        let s = nix::sys::statvfs::statvfs(self.exp.staging().dir()).map_err(io::Error::from)?;
        Ok(StatFs {
            blocks: s.blocks() as u64,
            bfree: s.blocks_free() as u64,
            bavail: s.blocks_available() as u64,
            files: s.files() as u64,
            ffree: s.files_free() as u64,
            bsize: s.block_size() as u32,
            namelen: s.name_max() as u32,
            frsize: s.fragment_size() as u32,
        })
    }

    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let p = self.path_of(ino)?;
        match locate(&p)? {
            Loc::Root if name == SOCKET_XATTR => match &self.socket {
                Some(s) => Ok(s.as_os_str().as_bytes().to_vec()),
                None => Err(err(libc::ENODATA)),
            },
            Loc::Entry { entry, rel } => {
                let view = self.view(&entry)?;
                match view.resolve(&rel)? {
                    Obj::Upper { path, .. } => Ok(xattr::get(&path, name)?),
                    Obj::Base { node, .. } => view
                        .base
                        .as_ref()
                        .and_then(|b| b.tree.node(node).xattr(name).map(<[u8]>::to_vec))
                        .ok_or_else(|| err(libc::ENODATA)),
                }
            }
            _ => Err(err(libc::ENODATA)),
        }
    }

    /// The xattr names of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let p = self.path_of(ino)?;
        match locate(&p)? {
            Loc::Entry { entry, rel } => {
                let view = self.view(&entry)?;
                match view.resolve(&rel)? {
                    Obj::Upper { path, .. } => Ok(xattr::list(&path)?),
                    Obj::Base { node, .. } => Ok(view
                        .base
                        .as_ref()
                        .map(|b| {
                            b.tree
                                .node(node)
                                .xattrs
                                .iter()
                                .map(|(k, _)| k.clone())
                                .collect()
                        })
                        .unwrap_or_default()),
                }
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Set xattr `name` of `ino`.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let (_v, real) = self.upper_of(ino)?;
        Ok(xattr::set(&real, name, value, flags)?)
    }

    /// Remove xattr `name` of `ino`.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let (_v, real) = self.upper_of(ino)?;
        Ok(xattr::remove(&real, name)?)
    }

    /// What reading the control file shows.
    fn status_text(&self) -> Vec<u8> {
        let mut s = String::new();
        if let Ok(entries) = self.exp.staging().entries() {
            for e in entries {
                s += &format!(
                    "entry {} from={} last_commit={}\n",
                    e.reference,
                    e.from.as_deref().unwrap_or("-"),
                    e.last_commit
                        .map(|c| c.manifest.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
        }
        for p in self.exp.in_flight() {
            s += &format!(
                "committing {} phase={} sent={}/{}\n",
                p.entry, p.phase, p.sent, p.push_total
            );
        }
        s += &format!("inodes {}\n", self.inode_count());
        s.into_bytes()
    }

    /// Run the commands written to the control file: `commit REF` per line.
    /// Returns once every commit is pushed; a failure is `EIO`.
    fn control(&self, data: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(data).map_err(|_| err(libc::EINVAL))?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(entry) = line.strip_prefix("commit ").map(str::trim) else {
                tracing::warn!(
                    line,
                    "control file: unknown command (expected `commit NAME:TAG`)"
                );
                return Err(err(libc::EINVAL));
            };
            if self.exp.staging().get(entry)?.is_none() {
                return Err(err(libc::ENOENT));
            }
            let opts = self.exp.defaults.clone();
            match self.rt.block_on(self.exp.commit(entry, &opts)) {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(entry, error = %e, "commit from the control file failed");
                    return Err(err(libc::EIO));
                }
            }
        }
        Ok(())
    }
}
