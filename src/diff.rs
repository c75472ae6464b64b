//! What changed between two images' merged trees (`regfs diff`), from
//! metadata and digests alone where the layers allow it.
//!
//! Both images' layers are opened as the filesystem opens them (eStargz /
//! zstd:chunked: footer and TOC only; gzip: the verified tar and its index,
//! streamed once, or a published index), merged, and walked side by side.
//! A path only in the second image is added (`A`), only in the first
//! deleted (`D`: a deleted directory is one line, its contents are implied),
//! in both with other metadata or content modified (`M`, with what
//! differs). A regular file's content is compared without reading it when
//! possible: both sides' TOC digests, or the same bytes of the same layer
//! (same diff_id, same place in its tar). Otherwise (a plain tar layer over
//! another with equal sizes) both files are read, from the local tars
//! already verified, and hashed; [`Report::files_read`] counts them.

#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::Serialize;

use crate::content::Content;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::fs::LoadedTree;
use crate::image::{Manifest, Platform};
use crate::layer::{self, Node, NodeId, NodeKind};
use crate::reference::Selector;

/// One image to compare: a repository of the content's registry and a
/// manifest digest (of an image, not an index).
#[derive(Clone, Debug)]
pub struct ImageAt {
    /// Repository (`host/path` under a router).
    pub repo: String,
    /// Image manifest digest.
    pub digest: Digest,
}

/// How a path differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ChangeKind {
    /// Only in the second image.
    #[serde(rename = "A")]
    Added,
    /// Only in the first image.
    #[serde(rename = "D")]
    Deleted,
    /// In both, different.
    #[serde(rename = "M")]
    Modified,
}

impl ChangeKind {
    /// `A`, `D` or `M`, as `docker diff` writes them (it says `C` for `M`).
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
            ChangeKind::Modified => 'M',
        }
    }
}

/// One changed path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// What happened to it.
    pub change: ChangeKind,
    /// The absolute path in the image (`/etc/hostname`), lossy UTF-8.
    pub path: String,
    /// For `M`: what differs (`type`, `mode`, `owner`, `mtime`, `size`,
    /// `content`, `target`, `device`, `xattrs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
}

/// The changes between two images, sorted by path.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// The changes.
    pub changes: Vec<Change>,
    /// Regular files whose contents had to be read to compare them.
    pub files_read: u64,
}

/// The manifest digest `sel` of `repo` names (an image or an artifact): for
/// an index, its entry for `platform`.
pub async fn resolve_image(
    content: &Content,
    repo: &str,
    sel: &Selector,
    platform: &Platform,
) -> Result<Digest> {
    let info = content.resolve(repo, sel).await?;
    match &info.manifest {
        Manifest::Image(_) => Ok(info.digest.clone()),
        Manifest::Index { entries, .. } => Manifest::select_platform(entries, platform)
            .map(|e| e.manifest.digest.clone())
            .ok_or_else(|| {
                Error::NotFound(format!("{repo}:{sel}: no image for platform {platform}"))
            }),
    }
}

/// An image's merged tree with its sources, and each layer's diff_id.
struct Opened {
    tree: Arc<LoadedTree>,
    diff_ids: Vec<Digest>,
}

async fn open(content: &Content, image: &ImageAt) -> Result<Opened> {
    let info = content.manifest(&image.repo, &image.digest).await?;
    let Manifest::Image(m) = &info.manifest else {
        return Err(Error::invalid(format!("{} is an index", image.digest)));
    };
    if m.is_artifact() {
        return Err(Error::invalid(format!(
            "{}@{} is an artifact, not an image: it has no tree to compare",
            image.repo, image.digest
        )));
    }
    let config = content.config(&image.repo, &m.config).await?;
    content
        .adopt_published_indexes(&image.repo, &image.digest)
        .await;
    let layers: Vec<_> = m
        .layers_with_diff_ids(&config, &image.digest.to_string())?
        .collect();
    let opened = futures_util::future::try_join_all(
        layers
            .iter()
            .map(|(d, diff)| content.open_layer(&image.repo, d, diff)),
    )
    .await?;
    let trees: Vec<_> = opened.iter().map(|l| l.tree.clone()).collect();
    let merged = crate::blocking::run(move || {
        let refs: Vec<&layer::Tree> = trees.iter().map(|t| &**t).collect();
        Ok(layer::merge(&refs))
    })
    .await?;
    Ok(Opened {
        tree: Arc::new(LoadedTree {
            tree: Arc::new(merged),
            sources: opened.into_iter().map(|l| l.source).collect(),
        }),
        diff_ids: layers.into_iter().map(|(_, d)| d.clone()).collect(),
    })
}

/// The changes from image `a` to image `b`.
pub async fn diff_images(content: &Content, a: &ImageAt, b: &ImageAt) -> Result<Report> {
    let (a, b) = futures_util::future::try_join(open(content, a), open(content, b)).await?;
    let mut walk = Walk {
        a: &a,
        b: &b,
        changes: Vec::new(),
        unsure: Vec::new(),
    };
    walk.dir(b"", 0, 0);
    let mut report = Report::default();
    for (path, na, nb, mut what) in std::mem::take(&mut walk.unsure) {
        report.files_read += 1;
        if file_digest(content, &a, na).await? != file_digest(content, &b, nb).await? {
            what.push("content");
        }
        if !what.is_empty() {
            walk.changes.push(change(ChangeKind::Modified, &path, what));
        }
    }
    report.changes = walk.changes;
    report.changes.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(report)
}

