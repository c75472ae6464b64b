//! Issue 14: the export directory against a real POSIX filesystem. The same
//! seeded random sequences of operations (create, write, truncate, rename,
//! link, unlink with descriptors open, chmod, chown as root and as another
//! user, mknod of every kind, xattrs, 255-byte names, paths near PATH_MAX)
//! run on a tmpfs directory (the oracle) and on a staged export entry; every
//! result (return value, errno, bytes read, `fstat`) and, after every
//! operation, the whole tree (type, mode, owner, nlink, size, rdev, target,
//! contents, xattrs, which names share an inode, whether ctime and mtime
//! moved) must be the same. `REGFS_POSIX_SEED=N` replays one seed.
//!
//! Intended differences, and the only ones: names starting with `.wh.` are
//! OCI whiteouts and cannot be staged (`EINVAL`, tmpfs creates them); a
//! directory's `st_size` is the backing filesystem's, so it is not compared.
//! On an entry made `--from` a base image, a directory of the base is not
//! renamed (`EXDEV`, as on overlayfs: see the README), and ctime is not
//! compared: a copy-up
//! (opening a base file for writing, changing one of its names) gives the
//! file and the directories it is written into a new ctime, as on overlayfs;
//! their mtimes are kept and compared.
//! (The tmpfs is mounted `nodev,nosuid` like the export mount, so opening a
//! device node is `EACCES` on both; symlink targets stay inside the tree.)

use crate::harness;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::export::ExportMount;
use harness::{Registry, RegistryKind};

/// The other user (`nobody`).
pub(crate) const USER: (u32, u32) = (65534, 65534);
/// How long the random part may run (`REGFS_POSIX_SECS` to change).
const BUDGET: Duration = Duration::from_secs(6);
/// Operations per seed.
const OPS: usize = 200;
/// Open descriptor slots.
const SLOTS: usize = 4;

/// SplitMix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        slot: usize,
        path: String,
        mode: u32,
        excl: bool,
    },
    Open {
        slot: usize,
        path: String,
        trunc: bool,
    },
    Write {
        slot: usize,
        off: u64,
        len: usize,
        byte: u8,
    },
    Read {
        slot: usize,
        off: u64,
        len: usize,
    },
    Ftruncate {
        slot: usize,
        size: u64,
    },
    Fstat {
        slot: usize,
    },
    Fchmod {
        slot: usize,
        mode: u32,
    },
    Close {
        slot: usize,
    },
    Truncate {
        path: String,
        size: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        noreplace: bool,
    },
    /// Open `/proc/self/fd/N` of descriptor `src` (works unlinked, too).
    Reopen {
        slot: usize,
        src: usize,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Mknod {
        path: String,
        kind: u32,
        mode: u32,
    },
    SetXattr {
        path: String,
        name: String,
        value: String,
    },
    GetXattr {
        path: String,
        name: String,
    },
    ListXattr {
        path: String,
    },
    RemoveXattr {
        path: String,
        name: String,
    },
}

fn long(c: char) -> String {
    std::iter::repeat_n(c, 255).collect()
}

/// 14 directories of 255-byte names: paths below it are ~3,600-3,900 bytes.
fn deep() -> String {
    (0..14)
        .map(|i| long(char::from(b'A' + i)))
        .collect::<Vec<_>>()
        .join("/")
}

