//! `regfs mount … --export EXPORTDIR`: the writable export mount and the
//! control socket, served by the same daemon as the read-only mount.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use regfs::export::fs::ExportFs;
use regfs::export::{CommitOptions, Exporter, Staging};
use regfs::fs::Fs;
use regfs::fuse::export::ExportFuse;
use regfs::fuse::MountConfig;
use regfs::image::Platform;

use crate::cli::MountArgs;
use crate::{control, unmount};

/// The running export side.
pub struct Export {
    /// The FUSE session (unmounts when dropped).
    session: regfs::fuse::Mounted,
    mountpoint: PathBuf,
    socket: PathBuf,
}

/// Start the export mount and the daemon's control socket (serving `ctx`
/// with the exporter) if `--export` was given.
pub fn start(
    args: &MountArgs,
    fs: Arc<Fs>,
    rt: &tokio::runtime::Runtime,
    cache_dir: &std::path::Path,
    platform: Platform,
    ctx: control::Context,
) -> anyhow::Result<Option<Export>> {
    let link = ctx.link.clone();
    let Some(mountpoint) = args.export.clone() else {
        return Ok(None);
    };
    let state = args
        .export_state
        .clone()
        .unwrap_or_else(|| cache_dir.join("export"));
    // The socket path is handed to clients through an xattr: make it absolute.
    let state = std::path::absolute(&state)?;
    let staging =
        Staging::open(&state).with_context(|| format!("export state {}", state.display()))?;
    let socket = staging.socket_path();
    let defaults = CommitOptions {
        codec: args.compression.parse()?,
        format: if args.docker_manifest {
            regfs::export::ManifestFormat::Docker
        } else {
            regfs::export::ManifestFormat::Oci
        },
        source_date_epoch: args.source_date_epoch,
    };
    let exp = Arc::new(Exporter::new(staging, fs, platform, defaults));
    let mountpoint = std::path::absolute(&mountpoint)?;
    unmount::prepare_dir(&mountpoint, link.as_deref(), "export directory")?;
    let _guard = rt.enter();
    let ctx = control::Context {
        exporter: Some(exp.clone()),
        ..ctx
    };
    control::serve(&socket, ctx, rt.handle())?;
    let mut efs = ExportFs::new(exp, rt.handle().clone(), Some(socket.clone()));
    if let Some(l) = &link {
        efs = efs
            .with_restart_state(l.state_dir(), l.generation())
            .context("the export's inode journal")?;
    }
    let efs = Arc::new(efs);
    let session = ExportFuse::new(efs, rt.handle().clone())
        .mount(
            &mountpoint,
            &MountConfig {
                allow_other: args.allow_other,
                fs_name: "regfs-export".into(),
                threads: args.threads,
                link,
            },
        )
        .with_context(|| format!("mounting the export directory at {}", mountpoint.display()))?;
    tracing::info!(export = %mountpoint.display(), state = %state.display(), socket = %socket.display(), "export mounted");
    Ok(Some(Export {
        session,
        mountpoint,
        socket,
    }))
}

impl Export {
    /// The control socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// The next server took the export mount over: leave it mounted.
    pub fn handed_over(self) {
        self.session.detached();
    }

    /// Unmount the export directory and remove the socket.
    pub fn stop(self) {
        let _ = std::fs::remove_file(&self.socket);
        match unmount::detach(&self.mountpoint) {
            Ok(()) => self.session.detached(),
            Err(e) => {
                tracing::debug!(error = %e, "export detach");
                drop(self.session);
            }
        }
    }
}
