//! Export: the writable export directory, staged, committed and pulled back
//! (`export`); both mounts' operations timed through the one glue, and export
//! listings paged by the filesystem (`fuse_glue`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod export;
mod fuse_glue;
mod posix_cases;
mod posix_diff;
