//! Published layer indexes through the registry seam: machine A streams a
//! gzip layer and publishes its index (tag-schema fallback: the memory
//! registry has no referrers API); machine B, a fresh cache, serves the
//! layer by spans from the first read and then checks the index against the
//! layer; a forged index is caught and revoked.

use std::io::Write;
use std::sync::Arc;

use super::{fallback_tag, Content, LayerSource};
use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::layer::testutil::TarW;
use crate::layer::{Limits, NodeKind, Tree};
use crate::reference::Selector;
use crate::registry::{LayerBlob, MemoryRegistry, RegistryApi};

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Bytes that do not compress much, so the layer has several spans.
fn noise(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// An image of one gzip layer with six 4 MiB files and a small one.
fn image(reg: &MemoryRegistry) -> (Digest, Digest, Digest, u64) {
    let mut w = TarW::new();
    w.dir(b"data", 0o755);
    for i in 0..6u32 {
        w.file(format!("data/big{i}").as_bytes(), &noise(4 << 20, i + 1));
    }
    w.file(b"data/small", b"regfs\n");
    let tar = w.finish();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&tar).unwrap();
    let blob = e.finish().unwrap();
    let (blob_digest, diff_id, size) = (
        Digest::sha256_of(&blob),
        Digest::sha256_of(&tar),
        blob.len() as u64,
    );
    let layer = LayerBlob {
        media_type: GZIP_LAYER.into(),
        bytes: blob.into(),
        diff_id: diff_id.clone(),
        annotations: Default::default(),
    };
    let image = reg.add_image("lab/big", "1", &[layer]);
    (image, blob_digest, diff_id, size)
}

fn content(reg: &Arc<MemoryRegistry>, dir: &tempfile::TempDir) -> Content {
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    Content::new(reg.clone(), store, 1_000_000, Limits::default())
}

/// Machine A: stream the image's layer (indexing it) with the store in
/// `dir`; the layers as `image_layers` lists them.
async fn streamed_by_a(
    reg: &Arc<MemoryRegistry>,
    dir: &tempfile::TempDir,
    image: &Digest,
    diff_id: &Digest,
) -> (Content, Vec<(crate::image::BlobRef, Digest)>) {
    let a = content(reg, dir);
    let (_, layers) = a.image_layers("lab/big", image).await.unwrap();
    a.layer("lab/big", &layers[0].0, diff_id).await.unwrap();
    (a, layers)
}

/// Machine B: a fresh store in `dir`, published indexes on (checked at
/// once when asked), the image's one index adopted.
async fn adopting_b(reg: &Arc<MemoryRegistry>, dir: &tempfile::TempDir, image: &Digest) -> Content {
    let mut b = content(reg, dir);
    b.set_use_published_indexes(true, std::time::Duration::ZERO);
    assert_eq!(b.adopt_published_indexes("lab/big", image).await, 1);
    b
}

/// The layer of `image` as `c` opens it.
async fn open(c: &Content, image: &Digest) -> super::OpenedLayer {
    let (_, layers) = c.image_layers("lab/big", image).await.unwrap();
    let (desc, diff_id) = &layers[0];
    c.open_layer("lab/big", desc, diff_id).await.unwrap()
}

