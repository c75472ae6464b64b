//! The snapshotter's unix socket and gRPC server.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::proto::containerd::services::snapshots::v1::snapshots_server::SnapshotsServer;
use crate::resolve::{OnRemote, Resolver};
use crate::service::Service;
use crate::store::Store;

/// Where to serve and what.
#[derive(Clone)]
pub struct Config {
    /// The unix socket containerd's `[proxy_plugins.NAME] address` names.
    pub socket: PathBuf,
    /// Snapshot metadata and local trees.
    pub root: PathBuf,
    /// The regfs mount whose layer directories remote snapshots use.
    pub mount_root: PathBuf,
    /// The registry the mount serves, as image references name it.
    pub registry: String,
    /// Told of each image a remote snapshot is made for (see [`OnRemote`]).
    pub on_remote: Option<OnRemote>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("socket", &self.socket)
            .field("root", &self.root)
            .field("mount_root", &self.mount_root)
            .field("registry", &self.registry)
            .field("on_remote", &self.on_remote.is_some())
            .finish()
    }
}

/// A running server; dropping it stops nothing (the runtime's shutdown
/// does), [`Server::socket`] is removed by [`Server::close`].
#[derive(Debug)]
pub struct Server {
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Stop serving and remove the socket.
    pub fn close(self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Open the store and serve it on `config.socket` from `rt`.
pub fn serve(config: &Config, rt: &tokio::runtime::Handle) -> Result<Server> {
    let store = Arc::new(Store::open(&config.root, &config.mount_root)?);
    let resolver = Arc::new(
        Resolver::new(&config.mount_root, &config.registry)
            .with_on_remote(config.on_remote.clone()),
    );
    let service = Service::new(store, resolver);
    if let Some(dir) = config.socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    // A socket left by a previous daemon: nobody answers on it any more.
    let _ = std::fs::remove_file(&config.socket);
    let listener = {
        let _guard = rt.enter();
        tokio::net::UnixListener::bind(&config.socket)
            .map_err(|e| Error::io(format!("listening on {}", config.socket.display()), e))?
    };
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let socket = config.socket.clone();
    let task = rt.spawn(async move {
        let r = tonic::transport::Server::builder()
            .add_service(SnapshotsServer::new(service))
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "snapshotter server stopped");
        }
    });
    tracing::info!(socket = %socket.display(), root = %config.root.display(), "snapshotter serving");
    Ok(Server { socket, task })
}
