//! The reference model of an image's merged root filesystem: layers of
//! entries applied bottom first by plain path arithmetic, written apart from
//! `layer::merge` (which works on trees of nodes) so that the two can be
//! compared. Also the generator of random layer stacks and the tar writer.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use tar::{EntryType, Header};

/// One entry of a layer, as the tar says it.
#[derive(Clone, Debug)]
pub enum Ent {
    /// A directory.
    Dir { path: String, mode: u32, uid: u32 },
    /// A regular file.
    File {
        path: String,
        mode: u32,
        data: Arc<Vec<u8>>,
    },
    /// A symlink; `mode` is what its tar header says (Linux shows 0777 whatever it is).
    Symlink {
        path: String,
        target: String,
        mode: u32,
    },
    /// A hard link to a regular file written earlier in the same layer.
    HardLink { path: String, target: String },
    /// `.wh.NAME`: removes `path` (and its subtree) from the lower layers.
    Whiteout { path: String },
    /// `DIR/.wh..wh..opq`: hides the lower children of `dir`.
    Opaque { dir: String },
}

impl Ent {
    /// The path the entry is about.
    pub fn path(&self) -> &str {
        match self {
            Ent::Dir { path, .. }
            | Ent::File { path, .. }
            | Ent::Symlink { path, .. }
            | Ent::HardLink { path, .. }
            | Ent::Whiteout { path } => path,
            Ent::Opaque { dir } => dir,
        }
    }
}

/// A layer: its entries in tar order.
pub type Layer = Vec<Ent>;

/// What a name in the merged tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MKind {
    /// Directory with its permission bits and owner.
    Dir { mode: u32, uid: u32 },
    /// Regular file: bits and bytes; `group` names the hard-link group
    /// (same group = same inode).
    File {
        mode: u32,
        data: Arc<Vec<u8>>,
        group: (usize, String),
    },
    /// Symlink: always shown with mode 0777, whatever its tar header says.
    Symlink { target: String },
}

/// The merged tree: path (no leading slash; "" is the root) → what is there.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Every name in the merged tree except the root.
    pub paths: BTreeMap<String, MKind>,
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(a, _)| a).unwrap_or("")
}

fn ancestors(p: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut cur = parent(p);
    while !cur.is_empty() {
        out.push(cur);
        cur = parent(cur);
    }
    out.reverse();
    out
}

fn under(p: &str, dir: &str) -> bool {
    dir.is_empty() || (p.len() > dir.len() && p.starts_with(dir) && p.as_bytes()[dir.len()] == b'/')
}

impl Model {
    /// Apply `layers` bottom first.
    pub fn merge(layers: &[Layer]) -> Model {
        let mut m = Model::default();
        for (i, l) in layers.iter().enumerate() {
            m.apply(i, l);
        }
        m
    }

    fn remove_tree(&mut self, p: &str) {
        self.paths.remove(p);
        let subtree: Vec<String> = self.paths.keys().filter(|k| under(k, p)).cloned().collect();
        for k in subtree {
            self.paths.remove(&k);
        }
    }

    /// A directory this layer needs as a parent: a lower directory stays as it
    /// is; anything else becomes a directory with default metadata.
    fn ensure_dir(&mut self, p: &str) {
        if !matches!(self.paths.get(p), Some(MKind::Dir { .. })) {
            self.remove_tree(p);
            self.paths.insert(
                p.to_string(),
                MKind::Dir {
                    mode: 0o755,
                    uid: 0,
                },
            );
        }
    }

