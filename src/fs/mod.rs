//! The filesystem core: the namespace, the inode table and every read-only
//! operation, in plain async Rust. `crate::fuse` links fuser calls to these
//! methods; tests can drive them without a mount.
//!
//! ```text
//! /                          namespaces from the catalog (any name is looked up, like autofs)
//! lab/busybox:latest         symlink → busybox@sha256:… (platform manifest for an index)
//! lab/busybox@sha256:…/      manifest.json config.json blobs/ layers/ rootfs/ referrers/
//! lab/multi@sha256:…/        index.json linux-amd64 → ../multi@sha256:… referrers/
//! lab/notes@sha256:…/        an artifact: manifest.json config.json blobs/ files/ referrers/
//! ```

mod artifacts;
pub mod attr;
mod entrypoint;
#[cfg(test)]
mod entrypoint_tests;
pub mod inode;
pub mod journal;
mod known_digest;
#[cfg(test)]
mod model_tests;
mod namespace;
pub mod paging;
mod trace;
mod trees;
mod usage;

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use attr::{Attr, FileKind, IMMUTABLE_TTL};
pub use entrypoint::WarmedFiles;
pub use inode::{InodeTable, Key, TreeId, TreeWhich, ROOT_INO};
pub use known_digest::DIGEST_XATTR;
pub use paging::{PageEntry, REPLY_BUDGET};
pub use trees::node_attr;
pub(crate) use trees::LoadedTree;
pub use usage::{ImageInUse, LayerInUse};

use crate::content::{Content, ManifestInfo};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{ImageManifest, Manifest, Platform};
use crate::layer::NodeId;

/// Settings of the read-only tree.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// The platform a tag of an index resolves to.
    pub platform: Platform,
    /// How long a tag's resolution (and a listing) is trusted before asking again.
    pub tag_ttl: Duration,
    /// Timestamp of synthetic directories.
    pub mount_time: SystemTime,
}

/// Extended attributes that, when a file lacks them, regfs reports as not
/// supported (EOPNOTSUPP) rather than absent (ENODATA): SELinux labels and
/// POSIX ACLs. The kernel labels a FUSE mount by policy, not by this xattr,
/// and image layers seldom carry either, so this is what NFS without labels
/// answers. The difference matters for speed: `ls -l` asks for both names on
/// every file it lists until one answer says "not supported", then stops
/// asking for the whole filesystem (coreutils caches that per device). A file
/// that does carry one of them still returns it.
pub const UNSUPPORTED_WHEN_ABSENT: [&[u8]; 3] = [
    b"security.selinux",
    b"system.posix_acl_access",
    b"system.posix_acl_default",
];

/// Whether extended attribute `name` is shown to a caller, `root` or not.
///
/// Opaque directories carry the overlayfs mark twice: `trusted.overlay.opaque`
/// for overlayfs mounted by root, `user.overlay.opaque` for overlayfs mounted
/// with `userxattr` (rootless). The kernel shows `trusted.*` to root only;
/// regfs shows `user.overlay.*` to everyone else only, so that an overlay
/// mounted by root (podman as root, the README's recipe) neither copies it
/// up nor lets the container see it, while a rootless one finds its mark.
pub fn xattr_shown(name: &[u8], root: bool) -> bool {
    !(root && name.starts_with(b"user.overlay."))
}

/// An open file.
enum Handle {
    /// Bytes held in memory (manifests).
    Bytes(Bytes),
    /// A verified blob in the store.
    File(Arc<File>),
    /// A file inside a layer tree or the rootfs; `true` until the first
    /// read of a lazily served file opened for exec, which fetches the
    /// whole file ([`EXEC_WHOLE_MAX`]).
    Tree(Arc<trees::LoadedTree>, NodeId, bool),
    /// A large blob read by verified chunks (its chunk list is known).
    Chunked(Arc<crate::content::ChunkedBlob>),
}

/// Largest lazily served file whose first read after an exec open fetches
/// all of it.
pub const EXEC_WHOLE_MAX: u64 = 64 << 20;

/// A directory entry before it has an inode number.
struct Listed {
    key: Key,
    name: Vec<u8>,
    kind: FileKind,
}

/// The children of a directory: a loaded tree's, or a synthetic directory's.
enum Children {
    Tree {
        tree: Arc<trees::LoadedTree>,
        id: Arc<TreeId>,
        dir: NodeId,
    },
    Listed(Vec<Listed>),
}

