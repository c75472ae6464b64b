//! The read side the browse mount and the layer store share: every kernel
//! request that only reads, answered through the glue from a core with the
//! same read methods ([`ReadCore`]: [`Fs`](crate::fs::Fs) and
//! [`LayerStore`](crate::als::LayerStore)). The two adapters differ only in
//! what they add: the layer store's `use` / `rmdir` and its refusals, the
//! browse mount's directory caching.

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::{
    Errno, FileHandle, FopenFlags, INodeNo, InitFlags, KernelConfig, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr,
};

use super::glue::{self, Glue};
use crate::error::{Error, Result};
use crate::fs::{Attr, PageEntry};

/// Linux's `__FMODE_EXEC`: among the open flags FUSE passes on when the
/// kernel opens a file to execute it (`execve`, and the loader it maps).
pub(crate) const FMODE_EXEC: i32 = 0x20;

/// The read methods a read-only tree offers its adapter.
pub(crate) trait ReadCore: Send + Sync + 'static {
    /// `name` in `parent`; an absent name may come back as [`Attr::absent`].
    fn lookup(&self, parent: u64, name: &[u8]) -> impl Future<Output = Result<Attr>> + Send;
    /// The kernel dropped `n` references to `ino`.
    fn forget(&self, ino: u64, n: u64);
    /// Attributes of `ino`.
    fn getattr(&self, ino: u64) -> impl Future<Output = Result<Attr>> + Send;
    /// The target of symlink `ino`.
    fn readlink(&self, ino: u64) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// Open `ino` for reading: a file handle.
    fn open(&self, ino: u64) -> impl Future<Output = Result<u64>> + Send;
    /// Open `ino` for reading by `exec` (the open flags hold [`FMODE_EXEC`]).
    fn open_exec(self: &Arc<Self>, ino: u64) -> impl Future<Output = Result<u64>> + Send;
    /// Bytes of open file `fh`.
    fn read(&self, fh: u64, offset: u64, size: u32)
        -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// Open `ino` again as `fh`, a handle an earlier server gave the kernel.
    fn reopen(&self, ino: u64, fh: u64) -> impl Future<Output = Result<()>> + Send;
    /// Forget file handle `fh`.
    fn release(&self, fh: u64);
    /// One reply's worth of directory `ino` (see `crate::fs::paging`).
    fn readdir_page(
        &self,
        ino: u64,
        offset: u64,
        budget: usize,
        plus: bool,
    ) -> impl Future<Output = Result<Vec<PageEntry>>> + Send;
    /// An extended attribute's value.
    fn getxattr(&self, ino: u64, name: &[u8]) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// Extended attribute names.
    fn listxattr(&self, ino: u64) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;
}

/// `impl ReadCore` for a type whose inherent methods have the trait's
/// names and shapes; `$lookup` is the one that answers `lookup`.
macro_rules! read_core {
    ($t:ty, $lookup:ident) => {
        impl ReadCore for $t {
            fn lookup(
                &self,
                parent: u64,
                name: &[u8],
            ) -> impl Future<Output = Result<Attr>> + Send {
                <$t>::$lookup(self, parent, name)
            }
            fn forget(&self, ino: u64, n: u64) {
                <$t>::forget(self, ino, n)
            }
            fn getattr(&self, ino: u64) -> impl Future<Output = Result<Attr>> + Send {
                <$t>::getattr(self, ino)
            }
            fn readlink(&self, ino: u64) -> impl Future<Output = Result<Vec<u8>>> + Send {
                <$t>::readlink(self, ino)
            }
            fn open(&self, ino: u64) -> impl Future<Output = Result<u64>> + Send {
                <$t>::open(self, ino)
            }
            fn open_exec(self: &Arc<Self>, ino: u64) -> impl Future<Output = Result<u64>> + Send {
                <$t>::open_exec(self, ino)
            }
            fn read(
                &self,
                fh: u64,
                offset: u64,
                size: u32,
            ) -> impl Future<Output = Result<Vec<u8>>> + Send {
                <$t>::read(self, fh, offset, size)
            }
            fn reopen(&self, ino: u64, fh: u64) -> impl Future<Output = Result<()>> + Send {
                <$t>::reopen(self, ino, fh)
            }
            fn release(&self, fh: u64) {
                <$t>::release(self, fh)
            }
            fn readdir_page(
                &self,
                ino: u64,
                offset: u64,
                budget: usize,
                plus: bool,
            ) -> impl Future<Output = Result<Vec<PageEntry>>> + Send {
                <$t>::readdir_page(self, ino, offset, budget, plus)
            }
            fn getxattr(
                &self,
                ino: u64,
                name: &[u8],
            ) -> impl Future<Output = Result<Vec<u8>>> + Send {
                <$t>::getxattr(self, ino, name)
            }
            fn listxattr(&self, ino: u64) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send {
                <$t>::listxattr(self, ino)
            }
        }
    };
}

