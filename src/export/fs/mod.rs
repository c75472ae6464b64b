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

mod control;
mod handles;
pub mod inodes;
mod ops;
mod orphans;
pub mod view;
mod xattrs;

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

use self::inodes::{Identity, Inodes, BASE_DEV, ROOT};
use self::view::{errno, split, Obj, View, WH};
use super::base::BaseTree;
use super::commit::Exporter;
use super::longpath::short;
use super::staging::{parse_entry_ref, EntryMeta};
use crate::error::{Error, Result};
use crate::fs::paging::{page, Page, PageEntry};
use crate::fs::{Attr, FileKind};
use crate::layer::NodeId;
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
    /// A staged file, and the inode it was opened as.
    File(Arc<File>, u64),
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
    } else if ft.is_socket() {
        FileKind::Socket
    } else {
        FileKind::File
    }
}

/// The `dev` of the identities of one entry's base nodes: [`BASE_DEV`] with
/// a hash of the entry's upper tree (node numbers of two entries, even of
/// one base image, must not meet: their hard links are not each other's).
fn base_dev(root: &std::path::Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    root.hash(&mut h);
    BASE_DEV ^ (h.finish() >> 1)
}

/// The attributes of a staged file (lstat `md`) as inode `ino`.
fn upper_attr(ino: u64, md: &fs::Metadata) -> Attr {
    let at = |s: i64, ns: i64| {
        SystemTime::UNIX_EPOCH + Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32)
    };
    Attr {
        ino,
        kind: file_kind(md.file_type()),
        perm: (md.mode() & 0o7777) as u16,
        nlink: md.nlink() as u32,
        uid: md.uid(),
        gid: md.gid(),
        size: md.size(),
        mtime: at(md.mtime(), md.mtime_nsec()),
        ctime: at(md.ctime(), md.ctime_nsec()),
        rdev: md.rdev() as u32,
        ttl: TTL,
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
    /// Attributes of inodes whose last name went while the kernel held them.
    orphans: Mutex<HashMap<u64, Attr>>,
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
            orphans: Mutex::default(),
            tree_lock: Mutex::new(()),
            socket,
            owner: Caller {
                uid: nix::unistd::geteuid().as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            },
            started: SystemTime::now(),
        }
    }

    /// Keep the inode table in a journal in `state_dir` (replaying what an
    /// earlier server of this mount left there) and number file handles
    /// apart from every earlier server's: see `crate::handover`.
    pub fn with_restart_state(
        mut self,
        state_dir: &std::path::Path,
        generation: u64,
    ) -> io::Result<ExportFs> {
        self.inodes = Mutex::new(Inodes::with_journal(&state_dir.join("export.journal"))?);
        self.next_fh = AtomicU64::new((generation << 40) | 1);
        Ok(self)
    }

    /// Make sure `fh` is open: a handle an earlier server of this mount gave
    /// the kernel is opened again from `ino` with `flags` (less the ones
    /// that act at open: `O_TRUNC`, `O_CREAT`, `O_EXCL`) under its number.
    pub fn ensure_handle(&self, ino: u64, fh: u64, flags: i32) -> Result<()> {
        if self.handles.lock().unwrap().contains_key(&fh) {
            return Ok(());
        }
        let flags = flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL);
        let fresh = self.open(ino, flags)?;
        let mut handles = self.handles.lock().unwrap();
        if let Some(h) = handles.remove(&fresh) {
            handles.entry(fh).or_insert(h);
        }
        Ok(())
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
            ctime: self.started,
            rdev: 0,
            ttl: TTL,
        }
    }

    /// The inode of `path`; with `referenced` (an entry reply) the kernel's
    /// reference is counted in the same step, so no forget comes in between.
    fn number(&self, path: &[u8], identity: Option<Identity>, referenced: bool) -> u64 {
        let mut t = self.inodes.lock().unwrap();
        let ino = t.ino(path, identity);
        if referenced {
            t.remember(ino, path);
        }
        ino
    }

    fn obj_attr(&self, vpath: &[u8], view: &View, obj: &Obj, referenced: bool) -> Attr {
        match obj {
            Obj::Upper { md, .. } => {
                let ino = self.number(vpath, view::identity(md), referenced);
                let mut a = upper_attr(ino, md);
                a.nlink = view.dir_nlink(obj).unwrap_or(a.nlink);
                a
            }
            Obj::Base { node, .. } => {
                let n = view.base.as_ref().expect("base object").tree.node(*node);
                let id = (!n.is_dir() && n.nlink > 1).then(|| (base_dev(&view.root), *node as u64));
                let ino = self.number(vpath, id, referenced);
                let mut a = crate::fs::node_attr(ino, n);
                // Times before 1970 show as the epoch here, as a ustar
                // header would record them.
                a.mtime = a.mtime.max(SystemTime::UNIX_EPOCH);
                a.ctime = a.mtime;
                a.ttl = TTL;
                a
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

    /// Attributes of the object at mount path `path`; `referenced`: for an
    /// entry reply (the kernel takes a reference).
    fn attr_at(&self, path: &[u8], referenced: bool) -> Result<Attr> {
        match locate(path)? {
            Loc::Root => Ok(self.dir_attr(ROOT, 0o755)),
            Loc::Control => {
                let ino = self.number(path, None, referenced);
                let mut a = self.dir_attr(ino, 0o600);
                a.kind = FileKind::File;
                a.nlink = 1;
                Ok(a)
            }
            Loc::Namespace(ns) => {
                if !self.namespace_exists(&ns)? {
                    return Err(Error::NotFound(ns));
                }
                let ino = self.number(path, None, referenced);
                Ok(self.dir_attr(ino, 0o755))
            }
            Loc::Entry { entry, rel } => {
                let view = self.view(&entry)?;
                let obj = view.resolve(&rel)?;
                Ok(self.obj_attr(path, &view, &obj, referenced))
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
        self.attr_at(path, true)
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let mut t = self.inodes.lock().unwrap();
        t.forget(ino, nlookup);
        if !t.contains(ino) {
            self.orphans.lock().unwrap().remove(&ino);
        }
    }

    /// Inodes in the table (for tests).
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().unwrap().len()
    }

    /// Attributes of `ino`; a file unlinked while open is answered from its
    /// open descriptor (`nlink` 0), as on a local filesystem.
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        match self.path_of(ino) {
            Ok(p) => self.attr_at(&p, false),
            Err(e) => match self.open_file(ino) {
                Some(f) => Ok(upper_attr(ino, &f.metadata()?)),
                None => self.orphans.lock().unwrap().get(&ino).cloned().ok_or(e),
            },
        }
    }

    /// One reply's worth of directory `ino` from cookie `offset` (see
    /// [`crate::fs::paging`]): the entries that fit in `budget` bytes, `.` and
    /// `..` included. Only the entries sent get numbers (no kernel reference:
    /// plain `readdir`).
    pub fn readdir_page(&self, ino: u64, offset: u64, budget: usize) -> Result<Vec<PageEntry>> {
        let p = self.path_of(ino)?;
        match locate(&p)? {
            Loc::Root | Loc::Namespace(_) => {
                let names = self.namespace_names(&p)?;
                let pg = page(offset, budget, false, names.len(), |i| names[i].len());
                let mut out = pg.dots(ino, ino);
                for (i, n) in names[pg.first..pg.end].iter().enumerate() {
                    out.push(PageEntry {
                        ino: self.number(&join(&p, n.as_bytes()), None, false),
                        cookie: Page::cookie(pg.first + i),
                        name: n.clone().into_bytes(),
                        kind: FileKind::Dir,
                        attr: None,
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
                let list = view.list(&dir)?;
                let pg = page(offset, budget, false, list.len(), |i| list[i].0.len());
                let mut out = pg.dots(ino, ino);
                for (i, (name, obj)) in list[pg.first..pg.end].iter().enumerate() {
                    let a = self.obj_attr(&join(&p, name), &view, obj, false);
                    out.push(PageEntry {
                        ino: a.ino,
                        cookie: Page::cookie(pg.first + i),
                        name: name.clone(),
                        kind: a.kind,
                        attr: None,
                    });
                }
                Ok(out)
            }
        }
    }

    /// The names in the top directory or namespace `p`: namespaces and entries.
    fn namespace_names(&self, p: &[u8]) -> Result<Vec<String>> {
        let prefix = if p.is_empty() {
            String::new()
        } else {
            format!("{}/", String::from_utf8_lossy(p))
        };
        let mut names: BTreeSet<String> = BTreeSet::new();
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
                    Some((ns, _)) => names.insert(ns.to_string()),
                    None if !rest.is_empty() => names.insert(rest.to_string()),
                    None => false,
                };
            }
        }
        Ok(names.into_iter().collect())
    }

    /// Whether `ino` is a directory (for `opendir`).
    pub fn is_dir(&self, ino: u64) -> Result<bool> {
        Ok(self.getattr(ino)?.kind == FileKind::Dir)
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

    /// The target of symlink `ino`.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let p = self.path_of(ino)?;
        let Loc::Entry { entry, rel } = locate(&p)? else {
            return Err(err(libc::EINVAL));
        };
        let view = self.view(&entry)?;
        match view.resolve(&rel)? {
            Obj::Upper { path, .. } => Ok(fs::read_link(&*short(&path)?)?
                .as_os_str()
                .as_bytes()
                .to_vec()),
            Obj::Base { node, .. } => view
                .base
                .as_ref()
                .and_then(|b| b.tree.node(node).link_target.clone())
                .ok_or_else(|| err(libc::EINVAL)),
        }
    }
}
