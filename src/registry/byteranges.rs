//! `multipart/byteranges` (RFC 9110 §14.6), the answer to a Range request
//! that names several ranges: its boundary, its parts, and the asked-for
//! ranges cut out of them. Parts are found by the lengths their
//! `Content-Range` headers give, never by looking for the boundary inside
//! the data. Anything malformed is an error (the caller falls back to one
//! request per range); nothing here panics on hostile input.

use bytes::Bytes;

use super::blobs::parse_content_range;

/// Most parts one body may hold (a server may split, never multiply, ranges
/// much).
const MAX_PARTS: usize = 1024;

/// The boundary of a `multipart/byteranges` content type; `None` for any
/// other type.
pub(crate) fn boundary(content_type: &str) -> Option<&str> {
    let mut fields = content_type.split(';');
    let kind = fields.next()?.trim();
    if !kind.eq_ignore_ascii_case("multipart/byteranges") {
        return None;
    }
    fields.find_map(|f| {
        let (k, v) = f.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        // RFC 2046: 1 to 70 characters.
        (!v.is_empty() && v.len() <= 70).then_some(v)
    })
}

/// One part of a body: where its bytes start in the blob, the blob's size
/// when the server gave it, and the bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// Blob offset of `data[0]`.
    pub start: u64,
    /// The blob's size, unless the server sent `*`.
    pub total: Option<u64>,
    /// The part's bytes.
    pub data: Bytes,
}

/// The parts of `body`, a `multipart/byteranges` body with `boundary`.
pub(crate) fn parts(body: &Bytes, boundary: &str) -> Result<Vec<Part>, String> {
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut at = find(body, delim, 0).ok_or("no boundary in the body")?;
    let mut out = Vec::new();
    loop {
        at += delim.len();
        if body[at..].starts_with(b"--") {
            return Ok(out);
        }
        while matches!(body.get(at), Some(b' ' | b'\t')) {
            at += 1;
        }
        at = after_newline(body, at).ok_or("a boundary line does not end")?;
        let head_end = find(body, b"\r\n\r\n", at).ok_or("a part's headers do not end")?;
        let head =
            std::str::from_utf8(&body[at..head_end]).map_err(|_| "a part header is not text")?;
        let (start, stop, total) = head
            .split("\r\n")
            .find_map(|line| {
                let (k, v) = line.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-range")
                    .then(|| parse_content_range(v))
            })
            .flatten()
            .ok_or("a part without a valid Content-Range")?;
        let len = (stop - start)
            .checked_add(1)
            .and_then(|l| usize::try_from(l).ok());
        let len = len.ok_or("a part too long")?;
        let from = head_end + 4;
        let to = from.checked_add(len).filter(|&t| t <= body.len());
        let to = to.ok_or("a part runs past the body")?;
        out.push(Part {
            start,
            total,
            data: body.slice(from..to),
        });
        if out.len() > MAX_PARTS {
            return Err("too many parts".into());
        }
        at = after_newline(body, to).ok_or("a part is not followed by a line break")?;
        if !body[at..].starts_with(delim) {
            return Err("a part is not followed by a boundary".into());
        }
    }
}

/// `wanted` ranges `(offset, len)`, each cut out of the part that holds it.
/// A range may come back short only where its part ends at the blob's end.
pub(crate) fn pick(parts: &[Part], wanted: &[(u64, u64)]) -> Result<Vec<Bytes>, String> {
    wanted
        .iter()
        .map(|&(offset, len)| {
            if len == 0 {
                return Ok(Bytes::new());
            }
            let end = offset.saturating_add(len);
            let end_of = |p: &Part| p.start.saturating_add(p.data.len() as u64);
            let part = parts
                .iter()
                .find(|p| p.start <= offset && offset < end_of(p))
                .ok_or_else(|| format!("no part holds byte {offset}"))?;
            let part_end = end_of(part);
            if part_end < end && part.total != Some(part_end) {
                return Err(format!(
                    "the part holding {offset}+{len} ends at {part_end}"
                ));
            }
            let from = (offset - part.start) as usize;
            let to = (end.min(part_end) - part.start) as usize;
            Ok(part.data.slice(from..to))
        })
        .collect()
}

