//! The one-pass pipeline run when a layer blob is fetched: hash the
//! compressed bytes, decompress, hash and store the uncompressed tar, and
//! index it, all from the same stream.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::layer::compression::Compression;
use crate::layer::index::{index_tar_counted, Limits};
use crate::layer::span::{SpanBuilder, SpanHasher, SpanIndex, SpanReader};
use crate::layer::tree::Tree;

/// What an ingest saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngestStats {
    /// Bytes of the blob as fetched.
    pub compressed_bytes: u64,
    /// Bytes of the uncompressed tar (what was written to `out`).
    pub uncompressed_bytes: u64,
    /// Tar entries indexed.
    pub entries: u64,
}

/// Read the layer blob `compressed` to its end, write its uncompressed tar to
/// `out` (from `out`'s current position, which should be the start of an
/// empty file: the index's offsets are stream offsets), and index it as layer
/// `layer`.
///
/// Both digests are checked after everything was read: the blob's
/// (`what` = `layer blob sha256:…`) first, then the diff_id (`layer diff_id
/// sha256:…`); either is [`Error::DigestMismatch`]. `out` is only valid if
/// this returns `Ok`; the caller renames it into place then, and discards it
/// otherwise.
///
/// Errors: the compressed stream failing to read is [`Error::Io`]; corrupt
/// compressed data or a malformed tar is [`Error::Invalid`] (unless the blob
/// digest also mismatches, which is reported instead: a damaged download is
/// the likelier story); more than `limits.max_uncompressed` bytes is
/// [`Error::TooLarge`] as soon as the limit is crossed; writing `out` failing
/// is [`Error::Io`].
pub fn ingest<R: Read + Send>(
    compressed: R,
    compression: Compression,
    blob_digest: &Digest,
    diff_id: &Digest,
    layer: u16,
    out: &mut File,
    limits: &Limits,
) -> Result<(Tree, IngestStats)> {
    ingest_spans(
        compressed,
        compression,
        BlobCheck::Hash(blob_digest),
        diff_id,
        layer,
        out,
        limits,
        None,
    )
    .map(|(tree, stats, _)| (tree, stats))
}

