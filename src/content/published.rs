//! Layer indexes published next to an image (issue 15): the tar index and
//! span index of each gzip layer, pushed as an OCI artifact whose `subject`
//! is the image manifest, found through the referrers API or the OCI 1.1
//! tag-schema fallback (`sha256-<hex>`), so that a machine that never
//! streamed a gzip layer serves it by spans from the start.
//!
//! Trust: the artifact and each index file are fetched by digest and
//! verified like any blob; an index is adopted only if it names a gzip layer
//! of this image with that layer's diff_id from the verified config; every
//! span read is checked against the index's span digest. That proves the
//! bytes are the index's, not the layer's: a forged index could attribute a
//! layer's bytes to the wrong files. So every adopted index is checked
//! afterwards ([`Content::check_published`]): the layer is streamed once,
//! verified against its blob digest and diff_id, and its tree and every
//! span digest are compared with the published ones. A mismatch is logged,
//! counted (`regfs_published_index_rejected_total`) and revokes the index:
//! reads through it fail (EIO) and the layer is served whole from then on.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::referrers::fallback_tag;
use super::{index_file, Content, Urgency};
use crate::cache::Section;
use crate::digest::Digest;
use crate::digest::Hasher;
use crate::error::{Error, Result};
use crate::image::{BlobRef, Manifest};
use crate::layer::Compression;
use crate::reference::Selector;

/// The `artifactType` of a published index artifact.
pub const INDEX_ARTIFACT_TYPE: &str = "application/vnd.regfs.layer-index.v1";
/// The media type of one layer's index file in it (`regfs index export`'s format).
pub const INDEX_FILE_MEDIA_TYPE: &str = "application/vnd.regfs.layer-index.v1+rgix";
/// The same file gzip-compressed, as `regfs index push` publishes it (its
/// tree is JSON and its windows are layer data).
pub const INDEX_FILE_GZIP_MEDIA_TYPE: &str = "application/vnd.regfs.layer-index.v1+rgix+gzip";
/// Version 2 of the index file, gzip-compressed: its span index has no
/// windows but the table of where they lie in the layer's windows blob.
pub const INDEX_FILE_V2_MEDIA_TYPE: &str = "application/vnd.regfs.layer-index.v2+rgix+gzip";
/// The windows blob of a version-2 index file: each checkpoint's window
/// deflated on its own, fetched only by Range requests, one window at a time.
pub const WINDOWS_MEDIA_TYPE: &str = "application/vnd.regfs.layer-windows.v1";
/// Annotation of an index file: the layer blob it indexes.
pub const ANNOTATION_LAYER: &str = "io.github.regfs.layer.digest";
/// Annotation of an index file: the layer's diff_id.
pub const ANNOTATION_DIFF_ID: &str = "io.github.regfs.layer.diff_id";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The largest index file adopted (python's largest layer's is ~3 MB).
const MAX_INDEX_FILE: u64 = 256 << 20;

/// The published-index state of [`Content`].
pub(crate) struct Published {
    /// Look for published indexes at all (`--use-published-indexes`).
    pub(crate) enabled: bool,
    /// How long after an adoption the check starts (reads go first).
    pub(crate) check_delay: std::time::Duration,
    /// Images whose referrers were looked at.
    looked: Mutex<HashSet<Digest>>,
    /// Adopted, not yet checked: diff_id → (repo, layer, the published index).
    pending: Mutex<HashMap<Digest, Pending>>,
    /// Layers whose published index turned out wrong.
    revoked: Mutex<HashSet<Digest>>,
    /// Adopted indexes not yet opened: diff_id → the index as parsed, so
    /// that opening the layer does not read and parse it again.
    fresh: Mutex<HashMap<Digest, Arc<index_file::ImportedIndex>>>,
    wake: tokio::sync::Notify,
    /// Publish the indexes of images streamed here (`--publish-indexes`).
    pub(crate) publish: bool,
    /// Images to publish, and those published or tried (once each).
    to_publish: Mutex<PublishQueue>,
    publish_wake: tokio::sync::Notify,
}

impl Default for Published {
    fn default() -> Self {
        Published {
            enabled: false,
            check_delay: DEFAULT_CHECK_DELAY,
            looked: Mutex::default(),
            pending: Mutex::default(),
            revoked: Mutex::default(),
            fresh: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            publish: false,
            to_publish: Mutex::default(),
            publish_wake: tokio::sync::Notify::new(),
        }
    }
}

