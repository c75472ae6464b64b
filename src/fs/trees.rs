//! Layer trees and the merged rootfs as the filesystem sees them: loading
//! (bounded in memory, reloaded on demand), attributes, listing and reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Attr, Fs, TreeId, TreeWhich, IMMUTABLE_TTL};
use crate::content::{Content, LayerSource, SpanView, Urgency};
use crate::error::{Error, Result};
use crate::image::Manifest;
use crate::layer::{self, Node, NodeId, NodeKind, Tree};

/// A tree with the data sources its contents live in.
pub(crate) struct LoadedTree {
    /// The tree (content layer numbers index `sources`).
    pub tree: Arc<Tree>,
    /// Per layer: a verified uncompressed tar, or a remote lazy layer.
    pub sources: Vec<LayerSource>,
}

impl LoadedTree {
    /// Read file `node` at `offset`: local I/O off the async workers, or the
    /// file's chunks through `content` (fetched and verified on first use).
    pub(crate) async fn read(
        self: Arc<Self>,
        content: &Content,
        node: NodeId,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>> {
        self.read_fetching(content, node, offset, size, false).await
    }

    /// Fetch the chunks of the lazily served files among `nodes` together:
    /// one request per layer (a multi-range one) instead of one per file,
    /// before the files are read. Failures are left to those reads.
    pub(crate) async fn fetch_together(&self, content: &Content, nodes: &[NodeId]) {
        let mut by_layer: BTreeMap<u16, Vec<layer::Chunk>> = BTreeMap::new();
        for &n in nodes {
            if let layer::FileData::Chunks { layer, chunks } = &self.tree.node(n).content {
                let wanted = chunks.iter().filter(|c| !c.zeros).cloned();
                by_layer.entry(*layer).or_default().extend(wanted);
            }
        }
        let fetches = by_layer.into_iter().filter_map(|(i, chunks)| {
            let Some(LayerSource::Remote(r)) = self.sources.get(i as usize) else {
                return None;
            };
            Some(async move {
                if let Err(e) = content.fetch_chunks(r, &chunks).await {
                    tracing::debug!(layer = %r.blob.digest, error = %e, "fetching files together");
                }
            })
        });
        futures_util::future::join_all(fetches).await;
    }

    /// [`LoadedTree::read`]; with `whole_file`, a lazily served file's
    /// chunks are all fetched by this read (see [`Content::read_chunks`]).
    pub(super) async fn read_fetching(
        self: Arc<Self>,
        content: &Content,
        node: NodeId,
        offset: u64,
        size: u32,
        whole_file: bool,
    ) -> Result<Vec<u8>> {
        let n = self.tree.node(node);
        if let layer::FileData::Chunks { layer, chunks } = &n.content {
            return match self.sources.get(*layer as usize) {
                Some(LayerSource::Remote(r)) => {
                    content
                        .read_chunks(r, chunks, n.size, (offset, size), whole_file)
                        .await
                }
                _ => Err(Error::invalid("chunked file without a remote layer")),
            };
        }
        if let Some(LayerSource::Spans(l)) =
            n.content.layer().and_then(|i| self.sources.get(i as usize))
        {
            // An evicted gzip layer: fetch and verify the spans this read
            // needs (those of the whole file, if it is small enough).
            let Some((start, end)) = crate::content::tar_range(n, offset, size as u64) else {
                return Ok(Vec::new());
            };
            let file = crate::content::tar_range(n, 0, n.size).unwrap_or((start, end));
            let view = content.read_file_spans(l, file, start, end).await?;
            let which = n.content.layer().unwrap_or(0) as usize;
            return crate::blocking::run(move || {
                let n = self.tree.node(node);
                let mut views: Vec<SpanView> = (0..self.sources.len())
                    .map(|_| SpanView::default())
                    .collect();
                views[which] = view;
                let mut buf = vec![0u8; size as usize];
                let got = layer::read_content(n, &views, offset, &mut buf)?;
                buf.truncate(got);
                Ok(buf)
            })
            .await;
        }
        crate::blocking::run(move || {
            let n = self.tree.node(node);
            let mut buf = vec![0u8; size as usize];
            let got = layer::read_content(n, &self.sources, offset, &mut buf)?;
            buf.truncate(got);
            Ok(buf)
        })
        .await
    }
}

#[derive(Clone)]
struct Weighter;
impl quick_cache::Weighter<Arc<TreeId>, Arc<LoadedTree>> for Weighter {
    fn weight(&self, _k: &Arc<TreeId>, v: &Arc<LoadedTree>) -> u64 {
        v.tree.len() as u64 + 1
    }
}

/// Loaded trees, bounded by their total node count.
pub(super) struct Trees {
    cache: quick_cache::sync::Cache<Arc<TreeId>, Arc<LoadedTree>, Weighter>,
}

impl Trees {
    pub(super) fn new(max_nodes: u64) -> Trees {
        Trees {
            cache: quick_cache::sync::Cache::with_weighter(256, max_nodes, Weighter),
        }
    }

    /// The trees in memory now, with their node counts.
    pub(super) fn loaded(&self) -> Vec<(Arc<TreeId>, usize)> {
        self.cache.iter().map(|(k, v)| (k, v.tree.len())).collect()
    }