/// [`ingest()`], also building the layer's [`SpanIndex`] (checkpoints at
/// least `span_every` uncompressed bytes apart) in the same pass when the
/// layer is gzip and `span_every` is given: the gzip stream is then inflated
/// with zlib's `Z_BLOCK` (see [`crate::layer::span`]) instead of flate2. The
/// digest checks are the same; the index is only returned with `Ok`, so it
/// describes a verified layer.
///
/// The work is split across two threads joined by a bounded queue of chunks
/// (so memory stays at [`QUEUE`] × [`CHUNK`]): a decoder thread hashes the
/// compressed bytes and decompresses them; the calling thread hashes the
/// uncompressed stream (diff_id and span digests), writes it to `out` and
/// indexes the tar. On two cores this takes about the time of the slower
/// half instead of the sum.
#[allow(clippy::too_many_arguments)]
pub fn ingest_spans<R: Read + Send>(
    compressed: R,
    compression: Compression,
    blob: BlobCheck<'_>,
    diff_id: &Digest,
    layer: u16,
    out: &mut File,
    limits: &Limits,
    span_every: Option<u64>,
) -> Result<(Tree, IngestStats, Option<SpanIndex>)> {
    let blob_digest = blob.digest();
    let span_every = span_every.filter(|_| compression == Compression::Gzip);
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let (recycle_tx, recycle_rx) = mpsc::channel();
    let check_blob = AtomicBool::new(false);
    let decoder = Decoder {
        compression,
        blob,
        span_every,
        limit: limits.max_uncompressed,
        tx,
        recycle: recycle_rx,
        check_blob: &check_blob,
    };
    std::thread::scope(|s| {
        let decoded = std::thread::Builder::new()
            .name("regfs-inflate".into())
            .spawn_scoped(s, move || decoder.run(compressed))
            .map_err(Error::Io)?;
        let mut chunks = Chunks {
            rx,
            recycle: recycle_tx,
            buf: Vec::new(),
            pos: 0,
            diff: Hasher::new(diff_id.algorithm()),
            spans: span_every.map(|_| SpanHasher::default()),
            out: &mut *out,
            count: 0,
            failure: None,
        };
        let indexed =
            index_tar_counted(&mut chunks, layer, limits).and_then(|r| chunks.drain().map(|_| r));
        let (tree, entries) = match indexed {
            Ok(v) => v,
            Err(e) => {
                let e = chunks.failure.take().unwrap_or(e);
                // A damaged download explains a broken tar better than the
                // tar does: let the decoder hash the rest of the blob.
                if matches!(e, Error::Invalid(_)) {
                    check_blob.store(true, Ordering::SeqCst);
                }
                drop(chunks);
                let actual = match decoded.join() {
                    Ok(Ok(Decoded::Abandoned(actual))) => actual,
                    Ok(Ok(Decoded::Complete { blob_actual, .. })) => blob_actual,
                    _ => None,
                };
                if let (Error::Invalid(_), Some(actual)) = (&e, actual) {
                    actual.expect(blob_digest, &format!("layer blob {blob_digest}"))?;
                }
                return Err(e);
            }
        };
        let uncompressed_bytes = chunks.count;
        let diff_actual = chunks.diff.finish();
        let span_digests = chunks.spans.map(SpanHasher::finish);
        let Ok(Ok(Decoded::Complete {
            blob_actual,
            compressed_bytes,
            spans,
        })) = decoded.join()
        else {
            // The decoder reports its failures through the queue, which
            // ended cleanly: it cannot have failed.
            return Err(Error::invalid("layer: the decoder thread stopped early"));
        };
        if let Some(actual) = blob_actual {
            actual.expect(blob_digest, &format!("layer blob {blob_digest}"))?;
        }
        diff_actual.expect(diff_id, &format!("layer diff_id {diff_id}"))?;
        let index = match (spans, span_digests) {
            (Some(b), Some(d)) => Some(b.finish_with(compressed_bytes, d)?),
            _ => None,
        };
        if let Some(ix) = &index {
            if ix.uncompressed_size != uncompressed_bytes {
                return Err(Error::invalid(format!(
                    "layer {blob_digest}: span index covers {} of {uncompressed_bytes} bytes",
                    ix.uncompressed_size
                )));
            }
        }
        Ok((
            tree,
            IngestStats {
                compressed_bytes,
                uncompressed_bytes,
                entries,
            },
            index,
        ))
    })
}

/// Bytes of uncompressed data per queued chunk.
pub const CHUNK: usize = 256 << 10;
/// Chunks the decoder may run ahead of the indexer.
pub const QUEUE: usize = 16;

/// What the decoder thread sends.
enum Msg {
    /// The next uncompressed bytes, and the offsets where spans started
    /// while decoding up to their end.
    Data(Vec<u8>, Vec<u64>),
    /// Decoding stopped with this error; nothing follows.
    Failed(Error),
}

/// How the decoder thread ended.
enum Decoded {
    /// The whole blob was read and decoded.
    Complete {
        /// `None` when the source checks the digest itself.
        blob_actual: Option<Digest>,
        compressed_bytes: u64,
        spans: Option<Box<SpanBuilder>>,
    },
    /// It failed (and said so in the queue), or the indexer stopped reading;
    /// with the blob's actual digest if the indexer asked for it.
    Abandoned(Option<Digest>),
}

/// The decoder half: compressed bytes in, hashed; chunks of uncompressed
/// bytes out, never more than `limit` (plus one byte, to tell a bomb).
struct Decoder<'a> {
    compression: Compression,
    blob: BlobCheck<'a>,
    span_every: Option<u64>,
    limit: u64,
    tx: mpsc::SyncSender<Msg>,
    recycle: mpsc::Receiver<Vec<u8>>,
    check_blob: &'a AtomicBool,
}

