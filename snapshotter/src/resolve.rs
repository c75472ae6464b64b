//! Where the regfs mount serves a remote layer: the image reference and
//! layer digest of a `Prepare` become a directory
//! `REPO@sha256:<manifest>/layers/N-<layer digest>` under the mount. The
//! lookups go through the mount itself, so the manifest is fetched and
//! verified by regfs and only layers that manifest lists are found; no layer
//! byte is read. Runs on a blocking thread (it waits on FUSE, which may wait
//! on the network).

use std::path::{Path, PathBuf};

use crate::labels::RemoteLayer;

/// The registry name of a mount of every registry.
pub const ANY: &str = "*";

/// Told the image directory (`REPO@sha256:…`, relative to the mount) each
/// time a remote snapshot of one of its layers is made: a runtime is about
/// to start that image.
pub type OnRemote = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

/// Finds remote layers in one regfs mount.
#[derive(Clone)]
pub struct Resolver {
    mount_root: PathBuf,
    registry: String,
    on_remote: Option<OnRemote>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("mount_root", &self.mount_root)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// Why a layer is not served remotely (containerd then pulls it as usual).
pub type Unservable = String;

impl Resolver {
    /// A resolver for the mount at `mount_root` of `registry` (as references
    /// name it: `host[:port]`, `docker.io` for Docker Hub; `*` for a mount of
    /// every registry, `regfs mount --any-registry`, where each image is
    /// under `HOST/`).
    pub fn new(mount_root: &Path, registry: &str) -> Self {
        Resolver {
            mount_root: mount_root.to_path_buf(),
            registry: canonical_host(registry).to_string(),
            on_remote: None,
        }
    }

    /// The same resolver, telling `on_remote` of every remote snapshot made.
    pub fn with_on_remote(mut self, on_remote: Option<OnRemote>) -> Self {
        self.on_remote = on_remote;
        self
    }

    /// A remote snapshot of layer directory `dir` (as [`Resolver::resolve`]
    /// returned it) was made: tell the hook its image directory.
    pub fn announce(&self, dir: &str) {
        if let (Some(hook), Some((image, _))) = (&self.on_remote, dir.rsplit_once("/layers/")) {
            hook(image);
        }
    }

    /// The mount.
    pub fn mount_root(&self) -> &Path {
        &self.mount_root
    }

    /// The layer directory, relative to the mount, for `layer`.
    pub fn resolve(&self, layer: &RemoteLayer) -> Result<String, Unservable> {
        let (host, repo, tag, digest) = split_reference(&layer.image)
            .ok_or_else(|| format!("cannot parse image reference {:?}", layer.image))?;
        let any = self.registry == ANY;
        if !any && canonical_host(host) != self.registry {
            return Err(format!(
                "image {:?} is on {host}, this mount serves {}",
                layer.image, self.registry
            ));
        }
        let repo = if canonical_host(host) == "docker.io" && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo.to_string()
        };
        let repo = if any {
            format!("{}/{repo}", canonical_host(host))
        } else {
            repo
        };
        let image = match (layer.manifest.as_deref(), digest, tag) {
            (Some(m), _, _) => format!("{repo}@{m}"),
            (None, Some(d), _) => format!("{repo}@{d}"),
            (None, None, Some(t)) => format!("{repo}:{t}"),
            (None, None, None) => format!("{repo}:latest"),
        };
        let dir = self.manifest_dir(&image, &layer.layer)?;
        let layers = self.mount_root.join(&dir).join("layers");
        let entry = find_layer(&layers, &layer.layer)?;
        Ok(format!("{dir}/layers/{entry}"))
    }

