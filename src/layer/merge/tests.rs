use super::*;
use crate::layer::index::{index_tar, Limits};
use crate::layer::testutil::{listing, TarW};
use std::collections::BTreeMap;

fn tree(w: &mut TarW) -> Tree {
    index_tar(&w.finish()[..], 0, &Limits::default()).unwrap()
}

fn merged(layers: &[Tree]) -> Tree {
    let refs: Vec<&Tree> = layers.iter().collect();
    merge(&refs)
}

fn s(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn node<'t>(t: &'t Tree, p: &str) -> &'t Node {
    t.node(
        t.lookup_path(p.as_bytes())
            .unwrap_or_else(|| panic!("{p} missing")),
    )
}

#[test]
fn upper_replaces_and_merges() {
    let mut l0 = TarW::new();
    l0.dir(b"d", 0o700)
        .file(b"d/lower", b"l")
        .dir(b"d/sub", 0o755)
        .file(b"d/sub/x", b"x")
        .file(b"f", b"lower f")
        .dir(b"dir2file", 0o755)
        .file(b"dir2file/gone", b"")
        .file(b"file2dir", b"")
        .dir(b"implicit-over", 0o711);
    let mut l1 = TarW::new();
    l1.mtime = 42;
    l1.dir(b"d", 0o750)
        .file(b"d/upper", b"u")
        .file(b"d/sub", b"now a file")
        .file(b"f", b"upper f!")
        .file(b"dir2file", b"file")
        .dir(b"file2dir", 0o755)
        .file(b"file2dir/new", b"n")
        .file(b"implicit-over/child", b"c");
    let m = merged(&[tree(&mut l0), tree(&mut l1)]);
    assert_eq!(
        listing(&m),
        s(&[
            ("d", "dir"),
            ("d/lower", "file 1"),
            ("d/sub", "file 10"),
            ("d/upper", "file 1"),
            ("dir2file", "file 4"),
            ("f", "file 8"),
            ("file2dir", "dir"),
            ("file2dir/new", "file 1"),
            ("implicit-over", "dir"),
            ("implicit-over/child", "file 1"),
        ])
    );
    let d = node(&m, "d");
    assert_eq!((d.mode, d.mtime), (0o750, 42), "upper metadata");
    let io = node(&m, "implicit-over");
    assert_eq!(
        io.mode, 0o711,
        "an implicit upper dir keeps the lower metadata"
    );
    assert!(!io.implicit);
    assert_eq!(
        node(&m, "f").content.layer(),
        Some(1),
        "content from the upper layer"
    );
    assert_eq!(node(&m, "d/lower").content.layer(), Some(0));
    assert_eq!(d.nlink, 2, "d/sub is no longer a dir");
    assert_eq!(m.node(m.root()).nlink, 2 + 3);
    assert_eq!(m.len(), 1 + 10);
}

#[test]
fn whiteouts_remove_and_vanish() {
    let mut l0 = TarW::new();
    l0.file(b"a", b"")
        .dir(b"tree", 0o755)
        .file(b"tree/deep/x", b"")
        .file(b"keep", b"");
    let mut l1 = TarW::new();
    l1.file(b".wh.a", b"")
        .file(b".wh.tree", b"")
        .file(b".wh.never-existed", b"")
        .file(b"nowhere/.wh.x", b"");
    let m = merged(&[tree(&mut l0), tree(&mut l1)]);
    assert_eq!(listing(&m), s(&[("keep", "file 0"), ("nowhere", "dir")]));
    // re-creating a whited-out name in a later layer
    let mut l2 = TarW::new();
    l2.dir(b"tree", 0o700);
    let m = merged(&[tree(&mut l0), tree(&mut l1), tree(&mut l2)]);
    assert_eq!(
        listing(&m),
        s(&[("keep", "file 0"), ("nowhere", "dir"), ("tree", "dir")])
    );
    assert!(m.nodes().iter().all(|n| !n.whiteout && !n.opaque));
}

