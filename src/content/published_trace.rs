//! Prefetch lists published next to an image: `regfs trace stop …
//! --publish` pushes the paths a workload read as an OCI artifact (type
//! [`PREFETCH_ARTIFACT_TYPE`], one text file, a path per line) whose
//! `subject` is the image manifest, found like the layer indexes (referrers
//! API or the tag-schema fallback). A mount with `--use-published-indexes`
//! reads it when a runtime prepares the image and warms those files with
//! its start-up files ([`crate::fs`]'s entry-point warming): the image
//! need not be converted.
//!
//! Trust: the artifact is fetched by digest, its subject checked and its
//! file verified like any blob. A list only chooses which of the image's
//! own, verified files are fetched early: a wrong one costs bytes, never a
//! wrong byte served.

use bytes::Bytes;
use serde_json::json;

use super::published::PublishReport;
use super::Content;
use crate::digest::Digest;
use crate::error::{Error, Result};

/// The `artifactType` of a published prefetch list.
pub const PREFETCH_ARTIFACT_TYPE: &str = "application/vnd.regfs.prefetch-list.v1";
/// The media type of the list file (UTF-8, one path per line).
const LIST_MEDIA_TYPE: &str = "text/plain; charset=utf-8";
/// The annotation naming the file (as ORAS names files).
const TITLE: &str = "org.opencontainers.image.title";
/// Largest list read (bytes).
const MAX_LIST: u64 = 1 << 20;

impl Content {
    /// Publish `paths` (relative to the image's root, in the order they were
    /// read) as the prefetch list of `repo@image`.
    pub async fn publish_prefetch_list(
        &self,
        repo: &str,
        image: &Digest,
        paths: &[String],
    ) -> Result<PublishReport> {
        if paths.is_empty() {
            return Err(Error::invalid("an empty prefetch list is not published"));
        }
        let info = self.manifest(repo, image).await?;
        let mut text = paths.join("\n");
        text.push('\n');
        let file = (
            LIST_MEDIA_TYPE,
            Bytes::from(text),
            json!({ TITLE: "prefetch.list" }),
        );
        self.push_referrer(repo, image, &info.bytes, PREFETCH_ARTIFACT_TYPE, vec![file])
            .await
    }

    /// With `--use-published-indexes`: the prefetch list published for
    /// `repo@image`, if any (empty otherwise).
    pub async fn published_prefetch_list(&self, repo: &str, image: &Digest) -> Result<Vec<String>> {
        if !self.published.enabled {
            return Ok(Vec::new());
        }
        let Some((_, files)) = self
            .published_files(repo, image, PREFETCH_ARTIFACT_TYPE, TITLE, MAX_LIST)
            .await?
        else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (_, desc) in files {
            let bytes = self.small_blob(repo, &desc).await?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::invalid("a published prefetch list is not UTF-8"))?;
            out.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        Ok(out)
    }
}
