//! `regfs trace`: which files of an image a workload reads through the
//! mount, in the order it first opens them (the rootfs or any of its
//! layers), for a prefetch list. Recording costs one map lookup per open
//! while a trace runs, nothing otherwise.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{Fs, TreeId};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::NodeId;
use crate::reference::Selector;

/// The files opened so far: tree and node, in order.
type Opened = Vec<(Arc<TreeId>, NodeId)>;

/// Traces running, by repository and image manifest digest.
#[derive(Default)]
pub(super) struct Traces {
    any: AtomicBool,
    by: Mutex<HashMap<(Arc<str>, Digest), Opened>>,
}

impl Fs {
    /// Start recording the files of image `repo` + `sel` opened through
    /// the mount (again from nothing if a trace of it runs). The manifest digest.
    pub async fn trace_start(&self, repo: &str, sel: &Selector) -> Result<Digest> {
        let repo: Arc<str> = repo.into();
        let image = self.resolve_image(&repo, sel).await?;
        let mut by = self.traces.by.lock().unwrap();
        by.insert((repo, image.clone()), Vec::new());
        self.traces.any.store(true, Ordering::SeqCst);
        Ok(image)
    }

    /// Note that a file of `tree` was opened (called by `open`).
    pub(super) fn trace_open(&self, tree: &Arc<TreeId>, node: NodeId) {
        if !self.traces.any.load(Ordering::Relaxed) {
            return;
        }
        let mut by = self.traces.by.lock().unwrap();
        if let Some(t) = by.get_mut(&(tree.repo.clone(), tree.image.clone())) {
            t.push((tree.clone(), node));
        }
    }

    /// Stop the trace of image `repo` + `sel`: the paths opened, in the
    /// order of their first open, relative to the image's root.
    pub async fn trace_stop(&self, repo: &str, sel: &Selector) -> Result<Vec<String>> {
        let repo: Arc<str> = repo.into();
        let image = self.resolve_image(&repo, sel).await?;
        let opened = {
            let mut by = self.traces.by.lock().unwrap();
            let t = by
                .remove(&(repo.clone(), image.clone()))
                .ok_or_else(|| Error::invalid(format!("no trace of {repo}@{image} runs")))?;
            self.traces.any.store(!by.is_empty(), Ordering::SeqCst);
            t
        };
        let mut paths: HashMap<Arc<TreeId>, HashMap<NodeId, Vec<u8>>> = HashMap::new();
        let (mut out, mut seen) = (Vec::new(), HashSet::new());
        for (tree, node) in opened {
            if !paths.contains_key(&tree) {
                let t = self.trees.load(self, &tree).await?;
                let names = t.tree.walk().into_iter().map(|(p, n)| (n, p)).collect();
                paths.insert(tree.clone(), names);
            }
            if let Some(p) = paths[&tree].get(&node) {
                let p = String::from_utf8_lossy(p)
                    .trim_start_matches('/')
                    .to_string();
                if seen.insert(p.clone()) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }
}
