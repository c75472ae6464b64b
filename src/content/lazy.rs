//! Lazily served layers (eStargz, zstd:chunked): the per-layer decision, and
//! the TOC fetched by Range requests (footer, then TOC), verified against the
//! manifest's annotation, turned into a tree and kept in the store so that a
//! restart needs no network for metadata.

use std::fs::File;
use std::sync::Arc;

use super::chunks::{Background, Holes};
use super::spans::SpanLayer;
use super::{Content, LoadedLayer, Urgency};
use crate::cache::Kind;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::estargz::{self, Format, LazyIndex, LazySpec, Toc};
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

/// A layer served by Range requests, one verified chunk at a time.
#[derive(Debug)]
pub struct RemoteLayer {
    /// The repository to fetch from.
    pub repo: String,
    /// The layer blob.
    pub blob: BlobRef,
    /// How its chunks are compressed.
    pub format: Format,
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

/// A lazy layer's index as held in memory.
pub(crate) struct LazyLayer {
    pub(crate) tree: Arc<Tree>,
    pub(crate) prefetch_end: Option<u64>,
}

#[derive(Clone)]
pub(crate) struct LazyWeighter;
impl quick_cache::Weighter<Digest, Arc<LazyLayer>> for LazyWeighter {
    fn weight(&self, _k: &Digest, v: &Arc<LazyLayer>) -> u64 {
        v.tree.len() as u64 + 1
    }
}

/// The lazy-layer state of [`Content`].
pub(crate) struct Lazy {
    pub(crate) opts: LazyOptions,
    pub(crate) indexes: quick_cache::sync::Cache<Digest, Arc<LazyLayer>, LazyWeighter>,
    pub(crate) background: Background,
    pub(crate) holes: Holes,
}

impl Lazy {
    pub(crate) fn new(opts: LazyOptions, max_nodes: u64) -> Lazy {
        Lazy {
            background: Background::new(&opts),
            holes: Holes::default(),
            opts,
            indexes: quick_cache::sync::Cache::with_weighter(1024, max_nodes, LazyWeighter),
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
                        self.schedule_background(&remote, &l);
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
        if let Some(opened) = self.span_layer(repo, desc, diff_id).await {
            return Ok(opened);
        }
        let LoadedLayer { tree, file } = &*self.layer_with(repo, desc, diff_id, urgency).await?;
        Ok(OpenedLayer {
            tree: tree.clone(),
            source: LayerSource::Local(file.clone()),
        })
    }

    pub(super) fn has_whole_layer(&self, diff_id: &Digest) -> bool {
        self.layers.get(diff_id).is_some()
            || (self.store.path(Kind::Layer, diff_id).exists()
                && self.store.path(Kind::Index, diff_id).exists())
    }

    /// The verified index of a lazy layer: memory, the store, or footer + TOC
    /// by Range requests.
    async fn lazy_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        spec: &LazySpec,
    ) -> Result<Arc<LazyLayer>> {
        let anchor = spec.anchor();
        if let Some(l) = self.lazy.indexes.get(anchor) {
            return Ok(l);
        }
        let _flight = self.store.flight(format!("toc {anchor}")).await;
        if let Some(l) = self.lazy.indexes.get(anchor) {
            return Ok(l);
        }
        let index = match self
            .store
            .read(Kind::Toc, anchor)
            .map(|b| serde_json::from_slice::<LazyIndex>(&b))
        {
            Some(Ok(ix)) if ix.format == spec.format() => ix,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(%anchor, error = %e, "cached TOC index unusable; fetching again");
                }
                let ix = self.fetch_toc(repo, desc, spec).await?;
                let bytes =
                    serde_json::to_vec(&ix).map_err(|e| Error::Io(std::io::Error::other(e)))?;
                self.store.put(Kind::Toc, anchor, &bytes)?;
                ix
            }
        };
        let l = Arc::new(LazyLayer {
            tree: Arc::new(index.tree),
            prefetch_end: index.prefetch_end,
        });
        self.lazy.indexes.insert(anchor.clone(), l.clone());
        Ok(l)
    }

    /// Footer and TOC by Range requests, verified, as an index.
    async fn fetch_toc(&self, repo: &str, desc: &BlobRef, spec: &LazySpec) -> Result<LazyIndex> {
        let _in_flight = self.in_flight.enter();
        let started = std::time::Instant::now();
        let range = |off: u64, len: u64| self.client.blob_range(repo, &desc.digest, off, len);
        let (json, data_end, fetched) = match spec {
            LazySpec::Estargz { toc_digest } => {
                let n = estargz::FOOTER_SIZE.min(desc.size);
                let tail = range(desc.size - n, n).await?;
                let (toc_off, footer) = estargz::parse_footer(&tail)?;
                let end = desc.size - footer;
                if toc_off >= end || end - toc_off > estargz::MAX_TOC_SIZE {
                    return Err(Error::invalid(format!(
                        "eStargz {}: TOC offset {toc_off} out of range",
                        desc.digest
                    )));
                }
                let member = range(toc_off, end - toc_off).await?;
                let fetched = tail.len() + member.len();
                let json = blocking(move || estargz::toc::estargz_toc_json(&member)).await?;
                toc_digest.verify(&json, &format!("eStargz TOC of {}", desc.digest))?;
                (json, toc_off, fetched)
            }
            LazySpec::ZstdChunked {
                offset,
                length,
                length_uncompressed,
                checksum,
                toc_digest,
            } => {
                let bytes = range(*offset, *length).await?;
                checksum.verify(&bytes, &format!("zstd:chunked manifest of {}", desc.digest))?;
                let fetched = bytes.len();
                let ulen = *length_uncompressed;
                let json = blocking(move || estargz::toc::zstd_toc_json(&bytes, ulen)).await?;
                if let Some(d) = toc_digest {
                    d.verify(&json, &format!("zstd:chunked TOC of {}", desc.digest))?;
                }
                // The TOC sits in a skippable frame: 8 bytes of frame header before it.
                (json, offset.saturating_sub(8), fetched)
            }
        };
        let format = spec.format();
        let limits = self.limits.clone();
        let index = blocking(move || {
            let toc = Toc::parse(&json)?;
            estargz::toc_to_tree(&toc, format, data_end, 0, &limits)
        })
        .await?;
        tracing::info!(
            digest = %desc.digest, ?format, bytes = fetched, nodes = index.tree.len(),
            ms = started.elapsed().as_millis() as u64, "fetched and verified TOC"
        );
        Ok(index)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}
