//! The lab images on disk: the repository root, the lab scripts, and the OCI
//! layouts under `$REGFS_LAB` (which layout holds which tag).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The repository root (the workspace directory holding `Cargo.lock`).
pub fn repo_root() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        if dir.join("Cargo.lock").exists() && dir.join("scripts").is_dir() {
            return dir;
        }
        if !dir.pop() {
            return PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        }
    }
}

/// The lab scripts in the repository, `scripts/lab` (registry.sh,
/// make-images.sh, push.sh, esgz.sh, check-rootfs.sh).
pub fn lab_dir() -> PathBuf {
    repo_root().join("scripts/lab")
}

/// The lab image folder (`$REGFS_LAB`, default `REPO/.lab/images`) holding the
/// OCI layouts `oci/` (tags `busybox`, `busybox-arm64`, `multi`,
/// `debian-bookworm`, `python-3.11`) and `oci-zstd/` (`python-3.11-zstd`).
///
/// On first call per process it runs `scripts/lib.sh`'s `ensure_images`,
/// which is a no-op (~50 ms) when the layouts are complete and otherwise
/// builds them (minutes; needs root and network for Debian packages).
pub fn lab_images() -> &'static Path {
    static IMAGES: OnceLock<PathBuf> = OnceLock::new();
    IMAGES.get_or_init(|| {
        let dir = std::env::var_os("REGFS_LAB")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join(".lab/images"));
        let script = format!(
            ". '{}/scripts/lib.sh' && ensure_images",
            repo_root().display()
        );
        let out = Command::new("bash")
            .arg("-c")
            .arg(&script)
            .env("REGFS_LAB", &dir)
            .stdin(Stdio::null())
            .output()
            .expect("run bash for ensure_images");
        assert!(
            out.status.success(),
            "ensure_images failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        fs::canonicalize(&dir).unwrap_or(dir)
    })
}

/// The OCI layout holding `layout_tag`: `oci-zstd` for tags ending in
/// `-zstd`, `oci-esgz` for `-esgz` and `-zstdchunked`, else `oci`.
pub fn layout_for(layout_tag: &str) -> PathBuf {
    if layout_tag.ends_with("-zstd") {
        lab_images().join("oci-zstd")
    } else if layout_tag.ends_with("-esgz") || layout_tag.ends_with("-zstdchunked") {
        lab_images().join("oci-esgz")
    } else {
        lab_images().join("oci")
    }
}
