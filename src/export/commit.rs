//! Commits: pack an entry's upper tree into a layer while uploading it (or
//! reuse the last commit's layer if the tree did not change), build the config
//! and manifest on top of its base, and push the rest, the manifest last.
//! [`Exporter`] is the service shared by the export filesystem and the
//! control socket.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::base::{self, BaseTree};
use super::compress::{pack_to, Codec, Packed};
use super::image::{build_config, build_manifest, LayerDesc, ManifestFormat};
use super::pack::PackOptions;
use super::push::{push_image, BlobSource, ImagePush, PushBlob, PushReport};
use super::staging::{now_secs, parse_entry_ref, CommitRecord, EntryMeta, LayerRecord, Staging};
use super::stream_push::pack_and_push;
use crate::content::Content;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::estargz::TOC_DIGEST_ANNOTATION;
use crate::image::Platform;

/// The layer annotation with an eStargz layer's uncompressed (tar) size.
pub use super::compress::UNCOMPRESSED_SIZE_ANNOTATION as ESTARGZ_UNCOMPRESSED_SIZE;

/// How to commit.
#[derive(Clone, Debug, Default)]
pub struct CommitOptions {
    /// Layer compression.
    pub codec: Codec,
    /// Manifest flavour.
    pub format: ManifestFormat,
    /// Clamp mtimes to this and use it as `created`.
    pub source_date_epoch: Option<i64>,
}

/// A commit in flight, for `regfs status` and progress bars.
#[derive(Debug, Default)]
pub struct CommitProgress {
    /// `pack`, `push`, `manifest`.
    pub phase: Mutex<&'static str>,
    /// Bytes of staged content (what `packed` goes up to).
    pub content_total: AtomicU64,
    /// Content bytes packed so far.
    pub packed: AtomicU64,
    /// Bytes of blobs to push.
    pub push_total: AtomicU64,
    /// Blob bytes pushed (or found present / mounted) so far.
    pub sent: Arc<AtomicU64>,
}

/// A snapshot of [`CommitProgress`], as the control socket sends it (the
/// progress lines of `commit`, and the commits in flight of `status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProgressView {
    /// The entry.
    pub entry: String,
    /// `pack`, `push`, `manifest`.
    pub phase: String,
    /// Content bytes packed so far.
    pub packed: u64,
    /// Bytes of staged content (what `packed` goes up to).
    pub content_total: u64,
    /// Blob bytes pushed (or found present / mounted) so far.
    pub sent: u64,
    /// Bytes of blobs to push.
    pub push_total: u64,
}

/// What a commit produced (also as the control socket sends it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CommitOutcome {
    /// `repo:tag` pushed.
    pub reference: String,
    /// The manifest digest.
    pub manifest: String,
    /// The new layer's blob digest.
    pub layer: String,
    /// The new layer's diff_id.
    pub diff_id: String,
    /// Compressed size of the new layer.
    pub layer_size: u64,
    /// Blobs already present / mounted / uploaded.
    pub present: usize,
    /// Blobs mounted from the base repository.
    pub mounted: usize,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Milliseconds packing and uploading the new layer (they overlap).
    pub pack_ms: u64,
    /// Milliseconds pushing the rest: base layers, config, manifest.
    pub push_ms: u64,
}

/// The export service: staging, base trees, commits.
pub struct Exporter {
    staging: Staging,
    content: Arc<dyn AsContent>,
    platform: Platform,
    in_flight: Mutex<BTreeMap<String, Arc<CommitProgress>>>,
    bases: Mutex<HashMap<Digest, Arc<BaseTree>>>,
    base_lock: tokio::sync::Mutex<()>,
    /// Defaults for filesystem-triggered commits.
    pub defaults: CommitOptions,
}

/// Something that holds a [`Content`] (the read-only filesystem does).
pub trait AsContent: Send + Sync {
    /// The content source.
    fn content(&self) -> &Content;
}

impl AsContent for crate::fs::Fs {
    fn content(&self) -> &Content {
        crate::fs::Fs::content(self)
    }
}

impl AsContent for Content {
    fn content(&self) -> &Content {
        self
    }
}

