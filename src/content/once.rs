//! The one path by which content comes from the registry: memory → single
//! flight → store → fetch and verify → commit → memory. Each kind of content
//! (manifest, blob, whole layer, TOC) says only how it is found at hand,
//! loaded from the store, fetched and verified, and committed; the order,
//! the single flight and the in-flight count are here, once. Chunks and
//! spans, fetched many keys at a time, take the same steps in
//! [`super::pieces`].

use std::time::Instant;

use futures_util::future::BoxFuture;

use crate::cache::Store;
use crate::error::Result;
use crate::telemetry::InFlight;

/// One kind of verified content, identified by one key.
pub(super) trait Fetchable: Sync {
    /// What callers get.
    type Value: Send;
    /// Content fetched and verified, not yet committed to the store.
    type Verified: Send;

    /// The single-flight key (`"blob sha256:…"`): one fetch per key at a time.
    fn flight_key(&self) -> String;

    /// The value if it is at hand without waiting: in memory, or (for
    /// plain files) a store lookup.
    fn at_hand(&self) -> Option<Self::Value>;

    /// The value from the store (verified when it was committed), kept in
    /// memory by the caller. `None`: not there, or unusable (then fetched).
    fn load(&self) -> BoxFuture<'_, Result<Option<Self::Value>>> {
        Box::pin(async { Ok(None) })
    }

    /// Fetch the content and verify it. Nothing unverified leaves this step.
    fn fetch_verified(&self) -> BoxFuture<'_, Result<Self::Verified>>;

    /// Commit verified content to the store; the value to serve.
    fn commit(&self, verified: Self::Verified) -> BoxFuture<'_, Result<Self::Value>>;

    /// Keep the value in memory (after a load or a commit).
    fn remember(&self, _value: &Self::Value) {}

    /// Log a cache hit (`"cache hit blob"` …), `ms` since `started`.
    fn log_hit(&self, value: &Self::Value, started: Instant);
}

/// `kind`'s value: at hand, else (one caller per key at a time) from the
/// store, else fetched, verified and committed. `in_flight` counts the
/// fetch while it runs.
pub(super) async fn fetch_once<K: Fetchable>(
    store: &Store,
    in_flight: &InFlight,
    kind: &K,
) -> Result<K::Value> {
    let started = Instant::now();
    if let Some(v) = kind.at_hand() {
        kind.log_hit(&v, started);
        return Ok(v);
    }
    let _flight = store.flight(kind.flight_key()).await;
    if let Some(v) = kind.at_hand() {
        kind.log_hit(&v, started);
        return Ok(v);
    }
    if let Some(v) = kind.load().await? {
        kind.remember(&v);
        kind.log_hit(&v, started);
        return Ok(v);
    }
    let verified = {
        let _in_flight = in_flight.enter();
        kind.fetch_verified().await?
    };
    let v = kind.commit(verified).await?;
    kind.remember(&v);
    Ok(v)
}

/// Fetch, verify and commit `kind` without looking for it first (a tag is
/// asked of the registry every time).
pub(super) async fn fetch_fresh<K: Fetchable>(in_flight: &InFlight, kind: &K) -> Result<K::Value> {
    let verified = {
        let _in_flight = in_flight.enter();
        kind.fetch_verified().await?
    };
    let v = kind.commit(verified).await?;
    kind.remember(&v);
    Ok(v)
}
