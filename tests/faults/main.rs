//! Faults: the fault proxy between regfs and the registry, daemon death,
//! hostile manifests and safe defaults (`faults`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod faults;
