//! The table of contents: its JSON form, and getting the JSON out of the
//! bytes fetched from the blob (a gzip member holding a one-entry tar for
//! eStargz, a zstd frame for zstd:chunked). Verification against the
//! annotations is the caller's: see [`crate::content`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::io::Read;

use serde::Deserialize;

use super::{MAX_TOC_SIZE, TOC_NAME};
use crate::error::{Error, Result};

/// The TOC (`stargz.index.json`), as far as regfs uses it. Its strings
/// borrow from the JSON where they hold no escapes (a large TOC is tens of
/// thousands of them, parsed on a first read's path).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Toc<'a> {
    /// Must be 1.
    #[serde(default)]
    pub version: i64,
    /// Every tar entry and every chunk of the layer, in blob order.
    #[serde(default, borrow)]
    pub entries: Vec<TocEntry<'a>>,
}

/// One TOC entry (a tar entry, or a further chunk of a regular file).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TocEntry<'a> {
    /// The full path as stored in the tar.
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// `dir`, `reg`, `symlink`, `hardlink`, `char`, `block`, `fifo`, `chunk`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Uncompressed size of a regular file.
    pub size: u64,
    /// RFC 3339 modification time (empty: zero).
    #[serde(borrow)]
    pub modtime: Cow<'a, str>,
    /// Target of symlinks and hard links.
    #[serde(borrow)]
    pub link_name: Cow<'a, str>,
    /// Permission and mode bits.
    pub mode: i64,
    /// Owner.
    pub uid: i64,
    /// Group.
    pub gid: i64,
    /// Device major.
    pub dev_major: i64,
    /// Device minor.
    pub dev_minor: i64,
    /// Extended attributes, values base64 (Go's `[]byte` in JSON).
    pub xattrs: BTreeMap<String, String>,
    /// Digest of the whole file's contents.
    #[serde(borrow)]
    pub digest: Cow<'a, str>,
    /// Offset of the gzip member / zstd frame holding this file or chunk.
    pub offset: i64,
    /// End of the compressed data (containers/storage only).
    pub end_offset: i64,
    /// Offset of this chunk in the file.
    pub chunk_offset: i64,
    /// Uncompressed size of this chunk (0: up to the end of the file).
    pub chunk_size: i64,
    /// Digest of this chunk's uncompressed bytes.
    #[serde(borrow)]
    pub chunk_digest: Cow<'a, str>,
    /// Offset of the chunk inside its decompressed member (eStargz with min-chunk-size).
    pub inner_offset: i64,
    /// containers/storage: `""`/`"data"`, or `"zeros"` for a hole without data.
    #[serde(borrow)]
    pub chunk_type: Cow<'a, str>,
}

impl<'a> Toc<'a> {
    /// Parse TOC JSON.
    pub fn parse(json: &'a [u8]) -> Result<Toc<'a>> {
        let toc: Toc =
            serde_json::from_slice(json).map_err(|e| Error::invalid(format!("TOC JSON: {e}")))?;
        if toc.version != 1 {
            return Err(Error::Unsupported(format!("TOC version {}", toc.version)));
        }
        Ok(toc)
    }

    /// The same TOC owning its strings.
    pub fn into_owned(self) -> Toc<'static> {
        Toc {
            version: self.version,
            entries: self.entries.into_iter().map(TocEntry::into_owned).collect(),
        }
    }
}

impl TocEntry<'_> {
    /// The same entry owning its strings.
    pub fn into_owned(self) -> TocEntry<'static> {
        let own = |c: Cow<'_, str>| Cow::Owned(c.into_owned());
        TocEntry {
            name: own(self.name),
            kind: own(self.kind),
            modtime: own(self.modtime),
            link_name: own(self.link_name),
            digest: own(self.digest),
            chunk_digest: own(self.chunk_digest),
            chunk_type: own(self.chunk_type),
            xattrs: self.xattrs,
            ..self
        }
    }
}

/// The TOC JSON out of an eStargz blob's bytes from the TOC offset to the
/// footer: a gzip member holding a tar whose entry `stargz.index.json` is it.
pub fn estargz_toc_json(member: &[u8]) -> Result<Vec<u8>> {
    let gz = flate2::read::MultiGzDecoder::new(member).take(MAX_TOC_SIZE + 64 * 1024);
    let mut ar = tar::Archive::new(gz);
    let bad = |e: std::io::Error| Error::invalid(format!("eStargz TOC: {e}"));
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if entry.path_bytes().as_ref() == TOC_NAME.as_bytes() {
            if entry.size() > MAX_TOC_SIZE {
                return Err(Error::TooLarge(format!(
                    "eStargz TOC of {} bytes",
                    entry.size()
                )));
            }
            let mut json = Vec::with_capacity(entry.size() as usize);
            entry.read_to_end(&mut json).map_err(bad)?;
            return Ok(json);
        }
    }
    Err(Error::invalid(format!(
        "eStargz: no {TOC_NAME} at the TOC offset"
    )))
}

/// The TOC JSON out of a zstd:chunked blob's compressed TOC (one zstd frame).
pub fn zstd_toc_json(compressed: &[u8], length_uncompressed: u64) -> Result<Vec<u8>> {
    let cap = length_uncompressed.min(MAX_TOC_SIZE);
    let mut json = Vec::with_capacity(cap as usize);
    zstd::stream::read::Decoder::with_buffer(compressed)
        .map_err(|e| Error::invalid(format!("zstd:chunked TOC: {e}")))?
        .take(cap + 1)
        .read_to_end(&mut json)
        .map_err(|e| Error::invalid(format!("zstd:chunked TOC: {e}")))?;
    if json.len() as u64 != length_uncompressed {
        return Err(Error::invalid(format!(
            "zstd:chunked TOC: {} bytes, the annotation says {length_uncompressed}",
            json.len()
        )));
    }
    Ok(json)
}
