//! The TOC of a lazy layer (eStargz, zstd:chunked), fetched by Range
//! requests (footer and TOC in one request when the TOC fits the guessed
//! tail), verified against the manifest's annotation, turned into a tree and
//! kept in the store so that a restart needs no network for metadata. A
//! [`Fetchable`] kind of the fetch-once path; [`Content::start_tocs`] fetches
//! an image's TOCs side by side, each in its own task.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;

use super::chunks::RemoteLayer;
use super::layers::Niced;
use super::once::{fetch_once, Fetchable};
use super::Content;
use crate::blocking;
use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::estargz::{self, LazyIndex, LazySpec, Toc};
use crate::image::BlobRef;
use crate::layer::{Limits, Tree};
use crate::registry::RegistryApi;

/// How much sooner the TOC of the layer being opened is asked for than the
/// image's other TOCs: about one fetch from a registry on the same host
/// (3–4 ms for python's 326 KB one), which otherwise shares the registry's
/// CPU with four other requests (about 20 ms); a far registry's round trip
/// is many times longer, so there the others still travel side by side.
const WANTED_HEAD_START: std::time::Duration = std::time::Duration::from_millis(5);

/// Longest the other TOCs wait for the opened layer's to be decoded before
/// decoding their own (python's largest takes about 15 ms).
const WANTED_DECODE_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

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

/// Verified lazy indexes in memory, by anchor digest.
pub(crate) type Indexes = quick_cache::sync::Cache<Digest, Arc<LazyLayer>, LazyWeighter>;

/// The TOC of one lazy layer blob, kept by its anchor digest. Owns what it
/// needs, so that a fetch can run in a task of its own.
struct TocKind {
    client: Arc<dyn RegistryApi>,
    store: Arc<Store>,
    indexes: Arc<Indexes>,
    limits: Limits,
    repo: String,
    desc: BlobRef,
    spec: LazySpec,
    /// Fetched early for a layer nobody asked for yet: decoded at a lower
    /// CPU priority, so that the layer being opened is not slowed down.
    slack: bool,
    /// Decode only once this says the opened layer's TOC is in (or after
    /// [`WANTED_DECODE_WAIT`]): two cores decode one TOC at a time.
    after: Option<tokio::sync::watch::Receiver<bool>>,
}

impl TocKind {
    fn new(content: &Content, repo: &str, desc: &BlobRef, spec: LazySpec) -> TocKind {
        TocKind {
            client: content.client.clone(),
            store: content.store.clone(),
            indexes: content.lazy.indexes.clone(),
            limits: content.limits.clone(),
            repo: repo.to_string(),
            desc: desc.clone(),
            spec,
            slack: false,
            after: None,
        }
    }

    /// Let the opened layer's TOC be decoded first (see `after`).
    async fn wait_for_the_opened_layer(&self) {
        if let Some(mut rx) = self.after.clone() {
            let _ = tokio::time::timeout(WANTED_DECODE_WAIT, rx.wait_for(|done| *done)).await;
        }
    }

    fn anchor(&self) -> &Digest {
        self.spec.anchor()
    }

    /// The layer blob, as errors name it.
    fn what(&self) -> String {
        self.desc.digest.to_string()
    }

    /// The eStargz TOC member (a gzip member) and its blob offset: the
    /// guessed tail of the blob in one request, holding the footer and, when
    /// the guess was large enough, the whole TOC; else the part before the
    /// tail in a second request. Also the bytes fetched.
    async fn estargz_member(&self) -> Result<(Bytes, u64, usize)> {
        let desc = &self.desc;
        let n = estargz::tail_fetch_size(desc.size);
        let tail_start = desc.size - n;
        let tail = self
            .client
            .blob_range(&self.repo, &desc.digest, tail_start, n)
            .await?;
        if tail.len() as u64 != n {
            return Err(Error::invalid(format!(
                "eStargz {}: blob shorter than its descriptor's size",
                desc.digest
            )));
        }
        let (toc_off, footer) = estargz::parse_footer(&tail)?;
        let end = desc.size - footer;
        if toc_off >= end || end - toc_off > estargz::MAX_TOC_SIZE {
            return Err(Error::invalid(format!(
                "eStargz {}: TOC offset {toc_off} out of range",
                desc.digest
            )));
        }
        let in_tail = (end - tail_start) as usize;
        if toc_off >= tail_start {
            return Ok((
                tail.slice((toc_off - tail_start) as usize..in_tail),
                toc_off,
                tail.len(),
            ));
        }
        let head = self
            .client
            .blob_range(&self.repo, &desc.digest, toc_off, tail_start - toc_off)
            .await?;
        let mut member = BytesMut::with_capacity(head.len() + in_tail);
        member.extend_from_slice(&head);
        member.extend_from_slice(&tail[..in_tail]);
        Ok((member.freeze(), toc_off, head.len() + tail.len()))
    }
}

