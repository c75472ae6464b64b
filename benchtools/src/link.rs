//! The timing of one direction of an emulated network link: every chunk of
//! bytes is serialised onto the link at its bandwidth, after the chunks
//! before it (of every connection: one link is shared), and arrives half a
//! round trip after its last byte left.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One direction of a link.
#[derive(Debug)]
pub struct Link {
    /// Propagation delay (half the round trip).
    one_way: Duration,
    /// Bytes per second; 0: unlimited.
    bytes_per_sec: u64,
    /// When the link has sent everything queued so far.
    free_at: Mutex<Option<Instant>>,
}

impl Link {
    /// A link direction with `one_way` delay and `bits_per_sec` bandwidth (0: unlimited).
    pub fn new(one_way: Duration, bits_per_sec: u64) -> Link {
        Link {
            one_way,
            bytes_per_sec: bits_per_sec / 8,
            free_at: Mutex::new(None),
        }
    }

    /// The half round trip this direction adds.
    pub fn one_way(&self) -> Duration {
        self.one_way
    }

    /// When `n` bytes handed to the link at `now` arrive at the far end:
    /// they wait for the bytes queued before them, take `n / bandwidth` to
    /// send, then `one_way` to arrive.
    pub fn schedule(&self, n: usize, now: Instant) -> Instant {
        let mut free = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
        let start = match *free {
            Some(f) if f > now => f,
            _ => now,
        };
        let send = if self.bytes_per_sec == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64)
        };
        let end = start + send;
        *free = Some(end);
        end + self.one_way
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_only_when_unlimited() {
        let l = Link::new(Duration::from_millis(10), 0);
        let t = Instant::now();
        assert_eq!(l.schedule(1 << 20, t), t + Duration::from_millis(10));
    }

    #[test]
    fn chunks_queue_behind_each_other_at_the_bandwidth() {
        // 8 Mbit/s = 1 MB/s: 1000 bytes take 1 ms on the wire.
        let l = Link::new(Duration::from_millis(25), 8_000_000);
        let t = Instant::now();
        assert_eq!(l.schedule(1000, t), t + Duration::from_millis(26));
        // Handed over at the same instant: waits for the first.
        assert_eq!(l.schedule(1000, t), t + Duration::from_millis(27));
        // Handed over after the link went idle: no wait.
        let later = t + Duration::from_secs(1);
        assert_eq!(l.schedule(2000, later), later + Duration::from_millis(27));
    }
}
