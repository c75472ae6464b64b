//! Issue 14, one test per behaviour a user hit on a staged export entry:
//! 255-byte names and paths near PATH_MAX (staged, committed, pulled back),
//! files unlinked while open, ctime, sockets, owners, fallocate, and the hard
//! links of a `--from` base.

use crate::harness;
use crate::posix_diff::{as_user, USER};

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use harness::export::ExportMount;
use harness::{run, tempdir, Registry, RegistryKind};

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn check(rc: i32, what: &str) {
    assert!(rc >= 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Every file name of the layer(s) of `reference`, as `tar -t` lists them.
fn layer_names(reg: &Registry, reference: &str) -> String {
    let d = tempdir("layer-names");
    let dir = d.path().join("img");
    run(Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}/{reference}", reg.host_port()))
        .arg(format!("dir:{}", dir.display())));
    let mut names = String::new();
    for e in fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let out = Command::new("tar").arg("-tzf").arg(&p).output().unwrap();
        if out.status.success() {
            names += &String::from_utf8_lossy(&out.stdout);
        }
    }
    names
}

#[test]
fn long_names_and_deep_paths() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("long:1");
    fs::create_dir(&e).unwrap();
    let n = |c: char| -> String { std::iter::repeat_n(c, 255).collect() };
    // NAME_MAX names, every operation.
    fs::write(e.join(n('f')), b"x").unwrap();
    fs::create_dir(e.join(n('d'))).unwrap();
    run(Command::new("mkfifo").arg(e.join(n('p'))));
    std::os::unix::fs::symlink(n('f'), e.join(n('s'))).unwrap();
    fs::hard_link(e.join(n('f')), e.join(n('h'))).unwrap();
    fs::rename(e.join(n('h')), e.join(n('r'))).unwrap();
    fs::set_permissions(e.join(n('f')), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(e.join(n('s')), Some(1), Some(1)).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(e.join(n('f')))
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(fs::read(e.join(n('r'))).unwrap(), b"x\0\0");
    fs::remove_file(e.join(n('r'))).unwrap();
    fs::create_dir(e.join(n('x'))).unwrap();
    fs::remove_dir(e.join(n('x'))).unwrap();
    let st = nix::sys::statvfs::statvfs(&e).unwrap();
    assert_eq!(st.name_max(), 255);
    // A 256-byte name is too long, as everywhere.
    assert_eq!(
        errno_of(fs::write(e.join(format!("{}g", n('g'))), b"")),
        libc::ENAMETOOLONG
    );

    // Paths near PATH_MAX below the entry (deeper still in staging): walk
    // down by descriptor, 15 directories of 255-byte names (3,840 bytes).
    let mut dir = OwnedFd::from(fs::File::open(&e).unwrap());
    let mut rel = String::new();
    for i in 0..15u8 {
        let name = n(char::from(b'A' + i));
        check(
            unsafe { libc::mkdirat(dir.as_raw_fd(), c(&name).as_ptr(), 0o755) },
            "mkdirat",
        );
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c(&name).as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        check(fd, "openat dir");
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
        rel += &name;
        rel.push('/');
    }
    assert!(rel.len() > 3800);
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c("deep.txt").as_ptr(),
            libc::O_CREAT | libc::O_RDWR | libc::O_CLOEXEC,
            0o644,
        )
    };
    check(fd, "create deep.txt");
    let mut f = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.write_all(b"deep").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "deep");
    drop(f);
    let rc = unsafe {
        libc::renameat(
            dir.as_raw_fd(),
            c("deep.txt").as_ptr(),
            dir.as_raw_fd(),
            c(&n('z')).as_ptr(),
        )
    };
    check(rc, "renameat");

    em.commit("long:1");
    let names = layer_names(&reg, "long:1");
    for want in [
        n('f'),
        n('d') + "/",
        n('p'),
        n('s'),
        format!("{rel}{}", n('z')),
    ] {
        assert!(
            names.lines().any(|l| l == want),
            "{}… not in the layer",
            &want[..20]
        );
    }
    assert!(!names.contains(&n('r')), "an unlinked name was packed");
}

