//! What the filesystem holds now, for `regfs status`: the images whose trees
//! (merged rootfs or single layers) are loaded in memory, and the layers
//! container runtimes use through the layer store (kept in the cache).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::journal::Journal;
use super::{Fs, TreeWhich};
use crate::cache::Section;
use crate::digest::Digest;
use crate::estargz::LazySpec;
use crate::image::{BlobRef, Platform};

/// An image with loaded trees (also as `regfs status` sends it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageInUse {
    /// The repository it is read from.
    pub repo: String,
    /// The image manifest's digest.
    pub digest: String,
    /// Whether its merged rootfs is loaded.
    pub rootfs: bool,
    /// Layers loaded on their own (`layers/N`, 1 = bottom).
    pub layers: Vec<usize>,
    /// Nodes held in memory for it.
    pub nodes: usize,
}

impl Fs {
    /// The images whose trees are in memory now, by repository and digest.
    pub fn images_in_use(&self) -> Vec<ImageInUse> {
        let mut by: BTreeMap<(String, String), ImageInUse> = BTreeMap::new();
        for (id, nodes) in self.trees.loaded() {
            let key = (id.repo.to_string(), id.image.to_string());
            let e = by.entry(key.clone()).or_insert_with(|| ImageInUse {
                repo: key.0,
                digest: key.1,
                rootfs: false,
                layers: Vec::new(),
                nodes: 0,
            });
            e.nodes += nodes;
            match id.which {
                TreeWhich::Rootfs => e.rootfs = true,
                TreeWhich::Layer(i) => e.layers.push(i + 1),
            }
        }
        let mut out: Vec<ImageInUse> = by.into_values().collect();
        for e in &mut out {
            e.layers.sort_unstable();
        }
        out
    }

    /// The platform a tag of an index resolves to.
    pub fn platform(&self) -> &Platform {
        &self.cfg.platform
    }
}

/// A layer a container runtime uses, as it told the layer store (a `use`
/// file created in the layer's directory; also as `regfs status` sends it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LayerInUse {
    /// The repository it is read from.
    pub repo: String,
    /// The compressed layer digest.
    pub digest: String,
    /// Its diff_id.
    pub diff_id: String,
    /// Uses not yet released (containers/storage counts one per layer record
    /// and one per lookup in flight).
    pub users: u32,
}

/// One layer's users and the cache entries pinned for it.
struct Users {
    diff_id: Digest,
    count: u32,
    pinned: Vec<(Section, Digest)>,
}

/// Layers in use by container runtimes, by repository and compressed digest.
/// The count lives as long as the daemon, or, under a supervisor, as long as
/// the mount: uses and releases are journaled for the next server.
#[derive(Default)]
pub(super) struct LayerUsers {
    by: Mutex<BTreeMap<(String, Digest), Users>>,
    journal: Mutex<Option<Journal>>,
}

/// A use or release, as journaled.
#[derive(Clone, Serialize, Deserialize)]
enum UseOp {
    #[serde(rename = "u")]
    Use(String, Digest, Digest, Vec<(Section, Digest)>),
    #[serde(rename = "r")]
    Release(String, Digest),
}

/// The cache entries that hold layer `desc` (with `diff_id`) whole or serve
/// it lazily: raw blob, uncompressed tar, tree index, span index, and the
/// TOC index of an eStargz / zstd:chunked layer. Chunks are not listed:
/// an evicted chunk is fetched (and verified) again on its next read.
fn cache_entries(desc: &BlobRef, diff_id: &Digest) -> Vec<(Section, Digest)> {
    let mut out = vec![
        (Section::Blob, desc.digest.clone()),
        (Section::Layer, diff_id.clone()),
        (Section::Index, diff_id.clone()),
        (Section::Span, diff_id.clone()),
    ];
    match LazySpec::from_descriptor(desc) {
        Some(LazySpec::Estargz { toc_digest }) => out.push((Section::Toc, toc_digest)),
        Some(LazySpec::ZstdChunked {
            checksum,
            toc_digest,
            ..
        }) => {
            out.push((Section::Toc, checksum));
            out.extend(toc_digest.map(|d| (Section::Toc, d)));
        }
        None => {}
    }
    out
}