struct Gen {
    rng: Rng,
    dirs: Vec<String>,
    names: Vec<String>,
    /// Paths made by earlier operations (picked half of the time).
    known: Vec<String>,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: Rng(seed),
            dirs: vec![
                String::new(),
                "d1/".into(),
                "d1/d2/".into(),
                "d3/".into(),
                format!("{}/", deep()),
            ],
            names: ["a", "b", "c", "d1", "d2", "d3"]
                .iter()
                .map(|s| s.to_string())
                .chain([long('L'), long('M')])
                .collect(),
            known: Vec::new(),
        }
    }

    fn path(&mut self) -> String {
        if !self.known.is_empty() && self.rng.chance(50) {
            return self.rng.pick(&self.known);
        }
        // Mostly the top and the first directory; the deep chain a tenth of the time.
        let d = match self.rng.below(10) {
            0..=3 => 0,
            4..=6 => 1,
            7 => 2,
            8 => 3,
            _ => 4,
        };
        let n = match self.rng.below(10) {
            0..=5 => self.rng.below(3),
            6..=7 => 3 + self.rng.below(3),
            _ => 6 + self.rng.below(2),
        };
        format!("{}{}", self.dirs[d], self.names[n])
    }

    /// `op` succeeded on the oracle: remember the path it made.
    fn made(&mut self, op: &Op) {
        let p = match op {
            Op::Create { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Mknod { path, .. } => path,
            Op::Rename { to, .. } | Op::Link { to, .. } => to,
            _ => return,
        };
        if !self.known.contains(p) {
            self.known.push(p.clone());
        }
        if self.known.len() > 12 {
            self.known.remove(0);
        }
    }

    /// A path short enough for `/proc/self/fd/N/PATH` (the xattr calls).
    fn short_path(&mut self) -> String {
        loop {
            let p = self.path();
            if p.len() < 2000 {
                return p;
            }
        }
    }

    fn mode(&mut self) -> u32 {
        self.rng.pick(&[
            0o755, 0o777, 0o700, 0o644, 0o600, 0o2777, 0o2755, 0o4755, 0o1777, 0o640, 0o000,
        ])
    }

    fn op(&mut self) -> Op {
        let slot = self.rng.below(SLOTS);
        match self.rng.below(22) {
            0 | 1 => Op::Create {
                slot,
                path: self.path(),
                mode: self.mode(),
                excl: self.rng.chance(50),
            },
            2 => Op::Open {
                slot,
                path: self.path(),
                trunc: self.rng.chance(30),
            },
            3 | 4 => Op::Write {
                slot,
                off: self.rng.below(3) as u64 * 1000,
                len: 1 + self.rng.below(5000),
                byte: b'a' + self.rng.below(26) as u8,
            },
            5 => Op::Read {
                slot,
                off: self.rng.below(3) as u64 * 700,
                len: 1 + self.rng.below(4000),
            },
            6 => Op::Ftruncate {
                slot,
                size: self.rng.below(6000) as u64,
            },
            7 => Op::Fstat { slot },
            8 => Op::Fchmod {
                slot,
                mode: self.mode(),
            },
            9 => Op::Close { slot },
            10 => Op::Truncate {
                path: self.path(),
                size: self.rng.below(3000) as u64,
            },
            11 | 12 => Op::Mkdir {
                path: self.path(),
                mode: self.mode(),
            },
            13 => Op::Rmdir { path: self.path() },
            14 | 15 => Op::Unlink {
                path: match self.known.is_empty() {
                    true => self.path(),
                    false => self.rng.pick(&self.known),
                },
            },
            16 => match self.rng.below(4) {
                0 => Op::Reopen {
                    slot,
                    src: self.rng.below(SLOTS),
                },
                _ => Op::Rename {
                    from: self.path(),
                    to: self.path(),
                    noreplace: self.rng.chance(25),
                },
            },
            17 => Op::Link {
                from: self.path(),
                to: self.path(),
            },
            18 => Op::Symlink {
                // Targets stay inside the tree: writes follow them.
                target: self.rng.pick(&["a", "x", "d1/x", "d1/d2"]).into(),
                path: self.path(),
            },
            19 => match self.rng.below(3) {
                0 => Op::Chown {
                    path: self.path(),
                    uid: self.rng.pick(&[0, USER.0, 1000, u32::MAX]),
                    gid: self.rng.pick(&[0, USER.1, 1000, u32::MAX]),
                },
                _ => Op::Chmod {
                    path: self.path(),
                    mode: self.mode(),
                },
            },
            20 => Op::Mknod {
                path: self.path(),
                kind: self
                    .rng
                    .pick(&[libc::S_IFIFO, libc::S_IFCHR, libc::S_IFSOCK, libc::S_IFREG]),
                mode: self.mode() & 0o777,
            },
            _ => {
                let path = self.short_path();
                let name = self.rng.pick(&["user.a", "user.b"]).to_string();
                match self.rng.below(4) {
                    0 | 1 => Op::SetXattr {
                        path,
                        name,
                        value: self.rng.pick(&["1", "two", ""]).into(),
                    },
                    2 => Op::GetXattr { path, name },
                    _ if self.rng.chance(50) => Op::ListXattr { path },
                    _ => Op::RemoveXattr { path, name },
                }
            }
        }
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// `Ok(text)` or `Err(errno)`.
type Outcome = Result<String, i32>;

fn check(rc: libc::c_long) -> Outcome {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc.to_string())
    }
}

