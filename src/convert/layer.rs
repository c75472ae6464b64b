//! One layer converted: the source blob streamed from the registry and
//! verified as it passes (blob digest, then the uncompressed tar's sha256
//! against the config's diff_id), its tar replayed into the lazy format's
//! packer ([`super::transcribe`]) and uploaded as it is compressed.
//!
//! Nothing unverified is ever committed: the upload's final `PUT` is sent
//! only after both digests matched (see
//! [`crate::export::stream_push::pack_and_push`]). A layer with a prefetch
//! list is spooled to a temporary file first (its entries must be
//! reordered); it is verified the same way before anything is packed.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::content::bridge::{self, ChannelReader};
use crate::convert::transcribe::{Plan, Replay, Spool};
use crate::digest::{Algorithm, Digest, HashingReader};
use crate::error::{Error, Result};
use crate::export::compress::{pack_from, Codec, Packed};
use crate::export::stream_push::pack_and_push;
use crate::image::BlobRef;
use crate::layer::Compression;
use crate::registry::RegistryApi;

/// Where a source layer comes from and what it must hash to.
#[derive(Clone, Debug)]
pub struct SourceLayer {
    /// The source repository.
    pub repo: String,
    /// Its descriptor in the (verified) source manifest.
    pub desc: BlobRef,
    /// Its diff_id in the (verified) source config.
    pub diff_id: Digest,
}

impl SourceLayer {
    fn compression(&self) -> Result<Compression> {
        if !self.desc.urls.is_empty() {
            return Err(Error::Unsupported(format!(
                "layer {} is non-distributable (it names URLs); not converted",
                self.desc.digest
            )));
        }
        Compression::from_media_type(&self.desc.media_type)
    }
}

/// The blob's own verdict first (a damaged download explains a decoding
/// error), then `r`: the whole blob must have been read and matched.
fn blob_verdict<T>(raw: &mut ChannelReader, src: &SourceLayer, r: Result<T>) -> Result<T> {
    let _ = io::copy(raw, &mut io::sink());
    if let Some(e) = raw.take_error() {
        return Err(e.context(format!("source layer {}", src.desc.digest)));
    }
    r.map_err(|e| e.context(format!("source layer {}", src.desc.digest)))
}

/// The uncompressed tar's digest against the config's diff_id.
fn check_diff_id(src: &SourceLayer, got: Digest) -> Result<()> {
    got.expect(
        &src.diff_id,
        &format!("diff_id of source layer {}", src.desc.digest),
    )
}

/// Start receiving `src` from `client`: its compression, and a reader of
/// its bytes (verified when read to the end).
async fn open(client: &dyn RegistryApi, src: &SourceLayer) -> Result<(Compression, ChannelReader)> {
    let compression = src.compression()?;
    let body = client
        .blob(&src.repo, &src.desc.digest, Some(src.desc.size))
        .await?;
    Ok((compression, bridge::reader(body)))
}

/// Stream `src` from `client` and convert it to `codec`, uploading it to
/// `dst_repo` of `dst` as it is packed; `sent` counts uploaded bytes.
pub async fn convert_streamed(
    client: &dyn RegistryApi,
    src: &SourceLayer,
    codec: Codec,
    dst: &dyn RegistryApi,
    dst_repo: &str,
    sent: Arc<AtomicU64>,
) -> Result<Packed> {
    let (compression, mut raw) = open(client, src).await?;
    let src2 = src.clone();
    pack_and_push(dst, dst_repo, sent, move |out| {
        let src = src2;
        let packed = {
            let mut tar = HashingReader::new(compression.decode(&mut raw), Algorithm::Sha256);
            let r = pack_from(Replay::Stream(&mut tar), codec, &|_| {}, out).and_then(|p| {
                io::copy(&mut tar, &mut io::sink())?; // the end-of-archive blocks, and anything after
                Ok(p)
            });
            let (_, diff_id, _) = tar.finish();
            r.map(|p| (p, diff_id))
        };
        let ((packed, out), diff_id) = blob_verdict(&mut raw, &src, packed)?;
        check_diff_id(&src, diff_id)?;
        Ok((packed, out))
    })
    .await
}

/// Stream `src` from `client` into a verified [`Spool`] in `tmp_dir`.
pub async fn spool(client: &dyn RegistryApi, src: &SourceLayer, tmp_dir: PathBuf) -> Result<Spool> {
    let (compression, mut raw) = open(client, src).await?;
    let src = src.clone();
    tokio::task::spawn_blocking(move || {
        let spooled = {
            let mut tar = HashingReader::new(compression.decode(&mut raw), Algorithm::Sha256);
            let r = Spool::new(&mut tar, &tmp_dir).map_err(Error::from);
            let (_, diff_id, _) = tar.finish();
            r.map(|s| (s, diff_id))
        };
        let (spool, diff_id) = blob_verdict(&mut raw, &src, spooled)?;
        check_diff_id(&src, diff_id)?;
        Ok(spool)
    })
    .await
    .map_err(|e| Error::Io(io::Error::other(e)))?
}

/// Pack a verified spool in `plan`'s order to `codec`, uploading it to
/// `dst_repo` of `dst` as it is packed.
pub async fn convert_spooled(
    spool: Arc<Spool>,
    plan: Arc<Plan>,
    codec: Codec,
    dst: &dyn RegistryApi,
    dst_repo: &str,
    sent: Arc<AtomicU64>,
) -> Result<Packed> {
    pack_and_push(dst, dst_repo, sent, move |out| {
        pack_from(Replay::Spooled(&spool, &plan), codec, &|_| {}, out)
    })
    .await
}

/// Read a whole (small) blob, verified: the body reports its end only
/// once the bytes matched the digest.
pub async fn read_blob(
    client: &dyn RegistryApi,
    repo: &str,
    desc: &BlobRef,
    limit: u64,
) -> Result<Vec<u8>> {
    if desc.size > limit {
        return Err(Error::TooLarge(format!(
            "blob {} of {} bytes (limit {limit})",
            desc.digest, desc.size
        )));
    }
    let mut body = client.blob(repo, &desc.digest, Some(desc.size)).await?;
    let mut out = Vec::with_capacity(desc.size as usize);
    while let Some(b) = body.next_chunk().await? {
        out.extend_from_slice(&b);
    }
    Ok(out)
}
