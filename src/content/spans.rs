//! Gzip layers served by their span index once the uncompressed tar has been
//! evicted: a read fetches the compressed bytes from the checkpoint before
//! the data it needs to the end of the last span covering it (one Range
//! request per run of spans), inflates whole spans, checks each against the
//! sha256 recorded when the layer was streamed and verified, keeps verified
//! spans in the chunk cache by that digest, and only then serves. Nothing
//! unverified is returned or stored.
//!
//! Also the `regfs index export/import` file: a layer's tar index and span
//! index with the blob digest and diff_id they belong to.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

use super::lazy::{LayerSource, OpenedLayer};
use super::Content;
use crate::cache::{Kind, Store};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::BlobRef;
use crate::layer::span::SpanIndex;
use crate::layer::{self, Compression, ReadAt, Tree};

/// Most spans fetched by one Range request.
const MAX_RUN_SPANS: usize = 4;

/// A gzip layer served from its span index.
#[derive(Debug)]
pub struct SpanLayer {
    /// The repository to fetch from.
    pub repo: String,
    /// The layer blob.
    pub blob: BlobRef,
    /// The layer's diff_id.
    pub diff_id: Digest,
    /// Its checkpoints and span digests.
    pub index: Arc<SpanIndex>,
}

enum Part {
    Mem(Arc<Vec<u8>>),
    File(File),
}

/// Verified spans of a layer's uncompressed tar, readable at tar offsets.
#[derive(Default)]
pub struct SpanView {
    /// (uncompressed start, length, data), ordered and contiguous.
    parts: Vec<(u64, u64, Part)>,
}

impl ReadAt for SpanView {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let i = self.parts.partition_point(|p| p.0 + p.1 <= offset);
        let Some((start, len, part)) = self.parts.get(i) else {
            return Ok(0);
        };
        if offset < *start {
            return Ok(0);
        }
        let at = offset - start;
        let n = (buf.len() as u64).min(len - at) as usize;
        match part {
            Part::Mem(v) => {
                buf[..n].copy_from_slice(&v[at as usize..at as usize + n]);
                Ok(n)
            }
            Part::File(f) => FileExt::read_at(f, &mut buf[..n], at),
        }
    }
}

/// The span index as stored (`spans/sha256/<diff_id>`): the blob it indexes, then the index.
pub(super) fn encode_stored(blob: &Digest, ix: &SpanIndex) -> Vec<u8> {
    let mut v = format!("blob {blob}\n").into_bytes();
    v.extend(ix.encode());
    v
}

