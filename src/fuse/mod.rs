//! The only module that names `fuser`: it links kernel requests to [`crate::fs::Fs`]
//! (and, in submodules, to the other filesystems regfs serves).
//!
//! The adapters are thin: every operation goes through [`glue::Glue`], which
//! answers it from a tokio task when it may touch the network (or the disk), so
//! the FUSE dispatch thread never waits, and times, logs, counts and maps its
//! failure in one place. Inode lifetime and directory paging live in the
//! filesystems; a readdir reply is a copy of the page they computed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyXattr,
    Request, SessionACL,
};
use tokio::runtime::Handle;

use crate::error::Error;
use crate::fs::{Attr, FileKind, Fs};

pub mod als;
pub mod export;
mod glue;
mod session;

use glue::Glue;
pub use glue::OpErrors;
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

/// The fuser adapter.
pub struct FuseFs {
    fs: Arc<Fs>,
    glue: Glue,
    /// The kernel opens directories without asking us (FUSE_NO_OPENDIR_SUPPORT).
    stateless_dirs: AtomicBool,
    /// The daemon's control socket, named by the root's `user.regfs.control` xattr.
    control: Option<Arc<Vec<u8>>>,
}

impl FuseFs {
    /// Adapt `fs`, running its operations on runtime `rt`.
    pub fn new(fs: Arc<Fs>, rt: Handle) -> FuseFs {
        FuseFs {
            fs,
            glue: Glue::new(rt),
            stateless_dirs: AtomicBool::new(false),
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

pub(crate) fn file_type(k: FileKind) -> FileType {
    match k {
        FileKind::Dir => FileType::Directory,
        FileKind::File => FileType::RegularFile,
        FileKind::Symlink => FileType::Symlink,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
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
        // A directory whose mtime changed (the root of a mount of many
        // registries) has its cached listing dropped when its attributes are
        // refreshed; files never change, so this costs them nothing.
        let _ = config.add_capabilities(InitFlags::FUSE_AUTO_INVAL_DATA);
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
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let op = async move { fs.lookup_or_absent(parent.0, &name).await };
        self.glue.run("lookup", op, glue::entry(reply));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let op = || {
            self.fs.forget(ino.0, nlookup);
            Ok(())
        };
        self.glue.inline("forget", op, |_| ());
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let fs = self.fs.clone();
        let op = async move { fs.getattr(ino.0).await };
        self.glue.run("getattr", op, glue::attr(reply));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        let op = async move { fs.readlink(ino.0).await };
        self.glue.run("readlink", op, glue::data(reply));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let fs = self.fs.clone();
        let op = async move {
            if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(Error::ReadOnly);
            }
            fs.open(ino.0).await
        };
        self.glue.run("open", op, |r| match r {
            // Everything regfs serves is immutable: keep the page cache across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
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
        let fs = self.fs.clone();
        let op = async move { fs.read(fh.0, offset, size).await };
        self.glue.run("read", op, glue::data(reply));
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
        let op = || {
            self.fs.release(fh.0);
            Ok(())
        };
        self.glue.inline("release", op, glue::empty(reply));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.glue.inline("flush", || Ok(()), glue::empty(reply));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No snapshot: the core pages listings from (ino, offset).
        let stateless = self.stateless_dirs.load(Ordering::Relaxed);
        self.glue.inline(
            "opendir",
            || Ok(()),
            |_| {
                if stateless {
                    // The kernel then stops sending OPENDIR/RELEASEDIR
                    // altogether and caches listings itself.
                    reply.error(Errno::from_i32(libc::ENOSYS));
                } else {
                    reply.opened(
                        FileHandle(0),
                        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
                    );
                }
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let (fs, size) = (self.fs.clone(), glue::reply_size(&reply));
        let op = async move { fs.readdir_page(ino.0, offset, size, false).await };
        self.glue.run("readdir", op, glue::dir_page(reply));
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let (fs, size) = (self.fs.clone(), glue::reply_size(&reply));
        let unsent = {
            let fs = fs.clone();
            move |rest: &[crate::fs::PageEntry]| {
                for e in rest.iter().filter(|e| !e.is_dot()) {
                    fs.forget(e.ino, 1);
                }
            }
        };
        let op = async move { fs.readdir_page(ino.0, offset, size, true).await };
        self.glue
            .run("readdirplus", op, glue::dir_page_plus(reply, unsent));
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.glue
            .inline("releasedir", || Ok(()), glue::empty(reply));
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !crate::fs::xattr_shown(name.as_bytes(), req.uid() == 0) {
            let op = || Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENODATA)));
            return self.glue.inline("getxattr", op, glue::xattr(reply, size));
        }
        let control = match (ino.0, &self.control) {
            (crate::fs::ROOT_INO, Some(socket))
                if name.as_bytes() == crate::export::fs::SOCKET_XATTR =>
            {
                Some(socket.clone())
            }
            _ => None,
        };
        let (fs, name) = (self.fs.clone(), name.as_bytes().to_vec());
        let op = async move {
            match control {
                Some(socket) => Ok(socket.to_vec()),
                None => fs.getxattr(ino.0, &name).await,
            }
        };
        self.glue.run("getxattr", op, glue::xattr(reply, size));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (fs, root) = (self.fs.clone(), req.uid() == 0);
        let op = async move {
            let mut names = fs.listxattr(ino.0).await?;
            names.retain(|n| crate::fs::xattr_shown(n, root));
            Ok(names)
        };
        self.glue
            .run("listxattr", op, glue::xattr_names(reply, size));
    }
}
