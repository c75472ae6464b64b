//! Issue 2: browse a real registry through a real mount: namespaces, tags,
//! manifests, configs, raw blobs, indexes and platforms; errors for what is
//! not there; EROFS for writes.

use crate::harness;

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use harness::{dir_names, lab, Mount};
use sha2::{Digest as _, Sha256};

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[test]
fn namespace_lists_repositories_and_tags() {
    require_fuse!();
    let reg = lab().image("busybox");
    let m = Mount::new(reg, &[]);
    assert!(dir_names(m.path()).contains(&"lab".to_string()));
    let lab_dir = dir_names(&m.path().join("lab"));
    for want in ["busybox:latest", "busybox:v2s2"] {
        assert!(
            lab_dir.contains(&want.to_string()),
            "{want} missing from {lab_dir:?}"
        );
    }
    let md = fs::symlink_metadata(m.path().join("lab/busybox:latest")).unwrap();
    assert!(md.file_type().is_symlink());
}

#[test]
fn tag_links_to_its_digest_directory() {
    require_fuse!();
    let reg = lab().image("busybox");
    let m = Mount::new(reg, &[]);
    for tag in ["latest", "v2s2"] {
        let digest = reg.manifest_digest("lab/busybox", tag);
        let target = fs::read_link(m.path().join(format!("lab/busybox:{tag}"))).unwrap();
        assert_eq!(target.to_str().unwrap(), format!("busybox@{digest}"));
        // The manifest bytes are exactly what the registry served: they hash to the digest.
        let bytes = fs::read(m.path().join(format!("lab/busybox:{tag}/manifest.json"))).unwrap();
        assert_eq!(sha256(&bytes), digest);
        let entries = dir_names(&m.path().join(format!("lab/busybox@{digest}")));
        assert_eq!(
            entries,
            [
                "blobs",
                "config.json",
                "layers",
                "manifest.json",
                "referrers",
                "rootfs"
            ]
        );
    }
}

#[test]
fn config_and_blobs_are_the_registry_bytes() {
    require_fuse!();
    let reg = lab().image("busybox");
    let m = Mount::new(reg, &[]);
    let img = m.path().join("lab/busybox:latest");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config = fs::read(img.join("config.json")).unwrap();
    assert_eq!(sha256(&config), config_digest);
    let (status, body) = reg.get(&format!("/v2/lab/busybox/blobs/{config_digest}"));
    assert_eq!(status, 200);
    assert_eq!(config, body.as_bytes());
    let mut blobs = dir_names(&img.join("blobs"));
    let mut want: Vec<String> = std::iter::once(config_digest)
        .chain(
            manifest["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap()),
        )
        .map(String::from)
        .collect();
    blobs.sort();
    want.sort();
    assert_eq!(blobs, want);
    for b in &blobs {
        let path = img.join("blobs").join(b);
        let data = fs::read(&path).unwrap();
        assert_eq!(&sha256(&data), b, "{}", path.display());
        assert_eq!(fs::metadata(&path).unwrap().len(), data.len() as u64);
    }
}

#[test]
fn index_has_one_link_per_platform() {
    require_fuse!();
    let reg = lab().image("multi");
    let m = Mount::new(reg, &[]);
    for tag in ["latest", "v2s2"] {
        let index_digest = reg.manifest_digest("lab/multi", tag);
        let dir = m.path().join(format!("lab/multi@{index_digest}"));
        let index_bytes = fs::read(dir.join("index.json")).unwrap();
        assert_eq!(sha256(&index_bytes), index_digest);
        let index: serde_json::Value = serde_json::from_slice(&index_bytes).unwrap();
        assert_eq!(
            dir_names(&dir),
            ["index.json", "linux-amd64", "linux-arm64-v8", "referrers"]
        );
        for entry in index["manifests"].as_array().unwrap() {
            let p = &entry["platform"];
            let mut name = format!(
                "{}-{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                name = format!("{name}-{v}");
            }
            let digest = entry["digest"].as_str().unwrap();
            let link = fs::read_link(dir.join(&name)).unwrap();
            assert_eq!(link.to_str().unwrap(), format!("../multi@{digest}"));
            // Following the link reaches that manifest.
            let bytes = fs::read(dir.join(&name).join("manifest.json")).unwrap();
            assert_eq!(sha256(&bytes), digest);
            let config: serde_json::Value =
                serde_json::from_slice(&fs::read(dir.join(&name).join("config.json")).unwrap())
                    .unwrap();
            assert_eq!(config["architecture"], p["architecture"]);
        }
        // The tag resolves to this host's platform.
        let host = fs::read_link(m.path().join(format!("lab/multi:{tag}"))).unwrap();
        let amd = fs::read_link(dir.join("linux-amd64")).unwrap();
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(Path::new("..").join(&host), amd);
        }
    }
}

