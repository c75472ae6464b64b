//! The inode table: stable numbers for the paths the kernel has seen.
//!
//! Every node of the tree has a [`Key`] that says what it is; the table hands out
//! one inode number per key and maps numbers back to keys. Numbers are never
//! reused during a mount, so a kernel holding an old number gets ENOENT rather
//! than another file's bytes. The kernel's lookup counts are tracked, and an
//! inode it forgets is dropped: the table holds what the kernel holds, plus a
//! bounded number of numbers it was shown without a reference (see
//! [`IDLE_MAX`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::journal::Journal;
use crate::digest::Digest;
use crate::layer::NodeId;

/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;

/// Which tree of an image a tree node belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TreeWhich {
    /// The merged root filesystem.
    Rootfs,
    /// One layer, by its position in the manifest (0 = bottom).
    Layer(usize),
}

/// An image's tree: rootfs or one layer.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TreeId {
    /// Repository the image is read from.
    pub repo: Arc<str>,
    /// Manifest digest.
    pub image: Digest,
    /// Which tree.
    pub which: TreeWhich,
}

/// What an inode is.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// `files/` of an artifact.
    FilesDir {
        /// Repository.
        repo: Arc<str>,
        /// Artifact manifest digest.
        digest: Digest,
    },
    /// `files/NAME`: one layer of an artifact.
    ArtifactFile {
        /// Repository.
        repo: Arc<str>,
        /// Artifact manifest digest.
        image: Digest,
        /// The layer's position in the manifest.
        index: usize,
    },
    /// `referrers/` of a manifest, or a directory of artifact-type
    /// components under it.
    Referrers {
        /// Repository.
        repo: Arc<str>,
        /// The manifest referred to.
        digest: Digest,
        /// The artifact-type components so far (`application/spdx+json`); empty at the top.
        prefix: Arc<str>,
    },
    /// `referrers/TYPE…/DIGEST`: a symlink to the referrer's directory.
    Referrer {
        /// The symlink's target.
        target: Arc<str>,
    },
    /// A node of a layer tree or of the merged rootfs.
    Node {
        /// The tree.
        tree: Arc<TreeId>,
        /// The node.
        node: NodeId,
    },
}

/// Unreferenced numbers (handed out by a plain `readdir`, or looked at by
/// `getattr` of a key the kernel does not hold) kept at most, by default.
pub const IDLE_MAX: usize = 65_536;

/// Key ↔ inode number.
///
/// The table holds every inode the kernel holds (counted by lookups and
/// readdirplus entries, released by forgets) plus at most `idle_max` numbers
/// the kernel does not reference, the least recently handed out leaving first.
/// A number is never reused for another key, and stays the same while the
/// kernel holds it.
pub struct InodeTable {
    inner: Mutex<Inner>,
}

impl Default for InodeTable {
    fn default() -> Self {
        InodeTable::new()
    }
}

struct Slot {
    key: Key,
    /// The kernel's lookup count.
    refs: u64,
    /// Position in `Inner::idle` while `refs` is 0.
    stamp: u64,
}

struct Inner {
    by_key: HashMap<Key, u64>,
    by_ino: HashMap<u64, Slot>,
    /// Unreferenced inodes by when they were last handed out (oldest first).
    idle: BTreeMap<u64, u64>,
    idle_max: usize,
    clock: u64,
    next: u64,
    /// Where operations are recorded for the next server (see [`super::journal`]).
    journal: Option<Journal>,
}

/// One operation of the table, as journaled.
#[derive(Serialize, Deserialize)]
enum Op {
    /// [`InodeTable::hand_out`].
    #[serde(rename = "h")]
    HandOut(Vec<Key>, bool),
    /// [`InodeTable::forget`].
    #[serde(rename = "f")]
    Forget(u64, u64),
    /// The whole table (a compacted journal).
    #[serde(rename = "s")]
    Snapshot(Snapshot),
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    clock: u64,
    next: u64,
    /// (number, key, references, stamp)
    slots: Vec<(u64, Key, u64, u64)>,
}

