//! The converted image's config and manifests: the config keeps every
//! field of the source's (history included) with `rootfs.diff_ids` of the
//! new tars; manifests are OCI image manifests; an index keeps its entries
//! (platforms, annotations) pointing at the converted manifests, without
//! the children that were not converted.

use serde_json::{json, Value};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::export::image::{build_manifest, LayerDesc, ManifestFormat};
use crate::image::media_type as mt;
use crate::image::ImageManifest;

/// The source config (`bytes`) with `rootfs.diff_ids` replaced.
pub fn config(bytes: &[u8], diff_ids: &[Digest]) -> Result<Vec<u8>> {
    let mut c: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("source image config: {e}")))?;
    let obj = c
        .as_object_mut()
        .ok_or_else(|| Error::invalid("source image config is not an object"))?;
    let ids: Vec<String> = diff_ids.iter().map(|d| d.to_string()).collect();
    obj.insert("rootfs".into(), json!({"type": "layers", "diff_ids": ids}));
    serde_json::to_vec(&c).map_err(|e| Error::invalid(format!("config: {e}")))
}

/// The OCI manifest of `config` (bytes as pushed) and `layers`. `source`
/// is the manifest converted (its layers are all replaced).
pub fn manifest(config: &[u8], layers: &[LayerDesc], source: &ImageManifest) -> Result<Vec<u8>> {
    if layers.len() != source.layers.len() {
        return Err(Error::invalid("a layer was not converted"));
    }
    build_manifest(ManifestFormat::Oci, config, layers).map(|(b, _)| b)
}

/// The source index (`bytes`) as an OCI index whose i-th entry points at
/// `children[i]` (digest and size of the converted manifest), or is
/// dropped when that is `None`.
pub fn index(bytes: &[u8], children: &[Option<(Digest, u64)>]) -> Result<Vec<u8>> {
    let mut v: Value =
        serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("source index: {e}")))?;
    let entries = v
        .get("manifests")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| Error::invalid("source index without manifests"))?;
    if entries.len() != children.len() {
        return Err(Error::invalid(
            "index entries and converted manifests differ",
        ));
    }
    let mut out = Vec::new();
    for (mut e, c) in entries.into_iter().zip(children) {
        let Some((d, size)) = c else { continue };
        e["mediaType"] = json!(mt::OCI_MANIFEST);
        e["digest"] = json!(d.to_string());
        e["size"] = json!(size);
        out.push(e);
    }
    v["schemaVersion"] = json!(2);
    v["mediaType"] = json!(mt::OCI_INDEX);
    v["manifests"] = json!(out);
    serde_json::to_vec(&v).map_err(|e| Error::invalid(format!("index: {e}")))
}