#[test]
fn opaque_dirs_hide_lower_children() {
    let mut l0 = TarW::new();
    l0.pax(&[("SCHILY.xattr.user.lower", b"1")])
        .dir(b"etc", 0o755)
        .file(b"etc/old", b"")
        .dir(b"etc/old.d", 0o755)
        .file(b"etc/old.d/x", b"")
        .file(b"other", b"");
    let mut l1 = TarW::new();
    l1.file(b"etc/.wh..wh..opq", b"")
        .pax(&[("SCHILY.xattr.user.upper", b"2")])
        .dir(b"etc", 0o700)
        .file(b"etc/new", b"n");
    let m = merged(&[tree(&mut l0), tree(&mut l1)]);
    assert_eq!(
        listing(&m),
        s(&[("etc", "dir"), ("etc/new", "file 1"), ("other", "file 0")])
    );
    let etc = node(&m, "etc");
    assert_eq!(etc.mode, 0o700);
    assert!(!etc.opaque);
    assert_eq!(
        etc.xattr(OPAQUE_XATTR),
        None,
        "marker xattr never in the result"
    );
    assert_eq!(etc.xattr(b"user.upper"), Some(&b"2"[..]));
    assert_eq!(etc.xattr(b"user.lower"), None);
    assert_eq!(etc.nlink, 2);
    // opaque root
    let mut l2 = TarW::new();
    l2.file(b".wh..wh..opq", b"").file(b"only", b"");
    let m = merged(&[tree(&mut l0), tree(&mut l1), tree(&mut l2)]);
    assert_eq!(listing(&m), s(&[("only", "file 0")]));
    // whiteout + dir of the same name in one layer: the dir, without lower children
    let mut l3 = TarW::new();
    l3.file(b".wh.etc", b"")
        .dir(b"etc", 0o755)
        .file(b"etc/fresh", b"");
    let m = merged(&[tree(&mut l0), tree(&mut l3)]);
    assert_eq!(
        listing(&m),
        s(&[("etc", "dir"), ("etc/fresh", "file 0"), ("other", "file 0")])
    );
}

#[test]
fn hard_links_survive_and_nlink_follows() {
    let mut l0 = TarW::new();
    l0.file(b"bin/busybox", b"bb")
        .hardlink(b"bin/sh", b"bin/busybox")
        .hardlink(b"bin/ls", b"bin/busybox");
    let mut l1 = TarW::new();
    l1.file(b"bin/.wh.ls", b"")
        .file(b"bin/other", b"o")
        .hardlink(b"bin/other2", b"bin/other");
    let m = merged(&[tree(&mut l0), tree(&mut l1)]);
    let bb = m.lookup_path(b"bin/busybox").unwrap();
    assert_eq!(m.lookup_path(b"bin/sh"), Some(bb));
    assert_eq!(m.lookup_path(b"bin/ls"), None);
    assert_eq!(m.node(bb).nlink, 2);
    assert_eq!(m.lookup_path(b"bin/other"), m.lookup_path(b"bin/other2"));
    assert_eq!(node(&m, "bin/other").nlink, 2);
    assert_eq!(node(&m, "bin/other").content.layer(), Some(1));
    // a single layer merges to itself (modulo implicit metadata)
    let t0 = tree(&mut l0);
    let m0 = merge(&[&t0]);
    assert_eq!(listing(&m0), listing(&t0));
}

#[test]
fn empty_and_many_layers() {
    assert_eq!(merge(&[]).len(), 1);
    // linear-ish: 4 layers of 3,000 entries each, the upper ones
    // overwriting half of the lower ones
    let mut layers = Vec::new();
    for l in 0..4 {
        let mut w = TarW::new();
        for i in 0..3000 {
            let p = format!("usr/lib/d{}/f{}", (i + l * 1500) % 60, i + l * 1500);
            w.file(p.as_bytes(), b"");
        }
        layers.push(tree(&mut w));
    }
    let start = std::time::Instant::now();
    let m = merged(&layers);
    assert!(start.elapsed().as_secs() < 5);
    let files = m
        .nodes()
        .iter()
        .filter(|n| n.kind == NodeKind::File)
        .count();
    assert_eq!(files, 1500 * 3 + 3000);
}

// ---- reference model ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    File,
    Dir,
    Whiteout,
    Opaque,
    OpaqueDir,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    File(u16),
    /// The layer whose entry gave the metadata; None: implicit.
    Dir(Option<u16>),
}

type Path = Vec<&'static str>;

const NAMES: [&str; 3] = ["a", "b", "c"];

/// Keep the last op per path; drop entries below a non-directory op.
fn normalise_layer(ops: &[(Vec<usize>, u8)]) -> Vec<(Path, Op)> {
    let mut last: BTreeMap<Path, (usize, Op)> = BTreeMap::new();
    for (i, (p, o)) in ops.iter().enumerate() {
        let op = [Op::File, Op::Dir, Op::Whiteout, Op::Opaque, Op::OpaqueDir][*o as usize % 5];
        last.insert(p.iter().map(|&c| NAMES[c]).collect(), (i, op));
    }
    let nondir = |p: &[&str]| matches!(last.get(p), Some((_, Op::File | Op::Whiteout)));
    let mut kept: Vec<(usize, Path, Op)> = last
        .iter()
        .filter(|(p, _)| !(1..p.len()).any(|k| nondir(&p[..k])))
        .map(|(p, (i, o))| (*i, p.clone(), *o))
        .collect();
    kept.sort_by_key(|(i, _, _)| *i); // tar order = generation order
    kept.into_iter().map(|(_, p, o)| (p, o)).collect()
}

