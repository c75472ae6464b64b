//! The only module that names `fuser`: it links kernel requests to [`crate::fs::Fs`]
//! (and, in submodules, to the other filesystems regfs serves).
//!
//! Every operation that may touch the network (or the disk) is answered from a
//! tokio task, so the FUSE dispatch thread never waits; replies are `Send`.
//! Failed operations are logged and counted here, in one place.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyXattr,
    Request, SessionACL,
};
use tokio::runtime::Handle;

use crate::error::Error;
use crate::fs::{Attr, DirEntry, FileKind, Fs};
use crate::telemetry::OpTimer;

pub mod export;
mod session;

pub use session::Mounted;

/// Options of the kernel mount.
#[derive(Clone, Debug, Default)]
pub struct MountConfig {
    /// Let other users see the mount (`allow_other`).
    pub allow_other: bool,
    /// The source shown in `/proc/mounts` (`regfs:localhost:5000`).
    pub fs_name: String,
    /// Dispatch threads (they never block on the network; 1 is enough, 2 helps CPU-bound reads).
    pub threads: usize,
}

/// Counters of operations that failed, by errno, for status and tests.
#[derive(Default)]
pub struct OpErrors {
    /// Failed operations.
    pub count: AtomicU64,
}

/// A directory's entries as snapshotted at `opendir`, with known attributes.
type Listing = Arc<Vec<(DirEntry, Option<Attr>)>>;

/// Part of a directory listing: the index of its first entry, and the entries.
type Batch = (usize, Vec<(DirEntry, Option<Attr>)>);

/// The fuser adapter.
pub struct FuseFs {
    fs: Arc<Fs>,
    rt: Handle,
    dirs: Arc<Mutex<HashMap<u64, Listing>>>,
    next_dir: AtomicU64,
    /// The kernel opens directories without asking us (FUSE_NO_OPENDIR_SUPPORT).
    stateless_dirs: AtomicBool,
    errors: Arc<OpErrors>,
    /// The daemon's control socket, named by the root's `user.regfs.control` xattr.
    control: Option<Arc<Vec<u8>>>,
}

impl FuseFs {
    /// Adapt `fs`, running its operations on runtime `rt`.
    pub fn new(fs: Arc<Fs>, rt: Handle) -> FuseFs {
        FuseFs {
            fs,
            rt,
            dirs: Arc::default(),
            next_dir: AtomicU64::new(1),
            stateless_dirs: AtomicBool::new(false),
            errors: Arc::default(),
            control: None,
        }
    }

    /// Advertise the daemon's control socket in the root directory's
    /// `user.regfs.control` xattr (how `regfs status MOUNTPOINT` finds it).
    pub fn with_control_socket(mut self, socket: &Path) -> FuseFs {
        self.control = Some(Arc::new(socket.as_os_str().as_bytes().to_vec()));
        self
    }

    /// Mount at `mountpoint` and serve from background threads until unmounted.
    pub fn mount(self, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<Mounted> {
        let config = session_config(cfg, MountOption::RO, "regfs", &[MountOption::NoAtime]);
        fuser::spawn_mount(self, mountpoint, &config).map(Mounted::new)
    }
}

/// The session settings both mounts share: `nosuid,nodev,default_permissions`,
/// the source name, `allow_other` only when asked, the dispatch threads.
pub(crate) fn session_config(
    cfg: &MountConfig,
    access: MountOption,
    subtype: &str,
    extra: &[MountOption],
) -> Config {
    let mut config = Config::default();
    config.mount_options = vec![
        access,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
        MountOption::FSName(cfg.fs_name.clone()),
        MountOption::Subtype(subtype.into()),
    ];
    config.mount_options.extend_from_slice(extra);
    config.acl = if cfg.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads.max(1));
    config
}

pub(crate) fn errno(op: &str, e: &Error, errors: &OpErrors) -> Errno {
    let n = e.errno();
    if matches!(e, Error::DigestMismatch { .. }) {
        metrics::counter!(crate::telemetry::VERIFICATION_FAILURES).increment(1);
    }
    if n == libc::ENOENT || n == libc::ENODATA || n == libc::EOPNOTSUPP {
        tracing::debug!(op, error = %e, "fuse op failed");
    } else {
        errors.count.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(op, error = %e, errno = n, "fuse op failed");
    }
    Errno::from_i32(n)
}

pub(crate) fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
    }
}

pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.mtime,
        crtime: SystemTime::UNIX_EPOCH,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// Offer directory positions from `offset` on until `add` says the reply is
/// full (`Some(true)`; the kernel asks again from there) or that there is no
/// such entry (`None`). Positions 0 and 1 are `.` and `..`; position `n` ≥ 2
/// is entry `n - 2`, and its offset cookie is `n + 1`.
fn offer_from(offset: u64, mut add: impl FnMut(usize) -> Option<bool>) {
    let mut i = offset as usize;
    while add(i) == Some(false) {
        i += 1;
    }
}

