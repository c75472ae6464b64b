//! Browse: a real registry through a real mount: namespaces, tags,
//! manifests, configs, raw blobs, indexes and platforms, errors for what is
//! not there, EROFS for writes; artifacts (`files/`) and referrers
//! (`artifacts`); large blobs by verified chunks (`big_blob`); `regfs diff`
//! (`image_diff`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod artifacts;
mod big_blob;
mod browse;
mod image_diff;
mod trace;
