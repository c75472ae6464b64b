//! Unpacked layers: the uncompressed tar in the store plus its index, made in
//! one verified pass over the blob.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::once::{fetch_once, Fetchable};
use super::throttle::PacedBody;
use super::{bridge, index_file, Content};
use crate::cache::{Section, TempFile};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::BlobRef;
use crate::layer::span::SpanIndex;
use crate::layer::{self, Compression, IngestStats, Tree};

/// How urgent a whole-layer fetch is. An image's layers are fetched
/// together and its tree is ready when the largest one is; the others have
/// slack, and ingest them at a lower CPU priority (nice 5) so that, on a
/// machine with fewer cores than busy threads, they do not slow the one
/// that decides when the image is ready. (python:3.11 on 2 vCPUs: mount +
/// `ls -lR` 0.662 → 0.620 s, mean of 8 interleaved pairs.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Urgency {
    /// Nothing waits on anything slower: full priority.
    #[default]
    Critical,
    /// A sibling fetch takes longer anyway.
    Slack,
    /// Nobody waits on it (the check of a published index): niced like
    /// [`Urgency::Slack`], and its blob read no faster than
    /// `--background-bandwidth` allows, in the bucket background chunk
    /// fetches share.
    Background,
}

/// Lowers the calling thread's CPU priority while it lives (threads it
/// starts inherit it), and restores the previous one on drop.
pub(super) struct Niced {
    tid: libc::id_t,
    before: libc::c_int,
}

impl Niced {
    /// Nice value for [`Urgency::Slack`] work.
    const SLACK: libc::c_int = 5;

    pub(super) fn lower() -> Niced {
        // SAFETY: gettid has no preconditions; getpriority/setpriority on
        // our own thread id only read and set that thread's nice value
        // (Linux keeps it per thread). A failure leaves the priority as it
        // was, which is harmless.
        unsafe {
            let tid = libc::gettid() as libc::id_t;
            let before = libc::getpriority(libc::PRIO_PROCESS, tid);
            libc::setpriority(libc::PRIO_PROCESS, tid, before.max(Self::SLACK));
            Niced { tid, before }
        }
    }
}

impl Drop for Niced {
    fn drop(&mut self) {
        // SAFETY: as in `lower`. Raising priority back needs CAP_SYS_NICE
        // unless RLIMIT_NICE allows it; the daemon runs as root.
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, self.tid, self.before);
        }
    }
}

/// Reads a file from `at` on with `pread`, leaving the descriptor's shared
/// offset alone.
pub(super) struct PositionedReader {
    pub(super) file: Arc<File>,
    pub(super) at: u64,
}

impl std::io::Read for PositionedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&*self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

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

/// A whole layer: its uncompressed tar and index in the store, made in one
/// pass over the blob that verifies both digests.
struct LayerKind<'a> {
    content: &'a Content,
    repo: &'a str,
    desc: &'a BlobRef,
    diff_id: &'a Digest,
    urgency: Urgency,
    /// The blob, already verified in the store (an artifact's tar read whole
    /// first): ingested from here, hashed again, instead of from the registry.
    local: Option<Arc<File>>,
}

/// A layer streamed, indexed and verified, not yet committed.
struct IngestedLayer {
    tmp: TempFile,
    tree: Tree,
    stats: IngestStats,
    spans: Option<SpanIndex>,
    started: Instant,
}

