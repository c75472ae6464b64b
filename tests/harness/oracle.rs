//! The oracle: `umoci unpack` of a lab image ([`umoci_unpack`]), a
//! [`snapshot`] of any tree (type, mode, owner, size, link target, hard
//! links, xattrs, sha256) and [`assert_same_tree`] to compare two.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use super::images::lab_images;
use super::process::{lock, run};

/// `umoci unpack --image $REGFS_LAB/oci:TAG DIR` and returns `DIR/rootfs`.
///
/// Cached in `$REGFS_LAB/unpacked/TAG-<manifest digest>/` across tests and
/// runs (a rebuilt image gets a new directory). Treat it as read-only.
/// Only single-platform tags of `oci/` work (`busybox`, `busybox-arm64`,
/// `debian-bookworm`, `python-3.11`); umoci cannot unpack an index.
pub fn umoci_unpack(layout_tag: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = lock(&LOCK);
    let layout = lab_images().join("oci");
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).expect("read oci/index.json"))
            .unwrap();
    let digest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == layout_tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("tag {layout_tag} not in {}", layout.display()))
        .replace(':', "-");
    let base = lab_images().join("unpacked");
    let dir = base.join(format!("{layout_tag}-{digest}"));
    if dir.join("rootfs").is_dir() {
        return dir.join("rootfs");
    }
    fs::create_dir_all(&base).unwrap();
    // Old unpacks of the same tag.
    for e in fs::read_dir(&base).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&format!("{layout_tag}-sha256-"))
            || n.starts_with(&format!(".tmp-{layout_tag}-"))
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    let tmp = base.join(format!(".tmp-{layout_tag}-{}", std::process::id()));
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{layout_tag}", layout.display()))
        .arg(&tmp));
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp); // another process won the race
    }
    dir.join("rootfs")
}

/// [`snapshot`] of [`umoci_unpack`]`(layout_tag)`, computed once per process.
pub fn umoci_snapshot(layout_tag: &str) -> Arc<BTreeMap<PathBuf, EntryInfo>> {
    static CACHE: Mutex<BTreeMap<String, Arc<BTreeMap<PathBuf, EntryInfo>>>> =
        Mutex::new(BTreeMap::new());
    if let Some(s) = lock(&CACHE).get(layout_tag) {
        return s.clone();
    }
    let snap = Arc::new(snapshot(&umoci_unpack(layout_tag)));
    lock(&CACHE).insert(layout_tag.to_string(), snap.clone());
    snap
}

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

/// What [`snapshot`] records about one entry. Directory `nlink` is not
/// recorded (it depends on the filesystem, not on the image); hardlinks are
/// checked through `nlink` and `hardlinks` of non-directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Size of regular files.
    pub size: Option<u64>,
    /// Target of symlinks, as stored.
    pub target: Option<PathBuf>,
    /// Link count of non-directories.
    pub nlink: Option<u64>,
    /// Other paths in the tree with the same inode (non-directories).
    pub hardlinks: Vec<PathBuf>,
    /// Device number of character and block devices.
    pub rdev: Option<u64>,
    /// Extended attributes (name → value), from llistxattr/lgetxattr.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Lower-case hex sha256 of a regular file's contents.
    pub sha256: Option<String>,
}

/// Walks `root` without following symlinks and records every entry, keyed
/// by its absolute path inside the tree (`/`, `/bin`, `/bin/sh`, …). Every
/// error (unreadable dir or file, failed xattr call) panics: nothing is
/// skipped silently.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, EntryInfo> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), Vec<PathBuf>> = HashMap::new();
    walk(root, Path::new("/"), &mut out, &mut inodes);
    let files: Vec<PathBuf> = out
        .iter()
        .filter(|(_, e)| e.kind == Kind::File)
        .map(|(rel, _)| rel.clone())
        .collect();
    let abs: Vec<PathBuf> = files
        .iter()
        .map(|rel| root.join(rel.strip_prefix("/").unwrap()))
        .collect();
    for (rel, hash) in files.iter().zip(sha256_files(&abs)) {
        out.get_mut(rel).unwrap().sha256 = Some(hash);
    }
    for paths in inodes.values().filter(|p| p.len() > 1) {
        for p in paths {
            let others = paths.iter().filter(|o| *o != p).cloned().collect();
            out.get_mut(p).unwrap().hardlinks = others;
        }
    }
    out
}

fn walk(
    path: &Path,
    rel: &Path,
    out: &mut BTreeMap<PathBuf, EntryInfo>,
    inodes: &mut HashMap<(u64, u64), Vec<PathBuf>>,
) {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_char_device() {
        Kind::CharDevice
    } else if ft.is_block_device() {
        Kind::BlockDevice
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        Kind::Socket
    };
    let info = EntryInfo {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (kind == Kind::File).then(|| md.size()),
        target: (kind == Kind::Symlink).then(|| {
            fs::read_link(path).unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
        }),
        nlink: (kind != Kind::Dir).then(|| md.nlink()),
        hardlinks: Vec::new(),
        rdev: matches!(kind, Kind::CharDevice | Kind::BlockDevice).then(|| md.rdev()),
        xattrs: xattrs(path),
        sha256: None, // filled in by snapshot(), in batches
    };
    if kind != Kind::Dir {
        inodes
            .entry((md.dev(), md.ino()))
            .or_default()
            .push(rel.to_path_buf());
    }
    out.insert(rel.to_path_buf(), info);
    if kind == Kind::Dir {
        let mut names: Vec<OsString> = fs::read_dir(path)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
            .map(|e| {
                e.unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
                    .file_name()
            })
            .collect();
        names.sort();
        for name in names {
            walk(&path.join(&name), &rel.join(&name), out, inodes);
        }
    }
}

