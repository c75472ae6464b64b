//! The unsafe part of random access into gzip streams: a small owner of a
//! zlib inflate stream (`libz-rs-sys`, the C API of zlib-rs) exposing the
//! five calls zran-style access needs — `inflate` with `Z_BLOCK`,
//! `inflateGetDictionary`, `inflatePrime`, `inflateSetDictionary` and
//! `inflateReset2` — behind safe methods. Everything else (checkpoints, span
//! hashes, the index format) is safe code in [`super::span`].
//!
//! Invariants upheld here:
//! - the `z_stream` is boxed and never moved after `inflateInit2_` (zlib keeps
//!   a pointer back to it in its state) and `inflateEnd` runs exactly once, in
//!   `Drop`;
//! - `next_in`/`next_out` point into slices borrowed for the duration of one
//!   `inflate` call only and are cleared before the call returns, so no
//!   dangling pointer outlives the borrow;
//! - `avail_in`/`avail_out` never exceed the slices (lengths are clamped to
//!   `u32::MAX`).

use std::io;

use libz_rs_sys as z;

/// Largest deflate window (and so the largest dictionary).
pub const WINDOW: usize = 32 * 1024;

/// `windowBits` for a raw deflate stream (no header, no trailer).
pub const RAW: i32 = -15;
/// `windowBits` for a gzip member (header and CRC/size trailer checked).
pub const GZIP: i32 = 31;

/// What one [`Inflate::inflate`] call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes produced.
    pub produced: usize,
    /// The end of the deflate stream (for gzip: of the member, trailer checked) was reached.
    pub stream_end: bool,
    /// Stopped at a deflate block boundary that is not the end of the last block.
    pub block_boundary: bool,
    /// Unused bits in the last input byte consumed (meaningful at a block boundary).
    pub bits: u8,
}

/// An inflate stream. Not `Sync`; `Send` is sound because the state is owned
/// exclusively and holds no thread-bound resources.
pub struct Inflate {
    strm: Box<z::z_stream>,
}

// SAFETY: the z_stream and the state it points to are owned by this value
// alone (allocated by zlib-rs with the Rust allocator); nothing is tied to the
// creating thread.
unsafe impl Send for Inflate {}

fn check(rc: i32, what: &str) -> io::Result<()> {
    if rc == z::Z_OK {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("zlib {what} failed ({rc})"),
        ))
    }
}

impl Inflate {
    /// A new stream for `window_bits` ([`RAW`] or [`GZIP`]).
    pub fn new(window_bits: i32) -> io::Result<Inflate> {
        // Default sets the Rust allocator; everything else is null/zero.
        let mut strm = Box::new(z::z_stream::default());
        // SAFETY: `strm` is a valid z_stream with allocator fields set, on the
        // heap (it will not move); the version string and struct size are the
        // library's own.
        let rc = unsafe {
            z::inflateInit2_(
                &mut *strm,
                window_bits,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as i32,
            )
        };
        check(rc, "inflateInit2")?;
        Ok(Inflate { strm })
    }

    /// Start a new stream of kind `window_bits`, keeping the allocation.
    pub fn reset(&mut self, window_bits: i32) -> io::Result<()> {
        // SAFETY: the stream was initialised in `new` and not ended.
        check(
            unsafe { z::inflateReset2(&mut *self.strm, window_bits) },
            "inflateReset2",
        )
    }

    /// Do not compute or compare the gzip CRC-32 of this stream (until the
    /// next [`Inflate::reset`]): for callers that verify the output by a
    /// stronger digest anyway. Saves a pass over every output byte.
    pub fn skip_check(&mut self) -> io::Result<()> {
        // SAFETY: the stream was initialised in `new` and not ended.
        check(
            unsafe { z::inflateValidate(&mut *self.strm, 0) },
            "inflateValidate",
        )
    }

