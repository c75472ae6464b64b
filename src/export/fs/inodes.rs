//! Inode numbers for the export filesystem: one per path, except that the
//! names of one hard-linked file share a number (keyed by the file's
//! identity), so `stat` shows them as one inode.

use std::collections::HashMap;

/// The root directory's inode.
pub const ROOT: u64 = 1;

/// The identity of a hard-linked object: a real `(dev, ino)` in the staging
/// tree, or a base tree node (`dev` = [`BASE_DEV`]).
pub type Identity = (u64, u64);

/// `dev` of identities of base tree nodes.
pub const BASE_DEV: u64 = u64::MAX;

/// The table: ino ↔ paths (`entry/rel/path`, `""` for the root).
#[derive(Debug)]
pub struct Inodes {
    by_path: HashMap<Vec<u8>, u64>,
    paths: HashMap<u64, Vec<Vec<u8>>>,
    by_identity: HashMap<Identity, u64>,
    next: u64,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_path: HashMap::new(),
            paths: HashMap::new(),
            by_identity: HashMap::new(),
            next: ROOT + 1,
        };
        t.by_path.insert(Vec::new(), ROOT);
        t.paths.insert(ROOT, vec![Vec::new()]);
        t
    }
}

impl Inodes {
    /// The inode of `path`, allocated if new; `identity` for hard-linked objects.
    pub fn ino(&mut self, path: &[u8], identity: Option<Identity>) -> u64 {
        if let Some(id) = identity {
            if let Some(&ino) = self.by_identity.get(&id) {
                if self.by_path.get(path) != Some(&ino) {
                    if let Some(old) = self.by_path.insert(path.to_vec(), ino) {
                        self.drop_path(old, path);
                    }
                    self.paths.entry(ino).or_default().push(path.to_vec());
                }
                return ino;
            }
        }
        let ino = match self.by_path.get(path) {
            Some(&i) => i,
            None => {
                let i = self.next;
                self.next += 1;
                self.by_path.insert(path.to_vec(), i);
                self.paths.insert(i, vec![path.to_vec()]);
                i
            }
        };
        if let Some(id) = identity {
            self.by_identity.insert(id, ino);
        }
        ino
    }

    /// Give `ino` a new identity (a base node copied up becomes a real file).
    pub fn set_identity(&mut self, ino: u64, identity: Identity) {
        self.by_identity.insert(identity, ino);
    }

    /// A path of `ino`.
    pub fn path(&self, ino: u64) -> Option<Vec<u8>> {
        self.paths.get(&ino).and_then(|p| p.first().cloned())
    }

    /// All known paths of `ino`.
    pub fn paths(&self, ino: u64) -> Vec<Vec<u8>> {
        self.paths.get(&ino).cloned().unwrap_or_default()
    }

    fn drop_path(&mut self, ino: u64, path: &[u8]) {
        if let Some(v) = self.paths.get_mut(&ino) {
            // Keep the last path of an unlinked inode: open handles still name it.
            if v.len() > 1 {
                v.retain(|p| p != path);
            }
        }
    }

    /// `path` is gone (unlink, rmdir, replaced by a rename).
    pub fn remove(&mut self, path: &[u8]) {
        if let Some(ino) = self.by_path.remove(path) {
            self.drop_path(ino, path);
        }
    }

    /// `from` (and everything under it) is now `to`.
    pub fn rename(&mut self, from: &[u8], to: &[u8]) {
        self.remove(to);
        let under =
            |p: &[u8]| p == from || (p.starts_with(from) && p.get(from.len()) == Some(&b'/'));
        let moved: Vec<(Vec<u8>, u64)> = self
            .by_path
            .iter()
            .filter(|(p, _)| under(p))
            .map(|(p, &i)| (p.clone(), i))
            .collect();
        for (old, ino) in moved {
            let mut new = to.to_vec();
            new.extend_from_slice(&old[from.len()..]);
            self.by_path.remove(&old);
            if let Some(old_ino) = self.by_path.insert(new.clone(), ino) {
                if old_ino != ino {
                    self.drop_path(old_ino, &new);
                }
            }
            if let Some(v) = self.paths.get_mut(&ino) {
                for p in v.iter_mut() {
                    if *p == old {
                        *p = new.clone();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_links_and_renames() {
        let mut t = Inodes::default();
        let a = t.ino(b"e:1/a", None);
        assert_eq!(t.ino(b"e:1/a", None), a);
        let l1 = t.ino(b"e:1/l1", Some((1, 7)));
        let l2 = t.ino(b"e:1/l2", Some((1, 7)));
        assert_eq!(l1, l2);
        t.remove(b"e:1/l1");
        assert_eq!(t.path(l1).unwrap(), b"e:1/l2");
        let d = t.ino(b"e:1/d", None);
        let f = t.ino(b"e:1/d/f", None);
        t.rename(b"e:1/d", b"e:1/x");
        assert_eq!(t.path(d).unwrap(), b"e:1/x");
        assert_eq!(t.path(f).unwrap(), b"e:1/x/f");
        assert_eq!(t.ino(b"e:1/x/f", None), f);
        assert_ne!(t.ino(b"e:1/d/f", None), f);
    }
}
