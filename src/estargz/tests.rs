use std::io::Write;

use super::*;
use crate::layer::{Chunk, FileData, Limits, NodeKind};
use crate::rfc3339::parse as parse_rfc3339;

#[test]
fn footer_roundtrip_and_legacy() {
    let f = footer::footer_bytes(0x1234);
    assert_eq!(f.len() as u64, FOOTER_SIZE);
    let mut blob = vec![7u8; 100];
    blob.extend_from_slice(&f);
    assert_eq!(parse_footer(&blob).unwrap(), (0x1234, FOOTER_SIZE));
    // The footer is a valid empty gzip member.
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&f[..]), &mut out).unwrap();
    assert!(out.is_empty());
    // Legacy stargz: XLEN 22, no subfield header.
    let mut legacy = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0];
    legacy.extend_from_slice(b"00000000000000ffSTARGZ");
    legacy.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(legacy.len() as u64, LEGACY_FOOTER_SIZE);
    assert_eq!(parse_footer(&legacy).unwrap(), (0xff, LEGACY_FOOTER_SIZE));
    // Not a footer.
    assert!(parse_footer(&[0u8; 51]).is_err());
    let mut bad = f.clone();
    bad[33] = b'X'; // inside the STARGZ mark
    assert!(parse_footer(&bad).is_err());
}

#[test]
fn rfc3339() {
    assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
    assert_eq!(parse_rfc3339("2019-08-20T10:30:43Z"), Some((1566297043, 0)));
    assert_eq!(
        parse_rfc3339("2019-08-20T12:30:43.5+02:00"),
        Some((1566297043, 500_000_000))
    );
    assert_eq!(parse_rfc3339("1969-12-31T23:59:59Z"), Some((-1, 0)));
    assert_eq!(parse_rfc3339("garbage"), None);
    assert_eq!(parse_rfc3339("2019-13-20T10:30:43Z"), None);
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn chunk(data: &[u8]) -> Chunk {
    Chunk {
        file_offset: 0,
        size: data.len() as u64,
        blob_offset: 10,
        blob_len: 0,
        inner_offset: 0,
        digest: crate::digest::Digest::sha256_of(data),
        zeros: false,
    }
}

#[test]
fn chunks_verify_gzip_and_zstd() {
    let data = b"hello, lazy world\n".repeat(100);
    let c = chunk(&data);
    // A member followed by the next member's bytes: only the first is read.
    let mut blob = gz(&data);
    blob.extend_from_slice(&gz(b"next file"));
    assert_eq!(decode_chunk(Format::Estargz, &blob, &c).unwrap(), data);
    let z = zstd::encode_all(&data[..], 3).unwrap();
    assert_eq!(decode_chunk(Format::ZstdChunked, &z, &c).unwrap(), data);
    // inner offset: the chunk is the second half of a member.
    let half = Chunk {
        inner_offset: 900,
        size: data.len() as u64 - 900,
        digest: crate::digest::Digest::sha256_of(&data[900..]),
        ..c.clone()
    };
    assert_eq!(
        decode_chunk(Format::Estargz, &blob, &half).unwrap(),
        &data[900..]
    );
    // A flipped byte in the payload (stored block, so it decodes) is a mismatch.
    let mut stored = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    stored.write_all(&data).unwrap();
    let mut stored = stored.finish().unwrap();
    stored[40] ^= 1;
    let err = decode_chunk(Format::Estargz, &stored, &c).unwrap_err();
    assert!(matches!(err, crate::Error::DigestMismatch { .. }), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    // Truncated and garbage input.
    assert!(decode_chunk(Format::Estargz, &blob[..20], &c).is_err());
    assert!(decode_chunk(Format::ZstdChunked, b"not zstd", &c).is_err());
    // A wrong digest.
    let wrong = Chunk {
        digest: crate::digest::Digest::sha256_of(b"other"),
        ..c
    };
    assert!(decode_chunk(Format::Estargz, &blob, &wrong).is_err());
}

const TOC: &str = r#"{"version":1,"entries":[
 {"name":".prefetch.landmark","type":"reg","size":1,"offset":60,"chunkDigest":"sha256:dc0e9c3658a1a3ed1ec94274d8b19925c93e1abb7ddba294923ad9bde30f8cb8"},
 {"name":"./bin/","type":"dir","modtime":"2019-08-20T10:30:43Z","mode":16877,"uid":1,"gid":2,
  "xattrs":{"user.k":"dmFsdWU="}},
 {"name":"bin/big","type":"reg","size":10,"mode":33261,"offset":100,"chunkOffset":0,"chunkSize":4,
  "chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000001"},
 {"name":"bin/big","type":"chunk","offset":200,"chunkOffset":4,"chunkSize":0,
  "chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000002"},
 {"name":"bin/empty","type":"reg","mode":420},
 {"name":"bin/link","type":"hardlink","linkName":"bin/big"},
 {"name":"bin/sym","type":"symlink","linkName":"big","mode":511},
 {"name":"../../dev/null","type":"char","devMajor":1,"devMinor":3,"mode":438},
 {"name":"etc/.wh.gone","type":"reg"},
 {"name":"var/.wh..wh..opq","type":"reg"},
 {"name":"var/","type":"dir","mode":493},
 {"name":"stargz.index.json","type":"reg","size":5,"offset":300}
]}"#;

