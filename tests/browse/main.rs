//! Browse: a real registry through a real mount: namespaces, tags,
//! manifests, configs, raw blobs, indexes and platforms, errors for what is
//! not there, EROFS for writes; artifacts (`files/`) and referrers
//! (`artifacts`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod artifacts;
mod browse;
