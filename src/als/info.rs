//! The layer store's `info` file: the JSON containers/storage decodes into
//! its `Layer` record (`drivers/overlay`'s `additionalLayer.Info`, then
//! `layers.go` `PutAdditionalLayer`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::estargz::{TOC_DIGEST_ANNOTATION, ZSTD_CHECKSUM_ANNOTATIONS};
use crate::image::BlobRef;
use crate::layer::Compression;

/// eStargz's annotation of the uncompressed size of a layer.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// The `flags` key under which containers/storage ≥ 1.54 expects the
/// diff_id of a layer it looked up by TOC digest.
pub const EXPECTED_DIFF_ID_FLAG: &str = "expected-layer-diffid";

/// The fields of containers/storage's `Layer` that a layer store fills
/// (names as its JSON tags spell them).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerInfo {
    /// The compressed blob's digest.
    #[serde(rename = "compressed-diff-digest")]
    pub compressed_digest: String,
    /// The compressed blob's size.
    #[serde(rename = "compressed-size")]
    pub compressed_size: u64,
    /// The diff_id (the uncompressed tar's digest), from the image config.
    #[serde(rename = "diff-digest")]
    pub diff_digest: String,
    /// The uncompressed size; see [`layer_info`] for where it comes from.
    /// Never negative: podman 4.3 calls an image with a `-1` here corrupted.
    #[serde(rename = "diff-size")]
    pub diff_size: u64,
    /// containers/storage's `archive.Compression`: 0 none, 2 gzip, 4 zstd.
    pub compression: u8,
    /// The TOC digest, when the layer was looked up by it.
    #[serde(
        rename = "toc-digest",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub toc_digest: Option<String>,
    /// `expected-layer-diffid` when looked up by TOC digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<String, String>,
}

/// The TOC digests a layer may be asked for by (containers/image ≥ 5.31):
/// eStargz's `toc.digest`, zstd:chunked's manifest checksum.
pub fn toc_keys(desc: &BlobRef) -> Vec<Digest> {
    std::iter::once(TOC_DIGEST_ANNOTATION)
        .chain(ZSTD_CHECKSUM_ANNOTATIONS)
        .filter_map(|k| desc.annotations.get(k)?.parse().ok())
        .collect()
}

/// Whether `desc` is a gzip layer without the uncompressed-size annotation
/// (its `diff-size` can then come from the gzip trailer).
pub fn needs_trailer_size(desc: &BlobRef) -> bool {
    matches!(
        Compression::from_media_type(&desc.media_type),
        Ok(Compression::Gzip)
    ) && !desc.annotations.contains_key(UNCOMPRESSED_SIZE_ANNOTATION)
}

/// The `info` of layer `desc` with `diff_id`, looked up by TOC digest
/// `toc` or (`None`) by its compressed digest.
///
/// `diff-size` is the first known of: eStargz's uncompressed-size
/// annotation, `cached_tar` (the size of the layer's uncompressed tar when
/// the cache holds it, or a gzip layer's trailer says it), and, as a
/// stand-in, the compressed size. podman reports image sizes with it and
/// writes it into the tar headers of `podman save`, so it must be right
/// wherever it can be.
pub fn layer_info(
    desc: &BlobRef,
    diff_id: &Digest,
    toc: Option<&Digest>,
    cached_tar: Option<u64>,
) -> LayerInfo {
    let annotated = desc
        .annotations
        .get(UNCOMPRESSED_SIZE_ANNOTATION)
        .and_then(|v| v.parse::<u64>().ok());
    let compression = match Compression::from_media_type(&desc.media_type) {
        Ok(Compression::Gzip) => 2,
        Ok(Compression::Zstd) => 4,
        _ => 0,
    };
    let mut flags = BTreeMap::new();
    if toc.is_some() {
        flags.insert(EXPECTED_DIFF_ID_FLAG.to_string(), diff_id.to_string());
    }
    LayerInfo {
        compressed_digest: desc.digest.to_string(),
        compressed_size: desc.size,
        diff_digest: diff_id.to_string(),
        diff_size: annotated.or(cached_tar).unwrap_or(desc.size),
        compression,
        toc_digest: toc.map(|d| d.to_string()),
        flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, annotations: &[(&str, &str)]) -> BlobRef {
        BlobRef {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "11".repeat(32)).parse().unwrap(),
            size: 1000,
            urls: Vec::new(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn gzip_layer_by_compressed_digest() {
        let diff: Digest = format!("sha256:{}", "22".repeat(32)).parse().unwrap();
        let d = desc("application/vnd.oci.image.layer.v1.tar+gzip", &[]);
        let i = layer_info(&d, &diff, None, None);
        let json = serde_json::to_value(&i).unwrap();
        assert_eq!(json["compressed-diff-digest"], d.digest.to_string());
        assert_eq!(json["diff-digest"], diff.to_string());
        assert_eq!(json["compressed-size"], 1000);
        assert_eq!(json["diff-size"], 1000, "stand-in: the compressed size");
        assert_eq!(json["compression"], 2);
        assert!(json.get("toc-digest").is_none() && json.get("flags").is_none());
        assert_eq!(layer_info(&d, &diff, None, Some(5000)).diff_size, 5000);
    }

    #[test]
    fn estargz_layer_by_toc_digest() {
        let diff: Digest = format!("sha256:{}", "22".repeat(32)).parse().unwrap();
        let toc = format!("sha256:{}", "33".repeat(32));
        let d = desc(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &[
                (TOC_DIGEST_ANNOTATION, &toc),
                (UNCOMPRESSED_SIZE_ANNOTATION, "4096"),
            ],
        );
        let keys = toc_keys(&d);
        assert_eq!(keys.len(), 1);
        let json = serde_json::to_value(layer_info(&d, &diff, Some(&keys[0]), Some(1))).unwrap();
        assert_eq!(json["toc-digest"], toc);
        assert_eq!(json["flags"][EXPECTED_DIFF_ID_FLAG], diff.to_string());
        assert_eq!(json["diff-size"], 4096);
    }
}
