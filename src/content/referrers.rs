//! What refers to a manifest (OCI 1.1): the registry's referrers API, else
//! the tag-schema fallback (`sha256-<hex>`, an index of referrers).

use serde_json::Value;

use super::Content;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::reference::Selector;

/// The most referrers listed for one manifest.
const MAX_REFERRERS: usize = 4096;

/// One manifest that refers to another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    /// Its manifest digest.
    pub digest: Digest,
    /// Its `artifactType` (registries fill it in from the config's media
    /// type when the manifest has none); empty if neither says.
    pub artifact_type: String,
    /// Its manifest's size in bytes.
    pub size: u64,
}

/// The tag of the OCI 1.1 referrers tag schema for `digest`: `sha256-<hex>`.
pub fn fallback_tag(digest: &Digest) -> String {
    digest.to_string().replace(':', "-")
}

impl Content {
    /// The referrers of `repo@digest`: the referrers API, else the fallback
    /// tag; none if neither has any. Not cached: a listing asks again.
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Vec<Referrer>> {
        let bytes = match self.client.referrers(repo, digest).await? {
            Some(b) => b,
            None => match self
                .client
                .manifest(repo, &Selector::Tag(fallback_tag(digest)))
                .await
            {
                Ok(m) => m.bytes,
                Err(Error::NotFound(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            },
        };
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(format!("referrers of {digest}: {e}")))?;
        let list = v["manifests"].as_array().cloned().unwrap_or_default();
        if list.len() > MAX_REFERRERS {
            return Err(Error::TooLarge(format!(
                "{digest} has {} referrers (limit {MAX_REFERRERS})",
                list.len()
            )));
        }
        Ok(list
            .iter()
            .filter_map(|d| {
                Some(Referrer {
                    digest: d["digest"].as_str()?.parse().ok()?,
                    artifact_type: d["artifactType"].as_str().unwrap_or_default().to_string(),
                    size: d["size"].as_u64().unwrap_or(0),
                })
            })
            .collect())
    }
}
