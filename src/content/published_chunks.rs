//! Chunk-digest lists published next to an image or artifact (issue 19),
//! the way layer indexes are ([`super::published`]): an OCI artifact of
//! type [`CHUNKS_ARTIFACT_TYPE`] whose `subject` is the manifest holding
//! the blobs, one list file per blob (annotated with the blob digest).
//!
//! Trust, as for layer indexes: the artifact is fetched by digest and each
//! list file verified like any blob; a list is adopted only for a blob of
//! that manifest whose digest and size it names; every chunk read is checked
//! against the list. That proves the bytes are the list's, not the blob's,
//! so each adopted list is checked later ([`Content::check_published`]):
//! the blob is streamed whole and verified against its digest, and each
//! chunk's digest compared with the list's. A mismatch, or a blob that does
//! not match its own digest, revokes the list: reads through it fail (EIO)
//! and the blob is read whole from then on. Adopted lists live in memory
//! only; after a restart they are fetched, and checked, again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;

use super::chunk_list::{ChunkList, MIN_LISTED_BLOB};
use super::{Content, PublishReport};
use crate::cache::Section;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::{BlobRef, ImageManifest, Manifest};

/// The `artifactType` of a published chunk-list artifact.
pub const CHUNKS_ARTIFACT_TYPE: &str = "application/vnd.regfs.blob-chunks.v1";
/// The media type of one blob's chunk list in it.
pub const CHUNKS_MEDIA_TYPE: &str = "application/vnd.regfs.blob-chunks.v1+json";
/// Annotation of a list file: the blob it lists.
pub const ANNOTATION_BLOB: &str = "io.github.regfs.blob.digest";
/// The largest list file adopted (a 64 GiB blob's is ~4 MB).
const MAX_LIST_FILE: u64 = 16 << 20;

/// Adopted chunk lists of [`Content`].
#[derive(Default)]
pub(crate) struct PublishedChunks {
    /// Manifests whose referrers were looked at.
    looked: Mutex<HashSet<Digest>>,
    /// Serialises adoption, so a second reader waits for the first's look.
    adopting: tokio::sync::Mutex<()>,
    /// Adopted lists, by blob digest.
    adopted: Mutex<HashMap<Digest, Arc<ChunkList>>>,
    /// Adopted, not yet checked: (repo, blob).
    pending: Mutex<Vec<(String, BlobRef)>>,
    /// Blobs whose published list turned out wrong.
    revoked: Mutex<HashSet<Digest>>,
}

/// The large blobs of `m`: config and layers of at least [`MIN_LISTED_BLOB`].
fn large_blobs(m: &ImageManifest) -> impl Iterator<Item = &BlobRef> {
    std::iter::once(&m.config)
        .chain(m.layers.iter())
        .filter(|d| d.size >= MIN_LISTED_BLOB)
}

impl Content {
    /// Whether the published chunk list of blob `digest` was found wrong.
    pub fn chunk_list_revoked(&self, digest: &Digest) -> bool {
        self.published_chunks
            .revoked
            .lock()
            .unwrap()
            .contains(digest)
    }

    /// Push the chunk lists this cache recorded for the large blobs of
    /// manifest `repo@manifest` as one artifact referring to it.
    pub async fn publish_chunk_lists(
        &self,
        repo: &str,
        manifest: &Digest,
    ) -> Result<PublishReport> {
        let info = self.manifest(repo, manifest).await?;
        let Manifest::Image(m) = &info.manifest else {
            return Err(Error::invalid(format!("{manifest} is an index")));
        };
        let (mut files, mut missing) = (Vec::new(), 0);
        for desc in large_blobs(m) {
            let list = self
                .store
                .read(Section::ChunkList, &desc.digest)
                .and_then(|b| ChunkList::decode(&b).ok())
                .filter(|l| l.blob == desc.digest && l.size == desc.size);
            match list {
                Some(l) => files.push((
                    CHUNKS_MEDIA_TYPE,
                    Bytes::from(l.encode()),
                    json!({ ANNOTATION_BLOB: desc.digest.to_string() }),
                )),
                None => missing += 1,
            }
        }
        if files.is_empty() {
            return Err(Error::NotFound(format!(
                "no large blob of {repo}@{manifest} has a chunk list in this cache: read it whole once first"
            )));
        }
        let mut out = self
            .push_referrer(repo, manifest, &info.bytes, CHUNKS_ARTIFACT_TYPE, files)
            .await?;
        out.missing = missing;
        Ok(out)
    }