impl Fetchable for TocKind {
    type Value = Arc<LazyLayer>;
    type Verified = (LazyIndex, TocSource);

    fn flight_key(&self) -> String {
        format!("toc {}", self.anchor())
    }

    fn at_hand(&self) -> Option<Arc<LazyLayer>> {
        self.indexes.get(self.anchor())
    }

    /// The store keeps the verified TOC bytes as fetched: decoded again
    /// (and checked again) here. An index stored as a JSON tree by an
    /// earlier version is read as such.
    fn load(&self) -> BoxFuture<'_, Result<Option<Arc<LazyLayer>>>> {
        Box::pin(async move {
            let anchor = self.anchor().clone();
            let Some(bytes) = self.store.read(Section::Toc, &anchor).map(Bytes::from) else {
                return Ok(None);
            };
            let decoded = match TocSource::decode(&bytes) {
                Some(source) => {
                    let (spec, what, limits) =
                        (self.spec.clone(), self.what(), self.limits.clone());
                    let slack = self.slack;
                    blocking::run(move || {
                        let _niced = slack.then(Niced::lower);
                        index_of(&spec, &source, &what, &limits, &mut Steps::default())
                    })
                    .await
                }
                None => serde_json::from_slice::<LazyIndex>(&bytes)
                    .map_err(|e| Error::invalid(e.to_string())),
            };
            match decoded {
                Ok(ix) if ix.format == self.spec.format() => Ok(Some(layer_of(ix))),
                Ok(_) => Ok(None),
                Err(e) => {
                    tracing::warn!(%anchor, error = %e, "cached TOC index unusable; fetching again");
                    Ok(None)
                }
            }
        })
    }

    /// Footer and TOC by Range requests, verified, as an index (and the
    /// bytes it was made from, for the store). The decoding, hashing,
    /// parsing and tree building run in one blocking task; each step's time
    /// is logged (the breakdown in the README).
    fn fetch_verified(&self) -> BoxFuture<'_, Result<(LazyIndex, TocSource)>> {
        Box::pin(async move {
            let desc = &self.desc;
            let started = Instant::now();
            let (source, fetched) = match &self.spec {
                LazySpec::Estargz { .. } => {
                    let (member, toc_off, fetched) = self.estargz_member().await?;
                    (
                        TocSource {
                            data_end: toc_off,
                            bytes: member,
                        },
                        fetched,
                    )
                }
                LazySpec::ZstdChunked { offset, length, .. } => {
                    let bytes = self
                        .client
                        .blob_range(&self.repo, &desc.digest, *offset, *length)
                        .await?;
                    // The TOC sits in a skippable frame: 8 bytes of frame header before it.
                    let data_end = offset.saturating_sub(8);
                    let fetched = bytes.len();
                    (TocSource { data_end, bytes }, fetched)
                }
            };
            let fetch_ms = started.elapsed().as_millis() as u64;
            self.wait_for_the_opened_layer().await;
            let (spec, what, limits, slack) = (
                self.spec.clone(),
                self.what(),
                self.limits.clone(),
                self.slack,
            );
            let (index, source, t) = blocking::run(move || {
                let _niced = slack.then(Niced::lower);
                let mut t = Steps::default();
                let ix = index_of(&spec, &source, &what, &limits, &mut t)?;
                Ok((ix, source, t))
            })
            .await?;
            tracing::info!(
                digest = %desc.digest, format = ?index.format, bytes = fetched, nodes = index.tree.len(),
                fetch_ms, decompress_ms = t.ms(0), verify_ms = t.ms(1),
                parse_ms = t.ms(2), tree_ms = t.ms(3), ms = started.elapsed().as_millis() as u64,
                "fetched and verified TOC"
            );
            Ok((index, source))
        })
    }

    /// The index is served from memory at once; the store keeps the
    /// verified TOC bytes as fetched (a file write, no serialising: the
    /// tree as JSON was 20–35 ms of CPU for python's base layer, beside the
    /// first reads), written by a blocking task of its own.
    fn commit(
        &self,
        (index, source): (LazyIndex, TocSource),
    ) -> BoxFuture<'_, Result<Arc<LazyLayer>>> {
        Box::pin(async move {
            let layer = layer_of(index);
            let (store, anchor) = (self.store.clone(), self.anchor().clone());
            let digest = self.desc.digest.clone();
            tokio::task::spawn_blocking(move || {
                let bytes = source.encode();
                match store.put(Section::Toc, &anchor, &bytes) {
                    Ok(_) => tracing::debug!(%digest, bytes = bytes.len(), "stored TOC"),
                    Err(e) => tracing::warn!(%digest, error = %e, "TOC not stored"),
                }
            });
            Ok(layer)
        })
    }

    fn remember(&self, l: &Arc<LazyLayer>) {
        self.indexes.insert(self.anchor().clone(), l.clone());
    }

    /// A TOC hit is not logged (it is one of a layer's hits).
    fn log_hit(&self, _: &Arc<LazyLayer>, _: Instant) {}
}

