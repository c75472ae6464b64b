//! The fetch-once path through the registry seam: one request per key under
//! concurrency, nothing unverified committed, for a blob (`once`) and for
//! gzip spans (`pieces`).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use super::{Content, LayerSource};
use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::error::Error;
use crate::image::BlobRef;
use crate::layer::span::DEFAULT_SPAN;
use crate::layer::testutil::TarW;
use crate::layer::{self, Limits};
use crate::registry::{Fault, FaultyRegistry, MemoryRegistry};

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn desc(media_type: &str, bytes: &[u8]) -> BlobRef {
    BlobRef {
        media_type: media_type.into(),
        digest: Digest::sha256_of(bytes),
        size: bytes.len() as u64,
        urls: Vec::new(),
        annotations: Default::default(),
    }
}

fn setup() -> (
    Arc<MemoryRegistry>,
    Arc<FaultyRegistry>,
    tempfile::TempDir,
    Arc<Store>,
) {
    let mem = Arc::new(MemoryRegistry::new("memory.test"));
    let faulty = Arc::new(FaultyRegistry::new(mem.clone()));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    (mem, faulty, dir, store)
}

fn content(faulty: &Arc<FaultyRegistry>, store: &Arc<Store>) -> Content {
    Content::new(faulty.clone(), store.clone(), 1_000_000, Limits::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readers_of_a_blob_cause_one_verified_fetch() {
    let (mem, faulty, _dir, store) = setup();
    let data: Vec<u8> = (0..500_000u32).map(|i| (i % 241) as u8).collect();
    let d = desc("application/octet-stream", &data);
    mem.add_blob("lab/a", data.clone());
    // A stall keeps the first fetch in flight while the others arrive.
    faulty.inject(&d.digest, Fault::Stall(Duration::from_millis(200)));
    let c = content(&faulty, &store);
    let files = futures_util::future::join_all((0..8).map(|_| c.blob("lab/a", &d))).await;
    for f in files {
        let mut got = Vec::new();
        f.unwrap().read_to_end(&mut got).unwrap();
        assert_eq!(got, data);
    }
    assert_eq!(mem.blob_requests(&d.digest), 1);
    // Another process over the same store: a hit, no request.
    content(&faulty, &store).blob("lab/a", &d).await.unwrap();
    assert_eq!(mem.blob_requests(&d.digest), 1);
}

#[tokio::test]
async fn a_corrupt_or_truncated_blob_is_refused_and_never_committed() {
    let (mem, faulty, _dir, store) = setup();
    let data = vec![7u8; 100_000];
    let d = desc("application/octet-stream", &data);
    mem.add_blob("lab/a", data.clone());
    let c = content(&faulty, &store);
    for fault in [Fault::FlipByte(99_999), Fault::Truncate(5)] {
        faulty.inject(&d.digest, fault);
        let e = c.blob("lab/a", &d).await.unwrap_err();
        assert!(
            matches!(e, Error::DigestMismatch { .. } | Error::Network(_)),
            "{e:?}"
        );
        assert!(store.get(Section::Blob, &d.digest).is_none(), "{fault:?}");
    }
    faulty.clear(&d.digest);
    c.blob("lab/a", &d).await.unwrap();
    assert!(store.get(Section::Blob, &d.digest).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_an_evicted_gzip_layer_are_verified_fetched_once_and_kept() {
    let (mem, faulty, _dir, store) = setup();
    // Three spans' worth of tar, at a level that writes ordinary deflate
    // blocks (checkpoints sit at block boundaries).
    let big: Vec<u8> = (0..(2 * DEFAULT_SPAN + DEFAULT_SPAN / 2) / 16)
        .flat_map(|i: u64| format!("{:015x}\n", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).into_bytes())
        .collect();
    let mut w = TarW::new();
    w.file(b"big", &big);
    let tar = w.finish();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(&tar).unwrap();
    let blob = e.finish().unwrap();
    let d = desc(GZIP_LAYER, &blob);
    let diff_id = Digest::sha256_of(&tar);
    mem.add_blob("lab/a", blob.clone());

    // Stream it whole once (which records its span index), then evict the tar.
    content(&faulty, &store)
        .layer("lab/a", &d, &diff_id)
        .await
        .unwrap();
    assert_eq!(mem.blob_requests(&d.digest), 1);
    std::fs::remove_file(store.path(Section::Layer, &diff_id)).unwrap();

    let c = content(&faulty, &store);
    let opened = c.open_layer("lab/a", &d, &diff_id).await.unwrap();
    let LayerSource::Spans(spans) = &opened.source else {
        panic!("an evicted gzip layer with a span index is served by spans");
    };
    assert!(
        spans.index.checkpoints.len() >= 3,
        "{:?}",
        spans
            .index
            .checkpoints
            .iter()
            .map(|c| c.uncompressed)
            .collect::<Vec<_>>()
    );
    let node = opened.tree.node(opened.tree.lookup_path(b"big").unwrap());
    let layer::FileData::Tar { offset, .. } = node.content else {
        panic!("a plain file")
    };
    let (start, end) = (offset + 100, offset + big.len() as u64 - 100);

    // A flipped byte in the middle of the blob: the read fails, nothing of
    // the spans it hit is kept.
    faulty.inject(&d.digest, Fault::FlipByte(blob.len() as u64 / 2));
    assert!(c.read_spans(spans, start, end).await.is_err());
    let kept = spans
        .index
        .checkpoints
        .iter()
        .filter(|cp| store.get(Section::Chunk, &cp.span_digest).is_some())
        .count();
    assert!(
        kept < spans.index.checkpoints.len(),
        "the bad span was not kept"
    );
    faulty.clear(&d.digest);

    let before = mem.blob_requests(&d.digest);
    let (a, b) = tokio::join!(
        c.read_spans(spans, start, end),
        c.read_spans(spans, start, end)
    );
    for view in [a.unwrap(), b.unwrap()] {
        let mut got = vec![0u8; (end - start) as usize];
        assert_eq!(
            layer::read_full_at(&view, &mut got, start).unwrap(),
            got.len()
        );
        assert_eq!(got, tar[start as usize..end as usize]);
    }
    // At most 4 spans per Range request, and the second reader fetched nothing.
    let runs = (spans.index.checkpoints.len() as u64).div_ceil(4);
    assert!(mem.blob_requests(&d.digest) - before <= runs);
    // Every span is now in the chunk cache: no more requests.
    let after = mem.blob_requests(&d.digest);
    c.read_spans(spans, start, end).await.unwrap();
    assert_eq!(mem.blob_requests(&d.digest), after);
}