// The browse tree answers absent names as negative entries.
read_core!(crate::fs::Fs, lookup_or_absent);
read_core!(crate::als::LayerStore, lookup);

/// A core and how its mount answers the read side.
pub(crate) struct ReadSide<C> {
    pub(crate) core: Arc<C>,
    pub(crate) glue: Glue,
    /// The kernel opens directories without asking (no-opendir mode).
    stateless_dirs: AtomicBool,
    /// Let the kernel cache listings of directories opened (the browse mount).
    cache_dirs: bool,
    /// The daemon's control socket, named by the root's `user.regfs.control` xattr.
    pub(crate) control: Option<Arc<Vec<u8>>>,
}

impl<C: ReadCore> ReadSide<C> {
    /// The read side of `core`, its operations run on `rt`.
    pub(crate) fn new(core: Arc<C>, rt: tokio::runtime::Handle, cache_dirs: bool) -> Self {
        ReadSide {
            core,
            glue: Glue::new(rt),
            stateless_dirs: AtomicBool::new(false),
            cache_dirs,
            control: None,
        }
    }

    /// What both mounts ask of the kernel; `extra` on top (the browse
    /// mount's `FUSE_AUTO_INVAL_DATA`).
    pub(crate) fn init(&self, config: &mut KernelConfig, extra: InitFlags) {
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
        let _ = config.add_capabilities(extra);
        // Directories need no open: two round trips fewer per directory.
        let no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        self.stateless_dirs.store(no_opendir, Ordering::Relaxed);
        // No FUSE_POSIX_ACL: the kernel would then ask for each inode's ACL
        // once, cold. Without it `ls -l` asks us, hears EOPNOTSUPP (see
        // `crate::fs::UNSUPPORTED_WHEN_ABSENT`) and stops asking at all.
    }

    pub(crate) fn lookup(&self, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (core, name) = (self.core.clone(), name.as_bytes().to_vec());
        let op = async move { core.lookup(parent.0, &name).await };
        self.glue.run("lookup", op, glue::entry(reply));
    }

    pub(crate) fn forget(&self, ino: INodeNo, nlookup: u64) {
        let op = || {
            self.core.forget(ino.0, nlookup);
            Ok(())
        };
        self.glue.inline("forget", op, |_| ());
    }

    pub(crate) fn getattr(&self, ino: INodeNo, reply: ReplyAttr) {
        let core = self.core.clone();
        let op = async move { core.getattr(ino.0).await };
        self.glue.run("getattr", op, glue::attr(reply));
    }

    pub(crate) fn readlink(&self, ino: INodeNo, reply: ReplyData) {
        let core = self.core.clone();
        let op = async move { core.readlink(ino.0).await };
        self.glue.run("readlink", op, glue::data(reply));
    }