/// Answer `readdir` from a snapshot: `.`, `..`, then `entry(0)`, `entry(1)`, …
/// from `offset` until the reply buffer is full (the kernel asks again).
pub(crate) fn fill_dir<'a>(
    mut reply: ReplyDirectory,
    ino: INodeNo,
    offset: u64,
    entry: impl Fn(usize) -> Option<&'a DirEntry>,
) {
    offer_from(offset, |i| {
        Some(match i {
            0 => reply.add(ino, 1, FileType::Directory, "."),
            1 => reply.add(ino, 2, FileType::Directory, ".."),
            n => {
                let e = entry(n - 2)?;
                reply.add(
                    INodeNo(e.ino),
                    (n + 1) as u64,
                    file_type(e.kind),
                    OsStr::from_bytes(&e.name),
                )
            }
        })
    });
    reply.ok();
}

/// Answer `readdirplus` from `entries`, the directory's listing from entry
/// `skipped` on: `.`, `..`, then the entries from `offset` until the reply
/// buffer is full (the kernel asks again). Each entry sent takes a lookup
/// reference in `fs`.
fn fill_dir_plus_at(
    mut reply: ReplyDirectoryPlus,
    ino: INodeNo,
    offset: u64,
    skipped: usize,
    entries: &[(DirEntry, Option<Attr>)],
    fs: &Fs,
) {
    // `.` and `..` carry no lookup reference; their attributes are not cached.
    let mut dot = FileAttr {
        ino,
        ..file_attr(&Attr::dir(ino.0, SystemTime::UNIX_EPOCH, Duration::ZERO))
    };
    let zero = Duration::ZERO;
    offer_from(offset, |i| {
        Some(match i {
            0 => reply.add(ino, 1, ".", &zero, &dot, Generation(0)),
            1 => {
                dot.ino = INodeNo(1);
                reply.add(INodeNo(1), 2, "..", &zero, &dot, Generation(0))
            }
            n => {
                let (e, attr) = (n - 2).checked_sub(skipped).and_then(|k| entries.get(k))?;
                // Entries whose attributes need the network (tags) go out
                // uncached: the kernel looks them up when they are used.
                let (ttl, fa) = match attr {
                    Some(a) => (a.ttl, file_attr(a)),
                    None => (
                        zero,
                        FileAttr {
                            kind: file_type(e.kind),
                            ..file_attr(&Attr::dir(e.ino, SystemTime::UNIX_EPOCH, zero))
                        },
                    ),
                };
                let full = reply.add(
                    INodeNo(e.ino),
                    (n + 1) as u64,
                    OsStr::from_bytes(&e.name),
                    &ttl,
                    &fa,
                    Generation(0),
                );
                if !full {
                    // The kernel now holds a lookup reference to it.
                    fs.add_lookup(e.ino);
                }
                full
            }
        })
    });
    reply.ok();
}

/// [`fill_dir_plus_at`] from a whole listing.
fn fill_dir_plus(
    reply: ReplyDirectoryPlus,
    ino: INodeNo,
    offset: u64,
    entries: &[(DirEntry, Option<Attr>)],
    fs: &Fs,
) {
    fill_dir_plus_at(reply, ino, offset, 0, entries, fs)
}

pub(crate) fn reply_xattr(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(data);
    }
}

impl FuseFs {
    /// List directory `ino` from position `offset` with no open handle (the
    /// kernel opens directories without asking) and hand the batch (index of
    /// its first entry, entries) or the errno to `answer`.
    fn list_from(
        &self,
        op: &'static str,
        timer: OpTimer,
        ino: INodeNo,
        offset: u64,
        answer: impl FnOnce(std::result::Result<Batch, Errno>) + Send + 'static,
    ) {
        let (fs, errors) = (self.fs.clone(), self.errors.clone());
        self.run(async move {
            let _timer = timer;
            let skip = offset.saturating_sub(2) as usize;
            let listed = fs.readdir_plus_from(ino.0, skip).await;
            answer(listed.map_err(|e| errno(op, &e, &errors)));
        });
    }

    /// Run an operation: polled once right here, and if it completes without
    /// waiting (everything it needs is in memory) the reply goes out at once;
    /// otherwise it continues as a task, so the dispatch thread never waits on
    /// the network or the disk. Metadata of loaded trees takes the fast path.
    fn run<F: Future<Output = ()> + Send + 'static>(&self, op: F) {
        let _rt = self.rt.enter();
        let mut op = Box::pin(op);
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        if op.as_mut().poll(&mut cx).is_pending() {
            // Futures re-register their waker on every poll: the task's poll
            // replaces the no-op one.
            self.rt.spawn(op);
        }
    }
}

