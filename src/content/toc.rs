//! The TOC of a lazy layer (eStargz, zstd:chunked), fetched by Range
//! requests (footer, then TOC), verified against the manifest's annotation,
//! turned into a tree and kept in the store so that a restart needs no
//! network for metadata. A [`Fetchable`] kind of the fetch-once path.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::once::{fetch_once, Fetchable};
use super::Content;
use crate::blocking;
use crate::cache::Section;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::estargz::{self, LazyIndex, LazySpec, Toc};
use crate::image::BlobRef;
use crate::layer::Tree;

/// A lazy layer's verified index as held in memory.
pub(crate) struct LazyLayer {
    /// Its tree (chunk offsets into the blob).
    pub(crate) tree: Arc<Tree>,
    /// Chunks before this blob offset are prefetched when it is opened.
    pub(crate) prefetch_end: Option<u64>,
}

/// Weighs cached lazy indexes by their node count.
#[derive(Clone)]
pub(crate) struct LazyWeighter;

impl quick_cache::Weighter<Digest, Arc<LazyLayer>> for LazyWeighter {
    fn weight(&self, _k: &Digest, v: &Arc<LazyLayer>) -> u64 {
        v.tree.len() as u64 + 1
    }
}

/// The TOC of one lazy layer blob, kept by its anchor digest.
struct TocKind<'a> {
    content: &'a Content,
    repo: &'a str,
    desc: &'a BlobRef,
    spec: &'a LazySpec,
}

impl TocKind<'_> {
    fn anchor(&self) -> &Digest {
        self.spec.anchor()
    }
}

impl Fetchable for TocKind<'_> {
    type Value = Arc<LazyLayer>;
    type Verified = LazyIndex;

    fn flight_key(&self) -> String {
        format!("toc {}", self.anchor())
    }

    fn at_hand(&self) -> Option<Arc<LazyLayer>> {
        self.content.lazy.indexes.get(self.anchor())
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Arc<LazyLayer>>>> {
        Box::pin(async move {
            let anchor = self.anchor();
            match self
                .content
                .store
                .read(Section::Toc, anchor)
                .map(|b| serde_json::from_slice::<LazyIndex>(&b))
            {
                Some(Ok(ix)) if ix.format == self.spec.format() => Ok(Some(layer_of(ix))),
                Some(Err(e)) => {
                    tracing::warn!(%anchor, error = %e, "cached TOC index unusable; fetching again");
                    Ok(None)
                }
                _ => Ok(None),
            }
        })
    }

    /// Footer and TOC by Range requests, verified, as an index.
    fn fetch_verified(&self) -> BoxFuture<'_, Result<LazyIndex>> {
        Box::pin(async move {
            let (desc, spec) = (self.desc, self.spec);
            let started = Instant::now();
            let client = &self.content.client;
            let range = |off: u64, len: u64| client.blob_range(self.repo, &desc.digest, off, len);
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
                    let json =
                        blocking::run(move || estargz::toc::estargz_toc_json(&member)).await?;
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
                    checksum
                        .verify(&bytes, &format!("zstd:chunked manifest of {}", desc.digest))?;
                    let fetched = bytes.len();
                    let ulen = *length_uncompressed;
                    let json =
                        blocking::run(move || estargz::toc::zstd_toc_json(&bytes, ulen)).await?;
                    if let Some(d) = toc_digest {
                        d.verify(&json, &format!("zstd:chunked TOC of {}", desc.digest))?;
                    }
                    // The TOC sits in a skippable frame: 8 bytes of frame header before it.
                    (json, offset.saturating_sub(8), fetched)
                }
            };
            let format = spec.format();
            let limits = self.content.limits.clone();
            let index = blocking::run(move || {
                let toc = Toc::parse(&json)?;
                estargz::toc_to_tree(&toc, format, data_end, 0, &limits)
            })
            .await?;
            tracing::info!(
                digest = %desc.digest, ?format, bytes = fetched, nodes = index.tree.len(),
                ms = started.elapsed().as_millis() as u64, "fetched and verified TOC"
            );
            Ok(index)
        })
    }

    fn commit(&self, index: LazyIndex) -> BoxFuture<'_, Result<Arc<LazyLayer>>> {
        Box::pin(async move {
            let bytes =
                serde_json::to_vec(&index).map_err(|e| Error::Io(std::io::Error::other(e)))?;
            self.content
                .store
                .put(Section::Toc, self.anchor(), &bytes)?;
            Ok(layer_of(index))
        })
    }

    fn remember(&self, l: &Arc<LazyLayer>) {
        self.content
            .lazy
            .indexes
            .insert(self.anchor().clone(), l.clone());
    }

    /// A TOC hit is not logged (it is one of a layer's hits).
    fn log_hit(&self, _: &Arc<LazyLayer>, _: Instant) {}
}

fn layer_of(index: LazyIndex) -> Arc<LazyLayer> {
    Arc::new(LazyLayer {
        tree: Arc::new(index.tree),
        prefetch_end: index.prefetch_end,
    })
}

impl Content {
    /// The verified index of a lazy layer: memory, the store, or footer + TOC
    /// by Range requests.
    pub(super) async fn lazy_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        spec: &LazySpec,
    ) -> Result<Arc<LazyLayer>> {
        let kind = TocKind {
            content: self,
            repo,
            desc,
            spec,
        };
        fetch_once(&self.store, &self.in_flight, &kind).await
    }
}
