//! Path resolution inside a tree as a process chrooted into it sees it:
//! symlinks followed (absolute targets from the tree's root, relative ones
//! from the link's directory, `..` clamped at the root), at most
//! [`MAX_HOPS`] of them, as the kernel's `ELOOP` limit.

use super::tree::{NodeId, NodeKind, Tree};

/// Most symlinks followed in one resolution (Linux's limit).
pub const MAX_HOPS: usize = 40;

impl Tree {
    /// The node `path` names, following symlinks in every component;
    /// `None` if a component is missing, not a directory, or the links loop.
    pub fn resolve(&self, path: &[u8]) -> Option<NodeId> {
        let mut hops = 0;
        // Components still to walk, last first; and the directories walked.
        let mut todo: Vec<Vec<u8>> = components(path);
        let mut dirs: Vec<NodeId> = vec![self.root()];
        while let Some(name) = todo.pop() {
            let here = *dirs.last()?;
            match name.as_slice() {
                b"." => continue,
                b".." => {
                    if dirs.len() > 1 {
                        dirs.pop();
                    }
                    continue;
                }
                _ => {}
            }
            if !self.node(here).is_dir() {
                return None;
            }
            let id = self.lookup(here, &name)?;
            let node = self.node(id);
            if node.kind == NodeKind::Symlink {
                hops += 1;
                if hops > MAX_HOPS {
                    return None;
                }
                let target = node.link_target.as_deref()?;
                if target.starts_with(b"/") {
                    dirs.truncate(1);
                }
                todo.extend(components(target));
                continue;
            }
            dirs.push(id);
        }
        dirs.last().copied()
    }
}

/// The components of `path`, last first (a stack), empty ones dropped.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::layer::testutil::TarW;
    use crate::layer::{index_tar, Limits};

    fn tree() -> crate::layer::Tree {
        let mut w = TarW::new();
        w.dir(b"usr", 0o755)
            .dir(b"usr/bin", 0o755)
            .dir(b"usr/lib", 0o755);
        w.file(b"usr/bin/python3.11", b"\x7fELF...");
        w.symlink(b"usr/bin/python3", b"python3.11");
        w.symlink(b"bin", b"usr/bin");
        w.symlink(b"usr/lib/up", b"../../bin/python3");
        w.symlink(b"loop", b"loop");
        w.file(b"plain", b"x");
        let tar = w.finish();
        index_tar(&tar[..], 0, &Limits::default()).unwrap()
    }

    #[test]
    fn follows_relative_absolute_and_chained_links() {
        let t = tree();
        let target = t.lookup_path(b"usr/bin/python3.11").unwrap();
        for p in [
            &b"/usr/bin/python3"[..],
            b"/bin/python3",
            b"bin/python3.11",
            b"/usr/lib/up",
            b"/../../bin/./python3",
        ] {
            assert_eq!(t.resolve(p), Some(target), "{}", String::from_utf8_lossy(p));
        }
    }

    #[test]
    fn missing_loops_and_files_as_dirs_are_none() {
        let t = tree();
        assert_eq!(t.resolve(b"/usr/bin/nothing"), None);
        assert_eq!(t.resolve(b"/loop"), None);
        assert_eq!(t.resolve(b"/plain/x"), None);
        assert_eq!(t.resolve(b"/"), Some(t.root()));
    }
}
