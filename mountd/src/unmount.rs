//! Unmounting: lazy detach, and recognising mounts left stale by a killed daemon.

use std::path::Path;

use anyhow::{bail, Context};
use nix::mount::{umount2, MntFlags};

/// Detach the mount at `mountpoint` (lazily: open files keep working until closed).
pub fn run(mountpoint: &Path) -> anyhow::Result<()> {
    detach(mountpoint).with_context(|| format!("unmount {}", mountpoint.display()))
}

/// Lazy unmount; as a non-root user through `fusermount3 -u -z`.
pub fn detach(mountpoint: &Path) -> anyhow::Result<()> {
    match umount2(mountpoint, MntFlags::MNT_DETACH) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EPERM) => {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status()
                .context("running fusermount3")?;
            if !st.success() {
                bail!("fusermount3 -u -z failed ({st})");
            }
            Ok(())
        }
        Err(nix::errno::Errno::EINVAL) => bail!("not a mountpoint"),
        Err(e) => Err(e.into()),
    }
}

/// If `mountpoint` is a FUSE mount whose daemon died (ENOTCONN), detach it and
/// say so; the next mount can then reuse the directory.
///
/// `stat` alone does not tell: the kernel answers it from its attribute cache
/// (for the TTL the dead daemon gave) without asking the daemon, so a quick
/// restart after `kill -9` would stack a new mount on the dead one. `statfs`
/// always goes to the daemon.
pub fn clear_stale(mountpoint: &Path) -> anyhow::Result<()> {
    let dead = match std::fs::metadata(mountpoint) {
        Err(e) => e.raw_os_error() == Some(libc::ENOTCONN),
        Ok(_) => matches!(
            nix::sys::statfs::statfs(mountpoint),
            Err(nix::errno::Errno::ENOTCONN)
        ),
    };
    if dead {
        tracing::warn!(mountpoint = %mountpoint.display(), "stale mount left by a dead daemon: detaching it");
        return detach(mountpoint);
    }
    Ok(())
}

/// Ready a second mount's directory (`what`: "layer store directory"): a
/// dead mount left there detached, the directory made. Not when the
/// supervisor still holds a live connection there (this server takes it
/// over, and looking at the directory would wait on this very process).
pub fn prepare_dir(
    mountpoint: &Path,
    link: Option<&regfs::handover::link::Link>,
    what: &str,
) -> anyhow::Result<()> {
    if let Some(l) = link {
        if l.holds(mountpoint)? {
            return Ok(());
        }
    }
    clear_stale(mountpoint)?;
    std::fs::create_dir_all(mountpoint).with_context(|| format!("{what} {}", mountpoint.display()))
}
