//! Tests of the in-process registry and its fault wrapper.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::api::{BoxBlobBody, RegistryApi};
use super::faults::{Fault, FaultyRegistry, MAX_STALL};
use super::memory::MemoryRegistry;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::media_type::OCI_MANIFEST;
use crate::reference::Selector;

async fn drain(mut body: BoxBlobBody) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = body.next_chunk().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn serves_what_was_put_with_the_real_clients_checks() {
    let r = MemoryRegistry::new("mem.test");
    let blob = data(200_000);
    let d = r.add_blob("lab/a", blob.clone());
    let m = r.add_manifest(
        "lab/a",
        Some("1"),
        OCI_MANIFEST,
        &b"{\"schemaVersion\":2}"[..],
    );
    r.add_blob("lab/b", &b"x"[..]);

    assert_eq!(r.catalog().await.unwrap(), ["lab/a", "lab/b"]);
    assert_eq!(r.tags("lab/a").await.unwrap(), ["1"]);
    assert!(matches!(r.tags("lab/zzz").await, Err(Error::NotFound(_))));
    let by_tag = r
        .manifest("lab/a", &Selector::Tag("1".into()))
        .await
        .unwrap();
    assert_eq!(by_tag.digest, m);
    let by_digest = r
        .manifest("lab/a", &Selector::Digest(m.clone()))
        .await
        .unwrap();
    assert_eq!(by_digest.bytes, by_tag.bytes);
    assert!(matches!(
        r.manifest("lab/a", &Selector::Tag("2".into())).await,
        Err(Error::NotFound(_))
    ));

    // A whole blob, verified; size enforced when given.
    assert_eq!(
        drain(r.blob("lab/a", &d, Some(200_000)).await.unwrap())
            .await
            .unwrap(),
        blob
    );
    let e = drain(r.blob("lab/a", &d, Some(100)).await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
    // Blobs are per repository.
    assert!(matches!(
        r.blob("lab/b", &d, None).await,
        Err(Error::NotFound(_))
    ));

    // Ranges: exact, cut at the end, refused past it.
    assert_eq!(
        &r.blob_range("lab/a", &d, 10, 5).await.unwrap()[..],
        &blob[10..15]
    );
    assert_eq!(
        &r.blob_range("lab/a", &d, 199_990, 100).await.unwrap()[..],
        &blob[199_990..]
    );
    assert!(r.blob_range("lab/a", &d, 200_000, 1).await.is_err());
    assert_eq!(r.blob_size("lab/a", &d).await.unwrap(), Some(200_000));
    assert_eq!(r.blob_size("lab/b", &d).await.unwrap(), None);
    assert_eq!(r.blob_requests(&d), 6);
    assert!(r.stats().requests > 6);
}

#[tokio::test]
async fn a_blob_stored_under_the_wrong_digest_fails_at_its_end() {
    let r = MemoryRegistry::new("mem.test");
    let d = Digest::sha256_of(b"the right bytes");
    r.add_blob_as("lab/a", &d, &b"the wrong bytes"[..]);
    let mut body = r.blob("lab/a", &d, None).await.unwrap();
    assert_eq!(
        &body.next_chunk().await.unwrap().unwrap()[..],
        b"the wrong bytes"
    );
    let e = body.next_chunk().await.unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
}

#[tokio::test]
async fn pushes_are_verified_and_mounts_copy_between_repositories() {
    let r = MemoryRegistry::new("mem.test");
    let bytes = Bytes::from(data(1000));
    let d = Digest::sha256_of(&bytes);
    let body = |b: Bytes| Box::pin(futures_util::stream::iter([Ok(b)])) as _;
    let e = r
        .push_blob("lab/a", &d, 1000, body(Bytes::from_static(b"nope")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
    assert!(!r.blob_exists("lab/a", &d).await.unwrap());
    r.push_blob("lab/a", &d, 1000, body(bytes.clone()))
        .await
        .unwrap();
    assert!(r.blob_exists("lab/a", &d).await.unwrap());
    assert!(r.mount_blob("lab/b", &d, "lab/a").await.unwrap());
    assert!(!r
        .mount_blob("lab/c", &Digest::sha256_of(b"x"), "lab/a")
        .await
        .unwrap());
    assert_eq!(r.blob_bytes("lab/b", &d).unwrap(), bytes);
    let (d2, n) = r
        .push_blob_stream("lab/c", body(bytes.clone()))
        .await
        .unwrap();
    assert_eq!((d2, n), (d.clone(), 1000));
    let m = r
        .put_manifest(
            "lab/c",
            &Selector::Tag("t".into()),
            OCI_MANIFEST,
            Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    assert_eq!(r.tags("lab/c").await.unwrap(), ["t"]);
    let wrong = Selector::Digest(Digest::sha256_of(b"other"));
    assert!(r
        .put_manifest("lab/c", &wrong, OCI_MANIFEST, Bytes::from_static(b"{}"))
        .await
        .is_err());
    assert_eq!(m, Digest::sha256_of(b"{}"));
}

#[tokio::test]
async fn faults_reach_the_caller_as_a_bad_network_would_deliver_them() {
    let mem = Arc::new(MemoryRegistry::new("mem.test"));
    let blob = data(300_000);
    let d = mem.add_blob("lab/a", blob.clone());
    let f = FaultyRegistry::new(mem.clone());

    f.inject(&d, Fault::FlipByte(123_456));
    let e = drain(f.blob("lab/a", &d, Some(300_000)).await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
    let r = f.blob_range("lab/a", &d, 123_450, 10).await.unwrap();
    assert_eq!(r[6], !blob[123_456]);
    assert_eq!(r[5], blob[123_455]);

    f.inject(&d, Fault::Truncate(1000));
    let e = drain(f.blob("lab/a", &d, Some(300_000)).await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Network(_)), "{e:?}");
    let e = drain(f.blob("lab/a", &d, None).await.unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e:?}");
    assert_eq!(
        f.blob_range("lab/a", &d, 900, 500).await.unwrap().len(),
        100
    );

    f.inject(&d, Fault::Status(503));
    let e = f.blob("lab/a", &d, None).await.unwrap_err();
    assert!(matches!(e, Error::Registry { status: 503, .. }), "{e:?}");
    assert!(e.is_transient(), "a 503 is worth a retry");
    assert!(f.blob_range("lab/a", &d, 0, 1).await.is_err());

    f.inject(&d, Fault::Stall(Duration::from_millis(200)));
    let t = Instant::now();
    assert_eq!(
        drain(f.blob("lab/a", &d, None).await.unwrap())
            .await
            .unwrap(),
        blob
    );
    assert!(t.elapsed() >= Duration::from_millis(200));
    f.inject(&d, Fault::Stall(Duration::from_secs(3600)));
    assert_eq!(
        f.fault_of(&d),
        Some(Fault::Stall(MAX_STALL)),
        "stalls are bounded"
    );

    f.clear(&d);
    assert_eq!(
        drain(f.blob("lab/a", &d, None).await.unwrap())
            .await
            .unwrap(),
        blob
    );
    assert_eq!(mem.blob_requests(&d), 9);
}
