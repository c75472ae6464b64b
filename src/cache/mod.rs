//! The content store: content-addressed files on disk, written only after
//! verification, bounded by size with least-recently-used eviction, and one
//! fetch per key no matter how many readers wait for it.
//!
//! Layout under the cache directory (mode 0700, files 0600, never executable):
//!
//! ```text
//! blobs/sha256/<hex>     raw blobs as the registry serves them (manifests, configs, raw layers)
//! layers/sha256/<hex>    uncompressed layer tars, named by diff_id
//! index/sha256/<hex>     the layer index (a serialized tree), named by diff_id
//! chunks/sha256/<hex>    verified uncompressed eStargz / zstd:chunked chunks, by chunk digest
//! chunks/blake3/<hex>    verified uncompressed spans of gzip layers, by span digest
//! toc/sha256/<hex>       the index of a lazy layer, named by its verified TOC's anchor digest
//! spans/sha256/<hex>     the span index of a gzip layer (zlib checkpoints, span digests), by diff_id
//! chunklists/sha256/<hex> a blob's chunk-digest list, recorded when it was streamed whole, by blob digest
//! tmp/                   downloads in progress; emptied at start
//! ```

mod flight;
mod lru;

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use flight::{FlightGuard, KeyedLocks};
use lru::Lru;

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};

/// What a cached file holds; each kind is one directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Section {
    /// Raw blobs by blob digest.
    Blob,
    /// Uncompressed layer tars by diff_id.
    Layer,
    /// Layer indexes by diff_id.
    Index,
    /// Verified chunks of lazily served layers, by chunk digest (shared by
    /// every layer and image that has the same chunk).
    Chunk,
    /// Indexes of lazily served layers built from a verified TOC, by the
    /// digest that verified it (TOC digest or zstd:chunked manifest checksum).
    Toc,
    /// Span indexes of gzip layers (checkpoints to inflate from and a digest
    /// per span), by diff_id: what serves an evicted layer by Range requests.
    Span,
    /// Chunk-digest lists of blobs streamed whole (a SHA-256 per 1 MiB), by
    /// blob digest: what serves a large blob by ranges on another machine.
    ChunkList,
}

impl Section {
    fn dir(self) -> &'static str {
        match self {
            Section::Blob => "blobs",
            Section::Layer => "layers",
            Section::Index => "index",
            Section::Chunk => "chunks",
            Section::Toc => "toc",
            Section::Span => "spans",
            Section::ChunkList => "chunklists",
        }
    }
    const ALL: [Section; 7] = [
        Section::Blob,
        Section::Layer,
        Section::Index,
        Section::Chunk,
        Section::Toc,
        Section::Span,
        Section::ChunkList,
    ];
}

/// Counters for tests, status and metrics.
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Lookups that found the content on disk.
    pub hits: AtomicU64,
    /// Lookups that did not.
    pub misses: AtomicU64,
    /// Files removed to stay under the size limit.
    pub evictions: AtomicU64,
}

/// A bounded, content-addressed store of verified files.
pub struct Store {
    root: PathBuf,
    limit: u64,
    lru: Mutex<Lru>,
    flights: KeyedLocks,
    tmp_seq: AtomicU64,
    /// Hit, miss and eviction counters.
    pub stats: StoreStats,
}

/// A file being written into the store: renamed into place by [`Store::commit`],
/// removed on drop otherwise.
pub struct TempFile {
    /// The open file, for writing.
    pub file: File,
    path: PathBuf,
    committed: bool,
}

impl TempFile {
    /// Where the temporary file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Store {
    /// Open (creating) a store at `root`, bounded to `limit` bytes. Files already
    /// there were verified before they were renamed in, so they are reused as-is.
    pub fn open(root: &Path, limit: u64) -> Result<Store> {
        Store::open_with(root, limit, true)
    }

