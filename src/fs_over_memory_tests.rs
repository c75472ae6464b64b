//! The seam under the content layer, end to end without a mount or a
//! network: an [`Fs`] over a [`MemoryRegistry`] serving a gzip image built
//! from a real tar, read through `lookup` / `open` / `read`; and one `Fs`
//! over two of them behind a [`RegistryRouter`].

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cache::{Section, Store};
use crate::content::Content;
use crate::digest::Digest;
use crate::error::Error;
use crate::fs::{Fs, FsConfig, ROOT_INO};
use crate::layer::testutil::TarW;
use crate::layer::Limits;
use crate::reference::Registry;
use crate::registry::{
    Fault, FaultyRegistry, LayerBlob, MemoryRegistry, RegistryApi, RegistryRouter,
};

const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A gzip layer of `files`, with its blob digest.
fn gzip_layer(files: &[(&[u8], &[u8])]) -> (LayerBlob, Digest) {
    let mut w = TarW::new();
    w.dir(b"etc", 0o755);
    for (name, data) in files {
        w.file(name, data);
    }
    let tar = w.finish();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&tar).unwrap();
    let blob = e.finish().unwrap();
    let digest = Digest::sha256_of(&blob);
    let layer = LayerBlob {
        media_type: GZIP_LAYER.into(),
        bytes: blob.into(),
        diff_id: Digest::sha256_of(&tar),
        annotations: Default::default(),
    };
    (layer, digest)
}

fn fs_over(registry: Arc<dyn RegistryApi>, store: Arc<Store>) -> Fs {
    fs_of(Content::new(registry, store, 1_000_000, Limits::default()))
}

/// A filesystem with published indexes and chunk lists on (checked when the test says).
fn fs_published(registry: Arc<dyn RegistryApi>, store: Arc<Store>) -> Fs {
    let mut content = Content::new(registry, store, 1_000_000, Limits::default());
    content.set_use_published_indexes(true, Duration::from_secs(3600));
    fs_of(content)
}

fn fs_of(content: Content) -> Fs {
    Fs::new(
        content,
        FsConfig {
            platform: "linux/amd64".parse().unwrap(),
            tag_ttl: Duration::from_secs(60),
            mount_time: SystemTime::UNIX_EPOCH,
        },
    )
}

/// Walk `path` (components) from the root, following the tag symlink.
async fn walk(fs: &Fs, path: &[&str]) -> crate::error::Result<u64> {
    let mut ino = ROOT_INO;
    for (i, name) in path.iter().enumerate() {
        let attr = fs.lookup(ino, name.as_bytes()).await?;
        if attr.kind == crate::fs::FileKind::Symlink {
            // `demo:1.0` → `demo@sha256:…`, a sibling of the tag link.
            let target = fs.readlink(attr.ino).await?;
            assert!(target.starts_with(b"demo@sha256:"), "{target:?}");
            let parent = walk_boxed(fs, &path[..i]).await?;
            ino = fs.lookup(parent, &target).await?.ino;
        } else {
            ino = attr.ino;
        }
    }
    Ok(ino)
}

fn walk_boxed<'a>(
    fs: &'a Fs,
    path: &'a [&'a str],
) -> futures_util::future::BoxFuture<'a, crate::error::Result<u64>> {
    Box::pin(walk(fs, path))
}

async fn read_all(fs: &Fs, ino: u64) -> crate::error::Result<Vec<u8>> {
    let fh = fs.open(ino).await?;
    let mut out = Vec::new();
    loop {
        let got = fs.read(fh, out.len() as u64, 64 << 10).await;
        match got {
            Ok(b) if b.is_empty() => break,
            Ok(b) => out.extend(b),
            Err(e) => {
                fs.release(fh);
                return Err(e);
            }
        }
    }
    fs.release(fh);
    Ok(out)
}