impl Fs {
    /// A container runtime started using layer `desc` of `repo` (diff_id
    /// `diff_id`): its cache entries are pinned (never evicted) until every
    /// use is released.
    pub fn use_layer(&self, repo: &str, desc: &BlobRef, diff_id: &Digest) {
        let op = UseOp::Use(
            repo.to_string(),
            desc.digest.clone(),
            diff_id.clone(),
            cache_entries(desc, diff_id),
        );
        self.apply_use(&op);
        if let Some(j) = self.layer_users.journal.lock().unwrap().as_mut() {
            j.append(&op);
        }
    }

    fn apply_use(&self, op: &UseOp) {
        match op {
            UseOp::Use(repo, digest, diff_id, pinned) => {
                let mut by = self.layer_users.by.lock().unwrap();
                let u = by.entry((repo.clone(), digest.clone())).or_insert_with(|| {
                    for (section, d) in pinned {
                        self.content.store().pin(*section, d);
                    }
                    Users {
                        diff_id: diff_id.clone(),
                        count: 0,
                        pinned: pinned.clone(),
                    }
                });
                u.count += 1;
                tracing::info!(repo, layer = %digest, users = u.count, "layer in use");
            }
            UseOp::Release(repo, digest) => {
                self.release_layer_now(repo, digest);
            }
        }
    }

    /// Journal uses and releases in `path` for the next server, after
    /// taking over those an earlier server recorded there.
    pub(super) fn journal_layer_users(&self, path: &std::path::Path) -> std::io::Result<()> {
        let (ops, mut journal) = Journal::open::<UseOp>(path)?;
        for op in &ops {
            self.apply_use(op);
        }
        if !ops.is_empty() {
            // Compacted: one use record per use still held.
            let held: Vec<UseOp> = self
                .layer_users
                .by
                .lock()
                .unwrap()
                .iter()
                .flat_map(|((repo, digest), u)| {
                    let op = UseOp::Use(
                        repo.clone(),
                        digest.clone(),
                        u.diff_id.clone(),
                        u.pinned.clone(),
                    );
                    std::iter::repeat_with(move || op.clone()).take(u.count as usize)
                })
                .collect();
            journal.rewrite(&held);
        }
        *self.layer_users.journal.lock().unwrap() = Some(journal);
        Ok(())
    }

    /// A container runtime released one use of layer `digest` of `repo`;
    /// the last release unpins its cache entries. False if it was not in use.
    pub fn release_layer(&self, repo: &str, digest: &Digest) -> bool {
        let released = self.release_layer_now(repo, digest);
        if released {
            if let Some(j) = self.layer_users.journal.lock().unwrap().as_mut() {
                j.append(&UseOp::Release(repo.to_string(), digest.clone()));
            }
        }
        released
    }

    fn release_layer_now(&self, repo: &str, digest: &Digest) -> bool {
        let mut by = self.layer_users.by.lock().unwrap();
        let key = (repo.to_string(), digest.clone());
        let Some(u) = by.get_mut(&key) else {
            return false;
        };
        u.count -= 1;
        tracing::info!(repo, layer = %digest, users = u.count, "layer released");
        if u.count == 0 {
            for (section, d) in &u.pinned {
                self.content.store().unpin(*section, d);
            }
            by.remove(&key);
        }
        true
    }

    /// The layers container runtimes use now.
    pub fn layers_in_use(&self) -> Vec<LayerInUse> {
        self.layer_users
            .by
            .lock()
            .unwrap()
            .iter()
            .map(|((repo, digest), u)| LayerInUse {
                repo: repo.clone(),
                digest: digest.to_string(),
                diff_id: u.diff_id.to_string(),
                users: u.count,
            })
            .collect()
    }
}