#[test]
fn unlinked_while_open_keeps_working() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("open:1");
    fs::create_dir(&e).unwrap();
    fs::write(e.join("f"), b"hello").unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(e.join("f"))
        .unwrap();
    fs::remove_file(e.join("f")).unwrap();
    // A new file of the same name is another file.
    fs::write(e.join("f"), b"new").unwrap();
    f.seek(SeekFrom::End(0)).unwrap();
    f.write_all(b" world").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello world");
    let md = f.metadata().unwrap();
    assert_eq!((md.nlink(), md.len()), (0, 11));
    f.set_len(5).unwrap();
    f.set_permissions(fs::Permissions::from_mode(0o640))
        .unwrap();
    let md = f.metadata().unwrap();
    assert_eq!((md.len(), md.mode() & 0o7777), (5, 0o640));
    assert_eq!(fs::read(e.join("f")).unwrap(), b"new");
    drop(f);
    // Replaced by a rename while open: the old file stays readable.
    fs::write(e.join("g"), b"old g").unwrap();
    let mut g = fs::File::open(e.join("g")).unwrap();
    fs::write(e.join("h"), b"h").unwrap();
    fs::rename(e.join("h"), e.join("g")).unwrap();
    let mut s = String::new();
    g.read_to_string(&mut s).unwrap();
    assert_eq!(s, "old g");
    assert_eq!(g.metadata().unwrap().nlink(), 0);
    assert_eq!(fs::read(e.join("g")).unwrap(), b"h");
    drop(g);
    // Nothing of the unlinked files reaches the image.
    em.commit("open:1");
    let names = layer_names(&reg, "open:1");
    let mut got: Vec<&str> = names.lines().collect();
    got.sort();
    assert_eq!(got, ["f", "g"]);
}

fn ctime(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap();
    (md.ctime(), md.ctime_nsec())
}

/// `op` must move the ctime of `p` (read at once: no cache may hide it).
fn moves_ctime(p: &Path, what: &str, op: impl FnOnce()) {
    let before = ctime(p);
    std::thread::sleep(Duration::from_millis(20));
    op();
    assert!(
        ctime(p) > before,
        "{what} left the ctime of {} as it was",
        p.display()
    );
}

#[test]
fn ctime_follows_every_change() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("ctime:1");
    fs::create_dir(&e).unwrap();
    fs::write(e.join("file"), b"x").unwrap();
    run(Command::new("mkfifo").arg(e.join("fifo")));
    run(Command::new("mknod")
        .arg(e.join("dev"))
        .args(["c", "1", "3"]));
    for kind in ["file", "fifo", "dev"] {
        let p = e.join(kind);
        moves_ctime(&p, "chmod", || {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap()
        });
        moves_ctime(&p, "chown", || {
            std::os::unix::fs::lchown(&p, Some(1), Some(2)).unwrap()
        });
        let link = e.join(format!("{kind}-link"));
        moves_ctime(&p, "link", || fs::hard_link(&p, &link).unwrap());
        moves_ctime(&p, "unlink of the other name", || {
            fs::remove_file(&link).unwrap()
        });
        let moved = e.join(format!("{kind}-moved"));
        let before = ctime(&p);
        std::thread::sleep(Duration::from_millis(20));
        fs::rename(&p, &moved).unwrap();
        assert!(
            ctime(&moved) > before,
            "rename left the ctime of {kind} as it was"
        );
    }
}

