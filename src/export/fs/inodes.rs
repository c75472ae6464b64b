//! Inode numbers for the export filesystem: one per path, except that the
//! names of one hard-linked file share a number (keyed by the file's
//! identity), so `stat` shows them as one inode.
//!
//! The kernel's references are counted ([`Inodes::remember`] for every entry
//! handed to it, [`Inodes::forget`] when it drops them): an inode it no longer
//! holds leaves the table, so the table holds what the kernel holds (plus
//! numbers `readdir` handed out, which the kernel does not reference; those
//! are dropped in bulk once there are many), not every path ever seen.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fs::journal::Journal;

/// The root directory's inode.
pub const ROOT: u64 = 1;

/// The identity of a hard-linked object: a real `(dev, ino)` in the staging
/// tree, or a base tree node (`dev`: [`BASE_DEV`] mixed with the entry, so
/// the top bit is set, which no real device number has).
pub type Identity = (u64, u64);

/// `dev` of identities of base tree nodes.
pub const BASE_DEV: u64 = u64::MAX;

/// The table: ino ↔ paths (`entry/rel/path`, `""` for the root).
#[derive(Debug)]
pub struct Inodes {
    by_path: HashMap<Vec<u8>, u64>,
    paths: HashMap<u64, Vec<Vec<u8>>>,
    by_identity: HashMap<Identity, u64>,
    /// Identities given to each inode (to drop them with it).
    identities: HashMap<u64, Vec<Identity>>,
    /// The kernel's lookup count of each inode it holds.
    refs: HashMap<u64, u64>,
    /// Inodes allocated since the last sweep of unreferenced ones.
    since_sweep: u64,
    next: u64,
    /// Where changes are recorded for the next server (see `crate::handover`).
    journal: Option<Journal>,
}

/// A change to the table, as journaled.
#[derive(Serialize, Deserialize)]
enum Op {
    #[serde(rename = "i")]
    Ino(Vec<u8>, Option<Identity>),
    #[serde(rename = "d")]
    SetIdentity(u64, Identity),
    #[serde(rename = "m")]
    Remember(u64, Vec<u8>),
    #[serde(rename = "f")]
    Forget(u64, u64),
    #[serde(rename = "r")]
    Remove(Vec<u8>),
    #[serde(rename = "n")]
    Rename(Vec<u8>, Vec<u8>),
    #[serde(rename = "s")]
    Snapshot(Snapshot),
}

fn pairs<K: Clone, V: Clone>(m: &HashMap<K, V>) -> Vec<(K, V)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[derive(Serialize, Deserialize)]
struct Snapshot {
    by_path: Vec<(Vec<u8>, u64)>,
    paths: Vec<(u64, Vec<Vec<u8>>)>,
    by_identity: Vec<(Identity, u64)>,
    identities: Vec<(u64, Vec<Identity>)>,
    refs: Vec<(u64, u64)>,
    since_sweep: u64,
    next: u64,
}

/// Sweep inodes the kernel does not hold once this many were allocated.
const SWEEP_EVERY: u64 = 65_536;

impl Default for Inodes {
    fn default() -> Self {
        let mut t = Inodes {
            by_path: HashMap::new(),
            paths: HashMap::new(),
            by_identity: HashMap::new(),
            identities: HashMap::new(),
            refs: HashMap::new(),
            since_sweep: 0,
            next: ROOT + 1,
            journal: None,
        };
        t.by_path.insert(Vec::new(), ROOT);
        t.paths.insert(ROOT, vec![Vec::new()]);
        t
    }
}

impl Inodes {
    /// The inode of `path`, allocated if new; `identity` for hard-linked objects.
    pub fn ino(&mut self, path: &[u8], identity: Option<Identity>) -> u64 {
        let ino = self.ino_op(path, identity);
        self.record(|| Op::Ino(path.to_vec(), identity));
        ino
    }