#[test]
fn toc_to_tree_follows_the_index_rules() {
    let toc = Toc::parse(TOC.as_bytes()).unwrap();
    let ix = toc_to_tree(&toc, Format::Estargz, 400, 0, &Limits::default()).unwrap();
    assert_eq!(ix.prefetch_end, Some(60));
    let t = &ix.tree;
    let names: Vec<String> = t
        .walk()
        .into_iter()
        .map(|(p, _)| String::from_utf8(p).unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "",
            "bin",
            "bin/big",
            "bin/empty",
            "bin/link",
            "bin/sym",
            "dev",
            "dev/null",
            "etc",
            "etc/gone",
            "var"
        ]
    );
    let bin = t.node(t.lookup_path(b"bin").unwrap());
    assert_eq!(
        (bin.mode, bin.uid, bin.gid, bin.mtime),
        (0o755, 1, 2, 1566297043)
    );
    assert_eq!(bin.xattr(b"user.k"), Some(&b"value"[..]));
    let big = t.lookup_path(b"bin/big").unwrap();
    assert_eq!(t.lookup_path(b"bin/link"), Some(big));
    let n = t.node(big);
    assert_eq!(
        (n.kind, n.mode, n.nlink, n.size),
        (NodeKind::File, 0o755, 2, 10)
    );
    let FileData::Chunks { layer: 0, chunks } = &n.content else {
        panic!("{:?}", n.content)
    };
    assert_eq!(chunks.len(), 2);
    assert_eq!(
        (
            chunks[0].file_offset,
            chunks[0].size,
            chunks[0].blob_offset,
            chunks[0].blob_len
        ),
        (0, 4, 100, 100)
    );
    assert_eq!(
        (
            chunks[1].file_offset,
            chunks[1].size,
            chunks[1].blob_offset,
            chunks[1].blob_len
        ),
        (4, 6, 200, 100)
    );
    let empty = t.node(t.lookup_path(b"bin/empty").unwrap());
    assert_eq!((empty.size, &empty.content), (0, &FileData::None));
    let sym = t.node(t.lookup_path(b"bin/sym").unwrap());
    assert_eq!(sym.link_target.as_deref(), Some(&b"big"[..]));
    let null = t.node(t.lookup_path(b"dev/null").unwrap());
    assert_eq!((null.kind, null.rdev), (NodeKind::CharDev, (1, 3)));
    assert!(t.node(t.lookup_path(b"etc/gone").unwrap()).whiteout);
    let var = t.node(t.lookup_path(b"var").unwrap());
    assert!(var.opaque && !var.implicit);
    assert_eq!(var.xattr(crate::layer::OPAQUE_XATTR), Some(&b"y"[..]));
}

