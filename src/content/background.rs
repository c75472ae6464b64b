//! Fetching chunks nobody asked for yet, after a lazy layer's TOC is
//! loaded:
//!
//! - its **prioritised files** (those before `.prefetch.landmark`, the list
//!   the image was built with) at once, as stargz-snapshotter does when it
//!   mounts a layer: runs of at most [`PRIORITY_RUN`] bytes, up to
//!   [`PRIORITY_CONCURRENCY`] Range requests at a time over all layers, not
//!   throttled (the workload is about to read them);
//! - with `--background-fetch`, **the rest** through a token bucket
//!   (`--background-bandwidth`) and a bound on concurrent Range requests.
//!
//! Both go through the fetch-once path, so a foreground read of a chunk
//! being prefetched waits for that one run and is never fetched twice, and
//! nothing unverified is stored.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;

use super::chunks::{self, RemoteLayer};
use super::pieces::runs;
use super::throttle::Bucket;
use super::Content;
use crate::cache::Store;
use crate::digest::Digest;
use crate::layer::{Chunk, Tree};
use crate::registry::RegistryApi;
use crate::telemetry::InFlight;

/// Largest run a background fetch takes at once (bounds how long it holds chunks).
const MAX_BACKGROUND_RUN: u64 = 2 << 20;
/// Largest run of prioritised chunks in one Range request.
const PRIORITY_RUN: u64 = 2 << 20;
/// Prioritised-prefetch Range requests in flight at once, over all layers.
const PRIORITY_CONCURRENCY: usize = 4;

/// The throttle, the priority bound and the blobs already scheduled
/// (shared: clones are handles to the same state).
#[derive(Clone)]
pub(crate) struct Background(Arc<Shared>);

struct Shared {
    permits: Arc<Semaphore>,
    priority: Arc<Semaphore>,
    /// Token bucket (`--background-bandwidth`), shared with the checks'
    /// whole-blob streams.
    bucket: Bucket,
    /// Blobs already scheduled in this process.
    scheduled: Mutex<HashSet<Digest>>,
}

impl Background {
    /// At most `bandwidth` bytes per second (0: no cap) in at most
    /// `concurrency` Range requests at once, for the non-prioritised rest.
    pub(crate) fn new(bandwidth: u64, concurrency: usize) -> Background {
        Background(Arc::new(Shared {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            priority: Arc::new(Semaphore::new(PRIORITY_CONCURRENCY)),
            bucket: Bucket::new(bandwidth),
            scheduled: Mutex::new(HashSet::new()),
        }))
    }

    /// The token bucket, for the background checks' streams.
    pub(super) fn bucket(&self) -> Bucket {
        self.0.bucket.clone()
    }
}

/// What a prefetch needs of the content, owned (for tasks that outlive the
/// call that started them).
#[derive(Clone)]
pub(super) struct Prefetcher {
    client: Arc<dyn RegistryApi>,
    store: Arc<Store>,
    in_flight: InFlight,
    bg: Background,
    all: bool,
}

impl Content {
    /// A handle that schedules prefetches of this content's lazy layers.
    pub(super) fn prefetcher(&self) -> Prefetcher {
        Prefetcher {
            client: self.client.clone(),
            store: self.store.clone(),
            in_flight: self.in_flight.clone(),
            bg: self.lazy.background.clone(),
            all: self.lazy.opts.background_fetch,
        }
    }
}

impl Prefetcher {
    /// After a lazy layer's TOC is loaded: fetch its prioritised chunks
    /// (blob offsets before `prefetch_end`) at once and, with
    /// `--background-fetch`, the rest through the throttle. Once per blob per
    /// process; returns at once (the fetches run in tasks).
    pub(super) fn schedule(
        &self,
        layer: &Arc<RemoteLayer>,
        tree: &Tree,
        prefetch_end: Option<u64>,
    ) {
        if prefetch_end.is_none() && !self.all {
            return;
        }
        if !self
            .bg
            .0
            .scheduled
            .lock()
            .unwrap()
            .insert(layer.blob.digest.clone())
        {
            return;
        }
        let (prio, rest): (Vec<Chunk>, Vec<Chunk>) = chunks::all_chunks(tree)
            .into_iter()
            .partition(|c| prefetch_end.is_some_and(|p| c.blob_offset < p));
        if !prio.is_empty() {
            self.spawn_priority(layer, prio);
        }
        if self.all && !rest.is_empty() {
            self.spawn_throttled(layer, rest);
        }
    }

    /// Every run of `prio` in a task of its own, [`PRIORITY_CONCURRENCY`]
    /// requests at a time.
    fn spawn_priority(&self, layer: &Arc<RemoteLayer>, prio: Vec<Chunk>) {
        let started = Instant::now();
        let bytes: u64 = prio.iter().map(|c| c.blob_len).sum();
        let runs = owned_runs(&prio, PRIORITY_RUN);
        let total = runs.len();
        let tasks: Vec<_> = runs
            .into_iter()
            .map(|run| {
                let (this, layer) = (self.clone(), layer.clone());
                tokio::spawn(async move {
                    let _permit = this.bg.0.priority.clone().acquire_owned().await;
                    this.fetch(&layer, &run, "prioritised").await
                })
            })
            .collect();
        let layer = layer.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            for t in tasks {
                if !matches!(t.await, Ok(true)) {
                    failed += 1;
                }
            }
            tracing::info!(
                blob = %layer.blob.digest, runs = total, failed, bytes,
                ms = started.elapsed().as_millis() as u64, "prefetch of prioritised files done"
            );
        });
    }

    /// The runs of `rest` one after another through the token bucket, at
    /// most the background concurrency at a time.
    fn spawn_throttled(&self, layer: &Arc<RemoteLayer>, rest: Vec<Chunk>) {
        let (this, layer) = (self.clone(), layer.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let runs = owned_runs(&rest, MAX_BACKGROUND_RUN);
            let total = runs.len();
            let mut tasks = Vec::new();
            for run in runs {
                let permit = this.bg.0.permits.clone().acquire_owned().await;
                let bytes: u64 = run.iter().map(|c| c.blob_len).sum();
                tokio::time::sleep(this.bg.0.bucket.reserve(bytes)).await;
                let (this, layer) = (this.clone(), layer.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    this.fetch(&layer, &run, "background").await
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

    /// Fetch (or find in the store) one run; false if it failed (logged).
    async fn fetch(&self, layer: &RemoteLayer, run: &[Chunk], what: &str) -> bool {
        let got = chunks::get(
            &*self.client,
            &self.store,
            &self.in_flight,
            layer,
            run,
            chunks::MAX_RUN,
        )
        .await;
        if let Err(e) = &got {
            tracing::warn!(blob = %layer.blob.digest, error = %e, "{what} fetch of a chunk run failed");
        }
        got.is_ok()
    }
}

/// `chunks` (in blob order) cut into runs of at most `max` bytes, owned.
fn owned_runs(chunks: &[Chunk], max: u64) -> Vec<Vec<Chunk>> {
    runs(chunks, chunks::extent, max)
        .into_iter()
        .map(|r| r.into_iter().cloned().collect())
        .collect()
}
