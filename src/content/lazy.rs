//! Opening a layer for serving: the per-layer decision between lazy (a
//! verified TOC, chunks by Range), span-served (a gzip layer whose tar was
//! evicted) and whole (the verified uncompressed tar).

use std::fs::File;
use std::sync::Arc;

use super::background::Background;
use super::chunks::{Holes, RemoteLayer};
use super::spans::SpanLayer;
use super::toc::{Indexes, LazyWeighter};
use super::{Content, LoadedLayer, Urgency};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::estargz::LazySpec;
use crate::image::BlobRef;
use crate::layer::{ReadAt, Tree};

/// Settings of lazy layers.
#[derive(Clone, Debug)]
pub struct LazyOptions {
    /// Serve eStargz / zstd:chunked layers lazily (else always whole).
    pub enabled: bool,
    /// After a lazy layer's TOC is loaded, fetch all of its chunks in the background.
    pub background_fetch: bool,
    /// Bandwidth cap of background fetches and prefetches, bytes per second (0: none).
    pub background_bandwidth: u64,
    /// Range requests background fetching may have in flight at once.
    pub background_concurrency: usize,
}

impl Default for LazyOptions {
    fn default() -> Self {
        LazyOptions {
            enabled: true,
            background_fetch: false,
            background_bandwidth: 32 << 20,
            background_concurrency: 2,
        }
    }
}

/// Where the bytes of a layer's files come from.
#[derive(Clone, Debug)]
pub enum LayerSource {
    /// The verified uncompressed tar in the store (or held open after eviction).
    Local(Arc<File>),
    /// Chunks fetched on demand (see [`Content::read_chunks`]).
    Remote(Arc<RemoteLayer>),
    /// A gzip layer whose tar was evicted, served by its span index: whole
    /// spans fetched by Range requests and verified (see [`Content::read_spans`]).
    Spans(Arc<SpanLayer>),
}

impl ReadAt for LayerSource {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match self {
            LayerSource::Local(f) => std::os::unix::fs::FileExt::read_at(&**f, buf, offset),
            LayerSource::Remote(_) | LayerSource::Spans(_) => Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a remote layer has no local tar",
            )),
        }
    }
}

/// A layer ready to serve, whole or lazy.
pub struct OpenedLayer {
    /// Its tree (content layer number 0).
    pub tree: Arc<Tree>,
    /// Where file bytes come from.
    pub source: LayerSource,
}

/// The lazy-layer state of [`Content`].
pub(crate) struct Lazy {
    pub(crate) opts: LazyOptions,
    pub(crate) indexes: Arc<Indexes>,
    pub(crate) background: Background,
    pub(crate) holes: Holes,
}

impl Lazy {
    pub(crate) fn new(opts: LazyOptions, max_nodes: u64) -> Lazy {
        Lazy {
            background: Background::new(opts.background_bandwidth, opts.background_concurrency),
            holes: Holes::default(),
            opts,
            indexes: Arc::new(quick_cache::sync::Cache::with_weighter(
                1024,
                max_nodes,
                LazyWeighter,
            )),
        }
    }
}

impl Content {
    /// Set the lazy-layer options (before the content is shared).
    pub fn set_lazy_options(&mut self, opts: LazyOptions) {
        self.lazy = Lazy::new(opts, self.max_nodes);
    }

    /// The layer `desc` (uncompressed digest `diff_id`) for serving files:
    /// lazily when its descriptor carries a TOC annotation (eStargz,
    /// zstd:chunked) and no whole copy is at hand, else whole as
    /// [`Content::layer`] does. A TOC that fails verification is never used:
    /// the layer is then served whole (which verifies the blob and diff_id).
    pub async fn open_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
    ) -> Result<OpenedLayer> {
        self.open_layer_with(repo, desc, diff_id, Urgency::Critical)
            .await
    }

    /// [`Content::open_layer`], a whole-layer fetch running with `urgency`.
    pub async fn open_layer_with(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
        urgency: Urgency,
    ) -> Result<OpenedLayer> {
        let spec = LazySpec::from_descriptor(desc).filter(|_| self.lazy.opts.enabled);
        if let Some(spec) = spec {
            if !self.has_whole_layer(diff_id) {
                match self.lazy_layer(repo, desc, &spec).await {
                    Ok(l) => {
                        let remote = Arc::new(RemoteLayer {
                            repo: repo.to_string(),
                            blob: desc.clone(),
                            format: spec.format(),
                        });
                        self.prefetcher().schedule(&remote, &l.tree, l.prefetch_end);
                        return Ok(OpenedLayer {
                            tree: l.tree.clone(),
                            source: LayerSource::Remote(remote),
                        });
                    }
                    Err(
                        e @ (Error::DigestMismatch { .. }
                        | Error::Invalid(_)
                        | Error::Unsupported(_)
                        | Error::TooLarge(_)),
                    ) => {
                        tracing::error!(
                            digest = %desc.digest, anchor = %spec.anchor(), error = %e,
                            "lazy layer: TOC rejected; serving the layer whole"
                        );
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some((tree, spans)) = self.span_layer(repo, desc, diff_id).await {
            return Ok(OpenedLayer {
                tree: Arc::new(tree),
                source: LayerSource::Spans(Arc::new(spans)),
            });
        }
        let LoadedLayer { tree, file } = &*self.layer_with(repo, desc, diff_id, urgency).await?;
        Ok(OpenedLayer {
            tree: tree.clone(),
            source: LayerSource::Local(file.clone()),
        })
    }
}
