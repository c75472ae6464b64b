//! Lazy TOCs through the registry seam: footer and TOC in one request when
//! the TOC fits the guessed tail, a second one when it does not, both
//! verified; an image's TOCs fetched early side by side and joined by the
//! layer's opener without a second fetch.

use std::sync::Arc;
use std::time::Duration;

use super::{Content, LayerSource};
use crate::cache::{Section, Store};
use crate::digest::Digest;
use crate::error::Error;
use crate::estargz::{self, testutil, LazySpec};
use crate::image::BlobRef;
use crate::layer::testutil::TarW;
use crate::layer::Limits;
use crate::registry::{Fault, FaultyRegistry, MemoryRegistry};

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// An eStargz blob of `files` small files, in `mem` under `lab/a`.
fn esgz_layer(mem: &MemoryRegistry, files: usize) -> (BlobRef, Digest, Vec<u8>) {
    let mut w = TarW::new();
    w.dir(b"d", 0o755);
    for i in 0..files {
        w.file(
            name(i).as_bytes(),
            format!("contents of file {i}\n").as_bytes(),
        );
    }
    let tar = w.finish();
    let lazy = testutil::estargz(&tar);
    let desc = BlobRef {
        media_type: GZIP_LAYER.into(),
        digest: Digest::sha256_of(&lazy.blob),
        size: lazy.blob.len() as u64,
        urls: Vec::new(),
        annotations: lazy.annotations.clone().into_iter().collect(),
    };
    mem.add_blob("lab/a", lazy.blob.clone());
    (desc, Digest::sha256_of(&tar), lazy.blob)
}

