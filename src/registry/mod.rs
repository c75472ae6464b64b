//! The distribution v2 client. (being written)
