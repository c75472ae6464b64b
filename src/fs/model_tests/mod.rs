//! A reference-model property test of the read-only filesystem core, driven
//! without a mount: random images (layer stacks with whiteouts, opaque
//! directories, hard links and symlinks) in an in-process registry (the
//! layers served gzip, zstd, uncompressed, eStargz and zstd:chunked with
//! holes), and
//! random operations as the kernel would send them (lookup, getattr, paged
//! readdirplus, open + read, readlink, xattrs, forget), with tag moves, a
//! cache small enough to evict, and injected faults.
//!
//! Invariants checked after every operation:
//! - what is found is what the model says is there (kind, mode, owner,
//!   size, link count, symlink target, every byte of every read), or EIO
//!   while a fault is injected — never other bytes;
//! - a paged listing equals the model's at every page size;
//! - an inode number stays the same while the kernel holds it, and is never
//!   handed out for another entry;
//! - the inode table holds no more than what the kernel holds plus
//!   [`UNREFERENCED_BOUND`];
//! - once the kernel forgets everything, only the root is left.

mod model;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use proptest::prelude::*;

use model::{Layer, MKind, Model};

use super::{Attr, FileKind, Fs, FsConfig, ROOT_INO};
use crate::cache::Store;
use crate::content::Content;
use crate::digest::Digest;
use crate::error::Error;
use crate::image::Platform;
use crate::layer::Limits;
use crate::registry::faults::{Fault, FaultyRegistry};
use crate::registry::memory::{LayerBlob, MemoryRegistry};

/// Inodes the table may keep beyond those the kernel holds (listed but not
/// looked up): the table is built with this bound, small enough that the
/// operations exceed it.
const UNREFERENCED_BOUND: usize = 8;

/// One image of the world: its layers and where it is.
struct Image {
    repo: String,
    model: Model,
    manifest: Digest,
    layer_digests: Vec<Digest>,
}

/// What the kernel does next.
#[derive(Clone, Debug)]
enum Op {
    /// Look a path up, component by component from the root.
    Lookup { image: usize, path: usize },
    /// List a directory with readdirplus in pages of `page` bytes.
    List {
        image: usize,
        dir: usize,
        page: usize,
    },
    /// Open a file, read `len` bytes at `offset`, release it.
    Read {
        image: usize,
        path: usize,
        offset: usize,
        len: usize,
    },
    /// List and ask for extended attributes (the model's layers carry none;
    /// the merged tree shows no overlay markers).
    Xattr { image: usize, path: usize },
    /// Drop `n` references of the `pick`th inode held.
    Forget { pick: usize, n: u64 },
    /// Point the tag of image `image` at image `to`'s manifest.
    MoveTag { image: usize, to: usize },
    /// Serve layer `layer` of image `image` with a flipped byte.
    Corrupt { image: usize, layer: usize },
    /// Serve every blob faithfully again.
    Heal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, any::<usize>()).prop_map(|(image, path)| Op::Lookup { image, path }),
        3 => (0..3usize, any::<usize>(), prop_oneof![Just(200usize), Just(480), Just(4096)])
            .prop_map(|(image, dir, page)| Op::List { image, dir, page }),
        3 => (0..3usize, any::<usize>(), 0..80_000usize, 1..70_000usize)
            .prop_map(|(image, path, offset, len)| Op::Read { image, path, offset, len }),
        1 => (0..3usize, any::<usize>()).prop_map(|(image, path)| Op::Xattr { image, path }),
        3 => (any::<usize>(), 1..3u64).prop_map(|(pick, n)| Op::Forget { pick, n }),
        1 => (0..3usize, 0..3usize).prop_map(|(image, to)| Op::MoveTag { image, to }),
        1 => (0..3usize, 0..3usize).prop_map(|(image, layer)| Op::Corrupt { image, layer }),
        1 => Just(Op::Heal),
    ]
}

/// What an inode number was handed out for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Identity {
    /// A fixed name outside the images (root, namespace, image directory…).
    Path(String),
    /// A node of image `0`'s rootfs: a path, or for files the hard-link group.
    Node(Digest, String),
}

/// The kernel's side: the references it holds and every number it was given.
#[derive(Default)]
struct Kernel {
    /// ino → references held.
    held: HashMap<u64, u64>,
    /// ino → what it was first handed out for (never forgotten).
    seen: HashMap<u64, Identity>,
    /// Identity → ino, while held.
    current: HashMap<Identity, u64>,
}