fn change(change: ChangeKind, path: &[u8], what: Vec<&'static str>) -> Change {
    Change {
        change,
        path: format!("/{}", String::from_utf8_lossy(path)),
        what,
    }
}

/// The side-by-side walk of two merged trees.
struct Walk<'t> {
    a: &'t Opened,
    b: &'t Opened,
    changes: Vec<Change>,
    /// Files whose content is compared by reading: path, nodes, and the
    /// other differences found so far.
    unsure: Vec<(Vec<u8>, NodeId, NodeId, Vec<&'static str>)>,
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Walk<'_> {
    /// Compare directory `path`'s children: `da` in `a`, `db` in `b`.
    fn dir(&mut self, path: &[u8], da: NodeId, db: NodeId) {
        let (ta, tb) = (&self.a.tree.tree, &self.b.tree.tree);
        let (ka, kb) = (ta.children(da), tb.children(db));
        let (mut i, mut j) = (0, 0);
        while i < ka.len() || j < kb.len() {
            let order = match (ka.get(i), kb.get(j)) {
                (Some(x), Some(y)) => x.0.cmp(&y.0),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let p = join(path, &ka[i].0);
                    self.changes.push(change(ChangeKind::Deleted, &p, vec![]));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let p = join(path, &kb[j].0);
                    self.added(&p, kb[j].1);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let p = join(path, &ka[i].0);
                    self.both(&p, ka[i].1, kb[j].1);
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    /// `path` and everything under it is new.
    fn added(&mut self, path: &[u8], id: NodeId) {
        self.changes.push(change(ChangeKind::Added, path, vec![]));
        for (name, child) in self.b.tree.tree.children(id) {
            self.added(&join(path, name), *child);
        }
    }

    /// `path` is in both: `na` in `a`, `nb` in `b`.
    fn both(&mut self, path: &[u8], na: NodeId, nb: NodeId) {
        let (x, y) = (self.a.tree.tree.node(na), self.b.tree.tree.node(nb));
        let mut what = metadata_changes(x, y);
        if x.kind != y.kind {
            self.changes
                .push(change(ChangeKind::Modified, path, vec!["type"]));
            if y.kind == NodeKind::Dir {
                for (name, child) in self.b.tree.tree.children(nb) {
                    self.added(&join(path, name), *child);
                }
            }
            return;
        }
        if x.kind == NodeKind::File && x.size == y.size && x.size > 0 {
            match self.same_content(x, y) {
                Some(true) => {}
                Some(false) => what.push("content"),
                None => {
                    self.unsure.push((path.to_vec(), na, nb, what));
                    return;
                }
            }
        }
        if !what.is_empty() {
            self.changes.push(change(ChangeKind::Modified, path, what));
        }
        if x.kind == NodeKind::Dir {
            self.dir(path, na, nb);
        }
    }

    /// Whether two files of equal size hold the same bytes, if known
    /// without reading them.
    fn same_content(&self, x: &Node, y: &Node) -> Option<bool> {
        if let (Some(dx), Some(dy)) = (&x.digest, &y.digest) {
            return Some(dx == dy);
        }
        let (lx, ly) = (x.content.layer()?, y.content.layer()?);
        let same_layer = self.a.diff_ids.get(lx as usize) == self.b.diff_ids.get(ly as usize);
        let same_place = x.content.clone().with_layer(0) == y.content.clone().with_layer(0);
        (same_layer && same_place).then_some(true)
    }
}

/// What differs between two nodes of the same path, content aside.
fn metadata_changes(x: &Node, y: &Node) -> Vec<&'static str> {
    let mut what = Vec::new();
    let mut differs = |d: bool, name| {
        if d {
            what.push(name)
        }
    };
    differs(x.mode != y.mode, "mode");
    differs((x.uid, x.gid) != (y.uid, y.gid), "owner");
    differs((x.mtime, x.mtime_nsec) != (y.mtime, y.mtime_nsec), "mtime");
    differs(x.kind == NodeKind::File && x.size != y.size, "size");
    differs(x.link_target != y.link_target, "target");
    differs(x.rdev != y.rdev, "device");
    differs(x.xattrs != y.xattrs, "xattrs");
    what
}

/// The sha256 of file `node`'s content: its known digest, else read (and
/// verified, as every read is) and hashed.
async fn file_digest(content: &Content, image: &Opened, node: NodeId) -> Result<Digest> {
    let n = image.tree.tree.node(node);
    if let Some(d) = n
        .digest
        .as_ref()
        .filter(|d| d.algorithm() == Algorithm::Sha256)
    {
        return Ok(d.clone());
    }
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut at = 0u64;
    while at < n.size {
        let piece = image.tree.clone().read(content, node, at, 1 << 20).await?;
        if piece.is_empty() {
            return Err(Error::invalid("file shorter than its size"));
        }
        at += piece.len() as u64;
        h.update(&piece);
    }
    Ok(h.finish())
}
