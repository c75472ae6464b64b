//! A blob's chunk-digest list (issue 19): the SHA-256 of each fixed-size
//! chunk of a blob, recorded while the blob is streamed and verified whole,
//! so that a later reader can fetch and verify any chunk alone (a Range
//! request per run of chunks) instead of the whole blob.
//!
//! Stored and published as JSON:
//! `{"version":1,"blob":"sha256:…","size":N,"chunk_size":1048576,"digests":"<hex>…"}`,
//! `digests` the chunks' SHA-256 digests as one string of 64 hex digits
//! each (compact: 128 KB for a 2 GiB blob).

use serde::{Deserialize, Serialize};

use crate::cache::{Section, Store};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::error::{Error, Result};

/// The chunk size of lists regfs records.
pub const CHUNK_SIZE: u64 = 1 << 20;

/// Smallest and largest chunk size a list may declare.
const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = (64 << 10)..=(64 << 20);

/// Blobs smaller than this are always read whole (no list is kept).
pub const MIN_LISTED_BLOB: u64 = 2 * CHUNK_SIZE;

/// The SHA-256 digests of a blob's fixed-size chunks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    /// The blob the list is of.
    pub blob: Digest,
    /// The blob's size.
    pub size: u64,
    /// Every chunk's size but the last's.
    pub chunk_size: u64,
    /// One digest per chunk, in order.
    pub digests: Vec<Digest>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    version: u32,
    blob: Digest,
    size: u64,
    chunk_size: u64,
    digests: String,
}

impl ChunkList {
    /// The byte range `[start, end)` of chunk `i`.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.chunk_size;
        (start, (start + self.chunk_size).min(self.size))
    }

    /// The chunks covering bytes `[start, end)` (`None`: nothing).
    pub fn covering(&self, start: u64, end: u64) -> Option<(usize, usize)> {
        let end = end.min(self.size);
        (start < end).then(|| {
            (
                (start / self.chunk_size) as usize,
                ((end - 1) / self.chunk_size) as usize,
            )
        })
    }

    /// The JSON form.
    pub fn encode(&self) -> Vec<u8> {
        let digests: String = self.digests.iter().map(|d| d.hex()).collect();
        serde_json::to_vec(&Wire {
            version: 1,
            blob: self.blob.clone(),
            size: self.size,
            chunk_size: self.chunk_size,
            digests,
        })
        .expect("JSON of plain values")
    }

    /// Parse and check a list: version, chunk size within bounds, one
    /// SHA-256 digest per chunk of `size`.
    pub fn decode(bytes: &[u8]) -> Result<ChunkList> {
        let bad = |what: String| Error::invalid(format!("chunk list: {what}"));
        let w: Wire = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if w.version != 1 {
            return Err(bad(format!("version {}", w.version)));
        }
        if !CHUNK_SIZE_RANGE.contains(&w.chunk_size) {
            return Err(bad(format!("chunk size {}", w.chunk_size)));
        }
        let n = w.size.div_ceil(w.chunk_size);
        if w.digests.len() as u64 != n * 64 || !w.digests.is_ascii() {
            return Err(bad(format!(
                "{} hex digits for {n} chunks",
                w.digests.len()
            )));
        }
        let digests = (0..n as usize)
            .map(|i| format!("sha256:{}", &w.digests[i * 64..i * 64 + 64]).parse::<Digest>())
            .collect::<Result<Vec<_>>>()
            .map_err(|e| bad(e.to_string()))?;
        Ok(ChunkList {
            blob: w.blob,
            size: w.size,
            chunk_size: w.chunk_size,
            digests,
        })
    }
}

/// The chunk list this cache recorded for blob `digest`, as its file
/// (`regfs index export`; the same bytes `regfs index push` publishes).
pub fn export_chunk_list(store: &Store, digest: &Digest) -> Result<Vec<u8>> {
    let bytes = store
        .read(Section::ChunkList, digest)
        .ok_or_else(|| Error::NotFound(format!("no chunk list for blob {digest} in the cache")))?;
    let list = ChunkList::decode(&bytes)?;
    if &list.blob != digest {
        return Err(Error::invalid(format!(
            "the cached chunk list of {digest} names {}",
            list.blob
        )));
    }
    Ok(bytes)
}

