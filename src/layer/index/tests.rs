use super::*;
use crate::layer::testutil::{listing, TarW};
use crate::layer::tree::{read_content, OPAQUE_XATTR};
use tar::EntryType;

fn idx(tar: &[u8]) -> Tree {
    index_tar(tar, 0, &Limits::default()).unwrap()
}

fn read_all(t: &Tree, path: &[u8], tar: &[u8]) -> Vec<u8> {
    let n = t.node(t.lookup_path(path).unwrap());
    let mut buf = vec![0u8; n.size as usize + 10];
    let got = read_content(n, &[tar], 0, &mut buf).unwrap();
    buf.truncate(got);
    buf
}

fn s(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn every_kind_and_its_metadata() {
    let mut w = TarW::new();
    w.dir(b"./", 0o700);
    w.dir(b"./usr/", 0o755)
        .file_mode(b"./usr/su", b"setuid!", 0o4755)
        .dir(b"./tmp/", 0o1777)
        .symlink(b"./usr/link", b"../../../etc/shadow")
        .hardlink(b"./usr/su2", b"./usr/su")
        .dev(b"dev/null", EntryType::Char, 1, 3)
        .dev(b"dev/sda", EntryType::Block, 8, 0)
        .dev(b"dev/fifo", EntryType::Fifo, 0, 0);
    w.pax(&[
        (
            "SCHILY.xattr.security.capability",
            &[1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0][..],
        ),
        ("SCHILY.xattr.user.a", b"1"),
        ("mtime", b"1234567890.123456789"),
        ("uid", b"100000"),
        ("gid", b"4294967295"),
    ]);
    w.file(b"usr/ping", b"ping");
    let long = format!("usr/{}/{}", "d".repeat(150), "f".repeat(120));
    w.file(long.as_bytes(), b"long name");
    let long_target = "t".repeat(300);
    w.symlink(b"usr/longlink", long_target.as_bytes());
    let tar = w.finish();
    let t = idx(&tar);

    let root = t.node(t.root());
    assert_eq!(root.mode, 0o700);
    assert!(!root.implicit);
    let su = t.lookup_path(b"usr/su").unwrap();
    assert_eq!(t.node(su).mode, 0o4755);
    assert_eq!(
        t.lookup_path(b"usr/su2"),
        Some(su),
        "hard link shares the node"
    );
    assert_eq!(t.node(su).nlink, 2);
    assert_eq!(read_all(&t, b"usr/su2", &tar), b"setuid!");
    assert_eq!(t.node(t.lookup_path(b"tmp").unwrap()).mode, 0o1777);
    let l = t.node(t.lookup_path(b"usr/link").unwrap());
    assert_eq!(l.kind, NodeKind::Symlink);
    assert_eq!(
        l.link_target.as_deref(),
        Some(&b"../../../etc/shadow"[..]),
        "stored as-is"
    );
    assert_eq!(l.size, 19);
    let null = t.node(t.lookup_path(b"dev/null").unwrap());
    assert_eq!(
        (null.kind, null.rdev, null.mode),
        (NodeKind::CharDev, (1, 3), 0o660)
    );
    let sda = t.node(t.lookup_path(b"dev/sda").unwrap());
    assert_eq!((sda.kind, sda.rdev), (NodeKind::BlockDev, (8, 0)));
    assert_eq!(
        t.node(t.lookup_path(b"dev/fifo").unwrap()).kind,
        NodeKind::Fifo
    );
    let dev = t.node(t.lookup_path(b"dev").unwrap());
    assert!(dev.implicit, "dev/ was never in the tar");
    assert_eq!((dev.mode, dev.uid, dev.mtime), (0o755, 0, 0));

    let ping = t.node(t.lookup_path(b"usr/ping").unwrap());
    assert_eq!(ping.xattr(b"security.capability").unwrap().len(), 12);
    assert_eq!(ping.xattr(b"user.a"), Some(&b"1"[..]));
    let names: Vec<&[u8]> = ping.xattrs.iter().map(|(n, _)| n.as_slice()).collect();
    assert_eq!(
        names,
        vec![&b"security.capability"[..], b"user.a"],
        "sorted"
    );
    assert_eq!((ping.mtime, ping.mtime_nsec), (1234567890, 123456789));
    assert_eq!((ping.uid, ping.gid), (100000, 4294967295));
    assert_eq!(read_all(&t, b"usr/ping", &tar), b"ping");
    assert_eq!(t.node(su).mtime, 1_700_000_000);
    assert_eq!(read_all(&t, long.as_bytes(), &tar), b"long name");
    let ll = t.node(t.lookup_path(b"usr/longlink").unwrap());
    assert_eq!(ll.link_target.as_deref(), Some(long_target.as_bytes()));
    // directories: nlink = 2 + subdirectories
    assert_eq!(root.nlink, 2 + 3);
    assert_eq!(t.node(t.lookup_path(b"usr").unwrap()).nlink, 3);
}

#[test]
fn root_is_synthesised_without_dot_entry() {
    let mut w = TarW::new();
    w.file(b"a", b"x");
    let t = idx(&w.finish());
    let r = t.node(t.root());
    assert!(r.implicit);
    assert_eq!((r.kind, r.mode, r.uid, r.gid), (NodeKind::Dir, 0o755, 0, 0));
    // an empty tar is a tree with just the root
    let t = idx(&TarW::new().finish());
    assert_eq!(t.len(), 1);
    let t = idx(b"");
    assert_eq!(t.len(), 1);
}

#[test]
fn old_style_dir_by_trailing_slash() {
    let mut w = TarW::new();
    let mut h = w.header(b"olddir/", EntryType::Regular, 0o750, 0);
    h.as_mut_bytes()[156] = 0;
    w.append(h, b"");
    let t = idx(&w.finish());
    let n = t.node(t.lookup_path(b"olddir").unwrap());
    assert_eq!((n.kind, n.mode), (NodeKind::Dir, 0o750));
}

#[test]
fn pax_times_parse() {
    assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
    assert_eq!(parse_pax_time(b"12.5"), Some((12, 500_000_000)));
    assert_eq!(parse_pax_time(b"12.0000000019999"), Some((12, 1)));
    assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
    assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
    assert_eq!(parse_pax_time(b"x"), None);
    assert_eq!(parse_pax_time(b"1.x"), None);
    assert_eq!(parse_pax_time(b""), None);
}

#[test]
fn hostile_names_stay_inside() {
    let mut w = TarW::new();
    w.file(b"../../etc/passwd", b"pw")
        .file(b"/abs/x", b"abs")
        .file(b"a/./b/../c", b"c")
        .file(b"..", b"dotdot-root") // names the root: not a dir, skipped
        .file(&[b'n', 0xff, 0xfe, b'!'], b"bytes")
        .hardlink(b"hl-missing", b"nope")
        .hardlink(b"hl-escape", b"../../etc/passwd")
        .hardlink(b"hl-dir", b"abs")
        .hardlink(b"hl-ok", b"/etc/passwd")
        .symlink(b"out", b"/../../../../etc/shadow");
    let tar = w.finish();
    let t = idx(&tar);
    assert_eq!(
        listing(&t),
        s(&[
            ("a", "dir"),
            ("a/c", "file 1"),
            ("abs", "dir"),
            ("abs/x", "file 3"),
            ("etc", "dir"),
            ("etc/passwd", "file 2"),
            ("hl-ok", "file 2"),
            ("n\u{fffd}\u{fffd}!", "file 5"),
            ("out", "symlink /../../../../etc/shadow"),
        ])
    );
    assert!(
        t.lookup(t.root(), &[b'n', 0xff, 0xfe, b'!']).is_some(),
        "raw bytes kept"
    );
    assert_eq!(t.lookup_path(b"hl-ok"), t.lookup_path(b"etc/passwd"));
    for (p, _) in t.walk() {
        assert!(
            !p.split(|&b| b == b'/').any(|c| c == b".." || c == b"."),
            "{p:?}"
        );
    }
}

#[test]
fn duplicates_last_wins() {
    let mut w = TarW::new();
    w.file(b"f", b"first")
        .file(b"f", b"second!")
        .dir(b"d", 0o700)
        .file(b"d/inner", b"x")
        .file(b"d", b"now a file") // drops d's subtree
        .file(b"g", b"g")
        .file(b"g/child", b"c") // parent is a file: becomes an implicit dir
        .dir(b"k", 0o700)
        .file(b"k/keep", b"kept")
        .dir(b"k", 0o711); // dir over dir: metadata only
    let tar = w.finish();
    let t = idx(&tar);
    assert_eq!(
        listing(&t),
        s(&[
            ("d", "file 10"),
            ("f", "file 7"),
            ("g", "dir"),
            ("g/child", "file 1"),
            ("k", "dir"),
            ("k/keep", "file 4"),
        ])
    );
    assert_eq!(read_all(&t, b"f", &tar), b"second!");
    assert!(t.node(t.lookup_path(b"g").unwrap()).implicit);
    assert_eq!(t.node(t.lookup_path(b"k").unwrap()).mode, 0o711);
    assert_eq!(t.len(), 7, "replaced nodes are dropped");
}

#[test]
fn replacing_a_hard_linked_name_keeps_the_other_link() {
    let mut w = TarW::new();
    w.file(b"a", b"old").hardlink(b"b", b"a").file(b"a", b"new");
    let tar = w.finish();
    let t = idx(&tar);
    assert_eq!(read_all(&t, b"a", &tar), b"new");
    assert_eq!(read_all(&t, b"b", &tar), b"old");
    assert_eq!(t.node(t.lookup_path(b"a").unwrap()).nlink, 1);
    assert_eq!(t.node(t.lookup_path(b"b").unwrap()).nlink, 1);
}

#[test]
fn whiteouts_in_the_layer_view() {
    let mut w = TarW::new();
    // eStargz order: the opaque marker before its directory's entry
    w.file(b"etc/.wh..wh..opq", b"")
        .dir(b"etc", 0o751)
        .file(b"etc/keep", b"k")
        .file(b"usr/.wh.gone", b"")
        .file(b".wh.missing-anyway", b"")
        .file(b"x/.wh..wh.plnk", b"") // aufs metadata: skipped (no parent created)
        .file(b"y/.wh.", b"") // no name: skipped
        .file(b".wh.both", b"")
        .dir(b"both", 0o700) // whiteout + dir in one layer: opaque dir
        .dir(b"both2", 0o700)
        .file(b".wh.both2", b"") // same, other order
        .file(b".wh.fileboth", b"")
        .file(b"fileboth", b"f");
    let t = idx(&w.finish());
    assert_eq!(
        listing(&t),
        s(&[
            ("both", "dir opaque"),
            ("both2", "dir opaque"),
            ("etc", "dir opaque"),
            ("etc/keep", "file 1"),
            ("fileboth", "file 1"),
            ("missing-anyway", "whiteout"),
            ("usr", "dir"),
            ("usr/gone", "whiteout"),
        ])
    );
    let etc = t.node(t.lookup_path(b"etc").unwrap());
    assert_eq!(etc.mode, 0o751, "the dir entry's metadata applies");
    assert!(!etc.implicit);
    assert_eq!(etc.xattr(OPAQUE_XATTR), Some(&b"y"[..]));
    let wh = t.node(t.lookup_path(b"usr/gone").unwrap());
    assert_eq!(
        (wh.kind, wh.rdev, wh.mode, wh.whiteout),
        (NodeKind::CharDev, (0, 0), 0, true)
    );
    assert!(!t.node(t.lookup_path(b"usr").unwrap()).opaque);
}

#[test]
fn tar_overlay_xattrs_are_dropped() {
    let mut w = TarW::new();
    w.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y")])
        .dir(b"d", 0o755);
    let t = idx(&w.finish());
    let d = t.node(t.lookup_path(b"d").unwrap());
    assert!(!d.opaque);
    assert!(d.xattrs.is_empty());
}

#[test]
fn gnu_sparse_files() {
    // 5 data segments and the terminating empty one GNU tar writes at the
    // real size: the last two go to an extension header.
    let mut segs: Vec<(u64, Vec<u8>)> = (0..5u64)
        .map(|i| {
            (
                i * 10_000 + 100,
                vec![b'a' + i as u8; 512 * (i as usize + 1)],
            )
        })
        .collect();
    segs.push((100_000, Vec::new()));
    let small = vec![
        (0u64, vec![7u8; 512]),
        (4096u64, vec![9u8; 512]),
        (8192, Vec::new()),
    ];
    let mut w = TarW::new();
    w.file(b"before", b"b")
        .sparse(b"big.sparse", &segs, 100_000)
        .sparse(b"small.sparse", &small, 8192)
        .file(b"after", b"after");
    let tar = w.finish();

    // the reference: what the tar crate itself reads
    let mut reference = std::collections::BTreeMap::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path_bytes().into_owned();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        reference.insert(p, v);
    }
    let t = idx(&tar);
    for name in [&b"big.sparse"[..], b"small.sparse", b"before", b"after"] {
        let got = read_all(&t, name, &tar);
        assert_eq!(&got, &reference[name], "{}", String::from_utf8_lossy(name));
    }
    let big = t.node(t.lookup_path(b"big.sparse").unwrap());
    assert_eq!(big.size, 100_000);
    match &big.content {
        FileData::Sparse { segments, layer: 0 } => assert_eq!(segments.len(), 5),
        c => panic!("{c:?}"),
    }
    // spot reads across a hole boundary
    let mut b = [0xAAu8; 8];
    assert_eq!(read_content(big, &[&tar[..]], 96, &mut b).unwrap(), 8);
    assert_eq!(b, [0, 0, 0, 0, b'a', b'a', b'a', b'a']);
}