/// Parse verified TOC JSON and build its tree (chunk data ending at
/// `data_end`), timing both steps.
fn tree_of(
    t: &mut Steps,
    json: Vec<u8>,
    format: estargz::Format,
    data_end: u64,
    limits: &Limits,
) -> Result<LazyIndex> {
    // The TOC's strings borrow from `json`, which lives until the tree is built.
    let toc = t.time(2, || Toc::parse(&json))?;
    t.time(3, || {
        estargz::toc_to_tree(&toc, format, data_end, 0, limits)
    })
}

/// [`tree_of`] for TOC JSON that must hash to `digest`: the hash runs on a
/// thread of its own beside the parse and build (the TOC of a large layer
/// is megabytes of JSON), and nothing is returned unless it matches: a
/// tree made from JSON that fails the hash is dropped unseen.
fn verified_tree_of(
    t: &mut Steps,
    json: Vec<u8>,
    digest: &Digest,
    what: &str,
    format: estargz::Format,
    data_end: u64,
    limits: &Limits,
) -> Result<LazyIndex> {
    std::thread::scope(|scope| {
        let hashed = scope.spawn(|| {
            let started = Instant::now();
            (digest.verify(&json, what), started.elapsed())
        });
        let tree = t.time(2, || Toc::parse(&json)).and_then(|toc| {
            t.time(3, || {
                estargz::toc_to_tree(&toc, format, data_end, 0, limits)
            })
        });
        let (verified, took) = hashed
            .join()
            .map_err(|_| Error::Io(std::io::Error::other("TOC hash thread panicked")))?;
        t.0[1] += took;
        // A mismatch says more than whatever the unverified JSON made.
        verified?;
        tree
    })
}

/// Time spent in each step of turning TOC bytes into a tree (decompress,
/// verify, parse, build), for the log.
#[derive(Default)]
struct Steps([std::time::Duration; 4]);

impl Steps {
    fn time<T>(&mut self, step: usize, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0[step] += t.elapsed();
        out
    }

    fn ms(&self, step: usize) -> f64 {
        (self.0[step].as_micros() as f64 / 100.0).round() / 10.0
    }
}

/// A TOC as fetched and verified: the eStargz TOC's gzip member, or the
/// zstd:chunked manifest (compressed), and where the layer's chunk data
/// ends. The store keeps these bytes rather than the tree made of them.
struct TocSource {
    data_end: u64,
    bytes: Bytes,
}

/// The first bytes of a stored [`TocSource`].
pub(super) const SOURCE_MAGIC: &[u8] = b"regfs toc source 1\n";

impl TocSource {
    /// Magic, `data_end` (8 bytes, little-endian), the bytes.
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(SOURCE_MAGIC.len() + 8 + self.bytes.len());
        v.extend_from_slice(SOURCE_MAGIC);
        v.extend_from_slice(&self.data_end.to_le_bytes());
        v.extend_from_slice(&self.bytes);
        v
    }

    /// `None` unless `b` is an encoded source (its bytes are not copied).
    fn decode(b: &Bytes) -> Option<TocSource> {
        let rest = b.strip_prefix(SOURCE_MAGIC)?;
        let (end, _) = rest.split_first_chunk::<8>()?;
        Some(TocSource {
            data_end: u64::from_le_bytes(*end),
            bytes: b.slice(SOURCE_MAGIC.len() + 8..),
        })
    }
}