/// Read `name` (a file under `data/`) through `layer` as the filesystem does.
async fn read(c: &Content, l: &super::OpenedLayer, name: &[u8]) -> crate::error::Result<Vec<u8>> {
    let tree = &l.tree;
    let data = tree.lookup(0, b"data").unwrap();
    let node = tree.node(tree.lookup(data, name).unwrap());
    let LayerSource::Spans(s) = &l.source else {
        panic!("not served by spans")
    };
    let (start, end) = super::tar_range(node, 0, node.size).unwrap();
    let view = c.read_spans(s, start, end).await?;
    let mut buf = vec![0u8; node.size as usize];
    let got = crate::layer::read_content(node, &[view], 0, &mut buf)?;
    buf.truncate(got);
    Ok(buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_index_makes_a_fresh_cache_lazy_and_is_checked() {
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let (image, blob, diff_id, size) = image(&reg);

    // Machine A streams the layer once, then publishes its index.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, _) = streamed_by_a(&reg, &da, &image, &diff_id).await;
    let p = a.publish_indexes("lab/big", &image).await.unwrap();
    assert_eq!((p.layers, p.missing, p.already), (1, 0, false));
    assert_eq!(
        p.fallback_tag.as_deref(),
        Some(fallback_tag(&image).as_str())
    );
    // Idempotent.
    let again = a.publish_indexes("lab/big", &image).await.unwrap();
    assert_eq!(
        (again.artifact.clone(), again.already),
        (p.artifact.clone(), true)
    );
    let tag = reg
        .manifest("lab/big", &Selector::Tag(fallback_tag(&image)))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&tag.bytes).unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1, "{v}");

    // Machine B: off by default — the layer would be streamed.
    let mut b = content(&reg, &db);
    assert_eq!(b.adopt_published_indexes("lab/big", &image).await, 0);
    b.set_use_published_indexes(true, std::time::Duration::ZERO);
    assert_eq!(b.known_tar_size(&diff_id), None);
    assert_eq!(b.adopt_published_indexes("lab/big", &image).await, 1);
    // The layer's size is known before any byte of it is fetched (the
    // layer store's `diff-size`).
    let tar_size = a.known_tar_size(&diff_id).unwrap();
    assert!(tar_size > 6 * (4 << 20), "{tar_size}");
    assert_eq!(b.known_tar_size(&diff_id), Some(tar_size));
    let before = reg.stats().bytes_received;
    let l = open(&b, &image).await;
    assert_eq!(read(&b, &l, b"small").await.unwrap(), b"regfs\n");
    let fetched = reg.stats().bytes_received - before;
    // One 4 MiB span of a 24 MiB layer (and the index).
    assert!(
        fetched < size / 4,
        "fetched {fetched} of a {size}-byte layer"
    );
    assert_eq!(read(&b, &l, b"big1").await.unwrap(), noise(4 << 20, 2));
    assert!(b.store.get(Section::Layer, &diff_id).is_none());

    // The background check streams the layer once and finds it right.
    assert_eq!(b.check_published().await, (1, 0));
    assert!(!b.index_revoked(&diff_id));
    assert!(b.store.get(Section::Layer, &diff_id).is_some());
    let _ = blob;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_index_is_revoked_and_reads_through_it_fail() {
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let (image, _, diff_id, _) = image(&reg);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, layers) = streamed_by_a(&reg, &da, &image, &diff_id).await;
    // The forger swaps two files' names in the tree: every span still
    // matches its digest, but `big0` would show `big2`'s bytes.
    let bytes = a.store.read(Section::Index, &diff_id).unwrap();
    let mut tree: Tree = serde_json::from_slice(&bytes).unwrap();
    let data = tree.lookup(0, b"data").unwrap();
    let (x, y) = (
        tree.lookup(data, b"big0").unwrap(),
        tree.lookup(data, b"big2").unwrap(),
    );
    assert_eq!(tree.node(x).kind, NodeKind::File);
    let kids = &mut tree.nodes_mut()[data as usize].children;
    for (_, id) in kids.iter_mut() {
        if *id == x {
            *id = y;
        } else if *id == y {
            *id = x;
        }
    }
    a.store
        .put(
            Section::Index,
            &diff_id,
            &serde_json::to_vec(&tree).unwrap(),
        )
        .unwrap();
    a.publish_indexes("lab/big", &image).await.unwrap();

    let b = adopting_b(&reg, &db, &image).await;
    let l = open(&b, &image).await;
    // Before the check, the lie is served (the gap the README states)…
    assert_eq!(read(&b, &l, b"big0").await.unwrap(), noise(4 << 20, 3));
    // …and the check catches it: revoked, reads through it fail.
    assert_eq!(b.check_published().await, (1, 1));
    assert!(b.index_revoked(&diff_id));
    let e = read(&b, &l, b"small").await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
    // The layer is whole and verified now: a new open serves the truth.
    let l2 = b
        .open_layer("lab/big", &layers[0].0, &diff_id)
        .await
        .unwrap();
    assert!(matches!(l2.source, LayerSource::Local(_)));
    let t = &l2.tree;
    let d = t.lookup(0, b"data").unwrap();
    assert_eq!(t.node(t.lookup(d, b"big0").unwrap()).size, 4 << 20);
}

