//! The additional layer store (ALS) view: the registry's layers laid out the
//! way containers/storage's overlay driver looks for them
//! (`additionallayerstores = ["DIR:ref"]`), served by the same [`Fs`] (and
//! so the same cache, trees and inodes) as the browse tree.
//!
//! ```text
//! DIR/<base64(reference)>/<key>/diff   the layer unpacked: the `layers/N-…/` tree (an Fs node)
//! DIR/<base64(reference)>/<key>/blob   the compressed blob, verified (the `blobs/…` file)
//! DIR/<base64(reference)>/<key>/info   JSON for containers/storage's Layer record (see `info`)
//! ```
//!
//! `<key>` is the compressed layer digest (containers/image before 5.31,
//! every layer) or a TOC digest (5.31 and later, eStargz and zstd:chunked
//! layers); both name the same layer. containers/storage says it uses a
//! layer by creating `<key>/use` and lets go by `rmdir <key>`; both answer
//! ENOENT, as it expects, and count the layer's users ([`Fs::use_layer`]).
//! Every other change answers EROFS.
//!
//! Inode numbers: 1 is the view's root, numbers with [`ALS_INO_BIT`] are the
//! view's own directories and `info` files, every other number is the
//! [`Fs`]'s, and its operations go straight to it.

pub mod info;
mod name;
mod table;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

pub use name::encode;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::fs::paging::{self, Page};
use crate::fs::{Attr, FileKind, Fs, Key, PageEntry, TreeId, TreeWhich, IMMUTABLE_TTL, ROOT_INO};
use crate::image::{BlobRef, Manifest};
use crate::reference::Registry;

/// Set in the inode numbers (and file handles) of the view's own nodes.
pub const ALS_INO_BIT: u64 = 1 << 62;

/// A node of the view's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
enum Node {
    /// `<base64(reference)>`, or a `/`-joined prefix of it.
    Ref(Arc<str>),
    /// `<base64(reference)>/<key>/`.
    Layer(Arc<str>, Digest),
    /// `<base64(reference)>/<key>/info`.
    Info(Arc<str>, Digest),
}

/// Whom an inode number belongs to.
enum Owner {
    Root,
    Own(Node),
    Fs(u64),
}

/// A layer found under a key.
#[derive(Clone)]
struct Found {
    repo: Arc<str>,
    image: Digest,
    index: usize,
    desc: BlobRef,
    diff_id: Digest,
    /// The key, when it is a TOC digest rather than the compressed digest.
    toc: Option<Digest>,
}

/// Which `info` file: repository, image, layer position, TOC key if any.
type InfoId = (Arc<str>, Digest, usize, Option<Digest>);

/// The layer store view over a filesystem.
pub struct LayerStore {
    fs: Arc<Fs>,
    registry: Registry,
    nodes: table::Table<Node>,
    /// `info` contents, fixed the first time they are made (their size is
    /// in the kernel's attribute cache).
    infos: Mutex<HashMap<InfoId, Bytes>>,
    /// Layers found, by reference name and key, kept for the daemon's life:
    /// a layer's content never changes, and containers/storage keeps using
    /// a layer's path after the tag has moved to an image without it.
    found: Mutex<HashMap<(Arc<str>, Digest), Found>>,
    handles: Mutex<HashMap<u64, Bytes>>,
    next_fh: AtomicU64,
    mount_time: SystemTime,
    ref_ttl: Duration,
}

fn errno(n: i32) -> Error {
    Error::Io(std::io::Error::from_raw_os_error(n))
}

fn not_found(name: &[u8]) -> Error {
    Error::NotFound(String::from_utf8_lossy(name).into_owned())
}

