//! A fault injector over a [`MemoryRegistry`], for tests: chosen blobs are
//! served with a flipped byte, truncated, refused with a 5xx, or after a
//! bounded stall, the way a bad network or registry would serve them
//! (before the verification a real client does, never after it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::api::{BoxBlobBody, RegistryApi};
use super::memory::{MemoryRegistry, VerifyingBody};
use super::{ClientStats, FetchedManifest};
use crate::digest::Digest;
use crate::error::Result;
use crate::reference::{Registry, Selector};

/// Longest stall a [`Fault::Stall`] may ask for: a test must end.
pub const MAX_STALL: Duration = Duration::from_secs(30);

/// What goes wrong when a chosen blob is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The byte at this blob offset is served inverted.
    FlipByte(u64),
    /// The blob ends after this many bytes.
    Truncate(u64),
    /// Every request for the blob gets this HTTP status (a 5xx).
    Status(u16),
    /// The body pauses this long (at most [`MAX_STALL`]) halfway, or a
    /// range request waits this long before it is answered.
    Stall(Duration),
}

/// A [`MemoryRegistry`] that serves chosen blobs with a [`Fault`]; see the
/// module documentation. Everything else passes through.
pub struct FaultyRegistry {
    inner: Arc<MemoryRegistry>,
    faults: Mutex<HashMap<Digest, Fault>>,
}

impl FaultyRegistry {
    /// Faults over `inner` (none chosen yet).
    pub fn new(inner: Arc<MemoryRegistry>) -> FaultyRegistry {
        FaultyRegistry {
            inner,
            faults: Mutex::new(HashMap::new()),
        }
    }

    /// The registry underneath.
    pub fn inner(&self) -> &Arc<MemoryRegistry> {
        &self.inner
    }

    /// Serve blob `digest` with `fault` from now on (replacing any other).
    pub fn inject(&self, digest: &Digest, fault: Fault) {
        let fault = match fault {
            Fault::Stall(d) => Fault::Stall(d.min(MAX_STALL)),
            f => f,
        };
        self.faults.lock().unwrap().insert(digest.clone(), fault);
    }

    /// Serve blob `digest` faithfully again.
    pub fn clear(&self, digest: &Digest) {
        self.faults.lock().unwrap().remove(digest);
    }

    /// The fault chosen for blob `digest`, if any.
    pub fn fault_of(&self, digest: &Digest) -> Option<Fault> {
        self.faults.lock().unwrap().get(digest).copied()
    }

    /// The blob's bytes as this registry serves them, and a stall to apply.
    fn served(&self, repo: &str, digest: &Digest) -> Result<(Bytes, Option<Duration>)> {
        let bytes = self.inner.serve_blob(repo, digest)?;
        Ok(match self.fault_of(digest) {
            None => (bytes, None),
            Some(Fault::FlipByte(at)) if at < bytes.len() as u64 => {
                let mut b = BytesMut::from(&bytes[..]);
                b[at as usize] ^= 0xff;
                (b.freeze(), None)
            }
            Some(Fault::FlipByte(_)) => (bytes, None),
            Some(Fault::Truncate(n)) => (bytes.slice(..(n as usize).min(bytes.len())), None),
            Some(Fault::Status(code)) => {
                return Err(super::errors::from_status(
                    reqwest::StatusCode::from_u16(code)
                        .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR),
                    b"",
                    &format!("blob {digest} in {repo}"),
                ))
            }
            Some(Fault::Stall(d)) => (bytes, Some(d)),
        })
    }
}

impl RegistryApi for FaultyRegistry {
    fn registry(&self) -> &Registry {
        self.inner.registry()
    }

    fn stats(&self) -> ClientStats {
        self.inner.stats()
    }

    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        self.inner.catalog()
    }

    fn tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        self.inner.tags(repo)
    }

    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        sel: &'a Selector,
    ) -> BoxFuture<'a, Result<FetchedManifest>> {
        self.inner.manifest(repo, sel)
    }

    fn blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: Option<u64>,
    ) -> BoxFuture<'a, Result<BoxBlobBody>> {
        Box::pin(async move {
            let (bytes, stall) = self.served(repo, digest)?;
            self.inner.sent(bytes.len());
            let stall = stall.map(|d| (bytes.len() as u64 / 2, d));
            Ok(Box::new(VerifyingBody::new(repo, digest, size, bytes, stall)) as BoxBlobBody)
        })
    }

    fn blob_range<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let (bytes, stall) = self.served(repo, digest)?;
            if let Some(d) = stall {
                tokio::time::sleep(d).await;
            }
            let r =
                MemoryRegistry::range_of(&bytes, offset, len, &format!("blob {digest} in {repo}"))?;
            self.inner.sent(r.len());
            Ok(r)
        })
    }

    /// One request for all the ranges (as [`MemoryRegistry`] counts them),
    /// the fault applied to the blob they are cut from.
    fn blob_ranges<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        ranges: &'a [(u64, u64)],
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(async move {
            let (bytes, stall) = self.served(repo, digest)?;
            if let Some(d) = stall {
                tokio::time::sleep(d).await;
            }
            self.inner
                .ranges_of(&bytes, ranges, &format!("blob {digest} in {repo}"))
        })
    }

    fn blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        self.inner.blob_size(repo, digest)
    }

    fn blob_exists<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        self.inner.blob_exists(repo, digest)
    }

    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from_repo: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        self.inner.mount_blob(repo, digest, from_repo)
    }

    fn push_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<()>> {
        self.inner.push_blob(repo, digest, size, body)
    }

    fn push_blob_stream<'a>(
        &'a self,
        repo: &'a str,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<(Digest, u64)>> {
        self.inner.push_blob_stream(repo, body)
    }

    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Selector,
        media_type: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<Digest>> {
        self.inner.put_manifest(repo, reference, media_type, bytes)
    }
}