impl Exporter {
    /// A service over `staging`, fetching through `content`; `platform` is used
    /// for images without a base (and to pick a base from an index).
    pub fn new(
        staging: Staging,
        content: Arc<dyn AsContent>,
        platform: Platform,
        defaults: CommitOptions,
    ) -> Exporter {
        Exporter {
            staging,
            content,
            platform,
            in_flight: Mutex::default(),
            bases: Mutex::default(),
            base_lock: tokio::sync::Mutex::new(()),
            defaults,
        }
    }

    /// The staging area.
    pub fn staging(&self) -> &Staging {
        &self.staging
    }

    /// The content source.
    pub fn content(&self) -> &Content {
        self.content.content()
    }

    /// Make entry `reference`, starting from `from` (a reference in the same registry) if given.
    pub async fn new_entry(&self, reference: &str, from: Option<&str>) -> Result<EntryMeta> {
        let mut meta = EntryMeta::new(reference)?;
        if let Some(f) = from {
            meta.base = Some(base::resolve(self.content(), f, &self.platform).await?);
            meta.from = Some(f.to_string());
        }
        self.staging.create(&meta)?;
        tracing::info!(entry = reference, from = ?from, "export entry created");
        Ok(meta)
    }

    /// The merged base tree of an entry, loaded once (may fetch layers).
    pub async fn base_tree(&self, meta: &EntryMeta) -> Result<Option<Arc<BaseTree>>> {
        let Some(b) = &meta.base else {
            return Ok(None);
        };
        if let Some(t) = self.bases.lock().unwrap().get(&b.digest) {
            return Ok(Some(t.clone()));
        }
        let _g = self.base_lock.lock().await;
        if let Some(t) = self.bases.lock().unwrap().get(&b.digest) {
            return Ok(Some(t.clone()));
        }
        let t = Arc::new(base::tree(self.content(), b).await?);
        self.bases
            .lock()
            .unwrap()
            .insert(b.digest.clone(), t.clone());
        Ok(Some(t))
    }

    /// A loaded base tree, without waiting (None if not loaded yet).
    pub fn cached_base(&self, digest: &Digest) -> Option<Arc<BaseTree>> {
        self.bases.lock().unwrap().get(digest).cloned()
    }

    /// Commits in flight.
    pub fn in_flight(&self) -> Vec<ProgressView> {
        self.in_flight
            .lock()
            .unwrap()
            .iter()
            .map(|(k, p)| ProgressView {
                entry: k.clone(),
                phase: p.phase.lock().unwrap().to_string(),
                packed: p.packed.load(Ordering::Relaxed),
                content_total: p.content_total.load(Ordering::Relaxed),
                sent: p.sent.load(Ordering::Relaxed),
                push_total: p.push_total.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Progress of the commit of `entry`, if one is running.
    pub fn progress(&self, entry: &str) -> Option<Arc<CommitProgress>> {
        self.in_flight.lock().unwrap().get(entry).cloned()
    }

    /// Commit entry `reference`: pack, push, and record the result. Only one
    /// commit per entry at a time (`EBUSY` otherwise).
    pub async fn commit(&self, reference: &str, opts: &CommitOptions) -> Result<CommitOutcome> {
        parse_entry_ref(reference)?;
        let progress = Arc::new(CommitProgress::default());
        {
            let mut f = self.in_flight.lock().unwrap();
            if f.contains_key(reference) {
                return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EBUSY)));
            }
            f.insert(reference.to_string(), progress.clone());
        }
        let r = self.commit_inner(reference, opts, &progress).await;
        self.in_flight.lock().unwrap().remove(reference);
        match &r {
            Ok(o) => tracing::info!(
                entry = reference, manifest = %o.manifest, layer = %o.layer,
                size = o.layer_size, mounted = o.mounted, uploaded = o.uploaded,
                pack_ms = o.pack_ms, push_ms = o.push_ms, "committed"
            ),
            Err(e) => tracing::error!(entry = reference, error = %e, "commit failed; staging kept"),
        }
        r
    }

