//! Container runtimes on regfs: real podman (Debian's 4.3.1) pulling and
//! running the lab images through the additional layer store
//! (`regfs mount … --layer-store DIR`) (`podman`), and the TOC-keyed
//! protocol of containers/storage ≥ 1.54, which Debian's podman does not
//! speak, done by hand (`toc_protocol`); layers in use kept in the cache
//! (`pinning`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

#[macro_use]
mod runtime;
mod pinning;
mod podman;
mod toc_protocol;
