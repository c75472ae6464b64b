//! Issue 4: eStargz and zstd:chunked layers served lazily, one verified chunk
//! at a time, against a real registry and a real mount: the umoci oracle, bytes
//! fetched by `cat` and `ls -lR`, corrupted chunks, TOCs that do not match their
//! annotation, and the chunk cache across remounts and images.

use crate::harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{
    assert_same_tree, lab, layout_for, list_dir, snapshot, umoci_snapshot, umoci_unpack, Mount,
    Registry, RegistryKind,
};
use regfs::estargz::{self, Toc};

const ESGZ: &str = "python:3.11-esgz";
const ZCHUNKED: &str = "python:3.11-zstdchunked";

/// A registry of its own (so its access log counts only this test) with both
/// lazy images.
fn esgz_registry() -> Registry {
    let reg = Registry::start(RegistryKind::Plain);
    for (tag, dest) in [
        ("python-3.11-esgz", "lab/python:3.11-esgz"),
        ("python-3.11-zstdchunked", "lab/python:3.11-zstdchunked"),
    ] {
        reg.push_preserve_digests(tag, dest);
    }
    reg
}

/// `user.regfs.digest` of `path` (`getfattr -n`), if it has one.
fn digest_xattr(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 128];
    // SAFETY: both strings are NUL-terminated; buf is writable for its length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"user.regfs.digest".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n > 0).then(|| String::from_utf8_lossy(&buf[..n as usize]).into_owned())
}

fn manifest(img: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(img.join("manifest.json")).unwrap()).unwrap()
}

/// (digest, size) of each layer of the mounted image.
fn layers(img: &Path) -> Vec<(String, u64)> {
    manifest(img)["layers"]
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

/// The TOC of the eStargz blob at `path`, read with the library itself.
fn esgz_toc(path: &Path) -> (Toc<'static>, u64) {
    let blob = fs::read(path).unwrap();
    let (toc_off, footer) = estargz::parse_footer(&blob).unwrap();
    let json =
        estargz::toc::estargz_toc_json(&blob[toc_off as usize..blob.len() - footer as usize])
            .unwrap();
    (Toc::parse(&json).unwrap().into_owned(), toc_off)
}

#[test]
fn lazy_rootfs_matches_umoci_for_estargz_and_zstd_chunked() {
    require_fuse!();
    let reg = lab().image("esgz");
    let m = Mount::new(reg, &[]);
    let expected = umoci_snapshot("python-3.11");
    for image in [ESGZ, ZCHUNKED] {
        let actual = snapshot(&m.path().join("lab").join(image).join("rootfs"));
        assert_same_tree(&expected, &actual);
    }
    assert!(
        m.log().contains("fetched and verified TOC"),
        "lazy mode not used:\n{}",
        m.log()
    );
    assert!(
        !m.log().contains("fetched layer"),
        "a layer was fetched whole:\n{}",
        m.log()
    );
}

#[test]
fn ls_fetches_tocs_cat_fetches_one_chunk_and_the_chunk_cache_persists() {
    require_fuse!();
    let reg = esgz_registry();
    let mut m = Mount::new(&reg, &[]);
    let img = m.path().join("lab").join(ESGZ);
    let ls = |img: &Path| {
        let out = Command::new("ls")
            .arg("-lR")
            .arg(img.join("rootfs"))
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout.len() > 100_000, "ls -lR too short");
    };
    ls(&img);
    let ls_traffic: Vec<(usize, u64, usize)> = layers(&img)
        .iter()
        .map(|(d, _)| reg.blob_traffic(d))
        .collect();
    for ((d, size), (n, bytes, whole)) in layers(&img).iter().zip(&ls_traffic) {
        assert_eq!(
            (*n, *whole),
            (1, 0),
            "ls -lR of {d}: expected footer and TOC in one Range GET"
        );
        assert!(
            *bytes < size / 20 + 4096,
            "ls -lR fetched {bytes} of {size} bytes of {d}"
        );
    }
    // One small file in the large first layer: its digest from the TOC
    // first (nothing fetched), then its bytes.
    let (big, big_size) = layers(&img)[0].clone();
    let digest = digest_xattr(&img.join("rootfs/etc/debian_version"));
    assert_eq!(reg.blob_traffic(&big), ls_traffic[0], "getxattr fetched");
    let want = fs::read(umoci_unpack("python-3.11").join("etc/debian_version")).unwrap();
    let got = fs::read(img.join("rootfs/etc/debian_version")).unwrap();
    assert_eq!(got, want);
    let sha = regfs::digest::Digest::sha256_of(&got).to_string();
    assert_eq!(digest.as_deref(), Some(sha.as_str()), "user.regfs.digest");
    let (n, bytes, whole) = reg.blob_traffic_since(&big, ls_traffic[0]);
    let cat_bytes = bytes - ls_traffic[0].1;
    assert_eq!((n, whole), (2, 0), "one chunk Range GET for the cat");
    assert!(
        cat_bytes * 100 < big_size,
        "cat fetched {cat_bytes} bytes of a {big_size}-byte layer (>= 1%)"
    );
    // The same file of the zstd:chunked twin: same chunk digest, so only its TOC is fetched.
    let zimg = m.path().join("lab").join(ZCHUNKED);
    assert_eq!(
        digest_xattr(&zimg.join("rootfs/etc/debian_version")),
        digest
    );
    assert_eq!(
        fs::read(zimg.join("rootfs/etc/debian_version")).unwrap(),
        want
    );
    let (zn, _, zwhole) = reg.blob_traffic(&layers(&zimg)[0].0);
    assert_eq!(
        (zn, zwhole),
        (1, 0),
        "zstd:chunked: the TOC only (chunk cache shared across images)"
    );
    // After a remount: TOCs and chunks come from the cache, nothing from the network.
    m.remount();
    let img = m.path().join("lab").join(ESGZ);
    ls(&img);
    assert_eq!(
        fs::read(img.join("rootfs/etc/debian_version")).unwrap(),
        want
    );
    assert_eq!(
        reg.blob_traffic(&big).0,
        2,
        "remount fetched from the large layer again"
    );
}

