//! The pacing of background transfers (`--background-bandwidth`): one
//! token bucket per [`Content`](super::Content), shared by background chunk
//! fetches ([`super::background`]) and the whole-blob streams of the checks
//! of published indexes and chunk lists ([`PacedBody`]), so that all of them
//! together stay under the cap and foreground reads (never paced) keep the
//! rest of the link.
//!
//! [`Pacer`] is the arithmetic alone (bytes in, how long to wait out); a
//! [`Bucket`] shares one behind a lock held only for that arithmetic, never
//! across an await: callers sleep after the lock is dropped.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::error::Result;
use crate::registry::{BlobBody, BoxBlobBody};

/// Debts below this are not slept off at once: they are carried into the
/// next reservation (the timer's granularity is about a millisecond, and a
/// sleep rounded up per 16 KiB chunk would lose bandwidth).
pub const MIN_SLEEP: Duration = Duration::from_millis(5);

/// A virtual clock of transfers at `bandwidth` bytes per second: each
/// reservation of `n` bytes starts when the previous ones have had their
/// time (or now, if that is past) and takes `n / bandwidth`. No burst is
/// saved up while idle.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    bandwidth: u64,
    next: Instant,
}

impl Pacer {
    /// A pacer of `bandwidth` bytes per second (0: no cap), idle at `now`.
    pub fn new(bandwidth: u64, now: Instant) -> Pacer {
        Pacer {
            bandwidth,
            next: now,
        }
    }

    /// Reserve `bytes` at `now`: how long the caller waits before moving
    /// them (zero when the cap allows them at once, always zero without a
    /// cap).
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bandwidth == 0 {
            return Duration::ZERO;
        }
        let start = self.next.max(now);
        self.next = start + Duration::from_secs_f64(bytes as f64 / self.bandwidth as f64);
        start - now
    }

    /// Account for `bytes` already moved at `now`: how long the caller
    /// waits before moving more. Debts under [`MIN_SLEEP`] answer zero and
    /// stay owed, so many small chunks add up to the cap's time.
    pub fn after(&mut self, bytes: u64, now: Instant) -> Duration {
        if self.bandwidth == 0 {
            return Duration::ZERO;
        }
        self.reserve(bytes, now);
        let owed = self.next.saturating_duration_since(now);
        if owed < MIN_SLEEP {
            Duration::ZERO
        } else {
            owed
        }
    }
}

/// A [`Pacer`] shared by every background transfer of one content.
#[derive(Clone, Debug)]
pub struct Bucket(Arc<Mutex<Pacer>>);

impl Bucket {
    /// A bucket of `bandwidth` bytes per second (0: no cap).
    pub fn new(bandwidth: u64) -> Bucket {
        Bucket(Arc::new(Mutex::new(Pacer::new(bandwidth, Instant::now()))))
    }

    /// [`Pacer::reserve`] now (the lock is released before returning).
    pub fn reserve(&self, bytes: u64) -> Duration {
        self.0.lock().unwrap().reserve(bytes, Instant::now())
    }

    /// [`Pacer::after`] now (the lock is released before returning).
    pub fn after(&self, bytes: u64) -> Duration {
        self.0.lock().unwrap().after(bytes, Instant::now())
    }
}

/// A blob body read no faster than its bucket allows: after each chunk it
/// sleeps off what the chunk owes (the bytes still arrive verified; the
/// transport's flow control slows the sender).
pub struct PacedBody {
    inner: BoxBlobBody,
    bucket: Bucket,
}

impl PacedBody {
    /// `inner`, paced by `bucket`.
    pub fn new(inner: BoxBlobBody, bucket: Bucket) -> PacedBody {
        PacedBody { inner, bucket }
    }
}

impl BlobBody for PacedBody {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<bytes::Bytes>>> {
        Box::pin(async move {
            let chunk = self.inner.next_chunk().await?;
            if let Some(c) = &chunk {
                let wait = self.bucket.after(c.len() as u64);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            Ok(chunk)
        })
    }

    fn received(&self) -> u64 {
        self.inner.received()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn reservations_queue_one_after_another_at_the_bandwidth() {
        let t0 = Instant::now();
        let mut p = Pacer::new(4 * MB, t0);
        assert_eq!(p.reserve(MB, t0), Duration::ZERO);
        assert_eq!(p.reserve(MB, t0), Duration::from_millis(250));
        assert_eq!(p.reserve(2 * MB, t0), Duration::from_millis(500));
        // Later callers wait for what is still queued, not from the start.
        let t1 = t0 + Duration::from_millis(600);
        assert_eq!(p.reserve(MB, t1), Duration::from_millis(400));
        // Idle time is not saved up as a burst.
        let t2 = t0 + Duration::from_secs(10);
        assert_eq!(p.reserve(MB, t2), Duration::ZERO);
        assert_eq!(p.reserve(MB, t2), Duration::from_millis(250));
    }

    #[test]
    fn without_a_cap_nothing_waits() {
        let t0 = Instant::now();
        let mut p = Pacer::new(0, t0);
        assert_eq!(p.reserve(u64::MAX / 2, t0), Duration::ZERO);
        assert_eq!(p.after(u64::MAX / 2, t0), Duration::ZERO);
    }

    #[test]
    fn small_chunks_add_up_to_the_time_of_their_sum() {
        // 64 MiB in 4 KiB chunks (1 ms each) at 4 MiB/s, the caller sleeping
        // exactly what it is told: 16 s in all, whatever the chunk size.
        let t0 = Instant::now();
        let mut p = Pacer::new(4 * MB, t0);
        let mut now = t0;
        let mut sleeps = 0;
        for _ in 0..(64 * MB / (4 << 10)) {
            let w = p.after(4 << 10, now);
            assert!(w.is_zero() || w >= MIN_SLEEP, "{w:?}");
            sleeps += usize::from(!w.is_zero());
            now += w;
        }
        // What the last chunks still owe is under MIN_SLEEP.
        let total = now - t0;
        assert!(
            total >= Duration::from_secs(16) - MIN_SLEEP && total <= Duration::from_secs(16),
            "{total:?}"
        );
        // Sleeps of at least MIN_SLEEP each, not one per chunk.
        assert!(sleeps <= 16_000 / 5, "{sleeps} sleeps");
    }

    #[test]
    fn a_caller_that_oversleeps_does_not_lose_bandwidth_to_the_next() {
        // A sleep rounded up leaves `next` behind `now`: the next chunk then
        // starts now, and the total stays the cap's time plus the overshoot.
        let t0 = Instant::now();
        let mut p = Pacer::new(MB, t0);
        let w = p.after(MB / 2, t0);
        assert_eq!(w, Duration::from_millis(500));
        let now = t0 + w + Duration::from_millis(3);
        assert_eq!(p.after(MB / 2, now), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_paced_body_takes_the_time_its_bytes_are_owed() {
        use crate::registry::{MemoryRegistry, RegistryApi};
        let blob = vec![7u8; (MB / 2) as usize];
        let reg = MemoryRegistry::new("mem.test");
        let digest = reg.add_blob("lab/x", blob.clone());
        let body = reg
            .blob("lab/x", &digest, Some(blob.len() as u64))
            .await
            .unwrap();
        let mut paced = PacedBody::new(body, Bucket::new(MB));
        let t0 = Instant::now();
        let mut got = 0;
        while let Some(c) = paced.next_chunk().await.unwrap() {
            got += c.len();
        }
        assert_eq!(got, blob.len());
        // 512 KiB at 1 MiB/s; the last few milliseconds may stay owed.
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(490), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }
}
