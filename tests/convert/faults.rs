//! Corrupted input fails the conversion, names the digest, and leaves the
//! destination tag unwritten.

use crate::convert;
use crate::harness::{Registry, RegistryKind};

#[test]
fn a_corrupted_source_layer_fails_the_conversion_and_pushes_no_tag() {
    let reg = Registry::start(RegistryKind::Plain);
    reg.push("python-3.11", "lab/python:3.11");
    let layers = crate::layer_digests(&reg, "lab/python", "3.11");
    // The second layer: the first converts (and its blob may stay), then this fails.
    reg.corrupt_blob(&layers[1]);
    for format in ["--estargz", "--zstd-chunked"] {
        let out = convert(&reg, "lab/python:3.11", "lab/python:broken", &[format]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{format}: converted a corrupted layer: {err}"
        );
        assert!(
            err.contains(&layers[1]),
            "{format}: the error names no digest: {err}"
        );
        assert!(
            err.contains("digest") || err.contains("mismatch"),
            "{format}: {err}"
        );
        let (status, body) = reg.get("/v2/lab/python/manifests/broken");
        assert_eq!(status, 404, "{format}: the tag exists: {body}");
    }
}
