//! Which layer a remote `Prepare` asks for, from its labels. Two families are
//! understood: the CRI plugin's (`containerd.io/snapshot/cri.*`, sent by
//! Kubernetes when `disable_snapshot_annotations = false`) and the ones
//! `ctr-remote image rpull` sends (`containerd.io/snapshot/remote/stargz.*`).

use std::collections::BTreeMap;

/// The committed snapshot name containerd wants (the layer's chain ID).
pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
/// Marks a snapshot served from the regfs mount (the label stargz-snapshotter
/// uses for the same purpose).
pub const REMOTE: &str = "containerd.io/snapshot/remote";

const CRI_IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
const CRI_LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
const CRI_MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
const STARGZ_REFERENCE: &str = "containerd.io/snapshot/remote/stargz.reference";
const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";

/// A layer of an image, as a remote `Prepare` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLayer {
    /// The committed snapshot to create (`containerd.io/snapshot.ref`).
    pub target: String,
    /// The image reference (`registry/repository:tag`, maybe `@digest`).
    pub image: String,
    /// The layer's (compressed) digest.
    pub layer: String,
    /// The image manifest's digest, when the labels say (CRI does).
    pub manifest: Option<String>,
}

/// The remote layer `labels` ask for, or `None` for an ordinary `Prepare`.
pub fn remote_layer(labels: &BTreeMap<String, String>) -> Option<RemoteLayer> {
    let target = labels.get(SNAPSHOT_REF)?.clone();
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    if let (Some(image), Some(layer)) = (get(CRI_IMAGE_REF), get(CRI_LAYER_DIGEST)) {
        return Some(RemoteLayer {
            target,
            image,
            layer,
            manifest: get(CRI_MANIFEST_DIGEST),
        });
    }
    let (image, layer) = (get(STARGZ_REFERENCE)?, get(STARGZ_DIGEST)?);
    Some(RemoteLayer {
        target,
        image,
        layer,
        manifest: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_labels_win_and_carry_the_manifest() {
        let l = labels(&[
            (SNAPSHOT_REF, "sha256:chain"),
            (CRI_IMAGE_REF, "r:5000/lab/python:3.11"),
            (CRI_LAYER_DIGEST, "sha256:l"),
            (CRI_MANIFEST_DIGEST, "sha256:m"),
            (STARGZ_REFERENCE, "other"),
            (STARGZ_DIGEST, "sha256:x"),
        ]);
        let r = remote_layer(&l).unwrap();
        assert_eq!(r.image, "r:5000/lab/python:3.11");
        assert_eq!(r.layer, "sha256:l");
        assert_eq!(r.manifest.as_deref(), Some("sha256:m"));
    }

    #[test]
    fn stargz_labels_without_manifest() {
        let l = labels(&[
            (SNAPSHOT_REF, "sha256:chain"),
            (STARGZ_REFERENCE, "r:5000/lab/python:3.11"),
            (STARGZ_DIGEST, "sha256:l"),
        ]);
        let r = remote_layer(&l).unwrap();
        assert_eq!((r.target.as_str(), r.manifest), ("sha256:chain", None));
    }

    #[test]
    fn no_target_or_no_layer_is_ordinary() {
        assert_eq!(remote_layer(&labels(&[(STARGZ_DIGEST, "sha256:l")])), None);
        assert_eq!(remote_layer(&labels(&[(SNAPSHOT_REF, "sha256:c")])), None);
    }
}