/// Lower-case hex sha256 of each file's contents, in order.
///
/// Uses `openssl dgst` in batches (SHA extensions, ~1 GiB/s; the sha2 crate
/// in an unoptimised test build manages ~30 MiB/s), and the sha2 crate for
/// any batch openssl does not fully answer, which panics with the path and
/// the error of a file that cannot be read.
pub fn sha256_files(paths: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::with_capacity(paths.len());
    for batch in paths.chunks(256) {
        match openssl_batch(batch) {
            Some(hashes) => out.extend(hashes),
            None => out.extend(batch.iter().map(|p| sha256_file(p))),
        }
    }
    out
}

fn openssl_batch(batch: &[PathBuf]) -> Option<Vec<String>> {
    // One output line per file only if no name holds a newline or backslash
    // (which openssl would escape).
    if batch.iter().any(|p| {
        p.as_os_str()
            .as_bytes()
            .iter()
            .any(|b| *b == b'\n' || *b == b'\\')
    }) {
        return None;
    }
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .args(batch)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let hashes: Vec<String> = text
        .lines()
        .filter_map(|l| l.get(..64))
        .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|h| h.to_ascii_lowercase())
        .collect();
    (hashes.len() == batch.len()).then_some(hashes)
}

/// List directory `path` as `ls` does: open it and read every entry. The
/// error is whichever step failed (regfs opens directories without a round
/// trip, so a listing that cannot be made fails at the first read).
pub fn list_dir(path: &Path) -> io::Result<Vec<fs::DirEntry>> {
    fs::read_dir(path)?.collect()
}

/// The names in directory `dir`, sorted; panics (naming the directory) if
/// it cannot be listed.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Lower-case hex sha256 of a file's contents (sha2 crate).
pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// All extended attributes of `path` (not following symlinks). A filesystem
/// without xattr support (ENOTSUP) gives an empty map; other errors panic.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    let names = match sized(|buf, len| unsafe { libc::llistxattr(c.as_ptr(), buf.cast(), len) }) {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return out,
        Err(e) => panic!("llistxattr {}: {e}", path.display()),
    };
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).unwrap();
        let value = sized(|buf, len| unsafe {
            libc::lgetxattr(c.as_ptr(), cname.as_ptr(), buf.cast(), len)
        })
        .unwrap_or_else(|e| {
            panic!(
                "lgetxattr {} {}: {e}",
                path.display(),
                String::from_utf8_lossy(name)
            )
        });
        out.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    out
}

/// The answer of a size-then-fill call (`llistxattr`, `lgetxattr`): asks
/// for the size with an empty buffer, then fills one of that size, and
/// starts over if the value grew in between (ERANGE).
fn sized(mut call: impl FnMut(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let n = call(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        if n == 0 {
            return Ok(buf);
        }
        let m = call(buf.as_mut_ptr(), buf.len());
        if m >= 0 {
            buf.truncate(m as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
}

/// The differences between two snapshots, one readable line each.
pub fn tree_diff(
    expected: &BTreeMap<PathBuf, EntryInfo>,
    actual: &BTreeMap<PathBuf, EntryInfo>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, e) in expected {
        let Some(a) = actual.get(path) else {
            diffs.push(format!("missing  {} ({:?})", path.display(), e.kind));
            continue;
        };
        let p = path.display();
        macro_rules! field {
            ($f:ident, $fmt:literal) => {
                if e.$f != a.$f {
                    diffs.push(format!(
                        concat!(
                            "differs  {} ",
                            stringify!($f),
                            ": expected ",
                            $fmt,
                            ", got ",
                            $fmt
                        ),
                        p, e.$f, a.$f
                    ));
                }
            };
        }
        field!(kind, "{:?}");
        field!(mode, "{:o}");
        field!(uid, "{}");
        field!(gid, "{}");
        field!(size, "{:?}");
        field!(target, "{:?}");
        field!(nlink, "{:?}");
        field!(hardlinks, "{:?}");
        field!(rdev, "{:?}");
        if e.xattrs != a.xattrs {
            let show = |m: &BTreeMap<String, Vec<u8>>| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            diffs.push(format!(
                "differs  {p} xattrs: expected {{{}}}, got {{{}}}",
                show(&e.xattrs),
                show(&a.xattrs)
            ));
        }
        field!(sha256, "{:?}");
    }
    for (path, a) in actual {
        if !expected.contains_key(path) {
            diffs.push(format!("extra    {} ({:?})", path.display(), a.kind));
        }
    }
    diffs
}

/// Panics with a readable list of the first 20 differences (and the total)
/// if the snapshots differ.
#[track_caller]
pub fn assert_same_tree(
    expected: &BTreeMap<PathBuf, EntryInfo>,
    actual: &BTreeMap<PathBuf, EntryInfo>,
) {
    let diffs = tree_diff(expected, actual);
    if diffs.is_empty() {
        return;
    }
    let mut msg = format!(
        "trees differ: {} difference(s) (expected {} entries, got {})\n",
        diffs.len(),
        expected.len(),
        actual.len()
    );
    for d in diffs.iter().take(20) {
        msg += "  ";
        msg += d;
        msg += "\n";
    }
    if diffs.len() > 20 {
        msg += &format!("  … and {} more\n", diffs.len() - 20);
    }
    panic!("{msg}");
}