    async fn commit_inner(
        &self,
        reference: &str,
        opts: &CommitOptions,
        progress: &Arc<CommitProgress>,
    ) -> Result<CommitOutcome> {
        let mut meta = self
            .staging
            .get(reference)?
            .ok_or_else(|| Error::NotFound(format!("export entry {reference}")))?;
        let (repo, tag) = meta.repo_tag();
        *progress.phase.lock().unwrap() = "pack";
        let base = match &meta.base {
            Some(b) => Some(base::image(self.content(), b).await?),
            None => None,
        };
        let root = self.staging.root(reference);
        let codec = opts.codec;
        let started = Instant::now();
        let r = root.clone();
        let tree = tokio::task::spawn_blocking(move || fingerprint(&r))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        progress
            .content_total
            .store(tree.content_bytes, Ordering::Relaxed);
        // Fast path: nothing changed since the last commit (same entries, same
        // lstat incl. inode and ctime) and the registry still has its layer.
        let unchanged = meta.last_commit.as_ref().and_then(|c| {
            c.reuse
                .as_ref()
                .filter(|r| {
                    r.fingerprint == tree.digest
                        && r.codec == codec.name()
                        && r.source_date_epoch == opts.source_date_epoch
                })
                .map(|r| (c.layer.clone(), r.clone()))
        });
        let reused = match unchanged {
            Some((digest, r)) if self.content().client().blob_exists(&repo, &digest).await? => {
                tracing::info!(entry = reference, layer = %digest, "unchanged since the last commit; its layer is reused");
                progress.packed.store(tree.content_bytes, Ordering::Relaxed);
                Some(Packed {
                    diff_id: r.diff_id,
                    digest,
                    size: r.size,
                    tar_size: r.tar_size,
                    stats: Default::default(),
                    codec,
                    toc_digest: r.toc_digest,
                    zstd_manifest: None,
                })
            }
            _ => None,
        };
        let layer = match reused.clone() {
            Some(l) => l,
            None => {
                let pack_opts = PackOptions {
                    source_date_epoch: opts.source_date_epoch,
                };
                self.pack_and_upload(reference, &repo, root, codec, pack_opts, progress)
                    .await?
            }
        };
        let pack_ms = started.elapsed().as_millis() as u64;
        let created = opts.source_date_epoch.unwrap_or(now_secs() as i64);
        let config = build_config(
            base.as_ref().map(|b| b.config.as_slice()),
            &self.platform,
            &layer.diff_id,
            created,
            &format!("regfs export {reference}"),
        )?;
        let mut layers: Vec<LayerDesc> = Vec::new();
        let mut blobs: Vec<PushBlob> = Vec::new();
        if let Some(b) = &base {
            for l in &b.manifest.layers {
                layers.push(l.into());
                blobs.push(PushBlob {
                    digest: l.digest.clone(),
                    size: l.size,
                    source: BlobSource::Base {
                        from: b.base.repository.clone(),
                        desc: l.clone(),
                    },
                });
            }
        }
        let mut annotations = BTreeMap::new();
        if let Some(toc) = &layer.toc_digest {
            annotations.insert(TOC_DIGEST_ANNOTATION.to_string(), toc.to_string());
            annotations.insert(
                ESTARGZ_UNCOMPRESSED_SIZE.to_string(),
                layer.tar_size.to_string(),
            );
        }
        layers.push(LayerDesc {
            media_type: codec.oci_media_type().into(),
            digest: layer.digest.clone(),
            size: layer.size,
            annotations,
        });
        let config = Bytes::from(config);
        blobs.push(PushBlob {
            digest: Digest::sha256_of(&config),
            size: config.len() as u64,
            source: BlobSource::Bytes(config.clone()),
        });
        let (manifest, media_type) = build_manifest(opts.format, &config, &layers)?;
        *progress.phase.lock().unwrap() = "push";
        progress.push_total.store(
            layer.size + blobs.iter().map(|b| b.size).sum::<u64>(),
            Ordering::Relaxed,
        );
        let started = Instant::now();
        // The layer is up already (streamed while packing).
        let mut report = match reused {
            Some(_) => PushReport {
                present: 1,
                ..PushReport::default()
            },
            None => PushReport {
                uploaded: 1,
                uploaded_bytes: layer.size,
                ..PushReport::default()
            },
        };
        progress.sent.store(layer.size, Ordering::Relaxed);
        let digest = push_image(
            self.content(),
            ImagePush {
                repo: &repo,
                tag: &tag,
                blobs: &blobs,
                manifest: Bytes::from(manifest),
                media_type,
            },
            progress.sent.clone(),
            &mut report,
        )
        .await?;
        let push_ms = started.elapsed().as_millis() as u64;
        meta.last_commit = Some(CommitRecord {
            manifest: digest.clone(),
            layer: layer.digest.clone(),
            at: now_secs(),
            reuse: (!tree.racy).then(|| LayerRecord {
                fingerprint: tree.digest.clone(),
                codec: codec.name().to_string(),
                source_date_epoch: opts.source_date_epoch,
                diff_id: layer.diff_id.clone(),
                size: layer.size,
                tar_size: layer.tar_size,
                toc_digest: layer.toc_digest.clone(),
            }),
        });
        if let Err(e) = self.staging.save(&meta) {
            tracing::warn!(entry = reference, error = %e, "pushed, but recording the commit failed");
        }
        Ok(CommitOutcome {
            reference: format!("{repo}:{tag}"),
            manifest: digest.to_string(),
            layer: layer.digest.to_string(),
            diff_id: layer.diff_id.to_string(),
            layer_size: layer.size,
            present: report.present,
            mounted: report.mounted,
            uploaded: report.uploaded,
            pack_ms,
            push_ms,
        })
    }
    /// Pack `root` and upload the blob as it is compressed (one pass; the
    /// digest is known at the end, for the final PUT).
    async fn pack_and_upload(
        &self,
        reference: &str,
        repo: &str,
        root: std::path::PathBuf,
        codec: Codec,
        pack_opts: PackOptions,
        progress: &Arc<CommitProgress>,
    ) -> Result<Packed> {
        // Pack on blocking threads into a pipe; upload from it meanwhile.
        let p = progress.clone();
        let layer = pack_and_push(
            self.content().client(),
            repo,
            progress.sent.clone(),
            move |out| {
                let count = |n| {
                    p.packed.fetch_add(n, Ordering::Relaxed);
                };
                pack_to(&root, codec, &pack_opts, &count, out)
            },
        )
        .await?;
        tracing::info!(
            entry = reference, digest = %layer.digest, size = layer.size,
            tar_size = layer.tar_size, "layer packed and uploaded"
        );
        Ok(layer)
    }
}

