//! Staging paths longer than the kernel takes in one system call.
//!
//! A staged entry's tree lives under `STATE/entries/<ref>/root/`, so a path
//! the kernel accepted on the export mount (up to `PATH_MAX` bytes below the
//! entry, more through a directory descriptor) is longer still in staging,
//! and a plain `open` of it fails with `ENAMETOOLONG`. [`short`] gives an
//! equivalent path of at most [`LIMIT`] bytes: it opens a directory on the
//! way (`O_PATH`) and names the rest through `/proc/self/fd/N/`, as often as
//! needed. Every system call on a staging path goes through it; short paths
//! (nearly all) are passed through untouched, at no cost.

use std::ffi::{CString, OsStr};
use std::io;
use std::ops::Deref;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The longest path handed to a system call as it is (`PATH_MAX` is 4096;
/// a name of up to 255 bytes may still be joined to it).
pub const LIMIT: usize = 3072;

/// A path short enough for one system call, and the descriptors it goes
/// through (it is valid while this lives).
#[derive(Debug)]
pub struct Short {
    _dirs: Vec<OwnedFd>,
    path: PathBuf,
}

impl Deref for Short {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for Short {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

/// `path`, or an equivalent path of at most [`LIMIT`] bytes through
/// `/proc/self/fd` (the directories on the way must exist).
pub fn short(path: &Path) -> io::Result<Short> {
    let mut dirs = Vec::new();
    let mut cur = path.as_os_str().as_bytes().to_vec();
    while cur.len() > LIMIT {
        // The longest prefix that ends at a '/' and fits.
        let cut = cur[..=LIMIT]
            .iter()
            .rposition(|&c| c == b'/')
            .filter(|&i| i > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
        let dir =
            CString::new(&cur[..cut]).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a valid C string; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                dir.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut next = format!("/proc/self/fd/{}", fd.as_raw_fd()).into_bytes();
        next.extend_from_slice(&cur[cut..]);
        dirs.push(fd);
        cur = next;
    }
    Ok(Short {
        _dirs: dirs,
        path: PathBuf::from(OsStr::from_bytes(&cur)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_trees_are_reachable() {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().to_path_buf();
        for i in 0..20u8 {
            p.push(OsStr::from_bytes(&[b'a' + i; 255]));
            std::fs::create_dir(&*short(&p).unwrap()).unwrap();
        }
        assert!(p.as_os_str().len() > 5000);
        let f = p.join("file");
        std::fs::write(&*short(&f).unwrap(), b"x").unwrap();
        assert_eq!(std::fs::read(&*short(&f).unwrap()).unwrap(), b"x");
        assert!(short(&f).unwrap().as_os_str().len() <= LIMIT);
        let s = short(d.path()).unwrap();
        assert_eq!(&*s, d.path());
    }
}