fn remove_subtree(st: &mut BTreeMap<Path, M>, p: &[&str], keep_self: bool) {
    let doomed: Vec<Path> = st
        .keys()
        .filter(|k| k.starts_with(p) && (k.len() > p.len() || !keep_self))
        .cloned()
        .collect();
    for k in doomed {
        st.remove(&k);
    }
}

fn ensure_dir(st: &mut BTreeMap<Path, M>, p: &[&'static str]) {
    match st.get(p) {
        Some(M::Dir(_)) => {}
        _ => {
            remove_subtree(st, p, false);
            st.insert(p.to_vec(), M::Dir(None));
        }
    }
}

fn model_apply(st: &mut BTreeMap<Path, M>, layer: &[(Path, Op)], n: u16) {
    for (p, op) in layer {
        match op {
            Op::Whiteout => remove_subtree(st, p, false),
            Op::Opaque | Op::OpaqueDir => remove_subtree(st, p, true),
            _ => {}
        }
    }
    for (p, op) in layer {
        for k in 1..p.len() {
            ensure_dir(st, &p[..k]);
        }
        match op {
            Op::File => {
                remove_subtree(st, p, false);
                st.insert(p.clone(), M::File(n));
            }
            Op::Dir | Op::OpaqueDir => {
                if !matches!(st.get(p), Some(M::Dir(_))) {
                    remove_subtree(st, p, false);
                }
                st.insert(p.clone(), M::Dir(Some(n)));
            }
            Op::Opaque => ensure_dir(st, p),
            Op::Whiteout => {}
        }
    }
}

fn layer_tar(layer: &[(Path, Op)], n: u16) -> Tree {
    let mut w = TarW::new();
    w.mtime = n as u64 + 1;
    for (p, op) in layer {
        let path = p.join("/");
        match op {
            Op::File => {
                w.file(path.as_bytes(), b"data");
            }
            Op::Dir => {
                w.dir(path.as_bytes(), 0o755);
            }
            Op::Whiteout => {
                let (name, parent) = p.split_last().unwrap();
                let mut wp: Vec<String> = parent.iter().map(|s| s.to_string()).collect();
                wp.push(format!(".wh.{name}"));
                w.file(wp.join("/").as_bytes(), b"");
            }
            Op::Opaque => {
                w.file(format!("{path}/.wh..wh..opq").as_bytes(), b"");
            }
            Op::OpaqueDir => {
                w.file(format!("{path}/.wh..wh..opq").as_bytes(), b"");
                w.dir(path.as_bytes(), 0o755);
            }
        }
    }
    index_tar(&w.finish()[..], 0, &Limits::default()).unwrap()
}

fn observed(m: &Tree) -> BTreeMap<Path, M> {
    let mut out = BTreeMap::new();
    for (p, id) in m.walk().into_iter().skip(1) {
        let n = m.node(id);
        assert!(!n.whiteout && !n.opaque && n.xattr(OPAQUE_XATTR).is_none());
        let path: Path = p
            .split(|&b| b == b'/')
            .map(|c| {
                *NAMES
                    .iter()
                    .find(|n| n.as_bytes() == c)
                    .expect("only model names")
            })
            .collect();
        let v = match n.kind {
            NodeKind::File => M::File(n.content.layer().unwrap()),
            NodeKind::Dir if n.implicit => M::Dir(None),
            NodeKind::Dir => M::Dir(Some(n.mtime as u16 - 1)),
            k => panic!("unexpected {k:?} at {p:?}"),
        };
        out.insert(path, v);
    }
    out
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 400, ..Default::default() })]
    #[test]
    fn merge_matches_the_overlay_model(
        layers in proptest::collection::vec(
            proptest::collection::vec(
                (proptest::collection::vec(0usize..3, 1..4), 0u8..5),
                0..10,
            ),
            1..5,
        )
    ) {
        let mut model = BTreeMap::new();
        let mut trees = Vec::new();
        for (n, ops) in layers.iter().enumerate() {
            let layer = normalise_layer(ops);
            model_apply(&mut model, &layer, n as u16);
            trees.push(layer_tar(&layer, n as u16));
        }
        let m = merged(&trees);
        proptest::prop_assert_eq!(observed(&m), model);
        // nlink of directories agrees with their children
        for n in m.nodes().iter().filter(|n| n.kind == NodeKind::Dir) {
            let subdirs = n.children.iter().filter(|(_, c)| m.node(*c).kind == NodeKind::Dir).count();
            proptest::prop_assert_eq!(n.nlink as usize, 2 + subdirs);
        }
    }
}
