//! `GET /v2/<repo>/manifests/<reference>`: Accept headers, size limit, digest checks,
//! media type detection.

use bytes::Bytes;
use reqwest::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use reqwest::Method;
use serde::Deserialize;

use super::{body, errors, Client, Req, Scope};
use crate::digest::{Digest, Hasher};
use crate::error::{Error, Result};
use crate::reference::{validate_repository, validate_tag, Selector};

/// The largest manifest we accept (the limit distribution itself applies).
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

// The media types (and the `Accept` list: without it, distribution 2.8 answers
// 404 for OCI manifests and converts v2s2 to schema 1) are the image model's.
pub use crate::image::media_type::{
    DOCKER_LIST, DOCKER_MANIFEST, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST,
};

/// A manifest as served, checked against its digest.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The bytes exactly as served.
    pub bytes: Bytes,
    /// The media type (from Content-Type, or the JSON `mediaType`).
    pub media_type: String,
    /// The digest of `bytes`.
    pub digest: Digest,
}

impl Client {
    /// Fetch a manifest or index by tag or digest. By digest, the bytes must hash to
    /// it; by tag, to `Docker-Content-Digest` when the registry sends one.
    /// Schema 1 and unknown media types are [`Error::Unsupported`].
    pub async fn manifest(&self, repo: &str, sel: &Selector) -> Result<FetchedManifest> {
        validate_repository(repo)?;
        let (what, reference) = match sel {
            Selector::Tag(t) => {
                validate_tag(t)?;
                (format!("manifest {repo}:{t}"), t.clone())
            }
            Selector::Digest(d) => (format!("manifest {repo}@{d}"), d.to_string()),
        };
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let mut req = Req::new(Method::GET, url, Scope::pull(repo), what.clone());
        req.headers
            .insert(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let resp = self.send(req).await?;
        if !resp.status().is_success() {
            return Err(errors::from_response(resp, &what, self.inner.timeout).await);
        }
        let content_type = header_str(resp.headers().get(CONTENT_TYPE));
        let header_digest = header_str(resp.headers().get("docker-content-digest"));
        let bytes = body::read_capped(
            resp,
            MAX_MANIFEST_SIZE,
            self.inner.timeout,
            &what,
            Some(&self.inner.counters.bytes_received),
        )
        .await?;
        let digest = match sel {
            Selector::Digest(d) => {
                hash(d, &bytes).expect(d, &what)?;
                d.clone()
            }
            Selector::Tag(_) => match header_digest.as_deref().map(str::parse::<Digest>) {
                Some(Ok(d)) => {
                    hash(&d, &bytes).expect(&d, &format!("{what} (Docker-Content-Digest)"))?;
                    d
                }
                Some(Err(e)) => {
                    tracing::warn!("{what}: ignoring unusable Docker-Content-Digest: {e}");
                    Digest::sha256_of(&bytes)
                }
                None => Digest::sha256_of(&bytes),
            },
        };
        let media_type = media_type_of(content_type.as_deref(), &bytes)?;
        check_supported(&media_type)?;
        Ok(FetchedManifest {
            bytes,
            media_type,
            digest,
        })
    }
}

impl Client {
    /// `GET /v2/<repo>/referrers/<digest>`: the image index of what refers to
    /// `digest`; `None` when the registry answers 404 (no referrers API, as
    /// distribution 2.8).
    pub async fn referrers(&self, repo: &str, digest: &Digest) -> Result<Option<Bytes>> {
        validate_repository(repo)?;
        let what = format!("referrers of {repo}@{digest}");
        let url = self.url(&format!("v2/{repo}/referrers/{digest}"))?;
        let mut req = Req::new(Method::GET, url, Scope::pull(repo), what.clone());
        req.headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        );
        let resp = self.send(req).await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(errors::from_response(resp, &what, self.inner.timeout).await);
        }
        let bytes = body::read_capped(
            resp,
            MAX_MANIFEST_SIZE,
            self.inner.timeout,
            &what,
            Some(&self.inner.counters.bytes_received),
        )
        .await?;
        Ok(Some(bytes))
    }
}

fn hash(like: &Digest, bytes: &[u8]) -> Digest {
    let mut h = Hasher::new(like.algorithm());
    h.update(bytes);
    h.finish()
}

fn header_str(v: Option<&HeaderValue>) -> Option<String> {
    v.and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

/// The media type: Content-Type without parameters, unless missing or generic, then
/// the JSON `mediaType` (or, for OCI content that omits it, a guess from its shape).
pub fn media_type_of(content_type: Option<&str>, body: &[u8]) -> Result<String> {
    let ct = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let generic = matches!(
        ct.as_str(),
        "" | "application/json" | "text/plain" | "application/octet-stream"
    );
    if !generic {
        return Ok(ct);
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        schema_version: Option<serde_json::Value>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
        fs_layers: Option<serde_json::Value>,
    }
    let p: Probe = serde_json::from_slice(body)
        .map_err(|e| Error::invalid(format!("manifest is not a JSON object: {e}")))?;
    if let Some(mt) = p.media_type.filter(|m| !m.is_empty()) {
        return Ok(mt);
    }
    if p.fs_layers.is_some() || p.schema_version == Some(serde_json::json!(1)) {
        return Ok("application/vnd.docker.distribution.manifest.v1+json".into());
    }
    if p.manifests.is_some() {
        return Ok(OCI_INDEX.into());
    }
    if p.config.is_some() {
        return Ok(OCI_MANIFEST.into());
    }
    Err(Error::Unsupported(format!(
        "manifest without a media type (Content-Type {:?})",
        content_type.unwrap_or("")
    )))
}

/// Err unless we can read this manifest media type.
pub fn check_supported(media_type: &str) -> Result<()> {
    match media_type {
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST => Ok(()),
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => Err(Error::Unsupported(
            "schema 1 manifests are not supported".into(),
        )),
        other => Err(Error::Unsupported(format!("manifest media type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(
            media_type_of(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b""
            )
            .unwrap(),
            OCI_INDEX
        );
        assert_eq!(
            media_type_of(
                Some("application/json"),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            )
            .unwrap(),
            DOCKER_MANIFEST
        );
        assert_eq!(
            media_type_of(None, br#"{"schemaVersion":2,"config":{},"layers":[]}"#).unwrap(),
            OCI_MANIFEST
        );
        assert_eq!(
            media_type_of(None, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap(),
            OCI_INDEX
        );
        let s1 =
            media_type_of(Some("text/plain"), br#"{"schemaVersion":1,"fsLayers":[]}"#).unwrap();
        assert!(
            matches!(check_supported(&s1), Err(Error::Unsupported(m)) if m.contains("schema 1"))
        );
        assert!(matches!(
            check_supported("application/vnd.docker.distribution.manifest.v1+prettyjws"),
            Err(Error::Unsupported(m)) if m.contains("schema 1")
        ));
        assert!(
            matches!(check_supported("application/x-foo"), Err(Error::Unsupported(m)) if m.contains("x-foo"))
        );
        assert!(media_type_of(None, b"not json").is_err());
    }
}
