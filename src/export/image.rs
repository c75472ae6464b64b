//! The config and manifest of a committed image.
//!
//! The config is the base image's config (every field carried over) with the
//! new layer's diff_id appended to `rootfs.diff_ids`, a `history` entry, and
//! `created`; without a base, a minimal config for the platform. The manifest
//! is OCI, or Docker schema 2 on request.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::media_type as mt;
use crate::image::{BlobRef, Platform};

/// The manifest flavour to push.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ManifestFormat {
    /// OCI image manifest.
    #[default]
    Oci,
    /// Docker schema 2.
    Docker,
}

/// One layer of the new manifest.
#[derive(Clone, Debug)]
pub struct LayerDesc {
    /// Media type (OCI; converted for Docker manifests).
    pub media_type: String,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size.
    pub size: u64,
    /// Descriptor annotations (eStargz: the TOC digest, the uncompressed size).
    pub annotations: BTreeMap<String, String>,
}

impl From<&BlobRef> for LayerDesc {
    fn from(b: &BlobRef) -> Self {
        LayerDesc {
            media_type: b.media_type.clone(),
            digest: b.digest.clone(),
            size: b.size,
            annotations: b.annotations.clone(),
        }
    }
}

/// The new config: `base` (raw JSON bytes) extended, or a fresh one for `platform`.
pub fn build_config(
    base: Option<&[u8]>,
    platform: &Platform,
    diff_id: &Digest,
    created: i64,
    comment: &str,
) -> Result<Vec<u8>> {
    let created = crate::rfc3339::format(created);
    let mut c: Value = match base {
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| Error::invalid(format!("base image config: {e}")))?,
        None => {
            let mut c = json!({
                "architecture": platform.architecture,
                "os": platform.os,
                "config": {},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [],
            });
            if let Some(v) = &platform.variant {
                c["variant"] = json!(v);
            }
            c
        }
    };
    let obj = c
        .as_object_mut()
        .ok_or_else(|| Error::invalid("base image config is not an object"))?;
    obj.insert("created".into(), json!(created));
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    rootfs["type"] = json!("layers");
    match rootfs.get_mut("diff_ids").and_then(Value::as_array_mut) {
        Some(ids) => ids.push(json!(diff_id.to_string())),
        None => rootfs["diff_ids"] = json!([diff_id.to_string()]),
    }
    let entry = json!({"created": created, "created_by": "regfs commit", "comment": comment});
    match obj.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(entry),
        None => {
            obj.insert("history".into(), json!([entry]));
        }
    }
    serde_json::to_vec(&c).map_err(|e| Error::invalid(format!("config: {e}")))
}

fn docker_layer_type(oci: &str) -> Result<&'static str> {
    match oci {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            Ok("application/vnd.docker.image.rootfs.diff.tar.gzip")
        }
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => {
            Ok("application/vnd.docker.image.rootfs.diff.tar")
        }
        other => Err(Error::Unsupported(format!(
            "layer media type {other} has no Docker schema 2 equivalent; push an OCI manifest"
        ))),
    }
}

fn oci_layer_type(t: &str) -> &str {
    match t {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        other => other,
    }
}

/// The manifest bytes and their media type.
pub fn build_manifest(
    format: ManifestFormat,
    config: &[u8],
    layers: &[LayerDesc],
) -> Result<(Vec<u8>, &'static str)> {
    let config_digest = Digest::sha256_of(config);
    let (media_type, config_type) = match format {
        ManifestFormat::Oci => (mt::OCI_MANIFEST, mt::OCI_CONFIG),
        ManifestFormat::Docker => (mt::DOCKER_MANIFEST, mt::DOCKER_CONFIG),
    };
    let layers = layers
        .iter()
        .map(|l| {
            let t = match format {
                ManifestFormat::Oci => oci_layer_type(&l.media_type),
                ManifestFormat::Docker => docker_layer_type(&l.media_type)?,
            };
            let mut d = json!({"mediaType": t, "digest": l.digest.to_string(), "size": l.size});
            if !l.annotations.is_empty() {
                d["annotations"] = json!(l.annotations);
            }
            Ok(d)
        })
        .collect::<Result<Vec<_>>>()?;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {
            "mediaType": config_type,
            "digest": config_digest.to_string(),
            "size": config.len(),
        },
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&m).map_err(|e| Error::invalid(format!("manifest: {e}")))?;
    Ok((bytes, media_type))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(crate::rfc3339::format(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            crate::rfc3339::format(1_700_000_000),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn config_carries_the_base_over() {
        let d = Digest::sha256_of(b"layer");
        let base = br#"{"architecture":"arm64","os":"linux","config":{"Env":["A=1"]},
            "rootfs":{"type":"layers","diff_ids":["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
            "history":[{"created_by":"base"}]}"#;
        let c = build_config(Some(base), &Platform::host(), &d, 0, "x").unwrap();
        let v: Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(v["architecture"], "arm64");
        assert_eq!(v["config"]["Env"][0], "A=1");
        assert_eq!(v["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert_eq!(v["history"].as_array().unwrap().len(), 2);
        let fresh = build_config(None, &Platform::host(), &d, 0, "x").unwrap();
        let v: Value = serde_json::from_slice(&fresh).unwrap();
        assert_eq!(v["rootfs"]["diff_ids"][0], d.to_string());
        crate::image::ImageConfig::parse(&fresh).unwrap();
    }
}