    pub(crate) fn open(&self, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let core = self.core.clone();
        let op = async move {
            if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(Error::ReadOnly);
            }
            if flags.0 & FMODE_EXEC != 0 {
                core.open_exec(ino.0).await
            } else {
                core.open(ino.0).await
            }
        };
        self.glue.run("open", op, |r| match r {
            // Everything served is immutable: keep the page cache across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        });
    }

    /// A handle unknown here was given by an earlier server of the mount
    /// (see `crate::handover`): the file is opened again under its number.
    pub(crate) fn read(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        let core = self.core.clone();
        let op = async move {
            match core.read(fh.0, offset, size).await {
                Err(e) if e.errno() == libc::EBADF => {
                    core.reopen(ino.0, fh.0).await?;
                    core.read(fh.0, offset, size).await
                }
                r => r,
            }
        };
        self.glue.run("read", op, glue::data(reply));
    }

    pub(crate) fn release(&self, fh: FileHandle, reply: ReplyEmpty) {
        let op = || {
            self.core.release(fh.0);
            Ok(())
        };
        self.glue.inline("release", op, glue::empty(reply));
    }

    /// `flush` and `releasedir`: nothing to do.
    pub(crate) fn nothing(&self, name: &'static str, reply: ReplyEmpty) {
        self.glue.inline(name, || Ok(()), glue::empty(reply));
    }

    pub(crate) fn opendir(&self, reply: ReplyOpen) {
        // No snapshot: the core pages listings from (ino, offset).
        let stateless = self.stateless_dirs.load(Ordering::Relaxed);
        let flags = if self.cache_dirs {
            FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        self.glue.inline(
            "opendir",
            || Ok(()),
            |_| {
                if stateless {
                    // The kernel then stops sending OPENDIR/RELEASEDIR
                    // altogether and caches listings itself.
                    reply.error(Errno::from_i32(libc::ENOSYS));
                } else {
                    reply.opened(FileHandle(0), flags);
                }
            },
        );
    }

    pub(crate) fn readdir(&self, ino: INodeNo, offset: u64, reply: ReplyDirectory) {
        let (core, size) = (self.core.clone(), glue::reply_size(&reply));
        let op = async move { core.readdir_page(ino.0, offset, size, false).await };
        self.glue.run("readdir", op, glue::dir_page(reply));
    }

    pub(crate) fn readdirplus(&self, ino: INodeNo, offset: u64, reply: ReplyDirectoryPlus) {
        let (core, size) = (self.core.clone(), glue::reply_size(&reply));
        let unsent = {
            let core = core.clone();
            move |rest: &[PageEntry]| {
                for e in rest.iter().filter(|e| !e.is_dot()) {
                    core.forget(e.ino, 1);
                }
            }
        };
        let op = async move { core.readdir_page(ino.0, offset, size, true).await };
        self.glue
            .run("readdirplus", op, glue::dir_page_plus(reply, unsent));
    }

    /// `root`: the caller is root (who is not shown `user.overlay.*`).
    pub(crate) fn getxattr(
        &self,
        root: bool,
        ino: INodeNo,
        name: &OsStr,
        size: u32,
        reply: ReplyXattr,
    ) {
        if !crate::fs::xattr_shown(name.as_bytes(), root) {
            let op = || Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENODATA)));
            return self.glue.inline("getxattr", op, glue::xattr(reply, size));
        }
        if let (crate::fs::ROOT_INO, Some(socket)) = (ino.0, &self.control) {
            if name.as_bytes() == crate::export::fs::SOCKET_XATTR {
                let socket = socket.to_vec();
                return self
                    .glue
                    .inline("getxattr", || Ok(socket), glue::xattr(reply, size));
            }
        }
        let (core, name) = (self.core.clone(), name.as_bytes().to_vec());
        let op = async move { core.getxattr(ino.0, &name).await };
        self.glue.run("getxattr", op, glue::xattr(reply, size));
    }

    pub(crate) fn listxattr(&self, root: bool, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let core = self.core.clone();
        let op = async move {
            let mut names = core.listxattr(ino.0).await?;
            names.retain(|n| crate::fs::xattr_shown(n, root));
            Ok(names)
        };
        self.glue
            .run("listxattr", op, glue::xattr_names(reply, size));
    }
}

