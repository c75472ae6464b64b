//! Verified content for the filesystem: manifests, blobs, unpacked layers,
//! TOCs, chunks and spans, from memory or the store when present, else
//! fetched through the registry seam ([`RegistryApi`]), verified, and only
//! then stored. Every kind goes through one fetch-once path (`once` for one
//! key, `pieces` for chunks and spans). Knows nothing of inodes.

mod artifact_tars;
mod background;
#[cfg(test)]
mod background_tests;
mod blob_ranges;
mod blobs;
pub(crate) mod bridge;
mod chunk_list;
mod chunks;
mod index_file;
mod layers;
mod lazy;
mod once;
mod pieces;
mod prefetch;
mod published;
mod published_chunks;
#[cfg(test)]
mod published_tests;
mod published_trace;
mod referrers;
mod span_windows;
mod spans;
#[cfg(test)]
mod tests;
mod throttle;
mod toc;
#[cfg(test)]
mod toc_tests;

use std::sync::Arc;

pub use artifact_tars::tar_compression;
pub use blob_ranges::{ChunkedBlob, MAX_RUN_CHUNKS};
pub use blobs::ManifestInfo;
pub use chunk_list::{
    export_chunk_list, import_chunk_list, ChunkList, CHUNK_SIZE, MIN_LISTED_BLOB,
};
pub use chunks::RemoteLayer;
pub use index_file::{check_tree, export_index, import_index, ImportedIndex};
pub use layers::{LoadedLayer, Urgency};
pub use lazy::{LayerSource, LazyOptions, OpenedLayer};
pub use prefetch::{PrefetchProgress, PrefetchReport, PrefetchSnapshot};
pub use published::{PublishReport, INDEX_ARTIFACT_TYPE};
pub use published_chunks::{CHUNKS_ARTIFACT_TYPE, CHUNKS_MEDIA_TYPE};
pub use published_trace::PREFETCH_ARTIFACT_TYPE;
pub use referrers::{fallback_tag, Referrer};
pub use spans::{tar_range, SpanLayer, SpanView};

use crate::cache::Store;
use crate::digest::Digest;
use crate::image::ImageConfig;
use crate::layer::Limits;
use crate::registry::RegistryApi;
use crate::telemetry::InFlight;

/// Verified content, fetched at most once per key.
pub struct Content {
    client: Arc<dyn RegistryApi>,
    store: Arc<Store>,
    layers: quick_cache::sync::Cache<Digest, Arc<LoadedLayer>, layers::NodeWeighter>,
    manifests: quick_cache::sync::Cache<Digest, Arc<ManifestInfo>>,
    configs: quick_cache::sync::Cache<Digest, Arc<ImageConfig>>,
    limits: Limits,
    lazy: lazy::Lazy,
    max_nodes: u64,
    in_flight: InFlight,
    published: published::Published,
    published_chunks: published_chunks::PublishedChunks,
    /// Uncompressed digests computed for artifact tars, by blob digest.
    artifact_diff_ids: quick_cache::sync::Cache<Digest, Digest>,
}

impl Content {
    /// Content from `registry` (the HTTP [`Client`](crate::registry::Client),
    /// or an in-process one), stored in `store`; at most `max_nodes`
    /// layer-index nodes are kept in memory (the rest is reloaded from the
    /// store on demand).
    pub fn new(
        registry: Arc<dyn RegistryApi>,
        store: Arc<Store>,
        max_nodes: u64,
        limits: Limits,
    ) -> Content {
        Content {
            client: registry,
            store,
            layers: quick_cache::sync::Cache::with_weighter(1024, max_nodes, layers::NodeWeighter),
            manifests: quick_cache::sync::Cache::new(4096),
            configs: quick_cache::sync::Cache::new(1024),
            limits,
            lazy: lazy::Lazy::new(LazyOptions::default(), max_nodes),
            max_nodes,
            in_flight: InFlight::default(),
            published: published::Published::default(),
            published_chunks: Default::default(),
            artifact_diff_ids: quick_cache::sync::Cache::new(1024),
        }
    }

    /// Fetches from the registry in progress now (blobs, layers, TOCs, chunk runs).
    pub fn fetches_in_flight(&self) -> u64 {
        self.in_flight.get()
    }

    /// The registry this content comes from.
    pub fn client(&self) -> &dyn RegistryApi {
        &*self.client
    }

    /// The registry, shared (for tasks of their own).
    pub fn client_arc(&self) -> Arc<dyn RegistryApi> {
        self.client.clone()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Limits applied to layer tars.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}
