//! Warming the cache for a whole image (`regfs prefetch`): resolve the
//! reference, then fetch and verify the config and every layer — whole, or
//! every chunk of an eStargz / zstd:chunked layer — counting progress as it
//! goes. Foreground work: no throttle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::chunks::{self, all_chunks};
use super::pieces::runs;
use super::{Content, LayerSource, ManifestInfo};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{BlobRef, Manifest, Platform};
use crate::reference::Selector;

/// Largest run of adjacent chunks one prefetch Range request takes.
const PREFETCH_RUN: u64 = 8 << 20;

/// Progress of one prefetch, updated while it runs (read it from elsewhere).
#[derive(Debug, Default)]
pub struct PrefetchProgress {
    layers_total: AtomicU64,
    layers_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
}

/// A snapshot of [`PrefetchProgress`]. Bytes are compressed (descriptor) sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PrefetchSnapshot {
    /// Layers of the image.
    pub layers_total: u64,
    /// Layers now in the cache.
    pub layers_done: u64,
    /// Config plus layer sizes.
    pub bytes_total: u64,
    /// Of which in the cache.
    pub bytes_done: u64,
}

impl PrefetchProgress {
    /// The counts now.
    pub fn snapshot(&self) -> PrefetchSnapshot {
        PrefetchSnapshot {
            layers_total: self.layers_total.load(Ordering::Relaxed),
            layers_done: self.layers_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
        }
    }

    fn add_done(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
    }
}

/// What a finished prefetch did.
#[derive(Clone, Debug, Serialize)]
pub struct PrefetchReport {
    /// The image manifest's digest (the platform's, for an index).
    pub digest: Digest,
    /// Layers in the cache.
    pub layers: u64,
    /// Config plus layer sizes (compressed).
    pub bytes: u64,
    /// Layers served lazily, whose chunks were all fetched.
    pub lazy_layers: u64,
    /// Milliseconds it took.
    pub ms: u64,
}

impl Content {
    /// Resolve `repo` + `sel` (an index to the entry for `platform`) and put
    /// the image's config and every layer into the cache, verified.
    pub async fn prefetch(
        &self,
        repo: &str,
        sel: &Selector,
        platform: &Platform,
        progress: &PrefetchProgress,
    ) -> Result<PrefetchReport> {
        let started = std::time::Instant::now();
        let mut info: Arc<ManifestInfo> = match sel {
            Selector::Digest(d) => self.manifest(repo, d).await?,
            Selector::Tag(_) => self.resolve(repo, sel).await?,
        };
        if let Manifest::Index { entries, .. } = &info.manifest {
            let entry = Manifest::select_platform(entries, platform).ok_or_else(|| {
                Error::NotFound(format!("{repo}@{}: no image for {platform}", info.digest))
            })?;
            let d = entry.manifest.digest.clone();
            info = self.manifest(repo, &d).await?;
        }
        let Manifest::Image(m) = &info.manifest else {
            return Err(Error::invalid(format!(
                "{repo}@{}: an index inside an index",
                info.digest
            )));
        };
        let total = m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>();
        progress
            .layers_total
            .store(m.layers.len() as u64, Ordering::Relaxed);
        progress.bytes_total.store(total, Ordering::Relaxed);
        let config = self.config(repo, &m.config).await?;
        progress.add_done(m.config.size);
        let fetches = m
            .layers_with_diff_ids(&config, &info.digest.to_string())?
            .map(|(desc, diff)| self.prefetch_layer(repo, desc, diff, progress));
        let lazy = futures_util::future::try_join_all(fetches).await?;
        let report = PrefetchReport {
            digest: info.digest.clone(),
            layers: m.layers.len() as u64,
            bytes: total,
            lazy_layers: lazy.into_iter().filter(|l| *l).count() as u64,
            ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(
            %repo, image = %report.digest, layers = report.layers, bytes = report.bytes,
            lazy = report.lazy_layers, ms = report.ms, "prefetched image"
        );
        Ok(report)
    }

    /// One layer into the cache; true if it is served lazily (all chunks fetched).
    async fn prefetch_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
        progress: &PrefetchProgress,
    ) -> Result<bool> {
        let opened = self.open_layer(repo, desc, diff_id).await?;
        let lazy = match &opened.source {
            LayerSource::Local(_) => {
                progress.add_done(desc.size);
                false
            }
            LayerSource::Spans(_) => {
                // Prefetching means the whole layer: stream it again.
                self.layer(repo, desc, diff_id).await?;
                progress.add_done(desc.size);
                false
            }
            LayerSource::Remote(remote) => {
                let all = all_chunks(&opened.tree);
                let mut counted = 0u64;
                for run in runs(&all, chunks::extent, PREFETCH_RUN) {
                    let run: Vec<_> = run.into_iter().cloned().collect();
                    let (client, store) = (&*self.client, &self.store);
                    chunks::get(
                        client,
                        store,
                        &self.in_flight,
                        remote,
                        &run,
                        chunks::MAX_RUN,
                    )
                    .await?;
                    let n: u64 = run.iter().map(|c| c.blob_len).sum();
                    let n = n.min(desc.size - counted);
                    counted += n;
                    progress.add_done(n);
                }
                // The TOC and footer are in the cache too: the whole blob is done.
                progress.add_done(desc.size - counted);
                true
            }
        };
        progress.layers_done.fetch_add(1, Ordering::Relaxed);
        Ok(lazy)
    }
}