fn decode_stored(b: &[u8]) -> Result<(Digest, SpanIndex)> {
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

impl Content {
    /// A gzip layer whose tar is gone but whose tree index and span index
    /// (for this very blob) are in the store, as a span-served layer.
    pub(super) async fn span_layer(
        &self,
        repo: &str,
        desc: &BlobRef,
        diff_id: &Digest,
    ) -> Option<OpenedLayer> {
        if Compression::from_media_type(&desc.media_type).ok()? != Compression::Gzip
            || self.has_whole_layer(diff_id)
        {
            return None;
        }
        let spans = self.store.get(Kind::Span, diff_id)?;
        let index = self.store.get(Kind::Index, diff_id)?;
        let (blob, size) = (desc.digest.clone(), desc.size);
        let loaded = tokio::task::spawn_blocking(move || -> Result<(Tree, SpanIndex)> {
            let (for_blob, ix) = decode_stored(&std::fs::read(spans)?)?;
            if for_blob != blob || ix.compressed_size != size {
                return Err(Error::invalid(format!(
                    "span index is for blob {for_blob} ({} bytes)",
                    ix.compressed_size
                )));
            }
            let tree: Tree = serde_json::from_slice(&std::fs::read(index)?)
                .map_err(|e| Error::invalid(format!("cached layer index: {e}")))?;
            Ok((tree, ix))
        })
        .await
        .ok()?;
        match loaded {
            Ok((tree, ix)) => {
                tracing::info!(
                    digest = %desc.digest, %diff_id, checkpoints = ix.checkpoints.len(),
                    "layer tar not cached: serving it by its span index"
                );
                Some(OpenedLayer {
                    tree: Arc::new(tree),
                    source: LayerSource::Spans(Arc::new(SpanLayer {
                        repo: repo.to_string(),
                        blob: desc.clone(),
                        diff_id: diff_id.clone(),
                        index: Arc::new(ix),
                    })),
                })
            }
            Err(e) => {
                tracing::warn!(digest = %desc.digest, %diff_id, error = %e, "span index unusable; serving the layer whole");
                None
            }
        }
    }

    fn cached_span(&self, d: &Digest) -> Option<File> {
        File::open(self.store.get(Kind::Chunk, d)?).ok()
    }

    /// The verified spans covering uncompressed tar bytes `[start, end)` of
    /// `layer`, from the chunk cache or fetched. A span failing verification
    /// fails the read (EIO) and nothing of it is cached.
    pub async fn read_spans(&self, layer: &SpanLayer, start: u64, end: u64) -> Result<SpanView> {
        let ix = &layer.index;
        let Some((first, last)) = ix.spans_covering(start, end) else {
            return Ok(SpanView::default());
        };
        let digest = |i: usize| &ix.checkpoints[i].span_digest;
        let mut parts: Vec<Option<Part>> = (first..=last)
            .map(|i| self.cached_span(digest(i)).map(Part::File))
            .collect();
        if parts.iter().any(Option::is_none) {
            let missing: Vec<&Digest> = (first..=last)
                .zip(&parts)
                .filter(|(_, p)| p.is_none())
                .map(|(i, _)| digest(i))
                .collect();
            // One fetch per span digest.
            let guards = self.store.chunk_flights(missing).await;
            for (i, p) in (first..=last).zip(parts.iter_mut()) {
                if p.is_none() {
                    *p = self.cached_span(digest(i)).map(Part::File);
                }
            }
            let todo: Vec<usize> = (first..=last)
                .zip(&parts)
                .filter(|(_, p)| p.is_none())
                .map(|(i, _)| i)
                .collect();
            for run in span_runs(&todo) {
                let (a, b) = (run[0], run[run.len() - 1]);
                for (i, data) in (a..=b).zip(self.fetch_spans(layer, a, b).await?) {
                    parts[i - first] = Some(Part::Mem(data));
                }
            }
            drop(guards);
        }
        Ok(SpanView {
            parts: (first..=last)
                .zip(parts)
                .map(|(i, p)| {
                    let (s, e) = ix.span(i);
                    (s, e - s, p.expect("every span fetched"))
                })
                .collect(),
        })
    }

    /// Fetch spans `a..=b` in one Range request, inflate, verify, store.
    async fn fetch_spans(
        &self,
        layer: &SpanLayer,
        a: usize,
        b: usize,
    ) -> Result<Vec<Arc<Vec<u8>>>> {
        let ix = layer.index.clone();
        let (cs, ce) = ix.compressed_range(a, b);
        let started = Instant::now();
        let bytes = {
            let _in_flight = self.in_flight.enter();
            self.client
                .blob_range(&layer.repo, &layer.blob.digest, cs, ce - cs)
                .await?
        };
        tracing::info!(
            digest = %layer.blob.digest, offset = cs, bytes = bytes.len(), spans = b - a + 1,
            ms = started.elapsed().as_millis() as u64, cache = "miss", "fetched spans"
        );
        let (store, blob) = (self.store.clone(), layer.blob.digest.clone());
        tokio::task::spawn_blocking(move || -> Result<Vec<Arc<Vec<u8>>>> {
            let spans = ix.extract(a, b, &bytes).inspect_err(|e| {
                tracing::error!(
                    digest = %blob, first_span = a, last_span = b, error = %e,
                    "span failed verification; not served, not cached"
                );
            })?;
            let mut out = Vec::with_capacity(spans.len());
            for (i, data) in (a..=b).zip(spans) {
                store.put(Kind::Chunk, &ix.checkpoints[i].span_digest, &data)?;
                out.push(Arc::new(data));
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))?
    }
}

/// Consecutive span numbers grouped, at most [`MAX_RUN_SPANS`] per group.
fn span_runs(todo: &[usize]) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for &i in todo {
        match out.last_mut() {
            Some(r) if r[r.len() - 1] + 1 == i && r.len() < MAX_RUN_SPANS => r.push(i),
            _ => out.push(vec![i]),
        }
    }
    out
}

/// The uncompressed tar range `[start, end)` a read of `len` bytes at
/// `offset` of `node` needs (`None`: no tar bytes).
pub fn tar_range(node: &layer::Node, offset: u64, len: u64) -> Option<(u64, u64)> {
    let end = node.size.min(offset.saturating_add(len));
    if offset >= end {
        return None;
    }
    match &node.content {
        layer::Content::Tar { offset: base, .. } => {
            Some((base.saturating_add(offset), base.saturating_add(end)))
        }
        layer::Content::Sparse { segments, .. } => {
            let mut r: Option<(u64, u64)> = None;
            for s in segments {
                let (from, to) = (
                    s.logical.max(offset),
                    s.logical.saturating_add(s.len).min(end),
                );
                if from < to {
                    let (a, b) = (s.raw + (from - s.logical), s.raw + (to - s.logical));
                    r = Some(r.map_or((a, b), |(x, y)| (x.min(a), y.max(b))));
                }
            }
            r
        }
        _ => None,
    }
}

// ---- export / import ----

const EXPORT_MAGIC: &str = "regfs-layer-index 1\n";

/// The layer (by diff_id or blob digest) whose tar index and span index are in `store`.
fn find_layer(store: &Store, digest: &Digest) -> Result<(Digest, Digest, SpanIndex)> {
    if let Some(b) = store.read(Kind::Span, digest) {
        let (blob, ix) = decode_stored(&b)?;
        return Ok((blob, digest.clone(), ix));
    }
    let dir = store.path(Kind::Span, digest);
    let dir = dir.parent().expect("a store path has a parent");
    for e in std::fs::read_dir(dir)?.flatten() {
        let Ok(diff_id) = format!("sha256:{}", e.file_name().to_string_lossy()).parse::<Digest>()
        else {
            continue;
        };
        if let Some(Ok((blob, ix))) = store.read(Kind::Span, &diff_id).map(|b| decode_stored(&b)) {
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
        .read(Kind::Index, &diff_id)
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
#[derive(Debug)]
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

fn parse_export(b: &[u8]) -> Result<ImportedIndex> {
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
    Ok(ImportedIndex {
        blob,
        diff_id,
        tree,
        spans,
    })
}

/// Structure a tree must have before regfs walks it: ids in range, names
/// valid and sorted, directories reachable once, content inside the tar.
pub fn check_tree(t: &Tree, tar_size: u64) -> Result<()> {
    let bad = |what: String| Error::invalid(format!("layer index file: tree: {what}"));
    let nodes = t.nodes();
    if nodes.first().map(|n| n.kind) != Some(layer::Kind::Dir) {
        return Err(bad("no root directory".into()));
    }
    let mut dir_parents = vec![0u32; nodes.len()];
    for (id, n) in nodes.iter().enumerate() {
        if n.kind != layer::Kind::Dir && !n.children.is_empty() {
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
            if nodes[c].kind == layer::Kind::Dir {
                dir_parents[c] += 1;
                if dir_parents[c] > 1 {
                    return Err(bad(format!("directory {child} has two parents")));
                }
            }
        }
        let inside = |a: u64, len: u64| a.checked_add(len).is_some_and(|e| e <= tar_size);
        match &n.content {
            layer::Content::None => {}
            layer::Content::Tar { layer: 0, offset } if inside(*offset, n.size) => {}
            layer::Content::Sparse { layer: 0, segments }
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
pub fn import_index(store: &Store, bytes: &[u8]) -> Result<ImportedIndex> {
    let ix = parse_export(bytes)?;
    let tree = serde_json::to_vec(&ix.tree).map_err(|e| Error::Io(io::Error::other(e)))?;
    store.put(Kind::Index, &ix.diff_id, &tree)?;
    store.put(Kind::Span, &ix.diff_id, &encode_stored(&ix.blob, &ix.spans))?;
    Ok(ix)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::testutil::TarW;
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
            .put(Kind::Index, &dd, &serde_json::to_vec(&tree).unwrap())
            .unwrap();
        store
            .put(Kind::Span, &dd, &encode_stored(&bd, &spans))
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
            if let layer::Content::Tar { offset, .. } = &mut n.content {
                *offset = spans.uncompressed_size;
            }
        }
        assert!(check_tree(&t2, spans.uncompressed_size).is_err());
        let mut t3 = tree.clone();
        t3.nodes_mut()[0].children.push((b"zzz".to_vec(), 999));
        assert!(check_tree(&t3, spans.uncompressed_size).is_err());
    }

    #[test]
    fn span_runs_group_consecutive() {
        assert_eq!(
            span_runs(&[1, 2, 3, 5, 6, 7, 8, 9, 10]),
            vec![vec![1, 2, 3], vec![5, 6, 7, 8], vec![9, 10]]
        );
        assert!(span_runs(&[]).is_empty());
    }
}