impl LayerStore {
    /// The view of `fs`, whose registry is `registry` (references naming
    /// another registry are absent). A reference's tag is resolved again
    /// after `ref_ttl`.
    pub fn new(fs: Arc<Fs>, registry: Registry, ref_ttl: Duration) -> LayerStore {
        LayerStore {
            fs,
            registry,
            nodes: table::Table::new(),
            infos: Mutex::new(HashMap::new()),
            found: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mount_time: SystemTime::now(),
            ref_ttl,
        }
    }

    /// The filesystem the view shows.
    pub fn fs(&self) -> &Arc<Fs> {
        &self.fs
    }

    fn owner(&self, ino: u64) -> Result<Owner> {
        if ino == ROOT_INO {
            Ok(Owner::Root)
        } else if ino & ALS_INO_BIT != 0 {
            self.nodes
                .key(ino)
                .map(Owner::Own)
                .ok_or_else(|| Error::NotFound(format!("inode {ino}")))
        } else {
            Ok(Owner::Fs(ino))
        }
    }

    fn dir_attr(&self, ino: u64, ttl: Duration) -> Attr {
        let mut a = Attr::dir(ino, self.mount_time, ttl);
        // Writable-looking, so that the kernel passes `use` and `rmdir` on
        // to us (we refuse everything else with EROFS).
        a.perm = 0o755;
        a
    }

