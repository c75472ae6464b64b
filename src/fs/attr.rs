//! File attributes as the filesystem core reports them, independent of fuser.

use std::time::{Duration, SystemTime};

/// How long the kernel may cache what lies under a digest directory: forever, in effect.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The kind of an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Named pipe.
    Fifo,
    /// Unix socket (only staged in the export; never in an image).
    Socket,
}

impl From<crate::layer::NodeKind> for FileKind {
    /// The kind of a layer tree node (an image file or an export base file).
    fn from(k: crate::layer::NodeKind) -> FileKind {
        use crate::layer::NodeKind;
        match k {
            NodeKind::File => FileKind::File,
            NodeKind::Dir => FileKind::Dir,
            NodeKind::Symlink => FileKind::Symlink,
            NodeKind::CharDev => FileKind::CharDev,
            NodeKind::BlockDev => FileKind::BlockDev,
            NodeKind::Fifo => FileKind::Fifo,
        }
    }
}

/// The attributes of one inode plus how long the kernel may cache them.
#[derive(Clone, Debug)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// NodeKind.
    pub kind: FileKind,
    /// Permission bits, including setuid/setgid/sticky.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time (also used for atime).
    pub mtime: SystemTime,
    /// Status change time (the read-only tree: its mtime; the export: the
    /// staged file's, so chmod, chown, link and rename show).
    pub ctime: SystemTime,
    /// Device number for device nodes.
    pub rdev: u32,
    /// How long the kernel may cache this entry and these attributes.
    pub ttl: Duration,
}

impl Attr {
    /// A synthetic read-only directory.
    pub fn dir(ino: u64, mtime: SystemTime, ttl: Duration) -> Attr {
        Attr {
            ino,
            kind: FileKind::Dir,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            size: 0,
            mtime,
            ctime: mtime,
            rdev: 0,
            ttl,
        }
    }

    /// A synthetic read-only regular file.
    pub fn file(ino: u64, size: u64, mtime: SystemTime, ttl: Duration) -> Attr {
        Attr {
            ino,
            kind: FileKind::File,
            perm: 0o444,
            nlink: 1,
            uid: 0,
            gid: 0,
            size,
            mtime,
            ctime: mtime,
            rdev: 0,
            ttl,
        }
    }

    /// "No such name, and that will stay true for `ttl`": the kernel keeps
    /// a negative entry (a lookup answered with inode 0 and a timeout).
    pub fn absent(ttl: Duration) -> Attr {
        Attr::file(0, 0, SystemTime::UNIX_EPOCH, ttl)
    }

    /// A synthetic symlink whose target is `len` bytes long.
    pub fn symlink(ino: u64, len: u64, mtime: SystemTime, ttl: Duration) -> Attr {
        Attr {
            ino,
            kind: FileKind::Symlink,
            perm: 0o777,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: len,
            mtime,
            ctime: mtime,
            rdev: 0,
            ttl,
        }
    }
}