/// Check a chunk-list file and store it (`regfs index import`). Trusted
/// like a list this cache recorded: each chunk read is still checked
/// against it, but nothing checks the list against the blob.
pub fn import_chunk_list(store: &Store, bytes: &[u8]) -> Result<ChunkList> {
    let list = ChunkList::decode(bytes)?;
    store.put(Section::ChunkList, &list.blob, &list.encode())?;
    Ok(list)
}

/// Records a [`ChunkList`] of bytes fed in order.
pub struct ChunkRecorder {
    chunk_size: u64,
    filled: u64,
    size: u64,
    hasher: Hasher,
    digests: Vec<Digest>,
}

impl Default for ChunkRecorder {
    fn default() -> Self {
        ChunkRecorder {
            chunk_size: CHUNK_SIZE,
            filled: 0,
            size: 0,
            hasher: Hasher::new(Algorithm::Sha256),
            digests: Vec::new(),
        }
    }
}

impl ChunkRecorder {
    /// Feed the next bytes of the blob.
    pub fn update(&mut self, mut data: &[u8]) {
        self.size += data.len() as u64;
        while !data.is_empty() {
            let take = ((self.chunk_size - self.filled) as usize).min(data.len());
            self.hasher.update(&data[..take]);
            self.filled += take as u64;
            data = &data[take..];
            if self.filled == self.chunk_size {
                let h = std::mem::replace(&mut self.hasher, Hasher::new(Algorithm::Sha256));
                self.digests.push(h.finish());
                self.filled = 0;
            }
        }
    }

    /// The list, for blob `blob` (whose digest the caller verified).
    pub fn finish(mut self, blob: Digest) -> ChunkList {
        if self.filled > 0 {
            self.digests.push(self.hasher.finish());
        }
        ChunkList {
            blob,
            size: self.size,
            chunk_size: self.chunk_size,
            digests: self.digests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_lists_round_trip_and_cover_ranges() {
        let data: Vec<u8> = (0..(2 * CHUNK_SIZE + 5)).map(|i| (i % 251) as u8).collect();
        let mut r = ChunkRecorder::default();
        for piece in data.chunks(300_001) {
            r.update(piece);
        }
        let blob = Digest::sha256_of(&data);
        let list = r.finish(blob.clone());
        assert_eq!(list.digests.len(), 3);
        assert_eq!(
            list.digests[2],
            Digest::sha256_of(&data[2 * CHUNK_SIZE as usize..])
        );
        assert_eq!(list.range(2), (2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 5));
        assert_eq!(list.covering(CHUNK_SIZE - 1, CHUNK_SIZE + 1), Some((0, 1)));
        assert_eq!(list.covering(5, 5), None);
        assert_eq!(list.covering(list.size, list.size + 9), None);
        let back = ChunkList::decode(&list.encode()).unwrap();
        assert_eq!(back, list);
        // Malformed lists are refused, not trusted.
        let mut bad = list.clone();
        bad.digests.pop();
        assert!(ChunkList::decode(&bad.encode()).is_err());
        bad = list.clone();
        bad.chunk_size = 1;
        assert!(ChunkList::decode(&bad.encode()).is_err());
        assert!(ChunkList::decode(b"{\"version\":2}").is_err());
        // Exported from one cache, imported into another.
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            Store::open(a.path(), 1 << 30).unwrap(),
            Store::open(b.path(), 1 << 30).unwrap(),
        );
        assert!(matches!(
            export_chunk_list(&a, &blob),
            Err(Error::NotFound(_))
        ));
        a.put(Section::ChunkList, &blob, &list.encode()).unwrap();
        let file = export_chunk_list(&a, &blob).unwrap();
        assert_eq!(import_chunk_list(&b, &file).unwrap(), list);
        assert_eq!(export_chunk_list(&b, &blob).unwrap(), file);
        assert!(import_chunk_list(&b, b"RGFSIDX1 not a list").is_err());
    }
}
