//! `regfs mount … --layer-store DIR`: the containers/storage additional
//! layer store view, a second mount served by the same daemon, cache and
//! filesystem as the read-only tree.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use regfs::als::LayerStore;
use regfs::fs::Fs;
use regfs::fuse::als::AlsFuse;
use regfs::fuse::MountConfig;
use regfs::reference::Registry;

use crate::cli::MountArgs;
use crate::unmount;

/// The running layer store mount.
pub struct Als {
    /// The FUSE session.
    pub session: regfs::fuse::Mounted,
    mountpoint: PathBuf,
}

/// Mount the layer store view if `--layer-store` was given.
pub fn start(
    args: &MountArgs,
    fs: Arc<Fs>,
    registry: Registry,
    rt: &tokio::runtime::Runtime,
    socket: &std::path::Path,
    link: Option<Arc<regfs::handover::link::Link>>,
) -> anyhow::Result<Option<Als>> {
    let Some(mountpoint) = args.layer_store.clone() else {
        return Ok(None);
    };
    let mountpoint = std::path::absolute(&mountpoint)?;
    unmount::prepare_dir(&mountpoint, link.as_deref(), "layer store directory")?;
    let mut view = LayerStore::new(fs, registry.clone(), Duration::from_secs(args.tag_ttl));
    if let Some(l) = &link {
        view = view
            .with_restart_state(l.state_dir(), l.generation())
            .context("the layer store's inode journal")?;
    }
    let view = Arc::new(view);
    // containers/storage runs as root, but a container's processes may not:
    // overlayfs reaches its lower layers with the mounter's credentials, yet
    // rootless podman and user namespaces need other users let in.
    let allow_other = args.allow_other || nix::unistd::geteuid().is_root();
    let session = AlsFuse::new(view, rt.handle().clone())
        .with_control_socket(socket)
        .mount(
            &mountpoint,
            &MountConfig {
                allow_other,
                fs_name: format!("regfs-layers:{registry}"),
                threads: args.threads,
                link,
            },
        )
        .with_context(|| format!("mounting the layer store at {}", mountpoint.display()))?;
    tracing::info!(layer_store = %mountpoint.display(), "layer store mounted");
    Ok(Some(Als {
        session,
        mountpoint,
    }))
}

impl Als {
    /// Unmount the layer store.
    pub fn stop(self) {
        match unmount::detach(&self.mountpoint) {
            Ok(()) => self.session.detached(),
            Err(e) => {
                tracing::debug!(error = %e, "layer store detach");
                drop(self.session);
            }
        }
    }
}
