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
    Errno, FileHandle, Filesystem, INodeNo, InitFlags, KernelConfig, MountOption, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, Request, TimeOrNow,
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
    super::read_side::forward_read_side!();

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
