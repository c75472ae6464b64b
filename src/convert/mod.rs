//! `regfs convert`: copy an image from registry to registry, its layers
//! re-packed as eStargz or zstd:chunked so that lazy readers (regfs,
//! stargz-snapshotter, containers/storage) fetch them file by file.
//!
//! - [`transcribe`]: a source layer's tar replayed entry by entry into the
//!   export packer's sink, optionally reordered so that prioritised files
//!   come first, before a `.prefetch.landmark`.
//! - [`layer`]: one layer fetched, verified, packed and uploaded in one pass.
//! - [`prefetch`]: which layer holds each path of a recorded trace.
//! - [`rewrite`]: the new config (diff_ids) and manifests (OCI).
//!
//! Every input is verified: the source manifest by digest (a tag is
//! resolved first, then the manifest fetched by its digest), the config by
//! digest, each layer's blob digest as it streams and its uncompressed tar
//! against the config's diff_id. A mismatch fails the conversion before the
//! manifest is pushed; the tag is never written. Layer blobs already
//! uploaded (verified ones: an unverified one is never committed) stay in
//! the destination repository, unreferenced, until the registry's garbage
//! collection.

pub mod layer;
pub mod prefetch;
pub mod rewrite;
pub mod transcribe;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::export::compress::Codec;
use crate::export::image::LayerDesc;
use crate::image::config::MAX_CONFIG_SIZE;
use crate::image::media_type as mt;
use crate::image::{ImageConfig, ImageManifest, Manifest};
use crate::reference::Selector;
use crate::registry::RegistryApi;

use self::layer::SourceLayer;

/// How to convert.
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// [`Codec::Estargz`] or [`Codec::ZstdChunked`].
    pub codec: Codec,
    /// Paths to prioritise, in order (a `regfs trace stop` output), or empty.
    pub prefetch: Vec<String>,
    /// Where layers with prioritised files are spooled.
    pub tmp_dir: PathBuf,
}

/// One converted layer, as reported while converting.
#[derive(Clone, Debug)]
pub struct LayerReport {
    /// The image's platform (`os/arch[/variant]`), for indexes.
    pub platform: String,
    /// 1-based position from the bottom.
    pub index: usize,
    /// How many layers the image has.
    pub count: usize,
    /// The source layer's digest and size.
    pub source: (Digest, u64),
    /// The source layer's media type.
    pub source_type: String,
    /// The new layer's digest and size.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// Its uncompressed tar's size.
    pub tar_size: u64,
    /// Files put before `.prefetch.landmark`.
    pub prioritized: usize,
    /// Wall time of this layer.
    pub elapsed: Duration,
}

/// What a conversion pushed.
#[derive(Clone, Debug)]
pub struct Converted {
    /// The manifest (or index) pushed under the destination tag.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Layers converted (all images of an index).
    pub layers: usize,
    /// Bytes of new layer blobs.
    pub bytes: u64,
    /// Index children not converted (artifacts), by digest.
    pub skipped: Vec<Digest>,
}

/// Source and destination.
pub struct Endpoints<'a> {
    /// The source registry.
    pub src: &'a dyn RegistryApi,
    /// The source repository.
    pub src_repo: &'a str,
    /// The destination registry.
    pub dst: &'a dyn RegistryApi,
    /// The destination repository.
    pub dst_repo: &'a str,
}

/// Convert the image `sel` of `ep.src_repo` and push it as `ep.dst_repo:tag`.
/// `report` is called once per converted layer.
pub async fn convert(
    ep: &Endpoints<'_>,
    sel: &Selector,
    tag: &str,
    opts: &ConvertOptions,
    report: &(dyn Fn(&LayerReport) + Sync),
) -> Result<Converted> {
    if !matches!(opts.codec, Codec::Estargz | Codec::ZstdChunked) {
        return Err(Error::invalid("convert writes eStargz or zstd:chunked"));
    }
    let (digest, bytes, media_type) = fetch_manifest(ep, sel).await?;
    let mut out = Converted {
        digest: Digest::sha256_of(b""),
        media_type: String::new(),
        layers: 0,
        bytes: 0,
        skipped: Vec::new(),
    };
    let (new_bytes, new_type) = match Manifest::parse(&bytes, &media_type)? {
        Manifest::Image(m) => {
            let (b, _) = convert_image(ep, &digest, &m, opts, &mut out, report).await?;
            (b, mt::OCI_MANIFEST)
        }
        Manifest::Index { entries, .. } => {
            let mut children = Vec::new();
            for e in &entries {
                let (d, b, t) =
                    fetch_manifest(ep, &Selector::Digest(e.manifest.digest.clone())).await?;
                let child = match Manifest::parse(&b, &t)? {
                    Manifest::Image(m) if !m.is_artifact() => m,
                    _ => {
                        out.skipped.push(d);
                        children.push(None);
                        continue;
                    }
                };
                let (b, _) = convert_image(ep, &d, &child, opts, &mut out, report).await?;
                let new = Digest::sha256_of(&b);
                ep.dst
                    .put_manifest(
                        ep.dst_repo,
                        &Selector::Digest(new.clone()),
                        mt::OCI_MANIFEST,
                        Bytes::from(b.clone()),
                    )
                    .await?;
                children.push(Some((new, b.len() as u64)));
            }
            (rewrite::index(&bytes, &children)?, mt::OCI_INDEX)
        }
    };
    out.digest = ep
        .dst
        .put_manifest(
            ep.dst_repo,
            &Selector::Tag(tag.to_string()),
            new_type,
            Bytes::from(new_bytes),
        )
        .await?;
    out.media_type = new_type.to_string();
    Ok(out)
}