impl Filesystem for FuseFs {
    /// No ioctl is served: `ENOTTY` ("not a device that knows this request"),
    /// which is what programs probing a file (python's `open`, `isatty`)
    /// expect, without fuser's default warning for each call.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // Entries with their attributes in one reply: `ls -l` and `find` of a
        // loaded tree need no LOOKUP per entry.
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        // Symlink targets are immutable per inode (a moved tag is a new inode):
        // let the kernel keep them.
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        // Directories need no open: two round trips fewer per directory.
        let no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        self.stateless_dirs.store(no_opendir, Ordering::Relaxed);
        // No FUSE_POSIX_ACL: the kernel would then ask for each inode's ACL
        // once, cold. Without it `ls -l` asks us, hears EOPNOTSUPP (see
        // `crate::fs::UNSUPPORTED_WHEN_ABSENT`) and stops asking at all.
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (fs, errors, name) = (
            self.fs.clone(),
            self.errors.clone(),
            name.as_bytes().to_vec(),
        );
        let timer = OpTimer::start("lookup");
        self.run(async move {
            let _timer = timer;
            match fs.lookup(parent.0, &name).await {
                Ok(a) => reply.entry(&a.ttl, &file_attr(&a), Generation(0)),
                Err(e) => reply.error(errno("lookup", &e, &errors)),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let (fs, errors) = (self.fs.clone(), self.errors.clone());
        let timer = OpTimer::start("getattr");
        self.run(async move {
            let _timer = timer;
            match fs.getattr(ino.0).await {
                Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
                Err(e) => reply.error(errno("getattr", &e, &errors)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let (fs, errors) = (self.fs.clone(), self.errors.clone());
        let timer = OpTimer::start("readlink");
        self.run(async move {
            let _timer = timer;
            match fs.readlink(ino.0).await {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(errno("readlink", &e, &errors)),
            }
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            reply.error(Errno::from_i32(libc::EROFS));
            return;
        }
        let (fs, errors) = (self.fs.clone(), self.errors.clone());
        let timer = OpTimer::start("open");
        self.run(async move {
            let _timer = timer;
            match fs.open(ino.0).await {
                // Everything regfs serves is immutable: keep the page cache across opens.
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
                Err(e) => reply.error(errno("open", &e, &errors)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (fs, errors) = (self.fs.clone(), self.errors.clone());
        let timer = OpTimer::start("read");
        self.run(async move {
            let _timer = timer;
            match fs.read(fh.0, offset, size).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(errno("read", &e, &errors)),
            }
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.stateless_dirs.load(Ordering::Relaxed) {
            // The kernel then stops sending OPENDIR/RELEASEDIR altogether and
            // caches listings itself (KEEP_CACHE | CACHE_DIR): `readdirplus`
            // lists from (ino, offset) with no handle.
            reply.error(Errno::from_i32(libc::ENOSYS));
            return;
        }
        let (fs, errors, dirs) = (self.fs.clone(), self.errors.clone(), self.dirs.clone());
        let fh = self.next_dir.fetch_add(1, Ordering::Relaxed);
        let timer = OpTimer::start("opendir");
        self.run(async move {
            let _timer = timer;
            match fs.readdir_plus(ino.0).await {
                Ok(entries) => {
                    dirs.lock().unwrap().insert(fh, Arc::new(entries));
                    reply.opened(
                        FileHandle(fh),
                        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                    );
                }
                Err(e) => reply.error(errno("opendir", &e, &errors)),
            }
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let timer = OpTimer::start("readdir");
        // A snapshot taken at opendir: served from memory, no waiting.
        if let Some(entries) = self.dirs.lock().unwrap().get(&fh.0).cloned() {
            fill_dir(reply, ino, offset, |n| entries.get(n).map(|(e, _)| e));
            return;
        }
        self.list_from("readdir", timer, ino, offset, move |listed| match listed {
            Ok((skipped, entries)) => fill_dir(reply, ino, offset, |n| {
                n.checked_sub(skipped)
                    .and_then(|k| entries.get(k))
                    .map(|(e, _)| e)
            }),
            Err(e) => reply.error(e),
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let timer = OpTimer::start("readdirplus");
        if let Some(entries) = self.dirs.lock().unwrap().get(&fh.0).cloned() {
            fill_dir_plus(reply, ino, offset, &entries, &self.fs);
            return;
        }
        let fs = self.fs.clone();
        self.list_from(
            "readdirplus",
            timer,
            ino,
            offset,
            move |listed| match listed {
                Ok((skipped, entries)) => {
                    fill_dir_plus_at(reply, ino, offset, skipped, &entries, &fs)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let (crate::fs::ROOT_INO, Some(socket)) = (ino.0, &self.control) {
            if name.as_bytes() == crate::export::fs::SOCKET_XATTR {
                reply_xattr(reply, size, socket);
                return;
            }
        }
        let (fs, errors, name) = (
            self.fs.clone(),
            self.errors.clone(),
            name.as_bytes().to_vec(),
        );
        let timer = OpTimer::start("getxattr");
        self.run(async move {
            let _timer = timer;
            match fs.getxattr(ino.0, &name).await {
                Ok(v) => reply_xattr(reply, size, &v),
                Err(e) => reply.error(errno("getxattr", &e, &errors)),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (fs, errors) = (self.fs.clone(), self.errors.clone());
        let timer = OpTimer::start("listxattr");
        self.run(async move {
            let _timer = timer;
            match fs.listxattr(ino.0).await {
                Ok(names) => {
                    let mut buf = Vec::new();
                    for n in names {
                        buf.extend_from_slice(&n);
                        buf.push(0);
                    }
                    reply_xattr(reply, size, &buf)
                }
                Err(e) => reply.error(errno("listxattr", &e, &errors)),
            }
        });
    }
}
