//! An in-process registry, for tests and embedding: it serves the
//! repositories, tags, manifests and blobs put into it through
//! [`RegistryApi`], with the real client's checks (blob streams verified
//! against their digest and size, Range requests, pushes verified before
//! they are kept). No network, no threads of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::api::{BlobBody, BoxBlobBody, RegistryApi};
use super::{ClientStats, FetchedManifest};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::media_type::{OCI_CONFIG, OCI_MANIFEST};
use crate::reference::{validate_repository, Registry, Selector};

/// Bytes a [`VerifyingBody`] hands out per chunk.
const CHUNK: usize = 64 << 10;

#[derive(Default)]
struct Repo {
    tags: BTreeMap<String, Digest>,
    /// Manifests by digest: (media type, bytes).
    manifests: HashMap<Digest, (String, Bytes)>,
    blobs: BTreeSet<Digest>,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    /// Blob bytes by digest, shared by every repository that has the blob.
    blobs: HashMap<Digest, Bytes>,
}

/// A layer to put into a [`MemoryRegistry`] image.
#[derive(Clone, Debug)]
pub struct LayerBlob {
    /// The descriptor's media type (`…tar+gzip`, `…tar+zstd`, `…tar`).
    pub media_type: String,
    /// The blob as served.
    pub bytes: Bytes,
    /// The digest of the uncompressed tar.
    pub diff_id: Digest,
    /// The descriptor's annotations (eStargz / zstd:chunked TOC digests).
    pub annotations: BTreeMap<String, String>,
}

#[cfg(test)]
impl LayerBlob {
    /// `tar` as a gzip layer.
    pub(crate) fn gzip(tar: &[u8]) -> LayerBlob {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, tar).expect("in memory");
        LayerBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            bytes: e.finish().expect("in memory").into(),
            diff_id: Digest::sha256_of(tar),
            annotations: BTreeMap::new(),
        }
    }

    /// `tar` as an eStargz layer (the export's writer), with its TOC annotation.
    pub(crate) fn estargz(tar: &[u8]) -> LayerBlob {
        let lazy = crate::estargz::testutil::estargz(tar);
        let mut diff = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(&lazy.blob[..]),
            &mut diff,
        )
        .expect("in memory");
        LayerBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            bytes: lazy.blob.into(),
            diff_id: Digest::sha256_of(&diff),
            annotations: lazy.annotations,
        }
    }
}

/// A registry held in memory; see the module documentation.
pub struct MemoryRegistry {
    registry: Registry,
    state: Mutex<State>,
    requests: AtomicU64,
    bytes_received: AtomicU64,
    blob_requests: Mutex<HashMap<Digest, u64>>,
}

impl MemoryRegistry {
    /// An empty registry that calls itself `name`.
    pub fn new(name: &str) -> MemoryRegistry {
        MemoryRegistry {
            registry: Registry {
                name: name.to_string(),
                api_host: name.to_string(),
            },
            state: Mutex::new(State::default()),
            requests: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            blob_requests: Mutex::new(HashMap::new()),
        }
    }

    /// Put `bytes` into `repo` as a blob; returns its sha256 digest.
    pub fn add_blob(&self, repo: &str, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let digest = Digest::sha256_of(&bytes);
        self.add_blob_as(repo, &digest, bytes);
        digest
    }

    /// Put `bytes` into `repo` under `digest`, whether or not they hash to
    /// it (to serve a corrupt blob).
    pub fn add_blob_as(&self, repo: &str, digest: &Digest, bytes: impl Into<Bytes>) {
        let mut s = self.state.lock().unwrap();
        s.blobs.insert(digest.clone(), bytes.into());
        s.repos
            .entry(repo.to_string())
            .or_default()
            .blobs
            .insert(digest.clone());
    }