impl Kernel {
    /// The kernel was given `ino` for `id`, with a reference (`refs` = 1) or
    /// without one (plain listing, `refs` = 0).
    fn given(&mut self, ino: u64, id: Identity, refs: u64) -> Result<(), TestCaseError> {
        if let Some(old) = self.seen.get(&ino) {
            prop_assert_eq!(old, &id, "inode {} reused for another entry", ino);
        }
        self.seen.insert(ino, id.clone());
        if let Some(&cur) = self.current.get(&id) {
            if self.held.get(&cur).copied().unwrap_or(0) > 0 {
                prop_assert_eq!(cur, ino, "{:?} changed inode while the kernel held it", id);
            }
        }
        if refs > 0 {
            *self.held.entry(ino).or_default() += refs;
            self.current.insert(id, ino);
        }
        Ok(())
    }

    fn forget(&mut self, fs: &Fs, ino: u64, n: u64) {
        let h = self.held.get_mut(&ino).expect("held");
        let n = n.min(*h);
        *h -= n;
        if *h == 0 {
            self.held.remove(&ino);
            self.current.retain(|_, v| *v != ino);
        }
        fs.forget(ino, n);
    }

    fn held_count(&self) -> usize {
        self.held.len()
    }
}

/// The world: a registry with three images and a filesystem over it.
struct World {
    registry: Arc<FaultyRegistry>,
    images: Vec<Image>,
    /// Blobs served corrupt now.
    corrupt: Vec<Digest>,
    fs: Fs,
    _cache: tempfile::TempDir,
}

fn gzip(tar: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(tar).unwrap();
    e.finish().unwrap()
}

fn world(stacks: &[Vec<Layer>], small_cache: bool) -> World {
    let reg = Arc::new(MemoryRegistry::new("model.test"));
    let mut images = Vec::new();
    for (i, layers) in stacks.iter().enumerate() {
        // One repository, a tag per image (`t0`, `t1`, …): tags can move
        // between them.
        let repo = "lab/img".to_string();
        let blobs: Vec<LayerBlob> = layers
            .iter()
            .enumerate()
            .map(|(n, l)| {
                let tar = model::tar(l);
                // Each format the registry serves, by turns: whole layers
                // (gzip, zstd, uncompressed) and lazy ones (eStargz,
                // zstd:chunked with holes), whose diff_id is that of what
                // they decompress to.
                const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
                const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
                let (media_type, bytes, annotations, diff_id) = match (i + n) % 5 {
                    0 => (
                        GZIP,
                        gzip(&tar),
                        Default::default(),
                        Digest::sha256_of(&tar),
                    ),
                    1 => (
                        ZSTD,
                        zstd::encode_all(&tar[..], 1).unwrap(),
                        Default::default(),
                        Digest::sha256_of(&tar),
                    ),
                    2 => (
                        "application/vnd.oci.image.layer.v1.tar",
                        tar.clone(),
                        Default::default(),
                        Digest::sha256_of(&tar),
                    ),
                    3 => {
                        let lazy = crate::estargz::testutil::estargz(&tar);
                        let mut plain = Vec::new();
                        std::io::Read::read_to_end(
                            &mut flate2::read::MultiGzDecoder::new(&lazy.blob[..]),
                            &mut plain,
                        )
                        .unwrap();
                        (GZIP, lazy.blob, lazy.annotations, Digest::sha256_of(&plain))
                    }
                    _ => {
                        let lazy = crate::estargz::testutil::zstd_chunked(&tar, 4096);
                        let plain = zstd::decode_all(&lazy.blob[..]).unwrap();
                        (ZSTD, lazy.blob, lazy.annotations, Digest::sha256_of(&plain))
                    }
                };
                LayerBlob {
                    media_type: media_type.into(),
                    diff_id,
                    bytes: Bytes::from(bytes),
                    annotations,
                }
            })
            .collect();
        let layer_digests = blobs.iter().map(|b| Digest::sha256_of(&b.bytes)).collect();
        let manifest = reg.add_image(&repo, &format!("t{i}"), &blobs);
        images.push(Image {
            repo,
            model: Model::merge(layers),
            manifest,
            layer_digests,
        });
    }
    let registry = Arc::new(FaultyRegistry::new(reg));
    let cache = tempfile::tempdir().unwrap();
    let limit = if small_cache { 64 << 10 } else { 1 << 30 };
    let store = Arc::new(Store::open(cache.path(), limit).unwrap());
    let content = Content::new(registry.clone(), store, 4_000_000, Limits::default());
    let mut fs = Fs::new(
        content,
        FsConfig {
            platform: Platform::host(),
            tag_ttl: Duration::ZERO,
            mount_time: SystemTime::UNIX_EPOCH,
        },
    );
    fs.inodes = super::InodeTable::with_idle_max(UNREFERENCED_BOUND);
    World {
        registry,
        images,
        corrupt: Vec::new(),
        fs,
        _cache: cache,
    }
}

