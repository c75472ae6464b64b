//! Layer indexes as files: the span index as the store keeps it (with the
//! blob it indexes), and the `regfs index export/import` file, a layer's tar
//! index and span index with the blob digest and diff_id they belong to.

use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::layer::span::SpanIndex;
use crate::layer::{self, Tree};

/// The span index as stored (`spans/sha256/<diff_id>`): the blob it indexes, then the index.
pub(super) fn encode_stored(blob: &Digest, ix: &SpanIndex) -> Vec<u8> {
    let mut v = format!("blob {blob}\n").into_bytes();
    v.extend(ix.encode());
    v
}

pub(super) fn decode_stored(b: &[u8]) -> Result<(Digest, SpanIndex)> {
    let bad = || Error::invalid("stored span index: bad header");
    let nl = b.iter().position(|&c| c == b'\n').ok_or_else(bad)?;
    let head = std::str::from_utf8(&b[..nl]).map_err(|_| bad())?;
    let blob: Digest = head
        .strip_prefix("blob ")
        .ok_or_else(bad)?
        .parse()
        .map_err(|_| bad())?;
    Ok((blob, SpanIndex::decode(&b[nl + 1..])?))
}

const EXPORT_MAGIC: &str = "regfs-layer-index 1\n";

/// The layer (by diff_id or blob digest) whose tar index and span index are in `store`.
fn find_layer(store: &Store, digest: &Digest) -> Result<(Digest, Digest, SpanIndex)> {
    if let Some(b) = store.read(Section::Span, digest) {
        let (blob, ix) = decode_stored(&b)?;
        return Ok((blob, digest.clone(), ix));
    }
    let dir = store.path(Section::Span, digest);
    let dir = dir.parent().expect("a store path has a parent");
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(diff_id) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>()
        else {
            continue;
        };
        if let Some(Ok((blob, ix))) = store
            .read(Section::Span, &diff_id)
            .map(|b| decode_stored(&b))
        {
            if &blob == digest {
                return Ok((blob, diff_id, ix));
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
    let tree = store
        .read(Section::Index, &diff_id)
        .ok_or_else(|| Error::NotFound(format!("no tar index for {diff_id} in the cache")))?;
    let spans = ix.encode();
    let mut v = Vec::with_capacity(tree.len() + spans.len() + 256);
    v.extend_from_slice(EXPORT_MAGIC.as_bytes());
    v.extend_from_slice(format!("blob {blob}\ndiff_id {diff_id}\n").as_bytes());
    v.extend_from_slice(format!("tree {}\n", tree.len()).as_bytes());
    v.extend_from_slice(&tree);
    v.extend_from_slice(format!("spans {}\n", spans.len()).as_bytes());
    v.extend_from_slice(&spans);
    Ok((blob, diff_id, v))
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
    /// The span index.
    pub spans: SpanIndex,
}

/// Parse and check an export file (nothing stored): what it holds, and
/// its tree's JSON as the file has it.
fn parse_export(b: &[u8]) -> Result<(ImportedIndex, &[u8])> {
    let bad = |what: &str| Error::invalid(format!("layer index file: {what}"));
    let mut r = b
        .strip_prefix(EXPORT_MAGIC.as_bytes())
        .ok_or_else(|| bad("not a regfs layer index (version 1)"))?;
    let mut line = |key: &str| -> Result<String> {
        let nl = r
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| bad("truncated"))?;
        let l = std::str::from_utf8(&r[..nl]).map_err(|_| bad("header"))?;
        let v = l
            .strip_prefix(key)
            .and_then(|v| v.strip_prefix(' '))
            .ok_or_else(|| bad(&format!("expected {key}")))?
            .to_string();
        r = &r[nl + 1..];
        Ok(v)
    };
    let blob: Digest = line("blob")?.parse().map_err(|_| bad("blob digest"))?;
    let diff_id: Digest = line("diff_id")?.parse().map_err(|_| bad("diff_id"))?;
    let tree_len: usize = line("tree")?.parse().map_err(|_| bad("tree length"))?;
    let rest = r;
    if rest.len() < tree_len {
        return Err(bad("truncated tree"));
    }
    let (tree_bytes, mut r2) = rest.split_at(tree_len);
    let nl = r2
        .iter()
        .position(|&c| c == b'\n')
        .ok_or_else(|| bad("truncated"))?;
    let spans_len: usize = std::str::from_utf8(&r2[..nl])
        .ok()
        .and_then(|l| l.strip_prefix("spans "))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad("spans length"))?;
    r2 = &r2[nl + 1..];
    if r2.len() != spans_len {
        return Err(bad("span index length"));
    }
    let spans = SpanIndex::decode(r2)?;
    let tree: Tree = serde_json::from_slice(tree_bytes).map_err(|e| bad(&format!("tree: {e}")))?;
    check_tree(&tree, spans.uncompressed_size)?;
    Ok((
        ImportedIndex {
            blob,
            diff_id,
            tree,
            spans,
        },
        tree_bytes,
    ))
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
        &encode_stored(&ix.blob, &ix.spans),
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
            .put(Section::Span, &dd, &encode_stored(&bd, &spans))
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
    }
}
