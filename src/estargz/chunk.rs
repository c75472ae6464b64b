//! One chunk: decompress its gzip member or zstd frame and verify it.

use std::io::Read;

use super::Format;
use crate::error::{Error, Result};
use crate::layer::Chunk;

/// Decompress `chunk` from `compressed` (the bytes fetched at
/// `chunk.blob_offset`, at least the member or frame holding the chunk) and
/// return its `chunk.size` bytes, verified against `chunk.digest`. Anything
/// else (short data, a corrupt stream, a wrong digest) is an error: nothing
/// unverified comes out of here.
pub fn decode_chunk(format: Format, compressed: &[u8], chunk: &Chunk) -> Result<Vec<u8>> {
    let what = || {
        format!(
            "chunk {} at blob offset {}",
            chunk.digest, chunk.blob_offset
        )
    };
    let want = chunk
        .inner_offset
        .checked_add(chunk.size)
        .filter(|n| *n <= 1 << 34)
        .ok_or_else(|| Error::invalid(format!("{}: absurd size", what())))?;
    let corrupt = |e: std::io::Error| Error::DigestMismatch {
        what: format!("{} ({e})", what()),
        expected: chunk.digest.to_string(),
        actual: "undecodable data".into(),
    };
    let mut out = Vec::with_capacity(want.min(64 << 20) as usize);
    match format {
        Format::Estargz => {
            // One gzip member (GzDecoder stops at its end).
            flate2::read::GzDecoder::new(compressed)
                .take(want)
                .read_to_end(&mut out)
                .map_err(corrupt)?;
        }
        Format::ZstdChunked => {
            let dec = zstd::stream::read::Decoder::with_buffer(compressed)
                .map_err(corrupt)?
                .single_frame();
            dec.take(want).read_to_end(&mut out).map_err(corrupt)?;
        }
    }
    if (out.len() as u64) < want {
        return Err(Error::DigestMismatch {
            what: format!("{} (decompressed to {} of {want} bytes)", what(), out.len()),
            expected: chunk.digest.to_string(),
            actual: "short data".into(),
        });
    }
    let data = out.split_off(chunk.inner_offset as usize);
    chunk.digest.verify(&data, &what())?;
    Ok(data)
}
