//! The gzip span index: its binary form (as `regfs index import` reads it,
//! possibly hostile), extraction of spans from arbitrary compressed bytes
//! through the zlib FFI, and the Z_BLOCK decoder on arbitrary input. Errors
//! are fine; panics, hangs and memory errors are not. The first byte picks.
#![no_main]
use std::cell::RefCell;
use std::io::Read;

use libfuzzer_sys::fuzz_target;
use regfs::layer::span::{SpanBuilder, SpanIndex, SpanReader};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    match sel % 3 {
        0 => {
            // An index, then compressed data for its spans.
            if bytes.len() < 2 {
                return;
            }
            let split = (u16::from_le_bytes([bytes[0], bytes[1]]) as usize).min(bytes.len() - 2);
            let (ix, compressed) = bytes[2..].split_at(split);
            if let Ok(ix) = SpanIndex::decode(ix) {
                let n = ix.checkpoints.len();
                for i in [0, n / 2, n - 1] {
                    let (a, b) = ix.span(i);
                    if b - a <= 1 << 20 {
                        let _ = ix.extract(i, i, compressed);
                    }
                }
            }
        }
        1 => {
            let b = RefCell::new(SpanBuilder::new(64));
            if let Ok(mut r) = SpanReader::new(bytes, &b) {
                let mut out = vec![0u8; 4096];
                let mut total = 0usize;
                while let Ok(n) = r.read(&mut out) {
                    total += n;
                    if n == 0 || total > 1 << 22 {
                        break;
                    }
                }
            }
        }
        _ => {
            // A valid stream's index, re-read: extraction must match or fail cleanly.
            let b = RefCell::new(SpanBuilder::new(256));
            let mut plain = Vec::new();
            let ok = SpanReader::new(bytes, &b)
                .map(|mut r| r.read_to_end(&mut plain).is_ok())
                .unwrap_or(false);
            if ok && plain.len() < 1 << 22 {
                let ix = b.into_inner().finish(bytes.len() as u64);
                let back = SpanIndex::decode(&ix.encode()).expect("own index decodes");
                for i in 0..back.checkpoints.len() {
                    let (cs, ce) = back.compressed_range(i, i);
                    let (a, e) = back.span(i);
                    let got = back
                        .extract(i, i, &bytes[cs as usize..ce as usize])
                        .expect("own spans extract");
                    assert_eq!(got[0], plain[a as usize..e as usize]);
                }
            }
        }
    }
});
