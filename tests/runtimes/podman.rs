//! Issue 18: podman 4.3.1 pulls and runs the lab images through regfs's
//! additional layer store — no layer fetched by the pull, lazy formats
//! fetched in part by the run, overlayfs semantics inside the container,
//! the `use` / `rmdir` protocol answered (no "GC doesn't seem to be
//! supported"), and a corrupted layer refused.

use std::fs;
use std::path::Path;

use crate::harness::{self, lab, Mount, Registry, RegistryKind};
use crate::runtime::{image_ref, serial, Podman};

const GC_WARNING: &str = "GC doesn't seem to be supported";

/// The layer descriptors (digest, size) of `repo:tag`, read through the mount.
fn layers(m: &Mount, repo: &str, tag: &str) -> Vec<(String, u64)> {
    let path = m.path().join(format!("{repo}:{tag}/manifest.json"));
    let m: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Bytes of layer blobs the registry has sent so far.
fn layer_bytes(reg: &Registry, layers: &[(String, u64)]) -> u64 {
    layers.iter().map(|(d, _)| reg.blob_traffic(d).1).sum()
}

/// A mount with a layer store in a fresh directory (returned too).
fn mount_with_store(reg: &Registry) -> (Mount, tempfile::TempDir) {
    let store = harness::tempdir("als");
    let m = Mount::new(reg, &["--layer-store", store.path().to_str().unwrap()]);
    wait_for_mount(store.path());
    (m, store)
}

fn wait_for_mount(p: &Path) {
    for _ in 0..200 {
        if harness::mount_fstype(p).as_deref() == Some("fuse") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("{} never became a FUSE mount", p.display());
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `regfs status --json` of the mount.
fn status(m: &Mount) -> serde_json::Value {
    let out = std::process::Command::new(harness::regfs_bin())
        .args(["status", "--json"])
        .arg(m.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Layers in use as `regfs status --json` reports them: (digest, users).
fn layers_in_use(m: &Mount) -> Vec<(String, u64)> {
    let s = status(m);
    let list = s["layers_in_use"]
        .as_array()
        .or_else(|| s["result"]["layers_in_use"].as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["users"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn pull_fetches_no_layer_and_the_container_sees_overlay_semantics() {
    require_podman!();
    let _serial = serial();
    let reg = lab().image("python:3.11");
    let (m, store) = mount_with_store(reg);
    let podman = Podman::new(Some(store.path()));
    let image = image_ref(reg, "python:3.11");
    let layers = layers(&m, "lab/python", "3.11");
    assert_eq!(layers.len(), 4);
    let before = layer_bytes(reg, &layers);

    let pull = podman.run(&["pull", "--tls-verify=false", &image]);
    assert!(pull.status.success(), "pull failed: {}", stderr(&pull));
    // No layer fetched: only each gzip layer's 4-byte trailer, its
    // uncompressed size for `info`'s diff-size.
    let read = layer_bytes(reg, &layers) - before;
    assert!(
        read <= 4 * layers.len() as u64,
        "the pull read {read} layer bytes"
    );
    assert!(!stderr(&pull).contains(GC_WARNING), "{}", stderr(&pull));
    // podman recorded each layer as the store's: its diff is a symlink into it.
    let records = fs::read_dir(podman.graphroot().join("overlay"))
        .unwrap()
        .filter_map(|e| fs::read_to_string(e.unwrap().path().join("additionallayer")).ok())
        .filter(|p| p.starts_with(store.path().to_str().unwrap()))
        .count();
    assert_eq!(records, 4, "layers taken from the layer store");
    // containers/storage said it uses the 4 layers (and released its lookups).
    let in_use = layers_in_use(&m);
    assert_eq!(in_use.len(), 4, "{in_use:?}");
    // `regfs status` finds the daemon from the layer store too.
    let out = std::process::Command::new(harness::regfs_bin())
        .arg("status")
        .arg(store.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("layers in use by containers: 4"),
        "{text}{}",
        stderr(&out)
    );
    assert!(in_use.iter().all(|(_, users)| *users == 1), "{in_use:?}");

    let run = podman.run(&[
        "run",
        "--rm",
        "--network=none",
        &image,
        "python3",
        "-c",
        "import json, sqlite3; print(1)",
    ]);
    assert!(run.status.success(), "run failed: {}", stderr(&run));
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "1");

    // Overlay semantics inside the container: whiteouts of files (from
    // layers 1 and 2) and of a directory, the opaque /opt/lab, hard links.
    let check = r#"
import os
for p in ["/usr/lib/python3.11/antigravity.py", "/usr/lib/python3.11/pydoc_data", "/etc/issue.net", "/opt/lab/old"]:
    assert not os.path.lexists(p), p + " should be gone"
assert os.path.exists("/usr/lib/python3.11/os.py")
print(len(os.listdir("/opt/lab")))
assert not [x for x in os.listxattr("/opt/lab") if "overlay" in x], os.listxattr("/opt/lab")
a, b = os.stat("/usr/local/share/lab.txt"), os.stat("/usr/local/share/lab-hardlink.txt")
assert a.st_ino == b.st_ino and a.st_nlink == 2, (a, b)
assert os.readlink("/usr/local/share/lab-symlink.txt") == "lab.txt"
print(open("/usr/local/share/lab-symlink.txt").read().strip() != "")
"#;
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network=none",
        &image,
        "python3",
        "-c",
        check,
    ]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["4", "True"]);
    // Writes go to the container's upper layer.
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network=none",
        &image,
        "sh",
        "-c",
        "echo written > /tmp/x && cat /tmp/x && rm /usr/lib/python3.11/os.py && test ! -e /usr/lib/python3.11/os.py && echo removed",
    ]);
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["written", "removed"]
    );
    // …and never reach the layer store.
    let ls = fs::read_dir(store.path().join(regfs::als::encode(&image)))
        .unwrap()
        .count();
    assert_eq!(ls, 4, "the image's layers, listed by digest");

    // Removing the image releases every layer, with no GC warning.
    let rmi = podman.run(&["rmi", &image]);
    assert!(rmi.status.success(), "rmi failed: {}", stderr(&rmi));
    assert!(!stderr(&rmi).contains(GC_WARNING), "{}", stderr(&rmi));
    assert_eq!(layers_in_use(&m), Vec::new());
    assert!(
        !m.log().contains("fuse op failed"),
        "operations failed:\n{}",
        m.log()
    );
}

/// Pull and run `python3 -c pass`-like work of a lazy image; the layer
/// bytes fetched, and the total size of its layers.
fn lazy_run(tag: &str) -> (u64, u64) {
    let reg = lab().image("esgz");
    let (m, store) = mount_with_store(reg);
    let podman = Podman::new(Some(store.path()));
    let image = image_ref(reg, tag);
    let layers = layers(&m, "lab/python", tag.split(':').nth(1).unwrap());
    let before = layer_bytes(reg, &layers);
    podman.ok(&["pull", "--tls-verify=false", &image]);
    let total: u64 = layers.iter().map(|(_, s)| s).sum();
    // The pull looks the layers up: regfs starts the TOCs and the image's
    // start-up files (python3.11, its loader and libraries), nothing more.
    let pulled = layer_bytes(reg, &layers) - before;
    assert!(pulled * 10 < total, "the pull fetched {pulled} layer bytes");
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network=none",
        &image,
        "python3",
        "-c",
        "import json, sqlite3; print(1)",
    ]);
    assert_eq!(out.trim(), "1");
    let fetched = layer_bytes(reg, &layers) - before;
    eprintln!("{tag}: {fetched} of {total} layer bytes fetched ({pulled} while pulling)");
    let log = m.log();
    assert!(
        log.contains("warmed the image's start-up files"),
        "{tag}: the pull warmed no start-up files:\n{log}"
    );
    (fetched, total)
}