#[tokio::test]
async fn an_fs_over_the_memory_registry_reads_a_gzip_rootfs_once() {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let (layer, blob) = gzip_layer(&[(b"etc/hostname", b"regfs\n"), (b"etc/big", &big)]);
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    reg.add_image("lab/demo", "1.0", &[layer]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = fs_over(reg.clone(), store);

    let path = ["lab", "demo:1.0", "rootfs", "etc", "hostname"];
    let ino = walk(&fs, &path).await.unwrap();
    assert_eq!(read_all(&fs, ino).await.unwrap(), b"regfs\n");
    let big_ino = walk(&fs, &["lab", "demo:1.0", "rootfs", "etc", "big"])
        .await
        .unwrap();
    assert_eq!(read_all(&fs, big_ino).await.unwrap(), big);
    // A read in the middle, at an odd offset.
    let fh = fs.open(big_ino).await.unwrap();
    assert_eq!(
        fs.read(fh, 123_457, 1000).await.unwrap(),
        &big[123_457..124_457]
    );
    // Fetched once: both files came from one verified stream of the layer.
    assert_eq!(reg.blob_requests(&blob), 1);
    assert!(matches!(
        fs.lookup(ROOT_INO, b"nope")
            .await
            .and(walk(&fs, &["lab", "demo:2.0"]).await.map(|_| ())),
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn a_corrupt_layer_is_refused_and_nothing_of_it_is_kept() {
    let (layer, blob) = gzip_layer(&[(b"etc/hostname", b"regfs\n")]);
    let diff_id = layer.diff_id.clone();
    let mem = Arc::new(MemoryRegistry::new("memory.test"));
    mem.add_image("lab/demo", "1.0", &[layer]);
    let faulty = Arc::new(FaultyRegistry::new(mem.clone()));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = fs_over(faulty.clone(), store.clone());

    faulty.inject(&blob, Fault::FlipByte(40));
    let path = ["lab", "demo:1.0", "rootfs", "etc", "hostname"];
    let e = walk(&fs, &path).await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
    assert!(
        store.get(Section::Layer, &diff_id).is_none(),
        "nothing unverified is kept"
    );

    faulty.inject(&blob, Fault::Status(503));
    assert!(walk(&fs, &path).await.is_err());

    faulty.clear(&blob);
    let ino = walk(&fs, &path).await.unwrap();
    assert_eq!(read_all(&fs, ino).await.unwrap(), b"regfs\n");
    assert!(store.get(Section::Layer, &diff_id).is_some());
}

/// Names of a root directory listing.
async fn names(fs: &Fs, ino: u64) -> Vec<String> {
    let page = fs.readdir_page(ino, 0, 1 << 20, false).await.unwrap();
    page.into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .filter(|n| n != "." && n != "..")
        .collect()
}

#[tokio::test]
async fn one_fs_serves_many_registries_by_their_names() {
    let (one, _) = gzip_layer(&[(b"etc/hostname", b"from a\n")]);
    let (two, _) = gzip_layer(&[(b"etc/hostname", b"from b\n")]);
    let a = Arc::new(MemoryRegistry::new("a.test"));
    let b = Arc::new(MemoryRegistry::new("localhost:5001"));
    a.add_image("lab/demo", "1.0", &[one]);
    b.add_image("lab/demo", "1.0", &[two]);
    let (a2, b2) = (a.clone(), b.clone());
    let router = RegistryRouter::new(Box::new(move |r: &Registry| {
        Ok(match r.name.as_str() {
            "a.test" => a2.clone() as Arc<dyn RegistryApi>,
            "localhost:5001" => b2.clone() as Arc<dyn RegistryApi>,
            other => return Err(Error::NotFound(other.to_string())),
        })
    }));
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = fs_over(Arc::new(router), store);

    // Nothing is listed before a registry is used; names that are not
    // registries are absent, without asking anyone.
    assert!(names(&fs, ROOT_INO).await.is_empty());
    for absent in ["lab", "demo:1.0", ".Trash"] {
        let e = fs.lookup(ROOT_INO, absent.as_bytes()).await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{absent}: {e:?}");
    }
    // The same path in two registries gives each registry's bytes.
    for (host, want) in [("a.test", "from a\n"), ("localhost:5001", "from b\n")] {
        let path = [host, "lab", "demo:1.0", "rootfs", "etc", "hostname"];
        let ino = walk(&fs, &path).await.unwrap();
        assert_eq!(read_all(&fs, ino).await.unwrap(), want.as_bytes());
        let host_ino = fs.lookup(ROOT_INO, host.as_bytes()).await.unwrap().ino;
        assert_eq!(names(&fs, host_ino).await, vec!["lab"]);
    }
    assert_eq!(names(&fs, ROOT_INO).await, vec!["a.test", "localhost:5001"]);
    // A registry that cannot be opened: its directory exists (like a name
    // under a registry without a catalog), no image under it does.
    assert!(walk(&fs, &["other.test", "lab", "demo:1.0"]).await.is_err());
    assert!(
        names(&fs, ROOT_INO).await.len() == 2,
        "a failed open is not listed"
    );
}

/// Push an ORAS-style artifact referring to `subject` into `reg` and list it
/// under the subject's fallback tag (the memory registry has no referrers
/// API); returns the artifact's digest.
fn push_artifact(
    reg: &MemoryRegistry,
    repo: &str,
    artifact_type: &str,
    files: &[(&str, &[u8])],
    subject: (&Digest, usize),
) -> Digest {
    let typed: Vec<(&str, &str, &[u8])> = files
        .iter()
        .map(|(t, d)| (*t, "application/octet-stream", *d))
        .collect();
    push_typed_artifact(reg, repo, artifact_type, &typed, subject)
}

/// [`push_artifact`] with each file's media type: (title, media type, bytes).
fn push_typed_artifact(
    reg: &MemoryRegistry,
    repo: &str,
    artifact_type: &str,
    files: &[(&str, &str, &[u8])],
    subject: (&Digest, usize),
) -> Digest {
    let config = reg.add_blob(repo, &b"{}"[..]);
    let layers: Vec<serde_json::Value> = files
        .iter()
        .map(|(title, media_type, data)| {
            let d = reg.add_blob(repo, data.to_vec());
            serde_json::json!({"mediaType": media_type, "digest": d.to_string(),
                "size": data.len(), "annotations": {"org.opencontainers.image.title": title}})
        })
        .collect();
    let m = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.to_string(), "size": 2},
        "layers": layers,
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": subject.0.to_string(), "size": subject.1},
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let digest = reg.add_manifest(
        repo,
        None,
        "application/vnd.oci.image.manifest.v1+json",
        bytes::Bytes::from(bytes.clone()),
    );
    let tag = crate::content::fallback_tag(subject.0);
    let mut index = match futures_util::FutureExt::now_or_never(
        reg.manifest(repo, &crate::reference::Selector::Tag(tag.clone())),
    ) {
        Some(Ok(m)) => serde_json::from_slice(&m.bytes).unwrap(),
        _ => {
            serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []})
        }
    };
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": digest.to_string(), "size": bytes.len(), "artifactType": artifact_type}));
    reg.add_manifest(
        repo,
        Some(&tag),
        "application/vnd.oci.image.index.v1+json",
        bytes::Bytes::from(serde_json::to_vec(&index).unwrap()),
    );
    digest
}

#[tokio::test]
async fn artifacts_show_their_files_and_images_their_referrers() {
    let (layer, _) = gzip_layer(&[(b"etc/hostname", b"regfs\n")]);
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let image = reg.add_image("lab/demo", "1.0", &[layer]);
    let image_size = futures_util::FutureExt::now_or_never(reg.manifest(
        "lab/demo",
        &crate::reference::Selector::Digest(image.clone()),
    ))
    .unwrap()
    .unwrap()
    .bytes
    .len();
    let sbom = push_artifact(
        &reg,
        "lab/demo",
        "application/spdx+json",
        &[("sbom.spdx.json", b"{\"spdxVersion\":\"SPDX-2.3\"}")],
        (&image, image_size),
    );
    let sig = push_artifact(
        &reg,
        "lab/demo",
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        &[("signature", b"sig"), ("signature", b"sig2")],
        (&image, image_size),
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = fs_over(reg.clone(), store);

    let img = walk(&fs, &["lab", "demo:1.0"]).await.unwrap();
    assert_eq!(
        names(&fs, img).await,
        vec![
            "manifest.json",
            "config.json",
            "blobs",
            "layers",
            "rootfs",
            "referrers"
        ]
    );
    let refs = fs.lookup(img, b"referrers").await.unwrap().ino;
    assert_eq!(names(&fs, refs).await, vec!["application"]);
    let app = fs.lookup(refs, b"application").await.unwrap().ino;
    assert_eq!(
        names(&fs, app).await,
        vec!["spdx+json", "vnd.dev.cosign.artifact.sig.v1+json"]
    );
    let spdx = fs.lookup(app, b"spdx+json").await.unwrap().ino;
    assert_eq!(names(&fs, spdx).await, vec![sbom.to_string()]);
    let link = fs
        .lookup(spdx, sbom.to_string().as_bytes())
        .await
        .unwrap()
        .ino;
    assert_eq!(
        fs.readlink(link).await.unwrap(),
        format!("../../../../demo@{sbom}").into_bytes()
    );

    // The artifact's directory: files by title, bytes verified.
    let ns = walk(&fs, &["lab"]).await.unwrap();
    let art = fs
        .lookup(ns, format!("demo@{sig}").as_bytes())
        .await
        .unwrap()
        .ino;
    assert_eq!(
        names(&fs, art).await,
        vec![
            "manifest.json",
            "config.json",
            "blobs",
            "files",
            "referrers"
        ]
    );
    assert!(fs.lookup(art, b"rootfs").await.is_err());
    let files = fs.lookup(art, b"files").await.unwrap().ino;
    assert_eq!(names(&fs, files).await, vec!["signature", "signature-2"]);
    let f = fs.lookup(files, b"signature-2").await.unwrap();
    assert_eq!(f.size, 4);
    assert_eq!(read_all(&fs, f.ino).await.unwrap(), b"sig2");
    // Its digest, from the descriptor.
    assert_eq!(
        fs.getxattr(f.ino, crate::fs::DIGEST_XATTR).await.unwrap(),
        Digest::sha256_of(b"sig2").to_string().into_bytes()
    );
    // Nothing refers to the signature.
    let none = fs.lookup(art, b"referrers").await.unwrap().ino;
    assert!(names(&fs, none).await.is_empty());
}

/// The next server of a mount (a new `Fs` over the same state directory,
/// see `crate::handover`) answers the numbers the kernel holds: the same
/// inode for the same path, a file handle of the earlier server once the
/// file is opened again under it, handles of its own that cannot collide,
/// and the layers container runtimes still use.
#[tokio::test]
async fn a_restarted_server_keeps_inodes_handles_and_layer_uses() {
    let (layer, blob) = gzip_layer(&[(b"etc/hostname", b"regfs\n")]);
    let diff_id = layer.diff_id.clone();
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    reg.add_image("lab/demo", "1.0", &[layer]);
    let (dir, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let path = ["lab", "demo:1.0", "rootfs", "etc", "hostname"];
    let desc = crate::image::BlobRef {
        media_type: GZIP_LAYER.into(),
        digest: blob.clone(),
        size: 1,
        urls: vec![],
        annotations: Default::default(),
    };
    let (ino, fh) = {
        let fs = fs_over(reg.clone(), store.clone())
            .with_restart_state(state.path(), 0)
            .unwrap();
        let ino = walk(&fs, &path).await.unwrap();
        fs.use_layer("lab/demo", &desc, &diff_id);
        fs.use_layer("lab/demo", &desc, &diff_id);
        assert!(fs.release_layer("lab/demo", &blob));
        (ino, fs.open(ino).await.unwrap())
    };
    for generation in 1..3 {
        let fs = fs_over(reg.clone(), store.clone())
            .with_restart_state(state.path(), generation)
            .unwrap();
        let e = fs.read(fh, 0, 100).await.unwrap_err();
        assert_eq!(e.errno(), libc::EBADF, "not open in this server yet");
        fs.reopen(ino, fh).await.unwrap();
        assert_eq!(fs.read(fh, 0, 100).await.unwrap(), b"regfs\n");
        assert_eq!(walk(&fs, &path).await.unwrap(), ino, "the same number");
        let own = fs.open(ino).await.unwrap();
        assert_eq!(own >> 40, generation, "{own:#x}");
        let used = fs.layers_in_use();
        assert_eq!(used.len(), 1, "{used:?}");
        assert_eq!(used[0].users, 1);
    }
}

/// `user.regfs.digest` of the file at `path`, or the errno.
async fn digest_xattr(fs: &Fs, path: &[&str]) -> Result<String, i32> {
    let ino = walk(fs, path).await.map_err(|e| e.errno())?;
    fs.getxattr(ino, crate::fs::DIGEST_XATTR)
        .await
        .map(|v| String::from_utf8(v).unwrap())
        .map_err(|e| e.errno())
}

/// Whether `listxattr` of the file at `path` names `user.regfs.digest`.
async fn digest_listed(fs: &Fs, path: &[&str]) -> bool {
    let ino = walk(fs, path).await.unwrap();
    let names = fs.listxattr(ino).await.unwrap();
    names.iter().any(|n| n == crate::fs::DIGEST_XATTR)
}

#[tokio::test]
async fn digests_are_shown_where_known_without_reading() {
    let mut w = TarW::new();
    w.dir(b"etc", 0o755);
    w.file(b"etc/hostname", b"regfs\n");
    let tar = w.finish();
    let esgz = LayerBlob::estargz(&tar);
    let esgz_blob = Digest::sha256_of(&esgz.bytes);
    let (gz, _) = gzip_layer(&[(b"etc/hostname", b"regfs\n")]);
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    reg.add_image("lab/demo", "esgz", &[esgz]);
    reg.add_image("lab/demo", "gz", &[gz]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    let fs = fs_over(reg.clone(), store);

    let want = Digest::sha256_of(b"regfs\n").to_string();
    let rootfs = ["lab", "demo:esgz", "rootfs", "etc", "hostname"];
    assert_eq!(digest_xattr(&fs, &rootfs).await, Ok(want.clone()));
    assert!(
        !digest_listed(&fs, &rootfs).await,
        "not listed in trees: cp -a and overlayfs would copy it"
    );
    // Known without a byte of the file: only the footer and TOC were read.
    assert!(reg.blob_requests(&esgz_blob) <= 2, "footer + TOC only");
    let layer = format!("1-{esgz_blob}");
    let in_layer = ["lab", "demo:esgz", "layers", &layer, "etc", "hostname"];
    assert_eq!(digest_xattr(&fs, &in_layer).await, Ok(want.clone()));
    assert!(!digest_listed(&fs, &in_layer).await);
    // A directory, and a file of a plain gzip layer: unknown.
    let etc = ["lab", "demo:esgz", "rootfs", "etc"];
    assert_eq!(digest_xattr(&fs, &etc).await, Err(libc::ENODATA));
    let gz_file = ["lab", "demo:gz", "rootfs", "etc", "hostname"];
    assert_eq!(digest_xattr(&fs, &gz_file).await, Err(libc::ENODATA));
    assert!(!digest_listed(&fs, &gz_file).await);
    // Blobs: their descriptor digest.
    let blob_name = esgz_blob.to_string();
    let blob = ["lab", "demo:esgz", "blobs", &blob_name];
    assert_eq!(digest_xattr(&fs, &blob).await, Ok(blob_name.clone()));
    assert!(digest_listed(&fs, &blob).await);
}

/// Read `len` bytes at `offset` of the file at `ino`.
async fn read_at(fs: &Fs, ino: u64, offset: u64, len: u32) -> crate::error::Result<Vec<u8>> {
    let fh = fs.open(ino).await?;
    let r = fs.read(fh, offset, len).await;
    fs.release(fh);
    r
}

#[tokio::test]
async fn large_blobs_are_read_by_published_chunk_lists_and_checked() {
    use crate::content::CHUNK_SIZE;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let big: Vec<u8> = (0..5 * CHUNK_SIZE + 123)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (layer, _) = gzip_layer(&[(b"etc/hostname", b"regfs\n")]);
    let reg = Arc::new(MemoryRegistry::new("memory.test"));
    let image = reg.add_image("lab/demo", "1.0", &[layer]);
    let art = push_artifact(
        &reg,
        "lab/demo",
        "application/x.big",
        &[("big.bin", &big)],
        (&image, 100),
    );
    let blob = Digest::sha256_of(&big);
    let path = format!("demo@{art}");
    let file = ["lab", &path, "files", "big.bin"];

    // Machine A streams the blob whole once, then publishes its chunk list.
    let dir_a = tempfile::tempdir().unwrap();
    let a = fs_over(
        reg.clone(),
        Arc::new(Store::open(dir_a.path(), 1 << 30).unwrap()),
    );
    assert_eq!(
        read_all(&a, walk(&a, &file).await.unwrap()).await.unwrap(),
        big
    );
    let p = a
        .content()
        .publish_chunk_lists("lab/demo", &art)
        .await
        .unwrap();
    assert_eq!((p.layers, p.missing), (1, 0));

    // Machine B: a fresh cache, published lists on.
    let faulty = Arc::new(FaultyRegistry::new(reg.clone()));
    let dir_b = tempfile::tempdir().unwrap();
    let store_b = Arc::new(Store::open(dir_b.path(), 1 << 30).unwrap());
    let b = fs_published(faulty.clone(), store_b.clone());
    let ino = walk(&b, &file).await.unwrap();
    let before = reg.stats().bytes_received;
    let at = 2 * CHUNK_SIZE;
    let got = read_at(&b, ino, at, CHUNK_SIZE as u32).await.unwrap();
    assert_eq!(got, &big[at as usize..(at + CHUNK_SIZE) as usize]);
    let fetched = reg.stats().bytes_received - before;
    assert!(
        fetched <= CHUNK_SIZE + (64 << 10),
        "{fetched} bytes for a 1 MiB read (one chunk, the list, manifests)"
    );
    assert!(
        store_b.get(Section::Blob, &blob).is_none(),
        "not fetched whole"
    );

    // A flipped byte in chunk 4: EIO for reads it covers, bytes elsewhere.
    faulty.inject(&blob, crate::registry::Fault::FlipByte(4 * CHUNK_SIZE + 10));
    let e = read_at(&b, ino, 4 * CHUNK_SIZE, 100).await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
    let ok = read_at(&b, ino, CHUNK_SIZE / 2, 1000).await.unwrap();
    assert_eq!(
        ok,
        &big[(CHUNK_SIZE / 2) as usize..(CHUNK_SIZE / 2 + 1000) as usize]
    );

    // The check streams the blob whole; it does not match: the list is
    // revoked, and nothing is served through it any more.
    let (checked, revoked) = b.content().check_published().await;
    assert_eq!((checked, revoked), (1, 1));
    let e = read_at(&b, ino, CHUNK_SIZE / 2, 1000).await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");

    // With the registry honest again, the check of a fresh machine passes.
    faulty.clear(&blob);
    let dir_c = tempfile::tempdir().unwrap();
    let c = fs_published(
        faulty.clone(),
        Arc::new(Store::open(dir_c.path(), 1 << 30).unwrap()),
    );
    let ino = walk(&c, &file).await.unwrap();
    assert_eq!(read_at(&c, ino, 0, 10).await.unwrap(), &big[..10]);
    assert_eq!(c.content().check_published().await, (1, 0));
}

#[tokio::test]
async fn tar_layers_of_artifacts_are_browsable_unpacked_and_verified() {
    let mut w = TarW::new();
    w.dir(b"chart", 0o755)
        .file(b"chart/Chart.yaml", b"name: chart\nversion: 0.1.0\n")
        .dir(b"chart/templates", 0o755)
        .file(b"chart/templates/svc.yaml", b"kind: Service\n");
    let tar = w.finish();
    let tgz = LayerBlob::gzip(&tar).bytes.to_vec();
    let zst = zstd::encode_all(&tar[..], 3).unwrap();
    let (layer, _) = gzip_layer(&[(b"etc/hostname", b"regfs\n")]);
    let mem = Arc::new(MemoryRegistry::new("memory.test"));
    let image = mem.add_image("lab/demo", "1.0", &[layer]);
    let art = push_typed_artifact(
        &mem,
        "lab/demo",
        "application/vnd.cncf.helm.config.v1+json",
        &[
            (
                "chart-0.1.0.tgz",
                "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
                &tgz,
            ),
            (
                "data.tar.zst",
                "application/vnd.example.data.tar+zstd",
                &zst,
            ),
            ("plain.tar", "application/x-tar", &tar),
            ("README", "text/plain", b"hi\n"),
        ],
        (&image, 100),
    );
    let faulty = Arc::new(FaultyRegistry::new(mem.clone()));
    let dir = tempfile::tempdir().unwrap();
    let fs = fs_over(
        faulty.clone(),
        Arc::new(Store::open(dir.path(), 1 << 30).unwrap()),
    );
    let dir_name = format!("demo@{art}");
    let a = walk(&fs, &["lab", &dir_name]).await.unwrap();
    assert!(names(&fs, a).await.contains(&"unpacked".to_string()));
    let unpacked = fs.lookup(a, b"unpacked").await.unwrap().ino;
    assert_eq!(
        names(&fs, unpacked).await,
        ["chart-0.1.0.tgz", "data.tar.zst", "plain.tar"],
        "tars only, named as in files/"
    );
    for top in ["chart-0.1.0.tgz", "data.tar.zst", "plain.tar"] {
        let path = [
            "lab",
            &dir_name,
            "unpacked",
            top,
            "chart",
            "templates",
            "svc.yaml",
        ];
        let ino = walk(&fs, &path).await.unwrap();
        assert_eq!(
            read_all(&fs, ino).await.unwrap(),
            b"kind: Service\n",
            "{top}"
        );
    }
    // files/ still has the raw blob.
    let raw = walk(&fs, &["lab", &dir_name, "files", "chart-0.1.0.tgz"])
        .await
        .unwrap();
    assert_eq!(read_all(&fs, raw).await.unwrap(), tgz);
    // A flipped byte: the tar is refused, nothing of it is served.
    let dir2 = tempfile::tempdir().unwrap();
    let fs2 = fs_over(
        faulty.clone(),
        Arc::new(Store::open(dir2.path(), 1 << 30).unwrap()),
    );
    faulty.inject(
        &Digest::sha256_of(&zst),
        crate::registry::Fault::FlipByte(20),
    );
    let path = [
        "lab",
        &dir_name,
        "unpacked",
        "data.tar.zst",
        "chart",
        "Chart.yaml",
    ];
    let e = walk(&fs2, &path).await.unwrap_err();
    assert_eq!(e.errno(), libc::EIO, "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_catalog_answers_for_the_names_it_lists_and_is_refreshed_behind() {
    let mem = Arc::new(MemoryRegistry::new("memory.test"));
    mem.add_blob("lab/demo", b"demo".to_vec());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), 1 << 30).unwrap());
    // A TTL of zero: every cached catalog is stale.
    let fs = Fs::new(
        Content::new(mem.clone(), store, 1_000_000, Limits::default()),
        FsConfig {
            platform: "linux/amd64".parse().unwrap(),
            tag_ttl: Duration::ZERO,
            mount_time: SystemTime::UNIX_EPOCH,
        },
    );
    let requests = || mem.stats().requests;
    fs.warm_catalog().await;
    assert_eq!(requests(), 1);
    // Listed: answered from the stale catalog, fetched again behind the answer.
    fs.lookup(ROOT_INO, b"lab").await.unwrap();
    for _ in 0..100 {
        if requests() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(requests(), 2);
    // Not listed: checked against a fresh catalog, so a new namespace shows…
    mem.add_blob("team/app", b"app".to_vec());
    fs.lookup(ROOT_INO, b"team").await.unwrap();
    // … and a missing one is ENOENT.
    let e = fs.lookup(ROOT_INO, b"nope").await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e:?}");
}