impl Inner {
    /// The number of `key` with `refs` more kernel references, in one step.
    fn hand_out(&mut self, key: Key, refs: u64) -> u64 {
        let n = match self.by_key.get(&key) {
            Some(&n) => n,
            None => {
                let n = self.next;
                self.next += 1;
                self.by_ino.insert(
                    n,
                    Slot {
                        key: key.clone(),
                        refs: 0,
                        stamp: 0,
                    },
                );
                self.by_key.insert(key, n);
                n
            }
        };
        self.clock += 1;
        let clock = self.clock;
        let slot = self.by_ino.get_mut(&n).expect("by_key and by_ino agree");
        if slot.refs == 0 {
            self.idle.remove(&slot.stamp);
        }
        slot.refs += refs;
        if slot.refs == 0 {
            slot.stamp = clock;
            self.idle.insert(clock, n);
        }
        n
    }

    /// Drop the oldest unreferenced inodes beyond the bound.
    fn trim(&mut self) {
        while self.idle.len() > self.idle_max {
            let Some((_, n)) = self.idle.pop_first() else {
                break;
            };
            self.remove(n);
        }
    }

    fn forget(&mut self, ino: u64, nlookup: u64) {
        let gone = match self.by_ino.get_mut(&ino) {
            // An idle number carries no reference to drop.
            Some(s) if s.refs > 0 => {
                s.refs = s.refs.saturating_sub(nlookup);
                s.refs == 0
            }
            _ => false,
        };
        if gone {
            self.remove(ino);
        }
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::HandOut(keys, referenced) => {
                for k in keys {
                    self.hand_out(k, u64::from(referenced));
                }
                self.trim();
            }
            Op::Forget(ino, n) => self.forget(ino, n),
            Op::Snapshot(s) => {
                self.by_key.clear();
                self.by_ino.clear();
                self.idle.clear();
                self.clock = s.clock;
                self.next = s.next;
                for (ino, key, refs, stamp) in s.slots {
                    if refs == 0 {
                        self.idle.insert(stamp, ino);
                    }
                    self.by_key.insert(key.clone(), ino);
                    self.by_ino.insert(ino, Slot { key, refs, stamp });
                }
            }
        }
    }

    fn snapshot(&self) -> Op {
        let mut slots: Vec<_> = self
            .by_ino
            .iter()
            .map(|(&n, s)| (n, s.key.clone(), s.refs, s.stamp))
            .collect();
        slots.sort_by_key(|s| s.0);
        Op::Snapshot(Snapshot {
            clock: self.clock,
            next: self.next,
            slots,
        })
    }

    /// Record `op` (already applied) for the next server.
    fn record(&mut self, op: &Op) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        j.append(op);
        if j.wants_compaction() {
            let snap = self.snapshot();
            if let Some(j) = self.journal.as_mut() {
                j.rewrite(&[snap]);
            }
        }
    }

    fn remove(&mut self, n: u64) {
        if let Some(slot) = self.by_ino.remove(&n) {
            if slot.refs == 0 {
                self.idle.remove(&slot.stamp);
            }
            self.by_key.remove(&slot.key);
        }
    }
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new() -> Self {
        InodeTable::with_idle_max(IDLE_MAX)
    }

    /// A table keeping at most `idle_max` unreferenced numbers.
    pub fn with_idle_max(idle_max: usize) -> Self {
        let mut i = Inner {
            by_key: HashMap::new(),
            by_ino: HashMap::new(),
            idle: BTreeMap::new(),
            idle_max,
            clock: 0,
            next: ROOT_INO + 1,
            journal: None,
        };
        i.by_key.insert(Key::Root, ROOT_INO);
        i.by_ino.insert(
            ROOT_INO,
            Slot {
                key: Key::Root,
                refs: 1,
                stamp: 0,
            },
        );
        InodeTable {
            inner: Mutex::new(i),
        }
    }

    /// A table that records its operations in the journal at `path` for
    /// the next server of the mount, after replaying what an earlier server
    /// recorded there (then compacted to one snapshot).
    pub fn with_journal(path: &Path) -> std::io::Result<Self> {
        let t = InodeTable::new();
        let (ops, mut journal) = Journal::open::<Op>(path)?;
        let mut i = t.inner.lock().unwrap();
        let replayed = ops.len();
        for op in ops {
            i.apply(op);
        }
        if replayed > 0 {
            journal.rewrite(&[i.snapshot()]);
            tracing::info!(
                records = replayed,
                inodes = i.by_ino.len(),
                "inode table restored from the journal"
            );
        }
        i.journal = Some(journal);
        drop(i);
        Ok(t)
    }

    /// The inode number of `key`, allocating one the first time; the kernel
    /// takes no reference (attributes, plain `readdir`).
    pub fn ino(&self, key: Key) -> u64 {
        self.hand_out([key], false)[0]
    }

    /// The inode number of `key` for a lookup reply: the kernel now holds one
    /// more reference, released by [`InodeTable::forget`].
    pub fn lookup(&self, key: Key) -> u64 {
        self.hand_out([key], true)[0]
    }

    /// The numbers of `keys`, in one step under the table's lock; with
    /// `referenced` each takes one kernel reference (the entries of a
    /// readdirplus reply), so no forget can come between handing a number out
    /// and counting the kernel's reference to it.
    pub fn hand_out(&self, keys: impl IntoIterator<Item = Key>, referenced: bool) -> Vec<u64> {
        let mut i = self.inner.lock().unwrap();
        let refs = u64::from(referenced);
        if i.journal.is_some() {
            let keys: Vec<Key> = keys.into_iter().collect();
            let out = keys.iter().map(|k| i.hand_out(k.clone(), refs)).collect();
            i.trim();
            i.record(&Op::HandOut(keys, referenced));
            out
        } else {
            // No journal: the keys move in, no copy.
            let out = keys.into_iter().map(|k| i.hand_out(k, refs)).collect();
            i.trim();
            out
        }
    }

    /// The kernel dropped `nlookup` references to `ino`; at zero the inode goes.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut i = self.inner.lock().unwrap();
        i.forget(ino, nlookup);
        if i.journal.is_some() {
            i.record(&Op::Forget(ino, nlookup));
        }
    }

    /// The key of inode `ino`, if it was handed out.
    pub fn key(&self, ino: u64) -> Option<Key> {
        self.inner
            .lock()
            .unwrap()
            .by_ino
            .get(&ino)
            .map(|s| s.key.clone())
    }

    /// The kernel's references to `ino` as counted here (0 when unknown).
    pub fn refs(&self, ino: u64) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .by_ino
            .get(&ino)
            .map_or(0, |s| s.refs)
    }

    /// Number of inodes in the table.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().by_ino.len()
    }

    /// Number of inodes in the table the kernel holds no reference to.
    pub fn idle(&self) -> usize {
        self.inner.lock().unwrap().idle.len()
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

    #[test]
    fn unreferenced_numbers_are_bounded_and_never_reused() {
        let t = InodeTable::with_idle_max(10);
        let held = t.lookup(Key::Namespace("held".into()));
        let listed: Vec<u64> = (0..100)
            .map(|i| t.ino(Key::Namespace(format!("n{i}").into())))
            .collect();
        assert_eq!(t.idle(), 10);
        assert_eq!(t.len(), 12, "root, the held inode and 10 idle ones");
        assert_eq!(t.key(held), Some(Key::Namespace("held".into())));
        // The newest stay; an evicted key comes back under a new number.
        assert_eq!(t.ino(Key::Namespace("n99".into())), listed[99]);
        let again = t.ino(Key::Namespace("n0".into()));
        assert!(!listed.contains(&again) && again != held, "{again}");
        // A listed number the kernel then takes keeps its number and leaves the idle set.
        let n = t.hand_out([Key::Namespace("n99".into())], true)[0];
        assert_eq!(n, listed[99]);
        assert_eq!(t.refs(n), 1);
        assert_eq!(t.idle(), 9);
        // Forgetting an idle number (no reference) changes nothing.
        t.forget(again, 1);
        assert_eq!(t.key(again), Some(Key::Namespace("n0".into())));
        t.forget(n, 1);
        t.forget(held, 1);
        assert_eq!(t.len() - t.idle(), 1, "only the root is held");
    }

    /// A table rebuilt from its journal (the next server of a mount) hands
    /// out the numbers the kernel holds for the same keys, forgets as the
    /// kernel expects, and never reuses a number; compaction keeps all that.
    #[test]
    fn a_journaled_table_comes_back_with_the_same_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inodes.journal");
        let key = |i: usize| Key::Namespace(format!("n{i}").into());
        let (held, listed, forgotten) = {
            let t = InodeTable::with_journal(&path).unwrap();
            let held = t.lookup(key(1));
            t.lookup(key(1));
            let listed = t.hand_out((2..6).map(key), true);
            let forgotten = t.lookup(key(9));
            t.forget(forgotten, 1);
            t.forget(listed[0], 1);
            (held, listed, forgotten)
        };
        for round in 0..2 {
            // The second round replays the snapshot the first one wrote.
            let t = InodeTable::with_journal(&path).unwrap();
            assert_eq!(t.key(held), Some(key(1)), "round {round}");
            assert_eq!(t.refs(held), 2);
            assert_eq!(t.key(listed[0]), None, "forgotten before the restart");
            assert_eq!(t.key(listed[1]), Some(key(3)));
            assert_eq!(t.key(forgotten), None);
            let fresh = t.ino(key(9));
            assert!(
                fresh > listed[3] && fresh != forgotten,
                "never reused: {fresh}"
            );
            t.forget(fresh, 0);
        }
        // A forget after the restart releases what the first server handed out.
        let t = InodeTable::with_journal(&path).unwrap();
        t.forget(held, 2);
        assert_eq!(t.key(held), None);
    }

    /// readdirplus racing forget: readers hand numbers out with a kernel
    /// reference and record them in a model of the kernel; a forgetter drops
    /// the kernel's references as the kernel does (its count, after it let go).
    /// Every number the kernel holds must be known to the table, with the key
    /// it was handed out for. On the old table (number handed out, then the
    /// reference added in a second step) this failed within a few thousand
    /// rounds.
    #[test]
    fn readdirplus_racing_forget_keeps_what_the_kernel_holds() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let t = Arc::new(InodeTable::new());
        let keys: Vec<Key> = (0..16)
            .map(|i| Key::Namespace(format!("n{i}").into()))
            .collect();
        let kernel: Arc<Mutex<HashMap<u64, (Key, u64)>>> = Arc::default();
        let (done, lost) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let forgetter = {
            let (t, kernel, done) = (t.clone(), kernel.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rounds = 0u64;
                while !done.load(Ordering::Relaxed) || !kernel.lock().unwrap().is_empty() {
                    let dropped: Vec<(u64, (Key, u64))> = kernel.lock().unwrap().drain().collect();
                    for (ino, (_, n)) in dropped {
                        t.forget(ino, n);
                    }
                    rounds += 1;
                }
                rounds
            })
        };
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (t, keys, kernel, lost) =
                    (t.clone(), keys.clone(), kernel.clone(), lost.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let inos = t.hand_out(keys.iter().cloned(), true);
                        let mut k = kernel.lock().unwrap();
                        for (ino, key) in inos.into_iter().zip(&keys) {
                            let e = k.entry(ino).or_insert((key.clone(), 0));
                            assert_eq!(&e.0, key, "inode {ino} changed its key");
                            e.1 += 1;
                            if t.key(ino).as_ref() != Some(key) {
                                lost.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        let rounds = forgetter.join().unwrap();
        assert!(rounds > 100, "the forgetter ran only {rounds} rounds");
        assert_eq!(
            lost.load(Ordering::Relaxed),
            0,
            "inodes the kernel holds but the table lost"
        );
        assert_eq!(t.len() - t.idle(), 1, "every reference was forgotten");
        assert_eq!(t.idle(), 0, "forgotten inodes leave the table");
    }
}
