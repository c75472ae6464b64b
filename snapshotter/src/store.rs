//! The snapshots and what may be done to them, with the semantics of
//! containerd's `snapshots/storage` metastore: keys are unique across kinds;
//! a parent must exist and be committed; Commit turns an active snapshot into
//! a committed one under a new name; a snapshot with children cannot be
//! removed; only labels can be updated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::layout::{disk_usage, Layout};
use crate::meta::{Kind, Meta, MetaFile, Snapshot, Stamp, Usage};

/// The snapshot store: records in memory, mirrored to `metadata.json` after
/// every change; directories in a [`Layout`].
#[derive(Debug)]
pub struct Store {
    layout: Layout,
    file: MetaFile,
    meta: Mutex<Meta>,
    mount_root: PathBuf,
}

/// A snapshot with its parents, nearest first.
#[derive(Debug, Clone)]
pub struct Chain {
    /// The snapshot.
    pub snapshot: Snapshot,
    /// Its parents' records, nearest first.
    pub parents: Vec<Snapshot>,
}

impl Store {
    /// Open (or create) the store under `root`. Remote snapshots point into
    /// the regfs mount at `mount_root`; their symlinks are remade there, so a
    /// store survives regfs being mounted again (even elsewhere).
    pub fn open(root: &Path, mount_root: &Path) -> Result<Self> {
        let layout = Layout::open(root)?;
        let file = MetaFile::new(root);
        let meta = file.load()?;
        for s in meta.snapshots.values() {
            if let Some(rel) = &s.remote {
                layout.link_remote(s.id, &mount_root.join(rel))?;
            }
        }
        Ok(Store {
            layout,
            file,
            meta: Mutex::new(meta),
            mount_root: mount_root.to_path_buf(),
        })
    }

    /// The directories.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    fn lock(&self) -> MutexGuard<'_, Meta> {
        self.meta.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new active or view snapshot `key` on top of `parent` ("" for none).
    pub fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Chain> {
        let mut meta = self.lock();
        check_new(&meta, key, parent)?;
        let id = meta.next_id;
        self.layout
            .create_local(id, kind == Kind::Active && !parent.is_empty())?;
        let now = Stamp::now();
        meta.next_id += 1;
        let snap = Snapshot {
            id,
            kind,
            parent: (!parent.is_empty()).then(|| parent.to_string()),
            labels,
            created: now,
            updated: now,
            remote: None,
            usage: Usage::default(),
        };
        meta.snapshots.insert(key.to_string(), snap);
        self.save(&meta)?;
        chain(&meta, key)
    }

    /// A committed remote snapshot `name` on top of `parent`, whose tree is
    /// the mount's directory `remote` (relative to the mount).
    pub fn add_remote(
        &self,
        name: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        remote: &str,
    ) -> Result<()> {
        let mut meta = self.lock();
        check_new(&meta, name, parent)?;
        let id = meta.next_id;
        self.layout.link_remote(id, &self.mount_root.join(remote))?;
        meta.next_id += 1;
        let now = Stamp::now();
        let snap = Snapshot {
            id,
            kind: Kind::Committed,
            parent: (!parent.is_empty()).then(|| parent.to_string()),
            labels,
            created: now,
            updated: now,
            remote: Some(remote.to_string()),
            usage: Usage::default(),
        };
        meta.snapshots.insert(name.to_string(), snap);
        self.save(&meta)
    }

