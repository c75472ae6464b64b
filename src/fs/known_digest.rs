//! `user.regfs.digest`: a file's content digest, shown as an extended
//! attribute wherever regfs knows it without reading the file (issue 19).
//!
//! Known for `manifest.json`, `config.json`, `blobs/sha256:…` and an
//! artifact's `files/` (their descriptors' digests), and for regular files
//! of eStargz / zstd:chunked layers (the verified TOC's `digest` of the
//! entry), in `layers/N-…/` and in `rootfs/`. Files of plain tar layers
//! have none: the tar index records where a file's bytes are, not their
//! digest.
//!
//! The attribute is listed (`listxattr`) for those blobs and files, not for
//! files of layer trees: `cp -a rootfs/. DIR` (the export directory's
//! workflow), `rsync -X` and `tar --xattrs` copy every listed attribute, and
//! overlayfs copies them up from `layers/N-…/` when a container writes a
//! file, so a listed digest would be baked into new images and outlive
//! changes of the content. `getfattr -n user.regfs.digest` answers there.

use super::{Fs, Key};
use crate::digest::Digest;
use crate::error::Result;
use crate::layer::NodeKind;

pub use crate::layer::DIGEST_XATTR;

impl Fs {
    /// The content digest of `key` if known without reading it, and whether
    /// `listxattr` shows it (see the module's doc).
    pub(super) async fn known_digest(&self, key: &Key) -> Result<Option<(Digest, bool)>> {
        let listed = |d: Digest| Some((d, true));
        Ok(match key {
            Key::ManifestFile { digest, .. } => listed(digest.clone()),
            Key::ConfigFile { repo, digest } => {
                listed(self.image_manifest(repo, digest).await?.config.digest)
            }
            Key::Blob { blob, .. } => listed(blob.clone()),
            Key::ArtifactFile { repo, image, index } => self
                .image_manifest(repo, image)
                .await?
                .layers
                .get(*index)
                .and_then(|d| listed(d.digest.clone())),
            // A tree's root is synthetic: no layer is loaded for it.
            Key::Node { tree, node } if *node != 0 => {
                let t = self.trees.load(self, tree).await?;
                let n = t.tree.node(*node);
                (n.kind == NodeKind::File)
                    .then(|| n.digest.clone())
                    .flatten()
                    .map(|d| (d, false))
            }
            _ => None,
        })
    }
}
