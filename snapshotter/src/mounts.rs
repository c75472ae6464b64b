//! The mounts containerd gets for an active snapshot or a view, as
//! containerd's overlayfs snapshotter makes them: a bind mount when there is a
//! single tree, otherwise an overlay whose lowerdirs are the parents' `fs`
//! paths. A remote parent's `fs` is a symlink into the regfs mount, so the
//! option string never holds the `:` of a `sha256:` directory name (overlayfs
//! splits `lowerdir` on colons); the kernel follows the symlink.

use crate::layout::Layout;
use crate::meta::Kind;
use crate::proto::containerd::types::Mount;
use crate::store::Chain;

/// The mounts for `chain` (an active snapshot or a view).
pub fn mounts(layout: &Layout, chain: &Chain) -> Vec<Mount> {
    let snap = &chain.snapshot;
    let path = |id: u64| layout.fs(id).to_string_lossy().into_owned();
    let bind = |source: String, ro: bool| Mount {
        r#type: "bind".into(),
        source,
        target: String::new(),
        options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
    };
    if chain.parents.is_empty() {
        return vec![bind(path(snap.id), snap.kind == Kind::View)];
    }
    let mut options = vec!["index=off".to_string()];
    if snap.kind == Kind::Active {
        options.push(format!("workdir={}", layout.work(snap.id).display()));
        options.push(format!("upperdir={}", path(snap.id)));
    } else if chain.parents.len() == 1 {
        return vec![bind(path(chain.parents[0].id), true)];
    }
    let lower: Vec<String> = chain.parents.iter().map(|p| path(p.id)).collect();
    options.push(format!("lowerdir={}", lower.join(":")));
    vec![Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }]
}
