//! Reading lazily served files (eStargz, zstd:chunked): a read fetches only
//! the chunks it overlaps (adjacent chunks in one Range request),
//! decompresses and verifies each against its digest from the verified TOC,
//! and keeps it in the store by that digest (shared by every layer and
//! image). Nothing unverified is returned or stored. Chunks are pieces of the
//! fetch-once path ([`super::pieces`]); prefetch and background fetch use
//! the same path.

use std::collections::HashSet;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use super::pieces::{self, PieceKind, Verified};
use super::Content;
use crate::cache::Store;
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::estargz::{decode_chunk, Format};
use crate::image::BlobRef;
use crate::layer::{Chunk, FileData, Tree};
use crate::registry::RegistryApi;
use crate::telemetry::InFlight;

/// Largest run of adjacent chunks fetched by one Range request.
pub(super) const MAX_RUN: u64 = 8 << 20;

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

/// Chunks of one lazy layer as pieces: fetched by blob range, decoded and
/// verified against their TOC digests.
struct ChunkKind<'a> {
    client: &'a dyn RegistryApi,
    layer: &'a RemoteLayer,
}

impl PieceKind for ChunkKind<'_> {
    type Piece = Chunk;

    fn digest<'s>(&'s self, c: &'s Chunk) -> &'s Digest {
        &c.digest
    }

    fn extent(&self, c: &Chunk) -> (u64, u64) {
        extent(c)
    }

    fn fetch_run<'a>(&'a self, run: &'a [Chunk]) -> BoxFuture<'a, Result<Verified>> {
        Box::pin(async move {
            let mut v = self.fetch(&[run]).await?;
            Ok(v.pop().unwrap_or_default())
        })
    }

    fn fetch_runs<'a>(&'a self, runs: &'a [Vec<Chunk>]) -> BoxFuture<'a, Result<Vec<Verified>>> {
        Box::pin(async move {
            let runs: Vec<&[Chunk]> = runs.iter().map(Vec::as_slice).collect();
            self.fetch(&runs).await
        })
    }
}

impl ChunkKind<'_> {
    /// Fetch `runs` (each sorted, adjacent) by one request (a multi-range
    /// one for several), then decode and verify each run's chunks.
    async fn fetch(&self, runs: &[&[Chunk]]) -> Result<Vec<Verified>> {
        let layer = self.layer;
        let ranges: Vec<(u64, u64)> = runs
            .iter()
            .map(|run| {
                let start = run[0].blob_offset;
                let end = run.iter().map(|c| extent(c).1).max().unwrap_or(start);
                (start, end - start)
            })
            .collect();
        let started = Instant::now();
        let parts = self
            .client
            .blob_ranges(&layer.repo, &layer.blob.digest, &ranges)
            .await?;
        tracing::info!(
            digest = %layer.blob.digest, offset = ranges[0].0, ranges = ranges.len(),
            bytes = parts.iter().map(|p| p.len()).sum::<usize>(),
            chunks = runs.iter().map(|r| r.len()).sum::<usize>(),
            ms = started.elapsed().as_millis() as u64, cache = "miss", "fetched chunks"
        );
        // The batch's chunks (several files) decoded on every core, as
        // separate requests were: in as many blocking tasks as there are
        // cores, each a contiguous group (a whole-layer prefetch is
        // thousands of chunks, not thousands of tasks).
        let jobs: Vec<(Chunk, Bytes)> = runs
            .iter()
            .zip(&ranges)
            .zip(&parts)
            .flat_map(|((run, &(start, _)), bytes)| {
                run.iter().map(move |c| {
                    let from = ((c.blob_offset - start) as usize).min(bytes.len());
                    let to = ((c.blob_offset + c.blob_len - start) as usize).min(bytes.len());
                    (c.clone(), bytes.slice(from.min(to)..to))
                })
            })
            .collect();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_task = jobs.len().div_ceil(cores);
        let mut jobs = jobs.into_iter();
        let mut tasks = Vec::new();
        let format = layer.format;
        loop {
            let group: Vec<(Chunk, Bytes)> = jobs.by_ref().take(per_task).collect();
            if group.is_empty() {
                break;
            }
            tasks.push(crate::blocking::run(move || {
                Ok(group
                    .iter()
                    .map(|(c, bytes)| decode_chunk(format, bytes, c))
                    .collect::<Vec<_>>())
            }));
        }
        let mut decoded = futures_util::future::try_join_all(tasks)
            .await?
            .into_iter()
            .flatten();
        Ok(runs
            .iter()
            .map(|run| {
                let results = decoded.by_ref().take(run.len()).collect();
                verified_prefix(&layer.blob.digest, run, results)
            })
            .collect())
    }
}

