//! Gzip layers served by their span index once the uncompressed tar has been
//! evicted: a read fetches the compressed bytes from the checkpoint before
//! the data it needs to the end of the last span covering it (one Range
//! request per run of spans), inflates whole spans, checks each against the
//! digest recorded when the layer was streamed and verified, keeps verified
//! spans in the chunk cache by that digest, and only then serves. Nothing
//! unverified is returned or stored. Spans are pieces of the fetch-once
//! path ([`super::pieces`]). For a published index whose windows are apart
//! ([`super::span_windows`]), the window of a run's first checkpoint is
//! fetched beside the run's bytes.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::pieces::{PieceData, PieceKind, Verified};
use super::{index_file, Content};
use crate::cache::Section;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::BlobRef;
use crate::layer::span::SpanIndex;
use crate::layer::span_windows::WindowTable;
use crate::layer::{self, Compression, ReadAt, Tree};
use crate::registry::RegistryApi;

/// Most spans fetched by one Range request (4 MiB of 256 KiB spans).
const MAX_RUN_SPANS: u64 = 16;

/// A read of a file at most this long (its extent in the tar) fetches the
/// spans of the whole file: programs map their binaries and libraries and
/// fault them in out of order, one span per round trip otherwise
/// (`python3 -c pass`: 43 round trips at 256 KiB spans, see DECISIONS.md).
pub const WHOLE_FILE_SPANS: u64 = 8 << 20;

/// A gzip layer served from its span index.
#[derive(Debug)]
pub struct SpanLayer {
    /// The repository to fetch from.
    pub repo: String,
    /// The layer blob.
    pub blob: BlobRef,
    /// The layer's diff_id.
    pub diff_id: Digest,
    /// Its checkpoints and span digests.
    pub index: Arc<SpanIndex>,
    /// Where its windows are when the index has none (a published index,
    /// version 2): in this windows blob of `repo`.
    pub windows: Option<Arc<WindowTable>>,
}

/// Verified spans of a layer's uncompressed tar, readable at tar offsets.
#[derive(Default)]
pub struct SpanView {
    /// (uncompressed start, length, data), ordered and contiguous.
    parts: Vec<(u64, u64, PieceData)>,
}

impl ReadAt for SpanView {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let i = self.parts.partition_point(|p| p.0 + p.1 <= offset);
        let Some((start, len, part)) = self.parts.get(i) else {
            return Ok(0);
        };
        if offset < *start {
            return Ok(0);
        }
        let at = offset - start;
        let n = (buf.len() as u64).min(len - at) as usize;
        part.read_at(&mut buf[..n], at)
    }
}

/// Spans of one layer as pieces: numbered, fetched by the compressed range
/// of a run of consecutive spans, inflated and verified against their digests.
struct SpanKind<'a> {
    content: &'a Content,
    layer: &'a SpanLayer,
}

impl PieceKind for SpanKind<'_> {
    type Piece = usize;

    fn digest<'s>(&'s self, i: &'s usize) -> &'s Digest {
        &self.layer.index.checkpoints[*i].span_digest
    }

    fn extent(&self, i: &usize) -> (u64, u64) {
        // Consecutive span numbers touch: a run is consecutive spans.
        (*i as u64, *i as u64 + 1)
    }

    fn fetch_run<'a>(&'a self, run: &'a [usize]) -> BoxFuture<'a, Result<Verified>> {
        Box::pin(async move {
            let (a, b) = (run[0], run[run.len() - 1]);
            let (layer, ix) = (self.layer, self.layer.index.clone());
            let (cs, ce) = ix.compressed_range(a, b);
            let started = Instant::now();
            let client: &dyn RegistryApi = &*self.content.client;
            let fetch = client.blob_range(&layer.repo, &layer.blob.digest, cs, ce - cs);
            // The window of the run's first checkpoint, beside its bytes.
            let window = async {
                match &layer.windows {
                    Some(t) if !ix.checkpoints[a].member_start => {
                        self.content.span_window(&layer.repo, t, a).await.map(Some)
                    }
                    _ => Ok(None),
                }
            };
            let (bytes, window) = tokio::join!(fetch, window);
            let (bytes, window) = (bytes?, window?);
            tracing::info!(
                digest = %layer.blob.digest, offset = cs, bytes = bytes.len(), spans = b - a + 1,
                ms = started.elapsed().as_millis() as u64, cache = "miss", "fetched spans"
            );
            let blob = layer.blob.digest.clone();
            let spans = crate::blocking::run(move || {
                match &window {
                    Some(w) => ix.extract_with_window(a, b, &bytes, w),
                    None => ix.extract(a, b, &bytes),
                }
                .inspect_err(|e| {
                    tracing::error!(
                        digest = %blob, first_span = a, last_span = b, error = %e,
                        "span failed verification; not served, not cached"
                    );
                })
            })
            .await?;
            Ok((spans, None))
        })
    }
}