/// [`lazy_run`] of `tag`, which must read something and under a quarter
/// of the layers.
fn runs_fetching_a_fraction(tag: &str) {
    let (fetched, total) = lazy_run(tag);
    assert!(fetched > 0, "the run read nothing from the registry?");
    assert!(fetched * 4 < total, "{fetched} of {total} bytes fetched");
}

#[test]
fn estargz_image_runs_fetching_a_fraction_of_its_layers() {
    require_podman!();
    let _serial = serial();
    runs_fetching_a_fraction("python:3.11-esgz");
}

#[test]
fn zstd_chunked_image_runs_fetching_a_fraction_of_its_layers() {
    require_podman!();
    let _serial = serial();
    runs_fetching_a_fraction("python:3.11-zstdchunked");
}

#[test]
fn corrupted_layer_fails_the_container_and_is_not_cached() {
    require_podman!();
    let _serial = serial();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let (m, store) = mount_with_store(&reg);
    let layers = layers(&m, "lab/busybox", "latest");
    let (digest, size) = layers[0].clone();
    // Flip a byte in the middle of the stored blob: same size, wrong digest.
    let blob = reg.blob_path(&digest);
    let mut bytes = fs::read(&blob).unwrap();
    assert_eq!(bytes.len() as u64, size);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&blob, &bytes).unwrap();

    let podman = Podman::new(Some(store.path()));
    let image = image_ref(&reg, "busybox:latest");
    // The pull reads no layer, so it cannot notice.
    podman.ok(&["pull", "--tls-verify=false", &image]);
    let run = podman.run(&["run", "--rm", "--network=none", &image, "echo", "served"]);
    assert!(
        !run.status.success(),
        "the container ran on a corrupted layer"
    );
    assert!(!String::from_utf8_lossy(&run.stdout).contains("served"));
    eprintln!("podman run on a corrupted layer: {}", stderr(&run).trim());
    assert!(
        !stderr(&run).trim().is_empty(),
        "failed without an error message"
    );
    // The daemon saw the mismatch; nothing of the layer is in the cache.
    let log = m.log();
    assert!(
        log.contains("digest mismatch") && log.contains(hex_of(&digest)),
        "{log}"
    );
    let cache = m.cache_dir();
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(!cache.join("blobs/sha256").join(hex).exists());
    for section in ["layers", "index", "spans"] {
        let n = fs::read_dir(cache.join(section).join("sha256"))
            .unwrap()
            .count();
        assert_eq!(n, 0, "{section}/ holds something of the corrupted layer");
    }
}