/// The state of an upper tree: a hash over every entry's name and `lstat`.
struct TreeState {
    digest: Digest,
    /// Bytes of regular files (for progress).
    content_bytes: u64,
    /// Something changed in the last seconds (a later change could share its
    /// ctime): the state is not recorded for reuse.
    racy: bool,
}

fn fingerprint(root: &std::path::Path) -> Result<TreeState> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    fn walk(
        dir: &std::path::Path,
        name: &mut Vec<u8>,
        h: &mut crate::digest::Hasher,
        st: &mut (u64, i64),
    ) -> std::io::Result<()> {
        // Deep trees: a short name for this directory (its children's
        // paths then fit in a system call).
        let dir = super::longpath::short(dir)?;
        let dir: &std::path::Path = &dir;
        let mut children: Vec<_> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        children.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for c in children {
            let len = name.len();
            name.extend_from_slice(c.as_bytes());
            let path = dir.join(&c);
            let md = std::fs::symlink_metadata(&path)?;
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name);
            for v in [
                md.dev(),
                md.ino(),
                md.mode() as u64,
                md.nlink(),
                md.uid() as u64,
                md.gid() as u64,
                md.rdev(),
                md.size(),
                md.mtime() as u64,
                md.mtime_nsec() as u64,
                md.ctime() as u64,
                md.ctime_nsec() as u64,
            ] {
                h.update(&v.to_le_bytes());
            }
            st.1 = st.1.max(md.ctime());
            if md.is_file() {
                st.0 += md.size();
            }
            if md.is_dir() {
                name.push(b'/');
                walk(&path, name, h, st)?;
            }
            name.truncate(len);
        }
        Ok(())
    }
    let mut h = crate::digest::Hasher::new(crate::digest::Algorithm::Sha256);
    let mut st = (0u64, 0i64);
    walk(root, &mut Vec::new(), &mut h, &mut st)?;
    Ok(TreeState {
        digest: h.finish(),
        content_bytes: st.0,
        racy: st.1 >= now_secs() as i64 - 2,
    })
}