    /// Open a store for an offline tool (`regfs index`): unbounded, and
    /// leaving `tmp/` alone (a daemon may be writing there). A running daemon
    /// sees what is added only after a restart.
    pub fn open_offline(root: &Path) -> Result<Store> {
        Store::open_with(root, u64::MAX, false)
    }

    fn open_with(root: &Path, limit: u64, clean_tmp: bool) -> Result<Store> {
        create_private_dir(root)?;
        let tmp = root.join("tmp");
        if tmp.exists() && clean_tmp {
            fs::remove_dir_all(&tmp)?;
        }
        create_private_dir(&tmp)?;
        let mut lru = Lru::default();
        let mut found: Vec<(std::time::SystemTime, PathBuf, u64)> = Vec::new();
        for kind in Section::ALL {
            for alg in Algorithm::ALL {
                let dir = root.join(kind.dir()).join(alg.as_str());
                fs::create_dir_all(&dir)?;
                for e in fs::read_dir(&dir)? {
                    let e = e?;
                    let md = e.metadata()?;
                    if md.is_file() {
                        let t = md.accessed().or_else(|_| md.modified())?;
                        found.push((t, e.path(), md.len()));
                    }
                }
            }
            fs::set_permissions(root.join(kind.dir()), fs::Permissions::from_mode(0o700))?;
        }
        // Least recently used first, across kinds.
        found.sort();
        for (_, p, len) in found {
            lru.insert(p, len);
        }
        let store = Store {
            root: root.to_path_buf(),
            limit,
            lru: Mutex::new(lru),
            flights: KeyedLocks::default(),
            tmp_seq: AtomicU64::new(0),
            stats: StoreStats::default(),
        };
        store.evict_to(limit);
        Ok(store)
    }

    /// The path content of `kind` named `digest` has (or would have).
    pub fn path(&self, kind: Section, digest: &Digest) -> PathBuf {
        self.root
            .join(kind.dir())
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The cached file's path if present, marking it recently used.
    pub fn get(&self, kind: Section, digest: &Digest) -> Option<PathBuf> {
        let p = self.path(kind, digest);
        let hit = self.lru.lock().unwrap().touch(&p);
        let present = hit && p.exists();
        if present {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            Some(p)
        } else {
            if hit {
                self.lru.lock().unwrap().remove(&p);
            }
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Read a small cached file whole.
    pub fn read(&self, kind: Section, digest: &Digest) -> Option<Vec<u8>> {
        self.get(kind, digest).and_then(|p| fs::read(p).ok())
    }

    /// A new temporary file in the store's `tmp/`.
    pub fn temp(&self) -> Result<TempFile> {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok(TempFile {
            file,
            path,
            committed: false,
        })
    }

    /// Move verified content into place. The caller has checked `digest`; this only
    /// renames, accounts the size, and evicts older content to stay under the limit.
    pub fn commit(&self, mut tmp: TempFile, kind: Section, digest: &Digest) -> Result<PathBuf> {
        tmp.file.sync_data()?;
        let len = tmp.file.metadata()?.len();
        let dest = self.path(kind, digest);
        fs::rename(&tmp.path, &dest)?;
        tmp.committed = true;
        self.lru.lock().unwrap().insert(dest.clone(), len);
        self.evict_to(self.limit);
        Ok(dest)
    }

    /// Store small verified bytes under `digest`.
    pub fn put(&self, kind: Section, digest: &Digest, bytes: &[u8]) -> Result<PathBuf> {
        use std::io::Write;
        let mut t = self.temp()?;
        t.file.write_all(bytes)?;
        self.commit(t, kind, digest)
    }

    /// Wait for exclusive right to fetch `key`: concurrent callers for one key
    /// queue here, and the later ones find the content in the store.
    pub async fn flight(&self, key: String) -> FlightGuard {
        self.flights.lock(key).await
    }

    /// [`Store::flight`] for each of the chunks `digests` (duplicates
    /// allowed), taken in digest order so that two callers wanting
    /// overlapping sets cannot deadlock. The chunk cache's flight keys are
    /// shared by eStargz chunks and gzip spans.
    pub async fn chunk_flights(&self, mut digests: Vec<&Digest>) -> Vec<FlightGuard> {
        digests.sort();
        digests.dedup();
        let mut guards = Vec::with_capacity(digests.len());
        for d in digests {
            guards.push(self.flight(format!("chunk {d}")).await);
        }
        guards
    }

    /// Never evict `kind`/`digest` (present now or committed later) until as
    /// many [`Store::unpin`]s: content a running container depends on.
    pub fn pin(&self, kind: Section, digest: &Digest) {
        self.lru.lock().unwrap().pin(self.path(kind, digest));
    }

    /// Undo one [`Store::pin`]; the content becomes evictable again when
    /// no pin is left.
    pub fn unpin(&self, kind: Section, digest: &Digest) {
        self.lru.lock().unwrap().unpin(&self.path(kind, digest));
    }

    /// Bytes currently accounted in the store.
    pub fn size(&self) -> u64 {
        self.lru.lock().unwrap().total()
    }

    /// The configured limit in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn evict_to(&self, limit: u64) {
        let victims = self.lru.lock().unwrap().evict_to(limit);
        for p in victims {
            tracing::debug!(path = %p.display(), "cache: evict");
            self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            // Open readers keep their descriptors; the name goes now.
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), error = %e, "cache: cannot evict");
                }
            }
        }
    }
}

