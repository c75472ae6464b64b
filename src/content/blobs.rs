//! Manifests, configs and raw blobs: each a [`Fetchable`] kind of the
//! fetch-once path.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use super::chunk_list::ChunkRecorder;
use super::once::{fetch_fresh, fetch_once, Fetchable};
use super::throttle::{Bucket, PacedBody};
use super::Content;
use crate::cache::{Section, TempFile};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::config::MAX_CONFIG_SIZE;
use crate::image::{BlobRef, ImageConfig, Manifest};
use crate::reference::Selector;
use crate::registry::FetchedManifest;

/// A manifest we fetched (or found in the store) and parsed.
#[derive(Debug)]
pub struct ManifestInfo {
    /// Its digest (of `bytes`).
    pub digest: Digest,
    /// The bytes exactly as served.
    pub bytes: Bytes,
    /// Parsed.
    pub manifest: Manifest,
}

/// A manifest by tag or digest, kept in memory and in the store (as a blob).
struct ManifestKind<'a> {
    content: &'a Content,
    repo: &'a str,
    sel: &'a Selector,
}

impl Fetchable for ManifestKind<'_> {
    type Value = Arc<ManifestInfo>;
    type Verified = (FetchedManifest, Manifest);

    fn flight_key(&self) -> String {
        format!("manifest {}", self.sel)
    }

    fn at_hand(&self) -> Option<Arc<ManifestInfo>> {
        match self.sel {
            Selector::Digest(d) => self.content.manifests.get(d),
            Selector::Tag(_) => None,
        }
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<Arc<ManifestInfo>>>> {
        Box::pin(async move {
            let Selector::Digest(digest) = self.sel else {
                return Ok(None);
            };
            let Some(bytes) = self.content.store.read(Section::Blob, digest) else {
                return Ok(None);
            };
            // Stored bytes were verified before they were stored; check again anyway,
            // a manifest is small and a wrong one would misdirect everything below it.
            digest.verify(&bytes, "cached manifest")?;
            let manifest = Manifest::parse(&bytes, "")?;
            Ok(Some(Arc::new(ManifestInfo {
                digest: digest.clone(),
                bytes: Bytes::from(bytes),
                manifest,
            })))
        })
    }

    fn fetch_verified(&self) -> BoxFuture<'_, Result<(FetchedManifest, Manifest)>> {
        Box::pin(async move {
            let started = Instant::now();
            // The client checks the bytes against the digest asked for (or sent).
            let fetched = self.content.client.manifest(self.repo, self.sel).await?;
            tracing::info!(
                digest = %fetched.digest, bytes = fetched.bytes.len(), ms = started.elapsed().as_millis() as u64,
                cache = "miss", "fetched manifest"
            );
            let manifest = Manifest::parse(&fetched.bytes, &fetched.media_type)?;
            Ok((fetched, manifest))
        })
    }

    fn commit(
        &self,
        (fetched, manifest): (FetchedManifest, Manifest),
    ) -> BoxFuture<'_, Result<Arc<ManifestInfo>>> {
        Box::pin(async move {
            let store = &self.content.store;
            if store.get(Section::Blob, &fetched.digest).is_none() {
                store.put(Section::Blob, &fetched.digest, &fetched.bytes)?;
            }
            Ok(Arc::new(ManifestInfo {
                digest: fetched.digest,
                bytes: fetched.bytes,
                manifest,
            }))
        })
    }

    fn remember(&self, m: &Arc<ManifestInfo>) {
        self.content.manifests.insert(m.digest.clone(), m.clone());
    }

    fn log_hit(&self, m: &Arc<ManifestInfo>, started: Instant) {
        tracing::debug!(
            digest = %m.digest, bytes = m.bytes.len(), ms = started.elapsed().as_millis() as u64,
            cache = "hit", "cache hit manifest"
        );
    }
}

/// A raw blob, kept as a file in the store.
struct BlobKind<'a> {
    content: &'a Content,
    repo: &'a str,
    desc: &'a BlobRef,
    /// Read no faster than this bucket allows (a background check).
    pace: Option<Bucket>,
}