    /// Feed `bits` (≤ 7, may be 0) low bits of `value` before the next input.
    pub fn prime(&mut self, bits: u8, value: u8) -> io::Result<()> {
        if bits == 0 {
            return Ok(());
        }
        if bits > 7 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "prime: bits > 7",
            ));
        }
        // SAFETY: initialised stream; `bits` ≤ 7 fits the bit buffer.
        check(
            unsafe { z::inflatePrime(&mut *self.strm, bits as i32, value as i32) },
            "inflatePrime",
        )
    }

    /// Set the window (raw streams only, before the first block).
    pub fn set_dictionary(&mut self, dict: &[u8]) -> io::Result<()> {
        if dict.is_empty() {
            return Ok(());
        }
        if dict.len() > WINDOW {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "dictionary larger than 32 KiB",
            ));
        }
        // SAFETY: initialised stream; `dict` is readable for `dict.len()` bytes,
        // which fits a u32.
        check(
            unsafe { z::inflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as u32) },
            "inflateSetDictionary",
        )
    }

    /// The current window: the last (up to) 32 KiB of output of this stream.
    pub fn dictionary(&self) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; WINDOW];
        let mut len: u32 = 0;
        // SAFETY: initialised stream; `out` is writable for 32 KiB, which is
        // always enough (zlib's documented bound); `len` is a valid u32.
        check(
            unsafe { z::inflateGetDictionary(&*self.strm, out.as_mut_ptr(), &mut len) },
            "inflateGetDictionary",
        )?;
        out.truncate((len as usize).min(WINDOW));
        Ok(out)
    }

    /// Inflate from `input` into `output` with `Z_BLOCK` (stop at block
    /// boundaries). Corrupt data is `InvalidData`; no progress possible with
    /// the given buffers is `consumed == produced == 0` and no stream end.
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8]) -> io::Result<Step> {
        let in_len = input.len().min(u32::MAX as usize);
        let out_len = output.len().min(u32::MAX as usize);
        let s = &mut *self.strm;
        s.next_in = input.as_ptr();
        s.avail_in = in_len as u32;
        s.next_out = output.as_mut_ptr();
        s.avail_out = out_len as u32;
        // SAFETY: initialised stream; next_in/avail_in describe a readable
        // slice and next_out/avail_out a writable one, both borrowed for this call.
        let rc = unsafe { z::inflate(s, z::Z_BLOCK) };
        let consumed = in_len - s.avail_in as usize;
        let produced = out_len - s.avail_out as usize;
        s.next_in = std::ptr::null();
        s.avail_in = 0;
        s.next_out = std::ptr::null_mut();
        s.avail_out = 0;
        let data_type = s.data_type;
        match rc {
            z::Z_OK | z::Z_BUF_ERROR | z::Z_STREAM_END => Ok(Step {
                consumed,
                produced,
                stream_end: rc == z::Z_STREAM_END,
                block_boundary: rc != z::Z_STREAM_END
                    && data_type & 128 != 0
                    && data_type & 64 == 0,
                bits: (data_type & 7) as u8,
            }),
            z::Z_NEED_DICT => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "deflate stream needs a preset dictionary",
            )),
            rc => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt deflate data (zlib {rc})"),
            )),
        }
    }
}

impl Drop for Inflate {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, ended exactly once here.
        unsafe {
            z::inflateEnd(&mut *self.strm);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn inflates_gzip_with_small_buffers() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        let blob = gz(&data, 6);
        let mut inf = Inflate::new(GZIP).unwrap();
        let (mut pos, mut out, mut buf) = (0, Vec::new(), [0u8; 1000]);
        loop {
            let end = (pos + 333).min(blob.len());
            let s = inf.inflate(&blob[pos..end], &mut buf).unwrap();
            pos += s.consumed;
            out.extend_from_slice(&buf[..s.produced]);
            if s.stream_end {
                break;
            }
            assert!(s.consumed + s.produced > 0 || pos < blob.len());
        }
        assert_eq!(out, data);
        assert_eq!(pos, blob.len());
        assert!(inf.dictionary().unwrap().len() == WINDOW);
    }

    #[test]
    fn corrupt_and_bad_arguments_are_errors() {
        let mut inf = Inflate::new(GZIP).unwrap();
        let mut buf = [0u8; 64];
        assert!(inf.inflate(b"definitely not gzip", &mut buf).is_err());
        inf.reset(RAW).unwrap();
        assert!(inf.prime(8, 0).is_err());
        assert!(inf.set_dictionary(&vec![0; WINDOW + 1]).is_err());
        inf.set_dictionary(b"abc").unwrap();
        inf.prime(0, 0).unwrap();
    }
}
