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
    Fs::new(
        Content::new(registry, store, 1_000_000, Limits::default()),
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
