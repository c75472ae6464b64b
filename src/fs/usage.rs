//! What the filesystem holds now, for `regfs status`: the images whose trees
//! (merged rootfs or single layers) are loaded in memory.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Fs, TreeWhich};
use crate::image::Platform;

/// An image with loaded trees (also as `regfs status` sends it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageInUse {
    /// The repository it is read from.
    pub repo: String,
    /// The image manifest's digest.
    pub digest: String,
    /// Whether its merged rootfs is loaded.
    pub rootfs: bool,
    /// Layers loaded on their own (`layers/N`, 1 = bottom).
    pub layers: Vec<usize>,
    /// Nodes held in memory for it.
    pub nodes: usize,
}

impl Fs {
    /// The images whose trees are in memory now, by repository and digest.
    pub fn images_in_use(&self) -> Vec<ImageInUse> {
        let mut by: BTreeMap<(String, String), ImageInUse> = BTreeMap::new();
        for (id, nodes) in self.trees.loaded() {
            let key = (id.repo.to_string(), id.image.to_string());
            let e = by.entry(key.clone()).or_insert_with(|| ImageInUse {
                repo: key.0,
                digest: key.1,
                rootfs: false,
                layers: Vec::new(),
                nodes: 0,
            });
            e.nodes += nodes;
            match id.which {
                TreeWhich::Rootfs => e.rootfs = true,
                TreeWhich::Layer(i) => e.layers.push(i + 1),
            }
        }
        let mut out: Vec<ImageInUse> = by.into_values().collect();
        for e in &mut out {
            e.layers.sort_unstable();
        }
        out
    }

    /// The platform a tag of an index resolves to.
    pub fn platform(&self) -> &Platform {
        &self.cfg.platform
    }
}