    fn apply(&mut self, layer_no: usize, layer: &Layer) {
        // The layer's own directories (explicit or as parents) come first:
        // an opaque marker, a whiteout or an entry needs its parents.
        let explicit: BTreeMap<&str, &Ent> = layer.iter().map(|e| (e.path(), e)).collect();
        // Opaque directories: hide every lower child (the directory itself is
        // in this layer, explicitly or as a parent of the marker).
        for e in layer {
            if let Ent::Opaque { dir } = e {
                for a in ancestors(&format!("{dir}/x")) {
                    self.ensure_dir(a);
                }
                let lower: Vec<String> = self
                    .paths
                    .keys()
                    .filter(|k| under(k, dir))
                    .cloned()
                    .collect();
                for k in lower {
                    self.paths.remove(&k);
                }
            }
        }
        // Entries in path order (parents before children), whiteouts included.
        let mut sorted: Vec<&Ent> = layer
            .iter()
            .filter(|e| !matches!(e, Ent::Opaque { .. }))
            .collect();
        sorted.sort_by(|a, b| a.path().cmp(b.path()));
        for e in sorted {
            let p = e.path();
            // Explicit parents sort first and are directories by now;
            // implicit ones keep a lower directory or replace a lower file.
            for a in ancestors(p) {
                self.ensure_dir(a);
            }
            match e {
                Ent::Whiteout { path } => self.remove_tree(path),
                Ent::Dir { path, mode, uid } => {
                    if !matches!(self.paths.get(path.as_str()), Some(MKind::Dir { .. })) {
                        self.remove_tree(path);
                    }
                    self.paths.insert(
                        path.clone(),
                        MKind::Dir {
                            mode: *mode,
                            uid: *uid,
                        },
                    );
                }
                Ent::File { path, mode, data } => {
                    self.remove_tree(path);
                    self.paths.insert(
                        path.clone(),
                        MKind::File {
                            mode: *mode,
                            data: data.clone(),
                            group: (layer_no, path.clone()),
                        },
                    );
                }
                Ent::HardLink { path, target } => {
                    let Some(Ent::File { mode, data, .. }) = explicit.get(target.as_str()) else {
                        unreachable!("the generator links to files of the same layer")
                    };
                    self.remove_tree(path);
                    self.paths.insert(
                        path.clone(),
                        MKind::File {
                            mode: *mode,
                            data: data.clone(),
                            group: (layer_no, target.clone()),
                        },
                    );
                }
                Ent::Symlink { path, target, .. } => {
                    self.remove_tree(path);
                    self.paths.insert(
                        path.clone(),
                        MKind::Symlink {
                            target: target.clone(),
                        },
                    );
                }
                Ent::Opaque { .. } => unreachable!(),
            }
        }
    }

    /// The names directly in directory `dir`, sorted.
    pub fn children(&self, dir: &str) -> Vec<(String, &MKind)> {
        self.paths
            .iter()
            .filter(|(k, _)| parent(k) == dir && !k.is_empty())
            .map(|(k, v)| (k.rsplit('/').next().unwrap().to_string(), v))
            .collect()
    }

    /// The link count the filesystem must report for `path`.
    pub fn nlink(&self, path: &str) -> u32 {
        match self.paths.get(path) {
            Some(MKind::File { group, .. }) => self
                .paths
                .values()
                .filter(|v| matches!(v, MKind::File { group: g, .. } if g == group))
                .count() as u32,
            Some(MKind::Dir { .. }) => {
                2 + self
                    .children(path)
                    .iter()
                    .filter(|(_, k)| matches!(k, MKind::Dir { .. }))
                    .count() as u32
            }
            _ => 1,
        }
    }
}

/// Directories a generated path may live in, and the names it may have.
const PARENTS: [&str; 4] = ["", "a", "a/b", "c"];
const NAMES: [&str; 5] = ["a", "b", "c", "f", "g"];

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// A raw, unchecked draw of one entry.
#[derive(Clone, Debug)]
struct Draw {
    parent: usize,
    name: usize,
    what: u8,
    mode: u32,
    size: usize,
    seed: u8,
}

fn draw() -> impl Strategy<Value = Draw> {
    (
        0..PARENTS.len(),
        0..NAMES.len(),
        0u8..7,
        prop_oneof![Just(0o755u32), Just(0o700), Just(0o644), Just(0o4755)],
        prop_oneof![Just(0usize), 1..64usize, 4000..70_000usize],
        any::<u8>(),
    )
        .prop_map(|(parent, name, what, mode, size, seed)| Draw {
            parent,
            name,
            what,
            mode,
            size,
            seed,
        })
}

