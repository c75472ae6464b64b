//! The unit of work of the compression pipeline: a piece of the tar stream
//! on its way from the tar side ([`super::compress`]'s block writer, or
//! [`super::estargz`]'s sink) to a compressor thread.

/// A piece of the tar on its way to a compressor: a gzip block (primed with
/// `dict`), or for eStargz one whole gzip member.
pub(crate) struct Block {
    /// Position in the stream: the collector puts compressed blocks in this order.
    pub(crate) seq: u64,
    /// The uncompressed bytes.
    pub(crate) data: Vec<u8>,
    /// The previous block's last 32 KiB (gzip), empty for an eStargz member.
    pub(crate) dict: Vec<u8>,
    /// The stream's last block (gzip: end the deflate stream).
    pub(crate) last: bool,
}