#[test]
fn bad_tocs_are_rejected() {
    let limits = Limits::default();
    assert!(Toc::parse(br#"{"version":2,"entries":[]}"#).is_err());
    assert!(Toc::parse(b"{not json").is_err());
    // A chunk before any file; a file without a digest; non-contiguous chunks.
    for bad in [
        r#"{"version":1,"entries":[{"name":"a","type":"chunk","offset":5}]}"#,
        r#"{"version":1,"entries":[{"name":"a","type":"reg","size":3,"offset":5}]}"#,
        r#"{"version":1,"entries":[{"name":"a","type":"reg","size":9,"offset":5,"chunkSize":3,
            "chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000001"},
           {"name":"a","type":"chunk","offset":9,"chunkOffset":4,"chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000001"}]}"#,
        r#"{"version":1,"entries":[{"name":"a","type":"reg","size":3,"offset":500,
            "chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000001"}]}"#,
        r#"{"version":1,"entries":[{"name":"a","type":"reg","size":3,"offset":5,"chunkType":"zeros",
            "chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000001"}]}"#,
    ] {
        let toc = Toc::parse(bad.as_bytes()).unwrap();
        assert!(
            toc_to_tree(&toc, Format::Estargz, 100, 0, &limits).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn toc_json_extraction() {
    // eStargz: a gzip member holding a tar with the TOC entry.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(TOC.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, TOC_NAME, TOC.as_bytes()).unwrap();
    let member = gz(&tar.into_inner().unwrap());
    assert_eq!(toc::estargz_toc_json(&member).unwrap(), TOC.as_bytes());
    assert!(toc::estargz_toc_json(&gz(b"garbage")).is_err());
    let z = zstd::encode_all(TOC.as_bytes(), 3).unwrap();
    assert_eq!(
        toc::zstd_toc_json(&z, TOC.len() as u64).unwrap(),
        TOC.as_bytes()
    );
    assert!(toc::zstd_toc_json(&z, 5).is_err());
}

#[test]
fn spec_from_annotations() {
    let mut d = crate::image::BlobRef {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        digest: crate::digest::Digest::sha256_of(b"x"),
        size: 1000,
        urls: vec![],
        annotations: Default::default(),
    };
    assert_eq!(LazySpec::from_descriptor(&d), None);
    let toc = crate::digest::Digest::sha256_of(b"toc");
    d.annotations
        .insert(TOC_DIGEST_ANNOTATION.into(), toc.to_string());
    assert_eq!(
        LazySpec::from_descriptor(&d),
        Some(LazySpec::Estargz {
            toc_digest: toc.clone()
        })
    );
    d.annotations
        .insert(TOC_DIGEST_ANNOTATION.into(), "sha256:nothex".into());
    assert_eq!(LazySpec::from_descriptor(&d), None);
    d.media_type = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    d.annotations
        .insert(ZSTD_CHECKSUM_ANNOTATIONS[1].into(), toc.to_string());
    d.annotations
        .insert(ZSTD_POSITION_ANNOTATIONS[1].into(), "800:100:300:1".into());
    let s = LazySpec::from_descriptor(&d).unwrap();
    assert_eq!(s.format(), Format::ZstdChunked);
    assert_eq!(s.anchor(), &toc);
    d.annotations
        .insert(ZSTD_POSITION_ANNOTATIONS[1].into(), "950:100:300:1".into());
    assert_eq!(LazySpec::from_descriptor(&d), None, "beyond the blob");
    d.annotations
        .insert(ZSTD_POSITION_ANNOTATIONS[1].into(), "800:100:300:2".into());
    assert_eq!(LazySpec::from_descriptor(&d), None, "unknown manifest type");
}

#[test]
fn zstd_chunked_holes_are_chunks_without_data() {
    let zeros = crate::digest::Digest::sha256_of(&[0u8; 3000]);
    let toc = format!(
        r#"{{"version":1,"entries":[
 {{"name":"bin/sparse","type":"reg","size":5000,"mode":33261,"offset":100,"chunkSize":1000,
   "chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000001"}},
 {{"type":"chunk","name":"bin/sparse","offset":300,"chunkOffset":1000,"chunkSize":3000,
   "chunkDigest":"{zeros}","chunkType":"zeros"}},
 {{"type":"chunk","name":"bin/sparse","offset":300,"chunkOffset":4000,
   "chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000002"}}]}}"#
    );
    let toc = Toc::parse(toc.as_bytes()).unwrap();
    let ix = toc_to_tree(&toc, Format::ZstdChunked, 400, 0, &Limits::default()).unwrap();
    let id = ix.tree.lookup_path(b"bin/sparse").unwrap();
    let FileData::Chunks { chunks, .. } = &ix.tree.node(id).content else {
        panic!("not chunked");
    };
    let shape: Vec<(u64, u64, bool, u64)> = chunks
        .iter()
        .map(|c| (c.file_offset, c.size, c.zeros, c.blob_len))
        .collect();
    // The hole's offset is not a frame start: the first chunk runs to the
    // third's frame (300), not to the hole's.
    assert_eq!(
        shape,
        [
            (0, 1000, false, 200),
            (1000, 3000, true, 0),
            (4000, 1000, false, 100)
        ]
    );
    assert_eq!(chunks[1].digest, zeros);
    // Holes are a containers/storage zstd:chunked notion: not in eStargz.
    assert!(matches!(
        toc_to_tree(&toc, Format::Estargz, 400, 0, &Limits::default()),
        Err(crate::Error::Unsupported(_))
    ));
    // A hole larger than a layer may be is refused (its digest is checked by hashing it).
    let small = Limits {
        max_uncompressed: 2000,
        ..Limits::default()
    };
    assert!(matches!(
        toc_to_tree(&toc, Format::ZstdChunked, 400, 0, &small),
        Err(crate::Error::TooLarge(_))
    ));
}

#[test]
fn tail_guess_is_bounded_and_never_past_the_blob() {
    use super::footer::{tail_fetch_size, MAX_TAIL, MIN_TAIL, TAIL_DIVISOR};
    assert_eq!(tail_fetch_size(51), 51);
    assert_eq!(tail_fetch_size(1490), 1490);
    assert_eq!(tail_fetch_size(41_654), MIN_TAIL);
    // The python base layer: its 308 655-byte TOC and footer fit the guess.
    assert_eq!(tail_fetch_size(52_252_047), 52_252_047 / TAIL_DIVISOR);
    assert!(tail_fetch_size(52_252_047) >= 308_655);
    assert_eq!(tail_fetch_size(1 << 40), MAX_TAIL);
}
