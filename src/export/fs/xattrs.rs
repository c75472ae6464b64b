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
        Ok(xattr::set(&real, name, value, flags)?)
    }

    /// Remove xattr `name` of `ino`.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let (_v, real) = self.upper_of(ino)?;
        Ok(xattr::remove(&real, name)?)
    }
}
