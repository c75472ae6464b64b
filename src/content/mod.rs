//! Verified content for the filesystem: manifests, blobs and unpacked layers,
//! from the store when present, else fetched through the registry client,
//! verified, and only then stored. Knows nothing of inodes.

mod bridge;
mod chunks;
mod layers;
mod lazy;
mod prefetch;
mod spans;

use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;

pub use layers::{LoadedLayer, Urgency};
pub use lazy::{LayerSource, LazyOptions, OpenedLayer, RemoteLayer};
pub use prefetch::{PrefetchProgress, PrefetchReport, PrefetchSnapshot};
pub use spans::{
    check_tree, export_index, import_index, tar_range, ImportedIndex, SpanLayer, SpanView,
};

use crate::cache::{Kind, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::config::MAX_CONFIG_SIZE;
use crate::image::{BlobRef, ImageConfig, Manifest};
use crate::layer::Limits;
use crate::reference::Selector;
use crate::registry::Client;
use crate::telemetry::InFlight;

/// A manifest we fetched (or found in the store) and parsed.
#[derive(Debug)]
pub struct ManifestInfo {
    /// Its digest (of `bytes`).
    pub digest: Digest,
    /// The bytes exactly as served.
    pub bytes: Bytes,
    /// Parsed.
    pub manifest: Manifest,
}

/// Verified content, fetched at most once per key.
pub struct Content {
    client: Client,
    store: Arc<Store>,
    layers: quick_cache::sync::Cache<Digest, Arc<LoadedLayer>, layers::NodeWeighter>,
    manifests: quick_cache::sync::Cache<Digest, Arc<ManifestInfo>>,
    configs: quick_cache::sync::Cache<Digest, Arc<ImageConfig>>,
    limits: Limits,
    lazy: lazy::Lazy,
    max_nodes: u64,
    in_flight: InFlight,
}

impl Content {
    /// Content from `client`, stored in `store`; at most `max_nodes` layer-index
    /// nodes are kept in memory (the rest is reloaded from the store on demand).
    pub fn new(client: Client, store: Arc<Store>, max_nodes: u64, limits: Limits) -> Content {
        Content {
            client,
            store,
            layers: quick_cache::sync::Cache::with_weighter(1024, max_nodes, layers::NodeWeighter),
            manifests: quick_cache::sync::Cache::new(4096),
            configs: quick_cache::sync::Cache::new(1024),
            limits,
            lazy: lazy::Lazy::new(LazyOptions::default(), max_nodes),
            max_nodes,
            in_flight: InFlight::default(),
        }
    }

    /// Fetches from the registry in progress now (blobs, layers, TOCs, chunk runs).
    pub fn fetches_in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// The registry client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Resolve a tag (or digest) through the registry: always asks the registry,
    /// stores the verified manifest under its digest.
    pub async fn resolve(&self, repo: &str, sel: &Selector) -> Result<Arc<ManifestInfo>> {
        let started = std::time::Instant::now();
        let fetched = {
            let _in_flight = self.in_flight.enter();
            self.client.manifest(repo, sel).await?
        };
        tracing::info!(
            digest = %fetched.digest, bytes = fetched.bytes.len(), ms = started.elapsed().as_millis() as u64,
            cache = "miss", "fetched manifest"
        );
        let manifest = Manifest::parse(&fetched.bytes, &fetched.media_type)?;
        if self.store.get(Kind::Blob, &fetched.digest).is_none() {
            self.store
                .put(Kind::Blob, &fetched.digest, &fetched.bytes)?;
        }
        let info = Arc::new(ManifestInfo {
            digest: fetched.digest.clone(),
            bytes: fetched.bytes,
            manifest,
        });
        self.manifests.insert(fetched.digest, info.clone());
        Ok(info)
    }

    /// A manifest by digest: memory, then the store, then the registry.
    pub async fn manifest(&self, repo: &str, digest: &Digest) -> Result<Arc<ManifestInfo>> {
        let started = std::time::Instant::now();
        let hit = |m: &ManifestInfo| {
            tracing::debug!(
                digest = %digest, bytes = m.bytes.len(), ms = started.elapsed().as_millis() as u64,
                cache = "hit", "cache hit manifest"
            );
        };
        if let Some(m) = self.manifests.get(digest) {
            hit(&m);
            return Ok(m);
        }
        if let Some(bytes) = self.store.read(Kind::Blob, digest) {
            // Stored bytes were verified before they were stored; check again anyway,
            // a manifest is small and a wrong one would misdirect everything below it.
            digest.verify(&bytes, "cached manifest")?;
            let manifest = Manifest::parse(&bytes, "")?;
            let info = Arc::new(ManifestInfo {
                digest: digest.clone(),
                bytes: Bytes::from(bytes),
                manifest,
            });
            self.manifests.insert(digest.clone(), info.clone());
            hit(&info);
            return Ok(info);
        }
        self.resolve(repo, &Selector::Digest(digest.clone())).await
    }

    /// A verified raw blob from the store, fetched whole if needed. The file is
    /// opened before anything can evict it: an open file outlives eviction.
    pub async fn blob(&self, repo: &str, desc: &BlobRef) -> Result<File> {
        let started = std::time::Instant::now();
        let hit = |f: File| {
            let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
            tracing::debug!(
                digest = %desc.digest, bytes, ms = started.elapsed().as_millis() as u64,
                cache = "hit", "cache hit blob"
            );
            f
        };
        if let Some(f) = self.open_cached(Kind::Blob, &desc.digest) {
            return Ok(hit(f));
        }
        let _flight = self.store.flight(format!("blob {}", desc.digest)).await;
        if let Some(f) = self.open_cached(Kind::Blob, &desc.digest) {
            return Ok(hit(f));
        }
        let _in_flight = self.in_flight.enter();
        let started = std::time::Instant::now();
        let mut stream = self
            .client
            .blob(repo, &desc.digest, Some(desc.size))
            .await?;
        let tmp = self.store.temp()?;
        let file = tmp.file.try_clone()?;
        let mut out = tokio::fs::File::from_std(file);
        use tokio::io::AsyncWriteExt;
        while let Some(chunk) = stream.next_chunk().await? {
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        drop(out);
        // next_chunk returned None: size and digest matched.
        let mut file = tmp.file.try_clone()?;
        // The clone shares the write offset: rewind for readers that read sequentially.
        std::io::Seek::rewind(&mut file)?;
        self.store.commit(tmp, Kind::Blob, &desc.digest)?;
        tracing::info!(
            digest = %desc.digest, bytes = stream.received(), ms = started.elapsed().as_millis() as u64,
            cache = "miss", "fetched blob"
        );
        Ok(file)
    }

    /// Open content from the store, if it is there (and was not evicted meanwhile).
    fn open_cached(&self, kind: Kind, digest: &Digest) -> Option<File> {
        File::open(self.store.get(kind, digest)?).ok()
    }

    /// The parsed config of an image manifest.
    pub async fn config(&self, repo: &str, desc: &BlobRef) -> Result<Arc<ImageConfig>> {
        if let Some(c) = self.configs.get(&desc.digest) {
            return Ok(c);
        }
        if desc.size > MAX_CONFIG_SIZE {
            return Err(Error::TooLarge(format!(
                "config {} is {} bytes (limit {MAX_CONFIG_SIZE})",
                desc.digest, desc.size
            )));
        }
        let mut file = self.blob(repo, desc).await?;
        let bytes = tokio::task::spawn_blocking(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut v).map(|_| v)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let c = Arc::new(ImageConfig::parse(&bytes)?);
        self.configs.insert(desc.digest.clone(), c.clone());
        Ok(c)
    }

    /// Limits applied to layer tars.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}
