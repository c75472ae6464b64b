//! Content fetched many keys at a time: chunks of lazy layers and spans of
//! gzip layers. Each piece is kept in the store's chunk cache by its digest;
//! the missing ones are fetched in runs of adjacent blob extents (one Range
//! request each), verified one by one, committed, and only then served.
//! The same steps as [`super::once`], for a set of keys: store →
//! single flight per digest → store → fetch and verify → commit.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::telemetry::InFlight;

/// A verified piece: fresh from the network, or in the store.
pub(super) enum PieceData {
    /// Just fetched and verified.
    Mem(Arc<Vec<u8>>),
    /// From the chunk cache (verified when it was committed).
    File(File),
}

impl PieceData {
    /// Read up to `buf.len()` bytes at `at`; fewer only at the end.
    pub(super) fn read_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
        match self {
            PieceData::Mem(v) => {
                let from = (at as usize).min(v.len());
                let n = buf.len().min(v.len() - from);
                buf[..n].copy_from_slice(&v[from..from + n]);
                Ok(n)
            }
            PieceData::File(f) => FileExt::read_at(f, buf, at),
        }
    }

    /// Fill `buf` from `at`, or fail.
    pub(super) fn read_exact_at(&self, buf: &mut [u8], at: u64) -> std::io::Result<()> {
        match self {
            PieceData::File(f) => f.read_exact_at(buf, at),
            PieceData::Mem(_) => {
                if self.read_at(buf, at)? == buf.len() {
                    Ok(())
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                }
            }
        }
    }
}

/// The verified data of a run's first pieces, and why it stopped short.
pub(super) type Verified = (Vec<Vec<u8>>, Option<Error>);

/// One kind of piece: how it is named, where it lies in the blob, and how a
/// run of them is fetched and verified.
pub(super) trait PieceKind: Sync {
    /// A piece as the kind names it (a chunk, a span number).
    type Piece: Clone + Send + Sync;

    /// The digest it is verified against and stored under.
    fn digest<'s>(&'s self, piece: &'s Self::Piece) -> &'s Digest;

    /// Its extent `[start, end)` for grouping into runs: pieces whose
    /// extents touch or overlap share a Range request.
    fn extent(&self, piece: &Self::Piece) -> (u64, u64);

    /// Fetch `run` (sorted, adjacent) in one request and verify each piece,
    /// in `run` order: the verified data of a prefix of `run`, and the error
    /// that stopped verification before its end, if any (the verified prefix
    /// is still committed). Logs `fetched …` and rejections.
    fn fetch_run<'a>(&'a self, run: &'a [Self::Piece]) -> BoxFuture<'a, Result<Verified>>;

    /// Fetch several runs (as [`PieceKind::fetch_run`] each, one result per
    /// run); a kind whose runs can share a request (a multi-range request)
    /// does so. By default, one run after the other.
    fn fetch_runs<'a>(
        &'a self,
        runs: &'a [Vec<Self::Piece>],
    ) -> BoxFuture<'a, Result<Vec<Verified>>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(runs.len());
            for run in runs {
                out.push(self.fetch_run(run).await?);
            }
            Ok(out)
        })
    }
}

/// Most runs fetched together by one [`PieceKind::fetch_runs`].
pub(super) const MAX_BATCH_RUNS: usize = 32;

/// The chunk cache file of `d`, if present (and not evicted meanwhile).
pub(super) fn cached(store: &Store, d: &Digest) -> Option<File> {
    File::open(store.get(Section::Chunk, d)?).ok()
}

/// The verified data of `wanted` (in order), fetching what the store lacks
/// in runs of at most `max_run` (extent units); `in_flight` counts each
/// run's fetch. `log_hit` is called for each piece found in the store.
pub(super) async fn get<K: PieceKind>(
    store: &Arc<Store>,
    in_flight: &InFlight,
    kind: &K,
    wanted: &[K::Piece],
    max_run: u64,
    log_hit: impl Fn(&Digest, &File, Instant),
) -> Result<Vec<PieceData>> {
    let lookup = |p: &K::Piece| {
        let started = Instant::now();
        let d = kind.digest(p);
        cached(store, d).inspect(|f| log_hit(d, f, started))
    };
    let mut out: Vec<Option<PieceData>> = wanted
        .iter()
        .map(|p| lookup(p).map(PieceData::File))
        .collect();
    if out.iter().all(Option::is_some) {
        return Ok(out.into_iter().flatten().collect());
    }
    let missing: Vec<&Digest> = wanted
        .iter()
        .zip(&out)
        .filter(|(_, o)| o.is_none())
        .map(|(p, _)| kind.digest(p))
        .collect();
    // One fetch per digest.
    let guards = store.chunk_flights(missing).await;
    let mut fetch: Vec<K::Piece> = Vec::new();
    for (p, o) in wanted.iter().zip(out.iter_mut()) {
        if o.is_none() {
            *o = lookup(p).map(PieceData::File);
            if o.is_none() && !fetch.iter().any(|f| kind.digest(f) == kind.digest(p)) {
                fetch.push(p.clone());
            }
        }
    }
    fetch.sort_by_key(|p| kind.extent(p));
    let mut fetched: HashMap<Digest, Arc<Vec<u8>>> = HashMap::new();
    let all: Vec<Vec<K::Piece>> = runs(&fetch, |p| kind.extent(p), max_run)
        .into_iter()
        .map(|r| r.into_iter().cloned().collect())
        .collect();
    let span = |r: &Vec<K::Piece>| {
        let (s, _) = kind.extent(&r[0]);
        r.iter().map(|p| kind.extent(p).1).max().unwrap_or(s) - s
    };
    for batch in batches(&all, span, max_run) {
        let results = {
            let _in_flight = in_flight.enter();
            kind.fetch_runs(batch).await?
        };
        for (run, (data, rejected)) in batch.iter().zip(results) {
            let digests: Vec<Digest> = run.iter().map(|p| kind.digest(p).clone()).collect();
            fetched.extend(commit(store, digests, data).await?);
            if let Some(e) = rejected {
                return Err(e);
            }
            if run.iter().any(|p| !fetched.contains_key(kind.digest(p))) {
                return Err(Error::invalid("a run of pieces came back short"));
            }
        }
    }
    drop(guards);
    Ok(wanted
        .iter()
        .zip(out)
        .map(|(p, o)| o.unwrap_or_else(|| PieceData::Mem(fetched[kind.digest(p)].clone())))
        .collect())
}

