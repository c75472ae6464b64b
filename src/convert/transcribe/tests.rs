use std::io::Read;

use super::*;
use crate::digest::Digest;
use crate::estargz::{decode_chunk, toc, toc_to_tree, Format, Toc};
use crate::export::compress::{pack_from, Codec};
use crate::layer::{FileData, Limits};

/// What a test compares of a tar entry.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Seen {
    name: String,
    kind: EntryType,
    mode: u32,
    uid: u64,
    mtime: u64,
    link: Option<String>,
    xattrs: Vec<(String, Vec<u8>)>,
    data: Vec<u8>,
}

fn entries(tar: &[u8]) -> Vec<Seen> {
    let mut ar = tar::Archive::new(tar);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut xattrs = Vec::new();
            if let Some(p) = e.pax_extensions().unwrap() {
                for r in p {
                    let r = r.unwrap();
                    if let Some(k) = r.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.push((k.to_string(), r.value_bytes().to_vec()));
                    }
                }
            }
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Seen {
                name: String::from_utf8(e.path_bytes().to_vec()).unwrap(),
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                uid: h.uid().unwrap(),
                mtime: h.mtime().unwrap(),
                link: e
                    .link_name_bytes()
                    .map(|l| String::from_utf8(l.to_vec()).unwrap()),
                xattrs,
                data,
            }
        })
        .collect()
}

/// A ustar header of a regular file: `mode`, root, mtime 0, `size` bytes.
fn header(mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(EntryType::Regular);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

fn names(tar: &[u8]) -> Vec<String> {
    entries(tar).into_iter().map(|e| e.name).collect()
}

/// A source layer as other tools write it: GNU long names, a PAX xattr,
/// a hard link after its target, a symlink, a fifo, a whiteout, a
/// directory without its trailing slash, and the files of an eStargz source.
fn source() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, t: EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        match link {
            Some(l) => b.append_link(&mut h, name, l).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    };
    add(
        ".no.prefetch.landmark",
        EntryType::Regular,
        0,
        &[0x0f],
        None,
    );
    add("a", EntryType::Directory, 0o755, b"", None);
    add("a/b/", EntryType::Directory, 0o750, b"", None);
    add(
        "a/b/deep.py",
        EntryType::Regular,
        0o644,
        b"print('deep')\n",
        None,
    );
    add("a/b/other.txt", EntryType::Regular, 0o600, b"other", None);
    let long = format!("a/{}", "n".repeat(150));
    add(&long, EntryType::Regular, 0o644, b"long name", None);
    add("big", EntryType::Regular, 0o755, &vec![7u8; 5 << 20], None);
    add(
        "a/b/link",
        EntryType::Link,
        0o644,
        b"",
        Some("a/b/other.txt"),
    );
    add("sym", EntryType::Symlink, 0o777, b"", Some("a/b/deep.py"));
    add("fifo", EntryType::Fifo, 0o644, b"", None);
    add("a/.wh.gone", EntryType::Regular, 0o644, b"", None);
    let mut h = header(0o644, 3);
    b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v1"[..])])
        .unwrap();
    b.append_data(&mut h, "xattr.txt", &b"xyz"[..]).unwrap();
    let mut h = header(0o444, 2);
    b.append_data(&mut h, "stargz.index.json", &b"{}"[..])
        .unwrap();
    b.into_inner().unwrap()
}

fn stream(src: &[u8]) -> Vec<u8> {
    let mut r: &[u8] = src;
    let (out, stats) = Replay::Stream(&mut r)
        .produce(Vec::new(), &mut |_| {})
        .unwrap();
    assert_eq!(stats.entries, 11);
    out
}

fn without_format_files(s: Vec<Seen>) -> Vec<Seen> {
    s.into_iter()
        .filter(|e| !is_format_file(e.name.as_bytes()))
        .collect()
}