    /// With published indexes on: the adopted chunk list of `desc`, looking
    /// for `repo@manifest`'s chunk-list artifact once.
    pub(super) async fn published_chunk_list(
        &self,
        repo: &str,
        manifest: &Digest,
        desc: &BlobRef,
    ) -> Option<Arc<ChunkList>> {
        if !self.published.enabled {
            return None;
        }
        let state = &self.published_chunks;
        let _one = state.adopting.lock().await;
        if state.looked.lock().unwrap().insert(manifest.clone()) {
            match self.adopt_chunk_lists(repo, manifest).await {
                Ok(0) => tracing::debug!(%repo, %manifest, "no published chunk list"),
                Ok(n) => {
                    tracing::info!(%repo, %manifest, lists = n, "serving large blobs by published chunk lists");
                    self.wake_published_check();
                }
                Err(e) => {
                    tracing::warn!(%repo, %manifest, error = %e, "published chunk lists not used")
                }
            }
        }
        state.adopted.lock().unwrap().get(&desc.digest).cloned()
    }

    async fn adopt_chunk_lists(&self, repo: &str, manifest: &Digest) -> Result<usize> {
        let info = self.manifest(repo, manifest).await?;
        let Manifest::Image(m) = &info.manifest else {
            return Ok(0);
        };
        let Some((_, files)) = self
            .published_files(
                repo,
                manifest,
                CHUNKS_ARTIFACT_TYPE,
                ANNOTATION_BLOB,
                MAX_LIST_FILE,
            )
            .await?
        else {
            return Ok(0);
        };
        let mut adopted = 0;
        for (blob, file) in files {
            let Some(desc) = large_blobs(m).find(|b| b.digest.to_string() == blob) else {
                continue;
            };
            match self.adopt_list(repo, desc, &file).await {
                Ok(()) => adopted += 1,
                Err(e) => {
                    tracing::warn!(%blob, error = %e, "published chunk list rejected; the blob is read whole")
                }
            }
        }
        Ok(adopted)
    }

    async fn adopt_list(&self, repo: &str, desc: &BlobRef, file: &BlobRef) -> Result<()> {
        let list = ChunkList::decode(&self.small_blob(repo, file).await?)?;
        if list.blob != desc.digest || list.size != desc.size {
            return Err(Error::invalid(format!(
                "it lists blob {} ({} bytes), not {} ({} bytes)",
                list.blob, list.size, desc.digest, desc.size
            )));
        }
        let state = &self.published_chunks;
        state
            .adopted
            .lock()
            .unwrap()
            .insert(desc.digest.clone(), Arc::new(list));
        state
            .pending
            .lock()
            .unwrap()
            .push((repo.to_string(), desc.clone()));
        Ok(())
    }

    /// Check every adopted chunk list against its blob, streamed whole and
    /// verified; returns (checked, revoked). Lists whose check could not
    /// be decided (the network) stay pending.
    pub(super) async fn check_chunk_lists(&self) -> (usize, usize) {
        let state = &self.published_chunks;
        let pending = std::mem::take(&mut *state.pending.lock().unwrap());
        let (mut checked, mut revoked) = (0, 0);
        for (repo, desc) in pending {
            let Some(list) = state.adopted.lock().unwrap().get(&desc.digest).cloned() else {
                continue;
            };
            let verdict = match self.blob_in_background(&repo, &desc).await {
                Ok(f) => {
                    let list = list.clone();
                    crate::blocking::run(move || matches(&f, &list)).await
                }
                Err(e @ Error::DigestMismatch { .. }) => Err(Error::invalid(format!(
                    "the registry's blob does not match its digest ({e}), so its chunks cannot be vouched for"
                ))),
                Err(e) => Err(e),
            };
            match verdict {
                Ok(()) => {
                    checked += 1;
                    tracing::info!(blob = %desc.digest, "published chunk list matches the blob");
                }
                Err(e @ Error::Invalid(_)) => {
                    checked += 1;
                    revoked += 1;
                    state.revoked.lock().unwrap().insert(desc.digest.clone());
                    state.adopted.lock().unwrap().remove(&desc.digest);
                    metrics::counter!(crate::telemetry::PUBLISHED_INDEX_REJECTED).increment(1);
                    tracing::error!(
                        blob = %desc.digest, error = %e,
                        "PUBLISHED CHUNK LIST IS WRONG: revoked; reads through it fail and the blob is read whole"
                    );
                }
                Err(e) => {
                    tracing::warn!(blob = %desc.digest, error = %e, "checking a published chunk list failed; will retry");
                    state.pending.lock().unwrap().push((repo, desc));
                }
            }
        }
        (checked, revoked)
    }

    /// Whether adopted lists wait for their check.
    pub(super) fn chunk_lists_pending(&self) -> bool {
        !self.published_chunks.pending.lock().unwrap().is_empty()
    }
}

/// Whether verified blob file `f` has `list`'s chunks (`Invalid` if not).
fn matches(f: &std::fs::File, list: &ChunkList) -> Result<()> {
    let mut buf = vec![0u8; list.chunk_size as usize];
    for (i, want) in list.digests.iter().enumerate() {
        let (s, e) = list.range(i);
        let buf = &mut buf[..(e - s) as usize];
        std::os::unix::fs::FileExt::read_exact_at(f, buf, s)?;
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(buf);
        if &h.finish() != want {
            return Err(Error::invalid(format!(
                "chunk {i} (bytes {s}..{e}) is not the blob's"
            )));
        }
    }
    Ok(())
}
