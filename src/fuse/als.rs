//! The fuser adapter of the layer store mount: links kernel requests to
//! [`crate::als::LayerStore`]. The mount is read-write at the kernel level
//! only so that containers/storage's `use` (a create) and `rmdir` reach the
//! view, which answers them ENOENT; every other change is refused here with
//! EROFS. Reads, lookups and listings go through the shared glue like the
//! read-only tree's.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, INodeNo, InitFlags, IoctlFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyXattr,
    Request, TimeOrNow,
};
use tokio::runtime::Handle;

use super::glue::{self, Glue};
use super::MountConfig;
use crate::als::LayerStore;
use crate::error::Error;

/// The fuser adapter of the layer store view.
pub struct AlsFuse {
    als: Arc<LayerStore>,
    glue: Glue,
    stateless_dirs: AtomicBool,
    /// The daemon's control socket, named by the root's `user.regfs.control` xattr.
    control: Option<Arc<Vec<u8>>>,
}

impl AlsFuse {
    /// Adapt `als`, running its operations on runtime `rt`.
    pub fn new(als: Arc<LayerStore>, rt: Handle) -> AlsFuse {
        AlsFuse {
            als,
            glue: Glue::new(rt),
            stateless_dirs: AtomicBool::new(false),
            control: None,
        }
    }

    /// Advertise the daemon's control socket in the root directory's
    /// `user.regfs.control` xattr, so that `regfs status LAYERSTORE` works.
    pub fn with_control_socket(mut self, socket: &Path) -> AlsFuse {
        self.control = Some(Arc::new(socket.as_os_str().as_bytes().to_vec()));
        self
    }

    /// Mount at `mountpoint` and serve from background threads.
    pub fn mount(self, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<super::Mounted> {
        let config = super::session_config(
            cfg,
            MountOption::RW,
            "regfs-layers",
            &[MountOption::NoAtime],
        );
        fuser::spawn_mount(self, mountpoint, &config).map(super::Mounted::new)
    }

    /// Refuse a change with EROFS, inline (it touches nothing).
    fn refuse<T>(&self, name: &'static str, reply: impl FnOnce(Result<T, Errno>)) {
        self.glue.inline(name, || Err(Error::ReadOnly), reply);
    }
}

impl Filesystem for AlsFuse {
    /// No ioctl is served (`ENOTTY`), as on the browse mount.
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
        let _ = config
            .add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO);
        let _ = config.add_capabilities(InitFlags::FUSE_CACHE_SYMLINKS);
        let no_opendir = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        self.stateless_dirs.store(no_opendir, Ordering::Relaxed);
        Ok(())
    }

    /// No poll support: ENOSYS makes the kernel stop asking (and treat
    /// files as always ready), without fuser's warning for each call.
    #[allow(clippy::too_many_arguments)]
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (als, name) = (self.als.clone(), name.as_bytes().to_vec());
        let op = async move { als.lookup(parent.0, &name).await };
        self.glue.run("lookup", op, glue::entry(reply));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let op = || {
            self.als.forget(ino.0, nlookup);
            Ok(())
        };
        self.glue.inline("forget", op, |_| ());
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let als = self.als.clone();
        let op = async move { als.getattr(ino.0).await };
        self.glue.run("getattr", op, glue::attr(reply));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let als = self.als.clone();
        let op = async move { als.readlink(ino.0).await };
        self.glue.run("readlink", op, glue::data(reply));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let als = self.als.clone();
        let op = async move {
            if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
                return Err(Error::ReadOnly);
            }
            als.open(ino.0).await
        };
        self.glue.run("open", op, |r| match r {
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
        let als = self.als.clone();
        let op = async move { als.read(fh.0, offset, size).await };
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
            self.als.release(fh.0);
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
        let stateless = self.stateless_dirs.load(Ordering::Relaxed);
        self.glue.inline(
            "opendir",
            || Ok(()),
            |_| {
                if stateless {
                    reply.error(Errno::from_i32(libc::ENOSYS));
                } else {
                    // No FOPEN_CACHE_DIR: a reference's listing follows its tag.
                    reply.opened(FileHandle(0), FopenFlags::empty());
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
        let (als, size) = (self.als.clone(), glue::reply_size(&reply));
        let op = async move { als.readdir_page(ino.0, offset, size, false).await };
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
        let (als, size) = (self.als.clone(), glue::reply_size(&reply));
        let unsent = {
            let als = als.clone();
            move |rest: &[crate::fs::PageEntry]| {
                for e in rest.iter().filter(|e| !e.is_dot()) {
                    als.forget(e.ino, 1);
                }
            }
        };
        let op = async move { als.readdir_page(ino.0, offset, size, true).await };
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
        if let (crate::fs::ROOT_INO, Some(socket)) = (ino.0, &self.control) {
            if name.as_bytes() == crate::export::fs::SOCKET_XATTR {
                let socket = socket.to_vec();
                return self
                    .glue
                    .inline("getxattr", || Ok(socket), glue::xattr(reply, size));
            }
        }
        let (als, name) = (self.als.clone(), name.as_bytes().to_vec());
        let op = async move { als.getxattr(ino.0, &name).await };
        self.glue.run("getxattr", op, glue::xattr(reply, size));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let (als, root) = (self.als.clone(), req.uid() == 0);
        let op = async move {
            let mut names = als.listxattr(ino.0).await?;
            names.retain(|n| crate::fs::xattr_shown(n, root));
            Ok(names)
        };
        self.glue
            .run("listxattr", op, glue::xattr_names(reply, size));
    }

    /// containers/storage's `use` file; anything else EROFS.
    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let (als, name) = (self.als.clone(), name.as_bytes().to_vec());
        let op = async move { als.create(parent.0, &name).await };
        self.glue.run("create", op, |r| match r {
            Ok(never) => match never {},
            Err(e) => reply.error(e),
        });
    }

    /// containers/storage's release of a layer; anything else EROFS.
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (als, name) = (self.als.clone(), name.as_bytes().to_vec());
        let op = async move { als.rmdir(parent.0, &name).await };
        self.glue.run("rmdir", op, glue::empty(reply));
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.refuse("mknod", glue::entry(reply));
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.refuse("mkdir", glue::entry(reply));
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.refuse("unlink", glue::empty(reply));
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.refuse("symlink", glue::entry(reply));
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.refuse("rename", glue::empty(reply));
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.refuse("link", glue::entry(reply));
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.refuse("setattr", glue::attr(reply));
    }

    #[allow(clippy::too_many_arguments)]
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.refuse("setxattr", glue::empty(reply));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.refuse("removexattr", glue::empty(reply));
    }
}
