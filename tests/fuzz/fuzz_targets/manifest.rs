//! Manifests, indexes and image configs as a hostile registry may serve
//! them: parsed or refused, never a panic. The first byte picks the
//! Content-Type the bytes claim.
#![no_main]
use libfuzzer_sys::fuzz_target;
use regfs::image::{ImageConfig, Manifest, Platform};

const TYPES: [&str; 6] = [
    "",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/json",
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    let ct = TYPES[sel as usize % TYPES.len()];
    if let Ok(Manifest::Index { entries, .. }) = Manifest::parse(bytes, ct) {
        let host: Platform = "linux/amd64".parse().unwrap();
        let _ = Manifest::select_platform(&entries, &host);
    }
    let _ = ImageConfig::parse(bytes);
});