#[test]
fn pax_sparse_is_skipped() {
    let mut w = TarW::new();
    w.pax(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"s"),
    ])
    .file(b"GNUSparseFile.0/s", b"garbage map")
    .file(b"ok", b"ok");
    let t = idx(&w.finish());
    assert_eq!(listing(&t), s(&[("ok", "file 2")]));
}

#[test]
fn limits_give_too_large() {
    let mut w = TarW::new();
    for i in 0..10 {
        w.file(format!("f{i}").as_bytes(), b"x");
    }
    let tar = w.finish();
    let l = Limits {
        max_entries: 9,
        ..Limits::default()
    };
    assert!(matches!(
        index_tar(&tar[..], 0, &l),
        Err(Error::TooLarge(_))
    ));
    let l = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    assert!(index_tar(&tar[..], 0, &l).is_ok());
    let l = Limits {
        max_uncompressed: 2048,
        ..Limits::default()
    };
    assert!(matches!(
        index_tar(&tar[..], 0, &l),
        Err(Error::TooLarge(_))
    ));

    let mut w = TarW::new();
    w.file("n".repeat(300).as_bytes(), b"x");
    let tar = w.finish();
    let l = Limits {
        max_name_len: 299,
        ..Limits::default()
    };
    match index_tar(&tar[..], 0, &l) {
        Err(Error::TooLarge(m)) => assert!(m.contains("300"), "{m}"),
        r => panic!("{r:?}"),
    }
    assert!(index_tar(
        &tar[..],
        0,
        &Limits {
            max_name_len: 300,
            ..Limits::default()
        }
    )
    .is_ok());

    let mut w = TarW::new();
    w.pax(&[("SCHILY.xattr.user.big", &vec![b'v'; 5000][..])])
        .file(b"f", b"x");
    let tar = w.finish();
    let l = Limits {
        max_xattr_bytes: 4096,
        ..Limits::default()
    };
    assert!(matches!(
        index_tar(&tar[..], 0, &l),
        Err(Error::TooLarge(_))
    ));
    assert!(index_tar(&tar[..], 0, &Limits::default()).is_ok());

    // a GNU long name far beyond the limits is refused before it is buffered
    let mut w = TarW::new();
    w.file("x".repeat(3 << 20).as_bytes(), b"x");
    let tar = w.finish();
    let l = Limits {
        max_name_len: 100,
        max_xattr_bytes: 100,
        ..Limits::default()
    };
    match index_tar(&tar[..], 0, &l) {
        Err(Error::TooLarge(m)) => assert!(m.contains("headers"), "{m}"),
        r => panic!("{r:?}"),
    }

    // deep implicit parents count as nodes
    let mut w = TarW::new();
    let deep: Vec<u8> = b"d/".repeat(2000).into_iter().chain(*b"f").collect();
    w.file(&deep, b"x");
    let tar = w.finish();
    let l = Limits {
        max_entries: 10,
        ..Limits::default()
    };
    assert!(index_tar(&tar[..], 0, &l).is_ok(), "2000 < 2*10+4096");
    let l = Limits {
        max_metadata_bytes: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        index_tar(&tar[..], 0, &l),
        Err(Error::TooLarge(_))
    ));
}

