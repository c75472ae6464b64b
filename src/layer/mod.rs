//! Layer tars: decompression, streaming index, whiteout merge.

pub mod compression;
pub mod tree;

pub use compression::Compression;
pub use tree::{normalize, read_content, Content, Kind, Node, NodeId, ReadAt, Segment, Tree};