    /// Put a manifest into `repo` (under `tag` if given); returns its digest.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: impl Into<Bytes>,
    ) -> Digest {
        let bytes = bytes.into();
        let digest = Digest::sha256_of(&bytes);
        let mut s = self.state.lock().unwrap();
        let r = s.repos.entry(repo.to_string()).or_default();
        r.manifests
            .insert(digest.clone(), (media_type.to_string(), bytes));
        if let Some(t) = tag {
            r.tags.insert(t.to_string(), digest.clone());
        }
        digest
    }

    /// Point `tag` of `repo` at manifest `digest` (a tag move).
    pub fn set_tag(&self, repo: &str, tag: &str, digest: &Digest) {
        let mut s = self.state.lock().unwrap();
        let r = s.repos.entry(repo.to_string()).or_default();
        r.tags.insert(tag.to_string(), digest.clone());
    }

    /// Put a linux/amd64 OCI image of `layers` (bottom first) into `repo`
    /// under `tag`: its config and layer blobs, then its manifest, whose
    /// digest is returned.
    pub fn add_image(&self, repo: &str, tag: &str, layers: &[LayerBlob]) -> Digest {
        self.add_image_running(repo, tag, layers, serde_json::json!({}))
    }

    /// [`MemoryRegistry::add_image`] with `run` as the config's `config`
    /// (`Entrypoint`, `Cmd`, `Env`, …).
    pub fn add_image_running(
        &self,
        repo: &str,
        tag: &str,
        layers: &[LayerBlob],
        run: serde_json::Value,
    ) -> Digest {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.to_string()).collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "config": run,
        });
        let config = Bytes::from(serde_json::to_vec(&config).expect("JSON of a value"));
        let config_desc = serde_json::json!({
            "mediaType": OCI_CONFIG,
            "digest": self.add_blob(repo, config.clone()).to_string(),
            "size": config.len(),
        });
        let layer_descs: Vec<serde_json::Value> = layers
            .iter()
            .map(|l| {
                let mut d = serde_json::json!({
                    "mediaType": l.media_type,
                    "digest": self.add_blob(repo, l.bytes.clone()).to_string(),
                    "size": l.bytes.len(),
                });
                if !l.annotations.is_empty() {
                    d["annotations"] = serde_json::json!(l.annotations);
                }
                d
            })
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_desc,
            "layers": layer_descs,
        });
        let bytes = serde_json::to_vec(&manifest).expect("JSON of a value");
        self.add_manifest(repo, Some(tag), OCI_MANIFEST, bytes)
    }

    /// The stored bytes of blob `digest` in `repo` (as served, unverified).
    pub fn blob_bytes(&self, repo: &str, digest: &Digest) -> Result<Bytes> {
        let s = self.state.lock().unwrap();
        s.repos
            .get(repo)
            .filter(|r| r.blobs.contains(digest))
            .and_then(|_| s.blobs.get(digest).cloned())
            .ok_or_else(|| Error::NotFound(format!("blob {digest} in {repo}")))
    }

    /// GET requests (streams and ranges) served for blob `digest` so far.
    pub fn blob_requests(&self, digest: &Digest) -> u64 {
        self.blob_requests
            .lock()
            .unwrap()
            .get(digest)
            .copied()
            .unwrap_or(0)
    }

    /// Count a request (and a blob GET when `blob` is given).
    fn count(&self, blob: Option<&Digest>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = blob {
            *self
                .blob_requests
                .lock()
                .unwrap()
                .entry(d.clone())
                .or_default() += 1;
        }
    }

    /// Count `n` body bytes sent to the caller.
    pub(crate) fn sent(&self, n: usize) {
        self.bytes_received.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Blob bytes for a GET (counted), checked to exist.
    pub(crate) fn serve_blob(&self, repo: &str, digest: &Digest) -> Result<Bytes> {
        validate_repository(repo)?;
        self.count(Some(digest));
        self.blob_bytes(repo, digest)
    }

    fn has_blob(&self, repo: &str, digest: &Digest) -> bool {
        self.blob_bytes(repo, digest).is_ok()
    }

    fn fetch_manifest(&self, repo: &str, sel: &Selector) -> Result<FetchedManifest> {
        validate_repository(repo)?;
        self.count(None);
        let what = format!("manifest {repo}:{sel}");
        let s = self.state.lock().unwrap();
        let r = s
            .repos
            .get(repo)
            .ok_or_else(|| Error::NotFound(what.clone()))?;
        let digest = match sel {
            Selector::Tag(t) => r.tags.get(t).ok_or_else(|| Error::NotFound(what.clone()))?,
            Selector::Digest(d) => d,
        };
        let (media_type, bytes) = r
            .manifests
            .get(digest)
            .ok_or_else(|| Error::NotFound(what.clone()))?;
        digest.verify(bytes, &what)?;
        super::manifests::check_supported(media_type)?;
        self.sent(bytes.len());
        Ok(FetchedManifest {
            bytes: bytes.clone(),
            media_type: media_type.clone(),
            digest: digest.clone(),
        })
    }

    /// Bytes `offset..offset+len` of `bytes`, as a Range request answers.
    pub(crate) fn range_of(bytes: &Bytes, offset: u64, len: u64, what: &str) -> Result<Bytes> {
        let size = bytes.len() as u64;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if offset >= size {
            return Err(Error::Registry {
                status: 416,
                message: format!("{what}: range {offset}+{len} not satisfiable ({size} bytes)"),
            });
        }
        let end = offset.saturating_add(len).min(size);
        Ok(bytes.slice(offset as usize..end as usize))
    }

    /// `ranges` of `bytes` as [`MemoryRegistry::range_of`] cuts each,
    /// counted as sent.
    pub(crate) fn ranges_of(
        &self,
        bytes: &Bytes,
        ranges: &[(u64, u64)],
        what: &str,
    ) -> Result<Vec<Bytes>> {
        let out: Vec<Bytes> = ranges
            .iter()
            .map(|&(offset, len)| Self::range_of(bytes, offset, len, what))
            .collect::<Result<_>>()?;
        self.sent(out.iter().map(Bytes::len).sum());
        Ok(out)
    }

    /// Collect a pushed body (an error item cancels the push).
    async fn collect(mut body: BoxStream<'_, Result<Bytes>>) -> Result<Bytes> {
        let mut buf = BytesMut::new();
        while let Some(b) = body.next().await {
            buf.extend_from_slice(&b?);
        }
        Ok(buf.freeze())
    }
}