    /// Commit the active snapshot `key` as `name` (labels replaced by `labels`).
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        let id = active(&self.lock(), key)?.id;
        // Measured outside the lock: the tree can be large.
        let usage = disk_usage(&self.layout.fs(id))?;
        let mut meta = self.lock();
        let snap = active(&meta, key)?.clone();
        if meta.snapshots.contains_key(name) {
            return Err(Error::AlreadyExists(format!("snapshot {name:?}")));
        }
        meta.snapshots.remove(key);
        let now = Stamp::now();
        meta.snapshots.insert(
            name.to_string(),
            Snapshot {
                kind: Kind::Committed,
                labels,
                updated: now,
                usage,
                ..snap
            },
        );
        self.save(&meta)?;
        // The work dir is an active snapshot's only.
        let _ = std::fs::remove_dir_all(self.layout.work(id));
        Ok(())
    }

    /// Remove `key` and its directory; refused while it has children.
    pub fn remove(&self, key: &str) -> Result<()> {
        let mut meta = self.lock();
        let snap = get(&meta, key)?.clone();
        if let Some(child) = meta
            .snapshots
            .iter()
            .find(|(_, s)| s.parent.as_deref() == Some(key))
        {
            return Err(Error::FailedPrecondition(format!(
                "cannot remove snapshot {key:?}: snapshot {:?} is its child",
                child.0
            )));
        }
        meta.snapshots.remove(key);
        self.save(&meta)?;
        drop(meta);
        self.layout.remove(snap.id)
    }

    /// The snapshot `key`.
    pub fn stat(&self, key: &str) -> Result<Snapshot> {
        get(&self.lock(), key).cloned()
    }

    /// An active or view snapshot with its parents (for its mounts).
    pub fn mountable(&self, key: &str) -> Result<Chain> {
        let meta = self.lock();
        let s = get(&meta, key)?;
        if s.kind == Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "snapshot {key:?} is committed, not active or a view"
            )));
        }
        chain(&meta, key)
    }

    /// Update labels as containerd's `UpdateInfo`: with no `paths`, all
    /// labels are replaced; `labels` replaces them all, `labels.K` one (an
    /// empty or missing value deletes it); other fields are immutable.
    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Snapshot> {
        let mut meta = self.lock();
        let mut snap = get(&meta, key)?.clone();
        if paths.is_empty() {
            snap.labels = labels;
        } else {
            for p in paths {
                if p == "labels" {
                    snap.labels = labels.clone();
                } else if let Some(k) = p.strip_prefix("labels.") {
                    match labels.get(k).filter(|v| !v.is_empty()) {
                        Some(v) => snap.labels.insert(k.to_string(), v.clone()),
                        None => snap.labels.remove(k),
                    };
                } else {
                    return Err(Error::InvalidArgument(format!(
                        "cannot update field {p:?} of snapshot {key:?}"
                    )));
                }
            }
        }
        snap.updated = Stamp::now();
        meta.snapshots.insert(key.to_string(), snap.clone());
        self.save(&meta)?;
        Ok(snap)
    }

    /// Every snapshot, by key.
    pub fn list(&self) -> Vec<(String, Snapshot)> {
        let meta = self.lock();
        meta.snapshots
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    /// Disk usage: measured now for an active snapshot, as measured at Commit
    /// otherwise (a remote snapshot uses no local disk).
    pub fn usage(&self, key: &str) -> Result<Usage> {
        let snap = self.stat(key)?;
        match snap.kind {
            Kind::Active => disk_usage(&self.layout.fs(snap.id)),
            _ => Ok(snap.usage),
        }
    }

    /// Delete directories no snapshot owns (left by a crash between the
    /// metadata write and the directory removal); returns how many.
    pub fn cleanup(&self) -> Result<usize> {
        let known: std::collections::HashSet<u64> =
            self.lock().snapshots.values().map(|s| s.id).collect();
        let next = self.lock().next_id;
        let mut n = 0;
        for id in self.layout.ids_on_disk()? {
            // An id at or past next_id is being created right now.
            if !known.contains(&id) && id < next {
                self.layout.remove(id)?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn save(&self, meta: &Meta) -> Result<()> {
        self.file.save(meta)
    }
}

fn get<'m>(meta: &'m Meta, key: &str) -> Result<&'m Snapshot> {
    meta.snapshots
        .get(key)
        .ok_or_else(|| Error::NotFound(format!("snapshot {key:?}")))
}

fn active<'m>(meta: &'m Meta, key: &str) -> Result<&'m Snapshot> {
    let s = get(meta, key)?;
    if s.kind != Kind::Active {
        return Err(Error::FailedPrecondition(format!(
            "snapshot {key:?} is not active"
        )));
    }
    Ok(s)
}

fn check_new(meta: &Meta, key: &str, parent: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument("snapshot key is empty".into()));
    }
    if meta.snapshots.contains_key(key) {
        return Err(Error::AlreadyExists(format!("snapshot {key:?}")));
    }
    if !parent.is_empty() {
        let p = meta
            .snapshots
            .get(parent)
            .ok_or_else(|| Error::NotFound(format!("parent snapshot {parent:?}")))?;
        if p.kind != Kind::Committed {
            return Err(Error::FailedPrecondition(format!(
                "parent snapshot {parent:?} is not committed"
            )));
        }
    }
    Ok(())
}

fn chain(meta: &Meta, key: &str) -> Result<Chain> {
    let snapshot = get(meta, key)?.clone();
    let mut parents = Vec::new();
    let mut next = snapshot.parent.clone();
    while let Some(p) = next {
        let s = get(meta, &p)?;
        next = s.parent.clone();
        parents.push(s.clone());
    }
    Ok(Chain { snapshot, parents })
}

#[cfg(test)]
mod tests;
