//! Layer indexes as files: the span index as the store keeps it (with the
//! blob it indexes), and the `regfs index export/import` file, a layer's tar
//! index and span index with the blob digest and diff_id they belong to.

use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::span::SpanIndex;
use crate::layer::span_windows::{self, WindowTable};
use crate::layer::{self, Tree};

/// The span index as stored (`spans/sha256/<diff_id>`): the blob it
/// indexes, then the index; for an index adopted with its windows apart
/// (a published index, [`crate::layer::span_windows`]), the window table
/// between the two (`blob <digest> windows <table length>`).
pub(super) fn encode_stored(
    blob: &Digest,
    ix: &SpanIndex,
    windows: Option<&WindowTable>,
) -> Vec<u8> {
    let mut v = match windows {
        None => format!("blob {blob}\n").into_bytes(),
        Some(t) => {
            let t = t.encode();
            let mut v = format!("blob {blob} windows {}\n", t.len()).into_bytes();
            v.extend(t);
            v
        }
    };
    v.extend(ix.encode());
    v
}

/// A stored span index: the blob it indexes, the index, and the table of
/// its windows when they are apart (in the registry, fetched one by one).
pub(super) type Stored = (Digest, SpanIndex, Option<WindowTable>);

pub(super) fn decode_stored(b: &[u8]) -> Result<Stored> {
    let bad = || Error::invalid("stored span index: bad header");
    let nl = b.iter().position(|&c| c == b'\n').ok_or_else(bad)?;
    let head = std::str::from_utf8(&b[..nl]).map_err(|_| bad())?;
    let head = head.strip_prefix("blob ").ok_or_else(bad)?;
    let (blob, table_len) = match head.split_once(" windows ") {
        None => (head, None),
        Some((blob, n)) => (blob, Some(n.parse::<usize>().map_err(|_| bad())?)),
    };
    let blob: Digest = blob.parse().map_err(|_| bad())?;
    let rest = &b[nl + 1..];
    let (windows, rest) = match table_len {
        None => (None, rest),
        Some(n) if n <= rest.len() => {
            let (t, rest) = rest.split_at(n);
            (Some(WindowTable::decode(t)?), rest)
        }
        Some(_) => return Err(bad()),
    };
    let ix = SpanIndex::decode(rest)?;
    if let Some(t) = &windows {
        t.check(&ix)?;
    }
    Ok((blob, ix, windows))
}

const EXPORT_MAGIC: &str = "regfs-layer-index 1\n";
/// Version 2: the span index without its windows, and the table of where
/// they lie in the windows blob published beside the file.
const EXPORT_MAGIC_2: &str = "regfs-layer-index 2\n";

/// The layer (by diff_id or blob digest) whose tar index and span index are in `store`.
/// Only an index whose windows are in the store: one adopted with its
/// windows apart cannot be exported (its windows are in the registry).
fn find_layer(store: &Store, digest: &Digest) -> Result<(Digest, Digest, SpanIndex)> {
    let local = |diff_id: &Digest, (blob, ix, windows): Stored| {
        match windows {
        None => Ok((blob, diff_id.clone(), ix)),
        Some(_) => Err(Error::NotFound(format!(
            "the span index of {diff_id} was adopted without its windows (stream the layer once first)"
        ))),
    }
    };
    if let Some(b) = store.read(Section::Span, digest) {
        return local(digest, decode_stored(&b)?);
    }
    let dir = store.path(Section::Span, digest);
    let dir = dir.parent().expect("a store path has a parent");
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(diff_id) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>()
        else {
            continue;
        };
        if let Some(Ok(stored)) = store
            .read(Section::Span, &diff_id)
            .map(|b| decode_stored(&b))
        {
            if &stored.0 == digest {
                return local(&diff_id, stored);
            }
        }
    }
    Err(Error::NotFound(format!(
        "no span index for {digest} in the cache (stream the layer once first)"
    )))
}

/// One file holding the tar index and span index of the layer `digest` (its
/// diff_id or blob digest), with both digests. Returns (blob, diff_id, bytes).
pub fn export_index(store: &Store, digest: &Digest) -> Result<(Digest, Digest, Vec<u8>)> {
    let (blob, diff_id, ix) = find_layer(store, digest)?;
    let tree = tree_of(store, &diff_id)?;
    let spans = ix.encode();
    let mut v = Vec::with_capacity(tree.len() + spans.len() + 256);
    v.extend_from_slice(EXPORT_MAGIC.as_bytes());
    header(&mut v, &blob, &diff_id, &tree);
    v.extend_from_slice(format!("spans {}\n", spans.len()).as_bytes());
    v.extend_from_slice(&spans);
    Ok((blob, diff_id, v))
}