/// Run `f` with the other user's credentials: a thread of its own whose
/// credentials alone change (raw syscalls, not glibc's process-wide ones).
pub(crate) fn as_user<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<u32>()),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, USER.1, USER.1, USER.1),
                0
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, USER.0, USER.0, USER.0),
                0
            );
            f()
        })
        .join()
        .unwrap()
    })
}

fn stat_at(dir: RawFd, path: &str) -> Result<libc::stat, i32> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let p = c(path);
    let rc = unsafe { libc::fstatat(dir, p.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(st)
    }
}

/// What `fstat` of a descriptor shows that must match.
fn fstat_text(fd: RawFd) -> Outcome {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(errno());
    }
    Ok(format!(
        "mode {:o} nlink {} uid {} gid {} size {}",
        st.st_mode, st.st_nlink, st.st_uid, st.st_gid, st.st_size
    ))
}

/// One side: a directory (by descriptor) and the descriptors the sequence holds.
struct Side {
    name: &'static str,
    root: OwnedFd,
    slots: Vec<Option<OwnedFd>>,
    last: BTreeMap<String, Info>,
}

impl Side {
    fn new(name: &'static str, dir: &Path) -> Side {
        let p = c(dir.to_str().unwrap());
        let fd = unsafe {
            libc::open(
                p.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        assert!(fd >= 0, "open {}", dir.display());
        Side {
            name,
            root: unsafe { OwnedFd::from_raw_fd(fd) },
            slots: (0..SLOTS).map(|_| None).collect(),
            last: BTreeMap::new(),
        }
    }

    fn proc_path(&self, path: &str) -> String {
        format!("/proc/self/fd/{}/{path}", self.root.as_raw_fd())
    }

    fn apply(&mut self, op: &Op, user: bool) -> Outcome {
        let root = self.root.as_raw_fd();
        let slot_fd = |slot: usize| self.slots[slot].as_ref().map(|f| f.as_raw_fd());
        let proc = |p: &str| c(&self.proc_path(p));
        let run = |f: &(dyn Fn() -> (Outcome, Option<OwnedFd>) + Sync)| {
            if user {
                as_user(f)
            } else {
                f()
            }
        };
        let (out, fd) = match op {
            Op::Create {
                path, mode, excl, ..
            } => run(&|| {
                let flags = libc::O_CREAT
                    | libc::O_RDWR
                    | libc::O_CLOEXEC
                    | if *excl { libc::O_EXCL } else { 0 };
                let fd = unsafe { libc::openat(root, c(path).as_ptr(), flags, *mode) };
                open_outcome(fd)
            }),
            Op::Open { path, trunc, .. } => run(&|| {
                let flags = libc::O_RDWR
                    | libc::O_CLOEXEC
                    | libc::O_NONBLOCK
                    | if *trunc { libc::O_TRUNC } else { 0 };
                let fd = unsafe { libc::openat(root, c(path).as_ptr(), flags) };
                open_outcome(fd)
            }),
            Op::Write {
                slot,
                off,
                len,
                byte,
            } => match slot_fd(*slot) {
                None => (Ok("no fd".into()), None),
                Some(fd) => run(&|| {
                    let buf = vec![*byte; *len];
                    let rc = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), *len, *off as i64) };
                    (check(rc as _), None)
                }),
            },
            Op::Read { slot, off, len } => match slot_fd(*slot) {
                None => (Ok("no fd".into()), None),
                Some(fd) => {
                    let mut buf = vec![0u8; *len];
                    let rc = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), *len, *off as i64) };
                    if rc < 0 {
                        (Err(errno()), None)
                    } else {
                        buf.truncate(rc as usize);
                        (Ok(String::from_utf8_lossy(&buf).into_owned()), None)
                    }
                }
            },
            Op::Ftruncate { slot, size } => match slot_fd(*slot) {
                None => (Ok("no fd".into()), None),
                Some(fd) => run(&|| {
                    (
                        check(unsafe { libc::ftruncate(fd, *size as i64) } as _),
                        None,
                    )
                }),
            },
            Op::Fstat { slot } => match slot_fd(*slot) {
                None => (Ok("no fd".into()), None),
                Some(fd) => (fstat_text(fd), None),
            },
            Op::Fchmod { slot, mode } => match slot_fd(*slot) {
                None => (Ok("no fd".into()), None),
                Some(fd) => run(&|| (check(unsafe { libc::fchmod(fd, *mode) } as _), None)),
            },
            Op::Close { slot } => {
                self.slots[*slot] = None;
                (Ok("closed".into()), None)
            }
            Op::Truncate { path, size } => run(&|| {
                let rc = unsafe { libc::truncate(proc(path).as_ptr(), *size as i64) };
                (check(rc as _), None)
            }),
            Op::Mkdir { path, mode } => run(&|| {
                (
                    check(unsafe { libc::mkdirat(root, c(path).as_ptr(), *mode) } as _),
                    None,
                )
            }),
            Op::Rmdir { path } => run(&|| {
                let rc = unsafe { libc::unlinkat(root, c(path).as_ptr(), libc::AT_REMOVEDIR) };
                (check(rc as _), None)
            }),
            Op::Unlink { path } => run(&|| {
                (
                    check(unsafe { libc::unlinkat(root, c(path).as_ptr(), 0) } as _),
                    None,
                )
            }),
            Op::Rename {
                from,
                to,
                noreplace,
            } => run(&|| {
                let flags = if *noreplace {
                    libc::RENAME_NOREPLACE
                } else {
                    0
                };
                let rc =
                    unsafe { libc::renameat2(root, c(from).as_ptr(), root, c(to).as_ptr(), flags) };
                (check(rc as _), None)
            }),
            Op::Reopen { src, .. } => match slot_fd(*src) {
                None => (Ok("no fd".into()), None),
                Some(fd) => run(&|| {
                    let p = c(&format!("/proc/self/fd/{fd}"));
                    let flags = libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK;
                    open_outcome(unsafe { libc::open(p.as_ptr(), flags) })
                }),
            },
            Op::Link { from, to } => run(&|| {
                let rc = unsafe { libc::linkat(root, c(from).as_ptr(), root, c(to).as_ptr(), 0) };
                (check(rc as _), None)
            }),
            Op::Symlink { target, path } => run(&|| {
                let rc = unsafe { libc::symlinkat(c(target).as_ptr(), root, c(path).as_ptr()) };
                (check(rc as _), None)
            }),
            Op::Chmod { path, mode } => run(&|| {
                (
                    check(unsafe { libc::fchmodat(root, c(path).as_ptr(), *mode, 0) } as _),
                    None,
                )
            }),
            Op::Chown { path, uid, gid } => run(&|| {
                let rc = unsafe {
                    libc::fchownat(
                        root,
                        c(path).as_ptr(),
                        *uid,
                        *gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                (check(rc as _), None)
            }),
            Op::Mknod { path, kind, mode } => run(&|| {
                let dev = if *kind == libc::S_IFCHR {
                    libc::makedev(1, 3)
                } else {
                    0
                };
                let rc = unsafe { libc::mknodat(root, c(path).as_ptr(), kind | mode, dev) };
                (check(rc as _), None)
            }),
            Op::SetXattr { path, name, value } => run(&|| {
                let rc = unsafe {
                    libc::lsetxattr(
                        proc(path).as_ptr(),
                        c(name).as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    )
                };
                (check(rc as _), None)
            }),
            Op::GetXattr { path, name } => run(&|| {
                let mut buf = [0u8; 256];
                let rc = unsafe {
                    libc::lgetxattr(
                        proc(path).as_ptr(),
                        c(name).as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if rc < 0 {
                    (Err(errno()), None)
                } else {
                    (
                        Ok(String::from_utf8_lossy(&buf[..rc as usize]).into_owned()),
                        None,
                    )
                }
            }),
            Op::ListXattr { path } => run(&|| (lxattrs(&self.proc_path(path)), None)),
            Op::RemoveXattr { path, name } => run(&|| {
                let rc = unsafe { libc::lremovexattr(proc(path).as_ptr(), c(name).as_ptr()) };
                (check(rc as _), None)
            }),
        };
        if let (
            Some(fd),
            Op::Create { slot, .. } | Op::Open { slot, .. } | Op::Reopen { slot, .. },
        ) = (fd, op)
        {
            self.slots[*slot] = Some(fd);
        }
        out
    }
}

fn open_outcome(fd: RawFd) -> (Outcome, Option<OwnedFd>) {
    if fd < 0 {
        (Err(errno()), None)
    } else {
        (
            Ok("opened".into()),
            Some(unsafe { OwnedFd::from_raw_fd(fd) }),
        )
    }
}

/// `user.*` names and values, sorted (`""` when the type cannot carry them).
fn lxattrs(path: &str) -> Outcome {
    let p = c(path);
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    let mut names: Vec<&[u8]> = buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| s.starts_with(b"user."))
        .collect();
    names.sort();
    let mut out = String::new();
    for name in names {
        let cn = CString::new(name).unwrap();
        let mut v = [0u8; 256];
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        let _ = write!(
            out,
            "{}={:?} ",
            String::from_utf8_lossy(name),
            (got >= 0).then(|| String::from_utf8_lossy(&v[..got as usize]).into_owned())
        );
    }
    Ok(out)
}

