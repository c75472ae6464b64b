//! One layer, three formats (gzip tar, eStargz, zstd:chunked), one tree: every
//! rule of [`super`] must hold the same whichever reader fed the entries.

use std::collections::HashMap;
use std::io::Read;

use tar::EntryType;

use super::*;
use crate::digest::Digest;
use crate::estargz::testutil::{estargz, zstd_chunked, LazyBlob};
use crate::estargz::{decode_chunk, toc_to_tree};
use crate::layer::testutil::{listing, TarW};
use crate::layer::{ingest, read_content, Compression};

/// Every kind of entry the hostile-layer tests of the tar indexer use
/// (`layer/index/tests.rs`), with UTF-8 names (a TOC is JSON) and whole-second
/// mtimes (eStargz TOCs keep seconds only).
fn hostile_layer() -> Vec<u8> {
    let mut w = TarW::new();
    // Every kind, `./` prefixes, a root entry, an implicit parent.
    w.dir(b"./", 0o700);
    w.dir(b"./usr/", 0o755)
        .file_mode(b"./usr/su", b"setuid!", 0o4755)
        .dir(b"./tmp/", 0o1777)
        .symlink(b"./usr/link", b"../../../etc/shadow")
        .hardlink(b"./usr/su2", b"./usr/su")
        .dev(b"dev/null", EntryType::Char, 1, 3)
        .dev(b"dev/sda", EntryType::Block, 8, 0)
        .dev(b"dev/fifo", EntryType::Fifo, 0, 0);
    // Xattrs (binary, a repeat: the last wins, an overlay one: dropped),
    // owners beyond 32 bits and at the edge.
    w.pax(&[
        (
            "SCHILY.xattr.security.capability",
            &[1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0][..],
        ),
        ("SCHILY.xattr.user.a", b"first"),
        ("SCHILY.xattr.user.a", b"1"),
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("uid", b"5000000000"),
        ("gid", b"4294967295"),
    ]);
    w.file(b"usr/ping", b"ping");
    w.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir(b"notopaque", 0o755);
    // Long names and link targets; another mtime.
    w.mtime = 1_234_567_890;
    let long = format!("usr/{}/{}", "d".repeat(150), "f".repeat(120));
    w.file(long.as_bytes(), b"long name");
    w.symlink(b"usr/longlink", "t".repeat(300).as_bytes());
    w.mtime = 1_700_000_000;
    // Hostile names.
    w.file(b"../../etc/passwd", b"pw")
        .file(b"/abs/x", b"abs")
        .file(b"a/./b/../c", b"c")
        .file(b"..", b"dotdot-root")
        .hardlink(b"hl-missing", b"nope")
        .hardlink(b"hl-escape", b"../../etc/passwd")
        .hardlink(b"hl-dir", b"abs")
        .hardlink(b"hl-ok", b"/etc/passwd")
        .symlink(b"out", b"/../../../../etc/shadow")
        .symlink(b"nowhere", b"");
    // Duplicates: the last wins.
    w.file(b"f", b"first")
        .file(b"f", b"second!")
        .dir(b"d", 0o700)
        .file(b"d/inner", b"x")
        .file(b"d", b"now a file")
        .file(b"g", b"g")
        .file(b"g/child", b"c")
        .dir(b"k", 0o700)
        .file(b"k/keep", b"kept")
        .dir(b"k", 0o711);
    // Hard links whose target's name is replaced, made a directory, or whited out later.
    w.file(b"ha", b"old")
        .hardlink(b"hb", b"ha")
        .file(b"ha", b"new")
        .file(b"pa", b"p")
        .hardlink(b"pb", b"pa")
        .file(b"pa/child", b"c")
        .file(b"wa", b"kept")
        .hardlink(b"wb", b"wa")
        .file(b".wh.wa", b"")
        .file(b"wo", b"target")
        .file(b"wdir/x", b"x")
        .hardlink(b"wdir/.wh.x", b"wo");
    // Whiteouts and opaque directories, in both orders.
    w.file(b"etc2/.wh..wh..opq", b"")
        .dir(b"etc2", 0o751)
        .file(b"etc2/keep", b"k")
        .file(b"usr/.wh.gone", b"")
        .file(b".wh.missing-anyway", b"")
        .file(b"x/.wh..wh.plnk", b"")
        .file(b"y/.wh.", b"")
        .file(b".wh.both", b"")
        .dir(b"both", 0o700)
        .dir(b"both2", 0o700)
        .file(b".wh.both2", b"")
        .file(b".wh.fileboth", b"")
        .file(b"fileboth", b"f")
        .file(b"wsub/.wh.sub", b"")
        .file(b"wsub/sub/inner", b"x");
    // Empty and large files: several chunks, runs of zeros (holes in zstd:chunked).
    w.file(b"empty", b"");
    let mut big: Vec<u8> = (0..(4u32 << 20) + 70_000)
        .map(|i| (i % 251) as u8)
        .collect();
    big[(1 << 20)..(1 << 20) + (300 << 10)].fill(0);
    w.file(b"usr/big", &big);
    w.finish()
}