/// An index file as published (version 2): what [`export_index`] holds,
/// the windows left out and replaced by the table of where they lie in the
/// windows blob, returned beside the file.
pub struct PublishedFiles {
    /// The layer blob.
    pub blob: Digest,
    /// Its diff_id.
    pub diff_id: Digest,
    /// The index file (version 2).
    pub file: Vec<u8>,
    /// The windows blob the file's table points into.
    pub windows: Vec<u8>,
}

/// The version-2 index file and windows blob of the layer `digest`.
pub fn export_published(store: &Store, digest: &Digest) -> Result<PublishedFiles> {
    let (blob, diff_id, ix) = find_layer(store, digest)?;
    let tree = tree_of(store, &diff_id)?;
    let (table, windows, t) = span_windows::split(&ix);
    let (spans, t) = (table.encode(), t.encode());
    let mut v = Vec::with_capacity(tree.len() + spans.len() + t.len() + 256);
    v.extend_from_slice(EXPORT_MAGIC_2.as_bytes());
    header(&mut v, &blob, &diff_id, &tree);
    v.extend_from_slice(format!("spans {}\n", spans.len()).as_bytes());
    v.extend_from_slice(&spans);
    v.extend_from_slice(format!("windows {}\n", t.len()).as_bytes());
    v.extend_from_slice(&t);
    Ok(PublishedFiles {
        blob,
        diff_id,
        file: v,
        windows,
    })
}

fn tree_of(store: &Store, diff_id: &Digest) -> Result<Vec<u8>> {
    store
        .read(Section::Index, diff_id)
        .ok_or_else(|| Error::NotFound(format!("no tar index for {diff_id} in the cache")))
}

fn header(v: &mut Vec<u8>, blob: &Digest, diff_id: &Digest, tree: &[u8]) {
    v.extend_from_slice(format!("blob {blob}\ndiff_id {diff_id}\n").as_bytes());
    v.extend_from_slice(format!("tree {}\n", tree.len()).as_bytes());
    v.extend_from_slice(tree);
}

/// What an export file holds, parsed and checked.
#[derive(Debug, Clone)]
pub struct ImportedIndex {
    /// The layer blob it indexes.
    pub blob: Digest,
    /// The layer's diff_id.
    pub diff_id: Digest,
    /// The tar index.
    pub tree: Tree,
    /// The span index (without windows when `windows` is set).
    pub spans: SpanIndex,
    /// Where the windows are, when they are apart (version 2).
    pub windows: Option<WindowTable>,
}

/// Parse and check an export file (nothing stored): what it holds, and
/// its tree's JSON as the file has it.
fn parse_export(b: &[u8]) -> Result<(ImportedIndex, &[u8])> {
    let bad = |what: &str| Error::invalid(format!("layer index file: {what}"));
    let (version, r) = match b.strip_prefix(EXPORT_MAGIC.as_bytes()) {
        Some(r) => (1, r),
        None => (
            2,
            b.strip_prefix(EXPORT_MAGIC_2.as_bytes())
                .ok_or_else(|| bad("not a regfs layer index (version 1 or 2)"))?,
        ),
    };
    let mut c = Cursor(r);
    let blob: Digest = c.line("blob")?.parse().map_err(|_| bad("blob digest"))?;
    let diff_id: Digest = c.line("diff_id")?.parse().map_err(|_| bad("diff_id"))?;
    let tree_bytes = c.section("tree")?;
    let spans = SpanIndex::decode(c.section("spans")?)?;
    let windows = match version {
        1 => None,
        _ => Some(WindowTable::decode(c.section("windows")?)?),
    };
    if !c.0.is_empty() {
        return Err(bad("trailing bytes"));
    }
    if let Some(t) = &windows {
        t.check(&spans)?;
    }
    let tree: Tree = serde_json::from_slice(tree_bytes).map_err(|e| bad(&format!("tree: {e}")))?;
    check_tree(&tree, spans.uncompressed_size)?;
    Ok((
        ImportedIndex {
            blob,
            diff_id,
            tree,
            spans,
            windows,
        },
        tree_bytes,
    ))
}

