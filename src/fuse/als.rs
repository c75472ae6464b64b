//! The fuser adapter of the layer store mount: links kernel requests to
//! [`crate::als::LayerStore`]. The mount is read-write at the kernel level
//! only so that containers/storage's `use` (a create) and `rmdir` reach the
//! view, which answers them ENOENT; every other change is refused here with
//! EROFS. Reads, lookups and listings go through the shared glue like the
//! read-only tree's.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, INodeNo, InitFlags, IoctlFlags, KernelConfig, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyXattr, Request,
    TimeOrNow,
};
use tokio::runtime::Handle;

use super::glue;
use super::read_side::ReadSide;
use super::MountConfig;
use crate::als::LayerStore;
use crate::error::Error;

/// The fuser adapter of the layer store view.
pub struct AlsFuse {
    side: ReadSide<LayerStore>,
}

impl AlsFuse {
    /// Adapt `als`, running its operations on runtime `rt`.
    pub fn new(als: Arc<LayerStore>, rt: Handle) -> AlsFuse {
        AlsFuse {
            // No listing cache: a reference's listing follows its tag.
            side: ReadSide::new(als, rt, false),
        }
    }

    /// Advertise the daemon's control socket in the root directory's
    /// `user.regfs.control` xattr, so that `regfs status LAYERSTORE` works.
    pub fn with_control_socket(mut self, socket: &Path) -> AlsFuse {
        self.side.control = Some(Arc::new(socket.as_os_str().as_bytes().to_vec()));
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
        super::session::spawn(self, mountpoint, config, cfg)
    }

    /// Refuse a change with EROFS, inline (it touches nothing).
    fn refuse<T>(&self, name: &'static str, reply: impl FnOnce(Result<T, Errno>)) {
        self.side.glue.inline(name, || Err(Error::ReadOnly), reply);
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
        self.side.init(config, InitFlags::empty());
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
        self.side.lookup(parent, name, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.side.forget(ino, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.side.getattr(ino, reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.side.readlink(ino, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.side.open(ino, flags, reply);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.side.read(ino, fh, offset, size, reply);
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
        self.side.release(fh, reply);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.side.nothing("flush", reply);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.side.opendir(reply);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.side.readdir(ino, offset, reply);
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        self.side.readdirplus(ino, offset, reply);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.side.nothing("releasedir", reply);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.side.getxattr(req.uid() == 0, ino, name, size, reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.side.listxattr(req.uid() == 0, ino, size, reply);
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
        let (als, name) = (self.side.core.clone(), name.as_bytes().to_vec());
        let op = async move { als.create(parent.0, &name).await };
        self.side.glue.run("create", op, |r| match r {
            Ok(never) => match never {},
            Err(e) => reply.error(e),
        });
    }

    /// containers/storage's release of a layer; anything else EROFS.
    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (als, name) = (self.side.core.clone(), name.as_bytes().to_vec());
        let op = async move { als.rmdir(parent.0, &name).await };
        self.side.glue.run("rmdir", op, glue::empty(reply));
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