/// What is compared of one name in the tree.
#[derive(Debug, Clone, PartialEq)]
struct Info {
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    /// Not for directories (the backing filesystem's number).
    size: Option<i64>,
    rdev: u64,
    target: Option<String>,
    content: Option<Vec<u8>>,
    xattrs: String,
    /// Compared as classes (which names share an inode), not as numbers.
    ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
}

/// Walk directory `dir` (named `prefix`) into `out`; contents and xattrs of
/// a file whose inode, size, ctime and mtime are those of `last` are taken
/// from there (reading them again would only cost time: a change shows in
/// ctime, which is compared).
fn snapshot(
    dir: RawFd,
    prefix: &str,
    last: &BTreeMap<String, Info>,
    out: &mut BTreeMap<String, Info>,
) {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/self/fd/{dir}"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    for name in names {
        let st = match stat_at(dir, &name) {
            Ok(st) => st,
            Err(e) => panic!("lstat {prefix}{name}: errno {e}"),
        };
        let path = format!("{prefix}{name}");
        let kind = st.st_mode & libc::S_IFMT;
        let mut info = Info {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
            size: (kind != libc::S_IFDIR).then_some(st.st_size),
            rdev: st.st_rdev,
            target: None,
            content: None,
            xattrs: String::new(),
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
        };
        let cn = c(&name);
        match kind {
            libc::S_IFLNK => {
                let mut buf = [0u8; 4096];
                let n =
                    unsafe { libc::readlinkat(dir, cn.as_ptr(), buf.as_mut_ptr().cast(), 4096) };
                assert!(n >= 0, "readlink {path}");
                info.target = Some(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
            }
            libc::S_IFREG
                if last.get(&path).is_some_and(|l| {
                    (l.ino, l.size, l.ctime, l.mtime)
                        == (info.ino, info.size, info.ctime, info.mtime)
                }) =>
            {
                let l = &last[&path];
                info.content = l.content.clone();
                info.xattrs = l.xattrs.clone();
            }
            libc::S_IFREG | libc::S_IFDIR => {
                let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                let fd = unsafe { libc::openat(dir, cn.as_ptr(), flags) };
                assert!(fd >= 0, "open {path}: errno {}", errno());
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                info.xattrs = lxattrs(&format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
                if kind == libc::S_IFREG {
                    let mut f = std::fs::File::from(fd);
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut f, &mut v).unwrap();
                    info.content = Some(v);
                } else {
                    snapshot(fd.as_raw_fd(), &format!("{path}/"), last, out);
                }
            }
            _ => {}
        }
        out.insert(path, info);
    }
}