#[test]
fn platform_option_picks_the_index_entry() {
    require_fuse!();
    let reg = lab().image("multi");
    let m = Mount::new(reg, &["--platform", "linux/arm64"]);
    let link = fs::read_link(m.path().join("lab/multi:latest")).unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &fs::read(m.path().join("lab").join(&link).join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["architecture"], "arm64");
}

#[test]
fn missing_names_are_enoent() {
    require_fuse!();
    let reg = lab().image("busybox");
    let m = Mount::new(reg, &[]);
    let zero = format!("sha256:{}", "0".repeat(64));
    for p in [
        "lab/nope:latest".to_string(),
        "lab/busybox:nope".to_string(),
        format!("lab/busybox@{zero}"),
        "nonexistent-namespace".to_string(),
        "lab/busybox:latest/nothing-here".to_string(),
        "lab/UPPER:case".to_string(),
    ] {
        let e = fs::symlink_metadata(m.path().join(&p)).expect_err(&p);
        assert_eq!(e.kind(), ErrorKind::NotFound, "{p}: {e}");
    }
}

#[test]
fn writes_are_refused_and_mount_is_nosuid_nodev() {
    require_fuse!();
    let reg = lab().image("busybox");
    let m = Mount::new(reg, &[]);
    let e = fs::File::create(m.path().join("lab/new-file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = fs::OpenOptions::new()
        .write(true)
        .open(m.path().join("lab/busybox:latest/manifest.json"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = fs::create_dir(m.path().join("lab/busybox:latest/x")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(m.path().to_str().unwrap()))
        .expect("mount listed");
    for opt in ["ro", "nosuid", "nodev"] {
        assert!(
            line.split(' ').nth(5).unwrap().split(',').any(|o| o == opt),
            "{opt} missing: {line}"
        );
    }
}

/// Symlink targets are cached by the kernel; a tag that moves must still be
/// seen to move once its TTL has passed (it becomes a new inode).
#[test]
fn a_moved_tag_is_seen_after_the_tag_ttl() {
    require_fuse!();
    let reg = harness::Registry::start(harness::RegistryKind::Plain);
    reg.push("busybox", "lab/moving:tag");
    let m = Mount::new(&reg, &["--tag-ttl", "1"]);
    let link = m.path().join("lab/moving:tag");
    let first = fs::read_link(&link).unwrap();
    assert_eq!(
        first.to_str().unwrap(),
        format!("moving@{}", reg.manifest_digest("lab/moving", "tag"))
    );
    // Read it through the kernel's cache a few times: stable.
    for _ in 0..3 {
        assert_eq!(fs::read_link(&link).unwrap(), first);
    }
    reg.push("busybox-arm64", "lab/moving:tag");
    let moved = format!("moving@{}", reg.manifest_digest("lab/moving", "tag"));
    assert_ne!(first.to_str().unwrap(), moved);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(fs::read_link(&link).unwrap().to_str().unwrap(), moved);
    // And the path through it leads to the new image.
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(link.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architecture"], "arm64");
}

/// The kernel caches listings; a tag or repository pushed after a listing
/// must show in the next listing once the tag TTL has passed.
#[test]
fn a_new_tag_shows_in_the_listing_after_the_tag_ttl() {
    require_fuse!();
    let reg = harness::Registry::start(harness::RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let m = Mount::new(&reg, &["--tag-ttl", "1"]);
    let list = |p: &str| dir_names(&m.path().join(p));
    assert_eq!(list("lab"), vec!["busybox:latest"]);
    assert_eq!(list(""), vec!["lab"]);
    // Within the TTL the cached listing is served: same answer.
    assert_eq!(list("lab"), vec!["busybox:latest"]);
    reg.push("busybox", "lab/busybox:v2");
    reg.push("busybox", "lab/other:1");
    reg.push("busybox", "team/tool:1");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(list("lab"), vec!["busybox:latest", "busybox:v2", "other:1"]);
    assert_eq!(list(""), vec!["lab", "team"]);
}
