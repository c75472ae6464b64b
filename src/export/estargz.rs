//! Writing eStargz layers (containerd/stargz-snapshotter `docs/estargz.md`),
//! the way its Go writer lays them out, and zstd:chunked layers
//! (containers/storage `pkg/chunked`; stargz-snapshotter
//! `estargz/zstdchunked`) from the same sink ([`LazySink`]):
//!
//! - a gzip tar in which every chunk (at most [`CHUNK_SIZE`] bytes) of a
//!   regular file's content starts a new gzip member; tar headers, padding
//!   and non-file entries go into whatever member is open (the previous
//!   chunk's, or a headers-only one);
//! - the TOC `stargz.index.json` as the last tar entry, followed by the
//!   end-of-archive blocks, in a gzip member of its own;
//! - the 51-byte footer, an empty gzip member whose extra field holds the
//!   TOC's offset.
//!
//! TOC entries carry `offset` (of the member a chunk starts), `chunkOffset`,
//! `chunkSize` (0 for a file's last, short chunk), `chunkDigest`, and the
//! whole file's `digest`. Member offsets are only known once the members
//! are compressed, so the sink records member sequence numbers and
//! [`finish_toc`] turns them into offsets. Landmark files are whatever the
//! tar producer writes (a commit writes none; `regfs convert` writes
//! `.prefetch.landmark` or `.no.prefetch.landmark`).
//!
//! zstd:chunked differs in three ways: members are zstd frames, and TOC
//! entries also carry `endOffset` (which containers/storage reads: it
//! decompresses `offset..endOffset` and keeps the chunk's size of it), here
//! where the next frame starts, so that the chunks of files written one
//! after another stay adjacent in the blob and a reader fetches a run of
//! them in one request; the end-of-archive blocks stay in the tar stream
//! (there is no TOC entry in the tar); the TOC follows the frames,
//! zstd-compressed inside a skippable frame, then a skippable frame holding
//! the 40-byte footer (see [`zstd_chunked_tail`]).

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc::SyncSender;

use base64::Engine;
use serde::Serialize;

use super::block::Block;
use super::pack::{EntryDesc, TarSink};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::estargz::{Format, TOC_NAME};

/// The largest chunk of file content in one gzip member.
pub const CHUNK_SIZE: u64 = 4 << 20;

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// One TOC entry as written (Go's `TOCEntry`, `omitempty` fields skipped).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutEntry {
    name: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "is_zero")]
    size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    modtime: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    link_name: String,
    #[serde(skip_serializing_if = "is_zero")]
    mode: u64,
    #[serde(skip_serializing_if = "is_zero")]
    uid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    gid: u64,
    #[serde(skip_serializing_if = "is_zero")]
    dev_major: u64,
    #[serde(skip_serializing_if = "is_zero")]
    dev_minor: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    xattrs: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    digest: String,
    #[serde(skip_serializing_if = "is_zero")]
    offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    end_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_offset: u64,
    #[serde(skip_serializing_if = "is_zero")]
    chunk_size: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    chunk_digest: String,
}

/// A TOC entry whose chunk starts member number `member` (offset unknown yet).
#[derive(Debug)]
pub struct Pending {
    entry: OutEntry,
    member: Option<u64>,
}

#[derive(Serialize)]
struct TocOut<'a> {
    version: u32,
    entries: Vec<&'a OutEntry>,
}

/// The tar side of an eStargz or zstd:chunked layer: cuts the stream into
/// members (gzip members or zstd frames, sent to the compressors as blocks),
/// hashes the tar (diff_id), and collects the TOC.
pub struct LazySink {
    format: Format,
    buf: Vec<u8>,
    seq: u64,
    tx: SyncSender<Block>,
    hasher: Hasher,
    total: u64,
    entries: Vec<Pending>,
    ended: bool,
}

impl LazySink {
    /// A sink sending `format`'s members to `tx`.
    pub(crate) fn new(tx: SyncSender<Block>, format: Format) -> LazySink {
        LazySink {
            format,
            buf: Vec::new(),
            seq: 0,
            tx,
            hasher: Hasher::new(Algorithm::Sha256),
            total: 0,
            entries: Vec::new(),
            ended: false,
        }
    }