impl super::Content {
    /// [`get`] with this content's store and fetch counter, no hit logging.
    pub(super) async fn pieces<K: PieceKind>(
        &self,
        kind: &K,
        wanted: &[K::Piece],
        max_run: u64,
    ) -> Result<Vec<PieceData>> {
        get(
            &self.store,
            &self.in_flight,
            kind,
            wanted,
            max_run,
            |_, _, _| {},
        )
        .await
    }
}

/// Commit verified pieces to the chunk cache (off the async workers).
async fn commit(
    store: &Arc<Store>,
    digests: Vec<Digest>,
    data: Vec<Vec<u8>>,
) -> Result<Vec<(Digest, Arc<Vec<u8>>)>> {
    let store = store.clone();
    crate::blocking::run(move || {
        let mut out = Vec::with_capacity(data.len());
        for (d, v) in digests.into_iter().zip(data) {
            store.put(Section::Chunk, &d, &v)?;
            out.push((d, Arc::new(v)));
        }
        Ok(out)
    })
    .await
}

/// Split `items` (sorted by extent) into runs of touching or overlapping
/// extents, each spanning at most `max_len` from its first start to its
/// furthest end.
pub(super) fn runs<T>(
    items: &[T],
    extent: impl Fn(&T) -> (u64, u64),
    max_len: u64,
) -> Vec<Vec<&T>> {
    let mut out: Vec<(u64, u64, Vec<&T>)> = Vec::new();
    for item in items {
        let (s, e) = extent(item);
        if let Some((start, end, run)) = out.last_mut() {
            let new_end = (*end).max(e);
            if s <= *end && new_end - *start <= max_len {
                *end = new_end;
                run.push(item);
                continue;
            }
        }
        out.push((s, e, vec![item]));
    }
    out.into_iter().map(|(_, _, r)| r).collect()
}

/// Consecutive groups of `runs`, each at most [`MAX_BATCH_RUNS`] runs whose
/// lengths (by `len`) sum to at most `max_len` (a longer run goes alone).
pub(super) fn batches<T>(runs: &[T], len: impl Fn(&T) -> u64, max_len: u64) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut total) = (0, 0u64);
    for (i, r) in runs.iter().enumerate() {
        let l = len(r);
        if i > start && (i - start >= MAX_BATCH_RUNS || total + l > max_len) {
            out.push(&runs[start..i]);
            (start, total) = (i, 0);
        }
        total += l;
    }
    if start < runs.len() {
        out.push(&runs[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_coalesce_touching_extents_up_to_a_length() {
        let ext = [(0, 10), (10, 15), (15, 20), (40, 50), (40, 50), (50, 150)];
        let shape = |max| -> Vec<usize> { runs(&ext, |e| *e, max).iter().map(Vec::len).collect() };
        assert_eq!(shape(1000), [3, 3]);
        assert_eq!(shape(60), [3, 2, 1]);
        // Span numbers as unit extents: consecutive ones, at most 4 a run.
        let spans = [1u64, 2, 3, 5, 6, 7, 8, 9, 10];
        let r: Vec<Vec<u64>> = runs(&spans, |&i| (i, i + 1), 4)
            .into_iter()
            .map(|r| r.into_iter().copied().collect())
            .collect();
        assert_eq!(r, vec![vec![1, 2, 3], vec![5, 6, 7, 8], vec![9, 10]]);
        assert!(runs(&[] as &[u64], |&i| (i, i + 1), 4).is_empty());
    }

    #[test]
    fn batches_bound_runs_and_length() {
        let shape = |lens: &[u64], max| -> Vec<usize> {
            batches(lens, |l| *l, max).iter().map(|b| b.len()).collect()
        };
        assert_eq!(shape(&[1, 2, 3, 4], 100), [4]);
        assert_eq!(shape(&[5, 5, 5, 5], 10), [2, 2]);
        // A run longer than the bound goes alone.
        assert_eq!(shape(&[3, 20, 3], 10), [1, 1, 1]);
        let many = vec![1u64; MAX_BATCH_RUNS * 2 + 1];
        assert_eq!(shape(&many, u64::MAX), [MAX_BATCH_RUNS, MAX_BATCH_RUNS, 1]);
        assert!(shape(&[], 10).is_empty());
    }

    #[test]
    fn piece_data_reads_the_same_from_memory_and_file() {
        use std::io::Write;
        let data: Vec<u8> = (0..=255).collect();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&data).unwrap();
        for p in [PieceData::Mem(Arc::new(data.clone())), PieceData::File(f)] {
            let mut buf = [0u8; 10];
            p.read_exact_at(&mut buf, 250).unwrap_err();
            assert_eq!(p.read_at(&mut buf, 250).unwrap(), 6);
            assert_eq!(&buf[..6], &data[250..]);
            p.read_exact_at(&mut buf, 100).unwrap();
            assert_eq!(&buf, &data[100..110]);
        }
    }
}
