//! Merge layer trees into the rootfs of an image, with OCI whiteouts.
//!
//! Rules (OCI image spec, "Whiteouts"; overlayfs):
//!
//! - Layers apply bottom first. An upper non-directory replaces whatever the
//!   lower layers have at that name (a directory loses its subtree); an upper
//!   directory over a lower directory merges their children and takes the
//!   upper metadata, unless the upper directory is *implicit* (the upper tar
//!   only had it as a parent of something), in which case the lower metadata
//!   stays; an upper directory over a lower non-directory replaces it.
//! - A whiteout removes the name (and its subtree) from the lower layers; a
//!   whiteout of a missing name does nothing.
//! - An opaque directory hides all lower children of that directory and
//!   keeps its own metadata from the upper layer.
//! - Whiteouts and opaque markers (the flag and the
//!   `trusted.overlay.opaque` xattr) never appear in the result.
//! - Names that share a node in a layer (hard links) share a node in the
//!   result; `nlink` is recomputed from the names that survive.
//! - **Layer numbers**: a node's [`FileData`](crate::layer::FileData) in the
//!   result names the *position in `layers`* of the tree it came from, so a
//!   vector of layer files in the same order serves reads. (Layer trees are
//!   usually indexed with a fixed number such as 0, since one layer can be
//!   shared by many images.)
//!
//! Cost: every node of every layer is visited once, with a `BTreeMap`
//! operation per name: O(N log N) in the total number of entries.

use crate::layer::tree::{Builder, Node, NodeId, NodeKind, Tree, OPAQUE_XATTR, USER_OPAQUE_XATTR};

/// The merged tree of `layers`, bottom layer first.
pub fn merge(layers: &[&Tree]) -> Tree {
    let mut b = Builder::new();
    for (i, layer) in layers.iter().enumerate() {
        let number = u16::try_from(i).unwrap_or(u16::MAX);
        apply(&mut b, layer, number);
    }
    b.finish()
}

/// Apply one layer onto the result under construction.
fn apply(b: &mut Builder, layer: &Tree, number: u16) {
    // layer NodeId → result NodeId, for the hard links of this layer.
    let mut linked: Vec<NodeId> = vec![NodeId::MAX; layer.len()];
    let root = layer.root();
    update_dir(b.node_mut(0), layer.node(root));
    let mut stack: Vec<(NodeId, NodeId)> = vec![(root, 0)];
    while let Some((src_dir, dst_dir)) = stack.pop() {
        if layer.node(src_dir).opaque {
            b.clear_children(dst_dir);
        }
        for (name, child) in layer.children(src_dir) {
            let src = layer.node(*child);
            if src.whiteout {
                b.remove_child(dst_dir, name);
                continue;
            }
            if src.kind == NodeKind::Dir {
                let dst = match b.child(dst_dir, name) {
                    Some(d) if b.node(d).kind == NodeKind::Dir => {
                        update_dir(b.node_mut(d), src);
                        d
                    }
                    _ => {
                        let mut n = Node::implicit_dir();
                        update_dir(&mut n, src);
                        let d = b.add(n);
                        b.set_child(dst_dir, name, d);
                        d
                    }
                };
                stack.push((*child, dst));
            } else {
                let slot = &mut linked[*child as usize];
                if *slot == NodeId::MAX {
                    let mut n = src.clone();
                    n.content = n.content.with_layer(number);
                    *slot = b.add(n);
                }
                let id = *slot;
                b.set_child(dst_dir, name, id);
            }
        }
    }
}

/// Take `src`'s directory metadata onto `dst` unless `src` is implicit.
fn update_dir(dst: &mut Node, src: &Node) {
    if src.implicit {
        return;
    }
    dst.mode = src.mode;
    dst.uid = src.uid;
    dst.gid = src.gid;
    dst.mtime = src.mtime;
    dst.mtime_nsec = src.mtime_nsec;
    dst.xattrs = src.xattrs.clone();
    if src.opaque {
        dst.remove_xattr(OPAQUE_XATTR);
        dst.remove_xattr(USER_OPAQUE_XATTR);
    }
    dst.implicit = false;
}

#[cfg(test)]
mod tests;
