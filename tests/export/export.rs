//! Issue 5: the writable export directory. Real registry, real FUSE mounts:
//! stage a tree, commit, pull it back with skopeo + umoci and compare; --from
//! with whiteouts and cross-repository mounts; determinism; faults; POSIX.

use crate::harness;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::export::{layer_of, pull_unpack, ExportMount};
use harness::{
    assert_same_tree, lab, run, snapshot, umoci_unpack, EntryInfo, Registry, RegistryKind,
};

type Snap = BTreeMap<PathBuf, EntryInfo>;

/// The image root's own metadata is not part of a layer: compare the rest.
fn without_root(mut s: Snap) -> Snap {
    s.remove(Path::new("/"));
    s
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// GET a manifest accepting OCI (the registry hides OCI manifests otherwise).
fn oci_manifest(reg: &Registry, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(reg.url(path))
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = s.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn cp_a(src: &Path, dst: &Path) {
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(dst));
}

/// Extras the lab images lack: hard links, xattrs, a fifo, long and odd names.
fn add_extras(root: &Path) {
    let x = root.join("extras");
    fs::create_dir(&x).unwrap();
    fs::write(x.join("data"), b"shared bytes\n").unwrap();
    fs::hard_link(x.join("data"), x.join("data-link")).unwrap();
    fs::hard_link(x.join("data"), root.join("top-link")).unwrap();
    let c = std::ffi::CString::new(x.join("data").to_str().unwrap()).unwrap();
    // (No empty xattr values: a PAX record with an empty value means "unset".)
    for (k, v) in [
        ("user.regfs.test", &b"value"[..]),
        ("user.second", &b"2"[..]),
    ] {
        let k = std::ffi::CString::new(k).unwrap();
        // SAFETY: valid C strings and buffer.
        assert_eq!(
            unsafe { libc::setxattr(c.as_ptr(), k.as_ptr(), v.as_ptr().cast(), v.len(), 0) },
            0
        );
    }
    nix::unistd::mkfifo(
        &x.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    let deep = x.join("d".repeat(90)).join("e".repeat(90));
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f".repeat(120)), b"long").unwrap();
    std::os::unix::fs::symlink("../".repeat(3) + &"t".repeat(150), x.join("long-link")).unwrap();
    for odd in [
        "with space",
        "ünïcødé",
        "tab\there",
        "quote'\"",
        "-dash",
        "#hash",
    ] {
        fs::write(x.join(odd), odd.as_bytes()).unwrap();
    }
    fs::set_permissions(x.join("-dash"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::lchown(x.join("#hash"), Some(1234), Some(5678)).unwrap();
}

#[test]
fn round_trip_python_tree() {
    require_fuse!();
    let reg = lab().image("python");
    let em = ExportMount::new(reg, &[]);
    let entry = em.entry("rt/python:staged");
    fs::create_dir(em.dir().join("rt")).unwrap();
    fs::create_dir(&entry).unwrap();
    cp_a(&umoci_unpack("python-3.11"), &entry);
    add_extras(&entry);
    let staged = without_root(snapshot(&entry));
    assert!(staged.len() > 1000, "staged only {} entries", staged.len());
    let out = em.commit("rt/python:staged");
    assert!(out.contains("pushed rt/python:staged sha256:"), "{out}");

    let (_keep, rootfs) = pull_unpack(reg, "rt/python:staged");
    assert_same_tree(&staged, &without_root(snapshot(&rootfs)));

    // The same daemon's read-only mount shows the new tag (tag TTL 1 s).
    let ro = em.mount.path().join("rt/python:staged/rootfs");
    std::thread::sleep(Duration::from_millis(1100));
    assert_same_tree(&staged, &without_root(snapshot(&ro)));

    let out = Command::new("chroot")
        .arg(&rootfs)
        .args(["/usr/bin/python3", "-c", "import json; print('ok')"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chroot python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn from_base_whiteouts_opaque_and_mounted_layers() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("wh/app:1");
    fs::create_dir(em.dir().join("wh")).unwrap();
    let out = em.regfs(&[
        "export",
        "new",
        e.to_str().unwrap(),
        "--from",
        "lab/busybox:latest",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The base is visible, read lazily.
    assert!(e.join("bin/busybox").is_file());
    // Delete a file, replace a directory, copy a file up by modifying it.
    fs::remove_file(e.join("bin/ls")).unwrap();
    fs::remove_dir_all(e.join("etc")).unwrap();
    fs::create_dir(e.join("etc")).unwrap();
    fs::write(e.join("etc/hostname"), b"regfs\n").unwrap();
    fs::set_permissions(e.join("bin/busybox"), fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(
        errno_of(fs::symlink_metadata(e.join("bin/ls"))),
        libc::ENOENT
    );
    let staged = without_root(snapshot(&e));

    em.commit("wh/app:1");
    let (_keep, rootfs) = pull_unpack(&reg, "wh/app:1");
    assert_same_tree(&staged, &without_root(snapshot(&rootfs)));

    // The new layer holds the whiteout and the opaque marker.
    let m = em.mount.path().join("wh/app:1");
    std::thread::sleep(Duration::from_millis(1100));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(m.join("manifest.json")).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let top = layers.last().unwrap()["digest"].as_str().unwrap();
    let listing = run(Command::new("tar")
        .arg("tzf")
        .arg(m.join("blobs").join(top)));
    assert!(listing.lines().any(|l| l == "bin/.wh.ls"), "{listing}");
    assert!(
        listing.lines().any(|l| l == "etc/.wh..wh..opq"),
        "{listing}"
    );
    assert!(
        listing.lines().any(|l| l == "bin/busybox"),
        "copied up: {listing}"
    );

    // Base layers were mounted, not uploaded: only the new layer and the config were.
    let reqs: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.uri.starts_with("/v2/wh/app/blobs/uploads/"))
        .collect();
    let mounts = reqs
        .iter()
        .filter(|r| r.method == "POST" && r.uri.contains("mount="))
        .count();
    let puts = reqs.iter().filter(|r| r.method == "PUT").count();
    assert_eq!(mounts, layers.len() - 1, "{reqs:?}");
    assert_eq!(puts, 2, "layer + config only: {reqs:?}");
    assert!(!reqs.iter().any(|r| r.method == "PATCH"), "{reqs:?}");
}

#[test]
fn same_tree_same_layer_digest_and_empty_tree() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let a = em.entry("det:a");
    fs::create_dir(&a).unwrap();
    cp_a(&umoci_unpack("busybox"), &a);
    add_extras(&a);
    let first = layer_of(&em.commit("det:a"));
    let again = layer_of(&em.commit("det:a"));
    assert_eq!(first, again);
    let b = em.entry("det:b");
    fs::create_dir(&b).unwrap();
    cp_a(&a, &b);
    assert_eq!(first, layer_of(&em.commit("det:b")));
    // Re-commits of an unchanged tree reuse the layer without packing, once its
    // last change is old enough not to share a ctime with a later one.
    let reused = |em: &ExportMount| em.mount.log().matches("its layer is reused").count();
    assert_eq!(reused(&em), 0, "changed seconds ago: packed again");
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(first, layer_of(&em.commit("det:a")));
    assert_eq!(first, layer_of(&em.commit("det:a")));
    assert_eq!(reused(&em), 1);
    // A metadata change (ctime) packs again: same bytes, same digest.
    let data = a.join("extras/data");
    let mode = fs::metadata(&data).unwrap().permissions();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&data, mode).unwrap();
    assert_eq!(first, layer_of(&em.commit("det:a")));
    assert_eq!(reused(&em), 1);

    // An empty tree is a valid image.
    fs::create_dir(em.entry("empty:1")).unwrap();
    em.commit("empty:1");
    let (_keep, rootfs) = pull_unpack(&reg, "empty:1");
    assert!(without_root(snapshot(&rootfs)).is_empty());
    // The filesystem trigger commits too, and reports failures as write errors.
    fs::write(em.dir().join(".regfs-control"), "commit det:a\n").unwrap();
    assert_eq!(
        errno_of(fs::write(
            em.dir().join(".regfs-control"),
            "commit nope:1\n"
        )),
        libc::ENOENT
    );
    let status = em.regfs(&["status", em.dir().to_str().unwrap()]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("det:a") && status.contains("empty:1"),
        "{status}"
    );
}

#[test]
fn registry_stopped_then_back() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &["--retries", "1", "--timeout", "5"]);
    let e = em.entry("fault:1");
    fs::create_dir(&e).unwrap();
    fs::write(e.join("file"), vec![7u8; 3 << 20]).unwrap();
    reg.stop();
    let out = em.regfs(&["commit", "-q", e.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network") || err.contains("connect"),
        "unclear error: {err}"
    );
    assert_eq!(
        fs::read(e.join("file")).unwrap().len(),
        3 << 20,
        "staging intact"
    );
    reg.restart();
    em.commit("fault:1");
}

#[test]
fn daemon_killed_mid_upload_then_commit_again() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let mut em = ExportMount::new(&reg, &["--compression", "none"]);
    let e = em.entry("kill:1");
    fs::create_dir(&e).unwrap();
    let mut data = vec![0u8; 96 << 20];
    let mut seed = 0x2545F4914F6CDD1Du64;
    for chunk in data.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    {
        let mut f = fs::File::create(e.join("big")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let bin = harness::regfs_bin();
    let mut child = Command::new(&bin)
        .args(["commit", "-q", e.to_str().unwrap()])
        .spawn()
        .unwrap();
    // Wait for the first PATCH of the chunked upload, then kill the daemon.
    let mut patched = false;
    for _ in 0..600 {
        if reg
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.uri.starts_with("/v2/kill/"))
        {
            patched = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(patched, "no PATCH seen\n{}", em.mount.log());
    em.kill9();
    assert!(!child.wait().unwrap().success());
    let (code, _) = oci_manifest(&reg, "/v2/kill/manifests/1");
    assert_eq!(code, 404, "the tag must not exist before its blobs");
    em.remount();
    assert_eq!(
        fs::read(e.join("big")).unwrap(),
        data,
        "staging survived kill -9"
    );
    em.commit("kill:1");
    // Every blob the tag names is there.
    let (code, body) = oci_manifest(&reg, "/v2/kill/manifests/1");
    assert_eq!(code, 200);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    for d in m["layers"].as_array().unwrap().iter().chain([&m["config"]]) {
        let (c, _) = reg.get(&format!("/v2/kill/blobs/{}", d["digest"].as_str().unwrap()));
        assert_eq!(c, 200);
    }
}

#[test]
fn posix_operations_and_errors() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let mut em = ExportMount::new(&reg, &[]);
    let e = em.entry("posix:1");
    fs::create_dir(&e).unwrap();
    // Entry names are references.
    assert_eq!(
        errno_of(fs::create_dir(em.dir().join("Bad:Name"))),
        libc::EINVAL
    );
    assert_eq!(
        errno_of(fs::create_dir(em.dir().join("x@sha256:00"))),
        libc::EINVAL
    );
    assert_eq!(errno_of(fs::create_dir(&e)), libc::EEXIST);
    assert_eq!(errno_of(fs::write(em.dir().join("file"), b"")), libc::EPERM);
    fs::create_dir(em.entry("posix:2")).unwrap();

    // create, write, read, truncate, fsync
    let f = e.join("f");
    {
        let mut h = fs::File::create(&f).unwrap();
        h.write_all(b"hello world").unwrap();
        h.sync_all().unwrap();
    }
    assert_eq!(fs::read(&f).unwrap(), b"hello world");
    fs::OpenOptions::new()
        .write(true)
        .open(&f)
        .unwrap()
        .set_len(5)
        .unwrap();
    assert_eq!(fs::read(&f).unwrap(), b"hello");
    let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
    h.write_all(b"!").unwrap();
    drop(h);
    assert_eq!(fs::read(&f).unwrap(), b"hello!");
    assert_eq!(
        errno_of(fs::OpenOptions::new().write(true).create_new(true).open(&f)),
        libc::EEXIST
    );
    assert_eq!(errno_of(fs::File::create(e.join(".wh.x"))), libc::EINVAL);
    // mkdir, rmdir
    fs::create_dir(e.join("d")).unwrap();
    assert_eq!(errno_of(fs::create_dir(e.join("d"))), libc::EEXIST);
    fs::write(e.join("d/inner"), b"1").unwrap();
    assert_eq!(errno_of(fs::remove_dir(e.join("d"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::remove_dir(&f)), libc::ENOTDIR);
    assert_eq!(errno_of(fs::remove_file(e.join("d"))), libc::EISDIR);
    assert_eq!(errno_of(fs::remove_file(e.join("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::write(e.join("missing/x"), b"")), libc::ENOENT);
    assert_eq!(errno_of(fs::write(f.join("x"), b"")), libc::ENOTDIR);
    // rename: across directories, replacing, errors
    fs::write(e.join("g"), b"g").unwrap();
    fs::rename(e.join("g"), e.join("d/inner")).unwrap();
    assert_eq!(fs::read(e.join("d/inner")).unwrap(), b"g");
    assert!(!e.join("g").exists());
    fs::create_dir(e.join("d2")).unwrap();
    fs::rename(e.join("d"), e.join("d2")).unwrap();
    assert_eq!(fs::read(e.join("d2/inner")).unwrap(), b"g");
    fs::create_dir(e.join("full")).unwrap();
    fs::write(e.join("full/x"), b"").unwrap();
    fs::create_dir(e.join("empty")).unwrap();
    assert_eq!(
        errno_of(fs::rename(e.join("empty"), e.join("full"))),
        libc::ENOTEMPTY
    );
    assert_eq!(errno_of(fs::rename(e.join("empty"), &f)), libc::ENOTDIR);
    assert_eq!(errno_of(fs::rename(&f, e.join("empty"))), libc::EISDIR);
    assert_eq!(
        errno_of(fs::rename(&f, em.entry("posix:2").join("f"))),
        libc::EXDEV
    );
    assert_eq!(
        errno_of(fs::hard_link(&f, em.entry("posix:2").join("f"))),
        libc::EXDEV
    );
    // symlink, link
    std::os::unix::fs::symlink("f", e.join("s")).unwrap();
    assert_eq!(fs::read_link(e.join("s")).unwrap(), Path::new("f"));
    assert_eq!(fs::read(e.join("s")).unwrap(), b"hello!");
    fs::hard_link(&f, e.join("h")).unwrap();
    let (m1, m2) = (
        fs::metadata(&f).unwrap(),
        fs::metadata(e.join("h")).unwrap(),
    );
    assert_eq!((m1.nlink(), m1.ino()), (2, m2.ino()));
    assert_eq!(errno_of(fs::hard_link(&f, e.join("h"))), libc::EEXIST);
    // chmod, chown, utimens
    fs::set_permissions(&f, fs::Permissions::from_mode(0o4711)).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o7777, 0o4711);
    std::os::unix::fs::chown(&f, Some(1000), Some(2000)).unwrap();
    let md = fs::metadata(&f).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 2000));
    let t = nix::sys::time::TimeSpec::new(1_000_000, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        &f,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mtime(), 1_000_000);
    // xattrs
    let xf = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    let name = std::ffi::CString::new("user.k").unwrap();
    // SAFETY: valid C strings and buffers below.
    unsafe {
        assert_eq!(
            libc::setxattr(xf.as_ptr(), name.as_ptr(), b"v".as_ptr().cast(), 1, 0),
            0
        );
        let mut buf = [0u8; 16];
        assert_eq!(
            libc::getxattr(xf.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16),
            1
        );
        assert_eq!(libc::listxattr(xf.as_ptr(), buf.as_mut_ptr().cast(), 16), 7);
        assert_eq!(libc::removexattr(xf.as_ptr(), name.as_ptr()), 0);
        assert_eq!(
            libc::getxattr(xf.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 16),
            -1
        );
    }
    // mknod: fifo, and a device as root
    nix::unistd::mkfifo(
        &e.join("p"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    nix::sys::stat::mknod(
        &e.join("null"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    assert_eq!(
        fs::symlink_metadata(e.join("null")).unwrap().rdev(),
        libc::makedev(1, 3)
    );
    // statfs
    assert!(nix::sys::statvfs::statvfs(&e).unwrap().blocks() > 0);
    // Everything listed, sorted, no whiteouts.
    let mut names: Vec<_> = fs::read_dir(&e)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["d2", "empty", "f", "full", "h", "null", "p", "s"]);
    // Durable across kill -9.
    let before = snapshot(&e);
    em.kill9();
    em.remount();
    assert_same_tree(&before, &snapshot(&e));
    // rmdir of an entry that is empty removes it.
    fs::remove_dir(em.entry("posix:2")).unwrap();
    assert!(!em.entry("posix:2").exists());
}

#[test]
fn from_base_posix_view() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("busybox", "lab/busybox:latest");
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("ov:1");
    let out = em.regfs(&[
        "export",
        "new",
        e.to_str().unwrap(),
        "--from",
        "lab/busybox:latest",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // rmdir of a non-empty base dir; rename of a merged base dir (mv copies then).
    assert_eq!(errno_of(fs::remove_dir(e.join("bin"))), libc::ENOTEMPTY);
    assert_eq!(
        errno_of(fs::rename(e.join("etc"), e.join("etc2"))),
        libc::EXDEV
    );
    run(Command::new("mv").arg(e.join("etc")).arg(e.join("etc2")));
    assert!(!e.join("etc").exists() && e.join("etc2/passwd").is_file());
    // Copy-up keeps the base's bytes; a new dir where a base dir was is opaque.
    let mut orig = Vec::new();
    fs::File::open(e.join("etc2/passwd"))
        .unwrap()
        .read_to_end(&mut orig)
        .unwrap();
    let mut h = fs::OpenOptions::new()
        .append(true)
        .open(e.join("etc2/passwd"))
        .unwrap();
    h.write_all(b"extra:x:1:1::/:/bin/sh\n").unwrap();
    drop(h);
    assert!(fs::read(e.join("etc2/passwd")).unwrap().starts_with(&orig));
    fs::create_dir(e.join("etc")).unwrap();
    assert_eq!(fs::read_dir(e.join("etc")).unwrap().count(), 0);
    let staged = without_root(snapshot(&e));
    em.commit("ov:1");
    let (_keep, rootfs) = pull_unpack(&reg, "ov:1");
    assert_same_tree(&staged, &without_root(snapshot(&rootfs)));
}

/// `--compression estargz`: the pushed layer carries the TOC annotations, a
/// fresh regfs mount serves it lazily (footer + TOC Range GETs for `ls -lR`)
/// and its rootfs equals the staged tree, and skopeo + umoci unpack it too
/// (as a plain gzip tar: they also show the TOC file `stargz.index.json`).
#[test]
fn estargz_commit_is_lazy_and_round_trips() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("esgz:1");
    fs::create_dir(&e).unwrap();
    cp_a(&umoci_unpack("busybox"), &e);
    add_extras(&e);
    // A file of three chunks (4 MiB each at most), incompressible.
    let mut big = vec![0u8; (9 << 20) + 4321];
    let mut seed = 0x9E3779B97F4A7C15u64;
    for c in big.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        c.copy_from_slice(&seed.to_le_bytes()[..c.len()]);
    }
    fs::write(e.join("extras/big"), &big).unwrap();
    let staged = without_root(snapshot(&e));
    let out = em.regfs(&[
        "commit",
        "-q",
        "--compression",
        "estargz",
        e.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        em.mount.log()
    );
    let layer = layer_of(&String::from_utf8_lossy(&out.stdout));

    let (code, body) = oci_manifest(&reg, "/v2/esgz/manifests/1");
    assert_eq!(code, 200);
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    let desc = m["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(desc["digest"], layer.as_str());
    assert_eq!(
        desc["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let ann = &desc["annotations"];
    assert!(
        ann["containerd.io/snapshot/stargz/toc.digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{desc}"
    );
    let usize_: u64 = ann["io.containers.estargz.uncompressed-size"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(usize_ > big.len() as u64, "{desc}");
    let size = desc["size"].as_u64().unwrap();

    // A fresh read-only mount: ls -lR fetches the footer and the TOC only.
    let ro = harness::Mount::new(&reg, &[]);
    let rootfs = ro.path().join("esgz:1/rootfs");
    let ls = Command::new("ls").arg("-lR").arg(&rootfs).output().unwrap();
    assert!(ls.status.success());
    let (n, bytes, whole) = reg.blob_traffic(&layer);
    // Footer and TOC in one Range GET when the TOC fits the guessed tail, else two.
    assert!(
        (1..=2).contains(&n) && whole == 0,
        "ls -lR: expected footer + TOC Range GETs only, got {n} ({whole} whole)"
    );
    assert!(bytes < size / 4, "ls -lR fetched {bytes} of {size} bytes");
    assert!(
        ro.log().contains("fetched and verified TOC"),
        "lazy mode not used:\n{}",
        ro.log()
    );
    // Reading everything fetches chunks by Range, never the whole blob.
    assert_same_tree(&staged, &without_root(snapshot(&rootfs)));
    let (n, _, whole) = reg.blob_traffic(&layer);
    assert!(n > 1 && whole == 0, "chunk reads: {n} GETs, {whole} whole");

    // skopeo + umoci: the same tree plus the TOC file at the top.
    let (_keep, unpacked) = pull_unpack(&reg, "esgz:1");
    let mut pulled = without_root(snapshot(&unpacked));
    assert!(
        pulled.remove(Path::new("/stargz.index.json")).is_some(),
        "umoci shows the TOC entry"
    );
    assert_same_tree(&staged, &pulled);
}

/// The export filesystem's inode table follows the kernel's references:
/// inodes the kernel evicts (and forgets) leave it, so stat-ing a big tree
/// does not grow the daemon for good.
#[test]
fn forgotten_inodes_leave_the_table() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("forget:1");
    fs::create_dir(&e).unwrap();
    for d in 0..20 {
        let dir = e.join(format!("d{d}"));
        fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let inodes = || -> usize {
        let s = fs::read_to_string(em.dir().join(".regfs-control")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("inodes "))
            .unwrap_or_else(|| panic!("no inode count: {s}"))
            .parse()
            .unwrap()
    };
    assert_eq!(without_root(snapshot(&e)).len(), 20 * 101);
    let before = inodes();
    assert!(before > 2000, "{before}");
    // Evict unused dentries and inodes: the kernel sends FORGETs.
    let mut after = before;
    for _ in 0..50 {
        nix::unistd::sync();
        fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        after = inodes();
        if after < 100 {
            break;
        }
    }
    assert!(
        after < 100,
        "{before} inodes before, {after} after eviction"
    );
    // Everything is still there, with the same content.
    assert_eq!(fs::read(e.join("d7/f42")).unwrap(), b"x");
    assert_eq!(without_root(snapshot(&e)).len(), 20 * 101);
}
