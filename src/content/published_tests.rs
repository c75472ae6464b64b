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
    let a = content(&reg, &da);
    let (_, layers) = a.image_layers("lab/big", &image).await.unwrap();
    a.layer("lab/big", &layers[0].0, &diff_id).await.unwrap();
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
    let a = content(&reg, &da);
    let (_, layers) = a.image_layers("lab/big", &image).await.unwrap();
    a.layer("lab/big", &layers[0].0, &diff_id).await.unwrap();
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

    let mut b = content(&reg, &db);
    b.set_use_published_indexes(true, std::time::Duration::ZERO);
    assert_eq!(b.adopt_published_indexes("lab/big", &image).await, 1);
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
