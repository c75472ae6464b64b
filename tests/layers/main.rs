//! Layers: what a gzip / zstd layer becomes in the tree and how it is
//! fetched — unpacked layers and the merged rootfs against `umoci unpack`
//! (`rootfs`), laziness and the content cache (`lazy_cache`), and evicted
//! layers served by verified spans (`span_index`), gzip layers lazy on a
//! second machine through published indexes (`published_index`), and the README's overlay
//! recipe run as written (`overlay_recipe`).

#[macro_use]
#[path = "../harness/mod.rs"]
mod harness;

mod lazy_cache;
mod overlay_recipe;
mod published_index;
mod rootfs;
mod span_index;