fn tree(side: &Side) -> BTreeMap<String, Info> {
    let mut out = BTreeMap::new();
    let st = stat_at(side.root.as_raw_fd(), ".").unwrap();
    out.insert(
        ".".into(),
        Info {
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            nlink: st.st_nlink,
            size: None,
            rdev: 0,
            target: None,
            content: None,
            xattrs: String::new(),
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
        },
    );
    snapshot(side.root.as_raw_fd(), "", &side.last, &mut out);
    out
}

/// One line per name with what must be equal: the fields, the first name of
/// its inode class, and whether ctime / mtime moved since the last look.
fn describe(
    now: &BTreeMap<String, Info>,
    last: &BTreeMap<String, Info>,
    ctimes: bool,
) -> Vec<String> {
    let mut first: BTreeMap<u64, &str> = BTreeMap::new();
    for (p, i) in now {
        first.entry(i.ino).or_insert(p);
    }
    now.iter()
        .map(|(p, i)| {
            let before = last.get(p).filter(|l| l.ino == i.ino);
            let moved = |f: fn(&Info) -> (i64, i64)| match before {
                Some(b) => (f(b) != f(i)).to_string(),
                None => "new".into(),
            };
            let ctime_moved = match ctimes {
                true => moved(|i| i.ctime),
                false => "(not compared)".into(),
            };
            let content = i.content.as_ref().map(|c| {
                let mut s = format!("{} bytes", c.len());
                for run in c.chunk_by(|a, b| a == b) {
                    let _ = write!(s, " {}x{}", run.len(), run[0] as char);
                }
                s
            });
            format!(
                "{p}: mode {:o} uid {} gid {} nlink {} size {:?} rdev {} target {:?} content {:?} xattrs [{}] inode-of {} ctime-moved {} mtime-moved {}",
                i.mode,
                i.uid,
                i.gid,
                i.nlink,
                i.size,
                i.rdev,
                i.target,
                content,
                i.xattrs,
                if first[&i.ino] == p.as_str() { "itself".to_string() } else { first[&i.ino].to_string() },
                ctime_moved,
                moved(|i| i.mtime),
            )
        })
        .collect()
}

