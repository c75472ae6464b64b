//! Mounting a FUSE filesystem ourselves, to hold its `/dev/fuse` descriptor.
//!
//! fuser keeps the descriptor of the mounts it makes; a connection that must
//! outlive the process serving it (see [`super`]) is mounted here instead and
//! handed to the supervisor. As root this is mount(2) with `fd=N`; otherwise
//! `fusermount3`, which mounts and sends the descriptor back over a socket
//! named by `_FUSE_COMMFD` (libfuse's protocol).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

use super::wire;

/// What the kernel mount is asked for.
#[derive(Clone, Debug, Default)]
pub struct DevMountOptions {
    /// `ro` (the browse and layer-store mounts) or read-write (the export side).
    pub read_only: bool,
    /// The source shown in `/proc/mounts`.
    pub fs_name: String,
    /// The type is `fuse.SUBTYPE`.
    pub subtype: String,
    /// Let other users in (`allow_other`).
    pub allow_other: bool,
    /// `noatime`.
    pub noatime: bool,
}

/// Mount a FUSE filesystem at `mountpoint`; the `/dev/fuse` descriptor of
/// the new connection. The kernel sends its INIT request on it next.
pub fn mount_dev_fuse(mountpoint: &Path, opts: &DevMountOptions) -> io::Result<OwnedFd> {
    if nix::unistd::geteuid().is_root() {
        mount_as_root(mountpoint, opts)
    } else {
        mount_with_fusermount(mountpoint, opts)
    }
}

fn mount_as_root(mountpoint: &Path, opts: &DevMountOptions) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if opts.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    if opts.noatime {
        flags |= MsFlags::MS_NOATIME;
    }
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        nix::unistd::getuid(),
        nix::unistd::getgid()
    );
    if opts.allow_other {
        data.push_str(",allow_other");
    }
    let fstype = format!("fuse.{}", opts.subtype);
    mount(
        Some(opts.fs_name.as_str()),
        mountpoint,
        Some(fstype.as_str()),
        flags,
        Some(data.as_str()),
    )?;
    Ok(dev.into())
}

fn mount_with_fusermount(mountpoint: &Path, opts: &DevMountOptions) -> io::Result<OwnedFd> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::empty(),
    )?;
    let mut o = vec![
        if opts.read_only { "ro" } else { "rw" }.to_string(),
        "nosuid".into(),
        "nodev".into(),
        "default_permissions".into(),
        format!("fsname={}", opts.fs_name),
        format!("subtype={}", opts.subtype),
    ];
    if opts.allow_other {
        o.push("allow_other".into());
    }
    if opts.noatime {
        o.push("noatime".into());
    }
    let theirs_fd: RawFd = theirs.as_raw_fd();
    let mut child = std::process::Command::new("fusermount3")
        .arg("-o")
        .arg(o.join(","))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", theirs_fd.to_string())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running fusermount3: {e}")))?;
    drop(theirs);
    let got = wire::recv_fd_raw(ours.as_raw_fd());
    let status = child.wait()?;
    match got {
        Ok(Some(fd)) if status.success() => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Ok(_) | Err(_) => Err(io::Error::other(format!(
            "fusermount3 could not mount {} ({status})",
            mountpoint.display()
        ))),
    }
}
