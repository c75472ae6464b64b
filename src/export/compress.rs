//! Pack a staged tree into a compressed layer in one pass, hashing both
//! the tar (diff_id) and the compressed blob (digest) on the way.
//!
//! Three stages run on their own threads, connected by bounded channels:
//! the tar writer (which also hashes the uncompressed stream), compressors,
//! and the collector, which puts the compressed blocks in order, hashes them
//! and writes them to any [`Write`]: a temp file ([`pack_layer`]) or, for a
//! commit, a channel feeding the upload ([`pack_to`]), so packing and
//! uploading overlap.
//! gzip is compressed in parallel the way pigz does it: 1 MiB blocks, each a
//! raw deflate stream primed with the previous block's last 32 KiB and ended
//! with a sync flush, concatenated into one ordinary gzip member (any gzip
//! reader reads it; it is one member, not many). eStargz members are
//! independent gzip members, compressed in parallel as they are (see
//! [`super::estargz`]); so are zstd:chunked frames.
//!
//! What goes in is any [`TarProducer`]: a staged tree ([`pack_to`]), or a
//! source layer's tar replayed by `regfs convert` ([`pack_from`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::{Compress, FlushCompress, Status};

use super::block::Block;
use super::estargz::{finish_toc, toc_tar, zstd_chunked_tail, LazySink, ZstdManifest};
use super::pack::{DirTree, PackOptions, PackStats, TarProducer, TarSink};
use crate::digest::{Algorithm, Digest, Hasher, HashingWriter};
use crate::error::{Error, Result};
use crate::estargz::{
    Format, TOC_DIGEST_ANNOTATION, ZSTD_CHECKSUM_ANNOTATIONS, ZSTD_POSITION_ANNOTATIONS,
};

/// How a layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// gzip (the default; every runtime reads it).
    #[default]
    Gzip,
    /// zstd.
    Zstd,
    /// eStargz: gzip members per file chunk, a TOC and a footer, so lazy
    /// readers (regfs, stargz-snapshotter) fetch files one at a time.
    Estargz,
    /// zstd:chunked: zstd frames per file chunk, the TOC in a skippable
    /// frame (containers/storage's lazy format). Written by `regfs
    /// convert`; not a `--compression` of commits.
    ZstdChunked,
    /// An uncompressed tar.
    None,
}

impl std::str::FromStr for Codec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Codec> {
        match s {
            "gzip" => Ok(Codec::Gzip),
            "zstd" => Ok(Codec::Zstd),
            "estargz" => Ok(Codec::Estargz),
            "none" | "uncompressed" => Ok(Codec::None),
            _ => Err(Error::invalid(format!(
                "compression {s:?}: expected gzip, zstd, estargz or none"
            ))),
        }
    }
}

impl Codec {
    /// The name `--compression` takes.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::Estargz => "estargz",
            Codec::ZstdChunked => "zstd:chunked",
            Codec::None => "none",
        }
    }

    /// The OCI layer media type.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Codec::Gzip | Codec::Estargz => "application/vnd.oci.image.layer.v1.tar+gzip",
            Codec::Zstd | Codec::ZstdChunked => "application/vnd.oci.image.layer.v1.tar+zstd",
            Codec::None => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// The lazy format this writes, if any.
    pub fn lazy_format(self) -> Option<Format> {
        match self {
            Codec::Estargz => Some(Format::Estargz),
            Codec::ZstdChunked => Some(Format::ZstdChunked),
            _ => None,
        }
    }
}

/// What packing produced.
#[derive(Debug, Clone)]
pub struct Packed {
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Digest of the blob.
    pub digest: Digest,
    /// Size of the blob.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub tar_size: u64,
    /// What went in.
    pub stats: PackStats,
    /// How it is compressed.
    pub codec: Codec,
    /// eStargz, zstd:chunked: sha256 of the TOC JSON (the `toc.digest` annotation).
    pub toc_digest: Option<Digest>,
    /// zstd:chunked: where the compressed TOC is, and its checksum.
    pub zstd_manifest: Option<ZstdManifest>,
}

