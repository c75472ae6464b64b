//! Inode numbers for the layer store's own nodes (reference and layer
//! directories, `info` files), kept apart from the filesystem's numbers by
//! [`super::ALS_INO_BIT`]. Like [`crate::fs::InodeTable`]: one number per
//! key, never reused, dropped when the kernel forgets its last reference.

use std::collections::HashMap;
use std::hash::Hash;
use std::path::Path;
use std::sync::Mutex;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fs::journal::Journal;

struct Inner<K> {
    by_key: HashMap<K, u64>,
    by_ino: HashMap<u64, (K, u64)>,
    next: u64,
    /// Operations recorded for the next server (see `crate::fs::journal`).
    journal: Option<Journal>,
}

/// One journaled operation.
#[derive(Serialize, Deserialize)]
enum Op<K> {
    #[serde(rename = "h")]
    HandOut(K, bool),
    #[serde(rename = "f")]
    Forget(u64, u64),
}

impl<K: Clone + Eq + Hash> Inner<K> {
    fn hand_out(&mut self, key: K, referenced: bool) -> u64 {
        let ino = match self.by_key.get(&key) {
            Some(&ino) => ino,
            None => {
                let ino = super::ALS_INO_BIT | self.next;
                self.next += 1;
                self.by_key.insert(key.clone(), ino);
                self.by_ino.insert(ino, (key, 0));
                ino
            }
        };
        if referenced {
            self.by_ino.get_mut(&ino).expect("just handed out").1 += 1;
        }
        ino
    }

    fn forget(&mut self, ino: u64, n: u64) {
        let gone = match self.by_ino.get_mut(&ino) {
            Some((_, refs)) => {
                *refs = refs.saturating_sub(n);
                *refs == 0
            }
            None => false,
        };
        if gone {
            if let Some((k, _)) = self.by_ino.remove(&ino) {
                self.by_key.remove(&k);
            }
        }
    }
}

/// Key ↔ inode number, with the kernel's reference counts.
pub(super) struct Table<K> {
    inner: Mutex<Inner<K>>,
}

impl<K: Clone + Eq + Hash + Serialize + DeserializeOwned> Table<K> {
    pub(super) fn new() -> Table<K> {
        Table {
            inner: Mutex::new(Inner {
                by_key: HashMap::new(),
                by_ino: HashMap::new(),
                next: 1,
                journal: None,
            }),
        }
    }

    /// A table journaled at `path`, after replaying what is there.
    pub(super) fn with_journal(path: &Path) -> std::io::Result<Table<K>> {
        let t = Table::new();
        let (ops, journal) = Journal::open::<Op<K>>(path)?;
        let mut i = t.inner.lock().unwrap();
        for op in ops {
            match op {
                Op::HandOut(k, r) => {
                    i.hand_out(k, r);
                }
                Op::Forget(ino, n) => i.forget(ino, n),
            }
        }
        i.journal = Some(journal);
        drop(i);
        Ok(t)
    }

    /// The number of `key`, with one more kernel reference if `referenced`.
    pub(super) fn hand_out(&self, key: K, referenced: bool) -> u64 {
        let mut i = self.inner.lock().unwrap();
        let ino = i.hand_out(key.clone(), referenced);
        if let Some(j) = i.journal.as_mut() {
            j.append(&Op::HandOut(key, referenced));
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
        i.forget(ino, n);
        if let Some(j) = i.journal.as_mut() {
            j.append(&Op::<K>::Forget(ino, n));
        }
    }
}
