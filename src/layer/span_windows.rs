//! A span index's windows kept apart from its checkpoint table (issue 15):
//! each checkpoint's 32 KiB window deflated on its own and concatenated into
//! one *windows blob*, and a [`WindowTable`] saying where each lies in it
//! (offset, packed length), how long it inflates, and its digest. A reader
//! then fetches the window of one checkpoint by a Range request of that
//! blob, instead of every window up front.
//!
//! A window is checked against its digest ([`unpack`]) before zlib sees it;
//! the span it primes is still checked against the span digest, so a wrong
//! window can only fail a read, never serve other bytes.
//!
//! Pure: no I/O. The table's binary form ([`WindowTable::encode`] /
//! [`WindowTable::decode`]) is refused unless every window lies inside the
//! blob and inflates to at most [`WINDOW`] bytes.

use std::io::{Read, Write};

use super::span::{Fields, SpanIndex, MAX_CHECKPOINTS, SPAN_DIGEST};
use super::zran::WINDOW;
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};

/// Largest packed (deflated) window: deflate's worst case for 32 KiB of
/// incompressible data is a few stored-block headers more.
pub const MAX_PACKED_WINDOW: u32 = 40 << 10;

const MAGIC: &[u8; 8] = b"RGFSWIN\x01";

/// Where one checkpoint's window lies in the windows blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowRef {
    /// Offset of its packed bytes in the windows blob.
    pub offset: u64,
    /// Packed (raw deflate) length; 0 for a checkpoint with no window.
    pub len: u32,
    /// Inflated length (at most [`WINDOW`]).
    pub raw_len: u32,
    /// Digest ([`SPAN_DIGEST`]) of the inflated window.
    pub digest: Digest,
}

/// The windows of a span index, one per checkpoint, as a blob apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowTable {
    /// The windows blob's digest (sha256) and size.
    pub blob: Digest,
    /// The windows blob's size in bytes.
    pub blob_size: u64,
    /// One per checkpoint, in checkpoint order.
    pub windows: Vec<WindowRef>,
}

fn bad(what: &str) -> Error {
    Error::invalid(format!("span window table: {what}"))
}

/// Split `ix` into its checkpoint table (the same index, windows emptied),
/// the windows blob and the table of where each window lies in it.
pub fn split(ix: &SpanIndex) -> (SpanIndex, Vec<u8>, WindowTable) {
    let mut blob = Vec::new();
    let mut windows = Vec::with_capacity(ix.checkpoints.len());
    let mut table = ix.clone();
    for c in &mut table.checkpoints {
        let raw = std::mem::take(&mut c.window);
        let offset = blob.len() as u64;
        if !raw.is_empty() {
            // Level 6: the 32 KiB before every 256 KiB of python's two
            // large layers (636 windows, 20.8 MB) deflate to 8.74 MB in
            // 0.25 s with zlib-rs, at level 9 to 8.53 MB in 0.70 s.
            let mut e =
                flate2::write::DeflateEncoder::new(&mut blob, flate2::Compression::default());
            e.write_all(&raw).expect("writing to memory");
            e.finish().expect("writing to memory");
        }
        let mut h = Hasher::new(SPAN_DIGEST);
        h.update(&raw);
        windows.push(WindowRef {
            offset,
            len: (blob.len() as u64 - offset) as u32,
            raw_len: raw.len() as u32,
            digest: h.finish(),
        });
    }
    let t = WindowTable {
        blob: Digest::sha256_of(&blob),
        blob_size: blob.len() as u64,
        windows,
    };
    (table, blob, t)
}