/// An image of one gzip layer of text that compresses well (so that the
/// spans refer back into their windows): `data/t0` … `data/t3`, 1 MiB each.
fn text_image(reg: &MemoryRegistry) -> (Digest, Digest, Vec<u8>) {
    let text = |i: usize| -> Vec<u8> {
        (0..)
            .flat_map(|n: u64| {
                format!("file {i} line {n}: regfs serves it by spans\n").into_bytes()
            })
            .take(1 << 20)
            .collect()
    };
    let mut w = TarW::new();
    w.dir(b"data", 0o755);
    for i in 0..4 {
        w.file(format!("data/t{i}").as_bytes(), &text(i));
    }
    let tar = w.finish();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    let layer = LayerBlob {
        media_type: GZIP_LAYER.into(),
        bytes: e.finish().unwrap().into(),
        diff_id: Digest::sha256_of(&tar),
        annotations: Default::default(),
    };
    let diff_id = layer.diff_id.clone();
    (reg.add_image("lab/big", "1", &[layer]), diff_id, text(1))
}

/// [`text_image`] streamed by machine A (its store in `da`) and its index
/// published: what the tests of published windows start from.
struct PublishedText {
    reg: Arc<MemoryRegistry>,
    image: Digest,
    diff_id: Digest,
    /// The contents of `data/t1`.
    t1: Vec<u8>,
    a: Content,
    layers: Vec<(crate::image::BlobRef, Digest)>,
    da: tempfile::TempDir,
}

async fn published_text() -> PublishedText {
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let (image, diff_id, t1) = text_image(&reg);
    let da = tempfile::tempdir().unwrap();
    let (a, layers) = streamed_by_a(&reg, &da, &image, &diff_id).await;
    a.publish_indexes("lab/big", &image).await.unwrap();
    PublishedText {
        reg,
        image,
        diff_id,
        t1,
        a,
        layers,
        da,
    }
}

/// The windows blob of the published artifact of `image`.
async fn windows_blob(reg: &MemoryRegistry, image: &Digest) -> Digest {
    let tag = reg
        .manifest("lab/big", &Selector::Tag(fallback_tag(image)))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&tag.bytes).unwrap();
    let artifact: Digest = v["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let m = reg
        .manifest("lab/big", &Selector::Digest(artifact))
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
    let layers = v["layers"].as_array().unwrap();
    let w = layers
        .iter()
        .find(|l| l["mediaType"] == super::published::WINDOWS_MEDIA_TYPE)
        .expect("a windows blob in the artifact");
    assert_eq!(
        layers
            .iter()
            .filter(|l| l["mediaType"] == super::published::INDEX_FILE_V2_MEDIA_TYPE)
            .count(),
        1
    );
    w["digest"].as_str().unwrap().parse().unwrap()
}