/// A verified body over bytes held in memory: hashed as handed out, and
/// ended like the real client's stream ends (size and digest checked).
pub(crate) struct VerifyingBody {
    bytes: Bytes,
    what: String,
    digest: Digest,
    expected_size: Option<u64>,
    hasher: Option<Hasher>,
    received: u64,
    /// Wait this long once when `received` reaches the offset (a stall).
    stall: Option<(u64, Duration)>,
}

impl VerifyingBody {
    pub(crate) fn new(
        repo: &str,
        digest: &Digest,
        size: Option<u64>,
        bytes: Bytes,
        stall: Option<(u64, Duration)>,
    ) -> VerifyingBody {
        VerifyingBody {
            bytes,
            what: format!("blob {digest} in {repo}"),
            digest: digest.clone(),
            expected_size: size,
            hasher: Some(Hasher::new(digest.algorithm())),
            received: 0,
            stall,
        }
    }

    fn finish(&mut self) -> Result<Option<Bytes>> {
        let Some(h) = self.hasher.take() else {
            return Ok(None);
        };
        if let Some(want) = self.expected_size {
            if self.received < want {
                return Err(Error::Network(
                    format!("{}: body ended after {} bytes", self.what, self.received).into(),
                ));
            }
        }
        h.finish().expect(&self.digest, &self.what)?;
        Ok(None)
    }
}

impl BlobBody for VerifyingBody {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>>> {
        Box::pin(async move {
            if let Some((at, wait)) = self.stall {
                if self.received >= at {
                    self.stall = None;
                    tokio::time::sleep(wait).await;
                }
            }
            if self.hasher.is_none() {
                return Ok(None);
            }
            if self.bytes.is_empty() {
                return self.finish();
            }
            let n = self.bytes.len().min(CHUNK);
            let chunk = self.bytes.split_to(n);
            if let Some(want) = self.expected_size {
                if self.received + n as u64 > want {
                    self.hasher = None;
                    return Err(Error::DigestMismatch {
                        what: format!("{} (size)", self.what),
                        expected: format!("{want} bytes"),
                        actual: format!("{} bytes", self.received + n as u64),
                    });
                }
            }
            if let Some(h) = self.hasher.as_mut() {
                h.update(&chunk);
            }
            self.received += n as u64;
            Ok(Some(chunk))
        })
    }

    fn received(&self) -> u64 {
        self.received
    }
}

impl RegistryApi for MemoryRegistry {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn stats(&self) -> ClientStats {
        ClientStats {
            requests: self.requests.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            retries: 0,
            token_fetches: 0,
        }
    }