/// The `fuser::Filesystem` methods every read-only mount answers the same
/// way through its [`ReadSide`] (a field named `side`): lookups, attributes,
/// opens, reads, listings and xattrs, plus `ioctl` refused with `ENOTTY`.
/// Used inside `impl Filesystem for …` of the browse and layer store mounts.
macro_rules! forward_read_side {
    () => {
        /// No ioctl is served: `ENOTTY` ("not a device that knows this request"),
        /// which is what programs probing a file (python's `open`, `isatty`)
        /// expect, without fuser's default warning for each call.
        #[allow(clippy::too_many_arguments)]
        fn ioctl(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _flags: fuser::IoctlFlags,
            _cmd: u32,
            _in_data: &[u8],
            _out_size: u32,
            reply: fuser::ReplyIoctl,
        ) {
            reply.error(fuser::Errno::ENOTTY);
        }

        fn lookup(
            &self,
            _req: &fuser::Request,
            parent: fuser::INodeNo,
            name: &std::ffi::OsStr,
            reply: fuser::ReplyEntry,
        ) {
            self.side.lookup(parent, name, reply);
        }

        fn forget(&self, _req: &fuser::Request, ino: fuser::INodeNo, nlookup: u64) {
            self.side.forget(ino, nlookup);
        }

        fn getattr(
            &self,
            _req: &fuser::Request,
            ino: fuser::INodeNo,
            _fh: Option<fuser::FileHandle>,
            reply: fuser::ReplyAttr,
        ) {
            self.side.getattr(ino, reply);
        }

        fn readlink(&self, _req: &fuser::Request, ino: fuser::INodeNo, reply: fuser::ReplyData) {
            self.side.readlink(ino, reply);
        }

        fn open(
            &self,
            _req: &fuser::Request,
            ino: fuser::INodeNo,
            flags: fuser::OpenFlags,
            reply: fuser::ReplyOpen,
        ) {
            self.side.open(ino, flags, reply);
        }

        fn read(
            &self,
            _req: &fuser::Request,
            ino: fuser::INodeNo,
            fh: fuser::FileHandle,
            offset: u64,
            size: u32,
            _flags: fuser::OpenFlags,
            _lock_owner: Option<fuser::LockOwner>,
            reply: fuser::ReplyData,
        ) {
            self.side.read(ino, fh, offset, size, reply);
        }

        fn release(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            fh: fuser::FileHandle,
            _flags: fuser::OpenFlags,
            _lock_owner: Option<fuser::LockOwner>,
            _flush: bool,
            reply: fuser::ReplyEmpty,
        ) {
            self.side.release(fh, reply);
        }

        fn flush(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _lock_owner: fuser::LockOwner,
            reply: fuser::ReplyEmpty,
        ) {
            self.side.nothing("flush", reply);
        }

        fn opendir(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _flags: fuser::OpenFlags,
            reply: fuser::ReplyOpen,
        ) {
            self.side.opendir(reply);
        }

        fn readdir(
            &self,
            _req: &fuser::Request,
            ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            offset: u64,
            reply: fuser::ReplyDirectory,
        ) {
            self.side.readdir(ino, offset, reply);
        }

        fn readdirplus(
            &self,
            _req: &fuser::Request,
            ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            offset: u64,
            reply: fuser::ReplyDirectoryPlus,
        ) {
            self.side.readdirplus(ino, offset, reply);
        }

        fn releasedir(
            &self,
            _req: &fuser::Request,
            _ino: fuser::INodeNo,
            _fh: fuser::FileHandle,
            _flags: fuser::OpenFlags,
            reply: fuser::ReplyEmpty,
        ) {
            self.side.nothing("releasedir", reply);
        }

        fn getxattr(
            &self,
            req: &fuser::Request,
            ino: fuser::INodeNo,
            name: &std::ffi::OsStr,
            size: u32,
            reply: fuser::ReplyXattr,
        ) {
            self.side.getxattr(req.uid() == 0, ino, name, size, reply);
        }

        fn listxattr(
            &self,
            req: &fuser::Request,
            ino: fuser::INodeNo,
            size: u32,
            reply: fuser::ReplyXattr,
        ) {
            self.side.listxattr(req.uid() == 0, ino, size, reply);
        }
    };
}
pub(crate) use forward_read_side;
