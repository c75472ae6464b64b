//! [`Mounted`]: a FUSE session serving from background threads, ended without
//! a second unmount.
//!
//! fuser 0.18 unmounts again when a session is dropped, also after the kernel
//! already dropped the mount (`regfs unmount`, `umount -l`). Its check for
//! that (`is_mounted`, a poll of `/dev/fuse`) takes `POLLERR`, the sign of a
//! dead connection, for "still mounted", so it calls umount(2) on the bare
//! directory, gets `EINVAL` and logs `WARN fuser::mnt: Unmount failed:
//! Invalid argument` on every unmount (and would unmount whatever was mounted
//! there since). A session whose thread has ended has nothing left to
//! unmount, so [`Mounted::join`] joins the thread and drops fuser's mount
//! handle without its unmount: the handle (a `/dev/fuse` descriptor and a
//! path) is left to the process's exit.

use std::io;
use std::path::Path;

use fuser::{BackgroundSession, Config, Filesystem, MountOption};

use super::MountConfig;
use crate::handover::devmount::{mount_dev_fuse, DevMountOptions};

/// Mount `fs` at `mountpoint` and serve it from background threads: through
/// fuser's own mount, or, under a supervisor, from the socket the supervisor
/// relays the connection on (a live one resumed, or a new mount handed to it).
pub(crate) fn spawn<FS: Filesystem + Send + Sync + 'static>(
    fs: FS,
    mountpoint: &Path,
    mut config: Config,
    cfg: &MountConfig,
) -> io::Result<Mounted> {
    let Some(link) = &cfg.link else {
        return fuser::spawn_mount(fs, mountpoint, &config).map(Mounted::new);
    };
    let has = |o: &MountOption| config.mount_options.contains(o);
    let dev = DevMountOptions {
        read_only: has(&MountOption::RO),
        fs_name: cfg.fs_name.clone(),
        subtype: config
            .mount_options
            .iter()
            .find_map(|o| match o {
                MountOption::Subtype(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| "regfs".into()),
        allow_other: cfg.allow_other,
        noatime: has(&MountOption::NoAtime),
    };
    let (sock, resumed) = link.connect(mountpoint, || mount_dev_fuse(mountpoint, &dev))?;
    tracing::info!(mountpoint = %mountpoint.display(), resumed, "serving the supervisor's connection");
    // One socket, read by every dispatch thread (no /dev/fuse to clone).
    config.clone_fd = false;
    let acl = config.acl;
    let session = fuser::Session::from_fd(fs, sock, acl, config)?;
    session.spawn().map(Mounted::new)
}

/// A live FUSE mount and the threads serving it. Dropping it while it is
/// mounted unmounts it (fuser's behaviour).
pub struct Mounted {
    session: Option<BackgroundSession>,
}

impl Mounted {
    pub(crate) fn new(session: BackgroundSession) -> Mounted {
        Mounted {
            session: Some(session),
        }
    }

    /// Wait until the kernel drops the mount (`regfs unmount`, `umount -l`,
    /// `fusermount3 -u`); the session's end result.
    pub fn join(mut self) -> io::Result<()> {
        let Some(mut session) = self.session.take() else {
            return Ok(());
        };
        let guard = std::mem::replace(&mut session.guard, std::thread::spawn(|| Ok(())));
        let ended = guard
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the FUSE session thread panicked")));
        // The connection is gone: nothing to unmount (see the module doc).
        std::mem::forget(session);
        ended
    }

    /// The caller detached the mount itself: let the session end on its own
    /// when the kernel drops the connection, without a second unmount.
    pub fn detached(mut self) {
        if let Some(session) = self.session.take() {
            std::mem::forget(session);
        }
    }
}
