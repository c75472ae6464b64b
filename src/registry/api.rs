//! The seam under the content layer: what regfs asks of a registry, as a
//! trait object. [`Client`](super::Client) is the real implementation (HTTP);
//! [`MemoryRegistry`](super::memory::MemoryRegistry) serves images built in
//! the process, for tests and embedding.

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{ClientStats, FetchedManifest};
use crate::digest::Digest;
use crate::error::Result;
use crate::reference::{Registry, Selector};

/// A blob body being received and verified: bytes are hashed as they pass,
/// and the end is reported only once the whole blob matched its digest (and
/// size, when known).
pub trait BlobBody: Send {
    /// The next chunk; `Ok(None)` only after the whole blob matched, else
    /// [`Error::DigestMismatch`](crate::Error::DigestMismatch) (or the
    /// transfer's error).
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>>>;
    /// Bytes received (and hashed) so far.
    fn received(&self) -> u64;
}

impl std::fmt::Debug for dyn BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody")
            .field("received", &self.received())
            .finish_non_exhaustive()
    }
}

/// A blob body as a trait object.
pub type BoxBlobBody = Box<dyn BlobBody>;

/// What regfs needs of a distribution v2 registry: listing, manifests,
/// verified blob streams, unverified byte ranges, and pushing (export).
/// Async methods return boxed futures so that callers hold an
/// `Arc<dyn RegistryApi>` without a type parameter.
pub trait RegistryApi: Send + Sync {
    /// The registry this talks to (its name appears in references).
    fn registry(&self) -> &Registry;

    /// Counters so far (requests, bytes received, retries).
    fn stats(&self) -> ClientStats;

    /// All repositories. A registry without a catalog gives an error.
    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>>>;

    /// The repositories of registry `host`, named `host/repo`, when this
    /// serves several registries (see [`RegistryRouter`](super::RegistryRouter));
    /// one registry answers its [`catalog`](Self::catalog), whatever `host` is.
    fn catalog_of<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        let _ = host;
        self.catalog()
    }

    /// The registries used so far, when this serves several (repositories
    /// are then named `host/path`); `None` for a single registry.
    fn registries(&self) -> Option<Vec<String>> {
        None
    }

    /// The referrers of manifest `digest` in `repo` (the OCI 1.1 referrers
    /// API: an image index of descriptors); `None` when the registry does
    /// not offer the API, and the caller falls back to the `sha256-<hex>`
    /// tag schema.
    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        let _ = (repo, digest);
        Box::pin(async { Ok(None) })
    }

    /// All tags of `repo`; an unknown repository is
    /// [`Error::NotFound`](crate::Error::NotFound).
    fn tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;

    /// A manifest or index by tag or digest, checked against its digest.
    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        sel: &'a Selector,
    ) -> BoxFuture<'a, Result<FetchedManifest>>;

    /// Start receiving blob `digest` of `repo`, verified as it arrives;
    /// `size`, when known, is enforced too.
    fn blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: Option<u64>,
    ) -> BoxFuture<'a, Result<BoxBlobBody>>;

    /// Bytes `offset..offset+len` of a blob. NOT verified: the caller checks
    /// what it reads. Fewer bytes only when the blob ends before `offset + len`.
    fn blob_range<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Bytes>>;

    /// The bytes of each of `ranges` (`(offset, len)`) of a blob, in order,
    /// NOT verified; each short only where the blob ends. The HTTP client
    /// asks for them in one multi-range request where the registry answers
    /// those; by default, one [`RegistryApi::blob_range`] each, side by side.
    fn blob_ranges<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        ranges: &'a [(u64, u64)],
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        let one = ranges
            .iter()
            .map(move |&(offset, len)| self.blob_range(repo, digest, offset, len));
        Box::pin(futures_util::future::try_join_all(one))
    }

    /// The blob's size; `None` if the registry does not have it.
    fn blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<u64>>>;

    /// Whether `repo` has blob `digest` (asked with push rights).
    fn blob_exists<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> BoxFuture<'a, Result<bool>>;

    /// Mount blob `digest` from `from_repo` into `repo`; `Ok(false)` when
    /// the registry declines (the caller uploads it instead).
    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from_repo: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Push blob `digest` of `size` bytes read from `body` (verified before
    /// it is committed); nothing is read if the registry has it.
    fn push_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Push a blob whose digest and size are known only at its end; returns them.
    fn push_blob_stream<'a>(
        &'a self,
        repo: &'a str,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<(Digest, u64)>>;

    /// Push a manifest under a tag or digest; returns its digest.
    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Selector,
        media_type: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<Digest>>;
}

impl BlobBody for super::BlobStream {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(super::BlobStream::next_chunk(self))
    }

    fn received(&self) -> u64 {
        super::BlobStream::received(self)
    }
}

impl RegistryApi for super::Client {
    fn registry(&self) -> &Registry {
        super::Client::registry(self)
    }

    fn stats(&self) -> ClientStats {
        super::Client::stats(self)
    }

    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        Box::pin(super::Client::catalog(self))
    }

    fn tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(super::Client::tags(self, repo))
    }

    fn referrers<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(super::Client::referrers(self, repo, digest))
    }

    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        sel: &'a Selector,
    ) -> BoxFuture<'a, Result<FetchedManifest>> {
        Box::pin(super::Client::manifest(self, repo, sel))
    }

    fn blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: Option<u64>,
    ) -> BoxFuture<'a, Result<BoxBlobBody>> {
        Box::pin(async move {
            let s = super::Client::blob(self, repo, digest, size).await?;
            Ok(Box::new(s) as BoxBlobBody)
        })
    }

    fn blob_range<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(super::Client::blob_range(self, repo, digest, offset, len))
    }

    fn blob_ranges<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        ranges: &'a [(u64, u64)],
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(super::Client::blob_ranges(self, repo, digest, ranges))
    }

    fn blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(super::Client::blob_size(self, repo, digest))
    }

    fn blob_exists<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(super::Client::blob_exists(self, repo, digest))
    }

    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from_repo: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(super::Client::mount_blob(self, repo, digest, from_repo))
    }

    fn push_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(super::Client::push_blob(self, repo, digest, size, body))
    }

    fn push_blob_stream<'a>(
        &'a self,
        repo: &'a str,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<(Digest, u64)>> {
        Box::pin(super::Client::push_blob_stream(self, repo, body))
    }

    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Selector,
        media_type: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<Digest>> {
        Box::pin(super::Client::put_manifest(
            self, repo, reference, media_type, bytes,
        ))
    }
}
