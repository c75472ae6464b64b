//! The inode table: stable numbers for the paths the kernel has seen.
//!
//! Every node of the tree has a [`Key`] that says what it is; the table hands out
//! one inode number per key and maps numbers back to keys. Numbers are never
//! reused during a mount, so a kernel holding an old number gets ENOENT rather
//! than another file's bytes. The kernel's lookup counts are tracked, and an
//! inode it forgets is dropped: the table holds what the kernel holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::digest::Digest;
use crate::layer::NodeId;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;

/// Which tree of an image a tree node belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TreeWhich {
    /// The merged root filesystem.
    Rootfs,
    /// One layer, by its position in the manifest (0 = bottom).
    Layer(usize),
}

/// An image's tree: rootfs or one layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TreeId {
    /// Repository the image is read from.
    pub repo: Arc<str>,
    /// Manifest digest.
    pub image: Digest,
    /// Which tree.
    pub which: TreeWhich,
}

/// What an inode is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    /// The mount's root.
    Root,
    /// A namespace directory (`lab`, `lab/team`).
    Namespace(Arc<str>),
    /// A `name:tag` symlink showing one resolution of the tag. The kernel
    /// caches symlink targets, so a tag that moves gets a new inode (the next
    /// lookup after the tag TTL finds it); empty `target`: listed, not yet resolved.
    Tag {
        /// Repository.
        repo: Arc<str>,
        /// Tag.
        tag: Arc<str>,
        /// `name@sha256:…`, or empty if not resolved yet.
        target: Arc<str>,
    },
    /// A `name@digest` directory (image or index).
    Image {
        /// Repository.
        repo: Arc<str>,
        /// Manifest digest.
        digest: Digest,
    },
    /// `manifest.json` or `index.json`.
    ManifestFile {
        /// Repository.
        repo: Arc<str>,
        /// Manifest digest.
        digest: Digest,
    },
    /// `config.json`.
    ConfigFile {
        /// Repository.
        repo: Arc<str>,
        /// Manifest digest.
        digest: Digest,
    },
    /// `blobs/`.
    BlobsDir {
        /// Repository.
        repo: Arc<str>,
        /// Manifest digest.
        digest: Digest,
    },
    /// `blobs/sha256:…`.
    Blob {
        /// Repository.
        repo: Arc<str>,
        /// Manifest digest.
        image: Digest,
        /// The blob.
        blob: Digest,
    },
    /// `layers/`.
    LayersDir {
        /// Repository.
        repo: Arc<str>,
        /// Manifest digest.
        digest: Digest,
    },
    /// A platform symlink in an index directory.
    Platform {
        /// Repository.
        repo: Arc<str>,
        /// Index digest.
        index: Digest,
        /// The entry's position in the index.
        entry: usize,
    },
    /// A node of a layer tree or of the merged rootfs.
    Node {
        /// The tree.
        tree: Arc<TreeId>,
        /// The node.
        node: NodeId,
    },
}

/// Key ↔ inode number.
#[derive(Default)]
pub struct InodeTable {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<Key, u64>,
    /// The key and the kernel's lookup count.
    by_ino: HashMap<u64, (Key, u64)>,
    next: u64,
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new() -> Self {
        let t = InodeTable::default();
        {
            let mut i = t.inner.lock().unwrap();
            i.by_key.insert(Key::Root, ROOT_INO);
            i.by_ino.insert(ROOT_INO, (Key::Root, 1));
            i.next = ROOT_INO + 1;
        }
        t
    }

    /// The inode number of `key`, allocating one the first time (for listings:
    /// the kernel does not count these).
    pub fn ino(&self, key: Key) -> u64 {
        self.get_or_insert(key, 0)
    }

    /// The inode number of `key` for a lookup reply: the kernel now holds one
    /// more reference, released by [`InodeTable::forget`].
    pub fn lookup(&self, key: Key) -> u64 {
        self.get_or_insert(key, 1)
    }

    fn get_or_insert(&self, key: Key, refs: u64) -> u64 {
        let mut i = self.inner.lock().unwrap();
        if let Some(&n) = i.by_key.get(&key) {
            if let Some(e) = i.by_ino.get_mut(&n) {
                e.1 += refs;
            }
            return n;
        }
        let n = i.next;
        i.next += 1;
        i.by_ino.insert(n, (key.clone(), refs));
        i.by_key.insert(key, n);
        n
    }

    /// One more kernel reference to an inode handed out by a listing.
    pub fn add_ref(&self, ino: u64) {
        if let Some(e) = self.inner.lock().unwrap().by_ino.get_mut(&ino) {
            e.1 += 1;
        }
    }

    /// The kernel dropped `nlookup` references to `ino`; at zero the inode goes.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut i = self.inner.lock().unwrap();
        let gone = match i.by_ino.get_mut(&ino) {
            Some(e) => {
                e.1 = e.1.saturating_sub(nlookup);
                e.1 == 0
            }
            None => false,
        };
        if gone {
            if let Some((key, _)) = i.by_ino.remove(&ino) {
                i.by_key.remove(&key);
            }
        }
    }

    /// The key of inode `ino`, if it was handed out.
    pub fn key(&self, ino: u64) -> Option<Key> {
        self.inner
            .lock()
            .unwrap()
            .by_ino
            .get(&ino)
            .map(|(k, _)| k.clone())
    }

    /// Number of inodes handed out.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().by_ino.len()
    }

    /// Whether only the root exists.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgotten_inodes_go_and_numbers_are_not_reused() {
        let t = InodeTable::new();
        let k = Key::Namespace("lab".into());
        let a = t.lookup(k.clone());
        assert_eq!(t.lookup(k.clone()), a);
        assert_eq!(t.ino(k.clone()), a, "a listing sees the same number");
        t.forget(a, 1);
        assert_eq!(t.key(a), Some(k.clone()), "one reference left");
        t.forget(a, 1);
        assert_eq!(t.key(a), None);
        assert_eq!(t.len(), 1);
        let b = t.lookup(k);
        assert_ne!(a, b);
        t.forget(ROOT_INO, 100);
        assert_eq!(t.key(ROOT_INO), Some(Key::Root));
    }
}