/// The verified index of `source` as `spec` describes it: decompressed,
/// checked against the manifest's digests, parsed, built (timed in `t`).
fn index_of(
    spec: &LazySpec,
    source: &TocSource,
    what: &str,
    limits: &Limits,
    t: &mut Steps,
) -> Result<LazyIndex> {
    let (format, data_end) = (spec.format(), source.data_end);
    match spec {
        LazySpec::Estargz { toc_digest } => {
            let json = t.time(0, || estargz::toc::estargz_toc_json(&source.bytes))?;
            let what = format!("eStargz TOC of {what}");
            verified_tree_of(t, json, toc_digest, &what, format, data_end, limits)
        }
        LazySpec::ZstdChunked {
            length_uncompressed,
            checksum,
            toc_digest,
            ..
        } => {
            t.time(1, || {
                checksum.verify(&source.bytes, &format!("zstd:chunked manifest of {what}"))
            })?;
            let json = t.time(0, || {
                estargz::toc::zstd_toc_json(&source.bytes, *length_uncompressed)
            })?;
            match toc_digest {
                Some(d) => {
                    let what = format!("zstd:chunked TOC of {what}");
                    verified_tree_of(t, json, d, &what, format, data_end, limits)
                }
                None => tree_of(t, json, format, data_end, limits),
            }
        }
    }
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
        let kind = TocKind::new(self, repo, desc, spec.clone());
        fetch_once(&self.store, &self.in_flight, &kind).await
    }

    /// Start fetching the TOC of every lazy layer of `layers` that is not in
    /// memory, each in a task of its own (one request each when the TOC fits
    /// the guessed tail), so that an image's TOCs travel side by side, and
    /// beside its config, the first time any of its trees is needed. Whoever
    /// then opens a layer joins its fetch (single flight) or finds it done;
    /// a failure is only logged here (the opener fetches again and decides).
    /// With `wanted`, that layer is the one being opened: the others are
    /// asked for [`WANTED_HEAD_START`] later and decoded after it (at most
    /// [`WANTED_DECODE_WAIT`] later) at a lower CPU priority. Each layer's prioritised files
    /// (`.prefetch.landmark`) start to be fetched as soon as its TOC is in.
    pub fn start_tocs(&self, repo: &str, layers: &[BlobRef], wanted: Option<usize>) {
        if !self.lazy.opts.enabled || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        // The opened layer's TOC is in: the others may decode.
        let (opened, after) = tokio::sync::watch::channel(false);
        let mut opened = Some(opened);
        for (i, desc) in layers.iter().enumerate() {
            let Some(spec) = LazySpec::from_descriptor(desc) else {
                continue;
            };
            if self.lazy.indexes.get(spec.anchor()).is_some() {
                continue;
            }
            let remote = Arc::new(RemoteLayer {
                repo: repo.to_string(),
                blob: desc.clone(),
                format: spec.format(),
            });
            let mut kind = TocKind::new(self, repo, desc, spec);
            kind.slack = wanted.is_some_and(|w| w != i);
            let signal = if wanted == Some(i) {
                opened.take()
            } else {
                None
            };
            if kind.slack {
                kind.after = Some(after.clone());
            }
            let (in_flight, prefetcher) = (self.in_flight.clone(), self.prefetcher());
            tokio::spawn(async move {
                if kind.slack {
                    tokio::time::sleep(WANTED_HEAD_START).await;
                }
                let store = kind.store.clone();
                let result = fetch_once(&store, &in_flight, &kind).await;
                if let Some(s) = signal {
                    let _ = s.send(true);
                }
                match result {
                    // The image's prioritised files start with its TOCs.
                    Ok(l) => prefetcher.schedule(&remote, &l.tree, l.prefetch_end),
                    Err(e) => {
                        tracing::debug!(digest = %kind.desc.digest, error = %e, "early TOC fetch failed")
                    }
                }
            });
        }
    }
}
