//! The fuser adapter of the writable export mount: links kernel requests to
//! [`crate::export::fs::ExportFs`]. Every operation runs on tokio's blocking
//! pool (it may touch the disk, or fetch a base image on first use), so the
//! dispatch thread never waits.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, IoctlFlags, KernelConfig,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use super::{errno, file_attr, reply_xattr, MountConfig, OpErrors};
use crate::export::fs::{Caller, ExportFs, SetAttr, SetTime};
use crate::fs::DirEntry;

/// The fuser adapter of the export filesystem.
pub struct ExportFuse {
    fs: Arc<ExportFs>,
    rt: Handle,
    dirs: Arc<Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>>,
    next_dir: AtomicU64,
    errors: Arc<OpErrors>,
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
            rt,
            dirs: Arc::default(),
            next_dir: AtomicU64::new(1),
            errors: Arc::default(),
        }
    }

    /// Mount read-write at `mountpoint` and serve from background threads.
    pub fn mount(self, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<super::Mounted> {
        let config = super::session_config(cfg, MountOption::RW, "regfs-export", &[]);
        fuser::spawn_mount(self, mountpoint, &config).map(super::Mounted::new)
    }

    /// Run `f` on the blocking pool.
    fn run(&self, f: impl FnOnce(&ExportFs, &OpErrors) + Send + 'static) {
        let (fs, errors) = (self.fs.clone(), self.errors.clone());
        self.rt.spawn_blocking(move || f(&fs, &errors));
    }
}

macro_rules! entry_reply {
    ($reply:ident, $op:literal, $errors:ident, $r:expr) => {
        match $r {
            Ok(a) => $reply.entry(&a.ttl, &file_attr(&a), Generation(0)),
            Err(e) => $reply.error(errno($op, &e, $errors)),
        }
    };
}

macro_rules! empty_reply {
    ($reply:ident, $op:literal, $errors:ident, $r:expr) => {
        match $r {
            Ok(()) => $reply.ok(),
            Err(e) => $reply.error(errno($op, &e, $errors)),
        }
    };
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
        self.run(move |fs, errors| {
            entry_reply!(reply, "lookup", errors, fs.lookup(parent.0, &name))
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run(move |fs, errors| match fs.getattr(ino.0) {
            Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno("getattr", &e, errors)),
        });
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
        self.run(
            move |fs, errors| match fs.setattr(ino.0, fh.map(|f| f.0), &s) {
                Ok(a) => reply.attr(&a.ttl, &file_attr(&a)),
                Err(e) => reply.error(errno("setattr", &e, errors)),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run(move |fs, errors| match fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno("readlink", &e, errors)),
        });
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
        self.run(move |fs, errors| {
            entry_reply!(
                reply,
                "mknod",
                errors,
                fs.mknod(parent.0, &name, mode, rdev, who)
            )
        });
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
        self.run(move |fs, errors| {
            entry_reply!(reply, "mkdir", errors, fs.mkdir(parent.0, &name, mode, who))
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run(move |fs, errors| {
            empty_reply!(reply, "unlink", errors, fs.unlink(parent.0, &name))
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run(move |fs, errors| empty_reply!(reply, "rmdir", errors, fs.rmdir(parent.0, &name)));
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
        self.run(move |fs, errors| {
            entry_reply!(
                reply,
                "symlink",
                errors,
                fs.symlink(parent.0, &name, &target, who)
            )
        });
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
        self.run(move |fs, errors| {
            empty_reply!(
                reply,
                "rename",
                errors,
                fs.rename(parent.0, &n1, newparent.0, &n2, flags.bits())
            )
        });
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
        self.run(move |fs, errors| {
            entry_reply!(reply, "link", errors, fs.link(ino.0, newparent.0, &name))
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run(move |fs, errors| match fs.open(ino.0, flags.0) {
            Ok(fh) if fs.is_control(ino.0) => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
            }
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno("open", &e, errors)),
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
        self.run(
            move |fs, errors| match fs.create(parent.0, &name, mode, flags, who) {
                Ok((a, fh)) => reply.created(
                    &a.ttl,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno("create", &e, errors)),
            },
        );
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
        self.run(move |fs, errors| match fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno("read", &e, errors)),
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.run(move |fs, errors| match fs.write(fh.0, offset, &data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno("write", &e, errors)),
        });
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

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |fs, errors| empty_reply!(reply, "fsync", errors, fs.fsync(fh.0, datasync)));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let dirs = self.dirs.clone();
        let fh = self.next_dir.fetch_add(1, Ordering::Relaxed);
        self.run(move |fs, errors| match fs.readdir(ino.0) {
            Ok(entries) => {
                dirs.lock().unwrap().insert(fh, Arc::new(entries));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno("opendir", &e, errors)),
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
        let Some(entries) = self.dirs.lock().unwrap().get(&fh.0).cloned() else {
            reply.error(Errno::from_i32(libc::EBADF));
            return;
        };
        super::fill_dir(reply, ino, offset, |n| entries.get(n));
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

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run(move |fs, errors| empty_reply!(reply, "fsyncdir", errors, fs.fsyncdir(ino.0)));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run(move |fs, errors| match fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno("statfs", &e, errors)),
        });
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
        self.run(move |fs, errors| {
            empty_reply!(
                reply,
                "setxattr",
                errors,
                fs.setxattr(ino.0, &name, &value, flags)
            )
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes().to_vec();
        self.run(move |fs, errors| match fs.getxattr(ino.0, &name) {
            Ok(v) => reply_xattr(reply, size, &v),
            Err(e) => reply.error(errno("getxattr", &e, errors)),
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.run(move |fs, errors| match fs.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                reply_xattr(reply, size, &buf)
            }
            Err(e) => reply.error(errno("listxattr", &e, errors)),
        });
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.as_bytes().to_vec();
        self.run(move |fs, errors| {
            empty_reply!(reply, "removexattr", errors, fs.removexattr(ino.0, &name))
        });
    }
}
