//! Loading a lazy layer's table of contents in the background as soon as
//! its remote snapshot exists, as stargz-snapshotter does when it mounts a
//! layer: the TOC (tens to hundreds of KB) is then fetched and verified while
//! containerd finishes the pull and starts the container, not on the
//! container's first lookups. Only for eStargz and zstd:chunked layers (an
//! annotation in the manifest says so): a gzip layer has no TOC, and
//! touching it would fetch the whole layer, which stays the container's
//! reads' decision.

use std::path::Path;

/// The manifest annotations of layers regfs reads chunk by chunk.
const LAZY_ANNOTATIONS: &[&str] = &[
    "containerd.io/snapshot/stargz/toc.digest",
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
];

/// Warm the layer directory `dir` (relative to `mount_root`, as
/// `REPO@sha256:M/layers/N-<digest>`) on a thread of its own; failures are
/// only logged (the container's reads will meet them again).
pub fn in_background(mount_root: &Path, dir: &str) {
    let (mount_root, dir) = (mount_root.to_path_buf(), dir.to_string());
    let spawned = std::thread::Builder::new()
        .name("regfs-warm".into())
        .spawn(move || match warm(&mount_root, &dir) {
            Ok(true) => tracing::debug!(%dir, "layer TOC loaded"),
            Ok(false) => {}
            Err(e) => tracing::info!(%dir, error = %e, "warming the layer failed"),
        });
    if let Err(e) = spawned {
        tracing::info!(error = %e, "no thread to warm a layer");
    }
}

/// Load the TOC of `dir` if its layer is lazy; true if it did.
fn warm(mount_root: &Path, dir: &str) -> std::io::Result<bool> {
    let Some((image, entry)) = dir.split_once("/layers/") else {
        return Ok(false);
    };
    let Some((_, digest)) = entry.split_once('-') else {
        return Ok(false);
    };
    let manifest = std::fs::read(mount_root.join(image).join("manifest.json"))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let lazy = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["digest"].as_str() == Some(digest))
        .any(|l| {
            LAZY_ANNOTATIONS
                .iter()
                .any(|a| l["annotations"].get(*a).is_some())
        });
    if lazy {
        // Listing the layer's root loads (fetches and verifies) its TOC.
        std::fs::read_dir(mount_root.join(dir))?.for_each(drop);
    }
    Ok(lazy)
}
