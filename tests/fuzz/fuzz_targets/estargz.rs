//! eStargz / zstd:chunked: the footer, the TOC container (gzip+tar or a zstd
//! frame), the TOC JSON and its tree. Hostile bytes are refused, never a
//! panic. The first byte picks the parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use regfs::estargz::{parse_footer, toc, toc_to_tree, Format, Toc};
use regfs::layer::Limits;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_entries: 64,
        max_name_len: 256,
        max_xattr_bytes: 4096,
        max_uncompressed: 1 << 20,
        max_metadata_bytes: 64 << 10,
    };
    match sel % 4 {
        0 => {
            let _ = parse_footer(bytes);
        }
        1 => {
            if let Ok(t) = Toc::parse(bytes) {
                for f in [Format::Estargz, Format::ZstdChunked] {
                    let _ = toc_to_tree(&t, f, 1 << 20, 0, &limits);
                }
            }
        }
        2 => {
            let _ = toc::estargz_toc_json(bytes);
        }
        _ => {
            let _ = toc::zstd_toc_json(bytes, 4096);
        }
    }
});