/// Bytes of a file: a pattern that differs per seed and per position.
fn bytes(size: usize, seed: u8) -> Arc<Vec<u8>> {
    Arc::new(
        (0..size)
            .map(|i| {
                (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8 ^ (i >> 9) as u8
            })
            .collect(),
    )
}

/// Turn draws into a valid layer: one entry per path, parents of entries
/// never non-directories of the same layer, hard links to earlier files of
/// the same layer, no whiteout of a name the layer also writes.
fn layer_from(draws: Vec<Draw>) -> Layer {
    let mut by_path: BTreeMap<String, Ent> = BTreeMap::new();
    for d in draws {
        let path = join(PARENTS[d.parent], NAMES[d.name]);
        if by_path.contains_key(&path) {
            continue;
        }
        let e = match d.what {
            0 => Ent::Dir {
                path: path.clone(),
                mode: d.mode & 0o777 | 0o700,
                uid: d.seed as u32 % 3,
            },
            1 | 2 => Ent::File {
                path: path.clone(),
                mode: d.mode,
                data: bytes(d.size, d.seed),
            },
            3 => Ent::Symlink {
                path: path.clone(),
                target: format!("../t{}", d.seed),
                mode: d.mode,
            },
            4 => Ent::HardLink {
                path: path.clone(),
                target: String::new(), // chosen below
            },
            5 => Ent::Whiteout { path: path.clone() },
            _ => Ent::Opaque { dir: path.clone() },
        };
        by_path.insert(path, e);
    }
    // Drop entries below a non-directory of this layer (a whiteout or an
    // opaque marker counts as a directory's child, so its parent must be a dir).
    let keys: Vec<String> = by_path.keys().cloned().collect();
    for k in &keys {
        let blocked = ancestors(k).iter().any(|a| {
            matches!(
                by_path.get(*a),
                Some(
                    Ent::File { .. }
                        | Ent::Symlink { .. }
                        | Ent::HardLink { .. }
                        | Ent::Whiteout { .. }
                )
            )
        });
        if blocked {
            by_path.remove(k);
        }
    }
    // Hard links point at the first file before them in path order; without
    // one they become files.
    let mut files: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (path, e) in by_path {
        let e = match e {
            Ent::HardLink { .. } => match files.first() {
                Some(t) => Ent::HardLink {
                    path,
                    target: t.clone(),
                },
                None => Ent::File {
                    path,
                    mode: 0o644,
                    data: bytes(10, 1),
                },
            },
            e => e,
        };
        if let Ent::File { path, .. } = &e {
            files.push(path.clone());
        }
        out.push(e);
    }
    out
}

/// Random layer stacks: 1 to 3 layers of up to 12 entries.
pub fn layers() -> impl Strategy<Value = Vec<Layer>> {
    prop::collection::vec(
        prop::collection::vec(draw(), 0..12).prop_map(layer_from),
        1..4,
    )
}

/// The layer as a tar, in path order (parents first), with explicit
/// directories, `.wh.` whiteouts and `.wh..wh..opq` markers.
pub fn tar(layer: &Layer) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut sorted: Vec<&Ent> = layer.iter().collect();
    // An opaque marker sorts as a child of its directory.
    let key = |e: &Ent| match e {
        Ent::Opaque { dir } => join(dir, ".wh..wh..opq"),
        Ent::Whiteout { path } => join(
            parent(path),
            &format!(".wh.{}", path.rsplit('/').next().unwrap()),
        ),
        e => e.path().to_string(),
    };
    sorted.sort_by_key(|e| key(e));
    // Files must precede the hard links to them: links point at the first
    // file in path order, which sorts before them.
    for e in sorted {
        let mut h = Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let name = key(e);
        match e {
            Ent::Dir { mode, uid, .. } => {
                h.set_entry_type(EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid as u64);
                h.set_size(0);
                b.append_data(&mut h, format!("{name}/"), &[][..]).unwrap();
            }
            Ent::File { mode, data, .. } => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, &name, &data[..]).unwrap();
            }
            Ent::Symlink { target, mode, .. } => {
                h.set_entry_type(EntryType::Symlink);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_link(&mut h, &name, target).unwrap();
            }
            Ent::HardLink { target, .. } => {
                h.set_entry_type(EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, &name, target).unwrap();
            }
            Ent::Whiteout { .. } | Ent::Opaque { .. } => {
                h.set_entry_type(EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_data(&mut h, &name, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_opaque_dirs_and_hard_links() {
        let f = |p: &str| Ent::File {
            path: p.into(),
            mode: 0o644,
            data: bytes(3, 1),
        };
        let lower = vec![
            Ent::Dir {
                path: "a".into(),
                mode: 0o700,
                uid: 1,
            },
            f("a/f"),
            f("a/g"),
            Ent::HardLink {
                path: "a/h".into(),
                target: "a/f".into(),
            },
            f("c"),
        ];
        let upper = vec![
            Ent::Whiteout { path: "a/g".into() },
            Ent::Opaque { dir: "b".into() },
            f("c/f"),
        ];
        let m = Model::merge(&[lower, upper]);
        assert!(m.paths.contains_key("a/f"));
        assert!(!m.paths.contains_key("a/g"));
        assert_eq!(m.nlink("a/f"), 2);
        assert_eq!(
            m.paths.get("a"),
            Some(&MKind::Dir {
                mode: 0o700,
                uid: 1
            }),
            "implicit parent keeps lower metadata"
        );
        assert_eq!(
            m.paths.get("c"),
            Some(&MKind::Dir {
                mode: 0o755,
                uid: 0
            }),
            "implicit dir replaces a lower file"
        );
        assert!(m.paths.contains_key("b"));
    }
}
