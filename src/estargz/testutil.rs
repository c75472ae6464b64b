//! Test writers: a layer tar (built with [`crate::layer::testutil::TarW`],
//! hostile entries included) re-laid as an eStargz blob (by the export's
//! real eStargz writer, [`crate::export::estargz`]) and as a zstd:chunked
//! blob (a small writer after containers/storage's layout), each with what
//! the annotations would say to find and trust its TOC.
//!
//! Both keep every tar entry as it is stored (raw names, `./` prefixes,
//! whiteout files, duplicates, hard links), as the Go converters do: the
//! rules are the reader's to apply. The TOC is JSON, so names and link
//! targets must be UTF-8; GNU sparse entries are not supported here.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;

use super::{Format, Toc};
use crate::digest::Digest;
use crate::export::pack::{EntryDesc, TarSink};

/// A lazily servable layer blob and where its TOC is.
pub(crate) struct LazyBlob {
    /// The chunk compression.
    pub format: Format,
    /// The whole blob.
    pub blob: Vec<u8>,
    /// Where the chunk data ends (the TOC's start).
    pub data_end: u64,
    /// The decoded, verified TOC.
    pub toc: Toc<'static>,
    /// The layer descriptor's annotations that find and verify the TOC.
    pub annotations: BTreeMap<String, String>,
}

/// One tar member: its header blocks (extension headers included), its
/// description, and its content.
struct Member {
    headers: Vec<u8>,
    desc: EntryDesc,
    data: Vec<u8>,
}

/// The members of `tar`, in order, with their raw header bytes.
fn members(tar: &[u8]) -> Vec<Member> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(tar);
    let mut prev_end = 0usize;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let data_at = e.raw_file_position() as usize;
        let headers = tar[prev_end..data_at].to_vec();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => "reg",
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "symlink",
            tar::EntryType::Link => "hardlink",
            tar::EntryType::Char => "char",
            tar::EntryType::Block => "block",
            tar::EntryType::Fifo => "fifo",
            t => panic!("test writer: tar entry type {t:?} not supported"),
        };
        let name = e.path_bytes().into_owned();
        let link = e
            .link_name_bytes()
            .map(|l| l.into_owned())
            .unwrap_or_default();
        let mut xattrs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut uid = h.uid().unwrap();
        let mut gid = h.gid().unwrap();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for rec in pax {
                let rec = rec.unwrap();
                let key = rec.key().unwrap();
                if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(x.to_string(), rec.value_bytes().to_vec());
                } else if key == "uid" {
                    uid = rec.value().unwrap().parse().unwrap();
                } else if key == "gid" {
                    gid = rec.value().unwrap().parse().unwrap();
                } else {
                    assert!(key == "path" || key == "linkpath", "PAX {key} unsupported");
                }
            }
        }
        let mut data = Vec::new();
        if kind == "reg" {
            e.read_to_end(&mut data).unwrap();
        }
        prev_end = data_at + (data.len()).div_ceil(512) * 512;
        out.push(Member {
            headers,
            desc: EntryDesc {
                name,
                kind,
                size: data.len() as u64,
                mtime: h.mtime().unwrap() as i64,
                link,
                mode: h.mode().unwrap() & 0o7777,
                uid,
                gid,
                dev: (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                ),
                xattrs: xattrs.into_iter().collect(),
            },
            data,
        });
    }
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// `tar` as an eStargz blob, by the export's eStargz writer.
pub(crate) fn estargz(tar: &[u8]) -> LazyBlob {
    use crate::export::estargz::{finish_toc, toc_tar, LazySink};
    let (tx, rx) = std::sync::mpsc::sync_channel(1 << 16);
    let mut sink = LazySink::new(tx, Format::Estargz);
    for m in members(tar) {
        sink.entry(&m.desc).unwrap();
        sink.write_all(&m.headers).unwrap();
        if m.desc.kind == "reg" {
            sink.content(&mut &m.data[..], m.data.len() as u64).unwrap();
            let pad = m.data.len().div_ceil(512) * 512 - m.data.len();
            sink.write_all(&vec![0; pad]).unwrap();
        }
    }
    sink.end().unwrap();
    let (_, _, entries) = sink.finish().unwrap();
    let mut blob = Vec::new();
    let mut offsets = Vec::new();
    for b in rx.try_iter() {
        assert_eq!(b.seq as usize, offsets.len(), "members in order");
        offsets.push(blob.len() as u64);
        blob.extend_from_slice(&gzip(&b.data));
    }
    let data_end = blob.len() as u64;
    let json = finish_toc(entries, &offsets, data_end, Format::Estargz).unwrap();
    blob.extend_from_slice(&gzip(&toc_tar(&json)));
    blob.extend_from_slice(&super::footer::footer_bytes(data_end));
    // What a reader does: the footer, then the TOC member.
    let (toc_at, footer) = super::parse_footer(&blob).unwrap();
    assert_eq!(toc_at, data_end);
    let member = &blob[toc_at as usize..blob.len() - footer as usize];
    let toc = Toc::parse(&super::toc::estargz_toc_json(member).unwrap())
        .unwrap()
        .into_owned();
    let annotations = BTreeMap::from([(
        super::TOC_DIGEST_ANNOTATION.to_string(),
        Digest::sha256_of(&json).to_string(),
    )]);
    LazyBlob {
        format: Format::Estargz,
        blob,
        data_end,
        toc,
        annotations,
    }
}

