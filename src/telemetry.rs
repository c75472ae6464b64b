//! Metrics recorded through the `metrics` facade: their names, and the small
//! helpers the data path calls in the one place each is measured. Nothing is
//! exported here; the `regfs` binary installs a Prometheus recorder when asked
//! (`--metrics-addr`), and without one every call is a no-op.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Counter: HTTP requests sent to the registry (and mirrors), label `status`
/// (the HTTP status, or `error` when no response came).
pub const REGISTRY_REQUESTS: &str = "regfs_registry_requests_total";
/// Counter: body bytes received from the registry.
pub const REGISTRY_BYTES: &str = "regfs_registry_bytes_total";
/// Counter: requests retried after a transient failure.
pub const REGISTRY_RETRIES: &str = "regfs_registry_retries_total";
/// Counter: content store lookups that found the content.
pub const CACHE_HITS: &str = "regfs_cache_hits_total";
/// Counter: content store lookups that did not.
pub const CACHE_MISSES: &str = "regfs_cache_misses_total";
/// Counter: files evicted from the content store.
pub const CACHE_EVICTIONS: &str = "regfs_cache_evictions_total";
/// Gauge: bytes in the content store.
pub const CACHE_SIZE: &str = "regfs_cache_size_bytes";
/// Gauge: the content store's bound.
pub const CACHE_LIMIT: &str = "regfs_cache_limit_bytes";
/// Gauge: content fetches (blobs, layers, TOCs, chunk runs) in flight.
pub const FETCHES_IN_FLIGHT: &str = "regfs_fetches_in_flight";
/// Counter: filesystem operations failed because content did not match its digest.
pub const VERIFICATION_FAILURES: &str = "regfs_verification_failures_total";
/// Counter: published layer indexes found not to match their layer (and revoked).
pub const PUBLISHED_INDEX_REJECTED: &str = "regfs_published_index_rejected_total";
/// Histogram: FUSE operation latency in seconds, label `op`.
pub const FUSE_OP_SECONDS: &str = "regfs_fuse_op_duration_seconds";

/// Buckets of [`FUSE_OP_SECONDS`]: 50 µs to 30 s.
pub const FUSE_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
];

/// Describe every metric (help texts) to the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REGISTRY_REQUESTS,
        "HTTP requests sent to the registry and its mirrors, by status"
    );
    describe_counter!(
        REGISTRY_BYTES,
        Unit::Bytes,
        "Body bytes received from the registry"
    );
    describe_counter!(REGISTRY_RETRIES, "Registry requests retried");
    describe_counter!(
        PUBLISHED_INDEX_REJECTED,
        "Published layer indexes that did not match their layer once it was streamed (revoked)"
    );
    describe_counter!(CACHE_HITS, "Content store lookups that hit");
    describe_counter!(CACHE_MISSES, "Content store lookups that missed");
    describe_counter!(CACHE_EVICTIONS, "Files evicted from the content store");
    describe_gauge!(CACHE_SIZE, Unit::Bytes, "Bytes in the content store");
    describe_gauge!(CACHE_LIMIT, Unit::Bytes, "Bound on the content store");
    describe_gauge!(FETCHES_IN_FLIGHT, "Content fetches in flight");
    describe_counter!(
        VERIFICATION_FAILURES,
        "Filesystem operations failed because content did not match its digest"
    );
    describe_histogram!(
        FUSE_OP_SECONDS,
        Unit::Seconds,
        "FUSE operation latency, by operation"
    );
}

/// Count one registry response (or `None`: no response) by status.
pub fn registry_response(status: Option<u16>) {
    let label = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    metrics::counter!(REGISTRY_REQUESTS, "status" => label).increment(1);
}

/// Times one FUSE operation: created when the kernel's request arrives, moved
/// into the task that answers it, recorded when dropped (after the reply).
pub struct OpTimer {
    op: &'static str,
    started: Instant,
}

impl OpTimer {
    /// Start timing operation `op`.
    pub fn start(op: &'static str) -> OpTimer {
        OpTimer {
            op,
            started: Instant::now(),
        }
    }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        metrics::histogram!(FUSE_OP_SECONDS, "op" => self.op)
            .record(self.started.elapsed().as_secs_f64());
    }
}

/// A count of things in progress; see [`InFlight::enter`].
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    /// One more in progress until the returned guard is dropped.
    pub fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.0.clone())
    }

    /// How many are in progress now.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Held while something counted by an [`InFlight`] is in progress.
#[derive(Debug)]
pub struct InFlightGuard(Arc<AtomicU64>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_guards() {
        let f = InFlight::default();
        let a = f.enter();
        let b = f.clone().enter();
        assert_eq!(f.get(), 2);
        drop(a);
        assert_eq!(f.get(), 1);
        drop(b);
        assert_eq!(f.get(), 0);
    }
}