/// The header lines and sections of an export file, read in order.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// The value of the line `key value`.
    fn line(&mut self, key: &str) -> Result<&'a str> {
        let bad = |what: &str| Error::invalid(format!("layer index file: {what}"));
        let r = self.0;
        let nl = r
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| bad("truncated"))?;
        let l = std::str::from_utf8(&r[..nl]).map_err(|_| bad("header"))?;
        let v = l
            .strip_prefix(key)
            .and_then(|v| v.strip_prefix(' '))
            .ok_or_else(|| bad(&format!("expected {key}")))?;
        self.0 = &r[nl + 1..];
        Ok(v)
    }

    /// The bytes of the section `key length\n…`.
    fn section(&mut self, key: &str) -> Result<&'a [u8]> {
        let bad = |what: &str| Error::invalid(format!("layer index file: {what}"));
        let len: usize = self
            .line(key)?
            .parse()
            .map_err(|_| bad(&format!("{key} length")))?;
        if self.0.len() < len {
            return Err(bad(&format!("truncated {key}")));
        }
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(s)
    }
}

/// Structure a tree must have before regfs walks it: ids in range, names
/// valid and sorted, directories reachable once, content inside the tar.
pub fn check_tree(t: &Tree, tar_size: u64) -> Result<()> {
    let bad = |what: String| Error::invalid(format!("layer index file: tree: {what}"));
    let nodes = t.nodes();
    if nodes.first().map(|n| n.kind) != Some(layer::NodeKind::Dir) {
        return Err(bad("no root directory".into()));
    }
    let mut dir_parents = vec![0u32; nodes.len()];
    for (id, n) in nodes.iter().enumerate() {
        if n.kind != layer::NodeKind::Dir && !n.children.is_empty() {
            return Err(bad(format!("node {id} has children but is no directory")));
        }
        for (k, (name, child)) in n.children.iter().enumerate() {
            let c = *child as usize;
            if c >= nodes.len() || c == 0 {
                return Err(bad(format!("node {id}: child id {child} out of range")));
            }
            if name.is_empty()
                || name == b"."
                || name == b".."
                || name.contains(&b'/')
                || name.contains(&0)
                || (k > 0 && n.children[k - 1].0 >= *name)
            {
                return Err(bad(format!("node {id}: bad or unsorted entry name")));
            }
            if nodes[c].kind == layer::NodeKind::Dir {
                dir_parents[c] += 1;
                if dir_parents[c] > 1 {
                    return Err(bad(format!("directory {child} has two parents")));
                }
            }
        }
        let inside = |a: u64, len: u64| a.checked_add(len).is_some_and(|e| e <= tar_size);
        match &n.content {
            layer::FileData::None => {}
            layer::FileData::Tar { layer: 0, offset } if inside(*offset, n.size) => {}
            layer::FileData::Sparse { layer: 0, segments }
                if segments.iter().all(|s| {
                    inside(s.raw, s.len)
                        && s.logical.checked_add(s.len).is_some_and(|e| e <= n.size)
                }) => {}
            _ => return Err(bad(format!("node {id}: content outside the layer's tar"))),
        }
    }
    Ok(())
}

/// Check an export file and store its tar index and span index (by its
/// diff_id). Returns what was imported.
///
/// The file is parsed once; the store keeps its tree JSON as it came (it
/// parsed and passed [`check_tree`]), not a re-serialisation.
pub fn import_index(store: &Store, bytes: &[u8]) -> Result<ImportedIndex> {
    import_index_if(store, bytes, |_| Ok(()))
}