    /// The tree `id`, loading its layers (fetching them if needed) and merging.
    pub(super) async fn load(&self, fs: &Fs, id: &Arc<TreeId>) -> Result<Arc<LoadedTree>> {
        if let Some(t) = self.cache.get(id) {
            return Ok(t);
        }
        let which = match id.which {
            TreeWhich::Rootfs => "rootfs".to_string(),
            TreeWhich::Layer(i) => format!("layer {}", i + 1),
        };
        self.load_uncached(fs, id)
            .await
            .map_err(|e| e.context(format!("loading {which} of {}@{}", id.repo, id.image)))
    }

    async fn load_uncached(&self, fs: &Fs, id: &Arc<TreeId>) -> Result<Arc<LoadedTree>> {
        let info = fs.content.manifest(&id.repo, &id.image).await?;
        let Manifest::Image(m) = &info.manifest else {
            return Err(Error::invalid(format!("{} is an index", id.image)));
        };
        if m.is_artifact() {
            // An artifact's tar layer, unpacked (`unpacked/NAME/`).
            let TreeWhich::Layer(i) = id.which else {
                return Err(Error::NotFound("an artifact has no rootfs".into()));
            };
            let desc = m
                .layers
                .get(i)
                .ok_or_else(|| Error::NotFound("layer".into()))?;
            let l = fs.content.open_artifact_tar(&id.repo, desc).await?;
            let loaded = Arc::new(LoadedTree {
                tree: l.tree,
                sources: vec![l.source],
            });
            self.cache.insert(id.clone(), loaded.clone());
            return Ok(loaded);
        }
        // Every lazy layer's footer and TOC at once, beside the config.
        let wanted = match id.which {
            TreeWhich::Layer(i) => Some(i),
            TreeWhich::Rootfs => None,
        };
        fs.content.start_tocs(&id.repo, &m.layers, wanted);
        // Before any layer is opened: a published index makes a gzip layer
        // lazy. Looked for beside the config (it needs the config too, and
        // waits for the same fetch).
        let (config, _) = tokio::join!(
            fs.content.config(&id.repo, &m.config),
            fs.content.adopt_published_indexes(&id.repo, &id.image)
        );
        let config = config?;
        let mut layers = m.layers_with_diff_ids(&config, &id.image.to_string())?;
        let loaded = match id.which {
            TreeWhich::Layer(i) => {
                let (desc, diff_id) = layers
                    .nth(i)
                    .ok_or_else(|| Error::NotFound("layer".into()))?;
                let l = fs.content.open_layer(&id.repo, desc, diff_id).await?;
                LoadedTree {
                    tree: l.tree,
                    sources: vec![l.source],
                }
            }
            TreeWhich::Rootfs => {
                // Independent layers are fetched in parallel; the tree is
                // ready when the largest is, so the others yield to it.
                let layers: Vec<_> = layers.collect();
                let largest = (0..layers.len()).max_by_key(|&i| layers[i].0.size);
                let fetches = layers.iter().enumerate().map(|(i, (d, diff))| {
                    let urgency = if Some(i) == largest {
                        Urgency::Critical
                    } else {
                        Urgency::Slack
                    };
                    fs.content.open_layer_with(&id.repo, d, diff, urgency)
                });
                let layers = futures_util::future::try_join_all(fetches).await?;
                let owned: Vec<Arc<Tree>> = layers.iter().map(|l| l.tree.clone()).collect();
                // CPU work off the async workers (and never inline on the FUSE thread).
                let merged = tokio::task::spawn_blocking(move || {
                    let trees: Vec<&Tree> = owned.iter().map(|t| &**t).collect();
                    layer::merge(&trees)
                })
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?;
                // Streamed gzip layers are indexed now: publish them if asked.
                if layers
                    .iter()
                    .any(|l| matches!(l.source, LayerSource::Local(_)))
                {
                    fs.content.queue_publish(&id.repo, &id.image);
                }
                LoadedTree {
                    tree: Arc::new(merged),
                    sources: layers.iter().map(|l| l.source.clone()).collect(),
                }
            }
        };
        let loaded = Arc::new(loaded);
        self.cache.insert(id.clone(), loaded.clone());
        Ok(loaded)
    }
}

/// The attributes of a tree node, as its tar entry had them (cached for
/// [`IMMUTABLE_TTL`]); a symlink's mode is 0777 whatever its header says,
/// as Linux (and umoci, containerd, overlayfs) show every symlink.
pub fn node_attr(ino: u64, n: &Node) -> Attr {
    let mtime = if n.mtime >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(n.mtime as u64, n.mtime_nsec)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(n.mtime.unsigned_abs())
    };
    let size = match n.kind {
        NodeKind::File => n.size,
        NodeKind::Symlink => n.link_target.as_ref().map(|t| t.len() as u64).unwrap_or(0),
        _ => 0,
    };
    Attr {
        ino,
        kind: n.kind.into(),
        perm: match n.kind {
            NodeKind::Symlink => 0o777,
            _ => (n.mode & 0o7777) as u16,
        },
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        size,
        mtime,
        ctime: mtime,
        rdev: libc::makedev(n.rdev.0, n.rdev.1) as u32,
        ttl: IMMUTABLE_TTL,
    }
}
