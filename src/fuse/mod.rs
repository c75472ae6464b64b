//! The only module that names `fuser`: it links kernel requests to [`crate::fs::Fs`]
//! (and, in submodules, to the other filesystems regfs serves).
//!
//! The adapters are thin: every operation goes through [`glue::Glue`], which
//! answers it from a tokio task when it may touch the network (or the disk), so
//! the FUSE dispatch thread never waits, and times, logs, counts and maps its
//! failure in one place. Inode lifetime and directory paging live in the
//! filesystems; a readdir reply is a copy of the page they computed.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{
    Config, FileAttr, FileType, Filesystem, INodeNo, InitFlags, KernelConfig, MountOption, Request,
    SessionACL,
};
use tokio::runtime::Handle;

use crate::fs::{Attr, FileKind, Fs};

pub mod als;
pub mod export;
mod glue;
mod read_side;
mod session;

pub use glue::OpErrors;
use read_side::ReadSide;
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
    /// The supervisor holding the connection, if the daemon runs under one
    /// (see [`crate::handover`]).
    pub link: Option<Arc<crate::handover::link::Link>>,
}

/// The fuser adapter.
pub struct FuseFs {
    side: ReadSide<Fs>,
}

impl FuseFs {
    /// Adapt `fs`, running its operations on runtime `rt`.
    pub fn new(fs: Arc<Fs>, rt: Handle) -> FuseFs {
        FuseFs {
            side: ReadSide::new(fs, rt, true),
        }
    }

    /// Advertise the daemon's control socket in the root directory's
    /// `user.regfs.control` xattr (how `regfs status MOUNTPOINT` finds it).
    pub fn with_control_socket(mut self, socket: &Path) -> FuseFs {
        self.side.control = Some(Arc::new(socket.as_os_str().as_bytes().to_vec()));
        self
    }

    /// Mount at `mountpoint` and serve from background threads until unmounted.
    pub fn mount(self, mountpoint: &Path, cfg: &MountConfig) -> std::io::Result<Mounted> {
        let config = session_config(cfg, MountOption::RO, "regfs", &[MountOption::NoAtime]);
        session::spawn(self, mountpoint, config, cfg)
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
    read_side::forward_read_side!();

    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // A directory whose mtime changed (a namespace listed longer ago
        // than the tag TTL) has its cached listing dropped when its
        // attributes are refreshed; files never change, so this costs them
        // nothing.
        self.side.init(config, InitFlags::FUSE_AUTO_INVAL_DATA);
        Ok(())
    }
}