/// `podman push` and `podman save` of an image pulled through the layer
/// store, cold cache (`diff-size` of the gzip layers from their trailers;
/// a stand-in made `save` fail with "write too long"): the pushed image has
/// the original content, the saved layers are the image's diff_ids.
#[test]
fn push_and_save_keep_the_content() {
    require_podman!();
    let _serial = serial();
    let reg = lab().image("python:3.11");
    let (m, store) = mount_with_store(reg);
    let podman = Podman::new(Some(store.path()));
    let image = image_ref(reg, "python:3.11");
    let pull = podman.run(&["pull", "--tls-verify=false", &image]);
    assert!(pull.status.success(), "pull failed: {}", stderr(&pull));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path().join("lab/python:3.11/config.json")).unwrap())
            .unwrap();
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();

    let pushed = format!("{}/lab/pushed:1", reg.host_port());
    let push = podman.run(&["push", "--tls-verify=false", &image, &pushed]);
    assert!(push.status.success(), "push failed: {}", stderr(&push));
    // podman 4.3 pushes a layer of its storage by compressing its diff
    // again: nothing it pulled through a layer store left it a compressed
    // blob to reuse (its blob info cache learns those from downloads). The
    // content is the image's; a layer keeps its blob digest only where the
    // same gzip made both (here the small top layers).
    let pushed_config: serde_json::Value =
        serde_json::from_slice(&fs::read(m.path().join("lab/pushed:1/config.json")).unwrap())
            .unwrap();
    assert_eq!(
        pushed_config["rootfs"]["diff_ids"],
        config["rootfs"]["diff_ids"]
    );
    let original: Vec<String> = layers(&m, "lab/python", "3.11")
        .into_iter()
        .map(|l| l.0)
        .collect();
    let got: Vec<String> = layers(&m, "lab/pushed", "1")
        .into_iter()
        .map(|l| l.0)
        .collect();
    let kept = got.iter().zip(&original).filter(|(a, b)| a == b).count();
    println!(
        "podman push kept {kept} of {} layer blob digests",
        original.len()
    );

    let dir = harness::tempdir("save");
    let archive = dir.path().join("python.tar");
    let save = podman.run(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        archive.to_str().unwrap(),
        &image,
    ]);
    assert!(save.status.success(), "save failed: {}", stderr(&save));
    let out = dir.path().join("x");
    fs::create_dir(&out).unwrap();
    harness::run(
        std::process::Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&out),
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let saved: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            use sha2::Digest;
            let bytes = fs::read(out.join(l.as_str().unwrap())).unwrap();
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
        })
        .collect();
    assert_eq!(saved, diff_ids, "the saved layers are the image's diff_ids");
}
