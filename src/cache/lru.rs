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
    /// Paths never evicted while their count is above 0 (present or not yet).
    pinned: HashMap<PathBuf, u32>,
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

    /// Keep `p` from eviction until as many [`Lru::unpin`]s.
    pub(crate) fn pin(&mut self, p: PathBuf) {
        *self.pinned.entry(p).or_insert(0) += 1;
    }

    /// Undo one [`Lru::pin`].
    pub(crate) fn unpin(&mut self, p: &Path) {
        if let Some(n) = self.pinned.get_mut(p) {
            *n -= 1;
            if *n == 0 {
                self.pinned.remove(p);
            }
        }
    }

    /// Drop least recently used entries, pinned ones excepted, until the
    /// total fits (or only pinned ones are left); returns them.
    pub(crate) fn evict_to(&mut self, limit: u64) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut ticks = self.by_tick.keys().copied().collect::<Vec<_>>().into_iter();
        while self.total > limit {
            let Some(tick) = ticks.next() else {
                break;
            };
            if self.pinned.contains_key(&self.by_tick[&tick]) {
                continue;
            }
            let p = self.by_tick.remove(&tick).expect("listed tick");
            if let Some((size, _)) = self.by_path.remove(&p) {
                self.total -= size;
            }
            out.push(p);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_files_outlive_eviction_until_unpinned() {
        let mut lru = Lru::default();
        let (a, b, c) = (PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c"));
        lru.insert(a.clone(), 10);
        lru.insert(b.clone(), 10);
        lru.insert(c.clone(), 10);
        lru.pin(a.clone());
        // `a` is the oldest but pinned: `b` and `c` go first.
        assert_eq!(lru.evict_to(10), vec![b.clone(), c.clone()]);
        assert_eq!(lru.total(), 10);
        // Only pinned content left: nothing more goes, even over the limit.
        assert!(lru.evict_to(0).is_empty());
        lru.unpin(&a);
        assert_eq!(lru.evict_to(0), vec![a]);
        assert_eq!(lru.total(), 0);
    }
}