    /// Look `name` up in directory `parent`, taking a kernel reference.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let node = match self.owner(parent)? {
            Owner::Fs(ino) => return self.fs.lookup_or_absent(ino, name).await,
            Owner::Root if name::is_part(name) => {
                Node::Ref(Arc::from(std::str::from_utf8(name).expect("ascii")))
            }
            Owner::Root => return Err(not_found(name)),
            Owner::Own(Node::Ref(prefix)) => {
                if let Some(key) = digest_name(name) {
                    self.find(&prefix, &key).await?;
                    Node::Layer(prefix, key)
                } else if name::is_part(name) && name::decode(&prefix, &self.registry).is_err() {
                    // Only a name that is not yet a reference goes on.
                    let more = format!("{prefix}/{}", String::from_utf8_lossy(name));
                    Node::Ref(Arc::from(more))
                } else {
                    return Err(not_found(name));
                }
            }
            Owner::Own(Node::Layer(prefix, key)) => match name {
                b"diff" | b"blob" => {
                    let found = self.find(&prefix, &key).await?;
                    return self.fs.lookup_key(fs_key(&found, name)).await;
                }
                b"info" => Node::Info(prefix, key),
                _ => return Err(not_found(name)),
            },
            Owner::Own(Node::Info(..)) => return Err(errno(libc::ENOTDIR)),
        };
        let mut attr = self.attr(&node, 0).await?;
        attr.ino = self.nodes.hand_out(node, true);
        Ok(attr)
    }

    /// The attributes of `node` (numbered `ino`).
    async fn attr(&self, node: &Node, ino: u64) -> Result<Attr> {
        Ok(match node {
            Node::Ref(_) => self.dir_attr(ino, self.ref_ttl),
            Node::Layer(..) => self.dir_attr(ino, self.ref_ttl),
            Node::Info(prefix, key) => {
                let len = self.info(prefix, key).await?.len() as u64;
                Attr::file(ino, len, self.mount_time, self.ref_ttl)
            }
        })
    }

    /// The kernel dropped `n` references to `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        match self.owner(ino) {
            Ok(Owner::Fs(ino)) => self.fs.forget(ino, n),
            Ok(Owner::Own(_)) => self.nodes.forget(ino, n),
            _ => {}
        }
    }

    /// Attributes of `ino`.
    pub async fn getattr(&self, ino: u64) -> Result<Attr> {
        match self.owner(ino)? {
            Owner::Root => Ok(self.dir_attr(ROOT_INO, IMMUTABLE_TTL)),
            Owner::Own(node) => self.attr(&node, ino).await,
            Owner::Fs(ino) => self.fs.getattr(ino).await,
        }
    }

    /// One reply's worth of directory `ino` (see [`Fs::readdir_page`]). The
    /// root lists nothing (any reference is looked up, like autofs); a
    /// reference lists its image's layers by compressed digest; a layer
    /// lists `diff`, `blob` and `info`.
    pub async fn readdir_page(
        &self,
        ino: u64,
        offset: u64,
        budget: usize,
        plus: bool,
    ) -> Result<Vec<PageEntry>> {
        let entries: Vec<(Vec<u8>, FileKind, Entry)> = match self.owner(ino)? {
            Owner::Fs(ino) => return self.fs.readdir_page(ino, offset, budget, plus).await,
            Owner::Root => Vec::new(),
            Owner::Own(Node::Ref(prefix)) => match self.layers(&prefix).await {
                Ok(layers) => layers
                    .into_iter()
                    .map(|d| {
                        let name = d.to_string().into_bytes();
                        (
                            name,
                            FileKind::Dir,
                            Entry::Own(Node::Layer(prefix.clone(), d)),
                        )
                    })
                    .collect(),
                // A prefix of a longer name: no listing.
                Err(Error::NotFound(_)) => Vec::new(),
                Err(e) => return Err(e),
            },
            Owner::Own(Node::Layer(prefix, key)) => {
                let found = self.find(&prefix, &key).await?;
                vec![
                    (
                        b"diff".to_vec(),
                        FileKind::Dir,
                        Entry::Fs(fs_key(&found, b"diff")),
                    ),
                    (
                        b"blob".to_vec(),
                        FileKind::File,
                        Entry::Fs(fs_key(&found, b"blob")),
                    ),
                    (
                        b"info".to_vec(),
                        FileKind::File,
                        Entry::Own(Node::Info(prefix, key)),
                    ),
                ]
            }
            Owner::Own(Node::Info(..)) => return Err(errno(libc::ENOTDIR)),
        };
        let p = paging::page(offset, budget, plus, entries.len(), |i| entries[i].0.len());
        let mut out = p.dots(ino, ino);
        for (i, (name, kind, entry)) in entries.into_iter().enumerate().take(p.end).skip(p.first) {
            let ino = match entry {
                Entry::Own(node) => self.nodes.hand_out(node, plus),
                Entry::Fs(key) => self.fs.hand_out_key(key, plus),
            };
            out.push(PageEntry {
                ino,
                cookie: Page::cookie(i),
                name,
                kind,
                attr: None,
            });
        }
        Ok(out)
    }

    /// The target of symlink `ino` (only inside a `diff`).
    pub async fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        match self.owner(ino)? {
            Owner::Fs(ino) => self.fs.readlink(ino).await,
            _ => Err(Error::invalid("not a symlink")),
        }
    }

    /// [`LayerStore::open`] for `exec` (see [`Fs::open_exec`]).
    pub async fn open_exec(self: &Arc<Self>, ino: u64) -> Result<u64> {
        match self.owner(ino)? {
            Owner::Fs(ino) => self.fs.open_exec(ino).await,
            _ => self.open(ino).await,
        }
    }

    /// Open `ino` for reading.
    pub async fn open(&self, ino: u64) -> Result<u64> {
        match self.owner(ino)? {
            Owner::Fs(ino) => self.fs.open(ino).await,
            Owner::Own(Node::Info(prefix, key)) => {
                let bytes = self.info(&prefix, &key).await?;
                let fh = ALS_INO_BIT | self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.handles.lock().unwrap().insert(fh, bytes);
                Ok(fh)
            }
            _ => Err(errno(libc::EISDIR)),
        }
    }

    /// Keep the view's own inode numbers in a journal in `state_dir` and
    /// number its file handles apart from earlier servers' (see
    /// [`Fs::with_restart_state`]).
    pub fn with_restart_state(
        mut self,
        state_dir: &std::path::Path,
        generation: u64,
    ) -> std::io::Result<LayerStore> {
        self.nodes = table::Table::with_journal(&state_dir.join("layer-store.journal"))?;
        self.next_fh = AtomicU64::new((generation << 40) | 1);
        Ok(self)
    }

    /// Open `ino` again under the number `fh` an earlier server gave the
    /// kernel (see [`Fs::reopen`]).
    pub async fn reopen(&self, ino: u64, fh: u64) -> Result<()> {
        match self.owner(ino)? {
            Owner::Fs(ino) => self.fs.reopen(ino, fh).await,
            Owner::Own(Node::Info(prefix, key)) => {
                let bytes = self.info(&prefix, &key).await?;
                self.handles.lock().unwrap().entry(fh).or_insert(bytes);
                Ok(())
            }
            _ => Err(errno(libc::EISDIR)),
        }
    }

    /// Read from open file `fh`.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        if fh & ALS_INO_BIT == 0 {
            return self.fs.read(fh, offset, size).await;
        }
        let b = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or_else(|| errno(libc::EBADF))?;
        let start = (offset as usize).min(b.len());
        let end = start.saturating_add(size as usize).min(b.len());
        Ok(b[start..end].to_vec())
    }

    /// Forget open file `fh`.
    pub fn release(&self, fh: u64) {
        if fh & ALS_INO_BIT == 0 {
            self.fs.release(fh);
        } else {
            self.handles.lock().unwrap().remove(&fh);
        }
    }

    /// Extended attribute `name` of `ino` (the tree's, inside a `diff`).
    pub async fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        match self.owner(ino)? {
            Owner::Fs(ino) => self.fs.getxattr(ino, name).await,
            _ => Err(errno(libc::ENODATA)),
        }
    }

    /// Extended attribute names of `ino`.
    pub async fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        match self.owner(ino)? {
            Owner::Fs(ino) => self.fs.listxattr(ino).await,
            _ => Ok(Vec::new()),
        }
    }

    /// `create(parent/name)`: containers/storage's "I use this layer"
    /// (`<key>/use`) is counted and answered ENOENT, as it expects;
    /// anything else is EROFS. Nothing is ever created.
    pub async fn create(&self, parent: u64, name: &[u8]) -> Result<std::convert::Infallible> {
        if let (Owner::Own(Node::Layer(prefix, key)), b"use") = (self.owner(parent)?, name) {
            let found = self.find(&prefix, &key).await?;
            self.fs.use_layer(&found.repo, &found.desc, &found.diff_id);
            return Err(not_found(name));
        }
        Err(Error::ReadOnly)
    }

    /// `rmdir(parent/name)`: containers/storage's "I let go of this layer"
    /// (`rmdir <key>`) is counted and answered ENOENT; anything else is EROFS.
    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        if let Owner::Own(Node::Ref(prefix)) = self.owner(parent)? {
            if let Some(key) = digest_name(name) {
                match self.find(&prefix, &key).await {
                    Ok(found) => {
                        if !self.fs.release_layer(&found.repo, &found.desc.digest) {
                            tracing::debug!(layer = %key, "release of a layer not in use");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(layer = %key, error = %e.chain(), "release of an unknown layer")
                    }
                }
                return Err(not_found(name));
            }
        }
        Err(Error::ReadOnly)
    }

    /// The layer of the image `prefix` names that `key` names (compressed
    /// or TOC digest); once found, found for good (see `found`).
    async fn find(&self, prefix: &Arc<str>, key: &Digest) -> Result<Found> {
        let id = (prefix.clone(), key.clone());
        if let Some(f) = self.found.lock().unwrap().get(&id) {
            return Ok(f.clone());
        }
        let f = self.find_now(prefix, key).await?;
        self.found.lock().unwrap().insert(id, f.clone());
        Ok(f)
    }

    /// [`LayerStore::find`] in the image the reference names now.
    async fn find_now(&self, prefix: &str, key: &Digest) -> Result<Found> {
        let (repo, sel) = name::decode(prefix, &self.registry)?;
        let image = self.fs.resolve_image(&repo, &sel).await?;
        let content = self.fs.content();
        let info = content.manifest(&repo, &image).await?;
        let Manifest::Image(m) = &info.manifest else {
            return Err(Error::NotFound(format!("{repo}@{image} is an index")));
        };
        let config = content.config(&repo, &m.config).await?;
        // podman looks every layer up while it pulls: the image's TOCs (and
        // the files they prioritise), and the files its start-up reads,
        // start now, not when the container runs.
        self.fs.warm_entrypoint_in_background(&repo, &image);
        let what = format!("{repo}@{image}");
        for (index, (desc, diff_id)) in m.layers_with_diff_ids(&config, &what)?.enumerate() {
            let toc = if &desc.digest == key {
                None
            } else if info::toc_keys(desc).contains(key) {
                Some(key.clone())
            } else {
                continue;
            };
            return Ok(Found {
                repo: repo.clone(),
                image: image.clone(),
                index,
                desc: desc.clone(),
                diff_id: diff_id.clone(),
                toc,
            });
        }
        Err(Error::NotFound(format!("{what}: no layer {key}")))
    }

    /// The compressed digests of the layers of the image `prefix` names.
    async fn layers(&self, prefix: &str) -> Result<Vec<Digest>> {
        let (repo, sel) = name::decode(prefix, &self.registry)?;
        let image = self.fs.resolve_image(&repo, &sel).await?;
        let info = self.fs.content().manifest(&repo, &image).await?;
        let Manifest::Image(m) = &info.manifest else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Digest> = Vec::new();
        for l in &m.layers {
            if !out.contains(&l.digest) {
                out.push(l.digest.clone());
            }
        }
        Ok(out)
    }

    /// The `info` bytes of layer `key` of `prefix`'s image.
    async fn info(&self, prefix: &Arc<str>, key: &Digest) -> Result<Bytes> {
        let f = self.find(prefix, key).await?;
        let id = (f.repo.clone(), f.image.clone(), f.index, f.toc.clone());
        if let Some(b) = self.infos.lock().unwrap().get(&id) {
            return Ok(b.clone());
        }
        // With --use-published-indexes, a published index gives a gzip
        // layer's exact size before any layer byte is fetched.
        let content = self.fs.content();
        content.adopt_published_indexes(&f.repo, &f.image).await;
        let mut known_tar = content.known_tar_size(&f.diff_id);
        if known_tar.is_none() && info::needs_trailer_size(&f.desc) {
            // podman writes `diff-size` into the tar headers of `podman
            // save`: a stand-in makes it fail ("write too long").
            known_tar = content.gzip_trailer_size(&f.repo, &f.desc).await;
        }
        let info = info::layer_info(&f.desc, &f.diff_id, f.toc.as_ref(), known_tar);
        let bytes =
            Bytes::from(serde_json::to_vec(&info).map_err(|e| Error::invalid(e.to_string()))?);
        Ok(self
            .infos
            .lock()
            .unwrap()
            .entry(id)
            .or_insert(bytes)
            .clone())
    }
}

/// A listed entry: the view's own node, or a node of the filesystem.
enum Entry {
    Own(Node),
    Fs(Key),
}

/// The filesystem node `diff` or `blob` of a found layer stands for.
fn fs_key(f: &Found, name: &[u8]) -> Key {
    if name == b"blob" {
        return Key::Blob {
            repo: f.repo.clone(),
            image: f.image.clone(),
            blob: f.desc.digest.clone(),
        };
    }
    Key::Node {
        tree: Arc::new(TreeId {
            repo: f.repo.clone(),
            image: f.image.clone(),
            which: TreeWhich::Layer(f.index),
        }),
        node: 0,
    }
}

/// `name` as a digest (`sha256:…`), if it is one.
fn digest_name(name: &[u8]) -> Option<Digest> {
    std::str::from_utf8(name).ok()?.parse().ok()
}
