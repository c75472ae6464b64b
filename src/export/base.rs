//! Base images of `--from` entries: resolving a reference to a pinned
//! platform manifest, and loading its merged rootfs (fetched, verified and
//! cached through [`crate::content`]).

use std::fs::File;
use std::io::Read;
use std::sync::Arc;

use super::staging::BaseRef;
use crate::content::Content;
use crate::error::{Error, Result};
use crate::image::{BlobRef, ImageManifest, Manifest, Platform};
use crate::layer::{self, Tree};
use crate::reference::Reference;

/// A base image: manifest and config (no layers yet).
pub struct BaseImage {
    /// Where it lives.
    pub base: BaseRef,
    /// Its manifest.
    pub manifest: ImageManifest,
    /// The config bytes, verified.
    pub config: Vec<u8>,
}

/// A base image's merged rootfs.
pub struct BaseTree {
    /// The merged tree; content layer numbers index `files`.
    pub tree: Arc<Tree>,
    /// One verified uncompressed tar per layer.
    pub files: Vec<Arc<File>>,
}

/// Resolve `reference` (same registry; a tag of an index resolves to
/// `platform`) to a pinned platform manifest.
pub async fn resolve(content: &Content, reference: &str, platform: &Platform) -> Result<BaseRef> {
    let r: Reference = reference.parse()?;
    if r.registry.is_some() {
        return Err(Error::invalid(format!(
            "--from {reference}: the base must be in the mounted registry (leave the host out)"
        )));
    }
    let info = content.resolve(&r.repository, &r.selector()).await?;
    let digest = match &info.manifest {
        Manifest::Image(_) => info.digest.clone(),
        Manifest::Index { entries, .. } => Manifest::select_platform(entries, platform)
            .ok_or_else(|| Error::NotFound(format!("{reference}: no image for {platform}")))?
            .manifest
            .digest
            .clone(),
    };
    Ok(BaseRef {
        repository: r.repository,
        digest,
    })
}

/// The manifest and config of `base`.
pub async fn image(content: &Content, base: &BaseRef) -> Result<BaseImage> {
    let info = content.manifest(&base.repository, &base.digest).await?;
    let Manifest::Image(m) = &info.manifest else {
        return Err(Error::invalid(format!("{} is an index", base.digest)));
    };
    let config = read_blob(content, &base.repository, &m.config).await?;
    Ok(BaseImage {
        base: base.clone(),
        manifest: m.clone(),
        config,
    })
}

async fn read_blob(content: &Content, repo: &str, desc: &BlobRef) -> Result<Vec<u8>> {
    let mut f = content.blob(repo, desc).await?;
    tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        f.read_to_end(&mut v).map(|_| v)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?
    .map_err(Error::from)
}

/// The merged rootfs of `base` (all layers fetched in parallel).
pub async fn tree(content: &Content, base: &BaseRef) -> Result<BaseTree> {
    let info = content.manifest(&base.repository, &base.digest).await?;
    let Manifest::Image(m) = &info.manifest else {
        return Err(Error::invalid(format!("{} is an index", base.digest)));
    };
    let config = content.config(&base.repository, &m.config).await?;
    let fetches = m
        .layers_with_diff_ids(&config, &base.digest.to_string())?
        .map(|(d, diff)| content.layer(&base.repository, d, diff));
    let layers = futures_util::future::try_join_all(fetches).await?;
    let trees: Vec<Tree> = layers.iter().map(|l| (*l.tree).clone()).collect();
    let merged = tokio::task::spawn_blocking(move || {
        let refs: Vec<&Tree> = trees.iter().collect();
        layer::merge(&refs)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    Ok(BaseTree {
        tree: Arc::new(merged),
        files: layers.iter().map(|l| l.file.clone()).collect(),
    })
}