    fn catalog(&self) -> BoxFuture<'_, Result<Vec<String>>> {
        self.count(None);
        let repos = self.state.lock().unwrap().repos.keys().cloned().collect();
        Box::pin(async move { Ok(repos) })
    }

    fn tags<'a>(&'a self, repo: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            validate_repository(repo)?;
            self.count(None);
            let s = self.state.lock().unwrap();
            let r = s
                .repos
                .get(repo)
                .ok_or_else(|| Error::NotFound(format!("tags of {repo}")))?;
            Ok(r.tags.keys().cloned().collect())
        })
    }

    fn manifest<'a>(
        &'a self,
        repo: &'a str,
        sel: &'a Selector,
    ) -> BoxFuture<'a, Result<FetchedManifest>> {
        Box::pin(async move { self.fetch_manifest(repo, sel) })
    }

    fn blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: Option<u64>,
    ) -> BoxFuture<'a, Result<BoxBlobBody>> {
        Box::pin(async move {
            let bytes = self.serve_blob(repo, digest)?;
            self.sent(bytes.len());
            Ok(Box::new(VerifyingBody::new(repo, digest, size, bytes, None)) as BoxBlobBody)
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
            let bytes = self.serve_blob(repo, digest)?;
            let r = Self::range_of(&bytes, offset, len, &format!("blob {digest} in {repo}"))?;
            self.sent(r.len());
            Ok(r)
        })
    }

    /// One request for all the ranges, as a registry answering multi-range
    /// requests does (counted once).
    fn blob_ranges<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        ranges: &'a [(u64, u64)],
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(async move {
            let bytes = self.serve_blob(repo, digest)?;
            Self::ranges_of(self, &bytes, ranges, &format!("blob {digest} in {repo}"))
        })
    }

    fn blob_size<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            validate_repository(repo)?;
            self.count(None);
            Ok(self.blob_bytes(repo, digest).ok().map(|b| b.len() as u64))
        })
    }

    fn blob_exists<'a>(&'a self, repo: &'a str, digest: &'a Digest) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            validate_repository(repo)?;
            self.count(None);
            Ok(self.has_blob(repo, digest))
        })
    }

    fn mount_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        from_repo: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            validate_repository(repo)?;
            validate_repository(from_repo)?;
            self.count(None);
            let Ok(bytes) = self.blob_bytes(from_repo, digest) else {
                return Ok(false);
            };
            self.add_blob_as(repo, digest, bytes);
            Ok(true)
        })
    }

    fn push_blob<'a>(
        &'a self,
        repo: &'a str,
        digest: &'a Digest,
        size: u64,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            validate_repository(repo)?;
            self.count(None);
            if self.has_blob(repo, digest) {
                return Ok(());
            }
            let bytes = Self::collect(body).await?;
            let what = format!("upload of blob {digest} to {repo}");
            if bytes.len() as u64 != size {
                return Err(Error::DigestMismatch {
                    what: format!("{what} (size)"),
                    expected: format!("{size} bytes"),
                    actual: format!("{} bytes", bytes.len()),
                });
            }
            digest.verify(&bytes, &what)?;
            self.add_blob_as(repo, digest, bytes);
            Ok(())
        })
    }

    fn push_blob_stream<'a>(
        &'a self,
        repo: &'a str,
        body: BoxStream<'a, Result<Bytes>>,
    ) -> BoxFuture<'a, Result<(Digest, u64)>> {
        Box::pin(async move {
            validate_repository(repo)?;
            self.count(None);
            let bytes = Self::collect(body).await?;
            let mut h = Hasher::new(Algorithm::Sha256);
            h.update(&bytes);
            let digest = h.finish();
            let size = bytes.len() as u64;
            self.add_blob_as(repo, &digest, bytes);
            Ok((digest, size))
        })
    }

    fn put_manifest<'a>(
        &'a self,
        repo: &'a str,
        reference: &'a Selector,
        media_type: &'a str,
        bytes: Bytes,
    ) -> BoxFuture<'a, Result<Digest>> {
        Box::pin(async move {
            validate_repository(repo)?;
            self.count(None);
            super::manifests::check_supported(media_type)?;
            let tag = match reference {
                Selector::Tag(t) => Some(t.as_str()),
                Selector::Digest(d) => {
                    d.verify(&bytes, &format!("manifest {repo}@{d}"))?;
                    None
                }
            };
            Ok(self.add_manifest(repo, tag, media_type, bytes))
        })
    }
}