/// The read-only registry filesystem.
pub struct Fs {
    content: Content,
    cfg: FsConfig,
    inodes: InodeTable,
    ns: namespace::Listings,
    trees: trees::Trees,
    handles: Mutex<HashMap<u64, Handle>>,
    next_fh: AtomicU64,
    layer_users: usage::LayerUsers,
    traces: trace::Traces,
    warmed: entrypoint::Warmed,
}

impl Fs {
    /// A filesystem over `content`.
    pub fn new(content: Content, cfg: FsConfig) -> Fs {
        Fs {
            content,
            cfg,
            inodes: InodeTable::new(),
            ns: namespace::Listings::default(),
            trees: trees::Trees::new(4_000_000),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            layer_users: usage::LayerUsers::default(),
            traces: trace::Traces::default(),
            warmed: entrypoint::Warmed::default(),
        }
    }

    /// The content source (client and store).
    pub fn content(&self) -> &Content {
        &self.content
    }

    fn key(&self, ino: u64) -> Result<Key> {
        self.inodes
            .key(ino)
            .ok_or_else(|| Error::NotFound(format!("inode {ino}")))
    }

    /// Look `name` up in directory `parent`. The kernel holds the returned
    /// inode until it calls [`Fs::forget`].
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let parent = self.key(parent)?;
        let key = self.child(&parent, name).await?;
        let mut attr = self.attr(key.clone()).await?;
        attr.ino = self.inodes.lookup(key);
        Ok(attr)
    }

    /// Attributes of `key` with its inode number, taking a kernel reference
    /// (as [`Fs::lookup`] does): for another view (the layer store) that
    /// shows this filesystem's nodes under its own names.
    pub async fn lookup_key(&self, key: Key) -> Result<Attr> {
        let mut attr = self.attr(key.clone()).await?;
        attr.ino = self.inodes.lookup(key);
        Ok(attr)
    }

    /// The inode number of `key`, with a kernel reference when `referenced`
    /// (a readdirplus entry), for another view listing this filesystem's nodes.
    pub fn hand_out_key(&self, key: Key, referenced: bool) -> u64 {
        self.inodes.hand_out([key], referenced)[0]
    }

    /// How long the kernel may remember that a name is absent from
    /// directory `parent`: for ever in the immutable directories of an image
    /// (its trees, `layers/`, `blobs/`, `files/`, the image directory), the
    /// tag TTL in namespaces, not at all elsewhere. Python's start-up, and
    /// overlayfs asking every lower layer for every name, look up many
    /// names that are not there; each negative entry saves a round trip.
    pub fn absent_ttl(&self, parent: u64) -> Option<Duration> {
        match self.inodes.key(parent)? {
            Key::Node { .. }
            | Key::Image { .. }
            | Key::LayersDir { .. }
            | Key::BlobsDir { .. }
            | Key::FilesDir { .. } => Some(IMMUTABLE_TTL),
            Key::Root | Key::Namespace(_) | Key::Referrers { .. } => {
                Some(self.cfg.tag_ttl).filter(|t| !t.is_zero())
            }
            _ => None,
        }
    }

    /// [`Fs::lookup`], with an absent name answered as [`Attr::absent`]
    /// where [`Fs::absent_ttl`] allows (what the FUSE adapters reply).
    pub async fn lookup_or_absent(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        match self.lookup(parent, name).await {
            Err(e) if e.errno() == libc::ENOENT => {
                self.absent_ttl(parent).map(Attr::absent).ok_or(e)
            }
            r => r,
        }
    }

    /// The kernel dropped `nlookup` references to `ino`.
    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.inodes.forget(ino, nlookup);
    }

    /// Attributes of inode `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        let key = self.key(ino)?;
        self.attr(key).await
    }

    /// One reply's worth of directory `ino` from cookie `offset` (0 at the
    /// start; see [`paging`]): the entries that fit in `budget` bytes, `.` and
    /// `..` included. With `plus` (readdirplus) each entry sent takes a kernel
    /// reference in the same step that hands its number out, and carries its
    /// attributes where they are known without the network (tree nodes).
    pub async fn readdir_page(
        &self,
        ino: u64,
        offset: u64,
        budget: usize,
        plus: bool,
    ) -> Result<Vec<PageEntry>> {
        // `..` of readdirplus is not linked by the kernel; plain readdir shows
        // the directory itself there, as it always did.
        let parent = if plus { ROOT_INO } else { ino };
        match self.children(self.key(ino)?).await? {
            Children::Tree { tree, id, dir } => {
                let kids = tree.tree.children(dir);
                let p = paging::page(offset, budget, plus, kids.len(), |i| kids[i].0.len());
                let kids = &kids[p.first..p.end];
                let inos = self.inodes.hand_out(
                    kids.iter().map(|(_, node)| Key::Node {
                        tree: id.clone(),
                        node: *node,
                    }),
                    plus,
                );
                let mut out = p.dots(ino, parent);
                out.extend(
                    kids.iter()
                        .zip(inos)
                        .enumerate()
                        .map(|(i, ((name, node), ino))| {
                            let n = tree.tree.node(*node);
                            PageEntry {
                                ino,
                                cookie: paging::Page::cookie(p.first + i),
                                name: name.clone(),
                                kind: n.kind.into(),
                                attr: plus.then(|| node_attr(ino, n)),
                            }
                        }),
                );
                Ok(out)
            }
            Children::Listed(list) => {
                let p = paging::page(offset, budget, plus, list.len(), |i| list[i].name.len());
                let list = &list[p.first..p.end];
                let inos = self
                    .inodes
                    .hand_out(list.iter().map(|l| l.key.clone()), plus);
                let mut out = p.dots(ino, parent);
                out.extend(
                    list.iter()
                        .zip(inos)
                        .enumerate()
                        .map(|(i, (l, ino))| PageEntry {
                            ino,
                            cookie: paging::Page::cookie(p.first + i),
                            name: l.name.clone(),
                            kind: l.kind,
                            attr: None,
                        }),
                );
                Ok(out)
            }
        }
    }

    /// The children of directory `key`, not yet numbered.
    async fn children(&self, key: Key) -> Result<Children> {
        let listed = |key: Key, name: String, kind: FileKind| Listed {
            key,
            name: name.into_bytes(),
            kind,
        };
        Ok(Children::Listed(match key {
            Key::Root => self.list_namespace("").await?,
            Key::Namespace(p) => self.list_namespace(&p).await?,
            Key::Image { repo, digest } => self.list_image(&repo, &digest).await?,
            Key::BlobsDir { repo, digest } => {
                let m = self.image_manifest(&repo, &digest).await?;
                blob_names(&m)
                    .into_iter()
                    .map(|(name, blob)| {
                        let key = Key::Blob {
                            repo: repo.clone(),
                            image: digest.clone(),
                            blob,
                        };
                        listed(key, name, FileKind::File)
                    })
                    .collect()
            }
            Key::FilesDir { repo, digest } => self.list_files(&repo, &digest).await?,
            Key::Referrers {
                repo,
                digest,
                prefix,
            } => self.list_referrers(&repo, &digest, &prefix).await?,
            Key::LayersDir { repo, digest } => {
                let m = self.image_manifest(&repo, &digest).await?;
                layer_dir_names(&m)
                    .into_iter()
                    .map(|(i, name)| {
                        let key = self.tree_root(&repo, &digest, TreeWhich::Layer(i));
                        listed(key, name, FileKind::Dir)
                    })
                    .collect()
            }
            Key::Node { tree, node } => {
                let t = self.trees.load(self, &tree).await?;
                if t.tree.node(node).kind != crate::layer::NodeKind::Dir {
                    return Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
                }
                return Ok(Children::Tree {
                    tree: t,
                    id: tree,
                    dir: node,
                });
            }
            _ => return Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOTDIR))),
        }))
    }

    /// Inodes in the table, and how many of them the kernel holds no
    /// reference to (for status and tests).
    pub fn inode_counts(&self) -> (usize, usize) {
        (self.inodes.len(), self.inodes.idle())
    }

    /// The target of symlink `ino`.
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match self.key(ino)? {
            Key::Tag { repo, tag, target } if target.is_empty() => {
                Ok(self.resolve_tag(&repo, &tag).await?.into_bytes())
            }
            Key::Tag { target, .. } | Key::Referrer { target } => Ok(target.as_bytes().to_vec()),
            Key::Platform { repo, index, entry } => {
                let info = self.content.manifest(&repo, &index).await?;
                let Manifest::Index { entries, .. } = &info.manifest else {
                    return Err(Error::NotFound("platform link".into()));
                };
                let e = entries
                    .get(entry)
                    .ok_or_else(|| Error::NotFound("platform".into()))?;
                Ok(format!("../{}@{}", leaf(&repo), e.manifest.digest).into_bytes())
            }
            Key::Node { tree, node } => {
                let t = self.trees.load(self, &tree).await?;
                t.tree
                    .node(node)
                    .link_target
                    .clone()
                    .ok_or_else(|| Error::invalid("not a symlink"))
            }
            _ => Err(Error::invalid("not a symlink")),
        }
    }

    /// Open inode `ino` for reading; may fetch (and verify) the content first.
    pub async fn open(&self, ino: u64) -> Result<u64> {
        let handle = self.handle(ino).await?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, handle);
        Ok(fh)
    }

    /// [`Fs::open`] for `exec`: the kernel opens a program, or the loader
    /// it maps, with `__FMODE_EXEC` among the open flags (through overlayfs
    /// too). For a file of an image tree, what that exec reads next is
    /// warmed beside it ([`Fs::warm_exec`]), and the first read of a lazily
    /// served one fetches the whole file (up to [`EXEC_WHOLE_MAX`]) in one
    /// go rather than a chunk per page fault.
    pub async fn open_exec(self: &Arc<Self>, ino: u64) -> Result<u64> {
        let fh = self.open(ino).await?;
        if let Ok(Key::Node { tree, node }) = self.key(ino) {
            if let Some(Handle::Tree(t, n, whole)) = self.handles.lock().unwrap().get_mut(&fh) {
                let file = t.tree.node(*n);
                *whole = matches!(file.content, crate::layer::FileData::Chunks { .. })
                    && file.size <= EXEC_WHOLE_MAX;
            }
            self.warm_exec_in_background(&tree, node);
        }
        Ok(fh)
    }

    /// Open `ino` again under the number `fh` an earlier server of this mount
    /// gave the kernel (see `crate::handover`), unless it is open already.
    pub async fn reopen(&self, ino: u64, fh: u64) -> Result<()> {
        if self.handles.lock().unwrap().contains_key(&fh) {
            return Ok(());
        }
        let handle = self.handle(ino).await?;
        self.handles.lock().unwrap().entry(fh).or_insert(handle);
        Ok(())
    }

    /// Keep the inode table in a journal in `state_dir`, replaying what an
    /// earlier server of this mount left there, and number file handles
    /// apart from every earlier server's (`generation` in the high bits):
    /// the numbers the kernel holds stay valid across a restart.
    pub fn with_restart_state(
        mut self,
        state_dir: &std::path::Path,
        generation: u64,
    ) -> std::io::Result<Fs> {
        self.inodes = InodeTable::with_journal(&state_dir.join("inodes.journal"))?;
        self.next_fh = AtomicU64::new((generation << 40) | 1);
        self.journal_layer_users(&state_dir.join("layer-users.journal"))?;
        Ok(self)
    }

    async fn handle(&self, ino: u64) -> Result<Handle> {
        Ok(match self.key(ino)? {
            Key::ManifestFile { repo, digest } => {
                Handle::Bytes(self.content.manifest(&repo, &digest).await?.bytes.clone())
            }
            Key::ConfigFile { repo, digest } => {
                let m = self.image_manifest(&repo, &digest).await?;
                Handle::File(Arc::new(self.content.blob(&repo, &m.config).await?))
            }
            Key::Blob { repo, image, blob } => {
                let m = self.image_manifest(&repo, &image).await?;
                let desc = std::iter::once(&m.config)
                    .chain(m.layers.iter())
                    .find(|d| d.digest == blob)
                    .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?
                    .clone();
                self.open_blob(&repo, &image, &desc).await?
            }
            Key::ArtifactFile { repo, image, index } => {
                let m = self.image_manifest(&repo, &image).await?;
                let desc = m
                    .layers
                    .get(index)
                    .ok_or_else(|| Error::NotFound(format!("file {index} of {image}")))?;
                self.open_blob(&repo, &image, desc).await?
            }
            Key::Node { tree, node } => {
                let t = self.trees.load(self, &tree).await?;
                if t.tree.node(node).kind != crate::layer::NodeKind::File {
                    return Err(Error::invalid("not a regular file"));
                }
                self.trace_open(&tree, node);
                Handle::Tree(t, node, false)
            }
            Key::Root
            | Key::Namespace(_)
            | Key::Image { .. }
            | Key::BlobsDir { .. }
            | Key::LayersDir { .. }
            | Key::FilesDir { .. }
            | Key::Referrers { .. } => {
                return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EISDIR)))
            }
            Key::Tag { .. } | Key::Platform { .. } | Key::Referrer { .. } => {
                return Err(Error::invalid("symlink"))
            }
        })
    }

    /// Read up to `size` bytes at `offset` from open file `fh`. Local I/O,
    /// except for files of lazily served layers, whose chunks are fetched and
    /// verified on first read.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        enum Src {
            Bytes(Bytes),
            File(Arc<File>),
            Tree(Arc<trees::LoadedTree>, NodeId, bool),
            Chunked(Arc<crate::content::ChunkedBlob>),
        }
        let src = match self.handles.lock().unwrap().get_mut(&fh) {
            Some(Handle::Bytes(b)) => Src::Bytes(b.clone()),
            Some(Handle::File(f)) => Src::File(f.clone()),
            Some(Handle::Tree(t, n, whole)) => Src::Tree(t.clone(), *n, std::mem::take(whole)),
            Some(Handle::Chunked(c)) => Src::Chunked(c.clone()),
            None => return Err(Error::Io(std::io::Error::from_raw_os_error(libc::EBADF))),
        };
        match src {
            Src::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(size as usize).min(b.len());
                Ok(b[start..end].to_vec())
            }
            Src::File(f) => {
                crate::blocking::run(move || {
                    let mut buf = vec![0u8; size as usize];
                    let got = crate::layer::read_full_at(&*f, &mut buf, offset)?;
                    buf.truncate(got);
                    Ok(buf)
                })
                .await
            }
            // `whole`: the whole program in one go, since the loader faults
            // it in all over (a round trip per chunk otherwise).
            Src::Tree(t, node, whole) => {
                t.read_fetching(&self.content, node, offset, size, whole)
                    .await
            }
            Src::Chunked(c) => self.content.read_blob_range(&c, offset, size).await,
        }
    }

    /// Open blob `desc` of manifest `repo@image`: by verified chunks when
    /// its chunk list is known and it is not in the store, else whole.
    async fn open_blob(
        &self,
        repo: &str,
        image: &Digest,
        desc: &crate::image::BlobRef,
    ) -> Result<Handle> {
        Ok(match self.content.chunked_blob(repo, image, desc).await {
            Some(c) => Handle::Chunked(c),
            None => Handle::File(Arc::new(self.content.blob(repo, desc).await?)),
        })
    }

    /// Forget open file `fh`.
    pub fn release(&self, fh: u64) {
        self.handles.lock().unwrap().remove(&fh);
    }

    /// The value of extended attribute `name` of `ino`.
    ///
    /// A name the file lacks is ENODATA, except the names in
    /// [`UNSUPPORTED_WHEN_ABSENT`], which are EOPNOTSUPP.
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let key = self.key(ino)?;
        if name == DIGEST_XATTR {
            if let Some((d, _)) = self.known_digest(&key).await? {
                return Ok(d.to_string().into_bytes());
            }
        }
        if let Key::Node { tree, node } = key {
            // Tree roots are synthetic (see `attr`): no xattrs, no layer fetch.
            if node != 0 {
                let t = self.trees.load(self, &tree).await?;
                if let Some((_, v)) = t.tree.node(node).xattrs.iter().find(|(k, _)| k == name) {
                    return Ok(v.clone());
                }
            }
        }
        let errno = if UNSUPPORTED_WHEN_ABSENT.contains(&name) {
            libc::EOPNOTSUPP
        } else {
            libc::ENODATA
        };
        Err(Error::Io(std::io::Error::from_raw_os_error(errno)))
    }

    /// The names of the extended attributes of `ino`.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        let key = self.key(ino)?;
        let mut names = Vec::new();
        if let Key::Node { tree, node } = &key {
            if *node != 0 {
                let t = self.trees.load(self, tree).await?;
                names.extend(t.tree.node(*node).xattrs.iter().map(|(k, _)| k.clone()));
            }
        }
        if let Some((_, true)) = self.known_digest(&key).await? {
            names.push(DIGEST_XATTR.to_vec());
        }
        Ok(names)
    }

    /// The key of `name` inside directory `parent`.
    async fn child(&self, parent: &Key, name: &[u8]) -> Result<Key> {
        let not_found = || Error::NotFound(String::from_utf8_lossy(name).into_owned());
        match parent {
            Key::Root => self.namespace_child("", name).await,
            Key::Namespace(p) => self.namespace_child(p, name).await,
            Key::Image { repo, digest } => {
                let name = std::str::from_utf8(name).map_err(|_| not_found())?;
                let info = self.content.manifest(repo, digest).await?;
                let (repo, digest) = (repo.clone(), digest.clone());
                if name == "referrers" {
                    return Ok(Key::Referrers {
                        repo,
                        digest,
                        prefix: "".into(),
                    });
                }
                let artifact = matches!(&info.manifest, Manifest::Image(m) if m.is_artifact());
                match (&info.manifest, name) {
                    (Manifest::Image(_), "files") if artifact => Ok(Key::FilesDir { repo, digest }),
                    (Manifest::Image(m), "unpacked")
                        if artifact && !artifacts::unpacked_names(m).is_empty() =>
                    {
                        Ok(Key::LayersDir { repo, digest })
                    }
                    (Manifest::Image(_), "layers" | "rootfs") if artifact => Err(not_found()),
                    (Manifest::Image(_), "manifest.json")
                    | (Manifest::Index { .. }, "index.json") => {
                        Ok(Key::ManifestFile { repo, digest })
                    }
                    (Manifest::Image(_), "config.json") => Ok(Key::ConfigFile { repo, digest }),
                    (Manifest::Image(_), "blobs") => Ok(Key::BlobsDir { repo, digest }),
                    (Manifest::Image(_), "layers") => Ok(Key::LayersDir { repo, digest }),
                    (Manifest::Image(_), "rootfs") => {
                        Ok(self.tree_root(&repo, &digest, TreeWhich::Rootfs))
                    }
                    (Manifest::Index { entries, .. }, _) => platform_names(entries)
                        .into_iter()
                        .position(|n| n == name)
                        .map(|entry| Key::Platform {
                            repo,
                            index: digest,
                            entry,
                        })
                        .ok_or_else(not_found),
                    _ => Err(not_found()),
                }
            }
            Key::BlobsDir { repo, digest } => {
                let m = self.image_manifest(repo, digest).await?;
                let name = std::str::from_utf8(name).map_err(|_| not_found())?;
                blob_names(&m)
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, blob)| Key::Blob {
                        repo: repo.clone(),
                        image: digest.clone(),
                        blob,
                    })
                    .ok_or_else(not_found)
            }
            Key::FilesDir { repo, digest } => self.files_child(repo, digest, name).await,
            Key::Referrers {
                repo,
                digest,
                prefix,
            } => self.referrers_child(repo, digest, prefix, name).await,
            Key::LayersDir { repo, digest } => {
                let m = self.image_manifest(repo, digest).await?;
                layer_dir_names(&m)
                    .into_iter()
                    .find(|(_, n)| n.as_bytes() == name)
                    .map(|(i, _)| self.tree_root(repo, digest, TreeWhich::Layer(i)))
                    .ok_or_else(not_found)
            }
            Key::Node { tree, node } => {
                let t = self.trees.load(self, tree).await?;
                let child = t.tree.lookup(*node, name).ok_or_else(not_found)?;
                Ok(Key::Node {
                    tree: tree.clone(),
                    node: child,
                })
            }
            _ => Err(Error::Io(std::io::Error::from_raw_os_error(libc::ENOTDIR))),
        }
    }

    /// Attributes of `key`, allocating its inode number.
    async fn attr(&self, key: Key) -> Result<Attr> {
        let t0 = self.cfg.mount_time;
        let tag_ttl = self.cfg.tag_ttl;
        match &key {
            Key::Root => {
                let mtime = self.listing_mtime("");
                Ok(Attr::dir(self.inodes.ino(key), mtime, tag_ttl))
            }
            Key::Namespace(p) => {
                let mtime = self.listing_mtime(p);
                Ok(Attr::dir(self.inodes.ino(key), mtime, tag_ttl))
            }
            Key::Tag { repo, tag, target } => {
                let len = if target.is_empty() {
                    self.resolve_tag(repo, tag).await?.len()
                } else {
                    target.len()
                };
                Ok(Attr::symlink(
                    self.inodes.ino(key.clone()),
                    len as u64,
                    t0,
                    tag_ttl,
                ))
            }
            Key::Image { repo, digest } => {
                self.content.manifest(repo, digest).await?;
                Ok(Attr::dir(self.inodes.ino(key), t0, IMMUTABLE_TTL))
            }
            Key::ManifestFile { repo, digest } => {
                let info = self.content.manifest(repo, digest).await?;
                Ok(Attr::file(
                    self.inodes.ino(key),
                    info.bytes.len() as u64,
                    t0,
                    IMMUTABLE_TTL,
                ))
            }
            Key::ConfigFile { repo, digest } => {
                let m = self.image_manifest(repo, digest).await?;
                Ok(Attr::file(
                    self.inodes.ino(key),
                    m.config.size,
                    t0,
                    IMMUTABLE_TTL,
                ))
            }
            Key::Blob { repo, image, blob } => {
                let m = self.image_manifest(repo, image).await?;
                let size = std::iter::once(&m.config)
                    .chain(m.layers.iter())
                    .find(|d| &d.digest == blob)
                    .map(|d| d.size)
                    .ok_or_else(|| Error::NotFound(format!("blob {blob}")))?;
                Ok(Attr::file(self.inodes.ino(key), size, t0, IMMUTABLE_TTL))
            }
            Key::BlobsDir { .. } | Key::LayersDir { .. } | Key::FilesDir { .. } => {
                Ok(Attr::dir(self.inodes.ino(key), t0, IMMUTABLE_TTL))
            }
            Key::Referrers {
                repo,
                digest,
                prefix,
            } => {
                let mtime = self.listing_mtime(&Self::referrers_stamp(repo, digest, prefix));
                Ok(Attr::dir(self.inodes.ino(key), mtime, tag_ttl))
            }
            Key::Referrer { target } => {
                let len = target.len() as u64;
                Ok(Attr::symlink(self.inodes.ino(key), len, t0, IMMUTABLE_TTL))
            }
            Key::ArtifactFile { repo, image, index } => {
                let m = self.image_manifest(repo, image).await?;
                let size = m
                    .layers
                    .get(*index)
                    .map(|d| d.size)
                    .ok_or_else(|| Error::NotFound(format!("file {index} of {image}")))?;
                Ok(Attr::file(self.inodes.ino(key), size, t0, IMMUTABLE_TTL))
            }
            Key::Platform { repo, index, entry } => {
                let info = self.content.manifest(repo, index).await?;
                let Manifest::Index { entries, .. } = &info.manifest else {
                    return Err(Error::NotFound("platform".into()));
                };
                let e = entries
                    .get(*entry)
                    .ok_or_else(|| Error::NotFound("platform".into()))?;
                let len = format!("../{}@{}", leaf(repo), e.manifest.digest).len();
                Ok(Attr::symlink(
                    self.inodes.ino(key),
                    len as u64,
                    t0,
                    IMMUTABLE_TTL,
                ))
            }
            Key::Node { tree, node } => {
                if *node == 0 {
                    // The root of a tree is synthetic, so stat-ing `rootfs` or
                    // `layers/N` fetches no layer.
                    let mut a = Attr::dir(self.inodes.ino(key.clone()), t0, IMMUTABLE_TTL);
                    a.perm = 0o755;
                    return Ok(a);
                }
                let t = self.trees.load(self, tree).await?;
                Ok(trees::node_attr(
                    self.inodes.ino(key.clone()),
                    t.tree.node(*node),
                ))
            }
        }
    }

    /// The image manifest at `repo@digest`; an index there is an error.
    async fn image_manifest(&self, repo: &str, digest: &Digest) -> Result<ImageManifest> {
        let info: Arc<ManifestInfo> = self.content.manifest(repo, digest).await?;
        match &info.manifest {
            Manifest::Image(m) => Ok(m.clone()),
            Manifest::Index { .. } => Err(Error::invalid(format!("{digest} is an index"))),
        }
    }

    async fn list_image(&self, repo: &Arc<str>, digest: &Digest) -> Result<Vec<Listed>> {
        let info = self.content.manifest(repo, digest).await?;
        let mut out = Vec::new();
        let mut add = |key: Key, name: &str, kind: FileKind| {
            out.push(Listed {
                key,
                name: name.as_bytes().to_vec(),
                kind,
            })
        };
        let (r, d) = (repo.clone(), digest.clone());
        match &info.manifest {
            Manifest::Image(m) => {
                add(
                    Key::ManifestFile {
                        repo: r.clone(),
                        digest: d.clone(),
                    },
                    "manifest.json",
                    FileKind::File,
                );
                add(
                    Key::ConfigFile {
                        repo: r.clone(),
                        digest: d.clone(),
                    },
                    "config.json",
                    FileKind::File,
                );
                add(
                    Key::BlobsDir {
                        repo: r.clone(),
                        digest: d.clone(),
                    },
                    "blobs",
                    FileKind::Dir,
                );
                if m.is_artifact() {
                    add(
                        Key::FilesDir {
                            repo: r.clone(),
                            digest: d.clone(),
                        },
                        "files",
                        FileKind::Dir,
                    );
                    if !artifacts::unpacked_names(m).is_empty() {
                        add(
                            Key::LayersDir {
                                repo: r.clone(),
                                digest: d.clone(),
                            },
                            "unpacked",
                            FileKind::Dir,
                        );
                    }
                } else {
                    add(
                        Key::LayersDir {
                            repo: r.clone(),
                            digest: d.clone(),
                        },
                        "layers",
                        FileKind::Dir,
                    );
                    add(
                        self.tree_root(&r, &d, TreeWhich::Rootfs),
                        "rootfs",
                        FileKind::Dir,
                    );
                }
            }
            Manifest::Index { entries, .. } => {
                add(
                    Key::ManifestFile {
                        repo: r.clone(),
                        digest: d.clone(),
                    },
                    "index.json",
                    FileKind::File,
                );
                for (entry, name) in platform_names(entries).into_iter().enumerate() {
                    add(
                        Key::Platform {
                            repo: r.clone(),
                            index: d.clone(),
                            entry,
                        },
                        &name,
                        FileKind::Symlink,
                    );
                }
            }
        }
        add(
            Key::Referrers {
                repo: r,
                digest: d,
                prefix: "".into(),
            },
            "referrers",
            FileKind::Dir,
        );
        Ok(out)
    }

    fn tree_root(&self, repo: &Arc<str>, digest: &Digest, which: TreeWhich) -> Key {
        Key::Node {
            tree: Arc::new(TreeId {
                repo: repo.clone(),
                image: digest.clone(),
                which,
            }),
            node: 0,
        }
    }
}

