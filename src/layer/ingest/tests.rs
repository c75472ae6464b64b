use super::*;
use crate::layer::testutil::{listing, TarW};
use crate::layer::tree::read_content;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Instant;

fn sample_tar() -> Vec<u8> {
    let mut w = TarW::new();
    w.dir(b"etc", 0o755)
        .file(b"etc/hostname", b"regfs\n")
        .file(b"bin/big", &vec![0x5a; 100_000])
        .hardlink(b"bin/big2", b"bin/big");
    w.finish()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn run(
    blob: &[u8],
    c: Compression,
    blob_d: &Digest,
    diff: &Digest,
    limits: &Limits,
) -> (Result<(Tree, IngestStats)>, Vec<u8>) {
    let mut out = tempfile::tempfile().unwrap();
    let r = ingest(blob, c, blob_d, diff, 3, &mut out, limits);
    let mut written = Vec::new();
    out.seek(SeekFrom::Start(0)).unwrap();
    out.read_to_end(&mut written).unwrap();
    // The span-indexing path (zlib Z_BLOCK instead of flate2 for gzip) must
    // judge every input the same way.
    let mut out2 = tempfile::tempfile().unwrap();
    let r2 = ingest_spans(
        blob,
        c,
        BlobCheck::Hash(blob_d),
        diff,
        3,
        &mut out2,
        limits,
        Some(4096),
    );
    match (&r, &r2) {
        (Ok((t1, s1)), Ok((t2, s2, ix))) => {
            assert_eq!(s1, s2);
            assert_eq!(listing(t1), listing(t2));
            assert_eq!(ix.is_some(), c == Compression::Gzip);
            if let Some(ix) = ix {
                assert_eq!(ix.uncompressed_size, s1.uncompressed_bytes);
                assert_eq!(ix.compressed_size, s1.compressed_bytes);
            }
            let mut written2 = Vec::new();
            out2.seek(SeekFrom::Start(0)).unwrap();
            out2.read_to_end(&mut written2).unwrap();
            assert_eq!(written, written2);
        }
        (Err(e1), Err(e2)) => assert_eq!(
            std::mem::discriminant(e1),
            std::mem::discriminant(e2),
            "{e1} vs {e2}"
        ),
        (a, b) => panic!("flate2 path {:?} vs span path {:?}", a.is_ok(), b.is_ok()),
    }
    (r, written)
}

#[test]
fn ingests_each_compression() {
    let tar = sample_tar();
    let diff = Digest::sha256_of(&tar);
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let blob = match c {
            Compression::None => tar.clone(),
            Compression::Gzip => gzip(&tar),
            Compression::Zstd => zstd::encode_all(&tar[..], 3).unwrap(),
        };
        let (r, written) = run(
            &blob,
            c,
            &Digest::sha256_of(&blob),
            &diff,
            &Limits::default(),
        );
        let (tree, stats) = r.unwrap();
        assert_eq!(
            written, tar,
            "{c:?}: the uncompressed tar, padding included"
        );
        assert_eq!(
            stats,
            IngestStats {
                compressed_bytes: blob.len() as u64,
                uncompressed_bytes: tar.len() as u64,
                entries: 4
            }
        );
        let big = tree.node(tree.lookup_path(b"bin/big2").unwrap());
        assert_eq!(big.content.layer(), Some(3));
        assert_eq!(big.nlink, 2);
        let mut buf = vec![0u8; 100_001];
        assert_eq!(
            read_content(big, &[&[][..], &[], &[], &written[..]], 0, &mut buf).unwrap(),
            100_000
        );
        assert!(buf[..100_000].iter().all(|&b| b == 0x5a));
        let host = tree.node(tree.lookup_path(b"etc/hostname").unwrap());
        let mut b = [0u8; 16];
        let n = read_content(host, &[&[][..], &[], &[], &written[..]], 0, &mut b).unwrap();
        assert_eq!(&b[..n], b"regfs\n");
        assert_eq!(listing(&tree).len(), 5);
    }
}

#[test]
fn trailing_bytes_after_the_tar_are_hashed_and_kept() {
    let mut tar = sample_tar();
    tar.extend_from_slice(&[0u8; 10 * 512]); // extra zero padding, as some tools write
    let blob = gzip(&tar);
    let (r, written) = run(
        &blob,
        Compression::Gzip,
        &Digest::sha256_of(&blob),
        &Digest::sha256_of(&tar),
        &Limits::default(),
    );
    r.unwrap();
    assert_eq!(written, tar);
}

#[test]
fn digest_mismatches() {
    let tar = sample_tar();
    let blob = gzip(&tar);
    let right_blob = Digest::sha256_of(&blob);
    let right_diff = Digest::sha256_of(&tar);
    let wrong = Digest::sha256_of(b"something else");
    let (r, _) = run(
        &blob,
        Compression::Gzip,
        &wrong,
        &right_diff,
        &Limits::default(),
    );
    match r {
        Err(Error::DigestMismatch {
            what,
            expected,
            actual,
        }) => {
            assert_eq!(what, format!("layer blob {wrong}"));
            assert_eq!(expected, wrong.to_string());
            assert_eq!(actual, right_blob.to_string());
        }
        r => panic!("{:?}", r.map(|x| x.1)),
    }
    let (r, _) = run(
        &blob,
        Compression::Gzip,
        &right_blob,
        &wrong,
        &Limits::default(),
    );
    match r {
        Err(Error::DigestMismatch { what, actual, .. }) => {
            assert_eq!(what, format!("layer diff_id {wrong}"));
            assert_eq!(actual, right_diff.to_string());
        }
        r => panic!("{:?}", r.map(|x| x.1)),
    }
    // a flipped bit inside the gzip stream: corrupt data, but the blob digest
    // is what we report
    let mut bad = blob.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let (r, _) = run(
        &bad,
        Compression::Gzip,
        &right_blob,
        &right_diff,
        &Limits::default(),
    );
    assert!(
        matches!(r, Err(Error::DigestMismatch { ref what, .. }) if what.starts_with("layer blob")),
        "{:?}",
        r.map(|x| x.1)
    );
}