/// The default wait between adopting an index and checking it: the first
/// reads of a new image come in bursts, and the check streams whole layers.
pub const DEFAULT_CHECK_DELAY: std::time::Duration = std::time::Duration::from_secs(10);

/// `(repo, image)` waiting to be published, and every image queued so far.
type PublishQueue = (Vec<(String, Digest)>, HashSet<Digest>);

struct Pending {
    repo: String,
    desc: BlobRef,
    index: Arc<index_file::ImportedIndex>,
}

/// What [`Content::publish_indexes`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishReport {
    /// The artifact manifest's digest.
    pub artifact: Digest,
    /// Gzip layers whose index it holds.
    pub layers: usize,
    /// Gzip layers left out (not indexed in this cache).
    pub missing: usize,
    /// The fallback tag updated, when the registry has no referrers API.
    pub fallback_tag: Option<String>,
    /// The artifact was already listed as a referrer (nothing changed).
    pub already: bool,
}

fn bad(what: impl Into<String>) -> Error {
    Error::invalid(what.into())
}

impl Content {
    /// Look for published indexes when a gzip layer's tree is first needed,
    /// and check each adopted one `check_delay` later
    /// ([`Content::check_published_forever`]).
    pub fn set_use_published_indexes(&mut self, on: bool, check_delay: std::time::Duration) {
        self.published.enabled = on;
        self.published.check_delay = check_delay;
    }

    /// Publish the layer indexes of every image whose rootfs this cache
    /// streams ([`Content::publish_queued_forever`]).
    pub fn set_publish_indexes(&mut self, on: bool) {
        self.published.publish = on;
    }

    /// With `--publish-indexes`: publish `repo@image`'s layer indexes soon
    /// (once per image per daemon).
    pub fn queue_publish(&self, repo: &str, image: &Digest) {
        if !self.published.publish {
            return;
        }
        let mut q = self.published.to_publish.lock().unwrap();
        if q.1.insert(image.clone()) {
            q.0.push((repo.to_string(), image.clone()));
            self.published.publish_wake.notify_one();
        }
    }

    /// Publish queued images for the daemon's life; failures are logged
    /// (the image is not tried again until the daemon restarts).
    pub async fn publish_queued_forever(&self) {
        loop {
            self.published.publish_wake.notified().await;
            let batch = std::mem::take(&mut self.published.to_publish.lock().unwrap().0);
            for (repo, image) in batch {
                match self.publish_indexes(&repo, &image).await {
                    Ok(p) => {
                        tracing::info!(%repo, %image, artifact = %p.artifact, layers = p.layers, already = p.already, "layer indexes published")
                    }
                    Err(e) => {
                        tracing::warn!(%repo, %image, error = %e, "publishing layer indexes failed")
                    }
                }
            }
        }
    }

    /// Wake the checker of adopted indexes and lists.
    pub(super) fn wake_published_check(&self) {
        self.published.wake.notify_one();
    }

    /// The index of layer `diff_id` adopted and not opened yet, as parsed
    /// (taken: the next open reads the store).
    pub(super) fn take_fresh_index(
        &self,
        diff_id: &Digest,
    ) -> Option<Arc<index_file::ImportedIndex>> {
        self.published.fresh.lock().unwrap().remove(diff_id)
    }

    /// Whether the published index of layer `diff_id` was found wrong.
    pub fn index_revoked(&self, diff_id: &Digest) -> bool {
        self.published.revoked.lock().unwrap().contains(diff_id)
    }

    /// The image `repo@image` and its layers with their diff_ids.
    pub(super) async fn image_layers(
        &self,
        repo: &str,
        image: &Digest,
    ) -> Result<(Arc<super::ManifestInfo>, Vec<(BlobRef, Digest)>)> {
        let info = self.manifest(repo, image).await?;
        let Manifest::Image(m) = &info.manifest else {
            return Err(bad(format!("{image} is an index, not an image")));
        };
        let config = self.config(repo, &m.config).await?;
        let layers = m
            .layers_with_diff_ids(&config, &image.to_string())?
            .map(|(b, d)| (b.clone(), d.clone()))
            .collect();
        Ok((info.clone(), layers))
    }