impl Decoder<'_> {
    fn run<R: Read>(self, compressed: R) -> Result<Decoded> {
        let source_err: RefCell<Option<io::Error>> = RefCell::new(None);
        let mut source = Source {
            inner: compressed,
            hasher: match self.blob {
                BlobCheck::Hash(d) => Some(Hasher::new(d.algorithm())),
                BlobCheck::BySource(_) => None,
            },
            count: 0,
            err: &source_err,
        };
        let spans = RefCell::new(SpanBuilder::deferred(self.span_every.unwrap_or(u64::MAX)));
        let mut decoder: Box<dyn Read + '_> = match self.span_every {
            // The diff_id check covers what the gzip CRC would.
            Some(_) => match SpanReader::new(&mut source, &spans).and_then(SpanReader::without_crc)
            {
                Ok(r) => Box::new(r),
                Err(e) => return self.fail(Error::Io(e)),
            },
            None => self.compression.decoder(&mut source),
        };
        let mut count = 0u64;
        loop {
            let mut buf = self.recycle.try_recv().unwrap_or_default();
            buf.resize(CHUNK, 0);
            // Ask for at most one byte past the limit, so a bomb stops right there.
            let room = self.limit.saturating_sub(count).saturating_add(1);
            let want = CHUNK.min(usize::try_from(room).unwrap_or(usize::MAX));
            let n = match fill(&mut decoder, &mut buf[..want]) {
                Ok(n) => n,
                Err(e) => {
                    drop(decoder);
                    // Take the source's error before reading the source again
                    // (`blob_mismatch` does): a borrow held across that read
                    // would panic.
                    let source_error = source_err.borrow_mut().take();
                    let e = match source_error {
                        Some(src) => Error::Io(src),
                        None => {
                            let corrupt = Error::Invalid(format!(
                                "layer blob: corrupt {:?} data: {e}",
                                self.compression
                            ));
                            // A damaged download explains corrupt data better.
                            match self.blob_mismatch(source) {
                                Some(mismatch) => mismatch,
                                None => corrupt,
                            }
                        }
                    };
                    return self.fail(e);
                }
            };
            if count + n as u64 > self.limit {
                let msg = format!("layer: uncompressed stream exceeds {} bytes", self.limit);
                return self.fail(Error::TooLarge(msg));
            }
            if n == 0 {
                break;
            }
            count += n as u64;
            buf.truncate(n);
            let boundaries = spans.borrow_mut().take_boundaries();
            if self.tx.send(Msg::Data(buf, boundaries)).is_err() {
                // The indexer stopped; it may want the blob judged.
                drop(decoder);
                let actual = self.check_blob.load(Ordering::SeqCst).then(|| {
                    let mut capped = (&mut source).take(self.limit);
                    io::copy(&mut capped, &mut io::sink()).ok()?;
                    source.finish().0
                });
                return Ok(Decoded::Abandoned(actual.flatten()));
            }
        }
        drop(decoder);
        // The decoder stopped at the end of the compressed data; hash any rest.
        if let Err(e) = io::copy(&mut source, &mut io::sink()) {
            let e = source_err.borrow_mut().take().unwrap_or(e);
            return self.fail(Error::Io(e));
        }
        let (blob_actual, compressed_bytes) = source.finish();
        Ok(Decoded::Complete {
            blob_actual,
            compressed_bytes,
            spans: self.span_every.map(|_| Box::new(spans.into_inner())),
        })
    }

    /// The blob's digest mismatch, if reading the rest of `source` (capped)
    /// shows one.
    fn blob_mismatch<R: Read>(&self, mut source: Source<'_, R>) -> Option<Error> {
        let mut capped = (&mut source).take(self.limit);
        io::copy(&mut capped, &mut io::sink()).ok()?;
        let actual = source.finish().0?;
        let digest = self.blob.digest();
        actual.expect(digest, &format!("layer blob {digest}")).err()
    }

    fn fail(&self, e: Error) -> Result<Decoded> {
        let _ = self.tx.send(Msg::Failed(e));
        Ok(Decoded::Abandoned(None))
    }
}

