//! Retry policy for transient failures: bounded exponential backoff with jitter,
//! honouring `Retry-After`.

use std::time::{Duration, SystemTime};

/// When and how long to wait before trying a request again.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub retries: u32,
    /// The first delay (doubled each attempt).
    pub base: Duration,
    /// The longest computed backoff.
    pub cap: Duration,
    /// The longest wait a server's `Retry-After` can impose.
    pub retry_after_cap: Duration,
}

impl RetryPolicy {
    /// The default shape (200 ms doubling, capped at 5 s; Retry-After capped at 10 s).
    pub fn new(retries: u32) -> Self {
        RetryPolicy {
            retries,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            retry_after_cap: Duration::from_secs(10),
        }
    }

    /// The backoff before retry number `attempt` (0-based), without jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry `attempt`: the server's `Retry-After` when given (capped),
    /// else the backoff with jitter (uniform in [backoff/2, backoff]).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(d) = retry_after {
            return d.min(self.retry_after_cap);
        }
        let b = self.backoff(attempt);
        let half = b / 2;
        let jitter_ms = rand::random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Parse a `Retry-After` value: delay seconds or an HTTP date (relative to `now`).
/// A date in the past means no wait; garbage means "not given".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("5", now), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        let p = RetryPolicy::new(3);
        assert_eq!(p.backoff(0), Duration::from_millis(200));
        assert_eq!(p.backoff(2), Duration::from_millis(800));
        assert_eq!(p.backoff(10), Duration::from_secs(5));
        assert_eq!(p.backoff(1000), Duration::from_secs(5));
        for a in 0..6 {
            let d = p.delay(a, None);
            assert!(d >= p.backoff(a) / 2 && d <= p.backoff(a), "{d:?}");
        }
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(3600))),
            Duration::from_secs(10)
        );
    }
}
