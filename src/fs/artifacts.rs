//! Artifacts and referrers in the tree (issue 19). An artifact directory
//! (a manifest with an `artifactType` or a non-image config: ORAS files, a
//! Helm chart, an SBOM, a signature) has `files/`, each layer under its
//! `org.opencontainers.image.title` (the ORAS convention; untitled layers
//! by digest), and `unpacked/` with each layer that is a tar (any media
//! type) as a directory of the same name. Every image, artifact and index directory has `referrers/`:
//! what refers to it (OCI 1.1), grouped by artifact type as a path
//! (`referrers/application/spdx+json/`), each referrer a symlink named by its
//! digest to its own directory.

use std::sync::Arc;

use super::{leaf, unique_names, FileKind, Fs, Key, Listed};
use crate::content::Referrer;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::ImageManifest;

/// The ORAS annotation naming a layer as a file.
pub const TITLE: &str = "org.opencontainers.image.title";

/// The name shown for a referrer without an artifact type.
const UNTYPED: &str = "unknown";

/// One unique name per layer of artifact `m`: its title when that is a
/// usable file name, else its digest.
pub(super) fn file_names(m: &ImageManifest) -> Vec<String> {
    unique_names(m.layers.iter().map(|l| {
        l.annotations
            .get(TITLE)
            .filter(|t| {
                !t.is_empty() && *t != "." && *t != ".." && !t.contains('/') && !t.contains('\0')
            })
            .cloned()
            .unwrap_or_else(|| l.digest.to_string())
    }))
}

/// The layers of artifact `m` that are tars (of any media type: a Helm
/// chart, an ORAS directory), with their `files/` names: `unpacked/NAME/`.
pub(super) fn unpacked_names(m: &ImageManifest) -> Vec<(usize, String)> {
    file_names(m)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| crate::content::tar_compression(&m.layers[*i].media_type).is_some())
        .collect()
}

/// The path components of a referrer's artifact type.
fn type_path(r: &Referrer) -> Vec<&str> {
    let t = if r.artifact_type.is_empty() {
        UNTYPED
    } else {
        &r.artifact_type
    };
    t.split('/').filter(|c| !c.is_empty()).collect()
}

/// The symlink target of referrer `digest` of `repo`, seen from
/// `referrers/<type components>/`: back up to the repository's namespace.
fn target(repo: &str, components: usize, digest: &Digest) -> String {
    format!("{}{}@{digest}", "../".repeat(components + 2), leaf(repo))
}

impl Fs {
    /// `files/` of artifact `repo@digest`.
    pub(super) async fn list_files(&self, repo: &Arc<str>, digest: &Digest) -> Result<Vec<Listed>> {
        let m = self.image_manifest(repo, digest).await?;
        Ok(file_names(&m)
            .into_iter()
            .enumerate()
            .map(|(index, name)| Listed {
                key: Key::ArtifactFile {
                    repo: repo.clone(),
                    image: digest.clone(),
                    index,
                },
                name: name.into_bytes(),
                kind: FileKind::File,
            })
            .collect())
    }

    /// The key of `name` in `files/` of `repo@digest`.
    pub(super) async fn files_child(
        &self,
        repo: &Arc<str>,
        digest: &Digest,
        name: &[u8],
    ) -> Result<Key> {
        let m = self.image_manifest(repo, digest).await?;
        file_names(&m)
            .iter()
            .position(|n| n.as_bytes() == name)
            .map(|index| Key::ArtifactFile {
                repo: repo.clone(),
                image: digest.clone(),
                index,
            })
            .ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))
    }

    /// The listing key of `referrers/<prefix>` of `repo@digest` (for its mtime).
    pub(super) fn referrers_stamp(repo: &str, digest: &Digest, prefix: &str) -> String {
        format!("{repo}@{digest}/referrers/{prefix}")
    }

    /// `referrers/<prefix>` of `repo@digest`: the next artifact-type
    /// components below `prefix`, and the referrers whose type is `prefix`.
    pub(super) async fn list_referrers(
        &self,
        repo: &Arc<str>,
        digest: &Digest,
        prefix: &Arc<str>,
    ) -> Result<Vec<Listed>> {
        let refs = self.content.referrers(repo, digest).await?;
        self.note_listed(&Self::referrers_stamp(repo, digest, prefix));
        let depth = prefix.split('/').filter(|c| !c.is_empty()).count();
        let mut dirs = std::collections::BTreeSet::new();
        let mut out = Vec::new();
        for r in &refs {
            let path = type_path(r);
            if depth > 0 && path.get(..depth).map(|p| p.join("/")).as_deref() != Some(&**prefix) {
                continue;
            }
            match path.get(depth) {
                Some(next) => {
                    dirs.insert(next.to_string());
                }
                None => out.push(Listed {
                    key: Key::Referrer {
                        target: target(repo, depth, &r.digest).into(),
                    },
                    name: r.digest.to_string().into_bytes(),
                    kind: FileKind::Symlink,
                }),
            }
        }
        let mut listed: Vec<Listed> = dirs
            .into_iter()
            .map(|d| Listed {
                key: Key::Referrers {
                    repo: repo.clone(),
                    digest: digest.clone(),
                    prefix: if depth == 0 {
                        d.clone()
                    } else {
                        format!("{prefix}/{d}")
                    }
                    .into(),
                },
                name: d.into_bytes(),
                kind: FileKind::Dir,
            })
            .collect();
        listed.extend(out);
        Ok(listed)
    }

    /// The key of `name` in `referrers/<prefix>` of `repo@digest`.
    pub(super) async fn referrers_child(
        &self,
        repo: &Arc<str>,
        digest: &Digest,
        prefix: &Arc<str>,
        name: &[u8],
    ) -> Result<Key> {
        self.list_referrers(repo, digest, prefix)
            .await?
            .into_iter()
            .find(|l| l.name == name)
            .map(|l| l.key)
            .ok_or_else(|| Error::NotFound(String::from_utf8_lossy(name).into_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::BlobRef;

    fn layer(title: Option<&str>, n: u8) -> BlobRef {
        BlobRef {
            media_type: "application/octet-stream".into(),
            digest: Digest::sha256_of(&[n]),
            size: 1,
            urls: Vec::new(),
            annotations: title
                .map(|t| [(TITLE.to_string(), t.to_string())].into_iter().collect())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn files_are_named_by_title_else_digest_and_unique() {
        let m = ImageManifest {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            config: layer(None, 0),
            layers: vec![
                layer(Some("a.txt"), 1),
                layer(Some("a.txt"), 2),
                layer(None, 3),
                layer(Some("../etc/passwd"), 4),
                layer(Some(".."), 5),
            ],
            artifact_type: Some("application/x".into()),
            subject: None,
        };
        let names = file_names(&m);
        assert_eq!(names[..2], ["a.txt", "a.txt-2"]);
        assert_eq!(names[2], Digest::sha256_of(&[3]).to_string());
        assert_eq!(names[3], Digest::sha256_of(&[4]).to_string());
        assert_eq!(names[4], Digest::sha256_of(&[5]).to_string());
    }

    #[test]
    fn referrer_links_climb_out_of_their_type_path() {
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            target("lab/busybox", 2, &d),
            format!("../../../../busybox@{d}")
        );
        assert_eq!(target("busybox", 1, &d), format!("../../../busybox@{d}"));
    }
}