fn create_private_dir(p: &Path) -> Result<()> {
    fs::create_dir_all(p).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cache directory {}: {e}", p.display()),
        ))
    })?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_digest_algorithm_has_a_home_and_is_found_again() {
        let dir = tempfile::tempdir().unwrap();
        let digests: Vec<Digest> = Algorithm::ALL
            .iter()
            .map(|&a| {
                let mut h = crate::digest::Hasher::new(a);
                h.update(b"span");
                h.finish()
            })
            .collect();
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            for d in &digests {
                s.put(Section::Chunk, d, b"span").unwrap();
            }
            assert_eq!(s.size(), 4 * digests.len() as u64);
        }
        // Reopened, the store accounts (and can evict) all of them.
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.size(), 4 * digests.len() as u64);
        for d in &digests {
            assert_eq!(s.read(Section::Chunk, d).unwrap(), b"span", "{d}");
        }
    }

    #[test]
    fn put_get_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::sha256_of(b"hello");
        {
            let s = Store::open(dir.path(), 1 << 20).unwrap();
            assert!(s.get(Section::Blob, &d).is_none());
            s.put(Section::Blob, &d, b"hello").unwrap();
            assert_eq!(s.read(Section::Blob, &d).unwrap(), b"hello");
            let mode = fs::metadata(s.path(Section::Blob, &d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let s = Store::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.read(Section::Blob, &d).unwrap(), b"hello");
        assert_eq!(s.size(), 5);
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 25).unwrap();
        let ds: Vec<Digest> = (0..3u8).map(|i| Digest::sha256_of(&[i])).collect();
        s.put(Section::Blob, &ds[0], &[0; 10]).unwrap();
        s.put(Section::Blob, &ds[1], &[1; 10]).unwrap();
        assert!(s.get(Section::Blob, &ds[0]).is_some()); // 0 is now more recent than 1
        s.put(Section::Blob, &ds[2], &[2; 10]).unwrap();
        assert!(
            s.get(Section::Blob, &ds[1]).is_none(),
            "1 was least recently used"
        );
        assert!(s.get(Section::Blob, &ds[0]).is_some());
        assert!(s.get(Section::Blob, &ds[2]).is_some());
        assert!(s.size() <= 25);
        assert_eq!(s.stats.evictions.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn uncommitted_temp_files_vanish() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        let t = s.temp().unwrap();
        let p = t.path().to_path_buf();
        assert!(p.exists());
        drop(t);
        assert!(!p.exists());
    }
}