/// [`import_index`] of an index that `accept` accepts once parsed (nothing
/// is stored otherwise).
pub(super) fn import_index_if(
    store: &Store,
    bytes: &[u8],
    accept: impl FnOnce(&ImportedIndex) -> Result<()>,
) -> Result<ImportedIndex> {
    let (ix, tree) = parse_export(bytes)?;
    accept(&ix)?;
    store.put(Section::Index, &ix.diff_id, tree)?;
    store.put(
        Section::Span,
        &ix.diff_id,
        &encode_stored(&ix.blob, &ix.spans, ix.windows.as_ref()),
    )?;
    Ok(ix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::testutil::TarW;
    use crate::layer::Compression;
    use std::io::Write;

    #[test]
    fn export_import_roundtrip_and_rejects() {
        let mut w = TarW::new();
        w.dir(b"etc", 0o755)
            .file(b"etc/hostname", b"regfs\n")
            .file(b"bin/big", &vec![0x5a; 100_000]);
        let tar = w.finish();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&tar).unwrap();
        let blob = e.finish().unwrap();
        let (bd, dd) = (Digest::sha256_of(&blob), Digest::sha256_of(&tar));
        let mut out = tempfile::tempfile().unwrap();
        let (tree, _, spans) = layer::ingest_spans(
            &blob[..],
            Compression::Gzip,
            layer::BlobCheck::Hash(&bd),
            &dd,
            0,
            &mut out,
            &layer::Limits::default(),
            Some(20_000),
        )
        .unwrap();
        let spans = spans.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 30).unwrap();
        store
            .put(Section::Index, &dd, &serde_json::to_vec(&tree).unwrap())
            .unwrap();
        store
            .put(Section::Span, &dd, &encode_stored(&bd, &spans, None))
            .unwrap();
        let (b1, d1, file) = export_index(&store, &dd).unwrap();
        let (b2, d2, file2) = export_index(&store, &bd).unwrap();
        assert_eq!((&b1, &d1, &file), (&b2, &d2, &file2));
        assert_eq!((b1, d1), (bd.clone(), dd.clone()));

        let dir2 = tempfile::tempdir().unwrap();
        let store2 = Store::open(dir2.path(), 1 << 30).unwrap();
        let got = import_index(&store2, &file).unwrap();
        assert_eq!(got.tree, tree);
        assert_eq!(got.spans, spans);
        assert_eq!(export_index(&store2, &dd).unwrap().2, file);

        // Truncations and a tree pointing outside the tar are refused.
        for cut in [0, 10, file.len() / 2, file.len() - 1] {
            assert!(parse_export(&file[..cut]).is_err(), "{cut}");
        }
        let mut t2 = tree.clone();
        for n in t2.nodes_mut() {
            if let layer::FileData::Tar { offset, .. } = &mut n.content {
                *offset = spans.uncompressed_size;
            }
        }
        assert!(check_tree(&t2, spans.uncompressed_size).is_err());
        let mut t3 = tree.clone();
        t3.nodes_mut()[0].children.push((b"zzz".to_vec(), 999));
        assert!(check_tree(&t3, spans.uncompressed_size).is_err());

        // Version 2: the windows apart, in a blob the table points into.
        let p = export_published(&store, &dd).unwrap();
        assert_eq!((&p.blob, &p.diff_id), (&bd, &dd));
        assert!(p.file.len() <= file.len());
        let dir3 = tempfile::tempdir().unwrap();
        let store3 = Store::open(dir3.path(), 1 << 30).unwrap();
        let got = import_index(&store3, &p.file).unwrap();
        assert_eq!(got.tree, tree);
        let t = got.windows.clone().expect("a window table");
        assert_eq!(t.blob, Digest::sha256_of(&p.windows));
        for (c, (g, w)) in spans
            .checkpoints
            .iter()
            .zip(got.spans.checkpoints.iter().zip(&t.windows))
        {
            assert!(g.window.is_empty());
            assert_eq!(
                (&g.span_digest, g.uncompressed),
                (&c.span_digest, c.uncompressed)
            );
            let packed = &p.windows[w.offset as usize..(w.offset + u64::from(w.len)) as usize];
            assert_eq!(span_windows::unpack(packed, w).unwrap(), c.window);
        }
        // Stored with its table, read back the same; not exportable (its
        // windows are not here).
        let (b3, ix3, t3) = decode_stored(&store3.read(Section::Span, &dd).unwrap()).unwrap();
        assert_eq!((b3, &ix3, t3.as_ref()), (bd.clone(), &got.spans, Some(&t)));
        assert!(matches!(
            export_index(&store3, &dd),
            Err(Error::NotFound(_))
        ));
        for cut in [0, 10, p.file.len() / 2, p.file.len() - 1] {
            assert!(parse_export(&p.file[..cut]).is_err(), "{cut}");
        }
        let mut long = p.file.clone();
        long.push(b'\n');
        assert!(parse_export(&long).is_err());
        // A v2 file whose table does not fit its checkpoints is refused.
        let mut short = t.clone();
        short.windows.pop();
        if !short.windows.is_empty() {
            let mut v = Vec::new();
            v.extend_from_slice(EXPORT_MAGIC_2.as_bytes());
            header(&mut v, &bd, &dd, &store.read(Section::Index, &dd).unwrap());
            let s = got.spans.encode();
            v.extend_from_slice(format!("spans {}\n", s.len()).as_bytes());
            v.extend_from_slice(&s);
            let t = short.encode();
            v.extend_from_slice(format!("windows {}\n", t.len()).as_bytes());
            v.extend_from_slice(&t);
            assert!(parse_export(&v).is_err());
        }
        // Nor is a stored index whose table is cut.
        let stored = encode_stored(&bd, &got.spans, Some(&t));
        assert!(decode_stored(&stored[..stored.len() - 1]).is_err());
        assert!(decode_stored(&encode_stored(&bd, &got.spans, Some(&short))).is_err());
    }
}
