//! Issue 3: unpacked layers and the merged rootfs, compared with `umoci unpack`
//! of the same image, run with chroot, and checked with overlayfs.

use crate::harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use harness::{assert_same_tree, lab, snapshot, umoci_unpack, Mount};

fn compare_rootfs(m: &Mount, image: &str, layout_tag: &str) {
    let expected = snapshot(&umoci_unpack(layout_tag));
    let actual = snapshot(&m.path().join("lab").join(image).join("rootfs"));
    assert!(expected.len() > 200, "oracle too small: {}", expected.len());
    assert_same_tree(&expected, &actual);
}

#[test]
fn busybox_rootfs_matches_umoci() {
    require_fuse!();
    let reg = lab().image("busybox");
    let m = Mount::new(reg, &[]);
    compare_rootfs(&m, "busybox:latest", "busybox");
    compare_rootfs(&m, "busybox:v2s2", "busybox");
}

#[test]
fn python_rootfs_matches_umoci_in_every_media_type() {
    require_fuse!();
    let reg = lab().image("python");
    let m = Mount::new(reg, &[]);
    // OCI gzip, Docker schema 2 gzip, and OCI zstd (umoci has no zstd: its gzip twin is the oracle).
    for image in ["python:3.11", "python:3.11-v2s2", "python:3.11-zstd"] {
        compare_rootfs(&m, image, "python-3.11");
    }
}

#[test]
fn debian_rootfs_matches_umoci() {
    require_fuse!();
    let reg = lab().image("debian");
    let m = Mount::new(reg, &[]);
    compare_rootfs(&m, "debian:bookworm", "debian-bookworm");
}