    /// The image directory (`REPO@sha256:…`, relative to the mount) of the
    /// manifest holding `layer`: `image` itself, or for an index the
    /// platform entry whose manifest lists the layer.
    fn manifest_dir(&self, image: &str, layer: &str) -> Result<String, Unservable> {
        let repo_dir = match image.rfind('/') {
            Some(i) => &image[..i],
            None => "",
        };
        let path = self.mount_root.join(image);
        // A tag is a symlink to `NAME@sha256:…` beside it: pin that digest, so
        // the snapshot keeps its layer if the tag moves.
        let pinned = match std::fs::read_link(&path) {
            Ok(t) => join_rel(repo_dir, &t.to_string_lossy()),
            Err(_) => image.to_string(),
        };
        let dir = self.mount_root.join(&pinned);
        let md = std::fs::metadata(&dir).map_err(|e| format!("image {image}: {e}"))?;
        if !md.is_dir() {
            return Err(format!("image {image} is not an image directory"));
        }
        if dir.join("layers").is_dir() {
            return Ok(pinned);
        }
        // An index: its platform entries are symlinks to sibling manifests.
        let rd = std::fs::read_dir(&dir).map_err(|e| format!("image {image}: {e}"))?;
        let pinned_parent = match pinned.rfind('/') {
            Some(i) => &pinned[..i],
            None => "",
        };
        for e in rd.flatten() {
            let Ok(t) = std::fs::read_link(e.path()) else {
                continue;
            };
            let t = t.to_string_lossy();
            let Some(name) = t.strip_prefix("../") else {
                continue;
            };
            let child = join_rel(pinned_parent, name);
            let layers = self.mount_root.join(&child).join("layers");
            if find_layer(&layers, layer).is_ok() {
                return Ok(child);
            }
        }
        Err(format!("no manifest of {image} lists layer {layer}"))
    }
}

fn join_rel(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The `N-<digest>` entry of `layers` for `digest`.
fn find_layer(layers: &Path, digest: &str) -> Result<String, Unservable> {
    let rd = std::fs::read_dir(layers).map_err(|e| format!("{}: {e}", layers.display()))?;
    let suffix = format!("-{digest}");
    rd.flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.ends_with(&suffix))
        .ok_or_else(|| format!("layer {digest} is not in {}", layers.display()))
}

/// Docker Hub's aliases all mean `docker.io`.
fn canonical_host(host: &str) -> &str {
    match host {
        "registry-1.docker.io" | "index.docker.io" => "docker.io",
        h => h,
    }
}

/// `host/repo[:tag][@digest]` → (host, repo, tag, digest). A first component
/// without `.` or `:` (and not `localhost`) is a Docker Hub repository.
fn split_reference(r: &str) -> Option<(&str, &str, Option<&str>, Option<&str>)> {
    let (rest, digest) = match r.split_once('@') {
        Some((a, d)) => (a, Some(d)),
        None => (r, None),
    };
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h, p),
        _ => ("docker.io", rest),
    };
    let last = path.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match path[last..].rfind(':') {
        Some(i) => (&path[..last + i], Some(&path[last + i + 1..])),
        None => (path, None),
    };
    (!repo.is_empty()).then_some((host, repo, tag, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split() {
        assert_eq!(
            split_reference("127.0.0.1:5000/lab/python:3.11"),
            Some(("127.0.0.1:5000", "lab/python", Some("3.11"), None))
        );
        assert_eq!(
            split_reference("localhost/x@sha256:ab"),
            Some(("localhost", "x", None, Some("sha256:ab")))
        );
        assert_eq!(
            split_reference("python:3.11"),
            Some(("docker.io", "python", Some("3.11"), None))
        );
        assert_eq!(
            split_reference("reg.io:443/a/b:t@sha256:cd"),
            Some(("reg.io:443", "a/b", Some("t"), Some("sha256:cd")))
        );
    }

    #[test]
    fn other_registries_are_not_served() {
        let r = Resolver::new(Path::new("/nonexistent"), "127.0.0.1:5000");
        let e = r
            .resolve(&RemoteLayer {
                target: "c".into(),
                image: "example.com/lab/python:3.11".into(),
                layer: "sha256:l".into(),
                manifest: None,
            })
            .unwrap_err();
        assert!(e.contains("this mount serves 127.0.0.1:5000"), "{e}");
    }
}