/// The window `r` from its packed bytes (`packed`, exactly `r.len` bytes of
/// the windows blob at `r.offset`), checked against its digest: a
/// [`Error::DigestMismatch`] (EIO) otherwise.
pub fn unpack(packed: &[u8], r: &WindowRef) -> Result<Vec<u8>> {
    let what = || format!("span window at {} of the windows blob", r.offset);
    let mismatch = |actual: String| Error::DigestMismatch {
        what: what(),
        expected: r.digest.to_string(),
        actual,
    };
    if r.len == 0 && r.raw_len == 0 {
        // No window (a member's start): only an empty one is right.
        r.digest.verify(&[], &what())?;
        return Ok(Vec::new());
    }
    if packed.len() != r.len as usize {
        return Err(mismatch(format!("{} bytes, not {}", packed.len(), r.len)));
    }
    let mut out = Vec::with_capacity(r.raw_len as usize);
    flate2::read::DeflateDecoder::new(packed)
        .take(u64::from(r.raw_len) + 1)
        .read_to_end(&mut out)
        .map_err(|e| mismatch(format!("nothing: {e}")))?;
    if out.len() != r.raw_len as usize {
        return Err(mismatch(format!("{} bytes inflated", out.len())));
    }
    r.digest.verify(&out, &what())?;
    Ok(out)
}

impl WindowTable {
    /// Check the table against the span index it belongs to: one window per
    /// checkpoint, none for a member's start.
    pub fn check(&self, ix: &SpanIndex) -> Result<()> {
        if self.windows.len() != ix.checkpoints.len() {
            return Err(bad("not one window per checkpoint"));
        }
        let stray = ix
            .checkpoints
            .iter()
            .zip(&self.windows)
            .any(|(c, w)| !c.window.is_empty() || (c.member_start && w.raw_len != 0));
        if stray {
            return Err(bad("a window where the table says none"));
        }
        Ok(())
    }