impl Fetchable for LayerKind<'_> {
    type Value = Arc<LoadedLayer>;
    type Verified = IngestedLayer;

    fn flight_key(&self) -> String {
        format!("layer {}", self.diff_id)
    }

    fn at_hand(&self) -> Option<Arc<LoadedLayer>> {
        self.content.layers.get(self.diff_id)
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Arc<LoadedLayer>>>> {
        Box::pin(async move {
            let store = &self.content.store;
            let diff_id = self.diff_id;
            let (Some(tar), Some(index)) = (
                store.get(Section::Layer, diff_id),
                store.get(Section::Index, diff_id),
            ) else {
                return Ok(None);
            };
            let loaded = crate::blocking::run(move || {
                let file = File::open(&tar)?;
                let bytes = std::fs::read(&index)?;
                let tree: Tree = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::invalid(format!("cached layer index: {e}")))?;
                Ok(LoadedLayer {
                    tree: Arc::new(tree),
                    file: Arc::new(file),
                })
            })
            .await;
            match loaded {
                Ok(l) => Ok(Some(Arc::new(l))),
                Err(e) => {
                    tracing::warn!(%diff_id, error = %e, "cached layer unusable; fetching again");
                    Ok(None)
                }
            }
        })
    }

    fn fetch_verified(&self) -> BoxFuture<'_, Result<IngestedLayer>> {
        Box::pin(async move {
            let (desc, diff_id, urgency) = (self.desc, self.diff_id, self.urgency);
            let compression = Compression::from_media_type(&desc.media_type)?;
            if !desc.urls.is_empty() {
                tracing::debug!(digest = %desc.digest, "non-distributable layer: trying the registry first");
            }
            let started = Instant::now();
            let tmp = self.content.store.temp()?;
            let limits = self.content.limits.clone();
            let (blob, diff) = (desc.digest.clone(), diff_id.clone());
            let ingest =
                move |reader: &mut (dyn std::io::Read + Send), check: bool, mut tmp: TempFile| {
                    let _niced = (urgency != Urgency::Critical).then(Niced::lower);
                    let check = match check {
                        true => layer::BlobCheck::Hash(&blob),
                        false => layer::BlobCheck::BySource(&blob),
                    };
                    let r = layer::ingest_spans(
                        reader,
                        compression,
                        check,
                        &diff,
                        0,
                        &mut tmp.file,
                        &limits,
                        Some(layer::span::DEFAULT_SPAN),
                    );
                    (r, tmp)
                };
            let local = self.local.clone();
            let (result, tmp, reader_err) = match local {
                Some(file) => {
                    tokio::task::spawn_blocking(move || {
                        // From its start: the store's file is shared, offset and all.
                        let mut from = std::io::BufReader::new(PositionedReader { file, at: 0 });
                        let (r, tmp) = ingest(&mut from, true, tmp);
                        (r, tmp, None)
                    })
                    .await
                }
                None => {
                    let mut stream = self
                        .content
                        .client
                        .blob(self.repo, &desc.digest, Some(desc.size))
                        .await?;
                    if urgency == Urgency::Background {
                        let bucket = self.content.lazy.background.bucket();
                        stream = Box::new(PacedBody::new(stream, bucket));
                    }
                    let mut reader = bridge::reader(stream);
                    tokio::task::spawn_blocking(move || {
                        // The blob body verifies the digest before it ends.
                        let (r, tmp) = ingest(&mut reader, false, tmp);
                        (r, tmp, reader.take_error())
                    })
                    .await
                }
            }
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
            match (result, reader_err) {
                (Ok((tree, stats, spans)), _) => Ok(IngestedLayer {
                    tmp,
                    tree,
                    stats,
                    spans,
                    started,
                }),
                // The network's error explains an ingest failure better than "truncated tar".
                (Err(_), Some(net)) | (Err(net), None) => {
                    tracing::error!(digest = %desc.digest, %diff_id, error = %net, "layer rejected; nothing cached");
                    Err(net)
                }
            }
        })
    }

    fn commit(&self, l: IngestedLayer) -> BoxFuture<'_, Result<Arc<LoadedLayer>>> {
        Box::pin(async move {
            let IngestedLayer {
                tmp,
                tree,
                stats,
                spans,
                started,
            } = l;
            // Open before committing: the store may evict the file at once (it can be
            // larger than the whole cache), and the open descriptor keeps it readable.
            let file = tmp.file.try_clone()?;
            let tree = Arc::new(tree);
            // fsync, rename and two small writes: disk work, off the async workers.
            let (store, blob, diff, t) = (
                self.content.store.clone(),
                self.desc.digest.clone(),
                self.diff_id.clone(),
                tree.clone(),
            );
            crate::blocking::run(move || {
                store.commit(tmp, Section::Layer, &diff)?;
                let index =
                    serde_json::to_vec(&*t).map_err(|e| Error::Io(std::io::Error::other(e)))?;
                store.put(Section::Index, &diff, &index)?;
                if let Some(ix) = spans {
                    // Last, so that it outlives the tar in the LRU order.
                    let bytes = index_file::encode_stored(&blob, &ix, None);
                    store.put(Section::Span, &diff, &bytes)?;
                    tracing::debug!(
                        digest = %blob, diff_id = %diff, checkpoints = ix.checkpoints.len(),
                        bytes = bytes.len(), "stored span index"
                    );
                }
                Ok(())
            })
            .await?;
            tracing::info!(
                digest = %self.desc.digest, diff_id = %self.diff_id, bytes = stats.compressed_bytes,
                compressed = stats.compressed_bytes, uncompressed = stats.uncompressed_bytes,
                entries = stats.entries, ms = started.elapsed().as_millis() as u64,
                cache = "miss", "fetched layer"
            );
            Ok(Arc::new(LoadedLayer {
                tree,
                file: Arc::new(file),
            }))
        })
    }

    fn remember(&self, l: &Arc<LoadedLayer>) {
        self.content.layers.insert(self.diff_id.clone(), l.clone());
    }

    fn log_hit(&self, l: &Arc<LoadedLayer>, started: Instant) {
        let bytes = l.file.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::debug!(
            digest = %self.desc.digest, diff_id = %self.diff_id, bytes,
            ms = started.elapsed().as_millis() as u64, cache = "hit", "cache hit layer"
        );
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
        self.layer_with(repo, desc, diff_id, Urgency::Critical)
            .await
    }

    /// [`Content::layer`], fetched (if it must be) with `urgency`.
    pub async fn layer_with(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
        urgency: Urgency,
    ) -> Result<Arc<LoadedLayer>> {
        self.fetch_layer(repo, desc, diff_id, urgency, None).await
    }

    async fn fetch_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
        urgency: Urgency,
        local: Option<Arc<File>>,
    ) -> Result<Arc<LoadedLayer>> {
        let kind = LayerKind {
            content: self,
            repo,
            desc,
            diff_id,
            urgency,
            local,
        };
        fetch_once(&self.store, &self.in_flight, &kind).await
    }

    /// The uncompressed size a single-member gzip blob states in its
    /// trailer (ISIZE, the last 4 bytes: the size modulo 2^32), read with one
    /// 4-byte Range request. A hint, not verified content: taken only when
    /// it is a whole number of tar blocks (512 bytes) and at least the
    /// compressed size (a stream of several members, or one past 4 GiB,
    /// seldom passes both; a tar compresses). `None` otherwise.
    pub async fn gzip_trailer_size(&self, repo: &str, desc: &BlobRef) -> Option<u64> {
        if desc.size < 4 {
            return None;
        }
        let b = self
            .client()
            .blob_range(repo, &desc.digest, desc.size - 4, 4)
            .await
            .ok()?;
        let isize = u64::from(u32::from_le_bytes(b.get(..4)?.try_into().ok()?));
        (isize % 512 == 0 && isize >= desc.size).then_some(isize)
    }

    /// [`Content::layer`], ingested from `local`, the blob already in the
    /// store (hashed again on the way), instead of from the registry.
    pub(super) async fn layer_from_local(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
        local: Arc<File>,
    ) -> Result<Arc<LoadedLayer>> {
        self.fetch_layer(repo, desc, diff_id, Urgency::Critical, Some(local))
            .await
    }

    /// Whether the layer's tar and index are in memory or in the store.
    /// The size of layer `diff_id`'s uncompressed tar, when the store knows
    /// it without fetching anything: its cached tar, or its span index (the
    /// layer was streamed here once, or a published index was adopted).
    pub fn known_tar_size(&self, diff_id: &Digest) -> Option<u64> {
        if let Some(len) = self
            .store
            .get(Section::Layer, diff_id)
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
        {
            return Some(len);
        }
        let b = self.store.read(Section::Span, diff_id)?;
        index_file::decode_stored(&b)
            .ok()
            .map(|(_, ix, _)| ix.uncompressed_size)
    }

    pub(super) fn has_whole_layer(&self, diff_id: &Digest) -> bool {
        self.layers.get(diff_id).is_some()
            || (self.store.path(Section::Layer, diff_id).exists()
                && self.store.path(Section::Index, diff_id).exists())
    }
}

#[cfg(test)]
mod tests {
    use super::Niced;

    fn nice() -> libc::c_int {
        // SAFETY: reads this thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[test]
    fn slack_work_runs_niced_and_the_thread_gets_its_priority_back() {
        std::thread::spawn(|| {
            let before = nice();
            {
                let _n = Niced::lower();
                assert_eq!(nice(), before.max(Niced::SLACK));
                // Threads started meanwhile (the inflate thread) inherit it.
                let child = std::thread::spawn(nice).join().unwrap();
                assert_eq!(child, before.max(Niced::SLACK));
            }
            assert_eq!(nice(), before, "a pooled thread must not stay niced");
        })
        .join()
        .unwrap();
    }
}