    /// End the open member (if it has anything in it).
    fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = Block {
            seq: self.seq,
            data: std::mem::take(&mut self.buf),
            dict: Vec::new(),
            last: false,
        };
        self.seq += 1;
        self.tx
            .send(b)
            .map_err(|_| io::Error::other("compressor stopped"))
    }

    fn hash(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.total += data.len() as u64;
    }

    /// The tar hash, its length, and the TOC entries (zstd:chunked: the
    /// open frame, with the end-of-archive blocks, is sent first).
    pub fn finish(mut self) -> io::Result<(Hasher, u64, Vec<Pending>)> {
        self.cut()?;
        Ok((self.hasher, self.total, self.entries))
    }
}

impl Write for LazySink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.ended {
            // The end-of-archive blocks: they come after the TOC entry instead.
            if data.iter().any(|&b| b != 0) {
                return Err(io::Error::other("eStargz: data after the end of the tar"));
            }
            return Ok(data.len());
        }
        self.hash(data);
        self.buf.extend_from_slice(data);
        if self.buf.len() as u64 >= CHUNK_SIZE {
            self.cut()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn utf8(b: &[u8], what: &str) -> io::Result<String> {
    String::from_utf8(b.to_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "eStargz: {what} {:?} is not UTF-8 (the TOC is JSON); use gzip",
                String::from_utf8_lossy(b)
            ),
        )
    })
}

impl TarSink for LazySink {
    fn entry(&mut self, d: &EntryDesc) -> io::Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut e = OutEntry {
            name: utf8(&d.name, "name")?,
            kind: d.kind,
            size: d.size,
            modtime: crate::rfc3339::format(d.mtime),
            link_name: utf8(&d.link, "link target")?,
            mode: d.mode as u64,
            uid: d.uid,
            gid: d.gid,
            dev_major: d.dev.0 as u64,
            dev_minor: d.dev.1 as u64,
            xattrs: d
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), b64.encode(v)))
                .collect(),
            ..OutEntry::default()
        };
        if d.kind == "reg" && d.size == 0 {
            e.digest = Digest::sha256_of(b"").to_string();
        }
        self.entries.push(Pending {
            entry: e,
            member: None,
        });
        Ok(())
    }

    fn content(&mut self, data: &mut dyn Read, size: u64) -> io::Result<()> {
        let idx = self
            .entries
            .len()
            .checked_sub(1)
            .ok_or_else(|| io::Error::other("eStargz: content before any entry"))?;
        let name = self.entries[idx].entry.name.clone();
        let mut whole = (size > CHUNK_SIZE).then(|| Hasher::new(Algorithm::Sha256));
        let mut single = None;
        let mut written = 0u64;
        while written < size {
            self.cut()?;
            let n = (size - written).min(CHUNK_SIZE);
            self.buf.resize(n as usize, 0);
            data.read_exact(&mut self.buf)?;
            let chunk = std::mem::take(&mut self.buf);
            self.hash(&chunk);
            let digest = Digest::sha256_of(&chunk);
            if let Some(h) = whole.as_mut() {
                h.update(&chunk);
            }
            self.buf = chunk;
            let chunk_size = if n == CHUNK_SIZE { n } else { 0 };
            if written == 0 {
                let p = &mut self.entries[idx];
                p.member = Some(self.seq);
                p.entry.chunk_size = chunk_size;
                p.entry.chunk_digest = digest.to_string();
                single = Some(digest);
            } else {
                self.entries.push(Pending {
                    entry: OutEntry {
                        name: name.clone(),
                        kind: "chunk",
                        chunk_offset: written,
                        chunk_size,
                        chunk_digest: digest.to_string(),
                        ..OutEntry::default()
                    },
                    member: Some(self.seq),
                });
            }
            written += n;
        }
        let digest = match whole {
            Some(h) => h.finish(),
            None => single.unwrap_or_else(|| Digest::sha256_of(b"")),
        };
        self.entries[idx].entry.digest = digest.to_string();
        Ok(())
    }

    fn end(&mut self) -> io::Result<()> {
        if self.format == Format::Estargz {
            // The end-of-archive blocks follow the TOC entry instead.
            self.cut()?;
            self.ended = true;
        }
        Ok(())
    }
}

