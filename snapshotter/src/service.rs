//! The gRPC `Snapshots` service: each call runs on a blocking thread (the
//! store writes and fsyncs, a remote `Prepare` waits on the mount), so no
//! runtime worker ever blocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::labels::{self, RemoteLayer};
use crate::meta::{Kind, Snapshot, Stamp};
use crate::mounts::mounts;
use crate::proto::containerd::services::snapshots::v1 as pb;
use crate::proto::containerd::services::snapshots::v1::snapshots_server::Snapshots;
use crate::resolve::Resolver;
use crate::store::Store;

/// The service: a store and the resolver of remote layers.
#[derive(Debug, Clone)]
pub struct Service {
    store: Arc<Store>,
    resolver: Arc<Resolver>,
}

impl Service {
    /// Serve `store`, finding remote layers with `resolver`.
    pub fn new(store: Arc<Store>, resolver: Arc<Resolver>) -> Self {
        Service { store, resolver }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &Resolver) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let (store, resolver) = (self.store.clone(), self.resolver.clone());
        tokio::task::spawn_blocking(move || f(&store, &resolver))
            .await
            .map_err(|e| Status::internal(format!("snapshotter task failed: {e}")))?
            .map_err(Status::from)
    }

    async fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<crate::proto::containerd::types::Mount>, Status> {
        let labels: BTreeMap<_, _> = labels.into_iter().collect();
        self.blocking(move |store, resolver| {
            if kind == Kind::Active {
                if let Some(remote) = labels::remote_layer(&labels) {
                    prepare_remote(store, resolver, &key, &parent, &labels, &remote)?;
                }
            }
            let chain = store.create(kind, &key, &parent, labels)?;
            Ok(mounts(store.layout(), &chain))
        })
        .await
    }
}

/// The remote flow: when the mount serves the layer, record the committed
/// snapshot containerd asked for and answer "already exists" (so containerd
/// neither fetches nor unpacks it); otherwise return and let the caller make
/// an ordinary active snapshot for containerd to unpack into.
fn prepare_remote(
    store: &Store,
    resolver: &Resolver,
    key: &str,
    parent: &str,
    labels: &BTreeMap<String, String>,
    remote: &RemoteLayer,
) -> Result<(), Error> {
    if store.stat(key).is_ok() {
        return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
    }
    let already = || Error::AlreadyExists(format!("target snapshot {:?}", remote.target));
    if store.stat(&remote.target).is_ok() {
        return Err(already());
    }
    match resolver.resolve(remote) {
        Ok(dir) => {
            let mut labels = labels.clone();
            labels.insert(labels::REMOTE.into(), "remote snapshot".into());
            match store.add_remote(&remote.target, parent, labels, &dir) {
                Ok(()) => {
                    tracing::info!(target = %remote.target, layer = %remote.layer, %dir, "remote snapshot");
                    // The daemon starts the image's TOCs and start-up files.
                    resolver.announce(&dir);
                    Err(already())
                }
                Err(Error::AlreadyExists(_)) => Err(already()),
                Err(e) => Err(e),
            }
        }
        Err(why) => {
            tracing::info!(layer = %remote.layer, image = %remote.image, %why, "not served remotely; containerd unpacks it");
            Ok(())
        }
    }
}

fn timestamp(s: Stamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: s.secs,
        nanos: s.nanos,
    }
}

fn info(name: &str, s: &Snapshot) -> pb::Info {
    pb::Info {
        name: name.to_string(),
        parent: s.parent.clone().unwrap_or_default(),
        kind: match s.kind {
            Kind::View => pb::Kind::View,
            Kind::Active => pb::Kind::Active,
            Kind::Committed => pb::Kind::Committed,
        } as i32,
        created_at: Some(timestamp(s.created)),
        updated_at: Some(timestamp(s.updated)),
        labels: s
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

type ListStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>,
>;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self.create(Kind::Active, r.key, r.parent, r.labels).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self.create(Kind::View, r.key, r.parent, r.labels).await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let key = req.into_inner().key;
        let mounts = self
            .blocking(move |store, _| Ok(mounts(store.layout(), &store.mountable(&key)?)))
            .await?;
        Ok(Response::new(pb::MountsResponse { mounts }))
    }

    async fn commit(
        &self,
        req: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let labels = r.labels.into_iter().collect();
        self.blocking(move |store, _| store.commit(&r.name, &r.key, labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        self.blocking(move |store, _| store.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        let i = self
            .blocking(move |store, _| Ok(info(&key, &store.stat(&key)?)))
            .await?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(i) }))
    }

    async fn update(
        &self,
        req: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let new = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels = new.labels.into_iter().collect();
        let i = self
            .blocking(move |store, _| {
                Ok(info(&new.name, &store.update(&new.name, labels, &paths)?))
            })
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse { info: Some(i) }))
    }

    type ListStream = ListStream;

    /// Every snapshot, filters ignored: containerd checks what it walks
    /// (its remote-snapshot lookup says "Walk did not respect filter" and
    /// filters itself), and `ctr snapshots ls` sends none.
    async fn list(
        &self,
        _req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let all = self.blocking(|store, _| Ok(store.list())).await?;
        let infos: Vec<pb::Info> = all.iter().map(|(k, s)| info(k, s)).collect();
        // Batches keep each message well under gRPC's 4 MiB default.
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> = infos
            .chunks(100)
            .map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn usage(
        &self,
        req: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let key = req.into_inner().key;
        let u = self.blocking(move |store, _| store.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _req: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let n = self.blocking(|store, _| store.cleanup()).await?;
        tracing::info!(removed = n, "snapshot cleanup");
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests;
