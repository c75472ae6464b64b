//! The TOC-keyed protocol of containers/storage ≥ 1.54 (podman ≥ 5.1), done
//! by hand as it does it: for each eStargz / zstd:chunked layer, stat
//! `diff`, `info` and `blob` under `<base64(ref)>/<TOC digest>/`, check
//! `toc-digest` and `flags.expected-layer-diffid`, announce the use, then
//! overlay-mount the `diff`s (through colon-free symlinks: overlayfs splits
//! `lowerdir` on `:`) and read files; then release the layers.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::harness::{self, lab, Mount};
use crate::runtime::serial;

const TOC_ANNOTATIONS: [&str; 2] = [
    "containerd.io/snapshot/stargz/toc.digest",
    "io.github.containers.zstd-chunked.manifest-checksum",
];

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn sha256(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

fn layers_in_use(m: &Mount) -> usize {
    let out = Command::new(harness::regfs_bin())
        .args(["status", "--json"])
        .arg(m.path())
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    s["layers_in_use"].as_array().map_or(0, |a| a.len())
}

/// Whether xattr `name` of `path` reads as `y` for root (`None`) or for
/// user `uid`: "y", or "-" when absent or unreadable. A forked child drops
/// to the user and makes only async-signal-safe calls.
fn getxattr_as(uid: Option<u32>, path: &Path, name: &str) -> String {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: the child calls only setresgid/setresuid/lgetxattr/_exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        unsafe {
            if let Some(u) = uid {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(u, u, u) != 0
                    || libc::setresuid(u, u, u) != 0
                {
                    libc::_exit(3);
                }
            }
            let mut buf = [0u8; 16];
            let got = libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
            libc::_exit(if got == 1 && buf[0] == b'y' { 0 } else { 1 });
        }
    }
    let mut status = 0;
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "child died");
    match libc::WEXITSTATUS(status) {
        0 => "y".into(),
        1 => "-".into(),
        c => panic!("could not become user {uid:?} (exit {c})"),
    }
}

fn toc_keyed_layers_overlay_like_containers_storage(tag: &str) {
    let reg = lab().image("esgz");
    let store = harness::tempdir("als");
    let m = Mount::new(reg, &["--layer-store", store.path().to_str().unwrap()]);
    let img = m.path().join(format!("lab/python:{tag}"));
    let manifest = json(&img.join("manifest.json"));
    let config = json(&img.join("config.json"));
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let reference = format!("{}/lab/python:{tag}", reg.host_port());
    let refdir = store.path().join(regfs::als::encode(&reference));

    let mut diffs: Vec<PathBuf> = Vec::new();
    for (i, layer) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let a = &layer["annotations"];
        let toc = TOC_ANNOTATIONS
            .iter()
            .find_map(|k| a[*k].as_str())
            .unwrap_or_else(|| panic!("layer {i} of {tag} has no TOC digest: {layer}"));
        let dir = refdir.join(toc);
        for f in ["diff", "info", "blob"] {
            fs::metadata(dir.join(f)).unwrap_or_else(|e| panic!("stat {f} of layer {i}: {e}"));
        }
        let info = json(&dir.join("info"));
        assert_eq!(info["toc-digest"], toc, "{info}");
        assert_eq!(
            info["flags"]["expected-layer-diffid"], diff_ids[i],
            "{info}"
        );
        assert_eq!(info["diff-digest"], diff_ids[i], "{info}");
        assert_eq!(info["compressed-diff-digest"], layer["digest"], "{info}");
        assert_eq!(info["compressed-size"], layer["size"], "{info}");
        assert!(info["diff-size"].as_i64().unwrap() >= 0, "{info}");
        assert_eq!(
            fs::metadata(dir.join("blob")).unwrap().len(),
            layer["size"].as_u64().unwrap()
        );
        // "I use this layer": the store answers ENOENT, as containers/storage expects.
        let e = fs::File::create(dir.join("use")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "use of layer {i}: {e}");
        // Anything else that writes is refused.
        let e = fs::create_dir(dir.join("x")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "mkdir: {e}");
        diffs.push(dir.join("diff"));
    }
    assert_eq!(layers_in_use(&m), diffs.len());

    // The opaque /opt/lab of the top layer carries the overlayfs mark for
    // root (trusted.) and, for rootless overlayfs, for other users (user.).
    let opaque = diffs.last().unwrap().join("opt/lab");
    assert_eq!(getxattr_as(None, &opaque, "trusted.overlay.opaque"), "y");
    assert_eq!(getxattr_as(None, &opaque, "user.overlay.opaque"), "-");
    assert_eq!(
        getxattr_as(Some(65534), &opaque, "user.overlay.opaque"),
        "y"
    );

    // Overlay-mount the diffs through colon-free symlinks, top layer first.
    let links = harness::tempdir("lower");
    let mut lower = Vec::new();
    for (i, d) in diffs.iter().enumerate().rev() {
        let l = links.path().join(format!("l{i}"));
        std::os::unix::fs::symlink(d, &l).unwrap();
        lower.push(l.display().to_string());
    }
    let target = harness::tempdir("merged");
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(target.path())
        .status()
        .unwrap();
    assert!(status.success(), "overlay mount failed");
    let t = target.path();
    let result = std::panic::catch_unwind(|| {
        let rootfs = img.join("rootfs");
        for f in [
            "usr/lib/python3.11/os.py",
            "etc/os-release",
            "usr/local/share/lab.txt",
        ] {
            assert_eq!(sha256(&t.join(f)), sha256(&rootfs.join(f)), "{f}");
        }
        assert!(!t.join("usr/lib/python3.11/antigravity.py").exists());
        assert!(
            !t.join("opt/lab/old").exists(),
            "opaque /opt/lab shows lower content"
        );
        assert_eq!(fs::read_dir(t.join("opt/lab")).unwrap().count(), 4);
    });
    let _ = Command::new("umount").arg(t).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    // Release: rmdir of each layer directory, answered ENOENT.
    for d in &diffs {
        let e = fs::remove_dir(d.parent().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "rmdir: {e}");
    }
    assert_eq!(layers_in_use(&m), 0);
}

