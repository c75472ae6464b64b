//! Reading lazily served files: a read fetches only the chunks it overlaps
//! (adjacent chunks in one Range request), decompresses and verifies each
//! against its digest from the verified TOC, and keeps it in the store by
//! that digest (shared by every layer and image). Nothing unverified is
//! returned or stored. Prefetch and background fetch use the same path,
//! throttled, and never hold up a foreground read for more than one chunk run.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::lazy::{LazyLayer, LazyOptions, RemoteLayer};
use super::Content;
use crate::cache::{Kind, Store};
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::estargz::decode_chunk;
use crate::layer::Chunk;
use crate::registry::Client;
use crate::telemetry::InFlight;

/// Largest run of adjacent chunks fetched by one Range request.
const MAX_RUN: u64 = 8 << 20;
/// Largest run a background fetch takes at once (bounds how long it holds chunks).
const MAX_BACKGROUND_RUN: u64 = 2 << 20;

/// A verified chunk: fresh from the network or in the store.
enum ChunkData {
    Mem(Arc<Vec<u8>>),
    File(File),
}

/// Fetches, verifies and stores chunks.
#[derive(Clone)]
pub(crate) struct Fetcher {
    client: Client,
    store: Arc<Store>,
    in_flight: InFlight,
}

impl Fetcher {
    fn cached(&self, d: &Digest) -> Option<File> {
        let started = Instant::now();
        let f = File::open(self.store.get(Kind::Chunk, d)?).ok()?;
        tracing::debug!(
            digest = %d, bytes = f.metadata().map(|m| m.len()).unwrap_or(0),
            ms = started.elapsed().as_millis() as u64, cache = "hit", "cache hit chunk"
        );
        Some(f)
    }

    /// Make sure `needed` is in the store, verified (prefetch).
    pub(super) async fn warm(&self, layer: &RemoteLayer, needed: &[&Chunk]) -> Result<()> {
        self.get(layer, needed).await.map(drop)
    }

    /// The verified data of `needed` (in order), fetching what the store lacks.
    async fn get(&self, layer: &RemoteLayer, needed: &[&Chunk]) -> Result<Vec<ChunkData>> {
        let mut out: Vec<Option<ChunkData>> = needed
            .iter()
            .map(|c| self.cached(&c.digest).map(ChunkData::File))
            .collect();
        if out.iter().all(Option::is_some) {
            return Ok(out.into_iter().flatten().collect());
        }
        let missing: Vec<&Digest> = needed
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .map(|(c, _)| &c.digest)
            .collect();
        // One fetch per chunk digest.
        let guards = self.store.chunk_flights(missing).await;
        let mut fetch: Vec<&Chunk> = Vec::new();
        for (c, o) in needed.iter().zip(out.iter_mut()) {
            if o.is_none() {
                *o = self.cached(&c.digest).map(ChunkData::File);
                if o.is_none() && !fetch.iter().any(|f| f.digest == c.digest) {
                    fetch.push(c);
                }
            }
        }
        fetch.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        let fetched = self.fetch(layer, &fetch, MAX_RUN).await?;
        drop(guards);
        Ok(needed
            .iter()
            .zip(out)
            .map(|(c, o)| o.unwrap_or_else(|| ChunkData::Mem(fetched[&c.digest].clone())))
            .collect())
    }

    /// Fetch `chunks` (sorted by blob offset), coalescing adjacent ones into
    /// runs of at most `max_run` bytes; verify and store each.
    async fn fetch(
        &self,
        layer: &RemoteLayer,
        chunks: &[&Chunk],
        max_run: u64,
    ) -> Result<HashMap<Digest, Arc<Vec<u8>>>> {
        let mut out = HashMap::new();
        for run in runs(chunks, max_run) {
            let start = run[0].blob_offset;
            let end = run
                .iter()
                .map(|c| c.blob_offset + c.blob_len)
                .max()
                .unwrap_or(start);
            let _in_flight = self.in_flight.enter();
            let started = Instant::now();
            let bytes = self
                .client
                .blob_range(&layer.repo, &layer.blob.digest, start, end - start)
                .await?;
            tracing::info!(
                digest = %layer.blob.digest, offset = start, bytes = bytes.len(), chunks = run.len(),
                ms = started.elapsed().as_millis() as u64, cache = "miss", "fetched chunks"
            );
            let (format, store) = (layer.format, self.store.clone());
            let run: Vec<Chunk> = run.iter().map(|c| (*c).clone()).collect();
            let blob = layer.blob.digest.clone();
            let decoded = tokio::task::spawn_blocking(move || -> Result<Vec<(Digest, Vec<u8>)>> {
                let mut v = Vec::with_capacity(run.len());
                for c in &run {
                    let from = (c.blob_offset - start) as usize;
                    let to = ((c.blob_offset + c.blob_len - start) as usize).min(bytes.len());
                    let data =
                        decode_chunk(format, &bytes[from.min(to)..to], c).inspect_err(|e| {
                            tracing::error!(
                                blob = %blob, chunk = %c.digest, error = %e,
                                "chunk failed verification; not served, not cached"
                            );
                        })?;
                    store.put(Kind::Chunk, &c.digest, &data)?;
                    v.push((c.digest.clone(), data));
                }
                Ok(v)
            })
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
            for (d, data) in decoded {
                out.insert(d, Arc::new(data));
            }
        }
        Ok(out)
    }
}

