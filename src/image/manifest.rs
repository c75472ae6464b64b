//! Manifests and indexes (OCI and Docker schema 2), parsed with `oci-spec` and
//! distilled to what regfs uses, with hostile-input checks.

use std::collections::BTreeMap;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest as OciManifest};

use super::media_type as mt;
use super::platform::Platform;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Most layers a manifest may list, and most entries an index may hold.
pub const MAX_DESCRIPTORS: usize = 4096;
/// Largest blob size a descriptor may claim (1 TiB).
pub const MAX_BLOB_SIZE: u64 = 1 << 40;

/// A descriptor, validated: a digest we can verify and a sane size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRef {
    /// The content's media type, as the descriptor says.
    pub media_type: String,
    /// The content's digest.
    pub digest: Digest,
    /// The content's size in bytes.
    pub size: u64,
    /// Alternative URLs (non-distributable layers).
    pub urls: Vec<String>,
    /// The descriptor's annotations.
    pub annotations: BTreeMap<String, String>,
}

impl BlobRef {
    fn from_descriptor(d: &Descriptor) -> Result<BlobRef> {
        let digest: Digest = d.digest().to_string().parse()?;
        if d.size() > MAX_BLOB_SIZE {
            return Err(Error::invalid(format!(
                "descriptor {digest} claims {} bytes (more than 1 TiB)",
                d.size()
            )));
        }
        Ok(BlobRef {
            media_type: d.media_type().to_string(),
            digest,
            size: d.size(),
            urls: d.urls().clone().unwrap_or_default(),
            annotations: d
                .annotations()
                .clone()
                .map(|a| a.into_iter().collect())
                .unwrap_or_default(),
        })
    }
}

/// An image manifest: one config and its layers, bottom first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageManifest {
    /// The manifest's own media type.
    pub media_type: String,
    /// The image config blob.
    pub config: BlobRef,
    /// The layers, bottom first.
    pub layers: Vec<BlobRef>,
    /// `artifactType`, for an artifact (OCI 1.1).
    pub artifact_type: Option<String>,
    /// `subject`: the manifest this one refers to (a signature's image).
    pub subject: Option<Box<BlobRef>>,
}

impl ImageManifest {
    /// Whether this is an artifact rather than a container image: it has an
    /// `artifactType`, or its config is not an image config (a Helm chart,
    /// ORAS files, an SBOM).
    pub fn is_artifact(&self) -> bool {
        self.artifact_type.is_some()
            || (self.config.media_type != mt::OCI_CONFIG
                && self.config.media_type != mt::DOCKER_CONFIG)
    }

    /// What kind of artifact: `artifactType`, else the config's media type.
    pub fn kind(&self) -> &str {
        self.artifact_type
            .as_deref()
            .unwrap_or(&self.config.media_type)
    }

    /// Each layer with its diff_id from `config`; an error if the two disagree
    /// on the number of layers (`what` names the image in the message).
    pub fn layers_with_diff_ids<'a>(
        &'a self,
        config: &'a super::ImageConfig,
        what: &str,
    ) -> Result<impl Iterator<Item = (&'a BlobRef, &'a Digest)>> {
        if config.diff_ids.len() != self.layers.len() {
            return Err(Error::invalid(format!(
                "image {what}: {} layers but {} diff_ids in the config",
                self.layers.len(),
                config.diff_ids.len()
            )));
        }
        Ok(self.layers.iter().zip(config.diff_ids.iter()))
    }
}

/// One manifest an index points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The manifest descriptor.
    pub manifest: BlobRef,
    /// The platform it is for, if the index says.
    pub platform: Option<Platform>,
}

/// A parsed manifest or index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image.
    Image(ImageManifest),
    /// A multi-platform index (OCI index or Docker manifest list).
    Index {
        /// The index's own media type.
        media_type: String,
        /// Its entries, in order.
        entries: Vec<IndexEntry>,
    },
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    layers: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

