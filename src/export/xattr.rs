//! Extended attributes of paths, without following symlinks (`l*xattr`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::longpath::{short, Short};

/// `p` as a C string, through [`short`] when it is long: the guard must live
/// as long as the string is used.
fn cpath(p: &Path) -> io::Result<(Short, CString)> {
    let s = short(p)?;
    let c = CString::new(s.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok((s, c))
}

fn cname(n: &[u8]) -> io::Result<CString> {
    CString::new(n).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The names of `path`'s extended attributes, sorted.
pub fn list(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let (_guard, p) = cpath(path)?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    }
    let mut names: Vec<Vec<u8>> = buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    names.sort();
    Ok(names)
}

/// The value of attribute `name` of `path`.
pub fn get(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let ((_guard, p), n) = (cpath(path)?, cname(name)?);
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ERANGE) && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 8, 0);
            continue;
        }
        return Err(e);
    }
}

/// Set attribute `name` of `path` (`flags`: `XATTR_CREATE`, `XATTR_REPLACE` or 0).
pub fn set(path: &Path, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let ((_guard, p), n) = (cpath(path)?, cname(name)?);
    // SAFETY: pointers valid for the given lengths.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Remove attribute `name` of `path`.
pub fn remove(path: &Path, name: &[u8]) -> io::Result<()> {
    let ((_guard, p), n) = (cpath(path)?, cname(name)?);
    // SAFETY: valid C strings.
    if unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// All attributes of `path` as (name, value), sorted by name.
pub fn all(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for n in list(path)? {
        match get(path, &n) {
            Ok(v) => out.push((n, v)),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}
