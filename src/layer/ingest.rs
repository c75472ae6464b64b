//! The one-pass pipeline run when a layer blob is fetched: hash the
//! compressed bytes, decompress, hash and store the uncompressed tar, and
//! index it, all from the same stream.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};

use crate::digest::{Digest, Hasher, HashingReader};
use crate::error::{Error, Result};
use crate::layer::compression::Compression;
use crate::layer::index::{index_tar_counted, Limits};
use crate::layer::span::{SpanBuilder, SpanIndex, SpanReader};
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
pub fn ingest<R: Read>(
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
        blob_digest,
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
#[allow(clippy::too_many_arguments)]
pub fn ingest_spans<R: Read>(
    compressed: R,
    compression: Compression,
    blob_digest: &Digest,
    diff_id: &Digest,
    layer: u16,
    out: &mut File,
    limits: &Limits,
    span_every: Option<u64>,
) -> Result<(Tree, IngestStats, Option<SpanIndex>)> {
    let span_every = span_every.filter(|_| compression == Compression::Gzip);
    let spans = RefCell::new(SpanBuilder::new(span_every.unwrap_or(u64::MAX)));
    let source_err: RefCell<Option<io::Error>> = RefCell::new(None);
    let mut source = Source {
        inner: HashingReader::new(compressed, blob_digest.algorithm()),
        err: &source_err,
    };
    let inner: Box<dyn Read + '_> = match span_every {
        Some(_) => Box::new(SpanReader::new(&mut source, &spans)?),
        None => compression.decoder(&mut source),
    };
    let mut tee = Tee {
        inner,
        hasher: Some(Hasher::new(diff_id.algorithm())),
        out: BufWriter::with_capacity(1 << 20, &mut *out),
        count: 0,
        limit: limits.max_uncompressed,
        failure: None,
        source_err: &source_err,
        compression,
    };
    let indexed =
        index_tar_counted(&mut tee, layer, limits).and_then(|r| drain(&mut tee).map(|_| r));
    let (tree, entries) = match indexed {
        Ok(v) => v,
        Err(e) => {
            let e = tee.failure.take().unwrap_or(e);
            drop(tee);
            // A damaged download explains a broken tar better than the tar does.
            if matches!(e, Error::Invalid(_)) && source_err.borrow().is_none() {
                let mut capped = (&mut source).take(limits.max_uncompressed);
                if io::copy(&mut capped, &mut io::sink()).is_ok() {
                    let (_, actual, _) = source.inner.finish();
                    actual.expect(blob_digest, &format!("layer blob {blob_digest}"))?;
                }
            }
            return Err(e);
        }
    };
    let uncompressed_bytes = tee.count;
    let diff_actual = tee.hasher.take().expect("hasher").finish();
    tee.out.flush()?;
    drop(tee);
    // The decoder stopped at the end of the compressed data; hash any rest.
    io::copy(&mut source, &mut io::sink()).map_err(|e| {
        source_err
            .borrow_mut()
            .take()
            .map(Error::Io)
            .unwrap_or(Error::Io(e))
    })?;
    let (_, blob_actual, compressed_bytes) = source.inner.finish();
    blob_actual.expect(blob_digest, &format!("layer blob {blob_digest}"))?;
    diff_actual.expect(diff_id, &format!("layer diff_id {diff_id}"))?;
    let index = span_every.map(|_| spans.into_inner().finish(compressed_bytes));
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
}

/// Read the rest of the uncompressed stream (the tar's padding after its end
/// marker) so the diff_id covers it and it lands in `out`.
fn drain<R: Read>(tee: &mut R) -> Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tee.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Tee has recorded the real cause; this is a placeholder.
            Err(e) => return Err(Error::Invalid(format!("layer tar: {e}"))),
        }
    }
}

/// The compressed stream, hashed; records its own read errors so they are
/// not mistaken for corrupt data.
struct Source<'e, R> {
    inner: HashingReader<R>,
    err: &'e RefCell<Option<io::Error>>,
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                *self.err.borrow_mut() = Some(e);
                Err(copy)
            }
        }
    }
}

/// The uncompressed stream: hashed, counted, bounded and copied to `out` as
/// the indexer reads it.
struct Tee<'a, 'e, W: Write> {
    inner: Box<dyn Read + 'a>,
    hasher: Option<Hasher>,
    out: W,
    count: u64,
    limit: u64,
    failure: Option<Error>,
    source_err: &'e RefCell<Option<io::Error>>,
    compression: Compression,
}

impl<W: Write> Read for Tee<'_, '_, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for at most one byte past the limit, so a bomb stops right there.
        let room = self.limit.saturating_sub(self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.failure = Some(match self.source_err.borrow_mut().take() {
                    Some(src) => Error::Io(src),
                    None => Error::Invalid(format!(
                        "layer blob: corrupt {:?} data: {e}",
                        self.compression
                    )),
                });
                return Err(e);
            }
        };
        if self.count + n as u64 > self.limit {
            let msg = format!("layer: uncompressed stream exceeds {} bytes", self.limit);
            self.failure = Some(Error::TooLarge(msg.clone()));
            return Err(io::Error::other(msg));
        }
        self.count += n as u64;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.failure = Some(Error::Io(e));
            return Err(copy);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
