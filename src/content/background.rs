//! Throttled fetching of chunks nobody asked for yet: after a lazy layer is
//! opened, its prioritised files (those before `.prefetch.landmark`) and,
//! with `--background-fetch`, the rest, through a token bucket and a bound
//! on concurrent Range requests. Never holds up a foreground read for more
//! than one chunk run.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Semaphore;

use super::chunks::{self, RemoteLayer};
use super::pieces::runs;
use super::throttle::Bucket;
use super::Content;
use crate::digest::Digest;
use crate::layer::{Chunk, Tree};

/// Largest run a background fetch takes at once (bounds how long it holds chunks).
const MAX_BACKGROUND_RUN: u64 = 2 << 20;

/// The throttle and the blobs already scheduled.
pub(crate) struct Background {
    permits: Arc<Semaphore>,
    /// Token bucket (`--background-bandwidth`), shared with the checks'
    /// whole-blob streams.
    pub(super) bucket: Bucket,
    /// Blobs already scheduled in this process.
    scheduled: Mutex<HashSet<Digest>>,
}

impl Background {
    /// At most `bandwidth` bytes per second (0: no cap) in at most
    /// `concurrency` Range requests at once.
    pub(crate) fn new(bandwidth: u64, concurrency: usize) -> Background {
        Background {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            bucket: Bucket::new(bandwidth),
            scheduled: Mutex::new(HashSet::new()),
        }
    }
}

impl Content {
    /// After a lazy layer is opened: prefetch its prioritised files (chunks
    /// before `prefetch_end`), and with `all` the rest, through the
    /// background throttle. Once per blob per process.
    pub(super) fn schedule_background(
        &self,
        layer: &Arc<RemoteLayer>,
        tree: &Tree,
        prefetch_end: Option<u64>,
        all: bool,
    ) {
        if prefetch_end.is_none() && !all {
            return;
        }
        let bg = &self.lazy.background;
        if !bg
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
        let mut order = prio;
        if all {
            order.extend(rest);
        }
        let (client, store, in_flight) = (
            self.client.clone(),
            self.store.clone(),
            self.in_flight.clone(),
        );
        let (permits, bucket) = (bg.permits.clone(), bg.bucket.clone());
        let layer = layer.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let runs: Vec<Vec<Chunk>> = runs(&order, chunks::extent, MAX_BACKGROUND_RUN)
                .into_iter()
                .map(|r| r.into_iter().cloned().collect())
                .collect();
            let total = runs.len();
            let mut tasks = Vec::new();
            for run in runs {
                let permit = permits.clone().acquire_owned().await;
                let bytes: u64 = run.iter().map(|c| c.blob_len).sum();
                tokio::time::sleep(bucket.reserve(bytes)).await;
                let (client, store, in_flight, layer) = (
                    client.clone(),
                    store.clone(),
                    in_flight.clone(),
                    layer.clone(),
                );
                tasks.push(tokio::spawn(async move {
                    let _permit = permit;
                    let got =
                        chunks::get(&*client, &store, &in_flight, &layer, &run, chunks::MAX_RUN)
                            .await;
                    if let Err(e) = got {
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