/// Split `chunks` (sorted by blob offset) into runs of adjacent extents.
pub(super) fn runs<'a>(chunks: &[&'a Chunk], max_run: u64) -> Vec<Vec<&'a Chunk>> {
    let mut out: Vec<Vec<&Chunk>> = Vec::new();
    for c in chunks {
        if let Some(run) = out.last_mut() {
            let start = run[0].blob_offset;
            let end = run
                .iter()
                .map(|x| x.blob_offset + x.blob_len)
                .max()
                .unwrap_or(start);
            let adjacent = c.blob_offset <= end;
            let new_end = end.max(c.blob_offset + c.blob_len);
            if adjacent && new_end - start <= max_run {
                run.push(c);
                continue;
            }
        }
        out.push(vec![c]);
    }
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

/// Throttled fetching of chunks nobody asked for yet.
pub(crate) struct Background {
    permits: Arc<Semaphore>,
    /// Token bucket: when the next background byte may be fetched.
    next: Arc<Mutex<Instant>>,
    bandwidth: u64,
    /// Blobs already scheduled in this process.
    scheduled: Mutex<HashSet<Digest>>,
}

impl Background {
    pub(crate) fn new(opts: &LazyOptions) -> Background {
        Background {
            permits: Arc::new(Semaphore::new(opts.background_concurrency.max(1))),
            next: Arc::new(Mutex::new(Instant::now())),
            bandwidth: opts.background_bandwidth,
            scheduled: Mutex::new(HashSet::new()),
        }
    }
}

impl Content {
    pub(super) fn fetcher(&self) -> Fetcher {
        Fetcher {
            client: self.client.clone(),
            store: self.store.clone(),
            in_flight: self.in_flight.clone(),
        }
    }

    /// Read up to `len` bytes at `offset` of a lazily served file of `size`
    /// bytes made of `chunks` in `layer`. Only verified bytes are returned; a
    /// chunk that fails verification fails the read (EIO).
    pub async fn read_chunks(
        &self,
        layer: &RemoteLayer,
        chunks: &[Chunk],
        size: u64,
        offset: u64,
        len: u32,
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
        let data = self.fetcher().get(layer, &needed).await?;
        let spans: Vec<(u64, u64)> = needed.iter().map(|c| (c.file_offset, c.size)).collect();
        tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
            let mut out = vec![0u8; (end - offset) as usize];
            for ((start, csize), d) in spans.into_iter().zip(data) {
                let from = offset.max(start);
                let to = end.min(start + csize);
                let dst = &mut out[(from - offset) as usize..(to - offset) as usize];
                let at = from - start;
                match d {
                    ChunkData::Mem(v) => {
                        dst.copy_from_slice(&v[at as usize..(at as usize + dst.len())])
                    }
                    ChunkData::File(f) => f.read_exact_at(dst, at).map_err(|e| {
                        Error::Io(std::io::Error::new(e.kind(), format!("cached chunk: {e}")))
                    })?,
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
    }

    /// After a lazy layer is opened: prefetch its prioritised files (those
    /// before `.prefetch.landmark`), and with `--background-fetch` the rest,
    /// through the background throttle. Once per blob per process.
    pub(crate) fn schedule_background(&self, layer: &Arc<RemoteLayer>, l: &LazyLayer) {
        let all = self.lazy.opts.background_fetch;
        if l.prefetch_end.is_none() && !all {
            return;
        }
        if !self
            .lazy
            .background
            .scheduled
            .lock()
            .unwrap()
            .insert(layer.blob.digest.clone())
        {
            return;
        }
        let chunks = super::prefetch::all_chunks(&l.tree);
        let (prio, rest): (Vec<Chunk>, Vec<Chunk>) = chunks
            .into_iter()
            .partition(|c| l.prefetch_end.is_some_and(|p| c.blob_offset < p));
        let mut order = prio;
        if all {
            order.extend(rest);
        }
        let fetcher = self.fetcher();
        let bg = &self.lazy.background;
        let (permits, next, bandwidth) = (bg.permits.clone(), bg.next.clone(), bg.bandwidth);
        let layer = layer.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let refs: Vec<&Chunk> = order.iter().collect();
            let runs = runs(&refs, MAX_BACKGROUND_RUN);
            let mut tasks = Vec::new();
            let total = runs.len();
            for run in runs {
                let permit = permits.clone().acquire_owned().await;
                let bytes: u64 = run.iter().map(|c| c.blob_len).sum();
                if bandwidth > 0 {
                    let wait = {
                        let mut next = next.lock().unwrap();
                        let now = Instant::now();
                        let start = (*next).max(now);
                        *next = start + Duration::from_secs_f64(bytes as f64 / bandwidth as f64);
                        start - now
                    };
                    tokio::time::sleep(wait).await;
                }
                let (fetcher, layer) = (fetcher.clone(), layer.clone());
                let run: Vec<Chunk> = run.into_iter().cloned().collect();
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let refs: Vec<&Chunk> = run.iter().collect();
                    if let Err(e) = fetcher.get(&layer, &refs).await {
                        tracing::warn!(blob = %layer.blob.digest, error = %e, "background fetch of a chunk run failed");
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            tracing::info!(
                blob = %layer.blob.digest, runs = total,
                ms = started.elapsed().as_millis() as u64, "background fetch done"
            );
        });
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

    #[test]
    fn runs_coalesce_adjacent_extents() {
        let cs = [
            c(0, 10),
            c(10, 5),
            c(15, 5),
            c(40, 10),
            c(40, 10),
            c(50, 100),
        ];
        let refs: Vec<&Chunk> = cs.iter().collect();
        let r = runs(&refs, 1000);
        let shape: Vec<usize> = r.iter().map(Vec::len).collect();
        assert_eq!(shape, [3, 3]);
        let r = runs(&refs, 60);
        let shape: Vec<usize> = r.iter().map(Vec::len).collect();
        assert_eq!(shape, [3, 2, 1]);
    }
}