impl Manifest {
    /// Parse manifest bytes. `content_type` is what the registry said (may be empty);
    /// a `mediaType` field in the JSON that disagrees with it is an error.
    pub fn parse(bytes: &[u8], content_type: &str) -> Result<Manifest> {
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("manifest is not valid JSON: {e}")))?;
        if probe.schema_version == Some(1)
            || content_type == mt::DOCKER_SCHEMA1
            || content_type == mt::DOCKER_SCHEMA1_SIGNED
        {
            return Err(Error::Unsupported(
                "Docker schema 1 manifests are not supported (push the image again with a current client)"
                    .into(),
            ));
        }
        if probe.schema_version != Some(2) {
            return Err(Error::invalid(format!(
                "manifest schemaVersion is {:?}, expected 2",
                probe.schema_version
            )));
        }
        let ct = content_type.trim();
        let generic = ct.is_empty() || ct == "application/json" || ct == "text/plain";
        let media_type = match (&probe.media_type, generic) {
            (Some(j), false) if j != ct => {
                return Err(Error::invalid(format!(
                    "manifest says mediaType {j:?} but was served as {ct:?}"
                )))
            }
            (Some(j), _) => j.clone(),
            (None, false) => ct.to_string(),
            (None, true) => {
                // OCI allows omitting mediaType: tell the two kinds apart by shape.
                match (&probe.manifests, &probe.layers) {
                    (Some(_), None) => mt::OCI_INDEX.to_string(),
                    (None, Some(_)) => mt::OCI_MANIFEST.to_string(),
                    _ => return Err(Error::invalid("manifest is neither an image nor an index")),
                }
            }
        };
        if probe.manifests.is_some() && (probe.layers.is_some() || probe.config.is_some()) {
            return Err(Error::invalid(
                "manifest has both `manifests` and `layers`/`config`: ambiguous",
            ));
        }
        if mt::is_index(&media_type) {
            let idx: ImageIndex =
                serde_json::from_slice(bytes).map_err(|e| Error::invalid(format!("index: {e}")))?;
            if idx.manifests().len() > MAX_DESCRIPTORS {
                return Err(Error::TooLarge(format!(
                    "index lists {} manifests (limit {MAX_DESCRIPTORS})",
                    idx.manifests().len()
                )));
            }
            let entries = idx
                .manifests()
                .iter()
                .map(|d| {
                    Ok(IndexEntry {
                        manifest: BlobRef::from_descriptor(d)?,
                        platform: d.platform().as_ref().map(|p| Platform {
                            os: p.os().to_string(),
                            architecture: p.architecture().to_string(),
                            variant: p.variant().clone(),
                        }),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Manifest::Index {
                media_type,
                entries,
            })
        } else if mt::is_image_manifest(&media_type) {
            let m: OciManifest = serde_json::from_slice(bytes)
                .map_err(|e| Error::invalid(format!("image manifest: {e}")))?;
            if m.layers().len() > MAX_DESCRIPTORS {
                return Err(Error::TooLarge(format!(
                    "manifest lists {} layers (limit {MAX_DESCRIPTORS})",
                    m.layers().len()
                )));
            }
            Ok(Manifest::Image(ImageManifest {
                media_type,
                config: BlobRef::from_descriptor(m.config())?,
                layers: m
                    .layers()
                    .iter()
                    .map(BlobRef::from_descriptor)
                    .collect::<Result<_>>()?,
                artifact_type: m.artifact_type().as_ref().map(|t| t.to_string()),
                subject: m
                    .subject()
                    .as_ref()
                    .map(BlobRef::from_descriptor)
                    .transpose()?
                    .map(Box::new),
            }))
        } else {
            Err(Error::Unsupported(format!(
                "manifest media type {media_type:?}"
            )))
        }
    }

    /// The index entry for `want`, first match wins.
    pub fn select_platform<'a>(
        entries: &'a [IndexEntry],
        want: &Platform,
    ) -> Option<&'a IndexEntry> {
        entries
            .iter()
            .find(|e| e.platform.as_ref().is_some_and(|p| want.matches(p)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn image_json(mt: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{mt}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":10}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D2}","size":20,
              "annotations":{{"a":"b"}}}}]}}"#
        )
    }

    #[test]
    fn parses_oci_and_docker_manifests() {
        for t in [mt::OCI_MANIFEST, mt::DOCKER_MANIFEST] {
            let m = Manifest::parse(image_json(t).as_bytes(), t).unwrap();
            let Manifest::Image(m) = m else { panic!() };
            assert_eq!(m.config.digest.to_string(), D1);
            assert_eq!(m.layers[0].size, 20);
            assert_eq!(m.layers[0].annotations["a"], "b");
        }
    }

    #[test]
    fn parses_index_with_platforms() {
        let j = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
            {{"mediaType":"{}","digest":"{D1}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{}","digest":"{D2}","size":5,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            mt::OCI_INDEX,
            mt::OCI_MANIFEST,
            mt::OCI_MANIFEST
        );
        let Manifest::Index { entries, .. } = Manifest::parse(j.as_bytes(), "").unwrap() else {
            panic!()
        };
        let arm = Manifest::select_platform(&entries, &"linux/arm64".parse().unwrap()).unwrap();
        assert_eq!(arm.manifest.digest.to_string(), D2);
        assert!(Manifest::select_platform(&entries, &"linux/s390x".parse().unwrap()).is_none());
    }

    #[test]
    fn rejects_hostile_manifests() {
        let cases: Vec<(String, &str)> = vec![
            ("not json".into(), mt::OCI_MANIFEST),
            (image_json(mt::OCI_MANIFEST), mt::OCI_INDEX), // disagreeing media type
            (
                image_json(mt::OCI_MANIFEST).replace("\"size\":20", "\"size\":-20"),
                mt::OCI_MANIFEST,
            ),
            (
                image_json(mt::OCI_MANIFEST).replace("\"size\":20", "\"size\":99999999999999999"),
                mt::OCI_MANIFEST,
            ),
            (
                image_json(mt::OCI_MANIFEST).replace(D2, "md5:abcd"),
                mt::OCI_MANIFEST,
            ),
            (
                r#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#.into(),
                mt::DOCKER_SCHEMA1,
            ),
            (image_json("application/x-unknown"), "application/x-unknown"),
            (
                r#"{"schemaVersion":2,"manifests":[],"layers":[]}"#.into(),
                "",
            ),
        ];
        for (j, t) in cases {
            assert!(Manifest::parse(j.as_bytes(), t).is_err(), "{j} as {t}");
        }
        let schema1 = Manifest::parse(br#"{"schemaVersion":1}"#, mt::DOCKER_SCHEMA1_SIGNED);
        assert!(matches!(schema1, Err(Error::Unsupported(m)) if m.contains("schema 1")));
    }
}