impl Packed {
    /// The layer descriptor's annotations a lazy reader needs: eStargz
    /// `toc.digest` and `uncompressed-size` (what ctr-remote writes);
    /// zstd:chunked containers/storage's `manifest-checksum` and
    /// `manifest-position` alone, in both spellings (with a `toc.digest`
    /// beside them, podman 4.3 takes the layer for eStargz and its partial
    /// pull fails). Empty
    /// for the other codecs.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        if let Some(m) = &self.zstd_manifest {
            // Both spellings: containers/storage's current one, and the one
            // podman 4.3 (containers/storage 1.43) and ctr-remote use.
            for k in ZSTD_CHECKSUM_ANNOTATIONS {
                a.insert(k.to_string(), m.checksum.to_string());
            }
            for k in ZSTD_POSITION_ANNOTATIONS {
                a.insert(k.to_string(), m.position());
            }
        } else if let Some(toc) = &self.toc_digest {
            a.insert(TOC_DIGEST_ANNOTATION.to_string(), toc.to_string());
            a.insert(
                UNCOMPRESSED_SIZE_ANNOTATION.to_string(),
                self.tar_size.to_string(),
            );
        }
        a
    }
}

/// The layer annotation with an eStargz layer's uncompressed (tar) size.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";

/// A packed layer in a temp file (removed on drop).
#[derive(Debug)]
pub struct PackedLayer {
    /// The compressed blob.
    pub path: PathBuf,
    /// Digests and sizes.
    pub packed: Packed,
}

impl std::ops::Deref for PackedLayer {
    type Target = Packed;
    fn deref(&self) -> &Packed {
        &self.packed
    }
}

impl Drop for PackedLayer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const BLOCK: usize = 1 << 20;
const DICT: usize = 32 * 1024;

/// The tar side: buffers blocks, hashes them, hands them on.
struct BlockWriter {
    buf: Vec<u8>,
    tail: Vec<u8>,
    seq: u64,
    hasher: Hasher,
    crc: flate2::Crc,
    total: u64,
    tx: SyncSender<Block>,
}

impl BlockWriter {
    fn send(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        self.hasher.update(&data);
        self.crc.update(&data);
        self.total += data.len() as u64;
        let dict = std::mem::take(&mut self.tail);
        let keep = data.len().min(DICT);
        self.tail = data[data.len() - keep..].to_vec();
        let b = Block {
            seq: self.seq,
            data,
            dict,
            last,
        };
        self.seq += 1;
        self.tx
            .send(b)
            .map_err(|_| io::Error::other("compressor stopped"))
    }
}