#[test]
fn corrupted_chunk_is_eio_for_that_file_only() {
    require_fuse!();
    let reg = esgz_registry();
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab").join(ESGZ);
    let (big, _) = layers(&img)[0].clone();
    let path = reg.blob_path(&big);
    let (toc, toc_off) = esgz_toc(&path);
    // A mid-sized single-chunk file under usr/ whose content no other entry shares.
    let victim = toc
        .entries
        .iter()
        .filter(|e| {
            e.kind == "reg" && e.name.starts_with("usr/") && (4000..200_000).contains(&e.size)
        })
        .find(|e| {
            toc.entries
                .iter()
                .filter(|o| o.chunk_digest == e.chunk_digest)
                .count()
                == 1
        })
        .expect("a victim file")
        .clone();
    let next = toc
        .entries
        .iter()
        .map(|e| e.offset)
        .filter(|&o| o > victim.offset)
        .min()
        .unwrap_or(toc_off as i64);
    let mut blob = fs::read(&path).unwrap();
    let at = (victim.offset + (next - victim.offset) / 2) as usize;
    blob[at] ^= 0x55;
    fs::write(&path, &blob).unwrap();

    let err = fs::read(img.join("rootfs").join(&*victim.name)).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EIO),
        "{}: {err}",
        victim.name
    );
    // Again (nothing was cached), and other files of the same layer still read.
    assert!(fs::read(img.join("rootfs").join(&*victim.name)).is_err());
    let sane = fs::read(img.join("rootfs/etc/debian_version")).unwrap();
    assert!(!sane.is_empty());
    assert!(
        m.log().contains(&*victim.chunk_digest),
        "the log names the bad chunk {}:\n{}",
        victim.chunk_digest,
        m.log()
    );
    let hex = victim.chunk_digest.strip_prefix("sha256:").unwrap();
    assert!(
        !m.cache_dir().join("chunks/sha256").join(hex).exists(),
        "a bad chunk was cached"
    );
}