/// A tree as comparable facts, path by path: names, kinds, metadata,
/// targets, xattrs, the first path of the same node (hard-link identity),
/// and a file's bytes.
fn facts(t: &Tree, read: &dyn Fn(&Node) -> Vec<u8>) -> Vec<String> {
    let mut first: HashMap<NodeId, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for (path, id) in t.walk() {
        let n = t.node(id);
        let same = first.entry(id).or_insert_with(|| path.clone()).clone();
        let bytes = if n.kind == NodeKind::File {
            Digest::sha256_of(&read(n)).to_string()
        } else {
            String::new()
        };
        out.push(format!(
            "{:?} {:?} mode={:o} {}:{} mtime={}.{} size={} nlink={} rdev={:?} link={:?} \
             xattrs={:?} whiteout={} opaque={} implicit={} same-as={:?} bytes={bytes}",
            String::from_utf8_lossy(&path),
            n.kind,
            n.mode,
            n.uid,
            n.gid,
            n.mtime,
            n.mtime_nsec,
            n.size,
            n.nlink,
            n.rdev,
            n.link_target.as_deref().map(String::from_utf8_lossy),
            n.xattrs,
            n.whiteout,
            n.opaque,
            n.implicit,
            String::from_utf8_lossy(&same),
        ));
    }
    out
}

/// A lazy layer's file bytes, chunk by chunk, each verified.
fn read_chunks(l: &LazyBlob, n: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    match &n.content {
        FileData::None => {}
        FileData::Chunks { chunks, .. } => {
            for c in chunks {
                assert_eq!(c.file_offset, out.len() as u64, "contiguous");
                if c.zeros {
                    assert_eq!(l.format, crate::estargz::Format::ZstdChunked);
                    let z = vec![0u8; c.size as usize];
                    assert_eq!(Digest::sha256_of(&z), c.digest);
                    out.extend_from_slice(&z);
                    continue;
                }
                let at = c.blob_offset as usize;
                let data = &l.blob[at..at + c.blob_len as usize];
                out.extend_from_slice(&decode_chunk(l.format, data, c).unwrap());
            }
        }
        c => panic!("a lazy layer's file as {c:?}"),
    }
    out
}