#[test]
fn estargz_layers_by_toc_digest() {
    require_fuse!();
    let _serial = serial();
    toc_keyed_layers_overlay_like_containers_storage("3.11-esgz");
}

#[test]
fn zstd_chunked_layers_by_toc_digest() {
    require_fuse!();
    let _serial = serial();
    toc_keyed_layers_overlay_like_containers_storage("3.11-zstdchunked");
}

/// containers/storage keeps a layer's path (`<base64(ref)>/<digest>/diff`)
/// after the tag has moved to an image without that layer: the layer must
/// stay reachable there, while a layer never seen under the old image is not.
#[test]
fn a_layer_stays_reachable_after_its_tag_moves() {
    require_fuse!();
    let _serial = serial();
    let reg = lab().image("python:3.11");
    reg.push("python-3.11", "lab/moving:1");
    let store = harness::tempdir("als");
    let m = Mount::new(
        reg,
        &[
            "--layer-store",
            store.path().to_str().unwrap(),
            "--tag-ttl",
            "0",
        ],
    );
    let manifest = json(&m.path().join("lab/moving:1/manifest.json"));
    let layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    let refdir = store.path().join(regfs::als::encode(&format!(
        "{}/lab/moving:1",
        reg.host_port()
    )));
    // Layer 3 added lab.txt; layer 4 is the opaque /opt/lab.
    let third = refdir.join(&layers[2]);
    let lab_txt = third.join("diff/usr/local/share/lab.txt");
    let before = fs::read(&lab_txt).unwrap();
    fs::metadata(refdir.join(&layers[3]).join("diff")).unwrap();

    // The tag moves to busybox, which shares no layer with python.
    reg.push("busybox", "lab/moving:1");
    let now = json(&m.path().join("lab/moving:1/manifest.json"));
    assert_ne!(
        now["layers"][0]["digest"].as_str(),
        Some(layers[0].as_str())
    );
    assert_eq!(fs::read(&lab_txt).unwrap(), before);
    assert!(fs::metadata(third.join("info")).is_ok());
    assert!(fs::metadata(refdir.join(&layers[3]).join("diff/opt/lab")).is_ok());
    // A layer of the old image never looked up before the move is gone.
    let e = fs::metadata(refdir.join(&layers[0]).join("diff")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}
