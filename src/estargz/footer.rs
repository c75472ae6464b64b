//! The eStargz footer: an empty gzip member at the very end of the blob whose
//! extra field names the TOC's offset.
//!
//! ```text
//! eStargz (51 bytes): 10 gzip header (FLG=FEXTRA) | XLEN=26 | 'S' 'G' LEN=22 |
//!                     "%016xSTARGZ" | 5 bytes empty stored block | 8 CRC+ISIZE
//! stargz  (47 bytes): 10 gzip header (FLG=FEXTRA) | XLEN=22 | "%016xSTARGZ" |
//!                     5 bytes empty stored block | 8 CRC+ISIZE
//! ```

use crate::error::{Error, Result};

/// Size of the eStargz footer.
pub const FOOTER_SIZE: u64 = 51;
/// Size of the legacy (CRFS stargz) footer.
pub const LEGACY_FOOTER_SIZE: u64 = 47;

/// The first request for a TOC asks for at least this many bytes at the end of the blob.
pub const MIN_TAIL: u64 = 4 << 10;
/// … and at most this many.
pub const MAX_TAIL: u64 = 1 << 20;
/// … and otherwise this fraction (1/N) of the blob.
pub const TAIL_DIVISOR: u64 = 160;

/// How many bytes at the end of an eStargz blob of `blob_size` bytes to
/// fetch in one request, hoping for the footer and the whole TOC: 1/160 of
/// the blob (TOCs of the lab's layers are 0.004–0.6% of theirs: the python
/// base layer's 308 KB TOC is 0.59% of 52 MB), at least [`MIN_TAIL`], at most
/// [`MAX_TAIL`], never more than the blob. A TOC that is larger costs a
/// second request for the part before the tail; bytes past the TOC's start
/// are the price of the saved round trip.
pub fn tail_fetch_size(blob_size: u64) -> u64 {
    (blob_size / TAIL_DIVISOR)
        .clamp(MIN_TAIL, MAX_TAIL)
        .min(blob_size)
}

/// Parse the footer from the last bytes of a blob (`tail` holds at least the
/// last 47 bytes; 51 for eStargz). Returns the TOC offset and the footer's size.
pub fn parse_footer(tail: &[u8]) -> Result<(u64, u64)> {
    if tail.len() >= FOOTER_SIZE as usize {
        let f = &tail[tail.len() - FOOTER_SIZE as usize..];
        if is_gzip_fextra(f) && f[10..12] == [26, 0] && &f[12..14] == b"SG" && f[14..16] == [22, 0]
        {
            return Ok((offset_field(&f[16..38])?, FOOTER_SIZE));
        }
    }
    if tail.len() >= LEGACY_FOOTER_SIZE as usize {
        let f = &tail[tail.len() - LEGACY_FOOTER_SIZE as usize..];
        if is_gzip_fextra(f) && f[10..12] == [22, 0] {
            return Ok((offset_field(&f[12..34])?, LEGACY_FOOTER_SIZE));
        }
    }
    Err(Error::invalid("eStargz: no footer at the end of the blob"))
}

fn is_gzip_fextra(f: &[u8]) -> bool {
    f[0] == 0x1f && f[1] == 0x8b && f[2] == 8 && f[3] & 0x04 != 0
}

/// `%016xSTARGZ` → the offset.
fn offset_field(b: &[u8]) -> Result<u64> {
    if &b[16..22] != b"STARGZ" {
        return Err(Error::invalid("eStargz: footer without the STARGZ mark"));
    }
    let hex =
        std::str::from_utf8(&b[..16]).map_err(|_| Error::invalid("eStargz: footer offset"))?;
    u64::from_str_radix(hex, 16).map_err(|_| Error::invalid("eStargz: footer offset is not hex"))
}

/// The eStargz footer for a TOC at `offset` (for tests and writers).
pub fn footer_bytes(offset: u64) -> Vec<u8> {
    let mut f = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend_from_slice(format!("{offset:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    f.extend_from_slice(&[0; 8]);
    f
}