#[test]
fn entries_and_bytes_are_preserved() {
    let src = source();
    let out = stream(&src);
    let got = entries(&out);
    assert_eq!(got[0].name, NO_PREFETCH_LANDMARK, "landmark first");
    assert_eq!(got[0].data, [LANDMARK_CONTENT]);
    let mut want = without_format_files(entries(&src));
    // A directory's name ends in '/'.
    want[0].name = "a/".into();
    assert_eq!(without_format_files(got), want);
}

#[test]
fn normalize_spellings() {
    assert_eq!(normalize(b"./a/b/"), b"a/b");
    assert_eq!(normalize(b"/a"), b"a");
    assert_eq!(normalize(b"./"), b"");
    assert_eq!(normalize(b"a"), b"a");
}

fn spool(src: &[u8]) -> Spool {
    let dir = tempfile::tempdir().unwrap();
    let mut r: &[u8] = src;
    Spool::new(&mut r, dir.path()).unwrap()
}

fn replay(s: &Spool, p: &Plan) -> Vec<u8> {
    Replay::Spooled(s, p)
        .produce(Vec::new(), &mut |_| {})
        .unwrap()
        .0
}

#[test]
fn prioritised_files_come_first_with_their_parents_then_the_landmark() {
    let src = source();
    let s = spool(&src);
    let wanted: Vec<usize> = ["big", "a/b/deep.py", "nothing-here", "sym"]
        .iter()
        .filter_map(|p| regular_file(&s, p.as_bytes()))
        .collect();
    let p = plan(&s, &wanted);
    assert_eq!(
        p.prioritized_files(&s),
        2,
        "the symlink is not a regular file"
    );
    let got = names(&replay(&s, &p));
    assert_eq!(
        &got[..5],
        ["big", "a/", "a/b/", "a/b/deep.py", PREFETCH_LANDMARK]
    );
    // The rest in source order, each entry once.
    let rest: Vec<&str> = got[5..].iter().map(String::as_str).collect();
    let long = format!("a/{}", "n".repeat(150));
    assert_eq!(
        rest,
        [
            "a/b/other.txt",
            long.as_str(),
            "a/b/link",
            "sym",
            "fifo",
            "a/.wh.gone",
            "xattr.txt"
        ]
    );
    // The bytes are the same as a plain replay's, entry by entry.
    let mut a = without_format_files(entries(&replay(&s, &p)));
    let mut b = without_format_files(entries(&stream(&src)));
    a.sort_by(|x, y| x.name.cmp(&y.name));
    b.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(a, b);
}

#[test]
fn a_hard_link_prioritises_its_target_and_stays_after_it() {
    let src = source();
    let s = spool(&src);
    let t = regular_file(&s, b"a/b/link").expect("the link's target");
    assert_eq!(s.entries[t].name, b"a/b/other.txt");
    let got = names(&replay(&s, &plan(&s, &[t])));
    let at = |n: &str| got.iter().position(|x| x == n).unwrap();
    assert_eq!(at("a/b/other.txt"), 2);
    assert_eq!(at(PREFETCH_LANDMARK), 3);
    assert!(at("a/b/link") > at("a/b/other.txt"));
}

#[test]
fn nothing_prioritised_starts_with_the_no_prefetch_landmark() {
    let src = source();
    let s = spool(&src);
    let p = plan(&s, &[]);
    assert_eq!(p.prioritized, 0);
    let got = names(&replay(&s, &p));
    assert_eq!(got[0], NO_PREFETCH_LANDMARK);
    assert!(!got.iter().any(|n| n == PREFETCH_LANDMARK));
    assert_eq!(got[1..], names(&stream(&src))[1..]);
}

