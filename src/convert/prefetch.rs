//! A recorded trace (`regfs trace stop`: paths opened through a mount, in
//! the order of their first open, relative to the image's root) turned
//! into per-layer prefetch plans: each path is prioritised in the topmost
//! layer that holds it, if it is a regular file there (a hard link stands
//! for its target). Layers are planned from the top down; a path a layer
//! holds is claimed by it, so lower layers never prioritise a file the
//! rootfs does not show.

use std::collections::HashSet;

use super::transcribe::{normalize, plan, regular_file, Plan, Spool};

/// The trace's paths not yet claimed by a layer.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    wanted: Vec<Vec<u8>>,
    taken: HashSet<Vec<u8>>,
}

impl Claims {
    /// The paths of a trace, in order (normalised; repeats and empty lines dropped).
    pub fn new(paths: &[String]) -> Claims {
        let mut seen = HashSet::new();
        let wanted = paths
            .iter()
            .map(|p| normalize(p.trim_end_matches('\n').as_bytes()).to_vec())
            .filter(|p| !p.is_empty() && seen.insert(p.clone()))
            .collect();
        Claims {
            wanted,
            taken: HashSet::new(),
        }
    }

    /// Whether no path is left to claim (or none was given).
    pub fn is_empty(&self) -> bool {
        self.wanted.len() == self.taken.len()
    }

    /// The plan of the next layer down: claims every path `spool` holds and
    /// prioritises those that are regular files, in trace order.
    pub fn plan(&mut self, spool: &Spool) -> Plan {
        let mut files = Vec::new();
        for p in &self.wanted {
            if self.taken.contains(p) || spool.find(p).is_none() {
                continue;
            }
            self.taken.insert(p.clone());
            if let Some(i) = regular_file(spool, p) {
                files.push(i);
            }
        }
        plan(spool, &files)
    }
}