/// Read into `buf` until it is full or the stream ends.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How [`ingest_spans`] knows the compressed bytes are the blob it was given.
#[derive(Clone, Copy, Debug)]
pub enum BlobCheck<'a> {
    /// Hash them here and compare with this digest.
    Hash(&'a Digest),
    /// The reader checks them against this digest itself and fails, instead
    /// of ending, on a mismatch (as the registry client's `BlobStream` does):
    /// hashing them again would only cost time.
    BySource(&'a Digest),
}

impl BlobCheck<'_> {
    /// The blob's digest.
    pub fn digest(&self) -> &Digest {
        match self {
            BlobCheck::Hash(d) | BlobCheck::BySource(d) => d,
        }
    }
}

/// The compressed stream, counted and (for [`BlobCheck::Hash`]) hashed;
/// records its own read errors so they are not mistaken for corrupt data.
struct Source<'e, R> {
    inner: R,
    hasher: Option<Hasher>,
    count: u64,
    err: &'e RefCell<Option<io::Error>>,
}

impl<R> Source<'_, R> {
    /// The digest of what was read (if hashed here) and its length.
    fn finish(self) -> (Option<Digest>, u64) {
        (self.hasher.map(Hasher::finish), self.count)
    }
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                if let Some(h) = self.hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                self.count += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                *self.err.borrow_mut() = Some(e);
                Err(copy)
            }
        }
    }
}

/// The indexer half: reads the decoder's chunks as one stream. Each chunk is
/// hashed (diff_id and spans), counted and written to `out` as it arrives,
/// whole, before the tar reader sees any of it.
struct Chunks<'o> {
    rx: mpsc::Receiver<Msg>,
    recycle: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    diff: Hasher,
    spans: Option<SpanHasher>,
    out: &'o mut File,
    count: u64,
    /// Why reading stopped, when it was not the tar's fault.
    failure: Option<Error>,
}

impl Chunks<'_> {
    /// Take the next chunk; `false` at the end of the stream.
    fn next_chunk(&mut self) -> io::Result<bool> {
        match self.rx.recv() {
            // The decoder dropped its end after the last chunk.
            Err(_) => Ok(false),
            Ok(Msg::Failed(e)) => {
                let msg = e.to_string();
                let kind = match &e {
                    Error::Io(io) => io.kind(),
                    _ => io::ErrorKind::InvalidData,
                };
                self.failure = Some(e);
                Err(io::Error::new(kind, msg))
            }
            Ok(Msg::Data(data, boundaries)) => {
                self.diff.update(&data);
                if let Some(s) = self.spans.as_mut() {
                    s.boundaries(boundaries);
                    s.update(&data);
                }
                if let Err(e) = self.out.write_all(&data) {
                    let copy = io::Error::new(e.kind(), e.to_string());
                    self.failure = Some(Error::Io(e));
                    return Err(copy);
                }
                self.count += data.len() as u64;
                let old = std::mem::replace(&mut self.buf, data);
                let _ = self.recycle.send(old);
                self.pos = 0;
                Ok(true)
            }
        }
    }

    /// Read the rest of the stream (the tar's padding after its end marker)
    /// so the diff_id covers it and it lands in `out`.
    fn drain(&mut self) -> Result<()> {
        self.pos = self.buf.len();
        loop {
            match self.next_chunk() {
                Ok(true) => self.pos = self.buf.len(),
                Ok(false) => return Ok(()),
                // `failure` holds the real cause; this is a placeholder.
                Err(e) => return Err(Error::Invalid(format!("layer tar: {e}"))),
            }
        }
    }
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if out.is_empty() || !self.next_chunk()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