#[test]
fn gzip_estargz_and_zstd_chunked_give_the_same_tree() {
    let tar = hostile_layer();
    let limits = Limits::default();

    // gzip: the whole-layer path (hash, decompress, store, index).
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, &tar).unwrap();
        e.finish().unwrap()
    };
    let mut stored = tempfile::tempfile().unwrap();
    let (gz_tree, _) = ingest(
        &gz[..],
        Compression::Gzip,
        &Digest::sha256_of(&gz),
        &Digest::sha256_of(&tar),
        0,
        &mut stored,
        &limits,
    )
    .unwrap();
    let mut uncompressed = Vec::new();
    std::io::Seek::rewind(&mut stored).unwrap();
    stored.read_to_end(&mut uncompressed).unwrap();
    assert_eq!(uncompressed, tar);
    let read_tar = |n: &Node| {
        let mut buf = vec![0u8; n.size as usize];
        let got = read_content(n, &[&tar[..]], 0, &mut buf).unwrap();
        assert_eq!(got, buf.len());
        buf
    };
    let want = facts(&gz_tree, &read_tar);

    // What the rules make of this layer, checked here so that a rule dropped
    // for every format at once is caught too.
    let l = listing(&gz_tree);
    let has = |p: &str, d: &str| l.iter().any(|(a, b)| a == p && b == d);
    for (p, d) in [
        ("usr/su2", "file 7"),
        ("dev/null", "CharDev (1, 3)"),
        ("dev/sda", "BlockDev (8, 0)"),
        ("dev/fifo", "Fifo (0, 0)"),
        ("etc/passwd", "file 2"),
        ("hl-ok", "file 2"),
        ("a/c", "file 1"),
        ("f", "file 7"),
        ("d", "file 10"),
        ("g", "dir"),
        ("k/keep", "file 4"),
        ("hb", "file 3"),
        ("pa", "dir"),
        ("pb", "file 1"),
        ("wa", "file 4"),
        ("wb", "file 4"),
        ("wdir/x", "file 1"),
        ("etc2", "dir opaque"),
        ("usr/gone", "whiteout"),
        ("missing-anyway", "whiteout"),
        ("both", "dir opaque"),
        ("both2", "dir opaque"),
        ("fileboth", "file 1"),
        ("wsub/sub", "dir opaque"),
        ("notopaque", "dir"),
        ("nowhere", "symlink "),
        ("empty", "file 0"),
    ] {
        assert!(has(p, d), "{p}: {d} expected in {l:#?}");
    }
    for gone in [
        "hl-missing",
        "hl-escape",
        "hl-dir",
        "x",
        "y",
        "d/inner",
        "..",
    ] {
        assert!(!l.iter().any(|(a, _)| a == gone), "{gone} in {l:#?}");
    }
    let t = &gz_tree;
    let node = |p: &[u8]| t.node(t.lookup_path(p).unwrap());
    assert_eq!(t.lookup_path(b"usr/su"), t.lookup_path(b"usr/su2"));
    assert_eq!(node(b"usr/su").nlink, 2);
    assert_ne!(t.lookup_path(b"ha"), t.lookup_path(b"hb"));
    let ping = node(b"usr/ping");
    assert_eq!((ping.uid, ping.gid), (65534, 4294967295));
    assert_eq!(ping.xattr(b"user.a"), Some(&b"1"[..]));
    assert_eq!(ping.xattrs.len(), 2, "{:?}", ping.xattrs);
    assert!(node(b"notopaque").xattrs.is_empty());
    assert!(
        !node(b"wdir/x").whiteout,
        "a hard link named .wh.x is a whiteout-like name, not a link"
    );
    assert_eq!(read_tar(node(b"hb")), b"old");
    assert_eq!(read_tar(node(b"ha")), b"new");
    assert_eq!((node(b"..").kind, node(b"").mode), (NodeKind::Dir, 0o700));

    // eStargz, by the export's writer; zstd:chunked with 64 KiB chunks and holes.
    for lazy in [estargz(&tar), zstd_chunked(&tar, 64 << 10)] {
        let ix = toc_to_tree(&lazy.toc, lazy.format, lazy.data_end, 0, &limits).unwrap();
        let got = facts(&ix.tree, &|n| read_chunks(&lazy, n));
        if got != want {
            let only = |a: &[String], b: &[String]| -> Vec<String> {
                a.iter()
                    .filter(|l| !b.contains(l))
                    .take(6)
                    .cloned()
                    .collect()
            };
            panic!(
                "{:?} and gzip give different trees ({} vs {} paths)\nonly gzip: {:#?}\nonly {:?}: {:#?}",
                lazy.format,
                got.len(),
                want.len(),
                only(&want, &got),
                lazy.format,
                only(&got, &want),
            );
        }
        let big = ix.tree.node(ix.tree.lookup_path(b"usr/big").unwrap());
        let FileData::Chunks { chunks, .. } = &big.content else {
            panic!("usr/big not chunked")
        };
        assert!(chunks.len() >= 2, "several chunks: {}", chunks.len());
        if lazy.format == crate::estargz::Format::ZstdChunked {
            assert!(chunks.iter().any(|c| c.zeros), "a hole");
        }
    }
}