/// The TOC JSON, with member numbers turned into blob offsets
/// (`offsets[seq]` = where member `seq` starts; `data_end` = where the last
/// member ends). zstd:chunked entries also get `endOffset`.
pub fn finish_toc(
    entries: Vec<Pending>,
    offsets: &[u64],
    data_end: u64,
    format: Format,
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.len());
    let lost = || io::Error::other("lazy layer: a member was lost");
    for mut p in entries {
        if let Some(m) = p.member {
            let m = m as usize;
            p.entry.offset = *offsets.get(m).ok_or_else(lost)?;
            if format == Format::ZstdChunked {
                p.entry.end_offset = match offsets.get(m + 1) {
                    Some(&o) => o,
                    None if m + 1 == offsets.len() => data_end,
                    None => return Err(lost()),
                };
            }
        }
        out.push(p.entry);
    }
    serde_json::to_vec(&TocOut {
        version: 1,
        entries: out.iter().collect(),
    })
    .map_err(io::Error::other)
}

/// The TOC as the last tar entry, then the end-of-archive blocks: the
/// uncompressed content of the TOC member.
pub fn toc_tar(json: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path(TOC_NAME).expect("short name");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o444);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(json.len() as u64);
    h.set_cksum();
    let mut t = Vec::with_capacity(json.len() + 2048);
    t.extend_from_slice(h.as_bytes());
    t.extend_from_slice(json);
    t.resize(t.len().div_ceil(512) * 512 + 1024, 0);
    t
}

/// zstd's skippable frame magic (`0x184D2A50`, little-endian).
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// The zstd:chunked footer's magic (`GnUlInUx`).
const ZSTD_CHUNKED_MAGIC: &[u8; 8] = b"GnUlInUx";
/// The zstd:chunked manifest type of a TOC in the CRFS / eStargz JSON form.
const MANIFEST_TYPE_CRFS: u64 = 1;

/// Where a zstd:chunked TOC landed: what the
/// `…zstd-chunked.manifest-position` annotation says and what
/// `…manifest-checksum` is the digest of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZstdManifest {
    /// Offset of the compressed TOC in the blob.
    pub offset: u64,
    /// Its compressed length.
    pub length: u64,
    /// The JSON's length.
    pub length_uncompressed: u64,
    /// sha256 of the compressed TOC.
    pub checksum: Digest,
}

impl ZstdManifest {
    /// The `manifest-position` annotation: `offset:length:lengthUncompressed:type`.
    pub fn position(&self) -> String {
        format!(
            "{}:{}:{}:{MANIFEST_TYPE_CRFS}",
            self.offset, self.length, self.length_uncompressed
        )
    }
}

/// A skippable zstd frame holding `data`.
fn skippable(data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(data.len() + 8);
    f.extend_from_slice(&SKIPPABLE_MAGIC);
    f.extend_from_slice(&(data.len() as u32).to_le_bytes());
    f.extend_from_slice(data);
    f
}

/// The end of a zstd:chunked blob whose frames end at `data_end`: the TOC
/// JSON zstd-compressed (at `level`) in a skippable frame, then a skippable
/// frame with the 40-byte footer (TOC offset, compressed length,
/// uncompressed length, manifest type, all u64 little-endian, then the
/// magic), as containers/storage's `WriteZstdChunkedManifest` and
/// stargz-snapshotter's `zstdchunked` write it.
pub fn zstd_chunked_tail(
    json: &[u8],
    data_end: u64,
    level: i32,
) -> io::Result<(Vec<u8>, ZstdManifest)> {
    let compressed = zstd::bulk::compress(json, level)?;
    let m = ZstdManifest {
        offset: data_end + 8,
        length: compressed.len() as u64,
        length_uncompressed: json.len() as u64,
        checksum: Digest::sha256_of(&compressed),
    };
    let mut footer = Vec::with_capacity(40);
    for v in [
        m.offset,
        m.length,
        m.length_uncompressed,
        MANIFEST_TYPE_CRFS,
    ] {
        footer.extend_from_slice(&v.to_le_bytes());
    }
    footer.extend_from_slice(ZSTD_CHUNKED_MAGIC);
    let mut tail = skippable(&compressed);
    tail.extend(skippable(&footer));
    Ok((tail, m))
}