    /// The binary form.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(52 + self.windows.len() * 48);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&hex::decode(self.blob.hex()).expect("a digest's hex"));
        v.extend_from_slice(&self.blob_size.to_le_bytes());
        v.extend_from_slice(&(self.windows.len() as u32).to_le_bytes());
        for w in &self.windows {
            v.extend_from_slice(&w.offset.to_le_bytes());
            v.extend_from_slice(&w.len.to_le_bytes());
            v.extend_from_slice(&w.raw_len.to_le_bytes());
            v.extend_from_slice(&hex::decode(w.digest.hex()).expect("a digest's hex"));
        }
        v
    }

    /// Parse and check the binary form: every window inside the blob, no
    /// window longer than [`WINDOW`] inflated or [`MAX_PACKED_WINDOW`] packed,
    /// at most [`MAX_CHECKPOINTS`] windows, nothing trailing.
    pub fn decode(b: &[u8]) -> Result<WindowTable> {
        let mut r = Fields(b);
        let mut take = |n: usize| r.take(n).ok_or_else(|| bad("truncated"));
        if take(8)? != MAGIC {
            return Err(bad("bad magic or version"));
        }
        let digest = |alg: &str, raw: &[u8]| -> Result<Digest> {
            format!("{alg}:{}", hex::encode(raw))
                .parse()
                .map_err(|_| bad("digest"))
        };
        let blob = digest("sha256", take(32)?)?;
        let blob_size = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let u32_of = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes"));
        let n = u32_of(take(4)?) as usize;
        if n == 0 || n > MAX_CHECKPOINTS {
            return Err(bad("window count out of range"));
        }
        let mut windows = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let offset = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
            let len = u32_of(take(4)?);
            let raw_len = u32_of(take(4)?);
            let d = digest(SPAN_DIGEST.as_str(), take(32)?)?;
            if len > MAX_PACKED_WINDOW || raw_len as usize > WINDOW {
                return Err(bad("window too large"));
            }
            if offset
                .checked_add(u64::from(len))
                .is_none_or(|e| e > blob_size)
            {
                return Err(bad("window outside the windows blob"));
            }
            if (len == 0) != (raw_len == 0) {
                return Err(bad("empty window with data, or data for an empty window"));
            }
            windows.push(WindowRef {
                offset,
                len,
                raw_len,
                digest: d,
            });
        }
        if !r.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(WindowTable {
            blob,
            blob_size,
            windows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span index of a gzip stream of `n` bytes of numbered lines (that
    /// refer back into their windows), checkpoints every 20 KB.
    fn index(n: usize) -> (SpanIndex, Vec<u8>, Vec<u8>) {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = std::iter::repeat_with(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("line {:05} of the windows test\n", x % 50_000).into_bytes()
        })
        .flatten()
        .take(n)
        .collect();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&data).unwrap();
        let gz = e.finish().unwrap();
        let (ix, out) = crate::layer::span::index_by_reading(&gz, 20_000);
        assert_eq!(out, data);
        (ix, gz, data)
    }

    #[test]
    fn split_encode_decode_unpack_and_extract() {
        let (ix, gz, data) = index(3_000_000);
        assert!(ix.checkpoints.len() > 5, "{}", ix.checkpoints.len());
        let (table, blob, t) = split(&ix);
        assert!(table.checkpoints.iter().all(|c| c.window.is_empty()));
        t.check(&table).unwrap();
        assert!(t.check(&ix).is_err(), "inline windows are refused");
        assert_eq!(t.blob, Digest::sha256_of(&blob));
        let back = WindowTable::decode(&t.encode()).unwrap();
        assert_eq!(back, t);
        // Every window unpacks to the original, and primes its span.
        for (i, (c, w)) in ix.checkpoints.iter().zip(&t.windows).enumerate() {
            let at = w.offset as usize;
            let win = unpack(&blob[at..at + w.len as usize], w).unwrap();
            assert_eq!(win, c.window, "{i}");
            let (cs, ce) = table.compressed_range(i, i);
            let got = table
                .extract_with_window(i, i, &gz[cs as usize..ce as usize], &win)
                .unwrap();
            let (s, e) = table.span(i);
            assert_eq!(got[0], data[s as usize..e as usize]);
        }
        // A changed window is refused before use.
        let w = &t.windows[2];
        let mut forged = blob[w.offset as usize..(w.offset + u64::from(w.len)) as usize].to_vec();
        forged[w.len as usize / 2] ^= 1;
        assert!(unpack(&forged, w).is_err());
        assert!(unpack(&forged[1..], w).is_err());
        // A right window digest over wrong bytes still fails the span digest.
        let bad_win: Vec<u8> = ix.checkpoints[2]
            .window
            .iter()
            .map(|b| b.wrapping_add(1))
            .collect();
        let (cs, ce) = table.compressed_range(2, 2);
        let got = table.extract_with_window(2, 2, &gz[cs as usize..ce as usize], &bad_win);
        assert!(matches!(got, Err(Error::DigestMismatch { .. })));
    }

    #[test]
    fn decode_refuses_hostile_tables() {
        let (ix, _, _) = index(1_000_000);
        let (_, _, t) = split(&ix);
        let good = t.encode();
        for cut in [0, 7, 40, good.len() - 1] {
            assert!(WindowTable::decode(&good[..cut]).is_err(), "{cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(WindowTable::decode(&long).is_err());
        let edit = |f: &dyn Fn(&mut WindowTable)| {
            let mut t2 = t.clone();
            f(&mut t2);
            WindowTable::decode(&t2.encode())
        };
        assert!(edit(&|t| t.windows[1].offset = t.blob_size).is_err());
        assert!(edit(&|t| t.windows[1].offset = u64::MAX).is_err());
        assert!(edit(&|t| t.windows[1].raw_len = WINDOW as u32 + 1).is_err());
        assert!(edit(&|t| t.windows[1].len = MAX_PACKED_WINDOW + 1).is_err());
        assert!(edit(&|t| t.windows[1].len = 0).is_err());
        assert!(edit(&|t| t.windows.clear()).is_err());
        assert!(edit(&|t| t.blob_size = 0).is_err());
        // A count past the limit is refused before anything is allocated.
        let mut huge = good[..48].to_vec();
        huge.extend_from_slice(&(MAX_CHECKPOINTS as u32 + 1).to_le_bytes());
        assert!(WindowTable::decode(&huge).is_err());
        // And a table of another length than the index's checkpoints.
        let mut t3 = t.clone();
        t3.windows.pop();
        let (table, _, _) = split(&ix);
        assert!(t3.check(&table).is_err());
    }
}