#[test]
fn whiteouts_opaque_dirs_and_links_in_rootfs() {
    require_fuse!();
    let reg = lab().image("python:3.11");
    let m = Mount::new(reg, &[]);
    let out = Command::new("bash")
        .arg(harness::lab_dir().join("check-rootfs.sh"))
        .arg(m.path().join("lab/python:3.11/rootfs"))
        .arg("python")
        .env(
            "EXPECT_ENTRIES",
            count_entries(&umoci_unpack("python-3.11")).to_string(),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check-rootfs.sh failed:\n{text}");
    assert!(text.contains(" 0 failed"), "{text}");
}

fn count_entries(root: &Path) -> usize {
    snapshot(root).len() - 1
}

/// `mount -t overlay` over `layers/*` (top first) gives the same tree as `rootfs/`.
#[test]
fn overlayfs_over_layers_equals_rootfs() {
    require_fuse!();
    let reg = lab().image("python:3.11");
    let m = Mount::new(reg, &[]);
    let img = m.path().join("lab/python:3.11");
    let mut layers: Vec<PathBuf> = fs::read_dir(img.join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    layers.sort_by_key(|p| {
        let n = p.file_name().unwrap().to_string_lossy().into_owned();
        n.split('-').next().unwrap().parse::<u32>().unwrap()
    });
    assert_eq!(layers.len(), 4);
    layers.reverse();
    let lower = layers
        .iter()
        // Layer directory names hold ':', overlayfs's separator: escape it.
        .map(|p| p.to_str().unwrap().replace(':', "\\:"))
        .collect::<Vec<_>>()
        .join(":");
    let target = harness::tempdir("overlay");
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={lower}"))
        .arg(target.path())
        .status()
        .unwrap();
    assert!(st.success(), "mount -t overlay failed");
    let result = std::panic::catch_unwind(|| {
        let mut expected = snapshot(&img.join("rootfs"));
        let mut actual = snapshot(target.path());
        // The overlay root takes its mode from the top layer's root; compare below it.
        expected.remove(Path::new("/"));
        actual.remove(Path::new("/"));
        assert_same_tree(&expected, &actual);
    });
    let _ = Command::new("umount").arg(target.path()).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn layer_view_shows_whiteouts_the_overlayfs_way() {
    require_fuse!();
    let reg = lab().image("python:3.11");
    let m = Mount::new(reg, &[]);
    let layers = m.path().join("lab/python:3.11/layers");
    let find = |n: &str| {
        fs::read_dir(&layers)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("{n}-"))
            })
            .unwrap()
    };
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wh = fs::symlink_metadata(find("3").join("usr/lib/python3.11/antigravity.py")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    let opq = find("4").join("opt/lab");
    let v = xattr(&opq, "trusted.overlay.opaque").expect("opaque xattr");
    assert_eq!(v, b"y");
    // Its `user.` twin (for rootless overlayfs) is not shown to root, so a
    // root-mounted overlay neither copies it up nor shows it
    // (tests/runtimes checks that other users see it).
    assert!(xattr(&opq, "user.overlay.opaque").is_none());
    assert!(!find("4").join("opt/lab/.wh..wh..opq").exists());
    // Nothing of the whiteout machinery shows in rootfs.
    let rootfs = m.path().join("lab/python:3.11/rootfs");
    assert!(fs::symlink_metadata(rootfs.join("usr/lib/python3.11/antigravity.py")).is_err());
    assert!(fs::symlink_metadata(rootfs.join("opt/lab/old")).is_err());
    assert!(xattr(&rootfs.join("opt/lab"), "trusted.overlay.opaque").is_none());
    assert!(xattr(&rootfs.join("opt/lab"), "user.overlay.opaque").is_none());
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let n =
        unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (n >= 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

#[test]
fn programs_run_from_the_mount() {
    require_fuse!();
    let reg = lab().image("busybox");
    lab().image("python:3.11");
    let m = Mount::new(reg, &[]);
    let out = Command::new("chroot")
        .arg(m.path().join("lab/busybox:latest/rootfs"))
        .args(["/bin/busybox", "echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{out:?}");
    let out = Command::new("chroot")
        .arg(m.path().join("lab/python:3.11/rootfs"))
        .args(["python3", "-c", "import json, sqlite3; print(1)"])
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n", "{out:?}");
}

/// `lgetxattr(path, name)`: the value, or the errno.
fn lgetxattr(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// A directory larger than one reply (`Fs::readdir_page` answers the
/// kernel's reads from their offset, with no open handle) lists
/// every entry once, in `ls -l` as in `read_dir`; and the xattr answers
/// `ls -l` depends on: a present xattr is served, an absent SELinux label or
/// ACL is "not supported" (so `ls` stops asking), any other absent name is
/// ENODATA.
#[test]
fn large_directories_list_whole_and_absent_xattrs_answer_as_ls_expects() {
    require_fuse!();
    use harness::export::ExportMount;
    let reg = harness::Registry::start(harness::RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let root = em.entry("many:1");
    let many = root.join("many");
    fs::create_dir_all(&many).unwrap();
    let names: Vec<String> = (0..2500).map(|i| format!("file-{i:05}")).collect();
    for n in &names {
        fs::write(many.join(n), n.as_bytes()).unwrap();
    }
    let noted = many.join(&names[7]);
    {
        use std::os::unix::ffi::OsStrExt;
        let p = std::ffi::CString::new(noted.as_os_str().as_bytes()).unwrap();
        let r = unsafe {
            libc::setxattr(
                p.as_ptr(),
                c"user.note".as_ptr(),
                b"hi".as_ptr().cast(),
                2,
                0,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    }
    em.commit("many:1");

    let dir = em.mount.path().join("many:1/rootfs/many");
    let mut listed: Vec<String> = harness::list_dir(&dir)
        .unwrap()
        .iter()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, names);
    let ls = Command::new("ls").arg("-l").arg(&dir).output().unwrap();
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    let lines = String::from_utf8_lossy(&ls.stdout)
        .lines()
        .filter(|l| l.starts_with('-'))
        .count();
    assert_eq!(lines, names.len());
    // Contents line up with names across the batches.
    for i in [0, 1023, 1024, 2047, 2048, 2499] {
        assert_eq!(fs::read(dir.join(&names[i])).unwrap(), names[i].as_bytes());
    }

    let file = dir.join(&names[7]);
    assert_eq!(lgetxattr(&file, "user.note"), Ok(b"hi".to_vec()));
    assert_eq!(lgetxattr(&file, "user.absent"), Err(libc::ENODATA));
    for name in [
        "security.selinux",
        "system.posix_acl_access",
        "system.posix_acl_default",
    ] {
        assert_eq!(lgetxattr(&file, name), Err(libc::EOPNOTSUPP), "{name}");
        assert_eq!(lgetxattr(&dir, name), Err(libc::EOPNOTSUPP), "{name}");
    }
}
