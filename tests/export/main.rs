//! Export: the writable export directory, staged, committed and pulled back
//! (`export`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod export;