#[test]
fn claims_go_to_the_topmost_layer_holding_a_path() {
    use crate::convert::prefetch::Claims;
    let top = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(0o644, 3);
        b.append_data(&mut h, "a/b/deep.py", &b"new"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let (top, bottom) = (spool(&top), spool(&source()));
    let mut c = Claims::new(&["./a/b/deep.py".into(), "big".into(), "sym".into()]);
    let p = c.plan(&top);
    assert_eq!(p.prioritized_files(&top), 1);
    assert!(!c.is_empty());
    let p = c.plan(&bottom);
    assert_eq!(
        p.prioritized_files(&bottom),
        1,
        "deep.py is the top layer's"
    );
    assert_eq!(names(&replay(&bottom, &p))[0], "big");
    assert!(c.is_empty());
}

#[test]
fn zstd_chunked_output_reads_back_lazily_and_as_a_plain_tar() {
    let src = source();
    let s = spool(&src);
    let wanted: Vec<usize> = regular_file(&s, b"a/b/deep.py").into_iter().collect();
    let p = plan(&s, &wanted);
    let mut blob = Vec::new();
    let (packed, _) = pack_from(
        Replay::Spooled(&s, &p),
        Codec::ZstdChunked,
        &|_| {},
        &mut blob,
    )
    .unwrap();
    assert_eq!(Digest::sha256_of(&blob), packed.digest);
    // Any zstd reader: one tar (skippable frames skipped), hashing to diff_id.
    let tar = zstd::stream::decode_all(&blob[..]).unwrap();
    assert_eq!(Digest::sha256_of(&tar), packed.diff_id);
    assert_eq!(names(&tar)[..3], ["a/", "a/b/", "a/b/deep.py"]);
    // The footer: a skippable frame with the TOC position and the magic.
    let f = &blob[blob.len() - 48..];
    assert_eq!(f[..4], [0x50, 0x2a, 0x4d, 0x18]);
    assert_eq!(&f[40..], b"GnUlInUx");
    let m = packed.zstd_manifest.clone().unwrap();
    assert_eq!(u64::from_le_bytes(f[8..16].try_into().unwrap()), m.offset);
    let a = packed.annotations();
    assert_eq!(
        a["io.github.containers.zstd-chunked.manifest-position"],
        m.position()
    );
    assert!(!a.contains_key(crate::estargz::TOC_DIGEST_ANNOTATION));
    // regfs's reader: TOC at the annotated position, verified, then every file.
    let compressed = &blob[m.offset as usize..(m.offset + m.length) as usize];
    assert_eq!(Digest::sha256_of(compressed), m.checksum);
    let json = toc::zstd_toc_json(compressed, m.length_uncompressed).unwrap();
    let t = Toc::parse(&json).unwrap();
    for e in t
        .entries
        .iter()
        .filter(|e| e.kind == "reg" || e.kind == "chunk")
    {
        if e.offset > 0 {
            assert!(e.end_offset > e.offset, "{}: endOffset", e.name);
        }
    }
    let idx = toc_to_tree(&t, Format::ZstdChunked, m.offset, 0, &Limits::default()).unwrap();
    for (path, want) in [
        ("big", vec![7u8; 5 << 20]),
        ("a/b/deep.py", b"print('deep')\n".to_vec()),
        ("a/b/link", b"other".to_vec()),
    ] {
        let id = idx.tree.lookup_path(path.as_bytes()).unwrap();
        let FileData::Chunks { chunks, .. } = &idx.tree.node(id).content else {
            panic!("{path}: not chunked");
        };
        let mut got = Vec::new();
        for c in chunks {
            let (start, end) = (
                c.blob_offset as usize,
                (c.blob_offset + c.blob_len) as usize,
            );
            got.extend(decode_chunk(Format::ZstdChunked, &blob[start..end], c).unwrap());
        }
        assert_eq!(got, want, "{path}");
    }
    assert!(idx.prefetch_end.is_some(), "the landmark is seen");
}

#[test]
fn a_name_with_several_entries_is_not_moved() {
    let mut b = tar::Builder::new(Vec::new());
    for data in [&b"old"[..], &b"new"[..]] {
        let mut h = header(0o644, 3);
        b.append_data(&mut h, "twice", data).unwrap();
    }
    let s = spool(&b.into_inner().unwrap());
    assert_eq!(regular_file(&s, b"twice"), None);
    let got = entries(&replay(&s, &plan(&s, &[])));
    assert_eq!(
        got.last().unwrap().data,
        b"new",
        "the last entry still wins"
    );
}