impl Content {
    /// A gzip layer whose tar is gone but whose tree index and span index
    /// (for this very blob) are in the store: its tree and span source.
    pub(super) async fn span_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
    ) -> Option<(Tree, SpanLayer)> {
        if Compression::from_media_type(&desc.media_type).ok()? != Compression::Gzip
            || self.has_whole_layer(diff_id)
        {
            return None;
        }
        let spans = self.store.get(Section::Span, diff_id)?;
        let index = self.store.get(Section::Index, diff_id)?;
        let (blob, size) = (desc.digest.clone(), desc.size);
        // Just adopted from a published index: as parsed then (its blob and
        // diff_id were checked against this layer's).
        let fresh = self
            .take_fresh_index(diff_id)
            .filter(|ix| ix.blob == blob && ix.spans.compressed_size == size);
        let loaded = crate::blocking::run(move || {
            if let Some(ix) = fresh {
                return Ok((ix.tree.clone(), ix.spans.clone(), ix.windows.clone()));
            }
            let (for_blob, ix, windows) = index_file::decode_stored(&std::fs::read(spans)?)?;
            if for_blob != blob || ix.compressed_size != size {
                return Err(Error::invalid(format!(
                    "span index is for blob {for_blob} ({} bytes)",
                    ix.compressed_size
                )));
            }
            let tree: Tree = serde_json::from_slice(&std::fs::read(index)?)
                .map_err(|e| Error::invalid(format!("cached layer index: {e}")))?;
            Ok((tree, ix, windows))
        })
        .await;
        match loaded {
            Ok((tree, ix, windows)) => {
                tracing::info!(
                    digest = %desc.digest, %diff_id, checkpoints = ix.checkpoints.len(),
                    "layer tar not cached: serving it by its span index"
                );
                Some((
                    tree,
                    SpanLayer {
                        repo: repo.to_string(),
                        blob: desc.clone(),
                        diff_id: diff_id.clone(),
                        index: Arc::new(ix),
                        windows: windows.map(Arc::new),
                    },
                ))
            }
            Err(e) => {
                tracing::warn!(digest = %desc.digest, %diff_id, error = %e, "span index unusable; serving the layer whole");
                None
            }
        }
    }

    /// [`Content::read_spans`] for a read `[start, end)` of a file whose
    /// tar extent is `file`: the spans of the whole file when it is at most
    /// [`WHOLE_FILE_SPANS`] long, else those of the read.
    pub async fn read_file_spans(
        &self,
        layer: &SpanLayer,
        file: (u64, u64),
        start: u64,
        end: u64,
    ) -> Result<SpanView> {
        let whole = file.0 <= start && end <= file.1 && file.1 - file.0 <= WHOLE_FILE_SPANS;
        match whole {
            true => self.read_spans(layer, file.0, file.1).await,
            false => self.read_spans(layer, start, end).await,
        }
    }

    /// The verified spans covering uncompressed tar bytes `[start, end)` of
    /// `layer`, from the chunk cache or fetched. A span failing verification
    /// fails the read (EIO) and nothing of it is cached.
    pub async fn read_spans(&self, layer: &SpanLayer, start: u64, end: u64) -> Result<SpanView> {
        if self.index_revoked(&layer.diff_id) {
            return Err(Error::DigestMismatch {
                what: format!(
                    "layer {}: its published index did not match the layer (revoked)",
                    layer.blob.digest
                ),
                expected: layer.diff_id.to_string(),
                actual: "a different tree or spans".into(),
            });
        }
        let ix = &layer.index;
        let Some((first, last)) = ix.spans_covering(start, end) else {
            return Ok(SpanView::default());
        };
        let kind = SpanKind {
            content: self,
            layer,
        };
        let wanted: Vec<usize> = (first..=last).collect();
        let data = self.pieces(&kind, &wanted, MAX_RUN_SPANS).await?;
        Ok(SpanView {
            parts: wanted
                .into_iter()
                .zip(data)
                .map(|(i, p)| {
                    let (s, e) = ix.span(i);
                    (s, e - s, p)
                })
                .collect(),
        })
    }
}

/// The uncompressed tar range `[start, end)` a read of `len` bytes at
/// `offset` of `node` needs (`None`: no tar bytes).
pub fn tar_range(node: &layer::Node, offset: u64, len: u64) -> Option<(u64, u64)> {
    let end = node.size.min(offset.saturating_add(len));
    if offset >= end {
        return None;
    }
    match &node.content {
        layer::FileData::Tar { offset: base, .. } => {
            Some((base.saturating_add(offset), base.saturating_add(end)))
        }
        layer::FileData::Sparse { segments, .. } => {
            let mut r: Option<(u64, u64)> = None;
            for s in segments {
                let (from, to) = (
                    s.logical.max(offset),
                    s.logical.saturating_add(s.len).min(end),
                );
                if from < to {
                    let (a, b) = (s.raw + (from - s.logical), s.raw + (to - s.logical));
                    r = Some(r.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
                }
            }
            r
        }
        _ => None,
    }
}
