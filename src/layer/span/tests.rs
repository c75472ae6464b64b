use super::*;
use proptest::prelude::*;
use std::io::Write;

fn gz(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Compressible but not trivial: runs, repeats of earlier text and noise.
fn sample(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        match next() % 4 {
            0 => {
                let b = next() as u8;
                let n = (next() % 300) as usize;
                v.extend(std::iter::repeat_n(b, n));
            }
            1 if v.len() > 100 => {
                let from = (next() as usize) % (v.len() - 50);
                let n = ((next() % 200) as usize).min(v.len() - from);
                let copy = v[from..from + n].to_vec();
                v.extend(copy);
            }
            _ => {
                let n = (next() % 100) as usize;
                for _ in 0..n {
                    v.push(b"abcdefghij klmnop\n"[(next() % 18) as usize]);
                }
            }
        }
    }
    v.truncate(len);
    v
}

/// Read `[off, off+len)` through the index, as the content layer does.
fn read_via(ix: &SpanIndex, blob: &[u8], off: u64, len: u64) -> Vec<u8> {
    let Some((first, last)) = ix.spans_covering(off, off + len) else {
        return Vec::new();
    };
    let (cs, ce) = ix.compressed_range(first, last);
    let spans = ix
        .extract(first, last, &blob[cs as usize..ce as usize])
        .unwrap();
    let base = ix.span(first).0;
    let all: Vec<u8> = spans.concat();
    let end = (off + len).min(ix.uncompressed_size);
    all[(off - base) as usize..(end - base) as usize].to_vec()
}

#[test]
fn random_reads_match_multi_member() {
    let data = sample(7, 600_000);
    let mut blob = Vec::new();
    for part in data.chunks(150_001) {
        blob.extend(gz(part, 6));
    }
    let (ix, out) = index_by_reading(&blob, 40_000);
    assert_eq!(out, data);
    assert!(ix.checkpoints.len() > 8, "{}", ix.checkpoints.len());
    assert!(ix.checkpoints.iter().skip(1).any(|c| c.member_start));
    assert!(ix.checkpoints.iter().any(|c| !c.member_start && c.bits > 0));
    for (off, len) in [(0, 10), (149_990, 30), (300_000, 200_000), (599_999, 10)] {
        assert_eq!(
            read_via(&ix, &blob, off, len),
            &data[off as usize..(off + len).min(600_000) as usize]
        );
    }
    let again = SpanIndex::decode(&ix.encode()).unwrap();
    assert_eq!(again, ix);
}

#[test]
fn flipped_byte_fails_verification() {
    let data = sample(3, 300_000);
    let blob = gz(&data, 6);
    let (ix, _) = index_by_reading(&blob, 50_000);
    let (first, last) = ix.spans_covering(120_000, 120_001).unwrap();
    let (cs, ce) = ix.compressed_range(first, last);
    let mut bad = blob[cs as usize..ce as usize].to_vec();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x10;
    assert!(ix.extract(first, last, &bad).is_err());
    // A lying digest is caught too.
    let mut lying = ix.clone();
    lying.checkpoints[first].span_digest = Digest::sha256_of(b"x");
    match lying.extract(first, last, &blob[cs as usize..ce as usize]) {
        Err(Error::DigestMismatch { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn corrupt_and_truncated_streams_are_errors() {
    let data = sample(5, 100_000);
    let blob = gz(&data, 6);
    for cut in [blob.len() - 1, blob.len() / 2, 5] {
        let b = RefCell::new(SpanBuilder::new(10_000));
        let mut r = SpanReader::new(&blob[..cut], &b).unwrap();
        assert!(
            std::io::copy(&mut r, &mut std::io::sink()).is_err(),
            "{cut}"
        );
    }
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 3] ^= 1; // the size in the trailer
    let b = RefCell::new(SpanBuilder::new(10_000));
    let mut r = SpanReader::new(&bad[..], &b).unwrap();
    assert!(std::io::copy(&mut r, &mut std::io::sink()).is_err());
}

#[test]
fn empty_stream_and_decode_rejects_garbage() {
    let blob = gz(b"", 6);
    let (ix, out) = index_by_reading(&blob, 10);
    assert!(out.is_empty());
    assert_eq!(ix.checkpoints.len(), 1);
    assert_eq!(ix.spans_covering(0, 10), None);
    let enc = ix.encode();
    assert_eq!(SpanIndex::decode(&enc).unwrap(), ix);
    assert!(SpanIndex::decode(&enc[..enc.len() - 1]).is_err());
    assert!(SpanIndex::decode(b"RGFSPAN\x02").is_err());
    let data = sample(9, 200_000);
    let (ix, _) = index_by_reading(&gz(&data, 1), 20_000);
    let mut swapped = ix.clone();
    swapped.checkpoints.swap(0, 1);
    assert!(SpanIndex::decode(&swapped.encode()).is_err());
    let mut past = ix.clone();
    past.uncompressed_size = 10;
    assert!(SpanIndex::decode(&past.encode()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random data compressed by flate2 at several levels; 200 random reads
    /// through the index equal the original bytes.
    #[test]
    fn reads_through_the_index_equal_the_data(
        seed in any::<u64>(),
        len in 1usize..400_000,
        level in prop::sample::select(vec![0u32, 1, 6, 9]),
        every in 1u64..60_000,
        reads in prop::collection::vec((any::<u64>(), 1u64..70_000), 200),
    ) {
        let data = sample(seed, len);
        let blob = gz(&data, level);
        let (ix, out) = index_by_reading(&blob, every);
        prop_assert_eq!(&out, &data);
        prop_assert_eq!(SpanIndex::decode(&ix.encode()).unwrap(), ix.clone());
        for (off, n) in reads {
            let off = off % len as u64;
            let got = read_via(&ix, &blob, off, n);
            let end = (off + n).min(len as u64) as usize;
            prop_assert_eq!(&got[..], &data[off as usize..end]);
        }
    }
}

/// Decode with a deferred builder, hashing the spans elsewhere from the
/// offsets taken after each `chunk` bytes (as the ingest pipeline does).
fn build_deferred(blob: &[u8], every: u64, chunk: usize) -> SpanIndex {
    let b = RefCell::new(SpanBuilder::deferred(every));
    let mut r = SpanReader::new(blob, &b).unwrap();
    let mut hasher = SpanHasher::default();
    let mut buf = vec![0u8; chunk];
    loop {
        // Fill the chunk from several reads, so spans start inside it.
        let mut n = 0;
        while n < chunk {
            match r.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        hasher.boundaries(b.borrow_mut().take_boundaries());
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    drop(r);
    b.into_inner()
        .finish_with(blob.len() as u64, hasher.finish())
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Span digests computed apart from the decoder (on another thread in
    /// `ingest`) equal those the builder computes itself, for one gzip member
    /// or several, whatever the read size.
    #[test]
    fn deferred_span_digests_equal_inline_ones(
        seed in any::<u64>(),
        len in 0usize..300_000,
        members in 1usize..4,
        every in 1u64..50_000,
        chunk in 1usize..100_000,
    ) {
        let data = sample(seed, len);
        let mut blob = Vec::new();
        let part = len.div_ceil(members).max(1);
        for piece in data.chunks(part) {
            blob.extend(gz(piece, 6));
        }
        if blob.is_empty() {
            blob = gz(b"", 6);
        }
        let (inline, _) = index_by_reading(&blob, every);
        let deferred = build_deferred(&blob, every, chunk);
        prop_assert_eq!(deferred.encode(), inline.encode());
    }
}