/// The verified data of a prefix of `run`, given each chunk's decoding, and
/// the error that stopped it (logged).
fn verified_prefix(blob: &Digest, run: &[Chunk], results: Vec<Result<Vec<u8>>>) -> Verified {
    let mut v = Vec::with_capacity(run.len());
    for (c, r) in run.iter().zip(results) {
        match r {
            Ok(data) => v.push(data),
            Err(e) => {
                tracing::error!(
                    blob = %blob, chunk = %c.digest, error = %e,
                    "chunk failed verification; not served, not cached"
                );
                return (v, Some(e));
            }
        }
    }
    (v, None)
}

/// The blob bytes `[start, end)` chunk `c` is stored in.
pub(super) fn extent(c: &Chunk) -> (u64, u64) {
    (c.blob_offset, c.blob_offset + c.blob_len)
}

/// The verified data of `needed` (in order) of `layer`, fetching what the
/// store lacks in runs of at most `max_run` bytes.
pub(super) async fn get(
    client: &dyn RegistryApi,
    store: &Arc<Store>,
    in_flight: &InFlight,
    layer: &RemoteLayer,
    needed: &[Chunk],
    max_run: u64,
) -> Result<Vec<pieces::PieceData>> {
    let kind = ChunkKind { client, layer };
    pieces::get(store, in_flight, &kind, needed, max_run, |d, f, started| {
        tracing::debug!(
            digest = %d, bytes = f.metadata().map(|m| m.len()).unwrap_or(0),
            ms = started.elapsed().as_millis() as u64, cache = "hit", "cache hit chunk"
        );
    })
    .await
}

/// Every chunk of a lazy layer's tree with data to fetch (holes have none),
/// once each, in blob order.
pub(super) fn all_chunks(tree: &Tree) -> Vec<Chunk> {
    let mut seen = HashSet::new();
    let mut out: Vec<Chunk> = Vec::new();
    for n in tree.nodes() {
        if let FileData::Chunks { chunks, .. } = &n.content {
            for c in chunks.iter().filter(|c| !c.zeros) {
                if seen.insert(c.digest.clone()) {
                    out.push(c.clone());
                }
            }
        }
    }
    out.sort_by_key(|c| (c.blob_offset, c.inner_offset));
    out
}

/// Holes (zstd:chunked `"zeros"` chunks) whose digest was seen to be that of
/// their size in zero bytes. Nothing is fetched for a hole, but its digest
/// from the TOC is checked like any chunk's before its zeros are served:
/// once per (digest, size), since the one determines the other.
#[derive(Default)]
pub(crate) struct Holes {
    checked: Mutex<HashSet<(Digest, u64)>>,
}

/// Most (digest, size) pairs remembered before starting over.
const MAX_HOLES: usize = 1 << 16;

impl Holes {
    /// `Ok` if `hole`'s digest is that of `hole.size` zero bytes; else a
    /// [`Error::DigestMismatch`] (EIO for the reader).
    pub(crate) async fn check(&self, hole: &Chunk) -> Result<()> {
        let key = (hole.digest.clone(), hole.size);
        if self.checked.lock().unwrap().contains(&key) {
            return Ok(());
        }
        let (algorithm, size) = (hole.digest.algorithm(), hole.size);
        let actual = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
            let mut h = HashingWriter::new(std::io::sink(), algorithm);
            std::io::copy(&mut std::io::repeat(0).take(size), &mut h)?;
            Ok(h.finish().1)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        actual.expect(&hole.digest, &format!("hole of {size} zero bytes"))?;
        let mut checked = self.checked.lock().unwrap();
        if checked.len() >= MAX_HOLES {
            checked.clear();
        }
        checked.insert(key);
        Ok(())
    }
}