#[test]
fn truncated_or_garbage_is_invalid() {
    let mut w = TarW::new();
    w.file(b"a", &[1u8; 3000]).file(b"b", b"bb");
    let tar = w.finish();
    for cut in [100usize, 512 + 100, 512 + 3000, 2 * 512 + 3072 - 10] {
        match index_tar(&tar[..cut], 0, &Limits::default()) {
            Err(Error::Invalid(m)) => assert!(m.starts_with("layer tar: "), "{m}"),
            r => panic!("cut {cut}: {r:?}"),
        }
    }
    let mut bad = tar.clone();
    bad[0] ^= 0x55; // checksum no longer matches
    assert!(matches!(
        index_tar(&bad[..], 0, &Limits::default()),
        Err(Error::Invalid(_))
    ));
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    assert!(matches!(
        index_tar(&garbage[..], 0, &Limits::default()),
        Err(Error::Invalid(_))
    ));
    let mut badmode = TarW::new();
    let mut h = badmode.header(b"m", EntryType::Regular, 0o644, 0);
    h.as_old_mut().mode = *b"zzzzzzz\0";
    badmode.append(h, b"");
    assert!(matches!(
        index_tar(&badmode.finish()[..], 0, &Limits::default()),
        Err(Error::Invalid(_))
    ));
}