/// `tar` as a zstd:chunked blob: tar headers in the open zstd frame, each
/// regular file's content in frames of at most `chunk` bytes, a run of
/// `chunk` or more zero bytes as a `"zeros"` hole with no data, the TOC a
/// zstd frame after the data.
pub(crate) fn zstd_chunked(tar: &[u8], chunk: usize) -> LazyBlob {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut blob = Vec::new();
    let mut open: Vec<u8> = Vec::new();
    let flush = |blob: &mut Vec<u8>, open: &mut Vec<u8>| {
        if !open.is_empty() {
            blob.extend_from_slice(&zstd::encode_all(&open[..], 3).unwrap());
            open.clear();
        }
    };
    let mut entries: Vec<serde_json::Value> = Vec::new();
    for m in members(tar) {
        let d = &m.desc;
        open.extend_from_slice(&m.headers);
        let utf8 = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8 name (the TOC is JSON)");
        let mut e = serde_json::json!({
            "name": utf8(&d.name),
            "type": d.kind,
            "modtime": crate::rfc3339::format(d.mtime),
            "mode": d.mode,
            "uid": d.uid,
            "gid": d.gid,
        });
        if !d.link.is_empty() {
            e["linkName"] = utf8(&d.link).into();
        }
        if d.kind == "char" || d.kind == "block" {
            e["devMajor"] = d.dev.0.into();
            e["devMinor"] = d.dev.1.into();
        }
        if !d.xattrs.is_empty() {
            let x: serde_json::Map<String, serde_json::Value> = d
                .xattrs
                .iter()
                .map(|(k, v)| (k.clone(), b64.encode(v).into()))
                .collect();
            e["xattrs"] = x.into();
        }
        if d.kind != "reg" || m.data.is_empty() {
            entries.push(e);
            continue;
        }
        e["size"] = m.data.len().into();
        e["digest"] = Digest::sha256_of(&m.data).to_string().into();
        let mut first = true;
        for (i, piece) in m.data.chunks(chunk).enumerate() {
            let zeros = piece.len() == chunk && piece.iter().all(|&b| b == 0);
            let mut c = if first {
                e.clone()
            } else {
                serde_json::json!({"type": "chunk", "name": utf8(&d.name)})
            };
            if zeros {
                c["chunkType"] = "zeros".into();
            } else {
                flush(&mut blob, &mut open);
                c["offset"] = blob.len().into();
                open.extend_from_slice(piece);
                flush(&mut blob, &mut open);
                c["endOffset"] = blob.len().into();
            }
            c["chunkOffset"] = (i * chunk).into();
            c["chunkSize"] = piece.len().into();
            c["chunkDigest"] = Digest::sha256_of(piece).to_string().into();
            entries.push(c);
            first = false;
        }
        // The tar padding after the content goes with the next headers.
        let pad = m.data.len().div_ceil(512) * 512 - m.data.len();
        open.extend(std::iter::repeat_n(0u8, pad));
    }
    open.extend_from_slice(&[0; 1024]);
    flush(&mut blob, &mut open);
    let data_end = blob.len() as u64;
    let json = serde_json::to_vec(&serde_json::json!({"version": 1, "entries": entries})).unwrap();
    let compressed = zstd::encode_all(&json[..], 3).unwrap();
    blob.extend_from_slice(&compressed);
    // What a reader does: the TOC at the position the annotation names.
    let toc_json =
        super::toc::zstd_toc_json(&blob[data_end as usize..], json.len() as u64).unwrap();
    let annotations = BTreeMap::from([
        (
            super::ZSTD_CHECKSUM_ANNOTATIONS[0].to_string(),
            Digest::sha256_of(&compressed).to_string(),
        ),
        (
            super::ZSTD_POSITION_ANNOTATIONS[0].to_string(),
            format!("{data_end}:{}:{}:1", compressed.len(), json.len()),
        ),
    ]);
    LazyBlob {
        format: Format::ZstdChunked,
        blob,
        data_end,
        toc: Toc::parse(&toc_json).unwrap().into_owned(),
        annotations,
    }
}
