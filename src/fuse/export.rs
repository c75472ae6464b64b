//! The fuser adapter of the writable export mount: links kernel requests to
//! [`crate::export::fs::ExportFs`]. Every operation goes through the shared
//! glue (`fuse/glue.rs`) and runs on tokio's blocking pool (it may touch the
//! disk, or fetch a base image on first use), so the dispatch thread never
//! waits; forget, release and flush only touch memory and answer inline.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use super::glue::{self, Glue};
use super::{file_attr, MountConfig};
use crate::error::Error;
use crate::export::fs::{Caller, ExportFs, SetAttr, SetTime};

/// The fuser adapter of the export filesystem.
pub struct ExportFuse {
    fs: Arc<ExportFs>,
    glue: Glue,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(s) => SetTime::At(s),
    })
}

impl ExportFuse {
    /// Adapt `fs`, running its operations on runtime `rt`.
    pub fn new(fs: Arc<ExportFs>, rt: Handle) -> ExportFuse {
        ExportFuse {
            fs,
            glue: Glue::new(rt),
        }
    }

    /// Mount read-write at `mountpoint` and serve from background threads.
    pub fn mount(self, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<super::Mounted> {
        let config = super::session_config(cfg, MountOption::RW, "regfs-export", &[]);
        super::session::spawn(self, mountpoint, config, cfg)
    }

    /// Answer operation `name` with `op` run on the blocking pool.
    fn run<T: 'static>(
        &self,
        name: &'static str,
        op: impl FnOnce(&ExportFs) -> Result<T, Error> + Send + 'static,
        reply: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) {
        let fs = self.fs.clone();
        self.glue.run_blocking(name, move || op(&fs), reply);
    }
}

impl Filesystem for ExportFuse {
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
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name.as_bytes().to_vec();
        let op = move |fs: &ExportFs| fs.lookup(parent.0, &name);
        self.run("lookup", op, glue::entry(reply));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let op = || {
            self.fs.forget(ino.0, nlookup);
            Ok(())
        };
        self.glue.inline("forget", op, |_| ());
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run("getattr", move |fs| fs.getattr(ino.0), glue::attr(reply));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let op = move |fs: &ExportFs| fs.setattr(ino.0, fh.map(|f| f.0), &s);
        self.run("setattr", op, glue::attr(reply));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run("readlink", move |fs| fs.readlink(ino.0), glue::data(reply));
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (name, who) = (name.as_bytes().to_vec(), caller(req));
        let op = move |fs: &ExportFs| fs.mknod(parent.0, &name, mode, rdev, who);
        self.run("mknod", op, glue::entry(reply));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, who) = (name.as_bytes().to_vec(), caller(req));
        let op = move |fs: &ExportFs| fs.mkdir(parent.0, &name, mode, who);
        self.run("mkdir", op, glue::entry(reply));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        let op = move |fs: &ExportFs| fs.unlink(parent.0, &name);
        self.run("unlink", op, glue::empty(reply));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        let op = move |fs: &ExportFs| fs.rmdir(parent.0, &name);
        self.run("rmdir", op, glue::empty(reply));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target, who) = (
            link_name.as_bytes().to_vec(),
            target.as_os_str().as_bytes().to_vec(),
            caller(req),
        );
        let op = move |fs: &ExportFs| fs.symlink(parent.0, &name, &target, who);
        self.run("symlink", op, glue::entry(reply));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (n1, n2) = (name.as_bytes().to_vec(), newname.as_bytes().to_vec());
        let op = move |fs: &ExportFs| fs.rename(parent.0, &n1, newparent.0, &n2, flags.bits());
        self.run("rename", op, glue::empty(reply));
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let name = newname.as_bytes().to_vec();
        let op = move |fs: &ExportFs| fs.link(ino.0, newparent.0, &name);
        self.run("link", op, glue::entry(reply));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let op = move |fs: &ExportFs| Ok((fs.open(ino.0, flags.0)?, fs.is_control(ino.0)));
        self.run("open", op, |r| match r {
            Ok((fh, true)) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Ok((fh, false)) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, who) = (name.as_bytes().to_vec(), caller(req));
        let op = move |fs: &ExportFs| fs.create(parent.0, &name, mode, flags, who);
        self.run("create", op, |r| match r {
            Ok((a, fh)) => reply.created(
                &a.ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let op = move |fs: &ExportFs| {
            fs.ensure_handle(ino.0, fh.0, flags.0)?;
            fs.read(fh.0, offset, size)
        };
        self.run("read", op, glue::data(reply));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        let op = move |fs: &ExportFs| {
            fs.ensure_handle(ino.0, fh.0, flags.0)?;
            fs.write(fh.0, offset, &data)
        };
        self.run("write", op, |r| match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let op = move |fs: &ExportFs| {
            fs.ensure_handle(ino.0, fh.0, libc::O_RDWR)?;
            fs.fallocate(fh.0, offset, length, mode)
        };
        self.run("fallocate", op, glue::empty(reply));
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

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let op = move |fs: &ExportFs| {
            fs.ensure_handle(ino.0, fh.0, libc::O_RDONLY)?;
            fs.fsync(fh.0, datasync)
        };
        self.run("fsync", op, glue::empty(reply));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // No snapshot: `readdir` pages from (ino, offset) in the filesystem.
        let op = move |fs: &ExportFs| match fs.is_dir(ino.0)? {
            true => Ok(()),
            false => Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOTDIR))),
        };
        self.run("opendir", op, |r| match r {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let size = glue::reply_size(&reply);
        let op = move |fs: &ExportFs| fs.readdir_page(ino.0, offset, size);
        self.run("readdir", op, glue::dir_page(reply));
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

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let op = move |fs: &ExportFs| fs.fsyncdir(ino.0);
        self.run("fsyncdir", op, glue::empty(reply));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(
            "statfs",
            |fs| fs.statfs(),
            |r| match r {
                Ok(s) => reply.statfs(
                    s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
                ),
                Err(e) => reply.error(e),
            },
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.as_bytes().to_vec(), value.to_vec());
        let op = move |fs: &ExportFs| fs.setxattr(ino.0, &name, &value, flags);
        self.run("setxattr", op, glue::empty(reply));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        let op = move |fs: &ExportFs| fs.getxattr(ino.0, &name);
        self.run("getxattr", op, glue::xattr(reply, size));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let op = move |fs: &ExportFs| fs.listxattr(ino.0);
        self.run("listxattr", op, glue::xattr_names(reply, size));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        let op = move |fs: &ExportFs| fs.removexattr(ino.0, &name);
        self.run("removexattr", op, glue::empty(reply));
    }
}
