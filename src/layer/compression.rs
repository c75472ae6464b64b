//! Layer compression: media type → codec, and streaming decoders.

use std::io::{self, Read};

use crate::error::{Error, Result};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several concatenated members, as pigz and eStargz write).
    Gzip,
    /// zstd (possibly several frames, as zstd:chunked writes).
    Zstd,
}

impl Compression {
    /// The compression of a layer with this descriptor media type.
    ///
    /// OCI (`application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]`, and the
    /// `nondistributable` variants) and Docker
    /// (`application/vnd.docker.image.rootfs[.foreign].diff.tar.gzip`) types are
    /// known; anything else is [`Error::Unsupported`].
    pub fn from_media_type(media_type: &str) -> Result<Compression> {
        Ok(match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            other => return Err(Error::Unsupported(format!("layer media type {other:?}"))),
        })
    }

    /// A reader yielding the uncompressed bytes of `r`.
    pub fn decoder<'a, R: Read + 'a>(self, r: R) -> Box<dyn Read + 'a> {
        Box::new(self.decode(r))
    }

    /// [`decoder`](Self::decoder) as a concrete type (`Send` when `R` is).
    pub fn decode<R: Read>(self, r: R) -> Decoded<R> {
        match self {
            Compression::None => Decoded::None(r),
            Compression::Gzip => Decoded::Gzip(Box::new(flate2::read::MultiGzDecoder::new(r))),
            Compression::Zstd => match zstd::stream::read::Decoder::new(r) {
                Ok(d) => Decoded::Zstd(d),
                Err(e) => Decoded::Failed(Failed(Some(e))),
            },
        }
    }
}

/// The uncompressed bytes of a layer blob being read (see
/// [`Compression::decode`]).
pub enum Decoded<R: Read> {
    /// A plain tar.
    None(R),
    /// gzip members (boxed: the inflate state is large).
    Gzip(Box<flate2::read::MultiGzDecoder<R>>),
    /// zstd frames.
    Zstd(zstd::stream::read::Decoder<'static, io::BufReader<R>>),
    /// The decoder could not be built.
    Failed(Failed),
}

impl<R: Read> Read for Decoded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::None(r) => r.read(buf),
            Decoded::Gzip(r) => r.read(buf),
            Decoded::Zstd(r) => r.read(buf),
            Decoded::Failed(r) => r.read(buf),
        }
    }
}

/// A reader that fails once with the error that prevented building a decoder.
pub struct Failed(Option<io::Error>);

impl Read for Failed {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("decoder unavailable")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn media_types() {
        use Compression::*;
        for (t, c) in [
            ("application/vnd.oci.image.layer.v1.tar", None),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Zstd),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar",
                None,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Gzip,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
                Zstd,
            ),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Gzip,
            ),
        ] {
            assert_eq!(Compression::from_media_type(t).unwrap(), c, "{t}");
        }
        match Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+bzip2") {
            Err(Error::Unsupported(m)) => assert!(m.contains("tar+bzip2"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn decoders_roundtrip_multi_member() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        // gzip: two concatenated members
        let mut gz = Vec::new();
        for half in data.chunks(50_000) {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(half).unwrap();
            gz.extend(e.finish().unwrap());
        }
        let mut out = Vec::new();
        Compression::Gzip
            .decoder(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        // zstd: two frames
        let mut zs = Vec::new();
        for half in data.chunks(50_000) {
            zs.extend(zstd::encode_all(half, 1).unwrap());
        }
        out.clear();
        Compression::Zstd
            .decoder(&zs[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
        out.clear();
        Compression::None
            .decoder(&data[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let mut out = Vec::new();
        assert!(Compression::Gzip
            .decoder(&b"not gzip at all"[..])
            .read_to_end(&mut out)
            .is_err());
    }
}