/// The directories whose entries `op` changes when it succeeds: POSIX moves
/// their ctime and mtime.
fn parents_changed(op: &Op) -> Vec<String> {
    let parent = |p: &str| match p.rsplit_once('/') {
        Some((d, _)) => d.to_string(),
        None => ".".to_string(),
    };
    match op {
        Op::Create { path, .. }
        | Op::Mkdir { path, .. }
        | Op::Rmdir { path }
        | Op::Unlink { path }
        | Op::Symlink { path, .. }
        | Op::Mknod { path, .. } => vec![parent(path)],
        Op::Link { to, .. } => vec![parent(to)],
        Op::Rename { from, to, .. } => vec![parent(from), parent(to)],
        _ => Vec::new(),
    }
}

/// tmpfs's multigrain timestamps may stamp a change with the same time as
/// the one before it (the floor of fine-grained times already handed out),
/// so a directory of `dirs` whose times "did not move" on tmpfs while they
/// moved on the export is not a difference: the export did what POSIX says.
/// Seen once in CI (seed 1796184455009211438, op #84, not reproducible). The
/// other direction (the export moving what tmpfs did not touch) still fails.
fn excuse_timestamp_floor(dw: &mut [String], ds: &[String], dirs: &[String]) {
    for d in dirs {
        let prefix = format!("{d}: ");
        let Some(s) = ds.iter().find(|l| l.starts_with(&prefix)) else {
            continue;
        };
        for w in dw.iter_mut().filter(|l| l.starts_with(&prefix)) {
            let relaxed = w
                .replace("ctime-moved false", "ctime-moved true")
                .replace("mtime-moved false", "mtime-moved true");
            if &relaxed == s {
                *w = relaxed;
            }
        }
    }
}

/// Renaming a directory of the base image is `EXDEV` on an entry, as on
/// overlayfs (`mv` copies then): the base variant does not try it.
fn moves_a_base_dir(op: &Op) -> bool {
    matches!(op, Op::Rename { from, .. } if ["d1", "d1/d2", "d3", "d1/d2/e"].contains(&from.as_str()))
}

/// The intended difference: `.wh.` names cannot be staged.
fn whiteout_name(op: &Op) -> bool {
    format!("{op:?}").contains(".wh.")
}

