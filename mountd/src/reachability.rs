//! Whether the mounted registry answers: checked when mounting, re-checked in
//! the background (bounded backoff) while it does not, shown by `regfs status`.
//!
//! An unreachable registry does not fail the mount (the cache may serve), but
//! it is said once, clearly, on the terminal and in the log, once more when
//! the registry comes back, and again if it goes away later (checked every
//! minute while it answers).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regfs::registry::Client;

use crate::protocol::RegistryState;

/// First wait before re-checking an unreachable registry.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between two checks of an unreachable registry.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// The wait between two checks of a registry that answers.
const WHILE_UP: Duration = Duration::from_secs(60);

/// The registry's state as last seen.
#[derive(Debug, Clone)]
struct State {
    reachable: bool,
    /// When `reachable` last changed (or the mount started).
    since: SystemTime,
    /// The last failure, kept after the registry comes back.
    last_error: Option<String>,
    last_check: SystemTime,
    /// Checks made so far (the one at mount included).
    checks: u64,
}

/// The shared view of the registry's reachability.
#[derive(Debug)]
pub struct Reachability {
    registry: String,
    state: Mutex<State>,
}

/// The one-line warning for an unreachable registry.
pub fn warning(registry: &str, cause: &str) -> String {
    format!("registry {registry} unreachable: {cause}; serving from the cache, retrying")
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Reachability {
    /// The state after the check at mount: reachable, or not because of `error`.
    pub fn new(registry: &str, error: Option<String>) -> Arc<Reachability> {
        let now = SystemTime::now();
        Arc::new(Reachability {
            registry: registry.to_string(),
            state: Mutex::new(State {
                reachable: error.is_none(),
                since: now,
                last_error: error,
                last_check: now,
                checks: 1,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the last check got an answer.
    pub fn is_reachable(&self) -> bool {
        self.lock().reachable
    }

    /// The `registry_state` object of a `status` answer.
    pub fn state(&self) -> RegistryState {
        let s = self.lock().clone();
        RegistryState {
            reachable: s.reachable,
            since: unix(s.since),
            last_error: s.last_error,
            last_check: unix(s.last_check),
            checks: s.checks,
        }
    }

    /// Record one check's outcome; logs a change of state.
    fn record(&self, result: regfs::Result<()>) {
        let now = SystemTime::now();
        let mut s = self.lock();
        s.last_check = now;
        s.checks += 1;
        match result {
            Ok(()) => {
                if !s.reachable {
                    let down = now.duration_since(s.since).unwrap_or_default();
                    tracing::info!(
                        registry = %self.registry,
                        "registry {} reachable again after {}s",
                        self.registry,
                        down.as_secs()
                    );
                    s.reachable = true;
                    s.since = now;
                }
            }
            // It answered, but not as hoped (credentials, a broken proxy…):
            // reachable, and the error is worth a line of its own.
            Err(e) if !e.is_transient() => {
                tracing::warn!(registry = %self.registry, error = %e, "registry answers, but the check failed");
                if !s.reachable {
                    s.reachable = true;
                    s.since = now;
                }
                s.last_error = Some(e.to_string());
            }
            Err(e) => {
                if s.reachable {
                    tracing::warn!(registry = %self.registry, "{}", warning(&self.registry, &e.to_string()));
                    s.reachable = false;
                    s.since = now;
                } else {
                    tracing::debug!(registry = %self.registry, error = %e, "registry still unreachable");
                }
                s.last_error = Some(e.to_string());
            }
        }
    }

    /// Keep checking the registry on `rt` for the mount's life: while it is
    /// unreachable with backoff (1 s, doubling, at most 30 s apart), while
    /// it answers every [`WHILE_UP`], so that `regfs status` and the log say
    /// when it goes away again. `check_now`: the first check at once (a
    /// server that took over a mount without checking).
    pub fn watch(self: &Arc<Self>, client: Client, rt: &tokio::runtime::Handle, check_now: bool) {
        let me = self.clone();
        rt.spawn(async move {
            let mut wait = FIRST_RETRY;
            let mut now = check_now;
            loop {
                if !std::mem::take(&mut now) {
                    if me.is_reachable() {
                        wait = FIRST_RETRY;
                        tokio::time::sleep(WHILE_UP).await;
                    } else {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_RETRY);
                    }
                }
                me.record(client.ping().await);
            }
        });
    }
}

/// The `registry: …` line of `regfs status` for a `registry_state` object.
pub fn describe(state: &RegistryState, now: SystemTime) -> String {
    let ago = unix(now).saturating_sub(state.since);
    let mut line = if state.reachable {
        format!("registry state: reachable (since {ago}s ago)")
    } else {
        format!(
            "registry state: unreachable since {ago}s ago, {} checks; serving from the cache, retrying",
            state.checks
        )
    };
    if let Some(e) = &state.last_error {
        line.push_str(&format!("\n  last error: {e}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_check_then_an_answer_flips_the_state() {
        let r = Reachability::new("127.0.0.1:9", Some("connection refused".into()));
        assert!(!r.is_reachable());
        r.record(Err(regfs::Error::Network("refused again".into())));
        let j = r.state();
        assert!(!j.reachable);
        assert_eq!(
            j.last_error.as_deref(),
            Some("network error: refused again")
        );
        assert_eq!(j.checks, 2);
        r.record(Ok(()));
        assert!(r.is_reachable());
        assert_eq!(r.state().checks, 3);
        // And down again later.
        r.record(Err(regfs::Error::Network("gone".into())));
        assert!(!r.is_reachable());
        assert_eq!(r.state().last_error.as_deref(), Some("network error: gone"));
    }

    #[test]
    fn an_answer_that_is_an_error_still_counts_as_reachable() {
        let r = Reachability::new("r", Some("down".into()));
        r.record(Err(regfs::Error::Unauthorized("no".into())));
        assert!(r.is_reachable());
        assert_eq!(
            r.state().last_error.as_deref(),
            Some("authentication failed: no")
        );
    }

    #[test]
    fn status_lines() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        let down = RegistryState {
            reachable: false,
            since: 990,
            checks: 3,
            last_error: Some("refused".into()),
            last_check: 1000,
        };
        assert_eq!(
            describe(&down, now),
            "registry state: unreachable since 10s ago, 3 checks; serving from the cache, retrying\n  last error: refused"
        );
        let up = RegistryState {
            reachable: true,
            since: 1000,
            ..RegistryState::default()
        };
        assert_eq!(
            describe(&up, now),
            "registry state: reachable (since 0s ago)"
        );
    }

    #[test]
    fn the_warning_says_what_happens() {
        assert_eq!(
            warning("reg.example:5000", "dns error"),
            "registry reg.example:5000 unreachable: dns error; serving from the cache, retrying"
        );
    }
}