/// The first `needle` in `hay` at or after `from`.
fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Just past the CRLF (or bare LF) at `at`.
fn after_newline(body: &[u8], at: usize) -> Option<usize> {
    match body.get(at..)? {
        [b'\r', b'\n', ..] => Some(at + 2),
        [b'\n', ..] => Some(at + 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body as Go's `http.ServeContent` writes it for `ranges` of `blob`.
    fn body(blob: &[u8], ranges: &[(usize, usize)], b: &str) -> Bytes {
        let mut out = Vec::new();
        for (i, &(s, e)) in ranges.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(
                format!(
                    "--{b}\r\nContent-Range: bytes {s}-{e}/{}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    blob.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(&blob[s..=e]);
        }
        out.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
        out.into()
    }

    fn blob() -> Vec<u8> {
        // Data that contains the boundary itself: parts are found by length.
        let mut v: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        v[100..108].copy_from_slice(b"--XYZ\r\n\r");
        v
    }

    #[test]
    fn the_boundary_comes_from_a_byteranges_content_type_only() {
        assert_eq!(boundary("multipart/byteranges; boundary=XYZ"), Some("XYZ"));
        assert_eq!(
            boundary("Multipart/ByteRanges;boundary=\"a b\""),
            Some("a b")
        );
        assert_eq!(boundary("multipart/byteranges"), None);
        assert_eq!(boundary("multipart/byteranges; boundary="), None);
        assert_eq!(boundary("application/octet-stream"), None);
        assert_eq!(boundary("multipart/mixed; boundary=XYZ"), None);
    }

    #[test]
    fn parts_are_cut_by_their_lengths_and_picked_by_offset() {
        let b = blob();
        let body = body(&b, &[(90, 199), (1000, 1009), (4990, 4999)], "XYZ");
        let p = parts(&body, "XYZ").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].data, b[90..200]);
        assert_eq!(p[2].total, Some(5000));
        let got = pick(&p, &[(90, 110), (1002, 3), (0, 0), (4990, 100)]).unwrap();
        assert_eq!(got[0], b[90..200]);
        assert_eq!(got[1], b[1002..1005]);
        assert!(got[2].is_empty());
        // Short only at the blob's end.
        assert_eq!(got[3], b[4990..]);
        // A range no part holds, or one that runs past its part mid-blob.
        assert!(pick(&p, &[(500, 10)]).is_err());
        assert!(pick(&p, &[(1005, 10)]).is_err());
    }

    #[test]
    fn a_preamble_bare_newlines_and_padding_are_accepted() {
        let b = blob();
        let mut v = b"ignored preamble\r\n".to_vec();
        v.extend_from_slice(&body(&b, &[(0, 9), (20, 29)], "B"));
        let v = String::from_utf8_lossy(&v).into_owned();
        let v = v.replace("--B\r\n", "--B \t\n");
        let p = parts(&Bytes::from(v.into_bytes()), "B");
        // Binary data through a lossy string may change: only the shape matters.
        assert_eq!(p.unwrap().len(), 2);
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let b = blob();
        let good = body(&b, &[(0, 99), (200, 299)], "XYZ");
        assert!(parts(&good, "OTHER").is_err());
        // Every truncation of a good body either errs or yields fewer bytes.
        for cut in 0..good.len() {
            let _ = parts(&good.slice(..cut), "XYZ");
        }
        // Bytes flipped anywhere (headers, lengths, boundaries): whatever
        // parses is picked within bounds.
        let mut x = 0x9e37_79b9u32;
        for _ in 0..2000 {
            let mut v = good.to_vec();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let i = x as usize % v.len();
                v[i] = (x >> 8) as u8;
            }
            if let Ok(p) = parts(&Bytes::from(v), "XYZ") {
                let _ = pick(&p, &[(0, 100), (200, 100), (50, u64::MAX)]);
            }
        }
        for bad in [
            "--XYZ\r\nContent-Range: bytes 5-1/10\r\n\r\nxxxx\r\n--XYZ--",
            "--XYZ\r\nContent-Range: bytes 0-99/10\r\n\r\nshort\r\n--XYZ--",
            "--XYZ\r\nContent-Type: x\r\n\r\nabc\r\n--XYZ--",
            "--XYZ\r\nContent-Range: bytes 0-2/10\r\n\r\nabcGARBAGE--XYZ--",
            "--XYZContent-Range: bytes 0-2/10\r\n\r\nabc\r\n--XYZ--",
            "--XYZ\r\nContent-Range: bytes 0-18446744073709551615/10\r\n\r\nabc",
            "--XYZ\r\nContent-Range: bytes 18446744073709551614-18446744073709551615/10\r\n\r\nab\r\n--XYZ",
        ] {
            assert!(parts(&Bytes::from(bad), "XYZ").is_err(), "{bad:?}");
        }
        // A part at the end of the offsets: no overflow.
        let top = Part {
            start: u64::MAX - 1,
            total: None,
            data: Bytes::from_static(b"ab"),
        };
        assert!(pick(std::slice::from_ref(&top), &[(u64::MAX - 1, 2)]).is_ok());
        assert_eq!(pick(&[top], &[(u64::MAX - 1, 1)]).unwrap()[0], "a");
    }
}