#[test]
fn gzip_bomb_fails_fast() {
    // 1 GiB of zeros after a tar header claiming a 1 GiB file: 1024 gzip
    // members of 1 MiB each (MultiGzDecoder concatenates them).
    let mut h = tar::Header::new_gnu();
    h.set_path("bomb").unwrap();
    h.set_size(1 << 30);
    h.set_cksum();
    let mut blob = gzip(h.as_bytes());
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 1 << 20]).unwrap();
    let member = e.finish().unwrap();
    for _ in 0..1024 {
        blob.extend_from_slice(&member);
    }
    assert!(blob.len() < 2 << 20, "{}", blob.len());
    let limits = Limits {
        max_uncompressed: 8 << 20,
        ..Limits::default()
    };
    let start = Instant::now();
    let (r, written) = run(
        &blob,
        Compression::Gzip,
        &Digest::sha256_of(&blob),
        &Digest::sha256_of(b""),
        &limits,
    );
    let took = start.elapsed();
    match r {
        Err(Error::TooLarge(m)) => assert!(m.contains(&(8u64 << 20).to_string()), "{m}"),
        r => panic!("{:?}", r.map(|x| x.1)),
    }
    assert!(
        written.len() <= 8 << 20,
        "stopped at the limit: {}",
        written.len()
    );
    assert!(took.as_secs() < 10, "{took:?}");
}

#[test]
fn truncated_inputs_are_invalid() {
    let tar = sample_tar();
    // truncated gzip (the digest given is of the truncated blob: it verifies)
    let blob = gzip(&tar);
    let cut = &blob[..blob.len() - 100];
    let (r, _) = run(
        cut,
        Compression::Gzip,
        &Digest::sha256_of(cut),
        &Digest::sha256_of(&tar),
        &Limits::default(),
    );
    assert!(matches!(r, Err(Error::Invalid(_))), "{:?}", r.map(|x| x.1));
    // truncated zstd
    let blob = zstd::encode_all(&tar[..], 3).unwrap();
    let cut = &blob[..blob.len() - 10];
    let (r, _) = run(
        cut,
        Compression::Zstd,
        &Digest::sha256_of(cut),
        &Digest::sha256_of(&tar),
        &Limits::default(),
    );
    assert!(matches!(r, Err(Error::Invalid(_))), "{:?}", r.map(|x| x.1));
    // a complete gzip of a truncated tar
    let short = &tar[..600];
    let blob = gzip(short);
    let (r, _) = run(
        &blob,
        Compression::Gzip,
        &Digest::sha256_of(&blob),
        &Digest::sha256_of(short),
        &Limits::default(),
    );
    match r {
        Err(Error::Invalid(m)) => assert!(m.starts_with("layer tar: "), "{m}"),
        r => panic!("{:?}", r.map(|x| x.1)),
    }
    // not gzip at all
    let junk = b"definitely not gzip";
    let (r, _) = run(
        junk,
        Compression::Gzip,
        &Digest::sha256_of(junk),
        &Digest::sha256_of(b""),
        &Limits::default(),
    );
    match r {
        Err(Error::Invalid(m)) => assert!(m.contains("Gzip"), "{m}"),
        r => panic!("{:?}", r.map(|x| x.1)),
    }
}

#[test]
fn source_read_errors_are_io() {
    struct Flaky(Vec<u8>, usize);
    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.1 >= 1000 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "peer reset",
                ));
            }
            let n = buf.len().min(100).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }
    let tar = sample_tar();
    let blob = gzip(&tar);
    let mut out = tempfile::tempfile().unwrap();
    let r = ingest(
        Flaky(blob.clone(), 0),
        Compression::Gzip,
        &Digest::sha256_of(&blob),
        &Digest::sha256_of(&tar),
        0,
        &mut out,
        &Limits::default(),
    );
    match r {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        r => panic!("{:?}", r.map(|x| x.1)),
    }
}

#[test]
fn gzip_crc_is_left_to_the_diff_id() {
    // A member whose data inflates but whose CRC-32 trailer is wrong: the
    // ingest pass does not compute CRCs (the diff_id covers the output), so
    // the layer is judged by its digests alone.
    let tar = sample_tar();
    let mut blob = gzip(&tar);
    let crc_at = blob.len() - 8;
    blob[crc_at] ^= 0xff;
    let bd = Digest::sha256_of(&blob);
    let spans = |diff: &Digest| {
        let mut out = tempfile::tempfile().unwrap();
        ingest_spans(
            &blob[..],
            Compression::Gzip,
            BlobCheck::Hash(&bd),
            diff,
            0,
            &mut out,
            &Limits::default(),
            Some(4096),
        )
    };
    let (tree, stats, ix) = spans(&Digest::sha256_of(&tar)).unwrap();
    assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
    assert!(ix.is_some());
    assert!(tree.lookup_path(b"etc/hostname").is_some());
    // Different bytes with a wrong CRC still fail, on the diff_id.
    match spans(&Digest::sha256_of(b"another tar")) {
        Err(Error::DigestMismatch { what, .. }) => assert!(what.contains("diff_id"), "{what}"),
        r => panic!("{:?}", r.map(|x| x.1)),
    }
}