    /// Push the indexes this cache holds of the gzip layers of `repo@image`
    /// as one artifact referring to the image, and list it as a referrer
    /// (through the tag schema where the registry has no referrers API).
    /// Pushing twice changes nothing.
    pub async fn publish_indexes(&self, repo: &str, image: &Digest) -> Result<PublishReport> {
        let (info, layers) = self.image_layers(repo, image).await?;
        let mut files = Vec::new();
        let mut missing = 0;
        for (desc, diff_id) in &layers {
            if Compression::from_media_type(&desc.media_type)? != Compression::Gzip {
                continue;
            }
            // Reads the store and deflates every window: off the async workers.
            let (store, d) = (self.store.clone(), diff_id.clone());
            let exported =
                crate::blocking::run(move || index_file::export_published(&store, &d)).await;
            match exported {
                Ok(f) if f.blob == desc.digest && &f.diff_id == diff_id => files.push(f),
                Ok(_) | Err(Error::NotFound(_)) => missing += 1,
                Err(e) => return Err(e),
            }
        }
        if files.is_empty() {
            return Err(Error::NotFound(format!(
                "no gzip layer of {repo}@{image} is indexed in this cache: read its rootfs once first"
            )));
        }
        let n = files.len();
        let mut out = self
            .push_referrer(
                repo,
                image,
                &info.bytes,
                INDEX_ARTIFACT_TYPE,
                files_of(files),
            )
            .await?;
        (out.layers, out.missing) = (n, missing);
        Ok(out)
    }