/// A manifest by digest (a tag resolved first): the bytes hash to it.
async fn fetch_manifest(ep: &Endpoints<'_>, sel: &Selector) -> Result<(Digest, Vec<u8>, String)> {
    let digest = match sel {
        Selector::Digest(d) => d.clone(),
        Selector::Tag(_) => ep.src.manifest(ep.src_repo, sel).await?.digest,
    };
    let m = ep
        .src
        .manifest(ep.src_repo, &Selector::Digest(digest.clone()))
        .await?;
    Digest::sha256_of(&m.bytes).expect(&digest, "source manifest")?;
    Ok((digest, m.bytes.to_vec(), m.media_type))
}

/// Convert one image (manifest `digest`): every layer, the config; returns
/// the new manifest's bytes (pushed by the caller) and the new config's digest.
async fn convert_image(
    ep: &Endpoints<'_>,
    digest: &Digest,
    m: &ImageManifest,
    opts: &ConvertOptions,
    out: &mut Converted,
    report: &(dyn Fn(&LayerReport) + Sync),
) -> Result<(Vec<u8>, Digest)> {
    if m.is_artifact() {
        return Err(Error::Unsupported(format!(
            "{digest} is an artifact ({}), not an image",
            m.kind()
        )));
    }
    let config_bytes = layer::read_blob(ep.src, ep.src_repo, &m.config, MAX_CONFIG_SIZE).await?;
    let config = ImageConfig::parse(&config_bytes)?;
    let sources: Vec<SourceLayer> = m
        .layers_with_diff_ids(&config, &digest.to_string())?
        .map(|(d, id)| SourceLayer {
            repo: ep.src_repo.to_string(),
            desc: d.clone(),
            diff_id: id.clone(),
        })
        .collect();
    let count = sources.len();
    let mut new_layers: Vec<Option<LayerDesc>> = vec![None; count];
    let mut diff_ids: Vec<Option<Digest>> = vec![None; count];
    let mut claims = prefetch::Claims::new(&opts.prefetch);
    // With a trace, from the top down: the topmost layer holding a path
    // takes it. Without, bottom up, as the layers come.
    let order: Vec<usize> = if claims.is_empty() {
        (0..count).collect()
    } else {
        (0..count).rev().collect()
    };
    for i in order {
        let src = &sources[i];
        let started = Instant::now();
        let sent = Arc::new(AtomicU64::new(0));
        let (packed, prioritized) = if claims.is_empty() {
            let p =
                layer::convert_streamed(ep.src, src, opts.codec, ep.dst, ep.dst_repo, sent).await?;
            (p, 0)
        } else {
            let spool = layer::spool(ep.src, src, opts.tmp_dir.clone()).await?;
            let plan = claims.plan(&spool);
            let n = plan.prioritized_files(&spool);
            let p = layer::convert_spooled(
                Arc::new(spool),
                Arc::new(plan),
                opts.codec,
                ep.dst,
                ep.dst_repo,
                sent,
            )
            .await?;
            (p, n)
        };
        report(&LayerReport {
            platform: config.platform.clone(),
            index: i + 1,
            count,
            source: (src.desc.digest.clone(), src.desc.size),
            source_type: src.desc.media_type.clone(),
            digest: packed.digest.clone(),
            size: packed.size,
            tar_size: packed.tar_size,
            prioritized,
            elapsed: started.elapsed(),
        });
        out.layers += 1;
        out.bytes += packed.size;
        diff_ids[i] = Some(packed.diff_id.clone());
        new_layers[i] = Some(LayerDesc {
            media_type: opts.codec.oci_media_type().to_string(),
            digest: packed.digest.clone(),
            size: packed.size,
            annotations: packed.annotations(),
        });
    }
    let diff_ids: Vec<Digest> = diff_ids.into_iter().flatten().collect();
    let layers: Vec<LayerDesc> = new_layers.into_iter().flatten().collect();
    let new_config = rewrite::config(&config_bytes, &diff_ids)?;
    let config_digest = Digest::sha256_of(&new_config);
    let body = Bytes::from(new_config.clone());
    ep.dst
        .push_blob(
            ep.dst_repo,
            &config_digest,
            new_config.len() as u64,
            Box::pin(futures_util::stream::iter([Ok(body)])),
        )
        .await?;
    let manifest = rewrite::manifest(&new_config, &layers, m)?;
    Ok((manifest, config_digest))
}

#[cfg(test)]
mod tests;