impl Content {
    /// Fetch, verify and keep those of `chunks` (of `layer`; holes skipped)
    /// the store lacks, in as few requests as they allow: the chunks of
    /// several files at once, as the warming asks.
    pub async fn fetch_chunks(&self, layer: &RemoteLayer, chunks: &[Chunk]) -> Result<()> {
        let fetch: Vec<Chunk> = chunks.iter().filter(|c| !c.zeros).cloned().collect();
        self.chunk_pieces(layer, &fetch).await.map(drop)
    }

    /// [`get`] with this content's client, store and fetch counter.
    async fn chunk_pieces(
        &self,
        layer: &RemoteLayer,
        chunks: &[Chunk],
    ) -> Result<Vec<pieces::PieceData>> {
        get(
            &*self.client,
            &self.store,
            &self.in_flight,
            layer,
            chunks,
            MAX_RUN,
        )
        .await
    }

    /// Read up to `len` bytes at `offset` of a lazily served file of `size`
    /// bytes made of `chunks` in `layer`. Only verified bytes are returned; a
    /// chunk that fails verification fails the read (EIO). With
    /// `whole_file`, every chunk of the file is fetched (in as few requests
    /// as they allow) and kept, though only the read's bytes are returned.
    pub async fn read_chunks(
        &self,
        layer: &RemoteLayer,
        chunks: &[Chunk],
        size: u64,
        (offset, len): (u64, u32),
        whole_file: bool,
    ) -> Result<Vec<u8>> {
        let end = size.min(offset.saturating_add(len as u64));
        if offset >= end {
            return Ok(Vec::new());
        }
        let first = chunks.partition_point(|c| c.file_offset + c.size <= offset);
        let (holes, needed): (Vec<&Chunk>, Vec<&Chunk>) = chunks[first..]
            .iter()
            .take_while(|c| c.file_offset < end)
            .partition(|c| c.zeros);
        // Holes are zeros in `out` already, once their digest is seen to match.
        for h in holes {
            self.lazy.holes.check(h).await?;
        }
        let needed: Vec<Chunk> = needed.into_iter().cloned().collect();
        let fetch: Vec<Chunk> = match whole_file {
            true => chunks.iter().filter(|c| !c.zeros).cloned().collect(),
            false => needed.clone(),
        };
        let fetched = self.chunk_pieces(layer, &fetch).await?;
        // The read's own chunks, in order, out of those fetched.
        let data: Vec<pieces::PieceData> = fetch
            .iter()
            .zip(fetched)
            .filter(|(c, _)| c.file_offset < end && c.file_offset + c.size > offset)
            .map(|(_, d)| d)
            .collect();
        let spans: Vec<(u64, u64)> = needed.iter().map(|c| (c.file_offset, c.size)).collect();
        crate::blocking::run(move || {
            let mut out = vec![0u8; (end - offset) as usize];
            for ((start, csize), d) in spans.into_iter().zip(data) {
                let from = offset.max(start);
                let to = end.min(start + csize);
                let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
                d.read_exact_at(dst, from - start).map_err(|e| {
                    Error::Io(std::io::Error::new(e.kind(), format!("cached chunk: {e}")))
                })?;
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(off: u64, len: u64) -> Chunk {
        Chunk {
            file_offset: 0,
            size: 1,
            blob_offset: off,
            blob_len: len,
            inner_offset: 0,
            digest: Digest::sha256_of(&off.to_le_bytes()),
            zeros: false,
        }
    }

    #[tokio::test]
    async fn holes_are_served_only_when_their_digest_is_that_of_zeros() {
        let holes = Holes::default();
        let hole = |size: u64, digest: Digest| Chunk {
            size,
            digest,
            zeros: true,
            ..c(0, 0)
        };
        let size = (64 << 10) + 17;
        let right = hole(size, Digest::sha256_of(&vec![0u8; size as usize]));
        holes.check(&right).await.unwrap();
        holes.check(&right).await.unwrap();
        let wrong = hole(size, Digest::sha256_of(b"not zeros"));
        let e = holes.check(&wrong).await.unwrap_err();
        assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
        // The right digest for another size is wrong for this one.
        let other = hole(size - 1, right.digest.clone());
        assert!(holes.check(&other).await.is_err());
    }
}
