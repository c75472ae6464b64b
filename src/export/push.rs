//! Push an image: every blob first (skipped when present, cross-repository
//! mounted when it comes from a base image, uploaded otherwise), then the
//! manifest, so the tag never points at a missing blob. (A commit's new layer
//! is streamed up before, while it is packed: see [`super::commit`].)

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;

use crate::content::Content;
use crate::digest::Digest;
use crate::error::Result;
use crate::image::BlobRef;
use crate::reference::Selector;

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
pub enum BlobSource {
    /// A local file (a packed layer).
    File(PathBuf),
    /// Bytes in memory (a config).
    Bytes(Bytes),
    /// A base image's blob in repository `from` of the same registry.
    Base {
        /// The repository that has it.
        from: String,
        /// Its descriptor.
        desc: BlobRef,
    },
}

/// One blob to push.
#[derive(Debug, Clone)]
pub struct PushBlob {
    /// Digest.
    pub digest: Digest,
    /// Size.
    pub size: u64,
    /// Bytes.
    pub source: BlobSource,
}

/// What happened to each blob, for tests and status.
#[derive(Debug, Default, Clone)]
pub struct PushReport {
    /// Blobs the registry already had.
    pub present: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Bytes uploaded.
    pub uploaded_bytes: u64,
}

/// A file as a stream of chunks, counting bytes into `sent`.
fn file_stream(
    file: tokio::fs::File,
    sent: Arc<AtomicU64>,
) -> impl Stream<Item = Result<Bytes>> + Send {
    futures_util::stream::unfold(Some(file), move |f| {
        let sent = sent.clone();
        async move {
            let mut f = f?;
            let mut buf = vec![0u8; 1 << 20];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    sent.fetch_add(n as u64, Ordering::Relaxed);
                    Some((Ok(Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e.into()), None)),
            }
        }
    })
}

/// An image to push: blobs first, then the manifest under a tag.
#[derive(Debug)]
pub struct ImagePush<'a> {
    /// Repository.
    pub repo: &'a str,
    /// Tag.
    pub tag: &'a str,
    /// Every blob the manifest names.
    pub blobs: &'a [PushBlob],
    /// Manifest bytes.
    pub manifest: Bytes,
    /// Manifest media type.
    pub media_type: &'a str,
}

/// Push `img.blobs` and then the manifest; returns the manifest digest.
/// `sent` counts uploaded bytes as they go.
pub async fn push_image(
    content: &Content,
    img: ImagePush<'_>,
    sent: Arc<AtomicU64>,
    report: &mut PushReport,
) -> Result<Digest> {
    let ImagePush {
        repo,
        tag,
        blobs,
        manifest,
        media_type,
    } = img;
    let client = content.client();
    for b in blobs {
        if client.blob_exists(repo, &b.digest).await? {
            tracing::debug!(digest = %b.digest, "blob present");
            report.present += 1;
            sent.fetch_add(b.size, Ordering::Relaxed);
            continue;
        }
        match &b.source {
            BlobSource::Base { from, desc } => {
                if from != repo && client.mount_blob(repo, &b.digest, from).await? {
                    tracing::info!(digest = %b.digest, from = %from, "blob mounted");
                    report.mounted += 1;
                    sent.fetch_add(b.size, Ordering::Relaxed);
                    continue;
                }
                // Declined: copy it through the cache.
                let file = content.blob(from, desc).await?;
                let stream = file_stream(tokio::fs::File::from_std(file), sent.clone());
                client
                    .push_blob(repo, &b.digest, b.size, stream.boxed())
                    .await?;
            }
            BlobSource::File(p) => {
                let f = tokio::fs::File::open(p).await?;
                let stream = file_stream(f, sent.clone());
                client
                    .push_blob(repo, &b.digest, b.size, stream.boxed())
                    .await?;
            }
            BlobSource::Bytes(data) => {
                let data = data.clone();
                sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                let stream = futures_util::stream::iter([Ok(data)]);
                client
                    .push_blob(repo, &b.digest, b.size, stream.boxed())
                    .await?;
            }
        }
        tracing::info!(digest = %b.digest, size = b.size, "blob uploaded");
        report.uploaded += 1;
        report.uploaded_bytes += b.size;
    }
    client
        .put_manifest(repo, &Selector::Tag(tag.to_string()), media_type, manifest)
        .await
}
