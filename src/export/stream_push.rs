//! A layer packed and uploaded in one pass: the packer writes into a pipe
//! whose other end is the body of a streamed blob upload
//! ([`RegistryApi::push_blob_stream`]), so compressed pieces go to the
//! registry while later ones are still being produced. The digest is known
//! only at the end, for the upload's final `PUT`; an error on the packing
//! side (or a check that fails after packing) cancels the upload before
//! that `PUT`, so a blob that was not wholly produced and checked is never
//! committed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;

use super::compress::Packed;
use crate::error::{Error, Result};
use crate::registry::RegistryApi;

/// Pieces of the compressed stream handed to the upload, and how many may wait.
const STREAM_PIECE: usize = 1 << 20;
const STREAM_DEPTH: usize = 24;

/// The packer's output: pieces of the blob sent to the upload as they come.
/// The upload completes only once the packing closure of
/// [`pack_and_push`] returned `Ok` (the last piece is sent then).
pub struct PipeWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes>>,
    stopped: Arc<AtomicBool>,
}

impl PipeWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_PIECE));
        self.tx.blocking_send(Ok(Bytes::from(piece))).map_err(|_| {
            self.stopped.store(true, Ordering::Relaxed);
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped")
        })
    }
}

impl std::io::Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_PIECE {
            self.send()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Run `pack` on a blocking thread, its output streamed up to `repo` as a
/// new blob; `sent` counts bytes handed to the upload. The upload is
/// completed only if `pack` returns `Ok` and the registry's digest and size
/// equal the packer's; otherwise it is cancelled and the error returned
/// (the upload's own error when it stopped first).
pub async fn pack_and_push<F>(
    client: &dyn RegistryApi,
    repo: &str,
    sent: Arc<AtomicU64>,
    pack: F,
) -> Result<Packed>
where
    F: FnOnce(PipeWriter) -> Result<(Packed, PipeWriter)> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes>>(STREAM_DEPTH);
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = stopped.clone();
    let packing = tokio::task::spawn_blocking(move || {
        let out = PipeWriter {
            buf: Vec::with_capacity(STREAM_PIECE),
            tx: tx.clone(),
            stopped: stop,
        };
        let r = pack(out).and_then(|(packed, mut w)| {
            w.send()?;
            Ok(packed)
        });
        if r.is_err() {
            // Make the upload fail rather than push a truncated or unchecked blob.
            let _ = tx.blocking_send(Err(Error::Io(std::io::Error::other("packing failed"))));
        }
        r
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(move |r| {
        if let Ok(b) = &r {
            sent.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        r
    });
    let (uploaded, packed) = tokio::join!(client.push_blob_stream(repo, body.boxed()), packing);
    let packed = packed.map_err(|e| Error::Io(std::io::Error::other(e)))?;
    match (packed, uploaded) {
        // The upload stopped first: its error is the cause.
        (Err(_), Err(up)) if stopped.load(Ordering::Relaxed) => Err(up),
        (Err(e), _) => Err(e),
        (Ok(_), Err(up)) => Err(up),
        (Ok(layer), Ok((digest, size))) => {
            if digest != layer.digest || size != layer.size {
                return Err(Error::DigestMismatch {
                    what: "streamed layer".into(),
                    expected: format!("{} ({} bytes)", layer.digest, layer.size),
                    actual: format!("{digest} ({size} bytes)"),
                });
            }
            Ok(layer)
        }
    }
}