#[test]
fn the_metadata_bound_holds_for_every_format() {
    let mut w = TarW::new();
    for i in 0..50 {
        w.file(format!("dir/{}{i}", "n".repeat(60)).as_bytes(), b"x");
    }
    let tar = w.finish();
    let small = Limits {
        max_metadata_bytes: 2000,
        ..Limits::default()
    };
    assert!(matches!(
        crate::layer::index_tar(&tar[..], 0, &small),
        Err(Error::TooLarge(_))
    ));
    for lazy in [estargz(&tar), zstd_chunked(&tar, 64 << 10)] {
        assert!(toc_to_tree(&lazy.toc, lazy.format, lazy.data_end, 0, &Limits::default()).is_ok());
        match toc_to_tree(&lazy.toc, lazy.format, lazy.data_end, 0, &small) {
            Err(Error::TooLarge(m)) => assert!(m.contains("2000"), "{m}"),
            r => panic!("{:?}: {:?}", lazy.format, r.map(|i| i.tree.len())),
        }
    }
}

#[test]
fn entry_limits_and_xattr_bound_hold_for_toc_entries() {
    let mut w = TarW::new();
    w.pax(&[("SCHILY.xattr.user.big", &vec![b'v'; 5000][..])])
        .file(b"f", b"x");
    for i in 0..5 {
        w.file(format!("g{i}").as_bytes(), b"y");
    }
    let tar = w.finish();
    let few = Limits {
        max_entries: 5,
        ..Limits::default()
    };
    let small_xattrs = Limits {
        max_xattr_bytes: 4096,
        ..Limits::default()
    };
    assert!(matches!(
        crate::layer::index_tar(&tar[..], 0, &few),
        Err(Error::TooLarge(_))
    ));
    assert!(matches!(
        crate::layer::index_tar(&tar[..], 0, &small_xattrs),
        Err(Error::TooLarge(_))
    ));
    for lazy in [estargz(&tar), zstd_chunked(&tar, 64 << 10)] {
        for l in [&few, &small_xattrs] {
            assert!(
                matches!(
                    toc_to_tree(&lazy.toc, lazy.format, lazy.data_end, 0, l),
                    Err(Error::TooLarge(_))
                ),
                "{:?} {l:?}",
                lazy.format
            );
        }
    }
}

#[test]
fn builder_applies_entries_directly() {
    let limits = Limits::default();
    let mut b = TreeBuilder::new("test", &limits);
    let file = |path: &'static [u8]| Entry {
        mode: 0o644,
        size: 3,
        content: FileData::Tar {
            layer: 0,
            offset: 512,
        },
        ..Entry::new(path, EntryKind::Node(NodeKind::File))
    };
    assert!(b.add(file(b"./a/b")).unwrap().is_some());
    assert_eq!(
        b.add(Entry::new(b"a", EntryKind::Node(NodeKind::Dir)))
            .unwrap(),
        None
    );
    assert_eq!(
        b.add(Entry {
            link: b"/a/b",
            ..Entry::new(b"c", EntryKind::HardLink)
        })
        .unwrap(),
        None
    );
    b.add(Entry::new(
        b"a/.wh..wh..opq",
        EntryKind::Node(NodeKind::File),
    ))
    .unwrap();
    b.skipped().unwrap();
    assert_eq!(b.entries(), 5);
    let t = b.finish();
    assert_eq!(t.lookup_path(b"a/b"), t.lookup_path(b"c"));
    let a = t.node(t.lookup_path(b"a").unwrap());
    assert!(a.opaque && !a.implicit);
    assert_eq!(a.mode, 0);
}
