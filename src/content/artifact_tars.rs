//! Artifact layers that are tars (issue 19): a Helm chart
//! (`application/vnd.cncf.helm.chart.content.v1.tar+gzip`), an ORAS
//! directory, any `…tar`, `…tar+gzip`, `…tar+zstd` media type, unpacked
//! into a tree like an image layer. The blob is fetched and verified whole
//! first (an artifact has no `diff_id` to check the tar against); the
//! uncompressed digest is computed from the verified blob, and the layer is
//! then ingested from the store's copy by the ordinary layer path, which
//! hashes the blob again and checks that digest, so every byte served is
//! the verified blob's.

use std::fs::File;
use std::sync::Arc;

use super::layers::PositionedReader;
use super::{Content, LayerSource, OpenedLayer};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};
use crate::image::BlobRef;
use crate::layer::Compression;

/// The compression of a layer whose media type says it is a tar, of any
/// vendor (`…/vnd.x.tar`, `…+tar`, `….tar+gzip`, `….tar+zstd`); `None` if
/// it is not a tar.
pub fn tar_compression(media_type: &str) -> Option<Compression> {
    let m = media_type.split(';').next().unwrap_or("").trim();
    let tar_then = |suffix: &str| {
        m.strip_suffix(suffix)
            .and_then(|r| r.strip_suffix("tar"))
            .is_some_and(|r| r.ends_with(['.', '+', '/']))
    };
    if tar_then("") || m == "application/x-tar" {
        Some(Compression::None)
    } else if tar_then("+gzip") || tar_then(".gzip") || tar_then("+gz") {
        Some(Compression::Gzip)
    } else if tar_then("+zstd") {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// The OCI layer media type with the same compression (what the layer
/// path reads).
fn oci_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// The SHA-256 of the uncompressed bytes of verified blob `file`.
fn uncompressed_digest(file: Arc<File>, c: Compression) -> Result<Digest> {
    let mut r = c.decoder(std::io::BufReader::new(PositionedReader { file, at: 0 }));
    let mut h = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = std::io::Read::read(&mut r, &mut buf)
            .map_err(|e| Error::invalid(format!("decompressing an artifact tar: {e}")))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

impl Content {
    /// Artifact layer `desc` of `repo`, a tar ([`tar_compression`]),
    /// unpacked: its tree and its verified uncompressed tar.
    pub async fn open_artifact_tar(&self, repo: &str, desc: &BlobRef) -> Result<OpenedLayer> {
        let c = tar_compression(&desc.media_type).ok_or_else(|| {
            Error::Unsupported(format!("{}: not a tar media type", desc.media_type))
        })?;
        let blob = Arc::new(self.blob(repo, desc).await?);
        let known = self.artifact_diff_ids.get(&desc.digest);
        let diff_id = match known {
            Some(d) => d,
            None => {
                let f = blob.clone();
                let d = crate::blocking::run(move || uncompressed_digest(f, c)).await?;
                self.artifact_diff_ids
                    .insert(desc.digest.clone(), d.clone());
                d
            }
        };
        let as_layer = BlobRef {
            media_type: oci_media_type(c).to_string(),
            ..desc.clone()
        };
        let l = self
            .layer_from_local(repo, &as_layer, &diff_id, blob)
            .await?;
        Ok(OpenedLayer {
            tree: l.tree.clone(),
            source: LayerSource::Local(l.file.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tars_are_known_by_media_type_whoever_made_them() {
        let c = tar_compression;
        assert_eq!(
            c("application/vnd.cncf.helm.chart.content.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            c("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(c("application/x-tar"), Some(Compression::None));
        assert_eq!(c("application/tar"), Some(Compression::None));
        assert_eq!(
            c("application/vnd.example.data.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            c("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(c("application/octet-stream"), None);
        assert_eq!(c("application/vnd.example.guitar"), None);
        assert_eq!(c("text/plain"), None);
    }
}
