//! Extended attributes of staged files (and of the base view through copy-up).

use super::*;
use crate::export::xattr;

impl ExportFs {
    /// The value of xattr `name` of `ino`.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let p = self.path_of(ino)?;
        match locate(&p)? {
            Loc::Root if name == SOCKET_XATTR => match &self.socket {
                Some(s) => Ok(s.as_os_str().as_bytes().to_vec()),
                None => Err(err(libc::ENODATA)),
            },
            Loc::Entry { entry, rel } => {
                let view = self.view(&entry)?;
                match view.resolve(&rel)? {
                    Obj::Upper { path, .. } => Ok(xattr::get(&path, name)?),
                    Obj::Base { node, .. } => view
                        .base
                        .as_ref()
                        .and_then(|b| b.tree.node(node).xattr(name).map(<[u8]>::to_vec))
                        .ok_or_else(|| err(libc::ENODATA)),
                }
            }
            _ => Err(err(libc::ENODATA)),
        }
    }

    /// The xattr names of `ino`.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let p = self.path_of(ino)?;
        match locate(&p)? {
            Loc::Entry { entry, rel } => {
                let view = self.view(&entry)?;
                match view.resolve(&rel)? {
                    Obj::Upper { path, .. } => Ok(xattr::list(&path)?),
                    Obj::Base { node, .. } => Ok(view
                        .base
                        .as_ref()
                        .map(|b| {
                            b.tree
                                .node(node)
                                .xattrs
                                .iter()
                                .map(|(k, _)| k.clone())
                                .collect()
                        })
                        .unwrap_or_default()),
                }
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Set xattr `name` of `ino`.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let (_v, real) = self.upper_of(ino)?;
        xattr::set(&real, name, value, flags)?;
        touch_ctime(&real)?;
        Ok(())
    }

    /// Remove xattr `name` of `ino`.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let (_v, real) = self.upper_of(ino)?;
        Ok(xattr::remove(&real, name)?)
    }
}

/// Set ctime to now: ext4 leaves it alone when an xattr is set to the value
/// it had, tmpfs and xfs do not. A chmod to the same mode does it (and,
/// unlike a chown, keeps setuid bits); a symlink has no mode to set.
fn touch_ctime(real: &std::path::Path) -> Result<()> {
    let real = short(real)?;
    let md = fs::symlink_metadata(&*real)?;
    if md.file_type().is_symlink() {
        std::os::unix::fs::lchown(&*real, None, None)?;
    } else {
        fs::set_permissions(&*real, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    Ok(())
}