/// Copy the eStargz layout with layer `i`'s `toc.digest` annotation replaced.
fn layout_with_wrong_toc_digest(dir: &Path, i: usize) {
    let src = layout_for("python-3.11-esgz");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success());
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let entries = index["manifests"].as_array_mut().unwrap();
    let entry = entries
        .iter_mut()
        .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == "python-3.11-esgz")
        .unwrap();
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let mut man: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(entry["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    man["layers"][i]["annotations"][estargz::TOC_DIGEST_ANNOTATION] =
        format!("sha256:{}", "0".repeat(64)).into();
    let bytes = serde_json::to_vec(&man).unwrap();
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes))
    );
    fs::write(blob(&digest), &bytes).unwrap();
    entry["digest"] = digest.into();
    entry["size"] = bytes.len().into();
    entry["annotations"]["org.opencontainers.image.ref.name"] = "python-3.11-esgz-badtoc".into();
    entries.retain(|e| {
        e["annotations"]["org.opencontainers.image.ref.name"] == "python-3.11-esgz-badtoc"
    });
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn a_toc_that_does_not_match_its_annotation_is_never_served() {
    require_fuse!();
    let tmp = harness::tempdir("badtoc");
    let layout = tmp.path().join("layout");
    // Layer 3 (index 2) is small: whole-layer mode is cheap.
    layout_with_wrong_toc_digest(&layout, 2);
    let reg = Registry::start(RegistryKind::Plain);
    let out = Command::new("skopeo")
        .args([
            "copy",
            "-q",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:python-3.11-esgz-badtoc", layout.display()))
        .arg(format!("docker://{}/lab/python:badtoc", reg.host_port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab/python:badtoc");
    let (l3, _) = layers(&img)[2].clone();
    // Served whole instead: the file from that layer is right, the blob was
    // fetched in full (and verified), and the TOC was rejected loudly.
    let layer_dir = img.join("layers").join(format!("3-{l3}"));
    let text = fs::read_to_string(layer_dir.join("usr/local/share/lab.txt")).unwrap();
    let expected = umoci_snapshot("python-3.11");
    let want = &expected[Path::new("/usr/local/share/lab.txt")];
    assert_eq!(want.size, Some(text.len() as u64));
    let (_, _, whole) = reg.blob_traffic(&l3);
    assert_eq!(
        whole, 1,
        "the layer with the bad annotation was not fetched whole"
    );
    assert!(m.log().contains("TOC rejected"), "{}", m.log());
    // The rootfs (other layers lazy) still matches the oracle.
    let actual = snapshot(&img.join("rootfs"));
    let mut expected = (*expected).clone();
    // Whole-layer mode shows what the tar holds: the TOC and the landmark file.
    for extra in [
        "/stargz.index.json",
        "/.no.prefetch.landmark",
        "/.prefetch.landmark",
    ] {
        if let Some(e) = actual.get(Path::new(extra)) {
            expected.insert(PathBuf::from(extra), e.clone());
        }
    }
    assert_same_tree(&expected, &actual);
}

#[test]
fn a_corrupted_toc_is_never_served() {
    require_fuse!();
    let reg = esgz_registry();
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab").join(ESGZ);
    // Layer 4 is small; flip a byte inside its TOC member in the registry storage.
    let (l4, _) = layers(&img)[3].clone();
    let path = reg.blob_path(&l4);
    let mut blob = fs::read(&path).unwrap();
    let (toc_off, _) = estargz::parse_footer(&blob).unwrap();
    let at = toc_off as usize + (blob.len() - 51 - toc_off as usize) / 2;
    blob[at] ^= 0x55;
    fs::write(&path, &blob).unwrap();
    // The TOC fails verification; the whole layer then fails its blob digest: EIO.
    let dir = img.join("layers").join(format!("4-{l4}"));
    let err = list_dir(&dir).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(m.log().contains("TOC rejected"), "{}", m.log());
    // The other layers are unaffected.
    let l1 = &layers(&img)[0].0;
    assert!(fs::read(
        img.join("layers")
            .join(format!("1-{l1}"))
            .join("etc/debian_version")
    )
    .is_ok());
}

#[test]
fn background_fetch_fills_the_chunk_cache_without_blocking_reads() {
    require_fuse!();
    let reg = esgz_registry();
    let m = Mount::new(&reg, &["--background-fetch", "--background-bandwidth", "0"]);
    let img = m.path().join("lab").join(ESGZ);
    let layers = layers(&img);
    // Loading the rootfs schedules every layer; a foreground read meanwhile works.
    let want = fs::read(umoci_unpack("python-3.11").join("etc/debian_version")).unwrap();
    assert_eq!(
        fs::read(img.join("rootfs/etc/debian_version")).unwrap(),
        want
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while m.log().matches("background fetch done").count() < layers.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "background fetch did not finish:\n{}",
            m.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Everything is local now: reading a sample of files fetches nothing more.
    let before: Vec<usize> = layers.iter().map(|(d, _)| reg.blob_traffic(d).0).collect();
    for (d, size) in &layers {
        let (_, bytes, whole) = reg.blob_traffic(d);
        assert_eq!(whole, 0, "{d} fetched whole");
        // The TOC's request asks for a guessed tail of the blob, whose part
        // before the TOC the background fetch asks for again.
        let tail = estargz::tail_fetch_size(*size);
        assert!(
            bytes <= size + tail + 4096,
            "{d}: {bytes} bytes for a {size}-byte blob"
        );
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("find usr/lib/python3.11 -name '*.py' | head -200 | xargs cat | wc -c")
        .current_dir(img.join("rootfs"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let after: Vec<usize> = layers.iter().map(|(d, _)| reg.blob_traffic(d).0).collect();
    assert_eq!(
        before, after,
        "reads after the background fetch went to the network"
    );
}

/// skopeo (containers/storage) writes the zero runs of binaries in a
/// zstd:chunked layer as holes, `"zeros"` chunks with no data: such a layer is
/// still served lazily, holes included, and equals the gzip image's unpack.
#[test]
fn skopeo_zstd_chunked_with_holes_is_served_lazily() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push_with(
        "busybox",
        "lab/busybox:zstd-chunked",
        &["--dest-compress", "--dest-compress-format", "zstd:chunked"],
    );
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab/busybox:zstd-chunked");
    // The layer's TOC has holes, or this test would prove nothing.
    let layer = &manifest(&img)["layers"][0];
    let position = layer["annotations"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.ends_with("zstd-chunked.manifest-position"))
        .map(|(_, v)| v.as_str().unwrap().to_string())
        .expect("a zstd:chunked TOC position annotation");
    let mut pos = position.split(':').map(|n| n.parse::<usize>().unwrap());
    let (off, len) = (pos.next().unwrap(), pos.next().unwrap());
    let digest = layer["digest"].as_str().unwrap();
    let blob = fs::read(reg.blob_path(digest)).unwrap();
    let toc = zstd::decode_all(&blob[off..off + len]).unwrap();
    let toc = String::from_utf8(toc).unwrap();
    assert!(toc.contains(r#""chunkType":"zeros""#), "no hole in the TOC");

    assert_same_tree(&umoci_snapshot("busybox"), &snapshot(&img.join("rootfs")));
    let (_, _, whole) = reg.blob_traffic(digest);
    assert_eq!(whole, 0, "the layer was fetched whole:\n{}", m.log());
    assert!(m.log().contains("fetched and verified TOC"), "{}", m.log());
}

/// An exec through an overlay of the layer directories (what a runtime or a
/// `chroot` does): the kernel's exec open reaches regfs through overlayfs
/// with `__FMODE_EXEC`, and regfs fetches the program's loader and
/// libraries side by side; python runs. A plain read of the same program
/// through another mount warms nothing.
#[test]
fn an_exec_through_an_overlay_of_layer_dirs_warms_its_loader_and_libraries() {
    require_fuse!();
    let reg = esgz_registry();
    let m = Mount::new(&reg, &[]);
    let img = m.path().join("lab").join(ESGZ);
    let dirs: Vec<PathBuf> = layers(&img)
        .iter()
        .enumerate()
        .map(|(i, (d, _))| img.join(format!("layers/{}-{d}", i + 1)))
        .collect();
    // overlayfs: top layer first, `:` escaped.
    let lower: Vec<String> = dirs
        .iter()
        .rev()
        .map(|d| d.to_str().unwrap().replace(':', "\\:"))
        .collect();
    let merged = tempfile::tempdir().unwrap();
    let ok = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", lower.join(":")))
        .arg(merged.path())
        .status()
        .unwrap()
        .success();
    assert!(ok, "overlay mount of the layer directories");
    let out = Command::new("chroot")
        .arg(merged.path())
        .args(["python3", "-c", "print(1)"])
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(merged.path()).status();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = m.log();
    let warmed = log
        .lines()
        .find(|l| l.contains("warmed what an exec reads") && l.contains("python3"))
        .unwrap_or_else(|| panic!("the exec of python3 warmed nothing:\n{log}"));
    assert!(
        warmed.contains("ld-linux") && warmed.contains("libc.so.6") && warmed.contains("libm"),
        "{warmed}"
    );

    // A plain read of the program (no exec) through a fresh mount.
    let m2 = Mount::new(&reg, &[]);
    let img2 = m2.path().join("lab").join(ESGZ);
    let program = (1..=dirs.len())
        .rev()
        .map(|i| {
            img2.join(format!(
                "layers/{i}-{}/usr/bin/python3.11",
                layers(&img2)[i - 1].0
            ))
        })
        .find(|p| p.exists())
        .expect("a layer holds usr/bin/python3.11");
    assert!(fs::read(&program).unwrap().starts_with(b"\x7fELF"));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        !m2.log().contains("warmed what an exec reads"),
        "a plain read warmed: {}",
        m2.log()
    );
}