    /// Push `files` (media type, bytes, annotations) as one artifact of
    /// `artifact_type` whose subject is `repo@image` (manifest bytes
    /// `image_bytes`), and list it as a referrer (through the tag schema
    /// where the registry has no referrers API, replacing the artifact of
    /// that type listed before). Pushing twice changes nothing.
    pub(super) async fn push_referrer(
        &self,
        repo: &str,
        image: &Digest,
        image_bytes: &[u8],
        artifact_type: &str,
        files: Vec<(&str, Bytes, Value)>,
    ) -> Result<PublishReport> {
        let client = &self.client;
        let push = |bytes: Bytes| async move {
            let digest = Digest::sha256_of(&bytes);
            let size = bytes.len() as u64;
            let body = futures_util::stream::once(async move { Ok(bytes) }).boxed();
            client.push_blob(repo, &digest, size, body).await?;
            Ok::<_, Error>((digest, size))
        };
        let (empty, empty_size) = push(Bytes::from_static(b"{}")).await?;
        let mut descs = Vec::new();
        for (media_type, bytes, annotations) in files {
            let (digest, size) = push(bytes).await?;
            descs.push(json!({
                "mediaType": media_type,
                "digest": digest.to_string(),
                "size": size,
                "annotations": annotations,
            }));
        }
        let layers_n = descs.len();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {"mediaType": EMPTY_MEDIA_TYPE, "digest": empty.to_string(), "size": empty_size},
            "layers": descs,
            "subject": {
                "mediaType": media_type_of(image_bytes).unwrap_or_else(|| OCI_MANIFEST.to_string()),
                "digest": image.to_string(),
                "size": image_bytes.len(),
            },
        });
        let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("JSON"));
        let artifact = Digest::sha256_of(&bytes);
        let size = bytes.len();
        self.client
            .put_manifest(
                repo,
                &Selector::Digest(artifact.clone()),
                OCI_MANIFEST,
                bytes,
            )
            .await?;
        let mut out = PublishReport {
            artifact: artifact.clone(),
            layers: layers_n,
            missing: 0,
            fallback_tag: None,
            already: false,
        };
        if self.client.referrers(repo, image).await?.is_some() {
            // The registry indexes the subject itself.
            return Ok(out);
        }
        let tag = fallback_tag(image);
        let mut index = match self
            .client
            .manifest(repo, &Selector::Tag(tag.clone()))
            .await
        {
            Ok(m) => serde_json::from_slice::<Value>(&m.bytes)
                .map_err(|e| bad(format!("referrers tag {tag}: {e}")))?,
            Err(Error::NotFound(_)) => {
                json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
            }
            Err(e) => return Err(e),
        };
        let list = index["manifests"]
            .as_array_mut()
            .ok_or_else(|| bad(format!("referrers tag {tag}: no manifests")))?;
        out.fallback_tag = Some(tag.clone());
        if list.iter().any(|d| d["digest"] == artifact.to_string()) {
            out.already = true;
            return Ok(out);
        }
        // One artifact of each of regfs's types per image: a new one (a
        // re-push after the format changed, or of another machine's
        // indexes) replaces the one before it.
        list.retain(|d| d["artifactType"] != artifact_type);
        list.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": artifact.to_string(),
            "size": size,
            "artifactType": artifact_type,
        }));
        let bytes = Bytes::from(serde_json::to_vec(&index).expect("JSON"));
        self.client
            .put_manifest(repo, &Selector::Tag(tag), OCI_INDEX, bytes)
            .await?;
        Ok(out)
    }

    /// Once per image, with published indexes on: find the image's index
    /// artifact and adopt each layer index in it that checks out (see the
    /// module docs); returns how many were adopted. Layers already cached
    /// whole or indexed are left alone. Failures only cost the laziness:
    /// they are logged and the layers are streamed as without an index.
    pub async fn adopt_published_indexes(&self, repo: &str, image: &Digest) -> usize {
        if !self.published.enabled || !self.published.looked.lock().unwrap().insert(image.clone()) {
            return 0;
        }
        match self.adopt(repo, image).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%repo, %image, error = %e, "published layer indexes not used");
                0
            }
        }
    }

    async fn adopt(&self, repo: &str, image: &Digest) -> Result<usize> {
        // The referrers (two or three round trips) beside the config.
        let (layers, found) = tokio::join!(
            self.image_layers(repo, image),
            self.published_files(
                repo,
                image,
                INDEX_ARTIFACT_TYPE,
                ANNOTATION_LAYER,
                MAX_INDEX_FILE,
            )
        );
        let (_, layers) = layers?;
        let wanted: Vec<&(BlobRef, Digest)> = layers
            .iter()
            .filter(|(desc, diff_id)| {
                Compression::from_media_type(&desc.media_type).ok() == Some(Compression::Gzip)
                    && !self.has_whole_layer(diff_id)
                    && self.store.get(Section::Index, diff_id).is_none()
                    && !self.index_revoked(diff_id)
            })
            .collect();
        if wanted.is_empty() {
            return Ok(0);
        }
        let Some((digest, files)) = found? else {
            tracing::debug!(%repo, %image, "no published layer index");
            return Ok(0);
        };
        // Every layer's index at once: fetched, parsed and stored in parallel
        // (windows blobs are only ever read by Range, window by window).
        let index_files = files
            .iter()
            .filter(|(_, f)| f.media_type != WINDOWS_MEDIA_TYPE);
        let adoptions = index_files.filter_map(|(layer, file_ref)| {
            let (desc, diff_id) = wanted.iter().find(|(b, _)| b.digest.to_string() == *layer)?;
            Some(async move {
                let got = self.adopt_one(repo, desc, diff_id, file_ref).await;
                if let Err(e) = &got {
                    tracing::warn!(%layer, error = %e, "published layer index rejected; the layer is streamed")
                }
                got.is_ok()
            })
        });
        let adopted = futures_util::future::join_all(adoptions)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count();
        if adopted > 0 {
            tracing::info!(%repo, %image, artifact = %digest, adopted, "serving gzip layers by published span indexes");
            self.published.wake.notify_one();
        }
        Ok(adopted)
    }

    async fn adopt_one(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
        file: &BlobRef,
    ) -> Result<()> {
        let bytes = self.small_blob(repo, file).await?;
        let (store, blob, diff) = (self.store.clone(), desc.digest.clone(), diff_id.clone());
        let gzipped = match file.media_type.as_str() {
            INDEX_FILE_GZIP_MEDIA_TYPE | INDEX_FILE_V2_MEDIA_TYPE => true,
            INDEX_FILE_MEDIA_TYPE => false,
            other => return Err(bad(format!("unknown index file media type {other}"))),
        };
        // Parsed once, off the async workers; stored only if it names this layer.
        let ix = crate::blocking::run(move || {
            let bytes = match gzipped {
                true => gunzip(&bytes, MAX_INDEX_FILE)?,
                false => bytes,
            };
            index_file::import_index_if(&store, &bytes, |ix| {
                if ix.blob != blob {
                    return Err(bad(format!("it indexes blob {}, not {blob}", ix.blob)));
                }
                if ix.diff_id != diff {
                    return Err(bad(format!(
                        "its diff_id {} is not the config's {diff}",
                        ix.diff_id
                    )));
                }
                Ok(())
            })
        })
        .await?;
        let ix = Arc::new(ix);
        self.published
            .fresh
            .lock()
            .unwrap()
            .insert(diff_id.clone(), ix.clone());
        self.published.pending.lock().unwrap().insert(
            diff_id.clone(),
            Pending {
                repo: repo.to_string(),
                desc: desc.clone(),
                index: ix,
            },
        );
        Ok(())
    }

    /// The files of `repo@subject`'s referrer of `artifact_type` (fetched
    /// by digest, so verified, and checked to name `subject`): for each, the
    /// value of its annotation `names` (what it is for) and its descriptor,
    /// those over `max` bytes left out with a warning. `None`: no referrer
    /// of that type.
    pub(super) async fn published_files(
        &self,
        repo: &str,
        subject: &Digest,
        artifact_type: &str,
        names: &str,
        max: u64,
    ) -> Result<Option<(Digest, Vec<(String, BlobRef)>)>> {
        // The last listed: a tag-schema list is appended to, so that is the
        // newest where an older regfs left an artifact of the type behind.
        let Some(artifact) = self
            .referrers(repo, subject)
            .await?
            .into_iter()
            .rfind(|r| r.artifact_type == artifact_type)
        else {
            return Ok(None);
        };
        let digest = artifact.digest;
        // By digest: the bytes are checked against it.
        let m = self
            .client
            .manifest(repo, &Selector::Digest(digest.clone()))
            .await?;
        let v: Value = serde_json::from_slice(&m.bytes)
            .map_err(|e| bad(format!("{artifact_type} artifact {digest}: {e}")))?;
        if v["subject"]["digest"] != subject.to_string() {
            return Err(bad(format!(
                "{artifact_type} artifact {digest} is for another manifest"
            )));
        }
        let mut out = Vec::new();
        for d in v["layers"].as_array().cloned().unwrap_or_default() {
            let (Some(name), Some(file), Some(media_type)) = (
                d["annotations"][names].as_str(),
                d["digest"].as_str().and_then(|f| f.parse::<Digest>().ok()),
                d["mediaType"].as_str(),
            ) else {
                continue;
            };
            let size = d["size"].as_u64().unwrap_or(u64::MAX);
            if size > max {
                tracing::warn!(%name, size, "a published {artifact_type} file too large; not used");
                continue;
            }
            let desc = BlobRef {
                media_type: media_type.to_string(),
                digest: file,
                size,
                urls: Vec::new(),
                annotations: Default::default(),
            };
            out.push((name.to_string(), desc));
        }
        Ok(Some((digest, out)))
    }

    /// The bytes of small blob `desc` (verified, through the store).
    pub(super) async fn small_blob(&self, repo: &str, desc: &BlobRef) -> Result<Vec<u8>> {
        let f = self.blob(repo, desc).await?;
        crate::blocking::run(move || {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut &f, &mut v)?;
            Ok(v)
        })
        .await
    }

    /// Check every adopted index against its layer, streamed once and
    /// verified (see the module docs), and every adopted chunk list against
    /// its blob ([`super::published_chunks`]); returns (checked, revoked).
    pub async fn check_published(&self) -> (usize, usize) {
        let pending: Vec<(Digest, Pending)> =
            self.published.pending.lock().unwrap().drain().collect();
        let (mut checked, mut revoked) = (0, 0);
        for (diff_id, p) in pending {
            // From now on the store says what the layer is.
            self.published.fresh.lock().unwrap().remove(&diff_id);
            match self.check_one(&diff_id, &p).await {
                Ok(()) => {
                    checked += 1;
                    tracing::info!(%diff_id, "published layer index matches the layer");
                }
                Err(e @ Error::Invalid(_)) => {
                    checked += 1;
                    revoked += 1;
                    self.published
                        .revoked
                        .lock()
                        .unwrap()
                        .insert(diff_id.clone());
                    metrics::counter!(crate::telemetry::PUBLISHED_INDEX_REJECTED).increment(1);
                    tracing::error!(
                        %diff_id, layer = %p.desc.digest, error = %e,
                        "PUBLISHED LAYER INDEX IS WRONG: revoked; reads through it fail and the layer is served whole"
                    );
                }
                Err(e) => {
                    // Not decided (the network): try again later.
                    tracing::warn!(%diff_id, error = %e, "checking a published layer index failed; will retry");
                    self.published.pending.lock().unwrap().insert(diff_id, p);
                }
            }
        }
        let (lists_checked, lists_revoked) = self.check_chunk_lists().await;
        (checked + lists_checked, revoked + lists_revoked)
    }

    async fn check_one(&self, diff_id: &Digest, p: &Pending) -> Result<()> {
        // Streams and verifies the blob and diff_id, and stores the tree and
        // span index computed from it in place of the published ones.
        let loaded = self
            .layer_with(&p.repo, &p.desc, diff_id, Urgency::Background)
            .await?;
        if *loaded.tree != p.index.tree {
            return Err(bad("its tree differs from the layer's"));
        }
        let file = loaded.file.clone();
        let index = p.index.clone();
        crate::blocking::run(move || {
            let spans = &index.spans;
            if let Some(t) = &index.windows {
                check_windows(&*file, spans, t)?;
            }
            let cps = &spans.checkpoints;
            for (i, cp) in cps.iter().enumerate() {
                let end = cps
                    .get(i + 1)
                    .map_or(spans.uncompressed_size, |n| n.uncompressed);
                let len = end
                    .checked_sub(cp.uncompressed)
                    .ok_or_else(|| bad(format!("span {i} ends before it starts")))?;
                let mut buf = vec![0u8; len as usize];
                let got = crate::layer::read_full_at(&*file, &mut buf, cp.uncompressed)?;
                let mut h = Hasher::new(cp.span_digest.algorithm());
                h.update(&buf);
                if got != buf.len() || h.finish() != cp.span_digest {
                    return Err(bad(format!("span {i} is not the layer's bytes")));
                }
            }
            Ok(())
        })
        .await
    }

    /// Run [`Content::check_published`] whenever indexes are adopted (the
    /// check delay after), for the daemon's life; the layers stream at the
    /// CPU priority of background work and no faster than
    /// `--background-bandwidth` ([`Urgency::Background`]).
    pub async fn check_published_forever(&self) {
        loop {
            self.published.wake.notified().await;
            tokio::time::sleep(self.published.check_delay).await;
            let (checked, revoked) = self.check_published().await;
            tracing::debug!(checked, revoked, "published index check round");
            if !self.published.pending.lock().unwrap().is_empty() || self.chunk_lists_pending() {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                self.published.wake.notify_one();
            }
        }
    }
}