/// The last path component of a repository.
fn leaf(repo: &str) -> &str {
    repo.rsplit('/').next().unwrap_or(repo)
}

/// The directories of `layers/` (`N-<digest>`), or of an artifact's
/// `unpacked/` (its tar layers, named as in `files/`), with their layer numbers.
fn layer_dir_names(m: &ImageManifest) -> Vec<(usize, String)> {
    if m.is_artifact() {
        return artifacts::unpacked_names(m);
    }
    (m.layers.iter().enumerate())
        .map(|(i, l)| (i, format!("{}-{}", i + 1, l.digest)))
        .collect()
}

/// `blobs/` entries: the config and each layer, once each.
fn blob_names(m: &ImageManifest) -> Vec<(String, Digest)> {
    let mut out: Vec<(String, Digest)> = Vec::new();
    for d in std::iter::once(&m.config).chain(m.layers.iter()) {
        if !out.iter().any(|(_, x)| x == &d.digest) {
            out.push((d.digest.to_string(), d.digest.clone()));
        }
    }
    out
}

/// One unique name per index entry: `linux-amd64`, `linux-arm64-v8`, `unknown-2`, …
fn platform_names(entries: &[crate::image::IndexEntry]) -> Vec<String> {
    unique_names(entries.iter().map(|e| {
        e.platform
            .as_ref()
            .map(|p| p.dir_name())
            .unwrap_or_else(|| "unknown".into())
    }))
}

/// `names` made unique in order: a name seen before gets `-2`, `-3`, …
pub(super) fn unique_names(names: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for base in names {
        let mut name = base.clone();
        let mut n = 2;
        while out.contains(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        out.push(name);
    }
    out
}
