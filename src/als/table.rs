//! Inode numbers for the layer store's own nodes (reference and layer
//! directories, `info` files), kept apart from the filesystem's numbers by
//! [`super::ALS_INO_BIT`]. Like [`crate::fs::InodeTable`]: one number per
//! key, never reused, dropped when the kernel forgets its last reference.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

struct Inner<K> {
    by_key: HashMap<K, u64>,
    by_ino: HashMap<u64, (K, u64)>,
    next: u64,
}

/// Key ↔ inode number, with the kernel's reference counts.
pub(super) struct Table<K> {
    inner: Mutex<Inner<K>>,
}

impl<K: Clone + Eq + Hash> Table<K> {
    pub(super) fn new() -> Table<K> {
        Table {
            inner: Mutex::new(Inner {
                by_key: HashMap::new(),
                by_ino: HashMap::new(),
                next: 1,
            }),
        }
    }

    /// The number of `key`, with one more kernel reference if `referenced`.
    pub(super) fn hand_out(&self, key: K, referenced: bool) -> u64 {
        let mut i = self.inner.lock().unwrap();
        let ino = match i.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = super::ALS_INO_BIT | i.next;
                i.next += 1;
                i.by_key.insert(key.clone(), ino);
                i.by_ino.insert(ino, (key, 0));
                ino
            }
        };
        if referenced {
            i.by_ino.get_mut(&ino).expect("just handed out").1 += 1;
        }
        ino
    }

    /// The key of `ino`, if the table holds it.
    pub(super) fn key(&self, ino: u64) -> Option<K> {
        self.inner
            .lock()
            .unwrap()
            .by_ino
            .get(&ino)
            .map(|(k, _)| k.clone())
    }

    /// The kernel dropped `n` references to `ino`.
    pub(super) fn forget(&self, ino: u64, n: u64) {
        let mut i = self.inner.lock().unwrap();
        let gone = match i.by_ino.get_mut(&ino) {
            Some((_, refs)) => {
                *refs = refs.saturating_sub(n);
                *refs == 0
            }
            None => false,
        };
        if gone {
            if let Some((k, _)) = i.by_ino.remove(&ino) {
                i.by_key.remove(&k);
            }
        }
    }
}