/// Each published window (by its digest) is the `raw_len` bytes of the
/// layer's tar before its checkpoint, as a window must be: a wrong one
/// could only fail reads (spans are checked), but it is a wrong index.
fn check_windows(
    tar: &dyn crate::layer::ReadAt,
    spans: &crate::layer::span::SpanIndex,
    t: &crate::layer::span_windows::WindowTable,
) -> Result<()> {
    for (i, (cp, w)) in spans.checkpoints.iter().zip(&t.windows).enumerate() {
        let len = u64::from(w.raw_len);
        let wrong = || bad(format!("window {i} is not the layer's bytes"));
        let start = cp.uncompressed.checked_sub(len).ok_or_else(wrong)?;
        let mut buf = vec![0u8; len as usize];
        let got = crate::layer::read_full_at(tar, &mut buf, start)?;
        let mut h = Hasher::new(w.digest.algorithm());
        h.update(&buf);
        if got != buf.len() || h.finish() != w.digest {
            return Err(wrong());
        }
    }
    Ok(())
}

/// Layer index files as artifact files: media type, bytes, annotations.
/// Each layer has two: its index file (gzip) and its windows blob (its
/// windows deflated one by one already: stored as is).
fn files_of(files: Vec<index_file::PublishedFiles>) -> Vec<(&'static str, Bytes, Value)> {
    files
        .into_iter()
        .flat_map(|f| {
            let annotations = json!({
                ANNOTATION_LAYER: f.blob.to_string(),
                ANNOTATION_DIFF_ID: f.diff_id.to_string(),
            });
            [
                (INDEX_FILE_V2_MEDIA_TYPE, gzip(&f.file), annotations.clone()),
                (WINDOWS_MEDIA_TYPE, Bytes::from(f.windows), annotations),
            ]
        })
        .collect()
}

/// `bytes` gzip-compressed (deterministic: no name, no time stamp).
fn gzip(bytes: &[u8]) -> Bytes {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("writing to memory");
    Bytes::from(e.finish().expect("writing to memory"))
}

/// `bytes` inflated, refused past `max` bytes.
fn gunzip(bytes: &[u8], max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("gzip: {e}")))?;
    if out.len() as u64 > max {
        return Err(Error::TooLarge(format!(
            "a published index inflates past {max} bytes"
        )));
    }
    Ok(out)
}

/// The `mediaType` a manifest's JSON declares.
fn media_type_of(bytes: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v["mediaType"].as_str().map(str::to_string)
}