/// File `i`'s path: long, varied names make a TOC that compresses like a real one.
fn name(i: usize) -> String {
    format!(
        "d/file-{i:05}-{:x}",
        (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

fn setup() -> (
    Arc<MemoryRegistry>,
    Arc<FaultyRegistry>,
    tempfile::TempDir,
    Content,
) {
    let mem = Arc::new(MemoryRegistry::new("memory.test"));
    let faulty = Arc::new(FaultyRegistry::new(mem.clone()));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let c = Content::new(faulty.clone(), store, 1_000_000, Limits::default());
    (mem, faulty, dir, c)
}

fn toc_start(blob: &[u8]) -> u64 {
    estargz::parse_footer(blob).unwrap().0
}

#[tokio::test]
async fn a_toc_within_the_guessed_tail_is_one_request() {
    let (mem, _faulty, _dir, c) = setup();
    let (desc, diff_id, blob) = esgz_layer(&mem, 20);
    assert!(blob.len() as u64 - toc_start(&blob) <= estargz::tail_fetch_size(desc.size));
    let opened = c.open_layer("lab/a", &desc, &diff_id).await.unwrap();
    assert!(matches!(opened.source, LayerSource::Remote(_)));
    assert!(opened.tree.lookup_path(name(7).as_bytes()).is_some());
    assert_eq!(mem.blob_requests(&desc.digest), 1);
}

#[tokio::test]
async fn a_toc_larger_than_the_guessed_tail_takes_a_second_request() {
    let (mem, _faulty, _dir, c) = setup();
    let (desc, diff_id, blob) = esgz_layer(&mem, 3000);
    let toc_and_footer = blob.len() as u64 - toc_start(&blob);
    assert!(
        toc_and_footer > estargz::tail_fetch_size(desc.size),
        "TOC {toc_and_footer} bytes, blob {}",
        blob.len()
    );
    let opened = c.open_layer("lab/a", &desc, &diff_id).await.unwrap();
    assert!(matches!(opened.source, LayerSource::Remote(_)));
    assert!(opened.tree.lookup_path(name(2999).as_bytes()).is_some());
    assert_eq!(mem.blob_requests(&desc.digest), 2);
}

#[tokio::test]
async fn a_corrupt_toc_in_either_request_is_refused_and_not_stored() {
    let (mem, faulty, _dir, c) = setup();
    let (desc, _diff_id, blob) = esgz_layer(&mem, 3000);
    let spec = LazySpec::from_descriptor(&desc).unwrap();
    let tail_start = blob.len() as u64 - estargz::tail_fetch_size(desc.size);
    let start = toc_start(&blob);
    // A byte of the TOC in the second request (before the tail), then in the first.
    for at in [start + 10, tail_start + 10] {
        faulty.inject(&desc.digest, Fault::FlipByte(at));
        let Err(e) = c.lazy_layer("lab/a", &desc, &spec).await else {
            panic!("a corrupt TOC was accepted (byte {at})");
        };
        assert!(
            matches!(e, Error::DigestMismatch { .. } | Error::Invalid(_)),
            "{e:?}"
        );
        assert!(c.store.get(Section::Toc, spec.anchor()).is_none());
        faulty.clear(&desc.digest);
    }
    c.lazy_layer("lab/a", &desc, &spec).await.unwrap();
    // The store's copy is written off the reader's path: soon.
    for _ in 0..100 {
        if c.store.get(Section::Toc, spec.anchor()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.store.get(Section::Toc, spec.anchor()).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_index_serves_a_restart_without_a_request() {
    let (mem, faulty, dir, c) = setup();
    let (desc, diff_id, _) = esgz_layer(&mem, 50);
    let first = c.open_layer("lab/a", &desc, &diff_id).await.unwrap();
    let fetched = mem.blob_requests(&desc.digest);
    let spec = LazySpec::from_descriptor(&desc).unwrap();
    for _ in 0..100 {
        if c.store.get(Section::Toc, spec.anchor()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(c);
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let again = Content::new(faulty.clone(), store, 1_000_000, Limits::default());
    let second = again.open_layer("lab/a", &desc, &diff_id).await.unwrap();
    assert_eq!(*first.tree, *second.tree);
    assert_eq!(mem.blob_requests(&desc.digest), fetched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_toc_fetches_are_joined_not_repeated() {
    let (mem, faulty, _dir, c) = setup();
    let (a, a_diff, _) = esgz_layer(&mem, 20);
    let (b, _, _) = esgz_layer(&mem, 30);
    // A slow registry keeps the early fetches in flight when the layer is opened.
    faulty.inject(&a.digest, Fault::Stall(Duration::from_millis(200)));
    c.start_tocs("lab/a", &[a.clone(), b.clone()], Some(0));
    let opened = c.open_layer("lab/a", &a, &a_diff).await.unwrap();
    assert!(matches!(opened.source, LayerSource::Remote(_)));
    assert_eq!(mem.blob_requests(&a.digest), 1);
    // The other layer's TOC arrives without anyone waiting for it.
    let spec_b = LazySpec::from_descriptor(&b).unwrap();
    for _ in 0..100 {
        if c.lazy.indexes.get(spec_b.anchor()).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(c.lazy.indexes.get(spec_b.anchor()).is_some());
    c.lazy_layer("lab/a", &b, &spec_b).await.unwrap();
    assert_eq!(mem.blob_requests(&b.digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chunks_of_several_files_come_in_one_request_and_only_verified_ones_are_kept() {
    let (mem, faulty, _dir, c) = setup();
    let (desc, diff_id, _) = esgz_layer(&mem, 40);
    let opened = c.open_layer("lab/a", &desc, &diff_id).await.unwrap();
    let LayerSource::Remote(layer) = &opened.source else {
        panic!("not lazy");
    };
    let chunks_of = |files: &[usize]| -> Vec<crate::layer::Chunk> {
        files
            .iter()
            .flat_map(|&i| {
                let n = opened.tree.lookup_path(name(i).as_bytes()).unwrap();
                match &opened.tree.node(n).content {
                    crate::layer::FileData::Chunks { chunks, .. } => chunks.clone(),
                    _ => panic!("file {i} is not lazily served"),
                }
            })
            .collect()
    };
    let cached = |files: &[usize]| {
        chunks_of(files)
            .iter()
            .all(|ch| c.store.get(Section::Chunk, &ch.digest).is_some())
    };
    // Three files apart from each other: three runs, one request.
    let before = mem.blob_requests(&desc.digest);
    c.fetch_chunks(layer, &chunks_of(&[3, 17, 30]))
        .await
        .unwrap();
    assert_eq!(mem.blob_requests(&desc.digest), before + 1);
    assert!(cached(&[3, 17, 30]));
    // Read back from the store: no request.
    for i in [3, 17, 30] {
        let ch = chunks_of(&[i]);
        let size = ch.iter().map(|ch| ch.size).sum::<u64>();
        let got = c
            .read_chunks(layer, &ch, size, (0, size as u32), false)
            .await
            .unwrap();
        assert_eq!(got, format!("contents of file {i}\n").as_bytes());
    }
    assert_eq!(mem.blob_requests(&desc.digest), before + 1);

    // A corrupt byte in the middle file's chunk: the batch fails; the file
    // before it is verified and kept, the corrupt one and those after not.
    let bad = chunks_of(&[20])[0].blob_offset + 12;
    faulty.inject(&desc.digest, Fault::FlipByte(bad));
    let e = c
        .fetch_chunks(layer, &chunks_of(&[10, 20, 25]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::DigestMismatch { .. } | Error::Invalid(_)),
        "{e:?}"
    );
    assert!(cached(&[10]));
    assert!(!cached(&[20]) && !cached(&[25]));
    faulty.clear(&desc.digest);
    c.fetch_chunks(layer, &chunks_of(&[20, 25])).await.unwrap();
    assert!(cached(&[20, 25]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_toc_is_checked_again_and_a_damaged_one_fetched_again() {
    let (mem, faulty, dir, c) = setup();
    let (desc, diff_id, _) = esgz_layer(&mem, 50);
    let first = c.open_layer("lab/a", &desc, &diff_id).await.unwrap();
    let spec = LazySpec::from_descriptor(&desc).unwrap();
    let mut path = None;
    for _ in 0..100 {
        path = c.store.get(Section::Toc, spec.anchor());
        if path.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = path.expect("the TOC was stored");
    // The store keeps the TOC as fetched (its gzip member), not a tree.
    let stored = std::fs::read(&path).unwrap();
    assert!(stored.first() != Some(&b'{'), "a JSON tree was stored");
    assert!(
        stored.windows(2).any(|w| w == [0x1f, 0x8b]),
        "no gzip member stored"
    );
    drop(c);
    // A copy that still inflates and parses but names a file differently:
    // only the check against the manifest's digest can tell.
    let header = super::toc::SOURCE_MAGIC.len() + 8;
    let json = estargz::toc::estargz_toc_json(&stored[header..]).unwrap();
    let (real, fake) = (name(7), name(7).replace("file-", "fil3-"));
    let forged_json = String::from_utf8(json).unwrap().replace(&real, &fake);
    let mut tar = TarW::new();
    tar.file(estargz::TOC_NAME.as_bytes(), forged_json.as_bytes());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar.finish()).unwrap();
    let mut forged = stored[..header].to_vec();
    forged.extend_from_slice(&gz.finish().unwrap());
    // Each damage: not served, fetched again.
    for (what, damaged) in [
        ("forged", forged),
        ("cut short", stored[..stored.len() / 2].to_vec()),
    ] {
        std::fs::write(&path, &damaged).unwrap();
        let fetched = mem.blob_requests(&desc.digest);
        let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
        let again = Content::new(faulty.clone(), store, 1_000_000, Limits::default());
        let second = again.open_layer("lab/a", &desc, &diff_id).await.unwrap();
        assert!(second.tree.lookup_path(fake.as_bytes()).is_none(), "{what}");
        assert_eq!(*first.tree, *second.tree, "{what}");
        assert!(
            mem.blob_requests(&desc.digest) > fetched,
            "served from a {what} TOC"
        );
    }
}
