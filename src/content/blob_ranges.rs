//! Large blobs read by ranges, still verified (issue 19): with a chunk-digest
//! list ([`super::chunk_list`]) for a blob not in the store whole, a read
//! fetches only the chunks covering it (one Range request per run of up to
//! [`MAX_RUN_CHUNKS`]), checks each against its digest, keeps verified
//! chunks in the chunk cache by digest, and only then serves. A chunk that
//! fails is EIO for the reads it covers, a log line, and nothing cached.
//! Without a list, a blob is fetched and verified whole, as always.

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;

use super::chunk_list::{ChunkList, MIN_LISTED_BLOB};
use super::pieces::{PieceKind, Verified};
use super::Content;
use crate::cache::Section;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::BlobRef;
use crate::registry::RegistryApi;

/// Most chunks fetched by one Range request.
pub const MAX_RUN_CHUNKS: u64 = 4;

/// A blob served by ranges from its chunk list.
#[derive(Debug)]
pub struct ChunkedBlob {
    /// The repository to fetch from.
    pub repo: String,
    /// The blob.
    pub desc: BlobRef,
    /// Its chunk digests.
    pub list: Arc<ChunkList>,
}

/// The chunks of one blob as pieces, numbered.
struct BlobChunkKind<'a> {
    client: &'a dyn RegistryApi,
    blob: &'a ChunkedBlob,
}

impl PieceKind for BlobChunkKind<'_> {
    type Piece = usize;

    fn digest<'s>(&'s self, i: &'s usize) -> &'s Digest {
        &self.blob.list.digests[*i]
    }

    fn extent(&self, i: &usize) -> (u64, u64) {
        (*i as u64, *i as u64 + 1)
    }

    fn fetch_run<'a>(&'a self, run: &'a [usize]) -> BoxFuture<'a, Result<Verified>> {
        Box::pin(async move {
            let (blob, list) = (&self.blob.desc.digest, &self.blob.list);
            let (start, end) = (list.range(run[0]).0, list.range(run[run.len() - 1]).1);
            let started = Instant::now();
            let bytes = self
                .client
                .blob_range(&self.blob.repo, blob, start, end - start)
                .await?;
            tracing::info!(
                digest = %blob, offset = start, bytes = bytes.len(), chunks = run.len(),
                ms = started.elapsed().as_millis() as u64, cache = "miss", "fetched blob chunks"
            );
            let expected: Vec<(usize, Digest)> =
                run.iter().map(|&i| (i, list.digests[i].clone())).collect();
            let list = list.clone();
            let blob = blob.clone();
            crate::blocking::run(move || {
                let mut out = Vec::with_capacity(expected.len());
                for (i, want) in expected {
                    let (s, e) = list.range(i);
                    let piece = bytes.get((s - start) as usize..(e - start) as usize);
                    let got = piece.map(Digest::sha256_of);
                    if got.as_ref() != Some(&want) {
                        tracing::error!(
                            digest = %blob, chunk = i, offset = s, expected = %want,
                            "blob chunk failed verification; not served, not cached"
                        );
                        let e = Error::DigestMismatch {
                            what: format!("chunk {i} (bytes {s}..{e}) of blob {blob}"),
                            expected: want.to_string(),
                            actual: got.map_or("a short read".into(), |d| d.to_string()),
                        };
                        return Ok((out, Some(e)));
                    }
                    out.push(piece.unwrap_or_default().to_vec());
                }
                Ok((out, None))
            })
            .await
        })
    }
}

impl Content {
    /// `desc` of `repo@image` as a [`ChunkedBlob`], when it is large, not
    /// in the store whole, and a chunk list is known for it: recorded here
    /// when it was streamed, or published next to the image and adopted
    /// (`--use-published-indexes`). `None`: read it whole.
    pub async fn chunked_blob(
        &self,
        repo: &str,
        image: &Digest,
        desc: &BlobRef,
    ) -> Option<Arc<ChunkedBlob>> {
        if desc.size < MIN_LISTED_BLOB
            || self.store.get(Section::Blob, &desc.digest).is_some()
            || self.chunk_list_revoked(&desc.digest)
        {
            return None;
        }
        let recorded = self
            .store
            .read(Section::ChunkList, &desc.digest)
            .and_then(|b| ChunkList::decode(&b).ok())
            .filter(|l| l.blob == desc.digest && l.size == desc.size);
        let list = match recorded {
            Some(l) => Arc::new(l),
            None => self.published_chunk_list(repo, image, desc).await?,
        };
        Some(Arc::new(ChunkedBlob {
            repo: repo.to_string(),
            desc: desc.clone(),
            list,
        }))
    }

    /// Up to `len` bytes of `blob` at `offset`, from verified chunks.
    pub async fn read_blob_range(
        &self,
        blob: &ChunkedBlob,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>> {
        if self.chunk_list_revoked(&blob.desc.digest) {
            return Err(Error::DigestMismatch {
                what: format!(
                    "blob {}: its published chunk list did not match the blob (revoked)",
                    blob.desc.digest
                ),
                expected: blob.desc.digest.to_string(),
                actual: "other chunks".into(),
            });
        }
        let end = offset.saturating_add(len as u64).min(blob.list.size);
        let Some((first, last)) = blob.list.covering(offset, end) else {
            return Ok(Vec::new());
        };
        let kind = BlobChunkKind {
            client: &*self.client,
            blob,
        };
        let wanted: Vec<usize> = (first..=last).collect();
        let data = self.pieces(&kind, &wanted, MAX_RUN_CHUNKS).await?;
        let list = blob.list.clone();
        crate::blocking::run(move || {
            let mut out = vec![0u8; (end - offset) as usize];
            for (i, piece) in wanted.into_iter().zip(data) {
                let (s, e) = list.range(i);
                let (from, to) = (s.max(offset), e.min(end));
                piece.read_exact_at(
                    &mut out[(from - offset) as usize..(to - offset) as usize],
                    from - s,
                )?;
            }
            Ok(out)
        })
        .await
    }
}
