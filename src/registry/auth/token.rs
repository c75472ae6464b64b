//! Bearer tokens: the token server's JSON answer and a per-scope cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The lifetime assumed when the token server gives none (docker token spec).
pub const DEFAULT_EXPIRES_IN: u64 = 60;

/// The token server's answer (`token` or `access_token`, `expires_in`).
#[derive(Deserialize)]
pub struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl TokenResponse {
    /// Parse the JSON body; either field name is accepted.
    pub fn parse(body: &[u8]) -> Result<(String, Duration)> {
        let r: TokenResponse = serde_json::from_slice(body)
            .map_err(|e| Error::invalid(format!("token server answer is not valid JSON: {e}")))?;
        let tok = r
            .token
            .filter(|t| !t.is_empty())
            .or(r.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| Error::invalid("token server answer has no token"))?;
        let secs = match r.expires_in {
            Some(s) if s > 0 => s,
            _ => DEFAULT_EXPIRES_IN,
        };
        Ok((tok, Duration::from_secs(secs)))
    }
}

/// A token and when we stop using it.
#[derive(Clone)]
struct Entry {
    token: String,
    use_until: Instant,
}

/// Tokens by scope key (the space-joined scopes), used until shortly before expiry.
#[derive(Default)]
pub struct TokenCache {
    map: Mutex<HashMap<String, Entry>>,
}

/// How long before expiry a token stops being used: a fifth of its life, at most 30 s.
pub fn margin(lifetime: Duration) -> Duration {
    (lifetime / 5).min(Duration::from_secs(30))
}

impl TokenCache {
    /// The cached token for `key`, if still fresh at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<String> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(key) {
            Some(e) if now < e.use_until => Some(e.token.clone()),
            Some(_) => {
                m.remove(key);
                None
            }
            None => None,
        }
    }
    /// Remember `token` for `key`, obtained at `now`, valid for `lifetime`.
    pub fn insert(&self, key: &str, token: String, lifetime: Duration, now: Instant) {
        let use_until = now + lifetime - margin(lifetime);
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.insert(key.to_string(), Entry { token, use_until });
    }
    /// Forget the token for `key` (the registry refused it).
    pub fn remove(&self, key: &str) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_either_field_and_defaults_expiry() {
        let (t, d) = TokenResponse::parse(br#"{"token":"abc","expires_in":300}"#).unwrap();
        assert_eq!((t.as_str(), d), ("abc", Duration::from_secs(300)));
        let (t, d) = TokenResponse::parse(br#"{"access_token":"xyz"}"#).unwrap();
        assert_eq!((t.as_str(), d), ("xyz", Duration::from_secs(60)));
        let (t, _) = TokenResponse::parse(br#"{"token":"","access_token":"z"}"#).unwrap();
        assert_eq!(t, "z");
        assert!(TokenResponse::parse(b"{}").is_err());
        assert!(TokenResponse::parse(b"nope").is_err());
    }

    #[test]
    fn cache_expires_with_margin() {
        let c = TokenCache::default();
        let t0 = Instant::now();
        c.insert(
            "repository:a:pull",
            "tok".into(),
            Duration::from_secs(60),
            t0,
        );
        assert_eq!(c.get("repository:a:pull", t0).as_deref(), Some("tok"));
        assert_eq!(c.get("repository:b:pull", t0), None);
        // 60 s lifetime, 12 s margin: fresh at 47 s, gone at 48 s.
        assert!(c
            .get("repository:a:pull", t0 + Duration::from_secs(47))
            .is_some());
        assert!(c
            .get("repository:a:pull", t0 + Duration::from_secs(48))
            .is_none());
        // Removed entries stay removed.
        assert!(c.get("repository:a:pull", t0).is_none());
        c.insert("k", "t".into(), Duration::from_secs(3600), t0);
        assert!(c.get("k", t0 + Duration::from_secs(3569)).is_some());
        assert!(c.get("k", t0 + Duration::from_secs(3570)).is_none());
        c.insert("k", "t".into(), Duration::from_secs(3600), t0);
        c.remove("k");
        assert!(c.get("k", t0).is_none());
    }
}
