//! Unpacked layers: the uncompressed tar in the store plus its index, made in
//! one verified pass over the blob.

use std::fs::File;
use std::sync::Arc;

use super::{bridge, Content};
use crate::cache::Kind;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::BlobRef;
use crate::layer::{self, Compression, Tree};

/// A layer ready to serve: its index and its uncompressed tar.
pub struct LoadedLayer {
    /// The layer's tree (content offsets point into `file`, layer number 0).
    pub tree: Arc<Tree>,
    /// The verified uncompressed tar.
    pub file: Arc<File>,
}

/// Weighs cached layers by their node count, bounding index memory.
#[derive(Clone)]
pub(crate) struct NodeWeighter;

impl quick_cache::Weighter<Digest, Arc<LoadedLayer>> for NodeWeighter {
    fn weight(&self, _k: &Digest, v: &Arc<LoadedLayer>) -> u64 {
        v.tree.len() as u64 + 1
    }
}

impl Content {
    /// The layer described by `desc` whose uncompressed digest is `diff_id`:
    /// from memory, from the store, or streamed once from the registry with both
    /// digests verified before anything is kept.
    pub async fn layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
    ) -> Result<Arc<LoadedLayer>> {
        let started = std::time::Instant::now();
        let hit = |l: Arc<LoadedLayer>| {
            let bytes = l.file.metadata().map(|m| m.len()).unwrap_or(0);
            tracing::debug!(
                digest = %desc.digest, %diff_id, bytes, ms = started.elapsed().as_millis() as u64,
                cache = "hit", "cache hit layer"
            );
            l
        };
        if let Some(l) = self.layers.get(diff_id) {
            return Ok(hit(l));
        }
        let _flight = self.store.flight(format!("layer {diff_id}")).await;
        if let Some(l) = self.layers.get(diff_id) {
            return Ok(hit(l));
        }
        if let Some(l) = self.layer_from_store(diff_id).await? {
            self.layers.insert(diff_id.clone(), l.clone());
            return Ok(hit(l));
        }
        let l = Arc::new(self.fetch_layer(repo, desc, diff_id).await?);
        self.layers.insert(diff_id.clone(), l.clone());
        Ok(l)
    }

    async fn layer_from_store(&self, diff_id: &Digest) -> Result<Option<Arc<LoadedLayer>>> {
        let (Some(tar), Some(index)) = (
            self.store.get(Kind::Layer, diff_id),
            self.store.get(Kind::Index, diff_id),
        ) else {
            return Ok(None);
        };
        let loaded = tokio::task::spawn_blocking(move || -> Result<LoadedLayer> {
            let file = File::open(&tar)?;
            let bytes = std::fs::read(&index)?;
            let tree: Tree = serde_json::from_slice(&bytes)
                .map_err(|e| Error::invalid(format!("cached layer index: {e}")))?;
            Ok(LoadedLayer {
                tree: Arc::new(tree),
                file: Arc::new(file),
            })
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        match loaded {
            Ok(l) => Ok(Some(Arc::new(l))),
            Err(e) => {
                tracing::warn!(%diff_id, error = %e, "cached layer unusable; fetching again");
                Ok(None)
            }
        }
    }

    async fn fetch_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
    ) -> Result<LoadedLayer> {
        let compression = Compression::from_media_type(&desc.media_type)?;
        if !desc.urls.is_empty() {
            tracing::debug!(digest = %desc.digest, "non-distributable layer: trying the registry first");
        }
        let _in_flight = self.in_flight.enter();
        let started = std::time::Instant::now();
        let stream = self
            .client
            .blob(repo, &desc.digest, Some(desc.size))
            .await?;
        let mut reader = bridge::reader(stream);
        let tmp = self.store.temp()?;
        let limits = self.limits.clone();
        let (blob, diff) = (desc.digest.clone(), diff_id.clone());
        let (result, tmp, reader_err) = tokio::task::spawn_blocking(move || {
            let mut tmp = tmp;
            // The client's BlobStream verifies the digest before it ends.
            let r = layer::ingest_spans(
                &mut reader,
                compression,
                layer::BlobCheck::BySource(&blob),
                &diff,
                0,
                &mut tmp.file,
                &limits,
                Some(layer::span::DEFAULT_SPAN),
            );
            (r, tmp, reader.take_error())
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        let (tree, stats, spans) = match (result, reader_err) {
            (Ok(v), _) => v,
            // The network's error explains an ingest failure better than "truncated tar".
            (Err(_), Some(net)) | (Err(net), None) => {
                tracing::error!(digest = %desc.digest, %diff_id, error = %net, "layer rejected; nothing cached");
                return Err(net);
            }
        };
        // Open before committing: the store may evict the file at once (it can be
        // larger than the whole cache), and the open descriptor keeps it readable.
        let file = tmp.file.try_clone()?;
        self.store.commit(tmp, Kind::Layer, diff_id)?;
        let index = serde_json::to_vec(&tree).map_err(|e| Error::Io(std::io::Error::other(e)))?;
        self.store.put(Kind::Index, diff_id, &index)?;
        if let Some(ix) = spans {
            // Last, so that it outlives the tar in the LRU order.
            let bytes = super::spans::encode_stored(&desc.digest, &ix);
            self.store.put(Kind::Span, diff_id, &bytes)?;
            tracing::debug!(
                digest = %desc.digest, %diff_id, checkpoints = ix.checkpoints.len(),
                bytes = bytes.len(), "stored span index"
            );
        }
        tracing::info!(
            digest = %desc.digest, %diff_id, bytes = stats.compressed_bytes, compressed = stats.compressed_bytes,
            uncompressed = stats.uncompressed_bytes, entries = stats.entries,
            ms = started.elapsed().as_millis() as u64, cache = "miss", "fetched layer"
        );
        Ok(LoadedLayer {
            tree: Arc::new(tree),
            file: Arc::new(file),
        })
    }
}