impl Write for BlockWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOCK {
            self.send(false)?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TarSink for BlockWriter {
    /// Read file content straight into the block buffer (no 8 KiB copies).
    fn content(&mut self, data: &mut dyn std::io::Read, size: u64) -> io::Result<()> {
        let mut left = size;
        while left > 0 {
            let start = self.buf.len();
            let n = (BLOCK - start).min(left as usize);
            self.buf.resize(start + n, 0);
            data.read_exact(&mut self.buf[start..])?;
            left -= n as u64;
            if self.buf.len() == BLOCK {
                self.send(false)?;
            }
        }
        Ok(())
    }
}

/// Compress one block as raw deflate (sync-flushed, or finished if last).
fn deflate_block(b: &Block, level: flate2::Compression) -> io::Result<Vec<u8>> {
    let mut c = Compress::new(level, false);
    if !b.dict.is_empty() {
        c.set_dictionary(&b.dict).map_err(io::Error::other)?;
    }
    let flush = if b.last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(b.data.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(4096));
        }
        let st = c
            .compress_vec(&b.data[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == b.data.len();
        match st {
            Status::StreamEnd => break,
            _ if all_in && !b.last && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    Ok(out)
}

/// One complete gzip member (deterministic header: mtime 0, OS unknown).
fn gzip_member(data: &[u8], level: flate2::Compression) -> io::Result<Vec<u8>> {
    let mut e = flate2::GzBuilder::new().write(Vec::with_capacity(data.len() / 2 + 64), level);
    e.write_all(data)?;
    e.finish()
}

/// The gzip level: `REGFS_GZIP_LEVEL` (0-9), default 3: on the python rootfs
/// it is ~2.5% larger than level 6 and packs in about half the time.
fn gzip_level() -> flate2::Compression {
    std::env::var("REGFS_GZIP_LEVEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&l: &u32| l <= 9)
        .map(flate2::Compression::new)
        .unwrap_or(flate2::Compression::new(3))
}

/// Pack `root` into a temp file in `tmp_dir` with `codec`. `progress` gets
/// content bytes as they are read.
pub fn pack_layer(
    root: &Path,
    tmp_dir: &Path,
    codec: Codec,
    opts: &PackOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PackedLayer> {
    let path = tmp_dir.join(format!(
        "layer-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let file = File::create(&path)?;
    // From here on the file is removed if anything fails.
    let mut layer = PackedLayer {
        path,
        packed: Packed {
            diff_id: Digest::sha256_of(b""),
            digest: Digest::sha256_of(b""),
            size: 0,
            tar_size: 0,
            stats: PackStats::default(),
            codec,
            toc_digest: None,
            zstd_manifest: None,
        },
    };
    let (packed, out) = pack_to(
        root,
        codec,
        opts,
        progress,
        BufWriter::with_capacity(1 << 20, file),
    )?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    layer.packed = packed;
    Ok(layer)
}

/// What the tar side hands over when it is done.
struct Produced {
    hasher: Hasher,
    crc: u32,
    total: u64,
    stats: PackStats,
    toc: Vec<super::estargz::Pending>,
}

/// Pack `root` with `codec`, writing the blob to `out` as it is compressed
/// (in order, compressed blocks as they complete). `progress` gets content
/// bytes as they are read. Returns the digests and `out`, flushed.
pub fn pack_to<W: Write + Send>(
    root: &Path,
    codec: Codec,
    opts: &PackOptions,
    progress: &(dyn Fn(u64) + Sync),
    out: W,
) -> Result<(Packed, W)> {
    pack_from(DirTree { root, opts }, codec, progress, out)
}

/// Pack what `producer` writes with `codec`, writing the blob to `out` as it
/// is compressed: the tar producer, one compressor per core (gzip, eStargz,
/// zstd:chunked; one for zstd and none) and this thread's collector run at
/// once. Returns the digests and `out`, flushed.
pub fn pack_from<P: TarProducer, W: Write + Send>(
    producer: P,
    codec: Codec,
    progress: &(dyn Fn(u64) + Sync),
    out: W,
) -> Result<(Packed, W)> {
    let workers = match codec {
        Codec::Gzip | Codec::Estargz | Codec::ZstdChunked => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .clamp(1, 8),
        _ => 1,
    };
    let (tx, rx) = sync_channel::<Block>(workers * 2);
    let (ctx, crx) = sync_channel::<io::Result<(u64, Vec<u8>)>>(workers * 2);
    let rx = Arc::new(Mutex::new(rx));
    let out = HashingWriter::new(out, Algorithm::Sha256);
    std::thread::scope(|s| -> Result<_> {
        let producer = s.spawn(move || -> io::Result<Produced> {
            let mut count = |n| progress(n);
            if let Some(format) = codec.lazy_format() {
                let (w, stats) = producer.produce(LazySink::new(tx, format), &mut count)?;
                let (hasher, total, toc) = w.finish()?;
                return Ok(Produced {
                    hasher,
                    crc: 0,
                    total,
                    stats,
                    toc,
                });
            }
            let w = BlockWriter {
                buf: Vec::with_capacity(BLOCK),
                tail: Vec::new(),
                seq: 0,
                hasher: Hasher::new(Algorithm::Sha256),
                crc: flate2::Crc::new(),
                total: 0,
                tx,
            };
            let (mut w, stats) = producer.produce(w, &mut count)?;
            w.send(true)?;
            Ok(Produced {
                hasher: w.hasher,
                crc: w.crc.sum(),
                total: w.total,
                stats,
                toc: Vec::new(),
            })
        });
        for _ in 0..workers {
            let (rx, ctx) = (rx.clone(), ctx.clone());
            s.spawn(move || compress_worker(codec, &rx, &ctx));
        }
        // Only the workers hold the queue: when they stop (the output
        // failed), the tar side's next send fails instead of waiting forever.
        drop(rx);
        drop(ctx);
        let written = collect(codec, out, crx);
        let produced = producer
            .join()
            .map_err(|_| Error::Io(io::Error::other("tar writer panicked")))?;
        // An output error explains a tar-side one ("compressor stopped"); else the tar side's.
        let (mut out, offsets) = written?;
        let Produced {
            mut hasher,
            crc,
            mut total,
            stats,
            toc,
        } = produced?;
        let (mut toc_digest, mut zstd_manifest) = (None, None);
        match codec {
            Codec::Gzip => {
                out.write_all(&crc.to_le_bytes())?;
                out.write_all(&(total as u32).to_le_bytes())?;
            }
            Codec::Estargz => {
                let json = finish_toc(toc, &offsets, out.count(), Format::Estargz)?;
                toc_digest = Some(Digest::sha256_of(&json));
                let tail = toc_tar(&json);
                hasher.update(&tail);
                total += tail.len() as u64;
                let toc_offset = out.count();
                out.write_all(&gzip_member(&tail, gzip_level())?)?;
                out.write_all(&crate::estargz::footer::footer_bytes(toc_offset))?;
            }
            Codec::ZstdChunked => {
                let data_end = out.count();
                let json = finish_toc(toc, &offsets, data_end, Format::ZstdChunked)?;
                toc_digest = Some(Digest::sha256_of(&json));
                let (tail, m) = zstd_chunked_tail(&json, data_end, ZSTD_LEVEL)?;
                out.write_all(&tail)?;
                zstd_manifest = Some(m);
            }
            Codec::Zstd | Codec::None => {}
        }
        out.flush()?;
        let (out, digest, size) = out.finish();
        let packed = Packed {
            diff_id: hasher.finish(),
            digest,
            size,
            tar_size: total,
            stats,
            codec,
            toc_digest,
            zstd_manifest,
        };
        Ok((packed, out))
    })
}

/// The zstd level of zstd and zstd:chunked layers (zstd's default).
const ZSTD_LEVEL: i32 = 3;

fn compress_worker(
    codec: Codec,
    rx: &Mutex<Receiver<Block>>,
    tx: &SyncSender<io::Result<(u64, Vec<u8>)>>,
) {
    let level = gzip_level();
    match codec {
        Codec::Gzip | Codec::Estargz => loop {
            let Ok(b) = rx.lock().unwrap().recv() else {
                return;
            };
            let r = if codec == Codec::Gzip {
                deflate_block(&b, level)
            } else {
                gzip_member(&b.data, level)
            };
            if tx.send(r.map(|d| (b.seq, d))).is_err() {
                return;
            }
        },
        Codec::ZstdChunked => loop {
            let Ok(b) = rx.lock().unwrap().recv() else {
                return;
            };
            let r = zstd::bulk::compress(&b.data, ZSTD_LEVEL).map(|d| (b.seq, d));
            if tx.send(r).is_err() {
                return;
            }
        },
        Codec::Zstd => {
            // One streaming encoder; each block's output is what it emitted so far.
            let mut enc = match zstd::stream::write::Encoder::new(Vec::new(), 3) {
                Ok(e) => e,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            loop {
                let Ok(b) = rx.lock().unwrap().recv() else {
                    return;
                };
                let r = (|| {
                    enc.write_all(&b.data)?;
                    if b.last {
                        let e = std::mem::replace(
                            &mut enc,
                            zstd::stream::write::Encoder::new(Vec::new(), 3)?,
                        );
                        return e.finish();
                    }
                    Ok(std::mem::take(enc.get_mut()))
                })()
                .map(|d| (b.seq, d));
                if tx.send(r).is_err() {
                    return;
                }
            }
        }
        Codec::None => loop {
            let Ok(b) = rx.lock().unwrap().recv() else {
                return;
            };
            if tx.send(Ok((b.seq, b.data))).is_err() {
                return;
            }
        },
    }
}

/// Write compressed blocks in order (gzip: after the member header); returns
/// the output and where each block started in it.
fn collect<W: Write>(
    codec: Codec,
    mut out: HashingWriter<W>,
    rx: Receiver<io::Result<(u64, Vec<u8>)>>,
) -> Result<(HashingWriter<W>, Vec<u64>)> {
    if codec == Codec::Gzip {
        // Deflate, no flags, mtime 0, no extra flags, OS unknown: deterministic.
        out.write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
    }
    let mut offsets = Vec::new();
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    for r in rx {
        let (seq, data) = r?;
        pending.insert(seq, data);
        while let Some(d) = pending.remove(&next) {
            offsets.push(out.count());
            out.write_all(&d)?;
            next += 1;
        }
    }
    if !pending.is_empty() {
        return Err(Error::Io(io::Error::other("compressed blocks missing")));
    }
    Ok((out, offsets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..3_500_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        std::fs::write(d.path().join("big"), &big).unwrap();
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir/small"), b"hello").unwrap();
        std::fs::hard_link(d.path().join("dir/small"), d.path().join("link")).unwrap();
        std::os::unix::fs::symlink("dir/small", d.path().join("sym")).unwrap();
        let long = "n".repeat(150);
        std::fs::write(d.path().join(&long), b"long").unwrap();
        d
    }

    #[test]
    fn gzip_is_one_valid_member_and_deterministic() {
        let src = tree();
        let tmp = tempfile::tempdir().unwrap();
        let a = pack_layer(
            src.path(),
            tmp.path(),
            Codec::Gzip,
            &PackOptions::default(),
            &|_| {},
        )
        .unwrap();
        let b = pack_layer(
            src.path(),
            tmp.path(),
            Codec::Gzip,
            &PackOptions::default(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.diff_id, b.diff_id);
        let blob = std::fs::read(&a.path).unwrap();
        assert_eq!(Digest::sha256_of(&blob), a.digest);
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(Digest::sha256_of(&tar), a.diff_id);
        assert_eq!(tar.len() as u64, a.tar_size);
        let mut names = Vec::new();
        for e in tar::Archive::new(&tar[..]).entries().unwrap() {
            let e = e.unwrap();
            names.push((
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
            ));
        }
        let n: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(n[0], "big");
        assert!(n.contains(&"dir/"));
        assert!(n.contains(&"n".repeat(150).as_str()));
        assert!(names
            .iter()
            .any(|(n, t)| n == "link" && *t == tar::EntryType::Link));
        let z = pack_layer(
            src.path(),
            tmp.path(),
            Codec::Zstd,
            &PackOptions::default(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(z.diff_id, a.diff_id);
        let zb = std::fs::read(&z.path).unwrap();
        let zt = zstd::stream::decode_all(&zb[..]).unwrap();
        assert_eq!(Digest::sha256_of(&zt), a.diff_id);
    }

    /// A writer that fails once `left` bytes have been written.
    struct FailAfter {
        left: usize,
    }

    impl Write for FailAfter {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if data.len() > self.left {
                return Err(io::Error::other("the upload stopped"));
            }
            self.left -= data.len();
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_output_fails_the_pack_instead_of_hanging() {
        // Enough content that the tar side is still sending blocks when the
        // output fails (it once waited forever for the stopped compressors).
        let src = tempfile::tempdir().unwrap();
        for i in 0..40 {
            let data: Vec<u8> = (0..1_000_000u32)
                .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 24) as u8)
                .collect();
            std::fs::write(src.path().join(format!("f{i}")), data).unwrap();
        }
        for codec in [Codec::Gzip, Codec::Estargz, Codec::ZstdChunked, Codec::Zstd] {
            let (tx, rx) = std::sync::mpsc::channel();
            let root = src.path().to_path_buf();
            std::thread::spawn(move || {
                let r = pack_to(
                    &root,
                    codec,
                    &PackOptions::default(),
                    &|_| {},
                    FailAfter { left: 16 << 10 },
                );
                let _ = tx.send(r.map(|_| ()));
            });
            let r = rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("{codec:?}: packing hung after its output failed"));
            assert!(r.is_err(), "{codec:?}: packed into a failed output");
        }
    }

    #[test]
    fn estargz_reads_back_lazily_and_as_a_plain_gzip_tar() {
        use crate::estargz::{decode_chunk, parse_footer, toc, toc_to_tree, Format, Toc};
        use crate::layer::{FileData, Limits};
        let src = tree();
        // A file of three chunks (the last one short).
        let multi: Vec<u8> = (0..(2 * super::super::estargz::CHUNK_SIZE as u32 + 12345))
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        std::fs::write(src.path().join("dir/multi"), &multi).unwrap();
        std::fs::write(src.path().join("empty"), b"").unwrap();
        let mut blob = Vec::new();
        let (p, _) = pack_to(
            src.path(),
            Codec::Estargz,
            &PackOptions::default(),
            &|_| {},
            &mut blob,
        )
        .unwrap();
        assert_eq!(Digest::sha256_of(&blob), p.digest);
        assert_eq!(blob.len() as u64, p.size);
        // A valid gzip tar: diff_id over everything, TOC last.
        let mut tar = Vec::new();
        flate2::read::MultiGzDecoder::new(&blob[..])
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(Digest::sha256_of(&tar), p.diff_id);
        assert_eq!(tar.len() as u64, p.tar_size);
        let names: Vec<String> = tar::Archive::new(&tar[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names.last().unwrap(), crate::estargz::TOC_NAME);
        assert!(names.contains(&"dir/multi".to_string()));
        // Footer → TOC → tree; every chunk decodes and verifies.
        let (off, footer) = parse_footer(&blob).unwrap();
        let json =
            toc::estargz_toc_json(&blob[off as usize..blob.len() - footer as usize]).unwrap();
        assert_eq!(Some(Digest::sha256_of(&json)), p.toc_digest);
        let t = Toc::parse(&json).unwrap();
        let idx = toc_to_tree(&t, Format::Estargz, off, 0, &Limits::default()).unwrap();
        for (path, want) in [
            ("dir/multi", &multi[..]),
            ("dir/small", b"hello"),
            ("link", b"hello"),
        ] {
            let id = idx.tree.lookup_path(path.as_bytes()).unwrap();
            let FileData::Chunks { chunks, .. } = &idx.tree.node(id).content else {
                panic!("{path}: not chunked");
            };
            let mut got = Vec::new();
            for c in chunks {
                let start = c.blob_offset as usize;
                let end = start + c.blob_len as usize;
                got.extend(decode_chunk(Format::Estargz, &blob[start..end], c).unwrap());
            }
            assert_eq!(got, want, "{path}");
        }
        let multi_id = idx.tree.lookup_path(b"dir/multi").unwrap();
        assert!(
            matches!(&idx.tree.node(multi_id).content, FileData::Chunks { chunks, .. } if chunks.len() == 3)
        );
        // Deterministic.
        let mut again = Vec::new();
        pack_to(
            src.path(),
            Codec::Estargz,
            &PackOptions::default(),
            &|_| {},
            &mut again,
        )
        .unwrap();
        assert_eq!(blob, again);
    }
}