fn mount_tmpfs() -> (tempfile::TempDir, PathBuf) {
    let d = harness::tempdir("posix-tmpfs");
    harness::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,nodev,nosuid", "posix-oracle"])
            .arg(d.path()),
    );
    let t = d.path().join("t");
    (d, t)
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Make the same starting tree on both: the top 0777, three directories,
/// then the deep chain (`deep`) or a few files of every kind (`!deep`: the
/// tree a base image is made of).
fn setup(side: &mut Side, deep: bool) {
    let mut ops = vec![
        Op::Chmod {
            path: ".".into(),
            mode: 0o777,
        },
        Op::Mkdir {
            path: "d1".into(),
            mode: 0o777,
        },
        Op::Mkdir {
            path: "d1/d2".into(),
            mode: 0o777,
        },
        Op::Mkdir {
            path: "d3".into(),
            mode: 0o777,
        },
    ];
    let mut p = String::new();
    for i in 0..if deep { 14 } else { 0 } {
        if i > 0 {
            p.push('/');
        }
        p.push_str(&long(char::from(b'A' + i)));
        ops.push(Op::Mkdir {
            path: p.clone(),
            mode: 0o777,
        });
    }
    if !deep {
        let create = |path: &str| Op::Create {
            slot: 0,
            path: path.into(),
            mode: 0o644,
            excl: true,
        };
        let write = Op::Write {
            slot: 0,
            off: 0,
            len: 100,
            byte: b'q',
        };
        ops.extend([
            create("a"),
            write.clone(),
            Op::Close { slot: 0 },
            Op::Link {
                from: "a".into(),
                to: "d1/h".into(),
            },
            Op::Symlink {
                target: "a".into(),
                path: "s".into(),
            },
            Op::Mknod {
                path: "d3/p".into(),
                kind: libc::S_IFIFO,
                mode: 0o640,
            },
            Op::Chown {
                path: "d3/p".into(),
                uid: 1000,
                gid: 1000,
            },
            Op::SetXattr {
                path: "a".into(),
                name: "user.a".into(),
                value: "1".into(),
            },
            Op::Mkdir {
                path: "d1/d2/e".into(),
                mode: 0o755,
            },
            create("d1/d2/e/f"),
            write,
            Op::Close { slot: 0 },
            // A name whose whiteout `.wh.NAME` is longer than NAME_MAX.
            create(&format!("d3/{}", long('L'))),
            Op::Close { slot: 0 },
        ]);
    }
    for op in ops {
        let r = side.apply(&op, false);
        assert!(r.is_ok(), "{}: setup {op:?}: {r:?}", side.name);
    }
    side.last = tree(side);
}

/// Per operation kind: (succeeded, failed) on the oracle.
type Stats = BTreeMap<String, (usize, usize)>;

fn run_seed(
    ctimes: bool,
    seed: u64,
    oracle: &mut Side,
    staged: &mut Side,
    stats: &mut Stats,
    log: &dyn Fn() -> String,
) {
    let mut g = Gen::new(seed);
    if !ctimes {
        // The base variant: start from the base's names, a long one among them.
        g.known = ["a", "d1/h", "s", "d3/p", "d1/d2/e/f", "d1/d2/e"]
            .iter()
            .map(|p| p.to_string())
            .chain([format!("d3/{}", long('L'))])
            .collect();
    }
    let deep = deep();
    let mut history: Vec<String> = Vec::new();
    for i in 0..OPS {
        let op = g.op();
        let user = g.rng.chance(30);
        if !ctimes && moves_a_base_dir(&op) {
            continue;
        }
        let want = oracle.apply(&op, user);
        let got = staged.apply(&op, user);
        let kind = format!("{op:?}")
            .split([' ', '{'])
            .next()
            .unwrap()
            .to_string();
        let e = stats
            .entry(format!(
                "{kind} {}",
                want.as_ref().err().copied().unwrap_or(0)
            ))
            .or_default();
        match &want {
            Ok(_) => e.0 += 1,
            Err(_) => e.1 += 1,
        }
        history.push(
            format!(
                "#{i} {}{op:?} -> {want:?}",
                if user { "(as nobody) " } else { "" }
            )
            .replace(&deep, "DEEP")
            .replace(&long('L'), "L255")
            .replace(&long('M'), "M255"),
        );
        let fail = |what: &str| -> ! {
            panic!(
                "seed {seed} (REGFS_POSIX_SEED={seed} to replay), op #{i}: {what}\n--- operations ---\n{}\n--- daemon log (tail) ---\n{}",
                history.iter().map(|h| h.chars().take(400).collect::<String>()).collect::<Vec<_>>().join("\n"),
                log()
            )
        };
        if want.is_ok() {
            g.made(&op);
        }
        if whiteout_name(&op) {
            continue;
        }
        if want != got {
            fail(&format!("tmpfs {want:?}, export {got:?}"));
        }
        let (tw, ts) = (tree(oracle), tree(staged));

        let (mut dw, ds) = (
            describe(&tw, &oracle.last, ctimes),
            describe(&ts, &staged.last, ctimes),
        );
        if want.is_ok() {
            excuse_timestamp_floor(&mut dw, &ds, &parents_changed(&op));
        }
        if dw != ds {
            let mut diff = String::new();
            for l in dw.iter().filter(|l| !ds.contains(l)) {
                let _ = writeln!(diff, "tmpfs:  {}", l.chars().take(600).collect::<String>());
            }
            for l in ds.iter().filter(|l| !dw.contains(l)) {
                let _ = writeln!(diff, "export: {}", l.chars().take(600).collect::<String>());
            }
            fail(&format!("trees differ after the operation:\n{diff}"));
        }
        oracle.last = tw;
        staged.last = ts;
    }
}

