//! Size accounting with least-recently-used order.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Files with sizes, ordered by last use.
#[derive(Default)]
pub(crate) struct Lru {
    tick: u64,
    total: u64,
    by_path: HashMap<PathBuf, (u64, u64)>,
    by_tick: BTreeMap<u64, PathBuf>,
}

impl Lru {
    pub(crate) fn insert(&mut self, p: PathBuf, size: u64) {
        self.remove(&p);
        self.tick += 1;
        self.total += size;
        self.by_tick.insert(self.tick, p.clone());
        self.by_path.insert(p, (size, self.tick));
    }

    /// Mark as used; false if unknown.
    pub(crate) fn touch(&mut self, p: &Path) -> bool {
        let Some((size, old)) = self.by_path.get(p).copied() else {
            return false;
        };
        self.tick += 1;
        self.by_tick.remove(&old);
        self.by_tick.insert(self.tick, p.to_path_buf());
        self.by_path.insert(p.to_path_buf(), (size, self.tick));
        true
    }

    pub(crate) fn remove(&mut self, p: &Path) {
        if let Some((size, t)) = self.by_path.remove(p) {
            self.by_tick.remove(&t);
            self.total -= size;
        }
    }

    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Drop least recently used entries until the total fits; returns them.
    pub(crate) fn evict_to(&mut self, limit: u64) -> Vec<PathBuf> {
        let mut out = Vec::new();
        while self.total > limit {
            let Some((_, p)) = self.by_tick.pop_first() else {
                break;
            };
            if let Some((size, _)) = self.by_path.remove(&p) {
                self.total -= size;
            }
            out.push(p);
        }
        out
    }
}
