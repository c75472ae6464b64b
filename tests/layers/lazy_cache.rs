//! Issue 3: laziness (what each operation fetches), one fetch per layer under
//! concurrency, the content cache (bound, reuse after restart, nothing
//! unverified kept) and corrupted layers.

use crate::harness;

use std::fs;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use harness::{list_dir, umoci_unpack, Mount, Registry, RegistryKind};
use sha2::{Digest as _, Sha256};

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn layer_digests(img: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn layer_gets(reg: &Registry, layers: &[String]) -> usize {
    layers.iter().map(|d| reg.blob_gets(Some(d))).sum()
}

fn python_registry() -> Registry {
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    reg
}

#[test]
fn metadata_of_an_image_fetches_no_layer() {
    require_fuse!();
    let reg = python_registry();
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab/python:3.11");
    let layers = layer_digests(&img);
    for e in fs::read_dir(&img).unwrap() {
        let e = e.unwrap();
        fs::symlink_metadata(e.path()).unwrap();
    }
    fs::read(img.join("config.json")).unwrap();
    for dir in ["layers", "blobs"] {
        for e in fs::read_dir(img.join(dir)).unwrap() {
            fs::symlink_metadata(e.unwrap().path()).unwrap();
        }
    }
    fs::symlink_metadata(img.join("rootfs")).unwrap();
    assert_eq!(
        layer_gets(&reg, &layers),
        0,
        "listing and stat-ing fetched a layer"
    );
    // The first look inside the rootfs fetches each layer exactly once.
    fs::read_to_string(img.join("rootfs/etc/os-release")).unwrap();
    for d in &layers {
        assert_eq!(reg.blob_gets(Some(d)), 1, "layer {d}");
    }
}

#[test]
fn concurrent_readers_cause_one_fetch_per_layer() {
    require_fuse!();
    let reg = python_registry();
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab/python:3.11");
    let layers = layer_digests(&img);
    let oracle = umoci_unpack("python-3.11");
    let files = [
        "usr/bin/python3.11",
        "etc/os-release",
        "opt/lab/numbers.txt",
        "usr/lib/python3.11/os.py",
    ];
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for i in 0..8 {
            let (img, oracle) = (&img, &oracle);
            handles.push(s.spawn(move || {
                let f = files[i % files.len()];
                let got = sha256_file(&img.join("rootfs").join(f)).unwrap();
                assert_eq!(got, sha256_file(&oracle.join(f)).unwrap(), "{f}");
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    });
    for d in &layers {
        assert_eq!(
            reg.blob_gets(Some(d)),
            1,
            "layer {d} fetched more than once"
        );
    }
}

#[test]
fn cache_is_reused_after_restart_without_the_network() {
    require_fuse!();
    let reg = python_registry();
    let mut m = Mount::new(&reg, &[]);
    let target = fs::read_link(m.path().join("lab/python:3.11")).unwrap();
    let by_digest = PathBuf::from("lab").join(target);
    let file = by_digest.join("rootfs/usr/bin/python3.11");
    let want = sha256_file(&m.path().join(&file)).unwrap();
    reg.stop();
    m.remount();
    // Digest paths need nothing from the registry: manifest, config and layers are cached.
    assert_eq!(sha256_file(&m.path().join(&file)).unwrap(), want);
    assert_eq!(
        fs::read_dir(m.path().join(&by_digest).join("rootfs/usr/bin"))
            .unwrap()
            .count(),
        fs::read_dir(umoci_unpack("python-3.11").join("usr/bin"))
            .unwrap()
            .count()
    );
    reg.restart();
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let md = e.metadata().unwrap();
        total += if md.is_dir() {
            dir_size(&e.path())
        } else {
            md.len()
        };
    }
    total
}

#[test]
fn cache_stays_within_its_size_bound() {
    require_fuse!();
    let reg = python_registry();
    let limit: u64 = 64 << 20;
    let m = Mount::new(&reg, &["--cache-size", "64M"]);
    let oracle = umoci_unpack("python-3.11");
    for f in [
        "usr/bin/python3.11",
        "usr/lib/python3.11/os.py",
        "etc/passwd",
    ] {
        let got = sha256_file(&m.path().join("lab/python:3.11/rootfs").join(f)).unwrap();
        assert_eq!(got, sha256_file(&oracle.join(f)).unwrap(), "{f}");
    }
    let used = dir_size(m.cache_dir());
    // The python image unpacks to ~160 MiB: the bound forced evictions.
    assert!(used <= limit, "cache holds {used} bytes, limit {limit}");
    let mode = fs::metadata(m.cache_dir()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o700);
}

#[test]
fn corrupted_layer_is_eio_and_nothing_is_cached() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab/busybox:latest");
    let layers = layer_digests(&img);
    reg.corrupt_blob(&layers[0]);
    let e = list_dir(&img.join("rootfs")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    let e = fs::read(img.join("blobs").join(&layers[0])).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    // Neither the tar, nor its index, nor the raw blob was kept.
    for kind in ["layers", "index", "blobs"] {
        let dir = m.cache_dir().join(kind).join("sha256");
        for e in fs::read_dir(&dir).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!layers[0].ends_with(&name), "{kind}/{name} cached");
            if kind != "blobs" {
                panic!("{kind}/{name}: nothing of the layer may be cached");
            }
        }
    }
    assert!(m.log().contains(&layers[0]), "the log names the bad digest");
    let e = fs::symlink_metadata(img.join("rootfs/bin/busybox")).unwrap_err();
    assert_ne!(
        e.kind(),
        ErrorKind::NotFound,
        "a corrupt layer is an error, not an empty tree"
    );
}