/// Every path of the generator's universe (existing or not), for picking.
fn universe() -> Vec<String> {
    let mut out = vec![String::new()];
    for p in ["", "a", "a/b", "c"] {
        for n in ["a", "b", "c", "f", "g"] {
            out.push(if p.is_empty() {
                n.into()
            } else {
                format!("{p}/{n}")
            });
        }
    }
    out
}

/// A readdirplus entry's inode number and its attributes' must agree.
fn same_inode(attr: u64, entry: u64) -> Result<(), Error> {
    if attr == entry {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "entry inode {entry} but attribute inode {attr}"
        )))
    }
}

impl World {
    /// An operation on image `i` may fail with EIO only while one of its
    /// blobs is served corrupt.
    fn may_fail(&self, i: usize) -> bool {
        self.images[i]
            .layer_digests
            .iter()
            .any(|d| self.corrupt.contains(d))
    }

    /// Look up `name` in `parent`, as the kernel does: the kernel holds the
    /// answer.
    async fn lookup(
        &self,
        k: &mut Kernel,
        parent: u64,
        name: &str,
        id: Identity,
    ) -> Result<Option<Attr>, Error> {
        match self.fs.lookup(parent, name.as_bytes()).await {
            Ok(a) => {
                k.given(a.ino, id, 1)
                    .map_err(|e| Error::invalid(e.to_string()))?;
                Ok(Some(a))
            }
            Err(e) if e.errno() == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Walk to the rootfs of image `i` (by digest): its inode.
    async fn rootfs(&self, k: &mut Kernel, i: usize) -> Result<u64, Error> {
        let img = &self.images[i];
        let (ns, leaf) = img.repo.split_once('/').unwrap();
        let ns_ino = self
            .lookup(k, ROOT_INO, ns, Identity::Path(ns.into()))
            .await?
            .expect("namespace")
            .ino;
        let dir = format!("{leaf}@{}", img.manifest);
        let img_ino = self
            .lookup(
                k,
                ns_ino,
                &dir,
                Identity::Path(format!("{}/{dir}", img.repo)),
            )
            .await?
            .expect("image directory")
            .ino;
        Ok(self
            .lookup(
                k,
                img_ino,
                "rootfs",
                Identity::Path(format!("{}/{dir}/rootfs", img.repo)),
            )
            .await?
            .expect("rootfs")
            .ino)
    }

    fn identity(&self, i: usize, path: &str) -> Identity {
        let img = &self.images[i];
        match img.model.paths.get(path) {
            Some(MKind::File { group, .. }) => {
                Identity::Node(img.manifest.clone(), format!("#{}:{}", group.0, group.1))
            }
            _ => Identity::Node(img.manifest.clone(), path.to_string()),
        }
    }

    /// Walk `path` in image `i`'s rootfs; `None` if the model has no such path
    /// (and the filesystem agreed).
    async fn walk(
        &self,
        k: &mut Kernel,
        i: usize,
        path: &str,
    ) -> Result<Option<Attr>, TestCaseError> {
        let model = &self.images[i].model;
        let res: Result<Option<Attr>, Error> = async {
            let mut ino = self.rootfs(k, i).await?;
            if path.is_empty() {
                return Ok(Some(self.fs.getattr(ino).await?));
            }
            let mut so_far = String::new();
            let mut last = None;
            for comp in path.split('/') {
                if !so_far.is_empty() {
                    so_far.push('/');
                }
                so_far.push_str(comp);
                match self.lookup(k, ino, comp, self.identity(i, &so_far)).await? {
                    Some(a) => {
                        ino = a.ino;
                        last = Some(a);
                    }
                    None => return Ok(None),
                }
            }
            Ok(last)
        }
        .await;
        match res {
            Ok(found) => {
                prop_assert_eq!(
                    found.is_some(),
                    path.is_empty() || model.paths.contains_key(path),
                    "{} in image {}",
                    path,
                    i
                );
                if let Some(a) = &found {
                    if !path.is_empty() {
                        check_attr(model, path, a)?;
                    }
                }
                Ok(found)
            }
            Err(e) => {
                prop_assert!(
                    self.may_fail(i) && e.errno() == libc::EIO,
                    "{} in image {}: {} (errno {})",
                    path,
                    i,
                    e,
                    e.errno()
                );
                Ok(None)
            }
        }
    }
}

fn check_attr(model: &Model, path: &str, a: &Attr) -> Result<(), TestCaseError> {
    let m = model.paths.get(path).expect("checked by the caller");
    match m {
        MKind::Dir { mode, uid } => {
            prop_assert_eq!(a.kind, FileKind::Dir, "{}", path);
            prop_assert_eq!(a.perm as u32, *mode, "mode of {}", path);
            prop_assert_eq!(a.uid, *uid, "owner of {}", path);
        }
        MKind::File { mode, data, .. } => {
            prop_assert_eq!(a.kind, FileKind::File, "{}", path);
            prop_assert_eq!(a.perm as u32, *mode, "mode of {}", path);
            prop_assert_eq!(a.size, data.len() as u64, "size of {}", path);
        }
        MKind::Symlink { target } => {
            prop_assert_eq!(a.kind, FileKind::Symlink, "{}", path);
            prop_assert_eq!(a.perm, 0o777, "mode of symlink {}", path);
            prop_assert_eq!(a.size, target.len() as u64, "size of {}", path);
        }
    }
    prop_assert_eq!(a.nlink, model.nlink(path), "nlink of {}", path);
    Ok(())
}

async fn run(w: &mut World, ops: &[Op]) -> Result<(), TestCaseError> {
    let paths = universe();
    let mut k = Kernel::default();
    for op in ops {
        match op.clone() {
            Op::Lookup { image, path } => {
                let i = image % w.images.len();
                let p = &paths[path % paths.len()];
                if let Some(a) = w.walk(&mut k, i, p).await? {
                    if let Some(MKind::Symlink { target }) = w.images[i].model.paths.get(p.as_str())
                    {
                        let got =
                            w.fs.readlink(a.ino)
                                .await
                                .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(got, target.as_bytes().to_vec(), "target of {}", p);
                    }
                }
            }
            Op::List { image, dir, page } => {
                let i = image % w.images.len();
                let p = &paths[dir % paths.len()];
                let Some(a) = w.walk(&mut k, i, p).await? else {
                    continue;
                };
                if a.kind != FileKind::Dir {
                    continue;
                }
                let listed = match list(w, &mut k, i, p, a.ino, page).await {
                    Ok(l) => l,
                    Err(e) => {
                        prop_assert!(
                            w.may_fail(i) && e.errno() == libc::EIO,
                            "listing {}: {}",
                            p,
                            e
                        );
                        continue;
                    }
                };
                let want: Vec<String> = w.images[i]
                    .model
                    .children(p)
                    .into_iter()
                    .map(|(n, _)| n)
                    .collect();
                let got: Vec<String> = listed.iter().map(|(n, _)| n.clone()).collect();
                prop_assert_eq!(got, want, "listing of {:?} at page size {}", p, page);
                for (name, attr) in &listed {
                    let child = if p.is_empty() {
                        name.clone()
                    } else {
                        format!("{p}/{name}")
                    };
                    check_attr(&w.images[i].model, &child, attr)?;
                }
            }
            Op::Read {
                image,
                path,
                offset,
                len,
            } => {
                let i = image % w.images.len();
                let p = &paths[path % paths.len()];
                let Some(MKind::File { data, .. }) =
                    w.images[i].model.paths.get(p.as_str()).cloned()
                else {
                    continue;
                };
                let Some(a) = w.walk(&mut k, i, p).await? else {
                    continue;
                };
                let got = async {
                    let fh = w.fs.open(a.ino).await?;
                    let r = w.fs.read(fh, offset as u64, len as u32).await;
                    w.fs.release(fh);
                    r
                }
                .await;
                match got {
                    Ok(bytes) => {
                        let start = offset.min(data.len());
                        let end = (offset + len).min(data.len());
                        prop_assert!(
                            bytes[..] == data[start..end],
                            "bytes {}..{} of {}",
                            start,
                            end,
                            p
                        );
                    }
                    Err(e) => {
                        prop_assert!(w.may_fail(i) && e.errno() == libc::EIO, "read {}: {}", p, e)
                    }
                }
            }
            Op::Xattr { image, path } => {
                let i = image % w.images.len();
                let p = &paths[path % paths.len()];
                let Some(a) = w.walk(&mut k, i, p).await? else {
                    continue;
                };
                let names = w.fs.listxattr(a.ino).await;
                // A file of an eStargz / zstd:chunked layer answers its
                // content digest (from the TOC): the model's bytes' digest.
                if let Some(MKind::File { data, .. }) = w.images[i].model.paths.get(p.as_str()) {
                    let got = w.fs.getxattr(a.ino, crate::fs::DIGEST_XATTR).await;
                    let want = crate::digest::Digest::sha256_of(data).to_string();
                    prop_assert!(
                        matches!(&got, Err(e) if e.errno() == libc::ENODATA)
                            || got.as_deref().ok() == Some(want.as_bytes()),
                        "digest of {:?}: {:?}",
                        p,
                        got.map(String::from_utf8)
                    );
                }
                prop_assert!(
                    matches!(&names, Ok(n) if n.is_empty()),
                    "xattrs of {:?}: {:?}",
                    p,
                    names.map(|_| ())
                );
                for (name, want) in [
                    (&b"trusted.overlay.opaque"[..], libc::ENODATA),
                    (b"user.x", libc::ENODATA),
                    (b"security.selinux", libc::EOPNOTSUPP),
                ] {
                    let got = w.fs.getxattr(a.ino, name).await.map_err(|e| e.errno());
                    prop_assert_eq!(
                        got,
                        Err(want),
                        "{} of {:?}",
                        String::from_utf8_lossy(name),
                        p
                    );
                }
            }
            Op::Forget { pick, n } => {
                if k.held.is_empty() {
                    continue;
                }
                let mut inos: Vec<u64> = k.held.keys().copied().collect();
                inos.sort();
                let ino = inos[pick % inos.len()];
                k.forget(&w.fs, ino, n);
            }
            Op::MoveTag { image, to } => {
                let (i, to) = (image % w.images.len(), to % w.images.len());
                let target = w.images[to].manifest.clone();
                w.registry
                    .inner()
                    .set_tag(&w.images[i].repo, &format!("t{i}"), &target);
                // The tag's symlink must now point at the new manifest.
                let (ns, leaf) = w.images[i].repo.split_once('/').unwrap();
                let ns_ino = w
                    .lookup(&mut k, ROOT_INO, ns, Identity::Path(ns.into()))
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .unwrap()
                    .ino;
                let link =
                    w.fs.lookup(ns_ino, format!("{leaf}:t{i}").as_bytes())
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let got =
                    w.fs.readlink(link.ino)
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let want = format!("{leaf}@{target}");
                prop_assert_eq!(String::from_utf8_lossy(&got).to_string(), want);
                k.given(
                    link.ino,
                    Identity::Path(format!("{}:t{i}->{}", w.images[i].repo, target)),
                    1,
                )?;
            }
            Op::Corrupt { image, layer } => {
                let img = &w.images[image % w.images.len()];
                let d = img.layer_digests[layer % img.layer_digests.len()].clone();
                w.registry.inject(&d, Fault::FlipByte(20));
                w.corrupt.push(d);
            }
            Op::Heal => {
                for d in w.corrupt.drain(..) {
                    w.registry.clear(&d);
                }
            }
        }
        let (table, _) = w.fs.inode_counts();
        prop_assert!(
            table <= 1 + k.held_count() + UNREFERENCED_BOUND,
            "inode table holds {} with the kernel holding {}",
            table,
            k.held_count()
        );
    }
    // The kernel forgets everything: only the root is left.
    let held: Vec<(u64, u64)> = k.held.iter().map(|(a, b)| (*a, *b)).collect();
    for (ino, n) in held {
        k.forget(&w.fs, ino, n);
    }
    prop_assert!(w.fs.inode_counts().0 <= 1 + UNREFERENCED_BOUND);
    Ok(())
}

/// List directory `ino` (path `p` of image `i`) with readdirplus in pages of
/// `page` bytes, as the kernel does: the entries and their attributes; the
/// kernel holds each entry returned.
async fn list(
    w: &World,
    k: &mut Kernel,
    i: usize,
    p: &str,
    ino: u64,
    page: usize,
) -> Result<Vec<(String, Attr)>, Error> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    loop {
        let batch = w.fs.readdir_page(ino, offset, page, true).await?;
        if batch.is_empty() {
            break;
        }
        for e in batch {
            offset = e.cookie;
            if e.is_dot() {
                continue;
            }
            let name = String::from_utf8(e.name.clone()).unwrap();
            let child = if p.is_empty() {
                name.clone()
            } else {
                format!("{p}/{name}")
            };
            let attr = e.attr.clone().expect("tree entries carry attributes");
            same_inode(attr.ino, e.ino)?;
            // The core took the kernel's reference with the entry.
            k.given(e.ino, w.identity(i, &child), 1)
                .map_err(|e| Error::invalid(e.to_string()))?;
            out.push((name, attr));
        }
    }
    Ok(out)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_filesystem_matches_the_model(
        stacks in prop::collection::vec(model::layers(), 1..4),
        ops in prop::collection::vec(op(), 1..60),
        small_cache in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let mut w = world(&stacks, small_cache);
        rt.block_on(run(&mut w, &ops))?;
    }
}