    fn ino_op(&mut self, path: &[u8], identity: Option<Identity>) -> u64 {
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
                if self.since_sweep >= SWEEP_EVERY {
                    self.sweep();
                }
                let i = self.next;
                self.next += 1;
                self.since_sweep += 1;
                self.by_path.insert(path.to_vec(), i);
                self.paths.insert(i, vec![path.to_vec()]);
                i
            }
        };
        if let Some(id) = identity {
            self.set_identity_op(ino, id);
        }
        ino
    }

    /// Give `ino` a new identity (a base node copied up becomes a real file).
    pub fn set_identity(&mut self, ino: u64, identity: Identity) {
        self.set_identity_op(ino, identity);
        self.record(|| Op::SetIdentity(ino, identity));
    }

    fn set_identity_op(&mut self, ino: u64, identity: Identity) {
        if self.by_identity.insert(identity, ino) != Some(ino) {
            self.identities.entry(ino).or_default().push(identity);
        }
    }

    /// The kernel got a reference to `ino` (an entry reply for `path`). If
    /// `ino` was forgotten meanwhile, `path` names it again.
    pub fn remember(&mut self, ino: u64, path: &[u8]) {
        self.remember_op(ino, path);
        self.record(|| Op::Remember(ino, path.to_vec()));
    }

    fn remember_op(&mut self, ino: u64, path: &[u8]) {
        *self.refs.entry(ino).or_default() += 1;
        let paths = self.paths.entry(ino).or_default();
        if paths.is_empty() {
            paths.push(path.to_vec());
            self.by_path.entry(path.to_vec()).or_insert(ino);
        }
    }

    /// The kernel dropped `nlookup` references to `ino`; at zero it leaves the table.
    pub fn forget(&mut self, ino: u64, nlookup: u64) {
        self.forget_op(ino, nlookup);
        self.record(|| Op::Forget(ino, nlookup));
    }

    fn forget_op(&mut self, ino: u64, nlookup: u64) {
        let Some(n) = self.refs.get_mut(&ino) else {
            return;
        };
        *n = n.saturating_sub(nlookup);
        if *n == 0 {
            self.refs.remove(&ino);
            self.drop_ino(ino);
        }
    }

    /// Whether `ino` is in the table.
    pub fn contains(&self, ino: u64) -> bool {
        self.paths.contains_key(&ino)
    }

    /// How many inodes the table holds (for tests and status).
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether only the root is left.
    pub fn is_empty(&self) -> bool {
        self.paths.len() <= 1
    }

    fn drop_ino(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        for p in self.paths.remove(&ino).unwrap_or_default() {
            if self.by_path.get(&p) == Some(&ino) {
                self.by_path.remove(&p);
            }
        }
        for id in self.identities.remove(&ino).unwrap_or_default() {
            if self.by_identity.get(&id) == Some(&ino) {
                self.by_identity.remove(&id);
            }
        }
    }

    /// Drop every inode the kernel holds no reference to (`readdir` numbers).
    fn sweep(&mut self) {
        let unheld: Vec<u64> = self
            .paths
            .keys()
            .copied()
            .filter(|i| *i != ROOT && !self.refs.contains_key(i))
            .collect();
        for i in unheld {
            self.drop_ino(i);
        }
        self.since_sweep = 0;
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

    /// `path` is gone (unlink, rmdir, replaced by a rename). An inode whose
    /// last name this was keeps its number but names no path any more: open
    /// descriptors still reach it (the filesystem answers from them), and a
    /// new file at `path` gets a number of its own.
    pub fn remove(&mut self, path: &[u8]) {
        self.remove_op(path);
        self.record(|| Op::Remove(path.to_vec()));
    }

    fn remove_op(&mut self, path: &[u8]) {
        if let Some(ino) = self.by_path.remove(path) {
            if let Some(v) = self.paths.get_mut(&ino) {
                v.retain(|p| p != path);
            }
        }
    }

    /// `from` (and everything under it) is now `to`.
    pub fn rename(&mut self, from: &[u8], to: &[u8]) {
        self.rename_op(from, to);
        self.record(|| Op::Rename(from.to_vec(), to.to_vec()));
    }

    /// A table journaled at `path` for the next server of the mount, after
    /// replaying what an earlier one recorded there (then compacted).
    pub fn with_journal(path: &Path) -> std::io::Result<Inodes> {
        let mut t = Inodes::default();
        let (ops, mut journal) = Journal::open::<Op>(path)?;
        let replayed = !ops.is_empty();
        for op in ops {
            t.apply(op);
        }
        if replayed {
            journal.rewrite(&[t.snapshot()]);
        }
        t.journal = Some(journal);
        Ok(t)
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Ino(p, id) => {
                self.ino_op(&p, id);
            }
            Op::SetIdentity(i, id) => self.set_identity_op(i, id),
            Op::Remember(i, p) => self.remember_op(i, &p),
            Op::Forget(i, n) => self.forget_op(i, n),
            Op::Remove(p) => self.remove_op(&p),
            Op::Rename(a, b) => self.rename_op(&a, &b),
            Op::Snapshot(s) => {
                self.by_path = s.by_path.into_iter().collect();
                self.paths = s.paths.into_iter().collect();
                self.by_identity = s.by_identity.into_iter().collect();
                self.identities = s.identities.into_iter().collect();
                self.refs = s.refs.into_iter().collect();
                self.since_sweep = s.since_sweep;
                self.next = s.next;
            }
        }
    }

    fn snapshot(&self) -> Op {
        Op::Snapshot(Snapshot {
            by_path: pairs(&self.by_path),
            paths: pairs(&self.paths),
            by_identity: pairs(&self.by_identity),
            identities: pairs(&self.identities),
            refs: pairs(&self.refs),
            since_sweep: self.since_sweep,
            next: self.next,
        })
    }

    /// Journal the change `op` made (already applied).
    fn record(&mut self, op: impl FnOnce() -> Op) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        j.append(&op());
        if j.wants_compaction() {
            let snap = self.snapshot();
            if let Some(j) = self.journal.as_mut() {
                j.rewrite(&[snap]);
            }
        }
    }

    fn rename_op(&mut self, from: &[u8], to: &[u8]) {
        self.remove_op(to);
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
        // The last name gone: the inode names nothing, the path is free.
        t.remove(b"e:1/l2");
        assert_eq!(t.path(l1), None);
        assert_ne!(t.ino(b"e:1/l2", None), l1);
        // Another name of the same file found again revives it.
        assert_eq!(t.ino(b"e:1/l3", Some((1, 7))), l1);
        assert_eq!(t.path(l1).unwrap(), b"e:1/l3");
        let d = t.ino(b"e:1/d", None);
        let f = t.ino(b"e:1/d/f", None);
        t.rename(b"e:1/d", b"e:1/x");
        assert_eq!(t.path(d).unwrap(), b"e:1/x");
        assert_eq!(t.path(f).unwrap(), b"e:1/x/f");
        assert_eq!(t.ino(b"e:1/x/f", None), f);
        assert_ne!(t.ino(b"e:1/d/f", None), f);
    }

    #[test]
    fn forget_drops_what_the_kernel_no_longer_holds() {
        let mut t = Inodes::default();
        let a = t.ino(b"e:1/a", None);
        t.remember(a, b"e:1/a");
        t.remember(a, b"e:1/a");
        t.forget(a, 1);
        assert_eq!(t.path(a).unwrap(), b"e:1/a");
        t.forget(a, 1);
        assert_eq!(t.path(a), None);
        assert!(t.is_empty());
        // A new lookup gets a new number.
        assert_ne!(t.ino(b"e:1/a", None), a);
        // Hard links: the identity goes with the inode.
        let l = t.ino(b"e:1/l1", Some((1, 9)));
        assert_eq!(t.ino(b"e:1/l2", Some((1, 9))), l);
        t.remember(l, b"e:1/l1");
        t.forget(l, 5);
        assert_eq!(t.ino(b"e:1/l2", None), t.ino(b"e:1/l2", None));
        assert_ne!(t.ino(b"e:1/l3", Some((1, 9))), l);
        // Forgotten between allocation and the reply: the path names it again.
        let b = t.ino(b"e:1/b", None);
        t.remember(b, b"e:1/b");
        t.forget(b, 1);
        t.remember(b, b"e:1/b");
        assert_eq!(t.path(b).unwrap(), b"e:1/b");
        // The root stays; unknown inodes are ignored.
        t.remember(ROOT, b"");
        t.forget(ROOT, 1);
        t.forget(12345, 1);
        assert_eq!(t.path(ROOT).unwrap(), b"");
    }

    #[test]
    fn readdir_numbers_are_swept() {
        let mut t = Inodes::default();
        let held = t.ino(b"e:1/held", None);
        t.remember(held, b"e:1/held");
        for i in 0..SWEEP_EVERY + 10 {
            t.ino(format!("e:1/f{i}").as_bytes(), None);
        }
        assert!(t.len() < 20, "{}", t.len());
        assert_eq!(t.path(held).unwrap(), b"e:1/held");
    }
}