/// The span the read of `data/<name>` starts at (its first checkpoint).
fn first_span(l: &super::OpenedLayer, name: &[u8]) -> usize {
    let t = &l.tree;
    let node = t.node(t.lookup(t.lookup(0, b"data").unwrap(), name).unwrap());
    let LayerSource::Spans(s) = &l.source else {
        panic!("not served by spans")
    };
    let (a, b) = super::tar_range(node, 0, node.size).unwrap();
    s.index.spans_covering(a, b).unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_windows_are_fetched_one_by_one_and_kept() {
    let PublishedText {
        reg,
        image,
        t1,
        da: _da,
        ..
    } = published_text().await;
    let db = tempfile::tempdir().unwrap();
    let windows = windows_blob(&reg, &image).await;
    let windows_size = reg.blob_bytes("lab/big", &windows).unwrap().len() as u64;

    let b = adopting_b(&reg, &db, &image).await;
    // Adopting fetched no window.
    assert_eq!(reg.blob_requests(&windows), 0);
    let l = open(&b, &image).await;
    let LayerSource::Spans(s) = &l.source else {
        panic!("not served by spans")
    };
    let table = s.windows.clone().expect("windows apart");
    assert!(s.index.checkpoints.iter().all(|c| c.window.is_empty()));
    assert!(first_span(&l, b"t1") > 0);
    let before = reg.stats().bytes_received;
    assert_eq!(read(&b, &l, b"t1").await.unwrap(), t1);
    // One window, one Range request of it, far less than the blob.
    assert_eq!(reg.blob_requests(&windows), 1);
    let window_bytes = u64::from(table.windows[first_span(&l, b"t1")].len);
    assert!(
        window_bytes < windows_size / 2,
        "{window_bytes} of {windows_size}"
    );
    assert!(reg.stats().bytes_received - before < (2 << 20));
    // One fetch per window at a time: two readers of another window at once
    // make one request.
    let other = (1..table.windows.len())
        .find(|&i| i != first_span(&l, b"t1") && table.windows[i].len > 0)
        .unwrap();
    let (w1, w2) = tokio::join!(
        b.span_window("lab/big", &table, other),
        b.span_window("lab/big", &table, other)
    );
    assert_eq!(w1.unwrap(), w2.unwrap());
    assert_eq!(reg.blob_requests(&windows), 2);
    // Kept in the chunk cache by its digest: asked again, it is not fetched.
    let requests = reg.stats().requests;
    let k = first_span(&l, b"t1");
    let w = b.span_window("lab/big", &table, k).await.unwrap();
    assert_eq!(w.len(), table.windows[k].raw_len as usize);
    assert!(b
        .store
        .get(Section::Chunk, &table.windows[k].digest)
        .is_some());
    // Another open of the layer (from the store now) reads from the cache.
    let l2 = open(&b, &image).await;
    let LayerSource::Spans(s2) = &l2.source else {
        panic!("not served by spans")
    };
    assert_eq!(s2.windows.as_deref(), Some(&*table));
    assert_eq!(read(&b, &l2, b"t1").await.unwrap(), t1);
    assert_eq!(reg.stats().requests, requests);
    // The check also compares every window with the layer's bytes.
    assert_eq!(b.check_published().await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_window_fails_its_reads_and_is_revoked() {
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let (image, diff_id, t1) = text_image(&reg);
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (a, _) = streamed_by_a(&reg, &da, &image, &diff_id).await;
    // Where t1's read starts, from a first honest publication.
    a.publish_indexes("lab/big", &image).await.unwrap();
    let mut probe = content(&reg, &dc);
    probe.set_use_published_indexes(true, std::time::Duration::ZERO);
    assert_eq!(probe.adopt_published_indexes("lab/big", &image).await, 1);
    let k = first_span(&open(&probe, &image).await, b"t1");
    assert!(k > 0);

    // The forger changes that window and publishes again, every digest
    // (window, windows blob, index file, artifact) made to match.
    let stored = a.store.read(Section::Span, &diff_id).unwrap();
    let (blob, mut ix, _) = super::index_file::decode_stored(&stored).unwrap();
    for b in ix.checkpoints[k].window.iter_mut() {
        *b = b.wrapping_add(1);
    }
    a.store
        .put(
            Section::Span,
            &diff_id,
            &super::index_file::encode_stored(&blob, &ix, None),
        )
        .unwrap();
    // A fresh fallback tag, so that B finds the forged artifact.
    let tag = fallback_tag(&image);
    let empty = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []});
    reg.add_manifest(
        "lab/big",
        Some(&tag),
        "application/vnd.oci.image.index.v1+json",
        serde_json::to_vec(&empty).unwrap(),
    );
    a.publish_indexes("lab/big", &image).await.unwrap();

    let b = adopting_b(&reg, &db, &image).await;
    let l = open(&b, &image).await;
    assert_eq!(first_span(&l, b"t1"), k);
    // The read that starts at the forged window fails: EIO, and nothing of
    // it is cached (neither the span nor anything under its digest).
    let e = read(&b, &l, b"t1").await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
    let LayerSource::Spans(s) = &l.source else {
        panic!("not served by spans")
    };
    assert!(b
        .store
        .get(Section::Chunk, &s.index.checkpoints[k].span_digest)
        .is_none());
    // Reads that do not start there are served.
    assert_eq!(read(&b, &l, b"t3").await.unwrap().len(), 1 << 20);
    // The check finds the window is not the layer's bytes: revoked.
    assert_eq!(b.check_published().await, (1, 1));
    assert!(b.index_revoked(&diff_id));
    let _ = t1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_blob_served_wrong_fails_the_read() {
    let PublishedText {
        reg,
        image,
        diff_id,
        t1,
        layers,
        da: _da,
        ..
    } = published_text().await;
    let db = tempfile::tempdir().unwrap();
    // The registry serves other bytes under the windows blob's digest
    // (a Range request cannot be checked against the blob's digest).
    let windows = windows_blob(&reg, &image).await;
    let mut bytes = reg.blob_bytes("lab/big", &windows).unwrap().to_vec();
    for b in bytes.iter_mut() {
        *b ^= 0x20;
    }
    reg.add_blob_as("lab/big", &windows, bytes);

    let b = adopting_b(&reg, &db, &image).await;
    let l = open(&b, &image).await;
    let e = read(&b, &l, b"t1").await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
    // Nothing under the window's digest in the cache.
    let LayerSource::Spans(s) = &l.source else {
        panic!("not served by spans")
    };
    let w = &s.windows.as_ref().unwrap().windows[first_span(&l, b"t1")];
    assert!(b.store.get(Section::Chunk, &w.digest).is_none());
    // The layer itself is right: the check passes, and the layer read whole
    // then serves the file.
    assert_eq!(b.check_published().await, (1, 0));
    let l2 = b
        .open_layer("lab/big", &layers[0].0, &diff_id)
        .await
        .unwrap();
    assert!(matches!(l2.source, LayerSource::Local(_)));
    let _ = t1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_small_file_fetches_the_whole_file_in_one_request() {
    let PublishedText {
        reg,
        image,
        t1,
        da: _da,
        ..
    } = published_text().await;
    let db = tempfile::tempdir().unwrap();
    let b = adopting_b(&reg, &db, &image).await;
    let l = open(&b, &image).await;
    let LayerSource::Spans(s) = &l.source else {
        panic!("not served by spans")
    };
    let t = &l.tree;
    let data = t.lookup(0, b"data").unwrap();
    let extent = |name: &[u8]| {
        let n = t.node(t.lookup(data, name).unwrap());
        super::tar_range(n, 0, n.size).unwrap()
    };
    let cached = |(from, to): (u64, u64)| {
        let (f, l) = s.index.spans_covering(from, to).unwrap();
        (f..=l)
            .filter(|&i| {
                b.store
                    .get(Section::Chunk, &s.index.checkpoints[i].span_digest)
                    .is_some()
            })
            .count()
    };
    // 100 bytes in the middle of t1 (1 MiB, several spans): the whole file.
    let f1 = extent(b"t1");
    let (f, l1) = s.index.spans_covering(f1.0, f1.1).unwrap();
    assert!(l1 > f + 1, "t1 has {} spans", l1 - f + 1);
    let requests = reg.blob_requests(&s.blob.digest);
    let mid = f1.0 + (f1.1 - f1.0) / 2;
    let view = b.read_file_spans(s, f1, mid, mid + 100).await.unwrap();
    let mut buf = [0u8; 100];
    crate::layer::ReadAt::read_at(&view, &mut buf, mid).unwrap();
    assert_eq!(buf[..], t1[(mid - f1.0) as usize..][..100]);
    assert_eq!(reg.blob_requests(&s.blob.digest) - requests, 1);
    assert_eq!(cached(f1), l1 - f + 1);
    // A file longer than WHOLE_FILE_SPANS: only the read's span.
    let f3 = extent(b"t3");
    let huge = (f3.0, f3.0 + super::spans::WHOLE_FILE_SPANS + 1);
    b.read_file_spans(s, huge, f3.0, f3.0 + 100).await.unwrap();
    assert_eq!(cached(f3), 1);
}

#[tokio::test]
async fn a_new_artifact_of_a_type_replaces_the_one_listed_before() {
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let (image, _, _, _) = image(&reg);
    let dir = tempfile::tempdir().unwrap();
    let c = content(&reg, &dir);
    let info = reg
        .manifest("lab/big", &Selector::Digest(image.clone()))
        .await
        .unwrap();
    let kind = "application/vnd.example.test";
    let push = |text: &'static str| {
        let file = (
            "application/octet-stream",
            bytes::Bytes::from_static(text.as_bytes()),
            serde_json::json!({"org.opencontainers.image.title": text}),
        );
        c.push_referrer("lab/big", &image, &info.bytes, kind, vec![file])
    };
    let listed = || async {
        c.published_files(
            "lab/big",
            &image,
            kind,
            "org.opencontainers.image.title",
            1 << 20,
        )
        .await
        .unwrap()
        .map(|(_, files)| files.into_iter().map(|(n, _)| n).collect::<Vec<_>>())
    };
    let first = push("old").await.unwrap();
    assert!(!first.already);
    assert_eq!(listed().await, Some(vec!["old".to_string()]));
    // Pushing the same again changes nothing; another one replaces it.
    assert!(push("old").await.unwrap().already);
    let second = push("new").await.unwrap();
    assert_ne!(second.artifact, first.artifact);
    assert_eq!(listed().await, Some(vec!["new".to_string()]));
    let of_kind = c
        .referrers("lab/big", &image)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.artifact_type == kind)
        .count();
    assert_eq!(of_kind, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_index_file_imported_by_hand_reads_its_windows_from_the_registry() {
    let PublishedText {
        reg,
        image,
        diff_id,
        t1,
        a,
        da: _da,
        ..
    } = published_text().await;
    let db = tempfile::tempdir().unwrap();
    let files = super::index_file::export_published(&a.store, &diff_id).unwrap();
    assert!(files.file.starts_with(b"regfs-layer-index 2\n"));
    assert!(!files.windows.is_empty());

    // `regfs index import` of the version-2 file into a fresh cache: the
    // windows are not in it, only where they lie in the published blob.
    let b = content(&reg, &db);
    let ix = super::index_file::import_index(&b.store, &files.file).unwrap();
    assert!(ix.windows.is_some());
    assert_eq!(ix.diff_id, diff_id);
    let l = open(&b, &image).await;
    let LayerSource::Spans(s) = &l.source else {
        panic!("the imported index does not serve the layer by spans")
    };
    assert!(s.windows.is_some());
    assert_eq!(read(&b, &l, b"t1").await.unwrap(), t1);

    // The same file where the registry lacks the windows blob: the read
    // fails, nothing else is served.
    let bare = Arc::new(MemoryRegistry::new("memory.test"));
    let (image2, _, _) = text_image(&bare);
    assert_eq!(image2, image);
    let dc = tempfile::tempdir().unwrap();
    let c = content(&bare, &dc);
    super::index_file::import_index(&c.store, &files.file).unwrap();
    let l = open(&c, &image).await;
    let data = l.tree.lookup(0, b"data").unwrap();
    let node = l.tree.lookup(data, b"t2").unwrap();
    let first = super::tar_range(l.tree.node(node), 0, 1).unwrap().0;
    let LayerSource::Spans(s) = &l.source else {
        panic!("not served by spans")
    };
    // A span that needs a window (not the first of the gzip member).
    assert!(!s.index.checkpoints[s.index.spans_covering(first, first + 1).unwrap().0].member_start);
    assert!(read(&c, &l, b"t2").await.is_err());
}
