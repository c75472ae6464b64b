//! Prefetch of prioritised files: an eStargz layer whose tar has
//! `.prefetch.landmark` after some files gets those files' chunks fetched
//! and verified as soon as its TOC is loaded, without any read and without
//! the background throttle; the files after the landmark stay remote.

use std::sync::Arc;
use std::time::Duration;

use super::lazy::LazyOptions;
use super::Content;
use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::estargz::{testutil, LazySpec, PREFETCH_LANDMARK};
use crate::image::BlobRef;
use crate::layer::testutil::TarW;
use crate::layer::Limits;
use crate::registry::MemoryRegistry;

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn content_of(i: usize) -> Vec<u8> {
    format!("contents of file {i}: {}\n", "x".repeat(i * 37)).into_bytes()
}

/// An eStargz layer of 30 files, the first `prioritised` before the landmark.
fn layer(mem: &MemoryRegistry, prioritised: usize) -> BlobRef {
    let mut w = TarW::new();
    w.dir(b"d", 0o755);
    for i in 0..30 {
        if i == prioritised {
            w.file(PREFETCH_LANDMARK.as_bytes(), &[0xf]);
        }
        w.file(format!("d/f{i:02}").as_bytes(), &content_of(i));
    }
    let lazy = testutil::estargz(&w.finish());
    mem.add_blob("lab/a", lazy.blob.clone());
    BlobRef {
        media_type: GZIP_LAYER.into(),
        digest: Digest::sha256_of(&lazy.blob),
        size: lazy.blob.len() as u64,
        urls: Vec::new(),
        annotations: lazy.annotations.into_iter().collect(),
    }
}

fn stored(store: &Store, i: usize) -> bool {
    store
        .get(Section::Chunk, &Digest::sha256_of(&content_of(i)))
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prioritised_files_are_fetched_when_the_toc_arrives_unthrottled() {
    let mem = Arc::new(MemoryRegistry::new("memory.test"));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let mut c = Content::new(mem.clone(), store.clone(), 1_000_000, Limits::default());
    // A throttle this slow would hold a throttled prefetch for minutes.
    c.set_lazy_options(LazyOptions {
        background_bandwidth: 1,
        ..LazyOptions::default()
    });
    let desc = layer(&mem, 5);
    c.start_tocs("lab/a", std::slice::from_ref(&desc), None);
    let mut waited = 0;
    while !(0..5).all(|i| stored(&store, i)) && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert!(
        (0..5).all(|i| stored(&store, i)),
        "prioritised files not prefetched"
    );
    // Let any stray fetch land before checking that nothing else came.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        (5..30).all(|i| !stored(&store, i)),
        "files after the landmark were fetched"
    );
    // The footer + TOC request, then one run for the five small files.
    assert_eq!(mem.blob_requests(&desc.digest), 2);
    // Opening the layer afterwards schedules nothing again.
    let spec = LazySpec::from_descriptor(&desc).unwrap();
    c.lazy_layer("lab/a", &desc, &spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(mem.blob_requests(&desc.digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_without_a_prefetch_landmark_fetches_nothing_ahead() {
    let mem = Arc::new(MemoryRegistry::new("memory.test"));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let c = Content::new(mem.clone(), store.clone(), 1_000_000, Limits::default());
    let desc = layer(&mem, 30);
    c.start_tocs("lab/a", std::slice::from_ref(&desc), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mem.blob_requests(&desc.digest), 1);
    assert!((0..30).all(|i| !stored(&store, i)));
}
