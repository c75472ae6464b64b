//! The snapshotter's directories on local disk:
//!
//! ```text
//! ROOT/metadata.json         the records (meta)
//! ROOT/snapshots/<id>/fs     an ordinary snapshot's tree (upper dir when active),
//!                            or, for a remote snapshot, a symlink to the regfs
//!                            mount's layer directory (a path without ':')
//! ROOT/snapshots/<id>/work   overlayfs's work dir (active snapshots)
//! ```

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::meta::Usage;

/// Where the snapshots live.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root` (created if missing).
    pub fn open(root: &Path) -> Result<Self> {
        let snaps = root.join("snapshots");
        std::fs::create_dir_all(&snaps)
            .map_err(|e| Error::io(format!("creating {}", snaps.display()), e))?;
        Ok(Layout {
            root: root.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `ROOT/snapshots`.
    pub fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    /// `ROOT/snapshots/<id>`.
    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots_dir().join(id.to_string())
    }

    /// `ROOT/snapshots/<id>/fs`.
    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    /// `ROOT/snapshots/<id>/work`.
    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Make a local snapshot's `fs` (and `work` when it will be an overlay's
    /// upper dir).
    pub fn create_local(&self, id: u64, work: bool) -> Result<()> {
        let mk = |p: PathBuf| {
            std::fs::create_dir_all(&p)
                .map_err(|e| Error::io(format!("creating {}", p.display()), e))
        };
        mk(self.fs(id))?;
        if work {
            mk(self.work(id))?;
        }
        Ok(())
    }

    /// Make a remote snapshot's `fs`: a symlink to `target` (replacing an
    /// old one, so a remount elsewhere is followed).
    pub fn link_remote(&self, id: u64, target: &Path) -> Result<()> {
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let fs = self.fs(id);
        let tmp = dir.join("fs.tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(target, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &fs))
            .map_err(|e| Error::io(format!("linking {}", fs.display()), e))
    }

    /// Delete a snapshot's directory (and everything in it; never follows
    /// the remote symlink).
    pub fn remove(&self, id: u64) -> Result<()> {
        remove_tree(&self.dir(id))
    }

    /// The snapshot ids that have a directory.
    pub fn ids_on_disk(&self) -> Result<Vec<u64>> {
        let d = self.snapshots_dir();
        let rd =
            std::fs::read_dir(&d).map_err(|e| Error::io(format!("listing {}", d.display()), e))?;
        Ok(rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect())
    }
}

fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", p.display()), e)),
    }
}

/// Bytes and inodes under `p` (not following symlinks, each hard-linked inode
/// once), as containerd's `fs.DiskUsage`.
pub fn disk_usage(p: &Path) -> Result<Usage> {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![p.to_path_buf()];
    while let Some(path) = stack.pop() {
        let md = std::fs::symlink_metadata(&path)
            .map_err(|e| Error::io(format!("measuring {}", path.display()), e))?;
        if seen.insert((md.dev(), md.ino())) {
            usage.inodes += 1;
            usage.size += (md.blocks() * 512) as i64;
        }
        if md.is_dir() {
            let rd = std::fs::read_dir(&path)
                .map_err(|e| Error::io(format!("measuring {}", path.display()), e))?;
            for e in rd {
                let e = e.map_err(|e| Error::io(format!("measuring {}", path.display()), e))?;
                stack.push(e.path());
            }
        }
    }
    Ok(usage)
}