/// Random byte soup built from real tar pieces never panics.
#[test]
fn fuzzish_mutations_never_panic() {
    let mut w = TarW::new();
    w.pax(&[("SCHILY.xattr.user.x", b"1"), ("mtime", b"1.5")])
        .file(b"a/b", b"hello")
        .hardlink(b"c", b"a/b")
        .sparse(
            b"s",
            &[(0, vec![1; 512]), (2048, vec![2; 512]), (4096, vec![])],
            4096,
        )
        .file(b"d/.wh..wh..opq", b"")
        .symlink(b"l", b"x");
    let tar = w.finish();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut t = tar.clone();
        for k in 0..4 {
            let pos = ((seed >> (k * 16)) as usize) % t.len();
            t[pos] = (seed >> (k * 8)) as u8;
        }
        let _ = index_tar(&t[..], 0, &Limits::default());
        let cut = (seed as usize) % t.len();
        let _ = index_tar(&t[..cut], 0, &Limits::default());
    }
}

#[test]
fn hundred_thousand_entries() {
    let mut w = TarW::new();
    for d in 0..100 {
        w.dir(format!("dir{d:03}").as_bytes(), 0o755);
        for f in 0..999 {
            w.file(format!("dir{d:03}/file-with-a-name-{f:04}").as_bytes(), b"");
        }
    }
    let tar = w.finish();
    let start = std::time::Instant::now();
    let t = idx(&tar);
    let took = start.elapsed();
    assert_eq!(t.len(), 100_001);
    assert!(t.lookup_path(b"dir042/file-with-a-name-0998").is_some());
    // generous: debug build on a shared machine
    assert!(took.as_secs() < 20, "{took:?}");
}