#[test]
fn random_operations_match_tmpfs() {
    differential(false);
}

/// The same on an entry made `--from` an image (pushed from an entry with the
/// same starting tree as the tmpfs one): copy-up, whiteouts, base hard links.
#[test]
fn random_operations_on_a_base_match_tmpfs() {
    differential(true);
}

fn differential(from_base: bool) {
    require_fuse!();
    let (_d, t) = mount_tmpfs();
    let _u = Unmount(t.parent().unwrap().to_path_buf());
    let reg = Registry::start(RegistryKind::Plain);
    let em = ExportMount::new(&reg, &["--allow-other"]);
    let seeds: Vec<u64> = match std::env::var("REGFS_POSIX_SEED") {
        Ok(s) => vec![s.parse().expect("REGFS_POSIX_SEED is a number")],
        Err(_) => {
            let base = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            (0..1000).map(|i| base.wrapping_add(i * 7919)).collect()
        }
    };
    let start = Instant::now();
    let mut ran = 0;
    let mut stats = Stats::new();
    for (n, seed) in seeds.into_iter().enumerate() {
        let budget = std::env::var("REGFS_POSIX_SECS")
            .map(|s| Duration::from_secs(s.parse().expect("REGFS_POSIX_SECS is a number")))
            .unwrap_or(BUDGET);
        if n > 0 && start.elapsed() > budget {
            break;
        }
        std::fs::create_dir(&t).ok();
        let ot = t.join(format!("s{n}"));
        std::fs::create_dir(&ot).unwrap();
        let mut oracle = Side::new("tmpfs", &ot);
        setup(&mut oracle, !from_base);
        let mut staged = if from_base {
            let base = format!("pbase{n}:1");
            std::fs::create_dir(em.entry(&base)).unwrap();
            setup(&mut Side::new("export base", &em.entry(&base)), false);
            em.commit(&base);
            let entry = em.entry(&format!("pderived{n}:1"));
            let out = em.regfs(&["export", "new", entry.to_str().unwrap(), "--from", &base]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut side = Side::new("export", &entry);
            let top = Op::Chmod {
                path: ".".into(),
                mode: 0o777,
            };
            assert_eq!(side.apply(&top, false), Ok("0".into()));
            side.last = tree(&side);
            side
        } else {
            let entry = em.entry(&format!("posix{n}:1"));
            std::fs::create_dir(&entry).unwrap();
            let mut side = Side::new("export", &entry);
            setup(&mut side, true);
            side
        };
        eprintln!("posix_diff: seed {seed}");
        run_seed(
            !from_base,
            seed,
            &mut oracle,
            &mut staged,
            &mut stats,
            &|| {
                let l = em.mount.log();
                l.lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
        ran += 1;
    }
    eprintln!(
        "posix_diff: {ran} seed(s) of {OPS} operations in {:?}; (ok, failed) per kind: {stats:?}",
        start.elapsed()
    );
}
