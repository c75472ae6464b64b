//! Layer tars: decompression, streaming index, whiteout merge. (being written)