/// `cargo test --release --lib layer::index::tests::measure_100k -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_100k() {
    fn hwm_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap()
    }
    let mut w = TarW::new();
    for d in 0..1000 {
        w.dir(format!("usr/lib/dir{d:03}").as_bytes(), 0o755);
        for f in 0..99 {
            w.file(
                format!("usr/lib/dir{d:03}/file-with-a-name-{f:04}.py").as_bytes(),
                b"",
            );
        }
    }
    let tar = w.finish();
    let before = hwm_kib();
    let start = std::time::Instant::now();
    let t = idx(&tar);
    let took = start.elapsed();
    let after = hwm_kib();
    let json = serde_json::to_vec(&t).unwrap();
    println!(
        "100k entries ({} nodes, tar {} MiB): indexed in {:?}; RSS +{} MiB; JSON {} MiB",
        t.len(),
        tar.len() >> 20,
        took,
        (after.saturating_sub(before)) >> 10,
        json.len() >> 20
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 32, ..Default::default() })]

    /// The ring keeps exactly the last `RING` bytes, whatever the read sizes
    /// and however they wrap around its end.
    #[test]
    fn ring_keeps_the_last_bytes(
        reads in proptest::collection::vec(1usize..(RING + 5000), 1..12),
        backs in proptest::collection::vec(0usize..(RING + 10), 8),
    ) {
        let total: usize = reads.iter().sum();
        let data: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
        let st = Rc::new(RefCell::new(Shared {
            pos: 0,
            limit: u64::MAX,
            budget: u64::MAX,
            failure: None,
            ring: vec![0; RING],
        }));
        let mut r = Tracked { inner: &data[..], st: Rc::clone(&st) };
        let mut pos = 0;
        for n in reads {
            let mut buf = vec![0u8; n];
            let got = r.read(&mut buf).unwrap();
            proptest::prop_assert_eq!(got, n);
            pos += n;
            for &back in &backs {
                let start = pos.saturating_sub(back) as u64;
                let recent = st.borrow().recent(start);
                if pos - start as usize > RING {
                    proptest::prop_assert!(recent.is_none());
                } else {
                    proptest::prop_assert_eq!(recent.unwrap(), &data[start as usize..pos]);
                }
            }
        }
    }
}