impl Fetchable for BlobKind<'_> {
    type Value = File;
    type Verified = (TempFile, u64, Instant, Option<ChunkRecorder>);

    fn flight_key(&self) -> String {
        format!("blob {}", self.desc.digest)
    }

    /// Open before anything can evict it: an open file outlives eviction.
    fn at_hand(&self) -> Option<File> {
        File::open(self.content.store.get(Section::Blob, &self.desc.digest)?).ok()
    }

    fn fetch_verified(&self) -> BoxFuture<'_, Result<Self::Verified>> {
        Box::pin(async move {
            let started = Instant::now();
            let desc = self.desc;
            // A large blob's chunk digests, kept once the whole blob verified.
            let mut chunks =
                (desc.size >= super::chunk_list::MIN_LISTED_BLOB).then(ChunkRecorder::default);
            let mut stream = self
                .content
                .client
                .blob(self.repo, &desc.digest, Some(desc.size))
                .await?;
            if let Some(bucket) = &self.pace {
                stream = Box::new(PacedBody::new(stream, bucket.clone()));
            }
            let tmp = self.content.store.temp()?;
            let mut out = tokio::fs::File::from_std(tmp.file.try_clone()?);
            while let Some(chunk) = stream.next_chunk().await? {
                if let Some(c) = &mut chunks {
                    c.update(&chunk);
                }
                out.write_all(&chunk).await?;
            }
            out.flush().await?;
            // next_chunk returned None: size and digest matched.
            Ok((tmp, stream.received(), started, chunks))
        })
    }

    fn commit(
        &self,
        (tmp, received, started, chunks): Self::Verified,
    ) -> BoxFuture<'_, Result<File>> {
        Box::pin(async move {
            let mut file = tmp.file.try_clone()?;
            // The clone shares the write offset: rewind for readers that read sequentially.
            std::io::Seek::rewind(&mut file)?;
            let store = &self.content.store;
            store.commit(tmp, Section::Blob, &self.desc.digest)?;
            if let Some(c) = chunks {
                let list = c.finish(self.desc.digest.clone());
                store.put(Section::ChunkList, &self.desc.digest, &list.encode())?;
            }
            tracing::info!(
                digest = %self.desc.digest, bytes = received, ms = started.elapsed().as_millis() as u64,
                cache = "miss", "fetched blob"
            );
            Ok(file)
        })
    }

    fn log_hit(&self, f: &File, started: Instant) {
        let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
        tracing::debug!(
            digest = %self.desc.digest, bytes, ms = started.elapsed().as_millis() as u64,
            cache = "hit", "cache hit blob"
        );
    }
}

impl Content {
    /// Resolve a tag (or digest) through the registry: always asks the registry,
    /// stores the verified manifest under its digest.
    pub async fn resolve(&self, repo: &str, sel: &Selector) -> Result<Arc<ManifestInfo>> {
        let kind = ManifestKind {
            content: self,
            repo,
            sel,
        };
        fetch_fresh(&self.in_flight, &kind).await
    }

    /// A manifest by digest: memory, then the store, then the registry.
    pub async fn manifest(&self, repo: &str, digest: &Digest) -> Result<Arc<ManifestInfo>> {
        let sel = Selector::Digest(digest.clone());
        let kind = ManifestKind {
            content: self,
            repo,
            sel: &sel,
        };
        fetch_once(&self.store, &self.in_flight, &kind).await
    }

    /// A verified raw blob from the store, fetched whole if needed. The file is
    /// opened before anything can evict it: an open file outlives eviction.
    pub async fn blob(&self, repo: &str, desc: &BlobRef) -> Result<File> {
        let kind = BlobKind {
            content: self,
            repo,
            desc,
            pace: None,
        };
        fetch_once(&self.store, &self.in_flight, &kind).await
    }

    /// [`Content::blob`] for background work: if it must be fetched, it is
    /// read no faster than `--background-bandwidth` allows (the bucket
    /// background chunk fetches share).
    pub(super) async fn blob_in_background(&self, repo: &str, desc: &BlobRef) -> Result<File> {
        let kind = BlobKind {
            content: self,
            repo,
            desc,
            pace: Some(self.lazy.background.bucket()),
        };
        fetch_once(&self.store, &self.in_flight, &kind).await
    }

    /// The parsed config of an image manifest.
    pub async fn config(&self, repo: &str, desc: &BlobRef) -> Result<Arc<ImageConfig>> {
        if let Some(c) = self.configs.get(&desc.digest) {
            return Ok(c);
        }
        if desc.size > MAX_CONFIG_SIZE {
            return Err(Error::TooLarge(format!(
                "config {} is {} bytes (limit {MAX_CONFIG_SIZE})",
                desc.digest, desc.size
            )));
        }
        let mut file = self.blob(repo, desc).await?;
        let bytes = crate::blocking::run(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut v)?;
            Ok(v)
        })
        .await?;
        let c = Arc::new(ImageConfig::parse(&bytes)?);
        self.configs.insert(desc.digest.clone(), c.clone());
        Ok(c)
    }
}