#[test]
fn sockets_owners_and_fallocate() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &["--allow-other"]);
    let e = em.entry("misc:1");
    fs::create_dir(&e).unwrap();
    fs::set_permissions(&e, fs::Permissions::from_mode(0o777)).unwrap();

    // Sockets: bind(2) and mknod; a commit skips them with a log line.
    let l = std::os::unix::net::UnixListener::bind(e.join("sock")).unwrap();
    assert!(fs::symlink_metadata(e.join("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    drop(l);
    let rc = unsafe {
        libc::mknod(
            c(e.join("sock2").to_str().unwrap()).as_ptr(),
            libc::S_IFSOCK | 0o644,
            0,
        )
    };
    check(rc, "mknod S_IFSOCK");
    fs::write(e.join("kept"), b"k").unwrap();

    // Owners: the caller's uid and gid; under a setgid directory its gid.
    fs::create_dir(e.join("sg")).unwrap();
    std::os::unix::fs::chown(e.join("sg"), Some(0), Some(4321)).unwrap();
    fs::set_permissions(e.join("sg"), fs::Permissions::from_mode(0o2777)).unwrap();
    let ep = e.clone();
    as_user(move || {
        fs::write(ep.join("mine"), b"m").unwrap();
        run(Command::new("mkfifo").arg(ep.join("myfifo")));
        fs::write(ep.join("sg/f"), b"f").unwrap();
        fs::create_dir(ep.join("sg/d")).unwrap();
    });
    for (p, uid, gid) in [
        ("mine", USER.0, USER.1),
        ("myfifo", USER.0, USER.1),
        ("sg/f", USER.0, 4321),
        ("sg/d", USER.0, 4321),
    ] {
        let md = fs::symlink_metadata(e.join(p)).unwrap();
        assert_eq!((md.uid(), md.gid()), (uid, gid), "owner of {p}");
    }
    let d = fs::symlink_metadata(e.join("sg/d")).unwrap();
    assert_eq!(
        d.mode() & 0o2000,
        0o2000,
        "a directory made in a setgid one is setgid"
    );

    // fallocate: modes that only allocate work, others are EOPNOTSUPP.
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(e.join("alloc"))
        .unwrap();
    let fd = f.as_raw_fd();
    check(unsafe { libc::fallocate(fd, 0, 0, 1 << 20) }, "fallocate 0");
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    check(
        unsafe { libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 2 << 20) },
        "fallocate KEEP_SIZE",
    );
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    assert_eq!(unsafe { libc::posix_fallocate(fd, 0, 3 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 3 << 20);
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(unsafe { libc::fallocate(fd, punch, 0, 4096) }, -1);
    assert_eq!(
        errno_of(Err::<(), _>(std::io::Error::last_os_error())),
        libc::EOPNOTSUPP
    );
    drop(f);
    fs::remove_file(e.join("alloc")).unwrap();

    em.commit("misc:1");
    let names = layer_names(&reg, "misc:1");
    assert!(names.lines().any(|l| l == "kept"), "{names}");
    assert!(!names.contains("sock"), "a socket was packed: {names}");
    let log = em.mount.log();
    assert!(log.contains("sockets cannot be packed; skipped"), "{log}");
}

#[test]
fn base_hard_links_count_right_after_a_delete() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    let em = ExportMount::new(&reg, &[]);
    let e = em.entry("hl:1");
    let out = em.regfs(&[
        "export",
        "new",
        e.to_str().unwrap(),
        "--from",
        "lab/python:3.11",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let share = e.join("usr/local/share");
    let a = fs::symlink_metadata(share.join("lab.txt")).unwrap();
    let b = fs::symlink_metadata(share.join("lab-hardlink.txt")).unwrap();
    assert_eq!((a.nlink(), b.nlink(), a.ino()), (2, 2, b.ino()));
    fs::remove_file(share.join("lab-hardlink.txt")).unwrap();
    let a = fs::symlink_metadata(share.join("lab.txt")).unwrap();
    assert_eq!(a.nlink(), 1);
    assert_eq!(fs::read(share.join("lab.txt")).unwrap().len(), 17);
    assert_eq!(
        errno_of(fs::symlink_metadata(share.join("lab-hardlink.txt"))),
        libc::ENOENT
    );
}

/// Deleting a base name of 252-255 bytes: its whiteout `.wh.NAME` is longer
/// than NAME_MAX on the staging disk, yet the name goes, and the layer says so.
#[test]
fn long_base_names_can_be_deleted() {
    require_fuse!();
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &[]);
    let long: String = std::iter::repeat_n('L', 255).collect();
    let base = em.entry("lbase:1");
    fs::create_dir(&base).unwrap();
    fs::write(base.join(&long), b"gone soon").unwrap();
    fs::create_dir(base.join(&long[..253])).unwrap();
    fs::write(base.join("kept"), b"k").unwrap();
    em.commit("lbase:1");
    let e = em.entry("lderived:1");
    let out = em.regfs(&["export", "new", e.to_str().unwrap(), "--from", "lbase:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(e.join(&long)).unwrap();
    fs::remove_dir(e.join(&long[..253])).unwrap();
    let names: Vec<_> = fs::read_dir(&e)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["kept"]);
    // Back again, then gone again: the whiteout comes and goes with it.
    fs::write(e.join(&long), b"back").unwrap();
    assert_eq!(fs::read(e.join(&long)).unwrap(), b"back");
    fs::remove_file(e.join(&long)).unwrap();
    assert_eq!(errno_of(fs::metadata(e.join(&long))), libc::ENOENT);
    em.commit("lderived:1");
    let layer = layer_names(&reg, "lderived:1");
    for wh in [format!(".wh.{long}"), format!(".wh.{}", &long[..253])] {
        assert!(
            layer.lines().any(|l| l == wh),
            "no {}… in {layer}",
            &wh[..10]
        );
    }
    let (_keep, rootfs) = harness::export::pull_unpack(&reg, "lderived:1");
    let mut got: Vec<_> = fs::read_dir(&rootfs)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, ["kept"]);
}
